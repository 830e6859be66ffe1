//! The partition map in etcd (each partition's replica group with it), and which nodes are
//! alive.
//!
//! Keys, under a prefix (`--etcd-prefix`, default `/walletd`, so one etcd can hold several
//! clusters):
//!
//! | key | value | lifetime |
//! | --- | --- | --- |
//! | `<prefix>/map` | the [`MapDocument`] (JSON) | written by `wallet cluster`, every change a compare-and-swap on its revision |
//! | `<prefix>/live/<id>` | a [`Liveness`] (JSON): the node's addresses and the map version it runs | bound to the node's lease: gone when the node stops or cannot renew it |
//!
//! Every change of the map reads it, changes it, raises `map_version` by one and writes it
//! only if its revision is still the one read; a writer that lost the race reads again. So
//! concurrent operators never overwrite each other, and a map version names one map forever.
//!
//! # Layout
//! - this file: [`MapStore`], the keys, reads, the first write, compare-and-swap updates,
//!   liveness;
//! - `document`: the stored format of the map (nodes, each partition's group and founders)
//!   and its checks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use walletd_core::model::partition::{NodeId, PartitionMap};
use walletd_core::model::placement::Placement;

use crate::etcd::{Etcd, EtcdError, KeyValue};

pub mod document;

pub use document::{DocumentError, MapDocument};

/// The default key prefix.
pub const PREFIX_DEFAULT: &str = "/walletd";
/// How many times an update reads again after losing a compare-and-swap race.
pub const SWAP_ATTEMPTS_MAX: u32 = 16;

/// Why the stored map could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("{key} in etcd: {source}")]
    Document { key: String, source: DocumentError },
    #[error("no partition map in etcd at {key}: write one with `wallet cluster init`")]
    NoMap { key: String },
    #[error(
        "a partition map (version {version}) is already in etcd at {key}; \
         `wallet cluster status` shows it, `--force` replaces it"
    )]
    Exists { key: String, version: u64 },
    #[error("the map kept changing under this update; {SWAP_ATTEMPTS_MAX} attempts lost the race")]
    Contended,
    #[error("{0}")]
    Refused(String),
}

/// The map as stored, with the revision a compare-and-swap compares against.
#[derive(Debug, Clone)]
pub struct StoredMap {
    /// Each partition's owner is the first node of its group.
    pub map: PartitionMap,
    /// Each partition's group and founders.
    pub placement: Placement,
    /// The bytes as etcd holds them, parsed.
    pub document: MapDocument,
    /// The bytes as etcd holds them.
    pub raw: Vec<u8>,
    /// The revision of the map key's last change.
    pub mod_revision: i64,
    /// The store's revision when it was read: a watch from the next one misses nothing.
    pub revision: i64,
}

/// What a running node says about itself under `<prefix>/live/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liveness {
    pub id: NodeId,
    pub http: String,
    pub peer: String,
    /// The map version the node runs on.
    pub map_version: u64,
    /// When the node registered (RFC 3339).
    pub since: String,
}

/// The map and liveness keys of one cluster in one etcd.
#[derive(Debug, Clone)]
pub struct MapStore {
    etcd: Etcd,
    prefix: String,
}

