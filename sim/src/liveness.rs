//! The nodes' side of the coordination service in a run with moves: each node keeps its
//! map fresh with the runtime's `Follower`, the one `wallet node --etcd` runs, over
//! [`NodeMapService`] (the [`Coordinator`] as node `host` reaches it); the lost-lease fault
//! ([`lease_faults`]); and the invariant that a running node is seen alive ([`LIVENESS`],
//! checked by [`LivenessWatch`] as the run goes and at its end).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::oneshot;
use tokio::time::Instant;
use walletd_core::model::partition::{NodeId, PartitionMap};
use walletd_core::model::placement::Placement;
use walletd_runtime::net::map_follower::{
    Follower, MapEvent, MapService, MapWatch, PlacedMap, RemovalNotice, ServiceError,
    RECONNECT_BACKOFF_MAX,
};
use walletd_runtime::net::{MapHandle, MapUpdateError};
use walletd_runtime::watch;

use crate::cluster::Shared;
use crate::coordinator::{Coordinator, CoordinatorError, LeaseError, Versioned};
use crate::mover::MoveReport;
use crate::network::HostId;
use crate::shared::Shared as Locked;

/// The time to live of a node's lease: `wallet node`'s default (`--lease-ttl-s`).
pub const LEASE_TTL: Duration = Duration::from_secs(5);

/// A running node holds a liveness entry whenever the service has been up and the node
/// running for [`LIVENESS_WITHIN`]; at the end, every node's entry names the map version it
/// runs.
pub const LIVENESS: &str = "liveness";

/// How long a running node may go unseen while the service is up: a renewal that finds
/// the lease gone (every third of its time to live), the longest backoff before a new
/// session, and a second for the session's calls.
pub const LIVENESS_WITHIN: Duration = Duration::from_millis(
    (LEASE_TTL.as_millis() / 3 + RECONNECT_BACKOFF_MAX.as_millis() + 1_000) as u64,
);

/// Time between two lost leases, in ms.
const LEASE_FAULT_GAP_MS: (u64, u64) = (2_000, 8_000);

fn lease_error(error: LeaseError) -> ServiceError {
    match error {
        LeaseError::Gone => ServiceError::LeaseGone,
        LeaseError::Down => ServiceError::Unavailable("the service is down".into()),
    }
}

fn map_error(error: CoordinatorError) -> ServiceError {
    ServiceError::Unavailable(format!("{error:?}"))
}

/// The coordination service as node `host` reaches it. The map it takes is the node's
/// newest learned (what a restart starts on, as `wallet node` keeps it in its directory);
/// a map it refuses ends the run (the mover only swaps in maps a node can run).
pub struct NodeMapService {
    pub shared: Arc<Shared>,
    pub coordinator: Arc<Coordinator>,
    pub host: HostId,
    /// Told the map version that left the node out (the node then stops).
    removed: RemovalNotice,
}

impl NodeMapService {
    /// Starts node `host`'s follower over the service, a task of the node (it dies with it).
    /// Resolves with the map version that leaves the node out, if one does.
    pub fn follow(shared: Arc<Shared>, host: HostId, handle: MapHandle) -> oneshot::Receiver<u64> {
        let coordinator = Arc::clone(shared.coordinator.as_ref().expect("moves on"));
        let (removed, removal) = RemovalNotice::new();
        let service = NodeMapService {
            shared,
            coordinator,
            host,
            removed,
        };
        let follower = Follower {
            service,
            handle,
            node: host,
            lease_ttl: LEASE_TTL,
        };
        // A node is killed, never stopped: nothing ever sends on `stop`.
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(async move {
            let _never_stopped = stop;
            follower.run(stopped).await;
        });
        removal
    }
}

/// Node `host`'s watch: wakes on each new revision and delivers it after the watch's delay
/// (longer while the node's watch is slow); broken by an outage, as etcd's stream is.
pub struct NodeMapWatch {
    coordinator: Arc<Coordinator>,
    host: HostId,
    revisions: watch::Receiver<u64>,
    after: u64,
}

impl MapWatch for NodeMapWatch {
    async fn next(&mut self) -> Result<Vec<MapEvent>, ServiceError> {
        while *self.revisions.borrow_and_update() <= self.after {
            if self.revisions.changed().await.is_err() {
                return Err(ServiceError::Unavailable("the service is gone".into()));
            }
        }
        tokio::time::sleep(self.coordinator.watch_delay(self.host)).await;
        let newest = self.coordinator.read().map_err(map_error)?;
        self.after = newest.revision();
        Ok(vec![MapEvent::Changed(placed(newest))])
    }
}

fn placed(versioned: Versioned) -> PlacedMap {
    PlacedMap {
        revision: versioned.revision(),
        map: versioned.map,
        placement: versioned.placement,
    }
}

