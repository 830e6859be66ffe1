//! An example consumer of the event feed (`GET /v1/events`): it follows every partition
//! from the start with long-polls and folds the lines into balances per account, the way a
//! read model outside the server would.
//!
//! The fold mirrors the ledger's `apply`: one small step per event type. Key-only events
//! (a confirm or a cancel) name a transfer by `from_account` and `transaction_id`; the
//! amount comes from the Try with that key, earlier in the same partition's feed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use serde_json::Value;
use walletd_core::model::money::{Amount, Currency};

use crate::http;

/// The schema version this consumer understands.
pub const SCHEMA_VERSION: u64 = 3;

/// One account of the read model, in minor units of its currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    pub currency: Currency,
    pub balance: u64,
    pub held: u64,
    pub incoming: u64,
    pub partition: u32,
}

/// Balances folded from the feeds of every partition.
#[derive(Debug, Default)]
pub struct ReadModel {
    pub accounts: BTreeMap<String, AccountView>,
    /// The last lsn folded, per partition: the cursor of the next request.
    pub cursors: BTreeMap<u32, u64>,
    /// Amounts of the Tries not yet finished, by partition and transfer key.
    tries: HashMap<(u32, String, String), (String, u64)>,
    /// Lines folded, by type.
    pub types_seen: BTreeMap<String, usize>,
}

impl ReadModel {
    /// Asks partition `partition` for what follows its cursor, waiting up to `wait_ms`, and
    /// folds the answer; the number of lines folded.
    pub fn poll(&mut self, addr: SocketAddr, partition: u32, wait_ms: u64) -> usize {
        let after = self.cursors.get(&partition).copied().unwrap_or(0);
        let path =
            format!("/v1/events?partition={partition}&after_lsn={after}&limit=7&wait_ms={wait_ms}");
        let response = http::request(addr, "GET", &path, &[], None).expect("GET /v1/events");
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        assert_eq!(
            response.header("content-type"),
            Some("application/x-ndjson")
        );
        let text = response.text();
        let mut folded = 0;
        for line in text.lines() {
            let event: Value = serde_json::from_str(line).expect("each line is JSON");
            self.fold(partition, &event);
            folded += 1;
        }
        assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
        folded
    }

    /// Follows `partition` until an answer without waiting is empty: caught up.
    pub fn catch_up(&mut self, addr: SocketAddr, partition: u32) {
        while self.poll(addr, partition, 0) > 0 {}
    }

