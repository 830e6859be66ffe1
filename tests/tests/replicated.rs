//! A replicated cluster of three real `wallet node` processes (`replicas = 3`: every partition
//! a Raft group with a replica on every node): clients send transfers through all three HTTP
//! ports while each node in turn, the leader of the transfers' home partition first, is
//! killed with `kill -9` and restarted, the first with a byte in the middle of its partition
//! log of partition 1 flipped (its copy is set aside and rebuilt from the group), the second
//! with a byte of its Raft store of partition 0 flipped (moved aside, it rejoins that
//! group), the last one with its data
//! directory wiped (a lost disk: it comes back under new replica ids and catches up from
//! the others). Afterwards
//! every transfer a client was told committed is there exactly once, every node holds the
//! same balances and the same log, and money is conserved; while a node was down, transfers
//! kept succeeding.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use walletd_e2e::{accounts_in, free_ports, http, wait_until, wallet, Server, Wallet};

const NODES: u32 = 3;
const PARTITIONS: u32 = 4;
const SECRET: &str = "the e2e cluster's shared secret";
/// Raft logs compacted after a few entries: a replica that was down, or wiped, catches up by
/// fetching records from another node's partition log.
const COMPACT_OFTEN: &[&str] = &["--raft-compact-after", "8"];
/// How long a client keeps retrying one transfer (same transaction id) before the test fails.
const RETRY_FOR: Duration = Duration::from_secs(20);

