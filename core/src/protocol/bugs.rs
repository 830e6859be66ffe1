//! Known-bug mutations, compiled only into tests and the simulation build (`--cfg madsim`).
//!
//! A simulator that finds nothing proves nothing: each mutation removes one protection of the
//! protocol, and the property tests and the simulator must catch every one of them. Switches
//! are per thread: unit tests run on many threads, a madsim run on one.

use std::cell::Cell;

/// A protection that can be switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Bug {
    /// The destination applies a Try that arrives after its Cancel (no barrier).
    SkipBarrier = 1,
    /// The driver replies to clients before the batch holding their events is synced.
    ReplyBeforeSync = 2,
    /// A retried transfer with a known `(from, transaction_id)` is applied again.
    NoIdempotency = 4,
    /// The home partition asks the destination to Try and Confirm before debiting the source.
    CreditBeforeDebit = 8,
    /// A failed `sync` is tried again, and the batch counted durable once a retry succeeds.
    /// After a failed fsync the kernel may have dropped the pages it could not write and
    /// reports the error only once, so the retry succeeds with the bytes gone.
    RetryFailedSync = 16,
    /// A business refusal of a deposit or withdrawal is answered but not recorded, so the
    /// same `transaction_id` can succeed later, once the account has changed.
    RefusalUnrecorded = 32,
    /// Recovery keeps the newest segment's bytes without syncing them. After a process crash
    /// they may be in the page cache only; the partition then answers from records that a
    /// power loss can still take away.
    RecoveryTrustsUnsynced = 64,
    /// A new segment's directory entry is not synced when the segment is created: a record
    /// acknowledged in it vanishes with the file if the power fails before some later
    /// directory sync.
    RolloverWithoutDirSync = 128,
    /// A Try that goes unanswered in time is cancelled at once, as the three-round protocol
    /// did, without asking the destination whether it tried: a credit the destination has
    /// made durable, which with the home's durable debit commits the transfer, is cancelled.
    CancelAfterDurableCredit = 256,
    /// The client of a cross-partition transfer is told `committed` once the home's debit is
    /// durable, before the destination has durably tried its credit.
    CommitOnHomeOnly = 512,
    /// A committed transfer's Confirm is sent once and never again: asked about a pending
    /// credit of a transfer it committed, the home answers nothing, so a Confirm lost on
    /// the way leaves the destination's credit pending for good.
    ConfirmSentOnce = 1024,
    /// A replicated partition's leader answers a batch's clients as soon as it proposes the
    /// batch, before a majority of its group has it durable.
    AckBeforeQuorum = 2048,
    /// A replica restarts without the vote it cast in its current term, so it may vote twice
    /// in one term and two leaders may be elected in it.
    ForgetVote = 4096,
    /// A replicated partition's leader answers a read from its own state at once, without
    /// the group confirming that it still leads: a leader cut off from its group answers
    /// from a past its successor has moved on from.
    StaleRead = 8192,
    /// A replica whose disk was wiped starts again under its old id, as if its group were
    /// new: it may vote twice in a term, and count in a majority without the entries it had
    /// acknowledged.
    RejoinUnderOldId = 16384,
    /// A replica whose node the placement no longer names stops at once, and its node
    /// deletes its copy, without waiting for its group to remove it: a voter's data is gone
    /// while its group still counts it in every majority.
    LeaveBeforeRemoved = 32768,
    /// A node whose lease the coordination service dropped keeps its session with the
    /// service, renewing a lease that is gone: its liveness stays missing while it serves,
    /// and an operator reading the cluster's status takes it for down.
    LostLeaseIgnored = 65536,
    /// A refund is held against the whole amount of its original transfer, as if nothing of
    /// it were refunded yet: refunds of one transfer, each within its amount, sum to more
    /// than it moved.
    RefundBeyondOriginal = 131072,
    /// A hold's capture or void is decided without asking the clock: a hold past its
    /// expiry, not yet expired by the expiry scan, is captured (or voided) as if it were not.
    CaptureAfterExpiry = 262144,
    /// The home of a multi-leg transaction takes a participant's refusal of its Try (a leg
    /// that fails there) for a Try: the transaction commits, the other participants confirm
    /// their legs, and the refused leg never moves.
    MultiLegPartial = 524288,
    /// The home answers a read of a transfer's body at once, whether or not the record that
    /// holds it is durable: a crash that takes the record leaves a client holding a body
    /// the log never kept (or kept only later, under a retry).
    BodyBeforeDurable = 1048576,
    /// A capture's or void's answer shows the hold captured for all it held, whatever part
    /// the capture took: the client is told one amount moved while the log keeps another.
    HoldEndMisreported = 2097152,
    /// A transaction's home, asked by a participant about the legs it tried (or aborting
    /// them), looks only at the key: after the home lost a transaction and a client's retry
    /// put other legs under its id, a participant holding the lost legs is told to confirm
    /// them (or answers an Abort as tried), and legs that never committed as a whole move.
    TxConfirmOtherLegs = 4194304,
}

