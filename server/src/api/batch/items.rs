//! Reading a batch body in one pass.
//!
//! The body is walked once by serde_json, and each item is validated into a [`Command`] as
//! soon as its object closes: no item is scanned twice (once to find its end, once to parse
//! it, as reading items as raw JSON did), and no generic JSON tree is built. An item that
//! is well-formed JSON but not a valid transfer (a missing field, a number for a string,
//! an amount that does not parse) becomes a per-item error; only a body that is not JSON,
//! or not `{"transfers": [...]}`, fails as a whole.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use walletd_core::ledger::Command;

use super::super::json_error;
use super::super::transfers::{parse_transfer_fields, TransferFields};
use crate::errors::ApiError;

/// A batch body, read and validated.
#[derive(Debug, Default)]
pub struct BatchItems {
    /// Items in the request.
    pub count: usize,
    /// The valid items as transfer commands, in request order.
    pub commands: Vec<Command>,
    /// The request position of each of `commands`.
    pub positions: Vec<u32>,
    /// The items refused before reaching the ledger, in request order: position, the
    /// item's transaction id when it had a string one, and why.
    pub failed: Vec<(usize, Option<String>, ApiError)>,
}

/// Reads `body` as `{"transfers": [...]}` with at most `items_max` items. A larger batch is
/// `batch_too_large` (its items are counted, not validated).
pub fn read_batch(body: &[u8], items_max: usize) -> Result<BatchItems, ApiError> {
    // One check of the whole body spares serde_json a UTF-8 check of every string it lends.
    let body = std::str::from_utf8(body).map_err(|error| {
        ApiError::malformed_json(format!("the body is not valid JSON: not UTF-8: {error}"))
    })?;
    // Room for the items a body of this size can hold, so the vectors never reallocate.
    let capacity = (body.len() / ITEM_BYTES_MIN).min(items_max);
    let mut deserializer = serde_json::Deserializer::from_str(body);
    let items = deserializer
        .deserialize_map(BodyVisitor {
            items_max,
            capacity,
        })
        .and_then(|items| deserializer.end().map(|()| items))
        .map_err(json_error)?;
    if items.count > items_max {
        return Err(ApiError::batch_too_large(items.count, items_max));
    }
    Ok(items)
}

/// Bytes of the shortest valid item, `{"from_account":"a",...,"transaction_id":"x"}`: a
/// body holds at most its length over this many valid items.
const ITEM_BYTES_MIN: usize = 88;

/// The top-level object: `transfers` is required, other keys are ignored.
struct BodyVisitor {
    items_max: usize,
    /// Items to make room for.
    capacity: usize,
}

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = BatchItems;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with a `transfers` array")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BatchItems, A::Error> {
        let mut items = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key != "transfers" {
                map.next_value::<IgnoredAny>()?;
            } else if items.is_some() {
                return Err(de::Error::duplicate_field("transfers"));
            } else {
                items = Some(map.next_value_seed(ItemsSeed {
                    items_max: self.items_max,
                    capacity: self.capacity,
                })?);
            }
        }
        items.ok_or_else(|| de::Error::missing_field("transfers"))
    }
}

/// The `transfers` array.
struct ItemsSeed {
    items_max: usize,
    capacity: usize,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed {
    type Value = BatchItems;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<BatchItems, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed {
    type Value = BatchItems;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of transfers")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BatchItems, A::Error> {
        let mut items = BatchItems {
            commands: Vec::with_capacity(self.capacity),
            positions: Vec::with_capacity(self.capacity),
            ..BatchItems::default()
        };
        while items.count < self.items_max {
            let Some(item) = seq.next_element::<Item>()? else {
                return Ok(items);
            };
            let index = items.count;
            items.count += 1;
            match item.validate(index) {
                Ok(command) => {
                    items.commands.push(command);
                    items.positions.push(index as u32);
                }
                Err((transaction_id, error)) => items.failed.push((index, transaction_id, error)),
            }
        }
        // Over the limit: count the rest for the error, without validating them.
        while seq.next_element::<IgnoredAny>()?.is_some() {
            items.count += 1;
        }
        Ok(items)
    }
}

/// One item as sent.
enum Item<'a> {
    Object(Fields<'a>),
    /// Not an object: what it is instead.
    Other(&'static str),
}

/// The fields of an item object, as sent.
#[derive(Default)]
struct Fields<'a> {
    from_account: Option<Text<'a>>,
    to_account: Option<Text<'a>>,
    amount: Option<Text<'a>>,
    currency: Option<Text<'a>>,
    transaction_id: Option<Text<'a>>,
    /// The first field given twice.
    duplicate: Option<&'static str>,
}

/// A field's value: text (borrowed from the body when it holds no escapes), or what other
/// JSON type it is.
enum Text<'a> {
    Str(Cow<'a, str>),
    Other(&'static str),
}

/// The field names of an item; the derived identifier matches them without allocating.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Key {
    FromAccount,
    ToAccount,
    Amount,
    Currency,
    TransactionId,
    #[serde(other)]
    Unknown,
}

impl Item<'_> {
    /// The item as a transfer command, or its transaction id (when it had a string one)
    /// and why it is refused.
    fn validate(self, index: usize) -> Result<Command, (Option<String>, ApiError)> {
        let fields = match self {
            Item::Object(fields) => fields,
            Item::Other(kind) => {
                let message = format!("transfers[{index}]: expected a transfer object, got {kind}");
                return Err((None, ApiError::invalid_field(message)));
            }
        };
        let transaction_id = match &fields.transaction_id {
            Some(Text::Str(text)) => Some(text.as_ref()),
            _ => None,
        };
        let refuse = |message: String| {
            let message = format!("transfers[{index}]: {message}");
            (
                transaction_id.map(str::to_string),
                ApiError::invalid_field(message),
            )
        };
        if let Some(name) = fields.duplicate {
            return Err(refuse(format!("duplicate field `{name}`")));
        }
        let request = (|| {
            Ok(TransferFields {
                from_account: text(&fields.from_account, "from_account")?,
                to_account: text(&fields.to_account, "to_account")?,
                amount: text(&fields.amount, "amount")?,
                currency: text(&fields.currency, "currency")?,
                transaction_id: text(&fields.transaction_id, "transaction_id")?,
            })
        })()
        .map_err(refuse)?;
        parse_transfer_fields(request)
            .map(Command::Transfer)
            .map_err(|error| (transaction_id.map(str::to_string), error))
    }
}

