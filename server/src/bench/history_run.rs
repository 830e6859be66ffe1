//! `wallet bench history`: history pages and `as_of` balances on a small log and on one
//! `--history-factor` times larger, to show that their cost follows what they return, not
//! the log.
//!
//! Each log is one partition written by the file storage itself (segments, headers, sync
//! marks, fsync per batch of records): accounts opened, then deposits, transfers within the
//! partition and cross-partition holds that are confirmed or cancelled, among
//! `--history-accounts` accounts, so every account's history grows with the log. The index
//! is then built (timed; chunks of `--history-chunk-records`, smaller than a server's so
//! that both logs are read mostly from chunk files), and `--history-queries` reads alternate between a page of 50
//! movements (the newest page, or one at a random cursor) and a balance as of a random lsn or
//! time, each of a random account, timed one by one. With `--history-scan` the same reads
//! are also timed the way they were answered before the index: a fold of the partition's
//! whole log per read (fewer of them: each costs the log). The last line:
//! `history small_log_events=A large_log_events=B small_p99_ms=X large_p99_ms=Y`.

use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use walletd_core::log::codec::{encode_record, Record};
use walletd_core::log::replay::{self, AsOf};
use walletd_core::model::event::{Event, Lsn, Transfer};
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency};
use walletd_runtime::storage::file::{FileStorage, FileStorageConfig};
use walletd_runtime::storage::Storage as _;

use super::{BenchArgs, BenchError};
use crate::datadir::DataDir;
use crate::history::index::{IndexConfig, PartitionIndex};
use crate::history::{account_filter, read_partition_log};

/// Records appended and synced at once while a log is written.
const WRITE_BATCH_RECORDS: usize = 4096;
/// Movements per page read.
const PAGE_LIMIT: usize = 50;
/// Scans of the whole log timed per log with `--history-scan` (each reads all of it).
const SCAN_READS: usize = 40;

/// What one log gave.
#[derive(Debug, Clone, Copy)]
pub struct LogResult {
    pub events: u64,
    pub p50_ms: f64,
    pub index_seconds: f64,
    pub page_p99_ms: f64,
    pub as_of_p99_ms: f64,
    pub p99_ms: f64,
}

/// Runs the benchmark; prints progress on stderr and the results on stdout.
pub async fn run(args: &BenchArgs) -> Result<(), BenchError> {
    let small = args.history_small_events;
    let large = small * args.history_factor;
    let tmp = tempfile::tempdir().map_err(|e| BenchError::io("create a temporary directory", e))?;
    let mut results = Vec::new();
    for (name, events) in [("small", small), ("large", large)] {
        let root = tmp.path().join(name);
        eprintln!(
            "history: writing a {name} log of {events} events ({} accounts)",
            args.history_accounts
        );
        let dir = write_log(&root, events, args.history_accounts, args.seed).await?;
        let result = measure(&dir, events, args).await?;
        println!(
            "history {name}: {events} events, index built in {:.2} s; p50 {:.3} ms, p99 {:.3} ms (pages {:.3}, as_of {:.3})",
            result.index_seconds, result.p50_ms, result.p99_ms, result.page_p99_ms, result.as_of_p99_ms
        );
        if args.history_scan {
            let scan = measure_scan(&dir, events, args).await?;
            println!(
                "history {name} (whole-log scan per read, as before the index): p99 {scan:.3} ms"
            );
        }
        results.push(result);
        std::fs::remove_dir_all(&root).map_err(|e| BenchError::io("remove a log", e))?;
    }
    let (small, large) = (results[0], results[1]);
    println!(
        "history small_log_events={} large_log_events={} small_p99_ms={:.3} large_p99_ms={:.3}",
        small.events, large.events, small.p99_ms, large.p99_ms
    );
    Ok(())
}

fn account(i: u64) -> AccountId {
    AccountId::new(&format!("acct-{i}")).expect("a valid id")
}

/// A small generator of the benchmark's draws (the same log for the same seed).
struct Draw(u64);

