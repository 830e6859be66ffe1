//! The TC/C coordinator: first alone, feeding it inputs by hand and reading its outputs, then
//! inside a [`Cluster`] of four partitions with a fake clock and a lossy network.

use crate::ledger::{Command, CreditState, PhaseResult, Reply, TransferState, TransferStatus};
use crate::model::event::{Decision, Event, Reason, Transfer};
use crate::model::ids::AccountId;
use crate::model::money::Currency::{EUR, USD};
use crate::protocol::coordinator::{
    Coordinator, Micros, Output, Phase, PhaseRequest, PhaseResponse,
};

use super::checks::{check_quiescent, Violation};
use super::cluster::{Cluster, Message};
use super::support::{account_on, deposit, open, transfer, CONFIG};

const PARTITIONS: u32 = 4;
/// What the fixture deposits into `src`.
const FUNDS: u64 = 10_000;
/// Bound on the steps a healed cluster needs to go idle in these tests.
const SETTLE_STEPS_MAX: usize = 1_000;
/// The clock step of tests that poll the coordinator as time passes.
const TICK_US: Micros = 10_000;

struct Accounts {
    /// USD on partition 0, funded.
    src: AccountId,
    /// USD on partition 1.
    dst: AccountId,
    /// EUR on partition 2.
    eur: AccountId,
    /// On partition 3, never opened.
    missing: AccountId,
}

fn cluster() -> (Cluster, Accounts) {
    let w = Accounts {
        src: account_on("src", 0, PARTITIONS, 0),
        dst: account_on("dst", 1, PARTITIONS, 0),
        eur: account_on("eur", 2, PARTITIONS, 0),
        missing: account_on("missing", 3, PARTITIONS, 0),
    };
    let mut cluster = Cluster::new(PARTITIONS, CONFIG);
    for command in [
        open(w.src, USD),
        deposit(w.src, FUNDS, USD, "d0"),
        open(w.dst, USD),
        open(w.eur, EUR),
    ] {
        cluster.client(command).expect("fixture commands apply");
    }
    (cluster, w)
}

fn outputs(coordinator: &mut Coordinator) -> Vec<Output> {
    std::iter::from_fn(|| coordinator.poll_output()).collect()
}

fn send(phase: Phase, transfer: Transfer) -> Output {
    Output::Send {
        partition: 1,
        request: PhaseRequest { phase, transfer },
    }
}

fn response(phase: Phase, transfer: &Transfer, result: PhaseResult) -> PhaseResponse {
    PhaseResponse {
        phase,
        key: transfer.key(),
        result,
    }
}

/// A transfer from partition 0 to partition 1, for tests of a lone coordinator.
fn lone_transfer() -> Transfer {
    let from = account_on("src", 0, PARTITIONS, 0);
    let to = account_on("dst", 1, PARTITIONS, 0);
    transfer(from, to, 2_500, USD, "t1")
}

/// Times at which `phase` requests left, in order.
fn sent_at(cluster: &Cluster, phase: Phase) -> Vec<Micros> {
    cluster
        .sent
        .iter()
        .filter(|s| s.request.phase == phase)
        .map(|s| s.at)
        .collect()
}

fn home_state(cluster: &Cluster, t: &Transfer) -> TransferState {
    cluster.ledger_of(&t.from).transfer(&t.key()).unwrap().state
}

fn credit_state(cluster: &Cluster, t: &Transfer) -> Option<CreditState> {
    cluster.ledger_of(&t.to).credit(&t.key()).map(|c| c.state)
}

fn balance(cluster: &Cluster, account: &AccountId) -> u64 {
    cluster.ledger_of(account).account(account).unwrap().balance
}

// ---------------------------------------------------------------------------------------------
// A lone coordinator.

