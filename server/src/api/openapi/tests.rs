//! The contract between the document and the server: requests generated from the document,
//! sent to the real router over a real engine (files, fsync), so the two cannot drift apart.
//!
//! - A request whose every field is valid per the document is never refused as invalid
//!   input (`400`, `413`) nor answered with a `5xx`.
//! - The same request with one field made invalid (too long, a foreign character, outside its
//!   enumeration or range, of another type) is refused with `400`.
//! - Every status answered is one the operation documents, and an error's `code` is one the
//!   document lists for that status.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use clap::Parser;
use http_body_util::BodyExt;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::{json, Map, Value};
use tower::ServiceExt;

use super::document_for;
use crate::api::{router, ApiOptions};
use crate::cli::{Cli, Command};
use crate::datadir::DataDir;

/// Valid requests generated per operation.
const VALID_CASES_PER_OPERATION: usize = 40;

/// Partitions of the server under test.
const PARTITIONS: u32 = 2;

/// The longest long-poll of the feed the test allows (`--feed-wait-max-ms`): generated
/// requests wait up to it, so it is short.
const FEED_WAIT_MAX_MS: u64 = 50;

/// Accounts the test opens, so that generated requests also reach the ledger's success paths.
const KNOWN_ACCOUNTS: &[&str] = &["alice", "bob"];

/// Values from the document's schemas.
struct Generator {
    doc: Value,
    runner: TestRunner,
}

impl Generator {
    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let name = reference.rsplit('/').next().expect("a named reference");
                &self.doc["components"]["schemas"][name]
            }
            None => schema,
        }
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        (0..n)
            .new_tree(&mut self.runner)
            .expect("a value")
            .current()
    }

    /// A valid value of `schema`.
    fn valid(&mut self, schema: &Value) -> Value {
        let schema = self.resolve(schema).clone();
        if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
            let pick = self.below(branches.len() as u64) as usize;
            return self.valid(&branches[pick]);
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            return values[self.below(values.len() as u64) as usize].clone();
        }
        match schema["type"].as_str() {
            Some("string") => self.valid_string(&schema),
            Some("integer") => {
                let min = schema["minimum"].as_u64().unwrap_or(0);
                let max = schema["maximum"].as_u64().unwrap_or(u64::MAX);
                // The bounds themselves, and values between them.
                match self.below(4) {
                    0 => json!(min),
                    1 => json!(max),
                    _ => json!((min..=max).new_tree(&mut self.runner).unwrap().current()),
                }
            }
            Some("object") => {
                let mut object = Map::new();
                let required: Vec<&str> = schema["required"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                // Fields the schema forbids together (`not: {required}`): never all of them.
                let apart: Vec<&str> = schema["not"]["required"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                for (name, property) in schema["properties"].as_object().expect("properties") {
                    let last_apart = apart.contains(&name.as_str())
                        && apart.iter().all(|n| *n == name || object.contains_key(*n));
                    if required.contains(&name.as_str()) || (!last_apart && self.below(2) == 0) {
                        object.insert(name.clone(), self.valid(property));
                    }
                }
                Value::Object(object)
            }
            Some("boolean") => json!(self.below(2) == 0),
            Some("array") => {
                // 0 to 3 items, but never fewer than the schema's least (a transaction's legs).
                let least = schema["minItems"].as_u64().unwrap_or(0);
                let items = self.below(4).max(least);
                (0..items).map(|_| self.valid(&schema["items"])).collect()
            }
            other => panic!("no generator for type {other:?} in {schema}"),
        }
    }

    fn valid_string(&mut self, schema: &Value) -> Value {
        if schema["format"] == "date-time" {
            return json!(self.date_time());
        }
        let pattern = schema["pattern"].as_str().expect("strings have a pattern");
        let unanchored = pattern.trim_start_matches('^').trim_end_matches('$');
        let text = proptest::string::string_regex(unanchored)
            .expect("a pattern proptest reads")
            .new_tree(&mut self.runner)
            .expect("a value")
            .current();
        json!(text)
    }

    /// An RFC 3339 instant, at times before 1970 or with an offset or a long fraction.
    fn date_time(&mut self) -> String {
        let year = 1900 + self.below(300);
        let (month, day) = (1 + self.below(12), 1 + self.below(28));
        let (hour, minute, second) = (self.below(24), self.below(60), self.below(61));
        let fraction = match self.below(3) {
            0 => String::new(),
            1 => ".5".to_string(),
            _ => ".123456789".to_string(),
        };
        let offset = match self.below(3) {
            0 => "Z".to_string(),
            1 => "+05:30".to_string(),
            _ => "-23:59".to_string(),
        };
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}{offset}")
    }
}

