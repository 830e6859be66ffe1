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
//! **Placement** ([`replica_nodes`]): partition `p`'s replicas are on its owner in the map
//! and the nodes after it in id order, wrapping around, as many as `replicas`; with
//! `replicas` equal to the node count every node holds every partition. Copies of one
//! partition are always on distinct nodes. A request for a partition this node hosts goes
//! through its own replica, which hands it to the leader ([`GroupLinks::forward`]); one
//! for a partition it does not host goes to a node that does, the same one while its link
//! is up. The peer links are the unreplicated cluster's ([`super::forwarder`],
//! [`PeerListener`]); Raft and membership messages travel in them, into the replica's
//! inbox like everything else.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use walletd_core::model::partition::{NodeId, PartitionId, PartitionMap};
use walletd_core::replica::membership::{self, MembershipMessage};
use walletd_core::replica::{CatchUpMessage, LogLimits, RaftMessage, ReplicaConfig, ReplicaId};
use walletd_core::wire::{raft_encoded_len, RAFT_ENCODED_LEN_MAX, RAFT_MESSAGES_MAX};

use super::*;
use crate::driver::DriverStats;
use crate::replica::{
    GroupLinks, ReplicaDriver, ReplicaDriverError, ReplicaStatus, ReplicaTiming, ReplicaWiring,
};
use crate::storage::raft_store::RaftStore;
use crate::transport::{LocalTransport, Transport};

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

/// The nodes holding partition `partition`'s replicas when each partition has `replicas`
/// copies: its owner in `map` and the nodes after it in id order, wrapping around.
pub fn replica_nodes(map: &PartitionMap, partition: PartitionId, replicas: u32) -> Vec<NodeId> {
    let nodes: Vec<NodeId> = map.nodes.keys().copied().collect();
    assert!(
        (1..=nodes.len() as u32).contains(&replicas),
        "1 to {} replicas, not {replicas}",
        nodes.len()
    );
    let owner = map.owner(partition);
    let first = nodes
        .iter()
        .position(|n| *n == owner)
        .expect("owners are nodes");
    (0..replicas as usize)
        .map(|i| nodes[(first + i) % nodes.len()])
        .collect()
}

/// The partitions whose replicas include one on `node`, ascending.
pub fn hosted_partitions(map: &PartitionMap, node: NodeId, replicas: u32) -> Vec<PartitionId> {
    (0..map.partitions())
        .filter(|p| replica_nodes(map, *p, replicas).contains(&node))
        .collect()
}

