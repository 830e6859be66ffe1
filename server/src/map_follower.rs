//! How a node started with `--etcd` keeps its map: it reads the map at start, registers its
//! liveness under a lease, watches the map and hands every new version to the running node
//! ([`MapHandle::update_map`], which takes new nodes and addresses and refuses moves, or on
//! a replicated node [`MapHandle::update_placed`], which moves copies as the placement
//! says).
//!
//! etcd is needed to change the map, never to serve: while it is down the node serves with
//! the map it has, logs that it is cut off, and reconnects with backoff (a new lease, the
//! map read anew, then the watch again from the revision of that read, so no change is
//! missed). Each map taken is also written to `<node dir>/cluster-map.json`, so a node
//! restarted while etcd is down starts on the last map it ran.
//!
//! A peer that claims a newer map than this node's (the peer protocol's `StaleMap`) makes
//! the node read the map at once rather than wait for its watch.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use walletd_core::model::partition::{NodeId, PartitionMap};
use walletd_core::model::placement::Placement;
use walletd_runtime::net::{MapChange, MapHandle};

use crate::etcd::EtcdError;
use crate::map_store::{Liveness, MapDocument, MapStore, StoreError, StoredMap};

/// First wait before reconnecting to etcd; doubles up to [`RECONNECT_BACKOFF_MAX`].
const RECONNECT_BACKOFF_INITIAL: Duration = Duration::from_millis(250);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a stopping node waits for etcd to drop its liveness at once.
const REVOKE_WAIT: Duration = Duration::from_secs(2);
/// The file under the node's directory that keeps the last map it ran.
pub const CACHE_FILE: &str = "cluster-map.json";

/// The map a node starts on, with the placement of its partitions' copies: etcd's, or,
/// while etcd cannot be reached, the last one the node ran (from its cache). Without either
/// it waits for etcd, retrying with backoff.
pub async fn initial_map(
    store: &MapStore,
    cache: &Path,
) -> Result<(PartitionMap, Placement), StoreError> {
    let mut backoff = RECONNECT_BACKOFF_INITIAL;
    loop {
        match store.read_existing().await {
            Ok(stored) => {
                write_cache(cache, &stored.map, &stored.placement);
                return Ok((stored.map, stored.placement));
            }
            Err(StoreError::Etcd(error)) => match read_cache(cache) {
                Some((map, placement)) => {
                    tracing::warn!(%error, map_version = map.version, cache = %cache.display(), "etcd unreachable: starting on the last map this node ran");
                    return Ok((map, placement));
                }
                None => {
                    tracing::warn!(%error, retry_ms = backoff.as_millis() as u64, "etcd unreachable and no map cached here: waiting for etcd");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                }
            },
            Err(other) => return Err(other),
        }
    }
}

fn read_cache(cache: &Path) -> Option<(PartitionMap, Placement)> {
    let bytes = fs::read(cache).ok()?;
    match MapDocument::parse(&bytes).and_then(|document| document.to_placed()) {
        Ok(placed) => Some(placed),
        Err(error) => {
            tracing::warn!(%error, cache = %cache.display(), "cached map unreadable; ignored");
            None
        }
    }
}

/// Writes the map a node runs to its cache, whole or not at all (a temporary file renamed).
fn write_cache(cache: &Path, map: &PartitionMap, placement: &Placement) {
    let temporary = cache.with_extension("json.tmp");
    let bytes = MapDocument::from_placed(map, placement).to_bytes();
    let written = fs::write(&temporary, bytes).and_then(|()| fs::rename(&temporary, cache));
    if let Err(error) = written {
        tracing::warn!(%error, cache = %cache.display(), "cannot keep the map in the node's directory");
    }
}

/// Keeps a running node's map fresh from etcd; see the module docs.
pub struct Follower {
    pub store: MapStore,
    pub handle: MapHandle,
    pub node: NodeId,
    pub cache: PathBuf,
    pub lease_ttl_s: u64,
    /// When the node started (RFC 3339), for its liveness entry.
    pub since: String,
}

/// What a follower keeps across its sessions with etcd.
struct FollowState {
    lease: Option<i64>,
    /// The last map version refused, so a refusal is logged once, not at every read.
    refused_version: u64,
    backoff: Duration,
}

