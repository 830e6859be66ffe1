//! The invariants of DESIGN section 5 at the end of a run, each a named check over its final
//! state: the durable bytes of every partition's log, the replayed and recovered ledgers, what
//! the live cluster answers after quiescing, and the history of what clients were told.
//!
//! The invariants themselves are core's ([`walletd_core::protocol::invariants`]), shared with
//! the core's tests and `wallet verify`; what stays here is what only the simulator knows:
//! the oracle (an independent model of each log, and the clients' history held against it),
//! whether the cluster quiesced, and what the live cluster answers. What must hold at every
//! instant is checked while the run goes, in [`crate::live`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use walletd_core::ledger::{
    ApplyError, Command, CreditState, Ledger, Refund, Reply, TransferRow, TransferState,
    TransferStatus,
};
use walletd_core::log::codec::Record;
use walletd_core::model::event::{Event, Reason, TransferKey};
use walletd_core::model::ids::AccountId;
use walletd_core::model::partition::{partition_of, PartitionId};
use walletd_core::protocol::invariants::{self, Invariant, Moment};
use walletd_runtime::driver::{CommandResult, QueryAnswer};

use crate::history::{is_business_refusal, Attempt, HistoryState, Op};
use crate::model::Model;

/// The invariants, in the order they are checked and reported: core's, with the oracle
/// before the protocol, then what only a sweep or a crash shows.
pub const INVARIANTS: [&str; 31] = [
    "no_hanging",
    "exactly_once",
    "refund_cap",
    "hold_once",
    "hold_expiry",
    "hold_capture",
    "tx_once",
    "tx_atomicity",
    "no_negative",
    "conservation",
    "atomicity",
    "durability",
    "durable_decision",
    "durable_release",
    "replay",
    "damage_refused",
    "commit_point",
    "log_matching",
    ONE_LEADER_PER_TERM,
    crate::nemesis::REJOIN,
    crate::mover::MOVES,
    crate::mover::LINKED,
    crate::liveness::LIVENESS,
    crate::replicas::REMOVED_COPY,
    crate::nemesis::SLOW_FOLLOWER,
    crate::reads::LINEARIZABLE_READS,
    crate::reads::BODY_READS,
    "oracle",
    "protocol",
    "determinism",
    "node_panic",
];

/// Two replicas of one partition led the same term (replicated runs).
pub const ONE_LEADER_PER_TERM: &str = "one_leader_per_term";

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

    pub(crate) fn key(mut self, key: TransferKey) -> Violation {
        self.keys.push(key);
        self
    }

    fn account(mut self, account: AccountId) -> Violation {
        self.accounts.push(account);
        self
    }
}

impl From<invariants::Violation> for Violation {
    fn from(violation: invariants::Violation) -> Violation {
        let mut v = Violation::new(violation.invariant().name(), violation.to_string());
        v.keys.extend(violation.key());
        // A refund's history, then its original's.
        if let invariants::Violation::RefundCap { original, .. } = violation {
            v.keys.push(original);
        }
        v.accounts.extend(violation.account());
        v
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
    pub replayed: Result<Ledger, ApplyError>,
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
    /// Restarts on damaged synced data that did not refuse it, naming it (see
    /// [`crate::storage_faults`]).
    pub damage_not_refused: &'a [String],
    /// Replicated runs: replicas whose logs disagree, and terms with two leaders (see
    /// [`crate::replica_logs`] and [`crate::replicas`]).
    pub replication: &'a [Violation],
}

impl FinalState<'_> {
    pub(crate) fn ledger(&self, partition: PartitionId) -> Option<&Ledger> {
        self.finals[partition as usize].replayed.as_ref().ok()
    }

    pub(crate) fn home_row(&self, key: &TransferKey) -> Option<TransferRow> {
        self.ledger(partition_of(&key.from, self.partitions))?
            .transfer(key)
    }

