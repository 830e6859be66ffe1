//! `GET /openapi.json`: the OpenAPI 3.1 document of this server.
//!
//! The operations, their success responses and the response schemas come from the handlers
//! and types (utoipa). What schema-driven tools rely on most is then written exactly, from
//! the rules the server enforces, and for this server's options (its batch bound, whether it
//! wants a token):
//! - [`requests`]: every request field: type, pattern, length, values; path and query
//!   parameters.
//! - [`responses`]: every error status of every operation with the codes it carries.
//! - [`events`]: the event feed's NDJSON answer and the schema of its lines.
//!
//! The contract test (`openapi/tests.rs`) sends requests generated from the document to a
//! real router and holds the server to it.

mod events;
mod requests;
mod responses;
#[cfg(test)]
mod tests;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use utoipa::OpenApi;

use super::{
    accounts, batch, cluster, events as feed, holds, metrics, queries, refunds, transactions,
    transfers, Api, ApiOptions,
};
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
        feed::events,
        transfers::transfer,
        batch::transfers,
        transfers::status,
        refunds::refund,
        holds::place,
        holds::capture,
        holds::void,
        transactions::transact,
        cluster::cluster,
        super::healthz,
        metrics::render,
        document,
    ),
    components(schemas(
        ErrorBody,
        accounts::AccountResponse,
        accounts::BalanceResponse,
        queries::AccountBalance,
        queries::HistoryPage,
        queries::MovementView,
        transfers::TransferResponse,
        transfers::TransferStatusResponse,
        refunds::RefundResponse,
        holds::HoldResponse,
        transactions::TransactionResponse,
        transactions::LegRequest,
        batch::BatchItemResult,
        batch::BatchResponse,
        cluster::ClusterResponse,
        cluster::ClusterNode,
        cluster::ClusterPartition,
    )),
    tags(
        (name = "accounts", description = "Accounts, deposits, withdrawals, balances, history"),
        (name = "transfers", description = "Transfers between accounts"),
        (name = "events", description = "The event feed: each partition's durable log records, oldest first"),
        (name = "operations", description = "Health, metrics, this document"),
    )
)]
struct ApiDoc;

/// The route kept for the seed's clients, served by the transfer handler.
const TRANSFER_ALIAS: &str = "/v1/wallet/balance_transper";
const TRANSFER_PATH: &str = "/v1/wallet/balance_transfer";

/// A JSON reference to a component schema.
fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The document of a server running with `options` over `partitions` partitions.
pub fn document_for(options: &ApiOptions, partitions: u32) -> Value {
    assert!(partitions > 0);
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document is JSON");
    let schemas = &mut doc["components"]["schemas"];
    for (name, schema) in requests::schemas(options) {
        schemas[name] = schema;
    }
    schemas[events::EVENT_SCHEMA] = events::event_schema();
    for (component, field, values) in responses::enumerations() {
        let property = &mut schemas[component]["properties"][field];
        assert!(property.is_object(), "{component}.{field} is documented");
        property["enum"] = json!(values);
    }
    if options.api_token.is_some() {
        doc["components"]["securitySchemes"] =
            json!({"bearer": {"type": "http", "scheme": "bearer"}});
    }
    let paths = doc["paths"].as_object_mut().expect("paths");
    for (path, item) in paths.iter_mut() {
        let item = item.as_object_mut().expect("a path item");
        for (method, operation) in item.iter_mut() {
            describe_operation(method, path, operation, options, partitions);
        }
    }
    events::describe_answer(&mut doc["paths"][events::PATH]["get"]);
    let mut alias = doc["paths"][TRANSFER_PATH].clone();
    alias["post"]["operationId"] = json!("transfer_alias");
    alias["post"]["deprecated"] = json!(true);
    alias["post"]["summary"] = json!(format!(
        "The same as {TRANSFER_PATH}, under the seed's spelling"
    ));
    doc["paths"][TRANSFER_ALIAS] = alias;
    doc
}

/// Writes the exact parameters, request body, error responses and security of one operation.
fn describe_operation(
    method: &str,
    path: &str,
    operation: &mut Value,
    options: &ApiOptions,
    partitions: u32,
) {
    match requests::parameters(method, path, options, partitions) {
        Some(parameters) => operation["parameters"] = json!(parameters),
        None => {
            if let Some(operation) = operation.as_object_mut() {
                operation.remove("parameters");
            }
        }
    }
    if let Some(body) = operation.get_mut("requestBody") {
        // A capture's body may be left out altogether (all of the hold).
        body["required"] = json!(!path.ends_with("/capture"));
    }
    let responses = operation["responses"]
        .as_object_mut()
        .expect("every operation has responses");
    responses.retain(|status, _| status.starts_with('2'));
    for (status, response) in responses::error_responses(method, path, options) {
        responses.insert(status.to_string(), response);
    }
    if path.starts_with("/v1/") && options.api_token.is_some() {
        operation["security"] = json!([{ "bearer": [] }]);
    }
}

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn document(State(api): State<Api>) -> Response {
    let json = document_for(api.options(), api.client().partitions()).to_string();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json,
    )
        .into_response()
}
