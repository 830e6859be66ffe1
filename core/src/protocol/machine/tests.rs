//! The partition machine driven step by step: a fake clock, a disk per partition that makes
//! a commit durable only when the test says so, and a wire the test delivers or drops.
//! Nothing here runs a runtime, so every interleaving is the test's choice.

use std::collections::{BTreeMap, VecDeque};

use super::*;
use crate::ledger::{Command, CreditState, LedgerError, PhaseResult, Reply, TransferStatus};
use crate::ledger::{PartState, TransferState};
use crate::log::codec::decode_log;
use crate::model::event::Reason;
use crate::model::event::TransferKey;
use crate::model::ids::AccountId;
use crate::model::ids::TransactionId;
use crate::model::money::Currency::USD;
use crate::model::transaction::{Leg, Transaction};
use crate::protocol::coordinator::{Phase, PhaseRequest};
use crate::protocol::tests::support::{account_on, deposit, key, open, transfer};

/// Tokens are numbers; each test picks them.
struct Numbers;

impl ReplyTokens for Numbers {
    type Command = u32;
    type Group = u32;
    type Query = u32;
}

/// The machines' configuration: background batches commit at once, so that a world
/// settles without time passing (`background_batches_wait_for_company` tests the delay).
fn config() -> MachineConfig {
    MachineConfig {
        background_delay_us: 0,
        ..MachineConfig::default()
    }
}

/// Steps a world runs before a test calls it stuck.
const STEPS_MAX: usize = 1_000;

struct Partition {
    machine: PartitionMachine<Numbers>,
    /// Bytes made durable, in order.
    durable: Vec<u8>,
    in_flight: Option<Commit<Numbers>>,
}

/// Partitions of one cluster, what their clients were answered, and the wire between them.
struct World {
    partitions: Vec<Partition>,
    now: Now,
    wire: VecDeque<PeerMessage>,
    replies: BTreeMap<u32, CommandResult>,
    groups: BTreeMap<u32, Vec<CommandResult>>,
    answers: BTreeMap<u32, QueryAnswer>,
    /// Phase requests are dropped instead of delivered (a destination cut off).
    drop_requests: bool,
    /// Phase responses are dropped instead of delivered (the way back cut off).
    drop_responses: bool,
    /// Questions about pending credits delivered so far.
    unresolved_delivered: usize,
}

impl World {
    fn new(partitions: u32) -> World {
        let now = Now {
            micros: 0,
            wall_us: 1_000_000,
        };
        let partitions = (0..partitions)
            .map(|p| Partition {
                machine: PartitionMachine::new(Ledger::new(p, partitions), config(), now),
                durable: Vec::new(),
                in_flight: None,
            })
            .collect();
        World {
            partitions,
            now,
            wire: VecDeque::new(),
            replies: BTreeMap::new(),
            groups: BTreeMap::new(),
            answers: BTreeMap::new(),
            drop_requests: false,
            drop_responses: false,
            unresolved_delivered: 0,
        }
    }

    fn machine(&mut self, p: PartitionId) -> &mut PartitionMachine<Numbers> {
        &mut self.partitions[p as usize].machine
    }

    fn command(&mut self, p: PartitionId, token: u32, command: Command, wait: bool) {
        let now = self.now;
        self.machine(p).handle_command(now, token, &command, wait);
    }

    /// Hands out partition `p`'s next commit, if any; one without bytes is released at once.
    /// Returns whether anything happened.
    fn commit(&mut self, p: PartitionId) -> bool {
        let partition = &mut self.partitions[p as usize];
        if partition.in_flight.is_some() {
            assert!(
                partition.machine.poll_commit().is_none(),
                "one commit at a time"
            );
            return false;
        }
        let Some(commit) = partition.machine.poll_commit() else {
            return false;
        };
        if commit.bytes.is_empty() {
            self.release(commit.release);
        } else {
            self.partitions[p as usize].in_flight = Some(commit);
        }
        true
    }

    /// Sends what partition `p` may send at once (Tries, answers resting on durable records).
    fn ready(&mut self, p: PartitionId) -> bool {
        match self.machine(p).poll_ready() {
            Some(release) => {
                self.release(release);
                true
            }
            None => false,
        }
    }

    /// Partition `p` loses its power: it starts again from the bytes it made durable, and
    /// whatever it had not is gone (its commit in flight included).
    fn power_loss(&mut self, p: PartitionId) {
        let count = self.partitions.len() as u32;
        let decoded = decode_log(&self.partitions[p as usize].durable, 1).expect("log decodes");
        let mut ledger = Ledger::new(p, count);
        for record in decoded.records {
            let meta = crate::ledger::RecordMeta {
                lsn: record.lsn,
                timestamp: record.timestamp,
            };
            ledger
                .apply(meta, &record.event)
                .expect("a durable log replays");
        }
        let partition = &mut self.partitions[p as usize];
        partition.in_flight = None;
        partition.machine = PartitionMachine::new(ledger, config(), self.now);
    }

    /// Makes partition `p`'s commit in flight durable and releases what waited for it.
    fn sync(&mut self, p: PartitionId) -> bool {
        let partition = &mut self.partitions[p as usize];
        let Some(commit) = partition.in_flight.take() else {
            return false;
        };
        partition.durable.extend_from_slice(&commit.bytes);
        partition
            .machine
            .handle_durable(commit.last_lsn, commit.bytes);
        if commit.snapshot.is_some() {
            partition.machine.handle_snapshot_written(Err(()));
        }
        self.release(commit.release);
        true
    }

    fn release(&mut self, release: Release<Numbers>) {
        self.wire.extend(release.peer_messages);
        for (token, result) in release.replies {
            assert!(
                self.replies.insert(token, result).is_none(),
                "one answer per token"
            );
        }
        for (token, results) in release.groups {
            assert!(
                self.groups.insert(token, results).is_none(),
                "one answer per token"
            );
        }
        for (token, answer) in release.answers {
            assert!(
                self.answers.insert(token, answer).is_none(),
                "one answer per token"
            );
        }
    }

