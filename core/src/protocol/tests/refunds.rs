//! Refunds (see `crate::ledger::refunds`), given/when/then as in `ledger`: within a
//! partition, across partitions, and the cap on what a transfer's refunds may sum to.

use crate::ledger::{Command, CreditState, LedgerError, Refund, TransferState, TransferStatus};
use crate::model::event::{Event, Reason, TransferKey};
use crate::model::ids::AccountId;
use crate::model::money::Currency::USD;
use crate::model::partition::partition_of;

use super::ledger::{destination, given, home, world, PARTITIONS};
use super::support::{amt, key, transfer, txn};

/// A refund taken from `from` (the original's destination), which the command names by its
/// partition.
fn refund(from: AccountId, original: TransferKey, id: &str, minor: Option<u64>) -> Command {
    Command::Refund(Refund {
        refund_id: txn(id),
        original,
        partition: partition_of(&from, PARTITIONS),
        amount: minor.map(amt),
    })
}

fn accepted(from: AccountId, to: AccountId, minor: u64, id: &str, of: &str, remote: bool) -> Event {
    Event::RefundAccepted {
        refund: transfer(from, to, minor, USD, id),
        original: txn(of),
        remote,
    }
}

fn refused(
    from: AccountId,
    to: AccountId,
    minor: u64,
    id: &str,
    of: &str,
    reason: Reason,
) -> Event {
    Event::RefundRejected {
        refund: transfer(from, to, minor, USD, id),
        original: txn(of),
        reason,
    }
}

#[test]
fn a_refund_within_a_partition_moves_money_back_and_never_more_than_the_original() {
    let w = world();
    let mut events = home(&w);
    events.push(Event::Transferred {
        transfer: transfer(w.a, w.b, 3_000, USD, "t1"),
    });
    let t1 = key(w.a, "t1");
    let then = given(0, &events)
        .when(refund(w.b, t1, "r1", Some(1_000)))
        .then_events(&[accepted(w.b, w.a, 1_000, "r1", "t1", false)])
        .then_status(TransferStatus::Committed)
        // A retry answers the same and changes nothing; another amount is a conflict.
        .when(refund(w.b, t1, "r1", Some(1_000)))
        .then_nothing_new()
        .when(refund(w.b, t1, "r1", None))
        .then_status(TransferStatus::Committed)
        .when(refund(w.b, t1, "r1", Some(999)))
        .then_error(LedgerError::Conflict(txn("r1")))
        // More than is left: refused, and recorded so that the id answers the same forever.
        .when(refund(w.b, t1, "r2", Some(2_001)))
        .then_events(&[refused(
            w.b,
            w.a,
            2_001,
            "r2",
            "t1",
            Reason::RefundExceedsOriginal,
        )])
        .then_status(TransferStatus::Rejected(Reason::RefundExceedsOriginal))
        // No amount: all that is left.
        .when(refund(w.b, t1, "r3", None))
        .then_events(&[accepted(w.b, w.a, 2_000, "r3", "t1", false)])
        // Nothing left: refused, recording the original's amount.
        .when(refund(w.b, t1, "r4", None))
        .then_events(&[refused(
            w.b,
            w.a,
            3_000,
            "r4",
            "t1",
            Reason::RefundExceedsOriginal,
        )]);
    let ledger = &then.ledger;
    assert_eq!(ledger.refunded(&t1), 3_000);
    assert_eq!(ledger.refund_of(&key(w.b, "r3")), Some(txn("t1")));
    assert_eq!(ledger.refund_of(&t1), None);
    assert_eq!(ledger.account(&w.a).unwrap().balance, 10_000);
    assert_eq!(ledger.account(&w.b).unwrap().balance, 0);
}