struct Cluster {
    /// Nodes in the map.
    count: u32,
    _tmp: tempfile::TempDir,
    wallet: Wallet,
    config: PathBuf,
    data: PathBuf,
    http: Vec<SocketAddr>,
    nodes: Vec<Option<Server>>,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with(NODES, Some(NODES))
    }

    /// `count` nodes keeping `replicas` copies of each partition (`None`: the default).
    fn start_with(count: u32, replicas: Option<u32>) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ports = free_ports(2 * count as usize);
        let mut text =
            format!("map_version = 1\npartitions = {PARTITIONS}\nsecret = \"{SECRET}\"\n");
        if let Some(replicas) = replicas {
            text.push_str(&format!("replicas = {replicas}\n"));
        }
        let mut addresses = Vec::new();
        for id in 0..count as usize {
            let (http, peer) = (ports[id], ports[count as usize + id]);
            text.push_str(&format!(
                "\n[[nodes]]\nid = {id}\nhttp = \"127.0.0.1:{http}\"\npeer = \"127.0.0.1:{peer}\"\n"
            ));
            addresses.push(format!("127.0.0.1:{http}").parse().expect("address"));
        }
        let config = tmp.path().join("cluster.toml");
        std::fs::write(&config, text).expect("write the cluster file");
        let mut cluster = Cluster {
            count,
            data: tmp.path().join("data"),
            _tmp: tmp,
            wallet: wallet!(),
            config,
            http: addresses,
            nodes: Vec::new(),
        };
        for id in 0..count {
            let node = cluster
                .wallet
                .node(&cluster.config, id, &cluster.data, COMPACT_OFTEN);
            cluster.nodes.push(Some(node));
        }
        cluster.wait_for_leaders();
        cluster
    }

    fn up(&self) -> Vec<u32> {
        (0..self.count)
            .filter(|id| self.nodes[*id as usize].is_some())
            .collect()
    }

    /// `GET /v1/cluster` of node `id`.
    fn view(&self, id: u32) -> Option<Value> {
        let r = http::request(self.http[id as usize], "GET", "/v1/cluster", &[], None).ok()?;
        (r.status == 200).then(|| r.json())
    }

    /// Waits until, for every partition, every node that is up and holds a replica of it
    /// names the same leader, itself up; returns the leaders.
    fn wait_for_leaders(&self) -> Vec<u32> {
        let mut leaders = Vec::new();
        let agreed = wait_until(Duration::from_secs(30), || {
            let views: Vec<(u32, Value)> = (self.up().into_iter())
                .filter_map(|id| Some((id, self.view(id)?)))
                .collect();
            if views.len() != self.up().len() {
                return false;
            }
            leaders.clear();
            for partition in 0..PARTITIONS as usize {
                let named: Vec<Option<u64>> = (views.iter())
                    .filter(|(id, view)| holds(view, partition, *id))
                    .map(|(_, view)| view["partitions"][partition]["leader"].as_u64())
                    .collect();
                let Some(Some(leader)) = named.first().copied() else {
                    return false;
                };
                let agreed = named.iter().all(|l| *l == Some(leader));
                if !agreed || self.nodes[leader as usize].is_none() {
                    return false;
                }
                leaders.push(leader as u32);
            }
            true
        });
        assert!(agreed, "no agreed leaders:\n{}", self.logs());
        leaders
    }

    fn kill9(&mut self, id: u32) {
        let node = self.nodes[id as usize].take().expect("running");
        node.kill9();
    }

    /// Deletes node `id`'s data directory (the node is down): a lost disk.
    fn wipe(&self, id: u32) {
        assert!(self.nodes[id as usize].is_none(), "node {id} is down");
        let dir = self.data.join(format!("node-{id}"));
        std::fs::remove_dir_all(&dir).expect("wipe the node's data directory");
    }

    /// Flips a byte inside the first record of node `id`'s newest Raft store file of
    /// `partition` (the node is down): damage before the store's tail.
    fn damage_raft_store(&self, id: u32, partition: u32) {
        assert!(self.nodes[id as usize].is_none(), "node {id} is down");
        let dir = (self.data.join(format!("node-{id}")).join("raft"))
            .join(format!("partition-{partition}"));
        let newest = files_named(&dir, "log").pop().expect("a Raft store file");
        let mut bytes = std::fs::read(&newest).expect("read");
        bytes[40] ^= 0xff;
        std::fs::write(&newest, bytes).expect("write");
    }

    /// Flips a byte halfway through the records of node `id`'s first log segment of
    /// `partition` (the node is down): damage that later syncs vouch for.
    fn damage_partition_log(&self, id: u32, partition: u32) {
        assert!(self.nodes[id as usize].is_none(), "node {id} is down");
        let dir = self
            .data
            .join(format!("node-{id}"))
            .join(format!("partition-{partition}"));
        let segments = files_named(&dir, "seg");
        let first = segments.first().expect("a log segment");
        let mut bytes = std::fs::read(first).expect("read");
        // Segments are extended with zeros ahead of their records.
        let written = bytes.iter().rposition(|b| *b != 0).expect("records");
        bytes[written / 2] ^= 0xff;
        std::fs::write(first, bytes).expect("write");
    }

    /// Waits until every node's copy of every partition holds the same last committed
    /// record (no transfer is running).
    fn wait_for_copies_in_step(&self) {
        let mut seen: Vec<Vec<u64>> = Vec::new();
        let in_step = wait_until(Duration::from_secs(30), || {
            let views: Vec<(u32, Value)> = (0..self.count)
                .filter_map(|id| Some((id, self.view(id)?)))
                .collect();
            if views.len() != self.count as usize {
                return false;
            }
            seen = (0..PARTITIONS as usize)
                .map(|partition| {
                    (views.iter())
                        .filter(|(id, view)| holds(view, partition, *id))
                        .filter_map(|(_, view)| {
                            view["partitions"][partition]["commit_lsn"].as_u64()
                        })
                        .collect()
                })
                .collect();
            seen.iter()
                .all(|lsns| lsns.windows(2).all(|pair| pair[0] == pair[1]))
        });
        assert!(in_step, "copies not in step: {seen:?}\n{}", self.logs());
    }

    /// Waits until no node that is up knows of a copy catching up or a change of voters
    /// under way: every copy votes, so the group can lose any one node.
    fn wait_for_voters(&self) {
        let settled = wait_until(Duration::from_secs(30), || {
            self.up().into_iter().all(|id| {
                self.view(id).is_some_and(|view| {
                    let partitions = view["partitions"].as_array().expect("partitions").clone();
                    partitions.iter().all(|p| {
                        p["learners"].as_array().is_some_and(|l| l.is_empty())
                            && p["members_changing"] == false
                    })
                })
            })
        });
        assert!(settled, "copies still catching up:\n{}", self.logs());
    }

    fn restart(&mut self, id: u32) {
        let node = self
            .wallet
            .node(&self.config, id, &self.data, COMPACT_OFTEN);
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

/// Whether node `id`, whose `GET /v1/cluster` is `view`, holds a replica of `partition`.
fn holds(view: &Value, partition: usize, id: u32) -> bool {
    let replicas = view["partitions"][partition]["replicas"]
        .as_array()
        .expect("replicas");
    replicas.iter().any(|r| r.as_u64() == Some(u64::from(id)))
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
    let last = *victims.last().expect("three victims");
    for victim in victims {
        cluster.kill9(victim);
        // With one node down every group keeps a majority: transfers go on.
        let failures = send(&cluster, &mut committed, 15);
        eprintln!("node {victim} down: 15 transfers, {failures} failed attempts (retried)");
        if victim == last {
            cluster.wipe(victim);
        } else if victim == leaders[0] {
            cluster.damage_partition_log(victim, 1);
        } else {
            cluster.damage_raft_store(victim, 0);
        }
        cluster.restart(victim);
        cluster.wait_for_leaders();
        // A copy that rejoined votes again before the next node goes down.
        cluster.wait_for_voters();
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
    // The wiped node has every committed record again, from its peers.
    cluster.wait_for_copies_in_step();
    let logs = cluster.nodes[last as usize].as_ref().expect("up").logs();
    assert!(
        logs.contains("replica id decided") && logs.contains("Join("),
        "the wiped node joined its groups under new ids:\n{logs}"
    );
    assert!(
        logs.contains("caught up by records"),
        "the wiped node fetched the records before its leaders' compacted logs:\n{logs}"
    );
    let damaged = (0..NODES)
        .find(|id| *id != leaders[0] && *id != last)
        .expect("three nodes");
    let logs = cluster.nodes[damaged as usize].as_ref().expect("up").logs();
    assert!(
        logs.contains("the Raft store is damaged") && logs.contains("Join("),
        "the node whose Raft store was damaged rejoined that group:\n{logs}"
    );
    let logs = cluster.nodes[leaders[0] as usize]
        .as_ref()
        .expect("up")
        .logs();
    assert!(
        logs.contains("copy of the partition is damaged") && logs.contains("Join("),
        "the node whose partition log was damaged rebuilt its copy from its group:\n{logs}"
    );
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

/// Four nodes, three copies of each partition (placement: its owner and the next two nodes
/// in id order): every node serves every account, including those of partitions it holds
/// no copy of; with one node down every transfer still commits; each data directory holds
/// exactly its node's partitions, and each partition's three copies agree.
#[test]
fn four_nodes_keep_three_copies_of_each_partition_on_distinct_nodes() {
    const FOUR: u32 = 4;
    let mut cluster = Cluster::start_with(FOUR, Some(3));
    let view = cluster.view(0).expect("cluster view");
    let mut hosted: Vec<Vec<u32>> = vec![Vec::new(); FOUR as usize];
    for partition in 0..PARTITIONS as usize {
        let replicas: Vec<u32> = (view["partitions"][partition]["replicas"].as_array())
            .expect("replicas")
            .iter()
            .map(|r| r.as_u64().expect("a node id") as u32)
            .collect();
        let distinct: std::collections::BTreeSet<_> = replicas.iter().collect();
        assert_eq!(distinct.len(), 3, "partition {partition}: {replicas:?}");
        for node in replicas {
            hosted[node as usize].push(partition as u32);
        }
    }
    assert!(
        hosted.iter().all(|h| h.len() < PARTITIONS as usize),
        "{hosted:?}"
    );
    let accounts: Vec<String> = (0..PARTITIONS)
        .map(|p| accounts_in("four-", p, PARTITIONS, 1).remove(0))
        .collect();
    for (i, account) in accounts.iter().enumerate() {
        let open = json!({"account_id": account, "currency": "USD"});
        let (r, _) = until_answered(&cluster, i, "/v1/accounts", &open);
        assert!(matches!(r.status, 200 | 201), "{}", r.text());
        let deposit = json!({"amount": "100.00", "currency": "USD", "transaction_id": "fund"});
        let path = format!("/v1/accounts/{account}/deposit");
        let (r, _) = until_answered(&cluster, i, &path, &deposit);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Each node that is up sends a round of the ring: through nodes with and without a copy
    // of the source's partition.
    let mut n = 0usize;
    let mut round = |cluster: &Cluster| {
        for via in cluster.up() {
            for _ in 0..accounts.len() {
                let from = &accounts[n % accounts.len()];
                let to = &accounts[(n + 1) % accounts.len()];
                let body = transfer_body(from, to, 100, &format!("f{n}"));
                n += 1;
                let path = "/v1/wallet/balance_transfer";
                let (r, _) = until_answered(cluster, via as usize, path, &body);
                assert_eq!(r.json()["status"], "committed", "{}", r.text());
            }
        }
    };
    round(&cluster);
    cluster.kill9(1);
    round(&cluster);
    cluster.restart(1);
    cluster.wait_for_leaders();
    round(&cluster);
    cluster.wait_for_copies_in_step();
    for id in 0..FOUR {
        let node = cluster.nodes[id as usize].take().expect("running");
        assert!(node.terminate().success(), "node {id}:\n{}", node.logs());
        let dir = cluster.data.join(format!("node-{id}"));
        let mut held: Vec<u32> = std::fs::read_dir(&dir)
            .expect("data directory")
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                name.to_str()?.strip_prefix("partition-")?.parse().ok()
            })
            .collect();
        held.sort_unstable();
        assert_eq!(
            held, hosted[id as usize],
            "node {id} holds its partitions only"
        );
    }
    let mut args = vec!["verify".to_string()];
    for id in 0..FOUR {
        let dir = cluster.data.join(format!("node-{id}"));
        args.extend(["--data-dir".to_string(), dir.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = cluster.wallet.run(&args);
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "verify:\n{report}");
    for partition in 0..PARTITIONS {
        let agree = format!("partition {partition}: 3 replicas agree");
        assert!(report.contains(&agree), "{report}");
    }
}

/// The files of `dir` with extension `extension`, sorted by name (the number in it).
fn files_named(dir: &std::path::Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}
