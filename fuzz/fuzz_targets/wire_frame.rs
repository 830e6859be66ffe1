//! A stream of node-to-node frames as read from a socket (`decode_frame`,
//! `decode_frame_body`), as it is and with every frame's checksum made right. See
//! `walletd_fuzz::check_frames`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walletd_fuzz::as_is_and_resealed(
    data,
    |d| Some(walletd_fuzz::reseal_wire(d)),
    walletd_fuzz::check_frames
));
