//! The [`Forwarder`]: one per remote node; it carries the inputs for that node's partitions
//! over one authenticated connection and resolves their answers by request id.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;
use tokio::io::{AsyncRead, BufReader};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout, Instant};

use crate::driver::{CommandResult, Input, Query, QueryAnswer};
use walletd_core::ledger::Command;
use walletd_core::model::partition::NodeId;
use walletd_core::wire::{Frame, FrameWriter, Message, RequestId};

use super::*;

/// A request sent and not yet answered. The permit bounds how many there are.
pub(super) struct Waiting {
    reply: Waiter,
    /// What was asked, kept to ask again on the next link if this one is refused for a
    /// stale map (both are `Copy`: keeping them costs no allocation).
    request: Request,
    _permit: OwnedSemaphorePermit,
}

/// The question of a [`Waiting`] request.
#[derive(Clone)]
pub(super) enum Request {
    Command { command: Command, wait: bool },
    Query(Query),
}

impl Waiting {
    /// The input that asks the same question again, answered to the same client.
    fn into_input(self) -> Input {
        match (self.reply, self.request) {
            (Waiter::Command(reply), Request::Command { command, wait }) => Input::Command {
                command,
                wait,
                reply,
            },
            (Waiter::Query(reply), Request::Query(query)) => Input::Query { query, reply },
            _ => unreachable!("a waiter is registered with a request of its own kind"),
        }
    }
}

pub(super) enum Waiter {
    Command(oneshot::Sender<CommandResult>),
    Query(oneshot::Sender<QueryAnswer>),
}

/// The requests of one connection, shared by its writer (inserts) and reader (resolves), so
/// answers are delivered however busy the writer is.
pub(super) type Pending = Arc<Mutex<FxHashMap<RequestId, Waiting>>>;

/// How a forwarder's connection ended.
pub(super) enum LinkEnd {
    /// The link broke; reconnect.
    Broken(NetError),
    /// Every sender of the queue is gone: the node is stopping.
    Closed,
}

/// A time during which a forwarder and its peer refuse each other for holding different maps.
#[derive(Default)]
struct StaleEpisode {
    /// When the first refusal came (`None` while the maps agree).
    since: Option<Instant>,
    /// Whether the wait ran out, and was logged.
    given_up: bool,
}

impl StaleEpisode {
    /// True while the forwarder should hold its queue for the two maps to agree.
    fn still_waiting(&mut self, wait_max_ms: u64) -> bool {
        let since = *self.since.get_or_insert_with(Instant::now);
        !self.given_up && since.elapsed() < ms(wait_max_ms)
    }

    /// Ends the wait; true the first time, so it is logged once.
    fn give_up(&mut self) -> bool {
        !std::mem::replace(&mut self.given_up, true)
    }
}

/// Carries the inputs for every partition of one remote node to that node.
pub(super) struct Forwarder<N: PeerIo> {
    pub(super) remote: NodeId,
    pub(super) ctx: Arc<NodeContext>,
    pub(super) io: Arc<N>,
    pub(super) inputs: mpsc::Receiver<Input>,
    /// Requests that were waiting on a link refused for a stale map: the next link sends
    /// them first. Empty whenever the link is down for any other reason.
    pub(super) resend: VecDeque<Input>,
    pub(super) stats: Arc<LinkStats>,
}

