//! The partition driver: the async loop that runs one [`PartitionMachine`].
//!
//! Every decision is the machine's; the driver owns only what the machine must not: the
//! inbox, the storage and its futures, the timers, the clocks, and the reply channels (which
//! are the machine's reply tokens, so a durable batch's answers need no lookup). Commits are
//! pipelined: the next batch is decided and applied while the previous one syncs, and its
//! answers leave strictly after it (the machine's release rule). The same source runs on
//! tokio in production and under madsim in the simulator.
//!
//! ```text
//!   inbox ──► machine.handle_* ──► machine.poll_commit ──► append + sync ──► release
//!   timer ──► machine.handle_tick          ▲                                   │
//!                                          └──── machine.handle_durable ◄──────┘
//! ```
//!
//! Tests and the simulator can watch a driver through [`observe`] (compiled only into them):
//! the state a partition starts from, every batch as it is cut, and every release as it
//! leaves.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use walletd_core::ledger::{ApplyError, Command, Ledger, Prefetched, PREFETCH_ROWS_LAG};
use walletd_core::log::recovery::{Recovery, RecoveryError};
use walletd_core::log::snapshot::{snapshot_chunks, SnapshotImage, SnapshotOut};
use walletd_core::model::event::{Lsn, Timestamp};
use walletd_core::model::partition::PartitionId;
use walletd_core::protocol::machine::{Now, PartitionMachine, PhaseSpan, Release, ReplyTokens};
use walletd_core::replica::RaftMessage;

use crate::histogram::{Histogram, DURATION_US_BOUNDS, SIZE_BOUNDS};
use crate::storage::{Storage, StoredSnapshot};
use crate::transport::{PeerMessage, Transport};

#[cfg(any(test, madsim))]
pub mod observe;

pub use walletd_core::log::recovery::RecoveryReport;
/// The driver's limits are its machine's.
pub use walletd_core::protocol::machine::MachineConfig as DriverConfig;
pub use walletd_core::protocol::message::{
    CommandGroup, CommandResult, Query, QueryAnswer, COMMANDS_PER_INPUT_MAX,
};

/// Inputs (each command of a group counts) taken from the inbox before the driver looks at
/// its commit again.
const DRAIN_INPUTS_MAX: usize = 1024;

/// Inputs taken from the inbox at once, whose rows the machine prefetches before it handles
/// the first of them: the cache misses of their lookups (accounts, idempotency slots) then
/// overlap instead of coming one after another. A window may carry the open batch past
/// `batch_inputs_max` by fewer than this many inputs.
const PREFETCH_WINDOW: usize = 16;

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
    /// Phase messages for this partition, handled in order; at least one and at most
    /// [`PEER_MESSAGES_PER_INPUT_MAX`](walletd_core::protocol::message::PEER_MESSAGES_PER_INPUT_MAX).
    /// What a batch sends to one partition travels as one input ([`Transport::send_all`]),
    /// and across a peer link as one wire message.
    Peers(Vec<PeerMessage>),
    /// Messages of the partition's Raft group for its replica here (a replicated partition
    /// only, see [`crate::replica`]); 1..=[`walletd_core::wire::RAFT_MESSAGES_MAX`] of them, and within a wire
    /// message's bound, so that a link carries them as one.
    Raft {
        partition: PartitionId,
        messages: Vec<RaftMessage>,
    },
    /// A membership message of the partition's group, from node `from` (a replicated
    /// partition only, see [`walletd_core::replica::membership`]).
    Membership {
        partition: PartitionId,
        from: walletd_core::model::partition::NodeId,
        message: walletd_core::replica::membership::MembershipMessage,
    },
    /// A catch-up message of the partition's group, from node `from`: a fetch of records
    /// or the records (a replicated partition only, see
    /// [`walletd_core::replica::CatchUpMessage`]).
    CatchUp {
        partition: PartitionId,
        from: walletd_core::model::partition::NodeId,
        message: walletd_core::replica::CatchUpMessage,
    },
    /// Finish the current batch, stop, and acknowledge.
    Shutdown(oneshot::Sender<()>),
}

