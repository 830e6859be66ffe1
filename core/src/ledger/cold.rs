//! Cold transfer rows: the rows of the transfers table (home and credit rows alike) whose
//! chunk is durable in a chunk file, dropped from memory and found again on disk.
//!
//! A transaction id is never forgotten (a retry a year later gets the first answer), but a
//! partition cannot keep a row per transfer ever made in memory. Chunk files
//! ([`crate::log::chunk_file`]) already hold every final row once; once one is durable, the
//! transfers table drops the chunk's rows and keeps, per row, 4 bytes in a [`ColdKeys`]
//! filter that also names the chunk, 12 bits in a Bloom filter in front of it, and per chunk
//! its 1 KiB directory ([`crate::log::chunk_file::ChunkIndex`]). A lookup:
//!
//! - of a key never seen tests 8 bits of one cache line of the Bloom filter and stops, but
//!   for about 1 in 200 (see "A Bloom filter in front"), which go on to the filter that
//!   names the chunk and stop there: no disk read, but for 1 in 840 of those;
//! - of a cold key passes the Bloom filter, then reads two small ranges of the chunk the
//!   filter names: the key index bucket its hash falls in (about 2 KiB), then the row.
//!
//! # Why this filter, and not `xorf`, `fastbloom`, `redb` or `fjall`
//! The filter must say *which* chunk (a filter per chunk would be probed 763 times per new
//! key at 50 million rows: 65,536 rows a chunk), and it must grow a chunk at a time without
//! the keys, which are on disk only. Xor and binary fuse filters (`xorf`) are built once from
//! every key and hold no value; a Bloom filter (`fastbloom`) cannot grow and holds no value
//! either: both would need a per-chunk copy. An embedded store (`redb`, `fjall`) keeps its own
//! write-ahead log and page cache: every transfer would be written a second time (against
//! "a transfer row is written to disk once"), and neither runs on the simulator's disk.
//!
//! So the filter is a chain of open-addressed tables of 4-byte entries, a fingerprint of the
//! key and the chunk number: one table fills to 4/5 and the next, twice its size, takes the
//! new keys (an entry keeps too few of its key's bits to move to a bigger table). Numbers, at
//! 50 million cold rows: tables of 2^20 .. 2^25 slots, 264 MiB, 5.3 bytes a row (at 3/4 the
//! six held 47 million keys, and a seventh of 256 MiB came before 50 million); a lookup of a
//! new key probes six tables (their home slots are prefetched ahead of it, see
//! [`crate::ledger::Ledger::prefetch`]); a fingerprint is 16 bits, so a probe of a table
//! at 4/5 (about 13 slots) matches a stranger with odds 13/65,536, six tables 1/840, and the
//! disk read that settles it is a page-cache hit for recent chunks. A `HashMap` of the 32-bit
//! key hash and row position (the hot index's own layout) would take 10.7 to 21 bytes a row.
//!
//! # A Bloom filter in front
//! The filter that names the chunk grows a table at a time, and a new key (every transfer
//! but a retry) must probe them all: four tables at 10 million cold rows, six at 50 million,
//! a cache miss each, about a fifth of a partition's rate. So a blocked Bloom filter
//! answers first: a key sets one bit in each 64-bit word of one 64-byte line (8 bits), 12
//! bits a key at its capacity, so a new key costs one miss, prefetched with the account
//! rows ahead of execution, and a stranger passes about 1 time in 200.
//!
//! A Bloom filter cannot grow in place, and the keys are on disk only. It holds the keys'
//! on-disk hashes ([`crate::log::chunk_file::disk_key_hash`], 32 bits), which each chunk
//! file's key index lists, and which a lookup computes once for the hot index too (see
//! `transfer_table::key_hash`). Once it holds 7/8 of its capacity, one of twice the size is
//! built from the key indexes of the chunks already cold by a [`BloomBuild`] that the next
//! snapshot's encoding runs, off the partition's thread (reading them there cost the
//! partition 4 to 20 ms at a time: the files left the page cache when written); the keys of
//! the chunks that go cold meanwhile wait beside it, and it is swapped in, with them, when
//! that snapshot is written. The old filter answers until then, so no key is ever missing.
//! 32 bits are enough: a stranger's hash is one of 50 million keys' 1 time in 86, which it
//! then adds to the filter's own rate, and such a stranger still only probes the second
//! filter (whose hash is independent of this one). At 50 million cold rows it is sized for
//! 64 million keys: 96 MiB, 1.9 bytes a row.
//!
//! It is not stored: recovery reads every row of the chunks it keeps on disk to check them
//! and builds both filters from them, sized at once for the chunks it found, so a file
//! format with a Bloom section (and its version, checksum and tests of damage) would save
//! no read. `fastbloom` is a blocked Bloom filter too, but hashes the keys itself and has no
//! prefetch: this one is sixty lines.
//!
//! # Reading in the ledger
//! The ledger is sans-IO but for this: it reads chunk files through a [`ChunkRead`] it is
//! given, synchronously, from `decide` and `apply`. Chunk files never change once durable,
//! so a read has no ordering to respect and cannot see a half-written state; in production
//! it is a `pread` (a page-cache hit for recent chunks, one disk read otherwise), in the
//! simulator a read of the simulated disk. Making cold lookups asynchronous through the
//! driver would add a round trip and a second decide to every retry of an old transaction,
//! to save a read that only such retries and rare false positives make.

