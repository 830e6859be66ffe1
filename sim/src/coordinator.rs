//! The coordination service of a replicated run (etcd's place): one linearizable key that
//! holds the partition map and the placement, whose revision is the map's version, changed
//! only by compare-and-swap on that revision, and watched by every node.
//!
//! It is a model, not etcd's protocol: a read or a swap takes effect at once, in the order
//! the simulation's single thread makes them (so they are linearizable), and a node learns
//! of a new revision after a delay drawn from the run's seed (a watch event on its way),
//! longer while its watch is slow (the `coordinator` fault). While the service is down
//! (an outage, the same fault) every read and swap fails: no change is made, and the nodes
//! keep serving on the map they have.
//!
//! It also keeps the nodes' liveness as etcd does: a lease per node session, renewed by the
//! node, that expires when not renewed within its time to live; a liveness entry bound to
//! it goes with it. Losing a lease is a fault of its own ([`Coordinator::lose_lease`]: the
//! service expired it, as etcd does when a node's renewals miss the time to live). Time
//! does not run against leases during an outage: as etcd's new leader renews every lease
//! when it takes over, every lease gets its full time to live when the service is back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use walletd_core::model::partition::PartitionMap;
use walletd_core::model::placement::Placement;
use walletd_runtime::watch;

use crate::network::HostId;
use crate::rng::SharedRng;

/// How long a node's watch takes to deliver a new revision, in ms.
const WATCH_MS: (u64, u64) = (1, 40);
/// The same while the node's watch is slow, in ms.
const SLOW_WATCH_MS: (u64, u64) = (500, 4_000);

/// The map and placement under one revision (the map's version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub map: PartitionMap,
    pub placement: Placement,
}

impl Versioned {
    pub fn revision(&self) -> u64 {
        self.map.version
    }
}

/// Why a read or a swap failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordinatorError {
    /// The service is down (an outage): nothing was read or changed.
    Down,
    /// The swap expected another revision: someone changed the map since it was read.
    Stale { current: u64 },
}

/// Why a call about a lease failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseError {
    /// The service is down (an outage).
    Down,
    /// The lease has expired or was revoked.
    Gone,
}

#[derive(Debug)]
struct Lease {
    host: HostId,
    ttl: Duration,
    expires: Instant,
}

/// A node's liveness entry: the lease it is bound to and the map version the node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    pub lease: i64,
    pub map_version: u64,
}

#[derive(Debug)]
struct State {
    current: Versioned,
    down: bool,
    /// Nodes whose watch is slow now.
    slow: BTreeSet<HostId>,
    swaps: u32,
    outages: u32,
    slow_watches: u32,
    leases: BTreeMap<i64, Lease>,
    next_lease: i64,
    live: BTreeMap<HostId, Liveness>,
    leases_lost: u32,
}

impl State {
    /// Drops the leases whose time to live has passed, with their liveness entries. Time
    /// does not run against them while the service is down.
    fn expire(&mut self) {
        if self.down {
            return;
        }
        let now = Instant::now();
        let expired: Vec<i64> = (self.leases.iter())
            .filter(|(_, lease)| lease.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.end_lease(id);
        }
    }

    fn end_lease(&mut self, id: i64) {
        self.leases.remove(&id);
        self.live.retain(|_, entry| entry.lease != id);
    }

    fn up(&mut self) -> Result<(), LeaseError> {
        match self.down {
            true => Err(LeaseError::Down),
            false => {
                self.expire();
                Ok(())
            }
        }
    }
}

/// See the module docs. Shared by the nodes' watchers and the mover.
#[derive(Debug)]
pub struct Coordinator {
    state: Mutex<State>,
    /// The newest revision: what a watch wakes on.
    revision: watch::Sender<u64>,
    rng: SharedRng,
}

