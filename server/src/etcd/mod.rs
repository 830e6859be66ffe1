//! A small, typed etcd v3 client over etcd's JSON gateway (`POST /v3/kv/range`,
//! `/v3/kv/txn`, `/v3/lease/grant`, `/v3/lease/keepalive`, `/v3/watch`, ...), on the hyper
//! HTTP/1.1 client the workspace already builds.
//!
//! Why not the `etcd-client` crate: it speaks gRPC through tonic and generates its code with
//! `protoc` at build time, so every machine that builds walletd would need the protobuf
//! compiler (or a vendored one, which some platforms lack), and the build would gain tonic,
//! prost and HTTP/2. walletd needs seven calls of etcd's API, all of which the gateway serves
//! (etcd ≥ 3.4 enables it on every client URL); keeping them here keeps the build to the
//! Rust toolchain alone.
//!
//! # Layout
//! - this file: [`Etcd`], its calls, and [`EtcdError`];
//! - `gateway`: one HTTP exchange with one endpoint;
//! - `json`: the JSON shapes of requests and answers (base64 keys, 64-bit integers as text).
//!
//! Every call tries the endpoints in the order given until one answers; an endpoint that
//! answers with an error status is not tried past (etcd's own replication already routes a
//! request to its leader).

use std::time::Duration;

use hyper::body::{Body as _, Bytes, Incoming};
use hyper::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

mod gateway;
mod json;

pub use json::KeyValue;
use json::*;

/// Largest answer read whole (a range over the cluster's keys): far above a map of
/// [`crate::cluster::NODES_MAX`] nodes and 4096 partitions.
const RESPONSE_BYTES_MAX: usize = 16 << 20;
/// Largest watch message buffered before it is complete.
const WATCH_MESSAGE_BYTES_MAX: usize = 16 << 20;
/// Most endpoints one `--etcd` may list.
pub const ENDPOINTS_MAX: usize = 16;

/// Why an etcd call failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("bad etcd endpoint {url:?}: {reason} (expected http://host:port, comma-separated for several)")]
    Url { url: String, reason: String },
    #[error("etcd at {endpoint} cannot be reached: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("etcd at {endpoint} refused {path}: {status}: {message}")]
    Refused {
        endpoint: String,
        path: &'static str,
        status: StatusCode,
        message: String,
    },
    #[error("etcd at {endpoint} answered {path} with something unreadable: {message}")]
    Decode {
        endpoint: String,
        path: &'static str,
        message: String,
    },
    #[error("the lease {0} is gone (expired or revoked)")]
    LeaseGone(i64),
    #[error("the watch ended: {0}")]
    WatchEnded(String),
    #[error(
        "the watch's start revision {wanted} is compacted (oldest kept: {compacted}): read anew"
    )]
    Compacted { wanted: i64, compacted: i64 },
}

/// A client of one etcd cluster. Cheap to clone: it holds no connection.
#[derive(Debug, Clone)]
pub struct Etcd {
    /// `host:port` of each endpoint, in the order to try them.
    endpoints: Vec<String>,
    /// Bound on one call, connection included (not on a watch's stream).
    timeout: Duration,
}

/// A key changed under a watch: its new value, or `None` if it was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    pub mod_revision: i64,
}

/// The stream of changes under one watch.
pub struct Watch {
    endpoint: String,
    body: Incoming,
    /// Bytes of the messages not yet complete.
    buf: Vec<u8>,
    start_revision: i64,
}

