//! A packed table of rows keyed by an account and a transaction id, each row with a
//! payload: the cash table (the idempotency record of every deposit and withdrawal), and
//! through [`crate::ledger::key_map`] the tables of holds, refunds and transactions.
//!
//! It grows by a row per operation and never shrinks. Kept as `(key, value)` pairs of the
//! ids' inline 65-byte arrays, a cash row took 160 bytes; here a row is its payload, the
//! place of its ids in an [`IdArena`] (their actual bytes, about 30 for typical ids) and their
//! lengths, found through a [`RowIndex`] of 8-byte slots by the same key hash as the
//! transfers table ([`crate::ledger::transfer_table`]). (The destination's credit rows were
//! such a table too; they are rows of the transfers table now, which moves final rows to
//! disk.)
//!
//! Rows are only ever added, in log order, and positions are stable. Sealed chunks of rows
//! and of ids are shared with snapshot images ([`KeyedTable::freeze`]).

use crate::ledger::chunked::ChunkedVec;
use crate::ledger::id_arena::{IdArena, IdsAt};
use crate::ledger::row_index::RowIndex;
use crate::ledger::transfer_table::key_hash;
use crate::model::ids::{AccountId, TransactionId};

/// Rows per sealed chunk (small in tests and the simulator, so that they cross chunk edges).
pub(crate) const CHUNK_ROWS: usize = if cfg!(any(test, madsim, feature = "testing")) {
    8
} else {
    4096
};

/// One row: its payload, and where its ids are in the arena: the key's account, then its
/// transaction id.
#[derive(Debug, Clone)]
struct Packed<P> {
    ids_at: IdsAt,
    payload: P,
    account_len: u8,
    transaction_id_len: u8,
}

/// The bytes a row with payload `P` takes in the table (besides its ids and index slot).
pub(crate) const fn row_size<P>() -> usize {
    std::mem::size_of::<Packed<P>>()
}

/// A row's ids, borrowed from the arena.
pub(crate) struct RowIds<'a> {
    pub(crate) account: &'a [u8],
    pub(crate) transaction_id: &'a [u8],
}

impl RowIds<'_> {
    pub(crate) fn account(&self) -> AccountId {
        AccountId::from_stored(self.account)
    }

    pub(crate) fn transaction_id(&self) -> TransactionId {
        TransactionId::from_stored(self.transaction_id)
    }
}

/// The rows and their ids, without the index: what a snapshot image keeps.
#[derive(Clone)]
pub(crate) struct KeyedRows<P> {
    rows: ChunkedVec<Packed<P>, CHUNK_ROWS>,
    ids: IdArena,
}

impl<P> Default for KeyedRows<P> {
    fn default() -> Self {
        KeyedRows {
            rows: ChunkedVec::default(),
            ids: IdArena::default(),
        }
    }
}

impl<P> KeyedRows<P> {
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// The ids and the payload of the row at `at`.
    #[inline]
    pub(crate) fn at(&self, at: usize) -> (RowIds<'_>, &P) {
        let row = self.rows.get(at);
        let (account_len, transaction_id_len) = (
            usize::from(row.account_len),
            usize::from(row.transaction_id_len),
        );
        let ids = self.ids.bytes(row.ids_at, account_len + transaction_id_len);
        let (account, transaction_id) = ids.split_at(account_len);
        let ids = RowIds {
            account,
            transaction_id,
        };
        (ids, &row.payload)
    }

    /// Every row, in the order they were added.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = (RowIds<'_>, &P)> + '_ {
        (0..self.len()).map(|at| self.at(at))
    }

    fn is_key(&self, at: usize, account: &[u8], transaction_id: &[u8]) -> bool {
        let row = self.rows.get(at);
        if usize::from(row.account_len) != account.len()
            || usize::from(row.transaction_id_len) != transaction_id.len()
        {
            return false;
        }
        let ids = (self.ids).bytes(row.ids_at, account.len() + transaction_id.len());
        let (stored_account, stored_id) = ids.split_at(account.len());
        stored_account == account && stored_id == transaction_id
    }
}

/// See the module documentation.
#[derive(Clone)]
pub(crate) struct KeyedTable<P> {
    rows: KeyedRows<P>,
    index: RowIndex,
}

impl<P> Default for KeyedTable<P> {
    fn default() -> Self {
        KeyedTable {
            rows: KeyedRows::default(),
            index: RowIndex::default(),
        }
    }
}

impl<P> KeyedTable<P> {
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Where the row of (`account`, `transaction_id`) is, if it has one.
    #[inline]
    pub(crate) fn find(
        &self,
        account: &AccountId,
        transaction_id: &TransactionId,
    ) -> Option<usize> {
        let (account, transaction_id) = (account.as_bytes(), transaction_id.as_bytes());
        self.find_hashed(key_hash(account, transaction_id), account, transaction_id)
    }

    #[inline]
    fn find_hashed(&self, hash: u32, account: &[u8], transaction_id: &[u8]) -> Option<usize> {
        (self.index).find(hash, |at| self.rows.is_key(at, account, transaction_id))
    }

