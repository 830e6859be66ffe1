//! End-to-end tests against real `wallet` processes; the tests live in `tests/tests/`.
//!
//! # How the binary is found
//! A test can only learn the path of a binary of its own package (`CARGO_BIN_EXE_<name>`),
//! so this package builds `wallet-e2e`, whose `main` is the server's `main`: the same
//! program as `wallet`, always freshly built by `cargo test -p walletd-e2e`. Set `WALLET_BIN`
//! to run the suite against another build (e.g. `target/release/wallet`). Use the
//! [`wallet!`] macro to get a [`Wallet`] for the right binary.
//!
//! # Layout
//! - [`Wallet`]: runs the binary's subcommands (`serve`, `verify`, `replay`, `--help`).
//! - [`Server`]: one `wallet serve` child on a free loopback port with its own data directory,
//!   stopped by SIGTERM or SIGKILL, killed on drop; or one `wallet node` of a cluster
//!   ([`Wallet::node`]), on the addresses its cluster file gives it.
//! - [`free_ports`]: loopback ports nobody listens on, for cluster files.
//! - [`http`]: a small blocking HTTP/1.1 client (one request per connection), enough to send
//!   the malformed and slow requests the tests need, without an HTTP client dependency.
//! - [`accounts_in`]: account ids that land on chosen partitions.
//! - [`read_model`]: an example consumer of the event feed, folding it into balances.
//! - [`etcd`]: a private etcd on free loopback ports, for clusters whose map lives there.
//! - [`cluster_on_etcd`]: a cluster of `wallet node --etcd` processes on such an etcd.

pub mod cluster_on_etcd;
pub mod etcd;
pub mod read_model;

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use walletd_core::model::ids::AccountId;
use walletd_core::model::partition::partition_of;

/// How long a server may take to recover and listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long test servers let a transfer request wait for its outcome (`--transfer-wait-ms`).
const TRANSFER_WAIT_MS: &str = "20000";
/// How long a stopping server may take to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The `wallet` program under test: `WALLET_BIN` if set, else this package's `wallet-e2e`.
#[macro_export]
macro_rules! wallet {
    () => {
        $crate::Wallet::new(env!("CARGO_BIN_EXE_wallet-e2e"))
    };
}

/// Runs the `wallet` program.
#[derive(Debug, Clone)]
pub struct Wallet {
    pub bin: PathBuf,
}

impl Wallet {
    pub fn new(built: &str) -> Wallet {
        let bin =
            std::env::var_os("WALLET_BIN").map_or_else(|| PathBuf::from(built), PathBuf::from);
        assert!(bin.exists(), "no wallet binary at {}", bin.display());
        Wallet { bin }
    }

    /// Runs `wallet <args>` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .env("WALLET_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run wallet")
    }

    /// `wallet verify --data-dir <dir>`: (exit code, stdout).
    pub fn verify(&self, data_dir: &Path) -> (i32, String) {
        let output = self.run(&["verify", "--data-dir", &data_dir.display().to_string()]);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.code().unwrap_or(-1), stdout)
    }

    /// Starts `wallet serve` on a free port with `data_dir` and extra arguments.
    pub fn serve(&self, data_dir: &Path, extra: &[&str]) -> Server {
        let mut args: Vec<OsString> = vec!["serve".into(), "--listen".into(), "127.0.0.1:0".into()];
        // Tests expect final outcomes: wait for them far longer than a loaded CI machine needs,
        // unless the test is about the wait itself.
        if !extra.contains(&"--transfer-wait-ms") {
            args.extend(["--transfer-wait-ms".into(), TRANSFER_WAIT_MS.into()]);
        }
        args.extend(["--data-dir".into(), data_dir.into()]);
        args.extend(extra.iter().map(OsString::from));
        Server::start(self, args, data_dir)
    }

    /// Starts `wallet node --config <config> --id <id> --data-dir <data_dir>` and extra
    /// arguments. The server's `data_dir` is the node's own, `<data_dir>/node-<id>`.
    pub fn node(&self, config: &Path, id: u32, data_dir: &Path, extra: &[&str]) -> Server {
        let mut args: Vec<OsString> = vec!["node".into(), "--config".into(), config.into()];
        args.extend(["--id".into(), id.to_string().into()]);
        args.extend(["--data-dir".into(), data_dir.into()]);
        args.extend(extra.iter().map(OsString::from));
        Server::start(self, args, &data_dir.join(format!("node-{id}")))
    }

    /// Starts `wallet node --etcd <etcd> --id <id> --data-dir <data_dir>` and extra arguments
    /// (the cluster secret among them, e.g. `--secret-file`).
    pub fn node_on_etcd(&self, etcd: &str, id: u32, data_dir: &Path, extra: &[&str]) -> Server {
        let mut args: Vec<OsString> = vec!["node".into(), "--etcd".into(), etcd.into()];
        args.extend(["--id".into(), id.to_string().into()]);
        args.extend(["--data-dir".into(), data_dir.into()]);
        args.extend(extra.iter().map(OsString::from));
        Server::start(self, args, &data_dir.join(format!("node-{id}")))
    }
}

