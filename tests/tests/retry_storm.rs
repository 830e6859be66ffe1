//! A retry storm: many clients send the very same transfer at the same moment. Exactly one
//! transfer is applied and every client gets the same answer.

use std::sync::{Arc, Barrier};

use serde_json::json;
use walletd_e2e::{accounts_in, wallet};

/// Clients sending the same request at once.
const CLIENTS: usize = 50;

fn storm(server: &walletd_e2e::Server, from: &str, to: &str, id: &str) -> Vec<(u16, String)> {
    let barrier = Arc::new(Barrier::new(CLIENTS));
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let barrier = Arc::clone(&barrier);
                scope.spawn(move || {
                    let body = json!({"from_account": from, "to_account": to, "amount": "10.00",
                                      "currency": "USD", "transaction_id": id});
                    barrier.wait();
                    let r = server.post("/v1/wallet/balance_transfer", &body);
                    (r.status, r.text())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect()
    })
}

#[test]
fn fifty_clients_one_transaction_id_one_transfer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = wallet!().serve(&tmp.path().join("data"), &[]);
    let home = accounts_in("r", 0, 8, 2);
    let away = &accounts_in("w", 5, 8, 1)[0];
    for account in [&home[0], &home[1], away] {
        let r = server.post(
            "/v1/accounts",
            &json!({"account_id": account, "currency": "USD"}),
        );
        assert_eq!(r.status, 201);
    }
    let r = server.post(
        &format!("/v1/accounts/{}/deposit", home[0]),
        &json!({"amount": "100.00", "currency": "USD", "transaction_id": "seed"}),
    );
    assert_eq!(r.status, 200);

    // Across partitions (TC/C) and within one partition.
    for (to, id) in [
        (away.as_str(), "storm-cross"),
        (home[1].as_str(), "storm-local"),
    ] {
        let answers = storm(&server, &home[0], to, id);
        let first = answers[0].clone();
        assert_eq!(first.0, 200, "{}", first.1);
        assert!(
            answers.iter().all(|a| *a == first),
            "answers differ: {answers:?}"
        );
    }
    let balance = |account: &str| {
        server
            .get(&format!("/v1/accounts/{account}/balance"))
            .json()["balance"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        balance(&home[0]),
        "80.00",
        "each transfer applied exactly once"
    );
    assert_eq!(balance(away), "10.00");
    assert_eq!(balance(&home[1]), "10.00");
    let history = server
        .get(&format!("/v1/accounts/{}/history", home[0]))
        .json();
    let movements = history["movements"].as_array().unwrap();
    // deposit, local transfer out, hold and capture of the cross-partition transfer.
    assert_eq!(movements.len(), 4, "{history}");
    assert!(server.terminate().success());
}
