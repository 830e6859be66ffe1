//! `wallet cluster`: the partition map in etcd, for operators and scripts.
//!
//! - `init --config cluster.toml`: stores the cluster file's map (nodes, owners, version;
//!   never the secret or the TLS files) as the first map. Refused if a map is already there:
//!   overwriting a running cluster's map by accident is the mistake to prevent. `--force`
//!   replaces it, under a version above the stored one, so running nodes judge it as any
//!   other change (and refuse it if it moves their partitions).
//! - `status [--format json]`: the map, each node's liveness (its lease in etcd) and the map
//!   version it runs, each partition's owner. The JSON holds the stored document verbatim
//!   under `map`.
//! - `add-node --id N --http ADDR --peer ADDR`: a compare-and-swap that adds a node owning no
//!   partition and raises the map version.
//!
//! Exit status: 0 done, 1 refused or failed (the message says why).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;
use walletd_core::model::partition::{NodeAddress, NodeId};

use crate::cli::Format;
use crate::cluster::{is_host_port, ClusterConfig};
use crate::etcd::Etcd;
use crate::map_store::{MapStore, StoreError, StoredMap, PREFIX_DEFAULT};

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Store a cluster file's map in etcd as the cluster's first map.
    ///
    /// Takes the nodes, their addresses, the partition count, the owners and map_version of
    /// the file (its secret and [tls] section stay with the nodes). Refused if etcd already
    /// holds a map for this prefix, unless --force.
    Init(InitArgs),
    /// Print the map in etcd, each node's liveness and each partition's owner.
    Status(StatusArgs),
    /// Add a node to the map: it owns no partition until partitions can move to it.
    ///
    /// Start it with `wallet node --etcd URL --id N`; every running node learns of it from
    /// etcd, without a restart.
    AddNode(AddNodeArgs),
}

/// Where the map is.
#[derive(Debug, Args)]
pub struct EtcdArgs {
    /// etcd's client URL(s), `http://host:port`, comma-separated for several.
    #[arg(long, env = "WALLET_ETCD")]
    pub etcd: String,
    /// The key prefix of this cluster's keys in etcd.
    #[arg(long, default_value = PREFIX_DEFAULT)]
    pub etcd_prefix: String,
    /// How long one call to etcd may take.
    #[arg(long, default_value_t = 5000)]
    pub etcd_timeout_ms: u64,
}

