//! The command line: help texts, the server's life cycle (SIGTERM → exit 0, partition count
//! check, restart), `wallet replay` and `wallet verify` on healthy and damaged data.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use walletd_core::log::codec::{encode_record, Record};
use walletd_core::model::event::{Event, Transfer};
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency};
use walletd_e2e::{http, wallet, Wallet};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_explains_every_subcommand() {
    let w = wallet!();
    let top = w.run(&["--help"]);
    assert!(top.status.success());
    for word in ["serve", "replay", "verify"] {
        assert!(stdout(&top).contains(word), "{}", stdout(&top));
    }
    let serve = stdout(&w.run(&["serve", "--help"]));
    for flag in [
        "--data-dir",
        "--partitions",
        "--listen",
        "--transfer-wait-ms",
        "--body-limit-bytes",
        "--max-in-flight",
        "--api-token",
        "WALLET_API_TOKEN",
        "[default: 127.0.0.1:8080]",
    ] {
        assert!(serve.contains(flag), "serve --help lacks {flag}:\n{serve}");
    }
    let replay = stdout(&w.run(&["replay", "--help"]));
    for flag in [
        "--as-of",
        "--as-of-lsn",
        "--account",
        "--partition",
        "--format",
    ] {
        assert!(
            replay.contains(flag),
            "replay --help lacks {flag}:\n{replay}"
        );
    }
    assert!(stdout(&w.run(&["verify", "--help"])).contains("conservation"));
    let cluster = stdout(&w.run(&["cluster", "--help"]));
    for command in ["init", "status", "add-node", "move", "drain", "remove-node"] {
        assert!(
            cluster.contains(command),
            "cluster --help lacks {command}:\n{cluster}"
        );
    }
    let node = stdout(&w.run(&["node", "--help"]));
    for flag in [
        "--config",
        "--etcd",
        "WALLET_ETCD",
        "--etcd-prefix",
        "--secret-file",
        "--lease-ttl-s",
    ] {
        assert!(node.contains(flag), "node --help lacks {flag}:\n{node}");
    }
    let add_node = stdout(&w.run(&["cluster", "add-node", "--help"]));
    assert!(
        add_node.contains("--peer") && add_node.contains("owns no partition"),
        "{add_node}"
    );
    assert!(!w.run(&["frobnicate"]).status.success());
}

#[test]
fn cluster_moves_explain_their_steps_and_refuse_bad_arguments() {
    let w = wallet!();
    let moving = stdout(&w.run(&["cluster", "move", "--help"]));
    for word in [
        "--partition",
        "--from",
        "--to",
        "--no-wait",
        "--timeout-s",
        "[default: 600]",
        "compare-and-swap",
        "Resumable",
        "rolls the move back",
        "--cacert",
        "Exit 0",
    ] {
        assert!(moving.contains(word), "move --help lacks {word}:\n{moving}");
    }
    let drain = stdout(&w.run(&["cluster", "drain", "--help"]));
    for word in [
        "--node",
        "fewest copies",
        "drained node=N partitions=K",
        "Resumable",
    ] {
        assert!(drain.contains(word), "drain --help lacks {word}:\n{drain}");
    }
    let remove = stdout(&w.run(&["cluster", "remove-node", "--help"]));
    assert!(
        remove.contains("refused while any partition's group holds it"),
        "{remove}"
    );

    let etcd = ["--etcd", "http://127.0.0.1:1"];
    let bad: [&[&str]; 5] = [
        &["cluster", "move", "--partition", "0", "--from", "1"],
        &[
            "cluster",
            "move",
            "--partition",
            "p",
            "--from",
            "1",
            "--to",
            "2",
        ],
        &[
            "cluster",
            "move",
            "--partition",
            "0",
            "--from",
            "1",
            "--to",
            "2",
            "--timeout-s",
            "-1",
        ],
        &["cluster", "drain"],
        &["cluster", "remove-node"],
    ];
    for args in bad {
        let mut args = args.to_vec();
        args.extend(etcd);
        let out = w.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("--"), "{args:?}: {}", stderr(&out));
    }
    // Good arguments, no etcd there: one clear line, exit 1.
    let out = w.run(&[
        "cluster",
        "move",
        "--etcd",
        "http://127.0.0.1:1",
        "--partition",
        "0",
        "--from",
        "1",
        "--to",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot be reached"),
        "{}",
        stderr(&out)
    );
}

