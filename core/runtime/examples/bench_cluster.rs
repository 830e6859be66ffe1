//! Cluster benchmark: nodes in one process, each its own engine on real files (fsync on) and
//! its own peer listener, talking the real protocol over loopback TCP.
//!
//! `cargo run --release -p walletd-runtime --example bench_cluster -- [--seconds S] [--nodes N]
//! [--partitions-per-node P] [--clients C] [--accounts-per-partition K]`
//!
//! C concurrent clients send transfers whose source and destination live on different nodes
//! (every one is a TC/C transfer over the wire) for S seconds after a one-second warm-up.
//! Two runs: each client enters at the source's own node (`home`), then at a random node
//! (`any`: two thirds of the transfers are first forwarded to the source's node). A transfer
//! counts when its client has the durable final answer. The last line is machine-readable:
//! `cluster home_tps=N any_tps=M nodes=N partitions=P fsync=on`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use walletd_core::ledger::{Command, Reply, TransferStatus};
use walletd_core::model::event::Transfer;
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency};
use walletd_core::model::partition::{NodeAddress, NodeId, PartitionMap};
use walletd_runtime::engine::{Client, EngineConfig};
use walletd_runtime::net::{start_node_on, ClusterNode, NetConfig, NodeConfig};
use walletd_runtime::storage::file::{FileStorage, FileStorageConfig};

struct Options {
    seconds: u64,
    nodes: u32,
    partitions_per_node: u32,
    clients: usize,
    accounts_per_partition: usize,
}

fn parse_options() -> Options {
    let mut options = Options {
        seconds: 5,
        nodes: 3,
        partitions_per_node: 2,
        clients: 2048,
        accounts_per_partition: 1000,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--seconds" => options.seconds = value.parse().expect("--seconds N"),
            "--nodes" => options.nodes = value.parse().expect("--nodes N"),
            "--partitions-per-node" => {
                options.partitions_per_node = value.parse().expect("--partitions-per-node N")
            }
            "--clients" => options.clients = value.parse().expect("--clients N"),
            "--accounts-per-partition" => {
                options.accounts_per_partition = value.parse().expect("--accounts-per-partition N")
            }
            other => panic!("unknown option {other}; see the top of bench_cluster.rs"),
        }
    }
    assert!(options.nodes >= 2, "a cross-node transfer needs two nodes");
    options
}

/// A small deterministic generator; the benchmark needs speed, not quality.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

async fn start_cluster(
    options: &Options,
    dir: &std::path::Path,
) -> (PartitionMap, Vec<ClusterNode>) {
    let partitions = options.nodes * options.partitions_per_node;
    let mut listeners = Vec::new();
    let mut addresses = BTreeMap::new();
    for n in 0..options.nodes {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = listener.local_addr().unwrap().to_string();
        addresses.insert(
            n,
            NodeAddress {
                http: format!("unused:{n}"),
                peer,
            },
        );
        listeners.push(listener);
    }
    let map = PartitionMap {
        version: 1,
        owners: (0..partitions).map(|p| p % options.nodes).collect(),
        nodes: addresses,
    };
    let mut nodes = Vec::new();
    for (n, listener) in listeners.into_iter().enumerate() {
        let node = n as NodeId;
        let storages = map
            .partitions_of(node)
            .into_iter()
            .map(|p| {
                let path = dir.join(format!("node-{node}/partition-{p}"));
                (
                    p,
                    FileStorage::open(path, FileStorageConfig::default()).unwrap(),
                )
            })
            .collect();
        let config = NodeConfig {
            engine: EngineConfig::default(),
            net: NetConfig::default(),
            nonce_seed: [n as u8; 32],
        };
        let secret = b"benchmark cluster secret";
        nodes.push(
            start_node_on(listener, &map, node, secret, storages, config)
                .await
                .unwrap(),
        );
    }
    while !nodes.iter().all(|n| {
        n.links()
            .values()
            .all(|l| l.connected.load(Ordering::Relaxed))
    }) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (map, nodes)
}

