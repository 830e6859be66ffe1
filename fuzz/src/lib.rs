//! What the fuzz targets share: the checks each decoder's output must pass, the re-sealing
//! of checksums that lets mutated bytes reach the checks behind them, and the real encodings
//! the seed corpora are made of.
//!
//! Every decoder here verifies a CRC32C before it looks at a field, and a random mutation
//! almost never keeps a checksum right. So each target decodes its input twice: as it is
//! (what a damaged disk or a hostile peer sends), and with every checksum recomputed (what a
//! buggy or malicious writer could send, and the only way to reach the field decoders).

use std::sync::OnceLock;

use crc32c::crc32c;
use walletd_core::ledger::{Command, Ledger, LedgerError, PhaseResult, Reply, TransferStatus};
use walletd_core::log::codec::{
    decode_log, encode_record, CodecError, Record, RecordReader, RECORD_BODY_LEN_MAX,
};
use walletd_core::log::replay::{replay, same_state, AsOf};
use walletd_core::log::snapshot::{
    decode_snapshot, decode_snapshot_with, encode_snapshot, snapshot_chunks, ChunkPlan,
    SnapshotImage, SNAPSHOT_VERSION,
};
use walletd_core::model::event::{Decision, Reason, Transfer, TransferKey};
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency};
use walletd_core::model::partition::{partition_of, PartitionId};
use walletd_core::protocol::coordinator::{Phase, PhaseRequest, PhaseResponse};
use walletd_core::protocol::message::{PeerMessage, Query, QueryAnswer};
use walletd_core::wire::{
    decode_frame, decode_frame_body, encode_frame, frame_body_len, Message, FRAME_BODY_LEN_MAX,
    FRAME_BODY_LEN_MIN, FRAME_ENCODED_LEN_MAX, FRAME_HEADER_LEN, FRAME_MESSAGES_MAX, MAC_LEN,
    NONCE_LEN,
};

// ---------------------------------------------------------------------------------------
// Re-sealing checksums.

use walletd_core::log::codec::reseal_frames;

/// A log segment with every record's checksum made right.
pub fn reseal_log(bytes: &[u8]) -> Vec<u8> {
    reseal_frames(bytes, 1..=RECORD_BODY_LEN_MAX)
}

/// A stream of wire frames with every frame's checksum made right.
pub fn reseal_wire(bytes: &[u8]) -> Vec<u8> {
    reseal_frames(bytes, FRAME_BODY_LEN_MIN..=FRAME_BODY_LEN_MAX)
}

/// A snapshot or chunk file with its trailing checksum made right (`None` if too short to
/// have one).
pub fn reseal_trailer(bytes: &[u8]) -> Option<Vec<u8>> {
    let content = bytes.len().checked_sub(4).map(|len| &bytes[..len])?;
    let mut out = content.to_vec();
    out.extend_from_slice(&crc32c(content).to_le_bytes());
    Some(out)
}

// ---------------------------------------------------------------------------------------
// Checks.

/// Decodes `bytes` as a log segment and checks what a decoded log promises: its records
/// re-encode to exactly the valid prefix, which decodes alone to the same records; lsns go
/// up by one; what follows the prefix is zeros or a torn tail as reported; the streaming
/// reader agrees; and the records replay without a panic into a ledger that conserves money
/// and survives a snapshot round trip.
pub fn check_log(bytes: &[u8]) {
    for first_lsn in [0, 1] {
        let decoded = decode_log(bytes, first_lsn);
        let streamed: Result<Vec<Record>, CodecError> =
            RecordReader::new(bytes, first_lsn).collect();
        let decoded = match (decoded, streamed) {
            (Err(error), streamed) => {
                assert_eq!(streamed, Err(error), "the reader and decode_log disagree");
                continue;
            }
            (Ok(decoded), streamed) => {
                assert_eq!(streamed.as_ref(), Ok(&decoded.records), "reader disagrees");
                decoded
            }
        };
        let records = &decoded.records;
        assert!(decoded.valid_len <= bytes.len());
        let mut again = Vec::new();
        for record in records {
            encode_record(record, &mut again);
        }
        assert_eq!(
            again,
            bytes[..decoded.valid_len],
            "records re-encode to the prefix"
        );
        for (i, record) in records.iter().enumerate() {
            assert_ne!(record.lsn, 0, "lsns start at 1");
            if i == 0 && first_lsn != 0 {
                assert_eq!(record.lsn, first_lsn);
            }
            if i > 0 {
                assert_eq!(
                    Some(record.lsn),
                    records[i - 1].lsn.checked_add(1),
                    "lsn gap"
                );
            }
        }
        let tail = &bytes[decoded.valid_len..];
        let zeros = tail.iter().all(|&b| b == 0);
        assert_eq!(
            decoded.torn_tail, !zeros,
            "a tail is zeros exactly when not torn"
        );
        let prefix = decode_log(&bytes[..decoded.valid_len], first_lsn).expect("prefix decodes");
        assert_eq!(&prefix.records, records);
        assert!(!prefix.torn_tail && prefix.valid_len == decoded.valid_len);

        if first_lsn == 0 {
            check_replay(records);
        }
    }
}

