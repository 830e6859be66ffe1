//! The partition machine: everything one partition decides, with no I/O, no clock reads and no
//! channels (sans-IO, in the style of quinn-proto).
//!
//! The runtime feeds it inputs through `handle_*` methods, each with the time it was taken
//! at ([`Now`]), and carries out what it asks for through `#[must_use] poll_*` methods. Clients
//! are addressed by opaque reply tokens ([`ReplyTokens`]): the async driver uses its oneshot
//! senders as tokens, tests use numbers.
//!
//! ```text
//!   handle_command / handle_commands / handle_query / handle_peer / handle_tick
//!        │ decide + apply (Ledger), coordinator outputs, waiters, command groups
//!        ▼
//!   open batch ── poll_commit ──► Commit { bytes, release, snapshot } ──► runtime: append + sync
//!        ▲                                                                    │
//!        └──────────────── handle_durable(last_lsn, buffer) ◄─────────────────┘
//! ```
//!
//! # The release rule
//! Every reply, query answer and peer message joins the batch whose records it depends on,
//! and leaves with that batch's [`Commit::release`], which the runtime may send only once
//! [`Commit::bytes`] are durable (after a successful sync). Commits are handed out one at a
//! time and in log order ([`PartitionMachine::poll_commit`] returns nothing while one is in
//! flight), so nothing a client or a peer sees can be taken back by a crash. A commit without
//! bytes answers only from state that is already durable, and may be released at once.
//!
//! Some things may leave sooner, through [`PartitionMachine::poll_ready`], at any time:
//! - **Tries.** A Try, of a transfer or of a multi-leg transaction, leaves as soon as the
//!   home's record of it (the debit, the transaction's `TransactionTried`) is applied, in
//!   parallel with the sync that makes that record durable. This is safe because nothing
//!   commits on the Try alone: the commit point is every side durable (see
//!   [`crate::protocol::coordinator`] and [`crate::protocol::tx_coordinator`]). Should the
//!   home lose its record, the destination holds a pending credit (a participant its
//!   Try's nets), which is in no balance, until it asks about it
//!   ([`crate::protocol::credit_watch`], [`PeerMessage::TxUnresolved`]) and the home, which
//!   has no row, records the transfer (the transaction) refused for good and cancels it.
//! - **What rests only on durable records.** When the destination's Tried answer comes, the
//!   transfer is committed as soon as the home's own debit is durable: from then on its
//!   Confirm may leave and its waiting client be told `committed` (in that order), without
//!   waiting for the record that finishes the home's side (`DebitConfirmed`), which joins
//!   the open batch. A transaction's clients, likewise, once every participant answered
//!   tried and the home's `TransactionTried` is durable.
//!
//! A batch that holds only background work (decisions, second phases, acknowledgements) may
//! wait up to [`MachineConfig::background_delay_us`] for a batch someone waits on, so that it
//! does not pay a sync of its own.

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::ledger::cold::{ColdChunk, WrittenChunks};
use crate::ledger::{Command, Ledger, LedgerError, PhaseResult, Prefetched, Reply, TransferStatus};
use crate::log::codec::encode_event_record;
use crate::log::snapshot::{ChunkPlan, SnapshotImage};
use crate::model::event::{Event, Lsn, Timestamp, Transfer, TransferKey};
use crate::model::partition::PartitionId;
use crate::model::transaction::Transaction;
use crate::protocol::coordinator::{
    destination_answers, unresolved_answer, Coordinator, CoordinatorConfig, Micros, Output, Phase,
    PhaseRequest, PhaseResponse,
};
use crate::protocol::credit_watch::CreditWatch;
use crate::protocol::message::{CommandGroup, CommandResult, PeerMessage, Query, QueryAnswer};
use crate::protocol::tx_coordinator::{
    unresolved_transaction_answer, TxCoordinator, TxOutput, TxRequest, TxResponse,
};

/// Limits and timings of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineConfig {
    /// Most inputs taken into one group commit (each command of a command group counts). A
    /// full batch takes no inputs until the one before it is durable, so this over the sync
    /// time caps a partition's rate while its disk is slow (a snapshot being written back,
    /// say): 65,536 over a 50 ms sync is still 1.3M inputs/s.
    pub batch_inputs_max: usize,
    /// Most bytes of records in one batch before it takes no more inputs (the input that
    /// crosses it still completes, so a batch may pass it by one input's records). A
    /// replicated partition's batch is one Raft entry, which must fit a wire message.
    pub batch_bytes_max: usize,
    /// Take a snapshot after this many events since the last one, and no sooner than the log
    /// since the last one holds as many events as the state has rows (0: never).
    pub snapshot_every_events: u64,
    /// The in-memory budget of the transfers table, in rows (home and credit rows): once more
    /// rows than this are in memory, a snapshot is taken as soon as a chunk of them is final,
    /// and once it is durable the rows in its chunk files leave memory (they are read back
    /// from disk when a retry asks for one; see [`crate::ledger::cold`]). A row still in flight
    /// keeps its chunk, and those after it, in memory until it moves on to the table's end
    /// (see `transfer_table`, "Rows in flight move on"). Applies while snapshots are on
    /// (`snapshot_every_events` > 0).
    pub transfer_rows_in_memory_max: usize,
    /// Most clients waiting for the outcome of a pending transfer; beyond it they get `Pending`.
    pub waiters_max: usize,
    /// How long a batch that nobody waits on may stay open for more to join it: a batch of
    /// background records only (decisions, finishes, confirmed credits, their
    /// acknowledgements) rides along with the next batch a client or a Try waits on,
    /// instead of paying a sync of its own. A cross-partition transfer then costs about two
    /// syncs (the debit, the credit) where it cost five. 0: commit at once.
    pub background_delay_us: u64,
    pub coordinator: CoordinatorConfig,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            batch_inputs_max: 65_536,
            batch_bytes_max: usize::MAX,
            snapshot_every_events: 1_000_000,
            transfer_rows_in_memory_max: TRANSFER_ROWS_IN_MEMORY_MAX_DEFAULT,
            waiters_max: 100_000,
            background_delay_us: 2_000,
            coordinator: CoordinatorConfig::default(),
        }
    }
}

/// The default of [`MachineConfig::transfer_rows_in_memory_max`]: 16 chunks of rows, about
/// 100 MiB with their ids and index (4 chunks in tests and the simulator, so that their runs
/// read rows back from disk).
pub const TRANSFER_ROWS_IN_MEMORY_MAX_DEFAULT: usize =
    if cfg!(any(test, madsim, feature = "testing")) {
        4 * crate::ledger::CHUNK_ROWS
    } else {
        16 * crate::ledger::CHUNK_ROWS
    };

/// Most holds one tick expires; the rest are due at the next.
const HOLDS_EXPIRED_PER_TICK_MAX: usize = 4096;

