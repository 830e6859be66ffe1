//! A node of a replicated cluster: every partition is a Raft group with a replica on every
//! node of the map, and this node runs its replica of each ([`ReplicaDriver`]).
//!
//! ```text
//!   Client ─► inbox[p] ─► replica p ── leads? ──► machine
//!                            │ └──── another leads ──► queue of its node ─► Forwarder ══► its replica p
//!                            └─ Raft messages ──────► queue of their node ═════════════► its replica p
//! ```
//!
//! Placement is the simplest there is: every node holds every partition, so a group has as
//! many replicas as the map has nodes, and any node routes any request through its own
//! replica, which hands it to the leader ([`GroupLinks::forward`]). The peer links are the
//! unreplicated cluster's ([`super::forwarder`], [`PeerListener`]); Raft messages travel in
//! them as `Raft` wire messages, into the replica's inbox like everything else.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use walletd_core::model::partition::{NodeId, PartitionId, PartitionMap};
use walletd_core::replica::{RaftMessage, ReplicaConfig, ReplicaId};
use walletd_core::wire::{raft_encoded_len, RAFT_ENCODED_LEN_MAX, RAFT_MESSAGES_MAX};

use super::*;
use crate::driver::DriverStats;
use crate::replica::{
    GroupLinks, ReplicaDriver, ReplicaDriverError, ReplicaStatus, ReplicaTiming, ReplicaWiring,
};
use crate::storage::raft_store::RaftStore;
use crate::transport::{LocalTransport, Transport};

/// A node's replica id in every group: Raft reserves 0.
pub fn replica_id(node: NodeId) -> ReplicaId {
    u64::from(node) + 1
}

/// The voters of every group of `map`: a replica on each of its nodes. A new replica's Raft
/// store starts from `DurableRaft::new(&voters(map))`.
pub fn voters(map: &PartitionMap) -> Vec<ReplicaId> {
    map.nodes.keys().map(|node| replica_id(*node)).collect()
}

/// The node a replica id stands for.
pub fn replica_node(replica: ReplicaId) -> Option<NodeId> {
    replica
        .checked_sub(1)
        .and_then(|n| NodeId::try_from(n).ok())
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
    links: BTreeMap<NodeId, Arc<LinkStats>>,
}

impl ReplicatedNode {
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Routes to every partition through this node's replicas.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn peer_address(&self) -> SocketAddr {
        self.listener.address()
    }

    /// The role of this node's replica of each partition.
    pub fn statuses(&self) -> Vec<Arc<ReplicaStatus>> {
        self.replicas
            .iter()
            .map(|r| Arc::clone(&r.status))
            .collect()
    }

    pub fn stats(&self) -> Vec<Arc<DriverStats>> {
        self.replicas.iter().map(|r| Arc::clone(&r.stats)).collect()
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
/// partition from `storages[p]` (its partition log and its Raft store), links to every other
/// node, and the peer listener.
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
    if storages.len() != partitions as usize {
        return Err(NodeError::Storages {
            node,
            owned: (0..partitions).collect(),
            given: (0..storages.len() as PartitionId).collect(),
        });
    }
    config.node.net.check();
    let mut ctx = NodeContext::new(node, map, secret, config.node.nonce_seed, config.node.net);
    ctx.hosts_every_partition = true;
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
    drop(queues);
    let capacity = config.node.engine.inbox_capacity;
    let channels: Vec<_> = (0..partitions).map(|_| mpsc::channel(capacity)).collect();
    let inboxes: Arc<[mpsc::Sender<Input>]> =
        channels.iter().map(|(sender, _)| sender.clone()).collect();
    let peers: Arc<dyn Transport> = Arc::new(LocalTransport::new(Arc::clone(&inboxes)));
    let mut replicas = Vec::with_capacity(partitions as usize);
    for (partition, ((storage, raft_store), (inbox, receiver))) in
        storages.into_iter().zip(channels).enumerate()
    {
        let partition = partition as PartitionId;
        let status = Arc::new(ReplicaStatus::default());
        let stats = Arc::new(DriverStats::default());
        let replica_config = ReplicaConfig {
            id: replica_id(node),
            election_ticks: config.election_ticks,
            heartbeat_ticks: config.heartbeat_ticks,
            seed: config.election_seed ^ (u64::from(partition) << 32),
            machine: config.node.engine.driver,
        };
        let wiring = ReplicaWiring {
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
        replicas.push(RunningReplica {
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
        replicas,
        listener,
        forwarders,
        links,
    })
}

#[cfg(test)]
mod tests;
