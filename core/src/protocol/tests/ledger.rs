//! `Ledger::decide` and `Ledger::apply`, one rule at a time, in given/when/then form.
//!
//! `given(partition, events)` folds events into a fresh ledger; `when(command)` decides the
//! command and executes it on the same state; the `then_*` methods assert the events, the
//! reply or the error. Every step also checks the partition's conservation law, and a refused
//! command is checked to have left the state exactly as it was.

use crate::ledger::{
    Account, ApplyError, Command, CreditState, Ledger, LedgerError, PhaseResult, RecordMeta, Reply,
    TransferRow, TransferState, TransferStatus,
};
use crate::model::event::{CashKind, CashRefusal, CashRefused, Decision, Event, Reason, Transfer};
use crate::model::ids::AccountId;
use crate::model::money::Currency::{self, EUR, USD};
use crate::model::money::{AMOUNT_MINOR_MAX, BALANCE_MINOR_MAX};
use crate::model::partition::PartitionId;

use super::support::{
    account_on, amt, deposit, deposited, key, open, opened, transfer, txn, withdraw, Snapshot,
};

pub(super) const PARTITIONS: u32 = 2;
/// What `home()` deposits into `a`: 100.00 USD.
pub(super) const FUNDS: u64 = 10_000;

/// Accounts of the two-partition world these tests live in.
pub(super) struct World {
    /// USD on partition 0, funded by [`home`].
    pub(super) a: AccountId,
    /// USD on partition 0, empty.
    pub(super) b: AccountId,
    /// EUR on partition 0.
    pub(super) e: AccountId,
    /// On partition 0, never opened.
    pub(super) n: AccountId,
    /// USD on partition 1.
    pub(super) c: AccountId,
    /// EUR on partition 1.
    pub(super) x: AccountId,
    /// On partition 1, never opened.
    pub(super) m: AccountId,
}

pub(super) fn world() -> World {
    World {
        a: account_on("a", 0, PARTITIONS, 0),
        b: account_on("b", 0, PARTITIONS, 0),
        e: account_on("e", 0, PARTITIONS, 0),
        n: account_on("n", 0, PARTITIONS, 0),
        c: account_on("c", 1, PARTITIONS, 0),
        x: account_on("x", 1, PARTITIONS, 0),
        m: account_on("m", 1, PARTITIONS, 0),
    }
}

fn meta(lsn: u64) -> RecordMeta {
    RecordMeta {
        lsn,
        timestamp: 1_000 * lsn,
    }
}

/// The home partition (0) with `a` funded, `b` empty and `e` in EUR.
pub(super) fn home(w: &World) -> Vec<Event> {
    vec![
        opened(w.a, USD),
        deposited(w.a, FUNDS, "d0"),
        opened(w.b, USD),
        opened(w.e, EUR),
    ]
}

/// The destination partition (1) with `c` in USD and `x` in EUR.
pub(super) fn destination(w: &World) -> Vec<Event> {
    vec![opened(w.c, USD), opened(w.x, EUR)]
}

/// Events that bring `account` to exactly [`BALANCE_MINOR_MAX`].
pub(super) fn fill_to_the_limit(account: AccountId) -> Vec<Event> {
    let deposits = BALANCE_MINOR_MAX / AMOUNT_MINOR_MAX;
    assert_eq!(deposits * AMOUNT_MINOR_MAX, BALANCE_MINOR_MAX);
    (0..deposits)
        .map(|i| Event::Deposited {
            account,
            amount: amt(AMOUNT_MINOR_MAX),
            transaction_id: txn(&format!("fill-{i}")),
        })
        .collect()
}

pub(super) struct Given {
    ledger: Ledger,
}

pub(super) fn given(partition: PartitionId, events: &[Event]) -> Given {
    let mut ledger = Ledger::new(partition, PARTITIONS);
    for (i, event) in events.iter().enumerate() {
        ledger
            .apply(meta(i as u64 + 1), event)
            .unwrap_or_else(|e| panic!("given {event:?}: {e}"));
        ledger
            .check_conservation()
            .unwrap_or_else(|e| panic!("given {event:?}: {e}"));
    }
    Given { ledger }
}

impl Given {
    /// The ledger the given events made.
    pub(super) fn ledger(self) -> Ledger {
        self.ledger
    }

    pub(super) fn when(self, command: Command) -> Then {
        Then::run(self.ledger, command)
    }
}

pub(super) struct Then {
    command: Command,
    before: Snapshot,
    pub(super) ledger: Ledger,
    events: Vec<Event>,
    result: Result<Reply, LedgerError>,
}

impl Then {
    fn run(ledger: Ledger, command: Command) -> Then {
        let before = Snapshot::of(&ledger);
        let flows_before = ledger.flows().clone();
        let mut decided = Vec::new();
        let decided_result = ledger.decide(&command, &mut decided);
        let mut ledger = ledger;
        let mut events = Vec::new();
        let lsn = ledger.last_applied().lsn + 1;
        let result = ledger.execute(&command, meta(lsn).timestamp, &mut events);
        assert_eq!(
            result, decided_result,
            "execute answers what decide answered"
        );
        assert_eq!(events, decided, "execute logs what decide decided");
        ledger
            .check_conservation()
            .unwrap_or_else(|e| panic!("after {command:?}: {e}"));
        // A refused command changes nothing, but for the record of a business refusal (which
        // only keeps its idempotency row, and moves no money).
        if result.is_err() && !matches!(events[..], [Event::CashRefused(_)]) {
            assert!(
                events.is_empty(),
                "{command:?} was refused but emitted {events:?}"
            );
            assert_eq!(
                Snapshot::of(&ledger),
                before,
                "{command:?} was refused but changed the state"
            );
        }
        if matches!(events[..], [Event::CashRefused(_)]) {
            assert!(result.is_err(), "a refusal's record answers a refusal");
            assert_eq!(ledger.flows(), &flows_before, "a refusal moved money");
        }
        Then {
            command,
            before,
            ledger,
            events,
            result,
        }
    }

    /// Continues from the state this step left.
    pub(super) fn when(self, command: Command) -> Then {
        Then::run(self.ledger, command)
    }

    pub(super) fn then_events(self, expected: &[Event]) -> Then {
        assert_eq!(self.events, expected, "events of {:?}", self.command);
        self
    }

    /// Accepted with no events: a retry or a no-op, and the state is untouched.
    pub(super) fn then_nothing_new(self) -> Then {
        assert!(self.result.is_ok(), "{:?}: {:?}", self.command, self.result);
        assert_eq!(self.events, [], "events of {:?}", self.command);
        assert_eq!(Snapshot::of(&self.ledger), self.before);
        self
    }

