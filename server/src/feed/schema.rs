//! The feed's JSON line for each event: schema version 5 (version 4 with `failed_leg`
//! always on `transaction_rejected`, version 3 without the multi-leg transaction types either,
//! version 2 without the hold types either, version 1 without the refund types either).
//!
//! Every line is one object: `v` (the schema version), `lsn`, `timestamp` (RFC 3339, as
//! everywhere in the API), `type` (the event, snake case) and the event's own fields. Amounts
//! are decimal strings in their currency, ids are strings, reasons are the codes the rest of
//! the API uses. A multi-leg transaction's lines carry its `legs` (each `from_account`,
//! `to_account`, `amount`, `currency`) or, after its Try, only its key (`transaction_id` and
//! the first leg's `from_account`). [`EVENT_TYPES`] lists each type's fields; the OpenAPI document and
//! `server/README.md` are written from the same list, and a test holds [`line`] to it.
//!
//! Versioning: within a version, a type keeps its fields and their meanings. A new field, a
//! new type or a changed meaning is a new version, announced by `v`; a consumer that meets a
//! `v` it does not know must stop rather than guess (a fold that skipped an event would
//! silently disagree with the ledger).

use std::collections::HashMap;

use serde_json::{json, Map, Value};
use walletd_core::log::codec::Record;
use walletd_core::model::event::{
    CashKind, CashRefusal, CashRefused, Decision, Event, Reason, Transfer, TransferKey,
};
use walletd_core::model::ids::AccountId;
use walletd_core::model::money::{Amount, Currency};
use walletd_core::model::transaction::Transaction;

use crate::rfc3339;

/// The schema version every line carries as `v`.
pub const SCHEMA_VERSION: u64 = 5;

/// One event type of the feed: its name and fields beyond `v`, `lsn`, `timestamp`, `type`.
pub struct EventType {
    pub name: &'static str,
    /// Fields every line of this type has.
    pub fields: &'static [&'static str],
    /// Fields some lines of this type have (see `description`).
    pub optional: &'static [&'static str],
    pub description: &'static str,
}

const TRANSFER: &[&str] = &[
    "transaction_id",
    "from_account",
    "to_account",
    "amount",
    "currency",
];
const KEY: &[&str] = &["transaction_id", "from_account"];
const TRANSACTION: &[&str] = &["transaction_id", "legs"];

