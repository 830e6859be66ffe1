//! The partition ledger: the state of one partition and the rules that change it.
//!
//! Business rules live only in [`Ledger::decide`], which reads the state and a [`Command`]
//! and either returns the events to append or a [`LedgerError`] (and then nothing changes).
//! [`Ledger::apply`] folds an event into the state without deciding anything; replaying a log
//! is calling it once per record. The ledger plays both TC/C roles of DESIGN section 3: the
//! *source* (home) side keeps the idempotency record and phase row of every transfer that
//! starts here, the *destination* side keeps the barrier rows of transfers that credit here.

// `LedgerError` names transfer keys, whose two ids are stored inline (see `ids`) so that
// refusing a command never allocates; that makes it larger than clippy's default bound for
// an `Err`. Refusals are rare next to the work of deciding, so moving it costs nothing.
#![allow(clippy::result_large_err)]

pub(crate) mod account_index;
pub(crate) mod account_table;
pub(crate) mod cash_table;
pub(crate) mod chunked;
pub mod cold;
mod dry_run;
pub(crate) mod holds;
pub(crate) mod id_arena;
pub(crate) mod key_map;
pub(crate) mod keyed_table;
pub(crate) mod refunds;
pub(crate) mod row_index;
pub(crate) mod row_terms;
use row_terms::{RowKind, RowTerms};
pub(crate) mod transactions;
pub(crate) mod transfer_table;

pub use crate::model::event::{CashKind, CashRefusal, CashRefused};
pub use dry_run::DryRun;
use holds::HoldTable;
pub use holds::{Hold, HoldEnd, HoldTerms, HOLD_EXPIRES_IN_MS_MAX, OPEN_HOLDS_MAX};
pub use refunds::Refund;
use refunds::RefundTable;
pub use transactions::{PartRow, PartState, TransactionTerms};
pub use transfer_table::CHUNK_ROWS;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::ledger::account_table::AccountTable;
use crate::ledger::cash_table::CashTable;
use crate::ledger::cold::{ChunkRead, ColdError};
use crate::ledger::transfer_table::{Credit, Found, TransferTable, Vacancy};
use crate::model::event::{Decision, Event, Lsn, Reason, Timestamp, Transfer, TransferKey};
use crate::model::ids::{AccountId, TransactionId};
use crate::model::money::{format_minor, Amount, Currency, WrittenAmount, BALANCE_MINOR_MAX};
use crate::model::partition::{partition_of, PartitionId};
use crate::model::transaction::Transaction;
#[cfg(any(test, madsim, feature = "testing"))]
use crate::protocol::bugs::Bug;

/// One account: a single currency, an available balance and money in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub currency: Currency,
    /// Available balance in minor units; never negative by construction (`u64`).
    pub balance: u64,
    /// Debited by a Try, not yet confirmed or cancelled (source side).
    pub held: u64,
    /// Pending credits of Tries not yet confirmed or cancelled (destination side). Counted at
    /// Try so that a later Confirm can never push the balance past [`BALANCE_MINOR_MAX`].
    pub incoming: u64,
}

impl Account {
    /// Whether money in `currency` may move in or out of this account. An account keeps the
    /// currency it was opened in, so anything else would mix currencies in one balance and
    /// break the per-currency conservation law.
    #[inline]
    fn holds(&self, currency: Currency) -> bool {
        self.currency == currency
    }

    /// Whether `minor` can be debited from the available balance. Money on hold or pending is
    /// not available, and a balance never goes negative.
    #[inline]
    fn covers(&self, minor: u64) -> bool {
        self.balance >= minor
    }

    /// Whether `minor` more can be credited without the balance ever passing
    /// [`BALANCE_MINOR_MAX`]. Holds count because a Cancel returns them to the balance, and
    /// pending credits count because a Confirm adds them; neither can be refused later.
    #[inline]
    fn has_room_for(&self, minor: u64) -> bool {
        // Each term is at most BALANCE_MINOR_MAX (10^18): the sum stays far below u64::MAX.
        self.balance + self.held + self.incoming + minor <= BALANCE_MINOR_MAX
    }
}

/// The phase row of a transfer at its home partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferState {
    /// Cross-partition: source debited into a hold, destination Try outstanding.
    Trying,
    /// Decision to confirm is durable; destination Confirm not yet acknowledged.
    Confirming,
    /// Decision to cancel is durable; destination Cancel not yet acknowledged.
    Cancelling(Reason),
    /// Final: money moved.
    Committed,
    /// Final: money returned to the source after a Try.
    Cancelled(Reason),
    /// Final: refused at the home partition; nothing moved.
    Rejected(Reason),
    /// A hold, held: its amount is out of the source's balance and counted as incoming at
    /// its destination, until a capture, a void or its expiry ends it (see [`holds`]).
    Held,
    /// Final: a hold captured (what of it is in the row's terms, see [`row_terms`]).
    Captured,
}

impl TransferState {
    /// What a client is told about a transfer in this state.
    pub fn status(self) -> TransferStatus {
        match self {
            TransferState::Trying => TransferStatus::Pending,
            // A logged Confirm decision is never reversed, so the transfer is committed for
            // the client even while the destination's acknowledgement is outstanding.
            TransferState::Confirming | TransferState::Committed => TransferStatus::Committed,
            TransferState::Cancelling(r) | TransferState::Cancelled(r) => {
                TransferStatus::Cancelled(r)
            }
            TransferState::Rejected(r) => TransferStatus::Rejected(r),
            TransferState::Held => TransferStatus::Held,
            TransferState::Captured => TransferStatus::Captured,
        }
    }

    /// Whether this row may still change: the coordinator has work to do for it, or it is
    /// a hold waiting for its end.
    pub fn is_unfinished(self) -> bool {
        matches!(
            self,
            TransferState::Trying
                | TransferState::Confirming
                | TransferState::Cancelling(_)
                | TransferState::Held
        )
    }

    /// The phase that logging `decision` moves this row to. Only a row still `Trying` takes a
    /// decision: once logged, a decision is never reversed.
    #[inline]
    fn after_decision(self, decision: Decision) -> Option<TransferState> {
        match (self, decision) {
            (TransferState::Trying, Decision::Confirm) => Some(TransferState::Confirming),
            (TransferState::Trying, Decision::Cancel(reason)) => {
                Some(TransferState::Cancelling(reason))
            }
            _ => None,
        }
    }

    /// The logged decision that the destination has not acknowledged yet: what finishing the
    /// row carries out. `None` when nothing awaits an acknowledgement, before the decision or
    /// after the finish.
    #[inline]
    fn unacknowledged(self) -> Option<Decision> {
        match self {
            TransferState::Confirming => Some(Decision::Confirm),
            TransferState::Cancelling(reason) => Some(Decision::Cancel(reason)),
            _ => None,
        }
    }
}

/// The client-visible outcome of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferStatus {
    Pending,
    Committed,
    Rejected(Reason),
    Cancelled(Reason),
    /// A hold, held: a capture, a void or its expiry ends it.
    Held,
    /// A hold captured.
    Captured,
}

/// The home-side row of a transfer: idempotency record and phase status in one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferRow {
    pub transfer: Transfer,
    pub state: TransferState,
    /// Whether the destination lives on another partition (TC/C) or here (one event).
    pub remote: bool,
    pub accepted_at: Timestamp,
    /// When the second-phase decision was logged (0 until then).
    pub decided_at: Timestamp,
    /// When the row became final (0 until then).
    pub finished_at: Timestamp,
}

/// A row of a partition's transfers table: the home row of a transfer whose source is on
/// the partition, the credit row of a transfer into it from another partition, or this
/// partition's row of a multi-leg transaction another partition is home of (its *part*:
/// whether it is tried here; the rest of it, [`PartRow`], is the row's terms). A key has at
/// most one: a transfer's or transaction's home is its source's partition, credit rows and
/// parts are only kept on others, and a home records a key once, for a transfer or a
/// transaction (see [`transfer_table`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableRow {
    Home(TransferRow),
    Credit(TransferKey, CreditRow),
    Part { key: TransferKey, tried: bool },
}

impl TableRow {
    pub fn key(&self) -> TransferKey {
        match self {
            TableRow::Home(row) => row.transfer.key(),
            TableRow::Credit(key, _) | TableRow::Part { key, .. } => *key,
        }
    }

    /// The home row, if this is one.
    pub fn home(self) -> Option<TransferRow> {
        match self {
            TableRow::Home(row) => Some(row),
            TableRow::Credit(..) | TableRow::Part { .. } => None,
        }
    }

    /// Whether the row may still change: a home row still driven or held, a credit or a
    /// part tried and neither confirmed nor cancelled. Chunk files hold only rows that
    /// cannot.
    pub fn is_unfinished(&self) -> bool {
        match self {
            TableRow::Home(row) => row.state.is_unfinished(),
            TableRow::Credit(_, row) => row.state == CreditState::Tried,
            TableRow::Part { tried, .. } => *tried,
        }
    }

    /// The key and credit row, if this is one.
    pub fn credit(self) -> Option<(TransferKey, CreditRow)> {
        match self {
            TableRow::Credit(key, row) => Some((key, row)),
            TableRow::Home(_) | TableRow::Part { .. } => None,
        }
    }
}

/// The destination-side barrier row of a transfer, keyed by its [`TransferKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CreditState {
    /// A pending credit is recorded.
    Tried,
    Confirmed,
    /// Cancelled after its Try.
    Cancelled,
    /// Cancelled before any Try: the null-compensation flag that fails a late Try.
    TryNotSeen,
}

/// Barrier row at the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditRow {
    pub state: CreditState,
    /// The transfer as the Try described it (`None` for [`CreditState::TryNotSeen`]).
    pub transfer: Option<Transfer>,
}

/// The idempotency record of a deposit or withdrawal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CashRow {
    pub kind: CashKind,
    pub amount: Amount,
    /// The balance right after it applied (or, refused, the balance it found): what every
    /// retry is answered with.
    pub balance_after: u64,
    /// Set when the request was refused; nothing moved.
    pub refused: Option<CashRefusal>,
}

/// Money that crossed the partition's boundary, per currency. With the account sums it gives
/// the partition's conservation law (see [`Ledger::check_conservation`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flows {
    pub deposited: u128,
    pub withdrawn: u128,
    /// Source side: holds made final by a confirmed cross-partition transfer.
    pub sent: u128,
    /// Destination side: credits confirmed for cross-partition transfers.
    pub received: u128,
}

