//! The partition's transfers table: the idempotency record and phase row of every transfer,
//! hold and multi-leg transaction that started here (its *home row*, with its terms for a
//! hold or a transaction, see [`crate::ledger::row_terms`]), the barrier row of every
//! transfer that came in from another partition (its *credit row*: tried, confirmed,
//! cancelled, or try-not-seen), and this partition's *part* of every transaction another
//! partition is home of, in the order the log recorded them.
//!
//! # One table for every kind of row
//! A key has at most one row on a partition: a transfer's or transaction's home is its
//! source's partition, credit rows and parts are only kept on others (the ledger refuses a
//! credit phase for a source of its own, and a part of a transaction homed here), and a home
//! records a key once, whatever it records. So every kind shares one index, one run of
//! positions and one way to disk: final rows of any kind go to chunk files and leave memory
//! ([`crate::ledger::cold`]). The credit rows were a table of their own, in memory for good:
//! on the server's default of 8 partitions seven transfers in eight leave one, and that
//! table was most of what a partition's memory grew by per transfer; the same went for the
//! parts of multi-leg transactions, four or five per 4-leg transaction. Lookups say which
//! kind they want: [`find`] and [`lookup`] see home rows only, [`find_credit`] and
//! [`credit_lookup`] credit rows only, [`find_part`] and [`part`] parts only.
//!
//! [`find`]: TransferTable::find
//! [`lookup`]: TransferTable::lookup
//! [`find_credit`]: TransferTable::find_credit
//! [`credit_lookup`]: TransferTable::credit_lookup
//! [`find_part`]: TransferTable::find_part
//! [`part`]: TransferTable::part
//!
//! # Layout
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
//!
//! Rows do not stay in memory forever: once a chunk of them is durable in a chunk file, the
//! table drops it ([`TransferTable::drop_chunk`]) and finds its rows on disk
//! ([`crate::ledger::cold`]). Positions stay those of the whole table; the rows in memory
//! (*hot*) are those from [`TransferTable::hot_from`] on, and the index forgets the others.
//!
//! # Rows in flight move on
//! Only a chunk whose rows are all final goes to disk, and chunks leave memory in order. A
//! row that stays in flight for long would keep its chunk, and every chunk after it, in
//! memory: a hold may be held for 30 days, and a credit stays tried as long as its hold, or
//! as long as its home is down. So when a chunk falls [`MOVE_AFTER_CHUNKS`] chunks behind the
//! table's end (the insert that fills the chunk that many after it), each row of it still in
//! flight moves to the end: a copy is appended, and its old position becomes
//! [`RowState::Moved`], a position without a row. The chunk is then final, and memory holds
//! about [`MOVE_AFTER_CHUNKS`] chunks plus the rows still in flight, however long they stay.
//!
//! A chunk with more than an eighth of its rows in flight (a destination down, say) does not
//! move them: it stays in memory until they end, as before (see [`MOVE_IN_FLIGHT_MAX`]).
//!
//! The move is part of the fold: it depends only on the rows inserted, so a table replayed
//! from the log, restored from a snapshot, or kept by another replica moves the same rows to
//! the same positions. A move costs a row's copy once per [`MOVE_AFTER_CHUNKS`] chunks of
//! traffic (half a million rows), and only for rows still in flight then.

use std::sync::Arc;

use crate::ledger::chunked::ChunkedVec;
use crate::ledger::cold::{filter_hash, ChunkRead, ColdChunk, ColdError, ColdRows};
use crate::ledger::id_arena::{IdArena, IdsAt};
use crate::ledger::row_index::{RowIndex, ROWS_MAX};
use crate::ledger::row_terms::{RowTerms, TermsColumn};
use crate::ledger::transactions::{PartRow, PartState};
use crate::ledger::{CreditRow, CreditState, TableRow, TransferRow, TransferState};
use crate::log::chunk_file::disk_key_hash;
use crate::model::event::{Timestamp, Transfer, TransferKey};
use crate::model::ids::{AccountId, TransactionId};
use crate::model::money::{Amount, Currency};
use crate::model::partition::PartitionId;

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

/// A row's state: the phase of a transfer at its home, or of a credit at its destination;
/// or a position whose row moved on to the table's end (see "Rows in flight move on").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowState {
    Home(TransferState),
    Credit(CreditState),
    /// A participant's part of a transaction another partition is home of: tried (its
    /// nets held here) or final; the rest of it is the row's terms ([`RowTerms::Part`]).
    Part {
        tried: bool,
    },
    /// No row: the row recorded here was still in flight [`MOVE_AFTER_CHUNKS`] chunks later
    /// and moved to the end. The position keeps no key (its id lengths are 0), so neither
    /// the index nor a chunk file finds anything here.
    Moved,
}

impl RowState {
    /// Whether the row may still change: a transfer the coordinator still drives or a hold
    /// still held ([`TransferState::is_unfinished`]), or a credit neither confirmed nor
    /// cancelled. Only final rows go to chunk files.
    #[inline]
    pub(crate) fn is_unfinished(self) -> bool {
        match self {
            RowState::Home(state) => state.is_unfinished(),
            RowState::Credit(state) => state == CreditState::Tried,
            RowState::Part { tried } => tried,
            RowState::Moved => false,
        }
    }
}

/// How many chunks behind the table's end a chunk is when its rows still in flight move on
/// to the end: half the default in-memory budget (8 chunks of its 16; 2 of 4 in tests, and 1
/// in the simulator, where 64 rows pass a partition in a few seconds: its holds, held for up
/// to 3 s, then move on in every run). Half, so that once the table is over its
/// budget half of it is final and a snapshot takes it to disk (see the partition machine's
/// `over_budget`), a long hold or not: memory stays within the budget and a chunk.
pub const MOVE_AFTER_CHUNKS: usize = if cfg!(madsim) {
    1
} else if cfg!(any(test, feature = "testing")) {
    2
} else {
    8
};

/// Most rows in flight a chunk may hold for them to move on: a chunk with more stays in
/// memory until they end. Moving more would not shrink memory (the rows in flight are then
/// most of it, wherever they are), only copy them again and again: with every row of the
/// table in flight (a destination down for long), each chunk moved would fill the next
/// chunk to move, without end. At an eighth, the rows moves append fill a chunk only after
/// eight chunks moved, so a chain of moves ends, and moves add at most an eighth to the rows
/// recorded.
const MOVE_IN_FLIGHT_MAX: usize = CHUNK_ROWS / 8;

/// Most moves of pending credits kept for the destination's watch between two takes (see
/// [`TransferTable::take_moved_credits`]); a table whose watch does not take them (a
/// follower's) keeps no more. Past it a move is not reported, and the watch looks at the
/// moved credit as a new one: it asks about it later, never wrongly.
const MOVED_CREDITS_MAX: usize = 1 << 17;

/// What a credit row without a Try ([`CreditState::TryNotSeen`]) keeps as its amount: never
/// read, as such a row has no transfer (its `to` is empty).
const NO_AMOUNT: Amount = match Amount::from_minor(1) {
    Some(amount) => amount,
    None => unreachable!(),
};

/// One row without its ids, which live in the arena at `ids_at`.
///
/// A credit row uses the same layout: its Try's `to`, amount and currency (none for a
/// credit without a Try: `to` empty, the amount [`NO_AMOUNT`]), no timestamps, and
/// `remote` false.
#[derive(Debug, Clone, Copy)]
struct PackedRow {
    /// Offset of the row's id bytes in the arena: `from`, then `transaction_id`, then `to`.
    ids_at: IdsAt,
    amount: Amount,
    accepted_at: Timestamp,
    // A `Phase`, flat: as a struct its padding would make the row 64 bytes.
    decided_at: Timestamp,
    finished_at: Timestamp,
    state: RowState,
    from_len: u8,
    transaction_id_len: u8,
    to_len: u8,
    currency: Currency,
    remote: bool,
}

impl PackedRow {
    /// A position whose row moved on: no ids, no money, no times.
    const fn moved() -> PackedRow {
        PackedRow {
            ids_at: 0,
            amount: NO_AMOUNT,
            accepted_at: 0,
            decided_at: 0,
            finished_at: 0,
            state: RowState::Moved,
            from_len: 0,
            transaction_id_len: 0,
            to_len: 0,
            currency: Currency::ALL[0],
            remote: false,
        }
    }
}

// Offset, amount and three timestamps take 40 bytes; the state 2 (a home or a credit state:
// the second in the niche of the first), three lengths, the currency and `remote` 5 more:
// 47, padded to 48 by the 8-byte alignment. The bound is that exact size, so a field that
// grows the row fails the build.
const _: () = assert!(std::mem::size_of::<PackedRow>() <= 48);

/// The 32-bit hash a key is indexed by in memory: its on-disk hash
/// ([`crate::log::chunk_file::disk_key_hash`], which the cold rows' Bloom filter tests),
/// spread. A lookup hashes the key's bytes once for the index and the Bloom filter both.
#[inline]
pub(crate) fn key_hash(from: &[u8], transaction_id: &[u8]) -> u32 {
    index_hash_of(disk_key_hash(from, transaction_id))
}

