//! One GET to a node's HTTP API, from another walletd process: the cluster commands' polls
//! of `GET /v1/cluster` and a node's forwarded history reads. Plain HTTP/1.1, or HTTPS when
//! given the CA that signed the nodes' API certificates (`--cacert` on the cluster
//! commands): the node's certificate must then chain to it and name the host of the node's
//! address, as a browser would check it.
//!
//! One connection per request, with its answer's body bounded: these are rare requests
//! (a poll every 200 ms, a forwarded page), not a hot path.

use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use walletd_runtime::net::crypto_provider;

use crate::tls::{read_certificates, TlsConfigError};

/// How requests reach a node: see the module docs.
#[derive(Clone, Default)]
pub struct NodeHttp {
    tls: Option<TlsConnector>,
}

impl std::fmt::Debug for NodeHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeHttp({})", self.scheme())
    }
}

/// A node's answer.
#[derive(Debug)]
pub struct NodeAnswer {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

impl NodeHttp {
    /// Plain HTTP.
    pub fn plain() -> NodeHttp {
        NodeHttp::default()
    }

    /// HTTPS, trusting the certificates of the PEM file `ca` (and nothing else).
    pub fn https(ca: &Path) -> Result<NodeHttp, TlsConfigError> {
        let mut roots = RootCertStore::empty();
        for certificate in read_certificates(ca, "CA")? {
            roots.add(certificate).map_err(|error| TlsConfigError::Ca {
                path: ca.display().to_string(),
                message: error.to_string(),
            })?;
        }
        let mut config = ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(NodeHttp {
            tls: Some(TlsConnector::from(Arc::new(config))),
        })
    }

    /// HTTPS with `ca` when given one, plain HTTP otherwise.
    pub fn with_ca(ca: Option<&Path>) -> Result<NodeHttp, TlsConfigError> {
        ca.map_or(Ok(NodeHttp::plain()), NodeHttp::https)
    }

    /// `http` or `https`, for messages.
    pub fn scheme(&self) -> &'static str {
        match self.tls {
            Some(_) => "https",
            None => "http",
        }
    }

    /// `GET path` (with its query) from the node at `address` (`host:port`), with
    /// `headers`, reading at most `body_max` bytes of its answer. The error says what
    /// failed, in words; the caller bounds the time.
    pub async fn get(
        &self,
        address: &str,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body_max: usize,
    ) -> Result<NodeAnswer, String> {
        let mut request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(HOST, address);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => exchange(tcp, request, body_max).await,
            Some(connector) => {
                let name = server_name(address)?;
                let tls = (connector.connect(name, tcp).await)
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                exchange(tls, request, body_max).await
            }
        }
    }
}

/// One request and its answer on a fresh connection.
async fn exchange<S>(
    stream: S,
    request: Request<Empty<Bytes>>,
    body_max: usize,
) -> Result<NodeAnswer, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    // Ends with the exchange; its errors surface on the request.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let content_type = response.headers().get(CONTENT_TYPE).cloned();
    let body = Limited::new(response.into_body(), body_max)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(NodeAnswer {
        status,
        content_type,
        body,
    })
}

/// The name the node's certificate must carry: the host of its `host:port` address.
fn server_name(address: &str) -> Result<ServerName<'static>, String> {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("the host of {address:?} is neither a DNS name nor an IP address"))
}

#[cfg(test)]
mod tests;
