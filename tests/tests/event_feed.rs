//! The event feed (`GET /v1/events`) against a real `wallet serve`: a consumer that follows
//! every partition folds the same balances as `wallet replay` rebuilds from the logs; bad
//! requests get clear 4xx errors; a long-poll returns when a record becomes durable, and
//! empty at the end of its wait.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use walletd_core::model::money::{Amount, Currency};
use walletd_e2e::read_model::ReadModel;
use walletd_e2e::{accounts_in, http, wallet, Server};

const PARTITIONS: u32 = 4;
const WAIT_MAX_MS: &str = "3000";

fn start(dir: &std::path::Path) -> Server {
    let partitions = PARTITIONS.to_string();
    let args = [
        "--partitions",
        &partitions,
        "--feed-wait-max-ms",
        WAIT_MAX_MS,
    ];
    wallet!().serve(&dir.join("data"), &args)
}

fn open(server: &Server, account: &str, currency: &str) {
    let body = json!({"account_id": account, "currency": currency});
    assert_eq!(server.post("/v1/accounts", &body).status, 201);
}

fn cash(server: &Server, account: &str, op: &str, amount: &str, id: &str) -> u16 {
    let body = json!({"amount": amount, "currency": "USD", "transaction_id": id});
    server
        .post(&format!("/v1/accounts/{account}/{op}"), &body)
        .status
}

fn transfer(server: &Server, from: &str, to: &str, amount: &str, id: &str) -> Value {
    let body = json!({"from_account": from, "to_account": to, "amount": amount,
        "currency": "USD", "transaction_id": id});
    server.post("/v1/wallet/balance_transfer", &body).json()
}

