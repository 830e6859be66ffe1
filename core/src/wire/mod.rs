//! The node-to-node protocol: how the nodes of a cluster carry client commands, queries, their
//! answers and TC/C phase messages to each other. Bytes only: no sockets here (see
//! `walletd_runtime::net` for the TCP driver).
//!
//! # Frame
//! Same family as the log codec ([`crate::log::codec`]); all integers little-endian:
//!
//! ```text
//! [body_len: u32][crc: u32][body: body_len bytes]
//! body = [version: u8][map_version: u64][count: u16][message; count]
//! ```
//!
//! `crc` is CRC32C over the four `body_len` bytes followed by the body, as in the log, so a
//! damaged length is caught by the checksum. `body_len` lies in
//! `FRAME_BODY_LEN_MIN..=FRAME_BODY_LEN_MAX` and `count` is at most [`FRAME_MESSAGES_MAX`];
//! both bounds hold by construction for every frame [`FrameWriter`] writes, and anything else
//! is refused before a byte of it is buffered. Only a `Raft` message (whole log entries)
//! takes a frame past [`FRAME_BODY_LEN_PLAIN_MAX`]. Frames are batched: a sender puts everything it
//! has queued into one frame, one write. A frame with no message is a heartbeat.
//!
//! The body bound is a full frame of the longest messages other than `Peers`; a `Peers`
//! message is longer, up to [`PEERS_ENCODED_LEN_MAX`], and a frame holds one beside others
//! only while the bytes allow ([`FrameWriter::try_push`]). One always fits in an empty frame.
//!
//! `map_version` is the sender's partition-map version. A receiver holding another version
//! applies nothing from the frame and answers [`Message::StaleMap`].
//!
//! # Messages
//! A message is a tag byte and its fields. Tags are part of the protocol: never reuse or
//! renumber one; tag 0 is never valid.
//!
//! | tag | message | fields | sent by |
//! | --- | --- | --- | --- |
//! | 1 | `Hello` | node `u32`, map version `u64`, map digest `u64`, nonce `[u8; 16]` | both ends, handshake |
//! | 2 | `Auth` | mac `[u8; 32]` | both ends, handshake |
//! | 3 | `Request` | id `u64`, wait bool, command | the forwarding node |
//! | 4 | `QueryRequest` | id, query | the forwarding node |
//! | 5 | `Reply` | id, command result | the owning node |
//! | 6 | `Answer` | id, query answer | the owning node |
//! | 7 | retired | `Peer`, one peer message, up to wire version 2: never reuse | |
//! | 8 | `StaleMap` | expected `u64`, got `u64` | the receiving node |
//! | 9 | `Refused` | id | the owning node: the request was not run |
//! | 10 | `Peers` | count `u16` (1..=[`PEER_MESSAGES_PER_INPUT_MAX`]), peer message; count | the forwarding node: TC/C phase messages for one partition |
//! | 11 | `Raft` | partition `u32`, count `u16` (1..=[`RAFT_MESSAGES_MAX`]), then per message its length `u32` and its protobuf encoding (raft-rs's `eraftpb.Message`) | a replica: its group's Raft messages for the receiver's replica |
//! | 13 | `CatchUp` | partition `u32`, sender node `u32`, then 1 fetch (after lsn `u64`, through lsn `u64`) or 2 records (first lsn `u64`, length `u32`, the records as the partition log holds them) | a replica behind a compacted log fetching the records a snapshot names ([`crate::replica::CatchUpMessage`]) |
//! | 12 | `Membership` | partition `u32`, sender node `u32`, then 1 ask (node `u32`, nonce `u64`) or 2 answer (nonce `u64`, then 1 fresh, 2 running (leader `u64`, 0: none) or 3 member (replica id `u64`)) | a replica with nothing on disk asking its group how to start, and the answers ([`crate::replica::membership`]) |
//!
//! `Peers` carries the phase messages one partition's batch sends to one partition of the
//! receiver, in their order; the receiver hands them to that partition as one input. (The
//! receiver still checks each message's destination: it delivers each group of them to the
//! partition it is for, if that partition is its own, and drops the rest, as a lone phase
//! message was dropped.)
//!
//! # Fields
//! Ids, amounts, currencies, transfers, transfer keys and reasons are encoded exactly as in the
//! log codec. A bool is one byte, 0 or 1; an option is a byte 0 (none) or 1 followed by the
//! value; text is a `u8` length and at most [`ERROR_TEXT_LEN_MAX`] bytes of UTF-8 (longer text
//! is cut at a character boundary when encoded). Every enum is a tag byte from 1, then its
//! fields:
//!
//! - command: 1 open (account, currency), 2 deposit and 3 withdraw (account, amount, currency,
//!   transaction id), 4 transfer (transfer), 5 decide (key, decision), 6 finish debit (key),
//!   7 try, 8 confirm, 9 cancel, 10 abort credit (transfer), 11 abandon (transfer), 12 commit
//!   debit (key), 13 refund (refund id, original key, partition `u32`, option of amount). A decision is 1 confirm or 2 cancel and a
//!   reason, as in the log.
//! - command result: 0 ok and a reply, or 1 error and a ledger error.
//! - reply: 1 opened (created bool), 2 balance (`u64`), 3 transfer (status), 4 phase (phase
//!   result), 5 done. Status: 1 pending, 2 committed, 3 rejected and 4 cancelled (a reason).
//!   Phase result: 1 tried, 2 try failed (a reason), 3 confirmed, 4 cancelled,
//!   5 refused.
//! - ledger error: 1 account not found (account), 2 account exists (account, currency),
//!   3 currency mismatch (account, expected, got), 4 insufficient funds (available text,
//!   currency), 5 balance limit (account), 6 same account, 7 conflict (transaction id), 8 wrong
//!   partition (account, owner `u32`, here `u32`), 9 unknown transfer (key), 10 invalid
//!   transition (key, from text, command: 1 decide, 2 finish, 0 another), 11 unreadable
//!   (text), 12 not refundable (key). Every variant crosses
//!   the wire, so the node that serves the client maps it to the same HTTP status.
//! - query: 1 account (account), 2 transfer (key), 3 dry run (command), 4 refund of (key).
//!   Answer: 1 account (option of currency, balance, held, incoming as `u64`), 2 transfer
//!   (option of transfer, state, remote bool, accepted, decided and finished timestamps as
//!   `u64`), 3 unreadable (a 0 byte), 4 dry run (option of the
//!   transfer whose credit it rests on, command result),
//!   5 refund of (option of the original's transaction id). State: 1 trying, 2 confirming,
//!   3 cancelling (reason), 4 committed, 5 cancelled (reason), 6 rejected (reason).
//! - peer message: 1 request (from partition `u32`, phase, transfer), 2 response (phase, key,
//!   phase result), 3 unresolved (transfer: a destination asks its home about a pending
//!   credit). Phase: 1 try, 2 confirm, 3 cancel, 4 abort.
//!
//! A message ends where its fields end; the frame ends exactly after its `count`-th message.

use crate::log::crc::crc32c_of;

use crate::ledger::{
    Account, Command, DryRun, Hold, HoldEnd, HoldTerms, LedgerError, PhaseResult, Refund, Reply,
    TransactionTerms, TransferRow, TransferState, TransferStatus,
};
use crate::log::codec::{
    put_currency, put_key, put_transaction, put_transfer, reason_tag, Cursor,
    TRANSACTION_ENCODED_LEN_MAX,
};
use crate::model::event::Decision;
use crate::model::ids::ID_LEN_MAX;
use crate::model::money::{Amount, WrittenAmount};
use crate::model::partition::{NodeId, PartitionId};
use crate::protocol::coordinator::{Phase, PhaseRequest, PhaseResponse};
use crate::protocol::message::{
    CommandResult, PeerMessage, Query, QueryAnswer, PEER_MESSAGES_PER_INPUT_MAX,
};
use crate::protocol::tx_coordinator::{TxRequest, TxResponse};
use crate::replica::membership::{Answer as MemberAnswer, MembershipMessage};
use crate::replica::CatchUpMessage;
use crate::replica::RaftMessage;