    /// A refused Try: only the try-not-seen flag is recorded (so that the first durable
    /// answer stands), and no account changed.
    fn then_only_the_flag(self) -> Then {
        let Command::TryCredit(transfer) = self.command else {
            panic!("{:?} is not a Try", self.command);
        };
        let flag = Event::CreditTryNotSeen {
            key: transfer.key(),
        };
        assert_eq!(self.events, [flag], "events of {:?}", self.command);
        assert_eq!(Snapshot::of(&self.ledger).accounts, self.before.accounts);
        self
    }

    pub(super) fn then_reply(self, expected: Reply) -> Then {
        assert_eq!(self.result, Ok(expected), "reply to {:?}", self.command);
        self
    }

    pub(super) fn then_status(self, expected: TransferStatus) -> Then {
        self.then_reply(Reply::Transfer(expected))
    }

    pub(super) fn then_phase(self, expected: PhaseResult) -> Then {
        self.then_reply(Reply::Phase(expected))
    }

    pub(super) fn then_error(self, expected: LedgerError) -> Then {
        assert_eq!(self.result, Err(expected), "error of {:?}", self.command);
        self
    }

    fn account(&self, id: AccountId) -> Account {
        *self.ledger.account(&id).expect("account exists")
    }

    fn state(&self, transfer: &Transfer) -> TransferState {
        self.ledger
            .transfer(&transfer.key())
            .expect("row exists")
            .state
    }

    fn credit_state(&self, transfer: &Transfer) -> CreditState {
        self.ledger
            .credit(&transfer.key())
            .expect("row exists")
            .state
    }
}

fn account(currency: Currency, balance: u64, held: u64, incoming: u64) -> Account {
    Account {
        currency,
        balance,
        held,
        incoming,
    }
}

/// Events that leave `t` (from `a` on 0 to `c` on 1) at the given home state.
fn home_at(w: &World, t: Transfer, decision: Option<Decision>) -> Vec<Event> {
    let mut events = home(w);
    events.push(Event::DebitTried { transfer: t });
    if let Some(decision) = decision {
        events.push(Event::TransferDecided {
            key: t.key(),
            decision,
        });
    }
    events
}

// ---------------------------------------------------------------------------------------------
// Refusals: every error path of `decide`.

#[test]
fn account_not_found_for_cash_sources_and_local_destinations() {
    let w = world();
    given(0, &home(&w))
        .when(deposit(w.n, 1, USD, "d1"))
        .then_error(LedgerError::AccountNotFound(w.n))
        .when(withdraw(w.n, 1, USD, "w1"))
        .then_error(LedgerError::AccountNotFound(w.n))
        // A transfer's refusal is recorded: its id gets the same answer forever, even once
        // the account exists.
        .when(Command::Transfer(transfer(w.n, w.a, 1, USD, "t1")))
        .then_status(TransferStatus::Rejected(Reason::SourceNotFound))
        .when(Command::Transfer(transfer(w.a, w.n, 1, USD, "t1")))
        .then_status(TransferStatus::Rejected(Reason::DestinationNotFound))
        .when(open(w.n, USD))
        .when(deposit(w.n, 5, USD, "d2"))
        .when(Command::Transfer(transfer(w.n, w.a, 1, USD, "t1")))
        .then_status(TransferStatus::Rejected(Reason::SourceNotFound))
        .then_nothing_new()
        .when(Command::Transfer(transfer(w.a, w.n, 1, USD, "t1")))
        .then_status(TransferStatus::Rejected(Reason::DestinationNotFound))
        .then_nothing_new();
}

#[test]
fn opening_an_account_in_another_currency_is_refused() {
    let w = world();
    given(0, &home(&w))
        .when(open(w.a, EUR))
        .then_error(LedgerError::AccountExists {
            account: w.a,
            existing: USD,
        });
}

#[test]
fn currency_mismatch_on_cash_source_and_destination() {
    let w = world();
    let mismatch = |account, expected, got| LedgerError::CurrencyMismatch {
        account,
        expected,
        got,
    };
    given(0, &home(&w))
        .when(deposit(w.a, 1, EUR, "d1"))
        .then_error(mismatch(w.a, USD, EUR))
        .when(withdraw(w.a, 1, EUR, "w1"))
        .then_error(mismatch(w.a, USD, EUR))
        // Source: a holds USD, the transfer says EUR.
        .when(Command::Transfer(transfer(w.a, w.e, 1, EUR, "t1")))
        .then_status(TransferStatus::Rejected(Reason::SourceCurrencyMismatch))
        // Destination on the same partition: e holds EUR.
        .when(Command::Transfer(transfer(w.a, w.e, 1, USD, "t2")))
        .then_status(TransferStatus::Rejected(
            Reason::DestinationCurrencyMismatch,
        ));
    // Destination on another partition: its Try fails and nothing is recorded there.
    given(1, &destination(&w))
        .when(Command::TryCredit(transfer(w.a, w.x, 1, USD, "t1")))
        .then_phase(PhaseResult::TryFailed(Reason::DestinationCurrencyMismatch))
        .then_only_the_flag();
}

#[test]
fn withdrawing_more_than_the_balance_is_insufficient_funds() {
    let w = world();
    given(0, &home(&w))
        .when(withdraw(w.a, FUNDS + 1, USD, "w1"))
        .then_error(LedgerError::InsufficientFunds {
            available: "100.00".to_string(),
            currency: USD,
        })
        .when(withdraw(w.b, 1, USD, "w1"))
        .then_error(LedgerError::InsufficientFunds {
            available: "0.00".to_string(),
            currency: USD,
        });
}

/// One idempotency rule for refusals: a business refusal is recorded, so the same request
/// gets the same answer forever, whatever happened to the account since.
#[test]
fn a_refused_withdrawal_or_deposit_answers_the_same_after_the_account_changes() {
    let w = world();
    let short = LedgerError::InsufficientFunds {
        available: "100.00".to_string(),
        currency: USD,
    };
    given(0, &home(&w))
        .when(withdraw(w.a, FUNDS + 1, USD, "w1"))
        .then_error(short.clone())
        .then_events(&[Event::CashRefused(CashRefused {
            account: w.a,
            transaction_id: txn("w1"),
            kind: CashKind::Withdrawal,
            amount: amt(FUNDS + 1),
            refusal: CashRefusal::InsufficientFunds,
        })])
        .when(deposit(w.a, 50, USD, "d9"))
        .when(withdraw(w.a, FUNDS + 1, USD, "w1"))
        .then_error(short)
        .then_events(&[])
        // The same id with another amount is a conflict, refused or not.
        .when(withdraw(w.a, 1, USD, "w1"))
        .then_error(LedgerError::Conflict(txn("w1")))
        // A deposit to an account that does not exist yet, then exists.
        .when(deposit(w.n, 1, USD, "d1"))
        .then_error(LedgerError::AccountNotFound(w.n))
        .when(open(w.n, USD))
        .when(deposit(w.n, 1, USD, "d1"))
        .then_error(LedgerError::AccountNotFound(w.n))
        .then_events(&[]);
}

