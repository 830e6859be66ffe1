//! What a broken invariant looks like: [`Violation`], and the [`Invariant`] it breaks.

use crate::ledger::{ApplyError, CreditState, Ledger, TransferState, TransferStatus};
use crate::log::replay::state_difference;
use crate::model::event::{Lsn, TransferKey};
use crate::model::ids::AccountId;
use crate::model::money::Currency;
use crate::model::partition::PartitionId;
use crate::protocol::coordinator::Phase;

/// The invariants, by the names every checker reports them under, in the order a report
/// lists them (the most specific first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// 5: no Try applied after its Cancel.
    NoHanging,
    /// 3: nothing applied twice, however often a client retries.
    ExactlyOnce,
    /// Refunds: only a committed transfer is refunded, into its source, and its refunds
    /// accepted and not finally cancelled never sum to more than it moved.
    RefundCap,
    /// Holds: a hold ends at most once, by one capture, void or expiry at its home.
    HoldOnce,
    /// Holds: a hold expires no sooner than its `expires_at`, and is captured or voided
    /// only before it.
    HoldExpiry,
    /// Holds: a capture takes at most the hold's amount.
    HoldCapture,
    /// Transactions: one outcome per transaction on each partition, in the protocol's order
    /// (a side confirmed or cancelled only once tried, never both).
    TxOnce,
    /// Transactions: all or nothing across partitions (no participant refuses or cancels
    /// what its home committed, none confirms what its home did not).
    TxAtomicity,
    /// 2: no available balance below zero (or above the largest one).
    NoNegative,
    /// 1: money is neither created nor destroyed.
    Conservation,
    /// 4: both sides of a transfer in states the protocol allows together; nothing left in
    /// flight at rest.
    Atomicity,
    /// 6: what a client was told is in the log, and was durable when it was told.
    Durability,
    /// 6, for peers: a Confirm or Cancel leaves only once its home's decision is durable.
    DurableDecision,
    /// 6, for peers: no peer message leaves a batch that is not durable.
    DurableRelease,
    /// 7: the logs replay to the live state.
    Replay,
    /// A partition answered against the protocol (a coordinator saw a contradiction).
    Protocol,
}

impl Invariant {
    pub const ALL: [Invariant; 16] = [
        Invariant::NoHanging,
        Invariant::ExactlyOnce,
        Invariant::RefundCap,
        Invariant::HoldOnce,
        Invariant::HoldExpiry,
        Invariant::HoldCapture,
        Invariant::TxOnce,
        Invariant::TxAtomicity,
        Invariant::NoNegative,
        Invariant::Conservation,
        Invariant::Atomicity,
        Invariant::Durability,
        Invariant::DurableDecision,
        Invariant::DurableRelease,
        Invariant::Replay,
        Invariant::Protocol,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Invariant::NoHanging => "no_hanging",
            Invariant::ExactlyOnce => "exactly_once",
            Invariant::RefundCap => "refund_cap",
            Invariant::HoldOnce => "hold_once",
            Invariant::HoldExpiry => "hold_expiry",
            Invariant::HoldCapture => "hold_capture",
            Invariant::TxOnce => "tx_once",
            Invariant::TxAtomicity => "tx_atomicity",
            Invariant::NoNegative => "no_negative",
            Invariant::Conservation => "conservation",
            Invariant::Atomicity => "atomicity",
            Invariant::Durability => "durability",
            Invariant::DurableDecision => "durable_decision",
            Invariant::DurableRelease => "durable_release",
            Invariant::Replay => "replay",
            Invariant::Protocol => "protocol",
        }
    }
}

