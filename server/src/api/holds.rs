//! Holds: `POST /v1/wallet/holds` places one, `POST /v1/transfers/{from}/{id}/capture` and
//! `.../void` end it; `GET /v1/transfers/{from}/{id}` reads it as it reads a transfer.
//!
//! A hold is a transfer whose second step the client takes (see
//! `walletd_core::ledger::holds`): placing it moves the amount out of the source's
//! available balance into `held`; a capture sends all or part of it to the destination and
//! gives the rest back; a void, or its expiry by the home's clock, gives everything back.
//! Every end is decided at the hold's home (the source's partition), one command after
//! another, so a hold ends exactly once however captures, voids and its expiry race, and
//! every later capture or void is answered with that end.
//!
//! Placing a hold is answered like a transfer: `held`, `pending` with the URL to poll (a
//! hold across partitions is held once its destination has tried the credit, as a
//! transfer commits), or refused with a code, the same answer for every retry of its
//! `transaction_id`. A capture or void is answered with the hold's status after it: `200`
//! when it is the end asked for, `409` with the end it already had (`hold_captured`,
//! `hold_voided`, `hold_expired`).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;
use utoipa::ToSchema;
use walletd_core::ledger::{
    Command, Hold, HoldEnd, HoldTerms, Reply, TransferRow, TransferStatus, HOLD_EXPIRES_IN_MS_MAX,
};
use walletd_core::model::event::{Reason, TransferKey};
use walletd_core::model::money::{format_minor, Amount, Currency, WrittenAmount};
use walletd_runtime::driver::{Query, QueryAnswer};

use super::dry_run::{self, WriteParams};
use super::transfers::{
    counted, execute_started, parse_transfer_fields, status_url, status_view, TransferFields,
    TransferStatusResponse,
};
use super::{account_id, is_json_content_type, parse_json, transaction_id, Api, ApiJson};
use super::{ApiPath, ApiQuery};
use crate::errors::ApiError;
use crate::rfc3339;

/// A hold: a transfer that waits for its capture.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct HoldRequest {
    /// Idempotency key, unique per source account (among its transfers and holds).
    #[schema(example = "h-0001")]
    pub transaction_id: String,
    #[schema(example = "alice")]
    pub from_account: String,
    #[schema(example = "shop")]
    pub to_account: String,
    /// The most a capture may move.
    #[schema(example = "12.34")]
    pub amount: String,
    #[schema(example = "USD")]
    pub currency: String,
    /// How long the hold stays held, in milliseconds from when its home records it:
    /// 1 to 2592000000 (30 days). Any other value, or none, is `400 invalid_expires_in_ms`.
    #[schema(value_type = u64, example = 600000)]
    pub expires_in_ms: Option<Value>,
}

/// The answer to a hold, a capture or a void. A refused hold, and a capture or void that
/// found the hold already ended otherwise, also carry the error `code` and `message`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HoldResponse {
    #[schema(example = "h-0001")]
    pub transaction_id: String,
    pub from_account: String,
    pub to_account: String,
    /// The hold's amount.
    #[schema(example = "12.34")]
    pub amount: String,
    pub currency: String,
    /// `held`, `pending`, `captured`, `voided`, `expired`, `rejected` or `cancelled`.
    #[schema(example = "held")]
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'static str>,
    /// Once captured: what reached `to_account`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "10.00")]
    pub captured_amount: Option<String>,
    /// Once captured: what went back to `from_account`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "2.34")]
    pub released_amount: Option<String>,
    /// Where the hold is read (its expiry among the rest), and a pending one polled.
    pub status_url: String,
    /// Present, and `true`, on the answer to a dry run (`?dry_run=true`): nothing was
    /// recorded.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// A capture: all of the hold, or a part.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct CaptureRequest {
    /// How much to capture, in the hold's currency; absent (or no body at all): all of it.
    #[schema(example = "10.00")]
    pub amount: Option<String>,
}

/// Which end of a hold a request asks for: what `200` means for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Place,
    Capture,
    Void,
}

/// Place a hold: authorize now, capture later.
///
/// The amount leaves `from_account`'s available balance at once (its balance shows it as
/// `held`) and reaches `to_account` only when captured, all of it or a part, before
/// `expires_in_ms`; a void or the expiry gives it all back. A business refusal
/// (`insufficient_funds`, ...) is recorded as a transfer's is: every retry of the
/// `transaction_id` gets it.
#[utoipa::path(post, path = "/v1/wallet/holds", tag = "transfers", request_body = HoldRequest,
    responses(
        (status = 200, description = "Held (or the retry of a hold, with its status now)", body = HoldResponse),
        (status = 202, description = "Durably accepted, not held within the wait (its destination is on another partition); poll `status_url` or retry", body = HoldResponse),
    ))]
