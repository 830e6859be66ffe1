//! [`Storage`] on real files: one directory per partition holding log segments and snapshots.
//!
//! ```text
//! <dir>/log-00000000000000000001.seg    records from lsn 1
//! <dir>/log-00000000000001048577.seg    records from lsn 1048577, once the first passed the size limit
//! <dir>/snapshot-00000000000002000000.snap
//! <dir>/chunk-0000000000.rows          final transfer rows 0..65,536, which snapshots refer to
//! <dir>/LOCK                           locked while a storage has the directory open
//! ```
//! Segments are named by the first lsn they hold, so recovery can skip those a snapshot
//! covers. A new file's directory entry is only durable after the directory itself is synced,
//! so every file creation and rename is followed by an fsync of the directory.
//!
//! While batches are small, the newest segment is extended ahead of its records in
//! zero-filled steps of [`PREALLOCATE_BYTES`]: an `fdatasync` of a write that does not change
//! the file's size has no metadata to flush, which makes a small group commit's sync about a
//! quarter to a third quicker on ext4 here. Large batches just extend the file: for them the
//! metadata is a small part of the sync, and flushing zeros too would double the bytes
//! written. The zeros after the last record decode as the end of the log ([`walletd_core::log::codec`]);
//! a segment is cut to its last record before the next one is created, and when the storage
//! is dropped.
//!
//! Synced pages of the log, snapshots and chunk files are dropped from the page cache
//! (`posix_fadvise`): they are read again only by a recovery. With them cached, the writes
//! kept claiming fresh pages, and the kernel's copy into them was an eighth of the engine's
//! time at a million transfers a second.
//!
//! The writing end of the log, [`LogWriter`], is plain blocking code. An append moves it onto
//! a blocking thread and back, so the partition goes on applying while a batch is written and
//! synced, and also while a full segment is closed and the next one created.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{EncodeSnapshot, LogSegment, OnDurable, Storage, StoredSnapshot};
use walletd_core::log::snapshot::SnapshotOut;
use walletd_core::model::event::Lsn;

/// Limits of file storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStorageConfig {
    /// A segment that has reached this size is closed and the next batch starts a new one.
    pub segment_bytes_max: u64,
    /// How many snapshots to keep; older ones are deleted after a new one is durable.
    pub snapshots_kept_max: usize,
}

impl Default for FileStorageConfig {
    fn default() -> Self {
        FileStorageConfig {
            segment_bytes_max: 64 << 20,
            snapshots_kept_max: 2,
        }
    }
}

/// How far ahead of its records the newest segment is extended with zeros.
pub const PREALLOCATE_BYTES: u64 = 1 << 20;
/// Largest batch whose write extends the file with zeros; a larger one extends it with its
/// own bytes only.
const PREALLOCATE_BATCH_BYTES_MAX: u64 = PREALLOCATE_BYTES / 16;

/// The open segment being appended to.
struct OpenSegment {
    file: File,
    /// Bytes of records: where the next append goes.
    len: u64,
    /// The file's size: records, then zeros.
    allocated: u64,
    /// Bytes from the start whose pages were synced and dropped from the page cache.
    dropped: u64,
}

/// Page size assumed when dropping synced pages from the page cache: a page the next write
/// only partly covers must stay cached, or that write would first read it from the disk.
const PAGE_BYTES: u64 = 4096;

/// Tells the kernel that `file`'s bytes `from..to`, synced, will not be read again: a log
/// and its snapshots are written once and read only by a recovery, so keeping them cached
/// only takes memory from the rest of the machine (and keeps claiming fresh pages for the
/// page cache, which costs more than reusing dropped ones). Advice only: errors are ignored.
fn drop_cached(file: &File, from: u64, to: u64) {
    if let Some(len) = std::num::NonZeroU64::new(to.saturating_sub(from)) {
        let _ = rustix::fs::fadvise(file, from, Some(len), rustix::fs::Advice::DontNeed);
    }
}

