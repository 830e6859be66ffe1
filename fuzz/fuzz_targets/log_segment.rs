//! A log segment as read from disk (`decode_log`, `RecordReader`), as it is and with every
//! record's checksum made right. See `walletd_fuzz::check_log` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walletd_fuzz::as_is_and_resealed(
    data,
    |d| Some(walletd_fuzz::reseal_log(d)),
    walletd_fuzz::check_log
));
