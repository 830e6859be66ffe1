//! Tests of the partition driver on tokio: real files in temp dirs, group commit, recovery,
//! and the rule that no reply precedes the sync of the batch that holds it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::*;
use crate::engine::{Client, Engine, EngineConfig};
use crate::storage::file::{FileStorage, FileStorageConfig};
use crate::storage::{read_all_snapshots, read_whole_log, MemStorage, SegmentRef, SnapshotRef};
use walletd_core::ledger::{LedgerError, Reply, TransferState, TransferStatus};
use walletd_core::log::codec::{decode_log, SYNC_MARK_LEN};
use walletd_core::model::event::Transfer;
use walletd_core::model::event::{Event, TransferKey};
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency};
use walletd_core::model::partition::partition_of;
use walletd_core::protocol::bugs::Bug;
use walletd_core::protocol::coordinator::CoordinatorConfig;
use walletd_core::protocol::coordinator::{Phase, PhaseRequest};

fn id(s: &str) -> AccountId {
    AccountId::new(s).unwrap()
}

fn usd(minor: u64) -> Amount {
    Amount::from_minor(minor).unwrap()
}

/// Two accounts on different partitions of `partitions`, funded with `funds` each.
async fn open_pair(client: &Client, funds: u64) -> (AccountId, AccountId) {
    let partitions = client.partitions();
    let a = id("alice");
    let b = (0..)
        .map(|i| id(&format!("bob{i}")))
        .find(|b| partition_of(b, partitions) != partition_of(&a, partitions))
        .unwrap();
    for account in [a, b] {
        let open = Command::OpenAccount {
            account,
            currency: Currency::USD,
        };
        assert_eq!(
            client.execute(open, false).await.unwrap(),
            Ok(Reply::Opened { created: true })
        );
        let deposit = Command::Deposit {
            account,
            amount: usd(funds),
            currency: Currency::USD,
            transaction_id: TransactionId::new("seed").unwrap(),
        };
        assert_eq!(
            client.execute(deposit, false).await.unwrap(),
            Ok(Reply::Balance { balance: funds })
        );
    }
    (a, b)
}

fn transfer(from: AccountId, to: AccountId, minor: u64, txn: &str) -> Transfer {
    Transfer {
        transaction_id: TransactionId::new(txn).unwrap(),
        from,
        to,
        amount: usd(minor),
        currency: Currency::USD,
    }
}

fn file_storages(dir: &std::path::Path, partitions: u32) -> Vec<FileStorage> {
    (0..partitions)
        .map(|p| {
            FileStorage::open(dir.join(format!("p{p}")), FileStorageConfig::default()).unwrap()
        })
        .collect()
}

async fn balance(client: &Client, account: AccountId) -> (u64, u64) {
    match client
        .query(client.partition_of(&account), Query::Account(account))
        .await
        .unwrap()
    {
        QueryAnswer::Account(Some(a)) => (a.balance, a.held),
        other => panic!("no account {account}: {other:?}"),
    }
}

#[tokio::test]
async fn cross_partition_transfers_commit_on_real_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        partitions: 4,
        ..EngineConfig::default()
    };
    let engine = Engine::start(file_storages(dir.path(), 4), config)
        .await
        .unwrap();
    let client = engine.client();
    let (a, b) = open_pair(&client, 10_000).await;
    for i in 0..20 {
        let result = client
            .execute(
                Command::Transfer(transfer(a, b, 100, &format!("t{i}"))),
                true,
            )
            .await
            .unwrap();
        assert_eq!(result, Ok(Reply::Transfer(TransferStatus::Committed)));
    }
    let rejected = client
        .execute(Command::Transfer(transfer(a, b, 1_000_000, "big")), true)
        .await
        .unwrap();
    assert_eq!(
        rejected,
        Ok(Reply::Transfer(TransferStatus::Rejected(
            walletd_core::model::event::Reason::InsufficientFunds
        )))
    );
    // The destination's acknowledgement of the last Confirm may still be on its way.
    for _ in 0..100 {
        if balance(&client, a).await.1 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(balance(&client, a).await, (8_000, 0));
    assert_eq!(balance(&client, b).await, (12_000, 0));
    engine.shutdown().await.unwrap();

    // Everything acknowledged is on disk: a restart sees the same balances.
    let engine = Engine::start(file_storages(dir.path(), 4), config)
        .await
        .unwrap();
    let client = engine.client();
    assert_eq!(balance(&client, a).await, (8_000, 0));
    assert_eq!(balance(&client, b).await, (12_000, 0));
    assert!(
        engine
            .recovery_reports()
            .iter()
            .map(|r| r.records_replayed)
            .sum::<u64>()
            > 40
    );
    engine.shutdown().await.unwrap();
}

/// A transport that can be told to drop every message of one phase.
struct FilteringTransport {
    inner: Mutex<Option<Arc<dyn Transport>>>,
    drop_phase: Mutex<Option<Phase>>,
}

impl Transport for FilteringTransport {
    fn send_all(&self, mut messages: Vec<PeerMessage>) {
        let dropped = *self.drop_phase.lock().unwrap();
        messages.retain(|message| {
            !matches!(message, PeerMessage::Request { request, .. } if Some(request.phase) == dropped)
        });
        if let Some(inner) = self.inner.lock().unwrap().as_ref() {
            inner.send_all(messages);
        }
    }
}

/// Starts `partitions` drivers on `storages` with a filtering transport around local delivery.
async fn start_filtered(
    storages: Vec<MemStorage>,
    config: DriverConfig,
    drop_phase: Option<Phase>,
) -> (
    Client,
    Vec<tokio::task::JoinHandle<Result<MemStorage, DriverError>>>,
) {
    let partitions = storages.len() as u32;
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..partitions).map(|_| mpsc::channel(1024)).unzip();
    let inboxes: Arc<[mpsc::Sender<Input>]> = senders.into();
    let transport = Arc::new(FilteringTransport {
        inner: Mutex::new(Some(Arc::new(crate::transport::LocalTransport::new(
            Arc::clone(&inboxes),
        )))),
        drop_phase: Mutex::new(drop_phase),
    });
    let mut tasks = Vec::new();
    for (p, (mut storage, inbox)) in storages.into_iter().zip(receivers).enumerate() {
        let (ledger, _) = recover(&mut storage, p as PartitionId, partitions)
            .await
            .unwrap();
        let driver = PartitionDriver::new(
            ledger,
            storage,
            transport.clone(),
            inbox,
            config,
            Arc::default(),
        );
        tasks.push(tokio::spawn(driver.run()));
    }
    (Client::new(inboxes), tasks)
}