/// Something a partition is asked to do.
///
/// Not `Copy`: commands move by value through inboxes and links, and a rare command whose
/// body would make every command larger (a transfer's is 208 bytes) keeps it boxed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    OpenAccount {
        account: AccountId,
        currency: Currency,
    },
    Deposit {
        account: AccountId,
        amount: Amount,
        currency: Currency,
        transaction_id: TransactionId,
    },
    Withdraw {
        account: AccountId,
        amount: Amount,
        currency: Currency,
        transaction_id: TransactionId,
    },
    /// A client transfer; this partition must own `from` (it is the home partition).
    Transfer(Transfer),
    /// A client refund of a committed transfer; this partition must own the original's
    /// destination, the refund's source (see [`refunds`]).
    Refund(Refund),
    /// From this partition's coordinator: log the second-phase decision.
    Decide {
        key: TransferKey,
        decision: Decision,
    },
    /// From this partition's coordinator: the destination acknowledged the decision.
    FinishDebit {
        key: TransferKey,
    },
    /// From this partition's coordinator: the destination durably tried the credit, so with
    /// the durable debit the transfer is committed, and the source's side is final at once
    /// (one record, no decision record and no acknowledgement to wait for; see the commit
    /// point in [`crate::protocol::coordinator`]).
    CommitDebit {
        key: TransferKey,
    },
    /// From this partition's coordinator: a destination holds a pending credit for a transfer
    /// this partition has no row of (its debit was lost with unsynced writes before the Try
    /// it had already sent became durable here). Records the transfer refused for good, so
    /// it can never commit, and the destination may cancel its credit.
    Abandon(Transfer),
    /// Destination phases, sent by the home partition of the transfer.
    TryCredit(Transfer),
    ConfirmCredit(Transfer),
    /// Cancel the credit whatever state it is in (short of confirmed): the home decided so.
    CancelCredit(Transfer),
    /// Cancel the credit only if it was never tried: the home's Try went unanswered. A
    /// credit that is tried commits the transfer (with the home's durable debit), so it
    /// stays, and the answer says so.
    AbortCredit(Transfer),
    /// A client hold (see [`holds`]); this partition must own its `from`. Boxed: it is
    /// longer than a transfer, and every command pays for the longest.
    Hold(Box<Hold>),
    /// A client capture of the hold `key`: `amount` of it, or all of it for `None`. The
    /// amount is as the client wrote it: the hold's currency, known here, finishes its parse.
    Capture {
        key: TransferKey,
        amount: Option<WrittenAmount>,
    },
    /// A client void of the hold `key`.
    Void {
        key: TransferKey,
    },
    /// From this partition's expiry scan: expire the hold `key` if its time has come.
    ExpireHold {
        key: TransferKey,
    },
    /// A client's multi-leg transaction (see [`transactions`]); this partition must own its
    /// first leg's source (it is the transaction's home).
    Transact(Arc<Transaction>),
    /// A participant's Try, sent by the transaction's home to participant `partition`.
    TryTransaction {
        tx: Arc<Transaction>,
        partition: PartitionId,
    },
    /// At the home (`partition` is the home's; from its coordinator): every participant
    /// tried, so commit. At a participant: the Confirm.
    ConfirmTransaction {
        key: TransferKey,
        partition: PartitionId,
    },
    /// At the home: the cancel every participant acknowledged ends. At a participant: undo
    /// the Try, or record that none came (a later Try fails).
    CancelTransaction {
        key: TransferKey,
        partition: PartitionId,
    },
    /// At a participant: cancel only if no Try of these legs came (the home's Try went
    /// unanswered); a participant that tried them says so, and the transaction may still
    /// commit. It carries the legs because a Try of other legs under the key is an orphan
    /// of a home that lost it, which this cancels.
    AbortTransaction {
        tx: Arc<Transaction>,
        partition: PartitionId,
    },
    /// At the home: a participant asks about its Try of `tx` (see
    /// [`crate::protocol::message::PeerMessage::TxUnresolved`]). Without a row under its key
    /// the home lost the transaction (its Try leaves before the home's record is durable):
    /// recorded rejected for good, for [`Reason::Timeout`] with no failed leg, so that the
    /// participant's Try can be cancelled and no retry can commit it. A row found stands,
    /// and its state is the answer.
    AbandonTransaction(Arc<Transaction>),
    /// From the home's coordinator: decide to cancel the transaction `key` (leg
    /// `failed_leg` was refused for `reason`, or a participant never answered).
    DecideTransactionCancel {
        key: TransferKey,
        failed_leg: Option<u8>,
        reason: Reason,
    },
}

impl Command {
    /// The key of the transfer a client's transfer starts (a refund's is found by the
    /// partition that decides it: [`Ledger::refund_key`]).
    pub fn transfer_key(&self) -> Option<TransferKey> {
        match self {
            Command::Transfer(transfer) => Some(transfer.key()),
            Command::Hold(hold) => Some(hold.transfer.key()),
            Command::Transact(tx) => Some(tx.key()),
            _ => None,
        }
    }

    /// The partition (of `partitions`) that executes this command.
    pub fn partition(&self, partitions: u32) -> PartitionId {
        match self {
            Command::Refund(refund) => refund.partition,
            Command::TryTransaction { partition, .. }
            | Command::ConfirmTransaction { partition, .. }
            | Command::CancelTransaction { partition, .. }
            | Command::AbortTransaction { partition, .. } => *partition,
            command => partition_of(&command.account(), partitions),
        }
    }

    /// The account whose partition executes this command; for a refund, which names its
    /// partition instead ([`Refund`]), the refunded transfer's source.
    fn account(&self) -> AccountId {
        *match self {
            Command::OpenAccount { account, .. }
            | Command::Deposit { account, .. }
            | Command::Withdraw { account, .. } => account,
            Command::Transfer(transfer) | Command::Abandon(transfer) => &transfer.from,
            Command::Refund(refund) => &refund.original.from,
            Command::Decide { key, .. }
            | Command::FinishDebit { key }
            | Command::CommitDebit { key }
            | Command::Capture { key, .. }
            | Command::Void { key }
            | Command::ExpireHold { key } => &key.from,
            Command::Hold(hold) => &hold.transfer.from,
            Command::Transact(tx) => return tx.first_from(),
            Command::TryTransaction { tx, .. } => return tx.first_from(),
            Command::ConfirmTransaction { key, .. }
            | Command::CancelTransaction { key, .. }
            | Command::DecideTransactionCancel { key, .. } => &key.from,
            Command::AbortTransaction { tx, .. } | Command::AbandonTransaction(tx) => {
                return tx.first_from();
            }
            Command::TryCredit(transfer)
            | Command::ConfirmCredit(transfer)
            | Command::CancelCredit(transfer)
            | Command::AbortCredit(transfer) => &transfer.to,
        }
    }
}

/// The answer to an accepted command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// `created` is false when the same account and currency already existed.
    Opened {
        created: bool,
    },
    /// The balance after a deposit or withdrawal (for a retry: after the first attempt).
    Balance {
        balance: u64,
    },
    Transfer(TransferStatus),
    /// A capture's or void's answer: the hold's status after it, with what its client is
    /// shown of the hold, so that it needs no read of its own.
    HoldEnd(HoldEnd),
    Phase(PhaseResult),
    /// A coordinator command applied (or was already applied).
    Done,
}

impl Reply {
    /// The transfer status this reply carries, if it answers a transfer, hold or
    /// transaction command.
    pub fn transfer_status(&self) -> Option<TransferStatus> {
        match self {
            Reply::Transfer(status) => Some(*status),
            Reply::HoldEnd(end) => Some(end.status),
            _ => None,
        }
    }
}

/// A destination's answer to a phase message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PhaseResult {
    /// The Try holds a pending credit (or the branch is already confirmed).
    Tried,
    /// The Try was refused; the home partition must cancel.
    TryFailed(Reason),
    /// The branch is confirmed (the answer to Confirm, and to a Cancel that came too late).
    Confirmed,
    /// The branch is cancelled (the answer to Cancel, and to a Confirm that came too late).
    Cancelled,
    /// A participant of a multi-leg transaction refused its Try: leg `leg` failed for
    /// `reason`; the home must cancel.
    LegFailed { leg: u8, reason: Reason },
    /// The destination refused the phase request outright (it names a transfer the
    /// destination cannot take part in: another partition's account, a Try whose key came
    /// with another transfer, a Confirm for a Try it never recorded). Never happens in a
    /// correct cluster; answered, so that the home reports it rather than resend forever.
    Refused,
}

/// Why a command was refused. A refused command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("account {0} does not exist")]
    AccountNotFound(AccountId),
    #[error("account {account} already exists in {existing}")]
    AccountExists {
        account: AccountId,
        existing: Currency,
    },
    #[error("account {account} holds {expected}, not {got}")]
    CurrencyMismatch {
        account: AccountId,
        expected: Currency,
        got: Currency,
    },
    #[error("insufficient funds: {available} {currency} available")]
    InsufficientFunds {
        available: String,
        currency: Currency,
    },
    #[error("the balance of {0} would exceed the largest balance an account may hold")]
    BalanceLimit(AccountId),
    #[error("from_account and to_account are the same account")]
    SameAccount,
    #[error("transaction id {0:?} was already used with a different request")]
    Conflict(TransactionId),
    #[error("account {account} lives on partition {owner}, not on partition {here}")]
    WrongPartition {
        account: AccountId,
        owner: PartitionId,
        here: PartitionId,
    },
    #[error("no transfer {0:?} on this partition")]
    UnknownTransfer(TransferKey),
    #[error("transfer {key:?} cannot go from {from:?} by {command}")]
    InvalidTransition {
        key: TransferKey,
        from: String,
        command: &'static str,
    },
    /// The partition could not read a transfer row it keeps on disk only (a chunk file
    /// missing, unreadable or damaged): nothing was decided; the same command may be tried
    /// again once the disk is repaired.
    #[error("stored transfers cannot be read: {0}")]
    Unreadable(String),
    /// A refund named a transfer that is not a committed transfer into the refund's source,
    /// or whose credit has not reached that account yet (a transfer across partitions is
    /// refundable once its destination applied its Confirm).
    #[error("transfer {0:?} is not a committed transfer whose money reached its destination")]
    NotRefundable(TransferKey),
    /// A capture or void named a transfer that is not a hold.
    #[error("transfer {0:?} is not a hold")]
    NotAHold(TransferKey),
    /// A capture or void of a hold that is not held: refused or cancelled before it was held.
    #[error("hold {0:?} is not held")]
    HoldNotHeld(TransferKey),
    /// A capture or void of a hold still being placed: its destination's answer to the Try
    /// is not in (or a restart took the home's record of it, and the home is asking again).
    /// Nothing was decided; the same request gets the hold's end once it is held (a client
    /// told `held` may meet this only after its home restarted, for about a round trip).
    #[error("hold {0:?} is still being placed; ask again")]
    HoldBeingPlaced(TransferKey),
    /// A capture asked for more than the hold holds.
    #[error("the capture asks for more than the {held} hold {key:?} holds")]
    CaptureExceedsHold { key: TransferKey, held: String },
    /// A capture of a hold already captured for another amount.
    #[error("hold {key:?} was already captured for {captured}")]
    HoldAlreadyCaptured { key: TransferKey, captured: String },
    /// A capture's amount does not fit its hold's currency (too many fraction digits, zero,
    /// or beyond the largest amount); the message says which.
    #[error("{0}")]
    InvalidAmount(String),
    /// The partition holds as many open holds as it may ([`OPEN_HOLDS_MAX`]).
    #[error("the partition holds {0} open holds, as many as it may; capture or void some first")]
    HoldLimit(usize),
}

impl From<ColdError> for LedgerError {
    fn from(error: ColdError) -> Self {
        LedgerError::Unreadable(error.0)
    }
}