/// Whether `value` is valid per `schema`, for the keywords the document uses.
fn conforms(doc: &Value, schema: &Value, value: &Value) -> bool {
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => &doc["components"]["schemas"][reference.rsplit('/').next().unwrap()],
        None => schema,
    };
    if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
        return branches.iter().filter(|b| conforms(doc, b, value)).count() == 1;
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        if !values.contains(value) {
            return false;
        }
    }
    if schema
        .get("not")
        .is_some_and(|not| conforms(doc, not, value))
    {
        return false;
    }
    match schema["type"].as_str() {
        Some("string") => value
            .as_str()
            .is_some_and(|text| string_conforms(schema, text)),
        Some("integer") => value.as_u64().is_some_and(|n| {
            schema["minimum"].as_u64().is_none_or(|min| n >= min)
                && schema["maximum"].as_u64().is_none_or(|max| n <= max)
        }),
        Some("object") => {
            let Some(object) = value.as_object() else {
                return false;
            };
            let properties = schema["properties"].as_object().expect("properties");
            let required = schema["required"].as_array().into_iter().flatten();
            required
                .filter_map(Value::as_str)
                .all(|r| object.contains_key(r))
                && object.iter().all(|(name, v)| match properties.get(name) {
                    Some(property) => conforms(doc, property, v),
                    None => schema["additionalProperties"] != false,
                })
        }
        Some("boolean") => value.is_boolean(),
        Some("array") => value.as_array().is_some_and(|items| {
            schema["maxItems"]
                .as_u64()
                .is_none_or(|max| items.len() as u64 <= max)
                && items
                    .iter()
                    .all(|item| conforms(doc, &schema["items"], item))
        }),
        // A schema of `required` alone (what `not` holds).
        None => value.as_object().is_some_and(|object| {
            let required = schema["required"].as_array().into_iter().flatten();
            required
                .filter_map(Value::as_str)
                .all(|r| object.contains_key(r))
        }),
        other => panic!("no check for type {other:?}"),
    }
}

fn string_conforms(schema: &Value, text: &str) -> bool {
    let length = text.chars().count() as u64;
    let pattern_ok = match schema["pattern"].as_str() {
        Some(pattern) => regex_automata::meta::Regex::new(pattern)
            .expect("a valid pattern")
            .is_match(text),
        None => true,
    };
    // The shape of an RFC 3339 `date-time` (the test's invalid values are far from it).
    let format_ok = schema["format"] != "date-time"
        || regex_automata::meta::Regex::new(
            r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$",
        )
        .unwrap()
        .is_match(text);
    schema["minLength"].as_u64().is_none_or(|min| length >= min)
        && schema["maxLength"].as_u64().is_none_or(|max| length <= max)
        && pattern_ok
        && format_ok
}

/// Values that break `schema` one way or another, each checked to be invalid per the document.
fn invalid_values(doc: &Value, schema: &Value, valid: &Value) -> Vec<Value> {
    let mut candidates = vec![json!(12), json!(""), json!("a b"), json!("é"), json!("usd")];
    candidates.extend([
        json!(-1),
        json!(1.5),
        json!("1.2345"),
        json!("01"),
        json!("0"),
    ]);
    candidates.extend([json!("1e3"), json!("yesterday"), json!("x".repeat(100))]);
    if let Some(text) = valid.as_str() {
        candidates.push(json!(format!("{text}/")));
    }
    let resolved = match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => &doc["components"]["schemas"][reference.rsplit('/').next().unwrap()],
        None => schema,
    };
    if let Some(max) = resolved["maximum"].as_u64() {
        candidates.push(json!((u128::from(max) + 1).to_string()));
    }
    candidates.retain(|candidate| !conforms(doc, schema, candidate));
    assert!(!candidates.is_empty(), "no invalid value for {schema}");
    candidates
}

