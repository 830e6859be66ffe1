//! The destination's credit table: the barrier row of every cross-partition transfer in,
//! keyed by the transfer's key, in the order the log recorded them.
//!
//! A destination keeps a row for every transfer that ever reached it across partitions: on
//! the server's default of 8 partitions, seven transfers in eight. Kept as a hash-indexed
//! `(TransferKey, row)` pair, as the first version did, a row took 224 bytes, three quarters
//! of it the padding of its three 65-byte inline ids, and it was most of what the default
//! server's memory grew by per transfer (255 bytes). Here a row is packed
//! ([`crate::ledger::keyed_table`]): 24 bytes with the ids' actual bytes in an arena (about 30
//! bytes for typical ids) and an 8-byte index slot, found by the same key hash as the
//! transfers table's.
//!
//! Rows are only ever added, and a row's state moves on (a Try confirmed, cancelled, or
//! captured in part); positions are stable, which [`crate::protocol::credit_watch`] relies
//! on. Sealed chunks of rows and of ids are shared with snapshot images
//! ([`CreditTable::freeze`]); a state change in a chunk an image still reads copies that
//! chunk first.

use crate::ledger::keyed_table::{KeyedRows, KeyedTable, RowIds};
use crate::ledger::{CreditRow, CreditState};
use crate::model::event::{Transfer, TransferKey};
use crate::model::ids::AccountId;
use crate::model::money::{Amount, Currency};

/// What a row holds beside its ids: the key's, then the Try's `to` (none for
/// [`CreditState::TryNotSeen`], which had no Try).
///
/// Packed to 4-byte alignment: at 8 its padding would make a row 32 bytes, not 24.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(4))]
pub(crate) struct CreditPayload {
    /// The Try's amount; for a hold captured in part, what arrived. `None` without a Try.
    amount: Option<Amount>,
    /// The Try's currency (any, without a Try).
    currency: Currency,
    state: CreditState,
}

// The amount takes 8 bytes, the currency and the state 3 more; with the ids' place and
// lengths a row is 24 bytes. The bounds fail the build should a field grow it.
const _: () = assert!(std::mem::size_of::<CreditPayload>() <= 12);
const _: () = assert!(crate::ledger::keyed_table::row_size::<CreditPayload>() <= 24);

/// The key and the whole row of `ids` and `payload`.
fn credit_row(ids: RowIds<'_>, payload: CreditPayload) -> (TransferKey, CreditRow) {
    let key = TransferKey {
        from: ids.account(),
        transaction_id: ids.transaction_id(),
    };
    let transfer = (payload.state != CreditState::TryNotSeen).then(|| Transfer {
        transaction_id: key.transaction_id,
        from: key.from,
        to: ids.extra().expect("a row with a Try has its destination"),
        amount: payload.amount.expect("a row with a Try has its amount"),
        currency: payload.currency,
    });
    let credit = CreditRow {
        state: payload.state,
        transfer,
    };
    (key, credit)
}

/// The rows and their ids, without the index: what a snapshot image keeps.
#[derive(Clone, Default)]
pub(crate) struct CreditRows(KeyedRows<CreditPayload>);

impl CreditRows {
    /// Every row with its key, in the order they were added.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = (TransferKey, CreditRow)> + '_ {
        self.0.iter().map(|(ids, payload)| credit_row(ids, payload))
    }
}

/// See the module documentation.
#[derive(Clone, Default)]
pub(crate) struct CreditTable(KeyedTable<CreditPayload>);

impl CreditTable {
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Where the row of `key` is, if it has one.
    #[inline]
    pub(crate) fn find(&self, key: &TransferKey) -> Option<usize> {
        self.0.find(&key.from, &key.transaction_id)
    }

    /// The row of `key`, whole.
    pub(crate) fn get(&self, key: &TransferKey) -> Option<CreditRow> {
        self.find(key).map(|at| credit_row_at(&self.0, at).1)
    }

    /// The state of the row at `at`.
    pub(crate) fn state(&self, at: usize) -> CreditState {
        self.0.payload(at).state
    }

    /// Destination, amount and currency of the pending credit at `at`: what its Confirm or
    /// Cancel moves. `None` unless the row holds a Try neither confirmed nor cancelled.
    pub(crate) fn pending(&self, at: usize) -> Option<(AccountId, Amount, Currency)> {
        let payload = self.0.payload(at);
        if payload.state != CreditState::Tried {
            return None;
        }
        let (ids, _) = self.0.at(at);
        let to = ids.extra().expect("a pending credit has its destination");
        let amount = payload.amount.expect("a pending credit has its amount");
        Some((to, amount, payload.currency))
    }

