//! Where a replicated partition's copies are: for each partition, the nodes that hold its
//! replicas now (its *group*, the target its Raft group converges to) and the nodes whose
//! replicas started the group (its *founders*, fixed for the group's life).
//!
//! The founders matter to a replica that starts with an empty Raft store on a node outside
//! them (a move's new copy): its store starts from the founders' configuration, the one
//! the group's log begins with, so that the membership changes it then applies from the log
//! give the members the group really has. They also decide who may start a group anew: only
//! a group still on its founders may ([`Placement::may_bootstrap`]), so a moved group is
//! never started empty over the copies that hold its history.
//!
//! A move changes a group one node at a time, and first grows it (the new node joins as a
//! learner, catches up and becomes a voter) before it shrinks it: every group of every
//! placement in a move's path has a majority of nodes that ran it.

use super::partition::{NodeId, PartitionId, PartitionMap};

/// Most copies of one partition.
pub const REPLICAS_MAX: usize = 7;

/// See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// `groups[p]`: the nodes that hold partition `p`'s replicas, distinct, the first of
    /// them preferred to lead.
    pub groups: Vec<Vec<NodeId>>,
    /// `founders[p]`: the nodes whose first replicas were partition `p`'s first voters.
    pub founders: Vec<Vec<NodeId>>,
}

/// Why a placement cannot run on a map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("the placement has {groups} groups and {founders} founder lists for {partitions} partitions")]
    Count {
        partitions: u32,
        groups: usize,
        founders: usize,
    },
    #[error("partition {partition}: a group of 1 to {REPLICAS_MAX} distinct nodes, got {nodes:?}")]
    Group {
        partition: PartitionId,
        nodes: Vec<NodeId>,
    },
    #[error("partition {partition}: node {node} is not in the map")]
    UnknownNode {
        partition: PartitionId,
        node: NodeId,
    },
}

impl Placement {
    /// `replicas` copies of every partition of `map`, on its owner and the nodes after it in
    /// id order, wrapping around; the groups are their own founders.
    pub fn derived(map: &PartitionMap, replicas: u32) -> Placement {
        let nodes: Vec<NodeId> = map.nodes.keys().copied().collect();
        assert!(
            (1..=nodes.len() as u32).contains(&replicas),
            "1 to {} replicas, not {replicas}",
            nodes.len()
        );
        let groups: Vec<Vec<NodeId>> = (0..map.partitions())
            .map(|partition| {
                let owner = map.owner(partition);
                let first = nodes
                    .iter()
                    .position(|n| *n == owner)
                    .expect("owners are nodes");
                (0..replicas as usize)
                    .map(|i| nodes[(first + i) % nodes.len()])
                    .collect()
            })
            .collect();
        Placement {
            founders: groups.clone(),
            groups,
        }
    }

    /// Checks the placement against `map`: a group and a founder list per partition, each
    /// of 1 to [`REPLICAS_MAX`] distinct nodes, every node of a group in the map (founders
    /// may have left it).
    pub fn check(&self, map: &PartitionMap) -> Result<(), PlacementError> {
        let partitions = map.partitions();
        if self.groups.len() != partitions as usize || self.founders.len() != partitions as usize {
            return Err(PlacementError::Count {
                partitions,
                groups: self.groups.len(),
                founders: self.founders.len(),
            });
        }
        for (partition, (group, founders)) in self.groups.iter().zip(&self.founders).enumerate() {
            let partition = partition as PartitionId;
            for nodes in [group, founders] {
                let mut sorted = nodes.clone();
                sorted.sort_unstable();
                sorted.dedup();
                if nodes.is_empty() || nodes.len() > REPLICAS_MAX || sorted.len() != nodes.len() {
                    return Err(PlacementError::Group {
                        partition,
                        nodes: nodes.clone(),
                    });
                }
            }
            if let Some(node) = group.iter().find(|n| !map.nodes.contains_key(n)) {
                return Err(PlacementError::UnknownNode {
                    partition,
                    node: *node,
                });
            }
        }
        Ok(())
    }

