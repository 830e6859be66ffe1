//! The promise of `fixtures/`: every committed log still decodes and replays to the same
//! history. The files are read as committed, never regenerated, so a codec change that can
//! no longer read them, or reads them differently, fails here. Results are `insta` snapshots
//! under `tests/snapshots/`; CI runs with `INSTA_UPDATE=no`.

use std::fmt::Write as _;
use std::path::PathBuf;

use walletd_core::ledger::Ledger;
use walletd_core::log::codec::{decode_log, DecodedLog, Record};
use walletd_core::log::replay::{balance_as_of, movements, replay, AsOf, BalanceAt};
use walletd_core::model::event::Timestamp;
use walletd_core::model::ids::AccountId;
use walletd_core::model::money::format_minor;
use walletd_core::model::partition::PartitionId;

#[path = "../examples/gen_fixtures.rs"]
#[allow(dead_code)]
mod gen_fixtures;

/// What a fixture is and which history to show of it.
struct Case {
    name: &'static str,
    partition: PartitionId,
    partitions: u32,
    /// A point in time to replay to, between records.
    time: Timestamp,
    /// The account whose movements are listed.
    account: &'static str,
}

/// 09:00 on the fixtures' day plus `minutes`.
fn at_minutes(minutes: u64) -> Timestamp {
    gen_fixtures::FIXTURE_EPOCH_US + minutes * 60_000_000
}

