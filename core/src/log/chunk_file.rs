//! Chunk files: a chunk of final rows of the transfers table (home and credit rows), written
//! once, and the sorted key index that finds one of its rows with two small reads.
//!
//! A snapshot keeps the first chunks of the transfers table in chunk files
//! ([`crate::log::snapshot`], "Chunk files"). Once such a file is durable the partition drops
//! the chunk's rows from memory ([`crate::ledger::cold`]) and answers a retry of one of them
//! from the file: the in-memory filter names the chunk, the directory below names the few
//! index entries to read, and an entry names the row's offset.
//!
//! # Format (version 5)
//! All integers little-endian; rows as in a snapshot's transfers table (version 10: home
//! rows with their terms, credit rows and positions whose row moved on, see
//! [`crate::log::snapshot`]). A position
//! whose row moved on has no key, so no entry in the key index: a chunk's index holds at
//! most `count` entries.
//!
//! ```text
//! magic "WCHK" | version u8 | partition u32 | chunk index u64 | count u32 | rows
//! key index:  count entries sorted by (hash, offset): key hash u32 | row offset u32 | row crc32c u32
//! directory:  257 u32: the first entry whose hash's top byte is b, for b in 0..=255, then count
//! index_at u64: the offset of the key index in the file
//! crc32c u32 over every byte before it
//! ```
//!
//! A key's hash is the CRC32C of its `from` bytes, a zero byte and its `transaction_id`
//! bytes: pinned by the CRC's standard, so every build finds the same rows. A row offset is
//! from the file's first byte; a row's CRC32C covers its encoded bytes. Everything after the
//! rows is a function of them, so a chunk's bytes are still a function of the log (a
//! rewritten chunk is the same bytes).
//!
//! # Reading one row
//! The whole-file checksum is verified when the file is written and when a restarting
//! partition reads it; a lookup reads 2 KiB and one row, so it checks what it reads against
//! what memory holds: the CRC32C of each bucket of entries (kept beside the directory, 2 KiB
//! a chunk in all) and, through it, each row's own CRC32C. A damaged byte is so an error,
//! never a key reported absent (which would let a retry apply twice) or a wrong row.
//!
//! Version 1 had no key index: its rows are read whole, and the partition keeps them in
//! memory until a snapshot writes the chunk again in the current version. Versions 1 and 2
//! hold home rows only, each starting with an id's length; a credit row starts with a 0,
//! so one reader reads the rows of every version. Before version 5 a home row carried no
//! terms (a hold's were a table of the snapshot): such files are read whole too, and
//! written again in the current version by the next snapshot.

use crc32c::{crc32c, crc32c_append};

use crate::ledger::cold::{filter_hash, ChunkRead};
use crate::ledger::transfer_table::RowState;
use crate::ledger::transfer_table::StoredRow;
use crate::ledger::transfer_table::{RowStore, CHUNK_ROWS};
use crate::log::codec::Cursor;
use crate::log::crc::crc32c_of;
#[cfg(target_arch = "x86_64")]
use crate::log::crc::register_after;
use crate::log::snapshot::{put_table_row, read_stored_row, read_table_position};
use crate::model::event::TransferKey;
use crate::model::partition::PartitionId;
use crate::model::transaction::LEGS_MAX;

