//! The world of the replica tests: three replicas of partition 0 of 1, their disks, the
//! network between them, and the clients. See the parent module.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{Hash, Hasher};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ledger::{Command, Ledger, Reply};
use crate::log::recovery::apply_batch;
use crate::model::money::Currency::USD;
use crate::protocol::machine::{MachineConfig, Now, ReplyTokens};
use crate::protocol::message::{CommandResult, Query, QueryAnswer};
use crate::protocol::tests::support::{acct, deposit, open, transfer, Snapshot};
use crate::replica::membership::{initial_id, node_of, Decision, Joiner, MembershipMessage};
use crate::replica::{
    CommittedBatch, DurableRaft, FetchRequest, LogLimits, Persist, RaftMessage, Replica,
    ReplicaConfig, ReplicaId, ReplicaReady, FETCH_BYTES_MAX,
};
use bytes::Bytes;

const REPLICAS: usize = 3;
const MAJORITY: usize = REPLICAS / 2 + 1;
const ACCOUNTS: usize = 5;
/// Steps between Raft ticks (a step is a millisecond of the fake clock).
const TICK_STEPS: u64 = 10;
const ELECTION_TICKS: usize = 10;
/// Steps a healed group gets to settle before the test calls it stuck.
const SETTLE_STEPS_MAX: usize = 20_000;

/// Reply tokens are the clients' request numbers.
pub struct Numbers;

impl ReplyTokens for Numbers {
    type Command = u64;
    type Group = u64;
    type Query = u64;
}

/// How hostile the world is: probabilities per step.
#[derive(Debug, Clone, Copy)]
pub struct GroupConfig {
    drop: f64,
    duplicate: f64,
    delay_max: u64,
    crash: f64,
    restart: f64,
    isolate: f64,
    heal: f64,
    /// Chance that a crash also loses the partition log's unsynced tail (the Raft log still
    /// holds it).
    lose_log_tail: f64,
    /// Chance of a crash and an immediate restart right after a vote is durable.
    crash_after_vote: f64,
    /// Chance per step that a node loses its disks (Raft store and partition log), when the
    /// group has room for it: every node up and every replica a voter.
    wipe: f64,
    request: f64,
}

impl GroupConfig {
    pub fn quiet() -> GroupConfig {
        GroupConfig {
            drop: 0.0,
            duplicate: 0.0,
            delay_max: 3,
            crash: 0.0,
            restart: 0.0,
            isolate: 0.0,
            heal: 1.0,
            lose_log_tail: 0.0,
            crash_after_vote: 0.0,
            wipe: 0.0,
            request: 0.3,
        }
    }

    pub fn hostile() -> GroupConfig {
        GroupConfig {
            drop: 0.05,
            duplicate: 0.03,
            delay_max: 25,
            crash: 0.0015,
            restart: 0.01,
            isolate: 0.001,
            heal: 0.004,
            lose_log_tail: 0.5,
            crash_after_vote: 0.3,
            wipe: 0.0,
            request: 0.3,
        }
    }

    /// Hostile, and now and then a node loses its disks.
    pub fn wiping() -> GroupConfig {
        GroupConfig {
            wipe: 0.0015,
            ..GroupConfig::hostile()
        }
    }
}

/// What happened in a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub answers: u64,
    pub crashes: u64,
    pub leaders: u64,
    pub reloads: u64,
    pub dropped_answers: u64,
    pub wipes: u64,
    /// Wiped replicas that came back under a new id.
    pub rejoins: u64,
    /// Fetches of records served (replicas behind a compacted log).
    pub fetches: u64,
}

/// One node's replica and what survives it.
struct Node {
    replica: Option<Replica<Numbers>>,
    /// A node whose Raft store has decided nothing asks its group how to start.
    joiner: Option<Joiner>,
    /// The Raft state its disk holds.
    disk: DurableRaft,
    /// What its disk held when it was last wiped: entries it had acknowledged then still
    /// count as durable for answers computed before the wipe (losing one disk is the fault
    /// Raft tolerates).
    before_wipe: Option<DurableRaft>,
    /// Persists handed out and not yet durable, with the messages that wait for them.
    writing: VecDeque<(Persist, Vec<RaftMessage>)>,
    /// The partition log: committed batches appended in order (unsynced in production, so a
    /// crash may lose its tail past `log_synced`).
    log: Vec<CommittedBatch>,
    /// Batches of `log` made durable by a sync (a crash keeps them).
    log_synced: usize,
    incarnation: u64,
    /// Committed entries of this incarnation already checked against the group's.
    checked_through: u64,
}

