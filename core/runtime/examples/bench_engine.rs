//! Engine benchmark: partitions driven in-process on real files with fsync on.
//!
//! `cargo run --release -p walletd-runtime --example bench_engine -- [--seconds S] [--clients C]
//! [--accounts-per-partition K] [--partitions 1,2,8] [--batch B]`
//!
//! For every partition count, C concurrent clients send transfers between random funded
//! accounts for S seconds (after a one-second warm-up that is not counted), same-partition and
//! cross-partition (TC/C) separately. A transfer counts when its client has the durable final
//! answer (committed or rejected). With `--batch B`, each client hands B transfers at a time to
//! the engine (`Client::execute_many`, as the HTTP batch endpoint does). The last line is machine-readable:
//! `engine same_partition_tps=N cross_partition_tps=M partitions=P fsync=on`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use walletd_core::ledger::{Command, Reply, TransferStatus};
use walletd_core::model::event::Transfer;
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency};
use walletd_core::model::partition::partition_of;
use walletd_runtime::engine::{Client, Engine, EngineConfig};
use walletd_runtime::storage::file::{FileStorage, FileStorageConfig};

struct Options {
    seconds: u64,
    clients: usize,
    accounts_per_partition: usize,
    partitions: Vec<u32>,
    /// Transfers per client request (1: one at a time; more: `Client::execute_many`).
    batch: usize,
}

