//! The map follower against an in-memory map service: it registers the node's liveness
//! with the map version the node runs, takes each change its watch sees, comes back under a
//! new lease when the service drops its lease, and keeps the node's map through an outage.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::*;
use crate::net::map_follower::{Follower, MapEvent, MapService, MapWatch, PlacedMap, ServiceError};

/// What the fake service holds: the map, the leases, and each node's liveness (its lease
/// and the map version it registered).
#[derive(Default)]
struct Held {
    down: bool,
    map: Option<PlacedMap>,
    leases: Vec<i64>,
    granted: i64,
    live: BTreeMap<NodeId, (i64, u64)>,
    /// The map version the follower said no longer lists its node.
    removed: Option<u64>,
}

#[derive(Clone)]
struct FakeService {
    held: Arc<Mutex<Held>>,
    revision: Arc<watch::Sender<u64>>,
}

impl FakeService {
    fn new(map: PartitionMap) -> FakeService {
        let held = Held {
            map: Some(PlacedMap {
                revision: 1,
                placement: Placement::derived(&map, 1),
                map,
            }),
            ..Held::default()
        };
        FakeService {
            held: Arc::new(Mutex::new(held)),
            revision: Arc::new(watch::Sender::new(1)),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap()
    }

    fn up(&self) -> Result<std::sync::MutexGuard<'_, Held>, ServiceError> {
        let held = self.held();
        match held.down {
            true => Err(ServiceError::Unavailable("down".into())),
            false => Ok(held),
        }
    }

    /// Stores `map` under the next revision.
    fn change(&self, map: PartitionMap) {
        let revision = *self.revision.borrow() + 1;
        self.held().map = Some(PlacedMap {
            revision,
            placement: Placement::derived(&map, 1),
            map,
        });
        self.revision.send_replace(revision);
    }

    /// Drops node `node`'s lease and its liveness, as a lease that expired.
    fn lose_lease(&self, node: NodeId) {
        let mut held = self.held();
        let (lease, _) = held.live.remove(&node).expect("node is live");
        held.leases.retain(|l| *l != lease);
    }

    fn set_down(&self, down: bool) {
        self.held().down = down;
        // Wakes the watches, which then find the service down (a broken stream).
        self.revision.send_if_modified(|_| true);
    }

    /// The lease and map version node `node` is live with.
    fn live(&self, node: NodeId) -> Option<(i64, u64)> {
        self.held().live.get(&node).copied()
    }
}

struct FakeWatch {
    service: FakeService,
    revisions: watch::Receiver<u64>,
    after: u64,
}

impl MapWatch for FakeWatch {
    async fn next(&mut self) -> Result<Vec<MapEvent>, ServiceError> {
        loop {
            self.revisions.changed().await.expect("the service lives");
            let held = self.service.up()?;
            let map = held.map.clone().expect("a map");
            if map.revision > self.after {
                self.after = map.revision;
                return Ok(vec![MapEvent::Changed(map)]);
            }
        }
    }
}

impl MapService for FakeService {
    type Watch = FakeWatch;

    async fn grant_lease(&self, _ttl: Duration) -> Result<i64, ServiceError> {
        let mut held = self.up()?;
        held.granted += 1;
        let lease = held.granted;
        held.leases.push(lease);
        Ok(lease)
    }

    async fn keep_alive(&self, lease: i64) -> Result<(), ServiceError> {
        match self.up()?.leases.contains(&lease) {
            true => Ok(()),
            false => Err(ServiceError::LeaseGone),
        }
    }

    async fn revoke(&self, lease: i64) -> Result<(), ServiceError> {
        let mut held = self.up()?;
        held.leases.retain(|l| *l != lease);
        held.live.retain(|_, (l, _)| *l != lease);
        Ok(())
    }

    async fn read(&self) -> Result<PlacedMap, ServiceError> {
        Ok(self.up()?.map.clone().expect("a map"))
    }

    async fn watch(&self, revision: u64) -> Result<FakeWatch, ServiceError> {
        drop(self.up()?);
        Ok(FakeWatch {
            service: self.clone(),
            revisions: self.revision.subscribe(),
            after: revision,
        })
    }

    async fn register(
        &self,
        lease: i64,
        node: NodeId,
        map: &PartitionMap,
    ) -> Result<(), ServiceError> {
        let mut held = self.up()?;
        if !held.leases.contains(&lease) {
            return Err(ServiceError::LeaseGone);
        }
        held.live.insert(node, (lease, map.version));
        Ok(())
    }

    fn taken(&self, _map: &PartitionMap, _placement: &Placement) {}

    fn removed(&self, version: u64) {
        self.held().removed = Some(version);
    }

    fn describe(&self) -> String {
        "the fake map service".into()
    }
}

/// Waits up to 10 s for `done`.
async fn within(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_follower_keeps_the_node_live_and_on_the_newest_map() {
    let cluster = Cluster::start(1, 2, config(30_000)).await;
    let handle = cluster.node(0).map_handle();
    let service = FakeService::new(cluster.map.clone());
    let follower = Follower {
        service: service.clone(),
        handle: handle.clone(),
        node: 0,
        lease_ttl: Duration::from_secs(1),
    };
    let (stop, stopped) = watch::channel(false);
    let following = tokio::spawn(follower.run(stopped));

    within("registered on map 1", || service.live(0) == Some((1, 1))).await;

    // A change the watch sees: the node runs it and says so under the same lease.
    service.change(with_new_node(&cluster.map, 2));
    within("registered on map 2", || service.live(0) == Some((1, 2))).await;
    assert_eq!(handle.map().version, 2);

    // The lease dropped: a renewal finds it gone, and a new session registers anew.
    service.lose_lease(0);
    within("live again under lease 2", || {
        service.live(0) == Some((2, 2))
    })
    .await;

    // The service down: the node keeps its map. Back up: a new session, a new lease, and
    // the change made since is taken.
    service.set_down(true);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(handle.map().version, 2);
    service.held().down = false;
    service.change(with_new_node(&cluster.map, 3));
    within(
        "live on map 3",
        || matches!(service.live(0), Some((l, 3)) if l > 2),
    )
    .await;
    assert_eq!(handle.map().version, 3);

    // Stopping drops the node's liveness at once.
    stop.send_replace(true);
    following.await.unwrap();
    assert_eq!(service.live(0), None);
    assert_eq!(service.held().removed, None);
}

/// A map without the node ends the follower for good: its liveness is dropped, and the
/// service is told from which version, while nothing was asked to stop it.
#[tokio::test]
async fn a_map_without_the_node_ends_the_following() {
    let cluster = Cluster::start(2, 2, config(30_000)).await;
    let service = FakeService::new(cluster.map.clone());
    let follower = Follower {
        service: service.clone(),
        handle: cluster.node(1).map_handle(),
        node: 1,
        lease_ttl: Duration::from_secs(1),
    };
    let (_stop, stopped) = watch::channel(false);
    let following = tokio::spawn(follower.run(stopped));
    within("node 1 registered", || service.live(1).is_some()).await;

    let mut without = cluster.map.clone();
    without.version = 2;
    without.nodes.remove(&1);
    without.owners = vec![0, 0];
    service.change(without);
    tokio::time::timeout(Duration::from_secs(10), following)
        .await
        .expect("the follower ends")
        .unwrap();
    assert_eq!(service.held().removed, Some(2));
    assert_eq!(service.live(1), None, "its liveness is dropped");
    assert_eq!(
        cluster.node(1).map_handle().map().version,
        1,
        "the map it ran is kept"
    );
}
