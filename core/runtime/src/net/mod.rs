//! Cluster nodes over TCP: the thin async driver of the [`walletd_core::wire`] protocol.
//!
//! ```text
//!  node A                                                     node B
//!  Client ─► inbox[p] (p local) ─► driver
//!        └─► queue of node B ─► Forwarder ══ TCP frames ══► PeerListener ─► inbox[q] ─► driver
//!                                  ▲ reader ◄═══ replies ═══ writer ◄─ oneshots ◄──────┘
//! ```
//!
//! - A [`Forwarder`] per remote node owns one queue, the inbox that [`Engine`] hands out for
//!   every partition that node owns. It connects (with backoff), authenticates, then loops:
//!   take what is queued (up to a frame), give each command and query an id and keep its
//!   oneshot in a bounded pending map, write one frame. A reader task resolves answers by id.
//!   TC/C phase messages are fire and forget.
//! - The [`PeerListener`] accepts peer connections, authenticates them and hands each request
//!   to the local partition's inbox with a fresh oneshot; a writer task batches the answers
//!   into frames on the same connection. Phase messages go to the inbox with `try_send` and
//!   are dropped when it is full (the coordinator resends).
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
//! run's seed). After the handshake frames are checksummed but neither signed nor encrypted:
//! the peer network must be private.
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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use rustc_hash::FxHashMap;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout, Instant};

use crate::driver::{CommandResult, DriverError, Input, Query, QueryAnswer, RecoveryReport};
use crate::engine::{command_account, Client, Engine, EngineConfig};
use crate::storage::Storage;
use walletd_core::model::partition::{MapError, NodeId, PartitionId, PartitionMap};
use walletd_core::wire::{
    decode_frame_body, frame_body_len, Frame, FrameWriter, Message, RequestId, WireError,
    FRAME_HEADER_LEN, FRAME_MESSAGES_MAX, MAC_LEN, NONCE_LEN,
};

mod stream;
pub use stream::{PeerIo, Tcp};

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

/// Handshake nonces: HMAC-SHA256 of a counter under a seed key. Unpredictable without the
/// seed and never repeated within a process, which is all a challenge needs.
struct NonceSource {
    key: [u8; 32],
    counter: AtomicU64,
}

impl NonceSource {
    fn next(&self) -> [u8; NONCE_LEN] {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(b"walletd nonce");
        mac.update(&n.to_le_bytes());
        let digest = mac.finalize().into_bytes();
        digest[..NONCE_LEN].try_into().expect("digest is longer")
    }
}

type HmacSha256 = Hmac<Sha256>;

/// Which end of a handshake a MAC speaks for. Distinct labels stop a reflected MAC.
#[derive(Debug, Clone, Copy)]
enum Role {
    Connector,
    Acceptor,
}

/// What both ends of a handshake agree on; each MAC covers all of it.
struct Transcript {
    connector: NodeId,
    acceptor: NodeId,
    map_version: u64,
    connector_nonce: [u8; NONCE_LEN],
    acceptor_nonce: [u8; NONCE_LEN],
}

impl Transcript {
    fn hmac(&self, secret: &[u8], role: Role) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key");
        mac.update(match role {
            Role::Connector => b"walletd peer v1 connector",
            Role::Acceptor => b"walletd peer v1 acceptor.",
        });
        mac.update(&self.connector.to_le_bytes());
        mac.update(&self.acceptor.to_le_bytes());
        mac.update(&self.map_version.to_le_bytes());
        mac.update(&self.connector_nonce);
        mac.update(&self.acceptor_nonce);
        mac
    }

    fn mac(&self, secret: &[u8], role: Role) -> [u8; MAC_LEN] {
        self.hmac(secret, role).finalize().into_bytes().into()
    }

    /// Constant-time check of a MAC the other end sent.
    fn verify(&self, secret: &[u8], role: Role, mac: &[u8; MAC_LEN]) -> bool {
        self.hmac(secret, role).verify_slice(mac).is_ok()
    }
}

/// What every link of a node shares.
struct NodeContext {
    node: NodeId,
    map: PartitionMap,
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

/// Reads whole frames from a byte stream.
struct FrameReader<R> {
    inner: R,
    body: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(inner: R) -> FrameReader<R> {
        FrameReader {
            inner,
            body: Vec::new(),
        }
    }