/// The time an input is handled at: a monotonic clock for the coordinator's timers, and the
/// wall clock the log's records are stamped with (clamped so that stamps never go back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Now {
    pub micros: Micros,
    pub wall_us: Timestamp,
}

/// How the runtime addresses the clients of a partition. The driver uses its reply channels
/// themselves, so no lookup stands between a durable batch and its answers.
pub trait ReplyTokens {
    /// The client of one command ([`PartitionMachine::handle_command`]).
    type Command;
    /// The client of a command group ([`PartitionMachine::handle_commands`]).
    type Group;
    /// The client of a query ([`PartitionMachine::handle_query`]).
    type Query;
}

/// What may leave once a commit's bytes are durable: answers to clients and peer messages.
pub struct Release<K: ReplyTokens> {
    /// Phase messages to other partitions; send these before the answers.
    pub peer_messages: Vec<PeerMessage>,
    pub replies: Vec<(K::Command, CommandResult)>,
    pub groups: Vec<(K::Group, Vec<CommandResult>)>,
    pub answers: Vec<(K::Query, QueryAnswer)>,
}

impl<K: ReplyTokens> Default for Release<K> {
    fn default() -> Self {
        Release {
            peer_messages: Vec::new(),
            replies: Vec::new(),
            groups: Vec::new(),
            answers: Vec::new(),
        }
    }
}

impl<K: ReplyTokens> Release<K> {
    /// Moves everything of `other` behind what this release holds.
    pub fn append(&mut self, mut other: Release<K>) {
        self.peer_messages.append(&mut other.peer_messages);
        self.replies.append(&mut other.replies);
        self.groups.append(&mut other.groups);
        self.answers.append(&mut other.answers);
    }

    pub fn is_empty(&self) -> bool {
        self.peer_messages.is_empty()
            && self.replies.is_empty()
            && self.groups.is_empty()
            && self.answers.is_empty()
    }
}

/// A batch to make durable, and what waits for it (see the release rule in the module docs).
#[must_use = "a commit holds answers that must be released once its bytes are durable"]
pub struct Commit<K: ReplyTokens> {
    /// Encoded log records, lsns `first_lsn..=last_lsn`; empty when the batch logged nothing.
    pub bytes: Vec<u8>,
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    /// Leaves once `bytes` are durable (at once when `bytes` is empty).
    pub release: Release<K>,
    /// A snapshot of the state this batch leaves, to be written once `bytes` are durable;
    /// report the outcome with [`PartitionMachine::handle_snapshot_written`].
    pub snapshot: Option<SnapshotImage>,
}

/// Where the answer to one pending transfer goes once it is decided.
enum Waiter<K: ReplyTokens> {
    /// A single client.
    One(K::Command),
    /// Position `index` of the open command group `group`.
    InGroup { group: u64, index: usize },
}

/// The answers of a command group while some still wait for a transfer's outcome.
struct OpenGroup<K: ReplyTokens> {
    results: Vec<CommandResult>,
    /// Answers not yet final; the group is answered once this reaches zero.
    waiting: usize,
    token: K::Group,
}

/// The batch being filled.
struct OpenBatch<K: ReplyTokens> {
    bytes: Vec<u8>,
    first_lsn: Lsn,
    /// Inputs taken, counting each command of a group.
    inputs: usize,
    /// A client command or query was taken (its answer may wait for a later batch).
    client_inputs: bool,
    release: Release<K>,
}

impl<K: ReplyTokens> OpenBatch<K> {
    fn new(bytes: Vec<u8>) -> Self {
        debug_assert!(bytes.is_empty());
        OpenBatch {
            bytes,
            first_lsn: 0,
            inputs: 0,
            client_inputs: false,
            release: Release::default(),
        }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.release.is_empty()
    }

    /// Whether someone waits on this batch: a client (an answer, or a command whose records
    /// it holds), or a home waiting for a Try's answer. What else a batch may hold, records
    /// of decisions and second phases and their messages, is background work.
    fn is_urgent(&self) -> bool {
        let release = &self.release;
        self.client_inputs
            || !release.replies.is_empty()
            || !release.groups.is_empty()
            || !release.answers.is_empty()
            || release.peer_messages.iter().any(|message| match message {
                PeerMessage::Response(response) => {
                    matches!(response.phase, Phase::Try | Phase::Abort)
                }
                PeerMessage::Request { request, .. } => {
                    matches!(request.phase, Phase::Try | Phase::Abort)
                }
                PeerMessage::TxResponse(response) => {
                    matches!(response.phase, Phase::Try | Phase::Abort)
                }
                PeerMessage::TxRequest(request) => {
                    matches!(request.phase, Phase::Try | Phase::Abort)
                }
                PeerMessage::Unresolved { .. }
                | PeerMessage::StillHeld { .. }
                | PeerMessage::TxUnresolved { .. } => false,
            })
    }
}

/// Counters the runtime publishes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineCounters {
    /// Events applied since the machine was built.
    pub events: u64,
    /// Coordinator reports of a state the protocol says cannot happen (release builds only:
    /// debug and simulation builds stop at the first).
    pub violations: u64,
}

/// How long one step of a cross-partition transfer took at its home, by the stamps of its
/// records (wall-clock microseconds; a clock set back counts as 0). A transfer committed at
/// its commit point decides and finishes with one record: its decision-to-finish span is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseSpan {
    /// From the home's acceptance (its `DebitTried`) to the decision.
    TryToDecision(u64),
    /// From the decision to the end of the home's side.
    DecisionToFinish(u64),
}

/// One partition: its ledger, the coordinator of the transfers it is home of, the clients
/// waiting for outcomes, the batch being filled, and the snapshot policy.
pub struct PartitionMachine<K: ReplyTokens> {
    ledger: Ledger,
    coordinator: Coordinator,
    config: MachineConfig,
    batch: OpenBatch<K>,
    /// The last lsn of the commit handed out and not yet durable.
    committing: Option<Lsn>,
    /// The log is durable through this lsn.
    durable_lsn: Lsn,
    /// Home rows recorded by the records through `durable_lsn`, and by those of the commit
    /// in flight: the rows whose bodies may be read before the open batch is durable (see
    /// [`Query::TransferBody`]).
    durable_transfer_rows: usize,
    committing_transfer_rows: usize,
    /// What may leave now ([`PartitionMachine::poll_ready`]).
    ready: Release<K>,
    /// What may leave once the commit in flight is durable.
    after_commit: Release<K>,
    /// The destination's pending credits, asked about once they stay pending too long.
    credit_watch: CreditWatch,
    /// Multi-leg transactions this partition is home of or takes part in.
    tx_coordinator: TxCoordinator,
    /// Credits tried here and not yet confirmed or cancelled.
    pending_credits: usize,
    /// The buffer of the last durable commit, reused by the next batch.
    spare_bytes: Vec<u8>,
    /// Scratch space for the events of one command.
    events: Vec<Event>,
    waiters: FxHashMap<TransferKey, Vec<Waiter<K>>>,
    waiter_count: usize,
    groups: FxHashMap<u64, OpenGroup<K>>,
    next_group: u64,
    /// The time of the input being handled.
    now: Now,
    counters: MachineCounters,
    /// See [`PartitionMachine::take_phase_spans`].
    phase_spans: Vec<PhaseSpan>,
    events_since_snapshot: u64,
    /// A snapshot is taken and not yet written: no second one until it is.
    snapshot_pending: bool,
    /// Chunks of the transfers table whose chunk files are written (see
    /// [`crate::log::snapshot`]).
    chunks_written: usize,
    /// Chunks `0..` this many that the over-budget check found sealed and final: final rows
    /// never change, so it scans each chunk once, not every chunk since the last snapshot
    /// at every commit (eight chunks are half a million rows).
    chunks_found_final: usize,
    /// Where the snapshot being written leaves the chunk files it writes.
    chunks_being_written: WrittenChunks,
    /// Chunks whose files are durable and whose rows are still in memory: one leaves per
    /// tick ([`PartitionMachine::handle_tick`]), so that the filter's inserts (a cache miss
    /// per row) come in steps of one chunk, not of a whole snapshot's.
    chunks_to_drop: VecDeque<ColdChunk>,
    /// Since when the open batch holds only background work (see
    /// [`MachineConfig::background_delay_us`]).
    background_since: Option<Micros>,
}

