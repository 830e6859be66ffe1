//! Multi-leg transactions (see `crate::ledger::transactions`): within one partition in one
//! record, across partitions by TC/C with many participants, driven here by hand as a
//! coordinator would drive them, and what their state survives (a snapshot, a replay of the
//! log, each account's history read from the log).
//!
//! Within a partition the tests use `ledger`'s given/when/then, which checks every step's
//! conservation and that a refused command changed nothing. Across partitions a [`Cluster`]
//! of ledgers does the same on every ledger after every step, and checks that no credit of
//! a transaction reaches a balance before its home records the commit.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::ledger::{
    Command, Hold, Ledger, LedgerError, PartState, PhaseResult, Refund, Reply, TransferState,
    TransferStatus,
};
use crate::log::codec::Record;
use crate::log::replay::{
    balance_as_of, movements, replay, state_difference, AsOf, BalanceAt, Movement, MovementKind,
};
use crate::log::snapshot::{decode_snapshot, SnapshotImage};
use crate::model::event::{Decision, Event, Reason, Timestamp, TransferKey};
use crate::model::ids::AccountId;
use crate::model::money::Currency::{self, EUR, USD};
use crate::model::partition::{partition_of, PartitionId};
use crate::model::transaction::{Leg, Transaction};

use super::ledger::{fill_to_the_limit, given, home, world, Then, FUNDS, PARTITIONS};
use super::support::{account_on, amt, deposit, deposited, open, opened, transfer, txn, Snapshot};

fn leg(from: AccountId, to: AccountId, minor: u64, currency: Currency) -> Leg {
    Leg {
        from,
        to,
        amount: amt(minor),
        currency,
    }
}

fn usd(from: AccountId, to: AccountId, minor: u64) -> Leg {
    leg(from, to, minor, USD)
}

fn tx(id: &str, legs: Vec<Leg>) -> Arc<Transaction> {
    Transaction::new(txn(id), legs).expect("the tests' transactions are valid")
}

fn transact(tx: &Arc<Transaction>) -> Command {
    Command::Transact(tx.clone())
}

fn try_on(tx: &Arc<Transaction>, partition: PartitionId) -> Command {
    Command::TryTransaction {
        tx: tx.clone(),
        partition,
    }
}

fn confirm_on(key: TransferKey, partition: PartitionId) -> Command {
    Command::ConfirmTransaction { key, partition }
}

fn cancel_on(key: TransferKey, partition: PartitionId) -> Command {
    Command::CancelTransaction { key, partition }
}

fn abort_on(tx: &Arc<Transaction>, partition: PartitionId) -> Command {
    Command::AbortTransaction {
        tx: tx.clone(),
        partition,
    }
}

fn decide_cancel(key: TransferKey, failed_leg: Option<u8>, reason: Reason) -> Command {
    Command::DecideTransactionCancel {
        key,
        failed_leg,
        reason,
    }
}

/// Balance, held and incoming of `account`.
fn figures(ledger: &Ledger, account: &AccountId) -> (u64, u64, u64) {
    let a = ledger.account(account).expect("the account is open");
    (a.balance, a.held, a.incoming)
}

// ---------------------------------------------------------------------------------------------
// Within one partition: one record, the nets of every account at once, or nothing.

/// What each liquidity account of [`local`] starts with.
const POOL: u64 = 1_000_000;

/// Accounts of partition 0 (of `PARTITIONS`) for transactions within it.
struct Local {
    /// USD, [`FUNDS`].
    a: AccountId,
    /// USD, empty.
    b: AccountId,
    /// USD, empty.
    c: AccountId,
    /// EUR, empty.
    e: AccountId,
    /// Never opened.
    n: AccountId,
    /// USD and EUR liquidity accounts, [`POOL`] each: a payment in two currencies goes
    /// through them.
    usd_pool: AccountId,
    eur_pool: AccountId,
}

fn local() -> (Local, Vec<Event>) {
    let w = world();
    let l = Local {
        a: w.a,
        b: w.b,
        c: account_on("lc", 0, PARTITIONS, 0),
        e: w.e,
        n: w.n,
        usd_pool: account_on("pool-usd", 0, PARTITIONS, 0),
        eur_pool: account_on("pool-eur", 0, PARTITIONS, 0),
    };
    let mut events = home(&w);
    events.extend([
        opened(l.c, USD),
        opened(l.usd_pool, USD),
        deposited(l.usd_pool, POOL, "pool-1"),
        opened(l.eur_pool, EUR),
        deposited(l.eur_pool, POOL, "pool-2"),
    ]);
    (l, events)
}

/// `t` on partition 0 as `events` leave it: committed in one record, its row and legs kept.
fn applied(events: &[Event], t: &Arc<Transaction>) -> Then {
    let then = given(0, events)
        .when(transact(t))
        .then_events(&[Event::TransactionApplied { tx: t.clone() }])
        .then_status(TransferStatus::Committed);
    let row = then.ledger.transfer(&t.key()).expect("a row under its key");
    assert_eq!(
        (row.transfer, row.state, row.remote),
        (t.first_leg(), TransferState::Committed, false)
    );
    let terms = then
        .ledger
        .transaction(&t.key())
        .expect("its legs are kept");
    assert_eq!((&terms.tx, terms.failed_leg), (t, None));
    then.when(transact(t))
        .then_nothing_new()
        .then_status(TransferStatus::Committed)
}

/// `t` on partition 0 as `events` leave it: refused at leg `leg` for `reason`, the refusal
/// recorded with the leg, nothing moved, and its retry answered the same.
fn rejected(events: &[Event], t: &Arc<Transaction>, leg: u8, reason: Reason) -> Then {
    let before = Snapshot::of(&given(0, events).ledger());
    let then = given(0, events)
        .when(transact(t))
        .then_events(&[Event::TransactionRejected {
            tx: t.clone(),
            failed_leg: Some(leg),
            reason,
        }])
        .then_status(TransferStatus::Rejected(reason));
    let after = Snapshot::of(&then.ledger);
    assert_eq!(after.accounts, before.accounts, "nothing moved");
    assert_eq!(after.flows, before.flows);
    let terms = then
        .ledger
        .transaction(&t.key())
        .expect("the refusal is kept");
    assert_eq!((&terms.tx, terms.failed_leg), (t, Some(leg)));
    let row = then.ledger.transfer(&t.key()).expect("a row under its key");
    assert_eq!(row.state, TransferState::Rejected(reason));
    then.when(transact(t))
        .then_nothing_new()
        .then_status(TransferStatus::Rejected(reason))
}

#[test]
fn a_local_transaction_commits_at_once_moving_each_accounts_net() {
    let (l, events) = local();
    let t = tx(
        "x1",
        vec![
            usd(l.a, l.b, 3_000),
            usd(l.b, l.c, 1_000),
            usd(l.a, l.c, 500),
        ],
    );
    let then = applied(&events, &t);
    let ledger = &then.ledger;
    assert_eq!(figures(ledger, &l.a), (FUNDS - 3_500, 0, 0));
    assert_eq!(figures(ledger, &l.b), (2_000, 0, 0));
    assert_eq!(figures(ledger, &l.c), (1_500, 0, 0));
    assert!(
        ledger
            .flows()
            .values()
            .all(|f| f.sent == 0 && f.received == 0),
        "nothing left the partition"
    );
    assert!(ledger.unfinished_transfers().is_empty());
    assert_eq!(ledger.transaction_part(&t.key()), None);
    // A dry run of its retry answers the same and records nothing.
    let dry = ledger.dry_run(&transact(&t));
    assert_eq!(dry.result, Ok(Reply::Transfer(TransferStatus::Committed)));
    assert_eq!(dry.credit, None);
}

