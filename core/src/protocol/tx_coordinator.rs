//! The transaction coordinator: drives multi-leg transactions across partitions, from their
//! home, and asks about them from their participants.
//!
//! Sans-IO like [`crate::protocol::coordinator`]: inputs through [`TxCoordinator::on_event`]
//! (events this partition's ledger applied), [`TxCoordinator::on_response`] (a
//! participant's answer), [`TxCoordinator::on_unresolved`] (a participant's question) and
//! [`TxCoordinator::on_tick`]; outputs through [`TxCoordinator::poll_output`]. Its state is
//! derivable from the ledger ([`TxCoordinator::rebuild`]).
//!
//! # The protocol (the ledger's rules are in [`crate::ledger`]'s `transactions` module)
//! 1. The home's Try (`TransactionTried`, record `try_lsn`) goes to every other participant
//!    as soon as it is applied, in parallel with the sync that makes it durable at the home
//!    (the driver releases a Try at once, as a transfer's; see
//!    [`crate::protocol::machine`]'s release rule).
//! 2. Each participant answers the Try durably: tried, or refused with its first failing
//!    leg. The home waits for every answer. A Try unanswered by its deadline is followed by
//!    an Abort ("cancel unless you tried these legs"), whose answer decides like the Try's.
//! 3. **Commit point**: every participant's Try is durable, and so is the home's own. The
//!    home learns the first from the answers; the second is `try_lsn` being durable, so
//!    its clients are told `committed` ([`TxOutput::Committed`]) with the first release
//!    after that record. It logs the commit (`ConfirmTransaction` at the home) and sends
//!    each participant its Confirm with the batch of that record. A Confirm is not
//!    acknowledged: a participant that still holds its Try after
//!    [`CoordinatorConfig::resolve_after_us`] asks the home ([`TxOutput::Send`] of
//!    [`PeerMessage::TxUnresolved`], which carries the legs it tried), and the home answers
//!    from its row.
//! 4. Otherwise the home decides to cancel (`DecideTransactionCancel`, naming the lowest
//!    failed leg of all answers, or none for a timeout), carries the Cancel to every
//!    participant until each acknowledges, then ends its own side (`CancelTransaction`).
//!
//! A home restarted finds its rows: a transaction still trying sends its Tries again (a
//! participant that tried answers tried again: Tries are idempotent), one cancelling its
//! Cancels.
//!
//! # A home that lost its Try
//! A crash can take the home's `TransactionTried` after its Tries left: participants then
//! hold Tries (nets in `held`, in no balance) of a transaction the home has no row of, and
//! no client was told anything of it (the commit point needs the home's record). The first
//! participant to ask about it makes the home record it rejected for good, for a timeout
//! with no failed leg ([`Command::AbandonTransaction`]), before its Cancel leaves; every
//! participant that tried asks in turn and is cancelled, and a client's retry gets the
//! rejection. A client may instead retry first, with the same legs (the participants that
//! tried answer tried again, and it commits) or with other legs under the same id. Then
//! the key names two transactions, and every message that can lead to a commit names the
//! legs: a participant holding other legs fails the Try
//! ([`Reason::CancelledBeforeTry`]), so the new legs cancel and their Cancel undoes the
//! orphan; an Abort carries the legs and cancels an orphan it finds; an answer to a Try or
//! an Abort names the legs it is about, so a late answer about the lost legs does not count
//! for the new ones; and the home answers a question about legs it does not hold with a
//! Cancel. So a participant confirms only the legs its home committed.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::ledger::{Command, Ledger, PhaseResult, TransferState, TransferStatus};
use crate::model::event::{Event, Lsn, Reason, TransferKey};
use crate::model::partition::{partition_of, PartitionId};
use crate::model::transaction::Transaction;
use crate::protocol::coordinator::{CoordinatorConfig, Micros, Phase};
use crate::protocol::message::PeerMessage;
use crate::protocol::timer_queue::{Timed, TimerQueue};