fn parse_options() -> Options {
    let mut options = Options {
        seconds: 5,
        clients: 4096,
        accounts_per_partition: 1000,
        partitions: vec![1, 2, 8],
        batch: 1,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--seconds" => options.seconds = value.parse().expect("--seconds N"),
            "--clients" => options.clients = value.parse().expect("--clients N"),
            "--accounts-per-partition" => {
                options.accounts_per_partition = value.parse().expect("--accounts-per-partition N")
            }
            "--batch" => options.batch = value.parse().expect("--batch N"),
            "--partitions" => {
                options.partitions = value
                    .split(',')
                    .map(|p| p.parse().expect("--partitions 1,2,8"))
                    .collect()
            }
            "--help" | "-h" => {
                println!(
                    "{}",
                    include_str!("bench_engine.rs")
                        .lines()
                        .take_while(|l| l.starts_with("//!"))
                        .map(|l| l.trim_start_matches("//!"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                std::process::exit(0);
            }
            other => panic!("unknown option {other}; try --help"),
        }
        i += 2;
    }
    options
}

/// A small deterministic generator; the benchmark needs speed, not quality.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Opens `per_partition` accounts on every partition, each funded generously.
async fn open_accounts(client: &Client, per_partition: usize) -> Arc<Vec<Vec<AccountId>>> {
    let partitions = client.partitions();
    let mut by_partition = vec![Vec::new(); partitions as usize];
    let mut n = 0u64;
    while by_partition
        .iter()
        .any(|accounts| accounts.len() < per_partition)
    {
        let account = AccountId::new(&format!("acct-{n}")).unwrap();
        n += 1;
        let list = &mut by_partition[partition_of(&account, partitions) as usize];
        if list.len() < per_partition {
            list.push(account);
        }
    }
    let mut tasks = Vec::new();
    for account in by_partition.iter().flatten().copied() {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .execute(
                    Command::OpenAccount {
                        account,
                        currency: Currency::USD,
                    },
                    false,
                )
                .await
                .unwrap()
                .unwrap();
            let amount = Amount::from_minor(100_000_000_000).unwrap();
            let deposit = Command::Deposit {
                account,
                amount,
                currency: Currency::USD,
                transaction_id: TransactionId::new("fund").unwrap(),
            };
            client.execute(deposit, false).await.unwrap().unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::new(by_partition)
}

struct RunResult {
    tps: f64,
    rejected: u64,
    syncs_per_s: f64,
}

async fn run(partitions: u32, cross: bool, options: &Options) -> RunResult {
    let dir = tempfile::tempdir().expect("temp dir");
    let storages: Vec<FileStorage> = (0..partitions)
        .map(|p| {
            FileStorage::open(
                dir.path().join(format!("p{p}")),
                FileStorageConfig::default(),
            )
            .unwrap()
        })
        .collect();
    let engine = Engine::start(
        storages,
        EngineConfig {
            partitions,
            ..EngineConfig::default()
        },
    )
    .await
    .unwrap();
    let client = engine.client();
    let accounts = open_accounts(&client, options.accounts_per_partition).await;
    let done = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let options_batch = options.batch;
    for c in 0..options.clients {
        let (client, accounts, done, rejected, stop) = (
            client.clone(),
            accounts.clone(),
            done.clone(),
            rejected.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (c as u64 + 1));
            let mut seq = 0u64;
            let batch = options_batch;
            let mut commands = Vec::with_capacity(batch);
            while !stop.load(Ordering::Relaxed) {
                commands.clear();
                while commands.len() < batch {
                    let p = rng.below(partitions as usize);
                    let q = if cross {
                        (p + 1 + rng.below(partitions as usize - 1)) % partitions as usize
                    } else {
                        p
                    };
                    let (from, to) = (
                        accounts[p][rng.below(accounts[p].len())],
                        accounts[q][rng.below(accounts[q].len())],
                    );
                    if from == to {
                        continue;
                    }
                    seq += 1;
                    commands.push(Command::Transfer(Transfer {
                        transaction_id: TransactionId::new(&format!("c{c}-{seq}")).unwrap(),
                        from,
                        to,
                        amount: Amount::from_minor(1 + rng.below(10_000) as u64).unwrap(),
                        currency: Currency::USD,
                    }));
                }
                let answers = if batch == 1 {
                    vec![client.execute(commands[0], true).await]
                } else {
                    client.execute_many(commands.iter().copied(), true).await
                };
                for answer in answers {
                    match answer {
                        Ok(Ok(Reply::Transfer(TransferStatus::Committed))) => {}
                        Ok(Ok(Reply::Transfer(
                            TransferStatus::Rejected(_) | TransferStatus::Cancelled(_),
                        ))) => {
                            rejected.fetch_add(1, Ordering::Relaxed);
                        }
                        other => panic!("unexpected answer {other:?}"),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let syncs = |engine: &Engine| {
        engine
            .stats()
            .iter()
            .map(|s| s.syncs.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let (start, start_done, start_syncs) =
        (Instant::now(), done.load(Ordering::Relaxed), syncs(&engine));
    for second in 1..=options.seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rate =
            (done.load(Ordering::Relaxed) - start_done) as f64 / start.elapsed().as_secs_f64();
        eprint!(
            "\r  partitions={partitions} cross={cross} {second}/{}s  {rate:>12.0} transfers/s   ",
            options.seconds
        );
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (end_done, end_syncs) = (done.load(Ordering::Relaxed), syncs(&engine));
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    eprintln!();
    engine.shutdown().await.unwrap();
    RunResult {
        tps: (end_done - start_done) as f64 / elapsed,
        rejected: rejected.load(Ordering::Relaxed),
        syncs_per_s: (end_syncs - start_syncs) as f64 / elapsed,
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let options = parse_options();
    println!(
        "engine benchmark: fsync on, {} clients x {} transfers per request, {} accounts per partition, {}s per run after 1s warm-up",
        options.clients, options.batch, options.accounts_per_partition, options.seconds
    );
    println!(
        "{:>10} {:>16} {:>14} {:>10} {:>12}",
        "partitions", "kind", "transfers/s", "rejected", "fsyncs/s"
    );
    let mut best: Option<(u32, f64, f64)> = None;
    for &partitions in &options.partitions {
        let same = run(partitions, false, &options).await;
        println!(
            "{partitions:>10} {:>16} {:>14.0} {:>10} {:>12.0}",
            "same_partition", same.tps, same.rejected, same.syncs_per_s
        );
        let cross = if partitions > 1 {
            let cross = run(partitions, true, &options).await;
            println!(
                "{partitions:>10} {:>16} {:>14.0} {:>10} {:>12.0}",
                "cross_partition", cross.tps, cross.rejected, cross.syncs_per_s
            );
            cross.tps
        } else {
            0.0
        };
        if best.is_none_or(|(_, s, c)| same.tps + cross > s + c) {
            best = Some((partitions, same.tps, cross));
        }
    }
    let (partitions, same, cross) = best.expect("at least one partition count");
    println!("engine same_partition_tps={same:.0} cross_partition_tps={cross:.0} partitions={partitions} fsync=on");
}