impl MapService for NodeMapService {
    type Watch = NodeMapWatch;

    async fn grant_lease(&self, ttl: Duration) -> Result<i64, ServiceError> {
        self.coordinator
            .grant_lease(self.host, ttl)
            .map_err(lease_error)
    }

    async fn keep_alive(&self, lease: i64) -> Result<(), ServiceError> {
        self.coordinator.keep_alive(lease).map_err(lease_error)
    }

    async fn revoke(&self, lease: i64) -> Result<(), ServiceError> {
        self.coordinator.revoke(lease).map_err(lease_error)
    }

    async fn read(&self) -> Result<PlacedMap, ServiceError> {
        self.coordinator.read().map(placed).map_err(map_error)
    }

    async fn watch(&self, revision: u64) -> Result<NodeMapWatch, ServiceError> {
        Ok(NodeMapWatch {
            coordinator: Arc::clone(&self.coordinator),
            host: self.host,
            revisions: self.coordinator.subscribe(),
            after: revision,
        })
    }

    async fn register(
        &self,
        lease: i64,
        node: NodeId,
        map: &PartitionMap,
    ) -> Result<(), ServiceError> {
        (self.coordinator)
            .register(lease, node, map.version)
            .map_err(lease_error)
    }

    fn taken(&self, map: &PartitionMap, placement: &Placement) {
        let disks = &self.shared.replicas[self.host as usize];
        disks.learn(Versioned {
            map: map.clone(),
            placement: placement.clone(),
        });
    }

    fn refused(&self, version: u64, error: &MapUpdateError) {
        let what = format!("node-{} refused map {version}: {error}", self.host);
        self.shared.fatal(what);
    }

    fn removed(&self, version: u64) {
        self.removed.give(version);
    }

    fn describe(&self) -> String {
        "the simulated coordination service".into()
    }
}

/// Injects lost leases until `until`: at seeded times, the service expires the lease of a
/// node drawn among those that hold one. Lines for the fault log go to `report`.
pub async fn lease_faults(
    coordinator: Arc<Coordinator>,
    mut rng: ChaCha8Rng,
    until: Instant,
    report: Locked<MoveReport>,
) {
    let start = Instant::now();
    loop {
        let gap = rng.gen_range(LEASE_FAULT_GAP_MS.0..=LEASE_FAULT_GAP_MS.1);
        tokio::time::sleep(Duration::from_millis(gap)).await;
        if Instant::now() >= until {
            return;
        }
        let live: Vec<HostId> = coordinator.live().into_keys().collect();
        let Some(&node) = live.choose(&mut rng) else {
            continue;
        };
        if coordinator.lose_lease(node) {
            let at = start.elapsed().as_secs_f64();
            (report.lock().log).push(format!("{at:>8.3}s node-{node}'s lease lost"));
        }
    }
}

/// Checks [`LIVENESS`] as the run goes: see [`LivenessWatch::check`].
#[derive(Debug, Default)]
pub struct LivenessWatch {
    /// Since when each running node has gone unseen while the service was up.
    unseen_since: BTreeMap<HostId, Instant>,
    pub violations: Vec<String>,
}

impl LivenessWatch {
    /// `running` are the nodes running now: each that has gone without a liveness entry for
    /// [`LIVENESS_WITHIN`], while the service was up, breaks the invariant (once per
    /// stretch).
    pub fn check(&mut self, coordinator: &Coordinator, running: impl Iterator<Item = HostId>) {
        if coordinator.is_down() {
            self.unseen_since.clear();
            return;
        }
        let now = Instant::now();
        let live = coordinator.live();
        let mut unseen = BTreeMap::new();
        for host in running.filter(|host| !live.contains_key(host)) {
            let since = self.unseen_since.get(&host).copied().unwrap_or(now);
            if now - since > LIVENESS_WITHIN {
                self.violations.push(format!(
                    "node-{host} ran with the service up but without a lease for {:?}",
                    now - since
                ));
                unseen.insert(host, now);
            } else {
                unseen.insert(host, since);
            }
        }
        self.unseen_since = unseen;
    }
}

/// At the end: what differs between the liveness the service holds and the nodes, each of
/// which runs the newest map: a node without an entry, or whose entry names another map
/// version.
pub fn unsettled_liveness(
    coordinator: &Coordinator,
    nodes: impl Iterator<Item = HostId>,
) -> Vec<String> {
    let newest = coordinator.peek().revision();
    let live = coordinator.live();
    nodes
        .filter_map(|host| match live.get(&host) {
            None => Some(format!("node-{host} holds no lease")),
            Some(entry) if entry.map_version != newest => Some(format!(
                "node-{host}'s liveness names map version {}, not {newest}",
                entry.map_version
            )),
            Some(_) => None,
        })
        .collect()
}
