//! Transfers: the single-transfer endpoint (and its alias) and the transfer status.
//!
//! A transfer request waits for a final outcome up to `transfer_wait`; past it the answer is
//! `202 pending` with the URL to poll. Retrying the same request (same body, same
//! `transaction_id`) is always safe: the home partition's idempotency record answers with the
//! first outcome, and a different body under the same id is a `409 transaction_conflict`.

use std::borrow::Cow;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;
use walletd_core::ledger::{Command, Reply, TransferRow, TransferState, TransferStatus};
use walletd_core::model::event::{Reason, Transfer, TransferKey};
use walletd_core::model::ids::TransactionId;
use walletd_core::model::money::{format_minor, Amount};
use walletd_runtime::driver::{CommandResult, Query, QueryAnswer};
use walletd_runtime::engine::Unavailable;

use super::dry_run::{self, WriteParams};
use super::holds;
use super::metrics::Outcome;
use super::{account_id, currency, parse_json, transaction_id, Api, ApiPath, ApiQuery, JsonBody};
use crate::errors::{reason_message, reason_status, ApiError};
use crate::rfc3339;

/// A transfer between two accounts of the same currency.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct TransferRequest {
    #[schema(example = "alice")]
    pub from_account: String,
    #[schema(example = "bob")]
    pub to_account: String,
    #[schema(example = "12.34")]
    pub amount: String,
    #[schema(example = "USD")]
    pub currency: String,
    /// Idempotency key, unique per source account.
    #[schema(example = "t-0001")]
    pub transaction_id: String,
}

/// The outcome of a transfer request. A rejected or cancelled transfer also carries the
/// error `code` and `message`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TransferResponse {
    #[schema(example = "t-0001")]
    pub transaction_id: String,
    /// `committed`, `pending`, `rejected` or `cancelled`.
    #[schema(example = "committed")]
    pub status: &'static str,
    /// Why a transfer was rejected or cancelled, e.g. `insufficient_funds`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'static str>,
    /// Where to poll a pending transfer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_url: Option<String>,
    /// Present, and `true`, on the answer to a dry run (`?dry_run=true`): nothing was
    /// recorded.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// The fields of a transfer request as sent, borrowed from the body where they hold no JSON
/// escapes (the wire form of [`TransferRequest`]).
#[derive(Deserialize)]
pub struct TransferBody<'a> {
    #[serde(borrow)]
    pub from_account: Cow<'a, str>,
    #[serde(borrow)]
    pub to_account: Cow<'a, str>,
    #[serde(borrow)]
    pub amount: Cow<'a, str>,
    #[serde(borrow)]
    pub currency: Cow<'a, str>,
    #[serde(borrow)]
    pub transaction_id: Cow<'a, str>,
}

impl TransferBody<'_> {
    pub fn fields(&self) -> TransferFields<'_> {
        TransferFields {
            from_account: &self.from_account,
            to_account: &self.to_account,
            amount: &self.amount,
            currency: &self.currency,
            transaction_id: &self.transaction_id,
        }
    }
}

/// The text fields of a transfer request, borrowed (the batch endpoint parses items
/// without copying them into a [`TransferRequest`]).
#[derive(Debug, Clone, Copy)]
pub struct TransferFields<'a> {
    pub from_account: &'a str,
    pub to_account: &'a str,
    pub amount: &'a str,
    pub currency: &'a str,
    pub transaction_id: &'a str,
}

/// Validates the fields of a transfer request into the core type.
pub fn parse_transfer_fields(request: TransferFields<'_>) -> Result<Transfer, ApiError> {
    let from = account_id("from_account", request.from_account)?;
    let to = account_id("to_account", request.to_account)?;
    let currency = currency(request.currency)?;
    let amount = Amount::parse(request.amount, currency)?;
    let transaction_id = transaction_id("transaction_id", request.transaction_id)?;
    Ok(Transfer {
        transaction_id,
        from,
        to,
        amount,
        currency,
    })
}

/// Executes a transfer, waiting for its outcome until `deadline`. Counts the outcome.
///
/// `202 pending` means durably accepted: past `deadline`, the answer waits until the home
/// partition has durably recorded the transfer (or its outcome arrives first). A crash can
/// then never make the status URL deny a transfer the client was told exists. The request's
/// own time limit bounds that wait (`503 request_timeout`, which says to retry).
pub async fn execute(
    api: &Api,
    transfer: Transfer,
    deadline: Instant,
) -> Result<TransferStatus, ApiError> {
    execute_started(api, Command::Transfer(transfer), transfer.key(), deadline).await
}

