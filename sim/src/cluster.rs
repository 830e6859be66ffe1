//! The simulated cluster: named server nodes, each a `wallet node` as far as madsim can run
//! one: `net::start_node_with` (the production code) recovers its partitions, starts their
//! drivers, links to every other node with production forwarders over madsim's TCP
//! ([`crate::links`]) and serves its peer listener; a [`gateway`] takes the clients'
//! requests from the simulated [`Network`] in place of HTTP.
//!
//! Disks live here, outside the nodes, so they survive a kill; killing a node crashes its
//! disks (a process crash keeps what reached the kernel; a power loss keeps what was synced
//! and some unsynced sectors, see [`crate::disk`]), drops its tasks and sockets (its peers
//! see their links break, reconnect with backoff and run the handshake again once it is
//! back) and unregisters its gateway. Restarting re-runs the node's init: recovery from the
//! disk, links, gateway. A node that owns no partition (more nodes than partitions) is not
//! in the partition map, as `wallet node` refuses an idle node: it runs nothing.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle};
use madsim::task::NodeId;
use rand::RngCore;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use walletd_core::model::partition::{NodeAddress, PartitionId, PartitionMap};
use walletd_core::protocol::coordinator::CoordinatorConfig;
use walletd_runtime::driver::{DriverConfig, DriverError, DriverStats, RecoveryReport};
use walletd_runtime::engine::EngineConfig;
use walletd_runtime::net::{start_node_with, ClusterNode, NetConfig, NodeConfig, NodeError};
use walletd_runtime::replica::ReplicaDriverError;

use crate::config::SimConfig;
use crate::coordinator::Coordinator;
use crate::disk::{Crash, CrashReport, Disk, DiskSpeed};
use crate::gateway;
use crate::history::History;
use crate::links::{server_ip, Links, NodeIo, LATENCY_MAX, LATENCY_MIN, PEER_PORT};
use crate::majority;
use crate::network::{HostId, LinkFaults, Network};
use crate::raft_disk::RaftDisk;
use crate::replicas::{self, ReplicaDisks, ReplicaState};
use crate::rng::{Purpose, SharedRng};
use crate::trace::Trace;

/// The secret every server node of a run shares (the handshake proves it).
pub const CLUSTER_SECRET: &[u8] = b"walletd simulated cluster secret";

/// What the nodes of a run share with the harness.
pub struct Shared {
    pub net: Arc<Network>,
    pub links: Arc<Links>,
    /// One disk per partition (unreplicated runs; empty in replicated ones).
    pub disks: Vec<Disk>,
    /// Replicated runs: each node's disks, a log and a Raft store per partition (empty in
    /// unreplicated runs).
    pub replicas: Vec<ReplicaDisks>,
    pub engine: EngineConfig,
    /// The partition map every node starts with: the nodes that own partitions, at their
    /// simulated addresses.
    pub map: PartitionMap,
    /// Each incarnation's handshake nonce seed is drawn from here.
    nonces: SharedRng,
    /// Replicated runs: each incarnation's election seed is drawn from here.
    pub elections: SharedRng,
    /// Replicated runs with moves: the coordination service that holds the map and
    /// placement, which the nodes watch and the mover changes (`None` otherwise: the map
    /// never changes).
    pub coordinator: Option<Arc<Coordinator>>,
    state: Mutex<SharedState>,
}

#[derive(Default)]
pub struct SharedState {
    /// Driver counters of each partition's current incarnation.
    pub stats: Vec<Option<Arc<DriverStats>>>,
    /// Coordinator protocol violations counted by incarnations that have since died.
    pub violations_dead: u64,
    /// Nodes that stopped because a map left them out, with that map's version (moves on).
    pub left: Vec<(HostId, u64)>,
    pub recoveries: Vec<RecoveryReport>,
    /// Recoveries that failed (corrupt log, log that does not replay): never expected.
    pub fatal: Vec<String>,
    /// How each node's latest start ended, by host (for a harness waiting on a restart).
    pub starts: BTreeMap<HostId, StartOutcome>,
    /// Replicated runs: the replicas of the running incarnations, and the leaders seen.
    pub replicas: ReplicaState,
}

