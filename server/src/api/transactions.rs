//! Multi-leg transactions: `POST /v1/wallet/transactions` moves money along 1 to 64 legs,
//! over any accounts on any partitions, all or nothing (see
//! `walletd_core::ledger::transactions` for how).
//!
//! A transaction is identified, and read back, like a transfer: by its first leg's
//! `from_account` and its `transaction_id`, at the same status URL, which then also shows
//! its legs. It is answered like one: `committed`, `pending` with the URL to poll, or
//! refused (`rejected` at its home, `cancelled` by another partition holding one of its
//! accounts) with the reason and `failed_leg`, the index of the first failing leg (for a
//! net debit that does not fit, the account's first debiting leg). The same
//! `transaction_id` and legs get the same answer forever; other legs under it are
//! `409 transaction_conflict`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;
use walletd_core::ledger::{Command, PhaseResult, Reply, TransactionTerms, TransferStatus};
use walletd_core::model::event::TransferKey;
use walletd_core::model::money::{format_minor, Amount};
use walletd_core::model::transaction::{Leg, LegsError, Transaction, LEGS_MAX};
use walletd_runtime::driver::{Query, QueryAnswer};

use super::dry_run::{self, WriteParams};
use super::transfers::{execute_started, interpret, status_url, status_view};
use super::{account_id, currency, parse_json, transaction_id, Api, ApiQuery, JsonBody};
use crate::errors::ApiError;

/// One leg of a transaction.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct LegRequest {
    #[schema(example = "alice")]
    pub from_account: String,
    #[schema(example = "shop")]
    pub to_account: String,
    #[schema(example = "10.00")]
    pub amount: String,
    #[schema(example = "USD")]
    pub currency: String,
}

/// A multi-leg transaction: every leg commits, or none does.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct TransactionRequest {
    /// Idempotency key, unique per first leg's `from_account` (among its transfers, holds
    /// and transactions).
    #[schema(example = "order-0001")]
    pub transaction_id: String,
    /// 1 to 64 legs, in any currencies (each leg in its accounts' currency), none from an
    /// account to itself. An account's legs are checked together: its net debit must fit
    /// its available balance.
    #[schema(min_items = 1, max_items = 64)]
    pub legs: Vec<LegRequest>,
}

/// The outcome of a transaction. A rejected or cancelled one also carries the error `code`,
/// `message` and `failed_leg`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TransactionResponse {
    #[schema(example = "order-0001")]
    pub transaction_id: String,
    /// The first leg's source: with `transaction_id`, what identifies the transaction.
    #[schema(example = "alice")]
    pub from_account: String,
    /// `committed`, `pending`, `rejected` or `cancelled`.
    #[schema(example = "committed")]
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'static str>,
    /// The index (from 0) of the first leg that failed, when a leg did (a transaction
    /// cancelled because a partition did not answer in time names none, nor one rejected
    /// with `timeout` because a crash took its home's record of it before it committed).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = 1)]
    pub failed_leg: Option<u8>,
    /// Where the transaction is read, and a pending one polled.
    pub status_url: String,
    /// Present, and `true`, on the answer to a dry run (`?dry_run=true`): nothing was
    /// recorded.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// Move money along several legs at once: all of them commit, or none does.
///
/// Legs may name any accounts on any partitions and nodes, in different currencies (an
/// exchange goes through liquidity accounts). A refusal (`404`, `422`: status `rejected` or
/// `cancelled`, with its `code` and `failed_leg`) is recorded: the same `transaction_id`
/// gets the same answer forever, and nothing moved. A `400` is not recorded.
#[utoipa::path(post, path = "/v1/wallet/transactions", tag = "transfers", request_body = TransactionRequest,
    responses(
        (status = 200, description = "Committed (or the retry of a transaction, with its status now)", body = TransactionResponse),
        (status = 202, description = "Durably accepted, not final within the wait; poll `status_url` or retry", body = TransactionResponse),
    ))]
pub async fn transact(
    State(api): State<Api>,
    ApiQuery(params): ApiQuery<WriteParams>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let request: TransactionRequest = parse_json(&body)?;
    let tx = parse_transaction(&request)?;
    let key = tx.key();
    let (status, failed_leg) = if params.dry_run {
        dry_run_of(&api, &tx).await?
    } else {
        let deadline = Instant::now() + api.options().transfer_wait;
        let command = Command::Transact(tx.clone());
        let status = execute_started(&api, command, key, deadline).await?;
        let failed_leg = match status {
            TransferStatus::Rejected(_) | TransferStatus::Cancelled(_) => {
                terms(&api, key).await?.and_then(|terms| terms.failed_leg)
            }
            _ => None,
        };
        (status, failed_leg)
    };
    let view = status_view(status);
    let body = TransactionResponse {
        transaction_id: key.transaction_id.to_string(),
        from_account: key.from.to_string(),
        status: view.status,
        code: view.reason.map(|(code, _)| code),
        message: view.reason.map(|(_, message)| message),
        failed_leg,
        status_url: status_url(&key),
        dry_run: params.dry_run,
    };
    Ok((view.http, axum::Json(body)).into_response())
}

