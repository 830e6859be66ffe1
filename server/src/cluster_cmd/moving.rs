//! `wallet cluster move` and `wallet cluster drain`: the drivers. Each round reads the map,
//! asks `plan` for the next step, writes it with a compare-and-swap on the map key's
//! revision (raising `map_version` by one) and waits until the partition's Raft group has
//! applied it, polling the nodes' `GET /v1/cluster` (`probe`). Nothing is remembered between
//! rounds but what etcd holds, so a run stopped anywhere (a timeout, Ctrl-C, a lost
//! operator) is resumed by running the same command again.

use std::time::{Duration, Instant};

use clap::Args;
use walletd_core::model::partition::{NodeId, PartitionId, PartitionMap};

use super::plan::{self, DrainRefusal, Move, MoveRefusal, MoveStep};
use super::probe::{self, Progress};
use super::{EtcdArgs, NodeApiArgs};
use crate::map_store::{MapStore, StoreError, StoredMap, SWAP_ATTEMPTS_MAX};

/// How often the nodes are asked while a group applies a step.
const POLL_INTERVAL_MS: u64 = 200;
/// A wait whose reason has not changed still says where it is this often.
const PROGRESS_EVERY_MS: u64 = 5_000;
/// Rounds of one move: its three steps, and the compare-and-swap races it may lose.
const MOVE_ROUNDS_MAX: u32 = SWAP_ATTEMPTS_MAX + 3;

/// The arguments of `wallet cluster move`.
#[derive(Debug, Args)]
pub struct MoveArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The partition whose copy moves.
    #[arg(long)]
    pub partition: PartitionId,
    /// The node whose copy leaves (in the partition's group).
    #[arg(long)]
    pub from: NodeId,
    /// The node that takes the copy (in the map, not in the group).
    #[arg(long)]
    pub to: NodeId,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// The arguments of `wallet cluster drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The node whose copies all move to other nodes.
    #[arg(long)]
    pub node: NodeId,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// How a move waits for a group to apply each step.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// How long one wait for a group to apply a step may take, in seconds; past it the
    /// command exits 1 and leaves the move where it is (run it again to resume).
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
    /// Write the next step and return without waiting for the group to apply it. A shrink
    /// is still written only once the grown group has applied the grow.
    #[arg(long)]
    pub no_wait: bool,
    /// How long one node may take to answer GET /v1/cluster before it counts as silent
    /// for that round.
    #[arg(long, default_value_t = 1000)]
    pub node_timeout_ms: u64,
    #[command(flatten)]
    pub nodes: NodeApiArgs,
}

/// Why a move or a drain stopped.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Refused(#[from] MoveRefusal),
    #[error(transparent)]
    DrainRefused(#[from] DrainRefusal),
    #[error(
        "partition {partition}: the group did not apply {target:?} within {timeout_s} s \
         (last seen: {last}). The move is left in place: run the same command again to \
         resume it, or roll it back with `wallet cluster move --partition {partition} \
         --from {to} --to {from}`",
        partition = mv.partition, to = mv.to, from = mv.from
    )]
    Timeout {
        mv: Move,
        target: Vec<NodeId>,
        timeout_s: u64,
        last: String,
    },
    #[error(
        "partition {partition} did not apply its group {target:?} within {timeout_s} s \
         (last seen: {last}); the map holds every move made: run the same command again to \
         wait again"
    )]
    Unsettled {
        partition: PartitionId,
        target: Vec<NodeId>,
        timeout_s: u64,
        last: String,
    },
}

/// How a move ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveOutcome {
    /// The group is the move's end, applied (unless `--no-wait`). `wrote`: this run wrote
    /// a step (else the move was made before).
    Done { group: Vec<NodeId>, wrote: bool },
    /// `--no-wait`: one step written, under this map version.
    Written {
        step: &'static str,
        group: Vec<NodeId>,
        version: u64,
    },
}

