//! What the clients saw: every request, every attempt and its answer, with the (simulated)
//! wall-clock times it was sent and answered. The checkers hold the final logs against it.

use std::collections::BTreeMap;
use std::fmt;

use walletd_core::ledger::{Command, LedgerError, Reply, TransferStatus};
use walletd_core::model::event::{Reason, Timestamp, TransferKey};
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_runtime::driver::{CommandResult, QueryAnswer};

use crate::boundary::{Boundary, Hits};
use crate::shared::Shared;

/// The answer a client expects, decided when it builds the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// A valid request; its outcome is checked later against the logs.
    Valid,
    /// This error (compared by kind, see [`error_kind`]).
    Error(&'static str),
    /// A transfer that must not commit (its destination refuses it).
    NotCommitted,
    /// A repeat of an answered request: the same answer again (a refusal included).
    Same(CommandResult),
    /// This answer, which the client knows in advance because it alone uses the account
    /// and knows its balance (see [`crate::edges`]).
    Exactly(Reply),
    /// A transfer whose source the client knows covers it: anything but a rejection for
    /// insufficient funds.
    Accepted,
    /// A refund of `original`, a transfer the client saw committed: a transfer status (any
    /// refusal a refund of a committed transfer can get), or `NotRefundable` while the credit
    /// of an original across partitions (`local` false) is not confirmed yet. `beyond`: it
    /// asks for more than the original moved, which only `RefundExceedsOriginal` answers.
    Refund {
        original: TransferKey,
        local: bool,
        beyond: bool,
    },
    /// A hold request: placing, capturing or voiding one (see [`crate::holds`]).
    Hold(crate::holds::HoldExpect),
    /// A multi-leg transaction (see [`crate::transactions`]).
    Transaction(crate::transactions::TxExpect),
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Answer(CommandResult),
    /// The request or its reply was dropped, or the partition was down.
    Unavailable,
    /// No answer within the client's timeout.
    Timeout,
}

/// One attempt of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub sent_us: Timestamp,
    pub done_us: Timestamp,
    pub outcome: Outcome,
}

/// One client request and its attempts (all with the same transaction id and body).
#[derive(Debug, Clone)]
pub struct Op {
    pub client: u32,
    pub command: Command,
    /// A refund's source, the account its original reached (the command names only its
    /// partition).
    pub refund_from: Option<AccountId>,
    pub expect: Expect,
    pub attempts: Vec<Attempt>,
}

impl Op {
    /// Every answer the client got (several when a retry followed a `Pending`).
    pub fn answers(&self) -> impl Iterator<Item = (&Attempt, &CommandResult)> {
        self.attempts.iter().filter_map(|a| match &a.outcome {
            Outcome::Answer(result) => Some((a, result)),
            _ => None,
        })
    }

    /// The first definitive answer: anything but an unsettled one ([`unsettled`]).
    pub fn settled(&self) -> Option<&CommandResult> {
        self.answers().map(|(_, r)| r).find(|r| !unsettled(r))
    }

    /// The key of the transfer the op starts: a transfer's, a refund's own, or the hold's
    /// it places, captures or voids.
    pub fn transfer_key(&self) -> Option<TransferKey> {
        match self.command {
            Command::Transfer(t) => Some(t.key()),
            Command::Transact(ref tx) => Some(tx.key()),
            Command::Hold(_) | Command::Capture { .. } | Command::Void { .. } => {
                crate::holds::hold_key(&self.command)
            }
            Command::Refund(r) => Some(TransferKey {
                from: self.refund_from?,
                transaction_id: r.refund_id,
            }),
            _ => None,
        }
    }

    /// The account and transaction id of a deposit or withdrawal.
    pub fn cash_movement(&self) -> Option<(AccountId, TransactionId)> {
        match self.command {
            Command::Deposit {
                account,
                transaction_id,
                ..
            }
            | Command::Withdraw {
                account,
                transaction_id,
                ..
            } => Some((account, transaction_id)),
            _ => None,
        }
    }

