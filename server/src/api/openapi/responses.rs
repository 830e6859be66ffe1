//! What the document says each operation answers: every status it can return, and for an
//! error the `code`s that status carries (the mapping itself is `crate::errors`).
//!
//! The errors of an operation are its own (a missing account, a conflict) plus those every
//! `/v1` operation shares because a layer produces them: the bearer token (when the server
//! has one), the in-flight limit, the request time limit, the memory limit and body limit of
//! writes, and a JSON body that does not parse.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::schema_ref;
use crate::api::ApiOptions;

/// The errors an operation returns besides the shared ones: status and codes.
fn own_errors(method: &str, path: &str) -> Vec<(u16, &'static [&'static str])> {
    const ACCOUNT_PATH: (u16, &[&str]) = (400, &["invalid_field", "invalid_account_id"]);
    // A path whose id is empty, `.` or `..` reaches no route (clients resolve dot segments).
    const NO_ROUTE: &[&str] = &["not_found"];
    const ENGINE: (u16, &[&str]) = (503, &["partition_unavailable", "wrong_partition"]);
    const LOG: [(u16, &[&str]); 2] = [(500, &["log_unreadable"]), (503, &["history_unavailable"])];
    // A transfer row the partition keeps on disk only, which it could not read back.
    const STORED: (u16, &[&str]) = (500, &["transfers_unreadable"]);
    match (method, path) {
        ("post", "/v1/accounts") => vec![
            (400, &["invalid_account_id", "invalid_currency"][..]),
            (409, &["account_exists"]),
            ENGINE,
        ],
        ("post", "/v1/accounts/{id}/deposit") => vec![
            ACCOUNT_PATH,
            (
                400,
                &[
                    "invalid_currency",
                    "invalid_amount",
                    "invalid_transaction_id",
                    "invalid_query",
                ],
            ),
            (404, &["account_not_found"]),
            (404, NO_ROUTE),
            (409, &["transaction_conflict"]),
            (422, &["currency_mismatch", "balance_limit"]),
            ENGINE,
        ],
        ("post", "/v1/accounts/{id}/withdraw") => vec![
            ACCOUNT_PATH,
            (
                400,
                &[
                    "invalid_currency",
                    "invalid_amount",
                    "invalid_transaction_id",
                    "invalid_query",
                ],
            ),
            (404, &["account_not_found"]),
            (404, NO_ROUTE),
            (409, &["transaction_conflict"]),
            (422, &["insufficient_funds", "currency_mismatch"]),
            ENGINE,
        ],
        ("get", "/v1/accounts/{id}/balance") | ("get", "/v1/accounts/{id}/history") => vec![
            ACCOUNT_PATH,
            (400, &["invalid_currency", "invalid_query"]),
            (404, &["account_not_found"]),
            (404, NO_ROUTE),
            (422, &["currency_mismatch"]),
            ENGINE,
            LOG[0],
            LOG[1],
        ],
        ("post", "/v1/wallet/balance_transfer") => vec![
            (
                400,
                &[
                    "invalid_account_id",
                    "invalid_currency",
                    "invalid_amount",
                    "invalid_transaction_id",
                    "invalid_query",
                ],
            ),
            (404, &["account_not_found"]),
            (409, &["transaction_conflict"]),
            (422, TRANSFER_REFUSALS),
            (503, &["timeout"]),
            ENGINE,
            STORED,
        ],
        ("post", "/v1/wallet/balance_transfers") => {
            vec![(400, &["invalid_query"]), (413, &["batch_too_large"])]
        }
        ("get", "/v1/events") => vec![
            (400, &["invalid_query", "unknown_partition"][..]),
            (409, &["lsn_out_of_range"]),
            (410, &["feed_compacted"]),
            (421, &["partition_not_local"]),
            (503, &["partition_unavailable"]),
            LOG[0],
            LOG[1],
        ],
        ("post", "/v1/transfers/{from_account}/{transaction_id}/refund") => vec![
            ACCOUNT_PATH,
            (
                400,
                &["invalid_transaction_id", "invalid_amount", "invalid_query"],
            ),
            (404, &["transfer_not_found"]),
            (404, NO_ROUTE),
            (409, &["transaction_conflict", "transfer_not_refundable"]),
            (
                422,
                &[
                    "refund_exceeds_original",
                    "insufficient_funds",
                    "balance_limit",
                ],
            ),
            (503, &["timeout"]),
            ENGINE,
            STORED,
        ],
        ("post", "/v1/wallet/holds") => vec![
            (
                400,
                &[
                    "invalid_account_id",
                    "invalid_currency",
                    "invalid_amount",
                    "invalid_transaction_id",
                    "invalid_expires_in_ms",
                    "invalid_query",
                ],
            ),
            (404, &["account_not_found"]),
            (409, &["transaction_conflict"]),
            (422, TRANSFER_REFUSALS),
            (429, &["too_many_holds"]),
            (503, &["timeout"]),
            ENGINE,
            STORED,
        ],
        ("post", "/v1/wallet/transactions") => vec![
            (
                400,
                &[
                    "invalid_account_id",
                    "invalid_currency",
                    "invalid_amount",
                    "invalid_transaction_id",
                    "no_legs",
                    "too_many_legs",
                    "invalid_query",
                ],
            ),
            (404, &["account_not_found"]),
            (409, &["transaction_conflict"]),
            (422, TRANSFER_REFUSALS),
            (422, &["leg_to_itself", "leg_total_too_large"]),
            (503, &["timeout"]),
            ENGINE,
            STORED,
        ],
        ("post", "/v1/transfers/{from_account}/{transaction_id}/capture") => vec![
            ACCOUNT_PATH,
            (
                400,
                &["invalid_transaction_id", "invalid_amount", "invalid_query"],
            ),
            (404, &["transfer_not_found"]),
            (404, NO_ROUTE),
            (409, HOLD_NOT_CAPTURABLE),
            (422, &["capture_exceeds_hold"]),
            (503, &["hold_being_placed"]),
            ENGINE,
            STORED,
        ],
        ("post", "/v1/transfers/{from_account}/{transaction_id}/void") => vec![
            ACCOUNT_PATH,
            (400, &["invalid_transaction_id", "invalid_query"]),
            (404, &["transfer_not_found"]),
            (404, NO_ROUTE),
            (409, HOLD_NOT_VOIDABLE),
            (503, &["hold_being_placed"]),
            ENGINE,
            STORED,
        ],
        ("get", "/v1/transfers/{from_account}/{transaction_id}") => vec![
            ACCOUNT_PATH,
            (400, &["invalid_transaction_id"]),
            (404, &["transfer_not_found"]),
            (404, NO_ROUTE),
            ENGINE,
            STORED,
        ],
        _ => Vec::new(),
    }
}