/// Runs a small day of business on a fresh server and stops it with SIGTERM.
fn business_day(w: &Wallet, data: &Path, extra: &[&str]) {
    let s = w.serve(data, extra);
    for (account, currency) in [("alice", "USD"), ("bob", "USD"), ("carol", "EUR")] {
        s.post(
            "/v1/accounts",
            &json!({"account_id": account, "currency": currency}),
        );
    }
    s.post(
        "/v1/accounts/alice/deposit",
        &json!({"amount": "100.00", "currency": "USD", "transaction_id": "d1"}),
    );
    s.post(
        "/v1/accounts/carol/deposit",
        &json!({"amount": "5.00", "currency": "EUR", "transaction_id": "d1"}),
    );
    let r = s.post(
        "/v1/wallet/balance_transfer",
        &json!({"from_account": "alice", "to_account": "bob",
        "amount": "30.00", "currency": "USD", "transaction_id": "t1"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    s.post(
        "/v1/accounts/bob/withdraw",
        &json!({"amount": "5.00", "currency": "USD", "transaction_id": "w1"}),
    );
    let status = s.terminate();
    assert!(
        status.success(),
        "SIGTERM must exit 0, got {status}:\n{}",
        s.logs()
    );
    assert!(s.logs().contains("stopped cleanly"), "{}", s.logs());
}

/// A second server on a data directory in use is refused with a message that says why,
/// and the first goes on unharmed; once the first stops, the directory can be used again.
#[test]
fn a_data_directory_is_served_by_one_process_at_a_time() {
    let w = wallet!();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let first = w.serve(&data, &["--partitions", "2"]);
    first.post(
        "/v1/accounts",
        &json!({"account_id": "alice", "currency": "USD"}),
    );
    let data_arg = data.display().to_string();
    let second = w.run(&[
        "serve",
        "--data-dir",
        &data_arg,
        "--partitions",
        "2",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    let holder = format!("in use by another process (pid {} holds LOCK)", first.pid());
    assert!(stderr.contains(&holder), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let r = first.get("/v1/accounts/alice/balance?currency=USD");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(first.terminate().success(), "{}", first.logs());

    let again = w.serve(&data, &["--partitions", "2"]);
    let r = again.get("/v1/accounts/alice/balance?currency=USD");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(again.terminate().success(), "{}", again.logs());
}

#[test]
fn sigterm_stops_cleanly_and_a_restart_recovers_everything() {
    let w = wallet!();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    business_day(&w, &data, &[]);
    let s = w.serve(&data, &[]);
    assert!(s.logs().contains("events_replayed="), "{}", s.logs());
    let b = s.get("/v1/accounts/bob/balance").json();
    assert_eq!(b["balance"], "25.00");
    let r = s.post(
        "/v1/wallet/balance_transfer",
        &json!({"from_account": "alice", "to_account": "bob",
        "amount": "30.00", "currency": "USD", "transaction_id": "t1"}),
    );
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, json!("committed")),
        "the retry after restart"
    );
    assert!(s.terminate().success());

    // The partition count is part of the data directory.
    let refused = serve_refused(&w, &data, 4);
    assert!(refused.contains("created with 8 partitions"), "{refused}");
    assert!(refused.contains("--partitions 8"), "{refused}");
}

#[test]
fn sigterm_drains_a_request_in_flight_before_exiting() {
    let w = wallet!();
    let tmp = tempfile::tempdir().unwrap();
    let s = w.serve(&tmp.path().join("data"), &[]);
    let body = br#"{"account_id":"late","currency":"USD"}"#;
    let head = format!(
        "POST /v1/accounts HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut slow = http::connect(s.addr).unwrap();
    slow.write_all(head.as_bytes()).unwrap();
    slow.write_all(&body[..10]).unwrap();
    let in_flight = walletd_e2e::wait_until(Duration::from_secs(10), || {
        s.get("/metrics")
            .text()
            .contains("walletd_http_requests_in_flight 2")
    });
    assert!(in_flight, "the slow request reached its handler");
    s.send_sigterm();
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.is_running(), "the server waits for the request in flight");
    slow.write_all(&body[10..]).unwrap();
    let r = http::read_response(&mut slow).unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let status = s.wait_exit();
    assert!(status.success(), "{status}: {}", s.logs());
    // What the drained request did is durable.
    let s = w.serve(&tmp.path().join("data"), &[]);
    assert_eq!(s.get("/v1/accounts/late/balance").status, 200);
}

#[test]
fn replay_prints_balances_and_history_from_the_logs() {
    let w = wallet!();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Snapshots every few events, so that verify compares them with the replay.
    business_day(&w, &data, &["--snapshot-every-events", "2"]);
    let dir = data.display().to_string();

    let out = w.run(&["replay", "--data-dir", &dir, "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let balances: Vec<(String, String)> = doc["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["account_id"].as_str().unwrap().into(),
                a["balance"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        balances,
        [
            ("alice".into(), "70.00".into()),
            ("bob".into(), "25.00".into()),
            ("carol".into(), "5.00".into())
        ]
    );
    let text = stdout(&w.run(&["replay", "--data-dir", &dir]));
    assert!(text.contains("# total USD: balance 95.00"), "{text}");

    let out = w.run(&[
        "replay",
        "--data-dir",
        &dir,
        "--account",
        "bob",
        "--format",
        "json",
    ]);
    let bob: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let kinds: Vec<&str> = bob["movements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["credit_in", "withdrawal"]);
    // As of the record before the withdrawal.
    let before = bob["movements"][1]["lsn"].as_u64().unwrap() - 1;
    let out = w.run(&[
        "replay",
        "--data-dir",
        &dir,
        "--account",
        "bob",
        "--as-of-lsn",
        &before.to_string(),
        "--format",
        "json",
    ]);
    let then: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(then["balance"], "30.00");
    let out = w.run(&[
        "replay",
        "--data-dir",
        &dir,
        "--as-of",
        "1970-01-02T00:00:00Z",
        "--format",
        "json",
    ]);
    let empty: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(empty["accounts"], json!([]));

    let out = w.run(&["replay", "--data-dir", &dir, "--as-of-lsn", "3"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--partition"), "{}", stderr(&out));
    let out = w.run(&[
        "replay",
        "--data-dir",
        &tmp.path().join("nothing").display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2));

    let (code, report) = w.verify(&data);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("OK: no violations"), "{report}");
    assert!(
        report.contains("EUR: deposited 5.00, withdrawn 0.00, balances 5.00"),
        "{report}"
    );
}

/// A partition with more transfers than a chunk holds (65,536 rows) snapshots its final rows
/// into a chunk file; `verify` reads snapshots with their chunk files, and a damaged chunk
/// file is a violation, never a different state.
#[test]
fn verify_reads_snapshots_with_chunk_files_and_reports_a_damaged_one() {
    let w = wallet!();
    let tmp = tempfile::tempdir().unwrap();
    /// Batches of 8,000 transfers at most: 2.5 million rows, far past the first chunk.
    const BATCHES_MAX: usize = 320;
    let data = tmp.path().join("data");
    let s = w.serve(
        &data,
        &["--partitions", "1", "--snapshot-every-events", "10000"],
    );
    for account in ["alice", "bob"] {
        s.post(
            "/v1/accounts",
            &json!({"account_id": account, "currency": "USD"}),
        );
    }
    s.post(
        "/v1/accounts/alice/deposit",
        &json!({"amount": "1000.00", "currency": "USD", "transaction_id": "d1"}),
    );
    // Snapshots come at growing intervals (see `snapshot_due`), and a snapshot taken while
    // the one before is still being written waits for it, so when one first finds the
    // first chunk (65,536 rows) sealed and final depends on timing: transfers go on until
    // its chunk file is there.
    let partition = data.join("partition-0");
    let chunk = partition.join("chunk-0000000000.rows");
    for batch in 0..BATCHES_MAX {
        let transfers: Vec<Value> = (0..8000)
            .map(|i| {
                let (from, to) = if i % 2 == 0 {
                    ("alice", "bob")
                } else {
                    ("bob", "alice")
                };
                json!({"from_account": from, "to_account": to, "amount": "0.01",
                       "currency": "USD", "transaction_id": format!("t{batch}-{i}")})
            })
            .collect();
        let r = s.post(
            "/v1/wallet/balance_transfers",
            &json!({ "transfers": transfers }),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        if batch >= 8 && chunk.exists() {
            break;
        }
    }
    assert!(s.terminate().success(), "{}", s.logs());
    assert!(
        chunk.exists(),
        "no chunk file in {}: {}",
        partition.display(),
        s.logs()
    );

    let (code, report) = w.verify(&data);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("OK: no violations"), "{report}");

    let mut bytes = fs::read(&chunk).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    fs::write(&chunk, bytes).unwrap();
    let (code, report) = w.verify(&data);
    assert_ne!(code, 0, "{report}");
    assert!(
        report.contains("chunk file 0: checksum mismatch"),
        "{report}"
    );

    // The server sets such snapshots aside and rebuilds the state from the log.
    let s = w.serve(&data, &["--partitions", "1"]);
    let balance = s.get("/v1/accounts/alice/balance?currency=USD").json();
    assert_eq!(balance["balance"], "1000.00", "{}", s.logs());
    assert!(s.logs().contains("bad snapshot ignored"), "{}", s.logs());
    assert!(s.terminate().success(), "{}", s.logs());
}

fn id(text: &str) -> AccountId {
    AccountId::new(text).unwrap()
}

/// Writes `events` as the log of partition 0 of a one-partition data directory.
/// Runs `wallet serve` on `data` with `partitions`, which must refuse to start; its stderr.
fn serve_refused(w: &Wallet, data: &Path, partitions: u32) -> String {
    let data = data.display().to_string();
    let partitions = partitions.to_string();
    let args = ["serve", "--data-dir", &data, "--partitions", &partitions];
    let refused = w.run(&[&args[..], &["--listen", "127.0.0.1:0"]].concat());
    assert!(!refused.status.success(), "{}", stderr(&refused));
    stderr(&refused)
}

fn write_log(data: &Path, events: &[Event]) {
    let partition = data.join("partition-0");
    fs::create_dir_all(&partition).unwrap();
    fs::write(data.join("walletd-layout"), "format = 1\npartitions = 1\n").unwrap();
    let mut bytes = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let lsn = i as u64 + 1;
        encode_record(
            &Record {
                lsn,
                timestamp: 1_700_000_000_000_000 + lsn,
                event: event.clone(),
            },
            &mut bytes,
        );
    }
    fs::write(partition.join("log-00000000000000000001.seg"), bytes).unwrap();
}

#[test]
fn verify_reports_each_violation_in_damaged_logs() {
    let w = wallet!();
    let tmp = tempfile::tempdir().unwrap();
    let usd = Currency::USD;
    let amount = Amount::from_minor(500).unwrap();
    let t1 = TransactionId::new("t1").unwrap();
    let funded = [
        Event::AccountOpened {
            account: id("alice"),
            currency: usd,
        },
        Event::Deposited {
            account: id("alice"),
            amount,
            transaction_id: t1,
        },
    ];
    let transfer = Transfer {
        transaction_id: t1,
        from: id("x"),
        to: id("alice"),
        amount,
        currency: usd,
    };

    // A deposit applied twice, and a destination Try after its Cancel (a hanging reservation).
    let data = tmp.path().join("twice");
    write_log(
        &data,
        &[
            &funded[..],
            &[
                Event::Deposited {
                    account: id("alice"),
                    amount,
                    transaction_id: t1,
                },
                Event::CreditTryNotSeen {
                    key: transfer.key(),
                },
                Event::CreditTried { transfer },
            ],
        ]
        .concat(),
    );
    let (code, report) = w.verify(&data);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("FAILED"), "{report}");
    assert!(report.contains("applied twice"), "{report}");
    assert!(report.contains("after its Cancel"), "{report}");

    // Refunds of one transfer that sum to more than it moved: the refund cap.
    let data = tmp.path().join("refunds");
    let to_bob = Transfer {
        transaction_id: t1,
        from: id("alice"),
        to: id("bob"),
        amount,
        currency: usd,
    };
    let refund = |id_text: &str| Event::RefundAccepted {
        refund: Transfer {
            transaction_id: TransactionId::new(id_text).unwrap(),
            from: id("bob"),
            to: id("alice"),
            amount: Amount::from_minor(300).unwrap(),
            currency: usd,
        },
        original: t1,
        remote: false,
    };
    write_log(
        &data,
        &[
            &funded[..],
            &[
                Event::AccountOpened {
                    account: id("bob"),
                    currency: usd,
                },
                Event::Transferred { transfer: to_bob },
                refund("r1"),
                refund("r2"),
            ],
        ]
        .concat(),
    );
    let (code, report) = w.verify(&data);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("refund_cap"), "{report}");

    // A hold captured after its expiry, by the stamps of its records: one end, out of time.
    let data = tmp.path().join("holds");
    let hold = Transfer {
        transaction_id: TransactionId::new("h1").unwrap(),
        from: id("alice"),
        to: id("bob"),
        amount,
        currency: usd,
    };
    write_log(
        &data,
        &[
            &funded[..],
            &[
                Event::AccountOpened {
                    account: id("bob"),
                    currency: usd,
                },
                // Records are stamped a microsecond apart: this hold expires before the
                // record that captures it.
                Event::HoldPlaced {
                    hold,
                    expires_at: 1_700_000_000_000_000,
                    remote: false,
                },
                Event::HoldCaptured {
                    hold,
                    amount,
                    remote: false,
                },
            ],
        ]
        .concat(),
    );
    let (code, report) = w.verify(&data);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("hold_expiry"), "{report}");

    // A withdrawal that overdraws: the log does not replay.
    let data = tmp.path().join("overdraw");
    write_log(
        &data,
        &[
            Event::AccountOpened {
                account: id("alice"),
                currency: usd,
            },
            Event::Withdrawn {
                account: id("alice"),
                amount,
                transaction_id: t1,
            },
        ],
    );
    let (code, report) = w.verify(&data);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("replay failed"), "{report}");

    // A flipped byte in the middle of the log is corruption, not a torn tail.
    let data = tmp.path().join("corrupt");
    write_log(
        &data,
        &[
            &funded[..],
            &[Event::Deposited {
                account: id("alice"),
                amount,
                transaction_id: TransactionId::new("t2").unwrap(),
            }],
        ]
        .concat(),
    );
    let segment = data.join("partition-0/log-00000000000000000001.seg");
    let mut bytes = fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&segment, &bytes).unwrap();
    let (code, report) = w.verify(&data);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("log unreadable"), "{report}");

    // A torn tail alone is what a crash leaves: reported, not a violation.
    let data = tmp.path().join("torn");
    write_log(&data, &funded);
    let segment = data.join("partition-0/log-00000000000000000001.seg");
    let mut bytes = fs::read(&segment).unwrap();
    bytes.truncate(bytes.len() - 3);
    fs::write(&segment, &bytes).unwrap();
    let (code, report) = w.verify(&data);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("torn tail"), "{report}");
}