pub async fn place(
    State(api): State<Api>,
    ApiQuery(params): ApiQuery<WriteParams>,
    ApiJson(body): ApiJson<HoldRequest>,
) -> Result<Response, ApiError> {
    let transfer = parse_transfer_fields(TransferFields {
        from_account: &body.from_account,
        to_account: &body.to_account,
        amount: &body.amount,
        currency: &body.currency,
        transaction_id: &body.transaction_id,
    })?;
    let expires_in_ms = expires_in_ms(body.expires_in_ms.as_ref())?;
    let hold = Hold {
        transfer,
        expires_in_us: expires_in_ms * 1000,
    };
    let key = transfer.key();
    let command = Command::Hold(Box::new(hold));
    let status = if params.dry_run {
        dry_run::started(&api, command).await?
    } else {
        let deadline = Instant::now() + api.options().transfer_wait;
        execute_started(&api, command, key, deadline).await?
    };
    let row = HeldRow {
        key,
        to: transfer.to.to_string(),
        amount: transfer.amount,
        currency: transfer.currency,
    };
    Ok(respond(Asked::Place, &row, status, None, params.dry_run))
}

/// `expires_in_ms` checked: an integer from 1 to [`HOLD_EXPIRES_IN_MS_MAX`]. A number
/// written with a zero fraction (`300.0`) is an integer, as JSON Schema counts them.
fn expires_in_ms(value: Option<&Value>) -> Result<u64, ApiError> {
    let whole = |number: &serde_json::Number| {
        number.as_u64().or_else(|| {
            let float = number.as_f64()?;
            // Exact: every integer up to the bound is a float with no rounding.
            (float.fract() == 0.0 && float >= 1.0 && float <= HOLD_EXPIRES_IN_MS_MAX as f64)
                .then_some(float as u64)
        })
    };
    let ms = match value {
        Some(Value::Number(number)) => whole(number),
        _ => None,
    };
    ms.filter(|ms| (1..=HOLD_EXPIRES_IN_MS_MAX).contains(ms))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_expires_in_ms",
                format!(
                    "expires_in_ms must be an integer from 1 to {HOLD_EXPIRES_IN_MS_MAX} \
                     (30 days), got {}",
                    value.map_or("nothing".to_string(), Value::to_string)
                ),
            )
        })
}

/// Capture a hold, all of it or a part.
///
/// The part captured reaches `to_account`, the rest goes back to `from_account`, at once
/// and for good. A retry of the same capture gets the same answer; a capture of another
/// amount after it is `409 hold_already_captured`. A capture at or after the hold's expiry
/// finds it expired (`409 hold_expired`), even before the expiry scan got to it.
#[utoipa::path(post, path = "/v1/transfers/{from_account}/{transaction_id}/capture", tag = "transfers",
    request_body = CaptureRequest,
    responses(
        (status = 200, description = "Captured (or the retry of the same capture)", body = HoldResponse),
    ))]
pub async fn capture(
    State(api): State<Api>,
    ApiPath((from, id)): ApiPath<(String, String)>,
    ApiQuery(params): ApiQuery<WriteParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = path_key(&from, &id)?;
    let request: CaptureRequest = optional_json(&headers, &body)?;
    // Only the amount's grammar is checked here. Its currency's digits and bounds are the
    // hold's, which its partition knows: it finishes the parse in the step that decides the
    // capture, so a capture is one round, with no read of the hold before it.
    let amount = (request.amount.as_deref())
        .map(WrittenAmount::parse)
        .transpose()?;
    let end = end(&api, Command::Capture { key, amount }, params.dry_run).await?;
    Ok(respond_end(Asked::Capture, key, &end, params.dry_run))
}

/// Void a hold: everything goes back to `from_account`.
///
/// A retry gets the same answer. A hold already captured is `409 hold_captured` (with what
/// was captured); one past its expiry is `409 hold_expired`.
#[utoipa::path(post, path = "/v1/transfers/{from_account}/{transaction_id}/void", tag = "transfers",
    responses(
        (status = 200, description = "Voided (or the retry of the void)", body = HoldResponse),
    ))]
pub async fn void(
    State(api): State<Api>,
    ApiPath((from, id)): ApiPath<(String, String)>,
    ApiQuery(params): ApiQuery<WriteParams>,
) -> Result<Response, ApiError> {
    let key = path_key(&from, &id)?;
    let end = end(&api, Command::Void { key }, params.dry_run).await?;
    Ok(respond_end(Asked::Void, key, &end, params.dry_run))
}

