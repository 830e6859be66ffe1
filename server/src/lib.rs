//! # walletd server
//!
//! The `wallet` binary: the HTTP API over a [`walletd_runtime::engine::Client`], the all-in-one
//! node, and the offline tools that read a data directory.
//!
//! # Layout
//! - [`cli`]: the command line (clap); one subcommand per job, each a module with a `run`.
//! - [`serve`]: `wallet serve`, the all-in-one node: recovery, HTTP, graceful shutdown.
//! - [`node`]: `wallet node`, one node of a cluster: the same API over partitions that run
//!   here or on the nodes the peer protocol reaches.
//! - [`cluster`]: the cluster file: nodes, addresses, partition owners, map version, secret,
//!   the files of mutual TLS between nodes.
//! - [`etcd`]: a small etcd v3 client over etcd's JSON gateway (no `protoc` at build time).
//! - [`map_store`]: the partition map in etcd (its stored document, compare-and-swap
//!   updates) and the liveness of nodes.
//! - [`map_follower`]: how a node started with `--etcd` keeps its map fresh, and serves on
//!   while etcd is down.
//! - [`cluster_cmd`]: `wallet cluster init`, `status`, `add-node`, `move`, `drain`,
//!   `remove-node`.
//! - [`tls`]: certificates and keys from PEM files, for HTTPS and for the peer links.
//! - [`https`]: serving the API over TLS (TLS handshake per connection, graceful shutdown).
//! - [`api`]: the HTTP API. The router takes a `Client` and driver statistics, never an
//!   `Engine`, so a cluster node can serve the same API. One file per group of routes:
//!   [`api::accounts`], [`api::transfers`], [`api::batch`], [`api::queries`],
//!   [`api::events`], [`api::metrics`], [`api::openapi`].
//! - [`errors`]: every error's HTTP status and stable `code`, in one place.
//! - [`auth`]: the optional bearer token of the `/v1` routes.
//! - [`datadir`]: the data directory layout and its recorded partition count.
//! - [`history`]: reading partition logs from disk (live or at rest), and
//!   [`history::index`], the per-account index that answers history pages and `as_of`
//!   balances at a cost that does not grow with the log.
//! - [`feed`]: the event feed of `GET /v1/events`: records after an lsn, the long-poll, the
//!   versioned JSON line of each event.
//! - [`replay_cmd`]: `wallet replay`, balances and history rebuilt from the logs.
//! - [`verify`]: `wallet verify`, the invariants of DESIGN section 5 checked at rest.
//! - [`rfc3339`]: timestamps in and out of the API.
//! - [`process`]: this process's resident memory and the machine's (for `/metrics`, the
//!   memory limit and `wallet bench memory`).
//! - [`bench`]: `wallet bench`, the load generator (HTTP, batch, in-process engine, engine per
//!   partition count, in-process cluster, the ledger alone, memory).

pub mod api;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod cluster_cmd;
pub mod datadir;
pub mod errors;
pub mod etcd;
pub mod feed;
pub mod history;
pub mod https;
pub mod map_follower;
pub mod map_store;
pub mod node;
pub mod node_http;
pub mod process;
pub mod replay_cmd;
pub mod replicated_node;
pub mod rfc3339;
pub mod serve;
pub mod storages;
pub mod tls;
pub mod verify;

/// Runs the `wallet` command line; what `main` of the binary calls.
pub fn main() -> std::process::ExitCode {
    cli::main()
}
