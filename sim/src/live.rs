//! The invariants that must hold at every instant, checked while a run goes: the first
//! violation stops the run there, with the moment it broke at, instead of leaving its traces
//! to be found in the final logs.
//!
//! [`LiveChecks`] is the drivers' observer ([`walletd_runtime::driver::observe`]), so it sees
//! every partition the moment it starts from recovery, every batch as it is cut, and every
//! release as it leaves, and checks with core's invariants:
//!
//! - **conservation with money in flight**, over every partition's state as of its latest
//!   cut batch ([`LiveBooks`]). Those states form a consistent cut (a message leaves only once
//!   the batch holding its cause is cut), so the exact formula of
//!   [`walletd_core::protocol::invariants`] applies, not a bound. Checked at most every
//!   [`CONSERVATION_EVERY`] of simulated time, when a batch is cut;
//! - **durable decisions**: every Confirm or Cancel a batch will send has its home's decision
//!   in the state the batch leaves (when it is cut), and that state is durable on the
//!   partition's `SimDisk` when it leaves;
//! - **durable releases**: no answer and no peer message leaves a batch whose records its
//!   disk has not synced at that instant (`durability`, `durable_release`);
//! - **damage refused**: no partition starts while its disk holds damage to synced data (a
//!   storage fault not yet restored, see [`crate::storage_faults`]): recovery must refuse
//!   it, not cut or trust it (`damage_refused`);
//! - **the commit point**: a home never logs a Cancel decision for a transfer whose
//!   destination has durably tried the same transfer's credit (`commit_point`): with the
//!   home's durable debit, that credit committed it. Durably tried means a Tried answer for
//!   it left the destination (which it does only once the credit is durable). The cut is
//!   consistent up to Tries, which leave before their debit is cut: a Try's pending credit
//!   is in no balance, so conservation does not see it;
//! - **the refund cap**: as each batch is cut, its refunds are of transfers committed into
//!   their source, and the refunds of a transfer accepted and not finally cancelled stay
//!   within its amount (`refund_cap`, core's [`invariants::RefundScan`] over the partition's
//!   records, from its first start; a restart takes it back to the records it recovered);
//! - **holds**: as each batch is cut, no hold ends twice (`hold_once`), none expires before
//!   its `expires_at` nor is captured or voided at or after it, by the stamp of the record
//!   that ends it (`hold_expiry`), and no capture takes more than its hold (`hold_capture`):
//!   core's [`invariants::HoldScan`], kept as the refund scan is. Conservation counts holds:
//!   held on their source, and a hold captured across partitions as committed for what was
//!   captured until its Confirm lands.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use walletd_core::ledger::{CreditState, Ledger, PhaseResult, TransferState};
use walletd_core::log::codec::{Record, RecordReader};
use walletd_core::model::event::{Decision, Event, Lsn, Reason, Transfer, TransferKey};
use walletd_core::model::money::Currency;
use walletd_core::model::partition::{partition_of, PartitionId};
use walletd_core::model::transaction::Transaction;
use walletd_core::protocol::coordinator::Phase;
use walletd_core::protocol::invariants::{
    self, HoldScan, Money, RefundScan, Totals, TransactionScan, TxSide,
};
use walletd_core::protocol::machine::{Commit, Release};
use walletd_core::protocol::message::PeerMessage;
use walletd_runtime::driver::observe::{self, Observer};
use walletd_runtime::driver::Channels;

use crate::checkers::Violation;
use crate::disk::Disk;
use crate::shared::Shared;

/// Simulated time between two checks of conservation across partitions. Every batch updates
/// its partition's books; the check itself, over all of them, runs at most this often.
pub const CONSERVATION_EVERY: Duration = Duration::from_millis(1);

/// What the live checks found, shared with the harness (which reads it after the run, or
/// after the panic that stopped it).
#[derive(Debug, Default)]
pub struct LiveVerdict {
    /// The first violation; the run stopped there.
    pub violation: Option<Violation>,
    /// Checks of conservation across partitions.
    pub conservation_checks: u64,
    /// Releases checked against their disks.
    pub releases: u64,
}

/// The verdict of a run's live checks. Clones share it.
pub type Verdict = Shared<LiveVerdict>;

