//! Partitioning: which partition an account lives on, and which node owns each partition.
//!
//! The account → partition function is FNV-1a (64-bit) over the UTF-8 bytes of the account
//! id, reduced modulo the partition count. It is specified here, not borrowed from `std`
//! (whose `DefaultHasher` may change between releases), so every node, platform and version
//! agrees forever; `known_values_are_pinned` holds it to that.

use std::collections::BTreeMap;

use crate::model::ids::AccountId;

/// Most partitions a map may have. Bounds per-partition tables held by every node.
pub const PARTITIONS_MAX: u32 = 4096;

/// The index of a partition, `0..partitions`.
pub type PartitionId = u32;
/// The identifier of a node in a cluster.
pub type NodeId = u32;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64-bit, over `bytes`.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET_BASIS;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The partition that owns `account` when there are `partitions` partitions.
pub fn partition_of(account: &AccountId, partitions: u32) -> PartitionId {
    partition_of_bytes(account.as_bytes(), partitions)
}

/// [`partition_of`] the account whose bytes are `account` (for tables that keep ids as bytes).
pub(crate) fn partition_of_bytes(account: &[u8], partitions: u32) -> PartitionId {
    assert!(partitions > 0 && partitions <= PARTITIONS_MAX);
    (stable_hash(account) % u64::from(partitions)) as PartitionId
}

/// Where a node can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    /// The HTTP API address, `host:port`.
    pub http: String,
    /// The binary peer-protocol address, `host:port`.
    pub peer: String,
}

/// FNV-1a 64-bit parameters (see [`PartitionMap::digest`]).
const FNV64_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV64_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Which node owns which partition, at some version. Every peer message carries the version
/// so a node holding a stale map can be told to refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMap {
    pub version: u64,
    /// `owners[p]` is the node that owns partition `p`; its length is the partition count.
    pub owners: Vec<NodeId>,
    pub nodes: BTreeMap<NodeId, NodeAddress>,
}

/// Why a partition map is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("partition count must be between 1 and {PARTITIONS_MAX}, got {0}")]
    PartitionCount(usize),
    #[error("partition {partition} is owned by node {node}, which the map does not list")]
    UnknownOwner {
        partition: PartitionId,
        node: NodeId,
    },
    #[error("nodes {0} and {1} share the address {2}")]
    DuplicateAddress(NodeId, NodeId, String),
}

impl PartitionMap {
    /// A 64-bit FNV-1a digest of the whole map (version, owners, node ids and addresses), in a
    /// canonical order. Two maps under one version with different contents (an edit that
    /// forgot to bump `version`) have different digests, so nodes holding them refuse to link.
    pub fn digest(&self) -> u64 {
        let mut hash = FNV64_OFFSET;
        let mut eat = |bytes: &[u8]| {
            for &byte in bytes {
                hash = (hash ^ u64::from(byte)).wrapping_mul(FNV64_PRIME);
            }
        };
        eat(&self.version.to_le_bytes());
        eat(&(self.owners.len() as u64).to_le_bytes());
        for owner in &self.owners {
            eat(&owner.to_le_bytes());
        }
        for (node, address) in &self.nodes {
            eat(&node.to_le_bytes());
            for text in [&address.http, &address.peer] {
                eat(&(text.len() as u64).to_le_bytes());
                eat(text.as_bytes());
            }
        }
        hash
    }

    /// A single-node map: node 0 owns every partition (the all-in-one server).
    pub fn single_node(partitions: u32, address: NodeAddress) -> Result<PartitionMap, MapError> {
        let map = PartitionMap {
            version: 1,
            owners: vec![0; partitions as usize],
            nodes: BTreeMap::from([(0, address)]),
        };
        map.validate()?;
        Ok(map)
    }

    /// Checks the map: a sane partition count, every owner listed, and no two nodes at one
    /// address. A node that owns no partition is legal: it has just joined, and partitions
    /// come to it only by a move.
    pub fn validate(&self) -> Result<(), MapError> {
        let count = self.owners.len();
        if count == 0 || count > PARTITIONS_MAX as usize {
            return Err(MapError::PartitionCount(count));
        }
        for (partition, node) in self.owners.iter().enumerate() {
            if !self.nodes.contains_key(node) {
                return Err(MapError::UnknownOwner {
                    partition: partition as PartitionId,
                    node: *node,
                });
            }
        }
        let mut seen: BTreeMap<&str, NodeId> = BTreeMap::new();
        for (id, address) in &self.nodes {
            for addr in [&address.http, &address.peer] {
                if let Some(other) = seen.insert(addr, *id) {
                    return Err(MapError::DuplicateAddress(other, *id, addr.clone()));
                }
            }
        }
        Ok(())
    }

    /// The number of partitions.
    pub fn partitions(&self) -> u32 {
        self.owners.len() as u32
    }

    /// The partition that owns `account` under this map.
    pub fn partition_of(&self, account: &AccountId) -> PartitionId {
        partition_of(account, self.partitions())
    }

    /// The node that owns `partition`.
    pub fn owner(&self, partition: PartitionId) -> NodeId {
        self.owners[partition as usize]
    }

    /// The partitions owned by `node`, ascending.
    pub fn partitions_of(&self, node: NodeId) -> Vec<PartitionId> {
        (0..self.partitions())
            .filter(|p| self.owner(*p) == node)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u32) -> NodeAddress {
        NodeAddress {
            http: format!("127.0.0.1:{}", 8080 + n),
            peer: format!("127.0.0.1:{}", 9080 + n),
        }
    }

    #[test]
    fn known_values_are_pinned() {
        // FNV-1a test vectors: these must never change, or accounts move between partitions.
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash(b"foobar"), 0x8594_4171_f739_67e8);
        let cases = [
            ("alice", 8, 7),
            ("bob", 8, 4),
            ("acct:42", 8, 2),
            ("alice", 3, 2),
            ("bob", 1000, 92),
        ];
        for (account, partitions, expected) in cases {
            let id = AccountId::new(account).unwrap();
            assert_eq!(
                partition_of(&id, partitions),
                expected,
                "{account} over {partitions}"
            );
        }
    }

    #[test]
    fn accounts_spread_over_partitions() {
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            let id = AccountId::new(&format!("user-{i}")).unwrap();
            counts[partition_of(&id, 8) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn validates_maps() {
        let mut map = PartitionMap::single_node(4, addr(0)).unwrap();
        assert_eq!(map.partitions_of(0), vec![0, 1, 2, 3]);
        map.owners[2] = 7;
        assert_eq!(
            map.validate(),
            Err(MapError::UnknownOwner {
                partition: 2,
                node: 7
            })
        );
        map.nodes.insert(7, addr(0));
        assert!(matches!(
            map.validate(),
            Err(MapError::DuplicateAddress(0, 7, _))
        ));
        map.nodes.insert(7, addr(7));
        assert_eq!(map.validate(), Ok(()));
        map.nodes.insert(9, addr(9));
        assert_eq!(
            map.validate(),
            Ok(()),
            "a node that owns nothing has just joined"
        );
        assert!(map.partitions_of(9).is_empty());
        assert_eq!(
            PartitionMap::single_node(0, addr(0)),
            Err(MapError::PartitionCount(0))
        );
        assert!(PartitionMap::single_node(PARTITIONS_MAX + 1, addr(0)).is_err());
    }
}
