//! The home partition's transfers table: the idempotency record and phase row of every
//! transfer that started here, in the order the log recorded them.
//!
//! It is the one table that grows by a row per transfer and is never pruned, so its layout is
//! the ledger's hottest memory. A [`TransferRow`] holds three ids of up to 64 bytes each, inline;
//! stored like that (an ordered hash map of `TransferKey → row`) every transfer wrote about 250
//! bytes into fresh memory, and writing them was a fifth of the one-partition engine's time.
//! Here a row is a fixed 48-byte record plus the ids' actual bytes, appended to one byte arena
//! (about 30 bytes for typical ids), and the hash index holds 8-byte slots:
//!
//! - `rows`: one [`PackedRow`] per transfer, in log order, never moved by growth of the index;
//! - `ids`: the `from`, `transaction_id` and `to` bytes of each row, back to back, at the
//!   row's `ids_at`;
//! - `index`: one [`Slot`] per row, its position and 32 bits of the key's hash, found by the
//!   hash and confirmed by comparing the key's bytes. The slot carries the hash so that
//!   growing the index reads nothing but the index: with the hash in the row, every doubling
//!   read millions of rows in random order and held the partition for most of a second.
//!   The index also grows step by step ([`Growth`]): a new index of twice the capacity takes
//!   the inserts while a few old slots move over with each of them, so no insert waits for
//!   millions of slots to move at once (which, in one go, held the partition for half a
//!   second at 7 million rows).
//!
//! Callers see only whole [`TransferRow`]s, rebuilt on read; the ledger's hot paths ask the
//! narrower questions (`find`, `records`, `state`) that touch just the packed row.

use std::hash::Hasher;

use rustc_hash::FxHasher;

use crate::event::{Timestamp, Transfer, TransferKey};
use crate::ids::{AccountId, TransactionId};
use crate::ledger::{TransferRow, TransferState};
use crate::money::{Amount, Currency};

/// Most rows one table holds: positions in the index are `u32`. At a million transfers a
/// second this is more than an hour of one partition's traffic without pruning; a partition
/// that reaches it refuses nothing silently, it stops with an assertion (see `push`).
pub const TRANSFER_ROWS_MAX: usize = u32::MAX as usize;

/// Slots moved from the old index to the new one with each insert while the index grows. With
/// 4, the move is over after a quarter of the old row count has been inserted, long before
/// the new index, twice the size, is full again.
const GROWTH_SLOTS_PER_INSERT: usize = 4;
/// Capacity of the first index, which is sized at once rather than grown.
const INDEX_CAPACITY_MIN: usize = 1024;

/// What changes in a row after it is recorded: its phase and the times of its phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Phase {
    pub(crate) state: TransferState,
    /// When the second-phase decision was logged (0 until then).
    pub(crate) decided_at: Timestamp,
    /// When the row became final (0 until then).
    pub(crate) finished_at: Timestamp,
}

/// An index entry: a row's position (low half) and the key's 32-bit hash (high half).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot(u64);

impl Slot {
    fn new(at: u32, hash: u32) -> Slot {
        Slot(u64::from(hash) << 32 | u64::from(at))
    }

    fn at(self) -> usize {
        self.0 as u32 as usize
    }

