//! The operator who moves copies (`move`), and the coordination service's faults
//! (`coordinator`), in a replicated run with more nodes than copies.
//!
//! A move of partition `p`'s copy from node `from` to node `to` is three steps, each a
//! compare-and-swap on the coordination service's revision (retried while it is down or
//! someone else changed it), as `wallet cluster move` does them:
//! 1. grow: the group gains `to` (its new copy asks to join, is taken in as a learner,
//!    catches up, and is promoted);
//! 2. wait until the group's leader reports `to` as a voter, with no change under way;
//! 3. shrink: the group loses `from` (its leader removes `from`'s replica, which finds out,
//!    stops, and has its copy deleted).
//!
//! If `to` is not a voter within [`VOTER_WAIT`] (the faults kept it from catching up), the
//! move is rolled back: the group loses `to` again. A drain moves every copy off one node,
//! one partition after another. Moves start at seeded times while the other faults run;
//! the one under way when the faults end is carried to its end after the heal, and the run
//! checks that it ended ([`MOVES`]).

use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;
use walletd_core::model::partition::{NodeId, PartitionId, PartitionMap};
use walletd_core::model::placement::Placement;

use crate::cluster::{node_address, Shared};
use crate::coordinator::{Coordinator, CoordinatorError};
use crate::liveness::{self, LIVENESS};
use crate::network::HostId;
use crate::shared::Shared as Locked;

/// Every move completes or is rolled back, and every copy a group no longer names is gone
/// from its node, within a bound after the heal.
pub const MOVES: &str = "moves";

/// Pause before each move or drain, in ms.
const MOVE_GAP_MS: (u64, u64) = (1_000, 6_000);
/// Share of the operator's actions that drain a node (the others move one copy).
const DRAIN_P: f64 = 0.15;
/// How long the operator waits for a new copy to vote before rolling its move back.
const VOTER_WAIT: Duration = Duration::from_secs(15);
/// How often the operator looks at the group's leader, and retries a failed swap.
const POLL: Duration = Duration::from_millis(50);
/// How long the operator waits before trying the coordination service again after it
/// found it down.
const RETRY_DOWN: Duration = Duration::from_millis(200);
/// Pause between two faults of the coordination service, in ms.
const COORDINATOR_GAP_MS: (u64, u64) = (2_000, 10_000);
/// How long an outage or a slow watch lasts, in ms.
const COORDINATOR_FAULT_MS: (u64, u64) = (500, 5_000);
/// Pause before the operator adds each node that joins the map (the first counted from
/// the start of the load), in ms: early enough that copies move to it under the faults.
const JOIN_GAP_MS: (u64, u64) = (1_000, 12_000);
/// Share of the coordination service's faults that are outages (the others slow a
/// node's watch).
const OUTAGE_P: f64 = 0.5;
/// Share of completed drains after which the operator removes the drained node from the
/// map (`wallet cluster remove-node`).
const REMOVE_P: f64 = 0.5;
/// How long a removed node stays out of the map before the operator adds it back, in ms.
const ADD_BACK_MS: (u64, u64) = (1_000, 6_000);

/// What the operator did, for the run's summary and its report.
#[derive(Debug, Clone, Default)]
pub struct MoveReport {
    pub started: u32,
    pub completed: u32,
    pub rolled_back: u32,
    pub drains: u32,
    /// Nodes added to the map.
    pub joined: u32,
    /// Drained nodes removed from the map (each added back a while later).
    pub removed: u32,
    /// Links, connected after the heal, that a node made to a node the map added after it
    /// started (from the watch, without a restart).
    pub linked_live: u32,
    /// Lines for the fault log (time, what).
    pub log: Vec<String>,
}

/// The operator: see the module docs.
pub struct Mover {
    shared: Arc<Shared>,
    coordinator: Arc<Coordinator>,
    rng: ChaCha8Rng,
    /// Draws of removals (a stream of its own, so that runs without them draw as before).
    removals: ChaCha8Rng,
    nodes: u32,
    start: Instant,
    verbose: bool,
    report: Locked<MoveReport>,
}

