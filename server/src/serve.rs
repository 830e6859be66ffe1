//! `wallet serve`: the all-in-one node.
//!
//! Start: read the TLS files if any (`--tls-cert`, `--tls-key`), check the data directory's
//! partition count, recover every partition (log replay, torn tail dropped, unfinished
//! transfers resumed) and start its driver, then serve HTTP, or HTTPS only ([`crate::https`]).
//! Stop, on Ctrl-C or SIGTERM: stop accepting, let requests in flight finish (axum's graceful
//! shutdown), then ask every partition to finish its batch and sync (`Engine::shutdown`),
//! and exit 0. A partition whose driver stopped (an fsync or write failed: the only safe
//! reaction is to stop) makes the server shut down the same way and exit non-zero.

use std::io;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use walletd_core::model::event::TransferKey;
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::partition::PartitionId;
use walletd_runtime::driver::{DriverConfig, DriverError, DriverStats, Query, RecoveryReport};
use walletd_runtime::engine::{Client, Engine, EngineConfig};

use crate::api::{self, Api, ApiOptions};
use crate::cli::{ServeArgs, ServiceArgs};
use crate::datadir::{DataDir, DataDirError};
use crate::history::index::IndexConfig;
use crate::history::LogReader;
use crate::storages::open_storages;
use crate::tls::TlsConfigError;
use walletd_runtime::storage::journal::NodeJournal;

/// How often the watchdog asks every partition whether its driver still runs.
const WATCHDOG_INTERVAL_MS: u64 = 1000;

/// Why the server could not start or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    #[error("--tls-cert and --tls-key go together: give both, or neither for plain HTTP")]
    HalfTls,
    #[error("--feed-wait-max-ms {wait_ms} must be below --request-timeout-ms {timeout_ms}: a long-poll must end before the request's time limit")]
    FeedWaitTooLong { wait_ms: u64, timeout_ms: u64 },
    #[error(transparent)]
    Storage(#[from] crate::storages::OpenError),
    #[error("partition {0} stopped unexpectedly (see the errors above); the server shut down")]
    PartitionStopped(PartitionId),
}

/// Why serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Running,
    Signal,
    PartitionStopped(PartitionId),
    /// The cluster's map left this node out from this version on (`cluster remove-node`).
    Removed(u64),
}

/// Runs the server on a new multi-threaded runtime; the process exit code.
pub fn run(args: ServeArgs) -> ExitCode {
    run_to_exit_code("wallet serve", serve(args))
}

