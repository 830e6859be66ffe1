//! TEMP STUB
use crate::codec::CodecError;
use crate::ledger::Ledger;
pub fn encode_snapshot(_l: &Ledger) -> Vec<u8> {
    todo!()
}
pub fn decode_snapshot(_b: &[u8]) -> Result<Ledger, CodecError> {
    todo!()
}
