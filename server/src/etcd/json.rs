//! The JSON shapes of the gateway's requests and answers that walletd uses. The gateway
//! writes protobuf's JSON mapping: 64-bit integers as strings, bytes as base64, and fields
//! at their default (0, empty, false) left out, so every field here has a default.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};

/// Bytes as the gateway wants them: base64 text.
pub(super) fn encode(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// `i64` written as a string (as the gateway writes them) or as a number.
fn int64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Text(String),
        Number(i64),
    }
    match Int::deserialize(deserializer)? {
        Int::Number(n) => Ok(n),
        Int::Text(text) => text.parse().map_err(serde::de::Error::custom),
    }
}

/// Base64 text to bytes.
fn bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(deserializer)?;
    BASE64.decode(text).map_err(serde::de::Error::custom)
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Header {
    #[serde(default, deserialize_with = "int64")]
    pub revision: i64,
}

/// One key and its value, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct KeyValue {
    #[serde(default, deserialize_with = "bytes")]
    pub key: Vec<u8>,
    #[serde(default, deserialize_with = "bytes")]
    pub value: Vec<u8>,
    /// The revision that created the key (0: it does not exist).
    #[serde(default, deserialize_with = "int64")]
    pub create_revision: i64,
    /// The revision of its last change: what a compare-and-swap compares.
    #[serde(default, deserialize_with = "int64")]
    pub mod_revision: i64,
    /// The lease it lives by (0: none).
    #[serde(default, deserialize_with = "int64")]
    pub lease: i64,
}

#[derive(Debug, Serialize)]
pub(super) struct RangeRequest {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RangeResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
}

#[derive(Debug, Serialize)]
pub(super) struct PutRequest {
    pub key: String,
    pub value: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub lease: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// A transaction of one comparison on a key's revision and one put.
#[derive(Debug, Serialize)]
pub(super) struct TxnRequest {
    pub compare: [Compare; 1],
    pub success: [RequestOp; 1],
}

#[derive(Debug, Serialize)]
pub(super) struct Compare {
    pub key: String,
    /// `CREATE` (the key's create revision) or `MOD` (its last change).
    pub target: &'static str,
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mod_revision: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct RequestOp {
    pub request_put: PutRequest,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct TxnResponse {
    #[serde(default)]
    pub succeeded: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct LeaseGrantRequest {
    #[serde(rename = "TTL")]
    pub ttl: i64,
}

#[derive(Debug, Serialize)]
pub(super) struct LeaseIdRequest {
    #[serde(rename = "ID")]
    pub id: String,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct LeaseGrantResponse {
    #[serde(rename = "ID", default, deserialize_with = "int64")]
    pub id: i64,
    #[serde(default)]
    pub error: String,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct LeaseKeepAliveResponse {
    #[serde(rename = "TTL", default, deserialize_with = "int64")]
    pub ttl: i64,
}

/// Streaming answers (keep-alive, watch) come wrapped: `{"result": ...}`, or `{"error": ...}`.
#[derive(Debug, Deserialize)]
pub(super) struct Streamed<T> {
    pub result: Option<T>,
    pub error: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub(super) struct WatchRequest {
    pub create_request: WatchCreate,
}

#[derive(Debug, Serialize)]
pub(super) struct WatchCreate {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    pub start_revision: String,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct WatchResponse {
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub canceled: bool,
    #[serde(default, deserialize_with = "int64")]
    pub compact_revision: i64,
    #[serde(default)]
    pub cancel_reason: String,
    #[serde(default)]
    pub events: Vec<WatchEvent>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct WatchEvent {
    /// `PUT` is left out (it is the default); `DELETE` is written.
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub kv: KeyValue,
}

/// The gateway's error body: `{"error": "...", "code": 14, "message": "..."}`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ErrorBody {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decode_as_the_gateway_writes_them() {
        let range: RangeResponse = serde_json::from_str(
            r#"{"header":{"cluster_id":"1","revision":"7","raft_term":"2"},
                "kvs":[{"key":"L3cvbWFw","create_revision":"2","mod_revision":"3","version":"2","value":"aGVsbG8="}],
                "count":"1"}"#,
        )
        .unwrap();
        assert_eq!(range.header.revision, 7);
        assert_eq!(range.kvs[0].key, b"/w/map");
        assert_eq!(range.kvs[0].value, b"hello");
        assert_eq!(
            (range.kvs[0].create_revision, range.kvs[0].mod_revision),
            (2, 3)
        );
        let empty: RangeResponse = serde_json::from_str(r#"{"header":{"revision":"9"}}"#).unwrap();
        assert!(empty.kvs.is_empty(), "no kvs field: no keys");
        let expired: Streamed<LeaseKeepAliveResponse> =
            serde_json::from_str(r#"{"result":{"header":{"revision":"3"},"ID":"75"}}"#).unwrap();
        assert_eq!(expired.result.unwrap().ttl, 0, "no TTL: the lease is gone");
        let watch: Streamed<WatchResponse> = serde_json::from_str(
            r#"{"result":{"header":{"revision":"3"},"events":[{"type":"DELETE","kv":{"key":"L3cvbWFw","mod_revision":"3"}}]}}"#,
        )
        .unwrap();
        let watch = watch.result.unwrap();
        assert_eq!(watch.events[0].kind, "DELETE");
        assert_eq!(watch.events[0].kv.mod_revision, 3);
    }

    #[test]
    fn requests_encode_keys_as_base64() {
        let request = RangeRequest {
            key: encode(b"/w/map"),
            range_end: None,
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"key":"L3cvbWFw"}"#
        );
    }
}
