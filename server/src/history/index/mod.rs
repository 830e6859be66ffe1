//! The per-account history index of one partition: history pages and `as_of` balances that
//! cost what they return, not what the log holds.
//!
//! # Design
//! The log stays the only truth; the index is derived from it and can always be rebuilt.
//! It is a sequence of **chunks**, each a contiguous range of at most
//! [`IndexConfig::chunk_records_max`] records of one segment. The newest chunk is built in
//! memory as records become durable; once full (of records, or of entries: see
//! [`IndexConfig::chunk_entries_max`]), or once its segment is sealed, it is
//! written as one file ([`chunk`]) in a directory of its own, `partition-<p>/history/`,
//! apart from the storage's files. A chunk holds, for every account it changes, that account's
//! entries (lsn, the record that describes the movement, and the account's balance, held
//! and incoming amounts *after* the record), the figures before and after the chunk, and a
//! pointer to the account's previous chunk. It also holds a slot per record (where its
//! frame is in the segment, its timestamp) and the Tries in flight at its end (of
//! cross-partition transfers, and the nets of multi-leg transactions).
//!
//! - **A page of history** is found from the account's newest chunk (the in-memory one, or
//!   the newest file that has it) and the previous-chunk pointers: binary searches and reads
//!   of the page's entries, then one read of a frame per movement to name its transaction
//!   and counterparty.
//! - **An `as_of` balance** is one binary search for the chunk of the lsn (or of the first
//!   record past the time: the largest timestamp so far is stored per record, so times
//!   search like lsns), one binary search in its account directory and one in the account's
//!   entries: the figures after each entry are stored, so nothing is summed.
//! - **Figures carry over between chunks**: the first entry of an account in a chunk starts
//!   from its figures after its previous chunk, which the last written chunk's directory
//!   gives from memory (one chunk's accounts, loaded once) and older chunks by binary
//!   search. The only state of the fold is the Tries in flight: cross-partition transfers,
//!   and multi-leg transactions with the nets they moved here.
//!
//! Why not a store such as `redb` or `fjall`: every index entry is appended once and never
//! changed, in lsn order, and the only lookups are "this account's entries before an lsn";
//! immutable sorted files answer that with a few `pread`s and need no write-ahead log, no
//! compaction and no page cache of their own, and a crash costs at most the chunk being
//! written, which the log rebuilds. A B-tree store would rewrite pages per insert and add a
//! second durable structure whose consistency with the log would need proving.
//!
//! # Layout
//! - this file: the index of one partition, opening it (every chunk file checked), and
//!   reading single records of the log its entries point to;
//! - `build`: following the log up to the durable lsn, folding records into the in-memory
//!   chunk, writing chunks;
//! - `read`: pages of movements and balances as of a point;
//! - [`chunk`]: the chunk file format, its checks and its reads;
//! - [`fold`]: what each record does to the accounts of its partition.
//!
//! # Costs
//! Measured with `wallet bench history` (bench/README.md), one partition, 1,000 accounts,
//! chunks of 16,384 records: over 50,000 events, p99 0.067 ms for a read (pages of 50
//! movements and `as_of` balances, alternating); over 5,000,000 events, 0.081 ms. Folding the
//! whole log per read, as before the index, took 1.2 ms at 5,000 events and 148 ms at
//! 500,000. Indexing runs at about 600,000 records a second.
//! - Memory: the in-memory chunk only: per record a 24-byte slot and about 1.3 entries of 48
//!   bytes, so about 13 MiB per partition at the default 131,072 records; plus the account
//!   directory of the newest written chunk (the carry: at most one entry per account that
//!   chunk changed) and the Tries in flight. A multi-leg transaction's record has an entry
//!   per account it moves (up to 128), so a chunk is also written once it holds 524,288
//!   entries: at most 3 MiB of slots and 24 MiB of entries, whatever the records. It does
//!   not grow with the log, except for one header (about 100 bytes) per chunk written.
//! - Disk: per record a 22-byte slot, and per entry 49 bytes plus its details (16 bytes and
//!   the transaction and counterparty ids), and 131 bytes per account per chunk that changes
//!   it: about one and a half times the log for transfers.
//! - A page: a directory search (about ten reads of 131 bytes, mostly from the page cache), an
//!   entries search and two reads of consecutive bytes, per chunk it spans; an `as_of`
//!   balance: the directory search and an entries search. Neither depends on the log's
//!   length. An account untouched for many chunks costs one directory search per chunk it
//!   skipped, when it is next touched or read at a point after them: a walk bounded by its
//!   own idleness.
//! - Chunk files are not synced: one that a power cut leaves short or damaged fails its
//!   length or checksum check. Opening a partition's index reads every chunk file once to
//!   check it; a chunk that fails (or any chunk after a gap) is deleted and rebuilt from the
//!   log.

