//! The durable Raft state of one replica: its hard state (term, vote, commit) and its log
//! entries, as [`walletd_core::replica::Persist`]s write them.
//!
//! A trait, as [`super::Storage`] is, so that the simulator can lose what was written but
//! not synced. The contract the replica driver relies on:
//! - [`RaftStore::append`] writes one persist; it is durable once a later
//!   [`RaftStore::sync`] returns `Ok`. Persists are appended in the order the replica hands
//!   them out, and several may be appended before one sync (a group commit).
//! - [`RaftStore::recover`] returns what every synced persist left, applied in order with
//!   [`DurableRaft::persist`]'s rules (entries replace any at and after their first index).
//!   Persists appended but not synced may or may not be in it, each whole or not at all, and
//!   in order: never a later one without an earlier one.
//! - [`RaftStore::reset`] replaces everything by a new state, durable when it returns.
//! - An error from `sync` is fatal for the replica, as it is for a partition's log.
//!
//! Production uses [`file::FileRaftStore`] (real files, `fdatasync`); tests use
//! [`MemRaftStore`].

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};

use walletd_core::replica::{DurableRaft, Persist};

#[cfg(not(madsim))]
pub mod file;

/// Durable Raft state of one replica.
pub trait RaftStore: Send + 'static {
    /// What is durable: the state the replica restarts from.
    fn recover(&mut self) -> impl Future<Output = io::Result<DurableRaft>> + Send;

    /// Writes `persist` after everything appended before it. Not durable until
    /// [`RaftStore::sync`].
    fn append(&mut self, persist: &Persist) -> impl Future<Output = io::Result<()>> + Send;

    /// Makes everything appended durable.
    fn sync(&mut self) -> impl Future<Output = io::Result<()>> + Send;

    /// Replaces everything by `state`, durably when it returns: how a replica with nothing
    /// on disk records the id it decided to start as.
    fn reset(&mut self, state: DurableRaft) -> impl Future<Output = io::Result<()>> + Send;
}

/// The bytes of an in-memory Raft store: what is durable and what is only written.
#[derive(Debug, Clone, Default)]
pub struct MemRaftDisk {
    pub durable: DurableRaft,
    /// Appended and not synced, in order.
    pub unsynced: Vec<Persist>,
}

impl MemRaftDisk {
    /// A crash: every persist not synced is lost.
    pub fn crash(&mut self) {
        self.unsynced.clear();
    }
}

/// A [`RaftStore`] in memory, for tests: [`MemRaftStore::disk`] shares its bytes, so a test
/// can crash it.
#[derive(Debug, Clone)]
pub struct MemRaftStore {
    disk: Arc<Mutex<MemRaftDisk>>,
}

impl MemRaftStore {
    /// A store holding `durable` (a new group's: [`DurableRaft::new`]).
    pub fn new(durable: DurableRaft) -> MemRaftStore {
        MemRaftStore {
            disk: Arc::new(Mutex::new(MemRaftDisk {
                durable,
                unsynced: Vec::new(),
            })),
        }
    }

    pub fn disk(&self) -> Arc<Mutex<MemRaftDisk>> {
        Arc::clone(&self.disk)
    }
}

impl RaftStore for MemRaftStore {
    async fn recover(&mut self) -> io::Result<DurableRaft> {
        let mut disk = self.disk.lock().expect("not poisoned");
        // A process restart keeps what was written (the page cache); a crash the test makes
        // has already dropped it.
        let unsynced = std::mem::take(&mut disk.unsynced);
        for persist in &unsynced {
            disk.durable.persist(persist);
        }
        Ok(disk.durable.clone())
    }

    async fn append(&mut self, persist: &Persist) -> io::Result<()> {
        let mut disk = self.disk.lock().expect("not poisoned");
        disk.unsynced.push(persist.clone());
        Ok(())
    }

    async fn sync(&mut self) -> io::Result<()> {
        let mut disk = self.disk.lock().expect("not poisoned");
        let unsynced = std::mem::take(&mut disk.unsynced);
        for persist in &unsynced {
            disk.durable.persist(persist);
        }
        Ok(())
    }
    async fn reset(&mut self, state: DurableRaft) -> io::Result<()> {
        let mut disk = self.disk.lock().expect("not poisoned");
        disk.unsynced.clear();
        disk.durable = state;
        Ok(())
    }
}
