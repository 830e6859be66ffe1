//! `POST /v1/wallet/balance_transfers`: many transfers in one request.
//!
//! Every item is executed concurrently (they land in the partitions' inboxes together and
//! share group commits), each is answered on its own, in request order, with the HTTP status
//! it would have had alone. One malformed item does not spoil the others.

use axum::extract::State;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

use super::metrics::Outcome;
use super::transfers::{execute, parse_transfer, render, TransferRequest};
use super::{Api, ApiJson};
use crate::errors::{ApiError, ErrorBody};

/// A batch of transfers.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchRequest {
    /// At most 8000 items (`batch_items_max`).
    #[schema(value_type = Vec<TransferRequest>)]
    pub transfers: Vec<serde_json::Value>,
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
    ApiJson(batch): ApiJson<BatchRequest>,
) -> Result<axum::Json<BatchResponse>, ApiError> {
    let items_max = api.options().batch_items_max;
    if batch.transfers.len() > items_max {
        return Err(ApiError::batch_too_large(batch.transfers.len(), items_max));
    }
    let deadline = Instant::now() + api.options().transfer_wait;
    let runs = batch
        .transfers
        .into_iter()
        .enumerate()
        .map(|(index, item)| run_item(&api, index, item, deadline));
    Ok(axum::Json(BatchResponse {
        results: join_all(runs).await,
    }))
}

async fn run_item(
    api: &Api,
    index: usize,
    item: serde_json::Value,
    deadline: Instant,
) -> BatchItemResult {
    let transaction_id = item
        .get("transaction_id")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let error = |error: ApiError| BatchItemResult {
        index,
        transaction_id: transaction_id.clone(),
        http_status: error.status.as_u16(),
        status: "error",
        code: Some(error.code.to_string()),
        message: Some(error.message),
        status_url: None,
    };
    let parsed = serde_json::from_value::<TransferRequest>(item)
        .map_err(|e| ApiError::invalid_field(format!("transfers[{index}]: {e}")))
        .and_then(|request| parse_transfer(&request));
    let transfer = match parsed {
        Ok(transfer) => transfer,
        Err(e) => {
            api.metrics().transfer(Outcome::Failed);
            return error(e);
        }
    };
    match execute(api, transfer, deadline).await {
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
        Err(e) => error(e),
    }
}