    /// The next frame. Not cancel safe: a caller that gives up mid-frame must drop the stream.
    async fn next(&mut self) -> Result<Frame, NetError> {
        let mut header = [0u8; FRAME_HEADER_LEN];
        self.inner.read_exact(&mut header).await?;
        let len = frame_body_len(&header)?;
        self.body.resize(len, 0);
        self.inner.read_exact(&mut self.body).await?;
        Ok(decode_frame_body(&header, &self.body)?)
    }
}

/// Writes `buf` (whole frames) and flushes, within `limit_ms`.
async fn write_frames<W: AsyncWrite + Unpin>(
    write: &mut W,
    buf: &[u8],
    limit_ms: u64,
) -> Result<(), NetError> {
    let written = timeout(ms(limit_ms), async {
        write.write_all(buf).await?;
        // The simulator's streams send only on flush; on real sockets it is a no-op.
        write.flush().await
    })
    .await;
    match written {
        Ok(result) => Ok(result?),
        Err(_) => Err(NetError::Timeout),
    }
}

/// Sends one handshake message in its own frame.
async fn send_one<S: AsyncWrite + Unpin>(
    stream: &mut S,
    ctx: &NodeContext,
    message: Message,
) -> Result<(), NetError> {
    let mut buf = Vec::new();
    let mut frame = FrameWriter::new(&mut buf, ctx.map_version());
    frame.push(&message);
    frame.finish();
    write_frames(stream, &buf, ctx.config.write_timeout_ms).await
}

/// Reads one handshake frame, which must hold exactly one message. Unbuffered, so nothing
/// past the handshake is read into a buffer that is about to be dropped.
async fn receive_one<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Message, NetError> {
    let frame = FrameReader::new(stream).next().await?;
    match <[Message; 1]>::try_from(frame.messages) {
        Ok([message]) => Ok(message),
        Err(messages) => Err(NetError::Protocol(format!(
            "a handshake frame holds one message, not {}",
            messages.len()
        ))),
    }
}

/// The connecting end of the handshake: proves the secret to `remote` and checks its proof.
async fn handshake_connector<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    ctx: &NodeContext,
    remote: NodeId,
) -> Result<(), NetError> {
    let connector_nonce = ctx.nonces.next();
    let hello = Message::Hello {
        node: ctx.node,
        map_version: ctx.map_version(),
        nonce: connector_nonce,
    };
    send_one(stream, ctx, hello).await?;
    let acceptor_nonce = match receive_one(stream).await? {
        Message::Hello {
            node,
            map_version,
            nonce,
        } if node == remote && map_version == ctx.map_version() => nonce,
        Message::Hello { node, .. } if node != remote => {
            return Err(NetError::Protocol(format!(
                "expected node {remote} at its address, found node {node}"
            )))
        }
        Message::Hello { map_version, .. }
        | Message::StaleMap {
            expected: map_version,
            ..
        } => {
            return Err(NetError::StaleMap {
                expected: ctx.map_version(),
                got: map_version,
            })
        }
        other => return Err(NetError::Protocol(format!("expected Hello, got {other:?}"))),
    };
    let transcript = Transcript {
        connector: ctx.node,
        acceptor: remote,
        map_version: ctx.map_version(),
        connector_nonce,
        acceptor_nonce,
    };
    let mac = transcript.mac(&ctx.secret, Role::Connector);
    send_one(stream, ctx, Message::Auth { mac }).await?;
    match receive_one(stream).await {
        Ok(Message::Auth { mac }) if transcript.verify(&ctx.secret, Role::Acceptor, &mac) => Ok(()),
        Ok(Message::Auth { .. }) => Err(NetError::Auth(
            "the peer's proof does not match: it holds another cluster secret".into(),
        )),
        Ok(other) => Err(NetError::Protocol(format!("expected Auth, got {other:?}"))),
        Err(NetError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Err(NetError::Auth(
            "the peer closed the connection: it holds another cluster secret".into(),
        )),
        Err(other) => Err(other),
    }
}

/// The accepting end of the handshake. Returns the authenticated peer's node id.
async fn handshake_acceptor<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    ctx: &NodeContext,
) -> Result<NodeId, NetError> {
    let (peer, connector_nonce) = match receive_one(stream).await? {
        Message::Hello { map_version, .. } if map_version != ctx.map_version() => {
            let stale = Message::StaleMap {
                expected: ctx.map_version(),
                got: map_version,
            };
            send_one(stream, ctx, stale).await?;
            return Err(NetError::StaleMap {
                expected: ctx.map_version(),
                got: map_version,
            });
        }
        Message::Hello { node, nonce, .. }
            if node != ctx.node && ctx.map.nodes.contains_key(&node) =>
        {
            (node, nonce)
        }
        Message::Hello { node, .. } => {
            return Err(NetError::Protocol(format!(
                "node {node} is not a peer in the map"
            )))
        }
        other => return Err(NetError::Protocol(format!("expected Hello, got {other:?}"))),
    };
    let acceptor_nonce = ctx.nonces.next();
    let hello = Message::Hello {
        node: ctx.node,
        map_version: ctx.map_version(),
        nonce: acceptor_nonce,
    };
    send_one(stream, ctx, hello).await?;
    let transcript = Transcript {
        connector: peer,
        acceptor: ctx.node,
        map_version: ctx.map_version(),
        connector_nonce,
        acceptor_nonce,
    };
    match receive_one(stream).await? {
        Message::Auth { mac } if transcript.verify(&ctx.secret, Role::Connector, &mac) => {}
        Message::Auth { .. } => {
            return Err(NetError::Auth(format!(
                "node {peer} does not know the cluster secret"
            )))
        }
        other => return Err(NetError::Protocol(format!("expected Auth, got {other:?}"))),
    }
    let mac = transcript.mac(&ctx.secret, Role::Acceptor);
    send_one(stream, ctx, Message::Auth { mac }).await?;
    Ok(peer)
}

