//! The transfer coordinator: drives cross-partition transfers (TC/C) from their home partition.
//!
//! Pure and clock-free in the style of a sans-IO protocol crate: inputs arrive through
//! [`Coordinator::on_event`] (events the home ledger made durable), [`Coordinator::on_response`]
//! (a destination's answer) and [`Coordinator::on_tick`] (time passed); outputs leave through
//! [`Coordinator::poll_output`]. The driver must only release `Send` outputs after the batch
//! holding the events that caused them is durable; that is what makes "debit first" and "the
//! decision is durable before it acts" hold.
//!
//! Its whole state is derivable from the home ledger's phase rows ([`Coordinator::rebuild`]),
//! so a restarted partition resumes every unfinished transfer without a separate coordinator log.
//!
//! # The commit point
//! A cross-partition transfer is committed once the home's `DebitTried` and the
//! destination's `CreditTried` are both durable; it is cancelled once the home's `DebitTried`
//! is durable and the destination has durably refused or aborted its Try (the try-not-seen
//! flag). Either way the destination's first durable answer to the Try decides, and it
//! answers every later Try or Abort the same way. So the coordinator never decides on its
//! own: a Try that goes unanswered is followed by an Abort ("cancel unless you tried"),
//! whose answer decides like a Try's. A client is told `committed` ([`Output::Committed`])
//! as soon as the destination's Tried answer arrives and the home's debit is durable, one
//! durable round after the transfer came in, because the Try leaves without waiting for the
//! home's own sync.
//!
//! # A committed transfer ends at its commit point
//! Nothing is left to decide once the destination has tried, so the home finishes its side
//! with one record (`DebitConfirmed`, from [`Command::CommitDebit`]) and forgets the
//! flight; the Confirm leaves once, when the debit is durable, and the destination does not
//! answer it. A Confirm lost on the way (a link that broke, a destination that crashed
//! before it logged it) is not resent by the home: the destination's credit stays pending,
//! in no balance, until the destination asks the home about it
//! ([`crate::protocol::credit_watch`]), and the home's committed row answers with the
//! Confirm again. Nothing a client was told depends on the Confirm's arrival; only the
//! moment the destination can spend the money does. A cancel, rare, still logs its
//! decision (which carries the reason the client is told) and waits for the destination's
//! acknowledgement before it finishes.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::ledger::{Command, PhaseResult, TransferRow, TransferState, TransferStatus};
use crate::model::event::{Decision, Event, Lsn, Reason, Transfer, TransferKey};
use crate::model::partition::{partition_of, PartitionId};
#[cfg(any(test, madsim, feature = "testing"))]
use crate::protocol::bugs::Bug;
use crate::protocol::timer_queue::{Timed, TimerQueue, NEVER};

/// Monotonic microseconds, as given by the driver. Only differences matter.
pub type Micros = u64;

/// The due time of a parked flight (see `Coordinator::violated`): no timer entry matches it.
const PARKED: Micros = NEVER;

/// Timing of the coordinator. All durations in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoordinatorConfig {
    /// How long a Try may go unanswered (across resends) before the transfer is cancelled.
    pub try_timeout_us: u64,
    /// First resend interval of any phase message.
    pub retry_initial_us: u64,
    /// Largest resend interval; backoff doubles up to it. Confirm and Cancel retry forever.
    pub retry_max_us: u64,
    /// How long a destination holds a pending credit before it asks the home what became of
    /// it (and then again at this interval): the home may have lost the transfer.
    pub resolve_after_us: u64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            try_timeout_us: 2_000_000,
            retry_initial_us: 100_000,
            retry_max_us: 2_000_000,
            resolve_after_us: 5_000_000,
        }
    }
}

/// A phase of the destination branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Try,
    Confirm,
    Cancel,
    /// Cancel unless tried: sent when a Try goes unanswered (see the module docs).
    Abort,
}

/// A phase message from a home partition to a destination partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseRequest {
    pub phase: Phase,
    pub transfer: Transfer,
}

impl PhaseRequest {
    /// The command the destination partition executes for this message.
    pub fn command(&self) -> Command {
        match self.phase {
            Phase::Try => Command::TryCredit(self.transfer),
            Phase::Confirm => Command::ConfirmCredit(self.transfer),
            Phase::Cancel => Command::CancelCredit(self.transfer),
            Phase::Abort => Command::AbortCredit(self.transfer),
        }
    }
}

/// A destination's answer to a [`PhaseRequest`], routed back to the home partition of `key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseResponse {
    pub phase: Phase,
    pub key: TransferKey,
    pub result: PhaseResult,
}

