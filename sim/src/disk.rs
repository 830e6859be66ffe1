//! `SimDisk`: a partition's disk as a real kernel and a real disk keep it.
//!
//! madsim's own file system cannot lose unsynced writes (`sync_all` is a no-op and a kill loses
//! nothing), so the simulator models the disk itself: a directory of log segment files
//! ([`files`]), each with a page cache and a medium, written by the same segment writer that
//! file storage runs in production (`walletd_runtime::storage::segments`), on a
//! [`SegmentDir`] that is this disk. The harness keeps every [`Disk`] outside the nodes, so
//! it survives `kill`, and crashes it one of two ways ([`Crash`]):
//! - a **process crash** keeps every write that reached the kernel, synced or not: the page
//!   cache outlives the process, and the restarted partition reads it back;
//! - a **power loss** keeps every synced byte and an arbitrary subset of the sectors written
//!   since (a torn or stale range that recovery must cut), and loses directory entries and
//!   size changes not yet synced. A power loss may follow a process crash and restart before
//!   anything new was synced: then it takes what the crashed process left unsynced too.
//!
//! A [`SimStorage`] is the node's handle to its disk; a handle from a crashed incarnation is
//! fenced off by an epoch, so a stale task can never write after the crash.
//!
//! A disk can also be told to fail ([`Disk::fail`]). Its next `fdatasync` fails as Linux's
//! does after a write-back error: the sectors it could not write are dropped (and, in this
//! model, evicted, see [`files`]), the error is reported once, and a later sync succeeds
//! without them. Until the disk is repaired, every snapshot written to it fails, leaving
//! nothing behind; that alone (a disk too full for snapshots, with room for the log's
//! appends) is the other kind of failure.
//!
//! The medium can also be damaged in data a completed sync wrote ([`Disk::damage_synced`]:
//! bit flips, or a sector that cannot be read), in a segment that recovery reads; the damage
//! stays, across crashes, until the file is restored from a copy ([`Disk::restore_medium`]).
//! See [`damage`].
//!
//! Snapshots and their chunk files are modelled as today's file storage leaves them: each
//! appears atomically and durably when its write completes (it is synced and renamed into
//! place), and that write syncs the directory, which makes every pending segment entry
//! durable too.

mod damage;
mod files;

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use walletd_core::ledger::cold::ChunkRead;
use walletd_core::log::codec::RecordReader;
use walletd_core::log::snapshot::InMemory;
use walletd_core::model::event::Lsn;
use walletd_runtime::storage::segments::{segment_lsn, SegmentConfig, SegmentDir, SegmentWriter};
use walletd_runtime::storage::{
    read_chunk_range, EncodeSnapshot, SegmentRef, SnapshotRef, Storage,
};

pub use damage::{Damage, DamageKind};
pub use files::{SimDir, SimFile, SECTOR_BYTES};

use crate::rng::SharedRng;

/// Normal `sync` latency bounds (madsim sleeps at least 1 ms anyway).
const SYNC_US_MIN: u64 = 1_000;
const SYNC_US_MAX: u64 = 2_000;
/// Snapshots a disk keeps (older ones are deleted, as a real deployment would).
const SNAPSHOTS_KEPT: usize = 2;
/// Segments of the simulated log: small, so that a run rolls over many times; preallocation
/// in steps of a few sectors, so that power losses leave holes inside the synced size.
pub const SEGMENTS: SegmentConfig = SegmentConfig {
    segment_bytes_max: 16 << 10,
    preallocate_bytes: 4 << 10,
    preallocate_write_bytes_max: 1 << 10,
};

/// How a node goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// The process dies; the kernel, its page cache and the disk go on.
    Process,
    /// The machine loses power: only what the medium holds survives.
    PowerLoss,
}