#[test]
fn a_consumer_of_the_feed_folds_the_balances_that_replay_rebuilds() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path());
    let p0 = accounts_in("p0-", 0, PARTITIONS, 2);
    let p1 = accounts_in("p1-", 1, PARTITIONS, 1);
    let p2 = accounts_in("p2-", 2, PARTITIONS, 1);
    let euro = accounts_in("eur-", 3, PARTITIONS, 1);
    for account in p0.iter().chain(&p1).chain(&p2) {
        open(&server, account, "USD");
    }
    open(&server, &euro[0], "EUR");
    // Deposits and withdrawals, and refused ones (an unknown account, too little money).
    assert_eq!(cash(&server, &p0[0], "deposit", "100.00", "d-1"), 200);
    assert_eq!(cash(&server, &p1[0], "deposit", "50.50", "d-2"), 200);
    assert_eq!(cash(&server, &p2[0], "deposit", "7.00", "d-3"), 200);
    assert_eq!(cash(&server, &p0[0], "withdraw", "10.01", "w-1"), 200);
    assert_eq!(cash(&server, &p2[0], "withdraw", "70.00", "w-2"), 422);
    assert_eq!(cash(&server, "nobody", "deposit", "1.00", "d-4"), 404);
    assert_eq!(cash(&server, &euro[0], "deposit", "1.00", "d-5"), 422);
    // Transfers within a partition and across partitions; refused and cancelled ones.
    let outcomes = [
        (&p0[0], &p0[1], "20.00", "t-1", "committed"),
        (&p0[0], &p1[0], "12.34", "t-2", "committed"),
        (&p1[0], &p2[0], "3.21", "t-3", "committed"),
        (&p2[0], &p0[1], "1.00", "t-4", "committed"),
        (&p0[1], &p2[0], "500.00", "t-5", "rejected"),
        (&p0[0], &p0[1], "999.00", "t-6", "rejected"),
        (&p1[0], &euro[0], "1.00", "t-7", "cancelled"),
    ];
    for (from, to, amount, id, status) in outcomes {
        let answer = transfer(&server, from, to, amount, id);
        assert_eq!(answer["status"], status, "{id}: {answer}");
    }
    // To an account that does not exist on another partition: a cancelled Try.
    let nobody = accounts_in("nobody-", 1, PARTITIONS, 1);
    let answer = transfer(&server, &p2[0], &nobody[0], "1.00", "t-8");
    assert_eq!(answer["status"], "cancelled", "{answer}");
    // Holds within a partition and across: captured in part and in whole, voided, and one
    // left held (within its partition, so that every Try still has its end).
    let holds = [
        (&p0[1], "5.00", "hl-1", Some("2.00")),
        (&p0[1], "1.00", "hl-2", None),
        (&p0[1], "1.50", "hl-3", Some("open")),
        (&p1[0], "4.00", "hx-1", Some("1.00")),
        (&p2[0], "2.00", "hx-2", Some("2.00")),
        (&p1[0], "3.00", "hx-3", None),
    ];
    for (to, amount, id, end) in holds {
        let body = json!({"from_account": &p0[0], "to_account": to, "amount": amount,
            "currency": "USD", "transaction_id": id, "expires_in_ms": 600_000});
        let answer = server.post("/v1/wallet/holds", &body).json();
        assert_eq!(answer["status"], "held", "{id}: {answer}");
        let path = |what: &str| format!("/v1/transfers/{}/{id}/{what}", p0[0]);
        let answer = match end {
            Some("open") => continue,
            Some(part) => server.post(&path("capture"), &json!({"amount": part})),
            None => server.post(&path("void"), &json!({})),
        };
        assert_eq!(answer.status, 200, "{id}: {}", answer.text());
    }

    // Multi-leg transactions: within one partition (p0[1] pays back part of what it gets),
    // across three partitions (p1[0] passes money on), refused by a participant (cancelled
    // after p1's Try) and refused at their home.
    let transactions = [
        (
            "tx-1",
            vec![(&p0[0], &p0[1], "3.00"), (&p0[1], &p0[0], "1.00")],
            "committed",
        ),
        (
            "tx-2",
            vec![
                (&p0[0], &p1[0], "4.00"),
                (&p1[0], &p2[0], "6.00"),
                (&p2[0], &p0[1], "0.50"),
            ],
            "committed",
        ),
        (
            "tx-3",
            vec![(&p0[0], &p1[0], "1.00"), (&p2[0], &p0[1], "500.00")],
            "cancelled",
        ),
        (
            "tx-4",
            vec![(&p0[0], &p1[0], "1.00"), (&p0[1], &p2[0], "900.00")],
            "rejected",
        ),
    ];
    for (id, legs, status) in transactions {
        let legs: Vec<Value> = legs
            .into_iter()
            .map(|(from, to, amount)| {
                json!({"from_account": from, "to_account": to, "amount": amount,
                    "currency": "USD"})
            })
            .collect();
        let body = json!({"transaction_id": id, "legs": legs});
        let answer = server.post("/v1/wallet/transactions", &body).json();
        assert_eq!(answer["status"], status, "{id}: {answer}");
    }

    // Follow every partition with long-polls until nothing more comes and every Try has
    // its end (a cross-partition confirm may land just after its client's answer).
    let mut model = ReadModel::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let folded: usize = (0..PARTITIONS)
            .map(|p| model.poll(server.addr, p, 200))
            .sum();
        if folded == 0 && model.settled() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the feeds never settled: {model:?}"
        );
    }
    for kind in [
        "account_opened",
        "deposited",
        "withdrawn",
        "cash_refused",
        "transferred",
        "transfer_rejected",
        "debit_tried",
        "transfer_decided",
        "debit_confirmed",
        "debit_cancelled",
        "credit_tried",
        "credit_confirmed",
        "credit_cancelled",
        "hold_placed",
        "hold_established",
        "hold_captured",
        "hold_released",
        "credit_captured",
        "transaction_applied",
        "transaction_rejected",
        "transaction_tried",
        "transaction_refused",
        "transaction_cancelling",
        "transaction_confirmed",
        "transaction_cancelled",
    ] {
        assert!(model.types_seen.contains_key(kind), "no {kind}: {model:?}");
    }
    assert!(server.terminate().success());

    let output = wallet!().run(&[
        "replay",
        "--data-dir",
        &server.data_dir.display().to_string(),
        "--format",
        "json",
    ]);
    assert!(output.status.success(), "{output:?}");
    let replay: Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = replay["accounts"].as_array().unwrap();
    assert_eq!(rows.len(), model.accounts.len(), "{replay}");
    for row in rows {
        let id = row["account_id"].as_str().unwrap();
        let view = &model.accounts[id];
        let currency = Currency::from_code(row["currency"].as_str().unwrap()).unwrap();
        assert_eq!(view.currency, currency, "{id}");
        assert_eq!(row["partition"], view.partition, "{id}");
        for (field, minor) in [
            ("balance", view.balance),
            ("held", view.held),
            ("incoming", view.incoming),
        ] {
            let text = row[field].as_str().unwrap();
            let replayed = if text.chars().all(|c| c == '0' || c == '.') {
                0
            } else {
                Amount::parse(text, currency).unwrap().minor()
            };
            assert_eq!(minor, replayed, "{id} {field}: {row}");
        }
    }
    // The consumer read each partition to the end replay read it to.
    for (partition, lsn) in replay["as_of_lsn_by_partition"].as_object().unwrap() {
        let partition: u32 = partition.parse().unwrap();
        let cursor = model.cursors.get(&partition).copied().unwrap_or(0);
        assert_eq!(Some(cursor), lsn.as_u64(), "partition {partition}");
    }
}