/// The body version this build writes and the only one it reads. Version 3 carries phase
/// messages in `Peers` messages (tag 10) and no longer knows `Peer` (tag 7); its peer
/// messages know the Abort phase and the Unresolved question. Version 4: a destination
/// answers a Confirm only to refuse it (a committed transfer ends at its commit point), and
/// commands know `CommitDebit` (12). Version 5: `Raft` (tag 11) carries the messages of
/// replicated partitions' Raft groups, and frames may be as long as one of them needs.
/// Version 6: `Membership` (tag 12) and `CatchUp` (tag 13), and replica ids carry an
/// incarnation. Version 7: `Membership` knows `Check` and `Removed` (a replica leaving its
/// group). Version 8: commands know `Refund` (13), ledger errors `NotRefundable` (12),
/// queries `DryRun` (3) and `RefundOf` (4), answers `DryRun` (4) and `RefundOf` (5).
/// Version 9: holds: commands `Hold` (14), `Capture` (15), `Void` (16), `ExpireHold` (17),
/// statuses `Held` (5) and `Captured` (6), transfer states held (7) and captured (8), ledger
/// errors 13 to 17, query `HoldTerms` (5) and its answer (6), peer message `StillHeld` (4).
/// Version 10: ledger error `HoldBeingPlaced` (18); commands of multi-leg transactions
/// (`Transact` 18 to `DecideTransactionCancel` 23), phase result `LegFailed` (6), peer
/// messages `TxRequest` (5), `TxResponse` (6) and `TxUnresolved` (7), query `Transaction`
/// (6) and its answer (7), and a dry run's failed leg. Version 11: query `TransferBody` (7)
/// and its answer (8). Version 12: a `Capture` (15) carries its amount as the client wrote it
/// (digits and scale, finished at the hold's partition), reply `HoldEnd` (6) answers a
/// capture or void with the hold's terms, ledger error `InvalidAmount` (19). Version 13: a
/// transaction's Try leaves before its home's record is durable, so an `AbortTransaction`
/// (22), a `TxRequest` Abort and a `TxResponse` to a Try or an Abort carry the transaction,
/// `TxUnresolved` (7) carries it instead of its key, and commands know
/// `AbandonTransaction` (24).
pub const WIRE_VERSION: u8 = 13;
/// Bytes of the frame header: body length and checksum.
pub const FRAME_HEADER_LEN: usize = 8;
/// Bytes of the body before the messages: version, map version, count.
const BODY_PREFIX_LEN: usize = 1 + 8 + 2;
/// Smallest body: a heartbeat (no message).
pub const FRAME_BODY_LEN_MIN: usize = BODY_PREFIX_LEN;
/// Most messages in one frame. Bounds the work one frame asks of a receiver.
pub const FRAME_MESSAGES_MAX: usize = 1024;
/// Most bytes one encoded message other than `Peers` takes (the longest, an answer carrying a
/// transfer row, takes 243; see `message_lengths_are_bounded`).
pub const MESSAGE_ENCODED_LEN_MAX: usize = 256;
/// Fewest bytes one encoded message takes (`Refused`: a tag and a request id; a `Peers`
/// message takes at least 10). Caps what a frame's message count can make the decoder
/// preallocate.
const MESSAGE_LEN_MIN: usize = 1 + 8;
/// Most Raft messages one `Raft` message carries.
pub const RAFT_MESSAGES_MAX: usize = 256;
/// Most bytes one encoded `Raft` message takes. A Raft message carries whole log entries,
/// each one group commit of a partition; a replicated partition bounds its batches so that
/// a message of entries stays well within this (see `walletd_core::replica`).
pub const RAFT_ENCODED_LEN_MAX: usize = 8 << 20;
/// Bytes of a `Raft` message before its Raft messages: tag, partition, count.
const RAFT_PREFIX_LEN: usize = 1 + 4 + 2;
/// Largest body a frame fills with messages other than `Raft`: a full frame of the longest
/// messages other than `Peers`. A writer adds such a message only while the body stays
/// within it, so frames of client traffic and phase messages keep their size.
pub const FRAME_BODY_LEN_PLAIN_MAX: usize =
    BODY_PREFIX_LEN + FRAME_MESSAGES_MAX * MESSAGE_ENCODED_LEN_MAX;
/// Largest body a frame may declare: a `Raft` message may take a frame this far, so that
/// one of the longest fits in an empty frame.
pub const FRAME_BODY_LEN_MAX: usize = BODY_PREFIX_LEN + RAFT_ENCODED_LEN_MAX;
/// Most bytes one encoded peer message takes (a phase request carrying a transfer whose ids
/// are all at their length limit; see `peer_message_lengths_are_bounded`).
pub const PEER_MESSAGE_ENCODED_LEN_MAX: usize = 1 + 4 + 1 + 3 * (1 + ID_LEN_MAX) + 8 + 2;
/// Most bytes a peer message carrying a transaction takes: the answer to a Try, the longest
/// of them (tag, phase, key, partition, a phase result of up to 3 bytes, a presence byte and
/// the transaction as the log codec writes it, up to 64 legs); a Try, an Abort or a question
/// is shorter.
pub const TX_REQUEST_ENCODED_LEN_MAX: usize =
    1 + 1 + 2 * (1 + ID_LEN_MAX) + 4 + 3 + 1 + TRANSACTION_ENCODED_LEN_MAX;
/// Most bytes a `Request` message carrying a transaction takes: tag, request id, wait, the
/// command's tag, the transaction and a participant.
pub const TX_MESSAGE_ENCODED_LEN_MAX: usize = 1 + 8 + 1 + 1 + TRANSACTION_ENCODED_LEN_MAX + 4;
/// Fewest bytes one encoded peer message takes (a response: tag, phase, a key of two one-byte
/// ids, result). Caps what a `Peers` count can make the decoder preallocate.
const PEER_MESSAGE_LEN_MIN: usize = 1 + 1 + 2 * (1 + 1) + 1;
/// Bytes of a `Peers` message before its peer messages: tag and count.
const PEERS_PREFIX_LEN: usize = 1 + 2;
/// Most bytes one encoded `Peers` message takes: [`PEER_MESSAGES_PER_INPUT_MAX`] of the
/// longest peer messages.
pub const PEERS_ENCODED_LEN_MAX: usize =
    PEERS_PREFIX_LEN + PEER_MESSAGES_PER_INPUT_MAX * PEER_MESSAGE_ENCODED_LEN_MAX;
/// Most bytes one whole frame takes.
pub const FRAME_ENCODED_LEN_MAX: usize = FRAME_HEADER_LEN + FRAME_BODY_LEN_MAX;
/// Bytes of a handshake nonce.
pub const NONCE_LEN: usize = 16;
/// Bytes of a handshake MAC (HMAC-SHA256).
pub const MAC_LEN: usize = 32;
/// Longest text an error carries across the wire, in bytes.
pub const ERROR_TEXT_LEN_MAX: usize = 64;
const _: () = assert!(FRAME_MESSAGES_MAX <= u16::MAX as usize);
const _: () = assert!(PEER_MESSAGES_PER_INPUT_MAX <= u16::MAX as usize);
// Any `Peers` message fits in an empty frame, and none is shorter than the frame's
// preallocation bound assumes.
const _: () = assert!(BODY_PREFIX_LEN + PEERS_ENCODED_LEN_MAX <= FRAME_BODY_LEN_MAX);
const _: () =
    assert!(BODY_PREFIX_LEN + FRAME_MESSAGES_MAX * MESSAGE_ENCODED_LEN_MAX <= FRAME_BODY_LEN_MAX);
const _: () = assert!(PEERS_PREFIX_LEN + PEER_MESSAGE_LEN_MIN >= MESSAGE_LEN_MIN);
const _: () = assert!(FRAME_BODY_LEN_MAX <= u32::MAX as usize);
// A transaction's Try fits in a `Peers` message, and a request carrying one in a frame.
const _: () = assert!(TX_REQUEST_ENCODED_LEN_MAX <= PEERS_ENCODED_LEN_MAX - PEERS_PREFIX_LEN);
const _: () = assert!(BODY_PREFIX_LEN + TX_MESSAGE_ENCODED_LEN_MAX <= FRAME_BODY_LEN_PLAIN_MAX);
const _: () = assert!(ERROR_TEXT_LEN_MAX <= u8::MAX as usize && ID_LEN_MAX <= u8::MAX as usize);

/// Message tags; see the module docs. Never reuse or renumber one.
mod tag {
    pub const HELLO: u8 = 1;
    pub const AUTH: u8 = 2;
    pub const REQUEST: u8 = 3;
    pub const QUERY_REQUEST: u8 = 4;
    pub const REPLY: u8 = 5;
    pub const ANSWER: u8 = 6;
    // 7 was `Peer`, one peer message, up to wire version 2.
    pub const STALE_MAP: u8 = 8;
    pub const REFUSED: u8 = 9;
    pub const PEERS: u8 = 10;
    pub const RAFT: u8 = 11;
    pub const MEMBERSHIP: u8 = 12;
    pub const CATCH_UP: u8 = 13;
}

/// The commands an [`LedgerError::InvalidTransition`] can name, by their wire number (index + 1).
/// The ledger names its commands with static strings; the wire carries the number.
const TRANSITION_COMMANDS: [&str; 2] = ["decide", "finish"];
/// What a transition command the table does not know decodes as.
const TRANSITION_COMMAND_OTHER: &str = "command";

/// Correlates a request with its answer on one connection.
pub type RequestId = u64;

