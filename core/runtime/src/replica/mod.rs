//! The replica driver: the async loop that runs one [`Replica`] (a partition's member of its
//! Raft group), as [`crate::driver`] runs a [`PartitionMachine`] alone.
//!
//! ```text
//!   inbox (clients, phase messages) ──► machine (while leading) ─┐
//!   raft inbox (group messages) ──────► Raft ◄───────────────────┤ poll
//!   tick ──────────────────────────────► Raft, machine timers     │
//!                                                                 ▼
//!   send messages ─ raft store: append + sync (group commit) ─ send what vouches for it
//!   append committed batches to the partition log ─ release answers ─ write snapshots
//! ```
//!
//! What may leave when is the replica's rule (see [`walletd_core::replica`]): answers once
//! committed, a follower's acknowledgements and votes once its Raft store is synced. The Raft
//! store is written as a group commit: persists handed out while a sync runs are written and
//! synced together by the next one.
//!
//! The partition's own log gets committed batches only, appended without a sync: the Raft
//! store holds them durably (nothing is compacted out of it yet). It is synced before a
//! snapshot is written (no snapshot is ever ahead of its log), before a reload (which reads
//! it back), and at a clean stop. After a crash the log may have lost a tail; Raft hands out
//! every committed entry again at start, and the replica appends what the log lacks.
//!
//! A client command that reaches a replica that does not lead is dropped unanswered (its
//! client sees the partition unavailable, and retries, with the same transaction id, where
//! [`ReplicaStatus::leader`] points).
//!
//! # Which replica it is
//! The driver takes its replica id from the Raft store. A store that has decided nothing
//! and holds nothing (a new group, or a lost disk) first asks the group how to start
//! ([`walletd_core::replica::membership`]): as the node's first incarnation when the whole
//! group is new, or as the learner the leader takes in. Meanwhile client requests go to the
//! leader an answer named, or wait as during an election.
//!
//! # A damaged copy
//! A partition log that does not recover (damage that a later sync vouched for, a gap,
//! records that do not replay) is this replica's copy only: its group holds the same
//! records. So instead of refusing to start, the driver sets the copy aside
//! ([`Storage::set_aside`]), empties its Raft store (its entries and applied index speak of
//! the copy it gave up) and starts as a replica with a lost disk does: it rejoins under a
//! new id and catches up. A storage that holds a copy set aside says so
//! ([`Storage::holds_set_aside`]), and the replica then never starts a new group over it,
//! as one whose log holds records never does.
//!
//! # A moved replica
//! The placement ([`Placement`]) names the nodes that hold the partition's replicas, and
//! may change while the replica runs: the driver hands each new group to its replica as
//! the target its leader converges the members to ([`Replica::set_target`]). A replica on a
//! node the placement no longer names goes on as a member until the group has removed it,
//! asking now and then whether it has ([`MembershipMessage::Check`]); once a member answers
//! that a later membership leaves it out, the driver stops and gives its storages and its
//! inbox back ([`Stopped::Removed`]) for its node to delete the copy. A replica still
//! deciding its id when its node leaves the group stops the same way: it has nothing that
//! counts. A replica that applies members leaving it out after it had been one stops
//! whatever the placement says (a copy moved away and straight back is a new copy). And a
//! replica that hears from no leader for two seconds asks too, named or not: one that its
//! group removed while its node was down, and that the placement names again by the time it
//! restarts, would otherwise wait for a leader forever.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::watch;
use tokio::time::Instant;

use walletd_core::ledger::Ledger;
use walletd_core::log::codec::{encode_record, RecordReader};
use walletd_core::model::event::Lsn;
use walletd_core::model::partition::{NodeId, PartitionId};
use walletd_core::model::placement::Placement;
use walletd_core::protocol::machine::{Now, PartitionMachine};
use walletd_core::replica::membership::{self, initial_id, Decision, Joiner, MembershipMessage};
use walletd_core::replica::{
    CatchUpMessage, DurableRaft, Persist, RaftMessage, Replica, ReplicaConfig, ReplicaError,
    ReplicaId, ReplicaReady, FETCH_BYTES_MAX,
};

use crate::driver::{recover, wall_clock_us, Channels, DriverError, DriverStats, Input};
use crate::storage::raft_store::RaftStore;
use crate::storage::{SegmentRef, Storage};
use crate::transport::Transport;

#[cfg(test)]
mod tests;

/// How a replica reaches the other replicas of its group. Best effort, like [`Transport`]:
/// Raft resends what is lost, and a client whose forwarded command is lost retries.
pub trait GroupLinks: Send + Sync + 'static {
    /// Sends each message to replica `message.to` of `partition`'s group.
    fn send_raft(&self, partition: PartitionId, messages: Vec<RaftMessage>);

    /// Hands a client command, query or phase message to replica `to` (the leader), with
    /// its reply channel. Gives it back if there is no way to `to` now.
    fn forward(&self, to: ReplicaId, input: Input) -> Result<(), Input>;

    /// Sends a membership message to the replica of `partition` on node `node`.
    fn send_membership(&self, node: NodeId, partition: PartitionId, message: MembershipMessage);

    /// Sends a catch-up message (a fetch of records, or records) to the replica of
    /// `partition` on node `node`.
    fn send_catch_up(&self, node: NodeId, partition: PartitionId, message: CatchUpMessage);
}