/// Why a capture is refused with 409: no hold, never held, or already ended otherwise.
const HOLD_NOT_CAPTURABLE: &[&str] = &[
    "not_a_hold",
    "hold_not_held",
    "hold_already_captured",
    "hold_voided",
    "hold_expired",
];

/// Why a void is refused with 409.
const HOLD_NOT_VOIDABLE: &[&str] = &[
    "not_a_hold",
    "hold_not_held",
    "hold_captured",
    "hold_expired",
];

/// Why a transfer can be refused with 422, as `Reason::code` spells it.
const TRANSFER_REFUSALS: &[&str] = &[
    "insufficient_funds",
    "currency_mismatch",
    "balance_limit",
    "same_account",
    "cancelled_before_try",
];

/// The errors every `/v1` operation shares, as the layers in front of the handlers produce them.
fn shared_errors(method: &str, options: &ApiOptions) -> Vec<(u16, &'static [&'static str])> {
    let mut errors = vec![
        (429, &["overloaded"][..]),
        (500, &["internal_error"]),
        (503, &["request_timeout"]),
    ];
    if options.api_token.is_some() {
        errors.push((401, &["unauthorized"]));
    }
    if method == "post" {
        errors.extend([
            (400, &["malformed_json", "invalid_field"][..]),
            (413, &["body_too_large"]),
            (503, &["memory_limit"]),
        ]);
    }
    errors
}

/// Every error response of `method path`: status → codes.
pub fn errors_of(
    method: &str,
    path: &str,
    options: &ApiOptions,
) -> BTreeMap<u16, BTreeSet<&'static str>> {
    let mut by_status: BTreeMap<u16, BTreeSet<&'static str>> = BTreeMap::new();
    let shared = if path.starts_with("/v1/") {
        shared_errors(method, options)
    } else {
        Vec::new()
    };
    for (status, codes) in own_errors(method, path).into_iter().chain(shared) {
        by_status.entry(status).or_default().extend(codes);
    }
    by_status
}

