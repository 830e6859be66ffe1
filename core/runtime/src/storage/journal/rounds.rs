//! The journal's bytes: a file is a run of *rounds*, one per group commit of the node, each
//! holding the batches (frames) that the node's partitions handed in for that commit.
//!
//! ```text
//! round := magic "WJRN" | seq u64 | payload_len u32 | crc32c u32 | payload | zeros to 8
//! payload := frame*
//! frame := partition u32 | first_lsn u64 | len u32 | record bytes (as in a log segment)
//! ```
//! All integers little-endian. The checksum covers `seq`, `payload_len` and the payload.
//! Rounds start at multiples of 8, so that a reader looking for rounds past a bad one
//! needs to try only every eighth offset.
//!
//! Where a file ends: the journal writes round `n + 1` only after round `n` was synced, so a
//! bad round with a good round after it is damage to synced bytes (an error), while a bad
//! round with nothing good after it is the torn write of a commit that never completed (its
//! batches were never acknowledged: cut). A file is preallocated with zeros: a header of
//! zeros is the end.

use crc32c::{crc32c, crc32c_append};

use walletd_core::model::event::Lsn;
use walletd_core::model::partition::PartitionId;

pub const ROUND_MAGIC: [u8; 4] = *b"WJRN";
/// magic, seq, payload length, checksum.
pub const ROUND_HEADER_LEN: usize = 4 + 8 + 4 + 4;
/// partition, first lsn, length.
pub const FRAME_HEADER_LEN: usize = 4 + 8 + 4;
/// Rounds start at multiples of this.
pub const ROUND_ALIGN: usize = 8;
/// Largest payload a round may claim; a reader refuses a larger claim as damage without
/// reading that far.
pub const ROUND_PAYLOAD_MAX: usize = 1 << 30;

/// One partition's batch in a round, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub partition: PartitionId,
    pub first_lsn: Lsn,
    pub bytes: Vec<u8>,
}

/// A round read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    pub seq: u64,
    pub frames: Vec<Frame>,
}

/// Appends round `seq` holding `frames` to `out`, padded to [`ROUND_ALIGN`]. `out` must end
/// at a multiple of the alignment.
pub fn encode_round<'a>(
    seq: u64,
    frames: impl IntoIterator<Item = (PartitionId, Lsn, &'a [u8])>,
    out: &mut Vec<u8>,
) {
    assert_eq!(out.len() % ROUND_ALIGN, 0, "rounds start aligned");
    let start = out.len();
    out.extend_from_slice(&ROUND_MAGIC);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&[0; 8]); // length and checksum, filled in below
    for (partition, first_lsn, bytes) in frames {
        out.extend_from_slice(&partition.to_le_bytes());
        out.extend_from_slice(&first_lsn.to_le_bytes());
        let len = u32::try_from(bytes.len()).expect("a batch is far smaller than 4 GiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(bytes);
    }
    let payload_len = out.len() - start - ROUND_HEADER_LEN;
    assert!(
        payload_len <= ROUND_PAYLOAD_MAX,
        "a round stays under its limit"
    );
    out[start + 12..start + 16].copy_from_slice(&(payload_len as u32).to_le_bytes());
    let crc = round_crc(
        &out[start + 4..start + 16],
        &out[start + ROUND_HEADER_LEN..],
    );
    out[start + 16..start + 20].copy_from_slice(&crc.to_le_bytes());
    out.resize(out.len().next_multiple_of(ROUND_ALIGN), 0);
}

fn round_crc(seq_and_len: &[u8], payload: &[u8]) -> u32 {
    crc32c_append(crc32c(seq_and_len), payload)
}

/// What lies at an offset of a journal file.
#[derive(Debug, PartialEq, Eq)]
enum At {
    /// A whole, intact round, `len` bytes with its padding.
    Round(Round, usize),
    /// Zeros (preallocated space) or the end of the file: the end of the journal.
    End,
    /// Anything else.
    Bad(&'static str),
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn round_at(bytes: &[u8], at: usize) -> At {
    let rest = &bytes[at..];
    if rest.is_empty() {
        return At::End;
    }
    if rest.len() < ROUND_HEADER_LEN {
        return if rest.iter().all(|&b| b == 0) {
            At::End
        } else {
            At::Bad("a partial round header")
        };
    }
    if rest[..ROUND_HEADER_LEN].iter().all(|&b| b == 0) {
        return At::End;
    }
    if rest[..4] != ROUND_MAGIC {
        return At::Bad("no round starts here");
    }
    let payload_len = read_u32(rest, 12) as usize;
    if payload_len > ROUND_PAYLOAD_MAX || payload_len > rest.len() - ROUND_HEADER_LEN {
        return At::Bad("a round longer than the file");
    }
    let payload = &rest[ROUND_HEADER_LEN..ROUND_HEADER_LEN + payload_len];
    if round_crc(&rest[4..16], payload) != read_u32(rest, 16) {
        return At::Bad("round checksum mismatch");
    }
    let mut frames = Vec::new();
    let mut p = 0;
    while p < payload.len() {
        if payload.len() - p < FRAME_HEADER_LEN {
            return At::Bad("a partial frame header in a checksummed round");
        }
        let len = read_u32(payload, p + 12) as usize;
        let start = p + FRAME_HEADER_LEN;
        if len > payload.len() - start {
            return At::Bad("a frame longer than its round");
        }
        frames.push(Frame {
            partition: read_u32(payload, p),
            first_lsn: read_u64(payload, p + 4),
            bytes: payload[start..start + len].to_vec(),
        });
        p = start + len;
    }
    let len = (ROUND_HEADER_LEN + payload_len).next_multiple_of(ROUND_ALIGN);
    let round = Round {
        seq: read_u64(rest, 4),
        frames,
    };
    At::Round(round, len.min(rest.len()))
}

/// A journal file read back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct JournalFile {
    pub rounds: Vec<Round>,
    /// Bytes of whole rounds; what follows is zeros or a torn round.
    pub valid_len: u64,
    /// Bytes after `valid_len` that are not zeros: the torn write of an unfinished commit.
    pub torn: bool,
}

/// Why a journal file cannot be believed.
#[derive(Debug, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub detail: String,
}