/// What the coordinator asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a phase message to `partition` (only once the triggering events are durable).
    Send {
        partition: PartitionId,
        request: PhaseRequest,
    },
    /// Execute a command on the home ledger (a decision, or finishing the source branch).
    Execute(Command),
    /// The destination durably tried the credit: the transfer is committed once the home's
    /// debit (record `debit_lsn`) is durable, and from then on its clients may be told so
    /// and its Confirm may leave (the caller sends it, once). Comes before the
    /// `CommitDebit` that finishes the home's side.
    Committed { transfer: Transfer, debit_lsn: Lsn },
    /// A destination answered with the opposite of the logged decision. Never happens in a
    /// correct system; surfaced so tests and the simulator fail loudly.
    Violation { key: TransferKey, detail: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Try sent; waiting for its answer until `deadline`.
    Trying { deadline: Micros },
    /// The Try went unanswered; resending an Abort until the destination answers.
    Aborting,
    /// A `Decide` command was emitted; waiting for the decision event.
    Deciding(Decision),
    /// Decision logged; resending the second phase until it is acknowledged.
    Carrying(Decision),
    /// The command that ends the home's side was emitted; waiting for its event.
    Finishing(Finish),
}

/// Why the home's side of a transfer ends, which says the command that ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// The destination acknowledged the logged decision: `FinishDebit`.
    Acknowledged,
    /// The destination durably tried: committed at the commit point, `CommitDebit`.
    Committed,
}