#[test]
fn money_passes_through_an_account_that_starts_empty_whatever_the_order_of_the_legs() {
    let (l, events) = local();
    // b has nothing: it pays c what a pays it, before or after in the list of legs.
    let forward = vec![usd(l.a, l.b, 4_000), usd(l.b, l.c, 4_000)];
    let backward = vec![usd(l.b, l.c, 4_000), usd(l.a, l.b, 4_000)];
    for (id, legs) in [("x1", forward), ("x2", backward)] {
        let t = tx(id, legs);
        let then = applied(&events, &t);
        assert_eq!(figures(&then.ledger, &l.a), (FUNDS - 4_000, 0, 0));
        assert_eq!(figures(&then.ledger, &l.b), (0, 0, 0));
        assert_eq!(figures(&then.ledger, &l.c), (4_000, 0, 0));
    }
}

#[test]
fn a_net_debit_that_does_not_fit_is_refused_at_the_accounts_first_debiting_leg() {
    let (l, events) = local();
    // b pays 300 by leg 1 and is paid 100 by leg 2: its net debit, 200, is more than its 0.
    let t = tx(
        "x1",
        vec![usd(l.a, l.c, 10), usd(l.b, l.c, 300), usd(l.a, l.b, 100)],
    );
    rejected(&events, &t, 1, Reason::InsufficientFunds)
        // The first answer stands once b could pay.
        .when(deposit(l.b, 1_000, USD, "d9"))
        .when(transact(&t))
        .then_nothing_new()
        .then_status(TransferStatus::Rejected(Reason::InsufficientFunds));
    // With the 200 it nets to, the same legs commit: only the net has to be covered.
    let mut funded = events.clone();
    funded.push(deposited(l.b, 200, "d9"));
    let then = applied(&funded, &t);
    assert_eq!(figures(&then.ledger, &l.b), (0, 0, 0));
    assert_eq!(figures(&then.ledger, &l.c), (310, 0, 0));
}

#[test]
fn of_several_failing_legs_the_lowest_is_named() {
    let (l, events) = local();
    // Accounts are checked in the order their first legs come (a, b, e): b fails at leg 2
    // (its net debit), found before e fails at leg 1 (another currency).
    let t = tx(
        "x1",
        vec![usd(l.a, l.b, 10), usd(l.e, l.a, 700), usd(l.b, l.a, 5_000)],
    );
    rejected(&events, &t, 1, Reason::SourceCurrencyMismatch);
    let t = tx(
        "x2",
        vec![usd(l.a, l.b, 10), usd(l.b, l.c, 5_000), usd(l.a, l.n, 5)],
    );
    rejected(&events, &t, 1, Reason::InsufficientFunds);
    let t = tx(
        "x3",
        vec![usd(l.a, l.b, 10), usd(l.a, l.n, 5), usd(l.b, l.c, 5_000)],
    );
    rejected(&events, &t, 1, Reason::DestinationNotFound);
}

#[test]
fn an_unknown_account_fails_as_a_source_or_a_destination_by_its_first_leg() {
    let (l, events) = local();
    let cases = [
        (vec![usd(l.n, l.a, 1)], 0, Reason::SourceNotFound),
        (
            vec![usd(l.a, l.b, 1), usd(l.a, l.n, 1)],
            1,
            Reason::DestinationNotFound,
        ),
        // Paid first, paying after: named as the destination it first is.
        (
            vec![usd(l.a, l.n, 5), usd(l.n, l.b, 5)],
            0,
            Reason::DestinationNotFound,
        ),
        (
            vec![usd(l.a, l.b, 5), usd(l.n, l.b, 5), usd(l.a, l.n, 9)],
            1,
            Reason::SourceNotFound,
        ),
    ];
    for (i, (legs, leg, reason)) in cases.into_iter().enumerate() {
        rejected(&events, &tx(&format!("x{i}"), legs), leg, reason);
    }
}

#[test]
fn a_leg_in_another_currency_than_its_accounts_fails() {
    let (l, events) = local();
    let cases = [
        (
            vec![usd(l.a, l.b, 10), usd(l.a, l.e, 10)],
            1,
            Reason::DestinationCurrencyMismatch,
        ),
        // a is checked before b, both fail at leg 1: a, the source, is named.
        (
            vec![usd(l.a, l.b, 10), leg(l.a, l.b, 10, EUR)],
            1,
            Reason::SourceCurrencyMismatch,
        ),
        (
            vec![leg(l.eur_pool, l.a, 10, EUR)],
            0,
            Reason::DestinationCurrencyMismatch,
        ),
        // Two accounts fail at the same leg: the one named first (e, which has nothing).
        (vec![leg(l.e, l.a, 10, EUR)], 0, Reason::InsufficientFunds),
    ];
    for (i, (legs, leg, reason)) in cases.into_iter().enumerate() {
        rejected(&events, &tx(&format!("x{i}"), legs), leg, reason);
    }
}

#[test]
fn a_net_credit_past_the_balance_limit_fails_and_a_net_of_nothing_passes() {
    let (l, mut events) = local();
    events.extend(fill_to_the_limit(l.c));
    rejected(
        &events,
        &tx("x1", vec![usd(l.a, l.c, 1)]),
        0,
        Reason::DestinationBalanceLimit,
    );
    rejected(
        &events,
        &tx("x2", vec![usd(l.a, l.b, 1), usd(l.a, l.c, 1)]),
        1,
        Reason::DestinationBalanceLimit,
    );
    // c, full, passes 1 on: it nets to nothing, which fits.
    let t = tx("x3", vec![usd(l.a, l.c, 1), usd(l.c, l.b, 1)]);
    let then = applied(&events, &t);
    assert_eq!(figures(&then.ledger, &l.b), (1, 0, 0));
}

#[test]
fn a_payment_in_two_currencies_goes_through_liquidity_accounts() {
    let (l, events) = local();
    // a pays 10.00 USD into the USD pool, the EUR pool pays e 9.00 EUR: both or neither.
    let t = tx(
        "fx-1",
        vec![usd(l.a, l.usd_pool, 1_000), leg(l.eur_pool, l.e, 900, EUR)],
    );
    let then = applied(&events, &t);
    assert_eq!(figures(&then.ledger, &l.a), (FUNDS - 1_000, 0, 0));
    assert_eq!(figures(&then.ledger, &l.usd_pool), (POOL + 1_000, 0, 0));
    assert_eq!(figures(&then.ledger, &l.eur_pool), (POOL - 900, 0, 0));
    assert_eq!(figures(&then.ledger, &l.e), (900, 0, 0));
    // A leg in the wrong currency fails it whole: the USD leg does not go alone.
    let t = tx(
        "fx-2",
        vec![usd(l.a, l.usd_pool, 1_000), usd(l.eur_pool, l.e, 900)],
    );
    rejected(&events, &t, 1, Reason::SourceCurrencyMismatch);
    // Either pool short fails it too.
    let t = tx(
        "fx-3",
        vec![
            usd(l.a, l.usd_pool, 1_000),
            leg(l.eur_pool, l.e, POOL + 1, EUR),
        ],
    );
    rejected(&events, &t, 1, Reason::InsufficientFunds);
}

