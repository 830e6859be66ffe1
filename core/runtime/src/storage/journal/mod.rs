//! The node journal: one write-ahead file for all the partitions of a node, so that a group
//! commit costs the node one `fdatasync`, however many of its partitions have a batch in it.
//!
//! Without it every partition syncs its own log, and on a disk that completes a few tens of
//! thousands of syncs a second, eight partitions each waiting for their own sync spend the
//! disk on syncs of one or two transfers each (measured: 14,185 syncs/s at 1.4 transfers a
//! sync, 0.60 ms a sync, for 50 clients on 8 partitions). With the journal, a partition
//! writes its batch to its own log (the page cache only) and hands the same bytes to the
//! journal; one writer thread puts every batch handed in since its last commit into one
//! *round*, writes it and syncs once, and the batches are durable together.
//!
//! ```text
//!   partition 0 ──┐ append to its log (not synced)       journal-00000000000000000007.wal
//!   partition 1 ──┼─► commit(bytes) ──► writer thread ──► [round 41: p0 p1 p5][round 42: ...]
//!   partition 5 ──┘      ◄── durable, all at once ◄─── fdatasync
//! ```
//!
//! **Rules.**
//! - A batch is acknowledged only once the round holding it is synced. Its partition's own
//!   log holds the same bytes, written before the round, but synced only at a *checkpoint*.
//! - **Recovery redoes**: each partition recovers its own log as before (a tail no sync
//!   covered is cut), then appends every journaled record after its last one
//!   ([`NodeJournal::take_recovered`]) and syncs its log. So no acknowledged record is lost
//!   however much of a partition's unsynced tail a power loss took.
//! - **Checkpoints bound the journal.** Files rotate at [`JournalConfig::file_bytes_max`]. A
//!   closed file is deleted once every partition with a batch in it has synced its own log
//!   past that batch. A partition is asked to ([`NodeJournal::wants_checkpoint`]) by its next
//!   commit after a rotation, so one sync of its own log per partition per rotation is the
//!   price. A partition that stays idle keeps at most the file with its last batch.
//! - **Where a file ends** (the torn tail of an unfinished round against damage to a synced
//!   one) is decided by [`rounds::read_journal_file`]. At open, the newest file's torn tail is
//!   cut and synced before a new file is started, so only the newest file can ever be torn.
//! - **A failed sync stops the journal** (as it stops a partition's log): after a failed
//!   `fdatasync` the kernel may have dropped the pages it could not write, so every later
//!   commit fails too, and the partitions stop.
//!
//! The journal does not read the batches it carries: a node of a replicated cluster opens a
//! second one for its Raft stores ([`super::raft_store::file`]), whose batches are Raft
//! store records numbered by their seq where a partition's are numbered by lsn.
//!
//! The journal runs on real files only (`cfg(not(madsim))`); the simulator's disk syncs each
//! partition's log itself.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use walletd_core::log::codec::RecordReader;
use walletd_core::model::event::Lsn;
use walletd_core::model::partition::PartitionId;

pub mod rounds;
#[cfg(test)]
mod tests;

use rounds::{encode_round, read_journal_file, Frame};

/// Limits of the node journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalConfig {
    /// A file that has reached this size is closed and the next round starts a new one.
    pub file_bytes_max: u64,
    /// How far ahead of its rounds the open file is extended with zeros, so that a round's
    /// sync has no file size to write (as the partitions' segments are; see
    /// [`super::segments`]).
    pub preallocate_bytes: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            file_bytes_max: 16 << 20,
            preallocate_bytes: 1 << 20,
        }
    }
}

/// Why the journal cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("journal {path} is corrupt at byte offset {offset}: {detail}")]
    Corrupt {
        path: String,
        offset: u64,
        detail: String,
    },
    #[error(
        "journal {path} holds a batch of partition {partition}, which this node does not have \
         ({partitions} partitions)"
    )]
    UnknownPartition {
        path: String,
        partition: PartitionId,
        partitions: u32,
    },
}

/// Counters of the journal (for benchmarks and `/metrics`).
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Rounds written and synced: the node's log syncs.
    pub rounds: AtomicU64,
    /// Batches those rounds carried.
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
    /// Closed files deleted after every partition in them checkpointed.
    pub files_deleted: AtomicU64,
}

fn journal_name(seq: u64) -> String {
    format!("journal-{seq:020}.wal")
}

/// The journal files in `dir`, `(file seq, path)`, oldest first.
fn journal_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_prefix("journal-"))
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((seq, entry.path()));
    }
    found.sort();
    Ok(found)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The last lsn the journal in `dir` holds for each partition, read without changing