/// How a node's start ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    /// Its partitions recovered and run.
    Running,
    /// Recovery refused a partition whose disk's medium is damaged: the error's text.
    Refused(String),
    /// It stopped for another reason: a sync failed during recovery, or a fatal error.
    Stopped,
}

/// Why a node did not start.
pub enum Stop {
    /// A sync failed during recovery (a failing disk): the node waits for the disk's repair.
    SyncFailed,
    /// Recovery refused a partition whose medium is damaged: the node waits for the file to
    /// be restored. The error's text.
    Refused(String),
    /// Anything else: never expected.
    Fatal(String),
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, SharedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Coordinator protocol violations of every incarnation so far.
    pub fn violations(&self) -> u64 {
        let state = self.lock();
        let running = state.stats.iter().flatten().chain(state.replicas.stats());
        state.violations_dead
            + state.replicas.violations_removed
            + running
                .map(|s| s.violations.load(Ordering::Relaxed))
                .sum::<u64>()
    }

    /// Whether every partition is a Raft group with a replica on every node.
    pub fn replicated(&self) -> bool {
        !self.replicas.is_empty()
    }

    /// The log disks of node `host`: one per partition it owns, or (replicated) one per
    /// partition it holds a replica of.
    pub fn node_disks(&self, host: HostId, partitions: &[PartitionId]) -> Vec<Disk> {
        match self.replicas.get(host as usize) {
            Some(replica) => replica.logs.clone(),
            None => partitions
                .iter()
                .map(|p| self.disks[*p as usize].clone())
                .collect(),
        }
    }

    /// The Raft stores of node `host` (none in an unreplicated run).
    pub fn raft_disks(&self, host: HostId) -> &[RaftDisk] {
        self.replicas
            .get(host as usize)
            .map_or(&[], |replica| &replica.rafts[..])
    }

    /// Every log disk of the run.
    pub fn all_disks(&self) -> Vec<Disk> {
        let replicated = self.replicas.iter().flat_map(|r| r.logs.iter().cloned());
        self.disks.iter().cloned().chain(replicated).collect()
    }
}

/// One server node of the cluster.
pub struct ServerNode {
    pub name: String,
    pub id: NodeId,
    pub host: HostId,
    pub partitions: Vec<PartitionId>,
    pub up: bool,
    /// When it was last restarted (never: `None`).
    pub restarted_at: Option<tokio::time::Instant>,
    pub speed: Arc<DiskSpeed>,
}

/// The cluster of one run.
pub struct Cluster {
    pub handle: Handle,
    pub shared: Arc<Shared>,
    pub nodes: Vec<ServerNode>,
    /// Hosts of the clients: `nodes..nodes + client_hosts`.
    pub client_hosts: Vec<(HostId, NodeHandle)>,
    pub torn: bool,
    /// What the clients were told: after each crash of a replicated run, every answer must
    /// rest on records durable on a majority (see [`crate::majority`]).
    history: History,
}

/// The addresses of server node `host` (its peer listener on [`PEER_PORT`]).
pub fn node_address(host: HostId) -> NodeAddress {
    let ip = server_ip(host);
    NodeAddress {
        http: format!("{ip}:8080"),
        peer: SocketAddr::new(ip, PEER_PORT).to_string(),
    }
}

/// The partition map a run starts with: partition `p` on node `p % members`, where the
/// members are the nodes that do not join later ([`SimConfig::joining`]); nodes that own
/// nothing are left out (a map with an idle node is refused).
fn partition_map(config: &SimConfig) -> PartitionMap {
    let members = config.nodes - config.joining();
    let owners: Vec<u32> = (0..config.partitions).map(|p| p % members).collect();
    let nodes = (0..members.min(config.partitions))
        .map(|n| (n, node_address(n)))
        .collect::<BTreeMap<_, _>>();
    PartitionMap {
        version: 1,
        owners,
        nodes,
    }
}