    /// Whether the op concerns `account` or transaction id `txn`.
    pub fn mentions(&self, account: Option<&AccountId>, txn: Option<&TransactionId>) -> bool {
        let (accounts, id): (Vec<AccountId>, Option<TransactionId>) = match self.command {
            Command::OpenAccount { account, .. } => (vec![account], None),
            Command::Transfer(t) => (vec![t.from, t.to], Some(t.transaction_id)),
            Command::Transact(ref tx) => (
                tx.legs().flat_map(|l| [l.from, l.to]).collect(),
                Some(tx.transaction_id()),
            ),
            Command::Hold(ref h) => (
                vec![h.transfer.from, h.transfer.to],
                Some(h.transfer.transaction_id),
            ),
            Command::Capture { key, .. } | Command::Void { key } => {
                (vec![key.from], Some(key.transaction_id))
            }
            Command::Refund(r) => {
                let accounts = self.refund_from.into_iter().chain([r.original.from]);
                (accounts.collect(), Some(r.refund_id))
            }
            _ => match self.cash_movement() {
                Some((account, id)) => (vec![account], Some(id)),
                None => (vec![], None),
            },
        };
        account.is_some_and(|a| accounts.contains(a)) || (txn.is_some() && txn.copied() == id)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  client {} {:?} expect {:?}",
            self.client, self.command, self.expect
        )?;
        for attempt in &self.attempts {
            writeln!(
                f,
                "    sent {} us, done {} us: {:?}",
                attempt.sent_us, attempt.done_us, attempt.outcome
            )?;
        }
        Ok(())
    }
}

/// A read and its answer: an account's balance, or a transfer's body (`account` is then
/// the transfer's source).
#[derive(Debug, Clone)]
pub struct BalanceRead {
    pub client: u32,
    pub account: AccountId,
    pub sent_us: Timestamp,
    pub done_us: Timestamp,
    pub answer: QueryAnswer,
}

/// A contradiction a client noticed at once (a wrong error, a retry answered differently).
#[derive(Debug, Clone)]
pub struct ClientViolation {
    pub invariant: &'static str,
    pub op: usize,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct HistoryState {
    pub ops: Vec<Op>,
    pub reads: Vec<BalanceRead>,
    pub violations: Vec<ClientViolation>,
    /// The decision boundaries the clients saw themselves reach.
    pub hits: Hits,
    /// What the clients' probes of cut-off nodes did (see `Client::probe`).
    pub probes: Probes,
    /// The account each refund takes its money from, by refund id (unique in a run): the
    /// destination of the transfer it refunds, which the client that sends it knows.
    pub refund_sources: BTreeMap<TransactionId, AccountId>,
    /// The transfers between shared accounts the clients saw committed, which they may
    /// refund (see [`crate::refunds`]).
    pub board: crate::refunds::Board,
    /// How the clients' captures and voids raced their holds' expiry.
    pub hold_counts: crate::holds::HoldCounts,
}

/// Counts of the probes of a server node cut off from its peers: deposits sent through
/// another node, those acknowledged, and the reads through the cut-off node that followed
/// and were answered (each one a stale read unless that node still leads its group).
#[derive(Debug, Default, Clone, Copy)]
pub struct Probes {
    pub deposits: u64,
    pub acknowledged: u64,
    pub answered: u64,
}

/// The shared history of a run.
pub type History = Shared<HistoryState>;

impl History {
    /// Records a new op; returns its index.
    pub fn start(&self, client: u32, command: &Command, expect: Expect) -> usize {
        let mut state = self.lock();
        let refund_from = match command {
            Command::Refund(r) => state.refund_sources.get(&r.refund_id).copied(),
            _ => None,
        };
        state.ops.push(Op {
            client,
            command: command.clone(),
            refund_from,
            expect,
            attempts: Vec::new(),
        });
        state.ops.len() - 1
    }

    /// Records an attempt of op `op` and checks its answer against the expectation.
    pub fn attempt(&self, op: usize, attempt: Attempt) {
        let mut state = self.lock();
        let expect = state.ops[op].expect.clone();
        if let Outcome::Answer(result) = &attempt.outcome {
            if let Some((invariant, detail)) = contradiction(expect, result) {
                state.violations.push(ClientViolation {
                    invariant,
                    op,
                    detail,
                });
            }
        }
        state.ops[op].attempts.push(attempt);
    }

