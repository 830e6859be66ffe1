//! `wallet cluster`: the partition map in etcd, for operators and scripts.
//!
//! - `init --config cluster.toml`: stores the cluster file's map (nodes, version, and each
//!   partition's group of `replicas` copies on its owner and the nodes after it; never the
//!   secret or the TLS files) as the first map. Refused if a map is already there:
//!   overwriting a running cluster's map by accident is the mistake to prevent. `--force`
//!   replaces it, under a version above the stored one, so running nodes judge it as any
//!   other change.
//! - `status [--format json]`: the map (each partition's group and founders), each node's
//!   liveness (its lease in etcd) and the map version it runs, and what the nodes say of
//!   their partitions: the leader, each copy's lag. The JSON holds the stored document
//!   verbatim under `map`.
//! - `add-node --id N --http ADDR --peer ADDR`: adds a node holding no copy.
//! - `move --partition P --from N --to M`: moves P's copy from node N to node M, growing
//!   the group and then shrinking it, waiting for the group to apply each step; resumed by
//!   running it again, rolled back by its reverse.
//! - `drain --node N`: moves every copy off node N, one partition at a time.
//! - `remove-node --id N`: removes a node that holds no copy.
//!
//! Every change is a compare-and-swap on the map key's revision that raises `map_version`
//! by one. Exit status: 0 done, 1 refused or failed (the message says why), 2 bad arguments.
//!
//! # Layout
//! - this file: the subcommands, `init`, `add-node`, `remove-node`;
//! - `status`: `status` and its report;
//! - `moving`: the drivers of `move` and `drain` (read, write, wait, again);
//! - `plan`: what a move or a drain does next, from the stored placement alone;
//! - `probe`: what the nodes say (`GET /v1/cluster`) and whether a group applied a step.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use walletd_core::model::partition::{NodeAddress, NodeId};
use walletd_core::model::placement::Placement;

use crate::cluster::{is_host_port, ClusterConfig, MapFile};
use crate::etcd::Etcd;
use crate::map_store::{MapStore, StoreError, PREFIX_DEFAULT};

mod moving;
mod plan;
mod probe;
mod status;

pub use moving::{DrainArgs, MoveArgs, MoveError, WaitArgs};
pub use status::StatusArgs;

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
    /// the file (its secret and [tls] section stay with the nodes), and gives each partition
    /// a group of `replicas` copies (the file's, 3 by default on three nodes or more): its
    /// owner and the nodes after it in id order; each group is its own founders. Refused if
    /// etcd already holds a map for this prefix, unless --force. Exit 0 stored, 1 refused
    /// or failed.
    Init(InitArgs),
    /// Print the map in etcd: each partition's group and founders, each node's liveness,
    /// and (best effort) each partition's leader and each copy's lag behind it.
    ///
    /// The leader and the lags come from every node's GET /v1/cluster (over HTTPS with
    /// --cacert, plain HTTP without), each bounded by --node-timeout-ms; a node that does not answer shows as unknown
    /// ("-"), never as a failure. --format json keeps the stored document verbatim under
    /// `map`. Exit 0 printed, 1 no map or etcd unreachable.
    Status(StatusArgs),
    /// Add a node to the map: it owns no partition and holds no copy until one moves to it.
    ///
    /// Start it with `wallet node --etcd URL --id N`; every running node learns of it from
    /// etcd, without a restart. One compare-and-swap. Exit 0 added, 1 refused or failed.
    AddNode(AddNodeArgs),
    /// Move partition P's copy from node N to node M, in two compare-and-swap steps.
    ///
    /// Step 1 (grow) writes P's group with M appended and waits until P's leader has
    /// applied it: M caught up (a learner first) and voting. Step 2 (shrink) writes the
    /// group without N (if N was first, M takes its place at the front) and waits until N
    /// is neither voter nor learner. Each step is a compare-and-swap on the map key's
    /// revision raising map_version by one; a write that loses to another writer reads the
    /// map again and decides again. Waiting polls GET /v1/cluster on the group's nodes
    /// every 200 ms, printing what it waits for to stderr: over plain HTTP, or over HTTPS
    /// with --cacert (the CA of the nodes' API certificates).
    ///
    /// Resumable: the command reads the map and does only what is left, so after a timeout
    /// or an interruption run the same command again; `--from M --to N` rolls the move
    /// back. M already in the group and N out: nothing to write ("already moved").
    ///
    /// Exit 0 moved (or the step written, with --no-wait), 1 refused, failed or timed out
    /// (the move is left in place), 2 bad arguments.
    Move(MoveArgs),
    /// Move every copy off node N, one partition at a time, in partition order.
    ///
    /// For each partition whose group holds N, the node of the map outside the group that
    /// holds the fewest copies (ties: the lowest id) takes N's copy, by the steps of
    /// `wallet cluster move`. Refused before anything is written if some partition has no
    /// node to go to. Resumable: run the same command again; a move it left half done
    /// (a group grown past its founders' count) is finished first. Ends with
    /// `drained node=N partitions=K`. Exit 0 drained, 1 refused, failed or timed out,
    /// 2 bad arguments.
    Drain(DrainArgs),
    /// Remove a node from the map; refused while any partition's group holds it.
    ///
    /// Drain it first (`wallet cluster drain --node N`). One compare-and-swap. Exit 0
    /// removed, 1 refused or failed.
    RemoveNode(RemoveNodeArgs),
}