use std::hash::Hasher;
use std::io;
use std::sync::Arc;

use rustc_hash::FxHasher;

use crate::ledger::transfer_table::StoredRow;
use crate::ledger::transfer_table::CHUNK_ROWS;
pub use crate::log::chunk_file::ChunkIndex;
use crate::log::chunk_file::{self, DecodedChunk};
use crate::model::event::TransferKey;
use crate::model::partition::PartitionId;

/// Reads chunk files of one partition: what the ledger is given to find its cold rows.
/// Implementations only ever read files that are durable and never change.
pub trait ChunkRead: Send + Sync {
    /// Exactly `len` bytes of chunk file `chunk` from `offset`.
    fn read_at(&self, chunk: u64, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// The length of chunk file `chunk`.
    fn len(&self, chunk: u64) -> io::Result<u64>;
}

/// A chunk whose file is written: what the transfers table keeps of it once its rows leave
/// memory. Made where the chunk file is encoded (the storage's thread), so that dropping the
/// rows costs the partition's thread only the filter's inserts.
pub struct ColdChunk {
    /// The chunk's number: its rows are `chunk * CHUNK_ROWS..(chunk + 1) * CHUNK_ROWS`.
    pub chunk: usize,
    pub index: ChunkIndex,
    /// [`filter_hash`] of each row's key, in row order.
    pub filter_hashes: Vec<u64>,
    /// The on-disk key hash of each row's key, in any order: the Bloom filter's.
    pub key_hashes: Vec<u32>,
}

/// The chunks a snapshot's encoding wrote ([`ColdChunk`]), handed from the thread that
/// encodes it to the partition, which takes them once the snapshot is durable.
#[derive(Clone, Default)]
pub struct WrittenChunks(Arc<std::sync::Mutex<Vec<ColdChunk>>>);

impl WrittenChunks {
    pub(crate) fn push(&self, chunk: ColdChunk) {
        self.0.lock().expect("written chunks").push(chunk);
    }

