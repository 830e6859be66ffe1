//! `/metrics`: OpenMetrics text exposition 1.0.0 (which Prometheus scrapes natively), encoded
//! by `prometheus-client` from a registry this server owns (no global state: two servers in
//! one test process count apart).
//!
//! # Layout
//! - [`http`]: what the HTTP layer records as requests go: requests and their latency by
//!   route and status, requests in flight, transfers by outcome.
//! - [`partitions`]: every partition driver's counters, gauges and histograms, read from its
//!   [`walletd_runtime::driver::DriverStats`] at scrape time (the driver keeps them in atomics,
//!   since its crate also runs under the simulator and carries no metrics library).
//! - [`journal`]: the node journal's rounds and batches, when the node commits through one.
//! - [`process`]: the process's resident memory and the limit it is held to, read at scrape
//!   time.

mod http;
mod journal;
mod partitions;
mod process;
mod replicas;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use walletd_core::ledger::TransferStatus;
use walletd_core::model::partition::PartitionId;
use walletd_runtime::driver::DriverStats;

use super::Api;

/// The content type of OpenMetrics text, the only text format `prometheus-client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The outcome of a transfer request, as counted by `walletd_transfers_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    Rejected,
    Cancelled,
    Pending,
    /// A hold placed and held (`POST /v1/wallet/holds`).
    Held,
    /// A hold captured (its capture, or a void that found it captured).
    Captured,
    /// Same transaction id, different body.
    Conflict,
    /// Refused before reaching a ledger decision (validation, unknown account, unavailable).
    Failed,
}

impl Outcome {
    const ALL: [Outcome; 8] = [
        Outcome::Committed,
        Outcome::Rejected,
        Outcome::Cancelled,
        Outcome::Pending,
        Outcome::Held,
        Outcome::Captured,
        Outcome::Conflict,
        Outcome::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Committed => "committed",
            Outcome::Rejected => "rejected",
            Outcome::Cancelled => "cancelled",
            Outcome::Pending => "pending",
            Outcome::Held => "held",
            Outcome::Captured => "captured",
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
            TransferStatus::Held => Outcome::Held,
            TransferStatus::Captured => Outcome::Captured,
        }
    }
}

/// The metrics of one API: the HTTP layer's, recorded as requests go, and a registry that
/// also reads the partitions and the process when scraped.
#[derive(Debug)]
pub struct Metrics {
    http: http::HttpMetrics,
    registry: Registry,
}

impl Metrics {
    /// Metrics over the partitions that run in this process; `memory_limit_bytes` is
    /// published as the limit when set.
    pub fn new(
        partitions: Vec<(PartitionId, Arc<DriverStats>)>,
        memory_limit_bytes: Option<u64>,
    ) -> Metrics {
        let mut registry = Registry::default();
        let http = http::HttpMetrics::register(&mut registry);
        registry.register_collector(Box::new(partitions::Partitions::new(partitions)));
        registry.register_collector(Box::new(process::Process { memory_limit_bytes }));
        Metrics { http, registry }
    }

    /// Publishes the counters of the node journal the partitions commit through.
    /// Publishes the role of each replica of a replicated node, by partition.
    pub fn add_replicas(&mut self, view: walletd_runtime::net::replicated::ReplicatedView) {
        self.registry
            .register_collector(Box::new(replicas::Replicas { view }));
    }

    pub fn add_journal(&mut self, journal: Arc<walletd_runtime::storage::journal::NodeJournal>) {
        self.registry
            .register_collector(Box::new(journal::Journal(journal)));
    }

    pub fn transfer(&self, outcome: Outcome) {
        self.http.transfer(outcome);
    }

    /// Counts a finished request and its latency (see [`super::layers::Track`]).
    pub(crate) fn request(&self, route: &str, status: u16, elapsed: Duration) {
        self.http.request(route, status, elapsed);
    }

    /// `walletd_http_requests_in_flight`.
    pub(crate) fn in_flight(&self) -> &Gauge {
        &self.http.in_flight
    }

    /// The whole exposition, `# EOF` included.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String fails only if a metric's encoder does: ours do not, but a
        // scrape must not panic, so a failure is logged and the text so far served.
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "metrics could not be encoded in full");
        }
        out
    }
}

/// Gauges are signed in the exposition; none here comes near `i64::MAX`, and one that did
/// would show as that rather than fail the scrape.
fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text exposition 1.0.0", body = String,
        content_type = "application/openmetrics-text")))]
pub async fn render(State(api): State<Api>) -> Response {
    let mut response = api.metrics().encode().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}
