//! A node of a replicated cluster: every partition is a Raft group with replicas on
//! `replicas` nodes of the map, and this node runs its replica of each partition it hosts
//! ([`ReplicaDriver`]).
//!
//! ```text
//!   Client ─► inbox[p] ─► replica p ── leads? ──► machine
//!                │           │ └──── another leads ──► queue of its node ─► Forwarder ══► its replica p
//!                │           └─ Raft messages ──────► queue of their node ═════════════► its replica p
//!                └─ (no replica here) relay ─► queue of a node with one ═══════════════► its replica p
//! ```
//!
//! **Placement** ([`Placement`]): by default ([`Placement::derived`]) partition `p`'s
//! replicas are on its owner in the map and the nodes after it in id order, wrapping
//! around, as many as `replicas`; with `replicas` equal to the node count every node holds
//! every partition. Copies of one partition are always on distinct nodes, and they move
//! as the placement changes (see [`start_replicated_node`]). A request for a partition this node hosts goes
//! through its own replica, which hands it to the leader ([`GroupLinks::forward`]); one
//! for a partition it does not host goes to a node that does, the same one while its link
//! is up. The peer links are the unreplicated cluster's ([`super::forwarder`],
//! [`PeerListener`]); Raft and membership messages travel in them, into the replica's
//! inbox like everything else.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::watch;
use tokio::task::JoinHandle;

use walletd_core::model::partition::{NodeId, PartitionId, PartitionMap};
use walletd_core::model::placement::Placement;
use walletd_core::replica::membership::{self, MembershipMessage};
use walletd_core::replica::{CatchUpMessage, LogLimits, RaftMessage, ReplicaConfig, ReplicaId};
use walletd_core::wire::{raft_encoded_len, RAFT_ENCODED_LEN_MAX, RAFT_MESSAGES_MAX};

use super::*;
use crate::driver::DriverStats;
use crate::replica::{
    GroupLinks, ReplicaDriver, ReplicaDriverError, ReplicaStatus, ReplicaTiming, ReplicaWiring,
    Stopped,
};
use crate::storage::raft_store::RaftStore;
use crate::transport::{LocalTransport, Transport};
use tasks::Tasks;

/// A node's first replica id in every group (the voters of a new group); later
/// incarnations of its replicas have other ids ([`membership`]).
pub fn replica_id(node: NodeId) -> ReplicaId {
    membership::initial_id(node)
}

/// The first voters of every group of `map`: a replica on each of its nodes. A new
/// replica's Raft store starts from `DurableRaft::new(&voters(map))`.
pub fn voters(map: &PartitionMap) -> Vec<ReplicaId> {
    map.nodes.keys().map(|node| replica_id(*node)).collect()
}

/// The node a replica id stands for, whatever its incarnation.
pub fn replica_node(replica: ReplicaId) -> Option<NodeId> {
    membership::node_of(replica)
}

/// What a replicated node needs besides its map, id, secret and storages.
#[derive(Debug, Clone, Copy)]
pub struct ReplicatedConfig {
    pub node: NodeConfig,
    pub timing: ReplicaTiming,
    /// Raft ticks before an election (see [`ReplicaConfig::election_ticks`]).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Seeds the election timeouts of this node's replicas (each partition its own).
    pub election_seed: u64,
    /// Copies of each partition; `None`: one on every node of the map.
    pub replicas: Option<u32>,
    /// When replicas compact their Raft logs.
    pub log: LogLimits,
}

impl ReplicatedConfig {
    /// The defaults of a production node: 10 ms ticks, elections after 300 to 600 ms
    /// without a leader, heartbeats every 50 ms.
    pub fn new(node: NodeConfig, election_seed: u64) -> ReplicatedConfig {
        ReplicatedConfig {
            node,
            timing: ReplicaTiming::default(),
            election_ticks: 30,
            heartbeat_ticks: 5,
            election_seed,
            replicas: None,
            log: LogLimits::default(),
        }
    }
}

/// The forwarder queue and link counters of every other node of the map; grows as nodes
/// join it.
type Peers = Arc<RwLock<BTreeMap<NodeId, (mpsc::Sender<Input>, Arc<LinkStats>)>>>;

/// Carries a replica's Raft messages and forwarded inputs to other nodes through their
/// forwarders' queues.
struct NodeLinks {
    node: NodeId,
    peers: Peers,
}

