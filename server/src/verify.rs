//! `wallet verify`: check a data directory at rest (DESIGN section 5).
//!
//! The invariants themselves are core's ([`walletd_core::protocol::invariants`]); this module
//! reads the files, feeds them to those checks, and checks what only files have (snapshots and
//! their chunk files against the log). Every partition is replayed from zero, ignoring
//! snapshots, and then:
//! - the log itself: each record belongs to this partition, no deposit, withdrawal or transfer
//!   is recorded twice (exactly once), no destination Try follows its Cancel (no hanging), and
//!   it replays without an apply error (no negative balance, no phase out of order); each
//!   multi-leg transaction's side is in the protocol's order (`tx_once`: tried before it is
//!   confirmed or cancelled, one outcome);
//! - each partition's conservation law, and its holds against its unfinished transfers;
//! - each snapshot equals the replay of the log up to the snapshot's lsn;
//! - across partitions: per currency, balances + holds in flight = deposits − withdrawals
//!   (a hold is in flight while its destination credit is not confirmed), and both sides of
//!   every cross-partition transfer are in states the protocol allows together (home
//!   committed ⇔ destination confirmed; a cancelled home never meets a confirmed credit).
//!
//! A stopped server may leave transfers unfinished; those are reported, not violations: the
//! next start resumes them.

use std::fmt::Write as _;
use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;

use walletd_core::ledger::Ledger;
use walletd_core::log::codec::Record;
use walletd_core::log::replay::{self, AsOf};
use walletd_core::log::snapshot::{decode_snapshot_with, snapshot_chunks};
use walletd_core::model::money::{format_minor, Currency};
use walletd_core::model::partition::PartitionId;
use walletd_core::protocol::invariants::{self, Moment, Violation};
use walletd_runtime::storage::file::chunk_name;

use crate::cli::{print_line, VerifyArgs};
use crate::datadir::DataDir;
use crate::history::read_partition_log;

/// Violations listed per check before the rest are only counted.
const VIOLATIONS_LISTED_MAX: usize = 50;

/// Exit code when the directory cannot be read at all.
const EXIT_UNREADABLE: u8 = 2;

/// What a check found.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
    pub violations: Vec<String>,
    /// Violations found but not listed (beyond [`VIOLATIONS_LISTED_MAX`] for one check).
    pub unlisted: usize,
    /// Print each line as soon as it is known.
    pub echo: bool,
}

impl Report {
    /// A line of the summary; printed at once when `echo` is set, so a long check shows
    /// its progress partition by partition.
    fn line(&mut self, text: String) {
        if self.echo {
            print_line(&text);
        }
        self.lines.push(text);
    }

    fn violation(&mut self, text: String) {
        self.violations.push(text);
    }

    /// A broken invariant, named.
    fn broken(&mut self, violation: Violation) {
        self.violation(named(&violation));
    }

    fn violations_of(&mut self, found: Vec<Violation>) {
        let mut found: Vec<String> = found.iter().map(named).collect();
        if found.len() > VIOLATIONS_LISTED_MAX {
            self.unlisted += found.len() - VIOLATIONS_LISTED_MAX;
            found.truncate(VIOLATIONS_LISTED_MAX);
        }
        self.violations.extend(found);
    }

    pub fn is_clean(&self) -> bool {
        self.violations.is_empty() && self.unlisted == 0
    }
}

/// A violation as verify lists it: the invariant's name, then what broke.
fn named(violation: &Violation) -> String {
    format!("{}: {violation}", violation.invariant())
}

pub fn run(args: VerifyArgs) -> ExitCode {
    let mut dirs = Vec::with_capacity(args.data_dir.len());
    for root in &args.data_dir {
        match DataDir::open(root) {
            Ok(dir) => dirs.push(dir),
            Err(error) => {
                eprintln!("wallet verify: {error}");
                return ExitCode::from(EXIT_UNREADABLE);
            }
        }
    }
    let report = verify_all(&dirs, true);
    if report.is_clean() {
        print_line("OK: no violations");
        return ExitCode::SUCCESS;
    }
    let total = report.violations.len() + report.unlisted;
    print_line(&format!("FAILED: {total} violation(s):"));
    for (i, violation) in report.violations.iter().enumerate() {
        print_line(&format!("  {}. {violation}", i + 1));
    }
    if report.unlisted > 0 {
        print_line(&format!("  ... and {} more", report.unlisted));
    }
    ExitCode::FAILURE
}

