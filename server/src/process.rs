//! What this process costs the machine, read from `/proc` (Linux only).

use std::io;

/// Resident set size of this process in bytes (`VmRSS` of `/proc/self/status`).
pub fn resident_bytes() -> io::Result<u64> {
    kilobytes_field("/proc/self/status", "VmRSS")
}

/// The bytes of a `Name:   1234 kB` line of a `/proc` file.
fn kilobytes_field(path: &str, name: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::other(format!("no {name} line in {path}")))
}

/// The memory this process may use: the machine's (`MemTotal`), or its cgroup's limit
/// (`memory.max`, cgroup v2) when that is lower.
pub fn memory_available() -> io::Result<u64> {
    let total = kilobytes_field("/proc/meminfo", "MemTotal")?;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    Ok(cgroup.map_or(total, |limit| limit.min(total)))
}

/// The default of `--memory-limit-mb`: 90% of [`memory_available`], so that writes are
/// refused before the kernel kills the process; `None` where that cannot be read.
pub fn default_memory_limit() -> Option<u64> {
    memory_available().ok().map(|bytes| bytes / 10 * 9)
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

    #[test]
    fn the_default_limit_is_below_what_the_machine_has_and_above_what_this_uses() {
        let available = memory_available().unwrap();
        let limit = default_memory_limit().unwrap();
        assert!(limit < available && limit > resident_bytes().unwrap());
    }
}
