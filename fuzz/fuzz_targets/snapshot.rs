//! A snapshot as read from disk (`snapshot_chunks`, `decode_snapshot_with`), as it is and
//! with its checksum made right, given as many of a fixed set of valid chunk files as it
//! declares. See `walletd_fuzz::check_snapshot` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walletd_core::log::snapshot::snapshot_chunks;

fn check(bytes: &[u8]) {
    let files = &walletd_fuzz::chunked_snapshot().1;
    let declared = snapshot_chunks(bytes).map_or(0, |n| n as usize);
    walletd_fuzz::check_snapshot(bytes, &files[..declared.min(files.len())]);
}

fuzz_target!(|data: &[u8]| walletd_fuzz::as_is_and_resealed(
    data,
    walletd_fuzz::reseal_trailer,
    check
));
