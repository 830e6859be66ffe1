//! Replaying logs: see issue.
