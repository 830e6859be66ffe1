//! Generates the recorded logs in `fixtures/` (see `fixtures/README.md`).
//!
//! ```text
//! cargo run -p walletd-core --example gen_fixtures
//! ```
//!
//! Each log is the output of real [`Ledger`] commands, executed the way a partition driver
//! does (decide and apply, one record per event), on a fixed clock and with no randomness, so
//! the bytes depend only on this file and the codec. `core/tests/fixtures.rs` regenerates them
//! in memory and requires the committed files to be byte-identical, which keeps this file a
//! true description of them.

use std::path::Path;
use std::sync::Arc;

use walletd_core::ledger::{
    Command, Hold, Ledger, LedgerError, PhaseResult, RecordMeta, Refund, Reply, TransferStatus,
};
use walletd_core::log::codec::{encode_record, Record};
use walletd_core::model::event::{Decision, Reason, Timestamp, Transfer};
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency, WrittenAmount};
use walletd_core::model::partition::{partition_of, PartitionId};
use walletd_core::model::transaction::{Leg, Transaction};

/// 2024-03-01T09:00:00Z in microseconds: the first record of every fixture is stamped one
/// step after it.
pub const FIXTURE_EPOCH_US: Timestamp = 1_709_283_600_000_000;
/// How far the clock moves per command (90 seconds), whether or not it logs anything.
pub const FIXTURE_STEP_US: Timestamp = 90_000_000;

/// One fixture file: its name in `fixtures/`, the partition whose log it is, and its bytes.
pub struct Fixture {
    pub name: &'static str,
    pub partition: PartitionId,
    pub partitions: u32,
    pub bytes: Vec<u8>,
}

/// Every fixture, in a fixed order.
pub fn fixtures() -> Vec<Fixture> {
    vec![
        plain_day(),
        tcc_cancels(),
        torn_tail(),
        refunds(),
        holds(),
        transactions(),
    ]
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    std::fs::create_dir_all(&dir).expect("create fixtures/");
    let dir = dir.canonicalize().expect("fixtures/ exists");
    for fixture in fixtures() {
        let path = dir.join(fixture.name);
        std::fs::write(&path, &fixture.bytes).expect("write fixture");
        println!("wrote {} ({} bytes)", path.display(), fixture.bytes.len());
    }
}

/// A partition's ledger and the log its commands produced.
struct Log {
    ledger: Ledger,
    bytes: Vec<u8>,
    records: u64,
    now: Timestamp,
}

impl Log {
    fn new(partition: PartitionId, partitions: u32) -> Log {
        Log {
            ledger: Ledger::new(partition, partitions),
            bytes: Vec::new(),
            records: 0,
            now: FIXTURE_EPOCH_US,
        }
    }

    /// Executes `command`; each event it yields becomes the next record.
    fn run(&mut self, command: Command) -> Result<Reply, LedgerError> {
        self.now += FIXTURE_STEP_US;
        let mut events = Vec::new();
        // Decided at the fixture's clock, which holds' expiries are measured against.
        let reply = self.ledger.decide_at(&command, self.now, &mut events);
        for event in events {
            self.records += 1;
            let meta = RecordMeta {
                lsn: self.records,
                timestamp: self.now,
            };
            self.ledger
                .apply(meta, &event)
                .expect("decided events apply");
            let record = Record {
                lsn: meta.lsn,
                timestamp: meta.timestamp,
                event,
            };
            encode_record(&record, &mut self.bytes);
        }
        reply
    }

    fn currency_of(&self, account: &str) -> Currency {
        self.ledger.account(&id(account)).expect("opened").currency
    }

    fn open(&mut self, account: &str, currency: Currency) {
        let reply = self.run(Command::OpenAccount {
            account: self.local(account),
            currency,
        });
        assert_eq!(reply, Ok(Reply::Opened { created: true }));
    }

