//! The partition map as etcd keeps it: one JSON document under `<prefix>/map`.
//!
//! ```json
//! {"format": 1, "map_version": 4, "partition_count": 3,
//!  "nodes": [{"id": 0, "http": "127.0.0.1:8080", "peer": "127.0.0.1:9080"}, ...],
//!  "partitions": [{"partition": 0, "replicas": [0]}, {"partition": 1, "replicas": [1]}, ...]}
//! ```
//!
//! Each partition names its replica group, the nodes that hold a copy of it. Format 1 has
//! one copy per partition, so a group is exactly its owner. Replicated partitions will list
//! more nodes in the same field (and raise `format`), so the shape does not break; a node
//! refuses a document of a format it does not know rather than misread it.

use serde::{Deserialize, Serialize};
use walletd_core::model::partition::{MapError, NodeId, PartitionId, PartitionMap, PARTITIONS_MAX};

use crate::cluster::NODES_MAX;

/// The format this version writes and reads.
pub const FORMAT: u32 = 1;

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

/// The nodes that hold a partition. Format 1: exactly one, its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaGroup {
    pub partition: PartitionId,
    pub replicas: Vec<NodeId>,
}

/// Why a stored document is not a map this node can run on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("the stored map is not valid JSON of the map document: {0}")]
    Json(String),
    #[error(
        "the stored map has format {0}; this version of walletd reads format {FORMAT} (upgrade it)"
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
    #[error("partition {partition} has {replicas} replicas; format {FORMAT} has exactly one")]
    Replicas {
        partition: PartitionId,
        replicas: usize,
    },
    #[error(transparent)]
    Map(#[from] MapError),
}

impl MapDocument {
    /// The document of `map`.
    pub fn from_map(map: &PartitionMap) -> MapDocument {
        let nodes = map.nodes.iter().map(|(id, address)| NodeEntry {
            id: *id,
            http: address.http.clone(),
            peer: address.peer.clone(),
        });
        let partitions = map
            .owners
            .iter()
            .enumerate()
            .map(|(p, owner)| ReplicaGroup {
                partition: p as PartitionId,
                replicas: vec![*owner],
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
        if format.format != FORMAT {
            return Err(DocumentError::Format(format.format));
        }
        serde_json::from_slice(bytes).map_err(|e| DocumentError::Json(e.to_string()))
    }

    /// The bytes to store.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a map document encodes")
    }

    /// The map this document describes, checked as every node will check it.
    pub fn to_map(&self) -> Result<PartitionMap, DocumentError> {
        if self.format != FORMAT {
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
        for (index, group) in self.partitions.iter().enumerate() {
            if group.partition as usize != index || index >= count as usize {
                return Err(DocumentError::PartitionOrder {
                    last: count - 1,
                    index,
                    found: group.partition,
                });
            }
            match group.replicas.as_slice() {
                [owner] => map.owners.push(*owner),
                other => {
                    return Err(DocumentError::Replicas {
                        partition: group.partition,
                        replicas: other.len(),
                    })
                }
            }
        }
        if map.owners.len() != count as usize {
            return Err(DocumentError::PartitionOrder {
                last: count - 1,
                index: map.owners.len(),
                found: count,
            });
        }
        map.validate()?;
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walletd_core::model::partition::NodeAddress;

    fn map() -> PartitionMap {
        let mut nodes = std::collections::BTreeMap::new();
        for id in [0, 1, 2] {
            let address = NodeAddress {
                http: format!("127.0.0.1:{}", 8080 + id),
                peer: format!("127.0.0.1:{}", 9080 + id),
            };
            nodes.insert(id, address);
        }
        PartitionMap {
            version: 4,
            owners: vec![0, 1, 0],
            nodes,
        }
    }

    #[test]
    fn a_map_round_trips_through_its_stored_bytes() {
        let document = MapDocument::from_map(&map());
        let parsed = MapDocument::parse(&document.to_bytes()).unwrap();
        assert_eq!(parsed, document);
        let back = parsed.to_map().unwrap();
        assert_eq!(back, map());
        assert!(back.partitions_of(2).is_empty(), "a node may own nothing");
        let json: serde_json::Value = serde_json::from_slice(&document.to_bytes()).unwrap();
        assert_eq!(json["partitions"][1]["replicas"], serde_json::json!([1]));
        assert_eq!(json["format"], 1);
    }

    #[test]
    fn documents_that_no_node_could_run_are_refused_with_the_reason() {
        let good = MapDocument::from_map(&map());
        let newer = br#"{"format": 2, "replicas_per_partition": 3}"#;
        assert_eq!(MapDocument::parse(newer), Err(DocumentError::Format(2)));
        assert!(matches!(
            MapDocument::parse(b"{}"),
            Err(DocumentError::Json(_))
        ));
        let mut text = String::from_utf8(good.to_bytes()).unwrap();
        text = text.replacen("\"format\": 1,", "\"format\": 1, \"colour\": 3,", 1);
        let error = MapDocument::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(error.contains("unknown field `colour`"), "{error}");
        type Change = Box<dyn Fn(&mut MapDocument)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|d| d.partitions[1].replicas = vec![1, 2]),
                "exactly one",
            ),
            (
                Box::new(|d| d.partitions[1].replicas.clear()),
                "exactly one",
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
                Box::new(|d| d.partitions[0].replicas = vec![7]),
                "does not list",
            ),
            (
                Box::new(|d| d.nodes[2].http = d.nodes[0].peer.clone()),
                "share the address",
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