/// Counters and histograms a driver publishes (for `/metrics` and benchmarks).
#[derive(Debug)]
pub struct DriverStats {
    pub batches: AtomicU64,
    pub inputs: AtomicU64,
    pub events: AtomicU64,
    pub syncs: AtomicU64,
    /// Time to make a batch durable, in µs (its count is `syncs`): append and `fdatasync` of
    /// the log, or with a node journal the wait for the journal's round.
    pub sync_us: Histogram,
    /// Records per batch that wrote (one group commit, one sync).
    pub batch_records: Histogram,
    /// Inputs waiting in the inbox when the driver takes a round of them, the one it woke
    /// for included: sampled once per round, not per input.
    pub inbox_depth: Histogram,
    /// Time to encode, write and sync a snapshot, in µs (written ones only; failures are
    /// `snapshot_failures`).
    pub snapshot_us: Histogram,
    /// Cross-partition transfers of which this partition is home: wall-clock µs from the
    /// Try (the home's `accepted_at`) to the decision (`decided_at`, the commit point).
    pub try_to_decision_us: Histogram,
    /// The same transfers, from the decision to the end (`finished_at`): 0 for a transfer
    /// that committed at its commit point, the Cancel's round trip for one cancelled.
    pub decision_to_finish_us: Histogram,
    pub in_flight: AtomicU64,
    pub violations: AtomicU64,
    /// The last durable lsn: every record up to it is synced.
    pub last_lsn: AtomicU64,
    /// Woken (every waiter) each time `last_lsn` advances, so a reader that waits for new
    /// durable records (the HTTP event feed's long-poll) sleeps until there are some rather
    /// than polling. Register with `notified()` and `enable()` before reading `last_lsn`.
    pub durable: Notify,
    /// Rows of the partition's tables held in memory ([`Ledger::rows_in_memory`]). Cash rows
    /// are idempotency records that are never pruned, so this grows with them; rows of the
    /// transfers table (home and credit rows) leave memory once their chunk file is durable.
    pub rows: AtomicU64,
    /// Rows of the transfers table in memory, home and credit rows: those not yet in a
    /// durable chunk file (bounded by `MachineConfig::transfer_rows_in_memory_max` while
    /// chunks become final).
    pub transfer_rows_in_memory: AtomicU64,
    /// Chunks of transfer rows on disk only, read back by retries of old transfers.
    pub cold_transfer_chunks: AtomicU64,
    /// Snapshots that could not be written (the partition went on from its log).
    pub snapshot_failures: AtomicU64,
}

impl Default for DriverStats {
    fn default() -> Self {
        DriverStats {
            batches: AtomicU64::new(0),
            inputs: AtomicU64::new(0),
            events: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            sync_us: Histogram::new(&DURATION_US_BOUNDS),
            batch_records: Histogram::new(&SIZE_BOUNDS),
            inbox_depth: Histogram::new(&SIZE_BOUNDS),
            snapshot_us: Histogram::new(&DURATION_US_BOUNDS),
            try_to_decision_us: Histogram::new(&DURATION_US_BOUNDS),
            decision_to_finish_us: Histogram::new(&DURATION_US_BOUNDS),
            in_flight: AtomicU64::new(0),
            violations: AtomicU64::new(0),
            last_lsn: AtomicU64::new(0),
            durable: Notify::new(),
            rows: AtomicU64::new(0),
            transfer_rows_in_memory: AtomicU64::new(0),
            cold_transfer_chunks: AtomicU64::new(0),
            snapshot_failures: AtomicU64::new(0),
        }
    }
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
    #[error("partition {partition}: {detail}")]
    Gap {
        partition: PartitionId,
        detail: String,
    },
    #[error("partition {partition}: log does not replay: {source}")]
    Replay {
        partition: PartitionId,
        source: ApplyError,
    },
}

