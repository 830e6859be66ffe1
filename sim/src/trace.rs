//! The determinism trace: a 64-bit FNV-1a hash over every client message (with its simulated
//! time), every frame written on a peer link (with its time and bytes) and the final bytes
//! of every log. Two runs of one seed must print
//! the same value, in the same process or in separate ones.

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// A running FNV-1a hash.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(FNV_OFFSET_BASIS)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Debug, Default)]
struct TraceState {
    hash: Fnv,
    entries: u64,
    /// Scratch space for formatting an entry, reused to avoid an allocation per message.
    line: String,
    /// With `--verbose`, entries are also printed.
    echo: bool,
}

/// The trace of a run, shared by the network and the harness.
#[derive(Debug, Clone, Default)]
pub struct Trace(Arc<Mutex<TraceState>>);

impl Trace {
    pub fn new(echo: bool) -> Trace {
        let trace = Trace::default();
        trace.lock().echo = echo;
        trace
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TraceState> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds one entry (a formatted line) to the trace.
    pub fn record(&self, entry: fmt::Arguments<'_>) {
        let mut state = self.lock();
        let TraceState {
            hash,
            entries,
            line,
            echo,
        } = &mut *state;
        line.clear();
        let _ = line.write_fmt(entry);
        hash.write(line.as_bytes());
        hash.write(b"\n");
        *entries += 1;
        if *echo {
            println!("trace: {line}");
        }
    }

    /// Adds an entry of numbers and bytes, unformatted: the cheap form for the many frames
    /// of the peer links.
    pub fn record_raw(&self, words: &[u64], bytes: &[u8]) {
        let mut state = self.lock();
        for word in words {
            state.hash.write(&word.to_le_bytes());
        }
        state.hash.write(bytes);
        state.entries += 1;
    }

    /// Adds raw bytes (a final log) to the trace.
    pub fn record_bytes(&self, label: &str, bytes: &[u8]) {
        let mut state = self.lock();
        state.hash.write(label.as_bytes());
        state.hash.write(&(bytes.len() as u64).to_le_bytes());
        state.hash.write(bytes);
        state.entries += 1;
    }

    /// Whether entries are printed (`--verbose`).
    pub fn echoes(&self) -> bool {
        self.lock().echo
    }

    pub fn hash(&self) -> u64 {
        self.lock().hash.finish()
    }

    pub fn entries(&self) -> u64 {
        self.lock().entries
    }
}