/// A field's text, or why it has none.
fn text<'f>(value: &'f Option<Text<'_>>, name: &str) -> Result<&'f str, String> {
    match value {
        Some(Text::Str(text)) => Ok(text),
        Some(Text::Other(kind)) => Err(format!("`{name}` must be a string, got {kind}")),
        None => Err(format!("missing field `{name}`")),
    }
}

/// The `visit_*` methods for the scalars other than strings, each answering `$value::Other`
/// with the JSON type it met.
macro_rules! other_scalars {
    ($value:ident) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<$value<'de>, E> {
            Ok($value::Other("a boolean"))
        }

        fn visit_i64<E: de::Error>(self, _: i64) -> Result<$value<'de>, E> {
            Ok($value::Other("a number"))
        }

        fn visit_u64<E: de::Error>(self, _: u64) -> Result<$value<'de>, E> {
            Ok($value::Other("a number"))
        }

        fn visit_f64<E: de::Error>(self, _: f64) -> Result<$value<'de>, E> {
            Ok($value::Other("a number"))
        }

        fn visit_unit<E: de::Error>(self) -> Result<$value<'de>, E> {
            Ok($value::Other("null"))
        }
    };
}

impl<'de> Deserialize<'de> for Item<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Item<'de>, D::Error> {
        deserializer.deserialize_any(ItemVisitor)
    }
}

struct ItemVisitor;

