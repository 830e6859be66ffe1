//! Holds in the workload: a client places a hold (within or across partitions, with a short
//! expiry), then ends it later by a plan drawn at once ([`Plan`]): a capture of all or part
//! of it, a void, or nothing (it expires); a capture or void timed to race the expiry (sent
//! around the `expires_at` its home answered, [`RACE_SPREAD_MS`]); or a late one, sent once
//! the hold has expired, which must be answered `hold_expired`. Now and then a capture asks
//! for more than the hold (refused), a hold is captured twice, or a void follows a capture:
//! every later answer must repeat the first end.
//!
//! A client keeps its plans (at most [`PLANS_MAX`]) and carries each out when it is due,
//! between its other requests: a hold never blocks its client while it waits.

use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use walletd_core::ledger::{Command, Hold, LedgerError, Reply, TransferStatus};
use walletd_core::model::event::{Reason, Timestamp, Transfer, TransferKey};
use walletd_core::model::money::{Amount, WrittenAmount};
use walletd_runtime::driver::CommandResult;

/// The shortest and longest expiry of a hold the clients place, in milliseconds.
pub const EXPIRES_IN_MS_MIN: u64 = 300;
pub const EXPIRES_IN_MS_MAX: u64 = 3_000;
/// How long the heal waits, once the clients stopped, before the cluster must be at rest:
/// every hold placed by then has expired (or ended before), with time to record it.
pub const ALL_EXPIRED_AFTER: Duration = Duration::from_millis(EXPIRES_IN_MS_MAX + 500);
/// A racing capture or void leaves this many microseconds before to after its hold's expiry
/// (uniform): with the clients' network delay of a few milliseconds, some arrive before it,
/// some after, and some in the instant it expires, when only the clock tells them apart.
pub const RACE_SPREAD_US: (i64, i64) = (-8_000, 2_000);
/// Plans a client keeps; a hold placed while it has as many is left to expire.
pub const PLANS_MAX: usize = 8;

/// What the answer of a hold request may be, decided when the client builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldExpect {
    /// A hold placed (or placed again, a repeat): any status a hold can have, or a refusal
    /// of its source or destination, or the partition's limit of open holds.
    Place,
    /// A capture of a hold the client was told is held: captured, or how it ended before
    /// (voided, expired, captured for another amount). `beyond`: it asks for more than the
    /// hold, which only `CaptureExceedsHold` answers.
    Capture { beyond: bool },
    /// A void of a hold the client was told is held: voided, or how it ended before.
    Void,
    /// A capture or void sent once its hold has expired by the client's clock (which is
    /// its home's, in the simulation): `hold_expired`; or, unless it is the `first` end the
    /// client sends, how it ended before.
    Late { first: bool },
}

/// How a client ends a hold it was told is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Capture `None` (all of it) or a part.
    Capture(Option<Amount>),
    /// Capture more than the hold (refused), then the plan goes on with `then`.
    Beyond,
    Void,
}

/// A hold a client will end, and when.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub hold: Transfer,
    /// Its expiry by its home's clock (or the client's estimate, if it could not ask).
    pub expires_at: Timestamp,
    /// Wall-clock time at which to send the end.
    pub due_us: Timestamp,
    pub end: End,
    /// After the end is answered: a second end (another capture, or a void) whose answer
    /// must repeat the first.
    pub again: bool,
    /// Timed to race the expiry.
    pub racing: bool,
    /// The first end the client sends for this hold.
    pub first: bool,
}

impl Plan {
    /// The command that carries the plan out, and what its answer may be.
    pub fn command(&self, now_us: Timestamp, rng: &mut ChaCha8Rng) -> (Command, HoldExpect) {
        let key = self.hold.key();
        let late = now_us >= self.expires_at + LATE_MARGIN_US;
        let (command, expect) = match self.end {
            End::Capture(amount) => (
                Command::Capture {
                    key,
                    amount: amount.map(|amount| WrittenAmount::of(amount, self.hold.currency)),
                },
                HoldExpect::Capture { beyond: false },
            ),
            End::Beyond => {
                let more = self.hold.amount.minor() + rng.gen_range(1..=100);
                let amount = Amount::from_minor(more).expect("in range");
                let amount = Some(WrittenAmount::of(amount, self.hold.currency));
                let beyond = HoldExpect::Capture { beyond: true };
                return (Command::Capture { key, amount }, beyond);
            }
            End::Void => (Command::Void { key }, HoldExpect::Void),
        };
        let first = self.first;
        (
            command,
            if late {
                HoldExpect::Late { first }
            } else {
                expect
            },
        )
    }
}

/// Past its expiry by this much, a hold is surely expired at its home: the clocks are one.
const LATE_MARGIN_US: u64 = 1_000;

