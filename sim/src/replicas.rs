//! Replicated runs (`--replicas N`, N = nodes): every node runs a replica of every partition
//! with `net::replicated::start_replicated_node_with`, the code a replicated `wallet node`
//! runs, on its own disks: a partition log ([`Disk`]) and a Raft store ([`RaftDisk`]) per
//! partition, kept by the harness so that they outlive a kill.
//!
//! The harness watches every replica's published [`ReplicaStatus`]: where each group's
//! leader is (for the nemesis, which kills and isolates leaders), whether the cluster is at
//! rest (for the quiesce), and, every [`LEADER_WATCH`], whether two replicas of one group
//! have led in the same term, which Raft's election safety forbids (`one_leader_per_term`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use walletd_core::model::partition::{PartitionId, PartitionMap};
use walletd_core::replica::ReplicaId;
use walletd_runtime::driver::DriverStats;
use walletd_runtime::net::replicated::{start_replicated_node_with, voters, ReplicatedConfig};
use walletd_runtime::replica::ReplicaStatus;

use crate::cluster::{stop_of, stopped, Shared, StartOutcome, Stop, CLUSTER_SECRET};
use crate::disk::{Disk, DiskSpeed};
use crate::gateway;
use crate::links::{server_ip, NodeIo, PEER_PORT};
use crate::network::HostId;
use crate::raft_disk::RaftDisk;
use crate::rng::SharedRng;

/// How often the harness reads every replica's status for two leaders in one term. Far
/// below an election timeout (300 ms at least): no leader's term passes unseen.
pub const LEADER_WATCH: Duration = Duration::from_millis(2);

/// One node's disks in a replicated run, by partition.
#[derive(Debug)]
pub struct ReplicaDisks {
    pub logs: Vec<Disk>,
    pub rafts: Vec<RaftDisk>,
}

impl ReplicaDisks {
    /// The empty disks of a node of `map`, whose syncs take as long as `speed` says.
    pub fn new(
        map: &PartitionMap,
        speed: &Arc<DiskSpeed>,
        disk_rng: &SharedRng,
        raft_rng: &SharedRng,
    ) -> ReplicaDisks {
        let voters = voters(map);
        let partitions = map.partitions();
        ReplicaDisks {
            logs: (0..partitions)
                .map(|_| Disk::new(Arc::clone(speed), disk_rng.clone()))
                .collect(),
            rafts: (0..partitions)
                .map(|_| RaftDisk::new(&voters, Arc::clone(speed), raft_rng.clone()))
                .collect(),
        }
    }
}

/// What the harness sees of one running replica.
struct Running {
    status: Arc<ReplicaStatus>,
    stats: Arc<DriverStats>,
    /// Its Raft store, which holds its id once decided (a replica that rejoined after a
    /// lost disk has another id than its node's first).
    raft: RaftDisk,
}

impl Running {
    /// Whether the replica is its group's leader, in Raft's view (it may still be applying
    /// earlier terms before it takes commands).
    fn leads(&self) -> bool {
        let leader = self.status.leader.load(Ordering::Acquire);
        leader != 0 && leader == self.raft.lock().durable.id
    }
}

/// The replicas of the running incarnations, and the leaders seen so far.
#[derive(Default)]
pub struct ReplicaState {
    running: BTreeMap<(HostId, PartitionId), Running>,
    /// The node seen leading each term of each partition.
    leaders: BTreeMap<(PartitionId, u64), HostId>,
    /// Two nodes seen leading one term of one partition (election safety broken).
    pub split_brains: Vec<String>,
    /// Answers found, right after a crash, resting on records that fewer than a majority of
    /// replicas held durably (checked until the first crash that finds some).
    pub answers_lost: Vec<String>,
}

impl ReplicaState {
    /// Driver counters of every running replica.
    pub fn stats(&self) -> impl Iterator<Item = &Arc<DriverStats>> {
        self.running.values().map(|r| &r.stats)
    }

    /// Node `host` died: forgets its replicas; returns the protocol violations they counted.
    pub fn stopped(&mut self, host: HostId) -> u64 {
        let gone: Vec<_> = (self.running.keys())
            .filter(|(h, _)| *h == host)
            .copied()
            .collect();
        gone.into_iter()
            .filter_map(|key| self.running.remove(&key))
            .map(|r| r.stats.violations.load(Ordering::Relaxed))
            .sum()
    }

    /// Whether every partition of node `host` has a running replica.
    pub fn recovered(&self, host: HostId, partitions: u32) -> bool {
        (0..partitions).all(|p| self.running.contains_key(&(host, p)))
    }

    /// The node whose replica leads `partition` now, if one does.
    pub fn leader_of(&self, partition: PartitionId) -> Option<HostId> {
        (self.running.iter())
            .filter(|((_, p), r)| *p == partition && r.leads())
            .max_by_key(|(_, r)| r.status.term.load(Ordering::Acquire))
            .map(|((host, _), _)| *host)
    }

    /// The commit index of `host`'s replica of `partition`, if it runs.
    pub fn commit_index(&self, host: HostId, partition: PartitionId) -> Option<u64> {
        let running = self.running.get(&(host, partition))?;
        Some(running.status.commit_index.load(Ordering::Acquire))
    }