impl<K: ReplyTokens> PartitionMachine<K> {
    /// A machine for a recovered `ledger`. Its unfinished transfers resume at once: their
    /// first resend is due at `now`.
    pub fn new(ledger: Ledger, config: MachineConfig, now: Now) -> Self {
        assert!(config.batch_inputs_max > 0);
        let rows = ledger.unfinished_transfers();
        let coordinator =
            Coordinator::rebuild(config.coordinator, ledger.partitions(), &rows, now.micros);
        let durable_lsn = ledger.last_applied().lsn;
        let durable_transfer_rows = ledger.transfer_count();
        // Chunks whose rows the ledger keeps on disk only are in durable chunk files (it read
        // them there): a snapshot refers to them and never writes them again, which it could
        // not (their rows are not in memory). A replica that leads again after following, or
        // one built from a ledger recovered from a snapshot, starts from them.
        let chunks_written = ledger.cold_transfer_chunks();
        let tx_coordinator = TxCoordinator::rebuild(config.coordinator, &ledger, now.micros);
        let mut machine = PartitionMachine {
            ledger,
            coordinator,
            tx_coordinator,
            config,
            batch: OpenBatch::new(Vec::with_capacity(1 << 20)),
            committing: None,
            durable_lsn,
            durable_transfer_rows,
            committing_transfer_rows: durable_transfer_rows,
            ready: Release::default(),
            after_commit: Release::default(),
            credit_watch: CreditWatch::new(),
            pending_credits: 0,
            spare_bytes: Vec::with_capacity(1 << 20),
            events: Vec::new(),
            waiters: FxHashMap::default(),
            waiter_count: 0,
            groups: FxHashMap::default(),
            next_group: 0,
            now,
            counters: MachineCounters::default(),
            phase_spans: Vec::new(),
            events_since_snapshot: 0,
            snapshot_pending: false,
            chunks_written,
            chunks_found_final: chunks_written,
            chunks_being_written: WrittenChunks::default(),
            chunks_to_drop: VecDeque::new(),
            background_since: None,
        };
        machine.pending_credits = machine.ledger.pending_credits().count();
        // Recovered pending credits are watched like new ones, where they are now.
        let after_us = config.coordinator.resolve_after_us;
        machine.ledger.take_moved_credits();
        machine
            .credit_watch
            .mark(&mut machine.ledger, now.micros, after_us);
        machine.handle_tick(now);
        machine
    }

    /// Tells a new machine that the chunk files of the snapshot it recovered from (the first
    /// `chunks` of them) are on its storage, so its snapshots refer to them instead of
    /// writing them again.
    pub fn with_chunks_written(mut self, chunks: usize) -> Self {
        assert!(
            self.ledger.final_chunks_from(0) >= chunks,
            "chunk files hold sealed chunks of final rows"
        );
        assert!(
            chunks >= self.ledger.cold_transfer_chunks(),
            "the chunks on disk only are written"
        );
        self.chunks_written = chunks;
        self
    }

    pub fn partition(&self) -> PartitionId {
        self.ledger.partition()
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Gives up the machine for its ledger: what a replica that stops leading keeps, when
    /// every record the ledger holds is durable (see [`crate::replica`]).
    pub fn into_ledger(self) -> Ledger {
        self.ledger
    }

    /// Whether the ledger holds records that are not durable yet (applied, in the open
    /// batch or in the commit in flight).
    pub fn is_ahead_of_durable(&self) -> bool {
        self.ledger.last_applied().lsn != self.durable_lsn
    }

    pub fn counters(&self) -> MachineCounters {
        self.counters
    }

    /// Takes the spans of the transfer steps that ended since the last call (for the
    /// runtime's histograms). Bounded: a caller that never takes them keeps the last
    /// [`PHASE_SPANS_KEPT_MAX`].
    pub fn take_phase_spans(&mut self, into: &mut Vec<PhaseSpan>) {
        into.append(&mut self.phase_spans);
    }

    /// Transfers and multi-leg transactions under way here: carried out by a coordinator
    /// as their home, or pending here as their destination or participant (a quiet cluster
    /// has none).
    pub fn in_flight(&self) -> usize {
        self.coordinator.in_flight() + self.pending_credits + self.tx_coordinator.in_flight()
    }

    /// Inputs taken into the open batch (each command of a group counts).
    pub fn batch_inputs(&self) -> usize {
        self.batch.inputs
    }

    /// Whether the open batch takes more inputs; once full it waits for the commit in flight.
    pub fn wants_inputs(&self) -> bool {
        self.batch.inputs < self.config.batch_inputs_max
            && self.batch.bytes.len() < self.config.batch_bytes_max
    }

    /// Whether the open batch holds background work only and may wait a little longer for
    /// more to join it (see [`MachineConfig::background_delay_us`]).
    fn background_waits(&mut self) -> bool {
        let delay = self.config.background_delay_us;
        if delay == 0 || self.batch.is_urgent() {
            self.background_since = None;
            return false;
        }
        let since = *self.background_since.get_or_insert(self.now.micros);
        self.now.micros < since + delay
    }

    /// The log is durable through this lsn (as far as the machine was told).
    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }

    /// Whether a commit is handed out and not yet durable.
    pub fn is_committing(&self) -> bool {
        self.committing.is_some()
    }

    /// Whether the open batch holds anything to commit or release.
    pub fn has_open_batch(&self) -> bool {
        !self.batch.is_empty()
    }

