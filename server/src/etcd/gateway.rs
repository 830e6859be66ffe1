//! One call of etcd's JSON gateway: a `POST` of a JSON body to a `/v3/...` path over a fresh
//! HTTP/1.1 connection, to the first endpoint that answers. Control-plane traffic is a few
//! calls a second at most, so a connection per call costs nothing that matters and leaves no
//! pool to go stale when etcd restarts.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::EtcdError;

/// Opens a connection to `authority` (`host:port`), sends `body` to `path` and returns the
/// status and the body, still streaming (a watch's never ends).
pub(super) async fn post(
    authority: &str,
    path: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<(StatusCode, Incoming), EtcdError> {
    let exchange = async {
        let stream = TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        // Ends when the response body is read to its end or dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, authority)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(std::io::Error::other)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)?;
        Ok::<_, std::io::Error>((response.status(), response.into_body()))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(source)) => Err(EtcdError::Unreachable {
            endpoint: authority.to_string(),
            reason: source.to_string(),
        }),
        Err(_) => Err(EtcdError::Unreachable {
            endpoint: authority.to_string(),
            reason: format!("no answer within {} ms", timeout.as_millis()),
        }),
    }
}

/// Reads a whole (bounded) response body.
pub(super) async fn read_all(
    authority: &str,
    body: Incoming,
    timeout: Duration,
) -> Result<Bytes, EtcdError> {
    let limited = http_body_util::Limited::new(body, super::RESPONSE_BYTES_MAX);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) => Err(EtcdError::Unreachable {
            endpoint: authority.to_string(),
            reason: format!("reading the answer: {error}"),
        }),
        Err(_) => Err(EtcdError::Unreachable {
            endpoint: authority.to_string(),
            reason: format!("answer not read within {} ms", timeout.as_millis()),
        }),
    }
}
