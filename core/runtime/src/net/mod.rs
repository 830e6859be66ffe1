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
//! - `map_follower`: [`map_follower::Follower`], which keeps a node's map fresh from the
//!   coordination service (etcd, or the simulator's model of it);
//! - `stream`: [`PeerIo`], the byte streams links run over ([`Tcp`] in production);
//! - `tls`: [`MutualTls`], the same sockets under mutual TLS (not built under `--cfg madsim`).
//!
//! # A map that changes
//! The map a node runs on can be replaced while it runs ([`ClusterNode::update_map`]): a
//! newer version with new nodes or addresses, but the same owner for every partition (moving
//! a partition needs replicated partitions, which do not exist yet, so such a map is
//! refused). Frames carry the version of the map in force when they are written, so nodes
//! that hold different versions for a moment refuse each other's frames with `StaleMap`.
//! That refusal is not a failure: the end that learns of a newer version tells whoever keeps
//! its map fresh ([`ClusterNode::newer_map_seen`]), and a forwarder refused for a stale map
//! holds its queue instead of refusing it, reconnects as soon as its map changes (or after a
//! short backoff), and sends again the requests that were waiting on the refused link, for up
//! to [`NetConfig::stale_map_wait_max_ms`]. Sending a request again is safe because every
//! command that crosses a link is idempotent by its ids (see Failure).
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::watch;
use tokio::task::JoinHandle;

use crate::driver::{DriverError, Input, RecoveryReport};
use crate::engine::{Client, Engine, EngineConfig};
use crate::storage::Storage;
use walletd_core::model::partition::{MapError, NodeId, PartitionId, PartitionMap};
use walletd_core::model::placement::{Placement, PlacementError};
use walletd_core::wire::{WireError, FRAME_MESSAGES_MAX};

mod forwarder;
mod framing;
mod handshake;
mod listener;
pub mod map_follower;
pub mod replicated;
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
    /// How long a forwarder refused for a stale map holds its queue and retries before it
    /// treats the link as down (and refuses inputs): long enough for every node to learn a
    /// new map, short enough that a node cut off from its map source fails visibly.
    pub stale_map_wait_max_ms: u64,
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
            stale_map_wait_max_ms: 10_000,
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
        assert!(self.stale_map_wait_max_ms > 0);
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
    /// The peer is not in the map in force (removed from the cluster): nothing to dial.
    #[error("node {0} is not in the map")]
    NotInMap(NodeId),
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
    #[error("{replicas} copies of each partition on {nodes} nodes: 1 to {nodes}")]
    Replicas { replicas: u32, nodes: usize },
    #[error("invalid placement of the partitions' copies: {0}")]
    Placement(String),
    #[error("the cluster secret must be at least {SECRET_LEN_MIN} bytes")]
    WeakSecret,
    #[error("cannot listen for peers on {address}: {source}")]
    Bind { address: String, source: io::Error },
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Replica(crate::replica::ReplicaDriverError),
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

/// Why a new map was not taken: the node keeps running on the one it has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapUpdateError {
    #[error("invalid partition map: {0}")]
    Invalid(#[from] MapError),
    #[error("map version {offered} is older than version {current}, which this node runs")]
    Older { current: u64, offered: u64 },
    #[error(
        "map version {version} differs from the map of the same version this node runs: \
         a changed map must get a new version"
    )]
    SameVersionDiffers { version: u64 },
    #[error("the map has {offered} partitions, this node's cluster {current}: the partition count is fixed for a cluster's life")]
    PartitionCount { current: u32, offered: u32 },
    #[error(
        "the map moves partitions {partitions:?} (map version {offered}); moving a partition \
         needs replicated partitions, which this version does not have, so the node keeps \
         map version {current}"
    )]
    OwnersChanged {
        partitions: Vec<PartitionId>,
        current: u64,
        offered: u64,
    },
    #[error("node {0} is not in the map")]
    NodeRemoved(NodeId),
    #[error("invalid placement of the partitions' copies: {0}")]
    Placement(#[from] PlacementError),
    #[error("a replicated node takes a map with the placement of its partitions' copies")]
    PlacementMissing,
    #[error("this node is not replicated: a placement of copies means nothing to it")]
    NotReplicated,
    #[error(
        "the map gives this node the peer address {offered}, but it listens on {current}: \
         restart the node to move it"
    )]
    OwnPeerAddress { current: String, offered: String },
}