/// Replays `records` into partition 0 of 1: an error is fine, a panic is not; a ledger that
/// replay accepts conserves money and round-trips through a snapshot.
fn check_replay(records: &[Record]) {
    let Some(first) = records.first() else {
        return;
    };
    if first.lsn != 1 {
        return;
    }
    if let Ok(ledger) = replay(0, 1, records, AsOf::End) {
        assert_eq!(ledger.check_conservation(), Ok(()));
        let restored = decode_snapshot(&encode_snapshot(&ledger)).expect("snapshot decodes");
        assert!(same_state(&restored, &ledger), "snapshot round trip");
    }
}

/// Decodes `bytes` as a snapshot with `chunks` as its chunk files and checks what a decoded
/// snapshot promises: the chunk count it declares is the number it was given, the ledger
/// conserves money, and (current version) encoding it again gives the same snapshot and the
/// same chunk files; an older version's ledger survives a round trip through the current one.
pub fn check_snapshot(bytes: &[u8], chunks: &[Vec<u8>]) {
    let declared = snapshot_chunks(bytes);
    let Ok(ledger) = decode_snapshot_with(bytes, chunks) else {
        return;
    };
    assert_eq!(declared, Ok(chunks.len() as u32));
    assert_eq!(
        ledger.check_conservation(),
        Ok(()),
        "a decoded snapshot conserves money"
    );
    let plan = ChunkPlan {
        written: 0,
        frozen: chunks.len(),
    };
    let (again, files) = SnapshotImage::with_chunks(&ledger, plan).encode();
    if bytes[4] == SNAPSHOT_VERSION {
        assert_eq!(again, bytes, "a snapshot re-encodes to its own bytes");
        let files: Vec<Vec<u8>> = files.into_iter().map(|(_, file)| file).collect();
        assert_eq!(files, chunks, "chunk files re-encode to their own bytes");
    } else {
        let restored = decode_snapshot_with(&again, chunks).expect("the current version decodes");
        assert!(same_state(&restored, &ledger), "an old version round-trips");
    }
}

/// Decodes `bytes` as a stream of frames, front to back, and checks each one: it stays within
/// the frame bounds, encodes back to its own bytes, and decodes the same way through the
/// header-then-body path the network reader takes.
pub fn check_frames(bytes: &[u8]) {
    let mut at = 0;
    while let Ok(Some((frame, used))) = decode_frame(&bytes[at..]) {
        assert!((FRAME_HEADER_LEN + FRAME_BODY_LEN_MIN..=FRAME_ENCODED_LEN_MAX).contains(&used));
        assert!(frame.messages.len() <= FRAME_MESSAGES_MAX);
        let whole = &bytes[at..at + used];
        let mut again = Vec::new();
        encode_frame(frame.map_version, &frame.messages, &mut again);
        assert_eq!(again, whole, "a frame re-encodes to its own bytes");
        let header: &[u8; FRAME_HEADER_LEN] = whole[..FRAME_HEADER_LEN].try_into().unwrap();
        let body = &whole[FRAME_HEADER_LEN..];
        assert_eq!(frame_body_len(header), Ok(body.len()));
        assert_eq!(decode_frame_body(header, body).as_ref(), Ok(&frame));
        at += used;
    }
}

