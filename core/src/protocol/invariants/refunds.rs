//! The refund cap, over one partition's log, record by record: every refund recorded is of
//! a transfer committed into the refund's source, and the refunds of a transfer that are
//! accepted and not finally cancelled never sum to more than it moved.
//!
//! Every refund of a transfer is decided at one partition, the home of the original's
//! destination (see `crate::ledger::refunds`), and that partition's log holds all the scan
//! needs: the original (its `Transferred` record when it stayed within the partition, its
//! destination's Try and Confirm when it crossed partitions), each refund's record, and the
//! final cancel of a refund that crossed partitions. The scan keeps its own account of what
//! was refunded, from the records alone, not the ledger's.

use std::collections::BTreeMap;

use crate::log::codec::Record;
use crate::model::event::{Event, Lsn, Transfer, TransferKey};
use crate::model::partition::PartitionId;

use super::Violation;

/// What a scan of one partition's log remembers for the refund cap. Feed it every record
/// in log order ([`RefundScan::record`]).
#[derive(Debug)]
pub struct RefundScan {
    partition: PartitionId,
    /// Transfers committed into an account of this partition: within it (`Transferred`,
    /// refunds included), or from another partition with their credit confirmed here; and
    /// holds captured into one, for what was captured.
    committed: BTreeMap<TransferKey, Transfer>,
    /// Credits tried here and not yet confirmed or cancelled.
    tried: BTreeMap<TransferKey, Transfer>,
    /// Refunds accepted here and not finally cancelled: their original and amount.
    refunds: BTreeMap<TransferKey, (TransferKey, u64)>,
    /// Per original, the sum of its refunds in `refunds`.
    refunded: BTreeMap<TransferKey, u64>,
}

impl RefundScan {
    /// A scan of the log of `partition`.
    pub fn new(partition: PartitionId) -> RefundScan {
        RefundScan {
            partition,
            committed: BTreeMap::new(),
            tried: BTreeMap::new(),
            refunds: BTreeMap::new(),
            refunded: BTreeMap::new(),
        }
    }

    /// Minor units of the transfer `original` refunded as of the records seen.
    pub fn refunded(&self, original: &TransferKey) -> u64 {
        self.refunded.get(original).copied().unwrap_or(0)
    }

    /// The transfer `original`, if it is committed into an account of this partition as of
    /// the records seen.
    pub fn committed(&self, original: &TransferKey) -> Option<Transfer> {
        self.committed.get(original).copied()
    }

    /// The record at `lsn` holding `event`, after every record before it.
    pub fn record(&mut self, lsn: Lsn, event: &Event) -> Result<(), Violation> {
        let checked = match *event {
            Event::RefundAccepted {
                refund, original, ..
            } => self.refund(
                lsn,
                &refund,
                Event::refund_original(&refund, original),
                true,
            ),
            Event::RefundRejected {
                refund, original, ..
            } => self.refund(
                lsn,
                &refund,
                Event::refund_original(&refund, original),
                false,
            ),
            _ => Ok(()),
        };
        match event.effect() {
            Event::Transferred { transfer } => {
                self.committed.insert(transfer.key(), transfer);
            }
            Event::CreditTried { transfer } => {
                self.tried.insert(transfer.key(), transfer);
            }
            Event::CreditConfirmed { key } => {
                if let Some(transfer) = self.tried.remove(&key) {
                    self.committed.insert(key, transfer);
                }
            }
            // A hold captured: what was captured arrived, and may be refunded.
            Event::HoldCaptured {
                hold,
                amount,
                remote: false,
            } => {
                self.committed
                    .insert(hold.key(), Transfer { amount, ..hold });
            }
            Event::CreditCaptured { key, amount } => {
                if let Some(transfer) = self.tried.remove(&key) {
                    self.committed.insert(key, Transfer { amount, ..transfer });
                }
            }
            Event::CreditCancelled { key } | Event::CreditTryNotSeen { key } => {
                self.tried.remove(&key);
            }
            // A refund cancelled for good (its destination, on another partition, could not
            // take the money back) no longer counts against its original.
            Event::DebitCancelled { key } => {
                if let Some((original, amount)) = self.refunds.remove(&key) {
                    let refunded = self.refunded.entry(original).or_default();
                    *refunded = refunded.saturating_sub(amount);
                }
            }
            _ => {}
        }
        checked
    }

    /// A refund of `original` recorded at `lsn`, `accepted` or refused: its original must be
    /// a transfer committed into its source, and an accepted one must fit what is left.
    fn refund(
        &mut self,
        lsn: Lsn,
        refund: &Transfer,
        original: TransferKey,
        accepted: bool,
    ) -> Result<(), Violation> {
        let violation = |detail: String| Violation::RefundCap {
            partition: self.partition,
            lsn,
            refund: refund.key(),
            original,
            detail,
        };
        let found = self.committed.get(&original).copied();
        let problem = match found {
            None => Some(violation(
                "its original is not a transfer committed into this partition".into(),
            )),
            Some(t) if t.to != refund.from => Some(violation(format!(
                "its original went to {}, not to the refund's source {}",
                t.to, refund.from
            ))),
            Some(t) if t.currency != refund.currency => Some(violation(format!(
                "its original moved {}, the refund {}",
                t.currency, refund.currency
            ))),
            _ => None,
        };
        if !accepted {
            return problem.map_or(Ok(()), Err);
        }
        let amount = refund.amount.minor();
        self.refunds.insert(refund.key(), (original, amount));
        let refunded = self.refunded.entry(original).or_default();
        *refunded += amount;
        let refunded = *refunded;
        if let Some(problem) = problem {
            return Err(problem);
        }
        let original_amount = found.map_or(0, |t| t.amount.minor());
        if refunded > original_amount {
            return Err(violation(format!(
                "accepted for {amount}, it brings the refunds accepted and not cancelled to \
                 {refunded}, more than the {original_amount} the original moved"
            )));
        }
        Ok(())
    }
}

/// Every violation of the refund cap in the log of `partition`, in log order.
pub fn scan_refunds<'a>(
    partition: PartitionId,
    records: impl IntoIterator<Item = &'a Record>,
) -> Vec<Violation> {
    let mut scan = RefundScan::new(partition);
    records
        .into_iter()
        .filter_map(|record| scan.record(record.lsn, &record.event).err())
        .collect()
}
