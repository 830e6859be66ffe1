//! The index chunk file: one contiguous range of a segment's records, indexed.
//!
//! ```text
//! chunk-<first lsn>-<last lsn>.hidx      all integers little-endian
//! header   magic "WHIX", version u32, segment first lsn u64, first lsn u64, last lsn u64,
//!          end offset u64 (in the segment, after the last record), the bytes of the details
//!          section u64, and the counts of records, accounts, entries and transfers in
//!          flight, u32 each
//! records  one slot per record, lsn order: frame offset u32, frame length u16,
//!          timestamp u64, the largest timestamp of the partition's log up to it u64
//! accounts one per account the chunk changes, in account order: id (length u8 and 64 bytes,
//!          zero-padded), currency u16, figures before the chunk and after it (balance,
//!          held, incoming: u64 each), the first lsn of the account's previous chunk u64
//!          (0: none, the account opened here), its entries' first index u32 and count u32
//! entries  per account, lsn order: lsn u64, origin lsn u64, kind u8, figures after u64 × 3,
//!          offset of its details u64
//! details  per entry, in the same order, what a page shows of it: timestamp u64, amount
//!          u64, transaction id and counterparty (length u8, then that many bytes; 0: none)
//! in flight  the Tries in flight after the last record, in side, key and account order:
//!          side u8 (1 a transfer's hold, 2 its pending credit; 3 and 4 a multi-leg
//!          transaction's net debit and net credit of one account, an item per account),
//!          key (from and transaction id, as ids above), account (as above), Try lsn u64,
//!          amount u64
//! crc      CRC32C of everything before it, u32
//! ```
//!
//! Every section is an array of fixed-size items, so one item is one `pread` at an offset
//! the header gives, and an account is found by binary search over the sorted directory
//! (details are the one variable-length section, reached through the entries). An
//! account's entries are contiguous, and so are their details, which hold everything a
//! page of history shows: a page is two reads of consecutive bytes, not a read of the log
//! per movement.
//! The file is written whole, to a temporary name, then renamed (see [`write_file`]): a
//! crash leaves no chunk, a whole one, or (after a power cut) one that fails its checks. A
//! chunk that fails its checks is never read; it is deleted and built again from the log.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use walletd_core::model::event::{Lsn, TransferKey};
use walletd_core::model::ids::{AccountId, TransactionId, ID_LEN_MAX};
use walletd_core::model::money::Currency;

use super::fold::{EntryKind, Figures, InFlight, Side};

const MAGIC: [u8; 4] = *b"WHIX";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 4 + 4 + 8 * 5 + 4 * 4;
const ID_LEN: usize = 1 + ID_LEN_MAX;
const FIGURES_LEN: usize = 3 * 8;
pub const SLOT_LEN: usize = 4 + 2 + 8 + 8;
pub const ACCOUNT_LEN: usize = ID_LEN + 2 + 2 * FIGURES_LEN + 8 + 4 + 4;
pub const ENTRY_LEN: usize = 8 + 8 + 1 + FIGURES_LEN + 8;
/// The longest details of one entry.
const DETAIL_LEN_MAX: usize = 8 + 8 + 2 * ID_LEN;
const IN_FLIGHT_LEN: usize = 1 + 3 * ID_LEN + 8 + 8;
const CRC_LEN: usize = 4;

/// Why a chunk file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} is not a valid history index chunk: {detail}")]
    Invalid { path: String, detail: String },
}

/// Where one record's frame is in its segment, and when it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub offset: u32,
    pub len: u16,
    pub timestamp: u64,
    /// The largest timestamp of the log up to and including this record: non-decreasing,
    /// so the first record past a time is found by binary search (a fold `as_of` a time
    /// stops at the first record stamped after it, whatever follows).
    pub ts_max: u64,
}

/// One record's effect on one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub lsn: Lsn,
    pub origin_lsn: Lsn,
    pub kind: EntryKind,
    pub after: Figures,
}