/// Writes `bytes` at `len` and, when that passes `allocated` and the batch is small,
/// zero-fills the file up to [`PREALLOCATE_BYTES`] beyond them. Returns the file's new size.
fn write_records(file: &File, len: u64, allocated: u64, bytes: &[u8]) -> io::Result<u64> {
    assert!(len <= allocated, "records end within the file");
    file.write_all_at(bytes, len)?;
    let end = len + bytes.len() as u64;
    if end <= allocated {
        return Ok(allocated);
    }
    if bytes.len() as u64 > PREALLOCATE_BATCH_BYTES_MAX {
        return Ok(end);
    }
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let target = end + PREALLOCATE_BYTES;
    let mut at = end;
    while at < target {
        let step = (target - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..step], at)?;
        at += step as u64;
    }
    Ok(target)
}

/// Log segments and snapshots of one partition in one directory.
pub struct FileStorage {
    dir: PathBuf,
    config: FileStorageConfig,
    /// `None` only while a storage task has it on a blocking thread, or after such a task
    /// panicked: the storage then refuses further log work rather than guess at the files.
    log: Option<LogWriter>,
    /// The directory's lock, held while the storage is open (see [`lock_dir`]).
    _lock: File,
}

/// The file in a storage's directory that an open storage holds locked.
pub const LOCK_FILE: &str = "LOCK";

/// Takes `dir`'s lock, or refuses if another open storage holds it: two writers of one log
/// would interleave their records, and each would delete the other's snapshots. The lock is
/// the kernel's (`flock`), so it goes with the process however that ends; a stale lock file
/// locks nothing. The file holds the pid of the process that took it, for the error message.
fn lock_dir(dir: &Path) -> io::Result<File> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() { "?" } else { holder };
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!(
                    "{} is in use by another process (pid {holder} holds {LOCK_FILE})",
                    dir.display()
                ),
            ));
        }
        Err(error) => return Err(error.into()),
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(file)
}

/// The writing end of the log. Its methods block; [`FileStorage`] runs them on a blocking
/// thread, moving the writer there and back.
struct LogWriter {
    dir: PathBuf,
    segment_bytes_max: u64,
    current: Option<OpenSegment>,
    /// Set when a file was created whose directory entry is not yet durable.
    dir_dirty: bool,
}

fn segment_name(first_lsn: Lsn) -> String {
    format!("log-{first_lsn:020}.seg")
}

fn snapshot_name(lsn: Lsn) -> String {
    format!("snapshot-{lsn:020}.snap")
}