/// A running `wallet serve`.
pub struct Server {
    /// `None` once the process has exited and been reaped.
    child: Mutex<Option<Child>>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(wallet: &Wallet, args: Vec<OsString>, data_dir: &Path) -> Server {
        let mut child = Command::new(&wallet.bin)
            .args(args)
            .env("WALLET_LOG", "info,tower_http=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wallet");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // `http://`, or `https://` when serving TLS.
                if line.contains("listening on http") {
                    if let Some(addr) = line.split("addr=").nth(1) {
                        let _ = addr_tx.send(addr.trim().to_string());
                    }
                }
                sink.lock().expect("logs").push(line);
            }
        });
        let mut server = Server {
            child: Mutex::new(Some(child)),
            addr: "127.0.0.1:1".parse().expect("addr"),
            data_dir: data_dir.to_path_buf(),
            logs,
        };
        let started = Instant::now();
        loop {
            if let Ok(addr) = addr_rx.recv_timeout(Duration::from_millis(50)) {
                server.addr = addr.parse().expect("listening address");
                return server;
            }
            if let Some(status) = server.try_wait() {
                panic!(
                    "wallet serve exited with {status} before listening:\n{}",
                    server.logs()
                );
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "server did not start:\n{}",
                server.logs()
            );
        }
    }

    /// The exit status, if the process has exited (reaping it).
    fn try_wait(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().expect("child");
        let status = child.as_mut()?.try_wait().expect("try_wait")?;
        *child = None;
        Some(status)
    }

    pub fn pid(&self) -> u32 {
        self.child
            .lock()
            .expect("child")
            .as_ref()
            .expect("server running")
            .id()
    }

    /// Everything the server logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().expect("logs").join("\n")
    }

    pub fn get(&self, path: &str) -> http::Response {
        http::request(self.addr, "GET", path, &[], None).expect("GET")
    }

    pub fn post(&self, path: &str, body: &Value) -> http::Response {
        self.try_post(path, body).expect("POST")
    }

    /// A POST that may fail at the transport level (the server may be killed meanwhile).
    pub fn try_post(&self, path: &str, body: &Value) -> Result<http::Response, String> {
        let body = body.to_string();
        http::request(
            self.addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        )
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&self) -> ExitStatus {
        self.signal("-TERM");
        self.wait_exit()
    }

    /// Sends SIGTERM without waiting (see [`Server::wait_exit`]).
    pub fn send_sigterm(&self) {
        self.signal("-TERM");
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        self.try_wait().is_none() && self.child.lock().expect("child").is_some()
    }

    /// SIGKILL: the process dies at once, mid-whatever. Callable while other threads still
    /// send requests.
    pub fn kill9(&self) {
        self.signal("-KILL");
        self.wait_exit();
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let sent = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                started.elapsed() < STOP_TIMEOUT,
                "server did not stop:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.get_mut().ok().and_then(Option::as_mut) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `count` distinct account ids (prefixed `prefix`) on `partition` of `partitions`.
pub fn accounts_in(prefix: &str, partition: u32, partitions: u32, count: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|id| partition_of(&AccountId::new(id).expect("valid id"), partitions) == partition)
        .take(count)
        .collect()
}