impl NodeLinks {
    /// Hands `input` to node `node`'s forwarder, or gives it back (no such node, or its
    /// queue is full or closed).
    fn send(&self, node: NodeId, input: Input) -> Result<(), Input> {
        let peers = self.peers.read().expect("not poisoned");
        let Some((queue, _)) = peers.get(&node) else {
            return Err(input);
        };
        queue.try_send(input).map_err(|error| match error {
            mpsc::error::TrySendError::Full(input) | mpsc::error::TrySendError::Closed(input) => {
                input
            }
        })
    }
}

impl GroupLinks for NodeLinks {
    fn send_raft(&self, partition: PartitionId, messages: Vec<RaftMessage>) {
        let mut by_node: BTreeMap<NodeId, Vec<RaftMessage>> = BTreeMap::new();
        for message in messages {
            match replica_node(message.to) {
                Some(node) if node != self.node => by_node.entry(node).or_default().push(message),
                _ => tracing::warn!(
                    partition,
                    to = message.to,
                    "raft message to no node dropped"
                ),
            }
        }
        for (node, messages) in by_node {
            for group in wire_groups(messages) {
                let input = Input::Raft {
                    partition,
                    messages: group,
                };
                // A full queue drops them: Raft resends.
                let _ = self.send(node, input);
            }
        }
    }

    fn send_membership(&self, node: NodeId, partition: PartitionId, message: MembershipMessage) {
        let input = Input::Membership {
            partition,
            from: self.node,
            message,
        };
        // A full queue drops it: asks and checks are repeated until answered.
        let _ = self.send(node, input);
    }

    fn send_catch_up(&self, node: NodeId, partition: PartitionId, message: CatchUpMessage) {
        let input = Input::CatchUp {
            partition,
            from: self.node,
            message,
        };
        // A full queue drops it: a fetch is asked again.
        let _ = self.send(node, input);
    }

    fn forward(&self, to: ReplicaId, input: Input) -> Result<(), Input> {
        match replica_node(to) {
            Some(node) => self.send(node, input),
            None => Err(input),
        }
    }
}

/// `messages` in groups that each fit one `Raft` wire message, in order. A message too long
/// for any is dropped with an error: the replica bounds its entries so that none is.
fn wire_groups(messages: Vec<RaftMessage>) -> Vec<Vec<RaftMessage>> {
    let mut groups: Vec<Vec<RaftMessage>> = Vec::new();
    for message in messages {
        if raft_encoded_len(std::slice::from_ref(&message)) > RAFT_ENCODED_LEN_MAX {
            tracing::error!(
                to = message.to,
                "raft message longer than a wire message dropped"
            );
            continue;
        }
        let fits = groups.last().is_some_and(|group| {
            group.len() < RAFT_MESSAGES_MAX
                && raft_encoded_len(group) + raft_encoded_len(std::slice::from_ref(&message))
                    <= RAFT_ENCODED_LEN_MAX
        });
        match groups.last_mut() {
            Some(group) if fits => group.push(message),
            _ => groups.push(vec![message]),
        }
    }
    groups
}

/// Where a node's replicas keep their copies: opened when a replica starts here, deleted
/// when its group has removed it after a move.
pub trait ReplicaStores: Send + Sync + 'static {
    type Log: Storage;
    type Raft: RaftStore;

    /// The partitions this node holds a copy of (files of a replica): each gets a replica
    /// at start, named by the placement or not, so that one the placement moved away while
    /// the node was down finds out whether its group removed it, and is deleted then.
    fn held(&self) -> Vec<PartitionId>;

    /// The storages of this node's replica of `partition`: its files where it has them,
    /// new ones otherwise (a new Raft store starts from the group's first voters, the
    /// first replicas of `founders`).
    fn open(
        &self,
        partition: PartitionId,
        founders: &[NodeId],
    ) -> impl Future<Output = io::Result<(Self::Log, Self::Raft)>> + Send;

    /// Deletes the copy of a replica that its group removed (it has stopped; these are its
    /// storages).
    fn remove(
        &self,
        partition: PartitionId,
        log: Self::Log,
        raft: Self::Raft,
    ) -> impl Future<Output = io::Result<()>> + Send;
}

