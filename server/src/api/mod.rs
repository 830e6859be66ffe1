//! The HTTP API: routes, shared state, the JSON extractors and the middleware stack.
//!
//! The router is built from a [`walletd_runtime::engine::Client`] and the driver statistics of
//! the partitions that run in this process, never from an `Engine`: an all-in-one server and
//! a cluster node (whose client forwards some partitions to other nodes) serve the same API.
//!
//! Request path, outermost first: tracing (when its debug logs are on) → metrics and JSON error normaliser → timeout →
//! announced body size → panic catcher → (on `/v1` routes) bearer auth, memory limit (writes)
//! and in-flight limit → handler. The API's own layers are in [`layers`].

pub mod accounts;
pub mod batch;
pub mod body;
pub mod cluster;
pub mod dry_run;
pub mod events;
pub mod forward;
pub mod holds;
pub mod layers;
pub mod metrics;
pub mod openapi;
pub mod queries;
pub mod refunds;
pub mod transactions;
pub mod transfers;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::{Notify, Semaphore};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use walletd_core::ledger::LedgerError;
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::Currency;
use walletd_core::model::partition::PartitionId;
use walletd_core::protocol::message::{Query, QueryAnswer};
use walletd_runtime::driver::DriverStats;
use walletd_runtime::engine::{Client, Unavailable};

use crate::errors::ApiError;
use crate::feed::currencies::Currencies;
use crate::feed::cursors::Cursors;
use crate::history::index::IndexConfig;
use crate::history::LogReader;
use metrics::Metrics;

/// Limits and timings of the HTTP API. Every field is a decision with a documented default
/// on the `serve` command line.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// How long a transfer request waits for a final outcome before answering `202 pending`.
    pub transfer_wait: Duration,
    /// Hard limit on one request, after which it is answered `503 request_timeout`.
    pub request_timeout: Duration,
    /// Largest request body accepted; larger bodies get `413 body_too_large`.
    pub body_limit_bytes: usize,
    /// Most `/v1` requests handled at once; more get `429 overloaded` at once rather than
    /// queueing, so a client sees overload instead of timeouts.
    pub in_flight_max: usize,
    /// Most transfers in one batch request; more get `413 batch_too_large`.
    pub batch_items_max: usize,
    /// When set, every `/v1` route requires `Authorization: Bearer <token>`.
    pub api_token: Option<String>,
    /// When set, new writes (every `POST` under `/v1`) are refused with `503 memory_limit`
    /// while the process's resident memory is above it. The idempotency rows of every
    /// operation stay in memory, so without a bound the kernel would end the process, and
    /// recovery would rebuild the same memory and be ended again.
    pub memory_limit_bytes: Option<u64>,
    /// Longest long-poll of `GET /v1/events` (`wait_ms`); kept below `request_timeout`.
    pub feed_wait_max: Duration,
    /// Records per chunk of each partition's history index (its in-memory bound).
    pub history_chunk_records: u32,
    /// Whether each partition's history index follows its log in the background; if not,
    /// a read brings it up to date first.
    pub history_follow: bool,
    /// How history reads of accounts kept by another node are forwarded to it: plain
    /// HTTP, or HTTPS against `--tls-ca`.
    pub forward_http: crate::node_http::NodeHttp,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            transfer_wait: Duration::from_millis(2000),
            request_timeout: Duration::from_secs(30),
            body_limit_bytes: 2 << 20,
            in_flight_max: 4096,
            batch_items_max: 8000,
            api_token: None,
            memory_limit_bytes: None,
            feed_wait_max: Duration::from_millis(20_000),
            history_chunk_records: IndexConfig::default().chunk_records_max,
            history_follow: false,
            forward_http: crate::node_http::NodeHttp::plain(),
        }
    }
}

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct Api {
    inner: Arc<ApiInner>,
}

