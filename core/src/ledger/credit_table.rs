//! The destination's credit table: the barrier row of every cross-partition transfer in,
//! keyed by the transfer's key, in the order the log recorded them.
//!
//! A destination keeps a row for every transfer that ever reached it across partitions: on
//! the server's default of 8 partitions, seven transfers in eight. Kept as a hash-indexed
//! `(TransferKey, row)` pair, as the first version did, a row took 224 bytes, three quarters
//! of it the padding of its three 65-byte inline ids, and it was most of what the default
//! server's memory grew by per transfer (255 bytes). Here a row is packed as the transfers
//! table packs its rows ([`crate::ledger::transfer_table`]): a fixed 24-byte [`PackedCredit`]
//! with the ids' actual bytes in an [`IdArena`] (about 30 bytes for typical ids), found
//! through a [`RowIndex`] of 8-byte slots by the same key hash as the transfers table.
//!
//! Rows are only ever added, and a row's state moves on (a Try confirmed, cancelled, or
//! captured in part); positions are stable, which [`crate::protocol::credit_watch`] relies
//! on. Sealed chunks of rows and of ids are shared with snapshot images
//! ([`CreditTable::freeze`]); a state change in a chunk an image still reads copies that
//! chunk first.

use crate::ledger::chunked::ChunkedVec;
use crate::ledger::id_arena::{IdArena, IdsAt};
use crate::ledger::row_index::RowIndex;
use crate::ledger::transfer_table::key_hash;
use crate::ledger::{CreditRow, CreditState};
use crate::model::event::{Transfer, TransferKey};
use crate::model::ids::{AccountId, TransactionId};
use crate::model::money::{Amount, Currency};

/// Rows per sealed chunk (small in tests and the simulator, so that they cross chunk edges).
const CHUNK_ROWS: usize = if cfg!(any(test, madsim, feature = "testing")) {
    8
} else {
    4096
};

/// One row without its ids, which live in the arena at `ids_at`: `from`, `transaction_id`,
/// then `to` (none for [`CreditState::TryNotSeen`], which had no Try).
#[derive(Debug, Clone, Copy)]
struct PackedCredit {
    ids_at: IdsAt,
    /// The Try's amount; for a hold captured in part, what arrived. `None` without a Try.
    amount: Option<Amount>,
    /// The Try's currency (any, without a Try).
    currency: Currency,
    state: CreditState,
    from_len: u8,
    transaction_id_len: u8,
    to_len: u8,
}

// Offset and amount take 16 bytes; the currency, the state and three lengths 5 more: 21,
// padded to 24. The bound fails the build should a field grow the row.
const _: () = assert!(std::mem::size_of::<PackedCredit>() <= 24);

/// The rows and their ids, without the index: what a snapshot image keeps.
#[derive(Clone, Default)]
pub(crate) struct CreditRows {
    rows: ChunkedVec<PackedCredit, CHUNK_ROWS>,
    ids: IdArena,
}

impl CreditRows {
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    fn ids_of(&self, row: &PackedCredit) -> &[u8] {
        let len = usize::from(row.from_len)
            + usize::from(row.transaction_id_len)
            + usize::from(row.to_len);
        self.ids.bytes(row.ids_at, len)
    }

    fn is_key(&self, at: usize, from: &[u8], transaction_id: &[u8]) -> bool {
        let row = self.rows.get(at);
        if usize::from(row.from_len) != from.len()
            || usize::from(row.transaction_id_len) != transaction_id.len()
        {
            return false;
        }
        let (stored_from, rest) = self.ids_of(row).split_at(from.len());
        stored_from == from && &rest[..transaction_id.len()] == transaction_id
    }

    /// The key and the whole row at `at`.
    pub(crate) fn at(&self, at: usize) -> (TransferKey, CreditRow) {
        let row = self.rows.get(at);
        let ids = self.ids_of(row);
        let (from, rest) = ids.split_at(usize::from(row.from_len));
        let (transaction_id, to) = rest.split_at(usize::from(row.transaction_id_len));
        let key = TransferKey {
            from: AccountId::from_stored(from),
            transaction_id: TransactionId::from_stored(transaction_id),
        };
        let transfer = (row.state != CreditState::TryNotSeen).then(|| Transfer {
            transaction_id: key.transaction_id,
            from: key.from,
            to: AccountId::from_stored(to),
            amount: row.amount.expect("a row with a Try has its amount"),
            currency: row.currency,
        });
        let credit = CreditRow {
            state: row.state,
            transfer,
        };
        (key, credit)
    }

    /// Every row with its key, in the order they were added.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = (TransferKey, CreditRow)> + '_ {
        (0..self.len()).map(|at| self.at(at))
    }

    fn push(&mut self, key: &TransferKey, row: &CreditRow) -> usize {
        debug_assert_eq!(row.transfer.is_none(), row.state == CreditState::TryNotSeen);
        debug_assert!(row.transfer.is_none_or(|t| t.key() == *key));
        let to = row.transfer.map(|t| t.to);
        let ids_at = self.ids.push(3, |out| {
            key.from.append_bytes_to(out);
            key.transaction_id.append_bytes_to(out);
            if let Some(to) = &to {
                to.append_bytes_to(out);
            }
        });
        let packed = PackedCredit {
            ids_at,
            amount: row.transfer.map(|t| t.amount),
            currency: row.transfer.map_or(Currency::ALL[0], |t| t.currency),
            state: row.state,
            from_len: key.from.as_bytes().len() as u8,
            transaction_id_len: key.transaction_id.as_bytes().len() as u8,
            to_len: to.map_or(0, |to| to.as_bytes().len() as u8),
        };
        self.rows.push(packed)
    }
}