/// Every event type, in the order of [`Event`]'s variants.
pub const EVENT_TYPES: &[EventType] = &[
    EventType {
        name: "account_opened",
        fields: &["account_id", "currency"],
        optional: &[],
        description: "An account was opened with a zero balance.",
    },
    EventType {
        name: "deposited",
        fields: &["account_id", "transaction_id", "amount", "currency"],
        optional: &[],
        description: "Money entered the account (and the system).",
    },
    EventType {
        name: "withdrawn",
        fields: &["account_id", "transaction_id", "amount", "currency"],
        optional: &[],
        description: "Money left the account (and the system).",
    },
    EventType {
        name: "cash_refused",
        fields: &["account_id", "transaction_id", "kind", "refusal"],
        optional: &["amount", "currency", "amount_minor"],
        description: "A deposit or withdrawal was refused; nothing moved. `amount` and \
            `currency` are the request's, except when `refusal` is `account_not_found`: the \
            request's currency was not recorded, so the amount is `amount_minor`, in minor units.",
    },
    EventType {
        name: "transferred",
        fields: TRANSFER,
        optional: &[],
        description: "A transfer within the partition: debit and credit at once.",
    },
    EventType {
        name: "transfer_rejected",
        fields: &[
            "transaction_id",
            "from_account",
            "to_account",
            "amount",
            "currency",
            "reason",
        ],
        optional: &[],
        description: "A transfer refused at its home partition; nothing moved.",
    },
    EventType {
        name: "debit_tried",
        fields: TRANSFER,
        optional: &[],
        description: "Cross-partition transfer, at the source: the amount moved from the \
            balance into a hold.",
    },
    EventType {
        name: "transfer_decided",
        fields: &["transaction_id", "from_account", "decision"],
        optional: &["reason"],
        description: "Cross-partition transfer, at the source: committed (`confirm`) or \
            cancelled (`cancel`, with its `reason`). Moves nothing by itself.",
    },
    EventType {
        name: "debit_confirmed",
        fields: KEY,
        optional: &[],
        description: "At the source: the hold of the `debit_tried` with this key is gone for good.",
    },
    EventType {
        name: "debit_cancelled",
        fields: KEY,
        optional: &[],
        description: "At the source: the hold of the `debit_tried` with this key went back \
            to the balance.",
    },
    EventType {
        name: "credit_tried",
        fields: TRANSFER,
        optional: &[],
        description: "At the destination: a pending credit (`incoming`); no balance changed.",
    },
    EventType {
        name: "credit_confirmed",
        fields: KEY,
        optional: &[],
        description: "At the destination: the pending credit of the `credit_tried` with this \
            key became balance.",
    },
    EventType {
        name: "credit_cancelled",
        fields: KEY,
        optional: &[],
        description: "At the destination: the pending credit of the `credit_tried` with this \
            key was dropped.",
    },
    EventType {
        name: "credit_try_not_seen",
        fields: KEY,
        optional: &[],
        description: "At the destination: a cancel came before any Try; a later Try fails. \
            Moves nothing.",
    },
    EventType {
        name: "refund_accepted",
        fields: &[
            "transaction_id",
            "from_account",
            "to_account",
            "amount",
            "currency",
            "refund_of",
            "remote",
        ],
        optional: &[],
        description: "A refund, at its home (the partition of the refunded transfer's \
            destination): `from_account` pays `amount` back to `to_account`, the source of the \
            transfer `refund_of` (its `transaction_id`, from `to_account`). With `remote` false \
            the money moved at once, as in `transferred`; with `remote` true this is the \
            refund's `debit_tried`, and its phases follow under its own key.",
    },
    EventType {
        name: "refund_rejected",
        fields: &[
            "transaction_id",
            "from_account",
            "to_account",
            "amount",
            "currency",
            "refund_of",
            "reason",
        ],
        optional: &[],
        description: "A refund refused at its home partition; nothing moved.",
    },
    EventType {
        name: "hold_placed",
        fields: &[
            "transaction_id",
            "from_account",
            "to_account",
            "amount",
            "currency",
            "expires_at",
            "remote",
        ],
        optional: &[],
        description: "A hold, at its home (the source's partition): `amount` moved from \
            `from_account`'s balance into `held`, until a capture, a void or its expiry \
            (`expires_at`). With `remote` false the destination counts it as `incoming` at \
            once; with `remote` true this is the hold's `debit_tried`, and the destination's \
            `credit_tried` follows under the same key.",
    },
    EventType {
        name: "hold_established",
        fields: KEY,
        optional: &[],
        description: "A hold across partitions, at its home: the destination tried its credit, \
            the hold is held. Moves nothing.",
    },
    EventType {
        name: "hold_captured",
        fields: &[
            "transaction_id",
            "from_account",
            "to_account",
            "amount",
            "currency",
            "captured_amount",
            "remote",
        ],
        optional: &[],
        description: "A hold captured, at its home: `held` of `from_account` drops by `amount` \
            (the hold's), of which `amount` less `captured_amount` goes back to its balance. \
            With `remote` false `to_account`'s `incoming` drops by `amount` and its balance \
            grows by `captured_amount`; with `remote` true the destination records \
            `credit_confirmed` (all captured) or `credit_captured` (a part).",
    },
    EventType {
        name: "hold_released",
        fields: &[
            "transaction_id",
            "from_account",
            "to_account",
            "amount",
            "currency",
            "reason",
            "remote",
        ],
        optional: &[],
        description: "A hold voided (`reason` `hold_voided`) or expired (`hold_expired`), at its \
            home. With `remote` false everything went back at once: `from_account`'s `held` \
            to its balance, `to_account`'s `incoming` down by `amount`. With `remote` true this \
            is the decision to cancel (as `transfer_decided`); `debit_cancelled` and the \
            destination's `credit_cancelled` follow under the same key.",
    },
    EventType {
        name: "credit_captured",
        fields: &["transaction_id", "from_account", "amount_minor"],
        optional: &[],
        description: "At the destination of a hold captured in part: the pending credit of the \
            `credit_tried` with this key was dropped, and `amount_minor` of it (in minor units \
            of that line's currency) became balance.",
    },
    EventType {
        name: "transaction_applied",
        fields: TRANSACTION,
        optional: &[],
        description: "A multi-leg transaction whose accounts all live on this partition, \
            applied at once. Each account's net over the `legs` naming it (what they take from \
            it less what they bring it) moved: a net debit left its balance, a net credit \
            entered it; an account whose legs cancel out did not change.",
    },
    EventType {
        name: "transaction_rejected",
        fields: &["transaction_id", "legs", "reason"],
        optional: &["failed_leg"],
        description: "A multi-leg transaction refused at its home (the partition of its first \
            leg's `from_account`): leg `failed_leg` (an index into `legs`, from 0) failed for \
            `reason`; or, with no `failed_leg` and `reason` `timeout`, a participant asked \
            about a Try its home had lost (a crash took the home's record after the Tries \
            left), and the home rejected it for good. Nothing moved.",
    },
    EventType {
        name: "transaction_tried",
        fields: TRANSACTION,
        optional: &[],
        description: "A multi-leg transaction across partitions, tried at this partition (its \
            home's record of it included). Only the accounts of this partition change, each by \
            its net over the `legs` naming it: a net debit moved from the balance into `held`, \
            a net credit was counted as `incoming`. `transaction_confirmed` or \
            `transaction_cancelled` follows under its key (`transaction_id` and the first \
            leg's `from_account`).",
    },
    EventType {
        name: "transaction_refused",
        fields: &["transaction_id", "from_account", "reason"],
        optional: &["failed_leg"],
        description: "A participant other than the home refused a multi-leg transaction's Try: \
            leg `failed_leg` failed for `reason`; or, with no `failed_leg` and `reason` \
            `cancelled_before_try`, a cancel came before any Try (a later Try fails). Nothing \
            moved. `from_account` is the first leg's.",
    },
    EventType {
        name: "transaction_cancelling",
        fields: &["transaction_id", "from_account", "reason"],
        optional: &["failed_leg"],
        description: "At a multi-leg transaction's home: the decision to cancel it, because leg \
            `failed_leg` was refused for `reason`, or (no `failed_leg`) a participant did not \
            answer in time. Moves nothing by itself; `transaction_cancelled` follows at every \
            partition that tried it.",
    },
    EventType {
        name: "transaction_confirmed",
        fields: KEY,
        optional: &[],
        description: "The nets of the `transaction_tried` with this key became final at this \
            partition: each net debit left `held` for good, each net credit moved from \
            `incoming` to the balance. At the home, the commit of the whole transaction.",
    },
    EventType {
        name: "transaction_cancelled",
        fields: KEY,
        optional: &[],
        description: "The `transaction_tried` with this key was undone at this partition: each \
            net debit went back from `held` to the balance, each net credit was dropped from \
            `incoming`.",
    },
];

