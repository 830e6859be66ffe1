//! Who is in a partition's group, and how a replica that lost its disk comes back.
//!
//! # Replica ids
//! A replica id names one *incarnation* of a node's copy of a partition: the low 32 bits
//! are the node id + 1 (Raft reserves 0), the high 32 bits count the incarnations. A new
//! group's voters are the first incarnations ([`initial_id`]), which is also every id a
//! replica had before incarnations existed, so their stores read as they always did.
//!
//! # Why a lost disk comes back under a new id
//! Raft's safety rests on what a voter keeps on disk: its vote, and every entry it
//! acknowledged. A replica that restarts with an empty disk under its old id could vote a
//! second time in a term it already voted in (two leaders of one term), or be counted,
//! with its now empty log, in the majority that elects a leader lacking an acknowledged
//! entry (an acknowledged transfer lost). So a replica with nothing on disk never votes
//! under an id that may have voted: it asks its group to take it in again
//! ([`MembershipMessage::Ask`]), the leader adds it as a *learner* under a new incarnation of
//! its node, above every one it had (a learner neither votes nor counts toward a commit;
//! see [`next_incarnation`]), catches it up by log, and once its log holds everything
//! committed, replaces the node's old voter with it in one joint-consensus change
//! (`AddNode(new)`, `RemoveNode(old)`, left automatically).
//!
//! # A new group or a lost disk?
//! The two look the same from inside: an empty store. A replica that has never decided
//! ([`crate::replica::DurableRaft::id`] is 0 and nothing is written) asks every other node
//! of the group. If each of them answers that it, too, has never taken part in the group
//! ([`Answer::Fresh`]), no vote was ever cast and no entry acknowledged, and the replica
//! starts as its node's first incarnation. If any answers that the group has run, it joins
//! as above. It waits while some node does not answer: a new group starts once every
//! node of it is up, and a lost disk comes back once its group is reachable.
//!
//! A replica whose Raft store is new but whose partition log holds records (its Raft store
//! was lost or damaged alone) knows the group has run: it never starts a new group, and it
//! answers others that it has run. So if every replica lost its Raft store, none starts a
//! new group over logs that may differ: the group waits for an operator.
//!
//! Answers carry the asker's nonce, drawn anew by every start: an answer to an ask of an
//! earlier start (which may name an id that has since voted) is ignored.
//!
//! # Moving a replica
//! The partition map names the nodes that hold a partition's replicas; the runtime hands
//! them to the leader as its *target* ([`super::Replica::set_target`]), and the leader
//! converges its group to it, one change at a time ([`next_change`]):
//! - a node of the target with no replica asks as a lost disk does, and is taken in as a
//!   learner (a node outside the target is not);
//! - once a learner's log holds everything committed, it replaces, in one joint change, a
//!   voter of its own node (a lost disk) or else a voter of a node the target no longer
//!   names (a move), or is promoted alone if the group has fewer voters than the target;
//! - a learner of a node outside the target is removed, and so is a voter of one once the
//!   group has more voters than the target;
//! - a leader never removes itself: it first hands leadership to a caught-up voter of the
//!   target, which carries on.
//!
//! So the group never has fewer voters than the target while it changes, and every change
//! is one Raft membership change with its own safety (joint consensus for a swap).
//!
//! # Leaving the group
//! A replica the group removed may never hear of it: once the leader has applied a change
//! it no longer sends to the replicas the change left out. So a replica on a node the map no
//! longer names for the group asks the members it knows, now and then, whether they still
//! count it ([`MembershipMessage::Check`]). A member whose applied members leave it out,
//! at a later membership change than the one the asker applied last, answers
//! [`MembershipMessage::Removed`]: the change that removed it is committed, so the asker
//! stops, and its node deletes its copy ([`is_removal`]); so does one that applied such a
//! change itself. A replica whose node the map still names never takes such an answer: it
//! is a copy that is joining, or one that the leader will take in again.

use std::collections::BTreeSet;

use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};
use raft::{RawNode, StateRole};

use crate::model::partition::NodeId;

use super::ReplicaId;

/// The first incarnation of `node`'s replica: the voters of a new group.
pub fn initial_id(node: NodeId) -> ReplicaId {
    u64::from(node) + 1
}

/// Incarnation `incarnation` of `node`'s replica.
pub fn replica_id(node: NodeId, incarnation: u32) -> ReplicaId {
    (u64::from(incarnation) << 32) | initial_id(node)
}