/// The first bytes of every chunk file.
pub const CHUNK_MAGIC: [u8; 4] = *b"WCHK";
/// The chunk file version this build writes: rows of both kinds (home and credit rows, see
/// [`crate::ledger::TableRow`]), then their sorted key index.
pub(crate) const CHUNK_VERSION: u8 = 5;
/// The last version whose home rows carry no terms (a hold's were in the snapshot).
pub(crate) const CHUNK_VERSION_SEPARATE_TERMS: u8 = 4;
/// The last version without positions whose row moved on.
pub(crate) const CHUNK_VERSION_UNMOVED: u8 = 3;
/// The version whose rows are all home rows (as version 1's).
pub(crate) const CHUNK_VERSION_HOME_ROWS: u8 = 2;
/// The version without a key index, still read.
pub(crate) const CHUNK_VERSION_UNINDEXED: u8 = 1;
/// Magic, version, partition, chunk index, count.
const HEADER_LEN: usize = 4 + 1 + 4 + 8 + 4;
const CRC_LEN: usize = 4;
/// Buckets of the directory: the top byte of a key's hash.
const BUCKETS: usize = 256;
const DIRECTORY_LEN: usize = (BUCKETS + 1) * 4;
/// A key index entry: hash, row offset, row CRC.
const ENTRY_LEN: usize = 12;
/// The directory, `index_at` and the checksum: what is read to open a chunk's index.
const TRAILER_LEN: usize = DIRECTORY_LEN + 8 + CRC_LEN;
/// Most bytes an encoded home row takes before its terms: three ids of 1 + 64 bytes,
/// amount, currency, state and reason, the remote flag, three timestamps.
const HOME_ROW_LEN_MAX: usize = 3 * 65 + 8 + 2 + 2 + 1 + 3 * 8;
/// Most bytes a row's terms take: a transaction of [`LEGS_MAX`] legs (the tag, its id, a
/// count, each leg's two ids, amount and currency, then the failed leg).
const TERMS_LEN_MAX: usize = 1 + 65 + 1 + LEGS_MAX * (2 * 65 + 8 + 2) + 2;
/// Most bytes an encoded row takes (9,261).
const ROW_LEN_MAX: usize = HOME_ROW_LEN_MAX + TERMS_LEN_MAX;
/// What a lookup reads of a row at first: every row but a multi-leg transaction's fits (a
/// hold's is at most 249 bytes); a longer one is read again, whole.
const ROW_LEN_FIRST_READ: usize = 256;
/// Fewest bytes an encoded row takes, a credit row without a Try and with one-byte ids (caps
/// what a corrupt count preallocates).
const ROW_LEN_MIN: usize = 6;

/// The on-disk hash of a transfer key (see the module docs). Every new transaction id is
/// hashed so twice (the cold rows' Bloom filter is of these hashes), so keys are run through
/// the processor's CRC32C instruction here in one pass, not through three calls of the
/// `crc32c` crate, whose setup for large buffers cost more than the short keys.
#[inline]
pub(crate) fn disk_key_hash(from: &[u8], transaction_id: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the processor has SSE4.2, checked just above.
        return unsafe { disk_key_hash_sse42(from, transaction_id) };
    }
    disk_key_hash_portable(from, transaction_id)
}

fn disk_key_hash_portable(from: &[u8], transaction_id: &[u8]) -> u32 {
    let crc = crc32c_append(crc32c(from), &[0]);
    crc32c_append(crc, transaction_id)
}

/// [`disk_key_hash`] with the CRC32C instruction: the same value (CRC32C is a standard; a
/// test holds the two equal), the register inverted once at each end as `crc32c` does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn disk_key_hash_sse42(from: &[u8], transaction_id: &[u8]) -> u32 {
    let state = register_after(u64::from(u32::MAX), from);
    let state = u64::from(std::arch::x86_64::_mm_crc32_u8(state as u32, 0));
    !(register_after(state, transaction_id) as u32)
}

fn bucket_of(hash: u32) -> usize {
    (hash >> 24) as usize
}

/// Where a chunk file's key index is, where each bucket of it starts, and each bucket's
/// CRC32C: what a partition keeps in memory of a chunk whose rows it dropped (2 KiB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkIndex {
    index_at: u64,
    directory: Box<[u32]>,
    bucket_crcs: Box<[u32]>,
}

/// A key index entry: the key's hash, the row's offset and CRC32C.
type Entry = (u32, u32, u32);

impl ChunkIndex {
    /// Keys the chunk file holds: its rows, but for positions whose row moved on.
    pub(crate) fn keys(&self) -> usize {
        self.directory[BUCKETS] as usize
    }

    /// The index of `entries` (sorted), starting at `index_at` in the file.
    fn of(entries: &[Entry], index_at: u64) -> ChunkIndex {
        debug_assert!(entries.is_sorted());
        let mut directory = vec![0u32; BUCKETS + 1];
        for (hash, _, _) in entries {
            directory[bucket_of(*hash) + 1] += 1;
        }
        for b in 0..BUCKETS {
            directory[b + 1] += directory[b];
        }
        let mut bytes = Vec::with_capacity(entries.len() * ENTRY_LEN);
        put_entries(&mut bytes, entries);
        let bucket_crcs = (0..BUCKETS)
            .map(|b| {
                let range =
                    directory[b] as usize * ENTRY_LEN..directory[b + 1] as usize * ENTRY_LEN;
                crc32c(&bytes[range])
            })
            .collect();
        ChunkIndex {
            index_at,
            directory: directory.into_boxed_slice(),
            bucket_crcs,
        }
    }