/// What a page of history shows of a movement besides its figures: when, how much, which
/// transaction, with whom. Empty for entries that are not movements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Detail {
    pub timestamp: u64,
    pub amount: u64,
    pub transaction_id: Option<TransactionId>,
    pub counterparty: Option<AccountId>,
}

/// An account's place in a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountDir {
    pub account: AccountId,
    pub currency: Currency,
    pub before: Figures,
    pub after: Figures,
    /// First lsn of the chunk that holds the account's previous entries; 0 if none.
    pub prev_chunk: Lsn,
    pub entries_start: u32,
    pub entries_count: u32,
}

/// The fixed-size head of a chunk file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub segment_first: Lsn,
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    pub end_offset: u64,
    pub details_bytes: u64,
    pub records: u32,
    pub accounts: u32,
    pub entries: u32,
    pub in_flight: u32,
}

impl Header {
    fn records_at(&self) -> u64 {
        HEADER_LEN as u64
    }
    fn accounts_at(&self) -> u64 {
        self.records_at() + u64::from(self.records) * SLOT_LEN as u64
    }
    fn entries_at(&self) -> u64 {
        self.accounts_at() + u64::from(self.accounts) * ACCOUNT_LEN as u64
    }
    fn details_at(&self) -> u64 {
        self.entries_at() + u64::from(self.entries) * ENTRY_LEN as u64
    }
    fn in_flight_at(&self) -> u64 {
        self.details_at() + self.details_bytes
    }
    fn file_len(&self) -> u64 {
        self.in_flight_at() + u64::from(self.in_flight) * IN_FLIGHT_LEN as u64 + CRC_LEN as u64
    }
}

/// The file name of the chunk of records `first..=last`.
pub fn chunk_name(first: Lsn, last: Lsn) -> String {
    format!("chunk-{first:020}-{last:020}.hidx")
}

/// `(first, last)` of a chunk file name, or `None` for any other name.
pub fn parse_chunk_name(name: &str) -> Option<(Lsn, Lsn)> {
    let middle = name.strip_prefix("chunk-")?.strip_suffix(".hidx")?;
    let (first, last) = middle.split_once('-')?;
    let (first, last) = (first.parse().ok()?, last.parse().ok()?);
    (0 < first && first <= last).then_some((first, last))
}

/// Encodes a chunk. `accounts` in account order, each with its entries in lsn order and
/// their details, one per entry.
pub fn encode<'a>(
    header: Header,
    slots: &[Slot],
    accounts: impl Iterator<Item = (AccountDir, &'a [Entry], &'a [Detail])>,
    in_flight: &[(Side, TransferKey, InFlight)],
) -> Vec<u8> {
    assert_eq!(slots.len(), header.records as usize);
    assert_eq!(
        header.last_lsn + 1 - header.first_lsn,
        u64::from(header.records)
    );
    let mut out = Vec::with_capacity(header.file_len() as usize);
    out.extend_from_slice(&MAGIC);
    put_u32(&mut out, VERSION);
    for value in [
        header.segment_first,
        header.first_lsn,
        header.last_lsn,
        header.end_offset,
        header.details_bytes,
    ] {
        put_u64(&mut out, value);
    }
    for count in [
        header.records,
        header.accounts,
        header.entries,
        header.in_flight,
    ] {
        put_u32(&mut out, count);
    }
    for slot in slots {
        put_u32(&mut out, slot.offset);
        out.extend_from_slice(&slot.len.to_le_bytes());
        put_u64(&mut out, slot.timestamp);
        put_u64(&mut out, slot.ts_max);
    }
    let mut entries: Vec<(&[Entry], &[Detail])> = Vec::with_capacity(header.accounts as usize);
    let mut previous: Option<AccountId> = None;
    for (dir, account_entries, details) in accounts {
        assert_eq!(account_entries.len(), details.len(), "a detail per entry");
        assert!(previous < Some(dir.account), "accounts in order, once each");
        previous = Some(dir.account);
        put_id(&mut out, dir.account.as_bytes());
        out.extend_from_slice(&dir.currency.numeric().to_le_bytes());
        put_figures(&mut out, dir.before);
        put_figures(&mut out, dir.after);
        put_u64(&mut out, dir.prev_chunk);
        put_u32(&mut out, dir.entries_start);
        put_u32(&mut out, dir.entries_count);
        entries.push((account_entries, details));
    }
    assert_eq!(entries.len(), header.accounts as usize);
    let mut details_out = Vec::new();
    for (account_entries, details) in entries {
        for (entry, detail) in account_entries.iter().zip(details) {
            put_u64(&mut out, entry.lsn);
            put_u64(&mut out, entry.origin_lsn);
            out.push(entry.kind.tag());
            put_figures(&mut out, entry.after);
            put_u64(&mut out, details_out.len() as u64);
            put_detail(&mut details_out, detail);
        }
    }
    assert_eq!(
        details_out.len() as u64,
        header.details_bytes,
        "details as counted"
    );
    out.extend_from_slice(&details_out);
    assert_eq!(in_flight.len(), header.in_flight as usize);
    for (side, key, item) in in_flight {
        out.push(match side {
            Side::Hold => 1,
            Side::Credit => 2,
            Side::TransactionDebit => 3,
            Side::TransactionCredit => 4,
        });
        put_id(&mut out, key.from.as_bytes());
        put_id(&mut out, key.transaction_id.as_bytes());
        put_id(&mut out, item.account.as_bytes());
        put_u64(&mut out, item.try_lsn);
        put_u64(&mut out, item.amount);
    }
    let crc = crc32c::crc32c(&out);
    put_u32(&mut out, crc);
    assert_eq!(
        out.len() as u64,
        header.file_len(),
        "sections as the header says"
    );
    out
}

