//! `wallet cluster status`: the map in etcd (each partition's group and founders), each
//! node's liveness, and, best effort, what the nodes say: each partition's leader and each
//! copy's lag behind it, asked of every node at once with a bound per node.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use walletd_core::model::partition::{NodeId, PartitionId};

use super::probe::{self, Answers};
use super::EtcdArgs;
use crate::cli::Format;
use crate::map_store::{Liveness, StoredMap};

/// The arguments of `wallet cluster status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// `text` for people, `json` for programs.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// How long one node may take to answer GET /v1/cluster; a node that does not answer
    /// in time shows its leader and lag as unknown.
    #[arg(long, default_value_t = 1000)]
    pub node_timeout_ms: u64,
    #[command(flatten)]
    pub nodes: super::NodeApiArgs,
}

/// `wallet cluster status`: reads the map and liveness, asks every node, prints.
pub async fn run(args: StatusArgs) -> Result<(), super::ClusterCmdError> {
    let store = args.etcd.store()?;
    let http = args.nodes.http()?;
    let stored = store.read_existing().await?;
    let live = store.live_nodes().await?;
    let nodes: Vec<NodeId> = stored.map.nodes.keys().copied().collect();
    let timeout = Duration::from_millis(args.node_timeout_ms);
    let answers = probe::ask_nodes(&stored.map, &nodes, &http, timeout).await;
    let report = StatusReport {
        stored,
        live,
        answers,
    };
    match args.format {
        Format::Text => print!("{}", report.text()),
        Format::Json => println!("{}", report.json()),
    }
    Ok(())
}

/// What `status` prints, in either format.
pub(super) struct StatusReport {
    pub stored: StoredMap,
    pub live: BTreeMap<NodeId, Liveness>,
    /// What each node of the map said of its partitions (empty: nobody asked).
    pub answers: Answers,
}

impl StatusReport {
    pub fn json(&self) -> String {
        let map = &self.stored.map;
        let placement = &self.stored.placement;
        let nodes: Vec<_> = map
            .nodes
            .iter()
            .map(|(id, address)| {
                let live = self.live.get(id);
                json!({
                    "id": id,
                    "http": address.http,
                    "peer": address.peer,
                    "live": live.is_some(),
                    "map_version": live.map(|l| l.map_version),
                    "since": live.map(|l| l.since.clone()),
                    "answered": self.answers.get(id).map(|a| a.is_ok()),
                    "partitions": placement.hosted(*id),
                })
            })
            .collect();
        let partitions: Vec<_> = (0..map.partitions())
            .map(|p| {
                let owner = map.owner(p);
                let group = placement.group(p);
                let (leader, lags) = probe::partition_health(&self.answers, p, group);
                let lags: Vec<_> = lags
                    .iter()
                    .map(|(node, lag)| json!({"node": node, "lag_lsn": lag}))
                    .collect();
                json!({
                    "partition": p,
                    "owner": owner,
                    "replicas": group,
                    "founders": placement.founders(p),
                    "owner_live": self.live.contains_key(&owner),
                    "leader": leader,
                    "lag": lags,
                })
            })
            .collect();
        let live_not_in_map: Vec<NodeId> = self
            .live
            .keys()
            .filter(|id| !map.nodes.contains_key(id))
            .copied()
            .collect();
        /// `map` first, and exactly as etcd holds it (fields, order and all).
        #[derive(serde::Serialize)]
        struct Report {
            map: Box<serde_json::value::RawValue>,
            mod_revision: i64,
            nodes: Vec<serde_json::Value>,
            partitions: Vec<serde_json::Value>,
            live_not_in_map: Vec<NodeId>,
        }
        let stored = String::from_utf8_lossy(&self.stored.raw).trim().to_string();
        let report = Report {
            map: serde_json::value::RawValue::from_string(stored)
                .expect("the stored map parsed as JSON when it was read"),
            mod_revision: self.stored.mod_revision,
            nodes,
            partitions,
            live_not_in_map,
        };
        serde_json::to_string_pretty(&report).expect("status encodes")
    }