/// One partition's money as of its latest cut batch: what conservation needs of it, kept up
/// to date from each batch's records rather than read from the whole ledger every time.
#[derive(Debug, Default)]
pub struct LiveBooks {
    /// Balances, holds, deposits and withdrawals per currency (from the ledger's accounts).
    totals: BTreeMap<Currency, Totals>,
    /// Cross-partition transfers this partition is home of, debited and not finished.
    unfinished: BTreeMap<TransferKey, Transfer>,
    /// Credits this partition confirmed as a destination.
    confirmed: HashSet<TransferKey>,
    /// Credits this partition tried as a destination and has not finished.
    pending: BTreeMap<TransferKey, Transfer>,
    /// Cross-partition transfers this partition is home of and committed, with the minor
    /// units that reach their destination (what was captured, for a hold).
    committed: HashMap<TransferKey, (Transfer, u64)>,
    /// Multi-leg transactions another partition is home of, tried here and not finished.
    tx_tried: BTreeMap<TransferKey, Arc<Transaction>>,
    /// Multi-leg transactions this partition is home of and committed, with their legs
    /// (other legs under the same key are another transaction, see
    /// [`Money::transaction_committed`]).
    tx_committed: HashMap<TransferKey, Arc<Transaction>>,
}

impl LiveBooks {
    /// The books of a partition that starts from `ledger`.
    fn recovered(ledger: &Ledger) -> LiveBooks {
        let mut books = LiveBooks::default();
        ledger.add_totals(&mut books.totals);
        ledger.for_each_unfinished(&mut |t| {
            books.unfinished.insert(t.key(), *t);
        });
        books.confirmed = ledger
            .credits()
            .filter(|(_, credit)| credit.state == CreditState::Confirmed)
            .map(|(key, _)| key)
            .collect();
        ledger.for_each_pending_credit(&mut |t| {
            books.pending.insert(t.key(), *t);
        });
        books.committed = ledger
            .transfers()
            .filter(|row| row.remote)
            .filter_map(|row| {
                let committed = ledger.debit_committed(&row.transfer)?;
                Some((row.transfer.key(), (row.transfer, committed)))
            })
            .collect();
        for tx in ledger.tried_transaction_parts() {
            books.tx_tried.insert(tx.key(), tx);
        }
        books.tx_committed = ledger
            .transfers()
            .filter(|row| row.state == TransferState::Committed)
            .filter_map(|row| {
                let key = row.transfer.key();
                Some((key, ledger.transaction(&key)?.tx.clone()))
            })
            .collect();
        books
    }

    /// A batch of partition `partition` holding `records` is cut, leaving `ledger`. Returns
    /// the Cancel decisions the batch logs, for the commit point.
    fn cut(
        &mut self,
        partition: PartitionId,
        ledger: &Ledger,
        records: &[Record],
    ) -> Vec<(TransferKey, Reason)> {
        let mut cancels = Vec::new();
        self.totals.clear();
        ledger.add_totals(&mut self.totals);
        for record in records {
            match record.event {
                // A hold captured across partitions is final at its home at once: what was
                // captured is on its way to the destination's pending credit.
                Event::HoldCaptured {
                    hold,
                    amount,
                    remote: true,
                } => {
                    self.unfinished.remove(&hold.key());
                    self.committed.insert(hold.key(), (hold, amount.minor()));
                }
                Event::CreditCaptured { key, .. } => {
                    self.pending.remove(&key);
                    self.confirmed.insert(key);
                }
                // A hold voided or expired once held: its credit was tried, by design; the
                // commit point is about transfers' Tries, not holds' ends.
                Event::HoldReleased { remote: true, .. } => continue,
                _ => {}
            }
            match &record.event {
                Event::TransactionTried { tx } if tx.home(ledger.partitions()) != partition => {
                    self.tx_tried.insert(tx.key(), tx.clone());
                }
                Event::TransactionConfirmed { key } | Event::TransactionCancelled { key } => {
                    let confirmed = matches!(record.event, Event::TransactionConfirmed { .. });
                    if partition_of(&key.from, ledger.partitions()) == partition {
                        let terms = ledger.transaction(key).filter(|_| confirmed);
                        if let Some(terms) = terms {
                            self.tx_committed.insert(*key, terms.tx.clone());
                        }
                    } else {
                        self.tx_tried.remove(key);
                    }
                }
                _ => {}
            }
            // A refund moves money as the transfer it is, a hold across partitions placed
            // as a debit's Try.
            match record.event.effect() {
                Event::DebitTried { transfer } => {
                    assert_ne!(partition_of(&transfer.to, ledger.partitions()), partition);
                    self.unfinished.insert(transfer.key(), transfer);
                }
                Event::DebitConfirmed { key } => {
                    if let Some(transfer) = self.unfinished.remove(&key) {
                        self.committed
                            .insert(key, (transfer, transfer.amount.minor()));
                    }
                }
                Event::DebitCancelled { key } => {
                    self.unfinished.remove(&key);
                }
                Event::CreditTried { transfer } => {
                    self.pending.insert(transfer.key(), transfer);
                }
                Event::CreditConfirmed { key } => {
                    self.pending.remove(&key);
                    self.confirmed.insert(key);
                }
                Event::CreditCancelled { key } => {
                    self.pending.remove(&key);
                }
                Event::TransferDecided {
                    key,
                    decision: Decision::Cancel(reason),
                } => cancels.push((key, reason)),
                _ => {}
            }
        }
        cancels
    }
}

