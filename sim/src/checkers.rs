//! The invariants of DESIGN section 5, each a named check over the final state of a run: the
//! durable bytes of every partition's log, the replayed and recovered ledgers, what the live
//! cluster answers after quiescing, and the history of what clients were told.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use walletd_core::ledger::{
    Account, Command, CreditState, Ledger, LedgerError, Reply, TransferRow, TransferState,
    TransferStatus,
};
use walletd_core::log::codec::Record;
use walletd_core::model::event::{Event, Reason, TransferKey};
use walletd_core::model::ids::AccountId;
use walletd_core::model::money::Currency;
use walletd_core::model::partition::{partition_of, PartitionId};
use walletd_runtime::driver::QueryAnswer;

use crate::history::HistoryState;
use crate::model::Model;

/// The invariants, in the order they are checked and reported.
pub const INVARIANTS: [&str; 11] = [
    "no_hanging",
    "exactly_once",
    "no_negative",
    "conservation",
    "atomicity",
    "durability",
    "replay",
    "oracle",
    "protocol",
    "determinism",
    "node_panic",
];

/// The invariants one run checks: all but the last two (determinism needs two runs,
/// node_panic is a crash).
pub const CHECKED: &[&str] = INVARIANTS.split_at(INVARIANTS.len() - 2).0;

/// A broken invariant, with what it involves (for printing the history).
#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
    pub keys: Vec<TransferKey>,
    pub accounts: Vec<AccountId>,
    /// The client request it is about (an index into the history's ops).
    pub op: Option<usize>,
}

impl Violation {
    pub fn new(invariant: &'static str, detail: impl Into<String>) -> Violation {
        Violation {
            invariant,
            detail: detail.into(),
            keys: Vec::new(),
            accounts: Vec::new(),
            op: None,
        }
    }

    fn key(mut self, key: TransferKey) -> Violation {
        self.keys.push(key);
        self
    }

    fn account(mut self, account: AccountId) -> Violation {
        self.accounts.push(account);
        self
    }
}

/// One partition at the end of a run.
pub struct PartitionFinal {
    pub partition: PartitionId,
    /// The durable bytes of its log (what a crash now would leave).
    pub bytes: Vec<u8>,
    /// Its records decoded from zero (empty if decoding failed).
    pub records: Vec<Record>,
    pub decode_error: Option<String>,
    /// The log replayed from zero with core's replay.
    pub replayed: Result<Ledger, String>,
    /// What core's recovery (latest snapshot plus log) rebuilds from the same disk.
    pub recovered: Result<Ledger, String>,
    /// The independent sequential model of the log.
    pub model: Model,
}

/// What the live cluster answered after quiescing.
#[derive(Default)]
pub struct LiveState {
    pub accounts: BTreeMap<AccountId, Option<QueryAnswer>>,
    pub transfers: BTreeMap<TransferKey, Option<QueryAnswer>>,
}

/// Everything the checkers look at.
pub struct FinalState<'a> {
    pub partitions: u32,
    pub finals: &'a [PartitionFinal],
    pub live: &'a LiveState,
    pub history: &'a HistoryState,
    pub quiesced: bool,
    pub protocol_violations: u64,
    pub fatal: &'a [String],
}

impl FinalState<'_> {
    fn ledger(&self, partition: PartitionId) -> Option<&Ledger> {
        self.finals[partition as usize].replayed.as_ref().ok()
    }

    fn home_row(&self, key: &TransferKey) -> Option<TransferRow> {
        self.ledger(partition_of(&key.from, self.partitions))?
            .transfer(key)
    }

    fn credit_state(&self, row: &TransferRow) -> Option<CreditState> {
        let to = partition_of(&row.transfer.to, self.partitions);
        self.ledger(to)?
            .credit(&row.transfer.key())
            .map(|c| c.state)
    }
}

