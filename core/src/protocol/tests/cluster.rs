//! A deterministic cluster of partitions, in the manner of quinn-proto's test pair.
//!
//! Each partition is a [`Ledger`] plus its [`Coordinator`]; time is a fake clock that only the
//! test moves; the network is a multiset of phase messages in flight that the test delivers,
//! duplicates or drops in any order. Logs are applied at once, so "durable before it acts"
//! holds trivially and every output of a coordinator is handled right after the input that
//! caused it. Nothing happens unless the test asks for it.

use crate::ledger::{Command, CreditState, Ledger, LedgerError, RecordMeta, Reply};
use crate::model::event::{Event, Transfer, TransferKey};
use crate::model::ids::AccountId;
use crate::model::partition::{partition_of, PartitionId};
use crate::protocol::coordinator::{
    destination_answers, unresolved_answer, Coordinator, CoordinatorConfig, Micros, Output, Phase,
    PhaseRequest, PhaseResponse,
};
use crate::protocol::credit_watch::CreditWatch;
use crate::protocol::invariants;
use crate::protocol::message::PeerMessage;

use super::checks::Violation;

/// Most coordinator outputs handled after one input. A correct coordinator emits a handful;
/// more means it feeds itself forever.
const DRAIN_OUTPUTS_MAX: usize = 10_000;

/// A phase message in flight between two partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// From the home partition `home` to the destination partition `to`.
    Request {
        home: PartitionId,
        to: PartitionId,
        request: PhaseRequest,
    },
    /// A destination's answer, back to `home`.
    Response {
        home: PartitionId,
        response: PhaseResponse,
    },
    /// A destination's question about a credit pending too long, to its `home`.
    Unresolved {
        home: PartitionId,
        transfer: Transfer,
    },
}

impl Message {
    /// The phase of a request or response (`None`: a question).
    pub fn phase(&self) -> Option<Phase> {
        match self {
            Message::Request { request, .. } => Some(request.phase),
            Message::Response { response, .. } => Some(response.phase),
            Message::Unresolved { .. } => None,
        }
    }

    pub fn is_request(&self) -> bool {
        matches!(self, Message::Request { .. })
    }
}

/// One event as a partition applied it, in the order the whole cluster applied them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub partition: PartitionId,
    pub meta: RecordMeta,
    pub event: Event,
}

/// A request a coordinator sent, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub at: Micros,
    pub home: PartitionId,
    pub request: PhaseRequest,
}

pub struct Cluster {
    pub config: CoordinatorConfig,
    pub now: Micros,
    pub ledgers: Vec<Ledger>,
    pub coordinators: Vec<Coordinator>,
    /// Messages in flight; any of them may be delivered next.
    pub network: Vec<Message>,
    /// Every event applied anywhere, in order: the union of all partition logs.
    pub history: Vec<Applied>,
    /// Every phase request that left a coordinator.
    pub sent: Vec<Sent>,
    /// Every answer a destination gave to a phase request.
    pub answers: Vec<PhaseResponse>,
    /// Every command a coordinator had its home ledger execute, with the time.
    pub executed: Vec<(Micros, Command)>,
    /// What went wrong while running: events that did not apply, coordinator commands the
    /// ledger refused, coordinator `Violation` outputs, and second-phase messages sent
    /// without their decision. Checked by `checks::check_always`.
    pub violations: Vec<Violation>,
    /// Phase commands a destination refused; no answer leaves for them.
    pub refused: Vec<(PartitionId, Command, LedgerError)>,
    /// Transfers a coordinator reported committed (its clients are told so), in order.
    pub committed: Vec<TransferKey>,
    /// Each partition's watch over its pending credits, as the partition machine keeps it.
    pub watches: Vec<CreditWatch>,
}

impl Cluster {
    pub fn new(partitions: u32, config: CoordinatorConfig) -> Cluster {
        Cluster {
            config,
            now: 0,
            ledgers: (0..partitions)
                .map(|p| Ledger::new(p, partitions))
                .collect(),
            coordinators: (0..partitions)
                .map(|_| Coordinator::new(config, partitions))
                .collect(),
            network: Vec::new(),
            history: Vec::new(),
            sent: Vec::new(),
            answers: Vec::new(),
            executed: Vec::new(),
            violations: Vec::new(),
            refused: Vec::new(),
            committed: Vec::new(),
            watches: (0..partitions).map(|_| CreditWatch::new()).collect(),
        }
    }

    pub fn partitions(&self) -> u32 {
        self.ledgers.len() as u32
    }

    pub fn partition_of(&self, account: &AccountId) -> PartitionId {
        partition_of(account, self.partitions())
    }

    pub fn ledger_of(&self, account: &AccountId) -> &Ledger {
        &self.ledgers[self.partition_of(account) as usize]
    }

