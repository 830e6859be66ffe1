//! Reading request bodies under the body limit, and draining the bodies the server refuses.
//!
//! A refused body is not simply dropped. Many clients (Python's `http.client`, most blocking
//! ones) write the whole request before they read anything; if the server closed the
//! connection with their bytes still arriving, the kernel would answer those bytes with a
//! reset, and the client would see a broken pipe instead of the `413` already sent. So the
//! answer leaves at once and the rest of the body is read and thrown away in the background,
//! within bounds ([`drain_bytes_max`], [`DRAIN_TIME_MAX`]) so a client cannot keep a
//! connection busy for ever. Past either bound the connection is closed as before.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use http_body_util::BodyExt;

use crate::errors::ApiError;

/// Longest the rest of a refused body is read for.
pub const DRAIN_TIME_MAX: Duration = Duration::from_secs(10);

/// Bytes of a refused body read and thrown away per byte of the body limit: a client that
/// sent a few times too much still reads its `413`, one that sends without end does not
/// keep the connection.
const DRAIN_BYTES_PER_LIMIT_BYTE: usize = 8;

/// Least a refused body is drained, whatever the limit (a small limit would otherwise leave
/// ordinary mistakes, such as a file sent by error, with a reset).
const DRAIN_BYTES_MIN: usize = 16 << 20;

/// Most bytes of a refused body read and thrown away when the body limit is `limit_bytes`.
pub fn drain_bytes_max(limit_bytes: usize) -> usize {
    limit_bytes
        .saturating_mul(DRAIN_BYTES_PER_LIMIT_BYTE)
        .max(DRAIN_BYTES_MIN)
}

/// Reads and throws away what is left of a refused request's body, in the background, so
/// the connection closes only once the client has sent it (within the bounds above).
///
/// A client that sent `Expect: 100-continue` is still waiting for permission to send its
/// body and will not send it after a refusal: nothing is drained.
pub fn drain_refused(headers: &HeaderMap, body: Body, limit_bytes: usize) {
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        return;
    }
    let bytes_max = drain_bytes_max(limit_bytes);
    tokio::spawn(async move {
        let drained = tokio::time::timeout(DRAIN_TIME_MAX, discard(body, bytes_max)).await;
        if drained.is_err() {
            tracing::debug!("a refused body was still arriving at the drain's time limit");
        }
    });
}

/// Reads `body` to its end or to `bytes_max`, whichever comes first, keeping nothing.
async fn discard(mut body: Body, bytes_max: usize) {
    let mut read = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            read = read.saturating_add(data.len());
            if read > bytes_max {
                tracing::debug!(bytes_max, "a refused body is longer than the drain reads");
                return;
            }
        }
    }
}

/// Reads a whole request body of at most `limit_bytes`. A longer one is `413
/// body_too_large`, and the rest of it is drained (see the module docs).
pub async fn read_limited(
    headers: &HeaderMap,
    mut body: Body,
    limit_bytes: usize,
) -> Result<Bytes, ApiError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut length = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|error| ApiError::malformed_json(format!("cannot read the body: {error}")))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry nothing the API reads
        };
        length = length.saturating_add(data.len());
        if length > limit_bytes {
            drain_refused(headers, body, limit_bytes);
            return Err(ApiError::body_too_large(limit_bytes));
        }
        chunks.push(data);
    }
    // Most bodies arrive in one piece, which is returned as it came, without a copy.
    if chunks.len() <= 1 {
        return Ok(chunks.pop().unwrap_or_default());
    }
    let mut whole = Vec::with_capacity(length);
    for chunk in &chunks {
        whole.extend_from_slice(chunk);
    }
    Ok(Bytes::from(whole))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_reads_a_few_times_the_limit_and_never_less_than_its_floor() {
        assert_eq!(drain_bytes_max(2 << 20), 16 << 20);
        assert_eq!(drain_bytes_max(4 << 20), 32 << 20);
        assert_eq!(drain_bytes_max(4096), DRAIN_BYTES_MIN);
        assert_eq!(drain_bytes_max(usize::MAX), usize::MAX);
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole_and_a_longer_one_refused() {
        let headers = HeaderMap::new();
        let body = Body::from("{\"a\":1}");
        let read = read_limited(&headers, body, 7)
            .await
            .expect("within the limit");
        assert_eq!(&read[..], b"{\"a\":1}");
        let refused = read_limited(&headers, Body::from("12345678"), 7).await;
        let error = refused.expect_err("over the limit");
        assert_eq!((error.status.as_u16(), error.code), (413, "body_too_large"));
    }
}