/// [`key_hash`] of the key whose on-disk hash is `disk`. The index takes a key's home slot
/// from the low bits, which CRC32C leaves linear in the key's bits; two multiply-xorshift
/// rounds (Wellons' `lowbias32`) spread every bit over them. A bijection, so keys with
/// different on-disk hashes keep different index hashes.
#[inline]
fn index_hash_of(disk: u32) -> u32 {
    let mut h = disk;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^ (h >> 16)
}

/// Rows per sealed chunk of rows: 3 MiB of them (tests and the simulator use small chunks, so
/// that their runs cross chunk edges and write chunk files).
pub const CHUNK_ROWS: usize = if cfg!(any(test, madsim, feature = "testing")) {
    64
} else {
    1 << 16
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
    ids: IdArena,
    /// The terms of the rows that carry some (holds', transactions', refunds', parts'), by
    /// position.
    terms: TermsColumn,
}

impl RowStore {
    /// An empty store whose first row will be at `chunks * CHUNK_ROWS`.
    fn starting_after(chunks: usize) -> RowStore {
        RowStore {
            rows: ChunkedVec::starting_after(chunks),
            terms: TermsColumn::starting_after(chunks),
            ..RowStore::default()
        }
    }

    /// The first position still held.
    pub(crate) fn first(&self) -> usize {
        self.rows.dropped() * CHUNK_ROWS
    }

    /// Drops rows `..chunks * CHUNK_ROWS` (sealed chunks) and the arena chunks only they used.
    fn drop_front(&mut self, chunks: usize) {
        self.rows.drop_front(chunks);
        self.terms.drop_front(chunks);
        // Rows take their ids from the arena in order: what the first row left uses, and
        // what follows it, stays.
        if self.first() < self.len() {
            self.ids.drop_before(self.row(self.first()).ids_at);
        } else {
            self.ids.drop_sealed();
        }
    }

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
        let len = usize::from(row.from_len)
            + usize::from(row.transaction_id_len)
            + usize::from(row.to_len);
        self.ids.bytes(row.ids_at, len)
    }

    /// Appends `row` with the ids of `key` and `to` (none for a credit without a Try);
    /// returns its position.
    fn push(&mut self, mut row: PackedRow, key: &TransferKey, to: Option<&AccountId>) -> usize {
        row.ids_at = self.ids.push(3, |out| {
            key.from.append_bytes_to(out);
            key.transaction_id.append_bytes_to(out);
            if let Some(to) = to {
                to.append_bytes_to(out);
            }
        });
        self.rows.push(row)
    }

    /// Appends `row` with `ids`, its id bytes as [`Self::ids_of`] gives them; returns its
    /// position.
    fn push_ids(&mut self, mut row: PackedRow, ids: &[u8]) -> usize {
        row.ids_at = self.ids.push(3, |out| out.extend_from_slice(ids));
        self.rows.push(row)
    }

    /// The rows at positions `range`, as borrowed fields.
    pub(crate) fn views_of(
        &self,
        range: std::ops::Range<usize>,
    ) -> impl ExactSizeIterator<Item = RowView<'_>> + '_ {
        assert!(self.first() <= range.start && range.end <= self.len());
        range.map(|at| self.view(at))
    }

    /// Sealed chunks, counted from chunk `first`, whose rows are all final: rows that can
    /// never change again, which a snapshot may store once and refer to ever after. Stops at
    /// the first chunk with a row still in flight. Dropped chunks were final.
    pub(crate) fn final_chunks_from(&self, first: usize) -> usize {
        let dropped = self.rows.dropped();
        let held = self
            .rows
            .sealed()
            .iter()
            .skip(first.saturating_sub(dropped))
            .take_while(|chunk| chunk.iter().all(|row| !row.state.is_unfinished()))
            .count();
        dropped.saturating_sub(first) + held
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
            terms: self.terms.get(at),
        }
    }
}

/// A home row found by its key: in memory at a position, or read back from disk whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    Hot(usize),
    /// A row on disk only, with its terms; always final. Boxed: a whole row is 240 bytes,
    /// and every lookup returns a `Found` by value, a retry of an old transfer being the
    /// rare case.
    Cold(Box<(TransferRow, Option<RowTerms>)>),
}

/// A row of either kind found by its key.
enum AnyFound {
    Hot(usize),
    Cold(StoredRow),
}

/// A row as chunk files and snapshots store it: the row, and its terms if it has some.
pub(crate) type StoredRow = (TableRow, Option<RowTerms>);

/// A credit row found by its key (see [`TransferTable::credit_lookup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Credit {
    Hot(usize),
    /// A credit row on disk only; always final (confirmed, cancelled or try-not-seen).
    Cold(CreditRow),
}

/// See the module documentation.
#[derive(Clone, Default)]
pub(crate) struct TransferTable {
    /// The hot rows' keys (slots of dropped rows leave it over the inserts after a drop).
    index: RowIndex,
    store: RowStore,
    cold: ColdRows,
    /// `(from, to)` positions of the pending credits moved on since the last
    /// [`TransferTable::take_moved_credits`], at most [`MOVED_CREDITS_MAX`].
    moved_credits: Vec<(usize, usize)>,
}

impl TransferTable {
    /// Rows ever recorded, in memory or not.
    pub(crate) fn len(&self) -> usize {
        self.store.len()
    }

    /// The first position in memory: rows before it are on disk only.
    pub(crate) fn hot_from(&self) -> usize {
        self.store.first()
    }

    /// Chunks on disk only.
    pub(crate) fn cold_chunks(&self) -> usize {
        self.cold.chunks()
    }

    /// Gives the table the chunk files of `partition`, where it finds the rows it drops.
    pub(crate) fn attach(&mut self, partition: PartitionId, reader: Arc<dyn ChunkRead>) {
        self.cold.attach(partition, reader);
    }

    /// Bytes of memory the table's structures take, roughly: rows, id arena, index, filter.
    pub(crate) fn bytes(&self) -> usize {
        let rows = (self.len() - self.hot_from()) * std::mem::size_of::<PackedRow>();
        rows + self.store.ids.bytes_held()
            + self.store.terms.bytes()
            + self.index.bytes()
            + self.cold.bytes()
    }

    /// Drops the rows of `cold`'s chunk from memory: its chunk file is durable. Chunks leave
    /// in order; a table given no chunk files, or given a chunk out of turn (a partition
    /// restored with an old unindexed chunk file before it), keeps the rows, which is correct,
    /// only larger. Returns whether the rows left.
    pub(crate) fn drop_chunk(&mut self, cold: ColdChunk) -> bool {
        let chunk = cold.chunk;
        if !self.cold.has_reader() || chunk != self.cold.chunks() {
            return false;
        }
        debug_assert_eq!(self.store.rows.dropped(), chunk);
        assert!(
            !self.store.rows.sealed().is_empty(),
            "only sealed chunks leave memory"
        );
        debug_assert!(self
            .store
            .views_of(chunk * CHUNK_ROWS..(chunk + 1) * CHUNK_ROWS)
            .filter(|row| row.state != RowState::Moved)
            .zip(&cold.filter_hashes)
            .all(|(row, &hash)| !row.state.is_unfinished()
                && hash == filter_hash(row.from, row.transaction_id)));
        self.cold
            .push(cold.index, &cold.filter_hashes, &cold.key_hashes);
        self.store.drop_front(chunk + 1);
        // One forgetting at a time, and only once the dropped rows' slots are at least as
        // many as the kept rows' (the index then shrinks by half or more): while one lasts,
        // every new key misses in two indexes and every insert moves old slots, so one per
        // chunk dropped kept the index moving much of the time. Slots left behind go with
        // a later one, and until then lookups refuse their positions (see `find_hot`).
        let kept = self.len() - self.hot_from();
        if !self.index.is_moving() && self.index.slots_used() >= 2 * kept {
            self.index.forget_below(self.hot_from(), kept);
        }
        true
    }

    /// See [`ColdRows::bloom_build`].
    pub(crate) fn bloom_build(&mut self) -> Option<crate::ledger::cold::BloomBuild> {
        self.cold.bloom_build()
    }

