//! Crash safety: `kill -9` in the middle of concurrent transfers, then `wallet verify` on the
//! crashed data directory, a restart, and an audit of every transfer a client attempted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;
use walletd_e2e::{accounts_in, wait_until, wallet, Server};

const PARTITIONS: u32 = 8;
/// Accounts per partition.
const ACCOUNTS_PER_PARTITION: usize = 2;
/// Concurrent clients sending transfers.
const CLIENTS: u64 = 8;
/// Bound on transfers per client (the kill normally comes long before).
const TRANSFERS_PER_CLIENT_MAX: u64 = 5_000;
/// Transfers answered before the kill.
const ANSWERED_BEFORE_KILL: usize = 1_000;
/// Opening balance of each account, in cents.
const OPENING_CENTS: u64 = 100_000;

/// A transfer a client attempted, and what it was told (`None`: no answer, the server died).
#[derive(Debug, Clone)]
struct Attempt {
    from: String,
    to: String,
    cents: u64,
    id: String,
    answer: Option<(u16, String)>,
}

impl Attempt {
    fn seen_committed(&self) -> bool {
        self.answer == Some((200, "committed".into()))
    }

    /// The request body, for a retry.
    fn body(&self) -> serde_json::Value {
        json!({"from_account": self.from, "to_account": self.to, "currency": "USD",
               "transaction_id": self.id, "amount": format!("{}.{:02}", self.cents / 100, self.cents % 100)})
    }
}

fn cents(text: &str) -> u64 {
    let (whole, fraction) = text.split_once('.').expect("two decimals");
    whole.parse::<u64>().unwrap() * 100 + fraction.parse::<u64>().unwrap()
}

fn client(
    server: &Server,
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
        let id = format!("c{seed}-{i}");
        let body = json!({"from_account": from, "to_account": to, "currency": "USD", "transaction_id": id,
                          "amount": format!("{}.{:02}", cents / 100, cents % 100)});
        let answer = server
            .try_post("/v1/wallet/balance_transfer", &body)
            .ok()
            .map(|r| {
                (
                    r.status,
                    r.json()["status"].as_str().unwrap_or("").to_string(),
                )
            });
        let died = answer.is_none();
        if !died {
            answered.fetch_add(1, Ordering::Relaxed);
        }
        log.lock().unwrap().push(Attempt {
            from,
            to,
            cents,
            id,
            answer,
        });
        if died {
            return;
        }
    }
}

/// The final status of a transfer after restart: `committed`, `rejected`, `cancelled`, or
/// `absent` (it never reached the log); waits while it is `pending`.
fn final_status(server: &Server, attempt: &Attempt) -> String {
    let url = format!("/v1/transfers/{}/{}", attempt.from, attempt.id);
    let mut status = String::new();
    let settled = wait_until(Duration::from_secs(30), || {
        let r = server.get(&url);
        status = match r.status {
            404 => "absent".into(),
            200 => r.json()["status"].as_str().unwrap().to_string(),
            other => panic!("GET {url}: {other} {}", r.text()),
        };
        status != "pending"
    });
    assert!(settled, "{url} still pending after restart");
    status
}

/// Opens the accounts, two on each partition, each with the opening balance.
fn open_accounts(server: &Server) -> Vec<String> {
    let accounts: Vec<String> = (0..PARTITIONS)
        .flat_map(|p| accounts_in(&format!("k{p}-"), p, PARTITIONS, ACCOUNTS_PER_PARTITION))
        .collect();
    for account in &accounts {
        let r = server.post(
            "/v1/accounts",
            &json!({"account_id": account, "currency": "USD"}),
        );
        assert_eq!(r.status, 201);
        let r = server.post(
            &format!("/v1/accounts/{account}/deposit"),
            &json!({"amount": "1000.00", "currency": "USD", "transaction_id": "open"}),
        );
        assert_eq!(r.status, 200);
    }
    accounts
}

/// Runs the clients until enough transfers were answered, then kills the server with -9.
fn transfer_until_killed(server: &Server, accounts: &[String]) -> Vec<Attempt> {
    let stop = AtomicBool::new(false);
    let log = Mutex::new(Vec::new());
    let answered = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for seed in 0..CLIENTS {
            let (stop, log, answered) = (&stop, &log, &answered);
            scope.spawn(move || client(server, accounts, seed, stop, log, answered));
        }
        let started = Instant::now();
        while answered.load(Ordering::Relaxed) < ANSWERED_BEFORE_KILL
            && started.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        server.kill9();
        stop.store(true, Ordering::Relaxed);
    });
    let attempts = log.into_inner().unwrap();
    let committed_seen = attempts.iter().filter(|a| a.seen_committed()).count();
    let unanswered = attempts.iter().filter(|a| a.answer.is_none()).count();
    eprintln!(
        "{} attempts, {committed_seen} seen committed, {unanswered} unanswered at the kill",
        attempts.len()
    );
    assert!(
        committed_seen >= 100,
        "too few transfers before the kill: {committed_seen}"
    );
    attempts
}

/// Checks every attempt's final status against what its client was told, and returns the
/// balances the committed ones imply.
fn audit_outcomes<'a>(
    server: &Server,
    accounts: &'a [String],
    attempts: &[Attempt],
) -> BTreeMap<&'a str, u64> {
    let mut expected: BTreeMap<&str, u64> = accounts
        .iter()
        .map(|a| (a.as_str(), OPENING_CENTS))
        .collect();
    for attempt in attempts {
        let status = final_status(server, attempt);
        match &attempt.answer {
            Some((200, seen)) => assert_eq!(
                (seen.as_str(), status.as_str()),
                ("committed", "committed"),
                "{attempt:?}"
            ),
            Some((422, seen)) => assert_eq!(
                (seen.as_str(), status.as_str()),
                ("rejected", "rejected"),
                "{attempt:?}"
            ),
            // No answer, or not final in time: any outcome, as long as it is final now.
            None | Some((202, _)) => {
                assert!(["committed", "rejected", "cancelled", "absent"].contains(&status.as_str()))
            }
            Some((code, _)) => panic!("unexpected answer {code} for {attempt:?}"),
        }
        if status == "committed" {
            *expected.get_mut(attempt.from.as_str()).unwrap() -= attempt.cents;
            *expected.get_mut(attempt.to.as_str()).unwrap() += attempt.cents;
        }
    }
    expected
}