/// Storages opened beforehand, one per partition a node hosts, for a node whose copies
/// never move (tests, benchmarks and the simulator): opening a partition takes its
/// storages, removing one drops them.
pub struct GivenStores<S, R> {
    given: std::sync::Mutex<BTreeMap<PartitionId, (S, R)>>,
}

impl<S, R> GivenStores<S, R> {
    pub fn new(given: impl IntoIterator<Item = (PartitionId, (S, R))>) -> GivenStores<S, R> {
        GivenStores {
            given: std::sync::Mutex::new(given.into_iter().collect()),
        }
    }
}

impl<S: Storage, R: RaftStore> ReplicaStores for GivenStores<S, R> {
    type Log = S;
    type Raft = R;

    fn held(&self) -> Vec<PartitionId> {
        self.given
            .lock()
            .expect("not poisoned")
            .keys()
            .copied()
            .collect()
    }

    async fn open(&self, partition: PartitionId, _founders: &[NodeId]) -> io::Result<(S, R)> {
        let taken = self.given.lock().expect("not poisoned").remove(&partition);
        taken.ok_or_else(|| {
            io::Error::other(format!("no storage was given for partition {partition}"))
        })
    }

    async fn remove(&self, _partition: PartitionId, log: S, raft: R) -> io::Result<()> {
        drop((log, raft));
        Ok(())
    }
}

/// A running node of a replicated cluster.
pub struct ReplicatedNode {
    node: NodeId,
    ctx: Arc<NodeContext>,
    client: Client,
    listener: PeerListener,
    peers: Peers,
    /// The node's replicas and relays, and what starts and stops them as copies move.
    hosting: JoinHandle<Result<(), ReplicaDriverError>>,
    stop_hosting: oneshot::Sender<()>,
    statuses: Arc<[Arc<ReplicaStatus>]>,
    stats: Arc<[Arc<DriverStats>]>,
}

impl ReplicatedNode {
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Routes to every partition: through this node's replica where it has one, to a node
    /// that has one otherwise.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn peer_address(&self) -> SocketAddr {
        self.listener.address()
    }

    /// Whether a replica of `partition` runs on this node now.
    pub fn hosts(&self, partition: PartitionId) -> bool {
        self.ctx.owns(partition)
    }

    /// The role of this node's replica of each partition it hosts now.
    pub fn statuses(&self) -> Vec<(PartitionId, Arc<ReplicaStatus>)> {
        self.view().statuses()
    }

    /// The role of this node's replica of every partition, by partition: meaningful where
    /// [`ReplicatedNode::hosts`] says one runs (a status outlives its replica, and serves
    /// the next replica of its partition on this node).
    pub fn all_statuses(&self) -> Arc<[Arc<ReplicaStatus>]> {
        Arc::clone(&self.statuses)
    }

    /// The counters of this node's replica of each partition it hosts now.
    pub fn stats(&self) -> Vec<(PartitionId, Arc<DriverStats>)> {
        (0..self.ctx.partitions)
            .filter(|p| self.hosts(*p))
            .map(|p| (p, Arc::clone(&self.stats[p as usize])))
            .collect()
    }

    /// The link to every other node of the map.
    pub fn links(&self) -> BTreeMap<NodeId, Arc<LinkStats>> {
        self.view().links()
    }

    /// What the node runs now, for its API: cheap to clone, it keeps no replica alive.
    pub fn view(&self) -> ReplicatedView {
        ReplicatedView {
            ctx: Arc::clone(&self.ctx),
            peers: Arc::clone(&self.peers),
            statuses: Arc::clone(&self.statuses),
            stats: Arc::clone(&self.stats),
        }
    }

    /// A handle on the node's map and placement for whoever keeps them fresh
    /// ([`MapHandle::update_placed`]).
    pub fn map_handle(&self) -> MapHandle {
        MapHandle {
            ctx: Arc::clone(&self.ctx),
        }
    }

    /// Stops accepting peers, stops every replica cleanly (its log synced), then the links.
    pub async fn shutdown(self) -> Result<(), ReplicaDriverError> {
        drop(self.listener);
        let _ = self.stop_hosting.send(());
        match self.hosting.await {
            Ok(result) => result,
            Err(join) => {
                tracing::error!(%join, "the replicas' task failed");
                Ok(())
            }
        }
    }

    /// Stops at once, as a crash would (tests): every task is aborted where it is.
    pub fn abort(self) {
        self.hosting.abort();
    }
}

