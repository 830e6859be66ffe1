//! Cluster nodes over TCP: the thin async driver of the [`walletd_core::wire`] protocol.
//!
//! ```text
//!  node A                                                     node B
//!  Client ─► inbox[p] (p local) ─► driver
//!        └─► queue of node B ─► Forwarder ══ TCP frames ══► PeerListener ─► inbox[q] ─► driver
//!                                  ▲ reader ◄═══ replies ═══ writer ◄─ oneshots ◄──────┘
//! ```
//!
//! - A `Forwarder` per remote node owns one queue, the inbox that [`Engine`] hands out for
//!   every partition that node owns. It connects (with backoff), authenticates, then loops:
//!   take what is queued (up to a frame), give each command and query an id and keep its
//!   oneshot in a bounded pending map, write one frame. A reader task resolves answers by id.
//!   TC/C phase messages are fire and forget; those one batch sends to one partition come as
//!   one input and leave as one `Peers` message. A message that does not fit in the bytes a
//!   frame has left (beside a large `Peers` message) opens the next frame.
//! - The [`PeerListener`] accepts peer connections, authenticates them and hands each request
//!   to the local partition's inbox with a fresh oneshot; a writer task batches the answers
//!   into frames on the same connection. The phase messages of a `Peers` message go to their
//!   partition's inbox as one input, with `try_send`, and are dropped when it is full (the
//!   coordinator resends).
//!
//! # Layout
//! - this file: configuration, errors, [`ClusterNode`] and the `bind_peer_address` and `start_node_with` that
//!   recover a node's partitions and start its links;
//! - `handshake`: the HMAC challenge-response and its nonces;
//! - `framing`: whole frames on a byte stream;
//! - `forwarder`: the outbound link to one remote node;
//! - `listener`: [`PeerListener`], the inbound links;
//! - `stream`: [`PeerIo`], the byte streams links run over ([`Tcp`] in production);
//! - `tls`: [`MutualTls`], the same sockets under mutual TLS (not built under `--cfg madsim`).
//!
//! # Failure
//! When a link breaks, every request waiting on it is dropped and its client sees
//! [`crate::engine::Unavailable`]; while a link is down, new inputs for it are refused at
//! once rather than queued. A command the client saw fail may still have been applied; the
//! client retries with the same transaction id and the owning partition's idempotency makes
//! that an at-most-once application. Phase messages lost with a link are resent by the
//! coordinator of their home partition, so a transfer waits for a node that is down and
//! completes once it is back.
//!
//! # Handshake
//! Challenge-response with HMAC-SHA256 over a shared cluster secret; both ends prove they
//! hold it, and neither end sends the secret:
//!
//! ```text
//! connector → Hello{node, map_version, nonce_c}
//! acceptor  → Hello{node, map_version, nonce_s}   (or StaleMap and close)
//! connector → Auth{mac("client", transcript)}     (acceptor closes on a wrong MAC, and logs it)
//! acceptor  → Auth{mac("server", transcript)}
//! transcript = connector node, acceptor node, map version, nonce_c, nonce_s
//! ```
//!
//! The nonces come from a keyed counter ([`NodeConfig::nonce_seed`]): `core` draws no random
//! numbers of its own; the binary seeds it from the operating system (the simulator from the
//! run's seed). Over [`Tcp`], frames after the handshake are checksummed but neither signed nor
//! encrypted: the peer network must be private. Over [`MutualTls`] the same handshake runs
//! inside a TLS channel that both ends opened with a certificate of the cluster's CA, and
//! the frames are encrypted and authenticated.
//!
//! # Byte streams, and the simulator
//! Links run over any [`PeerIo`]: production uses [`Tcp`]. The module builds under
//! `--cfg madsim` too, where `tokio::net` is madsim's simulated TCP, and the simulator starts
//! its nodes with [`start_node_with`] and streams that wrap those sockets (to cut a
//! connection mid-frame, and to trace frames). So that one source runs on both runtimes, it
//! writes every frame with a flush (madsim's streams send only on flush), keeps no `JoinSet`
//! (madsim has none), spawns no thread and iterates no `HashMap` where order reaches
//! behaviour.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::driver::{DriverError, Input, RecoveryReport};
use crate::engine::{Client, Engine, EngineConfig};
use crate::storage::Storage;
use walletd_core::model::partition::{MapError, NodeId, PartitionId, PartitionMap};
use walletd_core::wire::{WireError, FRAME_MESSAGES_MAX};