impl Etcd {
    /// A client of the endpoints in `urls`: `http://host:port`, comma-separated for several.
    pub fn new(urls: &str, timeout: Duration) -> Result<Etcd, EtcdError> {
        let bad = |url: &str, reason: &str| EtcdError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let mut endpoints = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            if url.starts_with("https://") {
                return Err(bad(
                    url,
                    "https is not supported; reach etcd over a private network",
                ));
            }
            let rest = url.strip_prefix("http://").unwrap_or(url);
            let authority = rest.trim_end_matches('/');
            let valid = match authority.rsplit_once(':') {
                Some((host, port)) => {
                    !host.is_empty() && !host.contains(['/', ' ']) && port.parse::<u16>().is_ok()
                }
                None => false,
            };
            if !valid {
                return Err(bad(url, "not host:port"));
            }
            endpoints.push(authority.to_string());
        }
        if endpoints.is_empty() {
            return Err(bad(urls, "no endpoint given"));
        }
        if endpoints.len() > ENDPOINTS_MAX {
            return Err(bad(urls, &format!("at most {ENDPOINTS_MAX} endpoints")));
        }
        Ok(Etcd { endpoints, timeout })
    }

    /// The endpoints, `host:port`, for messages.
    pub fn endpoints(&self) -> String {
        self.endpoints.join(",")
    }

    /// The value of `key` and the store's revision when it was read.
    pub async fn get(&self, key: &str) -> Result<(Option<KeyValue>, i64), EtcdError> {
        let request = RangeRequest {
            key: encode(key.as_bytes()),
            range_end: None,
        };
        let answer: RangeResponse = self.call("/v3/kv/range", &request).await?;
        Ok((answer.kvs.into_iter().next(), answer.header.revision))
    }

    /// Every key under `prefix`, in key order, and the store's revision.
    pub async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let request = RangeRequest {
            key: encode(prefix.as_bytes()),
            range_end: Some(encode(&prefix_end(prefix.as_bytes()))),
        };
        let answer: RangeResponse = self.call("/v3/kv/range", &request).await?;
        Ok((answer.kvs, answer.header.revision))
    }

    /// Writes `key` only if it does not exist; false if it does.
    pub async fn create(&self, key: &str, value: &[u8]) -> Result<bool, EtcdError> {
        let compare = Compare {
            key: encode(key.as_bytes()),
            target: "CREATE",
            result: "EQUAL",
            create_revision: Some("0".into()),
            mod_revision: None,
        };
        self.txn(compare, key, value).await
    }

    /// Writes `key` only if its last change is still `mod_revision` (compare-and-swap);
    /// false if someone changed it since.
    pub async fn swap(
        &self,
        key: &str,
        mod_revision: i64,
        value: &[u8],
    ) -> Result<bool, EtcdError> {
        assert!(
            mod_revision > 0,
            "a swap compares against a revision that was read"
        );
        let compare = Compare {
            key: encode(key.as_bytes()),
            target: "MOD",
            result: "EQUAL",
            create_revision: None,
            mod_revision: Some(mod_revision.to_string()),
        };
        self.txn(compare, key, value).await
    }

    async fn txn(&self, compare: Compare, key: &str, value: &[u8]) -> Result<bool, EtcdError> {
        let request = TxnRequest {
            compare: [compare],
            success: [RequestOp {
                request_put: PutRequest {
                    key: encode(key.as_bytes()),
                    value: encode(value),
                    lease: 0,
                },
            }],
        };
        let answer: TxnResponse = self.call("/v3/kv/txn", &request).await?;
        Ok(answer.succeeded)
    }

    /// Writes `key` unconditionally, bound to `lease` if not 0 (the key goes with the lease).
    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<(), EtcdError> {
        let request = PutRequest {
            key: encode(key.as_bytes()),
            value: encode(value),
            lease,
        };
        let _: serde_json::Value = self.call("/v3/kv/put", &request).await?;
        Ok(())
    }

    /// A new lease of `ttl_s` seconds; its id.
    pub async fn grant_lease(&self, ttl_s: i64) -> Result<i64, EtcdError> {
        assert!(ttl_s > 0);
        let answer: LeaseGrantResponse = self
            .call("/v3/lease/grant", &LeaseGrantRequest { ttl: ttl_s })
            .await?;
        if answer.id == 0 || !answer.error.is_empty() {
            return Err(EtcdError::Decode {
                endpoint: self.endpoints(),
                path: "/v3/lease/grant",
                message: format!("no lease granted: {}", answer.error),
            });
        }
        Ok(answer.id)
    }

    /// Renews `lease`; the seconds it has left. [`EtcdError::LeaseGone`] once it expired.
    pub async fn keep_alive(&self, lease: i64) -> Result<i64, EtcdError> {
        let request = LeaseIdRequest {
            id: lease.to_string(),
        };
        let answer: Streamed<LeaseKeepAliveResponse> =
            self.call("/v3/lease/keepalive", &request).await?;
        match answer.result {
            Some(renewed) if renewed.ttl > 0 => Ok(renewed.ttl),
            _ => Err(EtcdError::LeaseGone(lease)),
        }
    }

    /// Ends `lease` now: its keys go at once rather than when it would expire.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        let request = LeaseIdRequest {
            id: lease.to_string(),
        };
        let _: serde_json::Value = self.call("/v3/lease/revoke", &request).await?;
        Ok(())
    }

    /// Watches `key` from `start_revision` on (the revision after the one a read returned,
    /// so nothing between the read and the watch is missed).
    pub async fn watch_key(&self, key: &str, start_revision: i64) -> Result<Watch, EtcdError> {
        self.watch(key.as_bytes(), None, start_revision).await
    }

    /// Watches every key under `prefix` from `start_revision` on.
    pub async fn watch_prefix(
        &self,
        prefix: &str,
        start_revision: i64,
    ) -> Result<Watch, EtcdError> {
        let end = prefix_end(prefix.as_bytes());
        self.watch(prefix.as_bytes(), Some(&end), start_revision)
            .await
    }

    async fn watch(
        &self,
        key: &[u8],
        range_end: Option<&[u8]>,
        start_revision: i64,
    ) -> Result<Watch, EtcdError> {
        assert!(start_revision > 0, "a watch starts after a read");
        let request = WatchRequest {
            create_request: WatchCreate {
                key: encode(key),
                range_end: range_end.map(encode),
                start_revision: start_revision.to_string(),
            },
        };
        let body = Bytes::from(serde_json::to_vec(&request).expect("a watch request encodes"));
        let mut last = None;
        for endpoint in &self.endpoints {
            match gateway::post(endpoint, "/v3/watch", body.clone(), self.timeout).await {
                Ok((status, incoming)) if status.is_success() => {
                    return Ok(Watch {
                        endpoint: endpoint.clone(),
                        body: incoming,
                        buf: Vec::new(),
                        start_revision,
                    })
                }
                Ok((status, incoming)) => {
                    return Err(
                        refused(endpoint, "/v3/watch", status, incoming, self.timeout).await,
                    )
                }
                Err(error) => last = Some(error),
            }
        }
        Err(last.expect("at least one endpoint"))
    }

    /// Posts `request` to `path` at the first endpoint that answers, and decodes the answer.
    async fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        path: &'static str,
        request: &Q,
    ) -> Result<A, EtcdError> {
        let body = Bytes::from(serde_json::to_vec(request).expect("requests encode"));
        let mut last = None;
        for endpoint in &self.endpoints {
            let (status, incoming) =
                match gateway::post(endpoint, path, body.clone(), self.timeout).await {
                    Ok(answer) => answer,
                    Err(error) => {
                        last = Some(error);
                        continue;
                    }
                };
            if !status.is_success() {
                return Err(refused(endpoint, path, status, incoming, self.timeout).await);
            }
            let bytes = gateway::read_all(endpoint, incoming, self.timeout).await?;
            return serde_json::from_slice(&bytes).map_err(|e| EtcdError::Decode {
                endpoint: endpoint.clone(),
                path,
                message: e.to_string(),
            });
        }
        Err(last.expect("at least one endpoint"))
    }
}