/// The account whose currency the line of `event` needs and the event does not carry.
pub fn currency_needed(event: &Event) -> Option<AccountId> {
    match event {
        Event::Deposited { account, .. } | Event::Withdrawn { account, .. } => Some(*account),
        Event::CashRefused(refused) => match refused.refusal {
            CashRefusal::InsufficientFunds | CashRefusal::BalanceLimit => Some(refused.account),
            CashRefusal::AccountNotFound | CashRefusal::CurrencyMismatch(_) => None,
        },
        _ => None,
    }
}

/// The line of `record`, or `None` when `currencies` lacks the account
/// [`currency_needed`] names.
pub fn line(record: &Record, currencies: &HashMap<AccountId, Currency>) -> Option<Value> {
    let (name, fields) = type_and_fields(record, currencies)?;
    let mut object = Map::new();
    object.insert("v".into(), json!(SCHEMA_VERSION));
    object.insert("lsn".into(), json!(record.lsn));
    object.insert(
        "timestamp".into(),
        json!(rfc3339::format_us(record.timestamp)),
    );
    object.insert("type".into(), json!(name));
    object.extend(fields);
    Some(Value::Object(object))
}

/// Appends the line of `record` to `out`, newline included, with `v`, `lsn`, `timestamp`
/// and `type` first (people read these lines too); `None` as for [`line`].
pub fn write_line(
    record: &Record,
    currencies: &HashMap<AccountId, Currency>,
    out: &mut Vec<u8>,
) -> Option<()> {
    let (name, fields) = type_and_fields(record, currencies)?;
    // A JSON string's `Display` is its quoted, escaped text; a type name needs no escaping.
    let timestamp = Value::from(rfc3339::format_us(record.timestamp));
    let head = format!(
        "{{\"v\":{SCHEMA_VERSION},\"lsn\":{},\"timestamp\":{timestamp},\"type\":\"{name}\"",
        record.lsn
    );
    out.extend_from_slice(head.as_bytes());
    for (field, value) in fields {
        out.push(b',');
        serde_json::to_writer(&mut *out, &field).expect("a string writes");
        out.push(b':');
        serde_json::to_writer(&mut *out, &value).expect("a JSON value writes");
    }
    out.extend_from_slice(b"}\n");
    Some(())
}

