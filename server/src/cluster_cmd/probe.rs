//! What the nodes say of their partitions: `GET /v1/cluster` on each node, over plain
//! HTTP/1.1 or, given `--cacert`, HTTPS ([`NodeHttp`]), with a bound on each node so a dead
//! node costs one timeout, never a stall. And the judgments read from the answers, pure:
//! whether a group has applied a stored group ([`group_progress`]), and each replica's lag
//! behind its leader ([`partition_health`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use walletd_core::model::partition::{NodeId, PartitionId, PartitionMap};

use crate::node_http::NodeHttp;

/// Largest `/v1/cluster` answer read: far above 4,096 partitions' entries.
const ANSWER_BYTES_MAX: usize = 8 << 20;

/// One partition as one node sees it (the fields of `GET /v1/cluster` read here; a field
/// an older node lacks reads as unknown).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PartitionView {
    pub partition: PartitionId,
    #[serde(default)]
    pub leader: Option<NodeId>,
    #[serde(default)]
    pub term: u64,
    #[serde(default)]
    pub commit_lsn: Option<u64>,
    /// The voters of the members this node's replica applied; `None` from a node that does
    /// not report them (a walletd older than moves), which never counts as applied.
    #[serde(default)]
    pub voters: Option<Vec<NodeId>>,
    #[serde(default)]
    pub learners: Vec<NodeId>,
    #[serde(default)]
    pub members_changing: bool,
}

#[derive(Debug, Deserialize)]
struct ClusterAnswer {
    partitions: Vec<PartitionView>,
}

/// What each node asked said: its partitions by id, or why it said nothing.
pub type Answers = BTreeMap<NodeId, Result<BTreeMap<PartitionId, PartitionView>, String>>;

/// Asks every node of `nodes` (those of `map`; others are skipped) at once, over `http`,
/// each bounded by `timeout`.
pub async fn ask_nodes(
    map: &PartitionMap,
    nodes: &[NodeId],
    http: &NodeHttp,
    timeout: Duration,
) -> Answers {
    let mut asked = Vec::new();
    for node in nodes {
        let Some(address) = map.nodes.get(node) else {
            continue;
        };
        let (address, http) = (address.http.clone(), http.clone());
        asked.push((*node, tokio::spawn(ask_node(http, address, timeout))));
    }
    let mut answers = Answers::new();
    for (node, handle) in asked {
        let answer = handle
            .await
            .unwrap_or_else(|error| Err(format!("the request's task failed: {error}")));
        answers.insert(node, answer);
    }
    answers
}

/// `GET /v1/cluster` on the node at `address` (`host:port`).
async fn ask_node(
    http: NodeHttp,
    address: String,
    timeout: Duration,
) -> Result<BTreeMap<PartitionId, PartitionView>, String> {
    let exchange = async {
        let answer = http
            .get(&address, "/v1/cluster", &[], ANSWER_BYTES_MAX)
            .await?;
        if !answer.status.is_success() {
            return Err(format!("answered {}", answer.status));
        }
        let parsed: ClusterAnswer = serde_json::from_slice(&answer.body)
            .map_err(|e| format!("an answer that is not /v1/cluster's: {e}"))?;
        Ok(parsed
            .partitions
            .into_iter()
            .map(|view| (view.partition, view))
            .collect())
    };
    let url = format!("{}://{address}", http.scheme());
    match tokio::time::timeout(timeout, exchange).await {
        Ok(answer) => answer.map_err(|reason| format!("{url}: {reason}")),
        Err(_) => Err(format!(
            "{url}: no answer within {} ms",
            timeout.as_millis()
        )),
    }
}

/// Where a group stands against the group stored for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Its leader has applied exactly the stored group: those voters, no learner, no change
    /// under way.
    Applied { leader: NodeId },
    /// Not yet, and what it waits for, in words.
    Waiting(String),
}

/// The node that leads `partition` by its own word (its answer names itself leader), the
/// one of the highest term if several do (a deposed leader that has not heard yet), with
/// what it says.
fn leader_view(answers: &Answers, partition: PartitionId) -> Option<(NodeId, &PartitionView)> {
    answers
        .iter()
        .filter_map(|(node, answer)| {
            let view = answer.as_ref().ok()?.get(&partition)?;
            (view.leader == Some(*node)).then_some((*node, view))
        })
        .max_by_key(|(node, view)| (view.term, std::cmp::Reverse(*node)))
}

/// Whether `partition`'s group has applied `target`, from the nodes' `answers`.
pub fn group_progress(answers: &Answers, partition: PartitionId, target: &[NodeId]) -> Progress {
    let Some((leader, view)) = leader_view(answers, partition) else {
        let failed: Vec<String> = answers
            .iter()
            .filter_map(|(node, answer)| Some(format!("node {node}: {}", answer.as_ref().err()?)))
            .collect();
        let reason = if !answers.is_empty() && failed.len() == answers.len() {
            format!("no node answers ({})", failed.join("; "))
        } else {
            "no node says it leads (an election, or the nodes have not taken the map yet)"
                .to_string()
        };
        return Progress::Waiting(reason);
    };
    let Some(voters) = &view.voters else {
        return Progress::Waiting(format!(
            "node {leader} leads but does not report its voters (a walletd without moves?)"
        ));
    };
    let mut reasons = Vec::new();
    for node in &view.learners {
        reasons.push(format!("node {node} catching up (learner)"));
    }
    for node in target.iter().filter(|n| !voters.contains(n)) {
        if !view.learners.contains(node) {
            reasons.push(format!("node {node} not a member yet"));
        }
    }
    for node in voters.iter().filter(|n| !target.contains(n)) {
        reasons.push(format!("node {node} still a voter"));
    }
    if view.members_changing {
        reasons.push("a change of voters under way".to_string());
    }
    if reasons.is_empty() {
        Progress::Applied { leader }
    } else {
        Progress::Waiting(format!("leader {leader}: {}", reasons.join(", ")))
    }
}

