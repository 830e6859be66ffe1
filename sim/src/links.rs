//! The peer links between server nodes: production's `walletd_runtime::net` over madsim's
//! simulated TCP, through streams the simulator wraps.
//!
//! Every server node starts with `net::start_node_with` and a [`NodeIo`], so its forwarders,
//! framing, batching, handshake (HMAC, map version) and reconnects are the code `wallet node`
//! runs. `NodeIo` opens and accepts madsim TCP streams and wraps each end in a [`SimStream`],
//! which adds what a socket cannot be asked for:
//!
//! - **Trace.** Every flushed write (whole frames: the links write frames and flush) goes
//!   into the run's trace with its time, link and bytes; `--verbose` decodes the frames.
//! - **Bytes on the wire.** Ends are paired (connector and acceptor of one connection) and
//!   count the bytes they flushed and read, so the harness knows when nothing is in flight.
//! - **Resets.** An end can be armed to break at its next flush, either mid-frame (a prefix of
//!   the frame goes out, then this end fails: the other end reads a torn frame, then EOF) or
//!   right after a whole frame (the frame arrives but its answer never can: the sender
//!   resends, on a new connection, which is how duplicates reach a TCP peer). A broken end
//!   fails every later read and write, and wakes a reader waiting on it, so both of the
//!   link's tasks notice at once and drop the socket, as after a real reset.
//!
//! madsim's TCP itself supplies the rest: latency per flushed write from the network
//! configuration (in order on one connection), packet loss as retransmission (a lost write
//! is retried with backoff, and everything behind it waits), clogged links that hold data
//! until they clear, refused connections to a node that is down or cut off, and EOF or
//! `ConnectionReset` when the other end's process dies. What was written before a connection
//! broke still arrives if the receiving end is alive: that, and reconnects, are where the
//! messages of a TCP link can be reordered.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use walletd_core::wire::{decode_frame_body, frame_body_len, FRAME_HEADER_LEN};
use walletd_runtime::net::{PeerIo, Tcp};

use crate::network::HostId;
use crate::rng::SharedRng;
use crate::trace::Trace;

/// The port every server node's peer listener binds.
pub const PEER_PORT: u16 = 7000;
/// One-way latency of a flushed write on a healthy network (madsim's `send_latency`).
pub const LATENCY_MIN: Duration = Duration::from_micros(200);
pub const LATENCY_MAX: Duration = Duration::from_micros(3_000);

/// The simulated address of server node `host`.
pub fn server_ip(host: HostId) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, host as u8 + 1))
}

/// The server node at `ip` (see [`server_ip`]).
fn host_of(ip: IpAddr) -> HostId {
    match ip {
        IpAddr::V4(v4) if v4.octets()[..3] == [10, 0, 0] => HostId::from(v4.octets()[3]) - 1,
        _ => HostId::MAX,
    }
}

/// How an armed end breaks at its next flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Break {
    /// Send a prefix of what is being flushed, then fail.
    MidFrame,
    /// Send all of it, then fail.
    AfterFrame,
}

/// Which end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Connector,
    Acceptor,
}

/// One end of a connection.
#[derive(Debug)]
struct End {
    host: HostId,
    peer_host: HostId,
    side: Side,
    /// The other end, once both are known.
    partner: Option<u64>,
    flushed: u64,
    read: u64,
    /// The stream still exists (a killed node's streams are dropped with its tasks).
    alive: bool,
    armed: Option<Break>,
    broken: bool,
    /// The task waiting to read, woken when the end breaks.
    reader: Option<Waker>,
}

/// Peer-link counters of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkCounters {
    pub connections: u64,
    pub frames: u64,
    pub bytes: u64,
    pub resets: u64,
    /// Connections broken right after a whole frame (`dup`).
    pub broken_after_frame: u64,
}

impl LinksState {
    /// Breaks end `id`: every later read and write fails, and a waiting reader wakes.
    fn break_end(&mut self, id: u64) {
        let end = self.ends.get_mut(&id).expect("open end");
        end.broken = true;
        if let Some(reader) = end.reader.take() {
            reader.wake();
        }
    }
}

#[derive(Debug, Default)]
struct LinksState {
    next_id: u64,
    ends: BTreeMap<u64, End>,
    /// Ends waiting for their other end, by (connector address, acceptor address).
    unpaired: BTreeMap<(SocketAddr, SocketAddr), VecDeque<u64>>,
    /// Share of flushed writes after which the connection breaks, in parts per million.
    dup_ppm: u32,
    counters: LinkCounters,
}

/// Every peer connection of a run. Shared by the nodes (through [`NodeIo`]) and the harness.
pub struct Links {
    state: Mutex<LinksState>,
    rng: SharedRng,
    trace: Trace,
}