    /// See [`ColdRows::take_bloom_build`].
    pub(crate) fn take_bloom_build(&mut self, ended: bool) {
        self.cold.take_bloom_build(ended);
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

    /// The position of the home row recorded under `key`, if it is in memory.
    #[inline]
    pub(crate) fn find(&self, key: &TransferKey) -> Option<usize> {
        self.find_any(key).filter(|&at| self.is_home(at))
    }

    /// The position of the credit row of `key`, if it is in memory.
    #[inline]
    pub(crate) fn find_credit(&self, key: &TransferKey) -> Option<usize> {
        self.find_any(key).filter(|&at| self.is_credit(at))
    }

    #[inline]
    fn is_home(&self, at: usize) -> bool {
        matches!(self.store.row(at).state, RowState::Home(_))
    }

    #[inline]
    fn is_credit(&self, at: usize) -> bool {
        matches!(self.store.row(at).state, RowState::Credit(_))
    }

    /// The position of this partition's part of the transaction `key`, if it is in memory.
    #[inline]
    pub(crate) fn find_part(&self, key: &TransferKey) -> Option<usize> {
        self.find_any(key)
            .filter(|&at| matches!(self.store.row(at).state, RowState::Part { .. }))
    }

    /// This partition's part of the transaction `key`: in memory, or read back from disk
    /// (then final). A home or credit row under `key` is no part.
    pub(crate) fn part(&self, key: &TransferKey) -> Result<Option<PartRow>, ColdError> {
        Ok(match self.lookup_any(key)? {
            Some(AnyFound::Hot(at)) => self.part_at(at).cloned(),
            Some(AnyFound::Cold((TableRow::Part { .. }, Some(RowTerms::Part(row))))) => Some(row),
            Some(AnyFound::Cold(_)) | None => None,
        })
    }

    /// The part at position `at`, if the row there is one (and so in memory).
    pub(crate) fn part_at(&self, at: usize) -> Option<&PartRow> {
        if !matches!(self.store.row(at).state, RowState::Part { .. }) {
            return None;
        }
        self.terms(at).and_then(RowTerms::part)
    }

    /// Records this partition's part `row` of the transaction `key`, or returns `false` and
    /// changes nothing if the key is already recorded: in memory, or with `check_disk` on
    /// disk (see [`Self::vacancy`]).
    pub(crate) fn insert_part(
        &mut self,
        key: &TransferKey,
        row: PartRow,
        check_disk: bool,
    ) -> Result<bool, ColdError> {
        let Some(vacancy) = self.vacancy(key, check_disk)? else {
            return Ok(false);
        };
        let at = vacancy.fill_part(key, row.state == PartState::Tried);
        self.store.terms.insert(at, RowTerms::Part(row));
        Ok(true)
    }

    /// Moves the part at `at`, tried, on to `state` (confirmed or cancelled).
    pub(crate) fn finish_part(&mut self, at: usize, state: PartState) {
        debug_assert!(state != PartState::Tried);
        let row = self.store.row_mut(at);
        assert_eq!(
            row.state,
            RowState::Part { tried: true },
            "a tried part ends"
        );
        row.state = RowState::Part { tried: false };
        let Some(RowTerms::Part(part)) = self.store.terms.get_mut(at) else {
            unreachable!("a part has its terms");
        };
        part.state = state;
    }

    /// The parts still tried, in log order (never on disk: they are unfinished).
    pub(crate) fn tried_parts(&self) -> impl Iterator<Item = &PartRow> + '_ {
        (self.hot_from()..self.len())
            .filter(|&at| self.store.row(at).state == RowState::Part { tried: true })
            .filter_map(|at| self.terms(at).and_then(RowTerms::part))
    }

    /// The position of the row of either kind recorded under `key`, if it is in memory.
    #[inline]
    fn find_any(&self, key: &TransferKey) -> Option<usize> {
        let (from, transaction_id) = (key.from.as_bytes(), key.transaction_id.as_bytes());
        let hash = key_hash(from, transaction_id);
        find_hot(&self.index, &self.store, hash, from, transaction_id)
    }

    /// The home row recorded under `key`: in memory, or read from its chunk file. The cold
    /// filter is asked only when the key is not in memory. A credit row under `key` is no
    /// home row: a key whose source is on this partition has none (the ledger refuses
    /// such credits).
    pub(crate) fn lookup(&self, key: &TransferKey) -> Result<Option<Found>, ColdError> {
        Ok(match self.lookup_any(key)? {
            Some(AnyFound::Hot(at)) => self.is_home(at).then_some(Found::Hot(at)),
            Some(AnyFound::Cold((row, terms))) => {
                row.home().map(|row| Found::Cold(Box::new((row, terms))))
            }
            None => None,
        })
    }

    /// The row of either kind recorded under `key`, in memory or on disk.
    fn lookup_any(&self, key: &TransferKey) -> Result<Option<AnyFound>, ColdError> {
        let (from, transaction_id) = (key.from.as_bytes(), key.transaction_id.as_bytes());
        let disk = disk_key_hash(from, transaction_id);
        let hot = find_hot(
            &self.index,
            &self.store,
            index_hash_of(disk),
            from,
            transaction_id,
        );
        if let Some(at) = hot {
            return Ok(Some(AnyFound::Hot(at)));
        }
        Ok(self.cold_row(key, disk)?.map(AnyFound::Cold))
    }

    /// The row of `key`, whose on-disk hash is `disk`, if it is on disk only.
    fn cold_row(&self, key: &TransferKey, disk: u32) -> Result<Option<StoredRow>, ColdError> {
        if self.cold.chunks() == 0 {
            return Ok(None);
        }
        self.cold.get(key, disk)
    }

    /// Reads the index slot that a lookup of `key` starts from, and the cold rows' Bloom
    /// filter line, so that the lookup finds them in cache (see `Ledger::prefetch`).
    #[inline]
    pub(crate) fn prefetch(&self, key: &TransferKey) {
        let disk = disk_key_hash(key.from.as_bytes(), key.transaction_id.as_bytes());
        self.index.touch(index_hash_of(disk));
        if self.cold.chunks() > 0 {
            self.cold.prefetch(disk);
        }
    }

    /// The home row recorded under `key`, whole.
    pub(crate) fn get(&self, key: &TransferKey) -> Result<Option<TransferRow>, ColdError> {
        Ok(match self.lookup(key)? {
            Some(Found::Hot(at)) => Some(self.row(at)),
            Some(Found::Cold(row)) => Some(row.0),
            None => None,
        })
    }

    /// The terms of the home row recorded under `key`, in memory or on disk; none for a
    /// row without terms or no row.
    pub(crate) fn terms_of(&self, key: &TransferKey) -> Result<Option<RowTerms>, ColdError> {
        Ok(match self.lookup(key)? {
            Some(Found::Hot(at)) => self.terms(at).cloned(),
            Some(Found::Cold(row)) => row.1,
            None => None,
        })
    }

    /// The terms of the row at `at`, in memory, if it has some.
    #[inline]
    pub(crate) fn terms(&self, at: usize) -> Option<&RowTerms> {
        self.store.terms.get(at)
    }

    /// Gives the home row of `key`, in memory, its `terms` from a table of their own (a
    /// snapshot of before version 10); returns its position. Refuses a key without a home
    /// row in memory, or whose row has terms already.
    pub(crate) fn give_stored_terms(
        &mut self,
        key: &TransferKey,
        terms: RowTerms,
    ) -> Result<usize, String> {
        let at = (self.find(key)).ok_or_else(|| format!("terms of {key:?}, which has no row"))?;
        if self.terms(at).is_some() {
            return Err(format!("{key:?} has terms twice"));
        }
        self.set_terms(at, terms);
        Ok(at)
    }

    /// The terms of the row at `at` to change, if it has some.
    pub(crate) fn terms_mut(&mut self, at: usize) -> Option<&mut RowTerms> {
        self.store.terms.get_mut(at)
    }

    /// Gives the home row at `at`, in memory, its terms.
    ///
    /// # Panics
    /// If the row has terms already.
    pub(crate) fn set_terms(&mut self, at: usize, terms: RowTerms) {
        debug_assert!(self.is_home(at), "terms are a home row's");
        self.store.terms.insert(at, terms);
    }

    /// The home row at position `at` (positions are log order), whole.
    ///
    /// # Panics
    /// If the row at `at` is a credit row.
    pub(crate) fn row(&self, at: usize) -> TransferRow {
        let row = self.store.view(at).to_row();
        row.home()
            .unwrap_or_else(|| panic!("row {at} is a credit row, not a home row: {row:?}"))
    }

    /// The phase of the home row at `at`.
    ///
    /// # Panics
    /// If the row at `at` is a credit row.
    pub(crate) fn phase(&self, at: usize) -> Phase {
        let row = self.store.row(at);
        let RowState::Home(state) = row.state else {
            panic!("row {at} is a credit row, not a home row");
        };
        Phase {
            state,
            decided_at: row.decided_at,
            finished_at: row.finished_at,
        }
    }

    pub(crate) fn set_phase(&mut self, at: usize, phase: Phase) {
        let row = self.store.row_mut(at);
        debug_assert!(matches!(row.state, RowState::Home(_)));
        row.state = RowState::Home(phase.state);
        row.decided_at = phase.decided_at;
        row.finished_at = phase.finished_at;
    }

    /// The credit row of `key`: in memory at a position, or read back from disk (then final).
    /// A home row under `key` is no credit row (see [`TableRow`]).
    pub(crate) fn credit_lookup(&self, key: &TransferKey) -> Result<Option<Credit>, ColdError> {
        Ok(match self.lookup_any(key)? {
            Some(AnyFound::Hot(at)) => self.is_credit(at).then_some(Credit::Hot(at)),
            Some(AnyFound::Cold((row, _))) => row.credit().map(|(_, row)| Credit::Cold(row)),
            None => None,
        })
    }