impl Finish {
    fn command(self, key: TransferKey) -> Command {
        match self {
            Finish::Acknowledged => Command::FinishDebit { key },
            Finish::Committed => Command::CommitDebit { key },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Flight {
    transfer: Transfer,
    /// The lsn of the transfer's `DebitTried` (0 when rebuilt from a recovered, durable log).
    debit_lsn: Lsn,
    stage: Stage,
    /// When the next resend (or re-emit) is due.
    due: Micros,
    backoff_us: u64,
    /// The due time of the flight's live entry in `Coordinator::timers`, if it has one: at
    /// or before `due`.
    timer: Option<Micros>,
}

impl Timed for Flight {
    fn due(&self) -> Micros {
        self.due
    }

    fn entry(&mut self) -> &mut Option<Micros> {
        &mut self.timer
    }
}

/// The coordinator of one home partition.
#[derive(Debug)]
pub struct Coordinator {
    config: CoordinatorConfig,
    partitions: u32,
    flights: FxHashMap<TransferKey, Flight>,
    /// Due times of `flights`, earliest first, so a tick touches only what is due. A flight
    /// has at most one live entry, at or before its due time: a stage change that moves the
    /// due time later (nearly all do) adds nothing, and an entry that comes up early is
    /// queued again for its flight's due time. Entries of finished flights, or replaced by an
    /// earlier one, are stale and dropped when they come up. Most transfers finish long
    /// before their first resend, so each costs one append to a queue that stays sorted
    /// (see [`TimerQueue`]) instead of a sorted-set removal and insertion at every stage.
    timers: TimerQueue,
    outputs: VecDeque<Output>,
}

impl Coordinator {
    pub fn new(config: CoordinatorConfig, partitions: u32) -> Coordinator {
        assert!(config.retry_initial_us > 0 && config.retry_initial_us <= config.retry_max_us);
        Coordinator {
            config,
            partitions,
            flights: FxHashMap::default(),
            timers: TimerQueue::default(),
            outputs: VecDeque::new(),
        }
    }

    /// Rebuilds the coordinator after a restart from the home ledger's unfinished rows: every
    /// Trying transfer resends its Try, every cancelled one its Cancel. A row decided
    /// `Confirming` (by an older build, which logged the decision and waited for an
    /// acknowledgement) sends its Confirm once and commits at once, as a new one would.
    pub fn rebuild(
        config: CoordinatorConfig,
        partitions: u32,
        rows: &[TransferRow],
        now: Micros,
    ) -> Coordinator {
        let mut coordinator = Coordinator::new(config, partitions);
        for row in rows {
            match row.state {
                TransferState::Trying => coordinator.start_try(row.transfer, 0, now),
                TransferState::Confirming => {
                    let finishing = Stage::Finishing(Finish::Committed);
                    let flight = coordinator.new_flight(row.transfer, 0, finishing);
                    coordinator.send(flight, Phase::Confirm, now);
                    coordinator.finish(flight, Finish::Committed, now);
                }
                TransferState::Cancelling(reason) => {
                    coordinator.carry(row.transfer, 0, Decision::Cancel(reason), now)
                }
                _ => {}
            }
        }
        coordinator
    }

    /// Transfers in flight.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// The earliest time [`Coordinator::on_tick`] has work to do.
    pub fn next_due(&self) -> Option<Micros> {
        self.timers.peek().map(|(due, _)| *due)
    }

    /// The next output, if any. Call until `None` after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Observes an event the home ledger applied as record `lsn`.
    pub fn on_event(&mut self, event: &Event, lsn: Lsn, now: Micros) {
        #[cfg(any(test, madsim, feature = "testing"))]
        if crate::protocol::bugs::enabled(Bug::CreditBeforeDebit) {
            self.credit_before_debit(event);
        }
        match *event {
            // A hold is held at its commit point, and nothing is left to carry until it ends.
            Event::HoldEstablished { key } => return self.forget(&key),
            // Voided or expired once held: the decision to cancel, carried as a transfer's.
            Event::HoldReleased {
                hold,
                reason,
                remote: true,
            } => return self.carry(hold, lsn, Decision::Cancel(reason), now),
            // Captured, final at home at once: the Confirm carries what was captured, and
            // leaves once, as a committed transfer's does (a lost one is asked for again by
            // the destination).
            Event::HoldCaptured {
                hold,
                amount,
                remote: true,
            } => {
                let partition = partition_of(&hold.to, self.partitions);
                let transfer = Transfer { amount, ..hold };
                let request = PhaseRequest {
                    phase: Phase::Confirm,
                    transfer,
                };
                return self.outputs.push_back(Output::Send { partition, request });
            }
            _ => {}
        }
        match event.effect() {
            Event::DebitTried { transfer } => self.start_try(transfer, lsn, now),
            Event::TransferDecided { key, decision } => {
                if let Some(flight) = self.flights.get(&key).copied() {
                    self.carry(flight.transfer, flight.debit_lsn, decision, now);
                }
            }
            Event::DebitConfirmed { key } | Event::DebitCancelled { key } => self.forget(&key),
            _ => {}
        }
    }

    /// Handles a destination's answer. Stale and duplicate answers are ignored.
    pub fn on_response(&mut self, response: &PhaseResponse, now: Micros) {
        let Some(flight) = self.flights.get(&response.key).copied() else {
            // A destination answers a Confirm only when it does not carry it out, and the
            // flight of a committed transfer is over by then: such an answer is a violation.
            let contrary =
                response.phase == Phase::Confirm && response.result != PhaseResult::Confirmed;
            if contrary || response.result == PhaseResult::Refused {
                let detail = format!(
                    "the destination answered {:?} with {:?}, which it cannot do",
                    response.phase, response.result
                );
                let key = response.key;
                self.outputs.push_back(Output::Violation { key, detail });
            }
            return;
        };
        let undecided = matches!(flight.stage, Stage::Trying { .. } | Stage::Aborting);
        match (response.phase, response.result) {
            // The destination's durable answer decides (see the module docs).
            (Phase::Try | Phase::Abort, PhaseResult::Tried) if undecided => {
                self.commit(flight, now)
            }
            (Phase::Try, PhaseResult::TryFailed(reason)) if undecided => {
                self.decide(flight, Decision::Cancel(reason), now)
            }
            (Phase::Abort, PhaseResult::Cancelled) if undecided => {
                self.decide(flight, Decision::Cancel(Reason::Timeout), now)
            }
            _ => self.on_second_phase_response(flight, response, now),
        }
    }

    /// The destination holds a pending credit for `transfer` and asks what became of it.
    /// Returns false when this coordinator is not carrying the transfer: the caller answers
    /// from the ledger's row, or abandons a transfer it has no row of.
    pub fn on_unresolved(&mut self, transfer: &Transfer, now: Micros) -> bool {
        let Some(flight) = self.flights.get(&transfer.key()).copied() else {
            return false;
        };
        if flight.transfer != *transfer {
            // A credit for another body under this key: the home lost it and took a new
            // transfer under the same id, whose own failed Try cancels that credit.
            return true;
        }
        match flight.stage {
            // The destination asks because it tried: as good as its Tried answer.
            Stage::Trying { .. } | Stage::Aborting => self.commit(flight, now),
            Stage::Carrying(decision) => self.send(flight, second_phase(decision), now),
            Stage::Deciding(_) | Stage::Finishing(_) => {}
        }
        true
    }

    fn on_second_phase_response(&mut self, flight: Flight, response: &PhaseResponse, now: Micros) {
        match (flight.stage, response.phase, response.result) {
            (Stage::Carrying(Decision::Cancel(_)), Phase::Cancel, PhaseResult::Cancelled) => {
                self.finish(flight, Finish::Acknowledged, now)
            }
            (Stage::Carrying(decision), _, PhaseResult::Confirmed | PhaseResult::Cancelled)
                if matches!(response.phase, Phase::Confirm | Phase::Cancel) =>
            {
                let detail = format!(
                    "decided {decision:?} but the destination answered {:?}",
                    response.result
                );
                self.violated(response.key, detail);
            }
            (_, phase, PhaseResult::Refused) => {
                let detail = format!("the destination refused {phase:?}, which it cannot do");
                self.violated(response.key, detail);
            }
            _ => {}
        }
    }

    /// Does whatever is due at `now`: resends, Try timeouts, re-emitted commands.
    pub fn on_tick(&mut self, now: Micros) {
        loop {
            self.settle_top();
            let Some((due, key)) = self.timers.peek().copied() else {
                break;
            };
            if due > now {
                break;
            }
            self.timers.pop();
            let mut flight = self.flights[&key];
            // Its entry is gone: whatever it does next pushes a new one.
            flight.timer = None;
            self.flights.insert(key, flight);
            match flight.stage {
                Stage::Trying { deadline } if now >= deadline => self.abort(flight, now),
                Stage::Trying { .. } => self.send(flight, Phase::Try, now),
                Stage::Aborting => self.send(flight, Phase::Abort, now),
                Stage::Carrying(decision) => self.send(flight, second_phase(decision), now),
                // The driver always executes what it is given; re-emitting covers a command
                // lost with a failed batch and is harmless because both commands are idempotent.
                Stage::Deciding(decision) => {
                    self.outputs
                        .push_back(Output::Execute(Command::Decide { key, decision }));
                    self.rearm(flight, now);
                }
                Stage::Finishing(finish) => {
                    self.outputs.push_back(Output::Execute(finish.command(key)));
                    self.rearm(flight, now);
                }
            }
        }
    }

    /// Known bug `CreditBeforeDebit`: as soon as the home partition takes a cross-partition
    /// transfer, the destination is told to Try and Confirm, before the source's debit is
    /// known to hold and before any decision is logged. When the debit is refused
    /// (insufficient funds) the destination is credited with money that never left the source.
    #[cfg(any(test, madsim, feature = "testing"))]
    fn credit_before_debit(&mut self, event: &Event) {
        let (Event::DebitTried { transfer } | Event::TransferRejected { transfer, .. }) =
            event.effect()
        else {
            return;
        };
        let partition = partition_of(&transfer.to, self.partitions);
        if partition == partition_of(&transfer.from, self.partitions) {
            return;
        }
        for phase in [Phase::Try, Phase::Confirm] {
            self.outputs.push_back(Output::Send {
                partition,
                request: PhaseRequest { phase, transfer },
            });
        }
    }

    fn start_try(&mut self, transfer: Transfer, debit_lsn: Lsn, now: Micros) {
        let deadline = now + self.config.try_timeout_us;
        let flight = self.new_flight(transfer, debit_lsn, Stage::Trying { deadline });
        self.send(flight, Phase::Try, now);
    }

    /// A flight that starts at `stage`; the caller sends or emits what the stage waits on.
    fn new_flight(&mut self, transfer: Transfer, debit_lsn: Lsn, stage: Stage) -> Flight {
        let flight = Flight {
            transfer,
            debit_lsn,
            stage,
            due: 0,
            backoff_us: self.config.retry_initial_us,
            timer: None,
        };
        assert!(
            !self.flights.contains_key(&transfer.key()),
            "a transfer starts once"
        );
        self.flights.insert(transfer.key(), flight);
        flight
    }

    /// The Try went unanswered until its deadline: ask the destination to cancel unless it
    /// tried. Under the known bug `CancelAfterDurableCredit`, cancel without asking.
    fn abort(&mut self, mut flight: Flight, now: Micros) {
        if known_bug!(CancelAfterDurableCredit) {
            return self.decide(flight, Decision::Cancel(Reason::Timeout), now);
        }
        flight.stage = Stage::Aborting;
        flight.backoff_us = self.config.retry_initial_us;
        self.send(flight, Phase::Abort, now);
    }

    /// The destination durably tried: tell the machine (which answers the clients and sends
    /// the Confirm once the debit is durable), then finish the home's side.
    fn commit(&mut self, flight: Flight, now: Micros) {
        let (transfer, debit_lsn) = (flight.transfer, flight.debit_lsn);
        self.outputs.push_back(Output::Committed {
            transfer,
            debit_lsn,
        });
        self.finish(flight, Finish::Committed, now);
    }

    fn decide(&mut self, mut flight: Flight, decision: Decision, now: Micros) {
        let key = flight.transfer.key();
        flight.stage = Stage::Deciding(decision);
        flight.backoff_us = self.config.retry_initial_us;
        self.outputs
            .push_back(Output::Execute(Command::Decide { key, decision }));
        self.rearm(flight, now);
    }

    /// Carries a logged decision to the destination: sends its second phase and resends it
    /// until acknowledged.
    fn carry(&mut self, transfer: Transfer, debit_lsn: Lsn, decision: Decision, now: Micros) {
        let timer = self.flights.get(&transfer.key()).and_then(|f| f.timer);
        let flight = Flight {
            transfer,
            debit_lsn,
            stage: Stage::Carrying(decision),
            due: 0,
            backoff_us: self.config.retry_initial_us,
            timer,
        };
        self.flights.insert(transfer.key(), flight);
        self.send(flight, second_phase(decision), now);
    }

    /// Ends the home's side of the transfer; the command's event ends the flight.
    fn finish(&mut self, mut flight: Flight, finish: Finish, now: Micros) {
        flight.stage = Stage::Finishing(finish);
        flight.backoff_us = self.config.retry_initial_us;
        let key = flight.transfer.key();
        self.outputs.push_back(Output::Execute(finish.command(key)));
        self.rearm(flight, now);
    }

    /// A state the protocol says cannot happen: reported once, and the transfer is parked
    /// (no more resends, which would only be refused again) until a restart rebuilds it. Its
    /// logged decision stands; an operator must look at the destination's log.
    fn violated(&mut self, key: TransferKey, detail: String) {
        if let Some(flight) = self.flights.get_mut(&key) {
            flight.due = PARKED;
        }
        self.settle_top();
        self.outputs.push_back(Output::Violation { key, detail });
    }

    fn forget(&mut self, key: &TransferKey) {
        self.flights.remove(key);
        self.settle_top();
    }

    /// Makes the top entry of `timers` exact (a parked flight's is dropped), so that
    /// [`Coordinator::next_due`] is.
    fn settle_top(&mut self) {
        self.timers.settle(&mut self.flights);
    }

    fn send(&mut self, flight: Flight, phase: Phase, now: Micros) {
        let partition = partition_of(&flight.transfer.to, self.partitions);
        self.outputs.push_back(Output::Send {
            partition,
            request: PhaseRequest {
                phase,
                transfer: flight.transfer,
            },
        });
        self.rearm(flight, now);
    }

    /// Stores `flight` with its next due time and doubles its backoff; pushes a timer entry
    /// only if the flight has none at or before that time.
    fn rearm(&mut self, mut flight: Flight, now: Micros) {
        let key = flight.transfer.key();
        flight.due = match flight.stage {
            Stage::Trying { deadline } => (now + flight.backoff_us).min(deadline),
            _ => now + flight.backoff_us,
        };
        flight.backoff_us = (flight.backoff_us * 2).min(self.config.retry_max_us);
        self.timers.arm(key, &mut flight);
        self.flights.insert(key, flight);
        self.settle_top();
    }
}

/// Whether a destination answers a phase request it handled with `result`: every one but a
/// Confirm it carried out, since the home's side of a committed transfer ended at the
/// commit point and nothing waits for that answer.
pub fn destination_answers(phase: Phase, result: PhaseResult) -> bool {
    !(phase == Phase::Confirm && result == PhaseResult::Confirmed)
}

/// What a home sends a destination that asks about the pending credit of `transfer`
/// ([`crate::protocol::credit_watch`]) when no flight carries it: `status` is the home's
/// answer to [`Command::Abandon`] for it (the row's state, or refused for good when there
/// was no row), `row_body` the body of the home's row under its key. A committed transfer
/// sends its Confirm again; a credit of another body is an orphan of a lost transfer, and
/// every other outcome cancels. `None`: still pending, the flight will carry it.
pub fn unresolved_answer(
    status: TransferStatus,
    row_body: Option<Transfer>,
    transfer: &Transfer,
) -> Option<Phase> {
    match status {
        // A hold held ends by its home's capture, void or expiry, which its home carries.
        TransferStatus::Pending | TransferStatus::Held => None,
        // A hold captured: the caller sends the captured amount.
        TransferStatus::Captured => Some(Phase::Confirm),
        TransferStatus::Committed if row_body.is_none_or(|body| body == *transfer) => {
            if known_bug!(ConfirmSentOnce) {
                return None;
            }
            Some(Phase::Confirm)
        }
        _ => Some(Phase::Cancel),
    }
}

fn second_phase(decision: Decision) -> Phase {
    match decision {
        Decision::Confirm => Phase::Confirm,
        Decision::Cancel(_) => Phase::Cancel,
    }
}
