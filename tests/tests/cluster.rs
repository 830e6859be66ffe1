//! A cluster of three real `wallet node` processes on loopback ports: transfers across nodes
//! through any node's HTTP API, a node that is down and comes back, and `kill -9` of a node
//! under a load of concurrent transfers, audited afterwards with `wallet verify` on every
//! node's data directory and on the cluster as a whole.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use walletd_e2e::{accounts_in, free_ports, http, wait_until, wallet, Server, Wallet};

const NODES: u32 = 3;
const PARTITIONS: u32 = 6;
const SECRET: &str = "the e2e cluster's shared secret";

/// Three `wallet node` processes sharing one cluster file; a stopped node's slot is `None`.
struct Cluster {
    _tmp: tempfile::TempDir,
    wallet: Wallet,
    config: PathBuf,
    data: PathBuf,
    http: Vec<SocketAddr>,
    extra: Vec<String>,
    nodes: Vec<Option<Server>>,
}

impl Cluster {
    /// Writes a cluster file on free ports and starts every node with `extra` arguments.
    fn start(extra: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ports = free_ports(2 * NODES as usize);
        let mut text = format!(
            "map_version = 1\npartitions = {PARTITIONS}\nreplicas = 1\nsecret = \"{SECRET}\"\n"
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
            extra: extra.iter().map(|s| s.to_string()).collect(),
            nodes: Vec::new(),
        };
        for id in 0..NODES {
            let node = cluster.spawn(id);
            cluster.nodes.push(Some(node));
        }
        cluster.wait_ready();
        cluster
    }

    fn spawn(&self, id: u32) -> Server {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.wallet.node(&self.config, id, &self.data, &extra)
    }

    fn node(&self, id: u32) -> &Server {
        self.nodes[id as usize].as_ref().expect("node is running")
    }

    /// Waits until every running node answers for every partition of every running node (a
    /// 404 for an unknown account is an answer; 503 means a link is not up yet).
    fn wait_ready(&self) {
        let running: Vec<u32> = (0..NODES)
            .filter(|id| self.nodes[*id as usize].is_some())
            .collect();
        let ready = wait_until(Duration::from_secs(30), || {
            running.iter().all(|via| {
                (0..PARTITIONS)
                    .filter(|p| running.contains(&owner(*p)))
                    .all(|p| {
                        let account = &accounts_in("probe-", p, PARTITIONS, 1)[0];
                        let url = format!("/v1/accounts/{account}/balance");
                        http::request(self.http[*via as usize], "GET", &url, &[], None)
                            .is_ok_and(|r| r.status == 404)
                    })
            })
        });
        assert!(ready, "cluster did not link up:\n{}", self.logs());
    }

    fn kill9(&self, id: u32) {
        self.node(id).kill9();
    }

    fn terminate(&mut self, id: u32) {
        let node = self.nodes[id as usize].take().expect("node is running");
        let status = node.terminate();
        assert!(
            status.success(),
            "node {id} exited with {status}:\n{}",
            node.logs()
        );
    }

