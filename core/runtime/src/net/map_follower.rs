//! How a running node keeps its map fresh from the coordination service that holds it (etcd
//! in production, a model of it in the simulator): the same [`Follower`] runs on both, over
//! a [`MapService`].
//!
//! A session with the service: a lease (the node's liveness), the map read and handed to the
//! node, the node's liveness registered under the lease, then the watch of the map and the
//! lease's renewals, until something fails. Every map taken is handed to the node
//! ([`MapHandle::update_placed`] on a replicated node, [`MapHandle::update_map`] otherwise)
//! and registered again, so the liveness says which map version the node runs.
//!
//! The service is needed to change the map, never to serve: when a session fails (the
//! service down, the watch cut, the lease lost) the node serves with the map it has and
//! starts a new session after a backoff, with a new lease, the map read anew and the watch
//! from that read's revision, so no change is missed. A lost lease is such a failure: the
//! service dropped the node's liveness (a renewal missed the lease's time to live, or the
//! service expired it), and only a new lease and a new registration bring it back.
//!
//! A peer that claims a newer map than this node's (the peer protocol's `StaleMap`) makes
//! the follower read the map at once rather than wait for its watch.
//!
//! A map that no longer lists the node (`wallet cluster remove-node`) ends the following for
//! good: the follower drops the node's liveness and tells the service's owner
//! ([`MapService::removed`]), which stops the node. Nothing a removed node could do would
//! help the cluster: its peers refuse its frames, and it would read the map again at every
//! refusal.

use std::future::Future;
use std::time::Duration;

use crate::watch;
use walletd_core::model::partition::{NodeId, PartitionMap};
use walletd_core::model::placement::Placement;

use super::{MapChange, MapHandle, MapUpdateError};

/// First wait before a new session; doubles up to [`RECONNECT_BACKOFF_MAX`].
pub const RECONNECT_BACKOFF_INITIAL: Duration = Duration::from_millis(250);
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a stopping node waits for the service to drop its liveness at once.
const REVOKE_WAIT: Duration = Duration::from_secs(2);

/// The map and placement as the service holds them, at a revision of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedMap {
    /// The service's revision of this read or change: a watch from the next one misses
    /// nothing.
    pub revision: u64,
    pub map: PartitionMap,
    pub placement: Placement,
}

/// A change the watch saw.
#[derive(Debug, Clone)]
pub enum MapEvent {
    Changed(PlacedMap),
    /// The map was deleted: the node keeps the one it has.
    Deleted,
    /// A map no node can run (the reason): the node keeps the one it has.
    Unreadable(String),
}

/// Why a call to the service failed. Each ends the session.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    #[error("the lease is gone (expired or revoked)")]
    LeaseGone,
    #[error("{0}")]
    Unavailable(String),
}

/// The coordination service as a node's follower uses it. Every call may fail; none is
/// retried by the service itself.
pub trait MapService: Send + Sync + 'static {
    type Watch: MapWatch;

    /// A new lease that lives `ttl` unless renewed; its id.
    fn grant_lease(&self, ttl: Duration) -> impl Future<Output = Result<i64, ServiceError>> + Send;
    /// Renews `lease` for its time to live; [`ServiceError::LeaseGone`] once it has expired.
    fn keep_alive(&self, lease: i64) -> impl Future<Output = Result<(), ServiceError>> + Send;
    /// Ends `lease` now, and the liveness bound to it.
    fn revoke(&self, lease: i64) -> impl Future<Output = Result<(), ServiceError>> + Send;
    /// The map now (a linearizable read).
    fn read(&self) -> impl Future<Output = Result<PlacedMap, ServiceError>> + Send;
    /// The changes of the map after `revision`.
    fn watch(
        &self,
        revision: u64,
    ) -> impl Future<Output = Result<Self::Watch, ServiceError>> + Send;
    /// Writes node `node`'s liveness, running `map`, bound to `lease`.
    fn register(
        &self,
        lease: i64,
        node: NodeId,
        map: &PartitionMap,
    ) -> impl Future<Output = Result<(), ServiceError>> + Send;
    /// The node runs `map` and `placement` from now on (production keeps them in the node's
    /// directory, to start on them while the service is down).
    fn taken(&self, map: &PartitionMap, placement: &Placement);
    /// The node refused `version` (logged by the follower already, once per version).
    fn refused(&self, _version: u64, _error: &MapUpdateError) {}
    /// Map `version` no longer lists the node: the follower has ended and dropped the
    /// node's liveness (see the module docs); the node should stop.
    fn removed(&self, version: u64);
    /// What and where the service is, for log lines ("etcd at http://...").
    fn describe(&self) -> String;
}