/// The error of an answer with an error status, with etcd's message if it sent one.
async fn refused(
    endpoint: &str,
    path: &'static str,
    status: StatusCode,
    incoming: Incoming,
    timeout: Duration,
) -> EtcdError {
    let message = match gateway::read_all(endpoint, incoming, timeout).await {
        Ok(bytes) => match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) if !body.message.is_empty() => body.message,
            Ok(body) if !body.error.is_empty() => body.error,
            _ => String::from_utf8_lossy(&bytes).chars().take(200).collect(),
        },
        Err(error) => error.to_string(),
    };
    EtcdError::Refused {
        endpoint: endpoint.to_string(),
        path,
        status,
        message,
    }
}

/// The end of the range of keys that start with `prefix`: the prefix with its last byte
/// below 0xff incremented (etcd's own rule; `\0` means "to the end of the keys").
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Watch {
    /// The next changes, waiting as long as it takes; an error once the watch is over (etcd
    /// stopped, the connection broke, or the start revision was compacted).
    pub async fn next(&mut self) -> Result<Vec<Change>, EtcdError> {
        loop {
            if let Some(message) = self.take_message()? {
                let response = match message {
                    Streamed {
                        result: Some(response),
                        ..
                    } => response,
                    Streamed { error, .. } => {
                        let error = error.map(|e| e.to_string()).unwrap_or_default();
                        return Err(EtcdError::WatchEnded(error));
                    }
                };
                if response.compact_revision > 0 {
                    return Err(EtcdError::Compacted {
                        wanted: self.start_revision,
                        compacted: response.compact_revision,
                    });
                }
                if response.canceled {
                    return Err(EtcdError::WatchEnded(response.cancel_reason));
                }
                if response.created || response.events.is_empty() {
                    continue;
                }
                let changes = response.events.into_iter().map(|event| Change {
                    value: (event.kind != "DELETE").then_some(event.kv.value),
                    key: event.kv.key,
                    mod_revision: event.kv.mod_revision,
                });
                return Ok(changes.collect());
            }
            self.read_more().await?;
        }
    }

    /// The first complete message in the buffer, if there is one.
    fn take_message(&mut self) -> Result<Option<Streamed<WatchResponse>>, EtcdError> {
        let mut messages =
            serde_json::Deserializer::from_slice(&self.buf).into_iter::<Streamed<WatchResponse>>();
        match messages.next() {
            None => Ok(None),
            Some(Err(error)) if error.is_eof() => Ok(None),
            Some(Err(error)) => Err(EtcdError::Decode {
                endpoint: self.endpoint.clone(),
                path: "/v3/watch",
                message: error.to_string(),
            }),
            Some(Ok(message)) => {
                let used = messages.byte_offset();
                self.buf.drain(..used);
                Ok(Some(message))
            }
        }
    }

    async fn read_more(&mut self) -> Result<(), EtcdError> {
        use http_body_util::BodyExt;
        if self.body.is_end_stream() {
            return Err(EtcdError::WatchEnded("etcd closed the stream".into()));
        }
        match self.body.frame().await {
            None => Err(EtcdError::WatchEnded("etcd closed the stream".into())),
            Some(Err(error)) => Err(EtcdError::WatchEnded(error.to_string())),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    self.buf.extend_from_slice(&data);
                }
                if self.buf.len() > WATCH_MESSAGE_BYTES_MAX {
                    return Err(EtcdError::WatchEnded(format!(
                        "a watch message over {WATCH_MESSAGE_BYTES_MAX} bytes"
                    )));
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        let timeout = Duration::from_secs(1);
        let etcd = Etcd::new("http://127.0.0.1:2379, 10.0.0.2:2379/", timeout).unwrap();
        assert_eq!(etcd.endpoints(), "127.0.0.1:2379,10.0.0.2:2379");
        for bad in [
            "",
            "http://",
            "127.0.0.1",
            "https://h:1",
            "h:port",
            "http://h:1/x/y:z",
        ] {
            let error = Etcd::new(bad, timeout).unwrap_err().to_string();
            assert!(error.contains("bad etcd endpoint"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_prefix_ends_past_every_key_it_starts() {
        assert_eq!(prefix_end(b"/walletd/"), b"/walletd0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