/// Rebuilds a partition's ledger from its latest good snapshot and its log: the I/O half of
/// [`Recovery`], which decides what to believe. A cut it asks for is made durably.
pub async fn recover<S: Storage>(
    storage: &mut S,
    partition: PartitionId,
    partitions: u32,
) -> Result<(Ledger, RecoveryReport), DriverError> {
    let io_err = |source| DriverError::Io { partition, source };
    let mut recovery = Recovery::new(partition, partitions);
    // Chunk files are read through the reader the ledger keeps: indexed ones stay on disk.
    // The reads are synchronous, which recovery, before the partition serves, can afford.
    let chunks = storage.chunk_reader();
    for listed in storage.list_snapshots().await.map_err(io_err)? {
        // One snapshot in memory at a time: a bad one is dropped before an older is read.
        let bytes = storage.read_snapshot(&listed).await.map_err(io_err)?;
        let snapshot = StoredSnapshot {
            lsn: listed.lsn,
            name: listed.name,
            bytes,
        };
        if let Err(error) = snapshot_chunks(&snapshot.bytes) {
            tracing::warn!(partition, name = snapshot.name, %error, "damaged snapshot ignored; falling back to an older one or the log");
            continue;
        }
        // A chunk file missing or damaged makes the snapshot bad: an older one is tried.
        if recovery.offer_snapshot_cold(&snapshot.name, &snapshot.bytes, chunks.clone()) {
            break;
        }
    }
    let segments = storage
        .list_log(recovery.replay_after())
        .await
        .map_err(io_err)?;
    let newest = segments.len().saturating_sub(1);
    // One segment in memory at a time: its bytes are dropped before the next is read.
    for (i, segment) in segments.iter().enumerate() {
        let bytes = storage.read_segment(segment).await.map_err(io_err)?;
        let cut = recovery
            .replay_segment(&segment.name, segment.first_lsn, &bytes, i == newest)
            .map_err(|error| DriverError::from_recovery(partition, error))?;
        if let Some(len) = cut {
            assert_eq!(i, newest, "only the newest segment is ever cut");
            storage.truncate_last(len).await.map_err(io_err)?;
        }
    }
    // A node journal may hold acknowledged records the log lost with its unsynced tail.
    for (first_lsn, bytes) in storage.take_journaled() {
        let missing = recovery
            .replay_journaled(first_lsn, &bytes)
            .map_err(|error| DriverError::from_recovery(partition, error))?;
        if let Some((lsn, offset)) = missing {
            storage
                .append(lsn, &bytes[offset..])
                .await
                .map_err(io_err)?;
        }
    }
    // What was read back may still sit in the page cache only (a process crash keeps
    // unsynced writes; a power loss would not): it is made durable, with the newest
    // segment's directory entry, before anything that rests on it is answered or sent.
    if !crate::known_bug!(RecoveryTrustsUnsynced) {
        storage.sync().await.map_err(io_err)?;
    }
    let (mut ledger, report) = recovery.finish();
    ledger.attach_chunk_reader(chunks);
    Ok((ledger, report))
}

impl DriverError {
    fn from_recovery(partition: PartitionId, error: RecoveryError) -> DriverError {
        match error {
            RecoveryError::Corrupt {
                name,
                offset,
                detail,
            } => DriverError::Corrupt {
                partition,
                name,
                offset,
                detail,
            },
            RecoveryError::Replay(source) => DriverError::Replay { partition, source },
            gap @ RecoveryError::Gap { .. } => DriverError::Gap {
                partition,
                detail: gap.to_string(),
            },
        }
    }
}

/// The driver's reply tokens: the clients' channels themselves.
pub struct Channels;

impl ReplyTokens for Channels {
    type Command = oneshot::Sender<CommandResult>;
    type Group = oneshot::Sender<Vec<CommandResult>>;
    type Query = oneshot::Sender<QueryAnswer>;
}

/// The log is durable through `lsn`: readers of the log (history, the event feed) may read up
/// to it, and long-polls waiting for it wake. Never moves back.
fn publish_durable(stats: &DriverStats, lsn: Lsn) {
    if stats.last_lsn.fetch_max(lsn, Ordering::Release) < lsn {
        stats.durable.notify_waiters();
    }
}

/// Sends what a durable batch releases: peer messages first (the machine's release rule),
/// then the answers. A client that went away is no error. `batch` (the partition and the
/// batch's last lsn) is for the observer of tests and the simulator ([`observe`]), which is
/// shown the release first.
#[cfg_attr(not(any(test, madsim)), allow(unused_variables))]
fn send_release(batch: (PartitionId, Lsn), release: Release<Channels>, transport: &dyn Transport) {
    #[cfg(any(test, madsim))]
    observe::releasing(batch.0, batch.1, &release);
    deliver(release, transport);
}

