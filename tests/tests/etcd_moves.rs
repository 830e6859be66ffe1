//! Copies of partitions moving between real processes while transfers run: a private etcd,
//! three `wallet node --etcd` nodes keeping three copies of every partition, a fourth node
//! added, a quarter of the partitions moved to it with `wallet cluster move`, node 0
//! drained with `wallet cluster drain`, a move interrupted by a crash of the node taking
//! the copy (resumed, then rolled back), then etcd killed for a few seconds and started
//! again. Transfers run through every node all along; a request that fails is retried with
//! the same transaction id, as a client does. Afterwards every account holds exactly what
//! the committed transfers say (nothing lost, nothing doubled), money is conserved, node 0
//! holds no copy; removed from the map with `wallet cluster remove-node`, node 0 stops on
//! its own (exit 0) while the others serve on; and `wallet verify` passes over every node's
//! directory. The transfers'
//! throughput during the moves is printed beside the throughput before them.
//!
//! Skips, saying so loudly, only where etcd can be neither found nor installed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use walletd_e2e::cluster_on_etcd::{cents, transfer, transfers_commit, EtcdCluster};
use walletd_e2e::etcd::PrivateEtcd;
use walletd_e2e::{accounts_in, http, wait_until, wallet};

const PARTITIONS: u32 = 8;
/// Nodes in the cluster file; one more joins later.
const NODES: usize = 3;
const SECRET: &str = "the etcd moves e2e cluster's shared secret";
/// Each account's first deposit, in cents.
const OPENING_CENTS: u64 = 100_000;
/// How long a client goes on retrying one transfer (same id) before it counts as failed.
const RETRY_FOR: Duration = Duration::from_secs(30);

/// Transfers sent by the load, with their outcome once known.
#[derive(Default)]
struct Ledger {
    /// `(from, to)` of every transfer answered `committed`, by transaction id.
    committed: BTreeMap<String, (String, String)>,
    /// Transfers that got no answer within [`RETRY_FOR`], or a refusal.
    failed: Vec<String>,
    /// Transfers answered `cancelled` or `rejected` for `timeout`: their destination (or,
    /// for a forwarded request, their home) did not answer within the Try's timeout while a
    /// group changed leaders. A definitive answer that moved no money, as the protocol
    /// allows; counted, and bounded below, not failed.
    timed_out: Vec<String>,
    /// Attempts that failed and were retried (503 during an election or a move, a reset
    /// connection).
    retries: usize,
}

