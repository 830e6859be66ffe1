//! The index of the accounts table: an account id's hash to its row's position.
//!
//! Open addressing with linear probing over 4-byte slots. A slot holds the row position plus
//! one in its low `position_bits` bits (0 is an empty slot) and, above them, a fingerprint:
//! the bits of the id's hash that the slot's home does not already use. A lookup touches the
//! slot's cache line (16 slots) and the row of the one slot whose fingerprint matches, and
//! nothing else: no control bytes in another array, as a general hash table keeps them, and
//! no key in the index, which the copy-on-write rows already hold.
//!
//! Why: accounts are read twice per transfer, and with the rows shared with snapshot images
//! the index is a second structure on the way to a row. A `hashbrown` table of positions
//! touched its control bytes, then its slot, then the row (19% of the one-partition engine's
//! time); here the slot is the only step before the row, so the prefetch pass can bring the
//! row in without waiting for anything but the slot ([`AccountIndex::candidate`]).
//!
//! Fingerprints keep `32 - position_bits` bits (14 at 100,000 accounts, 6 at 30 million), so
//! a lookup compares an id with a row that is not its own about once in 16,000 at 100,000
//! accounts. The index doubles when it is 3/4 full; a doubling reads every row's id again
//! (the slots keep too few bits of the hash to move alone), as a general table does.

/// Most slots in use per slot of the index before it doubles: 3/4. Linear probing then looks
/// at about 2.5 slots for an id it holds, all but always in one cache line.
const FILL_NUMERATOR: usize = 3;
const FILL_DENOMINATOR: usize = 4;
/// Slots of the first index (small in tests, so that they grow it often).
const SLOTS_MIN: usize = if cfg!(any(test, madsim, feature = "testing")) {
    16
} else {
    1024
};
/// Most slots: positions take at most 30 bits, so at least 2 are left for a fingerprint.
const SLOTS_MAX: usize = 1 << 30;
/// Most rows an index addresses: 3/4 of the most slots.
pub(crate) const ACCOUNTS_MAX: usize = SLOTS_MAX / FILL_DENOMINATOR * FILL_NUMERATOR;

/// The 32 bits of an id's hash the index uses: the high ones choose the home slot, the ones
/// below them are the fingerprint.
pub(crate) type IndexHash = u32;

