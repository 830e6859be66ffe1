//! The durable-storage boundary of a partition: an append-only log of segments plus snapshots.
//!
//! Storage is a trait, not a file API, because the simulator must be able to lose every byte
//! that was written but not synced when a node crashes; no real file system lets a test do that.
//! Production uses [`file::FileStorage`]; tests use [`MemStorage`]; the simulator its own disk.
//!
//! The contract the driver relies on: bytes passed to [`Storage::append`] are durable once a
//! later [`Storage::sync`] returns `Ok`, and so is everything read back at recovery once the
//! `sync` that ends recovery returns (a process crash keeps writes that were never synced in
//! the page cache, where recovery reads them). An error from `sync` is fatal for the
//! partition: after a failed fsync the kernel may have dropped the dirty pages, so retrying
//! could report success for data that is gone.
//!
//! Recovery reads one snapshot at a time ([`Storage::list_snapshots`], then
//! [`Storage::read_snapshot`]) and the log one segment at a time ([`Storage::list_log`], then
//! [`Storage::read_segment`]), so its memory is bounded by the snapshot and one segment,
//! however long the log.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};

use walletd_core::ledger::cold::ChunkRead;
use walletd_core::log::snapshot::{InMemory, SnapshotOut};
use walletd_core::model::event::Lsn;

#[cfg(not(madsim))]
pub mod file;
#[cfg(not(madsim))]
pub mod journal;
pub mod raft_store;
pub mod segments;

/// One log segment found at recovery, before its bytes are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRef {
    /// The lsn of the first record the segment was created for.
    pub first_lsn: Lsn,
    /// A name for messages (the file path in production).
    pub name: String,
}

/// A snapshot found at recovery, before its bytes are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRef {
    /// The lsn of the last record the snapshot reflects.
    pub lsn: Lsn,
    /// A name for messages (the file path in production).
    pub name: String,
}

/// A snapshot of the ledger state after applying record `lsn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSnapshot {
    pub lsn: Lsn,
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Work that waits for appended bytes to be durable; [`Storage::append_durably`] runs it
/// right after they are, wherever that happens.
pub type OnDurable = Box<dyn FnOnce() + Send>;

