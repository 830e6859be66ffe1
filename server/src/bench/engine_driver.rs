//! The in-process modes: the engine's partitions on real files (fsync on) in a temporary
//! directory, driven through [`walletd_runtime::engine::Client`] without HTTP; and the
//! resident memory an open account costs.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use walletd_core::ledger::{Command, Reply, TransferStatus};
use walletd_core::model::event::Reason;
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::Amount;
use walletd_runtime::driver::{CommandResult, DriverConfig, Query, QueryAnswer};
use walletd_runtime::engine::{Client, Engine, EngineConfig, Unavailable};
use walletd_runtime::storage::file::{FileStorage, FileStorageConfig};

use super::report::{Live, MemoryReport, Phase, Tally};
use super::workload::{
    account_name, Rng, Workload, CURRENCY, FUNDING_MINOR, FUNDING_TRANSACTION_ID,
};
use super::{BenchError, Totals};

/// Commands handed to the engine at once while opening accounts.
const SETUP_CHUNK: usize = 8192;
/// Concurrent tasks opening accounts.
const SETUP_TASKS: u64 = 8;

/// Starts an engine of `partitions` partitions on file storage under `dir`.
pub async fn start_engine(
    dir: &Path,
    partitions: u32,
    snapshot_every_events: u64,
) -> Result<Engine, BenchError> {
    let mut storages = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions {
        let path = dir.join(format!("partition-{partition}"));
        let storage = FileStorage::open(&path, FileStorageConfig::default())
            .map_err(|e| BenchError::io(format!("open {}", path.display()), e))?;
        storages.push(storage);
    }
    let config = EngineConfig {
        partitions,
        driver: DriverConfig {
            snapshot_every_events,
            ..DriverConfig::default()
        },
        ..EngineConfig::default()
    };
    Engine::start(storages, config)
        .await
        .map_err(|e| BenchError::Engine(e.to_string()))
}

/// The ids of the workload's accounts, by index.
pub fn account_ids(count: u64) -> Arc<[AccountId]> {
    (0..count)
        .map(|i| AccountId::new(&account_name(i)).expect("benchmark ids are valid"))
        .collect()
}