    /// A client command, sent to the partition that owns its account (or source account).
    pub fn client(&mut self, command: Command) -> Result<Reply, LedgerError> {
        let account = match command {
            Command::OpenAccount { account, .. }
            | Command::Deposit { account, .. }
            | Command::Withdraw { account, .. } => account,
            Command::Transfer(transfer) => transfer.from,
            other => panic!("{other:?} is not a client command"),
        };
        let partition = self.partition_of(&account);
        self.execute(partition, &command)
    }

    /// Executes `command` on `partition` and handles everything its coordinator does about it.
    pub fn execute(
        &mut self,
        partition: PartitionId,
        command: &Command,
    ) -> Result<Reply, LedgerError> {
        let reply = self.execute_one(partition, command);
        self.drain(partition);
        reply
    }

    /// Delivers the message at `index` and takes it off the network.
    pub fn deliver(&mut self, index: usize) {
        let message = self.network.remove(index);
        self.handle(message);
    }

    /// Delivers a copy of the message at `index` and leaves it on the network.
    pub fn duplicate(&mut self, index: usize) {
        let message = self.network[index];
        self.handle(message);
    }

    /// Loses the message at `index`.
    pub fn drop_message(&mut self, index: usize) -> Message {
        self.network.remove(index)
    }

    /// Delivers the first message in flight that satisfies `wanted`; false if there is none.
    pub fn deliver_first(&mut self, wanted: impl Fn(&Message) -> bool) -> bool {
        match self.network.iter().position(wanted) {
            Some(index) => {
                self.deliver(index);
                true
            }
            None => false,
        }
    }

    /// Loses every message in flight (a partition of the network, or a crash of every peer
    /// link); returns how many were lost.
    pub fn drop_all(&mut self) -> usize {
        std::mem::take(&mut self.network).len()
    }

    /// Loses every message in flight and moves the clock by `tick_us`, again and again, until
    /// `done` holds. Panics if it does not within `limit_us` of simulated time.
    pub fn lose_all_until(
        &mut self,
        tick_us: Micros,
        limit_us: Micros,
        done: impl Fn(&Cluster) -> bool,
    ) {
        let deadline = self.now + limit_us;
        while !done(self) {
            assert!(self.now < deadline, "not done within {limit_us} us");
            self.drop_all();
            self.advance(tick_us);
        }
    }

    /// Moves the clock forward by `us` and lets every coordinator do what is due.
    pub fn advance(&mut self, us: Micros) {
        self.advance_to(self.now + us);
    }

    pub fn advance_to(&mut self, now: Micros) {
        assert!(now >= self.now, "time does not go back");
        self.now = now;
        for partition in 0..self.partitions() {
            let p = partition as usize;
            self.coordinators[p].on_tick(now);
            self.drain(partition);
            let mut unresolved = Vec::new();
            let after_us = self.config.resolve_after_us;
            self.watches[p].due(&mut self.ledgers[p], now, after_us, &mut unresolved);
            for transfer in unresolved {
                let home = self.partition_of(&transfer.from);
                self.network.push(Message::Unresolved { home, transfer });
            }
        }
    }

    /// The earliest time any coordinator or credit watch has work to do.
    pub fn next_due(&self) -> Option<Micros> {
        let coordinators = self.coordinators.iter().filter_map(|c| c.next_due());
        let watches = self.watches.iter().filter_map(|w| w.next_due());
        coordinators.chain(watches).min()
    }

    /// No message in flight, no coordinator driving a transfer, no credit pending.
    pub fn is_idle(&self) -> bool {
        let pending = |ledger: &Ledger| {
            ledger
                .credits()
                .any(|(_, credit)| credit.state == CreditState::Tried)
        };
        self.network.is_empty()
            && self.coordinators.iter().all(|c| c.in_flight() == 0)
            && !self.ledgers.iter().any(pending)
    }

    /// Heals the network: delivers every message in the order sent, without loss, and moves
    /// the clock to the next due time whenever nothing is in flight, until the cluster is idle
    /// or `steps_max` steps have run. Returns whether it became idle.
    pub fn settle(&mut self, steps_max: usize) -> bool {
        for _ in 0..steps_max {
            if !self.network.is_empty() {
                self.deliver(0);
                continue;
            }
            match self.next_due() {
                Some(due) => self.advance_to(due.max(self.now)),
                None => return true,
            }
        }
        self.is_idle()
    }

    /// Crashes and restarts `partition`: its ledger is rebuilt by replaying its log and its
    /// coordinator from the unfinished phase rows. Messages in flight are not touched.
    pub fn restart(&mut self, partition: PartitionId) {
        let p = partition as usize;
        let mut ledger = Ledger::new(partition, self.partitions());
        for applied in self.history.iter().filter(|a| a.partition == partition) {
            if let Err(error) = ledger.apply(applied.meta, &applied.event) {
                self.violations.push(Violation::Replay {
                    partition,
                    detail: format!("restart: {error}"),
                });
                return;
            }
        }
        self.coordinators[p] = Coordinator::rebuild(
            self.config,
            self.partitions(),
            &ledger.unfinished_transfers(),
            self.now,
        );
        self.ledgers[p] = ledger;
        // Recovered pending credits are watched like new ones.
        self.watches[p] = CreditWatch::new();
        self.watches[p].mark(&mut self.ledgers[p], self.now, self.config.resolve_after_us);
        self.drain(partition);
    }

