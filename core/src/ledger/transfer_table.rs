//! The home partition's transfers table: the idempotency record and phase row of every
//! transfer that started here, in the order the log recorded them.
//!
//! It is the one table that grows by a row per transfer and is never pruned, so its layout is
//! the ledger's hottest memory. A [`TransferRow`] holds three ids of up to 64 bytes each, inline;
//! stored like that (an ordered hash map of `TransferKey → row`) every transfer wrote about 250
//! bytes into fresh memory, and writing them was a fifth of the one-partition engine's time.
//! Here a row is a fixed 48-byte record plus the ids' actual bytes, appended to one byte arena
//! (about 30 bytes for typical ids):
//!
//! - rows: one [`PackedRow`] per transfer, in log order, never moved by growth of the index,
//!   in chunks of [`CHUNK_ROWS`] ([`RowStore`]: sealed chunks are shared with snapshots);
//! - ids: the `from`, `transaction_id` and `to` bytes of each row, back to back, in arena
//!   chunks, at the row's `ids_at`;
//! - index: a [`RowIndex`] of 8-byte slots, each a row position and 32 bits of the key's
//!   hash, found by the hash and confirmed by comparing the key's bytes. It grows step by
//!   step and reads nothing but itself while it does (see its module).
//!
//! Callers see only whole [`TransferRow`]s, rebuilt on read; the ledger's hot paths ask the
//! narrower questions (`find`, `records`, `phase`) that touch just the packed row.

use std::hash::Hasher;
use std::sync::Arc;

use rustc_hash::FxHasher;

use crate::ledger::chunked::ChunkedVec;
use crate::ledger::row_index::{RowIndex, ROWS_MAX};
use crate::ledger::{TransferRow, TransferState};
use crate::model::event::{Timestamp, Transfer, TransferKey};
use crate::model::ids::{AccountId, TransactionId, ID_LEN_MAX};
use crate::model::money::{Amount, Currency};

/// Most rows one table holds (positions in the index are 32 bits). At a million transfers a
/// second this is more than an hour of one partition's traffic without pruning; a partition
/// that reaches it refuses nothing silently, it stops with an assertion (see `fill`).
pub const TRANSFER_ROWS_MAX: usize = ROWS_MAX;

/// What changes in a row after it is recorded: its phase and the times of its phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Phase {
    pub(crate) state: TransferState,
    /// When the second-phase decision was logged (0 until then).
    pub(crate) decided_at: Timestamp,
    /// When the row became final (0 until then).
    pub(crate) finished_at: Timestamp,
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

/// Rows per sealed chunk of rows: 3 MiB of them (tests and the simulator use small chunks, so
/// that their runs cross chunk edges and write chunk files).
pub const CHUNK_ROWS: usize = if cfg!(any(test, madsim, feature = "testing")) {
    64
} else {
    1 << 16
};
/// Bytes per sealed chunk of the id arena. A row's ids (at most 192 bytes) never span two.
const ARENA_CHUNK_BYTES: usize = if cfg!(any(test, madsim, feature = "testing")) {
    1024
} else {
    1 << 22
};

/// The rows ([`ChunkedVec`]) and their id bytes, in chunks: sealed ones shared (`Arc`), and
/// an open tail that takes the appends. Cloning it, which is what a snapshot does, copies
/// only the two tails and shares every sealed chunk, so the partition hands a snapshot of
/// millions of rows to another thread in a few milliseconds; a phase change in a chunk a
/// snapshot still reads copies that one chunk first (`Arc::make_mut`), so the snapshot sees
/// the rows as they were.
#[derive(Clone, Default)]
pub(crate) struct RowStore {
    rows: ChunkedVec<PackedRow, CHUNK_ROWS>,
    sealed_ids: Vec<Arc<Vec<u8>>>,
    tail_ids: Vec<u8>,
}

impl RowStore {
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    #[inline]
    fn row(&self, at: usize) -> &PackedRow {
        self.rows.get(at)
    }

    fn row_mut(&mut self, at: usize) -> &mut PackedRow {
        self.rows.get_mut(at)
    }