/// Sends a release as it is: peer messages first, then the answers (a client that went away
/// is no error). Shared with the replica driver.
pub(crate) fn deliver(release: Release<Channels>, transport: &dyn Transport) {
    transport.send_all(release.peer_messages);
    for (reply, result) in release.replies {
        let _ = reply.send(result);
    }
    for (reply, results) in release.groups {
        let _ = reply.send(results);
    }
    for (reply, answer) in release.answers {
        let _ = reply.send(answer);
    }
}

/// What a commit gives back: the storage, the batch's buffer for reuse, and the outcome.
type CommitOutput<S> = (S, Vec<u8>, Result<(), DriverError>);

/// A batch being written and synced (one future polled by the driver while it goes on
/// applying the next batch).
struct InFlight<S> {
    commit: Pin<Box<dyn Future<Output = CommitOutput<S>> + Send>>,
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
    started: Instant,
}

/// The driver of one partition. Build with [`PartitionDriver::new`] after [`recover`], then
/// `run` it as a task.
pub struct PartitionDriver<S: Storage> {
    machine: PartitionMachine<Channels>,
    /// `None` while a commit owns it.
    storage: Option<S>,
    transport: Arc<dyn Transport>,
    inbox: mpsc::Receiver<Input>,
    /// Inputs taken from the inbox together (see [`PREFETCH_WINDOW`]); empty between rounds.
    window: Vec<Input>,
    /// The phase timestamps of the transfers that phase responses are about, before they
    /// are handled (for the transfer histograms of [`DriverStats`]).
    /// The machine's transfer step spans, taken once a round (buffer kept for reuse).
    phase_spans: Vec<PhaseSpan>,
    stats: Arc<DriverStats>,
    clock_origin: Instant,
}

impl<S: Storage> PartitionDriver<S> {
    /// A driver for a recovered `ledger`. Unfinished transfers resume at once.
    pub fn new(
        ledger: Ledger,
        storage: S,
        transport: Arc<dyn Transport>,
        inbox: mpsc::Receiver<Input>,
        config: DriverConfig,
        stats: Arc<DriverStats>,
    ) -> PartitionDriver<S> {
        let clock_origin = Instant::now();
        stats
            .last_lsn
            .store(ledger.last_applied().lsn, Ordering::Relaxed);
        let now = Now {
            micros: 0,
            wall_us: wall_clock_us(),
        };
        #[cfg(any(test, madsim))]
        observe::started(ledger.partition(), &ledger);
        PartitionDriver {
            machine: PartitionMachine::new(ledger, config, now),
            storage: Some(storage),
            transport,
            inbox,
            window: Vec::with_capacity(PREFETCH_WINDOW),
            phase_spans: Vec::new(),
            stats,
            clock_origin,
        }
    }

    /// Tells a new driver that the chunk files of the snapshot it recovered from (the first
    /// `chunks` of them, see [`RecoveryReport::snapshot_chunks`]) are on its storage.
    pub fn with_chunks_written(mut self, chunks: usize) -> Self {
        self.machine = self.machine.with_chunks_written(chunks);
        self
    }

    pub fn ledger(&self) -> &Ledger {
        self.machine.ledger()
    }