/// The node a replica id belongs to.
pub fn node_of(replica: ReplicaId) -> Option<NodeId> {
    let low = replica & u64::from(u32::MAX);
    low.checked_sub(1).map(|node| node as NodeId)
}

/// Which incarnation of its node's replica an id is.
pub fn incarnation_of(replica: ReplicaId) -> u32 {
    (replica >> 32) as u32
}

/// What a replica answers an [`MembershipMessage::Ask`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// This replica has never taken part in the group: no term, no vote, no entry.
    Fresh,
    /// The group has run. `leader` is the leader this replica knows of (to forward to);
    /// ask again: the leader answers with the asker's id once it has added it.
    Running { leader: Option<ReplicaId> },
    /// The leader has taken the asker in as replica `id` (a learner until it catches up).
    Member { id: ReplicaId },
}

/// Messages of the membership exchange, between nodes of a partition's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipMessage {
    /// Node `node`'s replica has nothing on disk and asks how to start.
    Ask { node: NodeId, nonce: u64 },
    /// The answer to the ask with `nonce`.
    Answer { nonce: u64, answer: Answer },
    /// Replica `id`, on a node the map no longer names for the group, asks whether the
    /// group still counts it (see "Leaving the group" in the module docs).
    Check { id: ReplicaId },
    /// The answer to a [`MembershipMessage::Check`] from a member whose applied members,
    /// changed last at index `conf_index`, do not include replica `id`.
    Removed { id: ReplicaId, conf_index: u64 },
}

/// What a member answers replica `id`'s [`MembershipMessage::Check`]: `Removed` if its
/// applied members `conf` (changed last at `conf_index`) leave `id` out while they hold
/// `own` (a replica outside its own members knows nothing of them).
pub fn answer_check(
    conf: &ConfState,
    conf_index: u64,
    own: ReplicaId,
    id: ReplicaId,
) -> Option<MembershipMessage> {
    (is_member(conf, own) && !is_member(conf, id))
        .then_some(MembershipMessage::Removed { id, conf_index })
}

/// Whether replica `own`, whose applied members changed last at `own_conf_index`, may take
/// `Removed { id, conf_index }` as the end of its part in the group. The sender applied a
/// later membership than this replica did, and it leaves `own` out: membership changes
/// are committed in order, so a later one that leaves a replica out removed it, and voter
/// ids are not handed out again. The caller also checks that the map no longer names the
/// replica's node for the group.
pub fn is_removal(own: ReplicaId, own_conf_index: u64, message: &MembershipMessage) -> bool {
    matches!(message, MembershipMessage::Removed { id, conf_index }
        if *id == own && *conf_index > own_conf_index)
}

/// How a replica with nothing on disk starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The whole group is new: start as the node's first incarnation, a voter.
    Bootstrap,
    /// The group has run: start as learner `id`, with an empty log.
    Join(ReplicaId),
}

/// A replica with nothing on disk finding out how to start (see the module docs).
#[derive(Debug)]
pub struct Joiner {
    node: NodeId,
    nonce: u64,
    /// Every other node of the group.
    peers: BTreeSet<NodeId>,
    /// The peers that answered [`Answer::Fresh`].
    fresh: BTreeSet<NodeId>,
    /// Some peer answered that the group has run: never a new group, then.
    ran: bool,
    /// The leader some answer named.
    leader: Option<ReplicaId>,
}

impl Joiner {
    /// `group` lists the nodes that hold the group's replicas, `node` among them;
    /// `has_records` says whether this replica's partition log holds any.
    pub fn new(node: NodeId, group: &[NodeId], nonce: u64, has_records: bool) -> Joiner {
        assert!(group.contains(&node), "a replica's node is in its group");
        Joiner {
            node,
            nonce,
            peers: group.iter().copied().filter(|n| *n != node).collect(),
            fresh: BTreeSet::new(),
            ran: has_records,
            leader: None,
        }
    }

    /// The group changed while this replica decides (the placement moved another copy):
    /// `group`, `node` still among them, is whom it asks from now on. A node that left the
    /// group may have deleted its copy and answers nothing, and the leader may be a node
    /// that joined it.
    pub fn regroup(&mut self, group: &[NodeId]) {
        assert!(
            group.contains(&self.node),
            "a replica's node is in its group"
        );
        self.peers = group.iter().copied().filter(|n| *n != self.node).collect();
        let peers = &self.peers;
        self.fresh.retain(|n| peers.contains(n));
    }

