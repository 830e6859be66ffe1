//! The partition map as etcd keeps it: one JSON document under `<prefix>/map`.
//!
//! ```json
//! {"format": 2, "map_version": 4, "partition_count": 3,
//!  "nodes": [{"id": 0, "http": "127.0.0.1:8080", "peer": "127.0.0.1:9080"}, ...],
//!  "partitions": [{"partition": 0, "replicas": [0, 1, 2], "founders": [0, 1, 2]},
//!                 {"partition": 1, "replicas": [1, 2, 3], "founders": [1, 2, 0]}, ...]}
//! ```
//!
//! Each partition names its replica group (`replicas`: the nodes that hold a copy now, the
//! first preferred to lead and counted as the partition's owner) and its founders (the nodes
//! whose copies started the group, fixed for its life): together a
//! [`Placement`]. Format 1, written before partitions were replicated, has exactly one node
//! per group and no founders; it is still read (its founders are its groups), and every write
//! is format 2. A document of a format this version does not know is refused rather than
//! misread.

use serde::{Deserialize, Serialize};
use walletd_core::model::partition::{MapError, NodeId, PartitionId, PartitionMap, PARTITIONS_MAX};
use walletd_core::model::placement::{Placement, PlacementError};

use crate::cluster::NODES_MAX;

/// The format this version writes.
pub const FORMAT: u32 = 2;
/// The format of one copy per partition, still read.
pub const FORMAT_SINGLE: u32 = 1;

/// The stored document; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapDocument {
    pub format: u32,
    pub map_version: u64,
    pub partition_count: u32,
    pub nodes: Vec<NodeEntry>,
    pub partitions: Vec<ReplicaGroup>,
}

/// A node and where it is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub id: NodeId,
    pub http: String,
    pub peer: String,
}

/// The nodes that hold a partition, and those that started its group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaGroup {
    pub partition: PartitionId,
    /// The group now, the first node preferred to lead. Format 1: exactly one, its owner.
    pub replicas: Vec<NodeId>,
    /// The group's first members. Required in format 2; absent in format 1, where a group
    /// never changed and so is its own founders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub founders: Option<Vec<NodeId>>,
}