/// Invalid texts of a path or query parameter: what a URL can carry, read as the schema reads it.
fn invalid_texts(doc: &Value, schema: &Value, example: &Value) -> Vec<String> {
    let integer = match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            doc["components"]["schemas"][reference.rsplit('/').next().unwrap()]["type"] == "integer"
        }
        None => schema["type"] == "integer",
    };
    let mut texts: Vec<String> = invalid_values(doc, schema, example)
        .iter()
        .map(text_of)
        .collect();
    texts.dedup();
    texts.retain(|text| {
        let as_read = match text.parse::<u64>() {
            Ok(n) if integer => json!(n),
            _ => json!(text),
        };
        !conforms(doc, schema, &as_read)
    });
    texts
}

/// One request: what an operation's fields hold.
#[derive(Clone, Debug)]
struct Case {
    path: Vec<(String, Value)>,
    query: Vec<(String, Value)>,
    body: Option<Value>,
}

fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~:".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn http_request(method: &str, template: &str, case: &Case) -> Request<Body> {
    let mut uri = template.to_string();
    for (name, value) in &case.path {
        uri = uri.replace(&format!("{{{name}}}"), &percent_encode(&text_of(value)));
    }
    let query: Vec<String> = case
        .query
        .iter()
        .map(|(name, value)| format!("{name}={}", percent_encode(&text_of(value))))
        .collect();
    if !query.is_empty() {
        uri = format!("{uri}?{}", query.join("&"));
    }
    let builder = Request::builder()
        .method(method.to_uppercase().as_str())
        .uri(uri);
    match &case.body {
        Some(body) => builder
            .header("content-type", "application/json")
            .body(Body::from(body.to_string())),
        None => builder.body(Body::empty()),
    }
    .expect("a request")
}

/// The operations under test, their generator and the server they run against.
struct Contract {
    generator: Generator,
    router: Router,
}

impl Contract {
    async fn send(&self, method: &str, path: &str, case: &Case) -> (StatusCode, Value) {
        let request = http_request(method, path, case);
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, body)
    }

    /// A valid case of `operation`; ids are sometimes those of the accounts that exist.
    fn valid_case(&mut self, operation: &Value) -> Case {
        let mut case = Case {
            path: Vec::new(),
            query: Vec::new(),
            body: None,
        };
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            let name = parameter["name"].as_str().unwrap().to_string();
            let known = parameter["schema"]["$ref"] == "#/components/schemas/AccountId"
                && self.generator.below(2) == 0;
            let value = if known {
                json!(KNOWN_ACCOUNTS[self.generator.below(2) as usize])
            } else {
                self.generator.valid(&parameter["schema"])
            };
            match parameter["in"].as_str() {
                Some("path") => case.path.push((name, value)),
                // An object parameter is spread into its fields (`style: form`, `explode`).
                Some("query") if value.is_object() => {
                    let fields = value.as_object().unwrap().clone();
                    case.query.extend(fields);
                }
                Some("query") if parameter["required"] == true || self.generator.below(2) == 0 => {
                    case.query.push((name, value))
                }
                _ => {}
            }
        }
        if let Some(schema) = request_schema(operation) {
            let mut body = self.generator.valid(&schema);
            self.use_known_accounts(&mut body);
            case.body = Some(body);
        }
        case
    }

    /// Points half of the account fields of a body at accounts that exist.
    fn use_known_accounts(&mut self, body: &mut Value) {
        if let Some(items) = body.get_mut("transfers").and_then(Value::as_array_mut) {
            for item in items {
                self.use_known_accounts(item);
            }
            return;
        }
        for field in ["account_id", "from_account", "to_account"] {
            if body.get(field).is_some() && self.generator.below(2) == 0 {
                body[field] = json!(KNOWN_ACCOUNTS[self.generator.below(2) as usize]);
            }
        }
    }
}

/// The schema of an operation's JSON request body.
fn request_schema(operation: &Value) -> Option<Value> {
    let body = operation.get("requestBody")?;
    Some(body["content"]["application/json"]["schema"].clone())
}

/// Every `code` the document lists for `status` of `operation`.
fn documented_codes(doc: &Value, operation: &Value, status: StatusCode) -> Option<Vec<String>> {
    let response = operation["responses"].get(status.as_str())?;
    let mut codes = Vec::new();
    collect_codes(
        doc,
        &response["content"]["application/json"]["schema"],
        &mut codes,
    );
    Some(codes)
}