/// The first voters of partition `partition`'s group: its replica nodes' first ids.
pub fn voters_of(map: &PartitionMap, partition: PartitionId, replicas: u32) -> Vec<ReplicaId> {
    (replica_nodes(map, partition, replicas).into_iter())
        .map(replica_id)
        .collect()
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

/// Carries a replica's Raft messages and forwarded inputs to other nodes through their
/// forwarders' queues.
struct NodeLinks {
    node: NodeId,
    queues: BTreeMap<NodeId, mpsc::Sender<Input>>,
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
            let Some(queue) = self.queues.get(&node) else {
                continue;
            };
            for group in wire_groups(messages) {
                let input = Input::Raft {
                    partition,
                    messages: group,
                };
                // A full queue drops them: Raft resends.
                let _ = queue.try_send(input);
            }
        }
    }

    fn send_membership(&self, node: NodeId, partition: PartitionId, message: MembershipMessage) {
        if let Some(queue) = self.queues.get(&node) {
            let input = Input::Membership {
                partition,
                from: self.node,
                message,
            };
            // A full queue drops it: asks are repeated until answered.
            let _ = queue.try_send(input);
        }
    }

    fn send_catch_up(&self, node: NodeId, partition: PartitionId, message: CatchUpMessage) {
        if let Some(queue) = self.queues.get(&node) {
            let input = Input::CatchUp {
                partition,
                from: self.node,
                message,
            };
            // A full queue drops it: a fetch is asked again.
            let _ = queue.try_send(input);
        }
    }

    fn forward(&self, to: ReplicaId, input: Input) -> Result<(), Input> {
        let queue = replica_node(to).and_then(|node| self.queues.get(&node));
        let Some(queue) = queue else {
            return Err(input);
        };
        queue.try_send(input).map_err(|error| match error {
            mpsc::error::TrySendError::Full(input) | mpsc::error::TrySendError::Closed(input) => {
                input
            }
        })
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

/// One replica running on the node.
struct RunningReplica {
    partition: PartitionId,
    inbox: mpsc::Sender<Input>,
    status: Arc<ReplicaStatus>,
    stats: Arc<DriverStats>,
    task: JoinHandle<Result<(), ReplicaDriverError>>,
}

/// A running node of a replicated cluster.
pub struct ReplicatedNode {
    node: NodeId,
    client: Client,
    replicas: Vec<RunningReplica>,
    listener: PeerListener,
    forwarders: Vec<AbortOnDrop>,
    /// One per partition not hosted here.
    relays: Vec<AbortOnDrop>,
    links: BTreeMap<NodeId, Arc<LinkStats>>,
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

    /// The role of this node's replica of each partition it hosts.
    pub fn statuses(&self) -> Vec<(PartitionId, Arc<ReplicaStatus>)> {
        (self.replicas.iter())
            .map(|r| (r.partition, Arc::clone(&r.status)))
            .collect()
    }

    /// The counters of this node's replica of each partition it hosts.
    pub fn stats(&self) -> Vec<(PartitionId, Arc<DriverStats>)> {
        (self.replicas.iter())
            .map(|r| (r.partition, Arc::clone(&r.stats)))
            .collect()
    }

    pub fn links(&self) -> &BTreeMap<NodeId, Arc<LinkStats>> {
        &self.links
    }

    /// Stops accepting peers, stops every replica cleanly (its log synced), then the links.
    pub async fn shutdown(self) -> Result<(), ReplicaDriverError> {
        drop(self.listener);
        let mut acks = Vec::new();
        for replica in &self.replicas {
            let (ack, done) = oneshot::channel();
            if replica.inbox.send(Input::Shutdown(ack)).await.is_ok() {
                acks.push(done);
            }
        }
        for done in acks {
            let _ = done.await;
        }
        let mut result = Ok(());
        for replica in self.replicas {
            match replica.task.await {
                Ok(Err(error)) if result.is_ok() => result = Err(error),
                Ok(_) => {}
                Err(join) => tracing::error!(%join, "replica task failed"),
            }
        }
        drop(self.relays);
        drop(self.forwarders);
        result
    }

    /// Stops at once, as a crash would (tests): every task is aborted where it is.
    pub fn abort(self) {
        for replica in &self.replicas {
            replica.task.abort();
        }
    }
}

/// Starts node `node` of `map` as a replicated node on `listener`: a replica of every
/// partition it hosts ([`hosted_partitions`]) from `storages` (its partition log and its
/// Raft store, one per hosted partition in ascending order), links to every other node, a
/// relay for each partition it does not host, and the peer listener.
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
    if secret.len() < SECRET_LEN_MIN {
        return Err(NodeError::WeakSecret);
    }
    let partitions = map.partitions();
    let replicas = config.replicas.unwrap_or(map.nodes.len() as u32);
    if !(1..=map.nodes.len() as u32).contains(&replicas) {
        return Err(NodeError::Replicas {
            replicas,
            nodes: map.nodes.len(),
        });
    }
    let hosted = hosted_partitions(map, node, replicas);
    if storages.len() != hosted.len() {
        return Err(NodeError::Storages {
            node,
            owned: hosted,
            given: (0..storages.len() as PartitionId).collect(),
        });
    }
    config.node.net.check();
    let mut ctx = NodeContext::new(node, map, secret, config.node.nonce_seed, config.node.net);
    ctx.hosted = Some((0..partitions).map(|p| hosted.contains(&p)).collect());
    let ctx = Arc::new(ctx);
    let io = Arc::new(io);
    let Links {
        queues,
        stats: links,
        forwarders,
    } = spawn_forwarders(&ctx, &io);
    let group_links: Arc<dyn GroupLinks> = Arc::new(NodeLinks {
        node,
        queues: queues.clone(),
    });
    let capacity = config.node.engine.inbox_capacity;
    let mut channels: Vec<_> = (0..partitions).map(|_| mpsc::channel(capacity)).collect();
    let inboxes: Arc<[mpsc::Sender<Input>]> =
        channels.iter().map(|(sender, _)| sender.clone()).collect();
    let peers: Arc<dyn Transport> = Arc::new(LocalTransport::new(Arc::clone(&inboxes)));
    let mut relays = Vec::new();
    for partition in (0..partitions).filter(|p| !hosted.contains(p)) {
        let targets = (replica_nodes(map, partition, replicas).into_iter())
            .filter_map(|n| Some((queues.get(&n)?.clone(), Arc::clone(links.get(&n)?))))
            .collect();
        let (_, inputs) = std::mem::replace(&mut channels[partition as usize], mpsc::channel(1));
        relays.push(AbortOnDrop(tokio::spawn(relay(inputs, targets))));
    }
    drop(queues);
    let mut running = Vec::with_capacity(hosted.len());
    for (&partition, (storage, raft_store)) in hosted.iter().zip(storages) {
        let (inbox, receiver) =
            std::mem::replace(&mut channels[partition as usize], mpsc::channel(1));
        let status = Arc::new(ReplicaStatus::default());
        let stats = Arc::new(DriverStats::default());
        let replica_config = ReplicaConfig {
            // The driver takes the id from the Raft store (see `ReplicaDriver::start`).
            id: replica_id(node),
            election_ticks: config.election_ticks,
            heartbeat_ticks: config.heartbeat_ticks,
            seed: config.election_seed ^ (u64::from(partition) << 32),
            machine: config.node.engine.driver,
            log: config.log,
        };
        let wiring = ReplicaWiring {
            node,
            group: replica_nodes(map, partition, replicas),
            peers: Arc::clone(&peers),
            links: Arc::clone(&group_links),
            inbox: receiver,
            status: Arc::clone(&status),
            stats: Arc::clone(&stats),
        };
        let driver = ReplicaDriver::start(
            partition,
            partitions,
            storage,
            raft_store,
            replica_config,
            config.timing,
            wiring,
        )
        .await
        .map_err(NodeError::Replica)?;
        let task = tokio::spawn(async move { driver.run().await.map(drop) });
        running.push(RunningReplica {
            partition,
            inbox,
            status,
            stats,
            task,
        });
    }
    let client = Client::new(Arc::clone(&inboxes));
    let listener =
        PeerListener::start(listener, Arc::clone(&ctx), client.clone(), io).map_err(|source| {
            NodeError::Bind {
                address: map.nodes[&node].peer.clone(),
                source,
            }
        })?;
    Ok(ReplicatedNode {
        node,
        client,
        replicas: running,
        listener,
        forwarders,
        relays,
        links,
    })
}

/// Carries the inputs of a partition with no replica on this node to a node with one
/// (`targets`: the forwarder queue and link of each): the same node while its link is up,
/// the next one whose link is up otherwise. Its replica hands them to the leader. An input
/// that finds no way is dropped: its client sees the partition unavailable and retries.
async fn relay(
    mut inputs: mpsc::Receiver<Input>,
    targets: Vec<(mpsc::Sender<Input>, Arc<LinkStats>)>,
) {
    let mut current = 0;
    while let Some(input) = inputs.recv().await {
        if targets.is_empty() {
            continue;
        }
        let up = |i: usize| {
            targets[i]
                .1
                .connected
                .load(std::sync::atomic::Ordering::Acquire)
        };
        if !up(current) {
            let count = targets.len();
            current = (1..count)
                .map(|step| (current + step) % count)
                .find(|i| up(*i))
                .unwrap_or((current + 1) % count);
        }
        let _ = targets[current].0.try_send(input);
    }
}

#[cfg(test)]
mod tests;