/// A request sent and not yet answered. The permit bounds how many there are.
struct Waiting {
    reply: Waiter,
    _permit: OwnedSemaphorePermit,
}

enum Waiter {
    Command(oneshot::Sender<CommandResult>),
    Query(oneshot::Sender<QueryAnswer>),
}

/// The requests of one connection, shared by its writer (inserts) and reader (resolves), so
/// answers are delivered however busy the writer is.
type Pending = Arc<Mutex<FxHashMap<RequestId, Waiting>>>;

/// How a forwarder's connection ended.
enum LinkEnd {
    /// The link broke; reconnect.
    Broken(NetError),
    /// Every sender of the queue is gone: the node is stopping.
    Closed,
}

/// Carries the inputs for every partition of one remote node to that node.
struct Forwarder<N: PeerIo> {
    remote: NodeId,
    address: String,
    ctx: Arc<NodeContext>,
    io: Arc<N>,
    inputs: mpsc::Receiver<Input>,
    stats: Arc<LinkStats>,
}

impl<N: PeerIo> Forwarder<N> {
    async fn run(mut self) {
        let config = self.ctx.config;
        let mut backoff_ms = config.connect_backoff_initial_ms;
        let mut failures: u64 = 0;
        loop {
            match self.connect().await {
                Ok(stream) => {
                    tracing::info!(node = self.ctx.node, peer = self.remote, "peer link up");
                    backoff_ms = config.connect_backoff_initial_ms;
                    failures = 0;
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    self.stats.connected.store(true, Ordering::Relaxed);
                    let end = self.serve(stream).await;
                    self.stats.connected.store(false, Ordering::Relaxed);
                    match end {
                        LinkEnd::Closed => return,
                        LinkEnd::Broken(error) => {
                            tracing::warn!(node = self.ctx.node, peer = self.remote, %error, "peer link down")
                        }
                    }
                }
                Err(error) => {
                    failures += 1;
                    // The first failure is news; repeats while a node is down are not.
                    if failures == 1
                        || matches!(error, NetError::Auth(_) | NetError::StaleMap { .. })
                    {
                        tracing::warn!(node = self.ctx.node, peer = self.remote, address = self.address, %error, "cannot reach peer");
                    }
                }
            }
            if !self.refuse_until(Instant::now() + ms(backoff_ms)).await {
                return;
            }
            backoff_ms = (backoff_ms * 2).min(config.connect_backoff_max_ms);
        }
    }

    async fn connect(&self) -> Result<N::Stream, NetError> {
        let attempt = async {
            let mut stream = self.io.connect(&self.address).await?;
            handshake_connector(&mut stream, &self.ctx, self.remote).await?;
            Ok(stream)
        };
        match timeout(ms(self.ctx.config.handshake_timeout_ms), attempt).await {
            Ok(result) => result,
            Err(_) => Err(NetError::Timeout),
        }
    }