/// Which way a move's group changes.
#[derive(Debug, Clone, Copy)]
enum Change {
    Grow(NodeId),
    Shrink(NodeId),
}

impl Mover {
    pub fn new(
        shared: Arc<Shared>,
        rng: ChaCha8Rng,
        removals: ChaCha8Rng,
        nodes: u32,
        verbose: bool,
        report: Locked<MoveReport>,
    ) -> Mover {
        let coordinator = Arc::clone(shared.coordinator.as_ref().expect("moves on"));
        Mover {
            shared,
            coordinator,
            rng,
            removals,
            nodes,
            start: Instant::now(),
            verbose,
            report,
        }
    }

    fn note(&self, what: String) {
        let line = format!("{:>8.3}s {what}", self.start.elapsed().as_secs_f64());
        if self.verbose {
            println!("mover: {line}");
        }
        self.report.lock().log.push(line);
    }

    /// Starts moves and drains at seeded times until `until`; the one under way then is
    /// carried to its end.
    pub async fn run(mut self, until: Instant) {
        loop {
            let gap = Duration::from_millis(self.rng.gen_range(MOVE_GAP_MS.0..=MOVE_GAP_MS.1));
            tokio::time::sleep(gap).await;
            if Instant::now() >= until {
                return;
            }
            if self.rng.gen_bool(DRAIN_P) {
                self.drain(until).await;
            } else if let Some((partition, from, to)) = self.draw_move(None, None) {
                self.carry_out(partition, from, to).await;
            }
        }
    }

    /// A move drawn from the placement now: of `partition` (or one drawn), off `from` (or
    /// a node of its group drawn), to a node outside its group.
    fn draw_move(
        &mut self,
        partition: Option<PartitionId>,
        from: Option<NodeId>,
    ) -> Option<(PartitionId, NodeId, NodeId)> {
        let placement = self.coordinator.peek().placement;
        let partitions = placement.groups.len() as PartitionId;
        let partition = partition.unwrap_or_else(|| self.rng.gen_range(0..partitions));
        let group = placement.group(partition);
        let from = match from {
            Some(from) => from,
            None => *group.choose(&mut self.rng)?,
        };
        // Only a node of the map may be named (one that has not joined yet is not).
        let listed = self.coordinator.peek().map.nodes;
        let outside: Vec<NodeId> = (listed.keys().copied())
            .filter(|n| !group.contains(n))
            .collect();
        let to = *outside.choose(&mut self.rng)?;
        Some((partition, from, to))
    }

    /// Moves every copy off a node drawn at random, one partition after another (until
    /// the faults end).
    async fn drain(&mut self, until: Instant) {
        let node = self.rng.gen_range(0..self.nodes);
        self.report.lock().drains += 1;
        self.note(format!("drain node-{node}: every copy moves off it"));
        let partitions = self.coordinator.peek().placement.groups.len() as PartitionId;
        for partition in 0..partitions {
            if Instant::now() >= until {
                return;
            }
            let held = self
                .coordinator
                .peek()
                .placement
                .group(partition)
                .contains(&node);
            if !held {
                continue;
            }
            if let Some((partition, from, to)) = self.draw_move(Some(partition), Some(node)) {
                self.carry_out(partition, from, to).await;
            }
        }
        self.remove_and_add_back(node).await;
    }

