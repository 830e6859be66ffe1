//! A hash index from keys to row positions, for a table whose rows live in a vector and are
//! only ever appended (the transfers table).
//!
//! Open addressing with linear probing over 8-byte slots, each holding a row position and 32
//! bits of the key's hash. The index never reads a key itself: the caller hashes, and confirms
//! a candidate row by its own comparison, which the slot's hash makes rare.
//!
//! Why not a general hash table: this index grows by millions of slots, and a general table
//! moves all of them at once when it doubles (half a second at 7 million rows), in an order
//! that scatters the writes. Here a doubling is spread over the inserts that follow it
//! ([`SLOTS_MOVED_PER_INSERT`] old slots move with each), and the old slots move in position
//! order, so their writes land in two runs through the new index, which the cache follows.
//! Lookups during a growth look in the new index, then in the old one.
//!
//! Rows below a position can also be forgotten ([`RowIndex::forget_below`]: the transfers
//! table drops rows that went to disk). That is a growth into an index sized for the rows
//! left, whose moves skip the forgotten rows' slots: spread over inserts the same way. Until
//! it ends, a lookup may still meet a forgotten row's slot in the old index, so callers
//! refuse positions they no longer hold.

/// Most slots in use per slot of the index before it doubles: 3/4. Linear probing looks at
/// about 8 slots (one or two cache lines) for a missing key at that fill, 2.5 at half of it.
const FILL_NUMERATOR: usize = 3;
const FILL_DENOMINATOR: usize = 4;
/// Slots of the first index.
const SLOTS_MIN: usize = 1024;
/// Old slots moved into the new index with every insert while it grows. The old index holds
/// `n` slots of which 3/4 are in use when it doubles; it is emptied after `n/32` inserts, long
/// before the new index (of `2n` slots) fills. Every slot moves once whatever this is, but
/// while a growth lasts a lookup of a new key misses in both indexes, so a short growth is
/// the cheaper one: at 4 per insert, growing past 8 million slots took 2 million inserts
/// (two seconds of transfers) at two misses each. 32 slots are four cache lines read in
/// order, about a tenth of one miss.
const SLOTS_MOVED_PER_INSERT: usize = 32;
/// Most rows an index addresses: positions are 32 bits, and 0 marks an empty slot.
pub const ROWS_MAX: usize = u32::MAX as usize - 1;

/// A slot: 0 when empty, else the key's 32-bit hash (high half) and the row position plus one
/// (low half).
type Slot = u64;

fn slot(hash: u32, row: usize) -> Slot {
    debug_assert!(row < ROWS_MAX);
    u64::from(hash) << 32 | (row as u64 + 1)
}

fn slot_hash(slot: Slot) -> u32 {
    (slot >> 32) as u32
}

fn slot_row(slot: Slot) -> usize {
    (slot as u32) as usize - 1
}

/// Asks the processor to bring `slot`'s cache line in, without waiting for it: a lookup a
/// few hundred nanoseconds later then finds it there. A plain read of the slot would do the
/// same but hold its place in the processor's window until the miss is served, and the
/// prefetch pass reads one slot per transfer of a whole group, so those reads filled the
/// window and stalled it (the pass was an eighth of the partition's time).
#[inline]
fn prefetch(slot: &Slot) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it reads nothing and cannot fault, whatever the address
    // (here a valid reference). SSE, which provides it, is part of every x86_64 target.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((slot as *const Slot).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::hint::black_box(*slot);
}

/// One open-addressed array of slots (a power of two of them).
#[derive(Debug, Clone, Default)]
struct Slots {
    slots: Vec<Slot>,
    used: usize,
}

