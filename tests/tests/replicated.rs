//! A replicated cluster of three real `wallet node` processes (`replicas = 3`: every partition
//! a Raft group with a replica on every node): clients send transfers through all three HTTP
//! ports while each node in turn, the leader of the transfers' home partition first, is
//! killed with `kill -9` and restarted. Afterwards every transfer a client was told committed
//! is there exactly once, every node holds the same balances, and money is conserved; while
//! a node was down, transfers kept succeeding.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use walletd_e2e::{accounts_in, free_ports, http, wait_until, wallet, Server, Wallet};

const NODES: u32 = 3;
const PARTITIONS: u32 = 4;
const SECRET: &str = "the e2e cluster's shared secret";
/// How long a client keeps retrying one transfer (same transaction id) before the test fails.
const RETRY_FOR: Duration = Duration::from_secs(20);

struct Cluster {
    _tmp: tempfile::TempDir,
    wallet: Wallet,
    config: PathBuf,
    data: PathBuf,
    http: Vec<SocketAddr>,
    nodes: Vec<Option<Server>>,
}

impl Cluster {
    fn start() -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ports = free_ports(2 * NODES as usize);
        let mut text = format!(
            "map_version = 1\npartitions = {PARTITIONS}\nreplicas = {NODES}\nsecret = \"{SECRET}\"\n"
        );
        let mut addresses = Vec::new();
        for id in 0..NODES as usize {
            let (http, peer) = (ports[id], ports[NODES as usize + id]);
            text.push_str(&format!(
                "\n[[nodes]]\nid = {id}\nhttp = \"127.0.0.1:{http}\"\npeer = \"127.0.0.1:{peer}\"\n"
            ));
            addresses.push(format!("127.0.0.1:{http}").parse().expect("address"));
        }
        let config = tmp.path().join("cluster.toml");
        std::fs::write(&config, text).expect("write the cluster file");
        let mut cluster = Cluster {
            data: tmp.path().join("data"),
            _tmp: tmp,
            wallet: wallet!(),
            config,
            http: addresses,
            nodes: Vec::new(),
        };
        for id in 0..NODES {
            let node = cluster.wallet.node(&cluster.config, id, &cluster.data, &[]);
            cluster.nodes.push(Some(node));
        }
        cluster.wait_for_leaders();
        cluster
    }

    fn up(&self) -> Vec<u32> {
        (0..NODES)
            .filter(|id| self.nodes[*id as usize].is_some())
            .collect()
    }

    /// `GET /v1/cluster` of node `id`.
    fn view(&self, id: u32) -> Option<Value> {
        let r = http::request(self.http[id as usize], "GET", "/v1/cluster", &[], None).ok()?;
        (r.status == 200).then(|| r.json())
    }

    /// Waits until every node that is up names the same leader, itself up, for every
    /// partition; returns the leaders.
    fn wait_for_leaders(&self) -> Vec<u32> {
        let mut leaders = Vec::new();
        let agreed = wait_until(Duration::from_secs(30), || {
            let views: Vec<Value> = self.up().iter().filter_map(|id| self.view(*id)).collect();
            if views.len() != self.up().len() {
                return false;
            }
            let of = |view: &Value| -> Vec<Option<u64>> {
                let partitions = view["partitions"].as_array().expect("partitions");
                partitions.iter().map(|p| p["leader"].as_u64()).collect()
            };
            let first = of(&views[0]);
            let all_led = first
                .iter()
                .all(|leader| leader.is_some_and(|l| self.nodes[l as usize].is_some()));
            leaders = first.iter().map(|l| l.unwrap_or(0) as u32).collect();
            all_led && views.iter().all(|view| of(view) == first)
        });
        assert!(agreed, "no agreed leaders:\n{}", self.logs());
        leaders
    }

    fn kill9(&mut self, id: u32) {
        let node = self.nodes[id as usize].take().expect("running");
        node.kill9();
    }

    fn restart(&mut self, id: u32) {
        let node = self.wallet.node(&self.config, id, &self.data, &[]);
        self.nodes[id as usize] = Some(node);
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for (id, node) in self.nodes.iter().enumerate() {
            if let Some(node) = node {
                all.push_str(&format!("--- node {id}\n{}\n", node.logs()));
            }
        }
        all
    }
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> Result<http::Response, String> {
    let body = body.to_string();
    let headers = [("Content-Type", "application/json")];
    http::request(addr, "POST", path, &headers, Some(body.as_bytes()))
}

