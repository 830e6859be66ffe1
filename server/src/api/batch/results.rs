//! Writing a batch's answer straight into the response body.
//!
//! One JSON object per item, the shape of [`BatchItemResult`](super::BatchItemResult),
//! written from borrowed fields: no per-item `String`s, no serializer state. Text that
//! needs no escaping (ids are validated to `[A-Za-z0-9._:-]`, codes are static) is copied
//! as it is; anything else goes through serde_json's string escaping.

use std::io::Write;

/// One item's result, borrowed from what decided it.
#[derive(Debug, Clone, Copy)]
pub struct ItemResult<'a> {
    pub index: usize,
    pub transaction_id: Option<&'a str>,
    pub http_status: u16,
    pub status: &'a str,
    pub code: Option<&'a str>,
    pub message: Option<&'a str>,
    pub status_url: Option<&'a str>,
}

/// `{"results":[` item, item, ... `]}`.
pub struct ResultsWriter {
    out: Vec<u8>,
    items: usize,
}

/// Bytes of a typical committed item's result, to size the body once.
const ITEM_BYTES_TYPICAL: usize = 96;

impl ResultsWriter {
    pub fn with_capacity(items: usize) -> ResultsWriter {
        let mut out = Vec::with_capacity(16 + items * ITEM_BYTES_TYPICAL);
        out.extend_from_slice(b"{\"results\":[");
        ResultsWriter { out, items: 0 }
    }

    pub fn push(&mut self, item: ItemResult<'_>) {
        let out = &mut self.out;
        if self.items > 0 {
            out.push(b',');
        }
        self.items += 1;
        out.extend_from_slice(b"{\"index\":");
        out.extend_from_slice(itoa::Buffer::new().format(item.index).as_bytes());
        if let Some(transaction_id) = item.transaction_id {
            out.extend_from_slice(b",\"transaction_id\":");
            put_str(out, transaction_id);
        }
        out.extend_from_slice(b",\"http_status\":");
        out.extend_from_slice(itoa::Buffer::new().format(item.http_status).as_bytes());
        out.extend_from_slice(b",\"status\":");
        put_str(out, item.status);
        for (name, value) in [
            ("code", item.code),
            ("message", item.message),
            ("status_url", item.status_url),
        ] {
            if let Some(value) = value {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\":");
                put_str(out, value);
            }
        }
        out.push(b'}');
    }

    /// Closes the list; the answer to a dry run says so (`"dry_run":true`).
    pub fn finish(mut self, dry_run: bool) -> Vec<u8> {
        self.out.push(b']');
        if dry_run {
            self.out.extend_from_slice(b",\"dry_run\":true");
        }
        self.out.push(b'}');
        self.out
    }
}

/// Appends `text` as a JSON string.
fn put_str(out: &mut Vec<u8>, text: &str) {
    let plain = text
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
    if plain {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(out.by_ref(), text).expect("writing to a Vec cannot fail");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::super::BatchItemResult;
    use super::*;

    /// What serde writes for the documented type with the same fields.
    fn documented(item: &ItemResult<'_>) -> Value {
        serde_json::to_value(BatchItemResult {
            index: item.index,
            transaction_id: item.transaction_id.map(str::to_string),
            http_status: item.http_status,
            status: match item.status {
                "committed" => "committed",
                "pending" => "pending",
                "rejected" => "rejected",
                "cancelled" => "cancelled",
                _ => "error",
            },
            code: item.code.map(str::to_string),
            message: item.message.map(str::to_string),
            status_url: item.status_url.map(str::to_string),
        })
        .expect("serializable")
    }

    #[test]
    fn written_results_read_back_as_the_documented_type() {
        let plain = ItemResult {
            index: 0,
            transaction_id: Some("t-1.a:b_c"),
            http_status: 200,
            status: "committed",
            code: None,
            message: None,
            status_url: None,
        };
        let items = [
            plain,
            ItemResult {
                index: 1,
                http_status: 202,
                status: "pending",
                status_url: Some("/v1/transfers/alice/t-2"),
                ..plain
            },
            ItemResult {
                index: 2,
                http_status: 422,
                status: "rejected",
                code: Some("insufficient_funds"),
                message: Some("the source account's balance is too low"),
                ..plain
            },
            ItemResult {
                index: 12_345,
                transaction_id: Some("quote\" back\\slash \u{1} tab\t é 💰"),
                http_status: 400,
                status: "error",
                code: Some("invalid_field"),
                message: Some("transfers[12345]: missing field `amount`\n\"x\""),
                status_url: None,
            },
            ItemResult {
                transaction_id: None,
                ..plain
            },
        ];
        let mut writer = ResultsWriter::with_capacity(items.len());
        for item in &items {
            writer.push(*item);
        }
        let body: Value = serde_json::from_slice(&writer.finish(false)).expect("valid JSON");
        let expected: Vec<Value> = items.iter().map(documented).collect();
        assert_eq!(body, serde_json::json!({ "results": expected }));

        let empty: Value =
            serde_json::from_slice(&ResultsWriter::with_capacity(0).finish(false)).expect("valid");
        assert_eq!(empty, serde_json::json!({ "results": [] }));
    }
}