/// An event that cannot be applied to the state: the log contradicts itself. Never produced by
/// events that `decide` returned; seen only when replaying a damaged or foreign log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event at lsn {lsn} cannot apply: {what}")]
pub struct ApplyError {
    pub lsn: Lsn,
    pub what: String,
}

impl ApplyError {
    /// Whether the event would have taken an account's available balance below zero
    /// (invariant 2), rather than contradict the log some other way.
    pub fn is_overdraw(&self) -> bool {
        self.what.contains(OVERDRAWS)
    }
}

/// The word of an [`ApplyError`] that refuses an overdraft.
const OVERDRAWS: &str = "overdraws";

/// Position and time of the record an event is applied from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordMeta {
    pub lsn: Lsn,
    pub timestamp: Timestamp,
}

/// The state of one partition.
#[derive(Debug, Clone)]
pub struct Ledger {
    partition: PartitionId,
    partitions: u32,
    /// Shared copy-on-write with snapshot images, a chunk of rows at a time (see
    /// [`AccountTable`]): taking an image copies no account.
    pub(crate) accounts: AccountTable,
    pub(crate) transfers: TransferTable,
    pub(crate) cash: CashTable,
    pub(crate) flows: BTreeMap<Currency, Flows>,
    /// The refunds this partition is home of, and what they refunded (see [`refunds`]).
    pub(crate) refunds: RefundTable,
    /// The holds this partition is home of (see [`holds`]).
    pub(crate) holds: HoldTable,
    pub(crate) last: RecordMeta,
}

impl Ledger {
    /// An empty ledger for `partition` out of `partitions`.
    pub fn new(partition: PartitionId, partitions: u32) -> Ledger {
        assert!(
            partition < partitions,
            "partition {partition} out of {partitions}"
        );
        Ledger {
            partition,
            partitions,
            accounts: AccountTable::default(),
            transfers: TransferTable::default(),
            cash: CashTable::default(),
            flows: BTreeMap::new(),
            refunds: RefundTable::default(),
            holds: HoldTable::default(),
            last: RecordMeta::default(),
        }
    }

    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The last record applied (lsn 0 for an empty log).
    pub fn last_applied(&self) -> RecordMeta {
        self.last
    }

    pub fn account(&self, account: &AccountId) -> Option<&Account> {
        self.accounts.get(account)
    }

    pub fn accounts(&self) -> impl Iterator<Item = (&AccountId, &Account)> {
        self.accounts.iter()
    }

    /// The home row of `key`, in memory or read from its chunk file.
    pub fn find_transfer(&self, key: &TransferKey) -> Result<Option<TransferRow>, LedgerError> {
        Ok(self.transfers.get(key)?)
    }

    /// The body of the home row of `key` and the count of rows of the transfers table
    /// recorded by the time it was: a reader that knows how many rows are durable knows
    /// whether this one is. A row on disk only is in a durable chunk file, recorded before
    /// every row in memory.
    pub fn find_transfer_body(
        &self,
        key: &TransferKey,
    ) -> Result<Option<(Transfer, usize)>, LedgerError> {
        Ok(match self.transfers.lookup(key)? {
            Some(Found::Hot(at)) => Some((self.transfers.row(at).transfer, at + 1)),
            Some(Found::Cold(row)) => Some((row.0.transfer, self.transfers.hot_from())),
            None => None,
        })
    }

    /// [`Ledger::find_transfer`] for tools and checks, which cannot go on without the row.
    ///
    /// # Panics
    /// If the row is on disk and its chunk file cannot be read.
    pub fn transfer(&self, key: &TransferKey) -> Option<TransferRow> {
        self.find_transfer(key)
            .unwrap_or_else(|error| panic!("transfer {key:?}: {error}"))
    }