#[test]
fn cross_partition_transfer_without_funds_is_recorded_as_rejected() {
    let w = world();
    let t = transfer(w.a, w.c, FUNDS + 1, USD, "t1");
    let then = given(0, &home(&w))
        .when(Command::Transfer(t))
        .then_events(&[Event::TransferRejected {
            transfer: t,
            reason: Reason::InsufficientFunds,
        }])
        .then_status(TransferStatus::Rejected(Reason::InsufficientFunds));
    assert_eq!(
        then.state(&t),
        TransferState::Rejected(Reason::InsufficientFunds)
    );
    let row = then.ledger.transfer(&t.key()).unwrap();
    assert!(row.remote, "the destination lives on partition 1");
    assert_eq!(then.account(w.a), account(USD, FUNDS, 0, 0));
    // A retry gets the first answer even once the funds are there: nothing moves.
    then.when(deposit(w.a, FUNDS, USD, "d1"))
        .when(Command::Transfer(t))
        .then_nothing_new()
        .then_status(TransferStatus::Rejected(Reason::InsufficientFunds));
}

#[test]
fn same_partition_transfer_without_funds_is_recorded_as_rejected() {
    let w = world();
    let t = transfer(w.a, w.b, FUNDS + 1, USD, "t1");
    let then = given(0, &home(&w))
        .when(Command::Transfer(t))
        .then_events(&[Event::TransferRejected {
            transfer: t,
            reason: Reason::InsufficientFunds,
        }])
        .then_status(TransferStatus::Rejected(Reason::InsufficientFunds));
    assert!(!then.ledger.transfer(&t.key()).unwrap().remote);
    then.when(Command::Transfer(t))
        .then_nothing_new()
        .then_status(TransferStatus::Rejected(Reason::InsufficientFunds));
}

#[test]
fn deposit_past_the_balance_limit_is_refused() {
    let w = world();
    let mut events = home(&w);
    events.extend(fill_to_the_limit(w.b));
    given(0, &events)
        .when(deposit(w.b, 1, USD, "d1"))
        .then_error(LedgerError::BalanceLimit(w.b));
}

#[test]
fn same_partition_credit_past_the_balance_limit_is_refused() {
    let w = world();
    let mut events = home(&w);
    events.extend(fill_to_the_limit(w.b));
    given(0, &events)
        .when(Command::Transfer(transfer(w.a, w.b, 1, USD, "t1")))
        .then_status(TransferStatus::Rejected(Reason::DestinationBalanceLimit));
}

#[test]
fn destination_try_past_the_balance_limit_fails_the_try() {
    let w = world();
    let mut events = destination(&w);
    events.extend(fill_to_the_limit(w.c));
    given(1, &events)
        .when(Command::TryCredit(transfer(w.a, w.c, 1, USD, "t1")))
        .then_phase(PhaseResult::TryFailed(Reason::DestinationBalanceLimit))
        .then_only_the_flag();
}

#[test]
fn pending_credits_count_toward_the_balance_limit() {
    let w = world();
    let mut events = destination(&w);
    events.extend(fill_to_the_limit(w.c));
    events.push(Event::Withdrawn {
        account: w.c,
        amount: amt(10),
        transaction_id: txn("w0"),
    });
    // 10 below the limit: a Try of 10 fits, after it nothing more does.
    given(1, &events)
        .when(Command::TryCredit(transfer(w.a, w.c, 10, USD, "t1")))
        .then_phase(PhaseResult::Tried)
        .when(deposit(w.c, 1, USD, "d1"))
        .then_error(LedgerError::BalanceLimit(w.c))
        .when(Command::TryCredit(transfer(w.a, w.c, 1, USD, "t2")))
        .then_phase(PhaseResult::TryFailed(Reason::DestinationBalanceLimit))
        .then_only_the_flag();
}

#[test]
fn holds_count_toward_the_balance_limit() {
    // `b` sends everything above 1 minor unit across partitions and so holds it; a Cancel
    // gives the hold back, so room for deposits and credits must count it.
    let w = world();
    let mut events = home(&w);
    events.extend(fill_to_the_limit(w.b));
    let out = transfer(w.b, w.c, AMOUNT_MINOR_MAX, USD, "out");
    events.push(Event::DebitTried { transfer: out });
    let then = given(0, &events)
        .when(deposit(w.b, 1, USD, "d1"))
        .then_error(LedgerError::BalanceLimit(w.b))
        .when(Command::Transfer(transfer(w.a, w.b, 1, USD, "t1")))
        .then_status(TransferStatus::Rejected(Reason::DestinationBalanceLimit))
        .when(Command::Decide {
            key: out.key(),
            decision: Decision::Cancel(Reason::Timeout),
        })
        .when(Command::FinishDebit { key: out.key() });
    assert_eq!(then.account(w.b), account(USD, BALANCE_MINOR_MAX, 0, 0));
    // The same on a destination: `c` holds money of its own outgoing transfer.
    let mut events = destination(&w);
    events.extend(fill_to_the_limit(w.c));
    events.push(Event::DebitTried {
        transfer: transfer(w.c, w.a, 1, USD, "out"),
    });
    given(1, &events)
        .when(Command::TryCredit(transfer(w.a, w.c, 1, USD, "t1")))
        .then_phase(PhaseResult::TryFailed(Reason::DestinationBalanceLimit))
        .then_only_the_flag();
}

#[test]
fn transferring_to_the_same_account_is_refused() {
    let w = world();
    given(0, &home(&w))
        .when(Command::Transfer(transfer(w.a, w.a, 1, USD, "t1")))
        .then_status(TransferStatus::Rejected(Reason::SameAccount))
        .then_events(&[Event::TransferRejected {
            transfer: transfer(w.a, w.a, 1, USD, "t1"),
            reason: Reason::SameAccount,
        }]);
}

#[test]
fn reusing_a_transfer_key_with_another_body_is_a_conflict() {
    let w = world();
    let t = transfer(w.a, w.c, 100, USD, "t1");
    let local = transfer(w.a, w.b, 100, USD, "t2");
    let rejected = transfer(w.a, w.c, FUNDS + 1, USD, "t3");
    given(0, &home(&w))
        .when(Command::Transfer(t))
        .when(Command::Transfer(local))
        .when(Command::Transfer(rejected))
        .then_status(TransferStatus::Rejected(Reason::InsufficientFunds))
        // Pending, committed and rejected rows all hold their key against another body.
        .when(Command::Transfer(transfer(w.a, w.c, 101, USD, "t1")))
        .then_error(LedgerError::Conflict(txn("t1")))
        .when(Command::Transfer(transfer(w.a, w.c, 100, USD, "t2")))
        .then_error(LedgerError::Conflict(txn("t2")))
        .when(Command::Transfer(transfer(w.a, w.c, 1, USD, "t3")))
        .then_error(LedgerError::Conflict(txn("t3")));
}