    /// Entries `first..end` of the key index that may hold `hash`.
    fn bucket(&self, hash: u32) -> (u32, u32) {
        let b = bucket_of(hash);
        (self.directory[b], self.directory[b + 1])
    }
}

/// The key hashes of chunk file `chunk` ([`disk_key_hash`] of each row's key, in hash
/// order), read from its key index whose directory is `index`: what the cold rows' Bloom
/// filter is rebuilt from when it grows (about 768 KiB read a chunk, each bucket checked).
pub(crate) fn key_hashes(
    reader: &dyn ChunkRead,
    chunk: u64,
    index: &ChunkIndex,
) -> Result<Vec<u32>, String> {
    let count = index.directory[BUCKETS] as usize;
    assert!(
        count <= CHUNK_ROWS,
        "a chunk's index holds at most a chunk of keys"
    );
    let bytes = reader
        .read_at(chunk, index.index_at, count * ENTRY_LEN)
        .map_err(|e| format!("chunk file {chunk}: {e}"))?;
    if bytes.len() != count * ENTRY_LEN {
        return Err(format!("chunk file {chunk}: its key index is short"));
    }
    for b in 0..BUCKETS {
        let range =
            index.directory[b] as usize * ENTRY_LEN..index.directory[b + 1] as usize * ENTRY_LEN;
        if crc32c(&bytes[range]) != index.bucket_crcs[b] {
            return Err(format!("chunk file {chunk}: its key index is damaged"));
        }
    }
    Ok(bytes
        .chunks_exact(ENTRY_LEN)
        .map(|entry| u32::from_le_bytes(entry[..4].try_into().expect("4 bytes")))
        .collect())
}

/// The rows of a chunk file and, from version 2, its key index.
pub(crate) struct DecodedChunk {
    /// Each position's row; none where the row moved on (see `transfer_table`, "Rows in
    /// flight move on"), a position the key index has no entry for.
    pub(crate) rows: Vec<Option<StoredRow>>,
    pub(crate) index: Option<ChunkIndex>,
    /// The file's version: from 5 its home rows carry their terms.
    pub(crate) version: u8,
}

/// A chunk file's bytes and what a partition keeps of them once the rows leave memory: the
/// file's [`ChunkIndex`], the in-memory filter's hash of each row's key, in row order, and
/// the keys' [`disk_key_hash`]es (the Bloom filter's).
pub struct EncodedChunk {
    pub bytes: Vec<u8>,
    pub index: ChunkIndex,
    pub filter_hashes: Vec<u64>,
    pub key_hashes: Vec<u32>,
}

/// Chunk file `index` of `rows` (see the module docs).
pub(crate) fn encode_chunk(partition: PartitionId, index: usize, rows: &RowStore) -> EncodedChunk {
    encode_chunk_in(CHUNK_VERSION, partition, index, rows)
}

/// Chunk file `index` of `rows` in `version` (4 or 5; 4 only in tests of reading old files).
pub(crate) fn encode_chunk_in(
    version: u8,
    partition: PartitionId,
    index: usize,
    rows: &RowStore,
) -> EncodedChunk {
    assert!(version == CHUNK_VERSION || (cfg!(test) && version == CHUNK_VERSION_SEPARATE_TERMS));
    let range = index * CHUNK_ROWS..(index + 1) * CHUNK_ROWS;
    let mut out = Vec::with_capacity(CHUNK_ROWS * 104);
    put_header(&mut out, version, partition, index as u64, CHUNK_ROWS);
    let mut entries: Vec<Entry> = Vec::with_capacity(CHUNK_ROWS);
    let mut filter_hashes = Vec::with_capacity(CHUNK_ROWS);
    for row in rows.views_of(range) {
        debug_assert!(!row.state.is_unfinished(), "chunk rows are final");
        let start = out.len();
        let offset = u32::try_from(start).expect("a chunk file is under 4 GiB");
        put_table_row(&mut out, row, version > CHUNK_VERSION_SEPARATE_TERMS);
        if row.state == RowState::Moved {
            // No key: the row is at its new position, in this chunk or a later one.
            continue;
        }
        let hash = disk_key_hash(row.from, row.transaction_id);
        entries.push((hash, offset, crc32c_of(&[&out[start..]])));
        filter_hashes.push(filter_hash(row.from, row.transaction_id));
    }
    entries.sort_unstable();
    let index = ChunkIndex::of(&entries, out.len() as u64);
    put_index(&mut out, &entries, &index);
    let crc = crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    EncodedChunk {
        bytes: out,
        index,
        filter_hashes,
        key_hashes: entries.iter().map(|&(hash, _, _)| hash).collect(),
    }
}