    /// Delivers (or drops) every message on the wire. Returns whether there was any.
    fn deliver(&mut self) -> bool {
        let count = self.partitions.len() as u32;
        let delivered = !self.wire.is_empty();
        while let Some(message) = self.wire.pop_front() {
            if self.drop_requests && matches!(message, PeerMessage::Request { .. }) {
                continue;
            }
            if self.drop_responses && matches!(message, PeerMessage::Response(_)) {
                continue;
            }
            if matches!(message, PeerMessage::Unresolved { .. }) {
                self.unresolved_delivered += 1;
            }
            let now = self.now;
            let p = message.destination(count);
            self.machine(p).handle_peer(now, message);
        }
        delivered
    }

    /// Commits, syncs and delivers until nothing moves, without letting time pass.
    fn settle(&mut self) {
        for _ in 0..STEPS_MAX {
            let mut moved = false;
            for p in 0..self.partitions.len() as PartitionId {
                moved |= self.ready(p);
                moved |= self.commit(p);
                moved |= self.sync(p);
                moved |= self.ready(p);
            }
            moved |= self.deliver();
            if !moved {
                return;
            }
        }
        panic!("the world did not settle in {STEPS_MAX} steps");
    }

    /// Lets `micros` pass, ticking every machine, then settles.
    fn advance(&mut self, micros: u64) {
        self.now.micros += micros;
        self.now.wall_us += micros;
        let now = self.now;
        for partition in &mut self.partitions {
            partition.machine.handle_tick(now);
        }
        self.settle();
    }

    fn balance(&self, p: PartitionId, account: &AccountId) -> u64 {
        let ledger = self.partitions[p as usize].machine.ledger();
        ledger.account(account).expect("account is open").balance
    }

    /// The events partition `p` made durable.
    fn durable_events(&self, p: PartitionId) -> Vec<Event> {
        let decoded = decode_log(&self.partitions[p as usize].durable, 1).expect("log decodes");
        decoded.records.into_iter().map(|r| r.event).collect()
    }
}

/// Two partitions; `alice` on 0 holds 100 USD, `bob` on 1 holds nothing.
fn alice_and_bob() -> (World, AccountId, AccountId) {
    let mut world = World::new(2);
    let alice = account_on("alice", 0, 2, 0);
    let bob = account_on("bob", 1, 2, 0);
    world.command(0, 1, open(alice, USD), false);
    world.command(0, 2, deposit(alice, 100, USD, "d-1"), false);
    world.command(1, 3, open(bob, USD), false);
    world.settle();
    world.replies.clear();
    (world, alice, bob)
}

#[test]
fn an_answer_leaves_only_with_its_durable_commit() {
    let mut world = World::new(1);
    let alice = account_on("alice", 0, 1, 0);
    world.command(0, 1, open(alice, USD), false);
    assert!(world.commit(0));
    assert!(
        world.replies.is_empty(),
        "handed out, not durable: no answer yet"
    );
    // A second command joins the next batch, which waits for the first to be durable.
    world.command(0, 2, deposit(alice, 5, USD, "d-1"), false);
    assert!(!world.commit(0), "one commit in flight at a time");
    assert!(world.sync(0));
    assert_eq!(world.replies.keys().copied().collect::<Vec<_>>(), [1]);
    assert!(world.commit(0) && world.sync(0));
    assert_eq!(world.replies.len(), 2);
    assert_eq!(
        world.durable_events(0).len(),
        2,
        "both records are in the synced bytes"
    );
}

#[test]
fn a_query_answers_from_the_state_its_batch_leaves_and_leaves_with_it() {
    let mut world = World::new(1);
    let alice = account_on("alice", 0, 1, 0);
    world.command(0, 1, open(alice, USD), false);
    world.command(0, 2, deposit(alice, 7, USD, "d-1"), false);
    world.machine(0).handle_query(3, Query::Account(alice));
    assert!(world.commit(0));
    assert!(
        world.answers.is_empty(),
        "the answer shows a deposit that is not yet durable"
    );
    world.sync(0);
    let QueryAnswer::Account(Some(account)) = world.answers[&3] else {
        panic!("the account is open: {:?}", world.answers[&3]);
    };
    assert_eq!(account.balance, 7);
}

#[test]
fn a_transfer_body_is_answered_at_once_only_once_its_record_is_durable() {
    let mut world = World::new(1);
    let alice = account_on("alice", 0, 1, 0);
    let bob = account_on("bob", 0, 1, 1);
    world.command(0, 1, open(alice, USD), false);
    world.command(0, 2, open(bob, USD), false);
    world.command(0, 3, deposit(alice, 50, USD, "d-1"), false);
    let first = transfer(alice, bob, 5, USD, "t-1");
    world.command(0, 4, Command::Transfer(first), false);
    // In the open batch: the body waits for it, as every answer does.
    world
        .machine(0)
        .handle_query(10, Query::TransferBody(first.key()));
    assert!(!world.ready(0) && world.answers.is_empty());
    assert!(world.commit(0));
    // In the commit in flight: still not durable.
    world
        .machine(0)
        .handle_query(11, Query::TransferBody(first.key()));
    assert!(!world.ready(0) && world.answers.is_empty());
    assert!(world.sync(0));
    assert!(matches!(world.answers[&10], QueryAnswer::TransferBody(Some(body)) if body == first));
    // Durable now: answered at once, beside a batch that holds a later transfer.
    let second = transfer(alice, bob, 7, USD, "t-2");
    world.command(0, 5, Command::Transfer(second), false);
    world
        .machine(0)
        .handle_query(12, Query::TransferBody(first.key()));
    assert!(world.ready(0), "the durable body leaves at once");
    assert!(matches!(world.answers[&12], QueryAnswer::TransferBody(Some(body)) if body == first));
    assert!(
        !world.answers.contains_key(&11),
        "the in-flight read waits for its batch"
    );
    world
        .machine(0)
        .handle_query(13, Query::TransferBody(second.key()));
    world
        .machine(0)
        .handle_query(14, Query::TransferBody(key(bob, "t-9")));
    assert!(
        !world.ready(0),
        "a body not durable, or none, waits for the open batch"
    );
    world.settle();
    assert!(matches!(world.answers[&11], QueryAnswer::TransferBody(Some(body)) if body == first));
    assert!(matches!(world.answers[&13], QueryAnswer::TransferBody(Some(body)) if body == second));
    assert!(matches!(
        world.answers[&14],
        QueryAnswer::TransferBody(None)
    ));
}

