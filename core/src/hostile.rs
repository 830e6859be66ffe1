//! Hostile bytes for the decoders' property tests: valid encodings damaged the way disks and
//! networks damage them (flipped bits, cut short, bytes inserted or overwritten), and
//! checksums made right again so that the damage reaches the field decoders behind them.
//!
//! Every decoder of bytes from disk or the network must turn any input into a value or an
//! error: never a panic, and never an allocation sized by a count it has not checked
//! against the bytes that are there. The fuzz targets in `fuzz/` check the same properties
//! for longer (see `fuzz/README.md`).

use crc32c::crc32c;
use proptest::prelude::*;
use proptest::sample::Index;

/// One kind of damage.
#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    Flip { at: Index, bit: u8 },
    Truncate { at: Index },
    Insert { at: Index, bytes: Vec<u8> },
    Overwrite { at: Index, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let some_bytes = || prop::collection::vec(any::<u8>(), 1..9);
    prop_oneof![
        4 => (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        1 => any::<Index>().prop_map(|at| Mutation::Truncate { at }),
        2 => (any::<Index>(), some_bytes()).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        2 => (any::<Index>(), some_bytes())
            .prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes }),
    ]
}

/// One to three kinds of damage, applied in order.
pub(crate) fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..4)
}

/// `bytes` with `mutations` applied.
pub(crate) fn mutated(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        match mutation {
            Mutation::Flip { at, bit } if !bytes.is_empty() => {
                let i = at.index(bytes.len());
                bytes[i] ^= 1 << bit;
            }
            Mutation::Truncate { at } => bytes.truncate(at.index(bytes.len() + 1)),
            Mutation::Insert {
                at,
                bytes: inserted,
            } => {
                let i = at.index(bytes.len() + 1);
                bytes.splice(i..i, inserted.iter().copied());
            }
            Mutation::Overwrite { at, bytes: over } if !bytes.is_empty() => {
                let i = at.index(bytes.len());
                let end = (i + over.len()).min(bytes.len());
                bytes[i..end].copy_from_slice(&over[..end - i]);
            }
            Mutation::Flip { .. } | Mutation::Overwrite { .. } => {}
        }
    }
    bytes
}

pub(crate) use crate::log::codec::reseal_frames;

/// `bytes` with a right trailing CRC32C over everything before it: the framing of snapshots
/// and chunk files. Unchanged if shorter than a checksum.
pub(crate) fn reseal_trailer(bytes: &[u8]) -> Vec<u8> {
    let Some(len) = bytes.len().checked_sub(4) else {
        return bytes.to_vec();
    };
    let mut out = bytes[..len].to_vec();
    out.extend_from_slice(&crc32c(&out).to_le_bytes());
    out
}
