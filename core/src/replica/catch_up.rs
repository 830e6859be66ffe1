//! A replica that is behind its leader's compacted log catches up by records, not entries.
//!
//! The leader compacts its Raft log once the records of the compacted entries are durable in
//! its partition log, and a follower that needs an entry from before that gets a snapshot:
//! the applied index it names and the lsn of its last record ([`super::log_store`]). The
//! follower keeps the snapshot message aside and fetches the records it lacks from the
//! sender's node, in chunks: each chunk is applied to its ledger and appended to its own
//! partition log, as committed batches are. Once its ledger holds every record up to the
//! snapshot's lsn, it hands the message to Raft, which takes the snapshot (the log starts
//! after it) and goes on with entries. A fetch that gets no answer is asked again after a
//! while; a newer snapshot replaces the one kept aside.

use bytes::Bytes;

use crate::model::event::Lsn;

use super::{RaftMessage, ReplicaId};

/// Records to ask the node of replica `from` for: those after `after_lsn`, up to
/// `through_lsn`, in one chunk or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchRequest {
    pub from: ReplicaId,
    pub after_lsn: Lsn,
    pub through_lsn: Lsn,
}

/// Messages of the catch-up exchange between two nodes' replicas of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatchUpMessage {
    /// Send the records after `after_lsn`, up to `through_lsn` (a chunk of them may do).
    Fetch { after_lsn: Lsn, through_lsn: Lsn },
    /// Records from `first_lsn` on, encoded as the partition log holds them; empty when the
    /// sender has none after the asked lsn yet.
    Records { first_lsn: Lsn, records: Bytes },
}

/// Most record bytes one [`CatchUpMessage::Records`] carries (the last record may end past
/// it): it fits a wire message with room to spare.
pub const FETCH_BYTES_MAX: usize = 1 << 20;

/// Ticks a fetch waits for its records before it is asked again.
pub(super) const FETCH_RETRY_TICKS: usize = 100;

/// A snapshot kept aside while its records are fetched.
pub(super) struct CatchUp {
    pub snapshot: RaftMessage,
    /// The lsn of the snapshot's last record.
    pub through: Lsn,
    /// A fetch is out, for this many ticks.
    pub asked: Option<usize>,
}
