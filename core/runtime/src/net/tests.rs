//! Nodes of one cluster inside one test process: each its own engine on real files in a temp
//! dir and its own peer listener on a loopback port, talking the real protocol over TCP.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::*;
use crate::driver::DriverConfig;
use crate::driver::{Query, QueryAnswer};
use crate::engine::Unavailable;
use crate::storage::file::{FileStorage, FileStorageConfig};
use listener::deliver_peers;
use walletd_core::ledger::{
    Account, Command, LedgerError, Reply, TransferRow, TransferState, TransferStatus,
};
use walletd_core::model::event::{Reason, Transfer, TransferKey};
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency};
use walletd_core::model::partition::NodeAddress;
use walletd_core::protocol::coordinator::{CoordinatorConfig, Phase, PhaseRequest};
use walletd_core::protocol::message::{PeerMessage, PEER_MESSAGES_PER_INPUT_MAX};
use walletd_core::wire::{Frame, FrameWriter, Message, NONCE_LEN};

mod follower;

const SECRET: &[u8] = b"a cluster secret for the tests";

fn config(try_timeout_ms: u64) -> NodeConfig {
    NodeConfig {
        engine: EngineConfig {
            inbox_capacity: 4096,
            driver: DriverConfig {
                coordinator: CoordinatorConfig {
                    try_timeout_us: try_timeout_ms * 1000,
                    retry_initial_us: 20_000,
                    retry_max_us: 200_000,
                    resolve_after_us: 1_000_000,
                },
                ..DriverConfig::default()
            },
            ..EngineConfig::default()
        },
        net: NetConfig {
            connect_backoff_initial_ms: 10,
            connect_backoff_max_ms: 100,
            heartbeat_ms: 100,
            peer_silent_max_ms: 1_000,
            stale_map_wait_max_ms: 2_000,
            ..NetConfig::default()
        },
        nonce_seed: [7; 32],
    }
}

/// A cluster of in-process nodes; a stopped node's slot is `None`.
struct Cluster {
    dir: TempDir,
    map: PartitionMap,
    config: NodeConfig,
    nodes: Vec<Option<ClusterNode>>,
}

impl Cluster {
    async fn start(nodes: u32, partitions: u32, config: NodeConfig) -> Cluster {
        // Every listener is bound first: the map must name every port before a node starts.
        let mut listeners = Vec::new();
        let mut addresses = BTreeMap::new();
        for n in 0..nodes {
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
            owners: (0..partitions).map(|p| p % nodes).collect(),
            nodes: addresses,
        };
        let mut cluster = Cluster {
            dir: tempfile::tempdir().unwrap(),
            map,
            config,
            nodes: Vec::new(),
        };
        for (n, listener) in listeners.into_iter().enumerate() {
            let node = cluster
                .start_node(n as NodeId, listener, &cluster.map.clone(), SECRET)
                .await
                .unwrap();
            cluster.nodes.push(Some(node));
        }
        cluster.wait_linked().await;
        cluster
    }

    async fn start_node(
        &self,
        node: NodeId,
        listener: TcpListener,
        map: &PartitionMap,
        secret: &[u8],
    ) -> Result<ClusterNode, NodeError> {
        let storages = map
            .partitions_of(node)
            .into_iter()
            .map(|p| {
                let dir = self.dir.path().join(format!("node-{node}/partition-{p}"));
                (
                    p,
                    FileStorage::open(dir, FileStorageConfig::default()).unwrap(),
                )
            })
            .collect();
        start_node_with(Tcp, listener, map, node, secret, storages, self.config).await
    }

    fn node(&self, node: NodeId) -> &ClusterNode {
        self.nodes[node as usize].as_ref().expect("node is running")
    }

    fn client(&self, node: NodeId) -> Client {
        self.node(node).client()
    }

    async fn stop(&mut self, node: NodeId) {
        let stopped = self.nodes[node as usize].take().expect("node is running");
        stopped.shutdown().await.unwrap();
    }

    /// Restarts a stopped node on its old port and data.
    async fn restart(&mut self, node: NodeId) {
        let address = &self.map.nodes[&node].peer;
        let listener = TcpListener::bind(address).await.unwrap();
        let started = self
            .start_node(node, listener, &self.map.clone(), SECRET)
            .await
            .unwrap();
        self.nodes[node as usize] = Some(started);
        self.wait_linked().await;
    }

    /// Waits until every running node has a link up to every other running node.
    async fn wait_linked(&self) {
        let running: Vec<NodeId> = (0..self.nodes.len() as NodeId)
            .filter(|n| self.nodes[*n as usize].is_some())
            .collect();
        eventually("links up", || {
            running.iter().all(|n| {
                self.node(*n).links().iter().all(|(peer, link)| {
                    !running.contains(peer) || link.connected.load(Ordering::Relaxed)
                })
            })
        })
        .await;
    }

    /// The first account named `prefix-<i>` that lives on a partition of `node`.
    fn account_on(&self, node: NodeId, prefix: &str) -> AccountId {
        (0..)
            .map(|i| AccountId::new(&format!("{prefix}-{i}")).unwrap())
            .find(|a| self.map.owner(self.map.partition_of(a)) == node)
            .unwrap()
    }
}