    /// The credit row of `key`, whole, in memory or read from disk.
    pub(crate) fn credit(&self, key: &TransferKey) -> Result<Option<CreditRow>, ColdError> {
        Ok(match self.credit_lookup(key)? {
            Some(Credit::Hot(at)) => self.credit_at(at).map(|(_, row)| row),
            Some(Credit::Cold(row)) => Some(row),
            None => None,
        })
    }

    /// The key and credit row at position `at`, if it is in memory and a credit row.
    pub(crate) fn credit_at(&self, at: usize) -> Option<(TransferKey, CreditRow)> {
        if at < self.hot_from() || at >= self.len() || !self.is_credit(at) {
            return None;
        }
        self.store.view(at).to_row().credit()
    }

    /// The transfer of the pending credit at position `at`, if the row there is one (and so
    /// in memory). Reads only the packed row of any other.
    pub(crate) fn pending_credit_at(&self, at: usize) -> Option<Transfer> {
        if at < self.hot_from() || at >= self.len() {
            return None;
        }
        if self.store.row(at).state != RowState::Credit(CreditState::Tried) {
            return None;
        }
        self.credit_at(at)?.1.transfer
    }

    /// The state of the credit row at `at` and the amount its Try brought (none without a
    /// Try), without rebuilding its ids.
    ///
    /// # Panics
    /// If the row at `at` is a home row.
    pub(crate) fn credit_state(&self, at: usize) -> (CreditState, Option<Amount>) {
        let row = self.store.row(at);
        let RowState::Credit(state) = row.state else {
            panic!("row {at} is a home row, not a credit row");
        };
        (
            state,
            (state != CreditState::TryNotSeen).then_some(row.amount),
        )
    }

    /// Destination, amount and currency of the pending credit at `at`: what its Confirm or
    /// Cancel moves. `None` unless the row is a credit's, tried and neither confirmed nor
    /// cancelled.
    pub(crate) fn pending_credit(&self, at: usize) -> Option<(AccountId, Amount, Currency)> {
        let row = self.store.row(at);
        if row.state != RowState::Credit(CreditState::Tried) {
            return None;
        }
        let view = self.store.view(at);
        Some((AccountId::from_stored(view.to), row.amount, row.currency))
    }

    /// Amount and currency of every pending credit. Pending rows are never on disk only.
    pub(crate) fn pending_credits(&self) -> impl Iterator<Item = (Amount, Currency)> + '_ {
        (self.hot_from()..self.len())
            .map(|at| self.store.row(at))
            .filter(|row| row.state == RowState::Credit(CreditState::Tried))
            .map(|row| (row.amount, row.currency))
    }

    /// The transfer of every pending credit, in log order.
    pub(crate) fn pending_credit_transfers(&self) -> impl Iterator<Item = Transfer> + '_ {
        (self.hot_from()..self.len()).filter_map(|at| self.pending_credit_at(at))
    }

    /// Moves the pending credit at `at` on to `state` (confirmed or cancelled).
    pub(crate) fn finish_credit(&mut self, at: usize, state: CreditState) {
        let row = self.store.row_mut(at);
        debug_assert_eq!(row.state, RowState::Credit(CreditState::Tried));
        row.state = RowState::Credit(state);
    }

    /// Confirms the pending credit at `at` for `amount` of it (a hold captured in part): the
    /// row keeps the amount that arrived, what a refund of it may give back.
    pub(crate) fn capture_credit(&mut self, at: usize, amount: Amount) {
        let row = self.store.row_mut(at);
        debug_assert!(row.state == RowState::Credit(CreditState::Tried) && amount <= row.amount);
        row.amount = amount;
        row.state = RowState::Credit(CreditState::Confirmed);
    }

    /// Records the credit row `row` under `key`, or returns `false` and changes nothing if
    /// the key is already recorded (in memory or on disk).
    pub(crate) fn insert_credit(
        &mut self,
        key: &TransferKey,
        row: &CreditRow,
    ) -> Result<bool, ColdError> {
        Ok(match self.vacancy(key, true)? {
            Some(vacancy) => {
                vacancy.fill_credit(key, row);
                true
            }
            None => false,
        })
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
        debug_assert!(matches!(row.state, RowState::Home(_)));
        debug_assert!(self.row(at).transfer.key() == transfer.key());
        let ids = self.store.ids_of(row);
        let to_at = usize::from(row.from_len) + usize::from(row.transaction_id_len);
        row.amount == transfer.amount
            && row.currency == transfer.currency
            && &ids[to_at..] == transfer.to.as_bytes()
    }

    /// Records `row` of either kind under its key, or returns `false` and changes nothing
    /// if the key is already recorded.
    pub(crate) fn insert_row(&mut self, row: &TableRow) -> Result<bool, ColdError> {
        match row {
            TableRow::Home(row) => self.insert(row),
            TableRow::Credit(key, row) => self.insert_credit(key, row),
            TableRow::Part { .. } => panic!("a part is recorded with its terms (insert_part)"),
        }
    }

    /// Appends the next position of a stored table (a snapshot's, a chunk file's): `row`
    /// of either kind with its terms, or (`None`) a position whose row moved on. Returns
    /// `false` and changes nothing if the row's key is already recorded.
    ///
    /// Moves nothing: the moves the table made are in what it stored (the positions left
    /// behind and the rows at the end). Moving here would decide again, by the rows' states
    /// as stored, what was decided by their states when each chunk filled: a chunk with more
    /// than [`MOVE_IN_FLIGHT_MAX`] rows in flight then moved none, and with some of them
    /// final since, a restore moved the rest, so its positions differed from the table's.
    pub(crate) fn restore(&mut self, position: Option<StoredRow>) -> Result<bool, ColdError> {
        let Some((row, terms)) = position else {
            self.store.push_ids(PackedRow::moved(), &[]);
            return Ok(true);
        };
        let Some(vacancy) = self.vacancy(&row.key(), true)? else {
            return Ok(false);
        };
        let vacancy = Vacancy {
            moves: false,
            ..vacancy
        };
        match (row, terms) {
            (TableRow::Home(row), terms) => {
                let at = vacancy.fill(&row);
                if let Some(terms) = terms {
                    self.set_terms(at, terms);
                }
            }
            (TableRow::Credit(key, row), None) => {
                vacancy.fill_credit(&key, &row);
            }
            (TableRow::Part { key, tried }, Some(terms @ RowTerms::Part(_))) => {
                let at = vacancy.fill_part(&key, tried);
                self.store.terms.insert(at, terms);
            }
            _ => unreachable!("decoders give terms to home rows and parts, a part's to parts"),
        }
        Ok(true)
    }

    /// Records the home row `row` under its transfer's key, or returns `false` and changes
    /// nothing if the key is already recorded.
    pub(crate) fn insert(&mut self, row: &TransferRow) -> Result<bool, ColdError> {
        Ok(match self.vacancy(&row.transfer.key(), true)? {
            Some(vacancy) => {
                vacancy.fill(row);
                true
            }
            None => false,
        })
    }

    /// The place for a row under `key`, if none is recorded yet: the key is hashed once for
    /// both the check and, filled, the insert (the ledger's hottest path). With
    /// `check_disk`, a key on disk only is recorded too: the cold filter is asked, and the
    /// disk read only if it names a chunk. Without, the caller has just looked the key up
    /// ([`Self::lookup`]) and found it nowhere.
    pub(crate) fn vacancy(
        &mut self,
        key: &TransferKey,
        check_disk: bool,
    ) -> Result<Option<Vacancy<'_>>, ColdError> {
        let (from, transaction_id) = (key.from.as_bytes(), key.transaction_id.as_bytes());
        let disk = disk_key_hash(from, transaction_id);
        let hash = index_hash_of(disk);
        if find_hot(&self.index, &self.store, hash, from, transaction_id).is_some()
            || (check_disk && self.cold_row(key, disk)?.is_some())
        {
            return Ok(None);
        }
        Ok(Some(Vacancy {
            table: self,
            hash,
            moves: true,
        }))
    }

    /// Every row, whole, in log order: those on disk read from their chunk files.
    ///
    /// # Panics
    /// If a chunk file of cold rows cannot be read: this is for tools and checks, which
    /// cannot go on without every row (the partition's own paths use [`Self::lookup`]).
    pub(crate) fn iter(&self) -> impl Iterator<Item = TableRow> + '_ {
        self.iter_stored().map(|(row, _)| row)
    }

    /// Every row with its terms, in log order, as [`Self::iter`].
    pub(crate) fn iter_stored(&self) -> impl Iterator<Item = StoredRow> + '_ {
        let cold = (0..self.cold.chunks()).flat_map(move |chunk| {
            self.cold
                .rows_of(chunk)
                .unwrap_or_else(|error| panic!("cold chunk {chunk} unreadable: {error}"))
        });
        let hot = (self.hot_from()..self.len())
            .filter_map(|at| Some((self.hot_row(at)?, self.terms(at).cloned())));
        cold.chain(hot)
    }

    /// The row at hot position `at`, whole; none where a row moved on.
    fn hot_row(&self, at: usize) -> Option<TableRow> {
        let view = self.store.view(at);
        (view.state != RowState::Moved).then(|| view.to_row())
    }

    /// Takes the moves of pending credits made since the last call, `(from, to)` positions
    /// in the order they were made (see "Rows in flight move on"): the destination's watch
    /// follows its credits with them ([`crate::protocol::credit_watch`]).
    pub(crate) fn take_moved_credits(&mut self) -> Vec<(usize, usize)> {
        std::mem::take(&mut self.moved_credits)
    }

    /// The chunk whose rows in flight move on now that the last insert made the table as long
    /// as it is: if that insert filled a chunk, the one [`MOVE_AFTER_CHUNKS`] before it.
    fn chunk_to_move(&self) -> Option<usize> {
        let len = self.len();
        if len % CHUNK_ROWS != 0 {
            return None;
        }
        (len / CHUNK_ROWS).checked_sub(MOVE_AFTER_CHUNKS + 1)
    }

    /// Moves each row still in flight of the chunk that fell [`MOVE_AFTER_CHUNKS`] behind
    /// the end to the end (see "Rows in flight move on"). A move appends a row, which may
    /// fill a chunk in turn: the chunk that one puts behind is taken next.
    fn move_rows_in_flight(&mut self) {
        let Some(first) = self.chunk_to_move() else {
            return;
        };
        let mut chunks = std::collections::VecDeque::from([first]);
        while let Some(chunk) = chunks.pop_front() {
            // A chunk that left memory was final.
            let end = (chunk + 1) * CHUNK_ROWS;
            let start = (chunk * CHUNK_ROWS).max(self.hot_from());
            if start >= end {
                continue;
            }
            let in_flight: Vec<usize> = (start..end)
                .filter(|&at| self.store.row(at).state.is_unfinished())
                .take(MOVE_IN_FLIGHT_MAX + 1)
                .collect();
            if in_flight.len() > MOVE_IN_FLIGHT_MAX {
                continue;
            }
            for at in in_flight {
                self.move_to_end(at);
                chunks.extend(self.chunk_to_move());
            }
            debug_assert!(self
                .store
                .views_of(start..end)
                .all(|row| !row.state.is_unfinished()));
        }
    }

    /// Moves the row at `at`, in flight, to the end, and leaves its position without a row.
    fn move_to_end(&mut self, at: usize) {
        let row = *self.store.row(at);
        debug_assert!(row.state.is_unfinished());
        let ids = self.store.ids_of(&row).to_vec();
        let (from, rest) = ids.split_at(usize::from(row.from_len));
        let hash = key_hash(from, &rest[..usize::from(row.transaction_id_len)]);
        assert!(
            self.len() < TRANSFER_ROWS_MAX,
            "a partition records fewer than 2^32 - 1 transfers"
        );
        let to = self.store.push_ids(row, &ids);
        self.index.insert(hash, to);
        if let Some(terms) = self.store.terms.remove(at) {
            self.store.terms.insert(to, terms);
        }
        // The old position's index slot stays until the index forgets it; with no key there,
        // a lookup passes it by.
        *self.store.row_mut(at) = PackedRow {
            // Rows take their ids from the arena in order, and what the first row in memory
            // left uses stays (see `RowStore::drop_front`): the position keeps the offset.
            ids_at: row.ids_at,
            ..PackedRow::moved()
        };
        let credit = row.state == RowState::Credit(CreditState::Tried);
        if credit && self.moved_credits.len() < MOVED_CREDITS_MAX {
            self.moved_credits.push((at, to));
        }
    }

    /// Home rows still driven by the coordinator or held, whole, with their terms, in log
    /// order. Reads only the packed rows of the others (and never the cold ones, which are
    /// final).
    pub(crate) fn unfinished(&self) -> impl Iterator<Item = (TransferRow, Option<&RowTerms>)> + '_ {
        (self.hot_from()..self.len())
            .filter(|&at| {
                let state = self.store.row(at).state;
                matches!(state, RowState::Home(_)) && state.is_unfinished()
            })
            .map(|at| (self.row(at), self.terms(at)))
    }

    /// Forgets the row under `key`, if it is in memory; the last row takes its position (the
    /// id bytes stay in the arena) and the rows in memory are indexed again. Only the known
    /// bug that forgets finished transfers removes rows, in tests and the simulator.
    #[cfg(any(test, madsim, feature = "testing"))]
    pub(crate) fn remove(&mut self, key: &TransferKey) {
        if self.find_any(key).is_none() {
            return;
        }
        let first = self.hot_from();
        let mut rows: Vec<StoredRow> = (first..self.len())
            .filter_map(|at| Some((self.hot_row(at)?, self.terms(at).cloned())))
            .collect();
        let removed = rows.iter().position(|(row, _)| row.key() == *key);
        rows.swap_remove(removed.expect("the row found is in memory"));
        let mut table = TransferTable {
            index: RowIndex::default(),
            store: RowStore::starting_after(self.cold.chunks()),
            cold: self.cold.clone(),
            moved_credits: Vec::new(),
        };
        for row in rows {
            let inserted = table.restore(Some(row));
            assert!(
                inserted.is_ok_and(|inserted| inserted),
                "a kept row's key is free"
            );
        }
        *self = table;
    }

    /// A table that starts with `cold` chunks on disk only, its rows to come from position
    /// `cold.chunks() * CHUNK_ROWS` (what a snapshot with indexed chunk files restores).
    pub(crate) fn with_cold(cold: ColdRows) -> TransferTable {
        TransferTable {
            index: RowIndex::default(),
            store: RowStore::starting_after(cold.chunks()),
            cold,
            moved_credits: Vec::new(),
        }
    }
}

