//! Every decoder of bytes from disk or the network survives hostile bytes within its stated
//! allocation bound, and every input that once failed one of them still gives a value or an
//! error.
//!
//! The bounds, as stated in each decoder's docs, are in items: a count or length read from
//! the input never sizes an allocation beyond what the input's own length can hold. Here
//! they are checked in bytes, on the largest single allocation made while decoding (a
//! counting allocator, per thread), against the item bound times the item's size:
//!
//! - `decode_log`: the record vector, at most `len / 26` records (doubling as it grows).
//! - `decode_frame`: the message vector, at most `len / 9` messages; a `Peers` message's
//!   vector, at most `len / 7` peer messages.
//! - `decode_snapshot_with`: a table's rows, at most `len / 6` of them, each at most a
//!   transfer row and its key; or the transfers table's fixed 4 MiB id arena.
//!
//! Inputs under `tests/regressions/<target>/` are ones the fuzz target of that name once
//! failed on (see `fuzz/README.md`); each is decoded here as its target decodes it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::mem::size_of;
use std::path::Path;

use proptest::prelude::*;
use walletd_core::ledger::{Command, Ledger, TransferRow};
use walletd_core::log::codec::{decode_log, encode_record, Record, RECORD_BODY_LEN_MAX};
use walletd_core::log::snapshot::{decode_snapshot_with, encode_snapshot, snapshot_chunks};
use walletd_core::model::event::{Event, TransferKey};
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency};
use walletd_core::model::partition::PartitionId;
use walletd_core::protocol::coordinator::{Phase, PhaseRequest, PhaseResponse};
use walletd_core::protocol::message::{PeerMessage, PEER_MESSAGES_PER_INPUT_MAX};
use walletd_core::wire::{decode_frame, encode_frame, Message, FRAME_MESSAGES_MAX, WIRE_VERSION};

/// The system allocator, noting the largest allocation each thread asks for.
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // A const-initialised thread local without a destructor: accessing it never allocates.
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: every call is passed on to `System` unchanged; noting a size touches no memory
// the allocator hands out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The largest single allocation `decode` makes on this thread.
fn largest_allocation<T>(decode: impl FnOnce() -> T) -> usize {
    LARGEST.with(|largest| largest.set(0));
    let value = decode();
    let largest = LARGEST.with(Cell::get);
    drop(value);
    largest
}

/// Room for error messages and other small fixed allocations.
const SMALL: usize = 1024;
/// The transfers table's id arena, taken whole with its first row (4 MiB in release
/// configuration, which is how this test crate builds the library).
const ARENA: usize = 4 << 20;

fn log_bound(len: usize) -> usize {
    SMALL + 2 * (len / 26 + 4) * size_of::<Record>()
}

fn frame_bound(len: usize) -> usize {
    let messages = (len / 9 + 1) * size_of::<Message>();
    let peers = (len / 7 + 1) * size_of::<PeerMessage>();
    SMALL + messages.max(peers)
}

fn snapshot_bound(len: usize) -> usize {
    let row = size_of::<(TransferKey, TransferRow)>();
    ARENA.max(SMALL + 2 * (len / 6 + 1) * row)
}

fn check_log(bytes: &[u8]) {
    let largest = largest_allocation(|| decode_log(bytes, 0));
    assert!(
        largest <= log_bound(bytes.len()),
        "{largest} bytes for {} of log",
        bytes.len()
    );
}

fn check_frames(bytes: &[u8]) {
    let mut at = 0;
    loop {
        let mut decoded = None;
        let largest = largest_allocation(|| decoded = Some(decode_frame(&bytes[at..])));
        let rest = bytes.len() - at;
        assert!(
            largest <= frame_bound(rest),
            "{largest} bytes for {rest} of frames"
        );
        match decoded {
            Some(Ok(Some((_, used)))) => at += used,
            _ => return,
        }
    }
}

fn check_snapshot(bytes: &[u8]) {
    let largest = largest_allocation(|| {
        let _ = snapshot_chunks(bytes);
        decode_snapshot_with(bytes, &[])
    });
    let len = bytes.len();
    assert!(
        largest <= snapshot_bound(len),
        "{largest} bytes for {len} of snapshot"
    );
}

// ---------------------------------------------------------------------------------------
// Valid encodings to damage.

fn id(text: &str) -> AccountId {
    AccountId::new(text).unwrap()
}

fn txn(text: &str) -> TransactionId {
    TransactionId::new(text).unwrap()
}