    /// Folds one line of `partition`'s feed.
    pub fn fold(&mut self, partition: u32, event: &Value) {
        assert_eq!(event["v"], SCHEMA_VERSION, "unknown schema: {event}");
        let lsn = event["lsn"].as_u64().expect("lsn");
        let cursor = self.cursors.entry(partition).or_insert(0);
        assert_eq!(lsn, *cursor + 1, "lines come in log order, none missing");
        *cursor = lsn;
        let kind = event["type"].as_str().expect("type").to_string();
        *self.types_seen.entry(kind.clone()).or_default() += 1;
        let text = |field: &str| event[field].as_str().unwrap_or_default().to_string();
        let key = (partition, text("from_account"), text("transaction_id"));
        match kind.as_str() {
            "account_opened" => {
                let currency = Currency::from_code(&text("currency")).expect("currency");
                let view = AccountView {
                    currency,
                    balance: 0,
                    held: 0,
                    incoming: 0,
                    partition,
                };
                assert!(self.accounts.insert(text("account_id"), view).is_none());
            }
            "deposited" => self.account(&text("account_id")).balance += amount(event),
            "withdrawn" => self.account(&text("account_id")).balance -= amount(event),
            // A refund accepted moves money as a transfer within the partition does, or is
            // the debit's Try of one across partitions.
            "refund_accepted" if event["remote"] == Value::Bool(true) => {
                self.fold_debit_tried(key, event)
            }
            "transferred" | "refund_accepted" => {
                let minor = amount(event);
                self.account(&text("from_account")).balance -= minor;
                self.account(&text("to_account")).balance += minor;
            }
            "debit_tried" => self.fold_debit_tried(key, event),
            "debit_confirmed" | "debit_cancelled" => {
                let (account, minor) = self.tries.remove(&key).expect("a debit_tried first");
                let from = self.account(&account);
                from.held -= minor;
                if kind == "debit_cancelled" {
                    from.balance += minor;
                }
            }
            "credit_tried" => {
                let minor = amount(event);
                self.account(&text("to_account")).incoming += minor;
                self.tries.insert(key, (text("to_account"), minor));
            }
            "credit_confirmed" | "credit_cancelled" => {
                let (account, minor) = self.tries.remove(&key).expect("a credit_tried first");
                let to = self.account(&account);
                to.incoming -= minor;
                if kind == "credit_confirmed" {
                    to.balance += minor;
                }
            }
            // A hold across partitions is a transfer's Try at its home; within one, the
            // destination counts it as incoming at once.
            "hold_placed" if event["remote"] == Value::Bool(true) => {
                self.fold_debit_tried(key, event)
            }
            "hold_placed" => {
                let minor = amount(event);
                let from = self.account(&text("from_account"));
                from.balance -= minor;
                from.held += minor;
                self.account(&text("to_account")).incoming += minor;
            }
            "hold_captured" => {
                let (full, captured) = (amount(event), amount_of(event, "captured_amount"));
                let from = self.account(&text("from_account"));
                from.held -= full;
                from.balance += full - captured;
                if event["remote"] == Value::Bool(true) {
                    // The hold's Try ends here; the destination hears of it on its own.
                    self.tries.remove(&key).expect("a hold_placed first");
                } else {
                    let to = self.account(&text("to_account"));
                    to.incoming -= full;
                    to.balance += captured;
                }
            }
            // Across partitions, the decision to cancel: `debit_cancelled` follows.
            "hold_released" if event["remote"] == Value::Bool(true) => {}
            "hold_released" => {
                let full = amount(event);
                let from = self.account(&text("from_account"));
                from.held -= full;
                from.balance += full;
                self.account(&text("to_account")).incoming -= full;
            }
            "credit_captured" => {
                let (account, tried) = self.tries.remove(&key).expect("a credit_tried first");
                let captured: u64 = text("amount_minor").parse().expect("minor units");
                let to = self.account(&account);
                to.incoming -= tried;
                to.balance += captured;
            }
            // Refusals and decisions move no money.
            "cash_refused"
            | "transfer_rejected"
            | "transfer_decided"
            | "credit_try_not_seen"
            | "refund_rejected"
            | "hold_established" => {}
            other => panic!("unknown event type {other} in schema v{SCHEMA_VERSION}: {event}"),
        }
    }

    /// The source's Try of a transfer (or refund) across partitions: money into a hold.
    fn fold_debit_tried(&mut self, key: (u32, String, String), event: &Value) {
        let minor = amount(event);
        let source = event["from_account"]
            .as_str()
            .expect("from_account")
            .to_string();
        let from = self.account(&source);
        from.balance -= minor;
        from.held += minor;
        self.tries.insert(key, (source, minor));
    }

    /// Whether every Try folded has had its end (no money on its way anywhere).
    pub fn settled(&self) -> bool {
        self.tries.is_empty()
    }

    fn account(&mut self, id: &str) -> &mut AccountView {
        self.accounts
            .get_mut(id)
            .unwrap_or_else(|| panic!("account {id} before its opening"))
    }
}

/// The amount of a line in minor units, parsed by the API's own strict parser.
fn amount(event: &Value) -> u64 {
    amount_of(event, "amount")
}

/// The amount in `field` of a line, in minor units of its `currency`.
fn amount_of(event: &Value, field: &str) -> u64 {
    let currency = Currency::from_code(event["currency"].as_str().expect("currency"))
        .expect("a known currency");
    let text = event[field].as_str().expect("amounts are strings");
    Amount::parse(text, currency)
        .expect("a valid amount")
        .minor()
}
