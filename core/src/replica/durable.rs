//! What a replica keeps on disk of its Raft state, and the writes that change it.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;

use super::ReplicaId;

/// What a replica keeps durably of its Raft state, as the runtime restores it at start: its
/// id, its hard state (term, vote, commit), its group's members as of an applied entry, and
/// its log entries from index 1.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DurableRaft {
    /// The replica these are the state of; 0 while it has not decided (a new store, see
    /// [`super::membership`]), and in stores written before ids were kept (their node's first
    /// incarnation).
    pub id: ReplicaId,
    pub hard_state: HardState,
    /// The members after the membership change at `conf_index` was applied (the group's
    /// first members while `conf_index` is 0).
    pub conf_state: ConfState,
    pub conf_index: u64,
    /// Where the log starts: the entries up to `log_start.index` were compacted away (their
    /// records are durable in the partition log) or replaced by a snapshot.
    pub log_start: LogStart,
    /// The entries after `log_start.index`, consecutive.
    pub entries: Vec<Entry>,
}

/// The last index before a log's first entry (0 for a log never compacted), its term, and
/// the lsn of the last record of the entries up to it (which the partition log holds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStart {
    pub index: u64,
    pub term: u64,
    pub lsn: crate::model::event::Lsn,
}

/// Members of a group as a membership change at `index` left them: persisted so that a
/// restart starts from them.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedConf {
    pub conf_state: ConfState,
    pub index: u64,
}

impl DurableRaft {
    /// The state of a new store of a group whose first voters are `voters`: no id decided,
    /// nothing happened.
    pub fn new(voters: &[ReplicaId]) -> DurableRaft {
        DurableRaft {
            conf_state: ConfState::from((voters.to_vec(), Vec::new())),
            ..DurableRaft::default()
        }
    }

    /// A store that has decided nothing and holds nothing: its replica must ask its group
    /// how to start ([`super::membership`]).
    pub fn is_undecided(&self) -> bool {
        self.id == 0 && self.hard_state == HardState::default() && self.entries.is_empty()
    }

    /// A new store's state for replica `id`, with this one's first members.
    pub fn decided(&self, id: ReplicaId) -> DurableRaft {
        assert!(self.is_undecided(), "only a new store decides its id");
        DurableRaft { id, ..self.clone() }
    }

    /// Carries out `persist` on this image: entries replace any at and after their first
    /// index (a new leader's log wins over what this replica had past their common prefix),
    /// and the hard state replaces the old one. What a runtime writes to disk must read back
    /// as this.
    pub fn persist(&mut self, persist: &Persist) {
        if let Some(start) = persist.snapshot {
            // The log did not hold the snapshot's entry: nothing of it is the group's.
            assert!(
                start.index >= self.log_start.index,
                "a log never grows back"
            );
            self.entries.clear();
            self.log_start = start;
        }
        if let Some(start) = persist.compact {
            if start.index > self.log_start.index {
                assert!(
                    start.index <= self.last_index(),
                    "compaction within the log"
                );
                let dropped = start.index - self.log_start.index;
                self.entries.drain(..dropped as usize);
                self.log_start = start;
            }
        }
        if let Some(first) = persist.entries.first() {
            assert!(
                first.index > self.log_start.index,
                "entry {} is at or before the log's start {}",
                first.index,
                self.log_start.index
            );
            let keep = (first.index - 1 - self.log_start.index) as usize;
            assert!(
                keep <= self.entries.len(),
                "entries are persisted without a gap: first {} after {}",
                first.index,
                self.last_index()
            );
            self.entries.truncate(keep);
            self.entries.extend_from_slice(&persist.entries);
        }
        if let Some(hard_state) = &persist.hard_state {
            self.hard_state = hard_state.clone();
        }
        if let Some(conf) = &persist.conf {
            assert!(
                conf.index > self.conf_index,
                "membership changes apply in order"
            );
            self.conf_state = conf.conf_state.clone();
            self.conf_index = conf.index;
        }
    }

    /// The index of the last entry (the log's start when it holds none).
    pub fn last_index(&self) -> u64 {
        self.log_start.index + self.entries.len() as u64
    }

    /// raft-rs's in-memory storage holding this state.
    pub(super) fn storage(&self) -> MemStorage {
        let storage = MemStorage::new_with_conf_state(self.conf_state.clone());
        {
            let mut core = storage.wl();
            if self.log_start.index > 0 {
                let mut snapshot = Snapshot::default();
                let meta = snapshot.mut_metadata();
                meta.index = self.log_start.index;
                meta.term = self.log_start.term;
                meta.set_conf_state(self.conf_state.clone());
                core.apply_snapshot(snapshot)
                    .expect("a new storage takes any log start");
            }
            core.append(&self.entries)
                .expect("a durable log is consecutive from its start");
            core.set_hardstate(self.hard_state.clone());
        }
        storage
    }
}

/// What to make durable, in order after every earlier `Persist` of the replica; then report
/// it with [`Replica::handle_persisted`].
#[derive(Debug, Clone, PartialEq)]
pub struct Persist {
    pub number: u64,
    /// Entries to write; they replace any the log has at and after the first one's index.
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    /// Members changed by an applied entry or a snapshot.
    pub conf: Option<AppliedConf>,
    /// A snapshot taken: the log starts after it and holds none of the entries it had
    /// (applied first).
    pub snapshot: Option<LogStart>,
    /// Entries up to this one are dropped: their records are durable in the partition log
    /// (applied after `snapshot`).
    pub compact: Option<LogStart>,
}