/// Kills the drivers where they stand, like a crash (the disks then lose what was not synced).
async fn stop(
    _client: &Client,
    tasks: Vec<tokio::task::JoinHandle<Result<MemStorage, DriverError>>>,
) {
    for task in tasks {
        task.abort();
        let _ = task.await;
    }
}

async fn transfer_state(client: &Client, key: TransferKey) -> TransferState {
    match client
        .query(client.partition_of(&key.from), Query::Transfer(key))
        .await
        .unwrap()
    {
        QueryAnswer::Transfer(Some(row)) => row.state,
        other => panic!("no transfer row: {other:?}"),
    }
}

async fn wait_for_state(client: &Client, key: TransferKey, want: TransferState) {
    for _ in 0..500 {
        if transfer_state(client, key).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "transfer never reached {want:?}, is {:?}",
        transfer_state(client, key).await
    );
}

/// Two partitions on memory disks, with Tries that never time out and quick resends, so a
/// restart test decides when a transfer moves on.
fn restart_setup() -> (DriverConfig, Vec<MemStorage>) {
    let config = DriverConfig {
        coordinator: CoordinatorConfig {
            try_timeout_us: 60_000_000,
            retry_initial_us: 5_000,
            retry_max_us: 20_000,
            resolve_after_us: 1_000_000,
        },
        ..DriverConfig::default()
    };
    (config, (0..2).map(|_| MemStorage::default()).collect())
}

/// Power loss: every disk keeps only what was synced.
fn crash(disks: &[MemStorage]) {
    for disk in disks {
        disk.disk.lock().unwrap().crash();
    }
}