impl MapStore {
    pub fn new(etcd: Etcd, prefix: &str) -> MapStore {
        let prefix = prefix.trim_end_matches('/').to_string();
        MapStore { etcd, prefix }
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    pub fn map_key(&self) -> String {
        format!("{}/map", self.prefix)
    }

    /// Every key of the cluster: what a node watches.
    pub fn cluster_prefix(&self) -> String {
        format!("{}/", self.prefix)
    }

    fn live_prefix(&self) -> String {
        format!("{}/live/", self.prefix)
    }

    pub fn live_key(&self, node: NodeId) -> String {
        format!("{}/live/{node}", self.prefix)
    }

    /// The stored map, or `None` if there is none.
    pub async fn read(&self) -> Result<Option<StoredMap>, StoreError> {
        let (kv, revision) = self.etcd.get(&self.map_key()).await?;
        kv.map(|kv| self.stored(kv, revision)).transpose()
    }

    /// The stored map; an error that says how to write one if there is none.
    pub async fn read_existing(&self) -> Result<StoredMap, StoreError> {
        self.read().await?.ok_or_else(|| StoreError::NoMap {
            key: self.map_key(),
        })
    }

    /// Parses the map key's value as read at store revision `revision`.
    pub fn stored(&self, kv: KeyValue, revision: i64) -> Result<StoredMap, StoreError> {
        let document = |source| StoreError::Document {
            key: self.map_key(),
            source,
        };
        let parsed = MapDocument::parse(&kv.value).map_err(document)?;
        let (map, placement) = parsed.to_placed().map_err(document)?;
        Ok(StoredMap {
            map,
            placement,
            document: parsed,
            raw: kv.value,
            mod_revision: kv.mod_revision,
            revision,
        })
    }

    /// Writes the first map. If one exists: refused, or with `force` replaced by `map` under
    /// a version above the stored one (so running nodes see a newer map and judge it as any
    /// other change). `placement` gives each partition's group and founders. The version
    /// written.
    pub async fn init(
        &self,
        mut map: PartitionMap,
        placement: &Placement,
        force: bool,
    ) -> Result<u64, StoreError> {
        let checked = MapDocument::from_placed(&map, placement);
        checked.to_placed().map_err(|source| StoreError::Document {
            key: self.map_key(),
            source,
        })?;
        let bytes = checked.to_bytes();
        if self.etcd.create(&self.map_key(), &bytes).await? {
            return Ok(map.version);
        }
        let stored = self.read_existing().await;
        let existing = match (stored, force) {
            (Ok(stored), false) => {
                return Err(StoreError::Exists {
                    key: self.map_key(),
                    version: stored.map.version,
                })
            }
            (Ok(stored), true) => (stored.map.version, stored.mod_revision),
            // A stored map this version cannot read is replaced only when forced.
            (Err(error), false) => return Err(error),
            (Err(_), true) => {
                let (kv, _) = self.etcd.get(&self.map_key()).await?;
                (0, kv.map(|kv| kv.mod_revision).unwrap_or(0))
            }
        };
        let (version, mod_revision) = existing;
        map.version = map.version.max(version + 1);
        let bytes = MapDocument::from_placed(&map, placement).to_bytes();
        if mod_revision > 0
            && self
                .etcd
                .swap(&self.map_key(), mod_revision, &bytes)
                .await?
        {
            return Ok(map.version);
        }
        Err(StoreError::Contended)
    }

    /// Reads the map, applies `change` (which is given the map and its placement, and
    /// returns the new map, or refuses with a message), raises the version by one and
    /// writes it if nobody wrote in between; reads again when somebody did. The placement
    /// is kept as stored, so `change` changes nodes, never groups (see
    /// [`MapStore::swap_placed`] for changes that do). The map as written.
    pub async fn update(
        &self,
        change: impl Fn(&PartitionMap, &Placement) -> Result<PartitionMap, String>,
    ) -> Result<PartitionMap, StoreError> {
        for _ in 0..SWAP_ATTEMPTS_MAX {
            let stored = self.read_existing().await?;
            let changed = change(&stored.map, &stored.placement).map_err(StoreError::Refused)?;
            if let Some(written) = self
                .swap_placed(&stored, changed, stored.placement.clone())
                .await?
            {
                return Ok(written);
            }
            tracing::info!(
                key = self.map_key(),
                "the map changed while this update was made; reading it again"
            );
        }
        Err(StoreError::Contended)
    }

    /// Writes `map` with `placement` (each partition's owner set to the first of its group)
    /// under the version after `stored`'s, if the map key is still at `stored`'s revision.
    /// The map as written, or `None` if somebody wrote in between (read again and decide
    /// anew). Refused, before anything is written, if nodes would refuse the result.
    pub async fn swap_placed(
        &self,
        stored: &StoredMap,
        mut map: PartitionMap,
        placement: Placement,
    ) -> Result<Option<PartitionMap>, StoreError> {
        map.version = stored.map.version + 1;
        map.owners = placement
            .groups
            .iter()
            .map(|group| group.first().copied().unwrap_or(NodeId::MAX))
            .collect();
        let document = MapDocument::from_placed(&map, &placement);
        // What nodes will check, checked before anything is written.
        let (written, _) = document
            .to_placed()
            .map_err(|source| StoreError::Document {
                key: self.map_key(),
                source,
            })?;
        let swapped = self
            .etcd
            .swap(&self.map_key(), stored.mod_revision, &document.to_bytes())
            .await?;
        Ok(swapped.then_some(written))
    }

    /// Every node that holds a lease now, by id. Entries that cannot be read are skipped
    /// (with a log line): liveness is advice, never a reason to fail.
    pub async fn live_nodes(&self) -> Result<BTreeMap<NodeId, Liveness>, StoreError> {
        let (kvs, _) = self.etcd.get_prefix(&self.live_prefix()).await?;
        let mut live = BTreeMap::new();
        for kv in kvs {
            match serde_json::from_slice::<Liveness>(&kv.value) {
                Ok(entry) => {
                    live.insert(entry.id, entry);
                }
                Err(error) => tracing::warn!(
                    key = %String::from_utf8_lossy(&kv.key),
                    %error,
                    "unreadable liveness entry skipped"
                ),
            }
        }
        Ok(live)
    }

    /// Writes `entry` under the node's liveness key, bound to `lease`.
    pub async fn register(&self, entry: &Liveness, lease: i64) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(entry).expect("liveness encodes");
        self.etcd
            .put(&self.live_key(entry.id), &bytes, lease)
            .await?;
        Ok(())
    }
}