/// Durable storage of one partition.
pub trait Storage: Send + 'static {
    /// Every log segment, oldest first, with segments whose records all precede
    /// `from_lsn` allowed to be skipped (they are covered by a snapshot). Opens the newest
    /// for appending.
    fn list_log(
        &mut self,
        from_lsn: Lsn,
    ) -> impl Future<Output = io::Result<Vec<SegmentRef>>> + Send;

    /// Every log segment, oldest first, while the log runs: unlike [`Storage::list_log`]
    /// it leaves appending as it is (serving another replica's fetch of records reads the
    /// log this way).
    fn log_segments(&mut self) -> impl Future<Output = io::Result<Vec<SegmentRef>>> + Send;

    /// The bytes of one segment that [`Storage::list_log`] or [`Storage::log_segments`]
    /// listed.
    fn read_segment(
        &mut self,
        segment: &SegmentRef,
    ) -> impl Future<Output = io::Result<Vec<u8>>> + Send;

    /// Cuts the newest segment to `len` bytes (dropping a torn or stale range). The cut is
    /// durable with the next [`Storage::sync`], which recovery makes before it answers.
    fn truncate_last(&mut self, len: u64) -> impl Future<Output = io::Result<()>> + Send;

    /// Appends whole records starting at `first_lsn`. Not durable until [`Storage::sync`].
    fn append(
        &mut self,
        first_lsn: Lsn,
        bytes: &[u8],
    ) -> impl Future<Output = io::Result<()>> + Send;

    /// Makes every appended byte durable.
    fn sync(&mut self) -> impl Future<Output = io::Result<()>> + Send;

    /// [`Storage::append`] then [`Storage::sync`], then `on_durable` (only if both succeeded),
    /// handing the buffer back. The driver commits through this; file storage overrides it to
    /// write, sync and call `on_durable` on a blocking thread, so the partition goes on
    /// applying while the kernel copies the bytes, and what waited for them (the batch's
    /// replies) leaves the moment they are durable, not when the partition next looks.
    fn append_durably(
        &mut self,
        first_lsn: Lsn,
        bytes: Vec<u8>,
        on_durable: OnDurable,
    ) -> impl Future<Output = (Vec<u8>, io::Result<()>)> + Send {
        async move {
            let result = match self.append(first_lsn, &bytes).await {
                Ok(()) => {
                    let mut synced = self.sync().await;
                    if synced.is_err() && crate::known_bug!(RetryFailedSync) {
                        synced = self.sync().await;
                    }
                    synced
                }
                Err(error) => Err(error),
            };
            if result.is_ok() {
                on_durable();
            }
            (bytes, result)
        }
    }

    /// Durably stores a snapshot (atomically: a crash leaves the old or the new one) and
    /// returns its length in bytes.
    ///
    /// The future owns what it needs (`'static`): the driver lets it run alongside the log's
    /// appends and syncs, because encoding and writing a large snapshot take as long as many
    /// group commits. The bytes come from `encode`, which the storage calls where it writes
    /// them (file storage: on a blocking thread, straight into the file), so the partition's
    /// thread never encodes and no snapshot-sized buffer is ever built.
    fn write_snapshot(
        &mut self,
        lsn: Lsn,
        encode: EncodeSnapshot,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'static;

    /// The snapshots present, newest first (recovery falls back to older ones if one is
    /// bad, reading one at a time).
    fn list_snapshots(&mut self) -> impl Future<Output = io::Result<Vec<SnapshotRef>>> + Send;

    /// The bytes of one snapshot that [`Storage::list_snapshots`] listed.
    fn read_snapshot(
        &mut self,
        snapshot: &SnapshotRef,
    ) -> impl Future<Output = io::Result<Vec<u8>>> + Send;

    /// Chunk file `index` of the snapshots (see [`walletd_core::log::snapshot`]).
    fn read_chunk(&mut self, index: u64) -> impl Future<Output = io::Result<Vec<u8>>> + Send;

    /// A synchronous reader of the chunk files, which the partition's ledger keeps to find
    /// the transfer rows it holds on disk only ([`walletd_core::ledger::cold`]). It reads only
    /// files that are durable and never change.
    fn chunk_reader(&self) -> Arc<dyn ChunkRead>;

    /// The batches a node journal made durable for this partition ([`journal`]), oldest
    /// first, as `(first lsn, record bytes)`: recovery appends what its log lacks of them
    /// and then syncs. Taken once; a storage that syncs its own log has none.
    fn take_journaled(&mut self) -> Vec<(Lsn, Vec<u8>)> {
        Vec::new()
    }

    /// Moves the whole log, every snapshot and chunk file aside, where nothing reads them,
    /// and leaves the storage empty: how a replicated partition's damaged copy is given up
    /// for one rebuilt from its group (`crate::replica`). Kept for an operator to look at,
    /// never read again. A storage that cannot refuses.
    fn set_aside(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        async {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this storage cannot set its copy aside",
            ))
        }
    }

    /// Whether a copy was ever set aside here ([`Storage::set_aside`]): the partition's
    /// group has run, however empty the log is now.
    fn holds_set_aside(&mut self) -> impl Future<Output = io::Result<bool>> + Send {
        async { Ok(false) }
    }
}

/// Every segment [`Storage::list_log`] lists from `from_lsn`, with its bytes: the whole log
/// in memory at once, for tests and tools that want it so (recovery reads one at a time).
pub async fn read_whole_log<S: Storage>(
    storage: &mut S,
    from_lsn: Lsn,
) -> io::Result<Vec<(SegmentRef, Vec<u8>)>> {
    let mut segments = Vec::new();
    for segment in storage.list_log(from_lsn).await? {
        let bytes = storage.read_segment(&segment).await?;
        segments.push((segment, bytes));
    }
    Ok(segments)
}