/// A phase message of a transaction from its home to participant `partition`. A Try and an
/// Abort carry the transaction (an Abort must not take a Try of other legs under the key
/// for its own); a Confirm and a Cancel name it by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxRequest {
    pub phase: Phase,
    pub key: TransferKey,
    /// The participant the request is for.
    pub partition: PartitionId,
    /// The transaction, with a Try (and only with one).
    pub tx: Option<Arc<Transaction>>,
}

impl TxRequest {
    /// The command the participant executes for this message.
    pub fn command(&self) -> Command {
        let (key, partition) = (self.key, self.partition);
        match (self.phase, &self.tx) {
            (Phase::Try, Some(tx)) => Command::TryTransaction {
                tx: tx.clone(),
                partition,
            },
            (Phase::Abort, Some(tx)) => Command::AbortTransaction {
                tx: tx.clone(),
                partition,
            },
            (Phase::Try | Phase::Abort, None) => {
                unreachable!("a Try and an Abort carry their transaction")
            }
            (Phase::Confirm, _) => Command::ConfirmTransaction { key, partition },
            (Phase::Cancel, _) => Command::CancelTransaction { key, partition },
        }
    }
}

/// A participant's answer to a [`TxRequest`], routed to the home of `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxResponse {
    pub phase: Phase,
    pub key: TransferKey,
    /// The participant that answers.
    pub partition: PartitionId,
    pub result: PhaseResult,
    /// With the answer to a Try or an Abort, the legs it is about (the request's). A home
    /// that lost a transaction and took other legs under its key may still get a late
    /// answer to the lost legs' Try: taken by its key alone, it would count as a Try of
    /// the new legs.
    pub tx: Option<Arc<Transaction>>,
}

/// What the coordinator asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxOutput {
    /// Send this message, with the batch after the records that caused it.
    Send(PeerMessage),
    /// Execute a command on this partition's ledger.
    Execute(Command),
    /// Every participant durably tried the transaction `key`: its clients may be told
    /// `committed` once the home's own Try (record `try_lsn`) is durable too.
    Committed { key: TransferKey, try_lsn: Lsn },
    /// A participant answered what it cannot; surfaced so tests and the simulator fail.
    Violation { key: TransferKey, detail: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Tries out; answers being gathered until `deadline`.
    Trying { deadline: Micros },
    /// The deadline passed: Aborts to those that did not answer.
    Aborting,
    /// The decision to cancel was emitted; waiting for its record.
    Deciding,
    /// The cancel is decided: Cancels until every participant acknowledged.
    Cancelling,
    /// The command that ends the home's side was emitted; waiting for its record.
    Finishing,
}

#[derive(Debug, Clone)]
struct Flight {
    tx: Arc<Transaction>,
    /// The lsn of the home's `TransactionTried` (0 when rebuilt from a recovered, durable
    /// log): the commit point waits for it to be durable.
    try_lsn: Lsn,
    stage: Stage,
    /// Every participant but the home, with its answer so far (to the Try or the Abort
    /// while trying, to the Cancel while cancelling).
    answers: BTreeMap<PartitionId, Option<PhaseResult>>,
    due: Micros,
    /// The due time of the flight's live entry in `TxCoordinator::timers`, if it has one:
    /// at or before `due` (see `TxCoordinator::put`).
    timer: Option<Micros>,
    backoff_us: u64,
    /// Every participant tried: the flight ends with the commit's record.
    committed: bool,
}

impl Timed for Flight {
    fn due(&self) -> Micros {
        self.due
    }

    fn entry(&mut self) -> &mut Option<Micros> {
        &mut self.timer
    }
}