    /// While the link is down: refuse every input at once (dropping a reply sender tells its
    /// client the partition is unavailable) until `deadline`. False once the queue is closed.
    async fn refuse_until(&mut self, deadline: Instant) -> bool {
        loop {
            tokio::select! {
                input = self.inputs.recv() => match input {
                    Some(Input::Shutdown(ack)) => { let _ = ack.send(()); }
                    Some(_) => { self.stats.refused_while_down.fetch_add(1, Ordering::Relaxed); }
                    None => return false,
                },
                _ = sleep_until(deadline) => return true,
            }
        }
    }

    /// Runs one authenticated connection until it breaks or the queue closes.
    async fn serve(&mut self, stream: N::Stream) -> LinkEnd {
        let (read, write) = self.io.split(stream);
        let pending: Pending = Arc::default();
        let permits = Arc::new(Semaphore::new(self.ctx.config.pending_max));
        let mut reader = tokio::spawn(read_answers(
            read,
            Arc::clone(&pending),
            Arc::clone(&permits),
            Arc::clone(&self.ctx),
        ));
        let end = self
            .write_loop(write, &pending, &permits, &mut reader)
            .await;
        reader.abort();
        // Dropping the reply senders tells every waiting client the partition is unavailable.
        pending.lock().expect("pending lock").clear();
        end
    }

    async fn write_loop(
        &mut self,
        mut write: N::WriteHalf,
        pending: &Pending,
        permits: &Arc<Semaphore>,
        reader: &mut JoinHandle<NetError>,
    ) -> LinkEnd {
        let config = self.ctx.config;
        let mut buf = Vec::with_capacity(64 << 10);
        let mut next_id: RequestId = 1;
        // Heartbeats keep their own schedule: a link that carries only phase messages gets no
        // answers, so without them the reader could not tell it from a dead one.
        let mut heartbeat_at = Instant::now() + ms(config.heartbeat_ms);
        loop {
            let first = tokio::select! {
                biased;
                ended = &mut *reader => return LinkEnd::Broken(reader_error(ended)),
                _ = sleep_until(heartbeat_at) => {
                    heartbeat_at = Instant::now() + ms(config.heartbeat_ms);
                    None
                }
                input = self.inputs.recv() => match input {
                    Some(input) => Some(input),
                    None => return LinkEnd::Closed,
                },
            };
            buf.clear();
            let mut frame = FrameWriter::new(&mut buf, self.ctx.map_version());
            let mut next = first;
            while let Some(input) = next.take() {
                let Some(message) = to_message(input, &mut next_id, pending, permits).await else {
                    // The reader ended and closed the permits: the link is broken.
                    return LinkEnd::Broken(reader_error((&mut *reader).await));
                };
                if let Some(message) = message {
                    frame.push(&message);
                }
                if frame.count() < config.frame_messages_max {
                    next = self.inputs.try_recv().ok();
                }
            }
            let count = frame.count() as u64;
            frame.finish();
            if let Err(error) = write_frames(&mut write, &buf, config.write_timeout_ms).await {
                return LinkEnd::Broken(error);
            }
            self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
            self.stats.messages_sent.fetch_add(count, Ordering::Relaxed);
        }
    }
}

fn reader_error(ended: Result<NetError, tokio::task::JoinError>) -> NetError {
    ended.unwrap_or_else(|join| NetError::Protocol(format!("reader task failed: {join}")))
}

/// The message for `input`, registering a waiter for commands and queries. `Some(None)` for
/// an input that needs no message; `None` when the link broke while waiting for a permit.
async fn to_message(
    input: Input,
    next_id: &mut RequestId,
    pending: &Pending,
    permits: &Arc<Semaphore>,
) -> Option<Option<Message>> {
    let (reply, message) = match input {
        Input::Peer(peer) => return Some(Some(Message::Peer(peer))),
        Input::Shutdown(ack) => {
            let _ = ack.send(());
            return Some(None);
        }
        // `Client` sends command groups only to partitions in its own process; dropping the
        // reply answers each of the group's commands with `Unavailable`.
        Input::Commands { commands, .. } => {
            tracing::error!(
                commands = commands.len(),
                "a command group cannot cross a peer link; refused"
            );
            return Some(None);
        }
        // A client that stopped waiting needs no answer: skip the work.
        Input::Command { reply, .. } if reply.is_closed() => return Some(None),
        Input::Query { reply, .. } if reply.is_closed() => return Some(None),
        Input::Command {
            command,
            wait,
            reply,
        } => (
            Waiter::Command(reply),
            Message::Request {
                id: *next_id,
                wait,
                command,
            },
        ),
        Input::Query { query, reply } => (
            Waiter::Query(reply),
            Message::QueryRequest {
                id: *next_id,
                query,
            },
        ),
    };
    let permit = Arc::clone(permits).acquire_owned().await.ok()?;
    let waiting = Waiting {
        reply,
        _permit: permit,
    };
    let previous = pending
        .lock()
        .expect("pending lock")
        .insert(*next_id, waiting);
    assert!(previous.is_none(), "request ids are unique per connection");
    *next_id += 1;
    Some(Some(message))
}