/// How the commands that ask the nodes (`status`, `move`, `drain`) reach their HTTP API.
#[derive(Debug, Clone, Args)]
pub struct NodeApiArgs {
    /// The CA (PEM) that signed the nodes' API certificates (their `--tls-cert`): with it,
    /// the nodes are asked over HTTPS, each certificate checked against it and against the
    /// host of the node's address in the map; without it, over plain HTTP.
    #[arg(long, value_name = "PATH")]
    pub cacert: Option<std::path::PathBuf>,
}

impl NodeApiArgs {
    /// The client the nodes are asked with; a CA file that cannot be used is an error
    /// that names it.
    pub fn http(&self) -> Result<crate::node_http::NodeHttp, crate::tls::TlsConfigError> {
        crate::node_http::NodeHttp::with_ca(self.cacert.as_deref())
    }

    /// Checks the CA file before anything is written.
    pub fn check(&self) -> Result<(), crate::tls::TlsConfigError> {
        self.http().map(drop)
    }
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

/// The arguments of `wallet cluster remove-node`.
#[derive(Debug, Args)]
pub struct RemoveNodeArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The node to remove (holding no copy of any partition).
    #[arg(long)]
    pub id: NodeId,
}

/// Why a `wallet cluster` command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterCmdError {
    #[error(transparent)]
    Config(#[from] crate::cluster::ClusterConfigError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Move(#[from] MoveError),
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
            ClusterCommand::Status(args) => status::run(args).await,
            ClusterCommand::AddNode(args) => add_node(args).await,
            ClusterCommand::Move(args) => moving::run_move_command(args).await,
            ClusterCommand::Drain(args) => moving::run_drain_command(args).await,
            ClusterCommand::RemoveNode(args) => remove_node(args).await,
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
    let MapFile {
        map,
        replicas,
        has_tls,
    } = ClusterConfig::load_map(&args.config)?;
    if has_tls {
        eprintln!(
            "note: the [tls] section of {} is not stored in etcd; give nodes started with \
             --etcd its files as --peer-tls-ca, --peer-tls-cert and --peer-tls-key",
            args.config.display()
        );
    }
    let placement = Placement::derived(&map, replicas);
    let store = args.etcd.store()?;
    let version = store.init(map.clone(), &placement, args.force).await?;
    println!(
        "stored map version {version}: {} partitions on {} nodes, {replicas} copies each, at \
         {} in etcd {}",
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
        .update(|map, _| {
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

async fn remove_node(args: RemoveNodeArgs) -> Result<(), ClusterCmdError> {
    let store = args.etcd.store()?;
    let id = args.id;
    let written = store
        .update(|map, placement| {
            if !map.nodes.contains_key(&id) {
                let nodes: Vec<NodeId> = map.nodes.keys().copied().collect();
                return Err(format!(
                    "node {id} is not in the map (its nodes: {nodes:?})"
                ));
            }
            let held = placement.hosted(id);
            if !held.is_empty() {
                return Err(format!(
                    "node {id} still holds copies of partitions {held:?}; move them first \
                     with `wallet cluster drain --node {id}`"
                ));
            }
            let mut changed = map.clone();
            changed.nodes.remove(&id);
            Ok(changed)
        })
        .await?;
    println!(
        "removed node {id}: map version {}, {} nodes",
        written.version,
        written.nodes.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
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
