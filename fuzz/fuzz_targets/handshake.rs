//! The first two frames an accepting node reads from an unauthenticated peer (`Hello`, then
//! `Auth`), as they are and with their checksums made right. See
//! `walletd_fuzz::check_handshake`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walletd_fuzz::as_is_and_resealed(
    data,
    |d| Some(walletd_fuzz::reseal_wire(d)),
    walletd_fuzz::check_handshake
));
