//! A replicated partition: one partition's copy on one node, a member of the partition's Raft
//! group. It leads with a [`PartitionMachine`] and follows by folding the committed log into
//! a [`Ledger`]; like the machine it does no I/O (sans-IO), so the async runtime and the
//! simulator drive the same code.
//!
//! Raft is raft-rs's [`RawNode`] (TiKV's implementation): its `Ready` loop hands out what to
//! persist and what to send, and leaves the disk, the network and the clock to its caller,
//! which is how the partition machine is built too.
//!
//! ```text
//!   leader:   machine ── poll_commit ──► propose(batch) ──► Raft log ──► committed ──► release
//!                 ▲                                                           │
//!                 └────────────── handle_durable (committed = durable) ◄─────┘
//!   follower: Raft log ──► committed entry ──► apply_batch(ledger) ──► partition log
//! ```
//!
//! # One log
//! A Raft entry carries one batch of the partition's log records ([`payload`]): the bytes the
//! machine encoded for its group commit. A committed entry is appended, as it is, to the
//! partition's own log on every replica, so snapshots, `wallet replay` and the fixtures read
//! the records they always did. The partition log holds committed records only; the Raft log
//! (persisted by the runtime, [`Persist`]) is the durable copy of what is not yet there.
//!
//! # When something may leave
//! The machine's release rule holds with "durable" read as "committed": a commit's answers,
//! phase messages and snapshot leave once its entry is committed, that is durable on a
//! majority of the group ([`ReplicaReady::release`]). Raft counts a replica's own copy only
//! once the runtime reports it persisted ([`Replica::handle_persisted`]), so the leader's disk
//! counts like any other. A Try still leaves as soon as its debit is applied, as without
//! replication: a leader that loses the debit (it steps down before the entry commits) is the
//! home that lost an unsynced debit, and the destination resolves its pending credit the same
//! way (see [`crate::protocol::machine`]).
//!
//! A commit without records (reads of committed state, answers to repeated requests,
//! resends) has nothing to replicate, but its answers are not released at once: a leader
//! that a new one has replaced while it was cut off still leads in its own eyes until its
//! election timer runs out, and its committed state is no longer the newest. Its answers
//! wait for Raft's ReadIndex (a heartbeat round a majority acknowledges) to confirm that it
//! still led after they were computed; a replica that stops leading drops them.
//!
//! # Leadership
//! - A replica that wins an election decides nothing until it has applied every entry of
//!   earlier terms: only once an entry of its own term is committed (Raft's empty entry of a
//!   new leader) and applied does it build its machine, which rebuilds the coordinator from
//!   the unfinished phase rows and resumes them, as after a restart.
//! - A leader that stops leading drops its machine. If its ledger held nothing uncommitted,
//!   the ledger is the committed state and it follows from there. Otherwise its ledger is
//!   ahead of the log by records that may never commit: it asks the runtime to rebuild the
//!   ledger from the partition log ([`ReplicaReady::reload`]), which holds committed records
//!   only. The clients of its dropped commits see their reply tokens dropped: the outcome is
//!   unknown to them, and a retry with the same transaction id gets the one outcome the new
//!   leader's log has.
//! - A proposal Raft refuses (no longer leader, too much uncommitted) is handled the same way.
//!
//! Elections are timed by a seeded generator given in [`ReplicaConfig::seed`], not by
//! raft-rs's thread-local one, so a simulated run replays its elections from its seed.

mod catch_up;
mod durable;
mod log_store;
pub mod membership;
pub mod payload;
mod raft_logger;

pub use catch_up::{CatchUpMessage, FetchRequest, FETCH_BYTES_MAX};
pub use durable::{AppliedConf, DurableRaft, LogStart, Persist};
pub use log_store::SnapshotPoint;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, MessageType};
use raft::{ProgressState, RawNode, SnapshotStatus, StateRole};

use catch_up::{CatchUp, FETCH_RETRY_TICKS};
use log_store::{snapshot_lsn, LogStore};

use crate::ledger::Ledger;
use crate::log::recovery::{apply_batch, RecoveryError};
use crate::log::snapshot::SnapshotImage;
use crate::model::event::Lsn;
use crate::model::partition::PartitionId;
use crate::protocol::machine::{MachineConfig, Now, PartitionMachine, Release, ReplyTokens};
use crate::protocol::message::Query;

pub use raft::eraftpb::Message as RaftMessage;

/// Most record bytes in one batch of a replicated partition: one batch is one Raft entry,
/// and a Raft message of entries must fit a wire message
/// ([`crate::wire::RAFT_ENCODED_LEN_MAX`], 8 MiB), with room for the last input's records
/// past the bound and for the entries raft-rs packs beside it (up to 1 MiB).
pub const BATCH_BYTES_MAX: usize = 1 << 20;

/// A replica's id in its group: a node and an incarnation of its copy
/// ([`membership::replica_id`]). Raft reserves 0.
pub type ReplicaId = u64;

/// How a replica runs.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaConfig {
    pub id: ReplicaId,
    /// Raft ticks a follower waits without hearing from a leader before it stands; each wait
    /// is drawn anew from `election_ticks..2 * election_ticks`.
    pub election_ticks: usize,
    /// Raft ticks between a leader's heartbeats; less than `election_ticks`.
    pub heartbeat_ticks: usize,
    /// Seeds the draw of election timeouts.
    pub seed: u64,
    pub machine: MachineConfig,
    pub log: LogLimits,
}