    fn hash32(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The 64-bit hash the index places the slot by, rebuilt from its 32 bits: the index takes
    /// a bucket from the low bits and a 7-bit tag from the top ones, so the 32 bits go to both
    /// halves (bucket and tag stay independent up to 2^25 buckets, and stay correct beyond).
    fn index_hash(self) -> u64 {
        index_hash(self.hash32())
    }
}

fn index_hash(hash32: u32) -> u64 {
    u64::from(hash32) << 32 | u64::from(hash32)
}

/// One row without its ids, which live in the arena at `ids_at`.
#[derive(Debug, Clone, Copy)]
struct PackedRow {
    /// Offset of the row's id bytes in the arena: `from`, then `transaction_id`, then `to`.
    ids_at: u64,
    amount: Amount,
    accepted_at: Timestamp,
    // A `Phase`, flat: as a struct its padding would make the row 64 bytes.
    decided_at: Timestamp,
    finished_at: Timestamp,
    state: TransferState,
    from_len: u8,
    transaction_id_len: u8,
    to_len: u8,
    currency: Currency,
    remote: bool,
}

// Offset, amount and three timestamps take 40 bytes; the state 2, three lengths, the currency
// and `remote` 5 more: 47, padded to 48 by the 8-byte alignment. The bound is that exact
// size, so a field that grows the row fails the build.
const _: () = assert!(std::mem::size_of::<PackedRow>() <= 48);

/// The 32-bit hash a key is indexed by. Ids never contain a zero byte, so the separator keeps
/// `("ab", "c")` and `("a", "bc")` apart (not needed for correctness, which compares bytes,
/// but it keeps such keys from colliding).
fn key_hash(from: &[u8], transaction_id: &[u8]) -> u32 {
    let mut hasher = FxHasher::default();
    hasher.write(from);
    hasher.write_u8(0);
    hasher.write(transaction_id);
    // Fx mixes into the high bits; they are the better half.
    (hasher.finish() >> 32) as u32
}

/// See the module documentation.
#[derive(Clone, Default)]
pub(crate) struct TransferTable {
    index: hashbrown::HashTable<Slot>,
    /// The index being replaced, while its slots move to `index`.
    growth: Option<Growth>,
    rows: Vec<PackedRow>,
    ids: Vec<u8>,
}

/// An index being replaced by one of twice its capacity: it holds rows `0..rows`, of which
/// `0..moved` are also in the new index already.
#[derive(Clone)]
struct Growth {
    old: hashbrown::HashTable<Slot>,
    rows: usize,
    moved: usize,
}

impl TransferTable {
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// The position of the row recorded under `key`.
    #[inline]
    pub(crate) fn find(&self, key: &TransferKey) -> Option<usize> {
        let (from, transaction_id) = (key.from.as_bytes(), key.transaction_id.as_bytes());
        let hash = key_hash(from, transaction_id);
        self.find_in(&self.index, hash, key)
            .or_else(|| self.find_in_old(hash, key))
    }

    /// The position of the row under `key` (of `hash`) if `index` holds it.
    #[inline]
    fn find_in(
        &self,
        index: &hashbrown::HashTable<Slot>,
        hash: u32,
        key: &TransferKey,
    ) -> Option<usize> {
        let (from, transaction_id) = (key.from.as_bytes(), key.transaction_id.as_bytes());
        let (rows, ids) = (&self.rows, &self.ids);
        index
            .find(index_hash(hash), |&slot| {
                is_key(rows, ids, slot, hash, from, transaction_id)
            })
            .map(|slot| slot.at())
    }

    /// The position of the row under `key` if the old index of a growth holds it.
    fn find_in_old(&self, hash: u32, key: &TransferKey) -> Option<usize> {
        let growth = self.growth.as_ref()?;
        self.find_in(&growth.old, hash, key)
    }

    /// Makes room in the index for one more slot without moving many: starts a growth when
    /// the index is full, and moves a few slots of a growth under way.
    fn make_room(&mut self) {
        if self.index.len() == self.index.capacity() {
            // Not reached while a growth is under way (see `GROWTH_SLOTS_PER_INSERT`); if it
            // were, finishing that one first keeps the table correct, only slower.
            debug_assert!(self.growth.is_none(), "an index filled while it grew");
            self.finish_growth();
            let capacity = (2 * self.index.capacity()).max(INDEX_CAPACITY_MIN);
            let old = std::mem::replace(
                &mut self.index,
                hashbrown::HashTable::with_capacity(capacity),
            );
            if !old.is_empty() {
                let rows = old.len();
                self.growth = Some(Growth {
                    old,
                    rows,
                    moved: 0,
                });
            }
        }
        self.move_slots(GROWTH_SLOTS_PER_INSERT);
    }

    /// Moves up to `count` slots of the growth under way into the new index; ends the growth
    /// (and frees the old index) once every row is in the new one.
    fn move_slots(&mut self, count: usize) {
        let Some(growth) = &mut self.growth else {
            return;
        };
        let end = growth.rows.min(growth.moved + count);
        for at in growth.moved..end {
            let row = &self.rows[at];
            let start = row.ids_at as usize;
            let (from, rest) = self.ids[start..].split_at(usize::from(row.from_len));
            let hash = key_hash(from, &rest[..usize::from(row.transaction_id_len)]);
            let slot = Slot::new(at as u32, hash);
            self.index
                .insert_unique(index_hash(hash), slot, |s| s.index_hash());
        }
        growth.moved = end;
        if growth.moved == growth.rows {
            debug_assert_eq!(self.index.len(), self.rows.len(), "every row is indexed");
            self.growth = None;
        }
    }

