//! The log record codec: how one partition's log is laid out in bytes.
//!
//! # Frame
//! A log segment is a sequence of records, each framed as (all integers little-endian)
//!
//! ```text
//! [body_len: u32][crc: u32][body: body_len bytes]
//! body = [version: u8][lsn: u64][timestamp: u64][event]
//! ```
//!
//! `crc` is CRC32C over the four `body_len` bytes followed by the body. Covering the length
//! means a damaged length field is caught by the checksum itself rather than only by the luck
//! of the body no longer matching: a record is accepted only if its extent and its contents
//! are exactly what the writer checksummed. `body_len` must lie in
//! `FRAME_BODY_LEN_MIN..=RECORD_BODY_LEN_MAX`; anything else is not a frame. A frame is a
//! record or a sync mark (below), told apart by the first byte of the body.
//!
//! # Events
//! An event is a tag byte followed by its fields in a fixed order. The tag numbers below are
//! part of the format: a tag is never reused or renumbered, new events get new numbers, and tag
//! 0 is never valid (so zero-filled space never decodes as an event).
//!
//! | tag | event | fields |
//! | --- | --- | --- |
//! | 1 | `AccountOpened` | account, currency |
//! | 2 | `Deposited` | account, amount, transaction id |
//! | 3 | `Withdrawn` | account, amount, transaction id |
//! | 4 | `Transferred` | transfer |
//! | 5 | `TransferRejected` | transfer, reason |
//! | 6 | `DebitTried` | transfer |
//! | 7 | `TransferDecided` | key, decision |
//! | 8 | `DebitConfirmed` | key |
//! | 9 | `DebitCancelled` | key |
//! | 10 | `CreditTried` | transfer |
//! | 11 | `CreditConfirmed` | key |
//! | 12 | `CreditCancelled` | key |
//! | 13 | `CreditTryNotSeen` | key |
//! | 14 | `CashRefused` | kind, account, amount, transaction id, refusal |
//! | 15 | `RefundAccepted` | refund (a transfer), original's transaction id, remote (a byte, 0 or 1) |
//! | 16 | `RefundRejected` | refund (a transfer), original's transaction id, reason |
//! | 17 | `HoldPlaced` | hold (a transfer), expires_at u64, remote |
//! | 18 | `HoldEstablished` | key |
//! | 19 | `HoldCaptured` | hold (a transfer), amount captured, remote |
//! | 20 | `HoldReleased` | hold (a transfer), reason, remote |
//! | 21 | `CreditCaptured` | key, amount |
//! | 22 | `TransactionApplied` | transaction |
//! | 23 | `TransactionRejected` | transaction, failed leg u8 (255: none), reason |
//! | 24 | `TransactionTried` | transaction |
//! | 25 | `TransactionRefused` | key, failed leg (optional), reason |
//! | 26 | `TransactionCancelling` | key, failed leg (optional), reason |
//! | 27 | `TransactionConfirmed` | key |
//! | 28 | `TransactionCancelled` | key |
//!
//! Fields: an id is a `u8` length and that many ASCII bytes (validated by [`AccountId::new`] or
//! [`TransactionId::new`] on decode); an amount is a `u64` of minor units (validated by
//! [`Amount::from_minor`]); a currency is its ISO 4217 numeric code as a `u16`; a transfer is
//! transaction id, from, to, amount, currency; a key is from, transaction id; a transaction is
//! its transaction id, a `u8` count of legs (1 to 64) and each leg (from, to, amount,
//! currency); an optional failed leg is a byte 0 (none) or 1 followed by the leg's index. A reason is one
//! byte: 1 insufficient funds, 2 destination not found, 3 destination currency mismatch,
//! 4 destination balance limit, 5 timeout, 6 cancelled before try, 7 source not found,
//! 8 source currency mismatch, 9 same account, 10 refund exceeds original. A cash kind is one byte, 1 deposit or
//! 2 withdrawal; a cash refusal is one byte, 1 account not found, 2 currency mismatch
//! (followed by the request's currency), 3 insufficient funds, 4 balance limit. A decision is one byte,
//! 1 confirm or 2 cancel, and a cancel is followed by its reason. The body must end exactly
//! where the event ends.
//!
//! # Sync marks
//! A log written by this version also holds *sync marks*: frames of the same layout whose body
//! is `[0x80][synced_len: u64][segment_lsn: u64]` (the first byte is where a record has its
//! version, so an older reader refuses them as an unknown version rather than misreading
//! them). A mark says: when it was written, the first `synced_len` bytes of its segment were
//! durable (a sync covering them had completed). `segment_lsn` is the first lsn of the
//! segment the mark belongs to. The writer (`walletd_runtime::storage::segments`) puts one at
//! the start of every new segment (`synced_len` 0: the *segment header*, made durable, with
//! the segment's directory entry, before any record goes in) and one right after every sync
//! that made more of the segment durable. Marks carry no event: [`RecordReader`] checks and
//! skips them. A mark whose `synced_len` exceeds its own offset, or that names a segment
//! other than the records around it, is corruption.
//!
//! # Where a log ends
//! [`decode_log`] reads frames from the start. At the first offset where no valid frame begins
//! (too few bytes for a header, a length out of bounds, a frame running past the end of the
//! buffer, or a checksum mismatch), call it the *damage*:
//!
//! - if every byte from there on is zero, the log simply ends there: that is the zero-filled
//!   space of a preallocated file (or writes that never reached the disk). The records
//!   before it are returned with `valid_len` at that offset.
//! - if a valid sync mark after the damage vouches for bytes past it (its `synced_len` is
//!   beyond the damaged offset), the damage is in data a completed sync covered: a bit flip
//!   or an unreadable sector, never a torn write. That is [`CodecError::Corrupt`] at the
//!   damaged offset; dropping it would drop acknowledged records.
//! - otherwise, in a segment that begins with a segment header, everything from the damage
//!   on is a *torn or stale range*: writes that no completed sync covered. A power loss keeps
//!   an arbitrary subset of those (sector by sector, not only a prefix), so whole records may
//!   survive after a hole; none of them was acknowledged, since the writer acknowledges a
//!   batch only after its sync, and a later sync would have written a mark after them. The
//!   records before the damage are returned with `valid_len` at it and `torn_tail` set; the
//!   caller cuts the rest.
//! - in a log without a segment header (written before sync marks existed, such as
//!   `fixtures/`), the old rule stands: a valid frame anywhere after the damage means the
//!   damage is corruption ([`CodecError::Corrupt`]); if there is none, the rest is a torn
//!   tail. The writer never appends to such a segment again (its next batch starts a new
//!   segment), so the old rule only ever judges bytes written by the old writer.
//!
//! Only the one batch whose sync completed last can be misjudged: if a power loss also drops
//! the unsynced mark written right after that sync, and the batch is later damaged on the
//! medium, nothing vouches for it and it is cut like a torn write. Vouching for it before its
//! answers leave would take a second sync per batch; walletd does not pay that. A process
//! crash keeps that mark (it reached the kernel), so after a crash that is not a power loss
//! every acknowledged byte is vouched for.
//!
//! A frame whose checksum is valid is never treated as a torn tail when it is the next frame
//! to read: a torn write does not produce a matching CRC, so a checksummed record that cannot
//! be used (an unknown version, an undecodable event, an lsn out of sequence) is always an
//! error, wherever it is.

use std::sync::Arc;

#[cfg(any(test, feature = "testing"))]
use crc32c::{crc32c, crc32c_append};

use crate::ledger::TransferState;
use crate::log::crc::crc32c_of;
use crate::model::event::{
    CashKind, CashRefusal, CashRefused, Decision, Event, Lsn, Reason, Timestamp, Transfer,
    TransferKey,
};
use crate::model::ids::{AccountId, TransactionId, ID_LEN_MAX};
use crate::model::money::{Amount, Currency};
use crate::model::transaction::{Leg, Transaction, LEGS_MAX};

/// The body version this build writes and the only one it reads.
pub const RECORD_VERSION: u8 = 1;
/// Largest body a frame may declare. Bounds the damage a corrupt length can claim and the
/// memory a reader needs per record; real bodies are far smaller ([`RECORD_ENCODED_LEN_MAX`]).
pub const RECORD_BODY_LEN_MAX: usize = 16384;
/// Bytes of the frame header: body length and checksum.
pub const RECORD_HEADER_LEN: usize = 8;