/// The transaction coordinator of one partition.
#[derive(Debug)]
pub struct TxCoordinator {
    config: CoordinatorConfig,
    partition: PartitionId,
    partitions: u32,
    /// Transactions this partition is home of, being decided or cancelled. Looked up by key
    /// at every answer and never walked (the timers say what is due), so hashed: the search
    /// of an ordered map compared 130-byte keys at every level.
    flights: FxHashMap<TransferKey, Flight>,
    /// Transactions this partition tried for another home, not yet confirmed or cancelled:
    /// when to ask their home about them next, and the legs tried (the question names
    /// them). Hashed for the same reason.
    watched: FxHashMap<TransferKey, (Micros, Arc<Transaction>)>,
    /// Due times of `flights` and of `watched`, earliest first, so that finding the next
    /// due time and what is due costs the entries that come up, not a scan of every
    /// transaction under way (thousands, while a participant is down, at every poll of the
    /// partition). Entries whose flight or watch has moved on or ended are stale and
    /// dropped when they come up, as in [`crate::protocol::coordinator`].
    timers: TimerQueue,
    watch_timers: TimerQueue,
    outputs: VecDeque<TxOutput>,
}

impl TxCoordinator {
    pub fn new(config: CoordinatorConfig, partition: PartitionId, partitions: u32) -> Self {
        TxCoordinator {
            config,
            partition,
            partitions,
            flights: FxHashMap::default(),
            watched: FxHashMap::default(),
            timers: TimerQueue::default(),
            watch_timers: TimerQueue::default(),
            outputs: VecDeque::new(),
        }
    }

    /// The coordinator of `ledger`'s partition after a restart: its own unfinished
    /// transactions resume, its participants' Tries are watched again.
    pub fn rebuild(config: CoordinatorConfig, ledger: &Ledger, now: Micros) -> Self {
        let mut coordinator = TxCoordinator::new(config, ledger.partition(), ledger.partitions());
        for (state, tx) in ledger.unfinished_transactions() {
            match state {
                TransferState::Trying => coordinator.start(tx, 0, now),
                TransferState::Cancelling(_) => {
                    let mut flight = coordinator.flight(tx, 0, Stage::Cancelling);
                    coordinator.send_unanswered(&mut flight, Phase::Cancel, now);
                    coordinator.put(flight.tx.key(), flight);
                }
                _ => {}
            }
        }
        for tx in ledger.tried_transaction_parts() {
            coordinator.watch(tx, now);
        }
        coordinator.settle();
        coordinator
    }

    /// Transactions under way here: this partition is home of them and deciding or
    /// cancelling them, or holds their Try for another home, neither confirmed nor cancelled
    /// (a quiet cluster has none).
    pub fn in_flight(&self) -> usize {
        self.flights.len() + self.watched.len()
    }

    /// The earliest time [`TxCoordinator::on_tick`] has work to do.
    pub fn next_due(&self) -> Option<Micros> {
        let flight = self.timers.peek().map(|(due, _)| *due);
        let watch = self.watch_timers.peek().map(|(due, _)| *due);
        flight.into_iter().chain(watch).min()
    }

    #[must_use]
    pub fn poll_output(&mut self) -> Option<TxOutput> {
        self.outputs.pop_front()
    }

    fn is_home_of(&self, key: &TransferKey) -> bool {
        partition_of(&key.from, self.partitions) == self.partition
    }

    /// Observes an event this partition's ledger applied as record `lsn`.
    pub fn on_event(&mut self, event: &Event, lsn: Lsn, now: Micros) {
        self.observe(event, lsn, now);
        self.settle();
    }

    fn observe(&mut self, event: &Event, lsn: Lsn, now: Micros) {
        match event {
            Event::TransactionTried { tx } if self.is_home_of(&tx.key()) => {
                self.start(tx.clone(), lsn, now)
            }
            Event::TransactionTried { tx } => self.watch(tx.clone(), now),
            Event::TransactionCancelling { key, .. } => {
                if let Some(mut flight) = self.flights.remove(key) {
                    flight.stage = Stage::Cancelling;
                    for answer in flight.answers.values_mut() {
                        *answer = None;
                    }
                    flight.backoff_us = self.config.retry_initial_us;
                    self.send_unanswered(&mut flight, Phase::Cancel, now);
                    self.put(*key, flight);
                }
            }
            Event::TransactionConfirmed { key } | Event::TransactionCancelled { key } => {
                if self.is_home_of(key) {
                    self.flights.remove(key);
                } else {
                    self.watched.remove(key);
                }
            }
            _ => {}
        }
    }