#[test]
fn reusing_a_cash_transaction_id_with_another_request_is_a_conflict() {
    let w = world();
    given(0, &home(&w))
        .when(deposit(w.a, 500, USD, "d1"))
        .when(deposit(w.a, 501, USD, "d1"))
        .then_error(LedgerError::Conflict(txn("d1")))
        // Same amount, other kind.
        .when(withdraw(w.a, 500, USD, "d1"))
        .then_error(LedgerError::Conflict(txn("d1")));
}

#[test]
fn a_try_that_reuses_a_key_with_another_body_fails_and_an_abort_of_it_cancels_the_orphan() {
    // Only a home that lost the first transfer (unsynced) and took the id again sends this.
    let w = world();
    let t = transfer(w.a, w.c, 100, USD, "t1");
    let again = transfer(w.a, w.c, 200, USD, "t1");
    given(1, &destination(&w))
        .when(Command::TryCredit(t))
        .then_phase(PhaseResult::Tried)
        .when(Command::TryCredit(again))
        .then_phase(PhaseResult::TryFailed(Reason::CancelledBeforeTry))
        .then_nothing_new()
        .when(Command::AbortCredit(t))
        .then_phase(PhaseResult::Tried)
        .then_nothing_new()
        .when(Command::AbortCredit(again))
        .then_phase(PhaseResult::Cancelled)
        .then_events(&[Event::CreditCancelled { key: t.key() }]);
}

#[test]
fn an_abort_sets_the_flag_on_an_untried_credit_and_leaves_a_tried_one() {
    let w = world();
    let t = transfer(w.a, w.c, 100, USD, "t1");
    given(1, &destination(&w))
        .when(Command::AbortCredit(t))
        .then_phase(PhaseResult::Cancelled)
        .then_events(&[Event::CreditTryNotSeen { key: t.key() }])
        .when(Command::TryCredit(t))
        .then_phase(PhaseResult::TryFailed(Reason::CancelledBeforeTry))
        .then_nothing_new();
    let tried = transfer(w.a, w.c, 100, USD, "t2");
    given(1, &destination(&w))
        .when(Command::TryCredit(tried))
        .then_phase(PhaseResult::Tried)
        .when(Command::AbortCredit(tried))
        .then_phase(PhaseResult::Tried)
        .then_nothing_new()
        .when(Command::ConfirmCredit(tried))
        .then_phase(PhaseResult::Confirmed)
        .when(Command::AbortCredit(tried))
        .then_phase(PhaseResult::Tried)
        .then_nothing_new();
}

#[test]
fn abandoning_records_a_lost_transfer_refused_for_good_and_leaves_a_known_one() {
    let w = world();
    let lost = transfer(w.a, w.c, 100, USD, "lost");
    given(0, &home(&w))
        .when(Command::Abandon(lost))
        .then_status(TransferStatus::Rejected(Reason::Timeout))
        .then_events(&[Event::TransferRejected {
            transfer: lost,
            reason: Reason::Timeout,
        }])
        .when(Command::Transfer(lost))
        .then_status(TransferStatus::Rejected(Reason::Timeout))
        .then_nothing_new();
    let known = transfer(w.a, w.c, 100, USD, "known");
    given(0, &home(&w))
        .when(Command::Transfer(known))
        .then_status(TransferStatus::Pending)
        .when(Command::Abandon(known))
        .then_status(TransferStatus::Pending)
        .then_nothing_new();
}

#[test]
fn commands_for_accounts_of_another_partition_are_refused() {
    let w = world();
    let wrong = |account, owner, here| LedgerError::WrongPartition {
        account,
        owner,
        here,
    };
    let t = transfer(w.c, w.a, 1, USD, "t1");
    given(0, &home(&w))
        .when(open(w.c, USD))
        .then_error(wrong(w.c, 1, 0))
        .when(deposit(w.c, 1, USD, "d1"))
        .then_error(wrong(w.c, 1, 0))
        .when(withdraw(w.c, 1, USD, "w1"))
        .then_error(wrong(w.c, 1, 0))
        .when(Command::Transfer(t))
        .then_error(wrong(w.c, 1, 0));
    // Phase messages must reach the partition of the destination.
    let t = transfer(w.c, w.b, 1, USD, "t1");
    given(1, &destination(&w))
        .when(Command::TryCredit(t))
        .then_error(wrong(w.b, 0, 1))
        .when(Command::ConfirmCredit(t))
        .then_error(wrong(w.b, 0, 1))
        .when(Command::CancelCredit(t))
        .then_error(wrong(w.b, 0, 1));
}

#[test]
fn coordinator_commands_for_unknown_transfers_are_refused() {
    let w = world();
    let k = key(w.a, "nope");
    given(0, &home(&w))
        .when(Command::Decide {
            key: k,
            decision: Decision::Confirm,
        })
        .then_error(LedgerError::UnknownTransfer(k))
        .when(Command::FinishDebit { key: k })
        .then_error(LedgerError::UnknownTransfer(k));
    let t = transfer(w.a, w.c, 1, USD, "nope");
    given(1, &destination(&w))
        .when(Command::ConfirmCredit(t))
        .then_error(LedgerError::UnknownTransfer(t.key()));
}

#[test]
fn decisions_and_finishes_out_of_order_are_invalid_transitions() {
    let w = world();
    let t = transfer(w.a, w.c, 100, USD, "t1");
    let invalid = |from: &str, command| LedgerError::InvalidTransition {
        key: t.key(),
        from: from.to_string(),
        command,
    };
    let cancel = Decision::Cancel(Reason::Timeout);
    let decide = |decision| Command::Decide {
        key: t.key(),
        decision,
    };
    let finish = Command::FinishDebit { key: t.key() };
    given(0, &home_at(&w, t, None))
        .when(finish.clone())
        .then_error(invalid("Trying", "finish"));
    given(0, &home_at(&w, t, Some(Decision::Confirm)))
        .when(decide(cancel))
        .then_error(invalid("Confirming", "decide"))
        .when(finish.clone())
        .when(decide(cancel))
        .then_error(invalid("Committed", "decide"));
    given(0, &home_at(&w, t, Some(cancel)))
        .when(decide(Decision::Confirm))
        .then_error(invalid("Cancelling(Timeout)", "decide"))
        .when(finish.clone())
        .when(decide(Decision::Confirm))
        .then_error(invalid("Cancelled(Timeout)", "decide"));
    let r = transfer(w.a, w.c, FUNDS + 1, USD, "t1");
    let mut events = home(&w);
    events.push(Event::TransferRejected {
        transfer: r,
        reason: Reason::InsufficientFunds,
    });
    given(0, &events)
        .when(decide(Decision::Confirm))
        .then_error(invalid("Rejected(InsufficientFunds)", "decide"))
        .when(finish.clone())
        .then_error(invalid("Rejected(InsufficientFunds)", "finish"));
}

