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
    assert_eq!(args.memory_accounts, 10_000_000);
    let memory = Cli::parse_from(["bench", "memory", "--memory-accounts", "5"]).args;
    assert_eq!(memory.modes, vec![Mode::Memory]);
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
    let engine = engine_driver::start_engine(dir.path(), 2, 1_000_000)
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