    /// When [`PartitionMachine::handle_tick`] is next due, on the [`Now::micros`] clock.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Micros> {
        let watch = self.credit_watch.next_due();
        let background = (self.committing.is_none())
            .then_some(self.background_since)
            .flatten()
            .map(|since| since + self.config.background_delay_us);
        // A hold's expiry is on the wall clock: as far ahead on the monotonic one.
        let expiry = (self.ledger.next_hold_expiry())
            .map(|at| self.now.micros + at.saturating_sub(self.now.wall_us));
        (self.coordinator.next_due().into_iter())
            .chain(self.tx_coordinator.next_due())
            .chain(watch)
            .chain(background)
            .chain(expiry)
            .min()
    }

    /// What may leave right now, whatever commit is in flight: Tries and answers that rest
    /// only on durable records (see the release rule in the module docs).
    #[must_use]
    pub fn poll_ready(&mut self) -> Option<Release<K>> {
        (!self.ready.is_empty()).then(|| std::mem::take(&mut self.ready))
    }

    /// A client command. With `wait`, a transfer still pending when its batch is durable is
    /// answered only once its outcome is decided (the runtime bounds the wait).
    pub fn handle_command(&mut self, now: Now, token: K::Command, command: &Command, wait: bool) {
        self.now = now;
        self.batch.inputs += 1;
        self.batch.client_inputs = true;
        let result = self.execute(command);
        #[cfg(any(test, madsim, feature = "testing"))]
        let result = self.committed_on_home_only_if_bugged(result);
        match self.pending_key(command, &result, wait) {
            Some(key) => self.add_waiter(key, Waiter::One(token)),
            None => self.batch.release.replies.push((token, result)),
        }
    }

    /// Client commands executed in order and answered together (one answer per command, in
    /// their order) once all are durable, and with `wait` all decided.
    pub fn handle_commands(
        &mut self,
        now: Now,
        token: K::Group,
        commands: &CommandGroup,
        wait: bool,
    ) {
        self.now = now;
        self.batch.inputs += commands.len();
        self.batch.client_inputs = true;
        let group = self.next_group;
        self.next_group += 1;
        // Registered before its commands run, holding one extra `waiting`, so that it cannot
        // complete half-built should a command's outcome be decided meanwhile.
        let open = OpenGroup {
            results: Vec::with_capacity(commands.len()),
            waiting: 1,
            token,
        };
        self.groups.insert(group, open);
        // The two steps of `Ledger::prefetch`, run ahead of execution at a fixed distance
        // rather than a chunk at a time: a line asked for a whole chunk before it is used
        // was often gone again. A command's slots are asked for `PREFETCH_DISTANCE` commands
        // ahead, its rows half as far ahead, with the hashes kept in a ring from the first
        // step (written at `at`, read at `at + PREFETCH_DISTANCE / 2`, overwritten at
        // `at + PREFETCH_DISTANCE`).
        let picks = commands.picks();
        let command_at = |at: usize| picks.get(at).map(|&pick| commands.get(pick));
        let mut ahead = [Prefetched::default(); PREFETCH_DISTANCE];
        for (at, prefetched) in ahead.iter_mut().enumerate() {
            if let Some(command) = command_at(at) {
                *prefetched = self.ledger.prefetch_one(command);
            }
            if at < PREFETCH_DISTANCE / 2 {
                self.ledger.prefetch_rows(*prefetched);
            }
        }
        for (at, &pick) in picks.iter().enumerate() {
            let rows_at = (at + PREFETCH_DISTANCE / 2) % PREFETCH_DISTANCE;
            self.ledger
                .prefetch_rows(std::mem::take(&mut ahead[rows_at]));
            if let Some(command) = command_at(at + PREFETCH_DISTANCE) {
                ahead[at % PREFETCH_DISTANCE] = self.ledger.prefetch_one(command);
            }
            self.execute_in_group(group, at, commands.get(pick), wait);
        }
        self.resolve_in_group(group, None);
    }

    /// A read-only question, answered from the state the open batch leaves (so the answer
    /// leaves with that batch), but for a body whose record is durable, answered at once.
    pub fn handle_query(&mut self, token: K::Query, query: Query) {
        let answer = match query {
            Query::TransferBody(key) => match self.ledger.find_transfer_body(&key) {
                Ok(Some((body, recorded_by))) if self.is_durable_row(recorded_by) => {
                    let answer = QueryAnswer::TransferBody(Some(body));
                    self.ready.answers.push((token, answer));
                    return;
                }
                Ok(found) => QueryAnswer::TransferBody(found.map(|(body, _)| body)),
                Err(error) => {
                    tracing::error!(partition = self.partition(), %error, "transfer row unreadable");
                    QueryAnswer::Unreadable
                }
            },
            Query::Account(account) => QueryAnswer::Account(self.ledger.account(&account).copied()),
            Query::Transfer(key) => match self.ledger.find_transfer(&key) {
                Ok(row) => QueryAnswer::Transfer(row),
                Err(error) => {
                    tracing::error!(partition = self.partition(), %error, "transfer row unreadable");
                    QueryAnswer::Unreadable
                }
            },
            Query::DryRun(command) => {
                QueryAnswer::DryRun(self.ledger.dry_run_at(&command, self.now.wall_us))
            }
            Query::RefundOf(key) => match self.ledger.find_refund_of(&key) {
                Ok(original) => QueryAnswer::RefundOf(original),
                Err(error) => {
                    tracing::error!(partition = self.partition(), %error, "refund row unreadable");
                    QueryAnswer::Unreadable
                }
            },
            Query::HoldTerms(key) => match self.ledger.find_hold_terms(&key) {
                Ok(terms) => QueryAnswer::HoldTerms(terms),
                Err(error) => {
                    tracing::error!(partition = self.partition(), %error, "hold row unreadable");
                    QueryAnswer::Unreadable
                }
            },
            Query::Transaction(key) => match self.ledger.find_transaction(&key) {
                Ok(terms) => QueryAnswer::Transaction(terms),
                Err(error) => {
                    tracing::error!(partition = self.partition(), %error, "transaction row unreadable");
                    QueryAnswer::Unreadable
                }
            },
        };
        self.batch.inputs += 1;
        self.batch.client_inputs = true;
        self.batch.release.answers.push((token, answer));
    }

    /// Whether the home rows recorded through the `recorded_by`-th are all durable.
    fn is_durable_row(&self, recorded_by: usize) -> bool {
        if known_bug!(BodyBeforeDurable) {
            return true;
        }
        recorded_by <= self.durable_transfer_rows
    }

    /// A phase message from another partition: a request this partition takes part in as a
    /// destination, or a response to a transfer it is home of.
    pub fn handle_peer(&mut self, now: Now, message: PeerMessage) {
        self.now = now;
        self.batch.inputs += 1;
        match message {
            PeerMessage::Request { request, .. } => self.handle_phase_request(request),
            PeerMessage::Response(response) => {
                self.coordinator.on_response(&response, now.micros);
                self.drain_coordinator();
            }
            PeerMessage::Unresolved { transfer } => self.handle_unresolved(transfer),
            PeerMessage::StillHeld { key, for_us, .. } => {
                let after_us = self.config.coordinator.resolve_after_us;
                let until = now.micros.saturating_add(for_us).saturating_add(after_us);
                let now = now.micros;
                (self.credit_watch).defer(&mut self.ledger, &key, until, now, after_us);
            }
            PeerMessage::TxRequest(request) => self.handle_tx_request(request),
            PeerMessage::TxResponse(response) => {
                self.tx_coordinator.on_response(&response, now.micros);
                self.drain_tx_coordinator();
            }
            PeerMessage::TxUnresolved { tx, partition } => self.handle_tx_unresolved(tx, partition),
        }
    }

    /// A participant asks about its Try of `tx`. The coordinator answers for a transaction
    /// it is carrying; otherwise the row answers, and a transaction this partition has no
    /// row of (its Try was lost) is recorded rejected for good first. The answer leaves
    /// with the open batch, after the records it rests on.
    fn handle_tx_unresolved(&mut self, tx: Arc<Transaction>, partition: PartitionId) {
        if self
            .tx_coordinator
            .on_unresolved(&tx, partition, self.now.micros)
        {
            return self.drain_tx_coordinator();
        }
        let status = match self.execute(&Command::AbandonTransaction(tx.clone())) {
            Ok(Reply::Transfer(status)) => status,
            Ok(other) => unreachable!("an abandon replies with a transfer status, got {other:?}"),
            Err(error) => return self.report_refused_coordinator_command(error),
        };
        let home_terms = match self.ledger.find_transaction(&tx.key()) {
            Ok(terms) => terms,
            // The participant asks again later.
            Err(error) => return self.report_refused_coordinator_command(error),
        };
        let home_tx = home_terms.as_ref().map(|terms| &terms.tx);
        let Some(phase) = unresolved_transaction_answer(status, home_tx, &tx) else {
            return;
        };
        let request = TxRequest {
            phase,
            key: tx.key(),
            partition,
            tx: None,
        };
        let message = PeerMessage::TxRequest(request);
        self.batch.release.peer_messages.push(message);
    }

    /// A participant's part of a transaction: its answer leaves with the batch that logs
    /// it; a Confirm carried out is not answered (the home's side ended at the commit).
    fn handle_tx_request(&mut self, request: TxRequest) {
        let result = match self.execute(&request.command()) {
            Ok(Reply::Phase(result)) => result,
            Ok(other) => unreachable!("phase commands reply with a phase result, got {other:?}"),
            Err(error) => {
                let (partition, key) = (self.partition(), request.key);
                tracing::error!(partition, ?key, %error, "transaction request refused");
                PhaseResult::Refused
            }
        };
        if request.phase == Phase::Confirm && result == PhaseResult::Confirmed {
            return;
        }
        // An answer to a Try or an Abort names the legs it is about (the request's).
        let response = TxResponse {
            phase: request.phase,
            key: request.key,
            partition: self.partition(),
            result,
            tx: request.tx,
        };
        let message = PeerMessage::TxResponse(response);
        self.batch.release.peer_messages.push(message);
    }

    /// Carries out what the transaction coordinator asked for: its commands run at once,
    /// its messages leave with the open batch (after the records that caused them).
    fn drain_tx_coordinator(&mut self) {
        while let Some(output) = self.tx_coordinator.poll_output() {
            match output {
                // A Try leaves at once (see the release rule); the rest with the batch.
                TxOutput::Send(PeerMessage::TxRequest(request)) if request.phase == Phase::Try => {
                    let message = PeerMessage::TxRequest(request);
                    self.ready.peer_messages.push(message)
                }
                TxOutput::Send(message) => self.batch.release.peer_messages.push(message),
                TxOutput::Execute(command) => {
                    if let Err(error) = self.execute(&command) {
                        self.report_refused_coordinator_command(error);
                    }
                }
                // Every participant durably tried: its clients hear once the home's own Try
                // is durable too.
                TxOutput::Committed { key, try_lsn } => {
                    self.resolve_waiters(&key, TransferStatus::Committed, Some(try_lsn))
                }
                TxOutput::Violation { key, detail } => self.report_violation(key, detail),
            }
        }
    }

    /// Phase messages from other partitions, in order (see [`PartitionMachine::handle_peer`]).
    /// The rows they will touch are prefetched a chunk at a time first, as for a group of
    /// commands.
    pub fn handle_peers(&mut self, now: Now, messages: &[PeerMessage]) {
        for chunk in messages.chunks(PREFETCH_COMMANDS_MAX) {
            self.ledger.prefetch(chunk.iter().filter_map(peer_command));
            for message in chunk {
                self.handle_peer(now, message.clone());
            }
        }
    }

    /// Asks for the index slots `command` will look up (the first step of
    /// [`Ledger::prefetch`]); changes nothing and waits for nothing. Hand what it returns to
    /// [`PartitionMachine::prefetch_rows`] a few inputs later.
    pub fn prefetch(&self, command: &Command) -> Prefetched {
        self.ledger.prefetch_one(command)
    }

    /// Asks for the account rows whose slots [`PartitionMachine::prefetch`] asked for (the
    /// second step of [`Ledger::prefetch`]).
    pub fn prefetch_rows(&self, prefetched: Prefetched) {
        self.ledger.prefetch_rows(prefetched);
    }

    /// Time passed: resends, timeouts and questions about pending credits that are due join
    /// the open batch.
    pub fn handle_tick(&mut self, now: Now) {
        self.now = now;
        self.drop_a_written_chunk();
        self.coordinator.on_tick(now.micros);
        self.drain_coordinator();
        self.tx_coordinator.on_tick(now.micros);
        self.drain_tx_coordinator();
        let after_us = self.config.coordinator.resolve_after_us;
        let mut unresolved = Vec::new();
        self.credit_watch
            .due(&mut self.ledger, now.micros, after_us, &mut unresolved);
        for transfer in unresolved {
            let message = PeerMessage::Unresolved { transfer };
            self.batch.release.peer_messages.push(message);
        }
        self.expire_due_holds();
    }

    /// Tells the destination of the held hold `transfer`, which asked about its credit, to
    /// ask again once the hold expires.
    fn answer_still_held(&mut self, transfer: &Transfer) {
        let key = transfer.key();
        let Some(terms) = self.ledger.hold_terms(&key) else {
            return;
        };
        let message = PeerMessage::StillHeld {
            key,
            partition: crate::model::partition::partition_of(
                &transfer.to,
                self.ledger.partitions(),
            ),
            for_us: terms.expires_at.saturating_sub(self.now.wall_us),
        };
        self.batch.release.peer_messages.push(message);
    }

    /// Expires the holds whose expiry has come by the wall clock, a round at a time.
    fn expire_due_holds(&mut self) {
        for key in self
            .ledger
            .holds_due(self.now.wall_us, HOLDS_EXPIRED_PER_TICK_MAX)
        {
            if let Err(error) = self.execute(&Command::ExpireHold { key }) {
                self.report_refused_coordinator_command(error);
            }
        }
    }

    /// The next batch to make durable, if none is in flight and the open batch holds
    /// anything. See the release rule in the module docs.
    #[must_use]
    pub fn poll_commit(&mut self) -> Option<Commit<K>> {
        if self.committing.is_some() || self.batch.is_empty() || self.background_waits() {
            return None;
        }
        self.background_since = None;
        #[cfg(any(debug_assertions, madsim))]
        if let Err(violation) = self.ledger.check_conservation() {
            panic!(
                "partition {}: conservation violated: {violation}",
                self.partition()
            );
        }
        // Credits tried by this batch are asked about if they stay pending too long.
        let after_us = self.config.coordinator.resolve_after_us;
        self.credit_watch
            .mark(&mut self.ledger, self.now.micros, after_us);
        let next = OpenBatch::new(std::mem::take(&mut self.spare_bytes));
        let batch = std::mem::replace(&mut self.batch, next);
        let last_lsn = self.ledger.last_applied().lsn;
        if batch.bytes.is_empty() {
            self.spare_bytes = batch.bytes;
            return Some(Commit {
                bytes: Vec::new(),
                first_lsn: last_lsn + 1,
                last_lsn,
                release: batch.release,
                snapshot: None,
            });
        }
        assert!(batch.first_lsn > 0 && batch.first_lsn <= last_lsn);
        self.committing = Some(last_lsn);
        self.committing_transfer_rows = self.ledger.transfer_count();
        Some(Commit {
            bytes: batch.bytes,
            first_lsn: batch.first_lsn,
            last_lsn,
            release: batch.release,
            snapshot: self.take_snapshot_if_due(),
        })
    }

    /// The commit in flight is durable up to `last_lsn`; `buffer` is its bytes' buffer, given
    /// back for reuse.
    pub fn handle_durable(&mut self, last_lsn: Lsn, mut buffer: Vec<u8>) {
        assert_eq!(
            self.committing.take(),
            Some(last_lsn),
            "durable reports come one per commit, in order"
        );
        self.durable_lsn = last_lsn;
        self.durable_transfer_rows = self.committing_transfer_rows;
        let waited = std::mem::take(&mut self.after_commit);
        self.ready.append(waited);
        buffer.clear();
        if buffer.capacity() > self.spare_bytes.capacity() {
            self.spare_bytes = buffer;
        }
    }

    /// The snapshot of the last commit that carried one is written (`Ok` with the chunk
    /// files it wrote, see [`ChunkPlan::frozen`]) or failed. A snapshot only shortens
    /// recovery, so a failure changes nothing but that the next one writes these chunks too.
    pub fn handle_snapshot_written(&mut self, written: Result<usize, ()>) {
        assert!(self.snapshot_pending, "a snapshot was being written");
        self.snapshot_pending = false;
        let made = self.chunks_being_written.take();
        // The encoding ran the Bloom filter's build it carried, if any, whatever became of
        // the snapshot.
        self.ledger.take_bloom_build();
        if let Ok(chunks_frozen) = written {
            assert!(chunks_frozen >= self.chunks_written);
            self.chunks_written = chunks_frozen;
            // The chunk files are durable: their rows may leave memory.
            self.chunks_to_drop.extend(made);
        }
    }

    /// Drops the rows of the next chunk whose file is durable from memory, if one waits.
    fn drop_a_written_chunk(&mut self) {
        if let Some(chunk) = self.chunks_to_drop.pop_front() {
            let number = chunk.chunk;
            if !self.ledger.drop_transfer_chunk(chunk) {
                tracing::debug!(
                    partition = self.partition(),
                    chunk = number,
                    "chunk kept in memory"
                );
            }
        }
    }

    fn execute_in_group(&mut self, group: u64, index: usize, command: &Command, wait: bool) {
        let result = self.execute(command);
        let pending = self.pending_key(command, &result, wait);
        let open = self.groups.get_mut(&group).expect("the group is open");
        debug_assert_eq!(open.results.len(), index);
        open.results.push(result);
        if let Some(key) = pending {
            open.waiting += 1;
            self.add_waiter(key, Waiter::InGroup { group, index });
        }
    }

    /// A destination's part of a transfer. Its answer leaves with the batch that logs it;
    /// every request is answered, a refusal included (the home reports it as a violation),
    /// except a Confirm carried out: the home's side ended at the commit point, and nobody
    /// waits for it (see [`crate::protocol::coordinator`]).
    fn handle_phase_request(&mut self, request: PhaseRequest) {
        let result = match self.execute(&request.command()) {
            Ok(Reply::Phase(result)) => result,
            Ok(other) => unreachable!("phase commands reply with a phase result, got {other:?}"),
            Err(error) => {
                let (partition, key) = (self.partition(), request.transfer.key());
                tracing::error!(partition, ?key, %error, "phase request refused");
                PhaseResult::Refused
            }
        };
        if !destination_answers(request.phase, result) {
            return;
        }
        let response = PhaseResponse {
            phase: request.phase,
            key: request.transfer.key(),
            result,
        };
        let message = PeerMessage::Response(response);
        self.batch.release.peer_messages.push(message);
    }

    /// A destination asks about a pending credit (see [`crate::protocol::credit_watch`]).
    /// The coordinator answers for a transfer it is carrying; otherwise the row answers:
    /// a finished transfer resends its second phase, and a transfer this partition has no
    /// row of (its debit was lost) is recorded refused for good and its credit cancelled.
    /// Every answer leaves with the open batch, after the records it rests on.
    fn handle_unresolved(&mut self, transfer: Transfer) {
        if self.coordinator.on_unresolved(&transfer, self.now.micros) {
            self.drain_coordinator();
            return;
        }
        let status = match self.execute(&Command::Abandon(transfer)) {
            Ok(Reply::Transfer(status)) => status,
            Ok(other) => unreachable!("an abandon replies with a transfer status, got {other:?}"),
            Err(error) => return self.report_refused_coordinator_command(error),
        };
        // The row was just found or recorded by the abandon: in memory.
        let row_body = self
            .ledger
            .find_transfer(&transfer.key())
            .ok()
            .flatten()
            .map(|row| row.transfer);
        if status == TransferStatus::Held {
            return self.answer_still_held(&transfer);
        }
        let Some(phase) = unresolved_answer(status, row_body, &transfer) else {
            return;
        };
        let from = self.partition();
        // A hold's Confirm carries what was captured.
        let captured = (status == TransferStatus::Captured)
            .then(|| self.ledger.hold_terms(&transfer.key()))
            .flatten()
            .and_then(|terms| terms.captured);
        let transfer = Transfer {
            amount: captured.unwrap_or(transfer.amount),
            ..transfer
        };
        let request = PhaseRequest { phase, transfer };
        let message = PeerMessage::Request { from, request };
        self.batch.release.peer_messages.push(message);
    }

    /// Known bug `CommitOnHomeOnly`: a cross-partition transfer is answered `committed` as
    /// soon as its debit is taken, so its client hears it once the home alone is durable.
    #[cfg(any(test, madsim, feature = "testing"))]
    fn committed_on_home_only_if_bugged(&self, result: CommandResult) -> CommandResult {
        use crate::protocol::bugs::{enabled, Bug};
        match result {
            Ok(Reply::Transfer(TransferStatus::Pending)) if enabled(Bug::CommitOnHomeOnly) => {
                Ok(Reply::Transfer(TransferStatus::Committed))
            }
            other => other,
        }
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
            (
                Command::Transfer(_) | Command::Refund(_) | Command::Hold(_) | Command::Transact(_),
                Ok(Reply::Transfer(TransferStatus::Pending)),
            ) if wait && self.waiter_count < self.config.waiters_max => {
                // A waiter must be registered before the decision it waits for; should the
                // decision already be applied, the client gets `Pending` and asks again.
                let key = match command {
                    Command::Refund(refund) => self.ledger.refund_key(refund)?,
                    command => command.transfer_key()?,
                };
                // Just decided, so in memory: a row on disk is final anyway.
                let row = self.ledger.find_transfer(&key).ok().flatten()?;
                (row.state.status() == TransferStatus::Pending).then_some(key)
            }
            _ => None,
        }
    }

    fn add_waiter(&mut self, key: TransferKey, waiter: Waiter<K>) {
        self.waiters.entry(key).or_default().push(waiter);
        self.waiter_count += 1;
    }

    /// Settles answer `index` of `group` (when given) and, once none is left waiting, puts
    /// the group's answers into the open batch.
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
            self.batch.release.groups.push((open.token, open.results));
        }
    }

    /// A transfer's outcome is `status`. Committed (`early`, the debit's lsn): each single
    /// waiter's answer leaves as soon as the debit is durable, since the
    /// destination's durable Tried fixed the outcome. Cancelled: with the open batch, which
    /// logs the decision, because the reason is the home's: a restart that lost the
    /// decision could decide on another answer with another reason. A group's answers
    /// leave with the open batch either way.
    fn resolve_waiters(&mut self, key: &TransferKey, status: TransferStatus, early: Option<Lsn>) {
        let Some(waiting) = self.waiters.remove(key) else {
            return;
        };
        self.waiter_count -= waiting.len();
        assert_ne!(status, TransferStatus::Pending);
        for waiter in waiting {
            let answer = Ok(Reply::Transfer(status));
            match waiter {
                Waiter::One(token) => {
                    let release = match early {
                        Some(debit_lsn) => self.release_resting_on(debit_lsn),
                        None => &mut self.batch.release,
                    };
                    release.replies.push((token, answer));
                }
                Waiter::InGroup { group, index } => {
                    self.resolve_in_group(group, Some((index, answer)))
                }
            }
        }
    }

    /// The destination durably tried `transfer`: once its debit (`debit_lsn`) is durable too,
    /// it is committed, so its Confirm may leave and its clients be told, without waiting
    /// for the record that finishes the home's side. The Confirm goes first: a client told `committed` can count
    /// on the credit being on its way (on one node, spendable by its next request).
    fn committed(&mut self, transfer: Transfer, debit_lsn: Lsn) {
        if self.ledger.hold_terms(&transfer.key()).is_some() {
            // A hold is held at this point, and nothing goes to the destination until it
            // ends. Its clients are told as a transfer's are, once the debit is durable,
            // without waiting for the record that it is held (`HoldEstablished`, which the
            // coordinator's next command writes): a crash that takes that record leaves the
            // hold being placed until the home asks its destination again, and a capture
            // or void meanwhile is answered `HoldBeingPlaced`, to be asked again, never
            // refused.
            self.resolve_waiters(&transfer.key(), TransferStatus::Held, Some(debit_lsn));
            return;
        }
        let from = self.partition();
        let request = PhaseRequest {
            phase: Phase::Confirm,
            transfer,
        };
        let confirm = PeerMessage::Request { from, request };
        self.release_resting_on(debit_lsn)
            .peer_messages
            .push(confirm);
        self.resolve_waiters(&transfer.key(), TransferStatus::Committed, Some(debit_lsn));
    }

    /// The earliest release that may carry what rests on the records through `lsn`.
    fn release_resting_on(&mut self, lsn: Lsn) -> &mut Release<K> {
        if lsn <= self.durable_lsn {
            &mut self.ready
        } else if self.committing.is_some_and(|last| lsn <= last) {
            &mut self.after_commit
        } else {
            &mut self.batch.release
        }
    }

    /// Decides `command`, applies its events and encodes them into the open batch.
    fn execute(&mut self, command: &Command) -> CommandResult {
        debug_assert!(self.events.is_empty());
        let first_lsn = self.ledger.last_applied().lsn + 1;
        let result = self
            .ledger
            .execute(command, self.now.wall_us, &mut self.events);
        if self.events.is_empty() {
            return result;
        }
        if self.batch.bytes.is_empty() {
            self.batch.first_lsn = first_lsn;
        }
        let timestamp = self.ledger.last_applied().timestamp;
        let mut events = std::mem::take(&mut self.events);
        for (lsn, event) in (first_lsn..).zip(events.iter()) {
            encode_event_record(lsn, timestamp, event, &mut self.batch.bytes);
            self.coordinator.on_event(event, lsn, self.now.micros);
            self.tx_coordinator.on_event(event, lsn, self.now.micros);
            match event {
                Event::CreditTried { .. } => self.pending_credits += 1,
                Event::CreditConfirmed { .. }
                | Event::CreditCaptured { .. }
                | Event::CreditCancelled { .. } => {
                    self.pending_credits = self.pending_credits.saturating_sub(1)
                }
                _ => {}
            }
            match event {
                Event::TransferDecided { key, .. } => {
                    let row = self
                        .ledger
                        .transfer(key)
                        .expect("a decided transfer has a row");
                    self.record_span(PhaseSpan::TryToDecision(
                        row.decided_at.saturating_sub(row.accepted_at),
                    ));
                    self.resolve_waiters(key, row.state.status(), None);
                }
                Event::HoldEstablished { key } => {
                    self.resolve_waiters(key, TransferStatus::Held, None);
                }
                // A transaction's clients hear its cancel with the batch that decides it.
                Event::TransactionCancelling { key, reason, .. } => {
                    self.resolve_waiters(key, TransferStatus::Cancelled(*reason), None);
                }
                Event::DebitConfirmed { key } | Event::DebitCancelled { key } => {
                    let row = self
                        .ledger
                        .transfer(key)
                        .expect("a finished transfer has a row");
                    // Committed at the commit point: this record is the decision too.
                    if matches!(command, Command::CommitDebit { .. })
                        && row.decided_at == row.finished_at
                    {
                        let span = row.decided_at.saturating_sub(row.accepted_at);
                        self.record_span(PhaseSpan::TryToDecision(span));
                    }
                    let span = row.finished_at.saturating_sub(row.decided_at);
                    self.record_span(PhaseSpan::DecisionToFinish(span));
                }
                _ => {}
            }
        }
        debug_assert_eq!(
            first_lsn + events.len() as Lsn - 1,
            self.ledger.last_applied().lsn
        );
        self.events_since_snapshot += events.len() as u64;
        self.counters.events += events.len() as u64;
        events.clear();
        self.events = events;
        self.drain_coordinator();
        self.drain_tx_coordinator();
        result
    }

    fn record_span(&mut self, span: PhaseSpan) {
        if self.phase_spans.len() < PHASE_SPANS_KEPT_MAX {
            self.phase_spans.push(span);
        }
    }

    /// Carries out everything the coordinator asked for. Local commands run at once (their
    /// events join the open batch); messages join its release.
    fn drain_coordinator(&mut self) {
        while let Some(output) = self.coordinator.poll_output() {
            match output {
                Output::Send { request, .. } => {
                    let from = self.partition();
                    let message = PeerMessage::Request { from, request };
                    // A Try leaves at once (see the release rule); the rest with the batch.
                    let release = match request.phase {
                        Phase::Try => &mut self.ready,
                        _ => &mut self.batch.release,
                    };
                    release.peer_messages.push(message);
                }
                Output::Committed {
                    transfer,
                    debit_lsn,
                } => self.committed(transfer, debit_lsn),
                Output::Execute(command) => {
                    if let Err(error) = self.execute(&command) {
                        self.report_refused_coordinator_command(error);
                    }
                }
                Output::Violation { key, detail } => self.report_violation(key, detail),
            }
        }
    }

    fn report_refused_coordinator_command(&self, error: LedgerError) {
        tracing::error!(partition = self.partition(), %error, "coordinator command refused");
    }

    /// A state the protocol says cannot happen. Debug and simulation builds stop at once, so
    /// no test and no seed can pass over one; a release build logs it and counts it (for
    /// metrics and alerts), and goes on: the logged decision stands either way.
    fn report_violation(&mut self, key: TransferKey, detail: String) {
        let partition = self.partition();
        #[cfg(any(debug_assertions, madsim))]
        panic!("partition {partition}: TC/C protocol violation for {key:?}: {detail}");
        #[cfg(not(any(debug_assertions, madsim)))]
        {
            self.counters.violations += 1;
            tracing::error!(partition, ?key, detail, "TC/C protocol violation");
        }
    }

    /// The image of a snapshot to write after the commit being handed out, if one is due.
    ///
    /// A snapshot costs time in proportion to the rows it holds inline: every row but those
    /// of chunk files already written. Taking one only once the log since the last holds at
    /// least half as many events as there are such rows keeps that cost at most two rows per
    /// event, however large the state becomes, and recovery replays at most about half a
    /// state's worth of records. Half, not all: most events add a row (every transfer does),
    /// so the log since the last snapshot would never catch up with a state growing with it.
    /// Whether the transfers table holds more rows in memory than its budget and half the
    /// budget's worth of them could go to chunk files now (see
    /// [`MachineConfig::transfer_rows_in_memory_max`]). Half, not one chunk: rows still in
    /// flight keep the last chunks in memory (up to
    /// [`crate::ledger::transfer_table::MOVE_AFTER_CHUNKS`] of them, half the default
    /// budget, before they move on), so the table stays over budget while they do, and a
    /// snapshot per chunk that becomes final meanwhile would write the accounts each time.
    fn over_budget(&mut self) -> bool {
        let budget = self.config.transfer_rows_in_memory_max;
        let chunks_wanted = (budget / crate::ledger::CHUNK_ROWS / 2).max(1);
        if self.ledger.transfer_rows_in_memory() <= budget {
            return false;
        }
        // Only decides when; the snapshot's plan scans its chunks again (see
        // `take_snapshot_if_due`).
        let known = self.chunks_found_final.max(self.chunks_written);
        self.chunks_found_final = known + self.ledger.final_chunks_from(known);
        self.chunks_found_final - self.chunks_written >= chunks_wanted
    }

    fn take_snapshot_if_due(&mut self) -> Option<SnapshotImage> {
        let every = self.config.snapshot_every_events;
        let in_chunks = self.chunks_written * crate::ledger::CHUNK_ROWS;
        let half_the_rows = self.ledger.row_count().saturating_sub(in_chunks) as u64 / 2;
        let due = !self.snapshot_pending
            && every != 0
            && (self.events_since_snapshot >= every.max(half_the_rows) || self.over_budget());
        if !due {
            return None;
        }
        self.events_since_snapshot = 0;
        self.snapshot_pending = true;
        // Only the image is taken here; the runtime encodes it where it writes it. Chunks of
        // the transfers table that have become final since the last go to chunk files.
        let written = self.chunks_written;
        let frozen = written + self.ledger.final_chunks_from(written);
        let bloom_build = self.ledger.bloom_build();
        let image = SnapshotImage::with_chunks(&self.ledger, ChunkPlan { written, frozen })
            .with_bloom_build(bloom_build);
        self.chunks_being_written = image.written_chunks();
        Some(image)
    }
}

