//! What a move or a drain does next, decided from the stored map and placement alone (no
//! etcd, no nodes, no clock): the drivers in `moving` read the map, ask here, write the
//! answer with a compare-and-swap and wait for the group to apply it.
//!
//! A move of partition `p` from node `N` to node `M` is two writes, each one node at a time
//! so that every group on the way has a majority of nodes that ran it (see
//! [`walletd_core::model::placement`]):
//! 1. *grow*: the group with `M` appended (`M` joins as a learner, catches up, votes);
//! 2. *shrink*: the group without `N` (if `N` was first, `M` takes its place at the front),
//!    written only once the grown group is applied.
//!
//! [`next_move_step`] reads where the stored group is on that path, so a move interrupted
//! anywhere is resumed by asking again, and rolled back by asking for the move from `M` to
//! `N`.

use walletd_core::model::partition::{NodeId, PartitionId, PartitionMap};
use walletd_core::model::placement::{Placement, REPLICAS_MAX};

/// A partition's copy to move from one node to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub partition: PartitionId,
    pub from: NodeId,
    pub to: NodeId,
}

/// What a move does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveStep {
    /// `to` is not in the group yet: write this group (the old one with `to` appended).
    Grow { group: Vec<NodeId> },
    /// Both nodes are in the group: once the group has applied it (`to` a voter), write
    /// this group (the old one without `from`).
    Shrink { group: Vec<NodeId> },
    /// `from` is out and `to` in: nothing to write; the group is the move's end.
    Done { group: Vec<NodeId> },
}

/// Why a move is refused before anything is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoveRefusal {
    #[error(
        "the cluster keeps one copy of each partition (no group was founded on more than one \
         node), and such a copy does not move: copies move between the replicas of a \
         replicated cluster (`replicas` of 2 or more in the cluster file given to `init`)"
    )]
    NotReplicated,
    #[error("--from and --to are both node {0}: nothing to move")]
    SameNode(NodeId),
    #[error("partition {partition} does not exist: the map has partitions 0 to {last}")]
    UnknownPartition {
        partition: PartitionId,
        last: PartitionId,
    },
    #[error("node {to} is not in the map (its nodes: {nodes:?}); add it first with `wallet cluster add-node`")]
    UnknownTarget { to: NodeId, nodes: Vec<NodeId> },
    #[error(
        "partition {partition}'s group is {group:?}: neither node {from} nor node {to} is in it"
    )]
    NotInGroup {
        partition: PartitionId,
        from: NodeId,
        to: NodeId,
        group: Vec<NodeId>,
    },
    #[error("partition {partition}'s group {group:?} is already {REPLICAS_MAX} nodes, the most a group may have: it cannot grow to take node {to}")]
    GroupFull {
        partition: PartitionId,
        to: NodeId,
        group: Vec<NodeId>,
    },
}

/// Why a drain is refused before anything is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrainRefusal {
    #[error(transparent)]
    NotReplicated(#[from] MoveRefusal),
    #[error("node {node} is not in the map (its nodes: {nodes:?})")]
    UnknownNode { node: NodeId, nodes: Vec<NodeId> },
    #[error("partition {partition}'s group {group:?} already holds every node of the map: no node can take node {node}'s copy (add a node first)")]
    NoRoom {
        partition: PartitionId,
        node: NodeId,
        group: Vec<NodeId>,
    },
}

