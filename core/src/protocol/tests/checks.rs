//! The invariants of DESIGN section 5 over a test [`Cluster`]: thin callers of
//! [`crate::protocol::invariants`], plus what only the test cluster knows (what went wrong
//! while it ran, messages on its network, coordinators still busy). Each returns the first
//! [`Violation`] it finds, so mutation tests can assert which protection a bug removed.

use crate::ledger::Ledger;
use crate::model::partition::PartitionId;
use crate::protocol::invariants::{self, LogScan, Moment};

use super::cluster::Cluster;

pub use crate::protocol::invariants::Violation;

/// The first of `found`, as a result.
fn first(found: Vec<Violation>) -> Result<(), Violation> {
    match found.into_iter().next() {
        Some(violation) => Err(violation),
        None => Ok(()),
    }
}

/// What must hold after every step, whatever is in flight: the test cluster applies every
/// log at once, so its ledgers are a consistent cut at every step.
pub fn check_always(cluster: &Cluster) -> Result<(), Violation> {
    check_recorded(cluster)?;
    check_log(cluster)?;
    for ledger in &cluster.ledgers {
        check_ledger(ledger)?;
    }
    invariants::conservation(&cluster.ledgers)?;
    first(invariants::transfers_agree(&cut(cluster), Moment::Any).violations)
}

/// What must hold once faults healed and the cluster went idle.
pub fn check_quiescent(cluster: &Cluster) -> Result<(), Violation> {
    check_always(cluster)?;
    check_at_rest(cluster)?;
    check_replay(cluster)
}

/// The first thing that went wrong while the cluster ran, if anything did.
pub fn check_recorded(cluster: &Cluster) -> Result<(), Violation> {
    first(cluster.violations.clone())
}

/// One partition's own books, its holds, and its balances' range.
pub fn check_ledger(ledger: &Ledger) -> Result<(), Violation> {
    invariants::books(ledger)?;
    first(invariants::holds(ledger))?;
    invariants::balances_in_range(ledger)
}

/// Every partition's log (the events it applied, in order): exactly once, no hanging.
pub fn check_log(cluster: &Cluster) -> Result<(), Violation> {
    let partitions = cluster.partitions();
    let mut scans: Vec<LogScan> = (0..partitions)
        .map(|p| LogScan::new(p, partitions))
        .collect();
    for applied in &cluster.history {
        scans[applied.partition as usize].record(applied.meta.lsn, &applied.event)?;
    }
    Ok(())
}

/// Invariant 4: no message in flight, no coordinator busy, and every transfer final and in
/// the same state on both sides, nothing left on hold or pending.
pub fn check_at_rest(cluster: &Cluster) -> Result<(), Violation> {
    let not_quiet = |detail: String| Err(Violation::NotQuiet { detail });
    if !cluster.network.is_empty() {
        return not_quiet(format!("{} messages in flight", cluster.network.len()));
    }
    for (p, coordinator) in cluster.coordinators.iter().enumerate() {
        if coordinator.in_flight() > 0 {
            return not_quiet(format!(
                "partition {p} still drives {} transfers",
                coordinator.in_flight()
            ));
        }
    }
    first(invariants::transfers_agree(&cut(cluster), Moment::AtRest).violations)
}

/// Invariant 7: folding every partition's log into a fresh ledger gives the live state.
pub fn check_replay(cluster: &Cluster) -> Result<(), Violation> {
    for live in &cluster.ledgers {
        let replayed = replay(cluster, live.partition())?;
        invariants::replay_matches(&replayed, live, "the live state")?;
    }
    Ok(())
}

/// The log of `partition` (the events it applied) folded into a fresh ledger.
pub fn replay(cluster: &Cluster, partition: PartitionId) -> Result<Ledger, Violation> {
    let mut replayed = Ledger::new(partition, cluster.partitions());
    for applied in cluster.history.iter().filter(|a| a.partition == partition) {
        replayed
            .apply(applied.meta, &applied.event)
            .map_err(|error| invariants::apply_failed(partition, error))?;
    }
    Ok(replayed)
}

fn cut(cluster: &Cluster) -> Vec<Option<&Ledger>> {
    cluster.ledgers.iter().map(Some).collect()
}