struct ApiInner {
    client: Client,
    /// Driver statistics of the partitions running in this process (for `/metrics`).
    stats: Vec<(PartitionId, Arc<DriverStats>)>,
    /// Reads logs for `as_of` balances and history; `None` where no log is local.
    history: Option<LogReader>,
    options: ApiOptions,
    metrics: Metrics,
    /// Permits for `/v1` requests (`options.in_flight_max` of them).
    in_flight: Arc<Semaphore>,
    /// Woken when a partition answered `Unavailable`, so the server can notice a dead driver.
    unavailable: Notify,
    memory: MemoryWatch,
    /// Account currencies learned by the event feed (its deposits do not carry them).
    feed_currencies: Currencies,
    /// Where the feed's recent pages ended in their segments.
    feed_cursors: Cursors,
    /// What `GET /v1/cluster` reads: by default this process alone, holding every
    /// partition it has stats of.
    cluster: cluster::ClusterView,
}

/// The resident memory of the process against [`ApiOptions::memory_limit_bytes`], read from
/// `/proc` at most every [`MemoryWatch::REFRESH_MS`] by whichever request asks first.
struct MemoryWatch {
    limit: Option<u64>,
    origin: std::time::Instant,
    /// When the figure below was read, in ms since `origin` (`u64::MAX`: never).
    read_at_ms: AtomicU64,
    resident: AtomicU64,
}

impl MemoryWatch {
    const REFRESH_MS: u64 = 250;

    fn new(limit: Option<u64>) -> MemoryWatch {
        MemoryWatch {
            limit,
            origin: std::time::Instant::now(),
            read_at_ms: AtomicU64::new(u64::MAX),
            resident: AtomicU64::new(0),
        }
    }

    /// `(resident, limit)` when the resident memory is above the limit.
    fn over_limit(&self) -> Option<(u64, u64)> {
        let limit = self.limit?;
        let now = self.origin.elapsed().as_millis() as u64;
        let read_at = self.read_at_ms.load(Ordering::Relaxed);
        let stale = read_at == u64::MAX || now >= read_at + Self::REFRESH_MS;
        if stale
            && self
                .read_at_ms
                .compare_exchange(read_at, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // Unreadable (not Linux): treated as within the limit.
            let resident = crate::process::resident_bytes().unwrap_or(0);
            self.resident.store(resident, Ordering::Relaxed);
        }
        let resident = self.resident.load(Ordering::Relaxed);
        (resident > limit).then_some((resident, limit))
    }
}

impl Api {
    pub fn new(
        client: Client,
        stats: Vec<(PartitionId, Arc<DriverStats>)>,
        history: Option<LogReader>,
        options: ApiOptions,
    ) -> Api {
        assert!(options.in_flight_max > 0 && options.batch_items_max > 0);
        Api {
            inner: Arc::new(ApiInner {
                in_flight: Arc::new(Semaphore::new(options.in_flight_max)),
                memory: MemoryWatch::new(options.memory_limit_bytes),
                metrics: Metrics::new(stats.clone(), options.memory_limit_bytes),
                client,
                history,
                options,
                unavailable: Notify::new(),
                feed_currencies: Currencies::default(),
                feed_cursors: Cursors::default(),
                cluster: cluster::ClusterView::single_node("", &stats),
                stats,
            }),
        }
    }

    /// Publishes the replicas' roles in `/metrics` (a replicated node): the replicas it
    /// runs at each scrape. Only while the API is not yet shared.
    pub fn with_replicas(mut self, view: walletd_runtime::net::replicated::ReplicatedView) -> Api {
        Arc::get_mut(&mut self.inner)
            .expect("the replicas are added before the API is shared")
            .metrics
            .add_replicas(view);
        self
    }

    /// What `GET /v1/cluster` answers from. Only while the API is not yet shared.
    pub fn with_cluster(mut self, view: cluster::ClusterView) -> Api {
        Arc::get_mut(&mut self.inner)
            .expect("the cluster view is added before the API is shared")
            .cluster = view;
        self
    }

    pub fn cluster_view(&self) -> &cluster::ClusterView {
        &self.inner.cluster
    }

