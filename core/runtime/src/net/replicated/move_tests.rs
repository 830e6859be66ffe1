//! A partition's copy moves between nodes while transfers go on: a fourth node joins the
//! map, the placement grows partition 0's group to it and then drops node 0 from it; the
//! new copy catches up and votes, node 0's copy is removed by the group and deleted, and
//! every transfer is there once on every copy. Then partition 1 moves off node 0 and
//! straight back: the removed copy stops, and a new one joins; and again while node 0 is
//! down: its old copy finds out at restart.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::storage::raft_store::MemRaftStore;
use crate::storage::MemStorage;
use walletd_core::ledger::{Command, Reply, TransferStatus};
use walletd_core::model::event::Transfer;
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency};
use walletd_core::model::partition::{partition_of, NodeAddress};
use walletd_core::protocol::message::CommandResult;
use walletd_core::replica::DurableRaft;

const SECRET: &[u8] = b"a cluster secret for the tests";
const PARTITIONS: u32 = 2;

fn config(node: NodeId) -> ReplicatedConfig {
    let node_config = NodeConfig {
        engine: EngineConfig {
            inbox_capacity: 4096,
            ..EngineConfig::default()
        },
        net: NetConfig {
            connect_backoff_initial_ms: 10,
            connect_backoff_max_ms: 100,
            heartbeat_ms: 100,
            peer_silent_max_ms: 1_000,
            ..NetConfig::default()
        },
        nonce_seed: [9; 32],
    };
    ReplicatedConfig {
        timing: ReplicaTiming {
            tick: Duration::from_millis(5),
            ..ReplicaTiming::default()
        },
        election_ticks: 10,
        heartbeat_ticks: 2,
        ..ReplicatedConfig::new(node_config, u64::from(node) + 11)
    }
}

/// One node's copies in memory: opened on demand, new ones from the founders' voters.
#[derive(Clone, Default)]
struct MemStores {
    disks: Arc<Mutex<BTreeMap<PartitionId, (MemStorage, MemRaftStore)>>>,
    removed: Arc<Mutex<Vec<PartitionId>>>,
}

impl ReplicaStores for MemStores {
    type Log = MemStorage;
    type Raft = MemRaftStore;

    fn held(&self) -> Vec<PartitionId> {
        self.disks.lock().unwrap().keys().copied().collect()
    }

    async fn open(
        &self,
        partition: PartitionId,
        founders: &[NodeId],
    ) -> io::Result<(MemStorage, MemRaftStore)> {
        let voters: Vec<u64> = founders.iter().copied().map(replica_id).collect();
        let mut disks = self.disks.lock().unwrap();
        let (log, raft) = disks.entry(partition).or_insert_with(|| {
            let store = MemRaftStore::new(DurableRaft::new(&voters));
            (MemStorage::default(), store)
        });
        Ok((log.clone(), raft.clone()))
    }

    async fn remove(
        &self,
        partition: PartitionId,
        _: MemStorage,
        _: MemRaftStore,
    ) -> io::Result<()> {
        self.disks.lock().unwrap().remove(&partition);
        self.removed.lock().unwrap().push(partition);
        Ok(())
    }
}

fn account_on(prefix: &str, partition: PartitionId) -> AccountId {
    (0..1000)
        .map(|i| AccountId::new(&format!("{prefix}-{i}")).unwrap())
        .find(|a| partition_of(a, PARTITIONS) == partition)
        .expect("a name lands on every partition")
}

fn transfer(from: AccountId, to: AccountId, id: &str) -> Command {
    Command::Transfer(Transfer {
        transaction_id: TransactionId::new(id).unwrap(),
        from,
        to,
        amount: Amount::from_minor(100).unwrap(),
        currency: Currency::USD,
    })
}

