//! Writes the seed corpora, `seeds/<target>/<name>`, from real encodings: logs, snapshots,
//! chunk files and frames as walletd writes them, whole, cut short and zero-padded. Every
//! seed is first checked with the target's own check. Run from `fuzz/`:
//! `cargo run --bin write_seeds`.

use std::fs;
use std::path::Path;

use walletd_core::log::snapshot::encode_snapshot;
use walletd_core::wire::Message;
use walletd_fuzz::{
    chunked_snapshot, encode_log, frame_of, reseal_trailer, sample, sample_messages,
};

/// Bytes of a snapshot's header before the chunk count (see the snapshot module docs).
const SNAPSHOT_HEADER_LEN: usize = 4 + 1 + 4 + 4 + 8 + 8;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("seeds").join(target);
    fs::create_dir_all(&dir).expect("create the seed directory");
    fs::write(dir.join(name), bytes).expect("write a seed");
}

fn main() {
    let records = sample(0).records;
    let log = encode_log(&records);
    let first_three = encode_log(&records[..3]);
    let mut zero_filled = log.clone();
    zero_filled.resize(log.len() + 256, 0);
    let torn = &log[..log.len() - 5];
    for (name, bytes) in [
        ("whole", &log[..]),
        ("three", &first_three[..]),
        ("zero_filled", &zero_filled[..]),
        ("torn", torn),
    ] {
        walletd_fuzz::check_log(bytes);
        write("log_segment", name, bytes);
    }

    let (chunked, files) = chunked_snapshot();
    let inline = encode_snapshot(&sample(0).ledger);
    let empty = encode_snapshot(&walletd_core::ledger::Ledger::new(0, 1));
    // Version 2: the same, without the chunk count.
    let mut v2 = inline[..SNAPSHOT_HEADER_LEN].to_vec();
    v2.extend_from_slice(&inline[SNAPSHOT_HEADER_LEN + 4..]);
    v2[4] = 2;
    let v2 = reseal_trailer(&v2).expect("long enough");
    walletd_fuzz::check_snapshot(chunked, files);
    write("snapshot", "chunked", chunked);
    for (name, bytes) in [("inline", &inline), ("empty", &empty), ("version_2", &v2)] {
        walletd_fuzz::check_snapshot(bytes, &[]);
        write("snapshot", name, bytes);
    }
    write("chunk", "last", files.last().expect("chunk files"));
    write("chunk", "first", &files[0]);

    let messages = sample_messages();
    let all = frame_of(3, &messages);
    let heartbeat = frame_of(3, &[]);
    let mut two = heartbeat.clone();
    two.extend_from_slice(&frame_of(4, &messages[..4]));
    for (name, bytes) in [("all", &all), ("heartbeat", &heartbeat), ("two", &two)] {
        walletd_fuzz::check_frames(bytes);
        write("wire_frame", name, bytes);
    }
    for (i, message) in messages.iter().enumerate() {
        let bytes = frame_of(3, std::slice::from_ref(message));
        walletd_fuzz::check_frames(&bytes);
        write("wire_frame", &format!("message_{i:02}"), &bytes);
    }

    let hello = frame_of(7, &messages[..1]);
    let auth = frame_of(7, &messages[1..2]);
    assert!(matches!(messages[0], Message::Hello { .. }));
    assert!(matches!(messages[1], Message::Auth { .. }));
    let mut both = hello.clone();
    both.extend_from_slice(&auth);
    for (name, bytes) in [("hello", &hello), ("hello_auth", &both), ("auth", &auth)] {
        walletd_fuzz::check_handshake(bytes);
        write("handshake", name, bytes);
    }
}
