//! `/metrics`: Prometheus text exposition (format 0.0.4), written by hand.
//!
//! HTTP counters are kept here; partition counters come straight from each driver's
//! [`walletd_runtime::driver::DriverStats`], read at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use walletd_core::ledger::TransferStatus;

use super::Api;

/// The outcome of a transfer request, as counted by `walletd_transfers_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    Rejected,
    Cancelled,
    Pending,
    /// Same transaction id, different body.
    Conflict,
    /// Refused before reaching a ledger decision (validation, unknown account, unavailable).
    Failed,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Committed,
        Outcome::Rejected,
        Outcome::Cancelled,
        Outcome::Pending,
        Outcome::Conflict,
        Outcome::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Committed => "committed",
            Outcome::Rejected => "rejected",
            Outcome::Cancelled => "cancelled",
            Outcome::Pending => "pending",
            Outcome::Conflict => "conflict",
            Outcome::Failed => "failed",
        }
    }

    pub fn of_status(status: TransferStatus) -> Outcome {
        match status {
            TransferStatus::Committed => Outcome::Committed,
            TransferStatus::Rejected(_) => Outcome::Rejected,
            TransferStatus::Cancelled(_) => Outcome::Cancelled,
            TransferStatus::Pending => Outcome::Pending,
        }
    }
}

/// Counters of the HTTP layer.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests by route, then status. Routes are the router's patterns, so the key set is
    /// bounded by the number of routes times the statuses the API uses.
    requests: Mutex<BTreeMap<String, BTreeMap<u16, u64>>>,
    transfers: [AtomicU64; 6],
    pub(crate) http_in_flight: AtomicI64,
}

impl Metrics {
    pub fn transfer(&self, outcome: Outcome) {
        let index = Outcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .expect("listed");
        self.transfers[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request (see [`super::layers::Track`]). Allocates only for a route's first
    /// request.
    pub(crate) fn request(&self, route: &str, status: u16) {
        let mut requests = self.requests.lock().expect("metrics lock");
        let statuses = match requests.get_mut(route) {
            Some(statuses) => statuses,
            None => requests.entry(route.to_string()).or_default(),
        };
        *statuses.entry(status).or_default() += 1;
    }
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", body = String)))]
pub async fn render(State(api): State<Api>) -> Response {
    let mut out = String::with_capacity(4096);
    write_http(&mut out, api.metrics());
    write_partitions(&mut out, &api);
    write_process(&mut out, &api);
    let mut response = out.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn write_http(out: &mut String, metrics: &Metrics) {
    out.push_str("# HELP walletd_http_requests_total HTTP requests by route and status.\n");
    out.push_str("# TYPE walletd_http_requests_total counter\n");
    for (route, statuses) in metrics.requests.lock().expect("metrics lock").iter() {
        let route = escape_label(route);
        for (status, count) in statuses {
            let _ = writeln!(
                out,
                "walletd_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
    }
    out.push_str("# HELP walletd_http_requests_in_flight HTTP requests being handled.\n");
    out.push_str("# TYPE walletd_http_requests_in_flight gauge\n");
    let _ = writeln!(
        out,
        "walletd_http_requests_in_flight {}",
        metrics.http_in_flight.load(Ordering::Relaxed)
    );
    out.push_str(
        "# HELP walletd_transfers_total Transfer requests (single and batch items) by outcome.\n",
    );
    out.push_str("# TYPE walletd_transfers_total counter\n");
    for (outcome, count) in Outcome::ALL.iter().zip(&metrics.transfers) {
        let _ = writeln!(
            out,
            "walletd_transfers_total{{outcome=\"{}\"}} {}",
            outcome.label(),
            count.load(Ordering::Relaxed)
        );
    }
}

fn write_partitions(out: &mut String, api: &Api) {
    type Read = fn(&walletd_runtime::driver::DriverStats) -> u64;
    let families: [(&str, &str, &str, Read); 10] = [
        (
            "walletd_partition_batches_total",
            "counter",
            "Group-commit batches.",
            |s| s.batches.load(Ordering::Relaxed),
        ),
        (
            "walletd_partition_inputs_total",
            "counter",
            "Inputs (commands, queries, peer messages) taken into batches.",
            |s| s.inputs.load(Ordering::Relaxed),
        ),
        (
            "walletd_partition_events_total",
            "counter",
            "Events appended to the log.",
            |s| s.events.load(Ordering::Relaxed),
        ),
        (
            "walletd_partition_syncs_total",
            "counter",
            "Log syncs (fdatasync), one per batch that wrote.",
            |s| s.syncs.load(Ordering::Relaxed),
        ),
        (
            "walletd_partition_transfers_in_flight",
            "gauge",
            "Cross-partition transfers (TC/C) the home partition is still driving.",
            |s| s.in_flight.load(Ordering::Relaxed),
        ),
        (
            "walletd_partition_last_lsn",
            "gauge",
            "Last durable log sequence number.",
            |s| s.last_lsn.load(Ordering::Relaxed),
        ),
        (
            "walletd_partition_protocol_violations_total",
            "counter",
            "TC/C protocol violations seen by the coordinator (always 0 in a correct system).",
            |s| s.violations.load(Ordering::Relaxed),
        ),
        (
            "walletd_partition_rows",
            "gauge",
            "Rows held in memory: accounts, and the transfer, credit and cash rows that are \
             idempotency records, never pruned (memory grows with them).",
            |s| s.rows.load(Ordering::Relaxed),
        ),
        (
            "walletd_partition_snapshot_failures_total",
            "counter",
            "Snapshots that could not be written; the partition went on from its log.",
            |s| s.snapshot_failures.load(Ordering::Relaxed),
        ),
        (
            "walletd_partition_events_per_batch",
            "gauge",
            "Average events per batch since start.",
            |s| s.events.load(Ordering::Relaxed) / s.batches.load(Ordering::Relaxed).max(1),
        ),
    ];
    for (name, kind, help, read) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (partition, stats) in api.driver_stats() {
            let _ = writeln!(out, "{name}{{partition=\"{partition}\"}} {}", read(stats));
        }
    }
    let name = "walletd_partition_fsync_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Log sync latency: _sum / _count is the mean fsync time.\n# TYPE {name} summary"
    );
    for (partition, stats) in api.driver_stats() {
        let seconds = stats.sync_us_total.load(Ordering::Relaxed) as f64 / 1e6;
        let syncs = stats.syncs.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_sum{{partition=\"{partition}\"}} {seconds:.6}");
        let _ = writeln!(out, "{name}_count{{partition=\"{partition}\"}} {syncs}");
    }
}

/// The process's resident memory, under the name Prometheus' own clients use (left out where
/// `/proc` cannot tell: not Linux), and the limit it is held to.
fn write_process(out: &mut String, api: &Api) {
    if let Ok(bytes) = crate::process::resident_bytes() {
        let name = "process_resident_memory_bytes";
        let _ = writeln!(
            out,
            "# HELP {name} Resident memory size in bytes.\n# TYPE {name} gauge\n{name} {bytes}"
        );
    }
    if let Some(limit) = api.options().memory_limit_bytes {
        let name = "walletd_memory_limit_bytes";
        let _ = writeln!(
            out,
            "# HELP {name} Resident memory above which new writes are refused (503 memory_limit).\n# TYPE {name} gauge\n{name} {limit}"
        );
    }
}

/// Escapes a label value per the exposition format (backslash, quote, newline).
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