/// Runs every checker; returns the violations found, in the order of [`INVARIANTS`].
pub fn check(state: &FinalState<'_>) -> Vec<Violation> {
    let mut found = Vec::new();
    exactly_once(state, &mut found);
    no_hanging(state, &mut found);
    no_negative(state, &mut found);
    conservation(state, &mut found);
    atomicity(state, &mut found);
    durability(state, &mut found);
    replay(state, &mut found);
    oracle(state, &mut found);
    if state.protocol_violations > 0 {
        found.push(Violation::new(
            "protocol",
            format!(
                "coordinators counted {} TC/C protocol violations (a destination answered against a logged decision)",
                state.protocol_violations
            ),
        ));
    }
    found.sort_by_key(|v| INVARIANTS.iter().position(|i| *i == v.invariant));
    found
}

/// No `(from, transaction_id)` debited or transferred twice, no destination credited twice,
/// no deposit or withdrawal applied twice: a scan of every durable log.
fn exactly_once(state: &FinalState<'_>, found: &mut Vec<Violation>) {
    for fin in state.finals {
        let mut home: BTreeMap<TransferKey, u32> = BTreeMap::new();
        let mut tried: BTreeMap<TransferKey, u32> = BTreeMap::new();
        let mut confirmed: BTreeMap<TransferKey, u32> = BTreeMap::new();
        let mut finished: BTreeMap<TransferKey, u32> = BTreeMap::new();
        let mut cash: BTreeMap<(AccountId, String), u32> = BTreeMap::new();
        for record in &fin.records {
            let (table, key) = match record.event {
                Event::Transferred { transfer }
                | Event::TransferRejected { transfer, .. }
                | Event::DebitTried { transfer } => (&mut home, transfer.key()),
                Event::CreditTried { transfer } => (&mut tried, transfer.key()),
                Event::CreditConfirmed { key } => (&mut confirmed, key),
                Event::DebitConfirmed { key } | Event::DebitCancelled { key } => {
                    (&mut finished, key)
                }
                Event::Deposited {
                    account,
                    transaction_id,
                    ..
                }
                | Event::Withdrawn {
                    account,
                    transaction_id,
                    ..
                } => {
                    let count = cash
                        .entry((account, transaction_id.to_string()))
                        .or_default();
                    *count += 1;
                    if *count == 2 {
                        found.push(
                            Violation::new(
                                "exactly_once",
                                format!(
                                    "partition {}: cash movement {transaction_id} of {account} applied twice (second at lsn {})",
                                    fin.partition, record.lsn
                                ),
                            )
                            .account(account),
                        );
                    }
                    continue;
                }
                _ => continue,
            };
            let count = table.entry(key).or_default();
            *count += 1;
            if *count == 2 {
                found.push(
                    Violation::new(
                        "exactly_once",
                        format!(
                            "partition {}: {:?} applied twice for {key:?} (second at lsn {})",
                            fin.partition,
                            event_name(&record.event),
                            record.lsn
                        ),
                    )
                    .key(key),
                );
            }
        }
    }
}

/// No Try applied after its Cancel: in every destination log, no `CreditTried` follows a
/// `CreditTryNotSeen` or `CreditCancelled` of the same key.
fn no_hanging(state: &FinalState<'_>, found: &mut Vec<Violation>) {
    for fin in state.finals {
        let mut cancelled: BTreeSet<TransferKey> = BTreeSet::new();
        for record in &fin.records {
            match record.event {
                Event::CreditTryNotSeen { key } | Event::CreditCancelled { key } => {
                    cancelled.insert(key);
                }
                Event::CreditTried { transfer } if cancelled.contains(&transfer.key()) => {
                    found.push(
                        Violation::new(
                            "no_hanging",
                            format!(
                                "partition {}: Try of {:?} applied at lsn {} after its Cancel",
                                fin.partition,
                                transfer.key(),
                                record.lsn
                            ),
                        )
                        .key(transfer.key()),
                    );
                }
                _ => {}
            }
        }
    }
}

