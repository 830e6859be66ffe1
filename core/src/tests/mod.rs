//! Tests of the pure core that need the crate's insides: the known-bug switches of
//! [`crate::bugs`] exist only in test and simulation builds.
//!
//! # Layout
//! - `support`: identifiers, amounts, accounts placed on chosen partitions, ledger snapshots.
//! - `ledger`: every rule of `Ledger::decide` and `Ledger::apply`, given/when/then.

mod ledger;
mod support;