#[tokio::test]
async fn a_restarted_home_partition_resumes_a_transfer_between_try_and_confirm() {
    let (config, storages) = restart_setup();
    let disks = storages.clone();

    // First life: every Try is lost, so the transfer stays between Try and Confirm.
    let (client, tasks) = start_filtered(storages, config, Some(Phase::Try)).await;
    let (a, b) = open_pair(&client, 1_000).await;
    let t = transfer(a, b, 300, "resume-me");
    let first = client.execute(Command::Transfer(t), false).await.unwrap();
    assert_eq!(first, Ok(Reply::Transfer(TransferStatus::Pending)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        transfer_state(&client, t.key()).await,
        TransferState::Trying
    );
    assert_eq!(balance(&client, a).await, (700, 300));
    stop(&client, tasks).await;

    // Second life, with a working network: the transfer resumes from the log alone.
    crash(&disks);
    let (client, tasks) = start_filtered(disks, config, None).await;
    wait_for_state(&client, t.key(), TransferState::Committed).await;
    assert_eq!(balance(&client, a).await, (700, 0));
    assert_eq!(balance(&client, b).await, (1_300, 0));
    // The client's retry gets the outcome, not a second transfer.
    let retry = client.execute(Command::Transfer(t), false).await.unwrap();
    assert_eq!(retry, Ok(Reply::Transfer(TransferStatus::Committed)));
    stop(&client, tasks).await;
}

#[tokio::test]
async fn a_confirm_lost_with_a_crash_is_asked_for_by_the_destination() {
    let (config, storages) = restart_setup();
    let disks = storages.clone();
    let (client, tasks) = start_filtered(storages, config, Some(Phase::Confirm)).await;
    let (a, b) = open_pair(&client, 1_000).await;
    let t = transfer(a, b, 250, "confirm-me");
    // Both sides are durable, so the client hears "committed", and the home's side is done.
    let first = client.execute(Command::Transfer(t), true).await.unwrap();
    assert_eq!(first, Ok(Reply::Transfer(TransferStatus::Committed)));
    wait_for_state(&client, t.key(), TransferState::Committed).await;
    assert_eq!(
        balance(&client, b).await,
        (1_000, 0),
        "Confirm was lost: not credited yet"
    );
    stop(&client, tasks).await;
    crash(&disks);
    // The destination asks about its pending credit (after `resolve_after_us`), and the
    // home's committed row answers with the Confirm.
    let (client, tasks) = start_filtered(disks, config, None).await;
    for _ in 0..500 {
        if balance(&client, b).await == (1_250, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(balance(&client, a).await, (750, 0));
    assert_eq!(balance(&client, b).await, (1_250, 0));
    stop(&client, tasks).await;
}

fn segment_path(dir: &std::path::Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files.pop().expect("a segment")
}

/// Writes a small log for partition 0 of 1 and returns the engine's balance of `alice`.
async fn write_small_log(dir: &std::path::Path) {
    let config = single();
    let engine = Engine::start(file_storages(dir, 1), config).await.unwrap();
    let client = engine.client();
    open_usd(&client, id("alice")).await;
    for i in 0..5 {
        let deposit = Command::Deposit {
            account: id("alice"),
            amount: usd(100),
            currency: Currency::USD,
            transaction_id: TransactionId::new(&format!("d{i}")).unwrap(),
        };
        client.execute(deposit, false).await.unwrap().unwrap();
    }
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_torn_log_tail_is_truncated_and_the_partition_starts() {
    let dir = tempfile::tempdir().unwrap();
    write_small_log(dir.path()).await;
    let segment = segment_path(&dir.path().join("p0"));
    let intact = std::fs::metadata(&segment).unwrap().len();
    // A crash in the middle of writing a record leaves part of it.
    let bytes = std::fs::read(&segment).unwrap();
    let mut torn = bytes.clone();
    torn.extend_from_slice(&bytes[bytes.len() - 20..bytes.len() - 7]);
    std::fs::write(&segment, &torn).unwrap();

    let config = single();
    let engine = Engine::start(file_storages(dir.path(), 1), config)
        .await
        .unwrap();
    assert_eq!(engine.recovery_reports()[0].torn_bytes_dropped, 13);
    assert_eq!(engine.recovery_reports()[0].records_replayed, 6);
    // The torn tail is cut off on disk: after the kept frames comes only the sync mark that
    // recovery's sync wrote, then preallocated zeros.
    let after = std::fs::read(&segment).unwrap();
    assert_eq!(after[..intact as usize], bytes[..]);
    let decoded = decode_log(&after, 1).unwrap();
    assert_eq!(decoded.valid_len, intact as usize + SYNC_MARK_LEN);
    assert!(!decoded.torn_tail);
    let client = engine.client();
    assert_eq!(balance(&client, id("alice")).await, (500, 0));
    let deposit = Command::Deposit {
        account: id("alice"),
        amount: usd(1),
        currency: Currency::USD,
        transaction_id: TransactionId::new("after").unwrap(),
    };
    assert_eq!(
        client.execute(deposit, false).await.unwrap(),
        Ok(Reply::Balance { balance: 501 })
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_corrupted_middle_record_refuses_to_start_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    write_small_log(dir.path()).await;
    let segment = segment_path(&dir.path().join("p0"));
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();

    let config = single();
    let error = Engine::start(file_storages(dir.path(), 1), config)
        .await
        .err()
        .expect("must refuse to start");
    let message = error.to_string();
    assert!(matches!(error, DriverError::Corrupt { .. }), "{message}");
    assert!(
        message.contains(&segment.display().to_string()),
        "{message}"
    );
    assert!(message.contains("offset"), "{message}");
    // Nothing was truncated: corruption is for an operator to look at, not to repair silently.
    assert_eq!(std::fs::read(&segment).unwrap(), bytes);
}

/// Storage whose sync takes a while and which records what was durable when.
#[derive(Clone, Default)]
struct SlowSync {
    inner: MemStorage,
    syncing: Arc<AtomicBool>,
    synced_bytes: Arc<AtomicU64>,
    /// When set, each sync waits for a permit of this gate instead of 30 ms.
    gate: Option<Arc<tokio::sync::Semaphore>>,
    /// When set, the next sync fails (and clears it), as an fsync reporting EIO does once.
    fail_next_sync: Arc<AtomicBool>,
    /// When set, the next snapshot is not written and fails (and clears it).
    fail_next_snapshot: Arc<AtomicBool>,
}

impl Storage for SlowSync {
    async fn list_log(&mut self, from_lsn: Lsn) -> io::Result<Vec<SegmentRef>> {
        self.inner.list_log(from_lsn).await
    }
    async fn log_segments(&mut self) -> io::Result<Vec<SegmentRef>> {
        self.inner.log_segments().await
    }
    async fn read_segment(&mut self, segment: &SegmentRef) -> io::Result<Vec<u8>> {
        self.inner.read_segment(segment).await
    }
    async fn truncate_last(&mut self, len: u64) -> io::Result<()> {
        self.inner.truncate_last(len).await
    }
    async fn append(&mut self, first_lsn: Lsn, bytes: &[u8]) -> io::Result<()> {
        self.inner.append(first_lsn, bytes).await
    }
    async fn sync(&mut self) -> io::Result<()> {
        self.syncing.store(true, Ordering::SeqCst);
        match &self.gate {
            Some(gate) => gate.acquire().await.expect("gate open").forget(),
            None => tokio::time::sleep(Duration::from_millis(30)).await,
        }
        if self.fail_next_sync.swap(false, Ordering::SeqCst) {
            self.syncing.store(false, Ordering::SeqCst);
            return Err(io::Error::other("simulated EIO"));
        }
        self.inner.sync().await?;
        let len = self.inner.disk.lock().unwrap().synced_len as u64;
        self.synced_bytes.store(len, Ordering::SeqCst);
        self.syncing.store(false, Ordering::SeqCst);
        Ok(())
    }
    fn write_snapshot(
        &mut self,
        lsn: Lsn,
        encode: crate::storage::EncodeSnapshot,
    ) -> impl std::future::Future<Output = io::Result<usize>> + Send + 'static {
        let fail = self.fail_next_snapshot.swap(false, Ordering::SeqCst);
        // Memory storage writes when polled, so a write that is never polled leaves nothing.
        let write = self.inner.write_snapshot(lsn, encode);
        async move {
            if fail {
                return Err(io::Error::other("simulated ENOSPC"));
            }
            write.await
        }
    }
    async fn list_snapshots(&mut self) -> io::Result<Vec<SnapshotRef>> {
        self.inner.list_snapshots().await
    }
    async fn read_snapshot(&mut self, snapshot: &SnapshotRef) -> io::Result<Vec<u8>> {
        self.inner.read_snapshot(snapshot).await
    }
    async fn read_chunk(&mut self, index: u64) -> io::Result<Vec<u8>> {
        self.inner.read_chunk(index).await
    }

    fn chunk_reader(&self) -> std::sync::Arc<dyn walletd_core::ledger::cold::ChunkRead> {
        self.inner.chunk_reader()
    }
}

/// Sends deposits and checks, at the moment each reply arrives, that the disk already holds
/// the deposit's record. Returns how many replies arrived before their record was durable.
async fn replies_ahead_of_durability() -> usize {
    let (engine, probe) = start_slow_single(None).await;
    let client = engine.client();
    let mut early = 0;
    for i in 0..5 {
        client.execute(deposit(i), false).await.unwrap().unwrap();
        let durable = probe.synced_bytes.load(Ordering::SeqCst) as usize;
        let disk = probe.inner.disk.lock().unwrap();
        let written = disk.segments.last().map_or(0, |(_, b)| b.len());
        early += usize::from(durable < written);
    }
    engine.shutdown().await.unwrap();
    early
}

/// Runs `check` with `bug` switched on, and switches it off again.
async fn with_bug<T>(
    bug: walletd_core::protocol::bugs::Bug,
    check: impl std::future::Future<Output = T>,
) -> T {
    walletd_core::protocol::bugs::set(&[bug]);
    let found = check.await;
    walletd_core::protocol::bugs::set(&[]);
    found
}

#[tokio::test]
async fn replies_never_precede_the_sync_of_their_batch() {
    assert_eq!(replies_ahead_of_durability().await, 0);
}

#[tokio::test]
async fn the_durability_check_catches_replies_sent_before_the_sync() {
    let early = with_bug(Bug::ReplyBeforeSync, replies_ahead_of_durability()).await;
    assert!(
        early > 0,
        "with the reply moved before the sync, the test above must fail"
    );
}

/// An observer that checks, with core's invariant, that every release leaves only once its
/// batch is durable on `disk`, and counts the releases that left early.
struct DurableReleases {
    disk: MemStorage,
    cut: std::cell::RefCell<Vec<Lsn>>,
    early: std::cell::Cell<usize>,
}

impl DurableReleases {
    /// The last lsn of the synced bytes of the disk.
    fn durable_lsn(&self) -> Lsn {
        let disk = self.disk.disk.lock().unwrap();
        let Some((first_lsn, bytes)) = disk.segments.last() else {
            return 0;
        };
        let decoded = decode_log(&bytes[..disk.synced_len], *first_lsn).unwrap();
        decoded.records.last().map_or(first_lsn - 1, |r| r.lsn)
    }
}

impl observe::Observer for DurableReleases {
    fn started(&self, _: PartitionId, _: &Ledger) {}

    fn committing(
        &self,
        _: PartitionId,
        _: &Ledger,
        commit: &walletd_core::protocol::machine::Commit<Channels>,
    ) {
        self.cut.borrow_mut().push(commit.last_lsn);
    }

    fn releasing(&self, partition: PartitionId, last_lsn: Lsn, release: &Release<Channels>) {
        assert!(
            self.cut.borrow().contains(&last_lsn),
            "a release follows its cut"
        );
        let answers = release.replies.len() + release.groups.len() + release.answers.len();
        let durable = self.durable_lsn();
        let checked = walletd_core::protocol::invariants::released_durably(
            partition,
            last_lsn,
            durable,
            &release.peer_messages,
            answers,
        );
        self.early
            .set(self.early.get() + usize::from(checked.is_err()));
    }
}

/// Deposits under an observer of every release; how many left before their batch was durable.
async fn observed_early_releases() -> usize {
    let storage = SlowSync::default();
    let watch = std::rc::Rc::new(DurableReleases {
        disk: storage.inner.clone(),
        cut: Default::default(),
        early: Default::default(),
    });
    observe::install(Some(watch.clone()));
    let engine = start_single_with_alice(storage).await;
    let client = engine.client();
    for i in 0..5 {
        client.execute(deposit(i), false).await.unwrap().unwrap();
    }
    engine.shutdown().await.unwrap();
    observe::install(None);
    assert!(
        !watch.cut.borrow().is_empty(),
        "the observer saw the batches"
    );
    watch.early.get()
}

#[tokio::test]
async fn the_observer_sees_every_release_after_its_batch_is_durable() {
    assert_eq!(observed_early_releases().await, 0);
    let early = with_bug(Bug::ReplyBeforeSync, observed_early_releases()).await;
    assert!(early > 0, "releases before the sync are seen as such");
}

/// What a deposit made while the next sync fails is answered, and whether the partition goes
/// on (`None`: the answer was dropped, or the partition was unavailable).
async fn deposit_across_a_failed_sync() -> (Option<CommandResult>, Result<(), DriverError>) {
    let (engine, storage) = start_slow_single(None).await;
    let client = engine.client();
    storage.fail_next_sync.store(true, Ordering::SeqCst);
    let answer = client.execute(deposit(0), false).await.ok();
    let after = client.execute(deposit(1), false).await;
    if answer.is_none() {
        assert!(
            after.is_err(),
            "a partition whose sync failed takes no more commands"
        );
    }
    (answer, engine.shutdown().await)
}

/// A failed sync is final: the batch it held is never answered and the partition stops (the
/// server then exits, and recovery reads what the disk really kept), because the kernel may
/// have dropped the pages it failed to write and a retry would report success without them.
#[tokio::test]
async fn a_failed_sync_answers_nothing_and_stops_the_partition() {
    let (answer, stopped) = deposit_across_a_failed_sync().await;
    assert_eq!(answer, None);
    assert!(
        matches!(stopped, Err(DriverError::Io { partition: 0, .. })),
        "{stopped:?}"
    );
}

#[tokio::test]
async fn the_failed_sync_check_catches_a_retried_sync() {
    let (answer, stopped) = with_bug(Bug::RetryFailedSync, deposit_across_a_failed_sync()).await;
    assert_eq!(answer, Some(Ok(Reply::Balance { balance: 1 })));
    assert!(stopped.is_ok(), "{stopped:?}");
}

/// A snapshot that cannot be written costs only recovery time: the partition answers on from
/// its log, counts the failure, and writes the next snapshot, which recovery then starts from.
#[tokio::test]
async fn a_failed_snapshot_is_counted_and_the_partition_goes_on() {
    let storage = SlowSync::default();
    let probe = storage.clone();
    let engine = Engine::start(vec![storage], snapshotting_every(8, 1))
        .await
        .unwrap();
    let client = engine.client();
    open_usd(&client, id("alice")).await;
    let stats = Arc::clone(&engine.stats()[0]);
    let snapshots = || probe.inner.disk.lock().unwrap().snapshots.len();
    probe.fail_next_snapshot.store(true, Ordering::SeqCst);
    for round in 0..2u32 {
        let deposits = (0..10).map(|i| deposit(round * 10 + i));
        for answer in client.execute_many(deposits, false).await {
            assert!(matches!(answer.unwrap(), Ok(Reply::Balance { .. })));
        }
        eventually("the snapshot is written or has failed", || {
            stats.snapshot_failures.load(Ordering::SeqCst) + snapshots() as u64 > u64::from(round)
        })
        .await;
    }
    assert_eq!(stats.snapshot_failures.load(Ordering::SeqCst), 1);
    assert_eq!(snapshots(), 1, "the second snapshot was written");
    engine.shutdown().await.unwrap();
    let mut storage = probe.clone();
    let (ledger, report) = recover(&mut storage, 0, 1).await.unwrap();
    assert!(report.snapshot_lsn.is_some(), "{report:?}");
    assert_eq!(ledger.account(&id("alice")).unwrap().balance, 20);
}

/// A durable batch hands its peer messages to the transport before it answers its clients,
/// so a Confirm is on its way before anyone is told that its transfer is committed.
#[test]
fn a_batch_sends_its_peer_messages_before_its_answers() {
    /// Counts the messages sent while the client's answer had not yet arrived.
    struct Probe {
        answer: Mutex<oneshot::Receiver<CommandResult>>,
        sent_before_the_answer: AtomicU64,
    }
    impl Transport for Probe {
        fn send_all(&self, messages: Vec<PeerMessage>) {
            let answered = self.answer.lock().unwrap().try_recv();
            if matches!(answered, Err(oneshot::error::TryRecvError::Empty)) {
                let count = messages.len() as u64;
                self.sent_before_the_answer
                    .fetch_add(count, Ordering::Relaxed);
            }
        }
    }
    let (reply, answer) = oneshot::channel();
    let probe = Arc::new(Probe {
        answer: Mutex::new(answer),
        sent_before_the_answer: AtomicU64::new(0),
    });
    let mut release = Release::<Channels>::default();
    let committed = Ok(Reply::Transfer(TransferStatus::Committed));
    release.replies.push((reply, committed.clone()));
    let confirm = PeerMessage::Request {
        from: 0,
        request: PhaseRequest {
            phase: Phase::Confirm,
            transfer: transfer(id("alice"), id("bob"), 5, "t-1"),
        },
    };
    release.peer_messages.extend([confirm.clone(), confirm]);
    send_release((0, 0), release, &*probe);
    assert_eq!(probe.sent_before_the_answer.load(Ordering::Relaxed), 2);
    let answered = probe.answer.lock().unwrap().try_recv();
    assert_eq!(answered.unwrap(), committed);
}

#[tokio::test]
async fn group_commit_puts_many_commands_in_one_sync() {
    let storage = MemStorage::default();
    let disk = storage.disk.clone();
    let engine = start_single_with_alice(storage).await;
    let client = engine.client();
    let syncs_before = disk.lock().unwrap().syncs;
    let mut pending = Vec::new();
    for i in 0..1000 {
        let client = client.clone();
        pending.push(tokio::spawn(async move {
            client.execute(deposit(i), false).await.unwrap().unwrap()
        }));
    }
    for task in pending {
        task.await.unwrap();
    }
    let syncs = disk.lock().unwrap().syncs - syncs_before;
    assert!(syncs < 100, "1000 concurrent deposits took {syncs} syncs");
    assert_eq!(balance(&client, id("alice")).await, (1000, 0));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn recovery_from_a_snapshot_equals_replay_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = snapshotting_every(7, 2);
    let engine = Engine::start(file_storages(dir.path(), 2), config)
        .await
        .unwrap();
    let client = engine.client();
    let (a, b) = open_pair(&client, 10_000).await;
    for i in 0..15 {
        let result = client
            .execute(
                Command::Transfer(transfer(a, b, 10 + i, &format!("t{i}"))),
                true,
            )
            .await
            .unwrap();
        assert_eq!(result, Ok(Reply::Transfer(TransferStatus::Committed)));
    }
    engine.shutdown().await.unwrap();

    for p in 0..2u32 {
        let mut storage = FileStorage::open(
            dir.path().join(format!("p{p}")),
            FileStorageConfig::default(),
        )
        .unwrap();
        let snapshots = read_all_snapshots(&mut storage).await.unwrap();
        assert!(!snapshots.is_empty(), "partition {p} wrote no snapshot");
        assert!(snapshots.len() <= 2, "old snapshots are pruned");
        let (from_snapshot, report) = recover(&mut storage, p, 2).await.unwrap();
        assert_eq!(report.snapshot_lsn, Some(snapshots[0].lsn));
        assert!(
            report.records_replayed < report.last_lsn,
            "the snapshot saved replay work"
        );
        let mut records = Vec::new();
        for (segment, bytes) in read_whole_log(&mut storage, 0).await.unwrap() {
            records.extend(decode_log(&bytes, segment.first_lsn).unwrap().records);
        }
        let from_zero =
            walletd_core::log::replay::replay(p, 2, &records, walletd_core::log::replay::AsOf::End)
                .unwrap();
        assert!(
            walletd_core::log::replay::same_state(&from_snapshot, &from_zero),
            "{:?}",
            walletd_core::log::replay::state_difference(&from_snapshot, &from_zero)
        );
    }
}

/// Deposits add a row each, like transfers: a log that only had to grow as large as the
/// state would never catch up with it again after the first snapshot.
#[tokio::test]
async fn snapshots_keep_coming_while_every_event_adds_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let keep_all = FileStorageConfig {
        snapshots_kept_max: 100,
        ..FileStorageConfig::default()
    };
    let storage = FileStorage::open(dir.path().join("p0"), keep_all).unwrap();
    let config = snapshotting_every(4, 1);
    let engine = Engine::start(vec![storage], config).await.unwrap();
    let client = engine.client();
    open_usd(&client, id("alice")).await;
    for i in 0..400 {
        client.execute(deposit(i), true).await.unwrap().unwrap();
    }
    engine.shutdown().await.unwrap();
    let mut storage = FileStorage::open(dir.path().join("p0"), keep_all).unwrap();
    let snapshots = read_all_snapshots(&mut storage).await.unwrap();
    // Rows double between snapshots (4, 8, 16, ..., 256 events): at least five of them, even
    // when a slow write puts one off past its point (a snapshot is written one at a time).
    assert!(snapshots.len() >= 5, "{} snapshots", snapshots.len());
    let (_, report) = recover(&mut storage, 0, 1).await.unwrap();
    assert!(
        report.records_replayed <= report.last_lsn / 2 + 1,
        "recovery replayed {} of {} records",
        report.records_replayed,
        report.last_lsn
    );
}

/// Transfers fill chunks of final rows: snapshots keep them in chunk files, written once,
/// and recovery from such a snapshot equals replay from zero, before and after a restart
/// (whose first snapshot writes the chunk files again). The rows of those chunks leave
/// memory; retries of the first transfers, after the restart, still get their first answer.
#[tokio::test]
async fn snapshots_keep_final_transfers_in_chunk_files_and_recover_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = snapshotting_every(64, 1);
    let (alice, dave) = (id("alice"), id("dave"));
    for (run, accounts_needed) in [(0, true), (1, false)] {
        let storages = file_storages(dir.path(), 1);
        let engine = Engine::start(storages, config).await.unwrap();
        let client = engine.client();
        if accounts_needed {
            for account in [alice, dave] {
                open_usd(&client, account).await;
            }
            let fund = Command::Deposit {
                account: alice,
                amount: usd(1_000_000),
                currency: Currency::USD,
                transaction_id: TransactionId::new("fund").unwrap(),
            };
            client.execute(fund, false).await.unwrap().unwrap();
        }
        // Snapshots (and with them chunk files) fall where the disk lets them: a slow sync
        // delays the next one. So transfers go on until the chunk files are there.
        let wanted = 10 * (run + 1);
        for group in 0.. {
            if chunk_files(&dir.path().join("p0")) >= wanted {
                break;
            }
            assert!(
                group < 400,
                "{wanted} chunk files not written after {group} groups"
            );
            let commands = (0..50).map(|i| {
                let (from, to) = if i % 2 == 0 {
                    (alice, dave)
                } else {
                    (dave, alice)
                };
                Command::Transfer(transfer(from, to, 1, &format!("r{run}-g{group}-{i}")))
            });
            for answer in client.execute_many(commands, true).await {
                assert_eq!(
                    answer.unwrap(),
                    Ok(Reply::Transfer(TransferStatus::Committed))
                );
            }
        }
        let cold = engine.stats()[0]
            .cold_transfer_chunks
            .load(Ordering::Relaxed);
        assert!(cold > 0, "rows left memory while the partition ran");
        if run == 1 {
            // The first run's first transfers are on disk only by now.
            let first = (0..50).map(|i| {
                let (from, to) = if i % 2 == 0 {
                    (alice, dave)
                } else {
                    (dave, alice)
                };
                Command::Transfer(transfer(from, to, 1, &format!("r0-g0-{i}")))
            });
            for answer in client.execute_many(first, true).await {
                assert_eq!(
                    answer.unwrap(),
                    Ok(Reply::Transfer(TransferStatus::Committed))
                );
            }
            let other_body = Command::Transfer(transfer(alice, dave, 2, "r0-g0-0"));
            let answer = client.execute(other_body, false).await.unwrap();
            assert!(
                matches!(answer, Err(LedgerError::Conflict(_))),
                "{answer:?}"
            );
        }
        engine.shutdown().await.unwrap();

        let mut storage = file_storages(dir.path(), 1).pop().unwrap();
        let newest = read_all_snapshots(&mut storage).await.unwrap().remove(0);
        assert!(
            snapshot_chunks(&newest.bytes).unwrap() >= 10,
            "the snapshot refers to chunk files"
        );
        let (from_snapshot, report) = recover(&mut storage, 0, 1).await.unwrap();
        assert_eq!(report.snapshot_lsn, Some(newest.lsn));
        assert!(from_snapshot.cold_transfer_chunks() >= 10);
        assert!(
            from_snapshot.transfer_rows_in_memory() * 2 < from_snapshot.transfer_count(),
            "{} of {} rows in memory",
            from_snapshot.transfer_rows_in_memory(),
            from_snapshot.transfer_count()
        );
        let mut records = Vec::new();
        for (segment, bytes) in read_whole_log(&mut storage, 0).await.unwrap() {
            records.extend(decode_log(&bytes, segment.first_lsn).unwrap().records);
        }
        let from_zero =
            walletd_core::log::replay::replay(0, 1, &records, walletd_core::log::replay::AsOf::End)
                .unwrap();
        assert!(
            walletd_core::log::replay::same_state(&from_snapshot, &from_zero),
            "{:?}",
            walletd_core::log::replay::state_difference(&from_snapshot, &from_zero)
        );
    }
}

/// How many chunk files (`*.rows`) a partition directory holds.
fn chunk_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with(".rows")
        })
        .count()
}