impl Follower {
    /// Follows until `stop` changes, then drops the node's liveness (revokes its lease).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut state = FollowState {
            lease: None,
            refused_version: 0,
            backoff: RECONNECT_BACKOFF_INITIAL,
        };
        loop {
            tokio::select! {
                ended = self.session(&mut state) => {
                    tracing::warn!(
                        error = %ended,
                        map_version = self.handle.map().version,
                        retry_ms = state.backoff.as_millis() as u64,
                        "cut off from etcd: serving with the map this node has; map changes wait"
                    );
                }
                _ = stop.changed() => break,
            }
            tokio::select! {
                _ = tokio::time::sleep(state.backoff) => {}
                _ = stop.changed() => break,
            }
            state.backoff = (state.backoff * 2).min(RECONNECT_BACKOFF_MAX);
        }
        if let Some(lease) = state.lease {
            let revoked = tokio::time::timeout(REVOKE_WAIT, self.store.etcd().revoke(lease)).await;
            if !matches!(revoked, Ok(Ok(()))) {
                tracing::info!(lease, "liveness not revoked; it lapses with its lease");
            }
        }
    }

    /// One session with etcd: a lease, the map read and taken, then the watch and the lease's
    /// renewals until something fails (the error says what).
    async fn session(&self, state: &mut FollowState) -> StoreError {
        match self.follow(state).await {
            Ok(never) => match never {},
            Err(error) => error,
        }
    }

    async fn follow(
        &self,
        state: &mut FollowState,
    ) -> Result<std::convert::Infallible, StoreError> {
        let etcd = self.store.etcd();
        let lease = etcd.grant_lease(self.lease_ttl_s as i64).await?;
        state.lease = Some(lease);
        let stored = self.store.read_existing().await?;
        let revision = stored.revision;
        self.take(stored, state);
        self.register(lease).await?;
        tracing::info!(
            node = self.node,
            lease,
            map_version = self.handle.map().version,
            etcd = etcd.endpoints(),
            "registered in etcd; watching the map"
        );
        state.backoff = RECONNECT_BACKOFF_INITIAL;
        let mut watch = etcd.watch_key(&self.store.map_key(), revision + 1).await?;
        let mut hints = self.handle.newer_map_seen();
        let mut renew = tokio::time::interval(Duration::from_secs(self.lease_ttl_s) / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changes = watch.next() => {
                    for change in changes? {
                        let Some(value) = change.value else {
                            tracing::error!(key = self.store.map_key(), map_version = self.handle.map().version, "the map was deleted from etcd; serving with the map this node has");
                            continue;
                        };
                        let kv = crate::etcd::KeyValue { key: change.key, value, mod_revision: change.mod_revision, ..Default::default() };
                        match self.store.stored(kv, change.mod_revision) {
                            Ok(stored) => {
                                if self.take(stored, state) {
                                    self.register(lease).await?;
                                }
                            }
                            Err(error) => tracing::error!(%error, "a map in etcd no node can run; ignored"),
                        }
                    }
                }
                _ = renew.tick() => {
                    etcd.keep_alive(lease).await.map_err(|error| match error {
                        EtcdError::LeaseGone(_) => { state.lease = None; StoreError::Etcd(error) }
                        other => StoreError::Etcd(other),
                    })?;
                }
                seen = hints.changed() => {
                    if seen.is_err() { continue; }
                    let newer = *hints.borrow_and_update();
                    tracing::info!(node = self.node, peer_map_version = newer, "a peer runs a newer map; reading it now");
                    let stored = self.store.read_existing().await?;
                    if self.take(stored, state) {
                        self.register(lease).await?;
                    }
                }
            }
        }
    }

    /// Hands `stored` to the node (with the placement of its copies, to a replicated
    /// node); true if the node runs it from now on.
    fn take(&self, stored: StoredMap, state: &mut FollowState) -> bool {
        let version = stored.map.version;
        let taken = match self.handle.placement() {
            Some(_) => (self.handle).update_placed(stored.map.clone(), stored.placement.clone()),
            None => self.handle.update_map(stored.map.clone()),
        };
        match taken {
            Ok(MapChange::Applied { .. }) => {
                write_cache(&self.cache, &stored.map, &stored.placement);
                true
            }
            Ok(MapChange::Unchanged) => false,
            Err(error) => {
                if version != state.refused_version {
                    state.refused_version = version;
                    tracing::error!(node = self.node, offered = version, map_version = self.handle.map().version, %error, "map from etcd refused");
                }
                false
            }
        }
    }

    /// Writes (or rewrites) the node's liveness entry under `lease`.
    async fn register(&self, lease: i64) -> Result<(), StoreError> {
        let map = self.handle.map();
        let address = &map.nodes[&self.node];
        let entry = Liveness {
            id: self.node,
            http: address.http.clone(),
            peer: address.peer.clone(),
            map_version: map.version,
            since: self.since.clone(),
        };
        self.store.register(&entry, lease).await
    }
}
