//! `SimDisk`: a partition's disk that forgets what was not synced when its node dies.
//!
//! madsim's own file system cannot lose unsynced writes (`sync_all` is a no-op and a kill loses
//! nothing), so the simulator models the disk itself. The harness keeps every [`Disk`] outside
//! the nodes, so it survives `kill`; on a kill it calls [`Disk::crash`], which keeps the synced
//! bytes and, sometimes, a random prefix of the unsynced ones: a torn last record that recovery
//! must cut off. A [`SimStorage`] is the node's handle to its disk; a handle from a killed
//! incarnation is fenced off by an epoch, so a stale task can never write after the crash.
//!
//! A disk can also be told to fail ([`Disk::fail`]). Its next `sync` fails as Linux's does
//! after a write-back error: the pages it could not write are dropped, the error is reported
//! once, and a later `sync` succeeds without them. So the bytes that sync covered never reach
//! the disk, whatever follows; a crash cuts the log where they began. Until the disk is
//! repaired, every snapshot written to it fails, leaving nothing behind; that alone (a disk
//! too full for snapshots, with room for the log's appends) is the other kind of failure.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use walletd_core::log::codec::RecordReader;
use walletd_core::log::snapshot::InMemory;
use walletd_core::model::event::Lsn;
use walletd_runtime::storage::{EncodeSnapshot, LogSegment, Storage, StoredSnapshot};

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
    /// The next `sync` fails.
    pub fail_next_sync: bool,
    /// Snapshot writes fail (until repaired).
    pub fail_snapshots: bool,
    pub failed_snapshots: u64,
    /// Where the bytes of a failed `sync` begin: none from there on survive a crash.
    pub lost_from: Option<usize>,
    pub failed_syncs: u64,
    /// How far [`DiskState::durable_lsn`] has read whole records into the durable bytes, and
    /// the lsn of the last one: it reads each record once, not the whole log each time.
    walked_len: usize,
    walked_lsn: Lsn,
}

impl DiskState {
    /// Ends every disk fault: what a crash or a fresh copy starts from.
    fn clear_faults(&mut self) {
        self.lost_from = None;
        self.fail_next_sync = false;
        self.fail_snapshots = false;
    }

    /// How much of the log a crash now would keep (before any torn tail).
    fn durable_len(&self) -> usize {
        self.lost_from
            .map_or(self.synced_len, |lost| lost.min(self.synced_len))
    }

    /// The lsn of the last whole record in the bytes a crash now would keep (0: none): what
    /// anything released may depend on at most.
    fn durable_lsn(&mut self) -> Lsn {
        let durable = self.durable_len();
        if self.walked_len == 0 || self.walked_len > durable {
            // A fresh log, or the durable bytes shrank (a failed sync): read from the start.
            self.walked_len = 0;
            self.walked_lsn = self.first_lsn.saturating_sub(1);
        }
        let mut reader =
            RecordReader::new(&self.log[self.walked_len..durable], self.walked_lsn + 1);
        while let Ok(Some(record)) = reader.next_record() {
            self.walked_lsn = record.lsn;
        }
        self.walked_len += reader.valid_len();
        self.walked_lsn
    }
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
        let durable = state.durable_len();
        let unsynced = state.log.len() - durable;
        // Pages dropped by a failed sync are gone: no torn tail is kept after them.
        let kept = if torn && unsynced > 0 && state.lost_from.is_none() && rng.gen_bool(0.5) {
            rng.gen_range(1..=unsynced)
        } else {
            0
        };
        let len = durable + kept;
        state.log.truncate(len);
        state.synced_len = len;
        state.clear_faults();
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

    /// Bytes that a crash now would lose (or tear): not synced, or dropped by a failed sync.
    pub fn unsynced(&self) -> usize {
        let state = self.lock();
        state.log.len() - state.durable_len()
    }

    /// The lsn of the last record a crash now would keep (0: none).
    pub fn durable_lsn(&self) -> Lsn {
        self.lock().durable_lsn()
    }

    /// What a crash now would leave: the first lsn and the durable bytes of the log.
    pub fn durable_log(&self) -> (Lsn, Vec<u8>) {
        let state = self.lock();
        (state.first_lsn, state.log[..state.durable_len()].to_vec())
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
        state.lost_from.is_some()
    }

