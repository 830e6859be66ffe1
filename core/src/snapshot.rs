//! Placeholder until the snapshot codec lands: writes nothing useful and never decodes.
use crate::codec::CodecError;
use crate::ledger::Ledger;
pub fn encode_snapshot(_ledger: &Ledger) -> Vec<u8> {
    Vec::new()
}
pub fn decode_snapshot(_bytes: &[u8]) -> Result<Ledger, CodecError> {
    Err(CodecError::Corrupt {
        offset: 0,
        reason: "snapshots not implemented yet".into(),
    })
}
