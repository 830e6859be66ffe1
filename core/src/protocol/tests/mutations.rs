//! Each protection, removed: with a known bug switched on (see [`crate::protocol::bugs`]), a known
//! sequence breaks the invariant that protection keeps and its checker says so; the same
//! sequence without the bug passes every checker. The random schedules of
//! [`super::properties`] must find each bug too, from a fixed stream of cases.

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

use crate::ledger::{Command, CreditState, Reply, TransferState, TransferStatus};
use crate::model::event::{Reason, Transfer};
use crate::model::ids::AccountId;
use crate::model::money::Currency::USD;
use crate::model::money::BALANCE_MINOR_MAX;
use crate::protocol::bugs::{self, Bug};
use crate::protocol::coordinator::Phase;

use crate::protocol::invariants::{self, Invariant};

use super::checks::{
    check_always, check_at_rest, check_log, check_quiescent, check_recorded, check_replay,
    Violation,
};
use super::cluster::Cluster;
use super::properties::{ops, simulate};
use super::support::{account_on, deposit, open, transfer, CONFIG};

const PARTITIONS: u32 = 4;
const FUNDS: u64 = 10_000;
const SETTLE_STEPS_MAX: usize = 1_000;
const TICK_US: u64 = 10_000;
/// How many random schedules a bug hunt may try. Each bug below is found well within it.
const HUNT_CASES_MAX: usize = 128;

/// Switches exactly `bugs` on for this thread until dropped, even if the test panics.
struct Switched;

fn switch_on(bugs: &[Bug]) -> Switched {
    bugs::set(bugs);
    Switched
}

impl Drop for Switched {
    fn drop(&mut self) {
        bugs::set(&[]);
    }
}

struct Accounts {
    /// USD on partition 0, funded.
    src: AccountId,
    /// USD on partition 0 too, empty.
    neighbour: AccountId,
    /// USD on partition 0, opened and never funded.
    poor: AccountId,
    /// USD on partition 1.
    dst: AccountId,
}

fn cluster() -> (Cluster, Accounts) {
    let w = Accounts {
        src: account_on("src", 0, PARTITIONS, 0),
        neighbour: account_on("src", 0, PARTITIONS, 1),
        poor: account_on("poor", 0, PARTITIONS, 0),
        dst: account_on("dst", 1, PARTITIONS, 0),
    };
    let mut cluster = Cluster::new(PARTITIONS, CONFIG);
    for command in [
        open(w.src, USD),
        deposit(w.src, FUNDS, USD, "d0"),
        open(w.neighbour, USD),
        open(w.poor, USD),
        open(w.dst, USD),
    ] {
        cluster.client(command).expect("fixture commands apply");
    }
    (cluster, w)
}

/// Runs random schedules from a fixed stream with `bugs` on; the first violation found and
/// the index of the schedule that found it.
fn hunt(bugs: &[Bug]) -> Option<(usize, Violation)> {
    let _switched = switch_on(bugs);
    let mut runner = TestRunner::deterministic();
    (0..HUNT_CASES_MAX).find_map(|case| {
        let schedule = ops().new_tree(&mut runner).expect("generates").current();
        simulate(&schedule).err().map(|violation| (case, violation))
    })
}

// ---------------------------------------------------------------------------------------------
// SkipBarrier: a Try that arrives after its Cancel.

/// A transfer whose first Try is held back until the transfer timed out and was cancelled on
/// both sides; then the Try arrives.
fn late_try(bugs: &[Bug]) -> (Cluster, Transfer) {
    let _switched = switch_on(bugs);
    let (mut cluster, w) = cluster();
    let t = transfer(w.src, w.dst, 2_500, USD, "t1");
    cluster.client(Command::Transfer(t)).unwrap();
    let held_back = cluster.drop_message(0);
    cluster.lose_all_until(TICK_US, CONFIG.try_timeout_us, |cluster| {
        cluster.sent.iter().any(|s| s.request.phase == Phase::Abort)
    });
    assert!(cluster.settle(SETTLE_STEPS_MAX));
    assert_eq!(
        cluster.ledger_of(&w.dst).credit(&t.key()).map(|c| c.state),
        Some(CreditState::TryNotSeen)
    );
    cluster.network.push(held_back);
    assert!(cluster.settle(SETTLE_STEPS_MAX));
    (cluster, t)
}

