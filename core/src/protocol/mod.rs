//! How partitions agree: the TC/C coordinator of a home partition and the messages
//! partitions exchange.
//!
//! - [`coordinator`]: drives cross-partition transfers from their home partition (sans-IO).
//! - [`credit_watch`]: a destination asks about credits that stay pending (their home may
//!   have lost the transfer).
//! - [`invariants`]: the invariants of DESIGN section 5, one function each, shared by the
//!   tests, the simulator and `wallet verify`.
//! - [`machine`]: the partition machine: everything a partition decides, sans-IO.
//! - [`message`]: what crosses a partition's boundary: client commands and queries, their
//!   answers, and the phase messages between partitions.
//! - [`tx_coordinator`]: drives multi-leg transactions from their home, and asks about
//!   them from their participants (sans-IO).
//! - `bugs` (tests and simulation only): switchable known-bug mutations.
//! - `tests` (tests only): ledger, coordinator, property and mutation tests.

#[cfg(any(test, madsim, feature = "testing"))]
pub mod bugs;
pub mod coordinator;
pub mod credit_watch;
pub mod invariants;
pub mod machine;
pub mod message;
mod timer_queue;
pub mod tx_coordinator;

#[cfg(test)]
pub(crate) mod tests;
