//! The nemesis: injects the faults enabled for the run, at seeded times, and undoes each
//! after a seeded while; `heal` ends them all for the quiesce period. Network faults are
//! stated once, as [`LinkFaults`]; `Cluster::set_faults` applies them to the client network
//! and, as far as they exist for TCP, to the peer links. Faults aimed at the leaders of a
//! replicated run are in [`leaders`], those that take a replica's data in [`rebuild`].

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

use walletd_core::model::partition::PartitionId;

use crate::cluster::Cluster;
use crate::config::{Fault, FaultSet};
use crate::disk::{Crash, Damage};
use crate::network::{HostId, LinkFaults};
use crate::storage_faults::StorageFaults;

mod leaders;
mod rebuild;

pub use leaders::{SlowEpisode, SlowFollowers, SLOW_FOLLOWER};
pub use rebuild::{Rebuilds, REJOIN};

/// Pause between two injections (uniform in this range, in ms).
const GAP_MS: (u64, u64) = (200, 2_500);
/// Share of kills that wait for a node with unsynced bytes.
const KILL_MID_WRITE_P: f64 = 0.7;
/// Longest wait (in 1 ms polls) for a node in the middle of a write.
const KILL_WAIT_POLLS_MAX: u32 = 500;
/// Share of kills that are a power loss (the others are process crashes).
const POWER_LOSS_P: f64 = 0.5;
/// Share of process crashes in the middle of a write whose restart is followed, once the
/// node has recovered and writes its first batch, by a power loss: what recovery read from
/// the page cache is then lost unless recovery synced it.
const POWER_LOSS_AFTER_RESTART_P: f64 = 0.6;
/// How long a node stays down, in ms.
const DOWN_MS: (u64, u64) = (100, 4_000);
/// Share of peer-link writes after which the connection breaks during a `dup` fault, in ppm.
const DUP_PPM: (u32, u32) = (5_000, 50_000);
/// Extra one-way delay during a `delay` fault (uniform in `0..=max`, max in this range), in
/// microseconds. Its top is above the peer links' silence limit (3 s): a TCP link reorders
/// only across connections, so a delay must be able to outlast a connection that then
/// breaks with data still in flight, for the next connection to overtake it.
const JITTER_US: (u64, u64) = (20_000, 5_000_000);
/// How long a network or disk fault lasts, in ms.
const FAULT_MS: (u64, u64) = (500, 6_000);
/// Share of storage faults that make a sector unreadable (the others flip bits in it).
const UNREADABLE_P: f64 = 0.5;
/// Longest wait for a restart on damaged data to end (recovery syncs, and a slow disk takes
/// up to 300 ms per sync).
const DAMAGED_START_WAIT: Duration = Duration::from_secs(10);

/// Something to undo at a given time.
#[derive(Debug, Clone)]
enum Undo {
    Restart(usize),
    Uncut(Vec<(HostId, HostId)>),
    Unclog((HostId, HostId)),
    LossOff,
    DupOff,
    JitterOff,
    DiskNormal(usize),
    DiskRepaired(usize),
    /// Cut the power of a node the moment it has recovered (scheduled with its restart).
    PowerLossAfterRecovery(usize),
    /// The `slowfollower` fault ends: the Raft store of `node`'s replica of `partition` is
    /// normal again. `episode` tells what the group was at the start.
    FollowerNormal(SlowEpisode),
    /// Some time after a slow follower recovered: has it caught up?
    FollowerCaughtUp(SlowEpisode),
    /// Restart a node whose partition's disk holds damage to synced data: it must refuse.
    RestartDamaged {
        node: usize,
        partition: PartitionId,
        damage: Damage,
    },
}

