//! The `wallet` command line: one binary, one subcommand per job.
//!
//! `serve` runs the all-in-one node; `replay` and `verify` read a data directory at rest;
//! `node` runs one node of a cluster (`wallet node --config cluster.toml --id N`); `bench` is
//! the load generator. Each subcommand is a variant of [`Command`] and a module with a `run`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// walletd: a sharded wallet ledger with exactly-once transfers.
#[derive(Debug, Parser)]
#[command(
    name = "wallet",
    version,
    about,
    long_about = "walletd: a sharded wallet ledger with exactly-once transfers.\n\n\
        Accounts are spread over partitions by a stable hash of their id. Each partition is an \
        append-only, checksummed event log with group commit (one fsync per batch); transfers \
        across partitions run as Try-Confirm/Cancel driven by the source account's partition.\n\n\
        Start a server with `wallet serve`, inspect its data with `wallet replay`, and check it \
        with `wallet verify`. Log verbosity follows WALLET_LOG (e.g. WALLET_LOG=debug); \
        WALLET_LOG_FORMAT=json writes one JSON object per log line."
)]
pub struct Cli {
    /// How logs are written to stderr: `text` for people, `json` (one object per line) for
    /// log collectors.
    #[arg(long, env = "WALLET_LOG_FORMAT", global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line per event: time, level, target, message and fields (colored on a terminal).
    Text,
    /// One JSON object per event: `timestamp`, `level`, `target`, `fields` (the message and
    /// the event's structured fields) and the spans it happened in.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the all-in-one node: every partition in this process, the HTTP API on --listen.
    ///
    /// Recovers each partition from <data-dir>/partition-<p> (replaying its log, dropping a
    /// torn tail, resuming unfinished transfers), then serves: plain HTTP, or HTTPS only with
    /// --tls-cert and --tls-key. Ctrl-C or SIGTERM stops accepting, drains requests in
    /// flight, syncs every partition and exits 0.
    Serve(ServeArgs),
    /// Run one node of a multi-process cluster: its map from a cluster file, or from etcd.
    ///
    /// With --config, the map is the cluster file's, fixed while the node runs. With --etcd,
    /// the map is the one `wallet cluster init` wrote to etcd: the node registers its
    /// liveness there under a lease, watches the map and takes each new version as it comes
    /// (new nodes, new addresses; a map that would move this node's partitions is logged and
    /// refused), and keeps serving on the map it has while etcd is down. The cluster secret
    /// then comes from WALLET_CLUSTER_SECRET or --secret-file.
    ///
    /// Recovers the partitions the map gives node --id from
    /// <data-dir>/node-<id>/partition-<p>, links to every other node over the authenticated
    /// peer protocol (commands and TC/C messages for their partitions are forwarded there),
    /// and serves the same HTTP API as `serve` on the node's http address: any node answers
    /// for any account. Peer links run under mutual TLS when the cluster file has a [tls]
    /// section (see cluster.example.toml); the HTTP API is HTTPS with --tls-cert and
    /// --tls-key. Ctrl-C or SIGTERM drains, syncs and exits 0.
    Node(NodeArgs),
    /// Print every account's balance (or one account's history) rebuilt from the logs.
    ///
    /// Reads a data directory without a running server (or beside one: only whole records
    /// are read). With --as-of or --as-of-lsn, shows the state at that point instead of now.
    Replay(ReplayArgs),
    /// Check a data directory at rest: replay every partition from zero and test invariants.
    ///
    /// Checks: each log replays (no negative balance, nothing applied twice, no Try after its
    /// Cancel), each partition's conservation law, conservation across partitions per
    /// currency, that both sides of every cross-partition transfer agree, and that each
    /// snapshot equals the replay at its lsn. A cluster node's directory is checked for the
    /// partitions it holds; given every node's directory, the cluster is checked as one.
    /// Exits 0 with a summary, or 1 listing every violation (2 if a directory cannot be read
    /// at all).
    Verify(VerifyArgs),
    /// Load generator: transfers/s and latency, over HTTP, in-process, across nodes.
    ///
    /// Opens accounts with funds, then sends transfers between random accounts for
    /// --seconds (after --warmup-seconds) in each mode asked for: `http` (single transfers
    /// to a spawned `wallet serve`, or to --target), `batch` (the batch endpoint), `engine`
    /// (the engine in-process, no HTTP); `partitions` (the engine per partition count,
    /// transfers within one partition against transfers across partitions) and `cluster`
    /// (nodes in this process over loopback TCP, every transfer across nodes). Prints a
    /// table per kind of run (transfers/s, p50/p99/p99.9 latency, rejected, errors), checks
    /// that money was conserved, and ends with one machine-readable line per kind. `ledger`
    /// times the ledger alone on one core (no disk); `memory` measures resident bytes per
    /// open account.
    Bench(crate::bench::BenchArgs),
    /// The partition map in etcd: write the first one, show it, add, drain and remove nodes,
    /// move a partition's copy.
    ///
    /// `init` stores a cluster file's map in etcd (each partition's group of copies with
    /// it), `status` prints the map with each node's liveness and each partition's group,
    /// leader and lag, `add-node` adds a node holding no copy, `move` moves one copy of a
    /// partition from one node to another, `drain` moves every copy off a node,
    /// `remove-node` removes a node holding none. Every change is a compare-and-swap on the
    /// map's revision and raises its map_version; nodes started with --etcd take it without
    /// a restart. `move` and `drain` are resumed by running them again.
    Cluster(crate::cluster_cmd::ClusterArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory holding the partitions' logs and snapshots (created if missing).
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// Number of partitions. Fixed when the data directory is created; the server refuses
    /// to start on a directory made with another count.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub partitions: u32,
    /// Address of the HTTP API (port 0 picks a free port; the log says which).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// How a node serves: the HTTP API's limits and the partitions' snapshots. Shared by `serve`
/// and `node`.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// How long a transfer request waits for its outcome before answering 202 pending.
    #[arg(long, default_value_t = 2000)]
    pub transfer_wait_ms: u64,
    /// Hard limit on any request; past it the answer is 503 request_timeout.
    #[arg(long, default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// Longest wait of a long-poll of GET /v1/events (`wait_ms`; more is 400 invalid_query).
    /// Must stay below --request-timeout-ms, so that a long-poll ends with its records (or
    /// none) rather than with 503 request_timeout. Default: 20000, or two thirds of
    /// --request-timeout-ms when that is shorter.
    #[arg(long)]
    pub feed_wait_max_ms: Option<u64>,
    /// Largest request body accepted (413 body_too_large beyond).
    #[arg(long, default_value_t = 2 << 20)]
    pub body_limit_bytes: usize,
    /// Most /v1 requests handled at once; more are refused with 429 overloaded.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_in_flight: u64,
    /// Most transfers in one batch request (413 batch_too_large beyond).
    #[arg(long, default_value_t = 8000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch_items_max: u64,
    /// Refuse new writes (503 memory_limit) while the resident memory of the process is
    /// above this many MiB; reads, and transfers already under way, go on. 0: no limit.
    /// [default: 90% of the machine's memory, or of its cgroup's limit if lower]
    #[arg(long)]
    pub memory_limit_mb: Option<u64>,
    /// Require `Authorization: Bearer <token>` on every /v1 route.
    #[arg(long, env = "WALLET_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Serve the API over HTTPS only, presenting this certificate: a PEM file with the
    /// server's certificate first, then any intermediates. Needs --tls-key. Without both, the
    /// API is plain HTTP.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert: a PEM file (PKCS#8, PKCS#1 or SEC1). Needs --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// With --tls-cert on a cluster node: the CA (PEM) that signed the other nodes' API
    /// certificates. History and `as_of` reads of accounts another node keeps are then
    /// forwarded to it over HTTPS, its certificate checked against this CA and its address;
    /// without it, a node serving HTTPS answers them 503.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// On Ctrl-C or SIGTERM, how long requests in flight may take to finish before their
    /// connections are closed and the partitions stop anyway.
    #[arg(long, default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
    /// Write a snapshot of a partition after this many events (0: never). Snapshots bound
    /// recovery time; the log alone always suffices.
    #[arg(long, default_value_t = 1_000_000)]
    pub snapshot_every_events: u64,
    /// The in-memory budget of each partition's transfers table, in rows (the home rows of
    /// transfers, holds and multi-leg transactions from its accounts, with a hold's terms and
    /// a transaction's legs; the credit rows of transfers into them from other partitions;
    /// its parts of transactions homed elsewhere). Beyond it a snapshot writes the final rows
    /// to chunk files and they leave memory; a retry of an old one reads its row back from
    /// disk (about 100 bytes of memory per row kept, more with a transaction's legs; 7 per
    /// row on disk). Rows still in flight stay, whatever the budget. Needs snapshots.
    #[arg(long, default_value_t = walletd_core::protocol::machine::TRANSFER_ROWS_IN_MEMORY_MAX_DEFAULT as u64, value_parser = clap::value_parser!(u64).range(1..=4_000_000_000))]
    pub transfer_rows_in_memory_max: u64,
    /// Records per chunk of a partition's history index: each chunk is built in memory
    /// (about 100 bytes per record) and then written as one file of `<partition>/history/`.
    #[arg(long, default_value_t = 1 << 17, value_parser = clap::value_parser!(u32).range(16..=1 << 22))]
    pub history_chunk_records: u32,
    /// Keep each partition's history index up to date in the background, so that a history
    /// or `as_of` read finds little to index first. Off by default: indexing costs about
    /// 1.7 µs of CPU per record, which at full write load takes a third to a half of the
    /// throughput of this machine's two cores; without it a read indexes what was written
    /// since the last read (about 600,000 records a second) before it answers.
    #[arg(long)]
    pub history_follow: bool,
    /// How a batch is made durable before it is answered.
    #[arg(long, value_enum, default_value_t = GroupCommit::Node)]
    pub group_commit: GroupCommit,
}

/// How a node's partitions make their batches durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupCommit {
    /// The batches of all partitions go to disk together through the node journal
    /// (<data-dir>/journal): one fdatasync per round for the whole node. Each partition's own
    /// log is synced at checkpoints, and recovery redoes from the journal what a log lost.
    Node,
    /// Each partition syncs its own log: one fdatasync per partition batch.
    Partition,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("map_source").required(true).args(["config", "etcd"])))]
