//! The partition driver: the async loop that owns one partition.
//!
//! It is deliberately thin (no business rule lives here): take a batch of inputs from the
//! inbox, run each through the pure [`Ledger`] and [`Coordinator`], append the resulting
//! events as one write, sync once (group commit), and only then release the replies and the
//! outgoing phase messages. The same source runs on tokio in production and under madsim in
//! the simulator.
//!
//! ```text
//!   inbox ──► decide/apply (Ledger) ──► encode ──► append + sync ──► replies, peer messages
//!                 ▲      │ events
//!                 └── Coordinator ◄── responses, timers
//! ```

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::codec::{decode_log, encode_record, CodecError, Record};
use crate::coordinator::{Coordinator, CoordinatorConfig, Micros, Output};
use crate::event::{Event, Lsn, Timestamp, TransferKey};
use crate::ledger::{
    Account, ApplyError, Command, Ledger, LedgerError, RecordMeta, Reply, TransferRow,
    TransferStatus,
};
use crate::partition::PartitionId;
use crate::snapshot::{decode_snapshot, encode_snapshot};
use crate::storage::Storage;
use crate::transport::{PeerMessage, Transport};

/// Limits and timings of a partition driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverConfig {
    /// Most inputs taken into one group commit.
    pub batch_inputs_max: usize,
    /// When a batch is not full, wait up to this long for more inputs before writing
    /// (0: write as soon as the inbox is empty; the sync itself is what gathers the next batch).
    pub batch_linger_us: u64,
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
            batch_inputs_max: 8192,
            batch_linger_us: 0,
            snapshot_every_events: 1_000_000,
            waiters_max: 100_000,
            coordinator: CoordinatorConfig::default(),
        }
    }
}

/// A read-only question to a partition, answered after everything before it is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    Account(crate::ids::AccountId),
    Transfer(TransferKey),
}

/// The answer to a [`Query`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryAnswer {
    Account(Option<Account>),
    Transfer(Option<TransferRow>),
}

/// The result of a command as seen by its client.
pub type CommandResult = Result<Reply, LedgerError>;

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
}

