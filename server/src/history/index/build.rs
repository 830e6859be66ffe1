//! Building the index: following the log up to the durable lsn, folding each record into
//! the in-memory chunk, and writing the chunk as a file once it is full or its segment ends.

use std::fs;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use walletd_core::log::codec::{encode_record, Record, RecordReader};
use walletd_core::model::event::Lsn;
use walletd_core::model::ids::AccountId;
use walletd_core::model::money::Currency;

use super::chunk::{self, AccountDir, Detail, Entry, Header, SealedChunk, Slot};
use super::fold::{Figures, Touch, TOUCHES_MAX};
use super::{decode_frame, OpenAccount, OpenChunk, PartitionIndex, SegmentFiles};
use crate::history::{read_window, records_of_segment, LogError};

impl PartitionIndex {
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
        let entries_full = self.config.chunk_entries_max as usize;
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
            if self.open.slots.len() >= full || self.open.entries >= entries_full {
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
        debug_assert!(touches.len() <= TOUCHES_MAX, "{} touches", touches.len());
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
        self.open.entries += 1;
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

    /// The details of every entry of the in-memory chunk, account by account, for writing
    /// it: the chunk's range of its segment is read once, and each origin in it decoded once
    /// from there, however many entries it describes (a multi-leg transaction's Try is the
    /// origin of an entry per account it moves); a Try in an earlier chunk is read on its
    /// own.
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
        let accounts: Vec<(&AccountId, &OpenAccount)> = open.accounts.iter().collect();
        // Every entry's details hold its record's time; a movement's the rest, from its
        // origin. The movements are visited by origin, each origin decoded once.
        let mut all: Vec<Vec<Detail>> = Vec::with_capacity(accounts.len());
        let mut movements: Vec<(Lsn, usize, usize)> = Vec::new();
        for (a, (_, part)) in accounts.iter().enumerate() {
            let mut details = Vec::with_capacity(part.entries.len());
            for (e, entry) in part.entries.iter().enumerate() {
                let timestamp = open.slots[(entry.lsn - open.first_lsn) as usize].timestamp;
                details.push(Detail {
                    timestamp,
                    ..Detail::default()
                });
                if entry.kind.movement().is_some() {
                    movements.push((entry.origin_lsn, a, e));
                }
            }
            all.push(details);
        }
        movements.sort_unstable();
        let mut files = SegmentFiles::default();
        for group in movements.chunk_by(|x, y| x.0 == y.0) {
            let origin_lsn = group[0].0;
            let origin = match origin_lsn.checked_sub(open.first_lsn) {
                Some(k) => {
                    let slot = open.slots[k as usize];
                    let at = slot.offset as usize - start;
                    let frame = bytes.get(at..at + usize::from(slot.len)).unwrap_or(&[]);
                    decode_frame(&path, frame, origin_lsn, u64::from(slot.offset))?
                }
                None => self.record_at(origin_lsn, &mut files)?,
            };
            for &(_, a, e) in group {
                let (account, part) = accounts[a];
                let timestamp = all[a][e].timestamp;
                all[a][e] = self.detail_of(account, &part.entries[e], timestamp, &origin)?;
            }
        }
        Ok(all)
    }
}

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
