//! How a node started with `--etcd` keeps its map: the runtime's [`Follower`] (sessions,
//! lease, watch, and what a node does when etcd is down or its lease is lost; the simulator
//! runs the same one) over etcd ([`EtcdMapService`]), and the map the node starts on
//! ([`initial_map`]).
//!
//! Each map taken is also written to `<node dir>/cluster-map.json`, so a node restarted while
//! etcd is down starts on the last map it ran.
//!
//! [`Follower`]: walletd_runtime::net::map_follower::Follower

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use walletd_core::model::partition::{NodeId, PartitionMap};
use walletd_core::model::placement::Placement;
use walletd_runtime::net::map_follower::{
    MapEvent, MapService, MapWatch, PlacedMap, RemovalNotice, ServiceError,
    RECONNECT_BACKOFF_INITIAL, RECONNECT_BACKOFF_MAX,
};

use crate::etcd::EtcdError;
use crate::map_store::{Liveness, MapDocument, MapStore, StoreError, StoredMap};
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

/// etcd as the map service of a node's [`Follower`]: the map key of `store`, the node's
/// liveness key, and its cache file.
pub struct EtcdMapService {
    pub store: MapStore,
    pub cache: PathBuf,
    /// When the node started (RFC 3339), for its liveness entry.
    pub since: String,
    /// Told the map version that left the node out, if one does (the node then stops).
    pub removed: RemovalNotice,
}

/// What etcd's errors mean to a follower: a lease gone ends the session as such; every
/// other failure as the service unavailable, with its reason.
fn service_error(error: StoreError) -> ServiceError {
    match error {
        StoreError::Etcd(EtcdError::LeaseGone(_)) => ServiceError::LeaseGone,
        other => ServiceError::Unavailable(other.to_string()),
    }
}

fn placed(stored: StoredMap) -> PlacedMap {
    PlacedMap {
        revision: stored.revision.max(0) as u64,
        map: stored.map,
        placement: stored.placement,
    }
}

/// The watch of the map key, with the store that parses what it sees.
pub struct EtcdMapWatch {
    store: MapStore,
    watch: crate::etcd::Watch,
}

impl MapWatch for EtcdMapWatch {
    async fn next(&mut self) -> Result<Vec<MapEvent>, ServiceError> {
        let changes = self.watch.next().await.map_err(StoreError::Etcd);
        let events = changes.map_err(service_error)?.into_iter().map(|change| {
            let Some(value) = change.value else {
                return MapEvent::Deleted;
            };
            let kv = crate::etcd::KeyValue {
                key: change.key,
                value,
                mod_revision: change.mod_revision,
                ..Default::default()
            };
            match self.store.stored(kv, change.mod_revision) {
                Ok(stored) => MapEvent::Changed(placed(stored)),
                Err(error) => MapEvent::Unreadable(error.to_string()),
            }
        });
        Ok(events.collect())
    }
}

impl MapService for EtcdMapService {
    type Watch = EtcdMapWatch;

    async fn grant_lease(&self, ttl: Duration) -> Result<i64, ServiceError> {
        let granted = self.store.etcd().grant_lease(ttl.as_secs() as i64).await;
        granted.map_err(|error| service_error(error.into()))
    }

    async fn keep_alive(&self, lease: i64) -> Result<(), ServiceError> {
        let renewed = self.store.etcd().keep_alive(lease).await;
        renewed
            .map(|_| ())
            .map_err(|error| service_error(error.into()))
    }

    async fn revoke(&self, lease: i64) -> Result<(), ServiceError> {
        let revoked = self.store.etcd().revoke(lease).await;
        revoked.map_err(|error| service_error(error.into()))
    }

    async fn read(&self) -> Result<PlacedMap, ServiceError> {
        self.store
            .read_existing()
            .await
            .map(placed)
            .map_err(service_error)
    }

    async fn watch(&self, revision: u64) -> Result<EtcdMapWatch, ServiceError> {
        let key = self.store.map_key();
        let watch = self.store.etcd().watch_key(&key, revision as i64 + 1).await;
        Ok(EtcdMapWatch {
            store: self.store.clone(),
            watch: watch.map_err(|error| service_error(error.into()))?,
        })
    }

    async fn register(
        &self,
        lease: i64,
        node: NodeId,
        map: &PartitionMap,
    ) -> Result<(), ServiceError> {
        let Some(address) = map.nodes.get(&node) else {
            return Err(ServiceError::Unavailable(format!(
                "node {node} is not in map version {}",
                map.version
            )));
        };
        let entry = Liveness {
            id: node,
            http: address.http.clone(),
            peer: address.peer.clone(),
            map_version: map.version,
            since: self.since.clone(),
        };
        self.store
            .register(&entry, lease)
            .await
            .map_err(service_error)
    }

    fn taken(&self, map: &PartitionMap, placement: &Placement) {
        write_cache(&self.cache, map, placement);
    }

    fn removed(&self, version: u64) {
        self.removed.give(version);
    }

    fn describe(&self) -> String {
        format!("etcd at {}", self.store.etcd().endpoints())
    }
}
