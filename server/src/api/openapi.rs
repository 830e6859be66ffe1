//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers and types.

use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{accounts, batch, metrics, queries, transfers};
use crate::errors::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "walletd",
        description = "A sharded wallet ledger. Amounts are decimal strings in the currency's \
            minor units (USD \"12.34\", JPY \"500\"). Every error is `{code, message}` with a \
            stable `code`. Writes are idempotent by `transaction_id`. When the server runs \
            with an API token, every /v1 route needs `Authorization: Bearer <token>`."
    ),
    paths(
        accounts::open_account,
        accounts::deposit,
        accounts::withdraw,
        queries::balance,
        queries::history,
        transfers::transfer,
        batch::transfers,
        transfers::status,
        super::healthz,
        metrics::render,
        document,
    ),
    components(schemas(
        ErrorBody,
        accounts::OpenAccountRequest,
        accounts::AccountResponse,
        accounts::CashRequest,
        accounts::BalanceResponse,
        queries::AccountBalance,
        queries::HistoryPage,
        queries::MovementView,
        transfers::TransferRequest,
        transfers::TransferResponse,
        transfers::TransferStatusResponse,
        batch::BatchRequest,
        batch::BatchItemResult,
        batch::BatchResponse,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "accounts", description = "Accounts, deposits, withdrawals, balances, history"),
        (name = "transfers", description = "Transfers between accounts"),
        (name = "operations", description = "Health, metrics, this document"),
    )
)]
pub struct ApiDoc;

/// Declares the optional bearer token.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn document() -> Response {
    let json = ApiDoc::openapi()
        .to_json()
        .unwrap_or_else(|_| "{}".to_string());
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json,
    )
        .into_response()
}