/// Bytes of the body before the event: version, lsn, timestamp.
const BODY_PREFIX_LEN: usize = 1 + 8 + 8;
/// Smallest body a record may declare: the prefix and an event tag.
const RECORD_BODY_LEN_MIN: usize = BODY_PREFIX_LEN + 1;
/// The first byte of a sync mark's body (see the module docs); a record's is its version.
const SYNC_MARK_KIND: u8 = 0x80;
/// A sync mark's body: kind, synced length, the first lsn of its segment.
const SYNC_MARK_BODY_LEN: usize = 1 + 8 + 8;
/// Bytes of one framed sync mark.
pub const SYNC_MARK_LEN: usize = RECORD_HEADER_LEN + SYNC_MARK_BODY_LEN;
/// Smallest body any frame may declare (a sync mark's).
const FRAME_BODY_LEN_MIN: usize = SYNC_MARK_BODY_LEN;
const _: () = assert!(FRAME_BODY_LEN_MIN <= RECORD_BODY_LEN_MIN);
const ID_FIELD_LEN_MAX: usize = 1 + ID_LEN_MAX;
const TRANSFER_FIELD_LEN_MAX: usize = 3 * ID_FIELD_LEN_MAX + 8 + 2;
/// The longest event of one transfer: `RefundRejected` (tag, transfer, transaction id,
/// reason).
const TRANSFER_EVENT_LEN_MAX: usize = 1 + TRANSFER_FIELD_LEN_MAX + ID_FIELD_LEN_MAX + 1;
/// One leg of a transaction: from, to, amount, currency.
const LEG_FIELD_LEN_MAX: usize = 2 * ID_FIELD_LEN_MAX + 8 + 2;
/// Most bytes a transaction takes as [`put_transaction`] writes it (id, leg count, legs):
/// about 9 KiB at [`LEGS_MAX`] legs of the longest ids.
pub const TRANSACTION_ENCODED_LEN_MAX: usize = ID_FIELD_LEN_MAX + 1 + LEGS_MAX * LEG_FIELD_LEN_MAX;
/// The longest event: `TransactionRejected` (tag, transaction, failed leg, reason).
const EVENT_LEN_MAX: usize = 1 + TRANSACTION_ENCODED_LEN_MAX + 2;
/// Most bytes [`encode_record`] appends for one record.
pub const RECORD_ENCODED_LEN_MAX: usize = RECORD_HEADER_LEN + BODY_PREFIX_LEN + EVENT_LEN_MAX;
/// What [`encode_record`] reserves ahead of a record: room for any event of one transfer,
/// the events nearly every record holds (a transaction's grows the buffer as it goes).
const RECORD_RESERVE_LEN: usize = RECORD_HEADER_LEN + BODY_PREFIX_LEN + TRANSFER_EVENT_LEN_MAX;
const _: () = assert!(BODY_PREFIX_LEN + EVENT_LEN_MAX <= RECORD_BODY_LEN_MAX);

/// The failed leg of a `TransactionRejected` that names none (a home that lost the
/// transaction rejected it for a timeout). Logs written before it existed never hold it: a
/// transaction has at most 64 legs.
const NO_FAILED_LEG: u8 = u8::MAX;

/// Event tags; see the module docs. Never reuse or renumber one.
mod tag {
    pub const ACCOUNT_OPENED: u8 = 1;
    pub const DEPOSITED: u8 = 2;
    pub const WITHDRAWN: u8 = 3;
    pub const TRANSFERRED: u8 = 4;
    pub const TRANSFER_REJECTED: u8 = 5;
    pub const DEBIT_TRIED: u8 = 6;
    pub const TRANSFER_DECIDED: u8 = 7;
    pub const DEBIT_CONFIRMED: u8 = 8;
    pub const DEBIT_CANCELLED: u8 = 9;
    pub const CREDIT_TRIED: u8 = 10;
    pub const CREDIT_CONFIRMED: u8 = 11;
    pub const CREDIT_CANCELLED: u8 = 12;
    pub const CREDIT_TRY_NOT_SEEN: u8 = 13;
    pub const CASH_REFUSED: u8 = 14;
    pub const REFUND_ACCEPTED: u8 = 15;
    pub const REFUND_REJECTED: u8 = 16;
    pub const HOLD_PLACED: u8 = 17;
    pub const HOLD_ESTABLISHED: u8 = 18;
    pub const HOLD_CAPTURED: u8 = 19;
    pub const HOLD_RELEASED: u8 = 20;
    pub const CREDIT_CAPTURED: u8 = 21;
    pub const TRANSACTION_APPLIED: u8 = 22;
    pub const TRANSACTION_REJECTED: u8 = 23;
    pub const TRANSACTION_TRIED: u8 = 24;
    pub const TRANSACTION_REFUSED: u8 = 25;
    pub const TRANSACTION_CANCELLING: u8 = 26;
    pub const TRANSACTION_CONFIRMED: u8 = 27;
    pub const TRANSACTION_CANCELLED: u8 = 28;
}

/// One record of a partition log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    pub timestamp: Timestamp,
    pub event: Event,
}

/// Why bytes could not be read as a log (or a snapshot). Offsets are from the start of the
/// buffer given to the decoder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("corrupt data at byte {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
    #[error("record at byte {offset} has version {version}; this build reads only version {RECORD_VERSION} (written by a newer walletd?)")]
    UnsupportedVersion { offset: u64, version: u8 },
    #[error("record at byte {offset} has lsn {found}, expected {expected}: the log has a gap or is out of order")]
    LsnGap {
        offset: u64,
        expected: Lsn,
        found: Lsn,
    },
}

/// The readable part of a log segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedLog {
    pub records: Vec<Record>,
    /// Bytes of whole valid records from the start: where the next record is to be appended.
    /// Bytes after it are a torn tail or, if `torn_tail` is false, zero-filled space.
    pub valid_len: usize,
    /// True when bytes after `valid_len` were dropped as a torn tail (something other than
    /// zeros); the writer must truncate or overwrite from `valid_len`.
    pub torn_tail: bool,
}

/// Appends one framed record to `out`.
///
/// This is the write hot path: it allocates nothing beyond `out` growing, and checksums the
/// body where it was written.
pub fn encode_record(record: &Record, out: &mut Vec<u8>) {
    encode_event_record(record.lsn, record.timestamp, &record.event, out);
}

/// [`encode_record`] of the record `lsn`, `timestamp`, `event`, from a borrowed event: a
/// partition encodes every event it logs this way, and an event is a few hundred bytes
/// (three inline ids), which building a [`Record`] would copy once more per event.
pub fn encode_event_record(lsn: Lsn, timestamp: Timestamp, event: &Event, out: &mut Vec<u8>) {
    out.reserve(RECORD_RESERVE_LEN);
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    out.push(RECORD_VERSION);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&timestamp.to_le_bytes());
    encode_event(event, out);
    let body_len = out.len() - start - RECORD_HEADER_LEN;
    assert!(
        (RECORD_BODY_LEN_MIN..=BODY_PREFIX_LEN + EVENT_LEN_MAX).contains(&body_len),
        "encoded body of {body_len} bytes is outside its bounds"
    );
    seal_frame(out, start);
}

/// Appends a sync mark to `out`: the first `synced_len` bytes of the segment whose first lsn
/// is `segment_lsn` are durable (see the module docs). `synced_len` 0 is the segment header.
pub fn encode_sync_mark(synced_len: u64, segment_lsn: Lsn, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    out.push(SYNC_MARK_KIND);
    out.extend_from_slice(&synced_len.to_le_bytes());
    out.extend_from_slice(&segment_lsn.to_le_bytes());
    assert_eq!(
        out.len() - start,
        SYNC_MARK_LEN,
        "a sync mark has a fixed size"
    );
    seal_frame(out, start);
}

/// A sync mark as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncMark {
    pub synced_len: u64,
    pub segment_lsn: Lsn,
}