/// The forwarder's reader: resolves answers until the link breaks, then closes the permits
/// so a writer waiting for one gives up too.
async fn read_answers<R: AsyncRead + Unpin>(
    read: R,
    pending: Pending,
    permits: Arc<Semaphore>,
    ctx: Arc<NodeContext>,
) -> NetError {
    let mut reader = FrameReader::new(BufReader::new(read));
    let silent_ms = ctx.config.peer_silent_max_ms;
    let error = loop {
        let frame = match timeout(ms(silent_ms), reader.next()).await {
            Err(_) => break NetError::Silent(silent_ms),
            Ok(Err(error)) => break error,
            Ok(Ok(frame)) => frame,
        };
        if let Err(error) = resolve(frame, &pending, &ctx) {
            break error;
        }
    };
    permits.close();
    error
}

fn resolve(frame: Frame, pending: &Pending, ctx: &NodeContext) -> Result<(), NetError> {
    if frame.map_version != ctx.map_version() {
        return Err(NetError::StaleMap {
            expected: ctx.map_version(),
            got: frame.map_version,
        });
    }
    let mut pending = pending.lock().expect("pending lock");
    for message in frame.messages {
        match message {
            Message::Reply { id, result } => match pending.remove(&id) {
                Some(Waiting {
                    reply: Waiter::Command(reply),
                    ..
                }) => {
                    let _ = reply.send(result);
                }
                _ => return Err(NetError::Protocol(format!("reply {id} answers no command"))),
            },
            Message::Answer { id, answer } => match pending.remove(&id) {
                Some(Waiting {
                    reply: Waiter::Query(reply),
                    ..
                }) => {
                    let _ = reply.send(answer);
                }
                _ => return Err(NetError::Protocol(format!("answer {id} answers no query"))),
            },
            // Dropping the waiter tells the client the partition is unavailable.
            Message::Refused { id } => drop(pending.remove(&id)),
            Message::StaleMap { expected, got } => {
                return Err(NetError::StaleMap {
                    expected: got,
                    got: expected,
                })
            }
            other => return Err(NetError::Protocol(format!("unexpected {other:?}"))),
        }
    }
    Ok(())
}

/// What an inbound connection's writer sends.
// Heartbeats are rare: boxing every reply to shrink them would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
enum Outbound {
    Message(Message),
    /// Echo of a heartbeat: any frame will do, an empty one if nothing else is queued.
    Heartbeat,
}

/// Accepts peer connections for a node and serves each on its own task.
pub struct PeerListener {
    address: SocketAddr,
    /// The accept loop; held only so that dropping the listener stops it and its connections.
    _task: AbortOnDrop,
}

impl PeerListener {
    /// Serves `listener` for the node of `ctx`, handing requests to `client`'s local inboxes.
    fn start<N: PeerIo>(
        listener: TcpListener,
        ctx: Arc<NodeContext>,
        client: Client,
        io: Arc<N>,
    ) -> io::Result<PeerListener> {
        let address = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, ctx, client, io));
        Ok(PeerListener {
            address,
            _task: AbortOnDrop(task),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

async fn accept_loop<N: PeerIo>(
    listener: TcpListener,
    ctx: Arc<NodeContext>,
    client: Client,
    io: Arc<N>,
) {
    let slots = Arc::new(Semaphore::new(ctx.config.inbound_connections_max));
    // Dropping these (when this task is aborted) aborts every connection. Finished ones are
    // pruned at each accept, so at most one more than the slots allow is ever held. (A plain
    // list rather than a `JoinSet`, which the simulator's runtime does not have.)
    let mut connections: Vec<AbortOnDrop> = Vec::new();
    loop {
        let (stream, address) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, usually: wait instead of spinning.
                tracing::warn!(node = ctx.node, %error, "accept failed");
                tokio::time::sleep(ms(100)).await;
                continue;
            }
        };
        connections.retain(|connection| !connection.0.is_finished());
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(node = ctx.node, %address, "too many peer connections; closing one");
            continue;
        };
        let (ctx, client, io) = (Arc::clone(&ctx), client.clone(), Arc::clone(&io));
        connections.push(AbortOnDrop(tokio::spawn(async move {
            if let Err(error) = serve_inbound(stream, address, &ctx, client, &*io).await {
                log_inbound_end(&ctx, address, &error);
            }
            drop(slot);
        })));
    }
}