    /// Every home row, in the order the log recorded them; rows that left memory are read
    /// from their chunk files.
    ///
    /// # Panics
    /// If a chunk file of such rows cannot be read (tools and checks only).
    pub fn transfers(&self) -> impl Iterator<Item = TransferRow> + '_ {
        self.transfers.iter().filter_map(TableRow::home)
    }

    /// Rows of the transfers table recorded, home and credit rows, in memory or not.
    pub fn transfer_count(&self) -> usize {
        self.transfers.len()
    }

    /// Rows of the transfers table in memory, home and credit rows: those not yet in a
    /// durable chunk file (see [`Ledger::drop_transfer_chunk`]).
    pub fn transfer_rows_in_memory(&self) -> usize {
        self.transfers.len() - self.transfers.hot_from()
    }

    /// Chunks of the transfers table whose rows are on disk only.
    pub fn cold_transfer_chunks(&self) -> usize {
        self.transfers.cold_chunks()
    }

    /// Bytes of memory the transfers table takes, roughly (rows, ids, index, cold filter).
    pub fn transfer_table_bytes(&self) -> usize {
        self.transfers.bytes()
    }

    /// Gives the ledger its partition's chunk files, where it finds the rows it drops from
    /// memory ([`Ledger::drop_transfer_chunk`]).
    pub fn attach_chunk_reader(&mut self, reader: std::sync::Arc<dyn ChunkRead>) {
        self.transfers.attach(self.partition, reader);
    }

    /// Drops the rows of `chunk` from memory: its chunk file is durable (the snapshot
    /// that wrote it is). Chunks leave in order; returns whether this one did (see
    /// [`cold::ColdChunk`]).
    pub fn drop_transfer_chunk(&mut self, chunk: cold::ColdChunk) -> bool {
        self.transfers.drop_chunk(chunk)
    }

    /// The work the cold rows' Bloom filter needs done off the partition's thread, if it is
    /// growing and its build is not out already ([`cold::BloomBuild`]): hand it to the next
    /// snapshot, then call [`Ledger::take_bloom_build`] when that snapshot is written.
    pub fn bloom_build(&mut self) -> Option<cold::BloomBuild> {
        self.transfers.bloom_build()
    }

    /// Swaps in the Bloom filter the build handed out made, now that it has run (or never
    /// will); a build that did not run or failed is handed out again.
    pub fn take_bloom_build(&mut self) {
        self.transfers.take_bloom_build(true);
    }

    /// The barrier row of `key`, in memory or read from its chunk file.
    pub fn find_credit(&self, key: &TransferKey) -> Result<Option<CreditRow>, LedgerError> {
        Ok(self.transfers.credit(key)?)
    }

    /// [`Ledger::find_credit`] for tools and checks, which cannot go on without the row.
    ///
    /// # Panics
    /// If the row is on disk and its chunk file cannot be read.
    pub fn credit(&self, key: &TransferKey) -> Option<CreditRow> {
        self.find_credit(key)
            .unwrap_or_else(|error| panic!("credit {key:?}: {error}"))
    }

    /// The transfer of the pending credit at `position` of the transfers table, if the row
    /// there is one (a pending credit is always in memory). Cheap for any other row: the
    /// destination's watch looks at every position once.
    pub fn pending_credit_at(&self, position: usize) -> Option<Transfer> {
        self.transfers.pending_credit_at(position)
    }

    /// Every barrier row, in the order the log recorded them; rows that left memory are
    /// read from their chunk files.
    ///
    /// # Panics
    /// If a chunk file of such rows cannot be read (tools and checks only).
    pub fn credits(&self) -> impl Iterator<Item = (TransferKey, CreditRow)> + '_ {
        self.transfers.iter().filter_map(TableRow::credit)
    }

    /// Takes the moves of pending credits in the transfers table since the last call:
    /// `(from, to)` positions, in the order they were made (see `transfer_table`, "Rows in
    /// flight move on"). The destination's watch follows its credits with them.
    pub fn take_moved_credits(&mut self) -> Vec<(usize, usize)> {
        self.transfers.take_moved_credits()
    }

    /// The position of the pending credit of `key` in the transfers table, if it has one
    /// (pending rows are always in memory).
    pub fn pending_credit_position(&self, key: &TransferKey) -> Option<usize> {
        let at = self.transfers.find_credit(key)?;
        self.transfers.pending_credit(at).map(|_| at)
    }

    /// Amount and currency of every pending credit (tried, neither confirmed nor cancelled):
    /// from memory only, where every pending row is.
    pub fn pending_credits(&self) -> impl Iterator<Item = (Amount, Currency)> + '_ {
        self.transfers.pending_credits()
    }

    /// The transfers of every pending credit, in the order the log recorded them (see
    /// [`Ledger::pending_credits`]).
    pub fn pending_credit_transfers(&self) -> impl Iterator<Item = Transfer> + '_ {
        self.transfers.pending_credit_transfers()
    }

    /// Sealed chunks of the transfers table, counted from chunk `first`, whose rows are all
    /// final (see [`crate::log::snapshot`]'s chunk files).
    pub fn final_chunks_from(&self, first: usize) -> usize {
        self.transfers.final_chunks_from(first)
    }

    /// Rows in every table: the size of a snapshot, in rows.
    pub fn row_count(&self) -> usize {
        self.accounts.len() + self.transfers.len() + self.cash.len()
    }

    /// Rows in every table but the transfer rows on disk only: the rows memory holds.
    pub fn rows_in_memory(&self) -> usize {
        self.row_count() - self.transfers.hot_from()
    }

    pub fn flows(&self) -> &BTreeMap<Currency, Flows> {
        &self.flows
    }

    /// Home rows the coordinator must still drive, sorted by key so that rebuilding after a
    /// restart is deterministic whatever the hash-table order. Multi-leg transactions are
    /// not among them: their rows are driven by their own rules ([`transactions`]).
    pub fn unfinished_transfers(&self) -> Vec<TransferRow> {
        let mut rows: Vec<TransferRow> = (self.transfers.unfinished())
            .filter(|(_, terms)| RowTerms::kind_of(*terms) != RowKind::Transaction)
            .map(|(row, _)| row)
            .collect();
        rows.sort_by_key(|row| row.transfer.key());
        rows
    }

    fn owns(&self, account: &AccountId) -> bool {
        partition_of(account, self.partitions) == self.partition
    }

    /// Refuses a credit phase for a transfer whose source is on this partition: such a
    /// transfer moves in one event and never has a credit row; its key's row here is its
    /// home row (the transfers table keeps one row per key).
    fn require_remote_source(
        &self,
        key: &TransferKey,
        command: &'static str,
    ) -> Result<(), LedgerError> {
        if self.owns(&key.from) {
            return Err(LedgerError::InvalidTransition {
                key: *key,
                from: "a source on this partition".to_string(),
                command,
            });
        }
        Ok(())
    }

    fn require_local(&self, account: &AccountId) -> Result<(), LedgerError> {
        if self.owns(account) {
            Ok(())
        } else {
            Err(LedgerError::WrongPartition {
                account: *account,
                owner: partition_of(account, self.partitions),
                here: self.partition,
            })
        }
    }

    /// Brings into cache, without deciding anything, the rows that `commands` will look up:
    /// the source and destination accounts and the idempotency slot of each transfer. The
    /// same idea as a prefetch phase before execution in TigerBeetle's state machine, done
    /// in two steps so that no lookup waits on another: the first asks for every index slot
    /// ([`Ledger::prefetch_one`]), the second, a few commands later, reads those slots, by
    /// then in cache, and asks for the account rows they name ([`Ledger::prefetch_rows`]),
    /// with the hashes the first computed. `decide` and `apply` then find everything in
    /// cache. Purely a speed-up: skipping it changes no outcome.
    pub fn prefetch<C: std::borrow::Borrow<Command>>(&self, commands: impl IntoIterator<Item = C>) {
        let mut behind = [Prefetched::default(); PREFETCH_ROWS_LAG];
        for (count, command) in commands.into_iter().enumerate() {
            let slot = &mut behind[count % PREFETCH_ROWS_LAG];
            self.prefetch_rows(*slot);
            *slot = self.prefetch_one(command.borrow());
        }
        for prefetched in behind {
            self.prefetch_rows(prefetched);
        }
    }

    /// The first step of [`Ledger::prefetch`] for one command: asks for the index slots of
    /// its accounts, of its transfer row and of the cold rows' Bloom filter. Waits for
    /// nothing. Returns what the second step ([`Ledger::prefetch_rows`]) needs.
    #[inline]
    pub fn prefetch_one(&self, command: &Command) -> Prefetched {
        match command {
            Command::Transfer(transfer) => {
                let from = self.accounts.prefetch_slot(&transfer.from);
                let to = self.accounts.prefetch_slot(&transfer.to);
                self.transfers.prefetch(&transfer.key());
                Prefetched::of([Some(from), Some(to)])
            }
            Command::TryCredit(transfer)
            | Command::ConfirmCredit(transfer)
            | Command::CancelCredit(transfer)
            | Command::AbortCredit(transfer) => {
                let to = self.accounts.prefetch_slot(&transfer.to);
                self.transfers.prefetch(&transfer.key());
                Prefetched::of([Some(to), None])
            }
            Command::CommitDebit { key }
            | Command::FinishDebit { key }
            | Command::Decide { key, .. } => {
                self.transfers.prefetch(key);
                Prefetched::default()
            }
            Command::Hold(hold) => {
                let from = self.accounts.prefetch_slot(&hold.transfer.from);
                let to = self.accounts.prefetch_slot(&hold.transfer.to);
                self.transfers.prefetch(&hold.transfer.key());
                Prefetched::of([Some(from), Some(to)])
            }
            Command::Capture { key, .. } | Command::Void { key } | Command::ExpireHold { key } => {
                self.transfers.prefetch(key);
                Prefetched::default()
            }
            Command::Transact(tx) => {
                let key = tx.key();
                self.transfers.prefetch(&key);
                self.prefetch_legs(tx)
            }
            Command::TryTransaction { tx, .. } | Command::AbortTransaction { tx, .. } => {
                self.transfers.prefetch(&tx.key());
                self.prefetch_legs(tx)
            }
            Command::ConfirmTransaction { key, .. } | Command::CancelTransaction { key, .. } => {
                self.transfers.prefetch(key);
                Prefetched::default()
            }
            _ => Prefetched::default(),
        }
    }

    /// The first step of a prefetch for the accounts of `tx` that live here: the first
    /// [`PREFETCH_ACCOUNTS`] of them, in the order its legs name them (a transaction over
    /// more of them finds the rest by a plain lookup).
    fn prefetch_legs(&self, tx: &Transaction) -> Prefetched {
        let mut prefetched = Prefetched::default();
        let mut taken = 0;
        let mut seen: [Option<AccountId>; PREFETCH_ACCOUNTS] = [None; PREFETCH_ACCOUNTS];
        for account in tx.legs().flat_map(|leg| [leg.from, leg.to]) {
            if taken == PREFETCH_ACCOUNTS {
                break;
            }
            if !self.owns(&account) || seen[..taken].contains(&Some(account)) {
                continue;
            }
            seen[taken] = Some(account);
            prefetched.accounts[taken] = Some(self.accounts.prefetch_slot(&account));
            taken += 1;
        }
        prefetched
    }

    /// The second step of [`Ledger::prefetch`] for one command: reads its accounts' index
    /// slots, which the first step brought in, and asks for the rows they name.
    #[inline]
    pub fn prefetch_rows(&self, prefetched: Prefetched) {
        for hash in prefetched.accounts.into_iter().flatten() {
            self.accounts.prefetch_row(hash);
        }
    }

    /// Decides `command` against the current state: pushes the events to append onto
    /// `events` and returns the reply, or refuses with an error and pushes nothing.
    pub fn decide(&self, command: &Command, events: &mut Vec<Event>) -> Result<Reply, LedgerError> {
        self.decide_at(command, self.last.timestamp, events)
    }

    /// [`Ledger::decide`] at the home's wall-clock time `now`, which holds' expiries are
    /// measured against (the stamp the records it decides will carry).
    pub fn decide_at(
        &self,
        command: &Command,
        now: Timestamp,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        let events_before = events.len();
        let result = match *command {
            Command::OpenAccount { account, currency } => {
                self.decide_open(account, currency, events)
            }
            Command::Deposit {
                account,
                amount,
                currency,
                transaction_id,
            } => self.decide_cash(
                CashKind::Deposit,
                account,
                amount,
                currency,
                transaction_id,
                events,
            ),
            Command::Withdraw {
                account,
                amount,
                currency,
                transaction_id,
            } => self.decide_cash(
                CashKind::Withdrawal,
                account,
                amount,
                currency,
                transaction_id,
                events,
            ),
            Command::Transfer(transfer) => self.decide_transfer(transfer, events),
            Command::Refund(refund) => self.decide_refund(refund, events),
            Command::Decide { key, decision } => self.decide_decision(key, decision, events),
            Command::FinishDebit { key } => self.decide_finish(key, events),
            Command::CommitDebit { key } => self.decide_commit_debit(key, events),
            Command::TryCredit(transfer) => self.decide_try_credit(transfer, events),
            Command::ConfirmCredit(transfer) => self.decide_confirm_credit(transfer, events),
            Command::CancelCredit(transfer) => self.decide_cancel_credit(transfer, events),
            Command::AbortCredit(transfer) => self.decide_abort_credit(transfer, events),
            Command::Abandon(transfer) => self.decide_abandon(transfer, events),
            Command::Hold(ref hold) => self.decide_hold(hold, now, events),
            Command::Capture { ref key, amount } => self.decide_capture(key, amount, now, events),
            Command::Void { ref key } => self.decide_void(key, now, events),
            Command::ExpireHold { ref key } => self.decide_expire(key, now, events),
            Command::Transact(ref tx) => self.decide_transact(tx, events),
            Command::TryTransaction { ref tx, .. } => self.decide_try_transaction(tx, events),
            Command::ConfirmTransaction { ref key, .. } => {
                self.decide_confirm_transaction(key, events)
            }
            Command::CancelTransaction { ref key, .. } => {
                self.decide_cancel_transaction(key, false, events)
            }
            Command::AbortTransaction { ref tx, .. } => self.decide_abort_transaction(tx, events),
            Command::AbandonTransaction(ref tx) => self.decide_abandon_transaction(tx, events),
            Command::DecideTransactionCancel {
                ref key,
                failed_leg,
                reason,
            } => self.decide_cancel_decision(key, failed_leg, reason, events),
        };
        debug_assert!(
            result.is_ok()
                || events.len() == events_before
                || matches!(&events[events_before..], [Event::CashRefused(_)]),
            "a refused command emitted events other than its refusal's record"
        );
        result
    }

    fn decide_open(
        &self,
        account: AccountId,
        currency: Currency,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        self.require_local(&account)?;
        match self.accounts.get(&account) {
            Some(existing) if existing.currency == currency => Ok(Reply::Opened { created: false }),
            Some(existing) => Err(LedgerError::AccountExists {
                account,
                existing: existing.currency,
            }),
            None => {
                events.push(Event::AccountOpened { account, currency });
                Ok(Reply::Opened { created: true })
            }
        }
    }

    /// A deposit or withdrawal. A business refusal (no such account, another currency, the
    /// balance limit, insufficient funds) is answered as an error and recorded
    /// ([`Event::CashRefused`]), so a retry of its `transaction_id` gets the same answer
    /// forever, whatever happened to the account since.
    fn decide_cash(
        &self,
        kind: CashKind,
        account: AccountId,
        amount: Amount,
        currency: Currency,
        transaction_id: TransactionId,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        self.require_local(&account)?;
        if let Some(row) = self.cash.get(&account, &transaction_id) {
            if row.kind != kind || row.amount != amount {
                return Err(LedgerError::Conflict(transaction_id));
            }
            return match row.refused {
                None => Ok(Reply::Balance {
                    balance: row.balance_after,
                }),
                Some(refusal) => Err(self.cash_error(account, currency, refusal, &row)),
            };
        }
        let refusal = self.cash_refusal(kind, &account, amount, currency);
        if let Some(refusal) = refusal {
            let refused = Event::CashRefused(CashRefused {
                account,
                transaction_id,
                kind,
                amount,
                refusal,
            });
            if records_refusals() {
                events.push(refused);
            }
            let found = self.accounts.get(&account).map_or(0, |a| a.balance);
            let row = CashRow {
                kind,
                amount,
                balance_after: found,
                refused: Some(refusal),
            };
            return Err(self.cash_error(account, currency, refusal, &row));
        }
        let found = *self
            .accounts
            .get(&account)
            .expect("a refusal checked it exists");
        let (event, balance) = match kind {
            CashKind::Deposit => (
                Event::Deposited {
                    account,
                    amount,
                    transaction_id,
                },
                found.balance + amount.minor(),
            ),
            CashKind::Withdrawal => (
                Event::Withdrawn {
                    account,
                    amount,
                    transaction_id,
                },
                found.balance - amount.minor(),
            ),
        };
        events.push(event);
        Ok(Reply::Balance { balance })
    }

    /// Why the ledger refuses a new deposit or withdrawal, if it does.
    fn cash_refusal(
        &self,
        kind: CashKind,
        account: &AccountId,
        amount: Amount,
        currency: Currency,
    ) -> Option<CashRefusal> {
        let Some(found) = self.accounts.get(account) else {
            return Some(CashRefusal::AccountNotFound);
        };
        if !found.holds(currency) {
            return Some(CashRefusal::CurrencyMismatch(currency));
        }
        match kind {
            CashKind::Deposit if !found.has_room_for(amount.minor()) => {
                Some(CashRefusal::BalanceLimit)
            }
            CashKind::Withdrawal if !found.covers(amount.minor()) => {
                Some(CashRefusal::InsufficientFunds)
            }
            _ => None,
        }
    }

    /// The answer to a refused deposit or withdrawal, first time and every retry alike.
    fn cash_error(
        &self,
        account: AccountId,
        currency: Currency,
        refusal: CashRefusal,
        row: &CashRow,
    ) -> LedgerError {
        match refusal {
            CashRefusal::AccountNotFound => LedgerError::AccountNotFound(account),
            CashRefusal::CurrencyMismatch(got) => LedgerError::CurrencyMismatch {
                account,
                expected: self.accounts.get(&account).map_or(currency, |a| a.currency),
                got,
            },
            CashRefusal::InsufficientFunds => {
                let held = self.accounts.get(&account).map_or(currency, |a| a.currency);
                LedgerError::InsufficientFunds {
                    available: format_minor(row.balance_after, held),
                    currency: held,
                }
            }
            CashRefusal::BalanceLimit => LedgerError::BalanceLimit(account),
        }
    }

    fn decide_transfer(
        &self,
        transfer: Transfer,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        self.require_local(&transfer.from)?;
        let at = match self.transfers.lookup(&transfer.key())? {
            None => return self.decide_new_transfer(transfer, events),
            // A multi-leg transaction's row holds its first leg: no transfer is its retry.
            Some(Found::Hot(at))
                if RowTerms::kind_of(self.transfers.terms(at)) == RowKind::Transaction =>
            {
                return Err(LedgerError::Conflict(transfer.transaction_id))
            }
            Some(Found::Cold(row)) if RowTerms::kind_of(row.1.as_ref()) == RowKind::Transaction => {
                return Err(LedgerError::Conflict(transfer.transaction_id))
            }
            // A row on disk is final: a retry gets its outcome, another body a conflict.
            Some(Found::Cold(row)) if row.0.transfer == transfer => {
                return Ok(Reply::Transfer(row.0.state.status()))
            }
            Some(Found::Cold(_)) => return Err(LedgerError::Conflict(transfer.transaction_id)),
            Some(Found::Hot(at)) => at,
        };
        let state = self.transfers.phase(at).state;
        #[cfg(any(test, madsim, feature = "testing"))]
        if crate::protocol::bugs::enabled(Bug::NoIdempotency) && !state.is_unfinished() {
            // Known bug: the key of a finished transfer is forgotten, so a retry is
            // decided and applied again as if it were new.
            return self.decide_new_transfer(transfer, events);
        }
        if self.transfers.records(at, &transfer) {
            Ok(Reply::Transfer(state.status()))
        } else {
            Err(LedgerError::Conflict(transfer.transaction_id))
        }
    }

    /// A transfer whose key this partition has not seen. Every business refusal is recorded
    /// (`TransferRejected`), on every path, so the same `transaction_id` gets the same answer
    /// forever, whatever changes after it (a later deposit, an account opened since).
    fn decide_new_transfer(
        &self,
        transfer: Transfer,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        let verdict = match self.transfer_refusal(&transfer) {
            Some(reason) => Event::TransferRejected { transfer, reason },
            // Cross-partition: debit first, into a hold; the destination is validated by
            // its Try.
            None if !self.owns(&transfer.to) => Event::DebitTried { transfer },
            None => Event::Transferred { transfer },
        };
        let status = match verdict {
            Event::TransferRejected { reason, .. } => TransferStatus::Rejected(reason),
            Event::DebitTried { .. } => TransferStatus::Pending,
            _ => TransferStatus::Committed,
        };
        events.push(verdict);
        Ok(Reply::Transfer(status))
    }

    /// Why the home partition refuses `transfer`, if it does: the source (and, within one
    /// partition, the destination) must exist in the transfer's currency, the source must
    /// cover the amount, and the destination must have room for it.
    fn transfer_refusal(&self, transfer: &Transfer) -> Option<Reason> {
        if is_to_itself(transfer) {
            return Some(Reason::SameAccount);
        }
        let minor = transfer.amount.minor();
        let Some(source) = self.accounts.get(&transfer.from) else {
            return Some(Reason::SourceNotFound);
        };
        if !source.holds(transfer.currency) {
            return Some(Reason::SourceCurrencyMismatch);
        }
        if self.owns(&transfer.to) {
            let Some(destination) = self.accounts.get(&transfer.to) else {
                return Some(Reason::DestinationNotFound);
            };
            if !destination.holds(transfer.currency) {
                return Some(Reason::DestinationCurrencyMismatch);
            }
            if !destination.has_room_for(minor) {
                return Some(Reason::DestinationBalanceLimit);
            }
        }
        (!source.covers(minor)).then_some(Reason::InsufficientFunds)
    }

    /// The position of the home row under `key`. Phase commands and phase events name a
    /// transfer that started here; any other key is unknown to this partition.
    #[inline]
    fn home_row(&self, key: &TransferKey) -> Result<usize, LedgerError> {
        self.transfers
            .find(key)
            .ok_or(LedgerError::UnknownTransfer(*key))
    }

    /// The home row under `key` with its terms, in memory or read from its chunk file.
    pub(crate) fn find_home(
        &self,
        key: &TransferKey,
    ) -> Result<Option<(TransferRow, Option<RowTerms>)>, LedgerError> {
        Ok(match self.transfers.lookup(key)? {
            Some(Found::Hot(at)) => {
                Some((self.transfers.row(at), self.transfers.terms(at).cloned()))
            }
            Some(Found::Cold(row)) => Some(*row),
            None => None,
        })
    }

    /// The phase of the home row under `key` and the kind of operation it records, from
    /// one lookup.
    pub(crate) fn home_state_and_kind(
        &self,
        key: &TransferKey,
    ) -> Result<(TransferState, RowKind), LedgerError> {
        match self.transfers.lookup(key)? {
            Some(Found::Hot(at)) => Ok((
                self.transfers.phase(at).state,
                RowTerms::kind_of(self.transfers.terms(at)),
            )),
            Some(Found::Cold(row)) => Ok((row.0.state, RowTerms::kind_of(row.1.as_ref()))),
            None => Err(LedgerError::UnknownTransfer(*key)),
        }
    }

    /// The phase of the home row of the transfer (or hold) `key`, refused for `command` if
    /// the row is a multi-leg transaction's: its phases are its own ([`transactions`]).
    fn transfer_state(
        &self,
        key: &TransferKey,
        command: &'static str,
    ) -> Result<TransferState, LedgerError> {
        Ok(self.transfer_state_and_hold(key, command)?.0)
    }

    /// [`Self::transfer_state`], and whether the row is a hold's.
    fn transfer_state_and_hold(
        &self,
        key: &TransferKey,
        command: &'static str,
    ) -> Result<(TransferState, bool), LedgerError> {
        let (state, kind) = self.home_state_and_kind(key)?;
        if kind == RowKind::Transaction {
            return Err(LedgerError::InvalidTransition {
                key: *key,
                from: format!("{state:?} transaction"),
                command,
            });
        }
        Ok((state, kind == RowKind::Hold))
    }

    fn decide_decision(
        &self,
        key: TransferKey,
        decision: Decision,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        let state = self.transfer_state(&key, "decide")?;
        if state.after_decision(decision).is_some() {
            events.push(Event::TransferDecided { key, decision });
            return Ok(Reply::Done);
        }
        match (state, decision) {
            // Retried decision that is already logged, or already carried out: a no-op.
            (TransferState::Confirming | TransferState::Committed, Decision::Confirm) => {
                Ok(Reply::Done)
            }
            (TransferState::Cancelling(_) | TransferState::Cancelled(_), Decision::Cancel(_)) => {
                Ok(Reply::Done)
            }
            (state, _) => Err(LedgerError::InvalidTransition {
                key,
                from: format!("{state:?}"),
                command: "decide",
            }),
        }
    }

    fn decide_finish(
        &self,
        key: TransferKey,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        let state = self.transfer_state(&key, "finish")?;
        match (state.unacknowledged(), state) {
            (Some(Decision::Confirm), _) => events.push(Event::DebitConfirmed { key }),
            (Some(Decision::Cancel(_)), _) => events.push(Event::DebitCancelled { key }),
            // Already finished: a retried finish is a no-op.
            (None, TransferState::Committed | TransferState::Cancelled(_)) => {}
            (None, state) => {
                return Err(LedgerError::InvalidTransition {
                    key,
                    from: format!("{state:?}"),
                    command: "finish",
                })
            }
        }
        Ok(Reply::Done)
    }

    fn decide_commit_debit(
        &self,
        key: TransferKey,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        let (state, hold) = self.transfer_state_and_hold(&key, "commit")?;
        match state {
            // A hold is held at the commit point of its Try; a capture, a void or its expiry
            // ends it later (see `holds`).
            TransferState::Trying if hold => events.push(Event::HoldEstablished { key }),
            // `Confirming`: a row decided by an older build, which waited for an
            // acknowledgement before it finished.
            TransferState::Trying | TransferState::Confirming => {
                events.push(Event::DebitConfirmed { key })
            }
            // Already committed, or held: a retried commit is a no-op.
            TransferState::Committed => {}
            TransferState::Held | TransferState::Captured if hold => {}
            TransferState::Cancelling(_) | TransferState::Cancelled(_) if hold => {}
            state => {
                return Err(LedgerError::InvalidTransition {
                    key,
                    from: format!("{state:?}"),
                    command: "commit",
                })
            }
        }
        Ok(Reply::Done)
    }

    fn decide_try_credit(
        &self,
        transfer: Transfer,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        self.require_local(&transfer.to)?;
        self.require_remote_source(&transfer.key(), "try credit")?;
        let key = transfer.key();
        if let Some(row) = self.find_credit(&key)? {
            if row.transfer.is_some_and(|t| t != transfer) {
                // Another body under this key: the home lost the transfer this row was
                // tried for (with unsynced writes) and took a new one under the same id.
                // The new one can never be tried here; the old row is cancelled by the
                // Cancel that follows this failure.
                return Ok(Reply::Phase(PhaseResult::TryFailed(
                    Reason::CancelledBeforeTry,
                )));
            }
            // The barrier: a duplicate Try is a no-op; a Try after its Cancel, or after its
            // own refusal, fails at once. A refused Try's copy names the same refusal if the
            // account still gives it (the home decides on whichever answer comes first).
            let result = match row.state {
                CreditState::Tried | CreditState::Confirmed => PhaseResult::Tried,
                CreditState::Cancelled | CreditState::TryNotSeen => PhaseResult::TryFailed(
                    self.credit_refusal(&transfer)
                        .unwrap_or(Reason::CancelledBeforeTry),
                ),
            };
            #[cfg(any(test, madsim, feature = "testing"))]
            if crate::protocol::bugs::enabled(Bug::SkipBarrier)
                && result != PhaseResult::Tried
                && self.credit_refusal(&transfer).is_none()
            {
                // Known bug: no barrier, so a Try that arrives after its Cancel is validated
                // and recorded like a first one, and its pending credit hangs.
                return self.decide_new_try(transfer, events);
            }
            return Ok(Reply::Phase(result));
        }
        self.decide_new_try(transfer, events)
    }

    /// A Try with no barrier row yet: validate the destination and record a pending credit.
    fn decide_new_try(
        &self,
        transfer: Transfer,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        if let Some(reason) = self.credit_refusal(&transfer) {
            // The failure is recorded as the try-not-seen flag before it is answered, so
            // the destination's first durable answer to a Try is its answer forever: a
            // resent Try fails too, even once the account exists. The home decides from
            // that answer, and its Cancel finds the flag already set.
            events.push(Event::CreditTryNotSeen {
                key: transfer.key(),
            });
            return Ok(Reply::Phase(PhaseResult::TryFailed(reason)));
        }
        events.push(Event::CreditTried { transfer });
        Ok(Reply::Phase(PhaseResult::Tried))
    }

    /// Why the destination refuses to credit `transfer`, if it does.
    fn credit_refusal(&self, transfer: &Transfer) -> Option<Reason> {
        match self.accounts.get(&transfer.to) {
            None => Some(Reason::DestinationNotFound),
            Some(account) if !account.holds(transfer.currency) => {
                Some(Reason::DestinationCurrencyMismatch)
            }
            Some(account) if !account.has_room_for(transfer.amount.minor()) => {
                Some(Reason::DestinationBalanceLimit)
            }
            Some(_) => None,
        }
    }

    fn decide_confirm_credit(
        &self,
        transfer: Transfer,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        self.require_local(&transfer.to)?;
        self.require_remote_source(&transfer.key(), "confirm credit")?;
        let key = transfer.key();
        let (state, tried) = match self.transfers.credit_lookup(&key)? {
            Some(Credit::Hot(at)) => self.transfers.credit_state(at),
            Some(Credit::Cold(row)) => (row.state, row.transfer.map(|t| t.amount)),
            None => return Err(LedgerError::UnknownTransfer(key)),
        };
        let tried = (state == CreditState::Tried).then_some(tried).flatten();
        let result = match state {
            // The Confirm of a hold captured in part carries the part.
            CreditState::Tried if tried.is_some_and(|tried| transfer.amount < tried) => {
                let amount = transfer.amount;
                events.push(Event::CreditCaptured { key, amount });
                PhaseResult::Confirmed
            }
            CreditState::Tried if tried.is_some_and(|tried| transfer.amount > tried) => {
                PhaseResult::Refused
            }
            CreditState::Tried => {
                events.push(Event::CreditConfirmed { key });
                PhaseResult::Confirmed
            }
            CreditState::Confirmed => PhaseResult::Confirmed,
            // A branch that is cancelled is never confirmed: answer with what it is.
            CreditState::Cancelled | CreditState::TryNotSeen => PhaseResult::Cancelled,
        };
        Ok(Reply::Phase(result))
    }

    fn decide_cancel_credit(
        &self,
        transfer: Transfer,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        self.require_local(&transfer.to)?;
        self.require_remote_source(&transfer.key(), "cancel credit")?;
        let key = transfer.key();
        let found = match self.transfers.credit_lookup(&key)? {
            Some(Credit::Hot(at)) => Some(self.transfers.credit_state(at).0),
            Some(Credit::Cold(row)) => Some(row.state),
            None => None,
        };
        let result = match found {
            None => {
                events.push(Event::CreditTryNotSeen { key });
                PhaseResult::Cancelled
            }
            Some(CreditState::Tried) => {
                events.push(Event::CreditCancelled { key });
                PhaseResult::Cancelled
            }
            Some(CreditState::Cancelled | CreditState::TryNotSeen) => PhaseResult::Cancelled,
            // A branch that is confirmed is never cancelled: answer with what it is.
            Some(CreditState::Confirmed) => PhaseResult::Confirmed,
        };
        Ok(Reply::Phase(result))
    }

    fn decide_abort_credit(
        &self,
        transfer: Transfer,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        self.require_local(&transfer.to)?;
        self.require_remote_source(&transfer.key(), "abort credit")?;
        let key = transfer.key();
        let Some(row) = self.find_credit(&key)? else {
            events.push(Event::CreditTryNotSeen { key });
            return Ok(Reply::Phase(PhaseResult::Cancelled));
        };
        let result = match row.state {
            // Another body under this key is a credit whose home lost it: it cannot commit.
            CreditState::Tried if row.transfer.is_some_and(|t| t != transfer) => {
                events.push(Event::CreditCancelled { key });
                PhaseResult::Cancelled
            }
            // Tried (or already confirmed): with the home's durable debit, the transfer is
            // committed. The abort does not take it back; the answer tells the home so.
            CreditState::Tried | CreditState::Confirmed => PhaseResult::Tried,
            CreditState::Cancelled | CreditState::TryNotSeen => PhaseResult::Cancelled,
        };
        Ok(Reply::Phase(result))
    }

    /// See [`Command::Abandon`]. A transfer that has a row here is not abandoned: the row
    /// stands, and its state is the answer.
    fn decide_abandon(
        &self,
        transfer: Transfer,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        self.require_local(&transfer.from)?;
        if let Some(row) = self.transfers.get(&transfer.key())? {
            return Ok(Reply::Transfer(row.state.status()));
        }
        let reason = Reason::Timeout;
        events.push(Event::TransferRejected { transfer, reason });
        Ok(Reply::Transfer(TransferStatus::Rejected(reason)))
    }

    /// Decides `command` and applies what it decided as the records that follow
    /// the last applied one: lsns count up from `last_applied().lsn + 1`, one per event, all
    /// stamped `timestamp`, or the last applied record's stamp if that is later (the log's
    /// stamps never go back, whatever the wall clock does). `events` receives the events in
    /// log order; the caller encodes them with those lsns and [`Ledger::last_applied`]'s stamp.
    pub fn execute(
        &mut self,
        command: &Command,
        timestamp: Timestamp,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        let first = events.len();
        let timestamp = timestamp.max(self.last.timestamp);
        // A refusal may come with its own record (see `decide_cash`): applied all the same.
        let result = self.decide_at(command, timestamp, events);
        for event in &events[first..] {
            let meta = RecordMeta {
                lsn: self.last.lsn + 1,
                timestamp,
            };
            self.apply_from(meta, event, Source::Decide)
                .expect("events from decide always apply");
        }
        result
    }

    /// Folds one event into the state. Nothing is decided here, but nothing read from a log
    /// is trusted either: an event that does not fit the state (a record out of order, a key
    /// recorded twice, a phase out of turn, money that is not there) is refused with an
    /// [`ApplyError`] rather than folded into a wrong state. Each `apply_*` checks everything
    /// before it changes anything, so a refused event leaves the state as it was.
    pub fn apply(&mut self, meta: RecordMeta, event: &Event) -> Result<(), ApplyError> {
        self.apply_from(meta, event, Source::Log)
    }

    /// [`Ledger::apply`] of an event that came from `source`.
    fn apply_from(
        &mut self,
        meta: RecordMeta,
        event: &Event,
        source: Source,
    ) -> Result<(), ApplyError> {
        let refused = |what| ApplyError {
            lsn: meta.lsn,
            what,
        };
        if meta.lsn < self.last.lsn {
            let what = format!("record out of log order after lsn {}", self.last.lsn);
            return Err(refused(what));
        }
        #[cfg(any(test, madsim, feature = "testing"))]
        self.forget_as_known_bugs_do(event);
        match event {
            Event::AccountOpened { account, currency } => self.apply_opened(account, *currency),
            Event::Deposited {
                account,
                amount,
                transaction_id,
            } => self.apply_cash(CashKind::Deposit, account, *amount, transaction_id),
            Event::Withdrawn {
                account,
                amount,
                transaction_id,
            } => self.apply_cash(CashKind::Withdrawal, account, *amount, transaction_id),
            Event::CashRefused(refused) => self.apply_cash_refused(refused),
            Event::Transferred { transfer } => self.apply_transferred(meta, transfer, source),
            Event::TransferRejected { transfer, reason } => {
                self.apply_rejected(meta, transfer, *reason, source)
            }
            Event::DebitTried { transfer } => self.apply_debit_tried(meta, transfer, source),
            Event::TransferDecided { key, decision } => self.apply_decided(meta, key, *decision),
            Event::DebitConfirmed { key } => self.apply_debit_finished(meta, key, true),
            Event::DebitCancelled { key } => self.apply_debit_finished(meta, key, false),
            Event::CreditTried { transfer } => self.apply_credit_tried(transfer),
            Event::CreditConfirmed { key } => self.apply_credit_finished(key, true),
            Event::CreditCancelled { key } => self.apply_credit_finished(key, false),
            Event::CreditTryNotSeen { key } => self.apply_try_not_seen(key),
            Event::RefundAccepted {
                refund,
                original,
                remote,
            } if *remote == self.owns(&refund.to) => Err(format!(
                "refund {:?} says its destination is {}",
                refund.key(),
                if *remote { "remote" } else { "local" }
            )),
            Event::RefundAccepted {
                refund, original, ..
            } => self.apply_refund(meta, refund, *original, None, source),
            Event::RefundRejected {
                refund,
                original,
                reason,
            } => self.apply_refund(meta, refund, *original, Some(*reason), source),
            Event::HoldPlaced {
                hold,
                expires_at,
                remote,
            } => self.apply_hold_placed(meta, hold, *expires_at, *remote, source),
            Event::HoldEstablished { key } => self.apply_hold_established(key),
            Event::HoldCaptured {
                hold,
                amount,
                remote,
            } => self.apply_hold_captured(meta, hold, *amount, *remote),
            Event::HoldReleased {
                hold,
                reason,
                remote,
            } => self.apply_hold_released(meta, hold, *reason, *remote),
            Event::CreditCaptured { key, amount } => self.apply_credit_captured(key, *amount),
            Event::TransactionApplied { .. }
            | Event::TransactionRejected { .. }
            | Event::TransactionTried { .. }
            | Event::TransactionRefused { .. }
            | Event::TransactionCancelling { .. }
            | Event::TransactionConfirmed { .. }
            | Event::TransactionCancelled { .. } => {
                self.apply_transaction_event(meta, event, source)
            }
        }
        .map_err(refused)?;
        self.last = meta;
        Ok(())
    }

    fn apply_opened(&mut self, account: &AccountId, currency: Currency) -> Result<(), String> {
        let opened = Account {
            currency,
            balance: 0,
            held: 0,
            incoming: 0,
        };
        // One lookup both checks and inserts.
        if self.accounts.insert(*account, opened) {
            Ok(())
        } else {
            Err(format!("account {account} opened twice"))
        }
    }

    /// A deposit or a withdrawal: the balance moves, the idempotency row records it, and the
    /// partition's flows count the money that entered or left.
    fn apply_cash(
        &mut self,
        kind: CashKind,
        account: &AccountId,
        amount: Amount,
        transaction_id: &TransactionId,
    ) -> Result<(), String> {
        let minor = amount.minor();
        let role = match kind {
            CashKind::Deposit => "deposit to",
            CashKind::Withdrawal => "withdrawal from",
        };
        let found = find_account(&mut self.accounts, account, role)?;
        let balance_after = match kind {
            CashKind::Deposit => check_room(account, found, minor).map(|()| found.balance + minor),
            CashKind::Withdrawal => {
                check_covers(account, found, minor).map(|()| found.balance - minor)
            }
        }?;
        let row = CashRow {
            kind,
            amount,
            balance_after,
            refused: None,
        };
        record_cash(&mut self.cash, account, transaction_id, row)?;
        found.balance = balance_after;
        let flows = self.flows.entry(found.currency).or_default();
        match kind {
            CashKind::Deposit => flows.deposited += u128::from(minor),
            CashKind::Withdrawal => flows.withdrawn += u128::from(minor),
        }
        Ok(())
    }

    /// A refused deposit or withdrawal: only its idempotency row, with the balance it found.
    fn apply_cash_refused(&mut self, refused: &CashRefused) -> Result<(), String> {
        let account = &refused.account;
        let row = CashRow {
            kind: refused.kind,
            amount: refused.amount,
            balance_after: self.accounts.get(account).map_or(0, |a| a.balance),
            refused: Some(refused.refusal),
        };
        record_cash(&mut self.cash, account, &refused.transaction_id, row)
    }

    /// The ledger's hottest path: one lookup for the key, which also places the row, and one
    /// for both accounts.
    fn apply_transferred(
        &mut self,
        meta: RecordMeta,
        transfer: &Transfer,
        source: Source,
    ) -> Result<(), String> {
        if is_to_itself(transfer) {
            // Besides breaking the rule, `get_disjoint_mut` would panic on it.
            return Err(format!("transfer {:?} to its own account", transfer.key()));
        }
        let slot = vacancy(&mut self.transfers, &transfer.key(), source)?;
        let (from_id, to_id) = (&transfer.from, &transfer.to);
        let [Some(from), Some(to)] = self.accounts.get_pair_mut(from_id, to_id) else {
            return Err(format!(
                "transfer {:?} names an unknown account",
                transfer.key()
            ));
        };
        let (minor, currency) = (transfer.amount.minor(), transfer.currency);
        check_move(from_id, from, minor, currency, check_covers)?;
        check_move(to_id, to, minor, currency, check_room)?;
        from.balance -= minor;
        to.balance += minor;
        slot.fill(&new_row(meta, *transfer, TransferState::Committed, false));
        Ok(())
    }

    fn apply_rejected(
        &mut self,
        meta: RecordMeta,
        transfer: &Transfer,
        reason: Reason,
        source: Source,
    ) -> Result<(), String> {
        let slot = vacancy(&mut self.transfers, &transfer.key(), source)?;
        let remote = !partition_of(&transfer.to, self.partitions).eq(&self.partition);
        slot.fill(&new_row(
            meta,
            *transfer,
            TransferState::Rejected(reason),
            remote,
        ));
        Ok(())
    }

    fn apply_debit_tried(
        &mut self,
        meta: RecordMeta,
        transfer: &Transfer,
        source: Source,
    ) -> Result<(), String> {
        self.debit_into_hold(meta, transfer, source, TransferState::Trying, true)?;
        Ok(())
    }

    /// Moves `transfer`'s amount from its source's balance into `held` and places its row in
    /// `state`: a debit's Try, or a hold. Changes nothing when it refuses.
    fn debit_into_hold(
        &mut self,
        meta: RecordMeta,
        transfer: &Transfer,
        source: Source,
        state: TransferState,
        remote: bool,
    ) -> Result<usize, String> {
        let slot = vacancy(&mut self.transfers, &transfer.key(), source)?;
        let from = find_account(&mut self.accounts, &transfer.from, "debit from")?;
        let minor = transfer.amount.minor();
        check_move(&transfer.from, from, minor, transfer.currency, check_covers)?;
        from.balance -= minor;
        from.held += minor;
        Ok(slot.fill(&new_row(meta, *transfer, state, remote)))
    }

    /// A refund accepted (`refused` `None`: applied as the transfer it is) or refused
    /// (recorded as a rejected transfer), and counted against its original either way.
    fn apply_refund(
        &mut self,
        meta: RecordMeta,
        refund: &Transfer,
        original: TransactionId,
        refused: Option<Reason>,
        source: Source,
    ) -> Result<(), String> {
        let original = self.check_refund(refund, original, refused.is_none())?;
        match refused {
            Some(reason) => self.apply_rejected(meta, refund, reason, source)?,
            None if self.owns(&refund.to) => self.apply_transferred(meta, refund, source)?,
            None => self.apply_debit_tried(meta, refund, source)?,
        }
        self.count_refund(refund, original, refused.is_none());
        Ok(())
    }

    fn apply_decided(
        &mut self,
        meta: RecordMeta,
        key: &TransferKey,
        decision: Decision,
    ) -> Result<(), String> {
        let at = self.home_row(key).map_err(|e| format!("decision: {e}"))?;
        let mut phase = self.transfers.phase(at);
        let Some(next) = phase.state.after_decision(decision) else {
            return Err(format!("decision for {key:?} in state {:?}", phase.state));
        };
        phase.state = next;
        phase.decided_at = meta.timestamp;
        self.transfers.set_phase(at, phase);
        if matches!(decision, Decision::Cancel(_)) {
            // A hold whose placing is cancelled (its destination refused it, or never
            // answered) ends here: it is open no more, as a restart would rebuild it.
            self.close_hold(at, key);
        }
        Ok(())
    }

    /// The destination acknowledged the logged decision (`confirmed`: a Confirm), or (a
    /// confirm from `Trying`) durably tried the credit: the hold is gone for good, or back
    /// in the balance.
    fn apply_debit_finished(
        &mut self,
        meta: RecordMeta,
        key: &TransferKey,
        confirmed: bool,
    ) -> Result<(), String> {
        let at = self.home_row(key).map_err(|e| format!("finish: {e}"))?;
        let mut phase = self.transfers.phase(at);
        phase.state = match (phase.state.unacknowledged(), confirmed) {
            (Some(Decision::Confirm), true) => TransferState::Committed,
            // Committed at the commit point: decided and finished by this one record.
            (None, true) if phase.state == TransferState::Trying => {
                phase.decided_at = meta.timestamp;
                TransferState::Committed
            }
            (Some(Decision::Cancel(reason)), false) => TransferState::Cancelled(reason),
            _ => return Err(format!("finish of {key:?} in state {:?}", phase.state)),
        };
        let (amount, currency) = self.transfers.money(at);
        let minor = amount.minor();
        let Some(from) = self.accounts.get_mut(&key.from).filter(|a| a.held >= minor) else {
            return Err(format!("hold of {key:?} is missing"));
        };
        from.held -= minor;
        if confirmed {
            self.flows.entry(currency).or_default().sent += u128::from(minor);
        } else {
            from.balance += minor;
        }
        phase.finished_at = meta.timestamp;
        self.transfers.set_phase(at, phase);
        if !confirmed {
            let row = self.transfers.row(at);
            self.uncount_if_refund(at, &row.transfer);
        }
        Ok(())
    }

    fn apply_credit_tried(&mut self, transfer: &Transfer) -> Result<(), String> {
        let key = transfer.key();
        self.check_remote_source(&key)?;
        let to = find_account(&mut self.accounts, &transfer.to, "credit to")?;
        let minor = transfer.amount.minor();
        check_move(&transfer.to, to, minor, transfer.currency, check_room)?;
        let row = CreditRow {
            state: CreditState::Tried,
            transfer: Some(*transfer),
        };
        // One lookup both checks and inserts.
        if !self
            .transfers
            .insert_credit(&key, &row)
            .map_err(|e| e.to_string())?
        {
            return Err(barrier_twice(&key));
        }
        to.incoming += minor;
        Ok(())
    }

    /// A barrier row is only for a transfer from another partition (see
    /// [`Ledger::require_remote_source`]).
    fn check_remote_source(&self, key: &TransferKey) -> Result<(), String> {
        if self.owns(&key.from) {
            return Err(format!(
                "barrier row of {key:?}, whose source is on this partition"
            ));
        }
        Ok(())
    }

    /// The destination's second phase (`confirmed`: a Confirm): the pending credit becomes
    /// balance, or is dropped.
    fn apply_credit_finished(&mut self, key: &TransferKey, confirmed: bool) -> Result<(), String> {
        let no_try = || format!("second phase of {key:?} without a pending Try");
        // One lookup of the row both checks it and, once everything fits, moves it on.
        let at = self.transfers.find_credit(key).ok_or_else(no_try)?;
        let (to_id, amount, currency) = self.transfers.pending_credit(at).ok_or_else(no_try)?;
        let minor = amount.minor();
        let Some(to) = self
            .accounts
            .get_mut(&to_id)
            .filter(|a| a.incoming >= minor)
        else {
            return Err(format!("pending credit of {key:?} is missing"));
        };
        to.incoming -= minor;
        if confirmed {
            to.balance += minor;
            self.flows.entry(currency).or_default().received += u128::from(minor);
        }
        let state = if confirmed {
            CreditState::Confirmed
        } else {
            CreditState::Cancelled
        };
        self.transfers.finish_credit(at, state);
        Ok(())
    }

    fn apply_try_not_seen(&mut self, key: &TransferKey) -> Result<(), String> {
        self.check_remote_source(key)?;
        let row = CreditRow {
            state: CreditState::TryNotSeen,
            transfer: None,
        };
        if !self
            .transfers
            .insert_credit(key, &row)
            .map_err(|e| e.to_string())?
        {
            return Err(barrier_twice(key));
        }
        Ok(())
    }

    /// Replays what the switched-on known bugs do to the state before an event applies (see
    /// [`crate::protocol::bugs`]), so that a log written with a bug on replays as it ran.
    #[cfg(any(test, madsim, feature = "testing"))]
    fn forget_as_known_bugs_do(&mut self, event: &Event) {
        if crate::protocol::bugs::enabled(Bug::NoIdempotency) {
            self.forget_finished_transfer(event);
        }
        if crate::protocol::bugs::enabled(Bug::SkipBarrier) {
            self.forget_cancelled_branch(event);
        }
    }

    /// Known bug `NoIdempotency`: a new record for a finished transfer replaces its row, as
    /// if the key had never been seen (what `decide` does under the same bug).
    #[cfg(any(test, madsim, feature = "testing"))]
    fn forget_finished_transfer(&mut self, event: &Event) {
        if let Event::Transferred { transfer }
        | Event::TransferRejected { transfer, .. }
        | Event::DebitTried { transfer } = *event
        {
            let key = transfer.key();
            let finished = self.transfers.find(&key);
            if finished.is_some_and(|at| !self.transfers.phase(at).state.is_unfinished()) {
                self.transfers.remove(&key);
            }
        }
    }

    /// Known bug `SkipBarrier`: a Try after its Cancel replaces the cancelled barrier row, as
    /// if no Cancel had come (what `decide` does under the same bug).
    #[cfg(any(test, madsim, feature = "testing"))]
    fn forget_cancelled_branch(&mut self, event: &Event) {
        if let Event::CreditTried { transfer } = *event {
            let key = transfer.key();
            let cancelled = matches!(
                self.transfers.credit(&key),
                Ok(Some(CreditRow {
                    state: CreditState::Cancelled | CreditState::TryNotSeen,
                    ..
                }))
            );
            if cancelled && self.accounts.contains_key(&transfer.to) {
                self.transfers.remove(&key);
            }
        }
    }

    /// The partition's conservation law, per currency:
    /// `Σ balance + Σ held = deposited − withdrawn − sent + received`. Scans every account,
    /// so it is meant for tests, debug builds, the simulator and `wallet verify`.
    pub fn check_conservation(&self) -> Result<(), String> {
        let mut sums: BTreeMap<Currency, (u128, u128)> = BTreeMap::new();
        for account in self.accounts.values() {
            let entry = sums.entry(account.currency).or_default();
            entry.0 += u128::from(account.balance) + u128::from(account.held);
            entry.1 += u128::from(account.incoming);
        }
        let mut incoming_by_rows: BTreeMap<Currency, u128> = BTreeMap::new();
        for (amount, currency) in self.transfers.pending_credits() {
            *incoming_by_rows.entry(currency).or_default() += u128::from(amount.minor());
        }
        for (currency, minor) in self.local_holds_incoming() {
            *incoming_by_rows.entry(currency).or_default() += u128::from(minor);
        }
        for (currency, minor) in self.transactions_incoming() {
            *incoming_by_rows.entry(currency).or_default() += u128::from(minor);
        }
        for currency in sums.keys().chain(self.flows.keys()) {
            let (held_and_balance, incoming) = sums.get(currency).copied().unwrap_or_default();
            let flows = self.flows.get(currency).copied().unwrap_or_default();
            // Checked: a snapshot's flows are read from disk and may be anything, and in a
            // release build a wrapped sum could make damaged totals look conserved.
            let entered = flows.deposited.checked_add(flows.received);
            let left = flows.withdrawn.checked_add(flows.sent);
            let (Some(entered), Some(left)) = (entered, left) else {
                return Err(format!("{currency}: flow totals overflow 128 bits"));
            };
            let expected = entered
                .checked_sub(left)
                .ok_or_else(|| format!("{currency}: more left the partition than entered"))?;
            if held_and_balance != expected {
                return Err(format!(
                    "{currency}: balances + holds = {held_and_balance}, but deposited - withdrawn - sent + received = {expected}"
                ));
            }
            let by_rows = incoming_by_rows.get(currency).copied().unwrap_or_default();
            if incoming != by_rows {
                return Err(format!("{currency}: pending credits on accounts {incoming} != on barrier rows {by_rows}"));
            }
        }
        Ok(())
    }
}

