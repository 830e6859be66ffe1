//! Recovery, pure: a partition's latest good snapshot and its log segments in, a ledger and
//! what to cut from the newest segment out. The runtime reads the bytes and carries out the
//! cut; every rule about what to believe lives here.
//!
//! The rules:
//! - Snapshots are offered newest first; the first that decodes intact, with the chunk files
//!   it names, and belongs to this partition layout is taken. Any other is ignored with a
//!   warning: the log holds everything a snapshot does.
//! - Segments are replayed in order after the snapshot's lsn, one at a time (the caller reads
//!   one segment's bytes per call, so memory is bounded by the snapshot and one segment).
//! - Only the newest segment may end in bytes that are not whole records: the zero-filled
//!   space a file storage preallocates, or a *torn or stale range*: writes no completed sync
//!   covered, which a power loss keeps in any subset, so whole records may follow a hole. The
//!   codec tells that apart from damage to synced data by the sync marks the writer leaves
//!   after every sync ([`crate::log::codec`], "Where a log ends"). A torn or stale range and
//!   everything after it is cut, and the cut is logged with its offset and byte count.
//! - Damage that a sync mark vouches for is in data a completed sync covered: an error that
//!   names the segment and the byte offset, never a cut. A single copy cannot repair it, and
//!   cutting it would drop acknowledged records.
//! - An older segment was synced and cut to its last record before the next was created, so
//!   a partial record there, or damage anywhere in it, is such an error too.
//! - Lsns are contiguous: from the snapshot to the first record replayed, and from each
//!   segment to the next. A gap (a lost segment) is an error that names the missing lsn.

use crate::ledger::cold::ChunkRead;
use crate::ledger::{ApplyError, Ledger, RecordMeta};
use crate::log::codec::{decode_log, CodecError, Record, RecordReader};
use crate::log::snapshot::{decode_snapshot_cold, decode_snapshot_with};
use crate::model::event::Lsn;
use crate::model::partition::PartitionId;

/// What recovery found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub partition: PartitionId,
    pub snapshot_lsn: Option<Lsn>,
    /// Chunk files the snapshot recovered from refers to (all read and found intact) that
    /// its snapshots may refer to again. Offered with a reader, only the leading indexed
    /// ones (version 2), whose rows stay on disk: the next snapshot writes the rest again,
    /// indexed.
    pub snapshot_chunks: usize,
    pub records_replayed: u64,
    pub torn_bytes_dropped: u64,
    /// Records the partition's own log lacked and a node journal had (appended again).
    pub records_redone: u64,
    pub last_lsn: Lsn,
    pub transfers_resumed: usize,
}

/// Why a log cannot be recovered.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("log {name} is corrupt at byte offset {offset}: {detail}")]
    Corrupt {
        name: String,
        offset: u64,
        detail: String,
    },
    #[error(
        "log {name} does not follow what precedes it: lsn {expected} is missing (the segment \
         goes on at lsn {found}); a segment or records were lost"
    )]
    Gap {
        name: String,
        expected: Lsn,
        found: Lsn,
    },
    #[error("log does not replay: {0}")]
    Replay(#[from] ApplyError),
}

/// A recovery in progress: offer snapshots, then replay segments, then finish.
pub struct Recovery {
    ledger: Ledger,
    report: RecoveryReport,
    snapshot_taken: bool,
}

impl Recovery {
    /// Starts from the empty ledger of `partition` of `partitions`.
    pub fn new(partition: PartitionId, partitions: u32) -> Recovery {
        Recovery {
            ledger: Ledger::new(partition, partitions),
            report: RecoveryReport {
                partition,
                ..RecoveryReport::default()
            },
            snapshot_taken: false,
        }
    }

    /// Offers the snapshot `name` with its chunk files; returns whether it was taken (then
    /// offer no other). Offer the newest first.
    pub fn offer_snapshot(&mut self, name: &str, bytes: &[u8], chunks: &[Vec<u8>]) -> bool {
        assert!(!self.snapshot_taken, "one snapshot at most");
        let partition = self.report.partition;
        match decode_snapshot_with(bytes, chunks) {
            Ok(state)
                if state.partition() == partition
                    && state.partitions() == self.ledger.partitions() =>
            {
                self.report.snapshot_lsn = Some(state.last_applied().lsn);
                self.report.snapshot_chunks = chunks.len();
                self.ledger = state;
                self.snapshot_taken = true;
                true
            }
            Ok(_) => {
                tracing::warn!(
                    partition,
                    name,
                    "snapshot of another partition layout ignored"
                );
                false
            }
            Err(error) => {
                tracing::warn!(partition, name, %error, "bad snapshot ignored");
                false
            }
        }
    }