    pub fn text(&self) -> String {
        let map = &self.stored.map;
        let placement = &self.stored.placement;
        let mut out = String::new();
        let live_count = map
            .nodes
            .keys()
            .filter(|id| self.live.contains_key(id))
            .count();
        let _ = writeln!(
            out,
            "map version {} (etcd revision {}): {} partitions, {} nodes, {} live",
            map.version,
            self.stored.mod_revision,
            map.partitions(),
            map.nodes.len(),
            live_count
        );
        let _ = writeln!(
            out,
            "\n{:>5}  {:<22} {:<22} {:<5} {:>11}  partitions",
            "node", "http", "peer", "live", "map_version"
        );
        for (id, address) in &map.nodes {
            let live = self.live.get(id);
            let version = live.map_or("-".to_string(), |l| l.map_version.to_string());
            let hosted = placement.hosted(*id);
            let _ = writeln!(
                out,
                "{id:>5}  {:<22} {:<22} {:<5} {version:>11}  {}",
                address.http,
                address.peer,
                if live.is_some() { "up" } else { "down" },
                if hosted.is_empty() {
                    "none".to_string()
                } else {
                    format!("{hosted:?}")
                }
            );
        }
        let _ = writeln!(
            out,
            "\n{:>9}  {:<20} {:<20} {:>6}  lag (lsn) by node",
            "partition", "group", "founders", "leader"
        );
        for p in 0..map.partitions() {
            let _ = writeln!(out, "{}", self.partition_line(p));
        }
        for (id, answer) in &self.answers {
            if let Err(error) = answer {
                let _ = writeln!(out, "\nnode {id} did not answer: {error}");
            }
        }
        for (id, entry) in self
            .live
            .iter()
            .filter(|(id, _)| !map.nodes.contains_key(id))
        {
            let _ = writeln!(
                out,
                "\nwarning: node {id} holds a lease but is not in the map (it runs map version {})",
                entry.map_version
            );
        }
        out
    }

