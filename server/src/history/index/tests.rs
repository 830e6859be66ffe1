//! The index against the fold it replaces: on recorded fixtures and on generated logs with
//! every kind of movement, across chunks and segments, after reopening, with chunk files
//! damaged, deleted or left half-written.

use std::collections::BTreeSet;
use std::path::Path;

use walletd_core::log::codec::{decode_log, encode_record, encode_sync_mark};
use walletd_core::log::replay::{balance_as_of, movements};
use walletd_core::model::event::{Transfer, TransferKey};
use walletd_core::model::ids::TransactionId;
use walletd_core::model::money::Amount;

use super::fold::EntryKind;
use super::*;
use walletd_core::log::replay::AsOf;

fn account(name: &str) -> AccountId {
    AccountId::new(name).unwrap()
}

/// A log of one partition with every kind of record the index folds: accounts `a0..a7` here,
/// `f0..f2` on other partitions, deposits, withdrawals, transfers here, holds confirmed and
/// cancelled, pending credits confirmed and cancelled, refusals; timestamps that mostly
/// grow and sometimes step back.
fn generated_log(records_max: usize, seed: u64) -> Vec<Record> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut draw = move |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let locals: Vec<AccountId> = (0..8).map(|i| account(&format!("a{i}"))).collect();
    let foreign: Vec<AccountId> = (0..3).map(|i| account(&format!("f{i}"))).collect();
    let mut events = Vec::new();
    for a in &locals {
        events.push(Event::AccountOpened {
            account: *a,
            currency: Currency::USD,
        });
    }
    let (mut holds, mut credits): (Vec<TransferKey>, Vec<TransferKey>) = (vec![], vec![]);
    // Balances, so that no record overdraws (replay's fold asserts a clean log), and the
    // amounts of transfers in flight.
    let mut balances = std::collections::BTreeMap::<AccountId, u64>::new();
    let mut amounts = std::collections::BTreeMap::<TransferKey, u64>::new();
    let mut destinations = std::collections::BTreeMap::<TransferKey, AccountId>::new();
    let mut n = 0;
    while events.len() < records_max {
        n += 1;
        let id = TransactionId::new(&format!("t{n}")).unwrap();
        let amount = Amount::from_minor(1 + draw(500)).unwrap();
        let a = locals[draw(8) as usize];
        let b = locals[draw(8) as usize];
        let funded = balances.get(&a).copied().unwrap_or(0) >= amount.minor();
        let f = foreign[draw(3) as usize];
        let transfer = |from, to| Transfer {
            transaction_id: id,
            from,
            to,
            amount,
            currency: Currency::USD,
        };
        let mut add = |account: AccountId, change: i128| {
            let balance = balances.entry(account).or_insert(0);
            *balance = (i128::from(*balance) + change) as u64;
        };
        let minor = i128::from(amount.minor());
        events.push(match draw(10) {
            0..=2 => {
                add(a, minor);
                Event::Deposited {
                    account: a,
                    amount,
                    transaction_id: id,
                }
            }
            3 if funded => {
                add(a, -minor);
                Event::Withdrawn {
                    account: a,
                    amount,
                    transaction_id: id,
                }
            }
            4 if a != b && funded => {
                add(a, -minor);
                add(b, minor);
                Event::Transferred {
                    transfer: transfer(a, b),
                }
            }
            5 if funded => {
                add(a, -minor);
                holds.push(transfer(a, f).key());
                amounts.insert(transfer(a, f).key(), amount.minor());
                Event::DebitTried {
                    transfer: transfer(a, f),
                }
            }
            6 if !holds.is_empty() => {
                let key = holds.swap_remove(draw(holds.len() as u64) as usize);
                if draw(3) == 0 {
                    add(key.from, i128::from(amounts[&key]));
                    Event::DebitCancelled { key }
                } else {
                    Event::DebitConfirmed { key }
                }
            }
            7 => {
                credits.push(transfer(f, a).key());
                amounts.insert(transfer(f, a).key(), amount.minor());
                destinations.insert(transfer(f, a).key(), a);
                Event::CreditTried {
                    transfer: transfer(f, a),
                }
            }
            8 if !credits.is_empty() => {
                let key = credits.swap_remove(draw(credits.len() as u64) as usize);
                if draw(3) == 0 {
                    Event::CreditCancelled { key }
                } else {
                    add(destinations[&key], i128::from(amounts[&key]));
                    Event::CreditConfirmed { key }
                }
            }
            _ => Event::TransferRejected {
                transfer: transfer(a, f),
                reason: walletd_core::model::event::Reason::InsufficientFunds,
            },
        });
    }
    let mut timestamp = 1_000_000u64;
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| {
            // Mostly forward; one record in 16 stamped a little earlier (a clock stepped back).
            timestamp = match draw(16) {
                0 => timestamp.saturating_sub(draw(3000)),
                _ => timestamp + draw(2000),
            };
            Record {
                lsn: i as u64 + 1,
                timestamp,
                event,
            }
        })
        .collect()
}