    /// The amount of the pending credit at `at` (see [`CreditTable::pending`]), without
    /// rebuilding its destination's id: what a Confirm is checked against.
    pub(crate) fn pending_amount(&self, at: usize) -> Option<Amount> {
        let payload = self.0.payload(at);
        (payload.state == CreditState::Tried)
            .then_some(payload.amount)
            .flatten()
    }

    /// Amount and currency of every pending credit (see [`CreditTable::pending`]).
    pub(crate) fn pending_amounts(&self) -> impl Iterator<Item = (Amount, Currency)> + '_ {
        (0..self.len())
            .map(|at| self.0.payload(at))
            .filter(|payload| payload.state == CreditState::Tried)
            .filter_map(|payload| Some((payload.amount?, payload.currency)))
    }

    /// Moves the pending credit at `at` on to `state` (confirmed or cancelled).
    pub(crate) fn finish(&mut self, at: usize, state: CreditState) {
        let payload = self.0.payload_mut(at);
        let was = payload.state;
        debug_assert_eq!(was, CreditState::Tried, "only a pending credit moves on");
        payload.state = state;
    }

    /// Confirms the pending credit at `at` for `amount` of it (a hold captured in part): the
    /// row keeps the amount that arrived, what a refund of it may give back.
    pub(crate) fn capture(&mut self, at: usize, amount: Amount) {
        let payload = self.0.payload_mut(at);
        let (state, tried) = (payload.state, payload.amount);
        debug_assert!(state == CreditState::Tried && Some(amount) <= tried);
        payload.amount = Some(amount);
        payload.state = CreditState::Confirmed;
    }

    /// Adds `row` under `key`; false, adding nothing, when `key` already has a row.
    pub(crate) fn insert(&mut self, key: &TransferKey, row: &CreditRow) -> bool {
        debug_assert_eq!(row.transfer.is_none(), row.state == CreditState::TryNotSeen);
        debug_assert!(row.transfer.is_none_or(|t| t.key() == *key));
        let payload = CreditPayload {
            amount: row.transfer.map(|t| t.amount),
            currency: row.transfer.map_or(Currency::ALL[0], |t| t.currency),
            state: row.state,
        };
        let to = row.transfer.map(|t| t.to);
        self.0
            .insert(&key.from, &key.transaction_id, to.as_ref(), payload)
    }

    /// The key and row at `position`, in the order rows were added, if there is one.
    pub(crate) fn at(&self, position: usize) -> Option<(TransferKey, CreditRow)> {
        (position < self.len()).then(|| credit_row_at(&self.0, position))
    }

    /// Every row with its key, in the order they were added.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = (TransferKey, CreditRow)> + '_ {
        self.0.iter().map(|(ids, payload)| credit_row(ids, payload))
    }

    /// Brings the index slot `key` hashes to into cache, without waiting for it (see
    /// [`crate::ledger::Ledger::prefetch`]).
    pub(crate) fn prefetch(&self, key: &TransferKey) {
        self.0.prefetch(&key.from, &key.transaction_id);
    }

    /// The rows as they are now, for a snapshot image (see [`KeyedTable::freeze`]).
    pub(crate) fn freeze(&self) -> CreditRows {
        CreditRows(self.0.freeze())
    }

    /// Known-bug mutations only: drops the row of `key`.
    #[cfg(any(test, madsim, feature = "testing"))]
    pub(crate) fn remove(&mut self, key: &TransferKey) {
        self.0.remove(&key.from, &key.transaction_id);
    }
}

fn credit_row_at(table: &KeyedTable<CreditPayload>, at: usize) -> (TransferKey, CreditRow) {
    let (ids, payload) = table.at(at);
    credit_row(ids, payload)
}

/// Equal when they hold the same rows, in whatever order they were added.
impl PartialEq for CreditTable {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(key, row)| other.get(&key) == Some(row))
    }
}