/// The engine configuration used in simulation: snapshot often, so recovery from a
/// snapshot plus a log tail runs many times per seed.
fn engine_config(config: &SimConfig, snapshot_every_events: u64) -> EngineConfig {
    EngineConfig {
        partitions: config.partitions,
        inbox_capacity: 65_536,
        driver: DriverConfig {
            snapshot_every_events,
            coordinator: CoordinatorConfig::default(),
            ..DriverConfig::default()
        },
    }
}

impl Shared {
    fn new(
        config: &SimConfig,
        trace: Trace,
        snapshot_every_events: u64,
        speeds: &[Arc<DiskSpeed>],
        wire: NodeHandle,
    ) -> Shared {
        let map = partition_map(config);
        let net = Arc::new(Network::new(
            config.nodes,
            map.nodes.keys().copied().collect(),
            map.owners.clone(),
            SharedRng::new(config.seed, Purpose::Network),
            trace.clone(),
            wire,
        ));
        let links = Arc::new(Links::new(
            SharedRng::new(config.seed, Purpose::Links),
            trace,
        ));
        let disk_rng = SharedRng::new(config.seed, Purpose::Disk);
        let first = replicas::first_map(&map, config.replicas);
        let (disks, replicas) = if config.replicated() {
            let rng = SharedRng::new(config.seed, Purpose::Replicas);
            let replicas = (0..config.nodes)
                .map(|n| ReplicaDisks::new(n, &first, &speeds[n as usize], &disk_rng, &rng))
                .collect();
            (Vec::new(), replicas)
        } else {
            let disks = (0..config.partitions)
                .map(|p| {
                    Disk::new(
                        Arc::clone(&speeds[(p % config.nodes) as usize]),
                        disk_rng.clone(),
                    )
                })
                .collect();
            (disks, Vec::new())
        };
        Shared {
            net,
            links,
            disks,
            replicas,
            engine: engine_config(config, snapshot_every_events),
            map,
            nonces: SharedRng::new(config.seed, Purpose::Nonces),
            elections: SharedRng::new(config.seed, Purpose::Replicas),
            coordinator: config.moves().then(|| {
                let rng = SharedRng::new(config.seed, Purpose::Coordinator);
                Arc::new(Coordinator::new(first, rng))
            }),
            state: Mutex::new(SharedState {
                stats: vec![None; config.partitions as usize],
                ..SharedState::default()
            }),
        }
    }

    /// The node configuration of one incarnation: the simulation's engine, production's
    /// link timings, and a handshake nonce seed drawn from the run's seed.
    pub fn node_config(&self) -> NodeConfig {
        let mut nonce_seed = [0u8; 32];
        self.nonces.lock().fill_bytes(&mut nonce_seed);
        NodeConfig {
            engine: self.engine,
            net: NetConfig::default(),
            nonce_seed,
        }
    }

    pub fn fatal(&self, what: String) {
        self.lock().fatal.push(what);
    }

    pub fn started(&self, host: HostId, outcome: StartOutcome) {
        self.lock().starts.insert(host, outcome);
    }
}