mod build;
pub mod chunk;
pub mod fold;
mod read;

use std::collections::BTreeMap;
use std::fs;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use walletd_core::log::codec::{Record, RecordReader};
use walletd_core::log::replay::{BalanceAt, Movement, MovementKind};
use walletd_core::model::event::{Event, Lsn};
use walletd_core::model::ids::AccountId;
use walletd_core::model::money::Currency;
use walletd_core::model::partition::PartitionId;

use self::chunk::{ChunkError, Detail, Entry, SealedChunk, Slot};
use self::fold::{Figures, Touch, Tracker};
use super::{records_of_segment, LogError};
use crate::datadir::DataDir;

/// Limits of the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexConfig {
    /// Records per chunk: the bound of the in-memory chunk (about 100 bytes per record), and
    /// how much of the log one file indexes.
    pub chunk_records_max: u32,
    /// Entries per chunk (48 bytes each in memory): a chunk is written once it holds this
    /// many, even short of its records, so that records touching many accounts (a
    /// multi-leg transaction touches up to [`fold::TOUCHES_MAX`]) keep the in-memory chunk
    /// bounded. Transfers touch one or two accounts a record, and reach the record bound
    /// first.
    pub chunk_entries_max: u32,
    /// Most bytes of a segment read at once while indexing.
    pub read_window_bytes: usize,
}

impl Default for IndexConfig {
    fn default() -> IndexConfig {
        IndexConfig {
            chunk_records_max: 1 << 17,
            chunk_entries_max: 1 << 19,
            read_window_bytes: 4 << 20,
        }
    }
}

/// The name of the index directory inside a partition's directory.
pub const INDEX_DIR: &str = "history";

/// One account's part of the in-memory chunk.
#[derive(Debug, Clone)]
struct OpenAccount {
    currency: Currency,
    before: Figures,
    prev_chunk: Lsn,
    entries: Vec<Entry>,
}

/// The chunk being built, and where reading the log goes on.
#[derive(Debug, Clone)]
struct OpenChunk {
    /// The segment the chunk's records are in, and the byte after the last record read.
    segment_first: Lsn,
    offset: usize,
    /// The lsn of the chunk's first record (the next record's while it is empty).
    first_lsn: Lsn,
    next_lsn: Lsn,
    /// The largest timestamp of the log so far.
    ts_max: u64,
    slots: Vec<Slot>,
    accounts: BTreeMap<AccountId, OpenAccount>,
    /// The entries of all its accounts.
    entries: usize,
}

impl OpenChunk {
    fn empty(segment_first: Lsn, offset: usize, next_lsn: Lsn, ts_max: u64) -> OpenChunk {
        OpenChunk {
            segment_first,
            offset,
            first_lsn: next_lsn,
            next_lsn,
            ts_max,
            slots: Vec::new(),
            accounts: BTreeMap::new(),
            entries: 0,
        }
    }
}

/// Where a chunk is: the one in memory, or a file (index into the sealed chunks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Open,
    Sealed(usize),
}

/// An account's figures at a point of the log, and the point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalancePoint {
    pub balance: BalanceAt,
    /// The time of record `balance.lsn` (0 at lsn 0).
    pub timestamp: u64,
}

/// A page of an account's movements, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovementPage {
    pub currency: Currency,
    pub movements: Vec<Movement>,
    /// Whether older movements exist than the last of the page.
    pub more: bool,
    /// The last record of the partition the page reflects.
    pub lsn: Lsn,
}

/// Why reading the log for the index went wrong: a log error or a chunk that failed.
impl From<ChunkError> for LogError {
    fn from(error: ChunkError) -> LogError {
        match error {
            ChunkError::Io { path, source } => LogError::Io { path, source },
            ChunkError::Invalid { path, detail } => LogError::Corrupt {
                path,
                offset: 0,
                detail,
            },
        }
    }
}

