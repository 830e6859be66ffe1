//! The command line of `wallet bench`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::measure::Clock;
pub use crate::cli::GroupCommit;

/// What one run of the benchmark measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Single transfers over the HTTP API, one request per transfer.
    Http,
    /// Transfers over the HTTP batch endpoint, `--batch-size` per request.
    Batch,
    /// Holds then captures over the HTTP API: each client places a hold between two random
    /// accounts and captures all of it once held; a pair counts as one transfer.
    HoldCapture,
    /// Multi-leg transactions over the HTTP API: each request a transaction of four legs
    /// between random accounts; a transaction counts as one.
    Multileg4,
    /// The engine in-process (no HTTP): partitions on real files, fsync on, transfers
    /// between random accounts.
    Engine,
    /// The engine in-process once per count of `--partition-counts`: transfers within one
    /// partition, then transfers across partitions (two-phase); the best count is reported.
    Partitions,
    /// `--nodes` cluster nodes in this process, each its own engine on real files, talking the
    /// peer protocol over loopback TCP; every transfer crosses nodes.
    Cluster,
    /// The ledger alone on one core: deciding, applying and encoding transfers, no disk, no
    /// channels; the ceiling above everything else.
    Ledger,
    /// Resident memory per open account in an in-process engine (`--memory-accounts`); with
    /// `--transfers N`, per transfer ever made, and the latency of retries of old ones.
    Memory,
    /// History pages and `as_of` balances on a small log and on one
    /// `--history-factor` times larger (one partition, no server).
    History,
}

impl Mode {
    /// The name used in the table, the JSON report and the summary line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Http => "http",
            Mode::Batch => "http_batch",
            Mode::HoldCapture => "http_hold_capture",
            Mode::Multileg4 => "http_multileg4",
            Mode::Engine => "engine",
            Mode::Partitions => "partitions",
            Mode::Cluster => "cluster",
            Mode::Ledger => "ledger",
            Mode::Memory => "memory",
            Mode::History => "history",
        }
    }
}