/// See the module documentation.
#[derive(Clone, Default)]
pub(crate) struct CreditTable {
    rows: CreditRows,
    index: RowIndex,
}

impl CreditTable {
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Where the row of `key` is, if it has one.
    #[inline]
    pub(crate) fn find(&self, key: &TransferKey) -> Option<usize> {
        let (from, transaction_id) = (key.from.as_bytes(), key.transaction_id.as_bytes());
        self.find_hashed(key_hash(from, transaction_id), from, transaction_id)
    }

    #[inline]
    fn find_hashed(&self, hash: u32, from: &[u8], transaction_id: &[u8]) -> Option<usize> {
        (self.index).find(hash, |at| self.rows.is_key(at, from, transaction_id))
    }

    /// The row of `key`, whole.
    pub(crate) fn get(&self, key: &TransferKey) -> Option<CreditRow> {
        self.find(key).map(|at| self.rows.at(at).1)
    }

    /// The state of the row at `at`.
    pub(crate) fn state(&self, at: usize) -> CreditState {
        self.rows.rows.get(at).state
    }

    /// Destination, amount and currency of the pending credit at `at`: what its Confirm or
    /// Cancel moves. `None` unless the row holds a Try neither confirmed nor cancelled.
    pub(crate) fn pending(&self, at: usize) -> Option<(AccountId, Amount, Currency)> {
        let row = self.rows.rows.get(at);
        if row.state != CreditState::Tried {
            return None;
        }
        let ids = self.rows.ids_of(row);
        let to = &ids[usize::from(row.from_len) + usize::from(row.transaction_id_len)..];
        let amount = row.amount.expect("a pending credit has its amount");
        Some((AccountId::from_stored(to), amount, row.currency))
    }

    /// Amount and currency of every pending credit (see [`CreditTable::pending`]).
    pub(crate) fn pending_amounts(&self) -> impl Iterator<Item = (Amount, Currency)> + '_ {
        let rows = &self.rows.rows;
        (0..rows.len())
            .map(|at| rows.get(at))
            .filter(|row| row.state == CreditState::Tried)
            .filter_map(|row| Some((row.amount?, row.currency)))
    }

    /// Moves the pending credit at `at` on to `state` (confirmed or cancelled).
    pub(crate) fn finish(&mut self, at: usize, state: CreditState) {
        let row = self.rows.rows.get_mut(at);
        debug_assert_eq!(
            row.state,
            CreditState::Tried,
            "only a pending credit moves on"
        );
        row.state = state;
    }

    /// Confirms the pending credit at `at` for `amount` of it (a hold captured in part): the
    /// row keeps the amount that arrived, what a refund of it may give back.
    pub(crate) fn capture(&mut self, at: usize, amount: Amount) {
        let row = self.rows.rows.get_mut(at);
        debug_assert!(row.state == CreditState::Tried && Some(amount) <= row.amount);
        row.amount = Some(amount);
        row.state = CreditState::Confirmed;
    }

    /// Adds `row` under `key`; false, adding nothing, when `key` already has a row.
    pub(crate) fn insert(&mut self, key: &TransferKey, row: &CreditRow) -> bool {
        let (from, transaction_id) = (key.from.as_bytes(), key.transaction_id.as_bytes());
        let hash = key_hash(from, transaction_id);
        if self.find_hashed(hash, from, transaction_id).is_some() {
            return false;
        }
        let at = self.rows.push(key, row);
        self.index.insert(hash, at);
        true
    }

    /// The key and row at `position`, in the order rows were added, if there is one.
    pub(crate) fn at(&self, position: usize) -> Option<(TransferKey, CreditRow)> {
        (position < self.len()).then(|| self.rows.at(position))
    }

    /// Every row with its key, in the order they were added.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = (TransferKey, CreditRow)> + '_ {
        self.rows.iter()
    }

    /// Brings the index slot `key` hashes to into cache, without waiting for it (see
    /// [`crate::ledger::Ledger::prefetch`]).
    pub(crate) fn prefetch(&self, key: &TransferKey) {
        self.index
            .touch(key_hash(key.from.as_bytes(), key.transaction_id.as_bytes()));
    }

    /// The rows as they are now, for a snapshot image: sealed chunks are shared, only the
    /// open ones (fewer than a chunk of rows and of ids) are copied. The index is not.
    pub(crate) fn freeze(&self) -> CreditRows {
        self.rows.clone()
    }

    /// Known-bug mutations only: drops the row of `key`. Slow (the table is rebuilt), as
    /// nothing but a deliberately broken ledger removes a row.
    #[cfg(any(test, madsim, feature = "testing"))]
    pub(crate) fn remove(&mut self, key: &TransferKey) {
        if self.find(key).is_some() {
            let kept: Vec<_> = self.iter().filter(|(k, _)| k != key).collect();
            *self = kept.into_iter().collect();
        }
    }
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
        let keys: Vec<_> = (0..10 * CHUNK_ROWS + 3)
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
