//! The partitions' metrics, read from each driver's [`DriverStats`] at scrape time: one
//! series per partition of this process, labelled `partition`.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use walletd_core::model::partition::PartitionId;
use walletd_runtime::driver::DriverStats;
use walletd_runtime::histogram::{Histogram, HistogramSnapshot};

use super::saturating_i64;

/// Microseconds in a second: the drivers record durations in µs, Prometheus wants seconds.
const US_PER_SECOND: f64 = 1e6;

/// How a family reads a partition's stats.
enum Read {
    Counter(fn(&DriverStats) -> u64),
    Gauge(fn(&DriverStats) -> u64),
    /// A histogram, and what its values are divided by on the way out (bounds and sum).
    Histogram(fn(&DriverStats) -> &Histogram, f64),
}

/// One metric family. Counters are named without `_total`: the encoder adds it to their
/// samples, as OpenMetrics wants.
struct FamilySpec {
    name: &'static str,
    help: &'static str,
    read: Read,
}

const FAMILIES: [FamilySpec; 18] = [
    FamilySpec {
        name: "walletd_partition_batches",
        help: "Group-commit batches.",
        read: Read::Counter(|s| s.batches.load(Ordering::Relaxed)),
    },
    FamilySpec {
        name: "walletd_partition_inputs",
        help: "Inputs (commands, queries, peer messages) taken into batches.",
        read: Read::Counter(|s| s.inputs.load(Ordering::Relaxed)),
    },
    FamilySpec {
        name: "walletd_partition_events",
        help: "Events appended to the log.",
        read: Read::Counter(|s| s.events.load(Ordering::Relaxed)),
    },
    FamilySpec {
        name: "walletd_partition_syncs",
        help: "Log syncs (fdatasync), one per batch that wrote.",
        read: Read::Counter(|s| s.syncs.load(Ordering::Relaxed)),
    },
    FamilySpec {
        name: "walletd_partition_transfers_in_flight",
        help: "Cross-partition transfers (TC/C) the home partition is still driving.",
        read: Read::Gauge(|s| s.in_flight.load(Ordering::Relaxed)),
    },
    FamilySpec {
        name: "walletd_partition_last_lsn",
        help: "Last durable log sequence number.",
        read: Read::Gauge(|s| s.last_lsn.load(Ordering::Relaxed)),
    },
    FamilySpec {
        name: "walletd_partition_protocol_violations",
        help: "TC/C protocol violations seen by the coordinator (always 0 in a correct system).",
        read: Read::Counter(|s| s.violations.load(Ordering::Relaxed)),
    },
    FamilySpec {
        name: "walletd_partition_rows",
        help: "Rows held in memory: accounts, the cash rows (idempotency records, never \
               pruned), and the transfer rows (home and credit rows) not yet in a durable \
               chunk file.",
        read: Read::Gauge(|s| s.rows.load(Ordering::Relaxed)),
    },
    FamilySpec {
        name: "walletd_partition_transfer_rows_in_memory",
        help: "Transfer rows in memory, home and credit rows; the rest are on disk only, in \
               chunk files (bounded by --transfer-rows-in-memory-max while chunks become \
               final).",
        read: Read::Gauge(|s| s.transfer_rows_in_memory.load(Ordering::Relaxed)),
    },
    FamilySpec {
        name: "walletd_partition_cold_transfer_chunks",
        help: "Chunks of transfer rows on disk only, which retries of old transfers read.",
        read: Read::Gauge(|s| s.cold_transfer_chunks.load(Ordering::Relaxed)),
    },
    FamilySpec {
        name: "walletd_partition_snapshot_failures",
        help: "Snapshots that could not be written; the partition went on from its log.",
        read: Read::Counter(|s| s.snapshot_failures.load(Ordering::Relaxed)),
    },
    FamilySpec {
        name: "walletd_partition_events_per_batch",
        help: "Average events per batch since start (walletd_partition_batch_records has \
               the distribution).",
        read: Read::Gauge(|s| {
            s.events.load(Ordering::Relaxed) / s.batches.load(Ordering::Relaxed).max(1)
        }),
    },
    FamilySpec {
        name: "walletd_partition_fsync_seconds",
        help: "Time to make a batch durable: append and fdatasync of the partition's log, \
               or with --group-commit node the wait for its journal round.",
        read: Read::Histogram(|s| &s.sync_us, US_PER_SECOND),
    },
    FamilySpec {
        name: "walletd_partition_batch_records",
        help: "Records per group commit (batches that wrote).",
        read: Read::Histogram(|s| &s.batch_records, 1.0),
    },
    FamilySpec {
        name: "walletd_partition_inbox_depth",
        help: "Inputs waiting in the partition's inbox, sampled each time the driver takes \
               a round of them.",
        read: Read::Histogram(|s| &s.inbox_depth, 1.0),
    },
    FamilySpec {
        name: "walletd_partition_snapshot_duration_seconds",
        help: "Time to encode, write and sync a snapshot (written ones).",
        read: Read::Histogram(|s| &s.snapshot_us, US_PER_SECOND),
    },
    FamilySpec {
        name: "walletd_partition_transfer_try_to_decision_seconds",
        help: "Cross-partition transfers at their home partition: from the Try to the \
               decision (the commit point), by wall clock.",
        read: Read::Histogram(|s| &s.try_to_decision_us, US_PER_SECOND),
    },
    FamilySpec {
        name: "walletd_partition_transfer_decision_to_finish_seconds",
        help: "Cross-partition transfers at their home partition: from the decision to the \
               end (0 for a transfer committed at its commit point), by wall clock.",
        read: Read::Histogram(|s| &s.decision_to_finish_us, US_PER_SECOND),
    },
];

