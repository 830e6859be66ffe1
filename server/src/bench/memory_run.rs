//! `wallet bench memory --transfers N`: resident memory per transfer ever made, and what a
//! retry of an old transfer costs once its row is on disk only.
//!
//! One partition on real files (fsync on; `--memory-partitions` for more), [`ACCOUNTS`]-many
//! accounts funded alike, then `N` transfers between random accounts, handed over in groups
//! by a few concurrent clients. Every transfer leaves a row (those refused for funds too), so
//! without cold rows memory would grow by a row per transfer. With more than one partition a
//! transfer across partitions also leaves a credit row at its destination, kept in memory. At
//! the end:
//!
//! - `rss_mb`: the process's resident set; `bytes_per_transfer`: its growth from the end of
//!   the setup (accounts open and funded) to the end of the transfers, per transfer;
//! - `cold_retry_p99_ms`: the 99th percentile latency of retries, one at a time, of transfers
//!   drawn from the first [`EARLY_TRANSFERS`] (long since on disk only), each checked to get
//!   the answer the transfer first got. A retry's answer leaves with the next group commit,
//!   like any answer, so its latency includes a sync; the progress lines also give the same
//!   figure for retries of recent transfers (rows in memory), to set it against.
//!
//! The last line is exactly
//! `memory transfers=N rss_mb=M bytes_per_transfer=B cold_retry_p99_ms=X`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use walletd_core::ledger::{Command, Reply, TransferStatus};
use walletd_core::model::event::Transfer;
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::Amount;
use walletd_runtime::engine::Client;

use super::engine_driver::{open_accounts, start_engine};
use super::workload::{account_name, Rng, CURRENCY, FUNDING_MINOR, TRANSFER_MINOR_MAX};
use super::BenchError;
use crate::cli::GroupCommit;

/// Accounts the transfers move money between.
pub const ACCOUNTS: u64 = 100_000;
/// Concurrent clients handing over transfers.
const CLIENTS: u64 = 8;
/// Transfers each client hands over at once (`Client::execute_many`).
const GROUP: u64 = 1_000;
/// The first transfers whose answers are kept, for the retries at the end.
pub const EARLY_TRANSFERS: u64 = 100_000;
/// Retries measured, of early transfers and of recent ones each.
const RETRIES: usize = 1_000;

/// What `memory --transfers` measured.
#[derive(Debug, Clone, Serialize)]
pub struct TransferMemoryReport {
    pub transfers: u64,
    pub rss_after_setup_bytes: u64,
    pub rss_bytes: u64,
    pub bytes_per_transfer: f64,
    pub seconds: f64,
    pub cold_retry_p99_ms: f64,
    pub hot_retry_p99_ms: f64,
    /// Transfer rows in memory at the end, and cold chunks (on disk only).
    pub rows_in_memory: usize,
    pub cold_chunks: usize,
}

impl TransferMemoryReport {
    /// The machine-readable line (see the module docs).
    pub fn summary_line(&self) -> String {
        format!(
            "memory transfers={} rss_mb={:.0} bytes_per_transfer={:.1} cold_retry_p99_ms={:.2}",
            self.transfers,
            self.rss_bytes as f64 / (1 << 20) as f64,
            self.bytes_per_transfer,
            self.cold_retry_p99_ms
        )
    }
}

/// Transfer number `i` of a run seeded `seed`: a function of both, so that a retry is the
/// same request without the run keeping it.
fn transfer(seed: u64, i: u64, ids: &[AccountId]) -> Transfer {
    let mut rng = Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i);
    let from = rng.below(ACCOUNTS);
    let to = (from + 1 + rng.below(ACCOUNTS - 1)) % ACCOUNTS;
    let mut id = String::with_capacity(16);
    id.push('m');
    super::workload::push_decimal(i, &mut id);
    Transfer {
        transaction_id: TransactionId::new(&id).expect("valid id"),
        from: ids[from as usize],
        to: ids[to as usize],
        amount: Amount::from_minor(1 + rng.below(TRANSFER_MINOR_MAX)).expect("valid amount"),
        currency: CURRENCY,
    }
}

/// Runs the measurement: `transfers` transfers on a fresh engine of `partitions` partitions.
pub async fn run(
    transfers: u64,
    partitions: u32,
    seed: u64,
    group_commit: GroupCommit,
) -> Result<TransferMemoryReport, BenchError> {
    let dir = tempfile::Builder::new()
        .prefix("walletd-bench-memory-")
        .tempdir()
        .map_err(|e| BenchError::io("create a temporary directory", e))?;
    let engine = start_engine(dir.path(), partitions, 1_000_000, group_commit).await?;
    let client = engine.client();
    let ids: Arc<[AccountId]> = (0..ACCOUNTS)
        .map(|i| AccountId::new(&account_name(i)).expect("valid id"))
        .collect();
    eprintln!("memory: opening and funding {ACCOUNTS} accounts on {partitions} partition(s)");
    open_accounts(&client, &ids, FUNDING_MINOR).await?;
    let rss_after_setup_bytes = resident_bytes()?;
    let started = Instant::now();
    let early = run_transfers(&client, &ids, transfers, seed).await?;
    let seconds = started.elapsed().as_secs_f64();
    let rss_bytes = resident_bytes()?;
    let (rows_in_memory, cold_chunks) = table_shape(&engine);
    eprintln!(
        "memory: {transfers} transfers in {seconds:.0} s; {rows_in_memory} rows in memory, {cold_chunks} chunks on disk only"
    );
    let mut draw = Rng::new(seed ^ 0x5EED);
    let old: Vec<u64> = (0..RETRIES)
        .map(|_| draw.below(early.len() as u64))
        .collect();
    let cold_retry_p99_ms = retry_p99_ms(&client, &ids, seed, &old, |i| early[i as usize]).await?;
    let recent_from = transfers.saturating_sub(1_000);
    let recent: Vec<u64> = (0..RETRIES)
        .map(|_| recent_from + draw.below(transfers - recent_from))
        .collect();
    let hot_retry_p99_ms = retry_p99_ms(&client, &ids, seed, &recent, |_| None).await?;
    eprintln!(
        "memory: retries p99: {cold_retry_p99_ms:.2} ms of early transfers (on disk), {hot_retry_p99_ms:.2} ms of recent ones (in memory)"
    );
    engine
        .shutdown()
        .await
        .map_err(|e| BenchError::Engine(e.to_string()))?;
    Ok(TransferMemoryReport {
        transfers,
        rss_after_setup_bytes,
        rss_bytes,
        bytes_per_transfer: rss_bytes.saturating_sub(rss_after_setup_bytes) as f64
            / transfers as f64,
        seconds,
        cold_retry_p99_ms,
        hot_retry_p99_ms,
        rows_in_memory,
        cold_chunks,
    })
}