impl Cluster {
    /// Creates the wire node, the server nodes (started) and the client hosts.
    pub fn start(
        config: &SimConfig,
        trace: Trace,
        history: History,
        snapshot_every_events: u64,
    ) -> Cluster {
        let handle = Handle::current();
        NetSim::current().update_config(|net| net.send_latency = LATENCY_MIN..LATENCY_MAX);
        let wire = handle.create_node().name("wire").build();
        let speeds: Vec<Arc<DiskSpeed>> = (0..config.nodes).map(|_| Arc::default()).collect();
        let shared = Arc::new(Shared::new(
            config,
            trace,
            snapshot_every_events,
            &speeds,
            wire,
        ));
        let nodes = (0..config.nodes)
            .map(|n| {
                let name = format!("node-{n}");
                let init_shared = Arc::clone(&shared);
                let node = handle
                    .create_node()
                    .name(name.clone())
                    .ip(server_ip(n))
                    .init(move || run_node(Arc::clone(&init_shared), n))
                    .build();
                ServerNode {
                    name,
                    id: node.id(),
                    host: n,
                    partitions: if shared.replicated() {
                        (0..config.partitions).collect()
                    } else {
                        shared.map.partitions_of(n)
                    },
                    up: true,
                    restarted_at: None,
                    speed: Arc::clone(&speeds[n as usize]),
                }
            })
            .collect();
        let client_hosts = (0..config.client_hosts)
            .map(|c| {
                let host = config.nodes + c;
                let node = handle
                    .create_node()
                    .name(format!("client-{c}"))
                    .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, c as u8 + 1)))
                    .build();
                (host, node)
            })
            .collect();
        if shared.replicated() {
            replicas::watch_leaders(&shared);
        }
        Cluster {
            handle,
            shared,
            nodes,
            client_hosts,
            torn: config.faults.contains(crate::config::Fault::Torn),
            history,
        }
    }

    pub fn net(&self) -> &Arc<Network> {
        &self.shared.net
    }

    pub fn links(&self) -> &Arc<Links> {
        &self.shared.links
    }

    /// Applies `faults`: to the client network as they are, and to the peer links as far as
    /// they apply to TCP. A cut or clogged link between two server nodes clogs it in madsim
    /// (packets held and retransmitted once it clears; a connection attempt is refused);
    /// loss becomes madsim's packet loss (retransmissions: delay, never a gap); the jitter
    /// widens madsim's latency range (a connection stays in order); `dup` breaks
    /// connections right after a write, so the sender sends it again.
    pub fn set_faults(&self, faults: LinkFaults) {
        let sim = NetSim::current();
        for a in &self.nodes {
            for b in self.nodes.iter().filter(|b| b.host != a.host) {
                let link = (a.host, b.host);
                if faults.cut.contains(&link) || faults.clogged.contains(&link) {
                    sim.clog_link(a.id, b.id);
                } else {
                    sim.unclog_link(a.id, b.id);
                }
            }
        }
        sim.update_config(|net| {
            net.packet_loss_rate = f64::from(faults.loss_ppm) / 1e6;
            net.send_latency =
                LATENCY_MIN..LATENCY_MAX + Duration::from_micros(faults.jitter_us_max);
        });
        self.shared.links.set_dup_ppm(faults.dup_ppm);
        self.shared.net.set_faults(faults);
    }

    /// Kills node `n` as `crash` says: its tasks stop at once (their sockets close), and its
    /// disks crash that way.
    pub fn kill(&mut self, n: usize, crash: Crash) -> Vec<CrashReport> {
        let node = &mut self.nodes[n];
        assert!(node.up, "{} is already down", node.name);
        self.handle.kill(node.id);
        node.up = false;
        self.shared.net.unregister(node.host);
        let mut state = self.shared.lock();
        let mut reports = Vec::new();
        for &p in &node.partitions {
            if let Some(stats) = state.stats[p as usize].take() {
                state.violations_dead += stats.violations.load(Ordering::Relaxed);
            }
        }
        state.violations_dead += state.replicas.stopped(node.host);
        for disk in self.shared.node_disks(node.host, &node.partitions) {
            reports.push(disk.crash(crash, self.torn));
        }
        for raft in self.shared.raft_disks(node.host) {
            let lost = raft.crash(crash, self.torn);
            reports.push(CrashReport {
                lost_raft_persists: lost,
                ..CrashReport::default()
            });
        }
        if self.shared.replicated() && state.replicas.answers_lost.is_empty() {
            let at = madsim::time::TimeHandle::current().elapsed().as_secs_f64();
            let what = format!("the {crash:?} crash of {} at {at:.3} s", node.name);
            state.replicas.answers_lost =
                majority::answers_on_majority(&self.history.lock(), &self.shared, &what, 4);
        }
        reports
    }

    /// Restarts node `n`: recovery runs, then its links and its gateway start.
    pub fn restart(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        assert!(!node.up, "{} is already up", node.name);
        self.handle.restart(node.id);
        node.up = true;
        node.restarted_at = Some(tokio::time::Instant::now());
    }

    /// Restarts node `n` and waits, at most `wait_max`, until its start has ended: how it
    /// ended, or `None` if it did not within that time.
    pub async fn restart_and_wait(&mut self, n: usize, wait_max: Duration) -> Option<StartOutcome> {
        const POLL: Duration = Duration::from_millis(1);
        let host = self.nodes[n].host;
        self.shared.lock().starts.remove(&host);
        self.restart(n);
        let deadline = tokio::time::Instant::now() + wait_max;
        while tokio::time::Instant::now() < deadline {
            if let Some(outcome) = self.shared.lock().starts.get(&host) {
                return Some(outcome.clone());
            }
            tokio::time::sleep(POLL).await;
        }
        None
    }

    /// The disks of node `n` start failing (see [`Disk::fail`]).
    pub fn fail_disks(&self, n: usize, sync: bool) {
        let node = &self.nodes[n];
        for disk in self.shared.node_disks(node.host, &node.partitions) {
            disk.fail(sync);
        }
    }

    /// Ends a disk fault on node `n`: whether a sync of one of its disks failed meanwhile.
    pub fn repair_disks(&self, n: usize) -> bool {
        let mut failed = false;
        let node = &self.nodes[n];
        for disk in self.shared.node_disks(node.host, &node.partitions) {
            failed |= disk.repair();
        }
        failed
    }

    /// Up nodes with a write in progress (unsynced bytes on one of their disks).
    pub fn nodes_writing(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|n| self.nodes[*n].up)
            .filter(|n| {
                let node = &self.nodes[*n];
                let disks = self.shared.node_disks(node.host, &node.partitions);
                disks.iter().any(|disk| disk.unsynced() > 0)
                    || (self.shared.raft_disks(node.host).iter()).any(|raft| raft.unsynced() > 0)
            })
            .collect()
    }

    pub fn nodes_down(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|n| !self.nodes[*n].up)
            .collect()
    }

    /// Whether every partition runs, no transfer is in flight anywhere and no byte is on a
    /// peer link. Replicated: every node is up, every group has one leader, with nothing in
    /// flight, that every replica has caught up with (Raft's heartbeats never leave the
    /// links empty).
    pub fn idle(&self) -> bool {
        if self.shared.replicated() {
            let all_up = self.nodes.iter().all(|n| n.up);
            let partitions = self.shared.map.partitions();
            let hosts: Vec<Vec<HostId>> = (0..partitions)
                .map(|p| replicas::holders(&self.shared, p))
                .collect();
            return all_up && self.shared.lock().replicas.idle(&hosts);
        }
        let state = self.shared.lock();
        let all_running = state.stats.iter().all(|s| {
            s.as_ref().is_some_and(|s| {
                s.in_flight.load(Ordering::Relaxed) == 0 && s.batches.load(Ordering::Relaxed) > 0
            })
        });
        all_running && self.shared.links.in_flight() == 0
    }

    /// Waits until the cluster has been idle for two checks in a row, or `limit` passed.
    pub async fn quiesce(&self, limit: Duration) -> bool {
        // Not a divisor or multiple of the links' heartbeat period (500 ms): checks in step
        // with the heartbeats could find one on the wire every time.
        const CHECK: Duration = Duration::from_millis(313);
        let deadline = tokio::time::Instant::now() + limit;
        let mut idle_checks = 0;
        while tokio::time::Instant::now() < deadline {
            idle_checks = if self.idle() { idle_checks + 1 } else { 0 };
            if idle_checks >= 2 {
                return true;
            }
            tokio::time::sleep(CHECK).await;
        }
        false
    }
}