    fn finish_growth(&mut self) {
        self.move_slots(usize::MAX);
    }

    pub(crate) fn contains(&self, key: &TransferKey) -> bool {
        self.find(key).is_some()
    }

    /// The row recorded under `key`, whole.
    pub(crate) fn get(&self, key: &TransferKey) -> Option<TransferRow> {
        self.find(key).map(|at| self.row(at))
    }

    /// The row at position `at` (positions are log order), whole.
    pub(crate) fn row(&self, at: usize) -> TransferRow {
        let row = &self.rows[at];
        let ids = self.ids_of(row);
        let (from, rest) = ids.split_at(usize::from(row.from_len));
        let (transaction_id, to) = rest.split_at(usize::from(row.transaction_id_len));
        TransferRow {
            transfer: Transfer {
                transaction_id: TransactionId::from_stored(transaction_id),
                from: AccountId::from_stored(from),
                to: AccountId::from_stored(to),
                amount: row.amount,
                currency: row.currency,
            },
            state: row.state,
            remote: row.remote,
            accepted_at: row.accepted_at,
            decided_at: row.decided_at,
            finished_at: row.finished_at,
        }
    }

    pub(crate) fn phase(&self, at: usize) -> Phase {
        let row = &self.rows[at];
        Phase {
            state: row.state,
            decided_at: row.decided_at,
            finished_at: row.finished_at,
        }
    }

    pub(crate) fn set_phase(&mut self, at: usize, phase: Phase) {
        let row = &mut self.rows[at];
        row.state = phase.state;
        row.decided_at = phase.decided_at;
        row.finished_at = phase.finished_at;
    }

    /// The amount and currency of the row at `at`: what finishing its hold needs.
    pub(crate) fn money(&self, at: usize) -> (Amount, Currency) {
        let row = &self.rows[at];
        (row.amount, row.currency)
    }

    /// Whether `transfer`, whose key the row at `at` is recorded under, is the transfer the
    /// row records (a retry) rather than another body under the same key (a conflict).
    pub(crate) fn records(&self, at: usize, transfer: &Transfer) -> bool {
        let row = &self.rows[at];
        debug_assert!(self.row(at).transfer.key() == transfer.key());
        let ids = self.ids_of(row);
        let to_at = usize::from(row.from_len) + usize::from(row.transaction_id_len);
        row.amount == transfer.amount
            && row.currency == transfer.currency
            && &ids[to_at..] == transfer.to.as_bytes()
    }

    /// Records `row` under its transfer's key, or returns `false` and changes nothing if the
    /// key is already recorded.
    pub(crate) fn insert(&mut self, row: &TransferRow) -> bool {
        match self.vacancy(&row.transfer.key()) {
            Some(vacancy) => {
                vacancy.fill(row);
                true
            }
            None => false,
        }
    }

    /// The place for a row under `key`, if none is recorded yet: one lookup that both checks
    /// the key and, filled, inserts the row (the ledger's hottest path).
    pub(crate) fn vacancy(&mut self, key: &TransferKey) -> Option<Vacancy<'_>> {
        let (from, transaction_id) = (key.from.as_bytes(), key.transaction_id.as_bytes());
        let hash = key_hash(from, transaction_id);
        self.make_room();
        // A key that the old index of a growth still holds alone is recorded too.
        if self.find_in_old(hash, key).is_some() {
            return None;
        }
        let (rows, ids) = (&self.rows, &self.ids);
        let entry = self.index.entry(
            index_hash(hash),
            |&slot| is_key(rows, ids, slot, hash, from, transaction_id),
            |slot| slot.index_hash(),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(_) => None,
            hashbrown::hash_table::Entry::Vacant(slot) => Some(Vacancy {
                slot,
                rows: &mut self.rows,
                ids: &mut self.ids,
                hash,
            }),
        }
    }