/// The `type` of `record`'s line and its own fields.
fn type_and_fields(
    record: &Record,
    currencies: &HashMap<AccountId, Currency>,
) -> Option<(&'static str, Map<String, Value>)> {
    let currency_of = |account: &AccountId| currencies.get(account).copied();
    let (name, fields) = match &record.event {
        Event::AccountOpened { account, currency } => (
            "account_opened",
            json!({"account_id": account.as_str(), "currency": currency.code()}),
        ),
        Event::Deposited {
            account,
            amount,
            transaction_id,
        }
        | Event::Withdrawn {
            account,
            amount,
            transaction_id,
        } => {
            let currency = currency_of(account)?;
            let name = match record.event {
                Event::Deposited { .. } => "deposited",
                _ => "withdrawn",
            };
            let mut fields = money(*amount, currency);
            fields["account_id"] = json!(account.as_str());
            fields["transaction_id"] = json!(transaction_id.as_str());
            (name, fields)
        }
        Event::CashRefused(refused) => ("cash_refused", cash_refused(refused, currency_of)?),
        Event::Transferred { transfer } => ("transferred", transfer_fields(transfer)),
        Event::TransferRejected { transfer, reason } => {
            let mut fields = transfer_fields(transfer);
            fields["reason"] = json!(reason.code());
            ("transfer_rejected", fields)
        }
        Event::DebitTried { transfer } => ("debit_tried", transfer_fields(transfer)),
        Event::TransferDecided { key, decision } => {
            let mut fields = key_fields(key);
            match decision {
                Decision::Confirm => fields["decision"] = json!("confirm"),
                Decision::Cancel(reason) => {
                    fields["decision"] = json!("cancel");
                    fields["reason"] = json!(reason.code());
                }
            }
            ("transfer_decided", fields)
        }
        Event::DebitConfirmed { key } => ("debit_confirmed", key_fields(key)),
        Event::DebitCancelled { key } => ("debit_cancelled", key_fields(key)),
        Event::CreditTried { transfer } => ("credit_tried", transfer_fields(transfer)),
        Event::CreditConfirmed { key } => ("credit_confirmed", key_fields(key)),
        Event::CreditCancelled { key } => ("credit_cancelled", key_fields(key)),
        Event::CreditTryNotSeen { key } => ("credit_try_not_seen", key_fields(key)),
        Event::RefundAccepted {
            refund,
            original,
            remote,
        } => {
            let mut fields = transfer_fields(refund);
            fields["refund_of"] = json!(original.as_str());
            fields["remote"] = json!(remote);
            ("refund_accepted", fields)
        }
        Event::RefundRejected {
            refund,
            original,
            reason,
        } => {
            let mut fields = transfer_fields(refund);
            fields["refund_of"] = json!(original.as_str());
            fields["reason"] = json!(reason.code());
            ("refund_rejected", fields)
        }
        Event::HoldPlaced {
            hold,
            expires_at,
            remote,
        } => {
            let mut fields = transfer_fields(hold);
            fields["expires_at"] = json!(rfc3339::format_us(*expires_at));
            fields["remote"] = json!(remote);
            ("hold_placed", fields)
        }
        Event::HoldEstablished { key } => ("hold_established", key_fields(key)),
        Event::HoldCaptured {
            hold,
            amount,
            remote,
        } => {
            let mut fields = transfer_fields(hold);
            fields["captured_amount"] = json!(amount.format(hold.currency));
            fields["remote"] = json!(remote);
            ("hold_captured", fields)
        }
        Event::HoldReleased {
            hold,
            reason,
            remote,
        } => {
            let mut fields = transfer_fields(hold);
            fields["reason"] = json!(reason.code());
            fields["remote"] = json!(remote);
            ("hold_released", fields)
        }
        // The event names no account of this partition, so no currency: the amount is
        // given in minor units, as `cash_refused` gives one whose currency is unknown.
        Event::CreditCaptured { key, amount } => {
            let mut fields = key_fields(key);
            fields["amount_minor"] = json!(amount.minor().to_string());
            ("credit_captured", fields)
        }
        Event::TransactionApplied { tx } => ("transaction_applied", transaction_fields(tx)),
        Event::TransactionRejected {
            tx,
            failed_leg,
            reason,
        } => {
            let mut fields = transaction_fields(tx);
            fields["reason"] = json!(reason.code());
            if let Some(leg) = failed_leg {
                fields["failed_leg"] = json!(leg);
            }
            ("transaction_rejected", fields)
        }
        Event::TransactionTried { tx } => ("transaction_tried", transaction_fields(tx)),
        Event::TransactionRefused {
            key,
            failed_leg,
            reason,
        } => (
            "transaction_refused",
            refusal_fields(key, *failed_leg, *reason),
        ),
        Event::TransactionCancelling {
            key,
            failed_leg,
            reason,
        } => (
            "transaction_cancelling",
            refusal_fields(key, *failed_leg, *reason),
        ),
        Event::TransactionConfirmed { key } => ("transaction_confirmed", key_fields(key)),
        Event::TransactionCancelled { key } => ("transaction_cancelled", key_fields(key)),
    };
    let Value::Object(fields) = fields else {
        unreachable!("the fields are an object")
    };
    Some((name, fields))
}

