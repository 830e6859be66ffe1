//! Smoke tests of `wallet bench`: each mode for a second on a few accounts.

use clap::Parser;

use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

fn args(extra: &[&str]) -> BenchArgs {
    let base = [
        "bench",
        "--accounts",
        "40",
        "--seconds",
        "1",
        "--warmup-seconds",
        "0",
        "--partitions",
        "2",
    ];
    Cli::parse_from(base.iter().chain(extra)).args
}

#[test]
fn the_defaults_are_the_documented_comparison() {
    let args = Cli::parse_from(["bench"]).args;
    assert_eq!(args.modes, vec![Mode::Http, Mode::Batch, Mode::Engine]);
    assert_eq!(args.accounts, 100_000);
    assert_eq!(args.clients, 50);
    assert_eq!(args.batch_size, 1000);
    assert_eq!((args.engine_clients, args.engine_batch), (16, 1000));
    assert_eq!(args.memory_accounts, 10_000_000);
    let ten_after_two = measure::Clock {
        seconds: 10,
        warmup_seconds: 2,
    };
    assert_eq!(args.clock(Mode::Http), ten_after_two);
    assert_eq!(args.clock(Mode::Engine), ten_after_two);
    let memory = Cli::parse_from(["bench", "memory", "--memory-accounts", "5"]).args;
    assert_eq!(memory.modes, vec![Mode::Memory]);
}

/// The modes that replaced the engine and cluster examples keep the examples' defaults.
#[test]
fn the_partitions_cluster_and_ledger_defaults_are_the_former_examples() {
    let args = Cli::parse_from(["bench", "partitions", "cluster", "ledger"]).args;
    assert_eq!(args.modes, [Mode::Partitions, Mode::Cluster, Mode::Ledger]);
    assert_eq!(args.partition_counts, [1, 2, 8]);
    assert_eq!((args.partition_clients, args.partition_batch), (4096, 1));
    assert_eq!(args.accounts_per_partition, 1000);
    assert_eq!((args.nodes, args.partitions_per_node), (3, 2));
    assert_eq!(args.cluster_clients, 2048);
    assert_eq!((args.ledger_transfers, args.ledger_group), (2_000_000, 256));
    let five_after_one = measure::Clock {
        seconds: 5,
        warmup_seconds: 1,
    };
    assert_eq!(args.clock(Mode::Partitions), five_after_one);
    assert_eq!(args.clock(Mode::Cluster), five_after_one);
    let args = Cli::parse_from([
        "bench",
        "partitions",
        "--partition-counts",
        "2,4",
        "--seconds",
        "3",
    ])
    .args;
    assert_eq!(args.partition_counts, [2, 4]);
    assert_eq!(args.clock(Mode::Partitions).seconds, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_mode_moves_money_and_conserves_it() {
    let report = run(args(&[
        "engine",
        "--engine-clients",
        "4",
        "--engine-batch",
        "8",
    ]))
    .await
    .expect("the engine mode runs");
    let row = &report.modes[0];
    assert_eq!(row.mode, "engine");
    assert!(row.transfers > 0, "{row:?}");
    assert_eq!(row.errors, 0, "{row:?}");
    assert_eq!(row.money_conserved, Some(true), "{row:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_modes_run_against_a_target_server() {
    let dir = tempfile::tempdir().unwrap();
    let engine =
        engine_driver::start_engine(dir.path(), 2, 1_000_000, crate::cli::GroupCommit::Node)
            .await
            .unwrap();
    let api = crate::api::Api::new(
        engine.client(),
        Vec::new(),
        None,
        crate::api::ApiOptions::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, crate::api::router(api))
            .await
            .unwrap();
    });
    let report = run(args(&[
        "http",
        "batch",
        "--target",
        &url,
        "--clients",
        "4",
        "--batch-clients",
        "2",
        "--batch-size",
        "10",
    ]))
    .await
    .expect("the HTTP modes run");
    server.abort();
    let modes: Vec<&str> = report.modes.iter().map(|m| m.mode.as_str()).collect();
    assert_eq!(modes, ["http", "http_batch"]);
    for row in &report.modes {
        assert!(row.transfers > 0, "{row:?}");
        assert_eq!(row.errors, 0, "{row:?}");
        assert_eq!(row.money_conserved, Some(true), "{row:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_mode_reports_bytes_per_account() {
    let memory = engine_driver::measure_memory(1000, 2, 0).await.unwrap();
    assert_eq!(memory.accounts, 1000);
    assert!(memory.rss_after_bytes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_mode_runs_both_placements_and_conserves_money() {
    let report = run(args(&[
        "partitions",
        "--partition-counts",
        "1,2",
        "--partition-clients",
        "8",
        "--accounts-per-partition",
        "4",
    ]))
    .await
    .expect("the partitions mode runs");
    let runs: Vec<(&str, u32)> = report
        .partitions
        .iter()
        .map(|row| (row.mode.as_str(), row.partitions))
        .collect();
    assert_eq!(
        runs,
        [
            ("engine_same_partition", 1),
            ("engine_same_partition", 2),
            ("engine_cross_partition", 2)
        ]
    );
    for row in &report.partitions {
        assert!(row.transfers > 0, "{row:?}");
        assert_eq!((row.errors, row.rejected), (0, 0), "{row:?}");
        assert_eq!(row.money_conserved, Some(true), "{row:?}");
    }
    let lines = report.summary_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("engine same_partition_tps="),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_crosses_nodes_and_conserves_money() {
    let report = run(args(&[
        "cluster",
        "--nodes",
        "2",
        "--partitions-per-node",
        "1",
        "--cluster-clients",
        "8",
        "--accounts-per-partition",
        "4",
    ]))
    .await
    .expect("the cluster mode runs");
    let modes: Vec<&str> = report.cluster.iter().map(|m| m.mode.as_str()).collect();
    assert_eq!(modes, ["cluster_home", "cluster_any", "cluster_replicated"]);
    for row in &report.cluster {
        assert!(row.transfers > 0, "{row:?}");
        assert_eq!(row.errors, 0, "{row:?}");
        assert_eq!(row.money_conserved, Some(true), "{row:?}");
        assert_eq!((row.nodes, row.partitions), (Some(2), 2));
    }
    let lines = report.summary_lines();
    assert!(lines[0].starts_with("cluster home_tps="), "{lines:?}");
    assert!(
        lines[0].ends_with(" nodes=2 partitions=2 fsync=on"),
        "{lines:?}"
    );
    // Two nodes have no majority without the leader's: no failover is measured.
    assert!(
        lines[1].starts_with("cluster nodes=2 replicas=2 tps=")
            && lines[1].ends_with(" failover_ms=none"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_mode_executes_every_transfer() {
    let report = run(args(&[
        "ledger",
        "--ledger-transfers",
        "5000",
        "--ledger-group",
        "64",
    ]))
    .await
    .expect("the ledger mode runs");
    let ledger = report.ledger.as_ref().expect("a ledger report");
    assert_eq!(
        (ledger.transfers, ledger.group, ledger.accounts),
        (5000, 64, 40)
    );
    assert!(ledger.ns_per_transfer > 0.0);
    assert_eq!(report.summary_lines().len(), 1);
}
