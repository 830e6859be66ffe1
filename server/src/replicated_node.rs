//! `wallet node` of a replicated cluster (`replicas` in the cluster file above 1): every
//! partition is a Raft group with replicas on `replicas` distinct nodes, its owner and the
//! nodes after it in id order ([`walletd_runtime::net::replicated`]).
//!
//! The data directory holds the partitions this node has a replica of:
//! `<data-dir>/node-<id>/partition-<p>/` its log and snapshots as on any node, and
//! `<data-dir>/node-<id>/raft/partition-<p>/` its Raft store (hard state and log entries;
//! [`FileRaftStore`]). A request for any account is served through this node's replica of
//! the account's partition, which hands it to its group's leader, or, for a partition with
//! no replica here, sent to a node that has one; while a group elects a leader, requests
//! wait up to two seconds and then answer 503 `partition_unavailable` (clients retry with
//! the same transaction id). History, `as_of` balances and the event feed read this node's
//! own copy of a partition's log, which holds committed records only, and are forwarded
//! over HTTP to the partition's first replica node for the others.
//!
//! Every Raft store of the node syncs through one node journal in
//! `<data-dir>/node-<id>/raft/journal/`, so that a round of writes costs the node one
//! `fdatasync` whatever the number of its groups ([`FileRaftStore::open_journaled`]).
//!
//! A Raft store that is damaged before its tail (a record that a later one says was synced
//! does not check out) is moved aside to `raft/partition-<p>.damaged-<unix seconds>/`, and
//! the replica starts with a new, empty store: it rejoins its group under a new id and
//! catches up from the others, as a replica whose disk was lost does
//! ([`walletd_core::replica::membership`]). Its partition log, which holds committed records
//! only, is kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use walletd_core::model::partition::{NodeAddress, NodeId, PartitionId, PartitionMap};
use walletd_core::model::placement::Placement;
use walletd_core::replica::{DurableRaft, LogLimits};
use walletd_runtime::driver::DriverStats;
use walletd_runtime::net::replicated::{
    replica_id, start_replicated_node, ReplicaStores, ReplicatedConfig, ReplicatedView,
};
use walletd_runtime::net::{bind_peer_address, MutualTls, Tcp};
use walletd_runtime::storage::file::{FileStorage, FileStorageConfig};
use walletd_runtime::storage::journal::{JournalConfig, NodeJournal};
use walletd_runtime::storage::raft_store::file::{FileRaftStore, FileRaftStoreConfig};

use crate::api::cluster::ClusterView;
use crate::cli::NodeArgs;
use crate::datadir::DataDir;
use crate::history::Residence;
use crate::map_store::MapStore;
use crate::node::{
    forward_addresses, forwards, node_config, partition_homes, Following, NodeRunError,
};
use crate::serve::{api_tls, bind_http, build_api_for, options, serve_http, LogHomes, ServeError};

/// Where partition `partition`'s Raft store lives under a node's root.
pub fn raft_dir(root: &Path, partition: PartitionId) -> PathBuf {
    root.join("raft").join(format!("partition-{partition}"))
}

/// Where the node journal of the Raft stores lives under a node's root.
pub fn raft_journal_dir(root: &Path) -> PathBuf {
    root.join("raft").join("journal")
}

/// Opens the Raft store of `partition` in `dir`; a damaged one is moved aside and a new one
/// started (see the module docs).
fn open_raft_store(
    dir: &Path,
    voters: &[u64],
    journal: &Arc<NodeJournal>,
    partition: PartitionId,
) -> std::io::Result<FileRaftStore> {
    let open = || {
        let initial = DurableRaft::new(voters);
        let config = FileRaftStoreConfig::default();
        FileRaftStore::open_journaled(dir, initial, config, Arc::clone(journal), partition)
    };
    let error = match open() {
        Ok(store) => return Ok(store),
        Err(error) if error.kind() == std::io::ErrorKind::InvalidData => error,
        Err(error) => return Err(error),
    };
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let aside = dir.with_file_name(format!("{name}.damaged-{}", since_epoch.as_secs()));
    tracing::error!(
        store = %dir.display(),
        moved_to = %aside.display(),
        %error,
        "the Raft store is damaged; it is moved aside and the replica rejoins its group \
         under a new id"
    );
    std::fs::rename(dir, &aside)?;
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    open()
}