pub struct NodeArgs {
    /// The cluster file (see cluster.example.toml): nodes, their addresses, partition owners,
    /// map version, the cluster secret (or set WALLET_CLUSTER_SECRET), and optionally the
    /// [tls] section: `ca`, `cert` and `key` PEM files for mutual TLS between nodes.
    #[arg(long, conflicts_with_all = ["etcd", "etcd_prefix", "secret_file", "peer_tls_ca"])]
    pub config: Option<PathBuf>,
    /// Which node of the map this process is.
    #[arg(long)]
    pub id: u32,
    /// Instead of --config: etcd's client URL(s), `http://host:port`, comma-separated for
    /// several. The map is read and watched there (written by `wallet cluster init`).
    #[arg(long, env = "WALLET_ETCD")]
    pub etcd: Option<String>,
    /// With --etcd: the key prefix of this cluster's keys in etcd.
    #[arg(long, default_value = crate::map_store::PREFIX_DEFAULT)]
    pub etcd_prefix: String,
    /// With --etcd: a file holding the cluster secret (WALLET_CLUSTER_SECRET overrides it).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// With --etcd: peer links under mutual TLS, as a cluster file's [tls] section gives
    /// them: the CA that signed every node's certificate (PEM).
    #[arg(long, requires_all = ["peer_tls_cert", "peer_tls_key"])]
    pub peer_tls_ca: Option<PathBuf>,
    /// With --peer-tls-ca: this node's certificate, then any intermediates (PEM), naming the
    /// host of its peer address.
    #[arg(long, requires = "peer_tls_ca")]
    pub peer_tls_cert: Option<PathBuf>,
    /// With --peer-tls-ca: the private key of --peer-tls-cert (PEM).
    #[arg(long, requires = "peer_tls_ca")]
    pub peer_tls_key: Option<PathBuf>,
    /// With --etcd: the lease of the node's liveness key, in seconds. A node that stops
    /// renewing it (stopped, frozen, cut off from etcd) shows as down this long after.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub lease_ttl_s: u64,
    /// Parent of the node's data: its partitions live in <data-dir>/node-<id>/partition-<p>.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// How long a transfer's Try may go unanswered before its home asks the destination to
    /// abort it: cancel unless it tried. The destination's answer decides (a credit it holds
    /// durably commits the transfer), so a transfer to a node that is down stays pending
    /// until that node answers.
    #[arg(long, default_value_t = 2000)]
    pub try_timeout_ms: u64,
    /// A replicated partition compacts its Raft log once this many entries whose records
    /// are durable in its partition log have gathered (keeping a quarter as many behind,
    /// for followers a little behind). A replica behind the compacted log fetches the
    /// records it lacks from another node's partition log.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(4..=1_000_000))]
    pub raft_compact_after: u64,
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// How `replay` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Text,
    /// One JSON document for programs.
    Json,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The data directory to read.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// Show the state as of this RFC 3339 time (e.g. 2024-05-01T12:00:00Z).
    #[arg(long, conflicts_with = "as_of_lsn")]
    pub as_of: Option<String>,
    /// Show the state after this log record. Lsns are per partition, so this needs
    /// --partition or --account.
    #[arg(long)]
    pub as_of_lsn: Option<u64>,
    /// Print this account's balance and history instead of every balance.
    #[arg(long)]
    pub account: Option<String>,
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The data directory to check (of a stopped server). Repeat it with the directory of
    /// every node of a cluster (<data-dir>/node-<N>) to check the cluster as a whole.
    #[arg(long, default_value = "./data")]
    pub data_dir: Vec<PathBuf>,
}

