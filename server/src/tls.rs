//! TLS material from PEM files, read and checked before anything starts: the certificate and
//! key of `--tls-cert`/`--tls-key`, which the HTTPS API presents ([`https_acceptor`]), and the
//! `[tls]` files of the cluster file, with which a node's peer links run under mutual TLS
//! ([`peer_tls`]). Every error names the file to fix.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use walletd_runtime::net::{crypto_provider, MutualTls, PeerCertificates, PeerTlsError};

use crate::cluster::TlsFiles;

/// Why a certificate or key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read the {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("the {what} file {path} is not valid PEM: {message}")]
    Pem {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("the {what} file {path} holds no certificate (no PEM `BEGIN CERTIFICATE` block)")]
    NoCertificate { what: &'static str, path: String },
    #[error(
        "the key file {path} holds no private key (no PEM `BEGIN PRIVATE KEY`, \
         `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY` block)"
    )]
    NoKey { path: String },
    #[error(
        "the certificate file {cert} and the key file {key} cannot be used together: {message}"
    )]
    Identity {
        cert: String,
        key: String,
        message: String,
    },
    #[error("the CA file {path} cannot be used: {message}")]
    Ca { path: String, message: String },
}

/// The TLS side of the HTTPS API: the certificate chain in `cert` (the server's certificate
/// first) and its private key in `key`. Clients are not asked for certificates.
pub fn https_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsConfigError> {
    let chain = read_certificates(cert, "certificate")?;
    let private_key = read_private_key(key)?;
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|error| TlsConfigError::Identity {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            message: error.to_string(),
        })?;
    // The API speaks HTTP/1.1 only; saying so in the handshake keeps a client that would
    // rather speak h2 from trying.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The mutual TLS of a node's peer links, from its `[tls]` files.
pub fn peer_tls(files: &TlsFiles) -> Result<MutualTls, TlsConfigError> {
    let certificates = PeerCertificates {
        ca: read_certificates(&files.ca, "CA")?,
        chain: read_certificates(&files.cert, "certificate")?,
        key: read_private_key(&files.key)?,
    };
    MutualTls::new(certificates).map_err(|error| match error {
        PeerTlsError::Ca(message) => TlsConfigError::Ca {
            path: files.ca.display().to_string(),
            message,
        },
        PeerTlsError::Identity(error) => TlsConfigError::Identity {
            cert: files.cert.display().to_string(),
            key: files.key.display().to_string(),
            message: error.to_string(),
        },
    })
}

/// Every certificate in the PEM file at `path`, in order; at least one.
pub(crate) fn read_certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let text = read(path, what)?;
    let certificates = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|error| TlsConfigError::Pem {
            what,
            path: path.display().to_string(),
            message: error.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            what,
            path: path.display().to_string(),
        });
    }
    Ok(certificates)
}

/// The first private key in the PEM file at `path` (PKCS#8, PKCS#1 or SEC1).
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let text = read(path, "key")?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|error| match error {
        pem::Error::NoItemsFound => TlsConfigError::NoKey {
            path: path.display().to_string(),
        },
        other => TlsConfigError::Pem {
            what: "key",
            path: path.display().to_string(),
            message: other.to_string(),
        },
    })
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsConfigError> {
    fs::read(path).map_err(|source| TlsConfigError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests;
