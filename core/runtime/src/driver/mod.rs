//! The partition driver: the async loop that owns one partition.
//!
//! It is deliberately thin (no business rule lives here): take inputs from the inbox, run
//! each through the pure [`Ledger`] and [`Coordinator`], append the resulting events of a
//! batch as one write, sync once (group commit), and only then release the batch's replies
//! and outgoing phase messages. Commits are pipelined: the next batch is decided and applied
//! while the previous one syncs, and released strictly after it. The same source runs on
//! tokio in production and under madsim in the simulator.
//!
//! ```text
//!   inbox ──► decide/apply (Ledger) ──► encode ──► append + sync ──► replies, peer messages
//!                 ▲      │ events
//!                 └── Coordinator ◄── responses, timers
//! ```

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::storage::Storage;
use crate::transport::{PeerMessage, Transport};
use walletd_core::ledger::{ApplyError, Command, Ledger, RecordMeta, Reply, TransferStatus};
use walletd_core::log::codec::{decode_log, encode_record, CodecError, Record};
use walletd_core::log::snapshot::{
    decode_snapshot_with, snapshot_chunks, ChunkPlan, SnapshotImage, SnapshotOut,
};
use walletd_core::model::event::{Event, Lsn, Timestamp, TransferKey};
use walletd_core::model::partition::PartitionId;
use walletd_core::protocol::coordinator::{Coordinator, CoordinatorConfig, Micros, Output};
pub use walletd_core::protocol::message::{
    CommandGroup, CommandResult, Query, QueryAnswer, COMMANDS_PER_INPUT_MAX,
};

/// Limits and timings of a partition driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverConfig {
    /// Most inputs taken into one group commit (each command of an [`Input::Commands`]
    /// counts). A full batch stops taking inputs until the one before it is durable, so
    /// this over the sync time caps a partition's rate while its disk is slow (a snapshot
    /// being written back, say): 65,536 over a 50 ms sync is still 1.3M inputs/s.
    pub batch_inputs_max: usize,
    /// Write a snapshot after this many events since the last one, and no sooner than the
    /// log since the last one holds as many events as the state has rows (0: never).
    pub snapshot_every_events: u64,
    /// Most clients waiting for the outcome of a pending transfer; beyond it they get `Pending`.
    pub waiters_max: usize,
    pub coordinator: CoordinatorConfig,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            batch_inputs_max: 65_536,
            snapshot_every_events: 1_000_000,
            waiters_max: 100_000,
            coordinator: CoordinatorConfig::default(),
        }
    }
}

/// Inputs (each command of a group counts) taken from the inbox before the driver looks at
/// its commit again.
const DRAIN_INPUTS_MAX: usize = 1024;

/// Commands of a group whose rows are fetched into cache ahead of executing them
/// ([`Ledger::prefetch`]); their rows must fit in a core's L2 cache with room to spare.
const PREFETCH_COMMANDS_MAX: usize = 256;

/// What a partition's inbox carries.
#[derive(Debug)]
pub enum Input {
    /// A client command. With `wait`, a transfer that is still pending when its batch is
    /// durable is answered only when its outcome is decided (the caller bounds the wait).
    Command {
        command: Command,
        wait: bool,
        reply: oneshot::Sender<CommandResult>,
    },
    /// Client commands executed in order, answered together (one answer per command, in
    /// their order) once all are durable, and with `wait` all decided. At most
    /// [`COMMANDS_PER_INPUT_MAX`]. Only for partitions in this process: a peer link carries
    /// single commands.
    Commands {
        commands: CommandGroup,
        wait: bool,
        reply: oneshot::Sender<Vec<CommandResult>>,
    },
    Query {
        query: Query,
        reply: oneshot::Sender<QueryAnswer>,
    },
    Peer(PeerMessage),
    /// Finish the current batch, stop, and acknowledge.
    Shutdown(oneshot::Sender<()>),
}

/// Counters a driver publishes (for `/metrics` and benchmarks).
#[derive(Debug, Default)]
pub struct DriverStats {
    pub batches: AtomicU64,
    pub inputs: AtomicU64,
    pub events: AtomicU64,
    pub syncs: AtomicU64,
    pub sync_us_total: AtomicU64,
    pub in_flight: AtomicU64,
    pub violations: AtomicU64,
    pub last_lsn: AtomicU64,
    /// Rows of the partition's tables held in memory ([`Ledger::row_count`]). Transfer,
    /// credit and cash rows are idempotency records that are never pruned, so this grows
    /// with every operation, and memory with it.
    pub rows: AtomicU64,
    /// Snapshots that could not be written (the partition went on from its log).
    pub snapshot_failures: AtomicU64,
}