#[test]
fn a_cross_partition_transfer_commits_in_one_durable_round() {
    let (mut world, alice, bob) = alice_and_bob();
    world.command(
        0,
        10,
        Command::Transfer(transfer(alice, bob, 30, USD, "t-1")),
        true,
    );
    // The debit is applied first, and its batch handed out; the Try leaves at once, while
    // that batch syncs.
    assert!(world.commit(0));
    assert!(world.ready(0));
    let PeerMessage::Request { request, .. } = world.wire[0] else {
        panic!("a Try beside the debit's sync: {:?}", world.wire);
    };
    assert_eq!(request.phase, Phase::Try);
    assert_eq!(world.balance(0, &alice), 70, "the debit came first");
    // The destination tries, durably, and answers.
    world.deliver();
    assert!(world.commit(1) && world.sync(1));
    world.deliver();
    assert!(
        !world.ready(0) && world.replies.is_empty(),
        "the destination is durable, the home's debit is not yet: no answer"
    );
    // The debit becomes durable: both sides are, so the transfer is committed, and the
    // client hears it without waiting for the decision record.
    assert!(world.sync(0));
    assert!(world.ready(0));
    assert_eq!(
        world.replies[&10],
        Ok(Reply::Transfer(TransferStatus::Committed))
    );
    let decided = world
        .durable_events(0)
        .iter()
        .any(|e| matches!(e, Event::TransferDecided { .. }));
    assert!(
        !decided,
        "the decision record is history, logged afterwards"
    );
    world.settle();
    assert_eq!(world.balance(0, &alice), 70);
    assert_eq!(world.balance(1, &bob), 30);
    assert_eq!(world.machine(0).in_flight(), 0, "the transfer finished");
}

#[test]
fn a_try_that_never_arrives_is_aborted_and_the_hold_returned_once_the_destination_says_so() {
    let (mut world, alice, bob) = alice_and_bob();
    world.drop_requests = true;
    world.command(
        0,
        10,
        Command::Transfer(transfer(alice, bob, 30, USD, "t-1")),
        true,
    );
    world.settle();
    assert_eq!(world.balance(0, &alice), 70, "the hold is taken first");
    let timeout_us = MachineConfig::default().coordinator.try_timeout_us;
    let step_us = MachineConfig::default().coordinator.retry_initial_us;
    for _ in 0..(timeout_us / step_us + 2) {
        world.advance(step_us);
    }
    // The Abort is a request too, and is dropped: the destination is cut off. The home
    // cannot know whether the destination tried, so it decides nothing.
    assert!(world.replies.is_empty(), "{:?}", world.replies);
    assert_eq!(world.balance(0, &alice), 70, "still held");
    world.drop_requests = false;
    world.advance(MachineConfig::default().coordinator.retry_max_us);
    assert!(
        matches!(
            world.replies[&10],
            Ok(Reply::Transfer(TransferStatus::Cancelled(Reason::Timeout)))
        ),
        "{:?}",
        world.replies[&10]
    );
    world.advance(MachineConfig::default().coordinator.retry_max_us);
    assert_eq!(world.balance(0, &alice), 100, "the hold is returned");
    let credit = world.partitions[1]
        .machine
        .ledger()
        .credit(&key(alice, "t-1"));
    assert_eq!(
        credit.map(|c| c.state),
        Some(CreditState::TryNotSeen),
        "the Abort set the flag that fails a late Try"
    );
    assert_eq!(world.machine(0).in_flight(), 0);
}

#[test]
fn a_try_whose_answer_is_lost_commits_when_the_abort_finds_it_tried() {
    let (mut world, alice, bob) = alice_and_bob();
    world.drop_responses = true;
    world.command(
        0,
        10,
        Command::Transfer(transfer(alice, bob, 30, USD, "t-1")),
        true,
    );
    world.settle();
    let timeout_us = MachineConfig::default().coordinator.try_timeout_us;
    let step_us = MachineConfig::default().coordinator.retry_initial_us;
    for _ in 0..(timeout_us / step_us + 2) {
        world.advance(step_us);
    }
    assert!(world.replies.is_empty(), "no answer came back yet");
    world.drop_responses = false;
    world.advance(MachineConfig::default().coordinator.retry_max_us);
    assert_eq!(
        world.replies[&10],
        Ok(Reply::Transfer(TransferStatus::Committed)),
        "the credit was durable: the timeout does not take the transfer back"
    );
    world.advance(MachineConfig::default().coordinator.retry_max_us);
    assert_eq!(world.balance(1, &bob), 30);
}

#[test]
fn a_credit_whose_home_lost_the_debit_is_asked_about_and_cancelled_for_good() {
    let (mut world, alice, bob) = alice_and_bob();
    let sent = transfer(alice, bob, 30, USD, "t-1");
    world.command(0, 10, Command::Transfer(sent), true);
    // The Try leaves while the debit syncs; the destination makes its credit durable, and
    // the home loses its power before its sync completes.
    assert!(world.commit(0) && world.ready(0));
    world.deliver();
    assert!(world.commit(1) && world.sync(1));
    world.power_loss(0);
    world.wire.clear();
    assert!(world.machine(0).ledger().transfer(&sent.key()).is_none());
    assert_eq!(
        world.balance(0, &alice),
        100,
        "the debit is gone with the power"
    );
    // Once the credit is pending long enough, the destination asks; the home has no row,
    // so it records the transfer refused for good and cancels the credit.
    world.advance(MachineConfig::default().coordinator.resolve_after_us);
    let credit = world.partitions[1].machine.ledger().credit(&sent.key());
    assert_eq!(credit.map(|c| c.state), Some(CreditState::Cancelled));
    assert_eq!(world.balance(1, &bob), 0);
    // The client, who was told nothing, retries: one outcome for the id from now on.
    world.command(0, 11, Command::Transfer(sent), true);
    world.settle();
    assert_eq!(
        world.replies[&11],
        Ok(Reply::Transfer(TransferStatus::Rejected(Reason::Timeout)))
    );
    assert_eq!(world.balance(0, &alice), 100);
}