mod forwarder;
mod framing;
mod handshake;
mod listener;
mod stream;
#[cfg(not(madsim))]
mod tls;

use forwarder::*;
use framing::*;
use handshake::*;
pub use listener::PeerListener;
pub use stream::{PeerIo, Tcp};
#[cfg(not(madsim))]
pub use tls::{crypto_provider, MutualTls, PeerCertificates, PeerTlsError};

/// Shortest cluster secret accepted, in bytes.
pub const SECRET_LEN_MIN: usize = 16;

/// Limits and timings of a node's peer links. Durations in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// Inputs the queue towards one remote node holds before clients wait (and phase messages
    /// are dropped, as on a full local inbox).
    pub forward_queue_max: usize,
    /// Most inputs a forwarder puts into one frame (at most [`FRAME_MESSAGES_MAX`]).
    pub frame_messages_max: usize,
    /// Most requests a forwarder has sent and not seen answered; beyond it, inputs wait in the
    /// queue. Must exceed `frame_messages_max` so a frame being built never waits on itself.
    pub pending_max: usize,
    /// Most requests of one inbound connection running at once; beyond it the connection is
    /// not read (backpressure through TCP). At least `pending_max`, so a forwarder of the same
    /// configuration is never throttled below its own bound.
    pub inbound_requests_max: usize,
    /// Most inbound peer connections served at once; more are closed on accept.
    pub inbound_connections_max: usize,
    /// First wait before reconnecting to a node that could not be reached; doubles up to
    /// `connect_backoff_max_ms`.
    pub connect_backoff_initial_ms: u64,
    pub connect_backoff_max_ms: u64,
    /// Connecting and the whole handshake must finish within this.
    pub handshake_timeout_ms: u64,
    /// A link with nothing to send for this long sends an empty frame, which the other end
    /// echoes: the heartbeat that tells a silent node from an idle one.
    pub heartbeat_ms: u64,
    /// A link on which nothing arrived for this long is dead (a frozen or partitioned node).
    pub peer_silent_max_ms: u64,
    /// Writing one frame must finish within this, or the link is dead.
    pub write_timeout_ms: u64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            forward_queue_max: 65_536,
            frame_messages_max: FRAME_MESSAGES_MAX,
            pending_max: 65_536,
            inbound_requests_max: 65_536,
            inbound_connections_max: 64,
            connect_backoff_initial_ms: 50,
            connect_backoff_max_ms: 1_000,
            handshake_timeout_ms: 2_000,
            heartbeat_ms: 500,
            peer_silent_max_ms: 3_000,
            write_timeout_ms: 3_000,
        }
    }
}

