//! The accounts of a partition: rows in chunks shared copy-on-write with snapshot images
//! ([`crate::ledger::chunked::ChunkedVec`]), found through a compact index of row positions
//! ([`AccountIndex`]).
//!
//! A snapshot image shares the sealed chunks instead of copying the table (700 ms on the
//! partition's thread at 10 million accounts); the first write to a chunk an image still
//! shares copies that chunk (4,096 accounts). Accounts are read twice per transfer, so the
//! way to a row is what a lookup pays for: one slot of the index, then the row, and the
//! prefetch brings both in ([`AccountTable::prefetch_slot`], then
//! [`AccountTable::prefetch_row`] with the hash the first computed).

use std::hash::{Hash, Hasher};

use rustc_hash::FxHasher;

use crate::ledger::account_index::{prefetch_line, AccountIndex, IndexHash};
use crate::ledger::chunked::ChunkedVec;
use crate::ledger::keyed_table::CHUNK_ROWS;
use crate::ledger::Account;
use crate::model::ids::AccountId;

/// An account's row: its id and its figures, aligned to two whole cache lines. Unaligned,
/// the 104 bytes they take spanned three lines more often than not, and a lookup reads the
/// whole row (the id to confirm it, the figures to use them); aligned, it reads two. The 24
/// bytes of padding per account are worth that line on every transfer's two lookups.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct AccountRow {
    pub(crate) id: AccountId,
    pub(crate) account: Account,
}
const _: () = assert!(std::mem::size_of::<AccountRow>() == 128);

/// The rows of an [`AccountTable`] in the order accounts were opened, without its index:
/// what a snapshot image keeps.
pub(crate) type AccountRows = ChunkedVec<AccountRow, CHUNK_ROWS>;

/// The index's hash of an id. Fx leaves its low bits weak and the index takes its home from
/// the high bits and its fingerprint from the ones below them, so one multiply-xorshift
/// spreads the whole word first.
#[inline]
fn hash_of(id: &AccountId) -> IndexHash {
    let mut hasher = FxHasher::default();
    id.hash(&mut hasher);
    let h = hasher.finish();
    let h = (h ^ (h >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((h ^ (h >> 29)) >> 32) as IndexHash
}

/// See the module documentation.
#[derive(Clone, Default)]
pub(crate) struct AccountTable {
    rows: AccountRows,
    /// Positions in `rows`, by their id's hash.
    index: AccountIndex,
}

impl AccountTable {
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    #[inline]
    fn position(&self, id: &AccountId) -> Option<usize> {
        let rows = &self.rows;
        self.index.find(hash_of(id), |at| rows.get(at).id == *id)
    }

    /// Brings into cache the index slot of `id` ([`AccountTable::prefetch_row`] then finds
    /// it there). Waits for nothing. Returns the id's hash, which the row's prefetch takes
    /// so that the id is hashed once for both.
    #[inline]
    pub(crate) fn prefetch_slot(&self, id: &AccountId) -> IndexHash {
        let hash = hash_of(id);
        self.index.prefetch(hash);
        hash
    }

    /// Brings into cache the row that the slot of the id hashed to `hash` names, if any,
    /// without waiting for it: a lookup a few hundred nanoseconds later finds both. Reads the
    /// slot (in cache after [`AccountTable::prefetch_slot`]) but not the row, so a prefetch
    /// pass never stalls on a row.
    #[inline]
    pub(crate) fn prefetch_row(&self, hash: IndexHash) {
        if let Some(at) = self.index.candidate(hash) {
            let row: *const AccountRow = self.rows.get(at);
            // A row is two whole cache lines (see `AccountRow`).
            let bytes = row.cast::<u8>();
            prefetch_line(bytes);
            prefetch_line(bytes.wrapping_add(64));
        }
    }

    #[inline]
    pub(crate) fn get(&self, id: &AccountId) -> Option<&Account> {
        self.position(id).map(|at| &self.rows.get(at).account)
    }

    #[cfg(any(test, madsim, feature = "testing"))]
    pub(crate) fn contains_key(&self, id: &AccountId) -> bool {
        self.position(id).is_some()
    }

    /// The account `id`, to change in place (its chunk is copied first if an image shares it).
    pub(crate) fn get_mut(&mut self, id: &AccountId) -> Option<&mut Account> {
        let at = self.position(id)?;
        Some(&mut self.rows.get_mut(at).account)
    }

    /// Two different accounts, to change in place; `None` for an id without a row.
    pub(crate) fn get_pair_mut(
        &mut self,
        a: &AccountId,
        b: &AccountId,
    ) -> [Option<&mut Account>; 2] {
        assert_ne!(a, b, "two different accounts");
        match (self.position(a), self.position(b)) {
            (Some(at_a), Some(at_b)) => {
                let [x, y] = self.rows.get_pair_mut(at_a, at_b);
                [Some(&mut x.account), Some(&mut y.account)]
            }
            (Some(at_a), None) => [Some(&mut self.rows.get_mut(at_a).account), None],
            (None, Some(at_b)) => [None, Some(&mut self.rows.get_mut(at_b).account)],
            (None, None) => [None, None],
        }
    }

    /// Adds `account` under `id`; false, adding nothing, when `id` already has a row.
    pub(crate) fn insert(&mut self, id: AccountId, account: Account) -> bool {
        if self.position(&id).is_some() {
            return false;
        }
        let at = self.rows.push(AccountRow { id, account });
        let rows = &self.rows;
        self.index
            .insert(hash_of(&id), at, |at| hash_of(&rows.get(at).id));
        true
    }

    /// Accounts in the order they were opened.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = (&AccountId, &Account)> {
        self.rows.iter().map(|row| (&row.id, &row.account))
    }

    pub(crate) fn values(&self) -> impl ExactSizeIterator<Item = &Account> {
        self.rows.iter().map(|row| &row.account)
    }

    /// The rows as they are now, for a snapshot image: sealed chunks are shared.
    pub(crate) fn freeze(&self) -> AccountRows {
        self.rows.clone()
    }
}

/// Equal when they hold the same accounts, in whatever order they were opened.
impl PartialEq for AccountTable {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(id, a)| other.get(id) == Some(a))
    }
}
impl Eq for AccountTable {}

