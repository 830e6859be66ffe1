//! Edge episodes: a client takes an account of its own through one decision boundary of the
//! ledger or the protocol, and records each boundary it saw itself reach ([`Boundary`]).
//!
//! Random amounts rarely land on a boundary: a transfer of exactly the available balance, or
//! of one minor unit more, needs a client that knows the balance. So each episode opens a
//! fresh account that only this client ever uses (a deposit to it already on its way while it
//! is being opened: `open_race`), and funds it: the funding deposit's answer is the available
//! balance, and nothing else moves money in or out. Then one of:
//!
//! - a transfer of the balance plus one (`transfer_over`), then of the balance
//!   (`transfer_exact`);
//! - a withdrawal of the balance plus one (`withdraw_over`), then of the balance
//!   (`withdraw_exact`);
//! - a transfer sent twice, the second attempt while the first is unanswered
//!   (`retry_in_flight`);
//! - a deposit and a balance read sent while it is unanswered (`read_during_sync`);
//! - three concurrent transfers to three partitions, any two of them more than the balance
//!   (`concurrent_drain`);
//! - a transfer to a second account of the episode's own (on the same partition or another),
//!   funded so that it can pay back twice as much; two concurrent refunds of it, each of more
//!   than half (`refund_race`: one committed, the other refused for exceeding what was left;
//!   never both committed); then a refund of one more than what is left, refused, and one of
//!   all that is left, accepted (`refund_rest`).
//!
//! The client knows these answers in advance and holds them against what it is told (an
//! [`Expect`], or a check across answers); the invariants hold them against the logs. A request
//! whose outcome stays unknown ends the episode: the balance is no longer known.

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use walletd_core::ledger::{Command, LedgerError, Reply, TransferStatus};
use walletd_core::model::event::{Reason, Transfer};
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency};
use walletd_core::model::partition::partition_of;
use walletd_runtime::driver::{wall_clock_us, CommandResult, Query, QueryAnswer};

use crate::boundary::Boundary;
use crate::history::{Attempt, BalanceRead, Expect, History, Outcome};
use crate::refunds;
use crate::workload::{AccountSpec, Requester};

/// Largest funding of an episode's account, in minor units (at least 2, so that a drain can
/// split it).
const FUND_MINOR_MAX: u64 = 5_000;
/// Largest delay between a request and the one sent to race it.
const RACE_US_MAX: u64 = 2_000;
/// Transfers racing to drain one account.
const DRAINERS: usize = 3;
/// Times a refund answered `NotRefundable` (its original's credit not yet confirmed) is sent
/// again, and the pause before each.
const NOT_REFUNDABLE_TRIES: u32 = 8;
const NOT_REFUNDABLE_PAUSE: Duration = Duration::from_millis(50);
/// Candidate names of an episode's second account (one on each partition, at least).
const SECOND_ACCOUNT_CANDIDATES: u32 = 1_000;

/// The currency of the episodes' accounts (most of the shared accounts hold it too).
const CURRENCY: Currency = Currency::USD;

fn rejected_for_funds() -> Reply {
    Reply::Transfer(TransferStatus::Rejected(Reason::InsufficientFunds))
}

fn refused_as_exceeding() -> Reply {
    Reply::Transfer(TransferStatus::Rejected(Reason::RefundExceedsOriginal))
}

fn committed() -> Reply {
    Reply::Transfer(TransferStatus::Committed)
}

/// Whether `result` shows a transfer whose debit the home accepted.
fn accepted(result: &CommandResult) -> bool {
    matches!(result, Ok(Reply::Transfer(_))) && *result != Ok(rejected_for_funds())
}

/// One episode of one client.
pub struct Episode<'a> {
    client: u32,
    requester: &'a Requester,
    history: &'a History,
    rng: &'a mut ChaCha8Rng,
    attempts_max: u32,
    /// The episode's account, and the prefix of its transaction ids.
    account: AccountId,
    next_id: u32,
    /// Shared accounts in [`CURRENCY`]: where the episode's transfers go.
    destinations: Vec<AccountSpec>,
}

