//! Holds (see `crate::ledger::holds`): within a partition and across partitions, every end
//! of a hold, the one outcome of a capture racing the expiry, and what a hold survives.
//!
//! Time matters here, so these tests execute commands at chosen wall-clock stamps rather
//! than through `ledger`'s given/when/then, which stamps records by their lsn.

use crate::ledger::{
    Command, CreditState, Hold, Ledger, LedgerError, Refund, Reply, TransferState, TransferStatus,
    OPEN_HOLDS_MAX,
};
use crate::model::event::{Event, Reason, Timestamp, TransferKey};
use crate::model::ids::AccountId;
use crate::model::money::Currency::USD;
use crate::model::money::WrittenAmount;
use crate::model::partition::partition_of;

use super::ledger::{destination, given, home, world, World, FUNDS, PARTITIONS};
use super::support::{amt, key, transfer, txn};

/// When the first hold of a test is placed; records of the `given` events are stamped
/// before it.
const START: Timestamp = 1_000_000;
/// How long the holds of these tests stay held.
const EXPIRES_IN: u64 = 60_000_000;

fn hold(from: AccountId, to: AccountId, minor: u64, id: &str) -> Command {
    Command::Hold(Box::new(Hold {
        transfer: transfer(from, to, minor, USD, id),
        expires_in_us: EXPIRES_IN,
    }))
}

fn capture(key: TransferKey, minor: Option<u64>) -> Command {
    Command::Capture {
        key,
        amount: minor.map(|minor| WrittenAmount::of(amt(minor), USD)),
    }
}

/// Executes `command` at `now`; returns its answer and the events it recorded, after
/// checking the partition still conserves money.
fn at(
    ledger: &mut Ledger,
    now: Timestamp,
    command: Command,
) -> (Result<Reply, LedgerError>, Vec<Event>) {
    let mut events = Vec::new();
    let result = ledger.execute(&command, now, &mut events);
    ledger
        .check_conservation()
        .unwrap_or_else(|e| panic!("after {command:?}: {e}"));
    (result, events)
}

/// [`at`] of a command that must be accepted; returns its events.
fn ok(ledger: &mut Ledger, now: Timestamp, command: Command) -> Vec<Event> {
    let (result, events) = at(ledger, now, command.clone());
    result.unwrap_or_else(|e| panic!("{command:?}: {e}"));
    events
}

fn status(result: Result<Reply, LedgerError>) -> TransferStatus {
    match result {
        Ok(Reply::Transfer(status)) => status,
        Ok(Reply::HoldEnd(end)) => end.status,
        other => panic!("expected a transfer status, got {other:?}"),
    }
}

fn home_ledger(w: &World) -> Ledger {
    given(0, &home(w)).ledger()
}

fn figures(ledger: &Ledger, account: &AccountId) -> (u64, u64, u64) {
    let a = ledger.account(account).unwrap();
    (a.balance, a.held, a.incoming)
}

