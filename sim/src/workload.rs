//! Simulated clients: open accounts, deposit, and run random same- and cross-partition
//! transfers, retrying with the same transaction id after a timeout or an unavailable
//! partition, refunding transfers they saw committed (racing each other at times, see
//! [`crate::refunds`]), placing holds and capturing, voiding or leaving them to expire (see
//! [`crate::holds`]), sending some invalid requests whose error they know in advance, and
//! now and then taking an account of their own through a decision boundary
//! ([`crate::edges`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::oneshot;
use walletd_core::ledger::{Command, Reply, TransferStatus};
use walletd_core::model::event::{Transfer, TransferKey};
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency, AMOUNT_MINOR_MAX};
use walletd_core::model::partition::{partition_of, PartitionId};
use walletd_core::model::transaction::Transaction;
use walletd_runtime::driver::{wall_clock_us, CommandResult, Query, QueryAnswer};

use crate::config::SimConfig;
use crate::edges::Episode;
use crate::history::{is_business_refusal, Attempt, BalanceRead, Expect, History, Outcome};
use crate::holds::{HoldExpect, Plan};
use crate::network::{Answer, HostId, Network, Request, Route};
use crate::transactions::TxExpect;

/// First backoff after a failed attempt; doubles up to `BACKOFF_MAX`.
const BACKOFF_INITIAL: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(1_600);
/// Largest amount of one transfer, in minor units (balances start at 5,000..50,000).
const TRANSFER_MINOR_MAX: u64 = 8_000;
/// Attempts of each setup request (made before any fault: the first one normally succeeds).
const SETUP_ATTEMPTS_MAX: u32 = 20;
/// Ops a client remembers for idempotent repeats and conflicting reuses.
const REMEMBERED_MAX: usize = 256;
/// How often a prober looks for a server node cut off from its peers.
const PROBER_POLL: Duration = Duration::from_millis(5);
/// How long a probe waits for the cut-off node's answer to a read: a node that still takes
/// itself for its group's leader answers at once or not at all (it cannot reach a majority
/// to confirm that it leads, and its answers may wait behind a write it cannot commit).
const PROBE_READ_TIMEOUT: Duration = Duration::from_millis(200);
/// A probe's deposit is retried quickly, on short timeouts, so that it is acknowledged soon
/// after the group's new leader is elected, while the cut-off node may still take itself for
/// the leader: a forwarded request waits as long as the leader it was forwarded to is cut
/// off, past any election.
const PROBE_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(100);
const PROBE_PAUSE: Duration = Duration::from_millis(10);
/// Pause between two probes of one prober.
const PROBE_GAP: Duration = Duration::from_millis(20);
const PROBE_ATTEMPTS_MAX: u32 = 40;

/// An account of the workload and its currency.
#[derive(Debug, Clone, Copy)]
pub struct AccountSpec {
    pub id: AccountId,
    pub currency: Currency,
}

/// The accounts of a run: most in USD, every eighth in EUR, one in JPY.
pub fn accounts(count: u32) -> Vec<AccountSpec> {
    (0..count)
        .map(|i| AccountSpec {
            id: AccountId::new(&format!("acct-{i:03}")).expect("valid id"),
            currency: match i {
                5 => Currency::JPY,
                i if i % 8 == 7 => Currency::EUR,
                _ => Currency::USD,
            },
        })
        .collect()
}

fn amount(minor: u64) -> Amount {
    Amount::from_minor(minor).expect("a positive amount in range")
}

/// Sends requests from one host over the simulated network, to the gateway of any node.
#[derive(Clone)]
pub struct Requester {
    pub net: Arc<Network>,
    pub host: HostId,
    pub route: Route,
    pub partitions: u32,
    pub timeout: Duration,
}