/// The bytes of one partition's disk.
#[derive(Debug, Default, Clone)]
pub struct DiskState {
    /// The partition's directory of log segments.
    pub dir: SimDir,
    /// Snapshots, oldest first; each is written atomically and durably.
    pub snapshots: Vec<(Lsn, Vec<u8>)>,
    /// Chunk files of the snapshots, by index; durable with the snapshot that wrote them.
    pub chunks: std::collections::BTreeMap<u64, Vec<u8>>,
    /// Bumped by every crash: handles of older incarnations are refused.
    pub epoch: u64,
    /// Bytes appended since the last completed sync: a batch in flight.
    pub appending: usize,
    pub syncs: u64,
    pub crashes: u64,
    pub power_losses: u64,
    /// Power losses that kept some unsynced sector (a torn or stale range for recovery).
    pub torn_crashes: u64,
    /// The next `fdatasync` fails.
    pub fail_next_sync: bool,
    /// Snapshot writes fail (until repaired).
    pub fail_snapshots: bool,
    pub failed_snapshots: u64,
    /// A sync failed since the last crash: the node must restart to go on.
    pub sync_failed: bool,
    pub failed_syncs: u64,
    /// The storage fault in force: damage to synced data injected and not yet restored.
    /// Kept apart from the medium, which a silent cut at the damage would rewrite.
    pub damage: Option<Damage>,
    /// How far [`Disk::durable_lsn`] has read the newest durable segment.
    walk: DurableWalk,
}

/// A position in the medium's copy of the newest durable segment: each record is read once.
#[derive(Debug, Default, Clone)]
struct DurableWalk {
    segment: String,
    /// A frame boundary: where the codec stopped (the end of the frames, or the damage a
    /// recovery would cut, which is where the medium changes next).
    len: usize,
    lsn: Lsn,
}

impl DiskState {
    /// The lsn of the last whole record on the medium (0: none), read on from where the last
    /// call stopped. Below that point the medium only changes when the newest segment does,
    /// or shrinks: a recovery cuts at the damage, where reading stopped.
    fn durable_lsn(&mut self) -> Lsn {
        let dir = &self.dir;
        let newest = dir
            .files
            .iter()
            .rev()
            .find(|(name, _)| dir.durable_names.contains(*name));
        let Some((name, file)) = newest else {
            return 0;
        };
        let walk = &mut self.walk;
        if walk.segment != *name || walk.len > file.durable.len() {
            let first_lsn = segment_lsn(name).expect("segment files are named by lsn");
            *walk = DurableWalk {
                segment: name.clone(),
                len: 0,
                lsn: first_lsn.saturating_sub(1),
            };
        }
        let mut reader = RecordReader::resume(&file.durable, walk.len, walk.lsn + 1);
        while let Ok(Some(record)) = reader.next_record() {
            walk.lsn = record.lsn;
        }
        walk.len = reader.valid_len();
        walk.lsn
    }

    /// Ends every disk fault: what a crash or a fresh copy starts from.
    fn clear_faults(&mut self) {
        self.sync_failed = false;
        self.fail_next_sync = false;
        self.fail_snapshots = false;
    }
}

/// What one crash did to a disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Unsynced bytes that did not survive (a power loss only).
    pub lost_bytes: usize,
    /// Unsynced bytes that did: a torn or stale range after a power loss.
    pub torn_bytes_kept: usize,
    /// Persists a replica's Raft store appended and a power loss took (replicated runs).
    pub lost_raft_persists: usize,
}

/// Slowness of the disks of one node, switched by the nemesis.
#[derive(Debug, Default)]
pub struct DiskSpeed {
    /// Largest extra `sync` latency in microseconds (0: normal disk).
    pub slow_us_max: AtomicU64,
}

/// One partition's disk, held by the harness. Clones share the disk.
#[derive(Debug, Clone)]
pub struct Disk {
    state: Arc<Mutex<DiskState>>,
    speed: Arc<DiskSpeed>,
    rng: SharedRng,
}

