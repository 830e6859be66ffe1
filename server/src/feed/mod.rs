//! The event feed: a partition's durable log records after a position, oldest first, as
//! versioned JSON lines, for consumers that build their own read models (`GET /v1/events`).
//!
//! # Layout
//! - [`read`]: the records after an lsn, read from the log segments up to the durable lsn
//!   (never from snapshots), and how to tell that they were compacted away.
//! - [`wait`]: the long-poll: sleeping until the partition's durable lsn passes a position,
//!   woken by the driver rather than by polling the disk.
//! - [`schema`]: the JSON line of each event, schema version [`schema::SCHEMA_VERSION`], and
//!   the table of its types and fields that the OpenAPI document and the README repeat.
//! - [`currencies`]: the currency of each account, which amounts need to be written as
//!   decimals but most events do not carry.
//! - [`cursors`]: where recent pages ended in their segments, so that the next page decodes
//!   only what follows.

pub mod currencies;
pub mod cursors;
pub mod read;
pub mod schema;
pub mod wait;
