//! Logs with multi-leg transactions for the history tests: two partitions' logs written by
//! real [`Ledger`]s, with every outcome of a transaction at its home and at a participant.

use std::sync::Arc;

use walletd_core::ledger::{Command, Ledger, PhaseResult, Reply, TransferStatus};
use walletd_core::log::codec::Record;
use walletd_core::model::event::{Reason, TransferKey};
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency};
use walletd_core::model::partition::{partition_of, PartitionId};
use walletd_core::model::transaction::{Leg, Transaction};

/// How many partitions the logs are of.
pub(crate) const PARTITIONS: u32 = 2;

/// Two partitions run the way their drivers run them: each command executed on the ledger of
/// its partition, each event logged there as the next record.
pub(crate) struct TwoPartitions {
    ledgers: [Ledger; 2],
    pub(crate) logs: [Vec<Record>; 2],
    now: u64,
}

impl TwoPartitions {
    fn new() -> TwoPartitions {
        TwoPartitions {
            ledgers: [Ledger::new(0, PARTITIONS), Ledger::new(1, PARTITIONS)],
            logs: [Vec::new(), Vec::new()],
            now: 1_700_000_000_000_000,
        }
    }

    fn run(&mut self, partition: PartitionId, command: Command) -> Reply {
        self.now += 1_000;
        let p = partition as usize;
        let mut events = Vec::new();
        let reply = self.ledgers[p]
            .execute(&command, self.now, &mut events)
            .unwrap_or_else(|e| panic!("{command:?}: {e}"));
        for event in events {
            let lsn = self.logs[p].len() as u64 + 1;
            self.logs[p].push(Record {
                lsn,
                timestamp: self.now,
                event,
            });
        }
        reply
    }

    fn open(&mut self, account: AccountId, currency: Currency, deposit: u64) {
        let partition = partition_of(&account, PARTITIONS);
        self.run(partition, Command::OpenAccount { account, currency });
        if deposit > 0 {
            let transaction_id = TransactionId::new(&format!("fund-{account}")).unwrap();
            let amount = Amount::from_minor(deposit).unwrap();
            let deposit = Command::Deposit {
                account,
                amount,
                currency,
                transaction_id,
            };
            self.run(partition, deposit);
        }
    }

    /// The client's transaction at its home: its answer.
    fn transact(&mut self, tx: &Arc<Transaction>) -> TransferStatus {
        match self.run(tx.home(PARTITIONS), Command::Transact(tx.clone())) {
            Reply::Transfer(status) => status,
            other => panic!("{other:?}"),
        }
    }

    /// The home's Try at the other partition: its answer.
    fn try_at_other(&mut self, tx: &Arc<Transaction>) -> PhaseResult {
        let partition = 1 - tx.home(PARTITIONS);
        let tx = tx.clone();
        match self.run(partition, Command::TryTransaction { tx, partition }) {
            Reply::Phase(result) => result,
            other => panic!("{other:?}"),
        }
    }

    fn confirm(&mut self, key: TransferKey, partition: PartitionId) {
        self.run(partition, Command::ConfirmTransaction { key, partition });
    }

    fn cancel(&mut self, key: TransferKey, partition: PartitionId) {
        self.run(partition, Command::CancelTransaction { key, partition });
    }

    fn decide_cancel(&mut self, key: TransferKey, failed_leg: Option<u8>, reason: Reason) {
        let home = partition_of(&key.from, PARTITIONS);
        let decide = Command::DecideTransactionCancel {
            key,
            failed_leg,
            reason,
        };
        assert_eq!(self.run(home, decide), Reply::Done);
    }
}

/// `count` account ids starting with `prefix` that live on `partition`.
fn accounts_on(prefix: &str, partition: PartitionId, count: usize) -> Vec<AccountId> {
    (0..)
        .map(|i| AccountId::new(&format!("{prefix}{i}")).unwrap())
        .filter(|account| partition_of(account, PARTITIONS) == partition)
        .take(count)
        .collect()
}

fn leg(from: AccountId, to: AccountId, minor: u64) -> Leg {
    Leg {
        from,
        to,
        amount: Amount::from_minor(minor).unwrap(),
        currency: Currency::USD,
    }
}

fn tx(id: &str, legs: Vec<Leg>) -> Arc<Transaction> {
    Transaction::new(TransactionId::new(id).unwrap(), legs).unwrap()
}

