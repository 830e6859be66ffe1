//! [`Storage`] on real files: one directory per partition holding log segments and snapshots.
//!
//! ```text
//! <dir>/log-00000000000000000001.seg    records from lsn 1
//! <dir>/log-00000000000001048577.seg    records from lsn 1048577, once the first passed the size limit
//! <dir>/snapshot-00000000000002000000.snap
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
//! written. The zeros after the last record decode as the end of the log ([`crate::codec`]);
//! a segment is cut to its last record before the next one is created, and when the storage
//! is dropped.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{LogSegment, Storage, StoredSnapshot};
use crate::event::Lsn;

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
    file: Arc<File>,
    /// Bytes of records: where the next append goes.
    len: u64,
    /// The file's size: records, then zeros.
    allocated: u64,
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
    current: Option<OpenSegment>,
    /// Set when an append created a file whose directory entry is not yet durable.
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
        Ok(FileStorage {
            dir,
            config,
            current: None,
            dir_dirty: false,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The open segment, after starting a new one (named by `first_lsn`) if appending
    /// `len` more bytes would take the current one past its size limit.
    fn segment_for(&mut self, first_lsn: Lsn, len: usize) -> io::Result<&mut OpenSegment> {
        let full = self
            .current
            .as_ref()
            .is_none_or(|c| c.len > 0 && c.len + len as u64 > self.config.segment_bytes_max);
        if full {
            if let Some(closed) = &self.current {
                // Recovery refuses a segment other than the newest that does not end at its
                // last record, so the zeros go, durably, before the next segment exists.
                if closed.allocated > closed.len {
                    closed.file.set_len(closed.len)?;
                    closed.file.sync_all()?;
                }
            }
            let path = self.dir.join(segment_name(first_lsn));
            let file = OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&path)?;
            self.current = Some(OpenSegment {
                file: Arc::new(file),
                len: 0,
                allocated: 0,
            });
            self.dir_dirty = true;
        }
        Ok(self.current.as_mut().expect("a segment is open"))
    }

    /// Opens the newest segment for appending. Until recovery cuts it with
    /// [`Storage::truncate_last`], its records are taken to fill the whole file.
    fn open_last_segment(&mut self) -> io::Result<()> {
        if let Some((_, path)) = numbered_files(&self.dir, "log-", ".seg")?.pop() {
            let file = OpenOptions::new().write(true).open(&path)?;
            let len = file.metadata()?.len();
            self.current = Some(OpenSegment {
                file: Arc::new(file),
                len,
                allocated: len,
            });
        }
        Ok(())
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
        self.open_last_segment()?;
        Ok(segments)
    }

    async fn truncate_last(&mut self, len: u64) -> io::Result<()> {
        let Some(current) = self.current.as_mut() else {
            return Ok(());
        };
        assert!(len <= current.allocated, "truncation only shortens");
        current.file.set_len(len)?;
        current.len = len;
        current.allocated = len;
        let file = Arc::clone(&current.file);
        blocking(move || file.sync_all()).await
    }

    async fn append(&mut self, first_lsn: Lsn, bytes: &[u8]) -> io::Result<()> {
        let current = self.segment_for(first_lsn, bytes.len())?;
        // Writes go to the page cache and are cheap; only the sync waits for the disk.
        current.allocated = write_records(&current.file, current.len, current.allocated, bytes)?;
        current.len += bytes.len() as u64;
        Ok(())
    }

    async fn append_durably(
        &mut self,
        first_lsn: Lsn,
        bytes: Vec<u8>,
    ) -> (Vec<u8>, io::Result<()>) {
        let current = match self.segment_for(first_lsn, bytes.len()) {
            Ok(current) => current,
            Err(error) => return (bytes, Err(error)),
        };
        let file = Arc::clone(&current.file);
        let (len, allocated) = (current.len, current.allocated);
        let dir = self.dir_dirty.then(|| self.dir.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            let result = write_records(&file, len, allocated, &bytes).and_then(|allocated| {
                file.sync_data()?;
                dir.map_or(Ok(()), |dir| sync_dir(&dir))?;
                Ok(allocated)
            });
            (bytes, result)
        })
        .await;
        let (bytes, result) = match outcome {
            Ok(done) => done,
            Err(e) => {
                let error = io::Error::other(format!("storage task failed: {e}"));
                return (Vec::new(), Err(error));
            }
        };
        match result {
            Ok(allocated) => {
                // A failed write or sync is fatal for the partition, so the sizes only
                // matter here.
                let current = self.current.as_mut().expect("a segment is open");
                current.len += bytes.len() as u64;
                current.allocated = allocated;
                self.dir_dirty = false;
                (bytes, Ok(()))
            }
            Err(error) => (bytes, Err(error)),
        }
    }

    async fn sync(&mut self) -> io::Result<()> {
        let Some(current) = self.current.as_ref() else {
            return Ok(());
        };
        let file = Arc::clone(&current.file);
        let dir = self.dir_dirty.then(|| self.dir.clone());
        blocking(move || {
            file.sync_data()?;
            if let Some(dir) = dir {
                sync_dir(&dir)?;
            }
            Ok(())
        })
        .await?;
        self.dir_dirty = false;
        Ok(())
    }

    fn write_snapshot(
        &mut self,
        lsn: Lsn,
        bytes: Vec<u8>,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let dir = self.dir.clone();
        let kept = self.config.snapshots_kept_max;
        blocking(move || {
            let tmp = dir.join(format!("snapshot-{lsn:020}.tmp"));
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, dir.join(snapshot_name(lsn)))?;
            sync_dir(&dir)?;
            let snapshots = numbered_files(&dir, "snapshot-", ".snap")?;
            for (_, old) in snapshots.iter().rev().skip(kept) {
                fs::remove_file(old)?;
            }
            Ok(())
        })
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

impl Drop for FileStorage {
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