    /// The refund `refund_id` takes its money from `from` (its original's destination).
    pub fn refund_source(&self, refund_id: TransactionId, from: AccountId) {
        self.lock().refund_sources.insert(refund_id, from);
    }

    pub fn read(&self, read: BalanceRead) {
        self.lock().reads.push(read);
    }

    /// A client saw `boundary` reached.
    pub fn hit(&self, boundary: Boundary) {
        self.lock().hits.hit(boundary);
    }

    /// A contradiction a client noticed across several answers of op `op`.
    pub fn violation(&self, op: usize, invariant: &'static str, detail: String) {
        self.lock().violations.push(ClientViolation {
            invariant,
            op,
            detail,
        });
    }
}

/// Whether `result` says "not decided yet, ask again": a transfer still pending, or a
/// capture or void of a hold still being placed.
pub fn unsettled(result: &CommandResult) -> bool {
    matches!(
        result,
        Ok(Reply::Transfer(TransferStatus::Pending)) | Err(LedgerError::HoldBeingPlaced(_))
    )
}

/// The variant name of a ledger error, for comparing expected and actual errors.
pub fn error_kind(error: &LedgerError) -> &'static str {
    match error {
        LedgerError::AccountNotFound(_) => "AccountNotFound",
        LedgerError::AccountExists { .. } => "AccountExists",
        LedgerError::CurrencyMismatch { .. } => "CurrencyMismatch",
        LedgerError::InsufficientFunds { .. } => "InsufficientFunds",
        LedgerError::BalanceLimit(_) => "BalanceLimit",
        LedgerError::SameAccount => "SameAccount",
        LedgerError::Conflict(_) => "Conflict",
        LedgerError::WrongPartition { .. } => "WrongPartition",
        LedgerError::UnknownTransfer(_) => "UnknownTransfer",
        LedgerError::InvalidTransition { .. } => "InvalidTransition",
        LedgerError::Unreadable(_) => "Unreadable",
        LedgerError::NotRefundable(_) => "NotRefundable",
        LedgerError::NotAHold(_) => "NotAHold",
        LedgerError::HoldNotHeld(_) => "HoldNotHeld",
        LedgerError::HoldBeingPlaced(_) => "HoldBeingPlaced",
        LedgerError::CaptureExceedsHold { .. } => "CaptureExceedsHold",
        LedgerError::HoldAlreadyCaptured { .. } => "HoldAlreadyCaptured",
        LedgerError::HoldLimit(_) => "HoldLimit",
        LedgerError::InvalidAmount(_) => "InvalidAmount",
    }
}

/// Whether `error` is a business refusal, which the ledger records so that a repeat of the
/// request gets it again (not a conflict, nor a routing error).
pub fn is_business_refusal(error: &LedgerError) -> bool {
    matches!(
        error,
        LedgerError::AccountNotFound(_)
            | LedgerError::CurrencyMismatch { .. }
            | LedgerError::InsufficientFunds { .. }
            | LedgerError::BalanceLimit(_)
    )
}

/// The ledger error a transfer's recorded refusal stands for.
fn refusal_kind(reason: Reason) -> &'static str {
    match reason {
        Reason::SourceNotFound | Reason::DestinationNotFound => "AccountNotFound",
        Reason::SourceCurrencyMismatch | Reason::DestinationCurrencyMismatch => "CurrencyMismatch",
        Reason::DestinationBalanceLimit => "BalanceLimit",
        Reason::InsufficientFunds => "InsufficientFunds",
        Reason::SameAccount => "SameAccount",
        Reason::Timeout | Reason::CancelledBeforeTry | Reason::HoldVoided | Reason::HoldExpired => {
            "Cancelled"
        }
        Reason::RefundExceedsOriginal => "RefundExceedsOriginal",
    }
}