#[test]
fn a_hold_within_a_partition_is_held_then_captured_in_part_once() {
    let w = world();
    let mut ledger = home_ledger(&w);
    let h1 = key(w.a, "h1");
    let (result, events) = at(&mut ledger, START, hold(w.a, w.b, 3_000, "h1"));
    assert_eq!(status(result), TransferStatus::Held);
    assert!(
        matches!(events[..], [Event::HoldPlaced { remote: false, expires_at, .. }] if expires_at == START + EXPIRES_IN)
    );
    assert_eq!(figures(&ledger, &w.a), (FUNDS - 3_000, 3_000, 0));
    assert_eq!(figures(&ledger, &w.b), (0, 0, 3_000), "counted as incoming");
    // The held money is out of reach of a transfer.
    let (result, _) = at(
        &mut ledger,
        START + 1,
        Command::Transfer(transfer(w.a, w.b, 7_001, USD, "t1")),
    );
    assert_eq!(
        status(result),
        TransferStatus::Rejected(Reason::InsufficientFunds)
    );

    let (result, events) = at(&mut ledger, START + 2, capture(h1, Some(1_000)));
    assert_eq!(status(result), TransferStatus::Captured);
    assert!(
        matches!(events[..], [Event::HoldCaptured { amount, remote: false, .. }] if amount == amt(1_000))
    );
    assert_eq!(
        figures(&ledger, &w.a),
        (FUNDS - 1_000, 0, 0),
        "the rest came back"
    );
    assert_eq!(figures(&ledger, &w.b), (1_000, 0, 0));
    assert_eq!(ledger.hold_terms(&h1).unwrap().captured, Some(amt(1_000)));
    assert_eq!(ledger.open_holds(), 0);

    // One outcome: the same capture answers the same, another amount is refused, a void
    // answers with the capture, and nothing more is recorded.
    let (result, events) = at(&mut ledger, START + 3, capture(h1, Some(1_000)));
    assert_eq!(
        (status(result), events.len()),
        (TransferStatus::Captured, 0)
    );
    let (result, _) = at(&mut ledger, START + 4, capture(h1, None));
    assert!(
        matches!(result, Err(LedgerError::HoldAlreadyCaptured { .. })),
        "{result:?}"
    );
    let (result, events) = at(&mut ledger, START + 5, Command::Void { key: h1 });
    assert_eq!(events.len(), 0);
    // Its answer shows the hold and what the capture took, with no read of its own.
    let Ok(Reply::HoldEnd(end)) = result else {
        panic!("a void answers with the hold's end, got {result:?}");
    };
    assert_eq!(
        (end.status, end.to, end.amount, end.currency, end.captured),
        (
            TransferStatus::Captured,
            w.b,
            amt(3_000),
            USD,
            Some(amt(1_000))
        )
    );
    // A capture's amount is finished with the hold's currency: a cent's fraction is not one.
    let written = WrittenAmount::parse("0.001").unwrap();
    let capture_of = Command::Capture {
        key: h1,
        amount: Some(written),
    };
    let (result, events) = at(&mut ledger, START + 5, capture_of);
    assert!(
        matches!(&result, Err(LedgerError::InvalidAmount(why)) if why.contains("fraction")),
        "{result:?}"
    );
    assert!(events.is_empty());
    // Even past its expiry, a captured hold stays captured.
    let (_, events) = at(
        &mut ledger,
        START + EXPIRES_IN + 1,
        Command::ExpireHold { key: h1 },
    );
    assert!(events.is_empty());

    // A refund of a captured hold refunds what was captured, no more.
    let refund = |id: &str, minor| {
        Command::Refund(Refund {
            refund_id: txn(id),
            original: h1,
            partition: partition_of(&w.b, PARTITIONS),
            amount: Some(amt(minor)),
        })
    };
    let (result, _) = at(&mut ledger, START + EXPIRES_IN + 2, refund("r1", 1_001));
    assert_eq!(
        status(result),
        TransferStatus::Rejected(Reason::RefundExceedsOriginal)
    );
    let (result, _) = at(&mut ledger, START + EXPIRES_IN + 3, refund("r2", 1_000));
    assert_eq!(status(result), TransferStatus::Committed);
}

#[test]
fn a_void_returns_everything_and_an_expiry_comes_by_the_homes_clock_only() {
    let w = world();
    let mut ledger = home_ledger(&w);
    let (h1, h2) = (key(w.a, "h1"), key(w.a, "h2"));
    ok(&mut ledger, START, hold(w.a, w.b, 3_000, "h1"));
    ok(&mut ledger, START, hold(w.a, w.b, 2_000, "h2"));
    let (result, events) = at(&mut ledger, START + 1, Command::Void { key: h1 });
    assert_eq!(
        status(result),
        TransferStatus::Cancelled(Reason::HoldVoided)
    );
    assert!(matches!(
        events[..],
        [Event::HoldReleased {
            reason: Reason::HoldVoided,
            ..
        }]
    ));
    let (result, events) = at(&mut ledger, START + 2, capture(h1, None));
    assert_eq!(
        (status(result), events.len()),
        (TransferStatus::Cancelled(Reason::HoldVoided), 0)
    );
    assert_eq!(figures(&ledger, &w.a), (FUNDS - 2_000, 2_000, 0));

    // Before its expiry, the scan passes it over; at its expiry, it ends.
    let expiry = START + EXPIRES_IN;
    assert!(ledger.holds_due(expiry - 1, 10).is_empty());
    assert_eq!(ledger.next_hold_expiry(), Some(expiry));
    let (_, events) = at(&mut ledger, expiry - 1, Command::ExpireHold { key: h2 });
    assert!(events.is_empty(), "not before its time");
    assert_eq!(ledger.holds_due(expiry, 10), vec![h2]);
    let (_, events) = at(&mut ledger, expiry, Command::ExpireHold { key: h2 });
    assert!(matches!(
        events[..],
        [Event::HoldReleased {
            reason: Reason::HoldExpired,
            ..
        }]
    ));
    assert_eq!(figures(&ledger, &w.a), (FUNDS, 0, 0));
    assert_eq!(figures(&ledger, &w.b), (0, 0, 0));
    assert_eq!(ledger.next_hold_expiry(), None);
    let (result, _) = at(&mut ledger, expiry + 1, capture(h2, None));
    assert_eq!(
        status(result),
        TransferStatus::Cancelled(Reason::HoldExpired)
    );
}