/// Starts node `host` as `wallet node` starts: bind the peer address, recover, link, listen.
async fn start(
    shared: &Arc<Shared>,
    host: HostId,
    partitions: &[PartitionId],
) -> Result<ClusterNode, Stop> {
    let storages = partitions
        .iter()
        .map(|&p| (p, shared.disks[p as usize].open()))
        .collect();
    let address = SocketAddr::new(server_ip(host), PEER_PORT);
    let listener = TcpListener::bind(address)
        .await
        .map_err(|error| Stop::Fatal(format!("node-{host} cannot listen: {error}")))?;
    let io = NodeIo::new(Arc::clone(&shared.links), host);
    let config = shared.node_config();
    let started = start_node_with(
        io,
        listener,
        &shared.map,
        host,
        CLUSTER_SECRET,
        storages,
        config,
    );
    started.await.map_err(|error| stop_of(shared, host, error))
}

/// Why node `host` did not start, from the error its start returned.
pub fn stop_of(shared: &Shared, host: HostId, error: NodeError) -> Stop {
    let disk = failed_partition(&error).map(|p| match shared.replicas.get(host as usize) {
        Some(replica) => &replica.logs[p as usize],
        None => &shared.disks[p as usize],
    });
    match (&error, disk) {
        // Recovery met damage to synced data: it must refuse (whether its error names the
        // damage is for the harness to judge).
        (NodeError::Driver(_) | NodeError::Replica(_), Some(disk)) if disk.damage().is_some() => {
            Stop::Refused(format!("node-{host} refused to start: {error}"))
        }
        // A sync failed during recovery (a failing disk): the node stops until the disk is
        // repaired (any other failure to recover is fatal).
        (
            NodeError::Driver(DriverError::Io { .. })
            | NodeError::Replica(ReplicaDriverError::Partition(DriverError::Io { .. })),
            Some(disk),
        ) if disk.lock().sync_failed => Stop::SyncFailed,
        _ => Stop::Fatal(format!("node-{host} failed to start: {error}")),
    }
}