/// What a replicated node runs now: its map and placement, the replicas it hosts and their
/// roles, its links.
#[derive(Clone)]
pub struct ReplicatedView {
    ctx: Arc<NodeContext>,
    peers: Peers,
    statuses: Arc<[Arc<ReplicaStatus>]>,
    stats: Arc<[Arc<DriverStats>]>,
}

impl ReplicatedView {
    pub fn node(&self) -> NodeId {
        self.ctx.node
    }

    /// The map and placement in force.
    pub fn map(&self) -> (PartitionMap, Placement) {
        let handle = MapHandle {
            ctx: Arc::clone(&self.ctx),
        };
        let placement = handle.placement().expect("a replicated node");
        (handle.map(), placement)
    }

    /// This node's replica of `partition`, if one runs here now.
    pub fn status(&self, partition: PartitionId) -> Option<Arc<ReplicaStatus>> {
        (self.ctx.owns(partition)).then(|| Arc::clone(&self.statuses[partition as usize]))
    }

    /// The role of this node's replica of each partition it hosts now.
    pub fn statuses(&self) -> Vec<(PartitionId, Arc<ReplicaStatus>)> {
        (0..self.ctx.partitions)
            .filter_map(|p| Some((p, self.status(p)?)))
            .collect()
    }

    /// The counters of this node's replica of `partition`, if one runs here now.
    pub fn stats(&self, partition: PartitionId) -> Option<Arc<DriverStats>> {
        (self.ctx.owns(partition)).then(|| Arc::clone(&self.stats[partition as usize]))
    }

    /// The link to every other node of the map.
    pub fn links(&self) -> BTreeMap<NodeId, Arc<LinkStats>> {
        let peers = self.peers.read().expect("not poisoned");
        (peers.iter())
            .map(|(node, (_, stats))| (*node, Arc::clone(stats)))
            .collect()
    }
}

/// Starts node `node` of `map` as a replicated node on `listener`, with each partition's
/// copies where `replicas` copies go by default ([`Placement::derived`]), from `storages`
/// (its partition log and its Raft store, one per hosted partition in ascending order).
/// See [`start_replicated_node`].
pub async fn start_replicated_node_with<S: Storage, R: RaftStore, N: PeerIo>(
    io: N,
    listener: TcpListener,
    map: &PartitionMap,
    node: NodeId,
    secret: &[u8],
    storages: Vec<(S, R)>,
    config: ReplicatedConfig,
) -> Result<ReplicatedNode, NodeError> {
    map.validate()?;
    if !map.nodes.contains_key(&node) {
        return Err(NodeError::UnknownNode(node));
    }
    let replicas = config.replicas.unwrap_or(map.nodes.len() as u32);
    if !(1..=map.nodes.len() as u32).contains(&replicas) {
        return Err(NodeError::Replicas {
            replicas,
            nodes: map.nodes.len(),
        });
    }
    let placement = Placement::derived(map, replicas);
    let hosted = placement.hosted(node);
    if storages.len() != hosted.len() {
        return Err(NodeError::Storages {
            node,
            owned: hosted,
            given: (0..storages.len() as PartitionId).collect(),
        });
    }
    let stores = GivenStores::new(hosted.into_iter().zip(storages));
    start_replicated_node(io, listener, map, placement, node, secret, stores, config).await
}

