//! `POST /v1/transfers/{from_account}/{transaction_id}/refund`: money back along a committed
//! transfer, never more than it moved.
//!
//! The refund is a transfer of its own, from the original's destination back to its source,
//! under the client's `refund_id`. The API reads the original at its home (which account it
//! reached, in which currency) and hands the refund to the partition of that account, which
//! decides it against what is left to refund of the original (see
//! `walletd_core::ledger::refunds`). From there it is answered like a transfer: committed,
//! pending with the URL to poll, or refused with a code, and every retry of the same
//! `refund_id` gets the same answer.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;
use walletd_core::ledger::{Command, LedgerError, Refund, TransferRow, TransferStatus};
use walletd_core::model::event::TransferKey;
use walletd_core::model::money::{Amount, Currency};

use super::dry_run::{self, WriteParams};
use super::transfers::{execute_started, status_url, status_view, transfer_row};
use super::{account_id, transaction_id, Api, ApiJson, ApiPath, ApiQuery};
use crate::errors::ApiError;

/// A refund of a committed transfer.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct RefundRequest {
    /// The refund's own id: its idempotency key among the transfers from the original's
    /// destination, and its status URL's.
    #[schema(example = "r-0001")]
    pub refund_id: String,
    /// How much to refund, in the original's currency; absent: all that is left to refund.
    #[schema(example = "5.00")]
    pub amount: Option<String>,
}

/// The outcome of a refund request. A refused or cancelled refund also carries the error
/// `code` and `message`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RefundResponse {
    /// The refund's id (`refund_id`).
    #[schema(example = "r-0001")]
    pub transaction_id: String,
    /// The transfer refunded (its `transaction_id`, from `to_account`).
    #[schema(example = "t-0001")]
    pub refund_of: String,
    /// Where the money comes back from: the original's destination.
    pub from_account: String,
    /// Where it goes: the original's source.
    pub to_account: String,
    /// `committed`, `pending`, `rejected` or `cancelled`.
    #[schema(example = "committed")]
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'static str>,
    /// Where the refund is read (its amount among the rest), and a pending one polled.
    pub status_url: String,
    /// Present, and `true`, on the answer to a dry run (`?dry_run=true`): nothing was
    /// recorded.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// Refund a committed transfer, all of it or a part.
///
/// The refund moves money from the transfer's destination back to its source, as a transfer
/// of its own (`refund_id`), readable at its `status_url` with `refund_of` naming the
/// original. The refunds of one transfer never sum to more than it, however they race: one
/// that asks for more than is left is `rejected` with `refund_exceeds_original` (recorded,
/// like every business refusal). A transfer across partitions is refundable once its
/// destination has applied its Confirm (usually the same millisecond as its commit).
#[utoipa::path(post, path = "/v1/transfers/{from_account}/{transaction_id}/refund", tag = "transfers",
    request_body = RefundRequest,
    responses(
        (status = 200, description = "Refunded (or the retry of a refund)", body = RefundResponse),
        (status = 202, description = "Durably accepted, not final within the wait; poll `status_url` or retry", body = RefundResponse),
    ))]
pub async fn refund(
    State(api): State<Api>,
    ApiPath((from, id)): ApiPath<(String, String)>,
    ApiQuery(params): ApiQuery<WriteParams>,
    ApiJson(body): ApiJson<RefundRequest>,
) -> Result<Response, ApiError> {
    let original = TransferKey {
        from: account_id("from_account", &from)?,
        transaction_id: transaction_id("transaction_id", &id)?,
    };
    let refund_id = transaction_id("refund_id", &body.refund_id)?;
    // An amount no currency could hold is refused before the original is looked up; its
    // own currency's digits are checked once it is known.
    if let Some(text) = body.amount.as_deref() {
        let widest = (Currency::ALL.iter().copied())
            .max_by_key(|currency| currency.minor_units())
            .expect("currencies");
        Amount::parse(text, widest)?;
    }
    let row = committed_original(&api, original).await?;
    let amount = (body.amount.as_deref())
        .map(|text| Amount::parse(text, row.transfer.currency))
        .transpose()?;
    let from = row.transfer.to;
    let refund = Refund {
        refund_id,
        original,
        partition: api.client().partition_of(&from),
        amount,
    };
    let key = TransferKey {
        from,
        transaction_id: refund_id,
    };
    let command = Command::Refund(refund);
    let status = if params.dry_run {
        dry_run::started(&api, command).await?
    } else {
        let deadline = Instant::now() + api.options().transfer_wait;
        execute_started(&api, command, key, deadline).await?
    };
    let view = status_view(status);
    let body = RefundResponse {
        transaction_id: refund_id.to_string(),
        refund_of: original.transaction_id.to_string(),
        from_account: from.to_string(),
        to_account: original.from.to_string(),
        status: view.status,
        code: view.reason.map(|(code, _)| code),
        message: view.reason.map(|(_, message)| message),
        status_url: status_url(&key),
        dry_run: params.dry_run,
    };
    Ok((view.http, axum::Json(body)).into_response())
}

/// The row of the transfer to refund, read at its home: it must exist and be committed.
async fn committed_original(api: &Api, original: TransferKey) -> Result<TransferRow, ApiError> {
    let row = transfer_row(api, original).await?;
    if row.state.status() != TransferStatus::Committed {
        return Err(LedgerError::NotRefundable(original).into());
    }
    Ok(row)
}