    /// A deposit (`withdraw == false`) or withdrawal of a decimal amount.
    fn cash(&mut self, account: &str, amount: &str, transaction_id: &str, withdraw: bool) {
        let currency = self.currency_of(account);
        let (account, amount) = (id(account), Amount::parse(amount, currency).unwrap());
        let transaction_id = txn(transaction_id);
        let command = if withdraw {
            Command::Withdraw {
                account,
                amount,
                currency,
                transaction_id,
            }
        } else {
            Command::Deposit {
                account,
                amount,
                currency,
                transaction_id,
            }
        };
        assert!(matches!(self.run(command), Ok(Reply::Balance { .. })));
    }

    fn deposit(&mut self, account: &str, amount: &str, transaction_id: &str) {
        self.cash(account, amount, transaction_id, false);
    }

    fn withdraw(&mut self, account: &str, amount: &str, transaction_id: &str) {
        self.cash(account, amount, transaction_id, true);
    }

    /// A client transfer from a local account; returns what the client is told.
    fn transfer(&mut self, t: &str, from: &str, to: &str, amount: &str) -> TransferStatus {
        let transfer = transfer(t, from, to, amount, self.currency_of(from));
        match self.run(Command::Transfer(transfer)) {
            Ok(Reply::Transfer(status)) => status,
            other => panic!("transfer {t} gave {other:?}"),
        }
    }

    /// The home partition's coordinator: logs a decision, then the destination's ack.
    fn decide(&mut self, t: &Transfer, decision: Decision) {
        let key = t.key();
        assert_eq!(self.run(Command::Decide { key, decision }), Ok(Reply::Done));
    }

    fn finish(&mut self, t: &Transfer) {
        let key = t.key();
        assert_eq!(self.run(Command::FinishDebit { key }), Ok(Reply::Done));
    }

    /// A phase message from another partition, answered by this one.
    fn phase(&mut self, command: Command) -> PhaseResult {
        match self.run(command.clone()) {
            Ok(Reply::Phase(result)) => result,
            other => panic!("{command:?} gave {other:?}"),
        }
    }

    /// A client refund of the transfer `original` from `source`, taken from `from` (the
    /// original's destination, local); returns what the client is told.
    fn refund(
        &mut self,
        refund_id: &str,
        (source, original): (&str, &str),
        from: &str,
        amount: Option<&str>,
    ) -> TransferStatus {
        let currency = self.currency_of(from);
        let refund = Refund {
            refund_id: txn(refund_id),
            original: walletd_core::model::event::TransferKey {
                from: id(source),
                transaction_id: txn(original),
            },
            partition: partition_of(&self.local(from), self.ledger.partitions()),
            amount: amount.map(|a| Amount::parse(a, currency).unwrap()),
        };
        match self.run(Command::Refund(refund)) {
            Ok(Reply::Transfer(status)) => status,
            other => panic!("refund {refund_id} gave {other:?}"),
        }
    }

    /// A client hold from a local account, held for `expires_in_us`; returns what the
    /// client is told.
    fn hold(
        &mut self,
        t: &str,
        from: &str,
        to: &str,
        amount: &str,
        expires_in_us: u64,
    ) -> TransferStatus {
        let transfer = transfer(t, from, to, amount, self.currency_of(from));
        let hold = Hold {
            transfer,
            expires_in_us,
        };
        match self.run(Command::Hold(Box::new(hold))) {
            Ok(Reply::Transfer(status)) => status,
            other => panic!("hold {t} gave {other:?}"),
        }
    }

    /// A client capture (`amount` `Some`, or all of it for `None`) or, with `void`, a void
    /// of the local hold `t` from `from`; returns what the client is told.
    fn end_hold(
        &mut self,
        t: &str,
        from: &str,
        amount: Option<&str>,
        void: bool,
    ) -> TransferStatus {
        let key = walletd_core::model::event::TransferKey {
            from: self.local(from),
            transaction_id: txn(t),
        };
        let command = if void {
            Command::Void { key }
        } else {
            let amount = amount.map(|a| WrittenAmount::parse(a).unwrap());
            Command::Capture { key, amount }
        };
        match self.run(command) {
            Ok(Reply::HoldEnd(end)) => end.status,
            other => panic!("end of hold {t} gave {other:?}"),
        }
    }