/// `count` distinct loopback ports nobody listens on, for the cluster files of tests.
///
/// Taken below the kernel's ephemeral range (32768 and up on Linux), never from it: the
/// servers' own `127.0.0.1:0` listeners and every outgoing connection draw their ports from
/// that range, and one of them took a port chosen there between its choice and the node
/// that bound it (`Address already in use`, a test failing by chance). Here a process-wide
/// counter hands each port out once, starting where the process id points so that test
/// processes that overlap start apart, and a port something already holds is skipped.
pub fn free_ports(count: usize) -> Vec<u16> {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let start = std::process::id().wrapping_mul(97) % SPAN;
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    let mut ports = Vec::with_capacity(count);
    for _ in 0..SPAN {
        if ports.len() == count {
            break;
        }
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    assert_eq!(ports.len(), count, "no {count} free ports left below 32000");
    ports
}

/// Polls `check` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}

pub mod http {
    //! A minimal blocking HTTP/1.1 client: one request per connection (`Connection: close`),
    //! bodies by `Content-Length` or chunked. Enough for tests, including raw requests.

    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    use serde_json::Value;

    /// Longest a test request may take.
    const IO_TIMEOUT: Duration = Duration::from_secs(30);

    #[derive(Debug, Clone)]
    pub struct Response {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Response {
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }

        /// The body as JSON; panics with the body if it is not JSON.
        pub fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap_or_else(|e| {
                panic!("not JSON ({e}): {:?} (status {})", self.text(), self.status)
            })
        }

        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        /// The `code` of an error body.
        pub fn code(&self) -> String {
            self.json()["code"].as_str().unwrap_or("").to_string()
        }
    }

    /// Sends one request and reads the whole response.
    pub fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response, String> {
        send_raw(addr, &request_bytes(addr, method, path, headers, body))
    }

    /// The bytes of one request to `addr`, with `Connection: close`: its response ends where
    /// the server closes the connection.
    pub fn request_bytes(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(body.unwrap_or_default());
        raw
    }

    /// Sends raw bytes and parses the response.
    pub fn send_raw(addr: SocketAddr, raw: &[u8]) -> Result<Response, String> {
        exchange(&mut connect(addr)?, raw)
    }

    /// Sends raw bytes on any byte stream (a TLS session, say) and parses the response.
    pub fn exchange<S: Read + Write>(stream: &mut S, raw: &[u8]) -> Result<Response, String> {
        stream.write_all(raw).map_err(|e| format!("write: {e}"))?;
        stream.flush().map_err(|e| format!("write: {e}"))?;
        read_response(stream)
    }

    pub fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
        let stream =
            TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        Ok(stream)
    }

    /// Reads a response until the server closes the connection.
    pub fn read_response<S: Read>(stream: &mut S) -> Result<Response, String> {
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .map_err(|e| format!("read: {e}"))?;
        parse(&raw)
    }

    fn parse(raw: &[u8]) -> Result<Response, String> {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("no header end in {:?}", String::from_utf8_lossy(raw)))?;
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let rest = &raw[split + 4..];
        let chunked = headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        let body = if chunked {
            dechunk(rest)?
        } else {
            rest.to_vec()
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("bad chunk header")?;
            let size_text = String::from_utf8_lossy(&rest[..line_end]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|e| format!("bad chunk size: {e}"))?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                return Ok(body);
            }
            body.extend_from_slice(rest.get(..size).ok_or("short chunk")?);
            rest = rest.get(size + 2..).ok_or("short chunk")?;
        }
    }
}

/// A tiny deterministic generator for load-test clients (a 64-bit LCG, high bits out).
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Lcg {
        Lcg(seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1))
    }

    pub fn draw(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// Two different accounts of `accounts` (at least two), drawn at random.
    pub fn pair(&mut self, accounts: &[String]) -> (String, String) {
        let from = self.draw() as usize % accounts.len();
        let mut to = self.draw() as usize % accounts.len();
        if to == from {
            to = (from + 1) % accounts.len();
        }
        (accounts[from].clone(), accounts[to].clone())
    }
}