/// A partition of one with accounts, deposits and transfers, and the records that built it.
fn sample() -> (Ledger, Vec<Record>) {
    let mut ledger = Ledger::new(0, 1);
    let mut records = Vec::new();
    let mut run = |ledger: &mut Ledger, command: Command| {
        let mut events: Vec<Event> = Vec::new();
        let timestamp = 1_700_000_000_000_000 + records.len() as u64;
        ledger.execute(&command, timestamp, &mut events).unwrap();
        for event in events {
            let lsn = records.len() as u64 + 1;
            records.push(Record {
                lsn,
                timestamp,
                event,
            });
        }
    };
    for name in ["alice", "bob", "carol"] {
        let (account, currency) = (id(name), Currency::USD);
        run(&mut ledger, Command::OpenAccount { account, currency });
    }
    let deposit = Command::Deposit {
        account: id("alice"),
        amount: Amount::from_minor(1_000).unwrap(),
        currency: Currency::USD,
        transaction_id: txn("d-1"),
    };
    run(&mut ledger, deposit);
    for (i, to) in ["bob", "carol", "bob"].into_iter().enumerate() {
        let transfer = walletd_core::model::event::Transfer {
            transaction_id: txn(&format!("t-{i}")),
            from: id("alice"),
            to: id(to),
            amount: Amount::from_minor(10).unwrap(),
            currency: Currency::USD,
        };
        run(&mut ledger, Command::Transfer(transfer));
    }
    (ledger, records)
}

fn sample_log() -> Vec<u8> {
    let mut bytes = Vec::new();
    for record in &sample().1 {
        encode_record(record, &mut bytes);
    }
    bytes
}

/// A Try from partition `from` and the answer to it.
fn sample_peer_messages(from: PartitionId) -> [PeerMessage; 2] {
    let transfer = walletd_core::model::event::Transfer {
        transaction_id: txn("t-1"),
        from: id("a"),
        to: id("b"),
        amount: Amount::from_minor(5).unwrap(),
        currency: Currency::USD,
    };
    let request = PhaseRequest {
        phase: Phase::Try,
        transfer,
    };
    let response = PhaseResponse {
        phase: Phase::Try,
        key: transfer.key(),
        result: walletd_core::ledger::PhaseResult::Tried,
    };
    [
        PeerMessage::Request { from, request },
        PeerMessage::Response(response),
    ]
}

fn sample_frames() -> Vec<u8> {
    let mut bytes = Vec::new();
    let messages = [
        Message::Refused { id: 1 },
        Message::StaleMap {
            expected: 2,
            got: 1,
        },
        Message::Auth { mac: [7; 32] },
        Message::Peers(
            [
                sample_peer_messages(3).to_vec(),
                sample_peer_messages(3).to_vec(),
                sample_peer_messages(3).to_vec(),
            ]
            .concat(),
        ),
    ];
    encode_frame(1, &messages, &mut bytes);
    encode_frame(1, &[], &mut bytes);
    bytes
}

/// `[len u32][crc u32][body]` frames with their checksums made right, front to back.
fn reseal_frames(bytes: &[u8], max: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut at = 0;
    while let Some(header) = out.get(at..at + 8) {
        let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
        let end = at + 8 + len;
        if len == 0 || len > max || end > out.len() {
            break;
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&out[at..at + 4]), &out[at + 8..end]);
        out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
    out
}

/// `bytes` with a right trailing checksum.
fn reseal_trailer(bytes: &[u8]) -> Vec<u8> {
    let Some(len) = bytes.len().checked_sub(4) else {
        return bytes.to_vec();
    };
    let mut out = bytes[..len].to_vec();
    out.extend_from_slice(&crc32c::crc32c(&out).to_le_bytes());
    out
}

/// `bytes` with a run of `value`s written at `at` (a forged count, most often).
fn overwrite(mut bytes: Vec<u8>, at: prop::sample::Index, value: u8, run: usize) -> Vec<u8> {
    if !bytes.is_empty() {
        let i = at.index(bytes.len());
        let end = (i + run).min(bytes.len());
        bytes[i..end].fill(value);
    }
    bytes
}

// ---------------------------------------------------------------------------------------
// Forged counts.

/// A frame of this build's version whose body (after the version) is `rest`, checksummed.
fn frame_with_body(rest: &[u8]) -> Vec<u8> {
    let mut body = vec![WIRE_VERSION];
    body.extend_from_slice(&7u64.to_le_bytes());
    body.extend_from_slice(rest);
    let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(&body);
    reseal_frames(&bytes, usize::MAX)
}

#[test]
fn a_frame_declaring_every_message_allocates_for_what_it_holds() {
    // Once preallocated FRAME_MESSAGES_MAX messages for any count, whatever the body held.
    let bytes = frame_with_body(&(FRAME_MESSAGES_MAX as u16).to_le_bytes());
    let error = decode_frame(&bytes).unwrap_err().to_string();
    assert!(error.contains("malformed"), "the count was read: {error}");
    check_frames(&bytes);
}

