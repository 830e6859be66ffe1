//! An example consumer of the event feed (`GET /v1/events`): it follows every partition
//! from the start with long-polls and folds the lines into balances per account, the way a
//! read model outside the server would.
//!
//! The fold mirrors the ledger's `apply`: one small step per event type. Key-only events
//! (a confirm or a cancel) name a transfer by `from_account` and `transaction_id`; the
//! amount comes from the Try with that key, earlier in the same partition's feed. A
//! multi-leg transaction changes each account of the partition whose feed it is in by the
//! account's net over the `legs` naming it (debits less credits, or the reverse); its key is
//! its first leg's `from_account` and its `transaction_id`.
//!
//! A line of a schema version other than [`SCHEMA_VERSION`] stops the fold (a panic): the
//! feed's rule is that a consumer must not guess at what it does not know.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use serde_json::Value;
use walletd_core::model::money::{Amount, Currency};

use crate::http;

/// The schema version this consumer understands.
pub const SCHEMA_VERSION: u64 = 5;

/// One account of the read model, in minor units of its currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    pub currency: Currency,
    pub balance: u64,
    pub held: u64,
    pub incoming: u64,
    pub partition: u32,
}

/// What a multi-leg transaction does to one account: its legs' debits less its credits
/// (`debit`), or the reverse (`credit`); at most one of them is not 0.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Net {
    account: String,
    debit: u64,
    credit: u64,
}

/// Balances folded from the feeds of every partition.
#[derive(Debug, Default)]
pub struct ReadModel {
    pub accounts: BTreeMap<String, AccountView>,
    /// The last lsn folded, per partition: the cursor of the next request.
    pub cursors: BTreeMap<u32, u64>,
    /// Amounts of the Tries not yet finished, by partition and transfer key.
    tries: HashMap<(u32, String, String), (String, u64)>,
    /// The nets of the multi-leg transactions tried and not yet finished, by partition and
    /// key: each account of that partition they move, with its net debit and net credit.
    transactions: HashMap<(u32, String, String), Vec<Net>>,
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
            // A multi-leg transaction within the partition: each net at once.
            "transaction_applied" => {
                for net in self.nets(partition, event) {
                    let view = self.account(&net.account);
                    view.balance -= net.debit;
                    view.balance += net.credit;
                }
            }
            // Its Try here: net debits into a hold, net credits on their way.
            "transaction_tried" => {
                let nets = self.nets(partition, event);
                for net in &nets {
                    let view = self.account(&net.account);
                    view.balance -= net.debit;
                    view.held += net.debit;
                    view.incoming += net.credit;
                }
                let first = &event["legs"][0]["from_account"];
                let first = first.as_str().expect("a first leg").to_string();
                let key = (partition, first, text("transaction_id"));
                let tried = self.transactions.insert(key, nets);
                assert!(tried.is_none(), "one Try per partition: {event}");
            }
            "transaction_confirmed" | "transaction_cancelled" => {
                let nets = self.transactions.remove(&key);
                let nets = nets.expect("a transaction_tried first");
                for net in nets {
                    let view = self.account(&net.account);
                    view.held -= net.debit;
                    view.incoming -= net.credit;
                    if kind == "transaction_confirmed" {
                        view.balance += net.credit;
                    } else {
                        view.balance += net.debit;
                    }
                }
            }
            // Refusals and decisions move no money.
            "cash_refused"
            | "transfer_rejected"
            | "transfer_decided"
            | "credit_try_not_seen"
            | "refund_rejected"
            | "hold_established"
            | "transaction_rejected"
            | "transaction_refused"
            | "transaction_cancelling" => {}
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

