//! A table whose rows are only ever added, never removed: the cash table (the idempotency
//! records of deposits and withdrawals) and the destination's credit table (the barrier row
//! of every cross-partition transfer in).
//!
//! Rows live in chunks of [`CHUNK_ROWS`] ([`ChunkedVec`]); a full chunk is sealed behind an
//! `Arc`, so a snapshot image ([`AppendTable::freeze`]) shares the sealed chunks and copies
//! only the open one. Before, the image cloned the whole table on the partition thread: 10 ms
//! for 100,000 rows, at every snapshot, while nothing else ran. A row's value may still change
//! ([`AppendTable::get_mut`]: a credit's state moves on when its Confirm or Cancel comes);
//! when a snapshot still shares that row's chunk, the chunk is copied first, one chunk and not
//! the table, and almost always a recent one. Keys are found through a [`RowIndex`] of their
//! hashes, so no key is stored twice.

use std::hash::{Hash, Hasher};

use rustc_hash::FxHasher;

use crate::ledger::chunked::ChunkedVec;
use crate::ledger::row_index::RowIndex;

/// Rows per sealed chunk (small in tests and the simulator, so that they cross chunk edges).
pub(crate) const CHUNK_ROWS: usize = if cfg!(any(test, madsim, feature = "testing")) {
    8
} else {
    4096
};

/// The rows of an [`AppendTable`] in the order they were added, without its index: what a
/// snapshot image keeps.
pub(crate) type Rows<K, V> = ChunkedVec<(K, V), CHUNK_ROWS>;

/// See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct AppendTable<K, V> {
    rows: Rows<K, V>,
    index: RowIndex,
}

impl<K, V> Default for AppendTable<K, V> {
    fn default() -> Self {
        AppendTable {
            rows: Rows::default(),
            index: RowIndex::default(),
        }
    }
}

fn key_hash<K: Hash>(key: &K) -> u32 {
    let mut hasher = FxHasher::default();
    key.hash(&mut hasher);
    // Fx mixes into the high bits; they are the better half.
    (hasher.finish() >> 32) as u32
}

impl<K: Hash + Eq + Clone, V: Clone> AppendTable<K, V> {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Where the row of `key` is, if it has one.
    #[inline]
    fn position(&self, hash: u32, key: &K) -> Option<usize> {
        self.index.find(hash, |at| self.rows.get(at).0 == *key)
    }

    #[inline]
    pub fn get(&self, key: &K) -> Option<&V> {
        let at = self.position(key_hash(key), key)?;
        Some(&self.rows.get(at).1)
    }

    /// Brings the index slot `key` hashes to into cache, without waiting for it (see
    /// [`crate::ledger::Ledger::prefetch`]).
    pub fn prefetch(&self, key: &K) {
        self.index.touch(key_hash(key));
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// The value under `key`, to change in place (its chunk is copied first if a frozen image
    /// still shares it).
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let at = self.position(key_hash(key), key)?;
        Some(&mut self.rows.get_mut(at).1)
    }

    /// Known-bug mutations only: drops the row of `key`, the last row taking its place. Slow
    /// (the table is rebuilt), as nothing but a deliberately broken ledger removes a row.
    #[cfg(any(test, madsim, feature = "testing"))]
    pub fn swap_remove(&mut self, key: &K) {
        let mut rows: Vec<(K, V)> = self.rows.iter().cloned().collect();
        if let Some(at) = rows.iter().position(|(k, _)| k == key) {
            rows.swap_remove(at);
            *self = rows.into_iter().collect();
        }
    }

    /// Adds `value` under `key`; false, adding nothing, when `key` already has a row.
    pub fn insert(&mut self, key: K, value: V) -> bool {
        let hash = key_hash(&key);
        if self.position(hash, &key).is_some() {
            return false;
        }
        let at = self.rows.push((key, value));
        self.index.insert(hash, at);
        true
    }

    /// The row at `position` in the order rows were added, if there is one.
    pub fn at(&self, position: usize) -> Option<(&K, &V)> {
        (position < self.rows.len()).then(|| {
            let (key, value) = self.rows.get(position);
            (key, value)
        })
    }