/// One partition's scans of its own records, for the refund cap and the holds: the records
/// that matter to them, cut since the partition first started, and the scans over them.
#[derive(Debug)]
struct LiveScans {
    records: Vec<Record>,
    refunds: RefundScan,
    holds: HoldScan,
    transactions: TransactionScan,
}

impl LiveScans {
    fn new(partition: PartitionId, partitions: u32) -> LiveScans {
        LiveScans {
            records: Vec::new(),
            refunds: RefundScan::new(partition),
            holds: HoldScan::new(partition),
            transactions: TransactionScan::new(partition, partitions),
        }
    }

    /// The partition starts again from the records through `lsn` (what it recovered): the
    /// scans are folded anew over them.
    fn recovered(&mut self, partition: PartitionId, partitions: u32, lsn: Lsn) {
        self.records.retain(|record| record.lsn <= lsn);
        self.refunds = RefundScan::new(partition);
        self.holds = HoldScan::new(partition);
        self.transactions = TransactionScan::new(partition, partitions);
        for record in &self.records {
            // A violation among them stopped the run when it was cut.
            let _ = self.refunds.record(record.lsn, &record.event);
            let _ = self.holds.record(record);
            let _ = self.transactions.record(record);
        }
    }

    /// A batch's records are cut: the first violation of the refund cap or of the holds'
    /// invariants among them.
    fn cut(&mut self, records: &[Record]) -> Result<(), invariants::Violation> {
        for record in records {
            // The events the refund scan looks at: transfers committed here, refunds and
            // cancels; and the holds' placing and ends.
            let matters = HoldScan::looks_at(&record.event)
                || !matches!(
                    record.event,
                    Event::AccountOpened { .. }
                        | Event::Deposited { .. }
                        | Event::Withdrawn { .. }
                        | Event::CashRefused(_)
                        | Event::TransferRejected { .. }
                        | Event::DebitTried { .. }
                        | Event::TransferDecided { .. }
                        | Event::DebitConfirmed { .. }
                        | Event::HoldEstablished { .. }
                );
            if TransactionScan::looks_at(&record.event) {
                self.records.push(record.clone());
                self.transactions.record(record)?;
            } else if matters {
                self.records.push(record.clone());
                self.refunds.record(record.lsn, &record.event)?;
                self.holds.record(record)?;
            }
        }
        Ok(())
    }
}

/// The records of the batch `commit`.
fn records_of(commit: &Commit<Channels>) -> Vec<Record> {
    let mut records = Vec::new();
    let mut reader = RecordReader::new(&commit.bytes, commit.first_lsn);
    while let Some(record) = reader.next_record().expect("a batch's records decode") {
        records.push(record);
    }
    debug_assert_eq!(reader.valid_len(), commit.bytes.len());
    records
}

impl Money for LiveBooks {
    fn add_totals(&self, totals: &mut BTreeMap<Currency, Totals>) {
        for (currency, t) in &self.totals {
            let sum = totals.entry(*currency).or_default();
            sum.deposited += t.deposited;
            sum.withdrawn += t.withdrawn;
            sum.balances += t.balances;
            sum.holds += t.holds;
        }
    }

    fn for_each_unfinished(&self, each: &mut dyn FnMut(&Transfer)) {
        self.unfinished.values().for_each(each);
    }

    fn credit_confirmed(&self, key: &TransferKey) -> bool {
        self.confirmed.contains(key)
    }

    fn for_each_pending_credit(&self, each: &mut dyn FnMut(&Transfer)) {
        self.pending.values().for_each(each);
    }