    /// A participant's answer. Stale and duplicate answers are ignored.
    pub fn on_response(&mut self, response: &TxResponse, now: Micros) {
        self.take_response(response, now);
        self.settle();
    }

    fn take_response(&mut self, response: &TxResponse, now: Micros) {
        let key = response.key;
        if response.result == PhaseResult::Refused {
            let detail = format!(
                "participant {} refused {:?}",
                response.partition, response.phase
            );
            return self.outputs.push_back(TxOutput::Violation { key, detail });
        }
        let Some(mut flight) = self.flights.remove(&key) else {
            return;
        };
        let about_try = matches!(response.phase, Phase::Try | Phase::Abort);
        if about_try && response.tx.as_ref() != Some(&flight.tx) && !known_bug!(TxConfirmOtherLegs)
        {
            // A late answer about other legs under this key, which this home lost (see the
            // module docs): it says nothing of these.
            self.put(key, flight);
            return;
        }
        let Some(slot) = flight.answers.get_mut(&response.partition) else {
            // A participant of lost legs under this key acknowledges the Cancel it was sent
            // for them (see `on_unresolved`); any other answer from it cannot be.
            if response.phase != Phase::Cancel {
                let detail = format!("partition {} is no participant", response.partition);
                self.outputs.push_back(TxOutput::Violation { key, detail });
            }
            self.put(key, flight);
            return;
        };
        match (flight.stage, response.phase, response.result) {
            (Stage::Trying { .. } | Stage::Aborting, Phase::Try | Phase::Abort, result) => {
                // A participant that confirmed had tried (a home that lost its record of the
                // commit asks again): it counts as tried, never as a refusal.
                let result = match result {
                    PhaseResult::Confirmed => PhaseResult::Tried,
                    result => result,
                };
                let result = match result {
                    PhaseResult::LegFailed { .. } if known_bug!(MultiLegPartial) => {
                        PhaseResult::Tried
                    }
                    result => result,
                };
                if slot.is_none() {
                    *slot = Some(result);
                }
                self.decide_if_answered(&mut flight, now);
            }
            (Stage::Cancelling, Phase::Cancel, PhaseResult::Confirmed) => {
                let detail = "decided to cancel, but a participant confirmed".to_string();
                self.outputs.push_back(TxOutput::Violation { key, detail });
            }
            (Stage::Cancelling, Phase::Cancel, _) => {
                *slot = Some(response.result);
                if flight.answers.values().all(Option::is_some) {
                    flight.stage = Stage::Finishing;
                    self.emit_finish(&mut flight, now);
                }
            }
            _ => {}
        }
        self.put(key, flight);
    }

    /// Participant `partition` still holds its Try of `tx` and asks what became of it.
    /// Answered here if a flight carries the key: as a Try's answer if the flight is of
    /// these legs and still trying, with a Cancel if it is cancelling or of other legs (an
    /// orphan of a transaction the home lost, which can never commit). Returns false when
    /// no flight carries the key: the caller answers from the row
    /// ([`unresolved_transaction_answer`]), recording the transaction rejected if there is
    /// none.
    pub fn on_unresolved(
        &mut self,
        tx: &Arc<Transaction>,
        partition: PartitionId,
        now: Micros,
    ) -> bool {
        let key = tx.key();
        let Some(flight) = self.flights.get(&key) else {
            return false;
        };
        let orphan = flight.tx != *tx && !known_bug!(TxConfirmOtherLegs);
        if orphan || flight.stage == Stage::Cancelling {
            self.request(key, partition, Phase::Cancel, None);
        } else {
            // It asks because it tried: as good as its answer to the Try.
            let response = TxResponse {
                phase: Phase::Try,
                key,
                partition,
                result: PhaseResult::Tried,
                tx: Some(tx.clone()),
            };
            self.on_response(&response, now);
        }
        true
    }

