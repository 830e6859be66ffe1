//! The simulated network between client hosts and the gateways of the server nodes: the hop
//! that is HTTP in production (axum cannot run under madsim). Server nodes talk to each other
//! over the production peer links instead ([`crate::links`]).
//!
//! A client's request goes to the gateway of a server node drawn at random (as a load
//! balancer in front of `wallet node`s would send it), after a seeded delay; the gateway
//! runs it through the node's `engine::Client`, which serves it from a local partition or
//! forwards it over a peer link. The answer travels back over this network too. A request
//! to a node that is down is dropped. Faults, all switched by the nemesis: directed cuts
//! (partitions, one-way links) drop messages, directed clogs hold them until the clog
//! clears, loss drops a share, and a wide delay range reorders them. A dropped request, or a
//! dropped answer, drops the client's reply channel: its client sees the partition as
//! unavailable.
//!
//! The delivery tasks run on a dedicated `wire` node that is never killed: a message already
//! on the wire still arrives after its sender died, as it would on a real network.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use madsim::runtime::NodeHandle;
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use walletd_core::ledger::Command;
use walletd_core::model::partition::PartitionId;
use walletd_runtime::driver::{CommandResult, Query, QueryAnswer};

use crate::rng::SharedRng;
use crate::trace::Trace;

/// A server node (`0..nodes`) or a client host (`nodes..`).
pub type HostId = u32;

/// How often a message held by a clog checks whether the clog cleared.
const CLOG_POLL: Duration = Duration::from_millis(50);
/// Normal one-way latency bounds.
const DELAY_US_MIN: u64 = 200;
const DELAY_US_MAX: u64 = 3_000;

/// The faults currently applied to messages, on this network and (as far as they apply to
/// TCP) on the peer links: see `Cluster::set_faults`.
#[derive(Debug, Clone, Default)]
pub struct LinkFaults {
    /// Directed links whose messages are dropped (peer links: held, as TCP retransmits).
    pub cut: BTreeSet<(HostId, HostId)>,
    /// Directed links whose messages are held until the clog clears.
    pub clogged: BTreeSet<(HostId, HostId)>,
    /// Share of messages dropped, in parts per million (peer links: packets retransmitted).
    pub loss_ppm: u32,
    /// Share of peer-link writes after which the connection breaks, so that what was
    /// written arrives and is sent again: how a TCP peer sees duplicates.
    pub dup_ppm: u32,
    /// Upper bound of the extra random delay (reordering), in microseconds.
    pub jitter_us_max: u64,
    /// The server node the `isolate` fault cut off from the other server nodes, if it is
    /// on: clients aim reads at it (see `Client::probe`).
    pub isolated: Option<Isolated>,
}

/// A server node cut off from the other server nodes (clients still reach it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolated {
    pub node: HostId,
    /// The partitions it led when it was cut off.
    pub led: Vec<PartitionId>,
    /// Clients' requests that go to any node skip it, as a load balancer that drains a node
    /// would: it then proposes nothing its clients sent, which it could not commit and
    /// behind which its answers to reads would wait.
    pub drained: bool,
}

/// What a client asks a gateway: what an HTTP handler of `wallet node` would run.
#[derive(Debug, Clone)]
pub enum Request {
    /// One command; with `group`, as a batch of one (`Client::execute_many`, the path of
    /// the batch endpoint).
    Command {
        command: Command,
        wait: bool,
        group: bool,
    },
    Query {
        partition: PartitionId,
        query: Query,
    },
}

impl Request {
    /// The partition that executes or answers the request.
    pub fn partition(&self, partitions: u32) -> PartitionId {
        match self {
            Request::Command { command, .. } => command.partition(partitions),
            Request::Query { partition, .. } => *partition,
        }
    }
}

/// Which node's gateway a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Any node, drawn at random: the clients, as behind a load balancer.
    Any,
    /// The node that owns the partition: the harness's final reads, which test nothing of
    /// the links and need not pay for them.
    Owner,
    /// This node (it may be down: the request is then dropped).
    Node(HostId),
}

/// A gateway's answer; an unavailable partition answers nothing.
#[derive(Debug, Clone)]
pub enum Answer {
    Command(CommandResult),
    Query(QueryAnswer),
}

/// A request as a gateway receives it, with the channel its answer goes back on.
pub type Call = (Request, oneshot::Sender<Answer>);

/// Message counters of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub dropped: u64,
}

#[derive(Debug)]
struct NetState {
    faults: LinkFaults,
    /// The server nodes that run a gateway (those that own partitions).
    gateways: Vec<HostId>,
    /// The node of each partition.
    owners: Vec<HostId>,
    /// The gateway of each server node's current incarnation (`None` while down).
    inbox: Vec<Option<mpsc::Sender<Call>>>,
    stats: NetStats,
}

/// The client network of one run. Shared by every host.
pub struct Network {
    state: Mutex<NetState>,
    rng: SharedRng,
    trace: Trace,
    /// The node that runs delivery tasks.
    wire: NodeHandle,
}