    /// Publishes the counters of the node journal the partitions commit through, if they
    /// do, in `/metrics`. Only while the API is not yet shared (right after [`Api::new`]).
    pub fn with_journal(
        mut self,
        journal: Option<Arc<walletd_runtime::storage::journal::NodeJournal>>,
    ) -> Api {
        if let Some(journal) = journal {
            Arc::get_mut(&mut self.inner)
                .expect("the journal is added before the API is shared")
                .metrics
                .add_journal(journal);
        }
        self
    }

    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    pub fn options(&self) -> &ApiOptions {
        &self.inner.options
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn history(&self) -> Option<&LogReader> {
        self.inner.history.as_ref()
    }

    pub fn feed_currencies(&self) -> &Currencies {
        &self.inner.feed_currencies
    }

    pub fn feed_cursors(&self) -> &Cursors {
        &self.inner.feed_cursors
    }

    pub fn driver_stats(&self) -> &[(PartitionId, Arc<DriverStats>)] {
        &self.inner.stats
    }

    /// `(resident, limit)` in bytes while the process is above its memory limit.
    pub fn memory_over_limit(&self) -> Option<(u64, u64)> {
        self.inner.memory.over_limit()
    }

    /// Resolves when some request found a partition unavailable.
    pub async fn partition_unavailable(&self) {
        self.inner.unavailable.notified().await
    }

    /// Converts an engine error, and tells whoever watches that a partition is gone.
    pub fn unavailable(&self, error: Unavailable) -> ApiError {
        self.inner.unavailable.notify_waiters();
        error.into()
    }

    /// Asks `query` of the partition that answers it. A partition out of reach, and a row
    /// the partition keeps on disk only and could not read, are errors here, whatever was
    /// asked; the caller matches the answer its query gets.
    pub async fn ask(&self, query: Query) -> Result<QueryAnswer, ApiError> {
        let client = self.client();
        let partition = query.partition(client.partitions());
        match client.query(partition, query).await {
            Ok(QueryAnswer::Unreadable) => Err(LedgerError::Unreadable(
                "the partition logged which chunk file".to_string(),
            )
            .into()),
            Ok(answer) => Ok(answer),
            Err(unavailable) => Err(self.unavailable(unavailable)),
        }
    }
}

/// The complete router of the API.
pub fn router(api: Api) -> Router {
    let options = api.options().clone();
    let v1 = Router::new()
        .route("/v1/accounts", post(accounts::open_account))
        .route("/v1/accounts/{id}/deposit", post(accounts::deposit))
        .route("/v1/accounts/{id}/withdraw", post(accounts::withdraw))
        .route("/v1/accounts/{id}/balance", get(queries::balance))
        .route("/v1/accounts/{id}/history", get(queries::history))
        .route("/v1/events", get(events::events))
        .route("/v1/cluster", get(cluster::cluster))
        .route("/v1/wallet/balance_transfer", post(transfers::transfer))
        // The seed's spelling, kept as an alias for its clients.
        .route("/v1/wallet/balance_transper", post(transfers::transfer))
        .route("/v1/wallet/balance_transfers", post(batch::transfers))
        .route(
            "/v1/transfers/{from_account}/{transaction_id}",
            get(transfers::status),
        )
        .route(
            "/v1/transfers/{from_account}/{transaction_id}/refund",
            post(refunds::refund),
        )
        .route("/v1/wallet/holds", post(holds::place))
        .route("/v1/wallet/transactions", post(transactions::transact))
        .route(
            "/v1/transfers/{from_account}/{transaction_id}/capture",
            post(holds::capture),
        )
        .route(
            "/v1/transfers/{from_account}/{transaction_id}/void",
            post(holds::void),
        )
        .route_layer(layers::GuardLayer { api: api.clone() });
    // tower-http's request and response logs are at debug level: when nobody reads them,
    // the layer is left out altogether (its span, clock reads and body wrapper cost CPU on
    // every request), and `Track` logs the server errors it would have logged.
    let trace = trace_enabled();
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::render))
        .route("/openapi.json", get(openapi::document))
        .merge(v1)
        .fallback(not_found)
        // One stack, one `layer` call: each `Router::layer` call boxes every route again, and
        // a request then clones and boxes its way through each of those boxes. Outermost first.
        .layer(
            ServiceBuilder::new()
                .layer(layers::TrackLayer {
                    api: api.clone(),
                    log_failures: !trace,
                })
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    options.request_timeout,
                ))
                .layer(layers::LengthLimitLayer {
                    limit: options.body_limit_bytes,
                })
                .map_response(IntoResponse::into_response)
                .layer(axum::extract::DefaultBodyLimit::max(
                    options.body_limit_bytes,
                ))
                .layer(CatchPanicLayer::custom(|_panic| {
                    tracing::error!("request handler panicked");
                    ApiError::internal("internal error").into_response()
                })),
        );
    let router = if trace {
        router.layer(TraceLayer::new_for_http())
    } else {
        router
    };
    router.with_state(api)
}

