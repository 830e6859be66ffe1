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
//! transaction id). History and `as_of` balances are read from the logs, so they are answered
//! for accounts whose partition lives here and are 503 `history_unavailable` elsewhere.
//!
//! Stop, on Ctrl-C or SIGTERM: as `serve` (drain, sync every local partition, exit 0); the
//! links close last.

use std::process::ExitCode;
use std::time::Duration;

use walletd_core::model::partition::{NodeId, PartitionId};
use walletd_core::protocol::coordinator::CoordinatorConfig;
use walletd_runtime::driver::DriverConfig;
use walletd_runtime::engine::EngineConfig;
use walletd_runtime::net::{
    bind_peer_address, start_node_with, MutualTls, NetConfig, NodeConfig, NodeError, Tcp,
};
use walletd_runtime::storage::file::{FileStorage, FileStorageConfig};

use crate::cli::NodeArgs;
use crate::cluster::{ClusterConfig, ClusterConfigError};
use crate::datadir::DataDir;
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
}

/// Runs the node on a new multi-threaded runtime; the process exit code.
pub fn run(args: NodeArgs) -> ExitCode {
    crate::serve::run_to_exit_code("wallet node", node(args))
}

fn node_config(args: &NodeArgs) -> Result<NodeConfig, NodeRunError> {
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
/// another node (empty for a partition of this one): its node and that node's HTTP address.
fn partition_homes(cluster: &ClusterConfig, id: NodeId) -> Vec<String> {
    (0..cluster.map.partitions())
        .map(|partition| {
            let owner = cluster.map.owner(partition);
            match cluster.node(owner) {
                Ok(_) if owner == id => String::new(),
                Ok(address) => format!("node {owner} (HTTP {})", address.http),
                Err(_) => format!("node {owner}"),
            }
        })
        .collect()
}

fn open_storages(
    dir: &DataDir,
    partitions: &[PartitionId],
) -> Result<Vec<(PartitionId, FileStorage)>, ServeError> {
    partitions
        .iter()
        .map(|&partition| {
            let path = dir.partition_dir(partition);
            FileStorage::open(&path, FileStorageConfig::default())
                .map(|storage| (partition, storage))
                .map_err(|source| ServeError::Io {
                    what: format!("cannot open {}", path.display()),
                    source,
                })
        })
        .collect()
}

async fn node(args: NodeArgs) -> Result<(), NodeRunError> {
    let cluster = ClusterConfig::load(&args.config)?;
    let address = cluster.node(args.id)?.clone();
    let http_tls = api_tls(&args.service)?;
    let options = options(&args.service)?;
    let links_tls: Option<MutualTls> = match &cluster.tls {
        Some(paths) => Some(peer_tls(&paths.for_node(args.id))?),
        None => None,
    };
    let owned = cluster.map.partitions_of(args.id);
    let root = args.data_dir.join(format!("node-{}", args.id));
    let dir =
        DataDir::create_or_check(&root, cluster.map.partitions()).map_err(ServeError::from)?;
    dir.claim_for_node(args.id, &owned)
        .map_err(ServeError::from)?;
    tracing::info!(
        node = args.id,
        data_dir = %root.display(),
        partitions = ?owned,
        map_version = cluster.map.version,
        peer = address.peer,
        peer_tls = links_tls.is_some(),
        "starting"
    );
    let config = node_config(&args)?;
    let storages = open_storages(&dir, &owned)?;
    let http = bind_http(&address.http, http_tls.is_some()).await?;
    let listener = bind_peer_address(&cluster.map, args.id).await?;
    let (map, id, secret) = (&cluster.map, args.id, &cluster.secret);
    let node = match links_tls {
        Some(tls) => start_node_with(tls, listener, map, id, secret, storages, config).await?,
        None => start_node_with(Tcp, listener, map, id, secret, storages, config).await?,
    };
    log_recovery(node.engine().recovery_reports());
    let homes = partition_homes(&cluster, args.id);
    let api = build_api(node.engine(), dir, options, homes);
    let grace = Duration::from_millis(args.service.shutdown_grace_ms);
    let local = node.engine().local_partitions().to_vec();
    let (served, stop) = serve_http(http, http_tls, api, &local, grace).await;
    tracing::info!("syncing and stopping partitions");
    let node_stopped = node.shutdown().await;
    served.map_err(|source| ServeError::Io {
        what: "HTTP server failed".into(),
        source,
    })?;
    node_stopped.map_err(ServeError::from)?;
    match stop {
        Stop::PartitionStopped(partition) => Err(ServeError::PartitionStopped(partition).into()),
        Stop::Running | Stop::Signal => Ok(()),
    }
}