/// The history index of one partition. Not shared: the caller holds it under a lock.
pub struct PartitionIndex {
    dir: Arc<DataDir>,
    partition: PartitionId,
    index_dir: PathBuf,
    config: IndexConfig,
    /// The chunks written, oldest first, contiguous from the log's first record.
    sealed: Vec<SealedChunk>,
    /// The accounts of the newest sealed chunk: currency, figures after it, its first lsn.
    carry: BTreeMap<AccountId, (Currency, Figures, Lsn)>,
    tracker: Tracker,
    open: OpenChunk,
    /// Reused per record: the accounts it touches, its encoding (for its frame length).
    touches: Vec<Touch>,
    scratch: Vec<u8>,
}

impl PartitionIndex {
    /// Opens the index of `partition`, checking every chunk file; a chunk that fails its
    /// checks, and every chunk after it, is deleted (to be built again from the log).
    pub fn open(
        dir: Arc<DataDir>,
        partition: PartitionId,
        config: IndexConfig,
    ) -> Result<PartitionIndex, LogError> {
        assert!(config.chunk_records_max > 0 && config.read_window_bytes > 0);
        let index_dir = dir.partition_dir(partition).join(INDEX_DIR);
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| LogError::Io { path, source }
        };
        fs::create_dir_all(&index_dir).map_err(io(&index_dir))?;
        let segments = dir
            .segments(partition)
            .map_err(io(&dir.partition_dir(partition)))?;
        let log_first = segments.first().map_or(1, |(first, _)| *first);
        let mut files = Vec::new();
        for entry in fs::read_dir(&index_dir).map_err(io(&index_dir))? {
            let entry = entry.map_err(io(&index_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // A chunk whose writing a crash cut short: never renamed, never used.
                let _ = fs::remove_file(entry.path());
            } else if let Some(range) = chunk::parse_chunk_name(&name) {
                files.push((range, entry.path()));
            }
        }
        files.sort();
        let mut sealed: Vec<SealedChunk> = Vec::new();
        let mut expected = log_first;
        for (i, ((first, last), path)) in files.iter().enumerate() {
            let checked = (*first == expected)
                .then(|| SealedChunk::open(path, (*first, *last)))
                .transpose();
            let usable = match checked {
                Ok(Some(chunk))
                    if segments
                        .iter()
                        .any(|(first, _)| *first == chunk.header.segment_first) =>
                {
                    Some(chunk)
                }
                Ok(_) => None,
                Err(error) => {
                    tracing::warn!(partition, %error, "history index chunk rebuilt from the log");
                    None
                }
            };
            let Some(chunk) = usable else {
                for (_, stale) in &files[i..] {
                    fs::remove_file(stale).map_err(io(stale))?;
                }
                break;
            };
            expected = last + 1;
            sealed.push(chunk);
        }
        let (tracker, carry, open) = match sealed.last() {
            Some(last) => {
                let file = last.file()?;
                let carry = file
                    .accounts()?
                    .into_iter()
                    .map(|d| (d.account, (d.currency, d.after, last.header.first_lsn)))
                    .collect();
                let header = &last.header;
                let open = OpenChunk::empty(
                    header.segment_first,
                    header.end_offset as usize,
                    header.last_lsn + 1,
                    last.ts_max_end,
                );
                let in_flight = file.in_flight()?;
                let tracker = Tracker::from_in_flight(partition, dir.partitions(), in_flight);
                (tracker, carry, open)
            }
            None => (
                Tracker::new(partition, dir.partitions()),
                BTreeMap::new(),
                OpenChunk::empty(log_first, 0, log_first, 0),
            ),
        };
        Ok(PartitionIndex {
            dir,
            partition,
            index_dir,
            config,
            sealed,
            carry,
            tracker,
            open,
            touches: Vec::with_capacity(2),
            scratch: Vec::new(),
        })
    }

    /// The last record indexed.
    pub fn indexed_lsn(&self) -> Lsn {
        self.open.next_lsn - 1
    }

    /// How many chunks are written (for tests and progress).
    pub fn chunks_written(&self) -> usize {
        self.sealed.len()
    }