/// A command a client sent, and the first answer it got.
struct Request {
    command: Command,
    answer: Option<CommandResult>,
    /// In flight to a leader (its token may still be answered).
    outstanding: bool,
}

pub struct Group {
    config: GroupConfig,
    rng: ChaCha8Rng,
    nodes: Vec<Node>,
    /// Messages in flight: (step due, message).
    network: Vec<(u64, RaftMessage)>,
    /// Membership messages in flight: (step due, from node, to node, message).
    membership: Vec<(u64, usize, usize, MembershipMessage)>,
    /// Fetches in flight: (step due, asking node, request); served when due.
    fetches: Vec<(u64, usize, FetchRequest)>,
    /// The group's first voters, which a wiped disk starts from.
    voters: Vec<ReplicaId>,
    isolated: Option<usize>,
    step: u64,
    requests: BTreeMap<u64, Request>,
    /// Every token the replicas were given, to the request it carries and the machine it
    /// went to (node, machine epoch).
    tokens: BTreeMap<u64, (u64, (usize, u64))>,
    next_token: u64,
    leaders_by_term: BTreeMap<u64, ReplicaId>,
    /// Answers to reads: token, the node that answered, the answer.
    read_answers: Vec<(u64, usize, QueryAnswer)>,
    /// The committed log as the first replica to commit each index had it: every other
    /// replica must agree (log matching).
    committed: Vec<raft::eraftpb::Entry>,
    trace: std::collections::hash_map::DefaultHasher,
    pub stats: Stats,
}

fn replica_config(id: ReplicaId, seed: u64) -> ReplicaConfig {
    ReplicaConfig {
        id,
        election_ticks: ELECTION_TICKS,
        heartbeat_ticks: 2,
        seed,
        machine: MachineConfig {
            background_delay_us: 0,
            snapshot_every_events: 0,
            ..MachineConfig::default()
        },
        // Small, so that runs compact often and replicas that were down or wiped catch up
        // by fetching records.
        log: LogLimits {
            compact_after: 16,
            keep: 4,
        },
    }
}

impl Group {
    pub fn new(seed: u64, config: GroupConfig) -> Group {
        let voters: Vec<ReplicaId> = (0..REPLICAS as u32).map(initial_id).collect();
        let mut group = Group {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            nodes: Vec::new(),
            network: Vec::new(),
            membership: Vec::new(),
            fetches: Vec::new(),
            voters: voters.clone(),
            isolated: None,
            step: 0,
            requests: BTreeMap::new(),
            tokens: BTreeMap::new(),
            next_token: 0,
            leaders_by_term: BTreeMap::new(),
            read_answers: Vec::new(),
            committed: Vec::new(),
            trace: Default::default(),
            stats: Stats::default(),
        };
        for _ in 0..REPLICAS {
            group.nodes.push(Node {
                replica: None,
                joiner: None,
                before_wipe: None,
                // Decided: the group starts as a new one (the runtime asks first).
                disk: DurableRaft::new(&voters).decided(initial_id(group.nodes.len() as u32)),
                writing: VecDeque::new(),
                log: Vec::new(),
                log_synced: 0,
                incarnation: 0,
                checked_through: 0,
            });
        }
        for index in 0..REPLICAS {
            group.start(index);
        }
        group
    }

    fn now(&self) -> Now {
        Now {
            micros: self.step * 1_000,
            wall_us: 1_000_000 + self.step * 1_000,
        }
    }

    /// Starts node `index` from its disk: the ledger its partition log replays to. A disk
    /// that has decided nothing asks the group first.
    fn start(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        node.incarnation += 1;
        node.checked_through = 0;
        if node.disk.is_undecided() {
            let group: Vec<u32> = (0..REPLICAS as u32).collect();
            let nonce = self.rng.gen::<u64>();
            let has_records = !node.log.is_empty();
            node.joiner = Some(Joiner::new(index as u32, &group, nonce, has_records));
            return;
        }
        let seed = (index as u64) << 32 | node.incarnation;
        let config = replica_config(node.disk.id, self.rng.gen::<u64>() ^ seed);
        let ledger = replay(&node.log);
        let now = Now {
            micros: self.step * 1_000,
            wall_us: 1_000_000 + self.step * 1_000,
        };
        let replica = Replica::new(config, &node.disk, ledger, now).expect("a disk restores");
        self.nodes[index].replica = Some(replica);
        self.poll(index);
    }