/// anything (a torn last round is left out, as opening would cut it): what tools that read a
/// stopped node's logs compare the logs' ends with, since a partition's log may lack what
/// its journal holds until the node's next recovery redoes it. No directory: no journal.
pub fn journaled_ends(dir: &Path) -> Result<BTreeMap<PartitionId, Lsn>, JournalError> {
    let mut ends = BTreeMap::new();
    if !dir.exists() {
        return Ok(ends);
    }
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| JournalError::Io { path, source }
    };
    for (_, path) in journal_files(dir).map_err(io_err(dir))? {
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let corrupt = |offset, detail| JournalError::Corrupt {
            path: path.display().to_string(),
            offset,
            detail,
        };
        let file = read_journal_file(&bytes).map_err(|d| corrupt(d.offset, d.detail))?;
        for frame in file.rounds.into_iter().flat_map(|round| round.frames) {
            let mut reader = RecordReader::new(&frame.bytes, frame.first_lsn);
            let mut last = None;
            while let Some(record) = reader
                .next_record()
                .map_err(|e| corrupt(0, format!("a journaled batch does not decode: {e}")))?
            {
                last = Some(record.lsn);
            }
            if let Some(last) = last {
                let end = ends.entry(frame.partition).or_insert(last);
                *end = (*end).max(last);
            }
        }
    }
    Ok(ends)
}

/// What a commit waits for: the buffer back, and the seq of the file its round went to (or
/// the error that stopped the journal).
type Done = oneshot::Sender<(Vec<u8>, io::Result<u64>)>;

struct Pending {
    partition: PartitionId,
    first_lsn: Lsn,
    bytes: Vec<u8>,
    done: Done,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    stop: bool,
}

/// Per partition: the newest closed file holding one of its batches, and the newest file
/// its own log has been synced past. It must checkpoint while the first is the greater.
#[derive(Default)]
struct Checkpoint {
    needed_through: AtomicU64,
    done_through: AtomicU64,
}

struct Shared {
    dir: PathBuf,
    queue: Mutex<Queue>,
    wake: Condvar,
    checkpoints: Vec<Checkpoint>,
    /// Closed files not yet deleted: their partitions.
    closed: Mutex<BTreeMap<u64, BTreeSet<PartitionId>>>,
    /// Batches found at open, per partition, in the order they were journaled: taken once
    /// by each partition's recovery.
    recovered: Mutex<BTreeMap<PartitionId, Vec<Frame>>>,
    /// The newest file found at open (0 if none): what a partition's recovery redid from.
    recovered_through: u64,
    stats: JournalStats,
}