/// Runs transfers `0..count` through [`CLIENTS`] concurrent clients, printing progress every
/// few seconds; returns the status each of the first [`EARLY_TRANSFERS`] got.
async fn run_transfers(
    client: &Client,
    ids: &Arc<[AccountId]>,
    count: u64,
    seed: u64,
) -> Result<Vec<Option<TransferStatus>>, BenchError> {
    let groups = count.div_ceil(GROUP);
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..CLIENTS {
        let (client, ids, done) = (client.clone(), Arc::clone(ids), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let mut early = Vec::new();
            for group in (task..groups).step_by(CLIENTS as usize) {
                let range = group * GROUP..((group + 1) * GROUP).min(count);
                let commands = range
                    .clone()
                    .map(|i| Command::Transfer(transfer(seed, i, &ids)));
                let answers = client.execute_many(commands, false).await;
                done.fetch_add(answers.len() as u64, Ordering::Relaxed);
                for (i, answer) in range.zip(answers) {
                    let status = match answer {
                        Ok(Ok(Reply::Transfer(status))) => status,
                        other => {
                            return Err(BenchError::Engine(format!("transfer {i}: {other:?}")))
                        }
                    };
                    if i < EARLY_TRANSFERS {
                        early.push((i, status));
                    }
                }
            }
            Ok(early)
        }));
    }
    let progress = tokio::spawn(progress(done, count));
    let mut early = vec![None; count.min(EARLY_TRANSFERS) as usize];
    for task in tasks {
        let found = task
            .await
            .map_err(|e| BenchError::Engine(format!("a client failed: {e}")))??;
        for (i, status) in found {
            early[i as usize] = Some(status);
        }
    }
    progress.abort();
    Ok(early)
}

/// Prints transfers done and resident memory every five seconds.
async fn progress(done: Arc<AtomicU64>, count: u64) {
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rss_mb = resident_bytes().map_or(0, |b| b >> 20);
        eprintln!(
            "  memory: {:.0} s, {} of {count} transfers answered, rss {rss_mb} MiB",
            started.elapsed().as_secs_f64(),
            done.load(Ordering::Relaxed)
        );
    }
}

/// Retries transfers `picks` one at a time; each must get `first(i)`'s status when known.
/// Returns the 99th percentile latency in milliseconds.
async fn retry_p99_ms(
    client: &Client,
    ids: &[AccountId],
    seed: u64,
    picks: &[u64],
    first: impl Fn(u64) -> Option<TransferStatus>,
) -> Result<f64, BenchError> {
    let mut latencies_us = Vec::with_capacity(picks.len());
    for &i in picks {
        let command = Command::Transfer(transfer(seed, i, ids));
        let sent = Instant::now();
        let answer = client.execute(command, false).await;
        latencies_us.push(sent.elapsed().as_micros() as u64);
        let status = match answer {
            Ok(Ok(Reply::Transfer(status))) => status,
            other => return Err(BenchError::Engine(format!("retry of {i}: {other:?}"))),
        };
        // A transfer across partitions may first have been answered `Pending` (the clients
        // do not wait for outcomes): its retry then answers how it ended.
        let first_final = first(i).filter(|first| *first != TransferStatus::Pending);
        if first_final.is_some_and(|first| first != status) {
            return Err(BenchError::Engine(format!(
                "the retry of transfer {i} got {status:?}, not its first answer {:?}",
                first(i)
            )));
        }
    }
    latencies_us.sort_unstable();
    let at = (latencies_us.len() * 99 / 100).min(latencies_us.len().saturating_sub(1));
    Ok(latencies_us.get(at).copied().unwrap_or(0) as f64 / 1000.0)
}

/// Transfer rows in memory and chunks on disk only, summed over the engine's partitions.
fn table_shape(engine: &walletd_runtime::engine::Engine) -> (usize, usize) {
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed) as usize;
    engine.stats().iter().fold((0, 0), |(rows, chunks), stats| {
        (
            rows + load(&stats.transfer_rows_in_memory),
            chunks + load(&stats.cold_transfer_chunks),
        )
    })
}

fn resident_bytes() -> Result<u64, BenchError> {
    crate::process::resident_bytes()
        .map_err(|e| BenchError::io("read VmRSS from /proc/self/status (Linux only)", e))
}