impl std::fmt::Debug for CreditTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Panics on a key given twice: decoders check that first and refuse such input.
impl FromIterator<(TransferKey, CreditRow)> for CreditTable {
    fn from_iter<I: IntoIterator<Item = (TransferKey, CreditRow)>>(rows: I) -> Self {
        let mut table = CreditTable::default();
        for (key, row) in rows {
            assert!(table.insert(&key, &row), "a key given twice");
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ids::TransactionId;

    fn key(from: &str, id: &str) -> TransferKey {
        TransferKey {
            from: AccountId::new(from).unwrap(),
            transaction_id: TransactionId::new(id).unwrap(),
        }
    }

    fn tried(key: &TransferKey, to: &str, minor: u64) -> CreditRow {
        CreditRow {
            state: CreditState::Tried,
            transfer: Some(Transfer {
                transaction_id: key.transaction_id,
                from: key.from,
                to: AccountId::new(to).unwrap(),
                amount: Amount::from_minor(minor).unwrap(),
                currency: Currency::ALL[1],
            }),
        }
    }

    const NOT_SEEN: CreditRow = CreditRow {
        state: CreditState::TryNotSeen,
        transfer: None,
    };

    #[test]
    fn rows_are_found_by_key_whole_and_in_order() {
        let mut table = CreditTable::default();
        let mut expected = Vec::new();
        for i in 0..100u64 {
            // Ids of every length, the longest included, so rows cross arena chunks.
            let k = key(
                &format!("src-{}", "s".repeat(i as usize % 60)),
                &format!("t-{i}"),
            );
            let row = if i % 7 == 3 {
                NOT_SEEN
            } else {
                tried(&k, &format!("dst-{}", "d".repeat(i as usize % 59)), i + 1)
            };
            assert!(table.get(&k).is_none());
            assert!(table.insert(&k, &row));
            assert_eq!(table.get(&k), Some(row));
            expected.push((k, row));
        }
        assert!(
            !table.insert(&expected[5].0, &NOT_SEEN),
            "a key is added once"
        );
        assert_eq!(table.iter().collect::<Vec<_>>(), expected);
        assert_eq!(table.at(42), Some(expected[42]));
        assert_eq!(table.at(100), None);
        let pending: u64 = table.pending_amounts().map(|(a, _)| a.minor()).sum();
        let tried_sum: u64 = (expected.iter())
            .filter_map(|(_, row)| row.transfer)
            .map(|t| t.amount.minor())
            .sum();
        assert_eq!(pending, tried_sum);
    }

    #[test]
    fn a_pending_credit_moves_on_once_and_keeps_what_arrived() {
        let mut table = CreditTable::default();
        let (a, b, c) = (key("s", "a"), key("s", "b"), key("s", "c"));
        for k in [a, b, c] {
            table.insert(&k, &tried(&k, "dst", 500));
        }
        let at = table.find(&b).unwrap();
        let (to, amount, _) = table.pending(at).unwrap();
        assert_eq!((to.as_str(), amount.minor()), ("dst", 500));
        table.capture(at, Amount::from_minor(120).unwrap());
        assert_eq!(table.pending(at), None);
        let captured = table.get(&b).unwrap();
        assert_eq!(captured.state, CreditState::Confirmed);
        assert_eq!(captured.transfer.unwrap().amount.minor(), 120);
        let at = table.find(&c).unwrap();
        table.finish(at, CreditState::Cancelled);
        assert_eq!(table.get(&c).unwrap().state, CreditState::Cancelled);
        assert_eq!(table.get(&a).unwrap().state, CreditState::Tried);
        assert_eq!(table.pending_amounts().count(), 1);
    }

    #[test]
    fn a_frozen_copy_keeps_the_rows_as_they_were() {
        let mut table = CreditTable::default();
        let keys: Vec<_> = (0..83)
            .map(|i| key(&format!("src-{i:0>40}"), &format!("t-{i}")))
            .collect();
        for k in &keys {
            table.insert(k, &tried(k, "dst", 7));
        }
        let frozen = table.freeze();
        let before: Vec<_> = table.iter().collect();
        // A row of a sealed chunk and one of the open chunk move on; more rows come.
        for k in [keys[1], keys[keys.len() - 1]] {
            let at = table.find(&k).unwrap();
            table.finish(at, CreditState::Confirmed);
        }
        let more = key("late", "t");
        table.insert(&more, &NOT_SEEN);
        assert_eq!(frozen.iter().collect::<Vec<_>>(), before);
        assert_eq!(table.get(&keys[1]).unwrap().state, CreditState::Confirmed);
        assert_eq!(table.len(), before.len() + 1);
    }

    #[test]
    fn tables_with_the_same_rows_are_equal_whatever_their_order() {
        let rows: Vec<_> = (0..30)
            .map(|i| {
                let k = key("s", &format!("t-{i}"));
                (k, tried(&k, "d", i + 1))
            })
            .collect();
        let forward: CreditTable = rows.iter().copied().collect();
        let backward: CreditTable = rows.iter().rev().copied().collect();
        assert_eq!(forward, backward);
        let mut other = forward.clone();
        let at = other.find(&rows[9].0).unwrap();
        other.finish(at, CreditState::Cancelled);
        assert_ne!(forward, other);
        let fewer: CreditTable = rows[..29].iter().copied().collect();
        assert_ne!(forward, fewer);
        let mut removed = forward.clone();
        removed.remove(&rows[3].0);
        assert_eq!(
            removed,
            rows.iter()
                .copied()
                .filter(|(k, _)| *k != rows[3].0)
                .collect()
        );
    }
}