/// Every snapshot, newest first, with its bytes: all of them in memory at once, for tests and
/// tools that want it so (recovery reads one at a time).
pub async fn read_all_snapshots<S: Storage>(storage: &mut S) -> io::Result<Vec<StoredSnapshot>> {
    let mut snapshots = Vec::new();
    for snapshot in storage.list_snapshots().await? {
        let bytes = storage.read_snapshot(&snapshot).await?;
        snapshots.push(StoredSnapshot {
            lsn: snapshot.lsn,
            name: snapshot.name,
            bytes,
        });
    }
    Ok(snapshots)
}

/// Writes a snapshot's chunk files and bytes to what it is given and returns the snapshot's
/// length (see [`Storage::write_snapshot`]).
pub type EncodeSnapshot =
    Box<dyn FnOnce(&mut dyn SnapshotOut) -> io::Result<usize> + Send + 'static>;

/// The bytes of an in-memory disk, shared so a test (or crash) can inspect and damage them.
#[derive(Debug, Default, Clone)]
pub struct MemDisk {
    /// Segments, oldest first: (first lsn, bytes written).
    pub segments: Vec<(Lsn, Vec<u8>)>,
    /// Bytes of the newest segment that are durable, and how many older segments are.
    pub synced_len: usize,
    pub synced_segments: usize,
    pub snapshots: Vec<(Lsn, Vec<u8>)>,
    /// Chunk files of snapshots, by index.
    pub chunks: std::collections::BTreeMap<u64, Vec<u8>>,
    /// Number of successful syncs (for tests of group commit).
    pub syncs: u64,
    /// Copies set aside ([`Storage::set_aside`]), each as it was.
    pub set_aside: Vec<SetAside>,
}

/// A copy of a [`MemDisk`] set aside: its segments and its snapshots.
#[derive(Debug, Default, Clone)]
pub struct SetAside {
    pub segments: Vec<(Lsn, Vec<u8>)>,
    pub snapshots: Vec<(Lsn, Vec<u8>)>,
}

impl MemDisk {
    /// What survives a power loss: everything synced, nothing after.
    pub fn crash(&mut self) {
        self.segments.truncate(self.synced_segments);
        let synced_len = self.synced_len;
        if let Some((_, bytes)) = self.segments.last_mut() {
            bytes.truncate(synced_len);
        }
    }
}

/// The chunk files of a [`MemDisk`].
struct MemChunks(Arc<Mutex<MemDisk>>);

impl ChunkRead for MemChunks {
    fn read_at(&self, chunk: u64, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let disk = self.0.lock().expect("disk lock");
        read_chunk_range(&disk.chunks, chunk, offset, len)
    }

    fn len(&self, chunk: u64) -> io::Result<u64> {
        let disk = self.0.lock().expect("disk lock");
        Ok(chunk_bytes(&disk.chunks, chunk)?.len() as u64)
    }
}

fn chunk_bytes(chunks: &BTreeMap<u64, Vec<u8>>, chunk: u64) -> io::Result<&Vec<u8>> {
    chunks
        .get(&chunk)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no chunk file {chunk}")))
}

/// `len` bytes from `offset` of chunk file `chunk` of `chunks`: what an in-memory disk (this
/// one's, the simulator's) reads for a [`ChunkRead`].
pub fn read_chunk_range(
    chunks: &BTreeMap<u64, Vec<u8>>,
    chunk: u64,
    offset: u64,
    len: usize,
) -> io::Result<Vec<u8>> {
    let bytes = chunk_bytes(chunks, chunk)?;
    usize::try_from(offset)
        .ok()
        .and_then(|start| bytes.get(start..start.checked_add(len)?))
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "chunk file {chunk} ends before byte {}",
                    offset + len as u64
                ),
            )
        })
}

/// In-memory [`Storage`] for tests. Clones share one disk.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    pub disk: Arc<Mutex<MemDisk>>,
}

