//! The Raft log as raft-rs reads it: its in-memory storage, a log start that knows its
//! term after compaction, and snapshots that name a state instead of carrying it.
//!
//! A replica's state is its partition log: every replica holds every committed record, so
//! history replays on any of them. A snapshot is therefore not an image of the ledger but a
//! *point*: the applied index, its term, the members as of it, and the lsn of the last
//! record up to it ([`SnapshotPoint`]). A replica that gets one and lacks records up to that
//! lsn fetches them from the sender's node before it lets Raft take the snapshot
//! ([`super::Replica::handle_message`]).

use std::sync::{Arc, Mutex};

use raft::eraftpb::{ConfState, Entry, Snapshot};
use raft::storage::{MemStorage, MemStorageCore};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::durable::LogStart;
use crate::model::event::Lsn;

/// Version of a snapshot's data: `1 | lsn u64` little-endian.
const SNAPSHOT_DATA_VERSION: u8 = 1;

/// The state a snapshot of this replica names: the last applied entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SnapshotPoint {
    pub index: u64,
    pub term: u64,
    pub lsn: Lsn,
    pub conf_state: ConfState,
}

/// The lsn a snapshot's data names, if it is data this build writes.
pub fn snapshot_lsn(snapshot: &Snapshot) -> Option<Lsn> {
    let data = &snapshot.data;
    match data.split_first() {
        Some((&SNAPSHOT_DATA_VERSION, lsn)) => Some(Lsn::from_le_bytes(lsn.try_into().ok()?)),
        _ => None,
    }
}

/// raft-rs's storage of one replica. See the module docs.
pub struct LogStore {
    mem: MemStorage,
    start: LogStart,
    point: Arc<Mutex<SnapshotPoint>>,
}

impl LogStore {
    pub fn new(mem: MemStorage, start: LogStart, point: SnapshotPoint) -> LogStore {
        LogStore {
            mem,
            start,
            point: Arc::new(Mutex::new(point)),
        }
    }

    pub fn wl(&self) -> std::sync::RwLockWriteGuard<'_, MemStorageCore> {
        self.mem.wl()
    }

    pub fn start(&self) -> LogStart {
        self.start
    }

    /// Drops the entries up to `start.index` (their records are durable in the partition
    /// log), or all of them for a snapshot past the log's end.
    pub fn set_start(&mut self, start: LogStart) {
        assert!(start.index >= self.start.index, "a log never grows back");
        self.start = start;
    }

    /// What a snapshot sent now names.
    pub fn set_point(&self, point: SnapshotPoint) {
        *self.point.lock().expect("not poisoned") = point;
    }

    pub fn point(&self) -> SnapshotPoint {
        self.point.lock().expect("not poisoned").clone()
    }
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    /// The log start's term is known after a compaction (raft-rs's storage forgets it),
    /// so that entries right after it are still sent as entries, not as a snapshot.
    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.start.index {
            return Ok(self.start.term);
        }
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let point = self.point();
        if point.index < self.start.index || point.index == 0 {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snapshot = Snapshot::default();
        let meta = snapshot.mut_metadata();
        meta.index = point.index;
        meta.term = point.term;
        meta.set_conf_state(point.conf_state);
        let mut data = vec![SNAPSHOT_DATA_VERSION];
        data.extend_from_slice(&point.lsn.to_le_bytes());
        snapshot.data = data.into();
        Ok(snapshot)
    }
}