    /// Does what is due at `now`: resends, deadlines, questions to homes.
    pub fn on_tick(&mut self, now: Micros) {
        loop {
            self.settle();
            let Some((due, key)) = self.timers.peek().copied() else {
                break;
            };
            if due > now {
                break;
            }
            self.timers.pop();
            let mut flight = self.flights.remove(&key).expect("a settled entry is live");
            // Its entry is gone: whatever it does next arms a new one.
            flight.timer = None;
            flight.backoff_us = (flight.backoff_us * 2).min(self.config.retry_max_us);
            match flight.stage {
                Stage::Trying { deadline } if now >= deadline => {
                    flight.stage = Stage::Aborting;
                    flight.backoff_us = self.config.retry_initial_us;
                    self.send_unanswered(&mut flight, Phase::Abort, now);
                }
                Stage::Trying { .. } => self.send_unanswered(&mut flight, Phase::Try, now),
                Stage::Aborting => self.send_unanswered(&mut flight, Phase::Abort, now),
                Stage::Cancelling => self.send_unanswered(&mut flight, Phase::Cancel, now),
                // The driver executes what it is given; re-emitting covers a command lost
                // with a failed batch and is harmless, the commands being idempotent.
                Stage::Deciding => self.emit_decision(&mut flight, now),
                Stage::Finishing => self.emit_finish(&mut flight, now),
            }
            debug_assert!(flight.due > now, "a flight is next due after now");
            self.put(key, flight);
        }
        while let Some((due, key)) = self.watch_timers.peek().copied() {
            if due > now {
                break;
            }
            self.watch_timers.pop();
            let Some((_, tx)) = self.watched.get(&key).filter(|(at, _)| *at == due) else {
                continue;
            };
            let tx = tx.clone();
            let message = PeerMessage::TxUnresolved {
                tx: tx.clone(),
                partition: self.partition,
            };
            self.outputs.push_back(TxOutput::Send(message));
            self.watch(tx, now);
        }
        self.settle();
    }

    /// Stores `flight` under `key` and arms its timer: an entry is pushed only if the flight
    /// has none at or before its due time (an early one is queued again when it comes up).
    fn put(&mut self, key: TransferKey, mut flight: Flight) {
        self.timers.arm(key, &mut flight);
        self.flights.insert(key, flight);
    }

    /// Makes the top entries of both queues live and exact, so that
    /// [`TxCoordinator::next_due`] is: stale entries are dropped, a flight's early entry is
    /// queued again for its due time.
    fn settle(&mut self) {
        self.timers.settle(&mut self.flights);
        while let Some((due, key)) = self.watch_timers.peek().copied() {
            if self.watched.get(&key).is_some_and(|(at, _)| *at == due) {
                break;
            }
            self.watch_timers.pop();
        }
    }

    fn watch(&mut self, tx: Arc<Transaction>, now: Micros) {
        let due = now + self.config.resolve_after_us;
        let key = tx.key();
        self.watched.insert(key, (due, tx));
        self.watch_timers.push(due, key);
    }

    fn flight(&self, tx: Arc<Transaction>, try_lsn: Lsn, stage: Stage) -> Flight {
        let answers = (tx.participants(self.partitions).into_iter())
            .filter(|p| *p != self.partition)
            .map(|p| (p, None))
            .collect();
        Flight {
            tx,
            try_lsn,
            stage,
            answers,
            due: 0,
            timer: None,
            backoff_us: self.config.retry_initial_us,
            committed: false,
        }
    }

    fn start(&mut self, tx: Arc<Transaction>, try_lsn: Lsn, now: Micros) {
        let deadline = now + self.config.try_timeout_us;
        let mut flight = self.flight(tx, try_lsn, Stage::Trying { deadline });
        assert!(
            !flight.answers.is_empty(),
            "a transaction across partitions"
        );
        self.send_unanswered(&mut flight, Phase::Try, now);
        let key = flight.tx.key();
        assert!(
            !self.flights.contains_key(&key),
            "a transaction starts once"
        );
        self.put(key, flight);
    }

