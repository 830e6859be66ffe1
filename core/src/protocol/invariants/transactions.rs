//! Multi-leg transactions, over the logs: one outcome per transaction on each partition, in
//! the protocol's order (`tx_once`), and all or nothing across partitions (`tx_atomicity`).
//!
//! [`TransactionScan`] reads one partition's log alone, record by record, and keeps, per
//! transaction, where this partition's side stands: a Try is the first record of a side
//! (the client's transaction at the home, a participant's Try elsewhere), or a refusal
//! (a participant refused its Try, or was cancelled before any Try); a side is confirmed
//! only once tried and never after it is cancelled, and cancelled (at the home, after the
//! decision to cancel) only once tried. [`transactions_agree`] holds the scans of every
//! partition together: once the home committed (`TransactionConfirmed` at the home), no
//! participant refused or cancelled, and at rest every participant confirmed; a
//! participant confirms only a transaction its home committed, and never one its home
//! rejected or cancelled.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::log::codec::Record;
use crate::model::event::{Event, Lsn, TransferKey};
use crate::model::partition::{partition_of, PartitionId};
use crate::model::transaction::Transaction;

use super::Violation;

/// Where one partition's side of a transaction stands, as its log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxSide {
    /// Applied at once within one partition (at its home).
    Applied,
    /// Rejected at its home: nothing moved anywhere.
    Rejected,
    /// Tried: its nets are held and incoming.
    Tried,
    /// Refused by a participant (or cancelled there before any Try): nothing moved here.
    Refused,
    /// The home decided to cancel; its own side is still tried.
    Cancelling,
    /// Final: its nets moved (at the home: the commit).
    Confirmed,
    /// Final: its Try was undone.
    Cancelled,
}

/// A transaction as one partition's log shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxSeen {
    pub side: TxSide,
    /// The transaction, when a record here carried it (a Try, an application, a rejection).
    pub tx: Option<Arc<Transaction>>,
    /// The lsn of the record that put the side where it stands.
    pub lsn: Lsn,
}

/// What a scan of one partition's log remembers of its transactions. Feed it every record
/// in log order ([`TransactionScan::record`]).
#[derive(Debug, Clone)]
pub struct TransactionScan {
    partition: PartitionId,
    partitions: u32,
    seen: BTreeMap<TransferKey, TxSeen>,
}

impl TransactionScan {
    /// A scan of the log of `partition`, of a cluster of `partitions`.
    pub fn new(partition: PartitionId, partitions: u32) -> TransactionScan {
        TransactionScan {
            partition,
            partitions,
            seen: BTreeMap::new(),
        }
    }

    /// The transactions seen here, by key.
    pub fn seen(&self) -> &BTreeMap<TransferKey, TxSeen> {
        &self.seen
    }

    /// This partition's side of `key`, if its log has one.
    pub fn side(&self, key: &TransferKey) -> Option<TxSide> {
        self.seen.get(key).map(|seen| seen.side)
    }

    /// Whether `event` is one this scan looks at: a transaction's.
    pub fn looks_at(event: &Event) -> bool {
        matches!(
            event,
            Event::TransactionApplied { .. }
                | Event::TransactionRejected { .. }
                | Event::TransactionTried { .. }
                | Event::TransactionRefused { .. }
                | Event::TransactionCancelling { .. }
                | Event::TransactionConfirmed { .. }
                | Event::TransactionCancelled { .. }
        )
    }

    fn is_home_of(&self, key: &TransferKey) -> bool {
        partition_of(&key.from, self.partitions) == self.partition
    }

    fn once(&self, lsn: Lsn, key: TransferKey, detail: String) -> Violation {
        Violation::TxOnce {
            partition: self.partition,
            lsn,
            key,
            detail,
        }
    }

    /// The record `record`, after every record before it.
    pub fn record(&mut self, record: &Record) -> Result<(), Violation> {
        let lsn = record.lsn;
        match &record.event {
            Event::TransactionApplied { tx } => self.first(lsn, tx.key(), TxSide::Applied, tx),
            Event::TransactionRejected { tx, .. } => {
                self.first(lsn, tx.key(), TxSide::Rejected, tx)
            }
            Event::TransactionTried { tx } => self.first(lsn, tx.key(), TxSide::Tried, tx),
            Event::TransactionRefused { key, .. } => {
                if self.is_home_of(key) {
                    return Err(self.once(lsn, *key, "refused at its home".to_string()));
                }
                if let Some(before) = self.seen.get(key) {
                    let detail = format!("refused, {:?} at lsn {}", before.side, before.lsn);
                    return Err(self.once(lsn, *key, detail));
                }
                let seen = TxSeen {
                    side: TxSide::Refused,
                    tx: None,
                    lsn,
                };
                self.seen.insert(*key, seen);
                Ok(())
            }
            Event::TransactionCancelling { key, .. } => {
                let home = self.is_home_of(key);
                self.step(lsn, *key, "decided to cancel", TxSide::Cancelling, |side| {
                    home && side == TxSide::Tried
                })
            }
            Event::TransactionConfirmed { key } => {
                self.step(lsn, *key, "confirmed", TxSide::Confirmed, |side| {
                    side == TxSide::Tried
                })
            }
            Event::TransactionCancelled { key } => {
                let home = self.is_home_of(key);
                self.step(lsn, *key, "cancelled", TxSide::Cancelled, |side| {
                    side == if home {
                        TxSide::Cancelling
                    } else {
                        TxSide::Tried
                    }
                })
            }
            _ => Ok(()),
        }
    }