/// No available balance ever negative: replaying each log must not overdraw, and neither may
/// the independent model.
fn no_negative(state: &FinalState<'_>, found: &mut Vec<Violation>) {
    for fin in state.finals {
        if let Err(error) = &fin.replayed {
            let invariant = if error.contains("overdraw") {
                "no_negative"
            } else {
                "replay"
            };
            found.push(Violation::new(
                invariant,
                format!(
                    "partition {}: the log does not replay: {error}",
                    fin.partition
                ),
            ));
        }
        for problem in &fin.model.problems {
            let mut v = Violation::new(
                problem.invariant,
                format!("partition {} (model): {}", fin.partition, problem.detail),
            );
            v.keys.extend(problem.key);
            v.accounts.extend(problem.account);
            found.push(v);
        }
    }
}

/// Per currency: Σ balances + Σ holds in flight = Σ deposits − Σ withdrawals, where a hold is
/// in flight while its destination credit is not confirmed; and each ledger's own law.
fn conservation(state: &FinalState<'_>, found: &mut Vec<Violation>) {
    let mut held: BTreeMap<Currency, i128> = BTreeMap::new();
    let mut net: BTreeMap<Currency, i128> = BTreeMap::new();
    for fin in state.finals {
        let Ok(ledger) = &fin.replayed else {
            return; // Reported by no_negative or replay.
        };
        if let Err(error) = ledger.check_conservation() {
            found.push(Violation::new(
                "conservation",
                format!("partition {}: {error}", fin.partition),
            ));
        }
        for (_, account) in ledger.accounts() {
            *held.entry(account.currency).or_default() +=
                i128::from(account.balance) + i128::from(account.held);
        }
        for (currency, flows) in ledger.flows() {
            *net.entry(*currency).or_default() += flows.deposited as i128 - flows.withdrawn as i128;
        }
        for row in ledger.transfers().filter(|r| r.state.is_unfinished()) {
            // The money is already at the destination; the hold is about to be released.
            if state.credit_state(&row) == Some(CreditState::Confirmed) {
                *held.entry(row.transfer.currency).or_default() -=
                    i128::from(row.transfer.amount.minor());
            }
        }
    }
    for currency in held.keys().chain(net.keys()).collect::<BTreeSet<_>>() {
        let have = held.get(currency).copied().unwrap_or_default();
        let expected = net.get(currency).copied().unwrap_or_default();
        if have != expected {
            found.push(Violation::new(
                "conservation",
                format!(
                    "{currency}: balances + holds in flight = {have}, deposits - withdrawals = {expected}"
                ),
            ));
        }
    }
}