#[tokio::test]
async fn logs_roll_over_into_segments_and_recover_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let small = FileStorageConfig {
        segment_bytes_max: 512,
        snapshots_kept_max: 2,
    };
    let open = |p: u32| FileStorage::open(dir.path().join(format!("p{p}")), small).unwrap();
    let config = single();
    let engine = start_single_with_alice(open(0)).await;
    let client = engine.client();
    for i in 0..40 {
        client.execute(deposit(i), false).await.unwrap().unwrap();
    }
    engine.shutdown().await.unwrap();
    let segments: Vec<_> = std::fs::read_dir(dir.path().join("p0"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .collect();
    assert!(
        segments.len() >= 3,
        "40 records of ~60 bytes in 512-byte segments: got {}",
        segments.len()
    );

    // A torn tail in the newest segment is dropped; the older segments replay in order.
    let newest = segment_path(&dir.path().join("p0"));
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes.extend_from_slice(&[7, 0, 0]);
    std::fs::write(&newest, &bytes).unwrap();
    let engine = Engine::start(vec![open(0)], config).await.unwrap();
    assert_eq!(engine.recovery_reports()[0].records_replayed, 41);
    assert_eq!(engine.recovery_reports()[0].torn_bytes_dropped, 3);
    let client = engine.client();
    assert_eq!(balance(&client, id("alice")).await, (40, 0));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_command_group_answers_in_order_and_waits_for_cross_partition_outcomes() {
    let config = EngineConfig {
        partitions: 2,
        ..EngineConfig::default()
    };
    let storages = (0..2).map(|_| MemStorage::default()).collect();
    let engine = Engine::start(storages, config).await.unwrap();
    let client = engine.client();
    let (a, b) = open_pair(&client, 1_000).await;
    // Mixed partitions and outcomes: a cross-partition commit, one refused for funds, one
    // in the other direction, a retry of the first, and an invalid command.
    let commands = [
        Command::Transfer(transfer(a, b, 600, "g1")),
        Command::Transfer(transfer(a, b, 600, "g2")),
        Command::Transfer(transfer(b, a, 50, "g3")),
        Command::Transfer(transfer(a, b, 600, "g1")),
        Command::Transfer(transfer(a, a, 1, "g4")),
    ];
    let answers = client.execute_many(commands, true).await;
    let statuses: Vec<_> = answers.into_iter().map(|a| a.unwrap()).collect();
    assert_eq!(
        statuses[..4],
        [
            Ok(Reply::Transfer(TransferStatus::Committed)),
            Ok(Reply::Transfer(TransferStatus::Rejected(
                walletd_core::model::event::Reason::InsufficientFunds
            ))),
            Ok(Reply::Transfer(TransferStatus::Committed)),
            Ok(Reply::Transfer(TransferStatus::Committed)),
        ]
    );
    assert_eq!(
        statuses[4],
        Ok(Reply::Transfer(TransferStatus::Rejected(
            walletd_core::model::event::Reason::SameAccount
        ))),
        "a transfer to itself is refused, and the refusal recorded"
    );
    for _ in 0..100 {
        if balance(&client, a).await.1 == 0 && balance(&client, b).await == (1_550, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(balance(&client, a).await, (450, 0));
    assert_eq!(balance(&client, b).await, (1_550, 0));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_partition_that_refuses_to_start_leaves_no_driver_of_its_engine_running() {
    let config = EngineConfig {
        partitions: 2,
        ..EngineConfig::default()
    };
    let storages: Vec<MemStorage> = (0..2).map(|_| MemStorage::default()).collect();
    let engine = Engine::start(storages.clone(), config).await.unwrap();
    let (a, b) = open_pair(&engine.client(), 1_000).await;
    assert_ne!(
        engine.client().partition_of(&a),
        engine.client().partition_of(&b)
    );
    engine.shutdown().await.unwrap();
    // Damage a record partition 1 synced: it must refuse to start.
    {
        let mut disk = storages[1].disk.lock().unwrap();
        let (_, bytes) = disk.segments.last_mut().expect("a segment");
        let middle = bytes.len() / 4;
        bytes[middle] ^= 0x10;
    }
    let before = Arc::strong_count(&storages[0].disk);
    let error = Engine::start(storages.clone(), config)
        .await
        .err()
        .expect("partition 1 refuses to start");
    assert!(matches!(error, DriverError::Corrupt { .. }), "{error}");
    // Partition 0, recovered first, holds its storage only if its driver runs on.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(Arc::strong_count(&storages[0].disk), before);
}

/// The configuration of the one-partition engines below.
fn single() -> EngineConfig {
    EngineConfig {
        partitions: 1,
        ..EngineConfig::default()
    }
}

/// `partitions` partitions that snapshot after every `events` events (and no sooner than
/// the driver's rule allows).
fn snapshotting_every(events: u64, partitions: u32) -> EngineConfig {
    EngineConfig {
        partitions,
        driver: DriverConfig {
            snapshot_every_events: events,
            ..DriverConfig::default()
        },
        ..EngineConfig::default()
    }
}

/// One partition on `storage` with an account "alice" (USD) opened.
async fn start_single_with_alice<S: Storage>(storage: S) -> Engine {
    let engine = Engine::start(vec![storage], single()).await.unwrap();
    open_usd(&engine.client(), id("alice")).await;
    engine
}

/// Opens `account` in USD.
async fn open_usd(client: &Client, account: AccountId) {
    let open = Command::OpenAccount {
        account,
        currency: Currency::USD,
    };
    client.execute(open, false).await.unwrap().unwrap();
}

/// One partition on [`SlowSync`] (with `gate`, if given) and an account "alice".
async fn start_slow_single(gate: Option<Arc<tokio::sync::Semaphore>>) -> (Engine, SlowSync) {
    let storage = SlowSync {
        gate,
        ..SlowSync::default()
    };
    let probe = storage.clone();
    (start_single_with_alice(storage).await, probe)
}

fn deposit(i: u32) -> Command {
    Command::Deposit {
        account: id("alice"),
        amount: usd(1),
        currency: Currency::USD,
        transaction_id: TransactionId::new(&format!("d{i}")).unwrap(),
    }
}

/// Polls `condition` every millisecond for up to five seconds.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..5_000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn the_next_batch_is_applied_while_the_previous_one_syncs() {
    let gate = Arc::new(tokio::sync::Semaphore::new(2)); // recovery's sync and the account opening's
    let (engine, probe) = start_slow_single(Some(Arc::clone(&gate))).await;
    let client = engine.client();
    let events = || engine.stats()[0].events.load(Ordering::SeqCst);
    let before = events();
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.execute(deposit(0), false).await }
    });
    eventually("the first batch syncs", || {
        probe.syncing.load(Ordering::SeqCst) && events() == before + 1
    })
    .await;
    let second = tokio::spawn({
        let client = client.clone();
        async move { client.execute(deposit(1), false).await }
    });
    eventually(
        "the second deposit is applied during the first sync",
        || events() == before + 2,
    )
    .await;
    assert!(probe.syncing.load(Ordering::SeqCst), "still the first sync");
    assert!(!first.is_finished() && !second.is_finished());
    gate.add_permits(2);
    first.await.unwrap().unwrap().unwrap();
    second.await.unwrap().unwrap().unwrap();
    assert_eq!(balance(&client, id("alice")).await, (2, 0));
    engine.shutdown().await.unwrap();
}

/// Runs 300 deposits from concurrent clients against a slow disk and counts the replies that
/// arrived before the deposit's record was durable.
async fn concurrent_replies_ahead_of_durability() -> usize {
    let (engine, probe) = start_slow_single(None).await;
    let mut clients = Vec::new();
    for c in 0..30 {
        let (client, probe) = (engine.client(), probe.clone());
        clients.push(tokio::spawn(async move {
            let mut early = 0;
            for i in 0..10 {
                let command = deposit(c * 10 + i);
                client.execute(command, false).await.unwrap().unwrap();
                let durable = {
                    let disk = probe.inner.disk.lock().unwrap();
                    let synced = probe.synced_bytes.load(Ordering::SeqCst) as usize;
                    let bytes = disk.segments.last().map_or(&[][..], |(_, b)| &b[..synced]);
                    decode_log(bytes, 1).unwrap().records
                };
                let written = durable.iter().any(|r| match r.event {
                    Event::Deposited { transaction_id, .. } => {
                        transaction_id.as_str() == format!("d{}", c * 10 + i)
                    }
                    _ => false,
                });
                early += usize::from(!written);
            }
            early
        }));
    }
    let mut early = 0;
    for client in clients {
        early += client.await.unwrap();
    }
    engine.shutdown().await.unwrap();
    early
}

#[tokio::test]
async fn under_concurrent_load_no_reply_precedes_the_sync_of_its_record() {
    assert_eq!(concurrent_replies_ahead_of_durability().await, 0);
}

#[tokio::test]
async fn the_concurrent_durability_check_catches_replies_sent_before_the_sync() {
    let early = with_bug(
        Bug::ReplyBeforeSync,
        concurrent_replies_ahead_of_durability(),
    )
    .await;
    assert!(
        early > 0,
        "with the reply moved before the sync, the test above must fail"
    );
}

#[tokio::test]
async fn a_preallocated_segment_recovers_to_its_last_record_and_appends_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let config = single();
    let storage = file_storages(&live, 1).pop().unwrap();
    let engine = start_single_with_alice(storage).await;
    let client = engine.client();
    for i in 0..10 {
        client.execute(deposit(i), false).await.unwrap().unwrap();
    }
    // What a power cut leaves of a running partition: its segment, zeros after the records.
    let copy = dir.path().join("crashed");
    std::fs::create_dir_all(copy.join("p0")).unwrap();
    let segment = segment_path(&live.join("p0"));
    let bytes = std::fs::read(&segment).unwrap();
    engine.shutdown().await.unwrap();
    let records_len = decode_log(&bytes, 1).unwrap().valid_len;
    assert!(
        bytes.len() as u64 >= crate::storage::file::PREALLOCATE_BYTES && bytes.len() > records_len,
        "the segment is extended ahead of its records"
    );
    assert!(bytes[records_len..].iter().all(|&b| b == 0));
    // A clean stop cuts the zeros.
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        records_len as u64
    );
    std::fs::write(copy.join("p0").join(segment.file_name().unwrap()), &bytes).unwrap();

    let engine = Engine::start(file_storages(&copy, 1), config)
        .await
        .unwrap();
    let report = engine.recovery_reports()[0];
    assert_eq!(
        (report.records_replayed, report.torn_bytes_dropped),
        (11, 0)
    );
    let client = engine.client();
    client.execute(deposit(10), false).await.unwrap().unwrap();
    engine.shutdown().await.unwrap();
    let engine = Engine::start(file_storages(&copy, 1), config)
        .await
        .unwrap();
    assert_eq!(engine.recovery_reports()[0].records_replayed, 12);
    assert_eq!(balance(&engine.client(), id("alice")).await, (11, 0));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn more_commands_than_one_group_holds_are_split_and_answered_in_order() {
    let (engine, _probe) = start_slow_single(None).await;
    let count = COMMANDS_PER_INPUT_MAX as u32 * 2 + 3;
    // Every third one repeats an earlier deposit's id with another amount: a conflict.
    let commands = (0..count).map(|i| match i % 3 {
        2 => Command::Deposit {
            account: id("alice"),
            amount: usd(2),
            currency: Currency::USD,
            transaction_id: TransactionId::new(&format!("d{}", i - 2)).unwrap(),
        },
        _ => deposit(i),
    });
    let answers = engine.client().execute_many(commands, false).await;
    assert_eq!(answers.len(), count as usize);
    let mut balance_after = 0;
    for (i, answer) in answers.into_iter().enumerate() {
        let answer = answer.unwrap();
        if i % 3 == 2 {
            assert!(
                matches!(answer, Err(LedgerError::Conflict(_))),
                "{i}: {answer:?}"
            );
        } else {
            balance_after += 1;
            assert_eq!(
                answer,
                Ok(Reply::Balance {
                    balance: balance_after
                }),
                "{i}"
            );
        }
    }
    engine.shutdown().await.unwrap();
}