    /// The first record of a side, carrying its transaction.
    fn first(
        &mut self,
        lsn: Lsn,
        key: TransferKey,
        side: TxSide,
        tx: &Arc<Transaction>,
    ) -> Result<(), Violation> {
        if let Some(before) = self.seen.get(&key) {
            let detail = format!("{side:?}, {:?} already at lsn {}", before.side, before.lsn);
            return Err(self.once(lsn, key, detail));
        }
        let home = self.is_home_of(&key);
        let at_home_only = matches!(side, TxSide::Applied | TxSide::Rejected);
        if at_home_only && !home {
            return Err(self.once(lsn, key, format!("{side:?} away from its home")));
        }
        let seen = TxSeen {
            side,
            tx: Some(tx.clone()),
            lsn,
        };
        self.seen.insert(key, seen);
        Ok(())
    }

    /// A side moves on to `to` (`how`), which only a side where `from` holds may.
    fn step(
        &mut self,
        lsn: Lsn,
        key: TransferKey,
        how: &str,
        to: TxSide,
        from: impl Fn(TxSide) -> bool,
    ) -> Result<(), Violation> {
        let Some(seen) = self.seen.get(&key) else {
            return Err(self.once(lsn, key, format!("{how}, never tried here")));
        };
        if !from(seen.side) {
            let detail = format!("{how}, {:?} at lsn {}", seen.side, seen.lsn);
            return Err(self.once(lsn, key, detail));
        }
        let seen = self.seen.get_mut(&key).expect("found above");
        seen.side = to;
        seen.lsn = lsn;
        Ok(())
    }
}

/// Every violation of `tx_once` in the log of `partition` (of a cluster of `partitions`),
/// in log order.
pub fn scan_transactions<'a>(
    partition: PartitionId,
    partitions: u32,
    records: impl IntoIterator<Item = &'a Record>,
) -> Vec<Violation> {
    let mut scan = TransactionScan::new(partition, partitions);
    records
        .into_iter()
        .filter_map(|record| scan.record(record).err())
        .collect()
}