/// The idempotency row a transfer gets when its first record is applied.
fn new_row(
    meta: RecordMeta,
    transfer: Transfer,
    state: TransferState,
    remote: bool,
) -> TransferRow {
    let final_at = if state.is_unfinished() {
        0
    } else {
        meta.timestamp
    };
    TransferRow {
        transfer,
        state,
        remote,
        accepted_at: meta.timestamp,
        decided_at: final_at,
        finished_at: final_at,
    }
}

/// Whether business refusals are recorded: always, but for the known bug that forgets to.
#[inline]
fn records_refusals() -> bool {
    !known_bug!(RefusalUnrecorded)
}

/// Whether `transfer` names one account on both sides. `decide` refuses it and `apply` must
/// too: a transfer moves money between two accounts.
#[inline]
fn is_to_itself(transfer: &Transfer) -> bool {
    transfer.from == transfer.to
}

/// The account `id` that an event names (as `role`, for the error), which must exist.
#[inline]
fn find_account<'a>(
    accounts: &'a mut AccountTable,
    id: &AccountId,
    role: &str,
) -> Result<&'a mut Account, String> {
    accounts
        .get_mut(id)
        .ok_or_else(|| format!("{role} unknown account {id}"))
}

/// `Ok` when `ok`, else the refusal `text` makes. The text is built out of line (`#[cold]`),
/// so that the hot path of `apply` is the comparison alone.
#[inline]
fn check(ok: bool, text: impl FnOnce() -> String) -> Result<(), String> {
    #[cold]
    #[inline(never)]
    fn refused(text: impl FnOnce() -> String) -> Result<(), String> {
        Err(text())
    }
    if ok {
        Ok(())
    } else {
        refused(text)
    }
}