    /// The `from`, `transaction_id` and `to` bytes of `row`, back to back.
    #[inline]
    fn ids_of(&self, row: &PackedRow) -> &[u8] {
        let (chunk, start) = ((row.ids_at >> 32) as usize, row.ids_at as u32 as usize);
        let len = usize::from(row.from_len)
            + usize::from(row.transaction_id_len)
            + usize::from(row.to_len);
        let bytes = match self.sealed_ids.get(chunk) {
            Some(sealed) => sealed.as_slice(),
            None => self.tail_ids.as_slice(),
        };
        &bytes[start..start + len]
    }

    /// Appends `row` with the ids of `transfer`; returns its position.
    fn push(&mut self, mut row: PackedRow, transfer: &Transfer) -> usize {
        let ids_len = usize::from(row.from_len)
            + usize::from(row.transaction_id_len)
            + usize::from(row.to_len);
        // Each id is appended as its whole 64-byte padded array and then cut (see
        // `append_bytes_to`), so the chunk needs room for that much, or it would reallocate
        // to twice its size just before being sealed.
        debug_assert!(ids_len <= 3 * ID_LEN_MAX);
        if self.tail_ids.len() + 3 * ID_LEN_MAX > ARENA_CHUNK_BYTES {
            let sealed =
                std::mem::replace(&mut self.tail_ids, Vec::with_capacity(ARENA_CHUNK_BYTES));
            self.sealed_ids.push(Arc::new(sealed));
        }
        if self.tail_ids.capacity() == 0 {
            self.tail_ids.reserve_exact(ARENA_CHUNK_BYTES);
        }
        row.ids_at = (self.sealed_ids.len() as u64) << 32 | self.tail_ids.len() as u64;
        transfer.from.append_bytes_to(&mut self.tail_ids);
        transfer.transaction_id.append_bytes_to(&mut self.tail_ids);
        transfer.to.append_bytes_to(&mut self.tail_ids);
        self.rows.push(row)
    }

    /// The rows at positions `range`, as borrowed fields.
    pub(crate) fn views_of(
        &self,
        range: std::ops::Range<usize>,
    ) -> impl ExactSizeIterator<Item = RowView<'_>> + '_ {
        assert!(range.end <= self.len());
        range.map(|at| self.view(at))
    }

    /// Sealed chunks, counted from chunk `first`, whose rows are all final: rows that can
    /// never change again, which a snapshot may store once and refer to ever after. Stops at
    /// the first chunk with a row still in flight.
    pub(crate) fn final_chunks_from(&self, first: usize) -> usize {
        self.rows
            .sealed()
            .iter()
            .skip(first)
            .take_while(|chunk| chunk.iter().all(|row| !row.state.is_unfinished()))
            .count()
    }

    /// The row at `at` as borrowed fields.
    fn view(&self, at: usize) -> RowView<'_> {
        let row = self.row(at);
        let ids = self.ids_of(row);
        let (from, rest) = ids.split_at(usize::from(row.from_len));
        let (transaction_id, to) = rest.split_at(usize::from(row.transaction_id_len));
        RowView {
            transaction_id,
            from,
            to,
            amount: row.amount,
            currency: row.currency,
            state: row.state,
            remote: row.remote,
            accepted_at: row.accepted_at,
            decided_at: row.decided_at,
            finished_at: row.finished_at,
        }
    }
}

/// See the module documentation.
#[derive(Clone, Default)]
pub(crate) struct TransferTable {
    index: RowIndex,
    store: RowStore,
}

impl TransferTable {
    pub(crate) fn len(&self) -> usize {
        self.store.len()
    }

    /// See [`RowStore::final_chunks_from`].
    pub(crate) fn final_chunks_from(&self, first: usize) -> usize {
        self.store.final_chunks_from(first)
    }

    /// The rows as they are now, detached from the table: later changes to the table do not
    /// show in it (see [`RowStore`]).
    pub(crate) fn freeze(&self) -> RowStore {
        self.store.clone()
    }

    /// The position of the row recorded under `key`.
    #[inline]
    pub(crate) fn find(&self, key: &TransferKey) -> Option<usize> {
        let (from, transaction_id) = (key.from.as_bytes(), key.transaction_id.as_bytes());
        let hash = key_hash(from, transaction_id);
        self.index
            .find(hash, |at| is_key(&self.store, at, from, transaction_id))
    }

