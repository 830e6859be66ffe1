//! The simulator checks itself: clean seeds pass, known bugs are caught, a seed replays to
//! the same trace. Runs with `cargo simtest` (a `--cfg madsim` build).
#![cfg(madsim)]

use walletd_core::protocol::bugs::Bug;
use walletd_sim::boundary::Boundary;
use walletd_sim::config::SimConfig;
use walletd_sim::sim;

/// A quick unreplicated run (the live checks of the partition driver run only there).
fn unreplicated(seed: u64) -> SimConfig {
    SimConfig {
        replicas: 1,
        ..SimConfig::quick(seed)
    }
}

/// Clean seeds pass, under faults, and their clients reach every decision boundary.
#[test]
fn clean_seeds_pass() {
    // Seeds whose quick runs reach every boundary (seed 2 no longer reads during a sync
    // since holds joined the workload).
    for seed in [1, 3] {
        let report = sim::run(&unreplicated(seed));
        assert!(report.ok(), "{}{}", report.details, report.result_line());
        assert!(report.transfers > 100, "{}", report.summary);
        assert!(report.faults > 0, "{}", report.summary);
        for boundary in Boundary::ALL {
            assert!(report.hits.count(boundary) > 0, "{}", report.hits);
        }
        // The nodes talked over the production peer links, and relinked after faults.
        assert!(report.peer.frames > 1_000, "{}", report.summary);
        assert!(report.peer.connections > 6, "{}", report.summary);
    }
}

/// The first quick run among seeds `0..seeds` that fails with `bug` switched on.
fn first_failure(bug: Bug, seeds: u64) -> Option<sim::RunReport> {
    (0..seeds)
        .map(|seed| {
            sim::run(&SimConfig {
                bug: Some(bug),
                ..unreplicated(seed)
            })
        })
        .find(|report| !report.ok())
}

/// The first failing run with `bug` on, which must name `invariant`.
fn caught_as(bug: Bug, seeds: u64, invariant: &str) -> sim::RunReport {
    let report = first_failure(bug, seeds).expect("the bug went unnoticed");
    let line = report.result_line();
    assert!(
        line.ends_with(&format!("result=FAIL invariant={invariant}")),
        "{line}"
    );
    report
}

/// Quick runs are short; a known bug must still show within this many seeds.
const SEEDS_TO_FIND_A_BUG: u64 = 10;
/// A late Try after its Cancel needs a delayed Try on a peer connection that breaks and is
/// overtaken by the next one (TCP keeps one connection in order): about one quick run in ten.
const SEEDS_TO_FIND_A_LATE_TRY: u64 = 30;

/// The live checks catch a reply sent before its sync at the moment it leaves, not in the
/// final logs.
#[test]
fn reply_before_sync_is_caught_when_the_early_reply_leaves() {
    let report = caught_as(Bug::ReplyBeforeSync, SEEDS_TO_FIND_A_BUG, "durability");
    assert!(
        report.details.contains("violated while the run went"),
        "{}",
        report.details
    );
    let reproduce = format!(
        "reproduce: cargo sim -- --seed {} --bug reply-before-sync",
        report.seed
    );
    assert!(report.details.contains(&reproduce), "{}", report.details);
}

#[test]
fn skip_barrier_is_caught_as_a_hanging_try() {
    caught_as(Bug::SkipBarrier, SEEDS_TO_FIND_A_LATE_TRY, "no_hanging");
}

/// Refunds held against the whole original are caught by the refund cap the moment the
/// batch that accepts one too many is cut.
#[test]
fn refund_beyond_original_is_caught_by_the_refund_cap_while_the_run_goes() {
    let report = caught_as(Bug::RefundBeyondOriginal, SEEDS_TO_FIND_A_BUG, "refund_cap");
    assert!(
        report.details.contains("violated while the run went"),
        "{}",
        report.details
    );
}

/// Clean quick runs refund: within and across partitions, racing, some refused for
/// exceeding what was left of their original.
#[test]
fn clean_seeds_refund_and_race_refunds() {
    let report = sim::run(&unreplicated(1));
    assert!(report.ok(), "{}{}", report.details, report.result_line());
    let count = |name: &str| -> u64 {
        let field = format!(" {name}=");
        let at = report.summary.find(&field).expect(name) + field.len();
        let digits = report.summary[at..].split(' ').next().unwrap_or("");
        digits.parse().expect("a count")
    };
    assert!(count("refunds") > 50, "{}", report.summary);
    assert!(count("refunds_committed") > 20, "{}", report.summary);
    assert!(count("refunds_exceeding") > 10, "{}", report.summary);
    assert!(count("refunds_raced") > 5, "{}", report.summary);
}

