//! Reading a partition's log from disk: the whole of it for `wallet replay` and `wallet
//! verify`, and through the per-account [`index`] for the API's history pages and `as_of`
//! balances ([`LogReader`]). The event feed (`crate::feed`) reads segments with the same
//! `records_of_segment`, the one place the rules of a live log's bytes are applied.
//!
//! The log may be read while its partition driver appends to it. A live server passes the
//! partition's durable lsn: the reader stops at that record and never looks at the bytes
//! after it, so it never reports a record whose batch has not been synced (and so might not
//! survive a crash), and never mistakes an append in progress for damage. Without a durable
//! lsn (`wallet replay` and `wallet verify` on a stopped node's directory), the newest
//! segment may end in a torn or stale range, which is left out as recovery would cut it.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use walletd_core::log::codec::{CodecError, Record, RecordReader, SYNC_MARK_LEN};
use walletd_core::log::replay::AsOf;
use walletd_core::model::event::{Event, Lsn, TransferKey};
use walletd_core::model::ids::AccountId;
use walletd_core::model::partition::PartitionId;
use walletd_core::model::transaction::Transaction;
use walletd_runtime::driver::DriverStats;

use crate::datadir::DataDir;

pub mod index;
#[cfg(test)]
pub(crate) mod test_logs;

use index::{IndexConfig, PartitionIndex};

/// Why a log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is corrupt at byte offset {offset}: {detail}")]
    Corrupt {
        path: String,
        offset: u64,
        detail: String,
    },
    #[error("partition {0}'s log is not on this node")]
    NotLocal(PartitionId),
}

/// Progress of a long read, reported once per segment.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub partition: PartitionId,
    pub segment: usize,
    pub segments: usize,
    pub bytes_read: u64,
    pub bytes_total: u64,
    pub records: usize,
}

/// A partition's records as read from disk.
#[derive(Debug, Default)]
pub struct PartitionLog {
    pub records: Vec<Record>,
    pub segments: usize,
    pub bytes: u64,
    /// Bytes at the end of the newest segment that do not form a whole record.
    pub torn_bytes: u64,
    /// The last record read (kept or not): the point of the log the records describe.
    pub last_lsn: Lsn,
    pub last_timestamp: u64,
    /// Whether reading stopped before the end of the log (at `upto_lsn` or `as_of`).
    pub stopped: bool,
}

