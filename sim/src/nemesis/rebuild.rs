//! Faults that take a replica's data, which it must rebuild from its group: a lost disk
//! (`wipe`: a node crashed and restarted without the partition log, snapshots and Raft store
//! of one replica, or of all its replicas) and a Raft store damaged before its tail
//! (`corrupt`: the restart sets it aside for a new one, as `wallet node` does). Either way
//! the replica comes back with an empty Raft store, asks its group, rejoins as a learner
//! under its node's next incarnation, catches up, and the leader swaps it in for its old id
//! (`walletd_core::replica::membership`).
//!
//! Losing one disk is the fault model; losing a majority's is not. So a group loses a
//! replica's data only once it has settled ([`members_settled`]: every replica a voter of
//! the same members, no learner), and never again before the replica that lost it is a
//! voter again: the other replicas, a majority, hold every acknowledged record meanwhile.
//!
//! Each loss is followed until the replica is a voter again under an id of a later
//! incarnation than the one it lost; a replica that comes back under an id it had before,
//! or is not a voter again soon after the heal, breaks [`REJOIN`].

use walletd_core::replica::membership::incarnation_of;
use walletd_core::replica::ReplicaId;

use super::*;
use crate::cluster::Shared;
use crate::replicas::{holders, members_settled, store_id};

/// Share of wipes that take every replica of the node (its whole data directory), when
/// every group may lose one; the others take one replica.
const WIPE_NODE_P: f64 = 0.3;

/// The invariant of a replica that lost its data: it rejoins under a new id.
pub const REJOIN: &str = "rejoin";

/// A replica that lost its data, followed until it is a voter again.
#[derive(Debug, Clone)]
struct Rebuild {
    partition: PartitionId,
    node: HostId,
    /// The id it had when it lost its data.
    old_id: ReplicaId,
    what: &'static str,
    /// Simulated seconds since the nemesis started, when the data was lost.
    at: f64,
    /// The node's copy of the partition then ([`crate::replicas::ReplicaDisks::copy`]): a
    /// move that deleted it ends the rebuild (the group no longer names the node).
    copy: u32,
}

/// The replicas that lost their data, and the counts of the run's summary.
#[derive(Debug, Default)]
pub struct Rebuilds {
    pending: Vec<Rebuild>,
    /// Replicas whose disk was wiped, and Raft stores damaged.
    pub wiped: u32,
    pub corrupted: u32,
    /// Replicas seen a voter again under a new id.
    pub rejoined: u32,
}

impl Rebuilds {
    /// Whether some replica that lost its data is not a voter again yet.
    pub(super) fn any_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether `partition`'s group may lose one replica's data now: settled, no loss
    /// pending, and (moves on) no move under way: the nodes that hold copies are exactly
    /// those the newest placement names. A copy lost while its group shrinks off it would be
    /// deleted before it rejoined, and stop counting for the records it held while the
    /// group's voters still count its id.
    fn may_lose(&self, shared: &Shared, partition: PartitionId) -> bool {
        let moving = shared.coordinator.as_ref().is_some_and(|coordinator| {
            let placement = coordinator.peek().placement;
            let mut named = placement.group(partition).to_vec();
            named.sort_unstable();
            named != holders(shared, partition)
        });
        !moving
            && !self.pending.iter().any(|r| r.partition == partition)
            && members_settled(shared, partition)
    }
}

impl Nemesis {
    /// Crashes an up node and wipes the disks of one of its replicas (or of all of them),
    /// among the groups that may lose one; it restarts empty after a while.
    pub(super) fn wipe(&mut self, cluster: &mut Cluster) -> bool {
        let up: Vec<usize> = (0..cluster.nodes.len())
            .filter(|n| cluster.nodes[*n].up)
            .collect();
        let Some(&n) = up.choose(&mut self.rng) else {
            return false;
        };
        let host = cluster.nodes[n].host;
        let disks = &cluster.shared.replicas[host as usize];
        let held: Vec<PartitionId> = (0..cluster.shared.map.partitions())
            .filter(|p| disks.holds(*p))
            .collect();
        let mut eligible: Vec<PartitionId> = (held.iter().copied())
            .filter(|p| self.rebuilds.may_lose(&cluster.shared, *p))
            .collect();
        if eligible.is_empty() {
            return false;
        }
        if eligible.len() < held.len() || !self.rng.gen_bool(WIPE_NODE_P) {
            eligible = vec![*eligible.choose(&mut self.rng).expect("not empty")];
        }
        let down = ms(&mut self.rng, DOWN_MS);
        let old_ids: Vec<ReplicaId> = (eligible.iter())
            .map(|p| store_id(&cluster.shared, host, *p))
            .collect();
        self.crash(cluster, n, Crash::Process, down);
        let replicas = &cluster.shared.replicas[host as usize];
        for (&partition, old_id) in eligible.iter().zip(old_ids) {
            replicas.logs[partition as usize].wipe();
            replicas.rafts[partition as usize].wipe();
            self.rebuilds.wiped += 1;
            let copy = replicas.copy(partition);
            self.lost(partition, host, old_id, copy, "wiped");
        }
        let name = &cluster.nodes[n].name;
        self.note(format!(
            "wipe {name}'s replicas of partitions {eligible:?} (log, snapshots, Raft store): it restarts empty"
        ));
        true
    }