/// The command whose rows a phase message will touch, for [`Ledger::prefetch`].
fn peer_command(message: &PeerMessage) -> Option<Command> {
    match message {
        PeerMessage::Request { request, .. } => Some(request.command()),
        PeerMessage::Response(response) => Some(Command::CommitDebit { key: response.key }),
        PeerMessage::TxRequest(request) => Some(request.command()),
        PeerMessage::Unresolved { .. }
        | PeerMessage::StillHeld { .. }
        | PeerMessage::TxResponse(_)
        | PeerMessage::TxUnresolved { .. } => None,
    }
}

/// Commands of a group whose rows are fetched into cache ahead of executing them
/// ([`Ledger::prefetch`]); their rows must fit in a core's L2 cache with room to spare.
const PREFETCH_COMMANDS_MAX: usize = 256;
/// How far ahead of the command being executed a group's index slots are asked for
/// ([`Ledger::prefetch_one`]); the account rows those slots name are asked for half as far
/// ahead ([`Ledger::prefetch_rows`]), when the slots have had time to arrive.
const PREFETCH_DISTANCE: usize = 32;

/// Most transfer step spans kept for [`PartitionMachine::take_phase_spans`]; later ones are
/// not kept until they are taken (a runtime takes them every round of inputs).
pub const PHASE_SPANS_KEPT_MAX: usize = 65_536;

#[cfg(test)]
mod tests;
