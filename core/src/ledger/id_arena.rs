//! The id bytes of a packed table's rows, back to back, in chunks: the transfers table
//! ([`crate::ledger::transfer_table`]) and the cash table ([`crate::ledger::keyed_table`])
//! keep each row's ids here and only their place and lengths in the row.
//!
//! An id is up to 64 bytes, held inline in a 65-byte array by [`crate::model::ids`]; typical
//! ids are a tenth of that, so a row that kept its ids inline was mostly padding. Sealed
//! chunks are shared (`Arc`) with the clones a snapshot image takes, and the open one is
//! copied; ids never change once written, so nothing here is ever copied on write.

use std::sync::Arc;

use crate::model::ids::ID_LEN_MAX;

/// Bytes per chunk. A row's ids (at most three, 192 bytes) never span two.
pub(crate) const ARENA_CHUNK_BYTES: usize = if cfg!(any(test, madsim, feature = "testing")) {
    1024
} else {
    1 << 22
};

/// Where a row's ids start: the chunk number in the high 32 bits, the offset in it in the low.
pub(crate) type IdsAt = u64;

/// See the module documentation.
#[derive(Clone, Default)]
pub(crate) struct IdArena {
    /// Chunks dropped from the front (with the rows that used them); `IdsAt` counts them.
    dropped: usize,
    sealed: Vec<Arc<Vec<u8>>>,
    tail: Vec<u8>,
}

impl IdArena {
    /// Appends what `write` writes, at most `ids_max` ids' worth ([`ID_LEN_MAX`] each);
    /// returns where it starts.
    ///
    /// `write` appends each id as its whole padded array and then cuts it (see
    /// `append_bytes_to` in [`crate::model::ids`]), so the chunk needs room for that much, or
    /// it would reallocate to twice its size just before being sealed.
    pub(crate) fn push(&mut self, ids_max: usize, write: impl FnOnce(&mut Vec<u8>)) -> IdsAt {
        let room = ids_max * ID_LEN_MAX;
        if self.tail.len() + room > ARENA_CHUNK_BYTES {
            let sealed = std::mem::replace(&mut self.tail, Vec::with_capacity(ARENA_CHUNK_BYTES));
            self.sealed.push(Arc::new(sealed));
        }
        if self.tail.capacity() == 0 {
            self.tail.reserve_exact(ARENA_CHUNK_BYTES);
        }
        let at = (self.chunks_before_tail() as u64) << 32 | self.tail.len() as u64;
        let before = self.tail.len();
        write(&mut self.tail);
        debug_assert!(self.tail.len() - before <= room, "more ids than announced");
        at
    }

    /// The `len` bytes written at `at`.
    #[inline]
    pub(crate) fn bytes(&self, at: IdsAt, len: usize) -> &[u8] {
        let (chunk, start) = ((at >> 32) as usize, at as u32 as usize);
        debug_assert!(chunk >= self.dropped, "the ids of a dropped row");
        let bytes = match self.sealed.get(chunk - self.dropped) {
            Some(sealed) => sealed.as_slice(),
            None => self.tail.as_slice(),
        };
        &bytes[start..start + len]
    }

    /// Drops the sealed chunks before the one `first_used` is in: no row left uses them.
    pub(crate) fn drop_before(&mut self, first_used: IdsAt) {
        let chunk = (first_used >> 32) as usize;
        self.sealed.drain(..chunk - self.dropped);
        self.dropped = chunk;
    }

    /// Drops every sealed chunk: the rows that used them are all gone.
    pub(crate) fn drop_sealed(&mut self) {
        self.dropped = self.chunks_before_tail();
        self.sealed.clear();
    }

    fn chunks_before_tail(&self) -> usize {
        self.dropped + self.sealed.len()
    }

    /// Sealed chunks held.
    #[cfg(test)]
    pub(crate) fn sealed_chunks(&self) -> usize {
        self.sealed.len()
    }

    /// The capacity of each sealed chunk (tests: a chunk never reallocates before sealing).
    #[cfg(test)]
    pub(crate) fn sealed_capacities(&self) -> impl Iterator<Item = usize> + '_ {
        self.sealed.iter().map(|chunk| chunk.capacity())
    }

    /// Memory held: every chunk at its capacity.
    pub(crate) fn bytes_held(&self) -> usize {
        (self.sealed.len() + 1) * ARENA_CHUNK_BYTES
    }
}