#[test]
fn only_a_committed_transfer_into_the_refunds_source_can_be_refunded() {
    let w = world();
    let mut events = home(&w);
    events.push(Event::TransferRejected {
        transfer: transfer(w.b, w.a, 1, USD, "poor"),
        reason: Reason::InsufficientFunds,
    });
    events.push(Event::DebitTried {
        transfer: transfer(w.a, w.c, 500, USD, "away"),
    });
    events.push(Event::Transferred {
        transfer: transfer(w.a, w.b, 500, USD, "t1"),
    });
    let not_refundable = |k: TransferKey| LedgerError::NotRefundable(k);
    given(0, &events)
        // Never made, refused, or still in flight.
        .when(refund(w.b, key(w.a, "nothing"), "r1", None))
        .then_error(not_refundable(key(w.a, "nothing")))
        .when(refund(w.a, key(w.b, "poor"), "r2", None))
        .then_error(not_refundable(key(w.b, "poor")))
        // Its money went to another partition: the refund is decided there, not here.
        .when(refund(w.a, key(w.a, "away"), "r4", None))
        .then_error(not_refundable(key(w.a, "away")))
        .when(refund(w.c, key(w.a, "away"), "r4", None))
        .then_error(LedgerError::WrongPartition {
            account: w.a,
            owner: 1,
            here: 0,
        })
        // Its id may not be another transfer's.
        .when(refund(w.b, key(w.a, "t1"), "poor", None))
        .then_error(LedgerError::Conflict(txn("poor")));
}

#[test]
fn a_refund_the_source_cannot_fund_is_refused_as_a_transfer_would_be() {
    let w = world();
    let mut events = home(&w);
    events.push(Event::Transferred {
        transfer: transfer(w.a, w.b, 3_000, USD, "t1"),
    });
    events.push(Event::Transferred {
        transfer: transfer(w.b, w.a, 2_500, USD, "spent"),
    });
    given(0, &events)
        .when(refund(w.b, key(w.a, "t1"), "r1", None))
        .then_events(&[refused(
            w.b,
            w.a,
            3_000,
            "r1",
            "t1",
            Reason::InsufficientFunds,
        )])
        .then_status(TransferStatus::Rejected(Reason::InsufficientFunds))
        .when(refund(w.b, key(w.a, "t1"), "r2", Some(500)))
        .then_events(&[accepted(w.b, w.a, 500, "r2", "t1", false)]);
}

#[test]
fn a_refund_across_partitions_is_decided_where_the_credit_landed_and_uncounted_if_cancelled() {
    let w = world();
    // Partition 1 took a's transfer to c: tried, then confirmed.
    let original = transfer(w.a, w.c, 4_000, USD, "t1");
    let mut events = destination(&w);
    events.push(Event::CreditTried { transfer: original });
    let t1 = key(w.a, "t1");
    let tried = given(1, &events);
    // A credit only tried may still be cancelled (its home may have lost the debit).
    let tried = tried
        .when(refund(w.c, t1, "r1", Some(100)))
        .then_error(LedgerError::NotRefundable(t1));
    let then = tried
        .when(Command::ConfirmCredit(original))
        .when(refund(w.c, t1, "r1", Some(1_500)))
        .then_events(&[accepted(w.c, w.a, 1_500, "r1", "t1", true)])
        .then_status(TransferStatus::Pending)
        .when(refund(w.c, t1, "r2", Some(2_600)))
        .then_status(TransferStatus::Rejected(Reason::RefundExceedsOriginal));
    assert_eq!(then.ledger.refunded(&t1), 1_500);
    assert_eq!(then.ledger.account(&w.c).unwrap().held, 1_500);
    // Its home cancels the refund (a's partition could not take it back): once final, it
    // no longer counts against the original.
    let r1 = key(w.c, "r1");
    let then = then
        .when(Command::Decide {
            key: r1,
            decision: crate::model::event::Decision::Cancel(Reason::DestinationBalanceLimit),
        })
        .when(Command::FinishDebit { key: r1 });
    assert_eq!(
        then.ledger.find_transfer(&r1).unwrap().unwrap().state,
        TransferState::Cancelled(Reason::DestinationBalanceLimit)
    );
    assert_eq!(then.ledger.refunded(&t1), 0);
    assert_eq!(
        then.ledger.credit(&t1).unwrap().state,
        CreditState::Confirmed
    );
    then.when(refund(w.c, t1, "r3", None))
        .then_events(&[accepted(w.c, w.a, 4_000, "r3", "t1", true)]);
}