/// Reads `bytes` as the accepting end of a handshake reads its peer: one frame, which must
/// hold exactly one message, a `Hello`; then one frame holding one `Auth`. The body buffer
/// the network reader sizes from a header never exceeds [`FRAME_BODY_LEN_MAX`], and every
/// handshake message that decodes encodes back to the same frame.
pub fn check_handshake(bytes: &[u8]) {
    let mut rest = bytes;
    for want_hello in [true, false] {
        let Some(header) = rest.get(..FRAME_HEADER_LEN) else {
            return;
        };
        let header: &[u8; FRAME_HEADER_LEN] = header.try_into().unwrap();
        let Ok(len) = frame_body_len(header) else {
            return;
        };
        assert!(len <= FRAME_BODY_LEN_MAX, "the body buffer is bounded");
        let Some(body) = rest.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
            return;
        };
        let Ok(frame) = decode_frame_body(header, body) else {
            return;
        };
        let Ok([message]) = <[Message; 1]>::try_from(frame.messages) else {
            return;
        };
        let is_hello = matches!(message, Message::Hello { .. });
        let is_auth = matches!(message, Message::Auth { .. });
        if !(is_hello || is_auth) {
            return;
        }
        let mut again = Vec::new();
        encode_frame(
            frame.map_version,
            std::slice::from_ref(&message),
            &mut again,
        );
        assert_eq!(
            again,
            rest[..FRAME_HEADER_LEN + len],
            "handshake frame re-encodes"
        );
        if is_hello != want_hello {
            return;
        }
        rest = &rest[FRAME_HEADER_LEN + len..];
    }
}

// ---------------------------------------------------------------------------------------
// Real encodings, for the seed corpora and the fixed inputs of the targets.

fn id(text: &str) -> AccountId {
    AccountId::new(text).expect("valid account id")
}

fn txn(text: &str) -> TransactionId {
    TransactionId::new(text).expect("valid transaction id")
}

fn amount(minor: u64) -> Amount {
    Amount::from_minor(minor).expect("valid amount")
}

/// The first account named `{prefix}{n}` that partition `partition` of 2 owns.
fn account_on(prefix: &str, partition: PartitionId) -> AccountId {
    (0..)
        .map(|n| id(&format!("{prefix}{n}")))
        .find(|account| partition_of(account, 2) == partition)
        .expect("some name hashes there")
}

fn transfer(t: &str, from: AccountId, to: AccountId, minor: u64) -> Transfer {
    Transfer {
        transaction_id: txn(t),
        from,
        to,
        amount: amount(minor),
        currency: Currency::USD,
    }
}

/// A ledger built the way a partition builds one, and the records that built it.
pub struct Sample {
    pub ledger: Ledger,
    pub records: Vec<Record>,
}

impl Sample {
    fn run(&mut self, command: Command) -> Result<Reply, LedgerError> {
        let timestamp = 1_700_000_000_000_000 + self.records.len() as u64 * 1_000;
        let mut events = Vec::new();
        let reply = self.ledger.execute(&command, timestamp, &mut events);
        for event in events {
            self.records.push(Record {
                lsn: self.records.len() as u64 + 1,
                timestamp,
                event,
            });
        }
        reply
    }
}