fn read_fixture(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// The whole history of a fixture as readable text: balances as of lsn 10, lsn 25, a time
/// and the end, the phase and barrier rows at the end, and one account's movements.
fn history(case: &Case) -> String {
    let bytes = read_fixture(case.name);
    let log = decode_log(&bytes, 1).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let records = &log.records;
    let mut out = String::new();
    let (first, last) = (records.first().unwrap(), records.last().unwrap());
    writeln!(
        out,
        "{}: partition {} of {}, {} bytes, records {}..={} stamped {}..={}, valid_len {}, torn_tail {}",
        case.name,
        case.partition,
        case.partitions,
        bytes.len(),
        first.lsn,
        last.lsn,
        first.timestamp,
        last.timestamp,
        log.valid_len,
        log.torn_tail
    )
    .unwrap();
    for as_of in [
        AsOf::Lsn(10),
        AsOf::Lsn(25),
        AsOf::Time(case.time),
        AsOf::End,
    ] {
        let ledger = replay(case.partition, case.partitions, records, as_of).unwrap();
        write_balances(&mut out, &ledger, records, as_of);
    }
    let end = replay(case.partition, case.partitions, records, AsOf::End).unwrap();
    assert_eq!(end.check_conservation(), Ok(()));
    write_rows(&mut out, &end);
    write_movements(&mut out, records, &AccountId::new(case.account).unwrap());
    out
}

/// Every account of `ledger`, checked against the single-account history query.
fn write_balances(out: &mut String, ledger: &Ledger, records: &[Record], as_of: AsOf) {
    let last = ledger.last_applied();
    writeln!(
        out,
        "\nas of {as_of:?}: last record lsn {} at {}",
        last.lsn, last.timestamp
    )
    .unwrap();
    let mut accounts: Vec<_> = ledger.accounts().collect();
    accounts.sort_by_key(|(id, _)| **id);
    for (id, account) in accounts {
        let expected = BalanceAt {
            currency: account.currency,
            balance: account.balance,
            held: account.held,
            incoming: account.incoming,
            lsn: last.lsn,
        };
        assert_eq!(balance_as_of(records, id, as_of), Some(expected), "{id}");
        let c = account.currency;
        writeln!(
            out,
            "  {:<8} {}  balance {:>9}  held {:>7}  incoming {:>7}",
            id.as_str(),
            c,
            format_minor(account.balance, c),
            format_minor(account.held, c),
            format_minor(account.incoming, c)
        )
        .unwrap();
    }
}

/// Home phase rows and destination barrier rows, sorted by key.
fn write_rows(out: &mut String, ledger: &Ledger) {
    writeln!(out, "\ntransfers at the end:").unwrap();
    let mut rows: Vec<_> = ledger.transfers().collect();
    rows.sort_by_key(|row| row.transfer.key());
    for row in rows {
        let t = row.transfer;
        let side = if row.remote { "remote" } else { "local" };
        let key = format!("{}/{}", t.from, t.transaction_id);
        let amount = t.amount.format(t.currency);
        let state = format!("{:?}", row.state);
        let to = t.to.as_str();
        let currency = t.currency;
        writeln!(
            out,
            "  {key:<15} -> {to:<8} {amount:>8} {currency}  {side:<6}  {state}"
        )
        .unwrap();
    }
    writeln!(out, "\ncredits at the end:").unwrap();
    let mut credits: Vec<_> = ledger.credits().collect();
    credits.sort_by_key(|(key, _)| *key);
    for (key, row) in credits {
        let key = format!("{}/{}", key.from, key.transaction_id);
        let state = format!("{:?}", row.state);
        let Some(t) = row.transfer else {
            writeln!(out, "  {key:<15}    {:<26}  {state}", "(no Try seen)").unwrap();
            continue;
        };
        let (to, amount) = (t.to.as_str(), t.amount.format(t.currency));
        writeln!(
            out,
            "  {key:<15} -> {to:<8} {amount:>8} {}          {state}",
            t.currency
        )
        .unwrap();
    }
}

fn write_movements(out: &mut String, records: &[Record], account: &AccountId) {
    writeln!(out, "\nmovements of {account}:").unwrap();
    let currency = balance_as_of(records, account, AsOf::End).unwrap().currency;
    for m in movements(records, account) {
        let other = m
            .counterparty
            .map_or(String::new(), |c| format!(" with {c}"));
        writeln!(
            out,
            "  lsn {:>2} {:<13} {:>8} {:<8}{other:<12} balance {:>8} held {:>6}",
            m.lsn,
            format!("{:?}", m.kind),
            format_minor(m.amount.minor(), currency),
            m.transaction_id.as_str(),
            format_minor(m.balance_after, currency),
            format_minor(m.held_after, currency),
        )
        .unwrap();
    }
}

#[test]
fn plain_day_replays_to_the_recorded_history() {
    let case = Case {
        name: "plain_day.log",
        partition: 3,
        partitions: 8,
        time: at_minutes(45),
        account: "frank",
    };
    insta::assert_snapshot!("plain_day", history(&case));
}

#[test]
fn tcc_cancels_replays_to_the_recorded_history() {
    let case = Case {
        name: "tcc_cancels.log",
        partition: 7,
        partitions: 8,
        time: at_minutes(30),
        account: "alice",
    };
    insta::assert_snapshot!("tcc_cancels", history(&case));
}

#[test]
fn refunds_replays_to_the_recorded_history() {
    let case = Case {
        name: "refunds.log",
        partition: 7,
        partitions: 8,
        time: at_minutes(15),
        account: "judy",
    };
    insta::assert_snapshot!("refunds", history(&case));
}

#[test]
fn holds_replays_to_the_recorded_history() {
    let case = Case {
        name: "holds.log",
        partition: 7,
        partitions: 8,
        time: at_minutes(15),
        account: "alice",
    };
    insta::assert_snapshot!("holds", history(&case));
}

#[test]
fn transactions_replays_to_the_recorded_history() {
    let case = Case {
        name: "transactions.log",
        partition: 7,
        partitions: 8,
        time: at_minutes(15),
        account: "judy",
    };
    insta::assert_snapshot!("transactions", history(&case));
}

#[test]
fn torn_tail_keeps_the_whole_records_and_reports_the_tear() {
    let bytes = read_fixture("torn_tail.log");
    let log: DecodedLog = decode_log(&bytes, 1).unwrap();
    assert!(log.torn_tail);
    assert_eq!(log.records.len(), 5);
    assert_eq!(
        log.valid_len,
        bytes.len() - gen_fixtures::TORN_TAIL_PARTIAL_LEN
    );
    let case = Case {
        name: "torn_tail.log",
        partition: 3,
        partitions: 8,
        time: at_minutes(5),
        account: "grace",
    };
    insta::assert_snapshot!("torn_tail", history(&case));
}

#[test]
fn the_generator_reproduces_the_committed_files() {
    for fixture in gen_fixtures::fixtures() {
        let committed = read_fixture(fixture.name);
        assert!(
            committed == fixture.bytes,
            "fixtures/{} differs from what core/examples/gen_fixtures.rs generates; \
             if the change is intended, run `cargo run -p walletd-core --example gen_fixtures` \
             (never for a change of the record format: see fixtures/README.md)",
            fixture.name
        );
    }
}