#[test]
fn a_group_is_answered_once_every_transfer_in_it_is_decided() {
    let (mut world, alice, bob) = alice_and_bob();
    let commands = vec![
        Command::Transfer(transfer(alice, bob, 10, USD, "t-1")),
        deposit(alice, 1, USD, "d-2"),
        Command::Transfer(transfer(alice, bob, 500, USD, "t-2")),
    ];
    let now = world.now;
    world
        .machine(0)
        .handle_commands(now, 20, &CommandGroup::all(commands), true);
    assert!(world.commit(0) && world.sync(0));
    assert!(
        world.groups.is_empty(),
        "the cross-partition transfer is not decided yet"
    );
    world.settle();
    let results = &world.groups[&20];
    assert_eq!(results[0], Ok(Reply::Transfer(TransferStatus::Committed)));
    assert!(results[1].is_ok());
    assert!(
        matches!(results[2], Ok(Reply::Transfer(TransferStatus::Rejected(_)))),
        "more than the balance: {:?}",
        results[2]
    );
}

#[test]
fn a_destination_answers_a_phase_request_with_the_batch_that_logs_it() {
    let (mut world, alice, bob) = alice_and_bob();
    let request = PhaseRequest {
        phase: Phase::Try,
        transfer: transfer(alice, bob, 5, USD, "t-1"),
    };
    let now = world.now;
    world
        .machine(1)
        .handle_peer(now, PeerMessage::Request { from: 0, request });
    assert!(world.commit(1));
    assert!(
        world.wire.is_empty(),
        "the answer waits for the pending credit to be durable"
    );
    world.sync(1);
    let PeerMessage::Response(response) = world.wire[0] else {
        panic!("a response: {:?}", world.wire);
    };
    assert_eq!(response.result, PhaseResult::Tried);
}

#[test]
fn a_recovered_machine_resumes_its_unfinished_transfers_at_once() {
    let (mut world, alice, bob) = alice_and_bob();
    world.drop_requests = true;
    world.command(
        0,
        10,
        Command::Transfer(transfer(alice, bob, 30, USD, "t-1")),
        false,
    );
    world.settle();
    world.wire.clear();
    // A restart: the home's ledger, as recovered, in a new machine.
    let ledger = world.partitions[0].machine.ledger().clone();
    let now = world.now;
    let mut restarted = PartitionMachine::<Numbers>::new(ledger, MachineConfig::default(), now);
    let ready = restarted
        .poll_ready()
        .expect("the resend of the Try is due at once");
    assert!(restarted.poll_commit().is_none(), "a resend logs nothing");
    assert!(matches!(
        ready.peer_messages[..],
        [PeerMessage::Request { .. }]
    ));
}

#[test]
fn a_phase_request_the_destination_cannot_take_is_answered_refused() {
    let (mut world, alice, bob) = alice_and_bob();
    // A Confirm for a Try the destination never recorded: only a lost disk makes one.
    let request = PhaseRequest {
        phase: Phase::Confirm,
        transfer: transfer(alice, bob, 5, USD, "t-1"),
    };
    let now = world.now;
    world
        .machine(1)
        .handle_peer(now, PeerMessage::Request { from: 0, request });
    assert!(world.commit(1), "the answer leaves with a batch");
    let PeerMessage::Response(response) = world.wire[0] else {
        panic!("a response: {:?}", world.wire);
    };
    assert_eq!(response.result, PhaseResult::Refused);
    assert!(
        world.durable_events(1).len() == 1,
        "nothing but bob's opening is logged"
    );
}

#[test]
fn background_batches_wait_for_company_up_to_their_delay() {
    let (mut world, alice, bob) = alice_and_bob();
    let delay_us = 2_000;
    for p in 0..2 {
        let ledger = world.partitions[p].machine.ledger().clone();
        let config = MachineConfig {
            background_delay_us: delay_us,
            ..config()
        };
        world.partitions[p].machine = PartitionMachine::new(ledger, config, world.now);
    }
    world.command(
        0,
        10,
        Command::Transfer(transfer(alice, bob, 30, USD, "t-1")),
        true,
    );
    // The debit and the credit are waited on: each commits at once.
    world.settle();
    assert_eq!(
        world.replies[&10],
        Ok(Reply::Transfer(TransferStatus::Committed))
    );
    // What is left (the home's decision, the destination's confirmed credit, then the
    // acknowledgement and the finish) is background work: nothing commits it yet.
    assert!(world.partitions[0].machine.has_open_batch());
    assert!(world.partitions[1].machine.has_open_batch());
    assert_eq!(world.balance(1, &bob), 30, "applied, if not yet durable");
    let due = world.partitions[0].machine.poll_timeout();
    assert!(due.is_some_and(|due| due <= world.now.micros + delay_us));
    // A client command joins the open batch and takes it along at once.
    world.command(0, 11, deposit(alice, 1, USD, "d-2"), false);
    assert!(world.commit(0), "a client waits: the batch commits now");
    assert!(world.sync(0) && world.replies.contains_key(&11));
    // Past the delay, the rest commits on its own.
    for _ in 0..4 {
        world.advance(delay_us);
    }
    assert!(!world.partitions[0].machine.has_open_batch());
    assert!(!world.partitions[1].machine.has_open_batch());
    assert_eq!(world.machine(0).in_flight(), 0, "the transfer finished");
    assert_eq!(world.machine(1).in_flight(), 0);
}

fn hold_of(from: AccountId, to: AccountId, minor: u64, id: &str, expires_in_us: u64) -> Command {
    Command::Hold(Box::new(crate::ledger::Hold {
        transfer: transfer(from, to, minor, USD, id),
        expires_in_us,
    }))
}