    /// The time now, read once per round of inputs: the records of a round share one stamp,
    /// and a clock read per record would cost more than applying it.
    fn now(&self) -> Now {
        Now {
            micros: self.clock_origin.elapsed().as_micros() as u64,
            wall_us: wall_clock_us(),
        }
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
        // The first batch is committed even when empty: from then on the stats show a running
        // partition (the simulator waits for that after a restart).
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        let mut in_flight: Option<InFlight<S>> = self.start_commit();
        let mut snapshot: Option<SnapshotWrite> = None;
        let mut stopping: Option<Option<oneshot::Sender<()>>> = None;
        loop {
            self.publish_stats();
            self.send_ready();
            if in_flight.is_none() {
                in_flight = self.start_commit();
            }
            if let Some(ack) = self.finished(&in_flight, &snapshot, &mut stopping) {
                let _ = ack.map(|ack| ack.send(()));
                return Ok(self.storage.take().expect("no commit in flight"));
            }
            let accepting = stopping.is_none() && self.machine.wants_inputs();
            let deadline = self.machine.poll_timeout();
            let deadline = deadline.map(|due| self.clock_origin + Duration::from_micros(due));
            // `biased`: tokio's select! otherwise polls its branches in a random order drawn
            // from a process-wide seed, which no simulation seed controls. A finished commit
            // first (it frees the disk for the next batch), then inputs; timers cannot
            // starve, every round of inputs ticks the machine too.
            tokio::select! {
                biased;
                (storage, buffer, result) = poll_commit(&mut in_flight), if in_flight.is_some() => {
                    let done = in_flight.take().expect("a commit was in flight");
                    result?;
                    if let Some(write) = self.finish_commit(storage, buffer, done) {
                        assert!(snapshot.is_none(), "one snapshot at a time");
                        snapshot = Some(write);
                    }
                }
                result = poll_snapshot(&mut snapshot), if snapshot.is_some() => {
                    let done = snapshot.take().expect("a snapshot was being written");
                    self.finish_snapshot(done, result);
                }
                input = self.inbox.recv(), if accepting => match input {
                    Some(input) => {
                        if let Some(ack) = self.handle_round(input) {
                            stopping = Some(ack);
                        }
                    }
                    None => stopping = Some(None),
                },
                _ = sleep_until_due(deadline), if deadline.is_some() => {
                    let now = self.now();
                    self.machine.handle_tick(now);
                    self.record_phase_spans();
                }
            }
        }
    }

    /// When stopping, whether everything taken in is durable and released: then the
    /// shutdown acknowledgement (if any) is handed back.
    fn finished(
        &self,
        in_flight: &Option<InFlight<S>>,
        snapshot: &Option<SnapshotWrite>,
        stopping: &mut Option<Option<oneshot::Sender<()>>>,
    ) -> Option<Option<oneshot::Sender<()>>> {
        let idle = in_flight.is_none() && !self.machine.has_open_batch() && snapshot.is_none();
        if idle {
            stopping.take()
        } else {
            None
        }
    }

    /// Takes `first` and then whatever else is in the inbox, in a round of about
    /// [`DRAIN_INPUTS_MAX`] inputs (so that a commit that finished meanwhile is noticed after
    /// one round, not after everything that kept arriving), then ticks the machine. Returns
    /// the shutdown request, if one came.
    fn handle_round(&mut self, first: Input) -> Option<Option<oneshot::Sender<()>>> {
        let now = self.now();
        // The input just received waited in the inbox too.
        let depth = self.inbox.len() as u64 + 1;
        self.stats.inbox_depth.record(depth);
        let round_end = self.machine.batch_inputs() + DRAIN_INPUTS_MAX;
        let mut window = std::mem::take(&mut self.window);
        window.push(first);
        let mut shutdown = None;
        loop {
            while window.len() < PREFETCH_WINDOW {
                let Ok(input) = self.inbox.try_recv() else {
                    break;
                };
                window.push(input);
            }
            // One pass, in the two steps of `Ledger::prefetch`: the index slots of an input
            // are asked for, and the rows they name `PREFETCH_ROWS_LAG` inputs later, with
            // the hashes the first step computed.
            let mut behind = [Prefetched::default(); PREFETCH_ROWS_LAG];
            for (at, input) in window.iter().enumerate() {
                let slot = &mut behind[at % PREFETCH_ROWS_LAG];
                self.machine.prefetch_rows(std::mem::take(slot));
                if let Input::Command { command, .. } = input {
                    *slot = self.machine.prefetch(command);
                }
            }
            for prefetched in behind {
                self.machine.prefetch_rows(prefetched);
            }
            let taken = window.len() as u64;
            self.stats.inputs.fetch_add(taken, Ordering::Relaxed);
            for input in window.drain(..) {
                // Inputs after a shutdown are dropped unanswered, as the inbox's are when
                // the driver stops.
                if shutdown.is_none() {
                    shutdown = self.handle(now, input);
                }
            }
            let more = shutdown.is_none()
                && self.machine.batch_inputs() < round_end
                && self.machine.wants_inputs();
            if !more {
                break;
            }
            let Ok(input) = self.inbox.try_recv() else {
                break;
            };
            window.push(input);
        }
        debug_assert!(window.is_empty());
        self.window = window;
        self.machine.handle_tick(now);
        self.record_phase_spans();
        shutdown.map(Some)
    }

