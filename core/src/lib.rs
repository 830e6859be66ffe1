//! # walletd core
//!
//! The wallet protocol, written once, and pure: no I/O, no clock reads, no randomness, no
//! async runtime. Time and inputs are parameters; outputs are values. The crate does not
//! depend on tokio or on anything that touches the operating system, so the compiler keeps
//! it that way; the async runtime that drives it on real files and sockets (or under the
//! simulator) is the `walletd-runtime` crate in `core/runtime`.
//!
//! # Layout
//! - [`model`]: money, ids, the partition hash and map, the events a log records.
//! - [`ledger`]: one partition's state, `decide` (all business rules) and `apply` (a fold),
//!   with its packed tables; transfer rows on disk only are found through `ledger::cold`.
//! - [`protocol`]: the TC/C coordinator of a home partition and the messages partitions
//!   exchange.
//! - [`replica`]: a partition replicated by Raft (raft-rs): the machine when it leads, a fold
//!   of the committed log when it follows.
//! - [`log`]: the record codec, snapshots and their chunk files, and replay (balances and
//!   movements as of any point).
//! - [`wire`]: the node-to-node frame codec: batched, versioned, CRC32C-checked frames.

/// Whether the known bug `$bug` ([`protocol::bugs::Bug`]) is switched on: only tests and
/// the simulator have the switches; everywhere else this is `false`, and the branch it
/// guards compiles away.
macro_rules! known_bug {
    ($bug:ident) => {{
        #[cfg(any(test, madsim, feature = "testing"))]
        let on = $crate::protocol::bugs::enabled($crate::protocol::bugs::Bug::$bug);
        #[cfg(not(any(test, madsim, feature = "testing")))]
        let on = false;
        on
    }};
}

pub mod ledger;
pub mod log;
pub mod model;
pub mod protocol;
pub mod replica;
pub mod wire;

#[cfg(test)]
mod hostile;
