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
}