/// After quiescing: nothing unfinished, no pending credit, Committed ⇔ CreditConfirmed,
/// cancelled and rejected transfers refunded and never credited.
fn atomicity(state: &FinalState<'_>, found: &mut Vec<Violation>) {
    if !state.quiesced {
        found.push(Violation::new(
            "atomicity",
            "the cluster did not quiesce (transfers still in flight) within the heal period",
        ));
    }
    for fin in state.finals {
        let Ok(ledger) = &fin.replayed else {
            continue;
        };
        let p = fin.partition;
        for row in sorted_rows(ledger) {
            let key = row.transfer.key();
            let credit = state.credit_state(&row);
            let problem = match (row.state, row.remote, credit) {
                (s, _, _) if s.is_unfinished() => Some(format!("left {s:?}")),
                (_, false, _) => None,
                (TransferState::Committed, true, Some(CreditState::Confirmed)) => None,
                (TransferState::Committed, true, c) => {
                    Some(format!("Committed but the destination has {c:?}"))
                }
                (
                    TransferState::Cancelled(_),
                    true,
                    Some(CreditState::Cancelled | CreditState::TryNotSeen),
                ) => None,
                (TransferState::Cancelled(_), true, c) => {
                    Some(format!("Cancelled but the destination has {c:?}"))
                }
                (TransferState::Rejected(_), true, None) => None,
                (TransferState::Rejected(_), true, c) => {
                    Some(format!("Rejected but the destination has {c:?}"))
                }
                _ => unreachable!("unfinished states are matched first"),
            };
            if let Some(problem) = problem {
                found.push(
                    Violation::new(
                        "atomicity",
                        format!("partition {p}: transfer {key:?} {problem}"),
                    )
                    .key(key),
                );
            }
        }
        let mut credits: Vec<(TransferKey, CreditState)> =
            ledger.credits().map(|(k, c)| (k, c.state)).collect();
        credits.sort_by_key(|(k, _)| *k);
        for (key, credit) in credits {
            let home = state.home_row(&key).map(|r| r.state);
            let consistent = match credit {
                CreditState::Tried => false,
                CreditState::Confirmed => home == Some(TransferState::Committed),
                CreditState::Cancelled | CreditState::TryNotSeen => {
                    matches!(home, Some(TransferState::Cancelled(_)))
                }
            };
            if !consistent {
                found.push(
                    Violation::new(
                        "atomicity",
                        format!("partition {p}: credit of {key:?} is {credit:?} but its home row is {home:?}"),
                    )
                    .key(key),
                );
            }
        }
        let mut accounts: Vec<(&AccountId, &Account)> = ledger.accounts().collect();
        accounts.sort_by_key(|(id, _)| **id);
        for (id, account) in accounts {
            if account.held != 0 || account.incoming != 0 {
                found.push(
                    Violation::new(
                        "atomicity",
                        format!(
                            "partition {p}: {id} still holds {} and expects {} after quiescing",
                            account.held, account.incoming
                        ),
                    )
                    .account(*id),
                );
            }
        }
    }
}

fn sorted_rows(ledger: &Ledger) -> Vec<TransferRow> {
    let mut rows: Vec<TransferRow> = ledger.transfers().collect();
    rows.sort_by_key(|r| r.transfer.key());
    rows
}

