//! `wallet bench`: the load generator.
//!
//! Opens K accounts with funds, then runs transfers between random accounts for a fixed time
//! with C concurrent clients, after a warm-up that is not counted, and prints one row per
//! mode: transfers per second, request latency percentiles (HDR histograms), rejections and
//! errors, and whether money was conserved (the balances of all K accounts, read back after
//! the run, sum to the money funded). `bench/peers.sh` runs the same workload against
//! PostgreSQL and Redis and prints their rows beside these.
//!
//! # Layout
//! - [`args`]: the command line ([`BenchArgs`], [`Mode`]).
//! - [`workload`]: accounts, the random draw of transfers, amounts and ids (shared by all modes).
//! - [`http_driver`]: the HTTP client, the spawned `wallet serve`, account setup and checks.
//! - [`engine_driver`]: the in-process engine on real files, and the memory measurement.
//! - [`report`]: per-client tallies and histograms, the table, the JSON and TSV output.
//!
//! Modes: `http` (single transfers, one request each, `--clients` connections), `batch`
//! (`--batch-size` transfers per request, `--batch-clients` connections), `engine` (the
//! engine without HTTP, `--engine-clients` × `--engine-batch`), and `memory` (resident bytes
//! per open account at `--memory-accounts`). Every mode's reply is durable: it leaves only
//! after the record holding the transfer was fdatasync'd.

pub mod args;
pub mod engine_driver;
pub mod http_driver;
pub mod report;
pub mod workload;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use args::{BenchArgs, Mode};
use report::{BenchReport, Live, ModeReport, Phase, RunShape, Tally};
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

    fn settled(&self) -> bool {
        self.held == 0 && self.incoming == 0
    }
}

/// How often the money check re-reads while cross-partition transfers settle, and how often.
const SETTLE_PAUSE_MS: u64 = 200;
const SETTLE_READS_MAX: u32 = 25;

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
        Ok(report)
            if report
                .modes
                .iter()
                .all(|m| m.money_conserved != Some(false)) =>
        {
            ExitCode::SUCCESS
        }
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

/// Runs the modes asked for, prints the table and the summary line, and returns the report.
pub async fn run(args: BenchArgs) -> Result<BenchReport, BenchError> {
    let workload = Arc::new(Workload::new(args.accounts, workload::run_tag()));
    let mut report = BenchReport {
        accounts: args.accounts,
        ..BenchReport::default()
    };
    let http_modes: Vec<Mode> = args
        .modes
        .iter()
        .copied()
        .filter(|m| matches!(m, Mode::Http | Mode::Batch))
        .collect();
    if !http_modes.is_empty() {
        report
            .modes
            .extend(run_http_modes(&args, &workload, &http_modes).await?);
    }
    if args.modes.contains(&Mode::Engine) {
        report.modes.push(run_engine_mode(&args, &workload).await?);
    }
    if args.modes.contains(&Mode::Memory) {
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
    print_report(&args, &report)?;
    Ok(report)
}

fn print_report(args: &BenchArgs, report: &BenchReport) -> Result<(), BenchError> {
    let rows: Vec<String> = report.modes.iter().map(ModeReport::tsv).collect();
    let mut out = String::new();
    if !rows.is_empty() {
        out.push_str(&format!(
            "\nwalletd, {} accounts, {} s measured after {} s warm-up per mode:\n",
            report.accounts, args.seconds, args.warmup_seconds
        ));
        out.push_str(&report::render_table(&rows));
    }
    if let Some(memory) = &report.memory {
        out.push_str(&format!(
            "\nmemory: {} accounts opened in {:.1} s ({} partitions); VmRSS {:.1} MiB -> {:.1} MiB: {:.0} bytes per account\n",
            memory.accounts,
            memory.seconds_to_open,
            memory.partitions,
            memory.rss_before_bytes as f64 / (1 << 20) as f64,
            memory.rss_after_bytes as f64 / (1 << 20) as f64,
            memory.bytes_per_account
        ));
    }
    out.push_str(&report.summary_line());
    out.push('\n');
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
        for row in &rows {
            writeln!(file, "{row}")
                .map_err(|e| BenchError::io(format!("write {}", path.display()), e))?;
        }
    }
    Ok(())
}