    /// Reads the index slot that a lookup of `key` starts from, so that the lookup finds it
    /// in cache (see `Ledger::prefetch`).
    pub(crate) fn prefetch(&self, key: &TransferKey) {
        let hash = key_hash(key.from.as_bytes(), key.transaction_id.as_bytes());
        self.index.touch(hash);
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
        self.store.view(at).to_row()
    }

    pub(crate) fn phase(&self, at: usize) -> Phase {
        let row = self.store.row(at);
        Phase {
            state: row.state,
            decided_at: row.decided_at,
            finished_at: row.finished_at,
        }
    }

    pub(crate) fn set_phase(&mut self, at: usize, phase: Phase) {
        let row = self.store.row_mut(at);
        row.state = phase.state;
        row.decided_at = phase.decided_at;
        row.finished_at = phase.finished_at;
    }

    /// The amount and currency of the row at `at`: what finishing its hold needs.
    pub(crate) fn money(&self, at: usize) -> (Amount, Currency) {
        let row = self.store.row(at);
        (row.amount, row.currency)
    }

    /// Whether `transfer`, whose key the row at `at` is recorded under, is the transfer the
    /// row records (a retry) rather than another body under the same key (a conflict).
    pub(crate) fn records(&self, at: usize, transfer: &Transfer) -> bool {
        let row = self.store.row(at);
        debug_assert!(self.row(at).transfer.key() == transfer.key());
        let ids = self.store.ids_of(row);
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

    /// The place for a row under `key`, if none is recorded yet: the key is hashed once for
    /// both the check and, filled, the insert (the ledger's hottest path).
    pub(crate) fn vacancy(&mut self, key: &TransferKey) -> Option<Vacancy<'_>> {
        let (from, transaction_id) = (key.from.as_bytes(), key.transaction_id.as_bytes());
        let hash = key_hash(from, transaction_id);
        if self
            .index
            .find(hash, |at| is_key(&self.store, at, from, transaction_id))
            .is_some()
        {
            return None;
        }
        Some(Vacancy { table: self, hash })
    }

    /// Every row, whole, in log order.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = TransferRow> + '_ {
        (0..self.len()).map(|at| self.row(at))
    }

    /// Rows still driven by the coordinator, whole, in log order. Reads only the packed rows
    /// of the others.
    pub(crate) fn unfinished(&self) -> impl Iterator<Item = TransferRow> + '_ {
        (0..self.len())
            .filter(|&at| self.store.row(at).state.is_unfinished())
            .map(|at| self.row(at))
    }

    /// Forgets the row under `key`; the last row takes its position (the id bytes stay in
    /// the arena) and the index is rebuilt. Only the known bug that forgets finished
    /// transfers removes rows, in tests and the simulator.
    #[cfg(any(test, madsim, feature = "testing"))]
    pub(crate) fn remove(&mut self, key: &TransferKey) {
        let Some(at) = self.find(key) else { return };
        let mut rows: Vec<TransferRow> = self.iter().collect();
        rows.swap_remove(at);
        *self = rows.into_iter().collect();
    }
}

/// Whether the row at `at` is recorded under the key of `from` and `transaction_id`.
#[inline]
fn is_key(store: &RowStore, at: usize, from: &[u8], transaction_id: &[u8]) -> bool {
    let row = store.row(at);
    if usize::from(row.from_len) != from.len()
        || usize::from(row.transaction_id_len) != transaction_id.len()
    {
        return false;
    }
    let (stored_from, rest) = store.ids_of(row).split_at(from.len());
    stored_from == from && &rest[..transaction_id.len()] == transaction_id
}

/// A row's fields with its ids borrowed from the table (see [`TransferTable::views`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowView<'a> {
    pub(crate) transaction_id: &'a [u8],
    pub(crate) from: &'a [u8],
    pub(crate) to: &'a [u8],
    pub(crate) amount: Amount,
    pub(crate) currency: Currency,
    pub(crate) state: TransferState,
    pub(crate) remote: bool,
    pub(crate) accepted_at: Timestamp,
    pub(crate) decided_at: Timestamp,
    pub(crate) finished_at: Timestamp,
}