    /// The ask to send to every node of [`Joiner::peers_to_ask`] (again, until decided:
    /// messages are lost).
    pub fn ask(&self) -> MembershipMessage {
        MembershipMessage::Ask {
            node: self.node,
            nonce: self.nonce,
        }
    }

    /// The peers that have not yet answered fresh (asking the others again changes nothing
    /// until one of them answers otherwise, which the leader's answers cover).
    pub fn peers_to_ask(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers
            .iter()
            .copied()
            .filter(|n| !self.fresh.contains(n))
    }

    /// What this replica answers an ask while it has not decided.
    pub fn answer(&self) -> Answer {
        match self.ran {
            // Its own log says the group ran; it knows no leader to name.
            true => Answer::Running { leader: None },
            false => Answer::Fresh,
        }
    }

    /// The leader some answer named: where client requests can go meanwhile.
    pub fn leader(&self) -> Option<ReplicaId> {
        self.leader
    }

    /// An answer from `from`. Decides once every peer answered fresh, or the leader named
    /// this replica's id.
    pub fn handle(&mut self, from: NodeId, message: MembershipMessage) -> Option<Decision> {
        let MembershipMessage::Answer { nonce, answer } = message else {
            return None;
        };
        if nonce != self.nonce || !self.peers.contains(&from) {
            return None;
        }
        if known_bug!(RejoinUnderOldId) {
            return Some(Decision::Bootstrap);
        }
        match answer {
            Answer::Fresh => {
                self.fresh.insert(from);
                let all = self.fresh.len() == self.peers.len();
                (all && !self.ran).then_some(Decision::Bootstrap)
            }
            Answer::Running { leader } => {
                // One node that has run rules out a new group for good.
                self.ran = true;
                self.leader = leader.or(self.leader);
                None
            }
            Answer::Member { id } => {
                assert_eq!(node_of(id), Some(self.node), "an id of this node");
                assert!(
                    incarnation_of(id) > 0,
                    "a joiner never gets a first incarnation"
                );
                Some(Decision::Join(id))
            }
        }
    }
}

/// What the leader `raw` answers node `node`'s ask; it may propose to add the node's next
/// incarnation as a learner, and answers with that id once the change is applied (the
/// asker asks again until then).
/// A node outside `target` (the map's nodes, when the runtime gave them) is not taken in.
/// With `propose` false it never proposes (the ask was served already). Returns the answer
/// and whether a learner was proposed.
pub(super) fn answer_ask<S: raft::Storage>(
    raw: &mut RawNode<S>,
    node: NodeId,
    target: Option<&[NodeId]>,
    propose: bool,
) -> (Answer, bool) {
    let own = raw.raft.id;
    let leader = (raw.raft.leader_id != raft::INVALID_ID).then_some(raw.raft.leader_id);
    if raw.raft.state != StateRole::Leader {
        return (Answer::Running { leader }, false);
    }
    if !wanted(target, Some(node)) {
        return (Answer::Running { leader: Some(own) }, false);
    }
    let conf = raw.raft.prs().conf().to_conf_state();
    let of_node = |ids: &[ReplicaId]| -> Vec<ReplicaId> {
        ids.iter()
            .copied()
            .filter(|id| node_of(*id) == Some(node))
            .collect()
    };
    if let Some(learner) = of_node(&conf.learners).first() {
        return (Answer::Member { id: *learner }, false);
    }
    // A replica that lost its disk runs under no id until it is taken in, so its node's
    // old voter falls silent. A voter of the node still heard from means the ask is a late
    // copy from an earlier start, which has been taken in since: no learner for it.
    if heard_from_voter(raw, node) {
        return (Answer::Running { leader: Some(own) }, false);
    }
    if raw.raft.has_pending_conf() || !propose {
        return (Answer::Running { leader: Some(own) }, false);
    }
    let known = [
        &conf.voters,
        &conf.voters_outgoing,
        &conf.learners,
        &conf.learners_next,
    ];
    let newest = known
        .iter()
        .flat_map(|ids| of_node(ids))
        .map(incarnation_of)
        .max();
    let Some(next) = next_incarnation(newest, raw.raft.raft_log.last_index() + 1) else {
        tracing::error!(node, "no incarnation left for the node's replica");
        return (Answer::Running { leader: Some(own) }, false);
    };
    let learner = replica_id(node, next);
    let change = ConfChangeV2 {
        changes: vec![single(ConfChangeType::AddLearnerNode, learner)].into(),
        ..ConfChangeV2::default()
    };
    let proposed = match raw.propose_conf_change(Vec::new(), change) {
        Ok(()) => {
            tracing::info!(
                node,
                learner,
                "adding a learner for a replica with an empty disk"
            );
            true
        }
        Err(error) => {
            tracing::warn!(node, learner, %error, "learner not proposed");
            false
        }
    };
    (Answer::Running { leader: Some(own) }, proposed)
}