/// Starts node `node` of `map` as a replicated node on `listener`: a replica of every
/// partition whose group in `placement` names it (its storages from `stores`), links to
/// every other node, a relay for each partition it does not host, and the peer listener.
/// As the placement changes ([`MapHandle::update_placed`]) it starts the replicas it gains
/// and deletes the copies its groups remove.
#[allow(clippy::too_many_arguments)]
pub async fn start_replicated_node<T: ReplicaStores, N: PeerIo>(
    io: N,
    listener: TcpListener,
    map: &PartitionMap,
    placement: Placement,
    node: NodeId,
    secret: &[u8],
    stores: T,
    config: ReplicatedConfig,
) -> Result<ReplicatedNode, NodeError> {
    map.validate()?;
    if !map.nodes.contains_key(&node) {
        return Err(NodeError::UnknownNode(node));
    }
    if secret.len() < SECRET_LEN_MIN {
        return Err(NodeError::WeakSecret);
    }
    placement
        .check(map)
        .map_err(|error| NodeError::Placement(error.to_string()))?;
    let partitions = map.partitions();
    config.node.net.check();
    let mut ctx = NodeContext::new(node, map, secret, config.node.nonce_seed, config.node.net);
    ctx.replicated = Some(Replicated {
        hosted: (0..partitions).map(|_| AtomicBool::new(false)).collect(),
        placement: watch::Sender::new(Arc::new(placement.clone())),
    });
    let ctx = Arc::new(ctx);
    let io = Arc::new(io);
    let Links {
        queues,
        stats: links,
        forwarders,
    } = spawn_forwarders(&ctx, &io);
    let peers: Peers = Arc::new(RwLock::new(
        (queues.into_iter())
            .map(|(node, queue)| (node, (queue, Arc::clone(&links[&node]))))
            .collect(),
    ));
    let group_links: Arc<dyn GroupLinks> = Arc::new(NodeLinks {
        node,
        peers: Arc::clone(&peers),
    });
    let capacity = config.node.engine.inbox_capacity;
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..partitions).map(|_| mpsc::channel(capacity)).unzip();
    let inboxes: Arc<[mpsc::Sender<Input>]> = senders.into();
    let transport: Arc<dyn Transport> = Arc::new(LocalTransport::new(Arc::clone(&inboxes)));
    let statuses: Arc<[Arc<ReplicaStatus>]> = (0..partitions).map(|_| Arc::default()).collect();
    let stats: Arc<[Arc<DriverStats>]> = (0..partitions).map(|_| Arc::default()).collect();
    let ctx_replicated = ctx.replicated.as_ref().expect("set above");
    let mut hosting = Hosting {
        node,
        ctx: Arc::clone(&ctx),
        io,
        stores,
        peers: Arc::clone(&peers),
        forwarders,
        group_links,
        transport,
        inboxes: Arc::clone(&inboxes),
        statuses: Arc::clone(&statuses),
        stats: Arc::clone(&stats),
        config,
        slots: (0..partitions).map(|_| Slot::Failed).collect(),
        tasks: Tasks::new(),
        placement: ctx_replicated.placement.subscribe(),
        map: ctx.map.subscribe(),
        failure: None,
    };
    let held = hosting.stores.held();
    for (partition, inbox) in (0..partitions).zip(receivers) {
        if placement.group(partition).contains(&node) || held.contains(&partition) {
            hosting
                .start_replica(partition, inbox)
                .await
                .map_err(|error| match error {
                    StartError::Open(source) => {
                        NodeError::Replica(ReplicaDriverError::Partition(DriverError::Io {
                            partition,
                            source,
                        }))
                    }
                    StartError::Driver(error) => NodeError::Replica(error),
                })?;
        } else {
            hosting.start_relay(partition, inbox);
        }
    }
    let client = Client::new(Arc::clone(&inboxes));
    let listener = PeerListener::start(
        listener,
        Arc::clone(&ctx),
        client.clone(),
        Arc::clone(&hosting.io),
    )
    .map_err(|source| NodeError::Bind {
        address: map.nodes[&node].peer.clone(),
        source,
    })?;
    let (stop_hosting, stop) = oneshot::channel();
    Ok(ReplicatedNode {
        node,
        ctx,
        client,
        listener,
        peers,
        hosting: tokio::spawn(hosting.run(stop)),
        stop_hosting,
        statuses,
        stats,
    })
}

/// What runs for one partition on a node.
enum Slot {
    /// This node's replica (a task of [`Hosting::tasks`]).
    Replica,
    /// The relay of a partition with no replica here.
    Relay(RelayTask),
    /// The replica failed, or did not start: inputs for the partition find its inbox
    /// closed, and their clients see the partition unavailable.
    Failed,
}

/// A relay's task, with what stops it and hands its inbox back. Aborted when dropped.
struct RelayTask {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<mpsc::Receiver<Input>>>,
}

impl RelayTask {
    /// Stops the relay and takes its inbox back.
    async fn stop(mut self) -> Option<mpsc::Receiver<Input>> {
        let _ = self.stop.take()?.send(());
        self.task.take()?.await.ok()
    }
}