/// Sends `body` to `path` through the nodes that are up, in turn from `first`, until a
/// node gives a final answer (not 503, not a broken connection): what a client with
/// retries does. Returns the answer and how many attempts failed.
fn until_answered(
    cluster: &Cluster,
    first: usize,
    path: &str,
    body: &Value,
) -> (http::Response, u32) {
    let started = Instant::now();
    let mut failures = 0;
    let mut turn = first;
    loop {
        let up = cluster.up();
        let via = cluster.http[up[turn % up.len()] as usize];
        turn += 1;
        match post(via, path, body) {
            Ok(r) if r.status != 503 => return (r, failures),
            _ => failures += 1,
        }
        assert!(
            started.elapsed() < RETRY_FOR,
            "{path} {body} got no answer in {RETRY_FOR:?}:\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn transfer_body(from: &str, to: &str, cents: u64, id: &str) -> Value {
    json!({"from_account": from, "to_account": to, "currency": "USD", "transaction_id": id,
           "amount": format!("{}.{:02}", cents / 100, cents % 100)})
}

fn balance(via: SocketAddr, account: &str) -> Option<(String, String, String)> {
    let r = http::request(
        via,
        "GET",
        &format!("/v1/accounts/{account}/balance"),
        &[],
        None,
    )
    .ok()?;
    if r.status != 200 {
        return None;
    }
    let b = r.json();
    let field = |name: &str| b[name].as_str().unwrap_or_default().to_string();
    Some((field("balance"), field("held"), field("incoming")))
}

#[test]
fn transfers_survive_kill_9_of_every_node_in_turn_and_every_replica_agrees() {
    let mut cluster = Cluster::start();
    // One account on each partition, each funded with 100.00.
    let accounts: Vec<String> = (0..PARTITIONS)
        .map(|p| accounts_in("acct-", p, PARTITIONS, 1).remove(0))
        .collect();
    for (i, account) in accounts.iter().enumerate() {
        let open = json!({"account_id": account, "currency": "USD"});
        let (r, _) = until_answered(&cluster, i, "/v1/accounts", &open);
        assert!(matches!(r.status, 200 | 201), "{}", r.text());
        let deposit = json!({"amount": "100.00", "currency": "USD", "transaction_id": "fund"});
        let (r, _) = until_answered(
            &cluster,
            i,
            &format!("/v1/accounts/{account}/deposit"),
            &deposit,
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let mut committed: Vec<(String, String)> = Vec::new();
    let mut next = 0u32;
    let mut send = |cluster: &Cluster, committed: &mut Vec<(String, String)>, count: u32| {
        let mut failures = 0;
        for _ in 0..count {
            let n = next;
            next += 1;
            let from = &accounts[n as usize % accounts.len()];
            let to = &accounts[(n as usize + 1) % accounts.len()];
            let id = format!("t{n}");
            let body = transfer_body(from, to, 100, &id);
            let (r, failed) =
                until_answered(cluster, n as usize, "/v1/wallet/balance_transfer", &body);
            failures += failed;
            assert_eq!(r.status, 200, "{id}: {}", r.text());
            assert_eq!(r.json()["status"], "committed", "{id}: {}", r.text());
            committed.push((from.clone(), id));
        }
        failures
    };
    send(&cluster, &mut committed, 20);
    // Each replica's role is in /metrics.
    let metrics = http::request(cluster.http[0], "GET", "/metrics", &[], None).expect("metrics");
    for name in [
        "walletd_replica_leading{partition=\"0\"}",
        "walletd_replica_term{partition=\"3\"}",
    ] {
        assert!(
            metrics.text().contains(name),
            "{name} missing from /metrics"
        );
    }
    // Each node in turn: the leader of partition 0 first, then the others.
    let leaders = cluster.wait_for_leaders();
    let mut victims = vec![leaders[0]];
    victims.extend((0..NODES).filter(|id| *id != leaders[0]));
    for victim in victims {
        cluster.kill9(victim);
        // With one node down every group keeps a majority: transfers go on.
        let failures = send(&cluster, &mut committed, 15);
        eprintln!("node {victim} down: 15 transfers, {failures} failed attempts (retried)");
        cluster.restart(victim);
        cluster.wait_for_leaders();
        send(&cluster, &mut committed, 5);
    }
    // Every transfer a client saw committed is there, once: a retry answers the same.
    for (from, id) in &committed {
        let status = http::request(
            cluster.http[0],
            "GET",
            &format!("/v1/transfers/{from}/{id}"),
            &[],
            None,
        )
        .expect("GET transfer");
        assert_eq!(status.status, 200, "{from}/{id}: {}", status.text());
        assert_eq!(status.json()["status"], "committed", "{from}/{id}");
    }
    // Each account sent and received the same number of 1.00 transfers (a ring), so every
    // balance ends where it started once nothing is held or incoming; every node agrees.
    let expected = ("100.00".to_string(), "0.00".to_string(), "0.00".to_string());
    let transfers = committed.len();
    assert_eq!(
        transfers % accounts.len(),
        0,
        "a whole number of rounds of the ring"
    );
    for id in 0..NODES {
        let via = cluster.http[id as usize];
        for account in &accounts {
            let settled = wait_until(Duration::from_secs(30), || {
                balance(via, account).is_some_and(|b| b == expected)
            });
            assert!(
                settled,
                "node {id}: {account} is {:?}, not {expected:?}\n{}",
                balance(via, account),
                cluster.logs()
            );
        }
    }
    for id in 0..NODES {
        let node = cluster.nodes[id as usize].take().expect("running");
        let status = node.terminate();
        assert!(
            status.success(),
            "node {id} exited with {status}:\n{}",
            node.logs()
        );
    }
    // Each node's own copy of every partition replays, conserves money, and agrees with
    // the others' record for record.
    let mut replays = Vec::new();
    for id in 0..NODES {
        let dir = cluster.data.join(format!("node-{id}"));
        let (code, report) = cluster.wallet.verify(&dir);
        assert_eq!(code, 0, "verify {}:\n{report}", dir.display());
        let output = cluster
            .wallet
            .run(&["replay", "--data-dir", &dir.display().to_string()]);
        assert!(output.status.success(), "replay {}", dir.display());
        // The first line names the directory; the rest is the state.
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let state: Vec<&str> = text.lines().filter(|l| !l.starts_with("# /")).collect();
        replays.push(state.join("\n"));
    }
    // All three together: each partition's replicas agree, and the cluster conserves money.
    let mut args = vec!["verify".to_string()];
    for id in 0..NODES {
        let dir = cluster.data.join(format!("node-{id}"));
        args.extend(["--data-dir".to_string(), dir.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = cluster.wallet.run(&args);
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "verify of the three replicas:\n{report}"
    );
    for partition in 0..PARTITIONS {
        let agree = format!("partition {partition}: {NODES} replicas agree");
        assert!(report.contains(&agree), "{report}");
    }
    assert!(
        replays.windows(2).all(|pair| pair[0] == pair[1]),
        "the replicas' logs replay to different states:\n{}",
        replays.join("\n---\n")
    );
}
