//! `SimRaftStore`: a replica's durable Raft state (hard state and log entries) on a simulated
//! disk, as [`walletd_runtime::storage::raft_store::RaftStore`] asks of a store.
//!
//! The harness keeps every [`RaftDisk`] outside the nodes, beside the partition's log disk,
//! so it survives `kill`, and crashes it the two ways [`Crash`] names:
//! - a **process crash** keeps every persist that was appended (the page cache outlives the
//!   process);
//! - a **power loss** keeps what the last completed sync made durable and, with torn writes
//!   on, a prefix of the persists appended since, drawn from the seed: a suffix is lost, in
//!   order, never a later persist without an earlier one (the store's contract; a real store
//!   gets that from one append-only file whose recovery cuts at the first torn record).
//!
//! A recovering store reads back what its page cache holds and makes it durable before it
//! answers (as a real store syncs the file it recovered from): a replica never acts on state
//! that a power loss right after its start would take back.
//!
//! A handle of a crashed incarnation is fenced off by an epoch, as [`crate::disk`] fences
//! log handles: a sync in flight when its node died never completes.
//!
//! Two faults take a store's content (`src/nemesis/rebuild.rs`): a *wipe* (the disk is
//! lost: the store is new again) and *damage* to a synced entry before the store's tail,
//! which its open finds ([`RaftDisk::open_or_rebuild`]): as `wallet node` does
//! (`server/src/replicated_node.rs`), the damaged store is set aside and a new, empty one
//! started. Either way the replica rejoins its group under a new id. What the store held
//! before is kept apart ([`RaftDiskState::lost`]): entries acknowledged then still count as
//! durable for answers given before (losing one disk is the fault).

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use raft::eraftpb::ConfState;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use walletd_core::replica::{DurableRaft, Persist, ReplicaId};
use walletd_runtime::storage::raft_store::RaftStore;

use crate::disk::{sync_delay, Crash, DiskSpeed};
use crate::rng::SharedRng;

/// The bytes of one replica's Raft store.
#[derive(Debug, Default)]
pub struct RaftDiskState {
    /// What the last completed sync (or recovery) made durable.
    pub durable: DurableRaft,
    /// Appended since the last sync, in order: in the page cache only.
    pub unsynced: Vec<Persist>,
    /// Bumped by every crash: handles of older incarnations are refused.
    pub epoch: u64,
    pub syncs: u64,
    pub crashes: u64,
    /// Persists a power loss took (appended, never synced).
    pub lost_persists: u64,
    /// While the `slowfollower` fault slows this store alone: each sync takes a time drawn
    /// from this range, in microseconds, in place of the disk's usual time.
    pub slow_sync_us: Option<(u64, u64)>,
    /// The index of a durable entry whose record is damaged (the `corrupt` fault): the
    /// store's open fails with `InvalidData` until it is set aside.
    pub damaged: Option<u64>,
    /// What the store held when it was last wiped or set aside.
    pub lost: Option<DurableRaft>,
    /// Every membership this store made durable, by the index of the entry that made it
    /// (0: the group's first members), kept through wipes and renewals: what the group's
    /// members were from each index on, which the `durability` check needs (an entry is
    /// committed under the members its leader had applied then, not under later ones).
    pub confs: BTreeMap<u64, ConfState>,
    pub wipes: u64,
    /// Damaged stores set aside for a new one by a start.
    pub rebuilt: u64,
}

impl RaftDiskState {
    /// What an open finds: `InvalidData` for a store with a damaged record before its tail.
    fn check(&self) -> io::Result<()> {
        match self.damaged {
            Some(index) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("raft store: the record of entry {index} does not check out, and a later one was synced"),
            )),
            None => Ok(()),
        }
    }

    /// The store's content is gone (kept apart as `lost`): a new store of a group whose
    /// first voters are `voters`.
    fn set_aside(&mut self, voters: &[ReplicaId]) {
        let mut lost = std::mem::replace(&mut self.durable, DurableRaft::new(voters));
        for persist in std::mem::take(&mut self.unsynced) {
            lost.persist(&persist);
        }
        self.lost = Some(lost);
        self.damaged = None;
    }

    /// Makes every appended persist durable, in order.
    fn sync(&mut self) {
        for persist in std::mem::take(&mut self.unsynced) {
            self.durable.persist(&persist);
            if let Some(conf) = &persist.conf {
                self.confs.insert(conf.index, conf.conf_state.clone());
            }
        }
    }
}

/// One replica's Raft store, held by the harness. Clones share it.
#[derive(Debug, Clone)]
pub struct RaftDisk {
    state: Arc<Mutex<RaftDiskState>>,
    /// The group's first voters: what a new store starts from.
    voters: Arc<[ReplicaId]>,
    speed: Arc<DiskSpeed>,
    rng: SharedRng,
}