/// What a replica publishes of its role, for routing and `GET /v1/cluster`.
#[derive(Debug, Default)]
pub struct ReplicaStatus {
    /// Leads and has caught up: takes client commands and phase messages.
    pub leading: AtomicBool,
    /// The leader it knows of (0: none).
    pub leader: AtomicU64,
    pub term: AtomicU64,
    pub commit_index: AtomicU64,
    pub applied_lsn: AtomicU64,
    /// The nodes whose replicas are learners in the members this replica applied: copies
    /// catching up (a replica that lost its disk) that do not vote yet.
    pub learners: std::sync::Mutex<Vec<NodeId>>,
    /// The nodes whose replicas are voters in the members this replica applied (the
    /// incoming ones, during a change).
    pub voters: std::sync::Mutex<Vec<NodeId>>,
    /// A change of voters is under way (joint consensus: decisions need a majority of the
    /// old voters and of the new).
    pub members_changing: AtomicBool,
}

impl ReplicaStatus {
    pub fn leader(&self) -> Option<ReplicaId> {
        match self.leader.load(Ordering::Acquire) {
            0 => None,
            id => Some(id),
        }
    }
}

/// Timing and limits of a replica driver.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaTiming {
    /// One Raft tick. Elections start after `election_ticks` to twice that without a
    /// leader ([`ReplicaConfig`]).
    pub tick: Duration,
    /// How long a command or phase message waits for its group to have a leader (an
    /// election) before it is dropped: its client then sees the partition unavailable.
    pub leader_wait: Duration,
    /// Most inputs waiting for a leader; beyond it new ones are dropped at once.
    pub leader_wait_inputs_max: usize,
}

impl Default for ReplicaTiming {
    fn default() -> Self {
        ReplicaTiming {
            tick: Duration::from_millis(10),
            leader_wait: Duration::from_secs(2),
            leader_wait_inputs_max: 65_536,
        }
    }
}

/// Why a replica stops.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaDriverError {
    #[error(transparent)]
    Partition(#[from] DriverError),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error("partition {partition}: raft store: {source}")]
    RaftStore {
        partition: PartitionId,
        source: io::Error,
    },
}

/// What a Raft store write gives back: the store and the outcome, with what waited for it.
type StoreWrite<R> = Pin<Box<dyn Future<Output = (R, io::Result<()>, Written)> + Send>>;

/// Persists written by one store write, and the messages that wait for them.
struct Written {
    last_number: u64,
    messages: Vec<RaftMessage>,
}

/// The driver of one replica. Build with [`ReplicaDriver::start`], then `run` it as a task.
pub struct ReplicaDriver<S: Storage, R: RaftStore> {
    partition: PartitionId,
    partitions: u32,
    storage: S,
    raft_store: R,
    durable: DurableRaft,
    ledger: Ledger,
    config: ReplicaConfig,
    timing: ReplicaTiming,
    wiring: ReplicaWiring,
}

/// How often a replica with nothing on disk asks its group again.
const ASK_INTERVAL: Duration = Duration::from_millis(200);

/// How often a replica on a node the placement no longer names asks whether its group
/// has removed it.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// How long a replica on a node the placement names goes without a leader before it, too,
/// asks whether its group still counts it: one removed while its node was down never hears
/// from a leader again.
const LEADERLESS_CHECK_AFTER: Duration = Duration::from_secs(2);

/// How a replica driver ended.
pub enum Stopped<S, R> {
    /// Asked to stop ([`Input::Shutdown`]) or every sender of its inbox gone: the partition
    /// log is synced.
    Shutdown { storage: S, raft_store: R },
    /// Its group removed it, after the placement moved it off its node (see "A moved
    /// replica" in the module docs): its copy is no longer needed. The inbox comes back
    /// with whatever came meanwhile.
    Removed {
        storage: S,
        raft_store: R,
        inbox: mpsc::Receiver<Input>,
    },
}

impl<S, R> Stopped<S, R> {
    /// The storages, however it ended.
    pub fn into_storages(self) -> (S, R) {
        match self {
            Stopped::Shutdown {
                storage,
                raft_store,
            }
            | Stopped::Removed {
                storage,
                raft_store,
                ..
            } => (storage, raft_store),
        }
    }
}