#[test]
fn a_transaction_id_is_spent_once_under_its_source_whatever_took_it() {
    let (l, events) = local();
    let conflict = LedgerError::Conflict(txn("x1"));
    let t = tx("x1", vec![usd(l.a, l.b, 100), usd(l.b, l.c, 50)]);
    let then = applied(&events, &t)
        // The same legs, built again: the same transaction.
        .when(transact(&tx(
            "x1",
            vec![usd(l.a, l.b, 100), usd(l.b, l.c, 50)],
        )))
        .then_nothing_new()
        .then_status(TransferStatus::Committed);
    let others = [
        vec![usd(l.a, l.b, 100), usd(l.b, l.c, 51)],
        vec![usd(l.a, l.b, 100)],
        vec![usd(l.a, l.b, 100), usd(l.b, l.c, 50), usd(l.a, l.c, 1)],
        vec![usd(l.a, l.b, 100), usd(l.b, l.e, 50)],
    ];
    let mut then = then;
    for legs in others {
        then = then
            .when(transact(&tx("x1", legs)))
            .then_error(conflict.clone());
    }
    // Nor can a transfer or a hold take the key, not even with the first leg's body.
    let first = t.first_leg();
    let hold = |transfer| {
        Command::Hold(Box::new(Hold {
            transfer,
            expires_in_us: 1_000_000,
        }))
    };
    let then = then
        .when(Command::Transfer(first))
        .then_error(conflict.clone())
        .when(Command::Transfer(transfer(l.a, l.b, 7, USD, "x1")))
        .then_error(conflict.clone())
        .when(hold(first))
        .then_error(conflict.clone());
    // Another source's "x1" is another key.
    let other = tx("x1", vec![usd(l.b, l.a, 10)]);
    let then = then
        .when(transact(&other))
        .then_status(TransferStatus::Committed);
    assert_eq!(figures(&then.ledger, &l.b), (40, 0, 0));
    // A transfer's id is taken for a transaction from its source, even for the same move.
    then.when(Command::Transfer(transfer(l.a, l.b, 5, USD, "t1")))
        .then_status(TransferStatus::Committed)
        .when(transact(&tx("t1", vec![usd(l.a, l.b, 5)])))
        .then_error(LedgerError::Conflict(txn("t1")));
    // The same for a transaction that was refused: its retry answers the refusal, other
    // legs conflict.
    let short = tx("x9", vec![usd(l.b, l.c, 1)]);
    rejected(&events, &short, 0, Reason::InsufficientFunds)
        .when(transact(&tx("x9", vec![usd(l.b, l.a, 1)])))
        .then_error(LedgerError::Conflict(txn("x9")));
}

#[test]
fn a_transaction_is_decided_at_the_partition_of_its_first_source_only() {
    let w = world();
    let t = tx("x1", vec![usd(w.a, w.b, 1)]);
    given(1, &super::ledger::destination(&w))
        .when(transact(&t))
        .then_error(LedgerError::WrongPartition {
            account: w.a,
            owner: 0,
            here: 1,
        });
}

#[test]
fn a_local_transaction_is_neither_refunded_nor_captured_as_a_transfer() {
    let (l, events) = local();
    let t = tx("x1", vec![usd(l.a, l.b, 100), usd(l.b, l.c, 100)]);
    let k = t.key();
    applied(&events, &t)
        .when(Command::Refund(Refund {
            refund_id: txn("r1"),
            original: k,
            partition: 0,
            amount: None,
        }))
        .then_error(LedgerError::NotRefundable(k))
        .when(Command::Capture {
            key: k,
            amount: None,
        })
        .then_error(LedgerError::NotAHold(k))
        .when(Command::Void { key: k })
        .then_error(LedgerError::NotAHold(k));
}

// ---------------------------------------------------------------------------------------------
// Across partitions, by hand.

/// Partitions of the clusters below: a home and two more participants.
const PARTS: u32 = 3;
/// What each funded account of a cluster starts with.
const OPENING: u64 = 10_000;

/// The accounts of a [`Cluster`].
struct Accounts {
    /// USD, [`OPENING`], on partition `p` for `a[p]`.
    a: [AccountId; PARTS as usize],
    /// USD, empty, on partition `p` for `b[p]`.
    b: [AccountId; PARTS as usize],
    /// EUR, [`OPENING`], on partition 2.
    x2: AccountId,
    /// EUR, empty, on partition 0.
    y0: AccountId,
    /// On partition 1, never opened.
    m1: AccountId,
}

fn accounts() -> Accounts {
    Accounts {
        a: [0, 1, 2].map(|p| account_on("ma", p, PARTS, 0)),
        b: [0, 1, 2].map(|p| account_on("mb", p, PARTS, 0)),
        x2: account_on("mx", 2, PARTS, 0),
        y0: account_on("my", 0, PARTS, 0),
        m1: account_on("mm", 1, PARTS, 0),
    }
}

/// `PARTS` ledgers, each the partition of its index, and the records each wrote.
struct Cluster {
    ledgers: Vec<Ledger>,
    logs: Vec<Vec<Record>>,
    now: Timestamp,
    /// A transaction its home has not committed yet, and the balances before it of the
    /// accounts it credits: none of them may change until the home's commit.
    watched: Option<(TransferKey, BTreeMap<AccountId, u64>)>,
}

impl Cluster {
    /// The accounts of `x` opened, and funded where they are to be.
    fn new(x: &Accounts) -> Cluster {
        let mut cluster = Cluster::empty();
        for (i, (a, b)) in x.a.iter().zip(&x.b).enumerate() {
            let p = i as PartitionId;
            cluster.ok(p, open(*a, USD));
            cluster.ok(p, deposit(*a, OPENING, USD, "opening"));
            cluster.ok(p, open(*b, USD));
        }
        cluster.ok(2, open(x.x2, EUR));
        cluster.ok(2, deposit(x.x2, OPENING, EUR, "opening"));
        cluster.ok(0, open(x.y0, EUR));
        cluster
    }

    /// `PARTS` empty ledgers.
    fn empty() -> Cluster {
        Cluster {
            ledgers: (0..PARTS).map(|p| Ledger::new(p, PARTS)).collect(),
            logs: vec![Vec::new(); PARTS as usize],
            now: 1_000_000,
            watched: None,
        }
    }

    /// Executes `command` on partition `p`, logging what it recorded; then checks every
    /// ledger: it conserves money, a refused command changed nothing, a dry run answered as
    /// the command, and no watched credit reached a balance before its commit.
    fn run(
        &mut self,
        p: PartitionId,
        command: Command,
    ) -> (Result<Reply, LedgerError>, Vec<Event>) {
        self.now += 1_000;
        let ledger = &mut self.ledgers[p as usize];
        let before = Snapshot::of(ledger);
        let dry = ledger.dry_run(&command);
        let first = ledger.last_applied().lsn + 1;
        let mut events = Vec::new();
        let result = ledger.execute(&command, self.now, &mut events);
        assert_eq!(dry.result, result, "a dry run of {command:?}");
        let timestamp = ledger.last_applied().timestamp;
        for (event, lsn) in events.iter().zip(first..) {
            self.logs[p as usize].push(Record {
                lsn,
                timestamp,
                event: event.clone(),
            });
        }
        if result.is_err() {
            assert_eq!(events, [], "{command:?} was refused but recorded");
            assert_eq!(Snapshot::of(ledger), before, "{command:?} was refused");
        }
        // The commit: at once within one partition, else the home's record of it.
        let committed = events.iter().any(|event| match event {
            Event::TransactionApplied { .. } => true,
            Event::TransactionConfirmed { key } => partition_of(&key.from, PARTS) == p,
            _ => false,
        });
        if committed {
            self.watched = None;
        }
        self.check();
        (result, events)
    }

    fn check(&self) {
        for ledger in &self.ledgers {
            ledger.check_conservation().unwrap_or_else(|e| {
                panic!("partition {}: {e}", ledger.partition());
            });
        }
        if let Some((key, balances)) = &self.watched {
            for (account, balance) in balances {
                assert_eq!(
                    self.account(account).0,
                    *balance,
                    "a credit of {key:?} reached {account} before its home's commit"
                );
            }
        }
    }

    /// Watches the credits of `t` until its home commits it (see [`Cluster::run`]).
    fn watch(&mut self, t: &Transaction) {
        let mut balances = BTreeMap::new();
        for p in 0..PARTS {
            for effect in t.effects_on(p, PARTS).accounts {
                if effect.net_credit() > 0 {
                    balances.insert(effect.account, self.account(&effect.account).0);
                }
            }
        }
        self.watched = Some((t.key(), balances));
    }