/// When a replica compacts its Raft log (see [`Replica::handle_log_durable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Compact once this many entries whose records are durable in the partition log lie
    /// past the log's start (and `keep` more behind them).
    pub compact_after: u64,
    /// Entries kept behind the newest durable one: a follower that far behind still
    /// catches up by entries rather than by fetching records.
    pub keep: u64,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            compact_after: 4096,
            keep: 1024,
        }
    }
}

/// A replica that cannot go on: its log does not replay, or Raft refused its state.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("partition {partition}: raft: {source}")]
    Raft {
        partition: PartitionId,
        source: raft::Error,
    },
    #[error("partition {partition}: committed entry {index}: {detail}")]
    BadEntry {
        partition: PartitionId,
        index: u64,
        detail: String,
    },
    #[error("partition {partition}: committed entry {index} does not apply: {source}")]
    Apply {
        partition: PartitionId,
        index: u64,
        source: RecoveryError,
    },
    #[error("partition {partition}: a snapshot at index {index}: {detail}")]
    BadSnapshot {
        partition: PartitionId,
        index: u64,
        detail: String,
    },
}

/// A committed batch to append to the partition's own log: records `first_lsn..=last_lsn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedBatch {
    /// The Raft index of the entry that carried it.
    pub index: u64,
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    pub records: Bytes,
}

/// What the runtime carries out after [`Replica::poll`], in this order: send `messages`;
/// write `persist` (then report it); send `messages_after_persist` once it is durable;
/// append `committed` to the partition log; send `release` (it may leave at once: its
/// records are committed); write `snapshot`; and before the next poll, if `reload`, rebuild
/// the ledger from the partition log and hand it back.
pub struct ReplicaReady<K: ReplyTokens> {
    /// Raft messages that may leave now (a leader replicates in parallel with its own write).
    pub messages: Vec<RaftMessage>,
    pub persist: Option<Persist>,
    /// Raft messages that vouch for `persist` (votes, a follower's acknowledgements).
    pub messages_after_persist: Vec<RaftMessage>,
    pub committed: Vec<CommittedBatch>,
    pub release: Release<K>,
    /// A snapshot of the state after a committed batch; report its outcome with
    /// [`Replica::handle_snapshot_written`].
    pub snapshot: Option<SnapshotImage>,
    /// The replica stopped leading with uncommitted records applied: call
    /// [`Replica::handle_reloaded`] with the ledger the partition log replays to.
    pub reload: bool,
    /// Records to fetch from another replica's node (see [`catch_up`]); hand what comes
    /// back to [`Replica::handle_fetched`].
    pub fetch: Option<FetchRequest>,
}

impl<K: ReplyTokens> Default for ReplicaReady<K> {
    fn default() -> Self {
        ReplicaReady {
            messages: Vec::new(),
            persist: None,
            messages_after_persist: Vec::new(),
            committed: Vec::new(),
            release: Release::default(),
            snapshot: None,
            reload: false,
            fetch: None,
        }
    }
}

impl<K: ReplyTokens> ReplicaReady<K> {
    fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.persist.is_none()
            && self.messages_after_persist.is_empty()
            && self.committed.is_empty()
            && self.release.is_empty()
            && self.snapshot.is_none()
            && !self.reload
            && self.fetch.is_none()
    }
}

/// Answers of a commit without records (reads of committed state, resends), waiting for
/// Raft's ReadIndex to confirm that this replica still led after they were computed.
struct PendingRead<K: ReplyTokens> {
    /// The request's context, as Raft hands it back in its read state.
    id: u64,
    /// The commit index a majority confirmed, once it has: released when it is applied.
    index: Option<u64>,
    release: Release<K>,
}

/// A leader's reads waiting for Raft to confirm its leadership, in request order.
struct Reads<K: ReplyTokens> {
    pending: VecDeque<PendingRead<K>>,
    /// Numbers the read requests of this replica (never reused, so that a read state of
    /// an earlier leadership matches nothing).
    seq: u64,
    /// Ticks since the last request while the oldest read waits unconfirmed.
    wait_ticks: usize,
}

impl<K: ReplyTokens> Default for Reads<K> {
    fn default() -> Self {
        Reads {
            pending: VecDeque::new(),
            seq: 0,
            wait_ticks: 0,
        }
    }
}

impl<K: ReplyTokens> Reads<K> {
    /// Asks Raft to confirm that `raw` leads before `release` leaves (ReadIndex: a
    /// heartbeat round that a majority acknowledges).
    fn request(&mut self, raw: &mut RawNode<LogStore>, release: Release<K>) {
        assert_eq!(raw.raft.state, StateRole::Leader, "only a leader reads");
        self.seq += 1;
        self.wait_ticks = 0;
        raw.read_index(self.seq.to_le_bytes().to_vec());
        self.pending.push_back(PendingRead {
            id: self.seq,
            index: None,
            release,
        });
    }
}

/// A batch proposed by this replica's machine, waiting for its entry to commit.
struct Proposal<K: ReplyTokens> {
    index: u64,
    term: u64,
    last_lsn: Lsn,
    release: Release<K>,
    snapshot: Option<SnapshotImage>,
    /// The commit's buffer, handed back to the machine for reuse.
    buffer: Vec<u8>,
}

enum Role<K: ReplyTokens> {
    /// Applies the committed log; decides nothing.
    Following(Ledger),
    /// Decides: its machine's ledger is the committed state plus what is proposed.
    Leading {
        machine: PartitionMachine<K>,
        term: u64,
    },
    /// Stopped leading with uncommitted records applied; waits for
    /// [`Replica::handle_reloaded`].
    Reloading,
}