#[test]
fn a_try_to_a_missing_destination_fails_and_records_only_the_flag() {
    let w = world();
    given(1, &destination(&w))
        .when(Command::TryCredit(transfer(w.a, w.m, 1, USD, "t1")))
        .then_phase(PhaseResult::TryFailed(Reason::DestinationNotFound))
        .then_only_the_flag();
}

// ---------------------------------------------------------------------------------------------
// Accepted commands and their retries.

#[test]
fn opening_creates_once_then_is_idempotent() {
    let w = world();
    let then = given(0, &[])
        .when(open(w.a, USD))
        .then_events(&[opened(w.a, USD)])
        .then_reply(Reply::Opened { created: true });
    assert_eq!(then.account(w.a), account(USD, 0, 0, 0));
    then.when(open(w.a, USD))
        .then_nothing_new()
        .then_reply(Reply::Opened { created: false });
}

#[test]
fn deposit_and_withdrawal_retries_return_the_first_balance() {
    let w = world();
    let then = given(0, &home(&w))
        .when(deposit(w.a, 250, USD, "d1"))
        .then_events(&[deposited(w.a, 250, "d1")])
        .then_reply(Reply::Balance {
            balance: FUNDS + 250,
        })
        .when(withdraw(w.a, 1_000, USD, "w1"))
        .then_events(&[Event::Withdrawn {
            account: w.a,
            amount: amt(1_000),
            transaction_id: txn("w1"),
        }])
        .then_reply(Reply::Balance {
            balance: FUNDS - 750,
        })
        // Retries answer with the balance right after the first attempt.
        .when(deposit(w.a, 250, USD, "d1"))
        .then_nothing_new()
        .then_reply(Reply::Balance {
            balance: FUNDS + 250,
        })
        .when(withdraw(w.a, 1_000, USD, "w1"))
        .then_nothing_new()
        .then_reply(Reply::Balance {
            balance: FUNDS - 750,
        });
    let flows = then.ledger.flows()[&USD];
    assert_eq!(
        (flows.deposited, flows.withdrawn),
        (u128::from(FUNDS) + 250, 1_000)
    );
}

#[test]
fn same_partition_transfer_moves_the_money_in_one_event() {
    let w = world();
    let t = transfer(w.a, w.b, 2_500, USD, "t1");
    let then = given(0, &home(&w))
        .when(Command::Transfer(t))
        .then_events(&[Event::Transferred { transfer: t }])
        .then_status(TransferStatus::Committed);
    assert_eq!(then.account(w.a), account(USD, FUNDS - 2_500, 0, 0));
    assert_eq!(then.account(w.b), account(USD, 2_500, 0, 0));
    assert_eq!(then.state(&t), TransferState::Committed);
    then.when(Command::Transfer(t))
        .then_nothing_new()
        .then_status(TransferStatus::Committed);
}

#[test]
fn cross_partition_transfer_debits_the_source_into_a_hold() {
    let w = world();
    let t = transfer(w.a, w.c, 2_500, USD, "t1");
    let then = given(0, &home(&w))
        .when(Command::Transfer(t))
        .then_events(&[Event::DebitTried { transfer: t }])
        .then_status(TransferStatus::Pending);
    assert_eq!(then.account(w.a), account(USD, FUNDS - 2_500, 2_500, 0));
    assert_eq!(then.state(&t), TransferState::Trying);
    assert_eq!(then.ledger.unfinished_transfers().len(), 1);
    then.when(Command::Transfer(t))
        .then_nothing_new()
        .then_status(TransferStatus::Pending);
}

#[test]
fn a_confirm_decision_then_finish_makes_the_debit_final() {
    let w = world();
    let t = transfer(w.a, w.c, 2_500, USD, "t1");
    let decide = Command::Decide {
        key: t.key(),
        decision: Decision::Confirm,
    };
    let finish = Command::FinishDebit { key: t.key() };
    let then = given(0, &home_at(&w, t, None))
        .when(decide.clone())
        .then_events(&[Event::TransferDecided {
            key: t.key(),
            decision: Decision::Confirm,
        }])
        .then_reply(Reply::Done);
    assert_eq!(then.state(&t), TransferState::Confirming);
    // A logged Confirm is never reversed: the client already sees it committed.
    let then = then
        .when(Command::Transfer(t))
        .then_status(TransferStatus::Committed)
        .when(decide.clone())
        .then_nothing_new()
        .then_reply(Reply::Done)
        .when(finish.clone())
        .then_events(&[Event::DebitConfirmed { key: t.key() }])
        .then_reply(Reply::Done);
    assert_eq!(then.state(&t), TransferState::Committed);
    assert_eq!(then.account(w.a), account(USD, FUNDS - 2_500, 0, 0));
    assert_eq!(then.ledger.flows()[&USD].sent, 2_500);
    assert!(then.ledger.unfinished_transfers().is_empty());
    then.when(finish.clone())
        .then_nothing_new()
        .then_reply(Reply::Done)
        .when(decide.clone())
        .then_nothing_new()
        .then_reply(Reply::Done);
}

#[test]
fn a_commit_makes_a_tried_debit_final_in_one_record() {
    let w = world();
    let t = transfer(w.a, w.c, 2_500, USD, "t1");
    let commit = Command::CommitDebit { key: t.key() };
    let then = given(0, &home_at(&w, t, None))
        .when(commit.clone())
        .then_events(&[Event::DebitConfirmed { key: t.key() }])
        .then_reply(Reply::Done);
    assert_eq!(then.state(&t), TransferState::Committed);
    assert_eq!(then.account(w.a), account(USD, FUNDS - 2_500, 0, 0));
    assert_eq!(then.ledger.flows()[&USD].sent, 2_500);
    assert!(then.ledger.unfinished_transfers().is_empty());
    let row = then.ledger.transfer(&t.key()).unwrap();
    assert_ne!(row.decided_at, 0, "one record decides and finishes");
    assert_eq!(row.decided_at, row.finished_at);
    then.when(commit.clone())
        .then_nothing_new()
        .then_reply(Reply::Done)
        .when(Command::Transfer(t))
        .then_status(TransferStatus::Committed);
    // A row an older build decided `Confirming` commits the same way.
    given(0, &home_at(&w, t, Some(Decision::Confirm)))
        .when(commit.clone())
        .then_events(&[Event::DebitConfirmed { key: t.key() }])
        .then_reply(Reply::Done);
    // A cancelled transfer never commits.
    let cancel = Decision::Cancel(Reason::Timeout);
    given(0, &home_at(&w, t, Some(cancel)))
        .when(commit.clone())
        .then_error(LedgerError::InvalidTransition {
            key: t.key(),
            from: "Cancelling(Timeout)".to_string(),
            command: "commit",
        });
}