/// One message between nodes. Not `Eq`: raft-rs's messages are not.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Opens the handshake: who I am, which map I hold, and a fresh challenge for the other end.
    Hello {
        node: NodeId,
        map_version: u64,
        /// [`crate::model::partition::PartitionMap::digest`]: the map's content, so that
        /// two maps under one version are told apart.
        map_digest: u64,
        nonce: [u8; NONCE_LEN],
    },
    /// Proves knowledge of the cluster secret: the MAC of the other end's challenge.
    Auth { mac: [u8; MAC_LEN] },
    /// A client command for a partition the receiver owns.
    Request {
        id: RequestId,
        wait: bool,
        command: Command,
    },
    /// A read-only question for a partition the receiver owns.
    QueryRequest { id: RequestId, query: Query },
    /// The answer to [`Message::Request`] `id`.
    Reply {
        id: RequestId,
        result: CommandResult,
    },
    /// The answer to [`Message::QueryRequest`] `id`.
    Answer { id: RequestId, answer: QueryAnswer },
    /// TC/C phase messages for a partition the receiver owns, in the order they were sent
    /// (best effort, no answer): 1..=[`PEER_MESSAGES_PER_INPUT_MAX`] of them.
    Peers(Vec<PeerMessage>),
    /// The receiver holds map `expected`, the frame carried `got`: nothing in it was applied.
    StaleMap { expected: u64, got: u64 },
    /// Request `id` was not run (its partition is not here or is stopped); retry elsewhere or later.
    Refused { id: RequestId },
    /// Messages of partition `partition`'s Raft group for the receiver's replica, in the
    /// order sent (best effort, no answer): 1..=[`RAFT_MESSAGES_MAX`] of them.
    Raft {
        partition: PartitionId,
        messages: Vec<RaftMessage>,
    },
    /// A membership message of partition `partition`'s group, from node `from`'s replica
    /// (best effort, no answer of its own).
    Membership {
        partition: PartitionId,
        from: NodeId,
        message: MembershipMessage,
    },
    /// A catch-up message of partition `partition`'s group, from node `from`'s replica.
    CatchUp {
        partition: PartitionId,
        from: NodeId,
        message: CatchUpMessage,
    },
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub map_version: u64,
    pub messages: Vec<Message>,
}

/// Why bytes are not a frame. Any of these ends the connection that carried them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame body of {len} bytes is outside {FRAME_BODY_LEN_MIN}..={FRAME_BODY_LEN_MAX}")]
    Length { len: usize },
    #[error("frame checksum mismatch")]
    Checksum,
    #[error("frame has wire version {0}; this build speaks only version {WIRE_VERSION}")]
    Version(u8),
    #[error("frame declares {0} messages; at most {FRAME_MESSAGES_MAX} are allowed")]
    TooManyMessages(usize),
    #[error("malformed frame at message {index}: {reason}")]
    Malformed { index: usize, reason: String },
}

/// Appends one frame to a buffer, message by message. Every frame it finishes is within the
/// bounds a reader accepts: at most [`FRAME_MESSAGES_MAX`] messages in a body of at most
/// [`FRAME_BODY_LEN_MAX`] bytes.
///
/// While a frame holds no `Peers` message and is not full, any message other than `Peers`
/// fits (the body bound is a full frame of the longest of them); an empty frame has room
/// for any message. Beyond that, [`FrameWriter::try_push`] says whether one fits.
pub struct FrameWriter<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    count: usize,
}