    /// Sends `phase` to every participant that has not answered, and arms the resend.
    fn send_unanswered(&mut self, flight: &mut Flight, phase: Phase, now: Micros) {
        let key = flight.tx.key();
        let tx = matches!(phase, Phase::Try | Phase::Abort).then(|| flight.tx.clone());
        let unanswered: Vec<PartitionId> = (flight.answers.iter())
            .filter(|(_, answer)| answer.is_none())
            .map(|(p, _)| *p)
            .collect();
        for partition in unanswered {
            self.request(key, partition, phase, tx.clone());
        }
        flight.due = now + flight.backoff_us;
    }

    fn request(
        &mut self,
        key: TransferKey,
        partition: PartitionId,
        phase: Phase,
        tx: Option<Arc<Transaction>>,
    ) {
        let request = TxRequest {
            phase,
            key,
            partition,
            tx,
        };
        self.outputs
            .push_back(TxOutput::Send(PeerMessage::TxRequest(request)));
    }

    /// Once every participant answered the Try (or the Abort): commit if all tried, else
    /// decide to cancel.
    fn decide_if_answered(&mut self, flight: &mut Flight, now: Micros) {
        if flight.answers.values().any(Option::is_none) {
            return;
        }
        let key = flight.tx.key();
        if flight
            .answers
            .values()
            .all(|a| *a == Some(PhaseResult::Tried))
        {
            let try_lsn = flight.try_lsn;
            self.outputs.push_back(TxOutput::Committed { key, try_lsn });
            let partition = self.partition;
            self.outputs
                .push_back(TxOutput::Execute(Command::ConfirmTransaction {
                    key,
                    partition,
                }));
            let participants: Vec<PartitionId> = flight.answers.keys().copied().collect();
            for participant in participants {
                self.request(key, participant, Phase::Confirm, None);
            }
            flight.stage = Stage::Finishing;
            flight.committed = true;
            flight.due = now + self.config.retry_initial_us;
            return;
        }
        flight.stage = Stage::Deciding;
        self.emit_decision(flight, now);
    }

    /// The decision to cancel, naming the lowest leg any participant refused (none if all
    /// that refused only never tried: the Try timed out).
    fn emit_decision(&mut self, flight: &mut Flight, now: Micros) {
        let key = flight.tx.key();
        let failed = (flight.answers.values().flatten())
            .filter_map(|answer| match *answer {
                PhaseResult::LegFailed { leg, reason } => Some((leg, reason)),
                _ => None,
            })
            .min_by_key(|(leg, _)| *leg);
        let (failed_leg, reason) = match failed {
            Some((leg, reason)) => (Some(leg), reason),
            None => (None, Reason::Timeout),
        };
        let command = Command::DecideTransactionCancel {
            key,
            failed_leg,
            reason,
        };
        self.outputs.push_back(TxOutput::Execute(command));
        flight.due = now + flight.backoff_us;
    }

    /// The command that ends the home's side: the commit, or the end of the cancel.
    fn emit_finish(&mut self, flight: &mut Flight, now: Micros) {
        let (key, partition) = (flight.tx.key(), self.partition);
        let command = if flight.committed {
            Command::ConfirmTransaction { key, partition }
        } else {
            Command::CancelTransaction { key, partition }
        };
        self.outputs.push_back(TxOutput::Execute(command));
        flight.due = now + flight.backoff_us;
    }
}

