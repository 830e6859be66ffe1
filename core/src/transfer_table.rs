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
//! - `rows`: one [`PackedRow`] per transfer, in log order, never moved by growth of the index;
//! - `ids`: the `from`, `transaction_id` and `to` bytes of each row, back to back, at the
//!   row's `ids_at`;
//! - `index`: a [`RowIndex`] of 8-byte slots, each a row position and 32 bits of the key's
//!   hash, found by the hash and confirmed by comparing the key's bytes. It grows step by
//!   step and reads nothing but itself while it does (see its module).
//!
//! Callers see only whole [`TransferRow`]s, rebuilt on read; the ledger's hot paths ask the
//! narrower questions (`find`, `records`, `state`) that touch just the packed row.

use std::hash::Hasher;

use rustc_hash::FxHasher;

use crate::event::{Timestamp, Transfer, TransferKey};
use crate::ids::{AccountId, TransactionId};
use crate::ledger::{TransferRow, TransferState};
use crate::money::{Amount, Currency};
use crate::row_index::{RowIndex, ROWS_MAX};

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

/// See the module documentation.
#[derive(Clone, Default)]
pub(crate) struct TransferTable {
    index: RowIndex,
    rows: Vec<PackedRow>,
    ids: Vec<u8>,
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
        let (rows, ids) = (&self.rows, &self.ids);
        self.index
            .find(hash, |at| is_key(rows, ids, at, from, transaction_id))
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

    /// The place for a row under `key`, if none is recorded yet: the key is hashed once for
    /// both the check and, filled, the insert (the ledger's hottest path).
    pub(crate) fn vacancy(&mut self, key: &TransferKey) -> Option<Vacancy<'_>> {
        let (from, transaction_id) = (key.from.as_bytes(), key.transaction_id.as_bytes());
        let hash = key_hash(from, transaction_id);
        let (rows, ids) = (&self.rows, &self.ids);
        if self
            .index
            .find(hash, |at| is_key(rows, ids, at, from, transaction_id))
            .is_some()
        {
            return None;
        }
        Some(Vacancy { table: self, hash })
    }

    /// Every row as borrowed fields, in log order: what encoders read without rebuilding
    /// three inline ids per row (a snapshot holds millions of rows).
    pub(crate) fn views(&self) -> impl ExactSizeIterator<Item = RowView<'_>> + '_ {
        self.rows.iter().map(|row| {
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
        })
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
    /// the arena) and the index is rebuilt. Only the known bug that forgets finished
    /// transfers removes rows, in tests and the simulator.
    #[cfg(any(test, madsim))]
    pub(crate) fn remove(&mut self, key: &TransferKey) {
        let Some(at) = self.find(key) else { return };
        self.rows.swap_remove(at);
        self.index = RowIndex::default();
        for at in 0..self.rows.len() {
            let key = self.row(at).transfer.key();
            let hash = key_hash(key.from.as_bytes(), key.transaction_id.as_bytes());
            self.index.insert(hash, at);
        }
    }

    fn ids_of(&self, row: &PackedRow) -> &[u8] {
        let start = row.ids_at as usize;
        let len = usize::from(row.from_len) + usize::from(row.transaction_id_len);
        &self.ids[start..start + len + usize::from(row.to_len)]
    }
}

/// Whether the row at `at` is recorded under the key of `from` and `transaction_id`.
#[inline]
fn is_key(rows: &[PackedRow], ids: &[u8], at: usize, from: &[u8], transaction_id: &[u8]) -> bool {
    let row = &rows[at];
    if usize::from(row.from_len) != from.len()
        || usize::from(row.transaction_id_len) != transaction_id.len()
    {
        return false;
    }
    let start = row.ids_at as usize;
    let (stored_from, rest) = ids[start..].split_at(from.len());
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

/// A checked-vacant place in the index for one key (see [`TransferTable::vacancy`]).
pub(crate) struct Vacancy<'a> {
    table: &'a mut TransferTable,
    hash: u32,
}

impl Vacancy<'_> {
    /// Appends `row`, whose key must be the one this place was found for.
    pub(crate) fn fill(self, row: &TransferRow) {
        let TransferTable { index, rows, ids } = self.table;
        let at = rows.len();
        assert!(
            at < TRANSFER_ROWS_MAX,
            "a partition records fewer than 2^32 - 1 transfers"
        );
        let t = &row.transfer;
        debug_assert_eq!(
            self.hash,
            key_hash(t.from.as_bytes(), t.transaction_id.as_bytes())
        );
        let ids_at = ids.len() as u64;
        t.from.append_bytes_to(ids);
        t.transaction_id.append_bytes_to(ids);
        t.to.append_bytes_to(ids);
        rows.push(PackedRow {
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