/// Reads a whole journal file (see the module documentation for where it ends).
pub fn read_journal_file(bytes: &[u8]) -> Result<JournalFile, Damage> {
    let mut file = JournalFile::default();
    let mut at = 0;
    loop {
        match round_at(bytes, at) {
            At::Round(round, len) => {
                if let Some(last) = file.rounds.last() {
                    if round.seq != last.seq + 1 {
                        return Err(Damage {
                            offset: at as u64,
                            detail: format!(
                                "round {} follows round {}: rounds of a file are consecutive",
                                round.seq, last.seq
                            ),
                        });
                    }
                }
                file.rounds.push(round);
                at += len;
            }
            At::End => {
                if !bytes[at..].iter().all(|&b| b == 0) {
                    // Zeros where a header would be, then more bytes: a torn write that
                    // left a page of zeros in front of later pages, or damage.
                    return judge_bad(bytes, at, "zeros in front of written bytes", file);
                }
                file.valid_len = at as u64;
                return Ok(file);
            }
            At::Bad(why) => return judge_bad(bytes, at, why, file),
        }
    }
}

/// A bad range at `at`: damage if a good round follows it, else a torn tail.
fn judge_bad(
    bytes: &[u8],
    at: usize,
    why: &str,
    mut file: JournalFile,
) -> Result<JournalFile, Damage> {
    let mut probe = at + ROUND_ALIGN;
    while probe + ROUND_HEADER_LEN <= bytes.len() {
        if let At::Round(round, _) = round_at(bytes, probe) {
            let after_last = file.rounds.last().is_none_or(|last| round.seq > last.seq);
            if after_last {
                return Err(Damage {
                    offset: at as u64,
                    detail: format!(
                        "{why}, and round {} after it was written later, so this range \
                         was synced: damaged",
                        round.seq
                    ),
                });
            }
        }
        probe += ROUND_ALIGN;
    }
    file.valid_len = at as u64;
    file.torn = true;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(seqs: std::ops::RangeInclusive<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        for seq in seqs {
            let a = vec![seq as u8; 5 + seq as usize];
            let b = [7u8; 3];
            encode_round(seq, [(1, seq * 10, &a[..]), (4, seq, &b[..])], &mut out);
        }
        out
    }

    #[test]
    fn rounds_read_back_as_written_and_zeros_end_the_file() {
        let mut bytes = rounds(3..=6);
        let written = bytes.len() as u64;
        bytes.resize(bytes.len() + 4096, 0);
        let file = read_journal_file(&bytes).unwrap();
        assert_eq!(file.valid_len, written);
        assert!(!file.torn);
        assert_eq!(
            file.rounds.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [3, 4, 5, 6]
        );
        assert_eq!(
            file.rounds[1].frames,
            [
                Frame {
                    partition: 1,
                    first_lsn: 40,
                    bytes: vec![4; 9]
                },
                Frame {
                    partition: 4,
                    first_lsn: 4,
                    bytes: vec![7; 3]
                }
            ]
        );
    }

    #[test]
    fn a_torn_last_round_is_cut_and_damage_before_a_later_round_is_an_error() {
        let whole = rounds(1..=4);
        let last_start = rounds(1..=3).len();
        // The last round half written, the rest of the file preallocated zeros.
        let mut torn = whole.clone();
        torn.truncate(last_start + 10);
        torn.resize(whole.len() + 512, 0);
        let file = read_journal_file(&torn).unwrap();
        assert!(file.torn);
        assert_eq!(file.valid_len, last_start as u64);
        assert_eq!(file.rounds.len(), 3);
        // A flipped bit in round 2, with rounds 3 and 4 intact after it: synced data.
        let second_start = rounds(1..=1).len();
        let mut damaged = whole.clone();
        damaged[second_start + ROUND_HEADER_LEN + 2] ^= 0x10;
        let damage = read_journal_file(&damaged).unwrap_err();
        assert_eq!(damage.offset, second_start as u64);
        assert!(damage.detail.contains("checksum"), "{}", damage.detail);
        // The same flip in the last round: nothing written after it, so it is a torn tail.
        let mut last_flipped = whole;
        last_flipped[last_start + ROUND_HEADER_LEN + 2] ^= 0x10;
        let file = read_journal_file(&last_flipped).unwrap();
        assert!(file.torn);
        assert_eq!(file.rounds.len(), 3);
    }

    #[test]
    fn rounds_out_of_order_and_lengths_past_the_end_are_refused() {
        let mut bytes = rounds(1..=1);
        bytes.extend(rounds(3..=3));
        assert!(read_journal_file(&bytes)
            .unwrap_err()
            .detail
            .contains("consecutive"));
        let mut long = rounds(1..=1);
        long[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        let file = read_journal_file(&long).unwrap();
        assert!(file.torn && file.rounds.is_empty());
    }
}
