//! What a run measured: latency histograms, counters, the results table, the JSON report and
//! the tab-separated rows that `bench/peers.sh` merges with its peers' rows.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::cluster_run;
use super::ledger_run::LedgerReport;
use super::partition_sweep;

/// Highest latency a histogram tracks, in microseconds (a minute); longer ones are clamped.
const LATENCY_US_MAX: u64 = 60_000_000;
/// Significant decimal digits the histograms keep (0.1% resolution).
const LATENCY_DIGITS: u8 = 3;
/// Distinct error descriptions a tally keeps, to show what went wrong without flooding.
pub const ERROR_SAMPLES_MAX: usize = 5;

/// Where a run is: only requests that complete while `Measuring` count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    WarmUp = 0,
    Measuring = 1,
    Stopped = 2,
}

/// Counters every client of a run updates, read by the progress line and the clock.
#[derive(Debug)]
pub struct Live {
    phase: AtomicU8,
    /// Transfers answered (committed or rejected) since the start, warm-up included.
    pub transfers: AtomicU64,
    /// Requests that failed (transport errors, unexpected statuses) since the start.
    pub errors: AtomicU64,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            phase: AtomicU8::new(Phase::WarmUp as u8),
            transfers: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }
}

impl Live {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::WarmUp,
            1 => Phase::Measuring,
            _ => Phase::Stopped,
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }
}

/// What one client measured during the measuring phase. Each client owns one, so recording
/// takes no lock; the run merges them at the end.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latency of each request, in microseconds.
    pub latency_us: Histogram<u64>,
    pub transfers: u64,
    pub rejected: u64,
    pub errors: u64,
    /// The first distinct error descriptions seen (at most [`ERROR_SAMPLES_MAX`]).
    pub error_samples: Vec<String>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new()
    }
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_DIGITS)
                .expect("valid histogram bounds"),
            transfers: 0,
            rejected: 0,
            errors: 0,
            error_samples: Vec::new(),
        }
    }

    /// Keeps `description` if it is new and there is room.
    pub fn sample_error(&mut self, description: &str) {
        if self.error_samples.len() < ERROR_SAMPLES_MAX
            && !self.error_samples.iter().any(|e| e == description)
        {
            self.error_samples.push(description.to_string());
        }
    }

    /// Records one request's latency, clamped into the histogram's range.
    pub fn record(&mut self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, LATENCY_US_MAX);
        self.latency_us
            .record(us)
            .expect("clamped into the histogram's range");
    }

    pub fn merge(&mut self, other: &Tally) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms of one shape");
        self.transfers += other.transfers;
        self.rejected += other.rejected;
        self.errors += other.errors;
        for description in &other.error_samples {
            self.sample_error(description);
        }
    }
}

/// Tallies that clients share, for the in-process modes and their thousands of clients. A
/// tally per client is a histogram per client (about 140 kB each, zeroed when made: hundreds
/// of MB), and recording into thousands of histograms misses the cache on every request,
/// taking cycles from the engine under test on the same cores. With a few shards per worker
/// thread, two threads rarely want one lock at once.
#[derive(Debug)]
pub struct SharedTallies(Box<[Mutex<Tally>]>);

/// Shards of [`SharedTallies`] (fewer if there are fewer clients).
const TALLY_SHARDS: u64 = 32;

impl SharedTallies {
    pub fn new(clients: u64) -> SharedTallies {
        let shards = clients.clamp(1, TALLY_SHARDS);
        SharedTallies((0..shards).map(|_| Mutex::new(Tally::new())).collect())
    }