/// What recovery found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub partition: PartitionId,
    pub snapshot_lsn: Option<Lsn>,
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
        match decode_snapshot(&snapshot.bytes) {
            Ok(state) if state.partition() == partition && state.partitions() == partitions => {
                report.snapshot_lsn = Some(state.last_applied().lsn);
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
        if decoded.torn_tail {
            if i + 1 != segment_count {
                return Err(DriverError::Corrupt {
                    partition,
                    name: segment.name,
                    offset: decoded.valid_len as u64,
                    detail: "a segment that is not the newest ends in a partial record".into(),
                });
            }
            report.torn_bytes_dropped = (segment.bytes.len() - decoded.valid_len) as u64;
            tracing::warn!(
                partition,
                name = segment.name,
                dropped = report.torn_bytes_dropped,
                "torn log tail truncated"
            );
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

/// A reply held back until its batch is durable.
struct HeldReply {
    reply: oneshot::Sender<CommandResult>,
    result: CommandResult,
    /// Set when the client wants the outcome of this transfer, not just `Pending`.
    wait_for: Option<TransferKey>,
}

/// The driver of one partition. Build with [`PartitionDriver::new`] after [`recover`], then
/// `run` it as a task.
pub struct PartitionDriver<S: Storage> {
    partition: PartitionId,
    ledger: Ledger,
    coordinator: Coordinator,
    storage: S,
    transport: Arc<dyn Transport>,
    inbox: mpsc::Receiver<Input>,
    config: DriverConfig,
    stats: Arc<DriverStats>,
    clock_origin: Instant,
    /// The current batch: encoded records, and everything released once they are durable.
    encoded: Vec<u8>,
    batch_first_lsn: Lsn,
    events: Vec<Event>,
    replies: Vec<HeldReply>,
    answers: Vec<(oneshot::Sender<QueryAnswer>, QueryAnswer)>,
    outbox: Vec<PeerMessage>,
    decided: Vec<TransferKey>,
    waiters: FxHashMap<TransferKey, Vec<oneshot::Sender<CommandResult>>>,
    waiter_count: usize,
    events_since_snapshot: u64,
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
        let rows = ledger.unfinished_transfers();
        let coordinator = Coordinator::rebuild(config.coordinator, ledger.partitions(), &rows, 0);
        stats
            .last_lsn
            .store(ledger.last_applied().lsn, Ordering::Relaxed);
        PartitionDriver {
            partition: ledger.partition(),
            ledger,
            coordinator,
            storage,
            transport,
            inbox,
            config,
            stats,
            clock_origin: Instant::now(),
            encoded: Vec::with_capacity(1 << 20),
            batch_first_lsn: 0,
            events: Vec::new(),
            replies: Vec::new(),
            answers: Vec::new(),
            outbox: Vec::new(),
            decided: Vec::new(),
            waiters: FxHashMap::default(),
            waiter_count: 0,
            events_since_snapshot: 0,
        }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn now(&self) -> Micros {
        self.clock_origin.elapsed().as_micros() as Micros
    }

    /// Runs until a [`Input::Shutdown`] or until every sender of the inbox is gone. Returns
    /// the storage on a clean stop; an I/O error is fatal and returned.
    pub async fn run(mut self) -> Result<S, DriverError> {
        // Rebuilt transfers have their first resend due now.
        self.coordinator.on_tick(self.now());
        self.drain_coordinator();
        self.commit().await?;
        loop {
            let first = match self.coordinator.next_due() {
                Some(due) => {
                    let deadline = self.clock_origin + Duration::from_micros(due);
                    // `biased`: tokio's select! otherwise polls its branches in a random order
                    // drawn from a process-wide seed, which no simulation seed controls. Inputs
                    // first; timers cannot starve, every batch below ticks the coordinator too.
                    tokio::select! {
                        biased;
                        input = self.inbox.recv() => input,
                        _ = tokio::time::sleep_until(deadline) => {
                            self.coordinator.on_tick(self.now());
                            self.drain_coordinator();
                            self.commit().await?;
                            continue;
                        }
                    }
                }
                None => self.inbox.recv().await,
            };
            let Some(first) = first else {
                return Ok(self.storage);
            };
            let mut shutdown = self.handle(first);
            let mut taken = 1;
            let linger_until = Instant::now() + Duration::from_micros(self.config.batch_linger_us);
            while taken < self.config.batch_inputs_max && shutdown.is_none() {
                let input = match self.inbox.try_recv() {
                    Ok(input) => input,
                    Err(_) if self.config.batch_linger_us > 0 && Instant::now() < linger_until => {
                        // `timeout`, not `timeout_at`: madsim's time module has no `timeout_at`.
                        let linger = linger_until.saturating_duration_since(Instant::now());
                        match tokio::time::timeout(linger, self.inbox.recv()).await {
                            Ok(Some(input)) => input,
                            _ => break,
                        }
                    }
                    Err(_) => break,
                };
                shutdown = self.handle(input);
                taken += 1;
            }
            self.stats.inputs.fetch_add(taken as u64, Ordering::Relaxed);
            self.coordinator.on_tick(self.now());
            self.drain_coordinator();
            self.commit().await?;
            if let Some(ack) = shutdown {
                let _ = ack.send(());
                return Ok(self.storage);
            }
        }
    }

    /// Feeds one input to the state machines. Returns the shutdown acknowledgement if asked to stop.
    fn handle(&mut self, input: Input) -> Option<oneshot::Sender<()>> {
        match input {
            Input::Command {
                command,
                wait,
                reply,
            } => {
                let result = self.execute(&command);
                let wait_for = match (&command, &result) {
                    (Command::Transfer(t), Ok(Reply::Transfer(TransferStatus::Pending)))
                        if wait =>
                    {
                        Some(t.key())
                    }
                    _ => None,
                };
                self.replies.push(HeldReply {
                    reply,
                    result,
                    wait_for,
                });
            }
            Input::Query { query, reply } => {
                let answer = match query {
                    Query::Account(account) => {
                        QueryAnswer::Account(self.ledger.account(&account).copied())
                    }
                    Query::Transfer(key) => {
                        QueryAnswer::Transfer(self.ledger.transfer(&key).copied())
                    }
                };
                self.answers.push((reply, answer));
            }
            Input::Peer(PeerMessage::Request { request, .. }) => {
                match self.execute(&request.command()) {
                    Ok(Reply::Phase(result)) => {
                        let key = request.transfer.key();
                        let response = crate::coordinator::PhaseResponse {
                            phase: request.phase,
                            key,
                            result,
                        };
                        self.outbox.push(PeerMessage::Response(response));
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
                let now = self.now();
                self.coordinator.on_response(&response, now);
                self.drain_coordinator();
            }
            Input::Shutdown(ack) => return Some(ack),
        }
        None
    }

    /// Decides `command`, applies its events and encodes them into the current batch.
    fn execute(&mut self, command: &Command) -> CommandResult {
        debug_assert!(self.events.is_empty());
        let result = self.ledger.decide(command, &mut self.events);
        let now = self.now();
        let wall = wall_clock_us().max(self.ledger.last_applied().timestamp);
        for i in 0..self.events.len() {
            let event = self.events[i];
            let lsn = self.ledger.last_applied().lsn + 1;
            if self.encoded.is_empty() {
                self.batch_first_lsn = lsn;
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
                &mut self.encoded,
            );
            self.coordinator.on_event(&event, now);
            if let Event::TransferDecided { key, .. } = event {
                self.decided.push(key);
            }
        }
        self.events_since_snapshot += self.events.len() as u64;
        self.stats
            .events
            .fetch_add(self.events.len() as u64, Ordering::Relaxed);
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
                    self.outbox.push(PeerMessage::Request {
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

    /// Makes the batch durable, then releases what waited for it.
    async fn commit(&mut self) -> Result<(), DriverError> {
        #[cfg(any(test, madsim))]
        if crate::bugs::enabled(crate::bugs::Bug::ReplyBeforeSync) {
            self.release();
        }
        if !self.encoded.is_empty() {
            let started = Instant::now();
            let partition = self.partition;
            let io_err = |source| DriverError::Io { partition, source };
            self.storage
                .append(self.batch_first_lsn, &self.encoded)
                .await
                .map_err(io_err)?;
            self.storage.sync().await.map_err(io_err)?;
            self.encoded.clear();
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            self.stats
                .sync_us_total
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .last_lsn
            .store(self.ledger.last_applied().lsn, Ordering::Relaxed);
        self.stats
            .in_flight
            .store(self.coordinator.in_flight() as u64, Ordering::Relaxed);
        #[cfg(any(debug_assertions, madsim))]
        if let Err(violation) = self.ledger.check_conservation() {
            panic!(
                "partition {}: conservation violated: {violation}",
                self.partition
            );
        }
        self.release();
        self.maybe_snapshot().await
    }

    /// Sends every held reply, answer and peer message, and resolves decided waiters.
    fn release(&mut self) {
        for held in self.replies.drain(..) {
            let still_pending = held
                .wait_for
                .and_then(|key| self.ledger.transfer(&key))
                .filter(|row| row.state.status() == TransferStatus::Pending);
            match still_pending {
                Some(row) if self.waiter_count < self.config.waiters_max => {
                    self.waiters
                        .entry(row.transfer.key())
                        .or_default()
                        .push(held.reply);
                    self.waiter_count += 1;
                }
                Some(row) => {
                    let _ = held.reply.send(Ok(Reply::Transfer(row.state.status())));
                }
                None => {
                    let _ = held.reply.send(held.result);
                }
            }
        }
        for key in self.decided.drain(..) {
            let (Some(waiting), Some(row)) =
                (self.waiters.remove(&key), self.ledger.transfer(&key))
            else {
                continue;
            };
            self.waiter_count -= waiting.len();
            for reply in waiting {
                let _ = reply.send(Ok(Reply::Transfer(row.state.status())));
            }
        }
        for (reply, answer) in self.answers.drain(..) {
            let _ = reply.send(answer);
        }
        for message in self.outbox.drain(..) {
            self.transport.send(message);
        }
    }

    async fn maybe_snapshot(&mut self) -> Result<(), DriverError> {
        // A snapshot costs time in proportion to the whole state, and the partition waits for
        // it. Taking one only once the log since the last has grown at least as large as the
        // state keeps that cost at most one row per event, however large the state becomes,
        // and recovery replays at most about one state's worth of records.
        let every = self.config.snapshot_every_events;
        if every == 0 || self.events_since_snapshot < every.max(self.ledger.row_count() as u64) {
            return Ok(());
        }
        let bytes = encode_snapshot(&self.ledger);
        let lsn = self.ledger.last_applied().lsn;
        let partition = self.partition;
        self.storage
            .write_snapshot(lsn, &bytes)
            .await
            .map_err(|source| DriverError::Io { partition, source })?;
        self.events_since_snapshot = 0;
        tracing::info!(partition, lsn, bytes = bytes.len(), "snapshot written");
        Ok(())
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
#[path = "driver_tests.rs"]
mod tests;