/// Chunk file `index` of `rows` as version 1 wrote it: rows only. What tests of reading old
/// chunk files start from.
#[cfg(test)]
pub(crate) fn encode_chunk_v1(partition: PartitionId, index: usize, rows: &RowStore) -> Vec<u8> {
    let range = index * CHUNK_ROWS..(index + 1) * CHUNK_ROWS;
    let mut out = Vec::new();
    put_header(
        &mut out,
        CHUNK_VERSION_UNINDEXED,
        partition,
        index as u64,
        CHUNK_ROWS,
    );
    for row in rows.views_of(range) {
        put_table_row(&mut out, row, false);
    }
    let crc = crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn put_header(out: &mut Vec<u8>, version: u8, partition: PartitionId, index: u64, count: usize) {
    out.extend_from_slice(&CHUNK_MAGIC);
    out.push(version);
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&(count as u32).to_le_bytes());
}

fn put_entries(out: &mut Vec<u8>, entries: &[Entry]) {
    for (hash, offset, crc) in entries {
        for value in [hash, offset, crc] {
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
}

/// Appends the key index of `entries` (sorted), its directory and where it starts.
fn put_index(out: &mut Vec<u8>, entries: &[Entry], index: &ChunkIndex) {
    put_entries(out, entries);
    for start in index.directory.iter() {
        out.extend_from_slice(&start.to_le_bytes());
    }
    out.extend_from_slice(&index.index_at.to_le_bytes());
}

/// The rows (and index) of chunk file `index` of `partition`; any damage or a mismatch is an
/// error. A version 2 index must be exactly the one its rows give.
pub(crate) fn decode_chunk(
    bytes: &[u8],
    partition: PartitionId,
    index: u64,
) -> Result<DecodedChunk, String> {
    if bytes.len() < HEADER_LEN + CRC_LEN || bytes[..4] != CHUNK_MAGIC {
        return Err(format!("chunk file {index} is not a walletd chunk"));
    }
    let (content, trailer) = bytes.split_at(bytes.len() - CRC_LEN);
    if crc32c(content).to_le_bytes() != trailer {
        return Err(format!("chunk file {index}: checksum mismatch"));
    }
    let version = content[4];
    if ![
        CHUNK_VERSION,
        CHUNK_VERSION_SEPARATE_TERMS,
        CHUNK_VERSION_UNMOVED,
        CHUNK_VERSION_HOME_ROWS,
        CHUNK_VERSION_UNINDEXED,
    ]
    .contains(&version)
    {
        return Err(format!("chunk file {index}: unknown version {version}"));
    }
    let mut cursor = Cursor::new(&content[5..]);
    let (found_partition, found_index) = (cursor.u32()?, cursor.u64()?);
    if (found_partition, found_index) != (partition, index) {
        return Err(format!(
            "chunk file {index} holds chunk {found_index} of partition {found_partition}"
        ));
    }
    // A chunk is exactly CHUNK_ROWS rows: the snapshot's inline rows start at
    // `chunks * CHUNK_ROWS`. A shorter one used to be read as it was, moving every later row
    // across the chunk edges: the restored partition then stopped on an assertion (a row in
    // flight now in a chunk counted final) or, at its next snapshot, left out a row that it
    // took its chunk files to hold.
    let count = cursor.u32()? as usize;
    if count != CHUNK_ROWS {
        return Err(format!(
            "chunk file {index} holds {count} rows, not {CHUNK_ROWS}"
        ));
    }
    let mut rows = Vec::with_capacity(count.min(cursor.remaining() / ROW_LEN_MIN));
    let mut entries = Vec::new();
    for _ in 0..count {
        let start = 5 + cursor.position();
        // A home row starts with an id's length, never the credit rows' mark: versions 1
        // and 2, which hold home rows only, read the same way.
        let (moved, terms) = (
            version > CHUNK_VERSION_UNMOVED,
            version > CHUNK_VERSION_SEPARATE_TERMS,
        );
        let Some(row) = read_table_position(&mut cursor, moved, terms)? else {
            rows.push(None);
            continue;
        };
        if row.0.is_unfinished() {
            return Err(format!("chunk file {index} holds a row still in flight"));
        }
        let crc = crc32c_of(&[&content[start..5 + cursor.position()]]);
        entries.push((key_hash_of(&row.0.key()), start as u32, crc));
        rows.push(Some(row));
    }
    if version == CHUNK_VERSION_UNINDEXED {
        cursor.finish()?;
        return Ok(DecodedChunk {
            rows,
            index: None,
            version,
        });
    }
    let rows_end = 5 + cursor.position();
    entries.sort_unstable();
    let key_index = ChunkIndex::of(&entries, rows_end as u64);
    let mut expected = Vec::with_capacity(content.len() - rows_end);
    put_index(&mut expected, &entries, &key_index);
    if content[rows_end..] != expected[..] {
        return Err(format!(
            "chunk file {index}: its key index is not the one of its rows"
        ));
    }
    Ok(DecodedChunk {
        rows,
        index: Some(key_index),
        version,
    })
}

fn key_hash_of(key: &TransferKey) -> u32 {
    disk_key_hash(key.from.as_bytes(), key.transaction_id.as_bytes())
}

/// Most bytes a chunk file takes: CHUNK_ROWS rows of at most ROW_LEN_MAX bytes and its index.
fn file_len_max() -> u64 {
    (HEADER_LEN + CHUNK_ROWS * (ROW_LEN_MAX + ENTRY_LEN) + TRAILER_LEN) as u64
}

/// The row of `key` in chunk file `chunk`, if the file holds one: reads the bucket of the key
/// index the key's hash falls in (about 2 KiB), then the row. A row found is checked to be
/// the key's and final; anything else wrong is an error, never a wrong row.
pub(crate) fn find_row(
    reader: &dyn ChunkRead,
    chunk: u64,
    index: &ChunkIndex,
    key: &TransferKey,
) -> Result<Option<StoredRow>, String> {
    let io = |e: std::io::Error| format!("chunk file {chunk}: {e}");
    let hash = key_hash_of(key);
    let (first, end) = index.bucket(hash);
    if first >= end {
        return Ok(None);
    }
    let at = index.index_at + u64::from(first) * ENTRY_LEN as u64;
    let entries = reader
        .read_at(chunk, at, (end - first) as usize * ENTRY_LEN)
        .map_err(io)?;
    if crc32c(&entries) != index.bucket_crcs[bucket_of(hash)] {
        return Err(format!("chunk file {chunk}: its key index is damaged"));
    }
    for entry in entries.chunks_exact(ENTRY_LEN) {
        let word = |at: usize| u32::from_le_bytes(entry[at..at + 4].try_into().expect("4 bytes"));
        let (found, offset, crc) = (word(0), u64::from(word(4)), word(8));
        if found != hash {
            continue;
        }
        if offset < HEADER_LEN as u64 || offset >= index.index_at {
            return Err(format!("chunk file {chunk}: a row offset out of bounds"));
        }
        let (bytes, row, len) = read_row_at(reader, chunk, offset, index.index_at - offset)?;
        if crc32c_of(&[&bytes[..len]]) != crc {
            return Err(format!(
                "chunk file {chunk}: the row at {offset} is damaged"
            ));
        }
        debug_assert!(!row.0.is_unfinished(), "chunk rows are final");
        if row.0.key() == *key {
            return Ok(Some(row));
        }
    }
    Ok(None)
}

/// The row at `offset` of chunk file `chunk`, which has at most `room` bytes for it: its
/// bytes as read, the row, and how many of those bytes it took. Reads
/// [`ROW_LEN_FIRST_READ`] bytes first and, if the row is longer, all it can be.
fn read_row_at(
    reader: &dyn ChunkRead,
    chunk: u64,
    offset: u64,
    room: u64,
) -> Result<(Vec<u8>, StoredRow, usize), String> {
    let io = |e: std::io::Error| format!("chunk file {chunk}: {e}");
    let mut len = room.min(ROW_LEN_FIRST_READ as u64) as usize;
    loop {
        let bytes = reader.read_at(chunk, offset, len).map_err(io)?;
        let mut cursor = Cursor::new(&bytes);
        // Only files of the current version stay on disk (see `snapshot::read_chunks`).
        match read_stored_row(&mut cursor, true) {
            Ok(row) => {
                let used = cursor.position();
                return Ok((bytes, row, used));
            }
            Err(_) if (len as u64) < room.min(ROW_LEN_MAX as u64) => {
                len = room.min(ROW_LEN_MAX as u64) as usize;
            }
            Err(e) => return Err(format!("chunk file {chunk}: row at {offset}: {e}")),
        }
    }
}

/// The whole of chunk file `chunk`, decoded and checked (see [`decode_chunk`]).
pub(crate) fn read_chunk(
    reader: &dyn ChunkRead,
    partition: PartitionId,
    chunk: u64,
) -> Result<DecodedChunk, String> {
    let io = |e: std::io::Error| format!("chunk file {chunk}: {e}");
    let len = reader.len(chunk).map_err(io)?;
    if len > file_len_max() {
        return Err(format!(
            "chunk file {chunk} is {len} bytes, more than a chunk"
        ));
    }
    let bytes = reader.read_at(chunk, 0, len as usize).map_err(io)?;
    decode_chunk(&bytes, partition, chunk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::row_terms::RowTerms;
    use crate::ledger::transactions::TransactionTerms;
    use crate::ledger::transfer_table::TransferTable;
    use crate::ledger::{TransferRow, TransferState};
    use crate::model::ids::{AccountId, TransactionId};
    use crate::model::money::{Amount, Currency};
    use crate::model::transaction::{Leg, Transaction};

    /// An id of 64 bytes, the longest, ending in `n`.
    fn long_id(n: usize) -> String {
        format!("{n:a>64}")
    }

    /// The longest terms a row can have: a transaction of `LEGS_MAX` legs between accounts of
    /// the longest ids, under the longest transaction id.
    fn longest_transaction(n: usize) -> TransactionTerms {
        let legs = (0..LEGS_MAX)
            .map(|leg| Leg {
                from: AccountId::new(&long_id(n * 1000 + 2 * leg)).unwrap(),
                to: AccountId::new(&long_id(n * 1000 + 2 * leg + 1)).unwrap(),
                amount: Amount::from_minor(1_000_000).unwrap(),
                currency: Currency::USD,
            })
            .collect();
        let tx = Transaction::new(TransactionId::new(&long_id(n)).unwrap(), legs).unwrap();
        TransactionTerms {
            tx,
            failed_leg: Some(63),
        }
    }

    #[test]
    fn rows_longer_than_a_first_read_are_found_whole() {
        let mut table = TransferTable::default();
        let mut terms_of = Vec::new();
        for n in 0..CHUNK_ROWS + 1 {
            let terms = longest_transaction(n);
            let row = TransferRow {
                transfer: terms.tx.first_leg(),
                state: TransferState::Cancelled(crate::model::event::Reason::InsufficientFunds),
                remote: true,
                accepted_at: u64::MAX,
                decided_at: u64::MAX,
                finished_at: u64::MAX,
            };
            let at = table.len();
            assert!(table.insert(&row).unwrap());
            table.set_terms(at, RowTerms::Transaction(terms.clone()));
            terms_of.push((row, terms));
        }
        let store = table.freeze();
        let mut longest = Vec::new();
        put_table_row(&mut longest, store.views_of(0..1).next().unwrap(), true);
        assert_eq!(longest.len(), ROW_LEN_MAX, "the bound is exact");
        let encoded = encode_chunk(0, 0, &store);
        let files = crate::ledger::cold::TestChunks::default();
        files.files.lock().unwrap().insert(0, encoded.bytes);
        for (row, terms) in &terms_of[..CHUNK_ROWS] {
            let found = find_row(&files, 0, &encoded.index, &row.transfer.key()).unwrap();
            let expected = (
                crate::ledger::TableRow::Home(*row),
                Some(RowTerms::Transaction(terms.clone())),
            );
            assert_eq!(found, Some(expected));
        }
    }

    proptest::proptest! {
        /// The on-disk hash is pinned: the instruction's path gives the `crc32c` crate's value.
        #[test]
        fn the_key_hash_is_the_same_on_every_path(
            from in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            id in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
        ) {
            proptest::prop_assert_eq!(
                disk_key_hash(&from, &id),
                disk_key_hash_portable(&from, &id)
            );
        }
    }
}
