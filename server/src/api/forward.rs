//! Reads from a log kept by another node: history and `as_of` balances of an account whose
//! partition runs elsewhere are asked of the node that runs it, over its HTTP API, and its
//! answer is passed back as it is (status, body).
//!
//! Why HTTP and not the peer protocol: the answer is read from the log and its index, which
//! live in this server, not in the partition driver that the peer protocol talks to, and a
//! page of up to 1000 movements is far larger than a peer frame's message. The request is
//! the client's own (same path and query, same bearer token), so the owning node checks it
//! exactly as it would a direct one, and marks it so that it is never sent on again (two
//! nodes that disagree about a partition's owner answer 503 instead of passing a request
//! back and forth).

use std::time::Duration;

use axum::body::Body;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::Response;

use crate::errors::ApiError;
use crate::node_http::NodeHttp;

/// The header a forwarded request carries; a node never forwards a request that has it.
pub const FORWARDED_HEADER: &str = "x-walletd-forwarded";

/// The longest a forwarded read may take, connection included.
pub const FORWARD_TIMEOUT_MS: u64 = 10_000;

/// The largest answer passed back: a page of the most movements is about 400 KiB.
pub const FORWARD_BODY_BYTES_MAX: usize = 4 << 20;

/// Whether `headers` are those of a request another node forwarded.
pub fn was_forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED_HEADER)
}

/// Sends the read `uri` (path and query) to the node whose HTTP API is at `http` (host and
/// port), over `client` (plain HTTP, or HTTPS against the nodes' CA), with the client's
/// `Authorization`, and returns its answer.
pub async fn forward_read(
    client: &NodeHttp,
    http: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let unavailable = |detail: String| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "history_unavailable",
            format!("the node that keeps this account's log ({http}) did not answer: {detail}"),
        )
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut sent = vec![(
        HeaderName::from_static(FORWARDED_HEADER),
        HeaderValue::from_static("1"),
    )];
    if let Some(token) = headers.get(AUTHORIZATION) {
        sent.push((AUTHORIZATION, token.clone()));
    }
    let exchange = client.get(http, path, &sent, FORWARD_BODY_BYTES_MAX);
    let answer =
        match tokio::time::timeout(Duration::from_millis(FORWARD_TIMEOUT_MS), exchange).await {
            Ok(answer) => answer.map_err(unavailable)?,
            Err(_) => {
                return Err(unavailable(format!(
                    "no answer within {FORWARD_TIMEOUT_MS} ms"
                )))
            }
        };
    let mut response = Response::builder().status(answer.status);
    if let Some(content_type) = answer.content_type {
        response = response.header(CONTENT_TYPE, content_type);
    }
    response
        .body(Body::from(answer.body))
        .map_err(|e| ApiError::internal(e.to_string()))
}