impl Disk {
    pub fn new(speed: Arc<DiskSpeed>, rng: SharedRng) -> Disk {
        Disk {
            state: Arc::default(),
            speed,
            rng,
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A storage handle for a new incarnation of the partition.
    pub fn open(&self) -> SimStorage {
        let epoch = self.lock().epoch;
        let dir = Handle {
            disk: self.clone(),
            epoch,
        };
        SimStorage {
            log: SegmentWriter::new(dir.clone(), SEGMENTS),
            handle: dir,
        }
    }

    /// The node went down as `crash` says. With a power loss, `torn` lets unsynced sectors
    /// survive (each with even odds); without it none does. Fences off every handle opened
    /// before.
    pub fn crash(&self, crash: Crash, torn: bool) -> CrashReport {
        let mut rng = self.rng.lock();
        let mut state = self.lock();
        let mut report = CrashReport::default();
        if crash == Crash::PowerLoss {
            let loss = state.dir.power_loss(|| torn && rng.gen_bool(0.5));
            report.lost_bytes = loss.lost;
            report.torn_bytes_kept = loss.kept;
            state.power_losses += 1;
            state.torn_crashes += u64::from(loss.kept > 0);
        }
        state.clear_faults();
        state.appending = 0;
        state.epoch += 1;
        state.crashes += 1;
        report
    }

    /// The disk is lost (its node is down): no segment, no snapshot, no fault, as a new
    /// disk. Fences off every handle opened before.
    pub fn wipe(&self) {
        let mut state = self.lock();
        let wiped = DiskState {
            epoch: state.epoch + 1,
            syncs: state.syncs,
            crashes: state.crashes,
            power_losses: state.power_losses,
            torn_crashes: state.torn_crashes,
            failed_snapshots: state.failed_snapshots,
            failed_syncs: state.failed_syncs,
            ..DiskState::default()
        };
        *state = wiped;
    }

    /// Bytes of a batch being written whose sync has not completed: what a power loss now
    /// would lose (or tear).
    pub fn unsynced(&self) -> usize {
        self.lock().appending
    }

    /// The lsn of the last record a power loss now would keep at best (0: none): what
    /// anything released may rest on at most.
    pub fn durable_lsn(&self) -> Lsn {
        self.lock().durable_lsn()
    }

    /// What a power loss now would leave at best (no unsynced sector kept): the first lsn
    /// and the durable bytes of every surviving segment, in order, end to end.
    pub fn durable_log(&self) -> (Lsn, Vec<u8>) {
        let state = self.lock();
        let durable = state.dir.durable_copy();
        let first_lsn = durable
            .files
            .keys()
            .find_map(|name| segment_lsn(name))
            .unwrap_or(0);
        let bytes = durable
            .files
            .values()
            .flat_map(|file| file.data.iter().copied())
            .collect();
        (first_lsn, bytes)
    }

    /// The disk starts failing: snapshot writes fail until [`Disk::repair`] (a disk too full
    /// for them), and with `sync` its next sync fails too, dropping the bytes it covers.
    pub fn fail(&self, sync: bool) {
        let mut state = self.lock();
        state.fail_next_sync |= sync;
        state.fail_snapshots = true;
    }

    /// Ends a disk fault: whether a sync failed since the last crash (if so, the node must be
    /// restarted to read what the disk really kept).
    pub fn repair(&self) -> bool {
        let mut state = self.lock();
        state.fail_next_sync = false;
        state.fail_snapshots = false;
        state.sync_failed
    }

    /// An independent copy holding only the durable bytes (for recovery checks).
    pub fn durable_copy(&self) -> Disk {
        let state = self.lock();
        let mut copy = state.clone();
        copy.dir = state.dir.durable_copy();
        copy.clear_faults();
        Disk {
            state: Arc::new(Mutex::new(copy)),
            speed: Arc::default(),
            rng: self.rng.clone(),
        }
    }

    fn sync_delay(&self) -> Duration {
        sync_delay(&self.speed, &self.rng)
    }
}

/// How long one sync on a disk of `speed` takes, drawn from `rng` (a Raft store's too).
pub fn sync_delay(speed: &DiskSpeed, rng: &SharedRng) -> Duration {
    let slow_us_max = speed.slow_us_max.load(Ordering::Relaxed);
    let mut rng = rng.lock();
    let us = rng.gen_range(SYNC_US_MIN..=SYNC_US_MAX)
        + if slow_us_max > 0 {
            rng.gen_range(0..=slow_us_max)
        } else {
            0
        };
    Duration::from_micros(us)
}

/// One incarnation's access to its disk: the directory the segment writer works on.
#[derive(Debug, Clone)]
pub struct Handle {
    disk: Disk,
    epoch: u64,
}

impl Handle {
    /// Locks the disk, refusing a handle from an incarnation that has since crashed.
    fn live(&self) -> io::Result<MutexGuard<'_, DiskState>> {
        let state = self.disk.lock();
        if state.epoch != self.epoch {
            return Err(io::Error::other("disk handle of a crashed incarnation"));
        }
        Ok(state)
    }

    /// Runs `work` on the file `name` of a live disk.
    fn on_file<T>(&self, name: &str, work: impl FnOnce(&mut SimFile) -> T) -> io::Result<T> {
        let mut state = self.live()?;
        let file = state
            .dir
            .files
            .get_mut(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))?;
        Ok(work(file))
    }
}