/// The request's legs checked into a transaction: every field as a transfer's is, and the
/// legs together (1 to 64, none to itself, an account's total within the largest amount).
fn parse_transaction(request: &TransactionRequest) -> Result<Arc<Transaction>, ApiError> {
    let transaction_id = transaction_id("transaction_id", &request.transaction_id)?;
    if request.legs.len() > LEGS_MAX {
        return Err(legs_error(LegsError::TooManyLegs(request.legs.len())));
    }
    let mut legs = Vec::with_capacity(request.legs.len());
    for (index, leg) in request.legs.iter().enumerate() {
        let in_leg = |error: ApiError| error.in_leg(index);
        let from = account_id("from_account", &leg.from_account).map_err(in_leg)?;
        let to = account_id("to_account", &leg.to_account).map_err(in_leg)?;
        let currency = currency(&leg.currency).map_err(in_leg)?;
        let amount = Amount::parse(&leg.amount, currency)
            .map_err(ApiError::from)
            .map_err(in_leg)?;
        legs.push(Leg {
            from,
            to,
            amount,
            currency,
        });
    }
    Transaction::new(transaction_id, legs).map_err(legs_error)
}

/// A list of legs that is no transaction, with a code per rule: `400` for a count of legs
/// the document's schema refuses too, `422` for legs each well formed that cannot go
/// together (as a transfer to its own account is `422 same_account`). Nothing is recorded.
fn legs_error(error: LegsError) -> ApiError {
    let (status, code) = match error {
        LegsError::NoLegs => (StatusCode::BAD_REQUEST, "no_legs"),
        LegsError::TooManyLegs(_) => (StatusCode::BAD_REQUEST, "too_many_legs"),
        LegsError::LegToItself(_) => (StatusCode::UNPROCESSABLE_ENTITY, "leg_to_itself"),
        LegsError::AccountTotalTooLarge(_) => {
            (StatusCode::UNPROCESSABLE_ENTITY, "leg_total_too_large")
        }
    };
    ApiError::new(status, code, error.to_string())
}

/// The legs of the transaction `key` and the leg that failed, asked of its home (`None`:
/// no transaction under that key).
pub(super) async fn terms(
    api: &Api,
    key: TransferKey,
) -> Result<Option<TransactionTerms>, ApiError> {
    match api.ask(Query::Transaction(key)).await? {
        QueryAnswer::Transaction(terms) => Ok(terms),
        other => Err(ApiError::unexpected_answer(&other)),
    }
}

/// What `tx` would get now: its home's answer, and for one across partitions every other
/// participant's answer to its Try (the lowest failing leg cancels it, as the real one).
async fn dry_run_of(
    api: &Api,
    tx: &Arc<Transaction>,
) -> Result<(TransferStatus, Option<u8>), ApiError> {
    let home = dry_run::ask(api, Command::Transact(tx.clone())).await?;
    let status = interpret(home.result)?;
    if status != TransferStatus::Pending {
        return Ok((status, home.failed_leg));
    }
    let client = api.client();
    let partitions = client.partitions();
    let home_partition = tx.home(partitions);
    let mut failed: Option<(u8, walletd_core::model::event::Reason)> = None;
    for partition in tx.participants(partitions) {
        if partition == home_partition {
            continue;
        }
        let command = Command::TryTransaction {
            tx: tx.clone(),
            partition,
        };
        match dry_run::ask(api, command).await?.result? {
            Reply::Phase(PhaseResult::Tried) => {}
            Reply::Phase(PhaseResult::LegFailed { leg, reason }) => {
                if failed.is_none_or(|(at, _)| leg < at) {
                    failed = Some((leg, reason));
                }
            }
            other => return Err(ApiError::unexpected_reply(other)),
        }
    }
    Ok(match failed {
        Some((leg, reason)) => (TransferStatus::Cancelled(reason), Some(leg)),
        None => (TransferStatus::Committed, None),
    })
}

/// A leg as the status read shows it.
pub fn leg_view(leg: &Leg) -> LegRequest {
    LegRequest {
        from_account: leg.from.to_string(),
        to_account: leg.to.to_string(),
        amount: format_minor(leg.amount.minor(), leg.currency),
        currency: leg.currency.to_string(),
    }
}
