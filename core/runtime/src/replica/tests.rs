//! Three replica drivers of one partition on in-memory storage, wired by channels: a leader
//! is elected, commits, is killed (losing every unsynced byte), a new one carries on, and
//! the killed one comes back and catches up; a replica whose disks are wiped comes back
//! under a new id and replaces its old one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use walletd_core::model::placement::Placement;

use super::*;
use crate::storage::raft_store::MemRaftStore;
use crate::storage::MemStorage;
use walletd_core::ledger::{Command, Reply, TransferStatus};
use walletd_core::model::event::Transfer;
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency};
use walletd_core::protocol::machine::MachineConfig;
use walletd_core::protocol::message::{CommandResult, PeerMessage};
use walletd_core::replica::membership::{incarnation_of, node_of};
use walletd_core::replica::{CatchUpMessage, DurableRaft};

const REPLICAS: usize = 3;

/// Routes Raft messages and forwarded inputs by the node of their replica id into the
/// inboxes (a replica that is down has no inbox: what is sent to it is lost).
#[derive(Default)]
struct Wires {
    inboxes: Mutex<Vec<Option<mpsc::Sender<Input>>>>,
}

/// Node `node`'s end of the wires.
struct NodeWires {
    node: NodeId,
    wires: Arc<Wires>,
}

fn node_index(replica: ReplicaId) -> usize {
    node_of(replica).expect("a replica id names a node") as usize
}

impl GroupLinks for NodeWires {
    fn send_catch_up(&self, node: NodeId, partition: PartitionId, message: CatchUpMessage) {
        let inboxes = self.wires.inboxes.lock().unwrap();
        if let Some(Some(inbox)) = inboxes.get(node as usize) {
            let input = Input::CatchUp {
                partition,
                from: self.node,
                message,
            };
            let _ = inbox.try_send(input);
        }
    }

    fn send_membership(&self, node: NodeId, partition: PartitionId, message: MembershipMessage) {
        let inboxes = self.wires.inboxes.lock().unwrap();
        if let Some(Some(inbox)) = inboxes.get(node as usize) {
            let input = Input::Membership {
                partition,
                from: self.node,
                message,
            };
            let _ = inbox.try_send(input);
        }
    }

    fn send_raft(&self, partition: PartitionId, messages: Vec<RaftMessage>) {
        let inboxes = self.wires.inboxes.lock().unwrap();
        for message in messages {
            if let Some(Some(inbox)) = inboxes.get(node_index(message.to)) {
                let input = Input::Raft {
                    partition,
                    messages: vec![message],
                };
                let _ = inbox.try_send(input);
            }
        }
    }

    fn forward(&self, to: ReplicaId, input: Input) -> Result<(), Input> {
        let inboxes = self.wires.inboxes.lock().unwrap();
        match inboxes.get(node_index(to)) {
            Some(Some(inbox)) => inbox.try_send(input).map_err(|e| match e {
                mpsc::error::TrySendError::Full(input)
                | mpsc::error::TrySendError::Closed(input) => input,
            }),
            _ => Err(input),
        }
    }
}

/// One partition: phase messages never leave it.
struct NoPeers;

impl Transport for NoPeers {
    fn send_all(&self, messages: Vec<PeerMessage>) {
        assert!(messages.is_empty(), "one partition sends no phase messages");
    }
}

struct Node {
    storage: MemStorage,
    raft_store: MemRaftStore,
    /// The group's first voters, which a wiped disk starts from again.
    voters: Vec<u64>,
    inbox: Option<mpsc::Sender<Input>>,
    status: Arc<ReplicaStatus>,
    task: Option<JoinHandle<Result<(MemStorage, MemRaftStore), ReplicaDriverError>>>,
    incarnation: u64,
}

struct Group {
    wires: Arc<Wires>,
    nodes: Vec<Node>,
    /// Turns through the nodes that clients send to.
    next_target: std::sync::atomic::AtomicUsize,
}