/// A node's copies on its disk: `partition-<p>/` (the partition log) and
/// `raft/partition-<p>/` (the Raft store) under its root, every Raft store synced through
/// the node's journal.
struct FileStores {
    dir: DataDir,
    root: PathBuf,
    journal: Arc<NodeJournal>,
}

impl ReplicaStores for FileStores {
    type Log = FileStorage;
    type Raft = FileRaftStore;

    fn held(&self) -> Vec<PartitionId> {
        (0..self.dir.partitions())
            .filter(|p| raft_dir(&self.root, *p).exists() || self.dir.partition_dir(*p).exists())
            .collect()
    }

    async fn open(
        &self,
        partition: PartitionId,
        founders: &[NodeId],
    ) -> std::io::Result<(FileStorage, FileRaftStore)> {
        let path = self.dir.partition_dir(partition);
        let with_path = |path: &Path| {
            let path = path.display().to_string();
            move |error: std::io::Error| {
                std::io::Error::new(error.kind(), format!("{path}: {error}"))
            }
        };
        let storage =
            FileStorage::open(&path, FileStorageConfig::default()).map_err(with_path(&path))?;
        let raft = raft_dir(&self.root, partition);
        let voters: Vec<u64> = founders.iter().copied().map(replica_id).collect();
        let store =
            open_raft_store(&raft, &voters, &self.journal, partition).map_err(with_path(&raft))?;
        Ok((storage, store))
    }

    async fn remove(
        &self,
        partition: PartitionId,
        log: FileStorage,
        raft: FileRaftStore,
    ) -> std::io::Result<()> {
        drop((log, raft));
        for dir in [
            self.dir.partition_dir(partition),
            raft_dir(&self.root, partition),
        ] {
            match std::fs::remove_dir_all(&dir) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
            if let Some(parent) = dir.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
        }
        Ok(())
    }
}

/// How a replicated node learns of its map: from its cluster file, fixed (its data
/// directory then holds exactly the partitions the file gives it), or from etcd, where its
/// copies move ([`crate::map_follower`]).
pub(crate) enum MapSource {
    File,
    Etcd(MapStore),
}

/// Where a moving node's partition logs are now: here while a replica runs here, on
/// another node of the partition's group otherwise (history reads are forwarded there, over
/// HTTPS only given `--tls-ca`).
struct CopiesNow {
    view: ReplicatedView,
    forward: bool,
}

impl Residence for CopiesNow {
    fn local(&self, partition: PartitionId) -> Option<Arc<DriverStats>> {
        self.view.stats(partition)
    }

    fn elsewhere(&self, partition: PartitionId) -> Option<(String, String)> {
        if !self.forward || self.view.status(partition).is_some() {
            return None;
        }
        let (map, placement) = self.view.map();
        let node = placement
            .group(partition)
            .iter()
            .find(|n| **n != self.view.node())?;
        let address = map.nodes.get(node)?;
        Some((
            format!("node {node} ({})", address.http),
            address.http.clone(),
        ))
    }
}