    /// Feeds one input to the machine. Returns the shutdown acknowledgement if asked to stop.
    fn handle(&mut self, now: Now, input: Input) -> Option<oneshot::Sender<()>> {
        match input {
            Input::Command {
                command,
                wait,
                reply,
            } => self.machine.handle_command(now, reply, &command, wait),
            Input::Commands {
                commands,
                wait,
                reply,
            } => self.machine.handle_commands(now, reply, &commands, wait),
            Input::Query { query, reply } => self.machine.handle_query(reply, query),
            Input::Peers(messages) => self.machine.handle_peers(now, &messages),
            // A partition that is not replicated has no group: a peer with another view of
            // the cluster sent these.
            Input::Raft { messages, .. } => tracing::debug!(
                partition = self.machine.partition(),
                count = messages.len(),
                "raft messages for an unreplicated partition dropped"
            ),
            Input::Membership { from, .. } | Input::CatchUp { from, .. } => tracing::debug!(
                partition = self.machine.partition(),
                from,
                "group message for an unreplicated partition dropped"
            ),
            Input::Shutdown(ack) => return Some(ack),
        }
        None
    }

    /// Sends what the machine lets leave at once: Tries, and answers that rest only on
    /// records already durable (see the machine's release rule).
    fn send_ready(&mut self) {
        let Some(release) = self.machine.poll_ready() else {
            return;
        };
        let batch = (self.machine.partition(), self.machine.durable_lsn());
        send_release(batch, release, &*self.transport);
    }

    /// Hands the machine's next commit to the storage, or releases it at once when it holds
    /// no records (everything it answers from is then already durable).
    fn start_commit(&mut self) -> Option<InFlight<S>> {
        let commit = self.machine.poll_commit()?;
        // Before anything of the batch is answered, so a client that saw its answer sees
        // the gauges count it.
        self.publish_stats();
        let partition = self.machine.partition();
        #[cfg(any(test, madsim))]
        observe::committing(partition, self.machine.ledger(), &commit);
        #[cfg(any(test, madsim))]
        let commit = self.reply_before_sync_if_bugged(commit);
        let batch = (partition, commit.last_lsn);
        if commit.bytes.is_empty() {
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            send_release(batch, commit.release, &*self.transport);
            return None;
        }
        let mut storage = self.storage.take().expect("one commit at a time");
        let (first_lsn, bytes, release) = (commit.first_lsn, commit.bytes, commit.release);
        let records = commit.last_lsn + 1 - first_lsn;
        self.stats.batch_records.record(records);
        let transport = Arc::clone(&self.transport);
        let stats = Arc::clone(&self.stats);
        // Answers and peer messages leave from wherever the batch becomes durable (file
        // storage: its writing thread), not when this task next gets to run: on a busy
        // machine that was most of a batch's wait. Should the write fail, they are dropped
        // unsent, and the partition stops. The durable lsn is published first, so that a
        // client that has its answer finds the records in history and the event feed.
        let on_durable = Box::new(move || {
            publish_durable(&stats, batch.1);
            send_release(batch, release, &*transport)
        });
        let commit_future = Box::pin(async move {
            let (bytes, result) = storage.append_durably(first_lsn, bytes, on_durable).await;
            let result = result.map_err(|source| DriverError::Io { partition, source });
            (storage, bytes, result)
        });
        Some(InFlight {
            commit: commit_future,
            last_lsn: commit.last_lsn,
            started: Instant::now(),
            snapshot: commit.snapshot,
        })
    }