#[test]
fn a_cancel_decision_then_finish_refunds_the_source() {
    let w = world();
    let t = transfer(w.a, w.c, 2_500, USD, "t1");
    let cancel = Decision::Cancel(Reason::DestinationNotFound);
    let decide = Command::Decide {
        key: t.key(),
        decision: cancel,
    };
    let finish = Command::FinishDebit { key: t.key() };
    let then = given(0, &home_at(&w, t, None))
        .when(decide.clone())
        .then_events(&[Event::TransferDecided {
            key: t.key(),
            decision: cancel,
        }])
        .when(Command::Transfer(t))
        .then_status(TransferStatus::Cancelled(Reason::DestinationNotFound))
        // A retried Cancel with another reason is still the same decision.
        .when(Command::Decide {
            key: t.key(),
            decision: Decision::Cancel(Reason::Timeout),
        })
        .then_nothing_new()
        .when(finish.clone())
        .then_events(&[Event::DebitCancelled { key: t.key() }])
        .then_reply(Reply::Done);
    assert_eq!(
        then.state(&t),
        TransferState::Cancelled(Reason::DestinationNotFound)
    );
    assert_eq!(then.account(w.a), account(USD, FUNDS, 0, 0));
    then.when(finish.clone())
        .then_nothing_new()
        .when(decide.clone())
        .then_nothing_new()
        .when(Command::Transfer(t))
        .then_status(TransferStatus::Cancelled(Reason::DestinationNotFound));
}

#[test]
fn destination_try_records_a_pending_credit_once() {
    let w = world();
    let t = transfer(w.a, w.c, 2_500, USD, "t1");
    let then = given(1, &destination(&w))
        .when(Command::TryCredit(t))
        .then_events(&[Event::CreditTried { transfer: t }])
        .then_phase(PhaseResult::Tried);
    assert_eq!(then.account(w.c), account(USD, 0, 0, 2_500));
    assert_eq!(then.credit_state(&t), CreditState::Tried);
    then.when(Command::TryCredit(t))
        .then_nothing_new()
        .then_phase(PhaseResult::Tried);
}

#[test]
fn destination_confirm_credits_the_balance_once() {
    let w = world();
    let t = transfer(w.a, w.c, 2_500, USD, "t1");
    let then = given(1, &destination(&w))
        .when(Command::TryCredit(t))
        .when(Command::ConfirmCredit(t))
        .then_events(&[Event::CreditConfirmed { key: t.key() }])
        .then_phase(PhaseResult::Confirmed);
    assert_eq!(then.account(w.c), account(USD, 2_500, 0, 0));
    assert_eq!(then.ledger.flows()[&USD].received, 2_500);
    then.when(Command::ConfirmCredit(t))
        .then_nothing_new()
        .then_phase(PhaseResult::Confirmed)
        .when(Command::TryCredit(t))
        .then_nothing_new()
        .then_phase(PhaseResult::Tried);
}

#[test]
fn destination_cancel_after_try_drops_the_pending_credit_once() {
    let w = world();
    let t = transfer(w.a, w.c, 2_500, USD, "t1");
    let then = given(1, &destination(&w))
        .when(Command::TryCredit(t))
        .when(Command::CancelCredit(t))
        .then_events(&[Event::CreditCancelled { key: t.key() }])
        .then_phase(PhaseResult::Cancelled);
    assert_eq!(then.account(w.c), account(USD, 0, 0, 0));
    assert_eq!(then.credit_state(&t), CreditState::Cancelled);
    then.when(Command::CancelCredit(t))
        .then_nothing_new()
        .then_phase(PhaseResult::Cancelled)
        // A duplicate Try after the Cancel is refused by the barrier.
        .when(Command::TryCredit(t))
        .then_nothing_new()
        .then_phase(PhaseResult::TryFailed(Reason::CancelledBeforeTry));
}

#[test]
fn no_credit_phase_is_taken_for_a_source_on_the_partition() {
    // A transfer within a partition has one event and no credit row: its key's row there is
    // its home row (one table keeps both kinds, one row per key).
    let w = world();
    let local = transfer(w.c, w.c, 2_500, USD, "t1");
    let wrong = |command| LedgerError::InvalidTransition {
        key: local.key(),
        from: "a source on this partition".to_string(),
        command,
    };
    let given = || given(1, &destination(&w));
    given()
        .when(Command::TryCredit(local))
        .then_error(wrong("try credit"));
    given()
        .when(Command::ConfirmCredit(local))
        .then_error(wrong("confirm credit"));
    given()
        .when(Command::CancelCredit(local))
        .then_error(wrong("cancel credit"));
    given()
        .when(Command::AbortCredit(local))
        .then_error(wrong("abort credit"));
    // Nor does a log that says otherwise apply.
    let mut ledger = given().ledger();
    let event = Event::CreditTryNotSeen { key: local.key() };
    assert!(ledger.apply(meta(100), &event).is_err());
    assert_eq!(ledger.credit(&local.key()), None);
}

#[test]
fn cancel_before_try_leaves_try_not_seen_and_fails_the_late_try() {
    let w = world();
    let t = transfer(w.a, w.c, 2_500, USD, "t1");
    let then = given(1, &destination(&w))
        .when(Command::CancelCredit(t))
        .then_events(&[Event::CreditTryNotSeen { key: t.key() }])
        .then_phase(PhaseResult::Cancelled);
    assert_eq!(then.credit_state(&t), CreditState::TryNotSeen);
    let then = then
        .when(Command::TryCredit(t))
        .then_nothing_new()
        .then_phase(PhaseResult::TryFailed(Reason::CancelledBeforeTry))
        .when(Command::CancelCredit(t))
        .then_nothing_new()
        .then_phase(PhaseResult::Cancelled);
    assert_eq!(then.account(w.c), account(USD, 0, 0, 0));
}

#[test]
fn confirm_after_cancel_answers_cancelled() {
    let w = world();
    let t = transfer(w.a, w.c, 2_500, USD, "t1");
    given(1, &destination(&w))
        .when(Command::TryCredit(t))
        .when(Command::CancelCredit(t))
        .when(Command::ConfirmCredit(t))
        .then_nothing_new()
        .then_phase(PhaseResult::Cancelled);
    given(1, &destination(&w))
        .when(Command::CancelCredit(t))
        .when(Command::ConfirmCredit(t))
        .then_nothing_new()
        .then_phase(PhaseResult::Cancelled);
}

#[test]
fn cancel_after_confirm_answers_confirmed() {
    let w = world();
    let t = transfer(w.a, w.c, 2_500, USD, "t1");
    let then = given(1, &destination(&w))
        .when(Command::TryCredit(t))
        .when(Command::ConfirmCredit(t))
        .when(Command::CancelCredit(t))
        .then_nothing_new()
        .then_phase(PhaseResult::Confirmed);
    assert_eq!(then.account(w.c), account(USD, 2_500, 0, 0));
}