impl<'a> FrameWriter<'a> {
    /// Starts a frame at the end of `out`.
    pub fn new(out: &'a mut Vec<u8>, map_version: u64) -> FrameWriter<'a> {
        let start = out.len();
        out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
        out.push(WIRE_VERSION);
        out.extend_from_slice(&map_version.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        FrameWriter {
            out,
            start,
            count: 0,
        }
    }

    /// Messages pushed so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether the frame holds [`FRAME_MESSAGES_MAX`] messages; pushing more is a bug.
    pub fn is_full(&self) -> bool {
        self.count == FRAME_MESSAGES_MAX
    }

    /// Bytes of the body so far.
    fn body_len(&self) -> usize {
        self.out.len() - self.start - FRAME_HEADER_LEN
    }

    /// Appends `message` if the frame has room for it: it is not full, and the body stays
    /// within [`FRAME_BODY_LEN_PLAIN_MAX`] ([`FRAME_BODY_LEN_MAX`] for a `Raft` message).
    /// Otherwise leaves the frame as it was and returns false; the message then starts the
    /// next frame.
    pub fn try_push(&mut self, message: &Message) -> bool {
        if self.is_full() {
            return false;
        }
        let before = self.out.len();
        encode_message(message, self.out);
        let len = self.out.len() - before;
        assert!(
            len <= encoded_len_max(message),
            "message of {len} bytes exceeds its bound"
        );
        let limit = match message {
            Message::Raft { .. } | Message::CatchUp { .. } => FRAME_BODY_LEN_MAX,
            _ => FRAME_BODY_LEN_PLAIN_MAX,
        };
        if self.body_len() > limit {
            self.out.truncate(before);
            return false;
        }
        self.count += 1;
        true
    }

    /// Appends `message`. Panics if the frame has no room for it (see the type's docs for
    /// when it has).
    pub fn push(&mut self, message: &Message) {
        assert!(
            !self.is_full(),
            "a frame holds at most {FRAME_MESSAGES_MAX} messages"
        );
        assert!(
            self.try_push(message),
            "a frame body holds at most {FRAME_BODY_LEN_MAX} bytes"
        );
    }

    /// Writes count, length and checksum. Returns the frame's length in bytes.
    pub fn finish(self) -> usize {
        let count_at = self.start + FRAME_HEADER_LEN + 1 + 8;
        let count = u16::try_from(self.count).expect("count is bounded");
        self.out[count_at..count_at + 2].copy_from_slice(&count.to_le_bytes());
        let body_len = self.body_len();
        assert!((FRAME_BODY_LEN_MIN..=FRAME_BODY_LEN_MAX).contains(&body_len));
        let len_bytes = u32::try_from(body_len)
            .expect("bodies are bounded")
            .to_le_bytes();
        let body = &self.out[self.start + FRAME_HEADER_LEN..];
        let crc = crc32c_of(&[&len_bytes, body]);
        self.out[self.start..self.start + 4].copy_from_slice(&len_bytes);
        self.out[self.start + 4..self.start + FRAME_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        self.out.len() - self.start
    }
}

/// Appends a frame of `messages` to `out` (at most [`FRAME_MESSAGES_MAX`], and within the
/// body bound: see [`FrameWriter`]).
pub fn encode_frame(map_version: u64, messages: &[Message], out: &mut Vec<u8>) -> usize {
    let mut writer = FrameWriter::new(out, map_version);
    for message in messages {
        writer.push(message);
    }
    writer.finish()
}

/// The body length a frame header declares, checked against the bounds before the body is read:
/// a reader that sizes its buffer by it allocates at most [`FRAME_BODY_LEN_MAX`] bytes.
pub fn frame_body_len(header: &[u8; FRAME_HEADER_LEN]) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    if !(FRAME_BODY_LEN_MIN..=FRAME_BODY_LEN_MAX).contains(&len) {
        return Err(WireError::Length { len });
    }
    Ok(len)
}

/// Checks and decodes the body that followed `header` (its length is `frame_body_len(header)`).
///
/// Any bytes give a frame or an error, never a panic. Allocation is bounded by the body,
/// not by what it declares: the message vector is preallocated for at most
/// `body.len() / 9` messages (the shortest message takes 9 bytes) and never more than
/// [`FRAME_MESSAGES_MAX`]; a `Peers` message's vector for at most its remaining bytes / 7
/// peer messages (the shortest takes 7) and never more than [`PEER_MESSAGES_PER_INPUT_MAX`],
/// its count checked first; and a message's text is at most [`ERROR_TEXT_LEN_MAX`] bytes. A
/// reader sizes its body buffer from [`frame_body_len`], so by at most [`FRAME_BODY_LEN_MAX`].
pub fn decode_frame_body(header: &[u8; FRAME_HEADER_LEN], body: &[u8]) -> Result<Frame, WireError> {
    let len = frame_body_len(header)?;
    if body.len() != len {
        return Err(WireError::Length { len: body.len() });
    }
    let stored = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if crc32c_of(&[&header[..4], body]) != stored {
        return Err(WireError::Checksum);
    }
    let mut cursor = Cursor::new(body);
    let prefix = |reason: String| WireError::Malformed { index: 0, reason };
    let version = cursor.u8().map_err(prefix)?;
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let map_version = cursor.u64().map_err(prefix)?;
    let count = usize::from(cursor.u16().map_err(prefix)?);
    if count > FRAME_MESSAGES_MAX {
        return Err(WireError::TooManyMessages(count));
    }
    // Sized by the bytes that are there, not by the count alone: a 19-byte frame declaring
    // the full count would otherwise reserve room for FRAME_MESSAGES_MAX messages.
    let mut messages = Vec::with_capacity(count.min(cursor.remaining() / MESSAGE_LEN_MIN));
    for index in 0..count {
        let message =
            decode_message(&mut cursor).map_err(|reason| WireError::Malformed { index, reason })?;
        messages.push(message);
    }
    cursor.finish().map_err(|reason| WireError::Malformed {
        index: count,
        reason,
    })?;
    Ok(Frame {
        map_version,
        messages,
    })
}

/// Decodes the frame at the start of `bytes`: `Ok(None)` when more bytes are needed, else the
/// frame and how many bytes it took.
pub fn decode_frame(bytes: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
    let Some(header) = bytes.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let header: &[u8; FRAME_HEADER_LEN] = header.try_into().expect("header length");
    let len = frame_body_len(header)?;
    let Some(body) = bytes.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
        return Ok(None);
    };
    let frame = decode_frame_body(header, body)?;
    Ok(Some((frame, FRAME_HEADER_LEN + len)))
}

fn encode_message(message: &Message, out: &mut Vec<u8>) {
    match message {
        Message::Hello {
            node,
            map_version,
            map_digest,
            nonce,
        } => {
            out.push(tag::HELLO);
            out.extend_from_slice(&node.to_le_bytes());
            out.extend_from_slice(&map_version.to_le_bytes());
            out.extend_from_slice(&map_digest.to_le_bytes());
            out.extend_from_slice(nonce);
        }
        Message::Auth { mac } => {
            out.push(tag::AUTH);
            out.extend_from_slice(mac);
        }
        Message::Request { id, wait, command } => {
            put_tagged_id(out, tag::REQUEST, *id);
            out.push(u8::from(*wait));
            put_command(out, command);
        }
        Message::QueryRequest { id, query } => {
            put_tagged_id(out, tag::QUERY_REQUEST, *id);
            put_query(out, query);
        }
        Message::Reply { id, result } => {
            put_tagged_id(out, tag::REPLY, *id);
            put_result(out, result);
        }
        Message::Answer { id, answer } => {
            put_tagged_id(out, tag::ANSWER, *id);
            put_answer(out, answer);
        }
        Message::Peers(peers) => {
            out.push(tag::PEERS);
            put_peers(out, peers);
        }
        Message::StaleMap { expected, got } => {
            out.push(tag::STALE_MAP);
            out.extend_from_slice(&expected.to_le_bytes());
            out.extend_from_slice(&got.to_le_bytes());
        }
        Message::Refused { id } => put_tagged_id(out, tag::REFUSED, *id),
        Message::Raft {
            partition,
            messages,
        } => put_raft(out, *partition, messages),
        Message::Membership {
            partition,
            from,
            message,
        } => put_membership(out, *partition, *from, message),
        Message::CatchUp {
            partition,
            from,
            message,
        } => put_catch_up(out, *partition, *from, message),
    }
}

fn decode_message(cursor: &mut Cursor<'_>) -> Result<Message, String> {
    Ok(match cursor.u8()? {
        tag::HELLO => Message::Hello {
            node: get_u32(cursor)?,
            map_version: cursor.u64()?,
            map_digest: cursor.u64()?,
            nonce: cursor.take(NONCE_LEN)?.try_into().expect("nonce length"),
        },
        tag::AUTH => Message::Auth {
            mac: cursor.take(MAC_LEN)?.try_into().expect("mac length"),
        },
        tag::REQUEST => Message::Request {
            id: cursor.u64()?,
            wait: get_bool(cursor)?,
            command: get_command(cursor)?,
        },
        tag::QUERY_REQUEST => Message::QueryRequest {
            id: cursor.u64()?,
            query: get_query(cursor)?,
        },
        tag::REPLY => Message::Reply {
            id: cursor.u64()?,
            result: get_result(cursor)?,
        },
        tag::ANSWER => Message::Answer {
            id: cursor.u64()?,
            answer: get_answer(cursor)?,
        },
        tag::PEERS => Message::Peers(get_peers(cursor)?),
        tag::STALE_MAP => Message::StaleMap {
            expected: cursor.u64()?,
            got: cursor.u64()?,
        },
        tag::REFUSED => Message::Refused { id: cursor.u64()? },
        tag::RAFT => get_raft(cursor)?,
        tag::MEMBERSHIP => get_membership(cursor)?,
        tag::CATCH_UP => get_catch_up(cursor)?,
        other => return Err(format!("unknown message tag {other}")),
    })
}

/// The most bytes `message` can encode to: what a frame must have room for.
fn encoded_len_max(message: &Message) -> usize {
    match message {
        Message::Peers(peers) => {
            PEERS_PREFIX_LEN + peers.iter().map(peer_encoded_len_max).sum::<usize>()
        }
        Message::Request {
            command:
                Command::Transact(_)
                | Command::TryTransaction { .. }
                | Command::AbortTransaction { .. }
                | Command::AbandonTransaction(_),
            ..
        }
        | Message::QueryRequest {
            query:
                Query::DryRun(
                    Command::Transact(_)
                    | Command::TryTransaction { .. }
                    | Command::AbortTransaction { .. }
                    | Command::AbandonTransaction(_),
                ),
            ..
        }
        | Message::Answer {
            answer: QueryAnswer::Transaction(Some(_)),
            ..
        } => TX_MESSAGE_ENCODED_LEN_MAX,
        Message::Raft { .. } | Message::CatchUp { .. } => RAFT_ENCODED_LEN_MAX,
        _ => MESSAGE_ENCODED_LEN_MAX,
    }
}

fn put_tagged_id(out: &mut Vec<u8>, tag: u8, id: RequestId) {
    out.push(tag);
    out.extend_from_slice(&id.to_le_bytes());
}

fn get_u32(cursor: &mut Cursor<'_>) -> Result<u32, String> {
    Ok(u32::from_le_bytes(
        cursor.take(4)?.try_into().expect("4 bytes"),
    ))
}

fn get_bool(cursor: &mut Cursor<'_>) -> Result<bool, String> {
    cursor.bool()
}

/// Text of at most [`ERROR_TEXT_LEN_MAX`] bytes, cut at a character boundary if longer.
fn put_text(out: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(ERROR_TEXT_LEN_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&text.as_bytes()[..end]);
}

fn get_text(cursor: &mut Cursor<'_>) -> Result<String, String> {
    let len = usize::from(cursor.u8()?);
    if len > ERROR_TEXT_LEN_MAX {
        return Err(format!(
            "text of {len} bytes is longer than {ERROR_TEXT_LEN_MAX}"
        ));
    }
    let bytes = cursor.take(len)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| "text is not UTF-8".to_string())
}

fn put_decision(out: &mut Vec<u8>, decision: Decision) {
    match decision {
        Decision::Confirm => out.push(1),
        Decision::Cancel(reason) => out.extend_from_slice(&[2, reason_tag(reason)]),
    }
}

fn get_decision(cursor: &mut Cursor<'_>) -> Result<Decision, String> {
    match cursor.u8()? {
        1 => Ok(Decision::Confirm),
        2 => Ok(Decision::Cancel(cursor.reason()?)),
        other => Err(format!("unknown decision {other}")),
    }
}

fn put_command(out: &mut Vec<u8>, command: &Command) {
    match *command {
        Command::OpenAccount { account, currency } => {
            out.push(1);
            account.encode_into(out);
            put_currency(out, currency);
        }
        Command::Deposit {
            account,
            amount,
            currency,
            transaction_id,
        }
        | Command::Withdraw {
            account,
            amount,
            currency,
            transaction_id,
        } => {
            out.push(if matches!(command, Command::Deposit { .. }) {
                2
            } else {
                3
            });
            account.encode_into(out);
            out.extend_from_slice(&amount.minor().to_le_bytes());
            put_currency(out, currency);
            transaction_id.encode_into(out);
        }
        Command::Transfer(transfer) => put_tagged_transfer(out, 4, &transfer),
        Command::Decide { key, decision } => {
            out.push(5);
            put_key(out, &key);
            put_decision(out, decision);
        }
        Command::FinishDebit { key } => {
            out.push(6);
            put_key(out, &key);
        }
        Command::TryCredit(transfer) => put_tagged_transfer(out, 7, &transfer),
        Command::ConfirmCredit(transfer) => put_tagged_transfer(out, 8, &transfer),
        Command::CancelCredit(transfer) => put_tagged_transfer(out, 9, &transfer),
        Command::AbortCredit(transfer) => put_tagged_transfer(out, 10, &transfer),
        Command::Abandon(transfer) => put_tagged_transfer(out, 11, &transfer),
        Command::CommitDebit { key } => {
            out.push(12);
            put_key(out, &key);
        }
        Command::Refund(refund) => {
            out.push(13);
            refund.refund_id.encode_into(out);
            put_key(out, &refund.original);
            out.extend_from_slice(&refund.partition.to_le_bytes());
            put_optional_amount(out, refund.amount);
        }
        Command::Hold(ref hold) => {
            put_tagged_transfer(out, 14, &hold.transfer);
            out.extend_from_slice(&hold.expires_in_us.to_le_bytes());
        }
        Command::Capture { key, amount } => {
            out.push(15);
            put_key(out, &key);
            match amount {
                None => out.push(0),
                Some(written) => {
                    out.push(1);
                    out.extend_from_slice(&written.digits().to_le_bytes());
                    out.push(written.scale());
                }
            }
        }
        Command::Void { key } => {
            out.push(16);
            put_key(out, &key);
        }
        Command::ExpireHold { key } => {
            out.push(17);
            put_key(out, &key);
        }
        Command::Transact(ref tx) => {
            out.push(18);
            put_transaction(out, tx);
        }
        Command::TryTransaction { ref tx, partition } => {
            out.push(19);
            put_transaction(out, tx);
            out.extend_from_slice(&partition.to_le_bytes());
        }
        Command::ConfirmTransaction { key, partition } => {
            put_key_partition(out, 20, &key, partition)
        }
        Command::CancelTransaction { key, partition } => {
            put_key_partition(out, 21, &key, partition)
        }
        Command::AbortTransaction { ref tx, partition } => {
            out.push(22);
            put_transaction(out, tx);
            out.extend_from_slice(&partition.to_le_bytes());
        }
        Command::AbandonTransaction(ref tx) => {
            out.push(24);
            put_transaction(out, tx);
        }
        Command::DecideTransactionCancel {
            key,
            failed_leg,
            reason,
        } => {
            out.push(23);
            put_key(out, &key);
            match failed_leg {
                Some(leg) => out.extend_from_slice(&[1, leg]),
                None => out.push(0),
            }
            out.push(reason_tag(reason));
        }
    }
}