/// Writes `bytes` as `dir/name`: to a temporary file, then renamed. Nothing is synced: a
/// chunk is derived data, and one that a power cut leaves empty, short or half-written
/// fails its length or checksum check when the index is next opened and is built again
/// from the log, as is a missing one (and every chunk after a gap). Syncing each chunk
/// cost the indexer most of its time on a busy disk. A temporary file left behind is
/// deleted when the index is next opened.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    drop(file);
    fs::rename(&tmp, &path)?;
    Ok(path)
}

/// A chunk file on disk that passed its checks: the header in memory, the rest read on
/// demand.
#[derive(Debug, Clone)]
pub struct SealedChunk {
    pub path: PathBuf,
    pub header: Header,
    /// The last record's [`Slot::ts_max`].
    pub ts_max_end: u64,
}

impl SealedChunk {
    /// Opens and checks the chunk file at `path`, named for records `first..=last`: its
    /// length, magic, version, names and checksum. Reads the whole file once.
    pub fn open(path: &Path, (first, last): (Lsn, Lsn)) -> Result<SealedChunk, ChunkError> {
        let display = path.display().to_string();
        let invalid = |detail: &str| ChunkError::Invalid {
            path: display.clone(),
            detail: detail.into(),
        };
        let bytes = fs::read(path).map_err(|source| ChunkError::Io {
            path: display.clone(),
            source,
        })?;
        if bytes.len() < HEADER_LEN + CRC_LEN || bytes[..4] != MAGIC {
            return Err(invalid("no chunk header"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - CRC_LEN);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(invalid("checksum mismatch"));
        }
        let header = decode_header(&bytes).ok_or_else(|| invalid("unsupported version"))?;
        if header.file_len() != bytes.len() as u64 {
            return Err(invalid("length differs from what the header counts"));
        }
        if (header.first_lsn, header.last_lsn) != (first, last)
            || header.segment_first > first
            || header.last_lsn + 1 - header.first_lsn != u64::from(header.records)
        {
            return Err(invalid("header does not match the file name"));
        }
        let last_slot = header.records_at() as usize + (header.records as usize - 1) * SLOT_LEN;
        let ts_max_end = decode_slot(&bytes[last_slot..last_slot + SLOT_LEN]).ts_max;
        Ok(SealedChunk {
            path: path.to_path_buf(),
            header,
            ts_max_end,
        })
    }

    pub fn file(&self) -> Result<ChunkFile<'_>, ChunkError> {
        let file = File::open(&self.path).map_err(|source| self.io(source))?;
        Ok(ChunkFile { chunk: self, file })
    }

