//! Two nodes in one process linking under mutual TLS over loopback TCP, with certificates made
//! here: they link when the cluster's CA signed both certificates for the hosts they are
//! dialled at, and never otherwise.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::PrivatePkcs8KeyDer;
use tempfile::TempDir;
use tokio::net::TcpListener;
use walletd_core::model::partition::{NodeAddress, NodeId, PartitionMap};

use super::*;
use crate::engine::EngineConfig;
use crate::net::{start_node_with, ClusterNode, NetConfig, NodeConfig};
use crate::storage::file::{FileStorage, FileStorageConfig};

const SECRET: &[u8] = b"a cluster secret for the tests";

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// What a node of the cluster `self` is the CA of needs, with a certificate `signer`
    /// signed for `names`.
    fn node(&self, signer: &Ca, names: &[&str]) -> PeerCertificates {
        let key = KeyPair::generate().unwrap();
        let names = names
            .iter()
            .map(|name| name.to_string())
            .collect::<Vec<_>>();
        let params = CertificateParams::new(names).unwrap();
        let cert = params.signed_by(&key, &signer.cert, &signer.key).unwrap();
        PeerCertificates {
            ca: vec![self.cert.der().clone()],
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }
}

fn config() -> NodeConfig {
    NodeConfig {
        engine: EngineConfig::default(),
        net: NetConfig {
            connect_backoff_initial_ms: 10,
            connect_backoff_max_ms: 100,
            ..NetConfig::default()
        },
        nonce_seed: [7; 32],
    }
}

/// Nodes 0 and 1 of a two-partition cluster on loopback, over mutual TLS with `tls[n]`.
async fn two_nodes(tls: [PeerCertificates; 2]) -> (TempDir, [ClusterNode; 2]) {
    let dir = tempfile::tempdir().unwrap();
    let listeners = [
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    ];
    let mut nodes = BTreeMap::new();
    for (n, listener) in listeners.iter().enumerate() {
        let address = NodeAddress {
            http: format!("127.0.0.1:{}", 1 + n),
            peer: listener.local_addr().unwrap().to_string(),
        };
        nodes.insert(n as NodeId, address);
    }
    let map = PartitionMap {
        version: 1,
        owners: vec![0, 1],
        nodes,
    };
    let mut started = Vec::new();
    for ((n, listener), certificates) in listeners.into_iter().enumerate().zip(tls) {
        let node = n as NodeId;
        let path = dir.path().join(format!("node-{n}"));
        let storage = FileStorage::open(path, FileStorageConfig::default()).unwrap();
        let io = MutualTls::new(certificates).unwrap();
        let storages = vec![(node, storage)];
        let started_node = start_node_with(io, listener, &map, node, SECRET, storages, config())
            .await
            .unwrap();
        started.push(started_node);
    }
    let [a, b]: [ClusterNode; 2] = started.try_into().ok().unwrap();
    (dir, [a, b])
}

fn connects(node: &ClusterNode, to: NodeId) -> u64 {
    node.links()[&to].connects.load(Ordering::Relaxed)
}

/// Polls `done` every 10 ms for up to 5 s.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

#[tokio::test]
async fn nodes_link_under_mutual_tls_with_certificates_of_their_ca() {
    let ca = Ca::new();
    let tls = [ca.node(&ca, &["127.0.0.1"]), ca.node(&ca, &["127.0.0.1"])];
    let (_dir, nodes) = two_nodes(tls).await;
    let linked = eventually(|| connects(&nodes[0], 1) > 0 && connects(&nodes[1], 0) > 0).await;
    assert!(linked);
}

#[tokio::test]
async fn a_certificate_of_another_ca_or_for_another_host_never_links() {
    let (ca, other) = (Ca::new(), Ca::new());
    // Node 1's certificate is another CA's: no link either way.
    let tls = [
        ca.node(&ca, &["127.0.0.1"]),
        ca.node(&other, &["127.0.0.1"]),
    ];
    let (_dir, foreign) = two_nodes(tls).await;
    // Node 1's certificate names another host than the one node 0 dials: node 0 does not link
    // to it. Node 1 links to node 0: a connecting node's certificate is checked against the
    // CA only, and which node it is, the cluster secret proves.
    let tls = [
        ca.node(&ca, &["127.0.0.1"]),
        ca.node(&ca, &["node-1.internal"]),
    ];
    let (_dir, misnamed) = two_nodes(tls).await;
    assert!(eventually(|| connects(&misnamed[1], 0) == 1).await);
    // Both nodes of each pair have been retrying meanwhile, every 100 ms at most.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((connects(&foreign[0], 1), connects(&foreign[1], 0)), (0, 0));
    assert_eq!(connects(&misnamed[0], 1), 0);
}

#[test]
fn a_listener_is_checked_against_the_host_it_was_dialled_at() {
    let name = |address| server_name(address).map(|n| n.to_str().into_owned());
    assert_eq!(name("127.0.0.1:9080").unwrap(), "127.0.0.1");
    assert_eq!(name("[::1]:9080").unwrap(), "::1");
    assert_eq!(name("node-2.internal:9080").unwrap(), "node-2.internal");
    assert!(name("not a host:9080").is_err());
}
