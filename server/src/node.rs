//! `wallet node`: one node of a multi-process cluster.
//!
//! Start: read and check the cluster file ([`crate::cluster`]) and the TLS files if any (the
//! cluster file's `[tls]` for peer links, `--tls-cert`/`--tls-key` for HTTPS); open or create
//! the node's data directory `<data-dir>/node-<id>`, refusing one that holds other partitions
//! than the map gives this node; bind the HTTP address; recover the node's partitions; link to
//! every other node over the authenticated peer protocol ([`walletd_runtime::net`]), under
//! mutual TLS with `[tls]`; serve the same HTTP API as `wallet serve`. Any node answers for
//! any account: commands and queries for a partition of another node are forwarded to it, and
//! answer 503 `partition_unavailable` while it is down (clients retry with the same
//! transaction id). History and `as_of` balances are read from the logs and their indexes, so a
//! node answers them for its own partitions and forwards them to the node that runs the
//! account's partition otherwise (503 `history_unavailable` while that node is down).
//!
//! The map comes from the cluster file (`--config`), fixed while the node runs, or from etcd
//! (`--etcd`): then [`crate::map_follower`] registers the node's liveness, watches the map and
//! hands each new version to the running node.
//!
//! Stop, on Ctrl-C or SIGTERM: as `serve` (drain, sync every local partition, exit 0); the
//! links close last; a node on etcd drops its liveness first.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::storages::open_storages;
use walletd_core::model::partition::{NodeAddress, NodeId, PartitionId, PartitionMap};
use walletd_core::model::placement::Placement;

use crate::replicated_node::MapSource;
use walletd_core::protocol::coordinator::CoordinatorConfig;
use walletd_runtime::driver::DriverConfig;
use walletd_runtime::engine::EngineConfig;
use walletd_runtime::net::map_follower::{Follower, RemovalNotice};
use walletd_runtime::net::{
    bind_peer_address, start_node_with, MapHandle, MutualTls, NetConfig, NodeConfig, NodeError, Tcp,
};

use crate::api::cluster::ClusterView;
use crate::cli::NodeArgs;
use crate::cluster::{ClusterConfig, ClusterConfigError, TlsFiles, SECRET_ENV};
use crate::datadir::DataDir;
use crate::etcd::{Etcd, EtcdError};
use crate::map_follower::{initial_map, EtcdMapService, CACHE_FILE};
use crate::map_store::{MapStore, StoreError};
use crate::serve::{
    api_tls, bind_http, build_api, log_recovery, options, serve_http, ServeError, Stop,
};
use crate::tls::{peer_tls, TlsConfigError};

/// Why a node could not start or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeRunError {
    #[error(transparent)]
    Config(#[from] ClusterConfigError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("peer TLS ([tls] in the cluster file): {0}")]
    PeerTls(#[from] TlsConfigError),
    #[error("cannot draw random bytes for the peer handshake: {0}")]
    Random(String),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "node {id} is not in the map in etcd (it lists {known:?}); add it with \
         `wallet cluster add-node --id {id} --http ADDR --peer ADDR`"
    )]
    NotInMap { id: NodeId, known: Vec<NodeId> },
    #[error("no cluster secret: set {SECRET_ENV} or --secret-file")]
    NoSecret,
}

/// Runs the node on a new multi-threaded runtime; the process exit code.
pub fn run(args: NodeArgs) -> ExitCode {
    crate::serve::run_to_exit_code("wallet node", node(args))
}

pub(crate) fn node_config(args: &NodeArgs) -> Result<NodeConfig, NodeRunError> {
    // The handshake's challenges must be unpredictable to anyone without the secret.
    let mut nonce_seed = [0u8; 32];
    getrandom::fill(&mut nonce_seed).map_err(|e| NodeRunError::Random(e.to_string()))?;
    Ok(NodeConfig {
        engine: EngineConfig {
            driver: DriverConfig {
                snapshot_every_events: args.service.snapshot_every_events,
                transfer_rows_in_memory_max: args.service.transfer_rows_in_memory_max as usize,
                coordinator: CoordinatorConfig {
                    try_timeout_us: args.try_timeout_ms.saturating_mul(1000),
                    ..CoordinatorConfig::default()
                },
                ..DriverConfig::default()
            },
            ..EngineConfig::default()
        },
        net: NetConfig::default(),
        nonce_seed,
    })
}