/// The collector of the partitions that run in this process.
#[derive(Debug)]
pub(super) struct Partitions {
    /// Partition labels, made once.
    labels: Vec<[(&'static str, String); 1]>,
    stats: Vec<Arc<DriverStats>>,
}

impl Partitions {
    pub(super) fn new(partitions: Vec<(PartitionId, Arc<DriverStats>)>) -> Partitions {
        let (ids, stats): (Vec<_>, Vec<_>) = partitions.into_iter().unzip();
        Partitions {
            labels: ids
                .iter()
                .map(|id| [("partition", id.to_string())])
                .collect(),
            stats,
        }
    }
}

impl Collector for Partitions {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for family in &FAMILIES {
            let kind = match family.read {
                Read::Counter(_) => MetricType::Counter,
                Read::Gauge(_) => MetricType::Gauge,
                Read::Histogram(..) => MetricType::Histogram,
            };
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, kind)?;
            for (labels, stats) in self.labels.iter().zip(&self.stats) {
                let series = metric.encode_family(labels)?;
                match family.read {
                    Read::Counter(read) => ConstCounter::new(read(stats)).encode(series)?,
                    Read::Gauge(read) => {
                        ConstGauge::new(saturating_i64(read(stats))).encode(series)?
                    }
                    Read::Histogram(read, divisor) => Buckets {
                        snapshot: read(stats).snapshot(),
                        divisor,
                    }
                    .encode(series)?,
                }
            }
        }
        Ok(())
    }
}

/// A driver's histogram as it was read, in the exported unit.
#[derive(Debug)]
struct Buckets {
    snapshot: HistogramSnapshot,
    divisor: f64,
}

impl EncodeMetric for Buckets {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let snapshot = &self.snapshot;
        debug_assert_eq!(snapshot.counts.len(), snapshot.bounds.len() + 1);
        // The encoder takes per-bucket counts and an upper bound of `f64::MAX` as `+Inf`.
        let bounds = snapshot
            .bounds
            .iter()
            .map(|&bound| bound as f64 / self.divisor)
            .chain(std::iter::once(f64::MAX));
        let buckets: Vec<(f64, u64)> = bounds.zip(snapshot.counts.iter().copied()).collect();
        let sum = snapshot.sum as f64 / self.divisor;
        encoder.encode_histogram::<NoLabelSet>(sum, snapshot.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}
