//! [`RaftStore`] on real files: the durable Raft state of one replica in one directory.
//!
//! ```text
//! <dir>/raft-00000000000000000001.log   [base][persist][persist]...   (rotated away later)
//! <dir>/raft-00000000000000000913.log   [base of everything so far][persist]...
//! ```
//! A file is a run of checksummed records ([`records`]): the first is a *base*, the whole
//! [`DurableRaft`] (hard state, voters and learners, every entry), and each one after it a
//! *persist*, one [`walletd_core::replica::Persist`] (a hard state if it has one, and its
//! entries). raft-rs's types are written in a little-endian layout of this crate's own
//! ([`codec`]), versioned, rather than as protobuf. A file is named by the sequence number of
//! its base record; the newest file is the store, older ones are what a rotation had not yet
//! deleted.
//!
//! # Writing
//! - A file comes into being whole: its base record is written to `raft-<seq>.tmp`, synced,
//!   renamed to `raft-<seq>.log`, and the directory synced. So a `.log` file always starts
//!   with a synced base, and a new store's `initial` state is durable before `open` returns
//!   (a restart reads the same voters).
//! - [`RaftStore::append`] writes one persist record (no sync), and applies it to an
//!   in-memory copy of the state, which the next base record is made of.
//!   [`RaftStore::sync`] is `fdatasync`.
//! - **Rotation** bounds a file: once it has reached [`FileRaftStoreConfig::file_bytes_max`]
//!   and its persists hold at least as many bytes as its base, the next append starts a new
//!   file whose base is the state with that persist applied (so it is durable at once).
//!   Only after the new file and the directory are synced are older files deleted. The
//!   second condition keeps the cost linear: entries are never compacted away yet, so every
//!   base rewrites the whole log, and a rotation may write no more than the persists since
//!   the last one did. A bound on the log itself (`entries_bytes_max`, with compaction
//!   behind a Raft snapshot) is for later; until then the state lives in memory twice (here
//!   and in the replica's raft-rs storage), and a base record larger than
//!   [`records::RECORD_PAYLOAD_MAX`] is an error.
//! - **A failed write or sync stops the store**: every later call fails. After a failed
//!   `fdatasync` the kernel may have dropped the pages it could not write, and after a failed
//!   write the file holds bytes this store does not know of, so nothing it believes about
//!   the file holds any more (as for a partition's log and the node journal).
//!
//! # Recovery
//! At open: temporary files are deleted; the newest `.log` file is read; its records are
//! applied in order (the base, then each persist with [`DurableRaft::persist`]'s rules:
//! entries replace any at and after their first index, the hard state replaces the old one).
//! - A torn tail (an incomplete or bad-checksum record that no later record says was synced,
//!   or zeros a file system left after the last record) is the unsynced writes of a crash:
//!   it is cut, and the file synced, before anything new is written.
//! - A bad record that a later one says was synced is damage: an error naming the file and
//!   the byte offset, and nothing is cut.
//! - A record whose version or kind this build does not know, a file that does not start
//!   with its base, or a persist that leaves a gap in the log is an error too.
//! - The file is synced even if nothing was cut: a process that stopped without syncing
//!   leaves its writes in the page cache, where this reads them, and the replica will act
//!   on them as durable. Only then are older files (a rotation that did not finish) deleted.
//!
//! # The node journal
//! A node hosts many groups, and a sync of each group's file per write would cost the disk
//! one `fdatasync` per group where one per node will do. Opened with
//! [`FileRaftStore::open_journaled`], a store writes its persists to its file (the page
//! cache only) and, at [`RaftStore::sync`], hands the records written since the last sync
//! to a [`NodeJournal`] shared by every Raft store of the node (a journal of its own, apart
//! from the partition logs'); the sync resolves when the journal's round holding them is
//! synced, with those of every other group that synced meanwhile. The journal's rules are
//! the partition logs' ([`crate::storage::journal`]), with records numbered by their `seq`
//! where a partition's are by lsn:
//! - its own file is synced only at a checkpoint, when the journal asks (after it rotated),
//!   and whenever the store writes a base record (a rotation or a reset, durable at once);
//! - at open, after the file's own recovery, every journaled record after the file's last is
//!   appended to it (redone), and the file synced;
//! - a store that `open` creates (a new or wiped directory) takes the journal's records for
//!   its partition and drops them: they belong to a store that no longer exists, and would
//!   otherwise be redone on top of a new one.
//!
//! The store runs on real files only (`cfg(not(madsim))`); the simulator keeps Raft state in
//! its own disk model. Blocking file work runs on tokio's blocking threads, one call at a
//! time, as [`crate::storage::file::FileStorage`]'s log does: a call moves the writer there
//! and back, so a call dropped before it completes leaves the store refusing further calls.
//! [`FileRaftStore::open`] itself blocks; call it where a replica is set up, not on a busy
//! runtime thread.
//!
//! The directory needs no lock of its own when it lies inside a partition's storage
//! directory, which [`crate::storage::file::FileStorage`] holds locked.

