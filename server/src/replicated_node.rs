//! `wallet node` of a replicated cluster (`replicas` in the cluster file equal to its node
//! count): every partition is a Raft group with a replica on every node
//! ([`walletd_runtime::net::replicated`]).
//!
//! The data directory holds every partition: `<data-dir>/node-<id>/partition-<p>/` its log
//! and snapshots as on any node, and `<data-dir>/node-<id>/raft/partition-<p>/` its Raft
//! store (hard state and log entries; [`FileRaftStore`]). A request for any account is
//! served through this node's replica of the account's partition, which hands it to its
//! group's leader; while a group elects one, requests wait up to two seconds and then
//! answer 503 `partition_unavailable` (clients retry with the same transaction id). History,
//! `as_of` balances and the event feed read this node's own copy of every partition's log,
//! which holds committed records only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use walletd_core::model::partition::{NodeAddress, PartitionId, PartitionMap};
use walletd_core::replica::DurableRaft;
use walletd_runtime::driver::DriverStats;
use walletd_runtime::net::replicated::{start_replicated_node_with, voters, ReplicatedConfig};
use walletd_runtime::net::{bind_peer_address, MutualTls, Tcp};
use walletd_runtime::storage::file::{FileStorage, FileStorageConfig};
use walletd_runtime::storage::raft_store::file::FileRaftStore;

use crate::api::cluster::ClusterView;
use crate::cli::NodeArgs;
use crate::datadir::DataDir;
use crate::node::{node_config, NodeRunError};
use crate::serve::{api_tls, bind_http, build_api_for, options, serve_http, ServeError};

/// Where partition `partition`'s Raft store lives under a node's root.
pub fn raft_dir(root: &Path, partition: PartitionId) -> PathBuf {
    root.join("raft").join(format!("partition-{partition}"))
}

/// Runs node `args.id` of the replicated cluster of `map` until a signal.
pub async fn run(
    args: &NodeArgs,
    map: PartitionMap,
    secret: Vec<u8>,
    links_tls: Option<MutualTls>,
    root: PathBuf,
) -> Result<(), NodeRunError> {
    let address: NodeAddress = map.nodes[&args.id].clone();
    let http_tls = api_tls(&args.service)?;
    let options = options(&args.service)?;
    let partitions = map.partitions();
    let every: Vec<PartitionId> = (0..partitions).collect();
    let dir = DataDir::create_or_check(&root, partitions).map_err(ServeError::from)?;
    dir.claim_for_node(args.id, &every)
        .map_err(ServeError::from)?;
    tracing::info!(
        node = args.id,
        data_dir = %root.display(),
        partitions,
        replicas = map.nodes.len(),
        map_version = map.version,
        peer = address.peer,
        peer_tls = links_tls.is_some(),
        "starting a replicated node"
    );
    let mut election_seed = [0u8; 8];
    getrandom::fill(&mut election_seed).map_err(|e| NodeRunError::Random(e.to_string()))?;
    let config = ReplicatedConfig::new(node_config(args)?, u64::from_le_bytes(election_seed));
    let voters = voters(&map);
    let mut storages = Vec::with_capacity(partitions as usize);
    for partition in every {
        let io = |what: String| move |source| ServeError::Io { what, source };
        let path = dir.partition_dir(partition);
        let storage = FileStorage::open(&path, FileStorageConfig::default())
            .map_err(io(format!("cannot open {}", path.display())))?;
        let raft = raft_dir(&root, partition);
        let store = FileRaftStore::open(&raft, DurableRaft::new(&voters))
            .map_err(io(format!("cannot open the Raft store {}", raft.display())))?;
        storages.push((storage, store));
    }
    let http = bind_http(&address.http, http_tls.is_some()).await?;
    let listener = bind_peer_address(&map, args.id).await?;
    let (id, secret) = (args.id, &secret);
    let node = match links_tls {
        Some(tls) => {
            start_replicated_node_with(tls, listener, &map, id, secret, storages, config).await?
        }
        None => {
            start_replicated_node_with(Tcp, listener, &map, id, secret, storages, config).await?
        }
    };
    let stats: Vec<(PartitionId, Arc<DriverStats>)> = (0..partitions).zip(node.stats()).collect();
    // Every partition's log is here: nothing is forwarded for history.
    let homes = vec![String::new(); partitions as usize];
    let forward_to = vec![None; partitions as usize];
    let view = ClusterView::replicated(&map, args.id, node.links(), node.statuses());
    let api = build_api_for(node.client(), stats, dir, options, homes, forward_to)
        .with_cluster(view)
        .with_replicas(node.statuses());
    let grace = Duration::from_millis(args.service.shutdown_grace_ms);
    // No partition is watched for liveness through requests: a group without a leader
    // answers 503 for a while, which is an election, not a reason to stop this node.
    let (served, _stop) = serve_http(http, http_tls, api, &[], grace).await;
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