/// Every outcome acknowledged to a client is in the final logs with that outcome.
fn durability(state: &FinalState<'_>, found: &mut Vec<Violation>) {
    for (index, op) in state.history.ops.iter().enumerate() {
        for (attempt, result) in op.answers() {
            let problem = match (&op.command, result) {
                (Command::Transfer(t), Ok(Reply::Transfer(status))) => {
                    let row = state.home_row(&t.key());
                    match (status, row) {
                        (_, Some(row)) if row.transfer != *t => Some(format!(
                            "acknowledged {status:?} but the logged transfer has another body"
                        )),
                        (TransferStatus::Pending, Some(_)) => None,
                        (status, Some(row)) if row.state.status() == *status => None,
                        (status, row) => Some(format!(
                            "acknowledged {status:?} at {} us, the final log has {:?}",
                            attempt.done_us,
                            row.map(|r| r.state)
                        )),
                    }
                }
                (
                    Command::Deposit {
                        account,
                        transaction_id,
                        ..
                    }
                    | Command::Withdraw {
                        account,
                        transaction_id,
                        ..
                    },
                    Ok(Reply::Balance { balance }),
                ) => {
                    let p = partition_of(account, state.partitions);
                    let fact = state.finals[p as usize]
                        .model
                        .cash
                        .get(&(*account, *transaction_id));
                    match fact {
                        Some(_) => None,
                        None => Some(format!(
                            "acknowledged with balance {balance} at {} us, the final log has no such movement",
                            attempt.done_us
                        )),
                    }
                }
                (Command::OpenAccount { account, .. }, Ok(Reply::Opened { .. })) => {
                    let p = partition_of(account, state.partitions);
                    match state.ledger(p).map(|l| l.account(account).is_some()) {
                        Some(false) => {
                            Some("acknowledged as opened, missing from the final log".into())
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            if let Some(problem) = problem {
                let mut v = Violation::new("durability", format!("{:?}: {problem}", op.command));
                v.keys.extend(op.transfer_key());
                v.accounts.extend(cash_account(&op.command));
                v.op = Some(index);
                found.push(v);
                break;
            }
        }
    }
}

/// Replay from zero equals what recovery (snapshot plus log) rebuilds and what the live
/// cluster answers.
fn replay(state: &FinalState<'_>, found: &mut Vec<Violation>) {
    for message in state.fatal {
        found.push(Violation::new("replay", message.clone()));
    }
    for fin in state.finals {
        if let Some(error) = &fin.decode_error {
            found.push(Violation::new(
                "replay",
                format!(
                    "partition {}: the durable log does not decode: {error}",
                    fin.partition
                ),
            ));
        }
        match (&fin.replayed, &fin.recovered) {
            (Ok(replayed), Ok(recovered)) => {
                if let Some(difference) =
                    walletd_core::log::replay::state_difference(replayed, recovered)
                {
                    found.push(Violation::new(
                        "replay",
                        format!(
                            "partition {}: replay from zero and recovery differ: {difference}",
                            fin.partition
                        ),
                    ));
                }
            }
            (_, Err(error)) => found.push(Violation::new(
                "replay",
                format!(
                    "partition {}: recovery from the final disk fails: {error}",
                    fin.partition
                ),
            )),
            (Err(_), _) => {}
        }
    }
    for (account, answer) in &state.live.accounts {
        let p = partition_of(account, state.partitions);
        let Some(ledger) = state.ledger(p) else {
            continue;
        };
        let expected = QueryAnswer::Account(ledger.account(account).copied());
        match answer {
            Some(answer) if *answer == expected => {}
            Some(answer) => found.push(
                Violation::new(
                    "replay",
                    format!("live {account} is {answer:?}, replay of the log gives {expected:?}"),
                )
                .account(*account),
            ),
            None => found.push(
                Violation::new(
                    "replay",
                    format!("the live cluster did not answer for {account}"),
                )
                .account(*account),
            ),
        }
    }
    for (key, answer) in &state.live.transfers {
        let expected = QueryAnswer::Transfer(state.home_row(key));
        if let Some(answer) = answer {
            if *answer != expected {
                found.push(
                    Violation::new(
                        "replay",
                        format!("live transfer {key:?} is {answer:?}, replay gives {expected:?}"),
                    )
                    .key(*key),
                );
            }
        }
    }
}

/// The sequential model agrees with every acknowledged outcome and every balance read, and
/// the clients' own expectations (known errors, repeated answers) held.
fn oracle(state: &FinalState<'_>, found: &mut Vec<Violation>) {
    for violation in &state.history.violations {
        let op = &state.history.ops[violation.op];
        let mut v = Violation::new(
            violation.invariant,
            format!("{:?}: {}", op.command, violation.detail),
        );
        v.keys.extend(op.transfer_key());
        v.accounts.extend(cash_account(&op.command));
        v.op = Some(violation.op);
        found.push(v);
    }
    let model =
        |account: &AccountId| &state.finals[partition_of(account, state.partitions) as usize].model;
    for (index, op) in state.history.ops.iter().enumerate() {
        for (_, result) in op.answers() {
            let problem = match (&op.command, result) {
                (
                    Command::Deposit {
                        account,
                        transaction_id,
                        amount,
                        ..
                    }
                    | Command::Withdraw {
                        account,
                        transaction_id,
                        amount,
                        ..
                    },
                    Ok(Reply::Balance { balance }),
                ) => match model(account).cash.get(&(*account, *transaction_id)) {
                    Some(fact) if fact.refused.is_some() => Some(format!(
                        "acknowledged balance {balance}, but the log refused it at lsn {}",
                        fact.lsn
                    )),
                    Some(fact) if fact.balance_after != *balance => Some(format!(
                        "acknowledged balance {balance}, the model has {} after lsn {}",
                        fact.balance_after, fact.lsn
                    )),
                    Some(fact) if fact.amount != amount.minor() => {
                        Some(format!("the logged movement is of {}", fact.amount))
                    }
                    _ => None,
                },
                // A business refusal is recorded, and the record was right when it was made
                // (the model checks it at its lsn), so every answer to the id repeats it.
                (
                    Command::Deposit {
                        account,
                        transaction_id,
                        ..
                    }
                    | Command::Withdraw {
                        account,
                        transaction_id,
                        ..
                    },
                    Err(error),
                ) if is_business_refusal(error) => {
                    match model(account).cash.get(&(*account, *transaction_id)) {
                        Some(fact) if fact.refused.is_some() => None,
                        Some(fact) => Some(format!(
                            "answered {error}, but the log applied it at lsn {}",
                            fact.lsn
                        )),
                        None => Some(format!("answered {error}, but the refusal is not recorded")),
                    }
                }
                _ => None,
            };
            if let Some(problem) = problem {
                let mut v = Violation::new("oracle", format!("{:?}: {problem}", op.command));
                v.accounts.extend(cash_account(&op.command));
                v.op = Some(index);
                found.push(v);
                break;
            }
        }
    }
    cancel_reasons(state, found);
    for read in &state.history.reads {
        let QueryAnswer::Account(answer) = read.answer else {
            continue;
        };
        if !model(&read.account).was(&read.account, answer.as_ref(), read.sent_us, read.done_us) {
            found.push(
                Violation::new(
                    "oracle",
                    format!(
                        "client {} read {} as {answer:?} between {} and {} us; the log never had that state then",
                        read.client, read.account, read.sent_us, read.done_us
                    ),
                )
                .account(read.account),
            );
        }
    }
}

/// Every cross-partition transfer cancelled for a reason found at its destination had that
/// reason: the destination account was missing, held another currency, or the branch was
/// already cancelled there.
fn cancel_reasons(state: &FinalState<'_>, found: &mut Vec<Violation>) {
    for fin in state.finals {
        let Ok(ledger) = &fin.replayed else {
            continue;
        };
        for row in sorted_rows(ledger) {
            let (TransferState::Cancelled(reason) | TransferState::Cancelling(reason)) = row.state
            else {
                continue;
            };
            let t = row.transfer;
            let to = partition_of(&t.to, state.partitions);
            let model = &state.finals[to as usize].model;
            let account = model.accounts.get(&t.to);
            let justified = match reason {
                Reason::DestinationNotFound => account
                    .and_then(|a| a.versions.first())
                    .is_none_or(|opened| opened.timestamp > row.decided_at),
                Reason::DestinationCurrencyMismatch => {
                    account.is_some_and(|a| a.currency != t.currency)
                }
                Reason::CancelledBeforeTry => matches!(
                    state
                        .ledger(to)
                        .and_then(|l| l.credit(&t.key()))
                        .map(|c| c.state),
                    Some(CreditState::Cancelled | CreditState::TryNotSeen)
                ),
                _ => true,
            };
            if !justified {
                found.push(
                    Violation::new(
                        "oracle",
                        format!("transfer {:?} was cancelled for {reason:?}, which its destination does not show", t.key()),
                    )
                    .key(t.key()),
                );
            }
        }
    }
}

/// The account of a deposit or withdrawal.
fn cash_account(command: &Command) -> Option<AccountId> {
    match command {
        Command::Deposit { account, .. } | Command::Withdraw { account, .. } => Some(*account),
        _ => None,
    }
}

/// Whether `error` is a business refusal of a deposit or withdrawal, which the ledger records.
fn is_business_refusal(error: &LedgerError) -> bool {
    matches!(
        error,
        LedgerError::AccountNotFound(_)
            | LedgerError::CurrencyMismatch { .. }
            | LedgerError::InsufficientFunds { .. }
            | LedgerError::BalanceLimit(_)
    )
}

/// A short name of an event, for messages.
pub fn event_name(event: &Event) -> &'static str {
    match event {
        Event::AccountOpened { .. } => "AccountOpened",
        Event::Deposited { .. } => "Deposited",
        Event::Withdrawn { .. } => "Withdrawn",
        Event::Transferred { .. } => "Transferred",
        Event::TransferRejected { .. } => "TransferRejected",
        Event::DebitTried { .. } => "DebitTried",
        Event::TransferDecided { .. } => "TransferDecided",
        Event::DebitConfirmed { .. } => "DebitConfirmed",
        Event::DebitCancelled { .. } => "DebitCancelled",
        Event::CreditTried { .. } => "CreditTried",
        Event::CreditConfirmed { .. } => "CreditConfirmed",
        Event::CreditCancelled { .. } => "CreditCancelled",
        Event::CreditTryNotSeen { .. } => "CreditTryNotSeen",
        Event::CashRefused { .. } => "CashRefused",
    }
}

/// Whether `event` concerns transfer `key`.
pub fn event_mentions(event: &Event, key: &TransferKey) -> bool {
    match *event {
        Event::Transferred { transfer }
        | Event::TransferRejected { transfer, .. }
        | Event::DebitTried { transfer }
        | Event::CreditTried { transfer } => transfer.key() == *key,
        Event::TransferDecided { key: k, .. }
        | Event::DebitConfirmed { key: k }
        | Event::DebitCancelled { key: k }
        | Event::CreditConfirmed { key: k }
        | Event::CreditCancelled { key: k }
        | Event::CreditTryNotSeen { key: k } => k == *key,
        _ => false,
    }
}

/// The history of the transfers and accounts a violation involves: client attempts and log
/// events, for the failure report.
pub fn involved_history(
    violation: &Violation,
    finals: &[PartitionFinal],
    history: &HistoryState,
    out: &mut String,
) {
    const OPS_MAX: usize = 6;
    const EVENTS_MAX: usize = 40;
    if let Some(op) = violation.op.and_then(|i| history.ops.get(i)) {
        let _ = write!(out, "the request:\n{op}");
    }
    for key in violation.keys.iter().take(4) {
        let _ = writeln!(out, "transfer {key:?}:");
        for op in history
            .ops
            .iter()
            .filter(|op| {
                op.mentions(None, Some(&key.transaction_id)) && op.mentions(Some(&key.from), None)
            })
            .take(OPS_MAX)
        {
            let _ = write!(out, "{op}");
        }
        for fin in finals {
            for record in fin
                .records
                .iter()
                .filter(|r| event_mentions(&r.event, key))
                .take(EVENTS_MAX)
            {
                let _ = writeln!(
                    out,
                    "  log p{} lsn {} at {} us: {:?}",
                    fin.partition, record.lsn, record.timestamp, record.event
                );
            }
        }
    }
    for account in violation.accounts.iter().take(2) {
        let _ = writeln!(out, "account {account} (last requests):");
        let ops: Vec<_> = history
            .ops
            .iter()
            .filter(|op| op.mentions(Some(account), None))
            .collect();
        for op in ops.iter().rev().take(OPS_MAX).rev() {
            let _ = write!(out, "{op}");
        }
        let fin = &finals[partition_of(account, finals.len() as u32) as usize];
        let _ = writeln!(
            out,
            "  its last deposits and withdrawals in the log of p{}:",
            fin.partition
        );
        let cash: Vec<&Record> = fin
            .records
            .iter()
            .filter(|r| match r.event {
                Event::Deposited { account: a, .. } | Event::Withdrawn { account: a, .. } => {
                    a == *account
                }
                _ => false,
            })
            .collect();
        for record in cash.iter().rev().take(OPS_MAX).rev() {
            let _ = writeln!(
                out,
                "  log lsn {} at {} us: {:?}",
                record.lsn, record.timestamp, record.event
            );
        }
    }
}