impl Coordinator {
    /// The service holding `first`, the map and placement every node starts with.
    pub fn new(first: Versioned, rng: SharedRng) -> Coordinator {
        let revision = watch::Sender::new(first.revision());
        Coordinator {
            state: Mutex::new(State {
                current: first,
                down: false,
                slow: BTreeSet::new(),
                swaps: 0,
                outages: 0,
                slow_watches: 0,
                leases: BTreeMap::new(),
                next_lease: 1,
                live: BTreeMap::new(),
                leases_lost: 0,
            }),
            revision,
            rng,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current map and placement (a linearizable read).
    pub fn read(&self) -> Result<Versioned, CoordinatorError> {
        let state = self.lock();
        match state.down {
            true => Err(CoordinatorError::Down),
            false => Ok(state.current.clone()),
        }
    }

    /// The current map and placement, whether the service is up or not (the harness's view).
    pub fn peek(&self) -> Versioned {
        self.lock().current.clone()
    }

    /// Replaces the map and placement if the revision is still `expected`: the new one gets
    /// the next revision, which it returns.
    pub fn swap(
        &self,
        expected: u64,
        mut map: PartitionMap,
        placement: Placement,
    ) -> Result<u64, CoordinatorError> {
        let mut state = self.lock();
        if state.down {
            return Err(CoordinatorError::Down);
        }
        let current = state.current.revision();
        if current != expected {
            return Err(CoordinatorError::Stale { current });
        }
        map.version = current + 1;
        assert!(
            placement.check(&map).is_ok(),
            "the mover swaps in only placements a node can run: {placement:?}"
        );
        state.current = Versioned { map, placement };
        state.swaps += 1;
        drop(state);
        self.revision.send_replace(current + 1);
        Ok(current + 1)
    }

    /// Wakes when the revision changes (see [`Coordinator::watch_delay`]).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// How long node `host`'s watch takes to deliver a new revision, drawn now.
    pub fn watch_delay(&self, host: HostId) -> Duration {
        let range = match self.lock().slow.contains(&host) {
            true => SLOW_WATCH_MS,
            false => WATCH_MS,
        };
        Duration::from_millis(self.rng.lock().gen_range(range.0..=range.1))
    }

    /// An outage begins (`true`) or ends; when it ends, every lease gets its full time to
    /// live again.
    pub fn set_down(&self, down: bool) {
        let mut state = self.lock();
        state.outages += u32::from(down && !state.down);
        if state.down && !down {
            let now = Instant::now();
            for lease in state.leases.values_mut() {
                lease.expires = now + lease.ttl;
            }
        }
        state.down = down;
    }

    /// A new lease of node `host` that lives `ttl` unless renewed.
    pub fn grant_lease(&self, host: HostId, ttl: Duration) -> Result<i64, LeaseError> {
        let mut state = self.lock();
        state.up()?;
        let id = state.next_lease;
        state.next_lease += 1;
        let expires = Instant::now() + ttl;
        state.leases.insert(id, Lease { host, ttl, expires });
        Ok(id)
    }

    /// Renews `lease` for its time to live.
    pub fn keep_alive(&self, lease: i64) -> Result<(), LeaseError> {
        let mut state = self.lock();
        state.up()?;
        let lease = state.leases.get_mut(&lease).ok_or(LeaseError::Gone)?;
        lease.expires = Instant::now() + lease.ttl;
        Ok(())
    }

    /// Ends `lease` now, with the liveness bound to it.
    pub fn revoke(&self, lease: i64) -> Result<(), LeaseError> {
        let mut state = self.lock();
        state.up()?;
        state.end_lease(lease);
        Ok(())
    }

    /// Writes node `host`'s liveness, running `map_version`, bound to `lease` (in place of
    /// any entry it had, as a put of etcd's replaces a key and its lease).
    pub fn register(&self, lease: i64, host: HostId, map_version: u64) -> Result<(), LeaseError> {
        let mut state = self.lock();
        state.up()?;
        let owner = state.leases.get(&lease).ok_or(LeaseError::Gone)?;
        assert_eq!(owner.host, host, "a node registers under its own lease");
        state.live.insert(host, Liveness { lease, map_version });
        Ok(())
    }

    /// The fault: the service expires the lease node `host`'s liveness is bound to, now.
    /// Returns whether it had one.
    pub fn lose_lease(&self, host: HostId) -> bool {
        let mut state = self.lock();
        if state.up().is_err() {
            return false;
        }
        let Some(lease) = state.live.get(&host).map(|entry| entry.lease) else {
            return false;
        };
        state.end_lease(lease);
        state.leases_lost += 1;
        true
    }

    /// The nodes that hold a liveness entry now (the harness's view, as `cluster status`
    /// reads it; while the service is down, the entries it will serve once back).
    pub fn live(&self) -> BTreeMap<HostId, Liveness> {
        let mut state = self.lock();
        state.expire();
        state.live.clone()
    }

    pub fn is_down(&self) -> bool {
        self.lock().down
    }

    /// Node `host`'s watch becomes slow (`true`) or normal again.
    pub fn set_slow(&self, host: HostId, slow: bool) {
        let mut state = self.lock();
        match slow {
            true => {
                state.slow_watches += u32::from(state.slow.insert(host));
            }
            false => {
                state.slow.remove(&host);
            }
        }
    }

    /// Ends every fault of the service: up, every watch normal.
    pub fn heal(&self) {
        let mut state = self.lock();
        state.down = false;
        state.slow.clear();
    }

    /// Swaps made, outages, slow watches and leases lost, for the run's summary.
    pub fn counts(&self) -> (u32, u32, u32, u32) {
        let state = self.lock();
        (
            state.swaps,
            state.outages,
            state.slow_watches,
            state.leases_lost,
        )
    }
}
