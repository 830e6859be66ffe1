//! Opening accounts, deposits and withdrawals.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use walletd_core::ledger::{CashKind, Command, Reply};
use walletd_core::model::money::{format_minor, Amount};

use super::dry_run::{self, WriteParams};
use super::{account_id, currency, transaction_id, Api, ApiJson, ApiPath, ApiQuery};
use crate::errors::ApiError;

/// `POST /v1/accounts`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct OpenAccountRequest {
    /// 1 to 64 of `A-Z a-z 0-9 . _ : -`.
    #[schema(example = "alice")]
    pub account_id: String,
    /// ISO 4217 code; an account holds exactly one currency.
    #[schema(example = "USD")]
    pub currency: String,
}

/// The answer to opening an account.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountResponse {
    #[schema(example = "alice")]
    pub account_id: String,
    #[schema(example = "USD")]
    pub currency: String,
    /// False when the same account already existed in the same currency.
    pub created: bool,
}

/// Body of a deposit or withdrawal.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CashRequest {
    /// A positive decimal string with at most the currency's minor digits.
    #[schema(example = "100.00")]
    pub amount: String,
    #[schema(example = "USD")]
    pub currency: String,
    /// Idempotency key, unique per account: a retry with the same body gets the same answer.
    #[schema(example = "dep-0001")]
    pub transaction_id: String,
}

/// The balance after a deposit or withdrawal (for a retry: after the first attempt).
#[derive(Debug, Serialize, ToSchema)]
pub struct BalanceResponse {
    #[schema(example = "alice")]
    pub account_id: String,
    #[schema(example = "USD")]
    pub currency: String,
    #[schema(example = "100.00")]
    pub balance: String,
    /// Present, and `true`, on the answer to a dry run (`?dry_run=true`): the balance the
    /// request would leave; nothing was recorded.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// Open an account in one currency.
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", request_body = OpenAccountRequest,
    responses(
        (status = 201, description = "Opened", body = AccountResponse),
        (status = 200, description = "Already open in this currency", body = AccountResponse),
    ))]
pub async fn open_account(
    State(api): State<Api>,
    ApiJson(body): ApiJson<OpenAccountRequest>,
) -> Result<Response, ApiError> {
    let account = account_id("account_id", &body.account_id)?;
    let currency = currency(&body.currency)?;
    let command = Command::OpenAccount { account, currency };
    let result = api
        .client()
        .execute(command, false)
        .await
        .map_err(|e| api.unavailable(e))?;
    let created = match result? {
        Reply::Opened { created } => created,
        other => return Err(ApiError::unexpected_reply(other)),
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = AccountResponse {
        account_id: account.to_string(),
        currency: currency.to_string(),
        created,
    };
    let mut response = (status, axum::Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/accounts/{account}/balance")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Deposit money into an account (money enters the system).
///
/// A business refusal (`404`, `422`) is recorded: the same `transaction_id` gets the same
/// refusal forever, even once the account has changed. A `400` is not recorded.
#[utoipa::path(post, path = "/v1/accounts/{id}/deposit", tag = "accounts", request_body = CashRequest,
    params(("id" = String, Path, description = "Account id")),
    responses(
        (status = 200, description = "Deposited (or the retry of a deposit)", body = BalanceResponse),
    ))]
pub async fn deposit(
    State(api): State<Api>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<WriteParams>,
    ApiJson(body): ApiJson<CashRequest>,
) -> Result<axum::Json<BalanceResponse>, ApiError> {
    cash(api, CashKind::Deposit, id, body, params.dry_run).await
}

/// Withdraw money from an account (money leaves the system).
///
/// A business refusal (`404`, `422`) is recorded: the same `transaction_id` gets the same
/// refusal forever, even once the account has changed. A `400` is not recorded.
#[utoipa::path(post, path = "/v1/accounts/{id}/withdraw", tag = "accounts", request_body = CashRequest,
    params(("id" = String, Path, description = "Account id")),
    responses(
        (status = 200, description = "Withdrawn (or the retry of a withdrawal)", body = BalanceResponse),
    ))]
pub async fn withdraw(
    State(api): State<Api>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<WriteParams>,
    ApiJson(body): ApiJson<CashRequest>,
) -> Result<axum::Json<BalanceResponse>, ApiError> {
    cash(api, CashKind::Withdrawal, id, body, params.dry_run).await
}

async fn cash(
    api: Api,
    kind: CashKind,
    id: String,
    body: CashRequest,
    dry_run: bool,
) -> Result<axum::Json<BalanceResponse>, ApiError> {
    let account = account_id("account id", &id)?;
    let currency = currency(&body.currency)?;
    let amount = Amount::parse(&body.amount, currency)?;
    let transaction_id = transaction_id("transaction_id", &body.transaction_id)?;
    let command = match kind {
        CashKind::Deposit => Command::Deposit {
            account,
            amount,
            currency,
            transaction_id,
        },
        CashKind::Withdrawal => Command::Withdraw {
            account,
            amount,
            currency,
            transaction_id,
        },
    };
    let result = if dry_run {
        dry_run::command(&api, command).await?
    } else {
        (api.client().execute(command, false).await).map_err(|e| api.unavailable(e))?
    };
    match result? {
        Reply::Balance { balance } => Ok(axum::Json(BalanceResponse {
            account_id: account.to_string(),
            currency: currency.to_string(),
            balance: format_minor(balance, currency),
            dry_run,
        })),
        other => Err(ApiError::unexpected_reply(other)),
    }
}