/// The hot row of the key of `from` and `transaction_id`, whose index hash is `hash`. Slots
/// of dropped rows may linger in the index: positions before the first row held are not
/// rows.
#[inline]
fn find_hot(
    index: &RowIndex,
    store: &RowStore,
    hash: u32,
    from: &[u8],
    transaction_id: &[u8],
) -> Option<usize> {
    let first = store.first();
    index.find(hash, |at| {
        at >= first && is_key(store, at, from, transaction_id)
    })
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

/// A row's fields with its ids borrowed from the table (see [`RowStore::views_of`]). A
/// credit row has no timestamps and is not `remote`; one without a Try has an empty `to`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowView<'a> {
    pub(crate) transaction_id: &'a [u8],
    pub(crate) from: &'a [u8],
    pub(crate) to: &'a [u8],
    pub(crate) amount: Amount,
    pub(crate) currency: Currency,
    pub(crate) state: RowState,
    pub(crate) remote: bool,
    pub(crate) accepted_at: Timestamp,
    pub(crate) decided_at: Timestamp,
    pub(crate) finished_at: Timestamp,
    /// The row's terms, if it has some (a hold's).
    pub(crate) terms: Option<&'a RowTerms>,
}

impl RowView<'_> {
    /// The row whole, its ids copied back inline.
    pub(crate) fn to_row(self) -> TableRow {
        let key = TransferKey {
            from: AccountId::from_stored(self.from),
            transaction_id: TransactionId::from_stored(self.transaction_id),
        };
        let transfer = || Transfer {
            transaction_id: key.transaction_id,
            from: key.from,
            to: AccountId::from_stored(self.to),
            amount: self.amount,
            currency: self.currency,
        };
        match self.state {
            RowState::Home(state) => TableRow::Home(TransferRow {
                transfer: transfer(),
                state,
                remote: self.remote,
                accepted_at: self.accepted_at,
                decided_at: self.decided_at,
                finished_at: self.finished_at,
            }),
            RowState::Credit(state) => TableRow::Credit(
                key,
                CreditRow {
                    state,
                    transfer: (state != CreditState::TryNotSeen).then(transfer),
                },
            ),
            RowState::Part { tried } => TableRow::Part { key, tried },
            RowState::Moved => panic!("a position whose row moved on has no row"),
        }
    }
}

/// A checked-vacant place in the index for one key (see [`TransferTable::vacancy`]).
pub(crate) struct Vacancy<'a> {
    table: &'a mut TransferTable,
    hash: u32,
    /// Whether filling a chunk moves the rows still in flight of the one behind (not when
    /// restoring, see [`TransferTable::restore`]).
    moves: bool,
}