#[test]
fn committed_on_the_destinations_tried_and_finished_at_once() {
    let t = lone_transfer();
    let key = t.key();
    let mut c = Coordinator::new(CONFIG, PARTITIONS);
    c.on_event(&Event::DebitTried { transfer: t }, 1, 0);
    assert_eq!(outputs(&mut c), [send(Phase::Try, t)]);
    c.on_response(&response(Phase::Try, &t, PhaseResult::Tried), 10);
    assert_eq!(
        outputs(&mut c),
        [
            Output::Committed {
                transfer: t,
                debit_lsn: 1
            },
            Output::Execute(Command::CommitDebit { key })
        ],
        "committed on the destination's Tried (the caller sends the Confirm), then finished"
    );
    assert_eq!(c.in_flight(), 1);
    c.on_event(&Event::DebitConfirmed { key }, 2, 20);
    assert_eq!(c.in_flight(), 0, "the flight ends with the commit's record");
    assert_eq!(c.next_due(), None);
    c.on_tick(10_000_000);
    assert_eq!(
        outputs(&mut c),
        [],
        "the Confirm is never resent by the home"
    );
}

#[test]
fn stale_and_duplicate_responses_are_ignored() {
    let t = lone_transfer();
    let key = t.key();
    let mut c = Coordinator::new(CONFIG, PARTITIONS);
    c.on_event(&Event::DebitTried { transfer: t }, 1, 0);
    let _ = outputs(&mut c);
    // Answers to phases it has not sent yet, and answers for transfers it does not drive.
    c.on_response(&response(Phase::Confirm, &t, PhaseResult::Confirmed), 1);
    c.on_response(&response(Phase::Cancel, &t, PhaseResult::Cancelled), 1);
    let other = transfer(t.from, t.to, 1, USD, "other");
    c.on_response(&response(Phase::Try, &other, PhaseResult::Tried), 1);
    assert_eq!(outputs(&mut c), []);
    // The first Try answer decides; a duplicate, or a contrary late one, does not.
    c.on_response(&response(Phase::Try, &t, PhaseResult::Tried), 2);
    assert_eq!(outputs(&mut c).len(), 2, "committed, and the commit to log");
    c.on_response(&response(Phase::Try, &t, PhaseResult::Tried), 3);
    let failed = PhaseResult::TryFailed(Reason::DestinationNotFound);
    c.on_response(&response(Phase::Try, &t, failed), 3);
    assert_eq!(outputs(&mut c), []);
    c.on_event(&Event::DebitConfirmed { key }, 2, 4);
    // After the flight: a late Tried, or a Confirm answered as decided, changes nothing.
    c.on_response(&response(Phase::Try, &t, PhaseResult::Tried), 5);
    c.on_response(&response(Phase::Confirm, &t, PhaseResult::Confirmed), 6);
    assert_eq!(outputs(&mut c), []);
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn a_destination_answering_against_the_decision_is_a_violation() {
    let t = lone_transfer();
    let key = t.key();
    for (decision, phase, contrary) in [
        (Decision::Confirm, Phase::Confirm, PhaseResult::Cancelled),
        (
            Decision::Cancel(Reason::Timeout),
            Phase::Cancel,
            PhaseResult::Confirmed,
        ),
    ] {
        let mut c = Coordinator::new(CONFIG, PARTITIONS);
        c.on_event(&Event::DebitTried { transfer: t }, 1, 0);
        c.on_event(&Event::TransferDecided { key, decision }, 1, 1);
        assert_eq!(outputs(&mut c), [send(Phase::Try, t), send(phase, t)]);
        c.on_response(&response(phase, &t, contrary), 2);
        let out = outputs(&mut c);
        assert!(
            matches!(out.as_slice(), [Output::Violation { key: k, .. }] if *k == key),
            "{decision:?} answered {contrary:?}: {out:?}"
        );
        // It never finishes on a contrary answer: the transfer stays in flight, parked.
        assert_eq!(c.in_flight(), 1);
        c.on_tick(CONFIG.retry_max_us * 10);
        assert_eq!(outputs(&mut c), [], "a violated transfer is not resent");
    }
}

#[test]
fn a_refused_phase_is_reported_once_and_not_resent() {
    let t = lone_transfer();
    let key = t.key();
    for (decision, phase) in [
        (Decision::Confirm, Phase::Confirm),
        (Decision::Cancel(Reason::Timeout), Phase::Cancel),
    ] {
        let mut c = Coordinator::new(CONFIG, PARTITIONS);
        c.on_event(&Event::DebitTried { transfer: t }, 1, 0);
        c.on_event(&Event::TransferDecided { key, decision }, 1, 1);
        assert_eq!(outputs(&mut c), [send(Phase::Try, t), send(phase, t)]);
        c.on_response(&response(phase, &t, PhaseResult::Refused), 2);
        let out = outputs(&mut c);
        assert!(
            matches!(out.as_slice(), [Output::Violation { key: k, detail }] if *k == key && detail.contains("refused")),
            "{out:?}"
        );
        c.on_tick(CONFIG.retry_max_us * 10);
        assert_eq!(outputs(&mut c), [], "a refused phase is not resent");
        // A restart rebuilds the transfer from its row and tries once more.
        assert_eq!(c.in_flight(), 1);
    }
}

#[test]
fn lost_decide_and_finish_commands_are_emitted_again() {
    let t = lone_transfer();
    let key = t.key();
    let mut c = Coordinator::new(CONFIG, PARTITIONS);
    c.on_event(&Event::DebitTried { transfer: t }, 1, 0);
    let _ = outputs(&mut c);
    let failed = PhaseResult::TryFailed(Reason::DestinationCurrencyMismatch);
    c.on_response(&response(Phase::Try, &t, failed), 0);
    let decide = Output::Execute(Command::Decide {
        key,
        decision: Decision::Cancel(Reason::DestinationCurrencyMismatch),
    });
    assert_eq!(outputs(&mut c), std::slice::from_ref(&decide));
    // The decision event never comes (its batch failed): the command is emitted again.
    c.on_tick(CONFIG.retry_initial_us - 1);
    assert_eq!(outputs(&mut c), []);
    c.on_tick(CONFIG.retry_initial_us);
    assert_eq!(outputs(&mut c), [decide]);
    c.on_event(
        &Event::TransferDecided {
            key,
            decision: Decision::Cancel(Reason::DestinationCurrencyMismatch),
        },
        1,
        200_000,
    );
    assert_eq!(outputs(&mut c), [send(Phase::Cancel, t)]);
    c.on_response(
        &response(Phase::Cancel, &t, PhaseResult::Cancelled),
        200_000,
    );
    let finish = Output::Execute(Command::FinishDebit { key });
    assert_eq!(outputs(&mut c), std::slice::from_ref(&finish));
    c.on_tick(200_000 + CONFIG.retry_initial_us);
    assert_eq!(outputs(&mut c), [finish]);
}

#[test]
fn next_due_is_the_earliest_timer_of_all_transfers() {
    let t1 = lone_transfer();
    let t2 = transfer(t1.from, t1.to, 1, USD, "t2");
    let mut c = Coordinator::new(CONFIG, PARTITIONS);
    assert_eq!(c.next_due(), None);
    c.on_event(&Event::DebitTried { transfer: t1 }, 1, 1_000);
    c.on_event(&Event::DebitTried { transfer: t2 }, 1, 50_000);
    assert_eq!(c.next_due(), Some(1_000 + CONFIG.retry_initial_us));
    c.on_response(&response(Phase::Try, &t1, PhaseResult::Tried), 2_000);
    assert_eq!(c.next_due(), Some(2_000 + CONFIG.retry_initial_us));
    c.on_event(&Event::DebitCancelled { key: t1.key() }, 1, 3_000);
    assert_eq!(c.next_due(), Some(50_000 + CONFIG.retry_initial_us));
    assert_eq!(c.in_flight(), 1);
}

// ---------------------------------------------------------------------------------------------
// Inside a cluster.

#[test]
fn happy_path_commits_on_both_sides() {
    let (mut cluster, w) = cluster();
    let t = transfer(w.src, w.dst, 2_500, USD, "t1");
    assert_eq!(
        cluster.client(Command::Transfer(t)),
        Ok(Reply::Transfer(TransferStatus::Pending))
    );
    assert!(cluster.settle(SETTLE_STEPS_MAX));
    let phases: Vec<Phase> = cluster.sent.iter().map(|s| s.request.phase).collect();
    assert_eq!(phases, [Phase::Try, Phase::Confirm]);
    let executed: Vec<Command> = cluster.executed.iter().map(|(_, c)| c.clone()).collect();
    assert_eq!(executed, [Command::CommitDebit { key: t.key() }]);
    // Debit first, then the destination's Try, the commit at home, then its Confirm.
    let order: Vec<&str> = cluster
        .history
        .iter()
        .filter_map(|a| match a.event {
            Event::DebitTried { .. } => Some("debit tried"),
            Event::CreditTried { .. } => Some("credit tried"),
            Event::TransferDecided { .. } => Some("decided"),
            Event::CreditConfirmed { .. } => Some("credit confirmed"),
            Event::DebitConfirmed { .. } => Some("debit confirmed"),
            _ => None,
        })
        .collect();
    assert_eq!(
        order,
        [
            "debit tried",
            "credit tried",
            "debit confirmed",
            "credit confirmed"
        ]
    );
    assert_eq!(home_state(&cluster, &t), TransferState::Committed);
    assert_eq!(credit_state(&cluster, &t), Some(CreditState::Confirmed));
    assert_eq!(balance(&cluster, &w.src), FUNDS - 2_500);
    assert_eq!(balance(&cluster, &w.dst), 2_500);
    assert_eq!(check_quiescent(&cluster), Ok(()));
    assert_eq!(
        cluster.client(Command::Transfer(t)),
        Ok(Reply::Transfer(TransferStatus::Committed))
    );
}

#[test]
fn a_failed_try_cancels_both_sides_and_refunds_the_source() {
    let (mut cluster, w) = cluster();
    let cases = [
        (w.missing, Reason::DestinationNotFound, "t1"),
        (w.eur, Reason::DestinationCurrencyMismatch, "t2"),
    ];
    for (to, reason, id) in cases {
        let t = transfer(w.src, to, 2_500, USD, id);
        cluster.client(Command::Transfer(t)).unwrap();
        assert!(cluster.settle(SETTLE_STEPS_MAX));
        assert_eq!(home_state(&cluster, &t), TransferState::Cancelled(reason));
        // The Try left nothing behind; the Cancel left the flag that fails a late Try.
        assert_eq!(credit_state(&cluster, &t), Some(CreditState::TryNotSeen));
        assert_eq!(
            cluster.client(Command::Transfer(t)),
            Ok(Reply::Transfer(TransferStatus::Cancelled(reason)))
        );
    }
    let phases: Vec<Phase> = cluster.sent.iter().map(|s| s.request.phase).collect();
    assert_eq!(
        phases,
        [Phase::Try, Phase::Cancel, Phase::Try, Phase::Cancel]
    );
    assert_eq!(balance(&cluster, &w.src), FUNDS);
    assert_eq!(check_quiescent(&cluster), Ok(()));
}

#[test]
fn an_unanswered_try_is_resent_then_aborted_at_the_timeout_and_cancelled_once_the_abort_lands() {
    let (mut cluster, w) = cluster();
    let t = transfer(w.src, w.dst, 2_500, USD, "t1");
    cluster.client(Command::Transfer(t)).unwrap();
    cluster.lose_all_until(TICK_US, CONFIG.try_timeout_us, |cluster| {
        !sent_at(cluster, Phase::Abort).is_empty()
    });
    // Resent with doubling intervals, the last one cut short by the deadline.
    assert_eq!(
        sent_at(&cluster, Phase::Try),
        [0, 100_000, 300_000, 700_000]
    );
    assert_eq!(sent_at(&cluster, Phase::Abort), [CONFIG.try_timeout_us]);
    assert!(
        !cluster
            .executed
            .iter()
            .any(|(_, c)| matches!(c, Command::Decide { .. })),
        "nothing is decided until the destination answers"
    );
    // The Abort is resent until it lands; then its answer decides.
    cluster.lose_all_until(TICK_US, 2 * CONFIG.retry_max_us, |cluster| {
        sent_at(cluster, Phase::Abort).len() >= 3
    });
    assert!(cluster.settle(SETTLE_STEPS_MAX));
    assert!(cluster.executed.iter().any(|(_, c)| *c
        == Command::Decide {
            key: t.key(),
            decision: Decision::Cancel(Reason::Timeout)
        }));
    assert_eq!(
        home_state(&cluster, &t),
        TransferState::Cancelled(Reason::Timeout)
    );
    assert_eq!(credit_state(&cluster, &t), Some(CreditState::TryNotSeen));
    assert_eq!(balance(&cluster, &w.src), FUNDS);
    assert_eq!(check_quiescent(&cluster), Ok(()));
}

#[test]
fn a_try_overtaken_by_its_cancel_fails_at_the_barrier() {
    let (mut cluster, w) = cluster();
    let t = transfer(w.src, w.dst, 2_500, USD, "t1");
    cluster.client(Command::Transfer(t)).unwrap();
    let late_try = cluster.drop_message(0);
    assert_eq!(late_try.phase(), Some(Phase::Try));
    cluster.lose_all_until(TICK_US, CONFIG.try_timeout_us, |cluster| {
        !sent_at(cluster, Phase::Abort).is_empty()
    });
    assert!(cluster.settle(SETTLE_STEPS_MAX));
    assert_eq!(
        home_state(&cluster, &t),
        TransferState::Cancelled(Reason::Timeout)
    );
    // The Try arrives after everything is over: the barrier fails it and records nothing.
    let events_before = cluster.history.len();
    cluster.network.push(late_try);
    cluster.deliver(0);
    assert_eq!(cluster.history.len(), events_before);
    assert!(matches!(
        cluster.network.as_slice(),
        [Message::Response { response, .. }]
            if response.result == PhaseResult::TryFailed(Reason::CancelledBeforeTry)
    ));
    assert!(cluster.settle(SETTLE_STEPS_MAX));
    assert_eq!(credit_state(&cluster, &t), Some(CreditState::TryNotSeen));
    assert_eq!(balance(&cluster, &w.dst), 0);
    assert_eq!(check_quiescent(&cluster), Ok(()));
}

#[test]
fn a_lost_confirm_is_asked_for_by_the_destination_until_it_lands() {
    let (mut cluster, w) = cluster();
    let t = transfer(w.src, w.dst, 2_500, USD, "t1");
    cluster.client(Command::Transfer(t)).unwrap();
    assert!(cluster.deliver_first(Message::is_request));
    assert!(cluster.deliver_first(|m| !m.is_request()));
    assert_eq!(home_state(&cluster, &t), TransferState::Committed);
    assert_eq!(cluster.coordinators[0].in_flight(), 0);
    // Every message is lost for three question intervals: the destination asks each time.
    let started = cluster.now;
    let questions = |cluster: &Cluster| {
        cluster
            .network
            .iter()
            .filter(|m| matches!(m, Message::Unresolved { .. }))
            .count()
    };
    let mut asked_at = Vec::new();
    while cluster.now < started + 3 * CONFIG.resolve_after_us {
        if questions(&cluster) > 0 {
            asked_at.push(cluster.now - started);
        }
        cluster.drop_all();
        cluster.advance(TICK_US);
    }
    let after = CONFIG.resolve_after_us;
    let first = asked_at.first().copied().expect("the destination asked");
    assert!(
        (after..after + 2 * TICK_US).contains(&first),
        "{asked_at:?}"
    );
    assert_eq!(
        asked_at.len(),
        2,
        "asked again at the interval: {asked_at:?}"
    );
    assert_eq!(credit_state(&cluster, &t), Some(CreditState::Tried));
    assert_eq!(
        balance(&cluster, &w.dst),
        0,
        "a pending credit is in no balance"
    );
    // Healed: the next question is answered with the Confirm, and nothing more is sent.
    assert!(cluster.settle(SETTLE_STEPS_MAX));
    assert_eq!(credit_state(&cluster, &t), Some(CreditState::Confirmed));
    assert_eq!(balance(&cluster, &w.dst), 2_500);
    let sent = cluster.sent.len();
    cluster.advance(60_000_000);
    assert_eq!(cluster.sent.len(), sent);
    assert!(cluster.network.is_empty());
    assert_eq!(check_quiescent(&cluster), Ok(()));
}

#[test]
fn a_restarted_home_partition_resumes_every_unfinished_state() {
    // Each case: how far to run before the crash, the state it leaves at home, the first
    // request the rebuilt coordinator sends, and the final state.
    struct Case {
        to_missing: bool,
        steps_before_crash: usize,
        before: TransferState,
        /// The first request the rebuilt coordinator sends (`None`: nothing is unfinished).
        resent: Option<Phase>,
        after: TransferState,
    }
    let cases = [
        Case {
            to_missing: false,
            steps_before_crash: 0,
            before: TransferState::Trying,
            resent: Some(Phase::Try),
            after: TransferState::Committed,
        },
        // Committed, its Confirm lost with the crash: the destination's question brings it.
        Case {
            to_missing: false,
            steps_before_crash: 2,
            before: TransferState::Committed,
            resent: None,
            after: TransferState::Committed,
        },
        Case {
            to_missing: true,
            steps_before_crash: 2,
            before: TransferState::Cancelling(Reason::DestinationNotFound),
            resent: Some(Phase::Cancel),
            after: TransferState::Cancelled(Reason::DestinationNotFound),
        },
    ];
    for case in cases {
        let (mut cluster, w) = cluster();
        let to = if case.to_missing { w.missing } else { w.dst };
        let t = transfer(w.src, to, 2_500, USD, "t1");
        cluster.client(Command::Transfer(t)).unwrap();
        for _ in 0..case.steps_before_crash {
            cluster.deliver(0);
        }
        assert_eq!(home_state(&cluster, &t), case.before);
        cluster.drop_all();
        let sent = cluster.sent.len();
        cluster.restart(0);
        let resent = cluster.sent.get(sent).map(|s| s.request.phase);
        assert_eq!(resent, case.resent);
        assert!(cluster.settle(SETTLE_STEPS_MAX));
        assert_eq!(home_state(&cluster, &t), case.after);
        assert_eq!(check_quiescent(&cluster), Ok(()));
    }
}

#[test]
fn a_confirm_decision_logged_by_an_older_build_commits_after_a_restart() {
    let (mut cluster, w) = cluster();
    let t = transfer(w.src, w.dst, 2_500, USD, "t1");
    cluster.client(Command::Transfer(t)).unwrap();
    cluster.deliver(0);
    // The Tried answer is lost, and the decision is logged as builds that waited for an
    // acknowledgement logged it.
    cluster.drop_all();
    let decide = Command::Decide {
        key: t.key(),
        decision: Decision::Confirm,
    };
    cluster.execute(0, &decide).unwrap();
    assert_eq!(home_state(&cluster, &t), TransferState::Confirming);
    cluster.drop_all();
    let sent = cluster.sent.len();
    cluster.restart(0);
    assert_eq!(cluster.sent[sent].request.phase, Phase::Confirm);
    assert_eq!(home_state(&cluster, &t), TransferState::Committed);
    assert!(cluster.settle(SETTLE_STEPS_MAX));
    assert_eq!(credit_state(&cluster, &t), Some(CreditState::Confirmed));
    assert_eq!(check_quiescent(&cluster), Ok(()));
}

#[test]
fn duplicated_messages_change_nothing() {
    let (mut cluster, w) = cluster();
    let transfers = [
        transfer(w.src, w.dst, 100, USD, "t1"),
        transfer(w.src, w.missing, 200, USD, "t2"),
        transfer(w.src, w.dst, 300, USD, "t3"),
    ];
    for t in transfers {
        cluster.client(Command::Transfer(t)).unwrap();
    }
    // Every message arrives three times, the copies interleaved with other messages.
    for _ in 0..SETTLE_STEPS_MAX {
        if cluster.network.is_empty() {
            break;
        }
        let last = cluster.network.len() - 1;
        cluster.duplicate(last);
        cluster.duplicate(0);
        cluster.deliver(0);
    }
    assert!(cluster.settle(SETTLE_STEPS_MAX));
    assert_eq!(
        home_state(&cluster, &transfers[0]),
        TransferState::Committed
    );
    assert_eq!(
        home_state(&cluster, &transfers[1]),
        TransferState::Cancelled(Reason::DestinationNotFound)
    );
    assert_eq!(
        home_state(&cluster, &transfers[2]),
        TransferState::Committed
    );
    assert_eq!(balance(&cluster, &w.dst), 400);
    assert_eq!(balance(&cluster, &w.src), FUNDS - 400);
    assert_eq!(check_quiescent(&cluster), Ok(()));
}

#[test]
fn the_cluster_records_a_contradicting_destination() {
    // A destination that answers a Confirm with "cancelled": the harness surfaces the
    // coordinator's Violation output, and the committed transfer stays committed.
    let (mut cluster, w) = cluster();
    let t = transfer(w.src, w.dst, 2_500, USD, "t1");
    cluster.client(Command::Transfer(t)).unwrap();
    cluster.deliver(0);
    cluster.deliver(0);
    assert_eq!(home_state(&cluster, &t), TransferState::Committed);
    cluster.drop_all();
    cluster.network.push(Message::Response {
        home: 0,
        response: response(Phase::Confirm, &t, PhaseResult::Cancelled),
    });
    cluster.deliver(0);
    assert!(matches!(
        cluster.violations.as_slice(),
        [Violation::Protocol { key: Some(key), .. }] if *key == t.key()
    ));
    assert_eq!(home_state(&cluster, &t), TransferState::Committed);
}

#[test]
fn a_try_whose_answers_are_all_lost_commits_through_its_abort() {
    let (mut cluster, w) = cluster();
    let t = transfer(w.src, w.dst, 2_500, USD, "t1");
    cluster.client(Command::Transfer(t)).unwrap();
    // Every request lands; every answer is lost, past the Try's deadline.
    let deadline = cluster.now + CONFIG.try_timeout_us + TICK_US;
    while cluster.now < deadline {
        while cluster.deliver_first(Message::is_request) {}
        cluster.network.retain(Message::is_request);
        cluster.advance(TICK_US);
    }
    assert_eq!(credit_state(&cluster, &t), Some(CreditState::Tried));
    assert!(
        !sent_at(&cluster, Phase::Abort).is_empty(),
        "the Try timed out"
    );
    assert!(
        cluster.committed.is_empty(),
        "no answer came back: nothing is known yet"
    );
    // The Abort lands and finds the credit tried: the transfer was committed all along.
    assert!(cluster.settle(SETTLE_STEPS_MAX));
    assert_eq!(cluster.committed, [t.key()]);
    assert_eq!(home_state(&cluster, &t), TransferState::Committed);
    assert_eq!(balance(&cluster, &w.dst), 2_500);
    assert_eq!(check_quiescent(&cluster), Ok(()));
}

#[test]
fn an_abort_that_lands_before_its_try_sets_the_flag_and_the_late_try_fails() {
    let (mut cluster, w) = cluster();
    let t = transfer(w.src, w.dst, 2_500, USD, "t1");
    cluster.client(Command::Transfer(t)).unwrap();
    let late_try = cluster.drop_message(0);
    cluster.lose_all_until(TICK_US, CONFIG.try_timeout_us, |cluster| {
        !sent_at(cluster, Phase::Abort).is_empty()
    });
    // The last Abort is on its way: it lands, then the first Try, long delayed.
    assert!(cluster.deliver_first(|m| m.is_request() && m.phase() == Some(Phase::Abort)));
    cluster.network.push(late_try);
    assert!(cluster.settle(SETTLE_STEPS_MAX));
    assert_eq!(credit_state(&cluster, &t), Some(CreditState::TryNotSeen));
    assert_eq!(
        home_state(&cluster, &t),
        TransferState::Cancelled(Reason::Timeout)
    );
    assert_eq!(balance(&cluster, &w.src), FUNDS, "the hold is back");
    assert!(cluster.committed.is_empty());
    assert_eq!(check_quiescent(&cluster), Ok(()));
}