/// That money in `currency` may move in or out of `found`, the account `id`.
#[inline]
fn check_currency(id: &AccountId, found: &Account, currency: Currency) -> Result<(), String> {
    check(found.holds(currency), || {
        format!("account {id} holds {}, not {currency}", found.currency)
    })
}

/// That `minor` can leave the available balance of `found`, the account `id`.
#[inline]
fn check_covers(id: &AccountId, found: &Account, minor: u64) -> Result<(), String> {
    check(found.covers(minor), || {
        let currency = found.currency;
        format!(
            "{} {currency} {OVERDRAWS} {id}, which has {} {currency} available",
            format_minor(minor, currency),
            format_minor(found.balance, currency)
        )
    })
}

/// That `minor` more fits in `found`, the account `id`, below the balance limit.
#[inline]
fn check_room(id: &AccountId, found: &Account, minor: u64) -> Result<(), String> {
    check(found.has_room_for(minor), || {
        format!(
            "{} {} more would take {id} past the largest balance an account may hold",
            format_minor(minor, found.currency),
            found.currency
        )
    })
}

/// That `minor` of `currency` can be moved out of (with `check_covers`) or into (with
/// `check_room`) `found`, the account `id`: the rules `decide` checked before it logged the
/// movement.
#[inline]
fn check_move(
    id: &AccountId,
    found: &Account,
    minor: u64,
    currency: Currency,
    fits: fn(&AccountId, &Account, u64) -> Result<(), String>,
) -> Result<(), String> {
    check_currency(id, found, currency)?;
    fits(id, found, minor)
}