impl Group {
    fn new() -> Group {
        let voters: Vec<u64> = (1..=REPLICAS as u64).collect();
        let wires = Arc::new(Wires::default());
        *wires.inboxes.lock().unwrap() = vec![None; REPLICAS];
        let nodes = (0..REPLICAS)
            .map(|_| Node {
                storage: MemStorage::default(),
                raft_store: MemRaftStore::new(DurableRaft::new(&voters)),
                voters: voters.clone(),
                inbox: None,
                status: Arc::new(ReplicaStatus::default()),
                task: None,
                incarnation: 0,
            })
            .collect();
        Group {
            wires,
            nodes,
            next_target: Default::default(),
        }
    }

    async fn start(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        node.incarnation += 1;
        let (inbox_tx, inbox) = mpsc::channel(4096);
        node.status = Arc::new(ReplicaStatus::default());
        let config = ReplicaConfig {
            id: index as u64 + 1,
            election_ticks: 10,
            heartbeat_ticks: 2,
            seed: (index as u64) << 8 | node.incarnation,
            machine: MachineConfig::default(),
            // Small, so that the group compacts and a wiped replica catches up by fetching
            // records.
            log: walletd_core::replica::LogLimits {
                compact_after: 8,
                keep: 2,
            },
        };
        let wiring = ReplicaWiring {
            node: index as NodeId,
            placement: crate::watch::channel(Arc::new(Placement {
                groups: vec![(0..REPLICAS as NodeId).collect()],
                founders: vec![(0..REPLICAS as NodeId).collect()],
            }))
            .1,
            peers: Arc::new(NoPeers),
            links: Arc::new(NodeWires {
                node: index as NodeId,
                wires: Arc::clone(&self.wires),
            }),
            inbox,
            status: Arc::clone(&node.status),
            stats: Arc::new(DriverStats::default()),
        };
        let timing = ReplicaTiming {
            tick: Duration::from_millis(2),
            ..ReplicaTiming::default()
        };
        let driver = ReplicaDriver::start(
            0,
            1,
            node.storage.clone(),
            node.raft_store.clone(),
            config,
            timing,
            wiring,
        )
        .await
        .expect("a replica starts from its disks");
        node.task = Some(tokio::spawn(async move {
            driver
                .run()
                .await
                .map(crate::replica::Stopped::into_storages)
        }));
        self.wires.inboxes.lock().unwrap()[index] = Some(inbox_tx.clone());
        node.inbox = Some(inbox_tx);
    }

    /// Kills node `index`: its task stops wherever it is and its disks lose every write
    /// that was not synced.
    async fn kill(&mut self, index: usize) {
        self.wires.inboxes.lock().unwrap()[index] = None;
        let node = &mut self.nodes[index];
        node.inbox = None;
        if let Some(task) = node.task.take() {
            task.abort();
            let _ = task.await;
        }
        node.storage.disk.lock().unwrap().crash();
        node.raft_store.disk().lock().unwrap().crash();
    }

    /// Kills node `index` and gives it new, empty disks: a lost disk.
    async fn kill_and_wipe(&mut self, index: usize) {
        self.kill(index).await;
        let node = &mut self.nodes[index];
        node.storage = MemStorage::default();
        node.raft_store = MemRaftStore::new(DurableRaft::new(&node.voters));
    }

    /// Kills node `index` and damages its partition log in the middle (a byte of its first
    /// record, which later syncs vouch for).
    async fn kill_and_damage_log(&mut self, index: usize) {
        self.kill(index).await;
        let mut disk = self.nodes[index].storage.disk.lock().unwrap();
        let (_, first) = disk.segments.first_mut().expect("a log");
        let at = first.len() / 8;
        first[at] ^= 0x5a;
    }