/// Polls `done` every 10 ms for up to 10 s.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn usd(minor: u64) -> Amount {
    Amount::from_minor(minor).unwrap()
}

fn txn(text: &str) -> TransactionId {
    TransactionId::new(text).unwrap()
}

fn transfer(from: AccountId, to: AccountId, minor: u64, id: &str) -> Transfer {
    Transfer {
        transaction_id: txn(id),
        from,
        to,
        amount: usd(minor),
        currency: Currency::USD,
    }
}

async fn open(client: &Client, account: AccountId) {
    let command = Command::OpenAccount {
        account,
        currency: Currency::USD,
    };
    assert_eq!(
        client.execute(command, false).await.unwrap(),
        Ok(Reply::Opened { created: true })
    );
}

fn deposit(account: AccountId, minor: u64, id: &str) -> Command {
    Command::Deposit {
        account,
        amount: usd(minor),
        currency: Currency::USD,
        transaction_id: txn(id),
    }
}

async fn account(client: &Client, account: AccountId) -> Account {
    let partition = client.partition_of(&account);
    match client
        .query(partition, Query::Account(account))
        .await
        .unwrap()
    {
        QueryAnswer::Account(Some(found)) => found,
        other => panic!("no account {account}: {other:?}"),
    }
}

async fn row(client: &Client, key: TransferKey) -> Option<TransferRow> {
    let partition = client.partition_of(&key.from);
    match client.query(partition, Query::Transfer(key)).await {
        Ok(QueryAnswer::Transfer(row)) => row,
        other => panic!("unexpected answer {other:?}"),
    }
}