    /// Lets `client` add to its shard.
    pub fn record(&self, client: u64, add: impl FnOnce(&mut Tally)) {
        let shard = &self.0[(client % self.0.len() as u64) as usize];
        add(&mut shard.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Every shard merged into one.
    pub fn merged(&self) -> Tally {
        let mut merged = Tally::new();
        for shard in &self.0 {
            merged.merge(&shard.lock().unwrap_or_else(PoisonError::into_inner));
        }
        merged
    }
}

/// One row of the results table.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    /// `http`, `http_batch`, `engine`, `engine_same_partition`, `engine_cross_partition`,
    /// `cluster_home` or `cluster_any`.
    pub mode: String,
    /// Concurrent clients.
    pub clients: u64,
    /// Transfers per request (1 for single transfers).
    pub transfers_per_request: u64,
    pub partitions: u32,
    /// Nodes the partitions are spread over (the `cluster` mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u32>,
    /// Measured seconds (warm-up excluded).
    pub seconds: f64,
    /// Transfers answered in the measured window, committed or rejected.
    pub transfers: u64,
    pub transfers_per_second: f64,
    /// Request latency percentiles in milliseconds (a batch request's for batch modes).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Transfers refused for insufficient funds (an answer, not an error).
    pub rejected: u64,
    /// Requests that failed: transport errors, timeouts, unexpected statuses.
    pub errors: u64,
    /// Whether the balances of all accounts summed to the money funded, after the run.
    pub money_conserved: Option<bool>,
    /// What a reply promises about durability.
    pub durability: String,
    /// The replicated cluster only: from stopping a leader to its successor's first commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover_ms: Option<u64>,
}

impl ModeReport {
    /// Builds a row from the merged tally of a run.
    pub fn from_tally(mode: &str, tally: &Tally, window: Duration, shape: RunShape) -> ModeReport {
        let seconds = window.as_secs_f64();
        let ms = |q: f64| tally.latency_us.value_at_quantile(q) as f64 / 1000.0;
        let any = !tally.latency_us.is_empty();
        ModeReport {
            mode: mode.to_string(),
            clients: shape.clients,
            transfers_per_request: shape.transfers_per_request,
            partitions: shape.partitions,
            nodes: shape.nodes,
            seconds,
            transfers: tally.transfers,
            transfers_per_second: if seconds > 0.0 {
                tally.transfers as f64 / seconds
            } else {
                0.0
            },
            p50_ms: if any { ms(0.50) } else { 0.0 },
            p99_ms: if any { ms(0.99) } else { 0.0 },
            p999_ms: if any { ms(0.999) } else { 0.0 },
            rejected: tally.rejected,
            errors: tally.errors,
            money_conserved: None,
            durability: DURABILITY.to_string(),
            failover_ms: None,
        }
    }

    /// The row as tab-separated fields, in the order of [`TABLE_COLUMNS`].
    pub fn tsv(&self) -> String {
        let plural = if self.partitions == 1 { "" } else { "s" };
        let nodes = self.nodes.map_or(String::new(), |n| format!("{n} nodes, "));
        format!(
            "walletd {} ({nodes}{} partition{plural})\t{}\t{}\t{:.0}\t{:.2}\t{:.2}\t{:.2}\t{}\t{}\t{}\t{}",
            self.mode,
            self.partitions,
            self.clients,
            self.transfers_per_request,
            self.transfers_per_second,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.rejected,
            self.errors,
            conserved_text(self.money_conserved),
            self.durability
        )
    }
}

/// How a run was shaped (for the row's description).
#[derive(Debug, Clone, Copy)]
pub struct RunShape {
    pub clients: u64,
    pub transfers_per_request: u64,
    pub partitions: u32,
    pub nodes: Option<u32>,
}

/// walletd's promise for every mode: a reply leaves only after the log record holding it was
/// written and fdatasync'd (group commit: one sync per partition batch).
pub const DURABILITY: &str = "reply after fdatasync of its batch";

/// Column headers of the table (also the order of [`ModeReport::tsv`]).
pub const TABLE_COLUMNS: [&str; 11] = [
    "system / mode",
    "clients",
    "per req",
    "transfers/s",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "rejected",
    "errors",
    "conserved",
    "durability",
];

fn conserved_text(conserved: Option<bool>) -> &'static str {
    match conserved {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "-",
    }
}