/// Runs `job` on a new multi-threaded runtime and turns its outcome into the process exit
/// code, logging and printing a failure under `name`.
pub(crate) fn run_to_exit_code<E: std::fmt::Display>(
    name: &str,
    job: impl std::future::Future<Output = Result<(), E>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(job) {
        Ok(()) => {
            tracing::info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "{name} failed");
            eprintln!("{name}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The longest long-poll of the event feed when `--feed-wait-max-ms` is not given (and the
/// request limit is long enough for it).
const FEED_WAIT_MAX_MS_DEFAULT: u64 = 20_000;

pub(crate) fn options(args: &ServiceArgs) -> Result<ApiOptions, ServeError> {
    // Given, it must fit the request limit; left out, it is made to.
    let feed_wait_max_ms = match args.feed_wait_max_ms {
        Some(wait_ms) if wait_ms >= args.request_timeout_ms => {
            return Err(ServeError::FeedWaitTooLong {
                wait_ms,
                timeout_ms: args.request_timeout_ms,
            })
        }
        Some(wait_ms) => wait_ms,
        None => FEED_WAIT_MAX_MS_DEFAULT.min(args.request_timeout_ms * 2 / 3),
    };
    Ok(ApiOptions {
        transfer_wait: Duration::from_millis(args.transfer_wait_ms),
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        body_limit_bytes: args.body_limit_bytes,
        in_flight_max: args.max_in_flight as usize,
        batch_items_max: args.batch_items_max as usize,
        api_token: args.api_token.clone().filter(|t| !t.is_empty()),
        memory_limit_bytes: match args.memory_limit_mb {
            Some(0) => None,
            Some(mb) => Some(mb.saturating_mul(1 << 20)),
            None => crate::process::default_memory_limit(),
        },
        feed_wait_max: Duration::from_millis(feed_wait_max_ms),
        history_chunk_records: args.history_chunk_records,
        history_follow: args.history_follow,
        forward_http: crate::node_http::NodeHttp::with_ca(args.tls_ca.as_deref())?,
    })
}

/// Recovers every partition and starts the engine; with the node journal the partitions
/// commit through, if they do.
pub(crate) async fn start_engine(
    args: &ServeArgs,
    dir: &DataDir,
) -> Result<(Engine, Option<Arc<NodeJournal>>), ServeError> {
    let all: Vec<PartitionId> = (0..dir.partitions()).collect();
    let opened = open_storages(
        dir.root(),
        dir.partitions(),
        &all,
        |p| dir.partition_dir(p),
        args.service.group_commit,
    )?;
    let storages = opened
        .partitions
        .into_iter()
        .map(|(_, storage)| storage)
        .collect();
    let config = EngineConfig {
        partitions: dir.partitions(),
        driver: DriverConfig {
            snapshot_every_events: args.service.snapshot_every_events,
            transfer_rows_in_memory_max: args.service.transfer_rows_in_memory_max as usize,
            ..DriverConfig::default()
        },
        ..EngineConfig::default()
    };
    Ok((Engine::start(storages, config).await?, opened.journal))
}

pub(crate) fn log_recovery(reports: &[RecoveryReport]) {
    for report in reports {
        tracing::info!(
            partition = report.partition,
            snapshot_lsn = ?report.snapshot_lsn,
            events_replayed = report.records_replayed,
            torn_bytes_dropped = report.torn_bytes_dropped,
            last_lsn = report.last_lsn,
            transfers_resumed = report.transfers_resumed,
            "partition recovered"
        );
    }
    tracing::info!(
        partitions = reports.len(),
        events_replayed = reports.iter().map(|r| r.records_replayed).sum::<u64>(),
        torn_bytes_dropped = reports.iter().map(|r| r.torn_bytes_dropped).sum::<u64>(),
        transfers_resumed = reports.iter().map(|r| r.transfers_resumed).sum::<usize>(),
        "recovery complete"
    );
}

async fn serve(args: ServeArgs) -> Result<(), ServeError> {
    let tls = api_tls(&args.service)?;
    let options = options(&args.service)?;
    let dir = DataDir::create_or_check(&args.data_dir, args.partitions)?;
    tracing::info!(data_dir = %dir.root().display(), partitions = dir.partitions(), "starting");
    let (engine, journal) = start_engine(&args, &dir).await?;
    log_recovery(engine.recovery_reports());
    let stats: Vec<_> = (engine.local_partitions().iter().copied())
        .zip(engine.stats().iter().cloned())
        .collect();
    let view = crate::api::cluster::ClusterView::single_node(&args.listen.to_string(), &stats);
    let api = build_api(&engine, dir, options, Vec::new(), Vec::new())
        .with_journal(journal)
        .with_cluster(view);
    let listener = bind_http(&args.listen.to_string(), tls.is_some()).await?;
    let grace = Duration::from_millis(args.service.shutdown_grace_ms);
    let local = engine.local_partitions();
    let (served, stop) = serve_http(listener, tls, api, local, grace, None).await;
    tracing::info!("syncing and stopping partitions");
    let stopped = engine.shutdown().await;
    served.map_err(|source| ServeError::Io {
        what: "HTTP server failed".into(),
        source,
    })?;
    stopped?;
    match stop {
        Stop::PartitionStopped(partition) => Err(ServeError::PartitionStopped(partition)),
        Stop::Running | Stop::Signal | Stop::Removed(_) => Ok(()),
    }
}

/// The TLS side of the API: `Some` with `--tls-cert` and `--tls-key`, whose files are read and
/// checked here, before anything else starts.
pub(crate) fn api_tls(args: &ServiceArgs) -> Result<Option<TlsAcceptor>, ServeError> {
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(crate::tls::https_acceptor(cert, key)?)),
        (None, None) => Ok(None),
        // The command line refuses this already; a caller that builds the arguments does not.
        _ => Err(ServeError::HalfTls),
    }
}

/// Binds the HTTP listener and logs where it listens (`https://` when `tls`).
pub(crate) async fn bind_http(address: &str, tls: bool) -> Result<TcpListener, ServeError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Io {
            what: format!("cannot listen on {address}"),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Io {
        what: "cannot read the listening address".into(),
        source,
    })?;
    let scheme = if tls { "https" } else { "http" };
    tracing::info!(%addr, "listening on {scheme}://{addr}");
    Ok(listener)
}