fn get(server: &Server, query: &str) -> http::Response {
    server.get(&format!("/v1/events?{query}"))
}

#[test]
fn bad_feed_requests_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path());
    let alice = &accounts_in("a-", 1, PARTITIONS, 1)[0];
    open(&server, alice, "USD");
    let last = get(&server, "partition=1").text().lines().count();
    assert_eq!(last, 1, "one record: the opening");
    let cases = [
        ("partition=4", 400, "unknown_partition"),
        ("partition=-1", 400, "invalid_query"),
        ("partition=x", 400, "invalid_query"),
        ("after_lsn=0", 400, "invalid_query"),
        ("partition=1&limit=0", 400, "invalid_query"),
        ("partition=1&limit=-5", 400, "invalid_query"),
        ("partition=1&limit=ten", 400, "invalid_query"),
        ("partition=1&limit=10001", 400, "invalid_query"),
        (
            "partition=1&limit=99999999999999999999999",
            400,
            "invalid_query",
        ),
        ("partition=1&wait_ms=3001", 400, "invalid_query"),
        ("partition=1&after_lsn=-1", 400, "invalid_query"),
        ("partition=1&after_lsn=2", 409, "lsn_out_of_range"),
        ("partition=0&after_lsn=1", 409, "lsn_out_of_range"),
    ];
    for (query, status, code) in cases {
        let response = get(&server, query);
        assert_eq!(response.status, status, "{query}: {}", response.text());
        assert_eq!(response.code(), code, "{query}");
        assert!(!response.json()["message"].as_str().unwrap().is_empty());
    }
    // At the end of the log: an empty answer, not an error; the header says where the end is.
    let end = get(&server, "partition=1&after_lsn=1");
    assert_eq!((end.status, end.body.len()), (200, 0));
    assert_eq!(end.header("durable-lsn"), Some("1"));
    let first = get(&server, "partition=1&limit=1").text();
    let line: Value = serde_json::from_str(first.trim_end()).unwrap();
    assert_eq!(line["type"], "account_opened");
    assert_eq!(line["account_id"], alice.as_str());
}

#[test]
fn a_long_poll_returns_when_a_record_is_durable_and_empty_when_its_wait_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path());
    let alice = accounts_in("a-", 2, PARTITIONS, 1)[0].clone();
    open(&server, &alice, "USD");

    let started = Instant::now();
    let empty = get(&server, "partition=2&after_lsn=1&wait_ms=300");
    let waited = started.elapsed();
    assert_eq!((empty.status, empty.body.len()), (200, 0));
    assert!(waited >= Duration::from_millis(300), "{waited:?}");

    let addr = server.addr;
    let poll = std::thread::spawn(move || {
        let started = Instant::now();
        let path = "/v1/events?partition=2&after_lsn=1&wait_ms=3000";
        let response = http::request(addr, "GET", path, &[], None).unwrap();
        (response, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cash(&server, &alice, "deposit", "5.00", "d-1"), 200);
    let (response, waited) = poll.join().unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let line: Value = serde_json::from_str(response.text().trim_end()).unwrap();
    assert_eq!(
        (&line["type"], &line["lsn"], &line["amount"]),
        (&json!("deposited"), &json!(2), &json!("5.00"))
    );
    // Woken by the deposit, well before the end of its 3 s wait.
    assert!(waited < Duration::from_millis(2500), "{waited:?}");
}
