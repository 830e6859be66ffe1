//! Moves of replicas between nodes ([`super::next_change`], [`super::answer_ask`]) on a
//! small network of raft-rs nodes with in-memory logs and no partition machine: the
//! membership rules alone, every message delivered in order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};

use super::*;

/// The first voters of every group here: nodes 0, 1 and 2.
const FIRST: [NodeId; 3] = [0, 1, 2];

struct Net {
    /// Running replicas by id.
    replicas: BTreeMap<ReplicaId, RawNode<MemStorage>>,
    in_flight: VecDeque<Message>,
    /// The nodes the map names.
    target: Vec<NodeId>,
    /// Replicas a change removed, which the runtime would stop.
    removed: BTreeSet<ReplicaId>,
    /// Leadership handed over, for the assertions.
    transfers: usize,
}

fn replica(id: ReplicaId) -> RawNode<MemStorage> {
    let voters: Vec<ReplicaId> = FIRST.iter().copied().map(initial_id).collect();
    // A joiner starts from the group's first members too, as the runtime's stores do.
    let storage = MemStorage::new_with_conf_state(ConfState::from((voters, Vec::new())));
    let config = Config {
        id,
        election_tick: 10,
        heartbeat_tick: 1,
        ..Config::default()
    };
    RawNode::new(&config, storage, &crate::replica::raft_logger::logger(0)).expect("valid")
}

impl Net {
    fn new() -> Net {
        let replicas = FIRST
            .iter()
            .map(|node| (initial_id(*node), replica(initial_id(*node))))
            .collect();
        let mut net = Net {
            replicas,
            in_flight: VecDeque::new(),
            target: FIRST.to_vec(),
            removed: BTreeSet::new(),
            transfers: 0,
        };
        net.replicas
            .get_mut(&initial_id(0))
            .expect("node 0")
            .campaign()
            .expect("campaigns");
        net.settle(200);
        assert_eq!(net.leader(), Some(initial_id(0)));
        net
    }

    fn leader(&self) -> Option<ReplicaId> {
        let leaders: Vec<_> = (self.replicas.iter())
            .filter(|(_, raw)| raw.raft.state == StateRole::Leader)
            .map(|(id, _)| *id)
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    /// The members as the leader holds them.
    fn conf(&self) -> ConfState {
        let leader = self.leader().expect("a leader");
        self.replicas[&leader].raft.prs().conf().to_conf_state()
    }

    fn voter_nodes(&self) -> BTreeSet<NodeId> {
        self.conf()
            .voters
            .iter()
            .filter_map(|id| node_of(*id))
            .collect()
    }

    /// Runs `rounds` rounds: the leader's next membership step, nodes of the target without
    /// a replica ask, every ready handled, every message delivered.
    fn settle(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.leader_step();
            self.asks();
            let ids: Vec<_> = self.replicas.keys().copied().collect();
            for id in ids {
                self.replicas.get_mut(&id).expect("running").tick();
                self.handle_ready(id);
            }
            while let Some(message) = self.in_flight.pop_front() {
                if let Some(raw) = self.replicas.get_mut(&message.to) {
                    let _ = raw.step(message.clone());
                    self.handle_ready(message.to);
                }
            }
        }
    }

    fn leader_step(&mut self) {
        let Some(leader) = self.leader() else { return };
        let target = self.target.clone();
        let raw = self.replicas.get_mut(&leader).expect("running");
        match next_change(raw, Some(&target)) {
            Some(Change::Propose(change)) => raw
                .propose_conf_change(Vec::new(), change)
                .expect("proposed"),
            Some(Change::TransferLeader(to)) => {
                assert!(self.conf().voters.contains(&to), "to a voter");
                assert!(target.contains(&node_of(to).expect("a node")), "that stays");
                self.transfers += 1;
                self.replicas
                    .get_mut(&leader)
                    .expect("running")
                    .transfer_leader(to);
            }
            None => {}
        }
    }

    /// A node of the target with no running replica asks the leader; an answer that names
    /// an id starts it.
    fn asks(&mut self) {
        let Some(leader) = self.leader() else { return };
        let running: BTreeSet<NodeId> =
            self.replicas.keys().filter_map(|id| node_of(*id)).collect();
        for node in self.target.clone() {
            if running.contains(&node) {
                continue;
            }
            let target = self.target.clone();
            let raw = self.replicas.get_mut(&leader).expect("running");
            if let (Answer::Member { id }, _) = answer_ask(raw, node, Some(&target), true) {
                self.replicas.insert(id, replica(id));
            }
        }
    }