/// The API over every partition `engine`'s client reaches (on a cluster node, those of other
/// nodes too), with the statistics and logs of the partitions running here. `homes` names
/// where the logs of other nodes' partitions are kept (by partition; empty on one node), and
/// `forward_to` the HTTP address history reads of each such partition are forwarded to.
pub(crate) fn build_api(
    engine: &Engine,
    dir: DataDir,
    options: ApiOptions,
    homes: Vec<String>,
    forward_to: Vec<Option<String>>,
) -> Api {
    let stats: Vec<(PartitionId, Arc<DriverStats>)> = engine
        .local_partitions()
        .iter()
        .copied()
        .zip(engine.stats().iter().cloned())
        .collect();
    let logs = LogHomes::Fixed { homes, forward_to };
    build_api_for(engine.client(), stats, dir, options, logs)
}

/// Where the logs of partitions not kept here are, for history reads.
pub(crate) enum LogHomes {
    /// Fixed while the node runs: `homes` names the node that keeps each partition not
    /// kept here (for people), `forward_to` its HTTP address (see [`LogReader`]).
    Fixed {
        homes: Vec<String>,
        forward_to: Vec<Option<String>>,
    },
    /// Asked at every read: copies move while the node runs.
    Moving(Arc<dyn crate::history::Residence>),
}

/// [`build_api`] for a client and the stats of the partitions whose logs are in `dir`
/// (a replicated node's: every partition).
pub(crate) fn build_api_for(
    client: Client,
    stats: Vec<(PartitionId, Arc<DriverStats>)>,
    dir: DataDir,
    options: ApiOptions,
    logs: LogHomes,
) -> Api {
    let mut durable = vec![None; dir.partitions() as usize];
    for (partition, stats) in &stats {
        durable[*partition as usize] = Some(Arc::clone(stats));
    }
    let index = IndexConfig {
        chunk_records_max: options.history_chunk_records,
        ..IndexConfig::default()
    };
    let history = LogReader::new(dir, durable).with_index_config(index);
    let history = match logs {
        LogHomes::Fixed { homes, forward_to } => {
            history.with_homes(homes).with_forwarding(forward_to)
        }
        LogHomes::Moving(residence) => history.with_residence(residence),
    };
    if options.history_follow {
        history.follow();
    }
    match options.memory_limit_bytes {
        Some(limit) => tracing::info!(
            memory_limit_mb = limit >> 20,
            "writes are refused above this resident memory"
        ),
        None => tracing::info!("no memory limit: writes are never refused for memory"),
    }
    Api::new(client, stats, Some(history), options)
}

