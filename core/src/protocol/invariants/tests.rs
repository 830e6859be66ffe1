//! Each checker on small hand-made inputs: what it accepts and what it names broken. The
//! checkers on whole runs are exercised by `protocol::tests` (properties and mutations).

use crate::ledger::{CreditState, Ledger, RecordMeta, TransferState, TransferStatus};
use crate::log::codec::Record;
use crate::model::event::{Decision, Event, Reason, Transfer};
use crate::model::money::Currency::USD;
use crate::protocol::coordinator::{Phase, PhaseRequest};
use crate::protocol::message::PeerMessage;
use crate::protocol::tests::support::{account_on, transfer};

use super::*;

const PARTITIONS: u32 = 2;

fn record(lsn: u64, event: Event) -> Record {
    Record {
        lsn,
        timestamp: lsn,
        event,
    }
}

/// A transfer from partition 0 to partition 1.
fn remote(id: &str) -> Transfer {
    let (from, to) = (
        account_on("a", 0, PARTITIONS, 0),
        account_on("b", 1, PARTITIONS, 0),
    );
    transfer(from, to, 100, USD, id)
}

/// The two partitions with `t`'s accounts open, `t.from` funded, and `home` and
/// `destination` events applied on each side.
fn cluster(t: &Transfer, home: &[Event], destination: &[Event]) -> Vec<Ledger> {
    let opened = |account, partition| {
        let mut ledger = Ledger::new(partition, PARTITIONS);
        let events = [
            Event::AccountOpened {
                account,
                currency: USD,
            },
            Event::Deposited {
                account,
                amount: t.amount,
                transaction_id: t.transaction_id,
            },
        ];
        for (lsn, event) in
            (1..).zip(
                events
                    .iter()
                    .chain(if partition == 0 { home } else { destination }),
            )
        {
            let meta = RecordMeta {
                lsn,
                timestamp: lsn,
            };
            ledger.apply(meta, event).expect("the fixture applies");
        }
        ledger
    };
    vec![opened(t.from, 0), opened(t.to, 1)]
}

#[test]
fn the_scan_finds_duplicates_and_hanging_tries() {
    let t = remote("t1");
    let records = [
        record(1, Event::CreditTryNotSeen { key: t.key() }),
        record(2, Event::CreditTried { transfer: t }),
        record(3, Event::CreditConfirmed { key: t.key() }),
        record(4, Event::CreditConfirmed { key: t.key() }),
    ];
    let found = scan_log(1, PARTITIONS, &records);
    assert!(
        matches!(
            found.as_slice(),
            [
                Violation::Hanging { lsn: 2, .. },
                Violation::ExactlyOnce { lsn: 4, .. }
            ]
        ),
        "{found:?}"
    );
    assert_eq!(found[0].invariant(), Invariant::NoHanging);
    assert_eq!(found[1].invariant(), Invariant::ExactlyOnce);
    let home = [record(1, Event::DebitTried { transfer: t })];
    let misplaced = scan_log(1, PARTITIONS, &home);
    assert!(
        matches!(misplaced.as_slice(), [Violation::Misplaced { .. }]),
        "{misplaced:?}"
    );
    assert_eq!(misplaced[0].invariant(), Invariant::Replay);
}

