//! Every endpoint and every error code of the HTTP API, against a real `wallet serve`.
//!
//! Not covered here: `503 partition_unavailable` needs a partition driver to die while the
//! process lives (an fsync error), which an all-in-one server on a healthy disk cannot be
//! made to do from outside; the mapping is unit-tested in `errors.rs` and the shutdown on a
//! dead partition is in `serve.rs`.

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};
use walletd_e2e::{accounts_in, http, wait_until, wallet, Server};

const PARTITIONS: u32 = 8;

fn start(extra: &[&str]) -> (tempfile::TempDir, Server) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = wallet!().serve(&tmp.path().join("data"), extra);
    (tmp, server)
}

fn open(server: &Server, account: &str, currency: &str) {
    let r = server.post(
        "/v1/accounts",
        &json!({"account_id": account, "currency": currency}),
    );
    assert!(
        r.status == 201 || r.status == 200,
        "{}: {}",
        r.status,
        r.text()
    );
}

fn deposit(server: &Server, account: &str, amount: &str, id: &str) -> http::Response {
    server.post(
        &format!("/v1/accounts/{account}/deposit"),
        &json!({"amount": amount, "currency": "USD", "transaction_id": id}),
    )
}

fn transfer(server: &Server, from: &str, to: &str, amount: &str, id: &str) -> http::Response {
    server.post(
        "/v1/wallet/balance_transfer",
        &json!({"from_account": from, "to_account": to, "amount": amount, "currency": "USD", "transaction_id": id}),
    )
}

fn balance(server: &Server, account: &str) -> Value {
    let r = server.get(&format!("/v1/accounts/{account}/balance"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn accounts_open_deposit_withdraw_and_their_errors() {
    let (_tmp, s) = start(&[]);
    let r = s.post(
        "/v1/accounts",
        &json!({"account_id": "alice", "currency": "USD"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"account_id": "alice", "currency": "USD", "created": true})
    );
    assert_eq!(r.header("location"), Some("/v1/accounts/alice/balance"));
    let r = s.post(
        "/v1/accounts",
        &json!({"account_id": "alice", "currency": "USD"}),
    );
    assert_eq!((r.status, r.json()["created"].clone()), (200, json!(false)));
    let r = s.post(
        "/v1/accounts",
        &json!({"account_id": "alice", "currency": "EUR"}),
    );
    assert_eq!((r.status, r.code()), (409, "account_exists".into()));

    let r = deposit(&s, "alice", "100.50", "d1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"account_id": "alice", "currency": "USD", "balance": "100.50"})
    );
    // The same deposit again is answered, not applied again.
    let r = deposit(&s, "alice", "100.50", "d1");
    assert_eq!(
        (r.status, r.json()["balance"].clone()),
        (200, json!("100.50"))
    );
    let r = deposit(&s, "alice", "7", "d1");
    assert_eq!((r.status, r.code()), (409, "transaction_conflict".into()));
    assert_eq!(balance(&s, "alice")["balance"], "100.50");

    let withdraw = |amount: &str, id: &str| {
        s.post(
            "/v1/accounts/alice/withdraw",
            &json!({"amount": amount, "currency": "USD", "transaction_id": id}),
        )
    };
    let r = withdraw("0.50", "w1");
    assert_eq!(
        (r.status, r.json()["balance"].clone()),
        (200, json!("100.00"))
    );
    let r = withdraw("1000", "w2");
    assert_eq!((r.status, r.code()), (422, "insufficient_funds".into()));
    let r = s.post(
        "/v1/accounts/alice/withdraw",
        &json!({"amount": "1", "currency": "EUR", "transaction_id": "w3"}),
    );
    assert_eq!((r.status, r.code()), (422, "currency_mismatch".into()));
    let r = deposit(&s, "nobody", "1", "d1");
    assert_eq!((r.status, r.code()), (404, "account_not_found".into()));
    let r = s.get("/v1/accounts/nobody/balance");
    assert_eq!((r.status, r.code()), (404, "account_not_found".into()));
    let r = s.get("/v1/accounts/alice/balance?currency=EUR");
    assert_eq!((r.status, r.code()), (422, "currency_mismatch".into()));
    let b = balance(&s, "alice");
    assert_eq!(
        b,
        json!({"account_id": "alice", "currency": "USD", "balance": "100.00", "held": "0.00", "incoming": "0.00"})
    );
    // Currencies keep their own minor units.
    open(&s, "yen", "JPY");
    let r = s.post(
        "/v1/accounts/yen/deposit",
        &json!({"amount": "500", "currency": "JPY", "transaction_id": "d"}),
    );
    assert_eq!(r.json()["balance"], "500");
    let r = s.post(
        "/v1/accounts/yen/deposit",
        &json!({"amount": "5.5", "currency": "JPY", "transaction_id": "e"}),
    );
    assert_eq!((r.status, r.code()), (400, "invalid_amount".into()));
}

#[test]
fn transfers_commit_reject_cancel_and_answer_retries_alike() {
    let (_tmp, s) = start(&[]);
    let same = accounts_in("s", 0, PARTITIONS, 2);
    let other = accounts_in("o", 1, PARTITIONS, 1);
    let (a, b, c) = (&same[0], &same[1], &other[0]);
    for account in [a, b, c] {
        open(&s, account, "USD");
    }
    deposit(&s, a, "100.00", "d1");

    // Same partition: one atomic event.
    let r = transfer(&s, a, b, "10.00", "t1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"transaction_id": "t1", "status": "committed"})
    );
    // Across partitions (TC/C), through the original spelling of the route.
    let r = s.post(
        "/v1/wallet/balance_transper",
        &json!({"from_account": a, "to_account": c, "amount": "20.00", "currency": "USD", "transaction_id": "t2"}),
    );
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, json!("committed"))
    );
    // Retries get the first answer; a different body under the same id is a conflict.
    let r = transfer(&s, a, c, "20.00", "t2");
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, json!("committed"))
    );
    let r = transfer(&s, a, c, "20.01", "t2");
    assert_eq!((r.status, r.code()), (409, "transaction_conflict".into()));
    assert_eq!(balance(&s, a)["balance"], "70.00");
    assert_eq!(balance(&s, b)["balance"], "10.00");
    assert_eq!(balance(&s, c)["balance"], "20.00");

    // Rejected: insufficient funds, recorded, and a retry is rejected the same way.
    for _ in 0..2 {
        let r = transfer(&s, a, c, "70.01", "t3");
        assert_eq!(r.status, 422, "{}", r.text());
        let body = r.json();
        assert_eq!(
            (body["status"].clone(), body["code"].clone()),
            (json!("rejected"), json!("insufficient_funds"))
        );
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Cancelled: the destination does not exist (cross-partition: the Try fails).
    let missing = &accounts_in("m", 2, PARTITIONS, 1)[0];
    let r = transfer(&s, a, missing, "1.00", "t4");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(
        (r.json()["status"].clone(), r.code()),
        (json!("cancelled"), "account_not_found".into())
    );
    // Same partition, destination missing: refused before anything is recorded.
    let missing_here = &accounts_in("mh", 0, PARTITIONS, 1)[0];
    let r = transfer(&s, a, missing_here, "1.00", "t5");
    assert_eq!((r.status, r.code()), (404, "account_not_found".into()));
    // Currency mismatch, cross-partition (cancelled) and same-partition (refused).
    let euro_there = &accounts_in("e", 3, PARTITIONS, 1)[0];
    let euro_here = &accounts_in("eh", 0, PARTITIONS, 1)[0];
    open(&s, euro_there, "EUR");
    open(&s, euro_here, "EUR");
    let r = transfer(&s, a, euro_there, "1.00", "t6");
    assert_eq!(
        (r.status, r.json()["status"].clone(), r.code()),
        (422, json!("cancelled"), "currency_mismatch".into())
    );
    let r = transfer(&s, a, euro_here, "1.00", "t7");
    assert_eq!((r.status, r.code()), (422, "currency_mismatch".into()));
    let r = transfer(&s, a, a, "1.00", "t8");
    assert_eq!((r.status, r.code()), (422, "same_account".into()));
    let r = transfer(&s, "ghost", c, "1.00", "t9");
    assert_eq!((r.status, r.code()), (404, "account_not_found".into()));
    // Nothing of the refused or cancelled transfers stuck. A cancelled transfer is final for
    // its client once the Cancel decision is logged; the hold returns when the destination
    // acknowledges the Cancel, an instant later.
    let settled = wait_until(Duration::from_secs(10), || {
        let b = balance(&s, a);
        (b["balance"].clone(), b["held"].clone()) == (json!("70.00"), json!("0.00"))
    });
    assert!(settled, "{}", balance(&s, a));
}