    /// The replayed ledgers, `None` where a log did not replay.
    fn cut(&self) -> Vec<Option<&Ledger>> {
        self.finals
            .iter()
            .map(|f| f.replayed.as_ref().ok())
            .collect()
    }
}

/// Runs every checker; returns the violations found, in the order of [`INVARIANTS`].
pub fn check(state: &FinalState<'_>) -> Vec<Violation> {
    let mut found = Vec::new();
    logs(state, &mut found);
    transactions(state, &mut found);
    ledgers(state, &mut found);
    atomicity(state, &mut found);
    durability(state, &mut found);
    replay(state, &mut found);
    found.extend(
        state
            .damage_not_refused
            .iter()
            .map(|what| Violation::new("damage_refused", what.clone())),
    );
    found.extend(state.replication.iter().cloned());
    crate::reads::check(state, &mut found);
    crate::reads::check_bodies(state, &mut found);
    oracle(state, &mut found);
    if state.protocol_violations > 0 {
        found.push(Violation::new(
            Invariant::Protocol.name(),
            format!(
                "coordinators counted {} TC/C protocol violations (a destination answered against a logged decision)",
                state.protocol_violations
            ),
        ));
    }
    found.sort_by_key(|v| INVARIANTS.iter().position(|i| *i == v.invariant));
    found
}