impl SyncMark {
    /// The mark in the checksummed frame body `body`, if it is one (of the right size).
    fn from_body(body: &[u8]) -> Option<SyncMark> {
        if body.len() != SYNC_MARK_BODY_LEN || body[0] != SYNC_MARK_KIND {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        Some(SyncMark {
            synced_len: u64_at(1),
            segment_lsn: u64_at(9),
        })
    }
}

/// Whether `bytes` begins with a segment header: a valid sync mark vouching for nothing.
pub fn starts_with_segment_header(bytes: &[u8]) -> bool {
    frame_at(bytes, 0)
        .ok()
        .and_then(SyncMark::from_body)
        .is_some_and(|mark| mark.synced_len == 0)
}

/// Fills in the header of the frame that starts at `start` and runs to the end of `out`.
fn seal_frame(out: &mut [u8], start: usize) {
    let body_len = out.len() - start - RECORD_HEADER_LEN;
    let len_bytes = u32::try_from(body_len)
        .expect("bodies are bounded")
        .to_le_bytes();
    let crc = crc32c_of(&[&len_bytes, &out[start + RECORD_HEADER_LEN..]]);
    out[start..start + 4].copy_from_slice(&len_bytes);
    out[start + 4..start + RECORD_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

fn encode_event(event: &Event, out: &mut Vec<u8>) {
    match *event {
        Event::AccountOpened { account, currency } => {
            out.push(tag::ACCOUNT_OPENED);
            account.encode_into(out);
            put_currency(out, currency);
        }
        Event::Deposited {
            account,
            amount,
            transaction_id,
        } => put_cash(out, tag::DEPOSITED, account, amount, transaction_id),
        Event::Withdrawn {
            account,
            amount,
            transaction_id,
        } => put_cash(out, tag::WITHDRAWN, account, amount, transaction_id),
        Event::Transferred { transfer } => put_transfer_event(out, tag::TRANSFERRED, &transfer),
        Event::TransferRejected { transfer, reason } => {
            put_transfer_event(out, tag::TRANSFER_REJECTED, &transfer);
            out.push(reason_tag(reason));
        }
        Event::DebitTried { transfer } => put_transfer_event(out, tag::DEBIT_TRIED, &transfer),
        Event::TransferDecided { key, decision } => {
            put_key_event(out, tag::TRANSFER_DECIDED, &key);
            match decision {
                Decision::Confirm => out.push(1),
                Decision::Cancel(reason) => out.extend_from_slice(&[2, reason_tag(reason)]),
            }
        }
        Event::DebitConfirmed { key } => put_key_event(out, tag::DEBIT_CONFIRMED, &key),
        Event::DebitCancelled { key } => put_key_event(out, tag::DEBIT_CANCELLED, &key),
        Event::CreditTried { transfer } => put_transfer_event(out, tag::CREDIT_TRIED, &transfer),
        Event::CreditConfirmed { key } => put_key_event(out, tag::CREDIT_CONFIRMED, &key),
        Event::CreditCancelled { key } => put_key_event(out, tag::CREDIT_CANCELLED, &key),
        Event::CreditTryNotSeen { key } => put_key_event(out, tag::CREDIT_TRY_NOT_SEEN, &key),
        Event::CashRefused(refused) => {
            out.extend_from_slice(&[tag::CASH_REFUSED, cash_kind_tag(refused.kind)]);
            refused.account.encode_into(out);
            out.extend_from_slice(&refused.amount.minor().to_le_bytes());
            refused.transaction_id.encode_into(out);
            put_cash_refusal(out, refused.refusal);
        }
        Event::RefundAccepted {
            refund,
            original,
            remote,
        } => {
            put_transfer_event(out, tag::REFUND_ACCEPTED, &refund);
            original.encode_into(out);
            out.push(u8::from(remote));
        }
        Event::RefundRejected {
            refund,
            original,
            reason,
        } => {
            put_transfer_event(out, tag::REFUND_REJECTED, &refund);
            original.encode_into(out);
            out.push(reason_tag(reason));
        }
        Event::HoldPlaced {
            hold,
            expires_at,
            remote,
        } => {
            put_transfer_event(out, tag::HOLD_PLACED, &hold);
            out.extend_from_slice(&expires_at.to_le_bytes());
            out.push(u8::from(remote));
        }
        Event::HoldEstablished { key } => put_key_event(out, tag::HOLD_ESTABLISHED, &key),
        Event::HoldCaptured {
            hold,
            amount,
            remote,
        } => {
            put_transfer_event(out, tag::HOLD_CAPTURED, &hold);
            out.extend_from_slice(&amount.minor().to_le_bytes());
            out.push(u8::from(remote));
        }
        Event::HoldReleased {
            hold,
            reason,
            remote,
        } => {
            put_transfer_event(out, tag::HOLD_RELEASED, &hold);
            out.extend_from_slice(&[reason_tag(reason), u8::from(remote)]);
        }
        Event::CreditCaptured { key, amount } => {
            put_key_event(out, tag::CREDIT_CAPTURED, &key);
            out.extend_from_slice(&amount.minor().to_le_bytes());
        }
        Event::TransactionApplied { ref tx } => {
            out.push(tag::TRANSACTION_APPLIED);
            put_transaction(out, tx);
        }
        Event::TransactionRejected {
            ref tx,
            failed_leg,
            reason,
        } => {
            out.push(tag::TRANSACTION_REJECTED);
            put_transaction(out, tx);
            out.extend_from_slice(&[failed_leg.unwrap_or(NO_FAILED_LEG), reason_tag(reason)]);
        }
        Event::TransactionTried { ref tx } => {
            out.push(tag::TRANSACTION_TRIED);
            put_transaction(out, tx);
        }
        Event::TransactionRefused {
            key,
            failed_leg,
            reason,
        } => {
            put_key_event(out, tag::TRANSACTION_REFUSED, &key);
            put_failed_leg(out, failed_leg, reason);
        }
        Event::TransactionCancelling {
            key,
            failed_leg,
            reason,
        } => {
            put_key_event(out, tag::TRANSACTION_CANCELLING, &key);
            put_failed_leg(out, failed_leg, reason);
        }
        Event::TransactionConfirmed { key } => put_key_event(out, tag::TRANSACTION_CONFIRMED, &key),
        Event::TransactionCancelled { key } => put_key_event(out, tag::TRANSACTION_CANCELLED, &key),
    }
}

/// A transaction: its id, the count of its legs (a byte), then each leg: from, to, amount,
/// currency.
pub(crate) fn put_transaction(out: &mut Vec<u8>, tx: &Transaction) {
    tx.transaction_id().encode_into(out);
    let count = u8::try_from(tx.legs().len()).expect("at most LEGS_MAX legs");
    out.push(count);
    for leg in tx.legs() {
        leg.from.encode_into(out);
        leg.to.encode_into(out);
        out.extend_from_slice(&leg.amount.minor().to_le_bytes());
        put_currency(out, leg.currency);
    }
}

/// A failed leg and its reason: a presence byte (0 none, 1 a leg), the leg's index if
/// present, and the reason.
fn put_failed_leg(out: &mut Vec<u8>, failed_leg: Option<u8>, reason: Reason) {
    match failed_leg {
        Some(leg) => out.extend_from_slice(&[1, leg]),
        None => out.push(0),
    }
    out.push(reason_tag(reason));
}

/// `bytes` with the checksum of every `[len u32][crc u32][body]` frame recomputed, frame
/// after frame from the start, while a frame's length lies in `lens` and fits: the framing of
/// log segments and of wire streams. For tests and fuzzing of the decoders, which must see
/// damage get past a checksum to the fields behind it.
#[cfg(any(test, feature = "testing"))]
pub fn reseal_frames(bytes: &[u8], lens: std::ops::RangeInclusive<usize>) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut at = 0;
    while let Some(header) = out.get(at..at + 8) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let end = at + 8 + len;
        if !lens.contains(&len) || end > out.len() {
            break;
        }
        let crc = crc32c_append(crc32c(&out[at..at + 4]), &out[at + 8..end]);
        out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
    out
}

/// Records `lsns`, each opening an account of its own (`account-{lsn}`), encoded end to end:
/// a log for tests of what reads logs.
#[cfg(any(test, madsim, feature = "testing"))]
pub fn opening_records(lsns: std::ops::RangeInclusive<Lsn>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for lsn in lsns {
        let account = AccountId::new(&format!("account-{lsn}")).expect("a valid id");
        let event = Event::AccountOpened {
            account,
            currency: Currency::USD,
        };
        let record = Record {
            lsn,
            timestamp: lsn,
            event,
        };
        encode_record(&record, &mut bytes);
    }
    bytes
}

/// The stable byte of a cash kind; see the module docs.
pub(crate) fn cash_kind_tag(kind: CashKind) -> u8 {
    match kind {
        CashKind::Deposit => 1,
        CashKind::Withdrawal => 2,
    }
}

pub(crate) fn put_cash_refusal(out: &mut Vec<u8>, refusal: CashRefusal) {
    match refusal {
        CashRefusal::AccountNotFound => out.push(1),
        CashRefusal::CurrencyMismatch(currency) => {
            out.push(2);
            put_currency(out, currency);
        }
        CashRefusal::InsufficientFunds => out.push(3),
        CashRefusal::BalanceLimit => out.push(4),
    }
}

pub(crate) fn put_currency(out: &mut Vec<u8>, currency: Currency) {
    out.extend_from_slice(&currency.numeric().to_le_bytes());
}

pub(crate) fn put_transfer(out: &mut Vec<u8>, transfer: &Transfer) {
    transfer.transaction_id.encode_into(out);
    transfer.from.encode_into(out);
    transfer.to.encode_into(out);
    out.extend_from_slice(&transfer.amount.minor().to_le_bytes());
    put_currency(out, transfer.currency);
}

pub(crate) fn put_key(out: &mut Vec<u8>, key: &TransferKey) {
    key.from.encode_into(out);
    key.transaction_id.encode_into(out);
}

fn put_cash(
    out: &mut Vec<u8>,
    tag: u8,
    account: AccountId,
    amount: Amount,
    transaction_id: TransactionId,
) {
    out.push(tag);
    account.encode_into(out);
    out.extend_from_slice(&amount.minor().to_le_bytes());
    transaction_id.encode_into(out);
}

fn put_transfer_event(out: &mut Vec<u8>, tag: u8, transfer: &Transfer) {
    out.push(tag);
    put_transfer(out, transfer);
}

fn put_key_event(out: &mut Vec<u8>, tag: u8, key: &TransferKey) {
    out.push(tag);
    put_key(out, key);
}

/// The stable byte of a reason; see the module docs. Never renumber.
pub(crate) fn reason_tag(reason: Reason) -> u8 {
    match reason {
        Reason::InsufficientFunds => 1,
        Reason::DestinationNotFound => 2,
        Reason::DestinationCurrencyMismatch => 3,
        Reason::DestinationBalanceLimit => 4,
        Reason::Timeout => 5,
        Reason::CancelledBeforeTry => 6,
        Reason::SourceNotFound => 7,
        Reason::SourceCurrencyMismatch => 8,
        Reason::SameAccount => 9,
        Reason::RefundExceedsOriginal => 10,
        Reason::HoldVoided => 11,
        Reason::HoldExpired => 12,
    }
}

fn reason_from_tag(byte: u8) -> Option<Reason> {
    let reason = *Reason::ALL.get(usize::from(byte).checked_sub(1)?)?;
    debug_assert_eq!(reason_tag(reason), byte);
    Some(reason)
}

/// Reads fields front to back from a byte slice; every read is bounds-checked and every value
/// validated, so a decoder built on it cannot produce a value the encoder could not write.
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { bytes, pos: 0 }
    }