/// Why a second record under the transfer key `key` is refused: a transfer key is an
/// idempotency key, spent once, so a second record under it contradicts the log.
#[cold]
fn recorded_twice(key: &TransferKey) -> String {
    format!("transfer {key:?} recorded twice")
}

/// Commands between the two steps of [`Ledger::prefetch`]: the account rows of a command
/// are asked for this many commands after its index slots, by when the slots have arrived.
pub const PREFETCH_ROWS_LAG: usize = 8;

/// What the first step of a prefetch ([`Ledger::prefetch_one`]) hands to the second
/// ([`Ledger::prefetch_rows`]): the hashes of the command's accounts, so that an id is
/// hashed once for both steps.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prefetched {
    accounts: [Option<account_index::IndexHash>; PREFETCH_ACCOUNTS],
}

impl Prefetched {
    /// The accounts of a transfer's command (two at most).
    fn of(accounts: [Option<account_index::IndexHash>; 2]) -> Prefetched {
        let mut prefetched = Prefetched::default();
        prefetched.accounts[..2].copy_from_slice(&accounts);
        prefetched
    }
}

/// Most accounts of one command that [`Ledger::prefetch`] brings in: a transfer's two, and
/// of a multi-leg transaction the first four of those on the partition (a random 4-leg
/// transaction over 8 partitions names about two per participant).
const PREFETCH_ACCOUNTS: usize = 4;