/// All or nothing, over the scans of every partition of a cluster (`scans[p]` is partition
/// `p`'s): a transaction its home committed was refused or cancelled by no participant (and
/// at rest, `at_rest`, confirmed by every one); one its home did not commit was confirmed
/// by none; a participant confirmed only the legs its home committed. A home's own side is judged by its own scan ([`TransactionScan::record`]).
pub fn transactions_agree(scans: &[&TransactionScan], at_rest: bool) -> Vec<Violation> {
    let partitions = scans.len() as u32;
    let mut violations = Vec::new();
    let mut broken = |key: TransferKey, detail: String| {
        violations.push(Violation::TxAtomicity { key, detail });
    };
    for scan in scans {
        for (key, seen) in &scan.seen {
            let home_partition = partition_of(&key.from, partitions);
            if home_partition == scan.partition {
                let Some(tx) = &seen.tx else { continue };
                let committed = matches!(seen.side, TxSide::Confirmed | TxSide::Applied);
                for participant in tx.participants(partitions) {
                    if participant == home_partition {
                        continue;
                    }
                    let side = scans[participant as usize].side(key);
                    let wrong = if committed {
                        match side {
                            Some(TxSide::Refused | TxSide::Cancelled) => true,
                            Some(TxSide::Tried) | None => at_rest,
                            _ => false,
                        }
                    } else {
                        side == Some(TxSide::Confirmed)
                    };
                    if wrong {
                        broken(
                            *key,
                            format!(
                                "home {home_partition} {:?} (lsn {}), participant {participant} {side:?}",
                                seen.side, seen.lsn
                            ),
                        );
                    }
                }
            } else {
                let home_seen = scans[home_partition as usize].seen.get(key);
                let home = home_seen.map(|seen| seen.side);
                // The legs confirmed here must be the very legs the home committed: after a
                // home lost a transaction, a retry may put other legs under its key.
                let same_legs = home_seen.is_some_and(|home| home.tx == seen.tx);
                let wrong = match seen.side {
                    TxSide::Confirmed => home != Some(TxSide::Confirmed) || !same_legs,
                    TxSide::Tried => at_rest,
                    _ => false,
                };
                if wrong {
                    broken(
                        *key,
                        format!(
                            "participant {} {:?} (lsn {}), home {home_partition} {home:?}",
                            scan.partition, seen.side, seen.lsn
                        ),
                    );
                }
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::Reason;
    use crate::model::ids::{AccountId, TransactionId};
    use crate::model::money::{Amount, Currency};
    use crate::model::transaction::Leg;
    use crate::protocol::invariants::Invariant;

    const PARTITIONS: u32 = 8;

    fn record(lsn: Lsn, event: Event) -> Record {
        Record {
            lsn,
            timestamp: lsn * 10,
            event,
        }
    }

    /// Two accounts on two different partitions, and a transaction between them.
    fn across() -> (Arc<Transaction>, PartitionId, PartitionId) {
        let id = |n: u32| AccountId::new(&format!("a{n}")).unwrap();
        let from = id(0);
        let to = (1..)
            .map(id)
            .find(|a| partition_of(a, PARTITIONS) != partition_of(&from, PARTITIONS));
        let to = to.unwrap();
        let leg = Leg {
            from,
            to,
            amount: Amount::from_minor(5).unwrap(),
            currency: Currency::USD,
        };
        let tx = Transaction::new(TransactionId::new("t").unwrap(), vec![leg]).unwrap();
        let home = partition_of(&from, PARTITIONS);
        let other = partition_of(&to, PARTITIONS);
        (tx, home, other)
    }

    fn scan(partition: PartitionId, events: Vec<Event>) -> (TransactionScan, Vec<Violation>) {
        let mut scan = TransactionScan::new(partition, PARTITIONS);
        let violations = (events.into_iter().enumerate())
            .filter_map(|(i, event)| scan.record(&record(i as Lsn + 1, event)).err())
            .collect();
        (scan, violations)
    }

    #[test]
    fn a_side_is_confirmed_only_once_tried_and_never_after_a_cancel() {
        let (tx, home, other) = across();
        let key = tx.key();
        let (_, ok) = scan(
            other,
            vec![
                Event::TransactionTried { tx: tx.clone() },
                Event::TransactionConfirmed { key },
            ],
        );
        assert!(ok.is_empty(), "{ok:?}");
        let (_, untried) = scan(other, vec![Event::TransactionConfirmed { key }]);
        assert_eq!(untried.len(), 1);
        assert_eq!(untried[0].invariant(), Invariant::TxOnce);
        let (_, both) = scan(
            home,
            vec![
                Event::TransactionTried { tx },
                Event::TransactionCancelling {
                    key,
                    failed_leg: Some(0),
                    reason: Reason::DestinationNotFound,
                },
                Event::TransactionConfirmed { key },
            ],
        );
        assert_eq!(both.len(), 1, "{both:?}");
    }

    #[test]
    fn a_home_that_commits_what_a_participant_refused_is_not_all_or_nothing() {
        let (tx, home, other) = across();
        let key = tx.key();
        let (home_scan, _) = scan(
            home,
            vec![
                Event::TransactionTried { tx: tx.clone() },
                Event::TransactionConfirmed { key },
            ],
        );
        let (refused, _) = scan(
            other,
            vec![Event::TransactionRefused {
                key,
                failed_leg: Some(0),
                reason: Reason::DestinationNotFound,
            }],
        );
        let (confirmed, _) = scan(
            other,
            vec![
                Event::TransactionTried { tx: tx.clone() },
                Event::TransactionConfirmed { key },
            ],
        );
        let empty: Vec<TransactionScan> = (0..PARTITIONS)
            .map(|p| TransactionScan::new(p, PARTITIONS))
            .collect();
        let cut = |at_other: &TransactionScan| -> Vec<TransactionScan> {
            let mut scans = empty.clone();
            scans[home as usize] = home_scan.clone();
            scans[other as usize] = at_other.clone();
            scans
        };
        let broken = cut(&refused);
        let broken: Vec<&TransactionScan> = broken.iter().collect();
        let found = transactions_agree(&broken, false);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].invariant(), Invariant::TxAtomicity);
        let whole = cut(&confirmed);
        let whole: Vec<&TransactionScan> = whole.iter().collect();
        assert!(transactions_agree(&whole, true).is_empty());
        // A participant that confirmed other legs under the key (a home that lost them, and
        // committed a retry's) is not all or nothing either.
        let mut legs = tx.legs().collect::<Vec<_>>();
        legs[0].amount = Amount::from_minor(6).unwrap();
        let other_legs = Transaction::new(tx.transaction_id(), legs).unwrap();
        let (orphan, _) = scan(
            other,
            vec![
                Event::TransactionTried { tx: other_legs },
                Event::TransactionConfirmed { key },
            ],
        );
        let mixed = cut(&orphan);
        let mixed: Vec<&TransactionScan> = mixed.iter().collect();
        let found = transactions_agree(&mixed, true);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].invariant(), Invariant::TxAtomicity);
    }
}