impl<'de> Visitor<'de> for ItemVisitor {
    type Value = Item<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a transfer object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Item<'de>, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key::<Key>()? {
            let (slot, name) = match key {
                Key::FromAccount => (&mut fields.from_account, "from_account"),
                Key::ToAccount => (&mut fields.to_account, "to_account"),
                Key::Amount => (&mut fields.amount, "amount"),
                Key::Currency => (&mut fields.currency, "currency"),
                Key::TransactionId => (&mut fields.transaction_id, "transaction_id"),
                Key::Unknown => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let value = map.next_value::<Text>()?;
            if slot.is_some() {
                fields.duplicate.get_or_insert(name);
            } else {
                *slot = Some(value);
            }
        }
        Ok(Item::Object(fields))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Item<'de>, A::Error> {
        drain_seq(seq).map(|()| Item::Other("an array"))
    }

    fn visit_borrowed_str<E: de::Error>(self, _: &'de str) -> Result<Item<'de>, E> {
        Ok(Item::Other("a string"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Item<'de>, E> {
        Ok(Item::Other("a string"))
    }

    other_scalars!(Item);
}

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Text<'de>, D::Error> {
        deserializer.deserialize_any(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Text<'de>, E> {
        Ok(Text::Str(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Text<'de>, E> {
        Ok(Text::Str(Cow::Owned(text.to_string())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Text<'de>, E> {
        Ok(Text::Str(Cow::Owned(text)))
    }

    other_scalars!(Text);

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Text<'de>, A::Error> {
        drain_seq(seq).map(|()| Text::Other("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Text<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Text::Other("an object"))
    }
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: &str) -> Result<BatchItems, ApiError> {
        read_batch(body.as_bytes(), 4)
    }

    fn item(id: &str) -> String {
        format!(
            r#"{{"from_account":"a","to_account":"b","amount":"1.25","currency":"USD","transaction_id":"{id}"}}"#
        )
    }

    #[test]
    fn valid_items_become_commands_with_their_positions() {
        let body = format!(
            r#"{{"note":[1,{{}}],"transfers":[{},{}]}}"#,
            item("t1"),
            item("t2")
        );
        let items = read(&body).expect("a batch");
        assert_eq!(items.count, 2);
        assert_eq!(items.positions, vec![0, 1]);
        assert!(items.failed.is_empty());
        let ids: Vec<String> = items
            .commands
            .iter()
            .map(|c| match c {
                Command::Transfer(t) => {
                    format!("{} {} {}", t.transaction_id, t.from, t.amount.minor())
                }
                other => panic!("not a transfer: {other:?}"),
            })
            .collect();
        assert_eq!(ids, vec!["t1 a 125", "t2 a 125"]);
        // The shortest valid item fits the room made for it.
        let body = format!(r#"{{"transfers":[{}]}}"#, item("x"));
        let items = read(&body).expect("a batch");
        assert!(items.commands.capacity() >= 1, "{}", body.len());
        let shortest = r#"{"from_account":"a","to_account":"b","amount":"1","currency":"USD","transaction_id":"x"}"#;
        assert_eq!(shortest.len(), ITEM_BYTES_MIN);
    }

    #[test]
    fn escaped_text_is_read_like_plain_text() {
        let body = r#"{"transfers":[{"from_account":"\u0061","to_account":"b","amount":"1","currency":"US\u0044","transaction_id":"x"}]}"#;
        let items = read(body).expect("a batch");
        match items.commands[..] {
            [Command::Transfer(t)] => assert_eq!(
                (t.from.as_str(), t.currency.to_string()),
                ("a", "USD".into())
            ),
            _ => panic!("{items:?}"),
        }
    }

    #[test]
    fn a_bad_item_is_refused_alone_and_says_why() {
        let cases = [
            (r#"5"#, "expected a transfer object, got a number", None),
            (
                r#"[1,[2]]"#,
                "expected a transfer object, got an array",
                None,
            ),
            (
                r#"{"from_account":"a"}"#,
                "missing field `to_account`",
                None,
            ),
            (
                r#"{"from_account":"a","to_account":"b","amount":12,"currency":"USD","transaction_id":"n1"}"#,
                "`amount` must be a string, got a number",
                Some("n1"),
            ),
            (
                r#"{"from_account":"a","to_account":"b","amount":"1","currency":{"x":[1]},"transaction_id":"n2"}"#,
                "`currency` must be a string, got an object",
                Some("n2"),
            ),
            (
                r#"{"from_account":"a","from_account":"c","to_account":"b","amount":"1","currency":"USD","transaction_id":"n3"}"#,
                "duplicate field `from_account`",
                Some("n3"),
            ),
            (
                r#"{"from_account":"a","to_account":"b","amount":"1","currency":"USD","transaction_id":7}"#,
                "`transaction_id` must be a string, got a number",
                None,
            ),
        ];
        for (bad, message, transaction_id) in cases {
            let body = format!(r#"{{"transfers":[{},{bad},{}]}}"#, item("ok1"), item("ok2"));
            let items = read(&body).unwrap_or_else(|e| panic!("{bad}: {e:?}"));
            assert_eq!(
                (items.count, items.positions.clone()),
                (3, vec![0, 2]),
                "{bad}"
            );
            let [(index, id, error)] = &items.failed[..] else {
                panic!("{bad}: {:?}", items.failed)
            };
            assert_eq!((*index, id.as_deref()), (1, transaction_id), "{bad}");
            assert_eq!(error.code, "invalid_field", "{bad}");
            assert_eq!(error.message, format!("transfers[1]: {message}"), "{bad}");
        }
        // A well-formed item the ledger cannot accept keeps the validation's own error.
        let body = r#"{"transfers":[{"from_account":"a","to_account":"b","amount":"1,00","currency":"USD","transaction_id":"m"}]}"#;
        let items = read(body).expect("a batch");
        assert_eq!(items.failed[0].2.code, "invalid_amount");
        assert_eq!(items.failed[0].1.as_deref(), Some("m"));
    }

    #[test]
    fn a_body_that_is_not_a_batch_fails_whole() {
        let cases = [
            (r#"{"transfers":"no"}"#, "invalid_field"),
            (r#"{"other":[]}"#, "invalid_field"),
            (r#"{"transfers":[],"transfers":[]}"#, "invalid_field"),
            (r#"[]"#, "invalid_field"),
            (r#"{"transfers":[{"from_account":"a"]}"#, "malformed_json"),
            (r#"{"transfers":[]} x"#, "malformed_json"),
            (r#"{"transfers":["#, "malformed_json"),
        ];
        for (body, code) in cases {
            let error = read(body).expect_err(body);
            assert_eq!(error.code, code, "{body}: {}", error.message);
        }
        let error = read_batch(b"{\"transfers\":[\"\xff\"]}", 4).expect_err("not UTF-8");
        assert_eq!(error.code, "malformed_json", "{}", error.message);
    }

    #[test]
    fn an_oversized_batch_is_counted_not_validated() {
        let body = format!(
            r#"{{"transfers":[{},{},{},{},{},{{"bad":1}}]}}"#,
            item("1"),
            item("2"),
            item("3"),
            item("4"),
            item("5")
        );
        let error = read(&body).expect_err("too large");
        assert_eq!(error.code, "batch_too_large");
        assert!(error.message.contains("got 6"), "{}", error.message);
        assert!(read(r#"{"transfers":[]}"#)
            .expect("empty")
            .commands
            .is_empty());
    }
}