fn fixture(name: &str) -> Vec<Record> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name);
    decode_log(&fs::read(path).unwrap(), 1).unwrap().records
}

/// Writes `records` as headed segments of about `segment_records` records, with a sync mark
/// after every third record, as the segment writer leaves them.
fn write_log(dir: &DataDir, partition: PartitionId, records: &[Record], segment_records: usize) {
    let partition_dir = dir.partition_dir(partition);
    fs::create_dir_all(&partition_dir).unwrap();
    for segment in records.chunks(segment_records) {
        let first = segment[0].lsn;
        let mut bytes = Vec::new();
        encode_sync_mark(0, first, &mut bytes);
        for record in segment {
            encode_record(record, &mut bytes);
            if record.lsn % 3 == 0 {
                let synced = bytes.len() as u64;
                encode_sync_mark(synced, first, &mut bytes);
            }
        }
        // Preallocated zeros after the last frame, as a live segment has.
        bytes.resize(bytes.len() + 100, 0);
        fs::write(partition_dir.join(format!("log-{first:020}.seg")), bytes).unwrap();
    }
}

fn accounts_of(records: &[Record]) -> BTreeSet<AccountId> {
    records
        .iter()
        .filter_map(|r| match r.event {
            Event::AccountOpened { account, .. } => Some(account),
            _ => None,
        })
        .collect()
}

/// Every page of every account, and its balance at every lsn and at some times, as the
/// index answers them, equal to what the fold of `records` up to `upto` answers.
fn check_against_replay(index: &PartitionIndex, records: &[Record], upto: Lsn) {
    let records: Vec<Record> = records.iter().filter(|r| r.lsn <= upto).cloned().collect();
    assert_eq!(index.indexed_lsn(), upto);
    let mut accounts = accounts_of(&records);
    accounts.insert(account("nobody"));
    for account in &accounts {
        let expected: Vec<Movement> = movements(&records, account).into_iter().rev().collect();
        for limit in [1, 3, 50] {
            let (mut before, mut read) = (Lsn::MAX, Vec::new());
            loop {
                let Some(page) = index.page(account, before, limit).unwrap() else {
                    assert!(balance_as_of(&records, account, AsOf::End).is_none());
                    break;
                };
                assert!(page.movements.len() <= limit);
                assert_eq!(page.lsn, upto);
                read.extend(page.movements.iter().copied());
                match (page.more, page.movements.last()) {
                    (true, Some(last)) => before = last.lsn,
                    (false, _) => break,
                    (true, None) => panic!("more, but an empty page"),
                }
            }
            if accounts_of(&records).contains(account) {
                assert_eq!(read, expected, "{account} limit {limit}");
            }
        }
        // A page from any cursor, before the account opened included (an empty page).
        if accounts_of(&records).contains(account) {
            for before in (0..=upto + 2).step_by(5) {
                let page = index.page(account, before, 4).unwrap().expect("it exists");
                let older: Vec<Movement> = expected
                    .iter()
                    .filter(|m| m.lsn < before)
                    .copied()
                    .collect();
                let shown = older.len().min(4);
                assert_eq!(page.movements, older[..shown], "{account} before {before}");
                assert_eq!(page.more, older.len() > 4, "{account} before {before}");
            }
        }
        for lsn in (0..=upto + 2).step_by(7).chain([upto]) {
            let got = index.balance(account, AsOf::Lsn(lsn)).unwrap();
            let want = balance_as_of(&records, account, AsOf::Lsn(lsn));
            assert_eq!(got.map(|p| p.balance), want, "{account} at lsn {lsn}");
        }
    }
    let times: Vec<u64> = records.iter().step_by(5).map(|r| r.timestamp).collect();
    for time in times.into_iter().chain([0, u64::MAX]) {
        for account in &accounts {
            let got = index.balance(account, AsOf::Time(time)).unwrap();
            let want = balance_as_of(&records, account, AsOf::Time(time));
            assert_eq!(got.map(|p| p.balance), want, "{account} at time {time}");
            if let Some(point) = got {
                let cut = records.iter().find(|r| r.lsn == point.balance.lsn);
                assert_eq!(point.timestamp, cut.map_or(0, |r| r.timestamp));
            }
        }
    }
}

