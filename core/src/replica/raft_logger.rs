//! raft-rs logs through `slog`; walletd logs through `tracing`. This drain forwards every
//! raft-rs record to `tracing` at the matching level, with the partition it belongs to and
//! the record's key-value pairs in its message, so one subscriber sees everything.

use std::fmt::{self, Write as _};

use slog::{Drain, Key, Level, OwnedKVList, Record, Serializer, KV};

use crate::model::partition::PartitionId;

/// The logger a replica of `partition` gives its Raft node.
pub fn logger(partition: PartitionId) -> slog::Logger {
    slog::Logger::root(ToTracing { partition }, slog::o!())
}

struct ToTracing {
    partition: PartitionId,
}

impl Drain for ToTracing {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        // Raft's routine chatter (every message stepped, every tick) is trace; its
        // elections and term changes are info.
        let enabled = match record.level() {
            Level::Critical | Level::Error => tracing::enabled!(tracing::Level::ERROR),
            Level::Warning => tracing::enabled!(tracing::Level::WARN),
            Level::Info => tracing::enabled!(tracing::Level::INFO),
            Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
            Level::Trace => tracing::enabled!(tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let mut text = String::new();
        let _ = write!(text, "{}", record.msg());
        let mut pairs = Pairs(&mut text);
        let _ = record.kv().serialize(record, &mut pairs);
        let _ = values.serialize(record, &mut pairs);
        let partition = self.partition;
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(partition, "raft: {text}"),
            Level::Warning => tracing::warn!(partition, "raft: {text}"),
            Level::Info => tracing::info!(partition, "raft: {text}"),
            Level::Debug => tracing::debug!(partition, "raft: {text}"),
            Level::Trace => tracing::trace!(partition, "raft: {text}"),
        }
        Ok(())
    }
}

/// Appends ` key=value` for every pair.
struct Pairs<'a>(&'a mut String);

impl Serializer for Pairs<'_> {
    fn emit_arguments(&mut self, key: Key, value: &fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}