impl EtcdArgs {
    fn store(&self) -> Result<MapStore, StoreError> {
        let etcd = Etcd::new(&self.etcd, Duration::from_millis(self.etcd_timeout_ms))?;
        Ok(MapStore::new(etcd, &self.etcd_prefix))
    }
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The cluster file whose map to store (see cluster.example.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Replace a map that is already there (its version is raised past the stored one).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// `text` for people, `json` for programs.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct AddNodeArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The new node's id (not already in the map).
    #[arg(long)]
    pub id: NodeId,
    /// Its HTTP API address, host:port.
    #[arg(long)]
    pub http: String,
    /// Its peer-protocol address, host:port.
    #[arg(long)]
    pub peer: String,
}

/// Why a `wallet cluster` command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterCmdError {
    #[error(transparent)]
    Config(#[from] crate::cluster::ClusterConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs the command; its result goes to stdout, a failure to stderr, once.
pub fn run(args: ClusterArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("wallet cluster: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let done = runtime.block_on(async move {
        match args.command {
            ClusterCommand::Init(args) => init(args).await,
            ClusterCommand::Status(args) => status(args).await,
            ClusterCommand::AddNode(args) => add_node(args).await,
        }
    });
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wallet cluster: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn init(args: InitArgs) -> Result<(), ClusterCmdError> {
    let (map, has_tls) = ClusterConfig::load_map(&args.config)?;
    if has_tls {
        eprintln!(
            "note: the [tls] section of {} is not stored in etcd; give nodes started with \
             --etcd its files as --peer-tls-ca, --peer-tls-cert and --peer-tls-key",
            args.config.display()
        );
    }
    let store = args.etcd.store()?;
    let version = store.init(map.clone(), args.force).await?;
    println!(
        "stored map version {version}: {} partitions on {} nodes at {} in etcd {}",
        map.partitions(),
        map.nodes.len(),
        store.map_key(),
        store.etcd().endpoints()
    );
    Ok(())
}

async fn add_node(args: AddNodeArgs) -> Result<(), ClusterCmdError> {
    for (field, address) in [("--http", &args.http), ("--peer", &args.peer)] {
        if !is_host_port(address) {
            let message = format!("{field} {address:?} is not host:port");
            return Err(StoreError::Refused(message).into());
        }
    }
    let store = args.etcd.store()?;
    let address = NodeAddress {
        http: args.http.clone(),
        peer: args.peer.clone(),
    };
    let written = store
        .update(|map| {
            if map.nodes.contains_key(&args.id) {
                return Err(format!(
                    "node {} is already in the map (map version {})",
                    args.id, map.version
                ));
            }
            let mut changed = map.clone();
            changed.nodes.insert(args.id, address.clone());
            changed.validate().map_err(|e| e.to_string())?;
            Ok(changed)
        })
        .await?;
    println!(
        "added node {} (http {}, peer {}): map version {}, {} nodes",
        args.id,
        args.http,
        args.peer,
        written.version,
        written.nodes.len()
    );
    Ok(())
}

async fn status(args: StatusArgs) -> Result<(), ClusterCmdError> {
    let store = args.etcd.store()?;
    let stored = store.read_existing().await?;
    let live = store.live_nodes().await?;
    let report = StatusReport { stored, live };
    match args.format {
        Format::Text => print!("{}", report.text()),
        Format::Json => println!("{}", report.json()),
    }
    Ok(())
}

/// What `status` prints, in either format.
struct StatusReport {
    stored: StoredMap,
    live: std::collections::BTreeMap<NodeId, crate::map_store::Liveness>,
}

impl StatusReport {
    fn json(&self) -> String {
        let map = &self.stored.map;
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
                    "partitions": map.partitions_of(*id),
                })
            })
            .collect();
        let partitions: Vec<_> = (0..map.partitions())
            .map(|p| {
                let owner = map.owner(p);
                json!({
                    "partition": p,
                    "owner": owner,
                    "replicas": self.stored.document.partitions[p as usize].replicas,
                    "owner_live": self.live.contains_key(&owner),
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

    fn text(&self) -> String {
        use std::fmt::Write as _;
        let map = &self.stored.map;
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
            let owned = map.partitions_of(*id);
            let _ = writeln!(
                out,
                "{id:>5}  {:<22} {:<22} {:<5} {version:>11}  {}",
                address.http,
                address.peer,
                if live.is_some() { "up" } else { "down" },
                if owned.is_empty() {
                    "none".to_string()
                } else {
                    format!("{owned:?}")
                }
            );
        }
        let _ = writeln!(out, "\n{:>9}  {:>5}  owner live", "partition", "owner");
        for p in 0..map.partitions() {
            let owner = map.owner(p);
            let live = if self.live.contains_key(&owner) {
                "up"
            } else {
                "down"
            };
            let _ = writeln!(out, "{p:>9}  {owner:>5}  {live}");
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
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use walletd_core::model::partition::PartitionMap;

    use super::*;
    use crate::map_store::{Liveness, MapDocument};

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
        let document = MapDocument::from_map(&map);
        let live = |id: NodeId| Liveness {
            id,
            http: format!("127.0.0.1:{}", 8080 + id),
            peer: format!("127.0.0.1:{}", 9080 + id),
            map_version: 2,
            since: "2026-12-05T12:00:00Z".into(),
        };
        let live = BTreeMap::from([(0, live(0)), (3, live(3)), (9, live(9))]);
        StatusReport {
            stored: StoredMap {
                raw: document.to_bytes(),
                map,
                document,
                mod_revision: 17,
                revision: 20,
            },
            live,
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
        assert_eq!(json["mod_revision"], 17);
        assert_eq!(json["nodes"][0]["live"], true);
        assert_eq!(json["nodes"][1]["live"], false);
        assert_eq!(json["nodes"][1]["map_version"], serde_json::Value::Null);
        assert_eq!(json["nodes"][2]["partitions"], serde_json::json!([]));
        assert_eq!(json["partitions"][1]["owner"], 1);
        assert_eq!(json["partitions"][1]["owner_live"], false);
        assert_eq!(json["live_not_in_map"], serde_json::json!([9]));
    }

    #[test]
    fn status_text_says_who_is_up_and_who_owns_what() {
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
            node_1.contains("down") && node_1.ends_with("[1]"),
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

    #[test]
    fn node_takes_a_cluster_file_or_etcd_but_not_both() {
        use clap::Parser;
        let parse = |args: &[&str]| crate::cli::Cli::try_parse_from(args);
        assert!(
            parse(&["wallet", "node", "--id", "0"]).is_err(),
            "one map source is required"
        );
        assert!(parse(&[
            "wallet",
            "node",
            "--config",
            "c.toml",
            "--etcd",
            "http://e:1",
            "--id",
            "0"
        ])
        .is_err());
        assert!(parse(&[
            "wallet",
            "node",
            "--config",
            "c.toml",
            "--secret-file",
            "s",
            "--id",
            "0"
        ])
        .is_err());
        assert!(parse(&["wallet", "node", "--etcd", "http://e:1", "--id", "0"]).is_ok());
        let tls = [
            "--peer-tls-ca",
            "ca.pem",
            "--peer-tls-cert",
            "n.pem",
            "--peer-tls-key",
            "n.key",
        ];
        let mut on_etcd = vec!["wallet", "node", "--etcd", "http://e:1", "--id", "0"];
        on_etcd.extend(tls);
        assert!(parse(&on_etcd).is_ok());
        assert!(
            parse(&on_etcd[..on_etcd.len() - 2]).is_err(),
            "the key is required too"
        );
        assert!(parse(&["wallet", "node", "--config", "c.toml", "--id", "0"]).is_ok());
        assert!(
            parse(&[
                "wallet",
                "cluster",
                "add-node",
                "--etcd",
                "http://e:1",
                "--id",
                "3",
                "--http",
                "h:1"
            ])
            .is_err(),
            "--peer is required"
        );
    }
}
