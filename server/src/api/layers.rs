//! The API's own middleware, as plain tower services: no boxed futures and no per-request
//! clones of the services underneath (axum's `from_fn` does both for every layer).
//!
//! - [`Track`] (around every route): counts the request and its latency by route and status,
//!   and the requests in flight, and turns a non-JSON error of any layer below it into the
//!   documented `{code, message}` JSON.
//! - [`LengthLimit`] (around every route): a body announced larger than the limit is refused,
//!   and drained so that the client reads the refusal.
//! - [`Guard`] (around every `/v1` route): the bearer token, then the in-flight limit.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;
use tower::{Layer, Service};

use super::{body, Api};
use crate::auth;
use crate::errors::ApiError;

/// Route label of requests that matched no route (bounded, like the route patterns).
const UNMATCHED: &str = "unmatched";

/// Layer of [`Track`].
#[derive(Clone)]
pub struct TrackLayer {
    pub api: Api,
    /// Log server errors (5xx) at error level, as tower-http's trace layer does when it is
    /// not in the stack.
    pub log_failures: bool,
}

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            api: self.api.clone(),
            log_failures: self.log_failures,
            inner,
        }
    }
}

/// Metrics and JSON errors around a route.
#[derive(Clone)]
pub struct Track<S> {
    api: Api,
    log_failures: bool,
    inner: S,
}

impl<S> Service<Request> for Track<S>
where
    S: Service<Request, Error = Infallible>,
    S::Response: IntoResponse,
{
    type Response = Response;
    type Error = Infallible;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned();
        self.api.metrics().in_flight().inc();
        TrackFuture {
            inner: self.inner.call(request),
            in_flight: InFlight(self.api.clone()),
            route,
            log_failures: self.log_failures,
            started: Instant::now(),
        }
    }
}

/// Counts a request out of `walletd_http_requests_in_flight` when it ends, answered or not.
struct InFlight(Api);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.metrics().in_flight().dec();
    }
}

pin_project! {
    /// The future of [`Track`].
    pub struct TrackFuture<F> {
        #[pin]
        inner: F,
        in_flight: InFlight,
        route: Option<MatchedPath>,
        log_failures: bool,
        // For `walletd_http_request_duration_seconds`: until the response is ready.
        started: Instant,
    }
}

impl<F, R> Future for TrackFuture<F>
where
    F: Future<Output = Result<R, Infallible>>,
    R: IntoResponse,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = ready!(this.inner.poll(cx));
        let response = json_errors(response.into_response());
        let route = this.route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
        let status = response.status();
        if *this.log_failures && status.is_server_error() {
            tracing::error!(
                target: "tower_http::trace::on_failure",
                route,
                classification = %format_args!("Status code: {status}"),
                "response failed"
            );
        }
        let elapsed = this.started.elapsed();
        this.in_flight
            .0
            .metrics()
            .request(route, status.as_u16(), elapsed);
        Poll::Ready(Ok(response))
    }
}

/// Makes sure every error leaves as `{code, message}` JSON, whatever layer produced it (a 405
/// from the router, a 413 from the body limit, a timeout), so plain-text rejections never
/// reach a client.
fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut fixed = ApiError::for_status(status).into_response();
    if let Some(allow) = allow {
        fixed.headers_mut().insert(header::ALLOW, allow);
    }
    fixed
}

/// Layer of [`Guard`].
#[derive(Clone)]
pub struct GuardLayer {
    pub api: Api,
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            api: self.api.clone(),
            inner,
        }
    }
}

/// The bearer token (when one is configured), the memory limit (for writes: every `POST`),
/// then the bound on `/v1` requests in flight: beyond it a request is refused (429) at once
/// rather than queued.
#[derive(Clone)]
pub struct Guard<S> {
    api: Api,
    inner: S,
}

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if !auth::authorized(self.api.options(), request.headers()) {
            return GuardFuture::Refused {
                response: Some(ApiError::unauthorized().into_response()),
            };
        }
        if request.method() == axum::http::Method::POST {
            if let Some((resident, limit)) = self.api.memory_over_limit() {
                return GuardFuture::Refused {
                    response: Some(ApiError::memory_limit(resident, limit).into_response()),
                };
            }
        }
        match Arc::clone(&self.api.inner.in_flight).try_acquire_owned() {
            Ok(permit) => GuardFuture::Admitted {
                inner: self.inner.call(request),
                permit,
            },
            Err(_) => GuardFuture::Refused {
                response: Some(
                    ApiError::overloaded(self.api.options().in_flight_max).into_response(),
                ),
            },
        }
    }
}

pin_project! {
    /// The future of [`Guard`] and [`LengthLimit`]; an admitted request holds its permit
    /// until it is answered or dropped.
    #[project = GuardProjection]
    pub enum GuardFuture<F> {
        Refused { response: Option<Response> },
        Passed {
            #[pin]
            inner: F,
        },
        Admitted {
            #[pin]
            inner: F,
            permit: OwnedSemaphorePermit,
        },
    }
}

impl<F> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardProjection::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            GuardProjection::Passed { inner } => inner.poll(cx),
            GuardProjection::Admitted { inner, .. } => inner.poll(cx),
        }
    }
}

/// Layer of [`LengthLimit`].
#[derive(Clone, Copy)]
pub struct LengthLimitLayer {
    pub limit: usize,
}

impl<S> Layer<S> for LengthLimitLayer {
    type Service = LengthLimit<S>;

    fn layer(&self, inner: S) -> LengthLimit<S> {
        LengthLimit {
            limit: self.limit,
            inner,
        }
    }
}

/// Refuses a request whose announced `Content-Length` exceeds the body limit (413) before
/// its body is read, and drains that body in the background ([`body::drain_refused`]). A
/// body without a length, or one longer than announced, is bounded where it is read: by the
/// JSON extractor ([`body::read_limited`]). This leaves the body as it came (no wrapper to
/// box and poll through on every request).
#[derive(Clone)]
pub struct LengthLimit<S> {
    limit: usize,
    inner: S,
}

impl<S> Service<Request> for LengthLimit<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let announced = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|length| length > self.limit as u64) {
            let (parts, body) = request.into_parts();
            body::drain_refused(&parts.headers, body, self.limit);
            return GuardFuture::Refused {
                response: Some(ApiError::body_too_large(self.limit).into_response()),
            };
        }
        GuardFuture::Passed {
            inner: self.inner.call(request),
        }
    }
}