/// A running replica's driver loop.
struct Running<S: Storage, R: RaftStore> {
    replica: Replica<Channels>,
    storage: S,
    /// `None` while a write owns it.
    raft_store: Option<R>,
    /// Persists waiting for the next store write, with the messages that vouch for them.
    queued: Vec<(Persist, Vec<RaftMessage>)>,
    peers: Arc<dyn Transport>,
    links: Arc<dyn GroupLinks>,
    inbox: mpsc::Receiver<Input>,
    /// Client commands, queries and phase messages not yet handed on, oldest first, with
    /// when they came (see `route_waiting`).
    waiting: VecDeque<(Instant, Input)>,
    status: Arc<ReplicaStatus>,
    stats: Arc<DriverStats>,
    timing: ReplicaTiming,
    partitions: u32,
    clock_origin: Instant,
    /// The membership change whose learners `status` shows.
    published_conf: Option<u64>,
    /// Committed batches appended to the partition log since it was last synced.
    unsynced_batches: usize,
    /// Fetches of records from other nodes' replicas, to serve: (node, after, through).
    fetches: Vec<(NodeId, Lsn, Lsn)>,
    /// The node this replica runs on, and where the partition's copies are.
    node: NodeId,
    placement: watch::Receiver<Arc<Placement>>,
    /// A member answered that the group removed this replica, or it applied members that
    /// leave it out after it had been one.
    removed: bool,
    /// It has been one of the members it applied, since it started.
    was_member: bool,
    /// Since when it knows no leader (checked every [`CHECK_INTERVAL`]).
    leaderless_since: Option<Instant>,
    /// The last closed segment read to serve a fetch (fetches go through it in order).
    fetch_cache: Option<(SegmentRef, Vec<u8>)>,
}

/// Most committed batches appended to the partition log between syncs made so that the
/// Raft log can be compacted ([`Replica::handle_log_durable`]); fewer when the replica
/// compacts sooner.
const LOG_SYNC_BATCHES: usize = 512;

/// The inputs and outputs of a replica driver, other than its storage.
pub struct ReplicaWiring {
    /// The node this replica runs on, and where every partition's copies are: the group of
    /// this one names this node when the replica starts.
    pub node: NodeId,
    pub placement: watch::Receiver<Arc<Placement>>,
    pub peers: Arc<dyn Transport>,
    pub links: Arc<dyn GroupLinks>,
    /// Client commands, queries, phase messages and the group's Raft and membership
    /// messages.
    pub inbox: mpsc::Receiver<Input>,
    pub status: Arc<ReplicaStatus>,
    pub stats: Arc<DriverStats>,
}

impl<S: Storage, R: RaftStore> ReplicaDriver<S, R> {
    /// Recovers the partition log (the committed state it holds) and the Raft store. The
    /// replica's id comes from the store, `config.id` is ignored: see "Which replica it is"
    /// in the module docs.
    pub async fn start(
        partition: PartitionId,
        partitions: u32,
        mut storage: S,
        mut raft_store: R,
        config: ReplicaConfig,
        timing: ReplicaTiming,
        wiring: ReplicaWiring,
    ) -> Result<Self, ReplicaDriverError> {
        let (ledger, report) = match recover(&mut storage, partition, partitions).await {
            Err(
                damage @ (DriverError::Corrupt { .. }
                | DriverError::Gap { .. }
                | DriverError::Replay { .. }),
            ) => {
                tracing::error!(
                    partition,
                    %damage,
                    "this replica's copy of the partition is damaged: it is set aside, and \
                     the replica rejoins its group under a new id and catches up"
                );
                let io = |source| DriverError::Io { partition, source };
                storage.set_aside().await.map_err(io)?;
                let founders = wiring.placement.borrow().founders(partition).to_vec();
                let voters: Vec<u64> = founders.into_iter().map(initial_id).collect();
                raft_store
                    .reset(DurableRaft::new(&voters))
                    .await
                    .map_err(|source| ReplicaDriverError::RaftStore { partition, source })?;
                recover(&mut storage, partition, partitions).await?
            }
            recovered => recovered?,
        };
        let durable = raft_store
            .recover()
            .await
            .map_err(|source| ReplicaDriverError::RaftStore { partition, source })?;
        tracing::info!(
            partition,
            replica = durable.id,
            lsn = report.last_lsn,
            term = durable.hard_state.term,
            raft_entries = durable.entries.len(),
            undecided = durable.is_undecided(),
            "replica recovered"
        );
        Ok(ReplicaDriver {
            partition,
            partitions,
            storage,
            raft_store,
            durable,
            ledger,
            config,
            timing,
            wiring,
        })
    }

    /// Runs until a [`Input::Shutdown`], until every sender of the inbox is gone, or until
    /// its group removes it (first finding out which replica it is, if its store has not
    /// decided). A clean stop syncs the partition log and returns the storages.
    pub async fn run(mut self) -> Result<Stopped<S, R>, ReplicaDriverError> {
        let mut waiting = VecDeque::new();
        let id = match self.decide_id(&mut waiting).await? {
            Decided::Id(id) => id,
            Decided::Stop => {
                return Ok(Stopped::Shutdown {
                    storage: self.storage,
                    raft_store: self.raft_store,
                })
            }
            Decided::Moved => {
                return Ok(Stopped::Removed {
                    storage: self.storage,
                    raft_store: self.raft_store,
                    inbox: self.wiring.inbox,
                })
            }
        };
        let mut config = self.config;
        config.id = id;
        let now = Now {
            micros: 0,
            wall_us: wall_clock_us(),
        };
        let mut replica = Replica::new(config, &self.durable, self.ledger, now)?;
        let mut wiring = self.wiring;
        replica.set_target(
            wiring
                .placement
                .borrow_and_update()
                .group(self.partition)
                .to_vec(),
        );
        let running = Running {
            replica,
            storage: self.storage,
            raft_store: Some(self.raft_store),
            queued: Vec::new(),
            peers: wiring.peers,
            links: wiring.links,
            inbox: wiring.inbox,
            waiting,
            status: wiring.status,
            stats: wiring.stats,
            timing: self.timing,
            partitions: self.partitions,
            clock_origin: Instant::now(),
            published_conf: None,
            unsynced_batches: 0,
            fetches: Vec::new(),
            fetch_cache: None,
            node: wiring.node,
            placement: wiring.placement,
            removed: false,
            was_member: false,
            leaderless_since: None,
        };
        let stopped = running.run().await;
        if let Err(error) = &stopped {
            tracing::error!(partition = self.partition, %error, "replica stopped");
        }
        stopped
    }