    /// [`Cluster::run`] of a command that must be accepted; its events.
    fn ok(&mut self, p: PartitionId, command: Command) -> Vec<Event> {
        let (result, events) = self.run(p, command.clone());
        result.unwrap_or_else(|e| panic!("{command:?}: {e}"));
        events
    }

    /// A command that must be answered `Done`.
    fn done(&mut self, p: PartitionId, command: Command) -> Vec<Event> {
        let (result, events) = self.run(p, command.clone());
        assert_eq!(result, Ok(Reply::Done), "{command:?}");
        events
    }

    /// A command answered with a phase result.
    fn phase(&mut self, p: PartitionId, command: Command) -> (PhaseResult, Vec<Event>) {
        match self.run(p, command.clone()) {
            (Ok(Reply::Phase(result)), events) => (result, events),
            other => panic!("{command:?}: {other:?}"),
        }
    }

    /// A command answered with a transfer's status.
    fn status(&mut self, p: PartitionId, command: Command) -> (TransferStatus, Vec<Event>) {
        match self.run(p, command.clone()) {
            (Ok(Reply::Transfer(status)), events) => (status, events),
            other => panic!("{command:?}: {other:?}"),
        }
    }

    /// A command that must be refused (which [`Cluster::run`] checks changed nothing).
    fn refused(&mut self, p: PartitionId, command: Command) -> LedgerError {
        let (result, _) = self.run(p, command.clone());
        result.expect_err(&format!("{command:?} must be refused"))
    }

    /// Balance, held and incoming of `account`, on its partition.
    fn account(&self, account: &AccountId) -> (u64, u64, u64) {
        figures(
            &self.ledgers[partition_of(account, PARTS) as usize],
            account,
        )
    }

    /// Every ledger as a snapshot restores it and as its log replays: the same state; and
    /// each account's figures and movements read from the log agree with the ledger.
    fn check_durable(&self) {
        for (p, ledger) in self.ledgers.iter().enumerate() {
            let (bytes, chunks) = SnapshotImage::of(ledger).encode();
            assert!(chunks.is_empty());
            let restored = decode_snapshot(&bytes).expect("a snapshot restores");
            same_state(&restored, ledger, "restored from its snapshot");
            let log = &self.logs[p];
            let replayed = replay(p as PartitionId, PARTS, log, AsOf::End).expect("it replays");
            same_state(&replayed, ledger, "replayed from its log");
            for (account, live) in ledger.accounts() {
                let expected = BalanceAt {
                    currency: live.currency,
                    balance: live.balance,
                    held: live.held,
                    incoming: live.incoming,
                    lsn: ledger.last_applied().lsn,
                };
                let read = balance_as_of(log, account, AsOf::End);
                assert_eq!(read, Some(expected), "{account} read from its log");
                let moves = movements(log, account);
                let balance: i128 = moves.iter().map(Movement::balance_change).sum();
                let held: i128 = moves.iter().map(Movement::held_change).sum();
                assert_eq!(balance, i128::from(live.balance), "{account}'s movements");
                assert_eq!(held, i128::from(live.held), "{account}'s movements");
            }
        }
    }

    /// Every partition restarts from its snapshot.
    fn restart_from_snapshots(&mut self) {
        for ledger in &mut self.ledgers {
            *ledger = decode_snapshot(&SnapshotImage::of(ledger).encode().0).unwrap();
        }
        self.check();
    }

    /// Every partition restarts by replaying its log.
    fn restart_from_logs(&mut self) {
        for (p, ledger) in self.ledgers.iter_mut().enumerate() {
            *ledger = replay(p as PartitionId, PARTS, &self.logs[p], AsOf::End).unwrap();
        }
        self.check();
    }

    /// Movement kinds of `account` read from its partition's log.
    fn kinds(&self, account: &AccountId) -> Vec<MovementKind> {
        let log = &self.logs[partition_of(account, PARTS) as usize];
        movements(log, account).iter().map(|m| m.kind).collect()
    }
}

/// That `a` holds the same state as `b`, the transaction tables included, and conserves money.
fn same_state(a: &Ledger, b: &Ledger, what: &str) {
    assert_eq!(state_difference(a, b), None, "{what}");
    assert_eq!(Snapshot::of(a), Snapshot::of(b), "{what}");
    assert_eq!(a.check_conservation(), Ok(()), "{what}");
}

#[test]
fn a_transaction_across_three_partitions_commits_once_every_participant_tried() {
    let x = accounts();
    let mut c = Cluster::new(&x);
    let t = tx(
        "m-1",
        vec![
            usd(x.a[0], x.b[1], 3_000),
            usd(x.a[1], x.b[2], 2_000),
            usd(x.a[2], x.b[0], 1_000),
            // b1 passes on 500 of the 3,000 it is paid.
            usd(x.b[1], x.b[2], 500),
            leg(x.x2, x.y0, 700, EUR),
        ],
    );
    let k = t.key();
    assert_eq!((t.home(PARTS), t.participants(PARTS)), (0, vec![0, 1, 2]));
    c.check_durable();

    // The home's record both accepts the transaction and is its own Try.
    c.watch(&t);
    let (status, events) = c.status(0, transact(&t));
    assert_eq!(status, TransferStatus::Pending);
    assert_eq!(events, [Event::TransactionTried { tx: t.clone() }]);
    assert_eq!(c.account(&x.a[0]), (OPENING - 3_000, 3_000, 0));
    assert_eq!(c.account(&x.b[0]), (0, 0, 1_000));
    assert_eq!(c.account(&x.y0), (0, 0, 700));
    let row = c.ledgers[0].transfer(&k).unwrap();
    assert_eq!(
        (row.transfer, row.state, row.remote),
        (t.first_leg(), TransferState::Trying, true)
    );
    assert!(
        c.ledgers[0].unfinished_transfers().is_empty(),
        "a transaction is not driven as a transfer"
    );
    assert_eq!(c.status(0, transact(&t)), (TransferStatus::Pending, vec![]));
    c.check_durable();

    for p in [1, 2] {
        let tried = vec![Event::TransactionTried { tx: t.clone() }];
        assert_eq!(c.phase(p, try_on(&t, p)), (PhaseResult::Tried, tried));
        assert_eq!(c.phase(p, try_on(&t, p)), (PhaseResult::Tried, vec![]));
        let row = c.ledgers[p as usize].transaction_part(&k).unwrap();
        assert_eq!((row.state, row.tx.as_ref()), (PartState::Tried, Some(&t)));
        c.check_durable();
    }
    assert_eq!(c.account(&x.a[1]), (OPENING - 2_000, 2_000, 0));
    assert_eq!(c.account(&x.b[1]), (0, 0, 2_500));
    assert_eq!(c.account(&x.a[2]), (OPENING - 1_000, 1_000, 0));
    assert_eq!(c.account(&x.b[2]), (0, 0, 2_500));
    assert_eq!(c.account(&x.x2), (OPENING - 700, 700, 0));
    // Every participant tried; each restarts from its snapshot, and the protocol goes on.
    c.restart_from_snapshots();

    // The commit: the home's own side is final in the same record.
    let committed = vec![Event::TransactionConfirmed { key: k }];
    assert_eq!(c.done(0, confirm_on(k, 0)), committed);
    assert_eq!(
        c.ledgers[0].transfer(&k).unwrap().state,
        TransferState::Committed
    );
    assert_eq!(c.account(&x.a[0]), (OPENING - 3_000, 0, 0));
    assert_eq!(c.account(&x.b[0]), (1_000, 0, 0));
    assert_eq!(c.account(&x.y0), (700, 0, 0));
    assert_eq!(c.done(0, confirm_on(k, 0)), []);
    assert_eq!(
        c.status(0, transact(&t)),
        (TransferStatus::Committed, vec![])
    );
    // A cancel cannot follow a commit.
    let late = c.refused(0, decide_cancel(k, None, Reason::Timeout));
    assert!(
        matches!(late, LedgerError::InvalidTransition { .. }),
        "{late}"
    );
    // The participants' credits wait for their Confirm.
    assert_eq!(c.account(&x.b[1]), (0, 0, 2_500));
    c.check_durable();

    for p in [1, 2] {
        let confirmed = (PhaseResult::Confirmed, committed.clone());
        assert_eq!(c.phase(p, confirm_on(k, p)), confirmed);
        // Anything after answers the commit and changes nothing.
        for again in [
            confirm_on(k, p),
            abort_on(&t, p),
            cancel_on(k, p),
            try_on(&t, p),
        ] {
            assert_eq!(c.phase(p, again), (PhaseResult::Confirmed, vec![]));
        }
        let row = c.ledgers[p as usize].transaction_part(&k).unwrap();
        assert_eq!(row.state, PartState::Confirmed);
        c.check_durable();
    }
    assert_eq!(c.account(&x.a[1]), (OPENING - 2_000, 0, 0));
    assert_eq!(c.account(&x.b[1]), (2_500, 0, 0));
    assert_eq!(c.account(&x.a[2]), (OPENING - 1_000, 0, 0));
    assert_eq!(c.account(&x.b[2]), (2_500, 0, 0));
    assert_eq!(c.account(&x.x2), (OPENING - 700, 0, 0));
    // Nothing is on its way any more: what each partition sent, another received.
    for currency in [USD, EUR] {
        let flows = c.ledgers.iter().filter_map(|l| l.flows().get(&currency));
        let (sent, received) = flows.fold((0, 0), |(s, r), f| (s + f.sent, r + f.received));
        assert_eq!(sent, received, "{currency}");
    }
    let usd_flows = c.ledgers[1].flows()[&USD];
    assert_eq!((usd_flows.sent, usd_flows.received), (2_000, 2_500));
    use MovementKind::*;
    assert_eq!(c.kinds(&x.a[0]), [Deposit, Hold, HoldCaptured]);
    assert_eq!(c.kinds(&x.b[0]), [CreditIn]);
    assert_eq!(c.kinds(&x.b[1]), [CreditIn]);
    assert_eq!(c.kinds(&x.x2), [Deposit, Hold, HoldCaptured]);
}