impl Links {
    pub fn new(rng: SharedRng, trace: Trace) -> Links {
        Links {
            state: Mutex::new(LinksState::default()),
            rng,
            trace,
        }
    }

    fn lock(&self) -> MutexGuard<'_, LinksState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn counters(&self) -> LinkCounters {
        self.lock().counters
    }

    /// From now on, each flushed write breaks its connection after it with this chance.
    pub fn set_dup_ppm(&self, ppm: u32) {
        self.lock().dup_ppm = ppm;
    }

    /// Arms one live connection end, chosen by `pick`, to break mid-frame at its next
    /// write. The link between the two hosts, or `None` if no connection is open.
    pub fn reset_one(&self, pick: impl FnOnce(usize) -> usize) -> Option<(HostId, HostId)> {
        let mut state = self.lock();
        let live: Vec<u64> = state
            .ends
            .iter()
            .filter(|(_, end)| end.alive && !end.broken && end.armed.is_none())
            .map(|(id, _)| *id)
            .collect();
        if live.is_empty() {
            return None;
        }
        let end = state.ends.get_mut(&live[pick(live.len())]).expect("live");
        end.armed = Some(Break::MidFrame);
        Some((end.host, end.peer_host))
    }

    /// Bytes flushed by a live end and not yet read by the other, while the other can still
    /// read them. Zero when no peer message is on the wire.
    pub fn in_flight(&self) -> u64 {
        let state = self.lock();
        let mut bytes = 0;
        for end in state.ends.values().filter(|end| end.alive) {
            match end.partner.and_then(|p| state.ends.get(&p)) {
                // A sender that is gone counts for nothing: madsim reuses a restarted node's
                // ports, so an end of an earlier incarnation can be taken for the partner of a
                // new connection and would hold the count up forever (seed 439).
                Some(sender) if !sender.alive => {}
                Some(sender) => bytes += sender.flushed.saturating_sub(end.read),
                // A connection not accepted yet: what its connector sent waits for the acceptor.
                None if end.side == Side::Connector => bytes += end.flushed,
                None => {}
            }
        }
        bytes
    }

    /// Registers a new end of a connection from `local` to `peer`, as `side`.
    fn open(&self, host: HostId, local: SocketAddr, peer: SocketAddr, side: Side) -> u64 {
        let mut state = self.lock();
        let state = &mut *state;
        let id = state.next_id;
        state.next_id += 1;
        let key = match side {
            Side::Connector => (local, peer),
            Side::Acceptor => (peer, local),
        };
        let waiting = state.unpaired.entry(key).or_default();
        let partner = waiting
            .iter()
            .position(|other| state.ends[other].side != side)
            .and_then(|i| waiting.remove(i));
        if partner.is_none() {
            waiting.push_back(id);
        } else if waiting.is_empty() {
            state.unpaired.remove(&key);
        }
        if let Some(partner) = partner {
            state.ends.get_mut(&partner).expect("unpaired end").partner = Some(id);
        }
        if side == Side::Connector {
            state.counters.connections += 1;
        }
        state.ends.insert(
            id,
            End {
                host,
                peer_host: host_of(peer.ip()),
                side,
                partner,
                flushed: 0,
                read: 0,
                alive: true,
                armed: None,
                broken: false,
                reader: None,
            },
        );
        id
    }

    /// The stream of end `id` was dropped; forget ends nothing can reach any more.
    fn close(&self, id: u64, local: SocketAddr, peer: SocketAddr) {
        let mut state = self.lock();
        let Some(end) = state.ends.get_mut(&id) else {
            return;
        };
        end.alive = false;
        let (side, partner) = (end.side, end.partner);
        match partner {
            Some(partner) if state.ends.get(&partner).is_some_and(|p| p.alive) => {}
            Some(partner) => {
                state.ends.remove(&partner);
                state.ends.remove(&id);
            }
            None => {
                let key = match side {
                    Side::Connector => (local, peer),
                    Side::Acceptor => (peer, local),
                };
                if let Some(waiting) = state.unpaired.get_mut(&key) {
                    waiting.retain(|other| *other != id);
                    if waiting.is_empty() {
                        state.unpaired.remove(&key);
                    }
                }
                state.ends.remove(&id);
            }
        }
    }

    /// Decides how a flush of `len` bytes on end `id` goes: how many bytes leave, and whether
    /// the end breaks after them.
    fn plan_flush(&self, id: u64, len: usize) -> (usize, bool) {
        let mut state = self.lock();
        let dup_ppm = state.dup_ppm;
        let end = state.ends.get_mut(&id).expect("open end");
        let mut armed = end.armed.take();
        if armed.is_none() && dup_ppm > 0 && self.rng.lock().gen_range(0..1_000_000) < dup_ppm {
            armed = Some(Break::AfterFrame);
        }
        match armed {
            None => (len, false),
            Some(Break::AfterFrame) => {
                state.counters.broken_after_frame += 1;
                (len, true)
            }
            Some(Break::MidFrame) => {
                state.counters.resets += 1;
                let cut = if len > 1 {
                    self.rng.lock().gen_range(1..len)
                } else {
                    0
                };
                (cut, true)
            }
        }
    }

    /// `bytes` left end `id`; it breaks now if `then_break`.
    fn flushed(&self, id: u64, bytes: &[u8], whole: bool, then_break: bool) {
        let (host, peer_host) = {
            let mut state = self.lock();
            state.counters.frames += u64::from(whole);
            state.counters.bytes += bytes.len() as u64;
            let end = state.ends.get_mut(&id).expect("open end");
            end.flushed += bytes.len() as u64;
            let link = (end.host, end.peer_host);
            if then_break {
                state.break_end(id);
            }
            link
        };
        let now = madsim::time::TimeHandle::current().elapsed().as_nanos() as u64;
        let (kind, what) = match (whole, then_break) {
            (true, false) => (0, "frames"),
            (true, true) => (1, "frames, then broken"),
            (false, _) => (2, "torn frame, then reset"),
        };
        let words = [now, host.into(), peer_host.into(), id, kind];
        self.trace.record_raw(&words, bytes);
        if self.trace.echoes() {
            let frames = if whole {
                describe_frames(bytes)
            } else {
                String::new()
            };
            println!(
                "trace: {now} {host}>{peer_host} c{id} {what} ({} bytes) {frames}",
                bytes.len()
            );
        }
    }
}

