//! The HTTP modes: a bare HTTP/1.1 client (hyper's connection API, one keep-alive
//! connection per simulated client, one request in flight on it), the spawned server, and
//! the setup and check of the accounts through the public API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::report::{Live, Phase, Tally};
use super::workload::{
    account_name, format_amount, parse_balance, write_account_name, Draw, Rng, Workload, CURRENCY,
    FUNDING_MINOR, FUNDING_TRANSACTION_ID,
};
use super::{BenchError, Totals};

/// Longest a single request may take before it counts as an error.
const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// How long a spawned server may take to answer `/healthz`.
const SERVER_START_TIMEOUT_MS: u64 = 30_000;
/// Pause after a failed request before the client reconnects, so a dead server is not
/// hammered in a tight loop.
const RECONNECT_PAUSE_MS: u64 = 20;
/// Room reserved per transfer in a request body: a transfer's JSON object is 140 to 170
/// bytes, so bodies are built without growing (a longer one only grows the buffer).
const TRANSFER_JSON_BYTES_RESERVED: usize = 256;
/// Concurrent requests while opening, funding and reading back the accounts.
pub const SETUP_CLIENTS: u64 = 64;

/// Where the HTTP modes send their requests.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    host: HeaderValue,
}

impl Target {
    /// Parses `http://host:port` (no path, no TLS) and resolves the host.
    pub async fn resolve(url: &str) -> Result<Target, BenchError> {
        let bad = |why: &str| BenchError::Usage(format!("--target {url:?}: {why}"));
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// URLs are supported"))?;
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') {
            return Err(bad("give the server's root URL, without a path"));
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .map_err(|e| bad(&e.to_string()))?
            .next()
            .ok_or_else(|| bad("the host does not resolve"))?;
        Ok(Target {
            addr,
            host: HeaderValue::from_str(authority).map_err(|_| bad("bad host"))?,
        })
    }

    pub fn local(addr: SocketAddr) -> Target {
        Target {
            addr,
            host: HeaderValue::from_str(&addr.to_string()).expect("an address is a valid header"),
        }
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct Connection {
    target: Target,
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    pub async fn open(target: &Target) -> Result<Connection, BenchError> {
        let stream = TcpStream::connect(target.addr)
            .await
            .map_err(|e| BenchError::http(format!("connect to {}", target.addr), e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| BenchError::http("set TCP_NODELAY", e))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| BenchError::http("HTTP handshake", e))?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the server closes; errors surface there.
            let _ = connection.await;
        });
        Ok(Connection {
            target: target.clone(),
            sender,
        })
    }

    /// Sends one request and reads the whole answer.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), BenchError> {
        let exchange = async {
            self.sender
                .ready()
                .await
                .map_err(|e| BenchError::http("connection lost", e))?;
            let mut request = Request::builder()
                .method(method)
                .uri(path)
                .header(HOST, self.target.host.clone());
            if body.is_some() {
                request =
                    request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            let request = request
                .body(Full::new(body.unwrap_or_default()))
                .map_err(|e| BenchError::http("build request", e))?;
            let response = self
                .sender
                .send_request(request)
                .await
                .map_err(|e| BenchError::http(path, e))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| BenchError::http(format!("{path}: body"), e))?
                .to_bytes();
            Ok((status, bytes))
        };
        match tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), exchange).await {
            Ok(result) => result,
            Err(_) => Err(BenchError::Http {
                what: path.to_string(),
                detail: format!("no answer within {REQUEST_TIMEOUT_MS} ms"),
            }),
        }
    }

    async fn post_json(
        &mut self,
        path: &str,
        body: String,
    ) -> Result<(StatusCode, Bytes), BenchError> {
        self.request(Method::POST, path, Some(Bytes::from(body)))
            .await
    }
}

