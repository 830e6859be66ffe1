//! The simulated cluster: named server nodes, each running core's
//! [`Engine::start_partitions`] for its own partitions (the code the server runs), with a
//! forwarder task per remote partition that carries inputs over the simulated [`Network`].
//!
//! Disks live here, outside the nodes, so they survive a kill; killing a node crashes its
//! disks (a process crash keeps what reached the kernel; a power loss keeps what was synced
//! and some unsynced sectors, see [`crate::disk`]) and unregisters its partitions.
//! Restarting re-runs the node's init: recovery from the disk, then registration.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use madsim::runtime::{Handle, NodeHandle};
use madsim::task::NodeId;
use tokio::sync::mpsc;
use walletd_core::model::partition::PartitionId;
use walletd_core::protocol::coordinator::CoordinatorConfig;
use walletd_runtime::driver::{DriverConfig, DriverStats, Input, RecoveryReport};
use walletd_runtime::engine::{Engine, EngineConfig};

use crate::config::SimConfig;
use crate::disk::{Crash, CrashReport, Disk, DiskSpeed};
use crate::network::{HostId, Network};
use crate::rng::{Purpose, SharedRng};
use crate::trace::Trace;

/// Capacity of a forwarder's queue (inputs for one remote partition).
const FORWARD_CAPACITY: usize = 65_536;

/// What the nodes of a run share with the harness.
pub struct Shared {
    pub net: Arc<Network>,
    /// One disk per partition.
    pub disks: Vec<Disk>,
    pub engine: EngineConfig,
    state: Mutex<SharedState>,
}

#[derive(Default)]
pub struct SharedState {
    /// Driver counters of each partition's current incarnation.
    pub stats: Vec<Option<Arc<DriverStats>>>,
    /// Coordinator protocol violations counted by incarnations that have since died.
    pub violations_dead: u64,
    pub recoveries: Vec<RecoveryReport>,
    /// Recoveries that failed (corrupt log, log that does not replay): never expected.
    pub fatal: Vec<String>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, SharedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Coordinator protocol violations of every incarnation so far.
    pub fn violations(&self) -> u64 {
        let state = self.lock();
        state.violations_dead
            + state
                .stats
                .iter()
                .flatten()
                .map(|s| s.violations.load(Ordering::Relaxed))
                .sum::<u64>()
    }
}

/// One server node of the cluster.
pub struct ServerNode {
    pub name: String,
    pub id: NodeId,
    pub host: HostId,
    pub partitions: Vec<PartitionId>,
    pub up: bool,
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

impl Cluster {
    /// Creates the wire node, the server nodes (started) and the client hosts.
    pub fn start(config: &SimConfig, trace: Trace, snapshot_every_events: u64) -> Cluster {
        let handle = Handle::current();
        let wire = handle.create_node().name("wire").build();
        let owner: Vec<HostId> = (0..config.partitions).map(|p| p % config.nodes).collect();
        let net = Arc::new(Network::new(
            owner,
            SharedRng::new(config.seed, Purpose::Network),
            trace,
            wire,
        ));
        let disk_rng = SharedRng::new(config.seed, Purpose::Disk);
        let speeds: Vec<Arc<DiskSpeed>> = (0..config.nodes).map(|_| Arc::default()).collect();
        let disks = (0..config.partitions)
            .map(|p| {
                Disk::new(
                    Arc::clone(&speeds[(p % config.nodes) as usize]),
                    disk_rng.clone(),
                )
            })
            .collect();
        let shared = Arc::new(Shared {
            net,
            disks,
            engine: engine_config(config, snapshot_every_events),
            state: Mutex::new(SharedState {
                stats: vec![None; config.partitions as usize],
                ..SharedState::default()
            }),
        });
        let nodes = (0..config.nodes)
            .map(|n| {
                let partitions: Vec<PartitionId> = (0..config.partitions)
                    .filter(|p| p % config.nodes == n)
                    .collect();
                let name = format!("node-{n}");
                let init_shared = Arc::clone(&shared);
                let init_partitions = partitions.clone();
                let node = handle
                    .create_node()
                    .name(name.clone())
                    .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, n as u8 + 1)))
                    .init(move || run_node(Arc::clone(&init_shared), n, init_partitions.clone()))
                    .build();
                ServerNode {
                    name,
                    id: node.id(),
                    host: n,
                    partitions,
                    up: true,
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
        Cluster {
            handle,
            shared,
            nodes,
            client_hosts,
            torn: config.faults.contains(crate::config::Fault::Torn),
        }
    }

