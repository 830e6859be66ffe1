//! A chunk file as read from disk: the last of the chunk files of a fixed valid snapshot,
//! as it is and with its checksum made right. See `walletd_fuzz::check_snapshot`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn check(chunk: &[u8]) {
    let (snapshot, files) = walletd_fuzz::chunked_snapshot();
    let mut files = files.clone();
    *files.last_mut().expect("the snapshot has chunk files") = chunk.to_vec();
    walletd_fuzz::check_snapshot(snapshot, &files);
}

fuzz_target!(|data: &[u8]| walletd_fuzz::as_is_and_resealed(
    data,
    walletd_fuzz::reseal_trailer,
    check
));
