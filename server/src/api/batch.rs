//! `POST /v1/wallet/balance_transfers`: many transfers in one request.
//!
//! Every item is executed concurrently (they land in the partitions' inboxes together and
//! share group commits), each is answered on its own, in request order, with the HTTP status
//! it would have had alone. One malformed item does not spoil the others.
//!
//! The body is read in one pass, each item validated into a command as it closes
//! ([`items`]); the commands go to the engine together, shared rather than copied
//! (`Client::execute_shared`), under one deadline, with no task or timer per item, and an
//! item still undecided at the deadline answers `202 pending`. The answer is written
//! straight into the response body ([`results`]).

mod items;
mod results;

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::time::Instant;
use utoipa::ToSchema;
use walletd_core::ledger::{Command, TransferStatus};
use walletd_core::model::event::Transfer;
use walletd_runtime::driver::CommandResult;
use walletd_runtime::engine::Unavailable;

use super::dry_run::{self, WriteParams};
use super::metrics::Outcome;
use super::transfers::{conclude, status_url, status_view, TransferRequest};
use super::{Api, ApiQuery, JsonBody};
use crate::errors::ApiError;
use items::read_batch;
use results::{ItemResult, ResultsWriter};

/// A batch of transfers.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchRequest {
    /// At most 8000 items (`batch_items_max`).
    #[schema(value_type = Vec<TransferRequest>)]
    pub transfers: Vec<Box<RawValue>>,
}

/// The result of one item of a batch: the documented shape of what [`results`] writes (a
/// test holds the two equal).
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
    /// Present, and `true`, on the answer to a dry run (`?dry_run=true`): nothing was
    /// recorded.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// Execute up to 8000 transfers concurrently, one result per item.
#[utoipa::path(post, path = "/v1/wallet/balance_transfers", tag = "transfers", request_body = BatchRequest,
    responses(
        (status = 200, description = "One result per item, in order. The request as a whole was read; each item may still be an error (`status` `error`, `rejected` or `cancelled`), with the `http_status` and `code` it would have had alone.", body = BatchResponse),
    ))]
pub async fn transfers(
    State(api): State<Api>,
    ApiQuery(params): ApiQuery<WriteParams>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let batch = read_batch(&body, api.options().batch_items_max)?;
    drop(body);
    if !params.dry_run {
        for _ in &batch.failed {
            api.metrics().transfer(Outcome::Failed);
        }
    }
    let commands = Arc::new(batch.commands);
    let answers = if params.dry_run {
        dry_run_all(&api, &commands).await
    } else {
        let deadline = Instant::now() + api.options().transfer_wait;
        let answers = execute_all(&api, &commands, deadline).await;
        answers
            .into_iter()
            .map(|answer| conclude(&api, answer))
            .collect()
    };
    assert_eq!(answers.len(), commands.len(), "one answer per command");
    let mut decided = batch.positions.iter().zip(commands.iter().zip(answers));
    let mut failed = batch.failed.into_iter();
    let mut writer = ResultsWriter::with_capacity(batch.count);
    let mut next_failed = failed.next();
    let mut next_decided = decided.next();
    for index in 0..batch.count {
        if let Some((_, transaction_id, error)) = next_failed.take_if(|(at, ..)| *at == index) {
            writer.push(error_result(index, transaction_id.as_deref(), &error));
            next_failed = failed.next();
            continue;
        }
        let (&at, (command, answer)) = next_decided.take().expect("every item is answered");
        assert_eq!(at as usize, index, "items are answered in request order");
        let Command::Transfer(transfer) = command else {
            unreachable!("a batch holds transfers only")
        };
        match answer {
            Ok(status) => {
                let view = status_view(status);
                let status_url =
                    (status == TransferStatus::Pending).then(|| status_url(&transfer.key()));
                writer.push(ItemResult {
                    index,
                    transaction_id: Some(transfer.transaction_id.as_str()),
                    http_status: view.http.as_u16(),
                    status: view.status,
                    code: view.reason.map(|(code, _)| code),
                    message: view.reason.map(|(_, message)| message),
                    status_url: status_url.as_deref(),
                });
            }
            Err(error) => writer.push(error_result(
                index,
                Some(transfer.transaction_id.as_str()),
                &error,
            )),
        }
        next_decided = decided.next();
    }
    assert!(
        next_failed.is_none() && next_decided.is_none(),
        "every item is answered once"
    );
    let headers = [(header::CONTENT_TYPE, "application/json")];
    Ok((headers, writer.finish(params.dry_run)).into_response())
}

/// The dry run of every transfer ([`dry_run::transfer`]), at most
/// [`DRY_RUNS_IN_FLIGHT_MAX`] at a time. Each is answered against the state its partitions
/// hold when its question arrives, not after the items before it: a dry run records
/// nothing, so two items that together overdraw an account both answer as they would alone.
async fn dry_run_all(api: &Api, commands: &[Command]) -> Vec<Result<TransferStatus, ApiError>> {
    let transfers: Vec<Transfer> = (commands.iter())
        .map(|command| match command {
            Command::Transfer(transfer) => *transfer,
            _ => unreachable!("a batch holds transfers only"),
        })
        .collect();
    let each = transfers.into_iter().map(|transfer| {
        let api = api.clone();
        async move { dry_run::transfer(&api, transfer).await }
    });
    futures_util::stream::iter(each)
        .buffered(DRY_RUNS_IN_FLIGHT_MAX)
        .collect()
        .await
}

/// Dry runs of one batch asked at once: enough to fill the partitions' rounds, few enough
/// that one batch does not crowd out other clients' requests.
const DRY_RUNS_IN_FLIGHT_MAX: usize = 256;

/// Hands every transfer to its partition at once (`Client::execute_shared`: they share
/// group commits, and awaiting the answers in order costs nothing because a batch's answers
/// arrive together), waiting for outcomes until `deadline`.
///
/// Past the deadline the same transfers are asked again without waiting for outcomes:
/// transfers are idempotent, so each answers what its partition has recorded, `pending` for
/// one still in its two-phase protocol, the first outcome for a finished one. This keeps the
/// common path free of a timer and a task per item.
async fn execute_all(
    api: &Api,
    commands: &Arc<Vec<Command>>,
    deadline: Instant,
) -> Vec<Result<CommandResult, Unavailable>> {
    let client = api.client();
    let waiting = client.execute_shared(commands, true);
    match tokio::time::timeout_at(deadline, waiting).await {
        Ok(answers) => answers,
        Err(_elapsed) => client.execute_shared(commands, false).await,
    }
}

fn error_result<'a>(
    index: usize,
    transaction_id: Option<&'a str>,
    error: &'a ApiError,
) -> ItemResult<'a> {
    ItemResult {
        index,
        transaction_id,
        http_status: error.status.as_u16(),
        status: "error",
        code: Some(error.code),
        message: Some(&error.message),
        status_url: None,
    }
}