/// `?dry_run=true` on every write endpoint: the answer the real request would get, decided
/// by the same code, and nothing recorded: no money moves and no id is used up.
#[test]
fn dry_runs_answer_as_the_real_request_would_and_record_nothing() {
    let (_tmp, s) = start(&[]);
    let same = accounts_in("s", 0, PARTITIONS, 2);
    let (a, b) = (&same[0], &same[1]);
    let c = &accounts_in("o", 1, PARTITIONS, 1)[0];
    let missing = &accounts_in("m", 2, PARTITIONS, 1)[0];
    let euro = &accounts_in("e", 3, PARTITIONS, 1)[0];
    for account in [a, b, c] {
        open(&s, account, "USD");
    }
    open(&s, euro, "EUR");
    deposit(&s, a, "100.00", "d1");
    let dry = |body: Value| s.post("/v1/wallet/balance_transfer?dry_run=true", &body);
    let body = |to: &str, amount: &str, id: &str| json!({"from_account": a, "to_account": to, "amount": amount, "currency": "USD", "transaction_id": id});
    let balances = || [a, b, c].map(|x| balance(&s, x)["balance"].as_str().unwrap().to_string());
    let before = balances();

    // Within a partition and across partitions: committed, with nothing moved.
    let r = dry(body(b, "10.00", "t1"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"transaction_id": "t1", "status": "committed", "dry_run": true})
    );
    let r = dry(body(c, "20.00", "t2"));
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, json!("committed"))
    );
    // The refusals of the home and of the destination, with the real request's codes.
    let r = dry(body(c, "100.01", "t3"));
    assert_eq!(
        (r.status, r.json()["status"].clone(), r.code()),
        (422, json!("rejected"), "insufficient_funds".into())
    );
    let r = dry(body(missing, "1.00", "t4"));
    assert_eq!(
        (r.status, r.json()["status"].clone(), r.code()),
        (404, json!("cancelled"), "account_not_found".into())
    );
    let r = dry(body(euro, "1.00", "t5"));
    assert_eq!(
        (r.status, r.json()["status"].clone(), r.code()),
        (422, json!("cancelled"), "currency_mismatch".into())
    );
    assert_eq!(balances(), before, "a dry run moves no money");
    for id in ["t1", "t2", "t3", "t4", "t5"] {
        let r = s.get(&format!("/v1/transfers/{a}/{id}"));
        assert_eq!(r.status, 404, "a dry run records no transfer: {}", r.text());
    }
    // No id was used up: the refused dry run's id commits for real with another amount.
    let r = transfer(&s, a, c, "30.00", "t3");
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, json!("committed"))
    );
    // Once used, a dry run of the id answers as a retry would: its first outcome, or a
    // conflict for another body.
    let r = dry(body(c, "30.00", "t3"));
    assert_eq!(
        r.json(),
        json!({"transaction_id": "t3", "status": "committed", "dry_run": true})
    );
    let r = dry(body(c, "30.01", "t3"));
    assert_eq!((r.status, r.code()), (409, "transaction_conflict".into()));

    // Deposits and withdrawals: the balance the request would leave.
    let r = s.post(
        &format!("/v1/accounts/{a}/deposit?dry_run=true"),
        &json!({"amount": "5.00", "currency": "USD", "transaction_id": "d2"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["balance"].clone(), r.json()["dry_run"].clone()),
        (json!("75.00"), json!(true))
    );
    let r = s.post(
        &format!("/v1/accounts/{a}/withdraw?dry_run=true"),
        &json!({"amount": "70.01", "currency": "USD", "transaction_id": "w1"}),
    );
    assert_eq!((r.status, r.code()), (422, "insufficient_funds".into()));
    assert_eq!(balance(&s, a)["balance"], "70.00");
    let r = s.post(
        &format!("/v1/accounts/{a}/withdraw"),
        &json!({"amount": "1.00", "currency": "USD", "transaction_id": "w1"}),
    );
    assert_eq!(
        (r.status, r.json()["balance"].clone()),
        (200, json!("69.00"))
    );

    // A batch: each item as it would be answered, nothing recorded.
    let items = json!({"transfers": [body(b, "1.00", "b1"), body(c, "1000.00", "b2"), body(missing, "1.00", "b3"), {"from_account": a}]});
    let r = s.post("/v1/wallet/balance_transfers?dry_run=true", &items);
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    assert_eq!(answer["dry_run"], json!(true));
    let statuses: Vec<(Value, Value)> = (answer["results"].as_array().unwrap().iter())
        .map(|item| (item["status"].clone(), item["http_status"].clone()))
        .collect();
    assert_eq!(
        statuses,
        [
            (json!("committed"), json!(200)),
            (json!("rejected"), json!(422)),
            (json!("cancelled"), json!(404)),
            (json!("error"), json!(400)),
        ]
    );
    assert_eq!(
        balance(&s, a)["balance"],
        "69.00",
        "a dry batch moves no money"
    );
    assert_eq!(s.get(&format!("/v1/transfers/{a}/b1")).status, 404);

    // A dry_run that is not a boolean is a client error, and nothing runs.
    let r = s.post(
        "/v1/wallet/balance_transfer?dry_run=maybe",
        &body(b, "1.00", "t9"),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(s.get(&format!("/v1/transfers/{a}/t9")).status, 404);
}

/// Refunds: money back along a committed transfer, as a transfer of its own, never more
/// than the transfer moved; within a partition and across partitions.
#[test]
fn refunds_move_money_back_never_more_than_the_original() {
    let (_tmp, s) = start(&[]);
    let same = accounts_in("s", 0, PARTITIONS, 2);
    let (a, b) = (&same[0], &same[1]);
    let c = &accounts_in("o", 1, PARTITIONS, 1)[0];
    for account in [a, b, c] {
        open(&s, account, "USD");
    }
    deposit(&s, a, "100.00", "d1");
    assert_eq!(transfer(&s, a, b, "30.00", "t1").status, 200);
    let refund = |original: &str, body: Value| {
        s.post(&format!("/v1/transfers/{a}/{original}/refund"), &body)
    };

    let r = refund("t1", json!({"refund_id": "r1", "amount": "10.00"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"transaction_id": "r1", "refund_of": "t1", "from_account": b, "to_account": a,
               "status": "committed", "status_url": format!("/v1/transfers/{b}/r1")})
    );
    let status = s.get(&format!("/v1/transfers/{b}/r1")).json();
    assert_eq!(
        (
            status["refund_of"].clone(),
            status["amount"].clone(),
            status["to_account"].clone()
        ),
        (json!("t1"), json!("10.00"), json!(a))
    );
    assert!(s
        .get(&format!("/v1/transfers/{a}/t1"))
        .json()
        .get("refund_of")
        .is_none());
    // A retry answers the same; the same id with another amount is a conflict.
    let r = refund("t1", json!({"refund_id": "r1", "amount": "10.00"}));
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, json!("committed"))
    );
    let r = refund("t1", json!({"refund_id": "r1", "amount": "9.00"}));
    assert_eq!((r.status, r.code()), (409, "transaction_conflict".into()));
    // More than is left: refused, recorded.
    for _ in 0..2 {
        let r = refund("t1", json!({"refund_id": "r2", "amount": "20.01"}));
        assert_eq!(
            (r.status, r.json()["status"].clone(), r.code()),
            (422, json!("rejected"), "refund_exceeds_original".into())
        );
    }
    // A dry run of what is left says committed and records nothing.
    let r = s.post(
        &format!("/v1/transfers/{a}/t1/refund?dry_run=true"),
        &json!({"refund_id": "r3"}),
    );
    assert_eq!(
        (
            r.status,
            r.json()["status"].clone(),
            r.json()["dry_run"].clone()
        ),
        (200, json!("committed"), json!(true))
    );
    assert_eq!(s.get(&format!("/v1/transfers/{b}/r3")).status, 404);
    // No amount: all that is left; then nothing is.
    let r = refund("t1", json!({"refund_id": "r3"}));
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, json!("committed"))
    );
    assert_eq!(
        s.get(&format!("/v1/transfers/{b}/r3")).json()["amount"],
        "20.00"
    );
    let r = refund("t1", json!({"refund_id": "r4"}));
    assert_eq!(
        (r.status, r.code()),
        (422, "refund_exceeds_original".into())
    );
    assert_eq!(balance(&s, a)["balance"], "100.00");
    assert_eq!(balance(&s, b)["balance"], "0.00");

    // Across partitions: decided where the credit landed, paid back through TC/C.
    assert_eq!(transfer(&s, a, c, "40.00", "t2").status, 200);
    let refund_t2 = || refund("t2", json!({"refund_id": "r5", "amount": "15.00"}));
    let mut r = refund_t2();
    // Refundable once the destination applied the Confirm: on one node, before the answer.
    let settled = wait_until(Duration::from_secs(10), || {
        r = refund_t2();
        r.status != 409
    });
    assert!(settled, "{}", r.text());
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, json!("committed")),
        "{}",
        r.text()
    );
    let settled = wait_until(Duration::from_secs(10), || {
        balance(&s, a)["balance"] == "75.00" && balance(&s, c)["held"] == "0.00"
    });
    assert!(settled, "{} {}", balance(&s, a), balance(&s, c));
    assert_eq!(balance(&s, c)["balance"], "25.00");

    // What cannot be refunded, and bad input: clear errors, nothing recorded.
    let r = transfer(&s, b, a, "1.00", "poor");
    assert_eq!(r.status, 422);
    let r = s.post(
        &format!("/v1/transfers/{b}/poor/refund"),
        &json!({"refund_id": "r6"}),
    );
    assert_eq!(
        (r.status, r.code()),
        (409, "transfer_not_refundable".into())
    );
    let r = refund("nothing", json!({"refund_id": "r6"}));
    assert_eq!((r.status, r.code()), (404, "transfer_not_found".into()));
    let r = refund("t2", json!({"refund_id": "r6", "amount": "1.001"}));
    assert_eq!((r.status, r.code()), (400, "invalid_amount".into()));
    let r = refund("t2", json!({"refund_id": "r6", "amount": "0"}));
    assert_eq!((r.status, r.code()), (400, "invalid_amount".into()));
    let r = refund("t2", json!({"amount": "1.00"}));
    assert_eq!((r.status, r.code()), (400, "invalid_field".into()));
    assert_eq!(s.get(&format!("/v1/transfers/{c}/r6")).status, 404);
}

