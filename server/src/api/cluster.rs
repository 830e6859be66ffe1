//! `GET /v1/cluster`: the cluster as this node sees it: the map's version, every node with
//! whether this node's link to it is up, and every partition with its copies, its leader,
//! the leader's term and the last log record this node has of it.
//!
//! What a partition's figures come from depends on how it is kept:
//! - one copy (an unreplicated cluster, or `wallet serve`): its owner leads, always (term 0);
//!   its lsn is known where it runs, `null` elsewhere;
//! - a Raft group (a replicated cluster): this node's replica says who leads in which term
//!   and which lsn it has applied (committed records only).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use walletd_core::model::partition::{NodeId, PartitionId, PartitionMap};
use walletd_runtime::driver::DriverStats;
use walletd_runtime::net::replicated::{replica_node, ReplicatedView};
use walletd_runtime::net::LinkStats;
use walletd_runtime::replica::ReplicaStatus;

use super::Api;

/// What a node knows of its cluster, from which each answer is read.
pub struct ClusterView {
    pub map_version: u64,
    pub nodes: Vec<NodeView>,
    /// By partition.
    pub partitions: Vec<PartitionSource>,
    /// A replicated node, whose map, placement and replicas change while it runs: read
    /// anew at every answer (the fields above are then unused).
    pub live: Option<ReplicatedView>,
}

pub struct NodeView {
    pub id: NodeId,
    pub http: String,
    /// The link from this node to it; `None` for this node itself.
    pub link: Option<Arc<LinkStats>>,
}

pub enum PartitionSource {
    /// One copy, on `owner`; `stats` where it runs here.
    Single {
        owner: NodeId,
        stats: Option<Arc<DriverStats>>,
    },
    /// A Raft group with a replica on each of `replicas`; `status` is this node's, if it
    /// has one.
    Replicated {
        replicas: Vec<NodeId>,
        status: Option<Arc<ReplicaStatus>>,
    },
}

impl ClusterView {
    /// The view of a replicated node now.
    fn of_replicated(view: &ReplicatedView) -> ClusterView {
        let (map, placement) = view.map();
        ClusterView {
            map_version: map.version,
            nodes: node_views(&map, view.node(), &view.links()),
            partitions: (0..map.partitions())
                .map(|p| PartitionSource::Replicated {
                    replicas: placement.group(p).to_vec(),
                    status: view.status(p),
                })
                .collect(),
            live: None,
        }
    }
}

