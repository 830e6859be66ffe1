//! What the document says a request may hold: every field's type, pattern, length and
//! values, derived from the rules the server enforces (`walletd_core::model::ids`, `money`,
//! [`crate::rfc3339`], the history page bounds) so the two cannot be changed apart; the
//! contract test in `tests.rs` sends what this describes and checks the server agrees.
//!
//! An amount's grammar depends on its currency (USD has two fraction digits, JPY none), so a
//! body with an amount is a `oneOf`, one branch per number of fraction digits, each with the
//! currencies that have it and the amount pattern they accept.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use walletd_core::ledger::HOLD_EXPIRES_IN_MS_MAX;
use walletd_core::model::ids::ID_LEN_MAX;
use walletd_core::model::money::{Currency, AMOUNT_MINOR_MAX, AMOUNT_TEXT_LEN_MAX};
use walletd_core::model::transaction::LEGS_MAX;

use super::schema_ref;
use crate::api::events::{FEED_LIMIT_DEFAULT, FEED_LIMIT_MAX};
use crate::api::queries::HISTORY_LIMIT_MAX;
use crate::api::ApiOptions;

/// The characters of account and transaction ids, as a regex class (`ids.rs`).
const ID_CHARACTERS: &str = "A-Za-z0-9._:-";

/// Longest `as_of` text the parser reads.
const AS_OF_LEN_MAX: usize = crate::rfc3339::TEXT_LEN_MAX;

/// The component schemas of request fields and bodies, by name.
pub fn schemas(options: &ApiOptions) -> Vec<(String, Value)> {
    let mut schemas = vec![
        ("AccountId".to_string(), id_schema("An account id", "alice")),
        (
            "TransactionId".to_string(),
            id_schema("A client-chosen idempotency key", "t-0001"),
        ),
        ("Currency".to_string(), currency_schema(Currency::ALL)),
        ("Lsn".to_string(), lsn_schema()),
    ];
    for (digits, currencies) in currencies_by_digits() {
        schemas.push((amount_name(digits), amount_schema(digits)));
        schemas.push((currency_name(digits), currency_schema(&currencies)));
    }
    schemas.push(("OpenAccountRequest".into(), open_account_request()));
    schemas.push(("CashRequest".into(), money_request(&["transaction_id"])));
    schemas.push((
        "TransferRequest".into(),
        money_request(&["from_account", "to_account", "transaction_id"]),
    ));
    schemas.push(("RefundRequest".into(), refund_request()));
    schemas.push(("HoldRequest".into(), hold_request()));
    schemas.push(("CaptureRequest".into(), capture_request()));
    schemas.push(("LegRequest".into(), leg_request()));
    schemas.push(("TransactionRequest".into(), transaction_request()));
    schemas.push((
        "BatchRequest".into(),
        batch_request(options.batch_items_max),
    ));
    schemas
}

/// The currencies the server accepts, grouped by their number of fraction digits.
pub fn currencies_by_digits() -> BTreeMap<u32, Vec<Currency>> {
    let mut groups: BTreeMap<u32, Vec<Currency>> = BTreeMap::new();
    for &currency in Currency::ALL {
        groups
            .entry(currency.minor_units())
            .or_default()
            .push(currency);
    }
    groups
}

fn amount_name(digits: u32) -> String {
    format!("AmountWith{digits}FractionDigits")
}

fn currency_name(digits: u32) -> String {
    format!("CurrencyWith{digits}FractionDigits")
}

fn id_schema(what: &str, example: &str) -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": ID_LEN_MAX,
        "pattern": format!("^[{ID_CHARACTERS}]{{1,{ID_LEN_MAX}}}$"),
        "description": format!("{what}: 1 to {ID_LEN_MAX} ASCII letters, digits and `.` `_` `:` `-`. \
            In a path, `.` and `..` are resolved away by clients and reach another route."),
        "examples": [example],
    })
}

fn currency_schema(currencies: &[Currency]) -> Value {
    let codes: Vec<&str> = currencies.iter().map(|c| c.code()).collect();
    json!({
        "type": "string",
        "enum": codes,
        "description": "An ISO 4217 code the server knows the minor units of (upper case).",
    })
}

/// Log positions are `u64`.
fn lsn_schema() -> Value {
    json!({
        "type": "integer",
        "minimum": 0,
        "maximum": u64::MAX,
        "description": "A position in a partition's log.",
    })
}