    /// The replica's id: the store's, or for a store of a build before ids its node's
    /// first incarnation, or for a new store what its group answers (written to the store
    /// before it is used). `None` if asked to stop first; client inputs that came meanwhile
    /// are left in `waiting`.
    async fn decide_id(
        &mut self,
        waiting: &mut VecDeque<(Instant, Input)>,
    ) -> Result<Decided, ReplicaDriverError> {
        let partition = self.partition;
        let node = self.wiring.node;
        if self.durable.id != 0 {
            return Ok(Decided::Id(self.durable.id));
        }
        if !self.durable.is_undecided() {
            return Ok(Decided::Id(initial_id(node)));
        }
        // Drawn anew by every start, so that an answer to an earlier start's ask is ignored.
        let nonce = self.config.seed ^ 0x6a6f_696e_6e6f_6e63 ^ wall_clock_us();
        let set_aside = (self.storage.holds_set_aside().await)
            .map_err(|source| DriverError::Io { partition, source })?;
        let has_records = self.ledger.last_applied().lsn > 0 || set_aside;
        let (group, may_bootstrap) = {
            let placement = self.wiring.placement.borrow_and_update();
            let group = placement.group(partition).to_vec();
            (group, placement.may_bootstrap(partition))
        };
        if !group.contains(&node) {
            return Ok(Decided::Moved);
        }
        // A group that has moved has copies that ran it: it is never started anew.
        let mut joiner = Joiner::new(node, &group, nonce, has_records || !may_bootstrap);
        tracing::info!(
            partition,
            node,
            "the raft store is new: asking the group whether it runs"
        );
        let mut asks = tokio::time::interval(ASK_INTERVAL);
        asks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let links = Arc::clone(&self.wiring.links);
        // The placement's sender goes with the node: no more changes then.
        let mut placement_open = true;
        let decision = loop {
            tokio::select! {
                biased;
                input = self.wiring.inbox.recv() => match input {
                    None => return Ok(Decided::Stop),
                    Some(Input::Shutdown(ack)) => {
                        let _ = ack.send(());
                        return Ok(Decided::Stop);
                    }
                    Some(Input::Membership { from, message, .. }) => match message {
                        MembershipMessage::Ask { node: asker, nonce } => {
                            let answer = MembershipMessage::Answer {
                                nonce,
                                answer: joiner.answer(),
                            };
                            links.send_membership(asker, partition, answer);
                        }
                        answer => {
                            if let Some(decision) = joiner.handle(from, answer) {
                                break decision;
                            }
                        }
                    },
                    // Still deciding: not a member of anything, nothing to answer.
                    Some(Input::Raft { .. }) => {}
                    Some(input) => {
                        if waiting.len() < self.timing.leader_wait_inputs_max {
                            waiting.push_back((Instant::now(), input));
                        }
                    }
                },
                changed = self.wiring.placement.changed(), if placement_open => {
                    placement_open = changed.is_ok();
                    let group = placement_open
                        .then(|| self.wiring.placement.borrow_and_update().group(partition).to_vec());
                    let gone = group.as_ref().is_some_and(|group| !group.contains(&node));
                    if let Some(group) = group.filter(|_| !gone) {
                        joiner.regroup(&group);
                    }
                    if gone {
                        tracing::info!(partition, node, "the placement no longer names this node: the joining replica stops");
                        return Ok(Decided::Moved);
                    }
                }
                _ = asks.tick() => {
                    for peer in joiner.peers_to_ask() {
                        links.send_membership(peer, partition, joiner.ask());
                    }
                    while waiting.front().is_some_and(|(since, _)| since.elapsed() >= self.timing.leader_wait) {
                        waiting.pop_front();
                    }
                }
            }
            if let Some(leader) = joiner.leader() {
                self.wiring.status.leader.store(leader, Ordering::Release);
                while let Some((_, input)) = waiting.pop_front() {
                    // A link that is down drops it: the client sees the partition unavailable.
                    let _ = links.forward(leader, input);
                }
            }
        };
        let id = match decision {
            Decision::Bootstrap => initial_id(node),
            Decision::Join(id) => id,
        };
        tracing::info!(partition, node, id, ?decision, "replica id decided");
        let durable = self.durable.decided(id);
        self.raft_store
            .reset(durable.clone())
            .await
            .map_err(|source| ReplicaDriverError::RaftStore { partition, source })?;
        self.durable = durable;
        Ok(Decided::Id(id))
    }
}