pub mod codec;
pub mod records;
mod writer;

#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use walletd_core::model::partition::PartitionId;
use walletd_core::replica::{DurableRaft, Persist};

use super::RaftStore;
use crate::storage::journal::NodeJournal;
use writer::{Unjournaled, Writer};

/// Limits of a file Raft store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRaftStoreConfig {
    /// A file that has reached this size (and whose persists outweigh its base; see the
    /// module docs) is replaced by a new one at the next append.
    pub file_bytes_max: u64,
}

impl Default for FileRaftStoreConfig {
    fn default() -> Self {
        FileRaftStoreConfig {
            file_bytes_max: 16 << 20,
        }
    }
}

/// Why a file Raft store cannot go on. Handed out inside an [`io::Error`] (as its source),
/// of kind [`io::ErrorKind::InvalidData`] for corruption.
#[derive(Debug, thiserror::Error)]
pub enum FileRaftStoreError {
    #[error("raft store {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("raft store {path} is corrupt at byte offset {offset}: {detail}")]
    Corrupt {
        path: String,
        offset: u64,
        detail: String,
    },
    #[error(
        "raft store {dir}: a record of {payload_len} bytes is over the limit of {limit}; the \
         Raft log needs compaction, which this build does not do yet"
    )]
    TooLarge {
        dir: String,
        payload_len: usize,
        limit: usize,
    },
    #[error(
        "raft store {dir} stopped after an earlier failure ({reason}); what it wrote since its \
         last sync cannot be trusted"
    )]
    Stopped { dir: String, reason: String },
}

impl From<FileRaftStoreError> for io::Error {
    fn from(error: FileRaftStoreError) -> io::Error {
        let kind = match &error {
            FileRaftStoreError::Io { source, .. } => source.kind(),
            FileRaftStoreError::Corrupt { .. } => io::ErrorKind::InvalidData,
            FileRaftStoreError::TooLarge { .. } | FileRaftStoreError::Stopped { .. } => {
                io::ErrorKind::Other
            }
        };
        io::Error::new(kind, error)
    }
}

/// The durable Raft state of one replica in a directory of files. See the module docs.
pub struct FileRaftStore {
    dir: PathBuf,
    /// `None` only while a call has it on a blocking thread, or after such a call panicked
    /// or was dropped: the store then refuses further calls rather than guess at the files.
    writer: Option<Writer>,
    /// With a node journal, syncs are its rounds (see "The node journal" in the module docs).
    journal: Option<Journaled>,
}

/// A store's place in the node journal of the Raft stores.
struct Journaled {
    journal: Arc<NodeJournal>,
    /// Its stream in the journal: the partition of its group.
    partition: PartitionId,
}

impl FileRaftStore {
    /// Opens the store in `dir` (created if missing) with the default limits. A new store
    /// starts from `initial` (a new group's: [`DurableRaft::new`]), made durable before this
    /// returns; an existing one ignores it and recovers what its files hold.
    pub fn open(dir: &Path, initial: DurableRaft) -> io::Result<FileRaftStore> {
        FileRaftStore::open_with(dir, initial, FileRaftStoreConfig::default())
    }

    /// [`FileRaftStore::open`] with `config`'s limits.
    pub fn open_with(
        dir: &Path,
        initial: DurableRaft,
        config: FileRaftStoreConfig,
    ) -> io::Result<FileRaftStore> {
        assert!(config.file_bytes_max > 0, "a file holds at least a record");
        let writer = Writer::open(dir, config, initial)?;
        Ok(FileRaftStore {
            dir: dir.to_path_buf(),
            writer: Some(writer),
            journal: None,
        })
    }

