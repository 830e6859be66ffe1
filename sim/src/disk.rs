//! `SimDisk`: a partition's disk that forgets what was not synced when its node dies.
//!
//! madsim's own file system cannot lose unsynced writes (`sync_all` is a no-op and a kill loses
//! nothing), so the simulator models the disk itself. The harness keeps every [`Disk`] outside
//! the nodes, so it survives `kill`; on a kill it calls [`Disk::crash`], which keeps the synced
//! bytes and, sometimes, a random prefix of the unsynced ones: a torn last record that recovery
//! must cut off. A [`SimStorage`] is the node's handle to its disk; a handle from a killed
//! incarnation is fenced off by an epoch, so a stale task can never write after the crash.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use walletd_core::event::Lsn;
use walletd_core::snapshot::InMemory;
use walletd_core::storage::{EncodeSnapshot, LogSegment, Storage, StoredSnapshot};

use crate::rng::SharedRng;

/// Normal `sync` latency bounds (madsim sleeps at least 1 ms anyway).
const SYNC_US_MIN: u64 = 1_000;
const SYNC_US_MAX: u64 = 2_000;
/// Snapshots a disk keeps (older ones are deleted, as a real deployment would).
const SNAPSHOTS_KEPT: usize = 2;

/// The bytes of one partition's disk.
#[derive(Debug, Default, Clone)]
pub struct DiskState {
    /// The lsn of the first record of `log` (0 while the log is empty).
    pub first_lsn: Lsn,
    /// Every byte appended, synced or not.
    pub log: Vec<u8>,
    /// The prefix of `log` that survives a crash.
    pub synced_len: usize,
    /// Snapshots, oldest first; each is written atomically and durably.
    pub snapshots: Vec<(Lsn, Vec<u8>)>,
    /// Chunk files of the snapshots, by index; durable with the snapshot that wrote them.
    pub chunks: std::collections::BTreeMap<u64, Vec<u8>>,
    /// Bumped by every crash: handles of older incarnations are refused.
    pub epoch: u64,
    pub syncs: u64,
    pub crashes: u64,
    /// Crashes that left a partial record behind.
    pub torn_crashes: u64,
}

/// What one crash did to a disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashReport {
    pub lost_bytes: usize,
    pub torn_bytes_kept: usize,
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
        SimStorage {
            epoch: self.lock().epoch,
            disk: self.clone(),
        }
    }

    /// The node died: keep the synced bytes and, if `torn` allows and the coin says so, a
    /// random prefix of the unsynced ones. Fences off every handle opened before.
    pub fn crash(&self, torn: bool) -> CrashReport {
        let mut rng = self.rng.lock();
        let mut state = self.lock();
        let unsynced = state.log.len() - state.synced_len;
        let kept = if torn && unsynced > 0 && rng.gen_bool(0.5) {
            rng.gen_range(1..=unsynced)
        } else {
            0
        };
        let len = state.synced_len + kept;
        state.log.truncate(len);
        state.synced_len = len;
        if state.log.is_empty() {
            state.first_lsn = 0;
        }
        state.epoch += 1;
        state.crashes += 1;
        if kept > 0 {
            state.torn_crashes += 1;
        }
        CrashReport {
            lost_bytes: unsynced - kept,
            torn_bytes_kept: kept,
        }
    }

    /// Bytes written and not yet synced: a crash now would lose (or tear) them.
    pub fn unsynced(&self) -> usize {
        let state = self.lock();
        state.log.len() - state.synced_len
    }

    /// What a crash now would leave: the first lsn and the synced bytes of the log.
    pub fn durable_log(&self) -> (Lsn, Vec<u8>) {
        let state = self.lock();
        (state.first_lsn, state.log[..state.synced_len].to_vec())
    }

    /// An independent copy holding only the durable bytes (for recovery checks).
    pub fn durable_copy(&self) -> Disk {
        let state = self.lock();
        let mut copy = state.clone();
        copy.log.truncate(copy.synced_len);
        Disk {
            state: Arc::new(Mutex::new(copy)),
            speed: Arc::default(),
            rng: self.rng.clone(),
        }
    }

    fn sync_delay(&self) -> Duration {
        let slow_us_max = self.speed.slow_us_max.load(Ordering::Relaxed);
        let mut rng = self.rng.lock();
        let us = rng.gen_range(SYNC_US_MIN..=SYNC_US_MAX)
            + if slow_us_max > 0 {
                rng.gen_range(0..=slow_us_max)
            } else {
                0
            };
        Duration::from_micros(us)
    }
}

