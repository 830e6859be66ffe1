//! Three replicated nodes in one process over loopback TCP, on in-memory disks that a kill
//! cuts back to what was synced: transfers across partitions go on through any node while
//! one node is down, and the node that comes back catches up.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::engine::Unavailable;
use crate::storage::raft_store::MemRaftStore;
use crate::storage::MemStorage;
use walletd_core::ledger::{Command, Reply, TransferStatus};
use walletd_core::model::event::Transfer;
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency};
use walletd_core::model::partition::{partition_of, NodeAddress};
use walletd_core::protocol::coordinator::CoordinatorConfig;
use walletd_core::protocol::message::CommandResult;
use walletd_core::replica::DurableRaft;

const SECRET: &[u8] = b"a cluster secret for the tests";
const NODES: u32 = 3;
const PARTITIONS: u32 = 2;

fn config(node: NodeId) -> ReplicatedConfig {
    let mut engine = EngineConfig {
        inbox_capacity: 4096,
        ..EngineConfig::default()
    };
    engine.driver.coordinator = CoordinatorConfig {
        try_timeout_us: 300_000,
        retry_initial_us: 20_000,
        retry_max_us: 200_000,
        resolve_after_us: 1_000_000,
    };
    let node_config = NodeConfig {
        engine,
        net: NetConfig {
            connect_backoff_initial_ms: 10,
            connect_backoff_max_ms: 100,
            heartbeat_ms: 100,
            peer_silent_max_ms: 1_000,
            ..NetConfig::default()
        },
        nonce_seed: [7; 32],
    };
    ReplicatedConfig {
        timing: ReplicaTiming {
            tick: Duration::from_millis(5),
            ..ReplicaTiming::default()
        },
        election_ticks: 10,
        heartbeat_ticks: 2,
        ..ReplicatedConfig::new(node_config, u64::from(node))
    }
}

/// One node's disks: a partition log and a Raft store per partition, kept across restarts.
struct Disks {
    partitions: Vec<(MemStorage, MemRaftStore)>,
}

impl Disks {
    fn new(map: &PartitionMap) -> Disks {
        let voters = voters(map);
        Disks {
            partitions: (0..map.partitions())
                .map(|_| {
                    let store = MemRaftStore::new(DurableRaft::new(&voters));
                    (MemStorage::default(), store)
                })
                .collect(),
        }
    }

    /// A power loss: every write not synced is gone.
    fn crash(&self) {
        for (storage, store) in &self.partitions {
            storage.disk.lock().unwrap().crash();
            store.disk().lock().unwrap().crash();
        }
    }
}

struct Cluster {
    map: PartitionMap,
    disks: Vec<Disks>,
    nodes: Vec<Option<ReplicatedNode>>,
}