    /// An independent copy holding only the durable bytes (for recovery checks).
    pub fn durable_copy(&self) -> Disk {
        let state = self.lock();
        let mut copy = state.clone();
        copy.log.truncate(copy.durable_len());
        copy.clear_faults();
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
        if std::mem::take(&mut state.fail_next_sync) {
            let lost = state.synced_len;
            state.lost_from = Some(state.lost_from.map_or(lost, |from| from.min(lost)));
            state.failed_syncs += 1;
            return Err(io::Error::other("simulated EIO: sync failed"));
        }
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
            if state.fail_snapshots {
                state.failed_snapshots += 1;
                return Err(io::Error::other("simulated EIO: snapshot not written"));
            }
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

#[cfg(all(test, madsim))]
mod tests {
    use super::*;
    use crate::rng::Purpose;

    /// Runs `body` on a madsim runtime (a `sync` sleeps for its latency).
    fn simulated(body: impl Future<Output = ()> + 'static) {
        madsim::runtime::Runtime::with_seed_and_config(1, madsim::Config::default()).block_on(body);
    }

    fn disk() -> Disk {
        Disk::new(Arc::default(), SharedRng::new(1, Purpose::Disk))
    }

    #[test]
    fn a_failed_sync_loses_its_bytes_even_when_a_later_sync_succeeds() {
        simulated(async {
            let disk = disk();
            let mut storage = disk.open();
            storage.append(1, b"first").await.unwrap();
            storage.sync().await.unwrap();
            storage.append(2, b"second").await.unwrap();
            disk.fail(true);
            assert!(storage.sync().await.is_err());
            assert_eq!(disk.unsynced(), b"second".len());
            // The error is reported once: the retry succeeds, and the bytes are still gone.
            storage.append(3, b"third").await.unwrap();
            storage.sync().await.unwrap();
            assert_eq!(disk.durable_log(), (1, b"first".to_vec()));
            assert!(
                disk.repair(),
                "the failed sync is remembered until the crash"
            );
            let report = disk.crash(true);
            assert_eq!(
                report.torn_bytes_kept, 0,
                "dropped pages leave no torn tail"
            );
            assert_eq!(report.lost_bytes, b"secondthird".len());
            assert_eq!(disk.lock().log, b"first");
            assert!(!disk.repair(), "a crash ends the fault");
            let mut storage = disk.open();
            storage.append(2, b"again").await.unwrap();
            storage.sync().await.unwrap();
            assert_eq!(disk.durable_log(), (1, b"firstagain".to_vec()));
        });
    }

    /// The encoded records `lsns` (deposits of one unit).
    fn records(lsns: std::ops::RangeInclusive<Lsn>) -> Vec<u8> {
        use walletd_core::log::codec::{encode_record, Record};
        use walletd_core::model::event::Event;
        let mut bytes = Vec::new();
        for lsn in lsns {
            let event = Event::Deposited {
                account: walletd_core::model::ids::AccountId::new("a").unwrap(),
                amount: walletd_core::model::money::Amount::from_minor(1).unwrap(),
                transaction_id: walletd_core::model::ids::TransactionId::new("t").unwrap(),
            };
            encode_record(
                &Record {
                    lsn,
                    timestamp: lsn,
                    event,
                },
                &mut bytes,
            );
        }
        bytes
    }

    #[test]
    fn the_durable_lsn_follows_syncs_crashes_and_failed_syncs() {
        simulated(async {
            let disk = disk();
            let mut storage = disk.open();
            assert_eq!(disk.durable_lsn(), 0);
            storage.append(1, &records(1..=3)).await.unwrap();
            assert_eq!(disk.durable_lsn(), 0, "appended is not durable");
            storage.sync().await.unwrap();
            assert_eq!(disk.durable_lsn(), 3);
            storage.append(4, &records(4..=5)).await.unwrap();
            disk.fail(true);
            assert!(storage.sync().await.is_err());
            storage.append(6, &records(6..=6)).await.unwrap();
            storage.sync().await.unwrap();
            assert_eq!(
                disk.durable_lsn(),
                3,
                "a failed sync's records never become durable"
            );
            disk.crash(false);
            assert_eq!(disk.durable_lsn(), 3);
            let mut storage = disk.open();
            storage.append(4, &records(4..=4)).await.unwrap();
            storage.sync().await.unwrap();
            assert_eq!(disk.durable_lsn(), 4);
        });
    }

    #[test]
    fn a_repaired_disk_syncs_normally() {
        simulated(async {
            let disk = disk();
            let mut storage = disk.open();
            disk.fail(true);
            assert!(!disk.repair(), "no sync failed before the repair");
            storage.append(1, b"bytes").await.unwrap();
            storage.sync().await.unwrap();
            assert_eq!(disk.durable_log(), (1, b"bytes".to_vec()));
        });
    }
}
