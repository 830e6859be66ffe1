//! The events of a partition log and the facts they carry.
//!
//! Events are facts that already happened; applying one never fails and never decides
//! anything (see [`crate::ledger`] for where decisions are made). Every variant is part of the
//! on-disk format: never change the meaning of an existing one, add new variants instead.

use std::sync::Arc;

use crate::model::ids::{AccountId, TransactionId};
use crate::model::money::{Amount, Currency};
use crate::model::transaction::Transaction;

/// Microseconds since the Unix epoch, as read by the driver (wall clock) and stamped on records.
pub type Timestamp = u64;
/// Log sequence number: the position of a record in its partition's log, from 1.
pub type Lsn = u64;

/// Identifies a transfer everywhere: idempotency key, phase row and barrier row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferKey {
    pub from: AccountId,
    pub transaction_id: TransactionId,
}

/// Everything a client said about a transfer. Two requests with the same key must carry the
/// same body, or the second is a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transfer {
    pub transaction_id: TransactionId,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Amount,
    pub currency: Currency,
}

impl Transfer {
    /// The idempotency key of this transfer.
    pub fn key(&self) -> TransferKey {
        TransferKey {
            from: self.from,
            transaction_id: self.transaction_id,
        }
    }
}

/// Why a transfer did not happen. Part of the log format: append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The source's available balance was smaller than the amount.
    InsufficientFunds,
    /// The destination account does not exist.
    DestinationNotFound,
    /// The destination account holds another currency.
    DestinationCurrencyMismatch,
    /// The destination would exceed the largest balance an account may hold.
    DestinationBalanceLimit,
    /// The destination did not answer the Try in time.
    Timeout,
    /// The destination had already seen a Cancel for this transfer (a late Try).
    CancelledBeforeTry,
    /// The source account does not exist (at its home partition, when the transfer came).
    SourceNotFound,
    /// The source account holds another currency.
    SourceCurrencyMismatch,
    /// `from` and `to` are the same account.
    SameAccount,
    /// A refund asked for more than what is left to refund of its original transfer (its
    /// amount less the refunds before it), or for what was left when nothing was.
    RefundExceedsOriginal,
    /// A hold was voided by its client: everything went back to the source.
    HoldVoided,
    /// A hold reached its expiry before it was captured or voided: everything went back to
    /// the source.
    HoldExpired,
}

impl Reason {
    /// Every reason, in the order of their log tags.
    pub const ALL: [Reason; 12] = [
        Reason::InsufficientFunds,
        Reason::DestinationNotFound,
        Reason::DestinationCurrencyMismatch,
        Reason::DestinationBalanceLimit,
        Reason::Timeout,
        Reason::CancelledBeforeTry,
        Reason::SourceNotFound,
        Reason::SourceCurrencyMismatch,
        Reason::SameAccount,
        Reason::RefundExceedsOriginal,
        Reason::HoldVoided,
        Reason::HoldExpired,
    ];

    /// The stable machine-readable code for APIs and logs.
    pub fn code(self) -> &'static str {
        match self {
            Reason::InsufficientFunds => "insufficient_funds",
            Reason::DestinationNotFound => "account_not_found",
            Reason::DestinationCurrencyMismatch => "currency_mismatch",
            Reason::DestinationBalanceLimit => "balance_limit",
            Reason::Timeout => "timeout",
            Reason::CancelledBeforeTry => "cancelled_before_try",
            Reason::SourceNotFound => "account_not_found",
            Reason::SourceCurrencyMismatch => "currency_mismatch",
            Reason::SameAccount => "same_account",
            Reason::RefundExceedsOriginal => "refund_exceeds_original",
            Reason::HoldVoided => "hold_voided",
            Reason::HoldExpired => "hold_expired",
        }
    }
}

/// Kind of a deposit or withdrawal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CashKind {
    Deposit,
    Withdrawal,
}

/// A refused deposit or withdrawal, as [`Event::CashRefused`] records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CashRefused {
    pub account: AccountId,
    pub transaction_id: TransactionId,
    pub kind: CashKind,
    pub amount: Amount,
    pub refusal: CashRefusal,
}