/// Chunks of 37 records, segments read 700 bytes at a time (frames cut at window ends).
fn small_chunks() -> IndexConfig {
    IndexConfig {
        chunk_records_max: 37,
        chunk_entries_max: 1 << 19,
        read_window_bytes: 700,
    }
}

fn open(dir: &DataDir, config: IndexConfig) -> PartitionIndex {
    PartitionIndex::open(Arc::new(dir.clone()), 1, config).unwrap()
}

fn chunk_files(dir: &DataDir) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.partition_dir(1).join(INDEX_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn answers_what_the_fold_of_the_whole_log_answers_on_the_fixtures() {
    // A multi-leg transaction's records are folded for the accounts of their own partition:
    // that fixture's log is kept where it was recorded, partition 7 of 8.
    for (name, partitions, partition) in [
        ("plain_day.log", 2, 1),
        ("tcc_cancels.log", 2, 1),
        ("refunds.log", 2, 1),
        ("holds.log", 2, 1),
        ("transactions.log", 8, 7),
    ] {
        let records = fixture(name);
        for config in [IndexConfig::default(), small_chunks()] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = DataDir::create_or_check(tmp.path(), partitions).unwrap();
            write_log(&dir, partition, &records, 10);
            let mut index = PartitionIndex::open(Arc::new(dir.clone()), partition, config).unwrap();
            let last = records.last().unwrap().lsn;
            index.catch_up(last).unwrap();
            check_against_replay(&index, &records, last);
        }
    }
}

#[test]
fn answers_what_the_fold_answers_across_chunks_segments_and_durable_points() {
    let records = generated_log(600, 7);
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::create_or_check(tmp.path(), 2).unwrap();
    write_log(&dir, 1, &records, 150);
    let mut index = open(&dir, small_chunks());
    // Followed as a live log is: up to one durable lsn after another.
    for upto in [1, 8, 40, 149, 150, 151, 333, 600] {
        index.catch_up(upto).unwrap();
        check_against_replay(&index, &records, upto);
    }
    // Chunks end at their record limit and at segment ends: 150 = 37 × 4 + 2.
    assert_eq!(index.chunks_written(), 4 * 5 - 1);
    assert!(index.open.slots.len() <= 37, "memory bounded by one chunk");
}

#[test]
fn a_reopened_index_reuses_its_chunks_and_rebuilds_damaged_or_missing_ones() {
    let records = generated_log(500, 11);
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::create_or_check(tmp.path(), 2).unwrap();
    write_log(&dir, 1, &records, 120);
    let mut index = open(&dir, small_chunks());
    index.catch_up(500).unwrap();
    let files = chunk_files(&dir);
    assert_eq!(files.len(), index.chunks_written());
    drop(index);

    // Reused as it is: the same answers, no chunk written again.
    let modified = |path: &PathBuf| fs::metadata(path).unwrap().modified().unwrap();
    let before: Vec<_> = files.iter().map(modified).collect();
    let mut index = open(&dir, small_chunks());
    assert_eq!(index.chunks_written(), files.len());
    index.catch_up(500).unwrap();
    check_against_replay(&index, &records, 500);
    assert_eq!(files.iter().map(modified).collect::<Vec<_>>(), before);
    drop(index);

    // A flipped byte in one chunk: it and the chunks after it are built again.
    let mut bytes = fs::read(&files[4]).unwrap();
    bytes[100] ^= 0x40;
    fs::write(&files[4], bytes).unwrap();
    let index = open(&dir, small_chunks());
    assert_eq!(index.chunks_written(), 4);
    // Segments of 120 records: 37 + 37 + 37 + 9.
    assert_eq!(index.indexed_lsn(), 120);
    let mut index = index;
    index.catch_up(500).unwrap();
    check_against_replay(&index, &records, 500);
    assert_eq!(chunk_files(&dir), files);
    drop(index);

    // A missing chunk, a half-written one under its temporary name, a chunk cut short.
    fs::remove_file(&files[2]).unwrap();
    let tmp_name = files[2].with_extension("hidx.tmp");
    fs::write(&tmp_name, b"WHIX and no more").unwrap();
    let mut index = open(&dir, small_chunks());
    assert!(!tmp_name.exists());
    assert_eq!(index.chunks_written(), 2);
    index.catch_up(500).unwrap();
    check_against_replay(&index, &records, 500);
    drop(index);
    let len = fs::metadata(&files[6]).unwrap().len();
    fs::File::options()
        .write(true)
        .open(&files[6])
        .unwrap()
        .set_len(len - 9)
        .unwrap();
    let mut index = open(&dir, small_chunks());
    assert_eq!(index.chunks_written(), 6);
    index.catch_up(500).unwrap();
    check_against_replay(&index, &records, 500);
    assert_eq!(chunk_files(&dir), files);
}