/// Opens the accounts on the target (a spawned server unless `--target`), runs each HTTP
/// mode, and checks after each that money was conserved.
async fn run_http_modes(
    args: &BenchArgs,
    workload: &Arc<Workload>,
    modes: &[Mode],
) -> Result<Vec<ModeReport>, BenchError> {
    let (server, target) = match &args.target {
        Some(url) => (None, http_driver::Target::resolve(url).await?),
        None => {
            let server = http_driver::SpawnedServer::start(
                args.server_bin.clone(),
                args.partitions,
                args.snapshot_every_events,
                &args.server_args,
            )
            .await?;
            eprintln!(
                "spawned wallet serve (pid {}) on http://{} with {} partitions",
                server.pid(),
                server.target.addr,
                args.partitions
            );
            let target = server.target.clone();
            (Some(server), target)
        }
    };
    let started = Instant::now();
    eprintln!(
        "opening and funding {} accounts over HTTP",
        workload.accounts
    );
    http_driver::open_accounts(&target, workload).await?;
    let baseline = settled_totals(|| http_driver::sum_balances(&target, workload)).await?;
    eprintln!(
        "  {} accounts ready in {:.1} s",
        workload.accounts,
        started.elapsed().as_secs_f64()
    );
    if server.is_some() && baseline.balance != workload.funded_total_minor() {
        return Err(BenchError::Server(format!(
            "after funding, the accounts hold {} but {} was deposited",
            baseline.balance,
            workload.funded_total_minor()
        )));
    }
    let mut rows = Vec::new();
    for (i, mode) in modes.iter().enumerate() {
        let (clients, shape, per_request) = match mode {
            Mode::Http => (args.clients, http_driver::Shape::Single, 1),
            Mode::Batch => (
                args.batch_clients,
                http_driver::Shape::Batch(args.batch_size),
                args.batch_size,
            ),
            Mode::Engine | Mode::Memory => unreachable!("not an HTTP mode"),
        };
        let live = Arc::new(Live::default());
        let seed = args.seed.wrapping_add(i as u64 * 7919);
        let mode_workload = Arc::new(workload.for_mode(mode.name()));
        let tasks =
            http_driver::run_transfers(&target, &mode_workload, &live, clients, shape, seed)
                .await?;
        let syncs_before = http_driver::scrape_syncs(&target).await;
        let window = drive_clock(mode.name(), &live, args).await;
        let syncs_after = http_driver::scrape_syncs(&target).await;
        let tally = collect(tasks).await?;
        report_errors(mode.name(), &tally);
        if let (Some(before), Some(after)) = (syncs_before, syncs_after) {
            report_syncs(mode.name(), before, after, window, tally.transfers);
        }
        let shape = RunShape {
            clients,
            transfers_per_request: per_request,
            partitions: args.partitions,
        };
        let mut row = ModeReport::from_tally(mode.name(), &tally, window, shape);
        let after = settled_totals(|| http_driver::sum_balances(&target, workload)).await?;
        row.money_conserved = Some(after.settled() && after.balance == baseline.balance);
        rows.push(row);
    }
    drop(server);
    Ok(rows)
}

/// Runs the engine mode on a fresh engine in a temporary directory.
async fn run_engine_mode(
    args: &BenchArgs,
    workload: &Arc<Workload>,
) -> Result<ModeReport, BenchError> {
    let dir = tempfile::Builder::new()
        .prefix("walletd-bench-engine-")
        .tempdir()
        .map_err(|e| BenchError::io("create a temporary directory", e))?;
    let engine =
        engine_driver::start_engine(dir.path(), args.partitions, args.snapshot_every_events)
            .await?;
    let client = engine.client();
    let accounts = engine_driver::account_ids(workload.accounts);
    let started = Instant::now();
    eprintln!(
        "opening and funding {} accounts in the engine",
        workload.accounts
    );
    engine_driver::open_accounts(&client, &accounts).await?;
    eprintln!(
        "  {} accounts ready in {:.1} s",
        workload.accounts,
        started.elapsed().as_secs_f64()
    );
    let live = Arc::new(Live::default());
    let seed = args.seed.wrapping_add(104_729);
    let workload = &Arc::new(workload.for_mode(Mode::Engine.name()));
    let tasks = engine_driver::run_transfers(
        &client,
        workload,
        &live,
        args.engine_clients,
        args.engine_batch,
        seed,
    );
    let syncs = || {
        let stats = engine.stats();
        let count = stats
            .iter()
            .map(|s| s.syncs.load(Ordering::Relaxed))
            .sum::<u64>();
        let us = stats
            .iter()
            .map(|s| s.sync_us_total.load(Ordering::Relaxed))
            .sum::<u64>();
        (count, us as f64 / 1e6)
    };
    let syncs_before = syncs();
    let window = drive_clock(Mode::Engine.name(), &live, args).await;
    let syncs_after = syncs();
    let tally = collect(tasks).await?;
    report_syncs(
        Mode::Engine.name(),
        syncs_before,
        syncs_after,
        window,
        tally.transfers,
    );
    report_errors(Mode::Engine.name(), &tally);
    let shape = RunShape {
        clients: args.engine_clients,
        transfers_per_request: args.engine_batch,
        partitions: args.partitions,
    };
    let mut row = ModeReport::from_tally(Mode::Engine.name(), &tally, window, shape);
    let after = settled_totals(|| engine_driver::sum_balances(&client, &accounts)).await?;
    row.money_conserved = Some(after.settled() && after.balance == workload.funded_total_minor());
    engine
        .shutdown()
        .await
        .map_err(|e| BenchError::Engine(e.to_string()))?;
    Ok(row)
}

