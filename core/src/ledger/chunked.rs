//! A vector kept in chunks of `CHUNK` items: full chunks are sealed behind an `Arc`, the last
//! one stays open for appends. Cloning it (what a snapshot image does) copies only the open
//! chunk and shares the sealed ones; changing an item of a sealed chunk that a clone still
//! shares copies that one chunk first (`Arc::make_mut`), so the clone keeps what it saw.
//! The rows of the transfers table and of the credit and cash tables live in one. The
//! transfers table also drops its oldest chunks once they are on disk
//! ([`ChunkedVec::drop_front`]): positions stay those of the whole vector.

use std::sync::Arc;

/// See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedVec<T, const CHUNK: usize> {
    /// Chunks dropped from the front: items `0..dropped * CHUNK` are gone.
    dropped: usize,
    sealed: Vec<Arc<Vec<T>>>,
    open: Vec<T>,
}

impl<T, const CHUNK: usize> Default for ChunkedVec<T, CHUNK> {
    fn default() -> Self {
        ChunkedVec {
            dropped: 0,
            sealed: Vec::new(),
            open: Vec::new(),
        }
    }
}

impl<T, const CHUNK: usize> ChunkedVec<T, CHUNK> {
    pub(crate) fn len(&self) -> usize {
        (self.dropped + self.sealed.len()) * CHUNK + self.open.len()
    }

    /// Chunks dropped from the front.
    pub(crate) fn dropped(&self) -> usize {
        self.dropped
    }

    /// An empty vector whose first `chunks` chunks are already dropped: its first item will
    /// be at `chunks * CHUNK`.
    pub(crate) fn starting_after(chunks: usize) -> Self {
        ChunkedVec {
            dropped: chunks,
            ..ChunkedVec::default()
        }
    }

    /// Drops the oldest sealed chunks up to chunk `chunks` (exclusive).
    pub(crate) fn drop_front(&mut self, chunks: usize) {
        assert!(
            chunks >= self.dropped && chunks - self.dropped <= self.sealed.len(),
            "only sealed chunks are dropped"
        );
        self.sealed.drain(..chunks - self.dropped);
        self.dropped = chunks;
    }

    #[inline]
    pub(crate) fn get(&self, at: usize) -> &T {
        let (chunk, i) = (at / CHUNK, at % CHUNK);
        debug_assert!(chunk >= self.dropped, "item {at} was dropped");
        match self.sealed.get(chunk - self.dropped) {
            Some(sealed) => &sealed[i],
            None => &self.open[i],
        }
    }

    /// Appends `item`, sealing the open chunk first if it is full; returns its position.
    pub(crate) fn push(&mut self, item: T) -> usize {
        if self.open.len() == CHUNK {
            let full = std::mem::replace(&mut self.open, Vec::with_capacity(CHUNK));
            self.sealed.push(Arc::new(full));
        }
        let at = self.len();
        self.open.push(item);
        at
    }

    /// The sealed chunks still held, oldest first: the first is chunk [`Self::dropped`].
    pub(crate) fn sealed(&self) -> &[Arc<Vec<T>>] {
        &self.sealed
    }

    /// Items still held, in the order they were appended.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = &T> {
        (self.dropped * CHUNK..self.len()).map(|at| self.get(at))
    }
}

impl<T: Clone, const CHUNK: usize> ChunkedVec<T, CHUNK> {
    /// The items at two different positions, mutably (shared sealed chunks copied first).
    pub(crate) fn get_pair_mut(&mut self, a: usize, b: usize) -> [&mut T; 2] {
        assert_ne!(a, b, "two different items");
        let (first, second) = (a.min(b), a.max(b));
        let (chunk_of, i_of) = (|at: usize| at / CHUNK, |at: usize| at % CHUNK);
        let [low, high] = if chunk_of(first) == chunk_of(second) {
            let items = self.chunk_mut(chunk_of(first));
            let (head, tail) = items.split_at_mut(i_of(second));
            [&mut head[i_of(first)], &mut tail[0]]
        } else {
            let dropped = self.dropped;
            assert!(chunk_of(first) >= dropped, "item {first} was dropped");
            let (low_chunk, high_chunk) = (chunk_of(first) - dropped, chunk_of(second) - dropped);
            let (head, tail) = self.sealed.split_at_mut(high_chunk);
            let low = &mut Arc::make_mut(&mut head[low_chunk])[i_of(first)];
            let high = match tail.first_mut() {
                Some(sealed) => &mut Arc::make_mut(sealed)[i_of(second)],
                None => &mut self.open[i_of(second)],
            };
            [low, high]
        };
        if a < b {
            [low, high]
        } else {
            [high, low]
        }
    }

