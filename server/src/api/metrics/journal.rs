//! The node journal's counters (`--group-commit node`): its rounds are the node's log
//! `fdatasync`s, so `rate(walletd_journal_rounds_total)` is the disk's sync rate and
//! batches over rounds how many partition batches one sync carries.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use walletd_runtime::storage::journal::{JournalStats, NodeJournal};

pub(super) struct Journal(pub(super) Arc<NodeJournal>);

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Journal").field(&self.0.dir()).finish()
    }
}

/// A counter's name, help, and how to read it.
type CounterSpec = (&'static str, &'static str, fn(&JournalStats) -> u64);

const COUNTERS: [CounterSpec; 4] = [
    (
        "walletd_journal_rounds",
        "Rounds the node journal wrote and fdatasynced: the node's log syncs.",
        |s| s.rounds.load(Ordering::Relaxed),
    ),
    (
        "walletd_journal_batches",
        "Partition batches the journal's rounds made durable.",
        |s| s.frames.load(Ordering::Relaxed),
    ),
    (
        "walletd_journal_bytes",
        "Bytes of rounds the journal wrote.",
        |s| s.bytes.load(Ordering::Relaxed),
    ),
    (
        "walletd_journal_files_deleted",
        "Journal files deleted once every partition with a batch in them checkpointed.",
        |s| s.files_deleted.load(Ordering::Relaxed),
    ),
];

impl Collector for Journal {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for (name, help, read) in COUNTERS {
            let counter = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(read(self.0.stats())).encode(counter)?;
        }
        Ok(())
    }
}
