//! What a Raft entry of a partition carries: one batch of the partition's log records, as the
//! partition machine encoded them, behind a small header.
//!
//! ```text
//!   version: u8 (1) | first_lsn: u64 LE | records (the log codec's frames, lsns first_lsn..)
//! ```
//!
//! The records are the very bytes the partition's own log and the journal hold, so a
//! replica appends a committed entry to its log without re-encoding it, and `wallet replay`
//! and the fixtures read one codec. The records check themselves (every frame has its
//! CRC32C); the header is checked here. An entry with no data is one Raft makes itself (a
//! new leader's empty entry) and carries no batch.

use bytes::Bytes;

use crate::model::event::Lsn;

/// The payload format written by this build.
pub const PAYLOAD_VERSION: u8 = 1;

/// Bytes before the records.
pub const HEADER_LEN: usize = 1 + 8;

/// A payload that is not one this build reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("entry payload of {len} bytes is shorter than its {HEADER_LEN}-byte header")]
    Short { len: usize },
    #[error("entry payload version {found} is not {PAYLOAD_VERSION}")]
    Version { found: u8 },
    #[error("entry payload starts at lsn 0")]
    ZeroLsn,
}

/// Encodes the batch `records` (lsns from `first_lsn`) as an entry's data.
pub fn encode(first_lsn: Lsn, records: &[u8]) -> Vec<u8> {
    assert!(first_lsn > 0, "lsns start at 1");
    let mut out = Vec::with_capacity(HEADER_LEN + records.len());
    out.push(PAYLOAD_VERSION);
    out.extend_from_slice(&first_lsn.to_le_bytes());
    out.extend_from_slice(records);
    out
}

/// A decoded payload: the batch's first lsn and its records (a zero-copy slice of the entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub first_lsn: Lsn,
    pub records: Bytes,
}

/// Decodes an entry's data; `None` for an entry without a batch.
pub fn decode(data: &Bytes) -> Result<Option<Batch>, PayloadError> {
    if data.is_empty() {
        return Ok(None);
    }
    if data.len() < HEADER_LEN {
        return Err(PayloadError::Short { len: data.len() });
    }
    if data[0] != PAYLOAD_VERSION {
        return Err(PayloadError::Version { found: data[0] });
    }
    let first_lsn = u64::from_le_bytes(data[1..HEADER_LEN].try_into().expect("8 bytes"));
    if first_lsn == 0 {
        return Err(PayloadError::ZeroLsn);
    }
    Ok(Some(Batch {
        first_lsn,
        records: data.slice(HEADER_LEN..),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_round_trips_and_an_empty_entry_carries_none() {
        let data = Bytes::from(encode(42, b"records"));
        let batch = decode(&data).unwrap().unwrap();
        assert_eq!(batch.first_lsn, 42);
        assert_eq!(&batch.records[..], b"records");
        assert_eq!(decode(&Bytes::new()), Ok(None));
    }

    #[test]
    fn a_bad_header_is_an_error_not_a_batch() {
        assert_eq!(
            decode(&Bytes::from_static(&[1, 2, 3])),
            Err(PayloadError::Short { len: 3 })
        );
        let mut other = encode(1, b"");
        other[0] = 9;
        assert_eq!(
            decode(&Bytes::from(other)),
            Err(PayloadError::Version { found: 9 })
        );
        let zero = Bytes::from(vec![PAYLOAD_VERSION, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode(&zero), Err(PayloadError::ZeroLsn));
    }
}
