//! The [`PeerListener`]: accepts peer connections, authenticates them, hands each request to
//! the local partition's inbox and writes the answers back in frames.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::timeout;

use crate::driver::{CommandResult, Input, QueryAnswer};
use crate::engine::Client;
use crate::transport::{by_destination, PeerMessage};
use walletd_core::replica::RaftMessage;
use walletd_core::wire::{FrameWriter, Message};

use super::*;

/// What an inbound connection's writer sends.
// Heartbeats are rare: boxing every reply to shrink them would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
pub(super) enum Outbound {
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
    pub(super) fn start<N: PeerIo>(
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

pub(super) async fn accept_loop<N: PeerIo>(
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

pub(super) fn log_inbound_end(ctx: &NodeContext, address: SocketAddr, error: &NetError) {
    match error {
        NetError::Accept(_)
        | NetError::Auth(_)
        | NetError::StaleMap { .. }
        | NetError::Protocol(_) => {
            tracing::warn!(node = ctx.node, %address, %error, "peer connection refused")
        }
        _ => tracing::info!(node = ctx.node, %address, %error, "peer connection closed"),
    }
}

pub(super) async fn serve_inbound<N: PeerIo>(
    stream: TcpStream,
    address: SocketAddr,
    ctx: &Arc<NodeContext>,
    client: Client,
    io: &N,
) -> Result<(), NetError> {
    // The stream's own handshake (TLS) and the peer handshake share one deadline.
    let opening = async {
        let mut stream = io
            .accepted(stream, address)
            .await
            .map_err(NetError::Accept)?;
        let peer = handshake_acceptor(&mut stream, ctx).await?;
        Ok::<_, NetError>((stream, peer))
    };
    let (stream, peer) = match timeout(ms(ctx.config.handshake_timeout_ms), opening).await {
        Ok(opened) => opened?,
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

pub(super) async fn read_inbound<R: AsyncRead + Unpin>(
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
            ctx.saw_map_version(frame.map_version);
            tracing::info!(
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
pub(super) async fn route(
    message: Message,
    ctx: &NodeContext,
    client: &Client,
    permits: &Arc<Semaphore>,
    outbound: &mpsc::Sender<Outbound>,
) -> Result<(), NetError> {
    let (id, partition, input, answer) = match message {
        Message::Peers(peers) => {
            deliver_peers(peers, ctx, client);
            return Ok(());
        }
        Message::Raft {
            partition,
            messages,
        } => {
            deliver_raft(partition, messages, ctx, client);
            return Ok(());
        }
        Message::Membership {
            partition,
            from,
            message,
        } => {
            let input = Input::Membership {
                partition,
                from,
                message,
            };
            deliver_to_replica(partition, input, ctx, client);
            return Ok(());
        }
        Message::CatchUp {
            partition,
            from,
            message,
        } => {
            let input = Input::CatchUp {
                partition,
                from,
                message,
            };
            deliver_to_replica(partition, input, ctx, client);
            return Ok(());
        }
        Message::Request { id, wait, command } => {
            let (reply, answer) = oneshot::channel();
            let partition = command.partition(ctx.partitions);
            let input = Input::Command {
                command,
                wait,
                reply,
            };
            (id, partition, input, Answer::Command(answer))
        }
        Message::QueryRequest { id, query } => {
            let (reply, answer) = oneshot::channel();
            let partition = query.partition(ctx.partitions);
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

/// Hands phase messages to their local partitions, those for one partition as one input (a
/// `Peers` message holds those for one partition, which is then delivered without a copy). A
/// group for a partition not owned here is dropped (its sender holds another view of the
/// cluster), as is one whose inbox is full: phase messages are best effort, and their
/// coordinators resend.
pub(super) fn deliver_peers(peers: Vec<PeerMessage>, ctx: &NodeContext, client: &Client) {
    for (partition, group) in by_destination(peers, ctx.partitions) {
        let count = group.len();
        if !ctx.owns(partition) {
            tracing::warn!(
                node = ctx.node,
                partition,
                count,
                "phase messages for a partition not owned here dropped"
            );
        } else if client
            .inbox(partition)
            .try_send(Input::Peers(group))
            .is_err()
        {
            tracing::debug!(
                node = ctx.node,
                partition,
                count,
                "phase messages dropped: inbox full"
            );
        }
    }
}

/// Hands a group's Raft messages to the local replica of `partition`, if there is one, as
/// one input; dropped when its inbox is full (Raft resends).
pub(super) fn deliver_raft(
    partition: PartitionId,
    messages: Vec<RaftMessage>,
    ctx: &NodeContext,
    client: &Client,
) {
    let input = Input::Raft {
        partition,
        messages,
    };
    deliver_to_replica(partition, input, ctx, client);
}

/// Hands a group message to the local replica of `partition`, if there is one; dropped
/// when its inbox is full (the sender resends).
fn deliver_to_replica(partition: PartitionId, input: Input, ctx: &NodeContext, client: &Client) {
    if partition >= ctx.partitions || !ctx.owns(partition) {
        tracing::warn!(
            node = ctx.node,
            partition,
            "group message for a partition with no replica here dropped"
        );
        return;
    }
    if client.inbox(partition).try_send(input).is_err() {
        tracing::debug!(
            node = ctx.node,
            partition,
            "group message dropped: inbox full"
        );
    }
}

/// Where the answer to an inbound request will arrive.
pub(super) enum Answer {
    Command(oneshot::Receiver<CommandResult>),
    Query(oneshot::Receiver<QueryAnswer>),
}

/// An inbound connection's writer: batches whatever is queued into one frame per write.
pub(super) async fn write_outbound<W: AsyncWrite + Unpin>(
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