    /// Offers the snapshot `name`, whose chunk files `reader` reads, one at a time: their
    /// rows stay on disk where they can (see [`decode_snapshot_cold`]). Returns whether it was
    /// taken (then offer no other). Offer the newest first.
    pub fn offer_snapshot_cold(
        &mut self,
        name: &str,
        bytes: &[u8],
        reader: std::sync::Arc<dyn ChunkRead>,
    ) -> bool {
        assert!(!self.snapshot_taken, "one snapshot at most");
        let partition = self.report.partition;
        match decode_snapshot_cold(bytes, reader) {
            Ok(state)
                if state.partition() == partition
                    && state.partitions() == self.ledger.partitions() =>
            {
                self.report.snapshot_lsn = Some(state.last_applied().lsn);
                self.report.snapshot_chunks = state.cold_transfer_chunks();
                self.ledger = state;
                self.snapshot_taken = true;
                true
            }
            Ok(_) => {
                tracing::warn!(
                    partition,
                    name,
                    "snapshot of another partition layout ignored"
                );
                false
            }
            Err(error) => {
                tracing::warn!(partition, name, %error, "bad snapshot ignored");
                false
            }
        }
    }

    /// The lsn the log must be read after.
    pub fn replay_after(&self) -> Lsn {
        self.ledger.last_applied().lsn
    }

    /// Replays segment `name` (whose first record is `first_lsn`); `newest` says whether it
    /// is the last segment. Returns the length to cut the segment to, when it must be cut.
    pub fn replay_segment(
        &mut self,
        name: &str,
        first_lsn: Lsn,
        bytes: &[u8],
        newest: bool,
    ) -> Result<Option<u64>, RecoveryError> {
        let decoded = decode_log(bytes, first_lsn).map_err(|e| RecoveryError::Corrupt {
            name: name.to_string(),
            offset: codec_offset(&e),
            detail: e.to_string(),
        })?;
        let cut = (decoded.valid_len < bytes.len()).then_some(decoded.valid_len as u64);
        if let Some(valid_len) = cut {
            if !newest {
                return Err(RecoveryError::Corrupt {
                    name: name.to_string(),
                    offset: valid_len,
                    detail: "a segment that is not the newest ends in a partial record".into(),
                });
            }
            if decoded.torn_tail {
                self.report.torn_bytes_dropped = bytes.len() as u64 - valid_len;
                let partition = self.report.partition;
                let dropped = self.report.torn_bytes_dropped;
                tracing::warn!(
                    partition,
                    name,
                    offset = valid_len,
                    dropped,
                    "newest log segment cut: {dropped} bytes from byte {valid_len} on were a \
                     torn or stale range that no completed sync covered"
                );
            }
        }
        for record in &decoded.records {
            self.apply_next(name, record)?;
        }
        Ok(cut)
    }

    /// Applies `record` if it is the next one (see [`apply_next`]), counting it.
    fn apply_next(&mut self, name: &str, record: &Record) -> Result<bool, RecoveryError> {
        let applied = apply_next(&mut self.ledger, name, record)?;
        self.report.records_replayed += u64::from(applied);
        Ok(applied)
    }

    /// Replays a batch that a node journal made durable (records from `first_lsn`, as they
    /// were appended), after the partition's own log: the records the log already holds are
    /// skipped, the rest must follow it without a gap. Returns where the records the log
    /// lacks begin, `(their first lsn, byte offset in bytes)`, for the caller to append them.
    pub fn replay_journaled(
        &mut self,
        first_lsn: Lsn,
        bytes: &[u8],
    ) -> Result<Option<(Lsn, usize)>, RecoveryError> {
        let before = self.ledger.last_applied().lsn;
        let missing_from = apply_batch(&mut self.ledger, "the node journal", first_lsn, bytes)?;
        let redone = self.ledger.last_applied().lsn - before;
        self.report.records_replayed += redone;
        self.report.records_redone += redone;
        Ok(missing_from)
    }

    /// The recovered ledger and the report.
    pub fn finish(mut self) -> (Ledger, RecoveryReport) {
        self.report.last_lsn = self.ledger.last_applied().lsn;
        self.report.transfers_resumed = self.ledger.unfinished_transfers().len();
        (self.ledger, self.report)
    }
}

fn codec_offset(error: &CodecError) -> u64 {
    match error {
        CodecError::Corrupt { offset, .. }
        | CodecError::UnsupportedVersion { offset, .. }
        | CodecError::LsnGap { offset, .. } => *offset,
    }
}