    fn local(&self, account: &str) -> AccountId {
        let account = id(account);
        let (partition, partitions) = (self.ledger.partition(), self.ledger.partitions());
        assert_eq!(partition_of(&account, partitions), partition, "{account}");
        account
    }

    fn into_fixture(self, name: &'static str) -> Fixture {
        assert_eq!(self.ledger.check_conservation(), Ok(()));
        Fixture {
            name,
            partition: self.ledger.partition(),
            partitions: self.ledger.partitions(),
            bytes: self.bytes,
        }
    }
}

fn id(text: &str) -> AccountId {
    AccountId::new(text).unwrap()
}

fn txn(text: &str) -> TransactionId {
    TransactionId::new(text).unwrap()
}

fn transfer(t: &str, from: &str, to: &str, amount: &str, currency: Currency) -> Transfer {
    Transfer {
        transaction_id: txn(t),
        from: id(from),
        to: id(to),
        amount: Amount::parse(amount, currency).unwrap(),
        currency,
    }
}

/// Partition 3 of 8 (frank, grace, niaj, olivia, yolanda, bea, fay and nia live there): a day
/// of accounts in four currencies, deposits, withdrawals and same-partition transfers, one
/// rejected for insufficient funds. Retries log nothing; a refused deposit logs its refusal (`CashRefused`).
fn plain_day() -> Fixture {
    let mut log = Log::new(3, 8);
    let opened = [
        ("frank", Currency::USD),
        ("grace", Currency::USD),
        ("niaj", Currency::USD),
        ("nia", Currency::USD),
        ("olivia", Currency::EUR),
        ("yolanda", Currency::EUR),
        ("bea", Currency::JPY),
        ("fay", Currency::KWD),
    ];
    for (account, currency) in opened {
        log.open(account, currency);
    }
    let deposits = [
        ("frank", "1000.00"),
        ("grace", "250.00"),
        ("niaj", "75.50"),
        ("nia", "40"),
        ("olivia", "500.00"),
        ("yolanda", "20.05"),
        ("bea", "12000"),
        ("fay", "3.250"),
    ];
    for (n, (account, amount)) in deposits.into_iter().enumerate() {
        log.deposit(account, amount, &format!("dep-{}", n + 1));
    }
    plain_day_trading(&mut log);
    log.into_fixture("plain_day.log")
}

/// The rest of the plain day, after the accounts are opened and funded.
fn plain_day_trading(log: &mut Log) {
    let committed = TransferStatus::Committed;
    let moves = [
        ("xfer-1", "frank", "grace", "120.00"),
        ("xfer-2", "grace", "niaj", "30.25"),
        ("xfer-3", "olivia", "yolanda", "45.00"),
        ("xfer-4", "niaj", "frank", "5.75"),
        ("xfer-5", "frank", "nia", "60"),
    ];
    for (t, from, to, amount) in moves {
        assert_eq!(log.transfer(t, from, to, amount), committed);
    }
    log.withdraw("grace", "50.00", "wd-1");
    log.withdraw("bea", "2000", "wd-2");
    log.withdraw("fay", "1.125", "wd-3");
    // A retry of a deposit (not logged) and a deposit in the wrong currency (its refusal is).
    log.deposit("frank", "1000.00", "dep-1");
    let wrong_currency = log.run(Command::Deposit {
        account: id("bea"),
        amount: Amount::from_minor(100).unwrap(),
        currency: Currency::USD,
        transaction_id: txn("dep-x"),
    });
    assert!(matches!(
        wrong_currency,
        Err(LedgerError::CurrencyMismatch { .. })
    ));
    let rejected = TransferStatus::Rejected(Reason::InsufficientFunds);
    assert_eq!(
        log.transfer("xfer-6", "niaj", "grace", "10000.00"),
        rejected
    );
    let evening = [
        ("xfer-7", "yolanda", "olivia", "65.05"),
        ("xfer-8", "grace", "frank", "0.01"),
        ("xfer-9", "nia", "niaj", "99.99"),
        ("xfer-10", "frank", "niaj", "12.34"),
        ("xfer-11", "olivia", "yolanda", "1.00"),
        ("xfer-12", "niaj", "nia", "0.50"),
        ("xfer-13", "grace", "nia", "33.33"),
        ("xfer-14", "frank", "grace", "250.00"),
    ];
    for (t, from, to, amount) in evening {
        assert_eq!(log.transfer(t, from, to, amount), committed);
    }
    log.deposit("fay", "0.875", "dep-9");
    log.deposit("bea", "500", "dep-10");
    log.withdraw("frank", "100.00", "wd-4");
    log.withdraw("nia", "30.00", "wd-5");
    log.withdraw("yolanda", "1.00", "wd-6");
    log.deposit("olivia", "7.77", "dep-11");
    log.withdraw("fay", "3.000", "wd-7");
    let night = [
        ("xfer-15", "niaj", "grace", "100.00"),
        ("xfer-16", "grace", "frank", "6.41"),
        ("xfer-17", "nia", "niaj", "3.84"),
        ("xfer-18", "olivia", "yolanda", "26.82"),
        ("xfer-19", "frank", "nia", "63.42"),
        ("xfer-20", "niaj", "frank", "15.67"),
    ];
    for (t, from, to, amount) in night {
        assert_eq!(log.transfer(t, from, to, amount), committed);
    }
    log.deposit("yolanda", "100.00", "dep-12");
    log.deposit("bea", "1", "dep-13");
    log.withdraw("bea", "10501", "wd-8");
    log.withdraw("olivia", "500.00", "wd-9");
}