/// The incarnation of a new learner of a node whose newest incarnation in the members is
/// `newest`, added by the log entry at index `at`. Never one the node had before, even one
/// that left the members since (a copy moved away and back): a late message of an earlier
/// copy must not count for the new one. The members forget a removed id, but the log index
/// only grows, so the entry's index (its low 32 bits, 0 skipped) is past the index of every
/// earlier learner's entry; it wraps after 2^32 entries, long after any message of a copy
/// that old. `None` when no incarnation is left above `newest`.
fn next_incarnation(newest: Option<u32>, at: u64) -> Option<u32> {
    let from_index = (at as u32).max(1);
    match newest {
        None => Some(from_index),
        Some(newest) => Some(newest.checked_add(1)?.max(from_index)),
    }
}

/// Whether the leader `raw` has a voter of `node` that it hears from (since its last
/// check of the quorum) and that holds everything committed: that node's live replica.
fn heard_from_voter<S: raft::Storage>(raw: &RawNode<S>, node: NodeId) -> bool {
    let raft = &raw.raft;
    let conf = raft.prs().conf().to_conf_state();
    conf.voters
        .iter()
        .filter(|voter| node_of(**voter) == Some(node))
        .any(|voter| {
            (raft.prs().get(*voter))
                .is_some_and(|p| p.recent_active && p.matched >= raft.raft_log.committed)
        })
}

/// What a leader does next to its group's members.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Propose this membership change.
    Propose(ConfChangeV2),
    /// Hand leadership to this voter first: the change the group needs next removes the
    /// leader.
    TransferLeader(ReplicaId),
}

/// Whether `node` belongs in the group: in the target, or any node without one.
fn wanted(target: Option<&[NodeId]>, node: Option<NodeId>) -> bool {
    match (target, node) {
        (None, _) => true,
        (Some(target), Some(node)) => target.contains(&node),
        (Some(_), None) => false,
    }
}

/// The next step the leader `raw` should take towards `target` (the nodes the map names;
/// `None`: keep the nodes it has), if any: leave a joint configuration it inherited
/// (raft-rs leaves on its own only where it entered one), or one of the changes in "Moving a
/// replica" in the module docs.
pub(super) fn next_change<S: raft::Storage>(
    raw: &RawNode<S>,
    target: Option<&[NodeId]>,
) -> Option<Change> {
    let raft = &raw.raft;
    if raft.state != StateRole::Leader || raft.has_pending_conf() {
        return None;
    }
    let conf = raft.prs().conf().to_conf_state();
    if !conf.voters_outgoing.is_empty() {
        return conf
            .auto_leave
            .then(|| Change::Propose(ConfChangeV2::default()));
    }
    let propose = |changes: Vec<ConfChangeSingle>| {
        Some(Change::Propose(ConfChangeV2 {
            changes: changes.into(),
            ..ConfChangeV2::default()
        }))
    };
    let mut learners = conf.learners.clone();
    learners.sort_unstable();
    let mut voters = conf.voters.clone();
    voters.sort_unstable();
    if let Some(&stray) = learners.iter().find(|l| !wanted(target, node_of(**l))) {
        return propose(vec![single(ConfChangeType::RemoveNode, stray)]);
    }
    // A learner that has nothing, of a node whose voter is heard from: a node runs one
    // replica of a partition, so nobody runs this one. It was added for a late copy of an
    // ask by a leader that did not hear from the voter yet (a new leader hears from nobody
    // at first); a learner added for a real loss is never removed here, since it is added
    // only while its node's voter is silent, and that voter's disk is gone.
    let unclaimed = learners.iter().find(|l| {
        let empty = raft.prs().get(**l).is_some_and(|p| p.matched == 0);
        empty && node_of(**l).is_some_and(|node| heard_from_voter(raw, node))
    });
    if let Some(&stray) = unclaimed {
        return propose(vec![single(ConfChangeType::RemoveNode, stray)]);
    }
    let caught_up = |id: ReplicaId| {
        raft.prs()
            .get(id)
            .is_some_and(|p| p.matched >= raft.raft_log.committed)
    };
    // The voter that must go to make room, if the group needs the room: a voter of the
    // learner's own node first, then one of a node the target no longer names.
    let leaving = |learner: ReplicaId| {
        let node = node_of(learner);
        let same_node = voters.iter().copied().find(|v| node_of(*v) == node);
        same_node.or_else(|| {
            voters
                .iter()
                .copied()
                .find(|v| !wanted(target, node_of(*v)))
        })
    };
    // Before the leader removes itself, a caught-up voter that stays leads instead.
    let successor = || {
        voters
            .iter()
            .copied()
            .find(|v| *v != raft.id && wanted(target, node_of(*v)) && caught_up(*v))
    };
    for &learner in learners.iter().filter(|l| caught_up(**l)) {
        match leaving(learner) {
            Some(old) if old == raft.id => return successor().map(Change::TransferLeader),
            Some(old) => {
                return propose(vec![
                    single(ConfChangeType::AddNode, learner),
                    single(ConfChangeType::RemoveNode, old),
                ])
            }
            None if target.is_some_and(|t| voters.len() < t.len()) => {
                return propose(vec![single(ConfChangeType::AddNode, learner)])
            }
            None => {}
        }
    }
    let target_len = target.map_or(voters.len(), <[NodeId]>::len);
    if voters.len() > target_len {
        if let Some(&old) = voters.iter().find(|v| !wanted(target, node_of(**v))) {
            if old == raft.id {
                return successor().map(Change::TransferLeader);
            }
            return propose(vec![single(ConfChangeType::RemoveNode, old)]);
        }
    }
    None
}