#[test]
fn states_map_to_client_statuses_and_unfinished_rows() {
    let cases = [
        (TransferState::Trying, TransferStatus::Pending, true),
        (TransferState::Confirming, TransferStatus::Committed, true),
        (
            TransferState::Cancelling(Reason::Timeout),
            TransferStatus::Cancelled(Reason::Timeout),
            true,
        ),
        (TransferState::Committed, TransferStatus::Committed, false),
        (
            TransferState::Cancelled(Reason::Timeout),
            TransferStatus::Cancelled(Reason::Timeout),
            false,
        ),
        (
            TransferState::Rejected(Reason::InsufficientFunds),
            TransferStatus::Rejected(Reason::InsufficientFunds),
            false,
        ),
    ];
    for (state, status, unfinished) in cases {
        assert_eq!(state.status(), status, "{state:?}");
        assert_eq!(state.is_unfinished(), unfinished, "{state:?}");
    }
}

#[test]
fn unfinished_transfers_are_sorted_by_key_and_skip_final_rows() {
    let w = world();
    let mut events = home(&w);
    for id in ["t5", "t1", "t3"] {
        events.push(Event::DebitTried {
            transfer: transfer(w.a, w.c, 10, USD, id),
        });
    }
    events.push(Event::Transferred {
        transfer: transfer(w.a, w.b, 10, USD, "t0"),
    });
    events.push(Event::TransferDecided {
        key: key(w.a, "t3"),
        decision: Decision::Confirm,
    });
    events.push(Event::DebitConfirmed {
        key: key(w.a, "t3"),
    });
    events.push(Event::TransferDecided {
        key: key(w.a, "t5"),
        decision: Decision::Cancel(Reason::Timeout),
    });
    let ledger = given(0, &events).ledger;
    let rows: Vec<_> = ledger
        .unfinished_transfers()
        .iter()
        .map(|row| (row.transfer.transaction_id, row.state))
        .collect();
    assert_eq!(
        rows,
        [
            (txn("t1"), TransferState::Trying),
            (txn("t5"), TransferState::Cancelling(Reason::Timeout)),
        ]
    );
}

#[test]
fn rows_remember_when_they_were_accepted_decided_and_finished() {
    let w = world();
    let t = transfer(w.a, w.c, 10, USD, "t1");
    let events = home_at(&w, t, Some(Decision::Confirm));
    let mut ledger = given(0, &events).ledger;
    ledger
        .apply(meta(9), &Event::DebitConfirmed { key: t.key() })
        .unwrap();
    let row = ledger.transfer(&t.key()).unwrap();
    // home() has four events: the Try is record 5, the decision 6.
    assert_eq!(
        (row.accepted_at, row.decided_at, row.finished_at),
        (5_000, 6_000, 9_000)
    );
    assert_eq!(ledger.last_applied(), meta(9));
}

#[test]
fn a_row_reads_back_as_it_was_recorded_key_fields_included() {
    // The table stores a row without the fields its key holds; every read must put them back.
    let w = world();
    let long = "x".repeat(64);
    let local = transfer(w.a, w.b, 10, USD, &long);
    let remote = transfer(w.a, w.c, 20, USD, "t2");
    let rejected = transfer(w.a, w.c, FUNDS + 1, USD, "t3");
    let mut events = home(&w);
    events.extend([
        Event::Transferred { transfer: local },
        Event::DebitTried { transfer: remote },
        Event::TransferRejected {
            transfer: rejected,
            reason: Reason::InsufficientFunds,
        },
        Event::TransferDecided {
            key: remote.key(),
            decision: Decision::Confirm,
        },
    ]);
    let ledger = given(0, &events).ledger;
    // home() has four events: the transfers are records 5, 6 and 7, the decision 8.
    let expected = [
        TransferRow {
            transfer: local,
            state: TransferState::Committed,
            remote: false,
            accepted_at: 5_000,
            decided_at: 5_000,
            finished_at: 5_000,
        },
        TransferRow {
            transfer: remote,
            state: TransferState::Confirming,
            remote: true,
            accepted_at: 6_000,
            decided_at: 8_000,
            finished_at: 0,
        },
        TransferRow {
            transfer: rejected,
            state: TransferState::Rejected(Reason::InsufficientFunds),
            remote: true,
            accepted_at: 7_000,
            decided_at: 7_000,
            finished_at: 7_000,
        },
    ];
    for row in &expected {
        assert_eq!(ledger.transfer(&row.transfer.key()), Some(*row));
    }
    assert_eq!(ledger.transfers().collect::<Vec<_>>(), expected);
    assert_eq!(ledger.unfinished_transfers(), [expected[1]]);
    // Another source with the same transaction id is another key, and has no row.
    assert_eq!(ledger.transfer(&key(w.b, &long)), None);
    // A retry is recognised only with the very body recorded under its key.
    given(0, &events)
        .when(Command::Transfer(local))
        .then_nothing_new()
        .then_status(TransferStatus::Committed);
    let others = [
        Transfer { to: w.e, ..local },
        Transfer {
            amount: amt(11),
            ..local
        },
        Transfer {
            currency: EUR,
            ..local
        },
    ];
    for other in others {
        given(0, &events)
            .when(Command::Transfer(other))
            .then_error(LedgerError::Conflict(local.transaction_id));
    }
}

// ---------------------------------------------------------------------------------------------
// `apply` refuses events that contradict the state, and changes nothing when it does.

fn assert_refused(ledger: &mut Ledger, event: Event) -> ApplyError {
    let before = Snapshot::of(ledger);
    let lsn = ledger.last_applied().lsn + 1;
    let error = ledger
        .apply(meta(lsn), &event)
        .expect_err(&format!("{event:?} must not apply"));
    assert_eq!(error.lsn, lsn);
    assert_eq!(
        Snapshot::of(ledger),
        before,
        "{event:?} was refused but changed the state"
    );
    error
}

#[test]
fn apply_refuses_contradictory_account_events() {
    let w = world();
    let mut ledger = given(0, &home(&w)).ledger;
    assert_refused(&mut ledger, opened(w.a, USD));
    assert_refused(&mut ledger, opened(w.a, EUR));
    assert_refused(&mut ledger, deposited(w.n, 1, "d1"));
    assert_refused(
        &mut ledger,
        Event::Withdrawn {
            account: w.n,
            amount: amt(1),
            transaction_id: txn("w1"),
        },
    );
    let overdraw = assert_refused(
        &mut ledger,
        Event::Withdrawn {
            account: w.a,
            amount: amt(FUNDS + 1),
            transaction_id: txn("w1"),
        },
    );
    assert!(overdraw.what.contains("overdraws"), "{overdraw}");
}