impl Cluster {
    async fn start() -> Cluster {
        let mut listeners = Vec::new();
        let mut addresses = BTreeMap::new();
        for n in 0..NODES {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = NodeAddress {
                http: format!("127.0.0.1:{}", 1 + n),
                peer: listener.local_addr().unwrap().to_string(),
            };
            addresses.insert(n, address);
            listeners.push(listener);
        }
        let map = PartitionMap {
            version: 1,
            owners: (0..PARTITIONS).map(|p| p % NODES).collect(),
            nodes: addresses,
        };
        let disks = (0..NODES).map(|_| Disks::new(&map)).collect();
        let mut cluster = Cluster {
            map,
            disks,
            nodes: Vec::new(),
        };
        for (n, listener) in listeners.into_iter().enumerate() {
            let node = cluster.start_node(n as NodeId, listener).await;
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    async fn start_node(&self, node: NodeId, listener: TcpListener) -> ReplicatedNode {
        let storages = self.disks[node as usize].partitions.clone();
        start_replicated_node_with(
            Tcp,
            listener,
            &self.map,
            node,
            SECRET,
            storages,
            config(node),
        )
        .await
        .expect("a node starts from its disks")
    }

    /// Kills node `node` (its tasks stop where they are, its disks lose what was not synced).
    fn kill(&mut self, node: usize) {
        let running = self.nodes[node].take().expect("running");
        running.abort();
        self.disks[node].crash();
    }

    async fn restart(&mut self, node: usize) {
        let address = &self.map.nodes[&(node as NodeId)].peer;
        let listener = bind_again(address).await;
        let started = self.start_node(node as NodeId, listener).await;
        self.nodes[node] = Some(started);
    }

    /// Executes `command` through the nodes that are up, in turn from `via`, until one
    /// answers (a node whose replica is not the leader forwards; during an election the
    /// request waits or fails, and is sent again with the same transaction id).
    async fn execute(&self, via: usize, command: Command) -> CommandResult {
        for attempt in 0..400 {
            let up: Vec<&ReplicatedNode> = self.nodes.iter().flatten().collect();
            let node = up[(via + attempt) % up.len()];
            let client = node.client();
            let sent = client.execute(command.clone(), true);
            match tokio::time::timeout(Duration::from_secs(3), sent).await {
                Ok(Ok(result)) => return result,
                Ok(Err(Unavailable(_))) | Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
            }
        }
        panic!("{command:?} got no answer");
    }

    /// Waits until every partition has exactly one leader among the nodes that are up.
    async fn leaders(&self) -> Vec<NodeId> {
        for _ in 0..1_000 {
            let leaders: Vec<Vec<NodeId>> = (0..PARTITIONS as usize)
                .map(|p| {
                    (self.nodes.iter().flatten())
                        .filter(|n| n.statuses()[p].1.leading.load(Ordering::Acquire))
                        .map(|n| n.node())
                        .collect()
                })
                .collect();
            if leaders.iter().all(|l| l.len() == 1) {
                return leaders.into_iter().map(|l| l[0]).collect();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no leader for every partition within 10 s");
    }
}

fn account(name: &str) -> AccountId {
    AccountId::new(name).unwrap()
}

/// An account named `{prefix}-{i}` on `partition`.
fn account_on(prefix: &str, partition: PartitionId) -> AccountId {
    (0..1000)
        .map(|i| account(&format!("{prefix}-{i}")))
        .find(|a| partition_of(a, PARTITIONS) == partition)
        .expect("a name lands on every partition")
}

fn transfer(from: AccountId, to: AccountId, minor: u64, id: &str) -> Command {
    Command::Transfer(Transfer {
        transaction_id: TransactionId::new(id).unwrap(),
        from,
        to,
        amount: Amount::from_minor(minor).unwrap(),
        currency: Currency::USD,
    })
}

#[tokio::test(flavor = "current_thread")]
async fn cross_partition_transfers_go_on_through_a_node_kill_and_the_node_catches_up() {
    let mut cluster = Cluster::start().await;
    let (alice, bob) = (account_on("alice", 0), account_on("bob", 1));
    for account in [alice, bob] {
        let open = Command::OpenAccount {
            account,
            currency: Currency::USD,
        };
        assert!(matches!(
            cluster.execute(0, open).await,
            Ok(Reply::Opened { .. })
        ));
    }
    let deposit = Command::Deposit {
        account: alice,
        amount: Amount::from_minor(1_000_000).unwrap(),
        currency: Currency::USD,
        transaction_id: TransactionId::new("d1").unwrap(),
    };
    assert!(cluster.execute(0, deposit).await.is_ok());
    let mut committed = Vec::new();
    let mut next = 0;
    for round in 0..2 {
        for _ in 0..15 {
            let id = format!("t{next}");
            let result = cluster.execute(next, transfer(alice, bob, 100, &id)).await;
            next += 1;
            assert_eq!(
                result,
                Ok(Reply::Transfer(TransferStatus::Committed)),
                "{id}"
            );
            committed.push(id);
        }
        // Kill the node that leads partition 0 (the transfers' home), go on without it,
        // then bring it back.
        let leaders = cluster.leaders().await;
        let victim = leaders[0] as usize;
        cluster.kill(victim);
        for _ in 0..10 {
            let id = format!("t{next}");
            let result = cluster.execute(next, transfer(alice, bob, 100, &id)).await;
            next += 1;
            assert_eq!(
                result,
                Ok(Reply::Transfer(TransferStatus::Committed)),
                "{id} with node {victim} down (round {round})"
            );
            committed.push(id);
        }
        cluster.restart(victim).await;
    }
    // Every transfer once: a retry answers the same and moves nothing.
    for id in &committed {
        let retry = cluster.execute(1, transfer(alice, bob, 100, id)).await;
        assert_eq!(
            retry,
            Ok(Reply::Transfer(TransferStatus::Committed)),
            "{id}"
        );
    }
    // Every replica reaches the same balances.
    let moved = 100 * committed.len() as u64;
    for _ in 0..500 {
        let applied: Vec<Vec<u64>> = (cluster.nodes.iter().flatten())
            .map(|n| {
                (n.statuses().iter())
                    .map(|(_, s)| s.applied_lsn.load(Ordering::Acquire))
                    .collect()
            })
            .collect();
        if applied.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let nodes: Vec<ReplicatedNode> = cluster
        .nodes
        .iter_mut()
        .map(|n| n.take().unwrap())
        .collect();
    for node in nodes {
        node.shutdown().await.expect("a clean stop");
    }
    for (n, disks) in cluster.disks.iter().enumerate() {
        let mut balances = Vec::new();
        for (p, (storage, _)) in disks.partitions.iter().enumerate() {
            let mut storage = storage.clone();
            let (ledger, _) = crate::driver::recover(&mut storage, p as PartitionId, PARTITIONS)
                .await
                .expect("recovers");
            ledger.check_conservation().expect("money is conserved");
            let account = if p == 0 { alice } else { bob };
            balances.push(ledger.account(&account).expect("opened").balance);
        }
        assert_eq!(balances, vec![1_000_000 - moved, moved], "node {n}");
    }
}

/// Binds `address` again for a node restarted on it: the killed node's listener may take a
/// moment to release its port (up to 2 s).
pub(super) async fn bind_again(address: &str) -> TcpListener {
    for _ in 0..100 {
        match TcpListener::bind(address).await {
            Ok(bound) => return bound,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    panic!("{address} is not free again after 2 s");
}