/// The expiry of a new hold, in microseconds.
pub fn expires_in_us(rng: &mut ChaCha8Rng) -> u64 {
    rng.gen_range(EXPIRES_IN_MS_MIN..=EXPIRES_IN_MS_MAX) * 1_000
}

/// The hold command for `hold`, expiring in `expires_in_us`.
pub fn place(hold: Transfer, expires_in_us: u64) -> Command {
    Command::Hold(Box::new(Hold {
        transfer: hold,
        expires_in_us,
    }))
}

/// How a client will end `hold`, held and expiring at `expires_at`, drawn at `now_us`.
pub fn plan(
    rng: &mut ChaCha8Rng,
    hold: Transfer,
    expires_at: Timestamp,
    now_us: Timestamp,
) -> Plan {
    let left_us = expires_at.saturating_sub(now_us);
    let part = |rng: &mut ChaCha8Rng| {
        let minor = hold.amount.minor();
        rng.gen_bool(0.5)
            .then(|| Amount::from_minor(rng.gen_range(1..=minor)).expect("in range"))
    };
    let (end, racing) = match rng.gen_range(0..20) {
        0..=3 => (End::Capture(part(rng)), false),
        4..=12 => {
            let end = if rng.gen_bool(0.7) {
                End::Capture(part(rng))
            } else {
                End::Void
            };
            (end, true)
        }
        13..=14 => (End::Void, false),
        15..=16 => (End::Beyond, false),
        // Left to expire, then captured or voided late.
        _ => {
            let end = if rng.gen_bool(0.5) {
                End::Capture(part(rng))
            } else {
                End::Void
            };
            let after_us = rng.gen_range(50_000..=400_000);
            return Plan {
                hold,
                expires_at,
                due_us: expires_at + after_us,
                end,
                again: false,
                racing: false,
                first: true,
            };
        }
    };
    let due_us = if racing {
        let offset_us = rng.gen_range(RACE_SPREAD_US.0..=RACE_SPREAD_US.1);
        expires_at.saturating_add_signed(offset_us)
    } else {
        now_us + rng.gen_range(0..=left_us * 3 / 4)
    };
    Plan {
        hold,
        expires_at,
        due_us,
        end,
        again: rng.gen_ratio(1, 5),
        racing,
        first: true,
    }
}

/// The second end of a plan whose first was answered: a void after a capture, another
/// capture after a void or a capture (of all of it, or of one unit: another amount, most
/// likely). Its answer must repeat the first end.
pub fn again(plan: &Plan, rng: &mut ChaCha8Rng, now_us: Timestamp) -> Plan {
    let end = match (plan.end, rng.gen_bool(0.5)) {
        (End::Capture(_), true) => End::Void,
        (_, true) => End::Capture(None),
        (_, false) => End::Capture(Some(Amount::from_minor(1).expect("in range"))),
    };
    Plan {
        end,
        due_us: now_us + rng.gen_range(0..=50_000),
        again: false,
        racing: false,
        first: false,
        ..*plan
    }
}

/// Whether `result` contradicts `expect`: why, if it does.
pub fn contradiction(expect: HoldExpect, result: &CommandResult) -> Option<&'static str> {
    use TransferStatus as S;
    let ended = |status: &S| {
        matches!(
            status,
            S::Captured | S::Cancelled(Reason::HoldVoided | Reason::HoldExpired)
        )
    };
    // A capture or void is answered with the hold's end (and what it shows of the hold).
    let told = match result {
        Ok(Reply::HoldEnd(end)) => Some(end.status),
        _ => None,
    };
    match (expect, result, told) {
        (HoldExpect::Place, Ok(Reply::Transfer(_)), _) => None,
        (HoldExpect::Place, Err(error), _) if placement_refusal(error) => None,
        (HoldExpect::Place, _, _) => Some("expected a hold's status"),
        (HoldExpect::Capture { beyond: true }, Err(LedgerError::CaptureExceedsHold { .. }), _) => {
            None
        }
        (HoldExpect::Capture { beyond: true }, _, _) => {
            Some("a capture of more than the hold was not refused for it")
        }
        (_, Err(LedgerError::CaptureExceedsHold { .. }), _) => {
            Some("a capture within the hold was refused as exceeding it")
        }
        (HoldExpect::Capture { .. }, Err(LedgerError::HoldAlreadyCaptured { .. }), _) => None,
        (HoldExpect::Late { .. }, _, Some(S::Cancelled(Reason::HoldExpired))) => None,
        (HoldExpect::Late { first: false }, Err(LedgerError::HoldAlreadyCaptured { .. }), _) => {
            None
        }
        (HoldExpect::Late { first: false }, _, Some(status)) if ended(&status) => None,
        (HoldExpect::Late { .. }, _, _) => {
            Some("a capture or void after the expiry, not answered expired")
        }
        (_, _, Some(status)) if ended(&status) => None,
        _ => Some("a capture or void of a held hold answered with no end of it"),
    }
}