fn log_inbound_end(ctx: &NodeContext, address: SocketAddr, error: &NetError) {
    match error {
        NetError::Auth(_) | NetError::StaleMap { .. } | NetError::Protocol(_) => {
            tracing::warn!(node = ctx.node, %address, %error, "peer connection refused")
        }
        _ => tracing::info!(node = ctx.node, %address, %error, "peer connection closed"),
    }
}

async fn serve_inbound<N: PeerIo>(
    stream: TcpStream,
    address: SocketAddr,
    ctx: &Arc<NodeContext>,
    client: Client,
    io: &N,
) -> Result<(), NetError> {
    let mut stream = io.accepted(stream, address)?;
    let peer = match timeout(
        ms(ctx.config.handshake_timeout_ms),
        handshake_acceptor(&mut stream, ctx),
    )
    .await
    {
        Ok(peer) => peer?,
        Err(_) => return Err(NetError::Timeout),
    };
    tracing::info!(node = ctx.node, peer, %address, "peer authenticated");
    let (read, write) = io.split(stream);
    // Every queued reply holds a request permit, so the queue never holds more than that.
    let (outbound, queue) = mpsc::channel(ctx.config.inbound_requests_max + 64);
    let writer = AbortOnDrop(tokio::spawn(write_outbound(write, queue, Arc::clone(ctx))));
    let result = read_inbound(read, ctx, &client, outbound).await;
    drop(writer);
    result
}

async fn read_inbound<R: AsyncRead + Unpin>(
    read: R,
    ctx: &Arc<NodeContext>,
    client: &Client,
    outbound: mpsc::Sender<Outbound>,
) -> Result<(), NetError> {
    let mut reader = FrameReader::new(BufReader::new(read));
    let permits = Arc::new(Semaphore::new(ctx.config.inbound_requests_max));
    let silent_ms = ctx.config.peer_silent_max_ms;
    let closed = || NetError::Protocol("connection writer stopped".into());
    loop {
        let frame = match timeout(ms(silent_ms), reader.next()).await {
            Err(_) => return Err(NetError::Silent(silent_ms)),
            Ok(frame) => frame?,
        };
        if frame.map_version != ctx.map_version() {
            tracing::warn!(
                node = ctx.node,
                expected = ctx.map_version(),
                got = frame.map_version,
                "frame of another map version refused"
            );
            let stale = Message::StaleMap {
                expected: ctx.map_version(),
                got: frame.map_version,
            };
            outbound
                .send(Outbound::Message(stale))
                .await
                .map_err(|_| closed())?;
            continue;
        }
        if frame.messages.is_empty() {
            outbound
                .send(Outbound::Heartbeat)
                .await
                .map_err(|_| closed())?;
        }
        for message in frame.messages {
            route(message, ctx, client, &permits, &outbound).await?;
        }
    }
}

