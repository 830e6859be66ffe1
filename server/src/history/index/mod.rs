//! The per-account history index of one partition: history pages and `as_of` balances that
//! cost what they return, not what the log holds.
//!
//! # Design
//! The log stays the only truth; the index is derived from it and can always be rebuilt.
//! It is a sequence of **chunks**, each a contiguous range of at most
//! [`IndexConfig::chunk_records_max`] records of one segment. The newest chunk is built in
//! memory as records become durable; once full, or once its segment is sealed, it is
//! written as one file ([`chunk`]) in a directory of its own, `partition-<p>/history/`,
//! apart from the storage's files. A chunk holds, for every account it changes, that account's
//! entries (lsn, the record that describes the movement, and the account's balance, held
//! and incoming amounts *after* the record), the figures before and after the chunk, and a
//! pointer to the account's previous chunk. It also holds a slot per record (where its
//! frame is in the segment, its timestamp) and the transfers in flight at its end.
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
//!   search. The only state of the fold is the cross-partition transfers in flight.
//!
//! Why not a store such as `redb` or `fjall`: every index entry is appended once and never
//! changed, in lsn order, and the only lookups are "this account's entries before an lsn";
//! immutable sorted files answer that with a few `pread`s and need no write-ahead log, no
//! compaction and no page cache of their own, and a crash costs at most the chunk being
//! written, which the log rebuilds. A B-tree store would rewrite pages per insert and add a
//! second durable structure whose consistency with the log would need proving.
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
//!   chunk changed) and the transfers in flight. It does not grow with the log, except for
//!   one header (about 100 bytes) per chunk written.
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

pub mod chunk;
pub mod fold;

use std::collections::BTreeMap;
use std::fs;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use walletd_core::log::codec::{encode_record, Record, RecordReader};
use walletd_core::log::replay::{AsOf, BalanceAt, Movement, MovementKind};
use walletd_core::model::event::{Event, Lsn};
use walletd_core::model::ids::AccountId;
use walletd_core::model::money::{Amount, Currency};
use walletd_core::model::partition::PartitionId;

use self::chunk::{AccountDir, ChunkError, Detail, Entry, Header, SealedChunk, Slot};
use self::fold::{EntryKind, Figures, Touch, Tracker};
use super::{read_window, records_of_segment, LogError};
use crate::datadir::DataDir;

/// Limits of the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexConfig {
    /// Records per chunk: the bound of the in-memory chunk (about 100 bytes per record), and
    /// how much of the log one file indexes.
    pub chunk_records_max: u32,
    /// Most bytes of a segment read at once while indexing.
    pub read_window_bytes: usize,
}

impl Default for IndexConfig {
    fn default() -> IndexConfig {
        IndexConfig {
            chunk_records_max: 1 << 17,
            read_window_bytes: 4 << 20,
        }
    }
}

/// The name of the index directory inside a partition's directory.
pub const INDEX_DIR: &str = "history";