impl<N: PeerIo> Forwarder<N> {
    pub(super) async fn run(mut self) {
        let config = self.ctx.config;
        let mut backoff_ms = config.connect_backoff_initial_ms;
        let mut failures: u64 = 0;
        let mut last_logged: Option<String> = None;
        let mut stale = StaleEpisode::default();
        loop {
            let ended = match self.connect().await {
                Ok(stream) => {
                    tracing::info!(node = self.ctx.node, peer = self.remote, "peer link up");
                    backoff_ms = config.connect_backoff_initial_ms;
                    failures = 0;
                    last_logged = None;
                    stale = StaleEpisode::default();
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    self.stats.connected.store(true, Ordering::Relaxed);
                    let end = self.serve(stream).await;
                    self.stats.connected.store(false, Ordering::Relaxed);
                    match end {
                        LinkEnd::Closed => return,
                        LinkEnd::Broken(error @ NetError::StaleMap { .. }) => {
                            tracing::info!(node = self.ctx.node, peer = self.remote, %error, "peer link refused for a stale map; retrying");
                            error
                        }
                        LinkEnd::Broken(error) => {
                            tracing::warn!(node = self.ctx.node, peer = self.remote, %error, "peer link down");
                            error
                        }
                    }
                }
                // Nodes that learn a new map a moment apart refuse each other until both
                // have it: expected, and handled below, so not a warning.
                Err(error @ NetError::StaleMap { .. }) => {
                    tracing::info!(node = self.ctx.node, peer = self.remote, %error, "peer holds another map; holding its queue");
                    error
                }
                Err(error) => {
                    failures += 1;
                    self.log_unreachable(&error, failures, &mut last_logged);
                    error
                }
            };
            let retry_at = Instant::now() + ms(backoff_ms);
            backoff_ms = (backoff_ms * 2).min(config.connect_backoff_max_ms);
            if let NetError::StaleMap { got, .. } = ended {
                self.ctx.saw_map_version(got);
                if stale.still_waiting(config.stale_map_wait_max_ms) {
                    self.hold_until(retry_at).await;
                    continue;
                }
                if stale.give_up() {
                    tracing::warn!(
                        node = self.ctx.node,
                        peer = self.remote,
                        %ended,
                        waited_ms = config.stale_map_wait_max_ms,
                        "the peer still holds another map; refusing its partitions' inputs until it links"
                    );
                }
            }
            // Whoever waited for an answer on a link that is down hears so now.
            self.resend.clear();
            if !self.refuse_until(retry_at).await {
                return;
            }
        }
    }

    /// Logs a failure to connect if it is news: the first, and one that differs from the
    /// last logged (a node that was down is up, but its certificate is refused); repeats
    /// while a node is down are not.
    fn log_unreachable(&self, error: &NetError, failures: u64, last_logged: &mut Option<String>) {
        let text = error.to_string();
        if failures == 1
            || matches!(error, NetError::Auth(_))
            || last_logged.as_deref() != Some(text.as_str())
        {
            let address = self.address().unwrap_or_default();
            tracing::warn!(node = self.ctx.node, peer = self.remote, address, %error, "cannot reach peer");
            *last_logged = Some(text);
        }
    }

    /// The remote node's peer address in the map in force; none once the map no longer
    /// lists it (`cluster remove-node`). Its forwarder then dials nothing, backing off as
    /// from a node that is down, and links again if the node is added back.
    fn address(&self) -> Option<String> {
        let map = self.ctx.map();
        let address = map.map.nodes.get(&self.remote)?;
        Some(address.peer.clone())
    }

    /// While two nodes hold different maps: keep the queue (its clients wait rather than
    /// fail) until `deadline`, or until this node's map changes, whichever comes first.
    pub(super) async fn hold_until(&mut self, deadline: Instant) {
        let mut map = self.ctx.map.subscribe();
        tokio::select! {
            biased;
            _ = map.changed() => {}
            _ = sleep_until(deadline) => {}
        }
    }