    /// [`FileRaftStore::open_with`], the store of `partition`'s group on a node whose Raft
    /// stores sync through `journal`: redoes what the journal holds for it (see "The node
    /// journal" in the module docs) before it returns.
    pub fn open_journaled(
        dir: &Path,
        initial: DurableRaft,
        config: FileRaftStoreConfig,
        journal: Arc<NodeJournal>,
        partition: PartitionId,
    ) -> io::Result<FileRaftStore> {
        assert!(config.file_bytes_max > 0, "a file holds at least a record");
        let mut writer = Writer::open(dir, config, initial)?;
        let batches = journal.take_recovered(partition);
        if writer.created && !batches.is_empty() {
            tracing::warn!(
                store = %dir.display(),
                batches = batches.len(),
                "the node journal holds records of a Raft store that is no longer there; \
                 they are dropped"
            );
        } else {
            let mut redone = 0;
            for (first_seq, bytes) in &batches {
                redone += writer.redo(*first_seq, bytes)?;
            }
            if redone > 0 {
                tracing::info!(store = %dir.display(), redone, "raft store redone from the node journal");
            }
        }
        writer.sync()?;
        journal.checkpointed(partition, journal.recovered_through());
        writer.unjournaled = Some(Unjournaled::default());
        Ok(FileRaftStore {
            dir: dir.to_path_buf(),
            writer: Some(writer),
            journal: Some(Journaled { journal, partition }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The writer, for work done on the caller's thread.
    fn writer_here(&mut self) -> Result<&mut Writer, FileRaftStoreError> {
        let dir = &self.dir;
        self.writer
            .as_mut()
            .ok_or_else(|| FileRaftStoreError::Stopped {
                dir: dir.display().to_string(),
                reason: "a call was dropped or panicked before it completed".into(),
            })
    }

    /// A sync through the node journal: hands it the records written since the last one
    /// and waits for its round; syncs the file itself too if the journal asks for a
    /// checkpoint.
    async fn sync_journaled(&mut self) -> io::Result<()> {
        let Some((first_seq, bytes)) = self.writer_here()?.take_unjournaled()? else {
            return Ok(());
        };
        let Journaled { journal, partition } = self.journal.as_ref().expect("journaled");
        let (journal, partition) = (Arc::clone(journal), *partition);
        let (_, committed) = journal.commit(partition, first_seq, bytes).await;
        let file = match committed {
            Ok(file) => file,
            Err(error) => {
                // Those records are in no round: nothing may be acknowledged after them.
                self.writer_here()?.failed = Some(error.to_string());
                return Err(error);
            }
        };
        if journal.wants_checkpoint(partition) {
            self.on_writer(Writer::sync).await?;
            journal.checkpointed(partition, file);
        }
        Ok(())
    }

    /// Runs `work` with the writer on a blocking thread, moving the writer there and back.
    async fn on_writer<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Writer) -> Result<T, FileRaftStoreError> + Send + 'static,
    ) -> io::Result<T> {
        let dir = self.dir.display().to_string();
        let mut writer = self
            .writer
            .take()
            .ok_or_else(|| FileRaftStoreError::Stopped {
                dir: dir.clone(),
                reason: "a call was dropped or panicked before it completed".into(),
            })?;
        let (writer, out) = tokio::task::spawn_blocking(move || {
            let out = work(&mut writer);
            (writer, out)
        })
        .await
        .map_err(|e| io::Error::other(format!("raft store {dir}: a storage task failed: {e}")))?;
        self.writer = Some(writer);
        Ok(out?)
    }
}

impl RaftStore for FileRaftStore {
    /// What the files held at open, with what was appended since (the page cache holds it
    /// for a process restart as it does for recovery's read).
    async fn recover(&mut self) -> io::Result<DurableRaft> {
        self.on_writer(|writer| writer.state().cloned()).await
    }

    /// Entries are `Bytes`: the copy that moves to the blocking thread shares their data.
    /// With a node journal the write goes to the page cache on the caller's thread (a
    /// rotation, every `file_bytes_max` bytes, syncs there too), as a partition's log does.
    async fn append(&mut self, persist: &Persist) -> io::Result<()> {
        if self.journal.is_some() {
            return Ok(self.writer_here()?.append(persist)?);
        }
        let persist = persist.clone();
        self.on_writer(move |writer| writer.append(&persist)).await
    }

    async fn sync(&mut self) -> io::Result<()> {
        if self.journal.is_some() {
            return self.sync_journaled().await;
        }
        self.on_writer(Writer::sync).await
    }

    async fn reset(&mut self, state: DurableRaft) -> io::Result<()> {
        self.on_writer(move |writer| writer.reset(state)).await
    }
}