/// Where a [`MapService`] sends the version of the map that left its node out, once: the
/// other end resolves then, and the node's owner stops it.
#[derive(Debug)]
pub struct RemovalNotice(std::sync::Mutex<Option<tokio::sync::oneshot::Sender<u64>>>);

impl RemovalNotice {
    /// A notice and what resolves when it is given.
    pub fn new() -> (RemovalNotice, tokio::sync::oneshot::Receiver<u64>) {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        (RemovalNotice(std::sync::Mutex::new(Some(sender))), receiver)
    }

    /// Gives the notice (the first time; later ones, and one nobody waits for, do nothing).
    pub fn give(&self, version: u64) {
        let sender = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(sender) = sender {
            let _ = sender.send(version);
        }
    }
}

/// A watch of the map.
pub trait MapWatch: Send {
    /// The next changes, waiting for some.
    fn next(&mut self) -> impl Future<Output = Result<Vec<MapEvent>, ServiceError>> + Send;
}

/// Keeps a running node's map fresh; see the module docs.
pub struct Follower<S: MapService> {
    pub service: S,
    pub handle: MapHandle,
    pub node: NodeId,
    /// The lease's time to live: how long the node's liveness outlives its last renewal.
    pub lease_ttl: Duration,
}

/// Why a session ended.
enum Ended {
    Service(ServiceError),
    /// The map no longer lists the node, from this version on.
    Removed(u64),
}

impl From<ServiceError> for Ended {
    fn from(error: ServiceError) -> Ended {
        Ended::Service(error)
    }
}

/// What [`Follower::take`] did with a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    /// The node runs it from now on.
    Yes,
    /// Not newer, or refused (and logged).
    No,
    /// It no longer lists the node.
    Removed(u64),
}

/// What a follower keeps across its sessions.
struct FollowState {
    lease: Option<i64>,
    /// The last map version refused, so a refusal is logged once, not at every read.
    refused_version: u64,
    backoff: Duration,
}