impl Drop for RelayTask {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Why a replica did not start.
enum StartError {
    Open(io::Error),
    Driver(ReplicaDriverError),
}

/// How a replica task ended, with its partition.
type Ended<T> = (
    PartitionId,
    Result<Stopped<<T as ReplicaStores>::Log, <T as ReplicaStores>::Raft>, ReplicaDriverError>,
);

/// A node's replicas and relays: starts a replica where the placement gains this node,
/// deletes a copy its group removed and relays its partition instead, links to nodes that
/// join the map.
struct Hosting<T: ReplicaStores, N: PeerIo> {
    node: NodeId,
    ctx: Arc<NodeContext>,
    io: Arc<N>,
    stores: T,
    peers: Peers,
    forwarders: Vec<AbortOnDrop>,
    group_links: Arc<dyn GroupLinks>,
    transport: Arc<dyn Transport>,
    inboxes: Arc<[mpsc::Sender<Input>]>,
    statuses: Arc<[Arc<ReplicaStatus>]>,
    stats: Arc<[Arc<DriverStats>]>,
    config: ReplicatedConfig,
    slots: Vec<Slot>,
    tasks: Tasks<Ended<T>>,
    placement: watch::Receiver<Arc<Placement>>,
    map: watch::Receiver<Arc<CurrentMap>>,
    /// The first replica that failed, reported at shutdown.
    failure: Option<ReplicaDriverError>,
}

impl<T: ReplicaStores, N: PeerIo> Hosting<T, N> {
    fn set_hosted(&self, partition: PartitionId, hosted: bool) {
        let replicated = self.ctx.replicated.as_ref().expect("a replicated node");
        replicated.hosted[partition as usize].store(hosted, Ordering::Release);
    }

    /// Opens `partition`'s storages and starts its replica on `inbox`.
    async fn start_replica(
        &mut self,
        partition: PartitionId,
        inbox: mpsc::Receiver<Input>,
    ) -> Result<(), StartError> {
        let placement = self.placement.borrow().clone();
        let (storage, raft_store) = (self.stores)
            .open(partition, placement.founders(partition))
            .await
            .map_err(StartError::Open)?;
        let config = &self.config;
        let replica_config = ReplicaConfig {
            // The driver takes the id from the Raft store (see `ReplicaDriver::start`).
            id: replica_id(self.node),
            election_ticks: config.election_ticks,
            heartbeat_ticks: config.heartbeat_ticks,
            seed: config.election_seed ^ (u64::from(partition) << 32),
            machine: config.node.engine.driver,
            log: config.log,
        };
        let wiring = ReplicaWiring {
            node: self.node,
            placement: self.placement.clone(),
            peers: Arc::clone(&self.transport),
            links: Arc::clone(&self.group_links),
            inbox,
            status: Arc::clone(&self.statuses[partition as usize]),
            stats: Arc::clone(&self.stats[partition as usize]),
        };
        let driver = ReplicaDriver::start(
            partition,
            self.ctx.partitions,
            storage,
            raft_store,
            replica_config,
            config.timing,
            wiring,
        )
        .await
        .map_err(StartError::Driver)?;
        self.tasks
            .spawn(async move { (partition, driver.run().await) });
        self.slots[partition as usize] = Slot::Replica;
        self.set_hosted(partition, true);
        Ok(())
    }

    /// Relays `partition`'s inputs, arriving on `inbox`, to a node that hosts it.
    fn start_relay(&mut self, partition: PartitionId, inbox: mpsc::Receiver<Input>) {
        self.set_hosted(partition, false);
        let (stop, stopped) = oneshot::channel();
        let relay = Relay {
            node: self.node,
            partition,
            placement: self.placement.clone(),
            peers: Arc::clone(&self.peers),
            current: None,
        };
        let task = tokio::spawn(relay.run(inbox, stopped));
        self.slots[partition as usize] = Slot::Relay(RelayTask {
            stop: Some(stop),
            task: Some(task),
        });
    }

