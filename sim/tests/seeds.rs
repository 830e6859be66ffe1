//! The simulator checks itself: clean seeds pass, known bugs are caught, a seed replays to
//! the same trace. Runs with `cargo simtest` (a `--cfg madsim` build).
#![cfg(madsim)]

use walletd_core::bugs::Bug;
use walletd_sim::config::SimConfig;
use walletd_sim::sim;

#[test]
fn clean_seeds_pass() {
    for seed in [1, 2] {
        let report = sim::run(&SimConfig::quick(seed));
        assert!(report.ok(), "{}{}", report.details, report.result_line());
        assert!(report.transfers > 100, "{}", report.summary);
        assert!(report.faults > 0, "{}", report.summary);
    }
}

#[test]
fn reply_before_sync_is_caught() {
    let config = SimConfig {
        bug: Some(Bug::ReplyBeforeSync),
        ..SimConfig::quick(0)
    };
    let report = sim::run(&config);
    assert!(!report.ok(), "the bug went unnoticed: {}", report.summary);
    assert!(report.result_line().contains("result=FAIL invariant="));
    assert!(report
        .details
        .contains("reproduce: cargo sim -- --seed 0 --bug reply-before-sync"));
}

#[test]
fn skip_barrier_is_caught_as_a_hanging_try() {
    let config = SimConfig {
        bug: Some(Bug::SkipBarrier),
        ..SimConfig::quick(0)
    };
    let report = sim::run(&config);
    assert!(
        report
            .result_line()
            .ends_with("result=FAIL invariant=no_hanging"),
        "{}",
        report.result_line()
    );
}

#[test]
fn a_seed_replays_to_the_same_trace() {
    let config = SimConfig::quick(3);
    let (first, second) = (sim::run(&config), sim::run(&config));
    assert_eq!(first.result_line(), second.result_line());
}
