//! The simulated network between hosts (server nodes and client hosts).
//!
//! It carries core's [`Input`]s: client commands and queries (whose replies travel back over
//! the network too) and peer messages between partitions. Each message is delivered after a
//! seeded delay into the inbox of the partition's *current* incarnation (the registry is
//! updated when a node is killed and when it has recovered), or dropped if the partition is
//! down. Faults, all switched by the nemesis: directed cuts (partitions, one-way links) drop
//! messages, directed clogs hold them until the clog clears, loss drops a share, duplication
//! delivers peer messages twice, and a wide delay range reorders them. A dropped command
//! simply drops its reply channel, so its client sees the partition as unavailable.
//!
//! The delivery tasks run on a dedicated `net` node that is never killed: a message already on
//! the wire still arrives after its sender died, as it would on a real network.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use madsim::runtime::NodeHandle;
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use walletd_core::model::partition::PartitionId;
use walletd_runtime::driver::Input;

use crate::rng::SharedRng;
use crate::trace::Trace;

/// A server node (`0..nodes`) or a client host (`nodes..`).
pub type HostId = u32;

/// How often a message held by a clog checks whether the clog cleared.
const CLOG_POLL: Duration = Duration::from_millis(50);
/// Normal one-way latency bounds.
const DELAY_US_MIN: u64 = 200;
const DELAY_US_MAX: u64 = 3_000;

/// The faults currently applied to messages.
#[derive(Debug, Clone, Default)]
pub struct LinkFaults {
    /// Directed links whose messages are dropped.
    pub cut: BTreeSet<(HostId, HostId)>,
    /// Directed links whose messages are held until the clog clears.
    pub clogged: BTreeSet<(HostId, HostId)>,
    /// Share of messages dropped, in parts per million.
    pub loss_ppm: u32,
    /// Share of peer messages delivered twice, in parts per million.
    pub dup_ppm: u32,
    /// Upper bound of the extra random delay (reordering), in microseconds.
    pub jitter_us_max: u64,
}

/// Message counters of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub duplicated: u64,
}

#[derive(Debug)]
struct NetState {
    faults: LinkFaults,
    /// The host of each partition.
    owner: Vec<HostId>,
    /// The inbox of each partition's current incarnation (`None` while down or recovering).
    inbox: Vec<Option<mpsc::Sender<Input>>>,
    /// Peer messages sent and not yet delivered or dropped.
    peer_in_flight: u64,
    stats: NetStats,
}

/// The network of one run. Shared by every host.
pub struct Network {
    state: Mutex<NetState>,
    rng: SharedRng,
    trace: Trace,
    /// The node that runs delivery tasks.
    wire: NodeHandle,
}