/// What a home sends participant that asks about its Try of `tx` when no flight carries
/// it: `status` is the home's answer to [`Command::AbandonTransaction`] for it (the row's
/// state, or rejected for good when there was none), `home_tx` the legs of the home's row
/// under the key, if it is a transaction's. Only a commit of these very legs confirms;
/// every other outcome, and other legs (or a transfer) under the key, cancels. `None`:
/// still being decided, and the flight carries it.
pub fn unresolved_transaction_answer(
    status: TransferStatus,
    home_tx: Option<&Arc<Transaction>>,
    tx: &Arc<Transaction>,
) -> Option<Phase> {
    let same_legs = home_tx.is_some_and(|home_tx| home_tx == tx) || known_bug!(TxConfirmOtherLegs);
    match status {
        TransferStatus::Pending => None,
        TransferStatus::Committed if same_legs => Some(Phase::Confirm),
        _ => Some(Phase::Cancel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::transaction::Leg;
    use crate::protocol::tests::support::{account_on, amt, txn, CONFIG};

    const PARTITIONS: u32 = 4;

    /// Transaction `id` of one leg from partition `home` to partition `to`.
    fn one_leg(id: &str, home: PartitionId, to: PartitionId) -> Arc<Transaction> {
        let leg = Leg {
            from: account_on("src", home, PARTITIONS, 0),
            to: account_on("dst", to, PARTITIONS, 0),
            amount: amt(5),
            currency: crate::model::money::Currency::USD,
        };
        Transaction::new(txn(id), vec![leg]).unwrap()
    }

    fn sent(c: &mut TxCoordinator) -> Vec<(Phase, TransferKey)> {
        std::iter::from_fn(|| c.poll_output())
            .filter_map(|output| match output {
                TxOutput::Send(PeerMessage::TxRequest(r)) => Some((r.phase, r.key)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_next_due_time_follows_the_flights_and_watches_as_they_move_on_and_end() {
        let mut c = TxCoordinator::new(CONFIG, 0, PARTITIONS);
        assert_eq!(c.next_due(), None);
        // A thousand transactions started a millisecond apart: each resends at its own time.
        let txs: Vec<_> = (0..1000u64)
            .map(|i| one_leg(&format!("t{i}"), 0, 1))
            .collect();
        for (i, tx) in txs.iter().enumerate() {
            c.on_event(
                &Event::TransactionTried { tx: tx.clone() },
                i as u64 + 1,
                1_000 * i as u64,
            );
        }
        assert_eq!(sent(&mut c).len(), 1000, "one Try each");
        assert_eq!(c.next_due(), Some(CONFIG.retry_initial_us));
        // Nothing is due before the first resend.
        c.on_tick(CONFIG.retry_initial_us - 1);
        assert!(sent(&mut c).is_empty());
        // The first ten are answered: they commit and end with their records.
        for tx in &txs[..10] {
            let response = TxResponse {
                phase: Phase::Try,
                key: tx.key(),
                partition: 1,
                result: PhaseResult::Tried,
                tx: Some(tx.clone()),
            };
            c.on_response(&response, 5_000);
            c.on_event(&Event::TransactionConfirmed { key: tx.key() }, 2_000, 5_000);
        }
        std::iter::from_fn(|| c.poll_output()).for_each(drop);
        assert_eq!(c.in_flight(), 990);
        assert_eq!(c.next_due(), Some(10_000 + CONFIG.retry_initial_us));
        // At 120 ms the next eleven resend their Try (started at 10..=20 ms), and only they.
        c.on_tick(120_000);
        let resent = sent(&mut c);
        let expected: Vec<_> = txs[10..=20]
            .iter()
            .map(|tx| (Phase::Try, tx.key()))
            .collect();
        assert_eq!(resent, expected);
        // Their backoff doubled: the next due is the 22nd's first resend.
        assert_eq!(c.next_due(), Some(21_000 + CONFIG.retry_initial_us));
        // A participant's Try of another home's transaction is asked about once it waits.
        let theirs = one_leg("theirs", 2, 0);
        let mut p = TxCoordinator::new(CONFIG, 0, PARTITIONS);
        p.on_event(&Event::TransactionTried { tx: theirs.clone() }, 1, 7);
        assert_eq!(p.next_due(), Some(7 + CONFIG.resolve_after_us));
        p.on_tick(7 + CONFIG.resolve_after_us);
        let asked: Vec<_> = std::iter::from_fn(|| p.poll_output()).collect();
        let question = PeerMessage::TxUnresolved {
            tx: theirs.clone(),
            partition: 0,
        };
        assert_eq!(asked, vec![TxOutput::Send(question)]);
        assert_eq!(p.next_due(), Some(7 + 2 * CONFIG.resolve_after_us));
        p.on_event(&Event::TransactionConfirmed { key: theirs.key() }, 2, 9);
        assert_eq!(p.next_due(), None, "a confirmed Try is no longer watched");
    }
}