/// Most entries read per `pread` when a page walks an account's entries backwards.
const ENTRIES_PER_READ: u32 = 64;

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
                (Tracker::from_in_flight(file.in_flight()?), carry, open)
            }
            None => (
                Tracker::default(),
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

    /// Indexes every record up to `durable`, the partition's durable lsn; writes each chunk
    /// that fills or whose segment ends. Reads only what follows the last record indexed.
    pub fn catch_up(&mut self, durable: Lsn) -> Result<(), LogError> {
        let partition_dir = self.dir.partition_dir(self.partition);
        let (dir, partition) = (Arc::clone(&self.dir), self.partition);
        let list = || {
            dir.segments(partition).map_err(|source| LogError::Io {
                path: partition_dir.display().to_string(),
                source,
            })
        };
        let mut segments = list()?;
        let mut relisted = false;
        while self.open.next_lsn <= durable {
            let Some(i) = segments
                .iter()
                .position(|(first, _)| *first == self.open.segment_first)
            else {
                return Err(LogError::Corrupt {
                    path: partition_dir.display().to_string(),
                    offset: 0,
                    detail: format!("segment {} is gone", self.open.segment_first),
                });
            };
            let newest = i + 1 == segments.len();
            let path = segments[i].1.clone();
            match self.read_segment(&path, newest, durable)? {
                Stop::Full => self.seal()?,
                Stop::Window => {}
                Stop::Durable => break,
                Stop::SegmentEnd => match segments.get(i + 1) {
                    Some((next, _)) if *next == self.open.next_lsn => {
                        if !self.open.slots.is_empty() {
                            self.seal()?;
                        }
                        self.open.segment_first = *next;
                        self.open.offset = 0;
                    }
                    Some((next, path)) => {
                        return Err(LogError::Corrupt {
                            path: path.display().to_string(),
                            offset: 0,
                            detail: format!(
                                "segment starts at lsn {next}, the record before it is {}",
                                self.open.next_lsn - 1
                            ),
                        })
                    }
                    // A segment created since the list was read: read the list again, once.
                    None if !relisted => {
                        relisted = true;
                        segments = list()?;
                    }
                    None => break,
                },
            }
        }
        Ok(())
    }

    /// Reads the open chunk's segment from where reading stopped, indexing each record up to
    /// `durable`, until the chunk is full, the durable lsn is reached or the segment ends.
    fn read_segment(&mut self, path: &Path, newest: bool, durable: Lsn) -> Result<Stop, LogError> {
        let before = self.open.next_lsn;
        match self.read_window(path, newest, durable, self.config.read_window_bytes)? {
            // A window that held no whole record: the rest of the file decides what its
            // bytes are (a frame longer than the window is damage, judged with all of them).
            Stop::Window if self.open.next_lsn == before => {
                self.read_window(path, newest, durable, usize::MAX)
            }
            stop => Ok(stop),
        }
    }

    /// [`Self::read_segment`] over at most `window` bytes from where reading stopped.
    fn read_window(
        &mut self,
        path: &Path,
        newest: bool,
        durable: Lsn,
        window: usize,
    ) -> Result<Stop, LogError> {
        let io = |source| LogError::Io {
            path: path.display().to_string(),
            source,
        };
        let offset = self.open.offset;
        let (bytes, to_end) = read_window(path, offset, window).map_err(io)?;
        if offset > bytes.len() {
            return Err(LogError::Corrupt {
                path: path.display().to_string(),
                offset: offset as u64,
                detail: "the segment is shorter than the index says".into(),
            });
        }
        let mut reader = match offset {
            0 => RecordReader::new(&bytes, self.open.segment_first),
            _ => RecordReader::resume(&bytes, offset, self.open.next_lsn),
        };
        // Before the end of the file, the window may end inside a frame, as the newest
        // segment's end may: that frame is read with the next window.
        let mut stop = if to_end {
            Stop::SegmentEnd
        } else {
            Stop::Window
        };
        let mut failed = None;
        let full = self.config.chunk_records_max as usize;
        let _ended = records_of_segment(path, &mut reader, newest || !to_end, |record, end| {
            if record.lsn > durable {
                stop = Stop::Durable;
                return ControlFlow::Break(());
            }
            if let Err(error) = self.push(&record, end, path) {
                failed = Some(error);
                return ControlFlow::Break(());
            }
            if record.lsn == durable {
                stop = Stop::Durable;
                return ControlFlow::Break(());
            }
            if self.open.slots.len() >= full {
                stop = Stop::Full;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })?;
        match failed {
            Some(error) => Err(error),
            None => Ok(stop),
        }
    }

    /// Indexes one record, whose frame ends at byte `end` of its segment.
    fn push(&mut self, record: &Record, end: usize, path: &Path) -> Result<(), LogError> {
        assert_eq!(
            record.lsn, self.open.next_lsn,
            "the reader checks lsn order"
        );
        self.scratch.clear();
        encode_record(record, &mut self.scratch);
        let len = self.scratch.len();
        let offset = end.checked_sub(len).expect("a frame ends after its start");
        let too_far = || LogError::Corrupt {
            path: path.display().to_string(),
            offset: offset as u64,
            detail: "a segment over 4 GiB cannot be indexed".into(),
        };
        let slot = Slot {
            offset: u32::try_from(offset).map_err(|_| too_far())?,
            len: u16::try_from(len).expect("records are under 64 KiB"),
            timestamp: record.timestamp,
            ts_max: self.open.ts_max.max(record.timestamp),
        };
        let mut touches = std::mem::take(&mut self.touches);
        touches.clear();
        self.tracker.fold(record, &mut touches);
        for touch in &touches {
            self.apply(record.lsn, touch, path)?;
        }
        self.touches = touches;
        self.open.ts_max = slot.ts_max;
        self.open.slots.push(slot);
        self.open.next_lsn = record.lsn + 1;
        self.open.offset = end;
        Ok(())
    }

    /// Adds `touch` of record `lsn` to its account's entries, starting the account's part of
    /// the chunk from its figures after its previous chunk if this is its first touch here.
    fn apply(&mut self, lsn: Lsn, touch: &Touch, path: &Path) -> Result<(), LogError> {
        if !self.open.accounts.contains_key(&touch.account) {
            let (currency, before, prev_chunk) = match touch.opened {
                Some(currency) => (currency, Figures::default(), 0),
                None => self
                    .carry_of(&touch.account)?
                    .ok_or_else(|| LogError::Corrupt {
                        path: path.display().to_string(),
                        offset: 0,
                        detail: format!("record {lsn} changes {}, never opened", touch.account),
                    })?,
            };
            let account = OpenAccount {
                currency,
                before,
                prev_chunk,
                entries: Vec::new(),
            };
            self.open.accounts.insert(touch.account, account);
        }
        let account = self.open.accounts.get_mut(&touch.account).expect("added");
        let prior = account.entries.last().map_or(account.before, |e| e.after);
        account.entries.push(Entry {
            lsn,
            origin_lsn: touch.origin_lsn,
            kind: touch.kind,
            after: prior.after(touch),
        });
        Ok(())
    }

    /// The currency, figures and chunk of `account`'s latest entries in the written chunks.
    fn carry_of(&self, account: &AccountId) -> Result<Option<(Currency, Figures, Lsn)>, LogError> {
        if let Some(carry) = self.carry.get(account) {
            return Ok(Some(*carry));
        }
        // The newest chunk's accounts are all in `carry`; older chunks are searched on disk.
        for chunk in self.sealed.iter().rev().skip(1) {
            if let Some(dir) = chunk.file()?.account(account)? {
                return Ok(Some((dir.currency, dir.after, chunk.header.first_lsn)));
            }
        }
        Ok(None)
    }

    /// Writes the in-memory chunk as a file and starts the next one where it ended.
    fn seal(&mut self) -> Result<(), LogError> {
        let open = &self.open;
        assert!(
            !open.slots.is_empty(),
            "only a chunk with records is written"
        );
        let in_flight = self.tracker.in_flight();
        let details = self.details_of_open()?;
        let mut entries_start = 0u32;
        let dirs: Vec<(AccountDir, &[Entry], &[Detail])> = open
            .accounts
            .iter()
            .zip(&details)
            .map(|((account, part), details)| {
                let count = u32::try_from(part.entries.len()).expect("bounded by the chunk");
                let dir = AccountDir {
                    account: *account,
                    currency: part.currency,
                    before: part.before,
                    after: part.entries.last().map_or(part.before, |e| e.after),
                    prev_chunk: part.prev_chunk,
                    entries_start,
                    entries_count: count,
                };
                entries_start += count;
                (dir, part.entries.as_slice(), details.as_slice())
            })
            .collect();
        let details_bytes = details.iter().flatten().map(chunk::detail_len).sum();
        let header = Header {
            details_bytes,
            segment_first: open.segment_first,
            first_lsn: open.first_lsn,
            last_lsn: open.next_lsn - 1,
            end_offset: open.offset as u64,
            records: open.slots.len() as u32,
            accounts: dirs.len() as u32,
            entries: entries_start,
            in_flight: in_flight.len() as u32,
        };
        let carry = dirs
            .iter()
            .map(|(d, _, _)| (d.account, (d.currency, d.after, header.first_lsn)))
            .collect();
        let bytes = chunk::encode(header, &open.slots, dirs.into_iter(), &in_flight);
        let name = chunk::chunk_name(header.first_lsn, header.last_lsn);
        let path =
            chunk::write_file(&self.index_dir, &name, &bytes).map_err(|source| LogError::Io {
                path: self.index_dir.join(&name).display().to_string(),
                source,
            })?;
        tracing::debug!(
            partition = self.partition,
            first_lsn = header.first_lsn,
            last_lsn = header.last_lsn,
            bytes = bytes.len(),
            "history index chunk written"
        );
        self.sealed.push(SealedChunk {
            path,
            header,
            ts_max_end: open.ts_max,
        });
        self.carry = carry;
        self.open = OpenChunk::empty(open.segment_first, open.offset, open.next_lsn, open.ts_max);
        Ok(())
    }

    /// The chunk that holds record `lsn`, if any.
    fn place_of(&self, lsn: Lsn) -> Option<Place> {
        if lsn >= self.open.first_lsn {
            return (lsn < self.open.next_lsn).then_some(Place::Open);
        }
        let i = self.sealed.partition_point(|c| c.header.last_lsn < lsn);
        (i < self.sealed.len() && self.sealed[i].contains(lsn)).then_some(Place::Sealed(i))
    }

    fn slot(&self, lsn: Lsn) -> Result<Option<(Slot, Lsn)>, LogError> {
        Ok(match self.place_of(lsn) {
            Some(Place::Open) => Some((
                self.open.slots[(lsn - self.open.first_lsn) as usize],
                self.open.segment_first,
            )),
            Some(Place::Sealed(i)) => {
                let chunk = &self.sealed[i];
                Some((chunk.file()?.slot(lsn)?, chunk.header.segment_first))
            }
            None => None,
        })
    }

    /// The lsn of the first record stamped after `time` (by the largest timestamp so far).
    fn first_after(&self, time: u64) -> Result<Option<Lsn>, LogError> {
        let i = self.sealed.partition_point(|c| c.ts_max_end <= time);
        if let Some(chunk) = self.sealed.get(i) {
            return Ok(chunk.file()?.first_after(time)?);
        }
        let k = self.open.slots.partition_point(|s| s.ts_max <= time);
        Ok((k < self.open.slots.len()).then(|| self.open.first_lsn + k as u64))
    }

    /// `account`'s figures as of `as_of` (no further than what is indexed), or `None` if it
    /// was not open then.
    pub fn balance(
        &self,
        account: &AccountId,
        as_of: AsOf,
    ) -> Result<Option<BalancePoint>, LogError> {
        let indexed = self.indexed_lsn();
        let cut = match as_of {
            AsOf::End => indexed,
            AsOf::Lsn(lsn) => lsn.min(indexed),
            AsOf::Time(time) => self.first_after(time)?.map_or(indexed, |lsn| lsn - 1),
        };
        let Some((currency, figures)) = self.figures_at(account, cut)? else {
            return Ok(None);
        };
        let timestamp = self.slot(cut)?.map_or(0, |(slot, _)| slot.timestamp);
        Ok(Some(BalancePoint {
            balance: BalanceAt {
                currency,
                balance: figures.balance,
                held: figures.held,
                incoming: figures.incoming,
                lsn: cut,
            },
            timestamp,
        }))
    }

    /// `account`'s currency and figures after record `cut`, if it was open by then.
    fn figures_at(
        &self,
        account: &AccountId,
        cut: Lsn,
    ) -> Result<Option<(Currency, Figures)>, LogError> {
        let newest = match self.place_of(cut) {
            Some(Place::Open) => {
                if let Some(part) = self.open.accounts.get(account) {
                    return Ok(at_cut(&part.entries, part.before, cut).map(|f| (part.currency, f)));
                }
                self.sealed.len()
            }
            Some(Place::Sealed(i)) => i + 1,
            None => return Ok(None),
        };
        // The chunk of `cut`, then older ones, until one changes the account.
        for chunk in self.sealed[..newest].iter().rev() {
            let file = chunk.file()?;
            let Some(dir) = file.account(account)? else {
                continue;
            };
            if cut >= chunk.header.last_lsn {
                return Ok(Some((dir.currency, dir.after)));
            }
            let range = dir.entries_start..dir.entries_start + dir.entries_count;
            let last = last_at_or_before(&file, range.clone(), cut)?;
            let figures = match last {
                Some(entry) => Some(entry.after),
                None => {
                    let first = file.entries(range.start..range.start + 1)?[0];
                    (first.kind != EntryKind::Opened).then_some(dir.before)
                }
            };
            return Ok(figures.map(|f| (dir.currency, f)));
        }
        Ok(None)
    }

    /// A page of `account`'s movements with lsns before `before`, newest first, at most
    /// `limit`; `None` if the account was never opened.
    pub fn page(
        &self,
        account: &AccountId,
        before: Lsn,
        limit: usize,
    ) -> Result<Option<MovementPage>, LogError> {
        assert!(limit > 0);
        // Start at the chunk of the newest record the page may hold, not at the newest chunk:
        // a page deep in the history does not pass through the chunks after it.
        let newest = before.saturating_sub(1).min(self.indexed_lsn());
        let below = match self.place_of(newest) {
            Some(Place::Open) => {
                if let Some(part) = self.open.accounts.get(account) {
                    let currency = part.currency;
                    return self.page_from(account, currency, Place::Open, before, limit);
                }
                self.sealed.len()
            }
            Some(Place::Sealed(i)) => i + 1,
            None => 0,
        };
        if let Some((i, dir)) = self.newest_sealed_with(account, below)? {
            return self.page_from(account, dir.currency, Place::Sealed(i), before, limit);
        }
        // Nothing of the account up to the cursor: it was opened after it (an empty page), or
        // never.
        let later = match self.open.accounts.get(account) {
            Some(part) => Some(part.currency),
            None => {
                let newer = self.sealed.len().saturating_sub(below);
                let found = self.sealed[below..].iter().take(newer).rev();
                let mut currency = None;
                for chunk in found {
                    if let Some(dir) = chunk.file()?.account(account)? {
                        currency = Some(dir.currency);
                        break;
                    }
                }
                currency
            }
        };
        Ok(later.map(|currency| MovementPage {
            currency,
            movements: Vec::new(),
            more: false,
            lsn: self.indexed_lsn(),
        }))
    }

    /// [`Self::page`] from the chunk at `place`, the newest at or before the cursor that
    /// holds the account, then its previous chunks.
    fn page_from(
        &self,
        account: &AccountId,
        currency: Currency,
        place: Place,
        before: Lsn,
        limit: usize,
    ) -> Result<Option<MovementPage>, LogError> {
        let mut next = Some(place);
        // Newest first, one more than the page; with their details when a chunk file has
        // them (the in-memory chunk's are read from the log).
        let mut found: Vec<(Entry, Option<Detail>)> = Vec::with_capacity(limit + 1);
        while let Some(place) = next {
            if found.len() > limit {
                break;
            }
            let wanted = limit + 1 - found.len();
            let prev = match place {
                Place::Open => {
                    let part = &self.open.accounts[account];
                    let newer = part.entries.iter().rev().filter(|e| e.lsn < before);
                    let movements = newer.filter(|e| e.kind.movement().is_some());
                    found.extend(movements.take(wanted).map(|e| (*e, None)));
                    part.prev_chunk
                }
                Place::Sealed(i) => {
                    let file = self.sealed[i].file()?;
                    let dir = file.account(account)?.ok_or_else(|| LogError::Corrupt {
                        path: self.sealed[i].path.display().to_string(),
                        offset: 0,
                        detail: format!("{account} is missing from a chunk that points to it"),
                    })?;
                    let range = dir.entries_start..dir.entries_start + dir.entries_count;
                    let mut take = |e, d| found.push((e, Some(d)));
                    // Past the chunk of the cursor, every entry is before it: no search.
                    let all_before = self.sealed[i].header.last_lsn < before;
                    let before = if all_before { Lsn::MAX } else { before };
                    movements_before(&file, range, before, wanted, &mut take)?;
                    dir.prev_chunk
                }
            };
            next = match prev {
                0 => None,
                first => Some(self.sealed_starting_at(first)?),
            };
        }
        let more = found.len() > limit;
        found.truncate(limit);
        let mut movements = Vec::with_capacity(found.len());
        let mut files = SegmentFiles::default();
        for (entry, detail) in found {
            let detail = match detail {
                Some(detail) => detail,
                None => self.detail_from_log(&entry, &mut files)?,
            };
            movements.push(self.movement(&entry, &detail)?);
        }
        Ok(Some(MovementPage {
            currency,
            movements,
            more,
            lsn: self.indexed_lsn(),
        }))
    }

    /// The newest of the first `below` written chunks that changes `account`, and its
    /// directory entry there.
    fn newest_sealed_with(
        &self,
        account: &AccountId,
        below: usize,
    ) -> Result<Option<(usize, AccountDir)>, LogError> {
        for (i, chunk) in self.sealed[..below].iter().enumerate().rev() {
            if let Some(dir) = chunk.file()?.account(account)? {
                return Ok(Some((i, dir)));
            }
        }
        Ok(None)
    }

    fn sealed_starting_at(&self, first: Lsn) -> Result<Place, LogError> {
        let i = self.sealed.partition_point(|c| c.header.first_lsn < first);
        match self.sealed.get(i) {
            Some(chunk) if chunk.header.first_lsn == first => Ok(Place::Sealed(i)),
            _ => Err(LogError::Corrupt {
                path: self.index_dir.display().to_string(),
                offset: 0,
                detail: format!("no chunk starts at lsn {first}, which an entry points to"),
            }),
        }
    }

    /// The movement an entry records, from its figures and its details.
    fn movement(&self, entry: &Entry, detail: &Detail) -> Result<Movement, LogError> {
        let kind = entry.kind.movement().expect("pages hold movements only");
        let damaged = || LogError::Corrupt {
            path: self.index_dir.display().to_string(),
            offset: 0,
            detail: format!("the history index holds no details of record {}", entry.lsn),
        };
        Ok(Movement {
            lsn: entry.lsn,
            timestamp: detail.timestamp,
            kind,
            amount: Amount::from_minor(detail.amount).ok_or_else(damaged)?,
            transaction_id: detail.transaction_id.ok_or_else(damaged)?,
            counterparty: detail.counterparty,
            balance_after: entry.after.balance,
            held_after: entry.after.held,
        })
    }

    /// The details of an entry of the in-memory chunk, from its records in the log (read
    /// recently by the index, so usually from the page cache).
    fn detail_from_log(&self, entry: &Entry, files: &mut SegmentFiles) -> Result<Detail, LogError> {
        let (slot, _) = self.slot(entry.lsn)?.expect("an indexed record has a slot");
        let origin = self.record_at(entry.origin_lsn, files)?;
        self.detail_of(entry, slot.timestamp, &origin)
    }

    /// The details of `entry` (stamped `timestamp`) given its origin record.
    fn detail_of(
        &self,
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
        let (amount, transaction_id, counterparty) = match origin.event {
            Event::Deposited {
                amount,
                transaction_id,
                ..
            }
            | Event::Withdrawn {
                amount,
                transaction_id,
                ..
            } => (amount, transaction_id, None),
            Event::Transferred { transfer }
            | Event::DebitTried { transfer }
            | Event::CreditTried { transfer } => {
                let incoming = matches!(kind, MovementKind::TransferIn | MovementKind::CreditIn);
                let other = if incoming { transfer.from } else { transfer.to };
                (transfer.amount, transfer.transaction_id, Some(other))
            }
            _ => {
                return Err(LogError::Corrupt {
                    path: self.index_dir.display().to_string(),
                    offset: 0,
                    detail: format!("record {} is no movement's origin", entry.origin_lsn),
                })
            }
        };
        Ok(Detail {
            timestamp,
            amount: amount.minor(),
            transaction_id: Some(transaction_id),
            counterparty,
        })
    }

    /// The details of every entry of the in-memory chunk, account by account, for writing
    /// it: the chunk's range of its segment is read once, and the origins in it decoded
    /// from there (a Try in an earlier chunk is read on its own).
    fn details_of_open(&self) -> Result<Vec<Vec<Detail>>, LogError> {
        let open = &self.open;
        let path = self.segment_path(open.segment_first);
        let start = open.slots[0].offset as usize;
        let mut bytes = vec![0; open.offset - start];
        fs::File::open(&path)
            .and_then(|file| {
                std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, start as u64)
            })
            .map_err(|source| LogError::Io {
                path: path.display().to_string(),
                source,
            })?;
        let mut all = Vec::with_capacity(open.accounts.len());
        for part in open.accounts.values() {
            let mut details = Vec::with_capacity(part.entries.len());
            for entry in &part.entries {
                let timestamp = open.slots[(entry.lsn - open.first_lsn) as usize].timestamp;
                if entry.kind.movement().is_none() {
                    details.push(Detail {
                        timestamp,
                        ..Detail::default()
                    });
                    continue;
                }
                let origin = match entry.origin_lsn.checked_sub(open.first_lsn) {
                    Some(k) => {
                        let slot = open.slots[k as usize];
                        let at = slot.offset as usize - start;
                        let frame = bytes.get(at..at + usize::from(slot.len)).unwrap_or(&[]);
                        decode_frame(&path, frame, entry.origin_lsn, u64::from(slot.offset))?
                    }
                    None => self.record_at(entry.origin_lsn, &mut SegmentFiles::default())?,
                };
                details.push(self.detail_of(entry, timestamp, &origin)?);
            }
            all.push(details);
        }
        Ok(all)
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

/// Why reading a segment for the index stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The in-memory chunk is full: write it.
    Full,
    /// The durable lsn is indexed (or the next record is past it).
    Durable,
    /// The window read of the segment ended; more of it follows.
    Window,
    /// No more records in this segment.
    SegmentEnd,
}

/// The figures after `cut` from one chunk's entries of an account (in lsn order) and its
/// figures before the chunk; `None` if it was opened in this chunk after `cut`.
fn at_cut(entries: &[Entry], before: Figures, cut: Lsn) -> Option<Figures> {
    let k = entries.partition_point(|e| e.lsn <= cut);
    match k {
        0 if entries.first().is_some_and(|e| e.kind == EntryKind::Opened) => None,
        0 => Some(before),
        k => Some(entries[k - 1].after),
    }
}

/// The last entry in `range` of `file` with an lsn at or before `cut`, by binary search.
fn last_at_or_before(
    file: &chunk::ChunkFile<'_>,
    range: std::ops::Range<u32>,
    cut: Lsn,
) -> Result<Option<Entry>, LogError> {
    let (mut low, mut high) = (range.start, range.end);
    while low < high {
        let middle = low + (high - low) / 2;
        if file.entries(middle..middle + 1)?[0].lsn <= cut {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    Ok(match low {
        k if k == range.start => None,
        k => Some(file.entries(k - 1..k)?[0]),
    })
}

/// Hands `take` the movements in `range` of `file` with lsns before `before`, newest first,
/// at most `wanted` of them; reads the entries backwards a block at a time.
fn movements_before(
    file: &chunk::ChunkFile<'_>,
    range: std::ops::Range<u32>,
    before: Lsn,
    wanted: usize,
    mut take: impl FnMut(Entry, Detail),
) -> Result<(), LogError> {
    let (mut low, mut high) = (range.start, range.end);
    if before == Lsn::MAX {
        low = high;
    }
    while low < high {
        let middle = low + (high - low) / 2;
        if file.entries(middle..middle + 1)?[0].lsn < before {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    let (mut end, mut taken) = (low, 0);
    while end > range.start && taken < wanted {
        let start = end.saturating_sub(ENTRIES_PER_READ).max(range.start);
        for (entry, detail) in file.entries_with_details(start..end)?.into_iter().rev() {
            if entry.kind.movement().is_some() && taken < wanted {
                take(entry, detail);
                taken += 1;
            }
        }
        end = start;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