    /// The chunks written so far, in the order they were.
    pub fn take(&self) -> Vec<ColdChunk> {
        std::mem::take(&mut *self.0.lock().expect("written chunks"))
    }
}

/// Why a cold row could not be read: the chunk file is missing, unreadable or damaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored transfers unreadable: {0}")]
pub struct ColdError(pub String);

/// Bits of an entry that name the chunk: rows are numbered in 32 bits, so a chunk in
/// `32 - log2(CHUNK_ROWS)` (16 in production, where a chunk is 65,536 rows).
const CHUNK_BITS: u32 = 32 - CHUNK_ROWS.trailing_zeros();
/// Bits of an entry that hold the key's fingerprint (16 in production; 6 in tests and the
/// simulator, whose small chunks leave fewer, so that they take false positives often).
const FINGERPRINT_BITS: u32 = 32 - CHUNK_BITS;
/// Slots of the first table of the filter (4 MiB in production).
const FIRST_TABLE_SLOTS: usize = if cfg!(any(test, madsim, feature = "testing")) {
    1 << 6
} else {
    1 << 20
};
/// Keys ahead of the one being inserted whose home slot [`ColdKeys::insert_all`] asks for.
const INSERT_PREFETCH_AHEAD: usize = 16;
/// Most entries per slot of a table before the next takes new keys: 4/5. Fuller tables make
/// longer probes for a new key (about 13 slots at 4/5, 8.5 at 3/4, one or two cache lines
/// either way), but at 3/4 the tables up to 2^25 slots held 47 million keys and the next,
/// 256 MiB, came before 50 million; at 4/5 they hold 50.4 million.
const FILL_NUMERATOR: usize = 4;
const FILL_DENOMINATOR: usize = 5;

/// The filter's hash of a key: 64 bits, the low ones choosing the slot, the high ones the
/// fingerprint. Fx mixes into the high bits only, so a finaliser (murmur3's) spreads them.
/// In memory only: never written, so it may change between builds.
pub(crate) fn filter_hash(from: &[u8], transaction_id: &[u8]) -> u64 {
    filter_hash_of(key_fx(from, transaction_id))
}

/// The Fx hash of a transfer key, which the hot index's hash and [`filter_hash`] both start
/// from: a lookup that may go on to the filter hashes the key's bytes once.
#[inline]
pub(crate) fn key_fx(from: &[u8], transaction_id: &[u8]) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write(from);
    hasher.write_u8(0);
    hasher.write(transaction_id);
    hasher.finish()
}

