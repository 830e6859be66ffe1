//! A GET over HTTPS reaches a node whose certificate the given CA signed, for the host of
//! its address; another CA, another name or plain HTTP against it fail, saying why.

use std::path::{Path, PathBuf};

use axum::routing::get;
use axum::Router;
use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, KeyPair};
use tokio::net::TcpListener;

use super::*;

fn new_ca() -> (Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    (params.self_signed(&key).unwrap(), key)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// An HTTPS server on a loopback port answering `GET /v1/cluster` with a certificate of
/// `ca` for `names`; its address.
async fn https_node(dir: &Path, ca: &(Certificate, KeyPair), names: &[&str]) -> String {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca.0, &ca.1)
        .unwrap();
    let cert = write(dir, "node.pem", &cert.pem());
    let key = write(dir, "node.key", &key.serialize_pem());
    let acceptor = crate::tls::https_acceptor(&cert, &key).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let router = Router::new().route("/v1/cluster", get(|| async { "{\"partitions\":[]}" }));
    tokio::spawn(crate::https::serve_https(
        listener,
        acceptor,
        router,
        std::future::pending(),
    ));
    address
}

#[tokio::test]
async fn https_reaches_a_node_the_ca_vouches_for_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca();
    let ca_file = write(dir.path(), "ca.pem", &ca.0.pem());
    let address = https_node(dir.path(), &ca, &["127.0.0.1"]).await;

    let https = NodeHttp::https(&ca_file).unwrap();
    assert_eq!(https.scheme(), "https");
    let answer = https.get(&address, "/v1/cluster", &[], 1024).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(&answer.body[..], b"{\"partitions\":[]}");

    // A body over the bound is refused, not truncated.
    assert!(https.get(&address, "/v1/cluster", &[], 4).await.is_err());

    // Another CA: the certificate is not trusted.
    let other = new_ca();
    let other_file = write(dir.path(), "other.pem", &other.0.pem());
    let refused = NodeHttp::https(&other_file)
        .unwrap()
        .get(&address, "/v1/cluster", &[], 1024)
        .await
        .unwrap_err();
    assert!(refused.contains("TLS handshake"), "{refused}");

    // Plain HTTP against an HTTPS node gets no answer it can read.
    assert!(NodeHttp::plain()
        .get(&address, "/v1/cluster", &[], 1024)
        .await
        .is_err());
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca();
    let ca_file = write(dir.path(), "ca.pem", &ca.0.pem());
    let address = https_node(dir.path(), &ca, &["node-7.example"]).await;
    let refused = NodeHttp::https(&ca_file)
        .unwrap()
        .get(&address, "/v1/cluster", &[], 1024)
        .await
        .unwrap_err();
    assert!(refused.contains("TLS handshake"), "{refused}");
}

#[test]
fn a_ca_file_that_cannot_be_used_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let error = NodeHttp::with_ca(Some(&missing)).err().unwrap().to_string();
    assert!(error.contains("missing.pem"), "{error}");
    let empty = write(dir.path(), "empty.pem", "");
    let error = NodeHttp::https(&empty).err().unwrap().to_string();
    assert!(error.contains("empty.pem"), "{error}");
    assert_eq!(NodeHttp::with_ca(None).unwrap().scheme(), "http");
}