/// Runs node `args.id` of the replicated cluster of `map` until a signal, with each
/// partition's copies where `placement` puts them.
pub(crate) async fn run(
    args: &NodeArgs,
    map: PartitionMap,
    placement: Placement,
    secret: Vec<u8>,
    links_tls: Option<MutualTls>,
    root: PathBuf,
    source: MapSource,
) -> Result<(), NodeRunError> {
    let address: NodeAddress = map.nodes[&args.id].clone();
    let http_tls = api_tls(&args.service)?;
    let options = options(&args.service)?;
    let partitions = map.partitions();
    let named = placement.hosted(args.id);
    let dir = DataDir::create_or_check(&root, partitions).map_err(ServeError::from)?;
    match source {
        MapSource::File => dir.claim_for_node(args.id, &named),
        MapSource::Etcd(_) => dir.claim_for_moving_node(args.id),
    }
    .map_err(ServeError::from)?;
    let mut election_seed = [0u8; 8];
    getrandom::fill(&mut election_seed).map_err(|e| NodeRunError::Random(e.to_string()))?;
    let mut config = ReplicatedConfig::new(node_config(args)?, u64::from_le_bytes(election_seed));
    config.log = LogLimits {
        compact_after: args.raft_compact_after,
        keep: args.raft_compact_after / 4,
    };
    let journal_dir = raft_journal_dir(&root);
    let raft_journal = NodeJournal::open(&journal_dir, partitions, JournalConfig::default())
        .map_err(|error| ServeError::Io {
            what: format!(
                "cannot open the Raft stores' journal {}",
                journal_dir.display()
            ),
            source: std::io::Error::other(error.to_string()),
        })?;
    let stores = FileStores {
        dir: dir.clone(),
        root: root.clone(),
        journal: Arc::clone(&raft_journal),
    };
    let mut hosted = stores.held();
    hosted.extend(named.iter().copied());
    hosted.sort_unstable();
    hosted.dedup();
    tracing::info!(
        node = args.id,
        data_dir = %root.display(),
        partitions,
        hosted = ?hosted,
        map_version = map.version,
        peer = address.peer,
        peer_tls = links_tls.is_some(),
        "starting a replicated node"
    );
    // A partition this node does not host has nothing to redo: its batches, if any, go.
    for partition in (0..partitions).filter(|p| !hosted.contains(p)) {
        if !raft_journal.take_recovered(partition).is_empty() {
            tracing::warn!(
                partition,
                "dropped the journaled Raft records of a partition not hosted here"
            );
        }
        raft_journal.checkpointed(partition, raft_journal.recovered_through());
    }
    let http = bind_http(&address.http, http_tls.is_some()).await?;
    let listener = bind_peer_address(&map, args.id).await?;
    let (id, secret) = (args.id, &secret);
    let node = match links_tls {
        Some(tls) => {
            let placement = placement.clone();
            start_replicated_node(tls, listener, &map, placement, id, secret, stores, config)
                .await?
        }
        None => {
            let placement = placement.clone();
            start_replicated_node(Tcp, listener, &map, placement, id, secret, stores, config)
                .await?
        }
    };
    let mut following = match source {
        MapSource::File => None,
        MapSource::Etcd(store) => Some(Following::start(store, node.map_handle(), args, &root)),
    };
    let stats: Vec<(PartitionId, Arc<DriverStats>)> = node.stats();
    // History and the feed of a partition with no replica here are another copy's to
    // answer: the map's owner's, or, where copies move, a node of its group now.
    let logs = match &following {
        None => {
            let local = |partition| hosted.contains(&partition);
            let homes = partition_homes(&map, local);
            let forward_to = forward_addresses(&map, local, forwards(args, &http_tls));
            LogHomes::Fixed { homes, forward_to }
        }
        Some(_) => LogHomes::Moving(Arc::new(CopiesNow {
            view: node.view(),
            forward: forwards(args, &http_tls),
        })),
    };
    let view = ClusterView::replicated(node.view());
    let api = build_api_for(node.client(), stats, dir, options, logs)
        .with_cluster(view)
        .with_replicas(node.view());
    let grace = Duration::from_millis(args.service.shutdown_grace_ms);
    // No partition is watched for liveness through requests: a group without a leader
    // answers 503 for a while, which is an election, not a reason to stop this node.
    let removed = following.as_mut().and_then(Following::take_removed);
    let (served, _stop) = serve_http(http, http_tls, api, &[], grace, removed).await;
    if let Some(following) = following {
        following.stop().await;
    }
    tracing::info!("syncing and stopping replicas");
    let stopped = node.shutdown().await;
    served.map_err(|source| ServeError::Io {
        what: "HTTP server failed".into(),
        source,
    })?;
    stopped.map_err(|error| ServeError::Io {
        what: "a replica did not stop cleanly".into(),
        source: std::io::Error::other(error.to_string()),
    })?;
    Ok(())
}