/// Each partition's index of logs with multi-leg transactions (local, rejected, tried and
/// confirmed or cancelled across partitions, with accounts whose legs cancel out) answers
/// what replay's fold answers, with chunks cut by records or by entries while transactions
/// are in flight, and reopened from its chunk files at each point.
#[test]
fn answers_what_the_fold_answers_on_logs_with_transactions() {
    use crate::history::test_logs::{transaction_logs, PARTITIONS};
    use walletd_core::log::replay::MovementKind;
    let logs = transaction_logs();
    let mut types = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    for records in &logs {
        for record in records {
            let name = format!("{:?}", record.event);
            types.insert(name.split([' ', '(']).next().unwrap().to_string());
        }
        for account in accounts_of(records) {
            for movement in movements(records, &account) {
                if movement.transaction_id.as_str().starts_with("tx-") {
                    assert_eq!(movement.counterparty, None);
                    kinds.insert(format!("{:?}", movement.kind));
                }
            }
        }
    }
    for name in [
        "TransactionApplied",
        "TransactionRejected",
        "TransactionTried",
        "TransactionRefused",
        "TransactionCancelling",
        "TransactionConfirmed",
        "TransactionCancelled",
    ] {
        assert!(types.contains(name), "the logs lack {name}");
    }
    for kind in [
        MovementKind::TransferOut,
        MovementKind::TransferIn,
        MovementKind::Hold,
        MovementKind::HoldCaptured,
        MovementKind::HoldReleased,
        MovementKind::CreditIn,
    ] {
        assert!(
            kinds.contains(&format!("{kind:?}")),
            "no transaction's {kind:?}"
        );
    }
    // Chunks of 6 records or 4 entries: a transaction's record may hold more than that.
    let tiny = IndexConfig {
        chunk_records_max: 6,
        chunk_entries_max: 4,
        read_window_bytes: 300,
    };
    for (partition, records) in logs.iter().enumerate() {
        let partition = partition as PartitionId;
        let last = records.last().unwrap().lsn;
        for config in [IndexConfig::default(), small_chunks(), tiny] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = Arc::new(DataDir::create_or_check(tmp.path(), PARTITIONS).unwrap());
            write_log(&dir, partition, records, 10);
            for upto in (1..last).step_by(4).chain([last]) {
                let mut index = PartitionIndex::open(Arc::clone(&dir), partition, config).unwrap();
                index.catch_up(upto).unwrap();
                check_against_replay(&index, records, upto);
                let entries_max = config.chunk_entries_max as usize + fold::TOUCHES_MAX;
                assert!(index.open.entries <= entries_max);
            }
            // Each chunk ends at its records, at its segment's end (every 10 records) or at
            // its entries; the last is why some chunks of `tiny` are short.
            let index = PartitionIndex::open(Arc::clone(&dir), partition, config).unwrap();
            let mut cut_by_entries = 0;
            for chunk in &index.sealed {
                let header = &chunk.header;
                let full = header.records == config.chunk_records_max;
                let segment_end = header.last_lsn % 10 == 0;
                let entries_full = header.entries >= config.chunk_entries_max;
                assert!(full || segment_end || entries_full, "{header:?}");
                if !full && !segment_end {
                    cut_by_entries += 1;
                }
            }
            assert_eq!(cut_by_entries > 0, config == tiny, "{config:?}");
        }
    }
}

#[test]
fn a_partition_that_never_wrote_has_an_empty_index() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::create_or_check(tmp.path(), 2).unwrap();
    let mut index = open(&dir, IndexConfig::default());
    index.catch_up(0).unwrap();
    assert_eq!(index.indexed_lsn(), 0);
    assert_eq!(index.page(&account("a0"), Lsn::MAX, 10).unwrap(), None);
    assert_eq!(index.balance(&account("a0"), AsOf::End).unwrap(), None);
}

#[test]
fn entry_kinds_keep_their_tags() {
    use walletd_core::log::replay::MovementKind;
    let kinds = [
        EntryKind::Opened,
        EntryKind::CreditPending,
        EntryKind::CreditDropped,
        EntryKind::HoldRest,
        EntryKind::Movement(MovementKind::Deposit),
        EntryKind::Movement(MovementKind::CreditIn),
    ];
    let tags: Vec<u8> = kinds.iter().map(|k| k.tag()).collect();
    assert_eq!(tags, vec![1, 2, 3, 4, 16, 23]);
    for kind in kinds {
        assert_eq!(EntryKind::from_tag(kind.tag()), Some(kind));
    }
    assert_eq!(EntryKind::from_tag(0), None);
    assert_eq!(EntryKind::from_tag(24), None);
}
