//! The first two frames an accepting node reads from an unauthenticated peer (`Hello`, then
//! `Auth`), as they are and with their checksums made right. See
//! `walletd_fuzz::check_handshake`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    walletd_fuzz::check_handshake(data);
    let resealed = walletd_fuzz::reseal_wire(data);
    if resealed != data {
        walletd_fuzz::check_handshake(&resealed);
    }
});
