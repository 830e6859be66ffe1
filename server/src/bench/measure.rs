//! Timing a run and gathering what its clients measured, the same way in every mode: a
//! warm-up that is not counted, a measured window with a progress line each second, the
//! clients' tallies merged, and the money check once transfers in flight have settled.

use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::report::{Live, Phase, Tally};
use super::{BenchError, Totals};

/// How often the money check re-reads while cross-partition transfers settle, and how often.
const SETTLE_PAUSE_MS: u64 = 200;
const SETTLE_READS_MAX: u32 = 25;

/// The warm-up and the measured window of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    pub warmup_seconds: u64,
    pub seconds: u64,
}

/// Runs the warm-up and the measured window, printing a progress line on stderr every
/// second; stops the clients and returns the exact length of the measured window.
pub async fn drive_clock(label: &str, live: &Live, clock: Clock) -> Duration {
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
    for second in 1..=clock.warmup_seconds {
        tokio::time::sleep(tick).await;
        progress("warm-up", second, clock.warmup_seconds);
    }
    live.set_phase(Phase::Measuring);
    let started = Instant::now();
    for second in 1..=clock.seconds {
        tokio::time::sleep_until((started + tick * second as u32).into()).await;
        progress("measure", second, clock.seconds);
    }
    live.set_phase(Phase::Stopped);
    let window = started.elapsed();
    eprintln!();
    window
}

/// Waits for every client and merges what they measured.
pub async fn collect(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Result<Tally, BenchError> {
    let mut merged = Tally::new();
    for task in tasks {
        let tally = task
            .await
            .map_err(|e| BenchError::Server(format!("client task failed: {e}")))?;
        merged.merge(&tally);
    }
    Ok(merged)
}

/// Reads the totals until no money is in flight (cross-partition transfers that were
/// answered may still be confirming at their destination), or gives up and returns the last.
pub async fn settled_totals<F, Fut>(read: F) -> Result<Totals, BenchError>
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

/// Log syncs so far and the seconds they took, summed over partitions: `(count, seconds)`.
pub type Syncs = (u64, f64);

/// Shows on stderr how many batches the partitions made durable during a run and how long
/// that took on average (a sync of the partition's log, or the wait for the node journal's
/// round): the floor under a single transfer's latency.
pub fn report_syncs(mode: &str, before: Syncs, after: Syncs, window: Duration, transfers: u64) {
    let syncs = after.0.saturating_sub(before.0);
    let seconds = (after.1 - before.1).max(0.0);
    if syncs == 0 {
        return;
    }
    eprintln!(
        "  {mode}: {:.0} batch commits/s (all partitions), {:.2} ms to make a batch durable on average, {:.1} transfers per batch",
        syncs as f64 / window.as_secs_f64(),
        seconds * 1000.0 / syncs as f64,
        transfers as f64 / syncs as f64
    );
}

/// Shows on stderr what the errors of a run were, if any.
pub fn report_errors(mode: &str, tally: &Tally) {
    for description in &tally.error_samples {
        eprintln!("  {mode}: error: {description}");
    }
}