    /// Starts a stopped (or killed) node again on its data.
    fn restart(&mut self, id: u32) {
        self.nodes[id as usize] = None;
        let node = self.spawn(id);
        self.nodes[id as usize] = Some(node);
        self.wait_ready();
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

    fn node_dir(&self, id: u32) -> PathBuf {
        self.data.join(format!("node-{id}"))
    }

    /// Stops every node, then runs `wallet verify` on each node's directory and on all of
    /// them together (the whole cluster).
    fn stop_and_verify(mut self) {
        for id in 0..NODES {
            if self.nodes[id as usize].is_some() {
                self.terminate(id);
            }
        }
        let dirs: Vec<PathBuf> = (0..NODES).map(|id| self.node_dir(id)).collect();
        for dir in &dirs {
            let (code, report) = self.wallet.verify(dir);
            assert_eq!(code, 0, "verify {}:\n{report}", dir.display());
            assert!(report.contains("cluster node"), "{report}");
        }
        let (code, report) = verify_together(&self.wallet, &dirs);
        assert_eq!(code, 0, "verify of the whole cluster:\n{report}");
        assert!(report.contains(": conserved"), "{report}");
    }
}

fn verify_together(wallet: &Wallet, dirs: &[PathBuf]) -> (i32, String) {
    let mut args = vec!["verify".to_string()];
    for dir in dirs {
        args.extend(["--data-dir".to_string(), dir.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = wallet.run(&args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.code().unwrap_or(-1), stdout)
}

/// The node that owns partition `p` under the even spread of the cluster file.
fn owner(partition: u32) -> u32 {
    partition % NODES
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> Result<http::Response, String> {
    let body = body.to_string();
    let headers = [("Content-Type", "application/json")];
    http::request(addr, "POST", path, &headers, Some(body.as_bytes()))
}

fn get(addr: SocketAddr, path: &str) -> http::Response {
    http::request(addr, "GET", path, &[], None).expect("GET")
}

fn open(addr: SocketAddr, account: &str, dollars: &str) {
    let r = post(
        addr,
        "/v1/accounts",
        &json!({"account_id": account, "currency": "USD"}),
    );
    assert_eq!(r.expect("open").status, 201);
    let deposit = json!({"amount": dollars, "currency": "USD", "transaction_id": "open"});
    let r = post(addr, &format!("/v1/accounts/{account}/deposit"), &deposit).expect("deposit");
    assert_eq!(r.status, 200, "{}", r.text());
}

fn transfer_body(from: &str, to: &str, cents: u64, id: &str) -> Value {
    json!({"from_account": from, "to_account": to, "currency": "USD", "transaction_id": id,
           "amount": format!("{}.{:02}", cents / 100, cents % 100)})
}

fn cents(text: &str) -> u64 {
    let (whole, fraction) = text.split_once('.').expect("two decimals");
    whole.parse::<u64>().unwrap() * 100 + fraction.parse::<u64>().unwrap()
}

/// `(balance, held, incoming)` in cents, as `via` reports it.
fn balance(via: SocketAddr, account: &str) -> (u64, u64, u64) {
    let b = get(via, &format!("/v1/accounts/{account}/balance")).json();
    let field = |name: &str| cents(b[name].as_str().unwrap_or_else(|| panic!("{b}")));
    (field("balance"), field("held"), field("incoming"))
}

/// The balance of `account` once nothing is held or incoming: a transfer reads `committed` from
/// its durable decision on, but the source's hold and the destination's pending credit become
/// final only when the destination acknowledges the Confirm (after a node was down, at the
/// home partition's next resend, which backs off to 2 s).
fn settled_balance(via: SocketAddr, account: &str) -> (u64, u64, u64) {
    let mut found = (0, 0, 0);
    wait_until(Duration::from_secs(30), || {
        found = balance(via, account);
        found.1 == 0 && found.2 == 0
    });
    found
}

/// The status of a transfer, `absent` if no partition recorded it; waits while `pending`.
fn final_status(via: SocketAddr, from: &str, id: &str) -> String {
    let url = format!("/v1/transfers/{from}/{id}");
    let mut status = String::new();
    let settled = wait_until(Duration::from_secs(30), || {
        let r = get(via, &url);
        status = match r.status {
            404 => "absent".into(),
            200 => r.json()["status"].as_str().unwrap().to_string(),
            other => panic!("GET {url}: {other} {}", r.text()),
        };
        status != "pending"
    });
    assert!(settled, "{url} still pending");
    status
}

#[test]
fn transfers_cross_nodes_through_any_node_and_wait_for_a_node_that_is_down() {
    // A Try waits long for a node that is down, so the transfer below stays pending.
    let mut cluster = Cluster::start(&["--try-timeout-ms", "60000"]);
    let [a, b, c] = [0, 1, 2].map(|p| accounts_in("acct-", p, PARTITIONS, 1).remove(0));
    let addresses = cluster.http.clone();
    let via = |id: u32| addresses[id as usize];
    for (i, account) in [&a, &b, &c].into_iter().enumerate() {
        open(via((i as u32 + 1) % NODES), account, "100.00");
    }
    // Each transfer enters at a node that owns neither side.
    let moves = [
        (&a, &b, 1_000, "t1", 2),
        (&b, &c, 500, "t2", 0),
        (&c, &a, 100, "t3", 1),
    ];
    for (from, to, amount, id, entry) in moves {
        let body = transfer_body(from, to, amount, id);
        let r = post(via(entry), "/v1/wallet/balance_transfer", &body).expect("transfer");
        // A loaded machine may take longer than the server's wait: then poll for the outcome.
        let status = match (r.status, r.json()["status"].as_str()) {
            (200, Some(status)) => status.to_string(),
            (202, Some("pending")) => final_status(via(entry), from, id),
            other => panic!("unexpected answer {other:?}: {}", r.text()),
        };
        assert_eq!(status, "committed");
    }
    for id in 0..NODES {
        let seen = [&a, &b, &c].map(|account| settled_balance(via(id), account));
        assert_eq!(
            seen,
            [(9_100, 0, 0), (10_500, 0, 0), (10_400, 0, 0)],
            "via node {id}"
        );
        assert_eq!(final_status(via(id), &a, "t1"), "committed");
    }
    // Errors cross the wire intact: the same status and code as from the owning node.
    let missing = accounts_in("nobody-", 2, PARTITIONS, 1).remove(0);
    for id in 0..NODES {
        let unknown = post(
            via(id),
            "/v1/accounts/nobody/deposit",
            &json!({"amount": "1.00", "currency": "USD", "transaction_id": "x"}),
        )
        .unwrap();
        assert_eq!(
            (unknown.status, unknown.code()),
            (404, "account_not_found".into())
        );
        let poor = post(
            via(id),
            "/v1/wallet/balance_transfer",
            &transfer_body(&b, &c, 1_000_000, "big"),
        );
        let poor = poor.unwrap();
        assert_eq!(
            (poor.status, poor.json()["code"].as_str()),
            (422, Some("insufficient_funds"))
        );
        let conflict = post(
            via(id),
            "/v1/wallet/balance_transfer",
            &transfer_body(&a, &b, 999, "t1"),
        );
        assert_eq!(conflict.unwrap().status, 409);
        // Dry runs cross the wire too: the home's question and the destination's.
        let dry = |cents: u64, to: &str| {
            let path = "/v1/wallet/balance_transfer?dry_run=true";
            post(via(id), path, &transfer_body(&b, to, cents, "dry")).unwrap()
        };
        let r = dry(1_000, &c);
        assert_eq!(
            (
                r.status,
                r.json()["status"].as_str(),
                r.json()["dry_run"].as_bool()
            ),
            (200, Some("committed"), Some(true)),
            "{}",
            r.text()
        );
        assert_eq!(
            (dry(1_000_000, &c).status, dry(1_000_000, &c).code()),
            (422, "insufficient_funds".into())
        );
        let r = dry(1_000, &missing);
        assert_eq!(
            (r.status, r.json()["status"].as_str(), r.code()),
            (404, Some("cancelled"), "account_not_found".into())
        );
    }
    assert_eq!(get(via(0), &format!("/v1/transfers/{b}/dry")).status, 404);
    // A refund across nodes, asked of a node that owns neither account: the original is read
    // at its home (node 0, a's), the refund decided at b's node (1) and paid back to a.
    let refund = |cents: u64, id: &str| {
        let body =
            json!({"refund_id": id, "amount": format!("{}.{:02}", cents / 100, cents % 100)});
        post(via(2), &format!("/v1/transfers/{a}/t1/refund"), &body).unwrap()
    };
    let r = refund(400, "r1");
    let status = match (r.status, r.json()["status"].as_str()) {
        (200, Some(status)) => status.to_string(),
        (202, Some("pending")) => final_status(via(2), &b, "r1"),
        other => panic!("unexpected answer {other:?}: {}", r.text()),
    };
    assert_eq!(status, "committed");
    let r = refund(601, "r2");
    assert_eq!(
        (r.status, r.code()),
        (422, "refund_exceeds_original".into()),
        "{}",
        r.text()
    );
    let r = get(via(0), &format!("/v1/transfers/{b}/r1"));
    assert_eq!(r.json()["refund_of"], "t1", "{}", r.text());
    for id in 0..NODES {
        assert_eq!(settled_balance(via(id), &a), (9_500, 0, 0), "via node {id}");
    }
    // Node 1 (owner of b) stops: its accounts are unavailable, transfers to them wait.
    cluster.terminate(1);
    let r = post(
        via(0),
        &format!("/v1/accounts/{b}/deposit"),
        &json!({"amount": "1.00", "currency": "USD", "transaction_id": "d2"}),
    )
    .unwrap();
    assert_eq!((r.status, r.code()), (503, "partition_unavailable".into()));
    let r = post(
        via(2),
        "/v1/wallet/balance_transfer",
        &transfer_body(&a, &b, 700, "t4"),
    )
    .unwrap();
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (202, Some("pending")),
        "{}",
        r.text()
    );
    assert_eq!(balance(via(0), &a), (8_800, 700, 0));
    cluster.restart(1);
    assert_eq!(final_status(via(1), &a, "t4"), "committed");
    let settled = wait_until(Duration::from_secs(10), || {
        balance(via(0), &a) == (8_800, 0, 0)
    });
    assert!(settled, "the hold of t4 was not released");
    assert_eq!(balance(via(2), &b), (10_800, 0, 0));
    cluster.stop_and_verify();
}

/// Concurrent clients, each sending transfers to any node.
const CLIENTS: u64 = 6;
const TRANSFERS_PER_CLIENT_MAX: u64 = 3_000;
/// Transfers answered before the kill.
const ANSWERED_BEFORE_KILL: usize = 400;
/// How long the killed node stays down, with the clients still sending (longer than the
/// Try timeout, so some transfers are cancelled and others wait for it).
const DOWN_MS: u64 = 3_000;
/// How long the clients go on after the node is back.
const AFTER_RESTART_MS: u64 = 1_000;
const ACCOUNTS_PER_PARTITION: usize = 2;
const OPENING_CENTS: u64 = 100_000;

/// A transfer a client sent and what it was told: `(status, body status or error code)`;
/// `None` when the node it asked died or was down.
#[derive(Debug, Clone)]
struct Attempt {
    from: String,
    to: String,
    cents: u64,
    id: String,
    via: u32,
    answer: Option<(u16, String)>,
}

fn load(
    http: &[SocketAddr],
    accounts: &[String],
    seed: u64,
    stop: &AtomicBool,
    log: &Mutex<Vec<Attempt>>,
    answered: &AtomicUsize,
) {
    let mut rng = walletd_e2e::Lcg::new(seed);
    for i in 0..TRANSFERS_PER_CLIENT_MAX {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (from, to) = rng.pair(accounts);
        let cents = 1 + rng.draw() % 500;
        let via = (rng.draw() % u64::from(NODES)) as u32;
        let id = format!("c{seed}-{i}");
        let body = transfer_body(&from, &to, cents, &id);
        let answer = post(http[via as usize], "/v1/wallet/balance_transfer", &body)
            .ok()
            .map(|r| {
                let json = r.json();
                let word = json["status"]
                    .as_str()
                    .or(json["code"].as_str())
                    .unwrap_or("");
                (r.status, word.to_string())
            });
        if answer.is_some() {
            answered.fetch_add(1, Ordering::Relaxed);
        } else {
            // The node is down: do not spin on refused connections.
            std::thread::sleep(Duration::from_millis(20));
        }
        log.lock().unwrap().push(Attempt {
            from,
            to,
            cents,
            id,
            via,
            answer,
        });
    }
}

/// Checks what a client was told against the transfer's final status.
fn check_answer(attempt: &Attempt, status: &str) {
    let told = attempt
        .answer
        .as_ref()
        .map(|(code, word)| (*code, word.as_str()));
    let consistent = match told {
        Some((200, "committed")) => status == "committed",
        Some((_, "rejected")) => status == "rejected",
        Some((_, "cancelled")) => status == "cancelled",
        Some((202, "pending")) => ["committed", "cancelled"].contains(&status),
        // The node asked could not reach the home partition, or died meanwhile: the
        // transfer may or may not have been recorded.
        Some((503, "partition_unavailable" | "request_timeout")) | None => true,
        Some(other) => panic!("unexpected answer {other:?} for {attempt:?}"),
    };
    assert!(
        consistent,
        "told {told:?} but the transfer is {status}: {attempt:?}"
    );
}

#[test]
fn kill_9_of_a_node_under_load_loses_no_committed_transfer() {
    let mut cluster = Cluster::start(&[]);
    let accounts: Vec<String> = (0..PARTITIONS)
        .flat_map(|p| accounts_in(&format!("k{p}-"), p, PARTITIONS, ACCOUNTS_PER_PARTITION))
        .collect();
    for (i, account) in accounts.iter().enumerate() {
        open(cluster.http[i % NODES as usize], account, "1000.00");
    }
    let http = cluster.http.clone();
    let stop = AtomicBool::new(false);
    let log = Mutex::new(Vec::new());
    let answered = AtomicUsize::new(0);
    let victim = 1;
    std::thread::scope(|scope| {
        for seed in 0..CLIENTS {
            let (http, accounts, stop, log, answered) = (&http, &accounts, &stop, &log, &answered);
            scope.spawn(move || load(http, accounts, seed, stop, log, answered));
        }
        let started = Instant::now();
        while answered.load(Ordering::Relaxed) < ANSWERED_BEFORE_KILL {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "too slow before the kill"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        cluster.kill9(victim);
        std::thread::sleep(Duration::from_millis(DOWN_MS));
        cluster.restart(victim);
        std::thread::sleep(Duration::from_millis(AFTER_RESTART_MS));
        stop.store(true, Ordering::Relaxed);
    });
    let attempts = log.into_inner().unwrap();
    audit(&cluster, &accounts, &attempts);
    cluster.stop_and_verify();
}

fn audit(cluster: &Cluster, accounts: &[String], attempts: &[Attempt]) {
    let count = |pred: &dyn Fn(&Attempt) -> bool| attempts.iter().filter(|a| pred(a)).count();
    let committed_seen = count(&|a| {
        a.answer
            .as_ref()
            .is_some_and(|(s, w)| *s == 200 && w == "committed")
    });
    let unavailable = count(&|a| a.answer.as_ref().is_some_and(|(s, _)| *s == 503));
    let unanswered = count(&|a| a.answer.is_none());
    eprintln!(
        "{} attempts: {committed_seen} seen committed, {unavailable} answered 503, {unanswered} unanswered",
        attempts.len()
    );
    assert!(committed_seen >= 100, "too few transfers: {committed_seen}");
    let via = cluster.http[0];
    let mut expected: BTreeMap<&str, u64> = accounts
        .iter()
        .map(|a| (a.as_str(), OPENING_CENTS))
        .collect();
    let mut finals: BTreeMap<String, usize> = BTreeMap::new();
    for attempt in attempts {
        let status = final_status(via, &attempt.from, &attempt.id);
        check_answer(attempt, &status);
        if status == "committed" {
            *expected.get_mut(attempt.from.as_str()).unwrap() -= attempt.cents;
            *expected.get_mut(attempt.to.as_str()).unwrap() += attempt.cents;
        }
        *finals.entry(status).or_default() += 1;
    }
    eprintln!("final statuses: {finals:?}");
    // Every committed transfer moved its money exactly once, and nothing else moved any.
    let mut total = 0;
    for (account, cents_expected) in &expected {
        let (balance, held, incoming) = settled_balance(cluster.http[2], account);
        assert_eq!(
            (balance, held, incoming),
            (*cents_expected, 0, 0),
            "{account}"
        );
        total += balance;
    }
    assert_eq!(
        total,
        OPENING_CENTS * accounts.len() as u64,
        "money is conserved"
    );
    // Retrying a transfer seen committed, through any node, changes nothing.
    for attempt in attempts
        .iter()
        .filter(|a| a.answer == Some((200, "committed".into())))
        .take(10)
    {
        let body = transfer_body(&attempt.from, &attempt.to, attempt.cents, &attempt.id);
        let r = post(
            cluster.http[(attempt.via as usize + 1) % NODES as usize],
            "/v1/wallet/balance_transfer",
            &body,
        )
        .unwrap();
        assert_eq!(
            (r.status, r.json()["status"].as_str()),
            (200, Some("committed"))
        );
    }
    let first = &attempts[0].from;
    assert_eq!(balance(via, first).0, expected[first.as_str()]);
}

#[test]
fn a_node_started_with_another_secret_is_refused() {
    let mut cluster = Cluster::start(&[]);
    cluster.terminate(2);
    let text = std::fs::read_to_string(&cluster.config).unwrap();
    let wrong = cluster.config.with_file_name("wrong.toml");
    std::fs::write(
        &wrong,
        text.replace(SECRET, "not the cluster's secret at all"),
    )
    .unwrap();
    let impostor = cluster.wallet.node(&wrong, 2, &cluster.data, &[]);
    let refused = wait_until(Duration::from_secs(10), || {
        cluster
            .node(0)
            .logs()
            .contains("does not know the cluster secret")
    });
    assert!(refused, "{}", cluster.node(0).logs());
    let account = &accounts_in("acct-", 2, PARTITIONS, 1)[0];
    let r = get(cluster.http[0], &format!("/v1/accounts/{account}/balance"));
    assert_eq!((r.status, r.code()), (503, "partition_unavailable".into()));
    drop(impostor);
}

/// Every movement of `account` as `via` pages through them, `limit` at a time, oldest
/// first; checks that each page says an lsn at or past its movements.
fn history_via(via: SocketAddr, account: &str, limit: usize) -> Vec<Value> {
    let (mut seen, mut cursor) = (Vec::new(), String::new());
    loop {
        let url = format!("/v1/accounts/{account}/history?limit={limit}{cursor}");
        let r = get(via, &url);
        assert_eq!(r.status, 200, "GET {url} via {via}: {}", r.text());
        let page = r.json();
        let movements = page["movements"].as_array().expect("movements").clone();
        assert!(movements.len() <= limit, "{page}");
        let lsn = page["lsn"].as_u64().expect("a page says its lsn");
        assert!(movements.iter().all(|m| m["lsn"].as_u64().unwrap() <= lsn));
        seen.extend(movements);
        match page["next_before_lsn"].as_u64() {
            Some(before) => cursor = format!("&before_lsn={before}"),
            None => break,
        }
    }
    seen.reverse();
    seen
}

/// `wallet replay --account` on the data directory of the node that keeps `account`, as
/// JSON, as of `as_of` (`--as-of-lsn N` or `--as-of TIME`), with null fields left out as the
/// API leaves them out.
fn replay_account(cluster: &Cluster, account: &str, as_of: &[&str]) -> Value {
    let partition = (0..PARTITIONS)
        .find(|p| owns(*p, account))
        .expect("some partition holds every account");
    let dir = cluster.node_dir(owner(partition)).display().to_string();
    let mut args = vec!["replay", "--data-dir", &dir, "--account", account];
    args.extend(["--format", "json"]);
    args.extend_from_slice(as_of);
    let output = cluster.wallet.run(&args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "replay {args:?}: {stdout}");
    let mut doc: Value = serde_json::from_str(&stdout).expect("replay prints JSON");
    for movement in doc["movements"].as_array_mut().expect("movements") {
        movement
            .as_object_mut()
            .unwrap()
            .retain(|_, value| !value.is_null());
    }
    doc
}

/// Whether `account` lives on partition `p` (the accounts of this test are named for theirs).
fn owns(p: u32, account: &str) -> bool {
    account.starts_with(&format!("h{p}-"))
}

/// Every account's history and past balances (by lsn and by time), asked of every node,
/// equal `wallet replay`'s on the data directory of the node that keeps the account.
fn check_history_against_replay(cluster: &Cluster, accounts: &[String]) {
    for account in accounts {
        let replayed = replay_account(cluster, account, &[]);
        let movements = replayed["movements"].as_array().unwrap().clone();
        assert!(movements.len() > 2, "{account}: {replayed}");
        for via in 0..NODES {
            let seen = history_via(cluster.http[via as usize], account, 4);
            assert_eq!(seen, movements, "{account}'s history via node {via}");
        }
        // As of a few movements, and just before them, by lsn and by time, via each node.
        for (i, movement) in movements.iter().enumerate().step_by(3) {
            let via = cluster.http[i % NODES as usize];
            let lsn = movement["lsn"].as_u64().unwrap();
            for at in [lsn, lsn - 1] {
                let want = replay_account(cluster, account, &["--as-of-lsn", &at.to_string()]);
                let r = get(
                    via,
                    &format!("/v1/accounts/{account}/balance?as_of_lsn={at}"),
                );
                assert_eq!(r.status, 200, "{}", r.text());
                let got = r.json();
                for field in ["balance", "held", "incoming", "as_of_lsn"] {
                    assert_eq!(
                        got[field], want[field],
                        "{account} {field} at lsn {at}: {got}"
                    );
                }
            }
            let time = movement["timestamp"].as_str().unwrap();
            let want = replay_account(cluster, account, &["--as-of", time]);
            let r = get(via, &format!("/v1/accounts/{account}/balance?as_of={time}"));
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.json()["balance"], want["balance"], "{account} at {time}");
        }
    }
}

/// Transfers among `accounts` through every node, within and across partitions; returns once
/// every account is settled.
fn transfer_around(cluster: &Cluster, accounts: &[String], round: &str, count: usize) {
    let mut draw = walletd_e2e::Lcg::new(count as u64 + round.len() as u64);
    for i in 0..count {
        let (from, to) = draw.pair(accounts);
        let via = cluster.http[i % NODES as usize];
        let cents_moved = 1 + draw.draw() % 500;
        let id = format!("{round}-{i}");
        let r = post(
            via,
            "/v1/wallet/balance_transfer",
            &transfer_body(&from, &to, cents_moved, &id),
        );
        let r = r.expect("transfer");
        assert!([200, 202, 422].contains(&r.status), "{}", r.text());
    }
    for account in accounts {
        let (_, held, incoming) = settled_balance(cluster.http[0], account);
        assert_eq!((held, incoming), (0, 0), "{account} did not settle");
    }
}

#[test]
fn history_and_past_balances_from_any_node_equal_replay_before_and_after_restarts() {
    // Small index chunks, so that most of the history is in chunk files, not in memory.
    let mut cluster = Cluster::start(&["--history-chunk-records", "16"]);
    let accounts: Vec<String> = (0..PARTITIONS)
        .flat_map(|p| accounts_in(&format!("h{p}-"), p, PARTITIONS, 2))
        .collect();
    for (i, account) in accounts.iter().enumerate() {
        open(cluster.http[i % NODES as usize], account, "100.00");
        let deposit = json!({"amount": "3.00", "currency": "USD", "transaction_id": "more"});
        let url = format!("/v1/accounts/{account}/deposit");
        assert_eq!(post(cluster.http[0], &url, &deposit).unwrap().status, 200);
    }
    transfer_around(&cluster, &accounts, "r1", 120);
    check_history_against_replay(&cluster, &accounts);

    // Node 1 restarts with its index as it was: reused. Node 2 restarts with one chunk file
    // damaged and another gone: they are rebuilt from the log.
    let index_dir = |node: u32, p: u32| {
        cluster
            .node_dir(node)
            .join(format!("partition-{p}/history"))
    };
    let chunks_of = |dir: &PathBuf| {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("an index directory per partition")
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    };
    let kept = index_dir(1, 1);
    let damaged = index_dir(2, 2);
    cluster.terminate(1);
    cluster.terminate(2);
    let before_restart = chunks_of(&kept);
    let chunks = chunks_of(&damaged);
    assert!(before_restart.len() >= 2 && chunks.len() >= 3, "{chunks:?}");
    let mut bytes = std::fs::read(&chunks[1]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&chunks[1], bytes).unwrap();
    std::fs::remove_file(&chunks[2]).unwrap();
    // While the node that keeps an account's log is down, its history is unavailable from
    // the others, and says so.
    let on_node_1 = accounts
        .iter()
        .find(|a| owns(1, a))
        .expect("an account of node 1");
    for path in ["history", "balance?as_of_lsn=5"] {
        let r = get(cluster.http[0], &format!("/v1/accounts/{on_node_1}/{path}"));
        assert_eq!(
            (r.status, r.code()),
            (503, "history_unavailable".into()),
            "{}",
            r.text()
        );
    }
    cluster.restart(1);
    cluster.restart(2);
    check_history_against_replay(&cluster, &accounts);
    assert_eq!(chunks_of(&kept)[..before_restart.len()], before_restart[..]);
    assert!(chunks_of(&damaged).len() >= chunks.len(), "rebuilt");

    // The index goes on from where it was.
    transfer_around(&cluster, &accounts, "r2", 60);
    check_history_against_replay(&cluster, &accounts);
    cluster.stop_and_verify();
}

#[test]
fn a_hold_across_nodes_is_placed_and_captured_in_part_through_a_node_owning_neither_side() {
    let cluster = Cluster::start(&[]);
    // Partition 0 is node 0's, partition 1 node 1's; node 2 owns neither.
    let [a, b] = [0, 1].map(|p| accounts_in("hold-", p, PARTITIONS, 1).remove(0));
    let via = cluster.http[2];
    assert!(owner(0) != 2 && owner(1) != 2 && owner(0) != owner(1));
    open(cluster.http[0], &a, "100.00");
    open(cluster.http[1], &b, "0.01");
    let mut body = transfer_body(&a, &b, 4_000, "h1");
    body["expires_in_ms"] = json!(600_000);
    let r = post(via, "/v1/wallet/holds", &body).expect("hold");
    let status = match (r.status, r.json()["status"].as_str()) {
        (200, Some(status)) => status.to_string(),
        (202, Some("pending")) => final_status(via, &a, "h1"),
        other => panic!("unexpected answer {other:?}: {}", r.text()),
    };
    assert_eq!(status, "held");
    assert_eq!(balance(via, &a), (6_000, 4_000, 0));
    assert_eq!(balance(via, &b), (1, 0, 4_000));

    let capture = format!("/v1/transfers/{a}/h1/capture");
    let r = post(via, &capture, &json!({"amount": "25.00"})).expect("capture");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (
            r.json()["captured_amount"].clone(),
            r.json()["released_amount"].clone()
        ),
        (json!("25.00"), json!("15.00"))
    );
    // Final at the home at once; the destination applies the part when the Confirm lands.
    assert_eq!(balance(via, &a), (7_500, 0, 0));
    assert_eq!(settled_balance(via, &b), (2_501, 0, 0));
    for id in 0..NODES {
        let t = get(cluster.http[id as usize], &format!("/v1/transfers/{a}/h1")).json();
        assert_eq!(
            (
                t["status"].clone(),
                t["captured_amount"].clone(),
                t["cross_partition"].clone()
            ),
            (json!("captured"), json!("25.00"), json!(true)),
            "via node {id}"
        );
        let r = post(
            cluster.http[id as usize],
            &capture,
            &json!({"amount": "25.00"}),
        )
        .unwrap();
        assert_eq!(
            (r.status, r.json()["status"].clone()),
            (200, json!("captured"))
        );
        let void = format!("/v1/transfers/{a}/h1/void");
        let r = post(cluster.http[id as usize], &void, &json!({})).unwrap();
        assert_eq!((r.status, r.code()), (409, "hold_captured".into()));
    }
}

#[test]
fn a_transaction_across_three_nodes_commits_every_leg_or_none() {
    let cluster = Cluster::start(&[]);
    // Partitions 0, 1 and 2 live on nodes 0, 1 and 2: every leg crosses nodes.
    let [a, b, c] = [0, 1, 2].map(|p| accounts_in("tx-", p, PARTITIONS, 1).remove(0));
    assert!(owner(0) != owner(1) && owner(1) != owner(2) && owner(0) != owner(2));
    open(cluster.http[0], &a, "100.00");
    open(cluster.http[1], &b, "0.01");
    open(cluster.http[2], &c, "0.01");
    let leg = |from: &str, to: &str, amount: &str| json!({"from_account": from, "to_account": to, "amount": amount, "currency": "USD"});
    // Through b, from a node that is neither the home nor b's.
    let body = json!({"transaction_id": "x1", "legs": [
        leg(&a, &b, "30.00"), leg(&b, &c, "30.00"), leg(&a, &c, "5.00")]});
    let via = cluster.http[2];
    let r = post(via, "/v1/wallet/transactions", &body).expect("transaction");
    let status = match (r.status, r.json()["status"].as_str()) {
        (200, Some(status)) => status.to_string(),
        (202, Some("pending")) => final_status(via, &a, "x1"),
        other => panic!("unexpected answer {other:?}: {}", r.text()),
    };
    assert_eq!(status, "committed");
    assert_eq!(settled_balance(via, &a), (6_500, 0, 0));
    assert_eq!(settled_balance(via, &b), (1, 0, 0));
    assert_eq!(settled_balance(via, &c), (3_501, 0, 0));
    // Refused on c's node (c cannot pay 100.00): cancelled everywhere, nothing moved.
    let body = json!({"transaction_id": "x2", "legs": [
        leg(&a, &b, "1.00"), leg(&c, &b, "100.00")]});
    let r = post(cluster.http[1], "/v1/wallet/transactions", &body).expect("transaction");
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(
        (r.json()["status"].clone(), r.json()["failed_leg"].clone()),
        (json!("cancelled"), json!(1))
    );
    assert_eq!(settled_balance(via, &a), (6_500, 0, 0));
    assert_eq!(settled_balance(via, &b), (1, 0, 0));
    for id in 0..NODES {
        let t = get(cluster.http[id as usize], &format!("/v1/transfers/{a}/x1")).json();
        assert_eq!(t["status"], json!("committed"), "via node {id}");
        assert_eq!(t["legs"].as_array().map(Vec::len), Some(3), "via node {id}");
    }
}
