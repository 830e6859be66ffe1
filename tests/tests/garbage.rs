//! Hostile and random input never gets a 500, never a non-JSON error, and never takes the
//! server down.

use serde_json::json;
use walletd_e2e::{http, wallet};

/// Random requests sent per route.
const RANDOM_REQUESTS_PER_ROUTE: usize = 60;

const POST_ROUTES: [&str; 6] = [
    "/v1/accounts",
    "/v1/accounts/alice/deposit",
    "/v1/accounts/alice/withdraw",
    "/v1/wallet/balance_transfer",
    "/v1/wallet/balance_transper",
    "/v1/wallet/balance_transfers",
];

/// A deterministic stream of pseudo-random numbers (no dependency, same run every time).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.next() as usize % items.len()]
    }
}

const STRINGS: [&str; 18] = [
    "",
    "alice",
    "bob",
    "USD",
    "usd",
    "JPY",
    "1",
    "0",
    "-1",
    "1.005",
    "1e9",
    "NaN",
    " 1",
    "\u{0}",
    "é",
    "acct:42",
    "99999999999999999999999999",
    "9999999999999.99",
];

fn random_value(rng: &mut Lcg, depth: u32) -> serde_json::Value {
    match rng.next() % if depth > 2 { 5 } else { 7 } {
        0 => json!(null),
        1 => json!(rng.next() % 2 == 0),
        2 => json!(rng.next() as i64 - (1 << 30)),
        3 => json!(rng.next() as f64 / 7.0),
        4 => json!(rng.pick(&STRINGS)),
        5 => json!([random_value(rng, depth + 1), random_value(rng, depth + 1)]),
        _ => random_body(rng, depth + 1),
    }
}

fn random_body(rng: &mut Lcg, depth: u32) -> serde_json::Value {
    let fields = [
        "account_id",
        "currency",
        "amount",
        "transaction_id",
        "from_account",
        "to_account",
        "transfers",
        "x",
    ];
    let mut body = serde_json::Map::new();
    for field in fields {
        if rng.next() % 3 != 0 {
            body.insert(field.to_string(), random_value(rng, depth));
        }
    }
    serde_json::Value::Object(body)
}

#[test]
fn hostile_input_gets_4xx_json_and_the_server_survives() {
    let tmp = tempfile::tempdir().unwrap();
    let s = wallet!().serve(&tmp.path().join("data"), &[]);
    s.post(
        "/v1/accounts",
        &json!({"account_id": "alice", "currency": "USD"}),
    );
    let check = |what: &str, r: &http::Response| {
        assert!(r.status < 500, "{what}: {} {}", r.status, r.text());
        if r.status >= 400 {
            assert_eq!(
                r.header("content-type"),
                Some("application/json"),
                "{what}: {}",
                r.text()
            );
            assert!(!r.code().is_empty(), "{what}");
        }
    };
    let mut rng = Lcg(7);
    for route in POST_ROUTES {
        for _ in 0..RANDOM_REQUESTS_PER_ROUTE {
            let body = random_body(&mut rng, 0);
            check(&format!("POST {route} {body}"), &s.post(route, &body));
        }
    }
    let raw_bodies: [&[u8]; 7] = [
        b"\xff\xfe",
        b"{\"a\":",
        b"[[[[[[[[[[[[[[[[[[[[",
        b"nul",
        b"\"str\"",
        b"{}{}",
        b"{\"account_id\":\"a\",\"account_id\":\"b\",\"currency\":\"USD\"}",
    ];
    for body in raw_bodies {
        let r = http::request(
            s.addr,
            "POST",
            "/v1/accounts",
            &[("Content-Type", "application/json")],
            Some(body),
        )
        .unwrap();
        check(&format!("raw body {body:?}"), &r);
    }
    let deep = "[".repeat(100_000);
    let r = http::request(
        s.addr,
        "POST",
        "/v1/wallet/balance_transfers",
        &[("Content-Type", "application/json")],
        Some(deep.as_bytes()),
    )
    .unwrap();
    check("deep nesting", &r);
    let paths = [
        "/v1/accounts/%00/balance",
        "/v1/accounts/..%2F..%2Fetc/balance",
        "/v1/accounts/alice/balance?as_of=2024-02-30T00:00:00Z",
        "/v1/accounts/alice/balance?as_of=%F0%9F%92%B0",
        "/v1/accounts/alice/balance?as_of_lsn=18446744073709551615",
        "/v1/accounts/alice/balance?as_of_lsn=18446744073709551616",
        "/v1/accounts/alice/balance?as_of=9999-12-31T23:59:59.999999999%2B23:59",
        "/v1/accounts/alice/balance?currency=&currency=USD",
        "/v1/accounts/alice/history?limit=18446744073709551616",
        "/v1/accounts/alice/history?before_lsn=0",
        "/v1/transfers/alice/",
        "/v1/transfers//x",
        "/v1/transfers/alice/x/y",
        "/v1/accounts/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/balance",
        "//v1/accounts",
    ];
    for path in paths {
        check(path, &s.get(path));
    }
    assert_eq!(s.get("/healthz").status, 200);
    assert!(s.terminate().success(), "{}", s.logs());
    assert!(!s.logs().contains("panicked"), "{}", s.logs());
}