/// The next step of `mv` on the stored `map` and `placement`; see the module docs.
pub fn next_move_step(
    map: &PartitionMap,
    placement: &Placement,
    mv: Move,
) -> Result<MoveStep, MoveRefusal> {
    let Move {
        partition,
        from,
        to,
    } = mv;
    if !placement.is_replicated() {
        return Err(MoveRefusal::NotReplicated);
    }
    if from == to {
        return Err(MoveRefusal::SameNode(from));
    }
    if partition >= map.partitions() {
        return Err(MoveRefusal::UnknownPartition {
            partition,
            last: map.partitions() - 1,
        });
    }
    if !map.nodes.contains_key(&to) {
        return Err(MoveRefusal::UnknownTarget {
            to,
            nodes: map.nodes.keys().copied().collect(),
        });
    }
    let group = placement.group(partition).to_vec();
    match (group.contains(&from), group.contains(&to)) {
        (true, false) if group.len() >= REPLICAS_MAX => Err(MoveRefusal::GroupFull {
            partition,
            to,
            group,
        }),
        (true, false) => {
            let mut grown = group;
            grown.push(to);
            Ok(MoveStep::Grow { group: grown })
        }
        (true, true) => Ok(MoveStep::Shrink {
            group: shrunk(&group, from, to),
        }),
        (false, true) => Ok(MoveStep::Done { group }),
        (false, false) => Err(MoveRefusal::NotInGroup {
            partition,
            from,
            to,
            group,
        }),
    }
}

/// `group` without `from`; `to` takes `from`'s place at the front if `from` led it, so the
/// preferred leader stays a node of the move's choosing. The order is kept otherwise.
fn shrunk(group: &[NodeId], from: NodeId, to: NodeId) -> Vec<NodeId> {
    let mut out: Vec<NodeId> = group.iter().copied().filter(|n| *n != from).collect();
    if group.first() == Some(&from) {
        out.retain(|n| *n != to);
        out.insert(0, to);
    }
    out
}

/// The partitions a drain of `node` moves, in partition order; refused if one of them has
/// no node to go to (checked for all before anything is written: a move of one partition
/// never changes which nodes another's group lacks).
pub fn drain_partitions(
    map: &PartitionMap,
    placement: &Placement,
    node: NodeId,
) -> Result<Vec<PartitionId>, DrainRefusal> {
    if !placement.is_replicated() {
        return Err(MoveRefusal::NotReplicated.into());
    }
    if !map.nodes.contains_key(&node) {
        return Err(DrainRefusal::UnknownNode {
            node,
            nodes: map.nodes.keys().copied().collect(),
        });
    }
    let partitions = placement.hosted(node);
    for partition in &partitions {
        drain_target(map, placement, *partition, node)?;
    }
    Ok(partitions)
}