    /// The known bug `ReplyBeforeSync`: the batch's answers leave before its sync.
    #[cfg(any(test, madsim))]
    fn reply_before_sync_if_bugged(
        &self,
        mut commit: walletd_core::protocol::machine::Commit<Channels>,
    ) -> walletd_core::protocol::machine::Commit<Channels> {
        use walletd_core::protocol::bugs::{enabled, Bug};
        if enabled(Bug::ReplyBeforeSync) {
            let batch = (self.machine.partition(), commit.last_lsn);
            send_release(batch, std::mem::take(&mut commit.release), &*self.transport);
        }
        commit
    }

    /// A batch is durable: take the storage back, tell the machine, and start writing the
    /// snapshot the batch carried, now that the log holds everything it reflects.
    fn finish_commit(
        &mut self,
        storage: S,
        buffer: Vec<u8>,
        done: InFlight<S>,
    ) -> Option<SnapshotWrite> {
        assert!(self.storage.is_none(), "the commit owned the storage");
        self.storage = Some(storage);
        self.machine.handle_durable(done.last_lsn, buffer);
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        let sync_us = done.started.elapsed().as_micros() as u64;
        self.stats.sync_us.record(sync_us);
        publish_durable(&self.stats, done.last_lsn);
        self.publish_stats();
        let image = done.snapshot?;
        let storage = self.storage.as_mut().expect("no commit in flight");
        let chunks_frozen = image.chunks().frozen;
        let encode = Box::new(move |out: &mut dyn SnapshotOut| image.write_to(out));
        Some(SnapshotWrite {
            write: Box::pin(storage.write_snapshot(done.last_lsn, encode)),
            chunks_frozen,
            lsn: done.last_lsn,
            started: Instant::now(),
        })
    }

    /// A snapshot only shortens recovery: the log holds everything. So a failed one does not
    /// stop the partition (a disk too full for a snapshot may still take the log's appends);
    /// the next one writes this one's chunk files too. A disk that is failing shows at the
    /// log's next sync, which does stop the partition.
    fn finish_snapshot(&mut self, done: SnapshotWrite, result: io::Result<usize>) {
        let partition = self.machine.partition();
        let (lsn, chunks) = (done.lsn, done.chunks_frozen);
        match result {
            Ok(bytes) => {
                let elapsed_us = done.started.elapsed().as_micros() as u64;
                self.stats.snapshot_us.record(elapsed_us);
                self.machine.handle_snapshot_written(Ok(chunks));
                tracing::info!(partition, lsn, bytes, chunks, "snapshot written");
            }
            Err(error) => {
                self.machine.handle_snapshot_written(Err(()));
                self.stats.snapshot_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(partition, lsn, %error, "snapshot not written; going on from the log, the next snapshot tries again");
            }
        }
    }

    /// Moves the spans of the transfer steps that ended into their histograms.
    fn record_phase_spans(&mut self) {
        self.machine.take_phase_spans(&mut self.phase_spans);
        for span in self.phase_spans.drain(..) {
            match span {
                PhaseSpan::TryToDecision(us) => self.stats.try_to_decision_us.record(us),
                PhaseSpan::DecisionToFinish(us) => self.stats.decision_to_finish_us.record(us),
            }
        }
    }

    /// Publishes the machine's counters and gauges: how many transfers the coordinator is
    /// carrying out (the simulator waits for zero everywhere to call a cluster quiet), the
    /// rows the ledger holds, events applied.
    fn publish_stats(&self) {
        let counters = self.machine.counters();
        let stats = &self.stats;
        stats
            .in_flight
            .store(self.machine.in_flight() as u64, Ordering::Relaxed);
        let ledger = self.machine.ledger();
        let gauges = [
            (&stats.rows, ledger.rows_in_memory()),
            (
                &stats.transfer_rows_in_memory,
                ledger.transfer_rows_in_memory(),
            ),
            (&stats.cold_transfer_chunks, ledger.cold_transfer_chunks()),
        ];
        for (gauge, value) in gauges {
            gauge.store(value as u64, Ordering::Relaxed);
        }
        stats.events.store(counters.events, Ordering::Relaxed);
        stats
            .violations
            .store(counters.violations, Ordering::Relaxed);
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

/// Wall-clock microseconds since the Unix epoch (virtual under the simulator).
pub fn wall_clock_us() -> Timestamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as Timestamp)
}

#[cfg(test)]
mod tests;