    fn partition_line(&self, p: PartitionId) -> String {
        let placement = &self.stored.placement;
        let group = placement.group(p);
        let (leader, lags) = probe::partition_health(&self.answers, p, group);
        let leader = leader.map_or("-".to_string(), |l| l.to_string());
        let lags: Vec<String> = lags
            .iter()
            .map(|(node, lag)| match lag {
                Some(lag) => format!("{node}:{lag}"),
                None => format!("{node}:-"),
            })
            .collect();
        let mut line = format!(
            "{p:>9}  {:<20} {:<20} {leader:>6}  {}",
            format!("{group:?}"),
            format!("{:?}", placement.founders(p)),
            lags.join(" ")
        );
        line.truncate(line.trim_end().len());
        line
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use walletd_core::model::partition::{NodeAddress, PartitionMap};
    use walletd_core::model::placement::Placement;

    use super::*;
    use crate::cluster_cmd::probe::PartitionView;
    use crate::map_store::MapDocument;

    fn report() -> StatusReport {
        let mut nodes = BTreeMap::new();
        for id in [0, 1, 3] {
            let address = NodeAddress {
                http: format!("127.0.0.1:{}", 8080 + id),
                peer: format!("127.0.0.1:{}", 9080 + id),
            };
            nodes.insert(id, address);
        }
        let map = PartitionMap {
            version: 2,
            owners: vec![0, 1, 0],
            nodes,
        };
        let placement = Placement {
            groups: vec![vec![0, 1], vec![1, 0], vec![0, 1]],
            founders: vec![vec![0, 1], vec![1, 0], vec![0, 3]],
        };
        let document = MapDocument::from_placed(&map, &placement);
        let live = |id: NodeId| Liveness {
            id,
            http: format!("127.0.0.1:{}", 8080 + id),
            peer: format!("127.0.0.1:{}", 9080 + id),
            map_version: 2,
            since: "2026-12-05T12:00:00Z".into(),
        };
        let live = BTreeMap::from([(0, live(0)), (3, live(3)), (9, live(9))]);
        let view = |partition, leader, commit_lsn| PartitionView {
            partition,
            leader: Some(leader),
            term: 1,
            commit_lsn: Some(commit_lsn),
            ..PartitionView::default()
        };
        let node_0 = BTreeMap::from([(0, view(0, 0, 50)), (1, view(1, 1, 40)), (2, view(2, 0, 9))]);
        let answers = Answers::from([
            (0, Ok(node_0)),
            (1, Err("127.0.0.1:8081: connection refused".to_string())),
            (3, Ok(BTreeMap::new())),
        ]);
        StatusReport {
            stored: StoredMap {
                raw: document.to_bytes(),
                map,
                placement,
                document,
                mod_revision: 17,
                revision: 20,
            },
            live,
            answers,
        }
    }

    #[test]
    fn status_json_holds_the_stored_map_verbatim_and_each_nodes_liveness() {
        let report = report();
        let text = report.json();
        let stored = String::from_utf8(report.stored.raw.clone()).unwrap();
        assert!(
            text.contains(&stored),
            "the stored bytes, as they are:\n{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["map"]["map_version"], 2);
        assert_eq!(json["map"]["format"], 2);
        assert_eq!(json["mod_revision"], 17);
        assert_eq!(json["nodes"][0]["live"], true);
        assert_eq!(json["nodes"][1]["live"], false);
        assert_eq!(json["nodes"][1]["answered"], false);
        assert_eq!(json["nodes"][1]["map_version"], serde_json::Value::Null);
        assert_eq!(json["nodes"][2]["partitions"], serde_json::json!([]));
        assert_eq!(json["partitions"][1]["owner"], 1);
        assert_eq!(json["partitions"][1]["owner_live"], false);
        assert_eq!(json["partitions"][2]["founders"], serde_json::json!([0, 3]));
        assert_eq!(json["live_not_in_map"], serde_json::json!([9]));
    }

    #[test]
    fn status_shows_leaders_and_lag_where_the_nodes_said_them() {
        let json: serde_json::Value = serde_json::from_str(&report().json()).unwrap();
        assert_eq!(json["partitions"][0]["leader"], 0);
        assert_eq!(
            json["partitions"][0]["lag"],
            serde_json::json!([{"node": 0, "lag_lsn": 0}, {"node": 1, "lag_lsn": null}])
        );
        assert_eq!(
            json["partitions"][1]["leader"],
            serde_json::Value::Null,
            "node 0 heard node 1 leads, but node 1 did not say so"
        );
        let text = report().text();
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("2  [0, 1]"))
            .unwrap();
        assert!(
            line.contains("[0, 3]") && line.ends_with("0  0:0 1:-"),
            "{line}"
        );
        assert!(text.contains("node 1 did not answer: 127.0.0.1:8081: connection refused"));
    }

    #[test]
    fn status_text_says_who_is_up_and_who_holds_what() {
        let text = report().text();
        assert!(
            text.starts_with("map version 2 (etcd revision 17): 3 partitions, 3 nodes, 2 live"),
            "{text}"
        );
        let node_1 = text
            .lines()
            .find(|l| l.trim_start().starts_with("1  127.0.0.1:8081"))
            .unwrap();
        assert!(
            node_1.contains("down") && node_1.ends_with("[0, 1, 2]"),
            "{node_1}"
        );
        let node_3 = text
            .lines()
            .find(|l| l.trim_start().starts_with("3  127.0.0.1:8083"))
            .unwrap();
        assert!(
            node_3.contains(" up ") && node_3.ends_with("none"),
            "{node_3}"
        );
        assert!(
            text.contains("node 9 holds a lease but is not in the map"),
            "{text}"
        );
        assert!(
            text.lines().all(|l| l == l.trim_end()),
            "no trailing spaces"
        );
    }
}