impl std::fmt::Debug for AccountTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Panics on an id given twice: decoders check that first and refuse such input.
impl FromIterator<(AccountId, Account)> for AccountTable {
    fn from_iter<I: IntoIterator<Item = (AccountId, Account)>>(rows: I) -> Self {
        let mut table = AccountTable::default();
        for (id, account) in rows {
            assert!(table.insert(id, account), "an account given twice");
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::money::Currency;

    fn account(balance: u64) -> Account {
        Account {
            currency: Currency::USD,
            balance,
            held: 0,
            incoming: 0,
        }
    }

    #[test]
    fn accounts_are_found_changed_in_pairs_and_an_image_keeps_what_it_saw() {
        let id = |i: u32| AccountId::new(&format!("acct-{i}")).unwrap();
        let mut table = AccountTable::default();
        for i in 0..10_000 {
            assert!(table.insert(id(i), account(u64::from(i))));
        }
        assert!(!table.insert(id(7), account(0)), "an id is opened once");
        let image = table.freeze();
        let [a, b] = table.get_pair_mut(&id(3), &id(9_999));
        a.unwrap().balance += 100;
        b.unwrap().balance -= 100;
        let [missing, found] = table.get_pair_mut(&AccountId::new("nobody").unwrap(), &id(5));
        assert!(missing.is_none() && found.is_some());
        assert_eq!(table.get(&id(3)).unwrap().balance, 103);
        assert_eq!(table.get(&id(9_999)).unwrap().balance, 9_899);
        assert_eq!(
            image.get(3).account.balance,
            3,
            "the image keeps what it saw"
        );
        assert_eq!(image.get(9_999).account.balance, 9_999);
        let mut rows: Vec<_> = table.iter().map(|(k, v)| (*k, *v)).collect();
        rows.reverse();
        let reversed: AccountTable = rows.into_iter().collect();
        assert_eq!(reversed, table);
    }
}