/// Executes `command` through the nodes in turn from `via` until one answers.
async fn execute(nodes: &[ReplicatedNode], via: usize, command: Command) -> CommandResult {
    for attempt in 0..400 {
        let client = nodes[(via + attempt) % nodes.len()].client();
        let sent = client.execute(command.clone(), true);
        match tokio::time::timeout(Duration::from_secs(3), sent).await {
            Ok(Ok(result)) => return result,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    panic!("{command:?} got no answer");
}

/// Waits until `done` holds of the nodes, for up to 20 s.
async fn wait_for(what: &str, nodes: &[ReplicatedNode], done: impl Fn(&[ReplicatedNode]) -> bool) {
    for _ in 0..2_000 {
        if done(nodes) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let state: Vec<_> = (0..PARTITIONS)
        .map(|p| {
            let statuses: Vec<_> = (nodes.iter())
                .map(|n| {
                    n.view().status(p).map(|s| {
                        let leading = s.leading.load(Ordering::Acquire);
                        let voters = s.voters.lock().unwrap().clone();
                        let learners = s.learners.lock().unwrap().clone();
                        let changing = s.members_changing.load(Ordering::Acquire);
                        (leading, voters, learners, changing)
                    })
                })
                .collect();
            (p, statuses)
        })
        .collect();
    panic!("not within 20 s: {what}; (leading, voters, learners, changing) by node: {state:?}");
}

/// The voters of `partition` as its leader applied them, if some node leads it.
fn leader_voters(nodes: &[ReplicatedNode], partition: PartitionId) -> Option<Vec<NodeId>> {
    let leader = nodes.iter().find_map(|n| {
        let status = n.view().status(partition)?;
        status.leading.load(Ordering::Acquire).then_some(status)
    })?;
    let mut voters = leader.voters.lock().unwrap().clone();
    voters.sort_unstable();
    let changing = leader.members_changing.load(Ordering::Acquire);
    let learning = !leader.learners.lock().unwrap().is_empty();
    (!changing && !learning).then_some(voters)
}

#[tokio::test(flavor = "current_thread")]
async fn a_copy_moves_to_a_node_that_joined_while_transfers_go_on() {
    let mut listeners = Vec::new();
    let mut addresses = BTreeMap::new();
    for n in 0..4u32 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = NodeAddress {
            http: format!("127.0.0.1:{}", 1 + n),
            peer: listener.local_addr().unwrap().to_string(),
        };
        addresses.insert(n, address);
        listeners.push(listener);
    }
    let joined = PartitionMap {
        version: 2,
        owners: vec![0, 1],
        nodes: addresses.clone(),
    };
    let mut first = joined.clone();
    first.version = 1;
    first.nodes.remove(&3);
    let placement = Placement::derived(&first, 3);
    let stores: Vec<MemStores> = (0..4).map(|_| MemStores::default()).collect();
    let mut nodes = Vec::new();
    for (n, listener) in listeners.into_iter().enumerate() {
        let node = n as NodeId;
        let map = if node < 3 { &first } else { &joined };
        let started = start_replicated_node(
            Tcp,
            listener,
            map,
            placement.clone(),
            node,
            SECRET,
            stores[n].clone(),
            config(node),
        )
        .await
        .expect("a node starts");
        nodes.push(started);
    }
    let publish = |nodes: &[ReplicatedNode], map: &PartitionMap, placement: &Placement| {
        for node in nodes {
            let change = node
                .map_handle()
                .update_placed(map.clone(), placement.clone());
            assert!(change.is_ok(), "node {}: {change:?}", node.node());
        }
    };
    publish(&nodes[..3], &joined, &placement);
    let (alice, bob) = (account_on("alice", 0), account_on("bob", 1));
    for account in [alice, bob] {
        let open = Command::OpenAccount {
            account,
            currency: Currency::USD,
        };
        assert!(matches!(
            execute(&nodes, 0, open).await,
            Ok(Reply::Opened { .. })
        ));
    }
    let deposit = Command::Deposit {
        account: alice,
        amount: Amount::from_minor(1_000_000).unwrap(),
        currency: Currency::USD,
        transaction_id: TransactionId::new("d1").unwrap(),
    };
    assert!(execute(&nodes, 0, deposit).await.is_ok());
    let mut next = 0;
    let mut committed = Vec::new();
    let mut transfers = async |nodes: &[ReplicatedNode], count: usize| {
        for _ in 0..count {
            let id = format!("t{next}");
            let result = execute(nodes, next, transfer(alice, bob, &id)).await;
            assert_eq!(
                result,
                Ok(Reply::Transfer(TransferStatus::Committed)),
                "{id}"
            );
            committed.push(id);
            next += 1;
        }
    };
    transfers(&nodes, 10).await;
    // Grow partition 0's group to node 3: it joins as a learner, catches up, votes.
    let mut grown = placement.clone();
    grown.groups[0] = vec![0, 1, 2, 3];
    let mut map = joined.clone();
    map.version = 3;
    publish(&nodes, &map, &grown);
    transfers(&nodes, 10).await;
    wait_for("node 3 votes in partition 0", &nodes, |nodes| {
        leader_voters(nodes, 0) == Some(vec![0, 1, 2, 3])
    })
    .await;
    assert!(nodes[3].hosts(0) && !nodes[3].hosts(1));
    // Shrink it off node 0: the group removes node 0's copy, which stops and is deleted.
    let mut moved = grown.clone();
    moved.groups[0] = vec![1, 2, 3];
    map.version = 4;
    map.owners[0] = 1;
    publish(&nodes, &map, &moved);
    transfers(&nodes, 10).await;
    wait_for("node 0's copy of partition 0 removed", &nodes, |nodes| {
        leader_voters(nodes, 0) == Some(vec![1, 2, 3]) && !nodes[0].hosts(0)
    })
    .await;
    assert_eq!(*stores[0].removed.lock().unwrap(), vec![0]);
    assert!(nodes[0].hosts(1), "node 0 keeps its copy of partition 1");
    transfers(&nodes, 10).await;
    // Partition 1 moves off node 0 and straight back, before node 0's removed copy has
    // stopped: that copy stops all the same, and a new one joins in its place.
    let mut grown = moved.clone();
    grown.groups[1] = vec![1, 2, 0, 3];
    map.version = 5;
    publish(&nodes, &map, &grown);
    wait_for("node 3 votes in partition 1", &nodes, |nodes| {
        leader_voters(nodes, 1) == Some(vec![0, 1, 2, 3])
    })
    .await;
    let mut away = grown.clone();
    away.groups[1] = vec![1, 2, 3];
    map.version = 6;
    publish(&nodes, &map, &away);
    wait_for("node 0 out of partition 1", &nodes, |nodes| {
        leader_voters(nodes, 1) == Some(vec![1, 2, 3])
    })
    .await;
    let mut back = away.clone();
    back.groups[1] = vec![1, 2, 3, 0];
    map.version = 7;
    publish(&nodes, &map, &back);
    transfers(&nodes, 10).await;
    wait_for(
        "node 0 back in partition 1 with a new copy",
        &nodes,
        |nodes| leader_voters(nodes, 1) == Some(vec![0, 1, 2, 3]) && nodes[0].hosts(1),
    )
    .await;
    assert_eq!(*stores[0].removed.lock().unwrap(), vec![0, 1]);
    transfers(&nodes, 10).await;
    // Node 0 crashes; meanwhile partition 1 moves off it and back. It restarts on the
    // newest map with its old copy, which the group removed while it was down and which
    // hears from no leader: it asks, learns it was removed, and a new copy takes its place.
    let crashed = nodes.remove(0);
    crashed.abort();
    let mut off = back.clone();
    off.groups[1] = vec![1, 2, 3];
    map.version = 8;
    publish(&nodes, &map, &off);
    wait_for("node 0 out of partition 1 while down", &nodes, |nodes| {
        leader_voters(nodes, 1) == Some(vec![1, 2, 3])
    })
    .await;
    map.version = 9;
    publish(&nodes, &map, &back);
    let listener = super::tests::bind_again(&map.nodes[&0].peer).await;
    let stores0 = stores[0].clone();
    let restarted = start_replicated_node(
        Tcp,
        listener,
        &map,
        back.clone(),
        0,
        SECRET,
        stores0,
        config(0),
    )
    .await
    .expect("node 0 restarts");
    nodes.insert(0, restarted);
    wait_for(
        "node 0's removed copy replaced by a new one",
        &nodes,
        |nodes| leader_voters(nodes, 1) == Some(vec![0, 1, 2, 3]) && nodes[0].hosts(1),
    )
    .await;
    assert_eq!(*stores[0].removed.lock().unwrap(), vec![0, 1, 1]);
    transfers(&nodes, 10).await;
    // Every transfer once: a retry through node 0 (now relaying partition 0) answers the same.
    for id in &committed {
        let retry = execute(&nodes, 0, transfer(alice, bob, id)).await;
        assert_eq!(
            retry,
            Ok(Reply::Transfer(TransferStatus::Committed)),
            "{id}"
        );
    }
    let copies = |partition: PartitionId| -> Vec<usize> {
        (0..4)
            .filter(|n| stores[*n].held().contains(&partition))
            .collect()
    };
    assert_eq!(copies(0), vec![1, 2, 3]);
    assert_eq!(copies(1), vec![0, 1, 2, 3]);
    wait_for("every copy applied the same", &nodes, |nodes| {
        let applied = |n: usize, p: PartitionId| {
            nodes[n]
                .view()
                .status(p)
                .map(|s| s.applied_lsn.load(Ordering::Acquire))
        };
        let same = |p: PartitionId| {
            let lsns: Vec<_> = copies(p).iter().map(|n| applied(*n, p)).collect();
            lsns.windows(2).all(|w| w[0] == w[1])
        };
        same(0) && same(1)
    })
    .await;
    for node in nodes {
        node.shutdown().await.expect("a clean stop");
    }
    let moved_out = 100 * committed.len() as u64;
    for (n, node_stores) in stores.iter().enumerate() {
        let disks = node_stores.disks.lock().unwrap().clone();
        for (p, (storage, _)) in disks {
            let mut storage = storage;
            let (ledger, _) = crate::driver::recover(&mut storage, p, PARTITIONS)
                .await
                .expect("recovers");
            ledger.check_conservation().expect("money is conserved");
            let (account, balance) = match p {
                0 => (alice, 1_000_000 - moved_out),
                _ => (bob, moved_out),
            };
            assert_eq!(
                ledger.account(&account).unwrap().balance,
                balance,
                "node {n} partition {p}"
            );
        }
    }
}
