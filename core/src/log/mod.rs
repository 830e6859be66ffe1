//! The partition log in bytes, and folding it back into state.
//!
//! - [`codec`]: the record format: versioned, length-prefixed, CRC32C-checked.
//! - [`snapshot`]: a partition's whole state as one canonical, checksummed blob.
//! - [`recovery`]: which snapshot and which log bytes to believe after a restart (pure).
//! - [`replay`]: folding a log back into a ledger; balances and movements as of any point.

pub mod codec;
pub mod recovery;
pub mod replay;
pub mod snapshot;