fn money(amount: Amount, currency: Currency) -> Value {
    json!({"amount": amount.format(currency), "currency": currency.code()})
}

fn transfer_fields(transfer: &Transfer) -> Value {
    let mut fields = money(transfer.amount, transfer.currency);
    fields["transaction_id"] = json!(transfer.transaction_id.as_str());
    fields["from_account"] = json!(transfer.from.as_str());
    fields["to_account"] = json!(transfer.to.as_str());
    fields
}

fn key_fields(key: &TransferKey) -> Value {
    json!({
        "transaction_id": key.transaction_id.as_str(),
        "from_account": key.from.as_str(),
    })
}

/// A multi-leg transaction's id and its legs, in its order (a `failed_leg` indexes them).
fn transaction_fields(tx: &Transaction) -> Value {
    let legs: Vec<Value> = tx
        .legs()
        .map(|leg| {
            let mut fields = money(leg.amount, leg.currency);
            fields["from_account"] = json!(leg.from.as_str());
            fields["to_account"] = json!(leg.to.as_str());
            fields
        })
        .collect();
    json!({"transaction_id": tx.transaction_id().as_str(), "legs": legs})
}

/// A multi-leg transaction's key, why it failed and, when one did, the leg that failed.
fn refusal_fields(key: &TransferKey, failed_leg: Option<u8>, reason: Reason) -> Value {
    let mut fields = key_fields(key);
    fields["reason"] = json!(reason.code());
    if let Some(leg) = failed_leg {
        fields["failed_leg"] = json!(leg);
    }
    fields
}