/// Reads the totals until no money is in flight (cross-partition transfers that were
/// answered may still be confirming at their destination), or gives up and returns the last.
async fn settled_totals<F, Fut>(read: F) -> Result<Totals, BenchError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Totals, BenchError>>,
{
    let mut totals = read().await?;
    for _ in 0..SETTLE_READS_MAX {
        if totals.settled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(SETTLE_PAUSE_MS)).await;
        totals = read().await?;
    }
    Ok(totals)
}

/// Shows on stderr how often the server synced its logs during a run and how long a sync
/// took on average: the floor under a single transfer's latency.
fn report_syncs(
    mode: &str,
    before: (u64, f64),
    after: (u64, f64),
    window: Duration,
    transfers: u64,
) {
    let syncs = after.0.saturating_sub(before.0);
    let seconds = (after.1 - before.1).max(0.0);
    if syncs == 0 {
        return;
    }
    eprintln!(
        "  {mode}: {:.0} log syncs/s (all partitions), {:.2} ms per sync on average, {:.1} transfers per sync",
        syncs as f64 / window.as_secs_f64(),
        seconds * 1000.0 / syncs as f64,
        transfers as f64 / syncs as f64
    );
}

/// Shows on stderr what the errors of a run were, if any.
fn report_errors(mode: &str, tally: &Tally) {
    for description in &tally.error_samples {
        eprintln!("  {mode}: error: {description}");
    }
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Result<Tally, BenchError> {
    let mut merged = Tally::new();
    for task in tasks {
        let tally = task
            .await
            .map_err(|e| BenchError::Server(format!("client task failed: {e}")))?;
        merged.merge(&tally);
    }
    Ok(merged)
}

/// Runs the warm-up and the measured window, printing a progress line on stderr every
/// second; stops the clients and returns the exact length of the measured window.
async fn drive_clock(label: &str, live: &Live, args: &BenchArgs) -> Duration {
    let tick = Duration::from_secs(1);
    let (mut last_count, mut last_at) = (live.transfers.load(Ordering::Relaxed), Instant::now());
    let mut progress = |phase: &str, second: u64, total: u64| {
        let (count, now) = (live.transfers.load(Ordering::Relaxed), Instant::now());
        let rate = (count - last_count) as f64 / (now - last_at).as_secs_f64();
        (last_count, last_at) = (count, now);
        eprint!(
            "\r  {label:<10} {phase:<8} {second:>3}/{total}s {rate:>12.0} transfers/s   errors {:<8}",
            live.errors.load(Ordering::Relaxed)
        );
        let _ = std::io::stderr().flush();
    };
    for second in 1..=args.warmup_seconds {
        tokio::time::sleep(tick).await;
        progress("warm-up", second, args.warmup_seconds);
    }
    live.set_phase(Phase::Measuring);
    let started = Instant::now();
    for second in 1..=args.seconds {
        tokio::time::sleep_until((started + tick * second as u32).into()).await;
        progress("measure", second, args.seconds);
    }
    live.set_phase(Phase::Stopped);
    let window = started.elapsed();
    eprintln!();
    window
}

#[cfg(test)]
mod tests;
