//! Certificate and key files: good ones load, and each kind of bad one is refused with an
//! error that names the file.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, KeyPair};

use super::*;

/// A CA and a certificate it signed for `localhost`, each with its key.
struct Pki {
    ca: Certificate,
    ca_key: KeyPair,
    cert: Certificate,
    key: KeyPair,
}

fn ca() -> (Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    (params.self_signed(&key).unwrap(), key)
}

fn pki() -> Pki {
    let (ca, ca_key) = ca();
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    Pki {
        ca,
        ca_key,
        cert,
        key,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn files(ca: PathBuf, cert: PathBuf, key: PathBuf) -> TlsFiles {
    TlsFiles { ca, cert, key }
}

#[test]
fn good_files_load_for_https_and_for_peer_links() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let ca = write(dir.path(), "ca.pem", &pki.ca.pem());
    let cert = write(dir.path(), "node.pem", &pki.cert.pem());
    let key = write(dir.path(), "node.key", &pki.key.serialize_pem());
    https_acceptor(&cert, &key).unwrap();
    peer_tls(&files(ca, cert, key)).unwrap();
}

#[test]
fn an_unreadable_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let key = write(dir.path(), "node.key", &pki.key.serialize_pem());
    let missing = dir.path().join("missing.pem");
    let error = https_acceptor(&missing, &key).err().expect("refused");
    assert!(matches!(error, TlsConfigError::Read { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("certificate file") && text.contains("missing.pem"),
        "{text}"
    );
}

#[test]
fn a_file_without_the_expected_pem_block_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let cert = write(dir.path(), "node.pem", &pki.cert.pem());
    let key = write(dir.path(), "node.key", &pki.key.serialize_pem());
    // The two files swapped: a key where the certificate belongs, and the other way round.
    let error = https_acceptor(&key, &key).err().expect("refused");
    assert!(
        matches!(error, TlsConfigError::NoCertificate { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("node.key"), "{error}");
    let error = https_acceptor(&cert, &cert).err().expect("refused");
    assert!(matches!(error, TlsConfigError::NoKey { .. }), "{error:?}");
    assert!(error.to_string().contains("node.pem"), "{error}");
    let empty = write(dir.path(), "empty.pem", "");
    let error = peer_tls(&files(empty, cert, key)).unwrap_err();
    assert!(
        matches!(error, TlsConfigError::NoCertificate { what: "CA", .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("CA file") && error.to_string().contains("empty.pem"));
}

#[test]
fn broken_pem_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let key = write(dir.path(), "node.key", &pki.key.serialize_pem());
    let cut = pki.cert.pem().replace("-----END CERTIFICATE-----", "");
    let cut = write(dir.path(), "cut.pem", &cut);
    let error = https_acceptor(&cut, &key).err().expect("refused");
    assert!(matches!(error, TlsConfigError::Pem { .. }), "{error:?}");
    assert!(error.to_string().contains("cut.pem"), "{error}");
    let garbled = "-----BEGIN CERTIFICATE-----\n!!! not base64 !!!\n-----END CERTIFICATE-----\n";
    let garbled = write(dir.path(), "garbled.pem", garbled);
    let error = https_acceptor(&garbled, &key).err().expect("refused");
    assert!(matches!(error, TlsConfigError::Pem { .. }), "{error:?}");
    assert!(error.to_string().contains("garbled.pem"), "{error}");
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let cert = write(dir.path(), "node.pem", &pki.cert.pem());
    let other = write(dir.path(), "other.key", &pki.ca_key.serialize_pem());
    let error = https_acceptor(&cert, &other).err().expect("refused");
    assert!(
        matches!(error, TlsConfigError::Identity { .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("node.pem") && text.contains("other.key"),
        "{text}"
    );
    let ca = write(dir.path(), "ca.pem", &pki.ca.pem());
    let error = peer_tls(&files(ca, cert, other)).unwrap_err();
    assert!(
        matches!(error, TlsConfigError::Identity { .. }),
        "{error:?}"
    );
}

#[test]
fn a_ca_file_that_holds_no_usable_certificate_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let cert = write(dir.path(), "node.pem", &pki.cert.pem());
    let key = write(dir.path(), "node.key", &pki.key.serialize_pem());
    // Valid PEM around bytes that are no certificate.
    let bogus = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
    let ca = write(dir.path(), "bogus-ca.pem", bogus);
    let error = peer_tls(&files(ca, cert, key)).unwrap_err();
    assert!(matches!(error, TlsConfigError::Ca { .. }), "{error:?}");
    assert!(error.to_string().contains("bogus-ca.pem"), "{error}");
}