/// See the module documentation.
pub struct NodeJournal {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl NodeJournal {
    /// Opens the journal in `dir` (creating it) for a node of `partitions` partitions: reads
    /// what earlier runs left for the partitions' recoveries, cuts a torn tail, and starts a
    /// new file for this run's rounds.
    pub fn open(
        dir: impl Into<PathBuf>,
        partitions: u32,
        config: JournalConfig,
    ) -> Result<Arc<NodeJournal>, JournalError> {
        let dir = dir.into();
        assert!(config.file_bytes_max > 0);
        let io_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| JournalError::Io { path, source }
        };
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent).map_err(io_err(parent))?;
            }
        }
        let files = journal_files(&dir).map_err(io_err(&dir))?;
        let newest = files.last().map(|(seq, _)| *seq);
        let mut recovered: BTreeMap<PartitionId, Vec<Frame>> = BTreeMap::new();
        let mut closed = BTreeMap::new();
        let checkpoints: Vec<Checkpoint> = (0..partitions).map(|_| Checkpoint::default()).collect();
        let mut next_round = 1;
        for (seq, path) in &files {
            let bytes = fs::read(path).map_err(io_err(path))?;
            let read = read_journal_file(&bytes).map_err(|damage| JournalError::Corrupt {
                path: path.display().to_string(),
                offset: damage.offset,
                detail: damage.detail,
            })?;
            if read.torn {
                if Some(*seq) != newest {
                    return Err(JournalError::Corrupt {
                        path: path.display().to_string(),
                        offset: read.valid_len,
                        detail: "a journal file that is not the newest ends in a torn round".into(),
                    });
                }
                tracing::warn!(
                    path = %path.display(),
                    offset = read.valid_len,
                    "journal cut: the last round was torn (a commit that never completed)"
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err(path))?;
                file.set_len(read.valid_len).map_err(io_err(path))?;
                file.sync_all().map_err(io_err(path))?;
            }
            let mut partitions_in_file = BTreeSet::new();
            for round in read.rounds {
                next_round = next_round.max(round.seq + 1);
                for frame in round.frames {
                    let Some(checkpoint) = checkpoints.get(frame.partition as usize) else {
                        return Err(JournalError::UnknownPartition {
                            path: path.display().to_string(),
                            partition: frame.partition,
                            partitions,
                        });
                    };
                    checkpoint.needed_through.fetch_max(*seq, Ordering::Relaxed);
                    partitions_in_file.insert(frame.partition);
                    recovered.entry(frame.partition).or_default().push(frame);
                }
            }
            closed.insert(*seq, partitions_in_file);
        }
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            checkpoints,
            closed: Mutex::new(closed),
            recovered: Mutex::new(recovered),
            recovered_through: newest.unwrap_or(0),
            stats: JournalStats::default(),
        });
        let first_file = newest.map_or(1, |seq| seq + 1);
        let open = OpenFile::create(&dir, first_file, config).map_err(io_err(&dir))?;
        let writer = Writer {
            shared: Arc::clone(&shared),
            config,
            file: open,
            next_round,
            buffer: Vec::new(),
            in_file: BTreeSet::new(),
        };
        let handle = std::thread::Builder::new()
            .name("walletd-journal".into())
            .spawn(move || writer.run())
            .map_err(io_err(&dir))?;
        // Files whose partitions all have nothing in them (an empty file a crash left).
        shared.delete_checkpointed();
        Ok(Arc::new(NodeJournal {
            shared,
            writer: Mutex::new(Some(handle)),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn stats(&self) -> &JournalStats {
        &self.shared.stats
    }

    /// The batches of `partition` that the journal held at open, oldest first, as
    /// `(first lsn, record bytes)`, for its recovery to redo; taken once. Its recovery must
    /// sync its log and then call [`NodeJournal::checkpointed`] with
    /// [`NodeJournal::recovered_through`].
    pub fn take_recovered(&self, partition: PartitionId) -> Vec<(Lsn, Vec<u8>)> {
        let frames = self
            .shared
            .recovered
            .lock()
            .expect("journal lock")
            .remove(&partition)
            .unwrap_or_default();
        frames.into_iter().map(|f| (f.first_lsn, f.bytes)).collect()
    }

    /// The newest file the journal held at open (0: none).
    pub fn recovered_through(&self) -> u64 {
        self.shared.recovered_through
    }

    /// Makes `bytes`, records of `partition` from `first_lsn` that its own log already holds
    /// unsynced, durable in the next round. Resolves when that round is synced, with the
    /// buffer and the seq of the file the round went to (what a checkpoint covers).
    pub async fn commit(
        &self,
        partition: PartitionId,
        first_lsn: Lsn,
        bytes: Vec<u8>,
    ) -> (Vec<u8>, io::Result<u64>) {
        assert!(
            (partition as usize) < self.shared.checkpoints.len(),
            "partition {partition} belongs to the node"
        );
        let (done, outcome) = oneshot::channel();
        {
            let mut queue = self.shared.queue.lock().expect("journal lock");
            if queue.stop {
                return (bytes, Err(io::Error::other("the node journal is stopped")));
            }
            queue.pending.push(Pending {
                partition,
                first_lsn,
                bytes,
                done,
            });
        }
        self.shared.wake.notify_one();
        outcome.await.unwrap_or_else(|_| {
            (
                Vec::new(),
                Err(io::Error::other("the node journal's writer stopped")),
            )
        })
    }

    /// Whether `partition` should sync its own log now: a closed file holds one of its
    /// batches that no sync of its log covers yet.
    pub fn wants_checkpoint(&self, partition: PartitionId) -> bool {
        let checkpoint = &self.shared.checkpoints[partition as usize];
        checkpoint.needed_through.load(Ordering::Acquire)
            > checkpoint.done_through.load(Ordering::Acquire)
    }

    /// `partition`'s own log is synced past every batch it committed to files up to
    /// `through` (the file seq of its last commit before that sync): files it was keeping
    /// may go.
    pub fn checkpointed(&self, partition: PartitionId, through: u64) {
        self.shared.checkpoints[partition as usize]
            .done_through
            .fetch_max(through, Ordering::AcqRel);
        self.shared.delete_checkpointed();
    }
}

impl Drop for NodeJournal {
    /// Stops the writer after the rounds already handed in.
    fn drop(&mut self) {
        self.shared.queue.lock().expect("journal lock").stop = true;
        self.shared.wake.notify_all();
        if let Some(handle) = self.writer.lock().expect("journal lock").take() {
            let _ = handle.join();
        }
    }
}

impl Shared {
    /// Deletes every closed file whose partitions have all checkpointed past it. Deleting
    /// needs no directory sync: a file that comes back after a crash only redoes records its
    /// partitions' logs already hold, which recovery skips.
    fn delete_checkpointed(&self) {
        let mut closed = self.closed.lock().expect("journal lock");
        let deletable: Vec<u64> = closed
            .iter()
            .filter(|(seq, partitions)| {
                partitions.iter().all(|&p| {
                    self.checkpoints[p as usize]
                        .done_through
                        .load(Ordering::Acquire)
                        >= **seq
                })
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in deletable {
            let path = self.dir.join(journal_name(seq));
            match fs::remove_file(&path) {
                Ok(()) => {
                    closed.remove(&seq);
                    self.stats.files_deleted.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "journal file not deleted");
                }
            }
        }
    }
}

/// The file rounds go to.
struct OpenFile {
    seq: u64,
    file: File,
    /// Bytes of rounds written.
    len: u64,
    /// Bytes the file has (rounds plus preallocated zeros).
    allocated: u64,
}

impl OpenFile {
    /// Creates file `seq`, durable with its directory entry before any round goes in.
    fn create(dir: &Path, seq: u64, config: JournalConfig) -> io::Result<OpenFile> {
        let path = dir.join(journal_name(seq));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .read(true)
            .open(&path)?;
        let mut open = OpenFile {
            seq,
            file,
            len: 0,
            allocated: 0,
        };
        open.extend_zeroed(config.preallocate_bytes)?;
        open.file.sync_all()?;
        sync_dir(dir)?;
        Ok(open)
    }

    /// Writes zeros up to `to` (the blocks allocated and the size on disk before a round's
    /// sync needs them).
    fn extend_zeroed(&mut self, to: u64) -> io::Result<()> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        while self.allocated < to {
            let step = (to - self.allocated).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..step], self.allocated)?;
            self.allocated += step as u64;
        }
        Ok(())
    }
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    config: JournalConfig,
    file: OpenFile,
    next_round: u64,
    buffer: Vec<u8>,
    /// Partitions with a batch in the open file.
    in_file: BTreeSet<PartitionId>,
}