/// The cluster: nodes and partitions.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterResponse {
    /// The version of the partition map this node runs (0 for a server alone).
    pub map_version: u64,
    pub nodes: Vec<ClusterNode>,
    pub partitions: Vec<ClusterPartition>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterNode {
    pub id: NodeId,
    /// Its HTTP address.
    #[schema(example = "127.0.0.1:8080")]
    pub http: String,
    /// This node itself, or a node its peer link to is connected.
    pub up: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterPartition {
    pub partition: PartitionId,
    /// The nodes holding a copy.
    pub replicas: Vec<NodeId>,
    /// The node whose copy decides, as far as this node knows (`null` during an election).
    pub leader: Option<NodeId>,
    /// The leader's Raft term (0 for a partition with one copy).
    pub term: u64,
    /// The last log record of the partition this node has and knows committed (`null`
    /// when its only copy is on another node).
    pub commit_lsn: Option<u64>,
    /// Nodes whose copy is catching up and does not vote yet (a replica that lost its disk
    /// and rejoined, or a copy the placement moves here), as this node's replica knows the
    /// members.
    pub learners: Vec<NodeId>,
    /// Nodes whose copies vote, as this node's replica applied the members (the incoming
    /// voters during a change; empty where this node has no replica). A move is done when
    /// the leader's voters are the placement's group.
    pub voters: Vec<NodeId>,
    /// A change of voters is under way (a rejoined copy replacing its old self).
    pub members_changing: bool,
}

impl ClusterView {
    /// `wallet serve`: one node (0) holds every partition.
    pub fn single_node(http: &str, stats: &[(PartitionId, Arc<DriverStats>)]) -> ClusterView {
        ClusterView {
            map_version: 0,
            nodes: vec![NodeView {
                id: 0,
                http: http.to_string(),
                link: None,
            }],
            partitions: (stats.iter())
                .map(|(_, stats)| PartitionSource::Single {
                    owner: 0,
                    stats: Some(Arc::clone(stats)),
                })
                .collect(),
            live: None,
        }
    }

    /// Node `node` of an unreplicated cluster on `map`: the stats of its own partitions,
    /// its links to the others.
    pub fn unreplicated(
        map: &PartitionMap,
        node: NodeId,
        links: &BTreeMap<NodeId, Arc<LinkStats>>,
        stats: &[(PartitionId, Arc<DriverStats>)],
    ) -> ClusterView {
        let local: BTreeMap<PartitionId, &Arc<DriverStats>> =
            stats.iter().map(|(p, s)| (*p, s)).collect();
        ClusterView {
            map_version: map.version,
            nodes: node_views(map, node, links),
            partitions: (0..map.partitions())
                .map(|p| PartitionSource::Single {
                    owner: map.owner(p),
                    stats: local.get(&p).map(|s| Arc::clone(s)),
                })
                .collect(),
            live: None,
        }
    }

    /// A node of a replicated cluster, as it runs at each answer.
    pub fn replicated(view: ReplicatedView) -> ClusterView {
        ClusterView {
            map_version: 0,
            nodes: Vec::new(),
            partitions: Vec::new(),
            live: Some(view),
        }
    }

    fn answer(&self) -> ClusterResponse {
        if let Some(live) = &self.live {
            return ClusterView::of_replicated(live).answer();
        }
        let nodes = (self.nodes.iter())
            .map(|node| ClusterNode {
                id: node.id,
                http: node.http.clone(),
                up: (node.link.as_ref()).is_none_or(|link| link.connected.load(Ordering::Relaxed)),
            })
            .collect();
        let partitions = (self.partitions.iter().enumerate())
            .map(|(partition, source)| {
                let partition = partition as PartitionId;
                match source {
                    PartitionSource::Single { owner, stats } => ClusterPartition {
                        partition,
                        replicas: vec![*owner],
                        leader: Some(*owner),
                        term: 0,
                        commit_lsn: (stats.as_ref())
                            .map(|stats| stats.last_lsn.load(Ordering::Acquire)),
                        learners: Vec::new(),
                        voters: vec![*owner],
                        members_changing: false,
                    },
                    // Of a group with no replica here, this node knows the members only.
                    PartitionSource::Replicated { replicas, status } => ClusterPartition {
                        partition,
                        replicas: replicas.clone(),
                        leader: status
                            .as_ref()
                            .and_then(|s| s.leader())
                            .and_then(replica_node),
                        term: status
                            .as_ref()
                            .map_or(0, |s| s.term.load(Ordering::Relaxed)),
                        commit_lsn: (status.as_ref())
                            .map(|s| s.applied_lsn.load(Ordering::Acquire)),
                        learners: (status.as_ref())
                            .map(|s| s.learners.lock().expect("not poisoned").clone())
                            .unwrap_or_default(),
                        voters: (status.as_ref())
                            .map(|s| s.voters.lock().expect("not poisoned").clone())
                            .unwrap_or_default(),
                        members_changing: (status.as_ref())
                            .is_some_and(|s| s.members_changing.load(Ordering::Acquire)),
                    },
                }
            })
            .collect();
        ClusterResponse {
            map_version: self.map_version,
            nodes,
            partitions,
        }
    }
}

fn node_views(
    map: &PartitionMap,
    node: NodeId,
    links: &BTreeMap<NodeId, Arc<LinkStats>>,
) -> Vec<NodeView> {
    (map.nodes.iter())
        .map(|(id, address)| NodeView {
            id: *id,
            http: address.http.clone(),
            // A node this one has no link to (it owns nothing) counts as down.
            link: (*id != node).then(|| links.get(id).cloned().unwrap_or_default()),
        })
        .collect()
}

/// The cluster as this node sees it.
#[utoipa::path(get, path = "/v1/cluster", tag = "operations",
    responses((status = 200, description = "The cluster's nodes and partitions", body = ClusterResponse)))]
pub async fn cluster(State(api): State<Api>) -> Json<ClusterResponse> {
    Json(api.cluster_view().answer())
}