/// Partition 0 of 2 with rows in every table and state: local transfers filling
/// `full_chunks` chunks of the transfers table with final rows, then rejected, pending,
/// confirmed and cancelled cross-partition transfers, credits in every state, deposits and
/// withdrawals in two currencies.
pub fn sample(full_chunks: usize) -> Sample {
    let mut s = Sample {
        ledger: Ledger::new(0, 2),
        records: Vec::new(),
    };
    let (a, b, e) = (account_on("a", 0), account_on("b", 0), account_on("e", 0));
    let (r, q) = (account_on("r", 1), account_on("q", 1));
    for (account, currency) in [(a, Currency::USD), (b, Currency::USD), (e, Currency::EUR)] {
        s.run(Command::OpenAccount { account, currency }).unwrap();
    }
    for (account, minor, currency, t) in [
        (a, 1_000_000, Currency::USD, "d-1"),
        (e, 500, Currency::EUR, "d-2"),
    ] {
        let (amount, transaction_id) = (amount(minor), txn(t));
        let deposit = Command::Deposit {
            account,
            amount,
            currency,
            transaction_id,
        };
        s.run(deposit).unwrap();
    }
    let withdraw = Command::Withdraw {
        account: a,
        amount: amount(10),
        currency: Currency::USD,
        transaction_id: txn("w-1"),
    };
    s.run(withdraw).unwrap();
    // Final credit rows first, so that the first chunk file holds some among home rows.
    for (t, confirm) in [("c-confirm", true), ("c-cancel", false)] {
        let incoming = transfer(t, q, a, 3);
        s.run(Command::TryCredit(incoming)).unwrap();
        let finish = if confirm {
            Command::ConfirmCredit(incoming)
        } else {
            Command::CancelCredit(incoming)
        };
        s.run(finish).unwrap();
    }
    let unseen = transfer("c-unseen", q, b, 4);
    s.run(Command::CancelCredit(unseen)).unwrap();
    let rows = full_chunks * walletd_core::ledger::CHUNK_ROWS;
    for i in 0..rows.max(1) {
        let (from, to) = if i % 2 == 0 { (a, b) } else { (b, a) };
        s.run(Command::Transfer(transfer(&format!("t-{i}"), from, to, 1)))
            .unwrap();
    }
    let _ = s.run(Command::Transfer(transfer("t-nsf", b, a, 999_999_999)));
    let _ = s.run(Command::Transfer(transfer("t-eur", a, e, 5)));
    let decisions = [
        ("x-confirm", Some(Decision::Confirm)),
        ("x-cancel", Some(Decision::Cancel(Reason::Timeout))),
        ("x-pending", None),
    ];
    for (t, decision) in decisions {
        let sent = transfer(t, a, r, 7);
        s.run(Command::Transfer(sent)).unwrap();
        if let Some(decision) = decision {
            let key = sent.key();
            s.run(Command::Decide { key, decision }).unwrap();
            s.run(Command::FinishDebit { key }).unwrap();
        }
    }
    // A credit still pending, after the chunks: they hold only final rows.
    let incoming = transfer("c-tried", q, a, 3);
    s.run(Command::TryCredit(incoming)).unwrap();
    s
}

/// Encodes `records` as one log segment.
pub fn encode_log(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for record in records {
        encode_record(record, &mut out);
    }
    out
}

/// A snapshot of [`sample`] whose first two transfer chunks are in chunk files, and those
/// files: the fixed chunk files of the `snapshot` target and the fixed snapshot of `chunk`.
pub fn chunked_snapshot() -> &'static (Vec<u8>, Vec<Vec<u8>>) {
    static CHUNKED: OnceLock<(Vec<u8>, Vec<Vec<u8>>)> = OnceLock::new();
    CHUNKED.get_or_init(|| {
        let ledger = sample(2).ledger;
        let frozen = ledger.final_chunks_from(0);
        assert_eq!(frozen, 2, "the sample fills two chunks with final rows");
        let plan = ChunkPlan { written: 0, frozen };
        let (bytes, files) = SnapshotImage::with_chunks(&ledger, plan).encode();
        (bytes, files.into_iter().map(|(_, file)| file).collect())
    })
}

