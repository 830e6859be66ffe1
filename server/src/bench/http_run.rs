//! The runs of the HTTP modes (`http`, `batch`): one server (spawned, or `--target`), the
//! accounts opened on it once, then each mode's transfers and its money check.

use std::sync::Arc;
use std::time::Instant;

use clap::ValueEnum;

use super::args::{BenchArgs, Mode};
use super::http_driver::{self, Shape, SpawnedServer, Target};
use super::measure;
use super::report::{Live, ModeReport, RunShape};
use super::workload::Workload;
use super::{BenchError, Totals};

/// Opens the accounts on the target (a spawned server unless `--target`), runs each HTTP
/// mode, and checks after each that money was conserved.
pub async fn run(
    args: &BenchArgs,
    workload: &Arc<Workload>,
    modes: &[Mode],
) -> Result<Vec<ModeReport>, BenchError> {
    let (server, target) = connect(args).await?;
    let baseline = prepare(&target, workload, server.is_some()).await?;
    let mut rows = Vec::new();
    for (i, &mode) in modes.iter().enumerate() {
        let seed = args.seed.wrapping_add(i as u64 * 7919);
        let mut row = measured_run(args, &target, workload, mode, seed).await?;
        let after =
            measure::settled_totals(|| http_driver::sum_balances(&target, workload)).await?;
        row.money_conserved = Some(after.settled() && after.balance == baseline.balance);
        rows.push(row);
    }
    drop(server);
    Ok(rows)
}

/// The arguments of a spawned server: the bench's `--group-commit`, then `--server-arg`s.
fn server_args(args: &BenchArgs) -> Vec<String> {
    let group_commit = args
        .group_commit
        .to_possible_value()
        .expect("every mode has a name");
    let mut server_args = vec![format!("--group-commit={}", group_commit.get_name())];
    server_args.extend(args.server_args.iter().cloned());
    server_args
}

/// The server to load: `--target`, or a `wallet serve` spawned for the run.
async fn connect(args: &BenchArgs) -> Result<(Option<SpawnedServer>, Target), BenchError> {
    if let Some(url) = &args.target {
        return Ok((None, Target::resolve(url).await?));
    }
    let server = SpawnedServer::start(
        args.server_bin.clone(),
        args.partitions,
        args.snapshot_every_events,
        &server_args(args),
    )
    .await?;
    eprintln!(
        "spawned wallet serve (pid {}) on http://{} with {} partitions",
        server.pid(),
        server.target.addr,
        args.partitions
    );
    let target = server.target.clone();
    Ok((Some(server), target))
}

/// Opens and funds the accounts; the money they hold before any transfer. A spawned server
/// must hold exactly what was deposited; a running one may hold more from earlier runs.
async fn prepare(
    target: &Target,
    workload: &Workload,
    spawned: bool,
) -> Result<Totals, BenchError> {
    let started = Instant::now();
    eprintln!(
        "opening and funding {} accounts over HTTP",
        workload.accounts
    );
    http_driver::open_accounts(target, workload).await?;
    let baseline = measure::settled_totals(|| http_driver::sum_balances(target, workload)).await?;
    eprintln!(
        "  {} accounts ready in {:.1} s",
        workload.accounts,
        started.elapsed().as_secs_f64()
    );
    if spawned && baseline.balance != workload.funded_total_minor() {
        return Err(BenchError::Server(format!(
            "after funding, the accounts hold {} but {} was deposited",
            baseline.balance,
            workload.funded_total_minor()
        )));
    }
    Ok(baseline)
}

/// One measured run of `mode` against `target`; the row, without its money check.
async fn measured_run(
    args: &BenchArgs,
    target: &Target,
    workload: &Workload,
    mode: Mode,
    seed: u64,
) -> Result<ModeReport, BenchError> {
    let (clients, shape, per_request) = match mode {
        Mode::Batch => (
            args.batch_clients,
            Shape::Batch(args.batch_size),
            args.batch_size,
        ),
        Mode::HoldCapture => (args.clients, Shape::HoldCapture, 1),
        Mode::Multileg4 => (args.clients, Shape::Transaction(4), 1),
        _ => (args.clients, Shape::Single, 1),
    };
    let live = Arc::new(Live::default());
    let mode_workload = Arc::new(workload.for_mode(mode.name()));
    let tasks =
        http_driver::run_transfers(target, &mode_workload, &live, clients, shape, seed).await?;
    let syncs_before = http_driver::scrape_syncs(target).await;
    let window = measure::drive_clock(mode.name(), &live, args.clock(mode)).await;
    let syncs_after = http_driver::scrape_syncs(target).await;
    let tally = measure::collect(tasks).await?;
    measure::report_errors(mode.name(), &tally);
    if let (Some(before), Some(after)) = (syncs_before, syncs_after) {
        measure::report_syncs(mode.name(), before, after, window, tally.transfers);
    }
    let shape = RunShape {
        clients,
        transfers_per_request: per_request,
        partitions: args.partitions,
        nodes: None,
    };
    Ok(ModeReport::from_tally(mode.name(), &tally, window, shape))
}