#[test]
fn a_transaction_of_sixty_four_legs_commits_across_partitions_and_survives_a_restart() {
    use crate::model::transaction::LEGS_MAX;
    let x = accounts();
    let mut c = Cluster::new(&x);
    // Leg i: a{i mod 3} pays b{i+1 mod 3} 1.00.
    let legs = (0..LEGS_MAX)
        .map(|i| usd(x.a[i % 3], x.b[(i + 1) % 3], 100))
        .collect();
    let t = tx(&"t".repeat(64), legs);
    let k = t.key();
    let paid = |p: usize| 100 * (0..LEGS_MAX).filter(|i| i % 3 == p).count() as u64;
    let received = |p: usize| 100 * (0..LEGS_MAX).filter(|i| (i + 1) % 3 == p).count() as u64;
    c.watch(&t);
    assert_eq!(c.status(0, transact(&t)).0, TransferStatus::Pending);
    for p in [1, 2] {
        assert_eq!(c.phase(p, try_on(&t, p)).0, PhaseResult::Tried);
    }
    for p in 0..3 {
        assert_eq!(c.account(&x.a[p]), (OPENING - paid(p), paid(p), 0));
        assert_eq!(c.account(&x.b[p]), (0, 0, received(p)));
    }
    c.check_durable();
    c.restart_from_logs();
    c.done(0, confirm_on(k, 0));
    c.restart_from_snapshots();
    for p in [1, 2] {
        assert_eq!(c.phase(p, confirm_on(k, p)).0, PhaseResult::Confirmed);
    }
    for p in 0..3 {
        assert_eq!(c.account(&x.a[p]), (OPENING - paid(p), 0, 0));
        assert_eq!(c.account(&x.b[p]), (received(p), 0, 0));
    }
    c.check_durable();
}

#[test]
fn a_participant_that_cannot_take_its_legs_refuses_for_good_and_the_cancel_undoes_every_try() {
    let x = accounts();
    let mut c = Cluster::new(&x);
    // b2 is paid 2,000 and pays 9,000: it nets to a debit of 7,000 it does not have.
    let t = tx(
        "m-1",
        vec![
            usd(x.a[0], x.b[1], 3_000),
            usd(x.a[1], x.b[2], 2_000),
            usd(x.b[2], x.a[0], 9_000),
        ],
    );
    let k = t.key();
    c.watch(&t);
    assert_eq!(c.status(0, transact(&t)).0, TransferStatus::Pending);
    // a0 is paid more than it pays: nothing held, its net credit incoming.
    assert_eq!(c.account(&x.a[0]), (OPENING, 0, 6_000));
    assert_eq!(c.phase(1, try_on(&t, 1)).0, PhaseResult::Tried);
    let failed = PhaseResult::LegFailed {
        leg: 2,
        reason: Reason::InsufficientFunds,
    };
    let refusal = Event::TransactionRefused {
        key: k,
        failed_leg: Some(2),
        reason: Reason::InsufficientFunds,
    };
    assert_eq!(c.phase(2, try_on(&t, 2)), (failed, vec![refusal]));
    assert_eq!(c.account(&x.b[2]), (0, 0, 0), "nothing moved");
    let row = c.ledgers[2].transaction_part(&k).unwrap();
    assert_eq!(
        (row.state, row.tx.as_ref()),
        (
            PartState::Refused {
                failed_leg: Some(2),
                reason: Reason::InsufficientFunds
            },
            None
        )
    );
    c.check_durable();
    // The refusal is durable: every partition restarts from its log, and the Try resent,
    // even once b2 could pay, is answered as the first.
    c.restart_from_logs();
    c.ok(2, deposit(x.b[2], OPENING, USD, "d-1"));
    assert_eq!(c.phase(2, try_on(&t, 2)), (failed, vec![]));

    // The home decides to cancel, naming the leg.
    let cancelling = Event::TransactionCancelling {
        key: k,
        failed_leg: Some(2),
        reason: Reason::InsufficientFunds,
    };
    let decide = decide_cancel(k, Some(2), Reason::InsufficientFunds);
    assert_eq!(c.done(0, decide.clone()), [cancelling]);
    assert_eq!(c.done(0, decide), []);
    assert_eq!(c.done(0, decide_cancel(k, None, Reason::Timeout)), []);
    let cancelled = TransferStatus::Cancelled(Reason::InsufficientFunds);
    assert_eq!(c.status(0, transact(&t)), (cancelled, vec![]));
    assert_eq!(c.ledgers[0].transaction(&k).unwrap().failed_leg, Some(2));
    assert_eq!(
        c.ledgers[0].transfer(&k).unwrap().state,
        TransferState::Cancelling(Reason::InsufficientFunds)
    );
    // Decided: no commit now, and the home's end waits for every participant.
    let late = c.refused(0, confirm_on(k, 0));
    assert!(
        matches!(late, LedgerError::InvalidTransition { .. }),
        "{late}"
    );
    assert_eq!(c.account(&x.a[0]), (OPENING, 0, 6_000));
    c.check_durable();

    let undone = vec![Event::TransactionCancelled { key: k }];
    assert_eq!(
        c.phase(1, cancel_on(k, 1)),
        (PhaseResult::Cancelled, undone)
    );
    assert_eq!(
        c.phase(1, cancel_on(k, 1)),
        (PhaseResult::Cancelled, vec![])
    );
    assert_eq!(c.account(&x.a[1]), (OPENING, 0, 0));
    assert_eq!(c.account(&x.b[1]), (0, 0, 0));
    let refused = c.refused(1, confirm_on(k, 1));
    assert!(matches!(refused, LedgerError::InvalidTransition { .. }));
    // The refusing participant has nothing to undo: its answer is its refusal.
    assert_eq!(c.phase(2, cancel_on(k, 2)), (failed, vec![]));
    c.check_durable();

    let ended = vec![Event::TransactionCancelled { key: k }];
    assert_eq!(c.done(0, cancel_on(k, 0)), ended);
    assert_eq!(c.done(0, cancel_on(k, 0)), []);
    assert_eq!(c.account(&x.a[0]), (OPENING, 0, 0));
    assert_eq!(
        c.ledgers[0].transfer(&k).unwrap().state,
        TransferState::Cancelled(Reason::InsufficientFunds)
    );
    assert_eq!(c.status(0, transact(&t)), (cancelled, vec![]));
    assert!(c.ledgers.iter().all(|l| l.flows()[&USD].sent == 0));
    c.check_durable();
    use MovementKind::*;
    assert_eq!(c.kinds(&x.a[0]), [Deposit]);
    assert_eq!(c.kinds(&x.a[1]), [Deposit, Hold, HoldReleased]);
}