impl Requester {
    /// One attempt of `command` (transfers wait for their outcome), sent as a single command
    /// or, with `as_group`, as a batch of one (the path of the batch endpoint).
    pub async fn attempt(&self, command: &Command, as_group: bool) -> Attempt {
        let sent_us = wall_clock_us();
        let (reply, answer) = oneshot::channel();
        let request = Request::Command {
            command: command.clone(),
            wait: true,
            group: as_group,
        };
        self.net.request(self.host, self.route, request, reply);
        let outcome = match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(Answer::Command(result))) => Outcome::Answer(result),
            Ok(Ok(Answer::Query(_))) => unreachable!("a command is answered as one"),
            Ok(Err(_)) => Outcome::Unavailable,
            Err(_) => Outcome::Timeout,
        };
        Attempt {
            sent_us,
            done_us: wall_clock_us(),
            outcome,
        }
    }

    /// One attempt of a query; `None` if it got no answer.
    pub async fn query(&self, partition: PartitionId, query: &Query) -> Option<QueryAnswer> {
        let (reply, answer) = oneshot::channel();
        let request = Request::Query {
            partition,
            query: query.clone(),
        };
        self.net.request(self.host, self.route, request, reply);
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(Answer::Query(answer))) => Some(answer),
            _ => None,
        }
    }

    /// Runs `command` until it gets a settled answer or `attempts_max` attempts are spent,
    /// recording every attempt as op `op` of `history`.
    pub async fn execute(
        &self,
        history: &History,
        op: usize,
        command: &Command,
        attempts_max: u32,
        rng: &mut ChaCha8Rng,
    ) -> Option<CommandResult> {
        let mut backoff = BACKOFF_INITIAL;
        for _ in 0..attempts_max {
            let attempt = self.attempt(command, rng.gen_bool(0.5)).await;
            let outcome = attempt.outcome.clone();
            history.attempt(op, attempt);
            match outcome {
                Outcome::Answer(result) if crate::history::unsettled(&result) => {}
                Outcome::Answer(result) => return Some(result),
                Outcome::Unavailable | Outcome::Timeout => {}
            }
            let jitter = rng.gen_range(0..=backoff.as_millis() as u64);
            tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        None
    }
}

/// Opens every account and funds it, before any fault starts. Retries until done.
pub async fn setup(
    requester: &Requester,
    history: &History,
    specs: &[AccountSpec],
    rng: &mut ChaCha8Rng,
) {
    for spec in specs {
        let open = Command::OpenAccount {
            account: spec.id,
            currency: spec.currency,
        };
        let op = history.start(u32::MAX, &open, Expect::Valid);
        let opened = requester
            .execute(history, op, &open, SETUP_ATTEMPTS_MAX, rng)
            .await;
        assert!(
            opened.is_some_and(|result| result.is_ok()),
            "setup could not open {} (no faults are on yet)",
            spec.id
        );
        let funds = match spec.currency {
            Currency::JPY => rng.gen_range(1_000..=10_000),
            _ => rng.gen_range(5_000..=50_000),
        };
        let deposit = Command::Deposit {
            account: spec.id,
            amount: amount(funds),
            currency: spec.currency,
            transaction_id: TransactionId::new("setup").expect("valid id"),
        };
        let op = history.start(u32::MAX, &deposit, Expect::Valid);
        let funded = requester
            .execute(history, op, &deposit, SETUP_ATTEMPTS_MAX, rng)
            .await;
        assert!(
            funded.is_some_and(|result| result.is_ok()),
            "setup could not fund {} (no faults are on yet)",
            spec.id
        );
    }
}

