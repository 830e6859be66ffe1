//! # walletd core
//!
//! The wallet protocol, written once: pure state machines with no I/O, no clock reads and no
//! randomness (time and inputs are parameters), plus the async partition driver that runs
//! them on top of a runtime boundary shared by production (tokio) and simulation (madsim).
//!
//! # Layout
//! - [`money`]: currencies (ISO 4217 minor units) and strict decimal-string amounts.
//! - [`ids`]: account and transaction identifiers, validated and stored inline.
//! - [`partition`]: the stable account → partition hash and the versioned partition map.
//! - [`event`]: the facts a partition log records.
//! - [`ledger`]: one partition's state, `decide` (all business rules) and `apply` (a fold).
//! - `transfer_table`: the ledger's idempotency and phase rows, packed (ids in an arena).
//! - `row_index`: the transfers table's hash index, which grows without stalling.
//! - [`coordinator`]: the TC/C coordinator of a home partition (sans-IO).
//! - [`codec`]: the log record format: versioned, length-prefixed, CRC32C-checked.
//! - [`snapshot`]: a partition's whole state as one canonical, checksummed blob.
//! - [`replay`]: folding a log back into state; balances and movements as of any point.
//! - [`storage`]: the durable-storage trait; [`storage::file`] on real files with fsync.
//! - [`transport`]: how partitions send phase messages to each other (best effort).
//! - [`driver`]: the async partition driver: inbox → ledger → group commit → replies.
//! - [`engine`]: partitions of one process and the [`engine::Client`] that routes to them.
//! - [`wire`]: the node-to-node protocol: batched, versioned, CRC32C-checked frames.
//! - `net` (not under the simulator): cluster nodes over TCP: forwarders to the owners of
//!   remote partitions, the authenticated peer listener, and `net::start_node`.
//! - `bugs` (tests and simulation only): switchable known-bug mutations.
//! - `tests` (tests only): ledger, coordinator, property and mutation tests of the core.

pub(crate) mod append_table;
#[cfg(any(test, madsim))]
pub mod bugs;
pub(crate) mod chunked;
pub mod codec;
pub mod coordinator;
pub mod driver;
pub mod engine;
pub mod event;
pub mod ids;
pub mod ledger;
pub mod money;
#[cfg(not(madsim))]
pub mod net;
pub mod partition;
pub mod replay;
pub(crate) mod row_index;
pub mod snapshot;
pub mod storage;
pub(crate) mod transfer_table;
pub mod transport;
pub mod wire;

#[cfg(test)]
mod tests;