    fn crash(&mut self, index: usize) {
        let lose_tail = self.rng.gen_bool(self.config.lose_log_tail);
        let node = &mut self.nodes[index];
        node.replica = None;
        node.joiner = None;
        node.writing.clear();
        if lose_tail && node.log.len() > node.log_synced {
            let keep = self.rng.gen_range(node.log_synced..=node.log.len());
            node.log.truncate(keep);
        }
        self.stats.crashes += 1;
    }

    /// Runs `steps` steps of the hostile world with clients sending.
    pub fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            self.step_world(true);
        }
    }

    fn step_world(&mut self, faults: bool) {
        self.step += 1;
        let config = self.config;
        if faults {
            self.maybe_fault(config);
        }
        if self.step % TICK_STEPS == 0 {
            for index in self.up() {
                self.replica(index).tick();
                self.poll(index);
            }
            self.ask();
        }
        self.deliver();
        self.deliver_membership();
        for index in self.up() {
            if !self.nodes[index].writing.is_empty() && self.rng.gen_bool(0.5) {
                self.complete_write(index);
            }
            if self.rng.gen_bool(0.02) {
                self.sync_log(index);
            }
        }
        self.deliver_fetches();
        if faults && self.rng.gen_bool(config.request) {
            self.send_request();
        }
        self.drop_lost_tokens();
        self.check();
    }

    /// Node `index` loses both its disks and comes back empty.
    fn wipe(&mut self, index: usize) {
        self.crash(index);
        let node = &mut self.nodes[index];
        let lost = std::mem::replace(&mut node.disk, DurableRaft::new(&self.voters));
        node.before_wipe = Some(lost);
        node.log.clear();
        node.log_synced = 0;
        self.stats.wipes += 1;
        self.start(index);
    }

    /// Whether losing one more disk keeps every acknowledged entry on a majority: every node
    /// runs as a voter of a settled configuration (an earlier wipe has been replaced).
    fn can_wipe(&self) -> bool {
        let Some(leader) = (0..REPLICAS).find(|&i| self.leads(i)) else {
            return false;
        };
        let conf = self.nodes[leader]
            .replica
            .as_ref()
            .expect("up")
            .conf_state();
        let voters_here = (self.nodes.iter())
            .filter(|node| (node.replica.as_ref()).is_some_and(|r| conf.voters.contains(&r.id())));
        conf.voters_outgoing.is_empty()
            && conf.learners.is_empty()
            && voters_here.count() == REPLICAS
    }

    fn maybe_fault(&mut self, config: GroupConfig) {
        if config.wipe > 0.0 && self.rng.gen_bool(config.wipe) && self.can_wipe() {
            let index = self.rng.gen_range(0..REPLICAS);
            self.wipe(index);
        }
        let up = self.up();
        if up.len() == REPLICAS && self.rng.gen_bool(config.crash) {
            let index = up[self.rng.gen_range(0..up.len())];
            self.crash(index);
        }
        for index in 0..REPLICAS {
            let node = &self.nodes[index];
            let down = node.replica.is_none() && node.joiner.is_none();
            if down && self.rng.gen_bool(config.restart) {
                self.start(index);
            }
        }
        if self.isolated.is_none() && self.rng.gen_bool(config.isolate) {
            // Isolating the leader is the interesting case.
            let leader = (0..REPLICAS).find(|&i| self.leads(i));
            self.isolated = leader.or(Some(self.rng.gen_range(0..REPLICAS)));
        } else if self.isolated.is_some() && self.rng.gen_bool(config.heal) {
            self.isolated = None;
        }
    }

    fn up(&self) -> Vec<usize> {
        (0..REPLICAS)
            .filter(|&i| self.nodes[i].replica.is_some())
            .collect()
    }

    fn replica(&mut self, index: usize) -> &mut Replica<Numbers> {
        self.nodes[index].replica.as_mut().expect("node is up")
    }

    fn leads(&self, index: usize) -> bool {
        (self.nodes[index].replica.as_ref())
            .is_some_and(|r| matches!(r.role, super::super::Role::Leading { .. }))
    }

    /// Hands everything the replica has to do to the world, until it has nothing more.
    fn poll(&mut self, index: usize) {
        let now = self.now();
        loop {
            let ready = self.replica(index).poll(now).expect("the replica goes on");
            let Some(ready) = ready else { break };
            self.carry_out(index, ready);
        }
    }

    fn carry_out(&mut self, index: usize, ready: ReplicaReady<Numbers>) {
        for message in ready.messages {
            self.send(message);
        }
        let snapshot_taken = ready.persist.as_ref().is_some_and(|p| p.snapshot.is_some());
        if let Some(persist) = ready.persist {
            self.nodes[index]
                .writing
                .push_back((persist, ready.messages_after_persist));
        } else {
            assert!(ready.messages_after_persist.is_empty());
        }
        let node = &mut self.nodes[index];
        for batch in ready.committed {
            if let Some(last) = node.log.last() {
                assert_eq!(
                    batch.first_lsn,
                    last.last_lsn + 1,
                    "node {index}: the partition log gets committed records in order"
                );
            }
            node.log.push(batch);
        }
        if snapshot_taken {
            // As the runtime does: the records a snapshot names are durable in the
            // partition log before the snapshot is in the Raft store.
            node.log_synced = node.log.len();
        }
        if !ready.release.replies.is_empty() {
            self.check_answers_on_majority(index);
        }
        for (token, result) in ready.release.replies {
            self.answer(token, result);
        }
        for (token, answer) in ready.release.answers {
            self.read_answers.push((token, index, answer));
        }
        assert!(ready.snapshot.is_none(), "snapshots are off");
        if let Some(request) = ready.fetch {
            if !self.rng.gen_bool(self.config.drop) {
                let due = self.step + self.rng.gen_range(1..=self.config.delay_max);
                self.fetches.push((due, index, request));
            }
        }
        if ready.reload {
            self.stats.reloads += 1;
            let ledger = replay(&self.nodes[index].log);
            self.replica(index).handle_reloaded(ledger);
        }
    }

    fn answer(&mut self, token: u64, result: CommandResult) {
        let (request_id, _) = self
            .tokens
            .remove(&token)
            .expect("a token is answered once");
        let request = self.requests.get_mut(&request_id).expect("known request");
        request.outstanding = false;
        match &request.answer {
            // A retry (of a request whose first token was dropped with a deposed leader,
            // then answered anyway, or answered twice) must get the first answer.
            Some(first) => assert_eq!(
                same_outcome(first),
                same_outcome(&result),
                "request {request_id}: a retry got another answer"
            ),
            None => request.answer = Some(result),
        }
        self.stats.answers += 1;
        token.hash(&mut self.trace);
    }

    /// The tokens of a machine that is gone (its replica crashed or stopped leading) are
    /// never answered: their clients see the request fail and may retry it.
    fn drop_lost_tokens(&mut self) {
        let alive = |node: &Node, epoch: u64| {
            node.replica.as_ref().is_some_and(|r| {
                r.machine_epoch == epoch && matches!(r.role, super::super::Role::Leading { .. })
            })
        };
        let lost: Vec<u64> = (self.tokens.iter())
            .filter(|(_, (_, (node, epoch)))| !alive(&self.nodes[*node], *epoch))
            .map(|(token, _)| *token)
            .collect();
        for token in lost {
            let (request_id, _) = self.tokens.remove(&token).expect("listed");
            self.requests
                .get_mut(&request_id)
                .expect("known")
                .outstanding = false;
            self.stats.dropped_answers += 1;
        }
    }

    fn send(&mut self, message: RaftMessage) {
        if self.rng.gen_bool(self.config.drop) {
            return;
        }
        let copies = if self.rng.gen_bool(self.config.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let due = self.step + self.rng.gen_range(1..=self.config.delay_max);
            self.network.push((due, message.clone()));
        }
    }

    /// Nodes that have not decided ask every peer that has not answered fresh.
    fn ask(&mut self) {
        for index in 0..REPLICAS {
            let Some(joiner) = &self.nodes[index].joiner else {
                continue;
            };
            let ask = joiner.ask();
            let peers: Vec<usize> = joiner.peers_to_ask().map(|n| n as usize).collect();
            for peer in peers {
                self.send_membership(index, peer, ask);
            }
        }
    }

    fn send_membership(&mut self, from: usize, to: usize, message: MembershipMessage) {
        if self.rng.gen_bool(self.config.drop) {
            return;
        }
        let due = self.step + self.rng.gen_range(1..=self.config.delay_max);
        self.membership.push((due, from, to, message));
    }

    fn deliver_membership(&mut self) {
        let step = self.step;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.membership)
            .into_iter()
            .partition(|(at, ..)| *at <= step);
        self.membership = later;
        for (_, from, to, message) in due {
            if self.isolated.is_some_and(|i| i == from || i == to) {
                continue;
            }
            match message {
                MembershipMessage::Ask { node, nonce } => {
                    let target = &mut self.nodes[to];
                    let answer = match (&target.joiner, &mut target.replica) {
                        (Some(joiner), _) => joiner.answer(),
                        (None, Some(replica)) => replica.handle_ask(node, nonce),
                        (None, None) => continue,
                    };
                    if self.nodes[to].replica.is_some() {
                        self.poll(to);
                    }
                    let answer = MembershipMessage::Answer { nonce, answer };
                    self.send_membership(to, from, answer);
                }
                answer => {
                    let node = &mut self.nodes[to];
                    let decision = match &mut node.joiner {
                        Some(joiner) => joiner.handle(from as u32, answer),
                        None => None,
                    };
                    if let Some(decision) = decision {
                        let id = match decision {
                            Decision::Bootstrap => initial_id(to as u32),
                            Decision::Join(id) => {
                                self.stats.rejoins += 1;
                                id
                            }
                        };
                        node.joiner = None;
                        node.disk = node.disk.decided(id);
                        node.incarnation -= 1;
                        self.start(to);
                    }
                }
            }
        }
    }

    fn deliver(&mut self) {
        let step = self.step;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.network)
            .into_iter()
            .partition(|(at, _)| *at <= step);
        self.network = later;
        for (_, message) in due {
            let node = |id| node_of(id).expect("a replica id names a node") as usize;
            let (from, to) = (node(message.from), node(message.to));
            // A message to another incarnation of the node's replica is not for this one.
            let addressed = (self.nodes[to].replica.as_ref()).is_some_and(|r| r.id() == message.to);
            if self.isolated.is_some_and(|i| i == from || i == to) || !addressed {
                continue;
            }
            (message.from, message.to, message.get_msg_type() as i32).hash(&mut self.trace);
            self.replica(to).handle_message(message);
            self.poll(to);
        }
    }

    /// Node `index`'s partition log is synced: its replica may compact what it holds.
    fn sync_log(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        node.log_synced = node.log.len();
        if let Some(last) = node.log.last() {
            let lsn = last.last_lsn;
            self.replica(index).handle_log_durable(lsn);
            self.poll(index);
        }
    }

    /// Fetches whose time has come are served from the asked node's partition log.
    fn deliver_fetches(&mut self) {
        let step = self.step;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.fetches)
            .into_iter()
            .partition(|(at, ..)| *at <= step);
        self.fetches = later;
        for (_, asker, request) in due {
            let server = node_of(request.from).expect("a replica id names a node") as usize;
            let cut_off = self.isolated.is_some_and(|i| i == server || i == asker);
            if cut_off
                || self.nodes[server].replica.is_none()
                || self.nodes[asker].replica.is_none()
            {
                continue;
            }
            // Whole batches from the one holding the first record asked for.
            let log = &self.nodes[server].log;
            let from = log.iter().position(|b| b.last_lsn > request.after_lsn);
            let (mut first_lsn, mut records) = (request.after_lsn + 1, Vec::new());
            if let Some(from) = from {
                first_lsn = log[from].first_lsn;
                for batch in &log[from..] {
                    if records.len() >= FETCH_BYTES_MAX || batch.first_lsn > request.through_lsn {
                        break;
                    }
                    records.extend_from_slice(&batch.records);
                }
            }
            self.stats.fetches += 1;
            let fetched = self
                .replica(asker)
                .handle_fetched(first_lsn, Bytes::from(records));
            fetched.expect("fetched records apply");
            self.poll(asker);
        }
    }

    /// The oldest write of node `index` reaches its disk.
    fn complete_write(&mut self, index: usize) {
        let (persist, after) = self.nodes[index].writing.pop_front().expect("a write");
        let voted_before = self.nodes[index].disk.hard_state.vote;
        self.nodes[index].disk.persist(&persist);
        self.replica(index).handle_persisted(persist.number);
        for message in after {
            self.send(message);
        }
        // The worst moment to crash: just after a vote is durable and sent. The process
        // comes straight back (a supervisor restarts it) while the election is under way.
        let voted = self.nodes[index].disk.hard_state.vote;
        if voted != 0 && voted != voted_before && self.rng.gen_bool(self.config.crash_after_vote) {
            self.crash(index);
            self.start(index);
            return;
        }
        self.poll(index);
    }

    /// A client sends a new request, or retries one that got no answer, to the replica that
    /// leads and has caught up (a client of a real node is forwarded there).
    fn send_request(&mut self) {
        let Some(leader) = (0..REPLICAS).find(|&i| self.leads(i)) else {
            return;
        };
        let retry = (self.requests.iter())
            .find(|(_, r)| r.answer.is_none() && !r.outstanding)
            .map(|(id, _)| *id);
        let request_id = match retry {
            Some(id) if self.rng.gen_bool(0.5) => id,
            _ => {
                let id = self.requests.len() as u64;
                let command = self.next_command(id);
                self.requests.insert(
                    id,
                    Request {
                        command,
                        answer: None,
                        outstanding: false,
                    },
                );
                id
            }
        };
        let token = self.next_token;
        self.next_token += 1;
        let epoch = self.replica(leader).machine_epoch;
        self.tokens.insert(token, (request_id, (leader, epoch)));
        let request = self.requests.get_mut(&request_id).expect("just made");
        request.outstanding = true;
        let command = request.command.clone();
        let now = self.now();
        let machine = self
            .replica(leader)
            .machine()
            .expect("a leader that caught up");
        machine.handle_command(now, token, &command, false);
        self.poll(leader);
    }

    fn next_command(&mut self, id: u64) -> Command {
        let account = |i: usize| acct(&format!("a{i}"));
        let n = id as usize;
        if n < ACCOUNTS {
            return open(account(n), USD);
        }
        if n < 2 * ACCOUNTS || self.rng.gen_bool(0.1) {
            let to = self.rng.gen_range(0..ACCOUNTS);
            return deposit(account(to), 10_000, USD, &format!("d{id}"));
        }
        let from = self.rng.gen_range(0..ACCOUNTS);
        let to = (from + self.rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
        let amount = self.rng.gen_range(1..5_000);
        Command::Transfer(transfer(
            account(from),
            account(to),
            amount,
            USD,
            &format!("t{id}"),
        ))
    }

    /// Invariants after every step.
    fn check(&mut self) {
        // At most one leader per term, ever.
        for index in self.up() {
            let raft = &self.nodes[index].replica.as_ref().expect("up").raw.raft;
            if raft.state == raft::StateRole::Leader {
                let id = raft.id;
                let known = *self.leaders_by_term.entry(raft.term).or_insert_with(|| {
                    self.stats.leaders += 1;
                    id
                });
                assert_eq!(known, id, "two leaders in term {}", raft.term);
            }
        }
        // Log matching: every replica's committed entries are the group's.
        for index in self.up() {
            let node = &mut self.nodes[index];
            let replica = node.replica.as_ref().expect("up");
            let store = &replica.raw.raft.raft_log.store;
            let first = raft::Storage::first_index(store).expect("a first index");
            for at in (node.checked_through + 1).max(first)..=replica.commit_index() {
                let entry = raft::Storage::entries(
                    store,
                    at,
                    at + 1,
                    None,
                    raft::GetEntriesContext::empty(false),
                )
                .expect("a committed entry is in the store")
                .remove(0);
                match self.committed.get(at as usize - 1) {
                    Some(known) => assert_eq!(
                        known, &entry,
                        "node {index} committed another entry at index {at}"
                    ),
                    None => {
                        assert_eq!(self.committed.len() as u64, at - 1);
                        self.committed.push(entry);
                    }
                }
            }
            node.checked_through = replica.commit_index();
        }
    }

    /// Whatever a leader releases rests on entries durable on a majority of disks.
    fn check_answers_on_majority(&self, leader: usize) {
        let replica = self.nodes[leader].replica.as_ref().expect("up");
        let committed = replica.commit_index();
        let store = &replica.raw.raft.raft_log.store;
        let term =
            raft::Storage::term(store, committed).expect("the committed entry is in the log");
        // Compacted entries' records are durable in the partition log.
        let holds = |disk: &DurableRaft| {
            let start = disk.log_start.index;
            committed <= start
                || (disk.entries.get((committed - start) as usize - 1))
                    .is_some_and(|e| e.term == term)
        };
        let durable = (self.nodes.iter())
            .filter(|node| holds(&node.disk) || node.before_wipe.as_ref().is_some_and(holds))
            .count();
        assert!(
            durable >= MAJORITY,
            "an answer left with entry {committed} durable on {durable} disks"
        );
    }

    /// The stale-read scenario: a quiet group commits a deposit; its leader is cut off and
    /// asked for the balance; the others elect a new leader, which commits a second deposit;
    /// the group heals. Returns every answer the read got, with the balance the group had
    /// committed by then: a linearizable read never answers the first balance once the
    /// second deposit is acknowledged, and here its leader cannot even confirm it leads.
    pub fn read_from_an_isolated_leader(&mut self) -> (Vec<QueryAnswer>, u64) {
        let account = acct("a0");
        self.run_until(|g| g.leader_index().is_some());
        self.execute_now(open(account, USD));
        self.execute_now(deposit(account, 100, USD, "first"));
        let old = self.leader_index().expect("a leader");
        self.isolated = Some(old);
        let token = self.next_token;
        self.next_token += 1;
        let query = Query::Account(account);
        let taken = self.replica(old).handle_query(token, query);
        assert!(taken.is_ok(), "the old leader still believes it leads");
        self.poll(old);
        self.run_until(|g| g.leader_index().is_some_and(|l| l != old));
        self.execute_now(deposit(account, 50, USD, "second"));
        self.isolated = None;
        for _ in 0..2_000 {
            self.step_world(false);
        }
        let answers = (self.read_answers.iter())
            .filter(|(t, _, _)| *t == token)
            .map(|(_, _, answer)| answer.clone())
            .collect();
        (answers, 150)
    }

    /// A leader hands leadership to a follower that is cut off (so the handover cannot
    /// finish), and is then given a deposit. Raft drops every proposal while a handover is
    /// under way. Returns how many polls of the leader meanwhile asked for a reload, and
    /// whether the deposit was answered once the handover gave up.
    pub fn deposit_during_a_stuck_handover(&mut self) -> (usize, bool) {
        let account = acct("a0");
        self.run_until(|g| g.leader_index().is_some());
        self.execute_now(open(account, USD));
        let leader = self.leader_index().expect("a leader");
        let target = (leader + 1) % REPLICAS;
        let target_id = self.replica(target).id();
        self.isolated = Some(target);
        self.replica(leader).raw.transfer_leader(target_id);
        assert!(self.replica(leader).raw.raft.lead_transferee.is_some());
        let token = self.next_token;
        self.next_token += 1;
        let command = deposit(account, 100, USD, "during-handover");
        let now = self.now();
        let machine = self.replica(leader).machine().expect("still leads");
        machine.handle_command(now, token, &command, false);
        let mut reloads = 0;
        for _ in 0..20 {
            let now = self.now();
            if let Some(ready) = self.replica(leader).poll(now).expect("polls") {
                if ready.reload {
                    reloads += 1;
                    let ledger = replay(&self.nodes[leader].log);
                    self.replica(leader).handle_reloaded(ledger);
                }
            }
        }
        self.isolated = None;
        // The handover gives up after an election timeout; the deposit is then proposed.
        self.run_until(|g| g.leader_index().is_some());
        let leader = self.leader_index().expect("a leader");
        let account_balance = |g: &mut Group| {
            g.replica(leader)
                .ledger()
                .and_then(|l| l.account(&account))
                .map(|a| a.balance)
        };
        let mut deposited = false;
        for _ in 0..2_000 {
            self.step_world(false);
            if account_balance(self) == Some(100) {
                deposited = true;
                break;
            }
        }
        (reloads, deposited)
    }

    /// The node whose replica leads and has caught up.
    fn leader_index(&self) -> Option<usize> {
        (0..REPLICAS).find(|&i| self.leads(i) && Some(i) != self.isolated)
    }

    fn run_until(&mut self, done: impl Fn(&Group) -> bool) {
        for _ in 0..SETTLE_STEPS_MAX {
            if done(self) {
                return;
            }
            self.step_world(false);
        }
        panic!("the group did not get there");
    }

    /// Sends `command` to the leader until it is answered.
    fn execute_now(&mut self, command: Command) {
        let id = self.requests.len() as u64;
        self.requests.insert(
            id,
            Request {
                command: command.clone(),
                answer: None,
                outstanding: false,
            },
        );
        for _ in 0..SETTLE_STEPS_MAX {
            if self.requests[&id].answer.is_some() {
                return;
            }
            if !self.requests[&id].outstanding {
                if let Some(leader) = self.leader_index() {
                    let token = self.next_token;
                    self.next_token += 1;
                    let epoch = self.replica(leader).machine_epoch;
                    self.tokens.insert(token, (id, (leader, epoch)));
                    self.requests.get_mut(&id).expect("made").outstanding = true;
                    let now = self.now();
                    let machine = self.replica(leader).machine().expect("leads");
                    machine.handle_command(now, token, &command, false);
                    self.poll(leader);
                }
            }
            self.step_world(false);
        }
        panic!("{command:?} was not answered");
    }

    /// Heals the world, lets it settle, and checks the end state: all replicas hold the same
    /// state, their logs replay to it, money is conserved, and every answered request gets
    /// its first answer again when retried.
    pub fn settle_and_check(&mut self) {
        self.isolated = None;
        self.config.drop = 0.0;
        self.config.duplicate = 0.0;
        for index in 0..REPLICAS {
            let node = &self.nodes[index];
            if node.replica.is_none() && node.joiner.is_none() {
                self.start(index);
            }
        }
        let mut steps = 0;
        while !self.settled() {
            self.step_world(false);
            steps += 1;
            assert!(steps < SETTLE_STEPS_MAX, "the healed group does not settle");
        }
        let leader = (0..REPLICAS).find(|&i| self.leads(i)).expect("settled");
        // Every request a client got an answer to: a retry gets the same answer.
        let answered: Vec<(u64, Command)> = (self.requests.iter())
            .filter(|(_, r)| r.answer.is_some())
            .map(|(id, r)| (*id, r.command.clone()))
            .collect();
        for (request_id, command) in answered {
            let token = self.next_token;
            self.next_token += 1;
            let epoch = self.replica(leader).machine_epoch;
            self.tokens.insert(token, (request_id, (leader, epoch)));
            let now = self.now();
            let machine = self.replica(leader).machine().expect("leads");
            machine.handle_command(now, token, &command, false);
            self.poll(leader);
        }
        let mut steps = 0;
        while !self.tokens.is_empty() || !self.settled() {
            self.step_world(false);
            steps += 1;
            assert!(steps < SETTLE_STEPS_MAX, "retries are not answered");
        }
        let states: Vec<Snapshot> = (0..REPLICAS)
            .map(|i| {
                let replica = self.nodes[i].replica.as_ref().expect("up");
                let ledger = replica.ledger().expect("not reloading");
                ledger.check_conservation().expect("money is conserved");
                let state = Snapshot::of(ledger);
                assert_eq!(
                    Snapshot::of(&replay(&self.nodes[i].log)),
                    state,
                    "node {i}: the partition log replays to the replica's state"
                );
                state
            })
            .collect();
        assert!(states.windows(2).all(|w| w[0] == w[1]), "replicas differ");
    }

    fn settled(&self) -> bool {
        let Some(leader) = (0..REPLICAS).find(|&i| self.leads(i)) else {
            return false;
        };
        let last = self.nodes[leader]
            .replica
            .as_ref()
            .expect("up")
            .raw
            .raft
            .raft_log
            .last_index();
        // Every wiped replica has replaced its old id as a voter.
        let conf = self.nodes[leader]
            .replica
            .as_ref()
            .expect("up")
            .conf_state();
        let members_settled = conf.learners.is_empty()
            && conf.voters_outgoing.is_empty()
            && (self.nodes.iter())
                .all(|node| (node.replica.as_ref()).is_some_and(|r| conf.voters.contains(&r.id())));
        members_settled
            && self.network.is_empty()
            && self.nodes.iter().all(|node| {
                node.writing.is_empty()
                    && node
                        .replica
                        .as_ref()
                        .is_some_and(|r| r.commit_index() == last && r.applied_index() == last)
            })
    }

    /// A digest of the run's deliveries and answers, to compare two runs of one seed.
    pub fn trace_hash(&self) -> u64 {
        self.trace.finish()
    }
}

/// An answer as a retry must repeat it. Opening an account is the one command without a
/// transaction id: a repeat says the account existed already (`created: false`).
fn same_outcome(result: &CommandResult) -> CommandResult {
    match result {
        Ok(Reply::Opened { .. }) => Ok(Reply::Opened { created: true }),
        other => other.clone(),
    }
}

/// The ledger a partition log replays to.
fn replay(log: &[CommittedBatch]) -> Ledger {
    let mut ledger = Ledger::new(0, 1);
    for batch in log {
        apply_batch(
            &mut ledger,
            "the partition log",
            batch.first_lsn,
            &batch.records,
        )
        .expect("a partition log replays");
    }
    ledger
}