impl Slots {
    fn with_len(len: usize) -> Slots {
        debug_assert!(len.is_power_of_two());
        // `vec![0; n]` takes zeroed pages from the allocator: untouched slots cost no time.
        Slots {
            slots: vec![0; len],
            used: 0,
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    #[inline]
    fn find(&self, hash: u32, mut is_row: impl FnMut(usize) -> bool) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut at = hash as usize & mask;
        // Bounded: the fill limit leaves a quarter of the slots empty, so a probe ends.
        loop {
            let slot = self.slots[at];
            if slot == 0 {
                return None;
            }
            if slot_hash(slot) == hash && is_row(slot_row(slot)) {
                return Some(slot_row(slot));
            }
            at = (at + 1) & mask;
        }
    }

    /// Puts `slot` into the first empty place from its hash's home.
    fn put(&mut self, slot: Slot) {
        let mask = self.mask();
        let mut at = slot_hash(slot) as usize & mask;
        while self.slots[at] != 0 {
            at = (at + 1) & mask;
        }
        self.slots[at] = slot;
        self.used += 1;
        assert!(
            self.used < self.slots.len(),
            "an index always keeps an empty slot"
        );
    }

    fn is_full(&self) -> bool {
        (self.used + 1) * FILL_DENOMINATOR > self.slots.len() * FILL_NUMERATOR
    }

    /// Reads the home slot of `hash`, so that a lookup soon after finds it in cache.
    fn touch(&self, hash: u32) {
        if let Some(home) = self
            .slots
            .get(hash as usize & self.slots.len().wrapping_sub(1))
        {
            prefetch(home);
        }
    }
}

/// An index being replaced by one of twice the slots: positions `0..moved` of `old` are
/// already in the new one.
#[derive(Debug, Clone)]
struct Growth {
    old: Slots,
    moved: usize,
    /// Slots of rows below this position are not moved: those rows are forgotten.
    keep_from: usize,
}

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub(crate) struct RowIndex {
    current: Slots,
    growth: Option<Growth>,
}

impl RowIndex {
    /// The row whose key has `hash` and for which `is_row` holds.
    #[inline]
    pub(crate) fn find(&self, hash: u32, mut is_row: impl FnMut(usize) -> bool) -> Option<usize> {
        self.current
            .find(hash, &mut is_row)
            .or_else(|| self.growth.as_ref()?.old.find(hash, is_row))
    }

    /// Reads the slots a lookup of `hash` starts from (see `Ledger::prefetch`).
    pub(crate) fn touch(&self, hash: u32) {
        self.current.touch(hash);
        if let Some(growth) = &self.growth {
            growth.old.touch(hash);
        }
    }

    /// Indexes `row` under `hash`. The caller has found no row for its key.
    pub(crate) fn insert(&mut self, hash: u32, row: usize) {
        assert!(
            row < ROWS_MAX,
            "an index addresses fewer than 2^32 - 1 rows"
        );
        if self.current.is_full() {
            // Not reached while a growth is under way (see `SLOTS_MOVED_PER_INSERT`); were it,
            // finishing that one first would keep the index correct, only slower.
            debug_assert!(self.growth.is_none(), "an index filled while it grew");
            self.move_slots(usize::MAX);
            let len = (2 * self.current.slots.len()).max(SLOTS_MIN);
            let old = std::mem::replace(&mut self.current, Slots::with_len(len));
            if old.used > 0 {
                self.growth = Some(Growth {
                    old,
                    moved: 0,
                    keep_from: 0,
                });
            }
        }
        self.current.put(slot(hash, row));
        self.move_slots(SLOTS_MOVED_PER_INSERT);
    }

    /// Moves up to `count` old slot positions of a growth under way into the current index;
    /// ends the growth, freeing the old index, once all have moved.
    fn move_slots(&mut self, count: usize) {
        let Some(growth) = &mut self.growth else {
            return;
        };
        let end = growth
            .old
            .slots
            .len()
            .min(growth.moved.saturating_add(count));
        for at in growth.moved..end {
            let slot = growth.old.slots[at];
            if slot != 0 && slot_row(slot) >= growth.keep_from {
                self.current.put(slot);
            }
        }
        growth.moved = end;
        if end == growth.old.slots.len() {
            self.growth = None;
        }
    }

    /// Forgets the rows below position `row_min`, of which `rows_kept` remain: moves every
    /// other slot into an index sized for those, over the inserts that follow. A growth
    /// or an earlier forgetting under way is finished first (its old index is at most the
    /// size of the current one).
    pub(crate) fn forget_below(&mut self, row_min: usize, rows_kept: usize) {
        self.move_slots(usize::MAX);
        // Room for the kept rows and for the inserts made while the old slots move, so the
        // new index does not fill before the old one is empty.
        let inserts_while_moving = self.current.slots.len() / SLOTS_MOVED_PER_INSERT + 1;
        let len = ((rows_kept + inserts_while_moving) * FILL_DENOMINATOR / FILL_NUMERATOR + 1)
            .next_power_of_two()
            .max(SLOTS_MIN);
        let old = std::mem::replace(&mut self.current, Slots::with_len(len));
        if old.used > 0 {
            self.growth = Some(Growth {
                old,
                moved: 0,
                keep_from: row_min,
            });
        }
    }

