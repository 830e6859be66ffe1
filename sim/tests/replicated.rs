//! The simulator checks its replicated runs (`--replicas 3`): clean seeds pass through leader
//! kills and isolations, the two planted Raft bugs are caught by the invariant each breaks,
//! and a seed replays to the same trace. Runs with `cargo simtest`.
#![cfg(madsim)]

use walletd_core::protocol::bugs::Bug;
use walletd_sim::config::SimConfig;
use walletd_sim::sim;

/// Quick replicated runs of seed `seed`, with `bug` switched on if any.
fn replicated(seed: u64, bug: Option<Bug>) -> SimConfig {
    SimConfig {
        replicas: 3,
        bug,
        ..SimConfig::quick(seed)
    }
}

/// A known bug must show within this many quick replicated seeds.
const SEEDS_TO_FIND_A_BUG: u64 = 20;

#[test]
fn clean_replicated_seeds_pass() {
    for seed in [1, 2] {
        let report = sim::run(&replicated(seed, None));
        assert!(report.ok(), "{}{}", report.details, report.result_line());
        assert!(report.transfers > 100, "{}", report.summary);
        assert!(report.faults > 0, "{}", report.summary);
        // Raft's messages crossed the production peer links, and groups elected leaders.
        assert!(report.peer.frames > 1_000, "{}", report.summary);
        assert!(
            !report.summary.contains("terms_led=0 "),
            "{}",
            report.summary
        );
    }
}

/// The first failing quick replicated run with `bug` on, which must name `invariant`.
fn caught_as(bug: Bug, invariant: &str) {
    let report = (0..SEEDS_TO_FIND_A_BUG)
        .map(|seed| sim::run(&replicated(seed, Some(bug))))
        .find(|report| !report.ok())
        .expect("the bug went unnoticed");
    let line = report.result_line();
    assert!(
        line.ends_with(&format!("result=FAIL invariant={invariant}")),
        "{line}"
    );
    assert!(
        report.details.contains("--replicas 3"),
        "the reproduce command names the mode: {}",
        report.details
    );
}

#[test]
fn answering_before_a_quorum_is_caught_as_lost_durability() {
    caught_as(Bug::AckBeforeQuorum, "durability");
}

#[test]
fn a_replica_that_forgets_its_vote_is_caught_as_two_leaders_in_a_term() {
    caught_as(Bug::ForgetVote, "one_leader_per_term");
}

#[test]
fn a_replicated_seed_replays_to_the_same_trace() {
    let config = replicated(3, None);
    let (first, second) = (sim::run(&config), sim::run(&config));
    assert_eq!(first.result_line(), second.result_line());
}