/// Where each partition's log is kept, for the event feed's answer about a partition of
/// another node (empty for a partition kept here, as `local` says): its owner and that
/// node's HTTP address.
pub fn partition_homes(map: &PartitionMap, local: impl Fn(PartitionId) -> bool) -> Vec<String> {
    (0..map.partitions())
        .map(|partition| {
            let owner = map.owner(partition);
            match map.nodes.get(&owner) {
                _ if local(partition) => String::new(),
                Some(address) => format!("node {owner} (HTTP {})", address.http),
                None => format!("node {owner}"),
            }
        })
        .collect()
}

/// The HTTP address of the node that keeps each partition not kept here (`None` for those
/// kept here), where history and `as_of` reads are forwarded. With HTTPS on the API,
/// forwarding needs the CA of the other nodes' certificates (`--tls-ca`): without it
/// (`forward` false), nothing is forwarded and such reads answer 503.
pub fn forward_addresses(
    map: &PartitionMap,
    local: impl Fn(PartitionId) -> bool,
    forward: bool,
) -> Vec<Option<String>> {
    if !forward {
        tracing::warn!(
            "history of accounts on other nodes is not forwarded: the API serves HTTPS and \
             --tls-ca names no CA for the other nodes' certificates"
        );
        return Vec::new();
    }
    (0..map.partitions())
        .map(|partition| {
            let owner = map.owner(partition);
            let address = map.nodes.get(&owner).filter(|_| !local(partition))?;
            Some(address.http.clone())
        })
        .collect()
}

/// Whether history reads are forwarded to other nodes: over plain HTTP, or over HTTPS
/// given the CA of the other nodes' API certificates.
pub(crate) fn forwards<T>(args: &NodeArgs, http_tls: &Option<T>) -> bool {
    http_tls.is_none() || args.service.tls_ca.is_some()
}

/// What a node starts with: its map, the cluster secret, the peer links' TLS, and, on etcd,
/// the store that keeps the map fresh.
struct Start {
    map: PartitionMap,
    /// Where each partition's copies are: a Raft group each (a replicated node) when some
    /// group was founded on more than one node, one copy each on its owner otherwise.
    placement: Placement,
    secret: Vec<u8>,
    links_tls: Option<MutualTls>,
    etcd: Option<MapStore>,
}

/// The directory of node `id` under `data_dir`.
fn node_root(args: &NodeArgs) -> PathBuf {
    args.data_dir.join(format!("node-{}", args.id))
}

async fn start_from_file(args: &NodeArgs, path: &std::path::Path) -> Result<Start, NodeRunError> {
    let cluster = ClusterConfig::load(path)?;
    cluster.node(args.id)?;
    let links_tls: Option<MutualTls> = match &cluster.tls {
        Some(paths) => Some(peer_tls(&paths.for_node(args.id))?),
        None => None,
    };
    Ok(Start {
        placement: Placement::derived(&cluster.map, cluster.replicas),
        map: cluster.map,
        secret: cluster.secret,
        links_tls,
        etcd: None,
    })
}

async fn start_from_etcd(args: &NodeArgs, urls: &str) -> Result<Start, NodeRunError> {
    let env_secret = std::env::var(SECRET_ENV).ok();
    let secret = crate::cluster::secret_without_file(env_secret, args.secret_file.as_deref())
        .map_err(|error| match error {
            ClusterConfigError::NoSecret => NodeRunError::NoSecret,
            other => other.into(),
        })?;
    let etcd = Etcd::new(urls, Duration::from_secs(5))?;
    let store = MapStore::new(etcd, &args.etcd_prefix);
    let root = node_root(args);
    std::fs::create_dir_all(&root).map_err(|source| ServeError::Io {
        what: format!("cannot create {}", root.display()),
        source,
    })?;
    let links_tls = match (&args.peer_tls_ca, &args.peer_tls_cert, &args.peer_tls_key) {
        (Some(ca), Some(cert), Some(key)) => Some(peer_tls(&TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        })?),
        _ => None,
    };
    let (map, placement) = initial_map(&store, &root.join(CACHE_FILE)).await?;
    if !map.nodes.contains_key(&args.id) {
        return Err(NodeRunError::NotInMap {
            id: args.id,
            known: map.nodes.keys().copied().collect(),
        });
    }
    Ok(Start {
        map,
        placement,
        secret,
        links_tls,
        etcd: Some(store),
    })
}

/// The task that keeps a node's map fresh from etcd ([`Follower`]).
pub(crate) struct Following {
    stop: walletd_runtime::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// Resolves with the map version that left this node out, if one does.
    removed: Option<tokio::sync::oneshot::Receiver<u64>>,
}

