//! The replicated run of the `cluster` mode: the same nodes, accounts and clients as the
//! unreplicated `cluster_any` run, but every partition a Raft group with a replica on every
//! node (partition logs and Raft stores on real files, fsync on): a transfer is answered once
//! its records are durable on two of the three nodes. Then the failover: the node leading
//! partition 0 is stopped as a crash would stop it, and the time until a write to partition 0
//! commits through another node is measured (an election, then the new leader's first
//! commit).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use walletd_core::ledger::Command;
use walletd_core::model::ids::TransactionId;
use walletd_core::model::money::{Amount, Currency};
use walletd_core::model::partition::{NodeId, PartitionMap};
use walletd_core::replica::DurableRaft;
use walletd_runtime::engine::{Client, EngineConfig};
use walletd_runtime::net::replicated::{
    replica_node, start_replicated_node_with, voters, ReplicatedConfig, ReplicatedNode,
};
use walletd_runtime::net::{NetConfig, NodeConfig, Tcp};
use walletd_runtime::storage::file::{FileStorage, FileStorageConfig};
use walletd_runtime::storage::journal::{JournalConfig, NodeJournal};
use walletd_runtime::storage::raft_store::file::{FileRaftStore, FileRaftStoreConfig};

use super::args::{BenchArgs, Mode};
use super::engine_driver::{self, Entry, Load};
use super::measure::{self, Syncs};
use super::report::{Live, ModeReport, RunShape};
use super::workload::Workload;
use super::BenchError;

const SECRET: &[u8] = b"walletd bench replicated cluster secret";
/// How long the groups may take to elect their first leaders, and a failover to commit.
const LEADERS_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs the replicated cluster on `workload`'s accounts (opened here) with `clients`
/// clients entering at random nodes; returns its row, with the failover time.
pub async fn run(
    args: &BenchArgs,
    workload: &Workload,
    partitions: u32,
) -> Result<ModeReport, BenchError> {
    let dir = tempfile::Builder::new()
        .prefix("walletd-bench-replicated-")
        .tempdir()
        .map_err(|e| BenchError::io("create a temporary directory", e))?;
    let (map, mut nodes, journals) = start(dir.path(), args, partitions).await?;
    wait_for_leaders(&nodes, partitions).await?;
    let accounts = engine_driver::account_ids(workload);
    let client = nodes[0].client();
    eprintln!(
        "cluster_replicated: opening and funding {} accounts, {} replicas of each partition",
        workload.accounts,
        nodes.len()
    );
    engine_driver::open_accounts(&client, &accounts, workload.funding_minor).await?;
    let label = "cluster_replicated";
    let clients: Arc<[Client]> = nodes.iter().map(ReplicatedNode::client).collect();
    let live = Arc::new(Live::default());
    let workload = Arc::new(workload.for_mode(label));
    let load = Load {
        clients: args.cluster_clients,
        batch: 1,
        seed: args.seed.wrapping_add(99_991),
    };
    let running = engine_driver::run_transfers(&Entry::Any(clients), &workload, &live, load);
    let before = syncs(&nodes);
    let rounds_before = journal_rounds(&journals);
    let window = measure::drive_clock(label, &live, args.clock(Mode::Cluster)).await;
    let after = syncs(&nodes);
    let rounds = journal_rounds(&journals) - rounds_before;
    let tally = running.finish().await?;
    measure::report_syncs(label, before, after, window, tally.transfers);
    let seconds = window.as_secs_f64().max(1e-9);
    eprintln!(
        "  {label}: {:.0} Raft store writes/s made durable by {:.0} fdatasyncs/s of the nodes' journals ({:.1} writes per fdatasync)",
        (after.0 - before.0) as f64 / seconds,
        rounds as f64 / seconds,
        (after.0 - before.0) as f64 / rounds.max(1) as f64,
    );
    measure::report_errors(label, &tally);
    let shape = RunShape {
        clients: load.clients,
        transfers_per_request: 1,
        partitions,
        nodes: Some(nodes.len() as u32),
    };
    let mut row = ModeReport::from_tally(label, &tally, window, shape);
    row.durability = "reply after fdatasync of its batch on a majority of replicas".into();
    let totals = measure::settled_totals(|| engine_driver::sum_balances(&client, &accounts));
    let totals = totals.await?;
    row.money_conserved = Some(totals.settled() && totals.balance == workload.funded_total_minor());
    // A group of fewer than three has no majority without the leader's node.
    if nodes.len() >= 3 {
        row.failover_ms = Some(failover(&map, &mut nodes, &accounts).await?);
    }
    for node in nodes {
        node.shutdown()
            .await
            .map_err(|e| BenchError::Engine(e.to_string()))?;
    }
    Ok(row)
}

