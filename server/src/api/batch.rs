//! `POST /v1/wallet/balance_transfers`: many transfers in one request.
//!
//! Every item is executed concurrently (they land in the partitions' inboxes together and
//! share group commits), each is answered on its own, in request order, with the HTTP status
//! it would have had alone. One malformed item does not spoil the others.
//!
//! Items stay raw JSON text until each is parsed on its own into borrowed fields, so no
//! generic JSON tree is built; the parsed items go to the engine together
//! (`Client::execute_many`) under one deadline, with no task or timer per item, and an item
//! still undecided at the deadline answers `202 pending`.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::time::Instant;
use utoipa::ToSchema;
use walletd_core::driver::CommandResult;
use walletd_core::engine::Unavailable;
use walletd_core::event::Transfer;
use walletd_core::ledger::Command;

use super::metrics::Outcome;
use super::transfers::{
    conclude, parse_transfer_fields, render, Decided, TransferBody, TransferRequest,
};
use super::{parse_json, Api, JsonBody};
use crate::errors::{ApiError, ErrorBody};

/// A batch of transfers.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchRequest {
    /// At most 8000 items (`batch_items_max`).
    #[schema(value_type = Vec<TransferRequest>)]
    pub transfers: Vec<Box<RawValue>>,
}

/// The result of one item of a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItemResult {
    /// Position of the item in the request.
    pub index: usize,
    /// The item's transaction id, when it had a readable one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    /// The status this item would have had as a single request (200, 202, 4xx, 5xx).
    pub http_status: u16,
    /// `committed`, `pending`, `rejected`, `cancelled`, or `error` (refused before the ledger
    /// decided: see `code`).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_url: Option<String>,
}

/// The wire form of [`BatchRequest`]: each item's text borrowed from the body.
#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    transfers: Vec<&'a RawValue>,
}

/// Per-item results in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchItemResult>,
}

/// Execute up to 8000 transfers concurrently, one result per item.
#[utoipa::path(post, path = "/v1/wallet/balance_transfers", tag = "transfers", request_body = BatchRequest,
    responses(
        (status = 200, description = "One result per item, in order", body = BatchResponse),
        (status = 400, description = "The body is not a batch", body = ErrorBody),
        (status = 413, description = "`batch_too_large` or `body_too_large`", body = ErrorBody),
    ))]
pub async fn transfers(
    State(api): State<Api>,
    JsonBody(body): JsonBody,
) -> Result<axum::Json<BatchResponse>, ApiError> {
    let batch: BatchBody = parse_json(&body)?;
    let items_max = api.options().batch_items_max;
    if batch.transfers.len() > items_max {
        return Err(ApiError::batch_too_large(batch.transfers.len(), items_max));
    }
    let deadline = Instant::now() + api.options().transfer_wait;
    let mut results: Vec<Option<BatchItemResult>> = Vec::with_capacity(batch.transfers.len());
    // The parsed items and their positions in the request.
    let mut parsed: Vec<(usize, Transfer)> = Vec::with_capacity(batch.transfers.len());
    for (index, item) in batch.transfers.iter().enumerate() {
        match parse_item(index, item) {
            Ok(transfer) => {
                results.push(None);
                parsed.push((index, transfer));
            }
            Err(error) => {
                api.metrics().transfer(Outcome::Failed);
                results.push(Some(error_result(index, item_transaction_id(item), error)));
            }
        }
    }
    for ((index, transfer), answer) in parsed
        .iter()
        .zip(execute_all(&api, &parsed, deadline).await)
    {
        let decided = conclude(&api, *transfer, answer);
        results[*index] = Some(item_result(*index, transfer, decided));
    }
    let results = results
        .into_iter()
        .map(|result| result.expect("every item is answered"))
        .collect();
    Ok(axum::Json(BatchResponse { results }))
}

/// Hands every transfer to its partition at once (`Client::execute_many`: they share group
/// commits, and awaiting the answers in order costs nothing because a batch's answers arrive
/// together), waiting for outcomes until `deadline`.
///
/// Past the deadline the same transfers are asked again without waiting for outcomes:
/// transfers are idempotent, so each answers what its partition has recorded, `pending` for
/// one still in its two-phase protocol, the first outcome for a finished one. This keeps the
/// common path free of a timer and a task per item.
async fn execute_all(
    api: &Api,
    parsed: &[(usize, Transfer)],
    deadline: Instant,
) -> Vec<Result<CommandResult, Unavailable>> {
    let commands = || parsed.iter().map(|(_, t)| Command::Transfer(*t));
    let client = api.client();
    let waiting = client.execute_many(commands(), true);
    match tokio::time::timeout_at(deadline, waiting).await {
        Ok(answers) => answers,
        Err(_elapsed) => client.execute_many(commands(), false).await,
    }
}

fn parse_item(index: usize, item: &RawValue) -> Result<Transfer, ApiError> {
    let fields: TransferBody = serde_json::from_str(item.get())
        .map_err(|e| ApiError::invalid_field(format!("transfers[{index}]: {e}")))?;
    parse_transfer_fields(fields.fields())
}

/// The transaction id of an item that could not be parsed, when it has a readable one.
fn item_transaction_id(item: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        transaction_id: Option<serde_json::Value>,
    }
    serde_json::from_str::<IdOnly>(item.get())
        .ok()
        .and_then(|id| id.transaction_id)
        .and_then(|v| v.as_str().map(str::to_string))
}

fn error_result(index: usize, transaction_id: Option<String>, error: ApiError) -> BatchItemResult {
    BatchItemResult {
        index,
        transaction_id,
        http_status: error.status.as_u16(),
        status: "error",
        code: Some(error.code.to_string()),
        message: Some(error.message),
        status_url: None,
    }
}

fn item_result(
    index: usize,
    transfer: &Transfer,
    decided: Result<Decided, ApiError>,
) -> BatchItemResult {
    match decided {
        Ok(decided) => {
            let (status, body) = render(&decided);
            BatchItemResult {
                index,
                transaction_id: Some(body.transaction_id),
                http_status: status.as_u16(),
                status: body.status,
                code: body.code.map(str::to_string),
                message: body.message.map(str::to_string),
                status_url: body.status_url,
            }
        }
        Err(error) => error_result(index, Some(transfer.transaction_id.to_string()), error),
    }
}