/// Partition 7 of 8 (alice, dave, judy and peggy live there; bob, carol, erin, heidi, sam,
/// sybil and trent do not): both sides of cross-partition transfers, driven by hand in the
/// order the coordinator and the peers would. Committed and cancelled transfers on both
/// sides, a Cancel that arrives before its Try and the late Try failing, duplicate phase
/// messages (logged once), and transfers still in flight at the end.
fn tcc_cancels() -> Fixture {
    let mut log = Log::new(7, 8);
    log.open("alice", Currency::USD);
    log.open("dave", Currency::USD);
    log.open("judy", Currency::USD);
    log.open("peggy", Currency::EUR);
    log.deposit("alice", "500.00", "dep-1");
    log.deposit("dave", "200.00", "dep-2");
    log.deposit("peggy", "80.00", "dep-3");
    // Source side, committed: alice pays bob on partition 4.
    let to_bob = transfer("xfer-1", "alice", "bob", "50.00", Currency::USD);
    assert_eq!(
        log.transfer("xfer-1", "alice", "bob", "50.00"),
        TransferStatus::Pending
    );
    log.decide(&to_bob, Decision::Confirm);
    log.finish(&to_bob);
    // Destination side, committed: carol (partition 2) pays judy; the Confirm is resent.
    let from_carol = transfer("in-1", "carol", "judy", "25.00", Currency::USD);
    assert_eq!(
        log.phase(Command::TryCredit(from_carol)),
        PhaseResult::Tried
    );
    assert_eq!(
        log.phase(Command::TryCredit(from_carol)),
        PhaseResult::Tried
    );
    for _ in 0..2 {
        let confirmed = log.phase(Command::ConfirmCredit(from_carol));
        assert_eq!(confirmed, PhaseResult::Confirmed);
    }
    // Source side, cancelled: sam's partition has no such account, so its Try fails.
    let to_sam = transfer("xfer-2", "dave", "sam", "40.00", Currency::USD);
    assert_eq!(
        log.transfer("xfer-2", "dave", "sam", "40.00"),
        TransferStatus::Pending
    );
    log.decide(&to_sam, Decision::Cancel(Reason::DestinationNotFound));
    log.finish(&to_sam);
    tcc_out_of_order(&mut log);
    tcc_in_flight(&mut log);
    log.into_fixture("tcc_cancels.log")
}