/// What [`ClusterNode::update_map`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapChange {
    /// The node already runs this map.
    Unchanged,
    /// The node runs version `to` from now on.
    Applied { from: u64, to: u64 },
}

/// The map a node runs on, with its digest computed once per version.
struct CurrentMap {
    map: PartitionMap,
    /// [`PartitionMap::digest`] of `map`.
    digest: u64,
}

impl CurrentMap {
    fn new(map: PartitionMap) -> Arc<CurrentMap> {
        let digest = map.digest();
        Arc::new(CurrentMap { map, digest })
    }
}

/// What every link of a node shares.
struct NodeContext {
    node: NodeId,
    /// The partition count, fixed for the cluster's life (unlike the rest of the map).
    partitions: u32,
    /// The map in force. Replaced whole by [`ClusterNode::update_map`]; links read it for
    /// every frame and handshake, so a new version takes effect with the next frame.
    map: watch::Sender<Arc<CurrentMap>>,
    /// The newest map version a peer claimed to hold, when newer than this node's: whoever
    /// keeps the map fresh watches it to refresh at once rather than at its next poll.
    newer_map_seen: watch::Sender<u64>,
    secret: Vec<u8>,
    nonces: NonceSource,
    config: NetConfig,
    /// A replicated node ([`replicated`]): whether a replica of each partition runs here
    /// (by partition; changed as copies move), and where every partition's copies are;
    /// every node of the map is a peer.
    replicated: Option<Replicated>,
}

/// What a node of a replicated cluster adds to its context.
struct Replicated {
    hosted: Vec<AtomicBool>,
    placement: watch::Sender<Arc<Placement>>,
}

impl NodeContext {
    fn new(
        node: NodeId,
        map: &PartitionMap,
        secret: &[u8],
        nonce_seed: [u8; 32],
        config: NetConfig,
    ) -> NodeContext {
        NodeContext {
            node,
            partitions: map.partitions(),
            map: watch::Sender::new(CurrentMap::new(map.clone())),
            newer_map_seen: watch::Sender::new(0),
            secret: secret.to_vec(),
            nonces: NonceSource {
                key: nonce_seed,
                counter: AtomicU64::new(0),
            },
            config,
            replicated: None,
        }
    }

    /// The map in force now; hold the `Arc` rather than asking twice where the two answers
    /// must agree (a handshake's version and digest).
    fn map(&self) -> Arc<CurrentMap> {
        Arc::clone(&self.map.borrow())
    }

    fn map_version(&self) -> u64 {
        self.map.borrow().map.version
    }

    fn owns(&self, partition: PartitionId) -> bool {
        match &self.replicated {
            Some(replicated) => (replicated.hosted.get(partition as usize))
                .is_some_and(|hosted| hosted.load(Ordering::Acquire)),
            None => self.map.borrow().map.owner(partition) == self.node,
        }
    }

    /// A peer holds map `version`: if that is newer than this node's, say so to whoever
    /// keeps the map fresh.
    fn saw_map_version(&self, version: u64) {
        if version > self.map_version() {
            self.newer_map_seen.send_if_modified(|newest| {
                let newer = version > *newest;
                if newer {
                    *newest = version;
                }
                newer
            });
        }
    }

