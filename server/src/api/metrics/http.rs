//! What the HTTP layer records as requests go.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use walletd_runtime::histogram::DURATION_US_BOUNDS;

use super::Outcome;

/// Labels of a request. Routes are the router's patterns (or `unmatched`), so the label
/// sets are bounded by the routes times the statuses the API uses.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// A request's series in both families.
#[derive(Debug, Clone)]
struct RequestSeries {
    count: Counter,
    latency: Histogram,
}

type LatencyFamily = Family<RouteStatus, Histogram, fn() -> Histogram>;

/// The series of every status seen on a route, by the route's text.
type SeriesByRoute = HashMap<Box<str>, Vec<(u16, RequestSeries)>>;

/// The HTTP layer's metrics, registered in the API's registry.
#[derive(Debug)]
pub(super) struct HttpMetrics {
    requests: Family<RouteStatus, Counter>,
    latency: LatencyFamily,
    /// The series of each route and status seen, found by the route's text: a family is
    /// keyed by owned labels, so asking it would cost an allocation per request; this costs
    /// one per route and status, the first time.
    series: RwLock<SeriesByRoute>,
    pub(super) in_flight: Gauge,
    /// One per [`Outcome::ALL`], in that order.
    transfers: Vec<Counter>,
}

/// Latency buckets in seconds: the drivers' duration buckets, so a request's latency and
/// the fsyncs under it can be read side by side.
fn latency_histogram() -> Histogram {
    Histogram::new(DURATION_US_BOUNDS.iter().map(|&us| us as f64 / 1e6))
}

impl HttpMetrics {
    pub(super) fn register(registry: &mut Registry) -> HttpMetrics {
        let requests = Family::<RouteStatus, Counter>::default();
        registry.register(
            "walletd_http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let latency = LatencyFamily::new_with_constructor(latency_histogram);
        registry.register(
            "walletd_http_request_duration_seconds",
            "HTTP request latency by route and status, from the request's arrival to its \
             response's headers",
            latency.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "walletd_http_requests_in_flight",
            "HTTP requests being handled",
            in_flight.clone(),
        );
        let by_outcome = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "walletd_transfers",
            "Transfer requests (single and batch items) by outcome",
            by_outcome.clone(),
        );
        // Every outcome is there from the start, at 0, so a rate over it is defined.
        let transfers = Outcome::ALL
            .iter()
            .map(|outcome| {
                let label = OutcomeLabel {
                    outcome: outcome.label(),
                };
                by_outcome.get_or_create(&label).clone()
            })
            .collect();
        HttpMetrics {
            requests,
            latency,
            series: RwLock::default(),
            in_flight,
            transfers,
        }
    }

    pub(super) fn transfer(&self, outcome: Outcome) {
        let index = Outcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .expect("every outcome is listed");
        self.transfers[index].inc();
    }

    pub(super) fn request(&self, route: &str, status: u16, elapsed: Duration) {
        let series = self.series_of(route, status);
        series.count.inc();
        series.latency.observe(elapsed.as_secs_f64());
    }

    /// The series of `route` and `status`, made on first use.
    fn series_of(&self, route: &str, status: u16) -> RequestSeries {
        // A poisoned lock only means a panic elsewhere while it was held; the map is still
        // whole (every insert is one call), so it is used as it is.
        let known = self.series.read().unwrap_or_else(|e| e.into_inner());
        if let Some(series) = find(&known, route, status) {
            return series;
        }
        drop(known);
        let mut known = self.series.write().unwrap_or_else(|e| e.into_inner());
        if let Some(series) = find(&known, route, status) {
            return series;
        }
        let labels = RouteStatus {
            route: route.to_string(),
            status,
        };
        let series = RequestSeries {
            count: self.requests.get_or_create(&labels).clone(),
            latency: self.latency.get_or_create(&labels).clone(),
        };
        known
            .entry(route.into())
            .or_default()
            .push((status, series.clone()));
        series
    }
}

fn find(known: &SeriesByRoute, route: &str, status: u16) -> Option<RequestSeries> {
    let statuses = known.get(route)?;
    let (_, series) = statuses.iter().find(|(s, _)| *s == status)?;
    Some(series.clone())
}