/// Reads the records of `partition` oldest first, stopping before the first record past
/// `upto_lsn` (the durable lsn of a live partition) or not included by `as_of` (as
/// `walletd_core::log::replay` does: state is a prefix of the log). `keep` decides which records to hold in
/// memory (all of them for a replay; one account's for its history). Corruption anywhere but
/// at the tail of the newest segment is an error, as it is at recovery.
pub fn read_partition_log(
    dir: &DataDir,
    partition: PartitionId,
    upto_lsn: Option<Lsn>,
    as_of: AsOf,
    keep: &mut dyn FnMut(&Record) -> bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<PartitionLog, LogError> {
    let io = |path: &PathBuf| {
        let path = path.display().to_string();
        move |source| LogError::Io { path, source }
    };
    let partition_dir = dir.partition_dir(partition);
    let segments = dir.segments(partition).map_err(io(&partition_dir))?;
    let mut sizes = Vec::with_capacity(segments.len());
    for (_, path) in &segments {
        sizes.push(fs::metadata(path).map_err(io(path))?.len());
    }
    let mut log = PartitionLog {
        segments: segments.len(),
        ..PartitionLog::default()
    };
    let bytes_total = sizes.iter().sum();
    for (i, (first_lsn, path)) in segments.iter().enumerate() {
        if upto_lsn.is_some_and(|upto| *first_lsn > upto) {
            // Nothing in it is known durable yet (a segment just created by a live writer).
            log.stopped = true;
        }
        if log.stopped {
            break;
        }
        let newest = i + 1 == segments.len();
        log.bytes += read_segment(path, *first_lsn, newest, upto_lsn, as_of, keep, &mut log)?;
        progress(Progress {
            partition,
            segment: i + 1,
            segments: segments.len(),
            bytes_read: log.bytes,
            bytes_total,
            records: log.records.len(),
        });
    }
    Ok(log)
}

/// Reads the records of the segment at `path` into `log`, stopping after `upto_lsn` or
/// before the first record `as_of` excludes; returns the segment's length. Streamed, and left
/// at the durable lsn: the bytes after it may be an append in progress, which the codec must
/// never be asked to judge (half of a batch read before its write and half after can look
/// like damage that a sync mark vouches for).
fn read_segment(
    path: &Path,
    first_lsn: Lsn,
    newest: bool,
    upto_lsn: Option<Lsn>,
    as_of: AsOf,
    keep: &mut dyn FnMut(&Record) -> bool,
    log: &mut PartitionLog,
) -> Result<u64, LogError> {
    let bytes = fs::read(path).map_err(|source| LogError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let len = bytes.len() as u64;
    let mut reader = RecordReader::new(&bytes, first_lsn);
    let flow = records_of_segment(path, &mut reader, newest, |record, _| {
        if upto_lsn.is_some_and(|upto| record.lsn > upto) || !as_of.includes(&record) {
            log.stopped = true;
            return ControlFlow::Break(());
        }
        log.last_lsn = record.lsn;
        log.last_timestamp = record.timestamp;
        let last = upto_lsn == Some(record.lsn);
        if keep(&record) {
            log.records.push(record);
        }
        if last {
            log.stopped = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    if flow.is_continue() && reader.torn_tail() {
        log.torn_bytes = len - reader.valid_len() as u64;
    }
    Ok(len)
}

/// Hands each record `reader` decodes from the segment at `path` to `each`, with the byte
/// offset just after it, until `each` breaks or the segment ends. The rules every reader of a live log follows: a record
/// that does not decode is corruption, an error naming file and offset; a partial record at
/// the end is the tail of an append and allowed only in the `newest` segment.
pub(crate) fn records_of_segment(
    path: &Path,
    reader: &mut RecordReader<'_>,
    newest: bool,
    mut each: impl FnMut(Record, usize) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, LogError> {
    let corrupt = |offset: u64, detail: String| LogError::Corrupt {
        path: path.display().to_string(),
        offset,
        detail,
    };
    while let Some(record) = reader
        .next_record()
        .map_err(|e| corrupt(codec_offset(&e), e.to_string()))?
    {
        if each(record, reader.valid_len()).is_break() {
            return Ok(ControlFlow::Break(()));
        }
    }
    if reader.torn_tail() && !newest {
        let detail = "a segment that is not the newest ends in a partial record";
        return Err(corrupt(reader.valid_len() as u64, detail.into()));
    }
    Ok(ControlFlow::Continue(()))
}

/// The bytes of the file at `path` with those before `offset` left unread: they are zero in
/// the buffer, except the segment header at the start, which tells the reader which rules
/// its frames follow. The zeroed prefix costs no reading and, taken from the allocator as
/// zeroed pages, almost no memory; a reader resumed at `offset` never looks at it.
pub(crate) fn read_from(path: &Path, offset: usize) -> io::Result<Vec<u8>> {
    read_window(path, offset, usize::MAX).map(|(bytes, _)| bytes)
}

/// [`read_from`], but at most `window` bytes from `offset`; with whether they reach the end
/// of the file. A reader that follows a long segment a window at a time reads each byte
/// once, instead of everything after its position each time.
pub(crate) fn read_window(
    path: &Path,
    offset: usize,
    window: usize,
) -> io::Result<(Vec<u8>, bool)> {
    let mut file = File::open(path)?;
    let file_len = file.metadata()?.len() as usize;
    let len = file_len.min(offset.saturating_add(window));
    if offset == 0 && len == file_len {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        return Ok((bytes, true));
    }
    if offset > len {
        return Ok((Vec::new(), true));
    }
    let mut bytes = vec![0; len];
    // A segment header is a sync mark (see `walletd_core::log::codec`).
    let header = SYNC_MARK_LEN.min(offset);
    file.read_exact(&mut bytes[..header])?;
    file.seek(SeekFrom::Start(offset as u64))?;
    // The file may have grown since its length was read: what is past `len` is read next time.
    file.read_exact(&mut bytes[offset..])?;
    Ok((bytes, len == file_len))
}

pub(crate) fn codec_offset(error: &CodecError) -> u64 {
    match error {
        CodecError::Corrupt { offset, .. }
        | CodecError::UnsupportedVersion { offset, .. }
        | CodecError::LsnGap { offset, .. } => *offset,
    }
}

/// A filter that keeps exactly the records that change or describe `account`: its opening,
/// its deposits and withdrawals, transfers from or to it, the phases of both sides of its
/// cross-partition transfers, and the multi-leg transactions whose legs name it with their
/// phases. Destination phases name only the transfer key, so the filter remembers the keys
/// of the Tries that credit `account`; a transaction's later phases name only its key too,
/// so it remembers the transactions `account` tried until they are confirmed or cancelled.
/// Folding the kept records gives the same figures as folding them all
/// ([`walletd_core::log::replay::balance_as_of`] tracks one account the same way).
pub fn account_filter(account: AccountId) -> impl FnMut(&Record) -> bool {
    let mut credited: BTreeSet<TransferKey> = BTreeSet::new();
    let mut tried: BTreeSet<TransferKey> = BTreeSet::new();
    let names = move |tx: &Transaction| {
        tx.legs()
            .any(|leg| leg.from == account || leg.to == account)
    };
    move |record| match &record.event.effect() {
        Event::AccountOpened { account: a, .. }
        | Event::Deposited { account: a, .. }
        | Event::Withdrawn { account: a, .. } => *a == account,
        Event::Transferred { transfer }
        | Event::TransferRejected { transfer, .. }
        | Event::DebitTried { transfer }
        | Event::HoldPlaced { hold: transfer, .. }
        | Event::HoldCaptured { hold: transfer, .. }
        | Event::HoldReleased { hold: transfer, .. } => {
            transfer.from == account || transfer.to == account
        }
        Event::TransferDecided { key, .. }
        | Event::DebitConfirmed { key }
        | Event::DebitCancelled { key }
        | Event::HoldEstablished { key } => key.from == account,
        Event::CreditTried { transfer } => {
            let mine = transfer.to == account;
            if mine {
                credited.insert(transfer.key());
            }
            mine
        }
        Event::CreditConfirmed { key }
        | Event::CreditCancelled { key }
        | Event::CreditTryNotSeen { key }
        | Event::CreditCaptured { key, .. } => credited.contains(key),
        // A refusal moved no money: it is no movement of the account's.
        Event::CashRefused(_) => false,
        // Within one partition (nothing follows it), or refused at its home.
        Event::TransactionApplied { tx } | Event::TransactionRejected { tx, .. } => names(tx),
        Event::TransactionTried { tx } => {
            let mine = names(tx);
            if mine {
                tried.insert(tx.key());
            }
            mine
        }
        // The home's decision to cancel comes between the Try and its end. A participant's
        // refusal comes instead of a Try, so no account of its partition tried it.
        Event::TransactionCancelling { key, .. } | Event::TransactionRefused { key, .. } => {
            tried.contains(key)
        }
        // Nothing of the transaction follows its end on this partition.
        Event::TransactionConfirmed { key } | Event::TransactionCancelled { key } => {
            tried.remove(key)
        }
        Event::RefundAccepted { .. } | Event::RefundRejected { .. } => {
            unreachable!("a refund's effect is a transfer event")
        }
    }
}

/// Reads partition logs for the API of a running node, off the async threads, bounded in
/// how many reads run at once. History and `as_of` balances are answered from each local
/// partition's [`index::PartitionIndex`], brought up to the durable lsn first (a client that
/// has its answer finds its record); the event feed reads segments.
/// Where partitions' logs are on a node whose copies move while it runs (a replicated
/// node on etcd): asked at every read, in place of what the reader was told at start.
pub trait Residence: Send + Sync + 'static {
    /// The counters of `partition`'s replica, whose `last_lsn` is its durable lsn, when one
    /// runs here now.
    fn local(&self, partition: PartitionId) -> Option<Arc<DriverStats>>;
    /// Another node that keeps `partition`: its name for people and its HTTP address.
    fn elsewhere(&self, partition: PartitionId) -> Option<(String, String)>;
}

#[derive(Clone)]
pub struct LogReader {
    dir: Arc<DataDir>,
    /// `durable[p]` publishes the last synced lsn of partition `p` when it runs here.
    durable: Arc<[Option<Arc<DriverStats>>]>,
    /// The history index of each partition that runs here: opened by the first read or by
    /// [`LogReader::follow`], dropped after an error so the next read opens it afresh.
    indexes: Arc<[Mutex<Option<PartitionIndex>>]>,
    index_config: IndexConfig,
    /// For a partition whose log another node keeps: that node, named for people (empty
    /// for the partitions kept here, or when nobody said).
    homes: Arc<[String]>,
    /// For a partition whose log another node keeps: that node's HTTP address, where
    /// history and `as_of` reads are forwarded (none: they are refused).
    forward_to: Arc<[Option<String>]>,
    /// Where the logs are now, on a node whose copies move (then `durable`, `homes` and
    /// `forward_to` are unused).
    residence: Option<Arc<dyn Residence>>,
    scans: Arc<Semaphore>,
}

impl LogReader {
    /// Most reads of the log or of an index that run at once, each on a blocking thread;
    /// more wait their turn (under the request timeout).
    pub const SCANS_MAX: usize = 4;

    /// How long the follower of a partition's index lets records gather before indexing
    /// them: a chunk is built in batches, not record by record.
    pub const FOLLOW_PAUSE_MS: u64 = 50;

    pub fn new(dir: DataDir, durable: Vec<Option<Arc<DriverStats>>>) -> LogReader {
        assert_eq!(durable.len(), dir.partitions() as usize);
        let indexes = (0..durable.len()).map(|_| Mutex::new(None)).collect();
        LogReader {
            dir: Arc::new(dir),
            durable: durable.into(),
            indexes,
            index_config: IndexConfig::default(),
            homes: Arc::new([]),
            forward_to: Arc::new([]),
            residence: None,
            scans: Arc::new(Semaphore::new(Self::SCANS_MAX)),
        }
    }

    /// The same reader, with other limits for its indexes (tests use small chunks).
    pub fn with_index_config(mut self, config: IndexConfig) -> LogReader {
        self.index_config = config;
        self
    }

    /// The same reader, told which node keeps each partition that is not here.
    pub fn with_homes(mut self, homes: Vec<String>) -> LogReader {
        assert!(homes.is_empty() || homes.len() == self.dir.partitions() as usize);
        self.homes = homes.into();
        self
    }

    /// The same reader, told the HTTP address of the node that keeps each partition that is
    /// not here (`None` for those that are), to forward reads to.
    pub fn with_forwarding(mut self, forward_to: Vec<Option<String>>) -> LogReader {
        assert!(forward_to.is_empty() || forward_to.len() == self.dir.partitions() as usize);
        self.forward_to = forward_to.into();
        self
    }

    /// The same reader, asking `residence` where each partition's log is at every read.
    pub fn with_residence(mut self, residence: Arc<dyn Residence>) -> LogReader {
        self.residence = Some(residence);
        self
    }

    /// Where reads of `partition`'s log are forwarded, if it is kept by another node.
    pub fn forward_address(&self, partition: PartitionId) -> Option<String> {
        if let Some(residence) = &self.residence {
            return residence.elsewhere(partition).map(|(_, http)| http);
        }
        self.forward_to.get(partition as usize)?.clone()
    }

    /// How many partitions the data directory has.
    pub fn partitions(&self) -> u32 {
        self.dir.partitions()
    }

    /// The node that keeps `partition`'s log when it is not here, if known.
    pub fn home_of(&self, partition: PartitionId) -> Option<String> {
        if let Some(residence) = &self.residence {
            return residence.elsewhere(partition).map(|(home, _)| home);
        }
        let home = self.homes.get(partition as usize)?;
        (!home.is_empty()).then(|| home.clone())
    }

    /// The statistics of `partition`'s driver, whose `last_lsn` is its durable lsn: only
    /// for a partition running here.
    pub fn durable_stats(&self, partition: PartitionId) -> Result<Arc<DriverStats>, LogError> {
        let local = match &self.residence {
            Some(residence) => residence.local(partition),
            None => self.durable.get(partition as usize).cloned().flatten(),
        };
        local.ok_or(LogError::NotLocal(partition))
    }

    /// Runs `scan` over the data directory on a blocking thread, once it is one of the
    /// [`Self::SCANS_MAX`] scans allowed at once.
    pub async fn scan<T: Send + 'static>(
        &self,
        scan: impl FnOnce(&DataDir) -> T + Send + 'static,
    ) -> Result<T, LogError> {
        let _permit = self.scans.acquire().await.expect("never closed");
        let dir = Arc::clone(&self.dir);
        tokio::task::spawn_blocking(move || scan(&dir))
            .await
            .map_err(|e| LogError::Io {
                path: "a log scan".into(),
                source: std::io::Error::other(e.to_string()),
            })
    }

    /// Runs `read` on the index of `partition` (opened if it is not), brought up to the
    /// durable lsn, on a blocking thread.
    pub async fn with_index<T: Send + 'static>(
        &self,
        partition: PartitionId,
        read: impl FnOnce(&PartitionIndex) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let durable = self
            .durable_stats(partition)?
            .last_lsn
            .load(Ordering::Acquire);
        let _permit = self.scans.acquire().await.expect("never closed");
        let reader = self.clone();
        tokio::task::spawn_blocking(move || reader.read_index(partition, durable, read))
            .await
            .map_err(|e| LogError::Io {
                path: format!("partition {partition}'s history index"),
                source: std::io::Error::other(e.to_string()),
            })?
    }

    fn read_index<T>(
        &self,
        partition: PartitionId,
        durable: Lsn,
        read: impl FnOnce(&PartitionIndex) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        let mut slot = self.indexes[partition as usize]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let index = match slot.take() {
            Some(index) => index,
            None => PartitionIndex::open(Arc::clone(&self.dir), partition, self.index_config)?,
        };
        // Put back only once it is known good: after an error the next read reopens it,
        // checking its chunks again and rebuilding from the log what fails.
        let index = slot.insert(index);
        let result = index.catch_up(durable).and_then(|()| read(index));
        if let Err(error) = &result {
            tracing::error!(partition, %error, "history index dropped; reopened on the next read");
            *slot = None;
        }
        result
    }

    /// Keeps the index of every partition running here up to its durable lsn, in the
    /// background, so that a read finds little to index first. Runs until the runtime
    /// stops.
    pub fn follow(&self) {
        for (partition, stats) in self.durable.iter().enumerate() {
            let Some(stats) = stats.clone() else {
                continue;
            };
            let reader = self.clone();
            tokio::spawn(async move {
                let partition = partition as PartitionId;
                let mut indexed = 0;
                loop {
                    let wait = std::time::Duration::from_secs(60);
                    match crate::feed::wait::durable_after(&stats, indexed, wait).await {
                        crate::feed::wait::Durable::UpTo(durable) if durable > indexed => {}
                        _ => continue,
                    }
                    let pause = std::time::Duration::from_millis(Self::FOLLOW_PAUSE_MS);
                    tokio::time::sleep(pause).await;
                    match reader
                        .with_index(partition, |index| Ok(index.indexed_lsn()))
                        .await
                    {
                        Ok(lsn) => indexed = lsn,
                        // Logged where it happened; tried again on the next advance.
                        Err(_) => tokio::time::sleep(pause * 20).await,
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use walletd_core::log::codec::{decode_log, encode_sync_mark};
    use walletd_core::log::replay::{balance_as_of, movements};

    fn fixture(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures")
            .join(name);
        fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn accounts_of(records: &[Record]) -> BTreeSet<AccountId> {
        let mut found = BTreeSet::new();
        for record in records {
            match &record.event {
                Event::AccountOpened { account, .. } => {
                    found.insert(*account);
                }
                Event::CreditTried { transfer } | Event::DebitTried { transfer } => {
                    found.insert(transfer.from);
                    found.insert(transfer.to);
                }
                _ => {}
            }
        }
        found
    }

    /// The account filter keeps everything `balance_as_of` and `movements` need: on the
    /// recorded fixtures and on two partitions' logs with multi-leg transactions, folding the
    /// kept records gives what folding them all gives.
    #[test]
    fn the_account_filter_keeps_what_history_needs() {
        let mut logs: Vec<(String, Vec<Record>)> = [
            "plain_day.log",
            "tcc_cancels.log",
            "refunds.log",
            "holds.log",
            "transactions.log",
        ]
        .into_iter()
        .map(|name| {
            let records = decode_log(&fixture(name), 1).expect("fixture decodes");
            (name.to_string(), records.records)
        })
        .collect();
        for (partition, records) in test_logs::transaction_logs().into_iter().enumerate() {
            logs.push((format!("transactions, partition {partition}"), records));
        }
        for (name, all) in logs {
            let accounts = accounts_of(&all);
            assert!(accounts.len() > 3, "{name}");
            for account in accounts {
                let mut keep = account_filter(account);
                let kept: Vec<Record> = all.iter().filter(|r| keep(r)).cloned().collect();
                assert_eq!(
                    movements(&kept, &account),
                    movements(&all, &account),
                    "{name} {account}"
                );
                for lsn in (0..=all.len() as u64).step_by(3) {
                    let cut: Vec<Record> = kept.iter().filter(|r| r.lsn <= lsn).cloned().collect();
                    let figures = |records: &[Record]| {
                        balance_as_of(records, &account, AsOf::Lsn(lsn))
                            .map(|b| (b.currency, b.balance, b.held, b.incoming))
                    };
                    assert_eq!(figures(&cut), figures(&all), "{name} {account} @{lsn}");
                }
            }
        }
    }

    #[test]
    fn reads_a_partition_directory_up_to_a_point() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create_or_check(tmp.path(), 8).unwrap();
        let partition_dir = dir.partition_dir(7);
        fs::create_dir_all(&partition_dir).unwrap();
        let bytes = fixture("tcc_cancels.log");
        fs::write(partition_dir.join("log-00000000000000000001.seg"), &bytes).unwrap();
        let mut all = |_: &Record| true;
        let log = read_partition_log(&dir, 7, None, AsOf::End, &mut all, &mut |_| {}).unwrap();
        assert_eq!(
            (log.records.len(), log.torn_bytes, log.stopped),
            (31, 0, false)
        );
        let log = read_partition_log(&dir, 7, Some(20), AsOf::End, &mut all, &mut |_| {}).unwrap();
        assert_eq!(
            (log.records.len(), log.last_lsn, log.stopped),
            (20, 20, true)
        );
        let log = read_partition_log(&dir, 7, None, AsOf::Lsn(5), &mut all, &mut |_| {}).unwrap();
        assert_eq!(log.last_lsn, 5);
        // A partial record at the end of the newest segment is a torn tail, not an error.
        let mut torn = bytes.clone();
        torn.extend_from_slice(&bytes[..7]);
        fs::write(partition_dir.join("log-00000000000000000001.seg"), &torn).unwrap();
        let log = read_partition_log(&dir, 7, None, AsOf::End, &mut all, &mut |_| {}).unwrap();
        assert_eq!((log.records.len(), log.torn_bytes), (31, 7));
        // An empty partition has no records.
        let log = read_partition_log(&dir, 0, None, AsOf::End, &mut all, &mut |_| {}).unwrap();
        assert_eq!((log.records.len(), log.segments), (0, 0));
    }

    /// A history read racing an append: the reader saw part of a batch as it was before its
    /// write (zeros) and the rest, with the sync mark written after its sync, as it was
    /// after. Judged as a whole, that is damage a sync mark vouches for; a reader that stops
    /// at the durable lsn it was given never judges it.
    #[test]
    fn a_read_racing_an_append_stops_at_the_durable_lsn_without_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create_or_check(tmp.path(), 8).unwrap();
        let partition_dir = dir.partition_dir(7);
        fs::create_dir_all(&partition_dir).unwrap();
        let records = decode_log(&fixture("tcc_cancels.log"), 1).unwrap().records;
        let frame = |record: &Record| {
            let mut bytes = Vec::new();
            walletd_core::log::codec::encode_record(record, &mut bytes);
            bytes
        };
        let mut bytes = Vec::new();
        encode_sync_mark(0, 1, &mut bytes);
        for record in &records[..20] {
            bytes.extend_from_slice(&frame(record));
        }
        let synced = bytes.len() as u64;
        encode_sync_mark(synced, 1, &mut bytes);
        let batch_start = bytes.len();
        for record in &records[20..25] {
            bytes.extend_from_slice(&frame(record));
        }
        let synced_again = bytes.len() as u64;
        encode_sync_mark(synced_again, 1, &mut bytes);
        bytes[batch_start..batch_start + 40].fill(0);
        fs::write(partition_dir.join("log-00000000000000000001.seg"), &bytes).unwrap();
        let mut all = |_: &Record| true;
        let log = read_partition_log(&dir, 7, Some(20), AsOf::End, &mut all, &mut |_| {}).unwrap();
        assert_eq!(
            (log.records.len(), log.last_lsn, log.stopped),
            (20, 20, true)
        );
        // Read as a whole (a stopped node's directory), it is damage to synced data.
        let error =
            read_partition_log(&dir, 7, None, AsOf::End, &mut all, &mut |_| {}).unwrap_err();
        assert!(matches!(error, LogError::Corrupt { offset, .. } if offset == batch_start as u64));
    }
}