/// Files in `dir` named `<prefix><20 digits><suffix>`, sorted by the number.
fn numbered_files(dir: &Path, prefix: &str, suffix: &str) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(number) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
        else {
            continue;
        };
        if let Ok(number) = number.parse::<u64>() {
            found.push((number, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

fn log_lost() -> io::Error {
    io::Error::other("the log writer was lost when an earlier storage task failed")
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl FileStorage {
    /// Opens (creating if needed) the storage directory `dir`.
    pub fn open(dir: impl Into<PathBuf>, config: FileStorageConfig) -> io::Result<FileStorage> {
        let dir = dir.into();
        assert!(config.segment_bytes_max > 0 && config.snapshots_kept_max > 0);
        if !dir.exists() {
            fs::create_dir_all(&dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let lock = lock_dir(&dir)?;
        let log = LogWriter {
            dir: dir.clone(),
            segment_bytes_max: config.segment_bytes_max,
            current: None,
            dir_dirty: false,
        };
        Ok(FileStorage {
            dir,
            config,
            log: Some(log),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `work` with the log writer on a blocking thread, moving the writer there and back.
    async fn on_log<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut LogWriter) -> T + Send + 'static,
    ) -> io::Result<T> {
        let mut log = self.log.take().ok_or_else(log_lost)?;
        let (log, out) = blocking(move || {
            let out = work(&mut log);
            Ok((log, out))
        })
        .await?;
        self.log = Some(log);
        Ok(out)
    }
}

impl LogWriter {
    /// Whether `len` more bytes go to a new segment. A segment holds at least one batch,
    /// however large.
    fn full(&self, len: usize) -> bool {
        self.current
            .as_ref()
            .is_none_or(|c| c.len > 0 && c.len + len as u64 > self.segment_bytes_max)
    }

    /// Closes the open segment and creates the next one, named by `first_lsn`. The new
    /// file's directory entry is durable after the next [`LogWriter::sync`].
    fn roll_over(&mut self, first_lsn: Lsn) -> io::Result<()> {
        if let Some(closed) = self.current.as_mut() {
            // Recovery refuses a segment other than the newest that does not end at its
            // last record, so the zeros go before the next segment exists. The fsync is
            // unconditional: a later `sync` only reaches the newest segment, so records
            // appended here without one since must be made durable now (the driver syncs
            // every batch, so then this fsync finds nothing to write but the length).
            if closed.allocated > closed.len {
                closed.file.set_len(closed.len)?;
                closed.allocated = closed.len;
            }
            closed.file.sync_all()?;
            drop_cached(&closed.file, closed.dropped, closed.len);
        }
        let path = self.dir.join(segment_name(first_lsn));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        self.current = Some(OpenSegment {
            file,
            len: 0,
            allocated: 0,
            dropped: 0,
        });
        self.dir_dirty = true;
        Ok(())
    }

    /// Writes whole records starting at `first_lsn`, into a new segment if the open one is
    /// full. Not durable until [`LogWriter::sync`].
    fn append(&mut self, first_lsn: Lsn, bytes: &[u8]) -> io::Result<()> {
        if self.full(bytes.len()) {
            self.roll_over(first_lsn)?;
        }
        let current = self.current.as_mut().expect("a segment is open");
        // Writes go to the page cache and are cheap; only the sync waits for the disk.
        current.allocated = write_records(&current.file, current.len, current.allocated, bytes)?;
        current.len += bytes.len() as u64;
        Ok(())
    }

    /// Makes the open segment's records, and the directory entry of a new segment, durable.
    fn sync(&mut self) -> io::Result<()> {
        let Some(current) = self.current.as_mut() else {
            return Ok(());
        };
        current.file.sync_data()?;
        if self.dir_dirty {
            sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        // Whole pages only, up to the one the next append starts in.
        let whole = current.len / PAGE_BYTES * PAGE_BYTES;
        drop_cached(&current.file, current.dropped, whole);
        current.dropped = current.dropped.max(whole);
        Ok(())
    }

    /// Cuts the newest segment to `len` bytes and makes that durable.
    fn truncate_last(&mut self, len: u64) -> io::Result<()> {
        let Some(current) = self.current.as_mut() else {
            return Ok(());
        };
        assert!(len <= current.allocated, "truncation only shortens");
        current.file.set_len(len)?;
        current.len = len;
        current.allocated = len;
        current.file.sync_all()
    }

    /// Opens the newest segment for appending. Until recovery cuts it with
    /// [`Storage::truncate_last`], its records are taken to fill the whole file.
    fn open_last_segment(&mut self) -> io::Result<()> {
        if let Some((_, path)) = numbered_files(&self.dir, "log-", ".seg")?.pop() {
            let file = OpenOptions::new().write(true).open(&path)?;
            let len = file.metadata()?.len();
            self.current = Some(OpenSegment {
                file,
                len,
                allocated: len,
                dropped: 0,
            });
            // The segment's directory entry may not be durable yet (a crash right after it
            // was created): the first sync, which recovery makes, syncs the directory too.
            self.dir_dirty = true;
        }
        Ok(())
    }
}

impl Drop for LogWriter {
    /// Cuts the zeros after the last record, so a cleanly stopped partition leaves segments
    /// that end at their last record (a crash leaves them for recovery to cut).
    fn drop(&mut self) {
        if let Some(current) = &self.current {
            if current.allocated > current.len {
                let _ = current.file.set_len(current.len);
            }
        }
    }
}

/// The name of chunk file `index` of the snapshots.
pub fn chunk_name(index: u64) -> String {
    format!("chunk-{index:010}.rows")
}

/// A snapshot being written: its temporary file, and the directory its chunk files go to.
struct SnapshotFiles {
    file: File,
    dir: PathBuf,
}

impl std::io::Write for SnapshotFiles {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Runs `write`, which creates `tmp` and renames it into place; should it fail, removes
/// whatever of `tmp` it left (best effort: the error that matters is the first).
fn removing_on_error<T>(tmp: &Path, write: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let result = write();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

impl SnapshotOut for SnapshotFiles {
    /// Writes the chunk to a temporary file, syncs it and renames it into place (the
    /// directory is synced before the snapshot's own rename).
    fn write_chunk(&mut self, index: u64, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let tmp = self.dir.join(format!("chunk-{index:010}.tmp"));
        removing_on_error(&tmp, || {
            let mut file = File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            drop_cached(&file, 0, bytes.len() as u64);
            fs::rename(&tmp, self.dir.join(chunk_name(index)))
        })
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| io::Error::other(format!("storage task failed: {e}")))?
}

impl Storage for FileStorage {
    async fn read_log(&mut self, from_lsn: Lsn) -> io::Result<Vec<LogSegment>> {
        let files = numbered_files(&self.dir, "log-", ".seg")?;
        let mut segments = Vec::with_capacity(files.len());
        for (i, (first_lsn, path)) in files.iter().enumerate() {
            // Every record of this segment precedes the next segment's first lsn; if that is
            // still covered by the snapshot, the segment is not needed for recovery.
            if files
                .get(i + 1)
                .is_some_and(|(next, _)| *next <= from_lsn + 1)
            {
                continue;
            }
            let path = path.clone();
            let bytes = blocking({
                let path = path.clone();
                move || fs::read(path)
            })
            .await?;
            segments.push(LogSegment {
                first_lsn: *first_lsn,
                name: path.display().to_string(),
                bytes,
            });
        }
        self.on_log(LogWriter::open_last_segment).await??;
        Ok(segments)
    }

    async fn truncate_last(&mut self, len: u64) -> io::Result<()> {
        self.on_log(move |log| log.truncate_last(len)).await?
    }

    /// Writes on the caller's thread, a roll-over included, because `bytes` is borrowed. The
    /// driver commits through [`Storage::append_durably`], which does it on a blocking thread.
    async fn append(&mut self, first_lsn: Lsn, bytes: &[u8]) -> io::Result<()> {
        self.log
            .as_mut()
            .ok_or_else(log_lost)?
            .append(first_lsn, bytes)
    }

    /// Writes and syncs on a blocking thread, closing a full segment and creating the next
    /// there too. Everything a record in the new segment depends on is durable before this
    /// resolves: the closed segment cut to its last record, the new file's directory entry.
    async fn append_durably(
        &mut self,
        first_lsn: Lsn,
        bytes: Vec<u8>,
        on_durable: OnDurable,
    ) -> (Vec<u8>, io::Result<()>) {
        let outcome = self
            .on_log(move |log| {
                let result = log.append(first_lsn, &bytes).and_then(|()| log.sync());
                if result.is_ok() {
                    on_durable();
                }
                (bytes, result)
            })
            .await;
        // The buffer is lost only with a panicked task, which is fatal for the partition.
        outcome.unwrap_or_else(|error| (Vec::new(), Err(error)))
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.on_log(LogWriter::sync).await?
    }

    fn write_snapshot(
        &mut self,
        lsn: Lsn,
        encode: EncodeSnapshot,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'static {
        let dir = self.dir.clone();
        let kept = self.config.snapshots_kept_max;
        blocking(move || {
            let tmp = dir.join(format!("snapshot-{lsn:020}.tmp"));
            let len = removing_on_error(&tmp, || {
                let mut out = SnapshotFiles {
                    file: File::create(&tmp)?,
                    dir: dir.clone(),
                };
                let len = encode(&mut out)?;
                out.file.sync_all()?;
                drop_cached(&out.file, 0, len as u64);
                // The chunk files' names must be durable before a snapshot that needs them is.
                sync_dir(&dir)?;
                fs::rename(&tmp, dir.join(snapshot_name(lsn)))?;
                Ok(len)
            })?;
            sync_dir(&dir)?;
            let snapshots = numbered_files(&dir, "snapshot-", ".snap")?;
            for (_, old) in snapshots.iter().rev().skip(kept) {
                fs::remove_file(old)?;
            }
            Ok(len)
        })
    }

    async fn read_chunk(&mut self, index: u64) -> io::Result<Vec<u8>> {
        let path = self.dir.join(chunk_name(index));
        blocking(move || fs::read(path)).await
    }

    async fn read_snapshots(&mut self) -> io::Result<Vec<StoredSnapshot>> {
        let mut snapshots = Vec::new();
        for (lsn, path) in numbered_files(&self.dir, "snapshot-", ".snap")?
            .into_iter()
            .rev()
        {
            let bytes = fs::read(&path)?;
            snapshots.push(StoredSnapshot {
                lsn,
                name: path.display().to_string(),
                bytes,
            });
        }
        Ok(snapshots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walletd_core::log::codec::{decode_log, encode_record, Record};
    use walletd_core::model::event::Event;
    use walletd_core::model::ids::{AccountId, TransactionId};
    use walletd_core::model::money::Amount;

    /// Small enough that a few batches of records fill a segment.
    const SEGMENT_BYTES_MAX: u64 = 256;
    /// Batches hold 1 to this many records, so segments close at varied lengths.
    const BATCH_RECORDS_MAX: u64 = 3;

    fn config() -> FileStorageConfig {
        FileStorageConfig {
            segment_bytes_max: SEGMENT_BYTES_MAX,
            snapshots_kept_max: 1,
        }
    }

    fn record(lsn: Lsn) -> Record {
        Record {
            lsn,
            timestamp: 1_700_000_000_000_000 + lsn,
            event: Event::Deposited {
                account: AccountId::new("alice").unwrap(),
                amount: Amount::from_minor(lsn).unwrap(),
                transaction_id: TransactionId::new(&format!("d{lsn}")).unwrap(),
            },
        }
    }

    /// Appends `batches` batches durably from `next_lsn` on, recording what was written.
    /// Checks that each batch's `on_durable` runs once, with its records already in the
    /// segment files.
    async fn append_batches(
        storage: &mut FileStorage,
        batches: u64,
        next_lsn: &mut Lsn,
        written: &mut Vec<Record>,
    ) {
        let durable = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for batch in 0..batches {
            let first_lsn = *next_lsn;
            let mut bytes = Vec::new();
            for _ in 0..=batch % BATCH_RECORDS_MAX {
                let record = record(*next_lsn);
                encode_record(&record, &mut bytes);
                written.push(record);
                *next_lsn += 1;
            }
            let last_lsn = *next_lsn - 1;
            let (dir, seen) = (storage.dir.clone(), durable.clone());
            let on_durable = Box::new(move || {
                let on_file = segment_files(&dir)
                    .iter()
                    .flat_map(|(first, bytes)| decode_log(bytes, *first).unwrap().records)
                    .last()
                    .map(|record| record.lsn);
                assert_eq!(on_file, Some(last_lsn), "written before on_durable");
                seen.lock().unwrap().push(last_lsn);
            });
            let (_, result) = storage.append_durably(first_lsn, bytes, on_durable).await;
            result.unwrap();
            assert_eq!(
                durable.lock().unwrap().last(),
                Some(&last_lsn),
                "run once per batch"
            );
        }
        assert_eq!(durable.lock().unwrap().len() as u64, batches);
    }

    /// The segment files of `dir`, oldest first: the lsn each is named by, and its bytes.
    fn segment_files(dir: &Path) -> Vec<(Lsn, Vec<u8>)> {
        numbered_files(dir, "log-", ".seg")
            .unwrap()
            .into_iter()
            .map(|(first_lsn, path)| (first_lsn, fs::read(path).unwrap()))
            .collect()
    }

    /// Reopens the storage as recovery does and returns every record of every segment,
    /// checking that each segment ends at its last record after a clean stop.
    async fn read_back(dir: &Path) -> (FileStorage, Vec<Record>) {
        let mut storage = FileStorage::open(dir, config()).unwrap();
        let mut records = Vec::new();
        for segment in storage.read_log(0).await.unwrap() {
            let decoded = decode_log(&segment.bytes, segment.first_lsn).unwrap();
            assert_eq!(decoded.valid_len, segment.bytes.len(), "{}", segment.name);
            records.extend(decoded.records);
        }
        (storage, records)
    }

    #[test]
    fn a_directory_is_open_in_one_storage_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = FileStorage::open(dir.path(), config()).unwrap();
        let refused = FileStorage::open(dir.path(), config())
            .err()
            .expect("locked");
        assert_eq!(refused.kind(), io::ErrorKind::ResourceBusy);
        let message = refused.to_string();
        let pid = format!("pid {} holds LOCK", std::process::id());
        assert!(message.contains(&pid), "{message}");
        drop(first);
        // The lock went with the storage; the file stays and locks nothing.
        assert!(dir.path().join(LOCK_FILE).exists());
        FileStorage::open(dir.path(), config()).unwrap();
    }

    #[tokio::test]
    async fn appends_roll_over_into_segments_cut_to_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = FileStorage::open(dir.path(), config()).unwrap();
        let (mut next_lsn, mut written) = (1, Vec::new());
        append_batches(&mut storage, 40, &mut next_lsn, &mut written).await;

        // While the storage is open, the newest segment runs on into preallocated zeros and
        // every closed one already ends exactly at its last record.
        let files = segment_files(dir.path());
        assert!(files.len() >= 5, "only {} segments", files.len());
        let (newest, closed) = files.split_last().unwrap();
        for (first_lsn, bytes) in closed {
            let decoded = decode_log(bytes, *first_lsn).unwrap();
            assert!(!decoded.records.is_empty());
            assert_eq!(decoded.valid_len, bytes.len(), "segment {first_lsn}");
            assert!(bytes.len() as u64 <= SEGMENT_BYTES_MAX);
        }
        let decoded = decode_log(&newest.1, newest.0).unwrap();
        assert!(
            decoded.valid_len < newest.1.len(),
            "the newest segment is preallocated"
        );
        drop(storage);

        let (mut storage, records) = read_back(dir.path()).await;
        assert_eq!(records, written);

        // Appending after a reopen goes on from the newest segment and rolls over again.
        append_batches(&mut storage, 20, &mut next_lsn, &mut written).await;
        assert!(segment_files(dir.path()).len() > files.len());
        drop(storage);
        let (_, records) = read_back(dir.path()).await;
        assert_eq!(records, written);
    }

    /// A snapshot whose writing fails leaves neither a temporary file nor a snapshot; the
    /// chunk files it finished stay (the next snapshot writes the same bytes again).
    #[tokio::test]
    async fn a_snapshot_that_fails_midway_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = FileStorage::open(dir.path(), config()).unwrap();
        let encode: crate::storage::EncodeSnapshot = Box::new(|out| {
            out.write_chunk(0, b"chunk bytes")?;
            out.write_all(b"the first bytes of a snapshot")?;
            Err(io::Error::other("the disk is full"))
        });
        let failed = storage.write_snapshot(7, encode).await;
        assert_eq!(failed.unwrap_err().to_string(), "the disk is full");
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [LOCK_FILE.to_string(), chunk_name(0)]);
        assert!(storage.read_snapshots().await.unwrap().is_empty());
    }
}