    /// Bytes read so far.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.remaining() < n {
            return Err(format!(
                "field of {n} bytes runs past the end at byte {}",
                self.pos
            ));
        }
        let taken = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    pub(crate) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    /// The next byte, left unread.
    pub(crate) fn peek_u8(&self) -> Result<u8, String> {
        (self.bytes.get(self.pos).copied())
            .ok_or_else(|| format!("field of 1 byte runs past the end at byte {}", self.pos))
    }

    /// A byte that must be 0 (false) or 1 (true).
    pub(crate) fn bool(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("bool byte {other}")),
        }
    }

    pub(crate) fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn u128(&mut self) -> Result<u128, String> {
        Ok(u128::from_le_bytes(self.array()?))
    }

    fn id_text(&mut self) -> Result<&'a str, String> {
        let len = usize::from(self.u8()?);
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| "identifier is not ASCII".to_string())
    }

    pub(crate) fn account(&mut self) -> Result<AccountId, String> {
        AccountId::new(self.id_text()?).map_err(|e| e.to_string())
    }

    pub(crate) fn transaction_id(&mut self) -> Result<TransactionId, String> {
        TransactionId::new(self.id_text()?).map_err(|e| e.to_string())
    }

    pub(crate) fn amount(&mut self) -> Result<Amount, String> {
        let minor = self.u64()?;
        Amount::from_minor(minor).ok_or_else(|| format!("amount {minor} is out of bounds"))
    }

    pub(crate) fn currency(&mut self) -> Result<Currency, String> {
        let numeric = self.u16()?;
        Currency::from_numeric(numeric).ok_or_else(|| format!("unknown currency code {numeric}"))
    }

    pub(crate) fn reason(&mut self) -> Result<Reason, String> {
        let byte = self.u8()?;
        reason_from_tag(byte).ok_or_else(|| format!("unknown reason {byte}"))
    }

    /// A transfer state: a byte (1 trying, 2 confirming, 3 cancelling, 4 committed,
    /// 5 cancelled, 6 rejected) and, for 3, 5 and 6, its reason.
    pub(crate) fn transfer_state(&mut self) -> Result<TransferState, String> {
        Ok(match self.u8()? {
            1 => TransferState::Trying,
            2 => TransferState::Confirming,
            3 => TransferState::Cancelling(self.reason()?),
            4 => TransferState::Committed,
            5 => TransferState::Cancelled(self.reason()?),
            6 => TransferState::Rejected(self.reason()?),
            7 => TransferState::Held,
            8 => TransferState::Captured,
            other => return Err(format!("unknown transfer state {other}")),
        })
    }

    pub(crate) fn cash_kind(&mut self) -> Result<CashKind, String> {
        match self.u8()? {
            1 => Ok(CashKind::Deposit),
            2 => Ok(CashKind::Withdrawal),
            other => Err(format!("unknown cash kind {other}")),
        }
    }

    fn cash_refusal(&mut self) -> Result<CashRefusal, String> {
        self.cash_refusal_or_none()?
            .ok_or_else(|| "a refused cash record without its refusal".to_string())
    }

    /// A cash refusal, or byte 0 for none (a snapshot's cash row that was not refused).
    pub(crate) fn cash_refusal_or_none(&mut self) -> Result<Option<CashRefusal>, String> {
        Ok(Some(match self.u8()? {
            0 => return Ok(None),
            1 => CashRefusal::AccountNotFound,
            2 => CashRefusal::CurrencyMismatch(self.currency()?),
            3 => CashRefusal::InsufficientFunds,
            4 => CashRefusal::BalanceLimit,
            other => return Err(format!("unknown cash refusal {other}")),
        }))
    }

    fn decision(&mut self) -> Result<Decision, String> {
        match self.u8()? {
            1 => Ok(Decision::Confirm),
            2 => Ok(Decision::Cancel(self.reason()?)),
            other => Err(format!("unknown decision {other}")),
        }
    }

    pub(crate) fn transfer(&mut self) -> Result<Transfer, String> {
        Ok(Transfer {
            transaction_id: self.transaction_id()?,
            from: self.account()?,
            to: self.account()?,
            amount: self.amount()?,
            currency: self.currency()?,
        })
    }

    pub(crate) fn key(&mut self) -> Result<TransferKey, String> {
        Ok(TransferKey {
            from: self.account()?,
            transaction_id: self.transaction_id()?,
        })
    }

    /// A transaction as [`put_transaction`] wrote it, held to what [`Transaction::new`]
    /// accepts (1 to [`LEGS_MAX`] legs, none from an account to itself).
    pub(crate) fn transaction(&mut self) -> Result<Arc<Transaction>, String> {
        let transaction_id = self.transaction_id()?;
        let count = usize::from(self.u8()?);
        let mut legs = Vec::with_capacity(count.min(LEGS_MAX));
        for _ in 0..count {
            legs.push(Leg {
                from: self.account()?,
                to: self.account()?,
                amount: self.amount()?,
                currency: self.currency()?,
            });
        }
        Transaction::new(transaction_id, legs).map_err(|e| e.to_string())
    }

    /// A failed leg and its reason, as `put_failed_leg` wrote them.
    fn failed_leg(&mut self) -> Result<(Option<u8>, Reason), String> {
        let leg = match self.u8()? {
            0 => None,
            1 => Some(self.u8()?),
            other => return Err(format!("unknown failed-leg presence {other}")),
        };
        Ok((leg, self.reason()?))
    }

    /// Succeeds only if every byte was read: trailing bytes mean a different layout.
    pub(crate) fn finish(&self) -> Result<(), String> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(format!("{extra} unexpected trailing bytes")),
        }
    }
}

fn decode_event(cursor: &mut Cursor<'_>) -> Result<Event, String> {
    let event = match cursor.u8()? {
        tag::ACCOUNT_OPENED => Event::AccountOpened {
            account: cursor.account()?,
            currency: cursor.currency()?,
        },
        tag::DEPOSITED => Event::Deposited {
            account: cursor.account()?,
            amount: cursor.amount()?,
            transaction_id: cursor.transaction_id()?,
        },
        tag::WITHDRAWN => Event::Withdrawn {
            account: cursor.account()?,
            amount: cursor.amount()?,
            transaction_id: cursor.transaction_id()?,
        },
        tag::TRANSFERRED => Event::Transferred {
            transfer: cursor.transfer()?,
        },
        tag::TRANSFER_REJECTED => Event::TransferRejected {
            transfer: cursor.transfer()?,
            reason: cursor.reason()?,
        },
        tag::DEBIT_TRIED => Event::DebitTried {
            transfer: cursor.transfer()?,
        },
        tag::TRANSFER_DECIDED => Event::TransferDecided {
            key: cursor.key()?,
            decision: cursor.decision()?,
        },
        tag::DEBIT_CONFIRMED => Event::DebitConfirmed { key: cursor.key()? },
        tag::DEBIT_CANCELLED => Event::DebitCancelled { key: cursor.key()? },
        tag::CREDIT_TRIED => Event::CreditTried {
            transfer: cursor.transfer()?,
        },
        tag::CREDIT_CONFIRMED => Event::CreditConfirmed { key: cursor.key()? },
        tag::CREDIT_CANCELLED => Event::CreditCancelled { key: cursor.key()? },
        tag::CREDIT_TRY_NOT_SEEN => Event::CreditTryNotSeen { key: cursor.key()? },
        tag::CASH_REFUSED => Event::CashRefused(CashRefused {
            kind: cursor.cash_kind()?,
            account: cursor.account()?,
            amount: cursor.amount()?,
            transaction_id: cursor.transaction_id()?,
            refusal: cursor.cash_refusal()?,
        }),
        tag::REFUND_ACCEPTED => Event::RefundAccepted {
            refund: cursor.transfer()?,
            original: cursor.transaction_id()?,
            remote: cursor.bool()?,
        },
        tag::REFUND_REJECTED => Event::RefundRejected {
            refund: cursor.transfer()?,
            original: cursor.transaction_id()?,
            reason: cursor.reason()?,
        },
        tag::HOLD_PLACED => Event::HoldPlaced {
            hold: cursor.transfer()?,
            expires_at: cursor.u64()?,
            remote: cursor.bool()?,
        },
        tag::HOLD_ESTABLISHED => Event::HoldEstablished { key: cursor.key()? },
        tag::HOLD_CAPTURED => Event::HoldCaptured {
            hold: cursor.transfer()?,
            amount: cursor.amount()?,
            remote: cursor.bool()?,
        },
        tag::HOLD_RELEASED => Event::HoldReleased {
            hold: cursor.transfer()?,
            reason: cursor.reason()?,
            remote: cursor.bool()?,
        },
        tag::CREDIT_CAPTURED => Event::CreditCaptured {
            key: cursor.key()?,
            amount: cursor.amount()?,
        },
        tag::TRANSACTION_APPLIED => Event::TransactionApplied {
            tx: cursor.transaction()?,
        },
        tag::TRANSACTION_REJECTED => {
            let tx = cursor.transaction()?;
            let failed_leg = Some(cursor.u8()?).filter(|leg| *leg != NO_FAILED_LEG);
            if let Some(failed_leg) = failed_leg.filter(|leg| usize::from(*leg) >= tx.legs().len())
            {
                return Err(format!(
                    "failed leg {failed_leg} of a transaction of {} legs",
                    tx.legs().len()
                ));
            }
            Event::TransactionRejected {
                tx,
                failed_leg,
                reason: cursor.reason()?,
            }
        }
        tag::TRANSACTION_TRIED => Event::TransactionTried {
            tx: cursor.transaction()?,
        },
        tag::TRANSACTION_REFUSED => {
            let key = cursor.key()?;
            let (failed_leg, reason) = cursor.failed_leg()?;
            Event::TransactionRefused {
                key,
                failed_leg,
                reason,
            }
        }
        tag::TRANSACTION_CANCELLING => {
            let key = cursor.key()?;
            let (failed_leg, reason) = cursor.failed_leg()?;
            Event::TransactionCancelling {
                key,
                failed_leg,
                reason,
            }
        }
        tag::TRANSACTION_CONFIRMED => Event::TransactionConfirmed { key: cursor.key()? },
        tag::TRANSACTION_CANCELLED => Event::TransactionCancelled { key: cursor.key()? },
        other => return Err(format!("unknown event tag {other}")),
    };
    cursor.finish()?;
    Ok(event)
}

/// The body of the valid frame at `offset`, or why there is none.
fn frame_at(bytes: &[u8], offset: usize) -> Result<&[u8], &'static str> {
    let rest = &bytes[offset..];
    if rest.len() < RECORD_HEADER_LEN {
        return Err("incomplete record header");
    }
    let len_bytes: [u8; 4] = rest[..4].try_into().expect("4 bytes");
    let body_len = u32::from_le_bytes(len_bytes) as usize;
    if !(FRAME_BODY_LEN_MIN..=RECORD_BODY_LEN_MAX).contains(&body_len) {
        return Err("record length out of bounds");
    }
    let Some(body) = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + body_len) else {
        return Err("record runs past the end of the data");
    };
    let stored = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    if crc32c_of(&[&len_bytes, body]) != stored {
        return Err("checksum mismatch");
    }
    Ok(body)
}

