//! Terms that some rows of the transfers table carry beside their packed fields: a hold's
//! expiry and what was captured of it, a multi-leg transaction's legs and the leg that
//! failed at its home, a refund's original, and a participant's side of a transaction (its
//! part).
//!
//! # Why the terms live with the row
//! A hold's terms and a transaction's legs used to be tables of their own, keyed by the
//! row's key, in memory for good: the transfers table's final rows go to chunk files and
//! leave memory, but the terms beside them stayed, and every snapshot wrote every hold and
//! transaction ever recorded. Kept by the row's
//! position instead, the terms go where the row goes: they move on with a row in flight
//! (see `transfer_table`, "Rows in flight move on"), are written once, into the row's chunk
//! file, leave memory with its chunk, and come back with the row from disk. Their key is the
//! row's, so they need no index or key bytes of their own.
//!
//! Terms are kept per chunk of rows, in a map from the row's place in its chunk: most rows
//! (transfers) have none, so a dense column would cost every transfer a slot. A sealed
//! chunk's map is shared with snapshot images (`Arc`), as the rows are; a change to terms a
//! snapshot still reads copies that chunk's map first.

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::ledger::holds::HoldTerms;
use crate::ledger::transactions::{PartRow, TransactionTerms};
use crate::ledger::transfer_table::CHUNK_ROWS;
use crate::model::ids::TransactionId;

/// What a row carries beyond a transfer's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RowTerms {
    /// The home row is a hold's.
    Hold(HoldTerms),
    /// The home row is a multi-leg transaction's (its first leg's transfer).
    Transaction(TransactionTerms),
    /// The home row is a refund's: the id of the transfer it refunds (from the refund's
    /// destination, see [`crate::ledger::refunds`]). Boxed: inline, an id would make every
    /// row's terms 72 bytes.
    Refund(Box<TransactionId>),
    /// The row is a participant's part of a transaction another partition is home of
    /// ([`crate::ledger::TableRow::Part`]): every such row has these terms.
    Part(PartRow),
}

// Terms sit in a map slot beside their position: 32 bytes with the position (a hold's terms
// are the largest), so a variant that grows them fails the build.
const _: () = assert!(std::mem::size_of::<(u32, RowTerms)>() <= 32);

/// What kind of operation a home row records: told by its terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowKind {
    /// A transfer's, a refund's among them.
    Transfer,
    Hold,
    Transaction,
}

impl RowTerms {
    pub(crate) fn hold(&self) -> Option<HoldTerms> {
        match self {
            RowTerms::Hold(terms) => Some(*terms),
            _ => None,
        }
    }

    pub(crate) fn transaction(&self) -> Option<&TransactionTerms> {
        match self {
            RowTerms::Transaction(terms) => Some(terms),
            _ => None,
        }
    }

    /// The id of the transfer a refund's row refunds.
    pub(crate) fn refund_of(&self) -> Option<TransactionId> {
        match self {
            RowTerms::Refund(original) => Some(**original),
            _ => None,
        }
    }

    pub(crate) fn part(&self) -> Option<&PartRow> {
        match self {
            RowTerms::Part(row) => Some(row),
            _ => None,
        }
    }

    /// The kind of a row with these terms, or without (`None`): a transfer's.
    pub(crate) fn kind_of(terms: Option<&RowTerms>) -> RowKind {
        match terms {
            None | Some(RowTerms::Refund(_)) => RowKind::Transfer,
            Some(RowTerms::Hold(_)) => RowKind::Hold,
            // A part is no home row; it is a transaction's all the same.
            Some(RowTerms::Transaction(_) | RowTerms::Part(_)) => RowKind::Transaction,
        }
    }
}

/// The terms of a table's rows, by position (see the module docs).
#[derive(Debug, Clone, Default)]
pub(crate) struct TermsColumn {
    /// Chunk `first + i`'s terms, by the row's place in its chunk. Chunks up to the last
    /// that has terms; later ones are added as their rows get some.
    chunks: VecDeque<Arc<FxHashMap<u32, RowTerms>>>,
    /// The chunk of `chunks[0]`: those before it left memory.
    first: usize,
}

impl TermsColumn {
    /// An empty column whose first row will be at `chunks * CHUNK_ROWS`.
    pub(crate) fn starting_after(chunks: usize) -> TermsColumn {
        TermsColumn {
            chunks: VecDeque::new(),
            first: chunks,
        }
    }