    pub(super) async fn connect(&self) -> Result<N::Stream, NetError> {
        let attempt = async {
            let address = self.address().ok_or(NetError::NotInMap(self.remote))?;
            let mut stream = self.io.connect(&address).await?;
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
    pub(super) async fn refuse_until(&mut self, deadline: Instant) -> bool {
        loop {
            tokio::select! {
                // The deadline first: a flood of inputs cannot keep the link from retrying.
                biased;
                _ = sleep_until(deadline) => return true,
                input = self.inputs.recv() => match input {
                    Some(Input::Shutdown(ack)) => { let _ = ack.send(()); }
                    Some(_) => { self.stats.refused_while_down.fetch_add(1, Ordering::Relaxed); }
                    None => return false,
                },
            }
        }
    }

    /// Runs one authenticated connection until it breaks or the queue closes.
    pub(super) async fn serve(&mut self, stream: N::Stream) -> LinkEnd {
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
        let mut waiting: Vec<(RequestId, Waiting)> =
            pending.lock().expect("pending lock").drain().collect();
        if matches!(end, LinkEnd::Broken(NetError::StaleMap { .. })) {
            // The peer applied nothing of a frame it refused, and requests it took are
            // idempotent: ask every unanswered one again, in the order first asked.
            waiting.sort_unstable_by_key(|(id, _)| *id);
            let again = waiting.into_iter().map(|(_, waiting)| waiting.into_input());
            self.resend.extend(again);
        }
        // Otherwise dropping the reply senders tells every waiting client the partition is
        // unavailable.
        end
    }

    pub(super) async fn write_loop(
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
        // A message the last frame had no bytes left for (beside a large `Peers` message): it
        // opens the next frame, which is written at once.
        let mut carried: Option<Message> = None;
        loop {
            let first = match carried {
                Some(_) => None,
                None if !self.resend.is_empty() => self.resend.pop_front(),
                None => tokio::select! {
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
                },
            };
            buf.clear();
            let mut frame = FrameWriter::new(&mut buf, self.ctx.map_version());
            let mut next = first;
            if let Some(message) = carried.take() {
                // An empty frame has room for any message.
                frame.push(&message);
                next = self.more_inputs(&frame);
            }
            while let Some(input) = next.take() {
                let Some(message) = to_message(input, &mut next_id, pending, permits).await else {
                    // The reader ended and closed the permits: the link is broken.
                    return LinkEnd::Broken(reader_error((&mut *reader).await));
                };
                if let Some(message) = message {
                    if !frame.try_push(&message) {
                        carried = Some(message);
                        break;
                    }
                }
                next = self.more_inputs(&frame);
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

    /// The next input to send (one to send again first), if `frame` may take more
    /// ([`NetConfig::frame_messages_max`]).
    fn more_inputs(&mut self, frame: &FrameWriter<'_>) -> Option<Input> {
        if frame.count() >= self.ctx.config.frame_messages_max {
            None
        } else if let Some(again) = self.resend.pop_front() {
            Some(again)
        } else {
            self.inputs.try_recv().ok()
        }
    }
}

pub(super) fn reader_error(ended: Result<NetError, tokio::task::JoinError>) -> NetError {
    ended.unwrap_or_else(|join| NetError::Protocol(format!("reader task failed: {join}")))
}

/// The message for `input`, registering a waiter for commands and queries. `Some(None)` for
/// an input that needs no message; `None` when the link broke while waiting for a permit.
pub(super) async fn to_message(
    input: Input,
    next_id: &mut RequestId,
    pending: &Pending,
    permits: &Arc<Semaphore>,
) -> Option<Option<Message>> {
    let (reply, request, message) = match input {
        // The transport grouped them for one partition, within a wire message's bound.
        Input::Peers(peers) => return Some(Some(Message::Peers(peers))),
        // Grouped by the replica that sent them, within a wire message's bound.
        Input::Raft {
            partition,
            messages,
        } => {
            return Some(Some(Message::Raft {
                partition,
                messages,
            }))
        }
        Input::Membership {
            partition,
            from,
            message,
        } => {
            return Some(Some(Message::Membership {
                partition,
                from,
                message,
            }))
        }
        Input::CatchUp {
            partition,
            from,
            message,
        } => {
            return Some(Some(Message::CatchUp {
                partition,
                from,
                message,
            }))
        }
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
            Request::Command {
                command: command.clone(),
                wait,
            },
            Message::Request {
                id: *next_id,
                wait,
                command,
            },
        ),
        Input::Query { query, reply } => (
            Waiter::Query(reply),
            Request::Query(query.clone()),
            Message::QueryRequest {
                id: *next_id,
                query,
            },
        ),
    };
    let permit = Arc::clone(permits).acquire_owned().await.ok()?;
    let waiting = Waiting {
        reply,
        request,
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
pub(super) async fn read_answers<R: AsyncRead + Unpin>(
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

pub(super) fn resolve(frame: Frame, pending: &Pending, ctx: &NodeContext) -> Result<(), NetError> {
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
            // `expected` is the peer's version, `got` this node's when it wrote the frame.
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