fn single(change_type: ConfChangeType, node_id: ReplicaId) -> ConfChangeSingle {
    ConfChangeSingle {
        change_type,
        node_id,
        ..ConfChangeSingle::default()
    }
}

/// Whether `id` is a member of `conf`: a voter or a learner, in either half of a joint
/// configuration.
pub fn is_member(conf: &ConfState, id: ReplicaId) -> bool {
    [
        &conf.voters,
        &conf.voters_outgoing,
        &conf.learners,
        &conf.learners_next,
    ]
    .iter()
    .any(|ids| ids.contains(&id))
}

/// The voters and learners of `conf`, for logs.
pub fn describe(conf: &ConfState) -> String {
    let mut out = format!("voters {:?}", conf.voters);
    if !conf.voters_outgoing.is_empty() {
        out.push_str(&format!(" & {:?}", conf.voters_outgoing));
    }
    if !conf.learners.is_empty() {
        out.push_str(&format!(", learners {:?}", conf.learners));
    }
    out
}

#[cfg(test)]
mod moves;

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(nonce: u64, answer: Answer) -> MembershipMessage {
        MembershipMessage::Answer { nonce, answer }
    }

    #[test]
    fn ids_carry_their_node_and_incarnation() {
        assert_eq!(initial_id(0), 1);
        assert_eq!(replica_id(4, 0), initial_id(4));
        let id = replica_id(4, 7);
        assert_eq!((node_of(id), incarnation_of(id)), (Some(4), 7));
        assert_eq!(node_of(0), None);
        assert_eq!(
            node_of(replica_id(u32::MAX - 1, u32::MAX)),
            Some(u32::MAX - 1)
        );
    }

    #[test]
    fn a_new_group_starts_only_when_every_peer_answers_fresh() {
        let mut joiner = Joiner::new(1, &[0, 1, 2], 9, false);
        assert_eq!(joiner.peers_to_ask().collect::<Vec<_>>(), [0, 2]);
        assert_eq!(joiner.handle(0, answer(9, Answer::Fresh)), None);
        // Another start's answer, and an answer from outside the group, count for nothing.
        assert_eq!(joiner.handle(2, answer(8, Answer::Fresh)), None);
        assert_eq!(joiner.handle(5, answer(9, Answer::Fresh)), None);
        assert_eq!(joiner.peers_to_ask().collect::<Vec<_>>(), [2]);
        assert_eq!(
            joiner.handle(2, answer(9, Answer::Fresh)),
            Some(Decision::Bootstrap)
        );
    }

    #[test]
    fn one_peer_that_ran_rules_out_a_new_group_for_good() {
        let mut joiner = Joiner::new(1, &[0, 1, 2], 9, false);
        let leader = Some(replica_id(2, 0));
        assert_eq!(
            joiner.handle(0, answer(9, Answer::Running { leader })),
            None
        );
        assert_eq!(joiner.leader(), leader);
        assert_eq!(joiner.handle(0, answer(9, Answer::Fresh)), None);
        assert_eq!(joiner.handle(2, answer(9, Answer::Fresh)), None);
        let id = replica_id(1, 3);
        assert_eq!(
            joiner.handle(2, answer(9, Answer::Member { id })),
            Some(Decision::Join(id))
        );
    }

    #[test]
    fn a_new_learner_never_gets_an_incarnation_its_node_had() {
        assert_eq!(next_incarnation(None, 1), Some(1));
        assert_eq!(next_incarnation(None, 57), Some(57));
        assert_eq!(next_incarnation(Some(3), 57), Some(57));
        assert_eq!(
            next_incarnation(Some(80), 57),
            Some(81),
            "above the members' newest"
        );
        // A copy moved away (its id forgotten by the members) and back: a later entry.
        let first = next_incarnation(None, 57).unwrap();
        assert!(next_incarnation(None, 913).unwrap() > first);
        assert_eq!(
            next_incarnation(None, 1 << 32),
            Some(1),
            "0 is the founders'"
        );
        assert_eq!(next_incarnation(Some(u32::MAX), 9), None);
    }

    #[test]
    fn a_replica_leaves_only_on_a_later_membership_that_leaves_it_out() {
        let conf = ConfState {
            voters: vec![1, 2, 4],
            learners: vec![5],
            ..ConfState::default()
        };
        let removed = MembershipMessage::Removed {
            id: 3,
            conf_index: 9,
        };
        assert_eq!(answer_check(&conf, 9, 1, 3), Some(removed));
        assert_eq!(answer_check(&conf, 9, 1, 2), None, "a voter stays");
        assert_eq!(answer_check(&conf, 9, 4, 5), None, "a learner stays");
        assert_eq!(
            answer_check(&conf, 9, 3, 6),
            None,
            "an outsider knows nothing"
        );
        assert!(is_removal(3, 5, &removed));
        assert!(!is_removal(3, 9, &removed), "not a later membership");
        assert!(!is_removal(3, 12, &removed), "an older membership");
        assert!(!is_removal(4, 5, &removed), "another replica's");
        assert!(!is_removal(3, 5, &MembershipMessage::Check { id: 3 }));
    }

    #[test]
    fn a_joiner_asks_the_group_the_placement_names_now() {
        let mut joiner = Joiner::new(3, &[1, 2, 3], 9, true);
        assert_eq!(joiner.peers_to_ask().collect::<Vec<_>>(), [1, 2]);
        // Node 1's copy moved to node 0, which leads now: asked, and heard.
        joiner.regroup(&[0, 2, 3]);
        assert_eq!(joiner.peers_to_ask().collect::<Vec<_>>(), [0, 2]);
        assert_eq!(
            joiner.handle(1, answer(9, Answer::Running { leader: None })),
            None
        );
        let id = replica_id(3, 812);
        assert_eq!(
            joiner.handle(0, answer(9, Answer::Member { id })),
            Some(Decision::Join(id))
        );
        // A fresh answer from a node that left the group counts for nothing.
        let mut new_group = Joiner::new(2, &[1, 2], 4, false);
        assert_eq!(
            new_group.handle(1, answer(4, Answer::Fresh)),
            Some(Decision::Bootstrap)
        );
        let mut moved = Joiner::new(2, &[1, 2], 4, false);
        moved.regroup(&[0, 2]);
        assert_eq!(moved.handle(1, answer(4, Answer::Fresh)), None);
    }

    #[test]
    fn a_replica_with_records_never_starts_a_new_group() {
        let mut joiner = Joiner::new(0, &[0, 1, 2], 1, true);
        assert_eq!(joiner.answer(), Answer::Running { leader: None });
        assert_eq!(joiner.handle(1, answer(1, Answer::Fresh)), None);
        assert_eq!(joiner.handle(2, answer(1, Answer::Fresh)), None);
        assert_eq!(Joiner::new(0, &[0, 1, 2], 1, false).answer(), Answer::Fresh);
    }
}