/// [`execute`] of a command that starts the transfer `key`: a transfer, or a refund.
pub async fn execute_started(
    api: &Api,
    command: Command,
    key: TransferKey,
    deadline: Instant,
) -> Result<TransferStatus, ApiError> {
    // With no time to wait at all, a transfer is answered once accepted (durably), so a
    // cross-partition one is reliably `pending` rather than whatever a race makes of it.
    let wait = !api.options().transfer_wait.is_zero();
    let run = api.client().execute(command, wait);
    tokio::pin!(run);
    if let Ok(answer) = tokio::time::timeout_at(deadline, &mut run).await {
        return conclude(api, answer);
    }
    tokio::select! {
        answer = &mut run => conclude(api, answer),
        accepted = durably_accepted(api, key) => {
            if accepted? {
                api.metrics().transfer(Outcome::of_status(TransferStatus::Pending));
                return Ok(TransferStatus::Pending);
            }
            // Not recorded: the command was refused; its answer says why.
            conclude(api, run.await)
        }
    }
}

/// Whether the home partition of `key` has durably recorded it. A query is answered only
/// once everything the partition took in before it is durable, and it goes behind the
/// transfer on the same way in (one inbox, or one peer link), so a row it finds is a row a
/// crash keeps.
async fn durably_accepted(api: &Api, key: TransferKey) -> Result<bool, ApiError> {
    match api.ask(Query::Transfer(key)).await? {
        QueryAnswer::Transfer(row) => Ok(row.is_some()),
        other => Err(ApiError::unexpected_answer(&other)),
    }
}

/// Counts the engine's answer to a transfer and interprets it.
pub fn conclude(
    api: &Api,
    answer: Result<CommandResult, Unavailable>,
) -> Result<TransferStatus, ApiError> {
    interpret(counted(api, answer)?)
}

/// The result of a command that starts or ends a transfer, counted in the metrics by its
/// outcome; a partition out of reach is its error.
pub fn counted(
    api: &Api,
    answer: Result<CommandResult, Unavailable>,
) -> Result<CommandResult, ApiError> {
    let result = match answer {
        Err(unavailable) => {
            api.metrics().transfer(Outcome::Failed);
            return Err(api.unavailable(unavailable));
        }
        Ok(result) => result,
    };
    let outcome = match &result {
        Ok(reply) => reply
            .transfer_status()
            .map_or(Outcome::Failed, Outcome::of_status),
        Err(walletd_core::ledger::LedgerError::Conflict(_)) => Outcome::Conflict,
        Err(_) => Outcome::Failed,
    };
    api.metrics().transfer(outcome);
    Ok(result)
}

/// The status a transfer command's result tells its client, or the refusal.
pub fn interpret(result: CommandResult) -> Result<TransferStatus, ApiError> {
    match result? {
        Reply::Transfer(status) => Ok(status),
        other => Err(ApiError::unexpected_reply(other)),
    }
}

/// How a transfer's status reads in an answer.
pub struct StatusView {
    pub http: StatusCode,
    /// `committed`, `pending`, `rejected` or `cancelled`; for a hold `held`, `captured`,
    /// `voided` or `expired`.
    pub status: &'static str,
    /// Why a transfer was rejected or cancelled: the error code and message.
    pub reason: Option<(&'static str, &'static str)>,
}

pub fn status_view(status: TransferStatus) -> StatusView {
    let reason = |reason: Reason| Some((reason.code(), reason_message(reason)));
    let (http, status, reason) = match status {
        TransferStatus::Committed => (StatusCode::OK, "committed", None),
        TransferStatus::Pending => (StatusCode::ACCEPTED, "pending", None),
        TransferStatus::Held => (StatusCode::OK, "held", None),
        TransferStatus::Captured => (StatusCode::OK, "captured", None),
        TransferStatus::Rejected(r) => (reason_status(r), "rejected", reason(r)),
        TransferStatus::Cancelled(r) => (reason_status(r), cancelled_name(r), reason(r)),
    };
    StatusView {
        http,
        status,
        reason,
    }
}