/// Serves HTTP, or HTTPS only with `tls`, until a signal or until one of the `watched`
/// partitions (those running in this process) stops, then drains requests in flight for at
/// most `grace`. Returns how serving ended and why; the caller stops its partitions
/// afterwards.
pub(crate) async fn serve_http(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    api: Api,
    watched: &[PartitionId],
    grace: Duration,
    removed: Option<tokio::sync::oneshot::Receiver<u64>>,
) -> (io::Result<()>, Stop) {
    let (stop_tx, mut stop_rx) = watch::channel(Stop::Running);
    let mut graceful = stop_tx.subscribe();
    tokio::spawn(watch_for_stop(
        api.clone(),
        watched.to_vec(),
        removed,
        stop_tx,
    ));
    let shutdown = async move {
        let _ = graceful.wait_for(|stop| *stop != Stop::Running).await;
        tracing::info!("shutting down: draining requests in flight");
    };
    let router = api::router(api);
    let server = async move {
        let Some(acceptor) = tls else {
            // Answers go out at once: without TCP_NODELAY the tail of a multi-segment answer
            // (a batch result) can wait on Nagle's algorithm for the client's delayed
            // acknowledgement.
            let listener = listener.tap_io(|tcp| {
                if let Err(error) = tcp.set_nodelay(true) {
                    tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
                }
            });
            return axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await;
        };
        crate::https::serve_https(listener, acceptor, router, shutdown).await;
        Ok(())
    };
    // Draining is bounded: a client that never finishes its request must not keep the
    // partitions from syncing and stopping.
    let drain_deadline = async {
        let _ = stop_rx.wait_for(|stop| *stop != Stop::Running).await;
        tokio::time::sleep(grace).await;
    };
    let served = tokio::select! {
        served = server => served,
        () = drain_deadline => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "requests still in flight after the grace period; closing them");
            Ok(())
        }
    };
    let stop = *stop_rx.borrow();
    (served, stop)
}

/// Waits for a signal or for a partition to stop, and publishes why serving must end.
async fn watch_for_stop(
    api: Api,
    watched: Vec<PartitionId>,
    removed: Option<tokio::sync::oneshot::Receiver<u64>>,
    stop: watch::Sender<Stop>,
) {
    let removed = async {
        match removed {
            Some(removed) => match removed.await {
                Ok(version) => version,
                // The follower ended without saying so: nothing to stop for.
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    };
    let reason = tokio::select! {
        () = shutdown_signal() => Stop::Signal,
        partition = dead_partition(&api, &watched) => Stop::PartitionStopped(partition),
        version = removed => Stop::Removed(version),
    };
    match reason {
        Stop::PartitionStopped(partition) => {
            tracing::error!(partition, "partition driver stopped; shutting down")
        }
        Stop::Removed(version) => tracing::warn!(
            map_version = version,
            "this node was removed from the cluster's map; shutting down"
        ),
        _ => tracing::info!("signal received"),
    }
    let _ = stop.send(reason);
}

/// Resolves with the first of the `watched` partitions whose driver no longer answers. Polls
/// them each [`WATCHDOG_INTERVAL_MS`], and at once when a request found one unavailable.
/// Only partitions of this process are watched: one on another node that is down is that
/// node's outage, not a reason for this one to stop.
async fn dead_partition(api: &Api, watched: &[PartitionId]) -> PartitionId {
    let probe = TransferKey {
        from: AccountId::new("walletd.watchdog").expect("valid id"),
        transaction_id: TransactionId::new("probe").expect("valid id"),
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(WATCHDOG_INTERVAL_MS)) => {}
            () = api.partition_unavailable() => {}
        }
        for &partition in watched {
            if api
                .client()
                .query(partition, Query::Transfer(probe))
                .await
                .is_err()
            {
                return partition;
            }
        }
    }
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Service {
        #[command(flatten)]
        args: ServiceArgs,
    }

    fn options_of(flags: &[&str]) -> Result<ApiOptions, ServeError> {
        let parsed = Service::try_parse_from(std::iter::once("serve").chain(flags.iter().copied()))
            .expect("flags parse");
        options(&parsed.args)
    }

    #[test]
    fn the_feeds_longest_wait_fits_the_request_limit_given_or_not() {
        let wait = |flags: &[&str]| options_of(flags).map(|o| o.feed_wait_max.as_millis());
        assert_eq!(wait(&[]).unwrap(), 20_000);
        // A short request limit shortens the default instead of refusing to start.
        assert_eq!(wait(&["--request-timeout-ms", "300"]).unwrap(), 200);
        assert_eq!(
            wait(&["--request-timeout-ms", "300", "--feed-wait-max-ms", "250"]).unwrap(),
            250
        );
        // Given, a wait the request limit would cut is refused, naming both flags.
        let error = wait(&["--request-timeout-ms", "300", "--feed-wait-max-ms", "300"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--feed-wait-max-ms 300"), "{error}");
        assert!(error.contains("--request-timeout-ms 300"), "{error}");
    }
}
