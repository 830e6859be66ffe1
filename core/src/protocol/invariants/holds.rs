//! Holds, over their home's log, record by record: every hold ends at most once, by one
//! capture, void or expiry (`hold_once`); it ends within its terms: an expiry never before
//! its `expires_at`, a capture or void never at or after it (`hold_expiry`); and a capture
//! never takes more than the hold holds (`hold_capture`).
//!
//! Every end of a hold is decided at its home, the partition of its source, by the ledger's
//! clock at the moment it decides, which is the stamp of the record it writes (see
//! `crate::ledger::holds`). So the home's log alone shows whether a hold ended in its time:
//! its `HoldPlaced` carries the expiry, and the record that ends it its stamp. The scan keeps
//! its own account of the holds it saw placed, from the records alone, not the ledger's.

use std::collections::BTreeMap;

use crate::log::codec::Record;
use crate::model::event::{Event, Lsn, Reason, Timestamp, Transfer, TransferKey};
use crate::model::partition::PartitionId;

use super::Violation;

/// A hold the scan saw placed, and how it ended if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldSeen {
    pub hold: Transfer,
    pub expires_at: Timestamp,
    /// The lsn of the record that ended it.
    pub ended_at: Option<Lsn>,
}

/// What a scan of one partition's log remembers of its holds. Feed it every record in log
/// order ([`HoldScan::record`]).
#[derive(Debug)]
pub struct HoldScan {
    partition: PartitionId,
    holds: BTreeMap<TransferKey, HoldSeen>,
}

impl HoldScan {
    /// A scan of the log of `partition`.
    pub fn new(partition: PartitionId) -> HoldScan {
        HoldScan {
            partition,
            holds: BTreeMap::new(),
        }
    }

    /// The holds placed here as of the records seen, by key.
    pub fn holds(&self) -> &BTreeMap<TransferKey, HoldSeen> {
        &self.holds
    }

    /// Whether `event` is one this scan looks at: a hold's placing or end.
    pub fn looks_at(event: &Event) -> bool {
        matches!(
            event,
            Event::HoldPlaced { .. } | Event::HoldCaptured { .. } | Event::HoldReleased { .. }
        )
    }

    /// The record `record`, after every record before it.
    pub fn record(&mut self, record: &Record) -> Result<(), Violation> {
        let (lsn, at) = (record.lsn, record.timestamp);
        match record.event {
            Event::HoldPlaced {
                hold, expires_at, ..
            } => self.placed(lsn, hold, expires_at),
            Event::HoldCaptured { hold, amount, .. } => {
                let seen = self.end(lsn, &hold, "captured")?;
                if amount > seen.hold.amount {
                    return Err(Violation::HoldCapture {
                        partition: self.partition,
                        lsn,
                        key: hold.key(),
                        detail: format!(
                            "captured {} of a hold of {}",
                            amount.minor(),
                            seen.hold.amount.minor()
                        ),
                    });
                }
                self.in_time(lsn, &seen, at, "captured", false)
            }
            Event::HoldReleased { hold, reason, .. } => {
                let seen = self.end(lsn, &hold, "released")?;
                match reason {
                    Reason::HoldExpired => self.in_time(lsn, &seen, at, "expired", true),
                    Reason::HoldVoided => self.in_time(lsn, &seen, at, "voided", false),
                    other => Err(self.once(lsn, hold.key(), format!("released for {other:?}"))),
                }
            }
            _ => Ok(()),
        }
    }

    fn once(&self, lsn: Lsn, key: TransferKey, detail: String) -> Violation {
        Violation::HoldOnce {
            partition: self.partition,
            lsn,
            key,
            detail,
        }
    }

    fn placed(&mut self, lsn: Lsn, hold: Transfer, expires_at: Timestamp) -> Result<(), Violation> {
        let seen = HoldSeen {
            hold,
            expires_at,
            ended_at: None,
        };
        if let Some(before) = self.holds.insert(hold.key(), seen) {
            return Err(self.once(lsn, hold.key(), format!("placed again ({before:?})")));
        }
        Ok(())
    }

    /// The hold `hold` ends at `lsn` (`how`): it must have been placed here, with this body,
    /// and not have ended before.
    fn end(&mut self, lsn: Lsn, hold: &Transfer, how: &str) -> Result<HoldSeen, Violation> {
        let key = hold.key();
        let Some(seen) = self.holds.get_mut(&key) else {
            return Err(self.once(lsn, key, format!("{how}, never placed here")));
        };
        let before = *seen;
        seen.ended_at.get_or_insert(lsn);
        match before.ended_at {
            Some(ended) => Err(self.once(lsn, key, format!("{how}, ended already at lsn {ended}"))),
            None if before.hold != *hold => Err(self.once(
                lsn,
                key,
                format!("{how} as {hold:?}, placed as {:?}", before.hold),
            )),
            None => Ok(before),
        }
    }

    /// A hold ended (`how`) by a record stamped `at`: an expiry (`expiry`) at or after its
    /// `expires_at`, anything else before it.
    fn in_time(
        &self,
        lsn: Lsn,
        seen: &HoldSeen,
        at: Timestamp,
        how: &str,
        expiry: bool,
    ) -> Result<(), Violation> {
        let due = at >= seen.expires_at;
        if due == expiry {
            return Ok(());
        }
        let when = if expiry { "before" } else { "at or after" };
        Err(Violation::HoldExpiry {
            partition: self.partition,
            lsn,
            key: seen.hold.key(),
            detail: format!(
                "{how} at {at} us, {when} its expiry at {} us ({} us {})",
                seen.expires_at,
                at.abs_diff(seen.expires_at),
                if due { "late" } else { "early" }
            ),
        })
    }
}

/// Every violation of the hold invariants in the log of `partition`, in log order.
pub fn scan_holds<'a>(
    partition: PartitionId,
    records: impl IntoIterator<Item = &'a Record>,
) -> Vec<Violation> {
    let mut scan = HoldScan::new(partition);
    records
        .into_iter()
        .filter_map(|record| scan.record(record).err())
        .collect()
}