fn put_key_partition(
    out: &mut Vec<u8>,
    tag: u8,
    key: &crate::model::event::TransferKey,
    partition: PartitionId,
) {
    out.push(tag);
    put_key(out, key);
    out.extend_from_slice(&partition.to_le_bytes());
}

fn put_optional_amount(out: &mut Vec<u8>, amount: Option<Amount>) {
    match amount {
        None => out.push(0),
        Some(amount) => {
            out.push(1);
            out.extend_from_slice(&amount.minor().to_le_bytes());
        }
    }
}

fn get_optional_amount(cursor: &mut Cursor<'_>) -> Result<Option<Amount>, String> {
    Ok(match get_bool(cursor)? {
        false => None,
        true => Some(cursor.amount()?),
    })
}

fn put_tagged_transfer(out: &mut Vec<u8>, tag: u8, transfer: &crate::model::event::Transfer) {
    out.push(tag);
    put_transfer(out, transfer);
}

fn get_command(cursor: &mut Cursor<'_>) -> Result<Command, String> {
    Ok(match cursor.u8()? {
        1 => Command::OpenAccount {
            account: cursor.account()?,
            currency: cursor.currency()?,
        },
        2 => Command::Deposit {
            account: cursor.account()?,
            amount: cursor.amount()?,
            currency: cursor.currency()?,
            transaction_id: cursor.transaction_id()?,
        },
        3 => Command::Withdraw {
            account: cursor.account()?,
            amount: cursor.amount()?,
            currency: cursor.currency()?,
            transaction_id: cursor.transaction_id()?,
        },
        4 => Command::Transfer(cursor.transfer()?),
        5 => Command::Decide {
            key: cursor.key()?,
            decision: get_decision(cursor)?,
        },
        6 => Command::FinishDebit { key: cursor.key()? },
        7 => Command::TryCredit(cursor.transfer()?),
        8 => Command::ConfirmCredit(cursor.transfer()?),
        9 => Command::CancelCredit(cursor.transfer()?),
        10 => Command::AbortCredit(cursor.transfer()?),
        11 => Command::Abandon(cursor.transfer()?),
        12 => Command::CommitDebit { key: cursor.key()? },
        13 => Command::Refund(Refund {
            refund_id: cursor.transaction_id()?,
            original: cursor.key()?,
            partition: get_u32(cursor)?,
            amount: get_optional_amount(cursor)?,
        }),
        14 => Command::Hold(Box::new(Hold {
            transfer: cursor.transfer()?,
            expires_in_us: cursor.u64()?,
        })),
        15 => Command::Capture {
            key: cursor.key()?,
            amount: match get_bool(cursor)? {
                false => None,
                true => Some(WrittenAmount::from_parts(cursor.u128()?, cursor.u8()?)),
            },
        },
        16 => Command::Void { key: cursor.key()? },
        17 => Command::ExpireHold { key: cursor.key()? },
        18 => Command::Transact(cursor.transaction()?),
        19 => Command::TryTransaction {
            tx: cursor.transaction()?,
            partition: get_u32(cursor)?,
        },
        20 => Command::ConfirmTransaction {
            key: cursor.key()?,
            partition: get_u32(cursor)?,
        },
        21 => Command::CancelTransaction {
            key: cursor.key()?,
            partition: get_u32(cursor)?,
        },
        22 => Command::AbortTransaction {
            tx: cursor.transaction()?,
            partition: get_u32(cursor)?,
        },
        23 => Command::DecideTransactionCancel {
            key: cursor.key()?,
            failed_leg: match cursor.u8()? {
                0 => None,
                1 => Some(cursor.u8()?),
                other => return Err(format!("unknown failed-leg presence {other}")),
            },
            reason: cursor.reason()?,
        },
        24 => Command::AbandonTransaction(cursor.transaction()?),
        other => return Err(format!("unknown command {other}")),
    })
}

fn put_query(out: &mut Vec<u8>, query: &Query) {
    match query {
        Query::Account(account) => {
            out.push(1);
            account.encode_into(out);
        }
        Query::Transfer(key) => {
            out.push(2);
            put_key(out, key);
        }
        Query::DryRun(command) => {
            out.push(3);
            put_command(out, command);
        }
        Query::RefundOf(key) => {
            out.push(4);
            put_key(out, key);
        }
        Query::HoldTerms(key) => {
            out.push(5);
            put_key(out, key);
        }
        Query::Transaction(key) => {
            out.push(6);
            put_key(out, key);
        }
        Query::TransferBody(key) => {
            out.push(7);
            put_key(out, key);
        }
    }
}

fn get_query(cursor: &mut Cursor<'_>) -> Result<Query, String> {
    match cursor.u8()? {
        1 => Ok(Query::Account(cursor.account()?)),
        2 => Ok(Query::Transfer(cursor.key()?)),
        3 => Ok(Query::DryRun(get_command(cursor)?)),
        4 => Ok(Query::RefundOf(cursor.key()?)),
        5 => Ok(Query::HoldTerms(cursor.key()?)),
        6 => Ok(Query::Transaction(cursor.key()?)),
        7 => Ok(Query::TransferBody(cursor.key()?)),
        other => Err(format!("unknown query {other}")),
    }
}

fn put_result(out: &mut Vec<u8>, result: &CommandResult) {
    match result {
        Ok(reply) => {
            out.push(0);
            put_reply(out, reply);
        }
        Err(error) => {
            out.push(1);
            put_ledger_error(out, error);
        }
    }
}

fn get_result(cursor: &mut Cursor<'_>) -> Result<CommandResult, String> {
    match cursor.u8()? {
        0 => Ok(Ok(get_reply(cursor)?)),
        1 => Ok(Err(get_ledger_error(cursor)?)),
        other => Err(format!("unknown result {other}")),
    }
}

fn put_reply(out: &mut Vec<u8>, reply: &Reply) {
    match *reply {
        Reply::Opened { created } => out.extend_from_slice(&[1, u8::from(created)]),
        Reply::Balance { balance } => {
            out.push(2);
            out.extend_from_slice(&balance.to_le_bytes());
        }
        Reply::Transfer(status) => {
            out.push(3);
            put_status(out, status);
        }
        Reply::Phase(result) => {
            out.push(4);
            put_phase_result(out, result);
        }
        Reply::Done => out.push(5),
        Reply::HoldEnd(end) => {
            out.push(6);
            put_status(out, end.status);
            end.to.encode_into(out);
            out.extend_from_slice(&end.amount.minor().to_le_bytes());
            put_currency(out, end.currency);
            put_optional_amount(out, end.captured);
        }
    }
}

fn get_reply(cursor: &mut Cursor<'_>) -> Result<Reply, String> {
    Ok(match cursor.u8()? {
        1 => Reply::Opened {
            created: get_bool(cursor)?,
        },
        2 => Reply::Balance {
            balance: cursor.u64()?,
        },
        3 => Reply::Transfer(get_status(cursor)?),
        4 => Reply::Phase(get_phase_result(cursor)?),
        5 => Reply::Done,
        6 => Reply::HoldEnd(HoldEnd {
            status: get_status(cursor)?,
            to: cursor.account()?,
            amount: cursor.amount()?,
            currency: cursor.currency()?,
            captured: get_optional_amount(cursor)?,
        }),
        other => return Err(format!("unknown reply {other}")),
    })
}