/// One partition's replica. See the module docs.
pub struct Replica<K: ReplyTokens> {
    partition: PartitionId,
    config: ReplicaConfig,
    raw: RawNode<LogStore>,
    role: Role<K>,
    /// This leader's proposals in index order (the machine has at most one commit out).
    proposals: VecDeque<Proposal<K>>,
    /// This leader's reads waiting for Raft to confirm its leadership.
    reads: Reads<K>,
    /// The index of the last membership change applied (and persisted or to be).
    conf_index: u64,
    /// Every entry applied past the log's start: its index, term and the lsn of the last
    /// record applied with it; what compaction picks its point from.
    applied: VecDeque<LogStart>,
    /// A compaction (or a snapshot's log start) to persist with the next write.
    pending_start: Option<LogStart>,
    /// A snapshot kept aside while its records are fetched.
    catch_up: Option<CatchUp>,
    /// The lsn of the last record of the entries applied so far (at least: a restarted
    /// follower's ledger may hold more than the entries Raft hands out again).
    applied_lsn: Lsn,
    /// Fetched records applied, to append to the partition log.
    fetched: Vec<CommittedBatch>,
    /// A snapshot taken but not yet persisted: Raft counts it applied once it is.
    snapshot_to_apply: Option<u64>,
    /// A leader's followers waiting for a snapshot, with the ticks they have waited.
    snapshot_waits: std::collections::BTreeMap<ReplicaId, usize>,
    /// The nonce of the last ask from each node for which this replica, leading, proposed
    /// a learner: a late copy of that ask must not add another (see [`Replica::handle_ask`]).
    /// One entry per node of the group at most.
    asks_served: std::collections::BTreeMap<crate::model::partition::NodeId, u64>,
    /// Counts the machines built, so that a snapshot report reaches the one that asked.
    machine_epoch: u64,
    /// The term in which Raft refused a proposal of this replica's machine: it builds no
    /// machine again in that term. Raft still counted it leader, so without this it built
    /// one at once, which proposed again and was refused again, a reload each time, and the
    /// runtime's loop never got back to ticking Raft, which alone could end the term.
    refused_in_term: Option<u64>,
    snapshot_epoch: Option<u64>,
    election_rng: u64,
    /// The nodes the partition map names for this group, if the runtime gave them: what a
    /// leader converges the group's members to (see [`membership`]).
    target: Option<Vec<crate::model::partition::NodeId>>,
    now: Now,
}

