//! `wallet bench`: the load generator, the one tool that measures walletd's throughput.
//!
//! Opens accounts with funds, then runs transfers between random accounts for a fixed time
//! with C concurrent clients, after a warm-up that is not counted, and prints one row per
//! run: transfers per second, request latency percentiles (HDR histograms), rejections and
//! errors, and whether money was conserved (the balances of all accounts, read back after
//! the run, sum to the money funded). Every reply counted is durable: it leaves only after
//! the record holding the transfer was fdatasync'd.
//!
//! Modes:
//! - `http` (single transfers, one request each, `--clients` connections), `batch`
//!   (`--batch-size` transfers per request, `--batch-clients` connections) and `engine` (the
//!   engine without HTTP, `--engine-clients` × `--engine-batch`): the same workload as the
//!   peers in `bench/peers.sh`, whose rows it prints beside these.
//! - `partitions`: the engine per partition count, transfers within one partition against
//!   transfers across partitions.
//! - `cluster`: nodes in this process over loopback TCP, every transfer across nodes.
//! - `ledger`: the ledger alone on one core, no disk: the ceiling.
//! - `memory`: resident bytes per open account at `--memory-accounts`; with `--transfers N`,
//!   resident bytes per transfer ever made and the latency of retries of old transfers.
//! - `history`: history pages and `as_of` balances on a small and a large log (see
//!   [`history_run`]).
//!
//! Each kind of measurement ends the output with a machine-readable line of its own
//! ([`BenchReport::summary_lines`]).
//!
//! # Layout
//! - [`args`]: the command line ([`BenchArgs`], [`Mode`]).
//! - [`workload`]: accounts, the random draw of transfers, amounts and ids (shared by all modes).
//! - [`placement`]: accounts picked partition by partition, for `partitions` and `cluster`.
//! - [`measure`]: the warm-up and measured window, merging tallies, the money check.
//! - [`http_driver`]: the HTTP client, the spawned `wallet serve`, account setup and checks;
//!   [`http_run`]: the runs of the HTTP modes.
//! - [`engine_driver`]: the in-process engine on real files, its clients, and the memory
//!   measurement; [`engine_run`]: one measured run of a fresh engine.
//! - [`partition_sweep`], [`cluster_run`], [`ledger_run`], [`history_run`]: the modes of
//!   those names; [`memory_run`]: `memory --transfers`.
//! - [`report`]: per-client tallies and histograms, the rows, the JSON and TSV output;
//!   [`tables`]: the tables as printed, under their headings.

pub mod args;
pub mod cluster_run;
pub mod engine_driver;
pub mod engine_run;
pub mod history_run;
pub mod http_driver;
pub mod http_run;
pub mod ledger_run;
pub mod measure;
pub mod memory_run;
pub mod partition_sweep;
pub mod placement;
pub mod replicated_run;
pub mod report;
pub mod tables;
pub mod workload;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

pub use args::{BenchArgs, Mode};
use engine_driver::Load;
use engine_run::EngineRun;
use report::{BenchReport, ModeReport};
use workload::Workload;

/// Why a benchmark could not run. Each names what failed so the user can act on it.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("HTTP {what}: {detail}")]
    Http { what: String, detail: String },
    #[error("server: {0}")]
    Server(String),
    #[error("engine: {0}")]
    Engine(String),
}

impl BenchError {
    fn io(what: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }

    fn http(what: impl Into<String>, error: impl std::fmt::Display) -> BenchError {
        BenchError::Http {
            what: what.into(),
            detail: error.to_string(),
        }
    }
}

/// Money in the benchmark accounts, in minor units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub balance: u128,
    /// Debited by a cross-partition Try, not yet final.
    pub held: u128,
    /// Pending credits of cross-partition Tries.
    pub incoming: u128,
}

impl Totals {
    fn add(self, other: Totals) -> Totals {
        Totals {
            balance: self.balance + other.balance,
            held: self.held + other.held,
            incoming: self.incoming + other.incoming,
        }
    }

    pub fn settled(&self) -> bool {
        self.held == 0 && self.incoming == 0
    }
}

