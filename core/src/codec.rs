//! TEMP STUB
use crate::event::{Event, Lsn, Timestamp};
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    pub timestamp: Timestamp,
    pub event: Event,
}
pub fn encode_record(_record: &Record, _out: &mut Vec<u8>) {
    todo!()
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedLog {
    pub records: Vec<Record>,
    pub valid_len: usize,
    pub torn_tail: bool,
}
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("corrupt")]
    Corrupt { offset: u64, reason: String },
}
impl CodecError {
    pub fn offset(&self) -> u64 {
        0
    }
}
pub fn decode_log(_bytes: &[u8], _first_lsn: Lsn) -> Result<DecodedLog, CodecError> {
    todo!()
}