/// Runs every check on `dir`; with `echo`, prints the summary lines as they come.
pub fn verify(dir: &DataDir, echo: bool) -> Report {
    verify_all(std::slice::from_ref(dir), echo)
}

/// Runs every check on the partitions of `dirs` taken together: an all-in-one node's
/// directory, one cluster node's (each of its partitions is checked, and between partitions
/// only what lies in it), or the directories of every node of a cluster (then the whole
/// cluster is checked, across nodes, as one all-in-one directory would be).
pub fn verify_all(dirs: &[DataDir], echo: bool) -> Report {
    let mut report = Report {
        echo,
        ..Report::default()
    };
    let Some(partitions) = dirs.first().map(DataDir::partitions) else {
        report.violation("no data directory to check".into());
        return report;
    };
    let mut copies: Vec<Vec<&DataDir>> = vec![Vec::new(); partitions as usize];
    for dir in dirs {
        report.line(format!(
            "wallet verify: {} ({} partitions)",
            dir.root().display(),
            dir.partitions()
        ));
        if let Err(violation) = place_partitions(dir, &mut copies) {
            report.violation(violation);
            return report;
        }
    }
    let complete = copies.iter().all(|held| !held.is_empty());
    if !complete {
        let held: Vec<PartitionId> = (0..partitions)
            .filter(|p| !copies[*p as usize].is_empty())
            .collect();
        report.line(format!(
            "partitions {held:?} are here; the others live on other cluster nodes, so \
             conservation across partitions is left to a check of every node's directory \
             (wallet verify --data-dir <node-0> --data-dir <node-1> ...)"
        ));
    }
    let mut ledgers = Vec::with_capacity(partitions as usize);
    let mut replayed = true;
    for (partition, held) in (0..partitions).zip(&copies) {
        let ledger = (!held.is_empty()).then(|| verify_copies(partition, held, &mut report));
        replayed &= ledger.as_ref().is_none_or(Option::is_some);
        ledgers.push(ledger.flatten());
    }
    if !replayed {
        report.line("cross-partition checks skipped: some partition did not replay".into());
        return report;
    }
    if complete {
        let all: Vec<Ledger> = ledgers.iter().flatten().cloned().collect();
        check_global_conservation(&all, &mut report);
    }
    check_transfers_agree(&ledgers, &mut report);
    report
}

/// Records in `copies[p]` that `dir` holds partition `p` (a replicated cluster's nodes each
/// hold a copy of every partition); directories of different partition counts cannot be one
/// cluster.
fn place_partitions<'a>(dir: &'a DataDir, copies: &mut [Vec<&'a DataDir>]) -> Result<(), String> {
    if dir.partitions() as usize != copies.len() {
        return Err(format!(
            "{} has {} partitions, not {} like the first directory: not one cluster",
            dir.root().display(),
            dir.partitions(),
            copies.len()
        ));
    }
    let held = dir
        .held_partitions()
        .map_err(|error| format!("cannot tell which partitions live here: {error}"))?;
    for partition in held {
        copies[partition as usize].push(dir);
    }
    Ok(())
}