/// The partition whose recovery failed, if that is why a node did not start.
fn failed_partition(error: &NodeError) -> Option<PartitionId> {
    let driver = match error {
        NodeError::Driver(error) => error,
        NodeError::Replica(ReplicaDriverError::Partition(error)) => error,
        _ => return None,
    };
    match driver {
        DriverError::Io { partition, .. }
        | DriverError::Corrupt { partition, .. }
        | DriverError::Gap { partition, .. }
        | DriverError::Replay { partition, .. } => Some(*partition),
    }
}

/// The life of one incarnation of server node `host`: start it, register its partitions and
/// its gateway, then serve until killed.
async fn run_node(shared: Arc<Shared>, host: HostId) {
    if shared.replicated() {
        return replicas::run_node(shared, host).await;
    }
    let partitions = shared.map.partitions_of(host);
    if partitions.is_empty() {
        return; // Not in the map: an idle node runs nothing.
    }
    let node = match start(&shared, host, &partitions).await {
        Ok(node) => node,
        Err(stop) => return stopped(&shared, host, stop).await,
    };
    let (calls, gateway) = mpsc::channel(gateway::GATEWAY_CAPACITY);
    {
        let mut state = shared.lock();
        state.starts.insert(host, StartOutcome::Running);
        state
            .recoveries
            .extend(node.engine().recovery_reports().iter().cloned());
        for (i, &p) in node.engine().local_partitions().iter().enumerate() {
            state.stats[p as usize] = Some(Arc::clone(&node.engine().stats()[i]));
        }
        shared.net.register(host, calls);
    }
    // The node (its drivers, links and listener) lives as long as this incarnation.
    gateway::serve(node.client(), gateway).await;
    std::future::pending::<()>().await;
    drop(node);
}

/// Node `host` did not start, for `stop`. A disk failing its sync during recovery stops the
/// node, as it would stop a server, until the disk's repair restarts it; a refusal on damaged
/// data stops it until the file is restored; anything else is fatal.
pub async fn stopped(shared: &Shared, host: HostId, stop: Stop) {
    match stop {
        Stop::SyncFailed => shared.started(host, StartOutcome::Stopped),
        Stop::Refused(error) => shared.started(host, StartOutcome::Refused(error)),
        Stop::Fatal(error) => {
            shared.started(host, StartOutcome::Stopped);
            return shared.fatal(error);
        }
    }
    std::future::pending().await
}