impl NetConfig {
    fn check(&self) {
        assert!((1..=FRAME_MESSAGES_MAX).contains(&self.frame_messages_max));
        assert!(self.pending_max > self.frame_messages_max);
        assert!(self.inbound_requests_max >= self.pending_max);
        assert!(self.forward_queue_max > 0 && self.inbound_connections_max > 0);
        assert!(self.connect_backoff_initial_ms > 0);
        assert!(self.connect_backoff_initial_ms <= self.connect_backoff_max_ms);
        assert!(self.heartbeat_ms > 0 && self.heartbeat_ms < self.peer_silent_max_ms);
    }
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// Everything a node needs besides its map, id, secret and storage.
#[derive(Debug, Clone, Copy)]
pub struct NodeConfig {
    /// The engine's shape; its partition count is taken from the map.
    pub engine: EngineConfig,
    pub net: NetConfig,
    /// Keys the handshake nonces. Must be unpredictable in production (the binary draws it
    /// from the operating system); a fixed value makes tests reproducible.
    pub nonce_seed: [u8; 32],
}

/// Why a link or a handshake failed. Each ends one connection, never the node.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The accepted connection could not be set up, before the handshake: under mutual TLS,
    /// a peer without a certificate the cluster's CA signed.
    #[error("connection not accepted: {0}")]
    Accept(io::Error),
    #[error("bad frame: {0}")]
    Wire(#[from] WireError),
    #[error("timed out")]
    Timeout,
    #[error("nothing heard from the peer for {0} ms")]
    Silent(u64),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("partition maps differ: this node holds version {expected}, the peer {got}")]
    StaleMap { expected: u64, got: u64 },
    #[error(
        "partition maps differ under one version {version} (digest {ours:016x} here, \
         {theirs:016x} at the peer): a changed map must get a new map_version"
    )]
    MapMismatch {
        version: u64,
        ours: u64,
        theirs: u64,
    },
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid partition map: {0}")]
    Map(#[from] MapError),
    #[error("node {0} is not in the partition map")]
    UnknownNode(NodeId),
    #[error("node {node} owns partitions {owned:?} but was given storage for {given:?}")]
    Storages {
        node: NodeId,
        owned: Vec<PartitionId>,
        given: Vec<PartitionId>,
    },
    #[error("the cluster secret must be at least {SECRET_LEN_MIN} bytes")]
    WeakSecret,
    #[error("cannot listen for peers on {address}: {source}")]
    Bind { address: String, source: io::Error },
    #[error(transparent)]
    Driver(#[from] DriverError),
}

/// Counters of the link to one remote node (for `/metrics` and tests).
#[derive(Debug, Default)]
pub struct LinkStats {
    pub connected: AtomicBool,
    /// Successful handshakes.
    pub connects: AtomicU64,
    pub frames_sent: AtomicU64,
    pub messages_sent: AtomicU64,
    /// Inputs refused (commands and queries) or dropped (phase messages) while the link was down.
    pub refused_while_down: AtomicU64,
}

/// What every link of a node shares.
struct NodeContext {
    node: NodeId,
    map: PartitionMap,
    /// [`PartitionMap::digest`] of `map`, computed once.
    map_digest: u64,
    secret: Vec<u8>,
    nonces: NonceSource,
    config: NetConfig,
}

impl NodeContext {
    fn map_version(&self) -> u64 {
        self.map.version
    }

    fn owns(&self, partition: PartitionId) -> bool {
        self.map.owner(partition) == self.node
    }
}

/// Aborts a task when dropped, so a node's tasks never outlive it.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One running node of a cluster: its partitions, its links to every other node, and its
/// peer listener.
pub struct ClusterNode {
    node: NodeId,
    engine: Engine,
    listener: PeerListener,
    forwarders: Vec<AbortOnDrop>,
    links: BTreeMap<NodeId, Arc<LinkStats>>,
}

impl ClusterNode {
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Routes to every partition of the cluster, wherever it runs.
    pub fn client(&self) -> Client {
        self.engine.client()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Where the peer listener accepts connections.
    pub fn peer_address(&self) -> SocketAddr {
        self.listener.address()
    }

    /// The link to each other node.
    pub fn links(&self) -> &BTreeMap<NodeId, Arc<LinkStats>> {
        &self.links
    }

    /// Stops accepting peers, lets every local partition finish its batch and stop, then
    /// drops the links (requests still waiting on them see `Unavailable`).
    pub async fn shutdown(self) -> Result<(), DriverError> {
        drop(self.listener);
        let result = self.engine.shutdown().await;
        drop(self.forwarders);
        result
    }
}

/// Binds the peer address `map` gives node `node`, for [`start_node_with`].
pub async fn bind_peer_address(map: &PartitionMap, node: NodeId) -> Result<TcpListener, NodeError> {
    map.validate()?;
    let address = &map
        .nodes
        .get(&node)
        .ok_or(NodeError::UnknownNode(node))?
        .peer;
    TcpListener::bind(address)
        .await
        .map_err(|source| NodeError::Bind {
            address: address.clone(),
            source,
        })
}

/// Starts node `node` of `map` on `listener` (from [`bind_peer_address`]; tests bind port 0
/// first to learn the port): recovers its partitions from `storages` (exactly the partitions
/// the map gives it), links to every other node and serves peers, over the byte streams of
/// `io` (production passes [`Tcp`] or [`MutualTls`]; the simulator its wrapped sockets, see
/// [`PeerIo`]).
/// `secret` is the cluster secret every node shares.
pub async fn start_node_with<S: Storage, N: PeerIo>(
    io: N,
    listener: TcpListener,
    map: &PartitionMap,
    node: NodeId,
    secret: &[u8],
    storages: Vec<(PartitionId, S)>,
    config: NodeConfig,
) -> Result<ClusterNode, NodeError> {
    check_node(map, node, secret, &storages)?;
    config.net.check();
    let ctx = Arc::new(NodeContext {
        node,
        map: map.clone(),
        map_digest: map.digest(),
        secret: secret.to_vec(),
        nonces: NonceSource {
            key: config.nonce_seed,
            counter: AtomicU64::new(0),
        },
        config: config.net,
    });
    let io = Arc::new(io);
    let Links {
        queues,
        stats: links,
        forwarders,
    } = spawn_forwarders(&ctx, &io);
    let engine_config = EngineConfig {
        partitions: map.partitions(),
        ..config.engine
    };
    let engine = Engine::start_partitions(
        storages,
        engine_config,
        |p| queues[&map.owner(p)].clone(),
        |report: &RecoveryReport| {
            tracing::debug!(
                node,
                partition = report.partition,
                last_lsn = report.last_lsn,
                "partition recovered"
            )
        },
    )
    .await?;
    // The engine's client now holds the only queue senders: the forwarders end with it.
    drop(queues);
    let listener = PeerListener::start(listener, ctx, engine.client(), io).map_err(|source| {
        NodeError::Bind {
            address: map.nodes[&node].peer.clone(),
            source,
        }
    })?;
    Ok(ClusterNode {
        node,
        engine,
        listener,
        forwarders,
        links,
    })
}

/// The links of a node to every other node of its map.
struct Links {
    /// The queue of each remote node's forwarder.
    queues: BTreeMap<NodeId, mpsc::Sender<Input>>,
    stats: BTreeMap<NodeId, Arc<LinkStats>>,
    forwarders: Vec<AbortOnDrop>,
}

/// Starts a forwarder to every other node of the map of `ctx`.
fn spawn_forwarders<N: PeerIo>(ctx: &Arc<NodeContext>, io: &Arc<N>) -> Links {
    let mut links = Links {
        queues: BTreeMap::new(),
        stats: BTreeMap::new(),
        forwarders: Vec::new(),
    };
    for (&remote, address) in ctx.map.nodes.iter().filter(|(id, _)| **id != ctx.node) {
        let (queue, inputs) = mpsc::channel(ctx.config.forward_queue_max);
        let stats = Arc::new(LinkStats::default());
        let forwarder = Forwarder {
            remote,
            address: address.peer.clone(),
            ctx: Arc::clone(ctx),
            io: Arc::clone(io),
            inputs,
            stats: Arc::clone(&stats),
        };
        links
            .forwarders
            .push(AbortOnDrop(tokio::spawn(forwarder.run())));
        links.queues.insert(remote, queue);
        links.stats.insert(remote, stats);
    }
    links
}

fn check_node<S>(
    map: &PartitionMap,
    node: NodeId,
    secret: &[u8],
    storages: &[(PartitionId, S)],
) -> Result<(), NodeError> {
    map.validate()?;
    if !map.nodes.contains_key(&node) {
        return Err(NodeError::UnknownNode(node));
    }
    if secret.len() < SECRET_LEN_MIN {
        return Err(NodeError::WeakSecret);
    }
    let owned = map.partitions_of(node);
    let mut given: Vec<PartitionId> = storages.iter().map(|(p, _)| *p).collect();
    given.sort_unstable();
    if given != owned {
        return Err(NodeError::Storages { node, owned, given });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
