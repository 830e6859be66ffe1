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
//! covers. How they are written (headers, sync marks, preallocation, directory syncs) is
//! [`super::segments`], shared with the simulator's disk; this file gives it real files. A
//! new file's directory entry is only durable after the directory itself is synced, so every
//! file creation and rename is followed by an fsync of the directory.
//!
//! Synced pages of the log, snapshots and chunk files are dropped from the page cache
//! (`posix_fadvise`): they are read again only by a recovery. With them cached, the writes
//! kept claiming fresh pages, and the kernel's copy into them was an eighth of the engine's
//! time at a million transfers a second.
//!
//! The writing end of the log is plain blocking code. An append moves it onto a blocking
//! thread and back, so the partition goes on applying while a batch is written and synced,
//! and also while a full segment is closed and the next one created.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use super::journal::NodeJournal;
use super::segments::{read_segment, SegmentConfig, SegmentDir, SegmentWriter};
use super::{EncodeSnapshot, OnDurable, SegmentRef, SnapshotRef, Storage};
use walletd_core::ledger::cold::ChunkRead;
use walletd_core::log::snapshot::SnapshotOut;
use walletd_core::model::event::Lsn;
use walletd_core::model::partition::PartitionId;

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

/// Tells the kernel that `file`'s bytes `from..to`, synced, will not be read again: a log
/// and its snapshots are written once and read only by a recovery, so keeping them cached
/// only takes memory from the rest of the machine (and keeps claiming fresh pages for the
/// page cache, which costs more than reusing dropped ones). Advice only: errors are ignored.
fn drop_cached(file: &File, from: u64, to: u64) {
    if let Some(len) = std::num::NonZeroU64::new(to.saturating_sub(from)) {
        let _ = rustix::fs::fadvise(file, from, Some(len), rustix::fs::Advice::DontNeed);
    }
}

/// A partition's directory as the segment writer sees it: real files, real syncs.
pub struct RealDir {
    dir: PathBuf,
}

impl SegmentDir for RealDir {
    type File = File;

    fn list(&mut self) -> io::Result<Vec<(Lsn, String)>> {
        let files = numbered_files(&self.dir, "log-", ".seg")?;
        Ok(files
            .into_iter()
            .map(|(lsn, path)| (lsn, file_name(&path)))
            .collect())
    }

    fn create(&mut self, name: &str) -> io::Result<File> {
        OpenOptions::new()
            .create_new(true)
            .write(true)
            .read(true)
            .open(self.dir.join(name))
    }

    fn open(&mut self, name: &str) -> io::Result<(File, u64)> {
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .open(self.dir.join(name))?;
        let len = file.metadata()?.len();
        Ok((file, len))
    }

    fn read_at(&mut self, file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        read_at(file, offset, len)
    }

    fn write_at(&mut self, file: &File, offset: u64, bytes: &[u8]) -> io::Result<()> {
        file.write_all_at(bytes, offset)
    }

    /// Writes the zeros rather than setting the length: the point is that the blocks are
    /// allocated and the size is already on the disk when a later small batch is synced.
    fn extend_zeroed(&mut self, file: &File, from: u64, to: u64) -> io::Result<()> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let mut at = from;
        while at < to {
            let step = (to - at).min(ZEROS.len() as u64) as usize;
            file.write_all_at(&ZEROS[..step], at)?;
            at += step as u64;
        }
        Ok(())
    }

    fn set_len(&mut self, file: &File, len: u64) -> io::Result<()> {
        file.set_len(len)
    }

    fn sync_data(&mut self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        sync_dir(&self.dir)
    }

    fn drop_cached(&mut self, file: &File, from: u64, to: u64) {
        drop_cached(file, from, to);
    }
}

/// `len` bytes of `file` from `offset`, fewer only where the file ends.
fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], offset + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    buf.truncate(got);
    Ok(buf)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// The writing end of the log, on real files.
type LogWriter = SegmentWriter<RealDir>;

/// Log segments and snapshots of one partition in one directory.
pub struct FileStorage {
    dir: PathBuf,
    config: FileStorageConfig,
    /// `None` only while a storage task has it on a blocking thread, or after such a task
    /// panicked: the storage then refuses further log work rather than guess at the files.
    log: Option<LogWriter>,
    /// The directory's lock, held while the storage is open (see [`lock_dir`]).
    _lock: File,
    /// With a node journal, commits are made durable by the journal's round, and the log
    /// is synced only at checkpoints and by [`Storage::sync`].
    journal: Option<Journaled>,
}