#[test]
fn a_capture_at_the_expiry_records_the_expiry_and_is_answered_with_it() {
    let w = world();
    let mut ledger = home_ledger(&w);
    let h1 = key(w.a, "h1");
    ok(&mut ledger, START, hold(w.a, w.b, 3_000, "h1"));
    // The scan has not come yet; the capture is decided at the expiry all the same.
    let (result, events) = at(&mut ledger, START + EXPIRES_IN, capture(h1, Some(100)));
    assert_eq!(
        status(result),
        TransferStatus::Cancelled(Reason::HoldExpired)
    );
    assert!(matches!(
        events[..],
        [Event::HoldReleased {
            reason: Reason::HoldExpired,
            ..
        }]
    ));
    let (result, events) = at(
        &mut ledger,
        START + EXPIRES_IN + 1,
        Command::Void { key: h1 },
    );
    assert_eq!(
        (status(result), events.len()),
        (TransferStatus::Cancelled(Reason::HoldExpired), 0)
    );
    assert_eq!(
        ledger.find_transfer(&h1).unwrap().unwrap().state,
        TransferState::Cancelled(Reason::HoldExpired)
    );
}

#[test]
fn holds_refuse_what_they_cannot_do_and_change_nothing() {
    let w = world();
    let mut ledger = home_ledger(&w);
    ok(
        &mut ledger,
        START,
        Command::Transfer(transfer(w.a, w.b, 100, USD, "t1")),
    );
    ok(&mut ledger, START, hold(w.a, w.b, 3_000, "h1"));
    let h1 = key(w.a, "h1");
    let refusals = [
        (capture(key(w.a, "t1"), None), "not a hold"),
        (capture(key(w.a, "nothing"), None), "no transfer"),
        (capture(h1, Some(3_001)), "more than"),
        (hold(w.a, w.b, 2_999, "h1"), "different request"),
        (hold(w.a, w.b, 100, "t1"), "different request"),
    ];
    for (command, why) in refusals {
        let before = crate::log::snapshot::encode_snapshot(&ledger);
        let (result, events) = at(&mut ledger, START + 1, command.clone());
        let error = result.expect_err("refused");
        assert!(error.to_string().contains(why), "{command:?}: {error}");
        assert!(events.is_empty());
        assert_eq!(crate::log::snapshot::encode_snapshot(&ledger), before);
    }
    // A hold the source cannot fund is refused and recorded, as a transfer is; its retry
    // answers the same, and a capture of it is refused.
    let (result, events) = at(&mut ledger, START + 2, hold(w.a, w.b, 9_000, "h2"));
    assert_eq!(
        status(result),
        TransferStatus::Rejected(Reason::InsufficientFunds)
    );
    assert_eq!(events.len(), 1);
    let (result, events) = at(&mut ledger, START + 3, hold(w.a, w.b, 9_000, "h2"));
    assert_eq!(
        (status(result), events.len()),
        (TransferStatus::Rejected(Reason::InsufficientFunds), 0)
    );
    let (result, _) = at(&mut ledger, START + 3, capture(key(w.a, "h2"), None));
    assert!(
        matches!(result, Err(LedgerError::NotAHold(_))),
        "{result:?}"
    );
}

#[test]
fn a_partition_holds_a_bounded_number_of_open_holds() {
    let w = world();
    let mut ledger = home_ledger(&w);
    for i in 0..OPEN_HOLDS_MAX {
        let (result, _) = at(&mut ledger, START, hold(w.a, w.b, 1, &format!("h{i}")));
        assert_eq!(status(result), TransferStatus::Held);
    }
    let (result, events) = at(&mut ledger, START, hold(w.a, w.b, 1, "one-more"));
    assert_eq!(result, Err(LedgerError::HoldLimit(OPEN_HOLDS_MAX)));
    assert!(events.is_empty());
    // Ending one makes room.
    ok(
        &mut ledger,
        START + 1,
        Command::Void {
            key: key(w.a, "h0"),
        },
    );
    let (result, _) = at(&mut ledger, START + 2, hold(w.a, w.b, 1, "one-more"));
    assert_eq!(status(result), TransferStatus::Held);
}

