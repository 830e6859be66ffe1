//! The configuration of one simulated run: cluster shape, workload, faults and timings.
//!
//! Every knob has a documented default (the `standard` preset); the command line overrides a
//! few of them. Nothing here is random: the seed decides everything else.

use std::fmt;
use std::time::Duration;

use walletd_core::protocol::bugs::Bug;

/// One kind of fault the nemesis may inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// Take a server node down (a process crash or a power loss) and restart it later.
    Kill,
    /// A power loss keeps some of the sectors written since the last sync (each with even
    /// odds), not none of them.
    Torn,
    /// Split the hosts in two groups that cannot reach each other (messages dropped).
    Partition,
    /// Hold every message on one direction of one link until the clog clears.
    Clog,
    /// Drop a share of the messages.
    Loss,
    /// Make senders send again what already arrived: on the peer links (TCP, which never
    /// duplicates bytes), break a share of the connections right after a write.
    Dup,
    /// Break a peer connection mid-frame (a torn frame, then the connection is gone).
    Reset,
    /// Long random delays, so messages overtake each other.
    Delay,
    /// Slow `sync` on one node's disks.
    SlowDisk,
    /// One node's disks fail every snapshot written meanwhile (the partitions go on) and,
    /// half of the time, the next `sync` of each disk too (its bytes never reach the disk; the
    /// partitions stop, and the node is restarted when the fault ends).
    DiskError,
    /// Jump the (global) simulated clock forward.
    ClockJump,
    /// Crash a node and, while it is down, damage synced data of one of its partitions (bit
    /// flips, or an unreadable sector); its restart must refuse the partition, naming the
    /// file and offset. The file is then restored from a copy and the node restarted.
    Damage,
    /// Replicated runs: kill the node that leads a partition (a process crash or a power
    /// loss), as soon as it has a write in flight, and restart it later.
    KillLeader,
    /// Replicated runs: cut one server node (a leader, most of the time) off from every
    /// other server node, while clients still reach it.
    Isolate,
    /// Replicated runs: isolate a leader, and crash the first replica that votes in the
    /// election that follows right after its vote is durable (restarted at once), while the
    /// candidate it voted for is cut off and the old leader comes back: the worst moment for
    /// a replica that forgets its vote.
    CrashVoter,
    /// Replicated runs: one follower of a partition's group gets a slow Raft store (each
    /// sync of that group's store takes 50-500 ms) for a while, then recovers: the group
    /// must keep committing on the others, and the slow one must catch up.
    SlowFollower,
    /// Replicated runs: a node loses the disk of one of its replicas (the partition log, its
    /// snapshots and the Raft store) or, some of the time, of all of them: it is crashed and
    /// restarted empty, and each wiped replica must rejoin its group under a new id and
    /// catch up. Never on a group that has not settled from an earlier loss.
    Wipe,
    /// Replicated runs: a node is crashed and a record in the middle of one of its replicas'
    /// Raft store is damaged: the restart finds the store damaged, sets it aside for a new,
    /// empty one, and the replica rejoins as a wiped one does.
    Corrupt,
    /// Replicated runs with more nodes than copies: an operator moves copies between nodes
    /// through the coordination service (grow the group to the new node, wait until it
    /// votes, shrink it off the old one), and now and then drains a node. Run by the
    /// mover (`src/mover.rs`), not drawn by the nemesis.
    Move,
    /// With `move`: the coordination service goes down for a while (no change is made; the
    /// nodes serve on the map they have), and a node's watch of it is slow.
    Coordinator,
    /// With `move`: the last 1 to `nodes - replicas` nodes (drawn from the seed) start
    /// outside the map, their processes waiting until it lists them; the operator adds each
    /// at a seeded time (a compare-and-swap, as `wallet cluster add-node` makes it), and
    /// only then may moves target it. Run by the mover, not drawn by the nemesis.
    Join,
}