/// Writes a line to stdout, ignoring a closed pipe (`wallet replay | head` must not panic).
pub fn print_line(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}

/// Sets up logging to stderr in `format`; `WALLET_LOG` overrides `default` (an `EnvFilter`
/// directive).
fn init_tracing(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_env("WALLET_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::stderr().is_terminal();
    let _ = log_subscriber(format, filter, ansi, std::io::stderr).try_init();
}

/// The subscriber that writes logs in `format` to `writer` (ANSI colors only in text).
fn log_subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        // The current span is already the last of `spans`.
        LogFormat::Json => Box::new(builder.json().with_current_span(false).finish()),
    }
}

/// Parses the command line and runs the chosen subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    match cli.command {
        Command::Serve(args) => {
            init_tracing(format, "info,tower_http=warn");
            crate::serve::run(args)
        }
        Command::Node(args) => {
            init_tracing(format, "info,tower_http=warn");
            crate::node::run(args)
        }
        Command::Replay(args) => {
            init_tracing(format, "warn");
            crate::replay_cmd::run(args)
        }
        Command::Verify(args) => {
            init_tracing(format, "warn");
            crate::verify::run(args)
        }
        Command::Cluster(args) => {
            init_tracing(format, "warn");
            crate::cluster_cmd::run(args)
        }
        Command::Bench(args) => {
            // The in-process cluster's links go down as its nodes stop at the end of a run,
            // which is no news; a link that fails during a run shows in the table as errors.
            init_tracing(format, "warn,walletd_runtime::net=error");
            crate::bench::main(args)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// A buffer logs are written to.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;

        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    /// Logs an event with a field inside a span with a field, and a debug event the filter
    /// drops; what was written.
    fn logged(format: LogFormat) -> String {
        let captured = Captured::default();
        let subscriber = log_subscriber(format, EnvFilter::new("info"), false, captured.clone());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("recovery", partition = 3);
            let _entered = span.enter();
            tracing::info!(lsn = 42, "snapshot written");
            tracing::debug!("not wanted");
        });
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn json_logs_are_one_object_per_line_with_structured_fields() {
        let text = logged(LogFormat::Json);
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect();
        assert_eq!(events.len(), 1, "{text}");
        let event = &events[0];
        assert_eq!(event["level"], "INFO");
        assert_eq!(event["target"], module_path!());
        assert_eq!(event["fields"]["message"], "snapshot written");
        assert_eq!(event["fields"]["lsn"], 42);
        assert_eq!(event["spans"][0]["name"], "recovery");
        assert_eq!(event["spans"][0]["partition"], 3);
        assert!(event["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')));
    }

    #[test]
    fn text_logs_are_the_default() {
        let cli = Cli::parse_from(["wallet", "serve"]);
        assert_eq!(cli.log_format, LogFormat::Text);
        let text = logged(LogFormat::Text);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(" INFO "), "{text}");
        assert!(text.contains("recovery{partition=3}"), "{text}");
        assert!(text.contains("snapshot written lsn=42"), "{text}");
        assert!(serde_json::from_str::<serde_json::Value>(text.trim()).is_err());
    }

    #[test]
    fn the_log_format_is_also_a_flag_and_refuses_unknown_formats() {
        let cli = Cli::try_parse_from(["wallet", "serve", "--log-format", "json"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let cli = Cli::try_parse_from(["wallet", "--log-format", "json", "verify"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["wallet", "--log-format", "yaml", "serve"]).is_err());
    }

    #[test]
    fn serve_defaults_match_the_readme() {
        let cli = Cli::parse_from(["wallet", "serve"]);
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        assert_eq!(args.partitions, 8);
        assert_eq!(args.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(args.data_dir, PathBuf::from("./data"));
        assert_eq!(args.service.transfer_wait_ms, 2000);
        assert_eq!(args.service.body_limit_bytes, 2 << 20);
        assert_eq!(args.service.max_in_flight, 4096);
        assert_eq!(args.service.tls_cert, None);
        assert_eq!(args.service.tls_key, None);
    }

    #[test]
    fn tls_needs_both_a_certificate_and_a_key() {
        for (given, missing) in [("--tls-cert", "--tls-key"), ("--tls-key", "--tls-cert")] {
            for command in [
                vec!["wallet", "serve", given, "x.pem"],
                vec![
                    "wallet", "node", "--config", "c.toml", "--id", "0", given, "x.pem",
                ],
            ] {
                let error = Cli::try_parse_from(&command).unwrap_err();
                assert_eq!(
                    error.kind(),
                    clap::error::ErrorKind::MissingRequiredArgument
                );
                assert!(error.to_string().contains(missing), "{error}");
            }
        }
        let cli = Cli::parse_from([
            "wallet",
            "serve",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ]);
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        assert_eq!(args.service.tls_cert, Some(PathBuf::from("c.pem")));
        assert_eq!(args.service.tls_key, Some(PathBuf::from("k.pem")));
    }
}