/// The node that takes `node`'s copy of `partition` in a drain: the node of the map outside
/// the group that holds the fewest replicas (ties: the lowest id). A group grown past its
/// founders' count by a move that did not finish (its last node new) is finished instead:
/// its last node is the one taking the copy, so a drain interrupted anywhere resumes.
pub fn drain_target(
    map: &PartitionMap,
    placement: &Placement,
    partition: PartitionId,
    node: NodeId,
) -> Result<NodeId, DrainRefusal> {
    let group = placement.group(partition);
    debug_assert!(group.contains(&node), "a drain moves the node's own copies");
    let grown = group.len() > placement.founders(partition).len();
    if let (true, Some(last)) = (grown, group.last()) {
        if *last != node {
            return Ok(*last);
        }
    }
    let held = |n: NodeId| placement.groups.iter().filter(|g| g.contains(&n)).count();
    map.nodes
        .keys()
        .copied()
        .filter(|n| !group.contains(n))
        .min_by_key(|n| (held(*n), *n))
        .ok_or_else(|| DrainRefusal::NoRoom {
            partition,
            node,
            group: group.to_vec(),
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use walletd_core::model::partition::NodeAddress;

    use super::*;

    fn map(nodes: u32, partitions: u32) -> PartitionMap {
        let nodes = (0..nodes)
            .map(|n| {
                let address = NodeAddress {
                    http: format!("127.0.0.1:{}", 8080 + n),
                    peer: format!("127.0.0.1:{}", 9080 + n),
                };
                (n, address)
            })
            .collect::<BTreeMap<_, _>>();
        let owners = (0..partitions).map(|p| p % 3).collect();
        PartitionMap {
            version: 1,
            owners,
            nodes,
        }
    }

    /// Applies a written step, as the store would.
    fn written(placement: &Placement, partition: PartitionId, step: &MoveStep) -> Placement {
        let mut next = placement.clone();
        match step {
            MoveStep::Grow { group } | MoveStep::Shrink { group } => {
                next.groups[partition as usize] = group.clone();
            }
            MoveStep::Done { .. } => {}
        }
        next
    }

    /// Runs a move to its end, step by step; the steps taken.
    fn run(map: &PartitionMap, placement: &mut Placement, mv: Move) -> Vec<MoveStep> {
        let mut steps = Vec::new();
        for _ in 0..3 {
            let step = next_move_step(map, placement, mv).unwrap();
            *placement = written(placement, mv.partition, &step);
            let done = matches!(step, MoveStep::Done { .. });
            steps.push(step);
            if done {
                return steps;
            }
        }
        panic!("a move ends in three steps: {steps:?}");
    }

    #[test]
    fn a_move_grows_then_shrinks_then_is_done() {
        let map = map(4, 3);
        let mut placement = Placement::derived(&map, 3);
        assert_eq!(placement.groups[1], vec![1, 2, 3]);
        let mv = Move {
            partition: 1,
            from: 2,
            to: 0,
        };
        let steps = run(&map, &mut placement, mv);
        assert_eq!(
            steps,
            vec![
                MoveStep::Grow {
                    group: vec![1, 2, 3, 0]
                },
                MoveStep::Shrink {
                    group: vec![1, 3, 0]
                },
                MoveStep::Done {
                    group: vec![1, 3, 0]
                },
            ]
        );
        assert_eq!(
            placement.founders[1],
            vec![1, 2, 3],
            "founders never change"
        );
    }

    #[test]
    fn the_new_node_takes_the_front_when_the_first_node_leaves() {
        let map = map(4, 3);
        let mut placement = Placement::derived(&map, 3);
        let mv = Move {
            partition: 0,
            from: 0,
            to: 3,
        };
        run(&map, &mut placement, mv);
        assert_eq!(placement.groups[0], vec![3, 1, 2]);
    }

    #[test]
    fn a_move_resumes_where_it_stopped_and_rolls_back_by_its_reverse() {
        let map = map(4, 3);
        let mut placement = Placement::derived(&map, 3);
        let mv = Move {
            partition: 0,
            from: 0,
            to: 3,
        };
        let grow = next_move_step(&map, &placement, mv).unwrap();
        placement = written(&placement, 0, &grow);
        // Interrupted after the grow: asking again shrinks, not grows twice.
        assert_eq!(
            next_move_step(&map, &placement, mv).unwrap(),
            MoveStep::Shrink {
                group: vec![3, 1, 2]
            }
        );
        // Rolled back instead: the reverse move shrinks the new node off.
        let back = Move {
            partition: 0,
            from: 3,
            to: 0,
        };
        assert_eq!(
            run(&map, &mut placement.clone(), back).first(),
            Some(&MoveStep::Shrink {
                group: vec![0, 1, 2]
            })
        );
        // A finished move rolled back comes home in its own two steps, first node first.
        let mut moved = placement.clone();
        run(&map, &mut moved, mv);
        run(&map, &mut moved, back);
        assert_eq!(moved.groups[0], vec![0, 1, 2]);
    }

    #[test]
    fn moves_that_cannot_be_are_refused_with_the_reason() {
        let map = map(4, 3);
        let placement = Placement::derived(&map, 3);
        let refusal = |partition, from, to| {
            next_move_step(
                &map,
                &placement,
                Move {
                    partition,
                    from,
                    to,
                },
            )
            .unwrap_err()
            .to_string()
        };
        assert!(refusal(0, 1, 1).contains("both node 1"));
        assert!(refusal(9, 0, 3).contains("partitions 0 to 2"));
        assert!(refusal(0, 0, 7).contains("node 7 is not in the map"));
        assert!(refusal(0, 3, 3).contains("both node 3"));
        let mut small = Placement::derived(&map, 1);
        small.groups[0] = vec![0];
        let single = next_move_step(
            &map,
            &small,
            Move {
                partition: 0,
                from: 0,
                to: 3,
            },
        );
        assert_eq!(single, Err(MoveRefusal::NotReplicated));
        // Partition 1's group was founded on two nodes: the cluster is replicated.
        small.founders[1] = vec![1, 2];
        let err = next_move_step(
            &map,
            &small,
            Move {
                partition: 0,
                from: 2,
                to: 3,
            },
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("neither node 2 nor node 3"),
            "{err}"
        );
        let big = self::map(8, 1);
        let mut full = Placement::derived(&big, 7);
        full.groups[0] = (0..7).collect();
        let err = next_move_step(
            &big,
            &full,
            Move {
                partition: 0,
                from: 0,
                to: 7,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("cannot grow"), "{err}");
    }

    #[test]
    fn a_move_already_made_is_done() {
        let map = map(4, 3);
        let placement = Placement::derived(&map, 3);
        let step = next_move_step(
            &map,
            &placement,
            Move {
                partition: 0,
                from: 3,
                to: 1,
            },
        );
        assert_eq!(
            step,
            Ok(MoveStep::Done {
                group: vec![0, 1, 2]
            })
        );
    }

    #[test]
    fn a_drain_picks_the_node_holding_fewest_copies_lowest_id_first() {
        // Groups [0, 1], [1, 2], [2, 3]; node 4 holds nothing.
        let map = map(5, 3);
        let mut placement = Placement::derived(&map, 2);
        assert_eq!(placement.groups, vec![vec![0, 1], vec![1, 2], vec![2, 3]]);
        let partitions = drain_partitions(&map, &placement, 2).unwrap();
        assert_eq!(partitions, vec![1, 2]);
        let mut targets = Vec::new();
        for partition in partitions {
            let to = drain_target(&map, &placement, partition, 2).unwrap();
            targets.push(to);
            let mv = Move {
                partition,
                from: 2,
                to,
            };
            run(&map, &mut placement, mv);
        }
        // Node 4 (no copy) first; then nodes 0 and 4 tie at one copy: the lowest id.
        assert_eq!(targets, vec![4, 0]);
        assert!(placement.hosted(2).is_empty());
        assert_eq!(placement.groups, vec![vec![0, 1], vec![1, 4], vec![0, 3]]);
    }

    #[test]
    fn a_drain_interrupted_mid_move_finishes_that_move() {
        let map = map(5, 3);
        let mut placement = Placement::derived(&map, 3);
        // A drain of node 2 grew partition 0's group with node 4, then stopped.
        placement.groups[0] = vec![0, 1, 2, 4];
        assert_eq!(drain_target(&map, &placement, 0, 2), Ok(4));
        // Without a grown group, the usual choice: node 0 holds one copy, node 4 two.
        assert_eq!(placement.groups[1], vec![1, 2, 3]);
        assert_eq!(drain_target(&map, &placement, 1, 2), Ok(0));
    }

    #[test]
    fn a_drain_with_nowhere_to_go_is_refused_before_anything_moves() {
        let map = map(3, 3);
        let placement = Placement::derived(&map, 3);
        let refusal = drain_partitions(&map, &placement, 1).unwrap_err();
        assert!(
            refusal
                .to_string()
                .contains("no node can take node 1's copy"),
            "{refusal}"
        );
        assert!(matches!(
            drain_partitions(&map, &placement, 9),
            Err(DrainRefusal::UnknownNode { node: 9, .. })
        ));
        let mut spread = Placement::derived(&map, 1);
        assert_eq!(
            drain_partitions(&map, &spread, 1),
            Err(DrainRefusal::NotReplicated(MoveRefusal::NotReplicated))
        );
        spread.founders[0] = vec![0, 2];
        assert_eq!(drain_partitions(&map, &spread, 1), Ok(vec![1]));
    }
}