/// Why a deposit or withdrawal was refused: a business refusal, recorded so that its
/// `transaction_id` gets the same answer forever (see [`Event::CashRefused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CashRefusal {
    AccountNotFound,
    /// The account holds another currency than the request's, which is kept.
    CurrencyMismatch(Currency),
    InsufficientFunds,
    BalanceLimit,
}

/// The second-phase decision of a cross-partition transfer, logged at its home partition
/// before any second-phase message leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Confirm,
    Cancel(Reason),
}

/// One fact in a partition's log. Not `Copy`: a multi-leg transaction's events share its
/// legs ([`Arc`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An account was opened with a zero balance in one currency.
    AccountOpened {
        account: AccountId,
        currency: Currency,
    },
    /// Money entered the system.
    Deposited {
        account: AccountId,
        amount: Amount,
        transaction_id: TransactionId,
    },
    /// Money left the system.
    Withdrawn {
        account: AccountId,
        amount: Amount,
        transaction_id: TransactionId,
    },
    /// A deposit or withdrawal was refused (a business refusal); recorded so that a retry of
    /// its `transaction_id` gets the same answer forever. Nothing moved.
    CashRefused(CashRefused),
    /// A transfer within one partition, applied atomically: debit and credit in one event.
    Transferred { transfer: Transfer },
    /// A transfer was refused at its home partition; recorded so a retry gets the same answer.
    TransferRejected { transfer: Transfer, reason: Reason },
    /// Source Try: the amount moved from the balance into a hold; the phase row is `Trying`.
    DebitTried { transfer: Transfer },
    /// The home partition decided the second phase; the row is `Confirming` or `Cancelling`.
    TransferDecided {
        key: TransferKey,
        decision: Decision,
    },
    /// Source Confirm acknowledged by the destination: the hold is gone for good.
    DebitConfirmed { key: TransferKey },
    /// Source Cancel acknowledged by the destination: the hold went back to the balance.
    DebitCancelled { key: TransferKey },
    /// Destination Try: a pending credit was recorded; no balance changed.
    CreditTried { transfer: Transfer },
    /// Destination Confirm: the pending credit became balance.
    CreditConfirmed { key: TransferKey },
    /// Destination Cancel after its Try: the pending credit was dropped.
    CreditCancelled { key: TransferKey },
    /// Destination Cancel with no prior Try (null compensation): a later Try must fail.
    CreditTryNotSeen { key: TransferKey },
    /// A refund was accepted at its home, the partition of the original transfer's
    /// destination: `refund` moves money back from that destination (`refund.from`) to the
    /// original's source (`refund.to`); the original is the transfer `original` from
    /// `refund.to`. It applies to `refund` as [`Event::Transferred`] does within a partition
    /// and [`Event::DebitTried`] across partitions, and counts its amount against what is
    /// left to refund of the original (one event, so that the two never part).
    RefundAccepted {
        refund: Transfer,
        original: TransactionId,
        /// Whether `refund.to` lives on another partition (then the refund is a TC/C
        /// transfer, and this is its debit's Try).
        remote: bool,
    },
    /// A refund was refused at its home (a business refusal, recorded so that a retry of its
    /// id gets the same answer forever): as [`Event::TransferRejected`], with the original it
    /// named.
    RefundRejected {
        refund: Transfer,
        original: TransactionId,
        reason: Reason,
    },
    /// A hold was placed at its home: `hold.amount` left the source's balance into `held`,
    /// to reach `hold.to` only if captured. Within one partition the destination counts it
    /// as `incoming` at once, so a capture can never pass its balance limit, and the hold is
    /// held; across partitions this is the hold's debit Try (as [`Event::DebitTried`]), and
    /// the hold is held once the destination durably tried its credit
    /// ([`Event::HoldEstablished`]). It expires at `expires_at` (the home's wall clock).
    HoldPlaced {
        hold: Transfer,
        expires_at: Timestamp,
        /// Whether `hold.to` lives on another partition.
        remote: bool,
    },
    /// The destination of a hold across partitions durably tried its credit: the hold is
    /// held (the commit point of its Try, as for a transfer).
    HoldEstablished { key: TransferKey },
    /// A held hold was captured, final at once: `amount` (at most the hold's) reaches the
    /// destination, the rest goes back to the source. Across partitions the Confirm that
    /// follows carries `amount` to the destination.
    HoldCaptured {
        hold: Transfer,
        amount: Amount,
        remote: bool,
    },
    /// A held hold was voided or expired (`reason`): everything goes back to the source.
    /// Within one partition this is final; across partitions it is the decision to cancel
    /// (as [`Event::TransferDecided`]), carried to the destination as a transfer's cancel is.
    HoldReleased {
        hold: Transfer,
        reason: Reason,
        remote: bool,
    },
    /// Destination Confirm of a hold captured in part: the pending credit (the hold's whole
    /// amount) is dropped and `amount` of it became balance.
    CreditCaptured { key: TransferKey, amount: Amount },
    /// A multi-leg transaction whose accounts all live on this partition, applied at once:
    /// the net of its legs on each account (see [`crate::model::transaction`]).
    TransactionApplied { tx: Arc<Transaction> },
    /// A multi-leg transaction refused at its home: nothing moved. Its leg `failed_leg` (an
    /// index into its legs) failed for `reason`, or (no leg, [`Reason::Timeout`]) a
    /// participant asked about a Try its home had lost, which the home rejects for good; a
    /// retry of its id gets this answer.
    TransactionRejected {
        tx: Arc<Transaction>,
        failed_leg: Option<u8>,
        reason: Reason,
    },
    /// A participant's Try of a multi-leg transaction across partitions, its home's record
    /// of it included: the net debits of this partition's accounts moved from their balance
    /// into `held`, their net credits counted as `incoming`.
    TransactionTried { tx: Arc<Transaction> },
    /// A participant other than the home refused the Try: leg `failed_leg` failed for
    /// `reason`; or (no leg, [`Reason::CancelledBeforeTry`]) a cancel came before any Try,
    /// the null compensation. Nothing moved, and every later Try gets this answer.
    TransactionRefused {
        key: TransferKey,
        failed_leg: Option<u8>,
        reason: Reason,
    },
    /// The home decided to cancel a transaction it tried: a participant refused (leg
    /// `failed_leg`, `reason`) or did not answer in time. The cancel is carried to every
    /// participant.
    TransactionCancelling {
        key: TransferKey,
        failed_leg: Option<u8>,
        reason: Reason,
    },
    /// A participant's effects became final: its net debits left for good, its net credits
    /// became balance. At the home it is the record of the commit point (every participant
    /// durably tried).
    TransactionConfirmed { key: TransferKey },
    /// A participant's effects were undone: its net debits back in the balance, its net
    /// credits dropped. At the home it ends the cancel, once every participant acknowledged
    /// it.
    TransactionCancelled { key: TransferKey },
}