/// Injects and undoes faults; counts and logs them.
pub struct Nemesis {
    rng: ChaCha8Rng,
    faults: FaultSet,
    /// A replicated run: leaders to kill and isolate (see [`Fault::applies`]).
    replicated: bool,
    /// Undo actions by due time (with a sequence number to keep equal times in order).
    pending: BTreeMap<(Instant, u64), Undo>,
    seq: u64,
    pub injected: u32,
    /// Injections per kind of fault, for the run's summary.
    pub by_kind: BTreeMap<&'static str, u32>,
    pub log: Vec<String>,
    /// Damage to synced data, and what the restarts on it did.
    pub storage: StorageFaults,
    verbose: bool,
    start: Instant,
    /// When injections end (a storage fault's restart must come before).
    until: Instant,
    /// What the `slowfollower` episodes saw.
    pub slow_followers: SlowFollowers,
    /// Replicas that lost their data (`wipe`, `corrupt`), followed until they rejoin.
    pub rebuilds: Rebuilds,
    /// What the operator who moves copies did (moves on).
    pub moves: Option<crate::mover::MoveReport>,
    /// Invariants the nemesis saw broken itself (a group that stopped committing while only
    /// one follower was slow, a follower that did not catch up, a replica that did not
    /// rejoin under a new id).
    pub violations: Vec<(&'static str, String)>,
}

fn ms(rng: &mut ChaCha8Rng, range: (u64, u64)) -> Duration {
    Duration::from_millis(rng.gen_range(range.0..=range.1))
}

impl Nemesis {
    pub fn new(rng: ChaCha8Rng, faults: FaultSet, replicated: bool, verbose: bool) -> Nemesis {
        Nemesis {
            rng,
            faults,
            replicated,
            pending: BTreeMap::new(),
            seq: 0,
            injected: 0,
            by_kind: BTreeMap::new(),
            log: Vec::new(),
            storage: StorageFaults::default(),
            verbose,
            start: Instant::now(),
            until: Instant::now(),
            slow_followers: SlowFollowers::default(),
            rebuilds: Rebuilds::default(),
            moves: None,
            violations: Vec::new(),
        }
    }

    fn note(&mut self, what: String) {
        let line = format!("{:>8.3}s {what}", self.start.elapsed().as_secs_f64());
        if self.verbose {
            println!("nemesis: {line}");
        }
        self.log.push(line);
    }

    fn schedule(&mut self, after: Duration, undo: Undo) {
        self.seq += 1;
        self.pending
            .insert((Instant::now() + after, self.seq), undo);
    }

    /// Injects faults until `until`, undoing each when due.
    pub async fn run(&mut self, cluster: &mut Cluster, until: Instant) {
        let replicated = self.replicated;
        let kinds: Vec<Fault> = (self.faults.iter())
            .filter(|f| *f != Fault::Torn && f.applies(replicated))
            .collect();
        self.until = until;
        let mut next_injection = Instant::now() + ms(&mut self.rng, GAP_MS);
        loop {
            let next_undo = self.pending.keys().next().map(|(t, _)| *t);
            let next = next_undo.map_or(next_injection, |u| u.min(next_injection));
            if next >= until {
                break;
            }
            tokio::time::sleep_until(next).await;
            if next_undo == Some(next) {
                let (_, undo) = self.pending.pop_first().expect("a pending undo");
                match undo {
                    Undo::PowerLossAfterRecovery(n) => {
                        self.power_loss_after_recovery(cluster, n).await;
                    }
                    Undo::RestartDamaged {
                        node,
                        partition,
                        damage,
                    } => self.restart_damaged(cluster, node, partition, damage).await,
                    undo => self.undo(cluster, undo),
                }
                continue;
            }
            if let Some(&kind) = kinds.choose(&mut self.rng) {
                self.inject(cluster, kind).await;
            }
            next_injection = Instant::now() + ms(&mut self.rng, GAP_MS);
        }
        tokio::time::sleep_until(until).await;
    }