/// The [`Storage`] a partition driver gets: its incarnation's handle to a [`Disk`].
#[derive(Debug)]
pub struct SimStorage {
    disk: Disk,
    epoch: u64,
}

impl SimStorage {
    /// Locks the disk, refusing a handle from an incarnation that has since crashed.
    fn live(&self) -> io::Result<MutexGuard<'_, DiskState>> {
        let state = self.disk.lock();
        if state.epoch != self.epoch {
            return Err(io::Error::other("disk handle of a crashed incarnation"));
        }
        Ok(state)
    }
}

impl Storage for SimStorage {
    async fn read_log(&mut self, _from_lsn: Lsn) -> io::Result<Vec<LogSegment>> {
        let state = self.live()?;
        if state.log.is_empty() {
            return Ok(Vec::new());
        }
        Ok(vec![LogSegment {
            first_lsn: state.first_lsn,
            name: format!("simdisk-{}", state.first_lsn),
            bytes: state.log.clone(),
        }])
    }

    async fn truncate_last(&mut self, len: u64) -> io::Result<()> {
        let mut state = self.live()?;
        let len = len as usize;
        assert!(len <= state.log.len(), "truncate_last grows the log");
        state.log.truncate(len);
        state.synced_len = len;
        if state.log.is_empty() {
            state.first_lsn = 0;
        }
        Ok(())
    }

    async fn append(&mut self, first_lsn: Lsn, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.live()?;
        if state.log.is_empty() {
            state.first_lsn = first_lsn;
        }
        state.log.extend_from_slice(bytes);
        Ok(())
    }

    async fn sync(&mut self) -> io::Result<()> {
        let target = self.live()?.log.len();
        // The window in which a kill loses the batch (or tears it).
        tokio::time::sleep(self.disk.sync_delay()).await;
        let mut state = self.live()?;
        state.synced_len = state.synced_len.max(target);
        state.syncs += 1;
        Ok(())
    }

    fn write_snapshot(
        &mut self,
        lsn: Lsn,
        encode: EncodeSnapshot,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'static {
        // Taking a sync's time lets log appends and syncs (and crashes) happen meanwhile;
        // the snapshot then appears at once, as a rename makes it appear on a real disk.
        let handle = SimStorage {
            disk: self.disk.clone(),
            epoch: self.epoch,
        };
        async move {
            // Encoded here, as file storage encodes on its writing thread: the driver's
            // state may move on meanwhile, which is what the image must withstand.
            let mut out = InMemory::default();
            let len = encode(&mut out)?;
            tokio::time::sleep(handle.disk.sync_delay()).await;
            let mut state = handle.live()?;
            state.chunks.extend(out.chunks);
            state.snapshots.push((lsn, out.bytes));
            if state.snapshots.len() > SNAPSHOTS_KEPT {
                state.snapshots.remove(0);
            }
            Ok(len)
        }
    }

    async fn read_chunk(&mut self, index: u64) -> io::Result<Vec<u8>> {
        let state = self.live()?;
        state.chunks.get(&index).cloned().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no chunk file {index}"))
        })
    }

    async fn read_snapshots(&mut self) -> io::Result<Vec<StoredSnapshot>> {
        let state = self.live()?;
        Ok(state
            .snapshots
            .iter()
            .rev()
            .map(|(lsn, bytes)| StoredSnapshot {
                lsn: *lsn,
                name: format!("simdisk-snapshot-{lsn}"),
                bytes: bytes.clone(),
            })
            .collect())
    }
}