/// The key a capture or void names in its path.
fn path_key(from: &str, id: &str) -> Result<TransferKey, ApiError> {
    Ok(TransferKey {
        from: account_id("from_account", from)?,
        transaction_id: transaction_id("transaction_id", id)?,
    })
}

/// A body that may be absent: empty (whatever its `Content-Type`) is the default; anything
/// else must be JSON, as every other body.
fn optional_json<T: Default + serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    if !headers
        .get(header::CONTENT_TYPE)
        .is_some_and(is_json_content_type)
    {
        return Err(ApiError::malformed_json(
            "the body must be JSON sent with `Content-Type: application/json`",
        ));
    }
    parse_json(body)
}

/// Runs a capture or void (or its dry run): the hold's end, with what its client is shown
/// of the hold.
async fn end(api: &Api, command: Command, dry_run: bool) -> Result<HoldEnd, ApiError> {
    let result = if dry_run {
        dry_run::command(api, command).await?
    } else {
        // Decided at the home at once: nothing to wait for past the record's sync.
        counted(api, api.client().execute(command, false).await)?
    };
    match result? {
        Reply::HoldEnd(end) => Ok(end),
        other => Err(ApiError::unexpected_reply(other)),
    }
}

/// What an answer shows of the hold itself.
struct HeldRow {
    key: TransferKey,
    to: String,
    amount: Amount,
    currency: Currency,
}

/// The answer to the capture or void of the hold `key` that ended it as `end` says.
fn respond_end(asked: Asked, key: TransferKey, end: &HoldEnd, dry_run: bool) -> Response {
    let row = HeldRow {
        key,
        to: end.to.to_string(),
        amount: end.amount,
        currency: end.currency,
    };
    respond(asked, &row, end.status, end.captured, dry_run)
}

/// The answer to `asked` for a hold now in `status`; `captured` is what a captured hold
/// moved to its destination, when known.
fn respond(
    asked: Asked,
    row: &HeldRow,
    status: TransferStatus,
    captured: Option<Amount>,
    dry_run: bool,
) -> Response {
    let view = status_view(status);
    let http = match (asked, status) {
        // Placing a hold that already ended answers with its end: the hold was placed.
        (
            Asked::Place,
            TransferStatus::Captured
            | TransferStatus::Cancelled(Reason::HoldVoided | Reason::HoldExpired),
        ) => StatusCode::OK,
        (Asked::Capture, TransferStatus::Captured) => StatusCode::OK,
        (Asked::Void, TransferStatus::Cancelled(Reason::HoldVoided)) => StatusCode::OK,
        (Asked::Void, TransferStatus::Captured) => StatusCode::CONFLICT,
        _ => view.http,
    };
    let (code, message) = match (asked, status) {
        (Asked::Void, TransferStatus::Captured) => (
            Some("hold_captured"),
            Some("the hold was captured: nothing is left to void"),
        ),
        _ if http.is_success() && !matches!(status, TransferStatus::Rejected(_)) => (None, None),
        _ => (
            view.reason.map(|(code, _)| code),
            view.reason.map(|(_, message)| message),
        ),
    };
    let captured = captured.filter(|_| status == TransferStatus::Captured);
    let currency = row.currency;
    let body = HoldResponse {
        transaction_id: row.key.transaction_id.to_string(),
        from_account: row.key.from.to_string(),
        to_account: row.to.clone(),
        amount: row.amount.format(currency),
        currency: currency.to_string(),
        status: view.status,
        code,
        message,
        captured_amount: captured.map(|c| c.format(currency)),
        released_amount: captured
            .map(|c| format_minor(row.amount.minor().saturating_sub(c.minor()), currency)),
        status_url: status_url(&row.key),
        dry_run,
    };
    (http, axum::Json(body)).into_response()
}

/// The terms of the hold `key` (asked of its home), `None` if it is no hold.
pub(super) async fn terms(api: &Api, key: TransferKey) -> Result<Option<HoldTerms>, ApiError> {
    match api.ask(Query::HoldTerms(key)).await? {
        QueryAnswer::HoldTerms(terms) => Ok(terms),
        other => Err(ApiError::unexpected_answer(&other)),
    }
}

/// Adds a hold's terms to its status: its expiry, and once captured what went where.
pub(super) fn describe(row: &TransferRow, terms: &HoldTerms, out: &mut TransferStatusResponse) {
    let currency = row.transfer.currency;
    out.expires_at = Some(rfc3339::format_us(terms.expires_at));
    if let Some(captured) = terms.captured {
        let rest = row.transfer.amount.minor().saturating_sub(captured.minor());
        out.captured_amount = Some(captured.format(currency));
        out.released_amount = Some(format_minor(rest, currency));
    }
}