/// Every offset after `offset` where a valid frame begins, in order. Only used on damage, so
/// its cost (a cheap length test at each offset, a checksum only where that passes) is paid
/// only by recovery from a torn or corrupt log.
fn valid_frames_after(bytes: &[u8], offset: usize) -> impl Iterator<Item = (usize, &[u8])> {
    let last_start = bytes
        .len()
        .checked_sub(RECORD_HEADER_LEN + FRAME_BODY_LEN_MIN);
    let starts = match last_start {
        Some(last) if last > offset => offset + 1..last + 1,
        _ => 0..0,
    };
    starts.filter_map(move |at| frame_at(bytes, at).ok().map(|body| (at, body)))
}

/// Where a [`RecordReader`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReaderState {
    Reading,
    /// The log ended; how says what follows its last whole record.
    Ended(LogEnd),
    /// An error was returned; nothing more is read.
    Failed,
}

/// How a log ended: what follows its last whole record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogEnd {
    /// Nothing: the records fill the bytes.
    Exact,
    /// Only zeros (the reader checked every one).
    ZeroFilled,
    /// Bytes that no completed sync covered (a torn or stale range), or in a log without
    /// segment headers, bytes that are not a record with no valid frame after them.
    Torn,
}

/// Reads records one at a time from a byte slice, with the rules of [`decode_log`].
#[derive(Debug, Clone)]
pub struct RecordReader<'a> {
    bytes: &'a [u8],
    /// Start of the next frame: the end of the valid frames read so far.
    offset: usize,
    /// The lsn the next record must carry; 0 before the first record means "any".
    expected_lsn: Lsn,
    /// Whether the bytes begin with a segment header (then the sync-mark rules apply).
    headed: bool,
    state: ReaderState,
}