    fn handle(&mut self, message: Message) {
        match message {
            Message::Request { home, to, request } => {
                let command = request.command();
                match self.execute_one(to, &command) {
                    Ok(Reply::Phase(result)) => {
                        let response = PhaseResponse {
                            phase: request.phase,
                            key: request.transfer.key(),
                            result,
                        };
                        self.answers.push(response);
                        if destination_answers(request.phase, result) {
                            self.network.push(Message::Response { home, response });
                        }
                    }
                    Ok(other) => panic!("{command:?} answered {other:?}"),
                    Err(error) => self.refused.push((to, command, error)),
                }
                self.drain(to);
            }
            Message::Response { home, response } => {
                self.coordinators[home as usize].on_response(&response, self.now);
                self.drain(home);
            }
            Message::Unresolved { home, transfer } => self.unresolved(home, transfer),
        }
    }

    /// The home's answer to a destination's question, as the partition machine gives it.
    fn unresolved(&mut self, home: PartitionId, transfer: Transfer) {
        let p = home as usize;
        if !self.coordinators[p].on_unresolved(&transfer, self.now) {
            let status = match self.execute_one(home, &Command::Abandon(transfer)) {
                Ok(Reply::Transfer(status)) => status,
                other => panic!("an abandon answered {other:?}"),
            };
            let row_body = self.ledgers[p]
                .transfer(&transfer.key())
                .map(|r| r.transfer);
            if let Some(phase) = unresolved_answer(status, row_body, &transfer) {
                let request = PhaseRequest { phase, transfer };
                self.sent.push(Sent {
                    at: self.now,
                    home,
                    request,
                });
                let to = self.partition_of(&transfer.to);
                self.network.push(Message::Request { home, to, request });
            }
        }
        self.drain(home);
    }

    /// Decides and applies one command, and shows each applied event to the coordinator.
    fn execute_one(
        &mut self,
        partition: PartitionId,
        command: &Command,
    ) -> Result<Reply, LedgerError> {
        let p = partition as usize;
        let mut events = Vec::new();
        let reply = self.ledgers[p].decide(command, &mut events)?;
        let meta = RecordMeta {
            lsn: self.ledgers[p].last_applied().lsn + 1,
            timestamp: self.now,
        };
        for event in events {
            if let Err(error) = self.ledgers[p].apply(meta, &event) {
                self.violations
                    .push(invariants::apply_failed(partition, error));
                break;
            }
            self.coordinators[p].on_event(&event, meta.lsn, self.now);
            self.history.push(Applied {
                partition,
                meta,
                event,
            });
        }
        let after_us = self.config.resolve_after_us;
        self.watches[p].mark(&mut self.ledgers[p], self.now, after_us);
        Ok(reply)
    }

    /// Handles every output of `partition`'s coordinator, including those that its own
    /// commands cause.
    fn drain(&mut self, partition: PartitionId) {
        let p = partition as usize;
        for _ in 0..DRAIN_OUTPUTS_MAX {
            let Some(output) = self.coordinators[p].poll_output() else {
                return;
            };
            match output {
                Output::Send {
                    partition: to,
                    request,
                } => {
                    self.sent.push(Sent {
                        at: self.now,
                        home: partition,
                        request,
                    });
                    // Logs apply at once here, so a decision is durable once it is applied.
                    let message = PeerMessage::Request {
                        from: partition,
                        request,
                    };
                    if let Err(violation) =
                        invariants::decisions_logged(&self.ledgers[p], &[message])
                    {
                        self.violations.push(violation);
                    }
                    self.network.push(Message::Request {
                        home: partition,
                        to,
                        request,
                    });
                }
                Output::Execute(command) => {
                    self.executed.push((self.now, command.clone()));
                    if let Err(error) = self.execute_one(partition, &command) {
                        self.violations.push(Violation::Protocol {
                            key: None,
                            detail: format!("partition {partition} refused its coordinator's {command:?}: {error}"),
                        });
                    }
                }
                // Logs apply at once here: the debit is durable, and the destination's
                // Tried was; `committed` records who was told.
                // and the Confirm leaves at once, as the partition machine sends it.
                Output::Committed { transfer, .. } => {
                    self.committed.push(transfer.key());
                    let request = PhaseRequest {
                        phase: Phase::Confirm,
                        transfer,
                    };
                    self.sent.push(Sent {
                        at: self.now,
                        home: partition,
                        request,
                    });
                    let to = self.partition_of(&transfer.to);
                    self.network.push(Message::Request {
                        home: partition,
                        to,
                        request,
                    });
                }
                Output::Violation { key, detail } => {
                    self.violations.push(Violation::Protocol {
                        key: Some(key),
                        detail,
                    });
                }
            }
        }
        panic!("partition {partition}: coordinator outputs did not settle");
    }
}