/// One simulated client.
pub struct Client {
    pub index: u32,
    pub requester: Requester,
    pub history: History,
    pub specs: Arc<[AccountSpec]>,
    pub rng: ChaCha8Rng,
    pub stop: Arc<AtomicBool>,
    pub think_max: Duration,
    pub attempts_max: u32,
    next_id: u64,
    /// Edge episodes run so far (each opens its own account).
    episodes: u64,
    /// Recent ops that got a settled answer, a success or a business refusal: candidates for
    /// repeats (which must get the same answer, however the accounts changed since) and
    /// reuses of their ids with another body.
    answered: Vec<(Command, CommandResult)>,
    /// Holds this client was told are held, and how and when it will end each.
    plans: Vec<Plan>,
    /// Holds this client placed and was answered: candidates for repeats, which must get a
    /// hold's status, and for reuses of their ids with another body.
    placed: Vec<Command>,
    /// Transactions whose request got no settled answer (their home may have lost them, as
    /// a Try leaves before the home's record is durable): candidates for reuses of their ids
    /// with other legs, which must never mix the two sets of legs.
    unanswered: Vec<Arc<Transaction>>,
    /// The last of `unanswered` was given up by an impatient client: its next request
    /// reuses its id with other legs, as a client that changed its mind would, soon after
    /// whatever cut the first short (a crash may have taken the home's record of it).
    reuse_next: bool,
}

impl Client {
    pub fn new(
        config: &SimConfig,
        index: u32,
        requester: Requester,
        history: History,
        specs: Arc<[AccountSpec]>,
        rng: ChaCha8Rng,
        stop: Arc<AtomicBool>,
    ) -> Client {
        Client {
            index,
            requester,
            history,
            specs,
            rng,
            stop,
            think_max: config.think_max,
            attempts_max: config.client_attempts_max,
            next_id: 0,
            episodes: 0,
            answered: Vec::new(),
            plans: Vec::new(),
            placed: Vec::new(),
            unanswered: Vec::new(),
            reuse_next: false,
        }
    }