fn collect_codes(doc: &Value, schema: &Value, codes: &mut Vec<String>) {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap();
        collect_codes(doc, &doc["components"]["schemas"][name], codes);
    }
    for keyword in ["anyOf", "allOf", "oneOf"] {
        for branch in schema[keyword].as_array().into_iter().flatten() {
            collect_codes(doc, branch, codes);
        }
    }
    let values = schema["properties"]["code"]["enum"].as_array();
    codes.extend(
        values
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(String::from),
    );
}

/// Checks an answer against the document: a documented status, a documented code.
fn check_documented(doc: &Value, operation: &Value, what: &str, status: StatusCode, body: &Value) {
    let codes = documented_codes(doc, operation, status)
        .unwrap_or_else(|| panic!("{what}: status {status} is not documented: {body}"));
    if let Some(code) = body.get("code").and_then(Value::as_str) {
        if status.is_client_error() || status.is_server_error() {
            assert!(
                codes.iter().any(|c| c == code),
                "{what}: {status} {code} not in {codes:?}"
            );
        }
    }
}

async fn start() -> (
    tempfile::TempDir,
    crate::api::Api,
    walletd_runtime::engine::Engine,
) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cli = Cli::parse_from(
        [
            "wallet",
            "serve",
            "--partitions",
            &PARTITIONS.to_string(),
            "--data-dir",
        ]
        .into_iter()
        .chain([data.to_str().unwrap()]),
    );
    let Command::Serve(args) = cli.command else {
        unreachable!("parsed as serve")
    };
    let datadir = DataDir::create_or_check(&args.data_dir, args.partitions).unwrap();
    let (engine, _journal) = crate::serve::start_engine(&args, &datadir).await.unwrap();
    let options = ApiOptions {
        batch_items_max: 16,
        feed_wait_max: std::time::Duration::from_millis(FEED_WAIT_MAX_MS),
        ..ApiOptions::default()
    };
    let api = crate::serve::build_api(&engine, datadir, options, Vec::new(), Vec::new());
    (dir, api, engine)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_generated_from_the_document_get_the_answers_it_documents() {
    let (_dir, api, engine) = start().await;
    let doc = document_for(api.options(), PARTITIONS);
    let mut contract = Contract {
        generator: Generator {
            doc: doc.clone(),
            runner: TestRunner::deterministic(),
        },
        router: router(api),
    };
    let open = Case {
        path: vec![],
        query: vec![],
        body: None,
    };
    for account in KNOWN_ACCOUNTS {
        let body = json!({"account_id": account, "currency": "USD"});
        let case = Case {
            body: Some(body),
            ..open.clone()
        };
        assert!(contract
            .send("post", "/v1/accounts", &case)
            .await
            .0
            .is_success());
    }
    let paths = doc["paths"].as_object().unwrap().clone();
    let mut checked = 0;
    for (path, item) in paths.iter().filter(|(path, _)| path.starts_with("/v1/")) {
        for (method, operation) in item.as_object().unwrap() {
            let what = format!("{method} {path}");
            for _ in 0..VALID_CASES_PER_OPERATION {
                let case = contract.valid_case(operation);
                let (status, body) = contract.send(method, path, &case).await;
                let refused = matches!(status.as_u16(), 400 | 413) || status.is_server_error();
                assert!(!refused, "{what}: valid {case:?} refused: {status} {body}");
                check_documented(&doc, operation, &what, status, &body);
                for item in body["results"].as_array().into_iter().flatten() {
                    assert_ne!(
                        item["http_status"], 400,
                        "{what}: valid item refused: {item}"
                    );
                }
                checked += 1;
            }
            checked +=
                check_invalid_fields(&mut contract, &doc, &what, method, path, operation).await;
        }
    }
    assert!(
        checked > 9 * VALID_CASES_PER_OPERATION,
        "{checked} requests"
    );
    engine.shutdown().await.unwrap();
}