fn put_status(out: &mut Vec<u8>, status: TransferStatus) {
    match status {
        TransferStatus::Pending => out.push(1),
        TransferStatus::Committed => out.push(2),
        TransferStatus::Rejected(reason) => out.extend_from_slice(&[3, reason_tag(reason)]),
        TransferStatus::Cancelled(reason) => out.extend_from_slice(&[4, reason_tag(reason)]),
        TransferStatus::Held => out.push(5),
        TransferStatus::Captured => out.push(6),
    }
}

fn get_status(cursor: &mut Cursor<'_>) -> Result<TransferStatus, String> {
    Ok(match cursor.u8()? {
        1 => TransferStatus::Pending,
        2 => TransferStatus::Committed,
        3 => TransferStatus::Rejected(cursor.reason()?),
        4 => TransferStatus::Cancelled(cursor.reason()?),
        5 => TransferStatus::Held,
        6 => TransferStatus::Captured,
        other => return Err(format!("unknown transfer status {other}")),
    })
}

fn put_phase_result(out: &mut Vec<u8>, result: PhaseResult) {
    match result {
        PhaseResult::Tried => out.push(1),
        PhaseResult::TryFailed(reason) => out.extend_from_slice(&[2, reason_tag(reason)]),
        PhaseResult::Confirmed => out.push(3),
        PhaseResult::Cancelled => out.push(4),
        PhaseResult::Refused => out.push(5),
        PhaseResult::LegFailed { leg, reason } => {
            out.extend_from_slice(&[6, leg, reason_tag(reason)])
        }
    }
}

fn get_phase_result(cursor: &mut Cursor<'_>) -> Result<PhaseResult, String> {
    Ok(match cursor.u8()? {
        1 => PhaseResult::Tried,
        2 => PhaseResult::TryFailed(cursor.reason()?),
        3 => PhaseResult::Confirmed,
        4 => PhaseResult::Cancelled,
        5 => PhaseResult::Refused,
        6 => PhaseResult::LegFailed {
            leg: cursor.u8()?,
            reason: cursor.reason()?,
        },
        other => return Err(format!("unknown phase result {other}")),
    })
}

fn put_ledger_error(out: &mut Vec<u8>, error: &LedgerError) {
    match error {
        LedgerError::AccountNotFound(account) => {
            out.push(1);
            account.encode_into(out);
        }
        LedgerError::AccountExists { account, existing } => {
            out.push(2);
            account.encode_into(out);
            put_currency(out, *existing);
        }
        LedgerError::CurrencyMismatch {
            account,
            expected,
            got,
        } => {
            out.push(3);
            account.encode_into(out);
            put_currency(out, *expected);
            put_currency(out, *got);
        }
        LedgerError::InsufficientFunds {
            available,
            currency,
        } => {
            out.push(4);
            put_text(out, available);
            put_currency(out, *currency);
        }
        LedgerError::BalanceLimit(account) => {
            out.push(5);
            account.encode_into(out);
        }
        LedgerError::SameAccount => out.push(6),
        LedgerError::Conflict(transaction_id) => {
            out.push(7);
            transaction_id.encode_into(out);
        }
        LedgerError::WrongPartition {
            account,
            owner,
            here,
        } => {
            out.push(8);
            account.encode_into(out);
            out.extend_from_slice(&owner.to_le_bytes());
            out.extend_from_slice(&here.to_le_bytes());
        }
        LedgerError::UnknownTransfer(key) => {
            out.push(9);
            put_key(out, key);
        }
        LedgerError::Unreadable(what) => {
            out.push(11);
            put_text(out, what);
        }
        LedgerError::NotRefundable(key) => {
            out.push(12);
            put_key(out, key);
        }
        LedgerError::NotAHold(key) => {
            out.push(13);
            put_key(out, key);
        }
        LedgerError::HoldNotHeld(key) => {
            out.push(14);
            put_key(out, key);
        }
        LedgerError::CaptureExceedsHold { key, held } => {
            out.push(15);
            put_key(out, key);
            put_text(out, held);
        }
        LedgerError::HoldAlreadyCaptured { key, captured } => {
            out.push(16);
            put_key(out, key);
            put_text(out, captured);
        }
        LedgerError::HoldBeingPlaced(key) => {
            out.push(18);
            put_key(out, key);
        }
        LedgerError::InvalidAmount(message) => {
            out.push(19);
            put_text(out, message);
        }
        LedgerError::HoldLimit(limit) => {
            out.push(17);
            out.extend_from_slice(&(*limit as u64).to_le_bytes());
        }
        LedgerError::InvalidTransition { key, from, command } => {
            out.push(10);
            put_key(out, key);
            put_text(out, from);
            let number = TRANSITION_COMMANDS
                .iter()
                .position(|known| known == command)
                .map_or(0, |index| index as u8 + 1);
            out.push(number);
        }
    }
}

fn get_ledger_error(cursor: &mut Cursor<'_>) -> Result<LedgerError, String> {
    Ok(match cursor.u8()? {
        1 => LedgerError::AccountNotFound(cursor.account()?),
        2 => LedgerError::AccountExists {
            account: cursor.account()?,
            existing: cursor.currency()?,
        },
        3 => LedgerError::CurrencyMismatch {
            account: cursor.account()?,
            expected: cursor.currency()?,
            got: cursor.currency()?,
        },
        4 => LedgerError::InsufficientFunds {
            available: get_text(cursor)?,
            currency: cursor.currency()?,
        },
        5 => LedgerError::BalanceLimit(cursor.account()?),
        6 => LedgerError::SameAccount,
        7 => LedgerError::Conflict(cursor.transaction_id()?),
        8 => LedgerError::WrongPartition {
            account: cursor.account()?,
            owner: get_u32(cursor)?,
            here: get_u32(cursor)?,
        },
        9 => LedgerError::UnknownTransfer(cursor.key()?),
        10 => LedgerError::InvalidTransition {
            key: cursor.key()?,
            from: get_text(cursor)?,
            command: match cursor.u8()? {
                0 => TRANSITION_COMMAND_OTHER,
                n => TRANSITION_COMMANDS
                    .get(usize::from(n) - 1)
                    .ok_or_else(|| format!("unknown transition command {n}"))?,
            },
        },
        11 => LedgerError::Unreadable(get_text(cursor)?),
        12 => LedgerError::NotRefundable(cursor.key()?),
        13 => LedgerError::NotAHold(cursor.key()?),
        14 => LedgerError::HoldNotHeld(cursor.key()?),
        15 => LedgerError::CaptureExceedsHold {
            key: cursor.key()?,
            held: get_text(cursor)?,
        },
        16 => LedgerError::HoldAlreadyCaptured {
            key: cursor.key()?,
            captured: get_text(cursor)?,
        },
        17 => LedgerError::HoldLimit(
            usize::try_from(cursor.u64()?).map_err(|_| "hold limit beyond usize".to_string())?,
        ),
        18 => LedgerError::HoldBeingPlaced(cursor.key()?),
        19 => LedgerError::InvalidAmount(get_text(cursor)?),
        other => return Err(format!("unknown ledger error {other}")),
    })
}

fn put_answer(out: &mut Vec<u8>, answer: &QueryAnswer) {
    match answer {
        QueryAnswer::Account(account) => {
            out.push(1);
            match account {
                None => out.push(0),
                Some(account) => {
                    out.push(1);
                    put_account(out, account);
                }
            }
        }
        QueryAnswer::Transfer(row) => {
            out.push(2);
            match row {
                None => out.push(0),
                Some(row) => {
                    out.push(1);
                    put_row(out, row);
                }
            }
        }
        QueryAnswer::Unreadable => {
            out.push(3);
            out.push(0);
        }
        QueryAnswer::DryRun(dry) => {
            out.push(4);
            out.push(u8::from(dry.credit.is_some()));
            if let Some(credit) = &dry.credit {
                put_transfer(out, credit);
            }
            put_result(out, &dry.result);
            match dry.failed_leg {
                Some(leg) => out.extend_from_slice(&[1, leg]),
                None => out.push(0),
            }
        }
        QueryAnswer::RefundOf(original) => {
            out.push(5);
            out.push(u8::from(original.is_some()));
            if let Some(original) = original {
                original.encode_into(out);
            }
        }
        QueryAnswer::HoldTerms(terms) => {
            out.push(6);
            out.push(u8::from(terms.is_some()));
            if let Some(terms) = terms {
                out.extend_from_slice(&terms.expires_at.to_le_bytes());
                put_optional_amount(out, terms.captured);
            }
        }
        QueryAnswer::Transaction(terms) => {
            out.push(7);
            out.push(u8::from(terms.is_some()));
            if let Some(terms) = terms {
                put_transaction(out, &terms.tx);
                match terms.failed_leg {
                    Some(leg) => out.extend_from_slice(&[1, leg]),
                    None => out.push(0),
                }
            }
        }
        QueryAnswer::TransferBody(body) => {
            out.push(8);
            out.push(u8::from(body.is_some()));
            if let Some(body) = body {
                put_transfer(out, body);
            }
        }
    }
}