/// What recovery found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub partition: PartitionId,
    pub snapshot_lsn: Option<Lsn>,
    /// Chunk files the snapshot recovered from refers to (all read and found intact).
    pub snapshot_chunks: usize,
    pub records_replayed: u64,
    pub torn_bytes_dropped: u64,
    pub last_lsn: Lsn,
    pub transfers_resumed: usize,
}

/// Why a partition cannot start or must stop.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("partition {partition}: storage I/O failed: {source}")]
    Io {
        partition: PartitionId,
        source: io::Error,
    },
    #[error("partition {partition}: log {name} is corrupt at byte offset {offset}: {detail}")]
    Corrupt {
        partition: PartitionId,
        name: String,
        offset: u64,
        detail: String,
    },
    #[error("partition {partition}: log does not replay: {source}")]
    Replay {
        partition: PartitionId,
        source: ApplyError,
    },
}

/// The first `count` chunk files of the snapshots, in order.
async fn read_chunks<S: Storage>(storage: &mut S, count: u32) -> io::Result<Vec<Vec<u8>>> {
    let mut chunks = Vec::with_capacity(count as usize);
    for index in 0..u64::from(count) {
        chunks.push(storage.read_chunk(index).await?);
    }
    Ok(chunks)
}

/// Rebuilds a partition's ledger from its latest good snapshot and its log, dropping a torn
/// tail (durably) and refusing to start on corruption anywhere before the tail.
pub async fn recover<S: Storage>(
    storage: &mut S,
    partition: PartitionId,
    partitions: u32,
) -> Result<(Ledger, RecoveryReport), DriverError> {
    let io_err = |source| DriverError::Io { partition, source };
    let mut report = RecoveryReport {
        partition,
        ..RecoveryReport::default()
    };
    let mut ledger = Ledger::new(partition, partitions);
    for snapshot in storage.read_snapshots().await.map_err(io_err)? {
        let chunks = match read_chunks(storage, snapshot_chunks(&snapshot.bytes)).await {
            Ok(chunks) => chunks,
            Err(error) => {
                tracing::warn!(partition, name = snapshot.name, %error, "snapshot without its chunk files ignored");
                continue;
            }
        };
        match decode_snapshot_with(&snapshot.bytes, &chunks) {
            Ok(state) if state.partition() == partition && state.partitions() == partitions => {
                report.snapshot_lsn = Some(state.last_applied().lsn);
                report.snapshot_chunks = chunks.len();
                ledger = state;
                break;
            }
            Ok(_) => tracing::warn!(
                partition,
                name = snapshot.name,
                "snapshot of another partition layout ignored"
            ),
            Err(error) => {
                tracing::warn!(partition, name = snapshot.name, %error, "bad snapshot ignored")
            }
        }
    }
    let segments = storage
        .read_log(ledger.last_applied().lsn)
        .await
        .map_err(io_err)?;
    let segment_count = segments.len();
    for (i, segment) in segments.into_iter().enumerate() {
        let decoded =
            decode_log(&segment.bytes, segment.first_lsn).map_err(|e| DriverError::Corrupt {
                partition,
                name: segment.name.clone(),
                offset: codec_offset(&e),
                detail: e.to_string(),
            })?;
        if decoded.valid_len < segment.bytes.len() {
            // A torn tail, or the zero-filled space a file storage preallocates. Only the
            // newest segment may have either: an older one was cut to its last record before
            // the next was created.
            if i + 1 != segment_count {
                return Err(DriverError::Corrupt {
                    partition,
                    name: segment.name,
                    offset: decoded.valid_len as u64,
                    detail: "a segment that is not the newest ends in a partial record".into(),
                });
            }
            if decoded.torn_tail {
                report.torn_bytes_dropped = (segment.bytes.len() - decoded.valid_len) as u64;
                tracing::warn!(
                    partition,
                    name = segment.name,
                    dropped = report.torn_bytes_dropped,
                    "torn log tail truncated"
                );
            }
            storage
                .truncate_last(decoded.valid_len as u64)
                .await
                .map_err(io_err)?;
        }
        for record in &decoded.records {
            if record.lsn <= ledger.last_applied().lsn {
                continue;
            }
            let meta = RecordMeta {
                lsn: record.lsn,
                timestamp: record.timestamp,
            };
            ledger
                .apply(meta, &record.event)
                .map_err(|source| DriverError::Replay { partition, source })?;
            report.records_replayed += 1;
        }
    }
    report.last_lsn = ledger.last_applied().lsn;
    Ok((ledger, report))
}