/// Barrier cases at the destination, and an interleaved pair of transfers.
fn tcc_out_of_order(log: &mut Log) {
    let cancelled = PhaseResult::Cancelled;
    // trent's home timed out and cancelled before its Try reached us: a null compensation,
    // then the late Try fails and logs nothing.
    let from_trent = transfer("in-2", "trent", "dave", "15.00", Currency::USD);
    assert_eq!(log.phase(Command::CancelCredit(from_trent)), cancelled);
    let late = log.phase(Command::TryCredit(from_trent));
    assert_eq!(late, PhaseResult::TryFailed(Reason::CancelledBeforeTry));
    // heidi's Try arrived, then her home cancelled it (twice: the second is a no-op).
    let from_heidi = transfer("in-3", "heidi", "alice", "30.00", Currency::USD);
    assert_eq!(
        log.phase(Command::TryCredit(from_heidi)),
        PhaseResult::Tried
    );
    assert_eq!(log.phase(Command::CancelCredit(from_heidi)), cancelled);
    assert_eq!(log.phase(Command::CancelCredit(from_heidi)), cancelled);
    // peggy pays carol while bob pays peggy, both in EUR, interleaved.
    let to_carol = transfer("xfer-3", "peggy", "carol", "10.00", Currency::EUR);
    let from_bob = transfer("in-4", "bob", "peggy", "5.00", Currency::EUR);
    assert_eq!(
        log.transfer("xfer-3", "peggy", "carol", "10.00"),
        TransferStatus::Pending
    );
    assert_eq!(log.phase(Command::TryCredit(from_bob)), PhaseResult::Tried);
    log.decide(&to_carol, Decision::Confirm);
    assert_eq!(
        log.phase(Command::ConfirmCredit(from_bob)),
        PhaseResult::Confirmed
    );
    log.finish(&to_carol);
    // A remote transfer refused at home for insufficient funds.
    let rejected = TransferStatus::Rejected(Reason::InsufficientFunds);
    assert_eq!(
        log.transfer("xfer-4", "alice", "trent", "1000.00"),
        rejected
    );
}

/// A cancel for a timeout, and transfers left unfinished when the log ends.
fn tcc_in_flight(log: &mut Log) {
    let to_bob = transfer("xfer-5", "judy", "bob", "20.00", Currency::USD);
    assert_eq!(
        log.transfer("xfer-5", "judy", "bob", "20.00"),
        TransferStatus::Pending
    );
    log.decide(&to_bob, Decision::Cancel(Reason::Timeout));
    log.finish(&to_bob);
    // Left Confirming: the destination's acknowledgement has not arrived.
    let to_carol = transfer("xfer-6", "alice", "carol", "70.00", Currency::USD);
    assert_eq!(
        log.transfer("xfer-6", "alice", "carol", "70.00"),
        TransferStatus::Pending
    );
    log.decide(&to_carol, Decision::Confirm);
    // Left Trying, and a pending credit: the last records of a busy partition.
    assert_eq!(
        log.transfer("xfer-7", "dave", "heidi", "12.00"),
        TransferStatus::Pending
    );
    let from_sybil = transfer("in-5", "sybil", "judy", "9.99", Currency::USD);
    assert_eq!(
        log.phase(Command::TryCredit(from_sybil)),
        PhaseResult::Tried
    );
}

/// Partition 3 of 8: five whole records, then the first 13 bytes of a sixth, as a crash in
/// the middle of a write leaves them.
fn torn_tail() -> Fixture {
    let mut log = Log::new(3, 8);
    log.open("frank", Currency::USD);
    log.open("grace", Currency::USD);
    log.deposit("frank", "100.00", "dep-1");
    assert_eq!(
        log.transfer("xfer-1", "frank", "grace", "25.00"),
        TransferStatus::Committed
    );
    log.withdraw("grace", "5.00", "wd-1");
    let whole = log.bytes.len();
    log.deposit("grace", "1.00", "dep-2");
    log.bytes.truncate(whole + TORN_TAIL_PARTIAL_LEN);
    log.into_fixture("torn_tail.log")
}