impl<S: MapService> Follower<S> {
    /// Follows until `stop` changes (or the map no longer lists the node), then drops the
    /// node's liveness (revokes its lease).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        assert!(
            self.lease_ttl >= Duration::from_secs(1),
            "a lease renewed every third of its life needs at least a second"
        );
        let mut state = FollowState {
            lease: None,
            refused_version: 0,
            backoff: RECONNECT_BACKOFF_INITIAL,
        };
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                ended = self.session(&mut state) => match ended {
                    Ended::Removed(version) => {
                        tracing::warn!(
                            node = self.node,
                            map_version = version,
                            "this node is no longer in the map: it stops following it"
                        );
                        self.revoke(&mut state).await;
                        self.service.removed(version);
                        return;
                    }
                    Ended::Service(error) => tracing::warn!(
                        node = self.node,
                        %error,
                        map_version = self.handle.map().version,
                        retry_ms = state.backoff.as_millis() as u64,
                        "cut off from {}: serving with the map this node has; map changes wait",
                        self.service.describe()
                    ),
                },
            }
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                _ = tokio::time::sleep(state.backoff) => {}
            }
            state.backoff = (state.backoff * 2).min(RECONNECT_BACKOFF_MAX);
        }
        self.revoke(&mut state).await;
    }

    /// Drops the node's liveness at once, if it holds a lease, rather than when the lease
    /// lapses.
    async fn revoke(&self, state: &mut FollowState) {
        if let Some(lease) = state.lease.take() {
            let revoked = tokio::time::timeout(REVOKE_WAIT, self.service.revoke(lease)).await;
            if !matches!(revoked, Ok(Ok(()))) {
                tracing::info!(lease, "liveness not revoked; it lapses with its lease");
            }
        }
    }

    /// One session: see the module docs. Returns why it ended.
    async fn session(&self, state: &mut FollowState) -> Ended {
        match self.follow(state).await {
            Ok(never) => match never {},
            Err(ended) => ended,
        }
    }

    async fn follow(&self, state: &mut FollowState) -> Result<std::convert::Infallible, Ended> {
        let service = &self.service;
        let lease = service.grant_lease(self.lease_ttl).await?;
        state.lease = Some(lease);
        let read = service.read().await?;
        let revision = read.revision;
        if let Taken::Removed(version) = self.take(read, state) {
            return Err(Ended::Removed(version));
        }
        service
            .register(lease, self.node, &self.handle.map())
            .await?;
        tracing::info!(
            node = self.node,
            lease,
            map_version = self.handle.map().version,
            "registered in {}; watching the map",
            service.describe()
        );
        state.backoff = RECONNECT_BACKOFF_INITIAL;
        let mut watch = service.watch(revision).await?;
        let mut hints = self.handle.newer_map_seen();
        // Closed once the node is gone; its hints are not waited for after that.
        let mut hinting = true;
        let mut renew = tokio::time::interval(self.lease_ttl / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let taken = tokio::select! {
                // The lease's renewal first: a stream of map changes cannot starve it.
                biased;
                _ = renew.tick() => {
                    match service.keep_alive(lease).await {
                        Err(ServiceError::LeaseGone) if crate::known_bug!(LostLeaseIgnored) => {}
                        Err(ServiceError::LeaseGone) => {
                            state.lease = None;
                            return Err(ServiceError::LeaseGone.into());
                        }
                        other => other?,
                    }
                    Taken::No
                }
                changes = watch.next() => {
                    let mut taken = Taken::No;
                    for change in changes? {
                        match change {
                            MapEvent::Changed(placed) => match self.take(placed, state) {
                                Taken::No => {}
                                other => taken = other,
                            },
                            MapEvent::Deleted => tracing::error!(node = self.node, map_version = self.handle.map().version, "the map was deleted from the service; serving with the map this node has"),
                            MapEvent::Unreadable(error) => tracing::error!(node = self.node, %error, "a map in the service no node can run; ignored"),
                        }
                    }
                    taken
                }
                seen = hints.changed(), if hinting => match seen {
                    Err(_) => {
                        hinting = false;
                        Taken::No
                    }
                    Ok(()) => {
                        let newer = *hints.borrow_and_update();
                        tracing::info!(node = self.node, peer_map_version = newer, "a peer runs a newer map; reading it now");
                        self.take(service.read().await?, state)
                    }
                },
            };
            match taken {
                Taken::Yes => {
                    service
                        .register(lease, self.node, &self.handle.map())
                        .await?
                }
                Taken::Removed(version) => return Err(Ended::Removed(version)),
                Taken::No => {}
            }
        }
    }

    /// Hands `placed` to the node (with the placement of its copies, to a replicated node).
    fn take(&self, placed: PlacedMap, state: &mut FollowState) -> Taken {
        let version = placed.map.version;
        let taken = match self.handle.placement() {
            Some(_) => (self.handle).update_placed(placed.map.clone(), placed.placement.clone()),
            None => self.handle.update_map(placed.map.clone()),
        };
        match taken {
            Ok(MapChange::Applied { .. }) => {
                self.service.taken(&placed.map, &placed.placement);
                Taken::Yes
            }
            Ok(MapChange::Unchanged) => Taken::No,
            Err(MapUpdateError::NodeRemoved(_)) => Taken::Removed(version),
            Err(error) => {
                if version != state.refused_version {
                    state.refused_version = version;
                    tracing::error!(node = self.node, offered = version, map_version = self.handle.map().version, %error, "map from the service refused");
                    self.service.refused(version, &error);
                }
                Taken::No
            }
        }
    }
}