impl Network {
    /// A network to the gateways of `gateways`, server nodes numbered below `servers`;
    /// partition `p` lives on node `owners[p]`.
    pub fn new(
        servers: u32,
        gateways: Vec<HostId>,
        owners: Vec<HostId>,
        rng: SharedRng,
        trace: Trace,
        wire: NodeHandle,
    ) -> Network {
        Network {
            state: Mutex::new(NetState {
                faults: LinkFaults::default(),
                gateways,
                owners,
                inbox: vec![None; servers as usize],
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

    /// Server node `host` is up: deliver its requests to `gateway` from now on.
    pub fn register(&self, host: HostId, gateway: mpsc::Sender<Call>) {
        self.lock().inbox[host as usize] = Some(gateway);
    }

    /// Server node `host`, which joined the map during the run, serves clients from now on
    /// (a load balancer given a new backend); nothing if it does already.
    pub fn add_gateway(&self, host: HostId) {
        let mut state = self.lock();
        if !state.gateways.contains(&host) {
            state.gateways.push(host);
        }
    }

    /// Server node `host` left the map: clients no longer send to it (a load balancer that
    /// dropped a backend).
    pub fn remove_gateway(&self, host: HostId) {
        self.lock().gateways.retain(|g| *g != host);
    }

    /// Server node `host` died: requests sent to it are dropped until it registers again.
    pub fn unregister(&self, host: HostId) {
        self.lock().inbox[host as usize] = None;
    }

    pub fn faults(&self) -> LinkFaults {
        self.lock().faults.clone()
    }

    pub fn set_faults(&self, faults: LinkFaults) {
        self.lock().faults = faults;
    }

    /// The server nodes that run a gateway.
    pub fn gateways(&self) -> Vec<HostId> {
        self.lock().gateways.clone()
    }

    pub fn stats(&self) -> NetStats {
        self.lock().stats
    }

    /// Whether a message from `from` to `to` is lost now (cut link or random loss).
    fn lost(&self, state: &NetState, from: HostId, to: HostId) -> bool {
        if state.faults.cut.contains(&(from, to)) {
            return true;
        }
        state.faults.loss_ppm > 0 && self.rng.lock().gen_range(0..1_000_000) < state.faults.loss_ppm
    }

    fn delay(&self, state: &NetState) -> Duration {
        let mut rng = self.rng.lock();
        let mut us = rng.gen_range(DELAY_US_MIN..=DELAY_US_MAX);
        if state.faults.jitter_us_max > 0 {
            us += rng.gen_range(0..=state.faults.jitter_us_max);
        }
        Duration::from_micros(us)
    }

    fn clogged(&self, from: HostId, to: HostId) -> bool {
        self.lock().faults.clogged.contains(&(from, to))
    }

    /// Sends `request` from client host `from` to a gateway chosen by `route`; its answer
    /// comes back on `reply` (dropped if the request or the answer is lost). One task on the
    /// wire node carries both ways.
    pub fn request(
        self: &Arc<Self>,
        from: HostId,
        route: Route,
        request: Request,
        reply: oneshot::Sender<Answer>,
    ) {
        let mut state = self.lock();
        let to = match route {
            Route::Any => {
                let drained = (state.faults.isolated.as_ref())
                    .filter(|isolated| isolated.drained && state.gateways.len() > 1)
                    .map(|isolated| isolated.node);
                let gateways = (state.gateways.iter())
                    .filter(|g| Some(**g) != drained)
                    .collect::<Vec<_>>();
                let n = self.rng.lock().gen_range(0..gateways.len());
                *gateways[n]
            }
            Route::Owner => state.owners[request.partition(state.owners.len() as u32) as usize],
            Route::Node(node) => node,
        };
        state.stats.sent += 1;
        if self.lost(&state, from, to) {
            state.stats.dropped += 1;
            drop(state);
            self.trace.record(format_args!(
                "{} {from}>{to} {} lost",
                now_ns(),
                describe(&request)
            ));
            return;
        }
        let delay = self.delay(&state);
        drop(state);
        let net = Arc::clone(self);
        self.wire.spawn(async move {
            net.carry(from, to, delay).await;
            let (inner, answer) = oneshot::channel();
            if !net.deliver(from, to, (request, inner)) {
                return;
            }
            let Ok(value) = answer.await else {
                return; // The node died or the partition was unavailable.
            };
            let delay = {
                let mut state = net.lock();
                state.stats.sent += 1;
                if net.lost(&state, to, from) {
                    state.stats.dropped += 1;
                    return;
                }
                net.delay(&state)
            };
            net.carry(to, from, delay).await;
            net.lock().stats.delivered += 1;
            net.trace
                .record(format_args!("{} {to}>{from} reply {value:?}", now_ns()));
            let _ = reply.send(value);
        });
    }

    /// A message from `from` to `to` crosses the network: `delay`, then as long as the link
    /// is clogged.
    async fn carry(&self, from: HostId, to: HostId, delay: Duration) {
        tokio::time::sleep(delay).await;
        while self.clogged(from, to) {
            tokio::time::sleep(CLOG_POLL).await;
        }
    }

    /// Hands `call` to the gateway of `to`, if it is up; whether it was.
    fn deliver(&self, from: HostId, to: HostId, call: Call) -> bool {
        let line = describe(&call.0);
        let gateway = self.lock().inbox[to as usize].clone();
        // Dropping a call drops its answer channel: the client sees Unavailable.
        let delivered = gateway.is_some_and(|gateway| gateway.try_send(call).is_ok());
        {
            let mut state = self.lock();
            if delivered {
                state.stats.delivered += 1;
            } else {
                state.stats.dropped += 1;
            }
        }
        self.trace.record(format_args!(
            "{} {from}>{to} {line} {}",
            now_ns(),
            if delivered { "ok" } else { "down" }
        ));
        delivered
    }
}

fn now_ns() -> u128 {
    madsim::time::TimeHandle::current().elapsed().as_nanos()
}

/// A stable, readable description of a request for the trace (never its channel).
fn describe(request: &Request) -> String {
    let mut out = String::with_capacity(160);
    let _ = match request {
        Request::Command {
            command,
            wait,
            group,
        } => write!(out, "cmd wait={wait} group={group} {command:?}"),
        Request::Query { partition, query } => write!(out, "query p{partition} {query:?}"),
    };
    out
}