/// Hands one inbound message to its local partition.
async fn route(
    message: Message,
    ctx: &NodeContext,
    client: &Client,
    permits: &Arc<Semaphore>,
    outbound: &mpsc::Sender<Outbound>,
) -> Result<(), NetError> {
    let partitions = ctx.map.partitions();
    let (id, partition, input, answer) = match message {
        Message::Peer(peer) => {
            let partition = peer.destination(partitions);
            if !ctx.owns(partition) {
                tracing::warn!(
                    node = ctx.node,
                    partition,
                    "phase message for a partition not owned here dropped"
                );
            } else if client.inbox(partition).try_send(Input::Peer(peer)).is_err() {
                tracing::debug!(
                    node = ctx.node,
                    partition,
                    "phase message dropped: inbox full"
                );
            }
            return Ok(());
        }
        Message::Request { id, wait, command } => {
            let (reply, answer) = oneshot::channel();
            let partition = ctx.map.partition_of(command_account(&command));
            let input = Input::Command {
                command,
                wait,
                reply,
            };
            (id, partition, input, Answer::Command(answer))
        }
        Message::QueryRequest { id, query } => {
            let (reply, answer) = oneshot::channel();
            let partition = match &query {
                Query::Account(account) => ctx.map.partition_of(account),
                Query::Transfer(key) => ctx.map.partition_of(&key.from),
            };
            (
                id,
                partition,
                Input::Query { query, reply },
                Answer::Query(answer),
            )
        }
        other => {
            return Err(NetError::Protocol(format!(
                "unexpected {other:?} after the handshake"
            )))
        }
    };
    let refused = || Outbound::Message(Message::Refused { id });
    let closed = || NetError::Protocol("connection writer stopped".into());
    let permit = Arc::clone(permits)
        .acquire_owned()
        .await
        .expect("never closed");
    if !ctx.owns(partition) {
        tracing::warn!(
            node = ctx.node,
            partition,
            "request for a partition not owned here refused"
        );
        return outbound.send(refused()).await.map_err(|_| closed());
    }
    if client.inbox(partition).send(input).await.is_err() {
        return outbound.send(refused()).await.map_err(|_| closed());
    }
    let outbound = outbound.clone();
    tokio::spawn(async move {
        let message = match answer {
            Answer::Command(answer) => answer.await.map(|result| Message::Reply { id, result }),
            Answer::Query(answer) => answer.await.map(|answer| Message::Answer { id, answer }),
        };
        // A partition that stopped before answering dropped the sender: refuse.
        let message = message.unwrap_or(Message::Refused { id });
        let _ = outbound.send(Outbound::Message(message)).await;
        drop(permit);
    });
    Ok(())
}

/// Where the answer to an inbound request will arrive.
enum Answer {
    Command(oneshot::Receiver<CommandResult>),
    Query(oneshot::Receiver<QueryAnswer>),
}

/// An inbound connection's writer: batches whatever is queued into one frame per write.
async fn write_outbound<W: AsyncWrite + Unpin>(
    mut write: W,
    mut queue: mpsc::Receiver<Outbound>,
    ctx: Arc<NodeContext>,
) {
    let mut buf = Vec::with_capacity(64 << 10);
    while let Some(first) = queue.recv().await {
        buf.clear();
        let mut frame = FrameWriter::new(&mut buf, ctx.map_version());
        let mut next = Some(first);
        while let Some(item) = next.take() {
            if let Outbound::Message(message) = item {
                frame.push(&message);
            }
            if !frame.is_full() {
                next = queue.try_recv().ok();
            }
        }
        frame.finish();
        if let Err(error) = write_frames(&mut write, &buf, ctx.config.write_timeout_ms).await {
            tracing::info!(node = ctx.node, %error, "peer connection write failed");
            return;
        }
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

/// Starts node `node` of `map`: binds its peer address, recovers its partitions from
/// `storages` (exactly the partitions the map gives it), links to every other node and serves
/// peers. `secret` is the cluster secret every node shares.
pub async fn start_node<S: Storage>(
    map: &PartitionMap,
    node: NodeId,
    secret: &[u8],
    storages: Vec<(PartitionId, S)>,
    config: NodeConfig,
) -> Result<ClusterNode, NodeError> {
    map.validate()?;
    let address = &map
        .nodes
        .get(&node)
        .ok_or(NodeError::UnknownNode(node))?
        .peer;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| NodeError::Bind {
            address: address.clone(),
            source,
        })?;
    start_node_on(listener, map, node, secret, storages, config).await
}

/// [`start_node`] on a listener the caller bound (tests bind port 0 first to learn the port).
pub async fn start_node_on<S: Storage>(
    listener: TcpListener,
    map: &PartitionMap,
    node: NodeId,
    secret: &[u8],
    storages: Vec<(PartitionId, S)>,
    config: NodeConfig,
) -> Result<ClusterNode, NodeError> {
    start_node_with(Tcp, listener, map, node, secret, storages, config).await
}

/// [`start_node_on`] with the peer byte streams of `io`: the simulator's wrapped sockets
/// (see [`PeerIo`]); production passes [`Tcp`].
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