/// Opens `per_partition` funded accounts on every partition, through node 0.
async fn open_accounts(
    map: &PartitionMap,
    client: &Client,
    per_partition: usize,
) -> Vec<Vec<AccountId>> {
    let mut by_partition = vec![Vec::new(); map.partitions() as usize];
    let mut n = 0u64;
    while by_partition.iter().any(|a| a.len() < per_partition) {
        let account = AccountId::new(&format!("acct-{n}")).unwrap();
        n += 1;
        let list = &mut by_partition[map.partition_of(&account) as usize];
        if list.len() < per_partition {
            list.push(account);
        }
    }
    let accounts: Vec<AccountId> = by_partition.iter().flatten().copied().collect();
    let opens = accounts.iter().map(|&account| Command::OpenAccount {
        account,
        currency: Currency::USD,
    });
    for answer in client.execute_many(opens, false).await {
        answer.unwrap().unwrap();
    }
    let fund = TransactionId::new("fund").unwrap();
    let deposits = accounts.iter().map(|&account| Command::Deposit {
        account,
        amount: Amount::from_minor(100_000_000_000).unwrap(),
        currency: Currency::USD,
        transaction_id: fund,
    });
    for answer in client.execute_many(deposits, false).await {
        answer.unwrap().unwrap();
    }
    by_partition
}

async fn run(
    map: &PartitionMap,
    nodes: &[ClusterNode],
    accounts: &Arc<Vec<Vec<AccountId>>>,
    any_entry: bool,
    options: &Options,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<Client> = nodes.iter().map(ClusterNode::client).collect();
    let partitions = map.partitions() as usize;
    let owners = Arc::new(map.owners.clone());
    let mut tasks = Vec::new();
    for c in 0..options.clients {
        let (clients, accounts, owners, done, stop) = (
            clients.clone(),
            accounts.clone(),
            owners.clone(),
            done.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (c as u64 + 1) ^ u64::from(any_entry));
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let p = rng.below(partitions);
                let q = (p + 1 + rng.below(partitions - 1)) % partitions;
                if owners[p] == owners[q] {
                    continue;
                }
                let from = accounts[p][rng.below(accounts[p].len())];
                let to = accounts[q][rng.below(accounts[q].len())];
                seq += 1;
                let transfer = Transfer {
                    transaction_id: TransactionId::new(&format!("{any_entry}-{c}-{seq}")).unwrap(),
                    from,
                    to,
                    amount: Amount::from_minor(1 + rng.below(10_000) as u64).unwrap(),
                    currency: Currency::USD,
                };
                let entry = if any_entry {
                    rng.below(clients.len())
                } else {
                    owners[p] as usize
                };
                match clients[entry]
                    .execute(Command::Transfer(transfer), true)
                    .await
                {
                    Ok(Ok(Reply::Transfer(TransferStatus::Committed))) => {}
                    other => panic!("unexpected answer {other:?}"),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (start, start_done) = (Instant::now(), done.load(Ordering::Relaxed));
    let mut last = start_done;
    for second in 1..=options.seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = done.load(Ordering::Relaxed);
        let rate = (now - start_done) as f64 / start.elapsed().as_secs_f64();
        let entry = if any_entry { "any" } else { "home" };
        eprintln!(
            "  entry={entry} {second}/{}s: {:>8} this second, {rate:>8.0} transfers/s so far",
            options.seconds,
            now - last
        );
        last = now;
    }
    let tps = (done.load(Ordering::Relaxed) - start_done) as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    tps
}

#[tokio::main]
async fn main() {
    let options = parse_options();
    let dir = tempfile::tempdir().expect("temp dir");
    let (map, nodes) = start_cluster(&options, dir.path()).await;
    let accounts =
        Arc::new(open_accounts(&map, &nodes[0].client(), options.accounts_per_partition).await);
    let home = run(&map, &nodes, &accounts, false, &options).await;
    let any = run(&map, &nodes, &accounts, true, &options).await;
    for node in &nodes {
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
    println!(
        "cluster home_tps={home:.0} any_tps={any:.0} nodes={} partitions={} fsync=on",
        options.nodes,
        map.partitions()
    );
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}
