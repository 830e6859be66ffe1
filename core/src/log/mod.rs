//! The partition log in bytes, and folding it back into state.
//!
//! - [`codec`]: the record format: versioned, length-prefixed, CRC32C-checked.
//! - [`crc`]: CRC32C of short byte strings (records, frames, rows), with the instruction inline.
//! - [`snapshot`]: a partition's whole state as one canonical, checksummed blob.
//! - [`chunk_file`]: chunks of final transfer rows that snapshots refer to, with the key
//!   index that finds a row once it has left memory.
//! - [`recovery`]: which snapshot and which log bytes to believe after a restart (pure).
//! - [`replay`]: folding a log back into a ledger; balances and movements as of any point.

pub mod chunk_file;
pub mod codec;
pub mod crc;
pub mod recovery;
pub mod replay;
pub mod snapshot;