#[test]
fn a_hold_across_partitions_is_answered_held_and_its_capture_confirms_the_part() {
    let (mut world, alice, bob) = alice_and_bob();
    world.command(0, 10, hold_of(alice, bob, 30, "h-1", 60_000_000), true);
    world.settle();
    assert_eq!(
        world.replies[&10],
        Ok(Reply::Transfer(TransferStatus::Held)),
        "held once both sides are durable"
    );
    let bob_row = |world: &World| world.partitions[1].machine.ledger().account(&bob).copied();
    assert_eq!(
        bob_row(&world).map(|a| (a.balance, a.incoming)),
        Some((0, 30))
    );
    assert!(
        !world
            .durable_events(1)
            .iter()
            .any(|e| matches!(e, Event::CreditConfirmed { .. })),
        "no Confirm while the hold is held"
    );
    let h1 = key(alice, "h-1");
    world.command(
        0,
        11,
        Command::Capture {
            key: h1,
            amount: Some(crate::model::money::WrittenAmount::of(
                crate::protocol::tests::support::amt(12),
                USD,
            )),
        },
        false,
    );
    world.settle();
    // The answer carries what its client is shown of the hold: no read of its own.
    assert_eq!(
        world.replies[&11],
        Ok(Reply::HoldEnd(crate::ledger::HoldEnd {
            status: TransferStatus::Captured,
            to: bob,
            amount: crate::protocol::tests::support::amt(30),
            currency: USD,
            captured: Some(crate::protocol::tests::support::amt(12)),
        }))
    );
    assert_eq!(world.balance(0, &alice), 88, "the rest came back at once");
    assert_eq!(
        bob_row(&world).map(|a| (a.balance, a.incoming)),
        Some((12, 0))
    );
    assert!(world.durable_events(1).contains(&Event::CreditCaptured {
        key: h1,
        amount: crate::protocol::tests::support::amt(12)
    }));
}

#[test]
fn a_hold_expires_by_the_homes_clock_across_a_power_loss() {
    let (mut world, alice, bob) = alice_and_bob();
    world.command(0, 10, hold_of(alice, bob, 30, "h-1", 5_000_000), true);
    world.settle();
    assert_eq!(
        world.replies[&10],
        Ok(Reply::Transfer(TransferStatus::Held))
    );
    // The home restarts from its durable log: the hold's expiry is found again.
    world.power_loss(0);
    world.advance(4_000_000);
    assert_eq!(world.balance(0, &alice), 70, "not before its expiry");
    world.advance(1_000_000);
    assert_eq!(
        world.balance(0, &alice),
        100,
        "expired, and the cancel acknowledged"
    );
    let bob_row = world.partitions[1]
        .machine
        .ledger()
        .account(&bob)
        .copied()
        .unwrap();
    assert_eq!((bob_row.balance, bob_row.incoming), (0, 0));
    let h1 = key(alice, "h-1");
    world.command(
        0,
        11,
        Command::Capture {
            key: h1,
            amount: None,
        },
        false,
    );
    world.settle();
    assert_eq!(
        world.replies[&11].as_ref().map(Reply::transfer_status),
        Ok(Some(TransferStatus::Cancelled(Reason::HoldExpired)))
    );
    let ended = world
        .durable_events(0)
        .into_iter()
        .filter(|e| matches!(e, Event::HoldReleased { .. } | Event::HoldCaptured { .. }))
        .count();
    assert_eq!(ended, 1, "one outcome, recorded once");
}

#[test]
fn the_destination_of_a_held_hold_asks_about_it_once_and_again_when_it_expires() {
    let (mut world, alice, bob) = alice_and_bob();
    world.command(0, 10, hold_of(alice, bob, 30, "h-1", 60_000_000), true);
    world.settle();
    // Its credit stays pending: the destination asks once, is told the hold is held, and
    // leaves it alone until the expiry.
    for _ in 0..50 {
        world.advance(1_000_000);
    }
    assert_eq!(
        world.unresolved_delivered, 1,
        "asked once in 50 s, not every 5 s"
    );
    for _ in 0..20 {
        world.advance(1_000_000);
    }
    // Expired at 60 s by its home, the cancel carried: nothing is pending any more.
    let bob_row = world.partitions[1]
        .machine
        .ledger()
        .account(&bob)
        .copied()
        .unwrap();
    assert_eq!((bob_row.balance, bob_row.incoming), (0, 0));
    assert_eq!(world.balance(0, &alice), 100);
    assert_eq!(world.unresolved_delivered, 1);
}

#[test]
fn a_hold_across_partitions_captured_in_part_leaves_no_credit_pending() {
    let (mut world, alice, bob) = alice_and_bob();
    world.command(0, 10, hold_of(alice, bob, 30, "h-1", 1_000_000), true);
    world.settle();
    assert_eq!(
        world.replies[&10],
        Ok(Reply::Transfer(TransferStatus::Held))
    );
    assert_eq!(
        world.machine(1).in_flight(),
        1,
        "bob's credit waits for the hold's end"
    );
    let key = key(alice, "h-1");
    let amount = crate::model::money::Amount::from_minor(12).expect("in range");
    let amount = Some(crate::model::money::WrittenAmount::of(amount, USD));
    world.command(0, 11, Command::Capture { key, amount }, false);
    world.settle();
    assert_eq!(
        world.replies[&11].as_ref().map(Reply::transfer_status),
        Ok(Some(TransferStatus::Captured))
    );
    assert_eq!((world.balance(0, &alice), world.balance(1, &bob)), (88, 12));
    // The Confirm of a part is a credit confirmed: nothing is pending any more, so the
    // destination is idle (what a quiesce or a drain waits for).
    assert_eq!(world.machine(1).in_flight(), 0);
    assert_eq!(world.machine(0).in_flight(), 0);
}

#[test]
fn a_hold_across_partitions_refused_by_its_destination_is_no_longer_open() {
    let (mut world, alice, _) = alice_and_bob();
    let ghost = account_on("ghost", 1, 2, 0);
    world.command(0, 10, hold_of(alice, ghost, 30, "h-1", 1_000_000), true);
    world.settle();
    assert_eq!(
        world.replies[&10],
        Ok(Reply::Transfer(TransferStatus::Cancelled(
            Reason::DestinationNotFound
        )))
    );
    assert_eq!(world.balance(0, &alice), 100);
    // Cancelled before it was held: it counts no more against the partition's limit of
    // open holds, as after a restart (which rebuilds the open holds from the rows).
    assert_eq!(world.machine(0).ledger().open_holds(), 0);
    world.power_loss(0);
    assert_eq!(world.machine(0).ledger().open_holds(), 0);
}

