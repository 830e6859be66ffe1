//! Where in its log each recent page of the feed ended, so that the next page (a consumer
//! asks for what follows the last lsn it read) decodes only the records after it.
//!
//! Without this, every request read and decoded its segment from the start up to the
//! position asked for: a consumer following the tail of a 64 MiB segment paid for the whole
//! segment on every long-poll. A cursor is a hint: the segment it names may be gone (the log
//! was compacted), in which case the read starts over from the segment list.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use walletd_core::model::event::Lsn;
use walletd_core::model::partition::PartitionId;

/// Cursors kept at most; the oldest is forgotten first. A consumer per partition needs one.
pub const CURSORS_KEPT_MAX: usize = 4096;

/// The byte position in a segment file where the record after some lsn starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The first lsn of the segment (its file name).
    pub segment_first: Lsn,
    /// The offset of the next record's frame in that file.
    pub offset: usize,
}

/// The cursors after the last lsn of recent pages, by partition and lsn.
#[derive(Debug, Default)]
pub struct Cursors {
    inner: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    by_position: HashMap<(PartitionId, Lsn), Cursor>,
    order: VecDeque<(PartitionId, Lsn)>,
}

impl Cursors {
    /// The cursor of the record after `after` in `partition`, if a page ended there lately.
    pub fn get(&self, partition: PartitionId, after: Lsn) -> Option<Cursor> {
        let kept = self.inner.lock().expect("not poisoned");
        kept.by_position.get(&(partition, after)).copied()
    }

    /// Remembers that the record after `lsn` of `partition` starts at `cursor`.
    pub fn put(&self, partition: PartitionId, lsn: Lsn, cursor: Cursor) {
        let mut kept = self.inner.lock().expect("not poisoned");
        if kept.by_position.insert((partition, lsn), cursor).is_some() {
            return;
        }
        kept.order.push_back((partition, lsn));
        while kept.order.len() > CURSORS_KEPT_MAX {
            let oldest = kept.order.pop_front().expect("not empty");
            kept.by_position.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_kept_by_partition_and_lsn_and_the_oldest_go_first() {
        let cursors = Cursors::default();
        let at = |offset| Cursor {
            segment_first: 1,
            offset,
        };
        cursors.put(0, 10, at(100));
        cursors.put(1, 10, at(200));
        assert_eq!(cursors.get(0, 10), Some(at(100)));
        assert_eq!(cursors.get(1, 10), Some(at(200)));
        assert_eq!(cursors.get(0, 11), None);
        for lsn in 0..CURSORS_KEPT_MAX as Lsn {
            cursors.put(2, 1_000 + lsn, at(1));
        }
        assert_eq!(cursors.get(0, 10), None, "the oldest is forgotten first");
        assert_eq!(cursors.get(2, 1_000), Some(at(1)));
        assert_eq!(cursors.get(2, 999 + CURSORS_KEPT_MAX as Lsn), Some(at(1)));
    }
}