/// Bytes of the record cut short at the end of `torn_tail.log`: the 8-byte header and the
/// first 5 bytes of the body.
pub const TORN_TAIL_PARTIAL_LEN: usize = 13;

/// Partition 7 of 8 (alice, dave, judy): refunds. A transfer within the partition refunded in
/// part, then refused for asking more than is left, then refunded of all that is left, and a
/// refund when nothing is; a retried refund logs nothing. A credit from carol (partition 2)
/// refunded back across partitions: one refund cancelled by its destination (and so no longer
/// counted), then all of it refunded and committed, and one refund left in flight.
fn refunds() -> Fixture {
    let mut log = Log::new(7, 8);
    log.open("alice", Currency::USD);
    log.open("dave", Currency::USD);
    log.open("judy", Currency::USD);
    log.deposit("alice", "500.00", "dep-1");
    let committed = TransferStatus::Committed;
    let exceeds = TransferStatus::Rejected(Reason::RefundExceedsOriginal);
    assert_eq!(log.transfer("t-1", "alice", "dave", "100.00"), committed);
    let t1 = ("alice", "t-1");
    assert_eq!(log.refund("r-1", t1, "dave", Some("30.00")), committed);
    assert_eq!(log.refund("r-1", t1, "dave", Some("30.00")), committed);
    assert_eq!(log.refund("r-2", t1, "dave", Some("80.00")), exceeds);
    assert_eq!(log.refund("r-3", t1, "dave", None), committed);
    assert_eq!(log.refund("r-4", t1, "dave", None), exceeds);
    // carol pays judy from partition 2; judy refunds across partitions.
    let from_carol = transfer("in-1", "carol", "judy", "60.00", Currency::USD);
    assert_eq!(
        log.phase(Command::TryCredit(from_carol)),
        PhaseResult::Tried
    );
    let confirmed = log.phase(Command::ConfirmCredit(from_carol));
    assert_eq!(confirmed, PhaseResult::Confirmed);
    let in1 = ("carol", "in-1");
    let pending = TransferStatus::Pending;
    assert_eq!(log.refund("r-5", in1, "judy", Some("25.00")), pending);
    let r5 = transfer("r-5", "judy", "carol", "25.00", Currency::USD);
    log.decide(&r5, Decision::Cancel(Reason::DestinationBalanceLimit));
    log.finish(&r5);
    assert_eq!(log.refund("r-6", in1, "judy", Some("50.00")), pending);
    let key = transfer("r-6", "judy", "carol", "50.00", Currency::USD).key();
    assert_eq!(log.run(Command::CommitDebit { key }), Ok(Reply::Done));
    assert_eq!(log.refund("r-7", in1, "judy", None), pending);
    log.into_fixture("refunds.log")
}