/// Makes each field of a valid case invalid in turn; each must be refused with 400 and a
/// documented code (in a batch: the item, with the status it would have had alone).
async fn check_invalid_fields(
    contract: &mut Contract,
    doc: &Value,
    what: &str,
    method: &str,
    path: &str,
    operation: &Value,
) -> usize {
    let valid = contract.valid_case(operation);
    let mut sent = 0;
    let parameters = operation["parameters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for parameter in &parameters {
        let name = parameter["name"].as_str().unwrap();
        let schema = contract.generator.resolve(&parameter["schema"]).clone();
        let fields: Vec<(String, Value)> = match schema["properties"].as_object() {
            Some(properties) => properties
                .iter()
                .map(|(n, s)| (n.clone(), s.clone()))
                .collect(),
            None => vec![(name.to_string(), parameter["schema"].clone())],
        };
        for (field, field_schema) in fields {
            let example = contract.generator.valid(&field_schema);
            for bad in invalid_texts(doc, &field_schema, &example) {
                let bad = json!(bad);
                if parameter["in"] == "path" && bad == json!("") {
                    continue; // an empty segment is another URL, not a value
                }
                let mut case = valid.clone();
                let slot = if parameter["in"] == "path" {
                    &mut case.path
                } else {
                    &mut case.query
                };
                // The bad value alone: of an object parameter, none of its other fields.
                let spread = schema["properties"].as_object();
                slot.retain(|(n, _)| *n != field && spread.is_none_or(|p| !p.contains_key(n)));
                slot.push((field.clone(), bad.clone()));
                let (status, body) = contract.send(method, path, &case).await;
                assert_eq!(status, 400, "{what}: {field}={bad} gave {body}");
                check_documented(doc, operation, what, status, &body);
                sent += 1;
            }
        }
        // Both fields of an object parameter that allows one: a combination the document
        // forbids.
        if schema.get("not").is_some() {
            let mut case = valid.clone();
            for (field, field_schema) in schema["properties"].as_object().unwrap() {
                case.query.retain(|(n, _)| n != field);
                case.query
                    .push((field.clone(), contract.generator.valid(field_schema)));
            }
            let (status, body) = contract.send(method, path, &case).await;
            assert_eq!(status, 400, "{what}: both fields of {name} gave {body}");
            sent += 1;
        }
    }
    let Some(body) = valid.body.clone() else {
        return sent;
    };
    let batch = body.get("transfers").is_some();
    let (fields_of, schema) = if batch {
        let mut item = contract
            .generator
            .valid(&json!({"$ref": "#/components/schemas/TransferRequest"}));
        contract.use_known_accounts(&mut item);
        (
            item,
            json!({"$ref": "#/components/schemas/TransferRequest"}),
        )
    } else {
        (body.clone(), request_schema(operation).unwrap())
    };
    for (field, value) in fields_of.as_object().unwrap().clone() {
        let field_schema = property_schema(doc, &schema, &fields_of, &field);
        for bad in invalid_values(doc, &field_schema, &value) {
            let mut changed = fields_of.clone();
            changed[&field] = bad.clone();
            let case = Case {
                body: Some(if batch {
                    json!({"transfers": [changed]})
                } else {
                    changed
                }),
                ..valid.clone()
            };
            let (status, answer) = contract.send(method, path, &case).await;
            if batch {
                assert_eq!(status, 200, "{what}: {answer}");
                let item = &answer["results"][0];
                assert_eq!(
                    item["http_status"], 400,
                    "{what}: item {field}={bad} gave {item}"
                );
            } else {
                assert_eq!(status, 400, "{what}: {field}={bad} gave {answer}");
                check_documented(doc, operation, what, status, &answer);
            }
            sent += 1;
        }
    }
    sent
}

/// The schema of `field` in the branch of `schema` that `value` conforms to.
fn property_schema(doc: &Value, schema: &Value, value: &Value, field: &str) -> Value {
    let resolved = match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            doc["components"]["schemas"][reference.rsplit('/').next().unwrap()].clone()
        }
        None => schema.clone(),
    };
    if let Some(branches) = resolved["oneOf"].as_array() {
        let branch = branches
            .iter()
            .find(|b| conforms(doc, b, value))
            .expect("a branch");
        return branch["properties"][field].clone();
    }
    resolved["properties"][field].clone()
}