/// `wallet cluster move`: runs the move and prints how it ended.
pub async fn run_move_command(args: MoveArgs) -> Result<(), super::ClusterCmdError> {
    let store = args.etcd.store()?;
    args.wait.nodes.check()?;
    let mv = Move {
        partition: args.partition,
        from: args.from,
        to: args.to,
    };
    match run_move(&store, mv, &args.wait).await? {
        MoveOutcome::Done { group, wrote: true } => println!(
            "moved partition {} from node {} to node {}: group {group:?}",
            mv.partition, mv.from, mv.to
        ),
        MoveOutcome::Done {
            group,
            wrote: false,
        } => println!(
            "already moved: partition {}'s group is {group:?} (node {} in, node {} out)",
            mv.partition, mv.to, mv.from
        ),
        MoveOutcome::Written {
            step,
            group,
            version,
        } => println!(
            "partition {}: wrote the {step} to {group:?} (map version {version}); run the \
             same command again for what is left",
            mv.partition
        ),
    }
    Ok(())
}

/// `wallet cluster drain`: moves the node's copies one partition at a time, then waits until
/// every group has applied the map (moves of an earlier run included).
pub async fn run_drain_command(args: DrainArgs) -> Result<(), super::ClusterCmdError> {
    let store = args.etcd.store()?;
    args.wait.nodes.check()?;
    let node = args.node;
    let stored = store.read_existing().await?;
    let partitions =
        plan::drain_partitions(&stored.map, &stored.placement, node).map_err(MoveError::from)?;
    eprintln!(
        "drain node {node}: {} partitions to move, one at a time: {partitions:?}",
        partitions.len()
    );
    for (index, partition) in partitions.iter().copied().enumerate() {
        let stored = store.read_existing().await?;
        if !stored.placement.group(partition).contains(&node) {
            eprintln!("drain node {node}: partition {partition} moved off meanwhile");
            continue;
        }
        let to = plan::drain_target(&stored.map, &stored.placement, partition, node)
            .map_err(MoveError::from)?;
        eprintln!(
            "drain node {node}: partition {partition} ({} of {}) to node {to}",
            index + 1,
            partitions.len()
        );
        let mv = Move {
            partition,
            from: node,
            to,
        };
        if let MoveOutcome::Written { step, group, .. } = run_move(&store, mv, &args.wait).await? {
            println!(
                "drain node {node}: partition {partition}: wrote the {step} to {group:?}; run \
                 the same command again for what is left"
            );
            return Ok(());
        }
    }
    if !args.wait.no_wait {
        // Moves of an earlier run of this drain may not have been applied yet.
        let stored = store.read_existing().await?;
        settle(&stored, &args.wait).await?;
    }
    println!("drained node={node} partitions={}", partitions.len());
    Ok(())
}

/// Runs `mv` to its end (or, with `--no-wait`, its next step); see the module docs.
pub async fn run_move(
    store: &MapStore,
    mv: Move,
    wait: &WaitArgs,
) -> Result<MoveOutcome, MoveError> {
    let started = Instant::now();
    let mut wrote = false;
    let say = |what: String| {
        eprintln!(
            "partition {}: {:>5.1}s: {what}",
            mv.partition,
            started.elapsed().as_secs_f64()
        )
    };
    for _ in 0..MOVE_ROUNDS_MAX {
        let stored = store.read_existing().await?;
        let group = stored.placement.group(mv.partition).to_vec();
        let (step, next) = match plan::next_move_step(&stored.map, &stored.placement, mv)? {
            MoveStep::Done { group } => {
                if !wait.no_wait {
                    wait_move(&stored.map, mv, &group, wait).await?;
                }
                return Ok(MoveOutcome::Done { group, wrote });
            }
            MoveStep::Grow { group: grown } => {
                say(format!(
                    "step 1 of 2: grow {group:?} to {grown:?} (node {} joins)",
                    mv.to
                ));
                ("grow", grown)
            }
            MoveStep::Shrink { group: shrunk } => {
                // Node `to` votes before node `from` leaves: the grown group first.
                say(format!("step 1 of 2: waiting for {group:?} to be applied"));
                wait_move(&stored.map, mv, &group, wait).await?;
                say(format!(
                    "step 2 of 2: shrink {group:?} to {shrunk:?} (node {} leaves)",
                    mv.from
                ));
                ("shrink", shrunk)
            }
        };
        let Some(version) = write_group(store, &stored, mv.partition, &next).await? else {
            say("the map changed meanwhile; reading it again".to_string());
            continue;
        };
        wrote = true;
        say(format!("map version {version} written"));
        if wait.no_wait {
            return Ok(MoveOutcome::Written {
                step,
                group: next,
                version,
            });
        }
    }
    Err(StoreError::Contended.into())
}