impl Draw {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// The `n`-th record of a log over `accounts` accounts: openings first, then a mix that
/// keeps every balance funded (deposits are large, moves small).
fn event(n: u64, accounts: u64, draw: &mut Draw, holds: &mut Vec<Transfer>) -> Event {
    if n < accounts {
        return Event::AccountOpened {
            account: account(n),
            currency: Currency::USD,
        };
    }
    let id = TransactionId::new(&format!("t{n}")).expect("a valid id");
    let amount = |minor| Amount::from_minor(minor).expect("a valid amount");
    let from = account(draw.next(accounts));
    match draw.next(10) {
        0..=1 => Event::Deposited {
            account: from,
            amount: amount(100_000),
            transaction_id: id,
        },
        2..=6 => {
            let to = account((draw.next(accounts - 1) + 1 + from_index(&from)) % accounts);
            Event::Transferred {
                transfer: Transfer {
                    transaction_id: id,
                    from,
                    to,
                    amount: amount(1 + draw.next(99)),
                    currency: Currency::USD,
                },
            }
        }
        // Holds settle as fast as they start, so that few are in flight at any time, as in
        // a partition whose peers answer.
        7..=8 if !holds.is_empty() => {
            let transfer = holds.swap_remove(draw.next(holds.len() as u64) as usize);
            match draw.next(4) {
                0 => Event::DebitCancelled {
                    key: transfer.key(),
                },
                _ => Event::DebitConfirmed {
                    key: transfer.key(),
                },
            }
        }
        _ => {
            let transfer = Transfer {
                transaction_id: id,
                from,
                to: AccountId::new("elsewhere").expect("a valid id"),
                amount: amount(1 + draw.next(99)),
                currency: Currency::USD,
            };
            holds.push(transfer);
            Event::DebitTried { transfer }
        }
    }
}

fn from_index(account: &AccountId) -> u64 {
    account.as_str()["acct-".len()..]
        .parse()
        .expect("a bench account")
}

/// Writes a log of `events` records into partition 0 of a new data directory at `root`.
async fn write_log(
    root: &Path,
    events: u64,
    accounts: u64,
    seed: u64,
) -> Result<DataDir, BenchError> {
    assert!(accounts >= 2 && events > accounts);
    let dir = DataDir::create_or_check(root, 1)
        .map_err(|e| BenchError::Usage(format!("data directory: {e}")))?;
    let mut storage = FileStorage::open(dir.partition_dir(0), FileStorageConfig::default())
        .map_err(|e| BenchError::io("open the log", e))?;
    storage
        .list_log(0)
        .await
        .map_err(|e| BenchError::io("list the log", e))?;
    let (mut draw, mut holds) = (Draw(seed), Vec::new());
    let started = Instant::now();
    let mut bytes = Vec::new();
    let mut first = 1;
    for n in 0..events {
        let record = Record {
            lsn: n + 1,
            timestamp: 1_700_000_000_000_000 + n * 10,
            event: event(n, accounts, &mut draw, &mut holds),
        };
        encode_record(&record, &mut bytes);
        if (n + 1) % WRITE_BATCH_RECORDS as u64 == 0 || n + 1 == events {
            storage
                .append(first, &bytes)
                .await
                .map_err(|e| BenchError::io("append", e))?;
            storage
                .sync()
                .await
                .map_err(|e| BenchError::io("sync", e))?;
            bytes.clear();
            first = n + 2;
        }
        if (n + 1) % 1_000_000 == 0 {
            eprintln!("history:   {} events written", n + 1);
        }
    }
    eprintln!(
        "history:   written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(storage);
    Ok(dir)
}

/// One read of the benchmark: a page of an account's history at a cursor, or its balance
/// as of a point.
#[derive(Debug, Clone, Copy)]
enum Read {
    Page(AccountId, Lsn),
    AsOf(AccountId, AsOf),
}

fn reads(count: usize, events: u64, accounts: u64, seed: u64) -> Vec<Read> {
    let mut draw = Draw(seed ^ 0x9e37_79b9);
    (0..count)
        .map(|i| {
            let who = account(draw.next(accounts));
            let lsn = accounts + 1 + draw.next(events - accounts);
            match (i % 2, draw.next(2)) {
                (0, 0) => Read::Page(who, Lsn::MAX),
                (0, _) => Read::Page(who, lsn),
                (_, 0) => Read::AsOf(who, AsOf::Lsn(lsn)),
                (_, _) => Read::AsOf(who, AsOf::Time(1_700_000_000_000_000 + lsn * 10)),
            }
        })
        .collect()
}

/// Builds the index of the log in `dir`, then times the reads on it.
async fn measure(dir: &DataDir, events: u64, args: &BenchArgs) -> Result<LogResult, BenchError> {
    let dir = std::sync::Arc::new(dir.clone());
    let reads = reads(
        args.history_queries as usize,
        events,
        args.history_accounts,
        args.seed,
    );
    let config = IndexConfig {
        chunk_records_max: args.history_chunk_records,
        ..IndexConfig::default()
    };
    let engine = |e: crate::history::LogError| BenchError::Engine(e.to_string());
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut index = PartitionIndex::open(dir, 0, config).map_err(engine)?;
        index.catch_up(events).map_err(engine)?;
        let index_seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "history:   index built in {index_seconds:.2} s ({} chunk files); {} reads",
            index.chunks_written(),
            reads.len()
        );
        let (mut pages, mut as_of, mut all) = (histogram(), histogram(), histogram());
        for read in &reads {
            let started = Instant::now();
            let found = match *read {
                Read::Page(who, before) => {
                    index.page(&who, before, PAGE_LIMIT).map(|p| p.is_some())
                }
                Read::AsOf(who, point) => index.balance(&who, point).map(|b| b.is_some()),
            };
            let indexed = index.indexed_lsn();
            assert!(
                found.map_err(engine)?,
                "{read:?} finds its account (indexed to {indexed})"
            );
            let us = started.elapsed().as_micros() as u64;
            let kind = if matches!(read, Read::Page(..)) {
                &mut pages
            } else {
                &mut as_of
            };
            record(kind, us);
            record(&mut all, us);
        }
        Ok(LogResult {
            events,
            index_seconds,
            page_p99_ms: p99_ms(&pages),
            as_of_p99_ms: p99_ms(&as_of),
            p99_ms: p99_ms(&all),
            p50_ms: all.value_at_quantile(0.5) as f64 / 1000.0,
        })
    })
    .await
    .map_err(|e| BenchError::Engine(e.to_string()))?
}