#[test]
fn apply_refuses_transfers_that_overdraw_or_name_unknown_accounts() {
    let w = world();
    let mut ledger = given(0, &home(&w)).ledger;
    for t in [
        transfer(w.a, w.b, FUNDS + 1, USD, "t1"),
        transfer(w.b, w.a, 1, USD, "t1"),
        transfer(w.n, w.a, 1, USD, "t1"),
        transfer(w.a, w.n, 1, USD, "t1"),
    ] {
        assert_refused(&mut ledger, Event::Transferred { transfer: t });
    }
    assert_refused(
        &mut ledger,
        Event::DebitTried {
            transfer: transfer(w.a, w.c, FUNDS + 1, USD, "t1"),
        },
    );
    assert_refused(
        &mut ledger,
        Event::DebitTried {
            transfer: transfer(w.n, w.c, 1, USD, "t1"),
        },
    );
}

#[test]
fn apply_refuses_money_in_another_currency_than_the_account_holds() {
    let w = world();
    let mut home = given(0, &home(&w)).ledger;
    let local = assert_refused(
        &mut home,
        Event::Transferred {
            transfer: transfer(w.a, w.b, 1, EUR, "t1"),
        },
    );
    assert!(local.what.contains("holds USD, not EUR"), "{local}");
    assert_refused(
        &mut home,
        Event::Transferred {
            transfer: transfer(w.a, w.e, 1, USD, "t1"),
        },
    );
    assert_refused(
        &mut home,
        Event::DebitTried {
            transfer: transfer(w.a, w.c, 1, EUR, "t1"),
        },
    );
    let mut destination = given(1, &destination(&w)).ledger;
    assert_refused(
        &mut destination,
        Event::CreditTried {
            transfer: transfer(w.a, w.x, 1, USD, "t1"),
        },
    );
}

#[test]
fn apply_refuses_credits_past_the_balance_limit() {
    let w = world();
    let mut events = home(&w);
    events.extend(fill_to_the_limit(w.b));
    let mut home = given(0, &events).ledger;
    let deposit = assert_refused(&mut home, deposited(w.b, 1, "d1"));
    assert!(deposit.what.contains("largest balance"), "{deposit}");
    assert_refused(
        &mut home,
        Event::Transferred {
            transfer: transfer(w.a, w.b, 1, USD, "t1"),
        },
    );
    let mut events = destination(&w);
    events.extend(fill_to_the_limit(w.c));
    let mut destination = given(1, &events).ledger;
    assert_refused(
        &mut destination,
        Event::CreditTried {
            transfer: transfer(w.a, w.c, 1, USD, "t1"),
        },
    );
}

#[test]
fn apply_refuses_source_phases_out_of_order() {
    let w = world();
    let t = transfer(w.a, w.c, 100, USD, "t1");
    let decided = |decision| Event::TransferDecided {
        key: t.key(),
        decision,
    };
    let mut ledger = given(0, &home(&w)).ledger;
    assert_refused(&mut ledger, decided(Decision::Confirm));
    assert_refused(&mut ledger, Event::DebitConfirmed { key: t.key() });
    // A tried debit may be confirmed at once (committed at the commit point), never
    // cancelled without its decision, which carries the reason.
    let mut trying = given(0, &home_at(&w, t, None)).ledger;
    assert_refused(&mut trying, Event::DebitCancelled { key: t.key() });
    let mut confirming = given(0, &home_at(&w, t, Some(Decision::Confirm))).ledger;
    assert_refused(&mut confirming, decided(Decision::Confirm));
    assert_refused(&mut confirming, decided(Decision::Cancel(Reason::Timeout)));
    assert_refused(&mut confirming, Event::DebitCancelled { key: t.key() });
    let cancel = Decision::Cancel(Reason::Timeout);
    let mut cancelling = given(0, &home_at(&w, t, Some(cancel))).ledger;
    assert_refused(&mut cancelling, Event::DebitConfirmed { key: t.key() });
}

#[test]
fn apply_refuses_destination_phases_out_of_order() {
    let w = world();
    let t = transfer(w.a, w.c, 100, USD, "t1");
    let mut ledger = given(1, &destination(&w)).ledger;
    assert_refused(&mut ledger, Event::CreditConfirmed { key: t.key() });
    assert_refused(&mut ledger, Event::CreditCancelled { key: t.key() });
    assert_refused(
        &mut ledger,
        Event::CreditTried {
            transfer: transfer(w.a, w.m, 1, USD, "t2"),
        },
    );
    let mut events = destination(&w);
    events.push(Event::CreditTried { transfer: t });
    let mut tried = given(1, &events).ledger;
    assert_refused(&mut tried, Event::CreditTried { transfer: t });
    assert_refused(&mut tried, Event::CreditTryNotSeen { key: t.key() });
    events.push(Event::CreditCancelled { key: t.key() });
    let mut cancelled = given(1, &events).ledger;
    assert_refused(&mut cancelled, Event::CreditConfirmed { key: t.key() });
    assert_refused(&mut cancelled, Event::CreditTried { transfer: t });
    let mut events = destination(&w);
    events.push(Event::CreditTryNotSeen { key: t.key() });
    let mut not_seen = given(1, &events).ledger;
    assert_refused(&mut not_seen, Event::CreditTried { transfer: t });
    assert_refused(&mut not_seen, Event::CreditTryNotSeen { key: t.key() });
    assert_refused(&mut not_seen, Event::CreditConfirmed { key: t.key() });
}

#[test]
fn apply_refuses_a_second_record_of_one_transfer_or_cash_key() {
    let w = world();
    let local = transfer(w.a, w.b, 100, USD, "t1");
    let mut events = home(&w);
    events.push(Event::Transferred { transfer: local });
    let mut ledger = given(0, &events).ledger;
    let remote = transfer(w.a, w.c, 100, USD, "t1");
    assert_refused(&mut ledger, Event::Transferred { transfer: local });
    assert_refused(&mut ledger, Event::DebitTried { transfer: remote });
    assert_refused(
        &mut ledger,
        Event::TransferRejected {
            transfer: remote,
            reason: Reason::InsufficientFunds,
        },
    );
    // `home` deposited with "d0": the id is spent for deposits and withdrawals alike.
    assert_refused(&mut ledger, deposited(w.a, FUNDS, "d0"));
    assert_refused(
        &mut ledger,
        Event::Withdrawn {
            account: w.a,
            amount: amt(1),
            transaction_id: txn("d0"),
        },
    );
}

#[test]
fn apply_refuses_records_out_of_log_order() {
    let w = world();
    let mut ledger = given(0, &home(&w)).ledger;
    let last = ledger.last_applied();
    let before = Snapshot::of(&ledger);
    let error = ledger
        .apply(meta(last.lsn - 1), &deposited(w.a, 1, "d1"))
        .expect_err("an older lsn must not apply");
    assert_eq!(error.lsn, last.lsn - 1);
    assert_eq!(Snapshot::of(&ledger), before);
    // One record may carry several events: the same lsn again is in order.
    ledger.apply(last, &deposited(w.a, 1, "d1")).unwrap();
    assert_eq!(ledger.account(&w.a).unwrap().balance, FUNDS + 1);
}