/// Writes `group` as `partition`'s group if the map is still `stored`; the version
/// written, or `None` if somebody wrote first.
async fn write_group(
    store: &MapStore,
    stored: &StoredMap,
    partition: PartitionId,
    group: &[NodeId],
) -> Result<Option<u64>, StoreError> {
    let mut placement = stored.placement.clone();
    placement.groups[partition as usize] = group.to_vec();
    let written = store
        .swap_placed(stored, stored.map.clone(), placement)
        .await?;
    Ok(written.map(|map| map.version))
}

/// Waits until `mv`'s partition has applied `target`, asking the nodes of the target and
/// both nodes of the move (the leaving node may still lead until it hands over).
async fn wait_move(
    map: &PartitionMap,
    mv: Move,
    target: &[NodeId],
    wait: &WaitArgs,
) -> Result<(), MoveError> {
    let mut nodes = target.to_vec();
    nodes.extend([mv.from, mv.to]);
    nodes.sort_unstable();
    nodes.dedup();
    let groups = [(mv.partition, target.to_vec())];
    wait_groups(map, &groups, &nodes, wait)
        .await
        .map_err(|(_, last)| MoveError::Timeout {
            mv,
            target: target.to_vec(),
            timeout_s: wait.timeout_s,
            last,
        })
}

/// Waits until every partition of the map has applied its stored group.
async fn settle(stored: &StoredMap, wait: &WaitArgs) -> Result<(), MoveError> {
    let groups: Vec<(PartitionId, Vec<NodeId>)> = (0..stored.map.partitions())
        .map(|p| (p, stored.placement.group(p).to_vec()))
        .collect();
    let nodes: Vec<NodeId> = stored.map.nodes.keys().copied().collect();
    wait_groups(&stored.map, &groups, &nodes, wait)
        .await
        .map_err(|(partition, last)| MoveError::Unsettled {
            partition,
            target: stored.placement.group(partition).to_vec(),
            timeout_s: wait.timeout_s,
            last,
        })
}

/// Polls `nodes` every [`POLL_INTERVAL_MS`] until each of `groups` is applied, saying on
/// stderr what it waits for when that changes (and every [`PROGRESS_EVERY_MS`]); on
/// timeout, the partition last waited for and why.
async fn wait_groups(
    map: &PartitionMap,
    groups: &[(PartitionId, Vec<NodeId>)],
    nodes: &[NodeId],
    wait: &WaitArgs,
) -> Result<(), (PartitionId, String)> {
    let started = Instant::now();
    let timeout = Duration::from_secs(wait.timeout_s);
    let node_timeout = Duration::from_millis(wait.node_timeout_ms);
    let http = match wait.nodes.http() {
        Ok(http) => http,
        Err(error) => return Err((groups.first().map_or(0, |g| g.0), error.to_string())),
    };
    let mut said: Option<(String, Instant)> = None;
    loop {
        let answers = probe::ask_nodes(map, nodes, &http, node_timeout).await;
        let pending = groups.iter().find_map(|(partition, target)| {
            match probe::group_progress(&answers, *partition, target) {
                Progress::Applied { .. } => None,
                Progress::Waiting(reason) => Some((*partition, reason)),
            }
        });
        let Some(pending) = pending else {
            if said.is_some() {
                let elapsed = started.elapsed().as_secs_f64();
                match groups {
                    [(partition, target)] => {
                        eprintln!("partition {partition}: {target:?} applied after {elapsed:.1}s")
                    }
                    _ => eprintln!("every group applied after {elapsed:.1}s"),
                }
            }
            return Ok(());
        };
        let line = format!("partition {}: {}", pending.0, pending.1);
        let stale = said.as_ref().is_none_or(|(last, at)| {
            *last != line || at.elapsed() >= Duration::from_millis(PROGRESS_EVERY_MS)
        });
        if stale {
            eprintln!(
                "{line} (waiting {:.1}s of {}s)",
                started.elapsed().as_secs_f64(),
                wait.timeout_s
            );
            said = Some((line, Instant::now()));
        }
        if started.elapsed() >= timeout {
            return Err(pending);
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}