/// Whether `result` contradicts `expect`: the invariant it breaks and why.
fn contradiction(expect: Expect, result: &CommandResult) -> Option<(&'static str, String)> {
    let pending = Ok(Reply::Transfer(TransferStatus::Pending));
    // A capture or void (or its repeat) of a hold still being placed decided nothing: the
    // client asks again, and the answer it then gets is checked.
    let being_placed = matches!(result, Err(LedgerError::HoldBeingPlaced(_)));
    if being_placed && matches!(expect, Expect::Hold(_) | Expect::Same(_)) {
        return None;
    }
    match expect {
        Expect::Valid => None,
        Expect::Error(kind) => match result {
            Err(error) if error_kind(error) == kind => None,
            // A transfer's business refusal is recorded and answered as a rejection.
            Ok(Reply::Transfer(TransferStatus::Rejected(reason)))
                if refusal_kind(*reason) == kind =>
            {
                None
            }
            other => Some(("oracle", format!("expected {kind}, got {other:?}"))),
        },
        Expect::NotCommitted => transfer_but_not(
            result,
            TransferStatus::Committed,
            "a transfer its destination must refuse was committed",
        ),
        Expect::Accepted => transfer_but_not(
            result,
            TransferStatus::Rejected(Reason::InsufficientFunds),
            "a transfer the client knew its balance covers was rejected for funds",
        ),
        Expect::Same(first) if *result == first || *result == pending => None,
        Expect::Same(first) => Some((
            "exactly_once",
            format!("a repeat of a request answered {first:?} was answered {result:?}"),
        )),
        Expect::Refund {
            original,
            local,
            beyond,
        } => refund_contradiction(original, local, beyond, result)
            .map(|why| ("oracle", format!("{why}: {result:?}"))),
        Expect::Hold(expect) => crate::holds::contradiction(expect, result)
            .map(|why| ("oracle", format!("{why}: {result:?}"))),
        Expect::Transaction(expect) => {
            crate::transactions::contradiction(expect, result).map(|why| ("oracle", why))
        }
        Expect::Exactly(want) if *result == Ok(want) => None,
        Expect::Exactly(want) => Some((
            "oracle",
            format!("the client knew the balance: expected {want:?}, got {result:?}"),
        )),
    }
}

/// What is wrong with `result` as the answer to a refund of `original` (see
/// [`Expect::Refund`]), if anything.
fn refund_contradiction(
    original: TransferKey,
    local: bool,
    beyond: bool,
    result: &CommandResult,
) -> Option<&'static str> {
    match result {
        Ok(Reply::Transfer(TransferStatus::Rejected(Reason::RefundExceedsOriginal))) => None,
        Ok(Reply::Transfer(_)) if beyond => {
            Some("a refund of more than its original moved was not refused for it")
        }
        // A refusal of a transfer from the refund's source (which holds the original's
        // currency), or a refund whose record a crash took while its Try was out, abandoned
        // by its home when its destination asked.
        Ok(Reply::Transfer(TransferStatus::Rejected(
            Reason::InsufficientFunds | Reason::DestinationBalanceLimit | Reason::Timeout,
        ))) => None,
        Ok(Reply::Transfer(TransferStatus::Rejected(_))) => {
            Some("a refund of a committed transfer refused for a reason no such refund has")
        }
        Ok(Reply::Transfer(_)) => None,
        Err(LedgerError::NotRefundable(key)) if *key == original && !local => None,
        Err(LedgerError::NotRefundable(key)) if *key == original => {
            Some("a transfer within one partition, answered committed, was not refundable")
        }
        _ => Some("expected a refund's answer"),
    }
}

/// Whether `result` is anything but a transfer status other than `refused`: the oracle's
/// complaint, `why` when it is `refused`.
fn transfer_but_not(
    result: &CommandResult,
    refused: TransferStatus,
    why: &str,
) -> Option<(&'static str, String)> {
    match result {
        Ok(Reply::Transfer(status)) if *status == refused => Some(("oracle", why.to_string())),
        Ok(Reply::Transfer(_)) => None,
        other => Some((
            "oracle",
            format!("expected a transfer status, got {other:?}"),
        )),
    }
}