/// What `/metrics` shows of a partition, counted where it happened: every sync in the fsync
/// histogram, every batch that wrote in the batch sizes, every round of inputs in the inbox
/// depths, each written snapshot, and each cross-partition transfer once from its Try to
/// its decision and once from its decision to its end (committed at the commit point: 0).
#[tokio::test]
async fn the_driver_histograms_count_what_the_partition_did() {
    let storages = (0..2).map(|_| MemStorage::default()).collect();
    let engine = Engine::start(storages, snapshotting_every(8, 2))
        .await
        .unwrap();
    let client = engine.client();
    let (a, b) = open_pair(&client, 10_000).await;
    let transfers = 5;
    for i in 0..transfers {
        let t = Command::Transfer(transfer(a, b, 100, &format!("t{i}")));
        let result = client.execute(t, true).await.unwrap();
        assert_eq!(result, Ok(Reply::Transfer(TransferStatus::Committed)));
    }
    let home = &engine.stats()[client.partition_of(&a) as usize];
    let destination = &engine.stats()[client.partition_of(&b) as usize];
    let try_to_decision = home.try_to_decision_us.snapshot();
    let decision_to_finish = home.decision_to_finish_us.snapshot();
    assert_eq!(try_to_decision.count(), transfers);
    assert_eq!(decision_to_finish.count(), transfers);
    assert_eq!(decision_to_finish.sum, 0);
    assert_eq!(destination.try_to_decision_us.snapshot().count(), 0);
    let all_stats = engine.stats().to_vec();
    engine.shutdown().await.unwrap();
    for stats in &all_stats {
        let syncs = stats.syncs.load(Ordering::SeqCst);
        let batches = stats.batch_records.snapshot();
        assert!(syncs > 0);
        assert_eq!(stats.sync_us.snapshot().count(), syncs);
        // One batch per sync; every record of the log is in one of them.
        assert_eq!(batches.count(), syncs);
        assert_eq!(batches.sum, stats.last_lsn.load(Ordering::SeqCst));
        let rounds = stats.inbox_depth.snapshot();
        assert!(rounds.count() > 0);
        assert!(stats.inputs.load(Ordering::SeqCst) >= rounds.count());
    }
    let snapshots: u64 = all_stats
        .iter()
        .map(|s| s.snapshot_us.snapshot().count())
        .sum();
    assert!(
        snapshots > 0,
        "events past the snapshot threshold wrote one"
    );
}

/// A client that has its answer finds its record below the published durable lsn, which
/// history and the event feed read up to: the lsn is published before the answers leave
/// (from the storage's writing thread), not later when the driver task runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_durable_lsn_is_published_before_a_batch_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(file_storages(dir.path(), 1), single())
        .await
        .unwrap();
    let client = engine.client();
    open_usd(&client, id("alice")).await;
    let stats = Arc::clone(&engine.stats()[0]);
    for i in 0..200u64 {
        let deposit = Command::Deposit {
            account: id("alice"),
            amount: usd(1),
            currency: Currency::USD,
            transaction_id: TransactionId::new(&format!("d{i}")).unwrap(),
        };
        client.execute(deposit, false).await.unwrap().unwrap();
        // The opening is lsn 1, deposit i is lsn i + 2.
        let durable = stats.last_lsn.load(Ordering::Acquire);
        assert!(
            durable >= i + 2,
            "deposit {i} answered with durable lsn {durable}"
        );
    }
    engine.shutdown().await.unwrap();
}