impl Bug {
    pub const ALL: [Bug; 23] = [
        Bug::SkipBarrier,
        Bug::ReplyBeforeSync,
        Bug::NoIdempotency,
        Bug::CreditBeforeDebit,
        Bug::RetryFailedSync,
        Bug::RefusalUnrecorded,
        Bug::RecoveryTrustsUnsynced,
        Bug::RolloverWithoutDirSync,
        Bug::CancelAfterDurableCredit,
        Bug::CommitOnHomeOnly,
        Bug::ConfirmSentOnce,
        Bug::AckBeforeQuorum,
        Bug::ForgetVote,
        Bug::StaleRead,
        Bug::RejoinUnderOldId,
        Bug::LeaveBeforeRemoved,
        Bug::LostLeaseIgnored,
        Bug::RefundBeyondOriginal,
        Bug::CaptureAfterExpiry,
        Bug::MultiLegPartial,
        Bug::BodyBeforeDurable,
        Bug::HoldEndMisreported,
        Bug::TxConfirmOtherLegs,
    ];

    /// The name used on the simulator's command line (`--bug skip-barrier`).
    pub fn name(self) -> &'static str {
        match self {
            Bug::SkipBarrier => "skip-barrier",
            Bug::ReplyBeforeSync => "reply-before-sync",
            Bug::NoIdempotency => "no-idempotency",
            Bug::CreditBeforeDebit => "credit-before-debit",
            Bug::RetryFailedSync => "retry-failed-sync",
            Bug::RefusalUnrecorded => "refusal-unrecorded",
            Bug::RecoveryTrustsUnsynced => "recovery-trusts-unsynced",
            Bug::RolloverWithoutDirSync => "rollover-without-dir-sync",
            Bug::CancelAfterDurableCredit => "cancel-after-durable-credit",
            Bug::CommitOnHomeOnly => "commit-on-home-only",
            Bug::ConfirmSentOnce => "confirm-sent-once",
            Bug::AckBeforeQuorum => "ack-before-quorum",
            Bug::ForgetVote => "forget-vote",
            Bug::StaleRead => "stale-read",
            Bug::RejoinUnderOldId => "rejoin-under-old-id",
            Bug::LeaveBeforeRemoved => "leave-before-removed",
            Bug::LostLeaseIgnored => "lost-lease-ignored",
            Bug::RefundBeyondOriginal => "refund-beyond-original",
            Bug::CaptureAfterExpiry => "capture-after-expiry",
            Bug::MultiLegPartial => "multi-leg-partial",
            Bug::BodyBeforeDurable => "body-before-durable",
            Bug::HoldEndMisreported => "hold-end-misreported",
            Bug::TxConfirmOtherLegs => "tx-confirm-other-legs",
        }
    }

    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|bug| bug.name() == name)
    }
}

thread_local! {
    static ENABLED: Cell<u32> = const { Cell::new(0) };
}

/// Whether `bug` is switched on for this thread.
pub fn enabled(bug: Bug) -> bool {
    ENABLED.with(|bits| bits.get() & bug as u32 != 0)
}

/// Switches exactly the given bugs on for this thread (an empty slice switches all off).
pub fn set(bugs: &[Bug]) {
    ENABLED.with(|bits| bits.set(bugs.iter().fold(0, |acc, bug| acc | *bug as u32)));
}