impl Writer {
    fn run(mut self) {
        loop {
            let batch = {
                let mut queue = self.shared.queue.lock().expect("journal lock");
                while queue.pending.is_empty() && !queue.stop {
                    queue = self.shared.wake.wait(queue).expect("journal lock");
                }
                if queue.pending.is_empty() {
                    return;
                }
                std::mem::take(&mut queue.pending)
            };
            match self.write_round(&batch) {
                Ok(seq) => {
                    for pending in batch {
                        let _ = pending.done.send((pending.bytes, Ok(seq)));
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "node journal failed; every partition of the node stops");
                    let message = error.to_string();
                    let mut queue = self.shared.queue.lock().expect("journal lock");
                    queue.stop = true;
                    let waiting = std::mem::take(&mut queue.pending);
                    drop(queue);
                    for pending in batch.into_iter().chain(waiting) {
                        let error = io::Error::new(error.kind(), message.clone());
                        let _ = pending.done.send((pending.bytes, Err(error)));
                    }
                    return;
                }
            }
        }
    }

    /// Writes one round holding `batch` and syncs it; returns the seq of its file.
    fn write_round(&mut self, batch: &[Pending]) -> io::Result<u64> {
        self.buffer.clear();
        encode_round(
            self.next_round,
            batch
                .iter()
                .map(|p| (p.partition, p.first_lsn, &p.bytes[..])),
            &mut self.buffer,
        );
        if self.file.len > 0
            && self.file.len + self.buffer.len() as u64 > self.config.file_bytes_max
        {
            self.rotate()?;
        }
        let end = self.file.len + self.buffer.len() as u64;
        self.file.file.write_all_at(&self.buffer, self.file.len)?;
        if end > self.file.allocated {
            self.file.allocated = end;
            self.file
                .extend_zeroed(end + self.config.preallocate_bytes)?;
        }
        self.file.file.sync_data()?;
        self.file.len = end;
        self.next_round += 1;
        self.in_file.extend(batch.iter().map(|p| p.partition));
        let stats = &self.shared.stats;
        stats.rounds.fetch_add(1, Ordering::Relaxed);
        stats
            .frames
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats
            .bytes
            .fetch_add(self.buffer.len() as u64, Ordering::Relaxed);
        Ok(self.file.seq)
    }

    /// Closes the open file and starts the next. Its partitions are asked to checkpoint.
    fn rotate(&mut self) -> io::Result<()> {
        let closed_seq = self.file.seq;
        let next = OpenFile::create(&self.shared.dir, closed_seq + 1, self.config)?;
        let partitions = std::mem::take(&mut self.in_file);
        for &p in &partitions {
            self.shared.checkpoints[p as usize]
                .needed_through
                .fetch_max(closed_seq, Ordering::AcqRel);
        }
        self.shared
            .closed
            .lock()
            .expect("journal lock")
            .insert(closed_seq, partitions);
        self.file = next;
        self.shared.delete_checkpointed();
        Ok(())
    }
}