impl RaftDisk {
    /// The store of a new replica of a group whose voters are `voters`.
    pub fn new(voters: &[ReplicaId], speed: Arc<DiskSpeed>, rng: SharedRng) -> RaftDisk {
        let durable = DurableRaft::new(voters);
        let state = RaftDiskState {
            confs: BTreeMap::from([(0, durable.conf_state.clone())]),
            durable,
            ..RaftDiskState::default()
        };
        RaftDisk {
            state: Arc::new(Mutex::new(state)),
            voters: voters.into(),
            speed,
            rng,
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, RaftDiskState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store handle of a new incarnation of the replica.
    pub fn open(&self) -> SimRaftStore {
        SimRaftStore {
            disk: self.clone(),
            epoch: self.lock().epoch,
        }
    }

    /// The node went down as `crash` says. With a power loss, `torn` lets a prefix of the
    /// unsynced persists survive (its length drawn from the seed); without it none does.
    /// Returns how many persists were lost. Fences off every handle opened before.
    pub fn crash(&self, crash: Crash, torn: bool) -> usize {
        let mut rng = self.rng.lock();
        let mut state = self.lock();
        let mut lost = 0;
        if crash == Crash::PowerLoss {
            let appended = state.unsynced.len();
            let kept = if torn && appended > 0 {
                rng.gen_range(0..=appended)
            } else {
                0
            };
            state.unsynced.truncate(kept);
            state.sync();
            lost = appended - kept;
            state.lost_persists += lost as u64;
        }
        assert!(crash == Crash::Process || state.unsynced.is_empty());
        state.epoch += 1;
        state.crashes += 1;
        lost
    }

    /// The disk is lost (its node is down): the store is new, as before the group's first
    /// start. Fences off every handle opened before.
    pub fn wipe(&self) {
        let mut state = self.lock();
        state.set_aside(&self.voters);
        state.wipes += 1;
        state.epoch += 1;
    }

    /// The store is deleted (its group removed the copy) or made for a new copy: a new,
    /// empty store of the group, and what it held no longer counts for anything. Fences off
    /// every handle opened before.
    pub fn renew(&self) {
        let mut state = self.lock();
        state.durable = DurableRaft::new(&self.voters);
        state.unsynced.clear();
        state.lost = None;
        state.damaged = None;
        state.slow_sync_us = None;
        state.epoch += 1;
    }

    /// The group's first voters, which a new store starts from.
    pub fn voters(&self) -> &[ReplicaId] {
        &self.voters
    }

    /// Damages the record of a durable entry before the last one (its node is down), drawn
    /// with `rng`: returns its index, or `None` if the store holds fewer than two entries.
    pub fn damage(&self, rng: &mut ChaCha8Rng) -> Option<u64> {
        let mut state = self.lock();
        let entries = state.durable.entries.len();
        if entries < 2 {
            return None;
        }
        let index = state.durable.entries[rng.gen_range(0..entries - 1)].index;
        state.damaged = Some(index);
        Some(index)
    }

    /// The store handle of a new incarnation, opened as `wallet node` opens a Raft store: a
    /// store whose open finds a damaged record is set aside and a new, empty one started.
    /// Returns the open's error in that case.
    pub fn open_or_rebuild(&self) -> (SimRaftStore, Option<io::Error>) {
        let error = {
            let mut state = self.lock();
            let error = state.check().err();
            if let Some(error) = &error {
                assert_eq!(error.kind(), io::ErrorKind::InvalidData);
                state.set_aside(&self.voters);
                state.rebuilt += 1;
            }
            error
        };
        (self.open(), error)
    }

    /// Persists appended and not yet synced: what a power loss now could take.
    pub fn unsynced(&self) -> usize {
        self.lock().unsynced.len()
    }

    /// What a power loss now would leave at least: the durable state.
    pub fn durable(&self) -> DurableRaft {
        self.lock().durable.clone()
    }
}

/// The [`RaftStore`] a replica driver gets: its incarnation's handle to a [`RaftDisk`].
pub struct SimRaftStore {
    disk: RaftDisk,
    epoch: u64,
}

impl SimRaftStore {
    /// Locks the disk, refusing a handle from an incarnation that has since crashed.
    fn live(&self) -> io::Result<MutexGuard<'_, RaftDiskState>> {
        let state = self.disk.lock();
        if state.epoch != self.epoch {
            return Err(io::Error::other(
                "raft store handle of a crashed incarnation",
            ));
        }
        Ok(state)
    }
}

impl RaftStore for SimRaftStore {
    async fn recover(&mut self) -> io::Result<DurableRaft> {
        let mut state = self.live()?;
        state.check()?;
        // What the page cache holds is read back and synced before the replica acts on it.
        state.sync();
        Ok(state.durable.clone())
    }

    async fn append(&mut self, persist: &Persist) -> io::Result<()> {
        let mut state = self.live()?;
        let last = state.unsynced.last().map(|p| p.number);
        assert!(
            last.is_none_or(|last| last < persist.number),
            "persists are appended in the order the replica hands them out"
        );
        state.unsynced.push(persist.clone());
        Ok(())
    }

    async fn sync(&mut self) -> io::Result<()> {
        let slow = self.live()?.slow_sync_us;
        let delay = match slow {
            Some((min, max)) => Duration::from_micros(self.disk.rng.lock().gen_range(min..=max)),
            None => sync_delay(&self.disk.speed, &self.disk.rng),
        };
        // The window in which a crash finds the persists written but not synced.
        tokio::time::sleep(delay).await;
        let mut state = self.live()?;
        state.sync();
        state.syncs += 1;
        Ok(())
    }

    async fn reset(&mut self, durable: DurableRaft) -> io::Result<()> {
        let mut state = self.live()?;
        state.unsynced.clear();
        (state.confs).insert(durable.conf_index, durable.conf_state.clone());
        state.durable = durable;
        state.syncs += 1;
        Ok(())
    }
}
