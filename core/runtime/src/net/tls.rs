//! Mutual TLS under the peer links: [`MutualTls`], the [`PeerIo`] of a cluster whose file has
//! a `[tls]` section. Every link is TLS 1.3 over [`Tcp`], and both ends present their node's
//! certificate and check the other's against the cluster's CA: the listener refuses a peer
//! without a certificate the CA signed (the link logs why), and a connecting node refuses a
//! listener whose certificate the CA did not sign for the host it dialled.
//!
//! The HMAC handshake still runs, inside the TLS channel. The certificate proves that a peer
//! holds a key the CA vouched for; the cluster secret, that it belongs to this cluster and is
//! the node it claims to be (a certificate names a host, not a node id). Either alone would
//! let in whoever stole the other credential. Past both, frames are encrypted and
//! authenticated by TLS besides their checksums.
//!
//! Real sockets only: not built under `--cfg madsim`, where the simulator brings its own
//! streams.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use super::{PeerIo, Tcp};

/// What a node needs for mutual TLS, as DER (the binary reads it from PEM files).
pub struct PeerCertificates {
    /// The cluster's CA: every peer's certificate must chain to one of these.
    pub ca: Vec<CertificateDer<'static>>,
    /// This node's certificate, then any intermediates. The node presents it both when it
    /// connects and when it accepts, so it must name the host of the node's `peer` address
    /// (as a DNS name or an IP address) and allow server and client authentication.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key of the first certificate of `chain`.
    pub key: PrivateKeyDer<'static>,
}

/// Why mutual TLS cannot be set up from a node's certificates.
#[derive(Debug, thiserror::Error)]
pub enum PeerTlsError {
    #[error("the CA certificates cannot be used: {0}")]
    Ca(String),
    #[error("the node's certificate and key cannot be used: {0}")]
    Identity(rustls::Error),
}

/// TCP under mutual TLS 1.3; see the module docs.
#[derive(Clone)]
pub struct MutualTls {
    connector: TlsConnector,
    acceptor: TlsAcceptor,
}

impl MutualTls {
    pub fn new(certificates: PeerCertificates) -> Result<MutualTls, PeerTlsError> {
        let PeerCertificates { ca, chain, key } = certificates;
        let mut roots = RootCertStore::empty();
        for certificate in ca {
            roots
                .add(certificate)
                .map_err(|e| PeerTlsError::Ca(e.to_string()))?;
        }
        let roots = Arc::new(roots);
        let provider = crypto_provider();
        // Built this way the verifier requires a certificate: a peer without one is refused.
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|e| PeerTlsError::Ca(e.to_string()))?;
        // Both ends are walletd nodes: there is no older peer to allow an older version for.
        let versions = &[&rustls::version::TLS13];
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .expect("the ring provider supports TLS 1.3")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(PeerTlsError::Identity)?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("the ring provider supports TLS 1.3")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(PeerTlsError::Identity)?;
        Ok(MutualTls {
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }
}

impl std::fmt::Debug for MutualTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutualTls").finish_non_exhaustive()
    }
}

impl PeerIo for MutualTls {
    type Stream = TlsStream<TcpStream>;
    type ReadHalf = ReadHalf<TlsStream<TcpStream>>;
    type WriteHalf = WriteHalf<TlsStream<TcpStream>>;

    async fn connect(&self, address: &str) -> io::Result<Self::Stream> {
        let name = server_name(address)?;
        let stream = Tcp.connect(address).await?;
        let stream = self.connector.connect(name, stream).await?;
        Ok(TlsStream::Client(stream))
    }

    async fn accepted(&self, stream: TcpStream, peer: SocketAddr) -> io::Result<Self::Stream> {
        let stream = Tcp.accepted(stream, peer).await?;
        let stream = self.acceptor.accept(stream).await?;
        Ok(TlsStream::Server(stream))
    }

    fn split(&self, stream: Self::Stream) -> (Self::ReadHalf, Self::WriteHalf) {
        // One TLS session serves both directions, so the halves share it behind tokio's lock,
        // which is taken for one read or write at a time and never held across an await.
        tokio::io::split(stream)
    }
}

/// The cryptography of every TLS session walletd runs (peer links, and the binary's HTTPS):
/// *ring*'s. It builds with a C compiler alone, where aws-lc, rustls' default, also needs
/// cmake. rustls deprecated it for lacking post-quantum key exchange: sessions use X25519 or
/// the NIST curves, which is what the clients of the HTTPS API offer today anyway.
#[allow(deprecated)]
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// The name a listener's certificate must carry: the host of its `host:port` address.
fn server_name(address: &str) -> io::Result<ServerName<'static>> {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the host of peer address {address:?} is neither a DNS name nor an IP address"),
        )
    })
}

#[cfg(test)]
mod tests;