/// One partition's leader and, for each node of `group`, how many lsns its copy is behind
/// the leader's (`None` where unknown: no leader found, or the node did not answer).
pub fn partition_health(
    answers: &Answers,
    partition: PartitionId,
    group: &[NodeId],
) -> (Option<NodeId>, Vec<(NodeId, Option<u64>)>) {
    let leader = leader_view(answers, partition);
    let leader_lsn = leader.and_then(|(_, view)| view.commit_lsn);
    let lags = group
        .iter()
        .map(|node| {
            let lsn = answers
                .get(node)
                .and_then(|answer| answer.as_ref().ok())
                .and_then(|views| views.get(&partition))
                .and_then(|view| view.commit_lsn);
            let lag = leader_lsn
                .zip(lsn)
                .map(|(leader, own)| leader.saturating_sub(own));
            (*node, lag)
        })
        .collect();
    (leader.map(|(node, _)| node), lags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(leader: NodeId, voters: Option<Vec<NodeId>>, learners: Vec<NodeId>) -> PartitionView {
        PartitionView {
            partition: 3,
            leader: Some(leader),
            term: 2,
            commit_lsn: Some(100),
            voters,
            learners,
            members_changing: false,
        }
    }

    fn answers(entries: Vec<(NodeId, Result<PartitionView, String>)>) -> Answers {
        entries
            .into_iter()
            .map(|(node, answer)| (node, answer.map(|v| BTreeMap::from([(3, v)]))))
            .collect()
    }

    #[test]
    fn a_group_is_applied_once_its_leader_has_exactly_its_voters() {
        let target = [0, 1, 2, 4];
        let grown = Some(vec![0, 1, 2, 4]);
        let seen = answers(vec![
            (0, Ok(view(1, grown.clone(), vec![]))),
            (1, Ok(view(1, grown.clone(), vec![]))),
            (4, Err("connection refused".into())),
        ]);
        assert_eq!(
            group_progress(&seen, 3, &target),
            Progress::Applied { leader: 1 }
        );
        let catching_up = answers(vec![(1, Ok(view(1, Some(vec![0, 1, 2]), vec![4])))]);
        assert_eq!(
            group_progress(&catching_up, 3, &target),
            Progress::Waiting("leader 1: node 4 catching up (learner)".into())
        );
        let mut changing = view(1, grown.clone(), vec![]);
        changing.members_changing = true;
        let changing = answers(vec![(1, Ok(changing))]);
        assert!(matches!(
            group_progress(&changing, 3, &target),
            Progress::Waiting(reason) if reason.contains("under way")
        ));
        let shrinking = answers(vec![(1, Ok(view(1, grown, vec![])))]);
        assert_eq!(
            group_progress(&shrinking, 3, &[1, 2, 4]),
            Progress::Waiting("leader 1: node 0 still a voter".into())
        );
    }

    #[test]
    fn only_a_node_that_names_itself_leader_is_believed() {
        let target = [0, 1, 2];
        let hearsay = answers(vec![(0, Ok(view(1, Some(vec![0, 1, 2]), vec![])))]);
        assert!(matches!(
            group_progress(&hearsay, 3, &target),
            Progress::Waiting(reason) if reason.contains("no node says it leads")
        ));
        let down = answers(vec![(0, Err("refused".into())), (1, Err("timeout".into()))]);
        assert!(matches!(
            group_progress(&down, 3, &target),
            Progress::Waiting(reason) if reason.contains("no node answers (node 0: refused; node 1: timeout)")
        ));
        let older = answers(vec![(1, Ok(view(1, None, vec![])))]);
        assert!(matches!(
            group_progress(&older, 3, &target),
            Progress::Waiting(reason) if reason.contains("does not report its voters")
        ));
    }

    #[test]
    fn an_answer_without_voters_parses_as_not_yet_known() {
        let text = r#"{"map_version": 2, "nodes": [], "partitions": [
            {"partition": 0, "replicas": [0, 1, 2], "leader": 0, "term": 3, "commit_lsn": 7,
             "learners": [], "members_changing": false}]}"#;
        let answer: ClusterAnswer = serde_json::from_str(text).unwrap();
        assert_eq!(answer.partitions[0].voters, None);
        assert_eq!(answer.partitions[0].commit_lsn, Some(7));
    }

    #[test]
    fn lag_is_the_leaders_lsn_minus_each_replicas() {
        let mut behind = view(1, Some(vec![0, 1, 2]), vec![]);
        behind.commit_lsn = Some(90);
        let seen = answers(vec![
            (0, Ok(behind)),
            (1, Ok(view(1, Some(vec![0, 1, 2]), vec![]))),
            (2, Err("down".into())),
        ]);
        assert_eq!(
            partition_health(&seen, 3, &[0, 1, 2]),
            (Some(1), vec![(0, Some(10)), (1, Some(0)), (2, None)])
        );
    }
}