/// The status name of a transfer cancelled for `reason`: a hold's own end has its own.
fn cancelled_name(reason: Reason) -> &'static str {
    match reason {
        Reason::HoldVoided => "voided",
        Reason::HoldExpired => "expired",
        _ => "cancelled",
    }
}

/// The status line and body for a decided transfer.
pub fn render(transfer: &Transfer, status: TransferStatus) -> (StatusCode, TransferResponse) {
    let view = status_view(status);
    let body = TransferResponse {
        transaction_id: transfer.transaction_id.to_string(),
        status: view.status,
        code: view.reason.map(|(code, _)| code),
        message: view.reason.map(|(_, message)| message),
        status_url: (status == TransferStatus::Pending).then(|| status_url(&transfer.key())),
        dry_run: false,
    };
    (view.http, body)
}

/// Where a client polls the status of a transfer.
pub fn status_url(key: &TransferKey) -> String {
    format!("/v1/transfers/{}/{}", key.from, key.transaction_id)
}

/// Move money from one account to another.
///
/// A business refusal (`404`, `422`: status `rejected` or `cancelled` with its code) is
/// recorded: the same `transaction_id` gets the same answer forever. A `400` is not recorded.
#[utoipa::path(post, path = "/v1/wallet/balance_transfer", tag = "transfers", request_body = TransferRequest,
    description = "Also served at `/v1/wallet/balance_transper` (the original spelling).",
    responses(
        (status = 200, description = "Committed", body = TransferResponse),
        (status = 202, description = "Durably accepted, not final within the wait; poll `status_url` or retry", body = TransferResponse),
    ))]
pub async fn transfer(
    State(api): State<Api>,
    ApiQuery(params): ApiQuery<WriteParams>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    // A body that is not a transfer request is refused before it counts as a transfer.
    let request: TransferBody = parse_json(&body)?;
    if params.dry_run {
        let transfer = parse_transfer_fields(request.fields())?;
        let decided = dry_run::transfer(&api, transfer).await?;
        let (status, mut body) = render(&transfer, decided);
        body.dry_run = true;
        return Ok((status, axum::Json(body)).into_response());
    }
    let transfer = parse_transfer_fields(request.fields()).inspect_err(|_| {
        api.metrics().transfer(Outcome::Failed);
    })?;
    let deadline = Instant::now() + api.options().transfer_wait;
    let decided = execute(&api, transfer, deadline).await?;
    let (status, body) = render(&transfer, decided);
    Ok((status, axum::Json(body)).into_response())
}

/// The phase row of a transfer, as `GET /v1/transfers/{from}/{id}` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferStatusResponse {
    pub transaction_id: String,
    pub from_account: String,
    pub to_account: String,
    #[schema(example = "12.34")]
    pub amount: String,
    pub currency: String,
    /// `committed`, `pending`, `rejected` or `cancelled`; for a hold `held`, `captured`,
    /// `voided` or `expired` (a hold is `pending` until its destination has tried its credit).
    pub status: &'static str,
    /// Why it was rejected or cancelled (a voided or expired hold: `hold_voided`,
    /// `hold_expired`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'static str>,
    /// The protocol phase: `trying`, `confirming`, `cancelling`, `committed`, `cancelled`,
    /// `rejected`, and for a hold `held` and `captured`.
    pub phase: &'static str,
    /// Whether the accounts live on different partitions (two-phase transfer).
    pub cross_partition: bool,
    /// RFC 3339, when the home partition accepted the transfer.
    pub accepted_at: String,
    /// When the second-phase decision was logged (absent until then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    /// When the transfer became final (absent until then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// For a refund: the transaction id of the transfer it refunds (from `to_account`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund_of: Option<String>,
    /// For a hold: RFC 3339, when it expires (or expired) by its home's clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// For a captured hold: what reached `to_account`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "10.00")]
    pub captured_amount: Option<String>,
    /// For a captured hold: what went back to `from_account` (`amount` less the capture).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "2.34")]
    pub released_amount: Option<String>,
    /// For a multi-leg transaction: its legs, in order (`to_account`, `amount` and
    /// `currency` above are its first leg's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legs: Option<Vec<super::transactions::LegRequest>>,
    /// For a multi-leg transaction rejected or cancelled for a leg: that leg's index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_leg: Option<u8>,
}