/// Every account's balance is what the committed transfers imply: each applied exactly once,
/// nothing else moved, no hold or pending credit left once the transfers resumed after the
/// restart have had their Confirms acknowledged (a transfer reads `committed` from its durable
/// decision on, before that).
fn audit_balances(server: &Server, expected: &BTreeMap<&str, u64>) {
    for (account, cents_expected) in expected {
        let mut b = serde_json::Value::Null;
        wait_until(Duration::from_secs(30), || {
            b = server
                .get(&format!("/v1/accounts/{account}/balance"))
                .json();
            b["held"] == "0.00" && b["incoming"] == "0.00"
        });
        assert_eq!(
            (b["held"].as_str(), b["incoming"].as_str()),
            (Some("0.00"), Some("0.00")),
            "{b}"
        );
        assert_eq!(
            cents(b["balance"].as_str().unwrap()),
            *cents_expected,
            "{account}: {b}"
        );
    }
    let total: u64 = expected.values().sum();
    assert_eq!(
        total,
        OPENING_CENTS * expected.len() as u64,
        "money is conserved"
    );
}

#[test]
fn kill_9_during_transfers_then_verify_restart_and_audit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let wallet = wallet!();
    let server = wallet.serve(&data, &[]);
    let accounts = open_accounts(&server);
    let attempts = transfer_until_killed(&server, &accounts);

    // The crashed directory is consistent as it lies (unfinished transfers allowed).
    let (code, report) = wallet.verify(&data);
    assert_eq!(code, 0, "verify after kill -9:\n{report}");

    let server = wallet.serve(&data, &[]);
    assert!(
        server.logs().contains("recovery complete"),
        "{}",
        server.logs()
    );
    let expected = audit_outcomes(&server, &accounts, &attempts);
    audit_balances(&server, &expected);
    // A client retrying a transfer it saw committed gets the same answer, and nothing moves.
    for attempt in attempts.iter().filter(|a| a.seen_committed()).take(20) {
        let r = server.post("/v1/wallet/balance_transfer", &attempt.body());
        assert_eq!(
            (r.status, r.json()["status"].as_str()),
            (200, Some("committed"))
        );
    }
    audit_balances(&server, &expected);

    let status = server.terminate();
    assert!(
        status.success(),
        "SIGTERM exit: {status}\n{}",
        server.logs()
    );
    let (code, report) = wallet.verify(&data);
    assert_eq!(code, 0, "verify after restart:\n{report}");
    assert!(
        report.contains("USD: deposited 16000.00, withdrawn 0.00, balances 16000.00, holds in flight 0.00: conserved"),
        "{report}"
    );
}

/// Rounds of the 202 test: concurrent transfers, a `kill -9` at the first 202, a restart.
const ACCEPTED_ROUNDS: usize = 10;
/// Transfers sent at once in each round.
const ACCEPTED_CONCURRENT: usize = 24;

/// `202 pending` means durably accepted: with no time to wait for outcomes, a server killed
/// the moment it answers 202 (while more transfers are on their way in) and restarted knows
/// every transfer it answered 202 for.
#[test]
fn every_transfer_answered_202_survives_a_kill_9() {
    let w = wallet!();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let no_wait = ["--transfer-wait-ms", "0"];
    let from = accounts_in("src", 0, PARTITIONS, 1).remove(0);
    let to = accounts_in("dst", 1, PARTITIONS, 1).remove(0);
    let mut server = w.serve(&data, &no_wait);
    for account in [&from, &to] {
        let r = server.post(
            "/v1/accounts",
            &json!({"account_id": account, "currency": "USD"}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let funds = json!({"amount": "100.00", "currency": "USD", "transaction_id": "funds"});
    let r = server.post(&format!("/v1/accounts/{from}/deposit"), &funds);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut accepted_total = 0;
    for round in 0..ACCEPTED_ROUNDS {
        let accepted = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for i in 0..ACCEPTED_CONCURRENT {
                let (server, accepted, from, to) = (&server, &accepted, &from, &to);
                scope.spawn(move || {
                    let id = format!("t-{round}-{i}");
                    let body = json!({"from_account": from, "to_account": to, "currency": "USD",
                                      "transaction_id": id, "amount": "0.01"});
                    if let Ok(r) = server.try_post("/v1/wallet/balance_transfer", &body) {
                        if r.status == 202 {
                            accepted.lock().unwrap().push(id);
                        }
                    }
                });
            }
            let first = wait_until(Duration::from_secs(10), || {
                !accepted.lock().unwrap().is_empty()
            });
            assert!(first, "some transfer is answered 202");
            server.kill9();
        });
        server = w.serve(&data, &no_wait);
        for id in accepted.into_inner().unwrap() {
            let status = server.get(&format!("/v1/transfers/{from}/{id}"));
            assert_eq!(
                status.status,
                200,
                "{id}: answered 202, unknown after kill -9: {}",
                status.text()
            );
            accepted_total += 1;
        }
    }
    assert!(
        accepted_total >= ACCEPTED_ROUNDS,
        "{accepted_total} transfers answered 202"
    );
}
