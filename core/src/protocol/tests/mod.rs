//! Tests of the pure core that need the crate's insides: the known-bug switches of
//! [`crate::protocol::bugs`] exist only in test and simulation builds.
//!
//! # Layout
//! - `support`: identifiers, amounts, accounts placed on chosen partitions, ledger snapshots.
//! - `cluster`: a deterministic cluster of ledgers and coordinators with a fake clock and a
//!   network the test delivers, duplicates and drops messages of.
//! - `checks`: the invariants of DESIGN section 5 as checkers returning a `Violation`.
//! - `ledger`: every rule of `Ledger::decide` and `Ledger::apply`, given/when/then.
//! - `coordinator`: the TC/C coordinator alone and inside a cluster.
//! - `properties`: random schedules of clients, network faults, crashes and time.
//! - `holds`: holds within a partition and across partitions, at chosen times.
//! - `refunds`: refunds within a partition and across partitions, given/when/then.
//! - `transactions`: multi-leg transactions within a partition and across partitions by
//!   hand, and what their state survives.
//! - `mutations`: each known bug switched on is caught by the checker of its invariant.

// Violations carry transfer keys and commands, whose ids are stored inline: large `Err`s,
// returned only when a test is about to fail.
#![allow(clippy::result_large_err)]

mod checks;
mod cluster;
mod coordinator;
mod holds;
mod ledger;
mod mutations;
mod properties;
mod refunds;
pub(crate) mod support;
mod transactions;