    /// The nets of a multi-leg transaction's line on the accounts of `partition` (those
    /// whose `account_opened` was in its feed), each account once, in the order of their
    /// first legs; accounts whose legs cancel out are left out.
    fn nets(&self, partition: u32, event: &Value) -> Vec<Net> {
        let legs = event["legs"].as_array().expect("legs");
        let mut nets: Vec<Net> = Vec::new();
        for leg in legs {
            let minor = amount(leg);
            for (side, debit) in [("from_account", true), ("to_account", false)] {
                let account = leg[side].as_str().expect("a leg's accounts");
                let here = self.accounts.get(account);
                if here.is_none_or(|view| view.partition != partition) {
                    continue;
                }
                let at = match nets.iter().position(|net| net.account == account) {
                    Some(at) => at,
                    None => {
                        nets.push(Net {
                            account: account.to_string(),
                            debit: 0,
                            credit: 0,
                        });
                        nets.len() - 1
                    }
                };
                if debit {
                    nets[at].debit += minor;
                } else {
                    nets[at].credit += minor;
                }
            }
        }
        for net in &mut nets {
            let common = net.debit.min(net.credit);
            net.debit -= common;
            net.credit -= common;
        }
        nets.retain(|net| net.debit > 0 || net.credit > 0);
        nets
    }