/// Where the answer to one command goes.
#[derive(Debug)]
enum ReplyTo {
    /// The client of an [`Input::Command`].
    One(oneshot::Sender<CommandResult>),
    /// Position `index` of the open group `group` (an [`Input::Commands`]).
    InGroup { group: u64, index: usize },
}

/// The answers of an [`Input::Commands`] while some still wait for a transfer's outcome.
struct OpenGroup {
    results: Vec<CommandResult>,
    /// Answers not yet final; the group is sent once this reaches zero.
    waiting: usize,
    reply: oneshot::Sender<Vec<CommandResult>>,
}

/// A batch: its encoded records and everything that may leave only once they are durable.
/// Every answer joins the batch whose events it reflects, so releasing batches in log order
/// never shows a client or a peer a state that a crash could still take back.
#[derive(Default)]
struct Batch {
    encoded: Vec<u8>,
    first_lsn: Lsn,
    /// Inputs taken into this batch, counting each command of a group.
    inputs: usize,
    replies: Vec<(oneshot::Sender<CommandResult>, CommandResult)>,
    groups: Vec<(oneshot::Sender<Vec<CommandResult>>, Vec<CommandResult>)>,
    answers: Vec<(oneshot::Sender<QueryAnswer>, QueryAnswer)>,
    outbox: Vec<PeerMessage>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.encoded.is_empty()
            && self.replies.is_empty()
            && self.groups.is_empty()
            && self.answers.is_empty()
            && self.outbox.is_empty()
    }
}

/// What a batch sends once it is durable: the answers to its clients and its peer messages.
struct Outgoing {
    replies: Vec<(oneshot::Sender<CommandResult>, CommandResult)>,
    groups: Vec<(oneshot::Sender<Vec<CommandResult>>, Vec<CommandResult>)>,
    answers: Vec<(oneshot::Sender<QueryAnswer>, QueryAnswer)>,
    outbox: Vec<PeerMessage>,
    transport: Arc<dyn Transport>,
}

impl Outgoing {
    fn take(batch: &mut Batch, transport: Arc<dyn Transport>) -> Outgoing {
        Outgoing {
            replies: std::mem::take(&mut batch.replies),
            groups: std::mem::take(&mut batch.groups),
            answers: std::mem::take(&mut batch.answers),
            outbox: std::mem::take(&mut batch.outbox),
            transport,
        }
    }

    /// Peer messages first, then answers: a client told that its transfer is committed can
    /// count on the destination's Confirm being on its way already, so whatever it sends the
    /// destination next through the same path (the local inboxes, one peer link) arrives
    /// behind the credit.
    fn send(self) {
        for message in self.outbox {
            self.transport.send(message);
        }
        for (reply, result) in self.replies {
            let _ = reply.send(result);
        }
        for (reply, results) in self.groups {
            let _ = reply.send(results);
        }
        for (reply, answer) in self.answers {
            let _ = reply.send(answer);
        }
    }
}

/// What a commit gives back: the storage, the batch's buffer for reuse, and the outcome.
type CommitOutput<S> = (S, Vec<u8>, Result<(), DriverError>);

/// A batch being written and synced (one future polled by the driver while it goes on
/// applying the next batch).
struct InFlight<S> {
    commit: Pin<Box<dyn Future<Output = CommitOutput<S>> + Send>>,
    batch: Batch,
    last_lsn: Lsn,
    started: Instant,
    /// A snapshot of the state this batch leaves, to be written once the batch is durable.
    snapshot: Option<SnapshotImage>,
}

/// A snapshot being written, alongside the log's commits.
struct SnapshotWrite {
    /// Encodes and writes; resolves to the snapshot's length.
    write: Pin<Box<dyn Future<Output = io::Result<usize>> + Send>>,
    lsn: Lsn,
    /// Chunks whose files exist once the write is done.
    chunks_frozen: usize,
}