/// On one node, money a client was told is committed can be spent at once: the Confirm that
/// credits the destination is queued there before the client is answered, so the next
/// transfer out of the destination finds it. Each hop here moves money the account did not
/// have before the hop into it, around three partitions.
#[test]
fn a_committed_credit_can_be_spent_at_once_on_one_node() {
    let (_tmp, s) = start(&[]);
    let ring = [
        accounts_in("r", 1, PARTITIONS, 1).remove(0),
        accounts_in("r", 2, PARTITIONS, 1).remove(0),
        accounts_in("r", 3, PARTITIONS, 1).remove(0),
    ];
    for account in &ring {
        open(&s, account, "USD");
    }
    deposit(&s, &ring[0], "5.00", "d-ring");
    for hop in 0..60 {
        let (from, to) = (&ring[hop % 3], &ring[(hop + 1) % 3]);
        let r = transfer(&s, from, to, "5.00", &format!("hop-{hop}"));
        assert_eq!(
            (r.status, r.json()["status"].clone()),
            (200, json!("committed")),
            "hop {hop}: {}",
            r.text()
        );
    }
    let funded = balance(&s, &ring[0]);
    assert_eq!(
        (funded["balance"].as_str(), funded["incoming"].as_str()),
        (Some("5.00"), Some("0.00"))
    );
}

/// Above its memory limit the server refuses new writes with a clear error and goes on
/// serving reads (here the limit is 1 MiB, below any process).
#[test]
fn above_its_memory_limit_the_server_refuses_writes_and_serves_reads() {
    let (_tmp, s) = start(&["--memory-limit-mb", "1"]);
    let r = s.post(
        "/v1/accounts",
        &json!({"account_id": "alice", "currency": "USD"}),
    );
    assert_eq!(
        (r.status, r.code()),
        (503, "memory_limit".into()),
        "{}",
        r.text()
    );
    assert!(r.text().contains("--memory-limit-mb"), "{}", r.text());
    let r = transfer(&s, "alice", "bob", "1.00", "t-1");
    assert_eq!((r.status, r.code()), (503, "memory_limit".into()));
    let r = s.get("/v1/accounts/alice/balance");
    assert_eq!((r.status, r.code()), (404, "account_not_found".into()));
    let metrics = s.get("/metrics").text();
    assert!(
        metrics.contains("walletd_memory_limit_bytes 1048576"),
        "{metrics}"
    );
}

#[test]
fn transfer_status_history_pages_and_past_balances() {
    let (_tmp, s) = start(&[]);
    let a = &accounts_in("h", 4, PARTITIONS, 1)[0];
    let c = &accounts_in("k", 5, PARTITIONS, 1)[0];
    open(&s, a, "USD");
    open(&s, c, "USD");
    for i in 1..=5 {
        deposit(&s, a, "10.00", &format!("d{i}"));
    }
    assert_eq!(transfer(&s, a, c, "2.50", "x1").status, 200);
    assert_eq!(transfer(&s, a, c, "99.00", "x2").status, 422);

    // The client hears "committed" at the commit point, when the home's side is finished
    // too; the destination logs the Confirm a moment later, and its history shows the
    // credit once that record is durable.
    let t = s.get(&format!("/v1/transfers/{a}/x1")).json();
    assert_eq!(t["phase"], json!("committed"), "{t}");
    let credited = wait_until(Duration::from_secs(10), || {
        s.get(&format!("/v1/accounts/{c}/history")).json()["movements"][0]["kind"]
            == json!("credit_in")
    });
    assert!(credited, "the destination never showed the credit");
    let r = s.get(&format!("/v1/transfers/{a}/x1"));
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json();
    assert_eq!(
        (t["status"].clone(), t["phase"].clone(), t["amount"].clone()),
        (json!("committed"), json!("committed"), json!("2.50"))
    );
    assert_eq!(t["cross_partition"], true);
    let times: Vec<&str> = ["accepted_at", "decided_at", "finished_at"]
        .iter()
        .map(|k| t[*k].as_str().unwrap_or_else(|| panic!("{k} in {t}")))
        .collect();
    assert!(
        times.iter().all(|ts| ts.ends_with('Z') && ts.len() == 27),
        "{times:?}"
    );
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "phases in order: {times:?}"
    );
    let r = s.get(&format!("/v1/transfers/{a}/x2"));
    assert_eq!(
        (r.json()["status"].clone(), r.json()["code"].clone()),
        (json!("rejected"), json!("insufficient_funds"))
    );
    let r = s.get(&format!("/v1/transfers/{a}/nope"));
    assert_eq!((r.status, r.code()), (404, "transfer_not_found".into()));

    // History newest first, two per page, following the cursor: 5 deposits, hold, capture.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = s.get(&format!(
            "/v1/accounts/{a}/history?currency=USD&limit=2{cursor}"
        ));
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        let movements = page["movements"].as_array().expect("movements").clone();
        assert!(movements.len() <= 2);
        seen.extend(movements);
        match page["next_before_lsn"].as_u64() {
            Some(lsn) => cursor = format!("&before_lsn={lsn}"),
            None => break,
        }
    }
    let kinds: Vec<&str> = seen.iter().map(|m| m["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "hold_captured",
            "hold",
            "deposit",
            "deposit",
            "deposit",
            "deposit",
            "deposit"
        ]
    );
    let lsns: Vec<u64> = seen.iter().map(|m| m["lsn"].as_u64().unwrap()).collect();
    assert!(lsns.windows(2).all(|w| w[0] > w[1]), "{lsns:?}");
    assert_eq!(seen[1]["balance_change"], "-2.50");
    assert_eq!(seen[0]["balance_after"], "47.50");
    let r = s.get(&format!("/v1/accounts/{c}/history"));
    assert_eq!(r.json()["movements"][0]["kind"], "credit_in");

    // Past balances: after the second deposit, by lsn and by time.
    let second = &seen[5];
    let r = s.get(&format!(
        "/v1/accounts/{a}/balance?as_of_lsn={}",
        second["lsn"]
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["balance"].clone(), r.json()["as_of_lsn"].clone()),
        (json!("20.00"), second["lsn"].clone())
    );
    let r = s.get(&format!(
        "/v1/accounts/{a}/balance?as_of={}",
        second["timestamp"].as_str().unwrap()
    ));
    assert_eq!(r.json()["balance"], "20.00");
    let r = s.get(&format!(
        "/v1/accounts/{a}/balance?as_of=1970-01-01T00:00:01Z"
    ));
    assert_eq!((r.status, r.code()), (404, "account_not_found".into()));
    for bad in [
        "as_of=yesterday",
        "as_of_lsn=-1",
        "as_of_lsn=1&as_of=2024-01-01T00:00:00Z",
    ] {
        let r = s.get(&format!("/v1/accounts/{a}/balance?{bad}"));
        assert_eq!((r.status, r.code()), (400, "invalid_query".into()), "{bad}");
    }
    for bad in ["limit=0", "limit=1001", "limit=x", "before_lsn=x"] {
        let r = s.get(&format!("/v1/accounts/{a}/history?{bad}"));
        assert_eq!((r.status, r.code()), (400, "invalid_query".into()), "{bad}");
    }
}