impl RowView<'_> {
    /// The row whole, its ids copied back inline.
    fn to_row(self) -> TransferRow {
        TransferRow {
            transfer: Transfer {
                transaction_id: TransactionId::from_stored(self.transaction_id),
                from: AccountId::from_stored(self.from),
                to: AccountId::from_stored(self.to),
                amount: self.amount,
                currency: self.currency,
            },
            state: self.state,
            remote: self.remote,
            accepted_at: self.accepted_at,
            decided_at: self.decided_at,
            finished_at: self.finished_at,
        }
    }
}

/// A checked-vacant place in the index for one key (see [`TransferTable::vacancy`]).
pub(crate) struct Vacancy<'a> {
    table: &'a mut TransferTable,
    hash: u32,
}

impl Vacancy<'_> {
    /// Appends `row`, whose key must be the one this place was found for.
    pub(crate) fn fill(self, row: &TransferRow) {
        let TransferTable { index, store } = self.table;
        assert!(
            store.len() < TRANSFER_ROWS_MAX,
            "a partition records fewer than 2^32 - 1 transfers"
        );
        let t = &row.transfer;
        debug_assert_eq!(
            self.hash,
            key_hash(t.from.as_bytes(), t.transaction_id.as_bytes())
        );
        let packed = PackedRow {
            ids_at: 0,
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
        };
        let at = store.push(packed, t);
        index.insert(self.hash, at);
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
    use crate::model::money::Currency;

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
        for i in 0..count {
            let mut r = row(&format!("acct-{i}"), &format!("t-{i}"), "dst", i + 1);
            r.state = TransferState::Trying;
            assert!(table.insert(&r));
            // Rows indexed long ago (their slots may be in a growing index's old half) are
            // still found, and their keys still refused.
            let earlier = row(&format!("acct-{}", i / 3), &format!("t-{}", i / 3), "x", 1);
            assert_eq!(table.find(&earlier.transfer.key()), Some(i as usize / 3));
            assert!(!table.insert(&earlier));
        }
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
    fn a_frozen_copy_keeps_the_rows_as_they_were() {
        let mut table = TransferTable::default();
        let trying = |i: usize| {
            let mut r = row(&format!("acct-{i}"), &format!("t-{i}"), "dst", i as u64 + 1);
            r.state = TransferState::Trying;
            r
        };
        // Several sealed chunks of rows and of ids, and an open tail of each.
        let count = 10 * CHUNK_ROWS + 5;
        for i in 0..count {
            assert!(table.insert(&trying(i)));
        }
        assert!(table.store.rows.sealed().len() >= 10 && table.store.sealed_ids.len() > 1);
        // Arena chunks are sealed before an append could make them reallocate.
        let capacities = table.store.sealed_ids.iter().map(|c| c.capacity());
        assert!(capacities.max() == Some(ARENA_CHUNK_BYTES));
        let frozen = table.freeze();
        let before: Vec<_> = table.iter().collect();
        // Change rows in a sealed chunk and in the tail, and append more.
        let done = Phase {
            state: TransferState::Committed,
            decided_at: 7,
            finished_at: 7,
        };
        for at in [0, CHUNK_ROWS + 1, count - 1] {
            table.set_phase(at, done);
        }
        for i in count..count + CHUNK_ROWS {
            assert!(table.insert(&trying(i)));
        }
        assert_eq!(frozen.len(), count);
        for (view, row) in frozen.views_of(0..count).zip(&before) {
            assert_eq!(view.state, TransferState::Trying);
            assert_eq!(view.from, row.transfer.from.as_bytes());
            assert_eq!(view.transaction_id, row.transfer.transaction_id.as_bytes());
            assert_eq!(view.to, row.transfer.to.as_bytes());
            assert_eq!(view.amount, row.transfer.amount);
        }
        assert_eq!(table.phase(CHUNK_ROWS + 1), done);
        assert_eq!(table.phase(CHUNK_ROWS + 2).state, TransferState::Trying);
        assert_eq!(
            table.get(&trying(count + 3).transfer.key()),
            Some(trying(count + 3))
        );
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