/// A `wallet serve` child on a temporary data directory and a free port; killed on drop.
pub struct SpawnedServer {
    child: Child,
    pub target: Target,
    /// Kept so the data directory lives as long as the server.
    _dir: tempfile::TempDir,
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SpawnedServer {
    /// Starts `bin serve` and waits until it answers `/healthz`.
    pub async fn start(
        bin: Option<PathBuf>,
        partitions: u32,
        snapshot_every_events: u64,
        extra_args: &[String],
    ) -> Result<SpawnedServer, BenchError> {
        let bin = match bin {
            Some(bin) => bin,
            None => {
                std::env::current_exe().map_err(|e| BenchError::io("locate this executable", e))?
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("walletd-bench-")
            .tempdir()
            .map_err(|e| BenchError::io("create a temporary data directory", e))?;
        let addr = free_port()?;
        let child = std::process::Command::new(&bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--partitions")
            .arg(partitions.to_string())
            .arg("--snapshot-every-events")
            .arg(snapshot_every_events.to_string())
            .args(extra_args)
            .env(
                "WALLET_LOG",
                std::env::var("WALLET_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| BenchError::io(format!("start {} serve", bin.display()), e))?;
        let mut server = SpawnedServer {
            child,
            target: Target::local(addr),
            _dir: dir,
        };
        server.wait_until_healthy().await?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_until_healthy(&mut self) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_millis(SERVER_START_TIMEOUT_MS);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BenchError::Server(format!(
                    "wallet serve exited at start: {status}"
                )));
            }
            if let Ok(mut connection) = Connection::open(&self.target).await {
                if let Ok((StatusCode::OK, _)) =
                    connection.request(Method::GET, "/healthz", None).await
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(BenchError::Server(format!(
                    "wallet serve did not answer /healthz on {} within {SERVER_START_TIMEOUT_MS} ms",
                    self.target.addr
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A port that was free a moment ago (the server binds it right after).
fn free_port() -> Result<SocketAddr, BenchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BenchError::io("find a free port", e))?;
    listener
        .local_addr()
        .map_err(|e| BenchError::io("find a free port", e))
}

/// Runs `job(client, connection)` for `clients` concurrent clients and waits for all.
async fn with_clients<F, Fut, T>(
    target: &Target,
    clients: u64,
    job: F,
) -> Result<Vec<T>, BenchError>
where
    F: Fn(u64, Connection) -> Fut,
    Fut: std::future::Future<Output = Result<T, BenchError>> + Send + 'static,
    T: Send + 'static,
{
    let mut tasks = Vec::with_capacity(clients as usize);
    for client in 0..clients {
        let connection = Connection::open(target).await?;
        tasks.push(tokio::spawn(job(client, connection)));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(
            task.await
                .map_err(|e| BenchError::Server(format!("client task failed: {e}")))??,
        );
    }
    Ok(results)
}

/// Opens and funds every account of the workload (idempotent: existing accounts and an
/// earlier funding deposit are answered as such, nothing is funded twice).
pub async fn open_accounts(target: &Target, workload: &Workload) -> Result<(), BenchError> {
    let accounts = workload.accounts;
    with_clients(target, SETUP_CLIENTS, move |client, mut connection| async move {
        let mut index = client;
        let mut funding = String::new();
        format_amount(FUNDING_MINOR, &mut funding);
        while index < accounts {
            let name = account_name(index);
            let body = format!(r#"{{"account_id":"{name}","currency":"{CURRENCY}"}}"#);
            let (status, answer) = connection.post_json("/v1/accounts", body).await?;
            expect_success("open account", status, &answer)?;
            let body = format!(
                r#"{{"amount":"{funding}","currency":"{CURRENCY}","transaction_id":"{FUNDING_TRANSACTION_ID}"}}"#
            );
            let path = format!("/v1/accounts/{name}/deposit");
            let (status, answer) = connection.post_json(&path, body).await?;
            expect_success("fund account", status, &answer)?;
            index += SETUP_CLIENTS;
        }
        Ok(())
    })
    .await
    .map(drop)
}

fn expect_success(what: &str, status: StatusCode, body: &[u8]) -> Result<(), BenchError> {
    if status.is_success() {
        Ok(())
    } else {
        Err(BenchError::Http {
            what: what.to_string(),
            detail: format!("{status}: {}", String::from_utf8_lossy(body)),
        })
    }
}

#[derive(Deserialize)]
struct BalanceBody<'a> {
    balance: &'a str,
    held: &'a str,
    incoming: &'a str,
}

/// The sums of every account's figures, read through the API.
pub async fn sum_balances(target: &Target, workload: &Workload) -> Result<Totals, BenchError> {
    let accounts = workload.accounts;
    let sums = with_clients(
        target,
        SETUP_CLIENTS,
        move |client, mut connection| async move {
            let mut totals = Totals::default();
            let mut index = client;
            while index < accounts {
                let path = format!(
                    "/v1/accounts/{}/balance?currency={CURRENCY}",
                    account_name(index)
                );
                let (status, body) = connection.request(Method::GET, &path, None).await?;
                expect_success("read balance", status, &body)?;
                let unreadable = |detail: String| BenchError::Http {
                    what: path.clone(),
                    detail,
                };
                let parsed: BalanceBody = serde_json::from_slice(&body)
                    .map_err(|e| unreadable(format!("unreadable balance: {e}")))?;
                let minor = |text: &str| {
                    parse_balance(text)
                        .map(u128::from)
                        .ok_or_else(|| unreadable(format!("unreadable amount {text:?}")))
                };
                totals.balance += minor(parsed.balance)?;
                totals.held += minor(parsed.held)?;
                totals.incoming += minor(parsed.incoming)?;
                index += SETUP_CLIENTS;
            }
            Ok(totals)
        },
    )
    .await?;
    Ok(sums.into_iter().fold(Totals::default(), Totals::add))
}

/// Log syncs the server made so far and the seconds they took, summed over partitions, from
/// its Prometheus `/metrics` (`None` when the target does not publish them).
pub async fn scrape_syncs(target: &Target) -> Option<(u64, f64)> {
    let mut connection = Connection::open(target).await.ok()?;
    let (status, body) = connection
        .request(Method::GET, "/metrics", None)
        .await
        .ok()?;
    if status != StatusCode::OK {
        return None;
    }
    let text = std::str::from_utf8(&body).ok()?;
    let (mut count, mut seconds, mut seen) = (0u64, 0f64, false);
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if name.starts_with("walletd_partition_fsync_seconds_count{") {
            count += value.parse::<u64>().ok()?;
            seen = true;
        } else if name.starts_with("walletd_partition_fsync_seconds_sum{") {
            seconds += value.parse::<f64>().ok()?;
        }
    }
    seen.then_some((count, seconds))
}

/// How one HTTP client sends its transfers.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// `POST /v1/wallet/balance_transfer`, one transfer per request.
    Single,
    /// `POST /v1/wallet/balance_transfers` with this many transfers per request.
    Batch(u64),
    /// `POST /v1/wallet/holds`, then, once held, `POST /v1/transfers/{from}/{id}/capture`
    /// of all of it: one transfer per pair.
    HoldCapture,
    /// `POST /v1/wallet/transactions` of this many legs, each a random transfer: one per
    /// transaction.
    Transaction(u64),
}

/// The expiry of the holds of the `http_hold_capture` mode: far beyond a run, so that none
/// expires before its capture.
const BENCH_HOLD_EXPIRES_IN_MS: u64 = 3_600_000;

/// Runs `clients` clients sending transfers until the phase is `Stopped`; their tallies.
pub async fn run_transfers(
    target: &Target,
    workload: &Arc<Workload>,
    live: &Arc<Live>,
    clients: u64,
    shape: Shape,
    seed: u64,
) -> Result<Vec<tokio::task::JoinHandle<Tally>>, BenchError> {
    let mut tasks = Vec::with_capacity(clients as usize);
    for client in 0..clients {
        let connection = Connection::open(target).await?;
        let (target, workload, live) = (target.clone(), Arc::clone(workload), Arc::clone(live));
        tasks.push(tokio::spawn(async move {
            let mut client_run = HttpClient {
                target,
                connection: Some(connection),
                workload,
                live,
                rng: Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(client)),
                client,
                sequence: 0,
                tally: Tally::new(),
            };
            client_run.run(shape).await;
            client_run.tally
        }));
    }
    Ok(tasks)
}

/// One simulated client of an HTTP mode.
struct HttpClient {
    target: Target,
    connection: Option<Connection>,
    workload: Arc<Workload>,
    live: Arc<Live>,
    rng: Rng,
    client: u64,
    sequence: u64,
    tally: Tally,
}

/// What one request achieved.
#[derive(Debug, Default, Clone)]
struct Answered {
    /// A hold was answered `held` (its capture comes next).
    held: bool,
    transfers: u64,
    rejected: u64,
    errors: u64,
    /// What the (first) error was.
    error: Option<String>,
}

impl Answered {
    fn failed(errors: u64, error: String) -> Answered {
        Answered {
            errors,
            error: Some(error),
            ..Answered::default()
        }
    }
}

impl HttpClient {
    async fn run(&mut self, shape: Shape) {
        let (path, per_request) = match shape {
            Shape::Single => ("/v1/wallet/balance_transfer", 1),
            Shape::Batch(size) => ("/v1/wallet/balance_transfers", size),
            Shape::HoldCapture => ("/v1/wallet/holds", 1),
            Shape::Transaction(legs) => ("/v1/wallet/transactions", legs),
        };
        let body_bytes = TRANSFER_JSON_BYTES_RESERVED * per_request as usize;
        while self.live.phase() != Phase::Stopped {
            // A fresh buffer each request, handed to the request as it is: reusing one
            // buffer meant copying every body (about 150 kB for 1000 transfers) into a new
            // allocation anyway.
            let mut body = String::with_capacity(body_bytes);
            let mut capture_path = None;
            match shape {
                Shape::Single => self.write_transfer(&mut body),
                Shape::HoldCapture => capture_path = Some(self.write_hold(&mut body)),
                Shape::Transaction(legs) => self.write_transaction(legs, &mut body),
                Shape::Batch(size) => {
                    body.push_str(r#"{"transfers":["#);
                    for i in 0..size {
                        if i > 0 {
                            body.push(',');
                        }
                        self.write_transfer(&mut body);
                    }
                    body.push_str("]}");
                }
            }
            let started = Instant::now();
            let mut answered = self.send(path, Bytes::from(body), shape).await;
            if let Some(capture) = capture_path.filter(|_| answered.held) {
                answered = self.send(&capture, Bytes::from_static(b"{}"), shape).await;
            }
            let latency = started.elapsed();
            self.live
                .transfers
                .fetch_add(answered.transfers, std::sync::atomic::Ordering::Relaxed);
            self.live
                .errors
                .fetch_add(answered.errors, std::sync::atomic::Ordering::Relaxed);
            if self.live.phase() == Phase::Measuring {
                self.tally.record(latency);
                self.tally.transfers += answered.transfers;
                self.tally.rejected += answered.rejected;
                self.tally.errors += answered.errors;
                if let Some(error) = &answered.error {
                    self.tally.sample_error(error);
                }
            }
        }
    }

    /// Appends the next transfer as a hold's JSON object; returns the path of its capture.
    fn write_hold(&mut self, out: &mut String) -> String {
        let draw = self
            .workload
            .draw(&mut self.rng, self.client, self.sequence);
        self.sequence += 1;
        write_transfer_json(&self.workload, &draw, out);
        out.pop();
        out.push_str(r#","expires_in_ms":"#);
        out.push_str(&BENCH_HOLD_EXPIRES_IN_MS.to_string());
        out.push('}');
        let mut path = String::from("/v1/transfers/");
        write_account_name(draw.from, &mut path);
        path.push('/');
        self.workload.write_transaction_id(&draw, &mut path);
        path.push_str("/capture");
        path
    }

    /// Appends a transaction of `legs` legs, each the next transfer drawn, under the first
    /// one's transaction id.
    fn write_transaction(&mut self, legs: u64, out: &mut String) {
        out.push_str(r#"{"legs":["#);
        let mut first = None;
        for leg in 0..legs {
            let draw = self
                .workload
                .draw(&mut self.rng, self.client, self.sequence);
            self.sequence += 1;
            if leg > 0 {
                out.push(',');
            }
            write_leg_json(&draw, out);
            out.push('}');
            first.get_or_insert(draw);
        }
        out.push_str(r#"],"transaction_id":""#);
        let first = first.expect("at least one leg");
        self.workload.write_transaction_id(&first, out);
        out.push_str("\"}");
    }

    /// Appends the next transfer as the API's JSON object.
    fn write_transfer(&mut self, out: &mut String) {
        let draw = self
            .workload
            .draw(&mut self.rng, self.client, self.sequence);
        self.sequence += 1;
        write_transfer_json(&self.workload, &draw, out);
    }

    async fn send(&mut self, path: &str, body: Bytes, shape: Shape) -> Answered {
        let per_request = match shape {
            Shape::Single | Shape::HoldCapture | Shape::Transaction(_) => 1,
            Shape::Batch(size) => size,
        };
        if self.connection.is_none() {
            match Connection::open(&self.target).await {
                Ok(connection) => self.connection = Some(connection),
                Err(error) => {
                    tokio::time::sleep(Duration::from_millis(RECONNECT_PAUSE_MS)).await;
                    return Answered::failed(per_request, error.to_string());
                }
            }
        }
        let connection = self.connection.as_mut().expect("connected above");
        let answer = connection.request(Method::POST, path, Some(body)).await;
        match (answer, shape) {
            (Ok((status, answer)), Shape::Single | Shape::HoldCapture | Shape::Transaction(_)) => {
                single_outcome(status, &answer)
            }
            (Ok((StatusCode::OK, answer)), Shape::Batch(size)) => batch_outcome(&answer, size),
            (Ok((status, answer)), Shape::Batch(size)) => {
                Answered::failed(size, describe(status, &answer))
            }
            (Err(error), _) => {
                self.connection = None;
                tokio::time::sleep(Duration::from_millis(RECONNECT_PAUSE_MS)).await;
                Answered::failed(per_request, error.to_string())
            }
        }
    }
}

/// Appends the API's JSON object for `draw`. Every field is written piece by piece (no
/// `format!`): this runs for every transfer the benchmark sends.
fn write_transfer_json(workload: &Workload, draw: &Draw, out: &mut String) {
    write_leg_json(draw, out);
    out.push_str(r#","transaction_id":""#);
    workload.write_transaction_id(draw, out);
    out.push_str("\"}");
}

/// Appends `draw`'s accounts, amount and currency as an unclosed JSON object: a leg of a
/// transaction once closed, a transfer once its id follows.
fn write_leg_json(draw: &Draw, out: &mut String) {
    out.push_str(r#"{"from_account":""#);
    write_account_name(draw.from, out);
    out.push_str(r#"","to_account":""#);
    write_account_name(draw.to, out);
    out.push_str(r#"","amount":""#);
    format_amount(draw.amount_minor, out);
    out.push_str(r#"","currency":""#);
    out.push_str(CURRENCY.code());
    out.push('"');
}

/// A short description of an unexpected answer.
fn describe(status: StatusCode, body: &[u8]) -> String {
    const BODY_SHOWN_MAX: usize = 200;
    let shown = &body[..body.len().min(BODY_SHOWN_MAX)];
    format!("{status}: {}", String::from_utf8_lossy(shown))
}

fn single_outcome(status: StatusCode, body: &[u8]) -> Answered {
    match status {
        StatusCode::OK if contains(body, b"\"status\":\"held\"") => Answered {
            held: true,
            ..Answered::default()
        },
        StatusCode::OK => Answered {
            transfers: 1,
            ..Answered::default()
        },
        StatusCode::UNPROCESSABLE_ENTITY if contains(body, b"\"insufficient_funds\"") => Answered {
            transfers: 1,
            rejected: 1,
            ..Answered::default()
        },
        _ => Answered::failed(1, describe(status, body)),
    }
}

/// The batch endpoint's answer. Its items are counted as they are read, not collected: a
/// list of 1000 items per answer was allocated and grown only to be counted and dropped.
#[derive(Deserialize)]
struct BatchBody {
    results: CountedItems,
}

#[derive(Deserialize)]
struct BatchItem<'a> {
    http_status: u16,
    #[serde(default, borrow)]
    code: Option<&'a str>,
    /// Messages may hold escaped quotes, so they cannot always borrow.
    #[serde(default, borrow)]
    message: Option<std::borrow::Cow<'a, str>>,
}

/// What the items of a batch answer said, and how many there were.
#[derive(Debug, Default)]
struct CountedItems {
    answered: Answered,
    items: u64,
}

impl CountedItems {
    fn count(&mut self, item: &BatchItem) {
        self.items += 1;
        let answered = &mut self.answered;
        match (item.http_status, item.code) {
            (200, _) => answered.transfers += 1,
            (422, Some("insufficient_funds")) => {
                answered.transfers += 1;
                answered.rejected += 1;
            }
            (status, code) => {
                answered.errors += 1;
                if answered.error.is_none() {
                    answered.error = Some(format!(
                        "batch item {status} {}: {}",
                        code.unwrap_or("-"),
                        item.message.as_deref().unwrap_or("")
                    ));
                }
            }
        }
    }
}

impl<'de> Deserialize<'de> for CountedItems {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Items;
        impl<'de> serde::de::Visitor<'de> for Items {
            type Value = CountedItems;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of batch item results")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut items: A,
            ) -> Result<CountedItems, A::Error> {
                let mut counted = CountedItems::default();
                while let Some(item) = items.next_element::<BatchItem<'de>>()? {
                    counted.count(&item);
                }
                Ok(counted)
            }
        }
        deserializer.deserialize_seq(Items)
    }
}

fn batch_outcome(body: &[u8], size: u64) -> Answered {
    // One UTF-8 check of the whole answer, then a parse that trusts it: parsing the bytes
    // directly checked every key and string on its own, at a higher cost per byte.
    let parsed = std::str::from_utf8(body)
        .map_err(|error| error.to_string())
        .and_then(|text| serde_json::from_str::<BatchBody>(text).map_err(|e| e.to_string()));
    let CountedItems {
        mut answered,
        items,
    } = match parsed {
        Ok(parsed) => parsed.results,
        Err(error) => return Answered::failed(size, format!("unreadable batch answer: {error}")),
    };
    // Items the server did not answer at all are errors too.
    answered.errors += size.saturating_sub(items);
    answered
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_count_rejections_as_answers_and_the_rest_as_errors() {
        let single = single_outcome(
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"code":"insufficient_funds"}"#,
        );
        assert_eq!(
            (single.transfers, single.rejected, single.errors),
            (1, 1, 0)
        );
        let single = single_outcome(
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"code":"same_account"}"#,
        );
        assert_eq!((single.transfers, single.errors), (0, 1));
        let body = br#"{"results":[{"index":0,"http_status":200,"status":"committed"},
            {"index":1,"http_status":422,"status":"rejected","code":"insufficient_funds"},
            {"index":2,"http_status":503,"status":"error","code":"partition_unavailable"}]}"#;
        let batch = batch_outcome(body, 4);
        assert_eq!((batch.transfers, batch.rejected, batch.errors), (2, 1, 2));
        assert_eq!(
            batch.error.as_deref(),
            Some("batch item 503 partition_unavailable: ")
        );
        let batch = batch_outcome(b"{\"results\":[{\"http_status\":200}],", 3);
        assert_eq!((batch.transfers, batch.errors), (0, 3));
        let batch = batch_outcome(b"\xff", 3);
        assert_eq!((batch.transfers, batch.errors), (0, 3));
    }

    /// The JSON body of a transfer is the text the `format!` version wrote, byte for byte.
    #[test]
    fn transfer_json_is_unchanged() {
        let workload = Workload::new(1_000_003, "r6929f3a1http_batch".into());
        let mut rng = Rng::new(11);
        let mut out = String::new();
        for sequence in (0..2000).chain([u64::MAX - 1, u64::MAX]) {
            let draw = workload.draw(&mut rng, sequence % 7, sequence);
            let expected = format!(
                r#"{{"from_account":"bench-{}","to_account":"bench-{}","amount":"{}.{:02}","currency":"{CURRENCY}","transaction_id":"{}-{}-{}"}}"#,
                draw.from,
                draw.to,
                draw.amount_minor / 100,
                draw.amount_minor % 100,
                workload.run_tag,
                draw.client,
                draw.sequence,
            );
            out.clear();
            write_transfer_json(&workload, &draw, &mut out);
            assert_eq!(out, expected);
            let _: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        }
    }
}