    /// Runs until `stop` (or until its sender is gone), then stops every replica cleanly.
    async fn run(mut self, mut stop: oneshot::Receiver<()>) -> Result<(), ReplicaDriverError> {
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                Some(ended) = self.tasks.join_next(), if !self.tasks.is_empty() => match ended {
                    Ok((partition, result)) => self.replica_ended(partition, result).await,
                    Err(join) => tracing::error!(node = self.node, %join, "a replica task failed"),
                },
                changed = self.placement.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.take_placement().await;
                }
                changed = self.map.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.link_new_nodes();
                }
            }
        }
        self.shutdown().await
    }

    /// Starts a replica of every partition the placement now gives this node and that
    /// has none here. A replica whose node the placement no longer names goes on until its
    /// group removes it (see [`crate::replica`], "A moved replica").
    async fn take_placement(&mut self) {
        let placement = self.placement.borrow_and_update().clone();
        for partition in 0..self.ctx.partitions {
            let slot = &mut self.slots[partition as usize];
            if !placement.group(partition).contains(&self.node) || !matches!(slot, Slot::Relay(_)) {
                continue;
            }
            let Slot::Relay(relay) = std::mem::replace(slot, Slot::Failed) else {
                unreachable!("matched above");
            };
            let Some(inbox) = relay.stop().await else {
                tracing::error!(partition, "the partition's relay failed; no replica starts");
                continue;
            };
            tracing::info!(
                node = self.node,
                partition,
                "the placement adds a copy here: starting its replica"
            );
            self.start_or_fail(partition, inbox).await;
        }
    }

    async fn start_or_fail(&mut self, partition: PartitionId, inbox: mpsc::Receiver<Input>) {
        match self.start_replica(partition, inbox).await {
            Ok(()) => {}
            Err(StartError::Open(error)) => {
                tracing::error!(node = self.node, partition, %error, "the replica's storages do not open");
            }
            Err(StartError::Driver(error)) => {
                tracing::error!(node = self.node, partition, %error, "the replica does not start");
            }
        }
    }

    /// A replica stopped: removed by its group (its copy is deleted and the partition
    /// relayed, or a new replica started if the placement names this node again), or
    /// failed.
    async fn replica_ended(
        &mut self,
        partition: PartitionId,
        result: Result<Stopped<T::Log, T::Raft>, ReplicaDriverError>,
    ) {
        self.set_hosted(partition, false);
        self.slots[partition as usize] = Slot::Failed;
        let (storage, raft_store, inbox) = match result {
            Ok(Stopped::Removed {
                storage,
                raft_store,
                inbox,
            }) => (storage, raft_store, inbox),
            Ok(Stopped::Shutdown { .. }) => {
                tracing::error!(node = self.node, partition, "a replica stopped unasked");
                return;
            }
            Err(error) => {
                tracing::error!(node = self.node, partition, %error, "replica failed");
                self.failure.get_or_insert(error);
                return;
            }
        };
        match self.stores.remove(partition, storage, raft_store).await {
            Ok(()) => tracing::info!(
                node = self.node,
                partition,
                "the copy its group removed is deleted"
            ),
            Err(error) => {
                tracing::error!(node = self.node, partition, %error, "the removed copy is not deleted")
            }
        }
        let named = self
            .placement
            .borrow()
            .group(partition)
            .contains(&self.node);
        match named {
            true => self.start_or_fail(partition, inbox).await,
            false => self.start_relay(partition, inbox),
        }
    }

    /// Starts a link to every node that joined the map.
    fn link_new_nodes(&mut self) {
        let map = self.map.borrow_and_update().clone();
        let mut peers = self.peers.write().expect("not poisoned");
        for &remote in map.map.nodes.keys() {
            if remote == self.node || peers.contains_key(&remote) {
                continue;
            }
            let (queue, stats, task) = spawn_forwarder(&self.ctx, &self.io, remote);
            peers.insert(remote, (queue, stats));
            self.forwarders.push(task);
            tracing::info!(
                node = self.node,
                remote,
                "linking to a node that joined the map"
            );
        }
    }

    /// Stops every replica cleanly, then the relays and links.
    ///
    /// A replica is asked to stop through its inbox, and this waits for its task to end, not
    /// for an answer: a replica its group removed may have ended just before (its end not
    /// taken yet), and its task's output then holds its inbox, which nothing reads. Waiting
    /// for that replica's answer, or for room in its full inbox, never ended: a node drained
    /// and left out of the map a moment later did not stop (4-node simulation, seeds 73 and
    /// 90). So each ask races the ends of the tasks.
    async fn shutdown(mut self) -> Result<(), ReplicaDriverError> {
        let mut ended_early = std::collections::BTreeSet::new();
        for partition in 0..self.slots.len() {
            if !matches!(self.slots[partition], Slot::Replica) {
                continue;
            }
            let inbox = self.inboxes[partition].clone();
            while !ended_early.contains(&partition) {
                // The answer is not awaited (see above): its receiver goes at once.
                let (ack, _) = oneshot::channel();
                tokio::select! {
                    biased;
                    _ = inbox.send(Input::Shutdown(ack)) => break,
                    Some(ended) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                        if let Some(ended) = self.take_end(ended) {
                            ended_early.insert(ended as usize);
                        }
                    }
                }
            }
        }
        while let Some(ended) = self.tasks.join_next().await {
            self.take_end(ended);
        }
        drop(self.slots);
        drop(self.forwarders);
        self.failure.map_or(Ok(()), Err)
    }

    /// Keeps the failure of a replica task that ended while the node stops; returns its
    /// partition, if the task ended at all.
    fn take_end(&mut self, ended: Result<Ended<T>, tokio::task::JoinError>) -> Option<PartitionId> {
        match ended {
            Ok((partition, Err(error))) => {
                self.failure.get_or_insert(error);
                Some(partition)
            }
            Ok((partition, Ok(_))) => Some(partition),
            Err(join) => {
                tracing::error!(%join, "replica task failed");
                None
            }
        }
    }
}