fn status_response(row: &TransferRow) -> TransferStatusResponse {
    let transfer = &row.transfer;
    let view = status_view(row.state.status());
    let phase = match row.state {
        TransferState::Trying => "trying",
        TransferState::Confirming => "confirming",
        TransferState::Cancelling(_) => "cancelling",
        TransferState::Committed => "committed",
        TransferState::Cancelled(_) => "cancelled",
        TransferState::Rejected(_) => "rejected",
        TransferState::Held => "held",
        TransferState::Captured => "captured",
    };
    let time = |ts: u64| (ts != 0).then(|| rfc3339::format_us(ts));
    TransferStatusResponse {
        transaction_id: transfer.transaction_id.to_string(),
        from_account: transfer.from.to_string(),
        to_account: transfer.to.to_string(),
        amount: format_minor(transfer.amount.minor(), transfer.currency),
        currency: transfer.currency.to_string(),
        status: view.status,
        code: view.reason.map(|(code, _)| code),
        message: view.reason.map(|(_, message)| message),
        phase,
        cross_partition: row.remote,
        accepted_at: rfc3339::format_us(row.accepted_at),
        decided_at: time(row.decided_at),
        finished_at: time(row.finished_at),
        refund_of: None,
        expires_at: None,
        captured_amount: None,
        released_amount: None,
        legs: None,
        failed_leg: None,
    }
}

/// The status and phase timestamps of a transfer, by source account and transaction id.
#[utoipa::path(get, path = "/v1/transfers/{from_account}/{transaction_id}", tag = "transfers",
    params(
        ("from_account" = String, Path, description = "Source account of the transfer"),
        ("transaction_id" = String, Path, description = "The transfer's transaction id"),
    ),
    responses(
        (status = 200, description = "The transfer", body = TransferStatusResponse),
    ))]
pub async fn status(
    State(api): State<Api>,
    ApiPath((from, id)): ApiPath<(String, String)>,
) -> Result<axum::Json<TransferStatusResponse>, ApiError> {
    let key = TransferKey {
        from: account_id("from_account", &from)?,
        transaction_id: transaction_id("transaction_id", &id)?,
    };
    let row = transfer_row(&api, key).await?;
    let mut response = status_response(&row);
    // One more read at the home, of what only some rows have: a row in a hold's own state
    // is no refund, a row in a transfer's final state no hold, and a row still trying may
    // be either.
    if may_be_hold(row.state) {
        if let Some(terms) = holds::terms(&api, key).await? {
            holds::describe(&row, &terms, &mut response);
        }
    }
    if !is_hold_state(row.state) {
        response.refund_of = refund_of(&api, key).await?.map(|id| id.to_string());
        if let Some(terms) = super::transactions::terms(&api, key).await? {
            let legs = terms
                .tx
                .legs()
                .map(|leg| super::transactions::leg_view(&leg));
            response.legs = Some(legs.collect());
            response.failed_leg = terms.failed_leg;
        }
    }
    Ok(axum::Json(response))
}

/// Whether only a hold is ever in `state`.
fn is_hold_state(state: TransferState) -> bool {
    matches!(
        state,
        TransferState::Held
            | TransferState::Captured
            | TransferState::Cancelling(Reason::HoldVoided | Reason::HoldExpired)
            | TransferState::Cancelled(Reason::HoldVoided | Reason::HoldExpired)
    )
}

/// Whether a row in `state` may be a hold's: its own states, or still being placed.
fn may_be_hold(state: TransferState) -> bool {
    is_hold_state(state) || state == TransferState::Trying
}

/// The row of the transfer `key`, read at its home: `404 transfer_not_found` if it has none.
pub(super) async fn transfer_row(api: &Api, key: TransferKey) -> Result<TransferRow, ApiError> {
    match api.ask(Query::Transfer(key)).await? {
        QueryAnswer::Transfer(Some(row)) => Ok(row),
        QueryAnswer::Transfer(None) => Err(not_found(key)),
        other => Err(ApiError::unexpected_answer(&other)),
    }
}

fn not_found(key: TransferKey) -> ApiError {
    ApiError::transfer_not_found(key.from.as_str(), key.transaction_id.as_str())
}

/// The transfer that the transfer `key` refunds, if it is a refund (asked of its home).
async fn refund_of(api: &Api, key: TransferKey) -> Result<Option<TransactionId>, ApiError> {
    match api.ask(Query::RefundOf(key)).await? {
        QueryAnswer::RefundOf(original) => Ok(original),
        other => Err(ApiError::unexpected_answer(&other)),
    }
}