/// Why a stored document is not a map this node can run on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("the stored map is not valid JSON of the map document: {0}")]
    Json(String),
    #[error(
        "the stored map has format {0}; this version of walletd reads formats \
         {FORMAT_SINGLE} and {FORMAT} (upgrade it)"
    )]
    Format(u32),
    #[error("partition_count must be between 1 and {PARTITIONS_MAX}, got {0}")]
    PartitionCount(u32),
    #[error("the map lists {0} nodes; at most {NODES_MAX} are allowed")]
    TooManyNodes(usize),
    #[error("node id {0} is listed twice")]
    DuplicateNode(NodeId),
    #[error("node {node}: {field} address {address:?} is not host:port")]
    BadAddress {
        node: NodeId,
        field: &'static str,
        address: String,
    },
    #[error(
        "partitions must list partitions 0 to {last} in order; entry {index} is partition {found}"
    )]
    PartitionOrder {
        last: u32,
        index: usize,
        found: PartitionId,
    },
    #[error(
        "partition {partition} has {replicas} replicas; format {FORMAT_SINGLE} has exactly one"
    )]
    Replicas {
        partition: PartitionId,
        replicas: usize,
    },
    #[error("partition {partition}: format {format} {requirement} `founders`")]
    Founders {
        partition: PartitionId,
        format: u32,
        requirement: &'static str,
    },
    #[error("partition {partition}: an empty replica group (a partition needs one copy at least)")]
    EmptyGroup { partition: PartitionId },
    #[error(transparent)]
    Map(#[from] MapError),
    #[error(transparent)]
    Placement(#[from] PlacementError),
}

impl MapDocument {
    /// The document of `map` with one copy per partition, on its owner (the groups of an
    /// unreplicated cluster).
    pub fn from_map(map: &PartitionMap) -> MapDocument {
        let single = map.owners.iter().map(|owner| vec![*owner]).collect();
        MapDocument::from_placed(
            map,
            &Placement {
                founders: map.owners.iter().map(|owner| vec![*owner]).collect(),
                groups: single,
            },
        )
    }

    /// The document of `map` with its partitions' groups and founders from `placement`.
    /// The owners of `map` are not written: a partition's owner is the first of its group.
    pub fn from_placed(map: &PartitionMap, placement: &Placement) -> MapDocument {
        let nodes = map.nodes.iter().map(|(id, address)| NodeEntry {
            id: *id,
            http: address.http.clone(),
            peer: address.peer.clone(),
        });
        let partitions = (placement.groups.iter().zip(&placement.founders))
            .enumerate()
            .map(|(p, (group, founders))| ReplicaGroup {
                partition: p as PartitionId,
                replicas: group.clone(),
                founders: Some(founders.clone()),
            });
        MapDocument {
            format: FORMAT,
            map_version: map.version,
            partition_count: map.partitions(),
            nodes: nodes.collect(),
            partitions: partitions.collect(),
        }
    }

    /// Parses and checks stored bytes.
    pub fn parse(bytes: &[u8]) -> Result<MapDocument, DocumentError> {
        // The format first, so a newer document is refused for its format, not its fields.
        #[derive(Deserialize)]
        struct FormatOnly {
            format: u32,
        }
        let format: FormatOnly =
            serde_json::from_slice(bytes).map_err(|e| DocumentError::Json(e.to_string()))?;
        if format.format != FORMAT && format.format != FORMAT_SINGLE {
            return Err(DocumentError::Format(format.format));
        }
        serde_json::from_slice(bytes).map_err(|e| DocumentError::Json(e.to_string()))
    }

    /// The bytes to store.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a map document encodes")
    }

    /// The map this document describes (each partition's owner: the first of its group),
    /// checked as every node will check it.
    pub fn to_map(&self) -> Result<PartitionMap, DocumentError> {
        self.to_placed().map(|(map, _)| map)
    }

    /// The map and the placement this document describes, both checked as every node will
    /// check them.
    pub fn to_placed(&self) -> Result<(PartitionMap, Placement), DocumentError> {
        if self.format != FORMAT && self.format != FORMAT_SINGLE {
            return Err(DocumentError::Format(self.format));
        }
        let count = self.partition_count;
        if count == 0 || count > PARTITIONS_MAX {
            return Err(DocumentError::PartitionCount(count));
        }
        if self.nodes.len() > NODES_MAX {
            return Err(DocumentError::TooManyNodes(self.nodes.len()));
        }
        let mut map = PartitionMap {
            version: self.map_version,
            owners: Vec::with_capacity(count as usize),
            nodes: Default::default(),
        };
        for node in &self.nodes {
            let address = crate::cluster::node_address(&node.http, &node.peer).map_err(
                |(field, address)| DocumentError::BadAddress {
                    node: node.id,
                    field,
                    address,
                },
            )?;
            if map.nodes.insert(node.id, address).is_some() {
                return Err(DocumentError::DuplicateNode(node.id));
            }
        }
        let placement = self.placement()?;
        map.owners = placement.groups.iter().map(|group| group[0]).collect();
        map.validate()?;
        placement.check(&map)?;
        Ok((map, placement))
    }

    /// The groups and founders as listed, in partition order, each group non-empty; what
    /// the format requires of each entry checked (not yet against the nodes).
    fn placement(&self) -> Result<Placement, DocumentError> {
        let count = self.partition_count;
        let mut placement = Placement {
            groups: Vec::with_capacity(count as usize),
            founders: Vec::with_capacity(count as usize),
        };
        for (index, group) in self.partitions.iter().enumerate() {
            let partition = group.partition;
            if partition as usize != index || index >= count as usize {
                return Err(DocumentError::PartitionOrder {
                    last: count - 1,
                    index,
                    found: partition,
                });
            }
            let founders = match (self.format, &group.founders) {
                (FORMAT_SINGLE, None) if group.replicas.len() == 1 => group.replicas.clone(),
                (FORMAT_SINGLE, None) => {
                    return Err(DocumentError::Replicas {
                        partition,
                        replicas: group.replicas.len(),
                    })
                }
                (FORMAT_SINGLE, Some(_)) => {
                    return Err(DocumentError::Founders {
                        partition,
                        format: FORMAT_SINGLE,
                        requirement: "has no",
                    })
                }
                (_, None) => {
                    return Err(DocumentError::Founders {
                        partition,
                        format: self.format,
                        requirement: "requires",
                    })
                }
                (_, Some(founders)) => founders.clone(),
            };
            if group.replicas.is_empty() {
                return Err(DocumentError::EmptyGroup { partition });
            }
            placement.groups.push(group.replicas.clone());
            placement.founders.push(founders);
        }
        if placement.groups.len() != count as usize {
            return Err(DocumentError::PartitionOrder {
                last: count - 1,
                index: placement.groups.len(),
                found: count,
            });
        }
        Ok(placement)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walletd_core::model::partition::NodeAddress;
    use walletd_core::model::placement::REPLICAS_MAX;

    fn map(nodes: u32) -> PartitionMap {
        let mut addresses = std::collections::BTreeMap::new();
        for id in 0..nodes {
            let address = NodeAddress {
                http: format!("127.0.0.1:{}", 8080 + id),
                peer: format!("127.0.0.1:{}", 9080 + id),
            };
            addresses.insert(id, address);
        }
        PartitionMap {
            version: 4,
            owners: vec![0, 1, 0],
            nodes: addresses,
        }
    }

    /// Partition 1's group has moved off its founders (node 2 replaced by node 3).
    fn placed() -> (PartitionMap, Placement) {
        let map = map(4);
        let mut placement = Placement::derived(&map, 3);
        placement.groups[1] = vec![1, 3, 0];
        (map, placement)
    }

    #[test]
    fn a_placed_map_round_trips_through_its_stored_bytes() {
        let (map, placement) = placed();
        let document = MapDocument::from_placed(&map, &placement);
        let parsed = MapDocument::parse(&document.to_bytes()).unwrap();
        assert_eq!(parsed, document);
        let (back, placed_back) = parsed.to_placed().unwrap();
        assert_eq!(back, map);
        assert_eq!(placed_back, placement);
        assert_eq!(parsed.to_map().unwrap(), map);
        let json: serde_json::Value = serde_json::from_slice(&document.to_bytes()).unwrap();
        assert_eq!(json["format"], 2);
        assert_eq!(
            json["partitions"][1]["replicas"],
            serde_json::json!([1, 3, 0])
        );
        assert_eq!(
            json["partitions"][1]["founders"],
            serde_json::json!([1, 2, 3])
        );
    }

    #[test]
    fn a_partitions_owner_is_the_first_of_its_group() {
        let (mut map, mut placement) = placed();
        placement.groups[2] = vec![3, 1, 2];
        map.owners[2] = 3;
        let (back, _) = MapDocument::from_placed(&map, &placement)
            .to_placed()
            .unwrap();
        assert_eq!(back.owners, vec![0, 1, 3]);
    }

    #[test]
    fn a_map_of_one_copy_each_is_written_as_format_2() {
        let document = MapDocument::from_map(&map(3));
        assert_eq!(document.format, FORMAT);
        let (back, placement) = document.to_placed().unwrap();
        assert_eq!(back, map(3));
        assert!(back.partitions_of(2).is_empty(), "a node may own nothing");
        assert_eq!(placement.groups, vec![vec![0], vec![1], vec![0]]);
        assert_eq!(placement.founders, placement.groups);
    }

    #[test]
    fn a_format_1_document_is_read_with_its_groups_as_founders() {
        let text = br#"{"format": 1, "map_version": 4, "partition_count": 3,
            "nodes": [{"id": 0, "http": "127.0.0.1:8080", "peer": "127.0.0.1:9080"},
                      {"id": 1, "http": "127.0.0.1:8081", "peer": "127.0.0.1:9081"},
                      {"id": 2, "http": "127.0.0.1:8082", "peer": "127.0.0.1:9082"}],
            "partitions": [{"partition": 0, "replicas": [0]}, {"partition": 1, "replicas": [1]},
                           {"partition": 2, "replicas": [0]}]}"#;
        let document = MapDocument::parse(text).unwrap();
        let (back, placement) = document.to_placed().unwrap();
        assert_eq!(back, map(3));
        assert_eq!(placement.groups, vec![vec![0], vec![1], vec![0]]);
        assert_eq!(placement.founders, placement.groups);
        let rewritten = MapDocument::from_placed(&back, &placement);
        assert_eq!(rewritten.format, 2, "every write is format 2");
        assert_eq!(rewritten.partitions[1].founders, Some(vec![1]));
    }

    #[test]
    fn documents_that_no_node_could_run_are_refused_with_the_reason() {
        let (map, placement) = placed();
        let good = MapDocument::from_placed(&map, &placement);
        let newer = br#"{"format": 3, "replicas_per_partition": 3}"#;
        assert_eq!(MapDocument::parse(newer), Err(DocumentError::Format(3)));
        assert!(matches!(
            MapDocument::parse(b"{}"),
            Err(DocumentError::Json(_))
        ));
        let mut text = String::from_utf8(good.to_bytes()).unwrap();
        text = text.replacen("\"format\": 2,", "\"format\": 2, \"colour\": 3,", 1);
        let error = MapDocument::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(error.contains("unknown field `colour`"), "{error}");
        type Change = Box<dyn Fn(&mut MapDocument)>;
        let too_many: Vec<NodeId> = (0..=REPLICAS_MAX as NodeId).collect();
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|d| d.partitions[1].replicas = vec![1, 2, 1]),
                "distinct nodes, got [1, 2, 1]",
            ),
            (
                Box::new(|d| d.partitions[1].founders = Some(vec![0, 0])),
                "distinct nodes, got [0, 0]",
            ),
            (
                Box::new(|d| d.partitions[1].replicas.clear()),
                "partition 1: an empty replica group",
            ),
            (
                Box::new(|d| d.partitions[0].founders = None),
                "partition 0: format 2 requires `founders`",
            ),
            (
                Box::new(|d| d.partitions[2].replicas = vec![2, 7]),
                "partition 2: node 7 is not in the map",
            ),
            (
                Box::new(|d| d.partitions[0].replicas = vec![7, 1]),
                "node 7, which the map does not list",
            ),
            (
                Box::new(move |d| d.partitions[0].replicas = too_many.clone()),
                "a group of 1 to 7 distinct nodes",
            ),
            (Box::new(|d| d.partitions.swap(0, 1)), "in order"),
            (
                Box::new(|d| d.partitions.pop().map(drop).unwrap_or(())),
                "in order",
            ),
            (Box::new(|d| d.partition_count = 0), "partition_count"),
            (Box::new(|d| d.nodes[1].id = 0), "listed twice"),
            (
                Box::new(|d| d.nodes[1].peer = "nowhere".into()),
                "not host:port",
            ),
            (
                Box::new(|d| d.nodes[2].http = d.nodes[0].peer.clone()),
                "share the address",
            ),
            (
                Box::new(|d| {
                    d.format = 1;
                    for group in &mut d.partitions {
                        group.founders = None;
                    }
                }),
                "partition 0 has 3 replicas; format 1 has exactly one",
            ),
            (
                Box::new(|d| {
                    d.format = 1;
                    for group in &mut d.partitions {
                        group.replicas.truncate(1);
                    }
                }),
                "format 1 has no `founders`",
            ),
        ];
        for (change, expected) in cases {
            let mut document = good.clone();
            change(&mut document);
            let error = document.to_map().unwrap_err().to_string();
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
    }
}