impl Following {
    pub(crate) fn start(
        store: MapStore,
        handle: MapHandle,
        args: &NodeArgs,
        root: &Path,
    ) -> Following {
        let (stop, stopped) = walletd_runtime::watch::channel(false);
        let (notice, removed) = RemovalNotice::new();
        let service = EtcdMapService {
            store,
            cache: root.join(CACHE_FILE),
            since: jiff::Timestamp::now().to_string(),
            removed: notice,
        };
        let follower = Follower {
            service,
            handle,
            node: args.id,
            lease_ttl: Duration::from_secs(args.lease_ttl_s),
        };
        let task = tokio::spawn(follower.run(stopped));
        Following {
            stop,
            task,
            removed: Some(removed),
        }
    }

    /// What resolves once the map leaves this node out (once: later calls get `None`).
    pub(crate) fn take_removed(&mut self) -> Option<tokio::sync::oneshot::Receiver<u64>> {
        self.removed.take()
    }

    /// Stops following and drops the node's liveness, so peers and operators see it gone at
    /// once rather than when its lease lapses.
    pub(crate) async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

async fn node(args: NodeArgs) -> Result<(), NodeRunError> {
    let start = match (&args.config, &args.etcd) {
        (Some(path), _) => start_from_file(&args, path).await?,
        (None, Some(urls)) => start_from_etcd(&args, urls).await?,
        (None, None) => unreachable!("clap requires --config or --etcd"),
    };
    let Start {
        map,
        placement,
        secret,
        links_tls,
        etcd,
    } = start;
    if placement.is_replicated() {
        let root = node_root(&args);
        let source = match etcd {
            None => MapSource::File,
            Some(store) => MapSource::Etcd(store),
        };
        return crate::replicated_node::run(&args, map, placement, secret, links_tls, root, source)
            .await;
    }
    let address: NodeAddress = map.nodes[&args.id].clone();
    let http_tls = api_tls(&args.service)?;
    let options = options(&args.service)?;
    let owned = map.partitions_of(args.id);
    let root = node_root(&args);
    let dir = DataDir::create_or_check(&root, map.partitions()).map_err(ServeError::from)?;
    dir.claim_for_node(args.id, &owned)
        .map_err(ServeError::from)?;
    tracing::info!(
        node = args.id,
        data_dir = %root.display(),
        partitions = ?owned,
        map_version = map.version,
        peer = address.peer,
        peer_tls = links_tls.is_some(),
        etcd = etcd.as_ref().map(|store| store.etcd().endpoints()),
        "starting"
    );
    let config = node_config(&args)?;
    let storages = open_storages(
        dir.root(),
        map.partitions(),
        &owned,
        |p| dir.partition_dir(p),
        args.service.group_commit,
    )
    .map_err(ServeError::from)?;
    let http = bind_http(&address.http, http_tls.is_some()).await?;
    let listener = bind_peer_address(&map, args.id).await?;
    let (id, secret) = (args.id, &secret);
    let node = match links_tls {
        Some(tls) => {
            start_node_with(tls, listener, &map, id, secret, storages.partitions, config).await?
        }
        None => {
            start_node_with(Tcp, listener, &map, id, secret, storages.partitions, config).await?
        }
    };
    log_recovery(node.engine().recovery_reports());
    let mut following = etcd.map(|store| Following::start(store, node.map_handle(), &args, &root));
    let local = |partition| map.owner(partition) == args.id;
    let homes = partition_homes(&map, local);
    let forward_to = forward_addresses(&map, local, forwards(&args, &http_tls));
    let stats: Vec<_> = (node.engine().local_partitions().iter().copied())
        .zip(node.engine().stats().iter().cloned())
        .collect();
    let view = ClusterView::unreplicated(&map, args.id, node.links(), &stats);
    let api = build_api(node.engine(), dir, options, homes, forward_to)
        .with_journal(storages.journal)
        .with_cluster(view);
    let grace = Duration::from_millis(args.service.shutdown_grace_ms);
    let local = node.engine().local_partitions().to_vec();
    let removed = following.as_mut().and_then(Following::take_removed);
    let (served, stop) = serve_http(http, http_tls, api, &local, grace, removed).await;
    if let Some(following) = following {
        following.stop().await;
    }
    tracing::info!("syncing and stopping partitions");
    let node_stopped = node.shutdown().await;
    served.map_err(|source| ServeError::Io {
        what: "HTTP server failed".into(),
        source,
    })?;
    node_stopped.map_err(ServeError::from)?;
    match stop {
        Stop::PartitionStopped(partition) => Err(ServeError::PartitionStopped(partition).into()),
        Stop::Running | Stop::Signal | Stop::Removed(_) => Ok(()),
    }
}