    /// The details of `account`'s `entry` (stamped `timestamp`) given its origin record.
    fn detail_of(
        &self,
        account: &AccountId,
        entry: &Entry,
        timestamp: u64,
        origin: &Record,
    ) -> Result<Detail, LogError> {
        let Some(kind) = entry.kind.movement() else {
            return Ok(Detail {
                timestamp,
                ..Detail::default()
            });
        };
        let incoming = matches!(kind, MovementKind::TransferIn | MovementKind::CreditIn);
        let no_origin = || LogError::Corrupt {
            path: self.index_dir.display().to_string(),
            offset: 0,
            detail: format!("record {} is no movement's origin", entry.origin_lsn),
        };
        // A refund's record is a transfer's (its effect); a hold's names its own amounts.
        let (amount, transaction_id, counterparty) = match origin.event.effect() {
            Event::Deposited {
                amount,
                transaction_id,
                ..
            }
            | Event::Withdrawn {
                amount,
                transaction_id,
                ..
            } => (amount.minor(), transaction_id, None),
            Event::Transferred { transfer: t }
            | Event::DebitTried { transfer: t }
            | Event::CreditTried { transfer: t }
            | Event::HoldPlaced { hold: t, .. }
            | Event::HoldReleased { hold: t, .. } => {
                let other = if incoming { t.from } else { t.to };
                (t.amount.minor(), t.transaction_id, Some(other))
            }
            // A capture's movements are the part captured, leaving its source or reaching
            // its destination.
            Event::HoldCaptured { hold, amount, .. } => {
                let other = if incoming { hold.from } else { hold.to };
                (amount.minor(), hold.transaction_id, Some(other))
            }
            Event::CreditCaptured { key, amount } => {
                (amount.minor(), key.transaction_id, Some(key.from))
            }
            // A multi-leg transaction moves the account's net, with no one counterparty: its
            // net debit for a movement out (or into `held`), its net credit for one in.
            Event::TransactionApplied { tx } | Event::TransactionTried { tx } => {
                let net = fold::net_of(&tx, account, incoming);
                if net == 0 {
                    return Err(no_origin());
                }
                (net, tx.transaction_id(), None)
            }
            _ => return Err(no_origin()),
        };
        Ok(Detail {
            timestamp,
            amount,
            transaction_id: Some(transaction_id),
            counterparty,
        })
    }

    fn segment_path(&self, segment_first: Lsn) -> PathBuf {
        self.dir
            .partition_dir(self.partition)
            .join(format!("log-{segment_first:020}.seg"))
    }

    /// Record `lsn`, read from its segment at the offset its slot gives.
    fn record_at(&self, lsn: Lsn, files: &mut SegmentFiles) -> Result<Record, LogError> {
        let (slot, segment_first) = self.slot(lsn)?.ok_or_else(|| LogError::Corrupt {
            path: self.index_dir.display().to_string(),
            offset: 0,
            detail: format!("record {lsn} is not indexed"),
        })?;
        let path = self.segment_path(segment_first);
        let io = |source| LogError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = match files.0.entry(segment_first) {
            std::collections::btree_map::Entry::Occupied(open) => open.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(fs::File::open(&path).map_err(io)?)
            }
        };
        let mut frame = vec![0; usize::from(slot.len)];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut frame, u64::from(slot.offset))
            .map_err(io)?;
        decode_frame(&path, &frame, lsn, u64::from(slot.offset))
    }
}

/// The record whose frame is `frame` (read at `offset` of the segment at `path`), which must
/// be record `lsn`: decoded by the rules every reader of the log follows.
fn decode_frame(path: &Path, frame: &[u8], lsn: Lsn, offset: u64) -> Result<Record, LogError> {
    let mut reader = RecordReader::new(frame, lsn);
    let mut found = None;
    let _one = records_of_segment(path, &mut reader, false, |record, _| {
        found = Some(record);
        ControlFlow::Break(())
    })?;
    found
        .filter(|r| r.lsn == lsn)
        .ok_or_else(|| LogError::Corrupt {
            path: path.display().to_string(),
            offset,
            detail: format!("record {lsn} is not where the history index says"),
        })
}

/// The segment files one read has opened, by first lsn: a page of the in-memory chunk reads
/// many records of one segment.
#[derive(Default)]
struct SegmentFiles(BTreeMap<Lsn, fs::File>);

#[cfg(test)]
mod tests;
