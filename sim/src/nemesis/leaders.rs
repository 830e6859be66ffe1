//! Faults aimed at the leaders of a replicated run, found from the statuses the replicas
//! publish: a leader killed in the middle of a write (its group must elect another and lose
//! nothing it acknowledged), and a node, a leader most of the time, cut off from every other
//! server node while clients still reach it (it must stop acknowledging: nothing it answers
//! can commit without a majority), and a voter crashed the moment its vote is durable
//! (election safety rests on that vote surviving the restart).

use walletd_runtime::net::replicated::{replica_id, replica_node};

use super::*;

/// Share of isolations aimed at a leader (the others cut off any server node).
const ISOLATE_LEADER_P: f64 = 0.8;
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
        let lasts = ms(&mut self.rng, FAULT_MS);
        let name = &cluster.nodes[n as usize].name;
        let what = match leader {
            Some(_) => format!(" (leader of partition {partition})"),
            None => String::new(),
        };
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
                    let other = vote != replica_id(v) && candidate != leader;
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