impl Fault {
    pub const ALL: [Fault; 21] = [
        Fault::Kill,
        Fault::Torn,
        Fault::Partition,
        Fault::Clog,
        Fault::Loss,
        Fault::Dup,
        Fault::Reset,
        Fault::Delay,
        Fault::SlowDisk,
        Fault::DiskError,
        Fault::ClockJump,
        Fault::Damage,
        Fault::KillLeader,
        Fault::Isolate,
        Fault::CrashVoter,
        Fault::SlowFollower,
        Fault::Wipe,
        Fault::Corrupt,
        Fault::Move,
        Fault::Coordinator,
        Fault::Join,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Torn => "torn",
            Fault::Partition => "partition",
            Fault::Clog => "clog",
            Fault::Loss => "loss",
            Fault::Dup => "dup",
            Fault::Reset => "reset",
            Fault::Delay => "delay",
            Fault::SlowDisk => "slowdisk",
            Fault::DiskError => "diskerror",
            Fault::ClockJump => "clockjump",
            Fault::Damage => "damage",
            Fault::KillLeader => "killleader",
            Fault::Isolate => "isolate",
            Fault::CrashVoter => "crashvoter",
            Fault::SlowFollower => "slowfollower",
            Fault::Wipe => "wipe",
            Fault::Corrupt => "corrupt",
            Fault::Move => "move",
            Fault::Coordinator => "coordinator",
            Fault::Join => "join",
        }
    }

    /// Whether the nemesis injects this fault in a run with or without replication. Leaders
    /// exist only with replication, and only a replica can rebuild from its peers what it
    /// lost. Damage to a partition log must be refused by the node that finds it, which a
    /// replica does not do yet in place of rebuilding (only its Raft store is rebuilt).
    /// Moves, joins and the coordinator's faults are never drawn by the nemesis: the mover runs
    /// them beside it ([`SimConfig::moves`]).
    pub fn applies(self, replicated: bool) -> bool {
        match self {
            Fault::Move | Fault::Coordinator | Fault::Join => false,
            Fault::KillLeader
            | Fault::Isolate
            | Fault::CrashVoter
            | Fault::SlowFollower
            | Fault::Wipe
            | Fault::Corrupt => replicated,
            Fault::Damage => !replicated,
            _ => true,
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A set of enabled faults.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultSet(u32);

impl FaultSet {
    pub fn all() -> FaultSet {
        FaultSet(Fault::ALL.iter().fold(0, |acc, f| acc | f.bit()))
    }

    pub fn none() -> FaultSet {
        FaultSet(0)
    }

    pub fn contains(self, fault: Fault) -> bool {
        self.0 & fault.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The enabled faults in a fixed order.
    pub fn iter(self) -> impl Iterator<Item = Fault> {
        Fault::ALL.into_iter().filter(move |f| self.contains(*f))
    }

    /// Parses `none`, `all` or a comma-separated list of fault names.
    pub fn parse(text: &str) -> Result<FaultSet, String> {
        match text {
            "none" => return Ok(FaultSet::none()),
            "all" => return Ok(FaultSet::all()),
            _ => {}
        }
        let mut set = FaultSet::none();
        for name in text.split(',').filter(|s| !s.is_empty()) {
            let fault = Fault::ALL
                .into_iter()
                .find(|f| f.name() == name)
                .ok_or_else(|| format!("unknown fault {name:?} (known: {})", FaultSet::all()))?;
            set.0 |= fault.bit();
        }
        Ok(set)
    }
}

impl fmt::Display for FaultSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.iter().map(Fault::name).collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for FaultSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Everything one run needs besides its seed.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Server nodes; partition `p` lives on node `p % nodes`.
    pub nodes: u32,
    pub partitions: u32,
    /// Hosts the clients run on (never killed; they can be cut off by partitions).
    pub client_hosts: u32,
    /// Concurrent client tasks, spread over the client hosts.
    pub clients: u32,
    /// Accounts opened before the run (most in USD, some in EUR and JPY).
    pub accounts: u32,
    /// Simulated time with load and faults.
    pub duration: Duration,
    /// Longest heal-and-quiesce period before the final checks.
    pub quiesce_max: Duration,
    pub faults: FaultSet,
    /// Copies of each partition: 1 runs every partition on one node (`start_node_with`);
    /// more (3 to `nodes`) runs each partition as a Raft group of that many replicas on
    /// distinct nodes (`start_replicated_node`), placed as `Placement::derived` places them.
    pub replicas: u32,
    pub bug: Option<Bug>,
    pub verbose: bool,
    /// How long a client waits for one attempt before retrying with the same transaction id.
    pub client_timeout: Duration,
    /// Attempts per client request before the client gives up on it.
    pub client_attempts_max: u32,
    /// Pause between two requests of one client (uniform in `0..=think_max`).
    pub think_max: Duration,
}

impl SimConfig {
    /// The default run: 3 nodes, each a replica of every one of 6 partitions, 20 clients,
    /// 60 s of load, every fault on.
    pub fn standard(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            nodes: 3,
            partitions: 6,
            client_hosts: 2,
            clients: 20,
            accounts: 24,
            duration: Duration::from_secs(60),
            quiesce_max: Duration::from_secs(120),
            faults: FaultSet::all(),
            replicas: SimConfig::default_replicas(3),
            bug: None,
            verbose: false,
            client_timeout: Duration::from_secs(4),
            client_attempts_max: 6,
            think_max: Duration::from_millis(100),
        }
    }

    /// A shorter run for unit tests of the simulator itself.
    pub fn quick(seed: u64) -> SimConfig {
        SimConfig {
            duration: Duration::from_secs(20),
            ..SimConfig::standard(seed)
        }
    }

    /// The command-line options that reproduce this configuration (without the seed).
    pub fn options(&self) -> String {
        let standard = SimConfig::standard(self.seed);
        let mut out = String::new();
        if let Some(bug) = self.bug {
            out.push_str(&format!(" --bug {}", bug.name()));
        }
        if self.nodes != standard.nodes {
            out.push_str(&format!(" --nodes {}", self.nodes));
        }
        if self.partitions != standard.partitions {
            out.push_str(&format!(" --partitions {}", self.partitions));
        }
        if self.duration != standard.duration {
            out.push_str(&format!(" --duration-s {}", self.duration.as_secs()));
        }
        // Always: the default depends on the number of nodes, and may change.
        out.push_str(&format!(" --replicas {}", self.replicas));
        if self.faults != standard.faults {
            out.push_str(&format!(" --faults {}", self.faults));
        }
        out
    }

    /// The copies of each partition when `--replicas` is not given: a replica on every node
    /// of a cluster of 3 nodes or more (3 in the standard 3-node run), one copy below that.
    pub fn default_replicas(nodes: u32) -> u32 {
        if nodes >= 3 {
            nodes
        } else {
            1
        }
    }

    /// Whether every partition is a Raft group.
    pub fn replicated(&self) -> bool {
        self.replicas > 1
    }

    /// Whether copies move during the run: a replicated run with a node to move a copy to,
    /// and `move` among its faults.
    pub fn moves(&self) -> bool {
        self.replicated() && self.nodes > self.replicas && self.faults.contains(Fault::Move)
    }

    /// How many nodes start outside the map and join it during the run (the last ones): 1
    /// to `nodes - replicas`, drawn from the seed, with `join` among the faults of a run
    /// with moves; 0 otherwise.
    pub fn joining(&self) -> u32 {
        if !self.moves() || !self.faults.contains(Fault::Join) {
            return 0;
        }
        let mut rng = crate::rng::stream(self.seed, crate::rng::Purpose::Joins);
        rand::Rng::gen_range(&mut rng, 1..=self.nodes - self.replicas)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.nodes == 0 || self.partitions == 0 || self.clients == 0 || self.client_hosts == 0 {
            return Err("nodes, partitions, clients and client hosts must be at least 1".into());
        }
        if self.partitions > walletd_core::model::partition::PARTITIONS_MAX {
            return Err(format!(
                "at most {} partitions",
                walletd_core::model::partition::PARTITIONS_MAX
            ));
        }
        if self.nodes > 250 || self.client_hosts > 250 {
            return Err("at most 250 nodes and 250 client hosts (one address each)".into());
        }
        if self.accounts < 4 {
            return Err("at least 4 accounts".into());
        }
        if self.replicas != 1 && !(3..=self.nodes).contains(&self.replicas) {
            return Err(format!(
                "--replicas is 1 (unreplicated) or 3 to the number of nodes ({})",
                self.nodes
            ));
        }
        if self.replicated() && self.nodes < 3 {
            return Err(
                "a replicated run needs at least 3 nodes (a majority survives a kill)".into(),
            );
        }
        if self.replicated() && self.partitions < self.nodes {
            return Err(
                "a replicated run needs at least as many partitions as nodes (--replicas 1 runs unreplicated)"
                    .into(),
            );
        }
        if self.duration.is_zero() {
            return Err("the run must last at least 1 s".into());
        }
        Ok(())
    }
}