    /// Sometimes (see [`REMOVE_P`]), once node `node` holds no copy: waits until every
    /// group's leader has applied members without it (as `wallet cluster drain` waits before
    /// it reports the node drained), removes it from the map as `wallet cluster remove-node`
    /// does, and adds it back a while later, so that it starts again on its disks. The node
    /// stops when it learns it was removed.
    async fn remove_and_add_back(&mut self, node: NodeId) {
        if !self.removals.gen_bool(REMOVE_P) {
            return;
        }
        let now = self.coordinator.peek();
        if !now.map.nodes.contains_key(&node) || !now.placement.hosted(node).is_empty() {
            return; // Not in the map yet, or a move off it was rolled back.
        }
        if !self.out_of_every_group(node).await {
            self.note(format!(
                "node-{node} is still counted by a group: not removed"
            ));
            return;
        }
        let removed = change_map(&self.coordinator, |map, placement| {
            if !map.nodes.contains_key(&node) || !placement.hosted(node).is_empty() {
                return None;
            }
            let mut map = map.clone();
            map.nodes.remove(&node);
            // Each partition's owner is the first node of its group, as the stored map
            // keeps it.
            map.owners = (0..map.partitions())
                .map(|p| placement.group(p)[0])
                .collect();
            Some(map)
        })
        .await;
        let Some(revision) = removed else {
            return;
        };
        self.report.lock().removed += 1;
        self.note(format!(
            "coordinator: revision {revision}: node-{node} removed from the map"
        ));
        let gap = self.removals.gen_range(ADD_BACK_MS.0..=ADD_BACK_MS.1);
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let added = change_map(&self.coordinator, |map, _| {
            let mut map = map.clone();
            map.nodes.insert(node, node_address(node));
            Some(map)
        })
        .await;
        if let Some(revision) = added {
            self.note(format!(
                "coordinator: revision {revision}: node-{node} added back to the map"
            ));
        }
    }

    /// Waits, at most [`VOTER_WAIT`], until the leader of every group reports settled
    /// voters without `node`.
    async fn out_of_every_group(&self, node: NodeId) -> bool {
        let partitions = self.coordinator.peek().placement.groups.len() as PartitionId;
        let deadline = Instant::now() + VOTER_WAIT;
        while Instant::now() < deadline {
            let out = (0..partitions).all(|p| {
                let voters = self.shared.lock().replicas.settled_voters(p);
                voters.is_some_and(|voters| !voters.contains(&node))
            });
            if out {
                return true;
            }
            tokio::time::sleep(POLL).await;
        }
        false
    }

    /// Moves `partition`'s copy from `from` to `to`, or rolls the move back.
    async fn carry_out(&mut self, partition: PartitionId, from: NodeId, to: NodeId) {
        self.report.lock().started += 1;
        self.note(format!(
            "move partition {partition} from node-{from} to node-{to}: grow"
        ));
        self.change(partition, Change::Grow(to)).await;
        let voted = self.wait_voter(partition, to).await;
        if voted {
            self.note(format!(
                "move partition {partition}: node-{to} votes, shrink off node-{from}"
            ));
            self.change(partition, Change::Shrink(from)).await;
            self.report.lock().completed += 1;
        } else {
            self.note(format!(
                "move partition {partition}: node-{to} does not vote within {VOTER_WAIT:?}: roll back"
            ));
            self.change(partition, Change::Shrink(to)).await;
            self.report.lock().rolled_back += 1;
        }
    }