/// [`filter_hash`] of the key whose [`key_fx`] is `fx`.
#[inline]
pub(crate) fn filter_hash_of(fx: u64) -> u64 {
    let mut h = fx;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// One open-addressed table of the filter: 0 is an empty slot, anything else a fingerprint
/// (never 0) above a chunk number.
#[derive(Clone)]
struct KeyTable {
    slots: Box<[u32]>,
    used: usize,
}

impl KeyTable {
    fn with_len(len: usize) -> KeyTable {
        debug_assert!(len.is_power_of_two());
        KeyTable {
            slots: vec![0; len].into_boxed_slice(),
            used: 0,
        }
    }

    fn is_full(&self) -> bool {
        (self.used + 1) * FILL_DENOMINATOR > self.slots.len() * FILL_NUMERATOR
    }

    fn home(&self, hash: u64) -> usize {
        hash as usize & (self.slots.len() - 1)
    }
}

/// Asks the processor to bring `slot`'s cache line in without waiting for it (as the hot
/// index does, see `row_index`): a plain read would hold the processor's window.
#[inline]
fn prefetch(slot: &u32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it reads nothing and cannot fault, whatever the address
    // (here a valid reference). SSE, which provides it, is part of every x86_64 target.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((slot as *const u32).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::hint::black_box(*slot);
}

fn fingerprint(hash: u64) -> u32 {
    ((hash >> (64 - FINGERPRINT_BITS)) as u32).max(1)
}

/// The filter of cold keys (see the module docs).
#[derive(Clone, Default)]
pub(crate) struct ColdKeys {
    tables: Vec<KeyTable>,
    len: usize,
}

impl ColdKeys {
    /// Adds the keys of `chunk`, whose hashes are `hashes`. A key is added once; the filter
    /// does not check. Each insert is a cache miss in a table far larger than the cache, on
    /// the partition's thread, so the home slot of the key [`INSERT_PREFETCH_AHEAD`] places
    /// on is asked for before each insert: the misses overlap.
    pub(crate) fn insert_all(&mut self, hashes: &[u64], chunk: usize) {
        for (i, &hash) in hashes.iter().enumerate() {
            if let (Some(&ahead), Some(table)) =
                (hashes.get(i + INSERT_PREFETCH_AHEAD), self.tables.last())
            {
                prefetch(&table.slots[table.home(ahead)]);
            }
            self.insert(hash, chunk);
        }
    }

    /// Adds a key of `chunk`. A key is added once; the filter does not check.
    pub(crate) fn insert(&mut self, hash: u64, chunk: usize) {
        assert!(chunk < 1 << CHUNK_BITS, "a chunk number fits its entry");
        if self.tables.last().is_none_or(KeyTable::is_full) {
            let len = self
                .tables
                .last()
                .map_or(FIRST_TABLE_SLOTS, |t| t.slots.len() * 2);
            self.tables.push(KeyTable::with_len(len));
        }
        let table = self.tables.last_mut().expect("a table");
        let entry = fingerprint(hash) << CHUNK_BITS | chunk as u32;
        let mask = table.slots.len() - 1;
        let mut at = table.home(hash);
        // Bounded: a table keeps a fifth of its slots empty.
        while table.slots[at] != 0 {
            at = (at + 1) & mask;
        }
        table.slots[at] = entry;
        table.used += 1;
        self.len += 1;
    }

    /// Calls `confirm` with each chunk whose entry matches `hash`, newest table first, until
    /// it finds the key there; `None` when no chunk holds it.
    pub(crate) fn find<R>(
        &self,
        hash: u64,
        mut confirm: impl FnMut(usize) -> Result<Option<R>, ColdError>,
    ) -> Result<Option<R>, ColdError> {
        let wanted = fingerprint(hash);
        for table in self.tables.iter().rev() {
            let mask = table.slots.len() - 1;
            let mut at = table.home(hash);
            loop {
                let entry = table.slots[at];
                if entry == 0 {
                    break;
                }
                if entry >> CHUNK_BITS == wanted {
                    let chunk = (entry & ((1 << CHUNK_BITS) - 1)) as usize;
                    if let Some(found) = confirm(chunk)? {
                        return Ok(Some(found));
                    }
                }
                at = (at + 1) & mask;
            }
        }
        Ok(None)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes the filter's tables take.
    pub(crate) fn bytes(&self) -> usize {
        self.tables.iter().map(|t| t.slots.len() * 4).sum()
    }
}

/// Bits of the Bloom filter per key it is sized for: 12, so that at its capacity a new key
/// is a false positive about 1 time in 200 (8 bits in one 512-bit line: each 64-bit word
/// of the line about half set, 0.5^8, and more for the lines that drew more keys).
const BLOOM_BITS_PER_KEY: usize = 12;
/// Keys the first Bloom filter is sized for (1.5 MiB in production; 2 chunks in tests and
/// the simulator, so that they grow it often).
const BLOOM_KEYS_FIRST: usize = if cfg!(any(test, madsim, feature = "testing")) {
    2 * CHUNK_ROWS
} else {
    1 << 20
};
/// When a Bloom filter starts growing: once it holds 7/8 of its capacity. One of twice the
/// capacity is then built from the chunk files' key indexes off the partition's thread, with
/// the next snapshot ([`BloomBuild`]), and swapped in when that snapshot is written; the
/// eighth left covers the keys that go cold meanwhile (a snapshot comes every million events
/// at most), and the filter in place stays correct if more do, only fuller. Not sooner: the
/// filter of twice the capacity is allocated when it starts (at 50 million cold rows, 7/8
/// of 2^26 is 58 million, so the bar's run never allocates the next, of 192 MiB).
const BLOOM_GROW_AT_NUMERATOR: usize = 7;
const BLOOM_GROW_AT_DENOMINATOR: usize = 8;
/// The salts that pick a key's bit in each word of its line (those of Parquet's split
/// block Bloom filter, which multiplies a 32-bit hash by each and keeps the top bits).
const BLOOM_SALTS: [u32; 8] = [
    0x47b6_137b,
    0x4497_4d91,
    0x8824_ad5b,
    0xa2b7_289d,
    0x7054_95c7,
    0x2df1_424b,
    0x9efc_4947,
    0x5c6b_fb31,
];

/// One cache line of the Bloom filter: a key sets one bit in each of its eight words.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct BloomLine([u64; 8]);

/// A blocked Bloom filter of the cold keys' on-disk hashes ([`chunk_file::disk_key_hash`]):
/// a key sets and tests 8 bits of one cache line, so a key it never saw costs one miss,
/// however many chunks have gone cold (see the module docs).
#[derive(Clone, Default)]
struct Bloom {
    lines: Box<[BloomLine]>,
    /// Keys it is sized for: past them, false positives grow (see [`ColdRows::push`]).
    capacity: usize,
    len: usize,
}

impl Bloom {
    fn with_capacity(capacity: usize) -> Bloom {
        let lines = (capacity * BLOOM_BITS_PER_KEY).div_ceil(512).max(1);
        Bloom {
            lines: vec![BloomLine::default(); lines].into_boxed_slice(),
            capacity,
            len: 0,
        }
    }

    /// The line of `hash` (the high half of a mix of it, reduced by a multiply) and the bit
    /// of each word (from the low half).
    #[inline]
    fn place(&self, hash: u32) -> (usize, [u64; 8]) {
        debug_assert!(!self.lines.is_empty());
        let mixed = filter_hash_of(u64::from(hash));
        let line = ((mixed >> 32) * self.lines.len() as u64) >> 32;
        let low = mixed as u32;
        let bits = BLOOM_SALTS.map(|salt| 1u64 << (low.wrapping_mul(salt) >> 26));
        (line as usize, bits)
    }

    /// Adds `hashes`, asking for the line of the key [`INSERT_PREFETCH_AHEAD`] places on
    /// before each insert, so that the misses of a chunk's inserts overlap.
    fn insert_all(&mut self, hashes: &[u32]) {
        for (i, &hash) in hashes.iter().enumerate() {
            if let Some(&ahead) = hashes.get(i + INSERT_PREFETCH_AHEAD) {
                self.prefetch(ahead);
            }
            self.insert(hash);
        }
    }

    fn insert(&mut self, hash: u32) {
        let (line, bits) = self.place(hash);
        let words = &mut self.lines[line].0;
        for (word, bit) in words.iter_mut().zip(bits) {
            *word |= bit;
        }
        self.len += 1;
    }

    /// False only for a key never inserted.
    #[inline]
    fn may_contain(&self, hash: u32) -> bool {
        let (line, bits) = self.place(hash);
        let words = &self.lines[line].0;
        words
            .iter()
            .zip(bits)
            .fold(true, |all, (word, bit)| all & (word & bit != 0))
    }

    #[inline]
    fn prefetch(&self, hash: u32) {
        let line = ((filter_hash_of(u64::from(hash)) >> 32) * self.lines.len() as u64) >> 32;
        prefetch_line(&self.lines[line as usize]);
    }

    fn bytes(&self) -> usize {
        self.lines.len() * std::mem::size_of::<BloomLine>()
    }
}

/// Asks the processor to bring `line` into cache without waiting for it.
#[inline]
fn prefetch_line(line: &BloomLine) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it reads nothing and cannot fault, whatever the address
    // (here a valid reference). SSE, which provides it, is part of every x86_64 target.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((line as *const BloomLine).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::hint::black_box(line.0[0]);
}

/// A Bloom filter of twice the capacity, being built while the one it replaces still answers
/// (see [`BLOOM_GROW_AT_NUMERATOR`]): the chunks cold when it began are read back from their
/// files' key indexes by a [`BloomBuild`], off the partition's thread; the keys of the chunks
/// that go cold meanwhile wait here and are added when the build is swapped in.
#[derive(Clone)]
struct GrowingBloom {
    capacity: usize,
    /// The chunks that were cold when it began: the build reads `0..until`.
    until: usize,
    /// The on-disk hashes of the keys of chunks `until..`, in the order they went cold.
    later: Vec<u32>,
    /// Where the build handed out leaves its filter, while it is out.
    out: Option<BuiltBloom>,
}

/// Where a [`BloomBuild`] leaves the filter it built, or why it could not.
#[derive(Clone, Default)]
struct BuiltBloom(Arc<std::sync::Mutex<Option<Result<Bloom, ColdError>>>>);

/// The work of a growing Bloom filter handed off the partition's thread: fill a filter of
/// `capacity` keys from the key indexes of chunk files `0..chunks.len()` (about 256 KiB
/// each, read from disk: they left the page cache when written). A snapshot's encoding runs
/// it ([`crate::log::snapshot::SnapshotImage`]); the partition swaps the filter in when that
/// snapshot is written ([`crate::ledger::Ledger::take_bloom_build`]).
#[derive(Clone)]
pub struct BloomBuild {
    reader: Arc<dyn ChunkRead>,
    /// The key index of each chunk to read.
    chunks: Vec<ChunkIndex>,
    capacity: usize,
    out: BuiltBloom,
}

impl BloomBuild {
    /// Reads the chunks' key indexes and fills the filter. Reads only durable chunk files,
    /// which never change, so it may run on any thread at any time.
    pub fn run(self) {
        let mut bloom = Bloom::with_capacity(self.capacity);
        let mut result = Ok(());
        for (chunk, index) in self.chunks.iter().enumerate() {
            match chunk_file::key_hashes(&*self.reader, chunk as u64, index) {
                Ok(hashes) => bloom.insert_all(&hashes),
                Err(error) => {
                    result = Err(ColdError(error));
                    break;
                }
            }
        }
        debug_assert!(
            result.is_err() || bloom.len == self.chunks.iter().map(ChunkIndex::keys).sum::<usize>()
        );
        *self.out.0.lock().expect("built bloom") = Some(result.map(|()| bloom));
    }
}

/// The cold part of a transfers table: chunks `0..chunks.len()`, on disk only.
#[derive(Clone, Default)]
pub(crate) struct ColdRows {
    reader: Option<Arc<dyn ChunkRead>>,
    partition: PartitionId,
    /// In front of `keys`: a new key is answered here in one probe.
    bloom: Bloom,
    growing: Option<GrowingBloom>,
    keys: ColdKeys,
    chunks: Vec<ChunkIndex>,
}

impl ColdRows {
    /// Chunks on disk only: rows `0..chunks() * CHUNK_ROWS`.
    pub(crate) fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Gives the table the chunk files of `partition` to read from.
    pub(crate) fn attach(&mut self, partition: PartitionId, reader: Arc<dyn ChunkRead>) {
        self.partition = partition;
        self.reader = Some(reader);
    }

    pub(crate) fn has_reader(&self) -> bool {
        self.reader.is_some()
    }

    /// Sizes the Bloom filter for `keys` cold keys, when none is cold yet: recovery knows
    /// how many chunks stay on disk before it adds the first.
    pub(crate) fn reserve(&mut self, keys: usize) {
        if self.chunks.is_empty() {
            self.bloom = Bloom::with_capacity(keys.next_power_of_two().max(BLOOM_KEYS_FIRST));
        }
    }

    /// Makes the next chunk cold: `index` is its file's key index, `hashes` the filter hashes
    /// of its rows' keys, `key_hashes` their on-disk hashes.
    ///
    /// # Panics
    /// Unless `hashes` and `key_hashes` are the keys of the chunk's rows (a position whose
    /// row moved on has none, so a chunk may have fewer keys than rows).
    pub(crate) fn push(&mut self, index: ChunkIndex, hashes: &[u64], key_hashes: &[u32]) {
        assert!(key_hashes.len() <= CHUNK_ROWS, "a chunk is CHUNK_ROWS rows");
        assert_eq!(
            hashes.len(),
            key_hashes.len(),
            "a hash of each kind per key"
        );
        assert_eq!(
            index.keys(),
            key_hashes.len(),
            "the file's index has every key"
        );
        let chunk = self.chunks.len();
        let before = self.keys.len();
        self.keys.insert_all(hashes, chunk);
        assert_eq!(self.keys.len() - before, key_hashes.len());
        if self.bloom.lines.is_empty() {
            self.bloom = Bloom::with_capacity(BLOOM_KEYS_FIRST);
        }
        self.bloom.insert_all(key_hashes);
        if let Some(growing) = &mut self.growing {
            growing.later.extend_from_slice(key_hashes);
        }
        self.chunks.push(index);
        self.take_bloom_build(false);
        let due = self.bloom.len * BLOOM_GROW_AT_DENOMINATOR
            >= self.bloom.capacity * BLOOM_GROW_AT_NUMERATOR;
        if self.growing.is_none() && self.reader.is_some() && due {
            self.growing = Some(GrowingBloom {
                capacity: self.bloom.capacity * 2,
                until: self.chunks.len(),
                later: Vec::new(),
                out: None,
            });
        }
    }

    /// The build a growing Bloom filter waits for, if it is not out already: run it off the
    /// partition's thread, then [`ColdRows::take_bloom_build`].
    pub(crate) fn bloom_build(&mut self) -> Option<BloomBuild> {
        let reader = self.reader.clone()?;
        let growing = self.growing.as_mut().filter(|g| g.out.is_none())?;
        let out = BuiltBloom::default();
        growing.out = Some(out.clone());
        Some(BloomBuild {
            reader,
            chunks: self.chunks[..growing.until].to_vec(),
            capacity: growing.capacity,
            out,
        })
    }

    /// Swaps in the filter a [`BloomBuild`] made, once it has run, with the keys that went
    /// cold since it began. With `ended` (the build was run, or will never be), a build that
    /// left nothing or failed is handed out again later; the filter in place stays correct
    /// meanwhile, only fuller.
    pub(crate) fn take_bloom_build(&mut self, ended: bool) {
        let Some(growing) = &mut self.growing else {
            return;
        };
        let Some(out) = &growing.out else {
            return;
        };
        let built = out.0.lock().expect("built bloom").take();
        let mut bloom = match built {
            Some(Ok(bloom)) => bloom,
            Some(Err(error)) => {
                tracing::warn!(%error, "cold filter: chunks' keys unreadable, built again later");
                growing.out = None;
                return;
            }
            None => {
                if ended {
                    growing.out = None;
                }
                return;
            }
        };
        let growing = self.growing.take().expect("a growing filter");
        bloom.insert_all(&growing.later);
        // Every cold key is in it: those of the chunks it read and those that came since.
        assert_eq!(bloom.len, self.keys.len());
        assert_eq!(bloom.len, self.bloom.len, "the new filter holds every key");
        self.bloom = bloom;
    }

    /// The cold row of `key` (whose on-disk hash is `disk`), read from its chunk file. The
    /// filter that names the chunk takes a hash of its own, independent of `disk` (a
    /// stranger whose on-disk hash is a cold key's passes the Bloom filter), computed only
    /// for the keys the Bloom filter lets through.
    pub(crate) fn get(&self, key: &TransferKey, disk: u32) -> Result<Option<StoredRow>, ColdError> {
        debug_assert_eq!(
            disk,
            chunk_file::disk_key_hash(key.from.as_bytes(), key.transaction_id.as_bytes())
        );
        if self.chunks.is_empty() || !self.bloom_may_contain(disk) {
            return Ok(None);
        }
        let hash = filter_hash(key.from.as_bytes(), key.transaction_id.as_bytes());
        let reader = self.reader_or_error()?;
        self.keys.find(hash, |chunk| {
            let index = self.chunks.get(chunk).ok_or_else(|| {
                ColdError(format!("the filter names chunk {chunk}, which is not cold"))
            })?;
            chunk_file::find_row(reader, chunk as u64, index, key).map_err(ColdError)
        })
    }

    /// Brings in the Bloom filter's line for the key whose on-disk hash is `key_hash`: all a
    /// new key reads of the cold rows (see [`crate::ledger::Ledger::prefetch`]).
    /// Whether the Bloom filter may hold the key whose on-disk hash is `disk`.
    #[inline]
    fn bloom_may_contain(&self, disk: u32) -> bool {
        self.bloom.may_contain(disk)
    }

    #[inline]
    pub(crate) fn prefetch(&self, key_hash: u32) {
        if !self.bloom.lines.is_empty() {
            self.bloom.prefetch(key_hash);
        }
    }

    /// Every row of cold chunk `chunk`, read whole and checked (positions whose row moved on
    /// have none).
    pub(crate) fn rows_of(&self, chunk: usize) -> Result<Vec<StoredRow>, ColdError> {
        assert!(chunk < self.chunks.len());
        let reader = self.reader_or_error()?;
        let DecodedChunk { rows, .. } =
            chunk_file::read_chunk(reader, self.partition, chunk as u64).map_err(ColdError)?;
        Ok(rows.into_iter().flatten().collect())
    }

    fn reader_or_error(&self) -> Result<&dyn ChunkRead, ColdError> {
        self.reader
            .as_deref()
            .ok_or_else(|| ColdError("no chunk files to read cold rows from".to_string()))
    }

    /// Keys the Bloom filter in place is sized for.
    #[cfg(test)]
    pub(crate) fn bloom_capacity(&self) -> usize {
        self.bloom.capacity
    }

    /// Bytes the cold rows take in memory: the filters and the chunks' directories.
    pub(crate) fn bytes(&self) -> usize {
        let per_chunk = std::mem::size_of::<ChunkIndex>() + 257 * 4;
        let growing = self.growing.as_ref().map_or(0, |g| {
            (g.capacity * BLOOM_BITS_PER_KEY).div_ceil(8) + g.later.len() * 4
        });
        self.keys.bytes() + self.bloom.bytes() + growing + self.chunks.len() * per_chunk
    }
}

/// Chunk files in memory, counting reads: what tests give a ledger.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct TestChunks {
    pub(crate) files: std::sync::Mutex<std::collections::BTreeMap<u64, Vec<u8>>>,
    pub(crate) reads: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
impl ChunkRead for TestChunks {
    fn read_at(&self, chunk: u64, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let files = self.files.lock().expect("files");
        let file = files
            .get(&chunk)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such chunk"))?;
        let range = offset as usize..offset as usize + len;
        file.get(range)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past the end"))
    }

    fn len(&self, chunk: u64) -> io::Result<u64> {
        let files = self.files.lock().expect("files");
        let file = files
            .get(&chunk)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such chunk"))?;
        Ok(file.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_finds_every_key_in_its_chunk_and_grows_by_tables() {
        let mut keys = ColdKeys::default();
        let count = 20 * FIRST_TABLE_SLOTS;
        let hash = |i: usize| filter_hash(format!("acct-{i}").as_bytes(), b"t");
        for i in 0..count {
            keys.insert(hash(i), i / 100);
        }
        assert_eq!(keys.len(), count);
        assert!(keys.tables.len() >= 4, "{} tables", keys.tables.len());
        for i in 0..count {
            let found = keys.find(hash(i), |chunk| Ok((chunk == i / 100).then_some(chunk)));
            assert_eq!(found, Ok(Some(i / 100)), "key {i}");
        }
        // Keys never added: most find no candidate at all. With the 6-bit fingerprints of
        // test builds, a few find one, which the caller's check then refuses.
        let mut candidates = 0;
        for i in count..2 * count {
            let found = keys.find(hash(i), |_| {
                candidates += 1;
                Ok(None::<usize>)
            });
            assert_eq!(found, Ok(None));
        }
        assert!(
            candidates < count,
            "{candidates} candidates for {count} strangers"
        );
    }

    #[test]
    fn a_failed_check_is_an_error_not_an_absence() {
        let mut keys = ColdKeys::default();
        keys.insert(7, 3);
        let found = keys.find(7, |_| Err::<Option<()>, _>(ColdError("gone".to_string())));
        assert_eq!(found, Err(ColdError("gone".to_string())));
    }

    proptest::proptest! {
        /// A key added is never answered absent, whatever the hashes and however full.
        #[test]
        fn the_bloom_filter_never_forgets_a_key(
            hashes in proptest::collection::vec(proptest::prelude::any::<u32>(), 1..2000),
            capacity in 1usize..512,
        ) {
            let mut bloom = Bloom::with_capacity(capacity);
            for &hash in &hashes {
                bloom.insert(hash);
            }
            for &hash in &hashes {
                proptest::prop_assert!(bloom.may_contain(hash));
            }
        }
    }

    #[test]
    fn the_bloom_filter_at_its_capacity_answers_strangers_within_its_bound() {
        let capacity = 1 << 18;
        let mut bloom = Bloom::with_capacity(capacity);
        let hash = |i: usize| chunk_file::disk_key_hash(format!("acct-{i}").as_bytes(), b"t");
        for i in 0..capacity {
            bloom.insert(hash(i));
        }
        let strangers = 1 << 18;
        let positives = (capacity..capacity + strangers)
            .filter(|&i| bloom.may_contain(hash(i)))
            .count();
        // Designed for about 1 in 200 at capacity; 1 in 100 is the bound.
        assert!(
            positives * 100 < strangers,
            "{positives} false positives in {strangers}"
        );
        assert_eq!(bloom.bytes(), capacity * BLOOM_BITS_PER_KEY / 8);
    }
}