    /// Runs requests until told to stop. A planned end of a hold that falls due before the
    /// next request goes first, sent at its time (a race with an expiry is a matter of
    /// milliseconds).
    pub async fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let think = self.rng.gen_range(0..=self.think_max.as_micros() as u64);
            let now_us = wall_clock_us();
            let due = (self.plans.iter().enumerate())
                .filter(|(_, plan)| plan.due_us <= now_us + think)
                .min_by_key(|(_, plan)| plan.due_us)
                .map(|(i, plan)| (i, plan.due_us));
            if let Some((i, due_us)) = due {
                let wait = due_us.saturating_sub(now_us);
                tokio::time::sleep(Duration::from_micros(wait)).await;
                let plan = self.plans.swap_remove(i);
                self.end_hold(plan).await;
                continue;
            }
            tokio::time::sleep(Duration::from_micros(think)).await;
            self.step().await;
        }
    }

    /// A prober (replicated runs): sends nothing until a server node is cut off from the
    /// other server nodes, then probes it (see [`Client::probe`]) until it is back.
    pub async fn run_prober(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            match self.requester.net.faults().isolated {
                Some(isolated) if !isolated.led.is_empty() => {
                    self.probe(isolated.node, &isolated.led).await;
                    tokio::time::sleep(PROBE_GAP).await;
                }
                _ => tokio::time::sleep(PROBER_POLL).await,
            }
        }
    }

    fn fresh_id(&mut self) -> TransactionId {
        self.next_id += 1;
        TransactionId::new(&format!("c{}-{}", self.index, self.next_id)).expect("valid id")
    }

    fn pick(&mut self) -> AccountSpec {
        *self.specs.choose(&mut self.rng).expect("accounts")
    }

    /// A second account with the same currency as `from` (it exists: USD has many).
    fn pick_other(&mut self, from: AccountSpec, same_partition: bool) -> Option<AccountSpec> {
        let partitions = self.requester.partitions;
        let candidates: Vec<AccountSpec> = self
            .specs
            .iter()
            .filter(|s| s.id != from.id && s.currency == from.currency)
            .filter(|s| {
                !same_partition
                    || partition_of(&s.id, partitions) == partition_of(&from.id, partitions)
            })
            .copied()
            .collect();
        candidates.choose(&mut self.rng).copied()
    }

    /// An account id that is never opened, on the partition `partition` if given.
    fn ghost(&mut self, partition: Option<PartitionId>) -> AccountId {
        let partitions = self.requester.partitions;
        loop {
            let n: u32 = self.rng.gen_range(0..1_000_000);
            let id = AccountId::new(&format!("ghost-{n}")).expect("valid id");
            if partition.is_none_or(|p| partition_of(&id, partitions) == p) {
                return id;
            }
        }
    }

    fn transfer(&mut self, from: AccountId, to: AccountId, currency: Currency) -> Command {
        let minor = match currency {
            Currency::JPY => self.rng.gen_range(1..=2_000),
            _ => self.rng.gen_range(1..=TRANSFER_MINOR_MAX),
        };
        Command::Transfer(Transfer {
            transaction_id: self.fresh_id(),
            from,
            to,
            amount: amount(minor),
            currency,
        })
    }

    async fn step(&mut self) {
        let roll = self.rng.gen_range(0..100);
        // The transfer a refund refunds.
        let mut refunding = None;
        let mut attempts = self.attempts_max;
        let reuse = std::mem::take(&mut self.reuse_next);
        let (command, expect) = match roll {
            _ if reuse && !self.unanswered.is_empty() => {
                let first = self.unanswered.pop().expect("not empty");
                let Some(command) = crate::transactions::other_legs(&first) else {
                    return;
                };
                (command, Expect::Transaction(TxExpect::Reused))
            }
            0..=4 => return self.hold_step().await,
            5 if !self.unanswered.is_empty() => {
                let i = self.rng.gen_range(0..self.unanswered.len());
                let first = self.unanswered.swap_remove(i);
                let Some(command) = crate::transactions::other_legs(&first) else {
                    return;
                };
                (command, Expect::Transaction(TxExpect::Reused))
            }
            5..=8 => {
                let id = self.fresh_id();
                let ghost = self.ghost(None);
                let built = crate::transactions::build(&mut self.rng, &self.specs, id, ghost);
                let Some((command, expect)) = built else {
                    return;
                };
                // An impatient client gives up after one attempt and may reuse the id with
                // other legs: soon after a crash that took the home's record of the first.
                if self.rng.gen_bool(0.5) {
                    attempts = 1;
                }
                (command, Expect::Transaction(expect))
            }
            9..=52 => {
                let from = self.pick();
                let same = self.rng.gen_bool(0.25);
                let Some(to) = self
                    .pick_other(from, same)
                    .or_else(|| self.pick_other(from, false))
                else {
                    return;
                };
                (self.transfer(from.id, to.id, from.currency), Expect::Valid)
            }
            53..=58 => {
                let picked = self.history.lock().board.pick(&mut self.rng);
                let Some(original) = picked else {
                    return;
                };
                refunding = Some(original);
                let asked = crate::refunds::asked(&mut self.rng, original.amount.minor());
                let id = self.fresh_id();
                let partitions = self.requester.partitions;
                crate::refunds::refund(&self.history, id, &original, asked, partitions)
            }
            59..=62 => return self.edge_episode().await,
            63..=69 => {
                let spec = self.pick();
                let minor = self.rng.gen_range(1..=5_000);
                let command = Command::Deposit {
                    account: spec.id,
                    amount: amount(minor),
                    currency: spec.currency,
                    transaction_id: self.fresh_id(),
                };
                (command, Expect::Valid)
            }
            70..=74 => {
                let spec = self.pick();
                let minor = self.rng.gen_range(1..=6_000);
                let command = Command::Withdraw {
                    account: spec.id,
                    amount: amount(minor),
                    currency: spec.currency,
                    transaction_id: self.fresh_id(),
                };
                (command, Expect::Valid)
            }
            75..=79 => return self.read_balance().await,
            80..=86 => match self.answered.choose(&mut self.rng).cloned() {
                Some((command, reply)) => (command, Expect::Same(reply)),
                None => return,
            },
            87..=90 => match self.conflicting() {
                Some(command) => (command, Expect::Error("Conflict")),
                None => return,
            },
            _ => self.invalid(),
        };
        // Requests whose answers may be repeated (or their ids reused): new ones.
        let valid = matches!(
            expect,
            Expect::Valid | Expect::Refund { .. } | Expect::Transaction(_)
        );
        let op = self.history.start(self.index, &command, expect.clone());
        // One transfer in four has its body read beside it (`Query::TransferBody`): the
        // read often reaches the home while the transfer's
        // record is not yet durable, and must then wait for it. Chosen by the id, not the
        // random stream.
        let body_read = match &command {
            Command::Transfer(t) if self.next_id % 4 == 0 => Some(t.key()),
            _ => None,
        };
        let execute =
            (self.requester).execute(&self.history, op, &command, attempts, &mut self.rng);
        let read = read_body(&self.requester, &self.history, self.index, body_read);
        let (reply, ()) = tokio::join!(execute, read);
        if reply == Some(Ok(Reply::Transfer(TransferStatus::Committed))) {
            // A transfer between shared accounts, or a refund of one, that others may refund.
            let committed = match (&command, refunding) {
                (Command::Transfer(t), _) if expect == Expect::Valid => Some(*t),
                (Command::Refund(r), Some(original)) => r
                    .amount
                    .map(|a| crate::refunds::refund_body(r, &original, a)),
                _ => None,
            };
            if let Some(transfer) = committed {
                self.history.lock().board.publish(transfer);
            }
        }
        let settled = reply.filter(|result| match result {
            Ok(_) => true,
            Err(error) => is_business_refusal(error),
        });
        if let (Command::Transact(tx), None, Expect::Transaction(TxExpect::Valid)) =
            (&command, &settled, &expect)
        {
            if self.unanswered.len() == REMEMBERED_MAX {
                let i = self.rng.gen_range(0..REMEMBERED_MAX);
                drop(self.unanswered.swap_remove(i));
            }
            self.unanswered.push(tx.clone());
            self.reuse_next = attempts == 1 && self.rng.gen_bool(0.5);
        }
        if let (Some(reply), true) = (settled, valid) {
            if self.answered.len() == REMEMBERED_MAX {
                let i = self.rng.gen_range(0..REMEMBERED_MAX);
                drop(self.answered.swap_remove(i));
            }
            self.answered.push((command, reply));
        }
    }

    /// A hold request: mostly a new hold, else a repeat of one placed before, a reuse of
    /// its id with another body, or a capture of what is no hold.
    async fn hold_step(&mut self) {
        let (command, expect) = match self.rng.gen_range(0..20) {
            0..=15 => return self.place_hold().await,
            16 => match self.placed.choose(&mut self.rng) {
                Some(command) => (command.clone(), Expect::Hold(HoldExpect::Place)),
                None => return,
            },
            17 => match self.placed.choose(&mut self.rng).cloned() {
                Some(Command::Hold(mut hold)) => {
                    let minor = hold.transfer.amount.minor();
                    hold.transfer.amount = amount(if minor > 1 { minor - 1 } else { 2 });
                    (Command::Hold(hold), Expect::Error("Conflict"))
                }
                _ => return,
            },
            // A capture of an id never used, and a void of a transfer (no hold).
            18 => {
                let key = walletd_core::model::event::TransferKey {
                    from: self.pick().id,
                    transaction_id: self.fresh_id(),
                };
                let command = Command::Capture { key, amount: None };
                (command, Expect::Error("UnknownTransfer"))
            }
            _ => match self.answered.iter().find_map(|(c, r)| match (c, r) {
                (Command::Transfer(t), Ok(Reply::Transfer(TransferStatus::Committed))) => {
                    Some(t.key())
                }
                _ => None,
            }) {
                Some(key) => (Command::Void { key }, Expect::Error("NotAHold")),
                None => return,
            },
        };
        let op = self.history.start(self.index, &command, expect);
        let attempts = self.attempts_max;
        (self.requester)
            .execute(&self.history, op, &command, attempts, &mut self.rng)
            .await;
    }

    /// Places a new hold, within or across partitions (now and then to an account that does
    /// not exist, on another partition: its placement is cancelled), and plans its end if
    /// it is held.
    async fn place_hold(&mut self) {
        let from = self.pick();
        let same = self.rng.gen_bool(0.4);
        let to = if self.rng.gen_ratio(1, 20) {
            let home = partition_of(&from.id, self.requester.partitions);
            let other = (0..self.requester.partitions).find(|p| *p != home);
            self.ghost(other)
        } else {
            match self
                .pick_other(from, same)
                .or_else(|| self.pick_other(from, false))
            {
                Some(to) => to.id,
                None => return,
            }
        };
        let Command::Transfer(hold) = self.transfer(from.id, to, from.currency) else {
            unreachable!("a transfer command");
        };
        let expires_in_us = crate::holds::expires_in_us(&mut self.rng);
        let command = crate::holds::place(hold, expires_in_us);
        let op = (self.history).start(self.index, &command, Expect::Hold(HoldExpect::Place));
        let attempts = self.attempts_max;
        let reply = (self.requester)
            .execute(&self.history, op, &command, attempts, &mut self.rng)
            .await;
        // Only a hold its home answered is surely recorded there (or refused for good):
        // a reuse of the id of one that never arrived would be a new hold, no conflict.
        if matches!(reply, Some(Ok(Reply::Transfer(_)))) {
            if self.placed.len() == REMEMBERED_MAX {
                let i = self.rng.gen_range(0..REMEMBERED_MAX);
                drop(self.placed.swap_remove(i));
            }
            self.placed.push(command.clone());
        }
        if reply != Some(Ok(Reply::Transfer(TransferStatus::Held))) {
            return;
        }
        // The home's expiry, to aim at; else the latest it can be.
        let partition = partition_of(&hold.from, self.requester.partitions);
        let query = Query::HoldTerms(hold.key());
        let expires_at = match self.requester.query(partition, &query).await {
            Some(QueryAnswer::HoldTerms(Some(terms))) => terms.expires_at,
            _ => wall_clock_us() + expires_in_us,
        };
        if self.plans.len() < crate::holds::PLANS_MAX {
            let plan = crate::holds::plan(&mut self.rng, hold, expires_at, wall_clock_us());
            self.plans.push(plan);
        }
    }

    /// Carries out `plan`: ends its hold, and plans a second end if it asks for one.
    async fn end_hold(&mut self, plan: Plan) {
        let (command, expect) = plan.command(wall_clock_us(), &mut self.rng);
        let op = (self.history).start(self.index, &command, Expect::Hold(expect));
        let attempts = self.attempts_max;
        let reply = (self.requester)
            .execute(&self.history, op, &command, attempts, &mut self.rng)
            .await;
        if plan.racing {
            self.history.lock().hold_counts.race(reply.as_ref());
        }
        let next = match plan.end {
            // Refused: the hold is still to end.
            crate::holds::End::Beyond => Some(crate::holds::plan(
                &mut self.rng,
                plan.hold,
                plan.expires_at,
                wall_clock_us(),
            )),
            _ if plan.again && reply.is_some() => {
                Some(crate::holds::again(&plan, &mut self.rng, wall_clock_us()))
            }
            _ => None,
        };
        if let Some(next) = next.filter(|_| self.plans.len() < crate::holds::PLANS_MAX) {
            self.plans.push(next);
        }
    }

    /// Takes a fresh account of this client's through one decision boundary.
    async fn edge_episode(&mut self) {
        self.episodes += 1;
        Episode::new(
            self.index,
            self.episodes,
            &self.requester,
            &self.history,
            &mut self.rng,
            self.attempts_max,
            &self.specs,
        )
        .run()
        .await;
    }

    /// A request that reuses the transaction id of an answered op with another body.
    fn conflicting(&mut self) -> Option<Command> {
        let (command, _) = self.answered.choose(&mut self.rng).cloned()?;
        let bump = |a: Amount| amount(if a.minor() > 1 { a.minor() - 1 } else { 2 });
        Some(match command {
            Command::Transfer(mut t) => {
                t.amount = bump(t.amount);
                Command::Transfer(t)
            }
            Command::Deposit {
                account,
                amount,
                currency,
                transaction_id,
            } => Command::Deposit {
                account,
                amount: bump(amount),
                currency,
                transaction_id,
            },
            Command::Withdraw {
                account,
                amount,
                currency,
                transaction_id,
            } => Command::Withdraw {
                account,
                amount: bump(amount),
                currency,
                transaction_id,
            },
            // Another amount: with none asked (all that was left), the largest there is,
            // which no refund here was recorded with. (Another original would not do: the
            // refund's key is found from its original.)
            Command::Refund(mut r) => {
                r.amount = Some(match r.amount {
                    Some(a) => bump(a),
                    None => amount(AMOUNT_MINOR_MAX),
                });
                Command::Refund(r)
            }
            Command::Transact(tx) => crate::transactions::other_legs(&tx)?,
            _ => return None,
        })
    }

    /// A request with a mistake whose answer is known in advance.
    fn invalid(&mut self) -> (Command, Expect) {
        let partitions = self.requester.partitions;
        let from = self.pick();
        let from_partition = partition_of(&from.id, partitions);
        match self.rng.gen_range(0..6) {
            0 => {
                let ghost = self.ghost(None);
                let to = self.pick();
                (
                    self.transfer(ghost, to.id, to.currency),
                    Expect::Error("AccountNotFound"),
                )
            }
            1 => {
                let ghost = self.ghost(Some(from_partition));
                (
                    self.transfer(from.id, ghost, from.currency),
                    Expect::Error("AccountNotFound"),
                )
            }
            2 => {
                let other = (0..partitions).find(|p| *p != from_partition);
                let ghost = self.ghost(other);
                let expect = if other.is_some() {
                    Expect::NotCommitted
                } else {
                    Expect::Error("AccountNotFound")
                };
                (self.transfer(from.id, ghost, from.currency), expect)
            }
            3 => {
                let wrong = if from.currency == Currency::EUR {
                    Currency::USD
                } else {
                    Currency::EUR
                };
                let mut to = self.pick();
                while to.id == from.id {
                    to = self.pick();
                }
                (
                    self.transfer(from.id, to.id, wrong),
                    Expect::Error("CurrencyMismatch"),
                )
            }
            4 => (
                self.transfer(from.id, from.id, from.currency),
                Expect::Error("SameAccount"),
            ),
            _ => {
                // A destination that holds another currency.
                let to = self
                    .specs
                    .iter()
                    .filter(|s| s.currency != from.currency)
                    .copied()
                    .collect::<Vec<_>>()
                    .choose(&mut self.rng)
                    .copied()
                    .expect("accounts in several currencies");
                let expect = if partition_of(&to.id, partitions) == from_partition {
                    Expect::Error("CurrencyMismatch")
                } else {
                    Expect::NotCommitted
                };
                (self.transfer(from.id, to.id, from.currency), expect)
            }
        }
    }

    async fn read_balance(&mut self) {
        let spec = self.pick();
        let requester = self.requester.clone();
        let _ = self.read_through(&requester, spec).await;
    }

    /// Hunts for a stale read while server node `isolated` is cut off from the other server
    /// nodes (clients still reach it): a deposit to an account of `partition` (the one it
    /// led when it was cut off, if it led one) through another node, which the group's new
    /// leader commits once one is elected, then, the moment the deposit is acknowledged, a
    /// read of the account through the cut-off node. Until that node learns that it no
    /// longer leads (an election timeout without a majority, at most), it takes itself for
    /// the leader: it must not answer from its own state, which lacks the deposit.
    async fn probe(&mut self, isolated: HostId, led: &[PartitionId]) {
        let partitions = self.requester.partitions;
        let on_led: Vec<AccountSpec> = (self.specs.iter())
            .filter(|s| led.contains(&partition_of(&s.id, partitions)))
            .copied()
            .collect();
        let Some(&spec) = on_led.choose(&mut self.rng) else {
            return;
        };
        let others: Vec<HostId> = (self.requester.net.gateways().into_iter())
            .filter(|n| *n != isolated)
            .collect();
        let Some(&other) = others.choose(&mut self.rng) else {
            return;
        };
        let minor = match spec.currency {
            Currency::JPY => self.rng.gen_range(1..=10),
            _ => self.rng.gen_range(1..=100),
        };
        let deposit = Command::Deposit {
            account: spec.id,
            amount: amount(minor),
            currency: spec.currency,
            transaction_id: self.fresh_id(),
        };
        let op = self.history.start(self.index, &deposit, Expect::Valid);
        let through_other = Requester {
            route: Route::Node(other),
            timeout: PROBE_ATTEMPT_TIMEOUT,
            ..self.requester.clone()
        };
        self.history.lock().probes.deposits += 1;
        let mut acknowledged = false;
        for _ in 0..PROBE_ATTEMPTS_MAX {
            let still = self.requester.net.faults().isolated;
            if still.is_none_or(|now| now.node != isolated) {
                break;
            }
            let attempt = through_other.attempt(&deposit, false).await;
            let outcome = attempt.outcome.clone();
            self.history.attempt(op, attempt);
            match outcome {
                Outcome::Answer(Ok(Reply::Balance { .. })) => {
                    acknowledged = true;
                    break;
                }
                Outcome::Answer(_) => break,
                Outcome::Unavailable | Outcome::Timeout => {}
            }
            tokio::time::sleep(PROBE_PAUSE).await;
        }
        if !acknowledged {
            return;
        }
        self.history.lock().probes.acknowledged += 1;
        let through_isolated = Requester {
            route: Route::Node(isolated),
            timeout: PROBE_READ_TIMEOUT,
            ..self.requester.clone()
        };
        let answered = self.read_through(&through_isolated, spec).await;
        if answered {
            self.history.lock().probes.answered += 1;
        }
    }

    /// Reads `spec`'s balance through `requester`, and records the answer if one came;
    /// whether one came.
    async fn read_through(&mut self, requester: &Requester, spec: AccountSpec) -> bool {
        let query = Query::Account(spec.id);
        read_and_record(requester, &self.history, self.index, spec.id, query).await
    }
}

/// Reads the body of transfer `key` at its home, if there is one to read, and records the
/// answer if one came (checked by `reads::check_bodies`).
async fn read_body(
    requester: &Requester,
    history: &History,
    client: u32,
    key: Option<TransferKey>,
) {
    if let Some(key) = key {
        let query = Query::TransferBody(key);
        read_and_record(requester, history, client, key.from, query).await;
    }
}

/// Sends `query` (about `account`, or a transfer from it) to the partition of `account`, and
/// records the answer if one came; whether one came.
async fn read_and_record(
    requester: &Requester,
    history: &History,
    client: u32,
    account: AccountId,
    query: Query,
) -> bool {
    let partition = partition_of(&account, requester.partitions);
    let sent_us = wall_clock_us();
    let Some(answer) = requester.query(partition, &query).await else {
        return false;
    };
    history.read(BalanceRead {
        client,
        account,
        sent_us,
        done_us: wall_clock_us(),
        answer,
    });
    true
}
