//! Reading a partition's records after an lsn from its log segments.
//!
//! Only records up to the durable lsn the caller passes are read, as for history
//! ([`crate::history`]): the bytes after it may be an append in progress. Only the segments
//! that can hold the wanted records are opened: the one holding `after + 1` and the newer
//! ones, until the page is full.

use std::ops::ControlFlow;

use walletd_core::log::codec::{Record, RecordReader};
use walletd_core::model::event::Lsn;
use walletd_core::model::partition::PartitionId;

use super::cursors::Cursor;
use crate::datadir::DataDir;
use crate::history::{read_from, records_of_segment, LogError};

/// Why the records after an lsn cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FeedReadError {
    /// The log no longer holds the record after `after`: it was removed behind a snapshot.
    #[error(
        "the records after lsn {after} are no longer in the log; it starts at lsn {first_lsn}"
    )]
    Compacted { after: Lsn, first_lsn: Lsn },
    #[error(transparent)]
    Log(#[from] LogError),
}

/// A page of records and where the record after its last one starts.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub records: Vec<Record>,
    /// The cursor after the last record (`None` for an empty page).
    pub next: Option<Cursor>,
}

/// The records of `partition` with `after < lsn <= durable_lsn`, oldest first, at most
/// `limit` of them. With `hint`, the cursor of the record after `after` (where an earlier
/// page ended), reading starts there: only the bytes from it on are read and decoded. A
/// hint is only a hint: a read from it that fails is done again from the segment list.
pub fn records_after(
    dir: &DataDir,
    partition: PartitionId,
    after: Lsn,
    durable_lsn: Lsn,
    limit: usize,
    hint: Option<Cursor>,
) -> Result<Page, FeedReadError> {
    assert!(after < durable_lsn && limit > 0);
    let read = |hint| read_page(dir, partition, (after, durable_lsn), limit, hint);
    // Every durable record is in the log, so a whole page is full or ends at the durable
    // lsn; a page read from a hint that is neither was read from a file the cursor does not
    // fit (restored from a backup, say), and is read again.
    let whole = |page: &Page| {
        page.records.len() == limit || page.records.last().is_some_and(|r| r.lsn == durable_lsn)
    };
    match read(hint) {
        Ok(page) if hint.is_none() || whole(&page) => Ok(page),
        Err(error) if hint.is_none() => Err(error),
        _ => read(None),
    }
}