impl Vacancy<'_> {
    /// Appends the home row `row`, whose key must be the one this place was found for;
    /// returns its position.
    pub(crate) fn fill(self, row: &TransferRow) -> usize {
        let t = &row.transfer;
        let packed = PackedRow {
            ids_at: 0,
            amount: t.amount,
            accepted_at: row.accepted_at,
            decided_at: row.decided_at,
            finished_at: row.finished_at,
            state: RowState::Home(row.state),
            from_len: t.from.as_bytes().len() as u8,
            transaction_id_len: t.transaction_id.as_bytes().len() as u8,
            to_len: t.to.as_bytes().len() as u8,
            currency: t.currency,
            remote: row.remote,
        };
        self.push(packed, &t.key(), Some(&t.to))
    }

    /// Appends the credit row `row` of `key`, the key this place was found for; returns its
    /// position.
    pub(crate) fn fill_credit(self, key: &TransferKey, row: &CreditRow) -> usize {
        debug_assert_eq!(row.transfer.is_none(), row.state == CreditState::TryNotSeen);
        debug_assert!(row.transfer.is_none_or(|t| t.key() == *key));
        let to = row.transfer.map(|t| t.to);
        let packed = PackedRow {
            ids_at: 0,
            amount: row.transfer.map_or(NO_AMOUNT, |t| t.amount),
            accepted_at: 0,
            decided_at: 0,
            finished_at: 0,
            state: RowState::Credit(row.state),
            from_len: key.from.as_bytes().len() as u8,
            transaction_id_len: key.transaction_id.as_bytes().len() as u8,
            to_len: to.map_or(0, |to| to.as_bytes().len() as u8),
            currency: row.transfer.map_or(Currency::ALL[0], |t| t.currency),
            remote: false,
        };
        self.push(packed, key, to.as_ref())
    }

    /// Appends a part of `key`, the key this place was found for, `tried` or final; returns
    /// its position. Its terms are the caller's to give.
    pub(crate) fn fill_part(self, key: &TransferKey, tried: bool) -> usize {
        let packed = PackedRow {
            ids_at: 0,
            amount: NO_AMOUNT,
            accepted_at: 0,
            decided_at: 0,
            finished_at: 0,
            state: RowState::Part { tried },
            from_len: key.from.as_bytes().len() as u8,
            transaction_id_len: key.transaction_id.as_bytes().len() as u8,
            to_len: 0,
            currency: Currency::ALL[0],
            remote: false,
        };
        self.push(packed, key, None)
    }

    fn push(self, packed: PackedRow, key: &TransferKey, to: Option<&AccountId>) -> usize {
        let table = self.table;
        assert!(
            table.len() < TRANSFER_ROWS_MAX,
            "a partition records fewer than 2^32 - 1 transfers"
        );
        debug_assert_eq!(
            self.hash,
            key_hash(key.from.as_bytes(), key.transaction_id.as_bytes())
        );
        let at = table.store.push(packed, key, to);
        table.index.insert(self.hash, at);
        // Only the insert that fills a chunk may move rows: tested here, on every insert's
        // path, so that the others pay one comparison.
        if table.len() % CHUNK_ROWS == 0 && self.moves {
            table.move_rows_in_flight();
        }
        at
    }
}

impl PartialEq for TransferTable {
    /// The same rows under the same keys, in whatever order (arena layout and index
    /// capacity aside): a table restored from a snapshot of before version 8 holds its
    /// credit rows after its home rows, one replayed from the log holds them in log order.
    ///
    /// # Panics
    /// If a chunk file of cold rows cannot be read (tests and checks only).
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self.iter_stored().all(|row| {
                let found = match other.lookup_any(&row.0.key()) {
                    Ok(Some(AnyFound::Hot(at))) => {
                        Some((other.store.view(at).to_row(), other.terms(at).cloned()))
                    }
                    Ok(Some(AnyFound::Cold(row))) => Some(row),
                    Ok(None) => None,
                    Err(error) => panic!("cold rows unreadable: {error}"),
                };
                found == Some(row)
            })
    }
}
impl Eq for TransferTable {}

impl std::fmt::Debug for TransferTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter_stored()).finish()
    }
}

impl FromIterator<TransferRow> for TransferTable {
    /// A table of the home rows `rows` in their order.
    ///
    /// # Panics
    /// If two rows share a key (readers of stored rows check for that first).
    fn from_iter<I: IntoIterator<Item = TransferRow>>(rows: I) -> Self {
        rows.into_iter().map(TableRow::Home).collect()
    }
}