#[test]
fn a_peers_message_declaring_every_peer_message_allocates_for_what_it_holds() {
    // One message: `Peers` (tag 10) declaring the most peer messages, then one of them.
    let mut rest = 1u16.to_le_bytes().to_vec();
    rest.push(10);
    rest.extend_from_slice(&(PEER_MESSAGES_PER_INPUT_MAX as u16).to_le_bytes());
    let mut one = Vec::new();
    encode_frame(
        1,
        &[Message::Peers(vec![sample_peer_messages(0)[1].clone()])],
        &mut one,
    );
    // Past the frame header (8), the body's prefix (11), and the Peers tag and count (3).
    rest.extend_from_slice(&one[8 + 11 + 3..]);
    let bytes = frame_with_body(&rest);
    let error = decode_frame(&bytes).unwrap_err().to_string();
    assert!(error.contains("malformed"), "the count was read: {error}");
    check_frames(&bytes);
}

#[test]
fn a_snapshot_declaring_huge_tables_allocates_for_what_it_holds() {
    let valid = encode_snapshot(&sample().0);
    // Header (29 bytes), chunk count, then the accounts count.
    for at in [29, 33] {
        let mut forged = valid.clone();
        forged[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let forged = reseal_trailer(&forged);
        assert!(decode_snapshot_with(&forged, &[]).is_err());
        check_snapshot(&forged);
    }
}

// ---------------------------------------------------------------------------------------
// Arbitrary and damaged bytes.

fn damage() -> impl Strategy<Value = (prop::sample::Index, u8, usize, prop::sample::Index)> {
    (
        any::<prop::sample::Index>(),
        any::<u8>(),
        1..5usize,
        any::<prop::sample::Index>(),
    )
}

/// `bytes` overwritten with a run, then cut at `cut` (kept whole half the time).
fn damaged(
    bytes: Vec<u8>,
    (at, value, run, cut): (prop::sample::Index, u8, usize, prop::sample::Index),
) -> Vec<u8> {
    let mut bytes = overwrite(bytes, at, value, run);
    if value % 2 == 0 {
        bytes.truncate(cut.index(bytes.len() + 1));
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_bytes_stay_within_every_bound(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        check_log(&bytes);
        check_log(&reseal_frames(&bytes, RECORD_BODY_LEN_MAX));
        check_frames(&bytes);
        check_frames(&reseal_frames(&bytes, usize::MAX));
        let mut snapshot = b"WSNP\x03".to_vec();
        snapshot.extend_from_slice(&bytes);
        check_snapshot(&bytes);
        check_snapshot(&reseal_trailer(&snapshot));
    }

    #[test]
    fn damaged_encodings_stay_within_every_bound(
        log in damage(),
        frames in damage(),
        snapshot in damage(),
    ) {
        let log = damaged(sample_log(), log);
        check_log(&reseal_frames(&log, RECORD_BODY_LEN_MAX));
        let frames = damaged(sample_frames(), frames);
        check_frames(&reseal_frames(&frames, usize::MAX));
        let snapshot = damaged(encode_snapshot(&sample().0), snapshot);
        check_snapshot(&reseal_trailer(&snapshot));
    }

    /// A frame of one `Peers` message of `peers` peer messages, its count (or anything else)
    /// overwritten, with its checksum made right.
    #[test]
    fn damaged_peers_messages_stay_within_the_frame_bound(
        peers in 1..200usize,
        damage in damage(),
    ) {
        let group: Vec<PeerMessage> = sample_peer_messages(1).iter().cloned().cycle().take(peers).collect();
        let mut bytes = Vec::new();
        encode_frame(1, &[Message::Peers(group)], &mut bytes);
        check_frames(&reseal_frames(&damaged(bytes, damage), usize::MAX));
    }
}

// ---------------------------------------------------------------------------------------
// Inputs that once failed.

/// The files under `tests/regressions/<target>/`.
fn regressions(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/regressions")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn inputs_that_once_failed_decode_to_a_value_or_an_error() {
    let mut seen = 0;
    for (_, bytes) in regressions("log_segment") {
        check_log(&bytes);
        check_log(&reseal_frames(&bytes, RECORD_BODY_LEN_MAX));
        seen += 1;
    }
    for target in ["wire_frame", "handshake"] {
        for (_, bytes) in regressions(target) {
            check_frames(&bytes);
            check_frames(&reseal_frames(&bytes, usize::MAX));
            seen += 1;
        }
    }
    for (_, bytes) in regressions("snapshot") {
        check_snapshot(&bytes);
        check_snapshot(&reseal_trailer(&bytes));
        seen += 1;
    }
    assert!(
        seen > 0,
        "the regression inputs are where this test looks for them"
    );
}

#[test]
fn a_snapshot_whose_flows_overflow_is_refused() {
    // Found by the `snapshot` fuzz target: the conservation check added flow totals read
    // from the snapshot without checking for overflow.
    let files = regressions("snapshot");
    let (_, bytes) = files
        .iter()
        .find(|(name, _)| name == "flow_totals_overflow")
        .expect("the input is kept");
    let result = decode_snapshot_with(bytes, &[]);
    assert!(
        matches!(&result, Err(e) if e.to_string().contains("overflow")),
        "{result:?}"
    );
}