    /// Ends every fault: restarts dead nodes, heals the network and the disks.
    pub fn heal(&mut self, cluster: &mut Cluster) {
        for (_, undo) in std::mem::take(&mut self.pending) {
            match undo {
                // Judged only while faults run: the heal makes every disk normal below.
                Undo::FollowerNormal(_) | Undo::FollowerCaughtUp(_) => {}
                undo => self.undo(cluster, undo),
            }
        }
        cluster.set_faults(LinkFaults::default());
        for n in cluster.nodes_down() {
            cluster.restart(n);
        }
        for node in &cluster.nodes {
            node.speed.slow_us_max.store(0, Ordering::Relaxed);
        }
        for n in 0..cluster.nodes.len() as HostId {
            for raft in cluster.shared.raft_disks(n) {
                raft.lock().slow_sync_us = None;
            }
        }
        self.note("heal: network healed, every node up, disks normal".into());
    }

    async fn inject(&mut self, cluster: &mut Cluster, kind: Fault) {
        if self.replicated {
            self.follow_rebuilds(cluster);
        }
        let injected = match kind {
            Fault::Kill => self.kill(cluster).await,
            Fault::Partition => self.partition(cluster),
            Fault::Clog => self.clog(cluster),
            Fault::Loss | Fault::Dup | Fault::Delay => self.degrade(cluster, kind),
            Fault::Reset => self.reset(cluster),
            Fault::SlowDisk => self.slow_disk(cluster),
            Fault::DiskError => self.disk_error(cluster),
            Fault::Damage => self.damage(cluster),
            Fault::KillLeader => self.kill_leader(cluster).await,
            Fault::Isolate => self.isolate(cluster),
            Fault::CrashVoter => self.crash_voter(cluster).await,
            Fault::SlowFollower => self.slow_follower(cluster),
            Fault::Wipe => self.wipe(cluster),
            Fault::Corrupt => self.corrupt(cluster),
            Fault::ClockJump => {
                let jump = ms(&mut self.rng, (200, 5_000));
                self.note(format!("clock jumps forward {jump:?}"));
                madsim::time::advance(jump);
                true
            }
            Fault::Torn => unreachable!("torn tails are a property of kills"),
            Fault::Move | Fault::Coordinator | Fault::Join => unreachable!("the mover runs these"),
        };
        if injected {
            self.injected += 1;
            *self.by_kind.entry(kind.name()).or_default() += 1;
        }
    }