/// Sends transfer `id` until it gets an answer (the same id each time, through the next
/// node on each failure), and records it.
fn send(vias: &[SocketAddr], n: usize, from: &str, to: &str, id: &str, ledger: &Mutex<Ledger>) {
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        let via = vias[(n + attempt) % vias.len()];
        let answer = transfer(via, from, to, id);
        match answer {
            Ok(r) if r.status == 200 && r.json()["status"] == "committed" => {
                let pair = (from.to_string(), to.to_string());
                ledger
                    .lock()
                    .unwrap()
                    .committed
                    .insert(id.to_string(), pair);
                return;
            }
            // Final, and answered 503 (the transfer's reason is the service's): a retry of
            // the same id gets it again, so it is counted here, not retried.
            Ok(r)
                if r.status == 503
                    && r.json()["code"] == "timeout"
                    && matches!(r.json()["status"].as_str(), Some("cancelled" | "rejected")) =>
            {
                let text = r.text();
                ledger
                    .lock()
                    .unwrap()
                    .timed_out
                    .push(format!("{id}: {text}"));
                return;
            }
            Ok(r) if r.status == 200 || (400..500).contains(&r.status) => {
                let text = r.text();
                ledger.lock().unwrap().failed.push(format!("{id}: {text}"));
                return;
            }
            other if started.elapsed() > RETRY_FOR => {
                ledger
                    .lock()
                    .unwrap()
                    .failed
                    .push(format!("{id}: {other:?}"));
                return;
            }
            _ => {
                ledger.lock().unwrap().retries += 1;
                attempt += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Runs transfers through `vias` from one client thread until `stop`; returns how many
/// committed per second.
fn load(
    vias: &[SocketAddr],
    accounts: &[String],
    tag: &str,
    stop: &AtomicBool,
    ledger: &Mutex<Ledger>,
) -> f64 {
    let started = Instant::now();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let from = &accounts[n % accounts.len()];
        let to = &accounts[(n * 7 + 3) % accounts.len()];
        if from != to {
            send(vias, n, from, to, &format!("{tag}-{n}"), ledger);
        }
        n += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Runs `work` while two client threads send transfers through `vias`; returns its result
/// and the transfers' rate meanwhile.
fn under_load<T>(
    vias: &[SocketAddr],
    accounts: &[String],
    tag: &str,
    ledger: &Mutex<Ledger>,
    work: impl FnOnce() -> T,
) -> (T, f64) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let clients: Vec<_> = (0..2)
            .map(|c| {
                let (stop, tag) = (&stop, format!("{tag}-c{c}"));
                scope.spawn(move || load(vias, accounts, &tag, stop, ledger))
            })
            .collect();
        let result = work();
        stop.store(true, Ordering::Relaxed);
        let rate = clients.into_iter().map(|c| c.join().unwrap()).sum();
        (result, rate)
    })
}

/// Each partition's group as the map in etcd holds it.
fn groups(status: &Value) -> Vec<Vec<u64>> {
    (status["map"]["partitions"]
        .as_array()
        .expect("partitions")
        .iter())
    .map(|p| {
        let replicas = p["replicas"].as_array().expect("replicas");
        replicas.iter().map(|n| n.as_u64().unwrap()).collect()
    })
    .collect()
}

fn run_ok(cluster: &EtcdCluster, args: &[&str]) -> String {
    let output = cluster.cluster(args);
    assert!(
        output.status.success(),
        "wallet cluster {args:?}:\n{}\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        cluster.logs()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn copies_move_and_a_node_drains_under_load_and_through_an_etcd_outage() {
    let Some(etcd) = PrivateEtcd::start() else {
        return;
    };
    let (mut cluster, config) = EtcdCluster::new(etcd, wallet!(), PARTITIONS, NODES, SECRET);
    run_ok(&cluster, &["init", "--config", &config]);
    for id in 0..NODES as u32 {
        cluster.start_node(id);
    }
    cluster.wait_ready();
    let status = cluster.wait_status(NODES, 1);
    assert!(groups(&status).iter().all(|g| g.len() == 3), "{status:#}");

    let accounts: Vec<String> = (0..PARTITIONS)
        .flat_map(|p| accounts_in("acct-", p, PARTITIONS, 2))
        .collect();
    cluster.open_and_fund(&accounts, NODES);
    let ledger = Mutex::new(Ledger::default());
    let vias = cluster.running_http();
    let ((), before) = under_load(&vias, &accounts, "before", &ledger, || {
        std::thread::sleep(Duration::from_secs(3))
    });

    // A fourth node joins; then a quarter of the partitions move to it, and node 0 is
    // drained, while transfers run through the first three nodes.
    let (http3, peer3) = (cluster.http[NODES].to_string(), cluster.peer[NODES].clone());
    run_ok(
        &cluster,
        &["add-node", "--id", "3", "--http", &http3, "--peer", &peer3],
    );
    cluster.start_node(NODES as u32);
    cluster.wait_status(NODES + 1, 2);
    let moved: Vec<u32> = (0..PARTITIONS / 4).map(|i| 1 + 3 * i).collect();
    let started = Instant::now();
    let ((), during) = under_load(&vias, &accounts, "moving", &ledger, || {
        for &partition in &moved {
            let status = cluster.status().expect("status");
            let from = groups(&status)[partition as usize][0].to_string();
            let partition = partition.to_string();
            let args = [
                "move",
                "--partition",
                &partition,
                "--from",
                &from,
                "--to",
                "3",
            ];
            let out = run_ok(&cluster, &args);
            assert!(out.contains("moved partition"), "{out}");
        }
        let out = run_ok(&cluster, &["drain", "--node", "0"]);
        assert!(out.contains("drained node=0"), "{out}");
    });
    let moving_s = started.elapsed().as_secs_f64();
    let status = cluster.status().expect("status");
    let placed = groups(&status);
    for &partition in &moved {
        assert!(placed[partition as usize].contains(&3), "{status:#}");
    }
    assert!(
        placed.iter().all(|g| g.len() == 3 && !g.contains(&0)),
        "{status:#}"
    );

    // A move interrupted: its first step written, the node taking the copy crashes while
    // it catches up and comes back; the same command then finishes the move, and the
    // reverse command rolls it back.
    let ((), interrupted) = under_load(&vias, &accounts, "interrupted", &ledger, || {
        let status = cluster.status().expect("status");
        let from = groups(&status)[2][0].to_string();
        let args = ["move", "--partition", "2", "--from", &from, "--to", "0"];
        let mut written = args.to_vec();
        written.push("--no-wait");
        let out = run_ok(&cluster, &written);
        assert!(out.contains("wrote the grow"), "{out}");
        cluster.crash_and_restart(0);
        let out = run_ok(&cluster, &args);
        assert!(out.contains("moved partition 2"), "{out}");
        let back = ["move", "--partition", "2", "--from", "0", "--to", &from];
        let out = run_ok(&cluster, &back);
        assert!(out.contains("moved partition 2"), "{out}");
    });
    let status = cluster.status().expect("status");
    assert!(!groups(&status)[2].contains(&0), "{status:#}");

    // etcd down for a few seconds: the nodes serve on; then back.
    let all = cluster.running_http();
    let ((), outage) = under_load(&all, &accounts, "etcd-down", &ledger, || {
        cluster.etcd.stop();
        std::thread::sleep(Duration::from_secs(3));
        cluster.etcd.restart();
    });
    cluster.wait_status(NODES + 1, status["map"]["map_version"].as_u64().unwrap());
    println!(
        "etcd moves: before={before:.0}/s during_moves={during:.0}/s ({moving_s:.1} s for {} \
         moves and a drain) interrupted_move={interrupted:.0}/s etcd_outage={outage:.0}/s",
        moved.len()
    );

    // Every transfer answered; every balance exactly what the committed ones say.
    let ledger = ledger.into_inner().unwrap();
    assert!(
        ledger.failed.is_empty(),
        "transfers failed: {:?}\n{}\n(the logs above) transfers failed: {:?}",
        ledger.failed,
        cluster.logs(),
        ledger.failed,
    );
    println!(
        "etcd moves: committed={} retried_attempts={} timed_out={:?}",
        ledger.committed.len(),
        ledger.retries,
        ledger.timed_out
    );
    // A few transfers may time out while a group changes leaders; more than one in a
    // hundred means the moves stall transfers, which they must not.
    assert!(
        ledger.timed_out.len() * 100 <= ledger.committed.len().max(100),
        "too many transfers timed out: {:?}",
        ledger.timed_out
    );
    let mut expected: BTreeMap<&str, i64> = accounts
        .iter()
        .map(|a| (a.as_str(), OPENING_CENTS as i64))
        .collect();
    for (from, to) in ledger.committed.values() {
        *expected.get_mut(from.as_str()).unwrap() -= 100;
        *expected.get_mut(to.as_str()).unwrap() += 100;
    }
    let mut last = BTreeMap::new();
    let exact = wait_until(Duration::from_secs(30), || {
        last.clear();
        for account in &accounts {
            let url = format!("/v1/accounts/{account}/balance?currency=USD");
            let Ok(r) = http::request(cluster.http[3], "GET", &url, &[], None) else {
                return false;
            };
            if r.status != 200 {
                return false;
            }
            let body = r.json();
            let [balance, held, incoming] =
                ["balance", "held", "incoming"].map(|f| cents(body[f].as_str().expect("amount")));
            last.insert(account.clone(), (balance, held, incoming));
            if held != 0 || incoming != 0 || balance as i64 != expected[account.as_str()] {
                return false;
            }
        }
        true
    });
    assert!(
        exact,
        "balances are not what the committed transfers say: {last:?}"
    );

    // History through node 0, which holds no copy now, is read where the copies are.
    for account in accounts.iter().step_by(3) {
        let url = format!("/v1/accounts/{account}/history?currency=USD&limit=5");
        let page = http::request(cluster.http[0], "GET", &url, &[], None).expect("history");
        assert_eq!(page.status, 200, "{account}: {}", page.text());
        let movements = page.json()["movements"]
            .as_array()
            .expect("movements")
            .len();
        assert!(movements > 0, "{account}: {}", page.text());
    }

    // Node 0 holds no copy any more; every node's directory verifies, together.
    let node0 = cluster.data.join("node-0");
    let held = wait_until(Duration::from_secs(10), || {
        (0..PARTITIONS).all(|p| !node0.join(format!("partition-{p}")).exists())
    });
    assert!(held, "node 0 still holds copies:\n{}", cluster.logs());

    // Node 0 leaves the map: it stops on its own, cleanly, and drops its liveness; the
    // others serve on.
    let out = run_ok(&cluster, &["remove-node", "--id", "0"]);
    assert!(out.contains("removed node 0"), "{out}");
    let status = cluster.nodes[0].wait_exit();
    assert!(
        status.success(),
        "node 0 exited with {status}:\n{}",
        cluster.nodes[0].logs()
    );
    assert!(
        cluster.nodes[0]
            .logs()
            .contains("removed from the cluster's map; shutting down"),
        "{}",
        cluster.nodes[0].logs()
    );
    let version: u64 = (out.split("map version ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no map version in {out}"));
    let status = cluster.wait_status(NODES, version);
    let listed = status["nodes"].as_array().expect("nodes");
    assert!(listed.iter().all(|n| n["id"] != 0), "{status:#}");
    transfers_commit(&cluster.http[1..], &accounts, "after-removal", 5);
    cluster.stop_and_verify(NODES + 1);
}