    /// Whether every Try folded has had its end (no money on its way anywhere).
    pub fn settled(&self) -> bool {
        self.tries.is_empty() && self.transactions.is_empty()
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use serde_json::json;
    use walletd_core::ledger::{Command, Ledger, PhaseResult, Reply, TransferStatus};
    use walletd_core::log::codec::Record;
    use walletd_core::model::event::{Event, Reason};
    use walletd_core::model::ids::{AccountId, TransactionId};
    use walletd_core::model::money::{Amount, Currency};
    use walletd_core::model::partition::PartitionId;
    use walletd_core::model::transaction::{Leg, Transaction};
    use walletd_server::feed::schema::line;

    use super::ReadModel;

    /// Two partitions' ledgers, and the feed lines of what each logged.
    struct Feeds {
        ledgers: [Ledger; 2],
        lines: [Vec<serde_json::Value>; 2],
        currencies: HashMap<AccountId, Currency>,
    }

    impl Feeds {
        fn run(&mut self, partition: PartitionId, command: Command) -> Reply {
            let p = partition as usize;
            let mut events = Vec::new();
            let reply = self.ledgers[p].execute(&command, 1, &mut events).unwrap();
            for event in events {
                if let Event::AccountOpened { account, currency } = event {
                    self.currencies.insert(account, currency);
                }
                let lsn = self.lines[p].len() as u64 + 1;
                let record = Record {
                    lsn,
                    timestamp: 1,
                    event,
                };
                self.lines[p].push(line(&record, &self.currencies).expect("currency known"));
            }
            reply
        }
    }

    fn id(text: &str) -> AccountId {
        AccountId::new(text).unwrap()
    }

    fn tx(name: &str, legs: &[(&str, &str, u64)]) -> Arc<Transaction> {
        let legs = legs
            .iter()
            .map(|(from, to, minor)| Leg {
                from: id(from),
                to: id(to),
                amount: Amount::from_minor(*minor).unwrap(),
                currency: Currency::USD,
            })
            .collect();
        Transaction::new(TransactionId::new(name).unwrap(), legs).unwrap()
    }

    /// The read model folds the transaction lines of two partitions' feeds into the balances,
    /// holds and incoming amounts of the ledgers that logged them.
    #[test]
    fn the_fold_of_transaction_lines_gives_the_ledgers_figures() {
        let here = crate::accounts_in("p0-", 0, 2, 3);
        let there = crate::accounts_in("p1-", 1, 2, 2);
        let (a, b, c) = (here[0].as_str(), here[1].as_str(), here[2].as_str());
        let (d, g) = (there[0].as_str(), there[1].as_str());
        let mut feeds = Feeds {
            ledgers: [Ledger::new(0, 2), Ledger::new(1, 2)],
            lines: [Vec::new(), Vec::new()],
            currencies: HashMap::new(),
        };
        for (account, partition, minor) in
            [(a, 0, 50_00), (b, 0, 0), (c, 0, 0), (d, 1, 9_00), (g, 1, 0)]
        {
            let (account, currency) = (id(account), Currency::USD);
            feeds.run(partition, Command::OpenAccount { account, currency });
            if minor > 0 {
                let amount = Amount::from_minor(minor).unwrap();
                let transaction_id = TransactionId::new(&format!("fund-{account}")).unwrap();
                let deposit = Command::Deposit {
                    account,
                    amount,
                    currency,
                    transaction_id,
                };
                feeds.run(partition, deposit);
            }
        }
        let status = |reply: Reply| match reply {
            Reply::Transfer(status) => status,
            other => panic!("{other:?}"),
        };
        // Within partition 0, b passing on part of what it gets.
        let local = tx("local", &[(a, b, 10_00), (b, c, 4_00)]);
        let committed = TransferStatus::Committed;
        assert_eq!(status(feeds.run(0, Command::Transact(local))), committed);
        let rejected = tx("rejected", &[(c, a, 99_00)]);
        let insufficient = TransferStatus::Rejected(Reason::InsufficientFunds);
        assert_eq!(
            status(feeds.run(0, Command::Transact(rejected))),
            insufficient
        );
        // Across partitions: confirmed; and tried at both, then cancelled.
        let pending = TransferStatus::Pending;
        for (name, confirm) in [("across", true), ("cancelled", false)] {
            let t = tx(name, &[(a, d, 3_00), (d, g, 5_00), (b, a, 1_00)]);
            let key = t.key();
            assert_eq!(status(feeds.run(0, Command::Transact(t.clone()))), pending);
            let try_there = Command::TryTransaction {
                tx: t,
                partition: 1,
            };
            assert_eq!(feeds.run(1, try_there), Reply::Phase(PhaseResult::Tried));
            if confirm {
                feeds.run(0, Command::ConfirmTransaction { key, partition: 0 });
                feeds.run(1, Command::ConfirmTransaction { key, partition: 1 });
            } else {
                let decide = Command::DecideTransactionCancel {
                    key,
                    failed_leg: None,
                    reason: Reason::Timeout,
                };
                feeds.run(0, decide);
                feeds.run(1, Command::CancelTransaction { key, partition: 1 });
                feeds.run(0, Command::CancelTransaction { key, partition: 0 });
            }
        }
        // Left tried: its money is held and on its way.
        let open = tx("open", &[(d, c, 2_00)]);
        assert_eq!(
            status(feeds.run(1, Command::Transact(open.clone()))),
            pending
        );
        let try_here = Command::TryTransaction {
            tx: open,
            partition: 0,
        };
        assert_eq!(feeds.run(0, try_here), Reply::Phase(PhaseResult::Tried));

        let mut model = ReadModel::default();
        for (partition, lines) in feeds.lines.iter().enumerate() {
            for line in lines {
                model.fold(partition as u32, line);
            }
        }
        for (partition, ledger) in feeds.ledgers.iter().enumerate() {
            for (account, figures) in ledger.accounts() {
                let view = &model.accounts[account.as_str()];
                let got = (view.balance, view.held, view.incoming, view.partition);
                let want = (
                    figures.balance,
                    figures.held,
                    figures.incoming,
                    partition as u32,
                );
                assert_eq!(got, want, "{account}");
            }
        }
        assert!(!model.settled(), "the open transaction is in flight");
        for kind in [
            "transaction_applied",
            "transaction_rejected",
            "transaction_tried",
        ] {
            assert!(model.types_seen.contains_key(kind), "{kind}");
        }
        for kind in [
            "transaction_cancelling",
            "transaction_confirmed",
            "transaction_cancelled",
        ] {
            assert!(model.types_seen.contains_key(kind), "{kind}");
        }
    }

    #[test]
    #[should_panic(expected = "unknown schema")]
    fn a_line_of_another_schema_version_stops_the_fold() {
        let line = json!({"v": super::SCHEMA_VERSION + 1, "lsn": 1, "type": "account_opened",
            "account_id": "alice", "currency": "USD"});
        ReadModel::default().fold(0, &line);
    }
}