impl FromIterator<TableRow> for TransferTable {
    /// A table of `rows` in their order.
    ///
    /// # Panics
    /// If two rows share a key (readers of stored rows check for that first).
    fn from_iter<I: IntoIterator<Item = TableRow>>(rows: I) -> Self {
        let mut table = TransferTable::default();
        for row in rows {
            let inserted = table.insert_row(&row);
            assert_eq!(inserted, Ok(true), "a transfer key is recorded once");
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::cold::TestChunks;
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
        assert!(table.iter().eq(rows.iter().copied().map(TableRow::Home)));
        for (at, expected) in rows.iter().enumerate() {
            assert_eq!(table.find(&expected.transfer.key()), Some(at));
            assert_eq!(table.get(&expected.transfer.key()), Ok(Some(*expected)));
            assert!(table.records(at, &expected.transfer));
        }
        let unknown = row("alice", "t-2", "bob", 5).transfer.key();
        assert_eq!(table.find(&unknown), None);
    }

    #[test]
    fn a_recorded_key_is_not_recorded_again_and_other_bodies_are_told_apart() {
        let first = row("alice", "t-1", "bob", 5);
        let mut table: TransferTable = [first].into_iter().collect();
        assert_eq!(table.insert(&row("alice", "t-1", "carol", 6)), Ok(false));
        assert_eq!(table.len(), 1);
        assert_eq!(table.get(&first.transfer.key()), Ok(Some(first)));
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
            assert_eq!(table.insert(&r), Ok(true));
            // Rows indexed long ago (their slots may be in a growing index's old half) are
            // still found, and their keys still refused.
            let earlier = row(&format!("acct-{}", i / 3), &format!("t-{}", i / 3), "x", 1);
            assert_eq!(table.find(&earlier.transfer.key()), Some(i as usize / 3));
            assert_eq!(table.insert(&earlier), Ok(false));
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
        assert_eq!(table.get(&key).unwrap().unwrap().decided_at, 99);
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
            assert_eq!(table.insert(&trying(i)), Ok(true));
        }
        assert!(table.store.rows.sealed().len() >= 10 && table.store.ids.sealed_chunks() > 1);
        // Arena chunks are sealed before an append could make them reallocate.
        let capacities = table.store.ids.sealed_capacities();
        assert!(capacities.max() == Some(crate::ledger::id_arena::ARENA_CHUNK_BYTES));
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
            assert_eq!(table.insert(&trying(i)), Ok(true));
        }
        assert_eq!(frozen.len(), count);
        for (view, row) in frozen.views_of(0..count).zip(&before) {
            let row = row.home().unwrap();
            assert_eq!(view.state, RowState::Home(TransferState::Trying));
            assert_eq!(view.from, row.transfer.from.as_bytes());
            assert_eq!(view.transaction_id, row.transfer.transaction_id.as_bytes());
            assert_eq!(view.to, row.transfer.to.as_bytes());
            assert_eq!(view.amount, row.transfer.amount);
        }
        assert_eq!(table.phase(CHUNK_ROWS + 1), done);
        assert_eq!(table.phase(CHUNK_ROWS + 2).state, TransferState::Trying);
        assert_eq!(
            table.get(&trying(count + 3).transfer.key()),
            Ok(Some(trying(count + 3)))
        );
    }

    /// A table of `chunks` chunks of final rows and a few more, those chunks written to
    /// chunk files that `files` holds; and what the table keeps of each once it drops it.
    #[allow(clippy::type_complexity)]
    fn table_with_chunk_files(
        chunks: usize,
    ) -> (
        TransferTable,
        Vec<TransferRow>,
        Arc<TestChunks>,
        Vec<ColdChunk>,
    ) {
        let rows: Vec<TransferRow> = (0..chunks * CHUNK_ROWS + 7)
            .map(|i| {
                row(
                    &format!("acct-{}", i % 37),
                    &format!("t-{i}"),
                    "dst",
                    i as u64 + 1,
                )
            })
            .collect();
        let mut table: TransferTable = rows.iter().copied().collect();
        let files = Arc::new(TestChunks::default());
        let store = table.freeze();
        let mut cold = Vec::new();
        for chunk in 0..chunks {
            let encoded = crate::log::chunk_file::encode_chunk(3, chunk, &store);
            files
                .files
                .lock()
                .unwrap()
                .insert(chunk as u64, encoded.bytes);
            cold.push(ColdChunk {
                chunk,
                index: encoded.index,
                filter_hashes: encoded.filter_hashes,
                key_hashes: encoded.key_hashes,
            });
        }
        table.attach(3, files.clone());
        (table, rows, files, cold)
    }

    /// Drops `chunk` as a partition does, then runs the Bloom filter's build it asks for
    /// as the next snapshot would, and swaps it in.
    fn drop_and_grow(table: &mut TransferTable, chunk: ColdChunk) -> bool {
        let dropped = table.drop_chunk(chunk);
        if let Some(build) = table.bloom_build() {
            build.run();
            table.take_bloom_build(true);
        }
        dropped
    }

    #[test]
    fn no_cold_key_is_missed_while_the_bloom_filter_grows_and_is_swapped() {
        let chunks = 24;
        let (mut table, rows, _files, cold) = table_with_chunk_files(chunks);
        let all_found = |table: &TransferTable, cold_chunks: usize| {
            rows[..cold_chunks * CHUNK_ROWS].iter().all(|row| {
                table.lookup(&row.transfer.key()) == Ok(Some(Found::Cold(Box::new((*row, None)))))
            })
        };
        let mut out = None;
        let mut swaps = 0;
        for (at, chunk) in cold.into_iter().enumerate() {
            let before = table.cold.bloom_capacity();
            assert!(table.drop_chunk(chunk));
            assert!(all_found(&table, at + 1), "after dropping chunk {at}");
            // A build is handed out, runs while more chunks go cold, and is swapped in
            // later; one handed out whose run never came is handed out again.
            match at % 3 {
                0 => out = table.bloom_build().or(out),
                1 => {
                    if let Some(build) = out.take() {
                        build.run();
                    }
                }
                _ => table.take_bloom_build(true),
            }
            swaps += usize::from(before > 0 && table.cold.bloom_capacity() > before);
            assert!(
                all_found(&table, at + 1),
                "after the build's step at chunk {at}"
            );
        }
        assert!(swaps >= 2, "{swaps} swaps");
    }

    #[test]
    fn dropped_rows_are_found_on_disk_and_their_keys_stay_recorded() {
        let (mut table, rows, files, cold) = table_with_chunk_files(8);
        let bytes_before = table.bytes();
        let mut cold = cold.into_iter();
        // Out of turn, a chunk stays.
        let first = cold.next().unwrap();
        let second = cold.next().unwrap();
        assert!(!drop_and_grow(&mut table, second));
        assert!(drop_and_grow(&mut table, first));
        let second = table_with_chunk_files(8).3.into_iter().nth(1).unwrap();
        assert!(drop_and_grow(&mut table, second));
        for chunk in cold.take(4) {
            assert!(drop_and_grow(&mut table, chunk));
        }
        assert_eq!((table.cold_chunks(), table.hot_from()), (6, 6 * CHUNK_ROWS));
        assert!(table.bytes() < bytes_before);
        for (at, expected) in rows.iter().enumerate() {
            let key = expected.transfer.key();
            let found = table.lookup(&key).unwrap();
            if at < 6 * CHUNK_ROWS {
                assert_eq!(
                    found,
                    Some(Found::Cold(Box::new((*expected, None)))),
                    "row {at}"
                );
                assert_eq!(table.find(&key), None);
            } else {
                assert_eq!(found, Some(Found::Hot(at)), "row {at}");
            }
            assert_eq!(table.insert(expected), Ok(false), "row {at} recorded once");
        }
        // Keys never seen: no row, and mostly no read (the Bloom filter in front of the
        // filter lets about 1 in 200 through, which then reads a bucket).
        let reads = files.reads.load(std::sync::atomic::Ordering::Relaxed);
        let strangers = 1000;
        for i in 0..strangers {
            let key = row("acct-1", &format!("new-{i}"), "dst", 1).transfer.key();
            assert_eq!(table.lookup(&key), Ok(None));
        }
        let read = files.reads.load(std::sync::atomic::Ordering::Relaxed) - reads;
        assert!(
            read < strangers / 20,
            "{read} reads for {strangers} new keys"
        );
        // Every row still comes back in log order, and new rows take the next positions.
        assert!(table.iter().eq(rows.iter().copied().map(TableRow::Home)));
        let new = row("acct-1", "new", "dst", 1);
        assert_eq!(table.insert(&new), Ok(true));
        assert_eq!(table.find(&new.transfer.key()), Some(rows.len()));
        assert_eq!(table.unfinished().count(), 0);
        assert_eq!(table.final_chunks_from(0), 8);
        assert_eq!(table.final_chunks_from(7), 1);
    }

    #[test]
    fn a_restored_table_keeps_the_positions_of_the_one_it_was_taken_from() {
        // Chunk 0 holds more rows in flight than move on when chunk `MOVE_AFTER_CHUNKS`
        // fills, so none moves then; some end later. A restore that decided the moves again
        // by the states it restores moved the rest on, and its positions differed from the
        // table's (the simulator's replay check, seed 3067).
        let mut table = TransferTable::default();
        let in_flight = MOVE_IN_FLIGHT_MAX + 1;
        for i in 0..CHUNK_ROWS {
            let mut r = row("src", &format!("a-{i}"), "dst", 1);
            if i < in_flight {
                r.state = TransferState::Trying;
                r.finished_at = 0;
            }
            assert_eq!(table.insert(&r), Ok(true));
        }
        for i in 0..MOVE_AFTER_CHUNKS * CHUNK_ROWS + 1 {
            assert_eq!(
                table.insert(&row("src", &format!("b-{i}"), "dst", 1)),
                Ok(true)
            );
        }
        assert_eq!(
            table.len(),
            (MOVE_AFTER_CHUNKS + 1) * CHUNK_ROWS + 1,
            "nothing moved"
        );
        for at in 0..2 {
            let mut phase = table.phase(at);
            phase.state = TransferState::Committed;
            table.set_phase(at, phase);
        }
        let mut restored = TransferTable::default();
        for at in 0..table.len() {
            let position = table.hot_row(at).map(|row| (row, None));
            assert_eq!(restored.restore(position), Ok(true));
        }
        assert_eq!(restored.len(), table.len());
        assert!(restored == table);
        for at in 0..table.len() {
            assert_eq!(restored.hot_row(at), table.hot_row(at), "position {at}");
        }
        // Both go on alike: the next chunk to fill moves what is in flight then.
        for i in 0..CHUNK_ROWS {
            let r = row("src", &format!("c-{i}"), "dst", 1);
            assert_eq!(table.insert(&r), Ok(true));
            assert_eq!(restored.insert(&r), Ok(true));
        }
        assert_eq!(restored.len(), table.len());
        assert!(restored == table);
    }

    /// The credit row of the `i`-th transfer in: every state, one without a Try among them.
    fn credit(i: usize, state: CreditState) -> (TransferKey, CreditRow) {
        let t = row(
            &format!("far-{}", i % 5),
            &format!("c-{i}"),
            "here",
            i as u64 + 1,
        );
        let transfer = (state != CreditState::TryNotSeen).then_some(t.transfer);
        (t.transfer.key(), CreditRow { state, transfer })
    }

    /// Writes chunk `chunk` of `table` to `files` and drops it from memory.
    fn write_and_drop(table: &mut TransferTable, files: &TestChunks, chunk: usize) -> bool {
        let encoded = crate::log::chunk_file::encode_chunk(3, chunk, &table.freeze());
        files
            .files
            .lock()
            .unwrap()
            .insert(chunk as u64, encoded.bytes);
        drop_and_grow(
            table,
            ColdChunk {
                chunk,
                index: encoded.index,
                filter_hashes: encoded.filter_hashes,
                key_hashes: encoded.key_hashes,
            },
        )
    }

    #[test]
    fn rows_in_flight_move_on_and_never_keep_their_chunk_in_memory() {
        let mut held = row("alice", "hold-1", "bob", 7);
        held.state = TransferState::Held;
        let (credit_key, credit_row) = credit(0, CreditState::Tried);
        let mut table = TransferTable::default();
        let files = Arc::new(TestChunks::default());
        table.attach(3, files.clone());
        assert_eq!(table.insert(&held), Ok(true));
        assert_eq!(table.insert_credit(&credit_key, &credit_row), Ok(true));
        let fill = |table: &mut TransferTable, rows: usize, tag: &str| {
            for i in 0..rows {
                let final_row = row("carol", &format!("{tag}-{i}"), "dan", 1);
                assert_eq!(table.insert(&final_row), Ok(true));
            }
        };
        // Until the chunk after the one `MOVE_AFTER_CHUNKS` behind is full, both stay.
        fill(&mut table, (MOVE_AFTER_CHUNKS + 1) * CHUNK_ROWS - 3, "a");
        assert_eq!(table.find(&held.transfer.key()), Some(0));
        assert_eq!(table.final_chunks_from(0), 0);
        // The insert that fills it moves both to the end, in order; chunk 0 is then final.
        fill(&mut table, 1, "b");
        let end = (MOVE_AFTER_CHUNKS + 1) * CHUNK_ROWS;
        assert_eq!(table.len(), end + 2);
        assert_eq!(table.find(&held.transfer.key()), Some(end));
        assert_eq!(table.find_credit(&credit_key), Some(end + 1));
        assert_eq!(table.take_moved_credits(), [(1, end + 1)]);
        assert_eq!(table.take_moved_credits(), []);
        assert_eq!(table.get(&held.transfer.key()), Ok(Some(held)));
        assert_eq!(table.credit(&credit_key), Ok(Some(credit_row)));
        assert_eq!(
            table.unfinished().map(|(row, _)| row).collect::<Vec<_>>(),
            [held]
        );
        assert_eq!(table.pending_credit_at(1), None);
        assert_eq!(table.credit_at(1), None);
        assert!(table.pending_credit_at(end + 1).is_some());
        assert_eq!(table.final_chunks_from(0), MOVE_AFTER_CHUNKS + 1);
        // Nothing is recorded twice, and the rows come back once each.
        assert_eq!(table.insert(&held), Ok(false));
        assert_eq!(table.insert_credit(&credit_key, &credit_row), Ok(false));
        assert_eq!(table.iter().count(), end);
        // A snapshot of the table restores the same positions: the moved ones have no row.
        let restored: TransferTable = {
            let mut restored = TransferTable::default();
            for at in 0..table.len() {
                let position = table.hot_row(at).map(|row| (row, None));
                assert_eq!(restored.restore(position), Ok(true));
            }
            restored
        };
        assert_eq!(restored.len(), table.len());
        assert_eq!(restored.find(&held.transfer.key()), Some(end));
        assert!(restored == table);
        // Chunk 0 goes to disk, without the moved rows; they are still found, in memory.
        assert!(write_and_drop(&mut table, &files, 0));
        assert_eq!(table.hot_from(), CHUNK_ROWS);
        assert_eq!(
            table.lookup(&held.transfer.key()),
            Ok(Some(Found::Hot(end)))
        );
        assert_eq!(
            table.credit_lookup(&credit_key),
            Ok(Some(Credit::Hot(end + 1)))
        );
        let first_on_disk = row("carol", "a-0", "dan", 1);
        let cold = Found::Cold(Box::new((first_on_disk, None)));
        assert_eq!(table.lookup(&first_on_disk.transfer.key()), Ok(Some(cold)));
        // Still held, the hold moves on again, and again, and memory holds its few chunks.
        for round in 0..3 {
            fill(
                &mut table,
                (MOVE_AFTER_CHUNKS + 1) * CHUNK_ROWS,
                &format!("r{round}"),
            );
            while table.final_chunks_from(table.cold_chunks()) > 0
                && table.len() - table.hot_from() > MOVE_AFTER_CHUNKS * CHUNK_ROWS
            {
                let next = table.cold_chunks();
                assert!(write_and_drop(&mut table, &files, next));
            }
            assert!(table.len() - table.hot_from() <= (MOVE_AFTER_CHUNKS + 2) * CHUNK_ROWS);
            assert_eq!(
                table.unfinished().map(|(row, _)| row).collect::<Vec<_>>(),
                [held]
            );
            assert_eq!(table.credit(&credit_key), Ok(Some(credit_row)));
            assert_eq!(table.take_moved_credits().len(), 1);
        }
        // Once final, it goes to disk like any row, and is read back from there.
        let at = table.find(&held.transfer.key()).unwrap();
        let mut phase = table.phase(at);
        phase.state = TransferState::Captured;
        table.set_phase(at, phase);
        let credit_at = table.find_credit(&credit_key).unwrap();
        table.finish_credit(credit_at, CreditState::Confirmed);
        fill(&mut table, (MOVE_AFTER_CHUNKS + 2) * CHUNK_ROWS, "last");
        assert_eq!(table.take_moved_credits(), []);
        while table.final_chunks_from(table.cold_chunks()) > 1 {
            let next = table.cold_chunks();
            assert!(write_and_drop(&mut table, &files, next));
        }
        assert!(table.hot_from() > at.max(credit_at));
        let captured = TransferRow {
            state: TransferState::Captured,
            ..held
        };
        let found = table.lookup(&held.transfer.key());
        assert_eq!(found, Ok(Some(Found::Cold(Box::new((captured, None))))));
        let confirmed = table.credit(&credit_key).unwrap().unwrap();
        assert_eq!(confirmed.state, CreditState::Confirmed);
        assert_eq!(
            table
                .iter()
                .filter(|row| row.key() == held.transfer.key())
                .count(),
            1
        );
    }

    #[test]
    fn credit_rows_share_the_table_and_go_to_disk_once_final() {
        // Home and credit rows interleaved, as a partition that is both home and destination
        // records them; the first chunks all final, then a pending credit.
        let states = [
            CreditState::Confirmed,
            CreditState::Cancelled,
            CreditState::TryNotSeen,
        ];
        let mut rows = Vec::new();
        for i in 0..3 * CHUNK_ROWS {
            rows.push(if i % 3 == 0 {
                TableRow::Home(row(&format!("acct-{}", i % 7), &format!("t-{i}"), "dst", 9))
            } else {
                let (key, credit) = credit(i, states[i % states.len()]);
                TableRow::Credit(key, credit)
            });
        }
        let pending = credit(rows.len(), CreditState::Tried);
        rows.push(TableRow::Credit(pending.0, pending.1));
        let mut table: TransferTable = rows.iter().copied().collect();
        for i in 0..CHUNK_ROWS {
            table
                .insert(&row("acct-1", &format!("later-{i}"), "dst", 1))
                .unwrap();
        }
        // The chunk with the pending credit is not final; those before it are.
        assert_eq!(table.final_chunks_from(0), 3);
        let files = Arc::new(TestChunks::default());
        let store = table.freeze();
        table.attach(3, files.clone());
        for chunk in 0..3 {
            let encoded = crate::log::chunk_file::encode_chunk(3, chunk, &store);
            let decoded = crate::log::chunk_file::decode_chunk(&encoded.bytes, 3, chunk as u64);
            let range = chunk * CHUNK_ROWS..(chunk + 1) * CHUNK_ROWS;
            let decoded: Vec<TableRow> = decoded
                .unwrap()
                .rows
                .into_iter()
                .flatten()
                .map(|(row, _)| row)
                .collect();
            assert_eq!(decoded, rows[range]);
            files
                .files
                .lock()
                .unwrap()
                .insert(chunk as u64, encoded.bytes);
            let cold = ColdChunk {
                chunk,
                index: encoded.index,
                filter_hashes: encoded.filter_hashes,
                key_hashes: encoded.key_hashes,
            };
            assert!(drop_and_grow(&mut table, cold));
        }
        // Every row is found on disk by the lookup of its own kind only.
        for expected in &rows[..3 * CHUNK_ROWS] {
            let key = expected.key();
            match *expected {
                TableRow::Home(home) => {
                    assert_eq!(
                        table.lookup(&key),
                        Ok(Some(Found::Cold(Box::new((home, None)))))
                    );
                    assert_eq!(table.credit_lookup(&key), Ok(None));
                }
                TableRow::Credit(_, credit) => {
                    assert_eq!(table.credit_lookup(&key), Ok(Some(Credit::Cold(credit))));
                    assert_eq!(table.credit(&key), Ok(Some(credit)));
                    assert_eq!(table.lookup(&key), Ok(None));
                    assert_eq!(
                        table.insert_credit(&key, &credit),
                        Ok(false),
                        "recorded once"
                    );
                }
                TableRow::Part { .. } => unreachable!("no parts here"),
            }
        }
        // The pending credit stays in memory, found by position, and moves on there.
        let at = table.find_credit(&pending.0).unwrap();
        assert_eq!((at, table.find(&pending.0)), (3 * CHUNK_ROWS, None));
        let t = pending.1.transfer.unwrap();
        assert_eq!(table.pending_credit(at), Some((t.to, t.amount, t.currency)));
        assert_eq!(table.pending_credit_transfers().collect::<Vec<_>>(), [t]);
        table.capture_credit(at, Amount::from_minor(1).unwrap());
        assert_eq!(table.pending_credit(at), None);
        let captured = table.credit(&pending.0).unwrap().unwrap();
        assert_eq!(captured.state, CreditState::Confirmed);
        assert_eq!(captured.transfer.unwrap().amount.minor(), 1);
        assert_eq!(table.pending_credits().count(), 0);
        assert_eq!(table.final_chunks_from(3), 1);
        assert!(table
            .iter()
            .take(3 * CHUNK_ROWS)
            .eq(rows[..3 * CHUNK_ROWS].iter().copied()));
    }

    #[test]
    fn a_damaged_chunk_file_is_an_error_never_a_wrong_answer() {
        let (mut table, rows, files, cold) = table_with_chunk_files(4);
        for chunk in cold {
            assert!(drop_and_grow(&mut table, chunk));
        }
        let key_of = |at: usize| rows[at].transfer.key();
        let len = files.files.lock().unwrap()[&1].len();
        // Every byte of chunk 1, flipped in turn: each lookup of a row of chunk 1 is its row
        // or an error, never absent and never another row.
        for at in (0..len).step_by(7) {
            files.files.lock().unwrap().get_mut(&1).unwrap()[at] ^= 0x10;
            for row_at in [CHUNK_ROWS, CHUNK_ROWS + 17, 2 * CHUNK_ROWS - 1] {
                match table.lookup(&key_of(row_at)) {
                    Ok(found) => assert_eq!(
                        found,
                        Some(Found::Cold(Box::new((rows[row_at], None)))),
                        "byte {at}"
                    ),
                    Err(error) => assert!(error.0.contains("chunk file 1"), "{error}"),
                }
            }
            files.files.lock().unwrap().get_mut(&1).unwrap()[at] ^= 0x10;
        }
        // A missing file is an error too; other chunks still answer.
        files.files.lock().unwrap().remove(&2);
        assert!(table.lookup(&key_of(2 * CHUNK_ROWS + 5)).is_err());
        assert_eq!(
            table.lookup(&key_of(5)),
            Ok(Some(Found::Cold(Box::new((rows[5], None)))))
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
        assert_eq!(table.insert(&rows[0]), Ok(true));
        assert_eq!(table.find(&rows[0].transfer.key()), Some(2));
    }
}