/// Checks every copy of `partition` and, when there are several (replicas), that they agree
/// record for record on the records they all have: a replica may lag, never differ. The
/// ledger of the longest copy, when every copy replays.
fn verify_copies(
    partition: PartitionId,
    copies: &[&DataDir],
    report: &mut Report,
) -> Option<Ledger> {
    let mut longest: Option<(Ledger, Vec<Record>, &DataDir)> = None;
    let mut all_replayed = true;
    let mut agree = true;
    for dir in copies {
        let Some((ledger, records)) = verify_partition(dir, partition, report) else {
            all_replayed = false;
            continue;
        };
        if let Some((_, known, known_dir)) = &longest {
            if let Some(at) = known.iter().zip(&records).position(|(a, b)| a != b) {
                agree = false;
                report.violation(format!(
                    "partition {partition}: the replicas in {} and {} differ at lsn {}",
                    known_dir.root().display(),
                    dir.root().display(),
                    known[at].lsn
                ));
            }
        }
        let longer = longest
            .as_ref()
            .is_none_or(|(_, known, _)| records.len() > known.len());
        if longer {
            longest = Some((ledger, records, dir));
        }
    }
    if copies.len() > 1 && agree {
        report.line(format!(
            "partition {partition}: {} replicas agree on their common records",
            copies.len()
        ));
    }
    all_replayed
        .then_some(longest.map(|(ledger, _, _)| ledger))
        .flatten()
}

/// Checks one partition; its replayed ledger and its records when the log replays.
fn verify_partition(
    dir: &DataDir,
    partition: PartitionId,
    report: &mut Report,
) -> Option<(Ledger, Vec<Record>)> {
    let log = match read_partition_log(dir, partition, None, AsOf::End, &mut |_| true, &mut |_| {})
    {
        Ok(log) => log,
        Err(error) => {
            report.violation(format!("partition {partition}: log unreadable: {error}"));
            return None;
        }
    };
    if let Err(behind) = crate::storages::check_journal_redone(dir.root(), partition, log.last_lsn)
    {
        report.violation(behind);
        return None;
    }
    if let Some(gap) = log
        .records
        .windows(2)
        .find(|pair| pair[1].lsn != pair[0].lsn + 1)
    {
        report.violation(format!(
            "partition {partition}: lsn {} is missing (the log goes on at lsn {}): a segment or records were lost",
            gap[0].lsn + 1,
            gap[1].lsn
        ));
    }
    report.violations_of(invariants::scan_log(
        partition,
        dir.partitions(),
        &log.records,
    ));
    report.violations_of(invariants::scan_refunds(partition, &log.records));
    report.violations_of(invariants::scan_holds(partition, &log.records));
    report.violations_of(invariants::scan_transactions(
        partition,
        dir.partitions(),
        &log.records,
    ));
    let ledger = match safe_replay(partition, dir.partitions(), &log.records, AsOf::End) {
        Ok(ledger) => ledger,
        Err(error) => {
            report.violation(format!("partition {partition}: replay failed: {error}"));
            return None;
        }
    };
    if let Err(violation) = invariants::books(&ledger) {
        report.broken(violation);
    }
    report.violations_of(invariants::holds(&ledger));
    let snapshots = check_snapshots(dir, partition, &log.records, report);
    let unfinished = ledger.unfinished_transfers().len();
    let mut line = format!(
        "partition {partition}: {} records in {} segment(s), last lsn {}; {} accounts, {} transfers ({unfinished} unfinished), {} destination rows",
        log.records.len(),
        log.segments,
        log.last_lsn,
        ledger.accounts().count(),
        ledger.transfers().count(),
        ledger.credits().count(),
    );
    if log.torn_bytes > 0 {
        let _ = write!(
            line,
            "; torn tail of {} bytes (a crash mid-write; dropped at the next start)",
            log.torn_bytes
        );
    }
    line.push_str(&snapshots);
    report.line(line);
    Some((ledger, log.records))
}

/// Replays, turning a panic (an assertion in `apply` on a damaged log) into an error.
fn safe_replay(
    partition: PartitionId,
    partitions: u32,
    records: &[Record],
    as_of: AsOf,
) -> Result<Ledger, String> {
    let previous_hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        replay::replay(partition, partitions, records, as_of)
    }));
    panic::set_hook(previous_hook);
    match result {
        Ok(Ok(ledger)) => Ok(ledger),
        Ok(Err(error)) => Err(error.to_string()),
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Err(format!("the log contradicts itself: {message}"))
        }
    }
}