    /// The nodes holding partition `partition`'s replicas.
    pub fn group(&self, partition: PartitionId) -> &[NodeId] {
        &self.groups[partition as usize]
    }

    /// The nodes whose replicas founded partition `partition`'s group.
    pub fn founders(&self, partition: PartitionId) -> &[NodeId] {
        &self.founders[partition as usize]
    }

    /// The partitions with a replica on `node`, ascending.
    pub fn hosted(&self, node: NodeId) -> Vec<PartitionId> {
        (0..self.groups.len() as PartitionId)
            .filter(|p| self.group(*p).contains(&node))
            .collect()
    }

    /// Whether the partitions are Raft groups: some group was founded on more than one node.
    /// A cluster whose every group was founded on one node keeps one copy of each
    /// partition, unreplicated, and its copies do not move.
    pub fn is_replicated(&self) -> bool {
        self.founders.iter().any(|founders| founders.len() > 1)
    }

    /// Whether partition `partition`'s group may be started anew by replicas that all have
    /// nothing on disk: only while it is on its founders (see the module docs).
    pub fn may_bootstrap(&self, partition: PartitionId) -> bool {
        let mut group = self.group(partition).to_vec();
        let mut founders = self.founders(partition).to_vec();
        group.sort_unstable();
        founders.sort_unstable();
        group == founders
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::partition::NodeAddress;

    fn map(nodes: u32, owners: Vec<NodeId>) -> PartitionMap {
        let nodes = (0..nodes)
            .map(|n| {
                let address = NodeAddress {
                    http: format!("127.0.0.1:{}", 8080 + n),
                    peer: format!("127.0.0.1:{}", 9080 + n),
                };
                (n, address)
            })
            .collect::<BTreeMap<_, _>>();
        PartitionMap {
            version: 1,
            owners,
            nodes,
        }
    }

    #[test]
    fn derived_groups_start_at_the_owner_and_wrap_around() {
        let placement = Placement::derived(&map(4, vec![0, 3, 2]), 3);
        assert_eq!(
            placement.groups,
            vec![vec![0, 1, 2], vec![3, 0, 1], vec![2, 3, 0]]
        );
        assert_eq!(placement.founders, placement.groups);
        assert_eq!(placement.hosted(1), vec![0, 1]);
        assert!(placement.check(&map(4, vec![0, 3, 2])).is_ok());
        assert!((0..3).all(|p| placement.may_bootstrap(p)));
    }

    #[test]
    fn a_moved_group_is_never_started_anew() {
        let mut placement = Placement::derived(&map(4, vec![0, 1]), 3);
        placement.groups[0] = vec![2, 1, 0];
        assert!(
            placement.may_bootstrap(0),
            "the same nodes in another order"
        );
        placement.groups[0] = vec![0, 1, 2, 3];
        assert!(!placement.may_bootstrap(0), "grown");
        placement.groups[0] = vec![1, 2, 3];
        assert!(!placement.may_bootstrap(0), "moved");
        assert!(placement.may_bootstrap(1));
    }

    #[test]
    fn placements_no_node_could_run_are_refused() {
        let good = Placement::derived(&map(4, vec![0, 1]), 3);
        let on = map(4, vec![0, 1]);
        let mut bad = good.clone();
        bad.groups[1] = vec![1, 1, 2];
        assert!(matches!(
            bad.check(&on),
            Err(PlacementError::Group { partition: 1, .. })
        ));
        let mut bad = good.clone();
        bad.groups[0] = vec![];
        assert!(matches!(bad.check(&on), Err(PlacementError::Group { .. })));
        let mut bad = good.clone();
        bad.groups[0] = vec![0, 9];
        assert_eq!(
            bad.check(&on),
            Err(PlacementError::UnknownNode {
                partition: 0,
                node: 9
            })
        );
        let mut bad = good.clone();
        bad.founders.pop();
        assert!(matches!(bad.check(&on), Err(PlacementError::Count { .. })));
        let mut gone = good.clone();
        gone.founders[0] = vec![7, 8, 9];
        assert!(gone.check(&on).is_ok(), "founders may have left the map");
    }
}