    fn place(&self, at: usize) -> Option<(usize, u32)> {
        let chunk = (at / CHUNK_ROWS).checked_sub(self.first)?;
        Some((chunk, (at % CHUNK_ROWS) as u32))
    }

    /// The terms of the row at `at`, if it has some.
    #[inline]
    pub(crate) fn get(&self, at: usize) -> Option<&RowTerms> {
        let (chunk, place) = self.place(at)?;
        let map = self.chunks.get(chunk)?;
        if map.is_empty() {
            return None;
        }
        map.get(&place)
    }

    /// The terms of the row at `at` to change, if it has some; a chunk a snapshot image
    /// still shares is copied first.
    pub(crate) fn get_mut(&mut self, at: usize) -> Option<&mut RowTerms> {
        let (chunk, place) = self.place(at)?;
        let map = self.chunks.get_mut(chunk)?;
        if !map.contains_key(&place) {
            return None;
        }
        Arc::make_mut(map).get_mut(&place)
    }

    /// Gives the row at `at` its terms.
    ///
    /// # Panics
    /// If the row's chunk left memory, or the row has terms already.
    pub(crate) fn insert(&mut self, at: usize, terms: RowTerms) {
        let (chunk, place) = self.place(at).expect("terms of a row in memory");
        while self.chunks.len() <= chunk {
            self.chunks.push_back(Arc::default());
        }
        let previous = Arc::make_mut(&mut self.chunks[chunk]).insert(place, terms);
        assert!(previous.is_none(), "row {at} given terms twice");
    }

    /// Takes the terms of the row at `at` away (the row moves on, or is forgotten).
    pub(crate) fn remove(&mut self, at: usize) -> Option<RowTerms> {
        let (chunk, place) = self.place(at)?;
        let map = self.chunks.get_mut(chunk)?;
        if !map.contains_key(&place) {
            return None;
        }
        Arc::make_mut(map).remove(&place)
    }

    /// Drops the terms of the rows before chunk `chunks`, which left memory.
    pub(crate) fn drop_front(&mut self, chunks: usize) {
        while self.first < chunks {
            self.chunks.pop_front();
            self.first += 1;
        }
    }

    /// Rows with terms in memory.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.chunks.iter().map(|map| map.len()).sum()
    }

    /// Bytes the column takes, roughly: each map's slots and control bytes.
    pub(crate) fn bytes(&self) -> usize {
        let slot = std::mem::size_of::<(u32, RowTerms)>() + 1;
        self.chunks.iter().map(|map| map.capacity() * slot).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(expires_at: u64) -> RowTerms {
        RowTerms::Hold(HoldTerms {
            expires_at,
            captured: None,
        })
    }

    #[test]
    fn terms_are_found_by_position_and_go_with_their_chunk() {
        let mut column = TermsColumn::default();
        column.insert(3, hold(1));
        column.insert(CHUNK_ROWS + 5, hold(2));
        column.insert(3 * CHUNK_ROWS, hold(3));
        assert_eq!(column.get(3), Some(&hold(1)));
        assert_eq!(column.get(4), None);
        assert_eq!(column.get(CHUNK_ROWS + 5), Some(&hold(2)));
        assert_eq!(column.get(2 * CHUNK_ROWS + 5), None);
        assert_eq!(column.len(), 3);
        column.drop_front(2);
        assert_eq!(column.get(3), None);
        assert_eq!(column.get(CHUNK_ROWS + 5), None);
        assert_eq!(column.get(3 * CHUNK_ROWS), Some(&hold(3)));
        assert_eq!(column.len(), 1);
    }

    #[test]
    fn a_change_after_a_clone_leaves_the_clone_as_it_was() {
        let mut column = TermsColumn::default();
        column.insert(7, hold(1));
        let image = column.clone();
        if let Some(RowTerms::Hold(terms)) = column.get_mut(7) {
            terms.expires_at = 9;
        }
        assert_eq!(column.remove(7), Some(hold(9)));
        assert_eq!(image.get(7), Some(&hold(1)));
        assert_eq!(column.get(7), None);
        assert_eq!(column.remove(7), None);
    }

    #[test]
    #[should_panic(expected = "given terms twice")]
    fn a_row_is_given_terms_once() {
        let mut column = TermsColumn::default();
        column.insert(1, hold(1));
        column.insert(1, hold(2));
    }
}
