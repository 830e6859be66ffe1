//! The event feed in the document: its `200` is NDJSON, one [`EVENT_SCHEMA`] per line, with
//! the schema written from the same table as the lines ([`crate::feed::schema::EVENT_TYPES`]).

use serde_json::{json, Map, Value};

use walletd_core::model::transaction::LEGS_MAX;

use super::schema_ref;
use crate::feed::schema::{field_values, EVENT_TYPES, SCHEMA_VERSION};

/// The path of the feed.
pub const PATH: &str = "/v1/events";
/// The component schema of one line.
pub const EVENT_SCHEMA: &str = "FeedEvent";

/// One line of the feed: a `oneOf`, one branch per event type.
pub fn event_schema() -> Value {
    let branches: Vec<Value> = EVENT_TYPES
        .iter()
        .map(|event| {
            let mut properties = Map::new();
            properties.insert("v".into(), json!({"const": SCHEMA_VERSION, "description": "The schema version."}));
            properties.insert("lsn".into(), schema_ref("Lsn"));
            properties.insert(
                "timestamp".into(),
                json!({"type": "string", "format": "date-time", "description": "When the record was written, RFC 3339."}),
            );
            properties.insert("type".into(), json!({"const": event.name}));
            for field in event.fields.iter().chain(event.optional) {
                properties.insert((*field).into(), field_schema(field));
            }
            let mut required = vec!["v", "lsn", "timestamp", "type"];
            required.extend_from_slice(event.fields);
            json!({
                "type": "object",
                "title": event.name,
                "description": event.description,
                "required": required,
                "properties": properties,
            })
        })
        .collect();
    json!({
        "oneOf": branches,
        "description": format!("One record of a partition's log, schema version {SCHEMA_VERSION} \
            (`v`). A new field, type or meaning comes with a new version; a consumer must stop \
            at a version it does not know."),
    })
}

fn field_schema(field: &str) -> Value {
    if let Some(values) = field_values(field) {
        return json!({"type": "string", "enum": values});
    }
    match field {
        "account_id" | "from_account" | "to_account" => schema_ref("AccountId"),
        "transaction_id" => schema_ref("TransactionId"),
        "refund_of" => json!({
            "$ref": "#/components/schemas/TransactionId",
            "description": "The transaction id of the transfer refunded (from `to_account`).",
        }),
        "remote" => json!({
            "type": "boolean",
            "description": "Whether `to_account` lives on another partition.",
        }),
        "currency" => schema_ref("Currency"),
        "amount" => json!({
            "type": "string",
            "pattern": "^[0-9]+(\\.[0-9]+)?$",
            "description": "A decimal string in `currency`, e.g. `12.34`.",
        }),
        "amount_minor" => json!({
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": "An amount in minor units of a currency the line does not name.",
        }),
        "captured_amount" => json!({
            "type": "string",
            "pattern": "^[0-9]+(\\.[0-9]+)?$",
            "description": "What of the hold's `amount` was captured, in `currency`.",
        }),
        "expires_at" => json!({
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339: when the hold expires, by its home's clock.",
        }),
        "reason" => json!({
            "type": "string",
            "description": "Why the transfer or transaction did not happen, or how a hold ended: \
                the codes of `TransferResponse.code`.",
        }),
        "legs" => json!({
            "type": "array",
            "minItems": 1,
            "maxItems": LEGS_MAX,
            "description": "A multi-leg transaction's legs, in its order: each moves `amount` \
                of `currency` from `from_account` to `to_account`. What it does to an account \
                is the net of the legs naming it.",
            "items": {
                "type": "object",
                "required": ["from_account", "to_account", "amount", "currency"],
                "properties": {
                    "from_account": schema_ref("AccountId"),
                    "to_account": schema_ref("AccountId"),
                    "amount": field_schema("amount"),
                    "currency": schema_ref("Currency"),
                },
            },
        }),
        "failed_leg" => json!({
            "type": "integer",
            "minimum": 0,
            "maximum": LEGS_MAX - 1,
            "description": "The index in the transaction's `legs` (from 0) of the leg that failed.",
        }),
        other => panic!("the feed field {other} has no schema"),
    }
}

/// Writes the feed's `200`: NDJSON lines and the `Durable-Lsn` header.
pub fn describe_answer(operation: &mut Value) {
    assert!(operation.is_object(), "{PATH} is documented");
    operation["responses"]["200"] = json!({
        "description": "The partition's durable records after `after_lsn`, oldest first, at \
            most `limit`, one JSON object per line (each a `FeedEvent`, ending with a newline); an empty \
            body when none came within `wait_ms`. Follow with the last line's `lsn` as the \
            next `after_lsn`.",
        "headers": {"Durable-Lsn": {
            "required": true,
            "description": "The partition's last durable lsn when the answer was read: a \
                consumer whose last line has it has caught up.",
            "schema": schema_ref("Lsn"),
        }},
        "content": {"application/x-ndjson": {
            "schema": schema_ref(EVENT_SCHEMA),
        }},
    });
}