/// An optional leg index as the answers write it: 0, or 1 and the index.
fn get_optional_leg(cursor: &mut Cursor<'_>) -> Result<Option<u8>, String> {
    Ok(match get_bool(cursor)? {
        true => Some(cursor.u8()?),
        false => None,
    })
}

fn get_answer(cursor: &mut Cursor<'_>) -> Result<QueryAnswer, String> {
    let kind = cursor.u8()?;
    let present = get_bool(cursor)?;
    Ok(match kind {
        1 => QueryAnswer::Account(present.then(|| get_account(cursor)).transpose()?),
        2 => QueryAnswer::Transfer(present.then(|| get_row(cursor)).transpose()?),
        3 if !present => QueryAnswer::Unreadable,
        // For a dry run, the flag byte says whether the credit's transfer follows.
        4 => QueryAnswer::DryRun(DryRun {
            credit: present.then(|| cursor.transfer()).transpose()?,
            result: get_result(cursor)?,
            failed_leg: get_optional_leg(cursor)?,
        }),
        5 => QueryAnswer::RefundOf(present.then(|| cursor.transaction_id()).transpose()?),
        6 => QueryAnswer::HoldTerms(
            present
                .then(|| {
                    Ok::<_, String>(HoldTerms {
                        expires_at: cursor.u64()?,
                        captured: get_optional_amount(cursor)?,
                    })
                })
                .transpose()?,
        ),
        7 => QueryAnswer::Transaction(
            present
                .then(|| {
                    Ok::<_, String>(TransactionTerms {
                        tx: cursor.transaction()?,
                        failed_leg: get_optional_leg(cursor)?,
                    })
                })
                .transpose()?,
        ),
        8 => QueryAnswer::TransferBody(present.then(|| cursor.transfer()).transpose()?),
        other => return Err(format!("unknown answer {other}")),
    })
}

fn put_account(out: &mut Vec<u8>, account: &Account) {
    put_currency(out, account.currency);
    for value in [account.balance, account.held, account.incoming] {
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn get_account(cursor: &mut Cursor<'_>) -> Result<Account, String> {
    Ok(Account {
        currency: cursor.currency()?,
        balance: cursor.u64()?,
        held: cursor.u64()?,
        incoming: cursor.u64()?,
    })
}

fn put_row(out: &mut Vec<u8>, row: &TransferRow) {
    put_transfer(out, &row.transfer);
    match row.state {
        TransferState::Trying => out.push(1),
        TransferState::Confirming => out.push(2),
        TransferState::Cancelling(reason) => out.extend_from_slice(&[3, reason_tag(reason)]),
        TransferState::Committed => out.push(4),
        TransferState::Cancelled(reason) => out.extend_from_slice(&[5, reason_tag(reason)]),
        TransferState::Rejected(reason) => out.extend_from_slice(&[6, reason_tag(reason)]),
        TransferState::Held => out.push(7),
        TransferState::Captured => out.push(8),
    }
    out.push(u8::from(row.remote));
    for at in [row.accepted_at, row.decided_at, row.finished_at] {
        out.extend_from_slice(&at.to_le_bytes());
    }
}

fn get_row(cursor: &mut Cursor<'_>) -> Result<TransferRow, String> {
    let transfer = cursor.transfer()?;
    let state = cursor.transfer_state()?;
    Ok(TransferRow {
        transfer,
        state,
        remote: get_bool(cursor)?,
        accepted_at: cursor.u64()?,
        decided_at: cursor.u64()?,
        finished_at: cursor.u64()?,
    })
}

fn phase_tag(phase: Phase) -> u8 {
    match phase {
        Phase::Try => 1,
        Phase::Confirm => 2,
        Phase::Cancel => 3,
        Phase::Abort => 4,
    }
}

fn get_phase(cursor: &mut Cursor<'_>) -> Result<Phase, String> {
    match cursor.u8()? {
        1 => Ok(Phase::Try),
        2 => Ok(Phase::Confirm),
        3 => Ok(Phase::Cancel),
        4 => Ok(Phase::Abort),
        other => Err(format!("unknown phase {other}")),
    }
}

fn put_peer(out: &mut Vec<u8>, peer: &PeerMessage) {
    match peer {
        PeerMessage::Request { from, request } => {
            out.push(1);
            out.extend_from_slice(&from.to_le_bytes());
            out.push(phase_tag(request.phase));
            put_transfer(out, &request.transfer);
        }
        PeerMessage::Response(response) => {
            out.push(2);
            out.push(phase_tag(response.phase));
            put_key(out, &response.key);
            put_phase_result(out, response.result);
        }
        PeerMessage::Unresolved { transfer } => {
            out.push(3);
            put_transfer(out, transfer);
        }
        PeerMessage::StillHeld {
            key,
            partition,
            for_us,
        } => {
            out.push(4);
            put_key(out, key);
            out.extend_from_slice(&partition.to_le_bytes());
            out.extend_from_slice(&for_us.to_le_bytes());
        }
        PeerMessage::TxRequest(request) => {
            out.push(5);
            out.push(phase_tag(request.phase));
            put_key(out, &request.key);
            out.extend_from_slice(&request.partition.to_le_bytes());
            match &request.tx {
                Some(tx) => {
                    out.push(1);
                    put_transaction(out, tx);
                }
                None => out.push(0),
            }
        }
        PeerMessage::TxResponse(response) => {
            out.push(6);
            out.push(phase_tag(response.phase));
            put_key(out, &response.key);
            out.extend_from_slice(&response.partition.to_le_bytes());
            put_phase_result(out, response.result);
            match &response.tx {
                Some(tx) => {
                    out.push(1);
                    put_transaction(out, tx);
                }
                None => out.push(0),
            }
        }
        PeerMessage::TxUnresolved { tx, partition } => {
            out.push(7);
            put_transaction(out, tx);
            out.extend_from_slice(&partition.to_le_bytes());
        }
    }
}

/// The most bytes `peer` can encode to: [`PEER_MESSAGE_ENCODED_LEN_MAX`], or for a
/// transaction's Try, Abort or question, which carry its legs, [`TX_REQUEST_ENCODED_LEN_MAX`].
pub fn peer_encoded_len_max(peer: &PeerMessage) -> usize {
    match peer {
        PeerMessage::TxRequest(TxRequest { tx: Some(_), .. })
        | PeerMessage::TxResponse(TxResponse { tx: Some(_), .. })
        | PeerMessage::TxUnresolved { .. } => TX_REQUEST_ENCODED_LEN_MAX,
        _ => PEER_MESSAGE_ENCODED_LEN_MAX,
    }
}

/// `group` (peer messages to one partition, in order) in pieces that each travel as one
/// `Peers` message: at most [`PEER_MESSAGES_PER_INPUT_MAX`] messages, and at most
/// [`PEERS_ENCODED_LEN_MAX`] bytes however long each is (a transaction's Try carries up to
/// 64 legs, forty times a transfer's message).
pub fn peer_groups(group: Vec<PeerMessage>) -> Vec<Vec<PeerMessage>> {
    assert!(!group.is_empty(), "a group holds at least one message");
    let budget = PEERS_ENCODED_LEN_MAX - PEERS_PREFIX_LEN;
    let mut pieces = Vec::new();
    let mut piece = Vec::new();
    let mut weight = 0;
    for peer in group {
        let len = peer_encoded_len_max(&peer);
        if piece.len() == PEER_MESSAGES_PER_INPUT_MAX || weight + len > budget {
            pieces.push(std::mem::take(&mut piece));
            weight = 0;
        }
        weight += len;
        piece.push(peer);
    }
    pieces.push(piece);
    pieces
}

/// A count, then the peer messages. An empty or oversized group is a bug of the sender.
fn put_peers(out: &mut Vec<u8>, peers: &[PeerMessage]) {
    assert!(
        (1..=PEER_MESSAGES_PER_INPUT_MAX).contains(&peers.len()),
        "a Peers message holds 1..={PEER_MESSAGES_PER_INPUT_MAX} peer messages, not {}",
        peers.len()
    );
    let count = u16::try_from(peers.len()).expect("the count is bounded");
    out.extend_from_slice(&count.to_le_bytes());
    for peer in peers {
        put_peer(out, peer);
    }
}

/// The count is checked before anything is allocated, and the vector is sized by the bytes
/// that are there: a `Peers` message declaring the full count in a few bytes reserves room
/// for a few peer messages, not for [`PEER_MESSAGES_PER_INPUT_MAX`].
fn get_peers(cursor: &mut Cursor<'_>) -> Result<Vec<PeerMessage>, String> {
    let count = usize::from(cursor.u16()?);
    if !(1..=PEER_MESSAGES_PER_INPUT_MAX).contains(&count) {
        return Err(format!(
            "a Peers message holds 1..={PEER_MESSAGES_PER_INPUT_MAX} peer messages, not {count}"
        ));
    }
    let mut peers = Vec::with_capacity(count.min(cursor.remaining() / PEER_MESSAGE_LEN_MIN));
    for _ in 0..count {
        peers.push(get_peer(cursor)?);
    }
    Ok(peers)
}

fn get_peer(cursor: &mut Cursor<'_>) -> Result<PeerMessage, String> {
    Ok(match cursor.u8()? {
        1 => PeerMessage::Request {
            from: get_u32(cursor)?,
            request: PhaseRequest {
                phase: get_phase(cursor)?,
                transfer: cursor.transfer()?,
            },
        },
        2 => PeerMessage::Response(PhaseResponse {
            phase: get_phase(cursor)?,
            key: cursor.key()?,
            result: get_phase_result(cursor)?,
        }),
        3 => PeerMessage::Unresolved {
            transfer: cursor.transfer()?,
        },
        4 => PeerMessage::StillHeld {
            key: cursor.key()?,
            partition: get_u32(cursor)?,
            for_us: cursor.u64()?,
        },
        5 => {
            let phase = get_phase(cursor)?;
            let key = cursor.key()?;
            let partition = get_u32(cursor)?;
            let tx = match get_bool(cursor)? {
                true => Some(cursor.transaction()?),
                false => None,
            };
            if matches!(phase, Phase::Try | Phase::Abort) != tx.is_some()
                || tx.as_ref().is_some_and(|tx| tx.key() != key)
            {
                return Err(
                    "a transaction's request carries its transaction with its Try or Abort only"
                        .to_string(),
                );
            }
            PeerMessage::TxRequest(TxRequest {
                phase,
                key,
                partition,
                tx,
            })
        }
        6 => {
            let phase = get_phase(cursor)?;
            let key = cursor.key()?;
            let partition = get_u32(cursor)?;
            let result = get_phase_result(cursor)?;
            let tx = match get_bool(cursor)? {
                true => Some(cursor.transaction()?),
                false => None,
            };
            if tx.as_ref().is_some_and(|tx| tx.key() != key) {
                return Err("a transaction's answer carries another key's legs".to_string());
            }
            PeerMessage::TxResponse(TxResponse {
                phase,
                key,
                partition,
                result,
                tx,
            })
        }
        7 => PeerMessage::TxUnresolved {
            tx: cursor.transaction()?,
            partition: get_u32(cursor)?,
        },
        other => return Err(format!("unknown peer message {other}")),
    })
}

/// The encoded length of a `Raft` message of `messages`: what a sender checks against
/// [`RAFT_ENCODED_LEN_MAX`] before it builds one.
pub fn raft_encoded_len(messages: &[RaftMessage]) -> usize {
    RAFT_PREFIX_LEN
        + messages
            .iter()
            .map(|m| 4 + protobuf::Message::compute_size(m) as usize)
            .sum::<usize>()
}

/// Partition, count, then each Raft message as a `u32` length and its protobuf encoding
/// (raft-rs's own, checked here by the frame's CRC). An empty or oversized group is a bug of
/// the sender.
fn put_raft(out: &mut Vec<u8>, partition: PartitionId, messages: &[RaftMessage]) {
    assert!(
        (1..=RAFT_MESSAGES_MAX).contains(&messages.len()),
        "a Raft message holds 1..={RAFT_MESSAGES_MAX} Raft messages, not {}",
        messages.len()
    );
    let start = out.len();
    out.push(tag::RAFT);
    out.extend_from_slice(&partition.to_le_bytes());
    let count = u16::try_from(messages.len()).expect("the count is bounded");
    out.extend_from_slice(&count.to_le_bytes());
    for message in messages {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        protobuf::Message::write_to_vec(message, out).expect("a Raft message encodes");
        let len = u32::try_from(out.len() - at - 4).expect("a Raft message is under 4 GiB");
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    assert!(
        out.len() - start <= RAFT_ENCODED_LEN_MAX,
        "a Raft message of {} bytes exceeds {RAFT_ENCODED_LEN_MAX}",
        out.len() - start
    );
}

fn get_raft(cursor: &mut Cursor<'_>) -> Result<Message, String> {
    let partition = get_u32(cursor)?;
    let count = usize::from(cursor.u16()?);
    if !(1..=RAFT_MESSAGES_MAX).contains(&count) {
        return Err(format!(
            "a Raft message holds 1..={RAFT_MESSAGES_MAX} Raft messages, not {count}"
        ));
    }
    let mut messages = Vec::with_capacity(count.min(cursor.remaining() / 4));
    for _ in 0..count {
        let len = get_u32(cursor)? as usize;
        let bytes = cursor.take(len)?;
        let message: RaftMessage = protobuf::Message::parse_from_bytes(bytes)
            .map_err(|error| format!("Raft message: {error}"))?;
        messages.push(message);
    }
    Ok(Message::Raft {
        partition,
        messages,
    })
}

fn put_membership(
    out: &mut Vec<u8>,
    partition: PartitionId,
    from: NodeId,
    message: &MembershipMessage,
) {
    out.push(tag::MEMBERSHIP);
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&from.to_le_bytes());
    match message {
        MembershipMessage::Ask { node, nonce } => {
            out.push(1);
            out.extend_from_slice(&node.to_le_bytes());
            out.extend_from_slice(&nonce.to_le_bytes());
        }
        MembershipMessage::Answer { nonce, answer } => {
            out.push(2);
            out.extend_from_slice(&nonce.to_le_bytes());
            match answer {
                MemberAnswer::Fresh => out.push(1),
                MemberAnswer::Running { leader } => {
                    out.push(2);
                    out.extend_from_slice(&leader.unwrap_or(0).to_le_bytes());
                }
                MemberAnswer::Member { id } => {
                    out.push(3);
                    out.extend_from_slice(&id.to_le_bytes());
                }
            }
        }
        MembershipMessage::Check { id } => {
            out.push(3);
            out.extend_from_slice(&id.to_le_bytes());
        }
        MembershipMessage::Removed { id, conf_index } => {
            out.push(4);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&conf_index.to_le_bytes());
        }
    }
}

fn put_catch_up(out: &mut Vec<u8>, partition: PartitionId, from: NodeId, message: &CatchUpMessage) {
    out.push(tag::CATCH_UP);
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&from.to_le_bytes());
    match message {
        CatchUpMessage::Fetch {
            after_lsn,
            through_lsn,
        } => {
            out.push(1);
            out.extend_from_slice(&after_lsn.to_le_bytes());
            out.extend_from_slice(&through_lsn.to_le_bytes());
        }
        CatchUpMessage::Records { first_lsn, records } => {
            assert!(
                records.len() + 64 <= RAFT_ENCODED_LEN_MAX,
                "fetched records fit a wire message"
            );
            out.push(2);
            out.extend_from_slice(&first_lsn.to_le_bytes());
            out.extend_from_slice(&(records.len() as u32).to_le_bytes());
            out.extend_from_slice(records);
        }
    }
}