/// Chunk files are read at once, with no simulated latency: they are durable and never change,
/// so a read has nothing to race with. A crashed incarnation's reads fail, as its writes do.
impl ChunkRead for Handle {
    fn read_at(&self, chunk: u64, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        read_chunk_range(&self.live()?.chunks, chunk, offset, len)
    }

    fn len(&self, chunk: u64) -> io::Result<u64> {
        let state = self.live()?;
        let bytes = state.chunks.get(&chunk).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no chunk file {chunk}"))
        })?;
        Ok(bytes.len() as u64)
    }
}

impl SegmentDir for Handle {
    /// Files are named; the name is the handle.
    type File = String;

    fn list(&mut self) -> io::Result<Vec<(Lsn, String)>> {
        let state = self.live()?;
        Ok(state
            .dir
            .files
            .keys()
            .filter_map(|name| Some((segment_lsn(name)?, name.clone())))
            .collect())
    }

    fn create(&mut self, name: &str) -> io::Result<String> {
        let mut state = self.live()?;
        if state.dir.files.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                name.to_string(),
            ));
        }
        state.dir.files.insert(name.to_string(), SimFile::default());
        Ok(name.to_string())
    }

    fn open(&mut self, name: &str) -> io::Result<(String, u64)> {
        let len = self.on_file(name, |file| file.data.len() as u64)?;
        Ok((name.to_string(), len))
    }

    fn read_at(&mut self, name: &String, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.on_file(name, |file| file.read_at(offset as usize, len))?
    }

    fn write_at(&mut self, name: &String, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.on_file(name, |file| file.write_at(offset as usize, bytes))
    }

    fn extend_zeroed(&mut self, name: &String, _from: u64, to: u64) -> io::Result<()> {
        self.on_file(name, |file| file.set_len(to as usize))
    }

    fn set_len(&mut self, name: &String, len: u64) -> io::Result<()> {
        self.on_file(name, |file| file.set_len(len as usize))
    }

    fn sync_data(&mut self, name: &String) -> io::Result<()> {
        let mut state = self.live()?;
        let fail = std::mem::take(&mut state.fail_next_sync);
        let file = state
            .dir
            .files
            .get_mut(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.clone()))?;
        if fail {
            file.drop_unsynced();
            state.sync_failed = true;
            state.failed_syncs += 1;
            return Err(io::Error::other("simulated EIO: sync failed"));
        }
        file.sync();
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        self.live()?.dir.sync();
        Ok(())
    }
}

