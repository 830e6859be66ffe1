//! A map from transfer keys to rows that are only ever added: the tables that grow by a row
//! per refund and never shrink (a refund's original, each original's refunded sum). A hold's
//! terms, a transaction's legs at its home and each participant's part of it were such
//! tables too; they are rows of the transfers table or their terms now
//! ([`crate::ledger::row_terms`]), and go to disk with them.
//!
//! Neither an ordered map nor a general hash map does for them. An ordered map searches
//! `log n` nodes comparing 130-byte keys, a cache miss each once the table outgrows the
//! cache: with 4-leg transactions, the participants' table searched at every Try and Confirm
//! was 12.7% of the server's time. A general hash map moves every row in one step each time
//! it doubles, on the partition's thread: hashed tables took the p99.9 of 4-leg transactions
//! from 31-36 to 42-53 ms. So this one is a [`KeyedTable`], as the cash table is: rows in a
//! [`ChunkedVec`](crate::ledger::chunked::ChunkedVec) (appends never move a row; a clone,
//! which a snapshot image takes, shares the sealed chunks), found through a
//! [`RowIndex`](crate::ledger::row_index::RowIndex), which spreads its doublings over the
//! inserts that follow, by the transfers table's own key hash. Iteration is in insertion
//! order; whatever must read the rows in key order (a snapshot, a rebuild) sorts them
//! ([`KeyMap::sorted`]).
//!
//! A row keeps its key's actual bytes in an arena (about 20 bytes for typical ids), not the
//! two ids' inline 65-byte arrays: with the keys inline a row of these tables took about 150
//! bytes before its value, and a 4-leg transaction leaves four or five of them.

use std::fmt;

use crate::ledger::keyed_table::{KeyedTable, RowIds};
use crate::model::event::TransferKey;

/// See the module documentation.
#[derive(Clone)]
pub(crate) struct KeyMap<V> {
    table: KeyedTable<V>,
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap {
            table: KeyedTable::default(),
        }
    }
}

fn key_of(ids: &RowIds<'_>) -> TransferKey {
    TransferKey {
        from: ids.account(),
        transaction_id: ids.transaction_id(),
    }
}

impl<V> KeyMap<V> {
    fn position(&self, key: &TransferKey) -> Option<usize> {
        self.table.find(&key.from, &key.transaction_id)
    }

    pub(crate) fn get(&self, key: &TransferKey) -> Option<&V> {
        self.position(key).map(|at| self.table.payload(at))
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Every row, in the order the keys were first inserted.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (TransferKey, &V)> {
        self.table.iter().map(|(ids, value)| (key_of(&ids), value))
    }

    /// Every row, sorted by key: for whatever must not depend on the order of insertion.
    pub(crate) fn sorted(&self) -> Vec<(TransferKey, &V)> {
        let mut rows: Vec<_> = self.iter().collect();
        rows.sort_unstable_by_key(|(key, _)| *key);
        rows
    }
}

impl<V: Clone> KeyMap<V> {
    /// The row of `key`, mutably (a sealed chunk a snapshot image still shares is copied
    /// first).
    pub(crate) fn get_mut(&mut self, key: &TransferKey) -> Option<&mut V> {
        let at = self.position(key)?;
        Some(self.table.payload_mut(at))
    }

    /// Sets the row of `key`; returns the one it replaces, if there was one.
    pub(crate) fn insert(&mut self, key: TransferKey, value: V) -> Option<V> {
        self.table.replace(&key.from, &key.transaction_id, value)
    }
}

impl<V: Clone> FromIterator<(TransferKey, V)> for KeyMap<V> {
    fn from_iter<I: IntoIterator<Item = (TransferKey, V)>>(rows: I) -> Self {
        let mut map = KeyMap::default();
        for (key, value) in rows {
            map.insert(key, value);
        }
        map
    }
}

/// Two maps are equal when they hold the same rows, whatever the order they came in.
impl<V: PartialEq> PartialEq for KeyMap<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .all(|(key, value)| other.get(&key) == Some(value))
    }
}

impl<V: Eq> Eq for KeyMap<V> {}

impl<V: fmt::Debug> fmt::Debug for KeyMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.sorted()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::model::ids::{AccountId, TransactionId};

    fn key(account: u16, id: u16) -> TransferKey {
        TransferKey {
            from: AccountId::new(&format!("acct-{account}")).unwrap(),
            transaction_id: TransactionId::new(&format!("t-{id}")).unwrap(),
        }
    }

    proptest! {
        /// Whatever the inserts, replacements and clones, the map answers as an ordered
        /// map does, sorts as it does, and a clone keeps what it saw.
        #[test]
        fn answers_as_an_ordered_map_does(
            ops in proptest::collection::vec((0u16..40, 0u16..400, any::<u32>()), 0..3000),
        ) {
            let mut map = KeyMap::default();
            let mut model = BTreeMap::new();
            let mut image = None;
            for (i, (account, id, value)) in ops.into_iter().enumerate() {
                let k = key(account, id);
                prop_assert_eq!(map.insert(k, value), model.insert(k, value));
                if i == 1000 {
                    image = Some((map.clone(), model.clone()));
                }
                if value % 7 == 0 {
                    if let Some(row) = map.get_mut(&k) {
                        *row = row.wrapping_add(1);
                        *model.get_mut(&k).unwrap() = *row;
                    }
                }
            }
            prop_assert_eq!(map.len(), model.len());
            for account in 0..40 {
                for id in (0..400).step_by(37) {
                    let k = key(account, id);
                    prop_assert_eq!(map.get(&k), model.get(&k));
                    prop_assert_eq!(map.get(&k).is_some(), model.contains_key(&k));
                }
            }
            let sorted: Vec<_> = map.sorted().into_iter().map(|(k, v)| (k, *v)).collect();
            let expected: Vec<_> = model.iter().map(|(k, v)| (*k, *v)).collect();
            prop_assert_eq!(sorted, expected);
            if let Some((image, seen)) = image {
                let kept: BTreeMap<_, _> = image.iter().map(|(k, v)| (k, *v)).collect();
                prop_assert_eq!(kept, seen);
            }
        }
    }

    #[test]
    fn maps_of_the_same_rows_are_equal_whatever_their_order() {
        let forward: KeyMap<u32> = (0..100).map(|i| (key(i, i), u32::from(i))).collect();
        let backward: KeyMap<u32> = (0..100).rev().map(|i| (key(i, i), u32::from(i))).collect();
        assert_eq!(forward, backward);
        let mut other = backward.clone();
        other.insert(key(5, 5), 6);
        assert_ne!(forward, other);
        other.insert(key(5, 5), 5);
        other.insert(key(500, 5), 5);
        assert_ne!(forward, other);
    }
}