    pub fn contains(&self, lsn: Lsn) -> bool {
        (self.header.first_lsn..=self.header.last_lsn).contains(&lsn)
    }

    fn io(&self, source: io::Error) -> ChunkError {
        ChunkError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }
}

/// An open chunk file, for reads at offsets.
pub struct ChunkFile<'a> {
    chunk: &'a SealedChunk,
    file: File,
}

impl ChunkFile<'_> {
    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, ChunkError> {
        let mut bytes = vec![0; len];
        self.file
            .read_exact_at(&mut bytes, offset)
            .map_err(|source| self.chunk.io(source))?;
        Ok(bytes)
    }

    fn invalid(&self, detail: &str) -> ChunkError {
        ChunkError::Invalid {
            path: self.chunk.path.display().to_string(),
            detail: detail.into(),
        }
    }

    /// The slot of record `lsn`, which the chunk must hold.
    pub fn slot(&self, lsn: Lsn) -> Result<Slot, ChunkError> {
        let header = &self.chunk.header;
        assert!(self.chunk.contains(lsn));
        let at = header.records_at() + (lsn - header.first_lsn) * SLOT_LEN as u64;
        Ok(decode_slot(&self.read(at, SLOT_LEN)?))
    }

    /// The lsn of the first record whose `ts_max` passes `time`, if the chunk has one.
    pub fn first_after(&self, time: u64) -> Result<Option<Lsn>, ChunkError> {
        let header = &self.chunk.header;
        let (mut low, mut high) = (0u64, u64::from(header.records));
        while low < high {
            let middle = low + (high - low) / 2;
            if self.slot(header.first_lsn + middle)?.ts_max > time {
                high = middle;
            } else {
                low = middle + 1;
            }
        }
        Ok((low < u64::from(header.records)).then(|| header.first_lsn + low))
    }

    /// The directory entry of `account`, by binary search, if the chunk changes it.
    pub fn account(&self, account: &AccountId) -> Result<Option<AccountDir>, ChunkError> {
        let header = &self.chunk.header;
        let (mut low, mut high) = (0u64, u64::from(header.accounts));
        while low < high {
            let middle = low + (high - low) / 2;
            let dir = self.account_at(middle)?;
            match dir.account.cmp(account) {
                std::cmp::Ordering::Equal => return Ok(Some(dir)),
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
            }
        }
        Ok(None)
    }

    fn account_at(&self, index: u64) -> Result<AccountDir, ChunkError> {
        let at = self.chunk.header.accounts_at() + index * ACCOUNT_LEN as u64;
        let bytes = self.read(at, ACCOUNT_LEN)?;
        decode_account(&bytes).ok_or_else(|| self.invalid("bad account entry"))
    }

    /// Every account directory entry, in order: the carry of the next chunk's first touches
    /// (read once when the index is opened; one chunk's worth).
    pub fn accounts(&self) -> Result<Vec<AccountDir>, ChunkError> {
        let header = &self.chunk.header;
        let bytes = self.read(header.accounts_at(), header.accounts as usize * ACCOUNT_LEN)?;
        bytes
            .chunks_exact(ACCOUNT_LEN)
            .map(|item| decode_account(item).ok_or_else(|| self.invalid("bad account entry")))
            .collect()
    }

    /// Entries `range` of the entries section (an account's are contiguous), without their
    /// details.
    pub fn entries(&self, range: std::ops::Range<u32>) -> Result<Vec<Entry>, ChunkError> {
        Ok(self
            .raw_entries(range)?
            .into_iter()
            .map(|(entry, _)| entry)
            .collect())
    }

    /// Entries `range`, each with the offset of its details.
    fn raw_entries(&self, range: std::ops::Range<u32>) -> Result<Vec<(Entry, u64)>, ChunkError> {
        let header = &self.chunk.header;
        // A directory entry pointing past the entries: only a file written wrong could
        // say so, since its checksum held; it is an error, not a panic.
        if range.start > range.end || range.end > header.entries {
            return Err(self.invalid("an account's entries lie outside the entries"));
        }
        let at = header.entries_at() + u64::from(range.start) * ENTRY_LEN as u64;
        let bytes = self.read(at, range.len() * ENTRY_LEN)?;
        bytes
            .chunks_exact(ENTRY_LEN)
            .map(|item| decode_entry(item).ok_or_else(|| self.invalid("bad entry kind")))
            .collect()
    }

    /// Entries `range` with their details: the entries, then their details in one read.
    pub fn entries_with_details(
        &self,
        range: std::ops::Range<u32>,
    ) -> Result<Vec<(Entry, Detail)>, ChunkError> {
        let header = &self.chunk.header;
        if range.is_empty() {
            return Ok(Vec::new());
        }
        // One entry more, if there is one, says where the last one's details end.
        let more = (range.end < header.entries) as u32;
        let mut entries = self.raw_entries(range.start..range.end + more)?;
        let end = match more {
            1 => entries.pop().expect("read one more").1,
            _ => header.details_bytes,
        };
        let start = entries[0].1;
        let len = end
            .checked_sub(start)
            .filter(|len| *len <= header.details_bytes);
        let len = len.ok_or_else(|| self.invalid("details out of order"))?;
        let bytes = self.read(header.details_at() + start, len as usize)?;
        let mut found = Vec::with_capacity(entries.len());
        for (entry, offset) in entries {
            let at = (offset - start) as usize;
            let detail = bytes
                .get(at..)
                .and_then(decode_detail)
                .ok_or_else(|| self.invalid("bad details"))?;
            found.push((entry, detail));
        }
        Ok(found)
    }

    /// The transfers in flight after the chunk's last record.
    pub fn in_flight(&self) -> Result<Vec<(Side, TransferKey, InFlight)>, ChunkError> {
        let header = &self.chunk.header;
        let len = header.in_flight as usize * IN_FLIGHT_LEN;
        let bytes = self.read(header.in_flight_at(), len)?;
        bytes
            .chunks_exact(IN_FLIGHT_LEN)
            .map(|item| decode_in_flight(item).ok_or_else(|| self.invalid("bad transfer")))
            .collect()
    }
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_id(out: &mut Vec<u8>, id: &[u8]) {
    assert!(!id.is_empty() && id.len() <= ID_LEN_MAX);
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    out.resize(out.len() + ID_LEN_MAX - id.len(), 0);
}