#[test]
fn skip_barrier_applies_a_try_after_its_cancel_and_leaves_it_hanging() {
    let (cluster, t) = late_try(&[Bug::SkipBarrier]);
    assert!(matches!(
        check_log(&cluster),
        Err(Violation::Hanging { key, .. }) if key == t.key()
    ));
    // The home partition is done with the transfer; the destination holds a pending credit
    // that nobody will ever confirm or cancel.
    assert!(matches!(
        check_at_rest(&cluster),
        Err(Violation::Sides { at_rest: true, .. })
    ));
    assert_eq!(
        cluster.ledger_of(&t.to).account(&t.to).unwrap().incoming,
        2_500
    );
    assert_eq!(
        cluster.ledger_of(&t.to).credit(&t.key()).map(|c| c.state),
        Some(CreditState::Tried)
    );
    let (cluster, _) = late_try(&[]);
    assert_eq!(check_quiescent(&cluster), Ok(()));
}

#[test]
fn random_schedules_find_skip_barrier() {
    let found = hunt(&[Bug::SkipBarrier]);
    assert!(
        matches!(found, Some((_, Violation::Hanging { .. }))),
        "{found:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// NoIdempotency: a retried transfer applied again.

/// A committed transfer from `src` to `to`, then the client's exact retry.
fn retried(bugs: &[Bug], to: fn(&Accounts) -> AccountId) -> (Cluster, Transfer, Reply) {
    let _switched = switch_on(bugs);
    let (mut cluster, w) = cluster();
    let t = transfer(w.src, to(&w), 2_500, USD, "t1");
    cluster.client(Command::Transfer(t)).unwrap();
    assert!(cluster.settle(SETTLE_STEPS_MAX));
    assert_eq!(
        cluster.ledger_of(&t.from).transfer(&t.key()).unwrap().state,
        TransferState::Committed
    );
    let reply = cluster.client(Command::Transfer(t)).unwrap();
    (cluster, t, reply)
}

#[test]
fn no_idempotency_applies_a_same_partition_retry_twice() {
    let (cluster, t, _) = retried(&[Bug::NoIdempotency], |w| w.neighbour);
    assert!(matches!(
        check_log(&cluster),
        Err(Violation::ExactlyOnce { key, .. }) if key == Some(t.key())
    ));
    assert_eq!(
        cluster.ledger_of(&t.to).account(&t.to).unwrap().balance,
        5_000
    );
    let (cluster, _, reply) = retried(&[], |w| w.neighbour);
    assert_eq!(reply, Reply::Transfer(TransferStatus::Committed));
    assert_eq!(check_quiescent(&cluster), Ok(()));
}

#[test]
fn no_idempotency_debits_a_cross_partition_retry_twice() {
    let (mut cluster, t, reply) = retried(&[Bug::NoIdempotency], |w| w.dst);
    // The retry debits again; the destination, already confirmed, is not credited again.
    assert_eq!(reply, Reply::Transfer(TransferStatus::Pending));
    assert!(matches!(
        invariants::conservation(&cluster.ledgers),
        Err(Violation::Conservation { currency: USD, .. })
    ));
    assert!(matches!(
        check_log(&cluster),
        Err(Violation::ExactlyOnce { key, .. }) if key == Some(t.key())
    ));
    {
        let _switched = switch_on(&[Bug::NoIdempotency]);
        assert!(cluster.settle(SETTLE_STEPS_MAX));
    }
    assert_eq!(
        cluster.ledger_of(&t.from).account(&t.from).unwrap().balance,
        FUNDS - 5_000
    );
    assert_eq!(
        cluster.ledger_of(&t.to).account(&t.to).unwrap().balance,
        2_500
    );
    assert!(invariants::conservation(&cluster.ledgers).is_err());
    let (cluster, _, reply) = retried(&[], |w| w.dst);
    assert_eq!(reply, Reply::Transfer(TransferStatus::Committed));
    assert_eq!(check_quiescent(&cluster), Ok(()));
}

#[test]
fn random_schedules_find_no_idempotency() {
    let found = hunt(&[Bug::NoIdempotency]);
    assert!(
        matches!(
            found,
            Some((
                _,
                Violation::ExactlyOnce { .. }
                    | Violation::Conservation { .. }
                    | Violation::Books { .. }
                    | Violation::Acknowledged { .. }
            ))
        ),
        "{found:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// CreditBeforeDebit: the destination is credited before the source is debited.

/// A transfer from an account with no money to another partition.
fn unfunded_transfer(bugs: &[Bug]) -> (Cluster, Transfer, Reply) {
    let _switched = switch_on(bugs);
    let (mut cluster, w) = cluster();
    let t = transfer(w.poor, w.dst, 2_500, USD, "t1");
    let reply = cluster.client(Command::Transfer(t)).unwrap();
    assert!(cluster.settle(SETTLE_STEPS_MAX));
    (cluster, t, reply)
}

#[test]
fn credit_before_debit_creates_money_when_the_debit_fails() {
    let (cluster, t, reply) = unfunded_transfer(&[Bug::CreditBeforeDebit]);
    assert_eq!(
        reply,
        Reply::Transfer(TransferStatus::Rejected(Reason::InsufficientFunds))
    );
    assert_eq!(
        cluster.ledger_of(&t.to).account(&t.to).unwrap().balance,
        2_500
    );
    assert!(matches!(
        invariants::conservation(&cluster.ledgers),
        Err(Violation::Conservation { currency: USD, .. })
    ));
    assert!(matches!(
        check_at_rest(&cluster),
        Err(Violation::Sides { at_rest: true, .. })
    ));
    let (cluster, _, reply) = unfunded_transfer(&[]);
    assert_eq!(
        reply,
        Reply::Transfer(TransferStatus::Rejected(Reason::InsufficientFunds))
    );
    assert!(cluster.sent.is_empty(), "a refused debit sends nothing");
    assert_eq!(check_quiescent(&cluster), Ok(()));
}

#[test]
fn credit_before_debit_confirms_before_any_decision() {
    let _switched = switch_on(&[Bug::CreditBeforeDebit]);
    let (mut cluster, w) = cluster();
    let t = transfer(w.src, w.dst, 2_500, USD, "t1");
    cluster.client(Command::Transfer(t)).unwrap();
    assert!(cluster.executed.is_empty(), "nothing is decided yet");
    assert!(cluster
        .sent
        .iter()
        .any(|s| s.request.phase == Phase::Confirm));
    let found = check_recorded(&cluster).unwrap_err();
    assert_eq!(found.invariant(), Invariant::DurableDecision, "{found}");
}

#[test]
fn random_schedules_find_credit_before_debit() {
    let found = hunt(&[Bug::CreditBeforeDebit]);
    assert!(
        matches!(
            found,
            Some((
                _,
                Violation::Conservation { .. }
                    | Violation::Sides { .. }
                    | Violation::DecisionMissing { .. }
                    | Violation::Protocol { .. }
            ))
        ),
        "{found:?}"
    );
}

#[test]
fn the_schedules_that_find_the_bugs_pass_without_them() {
    assert_eq!(hunt(&[]), None);
}

// ---------------------------------------------------------------------------------------------
// Checkers with no bug switch of their own fail on a state tampered with by hand.

#[test]
fn replay_books_and_limit_checkers_catch_a_tampered_balance() {
    let (mut cluster, w) = cluster();
    assert_eq!(check_always(&cluster), Ok(()));
    assert_eq!(check_replay(&cluster), Ok(()));
    cluster.ledgers[0]
        .accounts
        .get_mut(&w.src)
        .expect("fixture account")
        .balance = BALANCE_MINOR_MAX + 1;
    assert!(matches!(
        check_replay(&cluster),
        Err(Violation::Replay { partition: 0, .. })
    ));
    assert!(matches!(
        invariants::books(&cluster.ledgers[0]),
        Err(Violation::Books { partition: 0, .. })
    ));
    assert!(matches!(
        invariants::conservation(&cluster.ledgers),
        Err(Violation::Conservation { currency: USD, .. })
    ));
    assert_eq!(
        invariants::balances_in_range(&cluster.ledgers[0]),
        Err(Violation::BalanceLimit {
            account: w.src,
            balance: BALANCE_MINOR_MAX + 1
        })
    );
}

#[test]
fn the_at_rest_checker_rejects_a_transfer_still_in_flight() {
    let (mut cluster, w) = cluster();
    cluster
        .client(Command::Transfer(transfer(w.src, w.dst, 1, USD, "t1")))
        .unwrap();
    cluster.drop_all();
    assert_eq!(check_always(&cluster), Ok(()));
    assert!(matches!(
        check_at_rest(&cluster),
        Err(Violation::NotQuiet { .. })
    ));
    assert!(cluster.settle(SETTLE_STEPS_MAX));
    assert_eq!(check_at_rest(&cluster), Ok(()));
}

#[test]
fn the_replay_checker_sees_a_lost_record() {
    let (mut cluster, _) = cluster();
    let lost = cluster.history.remove(1);
    assert!(matches!(
        lost.event,
        crate::model::event::Event::Deposited { .. }
    ));
    assert!(matches!(
        check_replay(&cluster),
        Err(Violation::Replay { partition: 0, .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// CancelAfterDurableCredit: a Try that times out is cancelled without asking.

/// A transfer whose every answer is lost until past its Try's deadline: the destination
/// tried it, durably (here: at once).
fn answers_lost_past_the_deadline(bugs: &[Bug]) -> (Cluster, Transfer) {
    let _switched = switch_on(bugs);
    let (mut cluster, w) = cluster();
    let t = transfer(w.src, w.dst, 2_500, USD, "t1");
    cluster.client(Command::Transfer(t)).unwrap();
    let deadline = cluster.now + CONFIG.try_timeout_us + TICK_US;
    while cluster.now < deadline {
        while cluster.deliver_first(|m| m.is_request()) {}
        cluster.network.retain(|m| m.is_request());
        cluster.advance(TICK_US);
    }
    (cluster, t)
}

// ---------------------------------------------------------------------------------------------
// ConfirmSentOnce: the home never sends a committed transfer's Confirm again.

/// A committed transfer whose Confirm is lost, then a healed network until the cluster is
/// idle (or `SETTLE_STEPS_MAX` steps). Returns whether it became idle.
fn confirm_lost(bugs: &[Bug]) -> (Cluster, Transfer, bool) {
    let _switched = switch_on(bugs);
    let (mut cluster, w) = cluster();
    let t = transfer(w.src, w.dst, 2_500, USD, "t1");
    cluster.client(Command::Transfer(t)).unwrap();
    assert!(cluster.deliver_first(|m| m.is_request()));
    assert!(cluster.deliver_first(|m| !m.is_request()));
    assert_eq!(cluster.drop_all(), 1, "the Confirm is lost");
    let idle = cluster.settle(SETTLE_STEPS_MAX);
    (cluster, t, idle)
}

#[test]
fn confirm_sent_once_leaves_a_committed_credit_pending_for_good() {
    let (cluster, t, idle) = confirm_lost(&[Bug::ConfirmSentOnce]);
    assert!(!idle, "the destination asks forever");
    let credit = cluster.ledger_of(&t.to).credit(&t.key()).map(|c| c.state);
    assert_eq!(credit, Some(CreditState::Tried));
    let violation = check_quiescent(&cluster).expect_err("the credit never lands");
    assert_eq!(violation.invariant(), Invariant::Atomicity, "{violation:?}");
    // Without the bug the question brings the Confirm.
    let (cluster, _, idle) = confirm_lost(&[]);
    assert!(idle);
    assert_eq!(check_quiescent(&cluster), Ok(()));
}

#[test]
fn cancel_after_durable_credit_is_a_cancel_decision_beside_a_tried_credit() {
    let (cluster, t) = answers_lost_past_the_deadline(&[Bug::CancelAfterDurableCredit]);
    assert_eq!(
        cluster
            .ledger_of(&t.from)
            .transfer(&t.key())
            .map(|r| r.state),
        Some(TransferState::Cancelling(Reason::Timeout))
    );
    let violation = check_always(&cluster).expect_err("the commit point is broken");
    assert_eq!(violation.invariant(), Invariant::Atomicity, "{violation:?}");
    // Without the bug the same schedule is fine: the home is still asking.
    let (cluster, _) = answers_lost_past_the_deadline(&[]);
    assert_eq!(check_always(&cluster), Ok(()));
}

#[test]
fn the_switches_are_per_thread_and_off_by_default() {
    assert!(Bug::ALL.iter().all(|bug| !bugs::enabled(*bug)));
    let switched = switch_on(&[Bug::SkipBarrier, Bug::NoIdempotency]);
    assert!(bugs::enabled(Bug::SkipBarrier) && bugs::enabled(Bug::NoIdempotency));
    assert!(!bugs::enabled(Bug::CreditBeforeDebit));
    let other = std::thread::spawn(|| bugs::enabled(Bug::SkipBarrier));
    assert!(!other.join().unwrap());
    drop(switched);
    assert!(!bugs::enabled(Bug::SkipBarrier));
}