/// The messages of whole frames, for `--verbose`.
fn describe_frames(mut bytes: &[u8]) -> String {
    let mut out = String::new();
    while bytes.len() >= FRAME_HEADER_LEN {
        let header: [u8; FRAME_HEADER_LEN] = bytes[..FRAME_HEADER_LEN].try_into().expect("len");
        let Ok(len) = frame_body_len(&header) else {
            break;
        };
        let Some(body) = bytes.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
            break;
        };
        match decode_frame_body(&header, body) {
            Ok(frame) if frame.messages.is_empty() => out.push_str("[heartbeat] "),
            Ok(frame) => {
                let _ = write!(out, "{:?} ", frame.messages);
            }
            Err(error) => {
                let _ = write!(out, "[{error}] ");
            }
        }
        bytes = &bytes[FRAME_HEADER_LEN + len..];
    }
    out
}

/// The peer streams of one incarnation of server node `host`.
pub struct NodeIo {
    links: Arc<Links>,
    host: HostId,
}

impl NodeIo {
    pub fn new(links: Arc<Links>, host: HostId) -> NodeIo {
        NodeIo { links, host }
    }

    fn wrap(&self, inner: TcpStream, side: Side) -> io::Result<SimStream> {
        let (local, peer) = (inner.local_addr()?, inner.peer_addr()?);
        let id = self.links.open(self.host, local, peer, side);
        Ok(SimStream {
            inner,
            links: Arc::clone(&self.links),
            id,
            local,
            peer,
            unflushed: Vec::new(),
            sent: 0,
            plan: None,
        })
    }
}

impl PeerIo for NodeIo {
    type Stream = SimStream;
    type ReadHalf = tokio::io::ReadHalf<SimStream>;
    type WriteHalf = tokio::io::WriteHalf<SimStream>;

    async fn connect(&self, address: &str) -> io::Result<SimStream> {
        let stream = Tcp.connect(address).await?;
        self.wrap(stream, Side::Connector)
    }

    async fn accepted(&self, stream: TcpStream, peer: SocketAddr) -> io::Result<SimStream> {
        let stream = Tcp.accepted(stream, peer).await?;
        self.wrap(stream, Side::Acceptor)
    }

    fn split(&self, stream: SimStream) -> (Self::ReadHalf, Self::WriteHalf) {
        tokio::io::split(stream)
    }
}

/// One end of a peer connection: madsim's stream, traced, counted and breakable.
pub struct SimStream {
    inner: TcpStream,
    links: Arc<Links>,
    id: u64,
    local: SocketAddr,
    peer: SocketAddr,
    /// Written and not flushed yet (so that a reset can cut it).
    unflushed: Vec<u8>,
    /// How much of `unflushed` the flush in progress has handed to the socket.
    sent: usize,
    /// The flush in progress: bytes to send, and whether to break after them.
    plan: Option<(usize, bool)>,
}

fn reset() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "connection reset (simulated)",
    )
}

impl SimStream {
    fn broken(&self) -> bool {
        self.links
            .lock()
            .ends
            .get(&self.id)
            .is_none_or(|end| end.broken)
    }
}

