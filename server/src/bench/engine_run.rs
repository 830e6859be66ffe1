//! One measured run of a fresh in-process engine: the `engine` mode, and each run of the
//! `partitions` mode. The engine lives in a temporary directory that goes with the run.

use std::sync::Arc;
use std::time::Instant;

use super::engine_driver::{self, Entry, Load};
use super::measure::{self, Clock};
use super::report::{Live, ModeReport, RunShape};
use super::workload::Workload;
use super::BenchError;
use crate::cli::GroupCommit;

/// What one engine run is.
#[derive(Debug, Clone, Copy)]
pub struct EngineRun<'a> {
    /// The row's mode name (`engine`, `engine_same_partition`, …).
    pub label: &'a str,
    pub partitions: u32,
    pub snapshot_every_events: u64,
    pub group_commit: GroupCommit,
    pub load: Load,
    pub clock: Clock,
}

/// Starts an engine, opens and funds the workload's accounts, runs the transfers, checks
/// that money was conserved, and stops the engine.
pub async fn run(run: EngineRun<'_>, workload: &Workload) -> Result<ModeReport, BenchError> {
    let dir = tempfile::Builder::new()
        .prefix("walletd-bench-engine-")
        .tempdir()
        .map_err(|e| BenchError::io("create a temporary directory", e))?;
    let engine = engine_driver::start_engine(
        dir.path(),
        run.partitions,
        run.snapshot_every_events,
        run.group_commit,
    )
    .await?;
    let client = engine.client();
    let accounts = engine_driver::account_ids(workload);
    let started = Instant::now();
    let plural = if run.partitions == 1 { "" } else { "s" };
    eprintln!(
        "{}: opening and funding {} accounts in the engine ({} partition{plural})",
        run.label, workload.accounts, run.partitions
    );
    engine_driver::open_accounts(&client, &accounts, workload.funding_minor).await?;
    eprintln!(
        "  {} accounts ready in {:.1} s",
        workload.accounts,
        started.elapsed().as_secs_f64()
    );
    let live = Arc::new(Live::default());
    let workload = Arc::new(workload.for_mode(run.label));
    let entry = Entry::Engine(client.clone());
    let running = engine_driver::run_transfers(&entry, &workload, &live, run.load);
    let syncs_before = engine_driver::syncs(&engine);
    let window = measure::drive_clock(run.label, &live, run.clock).await;
    let syncs_after = engine_driver::syncs(&engine);
    let tally = running.finish().await?;
    measure::report_syncs(
        run.label,
        syncs_before,
        syncs_after,
        window,
        tally.transfers,
    );
    measure::report_errors(run.label, &tally);
    let shape = RunShape {
        clients: run.load.clients,
        transfers_per_request: run.load.batch,
        partitions: run.partitions,
        nodes: None,
    };
    let mut row = ModeReport::from_tally(run.label, &tally, window, shape);
    let after = measure::settled_totals(|| engine_driver::sum_balances(&client, &accounts)).await?;
    row.money_conserved = Some(after.settled() && after.balance == workload.funded_total_minor());
    engine
        .shutdown()
        .await
        .map_err(|e| BenchError::Engine(e.to_string()))?;
    Ok(row)
}
