//! Reads: an account's balance (now, or as of a log position or time) and its history.
//!
//! "Now" asks the partition itself (answered once everything before it is durable). Past
//! balances and history are read from the partition's history index
//! ([`crate::history::index`]), brought up to the last durable record first; on a cluster
//! node, for a partition another node runs, the request is forwarded to that node
//! ([`super::forward`]).

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use walletd_core::ledger::LedgerError;
use walletd_core::log::replay::{AsOf, MovementKind};
use walletd_core::model::event::Lsn;
use walletd_core::model::ids::AccountId;
use walletd_core::model::money::{format_minor, Currency};
use walletd_core::model::partition::PartitionId;
use walletd_runtime::driver::{Query, QueryAnswer};

use super::{account_id, currency, forward, Api, ApiPath, ApiQuery};
use crate::errors::ApiError;
use crate::history::index::PartitionIndex;
use crate::history::LogError;
use crate::rfc3339;

/// Default and largest page of `GET /v1/accounts/{id}/history`.
pub const HISTORY_LIMIT_DEFAULT: usize = 50;
pub const HISTORY_LIMIT_MAX: usize = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BalanceParams {
    /// The account's currency; a different one is a `422 currency_mismatch`.
    pub currency: Option<String>,
    /// Balance after the partition's log record with this lsn.
    pub as_of_lsn: Option<Lsn>,
    /// Balance at this RFC 3339 instant, e.g. `2024-05-01T12:00:00Z` (before 1970, no
    /// account existed).
    pub as_of: Option<String>,
}

/// An account's figures. `held` is money on its way out (a cross-partition transfer not yet
/// final), `incoming` money on its way in (not yet spendable).
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountBalance {
    #[schema(example = "alice")]
    pub account_id: String,
    #[schema(example = "USD")]
    pub currency: String,
    #[schema(example = "87.66")]
    pub balance: String,
    #[schema(example = "0.00")]
    pub held: String,
    #[schema(example = "0.00")]
    pub incoming: String,
    /// For a historical balance: the last log record (of the account's partition) it covers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of_lsn: Option<Lsn>,
    /// For a historical balance: the time of that record, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<String>,
}

/// The balance of an account, now or in the past.
#[utoipa::path(get, path = "/v1/accounts/{id}/balance", tag = "accounts",
    params(("id" = String, Path, description = "Account id"), BalanceParams),
    responses(
        (status = 200, description = "The balance", body = AccountBalance),
    ))]
pub async fn balance(
    State(api): State<Api>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<BalanceParams>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let account = account_id("account id", &id)?;
    let wanted = params.currency.as_deref().map(currency).transpose()?;
    let as_of = match (params.as_of_lsn, params.as_of.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_query(
                "give either as_of_lsn or as_of, not both",
            ))
        }
        (Some(lsn), None) => AsOf::Lsn(lsn),
        (None, Some(text)) => {
            AsOf::Time(rfc3339::parse_us_from_epoch(text).map_err(ApiError::invalid_query)?)
        }
        (None, None) => {
            return balance_now(&api, account, wanted)
                .await
                .map(IntoResponse::into_response)
        }
    };
    let partition = api.client().partition_of(&account);
    let read = read_index(&api, partition, &uri, &headers, move |index| {
        index.balance(&account, as_of)
    });
    let point = match read.await? {
        Read::Here(point) => point.ok_or(LedgerError::AccountNotFound(account))?,
        Read::Forwarded(response) => return Ok(response),
    };
    let figures = point.balance;
    check_currency(account, figures.currency, wanted)?;
    tracing::debug!(partition, lsn = figures.lsn, "historical balance");
    let c = figures.currency;
    Ok(axum::Json(AccountBalance {
        account_id: account.to_string(),
        currency: c.to_string(),
        balance: format_minor(figures.balance, c),
        held: format_minor(figures.held, c),
        incoming: format_minor(figures.incoming, c),
        as_of_lsn: Some(figures.lsn),
        as_of: (figures.lsn > 0).then(|| rfc3339::format_us(point.timestamp)),
    })
    .into_response())
}

async fn balance_now(
    api: &Api,
    account: AccountId,
    wanted: Option<Currency>,
) -> Result<axum::Json<AccountBalance>, ApiError> {
    let found = match api.ask(Query::Account(account)).await? {
        QueryAnswer::Account(found) => found.ok_or(LedgerError::AccountNotFound(account))?,
        other => return Err(ApiError::unexpected_answer(&other)),
    };
    check_currency(account, found.currency, wanted)?;
    let c = found.currency;
    Ok(axum::Json(AccountBalance {
        account_id: account.to_string(),
        currency: c.to_string(),
        balance: format_minor(found.balance, c),
        held: format_minor(found.held, c),
        incoming: format_minor(found.incoming, c),
        as_of_lsn: None,
        as_of: None,
    }))
}

fn check_currency(
    account: AccountId,
    actual: Currency,
    wanted: Option<Currency>,
) -> Result<(), ApiError> {
    match wanted {
        Some(got) if got != actual => Err(LedgerError::CurrencyMismatch {
            account,
            expected: actual,
            got,
        }
        .into()),
        _ => Ok(()),
    }
}

/// An answer read from this node's index, or the answer of the node that keeps the log.
enum Read<T> {
    Here(T),
    Forwarded(Response),
}