    /// The payload of the row at `at`.
    #[inline]
    pub(crate) fn payload(&self, at: usize) -> &P {
        &self.rows.rows.get(at).payload
    }

    /// Every row, in the order they were added.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = (RowIds<'_>, &P)> + '_ {
        self.rows.iter()
    }

    /// Adds a row under (`account`, `transaction_id`) with `payload`; false, adding
    /// nothing, when the key already has one. One hash of the key serves both.
    pub(crate) fn insert(
        &mut self,
        account: &AccountId,
        transaction_id: &TransactionId,
        payload: P,
    ) -> bool {
        let (account_bytes, id_bytes) = (account.as_bytes(), transaction_id.as_bytes());
        let hash = key_hash(account_bytes, id_bytes);
        if self.find_hashed(hash, account_bytes, id_bytes).is_some() {
            return false;
        }
        self.push_new(hash, account, transaction_id, payload);
        true
    }

    /// Appends a row for a key the table does not hold, whose [`key_hash`] is `hash`.
    fn push_new(
        &mut self,
        hash: u32,
        account: &AccountId,
        transaction_id: &TransactionId,
        payload: P,
    ) {
        let (account_bytes, id_bytes) = (account.as_bytes(), transaction_id.as_bytes());
        let ids_at = self.rows.ids.push(2, |out| {
            account.append_bytes_to(out);
            transaction_id.append_bytes_to(out);
        });
        let packed = Packed {
            ids_at,
            payload,
            account_len: account_bytes.len() as u8,
            transaction_id_len: id_bytes.len() as u8,
        };
        let at = self.rows.rows.push(packed);
        self.index.insert(hash, at);
    }
}

impl<P: Clone> KeyedTable<P> {
    /// The payload of the row at `at`, mutably (a sealed chunk a snapshot image still shares
    /// is copied first).
    #[inline]
    pub(crate) fn payload_mut(&mut self, at: usize) -> &mut P {
        &mut self.rows.rows.get_mut(at).payload
    }

    /// Sets the payload of (`account`, `transaction_id`), adding its row if it has none;
    /// returns the payload it replaces. One hash of the key serves the lookup and the add.
    pub(crate) fn replace(
        &mut self,
        account: &AccountId,
        transaction_id: &TransactionId,
        payload: P,
    ) -> Option<P> {
        let (account_bytes, id_bytes) = (account.as_bytes(), transaction_id.as_bytes());
        let hash = key_hash(account_bytes, id_bytes);
        if let Some(at) = self.find_hashed(hash, account_bytes, id_bytes) {
            return Some(std::mem::replace(self.payload_mut(at), payload));
        }
        self.push_new(hash, account, transaction_id, payload);
        None
    }

    /// The rows as they are now, for a snapshot image: sealed chunks are shared, only the
    /// open ones (fewer than a chunk of rows and of ids) are copied. The index is not.
    pub(crate) fn freeze(&self) -> KeyedRows<P> {
        self.rows.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(account: &str, id: &str) -> (AccountId, TransactionId) {
        (
            AccountId::new(account).unwrap(),
            TransactionId::new(id).unwrap(),
        )
    }

    #[test]
    fn rows_are_found_by_key_with_their_ids_and_payload_in_order() {
        let mut table: KeyedTable<u64> = KeyedTable::default();
        let mut expected = Vec::new();
        for i in 0..100u64 {
            // Ids of every length, the longest included, so rows cross arena chunks.
            let (account, id) = ids(
                &format!("a-{}", "s".repeat(i as usize % 62)),
                &format!("t-{i}"),
            );
            assert_eq!(table.find(&account, &id), None);
            assert!(table.insert(&account, &id, i * 10));
            let at = table.find(&account, &id).unwrap();
            assert_eq!(*table.payload(at), i * 10);
            expected.push((account, id, i * 10));
        }
        let (account, id, _) = expected[7];
        assert!(!table.insert(&account, &id, 0), "a key is added once");
        let rows: Vec<_> = (table.iter())
            .map(|(ids, payload)| (ids.account(), ids.transaction_id(), *payload))
            .collect();
        assert_eq!(rows, expected);
        // A key differing only in where its bytes split is another key.
        let (shifted_account, shifted_id) = ids("a-", "st-1");
        assert_eq!(table.find(&shifted_account, &shifted_id), None);
    }

    #[test]
    fn a_frozen_copy_keeps_the_rows_as_they_were() {
        let mut table: KeyedTable<u32> = KeyedTable::default();
        let keys: Vec<_> = (0..10 * CHUNK_ROWS + 3)
            .map(|i| ids(&format!("src-{i:0>40}"), &format!("t-{i}")))
            .collect();
        for (i, (account, id)) in keys.iter().enumerate() {
            table.insert(account, id, i as u32);
        }
        let frozen = table.freeze();
        let (account, id) = ids("late", "t");
        table.insert(&account, &id, 9);
        assert_eq!(frozen.len(), keys.len());
        assert!(frozen.iter().enumerate().all(|(i, (_, p))| *p == i as u32));
        assert_eq!(table.len(), keys.len() + 1);
    }
}