#[test]
fn a_cancel_before_a_participant_tried_leaves_the_barrier_that_fails_its_late_try() {
    let x = accounts();
    let mut c = Cluster::new(&x);
    let t = tx(
        "m-1",
        vec![usd(x.a[0], x.b[1], 100), usd(x.a[2], x.b[0], 50)],
    );
    let k = t.key();
    c.watch(&t);
    c.status(0, transact(&t));
    assert_eq!(c.phase(1, try_on(&t, 1)).0, PhaseResult::Tried);
    // Partition 2's Try is lost; the home gives up on it.
    let cancelling = Event::TransactionCancelling {
        key: k,
        failed_leg: None,
        reason: Reason::Timeout,
    };
    assert_eq!(
        c.done(0, decide_cancel(k, None, Reason::Timeout)),
        [cancelling]
    );
    // An Abort is a participant's: at the home it would end the cancel before the
    // participants undid their Tries.
    assert!(is_invalid_transition(&c.refused(0, abort_on(&t, 0))));

    let not_tried = PhaseResult::TryFailed(Reason::CancelledBeforeTry);
    let barrier = Event::TransactionRefused {
        key: k,
        failed_leg: None,
        reason: Reason::CancelledBeforeTry,
    };
    assert_eq!(c.phase(2, cancel_on(k, 2)), (not_tried, vec![barrier]));
    assert_eq!(c.phase(2, cancel_on(k, 2)), (not_tried, vec![]));
    c.check_durable();
    c.restart_from_snapshots();
    // The Try arrives late: it fails on the barrier, and nothing moves.
    assert_eq!(c.phase(2, try_on(&t, 2)), (not_tried, vec![]));
    assert_eq!(c.phase(2, abort_on(&t, 2)), (not_tried, vec![]));
    assert_eq!(c.account(&x.a[2]), (OPENING, 0, 0));
    let refused = c.refused(2, confirm_on(k, 2));
    assert!(matches!(refused, LedgerError::InvalidTransition { .. }));

    let cancelled = vec![Event::TransactionCancelled { key: k }];
    assert_eq!(
        c.phase(1, cancel_on(k, 1)),
        (PhaseResult::Cancelled, cancelled.clone())
    );
    assert_eq!(c.done(0, cancel_on(k, 0)), cancelled);
    let status = TransferStatus::Cancelled(Reason::Timeout);
    assert_eq!(c.status(0, transact(&t)), (status, vec![]));
    assert_eq!(c.ledgers[0].transaction(&k).unwrap().failed_leg, None);
    for account in [x.a[0], x.b[0], x.a[1], x.b[1], x.a[2]] {
        assert_eq!(c.account(&account).1, 0, "nothing held");
        assert_eq!(c.account(&account).2, 0, "nothing incoming");
    }
    assert_eq!(c.account(&x.a[0]).0, OPENING);
    c.check_durable();
}

#[test]
fn an_abort_leaves_a_tried_participant_as_it_is_and_sets_the_barrier_on_an_untried_one() {
    let x = accounts();
    let mut c = Cluster::new(&x);
    let t = tx(
        "m-1",
        vec![usd(x.a[0], x.b[1], 100), usd(x.a[2], x.b[0], 50)],
    );
    let k = t.key();
    c.watch(&t);
    c.status(0, transact(&t));
    assert_eq!(c.phase(1, try_on(&t, 1)).0, PhaseResult::Tried);
    let before = Snapshot::of(&c.ledgers[1]);
    // The home heard nothing from either in time, and asks both to abort.
    assert_eq!(c.phase(1, abort_on(&t, 1)), (PhaseResult::Tried, vec![]));
    assert_eq!(Snapshot::of(&c.ledgers[1]), before, "the Try stands");
    let not_tried = PhaseResult::TryFailed(Reason::CancelledBeforeTry);
    let barrier = Event::TransactionRefused {
        key: k,
        failed_leg: None,
        reason: Reason::CancelledBeforeTry,
    };
    assert_eq!(c.phase(2, abort_on(&t, 2)), (not_tried, vec![barrier]));
    assert_eq!(c.phase(2, abort_on(&t, 2)), (not_tried, vec![]));
    assert_eq!(c.phase(2, try_on(&t, 2)), (not_tried, vec![]));
    assert_eq!(c.account(&x.a[2]), (OPENING, 0, 0));
    c.check_durable();
    // One participant will never try: the home cancels.
    c.done(0, decide_cancel(k, None, Reason::CancelledBeforeTry));
    assert_eq!(c.phase(1, cancel_on(k, 1)).0, PhaseResult::Cancelled);
    assert_eq!(c.phase(2, cancel_on(k, 2)), (not_tried, vec![]));
    c.done(0, cancel_on(k, 0));
    assert_eq!(c.account(&x.b[1]), (0, 0, 0));
    c.check_durable();

    // Aborts that find every participant tried leave the transaction to commit.
    let u = tx("m-2", vec![usd(x.a[0], x.b[1], 100)]);
    let k = u.key();
    c.watch(&u);
    c.status(0, transact(&u));
    c.phase(1, try_on(&u, 1));
    assert_eq!(c.phase(1, abort_on(&u, 1)), (PhaseResult::Tried, vec![]));
    c.done(0, confirm_on(k, 0));
    assert_eq!(c.phase(1, confirm_on(k, 1)).0, PhaseResult::Confirmed);
    assert_eq!(c.account(&x.b[1]), (100, 0, 0));
    c.check_durable();
}

#[test]
fn a_participant_refuses_what_no_leg_of_its_own_is_or_a_remote_account_cannot_take() {
    let x = accounts();
    let mut c = Cluster::new(&x);
    // m1 was never opened: its partition refuses, the home did not know.
    let t = tx(
        "m-1",
        vec![usd(x.a[0], x.b[2], 100), usd(x.a[0], x.m1, 100)],
    );
    let k = t.key();
    assert_eq!(c.status(0, transact(&t)).0, TransferStatus::Pending);
    let failed = PhaseResult::LegFailed {
        leg: 1,
        reason: Reason::DestinationNotFound,
    };
    assert_eq!(c.phase(1, try_on(&t, 1)).0, failed);
    assert_eq!(c.phase(2, try_on(&t, 2)).0, PhaseResult::Tried);
    c.done(0, decide_cancel(k, Some(1), Reason::DestinationNotFound));
    c.phase(2, cancel_on(k, 2));
    c.phase(1, cancel_on(k, 1));
    c.done(0, cancel_on(k, 0));
    assert_eq!(c.account(&x.a[0]), (OPENING, 0, 0));
    assert_eq!(c.account(&x.b[2]), (0, 0, 0));

    // The home's own accounts are checked when it takes the transaction: refused there,
    // it is recorded and no participant is asked.
    let short = tx("m-2", vec![usd(x.a[0], x.b[1], OPENING + 1)]);
    let rejected = Event::TransactionRejected {
        tx: short.clone(),
        failed_leg: Some(0),
        reason: Reason::InsufficientFunds,
    };
    let status = TransferStatus::Rejected(Reason::InsufficientFunds);
    assert_eq!(c.status(0, transact(&short)), (status, vec![rejected]));
    let row = c.ledgers[0].transfer(&short.key()).unwrap();
    assert!(row.remote);
    assert_eq!(c.status(0, transact(&short)), (status, vec![]));
    c.check_durable();
}

