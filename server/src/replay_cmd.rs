//! `wallet replay`: balances (or one account's history) rebuilt from a data directory's logs.

use std::collections::BTreeMap;
use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;

use serde_json::json;
use walletd_core::log::codec::Record;
use walletd_core::log::replay::{self, AsOf, BalanceAt, Movement};
use walletd_core::model::ids::AccountId;
use walletd_core::model::money::{format_minor, Currency};
use walletd_core::model::partition::{partition_of, PartitionId};

use crate::api::queries::{format_signed, kind_name};
use crate::cli::{print_line, Format, ReplayArgs};
use crate::datadir::DataDir;
use crate::history::{account_filter, read_partition_log, PartitionLog, Progress};
use crate::rfc3339;

/// Logs at least this large get a progress line on stderr.
const PROGRESS_BYTES_MIN: u64 = 8 << 20;

/// Exit code for an unreadable directory or bad arguments (1 is a log that does not replay).
const EXIT_USAGE: u8 = 2;

pub fn run(args: ReplayArgs) -> ExitCode {
    match replay_command(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("wallet replay: {message}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// One account's row in the output.
struct Row {
    account: AccountId,
    partition: PartitionId,
    currency: Currency,
    balance: u64,
    held: u64,
    incoming: u64,
}

fn replay_command(args: &ReplayArgs) -> Result<ExitCode, String> {
    let dir = DataDir::open(&args.data_dir).map_err(|e| e.to_string())?;
    let as_of = match (&args.as_of, args.as_of_lsn) {
        (Some(text), _) => AsOf::Time(rfc3339::parse_us(text)?),
        (None, Some(lsn)) => AsOf::Lsn(lsn),
        (None, None) => AsOf::End,
    };
    if let Some(p) = args.partition {
        if p >= dir.partitions() {
            return Err(format!(
                "--partition {p}: the directory has partitions 0..{}",
                dir.partitions()
            ));
        }
    }
    let account = args
        .account
        .as_deref()
        .map(|text| AccountId::new(text).map_err(|e| format!("--account: {e}")))
        .transpose()?;
    if let Some(account) = account {
        let home = partition_of(&account, dir.partitions());
        if args.partition.is_some_and(|p| p != home) {
            return Err(format!("account {account} lives on partition {home}"));
        }
        return account_history(&dir, account, home, as_of, args.format);
    }
    if matches!(as_of, AsOf::Lsn(_)) && args.partition.is_none() {
        return Err("--as-of-lsn needs --partition or --account: lsns are per partition".into());
    }
    all_balances(&dir, args.partition, as_of, args.format)
}

/// Reads a partition's log with a progress line on stderr when it is large.
fn read(
    dir: &DataDir,
    partition: PartitionId,
    as_of: AsOf,
    keep: &mut dyn FnMut(&Record) -> bool,
) -> Result<PartitionLog, String> {
    // On a terminal the line rewrites itself; in a pipe or a file, one line per segment.
    let terminal = io::stderr().is_terminal();
    let mut progress = |p: Progress| {
        if p.bytes_total < PROGRESS_BYTES_MIN {
            return;
        }
        let line = format!(
            "replay: partition {} segment {}/{}: {} of {} MiB, {} records",
            p.partition,
            p.segment,
            p.segments,
            p.bytes_read >> 20,
            p.bytes_total >> 20,
            p.records
        );
        if terminal && p.segment < p.segments {
            eprint!("\r{line}   ");
        } else if terminal {
            eprintln!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    };
    let log = read_partition_log(dir, partition, None, as_of, keep, &mut progress)
        .map_err(|e| e.to_string())?;
    if !log.stopped {
        crate::storages::check_journal_redone(dir.root(), partition, log.last_lsn)?;
    }
    Ok(log)
}

fn all_balances(
    dir: &DataDir,
    only: Option<PartitionId>,
    as_of: AsOf,
    format: Format,
) -> Result<ExitCode, String> {
    let partitions: Vec<PartitionId> = match only {
        Some(p) => vec![p],
        None => (0..dir.partitions()).collect(),
    };
    let mut rows = Vec::new();
    let mut positions = BTreeMap::new();
    for partition in partitions {
        let log = read(dir, partition, as_of, &mut |_| true)?;
        let ledger = match replay::replay(partition, dir.partitions(), &log.records, AsOf::End) {
            Ok(ledger) => ledger,
            Err(error) => {
                eprintln!("wallet replay: partition {partition}: {error}");
                return Ok(ExitCode::FAILURE);
            }
        };
        positions.insert(partition, log.last_lsn);
        rows.extend(ledger.accounts().map(|(account, a)| Row {
            account: *account,
            partition,
            currency: a.currency,
            balance: a.balance,
            held: a.held,
            incoming: a.incoming,
        }));
    }
    rows.sort_by_key(|row| row.account);
    match format {
        Format::Json => print_json(&rows, &positions),
        Format::Text => print_table(dir, &rows, as_of),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(dir: &DataDir, rows: &[Row], as_of: AsOf) {
    let mut out = io::stdout().lock();
    let when = match as_of {
        AsOf::End => "end of log".to_string(),
        AsOf::Lsn(lsn) => format!("lsn {lsn}"),
        AsOf::Time(ts) => rfc3339::format_us(ts),
    };
    let _ = writeln!(
        out,
        "# {} ({} partitions), as of {when}",
        dir.root().display(),
        dir.partitions()
    );
    let _ = writeln!(
        out,
        "{:<24} {:<4} {:>20} {:>14} {:>14} {:>9}",
        "account", "cur", "balance", "held", "incoming", "partition"
    );
    let mut totals: BTreeMap<Currency, (u128, u128, u128, usize)> = BTreeMap::new();
    for row in rows {
        let c = row.currency;
        let _ = writeln!(
            out,
            "{:<24} {:<4} {:>20} {:>14} {:>14} {:>9}",
            row.account.as_str(),
            c.code(),
            format_minor(row.balance, c),
            format_minor(row.held, c),
            format_minor(row.incoming, c),
            row.partition
        );
        let t = totals.entry(c).or_default();
        t.0 += u128::from(row.balance);
        t.1 += u128::from(row.held);
        t.2 += u128::from(row.incoming);
        t.3 += 1;
    }
    for (c, (balance, held, incoming, accounts)) in totals {
        let _ = writeln!(
            out,
            "# total {c}: balance {} held {} incoming {} ({accounts} accounts)",
            format_u128(balance, c),
            format_u128(held, c),
            format_u128(incoming, c)
        );
    }
}

fn print_json(rows: &[Row], positions: &BTreeMap<PartitionId, u64>) {
    let accounts: Vec<_> = rows
        .iter()
        .map(|row| {
            let c = row.currency;
            json!({
                "account_id": row.account.as_str(),
                "currency": c.code(),
                "balance": format_minor(row.balance, c),
                "held": format_minor(row.held, c),
                "incoming": format_minor(row.incoming, c),
                "partition": row.partition,
            })
        })
        .collect();
    let lsns: BTreeMap<String, u64> = positions
        .iter()
        .map(|(p, lsn)| (p.to_string(), *lsn))
        .collect();
    let doc = json!({ "accounts": accounts, "as_of_lsn_by_partition": lsns });
    print_line(&format!("{doc:#}"));
}

/// Formats a sum of balances, which may exceed `u64` in principle.
fn format_u128(minor: u128, currency: Currency) -> String {
    match u64::try_from(minor) {
        Ok(minor) => format_minor(minor, currency),
        Err(_) => format!("{minor} minor units"),
    }
}

/// One account's history as read from its partition's log.
struct History {
    account: AccountId,
    partition: PartitionId,
    figures: BalanceAt,
    movements: Vec<Movement>,
    last_lsn: u64,
}

fn account_history(
    dir: &DataDir,
    account: AccountId,
    partition: PartitionId,
    as_of: AsOf,
    format: Format,
) -> Result<ExitCode, String> {
    let mut keep = account_filter(account);
    let log = read(dir, partition, as_of, &mut keep)?;
    let Some(figures) = replay::balance_as_of(&log.records, &account, AsOf::End) else {
        eprintln!("wallet replay: account {account} does not exist at that point");
        return Ok(ExitCode::FAILURE);
    };
    let history = History {
        account,
        partition,
        figures,
        movements: replay::movements(&log.records, &account),
        last_lsn: log.last_lsn,
    };
    match format {
        Format::Json => print_history_json(&history),
        Format::Text => print_history_text(&history),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_history_json(h: &History) {
    let c = h.figures.currency;
    let list: Vec<_> = h
        .movements
        .iter()
        .map(|m| {
            json!({
                "lsn": m.lsn,
                "timestamp": rfc3339::format_us(m.timestamp),
                "kind": kind_name(m.kind),
                "amount": m.amount.format(c),
                "balance_change": format_signed(m.balance_change(), c),
                "transaction_id": m.transaction_id.as_str(),
                "counterparty": m.counterparty.map(|a| a.to_string()),
                "balance_after": format_minor(m.balance_after, c),
                "held_after": format_minor(m.held_after, c),
            })
        })
        .collect();
    let doc = json!({
        "account_id": h.account.as_str(),
        "partition": h.partition,
        "currency": c.code(),
        "balance": format_minor(h.figures.balance, c),
        "held": format_minor(h.figures.held, c),
        "incoming": format_minor(h.figures.incoming, c),
        "as_of_lsn": h.last_lsn,
        "movements": list,
    });
    print_line(&format!("{doc:#}"));
}

fn print_history_text(h: &History) {
    let c = h.figures.currency;
    let mut out = io::stdout().lock();
    let _ = writeln!(
        out,
        "# account {} (partition {}, {c}) as of lsn {}",
        h.account, h.partition, h.last_lsn
    );
    let _ = writeln!(
        out,
        "{:>10} {:<27} {:<13} {:>16} {:<24} {:<20} {:>16} {:>14}",
        "lsn", "time", "kind", "change", "transaction", "counterparty", "balance", "held"
    );
    for m in &h.movements {
        let _ = writeln!(
            out,
            "{:>10} {:<27} {:<13} {:>16} {:<24} {:<20} {:>16} {:>14}",
            m.lsn,
            rfc3339::format_us(m.timestamp),
            kind_name(m.kind),
            format_signed(m.balance_change(), c),
            m.transaction_id.as_str(),
            m.counterparty.map_or("-".to_string(), |a| a.to_string()),
            format_minor(m.balance_after, c),
            format_minor(m.held_after, c),
        );
    }
    let _ = writeln!(
        out,
        "# balance {} held {} incoming {}",
        format_minor(h.figures.balance, c),
        format_minor(h.figures.held, c),
        format_minor(h.figures.incoming, c)
    );
}