/// Where an event being applied comes from: what has been checked of it already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// `decide` made it a moment ago from this state: it looked its transfer key up, on disk
    /// too, and found it new.
    Decide,
    /// A log or a peer's record: nothing about it is trusted.
    Log,
}

/// The place for the row of `key`'s first record (see [`recorded_twice`]): one lookup both
/// checks and, filled, inserts. A key that `decide` found new is not looked for on disk
/// again, which would be the cold filter's probes a second time for every new transfer
/// (the simulator and tests still do, to catch a decide that forgot to).
#[inline]
fn vacancy<'a>(
    transfers: &'a mut TransferTable,
    key: &TransferKey,
    source: Source,
) -> Result<Vacancy<'a>, String> {
    let check_disk = source == Source::Log || cfg!(any(test, madsim, feature = "testing"));
    transfers
        .vacancy(key, check_disk)
        .map_err(|error| error.to_string())?
        .ok_or_else(|| recorded_twice(key))
}

/// Records the idempotency row of a deposit or withdrawal. A transaction id is spent once per
/// account, by deposits and withdrawals alike: a second record of one contradicts the log.
#[inline]
fn record_cash(
    cash: &mut CashTable,
    account: &AccountId,
    transaction_id: &TransactionId,
    row: CashRow,
) -> Result<(), String> {
    if cash.insert(account, transaction_id, row) {
        Ok(())
    } else {
        Err(format!("{account} used {transaction_id:?} twice"))
    }
}

/// Why a second barrier row for `key` is refused: a key gets one, written by its Try or, when
/// the Cancel came first, by the flag that fails a late Try; a second contradicts the log.
#[cold]
fn barrier_twice(key: &TransferKey) -> String {
    format!("barrier row of {key:?} recorded twice")
}

#[cfg(test)]
mod prefetch_tests {
    use super::*;
    use crate::model::money::Amount;
    use crate::model::transaction::Leg;

    /// The first `count` accounts `acct-0`, `acct-1`, ... that `keep` takes.
    fn accounts_where(count: usize, keep: impl Fn(&AccountId) -> bool) -> Vec<AccountId> {
        (0..)
            .map(|n| AccountId::new(&format!("acct-{n}")).unwrap())
            .filter(|account| keep(account))
            .take(count)
            .collect()
    }

    fn leg(from: AccountId, to: AccountId) -> Leg {
        Leg {
            from,
            to,
            amount: Amount::from_minor(100).unwrap(),
            currency: Currency::USD,
        }
    }

    /// A transaction's command asks for the accounts of its legs that live on the
    /// partition, each once, the first `PREFETCH_ACCOUNTS` in the order the legs name them.
    #[test]
    fn a_transaction_prefetches_its_first_distinct_accounts_of_the_partition() {
        let ledger = Ledger::new(0, 2);
        let here = accounts_where(6, |a| partition_of(a, 2) == 0);
        let there = accounts_where(3, |a| partition_of(a, 2) == 1);
        let legs = vec![
            leg(here[0], there[0]),
            leg(there[1], here[0]),
            leg(there[2], here[1]),
            leg(here[2], here[3]),
            leg(here[4], here[5]),
        ];
        let tx = Transaction::new(TransactionId::new("t").unwrap(), legs).unwrap();
        let expected = here[..PREFETCH_ACCOUNTS]
            .iter()
            .map(|account| Some(ledger.accounts.prefetch_slot(account)));
        let expected: Vec<_> = expected.collect();
        let commands = [
            Command::Transact(tx.clone()),
            Command::TryTransaction {
                tx: tx.clone(),
                partition: 0,
            },
            Command::AbortTransaction { tx, partition: 0 },
        ];
        for command in &commands {
            let prefetched = ledger.prefetch_one(command);
            assert_eq!(prefetched.accounts.to_vec(), expected, "{command:?}");
        }
    }

    /// Fewer accounts here than the limit: the rest of the slots ask for nothing.
    #[test]
    fn a_transaction_with_one_account_here_prefetches_only_that_one() {
        let ledger = Ledger::new(1, 2);
        let here = accounts_where(1, |a| partition_of(a, 2) == 1);
        let there = accounts_where(2, |a| partition_of(a, 2) == 0);
        let legs = vec![leg(there[0], here[0]), leg(here[0], there[1])];
        let tx = Transaction::new(TransactionId::new("t").unwrap(), legs).unwrap();
        let command = Command::TryTransaction { tx, partition: 1 };
        let prefetched = ledger.prefetch_one(&command);
        let mut expected = [None; PREFETCH_ACCOUNTS];
        expected[0] = Some(ledger.accounts.prefetch_slot(&here[0]));
        assert_eq!(prefetched.accounts, expected);
    }
}