    /// Makes `change` to `partition`'s group by compare-and-swap, retrying until it is made
    /// (or the group already has it).
    async fn change(&mut self, partition: PartitionId, change: Change) {
        loop {
            let current = match self.coordinator.read() {
                Ok(current) => current,
                Err(_) => {
                    tokio::time::sleep(RETRY_DOWN).await;
                    continue;
                }
            };
            let mut placement = current.placement.clone();
            let group = &mut placement.groups[partition as usize];
            match change {
                Change::Grow(node) if !group.contains(&node) => group.push(node),
                Change::Shrink(node) if group.contains(&node) => group.retain(|n| *n != node),
                _ => return, // Made already.
            }
            let swapped = (self.coordinator).swap(current.revision(), current.map, placement);
            match swapped {
                Ok(revision) => {
                    self.note(format!(
                        "coordinator: revision {revision}: partition {partition} {change:?}"
                    ));
                    return;
                }
                Err(CoordinatorError::Down) => tokio::time::sleep(RETRY_DOWN).await,
                Err(CoordinatorError::Stale { .. }) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Waits, at most [`VOTER_WAIT`], until `partition`'s leader reports `node` among its
    /// voters with no change of its members under way.
    async fn wait_voter(&self, partition: PartitionId, node: NodeId) -> bool {
        let deadline = Instant::now() + VOTER_WAIT;
        while Instant::now() < deadline {
            let voters = self.shared.lock().replicas.settled_voters(partition);
            if voters.is_some_and(|voters| voters.contains(&node)) {
                return true;
            }
            tokio::time::sleep(POLL).await;
        }
        false
    }
}

/// Adds the nodes `joining` to the map, each at a seeded time ([`JOIN_GAP_MS`] after the
/// last), as `wallet cluster add-node` adds one: a compare-and-swap that lists it at its
/// addresses and raises the map's version, retried while the service is down or someone
/// else changed the map. Its process, waiting until the map lists it, then starts; the
/// other nodes learn it from their watch and link to it; moves may then name it.
pub async fn join_nodes(
    coordinator: Arc<Coordinator>,
    mut rng: ChaCha8Rng,
    joining: Vec<NodeId>,
    report: Locked<MoveReport>,
) {
    let start = Instant::now();
    for node in joining {
        let gap = rng.gen_range(JOIN_GAP_MS.0..=JOIN_GAP_MS.1);
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let added = change_map(&coordinator, |map, _| {
            assert!(!map.nodes.contains_key(&node), "added once");
            let mut map = map.clone();
            map.nodes.insert(node, node_address(node));
            Some(map)
        })
        .await;
        let revision = added.expect("a node not in the map is added");
        let at = start.elapsed().as_secs_f64();
        let mut report = report.lock();
        report.joined += 1;
        (report.log).push(format!(
            "{at:>8.3}s coordinator: revision {revision}: node-{node} added to the map"
        ));
    }
}

/// Changes the map by compare-and-swap, as the cluster commands do: `change` says what the
/// current map (with its placement) becomes, or `None` for nothing to change; retried
/// through outages and lost races. Returns the revision written, if one was.
async fn change_map(
    coordinator: &Coordinator,
    mut change: impl FnMut(&PartitionMap, &Placement) -> Option<PartitionMap>,
) -> Option<u64> {
    loop {
        let current = match coordinator.read() {
            Ok(current) => current,
            Err(_) => {
                tokio::time::sleep(RETRY_DOWN).await;
                continue;
            }
        };
        let map = change(&current.map, &current.placement)?;
        map.validate().expect("the operator writes only valid maps");
        match coordinator.swap(current.revision(), map, current.placement) {
            Ok(revision) => return Some(revision),
            Err(CoordinatorError::Down) => tokio::time::sleep(RETRY_DOWN).await,
            Err(CoordinatorError::Stale { .. }) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Injects the coordination service's faults until `until`: outages (no read or swap
/// succeeds; the nodes serve on the map they have) and slow watches (a node learns new
/// revisions seconds late). Lines for the fault log go to `report`.
pub async fn coordinator_faults(
    coordinator: Arc<Coordinator>,
    mut rng: ChaCha8Rng,
    nodes: u32,
    until: Instant,
    report: Locked<MoveReport>,
) {
    let start = Instant::now();
    let ms = |rng: &mut ChaCha8Rng, (a, b): (u64, u64)| Duration::from_millis(rng.gen_range(a..=b));
    loop {
        tokio::time::sleep(ms(&mut rng, COORDINATOR_GAP_MS)).await;
        if Instant::now() >= until {
            return;
        }
        let lasts = ms(&mut rng, COORDINATOR_FAULT_MS);
        let at = start.elapsed().as_secs_f64();
        if rng.gen_bool(OUTAGE_P) {
            report
                .lock()
                .log
                .push(format!("{at:>8.3}s coordinator down for {lasts:?}"));
            coordinator.set_down(true);
            tokio::time::sleep(lasts).await;
            coordinator.set_down(false);
        } else {
            let node: HostId = rng.gen_range(0..nodes);
            report.lock().log.push(format!(
                "{at:>8.3}s node-{node}'s watch of the coordinator slow for {lasts:?}"
            ));
            coordinator.set_slow(node, true);
            tokio::time::sleep(lasts).await;
            coordinator.set_slow(node, false);
        }
    }
}

/// Every node of the map is linked from every other node of it, within a bound after
/// the heal: a node added during the run too, from nodes that learned it from their watch.
pub const LINKED: &str = "linked";

/// After the heal: waits for the operator to end the move under way (and add the nodes
/// still to join), then until every node has learned the newest map, every group's copies
/// are exactly the nodes it names ([`MOVES`]), every node of the map is linked from every
/// other ([`LINKED`]) and holds a liveness entry naming the newest map ([`LIVENESS`]), all
/// within `within`. Returns what is not so by then, by
/// invariant, and the links made live ([`MoveReport::linked_live`]).
pub async fn settle(
    shared: &Arc<Shared>,
    mover: tokio::task::JoinHandle<()>,
    within: Duration,
) -> (Vec<(&'static str, String)>, u32) {
    let deadline = Instant::now() + within;
    if tokio::time::timeout(within, mover).await.is_err() {
        let what = format!(
            "the move under way neither completed nor was rolled back within {within:?} of the heal"
        );
        return (vec![(MOVES, what)], 0);
    }
    let coordinator = shared.coordinator.as_ref().expect("moves on");
    loop {
        let unsettled = unsettled_copies(shared);
        let map = coordinator.peek().map;
        let (unlinked, linked_live) = shared.lock().replicas.unlinked(&map);
        let unseen = liveness::unsettled_liveness(coordinator, map.nodes.keys().copied());
        if unsettled.is_empty() && unlinked.is_empty() && unseen.is_empty() {
            return (Vec::new(), linked_live);
        }
        if Instant::now() >= deadline {
            let found = [(MOVES, unsettled), (LINKED, unlinked), (LIVENESS, unseen)]
                .into_iter()
                .filter(|(_, found)| !found.is_empty())
                .map(|(name, found)| {
                    (
                        name,
                        format!("{within:?} after the heal: {}", found.join("; ")),
                    )
                })
                .collect();
            return (found, linked_live);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What differs from the newest map: a group with more or fewer copies than it was founded
/// with (a move left half done), a node that has not learned the map, a node the map names
/// for a group that runs no replica of it, a node it no longer names that still holds a
/// copy or runs a replica.
fn unsettled_copies(shared: &Shared) -> Vec<String> {
    let coordinator = shared.coordinator.as_ref().expect("moves on");
    let newest = coordinator.peek();
    let placement = &newest.placement;
    let state = shared.lock();
    let mut found = Vec::new();
    for (host, disks) in shared.replicas.iter().enumerate() {
        let learned = disks.learned().revision();
        if learned < newest.revision() {
            found.push(format!(
                "node-{host} learned revision {learned}, not {}",
                newest.revision()
            ));
        }
    }
    for partition in 0..placement.groups.len() as PartitionId {
        let group = placement.group(partition);
        let founders = placement.founders(partition);
        if group.len() != founders.len() {
            found.push(format!(
                "partition {partition}'s group is {group:?}, of {} copies, not {}",
                group.len(),
                founders.len()
            ));
        }
        for (host, disks) in shared.replicas.iter().enumerate() {
            let host = host as HostId;
            let named = group.contains(&host);
            let (holds, runs) = (disks.holds(partition), state.replicas.runs(host, partition));
            if named && !(holds && runs) {
                found.push(format!(
                    "node-{host}, named for partition {partition}, holds a copy: {holds}, runs a replica: {runs}"
                ));
            }
            if !named && (holds || runs) {
                found.push(format!(
                    "node-{host}, no longer named for partition {partition}, holds a copy: {holds}, runs a replica: {runs}"
                ));
            }
        }
    }
    found
}