fn get_catch_up(cursor: &mut Cursor<'_>) -> Result<Message, String> {
    let partition = get_u32(cursor)?;
    let from = get_u32(cursor)?;
    let message = match cursor.u8()? {
        1 => CatchUpMessage::Fetch {
            after_lsn: cursor.u64()?,
            through_lsn: cursor.u64()?,
        },
        2 => {
            let first_lsn = cursor.u64()?;
            let len = get_u32(cursor)? as usize;
            let records = bytes::Bytes::copy_from_slice(cursor.take(len)?);
            CatchUpMessage::Records { first_lsn, records }
        }
        other => return Err(format!("unknown catch-up message {other}")),
    };
    Ok(Message::CatchUp {
        partition,
        from,
        message,
    })
}

fn get_replica_id(cursor: &mut Cursor<'_>) -> Result<u64, String> {
    match cursor.u64()? {
        0 => Err("a membership message names replica 0".into()),
        id => Ok(id),
    }
}

fn get_membership(cursor: &mut Cursor<'_>) -> Result<Message, String> {
    let partition = get_u32(cursor)?;
    let from = get_u32(cursor)?;
    let message = match cursor.u8()? {
        1 => MembershipMessage::Ask {
            node: get_u32(cursor)?,
            nonce: cursor.u64()?,
        },
        2 => {
            let nonce = cursor.u64()?;
            let answer = match cursor.u8()? {
                1 => MemberAnswer::Fresh,
                2 => MemberAnswer::Running {
                    leader: Some(cursor.u64()?).filter(|id| *id != 0),
                },
                3 => match cursor.u64()? {
                    0 => return Err("a membership answer names replica 0".into()),
                    id => MemberAnswer::Member { id },
                },
                other => return Err(format!("unknown membership answer {other}")),
            };
            MembershipMessage::Answer { nonce, answer }
        }
        3 => MembershipMessage::Check {
            id: get_replica_id(cursor)?,
        },
        4 => MembershipMessage::Removed {
            id: get_replica_id(cursor)?,
            conf_index: cursor.u64()?,
        },
        other => return Err(format!("unknown membership message {other}")),
    };
    Ok(Message::Membership {
        partition,
        from,
        message,
    })
}

#[cfg(test)]
mod tests;