impl Network {
    pub fn new(owner: Vec<HostId>, rng: SharedRng, trace: Trace, wire: NodeHandle) -> Network {
        let partitions = owner.len();
        Network {
            state: Mutex::new(NetState {
                faults: LinkFaults::default(),
                owner,
                inbox: vec![None; partitions],
                peer_in_flight: 0,
                stats: NetStats::default(),
            }),
            rng,
            trace,
            wire,
        }
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Partition `partition` recovered: deliver to `inbox` from now on.
    pub fn register(&self, partition: PartitionId, inbox: mpsc::Sender<Input>) {
        self.lock().inbox[partition as usize] = Some(inbox);
    }

    /// `host` died: its partitions receive nothing until they register again.
    pub fn unregister_host(&self, host: HostId) {
        let mut state = self.lock();
        let NetState { owner, inbox, .. } = &mut *state;
        for (partition, owner) in owner.iter().enumerate() {
            if *owner == host {
                inbox[partition] = None;
            }
        }
    }

    pub fn faults(&self) -> LinkFaults {
        self.lock().faults.clone()
    }

    pub fn set_faults(&self, faults: LinkFaults) {
        self.lock().faults = faults;
    }

    pub fn stats(&self) -> NetStats {
        self.lock().stats
    }

    pub fn peer_in_flight(&self) -> u64 {
        self.lock().peer_in_flight
    }

    pub fn owner(&self, partition: PartitionId) -> HostId {
        self.lock().owner[partition as usize]
    }

    /// Whether a message from `from` to `to` is lost now (cut link or random loss).
    fn lost(&self, state: &NetState, from: HostId, to: HostId) -> bool {
        if from == to {
            return false;
        }
        if state.faults.cut.contains(&(from, to)) {
            return true;
        }
        state.faults.loss_ppm > 0 && self.rng.lock().gen_range(0..1_000_000) < state.faults.loss_ppm
    }

    fn delay(&self, state: &NetState, from: HostId, to: HostId) -> Duration {
        if from == to {
            return Duration::ZERO;
        }
        let mut rng = self.rng.lock();
        let mut us = rng.gen_range(DELAY_US_MIN..=DELAY_US_MAX);
        if state.faults.jitter_us_max > 0 {
            us += rng.gen_range(0..=state.faults.jitter_us_max);
        }
        Duration::from_micros(us)
    }

    fn clogged(&self, from: HostId, to: HostId) -> bool {
        from != to && self.lock().faults.clogged.contains(&(from, to))
    }

    /// Sends `input` from host `from` to partition `partition`, wherever it runs.
    pub fn send(self: &Arc<Self>, from: HostId, partition: PartitionId, input: Input) {
        let mut state = self.lock();
        let to = state.owner[partition as usize];
        state.stats.sent += 1;
        if self.lost(&state, from, to) {
            state.stats.dropped += 1;
            drop(state);
            let mut line = String::with_capacity(160);
            describe(&input, &mut line);
            self.trace.record(format_args!(
                "{} {from}>{to} p{partition} {line} lost",
                madsim::time::TimeHandle::current().elapsed().as_nanos()
            ));
            // Dropping the input drops a command's reply channel: its client sees Unavailable.
            return;
        }
        let input = match input {
            Input::Command {
                command,
                wait,
                reply,
            } => {
                let (inner, answer) = oneshot::channel();
                self.spawn_reply(to, from, answer, reply);
                Input::Command {
                    command,
                    wait,
                    reply: inner,
                }
            }
            Input::Commands {
                commands,
                wait,
                reply,
            } => {
                let (inner, answer) = oneshot::channel();
                self.spawn_reply(to, from, answer, reply);
                Input::Commands {
                    commands,
                    wait,
                    reply: inner,
                }
            }
            Input::Query { query, reply } => {
                let (inner, answer) = oneshot::channel();
                self.spawn_reply(to, from, answer, reply);
                Input::Query {
                    query,
                    reply: inner,
                }
            }
            Input::Peer(message) => {
                let duplicate = state.faults.dup_ppm > 0
                    && self.rng.lock().gen_range(0..1_000_000) < state.faults.dup_ppm;
                if duplicate {
                    state.stats.duplicated += 1;
                    state.peer_in_flight += 1;
                    let delay = self.delay(&state, from, to);
                    self.spawn_delivery(from, to, partition, Input::Peer(message), delay);
                }
                state.peer_in_flight += 1;
                Input::Peer(message)
            }
            Input::Shutdown(ack) => Input::Shutdown(ack),
        };
        let delay = self.delay(&state, from, to);
        drop(state);
        self.spawn_delivery(from, to, partition, input, delay);
    }

    fn spawn_delivery(
        self: &Arc<Self>,
        from: HostId,
        to: HostId,
        partition: PartitionId,
        input: Input,
        delay: Duration,
    ) {
        let net = Arc::clone(self);
        self.wire.spawn(async move {
            tokio::time::sleep(delay).await;
            while net.clogged(from, to) {
                tokio::time::sleep(CLOG_POLL).await;
            }
            net.deliver(from, to, partition, input);
        });
    }

    fn deliver(&self, from: HostId, to: HostId, partition: PartitionId, input: Input) {
        let is_peer = matches!(input, Input::Peer(_));
        let mut line = String::with_capacity(160);
        describe(&input, &mut line);
        let inbox = {
            let mut state = self.lock();
            if is_peer {
                state.peer_in_flight -= 1;
            }
            state.inbox[partition as usize].clone()
        };
        let delivered = inbox.is_some_and(|inbox| inbox.try_send(input).is_ok());
        {
            let mut state = self.lock();
            if delivered {
                state.stats.delivered += 1;
            } else {
                state.stats.dropped += 1;
            }
        }
        self.trace.record(format_args!(
            "{} {from}>{to} p{partition} {line} {}",
            madsim::time::TimeHandle::current().elapsed().as_nanos(),
            if delivered { "ok" } else { "down" }
        ));
    }

    /// Carries the reply to a command or query from host `from` back to host `to`.
    fn spawn_reply<T: std::fmt::Debug + Send + 'static>(
        self: &Arc<Self>,
        from: HostId,
        to: HostId,
        answer: oneshot::Receiver<T>,
        reply: oneshot::Sender<T>,
    ) {
        let net = Arc::clone(self);
        self.wire.spawn(async move {
            let Ok(value) = answer.await else {
                return; // The partition died or dropped the request: the client sees Unavailable.
            };
            let delay = {
                let mut state = net.lock();
                state.stats.sent += 1;
                if net.lost(&state, from, to) {
                    state.stats.dropped += 1;
                    return;
                }
                net.delay(&state, from, to)
            };
            tokio::time::sleep(delay).await;
            while net.clogged(from, to) {
                tokio::time::sleep(CLOG_POLL).await;
            }
            net.lock().stats.delivered += 1;
            net.trace.record(format_args!(
                "{} {from}>{to} reply {value:?}",
                madsim::time::TimeHandle::current().elapsed().as_nanos()
            ));
            let _ = reply.send(value);
        });
    }
}

/// A stable, readable description of an input for the trace (never its channels).
fn describe(input: &Input, out: &mut String) {
    let _ = match input {
        Input::Command { command, wait, .. } => write!(out, "cmd wait={wait} {command:?}"),
        Input::Commands { commands, wait, .. } => write!(out, "cmds wait={wait} {commands:?}"),
        Input::Query { query, .. } => write!(out, "query {query:?}"),
        Input::Peer(message) => write!(out, "peer {message:?}"),
        Input::Shutdown(_) => write!(out, "shutdown"),
    };
}
