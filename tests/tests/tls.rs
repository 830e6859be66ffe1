//! TLS with real processes and certificates made here (rcgen): `wallet serve` over HTTPS only;
//! a two-node cluster whose peer links run under mutual TLS and move money; and peers the
//! cluster's CA did not vouch for (a certificate of another CA, or none), refused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{json, Value};
use walletd_e2e::{accounts_in, free_ports, http, wait_until, wallet, Server};
use walletd_runtime::net::crypto_provider;

const PARTITIONS: u32 = 4;
const SECRET: &str = "the tls cluster's shared secret";

/// A certificate authority of its own.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { cert, key }
    }

    /// Writes the CA's certificate to `<dir>/<name>`.
    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.cert.pem()).expect("write the CA");
        path
    }

    /// Issues a certificate for `localhost` and 127.0.0.1, fit for a server and a client, and
    /// writes it to `<dir>/<name>.pem` and its key to `<dir>/<name>.key`.
    fn issue(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("key");
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write the certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write the key");
        (cert_path, key_path)
    }

    /// A client that trusts this CA (and presents no certificate of its own).
    fn client(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).expect("trust the CA");
        let config = ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

/// Opens a TLS session to `addr` as a client of `config`, for the name `localhost`.
fn tls_connect(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> Result<StreamOwned<ClientConnection, std::net::TcpStream>, String> {
    let name = ServerName::try_from("localhost").expect("a DNS name");
    let session = ClientConnection::new(Arc::clone(config), name).map_err(|e| e.to_string())?;
    Ok(StreamOwned::new(session, http::connect(addr)?))
}

/// One HTTPS request; `Err` if TLS or HTTP failed.
fn https(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<http::Response, String> {
    let body = body.map(Value::to_string);
    let headers: &[(&str, &str)] = match body {
        Some(_) => &[("Content-Type", "application/json")],
        None => &[],
    };
    let raw = http::request_bytes(
        addr,
        method,
        path,
        headers,
        body.as_deref().map(str::as_bytes),
    );
    http::exchange(&mut tls_connect(addr, config)?, &raw)
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> http::Response {
    let body = body.to_string();
    let headers = [("Content-Type", "application/json")];
    http::request(addr, "POST", path, &headers, Some(body.as_bytes())).expect("POST")
}

#[test]
fn serve_with_a_certificate_answers_https_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("walletd test CA");
    let (cert, key) = ca.issue(tmp.path(), "server");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let wallet = wallet!();
    let server = wallet.serve(
        &tmp.path().join("data"),
        &["--tls-cert", &cert, "--tls-key", &key],
    );
    let announced = wait_until(Duration::from_secs(5), || {
        server.logs().contains("listening on https://")
    });
    assert!(announced, "{}", server.logs());

    let client = ca.client();
    let health = https(server.addr, &client, "GET", "/healthz", None).expect("HTTPS");
    assert_eq!((health.status, health.text().trim()), (200, "ok"));
    let open = json!({"account_id": "alice", "currency": "USD"});
    let opened = https(server.addr, &client, "POST", "/v1/accounts", Some(&open)).expect("HTTPS");
    assert_eq!(opened.status, 201, "{}", opened.text());
    let balance = https(
        server.addr,
        &client,
        "GET",
        "/v1/accounts/alice/balance",
        None,
    )
    .expect("HTTPS");
    assert_eq!(balance.json()["balance"], "0.00");

    // Plain HTTP gets no HTTP answer, and a client that trusts another CA no session.
    let plain = http::request(server.addr, "GET", "/healthz", &[], None);
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    let stranger = Ca::new("another CA").client();
    let refused = https(server.addr, &stranger, "GET", "/healthz", None);
    let error = refused.expect_err("a client of another CA got an answer");
    assert!(error.contains("UnknownIssuer"), "{error}");

    // Graceful shutdown works over TLS as over plain HTTP.
    let status = server.terminate();
    assert!(status.success(), "exit {status}:\n{}", server.logs());
}

/// Two `wallet node` processes whose cluster file has a `[tls]` section; node 1's certificate
/// is signed by `node1_ca`, the one every node trusts being `ca`.
struct TlsCluster {
    _tmp: tempfile::TempDir,
    http: [SocketAddr; 2],
    peer: [SocketAddr; 2],
    nodes: [Server; 2],
}

impl TlsCluster {
    fn start(ca: &Ca, node1_ca: &Ca, node1_extra: &[&str]) -> TlsCluster {
        TlsCluster::start_with(ca, node1_ca, [&[], node1_extra])
    }

    /// The same, each node started with its own extra arguments.
    fn start_with(ca: &Ca, node1_ca: &Ca, extra: [&[&str]; 2]) -> TlsCluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        ca.write(dir, "ca.pem");
        ca.issue(dir, "node-0");
        node1_ca.issue(dir, "node-1");
        let ports = free_ports(4);
        let addr = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().expect("addr") };
        let (http, peer) = (
            [addr(ports[0]), addr(ports[1])],
            [addr(ports[2]), addr(ports[3])],
        );
        let mut text = format!(
            "map_version = 1\npartitions = {PARTITIONS}\nreplicas = 1\nsecret = \"{SECRET}\"\n"
        );
        for id in 0..2 {
            text.push_str(&format!(
                "\n[[nodes]]\nid = {id}\nhttp = \"{}\"\npeer = \"{}\"\n",
                http[id], peer[id]
            ));
        }
        text.push_str(
            "\n[tls]\nca = \"ca.pem\"\ncert = \"node-{id}.pem\"\nkey = \"node-{id}.key\"\n",
        );
        let config = dir.join("cluster.toml");
        std::fs::write(&config, text).expect("write the cluster file");
        let wallet = wallet!();
        let data = dir.join("data");
        let nodes = [
            wallet.node(&config, 0, &data, extra[0]),
            wallet.node(&config, 1, &data, extra[1]),
        ];
        TlsCluster {
            _tmp: tmp,
            http,
            peer,
            nodes,
        }
    }

    fn logs(&self) -> String {
        format!(
            "--- node 0\n{}\n--- node 1\n{}",
            self.nodes[0].logs(),
            self.nodes[1].logs()
        )
    }
}