/// The exact grammar of `Amount::parse` for a currency with `digits` fraction digits: a
/// plain decimal without sign, exponent, spaces or leading zero, at most `digits` fraction
/// digits, above zero and at most `AMOUNT_MINOR_MAX` minor units.
pub fn amount_pattern(digits: u32) -> String {
    let max_exponent = AMOUNT_MINOR_MAX.ilog10();
    assert_eq!(
        10u64.pow(max_exponent),
        AMOUNT_MINOR_MAX,
        "the pattern spells the largest amount as a 1 and zeros"
    );
    assert!(digits <= max_exponent);
    // Whole units below the largest amount, then the largest amount itself.
    let whole_zeros = (max_exponent - digits) as usize;
    let mut branches = vec![format!("[1-9][0-9]{{0,{}}}", whole_zeros - 1)];
    let max_whole = format!("1{}", "0".repeat(whole_zeros));
    if digits == 0 {
        branches.push(max_whole);
        return format!("^({})$", branches.join("|"));
    }
    branches[0].push_str(&format!("(\\.[0-9]{{1,{digits}}})?"));
    branches.push(format!("{max_whole}(\\.0{{1,{digits}}})?"));
    // Below one unit: a fraction that is not all zeros, by its count of leading zeros.
    let fractions: Vec<String> = (0..digits)
        .map(|zeros| {
            let rest = digits - 1 - zeros;
            let tail = if rest == 0 {
                String::new()
            } else {
                format!("[0-9]{{0,{rest}}}")
            };
            format!("{}[1-9]{tail}", "0".repeat(zeros as usize))
        })
        .collect();
    branches.push(format!("0\\.({})", fractions.join("|")));
    format!("^({})$", branches.join("|"))
}

fn amount_schema(digits: u32) -> Value {
    let whole_digits = (AMOUNT_MINOR_MAX.ilog10() - digits) as usize + 1;
    let length_max = if digits == 0 {
        whole_digits
    } else {
        whole_digits + 1 + digits as usize
    };
    debug_assert!(length_max <= AMOUNT_TEXT_LEN_MAX);
    let example = if digits == 0 {
        "500".to_string()
    } else {
        format!("12.{}", "3".repeat(digits as usize))
    };
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": length_max,
        "pattern": amount_pattern(digits),
        "description": format!("A positive decimal string with at most {digits} fraction digits, \
            no sign, exponent, spaces or leading zero, at most {AMOUNT_MINOR_MAX} minor units."),
        "examples": [example],
    })
}

fn open_account_request() -> Value {
    json!({
        "type": "object",
        "required": ["account_id", "currency"],
        "properties": {
            "account_id": schema_ref("AccountId"),
            "currency": schema_ref("Currency"),
        },
        "description": "Opens an account in one currency. Other fields are ignored.",
    })
}

/// A refund: its id and, optionally, an amount in the original's currency, whose grammar
/// the body cannot know: any amount of the most fraction digits a currency has, which the
/// original's currency then checks (`400 invalid_amount` past its digits).
fn refund_request() -> Value {
    let most = *currencies_by_digits().keys().last().expect("currencies");
    json!({
        "type": "object",
        "required": ["refund_id"],
        "properties": {
            "refund_id": schema_ref("TransactionId"),
            "amount": {
                "$ref": format!("#/components/schemas/{}", amount_name(most)),
                "description": "In the refunded transfer's currency, with at most its fraction \
                    digits; absent: all that is left to refund.",
            },
        },
        "description": "Refunds a committed transfer. Other fields are ignored.",
    })
}

/// A hold: a transfer's fields and how long it stays held.
fn hold_request() -> Value {
    let mut schema = money_request(&["from_account", "to_account", "transaction_id"]);
    for branch in schema["oneOf"].as_array_mut().expect("branches") {
        branch["properties"]["expires_in_ms"] = json!({
            "type": "integer",
            "minimum": 1,
            "maximum": HOLD_EXPIRES_IN_MS_MAX,
            "description": format!("How long the hold stays held, in milliseconds from when \
                its home records it: 1 to {HOLD_EXPIRES_IN_MS_MAX} (30 days); another value, \
                or none, is `400 invalid_expires_in_ms`."),
            "examples": [600000],
        });
        branch["required"]
            .as_array_mut()
            .expect("required")
            .push(json!("expires_in_ms"));
    }
    schema["description"] = json!(
        "Places a hold. The amount's grammar depends on the \
        currency; other fields are ignored."
    );
    schema
}

