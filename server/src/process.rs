//! What this process costs the machine, read from `/proc` (Linux only).

use std::io;

/// Resident set size of this process in bytes (`VmRSS` of `/proc/self/status`).
pub fn resident_bytes() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::other("no VmRSS line in /proc/self/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_megabyte_touched_shows_in_the_resident_set() {
        let before = resident_bytes().unwrap();
        assert!(before > 0);
        let touched = vec![1u8; 64 << 20];
        let after = resident_bytes().unwrap();
        assert!(
            after >= before + (32 << 20),
            "{before} -> {after} with 64 MiB touched"
        );
        drop(touched);
    }
}