/// The error responses of `method path`, as OpenAPI response objects by status.
pub fn error_responses(method: &str, path: &str, options: &ApiOptions) -> Vec<(u16, Value)> {
    // A transfer refused by the ledger answers with the transfer's outcome (`rejected` or
    // `cancelled` with its code), which is also what those statuses carry; so does a hold,
    // and a capture or void that found the hold ended otherwise.
    let (outcome, outcome_statuses): (&str, &[u16]) = match path {
        "/v1/wallet/balance_transfer" => ("TransferResponse", &[404, 422, 503]),
        "/v1/wallet/holds" => ("HoldResponse", &[404, 422, 503]),
        "/v1/wallet/transactions" => ("TransactionResponse", &[404, 422, 503]),
        p if p.ends_with("/capture") || p.ends_with("/void") => ("HoldResponse", &[409]),
        _ => ("", &[]),
    };
    errors_of(method, path, options)
        .into_iter()
        .map(|(status, codes)| {
            let codes: Vec<&str> = codes.into_iter().collect();
            let error = json!({
                "allOf": [schema_ref("ErrorBody")],
                "properties": {"code": {"type": "string", "enum": codes}},
            });
            let schema = if outcome_statuses.contains(&status) {
                json!({"anyOf": [schema_ref(outcome), error]})
            } else {
                error
            };
            let list: Vec<String> = codes.iter().map(|c| format!("`{c}`")).collect();
            let mut response = json!({
                "description": list.join(", "),
                "content": {"application/json": {"schema": schema}},
            });
            if let Some(headers) = error_headers(status, path) {
                response["headers"] = headers;
            }
            (status, response)
        })
        .collect()
}

/// Headers an error status always (or, for a transfer's final `503 timeout`, sometimes) carries.
fn error_headers(status: u16, path: &str) -> Option<Value> {
    match status {
        401 => Some(json!({"WWW-Authenticate": {
            "required": true,
            "description": "`Bearer`",
            "schema": {"type": "string"},
        }})),
        410 => Some(json!({"First-Lsn": {
            "required": true,
            "description": "The first lsn the partition's log still holds.",
            "schema": schema_ref("Lsn"),
        }})),
        503 => Some(json!({"Retry-After": {
            // A transfer (or hold) cancelled for `timeout` is final: no retry to wait for.
            "required": !matches!(
                path,
                "/v1/wallet/balance_transfer" | "/v1/wallet/holds" | "/v1/wallet/transactions"
            ),
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "string"},
        }})),
        _ => None,
    }
}

/// The values of the enumerated fields of the response schemas.
pub fn enumerations() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    let outcomes = vec!["committed", "pending", "rejected", "cancelled"];
    let mut item_outcomes = outcomes.clone();
    item_outcomes.push("error");
    let hold_ends = ["held", "captured", "voided", "expired"];
    let hold_outcomes = ["pending", "rejected", "cancelled"]
        .iter()
        .chain(&hold_ends);
    let mut hold_codes = TRANSFER_CODES.to_vec();
    hold_codes.push("hold_captured");
    vec![
        ("TransferResponse", "status", outcomes.clone()),
        ("TransferResponse", "code", TRANSFER_CODES.to_vec()),
        ("HoldResponse", "status", hold_outcomes.copied().collect()),
        ("HoldResponse", "code", hold_codes),
        (
            "TransferStatusResponse",
            "status",
            outcomes.iter().chain(&hold_ends).copied().collect(),
        ),
        ("TransferStatusResponse", "code", TRANSFER_CODES.to_vec()),
        (
            "TransferStatusResponse",
            "phase",
            vec![
                "trying",
                "confirming",
                "cancelling",
                "committed",
                "cancelled",
                "rejected",
                "held",
                "captured",
            ],
        ),
        ("BatchItemResult", "status", item_outcomes),
        (
            "MovementView",
            "kind",
            vec![
                "deposit",
                "withdrawal",
                "transfer_out",
                "transfer_in",
                "hold",
                "hold_captured",
                "hold_released",
                "credit_in",
            ],
        ),
    ]
}

/// Every `Reason::code`: why a transfer was rejected or cancelled.
const TRANSFER_CODES: &[&str] = &[
    "insufficient_funds",
    "account_not_found",
    "currency_mismatch",
    "balance_limit",
    "timeout",
    "cancelled_before_try",
    "same_account",
    "refund_exceeds_original",
    "hold_voided",
    "hold_expired",
];

#[cfg(test)]
mod tests {
    use walletd_core::model::event::Reason;

    use super::TRANSFER_CODES;

    #[test]
    fn every_reason_code_is_documented() {
        for reason in Reason::ALL {
            assert!(TRANSFER_CODES.contains(&reason.code()), "{reason:?}");
        }
    }
}