    /// Chunk `chunk`'s items, mutably: a sealed chunk still shared is copied first.
    fn chunk_mut(&mut self, chunk: usize) -> &mut [T] {
        assert!(chunk >= self.dropped, "chunk {chunk} was dropped");
        match self.sealed.get_mut(chunk - self.dropped) {
            Some(sealed) => Arc::make_mut(sealed).as_mut_slice(),
            None => self.open.as_mut_slice(),
        }
    }

    /// The item at `at`, mutably: a sealed chunk still shared with a clone is copied first.
    pub(crate) fn get_mut(&mut self, at: usize) -> &mut T {
        let (chunk, i) = (at / CHUNK, at % CHUNK);
        assert!(chunk >= self.dropped, "item {at} was dropped");
        match self.sealed.get_mut(chunk - self.dropped) {
            Some(sealed) => &mut Arc::make_mut(sealed)[i],
            None => &mut self.open[i],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_shares_sealed_chunks_and_keeps_what_it_saw() {
        let mut items: ChunkedVec<u32, 4> = ChunkedVec::default();
        for i in 0..10 {
            assert_eq!(items.push(i), i as usize);
        }
        assert_eq!((items.len(), items.sealed().len()), (10, 2));
        let frozen = items.clone();
        assert!(Arc::ptr_eq(&frozen.sealed()[1], &items.sealed()[1]));
        *items.get_mut(1) = 100;
        *items.get_mut(9) = 900;
        items.push(10);
        assert!(!Arc::ptr_eq(&frozen.sealed()[0], &items.sealed()[0]));
        assert!(Arc::ptr_eq(&frozen.sealed()[1], &items.sealed()[1]));
        assert_eq!(
            frozen.iter().copied().collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        let now: Vec<u32> = items.iter().copied().collect();
        assert_eq!(now, [0, 100, 2, 3, 4, 5, 6, 7, 8, 900, 10]);
    }

    #[test]
    fn dropped_chunks_keep_the_positions_of_the_rest() {
        let mut items: ChunkedVec<u32, 4> = ChunkedVec::default();
        for i in 0..10 {
            items.push(i);
        }
        items.drop_front(2);
        assert_eq!(
            (items.len(), items.dropped(), items.sealed().len()),
            (10, 2, 0)
        );
        assert_eq!((*items.get(8), *items.get(9)), (8, 9));
        assert_eq!(items.iter().copied().collect::<Vec<_>>(), [8, 9]);
        assert_eq!(items.push(10), 10);
        *items.get_mut(8) = 80;
        assert_eq!(*items.get(8), 80);
        let mut later: ChunkedVec<u32, 4> = ChunkedVec::starting_after(3);
        assert_eq!(later.push(7), 12);
    }

    #[test]
    fn pairs_of_items_change_in_any_chunks_and_clones_keep_theirs() {
        let mut items: ChunkedVec<u32, 4> = ChunkedVec::default();
        for i in 0..10 {
            items.push(i);
        }
        let frozen = items.clone();
        // Same sealed chunk, two sealed chunks, sealed and open, either order.
        for (a, b) in [(1, 2), (2, 1), (1, 6), (6, 1), (5, 9), (9, 5)] {
            let [x, y] = items.get_pair_mut(a, b);
            (*x, *y) = (*x + 100, *y + 1000);
        }
        let now: Vec<u32> = items.iter().copied().collect();
        assert_eq!(now, [0, 2201, 1102, 3, 4, 1105, 1106, 7, 8, 1109]);
        assert_eq!(
            frozen.iter().copied().collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
    }
}
