//! Invariants 3 and 5 (and a part of 7) over one partition's log, record by record: nothing
//! applied twice, no destination Try after its Cancel, every record on the partition that
//! owns its account.

use std::collections::BTreeSet;

use crate::log::codec::Record;
use crate::model::event::{CashRefused, Event, Lsn, Transfer, TransferKey};
use crate::model::ids::{AccountId, TransactionId};
use crate::model::partition::{partition_of, PartitionId};

use super::Violation;

/// What a scan of one partition's log remembers of the records it has seen. Feed it every
/// record in log order ([`LogScan::record`]); it answers for each whether it breaks one of
/// the invariants given the records before it.
#[derive(Debug)]
pub struct LogScan {
    partition: PartitionId,
    partitions: u32,
    /// Deposits and withdrawals applied.
    cash: BTreeSet<(AccountId, TransactionId)>,
    /// Transfers recorded at their home: applied, rejected, or debited into a hold.
    home: BTreeSet<TransferKey>,
    /// Home rows finished: the hold confirmed or returned.
    finished: BTreeSet<TransferKey>,
    /// Destination Tries applied.
    tried: BTreeSet<TransferKey>,
    /// Destination credits confirmed.
    credited: BTreeSet<TransferKey>,
    /// Destination branches cancelled, with or without a Try before.
    closed: BTreeSet<TransferKey>,
    /// Holds ended at their home: captured, voided or expired.
    holds_ended: BTreeSet<TransferKey>,
}

impl LogScan {
    /// A scan of the log of `partition` out of `partitions`.
    pub fn new(partition: PartitionId, partitions: u32) -> LogScan {
        assert!(
            partition < partitions,
            "partition {partition} of {partitions}"
        );
        LogScan {
            partition,
            partitions,
            cash: BTreeSet::new(),
            home: BTreeSet::new(),
            finished: BTreeSet::new(),
            tried: BTreeSet::new(),
            credited: BTreeSet::new(),
            closed: BTreeSet::new(),
            holds_ended: BTreeSet::new(),
        }
    }

    fn here(&self, account: &AccountId) -> bool {
        partition_of(account, self.partitions) == self.partition
    }

    /// The record at `lsn` holding `event`, after every record before it.
    pub fn record(&mut self, lsn: Lsn, event: &Event) -> Result<(), Violation> {
        let partition = self.partition;
        let misplaced = |detail: String| {
            Err(Violation::Misplaced {
                partition,
                lsn,
                detail,
            })
        };
        match *event {
            Event::AccountOpened { account, .. } if !self.here(&account) => misplaced(format!(
                "account {account} opened on a partition that does not own it"
            )),
            Event::AccountOpened { .. }
            | Event::TransferDecided { .. }
            | Event::HoldEstablished { .. } => Ok(()),
            Event::Deposited {
                account,
                transaction_id,
                ..
            }
            | Event::Withdrawn {
                account,
                transaction_id,
                ..
            }
            | Event::CashRefused(CashRefused {
                account,
                transaction_id,
                ..
            }) => once(&mut self.cash, (account, transaction_id), || {
                Violation::ExactlyOnce {
                    partition,
                    lsn,
                    what: "cash request applied",
                    key: None,
                    account: Some(account),
                }
            }),
            Event::Transferred { transfer }
            | Event::TransferRejected { transfer, .. }
            | Event::DebitTried { transfer }
            | Event::RefundAccepted {
                refund: transfer, ..
            }
            | Event::RefundRejected {
                refund: transfer, ..
            }
            | Event::HoldPlaced { hold: transfer, .. } => self.home_recorded(lsn, &transfer),
            Event::HoldCaptured { hold, .. } | Event::HoldReleased { hold, .. } => {
                let key = hold.key();
                once(&mut self.holds_ended, key, || {
                    twice(partition, lsn, "hold ended", key)
                })
            }
            Event::DebitConfirmed { key } | Event::DebitCancelled { key } => {
                once(&mut self.finished, key, || {
                    twice(partition, lsn, "hold finished", key)
                })
            }
            Event::CreditTried { transfer } => self.credit_tried(lsn, &transfer),
            Event::CreditConfirmed { key } | Event::CreditCaptured { key, .. } => {
                once(&mut self.credited, key, || {
                    twice(partition, lsn, "credit confirmed", key)
                })
            }
            Event::CreditCancelled { key } | Event::CreditTryNotSeen { key } => {
                self.closed.insert(key);
                Ok(())
            }
            // A transaction is recorded at its home once, as a transfer is; its participants'
            // rows and phases are checked by the ledger as it applies them.
            Event::TransactionApplied { ref tx } | Event::TransactionRejected { ref tx, .. } => {
                self.home_recorded(lsn, &tx.first_leg())
            }
            Event::TransactionTried { ref tx } if self.here(&tx.first_from()) => {
                self.home_recorded(lsn, &tx.first_leg())
            }
            Event::TransactionTried { .. }
            | Event::TransactionRefused { .. }
            | Event::TransactionCancelling { .. }
            | Event::TransactionConfirmed { .. }
            | Event::TransactionCancelled { .. } => Ok(()),
        }
    }
}

impl LogScan {
    /// A transfer recorded at its home: once, and at its home.
    fn home_recorded(&mut self, lsn: Lsn, transfer: &Transfer) -> Result<(), Violation> {
        let key = transfer.key();
        if !self.here(&transfer.from) {
            return Err(Violation::Misplaced {
                partition: self.partition,
                lsn,
                detail: format!("transfer {key:?} recorded away from its home"),
            });
        }
        let partition = self.partition;
        once(&mut self.home, key, || {
            twice(partition, lsn, "transfer recorded at its home", key)
        })
    }

    /// A destination Try: once, at the destination, and never after its Cancel.
    fn credit_tried(&mut self, lsn: Lsn, transfer: &Transfer) -> Result<(), Violation> {
        let (partition, key) = (self.partition, transfer.key());
        if !self.here(&transfer.to) {
            return Err(Violation::Misplaced {
                partition,
                lsn,
                detail: format!("Try of {key:?} recorded away from its destination"),
            });
        }
        if self.closed.contains(&key) {
            return Err(Violation::Hanging {
                partition,
                lsn,
                key,
            });
        }
        once(&mut self.tried, key, || {
            twice(partition, lsn, "Try applied", key)
        })
    }
}

/// `what` happened twice to the transfer `key`, the second time at `lsn` of `partition`.
fn twice(partition: PartitionId, lsn: Lsn, what: &'static str, key: TransferKey) -> Violation {
    Violation::ExactlyOnce {
        partition,
        lsn,
        what,
        key: Some(key),
        account: None,
    }
}

/// Adds `key` to `seen`; the violation `twice` makes if it was there already.
fn once<K: Ord>(
    seen: &mut BTreeSet<K>,
    key: K,
    twice: impl FnOnce() -> Violation,
) -> Result<(), Violation> {
    if seen.insert(key) {
        Ok(())
    } else {
        Err(twice())
    }
}

/// Every violation of invariants 3 and 5 (and misplaced records) in the log of `partition`,
/// in log order.
pub fn scan_log<'a>(
    partition: PartitionId,
    partitions: u32,
    records: impl IntoIterator<Item = &'a Record>,
) -> Vec<Violation> {
    let mut scan = LogScan::new(partition, partitions);
    records
        .into_iter()
        .filter_map(|record| scan.record(record.lsn, &record.event).err())
        .collect()
}