/// Carries the inputs of a partition with no replica on this node to a node of its group:
/// the same node while its link is up and the group names it, the next one of the group
/// whose link is up otherwise. Its replica hands them to the leader. An input that finds no
/// way is dropped: its client sees the partition unavailable and retries.
struct Relay {
    node: NodeId,
    partition: PartitionId,
    placement: watch::Receiver<Arc<Placement>>,
    peers: Peers,
    current: Option<NodeId>,
}

impl Relay {
    /// Relays until `stop`, then hands the inbox back.
    async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Input>,
        mut stop: oneshot::Receiver<()>,
    ) -> mpsc::Receiver<Input> {
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => return inputs,
                input = inputs.recv() => match input {
                    Some(input) => self.relay(input),
                    None => return inputs,
                },
            }
        }
    }

    fn relay(&mut self, input: Input) {
        let group: Vec<NodeId> = (self.placement.borrow().group(self.partition).iter())
            .copied()
            .filter(|n| *n != self.node)
            .collect();
        let peers = self.peers.read().expect("not poisoned");
        let up = |node: &NodeId| {
            (peers.get(node)).is_some_and(|(_, link)| link.connected.load(Ordering::Acquire))
        };
        let keep = self.current.filter(|n| group.contains(n) && up(n));
        let Some(to) = keep
            .or_else(|| group.iter().copied().find(up))
            .or(group.first().copied())
        else {
            return;
        };
        self.current = Some(to);
        if let Some((queue, _)) = peers.get(&to) {
            let _ = queue.try_send(input);
        }
    }
}

/// Tasks whose ends are awaited in any order, aborted when dropped: the few calls
/// [`Hosting`] needs of tokio's `JoinSet`, which madsim's tokio does not have, over join
/// handles, so that production and the simulator run the same code.
mod tasks {
    use std::future::{poll_fn, Future};
    use std::pin::Pin;
    use std::task::Poll;

    use tokio::task::{JoinError, JoinHandle};

    pub struct Tasks<T> {
        handles: Vec<JoinHandle<T>>,
    }

    impl<T: Send + 'static> Tasks<T> {
        pub fn new() -> Tasks<T> {
            Tasks {
                handles: Vec::new(),
            }
        }

        pub fn spawn(&mut self, task: impl Future<Output = T> + Send + 'static) {
            self.handles.push(tokio::spawn(task));
        }

        pub fn is_empty(&self) -> bool {
            self.handles.is_empty()
        }

        /// The first task found finished, in spawn order (`None` if there is none left).
        pub async fn join_next(&mut self) -> Option<Result<T, JoinError>> {
            if self.handles.is_empty() {
                return None;
            }
            poll_fn(|cx| {
                for i in 0..self.handles.len() {
                    if let Poll::Ready(ended) = Pin::new(&mut self.handles[i]).poll(cx) {
                        self.handles.remove(i);
                        return Poll::Ready(Some(ended));
                    }
                }
                Poll::Pending
            })
            .await
        }
    }

    impl<T> Drop for Tasks<T> {
        fn drop(&mut self) {
            for handle in &self.handles {
                handle.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod move_tests;