impl Drop for SimStream {
    fn drop(&mut self) {
        self.links.close(self.id, self.local, self.peer);
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        {
            let mut state = self.links.lock();
            let end = state.ends.get_mut(&self.id).expect("open end");
            if end.broken {
                return Poll::Ready(Err(reset()));
            }
            end.reader = Some(cx.waker().clone());
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            let mut state = self.links.lock();
            state.ends.get_mut(&self.id).expect("open end").read += read;
        }
        polled
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.broken() {
            return Poll::Ready(Err(reset()));
        }
        self.unflushed.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.broken() {
            return Poll::Ready(Err(reset()));
        }
        if self.unflushed.is_empty() {
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        let this = &mut *self;
        let (len, then_break) = *this
            .plan
            .get_or_insert_with(|| this.links.plan_flush(this.id, this.unflushed.len()));
        while this.sent < len {
            let chunk = &this.unflushed[this.sent..len];
            match Pin::new(&mut this.inner).poll_write(cx, chunk) {
                Poll::Ready(Ok(n)) => this.sent += n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if len > 0 {
            match Pin::new(&mut this.inner).poll_flush(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
        let whole = len == this.unflushed.len();
        this.links
            .flushed(this.id, &this.unflushed[..len], whole, then_break);
        this.unflushed.clear();
        this.sent = 0;
        this.plan = None;
        if whole {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(reset()))
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use madsim::runtime::Runtime;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    use super::*;
    use crate::rng::Purpose;

    /// Runs `client` on server node 1 against a listener on server node 0 whose accepted
    /// stream `server` handles; both get the run's [`Links`].
    fn connected<C, S, CF, SF, T>(client: C, server: S) -> (Arc<Links>, T)
    where
        C: FnOnce(Arc<Links>, SimStream) -> CF + Send + 'static,
        CF: std::future::Future<Output = ()> + Send,
        S: FnOnce(Arc<Links>, SimStream) -> SF + Send + 'static,
        SF: std::future::Future<Output = T> + Send,
        T: Send + 'static,
    {
        let runtime = Runtime::with_seed_and_config(1, madsim::Config::default());
        let links = Arc::new(Links::new(
            SharedRng::new(1, Purpose::Links),
            Trace::default(),
        ));
        let (ready, listening) = oneshot::channel();
        let accepting = Arc::clone(&links);
        let served = runtime
            .create_node()
            .ip(server_ip(0))
            .build()
            .spawn(async move {
                let listener = TcpListener::bind((server_ip(0), PEER_PORT)).await.unwrap();
                ready.send(()).unwrap();
                let (stream, peer) = listener.accept().await.unwrap();
                let io = NodeIo::new(Arc::clone(&accepting), 0);
                server(accepting, io.accepted(stream, peer).await.unwrap()).await
            });
        let connecting = Arc::clone(&links);
        runtime
            .create_node()
            .ip(server_ip(1))
            .build()
            .spawn(async move {
                listening.await.unwrap();
                let io = NodeIo::new(Arc::clone(&connecting), 1);
                let stream = io.connect(&format!("{}:{PEER_PORT}", server_ip(0))).await;
                client(connecting, stream.unwrap()).await
            });
        let result = runtime.block_on(served).unwrap();
        (links, result)
    }

    #[test]
    fn bytes_in_flight_are_counted_until_read() {
        let (links, read) = connected(
            |links, mut stream| async move {
                stream.write_all(&[7; 10]).await.unwrap();
                stream.flush().await.unwrap();
                assert_eq!(links.in_flight(), 10, "sent, not yet arrived");
                std::future::pending::<()>().await;
            },
            |links, mut stream| async move {
                let mut buf = [0; 10];
                stream.read_exact(&mut buf).await.unwrap();
                assert_eq!(links.in_flight(), 0);
                buf
            },
        );
        assert_eq!(read, [7; 10]);
        assert_eq!(links.counters().frames, 1);
    }

    #[test]
    fn a_reset_cuts_a_write_mid_frame_and_the_other_end_reads_eof() {
        let (links, read) = connected(
            |links, mut stream| async move {
                // The connector's end, the first one opened.
                assert_eq!(links.reset_one(|_| 0), Some((1, 0)));
                stream.write_all(&[1; 100]).await.unwrap();
                let flushed = stream.flush().await;
                assert_eq!(flushed.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
                let mut buf = [0; 1];
                let read = stream.read(&mut buf).await;
                assert_eq!(read.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
            },
            |_, mut stream| async move {
                let mut buf = Vec::new();
                stream.read_to_end(&mut buf).await.unwrap();
                buf.len()
            },
        );
        assert!((1..100).contains(&read), "a torn prefix, then EOF: {read}");
        assert_eq!(links.counters().resets, 1);
        assert_eq!(links.in_flight(), 0);
    }
}