    pub fn net(&self) -> &Arc<Network> {
        &self.shared.net
    }

    /// Kills node `n` as `crash` says: its tasks stop at once, and its disks crash that way.
    pub fn kill(&mut self, n: usize, crash: Crash) -> Vec<CrashReport> {
        let node = &mut self.nodes[n];
        assert!(node.up, "{} is already down", node.name);
        self.handle.kill(node.id);
        node.up = false;
        self.shared.net.unregister_host(node.host);
        let mut state = self.shared.lock();
        let mut reports = Vec::new();
        for &p in &node.partitions {
            if let Some(stats) = state.stats[p as usize].take() {
                state.violations_dead += stats.violations.load(Ordering::Relaxed);
            }
            reports.push(self.shared.disks[p as usize].crash(crash, self.torn));
        }
        reports
    }

    /// Restarts node `n`: recovery runs, then its partitions register with the network.
    pub fn restart(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        assert!(!node.up, "{} is already up", node.name);
        self.handle.restart(node.id);
        node.up = true;
    }

    /// The disks of node `n` start failing (see [`Disk::fail`]).
    pub fn fail_disks(&self, n: usize, sync: bool) {
        for &p in &self.nodes[n].partitions {
            self.shared.disks[p as usize].fail(sync);
        }
    }

    /// Ends a disk fault on node `n`: whether a sync of one of its disks failed meanwhile.
    pub fn repair_disks(&self, n: usize) -> bool {
        let mut failed = false;
        for &p in &self.nodes[n].partitions {
            failed |= self.shared.disks[p as usize].repair();
        }
        failed
    }

    /// Up nodes with a write in progress (unsynced bytes on one of their disks).
    pub fn nodes_writing(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|n| self.nodes[*n].up)
            .filter(|n| {
                self.nodes[*n]
                    .partitions
                    .iter()
                    .any(|p| self.shared.disks[*p as usize].unsynced() > 0)
            })
            .collect()
    }

    pub fn nodes_down(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|n| !self.nodes[*n].up)
            .collect()
    }

    /// Whether every partition runs and no transfer is in flight anywhere.
    pub fn idle(&self) -> bool {
        let state = self.shared.lock();
        let all_running = state.stats.iter().all(|s| {
            s.as_ref().is_some_and(|s| {
                s.in_flight.load(Ordering::Relaxed) == 0 && s.batches.load(Ordering::Relaxed) > 0
            })
        });
        all_running && self.shared.net.peer_in_flight() == 0
    }

    /// Waits until the cluster has been idle for two checks in a row, or `limit` passed.
    pub async fn quiesce(&self, limit: Duration) -> bool {
        const CHECK: Duration = Duration::from_millis(500);
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

/// The life of one incarnation of a server node: recover its partitions, register them with
/// the network, then serve until killed.
async fn run_node(shared: Arc<Shared>, host: HostId, partitions: Vec<PartitionId>) {
    let local = partitions
        .iter()
        .map(|&p| (p, shared.disks[p as usize].open()))
        .collect();
    let net = Arc::clone(&shared.net);
    let forward = |p: PartitionId| {
        let (sender, mut receiver) = mpsc::channel::<Input>(FORWARD_CAPACITY);
        let net = Arc::clone(&net);
        tokio::spawn(async move {
            while let Some(input) = receiver.recv().await {
                net.send(host, p, input);
            }
        });
        sender
    };
    let mut reports = Vec::new();
    let started = Engine::start_partitions(local, shared.engine, forward, |report| {
        reports.push(*report)
    })
    .await;
    let engine = match started {
        Ok(engine) => engine,
        // A disk failing its sync during recovery stops the node, as it would stop a server;
        // the disk's repair restarts it. Any other failure to recover is fatal.
        Err(walletd_runtime::driver::DriverError::Io { partition, .. })
            if shared.disks[partition as usize].lock().sync_failed =>
        {
            return std::future::pending().await;
        }
        Err(error) => {
            shared
                .lock()
                .fatal
                .push(format!("node-{host} failed to recover: {error}"));
            return std::future::pending().await;
        }
    };
    {
        let mut state = shared.lock();
        state.recoveries.extend(reports);
        let client = engine.client();
        for (i, &p) in engine.local_partitions().iter().enumerate() {
            state.stats[p as usize] = Some(Arc::clone(&engine.stats()[i]));
            shared.net.register(p, client.inbox(p).clone());
        }
    }
    // The engine (and so the drivers' inboxes) lives as long as this incarnation.
    std::future::pending::<()>().await;
    drop(engine);
}