/// Applies `record` to `ledger` if it is the next one; skips it if the ledger already has it
/// (a snapshot, or the log before a journal's batch or a replicated entry). Returns whether
/// it applied it. `name` says where the record came from, for the error.
fn apply_next(ledger: &mut Ledger, name: &str, record: &Record) -> Result<bool, RecoveryError> {
    let expected = ledger.last_applied().lsn + 1;
    if record.lsn < expected {
        return Ok(false);
    }
    // Within a segment the codec checks that lsns go up by one; across segments, from the
    // snapshot to the log, and from the log to a journal's batch or a replicated entry, it
    // is checked here: `apply` alone would take a jump forward and silently lose what lay in
    // between.
    if record.lsn > expected {
        return Err(RecoveryError::Gap {
            name: name.to_string(),
            expected,
            found: record.lsn,
        });
    }
    let meta = RecordMeta {
        lsn: record.lsn,
        timestamp: record.timestamp,
    };
    ledger.apply(meta, &record.event)?;
    Ok(true)
}

/// Applies a batch of whole records (lsns from `first_lsn`, as a partition appended them)
/// after what `ledger` holds: the records it already has are skipped, the rest must follow
/// without a gap. The batch comes from a checksummed container (a journal round, a Raft
/// entry), so anything but whole records in it is corruption. Returns where the records
/// the ledger lacked begin, `(their first lsn, byte offset in bytes)`.
pub fn apply_batch(
    ledger: &mut Ledger,
    name: &str,
    first_lsn: Lsn,
    bytes: &[u8],
) -> Result<Option<(Lsn, usize)>, RecoveryError> {
    let corrupt = |error: CodecError| RecoveryError::Corrupt {
        name: name.to_string(),
        offset: codec_offset(&error),
        detail: error.to_string(),
    };
    let mut reader = RecordReader::new(bytes, first_lsn);
    let mut missing_from = None;
    loop {
        let at = reader.valid_len();
        let Some(record) = reader.next_record().map_err(corrupt)? else {
            break;
        };
        if apply_next(ledger, name, &record)? {
            missing_from.get_or_insert((record.lsn, at));
        }
    }
    if reader.valid_len() != bytes.len() {
        return Err(RecoveryError::Corrupt {
            name: name.to_string(),
            offset: reader.valid_len() as u64,
            detail: "a batch that is not whole records".into(),
        });
    }
    Ok(missing_from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::codec::encode_sync_mark;

    /// A segment holding account-opening records `lsns` (each opens its own account).
    fn segment(lsns: std::ops::RangeInclusive<Lsn>) -> Vec<u8> {
        crate::log::codec::opening_records(lsns)
    }

    #[test]
    fn a_journaled_batch_redoes_only_what_the_log_lacks_and_never_over_a_gap() {
        let mut recovery = Recovery::new(0, 1);
        recovery
            .replay_segment("s1", 1, &segment(1..=5), true)
            .unwrap();
        // Records 4 and 5 are in the log already; 6 and 7 are missing from it.
        let batch = segment(4..=7);
        let (lsn, offset) = recovery.replay_journaled(4, &batch).unwrap().unwrap();
        assert_eq!(lsn, 6);
        assert_eq!(
            &batch[offset..],
            &segment(6..=7)[..],
            "the records to append again"
        );
        // A batch wholly in the log redoes nothing.
        assert_eq!(recovery.replay_journaled(2, &segment(2..=3)).unwrap(), None);
        // One that skips lsn 8 is a gap, named.
        let gap = recovery.replay_journaled(9, &segment(9..=9)).unwrap_err();
        assert!(
            matches!(
                gap,
                RecoveryError::Gap {
                    expected: 8,
                    found: 9,
                    ..
                }
            ),
            "{gap}"
        );
        // A batch that is not whole records was handed in damaged.
        let mut cut = segment(8..=8);
        cut.truncate(cut.len() - 1);
        assert!(matches!(
            recovery.replay_journaled(8, &cut),
            Err(RecoveryError::Corrupt { .. })
        ));
        let (_, report) = recovery.finish();
        assert_eq!((report.last_lsn, report.records_redone), (7, 2));
    }

    #[test]
    fn contiguous_segments_replay_and_a_missing_one_is_named() {
        let mut recovery = Recovery::new(0, 1);
        assert_eq!(
            recovery
                .replay_segment("s1", 1, &segment(1..=3), false)
                .unwrap(),
            None
        );
        assert_eq!(
            recovery
                .replay_segment("s2", 4, &segment(4..=5), true)
                .unwrap(),
            None
        );
        assert_eq!(recovery.finish().1.last_lsn, 5);

        let mut recovery = Recovery::new(0, 1);
        recovery
            .replay_segment("s1", 1, &segment(1..=3), false)
            .unwrap();
        let error = recovery
            .replay_segment("s3", 6, &segment(6..=7), true)
            .unwrap_err();
        assert!(
            matches!(
                error,
                RecoveryError::Gap {
                    expected: 4,
                    found: 6,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("lsn 4 is missing"), "{error}");
    }

    #[test]
    fn a_partial_record_cuts_the_newest_segment_only() {
        let mut torn = segment(1..=2);
        torn.truncate(torn.len() - 3);
        let mut recovery = Recovery::new(0, 1);
        let cut = recovery.replay_segment("s1", 1, &torn, true).unwrap();
        assert!(cut.is_some_and(|len| len < torn.len() as u64));
        let (_, report) = recovery.finish();
        assert_eq!(report.last_lsn, 1);
        assert!(report.torn_bytes_dropped > 0);

        let mut recovery = Recovery::new(0, 1);
        let error = recovery.replay_segment("s1", 1, &torn, false).unwrap_err();
        assert!(matches!(error, RecoveryError::Corrupt { .. }), "{error}");
    }

    /// A segment as the writer lays it out: a header, then one batch per range of lsns, each
    /// followed by the sync mark written once its sync completed (`synced` batches only).
    fn marked_segment(first_lsn: Lsn, batches: &[(Lsn, Lsn)], synced: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        encode_sync_mark(0, first_lsn, &mut bytes);
        for (i, &(first, last)) in batches.iter().enumerate() {
            bytes.extend_from_slice(&segment(first..=last));
            if i < synced {
                let len = bytes.len() as u64;
                encode_sync_mark(len, first_lsn, &mut bytes);
            }
        }
        bytes
    }

    /// Runs `work` with a subscriber that writes every event into the returned text.
    fn logged<T>(work: impl FnOnce() -> T) -> (T, String) {
        #[derive(Clone, Default)]
        struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let out = tracing::subscriber::with_default(subscriber, work);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        (out, text)
    }

    #[test]
    fn a_stale_range_then_valid_records_in_the_newest_segment_is_cut_and_logged() {
        // Two batches synced (1..=3, 4..=5); the third (6..=9) was being written when the
        // power went: its first sector never reached the disk, later ones did.
        let mut bytes = marked_segment(1, &[(1, 3), (4, 5), (6, 9)], 2);
        let unsynced = marked_segment(1, &[(1, 3), (4, 5)], 2).len();
        bytes[unsynced..unsynced + 30].fill(0);
        bytes.resize(bytes.len() + 700, 0);
        let mut recovery = Recovery::new(0, 1);
        let (cut, log) = logged(|| recovery.replay_segment("log-1.seg", 1, &bytes, true));
        assert_eq!(cut.unwrap(), Some(unsynced as u64));
        let (_, report) = recovery.finish();
        assert_eq!(report.last_lsn, 5);
        let dropped = (bytes.len() - unsynced) as u64;
        assert_eq!(report.torn_bytes_dropped, dropped);
        assert!(log.contains("log-1.seg"), "{log}");
        assert!(
            log.contains(&format!("{dropped} bytes from byte {unsynced}")),
            "{log}"
        );
    }

    #[test]
    fn damage_inside_the_synced_range_is_an_error_naming_file_and_offset() {
        let mut bytes = marked_segment(1, &[(1, 3), (4, 5), (6, 9)], 3);
        let second = marked_segment(1, &[(1, 3)], 1).len();
        bytes[second + 12] ^= 0x20;
        let before = bytes.clone();
        for newest in [true, false] {
            let mut recovery = Recovery::new(0, 1);
            let error = recovery
                .replay_segment("log-1.seg", 1, &bytes, newest)
                .unwrap_err();
            assert!(
                matches!(&error, RecoveryError::Corrupt { name, offset, .. }
                    if name == "log-1.seg" && *offset == second as u64),
                "{error}"
            );
            let message = error.to_string();
            assert!(
                message.contains(&format!("log log-1.seg is corrupt at byte offset {second}")),
                "{message}"
            );
        }
        assert_eq!(bytes, before, "recovery cuts nothing itself");
    }

    #[test]
    fn an_older_segment_with_an_unsynced_looking_tail_is_an_error() {
        let bytes = marked_segment(1, &[(1, 3), (4, 5)], 1);
        let mut recovery = Recovery::new(0, 1);
        let mut torn = bytes.clone();
        torn.truncate(bytes.len() - 5);
        let error = recovery
            .replay_segment("log-1.seg", 1, &torn, false)
            .unwrap_err();
        assert!(matches!(error, RecoveryError::Corrupt { .. }), "{error}");
    }
}