/// The logs of partitions 0 and 1 of two, with transactions of every outcome: applied within
/// a partition (an account passing money on, one whose legs cancel out), rejected, tried
/// and confirmed across partitions, refused by a participant and cancelled, cancelled for a
/// participant that never answered (one that tried and one that never saw the Try), and one
/// tried and confirmed only after other records. Transfers, holds and cash are in between.
pub(crate) fn transaction_logs() -> [Vec<Record>; 2] {
    let mut s = TwoPartitions::new();
    let here = accounts_on("p0-", 0, 4);
    let there = accounts_on("p1-", 1, 4);
    let (a, b, c, e) = (here[0], here[1], here[2], here[3]);
    let (d, f, g, h) = (there[0], there[1], there[2], there[3]);
    let funds = [
        (a, 10_000),
        (b, 0),
        (c, 5_00),
        (d, 40_00),
        (f, 1_00),
        (g, 0),
        (h, 2_00),
    ];
    for (account, deposit) in funds {
        s.open(account, Currency::USD, deposit);
    }
    s.open(e, Currency::EUR, 3_00);
    let committed = TransferStatus::Committed;
    let pending = TransferStatus::Pending;

    // Within partition 0: b starts empty and passes on what a gives it; c gets its net.
    let local = tx(
        "tx-local",
        vec![leg(a, b, 10_00), leg(b, c, 5_00), leg(c, a, 2_00)],
    );
    assert_eq!(s.transact(&local), committed);
    // b's legs cancel out: b does not move.
    let through = tx(
        "tx-through",
        vec![leg(a, b, 4_00), leg(b, a, 4_00), leg(a, c, 1_00)],
    );
    assert_eq!(s.transact(&through), committed);
    // Refused at its home: leg 1 takes more than c has.
    let rejected = tx("tx-rejected", vec![leg(a, b, 1_00), leg(c, a, 90_000)]);
    let refused = TransferStatus::Rejected(Reason::InsufficientFunds);
    assert_eq!(s.transact(&rejected), refused);
    // A leg in another currency than its account's.
    let wrong = tx("tx-currency", vec![leg(a, e, 1_00)]);
    let mismatch = TransferStatus::Rejected(Reason::DestinationCurrencyMismatch);
    assert_eq!(s.transact(&wrong), mismatch);

    // Across partitions, confirmed: a and c pay out, b is paid, d gets its net (6 - 2), g 3.
    let across = tx(
        "tx-across",
        vec![leg(a, d, 6_00), leg(d, b, 2_00), leg(c, g, 3_00)],
    );
    assert_eq!(s.transact(&across), pending);
    assert_eq!(s.try_at_other(&across), PhaseResult::Tried);
    s.confirm(across.key(), 0);
    s.confirm(across.key(), 1);

    // Home at partition 1, tried at 0 and left in flight while other records come.
    let late = tx(
        "tx-late",
        vec![leg(d, a, 3_00), leg(b, g, 1_00), leg(f, c, 50)],
    );
    assert_eq!(s.transact(&late), pending);
    assert_eq!(s.try_at_other(&late), PhaseResult::Tried);

    // Refused by the participant (f has too little): the home cancels.
    let refused_there = tx("tx-refused", vec![leg(a, d, 3_00), leg(f, b, 50_00)]);
    assert_eq!(s.transact(&refused_there), pending);
    let failed = PhaseResult::LegFailed {
        leg: 1,
        reason: Reason::InsufficientFunds,
    };
    assert_eq!(s.try_at_other(&refused_there), failed);
    let key = refused_there.key();
    s.decide_cancel(key, Some(1), Reason::InsufficientFunds);
    s.cancel(key, 0);

    // A Try that went unanswered: cancelled where it was tried, and at a participant that
    // never saw it (then refused for good, before any Try).
    let tried_then_cancelled = tx("tx-timeout", vec![leg(d, a, 1_00), leg(g, c, 10)]);
    assert_eq!(s.transact(&tried_then_cancelled), pending);
    assert_eq!(s.try_at_other(&tried_then_cancelled), PhaseResult::Tried);
    let key = tried_then_cancelled.key();
    s.decide_cancel(key, None, Reason::Timeout);
    s.cancel(key, 0);
    s.cancel(key, 1);
    let never_tried = tx("tx-unseen", vec![leg(c, f, 1_00), leg(a, b, 1_00)]);
    assert_eq!(s.transact(&never_tried), pending);
    let key = never_tried.key();
    s.decide_cancel(key, None, Reason::Timeout);
    s.cancel(key, 1);
    s.cancel(key, 0);

    // Other records, then the late transaction confirmed.
    let transfer = walletd_core::model::event::Transfer {
        transaction_id: TransactionId::new("t-plain").unwrap(),
        from: a,
        to: b,
        amount: Amount::from_minor(1_00).unwrap(),
        currency: Currency::USD,
    };
    assert_eq!(
        s.run(0, Command::Transfer(transfer)),
        Reply::Transfer(committed)
    );
    s.open(accounts_on("p0-late-", 0, 1)[0], Currency::USD, 1_00);
    s.confirm(late.key(), 1);
    s.confirm(late.key(), 0);
    // Passing money on across partitions: d receives from a and pays it to g at once.
    let relay = tx(
        "tx-relay",
        vec![leg(a, d, 2_00), leg(d, g, 2_00), leg(h, a, 50)],
    );
    assert_eq!(s.transact(&relay), pending);
    assert_eq!(s.try_at_other(&relay), PhaseResult::Tried);
    s.confirm(relay.key(), 0);
    s.confirm(relay.key(), 1);

    for ledger in &s.ledgers {
        assert_eq!(ledger.check_conservation(), Ok(()));
    }
    s.logs
}