/// The [`Storage`] a partition driver gets: its incarnation's handle to a [`Disk`], written
/// through the production segment writer.
pub struct SimStorage {
    log: SegmentWriter<Handle>,
    handle: Handle,
}

impl Storage for SimStorage {
    async fn list_log(&mut self, from_lsn: Lsn) -> io::Result<Vec<SegmentRef>> {
        let segments = self.log.recovery_segments(from_lsn)?;
        Ok(segments
            .into_iter()
            .map(|(first_lsn, name)| SegmentRef { first_lsn, name })
            .collect())
    }

    async fn log_segments(&mut self) -> io::Result<Vec<SegmentRef>> {
        let segments = self.log.list_segments()?;
        Ok((segments.into_iter())
            .map(|(first_lsn, name)| SegmentRef { first_lsn, name })
            .collect())
    }

    async fn read_segment(&mut self, segment: &SegmentRef) -> io::Result<Vec<u8>> {
        self.log.read(&segment.name)
    }

    async fn truncate_last(&mut self, len: u64) -> io::Result<()> {
        self.log.truncate_last(len)
    }

    async fn append(&mut self, first_lsn: Lsn, bytes: &[u8]) -> io::Result<()> {
        self.log.append(first_lsn, bytes)?;
        self.handle.live()?.appending += bytes.len();
        Ok(())
    }

    async fn sync(&mut self) -> io::Result<()> {
        drop(self.handle.live()?);
        // The window in which a crash finds the batch written but not synced.
        tokio::time::sleep(self.handle.disk.sync_delay()).await;
        let result = self.log.sync();
        let mut state = self.handle.live()?;
        state.appending = 0;
        if result.is_ok() {
            state.syncs += 1;
        }
        result
    }

    fn write_snapshot(
        &mut self,
        lsn: Lsn,
        encode: EncodeSnapshot,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'static {
        // Taking a sync's time lets log appends and syncs (and crashes) happen meanwhile;
        // the snapshot then appears at once, as a rename makes it appear on a real disk.
        let handle = self.handle.clone();
        async move {
            // Encoded here, as file storage encodes on its writing thread: the driver's
            // state may move on meanwhile, which is what the image must withstand.
            let mut out = InMemory::default();
            let len = encode(&mut out)?;
            tokio::time::sleep(handle.disk.sync_delay()).await;
            let mut state = handle.live()?;
            if state.fail_snapshots {
                state.failed_snapshots += 1;
                return Err(io::Error::other("simulated EIO: snapshot not written"));
            }
            state.chunks.extend(out.chunks);
            state.snapshots.push((lsn, out.bytes));
            if state.snapshots.len() > SNAPSHOTS_KEPT {
                state.snapshots.remove(0);
            }
            // File storage syncs the directory around the rename: every entry in it is
            // durable from here on, new log segments included.
            state.dir.sync();
            Ok(len)
        }
    }

    async fn read_chunk(&mut self, index: u64) -> io::Result<Vec<u8>> {
        let state = self.handle.live()?;
        state.chunks.get(&index).cloned().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no chunk file {index}"))
        })
    }

    fn chunk_reader(&self) -> Arc<dyn ChunkRead> {
        Arc::new(self.handle.clone())
    }

    async fn list_snapshots(&mut self) -> io::Result<Vec<SnapshotRef>> {
        let state = self.handle.live()?;
        Ok(state
            .snapshots
            .iter()
            .rev()
            .map(|(lsn, _)| SnapshotRef {
                lsn: *lsn,
                name: format!("simdisk-snapshot-{lsn}"),
            })
            .collect())
    }

    async fn read_snapshot(&mut self, snapshot: &SnapshotRef) -> io::Result<Vec<u8>> {
        let state = self.handle.live()?;
        state
            .snapshots
            .iter()
            .find(|(lsn, _)| *lsn == snapshot.lsn)
            .map(|(_, bytes)| bytes.clone())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, snapshot.name.clone()))
    }
}

#[cfg(all(test, madsim))]
mod tests;