#[test]
fn a_hold_across_partitions_is_held_at_its_commit_point_and_captured_in_part_at_both_ends() {
    let w = world();
    let mut home_side = home_ledger(&w);
    let mut destination_side = given(1, &destination(&w)).ledger();
    let h1 = key(w.a, "h1");
    let (result, events) = at(&mut home_side, START, hold(w.a, w.c, 3_000, "h1"));
    assert_eq!(status(result), TransferStatus::Pending);
    assert!(matches!(
        events[..],
        [Event::HoldPlaced { remote: true, .. }]
    ));
    assert_eq!(
        events[0].effect(),
        Event::DebitTried {
            transfer: transfer(w.a, w.c, 3_000, USD, "h1")
        }
    );
    // A capture before the destination tried decides nothing: the hold is being placed.
    let (result, events) = at(&mut home_side, START + 1, capture(h1, None));
    assert_eq!(result, Err(LedgerError::HoldBeingPlaced(h1)));
    assert!(events.is_empty());

    let tried = transfer(w.a, w.c, 3_000, USD, "h1");
    ok(&mut destination_side, START + 1, Command::TryCredit(tried));
    assert_eq!(figures(&destination_side, &w.c), (0, 0, 3_000));
    // The coordinator commits the Try as it does a transfer's: the hold is held.
    let (_, events) = at(&mut home_side, START + 2, Command::CommitDebit { key: h1 });
    assert_eq!(events, vec![Event::HoldEstablished { key: h1 }]);
    assert_eq!(
        home_side.find_transfer(&h1).unwrap().unwrap().state,
        TransferState::Held
    );

    let (result, events) = at(&mut home_side, START + 3, capture(h1, Some(1_200)));
    assert_eq!(status(result), TransferStatus::Captured);
    assert!(matches!(
        events[..],
        [Event::HoldCaptured { remote: true, .. }]
    ));
    assert_eq!(figures(&home_side, &w.a), (FUNDS - 1_200, 0, 0));
    // The Confirm carries the part captured.
    let confirm = transfer(w.a, w.c, 1_200, USD, "h1");
    let (_, events) = at(
        &mut destination_side,
        START + 4,
        Command::ConfirmCredit(confirm),
    );
    assert_eq!(
        events,
        vec![Event::CreditCaptured {
            key: h1,
            amount: amt(1_200)
        }]
    );
    assert_eq!(figures(&destination_side, &w.c), (1_200, 0, 0));
    let credit = destination_side.credit(&h1).unwrap();
    assert_eq!(credit.state, CreditState::Confirmed);
    assert_eq!(
        credit.transfer.unwrap().amount,
        amt(1_200),
        "what arrived, for refunds"
    );
    // A Confirm resent (the destination asked) changes nothing.
    let (_, events) = at(
        &mut destination_side,
        START + 5,
        Command::ConfirmCredit(confirm),
    );
    assert!(events.is_empty());
}

#[test]
fn a_hold_across_partitions_voided_is_cancelled_as_a_transfer_is() {
    let w = world();
    let mut home_side = home_ledger(&w);
    let h1 = key(w.a, "h1");
    ok(&mut home_side, START, hold(w.a, w.c, 3_000, "h1"));
    ok(&mut home_side, START + 1, Command::CommitDebit { key: h1 });
    let (result, events) = at(&mut home_side, START + 2, Command::Void { key: h1 });
    assert_eq!(
        status(result),
        TransferStatus::Cancelled(Reason::HoldVoided)
    );
    assert!(matches!(
        events[..],
        [Event::HoldReleased { remote: true, .. }]
    ));
    let row = home_side.find_transfer(&h1).unwrap().unwrap();
    assert_eq!(row.state, TransferState::Cancelling(Reason::HoldVoided));
    assert_eq!(
        figures(&home_side, &w.a),
        (FUNDS - 3_000, 3_000, 0),
        "held until acknowledged"
    );
    ok(&mut home_side, START + 3, Command::FinishDebit { key: h1 });
    assert_eq!(figures(&home_side, &w.a), (FUNDS, 0, 0));
    assert_eq!(
        home_side.find_transfer(&h1).unwrap().unwrap().state,
        TransferState::Cancelled(Reason::HoldVoided)
    );
}

#[test]
fn holds_survive_a_snapshot_and_a_replay_of_their_log() {
    let w = world();
    let mut ledger = home_ledger(&w);
    ok(&mut ledger, START, hold(w.a, w.b, 3_000, "h1"));
    ok(&mut ledger, START, hold(w.a, w.b, 2_000, "h2"));
    ok(&mut ledger, START, hold(w.a, w.c, 1_000, "h3"));
    ok(&mut ledger, START + 1, capture(key(w.a, "h1"), Some(500)));
    let bytes = crate::log::snapshot::encode_snapshot(&ledger);
    let restored = crate::log::snapshot::decode_snapshot(&bytes).unwrap();
    assert_eq!(
        crate::log::replay::state_difference(&ledger, &restored),
        None
    );
    assert_eq!(restored.open_holds(), 2);
    assert_eq!(
        restored.hold_terms(&key(w.a, "h1")).unwrap().captured,
        Some(amt(500))
    );
    assert_eq!(
        restored.holds_due(START + EXPIRES_IN, 10),
        vec![key(w.a, "h2")],
        "h3 is not held yet"
    );
}