/// Whether one line of `node`'s log holds all of `words`.
fn logged(node: &Server, words: &[&str]) -> bool {
    node.logs()
        .lines()
        .any(|line| words.iter().all(|word| line.contains(word)))
}

/// An account on partition `p`: node `p % 2` owns it (the even spread over two nodes).
fn account_on(p: u32) -> String {
    accounts_in("tls-", p, PARTITIONS, 1).remove(0)
}

#[test]
fn nodes_under_mutual_tls_move_money_across_nodes() {
    let ca = Ca::new("walletd cluster CA");
    let tmp_certs = tempfile::tempdir().expect("tempdir");
    // Node 1 serves its API over HTTPS too, with the certificate of its peer links.
    let (cert, key) = ca.issue(tmp_certs.path(), "api");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let cluster = TlsCluster::start(&ca, &ca, &["--tls-cert", &cert, "--tls-key", &key]);
    let client = ca.client();
    let [via0, via1] = cluster.http;
    let (alice, bob) = (account_on(0), account_on(1));

    // Both links are up once each node answers for the other's partitions (404: no such
    // account yet; 503 while the link is down).
    let linked = wait_until(Duration::from_secs(20), || {
        let via0_sees_1 = http::request(
            via0,
            "GET",
            &format!("/v1/accounts/{bob}/balance"),
            &[],
            None,
        )
        .is_ok_and(|r| r.status == 404);
        let via1_sees_0 = https(
            via1,
            &client,
            "GET",
            &format!("/v1/accounts/{alice}/balance"),
            None,
        )
        .is_ok_and(|r| r.status == 404);
        via0_sees_1 && via1_sees_0
    });
    assert!(linked, "the nodes did not link up:\n{}", cluster.logs());

    // Opened through the node that does not own them: forwarded over the TLS links.
    let open = |account: &str| json!({"account_id": account, "currency": "USD"});
    let opened = https(via1, &client, "POST", "/v1/accounts", Some(&open(&alice))).expect("HTTPS");
    assert_eq!(opened.status, 201, "{}", opened.text());
    assert_eq!(post(via0, "/v1/accounts", &open(&bob)).status, 201);
    let deposit = json!({"amount": "100.00", "currency": "USD", "transaction_id": "dep-1"});
    assert_eq!(
        post(via0, &format!("/v1/accounts/{alice}/deposit"), &deposit).status,
        200
    );

    let transfer = json!({"from_account": alice, "to_account": bob, "amount": "12.34",
                          "currency": "USD", "transaction_id": "t-1"});
    let r = post(via0, "/v1/wallet/balance_transfer", &transfer);
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, json!("committed")),
        "{}",
        r.text()
    );
    let settled = wait_until(Duration::from_secs(20), || {
        https(
            via1,
            &client,
            "GET",
            &format!("/v1/accounts/{bob}/balance"),
            None,
        )
        .is_ok_and(|r| r.status == 200 && r.json()["balance"] == "12.34")
    });
    assert!(settled, "bob was not credited:\n{}", cluster.logs());
    let alice_now = http::request(
        via0,
        "GET",
        &format!("/v1/accounts/{alice}/balance"),
        &[],
        None,
    )
    .expect("GET")
    .json();
    assert_eq!(alice_now["balance"], "87.66");
    for node in &cluster.nodes {
        assert!(
            node.logs().contains("peer authenticated"),
            "{}",
            cluster.logs()
        );
        assert!(node.logs().contains("peer_tls=true"), "{}", cluster.logs());
    }
}