/// Times [`SCAN_READS`] reads answered by folding the whole log, as before the index.
async fn measure_scan(dir: &DataDir, events: u64, args: &BenchArgs) -> Result<f64, BenchError> {
    let dir = dir.clone();
    let reads = reads(SCAN_READS, events, args.history_accounts, args.seed);
    tokio::task::spawn_blocking(move || {
        let mut all = histogram();
        for read in &reads {
            let started = Instant::now();
            let (who, as_of) = match *read {
                Read::Page(who, _) => (who, AsOf::End),
                Read::AsOf(who, point) => (who, point),
            };
            let mut keep = account_filter(who);
            let log = read_partition_log(&dir, 0, Some(events), as_of, &mut keep, &mut |_| {})
                .map_err(|e| BenchError::Engine(e.to_string()))?;
            // A page folds the account's movements; a balance, its figures.
            if let Read::Page(..) = read {
                std::hint::black_box(replay::movements(&log.records, &who));
            }
            let found = replay::balance_as_of(&log.records, &who, AsOf::End).is_some();
            assert!(found, "{read:?} finds its account by a scan");
            record(&mut all, started.elapsed().as_micros() as u64);
        }
        Ok(p99_ms(&all))
    })
    .await
    .map_err(|e| BenchError::Engine(e.to_string()))?
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, Duration::from_secs(600).as_micros() as u64, 3)
        .expect("valid bounds")
}

fn record(histogram: &mut Histogram<u64>, us: u64) {
    histogram.saturating_record(us.max(1));
}

fn p99_ms(histogram: &Histogram<u64>) -> f64 {
    histogram.value_at_quantile(0.99) as f64 / 1000.0
}
