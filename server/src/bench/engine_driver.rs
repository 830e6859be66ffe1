//! The in-process modes: the engine's partitions on real files (fsync on) in a temporary
//! directory, driven through [`walletd_runtime::engine::Client`] without HTTP (the clients of an
//! in-process cluster are driven the same way); and the resident memory an open account
//! costs.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use walletd_core::ledger::{Command, Reply, TransferStatus};
use walletd_core::model::event::Reason;
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::Amount;
use walletd_core::model::partition::{NodeId, PartitionId};

use walletd_runtime::driver::{CommandResult, DriverConfig, Query, QueryAnswer};
use walletd_runtime::engine::{Client, Engine, EngineConfig, Unavailable};

use super::measure::Syncs;
use super::report::{Live, MemoryReport, Phase, SharedTallies, Tally};
use super::workload::{account_name, Rng, Workload, CURRENCY, FUNDING_TRANSACTION_ID};
use super::{BenchError, Totals};
use crate::cli::GroupCommit;
use crate::storages::open_storages;

/// Commands handed to the engine at once while opening accounts.
const SETUP_CHUNK: usize = 8192;
/// Concurrent tasks opening accounts.
const SETUP_TASKS: u64 = 8;

/// Starts an engine of `partitions` partitions on file storage under `dir`.
pub async fn start_engine(
    dir: &Path,
    partitions: u32,
    snapshot_every_events: u64,
    group_commit: GroupCommit,
) -> Result<Engine, BenchError> {
    let all: Vec<PartitionId> = (0..partitions).collect();
    let storages = open_storages(
        dir,
        partitions,
        &all,
        |p| dir.join(format!("partition-{p}")),
        group_commit,
    )
    .map_err(|e| BenchError::Engine(e.to_string()))?
    .partitions
    .into_iter()
    .map(|(_, storage)| storage)
    .collect();
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

/// The ids of the workload's accounts.
pub fn account_ids(workload: &Workload) -> Arc<[AccountId]> {
    (0..workload.accounts)
        .map(|i| {
            let name = account_name(workload.account_index(i));
            AccountId::new(&name).expect("benchmark ids are valid")
        })
        .collect()
}

/// Log syncs of `engine`'s partitions so far, and the seconds they took.
pub fn syncs(engine: &Engine) -> Syncs {
    let stats = engine.stats();
    let count = stats.iter().map(|s| s.syncs.load(Ordering::Relaxed)).sum();
    let us: u64 = stats.iter().map(|s| s.sync_us.snapshot().sum).sum();
    (count, us as f64 / 1e6)
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
                for answer in client.execute_many(chunk.iter().cloned(), false).await {
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

/// Opens every account and funds it with `funding_minor`.
pub async fn open_accounts(
    client: &Client,
    accounts: &Arc<[AccountId]>,
    funding_minor: u64,
) -> Result<(), BenchError> {
    let funding = Amount::from_minor(funding_minor).expect("funding is a valid amount");
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

/// Where the clients hand over their transfers.
#[derive(Debug, Clone)]
pub enum Entry {
    /// The one engine of this process.
    Engine(Client),
    /// The node that owns the source account's partition (`owners[p]` owns `p`): the
    /// transfer starts where its Try runs, with no forwarding first.
    Home {
        nodes: Arc<[Client]>,
        owners: Arc<[NodeId]>,
    },
    /// A node drawn at random: a transfer whose source is elsewhere is forwarded there first.
    Any(Arc<[Client]>),
}

impl Entry {
    /// The client that takes a request whose first command is `first`.
    fn pick(&self, first: &Command, rng: &mut Rng) -> &Client {
        match self {
            Entry::Engine(client) => client,
            Entry::Home { nodes, owners } => {
                let Command::Transfer(transfer) = first else {
                    return &nodes[0];
                };
                let partition = nodes[0].partition_of(&transfer.from);
                &nodes[owners[partition as usize] as usize]
            }
            Entry::Any(nodes) => &nodes[rng.below(nodes.len() as u64) as usize],
        }
    }
}

/// The shape of one run's load.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub clients: u64,
    /// Transfers a client hands over at once: 1 is `Client::execute`, more
    /// `Client::execute_many`.
    pub batch: u64,
    pub seed: u64,
}

/// The clients of a run, busy until the phase is `Stopped`.
#[derive(Debug)]
pub struct Running {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    tallies: Arc<SharedTallies>,
}

impl Running {
    /// Waits for every client and merges what they measured.
    pub async fn finish(self) -> Result<Tally, BenchError> {
        for task in self.tasks {
            task.await
                .map_err(|e| BenchError::Engine(format!("client task failed: {e}")))?;
        }
        Ok(self.tallies.merged())
    }
}

/// Starts `load.clients` clients handing `load.batch` transfers at a time to `entry` until
/// the phase is `Stopped`.
pub fn run_transfers(
    entry: &Entry,
    workload: &Arc<Workload>,
    live: &Arc<Live>,
    load: Load,
) -> Running {
    let tallies = Arc::new(SharedTallies::new(load.clients));
    let tasks = (0..load.clients)
        .map(|c| {
            let (entry, workload, live) = (entry.clone(), Arc::clone(workload), Arc::clone(live));
            let tallies = Arc::clone(&tallies);
            tokio::spawn(async move {
                let mut rng = Rng::new(load.seed.wrapping_mul(1_000_003).wrapping_add(c));
                let mut commands = Vec::with_capacity(load.batch as usize);
                let (mut sequence, mut scratch) = (0u64, String::new());
                while live.phase() != Phase::Stopped {
                    commands.clear();
                    for _ in 0..load.batch {
                        let draw = workload.draw(&mut rng, c, sequence);
                        sequence += 1;
                        commands.push(Command::Transfer(workload.transfer(&draw, &mut scratch)));
                    }
                    let client = entry.pick(&commands[0], &mut rng);
                    let started = Instant::now();
                    let counted = hand_over(client, &commands).await;
                    let latency = started.elapsed();
                    live.transfers
                        .fetch_add(counted.answered, Ordering::Relaxed);
                    live.errors.fetch_add(counted.errors, Ordering::Relaxed);
                    if live.phase() == Phase::Measuring {
                        tallies.record(c, |tally| counted.record(tally, latency));
                    }
                }
            })
        })
        .collect();
    Running { tasks, tallies }
}

/// Hands `commands` to `client` in one request and counts the answers.
async fn hand_over(client: &Client, commands: &[Command]) -> Counted {
    let mut counted = Counted::default();
    if let [command] = commands {
        counted.add(client.execute(command.clone(), true).await);
    } else {
        for answer in client.execute_many(commands.iter().cloned(), true).await {
            counted.add(answer);
        }
    }
    counted
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

    /// Adds one request of the measured window to `tally`.
    fn record(&self, tally: &mut Tally, latency: std::time::Duration) {
        tally.record(latency);
        tally.transfers += self.answered;
        tally.rejected += self.rejected;
        tally.errors += self.errors;
        if let Some(error) = &self.error {
            tally.sample_error(error);
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
    let engine = start_engine(
        dir.path(),
        partitions,
        snapshot_every_events,
        GroupCommit::Node,
    )
    .await?;
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
