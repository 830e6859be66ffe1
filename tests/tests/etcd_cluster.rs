//! A cluster whose partition map lives in etcd, with real processes: a private etcd, the
//! map written by `wallet cluster init`, three `wallet node --etcd` nodes serving transfers
//! through every HTTP port, a fourth node added with `wallet cluster add-node` while
//! transfers run (every node learns of it, without a restart and without a failed
//! transfer), then etcd killed (transfers go on) and started again (every node registers
//! again). Afterwards money is conserved and `wallet verify` passes over every node.
//!
//! Skips, saying so loudly, only where etcd can be neither found nor installed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use walletd_e2e::cluster_on_etcd::{cents, transfer, transfers_commit, EtcdCluster};
use walletd_e2e::etcd::PrivateEtcd;
use walletd_e2e::{accounts_in, http, wait_until, wallet};

const PARTITIONS: u32 = 6;
/// Nodes in the cluster file; one more joins later.
const NODES: usize = 3;
const SECRET: &str = "the etcd e2e cluster's shared secret";
/// Each account's first deposit, in cents.
const OPENING_CENTS: u64 = 100_000;

#[test]
fn a_cluster_on_etcd_takes_a_new_node_and_serves_through_an_etcd_outage() {
    let Some(etcd) = PrivateEtcd::start() else {
        return;
    };
    let (mut cluster, config) = EtcdCluster::new(etcd, wallet!(), PARTITIONS, NODES, SECRET);

    // The first map, from the cluster file; a second init is refused.
    let init = cluster.cluster(&["init", "--config", &config]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    assert!(String::from_utf8_lossy(&init.stdout).contains("stored map version 1"));
    let again = cluster.cluster(&["init", "--config", &config]);
    assert!(!again.status.success());
    let refusal = String::from_utf8_lossy(&again.stderr);
    assert!(
        refusal.contains("already in etcd") && refusal.contains("--force"),
        "{refusal}"
    );

    for id in 0..NODES as u32 {
        cluster.start_node(id);
    }
    cluster.wait_ready();
    let status = cluster.wait_status(NODES, 1);
    assert_eq!(status["map"]["partition_count"], PARTITIONS, "{status:#}");
    assert_eq!(status["map"]["partitions"][4]["replicas"], json!([1, 2, 0]));
    assert_eq!(status["map"]["partitions"][4]["founders"], json!([1, 2, 0]));
    assert_eq!(status["partitions"][4]["owner"], 1);

    // Two accounts on every partition, opened and funded through every node in turn.
    let accounts: Vec<String> = (0..PARTITIONS)
        .flat_map(|p| accounts_in("acct-", p, PARTITIONS, 2))
        .collect();
    cluster.open_and_fund(&accounts, NODES);
    transfers_commit(&cluster.running_http(), &accounts, "before", 10);

    // A fourth node joins while transfers run through the first three.
    let stop_load = AtomicBool::new(false);
    let (committed, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        let vias = cluster.running_http();
        let (accounts, stop_load) = (&accounts, &stop_load);
        let (committed, failed, failures) = (&committed, &failed, &failures);
        scope.spawn(move || {
            let mut n = 0;
            while !stop_load.load(Ordering::Relaxed) {
                let from = &accounts[n % accounts.len()];
                let to = &accounts[(n + 5) % accounts.len()];
                let id = format!("during-{n}");
                match transfer(vias[n % vias.len()], from, to, &id) {
                    Ok(r) if r.status == 200 => committed.fetch_add(1, Ordering::Relaxed),
                    other => {
                        failures.lock().unwrap().push(format!("{id}: {other:?}"));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                n += 1;
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let (http3, peer3) = (cluster.http[NODES].to_string(), cluster.peer[NODES].clone());
        let added = cluster.cluster(&["add-node", "--id", "3", "--http", &http3, "--peer", &peer3]);
        assert!(
            added.status.success(),
            "{}",
            String::from_utf8_lossy(&added.stderr)
        );
        assert!(String::from_utf8_lossy(&added.stdout).contains("map version 2"));
        let twice = cluster.cluster(&[
            "add-node",
            "--id",
            "3",
            "--http",
            "127.0.0.1:1",
            "--peer",
            "127.0.0.1:2",
        ]);
        assert!(!twice.status.success());
        assert!(String::from_utf8_lossy(&twice.stderr).contains("node 3 is already in the map"));
        cluster.start_node(NODES as u32);
        cluster.wait_status(NODES + 1, 2);
        std::thread::sleep(Duration::from_millis(300));
        stop_load.store(true, Ordering::Relaxed);
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        committed.load(Ordering::Relaxed) > 0,
        "no transfer ran during the join"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "transfers failed while the map changed: {failures:?}\n{}",
        cluster.logs()
    );
    let status = cluster.status().expect("status");
    assert_eq!(status["nodes"][3]["partitions"], json!([]), "{status:#}");
    cluster.wait_ready();
    transfers_commit(&cluster.running_http(), &accounts, "joined", 5);

    // etcd down: every node keeps serving with the map it has.
    cluster.etcd.stop();
    transfers_commit(&cluster.running_http(), &accounts, "etcd-down", 5);
    let cut_off = wait_until(Duration::from_secs(10), || {
        cluster
            .nodes
            .iter()
            .all(|n| n.logs().contains("cut off from etcd"))
    });
    assert!(cut_off, "nodes did not log the outage:\n{}", cluster.logs());
    let unreachable = cluster.cluster(&["status"]);
    assert!(!unreachable.status.success());
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot be reached"));

    // etcd back: every node registers again, and the map is the one it was.
    cluster.etcd.restart();
    let status = cluster.wait_status(NODES + 1, 2);
    assert_eq!(status["map"]["map_version"], 2);
    transfers_commit(&cluster.running_http(), &accounts, "etcd-back", 5);

    // Money is conserved once every transfer has settled.
    let total = accounts.len() as u64 * OPENING_CENTS;
    let settled = wait_until(Duration::from_secs(20), || {
        let mut sum = 0;
        for account in &accounts {
            let url = format!("/v1/accounts/{account}/balance?currency=USD");
            let Ok(r) = http::request(cluster.http[0], "GET", &url, &[], None) else {
                return false;
            };
            let body = r.json();
            let [balance, held, incoming] =
                ["balance", "held", "incoming"].map(|f| cents(body[f].as_str().expect("amount")));
            if held != 0 || incoming != 0 {
                return false;
            }
            sum += balance;
        }
        sum == total
    });
    assert!(settled, "money not conserved or transfers not settled");

    cluster.stop_and_verify(NODES);
}