    /// Rows in the order they were added.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&K, &V)> {
        self.rows.iter().map(|(key, value)| (key, value))
    }

    pub fn values(&self) -> impl ExactSizeIterator<Item = &V> {
        self.rows.iter().map(|(_, value)| value)
    }

    /// The rows as they are now, for a snapshot image: sealed chunks are shared, only the
    /// open one (fewer than [`CHUNK_ROWS`] rows) is copied.
    pub fn freeze(&self) -> Rows<K, V> {
        self.rows.clone()
    }
}

/// Equal when they hold the same rows, in whatever order they were added.
impl<K: Hash + Eq + Clone, V: Clone + PartialEq> PartialEq for AppendTable<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .all(|(key, value)| other.get(key) == Some(value))
    }
}

/// Panics on a key given twice: decoders check that first and refuse such input.
impl<K: Hash + Eq + Clone, V: Clone> FromIterator<(K, V)> for AppendTable<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(rows: I) -> Self {
        let mut table = AppendTable::default();
        for (key, value) in rows {
            assert!(table.insert(key, value), "a key given twice");
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn rows_are_found_by_key_and_kept_in_order() {
        let mut table = AppendTable::default();
        for i in 0..100u32 {
            assert!(table.get(&i).is_none());
            assert!(table.insert(i, i * 10));
            assert_eq!(table.get(&i), Some(&(i * 10)));
        }
        assert!(!table.insert(7, 0), "a key is added once");
        assert_eq!(table.get(&7), Some(&70));
        assert_eq!(table.len(), 100);
        let keys: Vec<u32> = table.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, (0..100).collect::<Vec<_>>());
        assert_eq!(table.values().sum::<u32>(), 49_500);
    }

    #[test]
    fn a_frozen_copy_shares_sealed_chunks_and_keeps_its_rows() {
        let mut table: AppendTable<u32, u32> = (0..20).map(|i| (i, i)).collect();
        let frozen = table.freeze();
        assert!(std::sync::Arc::ptr_eq(
            &frozen.sealed()[0],
            &table.rows.sealed()[0]
        ));
        for i in 20..40 {
            table.insert(i, i);
        }
        assert_eq!(frozen.len(), 20);
        let rows: Vec<(u32, u32)> = frozen.iter().copied().collect();
        assert_eq!(rows, (0..20).map(|i| (i, i)).collect::<Vec<_>>());
    }

    #[test]
    fn a_change_copies_only_the_shared_chunk_it_falls_in() {
        let mut table: AppendTable<u32, u32> = (0..20).map(|i| (i, i)).collect();
        let frozen = table.freeze();
        *table.get_mut(&3).unwrap() = 300;
        *table.get_mut(&18).unwrap() = 1800;
        assert_eq!(table.get_mut(&99), None);
        assert_eq!((table.get(&3), table.get(&18)), (Some(&300), Some(&1800)));
        assert_eq!(frozen.get(3), &(3, 3), "the image keeps what it saw");
        assert_eq!(frozen.get(18), &(18, 18));
        let shared =
            |chunk: usize| Arc::ptr_eq(&frozen.sealed()[chunk], &table.rows.sealed()[chunk]);
        assert!(!shared(0), "the changed chunk was copied");
        assert!(shared(1), "the untouched chunk is still shared");
        table.swap_remove(&5);
        assert_eq!(
            (table.len(), table.get(&5), table.get(&19)),
            (19, None, Some(&19))
        );
    }

    #[test]
    fn tables_are_equal_whatever_the_order_rows_were_added_in() {
        let forward: AppendTable<u32, u32> = (0..30).map(|i| (i, i)).collect();
        let backward: AppendTable<u32, u32> = (0..30).rev().map(|i| (i, i)).collect();
        assert_eq!(forward, backward);
        let other: AppendTable<u32, u32> = (0..30).map(|i| (i, i + u32::from(i == 9))).collect();
        assert_ne!(forward, other);
        let fewer: AppendTable<u32, u32> = (0..29).map(|i| (i, i)).collect();
        assert_ne!(forward, fewer);
    }
}