/// The driver of one partition. Build with [`PartitionDriver::new`] after [`recover`], then
/// `run` it as a task.
pub struct PartitionDriver<S: Storage> {
    partition: PartitionId,
    ledger: Ledger,
    coordinator: Coordinator,
    /// `None` while a commit owns it.
    storage: Option<S>,
    transport: Arc<dyn Transport>,
    inbox: mpsc::Receiver<Input>,
    config: DriverConfig,
    stats: Arc<DriverStats>,
    clock_origin: Instant,
    /// The batch being filled; it is committed as soon as the one before it is durable.
    batch: Batch,
    /// The buffer of the last committed batch, reused by the next one.
    spare_buffer: Vec<u8>,
    events: Vec<Event>,
    /// Clients waiting for the outcome of a pending transfer.
    waiters: FxHashMap<TransferKey, Vec<ReplyTo>>,
    waiter_count: usize,
    /// See [`PartitionDriver::input_clock`]; cleared before each input and timer tick.
    clock: Option<(Micros, Timestamp)>,
    /// Events applied since the driver started (published to `stats.events` once per input).
    events_applied: u64,
    /// A snapshot is taken and not yet written: no second one until it is.
    snapshot_pending: bool,
    /// Chunks of the transfers table whose chunk files are written (see [`walletd_core::log::snapshot`]):
    /// those of the snapshot recovered from ([`PartitionDriver::with_chunks_written`]), then
    /// those of every snapshot this driver wrote.
    chunks_written: usize,
    groups: FxHashMap<u64, OpenGroup>,
    next_group: u64,
    events_since_snapshot: u64,
}

impl<S: Storage> PartitionDriver<S> {
    /// Tells a new driver that the chunk files of the snapshot it recovered from (the first
    /// `chunks` of them, see [`RecoveryReport::snapshot_chunks`]) are on its storage, so its
    /// snapshots refer to them instead of writing them again.
    pub fn with_chunks_written(mut self, chunks: usize) -> Self {
        assert!(
            self.ledger.final_chunks_from(0) >= chunks,
            "chunk files hold sealed chunks of final rows"
        );
        self.chunks_written = chunks;
        self
    }