/// Polls the home row of `key` through `client` until it is in `state`.
async fn wait_for_state(client: &Client, key: TransferKey, state: TransferState) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = row(client, key).await.map(|r| r.state);
        if found == Some(state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key:?} stuck in {found:?}, want {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn cross_node_transfers_commit_on_both_sides() {
    let cluster = Cluster::start(3, 6, config(30_000)).await;
    let [a, b, c] = [0, 1, 2].map(|n| cluster.account_on(n, "acct"));
    for account in [a, b, c] {
        open(&cluster.client(2), account).await;
    }
    let funded = cluster
        .client(1)
        .execute(deposit(a, 1_000, "d-1"), false)
        .await;
    assert_eq!(funded.unwrap(), Ok(Reply::Balance { balance: 1_000 }));
    // Asked of a node that owns neither side: forwarded to a's node, which runs TC/C with b's.
    let ab = transfer(a, b, 300, "t-1");
    let committed = Ok(Reply::Transfer(TransferStatus::Committed));
    assert_eq!(transfer_on(&cluster, 2, ab).await, committed);
    // Committed is told once the decision is durable; b can spend the money once its
    // partition has applied the Confirm, which the home row shows as Committed.
    wait_for_state(&cluster.client(1), ab.key(), TransferState::Committed).await;
    let bc = transfer(b, c, 100, "t-2");
    assert_eq!(transfer_on(&cluster, 0, bc).await, committed);
    // A retry with the same transaction id is answered from the first outcome, applied once.
    assert_eq!(transfer_on(&cluster, 1, ab).await, committed);
    wait_for_state(&cluster.client(2), bc.key(), TransferState::Committed).await;
    for n in 0..3 {
        let client = cluster.client(n);
        let balances = [
            account(&client, a).await,
            account(&client, b).await,
            account(&client, c).await,
        ];
        let expected = [700, 200, 100].map(|balance| Account {
            currency: Currency::USD,
            balance,
            held: 0,
            incoming: 0,
        });
        assert_eq!(balances, expected, "as seen from node {n}");
    }
    let link = &cluster.node(2).links()[&0];
    assert!(link.frames_sent.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn forwarded_commands_and_queries_answer_like_local_ones() {
    let cluster = Cluster::start(2, 4, config(30_000)).await;
    let remote = cluster.client(1);
    let a = cluster.account_on(0, "acct");
    let b = cluster.account_on(0, "other");
    assert_eq!(
        remote.execute(deposit(a, 5, "d-0"), false).await.unwrap(),
        Err(LedgerError::AccountNotFound(a))
    );
    open(&remote, a).await;
    let reopen = Command::OpenAccount {
        account: a,
        currency: Currency::EUR,
    };
    assert_eq!(
        remote.execute(reopen, false).await.unwrap(),
        Err(LedgerError::AccountExists {
            account: a,
            existing: Currency::USD
        })
    );
    assert_eq!(
        remote.execute(deposit(a, 250, "d-1"), false).await.unwrap(),
        Ok(Reply::Balance { balance: 250 })
    );
    // The same deposit again is answered with its first outcome; a different body conflicts.
    assert_eq!(
        remote.execute(deposit(a, 250, "d-1"), false).await.unwrap(),
        Ok(Reply::Balance { balance: 250 })
    );
    assert_eq!(
        remote.execute(deposit(a, 1, "d-1"), false).await.unwrap(),
        Err(LedgerError::Conflict(txn("d-1")))
    );
    let withdraw = Command::Withdraw {
        account: a,
        amount: usd(1_000),
        currency: Currency::USD,
        transaction_id: txn("w-1"),
    };
    assert_eq!(
        remote.execute(withdraw, false).await.unwrap(),
        Err(LedgerError::InsufficientFunds {
            available: "2.50".into(),
            currency: Currency::USD
        })
    );
    let same = transfer(a, a, 1, "t-same");
    assert_eq!(
        remote
            .execute(Command::Transfer(same), false)
            .await
            .unwrap(),
        Ok(Reply::Transfer(TransferStatus::Rejected(
            Reason::SameAccount
        )))
    );
    open(&remote, b).await;
    let ab = transfer(a, b, 100, "t-1");
    assert_eq!(
        remote.execute(Command::Transfer(ab), false).await.unwrap(),
        Ok(Reply::Transfer(TransferStatus::Committed))
    );
    let row = row(&remote, ab.key()).await.expect("row");
    assert_eq!((row.transfer, row.state), (ab, TransferState::Committed));
    assert_eq!(account(&remote, b).await.balance, 100);
    let unknown = AccountId::new("nobody").unwrap();
    let partition = remote.partition_of(&unknown);
    let answer = remote.query(partition, Query::Account(unknown)).await;
    assert_eq!(answer.unwrap(), QueryAnswer::Account(None));
}

#[tokio::test]
async fn many_concurrent_cross_node_transfers_conserve_money() {
    let cluster = Cluster::start(2, 4, config(30_000)).await;
    let accounts: Vec<AccountId> = (0..8)
        .map(|i| cluster.account_on(i % 2, &format!("acct{i}")))
        .collect();
    for (i, account) in accounts.iter().enumerate() {
        open(&cluster.client(0), *account).await;
        let command = deposit(*account, 10_000, &format!("d{i}"));
        let funded = cluster.client(1).execute(command, false).await;
        assert!(funded.unwrap().is_ok());
    }
    let mut tasks = Vec::new();
    for worker in 0..8usize {
        let client = cluster.client((worker % 2) as NodeId);
        let accounts = accounts.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50usize {
                let from = accounts[(worker + i) % 8];
                let to = accounts[(worker + i + 1 + i % 3) % 8];
                let t = transfer(from, to, 1 + (i as u64 % 7), &format!("w{worker}-{i}"));
                let result = client.execute(Command::Transfer(t), true).await.unwrap();
                assert!(matches!(result, Ok(Reply::Transfer(_))), "{result:?}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let client = cluster.client(0);
    eventually_async("every hold resolved", || async {
        let mut total = 0;
        for a in &accounts {
            let found = account(&client, *a).await;
            if found.held != 0 || found.incoming != 0 {
                return false;
            }
            total += found.balance;
        }
        assert_eq!(total, 80_000, "money is conserved");
        true
    })
    .await;
}

async fn eventually_async<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_node_that_is_down_is_unavailable_and_transfers_wait_for_it() {
    let mut cluster = Cluster::start(2, 4, config(30_000)).await;
    let a = cluster.account_on(0, "acct");
    let b = cluster.account_on(1, "acct");
    open(&cluster.client(0), a).await;
    open(&cluster.client(0), b).await;
    let funded = cluster
        .client(0)
        .execute(deposit(a, 500, "d-1"), false)
        .await;
    assert!(funded.unwrap().is_ok());
    cluster.stop(1).await;
    let client = cluster.client(0);
    eventually("link down", || {
        !cluster.node(0).links()[&1]
            .connected
            .load(Ordering::Relaxed)
    })
    .await;
    // A command for a partition of the stopped node fails at once, not at a timeout.
    let started = Instant::now();
    let refused = client.execute(deposit(b, 5, "d-2"), false).await;
    assert_eq!(refused, Err(Unavailable(client.partition_of(&b))));
    assert!(started.elapsed() < Duration::from_millis(500));
    // A transfer whose home is up is accepted, debited into a hold, and waits for the Try.
    let ab = transfer(a, b, 200, "t-1");
    let accepted = client.execute(Command::Transfer(ab), false).await.unwrap();
    assert_eq!(accepted, Ok(Reply::Transfer(TransferStatus::Pending)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        row(&client, ab.key()).await.unwrap().state,
        TransferState::Trying
    );
    assert_eq!(
        (
            account(&client, a).await.balance,
            account(&client, a).await.held
        ),
        (300, 200)
    );
    cluster.restart(1).await;
    wait_for_state(&cluster.client(0), ab.key(), TransferState::Committed).await;
    let b_now = account(&cluster.client(1), b).await;
    assert_eq!((b_now.balance, b_now.incoming), (200, 0));
    assert_eq!(account(&cluster.client(1), a).await.held, 0);
}

#[tokio::test]
async fn a_try_that_times_out_while_a_node_is_down_is_aborted_once_it_is_back() {
    let mut cluster = Cluster::start(2, 4, config(200)).await;
    let a = cluster.account_on(0, "acct");
    let b = cluster.account_on(1, "acct");
    open(&cluster.client(0), a).await;
    open(&cluster.client(0), b).await;
    assert!(cluster
        .client(0)
        .execute(deposit(a, 500, "d-1"), false)
        .await
        .unwrap()
        .is_ok());
    cluster.stop(1).await;
    let ab = transfer(a, b, 200, "t-1");
    let client = cluster.client(0);
    let outcome = client.execute(Command::Transfer(ab), false).await.unwrap();
    assert_eq!(outcome, Ok(Reply::Transfer(TransferStatus::Pending)));
    // Long past the Try's timeout, nothing is decided: the home cannot know whether the
    // destination tried before it went down, so it asks it to abort and waits.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        row(&client, ab.key()).await.unwrap().state,
        TransferState::Trying
    );
    cluster.restart(1).await;
    let cancelled = TransferState::Cancelled(Reason::Timeout);
    wait_for_state(&cluster.client(1), ab.key(), cancelled).await;
    let a_now = account(&cluster.client(0), a).await;
    assert_eq!((a_now.balance, a_now.held), (500, 0));
    assert_eq!(account(&cluster.client(0), b).await.balance, 0);
}

#[tokio::test]
async fn a_node_with_another_secret_is_refused() {
    let mut cluster = Cluster::start(2, 4, config(30_000)).await;
    cluster.stop(1).await;
    let address = cluster.map.nodes[&1].peer.clone();
    let listener = TcpListener::bind(&address).await.unwrap();
    let wrong = b"not the cluster secret at all";
    let impostor = cluster
        .start_node(1, listener, &cluster.map.clone(), wrong)
        .await
        .unwrap();
    let b = cluster.account_on(1, "acct");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!cluster.node(0).links()[&1]
        .connected
        .load(Ordering::Relaxed));
    assert!(!impostor.links()[&0].connected.load(Ordering::Relaxed));
    let refused = cluster.client(0).execute(deposit(b, 5, "d-1"), false).await;
    assert_eq!(
        refused,
        Err(Unavailable(cluster.client(0).partition_of(&b)))
    );
    // The handshake itself reports the mismatch to a connecting node.
    let mut stream = TcpStream::connect(cluster.node(0).peer_address())
        .await
        .unwrap();
    let ctx = context_in(&cluster.map, 1, wrong);
    let result = handshake_connector(&mut stream, &ctx, 0).await;
    assert!(matches!(result, Err(NetError::Auth(_))), "{result:?}");
    impostor.shutdown().await.unwrap();
}

/// Runs transfer `t` through node `n`, waiting for its outcome.
async fn transfer_on(cluster: &Cluster, n: u32, t: Transfer) -> crate::driver::CommandResult {
    let client = cluster.client(n);
    client.execute(Command::Transfer(t), true).await.unwrap()
}

fn context(node: NodeId, map_version: u64, secret: &[u8]) -> NodeContext {
    context_in(&two_node_test_map(map_version), node, secret)
}

/// Two nodes, each owning one of two partitions.
fn two_node_test_map(map_version: u64) -> PartitionMap {
    let mut map = PartitionMap {
        version: map_version,
        owners: vec![0, 1],
        nodes: BTreeMap::new(),
    };
    for n in 0..2 {
        let address = NodeAddress {
            http: format!("h{n}"),
            peer: format!("p{n}"),
        };
        map.nodes.insert(n, address);
    }
    map
}

/// The handshake context of `node` holding `map`.
fn context_in(map: &PartitionMap, node: NodeId, secret: &[u8]) -> NodeContext {
    NodeContext::new(node, map, secret, [9; 32], config(1_000).net)
}

#[tokio::test]
async fn a_frame_of_another_map_version_is_refused_and_not_applied() {
    let cluster = Cluster::start(2, 4, config(30_000)).await;
    let a = cluster.account_on(0, "acct");
    open(&cluster.client(0), a).await;
    let mut stream = TcpStream::connect(cluster.node(0).peer_address())
        .await
        .unwrap();
    handshake_connector(&mut stream, &context_in(&cluster.map, 1, SECRET), 0)
        .await
        .unwrap();
    let request = Message::Request {
        id: 1,
        wait: false,
        command: deposit(a, 40, "d-1"),
    };
    let mut buf = Vec::new();
    walletd_core::wire::encode_frame(2, std::slice::from_ref(&request), &mut buf);
    stream.write_all(&buf).await.unwrap();
    let answer = FrameReader::new(&mut stream).next().await.unwrap();
    assert_eq!(
        answer.messages,
        vec![Message::StaleMap {
            expected: 1,
            got: 2
        }]
    );
    assert_eq!(
        account(&cluster.client(0), a).await.balance,
        0,
        "nothing applied"
    );
    // The same request under the current map is applied and answered on the same connection.
    buf.clear();
    walletd_core::wire::encode_frame(1, &[request], &mut buf);
    stream.write_all(&buf).await.unwrap();
    let answer = FrameReader::new(&mut stream).next().await.unwrap();
    let applied = Message::Reply {
        id: 1,
        result: Ok(Reply::Balance { balance: 40 }),
    };
    assert_eq!(answer.messages, vec![applied]);
}

/// A two-node cluster whose node 1 is restarted holding the cluster's map changed by
/// `change`; the two never link.
async fn node_1_restarted_with(change: impl FnOnce(&mut PartitionMap)) -> (Cluster, ClusterNode) {
    let mut cluster = Cluster::start(2, 4, config(30_000)).await;
    cluster.stop(1).await;
    let mut changed = cluster.map.clone();
    change(&mut changed);
    let listener = TcpListener::bind(&changed.nodes[&1].peer).await.unwrap();
    let node = cluster
        .start_node(1, listener, &changed, SECRET)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let linked = |node: &ClusterNode, peer| node.links()[&peer].connected.load(Ordering::Relaxed);
    assert!(!linked(cluster.node(0), 1) && !linked(&node, 0));
    (cluster, node)
}

#[tokio::test]
async fn a_node_holding_another_map_version_never_links() {
    let (cluster, stale) = node_1_restarted_with(|map| map.version = 2).await;
    let b = cluster.account_on(1, "acct");
    let refused = cluster.client(0).execute(deposit(b, 5, "d-1"), false).await;
    assert!(refused.is_err());
    let mut stream = TcpStream::connect(stale.peer_address()).await.unwrap();
    let result = handshake_connector(&mut stream, &context(0, 1, SECRET), 1).await;
    assert!(
        matches!(
            result,
            Err(NetError::StaleMap {
                expected: 1,
                got: 2
            })
        ),
        "{result:?}"
    );
    stale.shutdown().await.unwrap();
}

/// Two maps under one version (an edit that forgot to bump it) are told apart by their
/// digests: the nodes never link, and the handshake names the mismatch.
#[tokio::test]
async fn a_node_holding_another_map_under_the_same_version_never_links() {
    let (cluster, other) = node_1_restarted_with(|map| {
        map.nodes.get_mut(&0).expect("node 0").http = "elsewhere:1".into();
    })
    .await;
    let mut stream = TcpStream::connect(other.peer_address()).await.unwrap();
    let ctx = context_in(&cluster.map, 0, SECRET);
    let result = handshake_connector(&mut stream, &ctx, 1).await;
    assert!(
        matches!(result, Err(NetError::MapMismatch { version: 1, .. })),
        "{result:?}"
    );
    let text = result.unwrap_err().to_string();
    assert!(text.contains("under one version 1"), "{text}");
    other.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_node_setups_are_refused_with_clear_errors() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let map = two_node_test_map(1);
    let none: Vec<(PartitionId, crate::storage::MemStorage)> = Vec::new();
    let weak = start_node_with(Tcp, listener, &map, 0, b"short", none, config(1_000)).await;
    assert!(matches!(weak, Err(NodeError::WeakSecret)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let none: Vec<(PartitionId, crate::storage::MemStorage)> = Vec::new();
    let missing = start_node_with(Tcp, listener, &map, 0, SECRET, none, config(1_000)).await;
    assert!(
        matches!(&missing, Err(NodeError::Storages { owned, .. }) if owned == &vec![0]),
        "storage for partition 0 is missing"
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let none: Vec<(PartitionId, crate::storage::MemStorage)> = Vec::new();
    let unknown = start_node_with(Tcp, listener, &map, 5, SECRET, none, config(1_000)).await;
    assert!(matches!(unknown, Err(NodeError::UnknownNode(5))));
}

#[test]
fn macs_bind_role_nodes_and_nonces() {
    let transcript = Transcript {
        connector: 1,
        acceptor: 0,
        map_version: 3,
        map_digest: 7,
        connector_nonce: [1; NONCE_LEN],
        acceptor_nonce: [2; NONCE_LEN],
    };
    let mac = transcript.mac(SECRET, Role::Connector);
    assert!(transcript.verify(SECRET, Role::Connector, &mac));
    assert!(
        !transcript.verify(SECRET, Role::Acceptor, &mac),
        "a reflected MAC fails"
    );
    assert!(!transcript.verify(b"another secret of some length", Role::Connector, &mac));
    let swapped = Transcript {
        connector: 0,
        acceptor: 1,
        ..transcript
    };
    assert!(!swapped.verify(SECRET, Role::Connector, &mac));
    let other_map = Transcript {
        map_digest: 8,
        ..transcript
    };
    assert!(
        !other_map.verify(SECRET, Role::Connector, &mac),
        "the map is bound"
    );
    let nonces = NonceSource {
        key: [3; 32],
        counter: AtomicU64::new(0),
    };
    assert_ne!(nonces.next(), nonces.next());
}

/// A map of two nodes: node 0 at `peer0`, node 1 at `peer1`; node 0 owns partition 0.
fn two_node_map(peer0: String, peer1: String) -> PartitionMap {
    let mut nodes = BTreeMap::new();
    nodes.insert(
        0,
        NodeAddress {
            http: "h0:1".into(),
            peer: peer0,
        },
    );
    nodes.insert(
        1,
        NodeAddress {
            http: "h1:1".into(),
            peer: peer1,
        },
    );
    PartitionMap {
        version: 1,
        owners: vec![0, 1],
        nodes,
    }
}

#[tokio::test]
async fn a_peer_that_goes_silent_is_declared_dead_and_its_requests_fail() {
    // Node 1 is an impostor that knows the secret, completes the handshake, then reads and
    // never answers: a frozen process, or a network that drops everything one way.
    let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let map = two_node_map(
        listener.local_addr().unwrap().to_string(),
        fake.local_addr().unwrap().to_string(),
    );
    let fake_ctx = context_in(&map, 1, SECRET);
    let frozen = tokio::spawn(async move {
        let (mut stream, _) = fake.accept().await.unwrap();
        handshake_acceptor(&mut stream, &fake_ctx).await.unwrap();
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    });
    let dir = tempfile::tempdir().unwrap();
    let storage = FileStorage::open(dir.path().join("p0"), FileStorageConfig::default()).unwrap();
    let node = start_node_with(
        Tcp,
        listener,
        &map,
        0,
        SECRET,
        vec![(0, storage)],
        config(1_000),
    )
    .await
    .unwrap();
    eventually("link up", || {
        node.links()[&1].connected.load(Ordering::Relaxed)
    })
    .await;
    // The last frame from the frozen peer is its handshake, just before the link came up.
    let link_up = Instant::now();
    let remote = (0..)
        .map(|i| AccountId::new(&format!("acct-{i}")).unwrap())
        .find(|a| map.partition_of(a) == 1)
        .unwrap();
    let answer = node
        .client()
        .execute(deposit(remote, 1, "d-1"), false)
        .await;
    assert_eq!(answer, Err(Unavailable(1)));
    let silent = Duration::from_millis(config(1_000).net.peer_silent_max_ms);
    let waited = link_up.elapsed();
    let polling = Duration::from_millis(50);
    assert!(
        waited + polling >= silent && waited < silent * 3,
        "failed {waited:?} after the last frame"
    );
    assert!(!node.links()[&1].connected.load(Ordering::Relaxed));
    frozen.abort();
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_peer_that_sends_garbage_is_disconnected() {
    let cluster = Cluster::start(2, 4, config(30_000)).await;
    let mut stream = TcpStream::connect(cluster.node(0).peer_address())
        .await
        .unwrap();
    handshake_connector(&mut stream, &context_in(&cluster.map, 1, SECRET), 0)
        .await
        .unwrap();
    stream.write_all(&[0xff; 64]).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    // The node itself is unharmed.
    let a = cluster.account_on(1, "acct");
    open(&cluster.client(0), a).await;
}

/// Transfers a batch starts towards one partition: as many as make a large group, and
/// still one wire message.
const TRANSFERS_OF_ONE_BATCH: usize = 1000;

/// The first `count` frames that carry a message, read by a fake node that has accepted
/// `fake`'s next connection as node 1 of `map`; it echoes every frame, as a node echoes
/// heartbeats.
async fn frames_with_messages(fake: TcpListener, map: PartitionMap, count: usize) -> Vec<Frame> {
    let (mut stream, _) = fake.accept().await.unwrap();
    let ctx = context_in(&map, 1, SECRET);
    handshake_acceptor(&mut stream, &ctx).await.unwrap();
    let mut frames = Vec::new();
    while frames.len() < count {
        let frame = FrameReader::new(&mut stream).next().await.unwrap();
        if !frame.messages.is_empty() {
            frames.push(frame);
        }
        let mut echo = Vec::new();
        FrameWriter::new(&mut echo, map.version).finish();
        stream.write_all(&echo).await.unwrap();
    }
    frames
}

/// Node 0 of a two-node map whose node 1 is a fake that reads the first `count` frames with
/// messages (see [`frames_with_messages`]), once their link is up. Node 0 owns partition 0,
/// node 1 partition 1; phase messages are resent after a minute, so none joins a test's.
async fn node_0_before_a_reader(
    dir: &TempDir,
    count: usize,
) -> (ClusterNode, tokio::task::JoinHandle<Vec<Frame>>) {
    let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let map = two_node_map(
        listener.local_addr().unwrap().to_string(),
        fake.local_addr().unwrap().to_string(),
    );
    let read = tokio::spawn(frames_with_messages(fake, map.clone(), count));
    let storage = FileStorage::open(dir.path().join("p0"), FileStorageConfig::default()).unwrap();
    let mut config = config(30_000);
    config.engine.driver.coordinator.retry_initial_us = 60_000_000;
    config.engine.driver.coordinator.retry_max_us = 60_000_000;
    let node = start_node_with(Tcp, listener, &map, 0, SECRET, vec![(0, storage)], config)
        .await
        .unwrap();
    eventually("link up", || {
        node.links()[&1].connected.load(Ordering::Relaxed)
    })
    .await;
    (node, read)
}

/// What the reader of [`node_0_before_a_reader`] read.
async fn frames_read(read: tokio::task::JoinHandle<Vec<Frame>>) -> Vec<Frame> {
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the frames crossed")
        .unwrap()
}

/// A Try of `t` from partition 0.
fn try_of(t: Transfer) -> PeerMessage {
    PeerMessage::Request {
        from: 0,
        request: PhaseRequest {
            phase: Phase::Try,
            transfer: t,
        },
    }
}

#[tokio::test]
async fn the_tries_of_one_batch_to_a_remote_partition_cross_as_one_message_in_one_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (node, read) = node_0_before_a_reader(&dir, 1).await;
    let client = node.client();
    let on = |partition| {
        (0..)
            .map(|i| AccountId::new(&format!("acct-{i}")).unwrap())
            .find(|a| client.partition_of(a) == partition)
            .unwrap()
    };
    let (a, b) = (on(0), on(1));
    open(&client, a).await;
    let funds = deposit(a, TRANSFERS_OF_ONE_BATCH as u64, "d-1");
    assert!(client.execute(funds, false).await.unwrap().is_ok());
    let transfers: Vec<Transfer> = (0..TRANSFERS_OF_ONE_BATCH)
        .map(|i| transfer(a, b, 1, &format!("t-{i}")))
        .collect();
    let answers = client
        .execute_many(transfers.iter().map(|t| Command::Transfer(*t)), false)
        .await;
    let pending = Ok(Ok(Reply::Transfer(TransferStatus::Pending)));
    assert!(answers.iter().all(|answer| *answer == pending));
    let frames = frames_read(read).await;
    let [Message::Peers(crossed)] = &frames[0].messages[..] else {
        panic!("not one Peers message: {:?}", frames[0].messages);
    };
    let tries: Vec<PeerMessage> = transfers.into_iter().map(try_of).collect();
    assert_eq!(crossed.len(), tries.len());
    assert_eq!(*crossed, tries, "every Try, in order");
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_message_the_bytes_of_a_frame_cannot_hold_opens_the_next_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (node, read) = node_0_before_a_reader(&dir, 2).await;
    let client = node.client();
    // Every id at its length limit: a full group is most of a frame's bytes.
    let id = |prefix: &str, i: usize| format!("{prefix}{i:0>width$}", width = 64 - prefix.len());
    let to = (0..)
        .map(|i| AccountId::new(&id("to-", i)).unwrap())
        .find(|a| client.partition_of(a) == 1)
        .unwrap();
    let from = AccountId::new(&id("from-", 0)).unwrap();
    let group = |first: usize| -> Vec<PeerMessage> {
        (first..first + PEER_MESSAGES_PER_INPUT_MAX)
            .map(|i| try_of(transfer(from, to, 1, &id("t-", i))))
            .collect()
    };
    let (first, second) = (group(0), group(PEER_MESSAGES_PER_INPUT_MAX));
    // Both queued before the forwarder takes either (nothing is awaited between them, and
    // the test's runtime has one thread): they would share a frame if their bytes fit.
    let queue = client.inbox(1);
    queue.try_send(Input::Peers(first.clone())).unwrap();
    queue.try_send(Input::Peers(second.clone())).unwrap();
    let frames = frames_read(read).await;
    assert_eq!(frames[0].messages, vec![Message::Peers(first)]);
    assert_eq!(frames[1].messages, vec![Message::Peers(second)]);
    node.shutdown().await.unwrap();
}

/// A node's client whose partitions are all here, over inboxes the test reads.
fn client_over_inboxes(partitions: u32) -> (Client, Vec<mpsc::Receiver<Input>>) {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..partitions).map(|_| mpsc::channel(16)).unzip();
    let local = vec![true; partitions as usize];
    (Client::with_local(senders.into(), local.into()), receivers)
}

/// A response for the home partition `partition` of a two-partition map.
fn response_for(partition: PartitionId, n: usize) -> PeerMessage {
    let from = (0..)
        .map(|i| AccountId::new(&format!("home-{i}")).unwrap())
        .find(|a| walletd_core::model::partition::partition_of(a, 2) == partition)
        .unwrap();
    PeerMessage::Response(walletd_core::protocol::coordinator::PhaseResponse {
        phase: Phase::Confirm,
        key: TransferKey {
            from,
            transaction_id: txn(&format!("t-{n}")),
        },
        result: walletd_core::ledger::PhaseResult::Confirmed,
    })
}

#[test]
fn a_peers_message_reaches_its_local_partition_as_one_input_and_no_other() {
    // Node 0 owns partition 0 of two; partition 1 is node 1's.
    let ctx = context(0, 1, SECRET);
    let (client, mut inboxes) = client_over_inboxes(2);
    let ours: Vec<PeerMessage> = (0..TRANSFERS_OF_ONE_BATCH)
        .map(|n| response_for(0, n))
        .collect();
    deliver_peers(ours.clone(), &ctx, &client);
    let Ok(Input::Peers(received)) = inboxes[0].try_recv() else {
        panic!("no input of peer messages");
    };
    assert_eq!(received, ours, "all of them, in order, in one input");
    assert!(inboxes[0].try_recv().is_err());
    // Messages for a partition another node owns are dropped, and only they.
    let mixed = vec![response_for(1, 0), response_for(0, 1), response_for(1, 2)];
    deliver_peers(mixed, &ctx, &client);
    let Ok(Input::Peers(received)) = inboxes[0].try_recv() else {
        panic!("no input of peer messages");
    };
    assert_eq!(received, vec![response_for(0, 1)]);
    assert!(
        inboxes[1].try_recv().is_err(),
        "nothing for partition 1 here"
    );
}

#[tokio::test]
async fn the_transfers_of_one_batch_cross_as_few_messages_and_all_commit() {
    let cluster = Cluster::start(2, 2, config(30_000)).await;
    let (a, b) = (cluster.account_on(0, "acct"), cluster.account_on(1, "acct"));
    open(&cluster.client(0), a).await;
    open(&cluster.client(1), b).await;
    let count = TRANSFERS_OF_ONE_BATCH as u64;
    let funds = deposit(a, count, "d-1");
    assert!(cluster
        .client(0)
        .execute(funds, false)
        .await
        .unwrap()
        .is_ok());
    let sent = |from: NodeId, to: NodeId| {
        cluster.node(from).links()[&to]
            .messages_sent
            .load(Ordering::Relaxed)
    };
    let before = [sent(0, 1), sent(1, 0)];
    let transfers = (0..count).map(|i| Command::Transfer(transfer(a, b, 1, &format!("t-{i}"))));
    let answers = cluster.client(0).execute_many(transfers, true).await;
    let committed = Ok(Ok(Reply::Transfer(TransferStatus::Committed)));
    assert!(answers.iter().all(|answer| *answer == committed));
    let client = cluster.client(1);
    eventually_async("every credit confirmed", || async {
        account(&client, b).await.balance == count
    })
    .await;
    // Tries, then Confirms, one way; their answers the other: a message per batch, not per
    // transfer (resends of a slow batch add a few).
    let messages = [sent(0, 1) - before[0], sent(1, 0) - before[1]];
    assert!(
        messages.iter().all(|&m| m < count / 10),
        "{messages:?} messages for {count} transfers"
    );
    let b_now = account(&client, b).await;
    assert_eq!((b_now.balance, b_now.incoming), (count, 0));
}

/// The cluster's map at `version` with an idle node 2 added (it has just joined).
fn with_new_node(map: &PartitionMap, version: u64) -> PartitionMap {
    let mut changed = map.clone();
    changed.version = version;
    let address = NodeAddress {
        http: "127.0.0.1:100".into(),
        peer: "127.0.0.1:101".into(),
    };
    changed.nodes.insert(2, address);
    changed
}

/// Nodes learn a new map one after the other. In between they refuse each other's frames
/// as stale; a request caught there waits for the other node to catch up and is answered,
/// and the node that is behind hears that a newer map exists.
#[tokio::test]
async fn a_request_caught_between_two_maps_waits_for_both_and_is_answered() {
    let cluster = Cluster::start(2, 4, config(30_000)).await;
    let b = cluster.account_on(1, "acct");
    open(&cluster.client(0), b).await;
    let newer = with_new_node(&cluster.map, 2);
    let applied = cluster.node(0).update_map(newer.clone()).unwrap();
    assert_eq!(applied, MapChange::Applied { from: 1, to: 2 });
    let client = cluster.client(0);
    let caught = tokio::spawn(async move { client.execute(deposit(b, 5, "d-1"), false).await });
    let mut hint = cluster.node(1).newer_map_seen();
    let heard = async {
        while *hint.borrow_and_update() != 2 {
            hint.changed().await.expect("the node runs");
        }
    };
    tokio::time::timeout(Duration::from_secs(5), heard)
        .await
        .expect("node 1 hears of map version 2");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !caught.is_finished(),
        "the request waits while the maps differ"
    );
    cluster.node(1).update_map(newer.clone()).unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(5), caught)
        .await
        .expect("answered once both nodes run version 2")
        .unwrap();
    assert_eq!(answered.unwrap(), Ok(Reply::Balance { balance: 5 }));
    cluster.wait_linked().await;
    let again = cluster.client(1).execute(deposit(b, 5, "d-1"), false).await;
    assert_eq!(
        again.unwrap(),
        Ok(Reply::Balance { balance: 5 }),
        "applied once"
    );
    assert_eq!(cluster.node(0).map(), newer);
}

#[tokio::test]
async fn a_map_that_moves_partitions_goes_back_or_moves_the_node_is_refused() {
    let cluster = Cluster::start(2, 4, config(30_000)).await;
    let node = cluster.node(0);
    let mut moved = with_new_node(&cluster.map, 2);
    moved.owners[1] = 0;
    moved.owners[3] = 2;
    let refused = node.update_map(moved).unwrap_err();
    assert_eq!(
        refused,
        MapUpdateError::OwnersChanged {
            partitions: vec![1, 3],
            current: 1,
            offered: 2
        }
    );
    assert!(refused.to_string().contains("needs replicated partitions"));
    let mut elsewhere = with_new_node(&cluster.map, 2);
    elsewhere.nodes.get_mut(&0).unwrap().peer = "127.0.0.1:102".into();
    assert!(matches!(
        node.update_map(elsewhere),
        Err(MapUpdateError::OwnPeerAddress { .. })
    ));
    let mut fewer = with_new_node(&cluster.map, 2);
    fewer.owners.pop();
    assert!(matches!(
        node.update_map(fewer),
        Err(MapUpdateError::PartitionCount {
            current: 4,
            offered: 3
        })
    ));
    assert_eq!(
        node.update_map(cluster.map.clone()),
        Ok(MapChange::Unchanged)
    );
    let same_version = with_new_node(&cluster.map, 1);
    assert_eq!(
        node.update_map(same_version),
        Err(MapUpdateError::SameVersionDiffers { version: 1 })
    );
    node.update_map(with_new_node(&cluster.map, 3)).unwrap();
    assert_eq!(
        node.update_map(with_new_node(&cluster.map, 2)),
        Err(MapUpdateError::Older {
            current: 3,
            offered: 2
        })
    );
    assert_eq!(node.map().version, 3, "refusals leave the map in force");
}