    /// Every row, whole, in log order.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = TransferRow> + '_ {
        (0..self.rows.len()).map(|at| self.row(at))
    }

    /// Rows still driven by the coordinator, whole, in log order. Reads only the packed rows
    /// of the others.
    pub(crate) fn unfinished(&self) -> impl Iterator<Item = TransferRow> + '_ {
        (0..self.rows.len())
            .filter(|&at| self.rows[at].state.is_unfinished())
            .map(|at| self.row(at))
    }

    /// Forgets the row under `key`; the last row takes its position (the id bytes stay in
    /// the arena). Only the known bug that forgets finished transfers removes rows.
    #[cfg(any(test, madsim))]
    pub(crate) fn remove(&mut self, key: &TransferKey) {
        self.finish_growth();
        let Some(at) = self.find(key) else { return };
        let last = self.rows.len() - 1;
        let hash = key_hash(key.from.as_bytes(), key.transaction_id.as_bytes());
        let found = self.index.find_entry(index_hash(hash), |s| s.at() == at);
        found.expect("a found row is indexed").remove();
        self.rows.swap_remove(at);
        if at != last {
            let moved = self.row(at).transfer.key();
            let hash = key_hash(moved.from.as_bytes(), moved.transaction_id.as_bytes());
            let slot = self
                .index
                .find_mut(index_hash(hash), |s| s.at() == last)
                .expect("every row is indexed");
            *slot = Slot::new(at as u32, hash);
        }
    }

    fn ids_of(&self, row: &PackedRow) -> &[u8] {
        let start = row.ids_at as usize;
        let len = usize::from(row.from_len) + usize::from(row.transaction_id_len);
        &self.ids[start..start + len + usize::from(row.to_len)]
    }
}

/// Whether the row of `slot` is recorded under the key of `hash`, `from` and `transaction_id`.
/// The hash in the slot rules out nearly every other key without reading the row.
#[inline]
fn is_key(
    rows: &[PackedRow],
    ids: &[u8],
    slot: Slot,
    hash: u32,
    from: &[u8],
    transaction_id: &[u8],
) -> bool {
    if slot.hash32() != hash {
        return false;
    }
    let row = &rows[slot.at()];
    if usize::from(row.from_len) != from.len()
        || usize::from(row.transaction_id_len) != transaction_id.len()
    {
        return false;
    }
    let start = row.ids_at as usize;
    let (stored_from, rest) = ids[start..].split_at(from.len());
    stored_from == from && &rest[..transaction_id.len()] == transaction_id
}

/// A checked-vacant place in the index for one key (see [`TransferTable::vacancy`]).
pub(crate) struct Vacancy<'a> {
    slot: hashbrown::hash_table::VacantEntry<'a, Slot>,
    rows: &'a mut Vec<PackedRow>,
    ids: &'a mut Vec<u8>,
    hash: u32,
}

impl Vacancy<'_> {
    /// Appends `row`, whose key must be the one this place was found for.
    pub(crate) fn fill(self, row: &TransferRow) {
        let at = u32::try_from(self.rows.len())
            .ok()
            .filter(|&at| (at as usize) < TRANSFER_ROWS_MAX)
            .expect("a partition records fewer than 2^32 transfers");
        let t = &row.transfer;
        debug_assert_eq!(
            self.hash,
            key_hash(t.from.as_bytes(), t.transaction_id.as_bytes())
        );
        let ids_at = self.ids.len() as u64;
        t.from.append_bytes_to(self.ids);
        t.transaction_id.append_bytes_to(self.ids);
        t.to.append_bytes_to(self.ids);
        self.rows.push(PackedRow {
            ids_at,
            amount: t.amount,
            accepted_at: row.accepted_at,
            decided_at: row.decided_at,
            finished_at: row.finished_at,
            state: row.state,
            from_len: t.from.as_bytes().len() as u8,
            transaction_id_len: t.transaction_id.as_bytes().len() as u8,
            to_len: t.to.as_bytes().len() as u8,
            currency: t.currency,
            remote: row.remote,
        });
        self.slot.insert(Slot::new(at, self.hash));
    }
}

impl PartialEq for TransferTable {
    /// The same rows in the same order (arena layout and index capacity aside).
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}
impl Eq for TransferTable {}