    /// Whether the group of every partition is at rest on the nodes `up`: each has one
    /// leader that takes commands and has nothing in flight, and every replica has committed
    /// and applied what the leader has.
    pub fn idle(&self, up: &[HostId], partitions: u32) -> bool {
        (0..partitions).all(|p| {
            let replicas: Vec<(HostId, &Running)> = (up.iter())
                .filter_map(|h| Some((*h, self.running.get(&(*h, p))?)))
                .collect();
            let leaders: Vec<&Running> = (replicas.iter())
                .filter(|(_, r)| r.leads() && r.status.leading.load(Ordering::Acquire))
                .map(|(_, r)| *r)
                .collect();
            let [leader] = leaders[..] else {
                return false;
            };
            let commit = leader.status.commit_index.load(Ordering::Acquire);
            let applied = leader.status.applied_lsn.load(Ordering::Acquire);
            replicas.len() == up.len()
                && leader.stats.in_flight.load(Ordering::Relaxed) == 0
                && replicas.iter().all(|(_, r)| {
                    r.status.commit_index.load(Ordering::Acquire) == commit
                        && r.status.applied_lsn.load(Ordering::Acquire) == applied
                })
        })
    }

    /// Notes the leader of every group as each replica publishes it; a second node leading
    /// a term already led by another is a split brain.
    fn watch(&mut self) {
        for ((host, partition), running) in &self.running {
            if !running.leads() {
                continue;
            }
            let term = running.status.term.load(Ordering::Acquire);
            let first = *self.leaders.entry((*partition, term)).or_insert(*host);
            if first != *host {
                let what = format!(
                    "partition {partition}: node-{first} and node-{host} both led term {term}"
                );
                if !self.split_brains.contains(&what) {
                    self.split_brains.push(what);
                }
            }
        }
    }

    /// Terms in which some replica was seen leading (elections won).
    pub fn terms_led(&self) -> usize {
        self.leaders.len()
    }
}

/// The id node `host`'s replica of `partition` has decided (0: not yet, a new store).
pub fn store_id(shared: &Shared, host: HostId, partition: PartitionId) -> ReplicaId {
    shared.raft_disks(host)[partition as usize]
        .lock()
        .durable
        .id
}

/// Whether the group of `partition` has settled, as every replica's durable Raft store
/// shows it: each has decided its id, and each has applied the same members, the replicas'
/// ids as voters, no learner and no change under way. Then every node holds a voter with
/// the group's data, and one of them may lose its disk.
pub fn members_settled(shared: &Shared, partition: PartitionId) -> bool {
    let nodes = shared.replicas.len() as HostId;
    let ids: BTreeSet<ReplicaId> = (0..nodes)
        .map(|host| store_id(shared, host, partition))
        .collect();
    if ids.contains(&0) || ids.len() != nodes as usize {
        return false;
    }
    (0..nodes).all(|host| {
        let raft = shared.raft_disks(host)[partition as usize].lock();
        let conf = &raft.durable.conf_state;
        conf.learners.is_empty()
            && conf.voters_outgoing.is_empty()
            && conf.voters.iter().copied().collect::<BTreeSet<_>>() == ids
    })
}

/// Reads every replica's status every [`LEADER_WATCH`] for the rest of the run (a task of
/// the harness, which no fault kills).
pub fn watch_leaders(shared: &Arc<Shared>) {
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(LEADER_WATCH).await;
            shared.lock().replicas.watch();
        }
    });
}

/// The life of one incarnation of server node `host` of a replicated run: start its
/// replicas from its disks, register them and its gateway, then serve until killed.
pub async fn run_node(shared: Arc<Shared>, host: HostId) {
    let disks = &shared.replicas[host as usize];
    // A damaged Raft store is set aside for a new one, as `wallet node` does: its replica
    // rejoins under a new id (the damage's count is the store's).
    let storages = (disks.logs.iter().zip(&disks.rafts))
        .map(|(log, raft)| (log.open(), raft.open_or_rebuild().0))
        .collect();
    let address = SocketAddr::new(server_ip(host), PEER_PORT);
    let listener = match TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(error) => {
            let stop = Stop::Fatal(format!("node-{host} cannot listen: {error}"));
            return stopped(&shared, host, stop).await;
        }
    };
    let io = NodeIo::new(Arc::clone(&shared.links), host);
    let election_seed = shared.elections.lock().next_u64();
    let config = ReplicatedConfig::new(shared.node_config(), election_seed);
    let started = start_replicated_node_with(
        io,
        listener,
        &shared.map,
        host,
        CLUSTER_SECRET,
        storages,
        config,
    )
    .await;
    let node = match started {
        Ok(node) => node,
        Err(error) => return stopped(&shared, host, stop_of(&shared, host, error)).await,
    };
    let (calls, gateway) = mpsc::channel(gateway::GATEWAY_CAPACITY);
    {
        let mut state = shared.lock();
        state.starts.insert(host, StartOutcome::Running);
        let replicas = node.statuses().into_iter().zip(node.stats());
        for ((p, status), (_, stats)) in replicas {
            let raft = disks.rafts[p as usize].clone();
            let running = Running {
                status,
                stats,
                raft,
            };
            state.replicas.running.insert((host, p), running);
        }
        shared.net.register(host, calls);
    }
    // The node (its replicas, links and listener) lives as long as this incarnation.
    gateway::serve(node.client(), gateway).await;
    std::future::pending::<()>().await;
    drop(node);
}