/// Stops the leader of partition 0 as a crash would, and measures how long until a deposit
/// into an account of partition 0 commits through the other nodes.
async fn failover(
    map: &PartitionMap,
    nodes: &mut Vec<ReplicatedNode>,
    accounts: &[walletd_core::model::ids::AccountId],
) -> Result<u64, BenchError> {
    let leader = nodes[0].statuses()[0]
        .1
        .leader()
        .and_then(replica_node)
        .ok_or_else(|| BenchError::Engine("partition 0 has no leader".into()))?;
    let account = *(accounts.iter())
        .find(|account| map.partition_of(account) == 0)
        .ok_or_else(|| BenchError::Engine("no account on partition 0".into()))?;
    let position = (nodes.iter())
        .position(|node| node.node() == leader)
        .expect("the leader is one of the nodes");
    let killed = Instant::now();
    nodes.remove(position).abort();
    let client = nodes[0].client();
    for attempt in 0u64.. {
        let deposit = Command::Deposit {
            account,
            amount: Amount::from_minor(1).expect("in range"),
            currency: Currency::USD,
            transaction_id: TransactionId::new(&format!("failover-{attempt}")).expect("valid"),
        };
        let answer = tokio::time::timeout(Duration::from_secs(1), client.execute(deposit, true));
        if let Ok(Ok(Ok(_))) = answer.await {
            let elapsed = killed.elapsed().as_millis() as u64;
            eprintln!("  failover: node {leader} (leader of partition 0) stopped; a write committed {elapsed} ms later");
            return Ok(elapsed);
        }
        if killed.elapsed() > LEADERS_TIMEOUT {
            return Err(BenchError::Engine(format!(
                "no write committed within {LEADERS_TIMEOUT:?} of stopping the leader"
            )));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    unreachable!()
}

/// Binds a loopback listener per node and starts every node with its replicas on real
/// files under `dir`.
async fn start(
    dir: &Path,
    args: &BenchArgs,
    partitions: u32,
) -> Result<(PartitionMap, Vec<ReplicatedNode>, Vec<Arc<NodeJournal>>), BenchError> {
    let (listeners, addresses) = super::cluster_run::bind_nodes(args.nodes).await?;
    let map = PartitionMap {
        version: 1,
        owners: (0..partitions).map(|p| p % args.nodes).collect(),
        nodes: addresses,
    };
    let (mut nodes, mut journals) = (Vec::new(), Vec::new());
    for (node, listener) in (0..).zip(listeners) {
        let (started, journal) = start_node(dir, &map, node, listener, args).await?;
        nodes.push(started);
        journals.push(journal);
    }
    Ok((map, nodes, journals))
}

async fn start_node(
    dir: &Path,
    map: &PartitionMap,
    node: NodeId,
    listener: TcpListener,
    args: &BenchArgs,
) -> Result<(ReplicatedNode, Arc<NodeJournal>), BenchError> {
    let root = dir.join(format!("node-{node}"));
    let voters = voters(map);
    let fail = |e: std::io::Error| BenchError::io("open a replica's files", e);
    // As `wallet node` does: one journal syncs every Raft store of the node.
    let journal_dir = crate::replicated_node::raft_journal_dir(&root);
    let journal = NodeJournal::open(&journal_dir, map.partitions(), JournalConfig::default())
        .map_err(|e| BenchError::io("open the Raft stores' journal", std::io::Error::other(e)))?;
    let mut storages = Vec::new();
    for partition in 0..map.partitions() {
        let log = FileStorage::open(
            root.join(format!("partition-{partition}")),
            FileStorageConfig::default(),
        )
        .map_err(fail)?;
        let raft = crate::replicated_node::raft_dir(&root, partition);
        let (initial, config) = (DurableRaft::new(&voters), FileRaftStoreConfig::default());
        let store =
            FileRaftStore::open_journaled(&raft, initial, config, journal.clone(), partition)
                .map_err(fail)?;
        storages.push((log, store));
    }
    let mut engine = EngineConfig::default();
    engine.driver.snapshot_every_events = args.snapshot_every_events;
    let node_config = NodeConfig {
        engine,
        net: NetConfig::default(),
        nonce_seed: [node as u8; 32],
    };
    let config = ReplicatedConfig::new(node_config, u64::from(node) + 1);
    let started = start_replicated_node_with(Tcp, listener, map, node, SECRET, storages, config)
        .await
        .map_err(|e| BenchError::Engine(format!("node {node}: {e}")))?;
    Ok((started, journal))
}

/// Rounds (fdatasyncs) of the nodes' Raft journals so far.
fn journal_rounds(journals: &[Arc<NodeJournal>]) -> u64 {
    (journals.iter())
        .map(|journal| journal.stats().rounds.load(Ordering::Relaxed))
        .sum()
}

/// Waits until every partition has a leader that has caught up.
async fn wait_for_leaders(nodes: &[ReplicatedNode], partitions: u32) -> Result<(), BenchError> {
    let deadline = Instant::now() + LEADERS_TIMEOUT;
    loop {
        let led = (0..partitions as usize).all(|p| {
            nodes
                .iter()
                .any(|node| node.statuses()[p].1.leading.load(Ordering::Acquire))
        });
        if led {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Engine(format!(
                "the groups elected no leaders within {LEADERS_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Raft store syncs of every replica so far, and their time.
fn syncs(nodes: &[ReplicatedNode]) -> Syncs {
    let stats: Vec<_> = nodes.iter().flat_map(ReplicatedNode::stats).collect();
    let count = stats
        .iter()
        .map(|(_, s)| s.syncs.load(Ordering::Relaxed))
        .sum();
    let us: u64 = stats.iter().map(|(_, s)| s.sync_us.snapshot().sum).sum();
    (count, us as f64 / 1e6)
}