    /// Kills a node. Most kills wait for a node in the middle of a write, so that
    /// acknowledged work that is not yet durable (a bug) and torn records (recovery) are hit.
    async fn kill(&mut self, cluster: &mut Cluster) -> bool {
        let mut writing = Vec::new();
        if self.rng.gen_bool(KILL_MID_WRITE_P) {
            for _ in 0..KILL_WAIT_POLLS_MAX {
                writing = cluster.nodes_writing();
                if !writing.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let up: Vec<usize> = (0..cluster.nodes.len())
            .filter(|n| cluster.nodes[*n].up)
            .collect();
        let candidates = if writing.is_empty() { up } else { writing };
        let Some(&n) = candidates.choose(&mut self.rng) else {
            return false;
        };
        let crash = if self.rng.gen_bool(POWER_LOSS_P) {
            Crash::PowerLoss
        } else {
            Crash::Process
        };
        let down = ms(&mut self.rng, DOWN_MS);
        let mid_write = cluster.nodes_writing().contains(&n);
        self.crash(cluster, n, crash, down);
        if crash == Crash::Process && mid_write && self.rng.gen_bool(POWER_LOSS_AFTER_RESTART_P) {
            self.schedule(down, Undo::PowerLossAfterRecovery(n));
        }
        true
    }

    /// Takes node `n` down as `crash` says, for `down`.
    fn crash(&mut self, cluster: &mut Cluster, n: usize, crash: Crash, down: Duration) {
        self.take_down(cluster, n, crash, down);
        self.schedule(down, Undo::Restart(n));
    }

    /// Takes node `n` down as `crash` says; its restart, after `down`, is the caller's.
    fn take_down(&mut self, cluster: &mut Cluster, n: usize, crash: Crash, down: Duration) {
        let reports = cluster.kill(n, crash);
        let what = match crash {
            Crash::Process => "process crash".to_string(),
            Crash::PowerLoss => {
                let lost: usize = reports.iter().map(|r| r.lost_bytes).sum();
                let torn: usize = reports.iter().map(|r| r.torn_bytes_kept).sum();
                format!("power loss: lost {lost} unsynced bytes, kept {torn} torn")
            }
        };
        let name = &cluster.nodes[n].name;
        self.note(format!("kill {name} ({what}) for {down:?}"));
    }

    /// Crashes a node and, while it is down, damages synced data of one of its partitions:
    /// flips bits in a synced sector of a log segment that recovery reads, or makes one
    /// unreadable. Its restart must refuse that partition (see `restart_damaged`). Only when
    /// the restart comes before the faults end, so that it is judged.
    fn damage(&mut self, cluster: &mut Cluster) -> bool {
        let up: Vec<usize> = (0..cluster.nodes.len())
            .filter(|n| cluster.nodes[*n].up && !cluster.nodes[*n].partitions.is_empty())
            .collect();
        let Some(&n) = up.choose(&mut self.rng) else {
            return false;
        };
        let down = ms(&mut self.rng, DOWN_MS);
        if Instant::now() + down >= self.until {
            return false;
        }
        let crash = if self.rng.gen_bool(POWER_LOSS_P) {
            Crash::PowerLoss
        } else {
            Crash::Process
        };
        let unreadable = self.rng.gen_bool(UNREADABLE_P);
        let mut partitions = cluster.nodes[n].partitions.clone();
        partitions.shuffle(&mut self.rng);
        self.take_down(cluster, n, crash, down);
        let rng = &mut self.rng;
        let damaged = partitions.into_iter().find_map(|p| {
            let damage = cluster.shared.disks[p as usize].damage_synced(rng, unreadable)?;
            Some((p, damage))
        });
        let Some((partition, damage)) = damaged else {
            self.note("no synced sector to damage: a plain kill".into());
            self.schedule(down, Undo::Restart(n));
            return true;
        };
        self.storage.injected += 1;
        self.note(format!("damage partition {partition}: {damage}"));
        self.schedule(
            down,
            Undo::RestartDamaged {
                node: n,
                partition,
                damage,
            },
        );
        true
    }

    /// Restarts node `n`, whose `partition`'s disk holds `damage`, and judges how the start
    /// ended: it must refuse, naming the file and offset. Then, as after any refusal, the
    /// process is gone; the operator restores the file from a copy and starts the node again,
    /// which must now start and catch up.
    async fn restart_damaged(
        &mut self,
        cluster: &mut Cluster,
        n: usize,
        partition: PartitionId,
        damage: Damage,
    ) {
        let outcome = cluster.restart_and_wait(n, DAMAGED_START_WAIT).await;
        let name = cluster.nodes[n].name.clone();
        let verdict = self.storage.judge(&name, &damage, outcome);
        self.note(verdict);
        cluster.kill(n, Crash::Process);
        self.restore_and_restart(cluster, n, partition);
    }

    /// Restores the damaged files of `partition` from a copy and restarts node `n`.
    fn restore_and_restart(&mut self, cluster: &mut Cluster, n: usize, partition: PartitionId) {
        let sectors = cluster.shared.disks[partition as usize].restore_medium();
        cluster.restart(n);
        let name = &cluster.nodes[n].name;
        self.note(format!(
            "partition {partition} restored from a copy ({sectors} damaged sector), restart {name}"
        ));
    }

    /// Cuts the power of node `n` once every partition of its new incarnation has recovered
    /// and one of them writes its first batch: answers and peer messages that rest on the
    /// recovered state have left, and nothing new has been synced yet.
    async fn power_loss_after_recovery(&mut self, cluster: &mut Cluster, n: usize) {
        let recovered = |cluster: &Cluster| {
            let state = cluster.shared.lock();
            if cluster.shared.replicated() {
                let host = cluster.nodes[n].host;
                return state.replicas.recovered(&cluster.shared, host);
            }
            let partitions = &cluster.nodes[n].partitions;
            partitions
                .iter()
                .all(|p| state.stats[*p as usize].is_some())
        };
        for _ in 0..KILL_WAIT_POLLS_MAX {
            if !cluster.nodes[n].up || (recovered(cluster) && cluster.nodes_writing().contains(&n))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if cluster.nodes[n].up && recovered(cluster) {
            let down = ms(&mut self.rng, DOWN_MS);
            self.crash(cluster, n, Crash::PowerLoss, down);
        }
    }

    /// Splits all hosts in two random groups that cannot reach each other.
    fn partition(&mut self, cluster: &Cluster) -> bool {
        let hosts = (cluster.nodes.len() + cluster.client_hosts.len()) as HostId;
        let servers = cluster.nodes.len() as HostId;
        let mut side: Vec<HostId> = (0..hosts).filter(|_| self.rng.gen_bool(0.5)).collect();
        if side.is_empty() || side.len() == hosts as usize {
            side = vec![self.rng.gen_range(0..servers)];
        }
        let mut faults = cluster.net().faults();
        let mut links = Vec::new();
        for a in 0..hosts {
            for b in 0..hosts {
                if side.contains(&a) != side.contains(&b) && faults.cut.insert((a, b)) {
                    links.push((a, b));
                }
            }
        }
        cluster.set_faults(faults);
        let lasts = ms(&mut self.rng, FAULT_MS);
        self.note(format!("partition {side:?} from the rest for {lasts:?}"));
        self.schedule(lasts, Undo::Uncut(links));
        true
    }

    /// Holds the messages of one direction of a link between a host and a server node.
    fn clog(&mut self, cluster: &Cluster) -> bool {
        let hosts = (cluster.nodes.len() + cluster.client_hosts.len()) as HostId;
        let servers = cluster.nodes.len() as HostId;
        let a = self.rng.gen_range(0..hosts);
        let others: Vec<HostId> = (0..servers).filter(|b| *b != a).collect();
        let Some(&b) = others.choose(&mut self.rng) else {
            return false; // A single server node and the draw was that node.
        };
        let (from, to) = if self.rng.gen_bool(0.5) {
            (a, b)
        } else {
            (b, a)
        };
        let mut faults = cluster.net().faults();
        faults.clogged.insert((from, to));
        cluster.set_faults(faults);
        let lasts = ms(&mut self.rng, FAULT_MS);
        self.note(format!("clog {from}>{to} for {lasts:?}"));
        self.schedule(lasts, Undo::Unclog((from, to)));
        true
    }

    /// Loss, duplication or long random delays on every link for a while.
    fn degrade(&mut self, cluster: &Cluster, kind: Fault) -> bool {
        let mut faults = cluster.net().faults();
        let (what, undo) = match kind {
            Fault::Loss => {
                faults.loss_ppm = self.rng.gen_range(20_000..=300_000);
                (format!("loss {} ppm", faults.loss_ppm), Undo::LossOff)
            }
            Fault::Dup => {
                faults.dup_ppm = self.rng.gen_range(DUP_PPM.0..=DUP_PPM.1);
                let what = format!(
                    "peer connections break after {} ppm of writes",
                    faults.dup_ppm
                );
                (what, Undo::DupOff)
            }
            _ => {
                faults.jitter_us_max = self.rng.gen_range(JITTER_US.0..=JITTER_US.1);
                let ms = faults.jitter_us_max / 1_000;
                (format!("jitter up to {ms} ms"), Undo::JitterOff)
            }
        };
        cluster.set_faults(faults);
        let lasts = ms(&mut self.rng, FAULT_MS);
        self.note(format!("{what} for {lasts:?}"));
        self.schedule(lasts, undo);
        true
    }

    /// Cuts one open peer connection mid-frame, at its next write.
    fn reset(&mut self, cluster: &Cluster) -> bool {
        let rng = &mut self.rng;
        let Some((from, to)) = cluster.links().reset_one(|n| rng.gen_range(0..n)) else {
            return false;
        };
        self.note(format!(
            "reset a connection {from}>{to} at its next write, mid-frame"
        ));
        true
    }

    /// Makes the disks of one node slow to sync for a while.
    fn slow_disk(&mut self, cluster: &Cluster) -> bool {
        let n = self.rng.gen_range(0..cluster.nodes.len());
        let slow_us = self.rng.gen_range(5_000..=300_000);
        let node = &cluster.nodes[n];
        node.speed.slow_us_max.store(slow_us, Ordering::Relaxed);
        let lasts = ms(&mut self.rng, FAULT_MS);
        self.note(format!(
            "slow disk on {} (up to {} ms per sync) for {lasts:?}",
            node.name,
            slow_us / 1_000
        ));
        self.schedule(lasts, Undo::DiskNormal(n));
        true
    }

    /// Makes the disks of one node fail for a while: every snapshot written meanwhile, and
    /// half of the time the next sync of each disk too.
    fn disk_error(&mut self, cluster: &Cluster) -> bool {
        let n = self.rng.gen_range(0..cluster.nodes.len());
        let sync = self.rng.gen_bool(0.5);
        cluster.fail_disks(n, sync);
        let lasts = ms(&mut self.rng, FAULT_MS);
        let what = if sync {
            "the next sync of each disk and every snapshot fail"
        } else {
            "snapshots fail"
        };
        self.note(format!(
            "disk error on {}: {what}, for {lasts:?}",
            cluster.nodes[n].name
        ));
        self.schedule(lasts, Undo::DiskRepaired(n));
        true
    }

    /// The fault schedule in one line: injections per kind.
    pub fn schedule_summary(&self) -> String {
        if self.by_kind.is_empty() {
            return "none".into();
        }
        let parts: Vec<String> = self
            .by_kind
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        parts.join(" ")
    }

    fn undo(&mut self, cluster: &mut Cluster, undo: Undo) {
        let mut faults = cluster.net().faults();
        match &undo {
            // Only while faults run (see `run`); healing skips it.
            Undo::PowerLossAfterRecovery(_) => {}
            // Only while faults run too (see `damage`); were the heal to find one, the file is
            // restored first, unjudged.
            Undo::RestartDamaged {
                node, partition, ..
            } => {
                self.storage.unchecked += 1;
                self.restore_and_restart(cluster, *node, *partition);
            }
            Undo::Restart(n) => {
                cluster.restart(*n);
                self.note(format!("restart {}", cluster.nodes[*n].name));
            }
            Undo::Uncut(links) => {
                for link in links {
                    faults.cut.remove(link);
                }
                let isolated = faults.isolated.as_ref().map(|isolated| isolated.node);
                if isolated.is_some_and(|node| links.iter().any(|link| link.0 == node)) {
                    faults.isolated = None;
                }
                self.note("partition healed".into());
            }
            Undo::Unclog(link) => {
                faults.clogged.remove(link);
                self.note(format!("clog {}>{} cleared", link.0, link.1));
            }
            Undo::LossOff => faults.loss_ppm = 0,
            Undo::DupOff => faults.dup_ppm = 0,
            Undo::JitterOff => faults.jitter_us_max = 0,
            Undo::FollowerNormal(episode) => self.follower_normal(cluster, episode),
            Undo::FollowerCaughtUp(episode) => self.follower_caught_up(cluster, episode),
            Undo::DiskNormal(n) => cluster.nodes[*n]
                .speed
                .slow_us_max
                .store(0, Ordering::Relaxed),
            // As a supervisor restarts a server that exited because a partition stopped.
            Undo::DiskRepaired(n) => {
                let failed = cluster.repair_disks(*n);
                let name = &cluster.nodes[*n].name;
                if failed && cluster.nodes[*n].up {
                    self.note(format!("disk of {name} repaired: a sync failed, restart"));
                    cluster.kill(*n, Crash::Process);
                    cluster.restart(*n);
                } else {
                    self.note(format!("disk of {name} repaired"));
                }
            }
        }
        cluster.set_faults(faults);
    }
}