/// Asks the processor to bring the cache line at `address` in without waiting for it.
#[inline]
pub(crate) fn prefetch_line<T>(address: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it reads nothing and cannot fault, whatever the address.
    // SSE, which provides it, is part of every x86_64 target.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(address.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// See the module documentation.
#[derive(Clone, Default)]
pub(crate) struct AccountIndex {
    slots: Vec<u32>,
    used: usize,
    /// `log2(slots.len())`: the low bits of a slot that hold a position plus one.
    position_bits: u32,
}

impl AccountIndex {
    #[inline]
    fn home(&self, hash: IndexHash) -> usize {
        debug_assert!(!self.slots.is_empty());
        (hash >> (32 - self.position_bits)) as usize
    }

    /// The slot's bits that hold a fingerprint: what `hash` keeps below its home's bits.
    #[inline]
    fn fingerprint(&self, hash: IndexHash) -> u32 {
        // `position_bits` is at most 30, so the shift is in range.
        (hash << self.position_bits) & !self.position_mask()
    }

    #[inline]
    fn position_mask(&self) -> u32 {
        (1u32 << self.position_bits) - 1
    }

    /// The position of the row whose id hashes to `hash` and for which `is_row` holds.
    #[inline]
    pub(crate) fn find(
        &self,
        hash: IndexHash,
        mut is_row: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let (mask, fingerprint) = (self.slots.len() - 1, self.fingerprint(hash));
        let position_mask = self.position_mask();
        let mut at = self.home(hash);
        // Bounded: the fill limit leaves a quarter of the slots empty, so a probe ends.
        loop {
            let slot = self.slots[at];
            if slot == 0 {
                return None;
            }
            if slot & !position_mask == fingerprint {
                let position = (slot & position_mask) as usize - 1;
                if is_row(position) {
                    return Some(position);
                }
            }
            at = (at + 1) & mask;
        }
    }

    /// The position of the first row whose fingerprint matches `hash`, without confirming it
    /// is the row: what the prefetch pass brings into cache. Reads one slot's cache line.
    #[inline]
    pub(crate) fn candidate(&self, hash: IndexHash) -> Option<usize> {
        self.find(hash, |_| true)
    }

    /// Asks the processor to bring in the cache line of the home slot of `hash`.
    #[inline]
    pub(crate) fn prefetch(&self, hash: IndexHash) {
        if !self.slots.is_empty() {
            prefetch_line(&self.slots[self.home(hash)]);
        }
    }

    /// Adds `position` under `hash`; the caller made sure no row with that id is indexed.
    /// `hash_of` gives the hash of the row at a position: a doubling re-homes every row.
    pub(crate) fn insert(
        &mut self,
        hash: IndexHash,
        position: usize,
        hash_of: impl Fn(usize) -> IndexHash,
    ) {
        assert_eq!(
            position, self.used,
            "rows are indexed in the order they are added"
        );
        assert!(position < ACCOUNTS_MAX, "at most {ACCOUNTS_MAX} accounts");
        if (self.used + 1) * FILL_DENOMINATOR > self.slots.len() * FILL_NUMERATOR {
            self.grow(hash_of);
        }
        self.put(hash, position);
        self.used += 1;
    }

    fn put(&mut self, hash: IndexHash, position: usize) {
        let slot = self.fingerprint(hash) | (position as u32 + 1);
        debug_assert!(slot & self.position_mask() != 0, "a position fits its bits");
        let mask = self.slots.len() - 1;
        let mut at = self.home(hash);
        while self.slots[at] != 0 {
            at = (at + 1) & mask;
        }
        self.slots[at] = slot;
    }

    /// Doubles the slots and puts every row again, in position order.
    fn grow(&mut self, hash_of: impl Fn(usize) -> IndexHash) {
        let len = (self.slots.len() * 2).max(SLOTS_MIN);
        assert!(
            len <= SLOTS_MAX,
            "the account index holds at most {SLOTS_MAX} slots"
        );
        // `vec![0; n]` takes zeroed pages from the allocator: untouched slots cost no time.
        self.slots = vec![0; len];
        self.position_bits = len.trailing_zeros();
        for position in 0..self.used {
            self.put(hash_of(position), position);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash whose high bits collide often, so that probes cross slots and fingerprints.
    fn hash(key: u32) -> IndexHash {
        (key % 7).rotate_right(3) ^ key.wrapping_mul(0x9E37_79B9)
    }

    #[test]
    fn every_row_is_found_through_growths_and_strangers_are_not() {
        let mut index = AccountIndex::default();
        let keys: Vec<u32> = (0..5_000).map(|i| i * 3).collect();
        for (position, &key) in keys.iter().enumerate() {
            index.insert(hash(key), position, |at| hash(keys[at]));
            assert_eq!(index.find(hash(key), |at| keys[at] == key), Some(position));
            assert_eq!(
                index.candidate(hash(key)).map(|at| keys[at] == key),
                Some(true)
            );
        }
        assert!(index.slots.len() * FILL_NUMERATOR >= keys.len() * FILL_DENOMINATOR);
        for (position, &key) in keys.iter().enumerate() {
            assert_eq!(index.find(hash(key), |at| keys[at] == key), Some(position));
            let stranger = key + 1;
            assert_eq!(index.find(hash(stranger), |at| keys[at] == stranger), None);
        }
        assert_eq!(AccountIndex::default().find(hash(1), |_| true), None);
    }

    #[test]
    fn equal_hashes_are_told_apart_by_their_rows() {
        let mut index = AccountIndex::default();
        let keys = [10u32, 20, 30, 40];
        for (position, _) in keys.iter().enumerate() {
            index.insert(7, position, |_| 7);
        }
        for (position, &key) in keys.iter().enumerate() {
            assert_eq!(index.find(7, |at| keys[at] == key), Some(position));
        }
        assert_eq!(index.find(7, |at| keys[at] == 50), None);
    }
}