#[test]
fn a_hold_across_partitions_is_answered_held_at_its_commit_point() {
    let (mut world, alice, bob) = alice_and_bob();
    world.command(0, 10, hold_of(alice, bob, 30, "h-1", 1_000_000), true);
    let key = key(alice, "h-1");
    // The debit's batch, the Try beside it, the destination's durable credit, the debit
    // durable: the commit point, one durable round after the hold came in.
    assert!(world.commit(0) && world.ready(0));
    world.deliver();
    assert!(world.commit(1) && world.sync(1));
    world.deliver();
    assert!(world.sync(0));
    world.ready(0);
    assert_eq!(
        world.replies[&10],
        Ok(Reply::Transfer(TransferStatus::Held)),
        "a hold is told held at its commit point, as a transfer is told committed"
    );
    // The record that it is held is not durable yet. A crash now takes it: the recovered
    // home has the hold still being placed, and answers its capture "ask again", never
    // "not held" (which a client told `held` must never hear).
    world.power_loss(0);
    let capture = Command::Capture { key, amount: None };
    world.command(0, 11, capture.clone(), false);
    world.settle();
    assert_eq!(world.replies[&11], Err(LedgerError::HoldBeingPlaced(key)));
    // The home resumes the placement, its destination answers as it did, and the same
    // capture is now captured.
    world.advance(1_000);
    world.command(0, 12, capture, false);
    world.settle();
    assert_eq!(
        world.replies[&12].as_ref().map(Reply::transfer_status),
        Ok(Some(TransferStatus::Captured))
    );
    world.command(0, 13, hold_of(alice, bob, 30, "h-1", 1_000_000), true);
    world.settle();
    assert_eq!(
        world.replies[&13].as_ref().map(Reply::transfer_status),
        Ok(Some(TransferStatus::Captured))
    );
}

/// Three partitions; `a` on 0 holds 100 USD, `b` on 1 and `c` on 2 hold nothing.
fn three_participants() -> (World, [AccountId; 3]) {
    let mut world = World::new(3);
    let accounts = [0, 1, 2].map(|p| account_on("acct", p, 3, 0));
    for (p, account) in accounts.iter().enumerate() {
        world.command(p as PartitionId, 1 + p as u32, open(*account, USD), false);
    }
    world.command(0, 9, deposit(accounts[0], 100, USD, "d-1"), false);
    world.settle();
    world.replies.clear();
    (world, accounts)
}

fn leg(from: AccountId, to: AccountId, minor: u64) -> Leg {
    Leg {
        from,
        to,
        amount: crate::model::money::Amount::from_minor(minor).expect("in range"),
        currency: USD,
    }
}

fn transact(id: &str, legs: Vec<Leg>) -> (Command, TransferKey) {
    let tx = Transaction::new(TransactionId::new(id).unwrap(), legs).expect("valid legs");
    let key = tx.key();
    (Command::Transact(tx), key)
}

/// Every account's figures, and each ledger's conservation.
fn figures_of(world: &mut World, accounts: &[AccountId]) -> Vec<(u64, u64, u64)> {
    let count = world.partitions.len() as u32;
    for p in 0..count {
        world
            .machine(p)
            .ledger()
            .check_conservation()
            .expect("money is conserved");
    }
    accounts
        .iter()
        .map(|account| {
            let p = crate::model::partition::partition_of(account, count);
            let a = *world.machine(p).ledger().account(account).expect("open");
            (a.balance, a.held, a.incoming)
        })
        .collect()
}

#[test]
fn a_transaction_across_three_partitions_commits_once_every_participant_tried() {
    let (mut world, [a, b, c]) = three_participants();
    // b starts empty: the money passes through it.
    let (command, key) = transact("x-1", vec![leg(a, b, 30), leg(b, c, 30), leg(a, c, 10)]);
    world.command(0, 10, command.clone(), true);
    // The Tries leave at once, in parallel with the sync of the home's own Try.
    assert_eq!(figures_of(&mut world, &[a])[0], (60, 40, 0));
    assert!(world.ready(0));
    assert_eq!(world.wire.len(), 2, "a Try to each other participant");
    assert!(world.commit(0));
    world.deliver();
    // Each participant tries durably; b's net is nothing, c's is counted as incoming.
    assert!(world.commit(1) && world.commit(2));
    assert_eq!(figures_of(&mut world, &[b, c]), vec![(0, 0, 0), (0, 0, 40)]);
    assert!(world.sync(1) && world.sync(2));
    world.deliver();
    world.ready(0);
    assert!(
        !world.replies.contains_key(&10),
        "every participant tried, but the home's own Try is not durable yet"
    );
    assert!(world.sync(0) && world.ready(0));
    assert_eq!(
        world.replies[&10],
        Ok(Reply::Transfer(TransferStatus::Committed)),
        "committed once every Try is durable, the home's included"
    );
    assert_eq!(
        figures_of(&mut world, &[c])[0],
        (0, 0, 40),
        "no credit before the Confirm"
    );
    world.settle();
    assert_eq!(
        figures_of(&mut world, &[a, b, c]),
        vec![(60, 0, 0), (0, 0, 0), (40, 0, 0)]
    );
    // The same request answers the same; other legs under the id are a conflict.
    world.command(0, 11, command, false);
    let (other, _) = transact("x-1", vec![leg(a, b, 31)]);
    world.command(0, 12, other, false);
    world.settle();
    assert_eq!(world.replies[&11], world.replies[&10]);
    assert_eq!(
        world.replies[&12],
        Err(LedgerError::Conflict(key.transaction_id))
    );
}

#[test]
fn a_refused_leg_cancels_the_transaction_everywhere_and_names_the_lowest_failing_leg() {
    let (mut world, [a, b, c]) = three_participants();
    // b cannot pay out 50 of the 30 it receives: its first debiting leg (1) fails.
    let (command, key) = transact("x-2", vec![leg(a, b, 30), leg(b, c, 50)]);
    world.command(0, 10, command, true);
    world.settle();
    assert_eq!(
        world.replies[&10],
        Ok(Reply::Transfer(TransferStatus::Cancelled(
            Reason::InsufficientFunds
        )))
    );
    let terms = world.machine(0).ledger().transaction(&key).unwrap();
    assert_eq!(terms.failed_leg, Some(1));
    assert_eq!(
        figures_of(&mut world, &[a, b, c]),
        vec![(100, 0, 0), (0, 0, 0), (0, 0, 0)],
        "nothing moved, nothing is left held or incoming"
    );
    let row = world.machine(0).ledger().transfer(&key).unwrap();
    assert_eq!(
        row.state,
        TransferState::Cancelled(Reason::InsufficientFunds)
    );
}

