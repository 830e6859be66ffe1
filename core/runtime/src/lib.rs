//! # walletd runtime
//!
//! The async half of walletd: it runs the pure protocol of `walletd-core` on a runtime
//! boundary shared by production (tokio, real files, fsync, TCP) and simulation (madsim,
//! with the same source built under `--cfg madsim`). No business rule lives here.
//!
//! # Layout
//! - [`driver`]: the async partition driver: inbox → ledger → group commit → replies.
//! - [`histogram`]: histograms of fixed buckets in atomics, for the driver's durations and
//!   sizes (exported by the server; no metrics library here, this crate runs simulated too).
//! - [`engine`]: partitions of one process and the [`engine::Client`] that routes to them.
//! - [`storage`]: the durable-storage trait; [`storage::file`] on real files with fsync.
//! - [`transport`]: how partitions send phase messages to each other (best effort).
//! - [`net`]: cluster nodes over TCP, or mutual TLS: forwarders to the owners of remote
//!   partitions, the authenticated peer listener, and [`net::start_node_with`]. The simulator
//!   runs it too, over madsim's simulated TCP (without TLS).

/// Whether the known bug `$bug` ([`walletd_core::protocol::bugs::Bug`]) is switched on:
/// only tests and the simulator have the switches; everywhere else this is `false`.
macro_rules! known_bug {
    ($bug:ident) => {{
        #[cfg(any(test, madsim))]
        let on = walletd_core::protocol::bugs::enabled(walletd_core::protocol::bugs::Bug::$bug);
        #[cfg(not(any(test, madsim)))]
        let on = false;
        on
    }};
}
pub(crate) use known_bug;

pub mod driver;
pub mod engine;
pub mod histogram;
pub mod net;
pub mod replica;
pub mod storage;
pub mod transport;
pub mod watch;