fn cash_refused(
    refused: &CashRefused,
    currency_of: impl Fn(&AccountId) -> Option<Currency>,
) -> Option<Value> {
    let (refusal, currency) = match refused.refusal {
        CashRefusal::AccountNotFound => ("account_not_found", None),
        CashRefusal::CurrencyMismatch(requested) => ("currency_mismatch", Some(requested)),
        CashRefusal::InsufficientFunds => {
            ("insufficient_funds", Some(currency_of(&refused.account)?))
        }
        CashRefusal::BalanceLimit => ("balance_limit", Some(currency_of(&refused.account)?)),
    };
    let mut fields = match currency {
        Some(currency) => money(refused.amount, currency),
        None => json!({"amount_minor": refused.amount.minor().to_string()}),
    };
    fields["account_id"] = json!(refused.account.as_str());
    fields["transaction_id"] = json!(refused.transaction_id.as_str());
    fields["kind"] = json!(match refused.kind {
        CashKind::Deposit => "deposit",
        CashKind::Withdrawal => "withdrawal",
    });
    fields["refusal"] = json!(refusal);
    Some(fields)
}

/// The values of the enumerated fields of the lines.
pub fn field_values(field: &str) -> Option<&'static [&'static str]> {
    Some(match field {
        "kind" => &["deposit", "withdrawal"],
        "refusal" => &[
            "account_not_found",
            "currency_mismatch",
            "insufficient_funds",
            "balance_limit",
        ],
        "decision" => &["confirm", "cancel"],
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use walletd_core::model::ids::TransactionId;
    use walletd_core::model::transaction::Leg;

    fn one_of_each() -> Vec<Event> {
        let a = AccountId::new("alice").unwrap();
        let b = AccountId::new("bob").unwrap();
        let t = TransactionId::new("t-1").unwrap();
        let amount = Amount::parse("12.34", Currency::USD).unwrap();
        let transfer = Transfer {
            transaction_id: t,
            from: a,
            to: b,
            amount,
            currency: Currency::USD,
        };
        let key = transfer.key();
        // Three legs: the first is the transfer's (so the transaction's key is its key), the
        // last in another currency.
        let carol = AccountId::new("carol").unwrap();
        let leg = |from, to, amount: &str, currency| Leg {
            from,
            to,
            amount: Amount::parse(amount, currency).unwrap(),
            currency,
        };
        let tx = Transaction::new(
            t,
            vec![
                leg(a, b, "12.34", Currency::USD),
                leg(b, carol, "2.00", Currency::USD),
                leg(carol, a, "7", Currency::JPY),
            ],
        )
        .unwrap();
        let refused = |refusal| {
            Event::CashRefused(CashRefused {
                account: a,
                transaction_id: t,
                kind: CashKind::Withdrawal,
                amount,
                refusal,
            })
        };
        // A match on every variant, so that a new event does not compile here until it has
        // a line and a row in the table.
        let events = vec![
            Event::AccountOpened {
                account: a,
                currency: Currency::USD,
            },
            Event::Deposited {
                account: a,
                amount,
                transaction_id: t,
            },
            Event::Withdrawn {
                account: a,
                amount,
                transaction_id: t,
            },
            refused(CashRefusal::AccountNotFound),
            refused(CashRefusal::CurrencyMismatch(Currency::EUR)),
            refused(CashRefusal::InsufficientFunds),
            refused(CashRefusal::BalanceLimit),
            Event::Transferred { transfer },
            Event::TransferRejected {
                transfer,
                reason: Reason::InsufficientFunds,
            },
            Event::DebitTried { transfer },
            Event::TransferDecided {
                key,
                decision: Decision::Confirm,
            },
            Event::TransferDecided {
                key,
                decision: Decision::Cancel(Reason::Timeout),
            },
            Event::DebitConfirmed { key },
            Event::DebitCancelled { key },
            Event::CreditTried { transfer },
            Event::CreditConfirmed { key },
            Event::CreditCancelled { key },
            Event::CreditTryNotSeen { key },
            Event::RefundAccepted {
                refund: transfer,
                original: t,
                remote: true,
            },
            Event::RefundRejected {
                refund: transfer,
                original: t,
                reason: Reason::RefundExceedsOriginal,
            },
            Event::HoldPlaced {
                hold: transfer,
                expires_at: 1_700_000_000_000_000,
                remote: false,
            },
            Event::HoldEstablished { key },
            Event::HoldCaptured {
                hold: transfer,
                amount: Amount::parse("10.00", Currency::USD).unwrap(),
                remote: true,
            },
            Event::HoldReleased {
                hold: transfer,
                reason: Reason::HoldExpired,
                remote: false,
            },
            Event::CreditCaptured {
                key,
                amount: Amount::parse("10.00", Currency::USD).unwrap(),
            },
            Event::TransactionApplied { tx: tx.clone() },
            Event::TransactionRejected {
                tx: tx.clone(),
                failed_leg: Some(2),
                reason: Reason::SourceCurrencyMismatch,
            },
            Event::TransactionTried { tx },
            Event::TransactionRefused {
                key,
                failed_leg: Some(1),
                reason: Reason::InsufficientFunds,
            },
            Event::TransactionRefused {
                key,
                failed_leg: None,
                reason: Reason::CancelledBeforeTry,
            },
            Event::TransactionCancelling {
                key,
                failed_leg: Some(1),
                reason: Reason::DestinationNotFound,
            },
            Event::TransactionCancelling {
                key,
                failed_leg: None,
                reason: Reason::Timeout,
            },
            Event::TransactionConfirmed { key },
            Event::TransactionCancelled { key },
        ];
        for event in &events {
            match event {
                Event::AccountOpened { .. }
                | Event::Deposited { .. }
                | Event::Withdrawn { .. }
                | Event::CashRefused(_)
                | Event::Transferred { .. }
                | Event::TransferRejected { .. }
                | Event::DebitTried { .. }
                | Event::TransferDecided { .. }
                | Event::DebitConfirmed { .. }
                | Event::DebitCancelled { .. }
                | Event::CreditTried { .. }
                | Event::CreditConfirmed { .. }
                | Event::CreditCancelled { .. }
                | Event::CreditTryNotSeen { .. }
                | Event::RefundAccepted { .. }
                | Event::RefundRejected { .. }
                | Event::HoldPlaced { .. }
                | Event::HoldEstablished { .. }
                | Event::HoldCaptured { .. }
                | Event::HoldReleased { .. }
                | Event::CreditCaptured { .. }
                | Event::TransactionApplied { .. }
                | Event::TransactionRejected { .. }
                | Event::TransactionTried { .. }
                | Event::TransactionRefused { .. }
                | Event::TransactionCancelling { .. }
                | Event::TransactionConfirmed { .. }
                | Event::TransactionCancelled { .. } => {}
            }
        }
        events
    }

    /// The `legs` of the transaction of [`one_of_each`]: amounts in each leg's currency.
    fn legs_of_one_of_each() -> Value {
        json!([
            {"from_account": "alice", "to_account": "bob", "amount": "12.34", "currency": "USD"},
            {"from_account": "bob", "to_account": "carol", "amount": "2.00", "currency": "USD"},
            {"from_account": "carol", "to_account": "alice", "amount": "7", "currency": "JPY"},
        ])
    }

    #[test]
    fn every_event_has_a_line_with_exactly_the_fields_of_its_type() {
        let currencies = HashMap::from([(AccountId::new("alice").unwrap(), Currency::USD)]);
        let mut seen = std::collections::BTreeSet::new();
        for (i, event) in one_of_each().into_iter().enumerate() {
            let names_a_leg = match &event {
                Event::TransactionRejected { failed_leg, .. }
                | Event::TransactionRefused { failed_leg, .. }
                | Event::TransactionCancelling { failed_leg, .. } => failed_leg.is_some(),
                _ => false,
            };
            let record = Record {
                lsn: i as u64 + 1,
                timestamp: 1_700_000_000_000_000,
                event,
            };
            let line = line(&record, &currencies).expect("currencies known");
            assert_eq!(line["v"], SCHEMA_VERSION);
            assert_eq!(line["lsn"], i as u64 + 1);
            assert_eq!(line["timestamp"], "2023-11-14T22:13:20.000000Z");
            let name = line["type"].as_str().unwrap();
            let row = EVENT_TYPES.iter().find(|t| t.name == name).expect(name);
            seen.insert(row.name);
            let object = line.as_object().unwrap();
            for field in row.fields {
                assert!(object.contains_key(*field), "{name} lacks {field}: {line}");
            }
            for (field, value) in object {
                let common = ["v", "lsn", "timestamp", "type"].contains(&field.as_str());
                let listed =
                    row.fields.contains(&field.as_str()) || row.optional.contains(&field.as_str());
                assert!(common || listed, "{name} has unlisted {field}: {line}");
                if let Some(values) = field_values(field) {
                    assert!(values.contains(&value.as_str().unwrap()), "{line}");
                }
                if field == "amount" {
                    assert_eq!(value, "12.34");
                }
                if field == "legs" {
                    assert_eq!(value, &legs_of_one_of_each(), "{line}");
                }
                if field == "failed_leg" {
                    let leg = value.as_u64().expect("an index");
                    assert!(leg < 3, "{line}");
                }
            }
            // A failed leg is on a line exactly when its event names one.
            assert_eq!(object.contains_key("failed_leg"), names_a_leg, "{line}");
        }
        assert_eq!(seen.len(), EVENT_TYPES.len(), "every type is written");
    }

    #[test]
    fn a_written_line_is_the_line_with_its_head_first() {
        let currencies = HashMap::from([(AccountId::new("alice").unwrap(), Currency::USD)]);
        for (i, event) in one_of_each().into_iter().enumerate() {
            let record = Record {
                lsn: i as u64 + 1,
                timestamp: 1_700_000_000_000_000,
                event,
            };
            let mut out = Vec::new();
            write_line(&record, &currencies, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.starts_with(&format!("{{\"v\":{SCHEMA_VERSION},\"lsn\":{},", i + 1)),
                "{text}"
            );
            assert_eq!(text.matches('\n').count(), 1);
            let parsed: Value = serde_json::from_str(text.trim_end()).unwrap();
            assert_eq!(parsed, line(&record, &currencies).unwrap());
        }
    }

    #[test]
    fn a_line_that_needs_an_unknown_currency_is_not_guessed() {
        let record = Record {
            lsn: 1,
            timestamp: 0,
            event: one_of_each().swap_remove(1),
        };
        assert_eq!(currency_needed(&record.event).unwrap().as_str(), "alice");
        assert!(line(&record, &HashMap::new()).is_none());
    }
}