#[test]
fn a_participant_that_never_answers_is_aborted_and_its_late_try_fails() {
    let (mut world, [a, b, c]) = three_participants();
    let (command, key) = transact("x-3", vec![leg(a, b, 30), leg(a, c, 5)]);
    world.command(0, 10, command, true);
    world.ready(0);
    world.commit(0);
    world.sync(0);
    // The Try to c is lost on the way.
    let lost: Vec<PeerMessage> = world
        .wire
        .iter()
        .filter(|m| m.destination(3) == 2)
        .cloned()
        .collect();
    world.wire.retain(|m| m.destination(3) != 2);
    assert_eq!(lost.len(), 1);
    world.settle();
    assert!(!world.replies.contains_key(&10), "still waiting for c");
    // Past the deadline the home asks c to cancel unless it tried: it never did.
    world.advance(config().coordinator.try_timeout_us + 1);
    world.advance(config().coordinator.retry_max_us);
    assert_eq!(
        world.replies[&10],
        Ok(Reply::Transfer(TransferStatus::Cancelled(Reason::Timeout)))
    );
    assert_eq!(
        world
            .machine(0)
            .ledger()
            .transaction(&key)
            .unwrap()
            .failed_leg,
        None
    );
    // The lost Try arrives at last, and fails on the barrier the abort left.
    world.wire.extend(lost);
    world.settle();
    assert_eq!(
        figures_of(&mut world, &[a, b, c]),
        vec![(100, 0, 0), (0, 0, 0), (0, 0, 0)]
    );
    let part = world.machine(2).ledger().transaction_part(&key).unwrap();
    assert_eq!(
        part.state,
        PartState::Refused {
            failed_leg: None,
            reason: Reason::CancelledBeforeTry
        }
    );
}

#[test]
fn a_home_that_loses_power_after_the_commit_point_commits_on_restart() {
    let (mut world, [a, b, c]) = three_participants();
    let (command, key) = transact("x-4", vec![leg(a, b, 30), leg(a, c, 20)]);
    world.command(0, 10, command.clone(), true);
    world.ready(0);
    world.commit(0);
    world.sync(0);
    world.deliver();
    assert!(world.commit(1) && world.commit(2) && world.sync(1) && world.sync(2));
    world.deliver();
    world.ready(0);
    assert_eq!(
        world.replies[&10],
        Ok(Reply::Transfer(TransferStatus::Committed))
    );
    // The record of the commit is not durable, nor did any Confirm leave: a power loss.
    world.wire.clear();
    world.power_loss(0);
    assert_eq!(
        world.machine(0).ledger().transfer(&key).unwrap().state,
        TransferState::Trying
    );
    // The home asks again; the participants answer as they did; it commits.
    world.advance(1_000);
    world.advance(config().coordinator.retry_max_us);
    assert_eq!(
        figures_of(&mut world, &[a, b, c]),
        vec![(50, 0, 0), (30, 0, 0), (20, 0, 0)]
    );
    world.command(0, 11, command, false);
    world.settle();
    assert_eq!(world.replies[&11], world.replies[&10]);
}

#[test]
fn a_participant_whose_confirm_is_lost_asks_its_home() {
    let (mut world, [a, b, c]) = three_participants();
    let (command, _) = transact("x-5", vec![leg(a, b, 30), leg(a, c, 20)]);
    world.command(0, 10, command, true);
    world.ready(0);
    world.commit(0);
    world.sync(0);
    world.deliver();
    assert!(world.commit(1) && world.commit(2) && world.sync(1) && world.sync(2));
    world.deliver();
    // The home commits; its Confirms are lost.
    assert!(world.commit(0) && world.sync(0));
    assert!(!world.wire.is_empty());
    world.wire.clear();
    world.settle();
    assert_eq!(
        figures_of(&mut world, &[b, c]),
        vec![(0, 0, 30), (0, 0, 20)],
        "the credits wait, in no balance"
    );
    world.advance(config().coordinator.resolve_after_us + 1);
    assert_eq!(
        figures_of(&mut world, &[a, b, c]),
        vec![(50, 0, 0), (30, 0, 0), (20, 0, 0)]
    );
}

/// The home of a transaction takes it, its Tries leave at once, and both participants try
/// it durably; then the home loses its power before its own Try is durable. Its client was
/// told nothing. The participants' answers, still on their way, are taken off the wire and
/// returned.
fn home_loses_its_try_after_the_participants_tried(
    world: &mut World,
    command: &Command,
    key: TransferKey,
) -> Vec<PeerMessage> {
    world.command(0, 10, command.clone(), true);
    world.ready(0);
    assert!(world.commit(0));
    world.deliver();
    assert!(world.commit(1) && world.commit(2) && world.sync(1) && world.sync(2));
    let answers = world.wire.drain(..).collect();
    world.power_loss(0);
    assert!(!world.replies.contains_key(&10), "nothing was told");
    assert!(world.machine(0).ledger().transfer(&key).is_none());
    answers
}

/// Partitions 1 and 2 hold the Try of `key` cancelled.
fn assert_parts_cancelled(world: &mut World, key: TransferKey) {
    for p in [1, 2] {
        let part = world.machine(p).ledger().transaction_part(&key);
        assert_eq!(part.unwrap().state, PartState::Cancelled, "partition {p}");
    }
}

/// Once the participants have asked about `key`: no money of `accounts` (a, b, c of
/// [`three_participants`]) moved, and both participants cancelled their Try.
fn assert_no_leg_moved(world: &mut World, accounts: [AccountId; 3], key: TransferKey) {
    world.advance(config().coordinator.resolve_after_us + 1);
    assert_eq!(
        figures_of(world, &accounts),
        vec![(100, 0, 0), (0, 0, 0), (0, 0, 0)],
        "no leg of either moved"
    );
    assert_parts_cancelled(world, key);
}