#[test]
fn amount_patterns_accept_exactly_what_the_parser_accepts() {
    use walletd_core::model::money::{Amount, Currency};
    let doc = document_for(&ApiOptions::default(), PARTITIONS);
    let mut generator = Generator {
        doc: doc.clone(),
        runner: TestRunner::deterministic(),
    };
    for (digits, currencies) in super::requests::currencies_by_digits() {
        let schema =
            json!({"$ref": format!("#/components/schemas/AmountWith{digits}FractionDigits")});
        for _ in 0..200 {
            let text = generator.valid(&schema);
            for &currency in &currencies {
                let parsed = Amount::parse(text.as_str().unwrap(), currency);
                assert!(parsed.is_ok(), "{text} {currency}: {parsed:?}");
            }
        }
        let max = walletd_core::model::money::format_minor(
            walletd_core::model::money::AMOUNT_MINOR_MAX,
            currencies[0],
        );
        let unit = if digits == 0 {
            "1".to_string()
        } else {
            format!("0.{}1", "0".repeat(digits as usize - 1))
        };
        let just_over = format!("{max}{}", if digits == 0 { "0" } else { "1" });
        for text in [max.as_str(), unit.as_str()] {
            assert!(conforms(&doc, &schema, &json!(text)), "{text}");
            assert!(Amount::parse(text, currencies[0]).is_ok(), "{text}");
        }
        for text in [
            "0",
            "0.0",
            "-1",
            "01",
            "1.",
            ".5",
            " 1",
            "1e3",
            just_over.as_str(),
        ] {
            assert!(
                !conforms(&doc, &schema, &json!(text)),
                "{text} for {digits} digits"
            );
            assert!(Amount::parse(text, currencies[0]).is_err(), "{text}");
        }
        let one_digit_too_many = format!("1.{}", "1".repeat(digits as usize + 1));
        assert!(!conforms(&doc, &schema, &json!(one_digit_too_many)));
        assert!(Amount::parse(&one_digit_too_many, currencies[0]).is_err());
    }
    let all: Vec<&str> = Currency::ALL.iter().map(|c| c.code()).collect();
    assert_eq!(doc["components"]["schemas"]["Currency"]["enum"], json!(all));
}

#[test]
fn the_document_describes_the_alias_and_this_server_s_options() {
    let doc = document_for(&ApiOptions::default(), PARTITIONS);
    let alias = &doc["paths"]["/v1/wallet/balance_transper"]["post"];
    assert_eq!(
        alias["requestBody"],
        doc["paths"]["/v1/wallet/balance_transfer"]["post"]["requestBody"]
    );
    assert!(doc["paths"]["/v1/accounts"]["post"]["responses"]["401"].is_null());
    let guarded = document_for(
        &ApiOptions {
            api_token: Some("t".into()),
            batch_items_max: 7,
            ..ApiOptions::default()
        },
        PARTITIONS,
    );
    let batch = &guarded["components"]["schemas"]["BatchRequest"]["properties"]["transfers"];
    assert_eq!(batch["maxItems"], 7);
    let open = &guarded["paths"]["/v1/accounts"]["post"];
    assert_eq!(open["security"], json!([{ "bearer": [] }]));
    assert!(open["responses"]["401"]["headers"]["WWW-Authenticate"].is_object());
    assert!(guarded["paths"]["/healthz"]["get"]["security"].is_null());
    let feed = document_for(
        &ApiOptions {
            feed_wait_max: std::time::Duration::from_millis(1234),
            ..ApiOptions::default()
        },
        5,
    );
    let parameters = feed["paths"]["/v1/events"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let bound = |name: &str| {
        let parameter = parameters.iter().find(|p| p["name"] == name).unwrap();
        parameter["schema"]["maximum"].clone()
    };
    assert_eq!(bound("partition"), 4);
    assert_eq!(bound("wait_ms"), 1234);
    assert_eq!(bound("limit"), crate::api::events::FEED_LIMIT_MAX);
    let answer = &feed["paths"]["/v1/events"]["get"]["responses"]["200"];
    assert!(answer["content"]["application/x-ndjson"].is_object());
    let branches = feed["components"]["schemas"]["FeedEvent"]["oneOf"]
        .as_array()
        .unwrap();
    assert_eq!(branches.len(), crate::feed::schema::EVENT_TYPES.len());
}
