//! The domain's vocabulary: what the ledger, the protocol and the log all speak of.
//!
//! - [`money`]: currencies (ISO 4217 minor units) and strict decimal-string amounts.
//! - [`ids`]: account and transaction identifiers, validated and stored inline.
//! - [`partition`]: the stable account → partition hash and the versioned partition map.
//! - [`placement`]: which nodes hold each replicated partition's copies, and which founded it.
//! - [`event`]: the facts a partition log records.
//! - [`transaction`]: multi-leg transactions and the net of their legs on each account.

pub mod event;
pub mod ids;
pub mod money;
pub mod partition;
pub mod placement;
pub mod transaction;