/// Whether the logs of tower-http's trace layer (debug level) are wanted.
fn trace_enabled() -> bool {
    use tracing::Level;
    tracing::enabled!(target: "tower_http::trace::make_span", Level::DEBUG)
        || tracing::enabled!(target: "tower_http::trace::on_request", Level::DEBUG)
        || tracing::enabled!(target: "tower_http::trace::on_response", Level::DEBUG)
}

/// `GET /healthz`: the process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The server is up", body = String, example = "ok")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

async fn not_found(request: Request) -> ApiError {
    ApiError::route_not_found(request.uri().path())
}

/// A JSON request body. Unlike axum's `Json`, every rejection is an [`ApiError`]: a body that
/// is not JSON, has the wrong shape or is too large gets a JSON 400 or 413, never plain text.
/// The `Content-Type` must be `application/json`; browsers cannot send that cross-origin
/// without a CORS preflight (which this server never grants), so a web page cannot forge a
/// transfer against a server on localhost.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Api> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Api) -> Result<Self, ApiError> {
        let JsonBody(bytes) = JsonBody::from_request(request, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// The raw bytes of a JSON request body, checked as [`ApiJson`] checks them, for handlers
/// that parse it into fields borrowed from it (no allocation per text field).
pub struct JsonBody(pub Bytes);

impl FromRequest<Api> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, api: &Api) -> Result<Self, ApiError> {
        let content_type = request.headers().get(header::CONTENT_TYPE);
        if !content_type.is_some_and(is_json_content_type) {
            return Err(ApiError::malformed_json(
                "the body must be JSON sent with `Content-Type: application/json`",
            ));
        }
        let (parts, body) = request.into_parts();
        body::read_limited(&parts.headers, body, api.options().body_limit_bytes)
            .await
            .map(JsonBody)
    }
}

/// Parses a JSON body; a body of the wrong shape is `invalid_field`, one that is not JSON
/// `malformed_json`.
pub fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(json_error)
}

/// The client error for a body that failed to parse: `invalid_field` when it is JSON of
/// the wrong shape, `malformed_json` when it is not JSON.
pub fn json_error(error: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match error.classify() {
        Category::Data => ApiError::invalid_field(error.to_string()),
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::malformed_json(format!("the body is not valid JSON: {error}"))
        }
    }
}

pub(crate) fn is_json_content_type(value: &HeaderValue) -> bool {
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5 && essence[essence.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// Path parameters with an [`ApiError`] rejection.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(|rejection| ApiError::invalid_field(rejection.body_text()))
    }
}

/// Query-string parameters with an [`ApiError`] rejection.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| ApiQuery(value))
            .map_err(|rejection| ApiError::invalid_query(rejection.body_text()))
    }
}

/// Validates an account id field.
pub fn account_id(field: &str, text: &str) -> Result<AccountId, ApiError> {
    AccountId::new(text).map_err(|e| ApiError::invalid_account_id(field, &e))
}

/// Validates a transaction id field.
pub fn transaction_id(field: &str, text: &str) -> Result<TransactionId, ApiError> {
    TransactionId::new(text).map_err(|e| ApiError::invalid_transaction_id(field, &e))
}

/// Validates a currency code.
pub fn currency(text: &str) -> Result<Currency, ApiError> {
    Currency::from_code(text).map_err(ApiError::from)
}