fn is_invalid_transition(error: &LedgerError) -> bool {
    matches!(error, LedgerError::InvalidTransition { .. })
}

#[test]
fn phase_commands_are_refused_where_the_transaction_is_not_or_not_in_that_state() {
    let x = accounts();
    let mut c = Cluster::new(&x);
    // Partitions 0 and 1 take part; 2 holds none of its accounts.
    let t = tx("m-1", vec![usd(x.a[0], x.b[1], 100)]);
    let k = t.key();
    assert_eq!(t.participants(PARTS), [0, 1]);
    for command in [
        confirm_on(k, 0),
        cancel_on(k, 0),
        decide_cancel(k, None, Reason::Timeout),
    ] {
        assert_eq!(c.refused(0, command), LedgerError::UnknownTransfer(k));
    }
    assert!(is_invalid_transition(&c.refused(1, confirm_on(k, 1))));

    c.status(0, transact(&t));
    // The home's Try is its transaction.
    assert!(is_invalid_transition(&c.refused(0, try_on(&t, 0))));
    // No Try where the transaction has no account: nothing to hold, no row to keep.
    assert!(is_invalid_transition(&c.refused(2, try_on(&t, 2))));
    // The home ends only a cancel it decided, and takes no Abort.
    assert!(is_invalid_transition(&c.refused(0, cancel_on(k, 0))));
    assert!(is_invalid_transition(&c.refused(0, abort_on(&t, 0))));
    c.phase(1, try_on(&t, 1));
    c.done(0, confirm_on(k, 0));
    assert!(is_invalid_transition(&c.refused(0, cancel_on(k, 0))));
    c.check_durable();
}

#[test]
fn the_phases_of_a_transfer_do_not_drive_a_transaction() {
    let x = accounts();
    let mut c = Cluster::new(&x);
    let t = tx("m-1", vec![usd(x.a[0], x.b[1], 100)]);
    let k = t.key();
    c.status(0, transact(&t));
    for command in [
        Command::CommitDebit { key: k },
        Command::Decide {
            key: k,
            decision: Decision::Confirm,
        },
        Command::Decide {
            key: k,
            decision: Decision::Cancel(Reason::Timeout),
        },
        Command::FinishDebit { key: k },
    ] {
        assert!(is_invalid_transition(&c.refused(0, command)));
    }
    assert_eq!(
        c.refused(0, Command::ExpireHold { key: k }),
        LedgerError::NotAHold(k)
    );
    // A transfer asked about under the key is not abandoned: the row answers.
    let status = c.status(0, Command::Abandon(t.first_leg()));
    assert_eq!(status, (TransferStatus::Pending, vec![]));
    assert_eq!(c.account(&x.a[0]), (OPENING - 100, 100, 0));
    // Nor do they once it is committed.
    c.phase(1, try_on(&t, 1));
    c.done(0, confirm_on(k, 0));
    for command in [
        Command::CommitDebit { key: k },
        Command::FinishDebit { key: k },
    ] {
        assert!(is_invalid_transition(&c.refused(0, command)));
    }
    c.check_durable();
}

#[test]
fn the_phases_of_a_transaction_do_not_drive_a_transfer() {
    let x = accounts();
    let mut c = Cluster::new(&x);
    let plain = transfer(x.a[0], x.b[1], 50, USD, "t-1");
    let p = plain.key();
    assert_eq!(
        c.status(0, Command::Transfer(plain)).0,
        TransferStatus::Pending
    );
    for command in [confirm_on(p, 0), decide_cancel(p, None, Reason::Timeout)] {
        assert!(is_invalid_transition(&c.refused(0, command)));
    }
    let retaken = transact(&tx("t-1", vec![usd(x.a[0], x.b[1], 50)]));
    assert_eq!(c.refused(0, retaken), LedgerError::Conflict(txn("t-1")));
    let cancel = Decision::Cancel(Reason::Timeout);
    c.done(
        0,
        Command::Decide {
            key: p,
            decision: cancel,
        },
    );
    assert!(is_invalid_transition(&c.refused(0, cancel_on(p, 0))));
    c.done(0, Command::FinishDebit { key: p });
    // The participant rows of transactions and the barrier rows of transfers are apart.
    assert!(is_invalid_transition(&c.refused(1, confirm_on(p, 1))));
    c.phase(1, Command::TryCredit(plain));
    assert!(is_invalid_transition(&c.refused(1, confirm_on(p, 1))));
    assert_eq!(c.account(&x.a[0]), (OPENING, 0, 0));
    c.check_durable();
}

#[test]
fn a_try_of_other_legs_under_a_tried_key_fails_and_an_abort_of_them_cancels_the_orphan() {
    let x = accounts();
    let mut c = Cluster::new(&x);
    // The home lost `t` after its Try left (a Try leaves before the home's record is
    // durable), and a client's retry put `u`, other legs, under the same key: partition 1
    // holds a Try of `t` when `u`'s Try comes.
    let t = tx("m-1", vec![usd(x.a[0], x.b[1], 100)]);
    let u = tx("m-1", vec![usd(x.a[0], x.b[1], 200)]);
    let k = u.key();
    assert_eq!(c.phase(1, try_on(&t, 1)).0, PhaseResult::Tried);
    assert_eq!(c.account(&x.b[1]), (0, 0, 100));
    c.watch(&u);
    assert_eq!(c.status(0, transact(&u)).0, TransferStatus::Pending);
    // Answering Tried would commit `u` with `t`'s legs held on partition 1.
    let not_tried = PhaseResult::TryFailed(Reason::CancelledBeforeTry);
    assert_eq!(c.phase(1, try_on(&u, 1)), (not_tried, vec![]));
    let row = c.ledgers[1].transaction_part(&k).unwrap();
    assert_eq!((row.state, row.tx.as_ref()), (PartState::Tried, Some(&t)));
    // An Abort of `u` finds the orphan and cancels it (answering tried would commit `u`).
    let undone = vec![Event::TransactionCancelled { key: k }];
    assert_eq!(
        c.phase(1, abort_on(&u, 1)),
        (PhaseResult::Cancelled, undone)
    );
    assert_eq!(c.account(&x.b[1]), (0, 0, 0));
    // The home cancels `u`; the Cancel finds the orphan undone already.
    c.done(0, decide_cancel(k, None, Reason::Timeout));
    assert_eq!(
        c.phase(1, cancel_on(k, 1)),
        (PhaseResult::Cancelled, vec![])
    );
    c.done(0, cancel_on(k, 0));
    assert_eq!(c.account(&x.b[1]), (0, 0, 0));
    assert_eq!(c.account(&x.a[0]), (OPENING, 0, 0));
    c.check_durable();
}