    fn debit_committed(&self, transfer: &Transfer) -> Option<u64> {
        let (committed, minor) = self.committed.get(&transfer.key())?;
        (committed == transfer).then_some(*minor)
    }

    fn for_each_tried_transaction(&self, each: &mut dyn FnMut(&Arc<Transaction>)) {
        self.tx_tried.values().for_each(each);
    }

    fn transaction_committed(&self, tx: &Transaction) -> bool {
        self.tx_committed
            .get(&tx.key())
            .is_some_and(|committed| **committed == *tx)
    }
}

/// The live checks of one run: the observer of every driver of the simulation thread.
pub struct LiveChecks {
    /// One disk per partition: what each has synced, at the instant a release leaves.
    disks: Vec<Disk>,
    books: RefCell<Vec<LiveBooks>>,
    scans: RefCell<Vec<LiveScans>>,
    last_conservation: RefCell<Option<Instant>>,
    /// Per partition: credits answered Tried by a batch that is cut and not yet released,
    /// by the batch's last lsn.
    tried_unreleased: RefCell<Vec<BTreeMap<Lsn, Vec<Transfer>>>>,
    /// Credits some destination has answered Tried for, durably.
    durably_tried: RefCell<HashMap<TransferKey, Transfer>>,
    verdict: Verdict,
}

impl LiveChecks {
    /// Installs the live checks of a run over `disks` (one per partition) on this thread.
    pub fn install(disks: Vec<Disk>, verdict: Verdict) {
        let books = disks.iter().map(|_| LiveBooks::default()).collect();
        let partitions = disks.len() as u32;
        let scans = (0..partitions)
            .map(|partition| LiveScans::new(partition, partitions))
            .collect();
        let tried = disks.iter().map(|_| BTreeMap::new()).collect();
        let checks = LiveChecks {
            disks,
            books: RefCell::new(books),
            scans: RefCell::new(scans),
            last_conservation: RefCell::new(None),
            tried_unreleased: RefCell::new(tried),
            durably_tried: RefCell::new(HashMap::new()),
            verdict,
        };
        observe::install(Some(Rc::new(checks)));
    }

    /// Removes the live checks from this thread.
    pub fn uninstall() {
        observe::install(None);
    }

    /// Stops the run at `violation` of one of core's invariants.
    fn stop(&self, violation: invariants::Violation) -> ! {
        self.stop_at(Violation::from(violation))
    }

    /// Stops the run at `violation`: it is recorded for the report, and the panic ends the
    /// simulation at once (the harness turns it into the run's report).
    fn stop_at(&self, violation: Violation) -> ! {
        let message = format!("live check: {}: {}", violation.invariant, violation.detail);
        self.verdict.lock().violation.get_or_insert(violation);
        panic!("{message}");
    }

    /// The commit point, as batch `commit` of `partition` is cut leaving `ledger`: its Tried
    /// answers are noted (durable once released), and none of its Cancel decisions
    /// (`cancels`) is for a transfer whose credit a destination has durably tried.
    fn commit_point(
        &self,
        partition: PartitionId,
        ledger: &Ledger,
        commit: &Commit<Channels>,
        cancels: &[(TransferKey, Reason)],
    ) {
        let tried: Vec<Transfer> = (commit.release.peer_messages.iter())
            .filter_map(|message| match message {
                PeerMessage::Response(response)
                    if response.result == PhaseResult::Tried
                        && matches!(response.phase, Phase::Try | Phase::Abort) =>
                {
                    ledger.credit(&response.key)?.transfer
                }
                _ => None,
            })
            .collect();
        if !tried.is_empty() {
            self.tried_unreleased.borrow_mut()[partition as usize]
                .entry(commit.last_lsn)
                .or_default()
                .extend(tried);
        }
        for &(key, reason) in cancels {
            let home = ledger.transfer(&key).map(|row| row.transfer);
            let credited = self.durably_tried.borrow().get(&key).copied();
            if credited.is_some() && credited == home {
                self.stop_at(Violation::new(
                    "commit_point",
                    format!(
                        "partition {partition} decided Cancel({reason:?}) for {key:?}, whose \
                         destination had durably tried its credit: the transfer was committed"
                    ),
                ));
            }
        }
    }