impl Event {
    /// What this event does to balances and rows, as the event that does the same for a
    /// plain transfer: a refund accepted is a [`Event::Transferred`] when its two accounts
    /// share a partition and a [`Event::DebitTried`] when they do not, a refund refused is a
    /// [`Event::TransferRejected`], a hold across partitions placed is a
    /// [`Event::DebitTried`] and released a [`Event::TransferDecided`] to cancel; every other
    /// event is itself (the other hold events have no transfer equivalent). Readers that follow money
    /// or phases (replay, the coordinator, history) match on this.
    pub fn effect(&self) -> Event {
        match *self {
            Event::RefundAccepted {
                refund,
                remote: false,
                ..
            } => Event::Transferred { transfer: refund },
            Event::RefundAccepted {
                refund,
                remote: true,
                ..
            } => Event::DebitTried { transfer: refund },
            Event::RefundRejected { refund, reason, .. } => Event::TransferRejected {
                transfer: refund,
                reason,
            },
            Event::HoldPlaced {
                hold, remote: true, ..
            } => Event::DebitTried { transfer: hold },
            Event::HoldReleased {
                hold,
                reason,
                remote: true,
            } => Event::TransferDecided {
                key: hold.key(),
                decision: Decision::Cancel(reason),
            },
            ref event => event.clone(),
        }
    }

    /// The key of the original transfer a refund event names: from the original's source
    /// (the refund's destination), under the original's id.
    pub fn refund_original(refund: &Transfer, original: TransactionId) -> TransferKey {
        TransferKey {
            from: refund.to,
            transaction_id: original,
        }
    }
}