impl std::fmt::Display for Invariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A broken invariant, with what is needed to find its cause. Its text starts with nothing
/// but what broke; [`Violation::invariant`] names the invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error(
        "{currency}: balances + holds in flight = {have}, deposits - withdrawals = {expected}"
    )]
    Conservation {
        currency: Currency,
        have: i128,
        expected: i128,
    },
    /// A partition's own books do not balance ([`Ledger::check_conservation`]).
    #[error("partition {partition}: {detail}")]
    Books {
        partition: PartitionId,
        detail: String,
    },
    #[error("partition {partition}: account {account} holds {held} but its unfinished transfers add up to {by_rows}")]
    Held {
        partition: PartitionId,
        account: AccountId,
        held: u64,
        by_rows: u64,
    },
    #[error("account {account} has a balance of {balance}, above the largest an account may hold")]
    BalanceLimit { account: AccountId, balance: u64 },
    /// An event did not apply: an overdraft, or a log that contradicts itself.
    #[error("partition {partition}: the log does not replay: {error}")]
    Apply {
        partition: PartitionId,
        error: ApplyError,
    },
    #[error("partition {partition} lsn {lsn}: {what} twice{}", about(key, account))]
    ExactlyOnce {
        partition: PartitionId,
        lsn: Lsn,
        what: &'static str,
        key: Option<TransferKey>,
        account: Option<AccountId>,
    },
    /// A refund recorded against a transfer that is not committed into its source, or
    /// accepted beyond what is left of it.
    #[error("partition {partition} lsn {lsn}: refund {refund:?} of {original:?}: {detail}")]
    RefundCap {
        partition: PartitionId,
        lsn: Lsn,
        refund: TransferKey,
        original: TransferKey,
        detail: String,
    },
    /// A hold ended twice, or without being placed.
    #[error("partition {partition} lsn {lsn}: hold {key:?} {detail}")]
    HoldOnce {
        partition: PartitionId,
        lsn: Lsn,
        key: TransferKey,
        detail: String,
    },
    /// A hold expired before its time, or was captured or voided at or after it.
    #[error("partition {partition} lsn {lsn}: hold {key:?} {detail}")]
    HoldExpiry {
        partition: PartitionId,
        lsn: Lsn,
        key: TransferKey,
        detail: String,
    },
    /// A hold captured for more than it holds.
    #[error("partition {partition} lsn {lsn}: hold {key:?} {detail}")]
    HoldCapture {
        partition: PartitionId,
        lsn: Lsn,
        key: TransferKey,
        detail: String,
    },
    /// A transaction's side out of the protocol's order on one partition.
    #[error("partition {partition} lsn {lsn}: transaction {key:?} {detail}")]
    TxOnce {
        partition: PartitionId,
        lsn: Lsn,
        key: TransferKey,
        detail: String,
    },
    /// A transaction committed in part.
    #[error("transaction {key:?} not all or nothing: {detail}")]
    TxAtomicity { key: TransferKey, detail: String },
    #[error("partition {partition} lsn {lsn}: Try of {key:?} applied after its Cancel (a hanging reservation)")]
    Hanging {
        partition: PartitionId,
        lsn: Lsn,
        key: TransferKey,
    },
    /// A record in the log of a partition that does not own its account.
    #[error("partition {partition} lsn {lsn}: {detail}")]
    Misplaced {
        partition: PartitionId,
        lsn: Lsn,
        detail: String,
    },
    /// The two sides of a cross-partition transfer are in states the protocol does not allow
    /// together (at any moment, or at rest).
    #[error("transfer {key:?} is {home:?} at home but {credit:?} at the destination{}", if *at_rest { " at rest" } else { "" })]
    Sides {
        key: TransferKey,
        home: Option<TransferState>,
        credit: Option<CreditState>,
        at_rest: bool,
    },
    #[error("transfer {key:?}: the destination recorded another body than the home")]
    BodyDiffers { key: TransferKey },
    #[error("account {account} still holds {held} and expects {incoming} at rest")]
    LeftInFlight {
        account: AccountId,
        held: u64,
        incoming: u64,
    },
    /// Work left at rest that no ledger shows (messages on the wire, a busy coordinator).
    #[error("not at rest: {detail}")]
    NotQuiet { detail: String },
    #[error("transfer {key:?} acknowledged {told:?}, its home holds {}", held_at_home(*found, *other_body))]
    Acknowledged {
        key: TransferKey,
        told: TransferStatus,
        found: Option<TransferStatus>,
        other_body: bool,
    },
    #[error("partition {partition}: {answers} answers left a batch ending at lsn {last_lsn}, durable through lsn {durable_lsn} only")]
    AnswerBeforeDurable {
        partition: PartitionId,
        last_lsn: Lsn,
        durable_lsn: Lsn,
        answers: usize,
    },
    #[error("partition {partition}: {phase:?} of {key:?} is sent while its home row is {state:?}, which holds no such decision")]
    DecisionMissing {
        partition: PartitionId,
        key: TransferKey,
        phase: Phase,
        state: Option<TransferState>,
    },
    #[error("partition {partition}: {phase:?} of {key:?} left a batch ending at lsn {last_lsn}, durable through lsn {durable_lsn} only")]
    DecisionNotDurable {
        partition: PartitionId,
        key: TransferKey,
        phase: Phase,
        last_lsn: Lsn,
        durable_lsn: Lsn,
    },
    #[error("partition {partition}: {messages} peer messages left a batch ending at lsn {last_lsn}, durable through lsn {durable_lsn} only")]
    MessageBeforeDurable {
        partition: PartitionId,
        last_lsn: Lsn,
        durable_lsn: Lsn,
        messages: usize,
    },
    #[error("partition {partition}: {detail}")]
    Replay {
        partition: PartitionId,
        detail: String,
    },
    #[error("{detail}")]
    Protocol {
        key: Option<TransferKey>,
        detail: String,
    },
}