#[test]
fn a_home_that_lost_its_try_rejects_it_when_a_participant_asks_and_the_tries_are_undone() {
    let (mut world, [a, b, c]) = three_participants();
    let (command, key) = transact("x-6", vec![leg(a, b, 30), leg(a, c, 20)]);
    home_loses_its_try_after_the_participants_tried(&mut world, &command, key);
    assert_eq!(
        figures_of(&mut world, &[a, b, c]),
        vec![(100, 0, 0), (0, 0, 30), (0, 0, 20)],
        "the participants' nets wait, in no balance"
    );
    // The participants ask; the home has no row, rejects the transaction for good and
    // cancels their Tries.
    world.advance(config().coordinator.resolve_after_us + 1);
    assert_eq!(
        figures_of(&mut world, &[a, b, c]),
        vec![(100, 0, 0), (0, 0, 0), (0, 0, 0)]
    );
    let row = world.machine(0).ledger().transfer(&key).unwrap();
    assert_eq!(row.state, TransferState::Rejected(Reason::Timeout));
    // The client's retry gets that answer, and can never commit it.
    world.command(0, 11, command, true);
    world.settle();
    assert_eq!(
        world.replies[&11],
        Ok(Reply::Transfer(TransferStatus::Rejected(Reason::Timeout)))
    );
    assert_parts_cancelled(&mut world, key);
}

#[test]
fn a_retry_with_other_legs_after_the_home_lost_its_try_confirms_no_leg_of_either() {
    let (mut world, [a, b, c]) = three_participants();
    let (command, key) = transact("x-7", vec![leg(a, b, 30), leg(a, c, 20)]);
    home_loses_its_try_after_the_participants_tried(&mut world, &command, key);
    // The client retries under the same id with other legs, which only b takes part in:
    // b holds the lost legs and fails the new Try; the home cancels, and its Cancel undoes
    // b's orphan. c, which the new legs do not name, asks about the lost ones and is told
    // to cancel: the home holds other legs under the key.
    let (other, _) = transact("x-7", vec![leg(a, b, 40)]);
    world.command(0, 11, other, true);
    world.settle();
    assert_eq!(
        world.replies[&11],
        Ok(Reply::Transfer(TransferStatus::Cancelled(Reason::Timeout)))
    );
    assert_no_leg_moved(&mut world, [a, b, c], key);
}

#[test]
fn a_late_answer_about_lost_legs_does_not_count_for_other_legs_under_the_key() {
    let (mut world, [a, b, c]) = three_participants();
    let (command, key) = transact("x-10", vec![leg(a, b, 30), leg(a, c, 20)]);
    // b's and c's answers (tried) are on their way when the home loses its Try.
    let late = home_loses_its_try_after_the_participants_tried(&mut world, &command, key);
    assert_eq!(late.len(), 2);
    // The client's retry puts other legs under the id, which only b takes part in; the
    // answers about the lost legs arrive before b's answer to the new Try.
    let (other, _) = transact("x-10", vec![leg(a, b, 40)]);
    world.command(0, 11, other, true);
    world.ready(0);
    let new_try: Vec<PeerMessage> = world.wire.drain(..).collect();
    world.wire.extend(late);
    world.wire.extend(new_try);
    world.settle();
    assert_eq!(
        world.replies[&11],
        Ok(Reply::Transfer(TransferStatus::Cancelled(Reason::Timeout))),
        "b's tried was about the lost legs; it failed the new ones"
    );
    assert_no_leg_moved(&mut world, [a, b, c], key);
}

/// The home lost `t` (a→b, a→c) after b and c tried it; the client's retry under the same
/// id moves money within the home only (a→d), and commits at once. b and c then ask about
/// `t`. The figures of a, b, c and d at the end.
fn other_legs_committed_at_the_home(bugs: &[crate::protocol::bugs::Bug]) -> Vec<(u64, u64, u64)> {
    crate::protocol::bugs::set(bugs);
    let (mut world, [a, b, c]) = three_participants();
    let d = account_on("acct", 0, 3, 1);
    world.command(0, 5, open(d, USD), false);
    world.settle();
    let (command, key) = transact("x-9", vec![leg(a, b, 30), leg(a, c, 20)]);
    home_loses_its_try_after_the_participants_tried(&mut world, &command, key);
    let (other, _) = transact("x-9", vec![leg(a, d, 40)]);
    world.command(0, 11, other, true);
    world.settle();
    assert_eq!(
        world.replies[&11],
        Ok(Reply::Transfer(TransferStatus::Committed))
    );
    // b and c still hold the lost legs' Tries under the key the home committed other legs
    // under: money is conserved, counting those as what they are, not committed.
    let ledgers: Vec<Ledger> = (0..3).map(|p| world.machine(p).ledger().clone()).collect();
    let parts = |p: usize| ledgers[p].tried_transaction_parts().len();
    assert_eq!(
        (parts(1), parts(2)),
        (1, 1),
        "the lost legs are still tried"
    );
    if let Err(violation) = crate::protocol::invariants::conservation(&ledgers) {
        panic!("{violation}");
    }
    world.advance(config().coordinator.resolve_after_us + 1);
    let figures = [a, b, c, d].map(|account| {
        let p = crate::model::partition::partition_of(&account, 3);
        let found = *world.machine(p).ledger().account(&account).expect("open");
        (found.balance, found.held, found.incoming)
    });
    crate::protocol::bugs::set(&[]);
    figures.to_vec()
}

#[test]
fn a_participant_holding_legs_its_home_lost_is_cancelled_though_other_legs_committed() {
    use crate::protocol::bugs::Bug;
    assert_eq!(
        other_legs_committed_at_the_home(&[]),
        vec![(60, 0, 0), (0, 0, 0), (0, 0, 0), (40, 0, 0)],
        "the lost legs moved nothing"
    );
    // Answered by the key alone, b and c confirm legs whose debit never was: 50 made up.
    assert_eq!(
        other_legs_committed_at_the_home(&[Bug::TxConfirmOtherLegs]),
        vec![(60, 0, 0), (30, 0, 0), (20, 0, 0), (40, 0, 0)],
    );
}

#[test]
fn a_retry_with_the_same_legs_after_the_home_lost_its_try_commits_them_once() {
    let (mut world, [a, b, c]) = three_participants();
    let (command, key) = transact("x-8", vec![leg(a, b, 30), leg(a, c, 20)]);
    home_loses_its_try_after_the_participants_tried(&mut world, &command, key);
    // The participants answer the retry's Tries as they answered the first: tried.
    world.command(0, 11, command, true);
    world.settle();
    assert_eq!(
        world.replies[&11],
        Ok(Reply::Transfer(TransferStatus::Committed))
    );
    world.advance(config().coordinator.resolve_after_us + 1);
    assert_eq!(
        figures_of(&mut world, &[a, b, c]),
        vec![(50, 0, 0), (30, 0, 0), (20, 0, 0)]
    );
}
