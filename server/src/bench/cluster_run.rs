//! The `cluster` mode: nodes in this process, each its own engine on real files (fsync on)
//! and its own peer listener, talking the real protocol over loopback TCP. Every transfer's
//! two accounts are on different nodes, so every one is a two-phase transfer over the wire.
//! Two runs on the same accounts: clients enter at the node of the source account (`home`),
//! then at a random node (`any`: with three nodes, two transfers in three are first forwarded
//! to their source's node). What the network costs, without HTTP in front.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use walletd_core::model::partition::{NodeAddress, NodeId, PartitionMap};

use walletd_runtime::engine::{Client, EngineConfig};
use walletd_runtime::net::{start_node_with, ClusterNode, NetConfig, NodeConfig, Tcp};

use super::args::{BenchArgs, Mode};
use super::engine_driver::{self, Entry, Load};
use super::measure::{self, Syncs};
use super::placement::{Placed, Placement};
use super::report::{Live, ModeReport, RunShape};
use super::workload::Workload;
use super::BenchError;
use crate::cli::GroupCommit;
use crate::storages::open_storages;

/// The secret the in-process nodes authenticate each other with; nothing outside the
/// process ever sees their listeners' traffic worth protecting.
const SECRET: &[u8] = b"walletd bench cluster secret";
/// How long the nodes may take to link to each other.
const LINK_TIMEOUT_MS: u64 = 10_000;

/// The running nodes and the map they share.
struct Cluster {
    map: PartitionMap,
    nodes: Vec<ClusterNode>,
}

/// Starts the cluster, opens the accounts, runs `home` then `any`, and stops the nodes.
pub async fn run(args: &BenchArgs, run_tag: &str) -> Result<Vec<ModeReport>, BenchError> {
    let dir = tempfile::Builder::new()
        .prefix("walletd-bench-cluster-")
        .tempdir()
        .map_err(|e| BenchError::io("create a temporary directory", e))?;
    let cluster = start(dir.path(), args).await?;
    let placed = Placed::new(
        &cluster.map.owners,
        args.accounts_per_partition,
        Placement::CrossHome,
    )?;
    let workload = Workload::placed(placed, run_tag.to_string());
    let accounts = engine_driver::account_ids(&workload);
    let client = cluster.nodes[0].client();
    let started = Instant::now();
    eprintln!(
        "cluster: opening and funding {} accounts on {} nodes",
        workload.accounts,
        cluster.nodes.len()
    );
    engine_driver::open_accounts(&client, &accounts, workload.funding_minor).await?;
    eprintln!(
        "  {} accounts ready in {:.1} s",
        workload.accounts,
        started.elapsed().as_secs_f64()
    );
    let nodes: Arc<[Client]> = cluster.nodes.iter().map(ClusterNode::client).collect();
    let entries = [
        (
            "cluster_home",
            Entry::Home {
                nodes: Arc::clone(&nodes),
                owners: cluster.map.owners.iter().copied().collect(),
            },
        ),
        ("cluster_any", Entry::Any(nodes)),
    ];
    let mut rows = Vec::new();
    for (i, (label, entry)) in entries.iter().enumerate() {
        let seed = args.seed.wrapping_add(i as u64 * 32_452_843);
        let mut row = measured_run(&cluster, label, entry, &workload, args, seed).await?;
        let after = measure::settled_totals(|| engine_driver::sum_balances(&client, &accounts));
        let after = after.await?;
        row.money_conserved =
            Some(after.settled() && after.balance == workload.funded_total_minor());
        rows.push(row);
    }
    report_links(&cluster.nodes);
    let partitions = cluster.map.partitions();
    for node in cluster.nodes {
        node.shutdown()
            .await
            .map_err(|e| BenchError::Engine(e.to_string()))?;
    }
    // The same accounts and clients with every partition replicated on every node.
    rows.push(super::replicated_run::run(args, &workload, partitions).await?);
    Ok(rows)
}

/// One run of transfers entering through `entry`.
async fn measured_run(
    cluster: &Cluster,
    label: &str,
    entry: &Entry,
    workload: &Workload,
    args: &BenchArgs,
    seed: u64,
) -> Result<ModeReport, BenchError> {
    let live = Arc::new(Live::default());
    let workload = Arc::new(workload.for_mode(label));
    let load = Load {
        clients: args.cluster_clients,
        batch: 1,
        seed,
    };
    let running = engine_driver::run_transfers(entry, &workload, &live, load);
    let syncs_before = syncs(&cluster.nodes);
    let window = measure::drive_clock(label, &live, args.clock(Mode::Cluster)).await;
    let syncs_after = syncs(&cluster.nodes);
    let tally = running.finish().await?;
    measure::report_syncs(label, syncs_before, syncs_after, window, tally.transfers);
    measure::report_errors(label, &tally);
    let shape = RunShape {
        clients: load.clients,
        transfers_per_request: load.batch,
        partitions: cluster.map.partitions(),
        nodes: Some(cluster.nodes.len() as u32),
    };
    Ok(ModeReport::from_tally(label, &tally, window, shape))
}

