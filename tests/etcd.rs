//! A private etcd for a test: its own process on free loopback ports, its data in a
//! temporary directory, killed when the [`PrivateEtcd`] is dropped (a failing test too).
//!
//! The `etcd` binary is `WALLET_ETCD_BIN` if set, else `etcd` on the PATH; if there is none,
//! `.ci/install-etcd.sh` installs Debian's `etcd-server` (root and apt needed). Where that
//! fails too, [`PrivateEtcd::start`] returns `None` after printing why, and the test skips.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::{free_ports, http, wait_until};

/// How long etcd may take to answer after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One etcd process and its data; stopped and removed on drop.
pub struct PrivateEtcd {
    bin: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// Only one test at a time runs the installer.
static INSTALL: Mutex<()> = Mutex::new(());

impl PrivateEtcd {
    /// Starts etcd, installing it first if it is missing; `None` (after a loud message on
    /// stderr) if it cannot be had on this machine.
    pub fn start() -> Option<PrivateEtcd> {
        let bin = match etcd_binary() {
            Ok(bin) => bin,
            Err(reason) => {
                // Straight to stderr: the test harness captures `eprintln!` of a passing
                // test, and a skip must be seen.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n!!!!!!!! SKIPPED: no etcd for this test: {reason}\n\
                     !!!!!!!! install Debian's etcd-server, or set WALLET_ETCD_BIN\n"
                );
                return None;
            }
        };
        let ports = free_ports(2);
        let mut etcd = PrivateEtcd {
            bin,
            dir: tempfile::tempdir().expect("tempdir for etcd"),
            client_port: ports[0],
            peer_port: ports[1],
            child: None,
        };
        etcd.restart();
        Some(etcd)
    }

    /// The client URL, for `--etcd`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts the process (again, on the same ports and data) and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let client_url = self.url();
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).expect("etcd log");
        let child = Command::new(&self.bin)
            .arg("--name=walletd-test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=walletd-test={peer_url}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let address = format!("127.0.0.1:{}", self.client_port)
            .parse()
            .expect("address");
        let ready = wait_until(READY_TIMEOUT, || {
            let answer = http::request(
                address,
                "POST",
                "/v3/kv/range",
                &[("Content-Type", "application/json")],
                Some(br#"{"key":"AA=="}"#),
            );
            matches!(answer, Ok(response) if response.status == 200)
        });
        assert!(ready, "etcd did not start:\n{}", self.logs());
    }

    /// Stops the process (SIGKILL: as abrupt as a crash) and waits for it; its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What etcd logged.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for PrivateEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn etcd_binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("WALLET_ETCD_BIN") {
        let bin = PathBuf::from(bin);
        return match bin.is_file() {
            true => Ok(bin),
            false => Err(format!("WALLET_ETCD_BIN={} is not a file", bin.display())),
        };
    }
    if let Some(found) = on_path("etcd") {
        return Ok(found);
    }
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = on_path("etcd") {
        return Ok(found);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/install-etcd.sh");
    let installed = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !installed.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&installed.stderr).trim()
        ));
    }
    on_path("etcd").ok_or_else(|| "etcd installed but not on the PATH".to_string())
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