/// Runs `wallet bench` on its own multi-threaded runtime; the process exit code.
pub fn main(args: BenchArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("wallet bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) if report.rows().all(|m| m.money_conserved != Some(false)) => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("wallet bench: money was NOT conserved (see the table)");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("wallet bench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the modes asked for (the HTTP modes first, then the others in the order of
/// [`Mode`]), prints the tables and the summary lines, and returns the report.
pub async fn run(args: BenchArgs) -> Result<BenchReport, BenchError> {
    let run_tag = workload::run_tag();
    let workload = Arc::new(Workload::new(args.accounts, run_tag.clone()));
    let mut report = BenchReport {
        accounts: args.accounts,
        ..BenchReport::default()
    };
    let asked = |mode: Mode| args.modes.contains(&mode);
    let http_modes: Vec<Mode> = [Mode::Http, Mode::Batch, Mode::HoldCapture, Mode::Multileg4]
        .into_iter()
        .filter(|m| asked(*m))
        .collect();
    if !http_modes.is_empty() {
        report
            .modes
            .extend(http_run::run(&args, &workload, &http_modes).await?);
    }
    if asked(Mode::Engine) {
        report.modes.push(run_engine_mode(&args, &workload).await?);
    }
    if asked(Mode::Partitions) {
        report.partitions = partition_sweep::run(&args, &run_tag).await?;
    }
    if asked(Mode::Cluster) {
        report.cluster = cluster_run::run(&args, &run_tag).await?;
    }
    if asked(Mode::Ledger) {
        // Nothing else runs meanwhile, so the ledger may hold this thread for its seconds.
        report.ledger = Some(ledger_run::run(&args, &run_tag)?);
    }
    if let (true, Some(transfers)) = (asked(Mode::Memory), args.transfers) {
        report.transfer_memory = Some(
            memory_run::run(
                transfers,
                args.memory_partitions,
                args.seed,
                args.group_commit,
            )
            .await?,
        );
    } else if asked(Mode::Memory) {
        eprintln!(
            "memory: opening {} accounts in an in-process engine ({} partitions)",
            args.memory_accounts, args.partitions
        );
        let memory = engine_driver::measure_memory(
            args.memory_accounts,
            args.partitions,
            args.snapshot_every_events,
        )
        .await?;
        report.memory = Some(memory);
    }
    let history_only = args.modes.iter().all(|m| *m == Mode::History);
    if !history_only {
        print_report(&args, &report)?;
    }
    // Last, so that its line ends the output.
    if asked(Mode::History) {
        history_run::run(&args).await?;
    }
    Ok(report)
}

/// The `engine` mode: the workload of the HTTP modes, on an engine in this process.
async fn run_engine_mode(args: &BenchArgs, workload: &Workload) -> Result<ModeReport, BenchError> {
    let spec = EngineRun {
        label: Mode::Engine.name(),
        partitions: args.partitions,
        snapshot_every_events: args.snapshot_every_events,
        group_commit: args.group_commit,
        load: Load {
            clients: args.engine_clients,
            batch: args.engine_batch,
            seed: args.seed.wrapping_add(104_729),
        },
        clock: args.clock(Mode::Engine),
    };
    engine_run::run(spec, workload).await
}

/// Prints the tables, the ledger's and the memory's results and the summary lines on
/// stdout, then writes `--json` and appends `--rows`.
fn print_report(args: &BenchArgs, report: &BenchReport) -> Result<(), BenchError> {
    let mut out = tables::render(args, report);
    for line in report.summary_lines() {
        out.push_str(&line);
        out.push('\n');
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(report).expect("the report serializes");
        std::fs::write(path, json + "\n")
            .map_err(|e| BenchError::io(format!("write {}", path.display()), e))?;
    }
    if let Some(path) = &args.rows {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| BenchError::io(format!("open {}", path.display()), e))?;
        for row in report.rows() {
            writeln!(file, "{}", row.tsv())
                .map_err(|e| BenchError::io(format!("write {}", path.display()), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