#[test]
fn home_and_destination_states_that_may_coexist() {
    use CreditState as C;
    assert!(sides_agree(TransferState::Committed, Some(C::Confirmed)));
    // Committed at the commit point, the Confirm on its way; not yet at rest.
    assert!(sides_agree(TransferState::Committed, Some(C::Tried)));
    assert!(!sides_settled(TransferState::Committed, Some(C::Tried)));
    assert!(!sides_agree(TransferState::Committed, Some(C::TryNotSeen)));
    assert!(sides_agree(TransferState::Confirming, Some(C::Tried)));
    assert!(!sides_settled(
        TransferState::Confirming,
        Some(C::Confirmed)
    ));
    let cancelled = TransferState::Cancelled(Reason::Timeout);
    assert!(sides_settled(cancelled, Some(C::TryNotSeen)));
    assert!(!sides_agree(cancelled, Some(C::Confirmed)));
    assert!(!sides_agree(cancelled, None));
    assert!(sides_agree(TransferState::Trying, None));
    // A refused retry of a transfer whose earlier debit its home lost: the credit of the
    // earlier Try waits for the Cancel, and is never confirmed.
    let refused = TransferState::Rejected(Reason::InsufficientFunds);
    assert!(sides_agree(refused, Some(C::Tried)));
    assert!(!sides_settled(refused, Some(C::Tried)));
    assert!(!sides_agree(refused, Some(C::Confirmed)));
    // The commit point: a decided cancel never stands beside a tried credit.
    let cancelling = TransferState::Cancelling(Reason::Timeout);
    assert!(!sides_agree(cancelling, Some(C::Tried)));
    assert!(sides_agree(cancelling, Some(C::TryNotSeen)));
    assert!(sides_agree(TransferState::Trying, Some(C::TryNotSeen)));
}

/// The phases of a committed transfer, in protocol order, as (home, destination) events.
fn phases(t: &Transfer) -> [(Option<Event>, Option<Event>); 5] {
    let key = t.key();
    [
        (Some(Event::DebitTried { transfer: *t }), None),
        (None, Some(Event::CreditTried { transfer: *t })),
        (
            Some(Event::TransferDecided {
                key,
                decision: Decision::Confirm,
            }),
            None,
        ),
        (None, Some(Event::CreditConfirmed { key })),
        (Some(Event::DebitConfirmed { key }), None),
    ]
}

#[test]
fn conservation_holds_at_every_phase_of_a_transfer() {
    let t = remote("t1");
    let (mut home, mut destination) = (Vec::new(), Vec::new());
    for (step, (at_home, at_destination)) in phases(&t).into_iter().enumerate() {
        home.extend(at_home);
        destination.extend(at_destination);
        let ledgers = cluster(&t, &home, &destination);
        assert_eq!(conservation(&ledgers), Ok(()), "after phase {step}");
        let agreement = transfers_agree(&[Some(&ledgers[0]), Some(&ledgers[1])], Moment::Any);
        assert!(
            agreement.violations.is_empty(),
            "{:?}",
            agreement.violations
        );
    }
    let ledgers = cluster(&t, &home, &destination);
    let at_rest = transfers_agree(&[Some(&ledgers[0]), Some(&ledgers[1])], Moment::AtRest);
    assert!(at_rest.violations.is_empty(), "{:?}", at_rest.violations);
    assert_eq!(at_rest.checked, 1);
}

#[test]
fn a_credit_confirmed_without_its_hold_creates_money() {
    let t = remote("t1");
    let destination = [
        Event::CreditTried { transfer: t },
        Event::CreditConfirmed { key: t.key() },
    ];
    let ledgers = cluster(&t, &[], &destination);
    let found = conservation(&ledgers);
    assert!(
        matches!(
            found,
            Err(Violation::Conservation {
                have: 300,
                expected: 200,
                ..
            })
        ),
        "{found:?}"
    );
    let at_rest = transfers_agree(&[Some(&ledgers[0]), Some(&ledgers[1])], Moment::Any);
    assert!(
        matches!(
            at_rest.violations.as_slice(),
            [Violation::Sides { home: None, .. }]
        ),
        "{:?}",
        at_rest.violations
    );
}

#[test]
fn an_acknowledged_outcome_must_be_the_logged_one() {
    let t = remote("t1");
    let ledgers = cluster(&t, &[Event::DebitTried { transfer: t }], &[]);
    let row = ledgers[0].transfer(&t.key());
    assert_eq!(acknowledged(&t, TransferStatus::Pending, row), Ok(()));
    let broken = acknowledged(&t, TransferStatus::Committed, row).unwrap_err();
    assert_eq!(broken.invariant(), Invariant::Durability);
    assert!(acknowledged(&t, TransferStatus::Pending, None).is_err());
    let mut other = t;
    other.amount = crate::protocol::tests::support::amt(7);
    assert!(acknowledged(&other, TransferStatus::Pending, row).is_err());
}