    /// Crashes an up node and damages a record in the middle of one of its replicas' Raft
    /// store (of a group that may lose one); its restart must set the store aside.
    pub(super) fn corrupt(&mut self, cluster: &mut Cluster) -> bool {
        let up: Vec<usize> = (0..cluster.nodes.len())
            .filter(|n| cluster.nodes[*n].up)
            .collect();
        let Some(&n) = up.choose(&mut self.rng) else {
            return false;
        };
        let host = cluster.nodes[n].host;
        let eligible: Vec<PartitionId> = (0..cluster.shared.map.partitions())
            .filter(|p| cluster.shared.replicas[host as usize].holds(*p))
            .filter(|p| self.rebuilds.may_lose(&cluster.shared, *p))
            .filter(|p| {
                cluster.shared.raft_disks(host)[*p as usize]
                    .lock()
                    .durable
                    .entries
                    .len()
                    >= 2
            })
            .collect();
        let Some(&partition) = eligible.choose(&mut self.rng) else {
            return false;
        };
        let crash = if self.rng.gen_bool(POWER_LOSS_P) {
            Crash::PowerLoss
        } else {
            Crash::Process
        };
        let down = ms(&mut self.rng, DOWN_MS);
        let old_id = store_id(&cluster.shared, host, partition);
        self.crash(cluster, n, crash, down);
        let raft = &cluster.shared.raft_disks(host)[partition as usize];
        let Some(index) = raft.damage(&mut self.rng) else {
            self.note("the Raft store kept fewer than two entries: a plain kill".into());
            return true;
        };
        self.rebuilds.corrupted += 1;
        let copy = cluster.shared.replicas[host as usize].copy(partition);
        self.lost(partition, host, old_id, copy, "corrupted");
        let name = &cluster.nodes[n].name;
        self.note(format!(
            "corrupt entry {index} of {name}'s Raft store of partition {partition}: its restart sets the store aside"
        ));
        true
    }

    /// Follows the replica `old_id` of `partition` on `node`, which lost its data (`what`
    /// happened to it), until it is a voter again.
    fn lost(
        &mut self,
        partition: PartitionId,
        node: HostId,
        old_id: ReplicaId,
        copy: u32,
        what: &'static str,
    ) {
        self.rebuilds.pending.push(Rebuild {
            partition,
            node,
            old_id,
            what,
            at: self.start.elapsed().as_secs_f64(),
            copy,
        });
    }

    /// Follows every replica that lost its data: done once it is a voter again under a new
    /// id; a violation if it decided an id it had before.
    pub(super) fn follow_rebuilds(&mut self, cluster: &Cluster) {
        let shared = &cluster.shared;
        let mut notes = Vec::new();
        let mut moved = Vec::new();
        let violations = &mut self.violations;
        self.rebuilds.pending.retain(|r| {
            if shared.replicas[r.node as usize].copy(r.partition) != r.copy {
                moved.push(format!(
                    "node-{}'s copy of partition {} ({} at {:.3} s) was moved away before it rejoined",
                    r.node, r.partition, r.what, r.at
                ));
                return false;
            }
            let raft = &shared.raft_disks(r.node)[r.partition as usize];
            if raft.lock().damaged.is_some() {
                return true; // Not restarted yet.
            }
            let id = store_id(shared, r.node, r.partition);
            if id == 0 {
                return true; // Asking its group.
            }
            if incarnation_of(id) <= incarnation_of(r.old_id) {
                violations.push((
                    REJOIN,
                    format!(
                        "node-{}'s replica of partition {}, {} at {:.3} s as replica {:#x}, came back as replica {id:#x}, an id its node had before",
                        r.node, r.partition, r.what, r.at, r.old_id
                    ),
                ));
                return false;
            }
            if !members_settled(shared, r.partition) {
                return true;
            }
            notes.push(format!(
                "node-{}'s replica of partition {} ({} at {:.3} s) is seen a voter again, as replica {id:#x}",
                r.node, r.partition, r.what, r.at
            ));
            false
        });
        self.rebuilds.rejoined += notes.len() as u32;
        for note in notes.into_iter().chain(moved) {
            self.note(note);
        }
    }

    /// After the heal: waits, at most `wait_max`, until every replica that lost its data is
    /// a voter again; each that is not breaks [`REJOIN`].
    pub async fn wait_rejoined(&mut self, cluster: &Cluster, wait_max: Duration) {
        const POLL: Duration = Duration::from_millis(50);
        let deadline = Instant::now() + wait_max;
        loop {
            self.follow_rebuilds(cluster);
            if self.rebuilds.pending.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        for r in std::mem::take(&mut self.rebuilds.pending) {
            let id = store_id(&cluster.shared, r.node, r.partition);
            let members = members(&cluster.shared, r.partition);
            self.violations.push((
                REJOIN,
                format!(
                    "node-{}'s replica of partition {}, {} at {:.3} s as replica {:#x}, is not a voter of a settled group {wait_max:?} after the heal (its store's id: {id:#x}; the members each store applied: {members})",
                    r.node, r.partition, r.what, r.at, r.old_id
                ),
            ));
        }
    }
}

/// The members each replica of `partition` applied, as its durable Raft store shows them.
fn members(shared: &Shared, partition: PartitionId) -> String {
    let stores: Vec<String> = (holders(shared, partition).into_iter())
        .map(|host| {
            let raft = shared.raft_disks(host)[partition as usize].lock();
            let (id, conf) = (raft.durable.id, &raft.durable.conf_state);
            format!(
                "node-{host} {id:#x} at {}: voters {:x?} outgoing {:x?} learners {:x?}",
                raft.durable.conf_index, conf.voters, conf.voters_outgoing, conf.learners
            )
        })
        .collect();
    stores.join("; ")
}