/// Decodes the snapshot `bytes` read from `path`, with the chunk files it refers to, which
/// live beside it.
fn decode_with_chunks(path: &std::path::Path, bytes: &[u8]) -> Result<Ledger, String> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let count = snapshot_chunks(bytes).map_err(|e| e.to_string())?;
    let chunks = (0..u64::from(count))
        .map(|index| {
            let chunk = dir.join(chunk_name(index));
            fs::read(&chunk).map_err(|e| format!("{}: {e}", chunk.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    decode_snapshot_with(bytes, &chunks).map_err(|e| e.to_string())
}

/// Compares every snapshot of a partition with the replay of its log up to the snapshot's
/// lsn. Returns a note for the partition's summary line.
fn check_snapshots(
    dir: &DataDir,
    partition: PartitionId,
    records: &[Record],
    report: &mut Report,
) -> String {
    let snapshots = match dir.snapshots(partition) {
        Ok(snapshots) => snapshots,
        Err(error) => {
            report.violation(format!(
                "partition {partition}: cannot list snapshots: {error}"
            ));
            return String::new();
        }
    };
    let last_lsn = records.last().map_or(0, |r| r.lsn);
    let mut matched = Vec::new();
    for (lsn, path) in snapshots {
        let name = path.display();
        let snapshot = match fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| decode_with_chunks(&path, &bytes))
        {
            Ok(snapshot) => snapshot,
            Err(error) => {
                report.violation(format!("{name}: unreadable snapshot: {error}"));
                continue;
            }
        };
        let at = snapshot.last_applied().lsn;
        if at != lsn
            || snapshot.partition() != partition
            || snapshot.partitions() != dir.partitions()
        {
            report.violation(format!(
                "{name}: holds partition {}/{} at lsn {at}, not what its name says",
                snapshot.partition(),
                snapshot.partitions()
            ));
            continue;
        }
        if at > last_lsn {
            report.violation(format!(
                "{name}: snapshot at lsn {at} is ahead of the log, which ends at {last_lsn}"
            ));
            continue;
        }
        match safe_replay(partition, dir.partitions(), records, AsOf::Lsn(at)) {
            Ok(replayed) => {
                match invariants::replay_matches(&replayed, &snapshot, &name.to_string()) {
                    Ok(()) => matched.push(at.to_string()),
                    Err(violation) => report.broken(violation),
                }
            }
            Err(error) => report.violation(format!("{name}: replay to lsn {at} failed: {error}")),
        }
    }
    if matched.is_empty() {
        String::new()
    } else {
        format!(
            "; snapshot(s) at lsn {} equal the replay",
            matched.join(", ")
        )
    }
}

/// Σ balances + Σ holds in flight = Σ deposits − Σ withdrawals, per currency, over every
/// partition of the cluster; one line per currency.
fn check_global_conservation(ledgers: &[Ledger], report: &mut Report) {
    let totals = invariants::money_totals(ledgers);
    for (currency, t) in &totals {
        let line = format!(
            "{currency}: deposited {}, withdrawn {}, balances {}, holds in flight {}",
            money(t.deposited, *currency),
            money(t.withdrawn, *currency),
            money(t.balances, *currency),
            money(t.holds_in_flight(), *currency)
        );
        if t.present() == t.net() {
            report.line(format!("{line}: conserved"));
        } else {
            report.violation(format!("conservation: across partitions: {line}"));
        }
    }
}

fn money(minor: u128, currency: Currency) -> String {
    u64::try_from(minor).map_or_else(
        |_| format!("{minor} minor units"),
        |m| format_minor(m, currency),
    )
}

/// Both sides of every cross-partition transfer must be in states the protocol allows
/// together, and every destination row must have its home row. `ledgers[p]` is `None` for a
/// partition not in the directory; transfers with a side there are not judged.
fn check_transfers_agree(ledgers: &[Option<Ledger>], report: &mut Report) {
    let cut: Vec<Option<&Ledger>> = ledgers.iter().map(Option::as_ref).collect();
    let agreement = invariants::transfers_agree(&cut, Moment::Any);
    let mut line = format!("cross-partition transfers checked: {}", agreement.checked);
    if agreement.elsewhere > 0 {
        line.push_str(&format!(
            "; {} with a destination on another node not checked here",
            agreement.elsewhere
        ));
    }
    report.line(line);
    report.violations_of(agreement.violations);
}
