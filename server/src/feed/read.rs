//! Reading a partition's records after an lsn from its log segments.
//!
//! Only records up to the durable lsn the caller passes are read, as for history
//! ([`crate::history`]): the bytes after it may be an append in progress. Only the segments
//! that can hold the wanted records are opened: the one holding `after + 1` and the newer
//! ones, until the page is full.

use std::fs;

use walletd_core::log::codec::{Record, RecordReader};
use walletd_core::model::event::Lsn;
use walletd_core::model::partition::PartitionId;

use crate::datadir::DataDir;
use crate::history::{codec_offset, LogError};

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

/// The records of `partition` with `after < lsn <= durable_lsn`, oldest first, at most
/// `limit` of them.
pub fn records_after(
    dir: &DataDir,
    partition: PartitionId,
    after: Lsn,
    durable_lsn: Lsn,
    limit: usize,
) -> Result<Vec<Record>, FeedReadError> {
    assert!(after < durable_lsn && limit > 0);
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
    let mut records = Vec::with_capacity(limit.min(1024));
    for (i, (first_lsn, path)) in segments.iter().enumerate().skip(start) {
        let display = path.display().to_string();
        let bytes = fs::read(path).map_err(io(display.clone()))?;
        let mut reader = RecordReader::new(&bytes, *first_lsn);
        loop {
            let next = reader.next_record().map_err(|e| LogError::Corrupt {
                path: display.clone(),
                offset: codec_offset(&e),
                detail: e.to_string(),
            })?;
            let Some(record) = next else { break };
            if record.lsn <= after {
                continue;
            }
            if record.lsn > durable_lsn {
                return Ok(records);
            }
            records.push(record);
            if records.len() == limit || record.lsn == durable_lsn {
                return Ok(records);
            }
        }
        let newest = i + 1 == segments.len();
        if reader.torn_tail() && !newest {
            return Err(LogError::Corrupt {
                path: display,
                offset: reader.valid_len() as u64,
                detail: "a segment that is not the newest ends in a partial record".into(),
            }
            .into());
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use walletd_core::log::codec::decode_log;

    fn fixture_records() -> Vec<Record> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tcc_cancels.log");
        decode_log(&fs::read(path).unwrap(), 1).unwrap().records
    }

    /// Writes `records` as segments cut before each lsn in `cuts`.
    fn write_segments(dir: &DataDir, partition: PartitionId, records: &[Record], cuts: &[Lsn]) {
        let partition_dir = dir.partition_dir(partition);
        fs::create_dir_all(&partition_dir).unwrap();
        let mut bounds: Vec<Lsn> = vec![records[0].lsn];
        bounds.extend_from_slice(cuts);
        for (i, first) in bounds.iter().enumerate() {
            let end = bounds.get(i + 1).copied().unwrap_or(Lsn::MAX);
            let mut bytes = Vec::new();
            for record in records.iter().filter(|r| r.lsn >= *first && r.lsn < end) {
                walletd_core::log::codec::encode_record(record, &mut bytes);
            }
            let name = format!("log-{first:020}.seg");
            fs::write(partition_dir.join(name), bytes).unwrap();
        }
    }

    #[test]
    fn reads_the_records_after_an_lsn_across_segments_up_to_the_durable_lsn() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create_or_check(tmp.path(), 2).unwrap();
        let all = fixture_records();
        write_segments(&dir, 1, &all, &[10, 20]);
        let lsns = |records: Vec<Record>| records.iter().map(|r| r.lsn).collect::<Vec<_>>();
        assert_eq!(
            lsns(records_after(&dir, 1, 0, 31, 5).unwrap()),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(
            lsns(records_after(&dir, 1, 8, 31, 4).unwrap()),
            vec![9, 10, 11, 12]
        );
        assert_eq!(
            lsns(records_after(&dir, 1, 18, 22, 100).unwrap()),
            vec![19, 20, 21, 22]
        );
        assert_eq!(lsns(records_after(&dir, 1, 30, 31, 100).unwrap()), vec![31]);
        let read = records_after(&dir, 1, 0, 31, 100).unwrap();
        assert_eq!(read, all);
    }

    #[test]
    fn records_removed_behind_a_snapshot_are_reported_with_the_first_lsn_left() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create_or_check(tmp.path(), 2).unwrap();
        let all = fixture_records();
        write_segments(&dir, 0, &all, &[10, 20]);
        fs::remove_file(dir.segments(0).unwrap()[0].1.clone()).unwrap();
        let error = records_after(&dir, 0, 3, 31, 10).unwrap_err();
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
        assert_eq!(records_after(&dir, 0, 9, 31, 1).unwrap()[0].lsn, 10);
    }
}