/// Renders tab-separated rows as an aligned table: numbers right-aligned, text left.
pub fn render_table(rows: &[String]) -> String {
    let mut cells: Vec<Vec<&str>> = vec![TABLE_COLUMNS.to_vec()];
    cells.extend(rows.iter().map(|row| row.split('\t').collect::<Vec<_>>()));
    let columns = cells.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            cells
                .iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let numeric = |cell: &str| cell == "-" || cell.parse::<f64>().is_ok();
    let mut out = String::new();
    for row in &cells {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let last = c + 1 == row.len();
            if c > 0 && numeric(cell) {
                let _ = write!(line, "{cell:>width$}", width = widths[c]);
            } else if last {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Resident memory per account, from the `memory` mode.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    pub accounts: u64,
    pub partitions: u32,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub bytes_per_account: f64,
    pub seconds_to_open: f64,
}

/// Everything `--json` writes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BenchReport {
    pub accounts: u64,
    /// The rows of `http`, `batch` and `engine`, the modes `bench/peers.sh` compares.
    pub modes: Vec<ModeReport>,
    /// The rows of `partitions`: one per partition count and placement.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<ModeReport>,
    /// The rows of `cluster`: clients entering at the home node, then at any node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cluster: Vec<ModeReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger: Option<LedgerReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_memory: Option<super::memory_run::TransferMemoryReport>,
}

impl BenchReport {
    /// Every row of every table.
    pub fn rows(&self) -> impl Iterator<Item = &ModeReport> {
        self.modes
            .iter()
            .chain(&self.partitions)
            .chain(&self.cluster)
    }

    /// The machine-readable last lines, one per kind of measurement that ran, each starting
    /// with its own word so that a script greps the one it wants: `walletd …` (the modes
    /// `bench/peers.sh` compares, and memory), `engine …` (`partitions`), `cluster …`,
    /// `ledger …`.
    pub fn summary_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.modes.is_empty() || self.memory.is_some() {
            lines.push(self.summary_line());
        }
        lines.extend(partition_sweep::summary_line(&self.partitions));
        lines.extend(cluster_run::summary_lines(&self.cluster));
        lines.extend(self.ledger.as_ref().map(|ledger| ledger.lines().1));
        lines.extend(self.transfer_memory.as_ref().map(|m| m.summary_line()));
        lines
    }

    /// The machine-readable line of the compared modes:
    /// `walletd http_tps=N http_batch_tps=N engine_tps=N`.
    pub fn summary_line(&self) -> String {
        let mut line = String::from("walletd");
        for mode in &self.modes {
            let _ = write!(line, " {}_tps={:.0}", mode.mode, mode.transfers_per_second);
        }
        if let Some(memory) = &self.memory {
            let _ = write!(
                line,
                " memory_bytes_per_account={:.0} memory_accounts={}",
                memory.bytes_per_account, memory.accounts
            );
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally_of(latencies_us: &[u64], rejected: u64) -> Tally {
        let mut tally = Tally::new();
        for us in latencies_us {
            tally.record(Duration::from_micros(*us));
            tally.transfers += 1;
        }
        tally.rejected = rejected;
        tally
    }

    #[test]
    fn percentiles_and_rate_come_from_the_merged_tallies() {
        let mut merged = tally_of(&[1000; 98], 1);
        merged.merge(&tally_of(&[5000, 9000], 2));
        let shape = RunShape {
            clients: 2,
            transfers_per_request: 1,
            partitions: 8,
            nodes: None,
        };
        let row = ModeReport::from_tally("http", &merged, Duration::from_secs(2), shape);
        assert_eq!(row.transfers, 100);
        assert_eq!(row.transfers_per_second, 50.0);
        assert_eq!(row.rejected, 3);
        assert!((row.p50_ms - 1.0).abs() < 0.01, "{}", row.p50_ms);
        assert!((row.p99_ms - 5.0).abs() < 0.01, "{}", row.p99_ms);
        assert!((row.p999_ms - 9.0).abs() < 0.01, "{}", row.p999_ms);
    }

    #[test]
    fn latencies_beyond_the_range_are_clamped() {
        let tally = tally_of(&[0, LATENCY_US_MAX * 10], 0);
        assert_eq!(tally.latency_us.len(), 2);
        assert_eq!(tally.latency_us.min(), 1);
    }

    #[test]
    fn the_table_aligns_rows_and_the_summary_names_each_mode() {
        let shape = RunShape {
            clients: 50,
            transfers_per_request: 1,
            partitions: 8,
            nodes: None,
        };
        let mut row =
            ModeReport::from_tally("http", &tally_of(&[2500], 0), Duration::from_secs(1), shape);
        row.money_conserved = Some(true);
        let table = render_table(&[
            row.tsv(),
            "peer x\t8\t1\t123\t-\t-\t-\t0\t0\t-\tnone".into(),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("system / mode"));
        assert!(
            lines[1].starts_with("walletd http (8 partitions) "),
            "{table}"
        );
        assert!(lines[1].contains("2.50") && lines[1].contains("yes"));
        // Numbers are right-aligned: the rates end in the same column.
        let end = |line: &str, text: &str| line.find(text).map(|i| i + text.len());
        assert_eq!(end(lines[1], "  1  "), end(lines[2], "  1  "));
        let report = BenchReport {
            accounts: 10,
            modes: vec![row],
            ..BenchReport::default()
        };
        assert_eq!(report.summary_lines(), ["walletd http_tps=1"]);
    }
}