/// Both nodes serve their API over HTTPS and know the CA of each other's certificates
/// (`--tls-ca`): a history read through the node that does not keep the account is
/// forwarded to the one that does, over HTTPS.
#[test]
fn nodes_serving_https_forward_history_reads_over_https() {
    let ca = Ca::new("walletd cluster CA");
    let certs = tempfile::tempdir().expect("tempdir");
    let (cert, key) = ca.issue(certs.path(), "api");
    let ca_file = ca.write(certs.path(), "api-ca.pem");
    let [cert, key, ca_file] = [cert, key, ca_file].map(|p| p.display().to_string());
    let extra = [
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
        "--tls-ca",
        ca_file.as_str(),
    ];
    let cluster = TlsCluster::start_with(&ca, &ca, [&extra, &extra]);
    let client = ca.client();
    let via0 = cluster.http[0];
    let bob = account_on(1);

    // Opened and funded through node 0; node 1 keeps the account.
    let open = json!({"account_id": bob, "currency": "USD"});
    let opened = wait_until(Duration::from_secs(20), || {
        https(via0, &client, "POST", "/v1/accounts", Some(&open))
            .is_ok_and(|r| r.status == 201 || r.status == 409)
    });
    assert!(opened, "bob was not opened:\n{}", cluster.logs());
    let deposit = json!({"amount": "5.00", "currency": "USD", "transaction_id": "dep-https"});
    let path = format!("/v1/accounts/{bob}/deposit");
    let r = https(via0, &client, "POST", &path, Some(&deposit)).expect("HTTPS");
    assert_eq!(r.status, 200, "{}", r.text());

    // Its history, read through node 0: forwarded to node 1 over HTTPS.
    let path = format!("/v1/accounts/{bob}/history");
    let mut last = String::new();
    let forwarded = wait_until(Duration::from_secs(20), || {
        match https(via0, &client, "GET", &path, None) {
            Ok(r) => {
                last = format!("{} {}", r.status, r.text());
                r.status == 200 && last.contains("dep-https")
            }
            Err(error) => {
                last = error;
                false
            }
        }
    });
    assert!(
        forwarded,
        "history not forwarded over HTTPS: {last}\n{}",
        cluster.logs()
    );
}

#[test]
fn a_peer_without_a_certificate_of_the_cluster_ca_is_refused() {
    let ca = Ca::new("walletd cluster CA");
    let intruder_ca = Ca::new("another CA");
    // Node 1 knows the secret and trusts the cluster's CA, but its certificate is another CA's.
    let cluster = TlsCluster::start(&ca, &intruder_ca, &[]);
    let [via0, via1] = cluster.http;
    let (alice, bob) = (account_on(0), account_on(1));

    // Node 0 refuses node 1's connections, and node 1's listener when it connects: it logs
    // why, both times.
    let refused = wait_until(Duration::from_secs(20), || {
        logged(
            &cluster.nodes[0],
            &["peer connection refused", "UnknownIssuer"],
        ) && logged(&cluster.nodes[0], &["cannot reach peer", "UnknownIssuer"])
    });
    assert!(refused, "node 0 did not refuse node 1:\n{}", cluster.logs());
    assert!(
        !cluster.nodes[0].logs().contains("peer authenticated"),
        "{}",
        cluster.logs()
    );

    // Each node serves its own partitions; nothing crosses to or from node 1.
    let open = |account: &str| json!({"account_id": account, "currency": "USD"});
    assert_eq!(post(via0, "/v1/accounts", &open(&alice)).status, 201);
    assert_eq!(post(via1, "/v1/accounts", &open(&bob)).status, 201);
    let r = post(via0, "/v1/accounts", &open(&account_on(3)));
    assert_eq!((r.status, r.code()), (503, "partition_unavailable".into()));
    let deposit = json!({"amount": "100.00", "currency": "USD", "transaction_id": "dep-1"});
    assert_eq!(
        post(via0, &format!("/v1/accounts/{alice}/deposit"), &deposit).status,
        200
    );
    let transfer = json!({"from_account": alice, "to_account": bob, "amount": "12.34",
                          "currency": "USD", "transaction_id": "t-1"});
    let r = post(via0, "/v1/wallet/balance_transfer", &transfer);
    assert_ne!(r.json()["status"], "committed", "{}", r.text());
    let bob_now = http::request(
        via1,
        "GET",
        &format!("/v1/accounts/{bob}/balance"),
        &[],
        None,
    )
    .expect("GET")
    .json();
    assert_eq!(bob_now["balance"], "0.00", "{bob_now}");
    assert_eq!(bob_now["incoming"], "0.00", "{bob_now}");

    // A client with no certificate at all, though it trusts the CA, gets no link either.
    let mut session = tls_connect(cluster.peer[0], &ca.client()).expect("connect");
    let answer = http::exchange(&mut session, b"not a peer frame");
    assert!(answer.is_err(), "{answer:?}");
    let named = wait_until(Duration::from_secs(10), || {
        logged(
            &cluster.nodes[0],
            &["peer connection refused", "peer sent no certificates"],
        )
    });
    assert!(named, "the refusal was not logged:\n{}", cluster.logs());
}