impl<K: ReplyTokens> Replica<K> {
    /// A replica restarting from `durable` (its Raft state) and `ledger` (what its partition
    /// log replays to). It starts as a follower; committed entries the ledger already holds
    /// are skipped by lsn as Raft hands them out again.
    pub fn new(
        config: ReplicaConfig,
        durable: &DurableRaft,
        ledger: Ledger,
        now: Now,
    ) -> Result<Self, ReplicaError> {
        assert!(config.id != 0, "raft reserves replica id 0");
        assert!(
            durable.id == 0 || durable.id == config.id,
            "a store of replica {} runs as replica {}",
            durable.id,
            config.id
        );
        assert!(config.heartbeat_ticks > 0 && config.heartbeat_ticks < config.election_ticks);
        let partition = ledger.partition();
        let mut config = config;
        config.machine.batch_bytes_max = config.machine.batch_bytes_max.min(BATCH_BYTES_MAX);
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            min_election_tick: config.election_ticks,
            max_election_tick: 2 * config.election_ticks,
            // A leader that hears from no majority for an election timeout steps down, and
            // a replica that cannot win does not disrupt a working leader with a new term.
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..raft::Config::default()
        };
        #[cfg(any(test, madsim, feature = "testing"))]
        let forgotten;
        #[cfg(any(test, madsim, feature = "testing"))]
        let durable = if crate::protocol::bugs::enabled(crate::protocol::bugs::Bug::ForgetVote) {
            forgotten = DurableRaft {
                hard_state: raft::eraftpb::HardState {
                    vote: 0,
                    ..durable.hard_state.clone()
                },
                ..durable.clone()
            };
            &forgotten
        } else {
            durable
        };
        // No snapshot is offered until an entry is applied here (then the members as of
        // the applied index are known).
        let store = LogStore::new(
            durable.storage(),
            durable.log_start,
            SnapshotPoint::default(),
        );
        let raw = RawNode::new(&raft_config, store, &raft_logger::logger(partition))
            .map_err(|source| ReplicaError::Raft { partition, source })?;
        let mut replica = Replica {
            partition,
            config,
            raw,
            role: Role::Following(ledger),
            proposals: VecDeque::new(),
            refused_in_term: None,
            reads: Reads::default(),
            conf_index: durable.conf_index,
            applied: VecDeque::new(),
            pending_start: None,
            catch_up: None,
            applied_lsn: durable.log_start.lsn,
            fetched: Vec::new(),
            snapshot_to_apply: None,
            snapshot_waits: Default::default(),
            asks_served: Default::default(),
            machine_epoch: 0,
            snapshot_epoch: None,
            election_rng: config.seed ^ 0x9e37_79b9_7f4a_7c15,
            target: None,
            now,
        };
        replica.rearm_election_timeout();
        Ok(replica)
    }

    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    pub fn id(&self) -> ReplicaId {
        self.config.id
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The leader this replica knows of, itself included.
    pub fn leader(&self) -> Option<ReplicaId> {
        let leader = self.raw.raft.leader_id;
        (leader != raft::INVALID_ID).then_some(leader)
    }

    /// The machine, while this replica leads and has caught up: clients and peers are
    /// served through it. `None` on a follower (send to [`Replica::leader`]) and on a leader
    /// still applying earlier terms.
    pub fn machine(&mut self) -> Option<&mut PartitionMachine<K>> {
        match &mut self.role {
            Role::Leading { machine, .. } => Some(machine),
            _ => None,
        }
    }

    /// The machine, as [`Replica::machine`], to read.
    pub fn machine_ref(&self) -> Option<&PartitionMachine<K>> {
        match &self.role {
            Role::Leading { machine, .. } => Some(machine),
            _ => None,
        }
    }

    /// The state applied here: the committed state on a follower, and on a leader that plus
    /// what it proposed. `None` while reloading.
    pub fn ledger(&self) -> Option<&Ledger> {
        match &self.role {
            Role::Following(ledger) => Some(ledger),
            Role::Leading { machine, .. } => Some(machine.ledger()),
            Role::Reloading => None,
        }
    }

    /// The index of the last entry known committed, and of the last applied.
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    pub fn applied_index(&self) -> u64 {
        self.raw.raft.raft_log.applied
    }

    /// A read for this partition. Taken while this replica leads and has caught up: the
    /// machine answers it, and the answer leaves with its commit, after Raft's ReadIndex
    /// when that commit has no records (see the module docs). Given back otherwise, for the
    /// runtime to send to the leader.
    pub fn handle_query(&mut self, token: K::Query, query: Query) -> Result<(), (K::Query, Query)> {
        let Role::Leading { machine, .. } = &mut self.role else {
            return Err((token, query));
        };
        machine.handle_query(token, query);
        Ok(())
    }

    /// One Raft tick (the runtime's tick interval).
    pub fn tick(&mut self) {
        self.raw.tick();
        self.retry_reads();
        self.change_membership();
        self.retry_snapshots();
        if let Some(CatchUp {
            asked: Some(ticks), ..
        }) = &mut self.catch_up
        {
            *ticks += 1;
            if *ticks >= FETCH_RETRY_TICKS {
                self.catch_up.as_mut().expect("some").asked = None;
            }
        }
        self.rearm_election_timeout();
    }

    /// A leader whose follower has waited long for a snapshot (the message or its fetches
    /// were lost) reports it failed, so that Raft sends another.
    fn retry_snapshots(&mut self) {
        if self.raw.raft.state != StateRole::Leader {
            self.snapshot_waits.clear();
            return;
        }
        let waiting: Vec<ReplicaId> = (self.raw.raft.prs().iter())
            .filter(|(_, progress)| progress.state == ProgressState::Snapshot)
            .map(|(id, _)| *id)
            .collect();
        self.snapshot_waits.retain(|id, _| waiting.contains(id));
        let limit = 10 * self.config.election_ticks;
        for id in waiting {
            let ticks = self.snapshot_waits.entry(id).or_insert(0);
            *ticks += 1;
            if *ticks >= limit {
                *ticks = 0;
                tracing::info!(partition = self.partition, to = id, "snapshot sent again");
                self.raw.report_snapshot(id, SnapshotStatus::Failure);
            }
        }
    }

    /// The partition log is durable through `lsn`: the Raft log may drop the entries whose
    /// records it holds, keeping [`LogLimits::keep`] entries behind, once
    /// [`LogLimits::compact_after`] of them have gathered. The store drops them with the
    /// next write.
    pub fn handle_log_durable(&mut self, lsn: Lsn) {
        let limits = self.config.log;
        let start = self.raw.store().start();
        let Some(durable) = self.applied.iter().rev().find(|e| e.lsn <= lsn) else {
            return;
        };
        let target = durable.index.saturating_sub(limits.keep);
        if target < start.index + limits.compact_after.max(1) {
            return;
        }
        let Some(point) = self.applied.iter().find(|e| e.index == target).copied() else {
            return;
        };
        if let Err(error) = self.raw.mut_store().wl().compact(target + 1) {
            tracing::warn!(partition = self.partition, %error, "raft log not compacted");
            return;
        }
        self.raw.mut_store().set_start(point);
        self.applied.retain(|e| e.index > target);
        self.pending_start = Some(point);
        tracing::debug!(
            partition = self.partition,
            index = target,
            lsn = point.lsn,
            "raft log compacted"
        );
    }

    /// Records fetched for the snapshot kept aside (see [`catch_up`]): applied to the
    /// ledger, and handed out to append to the partition log. Once the ledger holds every
    /// record the snapshot names, Raft takes the snapshot.
    pub fn handle_fetched(&mut self, first_lsn: Lsn, records: Bytes) -> Result<(), ReplicaError> {
        let partition = self.partition;
        let (Some(catch_up), Role::Following(ledger)) = (&mut self.catch_up, &mut self.role) else {
            return Ok(());
        };
        let index = catch_up.snapshot.get_snapshot().get_metadata().index;
        catch_up.asked = None;
        if !records.is_empty() {
            let applied =
                apply_batch(ledger, "fetched records", first_lsn, &records).map_err(|source| {
                    ReplicaError::Apply {
                        partition,
                        index,
                        source,
                    }
                })?;
            if let Some((first_lsn, offset)) = applied {
                self.fetched.push(CommittedBatch {
                    index,
                    first_lsn,
                    last_lsn: ledger.last_applied().lsn,
                    records: records.slice(offset..),
                });
            }
        }
        if ledger.last_applied().lsn >= catch_up.through {
            let catch_up = self.catch_up.take().expect("some");
            tracing::info!(
                partition,
                index,
                lsn = catch_up.through,
                "caught up by records; taking the snapshot"
            );
            self.step(catch_up.snapshot);
        }
        Ok(())
    }

    /// When this replica compacts its log.
    pub fn log_limits(&self) -> LogLimits {
        self.config.log
    }

    /// The index of the last membership change this replica applied (0: none since the
    /// group's start).
    pub fn conf_index(&self) -> u64 {
        self.conf_index
    }

    /// The members of the group as this replica last applied them.
    pub fn conf_state(&self) -> ConfState {
        self.raw.raft.prs().conf().to_conf_state()
    }

    /// Answers node `node`'s ask about how to start (see [`membership`]). A leader may
    /// propose to take the node in as a learner.
    ///
    /// A joiner asks every peer again and again until it decides, so copies of an ask can
    /// arrive late, after the learner added for it has become a voter: a copy of an ask this
    /// replica already added a learner for (same node, same nonce) never adds another, which
    /// no replica would ever claim.
    pub fn handle_ask(
        &mut self,
        node: crate::model::partition::NodeId,
        nonce: u64,
    ) -> membership::Answer {
        let raft = &self.raw.raft;
        let first = membership::incarnation_of(self.config.id) == 0;
        if first && raft.term == 0 && raft.raft_log.last_index() == 0 {
            return membership::Answer::Fresh;
        }
        let served = self.asks_served.get(&node) == Some(&nonce);
        let target = self.target.as_deref();
        let (answer, proposed) = membership::answer_ask(&mut self.raw, node, target, !served);
        if proposed {
            self.asks_served.insert(node, nonce);
        }
        answer
    }

    /// The nodes the partition map names for this group (distinct, at least one): a leader
    /// converges the group's members to them (see "Moving a replica" in [`membership`]).
    pub fn set_target(&mut self, mut nodes: Vec<crate::model::partition::NodeId>) {
        nodes.sort_unstable();
        nodes.dedup();
        assert!(!nodes.is_empty(), "a group keeps at least one replica");
        if self.target.as_ref() != Some(&nodes) {
            tracing::info!(
                partition = self.partition,
                ?nodes,
                "the group's target nodes"
            );
            self.target = Some(nodes);
        }
    }

    /// What this replica answers replica `id`'s check of its membership (see "Leaving the
    /// group" in [`membership`]): `Removed` if its applied members leave `id` out.
    pub fn handle_check(&self, id: ReplicaId) -> Option<membership::MembershipMessage> {
        membership::answer_check(&self.conf_state(), self.conf_index, self.raw.raft.id, id)
    }

    /// Whether this replica is one of its group's members (a voter or a learner) as it last
    /// applied them: one that a move removed is not, and has nothing more to do.
    pub fn is_member(&self) -> bool {
        membership::is_member(&self.conf_state(), self.raw.raft.id)
    }

    /// A leader takes the next step its group's members need, one at a time.
    fn change_membership(&mut self) {
        let change = match membership::next_change(&self.raw, self.target.as_deref()) {
            None => return,
            Some(membership::Change::TransferLeader(to)) => {
                if self.raw.raft.lead_transferee != Some(to) {
                    tracing::info!(
                        partition = self.partition,
                        to,
                        "handing leadership over before this replica leaves the group"
                    );
                    self.raw.transfer_leader(to);
                }
                return;
            }
            Some(membership::Change::Propose(change)) => change,
        };
        let before = membership::describe(&self.conf_state());
        match self.raw.propose_conf_change(Vec::new(), change.clone()) {
            Ok(()) => tracing::info!(
                partition = self.partition,
                %before,
                ?change,
                "membership change proposed"
            ),
            Err(error) => tracing::warn!(
                partition = self.partition,
                %error,
                "membership change not proposed"
            ),
        }
    }

    /// A Raft message from another replica of the group. A snapshot whose records this
    /// replica lacks is kept aside while they are fetched (see [`catch_up`]).
    pub fn handle_message(&mut self, message: RaftMessage) {
        if message.get_msg_type() == MessageType::MsgSnapshot {
            let Some(through) = snapshot_lsn(message.get_snapshot()) else {
                tracing::warn!(
                    partition = self.partition,
                    from = message.from,
                    "snapshot of unknown data ignored"
                );
                return;
            };
            let have = match &self.role {
                Role::Following(ledger) => Some(ledger.last_applied().lsn),
                _ => None,
            };
            match have {
                Some(have) if have >= through => {}
                Some(_) => {
                    tracing::info!(
                        partition = self.partition,
                        from = message.from,
                        through,
                        "snapshot: fetching its records"
                    );
                    self.catch_up = Some(CatchUp {
                        snapshot: message,
                        through,
                        asked: None,
                    });
                    return;
                }
                // A replica that leads or reloads takes no snapshot; the leader sends
                // another once this one follows.
                None => return,
            }
        }
        self.step(message);
    }

    fn step(&mut self, message: RaftMessage) {
        let from = message.from;
        if let Err(error) = self.raw.step(message) {
            // A message from a replica not in the group, or one Raft itself does not step:
            // neither changes anything here.
            tracing::debug!(partition = self.partition, from, %error, "raft message ignored");
        }
        self.rearm_election_timeout();
    }

    /// Everything up to `number` is durable (persists complete in order).
    pub fn handle_persisted(&mut self, number: u64) {
        self.raw.on_persist_ready(number);
        if let Some(index) = self.snapshot_to_apply {
            if self.raw.raft.raft_log.persisted >= index {
                self.snapshot_to_apply = None;
                self.raw.advance_apply_to(index);
            }
        }
    }

    /// The ledger the partition log replays to, after a [`ReplicaReady::reload`].
    pub fn handle_reloaded(&mut self, ledger: Ledger) {
        assert!(
            matches!(self.role, Role::Reloading),
            "a reload was asked for"
        );
        assert_eq!(ledger.partition(), self.partition);
        self.role = Role::Following(ledger);
    }

    /// The snapshot of the last [`ReplicaReady::snapshot`] is written or failed.
    pub fn handle_snapshot_written(&mut self, written: Result<usize, ()>) {
        let asked_by = self.snapshot_epoch.take();
        if let (Role::Leading { machine, .. }, Some(epoch)) = (&mut self.role, asked_by) {
            if epoch == self.machine_epoch {
                machine.handle_snapshot_written(written);
            }
        }
    }

    /// Proposes what the machine has to commit, hands out Raft's work, applies committed
    /// entries and changes role. Call until it returns `None` after every input.
    pub fn poll(&mut self, now: Now) -> Result<Option<ReplicaReady<K>>, ReplicaError> {
        assert!(
            !matches!(self.role, Role::Reloading),
            "partition {}: a reload is answered before the next poll",
            self.partition
        );
        self.now = now;
        let mut out = ReplicaReady::default();
        out.committed.append(&mut self.fetched);
        if let (Some(catch_up), Role::Following(ledger)) = (&mut self.catch_up, &self.role) {
            if catch_up.asked.is_none() {
                catch_up.asked = Some(0);
                out.fetch = Some(FetchRequest {
                    from: catch_up.snapshot.from,
                    after_lsn: ledger.last_applied().lsn,
                    through_lsn: catch_up.through,
                });
            }
        }
        // A leader that Raft deposed steps down before anything is applied, so that entries
        // of another leader never reach its machine. Each step may end in a reload, after
        // which nothing more is done until the runtime answers it.
        self.update_role(&mut out);
        self.propose(&mut out);
        if !self.reloading() && self.raw.has_ready() {
            self.handle_ready(&mut out)?;
        }
        if !self.reloading() {
            self.update_role(&mut out);
            self.propose(&mut out);
        }
        Ok((!out.is_empty()).then_some(out))
    }

    fn reloading(&self) -> bool {
        matches!(self.role, Role::Reloading)
    }

    /// Hands the machine's ready releases out and its next commit to Raft.
    fn propose(&mut self, out: &mut ReplicaReady<K>) {
        let Role::Leading { machine, term } = &mut self.role else {
            return;
        };
        if let Some(release) = machine.poll_ready() {
            out.release.append(release);
        }
        // While this leader hands leadership over (a move takes its node out of the group),
        // Raft drops every proposal. The machine keeps its batch meanwhile, as it would for
        // a slow disk: the handover ends within an election timeout, this replica then
        // leads on and proposes it, or steps down and the batch goes with the machine.
        if self.raw.raft.lead_transferee.is_some() {
            return;
        }
        while let Some(commit) = machine.poll_commit() {
            if commit.bytes.is_empty() {
                // Answers from committed state only; but a leader that another has deposed
                // without its knowing (it is cut off) holds stale committed state, so they
                // wait for a majority to confirm that this replica still leads (ReadIndex).
                if !commit.release.is_empty() {
                    if known_bug!(StaleRead) {
                        out.release.append(commit.release);
                        continue;
                    }
                    let read = &mut self.reads;
                    read.request(&mut self.raw, commit.release);
                }
                continue;
            }
            let data = payload::encode(commit.first_lsn, &commit.bytes);
            if let Err(error) = self.raw.propose(Vec::new(), data) {
                tracing::warn!(
                    partition = self.partition,
                    %error,
                    "proposal refused; the state it applied is rebuilt from the log"
                );
                drop(commit);
                self.refused_in_term = Some(*term);
                self.step_down(out);
                return;
            }
            let index = self.raw.raft.raft_log.last_index();
            assert!(self.proposals.back().is_none_or(|p| p.index < index));
            #[cfg(any(test, madsim, feature = "testing"))]
            if crate::protocol::bugs::enabled(crate::protocol::bugs::Bug::AckBeforeQuorum) {
                out.release.append(commit.release);
                self.proposals.push_back(Proposal {
                    index,
                    term: *term,
                    last_lsn: commit.last_lsn,
                    release: Release::default(),
                    snapshot: commit.snapshot,
                    buffer: commit.bytes,
                });
                continue;
            }
            self.proposals.push_back(Proposal {
                index,
                term: *term,
                last_lsn: commit.last_lsn,
                release: commit.release,
                snapshot: commit.snapshot,
                buffer: commit.bytes,
            });
        }
    }

    fn handle_ready(&mut self, out: &mut ReplicaReady<K>) -> Result<(), ReplicaError> {
        let mut ready = self.raw.ready();
        out.messages.extend(ready.take_messages());
        for state in ready.take_read_states() {
            self.confirm_read(&state.request_ctx, state.index);
        }
        let committed = ready.take_committed_entries();
        let mut persist = Persist {
            number: ready.number(),
            entries: ready.take_entries(),
            hard_state: ready.hs().cloned(),
            conf: None,
            snapshot: None,
            compact: self.pending_start.take(),
        };
        let snapshot = ready.snapshot().clone();
        let snapshot_index = snapshot.get_metadata().index;
        if snapshot_index > 0 {
            self.take_snapshot(snapshot, &mut persist)?;
        }
        let store = self.raw.mut_store();
        if !persist.entries.is_empty() {
            // Raft reads its log from the store (to replicate it) before it is durable; what
            // it may count as durable waits for `handle_persisted`.
            store
                .wl()
                .append(&persist.entries)
                .expect("raft hands out entries that follow its log");
        }
        if let Some(hard_state) = &persist.hard_state {
            store.wl().set_hardstate(hard_state.clone());
        }
        let after_persist = ready.take_persisted_messages();
        self.raw.advance_append_async(ready);
        if snapshot_index > 0 {
            // Raft counts it applied once it is persisted (`handle_persisted`).
            self.snapshot_to_apply = Some(snapshot_index);
        }
        if let Some(last) = committed.last() {
            let last_index = last.index;
            for entry in committed {
                let (index, term) = (entry.index, entry.term);
                if let Some(conf) = self.apply(entry, out)? {
                    persist.conf = Some(conf);
                }
                let lsn = self.applied_lsn;
                self.note_applied(LogStart { index, term, lsn });
            }
            self.raw.advance_apply_to(last_index);
        }
        let changed = persist.hard_state.is_some()
            || persist.conf.is_some()
            || persist.snapshot.is_some()
            || persist.compact.is_some();
        if !persist.entries.is_empty() || changed || !after_persist.is_empty() {
            out.persist = Some(persist);
            out.messages_after_persist = after_persist;
        }
        self.release_reads(out);
        Ok(())
    }

    /// Raft took a snapshot (a follower that was behind the leader's compacted log, whose
    /// records it fetched first: see [`catch_up`]): the log starts after it, and the
    /// members are the snapshot's.
    fn take_snapshot(
        &mut self,
        snapshot: raft::eraftpb::Snapshot,
        persist: &mut Persist,
    ) -> Result<(), ReplicaError> {
        let partition = self.partition;
        let meta = snapshot.get_metadata().clone();
        let bad = |detail: String| ReplicaError::BadSnapshot {
            partition,
            index: meta.index,
            detail,
        };
        let lsn = snapshot_lsn(&snapshot).ok_or_else(|| bad("data of no known version".into()))?;
        let Role::Following(ledger) = &self.role else {
            return Err(bad("taken by a replica that does not follow".into()));
        };
        if ledger.last_applied().lsn < lsn {
            return Err(bad(format!(
                "it names lsn {lsn}, and the ledger holds only {}",
                ledger.last_applied().lsn
            )));
        }
        let start = LogStart {
            index: meta.index,
            term: meta.term,
            lsn,
        };
        (self.raw.mut_store().wl().apply_snapshot(snapshot))
            .map_err(|e| bad(format!("the log does not take it: {e}")))?;
        self.raw.mut_store().set_start(start);
        self.applied.clear();
        self.applied.push_back(start);
        persist.snapshot = Some(start);
        // A pending compaction is within the log the snapshot replaces.
        persist.compact = None;
        if meta.index > self.conf_index {
            self.conf_index = meta.index;
            persist.conf = Some(AppliedConf {
                conf_state: meta.get_conf_state().clone(),
                index: meta.index,
            });
        }
        self.publish_point(start);
        tracing::info!(partition, index = meta.index, lsn, "snapshot taken");
        Ok(())
    }

    /// Entry `applied` is applied: compaction may pick it, and a snapshot sent now names it
    /// once the members as of it are known (applied at or past the last membership change
    /// this replica restored).
    fn note_applied(&mut self, applied: LogStart) {
        self.applied.push_back(applied);
        self.publish_point(applied);
    }

    fn publish_point(&mut self, at: LogStart) {
        if at.index >= self.conf_index {
            let conf_state = self.raw.raft.prs().conf().to_conf_state();
            self.raw.mut_store().set_point(SnapshotPoint {
                index: at.index,
                term: at.term,
                lsn: at.lsn,
                conf_state,
            });
        }
    }

    /// A leader whose oldest read waits unconfirmed for a heartbeat interval asks again with
    /// an empty read: Raft sends a heartbeat round only for a new request, and confirming a
    /// request confirms every earlier one, so a round whose acknowledgements were lost does
    /// not hold the reads up for good.
    fn retry_reads(&mut self) {
        let reads = &mut self.reads;
        let waiting = reads
            .pending
            .front()
            .is_some_and(|read| read.index.is_none());
        let leads = self.raw.raft.state == StateRole::Leader;
        if !waiting || !leads || !matches!(self.role, Role::Leading { .. }) {
            reads.wait_ticks = 0;
            return;
        }
        reads.wait_ticks += 1;
        if reads.wait_ticks >= self.config.heartbeat_ticks {
            reads.request(&mut self.raw, Release::default());
        }
    }

    /// Raft confirmed, at commit index `index`, that this replica led when read `ctx` was
    /// asked for.
    fn confirm_read(&mut self, ctx: &[u8], index: u64) {
        let id = ctx.try_into().ok().map(u64::from_le_bytes);
        let read = (self.reads.pending.iter_mut()).find(|read| Some(read.id) == id);
        match read {
            Some(read) => read.index = Some(index),
            // A read of an earlier leadership, whose answers were dropped with it.
            None => tracing::debug!(partition = self.partition, "read state of no read"),
        }
    }

    /// Releases, in order, the reads whose confirmed index is applied.
    fn release_reads(&mut self, out: &mut ReplicaReady<K>) {
        let applied = self.raw.raft.raft_log.applied;
        while let Some(read) = self.reads.pending.front() {
            match read.index {
                Some(index) if index <= applied => {
                    let read = self.reads.pending.pop_front().expect("not empty");
                    out.release.append(read.release);
                }
                _ => break,
            }
        }
    }

    /// Applies one committed entry: a leader's own batch is already applied and is released;
    /// a follower folds the batch into its ledger; a membership change changes the members,
    /// which are returned to be persisted.
    fn apply(
        &mut self,
        entry: Entry,
        out: &mut ReplicaReady<K>,
    ) -> Result<Option<AppliedConf>, ReplicaError> {
        let partition = self.partition;
        let index = entry.index;
        let bad = |detail: String| ReplicaError::BadEntry {
            partition,
            index,
            detail,
        };
        let entry_type = entry.get_entry_type();
        if entry_type != EntryType::EntryNormal {
            // A restart starts from the members as of `conf_index`: the changes up to it
            // are in them already.
            if index <= self.conf_index {
                return Ok(None);
            }
            let bad_change = |e: protobuf::ProtobufError| bad(format!("membership change: {e}"));
            let applied = if entry_type == EntryType::EntryConfChange {
                let change = ConfChange::parse_from_bytes(&entry.data).map_err(bad_change)?;
                self.raw.apply_conf_change(&change)
            } else {
                let change = ConfChangeV2::parse_from_bytes(&entry.data).map_err(bad_change)?;
                self.raw.apply_conf_change(&change)
            };
            let conf_state = applied.map_err(|source| ReplicaError::Raft { partition, source })?;
            tracing::info!(
                partition,
                index,
                members = %membership::describe(&conf_state),
                "membership changed"
            );
            self.conf_index = index;
            return Ok(Some(AppliedConf { conf_state, index }));
        }
        let Some(batch) = payload::decode(&entry.data).map_err(|e| bad(e.to_string()))? else {
            return Ok(None);
        };
        match &mut self.role {
            Role::Leading { machine, .. } => {
                let proposal = self
                    .proposals
                    .pop_front()
                    .ok_or_else(|| bad("a leader applies an entry it did not propose".into()))?;
                if (proposal.index, proposal.term) != (index, entry.term) {
                    return Err(bad(format!(
                        "a leader expected its proposal {} of term {} and got term {}",
                        proposal.index, proposal.term, entry.term
                    )));
                }
                out.committed.push(CommittedBatch {
                    index,
                    first_lsn: batch.first_lsn,
                    last_lsn: proposal.last_lsn,
                    records: batch.records,
                });
                self.applied_lsn = proposal.last_lsn;
                machine.handle_durable(proposal.last_lsn, proposal.buffer);
                out.release.append(proposal.release);
                if let Some(image) = proposal.snapshot {
                    out.snapshot = Some(image);
                    self.snapshot_epoch = Some(self.machine_epoch);
                }
            }
            Role::Following(ledger) => {
                let applied = apply_batch(ledger, "a raft entry", batch.first_lsn, &batch.records)
                    .map_err(|source| ReplicaError::Apply {
                        partition,
                        index,
                        source,
                    })?;
                // Only what the partition log lacks is appended: after a restart Raft hands
                // out again entries whose records the log already holds.
                if let Some((first_lsn, offset)) = applied {
                    out.committed.push(CommittedBatch {
                        index,
                        first_lsn,
                        last_lsn: ledger.last_applied().lsn,
                        records: batch.records.slice(offset..),
                    });
                }
                self.applied_lsn = ledger.last_applied().lsn;
            }
            Role::Reloading => unreachable!("poll never runs while reloading"),
        }
        Ok(None)
    }

    /// Builds the machine once this replica leads and has applied every earlier term; drops
    /// it once it stops leading.
    fn update_role(&mut self, out: &mut ReplicaReady<K>) {
        let raft = &self.raw.raft;
        let leads = raft.state == StateRole::Leader;
        match &self.role {
            Role::Leading { term, .. } if !leads || *term != raft.term => self.step_down(out),
            Role::Following(_)
                if leads
                    && raft.lead_transferee.is_none()
                    && self.refused_in_term != Some(raft.term)
                    && raft.commit_to_current_term()
                    && raft.raft_log.applied >= raft.raft_log.committed =>
            {
                let term = raft.term;
                let Role::Following(ledger) = std::mem::replace(&mut self.role, Role::Reloading)
                else {
                    unreachable!()
                };
                tracing::info!(
                    partition = self.partition,
                    term,
                    lsn = ledger.last_applied().lsn,
                    "leading"
                );
                self.machine_epoch += 1;
                self.role = Role::Leading {
                    machine: PartitionMachine::new(ledger, self.config.machine, self.now),
                    term,
                };
            }
            _ => {}
        }
    }

    /// Stops leading: keeps the ledger if it holds only committed records, asks for a
    /// reload otherwise. Proposals in flight are dropped with their answers.
    fn step_down(&mut self, out: &mut ReplicaReady<K>) {
        let Role::Leading { machine, term } = std::mem::replace(&mut self.role, Role::Reloading)
        else {
            return;
        };
        let dropped = self.proposals.len() + self.reads.pending.len();
        self.proposals.clear();
        self.reads.pending.clear();
        self.snapshot_epoch = None;
        let ahead = machine.is_ahead_of_durable();
        tracing::info!(
            partition = self.partition,
            term,
            dropped,
            reload = ahead,
            "no longer leading"
        );
        if ahead {
            out.reload = true;
        } else {
            self.role = Role::Following(machine.into_ledger());
        }
    }

    /// Draws the election timeout from the replica's own generator whenever Raft restarts
    /// its election timer (raft-rs draws from a thread-local one).
    fn rearm_election_timeout(&mut self) {
        let raft = &mut self.raw.raft;
        if raft.state == StateRole::Leader || raft.election_elapsed != 0 {
            return;
        }
        let base = self.config.election_ticks;
        let draw = splitmix64(&mut self.election_rng) % base as u64;
        raft.set_randomized_election_timeout(base + draw as usize);
    }
}

/// A small, seeded, portable generator (SplitMix64): enough to spread election timeouts.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
