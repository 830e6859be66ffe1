//! Faults aimed at the leaders of a replicated run, found from the statuses the replicas
//! publish: a leader killed in the middle of a write (its group must elect another and lose
//! nothing it acknowledged), and a node, a leader most of the time, cut off from every other
//! server node while clients still reach it (it must stop acknowledging: nothing it answers
//! can commit without a majority), and a voter crashed the moment its vote is durable
//! (election safety rests on that vote surviving the restart).

use walletd_runtime::net::replicated::replica_node;

use super::*;
use crate::network::Isolated;

/// Share of isolations aimed at a leader (the others cut off any server node).
const ISOLATE_LEADER_P: f64 = 0.8;
/// Share of isolations during which clients' requests to any node skip the isolated one
/// (see [`Isolated::drained`]).
const ISOLATE_DRAINED_P: f64 = 0.5;
/// Longest wait, in 1 ms polls, for a replica to vote in the election that an isolated
/// leader causes (elections start 300 to 600 ms after the last heartbeat).
const VOTE_WAIT_POLLS_MAX: u32 = 2_000;
/// How long a voter crashed right after its vote stays down, in ms: back before the
/// election it voted in is over.
const VOTER_DOWN_MS: (u64, u64) = (1, 50);

impl Nemesis {
    /// Kills the node that leads a partition drawn at random; most of the time once it has
    /// a write in flight (a batch proposed, or a Raft persist not yet synced).
    pub(super) async fn kill_leader(&mut self, cluster: &mut Cluster) -> bool {
        let partition = self.rng.gen_range(0..cluster.shared.map.partitions());
        let leader = cluster.shared.lock().replicas.leader_of(partition);
        let Some(n) = leader.map(|host| host as usize) else {
            return false; // An election is under way.
        };
        if !cluster.nodes[n].up {
            return false;
        }
        if self.rng.gen_bool(KILL_MID_WRITE_P) {
            for _ in 0..KILL_WAIT_POLLS_MAX {
                if cluster.nodes_writing().contains(&n) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let crash = if self.rng.gen_bool(POWER_LOSS_P) {
            Crash::PowerLoss
        } else {
            Crash::Process
        };
        let down = ms(&mut self.rng, DOWN_MS);
        let name = cluster.nodes[n].name.clone();
        self.note(format!("{name} leads partition {partition}: kill it"));
        self.crash(cluster, n, crash, down);
        true
    }

    /// Cuts one server node off from every other server node, both ways, for a while: the
    /// leader of a partition drawn at random most of the time. Clients still reach it, so a
    /// leader that acknowledged what no majority holds would be seen.
    pub(super) fn isolate(&mut self, cluster: &Cluster) -> bool {
        let servers = cluster.nodes.len() as HostId;
        let partition = self.rng.gen_range(0..cluster.shared.map.partitions());
        let leader = if self.rng.gen_bool(ISOLATE_LEADER_P) {
            cluster.shared.lock().replicas.leader_of(partition)
        } else {
            None
        };
        let n = leader.unwrap_or_else(|| self.rng.gen_range(0..servers));
        let links = cut_off(cluster, n);
        let drained = self.rng.gen_bool(ISOLATE_DRAINED_P);
        let led = {
            let state = cluster.shared.lock();
            (0..cluster.shared.map.partitions())
                .filter(|p| state.replicas.leader_of(*p) == Some(n))
                .collect()
        };
        let mut faults = cluster.net().faults();
        faults.isolated = Some(Isolated {
            node: n,
            led,
            drained,
        });
        cluster.set_faults(faults);
        let lasts = ms(&mut self.rng, FAULT_MS);
        let name = &cluster.nodes[n as usize].name;
        let mut what = match leader {
            Some(_) => format!(" (leader of partition {partition})"),
            None => String::new(),
        };
        if drained {
            what.push_str(", clients drained from it,");
        }
        self.note(format!(
            "isolate {name}{what} from the other server nodes for {lasts:?}"
        ));
        self.schedule(lasts, Undo::Uncut(links));
        true
    }

    /// Isolates the leader of a partition drawn at random and waits for another replica to
    /// vote in the election that follows. The moment that vote is durable (and sent), the
    /// voter crashes and restarts at once, the candidate it voted for is cut off, and the old
    /// leader comes back: the old leader and the voter, neither with a leader, elect again,
    /// and the voter must remember whom it voted for in that term.
    pub(super) async fn crash_voter(&mut self, cluster: &mut Cluster) -> bool {
        let partition = self.rng.gen_range(0..cluster.shared.map.partitions());
        let leader = cluster.shared.lock().replicas.leader_of(partition);
        let Some(leader) = leader else {
            return false; // An election is under way.
        };
        let term = raft_state(cluster, leader, partition).0;
        let isolated = cut_off(cluster, leader);
        let name = cluster.nodes[leader as usize].name.clone();
        self.note(format!(
            "isolate {name} (leader of partition {partition} in term {term}) until a replica votes"
        ));
        let mut voted = None;
        for _ in 0..VOTE_WAIT_POLLS_MAX {
            tokio::time::sleep(Duration::from_millis(1)).await;
            voted = (0..cluster.nodes.len() as HostId)
                .filter(|v| *v != leader && cluster.nodes[*v as usize].up)
                .find_map(|v| {
                    let (voted_term, vote) = raft_state(cluster, v, partition);
                    let candidate = replica_node(vote)?;
                    let other = candidate != v && candidate != leader;
                    let up = cluster.nodes.get(candidate as usize).is_some_and(|c| c.up);
                    (voted_term > term && other && up).then_some((v, candidate, voted_term))
                });
            if voted.is_some() {
                break;
            }
        }
        let mut faults = cluster.net().faults();
        for link in &isolated {
            faults.cut.remove(link);
        }
        cluster.set_faults(faults);
        let Some((voter, candidate, voted_term)) = voted else {
            self.note(format!("{name} back: no replica voted meanwhile"));
            return true;
        };
        let down = ms(&mut self.rng, VOTER_DOWN_MS);
        let (voter_name, candidate_name) = (
            cluster.nodes[voter as usize].name.clone(),
            cluster.nodes[candidate as usize].name.clone(),
        );
        self.note(format!(
            "{voter_name} voted for {candidate_name} in term {voted_term}: crash it, cut \
             {candidate_name} off, {name} back"
        ));
        self.crash(cluster, voter as usize, Crash::Process, down);
        let links = cut_off(cluster, candidate);
        let lasts = ms(&mut self.rng, FAULT_MS);
        self.schedule(lasts, Undo::Uncut(links));
        true
    }
}

/// Cuts server node `n` off from every other server node, both ways; returns the links cut
/// (those that were not already), for the undo.
fn cut_off(cluster: &Cluster, n: HostId) -> Vec<(HostId, HostId)> {
    let servers = cluster.nodes.len() as HostId;
    let mut faults = cluster.net().faults();
    let mut links = Vec::new();
    for other in (0..servers).filter(|m| *m != n) {
        for link in [(n, other), (other, n)] {
            if faults.cut.insert(link) {
                links.push(link);
            }
        }
    }
    cluster.set_faults(faults);
    links
}

/// The durable term and vote of node `n`'s replica of `partition`.
fn raft_state(cluster: &Cluster, n: HostId, partition: PartitionId) -> (u64, u64) {
    let raft = &cluster.shared.raft_disks(n)[partition as usize];
    let state = raft.lock();
    (state.durable.hard_state.term, state.durable.hard_state.vote)
}

/// Each sync of a slow follower's Raft store takes this long, in microseconds.
const SLOW_FOLLOWER_SYNC_US: (u64, u64) = (50_000, 500_000);
/// How long after a slow follower recovers it must have caught up with what its group had
/// committed when it recovered (it has a 500 ms sync at most to finish, then normal syncs).
const CATCH_UP_WITHIN: Duration = Duration::from_secs(3);

/// One `slowfollower` episode: the group of `partition`, led by `leader`, with `follower`'s
/// Raft store slow.
#[derive(Debug, Clone)]
pub struct SlowEpisode {
    partition: PartitionId,
    leader: HostId,
    follower: HostId,
    /// The leader's commit index when the follower became slow (or recovered, for the
    /// catch-up check).
    commit: u64,
    /// Faults injected so far when the episode began, this one included: an episode is
    /// judged only when no other fault was on or came meanwhile (another fault may stop the
    /// group, rightly).
    injected: u32,
    alone: bool,
    /// With moves on: the map's revision, which every node had learned, when the episode
    /// began. A map that changes meanwhile (a node that learned it relinks only once
    /// another has too; a copy joins or leaves) is a fault of its own.
    revision: Option<u64>,
}

/// How long after every node learned a map a slow follower's episode may be judged: the
/// links that failed their handshake meanwhile (two nodes on different maps) reconnect
/// with a backoff of up to 1 s.
const MAP_SETTLED: Duration = Duration::from_secs(2);

/// With moves on, the map's revision if every node has learned it at least
/// [`MAP_SETTLED`] ago (`None` otherwise); `Some(0)` without moves, whose map never
/// changes. `None` too while a node is down or restarted less than [`MAP_SETTLED`] ago: a
/// node still recovering, or its replicas catching up, counts for nothing in its groups'
/// majorities, as a node down does.
fn settled_revision(cluster: &Cluster) -> Option<u64> {
    let now = Instant::now();
    let running = |node: &crate::cluster::ServerNode| {
        node.up && node.restarted_at.is_none_or(|at| at + MAP_SETTLED <= now)
    };
    if !cluster.nodes.iter().all(running) {
        return None;
    }
    let Some(coordinator) = &cluster.shared.coordinator else {
        return Some(0);
    };
    let newest = coordinator.peek().revision();
    let settled = |disks: &crate::replicas::ReplicaDisks| {
        disks.learned().revision() == newest && disks.learned_at() + MAP_SETTLED <= Instant::now()
    };
    cluster
        .shared
        .replicas
        .iter()
        .all(settled)
        .then_some(newest)
}

/// What the `slowfollower` episodes of a run saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct SlowFollowers {
    pub episodes: u32,
    /// Episodes in which the group committed while its follower was slow.
    pub committed: u32,
    /// Episodes with no other fault on, which are judged.
    pub alone: u32,
    /// Followers seen caught up the catch-up delay after they recovered.
    pub caught_up: u32,
}

impl Nemesis {
    /// Makes the Raft store of one follower of a partition's group slow for a while.
    pub(super) fn slow_follower(&mut self, cluster: &Cluster) -> bool {
        let slow =
            |undo: &Undo| matches!(undo, Undo::FollowerNormal(_) | Undo::FollowerCaughtUp(_));
        if self.pending.values().any(slow) {
            // One episode at a time, its catch-up included: two slow followers in one group
            // stop it, rightly.
            return false;
        }
        let partition = self.rng.gen_range(0..cluster.shared.map.partitions());
        let (leader, commit) = {
            let state = cluster.shared.lock();
            let Some(leader) = state.replicas.leader_of(partition) else {
                return false; // An election is under way.
            };
            (leader, state.replicas.commit_index(leader, partition))
        };
        let followers: Vec<HostId> = (0..cluster.nodes.len() as HostId)
            .filter(|n| *n != leader && cluster.nodes[*n as usize].up)
            .filter(|n| cluster.shared.replicas[*n as usize].holds(partition))
            .collect();
        let Some(&follower) = followers.choose(&mut self.rng) else {
            return false;
        };
        let raft = &cluster.shared.raft_disks(follower)[partition as usize];
        raft.lock().slow_sync_us = Some(SLOW_FOLLOWER_SYNC_US);
        let lasts = ms(&mut self.rng, FAULT_MS);
        let name = &cluster.nodes[follower as usize].name;
        self.note(format!(
            "slow follower: {name}'s Raft store of partition {partition} (led by node-{leader}) syncs in 50-500 ms for {lasts:?}"
        ));
        let episode = SlowEpisode {
            partition,
            leader,
            follower,
            commit: commit.unwrap_or(0),
            injected: self.injected + 1,
            // Nor a replica of some group rejoining after it lost its data: its group has
            // one voter down, and a slow one more stops it, rightly.
            alone: self.pending.is_empty() && !self.rebuilds.any_pending(),
            revision: settled_revision(cluster),
        };
        self.schedule(lasts, Undo::FollowerNormal(episode));
        true
    }