#[test]
fn batch_transfers_answer_each_item_in_order() {
    let (_tmp, s) = start(&[]);
    let accounts = accounts_in("b", 0, 1, 16);
    for a in &accounts {
        open(&s, a, "USD");
        deposit(&s, a, "1000.00", "seed");
    }
    let items: Vec<Value> = (0..2000)
        .map(|i| {
            json!({"from_account": accounts[i % 16], "to_account": accounts[(i * 7 + 3) % 16],
                   "amount": "0.01", "currency": "USD", "transaction_id": format!("bt{i}")})
        })
        .collect();
    let r = s.post(
        "/v1/wallet/balance_transfers",
        &json!({ "transfers": items }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let results = r.json()["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), 2000);
    for (i, item) in results.iter().enumerate() {
        assert_eq!(item["index"], i);
        let same = i % 16 == (i * 7 + 3) % 16;
        let expected = if same { "error" } else { "committed" };
        assert_eq!(item["status"], expected, "{item}");
    }
    let mut total = 0u64;
    for a in &accounts {
        let text = balance(&s, a)["balance"].as_str().unwrap().replace('.', "");
        total += text.parse::<u64>().unwrap();
    }
    assert_eq!(total, 16 * 100_000, "money is conserved");

    // Mixed items: each gets its own status, a malformed one does not spoil the rest.
    let r = s.post(
        "/v1/wallet/balance_transfers",
        &json!({"transfers": [
            {"from_account": accounts[0], "to_account": accounts[1], "amount": "1.00", "currency": "USD", "transaction_id": "m1"},
            {"from_account": accounts[0]},
            {"from_account": accounts[0], "to_account": accounts[1], "amount": "1,00", "currency": "USD", "transaction_id": "m2"},
            {"from_account": accounts[0], "to_account": accounts[1], "amount": "999999", "currency": "USD", "transaction_id": "m3"},
            {"from_account": accounts[0], "to_account": accounts[1], "amount": "2.00", "currency": "USD", "transaction_id": "m1"},
        ]}),
    );
    let results = r.json()["results"].clone();
    let summary: Vec<(u64, String, String)> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["http_status"].as_u64().unwrap(),
                i["status"].as_str().unwrap().into(),
                i["code"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(summary[0], (200, "committed".into(), "".into()));
    assert_eq!(summary[1], (400, "error".into(), "invalid_field".into()));
    assert_eq!(summary[2], (400, "error".into(), "invalid_amount".into()));
    assert_eq!(
        summary[3],
        (422, "rejected".into(), "insufficient_funds".into())
    );
    assert_eq!(
        summary[4],
        (409, "error".into(), "transaction_conflict".into())
    );

    // The batch bound: 8000 items at most by default.
    let too_many: Vec<Value> = (0..8001)
        .map(|i| json!({"from_account": "a", "to_account": "b", "amount": "1", "currency": "USD", "transaction_id": format!("z{i}")}))
        .collect();
    let r = s.post(
        "/v1/wallet/balance_transfers",
        &json!({ "transfers": too_many }),
    );
    assert_eq!((r.status, r.code()), (413, "batch_too_large".into()));
    let r = s.post("/v1/wallet/balance_transfers", &json!({"transfers": "no"}));
    assert_eq!((r.status, r.code()), (400, "invalid_field".into()));
}

#[test]
fn malformed_requests_get_json_errors_never_plain_text() {
    let (_tmp, s) = start(&["--body-limit-bytes", "4096"]);
    open(&s, "alice", "USD");
    let post = |path: &str, content_type: Option<&str>, body: &str| {
        let headers: Vec<(&str, &str)> = content_type
            .map(|c| ("Content-Type", c))
            .into_iter()
            .collect();
        http::request(s.addr, "POST", path, &headers, Some(body.as_bytes())).expect("request")
    };
    let json = Some("application/json");
    let cases: Vec<(http::Response, u16, &str)> = vec![
        (
            post("/v1/accounts", json, "{not json"),
            400,
            "malformed_json",
        ),
        (post("/v1/accounts", json, ""), 400, "malformed_json"),
        (
            post(
                "/v1/accounts",
                None,
                r#"{"account_id":"x","currency":"USD"}"#,
            ),
            400,
            "malformed_json",
        ),
        (
            post(
                "/v1/accounts",
                Some("text/plain"),
                r#"{"account_id":"x","currency":"USD"}"#,
            ),
            400,
            "malformed_json",
        ),
        (
            post("/v1/accounts", json, r#"{"account_id":"x"}"#),
            400,
            "invalid_field",
        ),
        (
            post("/v1/accounts", json, r#"{"account_id":7,"currency":"USD"}"#),
            400,
            "invalid_field",
        ),
        (post("/v1/accounts", json, r#"[1,2]"#), 400, "invalid_field"),
        (
            post(
                "/v1/accounts",
                json,
                r#"{"account_id":"a b","currency":"USD"}"#,
            ),
            400,
            "invalid_account_id",
        ),
        (
            post(
                "/v1/accounts",
                json,
                &format!(r#"{{"account_id":"{}","currency":"USD"}}"#, "a".repeat(65)),
            ),
            400,
            "invalid_account_id",
        ),
        (
            post(
                "/v1/accounts",
                json,
                r#"{"account_id":"x","currency":"usd"}"#,
            ),
            400,
            "invalid_currency",
        ),
        (
            post(
                "/v1/accounts",
                json,
                r#"{"account_id":"x","currency":"XYZ"}"#,
            ),
            400,
            "invalid_currency",
        ),
        (
            post(
                "/v1/accounts/alice/deposit",
                json,
                r#"{"amount":"-1","currency":"USD","transaction_id":"t"}"#,
            ),
            400,
            "invalid_amount",
        ),
        (
            post(
                "/v1/accounts/alice/deposit",
                json,
                r#"{"amount":"1e3","currency":"USD","transaction_id":"t"}"#,
            ),
            400,
            "invalid_amount",
        ),
        (
            post(
                "/v1/accounts/alice/deposit",
                json,
                r#"{"amount":"0","currency":"USD","transaction_id":"t"}"#,
            ),
            400,
            "invalid_amount",
        ),
        (
            post(
                "/v1/accounts/alice/deposit",
                json,
                r#"{"amount":"0.001","currency":"USD","transaction_id":"t"}"#,
            ),
            400,
            "invalid_amount",
        ),
        (
            post(
                "/v1/accounts/alice/deposit",
                json,
                r#"{"amount":"99999999999999999999","currency":"USD","transaction_id":"t"}"#,
            ),
            400,
            "invalid_amount",
        ),
        (
            post(
                "/v1/accounts/alice/deposit",
                json,
                r#"{"amount":1,"currency":"USD","transaction_id":"t"}"#,
            ),
            400,
            "invalid_field",
        ),
        (
            post(
                "/v1/accounts/alice/deposit",
                json,
                r#"{"amount":"1","currency":"USD","transaction_id":"t/1"}"#,
            ),
            400,
            "invalid_transaction_id",
        ),
        (
            post(
                "/v1/accounts/a%20b/deposit",
                json,
                r#"{"amount":"1","currency":"USD","transaction_id":"t"}"#,
            ),
            400,
            "invalid_account_id",
        ),
        (
            post(
                "/v1/wallet/balance_transfer",
                json,
                r#"{"from_account":"alice","to_account":"b","amount":"1","currency":"USD","transaction_id":""}"#,
            ),
            400,
            "invalid_transaction_id",
        ),
        (
            post(
                "/v1/accounts",
                json,
                &format!(
                    r#"{{"account_id":"x","currency":"USD","pad":"{}"}}"#,
                    "x".repeat(10_000)
                ),
            ),
            413,
            "body_too_large",
        ),
        (post("/v1/nope", json, "{}"), 404, "not_found"),
        (
            http::request(s.addr, "GET", "/nope", &[], None).unwrap(),
            404,
            "not_found",
        ),
        (
            http::request(s.addr, "DELETE", "/v1/accounts", &[], None).unwrap(),
            405,
            "method_not_allowed",
        ),
        (
            http::request(s.addr, "GET", "/v1/transfers/%FF/t", &[], None).unwrap(),
            400,
            "invalid_field",
        ),
    ];
    for (i, (r, status, code)) in cases.iter().enumerate() {
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "case {i}: {}",
            r.text()
        );
        assert_eq!(
            (r.status, r.code()),
            (*status, code.to_string()),
            "case {i}: {}",
            r.text()
        );
        assert!(
            !r.json()["message"].as_str().unwrap_or("").is_empty(),
            "case {i}"
        );
    }
    // A body announced larger than the limit is refused before it is read.
    let raw = "POST /v1/accounts HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 3145728\r\n\r\n";
    let r = http::send_raw(s.addr, raw.as_bytes()).expect("raw");
    assert_eq!((r.status, r.code()), (413, "body_too_large".into()));
    // The server is still fine.
    assert_eq!(s.get("/healthz").status, 200);
}

/// Sends `head` and then `body` on one connection, all of it, before reading anything: what
/// Python's `http.client` and most blocking clients do. The server must let the whole body in
/// and answer, not reset the connection under the client's writes.
fn write_everything_then_read(s: &Server, head: &str, body: &[u8]) -> http::Response {
    let mut stream = http::connect(s.addr).expect("connect");
    stream.write_all(head.as_bytes()).expect("write the head");
    stream
        .write_all(body)
        .expect("the server reads the whole body of a request it refuses");
    http::read_response(&mut stream).expect("a response, not a reset")
}

/// 8 MiB of JSON-looking filler: four times the default body limit of 2 MiB.
fn oversized_body() -> Vec<u8> {
    let mut body = b"{\"pad\":\"".to_vec();
    body.resize((8 << 20) - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

#[test]
fn a_client_that_writes_a_whole_oversized_body_before_reading_reads_its_413() {
    let (_tmp, s) = start(&["--batch-items-max", "10"]);
    let body = oversized_body();
    for path in ["/v1/accounts", "/v1/wallet/balance_transfers"] {
        // Announced: refused before the body is read, which is then drained.
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let r = write_everything_then_read(&s, &head, &body);
        assert_eq!(
            (r.status, r.code()),
            (413, "body_too_large".into()),
            "{path}"
        );

        // Not announced (chunked): refused where the limit is passed, the rest drained.
        let mut chunked = Vec::with_capacity(body.len() + 4096);
        for chunk in body.chunks(64 << 10) {
            chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            chunked.extend_from_slice(chunk);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        let r = write_everything_then_read(&s, &head, &chunked);
        assert_eq!(
            (r.status, r.code()),
            (413, "body_too_large".into()),
            "{path}"
        );
    }

    // A batch past --batch-items-max, within the body limit: the same, with its own code.
    let items: Vec<Value> = (0..11)
        .map(|i| json!({"from_account": "a", "to_account": "b", "amount": "1", "currency": "USD", "transaction_id": format!("z{i}")}))
        .collect();
    let batch = json!({ "transfers": items }).to_string();
    let head = format!(
        "POST /v1/wallet/balance_transfers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        batch.len()
    );
    let r = write_everything_then_read(&s, &head, batch.as_bytes());
    assert_eq!((r.status, r.code()), (413, "batch_too_large".into()));
    assert_eq!(s.get("/healthz").status, 200);
}

#[test]
fn a_bearer_token_guards_the_v1_routes() {
    let (_tmp, s) = start(&["--api-token", "s3cret"]);
    let body = r#"{"account_id":"alice","currency":"USD"}"#;
    let post = |auth: Option<&str>| {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(auth) = auth {
            headers.push(("Authorization", auth));
        }
        http::request(
            s.addr,
            "POST",
            "/v1/accounts",
            &headers,
            Some(body.as_bytes()),
        )
        .unwrap()
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic czNjcmV0"),
        Some("Bearer"),
    ] {
        let r = post(auth);
        assert_eq!(
            (r.status, r.code()),
            (401, "unauthorized".into()),
            "{auth:?}"
        );
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    assert_eq!(post(Some("Bearer s3cret")).status, 201);
    let r = http::request(s.addr, "GET", "/v1/accounts/alice/balance", &[], None).unwrap();
    assert_eq!(r.status, 401);
    let r = http::request(
        s.addr,
        "GET",
        "/v1/accounts/alice/balance",
        &[("Authorization", "bearer s3cret")],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200);
    // Probes need no token.
    for path in ["/healthz", "/metrics", "/openapi.json"] {
        assert_eq!(s.get(path).status, 200, "{path}");
    }
}

#[test]
fn over_the_in_flight_limit_requests_get_429() {
    let (_tmp, s) = start(&["--max-in-flight", "1"]);
    // A request whose body never finishes arriving holds the only permit.
    let mut slow = http::connect(s.addr).expect("connect");
    slow.write_all(b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"acc")
        .expect("write");
    // Once the metrics count it in flight (besides the scrape itself), it holds the permit.
    let holding = wait_until(Duration::from_secs(10), || {
        s.get("/metrics")
            .text()
            .contains("walletd_http_requests_in_flight 2")
    });
    assert!(holding, "{}", s.get("/metrics").text());
    let r = s.post(
        "/v1/accounts",
        &json!({"account_id": "b", "currency": "USD"}),
    );
    let refused = r.status == 429 && r.code() == "overloaded";
    assert!(refused, "a second request was not refused");
    // Probes are not limited.
    assert_eq!(s.get("/healthz").status, 200);
    drop(slow);
    // (`b` may have been opened by an attempt that came before the slow request's.)
    let admitted = wait_until(Duration::from_secs(10), || {
        let r = s.post(
            "/v1/accounts",
            &json!({"account_id": "b", "currency": "USD"}),
        );
        r.status == 201 || r.status == 200
    });
    assert!(admitted, "the permit came back");
}

#[test]
fn a_request_over_the_time_limit_gets_503_request_timeout() {
    let (_tmp, s) = start(&["--request-timeout-ms", "200"]);
    // A body that never finishes arriving keeps its request busy past the limit.
    let mut slow = http::connect(s.addr).expect("connect");
    slow.write_all(b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .expect("write");
    let r = http::read_response(&mut slow).expect("a response");
    assert_eq!(
        (r.status, r.code()),
        (503, "request_timeout".into()),
        "{}",
        r.text()
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[test]
fn an_outcome_not_final_in_time_is_202_with_a_status_url() {
    let (_tmp, s) = start(&["--transfer-wait-ms", "0"]);
    let a = &accounts_in("p", 6, PARTITIONS, 1)[0];
    let c = &accounts_in("q", 7, PARTITIONS, 1)[0];
    open(&s, a, "USD");
    open(&s, c, "USD");
    deposit(&s, a, "5.00", "d");
    let r = transfer(&s, a, c, "1.00", "slow1");
    assert_eq!(r.status, 202, "{}", r.text());
    let body = r.json();
    assert_eq!(body["status"], "pending");
    let url = body["status_url"].as_str().expect("status_url").to_string();
    assert_eq!(url, format!("/v1/transfers/{a}/slow1"));
    let committed = wait_until(Duration::from_secs(10), || {
        let r = s.get(&url);
        r.status == 200 && r.json()["status"] == "committed"
    });
    assert!(committed, "{}", s.get(&url).text());
    assert_eq!(balance(&s, c)["balance"], "1.00");
}

#[test]
fn health_metrics_and_the_openapi_document() {
    let (_tmp, s) = start(&[]);
    let r = s.get("/healthz");
    assert_eq!((r.status, r.text()), (200, "ok\n".into()));
    open(&s, "alice", "USD");
    let _ = transfer(&s, "alice", "bob", "1", "t");
    let r = s.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text; version=1.0.0"));
    let text = r.text();
    for needle in [
        "walletd_http_requests_total{route=\"/v1/accounts\",status=\"201\"} 1",
        "walletd_transfers_total{outcome=\"rejected\"} 1",
        "walletd_partition_batches_total{partition=\"0\"}",
        "walletd_partition_events_total{partition=\"7\"}",
        "walletd_partition_syncs_total{partition=\"3\"}",
        "walletd_partition_fsync_seconds_sum{partition=\"0\"}",
        "walletd_partition_fsync_seconds_count{partition=\"0\"}",
        "walletd_partition_transfers_in_flight{partition=\"0\"} 0",
        "# TYPE walletd_partition_fsync_seconds histogram",
        "walletd_partition_fsync_seconds_bucket{le=\"+Inf\",partition=\"0\"}",
        "# TYPE walletd_http_request_duration_seconds histogram",
        "walletd_http_request_duration_seconds_count{route=\"/v1/accounts\",status=\"201\"} 1",
        "walletd_partition_transfer_try_to_decision_seconds_count{partition=",
        "# TYPE walletd_partition_batch_records histogram",
        "# TYPE walletd_partition_inbox_depth histogram",
        "# TYPE walletd_partition_snapshot_duration_seconds histogram",
        "# TYPE walletd_partition_rows gauge",
        "walletd_partition_snapshot_failures_total{partition=\"0\"} 0",
        "# TYPE process_resident_memory_bytes gauge",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    // One account row and the rejected transfer's row, on whichever partitions they live.
    let rows: u64 = text
        .lines()
        .filter_map(|line| line.strip_prefix("walletd_partition_rows{"))
        .map(|rest| rest.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(rows, 2, "{text}");
    let resident = text
        .lines()
        .find_map(|line| line.strip_prefix("process_resident_memory_bytes "))
        .map(|bytes| bytes.parse::<u64>().unwrap());
    assert!(resident.unwrap() > 1 << 20, "{text}");
    let doc = s.get("/openapi.json").json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/accounts",
        "/v1/accounts/{id}/deposit",
        "/v1/accounts/{id}/withdraw",
        "/v1/accounts/{id}/balance",
        "/v1/accounts/{id}/history",
        "/v1/wallet/balance_transfer",
        "/v1/wallet/balance_transfers",
        "/v1/transfers/{from_account}/{transaction_id}",
        "/healthz",
        "/metrics",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["TransferRequest"].is_object());
    // Every write endpoint documents its dry run.
    for path in [
        "/v1/accounts/{id}/deposit",
        "/v1/accounts/{id}/withdraw",
        "/v1/wallet/balance_transfer",
        "/v1/wallet/balance_transfers",
    ] {
        let params = doc["paths"][path]["post"]["parameters"].as_array();
        let names: Vec<&str> = (params.into_iter().flatten())
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert!(names.contains(&"dry_run"), "{path}: {names:?}");
    }
}

/// One idempotency rule for refusals, on every path: a business refusal is recorded, so the
/// same `transaction_id` gets the same answer after the account changed (a deposit, an
/// account opened since); a new id is decided afresh.
#[test]
fn a_refused_request_answers_the_same_after_the_state_that_refused_it_changed() {
    let (_tmp, s) = start(&[]);
    let home = accounts_in("rich", 0, PARTITIONS, 1).remove(0);
    let near = accounts_in("near", 0, PARTITIONS, 1).remove(0);
    let far = accounts_in("far", 1, PARTITIONS, 1).remove(0);
    open(&s, &home, "USD");
    assert_eq!(deposit(&s, &home, "10.00", "d1").status, 200);
    let withdraw = |id: &str| {
        s.post(
            &format!("/v1/accounts/{home}/withdraw"),
            &json!({"amount": "15.00", "currency": "USD", "transaction_id": id}),
        )
    };
    let first = withdraw("w1");
    assert_eq!(
        (first.status, first.code()),
        (422, "insufficient_funds".to_string())
    );
    assert_eq!(deposit(&s, &home, "10.00", "d2").status, 200);
    let again = withdraw("w1");
    assert_eq!(
        (again.status, again.code()),
        (422, "insufficient_funds".to_string())
    );
    assert_eq!(
        again.json()["message"],
        first.json()["message"],
        "the same answer"
    );
    assert_eq!(withdraw("w2").status, 200, "a new id is decided afresh");

    // Transfers to accounts that do not exist yet, on the home's partition and on another.
    for (to, id) in [(&near, "t-near"), (&far, "t-far")] {
        let r = transfer(&s, &home, to, "1.00", id);
        assert_eq!(r.status, 404, "{id}: {}", r.text());
        assert_eq!(r.code(), "account_not_found", "{id}");
    }
    open(&s, &near, "USD");
    open(&s, &far, "USD");
    for (to, id) in [(&near, "t-near"), (&far, "t-far")] {
        let r = transfer(&s, &home, to, "1.00", id);
        assert_eq!(
            (r.status, r.code()),
            (404, "account_not_found".to_string()),
            "{id} after the account was opened: {}",
            r.text()
        );
    }
    assert_eq!(transfer(&s, &home, &far, "1.00", "t-far-2").status, 200);
    assert_eq!(balance(&s, &home)["balance"], "4.00");
}

fn hold(
    s: &Server,
    from: &str,
    to: &str,
    amount: &str,
    id: &str,
    expires: Value,
) -> http::Response {
    s.post(
        "/v1/wallet/holds",
        &json!({"transaction_id": id, "from_account": from, "to_account": to, "amount": amount,
                "currency": "USD", "expires_in_ms": expires}),
    )
}

/// `(balance, held, incoming)` of `account`.
fn figures(s: &Server, account: &str) -> (Value, Value, Value) {
    let b = balance(s, account);
    (
        b["balance"].clone(),
        b["held"].clone(),
        b["incoming"].clone(),
    )
}

fn usd(balance: &str, held: &str, incoming: &str) -> (Value, Value, Value) {
    (json!(balance), json!(held), json!(incoming))
}

#[test]
fn holds_are_captured_in_part_voided_or_expired_once() {
    let (_tmp, s) = start(&[]);
    let same = accounts_in("h", 0, PARTITIONS, 2);
    let (a, b) = (&same[0], &same[1]);
    let c = &accounts_in("o", 3, PARTITIONS, 1)[0];
    for account in [a, b, c] {
        open(&s, account, "USD");
    }
    deposit(&s, a, "100.00", "d1");
    let end = |id: &str, what: &str, body: Value| {
        s.post(&format!("/v1/transfers/{a}/{id}/{what}"), &body)
    };

    // Held: out of the source's balance, counted as incoming at the destination.
    let r = hold(&s, a, b, "40.00", "h1", json!(600_000));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], json!("held"));
    assert_eq!(
        r.json()["status_url"],
        json!(format!("/v1/transfers/{a}/h1"))
    );
    assert_eq!(figures(&s, a), usd("60.00", "40.00", "0.00"));
    assert_eq!(figures(&s, b), usd("0.00", "0.00", "40.00"));
    let t = s.get(&format!("/v1/transfers/{a}/h1")).json();
    assert_eq!(
        (t["status"].clone(), t["phase"].clone()),
        (json!("held"), json!("held"))
    );
    assert!(
        t["expires_at"].as_str().is_some_and(|at| at.ends_with('Z')),
        "{t}"
    );
    assert!(
        t.get("refund_of").is_none() && t.get("captured_amount").is_none(),
        "{t}"
    );

    // Captured in part: the part reaches the destination, the rest goes back.
    let r = end("h1", "capture", json!({"amount": "30.00"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let captured = json!({"transaction_id": "h1", "from_account": a, "to_account": b,
        "amount": "40.00", "currency": "USD", "status": "captured", "captured_amount": "30.00",
        "released_amount": "10.00", "status_url": format!("/v1/transfers/{a}/h1")});
    assert_eq!(r.json(), captured);
    assert_eq!(figures(&s, a), usd("70.00", "0.00", "0.00"));
    assert_eq!(figures(&s, b), usd("30.00", "0.00", "0.00"));
    // The same capture again answers the same; another amount, or a void, cannot.
    let r = end("h1", "capture", json!({"amount": "30.00"}));
    assert_eq!((r.status, r.json()), (200, captured));
    let r = end("h1", "capture", json!({"amount": "20.00"}));
    assert_eq!((r.status, r.code()), (409, "hold_already_captured".into()));
    let r = end("h1", "void", json!({}));
    assert_eq!(
        (
            r.status,
            r.json()["status"].clone(),
            r.code(),
            r.json()["captured_amount"].clone()
        ),
        (
            409,
            json!("captured"),
            "hold_captured".into(),
            json!("30.00")
        )
    );
    let t = s.get(&format!("/v1/transfers/{a}/h1")).json();
    assert_eq!(
        (
            t["status"].clone(),
            t["captured_amount"].clone(),
            t["released_amount"].clone()
        ),
        (json!("captured"), json!("30.00"), json!("10.00"))
    );
    // The history shows the capture of the part, with the rest back in the balance after it.
    let kinds = |limit: usize| {
        let (mut kinds, mut cursor) = (Vec::new(), String::new());
        loop {
            let page = s
                .get(&format!("/v1/accounts/{a}/history?limit={limit}{cursor}"))
                .json();
            for m in page["movements"].as_array().unwrap() {
                kinds.push((
                    m["kind"].clone(),
                    m["amount"].clone(),
                    m["balance_after"].clone(),
                ));
            }
            match page["next_before_lsn"].as_u64() {
                Some(lsn) => cursor = format!("&before_lsn={lsn}"),
                None => return kinds,
            }
        }
    };
    let all = kinds(100);
    assert_eq!(
        all[..2],
        [
            (json!("hold_captured"), json!("30.00"), json!("70.00")),
            (json!("hold"), json!("40.00"), json!("60.00")),
        ],
        "{all:?}"
    );
    assert_eq!(kinds(1), all);
    assert_eq!(kinds(2), all);

    // Voided: everything back; a capture then answers how it ended.
    assert_eq!(hold(&s, a, b, "10.00", "h2", json!(600_000)).status, 200);
    for _ in 0..2 {
        let r = end("h2", "void", json!({}));
        assert_eq!(
            (r.status, r.json()["status"].clone()),
            (200, json!("voided")),
            "{}",
            r.text()
        );
    }
    let r = end("h2", "capture", json!({}));
    assert_eq!(
        (r.status, r.json()["status"].clone(), r.code()),
        (409, json!("voided"), "hold_voided".into())
    );
    assert_eq!(figures(&s, a), usd("70.00", "0.00", "0.00"));
    assert_eq!(figures(&s, b), usd("30.00", "0.00", "0.00"));

    // Expired by the home's clock: everything back, and every end after it says so.
    assert_eq!(hold(&s, a, b, "5.00", "h3", json!(300)).status, 200);
    let expired = wait_until(Duration::from_secs(10), || {
        s.get(&format!("/v1/transfers/{a}/h3")).json()["status"] == json!("expired")
    });
    assert!(
        expired,
        "{}",
        s.get(&format!("/v1/transfers/{a}/h3")).text()
    );
    assert_eq!(figures(&s, a), usd("70.00", "0.00", "0.00"));
    assert_eq!(figures(&s, b), usd("30.00", "0.00", "0.00"));
    for what in ["capture", "void"] {
        let r = end("h3", what, json!({}));
        assert_eq!((r.status, r.code()), (409, "hold_expired".into()), "{what}");
    }

    // Across partitions on one node: held once the destination tried the credit.
    let r = hold(&s, a, c, "20.00", "h4", json!(600_000));
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, json!("held")),
        "{}",
        r.text()
    );
    assert_eq!(figures(&s, c), usd("0.00", "0.00", "20.00"));
    let r = end("h4", "capture", json!({"amount": "5.00"}));
    assert_eq!(
        (r.status, r.json()["released_amount"].clone()),
        (200, json!("15.00"))
    );
    assert!(wait_until(Duration::from_secs(10), || figures(&s, c)
        == usd("5.00", "0.00", "0.00")));
    assert_eq!(figures(&s, a), usd("65.00", "0.00", "0.00"));
}

#[test]
fn hold_requests_that_cannot_be_are_refused_and_dry_runs_record_nothing() {
    let (_tmp, s) = start(&[]);
    let same = accounts_in("h", 1, PARTITIONS, 2);
    let (a, b) = (&same[0], &same[1]);
    let c = &accounts_in("o", 2, PARTITIONS, 1)[0];
    for account in [a, b, c] {
        open(&s, account, "USD");
    }
    deposit(&s, a, "100.00", "d1");
    let end = |id: &str, what: &str, body: Value| {
        s.post(&format!("/v1/transfers/{a}/{id}/{what}"), &body)
    };

    // A bad expiry is refused before anything is recorded.
    let too_long = json!(2_592_000_001u64);
    for expires in [
        json!(0),
        json!(-1),
        json!(1.5),
        json!("300"),
        json!(null),
        too_long,
    ] {
        let r = hold(&s, a, b, "1.00", "bad", expires.clone());
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_expires_in_ms".into()),
            "{expires}"
        );
    }
    let r = s.post(
        "/v1/wallet/holds",
        &json!({"transaction_id": "bad", "from_account": a, "to_account": b, "amount": "1.00",
                "currency": "USD"}),
    );
    assert_eq!((r.status, r.code()), (400, "invalid_expires_in_ms".into()));
    assert_eq!(s.get(&format!("/v1/transfers/{a}/bad")).status, 404);
    assert_eq!(
        hold(&s, a, b, "1.00", "bad", json!(2_592_000_000u64)).status,
        200
    );

    // A business refusal is recorded and answered again; another body is a conflict.
    for _ in 0..2 {
        let r = hold(&s, a, b, "1000.00", "poor", json!(60_000));
        assert_eq!(
            (r.status, r.json()["status"].clone(), r.code()),
            (422, json!("rejected"), "insufficient_funds".into())
        );
    }
    let r = hold(&s, a, b, "2.00", "bad", json!(2_592_000_000u64));
    assert_eq!((r.status, r.code()), (409, "transaction_conflict".into()));

    // Captures and voids of what is not a held hold.
    assert_eq!(transfer(&s, a, b, "1.00", "t1").status, 200);
    for what in ["capture", "void"] {
        let r = end("t1", what, json!({}));
        assert_eq!((r.status, r.code()), (409, "not_a_hold".into()), "{what}");
        let r = end("nope", what, json!({}));
        assert_eq!(
            (r.status, r.code()),
            (404, "transfer_not_found".into()),
            "{what}"
        );
    }
    assert_eq!(hold(&s, a, b, "10.00", "h1", json!(600_000)).status, 200);
    let r = end("h1", "capture", json!({"amount": "10.01"}));
    assert_eq!((r.status, r.code()), (422, "capture_exceeds_hold".into()));
    // An amount is checked against the hold's currency where the hold is (its digits, zero,
    // the largest amount), and its grammar before anything is asked: refused alike.
    for bad in ["1.001", "0", "0.00", "99999999999999999", "abc", "1.", "-1"] {
        let r = end("h1", "capture", json!({ "amount": bad }));
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_amount".into()),
            "{bad}"
        );
    }

    // Dry runs answer as the real request would, and record nothing.
    let before = (figures(&s, a), figures(&s, b), figures(&s, c));
    let r = s.post(
        "/v1/wallet/holds?dry_run=true",
        &json!({"transaction_id": "dry", "from_account": a, "to_account": c, "amount": "3.00",
                "currency": "USD", "expires_in_ms": 60_000}),
    );
    assert_eq!(
        (
            r.status,
            r.json()["status"].clone(),
            r.json()["dry_run"].clone()
        ),
        (200, json!("held"), json!(true)),
        "{}",
        r.text()
    );
    assert_eq!(s.get(&format!("/v1/transfers/{a}/dry")).status, 404);
    let r = end("h1", "capture?dry_run=true", json!({"amount": "4.00"}));
    assert_eq!(
        (
            r.status,
            r.json()["status"].clone(),
            r.json()["captured_amount"].clone()
        ),
        (200, json!("captured"), json!("4.00"))
    );
    let r = end("h1", "void?dry_run=true", json!({}));
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, json!("voided"))
    );
    assert_eq!(
        s.get(&format!("/v1/transfers/{a}/h1")).json()["status"],
        json!("held")
    );
    assert_eq!((figures(&s, a), figures(&s, b), figures(&s, c)), before);

    // A capture with no body at all takes all of it.
    let r = http::request(
        s.addr,
        "POST",
        &format!("/v1/transfers/{a}/h1/capture"),
        &[],
        None,
    )
    .expect("POST");
    assert_eq!(
        (
            r.status,
            r.json()["captured_amount"].clone(),
            r.json()["released_amount"].clone()
        ),
        (200, json!("10.00"), json!("0.00")),
        "{}",
        r.text()
    );
}

fn transact(s: &Server, id: &str, legs: &[(&str, &str, &str)]) -> http::Response {
    transact_at(s, "/v1/wallet/transactions", id, legs)
}

fn transact_at(s: &Server, path: &str, id: &str, legs: &[(&str, &str, &str)]) -> http::Response {
    let legs: Vec<Value> = legs
        .iter()
        .map(|(from, to, amount)| {
            json!({"from_account": from, "to_account": to, "amount": amount, "currency": "USD"})
        })
        .collect();
    s.post(path, &json!({"transaction_id": id, "legs": legs}))
}

#[test]
fn transactions_commit_every_leg_or_none_across_partitions() {
    let (_tmp, s) = start(&[]);
    let home = accounts_in("x", 0, PARTITIONS, 2);
    let (a, d) = (&home[0], &home[1]);
    let b = &accounts_in("y", 1, PARTITIONS, 1)[0];
    let c = &accounts_in("z", 2, PARTITIONS, 1)[0];
    for account in [a, b, c, d] {
        open(&s, account, "USD");
    }
    deposit(&s, a, "100.00", "d1");
    let balances = || [a, b, c, d].map(|account| balance(&s, account)["balance"].clone());
    let usd4 = |w: &str, x: &str, y: &str, z: &str| [w, x, y, z].map(|v| json!(v));

    // Across three partitions, through b, which starts empty.
    let legs = [
        (a.as_str(), b.as_str(), "30.00"),
        (b, c, "30.00"),
        (a, d, "10.00"),
    ];
    let r = transact(&s, "x1", &legs);
    assert_eq!(r.status, 200, "{}", r.text());
    let committed = json!({"transaction_id": "x1", "from_account": a, "status": "committed",
        "status_url": format!("/v1/transfers/{a}/x1")});
    assert_eq!(r.json(), committed);
    assert_eq!(balances(), usd4("60.00", "0.00", "30.00", "10.00"));
    for account in [a, b, c, d] {
        let f = figures(&s, account);
        assert_eq!((f.1, f.2), (json!("0.00"), json!("0.00")), "{account}");
    }
    let t = s.get(&format!("/v1/transfers/{a}/x1")).json();
    assert_eq!(t["status"], json!("committed"), "{t}");
    assert_eq!(t["legs"].as_array().map(Vec::len), Some(3), "{t}");
    assert_eq!(
        t["legs"][1],
        json!({"from_account": b, "to_account": c, "amount": "30.00", "currency": "USD"})
    );
    // A retry answers the same; other legs under the id are a conflict.
    assert_eq!(transact(&s, "x1", &legs).json(), committed);
    let r = transact(&s, "x1", &legs[..2]);
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (409, json!("transaction_conflict"))
    );

    // Refused by another partition: b cannot pay 50 out of the 10 it receives.
    let r = transact(&s, "x2", &[(a, b, "10.00"), (b, c, "50.00")]);
    assert_eq!(r.status, 422, "{}", r.text());
    let body = r.json();
    assert_eq!(
        (
            body["status"].clone(),
            body["code"].clone(),
            body["failed_leg"].clone()
        ),
        (json!("cancelled"), json!("insufficient_funds"), json!(1))
    );
    // Nothing moved: the Tries are undone as the cancel reaches each partition, a moment
    // after the client hears of it (until then the money is held, never spent).
    let settled_at = |want: [Value; 4]| {
        let settled = || {
            balances() == want
                && [a, b, c, d].iter().all(|account| {
                    let f = figures(&s, account);
                    (f.1, f.2) == (json!("0.00"), json!("0.00"))
                })
        };
        assert!(
            wait_until(Duration::from_secs(5), settled),
            "{:?}",
            balances()
        );
    };
    settled_at(usd4("60.00", "0.00", "30.00", "10.00"));
    let t = s.get(&format!("/v1/transfers/{a}/x2")).json();
    assert_eq!(
        (t["status"].clone(), t["failed_leg"].clone()),
        (json!("cancelled"), json!(1))
    );
    assert_eq!(
        transact(&s, "x2", &[(a, b, "10.00"), (b, c, "50.00")]).json(),
        body
    );

    // Refused at its home, and an unknown account.
    let r = transact(&s, "x3", &[(a, b, "1.00"), (a, c, "100.00")]);
    assert_eq!(
        (
            r.status,
            r.json()["status"].clone(),
            r.json()["failed_leg"].clone()
        ),
        (422, json!("rejected"), json!(0)),
        "a's net debit does not fit: its first debiting leg"
    );
    let r = transact(&s, "x4", &[(a, b, "1.00"), (c, "nobody", "1.00")]);
    assert_eq!(
        (
            r.status,
            r.json()["code"].clone(),
            r.json()["failed_leg"].clone()
        ),
        (404, json!("account_not_found"), json!(1))
    );

    settled_at(usd4("60.00", "0.00", "30.00", "10.00"));

    // Within one partition: one record.
    let r = transact(&s, "x5", &[(a, d, "5.00"), (d, a, "2.00")]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(balances(), usd4("57.00", "0.00", "30.00", "13.00"));

    // A dry run answers as the real one would, and records nothing.
    let dry = "/v1/wallet/transactions?dry_run=true";
    let r = transact_at(&s, dry, "x6", &[(a, c, "7.00")]);
    assert_eq!(
        (
            r.status,
            r.json()["status"].clone(),
            r.json()["dry_run"].clone()
        ),
        (200, json!("committed"), json!(true))
    );
    let r = transact_at(&s, dry, "x6", &[(a, b, "1.00"), (b, c, "9.00")]);
    assert_eq!((r.status, r.json()["failed_leg"].clone()), (422, json!(1)));
    settled_at(usd4("57.00", "0.00", "30.00", "13.00"));
    assert_eq!(
        s.get(&format!("/v1/transfers/{a}/x6")).status,
        404,
        "the id is still free"
    );
    assert_eq!(transact(&s, "x6", &[(a, c, "7.00")]).status, 200);
    // Committed: c's credit is spendable once its Confirm lands, a moment after.
    settled_at(usd4("50.00", "0.00", "37.00", "13.00"));
}

#[test]
fn transactions_that_cannot_be_are_refused_with_a_code_and_record_nothing() {
    let (_tmp, s) = start(&[]);
    let (a, b) = ("alice", "bob");
    for account in [a, b] {
        open(&s, account, "USD");
    }
    deposit(&s, a, "10.00", "d1");
    let code = |r: http::Response| (r.status, r.json()["code"].clone());
    assert_eq!(code(transact(&s, "e1", &[])), (400, json!("no_legs")));
    let many: Vec<(&str, &str, &str)> = vec![(a, b, "0.01"); 65];
    assert_eq!(
        code(transact(&s, "e2", &many)),
        (400, json!("too_many_legs"))
    );
    assert_eq!(
        transact(&s, "e2", &many[..64]).status,
        200,
        "64 legs are fine"
    );
    assert_eq!(
        code(transact(&s, "e3", &[(a, b, "1.00"), (b, b, "1.00")])),
        (422, json!("leg_to_itself"))
    );
    let r = transact(&s, "e4", &[(a, b, "1.00"), (a, b, "1.001")]);
    assert_eq!(r.status, 400);
    let body = r.json();
    assert_eq!(body["code"], json!("invalid_amount"));
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("leg 1:")),
        "{body}"
    );
    assert_eq!(
        code(transact(&s, "e5", &[(a, b, "0.00")])),
        (400, json!("invalid_amount"))
    );
    let r = s.post("/v1/wallet/transactions", &json!({"transaction_id": "e6"}));
    assert_eq!(r.status, 400, "{}", r.text());
    // Nothing was recorded under the refused ids.
    for id in ["e1", "e3", "e4", "e5", "e6"] {
        assert_eq!(
            s.get(&format!("/v1/transfers/{a}/{id}")).status,
            404,
            "{id}"
        );
    }
    assert_eq!(balance(&s, a)["balance"], json!("9.36"));
}