    fn handle_ready(&mut self, id: ReplicaId) {
        let Some(raw) = self.replicas.get_mut(&id) else {
            return;
        };
        if !raw.has_ready() {
            return;
        }
        let mut ready = raw.ready();
        self.in_flight.extend(ready.take_messages());
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            raw.mut_store()
                .wl()
                .apply_snapshot(snapshot)
                .expect("applies");
        }
        // Applied before `advance`, which takes them as applied (and, on a leader that
        // entered a joint configuration, proposes to leave it).
        let mut member = true;
        for entry in ready.take_committed_entries() {
            member &= apply(raw, &entry);
        }
        raw.mut_store()
            .wl()
            .append(ready.entries())
            .expect("appends");
        if let Some(hard_state) = ready.hs() {
            raw.mut_store().wl().set_hardstate(hard_state.clone());
        }
        self.in_flight.extend(ready.take_persisted_messages());
        let mut light = raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            raw.mut_store().wl().mut_hard_state().set_commit(commit);
        }
        self.in_flight.extend(light.take_messages());
        for entry in light.take_committed_entries() {
            member &= apply(raw, &entry);
        }
        raw.advance_apply();
        let leaves = !self.target.contains(&node_of(id).expect("a node"));
        if !member && leaves {
            // Removed, and its node no longer in the map: the runtime stops it. (A joiner
            // replaying the log applies members without it before those with it.)
            self.replicas.remove(&id);
            self.removed.insert(id);
        }
    }

    /// Settles until the leader's voters are the target's nodes, with no learner and no
    /// joint configuration, checking on the way that the group never has fewer voters than
    /// the target.
    fn converge(&mut self) {
        for _ in 0..200 {
            self.settle(5);
            let conf = self.conf();
            assert!(conf.voters.len() >= self.target.len(), "{conf:?}");
            let target: BTreeSet<NodeId> = self.target.iter().copied().collect();
            let done = self.voter_nodes() == target
                && conf.learners.is_empty()
                && conf.voters_outgoing.is_empty();
            if done {
                return;
            }
        }
        panic!(
            "the group did not converge to {:?}: {:?}",
            self.target,
            self.conf()
        );
    }
}

#[test]
fn a_replica_moves_to_a_new_node_through_a_learner_and_one_joint_change() {
    let mut net = Net::new();
    net.target = vec![0, 1, 3];
    net.converge();
    assert_eq!(net.removed, BTreeSet::from([initial_id(2)]));
    // Node 3's replica is new: an id of node 3 past its first incarnation.
    let node3: Vec<_> = (net.conf().voters.iter())
        .filter(|id| node_of(**id) == Some(3))
        .map(|id| incarnation_of(*id))
        .collect();
    assert!(node3.len() == 1 && node3[0] > 0, "{:?}", net.conf());
    assert_eq!(net.leader(), Some(initial_id(0)), "the leader stayed");
    assert_eq!(net.transfers, 0);
}

#[test]
fn a_leader_that_moves_hands_leadership_over_first() {
    let mut net = Net::new();
    net.target = vec![1, 2, 3];
    net.converge();
    assert_eq!(net.removed, BTreeSet::from([initial_id(0)]));
    assert!(net.transfers >= 1, "leadership was handed over");
    let leader = net.leader().expect("a leader");
    assert_ne!(node_of(leader), Some(0));
}

#[test]
fn a_group_grows_and_shrinks_to_its_target() {
    let mut net = Net::new();
    net.target = vec![0, 1, 2, 3, 4];
    net.converge();
    assert!(net.removed.is_empty());
    net.target = vec![2, 3, 4];
    net.converge();
    assert_eq!(net.removed, BTreeSet::from([initial_id(0), initial_id(1)]));
}

#[test]
fn a_node_outside_the_target_is_not_taken_in() {
    let mut net = Net::new();
    let leader = net.leader().expect("a leader");
    let target = net.target.clone();
    let raw = net.replicas.get_mut(&leader).expect("running");
    assert_eq!(
        answer_ask(raw, 7, Some(&target), true),
        (
            Answer::Running {
                leader: Some(leader)
            },
            false
        )
    );
    net.settle(20);
    assert!(net.conf().learners.is_empty());
}

/// Applies `entry` on `raw`; for a membership change, whether `raw` is still a member after
/// it.
fn apply(raw: &mut RawNode<MemStorage>, entry: &Entry) -> bool {
    let conf = match entry.get_entry_type() {
        EntryType::EntryNormal => return true,
        EntryType::EntryConfChange => {
            let change = ConfChange::parse_from_bytes(&entry.data).expect("decodes");
            raw.apply_conf_change(&change).expect("applies")
        }
        EntryType::EntryConfChangeV2 => {
            let change = ConfChangeV2::parse_from_bytes(&entry.data).expect("decodes");
            raw.apply_conf_change(&change).expect("applies")
        }
    };
    raw.mut_store().wl().set_conf_state(conf.clone());
    is_member(&conf, raw.raft.id)
}