    /// Replaces the map if `offered` is a newer map that keeps every partition where it is
    /// (unless `placement` comes with it, on a replicated node: copies move by it) and this
    /// node where it listens.
    fn update_map(
        &self,
        offered: PartitionMap,
        placement: Option<Placement>,
    ) -> Result<MapChange, MapUpdateError> {
        offered.validate()?;
        match (&self.replicated, &placement) {
            (Some(_), None) => return Err(MapUpdateError::PlacementMissing),
            (None, Some(_)) => return Err(MapUpdateError::NotReplicated),
            (Some(_), Some(placement)) => placement.check(&offered)?,
            (None, None) => {}
        }
        let current = self.map();
        let from = current.map.version;
        if offered.version < from {
            return Err(MapUpdateError::Older {
                current: from,
                offered: offered.version,
            });
        }
        if offered.version == from {
            let same_placement = match (&self.replicated, &placement) {
                (Some(replicated), Some(placement)) => {
                    **replicated.placement.borrow() == *placement
                }
                _ => true,
            };
            return match offered.digest() == current.digest && same_placement {
                true => Ok(MapChange::Unchanged),
                false => Err(MapUpdateError::SameVersionDiffers { version: from }),
            };
        }
        if offered.partitions() != self.partitions {
            return Err(MapUpdateError::PartitionCount {
                current: self.partitions,
                offered: offered.partitions(),
            });
        }
        // Before anything else about a newer map: a node it leaves out has been removed,
        // whatever else the map says.
        let Some(own) = offered.nodes.get(&self.node) else {
            return Err(MapUpdateError::NodeRemoved(self.node));
        };
        let moved: Vec<PartitionId> = (0..self.partitions)
            .filter(|p| offered.owner(*p) != current.map.owner(*p))
            .collect();
        if !moved.is_empty() && self.replicated.is_none() {
            return Err(MapUpdateError::OwnersChanged {
                partitions: moved,
                current: from,
                offered: offered.version,
            });
        }
        let listening = &current.map.nodes[&self.node].peer;
        if &own.peer != listening {
            return Err(MapUpdateError::OwnPeerAddress {
                current: listening.clone(),
                offered: own.peer.clone(),
            });
        }
        let to = offered.version;
        self.map.send_replace(CurrentMap::new(offered));
        assert_eq!(self.map_version(), to);
        if let (Some(replicated), Some(placement)) = (&self.replicated, placement) {
            replicated.placement.send_replace(Arc::new(placement));
        }
        Ok(MapChange::Applied { from, to })
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
    ctx: Arc<NodeContext>,
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

    /// The link to each other node that owns partitions.
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

    /// The map the node runs on now.
    pub fn map(&self) -> PartitionMap {
        self.map_handle().map()
    }

    /// See [`MapHandle::update_map`].
    pub fn update_map(&self, map: PartitionMap) -> Result<MapChange, MapUpdateError> {
        self.map_handle().update_map(map)
    }

    /// See [`MapHandle::newer_map_seen`].
    pub fn newer_map_seen(&self) -> watch::Receiver<u64> {
        self.map_handle().newer_map_seen()
    }

    /// A handle on the node's map for whoever keeps it fresh (a task of its own).
    pub fn map_handle(&self) -> MapHandle {
        MapHandle {
            ctx: Arc::clone(&self.ctx),
        }
    }
}

/// The map of a running node: read it, replace it, hear of newer ones. Cheap to clone; it
/// keeps no link alive.
#[derive(Clone)]
pub struct MapHandle {
    ctx: Arc<NodeContext>,
}

impl MapHandle {
    /// The map the node runs on now.
    pub fn map(&self) -> PartitionMap {
        self.ctx.map().map.clone()
    }

    /// Runs on `map` from now on, if it is newer and moves nothing: new nodes, new addresses
    /// of other nodes (a forwarder dials the new one when it next connects). A refused map
    /// changes nothing; the error says why. A replicated node takes [`MapHandle::update_placed`]
    /// instead.
    pub fn update_map(&self, map: PartitionMap) -> Result<MapChange, MapUpdateError> {
        self.update(map, None)
    }