    /// All or nothing, as a batch of `partition` holding `records` is cut: a home commits
    /// only what every other participant has tried (its Tried answer left once durable, so
    /// its cut records hold the Try), and a participant confirms only what its home
    /// committed (the Confirm left once the home's commit was cut).
    fn all_or_nothing(&self, partition: PartitionId, records: &[Record]) {
        let partitions = self.disks.len() as u32;
        let scans = self.scans.borrow();
        for record in records {
            let Event::TransactionConfirmed { key } = record.event else {
                continue;
            };
            let home = partition_of(&key.from, partitions);
            let problem = if home == partition {
                let Some(tx) = (scans[partition as usize].transactions.seen())
                    .get(&key)
                    .and_then(|seen| seen.tx.clone())
                else {
                    continue;
                };
                (tx.participants(partitions).into_iter())
                    .filter(|p| *p != home)
                    .find_map(|p| {
                        let side = scans[p as usize].transactions.side(&key);
                        (!matches!(side, Some(TxSide::Tried | TxSide::Confirmed))).then(|| {
                            format!(
                                "home {home} committed it (lsn {}), participant {p} {side:?}",
                                record.lsn
                            )
                        })
                    })
            } else {
                let side = scans[home as usize].transactions.side(&key);
                (side != Some(TxSide::Confirmed)).then(|| {
                    format!(
                        "participant {partition} confirmed it (lsn {}), home {home} {side:?}",
                        record.lsn
                    )
                })
            };
            if let Some(detail) = problem {
                drop(scans);
                self.stop(invariants::Violation::TxAtomicity { key, detail });
            }
        }
    }

    /// Conservation across the partitions, if it is due.
    fn conservation_if_due(&self) {
        let now = Instant::now();
        let mut last = self.last_conservation.borrow_mut();
        if last.is_some_and(|last| now.duration_since(last) < CONSERVATION_EVERY) {
            return;
        }
        *last = Some(now);
        drop(last);
        self.verdict.lock().conservation_checks += 1;
        let checked = invariants::conservation(&self.books.borrow());
        if let Err(violation) = checked {
            self.stop(violation);
        }
    }
}

impl Observer for LiveChecks {
    fn started(&self, partition: PartitionId, ledger: &Ledger) {
        if let Some(damage) = self.disks[partition as usize].damage() {
            self.stop_at(Violation::new(
                "damage_refused",
                format!(
                    "partition {partition} started from recovery (at lsn {}) on damaged synced \
                     data ({damage}): recovery cut or trusted it instead of refusing",
                    ledger.last_applied().lsn
                ),
            ));
        }
        self.books.borrow_mut()[partition as usize] = LiveBooks::recovered(ledger);
        let lsn = ledger.last_applied().lsn;
        let partitions = self.disks.len() as u32;
        self.scans.borrow_mut()[partition as usize].recovered(partition, partitions, lsn);
        // Answers of batches that never became durable never left.
        self.tried_unreleased.borrow_mut()[partition as usize].clear();
    }

    fn committing(&self, partition: PartitionId, ledger: &Ledger, commit: &Commit<Channels>) {
        if let Err(violation) = invariants::decisions_logged(ledger, &commit.release.peer_messages)
        {
            self.stop(violation);
        }
        let records = records_of(commit);
        let cancels = self.books.borrow_mut()[partition as usize].cut(partition, ledger, &records);
        self.commit_point(partition, ledger, commit, &cancels);
        let scanned = self.scans.borrow_mut()[partition as usize].cut(&records);
        if let Err(violation) = scanned {
            self.stop(violation);
        }
        self.all_or_nothing(partition, &records);
        self.conservation_if_due();
    }

    fn releasing(&self, partition: PartitionId, last_lsn: Lsn, release: &Release<Channels>) {
        let durable_lsn = self.disks[partition as usize].durable_lsn();
        let answers = release.replies.len() + release.groups.len() + release.answers.len();
        self.verdict.lock().releases += 1;
        let checked = invariants::released_durably(
            partition,
            last_lsn,
            durable_lsn,
            &release.peer_messages,
            answers,
        );
        if let Err(violation) = checked {
            self.stop(violation);
        }
        let mut unreleased = self.tried_unreleased.borrow_mut();
        let unreleased = &mut unreleased[partition as usize];
        let still = unreleased.split_off(&(last_lsn + 1));
        let released = std::mem::replace(unreleased, still);
        let mut durably_tried = self.durably_tried.borrow_mut();
        for transfer in released.into_values().flatten() {
            durably_tried.insert(transfer.key(), transfer);
        }
    }
}
