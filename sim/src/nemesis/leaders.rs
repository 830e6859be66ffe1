//! Faults aimed at the leaders of a replicated run, found from the statuses the replicas
//! publish: a leader killed in the middle of a write (its group must elect another and lose
//! nothing it acknowledged), and a node, a leader most of the time, cut off from every other
//! server node while clients still reach it (it must stop acknowledging: nothing it answers
//! can commit without a majority).

use super::*;

/// Share of isolations aimed at a leader (the others cut off any server node).
const ISOLATE_LEADER_P: f64 = 0.8;

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
}