    /// Whether nothing but `episode` was injected since it began.
    fn alone(&self, cluster: &Cluster, episode: &SlowEpisode) -> bool {
        episode.alone
            && self.injected == episode.injected
            && episode.revision.is_some()
            && settled_revision(cluster) == episode.revision
    }

    /// A slow follower recovers: did its group commit meanwhile? Then checks, a while later,
    /// that the follower caught up.
    pub(super) fn follower_normal(&mut self, cluster: &Cluster, episode: &SlowEpisode) {
        let (partition, follower) = (episode.partition, episode.follower);
        let raft = &cluster.shared.raft_disks(follower)[partition as usize];
        raft.lock().slow_sync_us = None;
        let (leader, commit) = {
            let state = cluster.shared.lock();
            let leader = state.replicas.leader_of(partition);
            let commit = leader.and_then(|l| state.replicas.commit_index(l, partition));
            (leader, commit.unwrap_or(0))
        };
        let leader = leader.map_or("none".to_string(), |l| format!("node-{l}"));
        let alone = self.alone(cluster, episode);
        self.slow_followers.episodes += 1;
        let committed = commit.saturating_sub(episode.commit);
        if committed > 0 {
            self.slow_followers.committed += 1;
        }
        self.note(format!(
            "slow follower node-{follower} of partition {partition} normal again: the group committed {committed} entries meanwhile{}",
            if alone { "" } else { " (other faults on)" }
        ));
        if !alone {
            return;
        }
        self.slow_followers.alone += 1;
        if committed == 0 {
            self.violations.push((
                SLOW_FOLLOWER,
                format!(
                    "partition {partition}: with only node-{follower}'s Raft store slow, the group (led by node-{}) committed {committed} entries (now led by {leader})",
                    episode.leader
                ),
            ));
        }
        let check = SlowEpisode {
            commit,
            ..episode.clone()
        };
        self.schedule(CATCH_UP_WITHIN, Undo::FollowerCaughtUp(check));
    }

    /// The follower of `episode` must have reached the commit index its group had when it
    /// recovered, unless another fault came meanwhile.
    pub(super) fn follower_caught_up(&mut self, cluster: &Cluster, episode: &SlowEpisode) {
        if !self.alone(cluster, episode) {
            return;
        }
        let (partition, follower) = (episode.partition, episode.follower);
        let reached = cluster
            .shared
            .lock()
            .replicas
            .commit_index(follower, partition)
            .unwrap_or(0);
        if reached >= episode.commit {
            self.slow_followers.caught_up += 1;
            return;
        }
        self.violations.push((
            SLOW_FOLLOWER,
            format!(
                "partition {partition}: node-{follower}, slow until {CATCH_UP_WITHIN:?} ago, is at commit index {reached}, its group was at {} when it recovered",
                episode.commit
            ),
        ));
    }
}

/// The invariant of the `slowfollower` fault.
pub const SLOW_FOLLOWER: &str = "slow_follower";