/// Arguments of `wallet bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Modes to run (the default is `http batch engine`, the side-by-side set of
    /// `bench/peers.sh`); they run in the order listed here, the HTTP modes on one server.
    #[arg(value_enum, default_values_t = [Mode::Http, Mode::Batch, Mode::Engine])]
    pub modes: Vec<Mode>,
    /// Accounts opened and funded before the transfers of `http`, `batch`, `engine` and
    /// `ledger`; transfers pick two at random.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(2..=10_000_000))]
    pub accounts: u64,
    /// Measured seconds of each run, after the warm-up [default: 10; 5 in `partitions` and
    /// `cluster`, which make several runs each]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: Option<u64>,
    /// Seconds of load before measuring starts; not counted [default: 2; 1 in `partitions`
    /// and `cluster`]
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub warmup_seconds: Option<u64>,
    /// Partitions of the spawned server and of the `engine` mode.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub partitions: u32,
    /// Snapshot a partition after this many events (0: never), in every in-process engine and
    /// the spawned server; the default is the server's.
    #[arg(long, default_value_t = 1_000_000)]
    pub snapshot_every_events: u64,
    /// How batches are made durable, in every in-process engine and the spawned server
    /// (`wallet serve --group-commit`); the default is the server's.
    #[arg(long, value_enum, default_value_t = GroupCommit::Node)]
    pub group_commit: GroupCommit,
    /// Seed of the random choice of accounts and amounts.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Concurrent clients of `http`, each with one keep-alive connection and one request in
    /// flight.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000), help_heading = "HTTP modes (http, batch)")]
    pub clients: u64,
    /// Concurrent clients of `batch`, each with one batch in flight.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=10_000), help_heading = "HTTP modes (http, batch)")]
    pub batch_clients: u64,
    /// Transfers per batch request (the server accepts at most 8000 by default).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000), help_heading = "HTTP modes (http, batch)")]
    pub batch_size: u64,
    /// Run the HTTP modes against this running server (e.g. http://127.0.0.1:8080) instead
    /// of spawning `wallet serve` on a temporary data directory and a free port.
    #[arg(long, help_heading = "HTTP modes (http, batch)")]
    pub target: Option<String>,
    /// The `wallet` executable to spawn for the HTTP modes (default: this one).
    #[arg(long, help_heading = "HTTP modes (http, batch)")]
    pub server_bin: Option<PathBuf>,
    /// Extra arguments for the spawned `wallet serve`, e.g. `--server-arg=--max-in-flight=8192`.
    #[arg(
        long = "server-arg",
        allow_hyphen_values = true,
        help_heading = "HTTP modes (http, batch)"
    )]
    pub server_args: Vec<String>,

    /// Concurrent clients of `engine`.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=100_000), help_heading = "Engine mode")]
    pub engine_clients: u64,
    /// Transfers each `engine` client hands over at once (`Client::execute_many`); 1 is one
    /// `Client::execute` at a time.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000), help_heading = "Engine mode")]
    pub engine_batch: u64,

    /// Partition counts `partitions` runs, each on a fresh engine, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,8", value_parser = clap::value_parser!(u32).range(1..=4096), help_heading = "Partitions mode")]
    pub partition_counts: Vec<u32>,
    /// Concurrent clients of `partitions`.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=100_000), help_heading = "Partitions mode")]
    pub partition_clients: u64,
    /// Transfers each `partitions` client hands over at once (`Client::execute_many`, as the
    /// HTTP batch endpoint does); 1 is one `Client::execute` at a time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000), help_heading = "Partitions mode")]
    pub partition_batch: u64,
    /// Accounts opened on every partition by `partitions` and `cluster`, each funded so that
    /// no transfer of a run is refused: these modes measure committing.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(2..=1_000_000), help_heading = "Partitions and cluster modes")]
    pub accounts_per_partition: u64,

    /// Nodes of the in-process cluster of `cluster`.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=64), help_heading = "Cluster mode")]
    pub nodes: u32,
    /// Partitions each node of `cluster` owns.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64), help_heading = "Cluster mode")]
    pub partitions_per_node: u32,
    /// Concurrent clients of `cluster`, each with one transfer in flight.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..=100_000), help_heading = "Cluster mode")]
    pub cluster_clients: u64,

    /// Transfers `ledger` decides, applies and encodes (its ids are all kept, as a partition
    /// keeps them).
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000), help_heading = "Ledger mode")]
    pub ledger_transfers: u64,
    /// Transfers `ledger` executes after one prefetch of their rows, as a partition executes a
    /// command group; 1 is one at a time without the prefetch.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536), help_heading = "Ledger mode")]
    pub ledger_group: u64,

    /// Accounts the `memory` mode opens.
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000), help_heading = "Memory mode")]
    pub memory_accounts: u64,
    /// Measure memory per transfer instead: this many transfers among 100,000 accounts on
    /// one partition (fsync on), then retries of early ones, whose rows are on disk by then.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1_000..=1_000_000_000), help_heading = "Memory mode")]
    pub transfers: Option<u64>,
    /// Partitions of the engine of `memory --transfers` (1: every transfer stays on its
    /// partition). With more, most transfers cross partitions and each also leaves its
    /// destination's credit row, which leaves memory once final as the home's row does (see
    /// the README's "Credit rows go to disk too").
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64), help_heading = "Memory mode")]
    pub memory_partitions: u32,

    /// Events of the small log of `history`.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1_000..=10_000_000), help_heading = "History mode")]
    pub history_small_events: u64,
    /// How many times larger the large log of `history` is.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(2..=1_000), help_heading = "History mode")]
    pub history_factor: u64,
    /// Accounts of the `history` logs (every record moves money of one or two of them).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(2..=1_000_000), help_heading = "History mode")]
    pub history_accounts: u64,
    /// Reads timed on each log: pages and `as_of` balances, alternating.
    #[arg(long, default_value_t = 4_000, value_parser = clap::value_parser!(u64).range(10..=1_000_000), help_heading = "History mode")]
    pub history_queries: u64,
    /// Records per index chunk in `history` (the server's `--history-chunk-records`). Smaller
    /// than the server's default, so that most of both logs is read from chunk files, as a
    /// server's long history is, rather than from the in-memory chunk.
    #[arg(long, default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(16..=1 << 22), help_heading = "History mode")]
    pub history_chunk_records: u32,
    /// Also time reads that fold the whole log, as they were answered before the index.
    #[arg(long, help_heading = "History mode")]
    pub history_scan: bool,

    /// Append each row of the table, tab-separated in the table's column order, to this file
    /// (`bench/peers.sh` merges them with its peers' rows into one table).
    #[arg(long, help_heading = "Output")]
    pub rows: Option<PathBuf>,
    /// Write the results as JSON to this file as well.
    #[arg(long, help_heading = "Output")]
    pub json: Option<PathBuf>,
}

impl BenchArgs {
    /// The warm-up and measured window of `mode`'s runs. `partitions` and `cluster` make
    /// several runs each (five with the default counts, two), so their runs are shorter.
    pub fn clock(&self, mode: Mode) -> Clock {
        let several_runs = matches!(mode, Mode::Partitions | Mode::Cluster);
        let (seconds, warmup_seconds) = if several_runs { (5, 1) } else { (10, 2) };
        Clock {
            seconds: self.seconds.unwrap_or(seconds),
            warmup_seconds: self.warmup_seconds.unwrap_or(warmup_seconds),
        }
    }
}