#[test]
fn refund_events_that_do_not_fit_the_state_are_refused_on_replay() {
    let w = world();
    let mut events = home(&w);
    events.push(Event::Transferred {
        transfer: transfer(w.a, w.b, 3_000, USD, "t1"),
    });
    let mut ledger = given(0, &events)
        .when(refund(w.b, key(w.a, "t1"), "r1", Some(3_000)))
        .ledger;
    let lsn = ledger.last_applied().lsn;
    let meta = |lsn| crate::ledger::RecordMeta {
        lsn,
        timestamp: 1_000 * lsn,
    };
    for (event, why) in [
        (accepted(w.b, w.a, 1, "r2", "t1", false), "exceeds"),
        (
            accepted(w.b, w.a, 1, "r2", "nothing", false),
            "not a committed transfer",
        ),
        (
            accepted(w.b, w.a, 1, "r2", "t1", true),
            "says its destination is remote",
        ),
        (
            refused(w.b, w.a, 1, "r1", "t1", Reason::InsufficientFunds),
            "recorded twice",
        ),
    ] {
        let error = ledger.apply(meta(lsn + 1), &event).unwrap_err();
        assert!(error.what.contains(why), "{event:?}: {error}");
    }
}

#[test]
fn refunds_survive_a_snapshot_and_a_replay_of_their_log() {
    let w = world();
    let mut events = home(&w);
    events.push(Event::Transferred {
        transfer: transfer(w.a, w.b, 3_000, USD, "t1"),
    });
    let then = given(0, &events)
        .when(refund(w.b, key(w.a, "t1"), "r1", Some(1_000)))
        .when(refund(w.b, key(w.a, "t1"), "r2", Some(9_000)));
    let bytes = crate::log::snapshot::encode_snapshot(&then.ledger);
    let restored = crate::log::snapshot::decode_snapshot(&bytes).unwrap();
    assert_eq!(
        crate::log::replay::state_difference(&then.ledger, &restored),
        None
    );
    assert_eq!(restored.refunded(&key(w.a, "t1")), 1_000);
    assert_eq!(restored.refund_of(&key(w.b, "r2")), Some(txn("t1")));
}

#[test]
fn refund_beyond_original_accepts_refunds_past_the_original_and_the_scan_names_them() {
    struct Off;
    impl Drop for Off {
        fn drop(&mut self) {
            crate::protocol::bugs::set(&[]);
        }
    }
    crate::protocol::bugs::set(&[crate::protocol::bugs::Bug::RefundBeyondOriginal]);
    let _off = Off;
    let w = world();
    let mut events = home(&w);
    events.push(Event::Deposited {
        account: w.b,
        amount: amt(5_000),
        transaction_id: txn("d1"),
    });
    events.push(Event::Transferred {
        transfer: transfer(w.a, w.b, 3_000, USD, "t1"),
    });
    let t1 = key(w.a, "t1");
    let refunds = [
        accepted(w.b, w.a, 3_000, "r1", "t1", false),
        accepted(w.b, w.a, 3_000, "r2", "t1", false),
    ];
    // Each refund is held against the whole original, and the log replays as it ran.
    given(0, &events)
        .when(refund(w.b, t1, "r1", None))
        .then_events(&refunds[..1])
        .when(refund(w.b, t1, "r2", None))
        .then_events(&refunds[1..]);
    events.extend(refunds);
    let records: Vec<crate::log::codec::Record> = (1..)
        .zip(events)
        .map(|(lsn, event)| crate::log::codec::Record {
            lsn,
            timestamp: lsn,
            event,
        })
        .collect();
    let found = crate::protocol::invariants::scan_refunds(0, &records);
    assert!(
        matches!(found.as_slice(), [v] if v.invariant().name() == "refund_cap"
            && v.to_string().contains("6000")),
        "{found:?}"
    );
}

#[test]
fn a_refund_abandoned_after_a_crash_answers_its_retry_as_an_abandoned_transfer() {
    let w = world();
    let original = transfer(w.a, w.c, 4_000, USD, "t1");
    let mut events = destination(&w);
    events.push(Event::CreditTried { transfer: original });
    events.push(Event::CreditConfirmed {
        key: original.key(),
    });
    // The refund's record was lost with unsynced writes after its Try left; a's partition
    // asked about the credit, and this home, with no row, recorded it refused for good.
    let lost = transfer(w.c, w.a, 1_000, USD, "r1");
    given(1, &events)
        .when(Command::Abandon(lost))
        .then_status(TransferStatus::Rejected(Reason::Timeout))
        .when(refund(w.c, key(w.a, "t1"), "r1", Some(1_000)))
        .then_nothing_new()
        .then_status(TransferStatus::Rejected(Reason::Timeout))
        .when(refund(w.c, key(w.a, "t1"), "r1", Some(999)))
        .then_error(LedgerError::Conflict(txn("r1")));
}