    /// Waits until node `index`'s replica is a voter under an incarnation past `incarnation`
    /// (its old id's), in place of its old id, in the members the leader's disk holds.
    async fn wait_for_new_voter(&self, index: usize, incarnation: u32) {
        let mut voters = Vec::new();
        for _ in 0..2_000 {
            let leader = self.leader().await;
            let disk = self.nodes[leader].raft_store.disk();
            let conf = disk.lock().unwrap().durable.conf_state.clone();
            voters = conf.voters.clone();
            voters.sort_unstable();
            let renewed = voters.iter().any(|id| {
                node_of(*id) == Some(index as NodeId) && incarnation_of(*id) > incarnation
            });
            if renewed && conf.voters_outgoing.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let nodes: std::collections::BTreeSet<_> = voters.iter().map(|id| node_of(*id)).collect();
        assert_eq!(nodes.len(), REPLICAS, "one voter per node: {voters:?}");
        let renewed = voters
            .iter()
            .any(|id| node_of(*id) == Some(index as NodeId) && incarnation_of(*id) > incarnation);
        assert!(
            renewed,
            "node {index} votes under an incarnation past {incarnation}: {voters:?}"
        );
        let id = self.nodes[index]
            .raft_store
            .disk()
            .lock()
            .unwrap()
            .durable
            .id;
        assert!(
            voters.contains(&id),
            "its store holds its id {id}: {voters:?}"
        );
    }

    /// The node that leads, once one does (and has caught up).
    async fn leader(&self) -> usize {
        for _ in 0..2_000 {
            let leading: Vec<usize> = (0..REPLICAS)
                .filter(|&i| self.nodes[i].task.is_some())
                .filter(|&i| self.nodes[i].status.leading.load(Ordering::Acquire))
                .collect();
            if let [one] = leading[..] {
                return one;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let states: Vec<_> = (self.nodes.iter())
            .map(|n| {
                let finished = n.task.as_ref().map(|t| t.is_finished());
                let leader = n.status.leader.load(Ordering::Acquire);
                let term = n.status.term.load(Ordering::Acquire);
                (finished, leader, term)
            })
            .collect();
        panic!("no single leader within 10 s: {states:?}");
    }

    /// Sends `command` until it is answered, to each node that is up in turn: a follower
    /// forwards it to the leader, or holds it while there is none; a deposed leader drops
    /// it, and it is sent again.
    async fn execute(&self, command: Command) -> CommandResult {
        for _ in 0..200 {
            let up: Vec<usize> = (0..REPLICAS)
                .filter(|&i| self.nodes[i].inbox.is_some())
                .collect();
            let turn = self.next_target.fetch_add(1, Ordering::Relaxed);
            let target = up[turn % up.len()];
            let (reply, answer) = oneshot::channel();
            let input = Input::Command {
                command: command.clone(),
                wait: true,
                reply,
            };
            let inbox = self.nodes[target].inbox.as_ref().expect("up");
            if inbox.send(input).await.is_err() {
                continue;
            }
            match tokio::time::timeout(Duration::from_secs(2), answer).await {
                Ok(Ok(result)) => return result,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        panic!("{command:?} got no answer");
    }

    async fn stop_all(&mut self) -> Vec<(MemStorage, MemRaftStore)> {
        let mut stores = Vec::new();
        for node in &mut self.nodes {
            let (ack, acked) = oneshot::channel();
            let inbox = node.inbox.take().expect("up");
            inbox.send(Input::Shutdown(ack)).await.expect("running");
            acked.await.expect("acknowledged");
            let task = node.task.take().expect("running");
            stores.push(task.await.expect("joined").expect("a clean stop"));
        }
        stores
    }
}

fn account(name: &str) -> AccountId {
    AccountId::new(name).unwrap()
}

fn transfer(from: &str, to: &str, minor: u64, id: &str) -> Command {
    Command::Transfer(Transfer {
        transaction_id: TransactionId::new(id).unwrap(),
        from: account(from),
        to: account(to),
        amount: Amount::from_minor(minor).unwrap(),
        currency: Currency::USD,
    })
}

#[tokio::test(flavor = "current_thread")]
async fn a_group_commits_through_a_leader_crash_and_a_restarted_replica_catches_up() {
    let mut group = Group::new();
    for index in 0..REPLICAS {
        group.start(index).await;
    }
    for name in ["alice", "bob"] {
        let opened = group
            .execute(Command::OpenAccount {
                account: account(name),
                currency: Currency::USD,
            })
            .await;
        assert!(matches!(opened, Ok(Reply::Opened { .. })), "{opened:?}");
    }
    let deposit = Command::Deposit {
        account: account("alice"),
        amount: Amount::from_minor(1_000_000).unwrap(),
        currency: Currency::USD,
        transaction_id: TransactionId::new("d1").unwrap(),
    };
    assert!(group.execute(deposit).await.is_ok());
    let mut committed = Vec::new();
    for round in 0..4 {
        for i in 0..20 {
            let id = format!("t{round}-{i}");
            let result = group.execute(transfer("alice", "bob", 100, &id)).await;
            assert_eq!(result, Ok(Reply::Transfer(TransferStatus::Committed)));
            committed.push(id);
        }
        // Kill the leader, let the others elect a new one, bring it back; in the second
        // round with its disks wiped, in the third with its partition log damaged.
        let leader = group.leader().await;
        let incarnation = incarnation_of(
            group.nodes[leader]
                .raft_store
                .disk()
                .lock()
                .unwrap()
                .durable
                .id,
        );
        match round {
            1 => group.kill_and_wipe(leader).await,
            2 => group.kill_and_damage_log(leader).await,
            _ => group.kill(leader).await,
        }
        let next = group.leader().await;
        assert_ne!(next, leader, "a killed node does not lead");
        group.start(leader).await;
        if round == 1 || round == 2 {
            // Until the rebuilt replica votes again, the group has no vote to spare.
            group.wait_for_new_voter(leader, incarnation).await;
        }
        if round == 2 {
            let disk = group.nodes[leader].storage.disk.lock().unwrap();
            assert_eq!(disk.set_aside.len(), 1, "the damaged copy is kept aside");
        }
    }
    // Every transfer acknowledged is there once: a retry gets the same answer and moves
    // nothing again.
    for id in &committed {
        let retry = group.execute(transfer("alice", "bob", 100, id)).await;
        assert_eq!(
            retry,
            Ok(Reply::Transfer(TransferStatus::Committed)),
            "{id}"
        );
    }
    // Let every replica catch up, then compare what their disks replay to.
    let leader = group.leader().await;
    let target = group.nodes[leader]
        .status
        .applied_lsn
        .load(Ordering::Acquire);
    for _ in 0..1_000 {
        let caught_up =
            (group.nodes.iter()).all(|n| n.status.applied_lsn.load(Ordering::Acquire) >= target);
        if caught_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stores = group.stop_all().await;
    let expected_bob = 100 * committed.len() as u64;
    for (index, (mut storage, raft_store)) in stores.into_iter().enumerate() {
        let durable = raft_store.disk().lock().unwrap().durable.clone();
        assert_eq!(
            node_of(durable.id),
            Some(index as NodeId),
            "node {index} keeps its id"
        );
        // Every Raft log was compacted, so the wiped replica got the records before its
        // leader's log start by fetching them (its partition log replays below).
        assert!(
            durable.log_start.index > 0,
            "node {index}: {:?}",
            durable.log_start
        );
        let (ledger, _) = recover(&mut storage, 0, 1).await.expect("recovers");
        ledger.check_conservation().expect("money is conserved");
        let bob = ledger.account(&account("bob")).expect("bob exists").balance;
        assert_eq!(bob, expected_bob, "node {index}: bob's balance");
        let alice = ledger.account(&account("alice")).expect("alice").balance;
        assert_eq!(
            alice,
            1_000_000 - expected_bob,
            "node {index}: alice's balance"
        );
    }
}