/// Writes `records` deposits to `alice` (opened by the first) as the log segment of
/// partition 0 of `data` that starts at `first_lsn`.
fn write_segment(data: &Path, first_lsn: u64, records: u64) {
    let mut bytes = Vec::new();
    for lsn in first_lsn..first_lsn + records {
        let event = if lsn == 1 {
            Event::AccountOpened {
                account: id("alice"),
                currency: Currency::USD,
            }
        } else {
            Event::Deposited {
                account: id("alice"),
                amount: Amount::from_minor(100).unwrap(),
                transaction_id: TransactionId::new(&format!("d{lsn}")).unwrap(),
            }
        };
        let record = Record {
            lsn,
            timestamp: 1_700_000_000_000_000 + lsn,
            event,
        };
        encode_record(&record, &mut bytes);
    }
    let name = format!("log-{first_lsn:020}.seg");
    fs::write(data.join("partition-0").join(name), bytes).unwrap();
}

/// A log segment lost from the middle: the partition refuses to start, and the error names
/// the lsn that is missing, rather than replaying around the hole.
#[test]
fn a_missing_segment_in_the_middle_stops_the_partition_and_names_the_gap() {
    let w = wallet!();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_log(&data, &[]);
    fs::remove_file(
        data.join("partition-0")
            .join("log-00000000000000000001.seg"),
    )
    .unwrap();
    for first_lsn in [1, 4, 7] {
        write_segment(&data, first_lsn, 3);
    }
    let whole = w.run(&["replay", "--data-dir", &data.display().to_string()]);
    assert!(whole.status.success(), "{}", stderr(&whole));
    fs::remove_file(
        data.join("partition-0")
            .join("log-00000000000000000004.seg"),
    )
    .unwrap();
    let refused = serve_refused(&w, &data, 1);
    assert!(refused.contains("lsn 4 is missing"), "{refused}");
    let (code, report) = w.verify(&data);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("lsn 4 is missing"), "{report}");
}

/// A CA file for the nodes' HTTPS API that cannot be read stops the cluster commands that
/// ask the nodes before they reach etcd or write anything, naming the file.
#[test]
fn cluster_commands_refuse_a_ca_file_they_cannot_read() {
    let w = wallet!();
    let etcd = "http://127.0.0.1:1";
    for args in [
        vec!["cluster", "status", "--etcd", etcd],
        vec!["cluster", "drain", "--etcd", etcd, "--node", "1"],
        vec![
            "cluster",
            "move",
            "--etcd",
            etcd,
            "--partition",
            "0",
            "--from",
            "0",
            "--to",
            "1",
        ],
    ] {
        let mut args = args.clone();
        args.extend(["--cacert", "/nonexistent/ca.pem"]);
        let output = w.run(&args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let said = stderr(&output);
        assert!(
            said.contains("cannot read the CA file /nonexistent/ca.pem"),
            "{args:?}: {said}"
        );
    }
}