/// Exactly once, no hanging, every record on its partition, the refund cap: a scan of every
/// durable log; and each log replays (no overdraft), as the independent model agrees.
fn logs(state: &FinalState<'_>, found: &mut Vec<Violation>) {
    for fin in state.finals {
        let scanned = invariants::scan_log(fin.partition, state.partitions, &fin.records);
        found.extend(scanned.into_iter().map(Violation::from));
        let refunds = invariants::scan_refunds(fin.partition, &fin.records);
        found.extend(refunds.into_iter().map(Violation::from));
        let holds = invariants::scan_holds(fin.partition, &fin.records);
        found.extend(holds.into_iter().map(Violation::from));
        let transactions =
            invariants::scan_transactions(fin.partition, state.partitions, &fin.records);
        found.extend(transactions.into_iter().map(Violation::from));
        if let Err(error) = &fin.replayed {
            found.push(invariants::apply_failed(fin.partition, error.clone()).into());
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

/// All or nothing for every multi-leg transaction, over the final logs of every partition
/// (at rest, when the cluster quiesced: every side final, every participant of a committed
/// transaction confirmed).
fn transactions(state: &FinalState<'_>, found: &mut Vec<Violation>) {
    let scans: Vec<invariants::TransactionScan> = (state.finals.iter())
        .map(|fin| {
            let mut scan = invariants::TransactionScan::new(fin.partition, state.partitions);
            for record in &fin.records {
                // Each log's own order is `tx_once`, reported by `logs`.
                let _ = scan.record(record);
            }
            scan
        })
        .collect();
    let scans: Vec<&invariants::TransactionScan> = scans.iter().collect();
    let agree = invariants::transactions_agree(&scans, state.quiesced);
    found.extend(agree.into_iter().map(Violation::from));
}

/// Each replayed ledger's own books, holds and balances; and conservation across all of
/// them, when every log replayed.
fn ledgers(state: &FinalState<'_>, found: &mut Vec<Violation>) {
    let cut = state.cut();
    for ledger in cut.iter().flatten() {
        found.extend(invariants::books(ledger).err().map(Violation::from));
        found.extend(invariants::holds(ledger).into_iter().map(Violation::from));
        found.extend(
            invariants::balances_in_range(ledger)
                .err()
                .map(Violation::from),
        );
    }
    let all: Option<Vec<&Ledger>> = cut.into_iter().collect();
    if let Some(all) = all {
        found.extend(invariants::conservation(&all).err().map(Violation::from));
    }
}

/// After quiescing: the cluster did quiesce, and every transfer is final and agrees on both
/// sides, with nothing held or pending.
fn atomicity(state: &FinalState<'_>, found: &mut Vec<Violation>) {
    if !state.quiesced {
        found.push(Violation::new(
            Invariant::Atomicity.name(),
            "the cluster did not quiesce (transfers still in flight) within the heal period",
        ));
    }
    let agreement = invariants::transfers_agree(&state.cut(), Moment::AtRest);
    found.extend(agreement.violations.into_iter().map(Violation::from));
    crate::hold_checks::at_rest(state, found);
}

fn sorted_rows(ledger: &Ledger) -> Vec<TransferRow> {
    let mut rows: Vec<TransferRow> = ledger.transfers().collect();
    rows.sort_by_key(|r| r.transfer.key());
    rows
}

/// Every outcome acknowledged to a client is in the final logs with that outcome.
fn durability<'a>(state: &'a FinalState<'a>, found: &mut Vec<Violation>) {
    each_answer(state, Invariant::Durability.name(), not_kept, found);
}

/// One answer a client got, with the final state it is held against.
#[derive(Clone, Copy)]
struct Answer<'a> {
    state: &'a FinalState<'a>,
    op: &'a Op,
    attempt: &'a Attempt,
    result: &'a CommandResult,
}

/// A check of one answer: what is wrong with it, if anything.
type AnswerCheck = fn(Answer<'_>) -> Option<String>;

/// Holds every answer of every client request against `check`; the first problem of each
/// request is a violation of `invariant`.
fn each_answer<'a>(
    state: &'a FinalState<'a>,
    invariant: &'static str,
    check: AnswerCheck,
    found: &mut Vec<Violation>,
) {
    for (index, op) in state.history.ops.iter().enumerate() {
        let problem = op.answers().find_map(|(attempt, result)| {
            check(Answer {
                state,
                op,
                attempt,
                result,
            })
        });
        if let Some(problem) = problem {
            let mut v = Violation::new(invariant, format!("{:?}: {problem}", op.command));
            v.keys.extend(op.transfer_key());
            v.accounts
                .extend(op.cash_movement().map(|(account, _)| account));
            v.op = Some(index);
            found.push(v);
        }
    }
}

/// How the final logs break what a request was answered, if they do.
fn not_kept(answer: Answer<'_>) -> Option<String> {
    let Answer {
        state,
        op,
        attempt,
        result,
    } = answer;
    match (&op.command, result) {
        (Command::Transfer(t), Ok(Reply::Transfer(status))) => {
            invariants::acknowledged(t, *status, state.home_row(&t.key()))
                .err()
                .map(|v| format!("{v} (acknowledged at {} us)", attempt.done_us))
        }
        (Command::Transact(tx), Ok(Reply::Transfer(status))) => {
            invariants::acknowledged(&tx.first_leg(), *status, state.home_row(&tx.key()))
                .err()
                .map(|v| format!("{v} (acknowledged at {} us)", attempt.done_us))
        }
        (Command::Hold(_) | Command::Capture { .. } | Command::Void { .. }, _) => {
            crate::hold_checks::kept(state, op, result)
                .map(|why| format!("{why} (acknowledged at {} us)", attempt.done_us))
        }
        (Command::Refund(r), Ok(Reply::Transfer(status))) => {
            refund_kept(state, r, op.transfer_key()?, *status)
                .map(|why| format!("{why} (acknowledged at {} us)", attempt.done_us))
        }
        (Command::Deposit { .. } | Command::Withdraw { .. }, Ok(Reply::Balance { balance })) => {
            let (account, transaction_id) = op.cash_movement()?;
            let model = &state.finals[partition_of(&account, state.partitions) as usize].model;
            (!model.cash.contains_key(&(account, transaction_id))).then(|| {
                format!(
                    "acknowledged with balance {balance} at {} us, the final log has no such movement",
                    attempt.done_us
                )
            })
        }
        (Command::OpenAccount { account, .. }, Ok(Reply::Opened { .. })) => {
            let p = partition_of(account, state.partitions);
            (state.ledger(p).map(|l| l.account(account).is_some()) == Some(false))
                .then(|| "acknowledged as opened, missing from the final log".into())
        }
        _ => None,
    }
}

/// How the final log of its home breaks what refund `r`, recorded under `key`, was answered
/// (`told`), if it does: its row must be a refund of the same original, to its source, of the
/// amount asked (if one was), in the state the client was told.
fn refund_kept(
    state: &FinalState<'_>,
    r: &Refund,
    key: TransferKey,
    told: TransferStatus,
) -> Option<String> {
    let ledger = state.ledger(r.partition)?;
    let row = ledger.transfer(&key);
    let of = ledger.refund_of(&key);
    match row {
        Some(row)
            if of == Some(r.original.transaction_id)
                && row.transfer.to == r.original.from
                && r.amount.is_none_or(|a| a == row.transfer.amount) =>
        {
            invariants::acknowledged(&row.transfer, told, Some(row))
                .err()
                .map(|v| v.to_string())
        }
        // A refund whose record a crash took while its Try was out, abandoned when its
        // destination asked: its home recorded the abandoned transfer alone, no refund.
        Some(row)
            if of.is_none()
                && told == TransferStatus::Rejected(Reason::Timeout)
                && row.state == TransferState::Rejected(Reason::Timeout)
                && row.transfer.to == r.original.from
                && r.amount.is_none_or(|a| a == row.transfer.amount) =>
        {
            None
        }
        Some(row) => Some(format!(
            "refund {key:?} acknowledged {told:?}, its home holds {:?} ({:?}), a refund of {of:?}",
            row.transfer, row.state
        )),
        None => Some(format!(
            "refund {key:?} acknowledged {told:?}, its home holds no row"
        )),
    }
}

/// Replay from zero equals what recovery (snapshot plus log) rebuilds and what the live
/// cluster answers.
fn replay(state: &FinalState<'_>, found: &mut Vec<Violation>) {
    let replay = Invariant::Replay.name();
    for message in state.fatal {
        found.push(Violation::new(replay, message.clone()));
    }
    for fin in state.finals {
        if let Some(error) = &fin.decode_error {
            found.push(Violation::new(
                replay,
                format!(
                    "partition {}: the durable log does not decode: {error}",
                    fin.partition
                ),
            ));
        }
        match (&fin.replayed, &fin.recovered) {
            (Ok(replayed), Ok(recovered)) => found.extend(
                invariants::replay_matches(replayed, recovered, "recovery (snapshot and log)")
                    .err()
                    .map(Violation::from),
            ),
            (_, Err(error)) => found.push(Violation::new(
                replay,
                format!(
                    "partition {}: recovery from the final disk fails: {error}",
                    fin.partition
                ),
            )),
            (Err(_), _) => {}
        }
    }
    live_answers(state, found);
}

/// The live cluster's answers for every account and every transfer a client asked about
/// equal the replayed ledgers.
fn live_answers(state: &FinalState<'_>, found: &mut Vec<Violation>) {
    let replay = Invariant::Replay.name();
    for (account, answer) in &state.live.accounts {
        let p = partition_of(account, state.partitions);
        let Some(ledger) = state.ledger(p) else {
            continue;
        };
        let expected = QueryAnswer::Account(ledger.account(account).copied());
        let problem = match answer {
            Some(answer) if *answer == expected => continue,
            Some(answer) => {
                format!("live {account} is {answer:?}, replay of the log gives {expected:?}")
            }
            None => format!("the live cluster did not answer for {account}"),
        };
        found.push(Violation::new(replay, problem).account(*account));
    }
    for (key, answer) in &state.live.transfers {
        let expected = QueryAnswer::Transfer(state.home_row(key));
        if let Some(answer) = answer {
            if *answer != expected {
                found.push(
                    Violation::new(
                        replay,
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
fn oracle<'a>(state: &'a FinalState<'a>, found: &mut Vec<Violation>) {
    for violation in &state.history.violations {
        let op = &state.history.ops[violation.op];
        let mut v = Violation::new(
            violation.invariant,
            format!("{:?}: {}", op.command, violation.detail),
        );
        v.keys.extend(op.transfer_key());
        v.accounts
            .extend(op.cash_movement().map(|(account, _)| account));
        v.op = Some(violation.op);
        found.push(v);
    }
    each_answer(state, "oracle", not_modelled, found);
    crate::hold_checks::told_once(state, found);
    cancel_reasons(state, found);
    balance_reads(state, found);
}

/// The model of `account`'s partition.
fn model_of<'a>(state: &'a FinalState<'_>, account: &AccountId) -> &'a Model {
    &state.finals[partition_of(account, state.partitions) as usize].model
}

/// How the model contradicts what a request was answered, if it does: an acknowledged
/// balance, or a refusal for insufficient funds.
fn not_modelled(answer: Answer<'_>) -> Option<String> {
    let state = answer.state;
    match (&answer.op.command, answer.result) {
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
        ) => match model_of(state, account)
            .cash
            .get(&(*account, *transaction_id))
        {
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
        // A business refusal is recorded, and the record was right when it was made (the
        // model checks it at its lsn), so every answer to the id repeats it.
        (_, Err(error)) if is_business_refusal(error) => {
            let key = answer.op.cash_movement()?;
            match model_of(state, &key.0).cash.get(&key) {
                Some(fact) if fact.refused.is_some() => None,
                Some(fact) => Some(format!(
                    "answered {error}, but the log applied it at lsn {}",
                    fact.lsn
                )),
                None => Some(format!("answered {error}, but the refusal is not recorded")),
            }
        }
        _ => None,
    }
}

/// Every balance read matches a state the account had while the read was in flight.
fn balance_reads(state: &FinalState<'_>, found: &mut Vec<Violation>) {
    for read in &state.history.reads {
        let QueryAnswer::Account(answer) = read.answer else {
            continue;
        };
        let model = model_of(state, &read.account);
        if !model.was(&read.account, answer.as_ref(), read.sent_us, read.done_us) {
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
            let mut t = row.transfer;
            // A multi-leg transaction: the reason is its failed leg's, at that leg's
            // account (of its destination, or of its source for the source's reasons).
            if let Some(terms) = ledger.transaction(&t.key()) {
                let Some(leg) =
                    (terms.failed_leg).and_then(|leg| terms.tx.legs().get(usize::from(leg)))
                else {
                    continue;
                };
                let source = matches!(
                    reason,
                    Reason::SourceNotFound | Reason::SourceCurrencyMismatch
                );
                t.to = if source { leg.from } else { leg.to };
                t.currency = leg.currency;
            }
            let reason = match reason {
                Reason::SourceNotFound if ledger.transaction(&t.key()).is_some() => {
                    Reason::DestinationNotFound
                }
                Reason::SourceCurrencyMismatch if ledger.transaction(&t.key()).is_some() => {
                    Reason::DestinationCurrencyMismatch
                }
                other => other,
            };
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
                Reason::CancelledBeforeTry if ledger.transaction(&t.key()).is_some() => true,
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
        Event::CashRefused(_) => "CashRefused",
        Event::RefundAccepted { .. } => "RefundAccepted",
        Event::RefundRejected { .. } => "RefundRejected",
        Event::HoldPlaced { .. } => "HoldPlaced",
        Event::HoldEstablished { .. } => "HoldEstablished",
        Event::HoldCaptured { .. } => "HoldCaptured",
        Event::HoldReleased { .. } => "HoldReleased",
        Event::CreditCaptured { .. } => "CreditCaptured",
        Event::TransactionApplied { .. } => "TransactionApplied",
        Event::TransactionRejected { .. } => "TransactionRejected",
        Event::TransactionTried { .. } => "TransactionTried",
        Event::TransactionRefused { .. } => "TransactionRefused",
        Event::TransactionCancelling { .. } => "TransactionCancelling",
        Event::TransactionConfirmed { .. } => "TransactionConfirmed",
        Event::TransactionCancelled { .. } => "TransactionCancelled",
    }
}

/// Whether `event` concerns transfer `key` (a refund of it included).
pub fn event_mentions(event: &Event, key: &TransferKey) -> bool {
    if let Event::RefundAccepted {
        refund, original, ..
    }
    | Event::RefundRejected {
        refund, original, ..
    } = *event
    {
        if Event::refund_original(&refund, original) == *key {
            return true;
        }
    }
    match event.effect() {
        Event::Transferred { transfer }
        | Event::TransferRejected { transfer, .. }
        | Event::DebitTried { transfer }
        | Event::CreditTried { transfer }
        | Event::HoldPlaced { hold: transfer, .. }
        | Event::HoldCaptured { hold: transfer, .. }
        | Event::HoldReleased { hold: transfer, .. } => transfer.key() == *key,
        Event::TransferDecided { key: k, .. }
        | Event::HoldEstablished { key: k }
        | Event::CreditCaptured { key: k, .. }
        | Event::DebitConfirmed { key: k }
        | Event::DebitCancelled { key: k }
        | Event::CreditConfirmed { key: k }
        | Event::CreditCancelled { key: k }
        | Event::CreditTryNotSeen { key: k } => k == *key,
        Event::TransactionApplied { tx }
        | Event::TransactionRejected { tx, .. }
        | Event::TransactionTried { tx } => tx.key() == *key,
        Event::TransactionRefused { key: k, .. }
        | Event::TransactionCancelling { key: k, .. }
        | Event::TransactionConfirmed { key: k }
        | Event::TransactionCancelled { key: k } => k == *key,
        _ => false,
    }
}

/// Client requests and log records shown per transfer or account of a failure report.
const OPS_MAX: usize = 6;
const EVENTS_MAX: usize = 40;

/// The history of the transfers and accounts a violation involves: client attempts and log
/// events, for the failure report.
pub fn involved_history(
    violation: &Violation,
    finals: &[PartitionFinal],
    history: &HistoryState,
    out: &mut String,
) {
    if let Some(op) = violation.op.and_then(|i| history.ops.get(i)) {
        let _ = write!(out, "the request:\n{op}");
    }
    for key in violation.keys.iter().take(4) {
        transfer_history(key, finals, history, out);
    }
    for account in violation.accounts.iter().take(2) {
        account_history(account, finals, history, out);
    }
}

/// Every client attempt and log event of transfer `key`.
fn transfer_history(
    key: &TransferKey,
    finals: &[PartitionFinal],
    history: &HistoryState,
    out: &mut String,
) {
    let _ = writeln!(out, "transfer {key:?}:");
    for op in history
        .ops
        .iter()
        .filter(|op| {
            (op.mentions(None, Some(&key.transaction_id)) && op.mentions(Some(&key.from), None))
                || matches!(&op.command, Command::Refund(r) if r.original == *key)
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

/// The last requests about `account`, and its last deposits and withdrawals in the log.
fn account_history(
    account: &AccountId,
    finals: &[PartitionFinal],
    history: &HistoryState,
    out: &mut String,
) {
    let _ = writeln!(out, "account {account} (last requests):");
    let ops: Vec<_> = history
        .ops
        .iter()
        .filter(|op| op.mentions(Some(account), None))
        .collect();
    for op in ops.iter().rev().take(OPS_MAX).rev() {
        let _ = write!(out, "{op}");
    }
    // A run stopped by a live check has no final logs to show.
    if finals.is_empty() {
        return;
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