#[test]
fn a_home_asked_about_a_transaction_it_has_no_row_of_rejects_it_for_good() {
    let x = accounts();
    let mut c = Cluster::new(&x);
    let t = tx("m-1", vec![usd(x.a[0], x.b[1], 100)]);
    let u = tx("m-1", vec![usd(x.a[0], x.b[1], 200)]);
    // Partition 1 tried `t`, whose home lost its record: asked, the home rejects it, for a
    // timeout and with no failed leg (none failed).
    assert_eq!(c.phase(1, try_on(&t, 1)).0, PhaseResult::Tried);
    let abandon = Command::AbandonTransaction(t.clone());
    let rejected = Event::TransactionRejected {
        tx: t.clone(),
        failed_leg: None,
        reason: Reason::Timeout,
    };
    let status = TransferStatus::Rejected(Reason::Timeout);
    assert_eq!(c.status(0, abandon.clone()), (status, vec![rejected]));
    // Asked again, and retried by its client, it answers the same and records nothing;
    // other legs under its id are a conflict.
    assert_eq!(c.status(0, abandon), (status, vec![]));
    assert_eq!(c.status(0, transact(&t)), (status, vec![]));
    let conflict = c.refused(0, transact(&u));
    assert!(matches!(conflict, LedgerError::Conflict(_)), "{conflict:?}");
    // Its terms name no leg; the participant's Try is cancelled by the home's answer.
    assert_eq!(c.ledgers[0].transaction(&t.key()).unwrap().failed_leg, None);
    c.phase(1, cancel_on(t.key(), 1));
    assert_eq!(c.account(&x.b[1]), (0, 0, 0));
    // A home that has the row answers with its state, and records nothing.
    let v = tx("m-2", vec![usd(x.a[0], x.b[1], 100)]);
    c.watch(&v);
    c.status(0, transact(&v));
    let asked = Command::AbandonTransaction(v.clone());
    assert_eq!(c.status(0, asked), (TransferStatus::Pending, vec![]));
    c.check_durable();
}

#[test]
fn ledgers_that_differ_only_in_their_transactions_are_not_the_same_state() {
    let x = accounts();
    let mut c = Cluster::new(&x);
    let t = tx("m-1", vec![usd(x.a[0], x.b[1], 100)]);
    c.status(0, transact(&t));
    c.phase(1, try_on(&t, 1));
    let mut home = c.ledgers[0].clone();
    let at = home.transfers.find(&t.key()).unwrap();
    let Some(crate::ledger::row_terms::RowTerms::Transaction(terms)) = home.transfers.terms_mut(at)
    else {
        panic!("a transaction's row has its terms");
    };
    terms.failed_leg = Some(0);
    let difference = state_difference(&c.ledgers[0], &home).expect("they differ");
    assert!(difference.starts_with("transactions["), "{difference}");
    let mut part = c.ledgers[1].clone();
    let at = part.transfers.find_part(&t.key()).unwrap();
    part.transfers.finish_part(at, PartState::Confirmed);
    let difference = state_difference(&c.ledgers[1], &part).expect("they differ");
    assert!(difference.starts_with("transaction parts["), "{difference}");
}

// ---------------------------------------------------------------------------------------------
// Random transactions over a few accounts of every partition, against a model of the rules.

/// Accounts of the random transactions: this many on each partition, all in USD.
const RANDOM_PER_PARTITION: usize = 2;

/// The random accounts: `RANDOM_PER_PARTITION` per partition, in partition order.
fn random_accounts() -> Vec<AccountId> {
    (0..PARTS)
        .flat_map(|p| (0..RANDOM_PER_PARTITION).map(move |i| account_on("r", p, PARTS, i)))
        .collect()
}

/// What the rules say of `legs` (indexes into the accounts) given each account's balance:
/// per partition, the lowest leg at which one of its accounts cannot cover its net debit;
/// and each account's net change if the transaction commits.
fn model(
    accounts: &[AccountId],
    balances: &[u64],
    legs: &[(usize, usize, u64)],
) -> (BTreeMap<PartitionId, u8>, Vec<i128>) {
    let mut net = vec![0i128; accounts.len()];
    let mut first_debit = vec![None; accounts.len()];
    for (index, &(from, to, minor)) in legs.iter().enumerate() {
        net[from] -= i128::from(minor);
        net[to] += i128::from(minor);
        first_debit[from].get_or_insert(index as u8);
    }
    let mut failing: BTreeMap<PartitionId, u8> = BTreeMap::new();
    for (i, account) in accounts.iter().enumerate() {
        if net[i] < 0 && -net[i] > i128::from(balances[i]) {
            let leg = first_debit[i].expect("a net debit has a debiting leg");
            let at = failing.entry(partition_of(account, PARTS)).or_insert(leg);
            *at = (*at).min(leg);
        }
    }
    (failing, net)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

    #[test]
    fn random_transactions_commit_or_cancel_as_the_rules_say_and_conserve_money(
        balances in proptest::collection::vec(0..6_000u64, PARTS as usize * RANDOM_PER_PARTITION),
        raw_legs in proptest::collection::vec((0..6usize, 1..6usize, 1..4_000u64), 1..9),
        reverse in proptest::bool::ANY,
        restart in 0..3u8,
    ) {
        let accounts = random_accounts();
        let n = accounts.len();
        let legs: Vec<(usize, usize, u64)> = raw_legs
            .iter()
            .map(|&(from, step, minor)| (from % n, (from + step) % n, minor))
            .collect();
        let mut c = Cluster::empty();
        for (account, &balance) in accounts.iter().zip(&balances) {
            let p = partition_of(account, PARTS);
            c.ok(p, open(*account, USD));
            if balance > 0 {
                c.ok(p, deposit(*account, balance, USD, "opening"));
            }
        }
        let t = tx(
            "r-1",
            legs.iter().map(|&(f, to, m)| usd(accounts[f], accounts[to], m)).collect(),
        );
        let k = t.key();
        let home = t.home(PARTS);
        let (failing, net) = model(&accounts, &balances, &legs);
        c.watch(&t);
        let (status, _) = c.status(home, transact(&t));
        let expected_net = if let Some(&leg) = failing.get(&home) {
            // Refused at the home: no participant is asked.
            let reason = Reason::InsufficientFunds;
            assert_eq!(status, TransferStatus::Rejected(reason));
            assert_eq!(c.ledgers[home as usize].transaction(&k).unwrap().failed_leg, Some(leg));
            false
        } else if t.is_local(PARTS) {
            assert_eq!(status, TransferStatus::Committed);
            true
        } else {
            assert_eq!(status, TransferStatus::Pending);
            let mut others: Vec<PartitionId> =
                t.participants(PARTS).into_iter().filter(|&p| p != home).collect();
            if reverse {
                others.reverse();
            }
            for &p in &others {
                let expected = match failing.get(&p) {
                    Some(&leg) => PhaseResult::LegFailed { leg, reason: Reason::InsufficientFunds },
                    None => PhaseResult::Tried,
                };
                assert_eq!(c.phase(p, try_on(&t, p)).0, expected);
            }
            match restart {
                0 => c.restart_from_snapshots(),
                1 => c.restart_from_logs(),
                _ => {}
            }
            if let Some(&lowest) = failing.values().min() {
                let reason = Reason::InsufficientFunds;
                c.done(home, decide_cancel(k, Some(lowest), reason));
                for &p in &others {
                    let expected = match failing.get(&p) {
                        Some(&leg) => PhaseResult::LegFailed { leg, reason },
                        None => PhaseResult::Cancelled,
                    };
                    assert_eq!(c.phase(p, cancel_on(k, p)).0, expected);
                }
                c.done(home, cancel_on(k, home));
                assert_eq!(c.status(home, transact(&t)).0, TransferStatus::Cancelled(reason));
                false
            } else {
                c.done(home, confirm_on(k, home));
                for &p in &others {
                    assert_eq!(c.phase(p, confirm_on(k, p)).0, PhaseResult::Confirmed);
                }
                assert_eq!(c.status(home, transact(&t)).0, TransferStatus::Committed);
                true
            }
        };
        for (i, account) in accounts.iter().enumerate() {
            let change = if expected_net { net[i] } else { 0 };
            let expected = u64::try_from(i128::from(balances[i]) + change).unwrap();
            assert_eq!(c.account(account), (expected, 0, 0), "{account}");
        }
        let total: u64 = accounts.iter().map(|a| c.account(a).0).sum();
        assert_eq!(total, balances.iter().sum::<u64>(), "money is neither made nor lost");
        c.check_durable();
    }
}