impl std::fmt::Debug for TransferTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl FromIterator<TransferRow> for TransferTable {
    /// A table of `rows` in their order.
    ///
    /// # Panics
    /// If two rows share a key (readers of stored rows check for that first).
    fn from_iter<I: IntoIterator<Item = TransferRow>>(rows: I) -> Self {
        let mut table = TransferTable::default();
        for row in rows {
            assert!(table.insert(&row), "a transfer key is recorded once");
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Currency;

    fn row(from: &str, id: &str, to: &str, minor: u64) -> TransferRow {
        TransferRow {
            transfer: Transfer {
                transaction_id: TransactionId::new(id).unwrap(),
                from: AccountId::new(from).unwrap(),
                to: AccountId::new(to).unwrap(),
                amount: Amount::from_minor(minor).unwrap(),
                currency: Currency::ALL[0],
            },
            state: TransferState::Committed,
            remote: false,
            accepted_at: minor,
            decided_at: minor,
            finished_at: minor,
        }
    }

    #[test]
    fn rows_come_back_whole_by_key_and_in_log_order() {
        let rows = [
            row("alice", "t-1", "bob", 5),
            row("bob", "t-1", "alice", 7),
            row(&"a".repeat(64), &"t".repeat(64), &"b".repeat(64), 9),
            // Same bytes, split differently between the two ids: another key.
            row("ab", "c", "x", 11),
            row("a", "bc", "x", 13),
        ];
        let table: TransferTable = rows.iter().copied().collect();
        assert_eq!(table.len(), rows.len());
        assert!(table.iter().eq(rows.iter().copied()));
        for (at, expected) in rows.iter().enumerate() {
            assert_eq!(table.find(&expected.transfer.key()), Some(at));
            assert_eq!(table.get(&expected.transfer.key()), Some(*expected));
            assert!(table.records(at, &expected.transfer));
        }
        let unknown = row("alice", "t-2", "bob", 5).transfer.key();
        assert_eq!(table.find(&unknown), None);
    }

    #[test]
    fn a_recorded_key_is_not_recorded_again_and_other_bodies_are_told_apart() {
        let first = row("alice", "t-1", "bob", 5);
        let mut table: TransferTable = [first].into_iter().collect();
        assert!(!table.insert(&row("alice", "t-1", "carol", 6)));
        assert_eq!(table.len(), 1);
        assert_eq!(table.get(&first.transfer.key()), Some(first));
        for other in [
            row("alice", "t-1", "carol", 5),
            row("alice", "t-1", "bo", 5),
            row("alice", "t-1", "bob", 6),
        ] {
            assert!(!table.records(0, &other.transfer), "{other:?}");
        }
    }

    #[test]
    fn phases_change_in_place_and_survive_growth_of_the_index() {
        let mut table = TransferTable::default();
        let count = 10_000u64;
        let mut grew = 0;
        for i in 0..count {
            let mut r = row(&format!("acct-{i}"), &format!("t-{i}"), "dst", i + 1);
            r.state = TransferState::Trying;
            assert!(table.insert(&r));
            grew += usize::from(table.growth.is_some());
            // Mid-growth, a key only the old index holds is still found and still refused.
            let earlier = row(&format!("acct-{}", i / 3), &format!("t-{}", i / 3), "x", 1);
            assert_eq!(table.find(&earlier.transfer.key()), Some(i as usize / 3));
            assert!(!table.insert(&earlier));
        }
        assert!(grew > 1000, "the index grew step by step ({grew} inserts)");
        let key = row("acct-17", "t-17", "dst", 18).transfer.key();
        let at = table.find(&key).unwrap();
        let phase = Phase {
            state: TransferState::Confirming,
            decided_at: 99,
            finished_at: 0,
        };
        table.set_phase(at, phase);
        assert_eq!(table.phase(at), phase);
        assert_eq!(table.phase(at).state, TransferState::Confirming);
        assert_eq!(table.get(&key).unwrap().decided_at, 99);
        assert_eq!(table.unfinished().count(), count as usize);
        for i in 0..count {
            let key = row(&format!("acct-{i}"), &format!("t-{i}"), "dst", 1)
                .transfer
                .key();
            assert_eq!(table.find(&key), Some(i as usize));
        }
    }

    #[test]
    fn removing_a_row_moves_the_last_into_its_place() {
        let rows = [
            row("a", "1", "x", 1),
            row("b", "2", "x", 2),
            row("c", "3", "x", 3),
        ];
        let mut table: TransferTable = rows.iter().copied().collect();
        table.remove(&rows[0].transfer.key());
        assert_eq!(table.len(), 2);
        assert_eq!(table.find(&rows[0].transfer.key()), None);
        assert_eq!(table.find(&rows[2].transfer.key()), Some(0));
        assert_eq!(table.find(&rows[1].transfer.key()), Some(1));
        assert!(table.insert(&rows[0]));
        assert_eq!(table.find(&rows[0].transfer.key()), Some(2));
    }
}