/// A storage's place in its node journal.
struct Journaled {
    journal: Arc<NodeJournal>,
    partition: PartitionId,
    /// The journal file of this partition's last commit (or the newest one recovery redid
    /// from): a sync of the log covers every batch up to it.
    last_file: u64,
    /// Whether commits go through the journal; if not, it is there only for recovery to
    /// redo what an earlier run committed through it.
    commits: bool,
}

impl Journaled {
    /// The log was just synced: a checkpoint of every batch committed so far.
    fn log_synced(&self) {
        self.journal.checkpointed(self.partition, self.last_file);
    }
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

/// A writer for the log in `dir`, which it reads only when first asked to.
fn log_writer(dir: &Path, config: &FileStorageConfig) -> LogWriter {
    let segments = SegmentConfig {
        segment_bytes_max: config.segment_bytes_max,
        preallocate_bytes: PREALLOCATE_BYTES,
        preallocate_write_bytes_max: PREALLOCATE_BATCH_BYTES_MAX,
    };
    SegmentWriter::new(
        RealDir {
            dir: dir.to_path_buf(),
        },
        segments,
    )
}

/// Where [`Storage::set_aside`] moves a storage's files: `<dir>/damaged-<unix seconds>[-n]/`.
const SET_ASIDE_PREFIX: &str = "damaged-";

/// Moves every file of `dir` but its lock into a new `damaged-*` directory inside it.
fn move_files_aside(dir: &Path) -> io::Result<PathBuf> {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut aside = dir.join(format!("{SET_ASIDE_PREFIX}{since_epoch}"));
    for n in 1.. {
        match fs::create_dir(&aside) {
            Ok(()) => break,
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                aside = dir.join(format!("{SET_ASIDE_PREFIX}{since_epoch}-{n}"));
            }
            Err(error) => return Err(error),
        }
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == LOCK_FILE || entry.file_type()?.is_dir() {
            continue;
        }
        fs::rename(entry.path(), aside.join(entry.file_name()))?;
    }
    sync_dir(&aside)?;
    sync_dir(dir)?;
    Ok(aside)
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
        let log = log_writer(&dir, &config);
        Ok(FileStorage {
            dir,
            config,
            log: Some(log),
            _lock: lock,
            journal: None,
        })
    }

    /// Opens the storage directory `dir` of `partition` on a node with a journal. With
    /// `commits`, the journal makes its commits durable (one sync per node round instead of
    /// one per partition batch; see [`super::journal`]); without, the partition syncs its
    /// own log and the journal only gives its recovery what an earlier run committed
    /// through it.
    pub fn open_journaled(
        dir: impl Into<PathBuf>,
        config: FileStorageConfig,
        journal: Arc<NodeJournal>,
        partition: PartitionId,
        commits: bool,
    ) -> io::Result<FileStorage> {
        let mut storage = FileStorage::open(dir, config)?;
        storage.journal = Some(Journaled {
            last_file: journal.recovered_through(),
            journal,
            partition,
            commits,
        });
        Ok(storage)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Syncs the log if commits go through a node journal (see `write_snapshot`).
    fn checkpoint_before_snapshot(&mut self) -> io::Result<()> {
        let Some(journaled) = &self.journal else {
            return Ok(());
        };
        self.log.as_mut().ok_or_else(log_lost)?.sync()?;
        journaled.log_synced();
        Ok(())
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

impl Drop for FileStorage {
    /// Cuts the zeros after the last record, so a cleanly stopped partition leaves segments
    /// that end at their last frame (a crash leaves them for recovery to cut).
    fn drop(&mut self) {
        if let Some(log) = self.log.as_mut() {
            log.release();
        }
    }
}

/// The name of chunk file `index` of the snapshots.
pub fn chunk_name(index: u64) -> String {
    format!("chunk-{index:010}.rows")
}

/// Most chunk files a [`FileChunks`] keeps open: the newest are read the most (retries come
/// soon after their transfer, if at all); an older one is opened for its read.
const CHUNK_FILES_OPEN_MAX: usize = 64;

/// Reads a partition's chunk files with `pread`, for the rows its ledger keeps on disk only
/// ([`ChunkRead`]): synchronous, on the partition's thread, a page-cache hit or one disk read.
/// Chunk files never change once written, so an open file stays valid.
pub struct FileChunks {
    dir: PathBuf,
    open: std::sync::Mutex<std::collections::BTreeMap<u64, std::sync::Arc<File>>>,
}

impl FileChunks {
    fn file(&self, chunk: u64) -> io::Result<std::sync::Arc<File>> {
        let mut open = self.open.lock().expect("chunk files");
        if let Some(file) = open.get(&chunk) {
            return Ok(file.clone());
        }
        let file = std::sync::Arc::new(File::open(self.dir.join(chunk_name(chunk)))?);
        if open.len() >= CHUNK_FILES_OPEN_MAX {
            open.pop_first();
        }
        open.insert(chunk, file.clone());
        Ok(file)
    }
}

impl ChunkRead for FileChunks {
    fn read_at(&self, chunk: u64, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let bytes = read_at(&*self.file(chunk)?, offset, len)?;
        if bytes.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "chunk file {chunk} ends before byte {}",
                    offset + len as u64
                ),
            ));
        }
        Ok(bytes)
    }

    fn len(&self, chunk: u64) -> io::Result<u64> {
        Ok(self.file(chunk)?.metadata()?.len())
    }
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
    async fn list_log(&mut self, from_lsn: Lsn) -> io::Result<Vec<SegmentRef>> {
        let dir = self.dir.clone();
        let segments = self
            .on_log(move |log| log.recovery_segments(from_lsn))
            .await??;
        Ok(segments
            .into_iter()
            .map(|(first_lsn, name)| SegmentRef {
                first_lsn,
                name: dir.join(name).display().to_string(),
            })
            .collect())
    }

    async fn log_segments(&mut self) -> io::Result<Vec<SegmentRef>> {
        let dir = self.dir.clone();
        let segments = self.on_log(move |log| log.list_segments()).await??;
        Ok((segments.into_iter())
            .map(|(first_lsn, name)| SegmentRef {
                first_lsn,
                name: dir.join(name).display().to_string(),
            })
            .collect())
    }

    /// Read in steps, so that an unreadable sector is an error naming the file and where
    /// ([`read_segment`]).
    async fn read_segment(&mut self, segment: &SegmentRef) -> io::Result<Vec<u8>> {
        let path = segment.name.clone();
        blocking(move || {
            let file = File::open(&path)?;
            read_segment(&path, |offset, len| read_at(&file, offset, len))
        })
        .await
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
    ///
    /// With a node journal: writes to the log on the caller's thread (the page cache only,
    /// but a roll-over syncs the closed segment there too, once a segment), then waits for
    /// the journal's round; after a rotation of the journal, syncs the log as well (a
    /// checkpoint) before it resolves.
    async fn append_durably(
        &mut self,
        first_lsn: Lsn,
        bytes: Vec<u8>,
        on_durable: OnDurable,
    ) -> (Vec<u8>, io::Result<()>) {
        if let Some(journaled) = self.journal.as_ref().filter(|j| j.commits) {
            let (journal, partition) = (Arc::clone(&journaled.journal), journaled.partition);
            let appended = match self.log.as_mut() {
                Some(log) => log.append(first_lsn, &bytes),
                None => Err(log_lost()),
            };
            if let Err(error) = appended {
                return (bytes, Err(error));
            }
            let (bytes, committed) = journal.commit(partition, first_lsn, bytes).await;
            let file = match committed {
                Ok(file) => file,
                Err(error) => return (bytes, Err(error)),
            };
            self.journal.as_mut().expect("journaled").last_file = file;
            on_durable();
            if journal.wants_checkpoint(partition) {
                if let Err(error) = self.sync().await {
                    return (bytes, Err(error));
                }
            }
            return (bytes, Ok(()));
        }
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

    /// Syncs the log; with a node journal, that is a checkpoint of every batch committed so
    /// far.
    async fn sync(&mut self) -> io::Result<()> {
        self.on_log(LogWriter::sync).await??;
        if let Some(journaled) = &self.journal {
            journaled.log_synced();
        }
        Ok(())
    }

    fn take_journaled(&mut self) -> Vec<(Lsn, Vec<u8>)> {
        self.journal.as_ref().map_or_else(Vec::new, |journaled| {
            journaled.journal.take_recovered(journaled.partition)
        })
    }

    fn write_snapshot(
        &mut self,
        lsn: Lsn,
        encode: EncodeSnapshot,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'static {
        let dir = self.dir.clone();
        let kept = self.config.snapshots_kept_max;
        // With a node journal the log may hold the snapshot's records unsynced; a power loss
        // would then leave a snapshot ahead of the log, and the records between the log's
        // end and the snapshot would never be appended again (recovery redoes only what
        // comes after the snapshot). So the log is synced first: a checkpoint, on the
        // caller's thread, once a snapshot.
        let checkpoint = self.checkpoint_before_snapshot();
        blocking(move || {
            checkpoint?;
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

    fn chunk_reader(&self) -> std::sync::Arc<dyn ChunkRead> {
        std::sync::Arc::new(FileChunks {
            dir: self.dir.clone(),
            open: Default::default(),
        })
    }

    async fn list_snapshots(&mut self) -> io::Result<Vec<SnapshotRef>> {
        let found = numbered_files(&self.dir, "snapshot-", ".snap")?;
        Ok(found
            .into_iter()
            .rev()
            .map(|(lsn, path)| SnapshotRef {
                lsn,
                name: path.display().to_string(),
            })
            .collect())
    }

    async fn read_snapshot(&mut self, snapshot: &SnapshotRef) -> io::Result<Vec<u8>> {
        let path = PathBuf::from(&snapshot.name);
        blocking(move || fs::read(path)).await
    }

    /// Moves the segments, snapshots and chunk files into `<dir>/damaged-<seconds>/`
    /// (the lock stays), and starts a new, empty log. Refused on a node journal, which
    /// would redo its batches into the new log.
    async fn set_aside(&mut self) -> io::Result<()> {
        if self.journal.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a partition on a node journal cannot set its log aside",
            ));
        }
        // The writer may hold the newest segment open; it is not used again.
        self.log.take().ok_or_else(log_lost)?;
        let dir = self.dir.clone();
        let aside = blocking(move || move_files_aside(&dir)).await?;
        tracing::warn!(dir = %self.dir.display(), aside = %aside.display(), "partition files set aside");
        self.log = Some(log_writer(&self.dir, &self.config));
        Ok(())
    }

    async fn holds_set_aside(&mut self) -> io::Result<bool> {
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let aside = name
                .to_str()
                .is_some_and(|n| n.starts_with(SET_ASIDE_PREFIX));
            if aside && entry.file_type()?.is_dir() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{recover, DriverError};
    use crate::storage::read_whole_log;
    use walletd_core::log::codec::{
        decode_log, encode_record, starts_with_segment_header, Record, SYNC_MARK_LEN,
    };
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

    /// Record `lsn` of a log that replays: alice's account opened, then deposits to it.
    fn record(lsn: Lsn) -> Record {
        let account = AccountId::new("alice").unwrap();
        let event = match lsn {
            1 => Event::AccountOpened {
                account,
                currency: walletd_core::model::money::Currency::USD,
            },
            _ => Event::Deposited {
                account,
                amount: Amount::from_minor(lsn).unwrap(),
                transaction_id: TransactionId::new(&format!("d{lsn}")).unwrap(),
            },
        };
        Record {
            lsn,
            timestamp: 1_700_000_000_000_000 + lsn,
            event,
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
        for (segment, bytes) in read_whole_log(&mut storage, 0).await.unwrap() {
            let decoded = decode_log(&bytes, segment.first_lsn).unwrap();
            assert_eq!(decoded.valid_len, bytes.len(), "{}", segment.name);
            records.extend(decoded.records);
        }
        (storage, records)
    }

    #[tokio::test]
    async fn a_copy_set_aside_leaves_an_empty_log_and_is_kept_where_nothing_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = FileStorage::open(dir.path(), config()).unwrap();
        let (mut next_lsn, mut written) = (1, Vec::new());
        append_batches(&mut storage, 20, &mut next_lsn, &mut written).await;
        assert!(!storage.holds_set_aside().await.unwrap());
        let before = segment_files(dir.path());
        assert!(!before.is_empty());

        storage.set_aside().await.unwrap();
        assert!(storage.holds_set_aside().await.unwrap());
        assert!(
            storage.list_log(0).await.unwrap().is_empty(),
            "an empty log"
        );
        let aside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(segment_files(&aside[0]), before, "kept as they were");
        // A new log from lsn 1, read back alone, the lock still held.
        let (mut next_lsn, mut rewritten) = (1, Vec::new());
        append_batches(&mut storage, 3, &mut next_lsn, &mut rewritten).await;
        assert!(
            FileStorage::open(dir.path(), config()).is_err(),
            "still locked"
        );
        drop(storage);
        let (mut storage, records) = read_back(dir.path()).await;
        assert_eq!(records, rewritten);
        assert!(storage.holds_set_aside().await.unwrap(), "remembered");
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
            assert!(starts_with_segment_header(bytes), "segment {first_lsn}");
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
        assert!(storage.list_snapshots().await.unwrap().is_empty());
    }

    /// The newest segment of a storage that was appended to and then lost power mid-batch:
    /// returns its path and where that batch (never synced) starts.
    async fn crashed_mid_batch(dir: &Path) -> (PathBuf, usize) {
        let mut storage = FileStorage::open(dir, config()).unwrap();
        let (mut next_lsn, mut written) = (1, Vec::new());
        append_batches(&mut storage, 4, &mut next_lsn, &mut written).await;
        drop(storage);
        let (first_lsn, path) = numbered_files(dir, "log-", ".seg").unwrap().pop().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let batch_start = decode_log(&bytes, first_lsn).unwrap().valid_len;
        // The preallocated zeros a power cut leaves (a clean stop cut them).
        bytes.resize(batch_start + 4096, 0);
        // The next batch, written but not synced: its first sector lost, the rest kept.
        let mut batch = Vec::new();
        for lsn in next_lsn..next_lsn + 3 {
            encode_record(&record(lsn), &mut batch);
        }
        bytes[batch_start..batch_start + batch.len()].copy_from_slice(&batch);
        bytes[batch_start..batch_start + 20].fill(0);
        fs::write(&path, &bytes).unwrap();
        (path, batch_start)
    }

    #[tokio::test]
    async fn recovery_cuts_a_stale_range_and_syncs_a_mark_after_what_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (path, batch_start) = crashed_mid_batch(dir.path()).await;
        let mut storage = FileStorage::open(dir.path(), config()).unwrap();
        let (ledger, report) = recover(&mut storage, 0, 1).await.unwrap();
        assert!(report.torn_bytes_dropped > 0);
        let after = fs::read(&path).unwrap();
        let decoded = decode_log(&after, 0).unwrap();
        assert_eq!(
            decoded.valid_len,
            batch_start + SYNC_MARK_LEN,
            "cut, then a mark"
        );
        assert_eq!(
            decoded.records.last().unwrap().lsn,
            ledger.last_applied().lsn
        );
        assert!(after[decoded.valid_len..].iter().all(|&b| b == 0));
    }

    #[tokio::test]
    async fn damage_that_a_sync_mark_vouches_for_stops_recovery_naming_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (path, batch_start) = crashed_mid_batch(dir.path()).await;
        let mut bytes = fs::read(&path).unwrap();
        // A bit flip in the first record after the header: several marks vouch for it.
        bytes[SYNC_MARK_LEN + walletd_core::log::codec::RECORD_HEADER_LEN + 2] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let mut storage = FileStorage::open(dir.path(), config()).unwrap();
        let error = recover(&mut storage, 0, 1).await.expect_err("refused");
        assert!(
            matches!(error, DriverError::Corrupt { offset, .. } if offset == SYNC_MARK_LEN as u64)
        );
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("in synced data"), "{message}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "nothing is cut");
        assert!(batch_start > SYNC_MARK_LEN);
    }

    /// A segment written before segment headers is read with the old rules and never
    /// appended to again: the next batch starts a new segment, with a header.
    #[tokio::test]
    async fn a_segment_without_a_header_is_closed_and_the_log_goes_on_in_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut legacy = Vec::new();
        for lsn in 1..=5 {
            encode_record(&record(lsn), &mut legacy);
        }
        fs::write(
            dir.path().join(crate::storage::segments::segment_name(1)),
            &legacy,
        )
        .unwrap();
        let mut storage = FileStorage::open(dir.path(), config()).unwrap();
        let (ledger, _) = recover(&mut storage, 0, 1).await.unwrap();
        assert_eq!(ledger.last_applied().lsn, 5);
        let mut written = Vec::new();
        let mut next_lsn = 6;
        append_batches(&mut storage, 1, &mut next_lsn, &mut written).await;
        drop(storage);
        let files = segment_files(dir.path());
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].1, legacy, "the old segment is left as it was");
        assert_eq!(files[1].0, 6);
        assert!(starts_with_segment_header(&files[1].1));
        let (_, records) = read_back(dir.path()).await;
        assert_eq!(records.len(), 6);
    }
}