/// Runs `read` on the history index of `partition` if it runs here; otherwise forwards the
/// request (`uri`, with the client's `headers`) to the node that keeps its log, once.
async fn read_index<T: Send + 'static>(
    api: &Api,
    partition: PartitionId,
    uri: &Uri,
    headers: &HeaderMap,
    read: impl FnOnce(&PartitionIndex) -> Result<T, LogError> + Send + 'static,
) -> Result<Read<T>, ApiError> {
    let unavailable = |message: String| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "history_unavailable",
            message,
        )
    };
    let history = api
        .history()
        .ok_or_else(|| unavailable("this node keeps no logs to answer history from".into()))?;
    match history.with_index(partition, read).await {
        Ok(found) => Ok(Read::Here(found)),
        Err(error @ LogError::NotLocal(_)) => match history.forward_address(partition) {
            Some(http) if !forward::was_forwarded(headers) => {
                forward::forward_read(&api.options().forward_http, &http, uri, headers)
                    .await
                    .map(Read::Forwarded)
            }
            _ => Err(unavailable(error.to_string())),
        },
        Err(error @ (LogError::Io { .. } | LogError::Corrupt { .. })) => {
            tracing::error!(partition, %error, "log unreadable for a history query");
            Err(ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "log_unreadable",
                error.to_string(),
            ))
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// The account's currency; a different one is a `422 currency_mismatch`.
    pub currency: Option<String>,
    /// Movements per page: default 50, at most 1000.
    pub limit: Option<usize>,
    /// Cursor: only movements with a smaller lsn (pass the previous page's `next_before_lsn`).
    pub before_lsn: Option<Lsn>,
}

/// One change of an account's available balance or held amount.
#[derive(Debug, Serialize, ToSchema)]
pub struct MovementView {
    /// Position in the account's partition log.
    pub lsn: Lsn,
    /// RFC 3339.
    pub timestamp: String,
    /// `deposit`, `withdrawal`, `transfer_out`, `transfer_in`, `hold` (cross-partition
    /// transfer out started), `hold_captured` (it committed), `hold_released` (it was
    /// cancelled: money back), `credit_in` (cross-partition transfer in committed). A
    /// multi-leg transaction moves the account's net over its legs with the same kinds:
    /// `transfer_out` or `transfer_in` within one partition; across partitions `hold`, then
    /// `hold_captured` or `hold_released`, for a net debit, and `credit_in` for a net credit
    /// once committed.
    pub kind: &'static str,
    pub amount: String,
    /// Signed change of the available balance, e.g. `-12.34`.
    pub balance_change: String,
    pub transaction_id: String,
    /// The other account of a transfer; absent for deposits, withdrawals and multi-leg
    /// transactions (which have no one other account).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counterparty: Option<String>,
    pub balance_after: String,
    pub held_after: String,
}

/// A page of movements, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    pub account_id: String,
    pub currency: String,
    pub movements: Vec<MovementView>,
    /// Pass as `before_lsn` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before_lsn: Option<Lsn>,
    /// The last log record (of the account's partition) the page reflects: every movement
    /// up to it is in this page or an older one.
    pub lsn: Lsn,
}

/// The API name of a movement kind.
pub fn kind_name(kind: MovementKind) -> &'static str {
    match kind {
        MovementKind::Deposit => "deposit",
        MovementKind::Withdrawal => "withdrawal",
        MovementKind::TransferOut => "transfer_out",
        MovementKind::TransferIn => "transfer_in",
        MovementKind::Hold => "hold",
        MovementKind::HoldCaptured => "hold_captured",
        MovementKind::HoldReleased => "hold_released",
        MovementKind::CreditIn => "credit_in",
    }
}

/// Formats a signed count of minor units.
pub fn format_signed(minor: i128, currency: Currency) -> String {
    let magnitude = format_minor(minor.unsigned_abs() as u64, currency);
    if minor < 0 {
        format!("-{magnitude}")
    } else {
        magnitude
    }
}

/// The movements of an account, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/accounts/{id}/history", tag = "accounts",
    params(("id" = String, Path, description = "Account id"), HistoryParams),
    responses(
        (status = 200, description = "A page of movements", body = HistoryPage),
    ))]
pub async fn history(
    State(api): State<Api>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<HistoryParams>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let account = account_id("account id", &id)?;
    let wanted = params.currency.as_deref().map(currency).transpose()?;
    let limit = params.limit.unwrap_or(HISTORY_LIMIT_DEFAULT);
    if limit == 0 || limit > HISTORY_LIMIT_MAX {
        return Err(ApiError::invalid_query(format!(
            "limit must be between 1 and {HISTORY_LIMIT_MAX}"
        )));
    }
    let before = params.before_lsn.unwrap_or(Lsn::MAX);
    let partition = api.client().partition_of(&account);
    let read = read_index(&api, partition, &uri, &headers, move |index| {
        index.page(&account, before, limit)
    });
    let page = match read.await? {
        Read::Here(page) => page.ok_or(LedgerError::AccountNotFound(account))?,
        Read::Forwarded(response) => return Ok(response),
    };
    check_currency(account, page.currency, wanted)?;
    let c = page.currency;
    let next_before_lsn = match (page.more, page.movements.last()) {
        (true, Some(last)) => Some(last.lsn),
        _ => None,
    };
    let movements = page
        .movements
        .iter()
        .map(|m| MovementView {
            lsn: m.lsn,
            timestamp: rfc3339::format_us(m.timestamp),
            kind: kind_name(m.kind),
            amount: m.amount.format(c),
            balance_change: format_signed(m.balance_change(), c),
            transaction_id: m.transaction_id.to_string(),
            counterparty: m.counterparty.map(|a| a.to_string()),
            balance_after: format_minor(m.balance_after, c),
            held_after: format_minor(m.held_after, c),
        })
        .collect();
    Ok(axum::Json(HistoryPage {
        account_id: account.to_string(),
        currency: c.to_string(),
        movements,
        next_before_lsn,
        lsn: page.lsn,
    })
    .into_response())
}