    /// Whether slots are still moving from an old index (a growth or a forgetting).
    pub(crate) fn is_moving(&self) -> bool {
        self.growth.is_some()
    }

    /// Bytes the slots take.
    pub(crate) fn bytes(&self) -> usize {
        let old = self.growth.as_ref().map_or(0, |g| g.old.slots.len());
        (self.current.slots.len() + old) * std::mem::size_of::<Slot>()
    }

    /// Slots in use in the current index: every row indexed, forgotten or not, when no
    /// slots are moving.
    pub(crate) fn slots_used(&self) -> usize {
        self.current.used
    }

    /// Rows indexed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let moved = self.growth.as_ref().map_or(0, |g| {
            g.old.slots[..g.moved].iter().filter(|&&s| s != 0).count()
        });
        self.current.used + self.growth.as_ref().map_or(0, |g| g.old.used) - moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash with few distinct values, so that probes run long and wrap around.
    fn crowded_hash(key: usize) -> u32 {
        (key as u32 % 97).wrapping_mul(0x9E37_79B9)
    }

    #[test]
    fn every_row_is_found_by_its_key_before_during_and_after_growth() {
        let mut index = RowIndex::default();
        let keys: Vec<usize> = (0..20_000).map(|i| i * 7 + 3).collect();
        let mut grew = 0;
        for (row, &key) in keys.iter().enumerate() {
            let hash = crowded_hash(key);
            assert_eq!(index.find(hash, |r| keys[r] == key), None);
            index.insert(hash, row);
            grew += usize::from(index.growth.is_some());
            assert_eq!(index.find(hash, |r| keys[r] == key), Some(row));
            // A row indexed long ago, whose slot may still be in the old index only.
            let early = row / 3;
            let found = index.find(crowded_hash(keys[early]), |r| keys[r] == keys[early]);
            assert_eq!(found, Some(early));
            assert_eq!(index.len(), row + 1);
        }
        // Spread over inserts: the growths past 1024, 2048 .. 16384 slots last 1/32 of
        // those counts each, about a twentieth of the inserts in all.
        assert!(
            grew > keys.len() / 2 / SLOTS_MOVED_PER_INSERT,
            "growth was spread over inserts ({grew})"
        );
        for (row, &key) in keys.iter().enumerate() {
            assert_eq!(index.find(crowded_hash(key), |r| keys[r] == key), Some(row));
        }
        assert_eq!(index.find(crowded_hash(1), |r| keys[r] == 1), None);
    }

    #[test]
    fn forgotten_rows_leave_the_index_over_the_inserts_that_follow() {
        let mut index = RowIndex::default();
        let hash = |row: usize| (row as u32).wrapping_mul(0x9E37_79B9);
        for row in 0..50_000 {
            index.insert(hash(row), row);
        }
        index.forget_below(40_000, 10_000);
        let kept = |row: usize| row >= 40_000;
        for row in 50_000..60_000 {
            index.insert(hash(row), row);
            for probe in [row / 2, row - 1, 40_000 + row % 10_000] {
                let found = index.find(hash(probe), |r| kept(r) && r == probe);
                assert_eq!(found.is_some(), kept(probe), "row {probe}");
            }
        }
        assert!(index.growth.is_none(), "the old index is gone");
        assert_eq!(index.len(), 20_000);
        assert!(index.bytes() <= 65_536 * 8, "{} bytes", index.bytes());
    }

    #[test]
    fn the_fill_limit_leaves_empty_slots() {
        let mut index = RowIndex::default();
        for row in 0..100_000 {
            index.insert(row as u32, row);
            let fill = index.current.used as f64 / index.current.slots.len() as f64;
            assert!(fill <= 0.75, "fill {fill} after {row} rows");
        }
    }
}