/// Runs `commands(i)` for every `i` in `0..count` through `SETUP_TASKS` concurrent tasks,
/// `SETUP_CHUNK` at a time, and fails on the first refusal.
async fn execute_all(
    client: &Client,
    count: u64,
    commands: impl Fn(u64) -> Vec<Command> + Send + Sync + 'static,
) -> Result<(), BenchError> {
    let commands = Arc::new(commands);
    let mut tasks = Vec::new();
    for task in 0..SETUP_TASKS {
        let (client, commands) = (client.clone(), Arc::clone(&commands));
        tasks.push(tokio::spawn(async move {
            let mut chunk = Vec::with_capacity(SETUP_CHUNK);
            let mut index = task;
            while index < count {
                chunk.clear();
                while chunk.len() < SETUP_CHUNK && index < count {
                    chunk.extend(commands(index));
                    index += SETUP_TASKS;
                }
                for answer in client.execute_many(chunk.iter().copied(), false).await {
                    match answer {
                        Ok(Ok(_)) => {}
                        Ok(Err(refused)) => return Err(BenchError::Engine(refused.to_string())),
                        Err(unavailable) => {
                            return Err(BenchError::Engine(unavailable.to_string()))
                        }
                    }
                }
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| BenchError::Engine(format!("setup task failed: {e}")))??;
    }
    Ok(())
}

/// Opens and funds every account of the workload.
pub async fn open_accounts(client: &Client, accounts: &Arc<[AccountId]>) -> Result<(), BenchError> {
    let funding = Amount::from_minor(FUNDING_MINOR).expect("funding is a valid amount");
    let funding_id = TransactionId::new(FUNDING_TRANSACTION_ID).expect("valid id");
    let ids = Arc::clone(accounts);
    execute_all(client, accounts.len() as u64, move |i| {
        let account = ids[i as usize];
        vec![
            Command::OpenAccount {
                account,
                currency: CURRENCY,
            },
            Command::Deposit {
                account,
                amount: funding,
                currency: CURRENCY,
                transaction_id: funding_id,
            },
        ]
    })
    .await
}

/// The sums of every account's figures, asked of the partitions.
pub async fn sum_balances(client: &Client, accounts: &[AccountId]) -> Result<Totals, BenchError> {
    let mut totals = Totals::default();
    for account in accounts {
        let partition = client.partition_of(account);
        match client.query(partition, Query::Account(*account)).await {
            Ok(QueryAnswer::Account(Some(found))) => {
                totals.balance += u128::from(found.balance);
                totals.held += u128::from(found.held);
                totals.incoming += u128::from(found.incoming);
            }
            other => {
                return Err(BenchError::Engine(format!(
                    "account {account} cannot be read: {other:?}"
                )))
            }
        }
    }
    Ok(totals)
}

/// Starts `clients` clients handing `batch` transfers at a time to the engine until the
/// phase is `Stopped`.
pub fn run_transfers(
    client: &Client,
    workload: &Arc<Workload>,
    live: &Arc<Live>,
    clients: u64,
    batch: u64,
    seed: u64,
) -> Vec<tokio::task::JoinHandle<Tally>> {
    (0..clients)
        .map(|c| {
            let (client, workload, live) = (client.clone(), Arc::clone(workload), Arc::clone(live));
            tokio::spawn(async move {
                let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(c));
                let mut tally = Tally::new();
                let mut commands = Vec::with_capacity(batch as usize);
                let (mut sequence, mut scratch) = (0u64, String::new());
                while live.phase() != Phase::Stopped {
                    commands.clear();
                    for _ in 0..batch {
                        let draw = workload.draw(&mut rng, c, sequence);
                        sequence += 1;
                        commands.push(Command::Transfer(workload.transfer(&draw, &mut scratch)));
                    }
                    let started = Instant::now();
                    let mut counted = Counted::default();
                    if batch == 1 {
                        counted.add(client.execute(commands[0], true).await);
                    } else {
                        for answer in client.execute_many(commands.iter().copied(), true).await {
                            counted.add(answer);
                        }
                    }
                    let latency = started.elapsed();
                    live.transfers
                        .fetch_add(counted.answered, Ordering::Relaxed);
                    live.errors.fetch_add(counted.errors, Ordering::Relaxed);
                    if live.phase() == Phase::Measuring {
                        tally.record(latency);
                        tally.transfers += counted.answered;
                        tally.rejected += counted.rejected;
                        tally.errors += counted.errors;
                        if let Some(error) = &counted.error {
                            tally.sample_error(error);
                        }
                    }
                }
                tally
            })
        })
        .collect()
}

/// The answers to one hand-over of transfers, counted.
#[derive(Debug, Default)]
struct Counted {
    /// Committed or rejected for insufficient funds: what the workload expects.
    answered: u64,
    rejected: u64,
    errors: u64,
    /// What the first error was.
    error: Option<String>,
}

impl Counted {
    fn add(&mut self, answer: Result<CommandResult, Unavailable>) {
        match answer {
            Ok(Ok(Reply::Transfer(TransferStatus::Committed))) => self.answered += 1,
            Ok(Ok(Reply::Transfer(TransferStatus::Rejected(Reason::InsufficientFunds)))) => {
                self.answered += 1;
                self.rejected += 1;
            }
            other => {
                self.errors += 1;
                if self.error.is_none() {
                    self.error = Some(format!("{other:?}"));
                }
            }
        }
    }
}

/// Resident set size of this process in bytes.
fn resident_bytes() -> Result<u64, BenchError> {
    crate::process::resident_bytes()
        .map_err(|e| BenchError::io("read VmRSS from /proc/self/status (Linux only)", e))
}

/// Opens `count` accounts (no deposits) in a fresh engine and reports the growth of the
/// resident set per account.
pub async fn measure_memory(
    count: u64,
    partitions: u32,
    snapshot_every_events: u64,
) -> Result<MemoryReport, BenchError> {
    let dir = tempfile::Builder::new()
        .prefix("walletd-bench-memory-")
        .tempdir()
        .map_err(|e| BenchError::io("create a temporary directory", e))?;
    let rss_before_bytes = resident_bytes()?;
    let engine = start_engine(dir.path(), partitions, snapshot_every_events).await?;
    let started = Instant::now();
    let progress = tokio::spawn({
        let stats = engine.stats().to_vec();
        async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let events: u64 = stats.iter().map(|s| s.events.load(Ordering::Relaxed)).sum();
                eprint!("\r  memory: {events} of {count} accounts opened   ");
            }
        }
    });
    let opened = execute_all(&engine.client(), count, |i| {
        let mut name = String::with_capacity(24);
        name.push_str("m-");
        name.push_str(&i.to_string());
        vec![Command::OpenAccount {
            account: AccountId::new(&name).expect("valid id"),
            currency: CURRENCY,
        }]
    })
    .await;
    progress.abort();
    eprintln!();
    opened?;
    let seconds_to_open = started.elapsed().as_secs_f64();
    let rss_after_bytes = resident_bytes()?;
    engine
        .shutdown()
        .await
        .map_err(|e| BenchError::Engine(e.to_string()))?;
    Ok(MemoryReport {
        accounts: count,
        partitions,
        rss_before_bytes,
        rss_after_bytes,
        bytes_per_account: rss_after_bytes.saturating_sub(rss_before_bytes) as f64 / count as f64,
        seconds_to_open,
    })
}