/// The bytes [`encode`] writes for `detail` (for counting them into the header first).
pub fn detail_len(detail: &Detail) -> u64 {
    let id_len = |id: Option<&[u8]>| 1 + id.map_or(0, <[u8]>::len) as u64;
    16 + id_len(detail.transaction_id.as_ref().map(|id| id.as_bytes()))
        + id_len(detail.counterparty.as_ref().map(|id| id.as_bytes()))
}

fn put_detail(out: &mut Vec<u8>, detail: &Detail) {
    put_u64(out, detail.timestamp);
    put_u64(out, detail.amount);
    for id in [
        detail.transaction_id.as_ref().map(|id| id.as_bytes()),
        detail.counterparty.as_ref().map(|id| id.as_bytes()),
    ] {
        let id = id.unwrap_or(&[]);
        out.push(id.len() as u8);
        out.extend_from_slice(id);
    }
}

fn put_figures(out: &mut Vec<u8>, figures: Figures) {
    for value in [figures.balance, figures.held, figures.incoming] {
        put_u64(out, value);
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn figures_at(bytes: &[u8], at: usize) -> Figures {
    Figures {
        balance: u64_at(bytes, at),
        held: u64_at(bytes, at + 8),
        incoming: u64_at(bytes, at + 16),
    }
}

fn id_at(bytes: &[u8], at: usize) -> Option<&str> {
    let len = usize::from(bytes[at]);
    (1..=ID_LEN_MAX)
        .contains(&len)
        .then(|| std::str::from_utf8(&bytes[at + 1..at + 1 + len]).ok())
        .flatten()
}

fn decode_header(bytes: &[u8]) -> Option<Header> {
    (u32_at(bytes, 4) == VERSION).then(|| Header {
        segment_first: u64_at(bytes, 8),
        first_lsn: u64_at(bytes, 16),
        last_lsn: u64_at(bytes, 24),
        end_offset: u64_at(bytes, 32),
        details_bytes: u64_at(bytes, 40),
        records: u32_at(bytes, 48),
        accounts: u32_at(bytes, 52),
        entries: u32_at(bytes, 56),
        in_flight: u32_at(bytes, 60),
    })
}

fn decode_slot(bytes: &[u8]) -> Slot {
    Slot {
        offset: u32_at(bytes, 0),
        len: u16::from_le_bytes([bytes[4], bytes[5]]),
        timestamp: u64_at(bytes, 6),
        ts_max: u64_at(bytes, 14),
    }
}

fn decode_account(bytes: &[u8]) -> Option<AccountDir> {
    let account = AccountId::new(id_at(bytes, 0)?).ok()?;
    let at = ID_LEN;
    let currency = Currency::from_numeric(u16::from_le_bytes([bytes[at], bytes[at + 1]]))?;
    let at = at + 2;
    Some(AccountDir {
        account,
        currency,
        before: figures_at(bytes, at),
        after: figures_at(bytes, at + FIGURES_LEN),
        prev_chunk: u64_at(bytes, at + 2 * FIGURES_LEN),
        entries_start: u32_at(bytes, at + 2 * FIGURES_LEN + 8),
        entries_count: u32_at(bytes, at + 2 * FIGURES_LEN + 12),
    })
}

fn decode_entry(bytes: &[u8]) -> Option<(Entry, u64)> {
    let entry = Entry {
        lsn: u64_at(bytes, 0),
        origin_lsn: u64_at(bytes, 8),
        kind: EntryKind::from_tag(bytes[16])?,
        after: figures_at(bytes, 17),
    };
    Some((entry, u64_at(bytes, 17 + FIGURES_LEN)))
}

/// The details at the start of `bytes` (which may run on past them); `None` if they do
/// not decode.
fn decode_detail(bytes: &[u8]) -> Option<Detail> {
    let bytes = &bytes[..bytes.len().min(DETAIL_LEN_MAX)];
    let fixed = bytes.get(..16)?;
    let mut at = 16;
    let mut text = || -> Option<Option<&str>> {
        let len = usize::from(*bytes.get(at)?);
        let id = bytes.get(at + 1..at + 1 + len)?;
        at += 1 + len;
        match len {
            0 => Some(None),
            _ => std::str::from_utf8(id).ok().map(Some),
        }
    };
    let transaction_id = match text()? {
        Some(id) => Some(TransactionId::new(id).ok()?),
        None => None,
    };
    let counterparty = match text()? {
        Some(id) => Some(AccountId::new(id).ok()?),
        None => None,
    };
    Some(Detail {
        timestamp: u64_at(fixed, 0),
        amount: u64_at(fixed, 8),
        transaction_id,
        counterparty,
    })
}

fn decode_in_flight(bytes: &[u8]) -> Option<(Side, TransferKey, InFlight)> {
    let side = match bytes[0] {
        1 => Side::Hold,
        2 => Side::Credit,
        3 => Side::TransactionDebit,
        4 => Side::TransactionCredit,
        _ => return None,
    };
    let key = TransferKey {
        from: AccountId::new(id_at(bytes, 1)?).ok()?,
        transaction_id: TransactionId::new(id_at(bytes, 1 + ID_LEN)?).ok()?,
    };
    let item = InFlight {
        account: AccountId::new(id_at(bytes, 1 + 2 * ID_LEN)?).ok()?,
        try_lsn: u64_at(bytes, 1 + 3 * ID_LEN),
        amount: u64_at(bytes, 1 + 3 * ID_LEN + 8),
    };
    Some((side, key, item))
}