/// [`records_after`] for the lsns in `(after, durable_lsn]`, from `hint` if there is one.
fn read_page(
    dir: &DataDir,
    partition: PartitionId,
    (after, durable_lsn): (Lsn, Lsn),
    limit: usize,
    hint: Option<Cursor>,
) -> Result<Page, FeedReadError> {
    let io = |path: String| move |source| LogError::Io { path, source };
    let partition_dir = dir.partition_dir(partition);
    let segments = dir
        .segments(partition)
        .map_err(io(partition_dir.display().to_string()))?;
    let wanted = after + 1;
    // The segment that holds `wanted`: the newest one that starts at or before it.
    let Some(start) = segments.iter().rposition(|(first, _)| *first <= wanted) else {
        let first_lsn = segments
            .first()
            .map_or(durable_lsn + 1, |(first, _)| *first);
        return Err(FeedReadError::Compacted { after, first_lsn });
    };
    // A hint for a segment that is gone, or older than the one holding `wanted`, is stale.
    let hint = hint.filter(|cursor| {
        segments
            .iter()
            .skip(start)
            .any(|(first, _)| *first == cursor.segment_first)
    });
    let mut page = Page {
        records: Vec::with_capacity(limit.min(1024)),
        next: None,
    };
    for (i, (first_lsn, path)) in segments.iter().enumerate().skip(start) {
        let resume_at = match hint {
            Some(cursor) if cursor.segment_first > *first_lsn => continue,
            Some(cursor) if cursor.segment_first == *first_lsn => cursor.offset,
            _ => 0,
        };
        let display = path.display().to_string();
        let bytes = read_from(path, resume_at).map_err(io(display.clone()))?;
        if resume_at > bytes.len() {
            return Err(LogError::Corrupt {
                path: display,
                offset: resume_at as u64,
                detail: "the file is shorter than the cursor taken in it".into(),
            }
            .into());
        }
        let mut reader = match resume_at {
            0 => RecordReader::new(&bytes, *first_lsn),
            offset => RecordReader::resume(&bytes, offset, wanted),
        };
        let newest = i + 1 == segments.len();
        let flow = records_of_segment(path, &mut reader, newest, |record, end| {
            if record.lsn <= after {
                return ControlFlow::Continue(());
            }
            if record.lsn > durable_lsn {
                return ControlFlow::Break(());
            }
            let last = record.lsn == durable_lsn;
            page.records.push(record);
            page.next = Some(Cursor {
                segment_first: *first_lsn,
                offset: end,
            });
            if page.records.len() == limit || last {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })?;
        if flow.is_break() {
            return Ok(page);
        }
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;
    use walletd_core::log::codec::{decode_log, encode_record, encode_sync_mark};

    fn fixture_records() -> Vec<Record> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tcc_cancels.log");
        decode_log(&fs::read(path).unwrap(), 1).unwrap().records
    }

    /// Writes `records` as segments cut before each lsn in `cuts`. `headed`: each segment
    /// starts with a segment header and has a sync mark after every third record, as the
    /// segment writer leaves them; otherwise records only, as logs written before sync marks.
    fn write_segments(
        dir: &DataDir,
        partition: PartitionId,
        records: &[Record],
        cuts: &[Lsn],
        headed: bool,
    ) {
        let partition_dir = dir.partition_dir(partition);
        fs::create_dir_all(&partition_dir).unwrap();
        let mut bounds: Vec<Lsn> = vec![records[0].lsn];
        bounds.extend_from_slice(cuts);
        for (i, first) in bounds.iter().enumerate() {
            let end = bounds.get(i + 1).copied().unwrap_or(Lsn::MAX);
            let mut bytes = Vec::new();
            if headed {
                encode_sync_mark(0, *first, &mut bytes);
            }
            for record in records.iter().filter(|r| r.lsn >= *first && r.lsn < end) {
                encode_record(record, &mut bytes);
                if headed && record.lsn % 3 == 0 {
                    let synced = bytes.len() as u64;
                    encode_sync_mark(synced, *first, &mut bytes);
                }
            }
            let name = format!("log-{first:020}.seg");
            fs::write(partition_dir.join(name), bytes).unwrap();
        }
    }

    fn lsns(page: Page) -> Vec<Lsn> {
        page.records.iter().map(|r| r.lsn).collect()
    }

    #[test]
    fn reads_the_records_after_an_lsn_across_segments_up_to_the_durable_lsn() {
        for headed in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = DataDir::create_or_check(tmp.path(), 2).unwrap();
            let all = fixture_records();
            write_segments(&dir, 1, &all, &[10, 20], headed);
            let read = |after, durable, limit| {
                lsns(records_after(&dir, 1, after, durable, limit, None).unwrap())
            };
            assert_eq!(read(0, 31, 5), vec![1, 2, 3, 4, 5]);
            assert_eq!(read(8, 31, 4), vec![9, 10, 11, 12]);
            assert_eq!(read(18, 22, 100), vec![19, 20, 21, 22]);
            assert_eq!(read(30, 31, 100), vec![31]);
            let whole = records_after(&dir, 1, 0, 31, 100, None).unwrap();
            assert_eq!(whole.records, all);
        }
    }

    #[test]
    fn a_consumer_following_page_by_page_from_cursors_reads_what_fresh_reads_do() {
        for headed in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = DataDir::create_or_check(tmp.path(), 2).unwrap();
            let all = fixture_records();
            write_segments(&dir, 0, &all, &[10, 20], headed);
            let last = all.last().unwrap().lsn;
            for limit in [1, 2, 3, 7, 100] {
                let (mut after, mut hint, mut followed) = (0, None, Vec::new());
                while after < last {
                    let page = records_after(&dir, 0, after, last, limit, hint).unwrap();
                    let fresh = records_after(&dir, 0, after, last, limit, None).unwrap();
                    assert_eq!(page.records, fresh.records, "limit {limit} after {after}");
                    assert_eq!(page.next, fresh.next);
                    after = page.records.last().unwrap().lsn;
                    hint = page.next;
                    followed.extend(page.records);
                }
                assert_eq!(followed, all, "limit {limit}, headed {headed}");
            }
        }
    }

    #[test]
    fn a_cursor_that_no_longer_fits_the_log_is_not_trusted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create_or_check(tmp.path(), 2).unwrap();
        let all = fixture_records();
        write_segments(&dir, 0, &all, &[10, 20], true);
        let page = records_after(&dir, 0, 0, 31, 12, None).unwrap();
        let next = page.next.unwrap();
        assert_eq!(next.segment_first, 10);
        // A cursor past the end of its file, or naming a segment that is gone: read afresh.
        let beyond = Cursor {
            offset: 1 << 20,
            ..next
        };
        let gone = Cursor {
            segment_first: 5,
            ..next
        };
        // Or not at a frame boundary (the file is not the one the cursor was taken in), in
        // the middle of the log or in its last segment, past its last sync mark.
        let misaligned = Cursor {
            offset: next.offset - 3,
            ..next
        };
        let tail = records_after(&dir, 0, 0, 31, 30, None)
            .unwrap()
            .next
            .unwrap();
        let misaligned_in_tail = Cursor {
            offset: tail.offset - 5,
            ..tail
        };
        let page = records_after(&dir, 0, 30, 31, 3, Some(misaligned_in_tail)).unwrap();
        assert_eq!(lsns(page), vec![31]);
        for hint in [beyond, gone, misaligned] {
            let page = records_after(&dir, 0, 12, 31, 3, Some(hint)).unwrap();
            assert_eq!(lsns(page), vec![13, 14, 15], "{hint:?}");
        }
    }

    #[test]
    fn records_removed_behind_a_snapshot_are_reported_with_the_first_lsn_left() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create_or_check(tmp.path(), 2).unwrap();
        let all = fixture_records();
        write_segments(&dir, 0, &all, &[10, 20], false);
        fs::remove_file(dir.segments(0).unwrap()[0].1.clone()).unwrap();
        let error = records_after(&dir, 0, 3, 31, 10, None).unwrap_err();
        assert!(
            matches!(
                error,
                FeedReadError::Compacted {
                    after: 3,
                    first_lsn: 10
                }
            ),
            "{error}"
        );
        // From the first record left on, the feed goes on.
        let page = records_after(&dir, 0, 9, 31, 1, None).unwrap();
        assert_eq!(page.records[0].lsn, 10);
    }
}