#[test]
fn a_second_phase_message_needs_a_durable_decision() {
    let t = remote("t1");
    let confirm = [PeerMessage::Request {
        from: 0,
        request: PhaseRequest {
            phase: Phase::Confirm,
            transfer: t,
        },
    }];
    let trying = cluster(&t, &[Event::DebitTried { transfer: t }], &[]);
    let missing = decisions_logged(&trying[0], &confirm).unwrap_err();
    assert_eq!(missing.invariant(), Invariant::DurableDecision);
    let decided = [
        Event::DebitTried { transfer: t },
        Event::TransferDecided {
            key: t.key(),
            decision: Decision::Confirm,
        },
    ];
    let confirming = cluster(&t, &decided, &[]);
    assert_eq!(decisions_logged(&confirming[0], &confirm), Ok(()));
    assert_eq!(released_durably(0, 4, 4, &confirm, 1), Ok(()));
    let early = released_durably(0, 4, 3, &confirm, 1).unwrap_err();
    assert_eq!(early.invariant(), Invariant::DurableDecision);
    let early = released_durably(0, 4, 3, &[], 1).unwrap_err();
    assert_eq!(early.invariant(), Invariant::Durability);
    assert_eq!(released_durably(0, 4, 3, &[], 0), Ok(()));
}

/// Refund `id` from `t`'s destination back to its source, of `minor`.
fn refund_of(t: &Transfer, minor: u64, id: &str, accepted: bool) -> Event {
    let refund = transfer(t.to, t.from, minor, USD, id);
    let original = t.transaction_id;
    if accepted {
        Event::RefundAccepted {
            refund,
            original,
            remote: true,
        }
    } else {
        Event::RefundRejected {
            refund,
            original,
            reason: Reason::RefundExceedsOriginal,
        }
    }
}

#[test]
fn the_refund_scan_holds_refunds_to_their_confirmed_original() {
    let t = remote("t1");
    let refund_cap = |records: &[Record]| -> Vec<String> {
        let found = scan_refunds(1, records);
        assert!(found.iter().all(|v| v.invariant() == Invariant::RefundCap));
        found.iter().map(|v| v.to_string()).collect()
    };
    let tried = record(1, Event::CreditTried { transfer: t });
    let confirmed = record(2, Event::CreditConfirmed { key: t.key() });
    // A credit only tried is not refundable.
    let early = [tried.clone(), record(2, refund_of(&t, 10, "r1", true))];
    assert!(refund_cap(&early)[0].contains("not a transfer committed"));
    // Refunds within the amount, a refusal, and a cancelled refund that no longer counts.
    let r1 = transfer(t.to, t.from, 60, USD, "r1").key();
    let fine = [
        tried.clone(),
        confirmed.clone(),
        record(3, refund_of(&t, 60, "r1", true)),
        record(4, refund_of(&t, 50, "r2", false)),
        record(5, Event::DebitCancelled { key: r1 }),
        record(6, refund_of(&t, 100, "r3", true)),
    ];
    assert_eq!(refund_cap(&fine), Vec::<String>::new());
    // Two refunds beyond the amount (a refused one does not count).
    let beyond = [
        tried,
        confirmed,
        record(3, refund_of(&t, 60, "r1", true)),
        record(4, refund_of(&t, 60, "r2", false)),
        record(5, refund_of(&t, 41, "r3", true)),
    ];
    let found = refund_cap(&beyond);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("lsn 5") && found[0].contains("101"),
        "{found:?}"
    );
}

#[test]
fn every_invariant_has_a_distinct_name() {
    let names: std::collections::BTreeSet<&str> = Invariant::ALL.iter().map(|i| i.name()).collect();
    assert_eq!(names.len(), Invariant::ALL.len());
}