    /// A driver for a recovered `ledger`. Unfinished transfers resume at once.
    pub fn new(
        ledger: Ledger,
        storage: S,
        transport: Arc<dyn Transport>,
        inbox: mpsc::Receiver<Input>,
        config: DriverConfig,
        stats: Arc<DriverStats>,
    ) -> PartitionDriver<S> {
        assert!(config.batch_inputs_max > 0);
        let rows = ledger.unfinished_transfers();
        let coordinator = Coordinator::rebuild(config.coordinator, ledger.partitions(), &rows, 0);
        stats
            .last_lsn
            .store(ledger.last_applied().lsn, Ordering::Relaxed);
        PartitionDriver {
            partition: ledger.partition(),
            ledger,
            coordinator,
            storage: Some(storage),
            transport,
            inbox,
            config,
            stats,
            clock_origin: Instant::now(),
            batch: Batch {
                encoded: Vec::with_capacity(1 << 20),
                ..Batch::default()
            },
            spare_buffer: Vec::with_capacity(1 << 20),
            events: Vec::new(),
            waiters: FxHashMap::default(),
            waiter_count: 0,
            clock: None,
            events_applied: 0,
            snapshot_pending: false,
            chunks_written: 0,
            groups: FxHashMap::default(),
            next_group: 0,
            events_since_snapshot: 0,
        }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn now(&self) -> Micros {
        self.clock_origin.elapsed().as_micros() as Micros
    }

    /// The driver's clock and the wall clock for the input being handled, read once per
    /// input: the records of a command group share one timestamp, and a clock read per
    /// record would cost more than applying it.
    fn input_clock(&mut self) -> (Micros, Timestamp) {
        if self.clock.is_none() {
            self.clock = Some((self.now(), wall_clock_us()));
        }
        self.clock.expect("just read")
    }

    /// Lets the coordinator act on the time (timeouts, resends); what it asks for joins the
    /// current batch.
    fn tick(&mut self) {
        self.clock = None;
        self.coordinator.on_tick(self.now());
        self.drain_coordinator();
    }

    /// Runs until a [`Input::Shutdown`] or until every sender of the inbox is gone, and in
    /// either case until everything taken in is durable. Returns the storage on a clean stop;
    /// an I/O error is fatal and returned.
    ///
    /// Pipelined group commit: while one batch is written and synced, the next one fills
    /// (inputs are decided and applied at once); it is committed the moment the first is
    /// durable. The partition thus never waits for the disk while there is work, and a batch
    /// is as large as what arrived during one sync.
    pub async fn run(mut self) -> Result<S, DriverError> {
        // Rebuilt transfers have their first resend due now.
        self.tick();
        // The first batch is committed even when empty: from then on the stats show a running
        // partition (the simulator waits for that after a restart).
        let mut in_flight: Option<InFlight<S>> = self.start_commit();
        let mut snapshot: Option<SnapshotWrite> = None;
        let mut stopping: Option<Option<oneshot::Sender<()>>> = None;
        loop {
            self.stats
                .events
                .store(self.events_applied, Ordering::Relaxed);
            if in_flight.is_none() {
                if !self.batch.is_empty() {
                    in_flight = self.start_commit();
                }
                if in_flight.is_none() && self.batch.is_empty() && snapshot.is_none() {
                    if let Some(ack) = stopping {
                        if let Some(ack) = ack {
                            let _ = ack.send(());
                        }
                        return Ok(self.storage.take().expect("no commit in flight"));
                    }
                }
            }
            let accepting = stopping.is_none() && self.batch.inputs < self.config.batch_inputs_max;
            let deadline = self
                .coordinator
                .next_due()
                .map(|due| self.clock_origin + Duration::from_micros(due));
            // `biased`: tokio's select! otherwise polls its branches in a random order drawn
            // from a process-wide seed, which no simulation seed controls. A finished commit
            // first (it releases answers and frees the disk for the next batch), then inputs;
            // timers cannot starve, every batch ticks the coordinator too.
            tokio::select! {
                biased;
                (storage, buffer, result) = poll_commit(&mut in_flight), if in_flight.is_some() => {
                    let done = in_flight.take().expect("a commit was in flight");
                    result?;
                    let lsn = done.last_lsn;
                    if let Some(image) = self.finish_commit(storage, buffer, done) {
                        snapshot = Some(self.start_snapshot(lsn, image));
                    }
                }
                result = poll_snapshot(&mut snapshot), if snapshot.is_some() => {
                    let done = snapshot.take().expect("a snapshot was being written");
                    self.snapshot_pending = false;
                    let partition = self.partition;
                    match result {
                        Ok(bytes) => {
                            self.chunks_written = done.chunks_frozen;
                            tracing::info!(partition, lsn = done.lsn, bytes, chunks = done.chunks_frozen, "snapshot written");
                        }
                        // A snapshot only shortens recovery: the log holds everything. So the
                        // partition goes on (a disk too full for a snapshot may still take
                        // the log's appends) and tries again at the next one, which writes
                        // the chunk files of this one too. A disk that is failing shows at
                        // the log's next sync, which does stop the partition.
                        Err(error) => {
                            self.stats.snapshot_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(partition, lsn = done.lsn, %error, "snapshot not written; going on from the log, the next snapshot tries again");
                        }
                    }
                }
                input = self.inbox.recv(), if accepting => match input {
                    Some(input) => {
                        // Drained in rounds of about `DRAIN_INPUTS_MAX`, so that a commit that
                        // finished meanwhile is noticed (and the disk given the next batch)
                        // after one round, not after everything that kept arriving.
                        let round_end = (self.batch.inputs + DRAIN_INPUTS_MAX)
                            .min(self.config.batch_inputs_max);
                        let mut shutdown = self.handle(input);
                        while shutdown.is_none() && self.batch.inputs < round_end {
                            let Ok(input) = self.inbox.try_recv() else { break };
                            shutdown = self.handle(input);
                        }
                        self.tick();
                        if shutdown.is_some() {
                            stopping = Some(shutdown);
                        }
                    }
                    None => stopping = Some(None),
                },
                _ = sleep_until_due(deadline), if deadline.is_some() => self.tick(),
            }
        }
    }

    /// Hands the current batch to a commit future, or releases it at once when it holds no
    /// records (everything it answers from is then already durable). A snapshot that is due
    /// is encoded now, from exactly the state the batch leaves, and written after its sync.
    fn start_commit(&mut self) -> Option<InFlight<S>> {
        #[cfg(any(debug_assertions, madsim))]
        if let Err(violation) = self.ledger.check_conservation() {
            panic!(
                "partition {}: conservation violated: {violation}",
                self.partition
            );
        }
        let next = Batch {
            encoded: std::mem::take(&mut self.spare_buffer),
            ..Batch::default()
        };
        let mut batch = std::mem::replace(&mut self.batch, next);
        // Before anything of the batch is answered, so a client that saw its answer sees
        // the gauges count it.
        self.publish_gauges();
        #[cfg(any(test, madsim))]
        if walletd_core::protocol::bugs::enabled(walletd_core::protocol::bugs::Bug::ReplyBeforeSync)
        {
            self.release(&mut batch);
        }
        if batch.encoded.is_empty() {
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            self.release(&mut batch);
            self.spare_buffer = std::mem::take(&mut batch.encoded);
            return None;
        }
        let last_lsn = self.ledger.last_applied().lsn;
        // Only the image is taken here; it is encoded where the storage writes it. Chunks of
        // the transfers table that have become final since the last go to chunk files.
        let snapshot = self.snapshot_due().then(|| {
            let written = self.chunks_written;
            let frozen = written + self.ledger.final_chunks_from(written);
            SnapshotImage::with_chunks(&self.ledger, ChunkPlan { written, frozen })
        });
        if snapshot.is_some() {
            self.events_since_snapshot = 0;
            self.snapshot_pending = true;
        }
        let mut storage = self.storage.take().expect("one commit at a time");
        let bytes = std::mem::take(&mut batch.encoded);
        let (partition, first_lsn) = (self.partition, batch.first_lsn);
        // Answers and peer messages leave from wherever the batch becomes durable (file
        // storage: its writing thread), not when this task next gets to run: on a busy
        // machine that was most of a batch's wait. Should the write fail, they are dropped
        // unsent, and the partition stops.
        let outgoing = Outgoing::take(&mut batch, Arc::clone(&self.transport));
        let commit = Box::pin(async move {
            let on_durable = Box::new(move || outgoing.send());
            let (bytes, result) = storage.append_durably(first_lsn, bytes, on_durable).await;
            let result = result.map_err(|source| DriverError::Io { partition, source });
            (storage, bytes, result)
        });
        Some(InFlight {
            commit,
            batch,
            last_lsn,
            started: Instant::now(),
            snapshot,
        })
    }

    /// Starts writing a snapshot taken at `lsn`, now that the log is durable up to there.
    fn start_snapshot(&mut self, lsn: Lsn, image: SnapshotImage) -> SnapshotWrite {
        let storage = self.storage.as_mut().expect("no commit in flight");
        let chunks_frozen = image.chunks().frozen;
        let encode = Box::new(move |out: &mut dyn SnapshotOut| image.write_to(out));
        SnapshotWrite {
            write: Box::pin(storage.write_snapshot(lsn, encode)),
            chunks_frozen,
            lsn,
        }
    }

    /// A batch is durable: take the storage back and release what waited for it. Returns
    /// the snapshot the batch carried, now safe to write.
    fn finish_commit(
        &mut self,
        storage: S,
        mut buffer: Vec<u8>,
        mut done: InFlight<S>,
    ) -> Option<SnapshotImage> {
        assert!(self.storage.is_none(), "the commit owned the storage");
        self.storage = Some(storage);
        buffer.clear();
        self.spare_buffer = buffer;
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .sync_us_total
            .fetch_add(done.started.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.stats.last_lsn.store(done.last_lsn, Ordering::Relaxed);
        self.publish_gauges();
        self.release(&mut done.batch);
        done.snapshot.take()
    }

    /// Publishes how many transfers the coordinator is carrying out (the simulator waits for
    /// zero everywhere to call a cluster quiet) and how many rows the ledger holds.
    fn publish_gauges(&self) {
        self.stats
            .in_flight
            .store(self.coordinator.in_flight() as u64, Ordering::Relaxed);
        self.stats
            .rows
            .store(self.ledger.row_count() as u64, Ordering::Relaxed);
    }

    /// Feeds one input to the state machines. Returns the shutdown acknowledgement if asked to stop.
    fn handle(&mut self, input: Input) -> Option<oneshot::Sender<()>> {
        self.clock = None;
        match input {
            Input::Command {
                command,
                wait,
                reply,
            } => {
                self.batch.inputs += 1;
                let result = self.execute(&command);
                match self.pending_key(&command, &result, wait) {
                    Some(key) => self.add_waiter(key, ReplyTo::One(reply)),
                    None => self.batch.replies.push((reply, result)),
                }
            }
            Input::Commands {
                commands,
                wait,
                reply,
            } => self.handle_group(&commands, wait, reply),
            Input::Query { query, reply } => {
                self.batch.inputs += 1;
                let answer = match query {
                    Query::Account(account) => {
                        QueryAnswer::Account(self.ledger.account(&account).copied())
                    }
                    Query::Transfer(key) => QueryAnswer::Transfer(self.ledger.transfer(&key)),
                };
                self.batch.answers.push((reply, answer));
            }
            Input::Peer(PeerMessage::Request { request, .. }) => {
                self.batch.inputs += 1;
                match self.execute(&request.command()) {
                    Ok(Reply::Phase(result)) => {
                        let key = request.transfer.key();
                        let response = walletd_core::protocol::coordinator::PhaseResponse {
                            phase: request.phase,
                            key,
                            result,
                        };
                        self.batch.outbox.push(PeerMessage::Response(response));
                    }
                    Ok(other) => {
                        unreachable!("phase commands reply with a phase result, got {other:?}")
                    }
                    Err(error) => {
                        tracing::warn!(partition = self.partition, %error, "phase request refused")
                    }
                }
            }
            Input::Peer(PeerMessage::Response(response)) => {
                self.batch.inputs += 1;
                let now = self.now();
                self.coordinator.on_response(&response, now);
                self.drain_coordinator();
            }
            Input::Shutdown(ack) => return Some(ack),
        }
        None
    }

    /// Executes the commands of one [`Input::Commands`] in order; their answers leave together.
    fn handle_group(
        &mut self,
        commands: &CommandGroup,
        wait: bool,
        reply: oneshot::Sender<Vec<CommandResult>>,
    ) {
        self.batch.inputs += commands.len();
        let group = self.next_group;
        self.next_group += 1;
        // The group is registered before its commands run, holding one extra `waiting` so it
        // cannot complete half-built should a command's outcome be decided meanwhile.
        self.groups.insert(
            group,
            OpenGroup {
                results: Vec::with_capacity(commands.len()),
                waiting: 1,
                reply,
            },
        );
        for (first, chunk) in (0..)
            .step_by(PREFETCH_COMMANDS_MAX)
            .zip(commands.picks().chunks(PREFETCH_COMMANDS_MAX))
        {
            self.ledger
                .prefetch(chunk.iter().map(|&pick| commands.get(pick)));
            for (offset, &pick) in chunk.iter().enumerate() {
                let command = commands.get(pick);
                let result = self.execute(command);
                let pending = self.pending_key(command, &result, wait);
                let open = self.groups.get_mut(&group).expect("the group is open");
                open.results.push(result);
                if let Some(key) = pending {
                    open.waiting += 1;
                    let index = first + offset;
                    self.add_waiter(key, ReplyTo::InGroup { group, index });
                }
            }
        }
        self.resolve_in_group(group, None);
    }

    /// The transfer whose outcome the client of `command` waits for, if it asked to, the
    /// transfer is still pending, and there is room for one more waiter.
    fn pending_key(
        &self,
        command: &Command,
        result: &CommandResult,
        wait: bool,
    ) -> Option<TransferKey> {
        match (command, result) {
            (Command::Transfer(t), Ok(Reply::Transfer(TransferStatus::Pending)))
                if wait && self.waiter_count < self.config.waiters_max =>
            {
                // A waiter must be registered before the decision it waits for; should the
                // decision already be applied, the client gets `Pending` and asks again.
                let key = t.key();
                let row = self.ledger.transfer(&key)?;
                (row.state.status() == TransferStatus::Pending).then_some(key)
            }
            _ => None,
        }
    }

    fn add_waiter(&mut self, key: TransferKey, to: ReplyTo) {
        self.waiters.entry(key).or_default().push(to);
        self.waiter_count += 1;
    }

    /// Settles answer `index` of `group` (when given) and, once none is left waiting, puts
    /// the group's answers into the current batch.
    fn resolve_in_group(&mut self, group: u64, answer: Option<(usize, CommandResult)>) {
        let open = self
            .groups
            .get_mut(&group)
            .expect("a waiter's group is open");
        if let Some((index, result)) = answer {
            open.results[index] = result;
        }
        open.waiting -= 1;
        if open.waiting == 0 {
            let open = self.groups.remove(&group).expect("the group is open");
            self.batch.groups.push((open.reply, open.results));
        }
    }

    /// A transfer's outcome was decided by an event of the current batch: its waiters' answers
    /// join that batch.
    fn resolve_waiters(&mut self, key: &TransferKey) {
        let Some(waiting) = self.waiters.remove(key) else {
            return;
        };
        self.waiter_count -= waiting.len();
        let status = self
            .ledger
            .transfer(key)
            .expect("a decided transfer has a row")
            .state
            .status();
        debug_assert_ne!(status, TransferStatus::Pending);
        for to in waiting {
            let answer = Ok(Reply::Transfer(status));
            match to {
                ReplyTo::One(reply) => self.batch.replies.push((reply, answer)),
                ReplyTo::InGroup { group, index } => {
                    self.resolve_in_group(group, Some((index, answer)))
                }
            }
        }
    }

    /// Decides `command`, applies its events and encodes them into the current batch.
    fn execute(&mut self, command: &Command) -> CommandResult {
        debug_assert!(self.events.is_empty());
        let result = self.ledger.decide(command, &mut self.events);
        if self.events.is_empty() {
            return result;
        }
        let (now, wall) = self.input_clock();
        let wall = wall.max(self.ledger.last_applied().timestamp);
        for i in 0..self.events.len() {
            let event = self.events[i];
            let lsn = self.ledger.last_applied().lsn + 1;
            if self.batch.encoded.is_empty() {
                self.batch.first_lsn = lsn;
            }
            let meta = RecordMeta {
                lsn,
                timestamp: wall,
            };
            self.ledger
                .apply(meta, &event)
                .expect("events from decide always apply");
            encode_record(
                &Record {
                    lsn,
                    timestamp: wall,
                    event,
                },
                &mut self.batch.encoded,
            );
            self.coordinator.on_event(&event, now);
            if let Event::TransferDecided { key, .. } = event {
                self.resolve_waiters(&key);
            }
        }
        self.events_since_snapshot += self.events.len() as u64;
        self.events_applied += self.events.len() as u64;
        self.events.clear();
        self.drain_coordinator();
        result
    }

    /// Carries out everything the coordinator asked for. Local commands run at once (their
    /// events join the batch); messages wait in the outbox until the batch is durable.
    fn drain_coordinator(&mut self) {
        while let Some(output) = self.coordinator.poll_output() {
            match output {
                Output::Send { request, .. } => {
                    self.batch.outbox.push(PeerMessage::Request {
                        from: self.partition,
                        request,
                    });
                }
                Output::Execute(command) => {
                    if let Err(error) = self.execute(&command) {
                        tracing::error!(partition = self.partition, %error, "coordinator command refused");
                    }
                }
                Output::Violation { key, detail } => {
                    self.stats.violations.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        partition = self.partition,
                        ?key,
                        detail,
                        "TC/C protocol violation"
                    );
                }
            }
        }
    }

    /// Sends every reply, answer and peer message of a durable batch.
    fn release(&self, batch: &mut Batch) {
        Outgoing::take(batch, Arc::clone(&self.transport)).send();
    }

    /// Whether the batch being committed should be followed by a snapshot.
    ///
    /// A snapshot costs time in proportion to the rows it holds inline: every row but those
    /// of chunk files already written. Taking one only once the log since the last holds at
    /// least half as many events as there are such rows keeps that cost at most two rows per
    /// event, however large the state becomes, and recovery replays at most about half a
    /// state's worth of records. Half, not all: most events add a row (every transfer does),
    /// so the log since the last snapshot would never catch up with a state growing with it.
    fn snapshot_due(&self) -> bool {
        let every = self.config.snapshot_every_events;
        let in_chunks = self.chunks_written * walletd_core::ledger::CHUNK_ROWS;
        let half_the_rows = self.ledger.row_count().saturating_sub(in_chunks) as u64 / 2;
        !self.snapshot_pending
            && every != 0
            && self.events_since_snapshot >= every.max(half_the_rows)
    }
}

/// The output of the commit in flight (the caller polls this only when there is one).
async fn poll_commit<S>(in_flight: &mut Option<InFlight<S>>) -> CommitOutput<S> {
    match in_flight {
        Some(in_flight) => in_flight.commit.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The outcome of the snapshot write in progress (the caller polls this only when there is one).
async fn poll_snapshot(snapshot: &mut Option<SnapshotWrite>) -> io::Result<usize> {
    match snapshot {
        Some(snapshot) => snapshot.write.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline` (the caller polls this only when there is one).
async fn sleep_until_due(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn codec_offset(error: &CodecError) -> u64 {
    match error {
        CodecError::Corrupt { offset, .. }
        | CodecError::UnsupportedVersion { offset, .. }
        | CodecError::LsnGap { offset, .. } => *offset,
    }
}

/// Wall-clock microseconds since the Unix epoch (virtual under the simulator).
pub fn wall_clock_us() -> Timestamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as Timestamp)
}

#[cfg(test)]
mod tests;