/// Binds a loopback listener per node, starts every node on it with its partitions on real
/// files under `dir`, and waits until every node is linked to every other.
async fn start(dir: &Path, args: &BenchArgs) -> Result<Cluster, BenchError> {
    let (listeners, addresses) = bind_nodes(args.nodes).await?;
    let map = PartitionMap {
        version: 1,
        owners: (0..args.nodes * args.partitions_per_node)
            .map(|p| p % args.nodes)
            .collect(),
        nodes: addresses,
    };
    let mut nodes = Vec::new();
    for (node, listener) in (0..).zip(listeners) {
        nodes.push(
            start_node(
                dir,
                &map,
                node,
                listener,
                args.snapshot_every_events,
                args.group_commit,
            )
            .await?,
        );
    }
    wait_for_links(&nodes).await?;
    Ok(Cluster { map, nodes })
}

/// A loopback listener for each of `count` nodes, and the addresses a map gives them (their
/// HTTP addresses are never used: the nodes run in this process).
pub(super) async fn bind_nodes(
    count: u32,
) -> Result<(Vec<TcpListener>, BTreeMap<NodeId, NodeAddress>), BenchError> {
    let mut listeners = Vec::new();
    let mut addresses = BTreeMap::new();
    for node in 0..count {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| BenchError::io("bind a loopback port", e))?;
        let peer = listener
            .local_addr()
            .map_err(|e| BenchError::io("read a listener's address", e))?
            .to_string();
        let http = format!("unused:{node}");
        addresses.insert(node, NodeAddress { http, peer });
        listeners.push(listener);
    }
    Ok((listeners, addresses))
}

/// Starts node `node` of `map` on `listener`.
async fn start_node(
    dir: &Path,
    map: &PartitionMap,
    node: NodeId,
    listener: TcpListener,
    snapshot_every_events: u64,
    group_commit: GroupCommit,
) -> Result<ClusterNode, BenchError> {
    let root = dir.join(format!("node-{node}"));
    let storages = open_storages(
        &root,
        map.partitions(),
        &map.partitions_of(node),
        |p| root.join(format!("partition-{p}")),
        group_commit,
    )
    .map_err(|e| BenchError::Engine(format!("node {node}: {e}")))?
    .partitions;
    let mut engine = EngineConfig::default();
    engine.driver.snapshot_every_events = snapshot_every_events;
    let config = NodeConfig {
        engine,
        net: NetConfig::default(),
        nonce_seed: [node as u8; 32],
    };
    start_node_with(Tcp, listener, map, node, SECRET, storages, config)
        .await
        .map_err(|e| BenchError::Engine(format!("node {node}: {e}")))
}

/// Waits until every node is linked to every other, or fails after `LINK_TIMEOUT_MS`.
async fn wait_for_links(nodes: &[ClusterNode]) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_millis(LINK_TIMEOUT_MS);
    let linked = || {
        nodes.iter().all(|node| {
            let mut links = node.links().values();
            links.all(|link| link.connected.load(Ordering::Relaxed))
        })
    };
    while !linked() {
        if Instant::now() > deadline {
            return Err(BenchError::Engine(format!(
                "the nodes did not link to each other within {LINK_TIMEOUT_MS} ms"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Log syncs of every node's partitions so far.
fn syncs(nodes: &[ClusterNode]) -> Syncs {
    nodes
        .iter()
        .map(|node| engine_driver::syncs(node.engine()))
        .fold((0, 0.0), |sum, node| (sum.0 + node.0, sum.1 + node.1))
}

/// Shows on stderr how well each link batched: messages per frame written.
fn report_links(nodes: &[ClusterNode]) {
    for node in nodes {
        for (peer, link) in node.links() {
            let frames = link.frames_sent.load(Ordering::Relaxed).max(1);
            let messages = link.messages_sent.load(Ordering::Relaxed);
            eprintln!(
                "  link {}->{peer}: {frames} frames, {:.1} messages per frame",
                node.node(),
                messages as f64 / frames as f64
            );
        }
    }
}

/// The machine-readable lines of the mode:
/// `cluster home_tps=N any_tps=M nodes=N partitions=P fsync=on`, and for the replicated run
/// `cluster nodes=N replicas=N tps=T replicas1_tps=M failover_ms=F` (`replicas1_tps`: the
/// same clients entering at any node of the unreplicated cluster, `any_tps`).
pub fn summary_lines(rows: &[ModeReport]) -> Vec<String> {
    let rate = |mode: &str| rows.iter().find(|row| row.mode == mode);
    let mut lines = Vec::new();
    let (Some(home), Some(any)) = (rate("cluster_home"), rate("cluster_any")) else {
        return lines;
    };
    lines.push(format!(
        "cluster home_tps={:.0} any_tps={:.0} nodes={} partitions={} fsync=on",
        home.transfers_per_second,
        any.transfers_per_second,
        home.nodes.unwrap_or(0),
        home.partitions
    ));
    if let Some(replicated) = rate("cluster_replicated") {
        let nodes = replicated.nodes.unwrap_or(0);
        lines.push(format!(
            "cluster nodes={nodes} replicas={nodes} tps={:.0} replicas1_tps={:.0} failover_ms={}",
            replicated.transfers_per_second,
            any.transfers_per_second,
            replicated
                .failover_ms
                .map_or_else(|| "none".to_string(), |ms| ms.to_string())
        ));
    }
    lines
}
