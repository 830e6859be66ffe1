//! The command line of `wallet bench`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// What one run of the benchmark measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Single transfers over the HTTP API, one request per transfer.
    Http,
    /// Transfers over the HTTP batch endpoint, `--batch-size` per request.
    Batch,
    /// The engine in-process (no HTTP): partitions on real files, fsync on.
    Engine,
    /// Resident memory per open account in an in-process engine (`--memory-accounts`).
    Memory,
}

impl Mode {
    /// The name used in the table, the JSON report and the summary line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Http => "http",
            Mode::Batch => "http_batch",
            Mode::Engine => "engine",
            Mode::Memory => "memory",
        }
    }
}

/// Arguments of `wallet bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Modes to run, in order: `http`, `batch`, `engine` (the default is all three), or
    /// `memory` (resident memory per account, run on its own).
    #[arg(value_enum, default_values_t = [Mode::Http, Mode::Batch, Mode::Engine])]
    pub modes: Vec<Mode>,
    /// Accounts opened and funded before the transfers; transfers pick two at random.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(2..=10_000_000))]
    pub accounts: u64,
    /// Measured seconds per mode (after the warm-up).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,
    /// Seconds of load before measuring starts; not counted.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub warmup_seconds: u64,
    /// Concurrent clients of the single-transfer HTTP mode, each with one keep-alive
    /// connection and one request in flight.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub clients: u64,
    /// Concurrent clients of the batch mode, each with one batch in flight.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch_clients: u64,
    /// Transfers per batch request (the server accepts at most 8000 by default).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch_size: u64,
    /// Concurrent clients of the in-process engine mode.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub engine_clients: u64,
    /// Transfers each engine client hands over at once (`Client::execute_many`); 1 is one
    /// `Client::execute` at a time.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub engine_batch: u64,
    /// Partitions of the spawned server and of the in-process engine.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub partitions: u32,
    /// Snapshot a partition after this many events (0: never), in the engine mode and the
    /// spawned server; the default is the server's.
    #[arg(long, default_value_t = 1_000_000)]
    pub snapshot_every_events: u64,
    /// Run the HTTP modes against this running server (e.g. http://127.0.0.1:8080) instead
    /// of spawning `wallet serve` on a temporary data directory and a free port.
    #[arg(long)]
    pub target: Option<String>,
    /// The `wallet` executable to spawn for the HTTP modes (default: this one).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Extra arguments for the spawned `wallet serve`, e.g. `--server-arg=--max-in-flight=8192`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Accounts the `memory` mode opens.
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub memory_accounts: u64,
    /// Append each mode's row, tab-separated in the table's column order, to this file
    /// (`bench/peers.sh` merges them with its peers' rows into one table).
    #[arg(long)]
    pub rows: Option<PathBuf>,
    /// Write the results as JSON to this file as well.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Seed of the random choice of accounts and amounts.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}