/// Whether `error` may answer a new hold: its source or destination refused it, or its
/// home holds as many open holds as it may.
fn placement_refusal(error: &LedgerError) -> bool {
    matches!(
        error,
        LedgerError::AccountNotFound(_)
            | LedgerError::CurrencyMismatch { .. }
            | LedgerError::InsufficientFunds { .. }
            | LedgerError::BalanceLimit(_)
            | LedgerError::HoldLimit(_)
    )
}

/// How a hold ended, as one answer told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Told {
    /// Captured: of this many minor units, when the answer says (a capture's own).
    Captured(Option<u64>),
    /// Voided or expired.
    Released(Reason),
}

/// The key of the hold a hold request is about.
pub fn hold_key(command: &Command) -> Option<TransferKey> {
    match command {
        Command::Hold(hold) => Some(hold.transfer.key()),
        Command::Capture { key, .. } | Command::Void { key } => Some(*key),
        _ => None,
    }
}

/// What `result`, the answer to a request about a hold, tells of how the hold ended, if
/// anything: a capture's or void's answer says what was captured, a hold's retry answered
/// `captured` does not.
pub fn told(result: &CommandResult) -> Option<Told> {
    let Ok(reply) = result else {
        return None;
    };
    let captured = match reply {
        Reply::HoldEnd(end) => end.captured.map(Amount::minor),
        _ => None,
    };
    match reply.transfer_status()? {
        TransferStatus::Captured => Some(Told::Captured(captured)),
        TransferStatus::Cancelled(reason @ (Reason::HoldVoided | Reason::HoldExpired)) => {
            Some(Told::Released(reason))
        }
        _ => None,
    }
}

/// Whether two answers about one hold contradict each other.
pub fn told_apart(a: Told, b: Told) -> bool {
    match (a, b) {
        (Told::Captured(Some(x)), Told::Captured(Some(y))) => x != y,
        (Told::Captured(_), Told::Captured(_)) => false,
        (a, b) => a != b,
    }
}

/// The races of the clients' captures and voids with their holds' expiry: sent, and lost
/// to the expiry (answered `hold_expired`).
#[derive(Debug, Default, Clone, Copy)]
pub struct HoldCounts {
    pub raced: u64,
    pub raced_expired: u64,
}

impl HoldCounts {
    /// A racing capture or void was answered `reply` (`None`: never settled).
    pub fn race(&mut self, reply: Option<&CommandResult>) {
        self.raced += 1;
        let expired = TransferStatus::Cancelled(Reason::HoldExpired);
        if status_of(reply) == Some(expired) {
            self.raced_expired += 1;
        }
    }
}

/// The transfer status an answer told, if it told one.
fn status_of(reply: Option<&CommandResult>) -> Option<TransferStatus> {
    reply?.as_ref().ok()?.transfer_status()
}

/// The run's holds, for its summary: new holds placed, those answered held, captures and
/// voids answered so, ends answered expired (a late or racing capture or void), races sent
/// and lost to the expiry, and placings refused for the partition's limit of open holds.
pub fn summary(history: &crate::history::HistoryState) -> String {
    use crate::history::Expect;
    let ops = || history.ops.iter();
    let settled = |command: fn(&Command) -> bool, status: TransferStatus| {
        ops()
            .filter(|op| command(&op.command) && !matches!(op.expect, Expect::Error(_)))
            .filter(|op| status_of(op.settled()) == Some(status))
            .count()
    };
    let is_hold = |c: &Command| matches!(c, Command::Hold(_));
    let is_end = |c: &Command| matches!(c, Command::Capture { .. } | Command::Void { .. });
    let is_capture = |c: &Command| matches!(c, Command::Capture { .. });
    let is_void = |c: &Command| matches!(c, Command::Void { .. });
    let placed = ops().filter(|op| is_hold(&op.command)).count();
    let limited = ops()
        .filter(|op| matches!(op.settled(), Some(Err(LedgerError::HoldLimit(_)))))
        .count();
    let counts = history.hold_counts;
    format!(
        "holds={placed} holds_held={} holds_captured={} holds_voided={} holds_expired={} holds_raced={} holds_raced_expired={} holds_limited={limited}",
        settled(is_hold, TransferStatus::Held),
        settled(is_capture, TransferStatus::Captured),
        settled(is_void, TransferStatus::Cancelled(Reason::HoldVoided)),
        settled(is_end, TransferStatus::Cancelled(Reason::HoldExpired)),
        counts.raced,
        counts.raced_expired,
    )
}