impl Storage for MemStorage {
    async fn list_log(&mut self, _from_lsn: Lsn) -> io::Result<Vec<SegmentRef>> {
        let disk = self.disk.lock().expect("disk lock");
        Ok(disk
            .segments
            .iter()
            .map(|(first_lsn, _)| SegmentRef {
                first_lsn: *first_lsn,
                name: format!("mem-{first_lsn}"),
            })
            .collect())
    }

    async fn log_segments(&mut self) -> io::Result<Vec<SegmentRef>> {
        self.list_log(0).await
    }

    async fn read_segment(&mut self, segment: &SegmentRef) -> io::Result<Vec<u8>> {
        let disk = self.disk.lock().expect("disk lock");
        disk.segments
            .iter()
            .find(|(first_lsn, _)| *first_lsn == segment.first_lsn)
            .map(|(_, bytes)| bytes.clone())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, segment.name.clone()))
    }

    async fn truncate_last(&mut self, len: u64) -> io::Result<()> {
        let mut disk = self.disk.lock().expect("disk lock");
        if let Some((_, bytes)) = disk.segments.last_mut() {
            bytes.truncate(len as usize);
        }
        disk.synced_segments = disk.segments.len();
        disk.synced_len = len as usize;
        Ok(())
    }

    async fn append(&mut self, first_lsn: Lsn, bytes: &[u8]) -> io::Result<()> {
        let mut disk = self.disk.lock().expect("disk lock");
        if disk.segments.is_empty() {
            disk.segments.push((first_lsn, Vec::new()));
        }
        disk.segments
            .last_mut()
            .expect("a segment")
            .1
            .extend_from_slice(bytes);
        Ok(())
    }

    async fn sync(&mut self) -> io::Result<()> {
        let mut disk = self.disk.lock().expect("disk lock");
        disk.synced_segments = disk.segments.len();
        disk.synced_len = disk.segments.last().map_or(0, |(_, b)| b.len());
        disk.syncs += 1;
        Ok(())
    }

    fn write_snapshot(
        &mut self,
        lsn: Lsn,
        encode: EncodeSnapshot,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'static {
        let disk = Arc::clone(&self.disk);
        async move {
            let mut out = InMemory::default();
            let len = encode(&mut out)?;
            let mut disk = disk.lock().expect("disk lock");
            disk.chunks.extend(out.chunks);
            disk.snapshots.push((lsn, out.bytes));
            Ok(len)
        }
    }

    async fn read_chunk(&mut self, index: u64) -> io::Result<Vec<u8>> {
        let disk = self.disk.lock().expect("disk lock");
        disk.chunks.get(&index).cloned().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no chunk file {index}"))
        })
    }

    fn chunk_reader(&self) -> Arc<dyn ChunkRead> {
        Arc::new(MemChunks(Arc::clone(&self.disk)))
    }

    async fn list_snapshots(&mut self) -> io::Result<Vec<SnapshotRef>> {
        let disk = self.disk.lock().expect("disk lock");
        Ok(disk
            .snapshots
            .iter()
            .rev()
            .map(|(lsn, _)| SnapshotRef {
                lsn: *lsn,
                name: format!("mem-snapshot-{lsn}"),
            })
            .collect())
    }

    async fn read_snapshot(&mut self, snapshot: &SnapshotRef) -> io::Result<Vec<u8>> {
        let disk = self.disk.lock().expect("disk lock");
        disk.snapshots
            .iter()
            .rev()
            .find(|(lsn, _)| *lsn == snapshot.lsn)
            .map(|(_, bytes)| bytes.clone())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, snapshot.name.clone()))
    }

    async fn set_aside(&mut self) -> io::Result<()> {
        let mut disk = self.disk.lock().expect("disk lock");
        let segments = std::mem::take(&mut disk.segments);
        let snapshots = std::mem::take(&mut disk.snapshots);
        disk.chunks.clear();
        disk.set_aside.push(SetAside {
            segments,
            snapshots,
        });
        (disk.synced_len, disk.synced_segments) = (0, 0);
        Ok(())
    }

    async fn holds_set_aside(&mut self) -> io::Result<bool> {
        Ok(!self.disk.lock().expect("disk lock").set_aside.is_empty())
    }
}