/// Partition 7 of 8 (alice, dave, judy): holds. Within the partition: a hold captured in part
/// (a retried capture logs nothing) and then refunded; a hold voided (a capture after it is
/// answered with the void); a hold whose capture comes after its expiry, which records the
/// expiry; a hold left held at the end. Across partitions (carol lives on partition 2): a
/// hold held at its commit point and captured whole, one voided (its cancel acknowledged),
/// and a hold from carol to judy captured in part at this end (`CreditCaptured`).
fn holds() -> Fixture {
    const TEN_MINUTES: u64 = 600_000_000;
    let mut log = Log::new(7, 8);
    log.open("alice", Currency::USD);
    log.open("dave", Currency::USD);
    log.open("judy", Currency::USD);
    log.deposit("alice", "500.00", "dep-1");
    let (held, captured) = (TransferStatus::Held, TransferStatus::Captured);
    let voided = TransferStatus::Cancelled(Reason::HoldVoided);
    let expired = TransferStatus::Cancelled(Reason::HoldExpired);
    assert_eq!(
        log.hold("h-1", "alice", "dave", "100.00", TEN_MINUTES),
        held
    );
    assert_eq!(log.end_hold("h-1", "alice", Some("40.00"), false), captured);
    assert_eq!(log.end_hold("h-1", "alice", Some("40.00"), false), captured);
    assert_eq!(
        log.refund("r-1", ("alice", "h-1"), "dave", Some("15.00")),
        TransferStatus::Committed
    );
    assert_eq!(log.hold("h-2", "alice", "dave", "50.00", TEN_MINUTES), held);
    assert_eq!(log.end_hold("h-2", "alice", None, true), voided);
    assert_eq!(log.end_hold("h-2", "alice", None, false), voided);
    // Expires within a step of the fixture's clock: the capture that follows comes late.
    assert_eq!(log.hold("h-3", "alice", "dave", "30.00", 60_000_000), held);
    assert_eq!(log.end_hold("h-3", "alice", Some("30.00"), false), expired);
    // Across partitions: pending until the destination tried, then held.
    let pending = TransferStatus::Pending;
    assert_eq!(
        log.hold("h-4", "alice", "carol", "70.00", TEN_MINUTES),
        pending
    );
    let key = transfer("h-4", "alice", "carol", "70.00", Currency::USD).key();
    assert_eq!(log.run(Command::CommitDebit { key }), Ok(Reply::Done));
    assert_eq!(log.end_hold("h-4", "alice", None, false), captured);
    assert_eq!(
        log.hold("h-5", "alice", "carol", "20.00", TEN_MINUTES),
        pending
    );
    let h5 = transfer("h-5", "alice", "carol", "20.00", Currency::USD);
    let key = h5.key();
    assert_eq!(log.run(Command::CommitDebit { key }), Ok(Reply::Done));
    assert_eq!(log.end_hold("h-5", "alice", None, true), voided);
    log.finish(&h5);
    // carol's hold to judy, from partition 2: tried here, then captured in part.
    let from_carol = transfer("in-1", "carol", "judy", "60.00", Currency::USD);
    assert_eq!(
        log.phase(Command::TryCredit(from_carol)),
        PhaseResult::Tried
    );
    let part = transfer("in-1", "carol", "judy", "25.00", Currency::USD);
    assert_eq!(
        log.phase(Command::ConfirmCredit(part)),
        PhaseResult::Confirmed
    );
    assert_eq!(log.hold("h-6", "alice", "judy", "10.00", TEN_MINUTES), held);
    log.into_fixture("holds.log")
}

/// A transaction of `legs` (from, to, amount) under `id`; each leg in its source's currency.
fn tx(log: &Log, id: &str, legs: &[(&str, &str, &str)]) -> Arc<Transaction> {
    let legs = legs
        .iter()
        .map(|(from, to, amount)| {
            // A source on another partition: USD, as every remote account of the fixtures.
            let currency = log
                .ledger
                .account(&self::id(from))
                .map_or(Currency::USD, |a| a.currency);
            Leg {
                from: self::id(from),
                to: self::id(to),
                amount: Amount::parse(amount, currency).unwrap(),
                currency,
            }
        })
        .collect();
    Transaction::new(txn(id), legs).expect("valid legs")
}