/// A capture: optionally an amount in the hold's currency, whose grammar the body cannot
/// know (as for a refund).
fn capture_request() -> Value {
    let most = *currencies_by_digits().keys().last().expect("currencies");
    json!({
        "type": "object",
        "properties": {
            "amount": {
                "$ref": format!("#/components/schemas/{}", amount_name(most)),
                "description": "In the hold's currency, with at most its fraction digits; \
                    absent: all of the hold.",
            },
        },
        "description": "Captures a hold, all of it or `amount` of it. The body may be left \
            out (all of it). Other fields are ignored.",
    })
}

/// A body with an amount and a currency besides the `ids` fields (each an account id, or the
/// transaction id): one branch per number of fraction digits.
fn money_request(ids: &[&str]) -> Value {
    let branches: Vec<Value> = currencies_by_digits()
        .into_keys()
        .map(|digits| {
            let mut properties = serde_json::Map::new();
            for &field in ids {
                let id = if field == "transaction_id" {
                    "TransactionId"
                } else {
                    "AccountId"
                };
                properties.insert(field.into(), schema_ref(id));
            }
            properties.insert("amount".into(), schema_ref(&amount_name(digits)));
            properties.insert("currency".into(), schema_ref(&currency_name(digits)));
            let mut required: Vec<&str> = ids.to_vec();
            required.extend(["amount", "currency"]);
            json!({
                "type": "object",
                "title": format!("in a currency with {digits} fraction digits"),
                "required": required,
                "properties": properties,
            })
        })
        .collect();
    json!({
        "oneOf": branches,
        "description": "The amount's grammar depends on the currency; other fields are ignored.",
    })
}

/// One leg of a transaction: a transfer's fields but its id.
fn leg_request() -> Value {
    let mut schema = money_request(&["from_account", "to_account"]);
    schema["description"] = json!(
        "One leg: `amount` of `currency` from `from_account` to `to_account` (not the same \
        account). The amount's grammar depends on the currency; other fields are ignored."
    );
    schema
}

fn transaction_request() -> Value {
    json!({
        "type": "object",
        "required": ["transaction_id", "legs"],
        "properties": {
            "transaction_id": schema_ref("TransactionId"),
            "legs": {
                "type": "array",
                "minItems": 1,
                "maxItems": LEGS_MAX,
                "items": schema_ref("LegRequest"),
                "description": format!("1 to {LEGS_MAX} legs (none: `400 no_legs`; more: \
                    `400 too_many_legs`), none from an account to itself (`422 \
                    leg_to_itself`). All commit or none does; an account's legs are checked \
                    together (its net debit must fit its available balance), and one \
                    account's legs out, or in, sum to at most the largest amount (`422 \
                    leg_total_too_large`)."),
            },
        },
        "description": "A multi-leg transaction, identified by its first leg's `from_account` \
            and `transaction_id`. Other fields are ignored.",
    })
}

fn batch_request(items_max: usize) -> Value {
    json!({
        "type": "object",
        "required": ["transfers"],
        "properties": {
            "transfers": {
                "type": "array",
                "maxItems": items_max,
                "items": schema_ref("TransferRequest"),
                "description": format!("At most {items_max} transfers (`--batch-items-max`; \
                    more is `413 batch_too_large`). An item that is not a valid transfer does \
                    not fail the batch: its result is an error with the status it would have \
                    had alone."),
            }
        },
    })
}

