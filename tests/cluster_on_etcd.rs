//! A cluster whose map lives in a private etcd, of real `wallet node --etcd` processes, for
//! the end-to-end tests of such clusters: the etcd, the nodes' addresses and data, the
//! `wallet cluster` commands, and transfers through the nodes' HTTP ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};

use crate::etcd::PrivateEtcd;
use crate::{accounts_in, http, wait_until, Server, Wallet};

pub struct EtcdCluster {
    /// Partitions of the cluster.
    pub partitions: u32,
    pub _tmp: tempfile::TempDir,
    pub wallet: Wallet,
    pub etcd: PrivateEtcd,
    pub data: PathBuf,
    pub secret_file: PathBuf,
    /// HTTP and peer addresses of every node, the one that joins later included.
    pub http: Vec<SocketAddr>,
    pub peer: Vec<String>,
    pub nodes: Vec<Server>,
}

impl EtcdCluster {
    /// A cluster of `nodes` nodes (none started) and `partitions` partitions on `etcd`, in a
    /// temporary directory, with addresses for one more node to join later; and its cluster
    /// file, for `wallet cluster init`.
    pub fn new(
        etcd: PrivateEtcd,
        wallet: Wallet,
        partitions: u32,
        nodes: usize,
        secret: &str,
    ) -> (EtcdCluster, String) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ports = crate::free_ports(2 * (nodes + 1));
        let http: Vec<SocketAddr> = (0..=nodes)
            .map(|n| format!("127.0.0.1:{}", ports[n]).parse().expect("address"))
            .collect();
        let peer: Vec<String> = (0..=nodes)
            .map(|n| format!("127.0.0.1:{}", ports[nodes + 1 + n]))
            .collect();
        let config = write_cluster_file(tmp.path(), partitions, nodes, &http, &peer);
        let secret_file = tmp.path().join("secret");
        std::fs::write(&secret_file, secret).expect("write the secret");
        let cluster = EtcdCluster {
            partitions,
            data: tmp.path().join("data"),
            secret_file,
            _tmp: tmp,
            wallet,
            etcd,
            http,
            peer,
            nodes: Vec::new(),
        };
        (cluster, config.display().to_string())
    }

    pub fn cluster(&self, args: &[&str]) -> Output {
        let url = self.etcd.url();
        let mut all = vec!["cluster", args[0], "--etcd", &url];
        all.extend(&args[1..]);
        self.wallet.run(&all)
    }

    pub fn status(&self) -> Option<Value> {
        let output = self.cluster(&["status", "--format", "json"]);
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).expect("status --format json is JSON"))
    }

    pub fn start_node(&mut self, id: u32) {
        let node = self.spawn_node(id);
        self.nodes.push(node);
    }

    /// Stops every node (each must exit cleanly), then checks the directories of nodes 0 to
    /// `nodes - 1` together with `wallet verify`: it must pass, money conserved.
    pub fn stop_and_verify(&mut self, nodes: usize) {
        for node in std::mem::take(&mut self.nodes) {
            // A node that stopped on its own (removed from the map) was waited for already.
            if !node.is_running() {
                continue;
            }
            let status = node.terminate();
            assert!(
                status.success(),
                "a node exited with {status}:\n{}",
                node.logs()
            );
        }
        let mut args = vec!["verify".to_string()];
        for id in 0..nodes {
            let dir = self.data.join(format!("node-{id}"));
            args.extend(["--data-dir".to_string(), dir.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let verified = self.wallet.run(&args);
        let report = String::from_utf8_lossy(&verified.stdout);
        assert!(
            verified.status.success(),
            "verify of the whole cluster:\n{report}"
        );
        assert!(report.contains(": conserved"), "{report}");
    }

    /// Kills node `id` (SIGKILL, as a crash) and starts it again on its data.
    pub fn crash_and_restart(&mut self, id: u32) {
        self.nodes[id as usize].kill9();
        self.nodes[id as usize] = self.spawn_node(id);
    }

    fn spawn_node(&self, id: u32) -> Server {
        let secret = self.secret_file.display().to_string();
        let extra = ["--secret-file", &secret, "--lease-ttl-s", "3"];
        self.wallet
            .node_on_etcd(&self.etcd.url(), id, &self.data, &extra)
    }

    /// Waits until every running node answers for every partition (404 for an account that
    /// does not exist is an answer; 503 means a link is not up yet).
    pub fn wait_ready(&self) {
        let ready = wait_until(Duration::from_secs(30), || {
            self.running_http().iter().all(|via| {
                (0..self.partitions).all(|p| {
                    let account = &accounts_in("probe-", p, self.partitions, 1)[0];
                    let url = format!("/v1/accounts/{account}/balance");
                    http::request(*via, "GET", &url, &[], None).is_ok_and(|r| r.status == 404)
                })
            })
        });
        assert!(ready, "the cluster did not link up:\n{}", self.logs());
    }

    pub fn running_http(&self) -> Vec<SocketAddr> {
        self.http[..self.nodes.len()].to_vec()
    }

    /// Waits until `status` shows `count` nodes live, each running map version `version`.
    pub fn wait_status(&self, count: usize, version: u64) -> Value {
        let mut last = Value::Null;
        let shown = wait_until(Duration::from_secs(30), || {
            let Some(status) = self.status() else {
                return false;
            };
            let nodes = status["nodes"].as_array().expect("nodes").clone();
            last = status;
            nodes.len() == count
                && nodes
                    .iter()
                    .all(|n| n["live"] == true && n["map_version"] == json!(version))
        });
        assert!(
            shown,
            "status never showed {count} live nodes on map version {version}: {last:#}\n{}",
            self.logs()
        );
        last
    }

    /// Opens each of `accounts` in USD and deposits 1000.00 into it, through the first
    /// `nodes` nodes in turn.
    pub fn open_and_fund(&self, accounts: &[String], nodes: usize) {
        for (i, account) in accounts.iter().enumerate() {
            let via = self.http[i % nodes];
            let open = json!({"account_id": account, "currency": "USD"});
            let opened = post(via, "/v1/accounts", &open);
            assert_eq!(opened.expect("open").status, 201);
            let deposit = json!({"amount": "1000.00", "currency": "USD", "transaction_id": "open"});
            let path = format!("/v1/accounts/{account}/deposit");
            assert_eq!(post(via, &path, &deposit).expect("deposit").status, 200);
        }
    }

    pub fn logs(&self) -> String {
        let mut all = String::new();
        for (id, node) in self.nodes.iter().enumerate() {
            all.push_str(&format!("--- node {id}\n{}\n", node.logs()));
        }
        all
    }
}

pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Result<http::Response, String> {
    let body = body.to_string();
    let headers = [("Content-Type", "application/json")];
    http::request(addr, "POST", path, &headers, Some(body.as_bytes()))
}

pub fn transfer(via: SocketAddr, from: &str, to: &str, id: &str) -> Result<http::Response, String> {
    let body = json!({"from_account": from, "to_account": to, "amount": "1.00",
                      "currency": "USD", "transaction_id": id});
    post(via, "/v1/wallet/balance_transfer", &body)
}

/// `rounds` transfers through each of `vias`, each between accounts of different
/// partitions; every one must commit.
pub fn transfers_commit(vias: &[SocketAddr], accounts: &[String], tag: &str, rounds: usize) {
    for round in 0..rounds {
        for (i, via) in vias.iter().enumerate() {
            let from = &accounts[(round + i) % accounts.len()];
            let to = &accounts[(round + i + 1) % accounts.len()];
            let id = format!("{tag}-{round}-{i}");
            let answer = transfer(*via, from, to, &id).expect("transfer");
            assert_eq!(answer.status, 200, "{id} via {via}: {}", answer.text());
            assert_eq!(answer.json()["status"], "committed", "{id}");
        }
    }
}

pub fn cents(text: &str) -> u64 {
    let (whole, fraction) = text.split_once('.').expect("two decimals");
    whole.parse::<u64>().unwrap() * 100 + fraction.parse::<u64>().unwrap()
}

pub fn write_cluster_file(
    dir: &Path,
    partitions: u32,
    nodes: usize,
    http: &[SocketAddr],
    peer: &[String],
) -> PathBuf {
    let mut text = format!("map_version = 1\npartitions = {partitions}\n");
    for id in 0..nodes {
        text.push_str(&format!(
            "\n[[nodes]]\nid = {id}\nhttp = \"{}\"\npeer = \"{}\"\n",
            http[id], peer[id]
        ));
    }
    let path = dir.join("cluster.toml");
    std::fs::write(&path, text).expect("write the cluster file");
    path
}