    /// A replicated node runs on `map` and `placement` from now on, if they are newer: its
    /// replicas take their groups as their targets, and the node starts the replicas the
    /// placement gives it ([`replicated`]).
    pub fn update_placed(
        &self,
        map: PartitionMap,
        placement: Placement,
    ) -> Result<MapChange, MapUpdateError> {
        self.update(map, Some(placement))
    }

    /// The placement of a replicated node's partitions now (`None` on another node).
    pub fn placement(&self) -> Option<Placement> {
        (self.ctx.replicated.as_ref()).map(|r| Placement::clone(&r.placement.borrow()))
    }

    fn update(
        &self,
        map: PartitionMap,
        placement: Option<Placement>,
    ) -> Result<MapChange, MapUpdateError> {
        let change = self.ctx.update_map(map, placement)?;
        if let MapChange::Applied { from, to } = change {
            tracing::info!(node = self.ctx.node, from, to, "partition map updated");
        }
        Ok(change)
    }

    /// The newest map version a peer claimed to hold, once newer than this node's (0 until
    /// then): whoever keeps the map fresh should read it anew when this changes.
    pub fn newer_map_seen(&self) -> watch::Receiver<u64> {
        self.ctx.newer_map_seen.subscribe()
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
    let ctx = Arc::new(NodeContext::new(
        node,
        map,
        secret,
        config.nonce_seed,
        config.net,
    ));
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
    let listener =
        PeerListener::start(listener, Arc::clone(&ctx), engine.client(), io).map_err(|source| {
            NodeError::Bind {
                address: map.nodes[&node].peer.clone(),
                source,
            }
        })?;
    Ok(ClusterNode {
        node,
        ctx,
        engine,
        listener,
        forwarders,
        links,
    })
}

/// The links of a node to every other node of its map that owns partitions (nothing is
/// forwarded to a node that owns none).
struct Links {
    /// The queue of each remote node's forwarder.
    queues: BTreeMap<NodeId, mpsc::Sender<Input>>,
    stats: BTreeMap<NodeId, Arc<LinkStats>>,
    forwarders: Vec<AbortOnDrop>,
}

/// Starts a forwarder to every other node of the map of `ctx` that owns partitions (every
/// other node, on a replicated node).
fn spawn_forwarders<N: PeerIo>(ctx: &Arc<NodeContext>, io: &Arc<N>) -> Links {
    let mut links = Links {
        queues: BTreeMap::new(),
        stats: BTreeMap::new(),
        forwarders: Vec::new(),
    };
    let map = ctx.map();
    let owners: std::collections::BTreeSet<NodeId> = match ctx.replicated {
        Some(_) => map.map.nodes.keys().copied().collect(),
        None => map.map.owners.iter().copied().collect(),
    };
    for remote in owners.into_iter().filter(|id| *id != ctx.node) {
        let (queue, stats, forwarder) = spawn_forwarder(ctx, io, remote);
        links.forwarders.push(forwarder);
        links.queues.insert(remote, queue);
        links.stats.insert(remote, stats);
    }
    links
}

/// Starts the forwarder to node `remote`: its queue, its counters and its task.
fn spawn_forwarder<N: PeerIo>(
    ctx: &Arc<NodeContext>,
    io: &Arc<N>,
    remote: NodeId,
) -> (mpsc::Sender<Input>, Arc<LinkStats>, AbortOnDrop) {
    let (queue, inputs) = mpsc::channel(ctx.config.forward_queue_max);
    let stats = Arc::new(LinkStats::default());
    let forwarder = Forwarder {
        remote,
        ctx: Arc::clone(ctx),
        io: Arc::clone(io),
        inputs,
        resend: std::collections::VecDeque::new(),
        stats: Arc::clone(&stats),
    };
    let task = AbortOnDrop(tokio::spawn(forwarder.run()));
    (queue, stats, task)
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