/// A hold captured or voided past its expiry, before the expiry scan got to it, is caught by
/// hold_expiry the moment the batch that records it is cut.
#[test]
fn capture_after_expiry_is_caught_by_hold_expiry_while_the_run_goes() {
    let report = caught_as(Bug::CaptureAfterExpiry, SEEDS_TO_FIND_A_BUG, "hold_expiry");
    assert!(
        report.details.contains("violated while the run went"),
        "{}",
        report.details
    );
}

/// A transaction whose refused leg the home takes for tried commits in part: caught by
/// tx_atomicity the moment the home's commit is cut, before any Confirm leaves.
#[test]
fn multi_leg_partial_is_caught_by_tx_atomicity_while_the_run_goes() {
    let report = caught_as(Bug::MultiLegPartial, SEEDS_TO_FIND_A_BUG, "tx_atomicity");
    assert!(
        report.details.contains("violated while the run went"),
        "{}",
        report.details
    );
}

/// A transfer's body answered before its record is durable: caught by body_reads over the
/// final logs once a crash takes that record (kills and a slow disk, which keeps records
/// undurable longer, make that common: about one full run in two; with every fault, one in
/// twenty).
#[test]
fn body_before_durable_is_caught_by_body_reads() {
    let faults = walletd_sim::config::FaultSet::parse("kill,slowdisk").expect("faults");
    let report = (0..SEEDS_TO_FIND_A_BUG)
        .map(|seed| {
            sim::run(&SimConfig {
                bug: Some(Bug::BodyBeforeDurable),
                faults,
                ..unreplicated(seed)
            })
        })
        .find(|report| !report.ok())
        .expect("the bug went unnoticed");
    let line = report.result_line();
    assert!(line.ends_with("result=FAIL invariant=body_reads"), "{line}");
}

/// Clean quick runs send multi-leg transactions, across partitions and within one: most
/// commit, some are rejected at their home, some cancelled by a participant's refusal.
#[test]
fn clean_seeds_commit_reject_and_cancel_transactions() {
    let report = sim::run(&unreplicated(3));
    assert!(report.ok(), "{}{}", report.details, report.result_line());
    let count = |name: &str| -> u64 {
        let field = format!(" {name}=");
        let at = report.summary.find(&field).expect(name) + field.len();
        let digits = report.summary[at..].split(' ').next().unwrap_or("");
        digits.parse().expect("a count")
    };
    assert!(count("transactions") > 50, "{}", report.summary);
    assert!(count("transactions_committed") > 20, "{}", report.summary);
    assert!(count("transactions_rejected") > 5, "{}", report.summary);
    assert!(count("transactions_cancelled") > 5, "{}", report.summary);
    assert!(count("transactions_over_6_legs") > 0, "{}", report.summary);
}

/// Clean quick runs place holds, within and across partitions, and end them every way:
/// captured, voided, expired, and raced against their expiry.
#[test]
fn clean_seeds_place_capture_void_and_expire_holds() {
    let report = sim::run(&unreplicated(1));
    assert!(report.ok(), "{}{}", report.details, report.result_line());
    let count = |name: &str| -> u64 {
        let field = format!(" {name}=");
        let at = report.summary.find(&field).expect(name) + field.len();
        let digits = report.summary[at..].split(' ').next().unwrap_or("");
        digits.parse().expect("a count")
    };
    assert!(count("holds") > 20, "{}", report.summary);
    assert!(count("holds_held") > 10, "{}", report.summary);
    assert!(count("holds_captured") > 0, "{}", report.summary);
    assert!(count("holds_expired") > 0, "{}", report.summary);
    assert!(count("holds_raced") > 3, "{}", report.summary);
}

/// A seed replays to the same trace, even side by side with another run in one process (as
/// the tests run): nothing process-wide reaches a run. Before every `select!` was biased,
/// tokio's pick of a ready branch came from a process-wide counter, and each of these seeds
/// drew a different trace depending on how many runs had started before it.
#[test]
fn seeds_replay_side_by_side_in_one_process() {
    for seed in [1, 4, 5] {
        let [first, second] = sim::run_side_by_side(&unreplicated(seed));
        assert_eq!(first.result_line(), second.result_line());
    }
}