/// One message of every kind, and every variant of what they carry that has its own layout.
pub fn sample_messages() -> Vec<Message> {
    let (a, r) = (id("alice"), id("bob:with-a.longer_id"));
    let t = transfer("t-1", a, r, 12_345);
    let key = t.key();
    let mut messages = vec![
        Message::Hello {
            node: 2,
            map_version: 7,
            map_digest: 0x5a5a,
            nonce: [0x5a; NONCE_LEN],
        },
        Message::Auth {
            mac: [0xa5; MAC_LEN],
        },
        Message::StaleMap {
            expected: 8,
            got: 7,
        },
        Message::Refused { id: 42 },
    ];
    let commands = [
        Command::OpenAccount {
            account: a,
            currency: Currency::JPY,
        },
        Command::Deposit {
            account: a,
            amount: amount(1),
            currency: Currency::USD,
            transaction_id: txn("d-1"),
        },
        Command::Withdraw {
            account: a,
            amount: amount(2),
            currency: Currency::USD,
            transaction_id: txn("w-1"),
        },
        Command::Transfer(t),
        Command::Decide {
            key,
            decision: Decision::Cancel(Reason::InsufficientFunds),
        },
        Command::FinishDebit { key },
        Command::TryCredit(t),
        Command::ConfirmCredit(t),
        Command::CancelCredit(t),
        Command::Capture {
            key,
            amount: Some(walletd_core::model::money::WrittenAmount::from_parts(1230, 2)),
        },
        Command::Void { key },
    ];
    for (i, command) in commands.into_iter().enumerate() {
        messages.push(Message::Request {
            id: i as u64,
            wait: i % 2 == 0,
            command,
        });
    }
    for query in [
        Query::Account(a),
        Query::Transfer(key),
        Query::TransferBody(key),
    ] {
        messages.push(Message::QueryRequest { id: 9, query });
    }
    let row = walletd_core::ledger::TransferRow {
        transfer: t,
        state: walletd_core::ledger::TransferState::Cancelled(Reason::Timeout),
        remote: true,
        accepted_at: 1,
        decided_at: 2,
        finished_at: 3,
    };
    let account = walletd_core::ledger::Account {
        currency: Currency::USD,
        balance: 10,
        held: 2,
        incoming: 1,
    };
    for answer in [
        QueryAnswer::Account(None),
        QueryAnswer::Account(Some(account)),
        QueryAnswer::Transfer(Some(row)),
        QueryAnswer::TransferBody(Some(t)),
    ] {
        messages.push(Message::Answer { id: 10, answer });
    }
    let replies = [
        Ok(Reply::Opened { created: true }),
        Ok(Reply::Balance { balance: 99 }),
        Ok(Reply::Transfer(TransferStatus::Rejected(
            Reason::DestinationNotFound,
        ))),
        Ok(Reply::Phase(PhaseResult::TryFailed(
            Reason::DestinationBalanceLimit,
        ))),
        Ok(Reply::Done),
        Ok(Reply::HoldEnd(walletd_core::ledger::HoldEnd {
            status: TransferStatus::Captured,
            to: t.to,
            amount: amount(30),
            currency: Currency::USD,
            captured: Some(amount(12)),
        })),
        Err(LedgerError::InvalidAmount("amount must be greater than zero".to_string())),
        Err(LedgerError::InsufficientFunds {
            available: "12.34".to_string(),
            currency: Currency::EUR,
        }),
        Err(LedgerError::WrongPartition {
            account: a,
            owner: 3,
            here: 1,
        }),
        Err(LedgerError::InvalidTransition {
            key,
            from: "committed".to_string(),
            command: "decide",
        }),
        Err(LedgerError::SameAccount),
    ];
    for result in replies {
        messages.push(Message::Reply { id: 11, result });
    }
    let request = PeerMessage::Request {
        from: 1,
        request: PhaseRequest {
            phase: Phase::Try,
            transfer: t,
        },
    };
    let response = PeerMessage::Response(PhaseResponse {
        phase: Phase::Cancel,
        key: TransferKey {
            from: a,
            transaction_id: txn("t-1"),
        },
        result: PhaseResult::Cancelled,
    });
    // Alone, and a group of several: the fuzzer starts from a count and a loop it can damage.
    messages.push(Message::Peers(vec![request.clone()]));
    messages.push(Message::Peers(vec![response.clone()]));
    messages.push(Message::Peers(vec![request.clone(), response, request]));
    messages
}

/// `messages` in one frame.
pub fn frame_of(map_version: u64, messages: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(map_version, messages, &mut out);
    out
}

/// Runs `check` on `data` as it is, then on `reseal(data)` when that differs: mutations
/// rarely get past a checksum to the field decoders, so every target also decodes its input
/// with the checksums made right.
pub fn as_is_and_resealed(
    data: &[u8],
    reseal: impl Fn(&[u8]) -> Option<Vec<u8>>,
    check: impl Fn(&[u8]),
) {
    check(data);
    if let Some(resealed) = reseal(data).filter(|resealed| resealed != data) {
        check(&resealed);
    }
}