impl<'a> RecordReader<'a> {
    /// A reader whose first record must have lsn `first_lsn` (0 accepts any first lsn).
    pub fn new(bytes: &'a [u8], first_lsn: Lsn) -> RecordReader<'a> {
        RecordReader {
            bytes,
            offset: 0,
            expected_lsn: first_lsn,
            headed: starts_with_segment_header(bytes),
            state: ReaderState::Reading,
        }
    }

    /// A reader that goes on at `offset` of `bytes`, where an earlier reader of a prefix of
    /// the same bytes stopped (its `valid_len`, a frame boundary), the next record to carry
    /// lsn `next_lsn` (0: any). For following a log that only grows, each record read once.
    pub fn resume(bytes: &'a [u8], offset: usize, next_lsn: Lsn) -> RecordReader<'a> {
        assert!(offset <= bytes.len(), "a reader resumes within its bytes");
        RecordReader {
            offset,
            ..RecordReader::new(bytes, next_lsn)
        }
    }

    /// Bytes of whole valid frames read so far.
    pub fn valid_len(&self) -> usize {
        self.offset
    }

    /// Whether the reader stopped at a torn tail (only meaningful once it returned `None`).
    pub fn torn_tail(&self) -> bool {
        self.state == ReaderState::Ended(LogEnd::Torn)
    }

    /// How the log ended, once the reader returned `None`.
    fn end(&self) -> Option<LogEnd> {
        match self.state {
            ReaderState::Ended(end) => Some(end),
            ReaderState::Reading | ReaderState::Failed => None,
        }
    }

    /// The next record, `Ok(None)` at the end of the log (clean or torn), or the error that
    /// stops the log. After `None` or an error, every later call returns `Ok(None)`.
    pub fn next_record(&mut self) -> Result<Option<Record>, CodecError> {
        while self.state == ReaderState::Reading {
            if self.offset == self.bytes.len() {
                self.state = ReaderState::Ended(LogEnd::Exact);
                return Ok(None);
            }
            let body = match frame_at(self.bytes, self.offset) {
                Ok(body) => body,
                Err(reason) => return self.damaged(reason),
            };
            let decoded = match SyncMark::from_body(body) {
                Some(mark) => self.check_mark(mark).map(|()| None),
                None => self.decode_body(body).map(Some),
            };
            match decoded {
                Ok(record) => {
                    self.offset += RECORD_HEADER_LEN + body.len();
                    if let Some(record) = record {
                        self.expected_lsn = record.lsn.saturating_add(1);
                        return Ok(Some(record));
                    }
                }
                Err(error) => {
                    self.state = ReaderState::Failed;
                    return Err(error);
                }
            }
        }
        Ok(None)
    }

    /// A sync mark read in sequence: it may not vouch for more than precedes it, and it must
    /// belong to the segment of the records around it.
    fn check_mark(&mut self, mark: SyncMark) -> Result<(), CodecError> {
        let offset = self.offset as u64;
        let corrupt = |reason: String| CodecError::Corrupt { offset, reason };
        if mark.synced_len > offset {
            return Err(corrupt(format!(
                "a sync mark vouches for {} bytes but only {} precede it",
                mark.synced_len, self.offset
            )));
        }
        let expected = self.expected_lsn;
        if mark.synced_len == 0 {
            // A segment header: the next record is the segment's first.
            if expected != 0 && mark.segment_lsn != expected {
                return Err(corrupt(format!(
                    "segment header for lsn {}, but the next record is lsn {expected}",
                    mark.segment_lsn
                )));
            }
            self.expected_lsn = mark.segment_lsn;
        } else if mark.segment_lsn == 0 || (expected != 0 && mark.segment_lsn > expected) {
            return Err(corrupt(format!(
                "sync mark of the segment from lsn {}, among records before lsn {expected}",
                mark.segment_lsn
            )));
        }
        Ok(())
    }

    /// No valid frame starts at `offset`: the end of the log, a torn or stale range, or
    /// corruption, by the rules of the module docs.
    fn damaged(&mut self, reason: &str) -> Result<Option<Record>, CodecError> {
        if self.bytes[self.offset..].iter().all(|&b| b == 0) {
            // Zero-filled space: no frame can start in it (a length of 0 is never valid).
            self.state = ReaderState::Ended(LogEnd::ZeroFilled);
            return Ok(None);
        }
        let damage = self.offset;
        let mut first_valid = None;
        for (at, body) in valid_frames_after(self.bytes, damage) {
            first_valid.get_or_insert(at);
            let vouched = SyncMark::from_body(body).map_or(0, |mark| mark.synced_len);
            if vouched > damage as u64 {
                self.state = ReaderState::Failed;
                return Err(CodecError::Corrupt {
                    offset: damage as u64,
                    reason: format!(
                        "{reason} in synced data: the sync mark at byte {at} says the first \
                         {vouched} bytes were durable"
                    ),
                });
            }
            if !self.headed {
                break;
            }
        }
        match first_valid {
            Some(valid_at) if !self.headed => {
                self.state = ReaderState::Failed;
                Err(CodecError::Corrupt {
                    offset: damage as u64,
                    reason: format!("{reason}, yet a valid record follows at byte {valid_at}"),
                })
            }
            _ => {
                self.state = ReaderState::Ended(LogEnd::Torn);
                Ok(None)
            }
        }
    }

    /// Decodes the checksummed body of the record at `self.offset`.
    fn decode_body(&self, body: &[u8]) -> Result<Record, CodecError> {
        let offset = self.offset as u64;
        let corrupt = |reason: String| CodecError::Corrupt { offset, reason };
        let mut cursor = Cursor::new(body);
        let version = cursor.u8().map_err(corrupt)?;
        if version != RECORD_VERSION {
            return Err(CodecError::UnsupportedVersion { offset, version });
        }
        if body.len() < RECORD_BODY_LEN_MIN {
            return Err(corrupt(format!("record body of {} bytes", body.len())));
        }
        let lsn = cursor.u64().map_err(corrupt)?;
        let timestamp = cursor.u64().map_err(corrupt)?;
        if lsn == 0 {
            return Err(corrupt("lsn 0 (lsns start at 1)".to_string()));
        }
        // No lsn follows u64::MAX. The reader used to expect `lsn + 1` saturated, so after a
        // record with lsn u64::MAX it accepted another with the same lsn as next in sequence;
        // no writer gets there, so such a record is damage.
        if lsn == Lsn::MAX {
            return Err(corrupt("lsn u64::MAX (no lsn could follow it)".to_string()));
        }
        if self.expected_lsn != 0 && lsn != self.expected_lsn {
            return Err(CodecError::LsnGap {
                offset,
                expected: self.expected_lsn,
                found: lsn,
            });
        }
        let event = decode_event(&mut cursor).map_err(corrupt)?;
        Ok(Record {
            lsn,
            timestamp,
            event,
        })
    }
}

impl Iterator for RecordReader<'_> {
    type Item = Result<Record, CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

/// Decodes a whole log segment whose first record must have lsn `first_lsn` (pass 0 to
/// accept any first lsn; lsns must then go up by one). See the module docs for where a log
/// ends and what is an error.
///
/// Any bytes give a log or an error, never a panic. Allocation is bounded by the input, not
/// by anything it declares: a record's body is borrowed from `bytes` (its declared length is
/// checked against [`RECORD_BODY_LEN_MAX`] and against the bytes that are there before it is
/// used), and the only allocation is the returned vector, one [`Record`] per whole record,
/// so at most `bytes.len() / 26` of them (a header and the smallest body).
pub fn decode_log(bytes: &[u8], first_lsn: Lsn) -> Result<DecodedLog, CodecError> {
    let mut reader = RecordReader::new(bytes, first_lsn);
    let mut records = Vec::new();
    while let Some(record) = reader.next_record()? {
        records.push(record);
    }
    let end = reader
        .end()
        .expect("the reader stopped at the end of the log");
    let decoded = DecodedLog {
        records,
        valid_len: reader.valid_len(),
        torn_tail: end == LogEnd::Torn,
    };
    // The reader scanned a zero-filled tail, up to a preallocation step, to call it one; its
    // verdict is carried here rather than scanned again, and checked against the lengths.
    let tail = &bytes[decoded.valid_len..];
    assert!(
        match end {
            LogEnd::Exact => tail.is_empty(),
            LogEnd::ZeroFilled => tail.first() == Some(&0) && tail.last() == Some(&0),
            LogEnd::Torn => !tail.is_empty(),
        },
        "a log ends at the end of its bytes, in zero-filled space or at a torn tail"
    );
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(text: &str) -> AccountId {
        AccountId::new(text).unwrap()
    }

    fn txn(text: &str) -> TransactionId {
        TransactionId::new(text).unwrap()
    }

    fn transfer(id: &str, amount: u64) -> Transfer {
        Transfer {
            transaction_id: txn(id),
            from: account("alice"),
            to: account("bob:with-a.longer_id"),
            amount: Amount::from_minor(amount).unwrap(),
            currency: Currency::KWD,
        }
    }

    /// One event of every variant, with every reason and both decisions.
    fn every_event() -> Vec<Event> {
        let t = transfer("t-1", 12_345);
        let key = t.key();
        let mut events = vec![
            Event::AccountOpened {
                account: account("alice"),
                currency: Currency::USD,
            },
            Event::Deposited {
                account: account("alice"),
                amount: Amount::from_minor(1).unwrap(),
                transaction_id: txn("d-1"),
            },
            Event::Withdrawn {
                account: account(&"w".repeat(ID_LEN_MAX)),
                amount: Amount::from_minor(crate::model::money::AMOUNT_MINOR_MAX).unwrap(),
                transaction_id: txn(&"x".repeat(ID_LEN_MAX)),
            },
            Event::Transferred { transfer: t },
            Event::DebitTried { transfer: t },
            Event::TransferDecided {
                key,
                decision: Decision::Confirm,
            },
            Event::DebitConfirmed { key },
            Event::DebitCancelled { key },
            Event::CreditTried { transfer: t },
            Event::CreditConfirmed { key },
            Event::CreditCancelled { key },
            Event::CreditTryNotSeen { key },
        ];
        for reason in ALL_REASONS {
            events.push(Event::TransferRejected {
                transfer: t,
                reason,
            });
            events.push(Event::TransferDecided {
                key,
                decision: Decision::Cancel(reason),
            });
        }
        events.extend(transaction_events());
        events
    }

    /// One leg of `minor` USD.
    fn leg(from: &str, to: &str, minor: u64, currency: Currency) -> Leg {
        Leg {
            from: account(from),
            to: account(to),
            amount: Amount::from_minor(minor).unwrap(),
            currency,
        }
    }

    /// An id of the longest length allowed, told apart by `head`.
    fn longest_id(head: &str) -> String {
        format!("{head}{}", "-".repeat(ID_LEN_MAX - head.len()))
    }

    /// The longest transaction there is: [`LEGS_MAX`] legs of the largest amount, every id
    /// at its length limit (each account in one leg, so that no account's total passes the
    /// largest amount).
    fn longest_transaction() -> Arc<Transaction> {
        let legs = (0..LEGS_MAX)
            .map(|i| Leg {
                from: account(&longest_id(&format!("from-{i}"))),
                to: account(&longest_id(&format!("to-{i}"))),
                amount: Amount::from_minor(crate::model::money::AMOUNT_MINOR_MAX).unwrap(),
                currency: Currency::USD,
            })
            .collect();
        Transaction::new(txn(&longest_id("tx")), legs).unwrap()
    }

    /// Every transaction event: each with every reason and with and without a failed leg,
    /// and the longest record of all, a refusal of the longest transaction.
    fn transaction_events() -> Vec<Event> {
        let short = Transaction::new(
            txn("x-1"),
            vec![
                leg("alice", "bob", 5, Currency::USD),
                leg("bob", "carol", 3, Currency::EUR),
            ],
        )
        .unwrap();
        let key = short.key();
        let mut events = vec![
            Event::TransactionApplied { tx: short.clone() },
            Event::TransactionTried { tx: short.clone() },
            Event::TransactionConfirmed { key },
            Event::TransactionCancelled { key },
        ];
        for reason in ALL_REASONS {
            events.push(Event::TransactionRejected {
                tx: short.clone(),
                failed_leg: Some(1),
                reason,
            });
            for failed_leg in [None, Some(0), Some(u8::MAX)] {
                events.push(Event::TransactionRefused {
                    key,
                    failed_leg,
                    reason,
                });
                events.push(Event::TransactionCancelling {
                    key,
                    failed_leg,
                    reason,
                });
            }
        }
        let longest = longest_transaction();
        events.extend([
            Event::TransactionApplied {
                tx: longest.clone(),
            },
            Event::TransactionTried {
                tx: longest.clone(),
            },
            Event::TransactionRejected {
                tx: longest,
                failed_leg: Some((LEGS_MAX - 1) as u8),
                reason: Reason::InsufficientFunds,
            },
        ]);
        events
    }

    const ALL_REASONS: [Reason; 12] = Reason::ALL;

    fn records_of(events: &[Event], first_lsn: Lsn) -> Vec<Record> {
        events
            .iter()
            .zip(first_lsn..)
            .map(|(event, lsn)| Record {
                lsn,
                timestamp: 1_700_000_000_000_000 + lsn * 1_000,
                event: event.clone(),
            })
            .collect()
    }

    fn encode_all(records: &[Record]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut boundaries = vec![0];
        for record in records {
            encode_record(record, &mut bytes);
            boundaries.push(bytes.len());
        }
        (bytes, boundaries)
    }

    /// A small log of mixed variants, short ids so that records are varied in length.
    fn small_log() -> (Vec<Record>, Vec<u8>, Vec<usize>) {
        let all = every_event();
        let picked: Vec<Event> = [0, 1, 2, 3, 4, 5, 6, 8, 12, 13]
            .iter()
            .map(|&i| all[i].clone())
            .collect();
        let records = records_of(&picked, 41);
        let (bytes, boundaries) = encode_all(&records);
        (records, bytes, boundaries)
    }

    #[test]
    fn every_event_round_trips() {
        let records = records_of(&every_event(), 1);
        for record in &records {
            let mut bytes = Vec::new();
            encode_record(record, &mut bytes);
            assert!(bytes.len() <= RECORD_ENCODED_LEN_MAX);
            let decoded = decode_log(&bytes, record.lsn).unwrap();
            assert_eq!(decoded.records, vec![record.clone()]);
            assert_eq!(decoded.valid_len, bytes.len());
            assert!(!decoded.torn_tail);
        }
        let (bytes, _) = encode_all(&records);
        let decoded = decode_log(&bytes, 0).unwrap();
        assert_eq!(decoded.records, records);
        let streamed: Result<Vec<Record>, CodecError> = RecordReader::new(&bytes, 1).collect();
        assert_eq!(streamed.unwrap(), records);
    }

    #[test]
    fn the_longest_record_is_the_refusal_of_a_transaction_of_sixty_four_legs() {
        let mut longest = 0;
        for record in records_of(&every_event(), 1) {
            let mut bytes = Vec::new();
            encode_record(&record, &mut bytes);
            longest = longest.max(bytes.len());
            if let Event::TransactionRejected { ref tx, .. } = record.event {
                if tx.legs().len() == LEGS_MAX {
                    assert_eq!(bytes.len(), RECORD_ENCODED_LEN_MAX);
                }
            }
        }
        assert_eq!(longest, RECORD_ENCODED_LEN_MAX);
        // It is written and read in a log like any other, between shorter ones.
        let mut events = every_event()[..3].to_vec();
        events.extend(transaction_events());
        events.extend(every_event()[3..6].iter().cloned());
        let records = records_of(&events, 7);
        let (bytes, boundaries) = encode_all(&records);
        assert_eq!(decode_log(&bytes, 7).unwrap().records, records);
        let cut = boundaries[boundaries.len() - 5] + RECORD_ENCODED_LEN_MAX / 2;
        let decoded = decode_log(&bytes[..cut], 7).unwrap();
        assert!(decoded.torn_tail);
        assert_eq!(decoded.records, records[..decoded.records.len()]);
    }

    /// The framed body of a record of `tag` whose transaction is `legs` (as written, not
    /// checked), followed by `tail`.
    fn raw_transaction_record(tag: u8, legs: &[Leg], tail: &[u8]) -> Vec<u8> {
        let mut body = vec![RECORD_VERSION];
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&7u64.to_le_bytes());
        body.push(tag);
        txn("x-1").encode_into(&mut body);
        body.push(legs.len() as u8);
        for leg in legs {
            leg.from.encode_into(&mut body);
            leg.to.encode_into(&mut body);
            body.extend_from_slice(&leg.amount.minor().to_le_bytes());
            put_currency(&mut body, leg.currency);
        }
        body.extend_from_slice(tail);
        framed(&body)
    }

    #[test]
    fn a_record_of_a_transaction_that_cannot_be_is_corrupt() {
        let ab = leg("alice", "bob", 5, Currency::USD);
        let most = crate::model::money::AMOUNT_MINOR_MAX;
        let rejected = |failed_leg: u8| [failed_leg, reason_tag(Reason::InsufficientFunds)];
        // What is written right reads back.
        for (tag, tail) in [
            (tag::TRANSACTION_APPLIED, &[][..]),
            (tag::TRANSACTION_TRIED, &[][..]),
            (tag::TRANSACTION_REJECTED, &rejected(1)[..]),
        ] {
            let bytes = raw_transaction_record(tag, &[ab, ab], tail);
            let decoded = decode_log(&bytes, 1).unwrap();
            assert_eq!(decoded.records.len(), 1);
        }
        let cases: Vec<(&str, u8, Vec<Leg>, Vec<u8>)> = vec![
            ("no leg", tag::TRANSACTION_APPLIED, vec![], vec![]),
            (
                "65 legs",
                tag::TRANSACTION_TRIED,
                vec![ab; LEGS_MAX + 1],
                vec![],
            ),
            (
                "a leg to itself",
                tag::TRANSACTION_APPLIED,
                vec![ab, leg("carol", "carol", 1, Currency::USD)],
                vec![],
            ),
            (
                "an account's total past the largest amount",
                tag::TRANSACTION_TRIED,
                vec![
                    leg("alice", "bob", most, Currency::USD),
                    leg("alice", "carol", 1, Currency::USD),
                ],
                vec![],
            ),
            (
                "a failed leg beyond the legs",
                tag::TRANSACTION_REJECTED,
                vec![ab, ab],
                rejected(2).to_vec(),
            ),
            (
                "a failed leg far beyond the legs",
                tag::TRANSACTION_REJECTED,
                vec![ab],
                // (255 is no leg at all, see `NO_FAILED_LEG`)
                rejected(u8::MAX - 1).to_vec(),
            ),
            (
                "fewer legs than counted",
                tag::TRANSACTION_APPLIED,
                vec![ab],
                vec![],
            ),
        ];
        for (what, tag, legs, tail) in cases {
            let mut bytes = raw_transaction_record(tag, &legs, &tail);
            if what == "fewer legs than counted" {
                // Claim two legs where one is written.
                let mut body = bytes.split_off(RECORD_HEADER_LEN);
                body[BODY_PREFIX_LEN + 1 + 1 + 3] = 2;
                bytes = framed(&body);
            }
            let result = decode_log(&bytes, 1);
            assert!(
                matches!(result, Err(CodecError::Corrupt { offset: 0, .. })),
                "{what}: {result:?}"
            );
        }
        // A failed leg's presence is a byte 0 or 1.
        let refused = Record {
            lsn: 1,
            timestamp: 7,
            event: Event::TransactionRefused {
                key: transfer("x-1", 1).key(),
                failed_leg: Some(3),
                reason: Reason::InsufficientFunds,
            },
        };
        let mut body = body_of(&refused);
        let at = body.len() - 3;
        assert_eq!(body[at], 1);
        body[at] = 2;
        let result = decode_log(&framed(&body), 1);
        assert!(
            matches!(result, Err(CodecError::Corrupt { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn encoding_appends_after_existing_bytes() {
        let (records, bytes, _) = small_log();
        let mut out = b"prefix".to_vec();
        encode_record(&records[0], &mut out);
        assert_eq!(&out[..6], b"prefix");
        let mut alone = Vec::new();
        encode_record(&records[0], &mut alone);
        assert_eq!(&out[6..], &alone[..]);
        assert_eq!(&bytes[..alone.len()], &alone[..]);
    }

    /// `bytes` with one bit flipped, for every bit: the bit's index and the damaged copy.
    fn each_bit_flipped(bytes: &[u8]) -> impl Iterator<Item = (usize, Vec<u8>)> + '_ {
        (0..bytes.len() * 8).map(|bit| {
            let mut damaged = bytes.to_vec();
            damaged[bit / 8] ^= 1 << (bit % 8);
            (bit, damaged)
        })
    }

    #[test]
    fn empty_input_is_an_empty_log() {
        let decoded = decode_log(&[], 1).unwrap();
        assert_eq!(decoded.records, vec![]);
        assert_eq!((decoded.valid_len, decoded.torn_tail), (0, false));
    }

    #[test]
    fn truncation_at_every_offset_keeps_exactly_the_whole_records() {
        let (records, bytes, boundaries) = small_log();
        for cut in 0..=bytes.len() {
            let decoded = decode_log(&bytes[..cut], 41).unwrap();
            let whole = boundaries.iter().filter(|&&b| b <= cut).count() - 1;
            assert_eq!(decoded.records, records[..whole], "cut at {cut}");
            assert_eq!(decoded.valid_len, boundaries[whole], "cut at {cut}");
            assert_eq!(decoded.torn_tail, !boundaries.contains(&cut), "cut {cut}");
        }
    }

    #[test]
    fn flipping_any_bit_never_yields_a_modified_record() {
        let (records, bytes, boundaries) = small_log();
        let last_start = boundaries[boundaries.len() - 2];
        for (bit, damaged) in each_bit_flipped(&bytes) {
            match decode_log(&damaged, 41) {
                Ok(decoded) => {
                    let n = decoded.records.len();
                    assert_eq!(decoded.records, records[..n], "bit {bit}");
                    assert!(n < records.len(), "bit {bit} went unnoticed");
                    assert!(decoded.torn_tail);
                    assert!(bit / 8 >= last_start, "bit {bit}: damage before the tail");
                }
                Err(error) => assert!(
                    matches!(error, CodecError::Corrupt { .. }),
                    "bit {bit}: {error}"
                ),
            }
        }
    }

    #[test]
    fn damage_before_the_tail_reports_its_offset() {
        let (_, mut bytes, boundaries) = small_log();
        bytes[boundaries[3] + RECORD_HEADER_LEN + 5] ^= 0x10;
        assert!(matches!(
            decode_log(&bytes, 41),
            Err(CodecError::Corrupt { offset, .. }) if offset == boundaries[3] as u64
        ));
    }

    /// Frames `body` as the writer would, checksum included, to test what a checksum alone
    /// does not protect against.
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; RECORD_HEADER_LEN];
        out.extend_from_slice(body);
        seal_frame(&mut out, 0);
        out
    }

    fn body_of(record: &Record) -> Vec<u8> {
        let mut bytes = Vec::new();
        encode_record(record, &mut bytes);
        bytes.split_off(RECORD_HEADER_LEN)
    }

    #[test]
    fn unsupported_version_is_an_error_even_at_the_tail() {
        let (records, mut bytes, boundaries) = small_log();
        let mut body = body_of(&Record {
            lsn: 51,
            ..records[0].clone()
        });
        body[0] = RECORD_VERSION + 1;
        bytes.extend_from_slice(&framed(&body));
        assert_eq!(
            decode_log(&bytes, 41),
            Err(CodecError::UnsupportedVersion {
                offset: *boundaries.last().unwrap() as u64,
                version: RECORD_VERSION + 1
            })
        );
    }

    #[test]
    fn checksummed_but_undecodable_bodies_are_errors() {
        let record = Record {
            lsn: 1,
            timestamp: 7,
            event: every_event()[0].clone(),
        };
        let body = body_of(&record);
        let mut unknown_tag = body.clone();
        unknown_tag[BODY_PREFIX_LEN] = 200;
        let mut bad_id = body.clone();
        bad_id[BODY_PREFIX_LEN + 2] = b' ';
        let mut trailing = body.clone();
        trailing.push(0);
        let mut lsn_zero = body.clone();
        lsn_zero[1..9].copy_from_slice(&0u64.to_le_bytes());
        let mut bad_currency = body.clone();
        let at = body.len() - 2;
        bad_currency[at..].copy_from_slice(&999u16.to_le_bytes());
        for bad in [unknown_tag, bad_id, trailing, lsn_zero, bad_currency] {
            let result = decode_log(&framed(&bad), 0);
            assert!(
                matches!(result, Err(CodecError::Corrupt { offset: 0, .. })),
                "{result:?}"
            );
        }
    }

    #[test]
    fn lsn_gaps_and_wrong_first_lsn_are_errors() {
        let (records, bytes, boundaries) = small_log();
        assert_eq!(
            decode_log(&bytes, 40),
            Err(CodecError::LsnGap {
                offset: 0,
                expected: 40,
                found: 41
            })
        );
        let mut gapped = records.clone();
        gapped.remove(4);
        let (bytes, _) = encode_all(&gapped);
        assert_eq!(
            decode_log(&bytes, 0),
            Err(CodecError::LsnGap {
                offset: boundaries[4] as u64,
                expected: 45,
                found: 46
            })
        );
    }

    #[test]
    fn a_zero_filled_tail_is_a_clean_stop() {
        let (records, mut bytes, _) = small_log();
        let valid_len = bytes.len();
        bytes.resize(valid_len + 8192, 0);
        let decoded = decode_log(&bytes, 41).unwrap();
        assert_eq!(decoded.records, records);
        assert_eq!((decoded.valid_len, decoded.torn_tail), (valid_len, false));
        // A record cut short inside preallocated space: partial bytes, then zeros.
        let (_, mut bytes, boundaries) = small_log();
        let last_start = boundaries[boundaries.len() - 2];
        bytes.truncate(last_start + 11);
        bytes.resize(last_start + 4096, 0);
        let decoded = decode_log(&bytes, 41).unwrap();
        assert_eq!(decoded.records, records[..records.len() - 1]);
        assert_eq!((decoded.valid_len, decoded.torn_tail), (last_start, true));
    }

    #[test]
    fn garbage_after_the_records_is_a_torn_tail_but_records_after_damage_are_not() {
        let (records, mut bytes, _) = small_log();
        let valid_len = bytes.len();
        bytes.extend((0u32..3000).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        let decoded = decode_log(&bytes, 41).unwrap();
        assert_eq!(decoded.records, records);
        assert_eq!(decoded.valid_len, valid_len);
        // The same garbage in front of a valid record is corruption, not a tail.
        let mut tail = Vec::new();
        encode_record(
            &Record {
                lsn: 51,
                ..records[0].clone()
            },
            &mut tail,
        );
        bytes.extend_from_slice(&tail);
        assert!(matches!(
            decode_log(&bytes, 41),
            Err(CodecError::Corrupt { offset, .. }) if offset == valid_len as u64
        ));
    }

    #[test]
    fn no_record_follows_lsn_u64_max() {
        // Once decoded as two records in sequence: the reader expected `lsn + 1` saturated.
        let record = Record {
            lsn: Lsn::MAX,
            ..records_of(&every_event(), 1)[0].clone()
        };
        let mut bytes = Vec::new();
        encode_record(&record, &mut bytes);
        encode_record(&record, &mut bytes);
        for first_lsn in [0, Lsn::MAX] {
            assert!(
                matches!(
                    decode_log(&bytes, first_lsn),
                    Err(CodecError::Corrupt { offset: 0, .. })
                ),
                "first lsn {first_lsn}"
            );
        }
    }

    /// A segment as the writer lays it out: a header, then batches of `small_log`'s records,
    /// each followed by the mark written after its sync. Returns the bytes and, per batch,
    /// the offset where it starts.
    fn marked_segment(batches: &[std::ops::Range<usize>]) -> (Vec<Record>, Vec<u8>, Vec<usize>) {
        let (records, _, _) = small_log();
        let mut bytes = Vec::new();
        encode_sync_mark(0, 41, &mut bytes);
        let mut starts = Vec::new();
        for batch in batches {
            starts.push(bytes.len());
            for record in &records[batch.clone()] {
                encode_record(record, &mut bytes);
            }
            let synced = bytes.len() as u64;
            encode_sync_mark(synced, 41, &mut bytes);
        }
        (records, bytes, starts)
    }

    #[test]
    fn sync_marks_are_skipped_and_counted_in_the_valid_length() {
        let (records, bytes, _) = marked_segment(&[0..3, 3..4, 4..10]);
        let decoded = decode_log(&bytes, 41).unwrap();
        assert_eq!(decoded.records, records);
        assert_eq!((decoded.valid_len, decoded.torn_tail), (bytes.len(), false));
        assert!(starts_with_segment_header(&bytes));
        assert!(!starts_with_segment_header(&small_log().1));
        // Any first lsn: the header says which.
        assert_eq!(decode_log(&bytes, 0).unwrap().records, records);
    }

    #[test]
    fn a_hole_then_whole_records_in_an_unsynced_batch_is_cut_there() {
        // The last batch (records 4..10) was written but its sync never completed: a power
        // loss kept its later sectors and lost an earlier one.
        let (records, mut bytes, starts) = marked_segment(&[0..3, 3..4]);
        let batch_start = bytes.len();
        for record in &records[4..10] {
            encode_record(record, &mut bytes);
        }
        bytes.resize(bytes.len() + 512, 0);
        let hole = batch_start + 5;
        bytes[hole..hole + 60].fill(0);
        let after: Vec<usize> = valid_frames_after(&bytes, hole).map(|(at, _)| at).collect();
        assert_eq!(after.len(), 5, "whole records survive after the hole");
        let decoded = decode_log(&bytes, 41).unwrap();
        assert_eq!(decoded.records, records[..4]);
        assert_eq!((decoded.valid_len, decoded.torn_tail), (batch_start, true));
        assert!(starts[1] < batch_start);
    }

    #[test]
    fn damage_that_a_later_sync_mark_vouches_for_is_corruption() {
        let (_, mut bytes, starts) = marked_segment(&[0..3, 3..4, 4..10]);
        let at = starts[1] + RECORD_HEADER_LEN + 3;
        bytes[at] ^= 0x04;
        let error = decode_log(&bytes, 41).unwrap_err();
        assert!(
            matches!(&error, CodecError::Corrupt { offset, .. } if *offset == starts[1] as u64),
            "{error}"
        );
        assert!(error.to_string().contains("in synced data"), "{error}");
        // The same damage in the last batch, whose mark was lost with the power: a cut.
        let (_, mut bytes, starts) = marked_segment(&[0..3, 3..4, 4..10]);
        bytes.truncate(bytes.len() - SYNC_MARK_LEN);
        bytes[starts[2] + 3] ^= 0x04;
        let decoded = decode_log(&bytes, 41).unwrap();
        assert_eq!((decoded.valid_len, decoded.torn_tail), (starts[2], true));
    }

    #[test]
    fn flipping_any_bit_of_a_marked_segment_never_yields_a_modified_record() {
        let (records, bytes, starts) = marked_segment(&[0..2, 2..5, 5..10]);
        let last_mark = bytes.len() - SYNC_MARK_LEN;
        for (bit, damaged) in each_bit_flipped(&bytes) {
            match decode_log(&damaged, 41) {
                Ok(decoded) => {
                    let n = decoded.records.len();
                    assert_eq!(decoded.records, records[..n], "bit {bit}");
                    assert!(
                        bit / 8 >= last_mark,
                        "bit {bit}: vouched-for damage was cut"
                    );
                    assert_eq!(n, records.len(), "bit {bit}");
                }
                Err(error) => assert!(
                    bit / 8 < last_mark || starts.is_empty(),
                    "bit {bit}: {error}"
                ),
            }
        }
    }

    #[test]
    fn inconsistent_sync_marks_are_corruption() {
        let (records, _, _) = small_log();
        let mut bytes = Vec::new();
        encode_sync_mark(0, 41, &mut bytes);
        encode_record(&records[0], &mut bytes);
        let mut overclaiming = bytes.clone();
        encode_sync_mark(10_000, 41, &mut overclaiming);
        let mut foreign = bytes.clone();
        encode_sync_mark(bytes.len() as u64, 900, &mut foreign);
        let mut misnamed = Vec::new();
        encode_sync_mark(0, 7, &mut misnamed);
        encode_record(&records[0], &mut misnamed);
        for (what, bad) in [
            ("overclaim", overclaiming),
            ("foreign", foreign),
            ("misnamed", misnamed),
        ] {
            let result = decode_log(&bad, 41);
            assert!(
                matches!(result, Err(CodecError::Corrupt { .. })),
                "{what}: {result:?}"
            );
        }
    }

    #[test]
    fn a_resumed_reader_goes_on_where_the_last_one_stopped() {
        let (records, bytes, starts) = marked_segment(&[0..3, 3..4, 4..10]);
        let mut first = RecordReader::new(&bytes[..starts[2]], 41);
        let read: Vec<Record> = first.by_ref().map(Result::unwrap).collect();
        assert_eq!(read, records[..4]);
        let mut rest = RecordReader::resume(&bytes, first.valid_len(), 45);
        let more: Vec<Record> = rest.by_ref().map(Result::unwrap).collect();
        assert_eq!(more, records[4..]);
        assert_eq!(rest.valid_len(), bytes.len());
    }

    // Hostile bytes: any input is a log or an error, and a log is exactly what was written.

    use crate::hostile::{mutated, mutations, reseal_frames};
    use proptest::prelude::*;

    /// Every frame's checksum made right, so that damage reaches the body decoder.
    fn resealed(bytes: &[u8]) -> Vec<u8> {
        reseal_frames(bytes, 1..=RECORD_BODY_LEN_MAX)
    }

    /// What [`decode_log`] promises of any input: the streaming reader agrees with it; the
    /// records re-encode to exactly the valid prefix and their lsns go up by one from
    /// `first_lsn`; after the prefix come zeros, or a torn tail when it says so.
    fn check_any(bytes: &[u8], first_lsn: Lsn) -> Result<(), TestCaseError> {
        let decoded = decode_log(bytes, first_lsn);
        let streamed: Result<Vec<Record>, CodecError> =
            RecordReader::new(bytes, first_lsn).collect();
        let decoded = match decoded {
            Err(error) => {
                prop_assert_eq!(streamed, Err(error));
                return Ok(());
            }
            Ok(decoded) => decoded,
        };
        prop_assert_eq!(streamed.as_ref(), Ok(&decoded.records));
        let mut again = Vec::new();
        for record in &decoded.records {
            encode_record(record, &mut again);
        }
        prop_assert_eq!(&again[..], &bytes[..decoded.valid_len]);
        let mut expected = first_lsn;
        for record in &decoded.records {
            prop_assert!(record.lsn != 0 && (expected == 0 || record.lsn == expected));
            expected = record.lsn + 1;
        }
        let zeros = bytes[decoded.valid_len..].iter().all(|&b| b == 0);
        prop_assert_eq!(decoded.torn_tail, !zeros);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_are_a_log_or_an_error(
            bytes in prop::collection::vec(any::<u8>(), 0..400),
            first_lsn in prop_oneof![Just(0), Just(1), any::<Lsn>()],
            reseal in any::<bool>(),
        ) {
            let bytes = if reseal { resealed(&bytes) } else { bytes };
            check_any(&bytes, first_lsn)?;
        }

        #[test]
        fn damaged_logs_are_a_prefix_or_an_error(
            mutations in mutations(),
            reseal in any::<bool>(),
        ) {
            let (records, bytes, _) = small_log();
            let damaged = mutated(bytes.clone(), &mutations);
            let damaged = if reseal { resealed(&damaged) } else { damaged };
            check_any(&damaged, 41)?;
            // Without a forged checksum, damage never yields a record that was not written.
            if let (false, Ok(decoded)) = (reseal, decode_log(&damaged, 41)) {
                prop_assert_eq!(&decoded.records[..], &records[..decoded.records.len()]);
            }
        }
    }
}
