//! The replicas' gauges (a replicated cluster's node only), read from each replica's
//! [`ReplicaStatus`] at scrape time: one series per partition, labelled `partition`. A
//! partition whose `walletd_replica_leader` is 0 on every node has no leader (an election);
//! `walletd_replica_term` rising often means elections that should not happen.

use std::fmt;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use walletd_runtime::net::replicated::{replica_node, ReplicatedView};
use walletd_runtime::replica::ReplicaStatus;

/// A gauge's name, help, and how to read it.
type GaugeSpec = (&'static str, &'static str, fn(&ReplicaStatus) -> i64);

const GAUGES: [GaugeSpec; 4] = [
    (
        "walletd_replica_leading",
        "1 while this node's replica leads its partition (and has caught up), else 0.",
        |s| i64::from(s.leading.load(Ordering::Relaxed)),
    ),
    (
        "walletd_replica_leader",
        "The node that leads the partition as this replica knows it, plus one (0: none known).",
        |s| {
            s.leader()
                .and_then(replica_node)
                .map_or(0, |n| i64::from(n) + 1)
        },
    ),
    (
        "walletd_replica_term",
        "The Raft term this replica is in.",
        |s| s.term.load(Ordering::Relaxed) as i64,
    ),
    (
        "walletd_replica_commit_index",
        "The index of the last Raft entry this replica knows committed.",
        |s| s.commit_index.load(Ordering::Relaxed) as i64,
    ),
];

pub(super) struct Replicas {
    /// The replicas this node runs, read at each scrape (copies move).
    pub(super) view: ReplicatedView,
}

impl fmt::Debug for Replicas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replicas")
            .field("node", &self.view.node())
            .finish()
    }
}

impl Collector for Replicas {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let statuses = self.view.statuses();
        for (name, help, read) in GAUGES {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (partition, status) in &statuses {
                let labels = [("partition", partition.to_string())];
                ConstGauge::new(read(status)).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