impl<'a> Episode<'a> {
    /// Episode `number` of client `client`.
    pub fn new(
        client: u32,
        number: u64,
        requester: &'a Requester,
        history: &'a History,
        rng: &'a mut ChaCha8Rng,
        attempts_max: u32,
        specs: &[AccountSpec],
    ) -> Episode<'a> {
        let account = AccountId::new(&format!("edge-c{client}-{number}")).expect("valid id");
        let destinations = specs
            .iter()
            .filter(|s| s.currency == CURRENCY)
            .copied()
            .collect();
        Episode {
            client,
            requester,
            history,
            rng,
            attempts_max,
            account,
            next_id: 0,
            destinations,
        }
    }

    /// Opens and funds the account, then takes it through one boundary.
    pub async fn run(mut self) {
        let Some(balance) = self.open_and_fund().await else {
            return;
        };
        match self.rng.gen_range(0..6) {
            0 => self.transfer_over_then_exact(balance).await,
            1 => self.withdraw_over_then_exact(balance).await,
            2 => self.retry_in_flight(balance).await,
            3 => self.read_during_sync(balance).await,
            4 => self.drain(balance).await,
            _ => self.refund_race(balance).await,
        }
    }

    fn fresh_id(&mut self) -> TransactionId {
        self.next_id += 1;
        TransactionId::new(&format!("{}-{}", self.account, self.next_id)).expect("valid id")
    }

    fn amount(minor: u64) -> Amount {
        Amount::from_minor(minor).expect("a positive amount in range")
    }

    fn deposit(&mut self, minor: u64) -> Command {
        Command::Deposit {
            account: self.account,
            amount: Self::amount(minor),
            currency: CURRENCY,
            transaction_id: self.fresh_id(),
        }
    }

    fn withdraw(&mut self, minor: u64) -> Command {
        Command::Withdraw {
            account: self.account,
            amount: Self::amount(minor),
            currency: CURRENCY,
            transaction_id: self.fresh_id(),
        }
    }

    fn transfer(&mut self, to: AccountId, minor: u64) -> Command {
        Command::Transfer(Transfer {
            transaction_id: self.fresh_id(),
            from: self.account,
            to,
            amount: Self::amount(minor),
            currency: CURRENCY,
        })
    }

    fn destination(&mut self) -> AccountId {
        self.destinations.choose(self.rng).expect("USD accounts").id
    }

    /// Runs `command` as a new op until it is settled; its settled reply, if any.
    async fn settle(&mut self, command: Command, expect: Expect) -> (usize, Option<Reply>) {
        let op = self.history.start(self.client, &command, expect);
        let reply = self.finish(op, command).await;
        (op, reply)
    }

    /// Goes on with op `op` (more attempts, same id) until it is settled; its reply, if it
    /// succeeded.
    async fn finish(&mut self, op: usize, command: Command) -> Option<Reply> {
        let (requester, history) = (self.requester, self.history);
        requester
            .execute(history, op, &command, self.attempts_max, self.rng)
            .await
            .and_then(Result::ok)
    }

    /// Whether any answer of op `op` satisfies `test`.
    fn saw(&self, op: usize, test: impl Fn(&CommandResult) -> bool) -> bool {
        self.history.lock().ops[op]
            .answers()
            .any(|(_, result)| test(result))
    }

    /// Opens the account while a first deposit to it races the open; funds it if that
    /// deposit came first. The available balance, when it is known.
    async fn open_and_fund(&mut self) -> Option<u64> {
        let open = Command::OpenAccount {
            account: self.account,
            currency: CURRENCY,
        };
        let open_op = self.history.start(self.client, &open, Expect::Valid);
        let funds = self.rng.gen_range(2..=FUND_MINOR_MAX);
        let first = self.deposit(funds);
        let raced_op = self.history.start(self.client, &first, Expect::Valid);
        let (requester, history, attempts) = (self.requester, self.history, self.attempts_max);
        let (opened, raced) = tokio::join!(
            requester.execute(history, open_op, &open, attempts, self.rng),
            requester.attempt(&first, false),
        );
        let raced_answer = answer(&raced);
        self.history.attempt(raced_op, raced);
        let raced_answer = raced_answer?;
        self.history.hit(Boundary::OpenRace);
        opened?.ok()?;
        match raced_answer {
            Ok(Reply::Balance { balance }) if balance != funds => {
                let detail =
                    format!("the first deposit of {funds} to a new account left {balance}");
                self.history.violation(raced_op, "oracle", detail);
                None
            }
            Ok(Reply::Balance { balance }) => Some(balance),
            Err(LedgerError::AccountNotFound(_)) => {
                let funds = self.rng.gen_range(2..=FUND_MINOR_MAX);
                let funding = self.deposit(funds);
                match self.settle(funding, Expect::Valid).await {
                    (_, Some(Reply::Balance { balance })) => Some(balance),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    async fn transfer_over_then_exact(&mut self, balance: u64) {
        let to = self.destination();
        let over = self.transfer(to, balance + 1);
        let expect = Expect::Exactly(rejected_for_funds());
        if self.settle(over, expect).await.1 != Some(rejected_for_funds()) {
            return;
        }
        self.history.hit(Boundary::TransferOver);
        let exact = self.transfer(to, balance);
        let (op, _) = self.settle(exact, Expect::Accepted).await;
        if self.saw(op, accepted) {
            self.history.hit(Boundary::TransferExact);
        }
    }

    async fn withdraw_over_then_exact(&mut self, balance: u64) {
        let over = self.withdraw(balance + 1);
        let (op, _) = self.settle(over, Expect::Error("InsufficientFunds")).await;
        if !self.saw(op, |r| {
            matches!(r, Err(LedgerError::InsufficientFunds { .. }))
        }) {
            return;
        }
        self.history.hit(Boundary::WithdrawOver);
        let zero = Reply::Balance { balance: 0 };
        let exact = self.withdraw(balance);
        if self.settle(exact, Expect::Exactly(zero)).await.1 == Some(zero) {
            self.history.hit(Boundary::WithdrawExact);
        }
    }

    async fn retry_in_flight(&mut self, balance: u64) {
        let to = self.destination();
        let amount = self.rng.gen_range(1..=balance);
        let command = self.transfer(to, amount);
        let op = self.history.start(self.client, &command, Expect::Accepted);
        let delay = Duration::from_micros(self.rng.gen_range(0..=RACE_US_MAX));
        let as_group = self.rng.gen_bool(0.5);
        let requester = self.requester;
        let (first, second) = tokio::join!(requester.attempt(&command, as_group), async {
            tokio::time::sleep(delay).await;
            requester.attempt(&command, !as_group).await
        });
        let in_flight = second.sent_us < first.done_us;
        let answers = [answer(&first), answer(&second)];
        self.history.attempt(op, first);
        self.history.attempt(op, second);
        if let [Some(a), Some(b)] = &answers {
            if in_flight {
                self.history.hit(Boundary::RetryInFlight);
            }
            let settled = |r: &CommandResult| *r != Ok(Reply::Transfer(TransferStatus::Pending));
            if settled(a) && settled(b) && a != b {
                let detail = format!("two attempts of one request answered {a:?} and {b:?}");
                self.history.violation(op, "exactly_once", detail);
            }
        }
        if !self.saw(op, |r| {
            accepted(r) && *r != Ok(Reply::Transfer(TransferStatus::Pending))
        }) {
            self.finish(op, command).await;
        }
    }

    async fn read_during_sync(&mut self, balance: u64) {
        let minor = self.rng.gen_range(1..=FUND_MINOR_MAX);
        let after = Reply::Balance {
            balance: balance + minor,
        };
        let deposit = self.deposit(minor);
        let op = self
            .history
            .start(self.client, &deposit, Expect::Exactly(after));
        let delay = Duration::from_micros(self.rng.gen_range(0..=RACE_US_MAX / 2));
        let (requester, account) = (self.requester, self.account);
        let partition = partition_of(&account, requester.partitions);
        let (written, (sent_us, read, done_us)) =
            tokio::join!(requester.attempt(&deposit, false), async {
                tokio::time::sleep(delay).await;
                let sent_us = wall_clock_us();
                let read = requester.query(partition, &Query::Account(account)).await;
                (sent_us, read, wall_clock_us())
            });
        let wrote = answer(&written) == Some(Ok(after));
        let during = sent_us < written.done_us;
        self.history.attempt(op, written);
        if let Some(answer) = read {
            let saw_it =
                matches!(answer, QueryAnswer::Account(Some(a)) if a.balance == balance + minor);
            if wrote && during && saw_it {
                self.history.hit(Boundary::ReadDuringSync);
            }
            self.history.read(BalanceRead {
                client: self.client,
                account,
                sent_us,
                done_us,
                answer,
            });
        }
        if !wrote {
            self.finish(op, deposit).await;
        }
    }

    async fn drain(&mut self, balance: u64) {
        let amount = balance / 2 + 1;
        let mut pool = self.destinations.clone();
        pool.shuffle(self.rng);
        let mut partitions = Vec::new();
        pool.retain(|s| {
            let p = partition_of(&s.id, self.requester.partitions);
            let new = !partitions.contains(&p);
            partitions.push(p);
            new
        });
        if pool.len() < DRAINERS {
            return;
        }
        let commands: Vec<Command> = (0..DRAINERS)
            .map(|i| self.transfer(pool[i].id, amount))
            .collect();
        let ops: Vec<usize> = commands
            .iter()
            .map(|c| self.history.start(self.client, c, Expect::Valid))
            .collect();
        let requester = self.requester;
        let (a, b, c) = tokio::join!(
            requester.attempt(&commands[0], false),
            requester.attempt(&commands[1], true),
            requester.attempt(&commands[2], false),
        );
        for (op, attempt) in ops.iter().zip([a, b, c]) {
            self.history.attempt(*op, attempt);
        }
        for (op, command) in ops.iter().zip(&commands) {
            if !self.saw(*op, |r| *r != Ok(Reply::Transfer(TransferStatus::Pending))) {
                self.finish(*op, command.clone()).await;
            }
        }
        self.judge_drain(&ops, amount, balance);
    }

    /// Records the drain boundary if some transfers were accepted and some rejected for
    /// funds, and checks that no more left the account than it held.
    fn judge_drain(&self, ops: &[usize], amount: u64, balance: u64) {
        let rejected = |r: &CommandResult| *r == Ok(rejected_for_funds());
        if ops.iter().any(|op| self.saw(*op, accepted))
            && ops.iter().any(|op| self.saw(*op, rejected))
        {
            self.history.hit(Boundary::ConcurrentDrain);
        }
        let committed = |r: &CommandResult| *r == Ok(Reply::Transfer(TransferStatus::Committed));
        let left = ops.iter().filter(|op| self.saw(**op, committed)).count() as u64 * amount;
        if left > balance {
            let detail =
                format!("transfers of {left} in all committed out of an account holding {balance}");
            self.history.violation(ops[0], "oracle", detail);
        }
    }
}

impl Episode<'_> {
    /// Opens a second account of the episode's own, on the episode account's partition if
    /// `same_partition` (or if there is one partition), else on another, and funds it with
    /// `minor` or more: the account, once its balance is known.
    async fn second_account(&mut self, same_partition: bool, minor: u64) -> Option<AccountId> {
        let partitions = self.requester.partitions;
        let home = partition_of(&self.account, partitions);
        let account = (0..SECOND_ACCOUNT_CANDIDATES)
            .map(|i| AccountId::new(&format!("{}-r{i}", self.account)).expect("valid id"))
            .find(|id| {
                partitions == 1 || (partition_of(id, partitions) == home) == same_partition
            })?;
        let open = Command::OpenAccount {
            account,
            currency: CURRENCY,
        };
        if !matches!(
            self.settle(open, Expect::Valid).await.1,
            Some(Reply::Opened { .. })
        ) {
            return None;
        }
        let funds = self.rng.gen_range(minor..=minor + FUND_MINOR_MAX);
        let deposit = Command::Deposit {
            account,
            amount: Self::amount(funds),
            currency: CURRENCY,
            transaction_id: self.fresh_id(),
        };
        let funded = Reply::Balance { balance: funds };
        let reply = self.settle(deposit, Expect::Exactly(funded)).await.1;
        (reply == Some(funded)).then_some(account)
    }

    /// Goes on with refund op `op` until it is settled, sending it again while it is not
    /// refundable yet (its original's credit not confirmed: nothing was recorded); its
    /// final answer, if one came.
    async fn settle_refund(&mut self, op: usize, command: &Command) -> Option<CommandResult> {
        let pending = Ok(Reply::Transfer(TransferStatus::Pending));
        let mut last = self.history.lock().ops[op]
            .answers()
            .last()
            .map(|(_, result)| result.clone());
        for _ in 0..NOT_REFUNDABLE_TRIES {
            match &last {
                Some(Err(LedgerError::NotRefundable(_))) => {
                    tokio::time::sleep(NOT_REFUNDABLE_PAUSE).await;
                }
                Some(result) if *result == pending => {}
                None => {}
                Some(_) => return last,
            }
            let (requester, history) = (self.requester, self.history);
            last = requester
                .execute(history, op, command, self.attempts_max, self.rng)
                .await;
            last.as_ref()?;
        }
        None
    }

    /// Two final answers of op `op` (its retry in flight) must agree: a refund is decided
    /// once. Answers that it is pending or not refundable yet are not final.
    fn answers_agree(&self, op: usize) {
        let history = self.history.lock();
        let finals: Vec<&CommandResult> = (history.ops[op].answers())
            .map(|(_, result)| result)
            .filter(|r| {
                **r != Ok(Reply::Transfer(TransferStatus::Pending))
                    && !matches!(r, Err(LedgerError::NotRefundable(_)))
            })
            .collect();
        if let Some(other) = finals.iter().find(|r| **r != finals[0]) {
            let detail = format!(
                "two attempts of one refund answered {:?} and {other:?}",
                finals[0]
            );
            drop(history);
            self.history.violation(op, "exactly_once", detail);
        }
    }

    /// A transfer to a second account of the episode's, then two refunds of it racing (the
    /// first sent twice at once, now and then), then a refund of one more than what they
    /// left and one of all that they left.
    async fn refund_race(&mut self, balance: u64) {
        let minor = self.rng.gen_range(1..=balance);
        let same_partition = self.rng.gen_bool(0.4);
        // Funded with the transfer's amount or more: it can pay both refunds back.
        let Some(to) = self.second_account(same_partition, minor).await else {
            return;
        };
        let command = self.transfer(to, minor);
        let Command::Transfer(original) = command else {
            unreachable!("a transfer");
        };
        if self.settle(command, Expect::Accepted).await.1 != Some(committed()) {
            return;
        }
        let partitions = self.requester.partitions;
        let asked = [(); 2].map(|_| self.rng.gen_range(minor / 2 + 1..=minor));
        let racers = asked.map(|a| {
            let id = self.fresh_id();
            refunds::refund(
                self.history,
                id,
                &original,
                Some(Self::amount(a)),
                partitions,
            )
        });
        let ops = racers
            .clone()
            .map(|(command, expect)| self.history.start(self.client, &command, expect));
        let (requester, twice) = (self.requester, self.rng.gen_bool(0.3));
        let (a, b, again) = tokio::join!(
            requester.attempt(&racers[0].0, false),
            requester.attempt(&racers[1].0, true),
            async {
                match twice {
                    true => Some(requester.attempt(&racers[0].0, true).await),
                    false => None,
                }
            },
        );
        self.history.attempt(ops[0], a);
        self.history.attempt(ops[1], b);
        if let Some(again) = again {
            self.history.attempt(ops[0], again);
        }
        let mut outcomes = Vec::new();
        for (op, (command, _)) in ops.iter().zip(&racers) {
            outcomes.push(self.settle_refund(*op, command).await);
        }
        self.answers_agree(ops[0]);
        let [Some(first), Some(second)] = [&outcomes[0], &outcomes[1]] else {
            return;
        };
        let is = |r: &CommandResult, reply: Reply| *r == Ok(reply);
        let refunded: u64 = (asked.iter().zip([first, second]))
            .filter(|(_, r)| is(r, committed()))
            .map(|(a, _)| a)
            .sum();
        if refunded > minor {
            let detail = format!(
                "refunds of {} and {} of a transfer of {minor} were both committed",
                asked[0], asked[1]
            );
            self.history.violation(ops[1], "refund_cap", detail);
            return;
        }
        let exceeding = |r: &CommandResult| is(r, refused_as_exceeding());
        if (is(first, committed()) && exceeding(second))
            || (is(second, committed()) && exceeding(first))
        {
            self.history.hit(Boundary::RefundRace);
        }
        // What is left is known once both racers were decided as refunds and neither may
        // still count (a cancelled refund counts until its cancel is final).
        let known = |r: &CommandResult| is(r, committed()) || exceeding(r);
        if !(known(first) && known(second)) {
            return;
        }
        self.refund_rest(&original, minor - refunded).await;
    }

    /// After refunds that left `left` of `original`: a refund of one more, refused, then one
    /// of all that is left, accepted (refused, when nothing is).
    async fn refund_rest(&mut self, original: &Transfer, left: u64) {
        let partitions = self.requester.partitions;
        let id = self.fresh_id();
        let over = Some(Self::amount(left + 1));
        let (over, _) = refunds::refund(self.history, id, original, over, partitions);
        let refused = refused_as_exceeding();
        if self.settle(over, Expect::Exactly(refused)).await.1 != Some(refused) {
            return;
        }
        let id = self.fresh_id();
        let (rest, expect) = refunds::refund(self.history, id, original, None, partitions);
        let op = self.history.start(self.client, &rest, expect);
        let Some(result) = self.settle_refund(op, &rest).await else {
            return;
        };
        let accepted = matches!(
            result,
            Ok(Reply::Transfer(
                TransferStatus::Committed | TransferStatus::Cancelled(_)
            ))
        );
        let refused = result == Ok(refused);
        // A refund whose record a crash took while its Try was out is abandoned when its
        // destination asks about the credit: refused for good, nothing moved (checkers.rs
        // holds its row to that). Nothing is known then of what a refund of the rest gets.
        let abandoned = Reply::Transfer(TransferStatus::Rejected(Reason::Timeout));
        if result == Ok(abandoned) {
            return;
        }
        match left {
            0 if refused => {}
            0 => self.history.violation(
                op,
                "oracle",
                format!("a refund of all that is left of a transfer refunded in full answered {result:?}"),
            ),
            _ if accepted => self.history.hit(Boundary::RefundRest),
            _ => self.history.violation(
                op,
                "oracle",
                format!("a refund of all that is left ({left}) answered {result:?}"),
            ),
        }
    }
}

/// The answer of an attempt, if it got one.
fn answer(attempt: &Attempt) -> Option<CommandResult> {
    match &attempt.outcome {
        Outcome::Answer(result) => Some(result.clone()),
        Outcome::Unavailable | Outcome::Timeout => None,
    }
}