/// The parameters of the operation `method path` on a server with `options` and
/// `partitions`, or `None` when it has none.
pub fn parameters(
    method: &str,
    path: &str,
    options: &ApiOptions,
    partitions: u32,
) -> Option<Vec<Value>> {
    let account = |name: &str, description: &str| path_parameter(name, "AccountId", description);
    Some(match (method, path) {
        ("post", "/v1/accounts/{id}/deposit") | ("post", "/v1/accounts/{id}/withdraw") => {
            vec![account("id", "The account"), dry_run_parameter()]
        }
        ("post", "/v1/wallet/balance_transfer") | ("post", "/v1/wallet/balance_transfers") => {
            vec![dry_run_parameter()]
        }
        ("get", "/v1/accounts/{id}/balance") => vec![
            account("id", "The account"),
            currency_parameter(),
            json!({
                // An object spread into its fields (`style: form`, `explode`): the one way to
                // say that `as_of_lsn` and `as_of` do not go together.
                "name": "past",
                "in": "query",
                "required": false,
                "style": "form",
                "explode": true,
                "description": "A past balance: after the partition's log record `as_of_lsn`, \
                    or at the RFC 3339 instant `as_of` (before 1970 nothing existed). At most \
                    one of the two; neither is the balance now.",
                "schema": {
                    "type": "object",
                    "not": {"required": ["as_of_lsn", "as_of"]},
                    "properties": {
                        "as_of_lsn": schema_ref("Lsn"),
                        "as_of": {
                            "type": "string",
                            "format": "date-time",
                            "maxLength": AS_OF_LEN_MAX,
                            "examples": ["2024-05-01T12:00:00Z"],
                        },
                    },
                },
            }),
        ],
        ("get", "/v1/accounts/{id}/history") => vec![
            account("id", "The account"),
            currency_parameter(),
            json!({
                "name": "limit",
                "in": "query",
                "required": false,
                "description": "Movements per page.",
                "schema": {"type": "integer", "minimum": 1, "maximum": HISTORY_LIMIT_MAX, "default": 50},
            }),
            json!({
                "name": "before_lsn",
                "in": "query",
                "required": false,
                "description": "Only movements with a smaller lsn: the previous page's `next_before_lsn`.",
                "schema": schema_ref("Lsn"),
            }),
        ],
        ("get", "/v1/events") => feed_parameters(options, partitions),
        ("get", "/v1/transfers/{from_account}/{transaction_id}") => vec![
            account("from_account", "The transfer's source account"),
            path_parameter("transaction_id", "TransactionId", "The transfer's id"),
        ],
        ("post", "/v1/wallet/holds") | ("post", "/v1/wallet/transactions") => {
            vec![dry_run_parameter()]
        }
        ("post", "/v1/transfers/{from_account}/{transaction_id}/capture")
        | ("post", "/v1/transfers/{from_account}/{transaction_id}/void") => vec![
            account("from_account", "The hold's source account"),
            path_parameter("transaction_id", "TransactionId", "The hold's id"),
            dry_run_parameter(),
        ],
        ("post", "/v1/transfers/{from_account}/{transaction_id}/refund") => vec![
            account(
                "from_account",
                "The source account of the transfer to refund",
            ),
            path_parameter(
                "transaction_id",
                "TransactionId",
                "The id of the transfer to refund",
            ),
            dry_run_parameter(),
        ],
        _ => return None,
    })
}

/// `dry_run` of a write endpoint (see `api::dry_run`).
pub fn dry_run_parameter() -> Value {
    json!({
        "name": "dry_run",
        "in": "query",
        "required": false,
        "description": "`true`: answer what the request would get now (the same status, body \
            and `code`, with `\"dry_run\": true` in a success's body) and record nothing: no \
            money moves and the `transaction_id` stays free.",
        "schema": {"type": "boolean", "default": false},
    })
}

/// The event feed's query: which partition, from where, how much, how long to wait.
fn feed_parameters(options: &ApiOptions, partitions: u32) -> Vec<Value> {
    let wait_ms_max = options.feed_wait_max.as_millis() as u64;
    vec![
        json!({
            "name": "partition",
            "in": "query",
            "required": true,
            "description": format!("The partition whose log to read: this server has {partitions} \
                (another is `400 unknown_partition`)."),
            "schema": {"type": "integer", "minimum": 0, "maximum": partitions - 1},
        }),
        json!({
            "name": "after_lsn",
            "in": "query",
            "required": false,
            "description": "Only records with a larger lsn: the lsn of the last line the \
                consumer read (default 0: from the first record). Past the partition's last \
                durable lsn is `409 lsn_out_of_range`; equal to it, the request waits for \
                the next record.",
            "schema": schema_ref("Lsn"),
        }),
        json!({
            "name": "limit",
            "in": "query",
            "required": false,
            "description": "Most records in the answer.",
            "schema": {"type": "integer", "minimum": 1, "maximum": FEED_LIMIT_MAX, "default": FEED_LIMIT_DEFAULT},
        }),
        json!({
            "name": "wait_ms",
            "in": "query",
            "required": false,
            "description": format!("When no record follows `after_lsn` yet, how long to wait \
                for one, in ms; the answer leaves as soon as one is durable, or empty at the \
                end of the wait. At most {wait_ms_max} (`--feed-wait-max-ms`)."),
            "schema": {"type": "integer", "minimum": 0, "maximum": wait_ms_max, "default": 0},
        }),
    ]
}

fn path_parameter(name: &str, schema: &str, description: &str) -> Value {
    json!({
        "name": name,
        "in": "path",
        "required": true,
        "description": description,
        "schema": schema_ref(schema),
    })
}

fn currency_parameter() -> Value {
    json!({
        "name": "currency",
        "in": "query",
        "required": false,
        "description": "The account's currency; another one is `422 currency_mismatch`.",
        "schema": schema_ref("Currency"),
    })
}