/// Partition 7 of 8 (alice, dave, judy, oscar in USD; peggy, mike in EUR): multi-leg
/// transactions. Within the partition: three legs passing money through dave, who starts
/// empty (a retry logs nothing); an exchange through two liquidity accounts (alice's USD to
/// oscar, mike's EUR to peggy); a net debit that does not fit and a leg in another currency,
/// each refused naming its leg. Across partitions (carol lives on partition 2), as the home:
/// one committed once its participants tried, one cancelled for a participant's refusal of
/// its leg 1. As a participant of carol's: one tried and confirmed, one tried and cancelled,
/// one refused (judy's net debit does not fit), and a cancel that came before any Try.
fn transactions() -> Fixture {
    let mut log = Log::new(7, 8);
    for (account, currency) in [
        ("alice", Currency::USD),
        ("dave", Currency::USD),
        ("judy", Currency::USD),
        ("oscar", Currency::USD),
        ("peggy", Currency::EUR),
        ("mike", Currency::EUR),
    ] {
        log.open(account, currency);
    }
    log.deposit("alice", "500.00", "dep-1");
    log.deposit("mike", "1000.00", "dep-2");
    let committed = Ok(Reply::Transfer(TransferStatus::Committed));
    let x1 = tx(
        &log,
        "x-1",
        &[
            ("alice", "dave", "100.00"),
            ("dave", "judy", "100.00"),
            ("alice", "judy", "5.00"),
        ],
    );
    assert_eq!(log.run(Command::Transact(x1.clone())), committed);
    assert_eq!(log.run(Command::Transact(x1)), committed);
    let x2 = tx(
        &log,
        "x-2",
        &[("alice", "oscar", "50.00"), ("mike", "peggy", "45.00")],
    );
    assert_eq!(log.run(Command::Transact(x2)), committed);
    let x3 = tx(
        &log,
        "x-3",
        &[("judy", "alice", "1.00"), ("dave", "judy", "10.00")],
    );
    let refused = |reason| Ok(Reply::Transfer(TransferStatus::Rejected(reason)));
    assert_eq!(
        log.run(Command::Transact(x3)),
        refused(Reason::InsufficientFunds)
    );
    let x4 = tx(
        &log,
        "x-4",
        &[("alice", "dave", "1.00"), ("alice", "peggy", "1.00")],
    );
    assert_eq!(
        log.run(Command::Transact(x4)),
        refused(Reason::DestinationCurrencyMismatch)
    );
    // As the home of transactions across partitions.
    let pending = Ok(Reply::Transfer(TransferStatus::Pending));
    let x5 = tx(
        &log,
        "x-5",
        &[("alice", "carol", "30.00"), ("alice", "dave", "20.00")],
    );
    let (key, partition) = (x5.key(), 7);
    assert_eq!(log.run(Command::Transact(x5)), pending);
    let confirm = Command::ConfirmTransaction { key, partition };
    assert_eq!(log.run(confirm), Ok(Reply::Done));
    let x6 = tx(
        &log,
        "x-6",
        &[("alice", "judy", "40.00"), ("judy", "carol", "5.00")],
    );
    let key = x6.key();
    assert_eq!(log.run(Command::Transact(x6)), pending);
    let decide = Command::DecideTransactionCancel {
        key,
        failed_leg: Some(1),
        reason: Reason::DestinationNotFound,
    };
    assert_eq!(log.run(decide), Ok(Reply::Done));
    assert_eq!(
        log.run(Command::CancelTransaction { key, partition }),
        Ok(Reply::Done)
    );
    // As a participant of carol's transactions.
    let y1 = tx(
        &log,
        "y-1",
        &[("carol", "judy", "60.00"), ("carol", "alice", "10.00")],
    );
    let key = y1.key();
    let try_y1 = Command::TryTransaction { tx: y1, partition };
    assert_eq!(log.phase(try_y1), PhaseResult::Tried);
    let confirm = Command::ConfirmTransaction { key, partition };
    assert_eq!(log.phase(confirm), PhaseResult::Confirmed);
    let y2 = tx(
        &log,
        "y-2",
        &[("carol", "dave", "5.00"), ("dave", "carol", "2.00")],
    );
    let key = y2.key();
    assert_eq!(
        log.phase(Command::TryTransaction { tx: y2, partition }),
        PhaseResult::Tried
    );
    let cancel = Command::CancelTransaction { key, partition };
    assert_eq!(log.phase(cancel), PhaseResult::Cancelled);
    let y3 = tx(
        &log,
        "y-3",
        &[("carol", "judy", "1.00"), ("judy", "carol", "9000.00")],
    );
    assert_eq!(
        log.phase(Command::TryTransaction { tx: y3, partition }),
        PhaseResult::LegFailed {
            leg: 1,
            reason: Reason::InsufficientFunds
        }
    );
    let y4 = tx(&log, "y-4", &[("carol", "judy", "3.00")]);
    let abort = Command::AbortTransaction { tx: y4, partition };
    assert_eq!(
        log.phase(abort),
        PhaseResult::TryFailed(Reason::CancelledBeforeTry)
    );
    log.into_fixture("transactions.log")
}
