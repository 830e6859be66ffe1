//! The log record codec.