/// How finding out a replica's id ended.
enum Decided {
    Id(ReplicaId),
    /// Asked to stop first.
    Stop,
    /// The placement moved the replica off its node first.
    Moved,
}

impl<S: Storage, R: RaftStore> Running<S, R> {
    fn now(&self) -> Now {
        Now {
            micros: self.clock_origin.elapsed().as_micros() as u64,
            wall_us: wall_clock_us(),
        }
    }

    async fn run(mut self) -> Result<Stopped<S, R>, ReplicaDriverError> {
        let partition = self.replica.partition();
        let mut writing: Option<StoreWrite<R>> = None;
        let mut ticks = tokio::time::interval(self.timing.tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut checks = tokio::time::interval(CHECK_INTERVAL);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The placement's sender goes with the node: no more changes then.
        let mut placement_open = true;
        loop {
            if self.removed {
                self.stop(writing).await?;
                tracing::info!(partition, "removed from the group: this copy stops");
                return Ok(self.into_stopped());
            }
            self.route_waiting();
            self.drive().await?;
            self.serve_fetches().await?;
            if writing.is_none() {
                writing = self.start_write();
            }
            // The inbox is always read: the group's Raft messages come through it, and what
            // else cannot be taken yet waits in `waiting` (see `route_waiting`).
            let deadline = self.replica.machine_ref().and_then(|m| m.poll_timeout());
            let deadline = deadline.map(|due| self.clock_origin + Duration::from_micros(due));
            // `biased`, as in the partition driver: a seed decides every interleaving.
            tokio::select! {
                biased;
                (store, result, written) = poll_write(&mut writing), if writing.is_some() => {
                    writing = None;
                    result.map_err(|source| ReplicaDriverError::RaftStore { partition, source })?;
                    self.raft_store = Some(store);
                    self.replica.handle_persisted(written.last_number);
                    self.links.send_raft(partition, written.messages);
                }
                input = self.inbox.recv() => match input {
                    Some(Input::Shutdown(ack)) => {
                        self.stop(writing).await?;
                        let _ = ack.send(());
                        return Ok(self.into_stopped());
                    }
                    Some(input) => {
                        self.handle(input)?;
                        // The rest of what is queued, up to a bound, before Raft is polled.
                        for _ in 0..DRAIN_INPUTS_MAX {
                            match self.inbox.try_recv() {
                                Ok(Input::Shutdown(ack)) => {
                                    self.stop(writing).await?;
                                    let _ = ack.send(());
                                    return Ok(self.into_stopped());
                                }
                                Ok(input) => self.handle(input)?,
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        self.stop(writing).await?;
                        return Ok(self.into_stopped());
                    }
                },
                changed = self.placement.changed(), if placement_open => {
                    placement_open = changed.is_ok();
                    if placement_open {
                        let group = self.placement.borrow_and_update().group(partition).to_vec();
                        self.replica.set_target(group);
                    }
                }
                _ = checks.tick() => self.check_membership(),
                _ = ticks.tick() => {
                    self.replica.tick();
                    self.expire_waiting();
                }
                _ = sleep_until_due(deadline), if deadline.is_some() => {
                    let now = self.now();
                    if let Some(machine) = self.replica.machine() {
                        machine.handle_tick(now);
                    }
                }
            }
        }
    }

    /// One input: Raft messages to Raft at once; anything else joins the waiting queue,
    /// which [`ReplicaDriver::route_waiting`] empties in order.
    fn handle(&mut self, input: Input) -> Result<(), ReplicaDriverError> {
        self.stats.inputs.fetch_add(1, Ordering::Relaxed);
        if let Input::Raft {
            partition,
            messages,
        } = input
        {
            debug_assert_eq!(partition, self.replica.partition());
            let own = self.replica.id();
            for message in messages {
                // Another incarnation's: an earlier copy of this node's replica, which its
                // group may not have removed yet; this one must not answer for it.
                if message.to == own {
                    self.replica.handle_message(message);
                }
            }
            return Ok(());
        }
        if let Input::CatchUp { from, message, .. } = input {
            match message {
                CatchUpMessage::Fetch {
                    after_lsn,
                    through_lsn,
                } => self.fetches.push((from, after_lsn, through_lsn)),
                CatchUpMessage::Records { first_lsn, records } => {
                    self.replica.handle_fetched(first_lsn, records)?;
                }
            }
            return Ok(());
        }
        if let Input::Membership {
            partition,
            from,
            message,
        } = input
        {
            match message {
                MembershipMessage::Ask { node, nonce } => {
                    let answer = self.replica.handle_ask(node, nonce);
                    let answer = MembershipMessage::Answer { nonce, answer };
                    self.links.send_membership(node, partition, answer);
                }
                MembershipMessage::Check { id } => {
                    if let Some(removed) = self.replica.handle_check(id) {
                        self.links.send_membership(from, partition, removed);
                    }
                }
                MembershipMessage::Removed { .. } => {
                    let own = self.replica.id();
                    let conf_index = self.replica.conf_index();
                    // A later membership than its own that leaves it out removed it; so does
                    // the one it applied itself, if that leaves it out too (it crashed
                    // before it could stop: see "A moved replica").
                    let outside = !self.replica.is_member();
                    let at = conf_index.saturating_sub(u64::from(outside));
                    if membership::is_removal(own, at, &message) {
                        self.removed = true;
                    }
                }
                // An answer reaches a replica that has decided already: an ask's late answer.
                MembershipMessage::Answer { .. } => {}
            }
            return Ok(());
        }
        // Beyond the bound the input is dropped: its client sees the partition unavailable.
        if self.waiting.len() < self.timing.leader_wait_inputs_max {
            self.waiting.push_back((Instant::now(), input));
        }
        self.route_waiting();
        Ok(())
    }

    /// Hands waiting client commands, queries and phase messages on, in order: to the
    /// machine while this replica leads and its batch takes inputs, to the leader while
    /// another replica leads. They keep waiting while the group has no leader, while this
    /// replica leads but still applies earlier terms, and while its batch is full (the
    /// group's Raft messages, which commit it, are read meanwhile).
    fn route_waiting(&mut self) {
        let now = self.now();
        let own = self.replica.id();
        let mut fed = false;
        while !self.waiting.is_empty() {
            if let Some(machine) = self.replica.machine() {
                if !machine.wants_inputs() {
                    break;
                }
                let (_, input) = self.waiting.pop_front().expect("not empty");
                match input {
                    // Reads wait for the group to confirm the leadership (ReadIndex).
                    Input::Query { query, reply } => {
                        let taken = self.replica.handle_query(reply, query);
                        debug_assert!(taken.is_ok(), "a leader takes reads");
                    }
                    input => to_machine(machine, now, input),
                }
                fed = true;
            } else if let Some(leader) = self.replica.leader().filter(|l| *l != own) {
                let (_, input) = self.waiting.pop_front().expect("not empty");
                // A link that is down drops it: the client sees the partition unavailable.
                let _ = self.links.forward(leader, input);
            } else {
                break;
            }
        }
        if fed {
            if let Some(machine) = self.replica.machine() {
                machine.handle_tick(now);
            }
        }
    }

    /// Stops a replica that applied members leaving it out after it had been one (its
    /// group removed it, whatever the placement says now: the node starts a new copy if
    /// the placement names it); on a node the placement no longer names for the group, asks
    /// the other members whether the group still counts this replica (see "A moved
    /// replica").
    fn check_membership(&mut self) {
        let partition = self.replica.partition();
        if self.was_member && !self.replica.is_member() {
            self.removed = true;
            return;
        }
        let leaderless = match self.replica.leader() {
            Some(_) => None,
            None => Some(*self.leaderless_since.get_or_insert_with(Instant::now)),
        };
        self.leaderless_since = leaderless;
        let named = (self.placement.borrow().group(partition)).contains(&self.node);
        if named {
            if leaderless.is_some_and(|since| since.elapsed() >= LEADERLESS_CHECK_AFTER) {
                self.send_checks();
            }
            return;
        }
        // Members it applied itself that leave it out: committed, so it was removed (or,
        // a copy still joining, never counted).
        if !self.replica.is_member() || crate::known_bug!(LeaveBeforeRemoved) {
            self.removed = true;
            return;
        }
        self.send_checks();
    }

    /// Asks the other members this replica knows whether the group still counts it.
    fn send_checks(&self) {
        let partition = self.replica.partition();
        let conf = self.replica.conf_state();
        let members = [&conf.voters, &conf.voters_outgoing, &conf.learners];
        let mut nodes: Vec<NodeId> = (members.iter().flat_map(|ids| ids.iter()))
            .filter_map(|id| membership::node_of(*id))
            .filter(|node| *node != self.node)
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        let check = MembershipMessage::Check {
            id: self.replica.id(),
        };
        for node in nodes {
            self.links.send_membership(node, partition, check);
        }
    }

    /// What a replica that stopped ([`Running::stop`] first) gives back: its storages,
    /// and its inbox if its group removed it.
    fn into_stopped(mut self) -> Stopped<S, R> {
        let raft_store = self.raft_store.take().expect("stopped");
        match self.removed {
            false => Stopped::Shutdown {
                storage: self.storage,
                raft_store,
            },
            true => Stopped::Removed {
                storage: self.storage,
                raft_store,
                inbox: self.inbox,
            },
        }
    }

    /// Drops the inputs that waited longer than [`ReplicaTiming::leader_wait`].
    fn expire_waiting(&mut self) {
        let wait = self.timing.leader_wait;
        while let Some((since, _)) = self.waiting.front() {
            if since.elapsed() < wait {
                break;
            }
            self.waiting.pop_front();
        }
    }

    /// Carries out everything the replica has to do until it has nothing more.
    async fn drive(&mut self) -> Result<(), ReplicaDriverError> {
        loop {
            let now = self.now();
            let Some(ready) = self.replica.poll(now)? else {
                break;
            };
            self.carry_out(ready).await?;
        }
        self.publish_status();
        Ok(())
    }

    async fn carry_out(&mut self, ready: ReplicaReady<Channels>) -> Result<(), ReplicaDriverError> {
        let partition = self.replica.partition();
        let io_err = |source| DriverError::Io { partition, source };
        if !ready.messages.is_empty() {
            self.links.send_raft(partition, ready.messages);
        }
        // A Raft snapshot taken here names records its log start leaves to the partition
        // log (fetched, appended below): they are synced before the persist that holds the
        // snapshot is written, or a crash could leave a Raft log that starts after a
        // partition log that lost them.
        let snapshot_taken = (ready.persist.as_ref()).is_some_and(|p| p.snapshot.is_some());
        if let Some(persist) = ready.persist {
            self.queued.push((persist, ready.messages_after_persist));
        }
        if let Some(fetch) = ready.fetch {
            if let Some(node) = membership::node_of(fetch.from) {
                let message = CatchUpMessage::Fetch {
                    after_lsn: fetch.after_lsn,
                    through_lsn: fetch.through_lsn,
                };
                self.links.send_catch_up(node, partition, message);
            }
        }
        self.unsynced_batches += ready.committed.len();
        for batch in &ready.committed {
            self.storage
                .append(batch.first_lsn, &batch.records)
                .await
                .map_err(io_err)?;
            self.stats
                .batch_records
                .record(batch.last_lsn + 1 - batch.first_lsn);
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            self.stats
                .last_lsn
                .fetch_max(batch.last_lsn, Ordering::Release);
            self.stats.durable.notify_waiters();
        }
        let compact_after = self.replica.log_limits().compact_after as usize;
        if snapshot_taken || self.unsynced_batches >= (compact_after / 2).clamp(1, LOG_SYNC_BATCHES)
        {
            self.sync_log().await?;
        }
        // Peer messages first, then the answers (the machine's release rule).
        crate::driver::deliver(ready.release, &*self.peers);
        if let Some(image) = ready.snapshot {
            // No snapshot ahead of its log: the log is synced first. Written inline: a
            // replicated partition's snapshots are not yet taken off its task.
            let lsn = image.last_applied().lsn;
            self.sync_log().await?;
            let chunks = image.chunks().frozen;
            let encode = Box::new(
                move |out: &mut dyn walletd_core::log::snapshot::SnapshotOut| image.write_to(out),
            );
            let written = self.storage.write_snapshot(lsn, encode).await;
            match written {
                Ok(_) => self.replica.handle_snapshot_written(Ok(chunks)),
                Err(error) => {
                    tracing::error!(partition, lsn, %error, "snapshot not written; going on from the log");
                    self.stats.snapshot_failures.fetch_add(1, Ordering::Relaxed);
                    self.replica.handle_snapshot_written(Err(()));
                }
            }
        }
        if ready.reload {
            // The log holds every committed batch appended so far; synced, recovery reads
            // all of it back (it would cut an unsynced tail).
            self.sync_log().await?;
            let (ledger, _) = recover(&mut self.storage, partition, self.partitions).await?;
            self.replica.handle_reloaded(ledger);
        }
        Ok(())
    }

    /// Syncs the partition log: what it holds is durable, so the Raft log may drop the
    /// entries that carried it.
    async fn sync_log(&mut self) -> Result<(), ReplicaDriverError> {
        let partition = self.replica.partition();
        (self.storage.sync().await).map_err(|source| DriverError::Io { partition, source })?;
        self.unsynced_batches = 0;
        let lsn = self.stats.last_lsn.load(Ordering::Acquire);
        self.replica.handle_log_durable(lsn);
        Ok(())
    }

    /// Answers the fetches of records other replicas asked for (see
    /// [`walletd_core::replica::CatchUpMessage`]) from the partition log.
    async fn serve_fetches(&mut self) -> Result<(), ReplicaDriverError> {
        let partition = self.replica.partition();
        for (node, after_lsn, through_lsn) in std::mem::take(&mut self.fetches) {
            let read = read_records(
                &mut self.storage,
                &mut self.fetch_cache,
                after_lsn,
                through_lsn,
            );
            let (first_lsn, records) = match read.await {
                Ok(read) => read,
                Err(error) => {
                    // The asker asks again; a log that cannot be read fails this replica
                    // at its next sync or recovery.
                    tracing::warn!(partition, node, after_lsn, %error, "records not read for a fetch");
                    continue;
                }
            };
            tracing::debug!(
                partition,
                node,
                after_lsn,
                first_lsn,
                bytes = records.len(),
                "records sent"
            );
            let records = bytes::Bytes::from(records);
            let message = CatchUpMessage::Records { first_lsn, records };
            self.links.send_catch_up(node, partition, message);
        }
        Ok(())
    }

    /// Starts writing every queued persist, as one group commit, if the store is free.
    fn start_write(&mut self) -> Option<StoreWrite<R>> {
        if self.queued.is_empty() {
            return None;
        }
        let mut store = self.raft_store.take()?;
        let queued = std::mem::take(&mut self.queued);
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let stats = Arc::clone(&self.stats);
        Some(Box::pin(async move {
            let last_number = queued.last().expect("not empty").0.number;
            let mut messages = Vec::new();
            let mut result = Ok(());
            for (persist, after) in queued {
                if let Err(error) = store.append(&persist).await {
                    result = Err(error);
                    break;
                }
                messages.extend(after);
            }
            if result.is_ok() {
                result = store.sync().await;
            }
            stats.sync_us.record(started.elapsed().as_micros() as u64);
            (
                store,
                result,
                Written {
                    last_number,
                    messages,
                },
            )
        }))
    }

    /// A clean stop: the write in flight finishes, the partition log is synced.
    async fn stop(&mut self, writing: Option<StoreWrite<R>>) -> Result<(), ReplicaDriverError> {
        let partition = self.replica.partition();
        if let Some(write) = writing {
            let (store, result, _) = write.await;
            result.map_err(|source| ReplicaDriverError::RaftStore { partition, source })?;
            self.raft_store = Some(store);
        }
        self.storage
            .sync()
            .await
            .map_err(|source| DriverError::Io { partition, source })?;
        Ok(())
    }

    fn publish_status(&mut self) {
        if self.published_conf != Some(self.replica.conf_index()) {
            self.published_conf = Some(self.replica.conf_index());
            let conf = self.replica.conf_state();
            let learners = (conf.learners.iter()).filter_map(|id| membership::node_of(*id));
            *self.status.learners.lock().expect("not poisoned") = learners.collect();
            let voters = (conf.voters.iter()).filter_map(|id| membership::node_of(*id));
            *self.status.voters.lock().expect("not poisoned") = voters.collect();
            let changing = !conf.voters_outgoing.is_empty();
            self.was_member |= self.replica.is_member();
            self.status
                .members_changing
                .store(changing, Ordering::Release);
        }
        let status = &self.status;
        let replica = &self.replica;
        status
            .leading
            .store(replica.machine_ref().is_some(), Ordering::Release);
        status
            .leader
            .store(replica.leader().unwrap_or(0), Ordering::Release);
        status.term.store(replica.term(), Ordering::Relaxed);
        status
            .commit_index
            .store(replica.commit_index(), Ordering::Relaxed);
        if let Some(ledger) = replica.ledger() {
            status
                .applied_lsn
                .store(ledger.last_applied().lsn, Ordering::Relaxed);
            self.stats
                .rows
                .store(ledger.row_count() as u64, Ordering::Relaxed);
        }
        if let Some(machine) = replica.machine_ref() {
            self.stats
                .in_flight
                .store(machine.in_flight() as u64, Ordering::Relaxed);
        } else {
            self.stats.in_flight.store(0, Ordering::Relaxed);
        }
    }
}

/// The records after `after` up to `through` that the partition log holds, about
/// [`FETCH_BYTES_MAX`] bytes of them at most, encoded as the log holds them, with the lsn
/// of the first. The log is synced first: what is read is durable here. `cache` keeps the
/// last closed segment read, which the next fetch of a replica catching up reads again.
async fn read_records<S: Storage>(
    storage: &mut S,
    cache: &mut Option<(SegmentRef, Vec<u8>)>,
    after: Lsn,
    through: Lsn,
) -> io::Result<(Lsn, Vec<u8>)> {
    storage.sync().await?;
    let segments = storage.log_segments().await?;
    let start = (segments.iter())
        .rposition(|segment| segment.first_lsn <= after + 1)
        .unwrap_or(0);
    let mut out = Vec::new();
    let mut first = after + 1;
    let newest = segments.len().saturating_sub(1);
    for (at, segment) in segments.iter().enumerate().skip(start) {
        let cached = cache.as_ref().is_some_and(|(s, _)| s == segment);
        if !cached {
            let bytes = storage.read_segment(segment).await?;
            *cache = Some((segment.clone(), bytes));
        }
        let bytes = &cache.as_ref().expect("just read").1;
        let mut reader = RecordReader::new(bytes, segment.first_lsn);
        while let Some(record) = reader.next_record().map_err(io::Error::other)? {
            if record.lsn <= after {
                continue;
            }
            if record.lsn > through || out.len() >= FETCH_BYTES_MAX {
                return Ok((first, out));
            }
            if out.is_empty() {
                first = record.lsn;
            }
            encode_record(&record, &mut out);
        }
        if at == newest {
            // The newest segment grows: it is read anew next time.
            *cache = None;
        }
    }
    Ok((first, out))
}

/// Inputs taken from the inbox before Raft and the machine are polled again.
const DRAIN_INPUTS_MAX: usize = 1024;

/// Feeds a client command or phase message to the machine.
fn to_machine(machine: &mut PartitionMachine<Channels>, now: Now, input: Input) {
    match input {
        Input::Command {
            command,
            wait,
            reply,
        } => machine.handle_command(now, reply, &command, wait),
        Input::Commands {
            commands,
            wait,
            reply,
        } => machine.handle_commands(now, reply, &commands, wait),
        Input::Peers(messages) => machine.handle_peers(now, &messages),
        Input::Query { .. }
        | Input::Raft { .. }
        | Input::Membership { .. }
        | Input::CatchUp { .. }
        | Input::Shutdown(_) => {
            unreachable!("handled by the driver")
        }
    }
}

/// The outcome of the store write in flight (polled only when there is one).
async fn poll_write<R>(writing: &mut Option<StoreWrite<R>>) -> (R, io::Result<()>, Written) {
    match writing {
        Some(write) => write.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline` (polled only when there is one).
async fn sleep_until_due(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