/// ` of {key}` or ` of {account}`, for messages.
fn about(key: &Option<TransferKey>, account: &Option<AccountId>) -> String {
    match (key, account) {
        (Some(key), _) => format!(" for {key:?}"),
        (None, Some(account)) => format!(" for {account}"),
        (None, None) => String::new(),
    }
}

/// What a home holds of an acknowledged transfer, for messages.
fn held_at_home(found: Option<TransferStatus>, other_body: bool) -> String {
    let found = found.map_or("no row".to_string(), |status| format!("{status:?}"));
    if other_body {
        format!("{found} with another body")
    } else {
        found
    }
}

impl Violation {
    /// The invariant this breaks.
    pub fn invariant(&self) -> Invariant {
        match self {
            Violation::Conservation { .. } | Violation::Books { .. } | Violation::Held { .. } => {
                Invariant::Conservation
            }
            Violation::BalanceLimit { .. } => Invariant::NoNegative,
            Violation::Apply { error, .. } if error.is_overdraw() => Invariant::NoNegative,
            Violation::Apply { .. } | Violation::Misplaced { .. } | Violation::Replay { .. } => {
                Invariant::Replay
            }
            Violation::ExactlyOnce { .. } => Invariant::ExactlyOnce,
            Violation::RefundCap { .. } => Invariant::RefundCap,
            Violation::HoldOnce { .. } => Invariant::HoldOnce,
            Violation::HoldExpiry { .. } => Invariant::HoldExpiry,
            Violation::HoldCapture { .. } => Invariant::HoldCapture,
            Violation::TxOnce { .. } => Invariant::TxOnce,
            Violation::TxAtomicity { .. } => Invariant::TxAtomicity,
            Violation::Hanging { .. } => Invariant::NoHanging,
            Violation::Sides { .. }
            | Violation::BodyDiffers { .. }
            | Violation::LeftInFlight { .. }
            | Violation::NotQuiet { .. } => Invariant::Atomicity,
            Violation::Acknowledged { .. } | Violation::AnswerBeforeDurable { .. } => {
                Invariant::Durability
            }
            Violation::DecisionMissing { .. } | Violation::DecisionNotDurable { .. } => {
                Invariant::DurableDecision
            }
            Violation::MessageBeforeDurable { .. } => Invariant::DurableRelease,
            Violation::Protocol { .. } => Invariant::Protocol,
        }
    }

    /// The transfer it is about, if one.
    pub fn key(&self) -> Option<TransferKey> {
        match self {
            Violation::ExactlyOnce { key, .. } | Violation::Protocol { key, .. } => *key,
            Violation::Hanging { key, .. }
            | Violation::RefundCap { refund: key, .. }
            | Violation::HoldOnce { key, .. }
            | Violation::HoldExpiry { key, .. }
            | Violation::HoldCapture { key, .. }
            | Violation::TxOnce { key, .. }
            | Violation::TxAtomicity { key, .. }
            | Violation::Sides { key, .. }
            | Violation::BodyDiffers { key }
            | Violation::Acknowledged { key, .. }
            | Violation::DecisionMissing { key, .. }
            | Violation::DecisionNotDurable { key, .. } => Some(*key),
            _ => None,
        }
    }

    /// The account it is about, if one.
    pub fn account(&self) -> Option<AccountId> {
        match self {
            Violation::ExactlyOnce { account, .. } => *account,
            Violation::Held { account, .. }
            | Violation::BalanceLimit { account, .. }
            | Violation::LeftInFlight { account, .. } => Some(*account),
            _ => None,
        }
    }
}

/// Invariant 7: `replayed` (a partition's log folded from zero) equals `other` (the live
/// state, or what recovery rebuilt); `what` names `other` in the message.
pub fn replay_matches(replayed: &Ledger, other: &Ledger, what: &str) -> Result<(), Violation> {
    match state_difference(replayed, other) {
        None => Ok(()),
        Some(difference) => Err(Violation::Replay {
            partition: replayed.partition(),
            detail: format!("replay from zero and {what} differ: {difference}"),
        }),
    }
}

/// An event of `partition`'s log that did not apply: invariant 2 when it overdraws an
/// account, 7 otherwise.
pub fn apply_failed(partition: PartitionId, error: ApplyError) -> Violation {
    Violation::Apply { partition, error }
}
