//! The Raft store's framing: a file is a run of checksummed *records*, modelled on the node
//! journal's rounds ([`crate::storage::journal::rounds`]).
//!
//! ```text
//! record := magic "WRFT" | version u8 | kind u8 | zero u16 | seq u64 | synced_len u64
//!           | payload_len u32 | crc32c u32 | payload | zeros to 8
//! ```
//! All integers little-endian. The checksum covers everything from `version` to
//! `payload_len`, and the payload. Records start at multiples of 8, so that a reader looking
//! for records past a bad one needs to try only every eighth offset. `seq` counts records
//! across files, one more each record. `synced_len` says how many bytes of this file were
//! synced when the record was written: it is what vouches for earlier records (as the sync
//! marks of a partition's log do, [`walletd_core::log::codec`]).
//!
//! Where a file ends. Several records may be written between two syncs, and the kernel
//! writes their pages back in any order, so after a power loss a record may be torn while a
//! later one, also unsynced, is whole. So a bad range (a record that does not check out, or
//! zeros where a header would be followed by written bytes) is judged by the records after
//! it:
//! - one of them says the bad range had been synced (`synced_len` past its start): damage to
//!   synced data, an error naming the byte offset;
//! - none does: the torn tail of writes no sync completed. The file ends at the bad range,
//!   and the good records after it are dropped with it (a later persist never survives
//!   without an earlier one).
//!
//! Zeros where a header would be, with nothing but zeros after them, are the end (space a
//! file system extended with zeros). A record whose checksum holds but whose version or kind
//! this build does not know is an error: it was written whole, by something else.

use crc32c::{crc32c, crc32c_append};

use super::codec::LAYOUT_VERSION;

pub const RECORD_MAGIC: [u8; 4] = *b"WRFT";
/// magic, version, kind, zero, seq, synced length, payload length, checksum.
pub const RECORD_HEADER_LEN: usize = 4 + 1 + 1 + 2 + 8 + 8 + 4 + 4;
/// Records start at multiples of this.
pub const RECORD_ALIGN: usize = 8;
/// Largest payload a record may hold; a reader refuses a larger claim as damage without
/// reading that far, and a writer refuses to write one (see [`TooLarge`]).
pub const RECORD_PAYLOAD_MAX: usize = 1 << 30;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The whole durable state ([`super::codec::encode_base`]): the first record of every
    /// file.
    Base,
    /// One persist ([`super::codec::encode_persist`]), applied to what precedes it.
    Persist,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Base => 1,
            Kind::Persist => 2,
        }
    }

    fn of(code: u8) -> Option<Kind> {
        match code {
            1 => Some(Kind::Base),
            2 => Some(Kind::Persist),
            _ => None,
        }
    }
}

/// A payload over [`RECORD_PAYLOAD_MAX`]: nothing was written.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge {
    pub payload_len: usize,
}

/// Appends a record of `kind` to `out`, its payload written by `payload`, padded to
/// [`RECORD_ALIGN`]. `out` must end at a multiple of the alignment; on an error it is left
/// as it was.
pub fn encode_record(
    kind: Kind,
    seq: u64,
    synced_len: u64,
    payload: impl FnOnce(&mut Vec<u8>),
    out: &mut Vec<u8>,
) -> Result<(), TooLarge> {
    encode_raw(LAYOUT_VERSION, kind.code(), seq, synced_len, payload, out)
}

/// [`encode_record`] with any version and kind code, so that tests can write what a later
/// build might.
pub(super) fn encode_raw(
    version: u8,
    kind: u8,
    seq: u64,
    synced_len: u64,
    payload: impl FnOnce(&mut Vec<u8>),
    out: &mut Vec<u8>,
) -> Result<(), TooLarge> {
    assert_eq!(out.len() % RECORD_ALIGN, 0, "records start aligned");
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&[version, kind, 0, 0]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&synced_len.to_le_bytes());
    out.extend_from_slice(&[0; 8]); // length and checksum, filled in below
    payload(out);
    let payload_len = out.len() - start - RECORD_HEADER_LEN;
    if payload_len > RECORD_PAYLOAD_MAX {
        out.truncate(start);
        return Err(TooLarge { payload_len });
    }
    out[start + 24..start + 28].copy_from_slice(&(payload_len as u32).to_le_bytes());
    let crc = record_crc(
        &out[start + 4..start + 28],
        &out[start + RECORD_HEADER_LEN..],
    );
    out[start + 28..start + 32].copy_from_slice(&crc.to_le_bytes());
    out.resize(out.len().next_multiple_of(RECORD_ALIGN), 0);
    Ok(())
}

fn record_crc(header: &[u8], payload: &[u8]) -> u32 {
    crc32c_append(crc32c(header), payload)
}

/// A record read back, its payload still encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord<'a> {
    /// Where it starts in its file.
    pub offset: u64,
    /// The layout of its payload ([`super::codec`]).
    pub version: u8,
    pub kind: Kind,
    pub seq: u64,
    pub synced_len: u64,
    pub payload: &'a [u8],
}

/// A record that checks out, before its version and kind are looked at.
struct Checked<'a> {
    version: u8,
    kind: u8,
    seq: u64,
    synced_len: u64,
    payload: &'a [u8],
    /// Bytes with its padding (fewer if the file ends inside the padding).
    len: usize,
}

/// What lies at an offset of a file.
enum At<'a> {
    Record(Checked<'a>),
    /// Zeros where a header would be, or the end of the file.
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

fn record_at(bytes: &[u8], at: usize) -> At<'_> {
    let rest = &bytes[at..];
    if rest.is_empty() {
        return At::End;
    }
    if rest.len() < RECORD_HEADER_LEN {
        return if rest.iter().all(|&b| b == 0) {
            At::End
        } else {
            At::Bad("a partial record header")
        };
    }
    if rest[..RECORD_HEADER_LEN].iter().all(|&b| b == 0) {
        return At::End;
    }
    if rest[..4] != RECORD_MAGIC {
        return At::Bad("no record starts here");
    }
    let payload_len = read_u32(rest, 24) as usize;
    if payload_len > RECORD_PAYLOAD_MAX || payload_len > rest.len() - RECORD_HEADER_LEN {
        return At::Bad("a record longer than the file");
    }
    let payload = &rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + payload_len];
    if record_crc(&rest[4..28], payload) != read_u32(rest, 28) {
        return At::Bad("record checksum mismatch");
    }
    let len = (RECORD_HEADER_LEN + payload_len).next_multiple_of(RECORD_ALIGN);
    At::Record(Checked {
        version: rest[4],
        kind: rest[5],
        seq: read_u64(rest, 8),
        synced_len: read_u64(rest, 16),
        payload,
        len: len.min(rest.len()),
    })
}

/// A file read back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RaftFile<'a> {
    pub records: Vec<RawRecord<'a>>,
    /// Bytes of whole records with their padding (which may lie past the end of the file);
    /// what follows is zeros or a torn tail.
    pub valid_len: u64,
    /// Bytes after `valid_len` that are not zeros: the torn writes of persists never synced.
    pub torn: bool,
}

/// Why a file cannot be believed.
#[derive(Debug, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub detail: String,
}

/// Reads a whole file (see the module documentation for where it ends).
pub fn read_raft_file(bytes: &[u8]) -> Result<RaftFile<'_>, Damage> {
    let mut file = RaftFile::default();
    let mut at = 0;
    loop {
        match record_at(bytes, at) {
            At::Record(checked) => {
                let len = checked.len;
                let record = accept(checked, at as u64, file.records.last(), true)?;
                file.records.push(record);
                at += len;
            }
            At::End => {
                if !bytes[at..].iter().all(|&b| b == 0) {
                    // Zeros where a header would be, then more bytes: a page of an
                    // unsynced write that never reached the disk, or damage.
                    return judge_bad(bytes, at, "zeros in front of written bytes", file);
                }
                // A file that ends inside the last record's padding holds that record
                // whole: its end is where the padding ends (the zeros are the writer's to
                // put back), so that the next record starts aligned.
                file.valid_len = at.next_multiple_of(RECORD_ALIGN) as u64;
                return Ok(file);
            }
            At::Bad(why) => return judge_bad(bytes, at, why, file),
        }
    }
}

/// The records of a batch the node journal held (see the parent module's "The node
/// journal"): whole records, back to back from offset 0, nothing else. The journal's round
/// checksum already vouches for the bytes, so anything that does not read as records is
/// damage. Their `synced_len`s speak of the file they were written to, not of the batch,
/// and are not checked here.
pub fn read_journaled(bytes: &[u8]) -> Result<Vec<RawRecord<'_>>, Damage> {
    let mut records: Vec<RawRecord<'_>> = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match record_at(bytes, at) {
            At::Record(checked) => {
                let len = checked.len;
                records.push(accept(checked, at as u64, records.last(), false)?);
                at += len;
            }
            At::End => break,
            At::Bad(why) => {
                return Err(Damage {
                    offset: at as u64,
                    detail: format!("a journaled batch of records does not read back: {why}"),
                })
            }
        }
    }
    if !bytes[at..].iter().all(|&b| b == 0) {
        return Err(Damage {
            offset: at as u64,
            detail: "a journaled batch of records has bytes after its end".into(),
        });
    }
    Ok(records)
}

/// A record that checks out at `offset`, after `last`: refused if this build does not know
/// its version or kind, or if it does not follow `last` as a writer would have written it.
/// `in_file`: `offset` is where it lies in the file it was written to, and its
/// `synced_len` cannot claim more bytes than precede it.
fn accept<'a>(
    checked: Checked<'a>,
    offset: u64,
    last: Option<&RawRecord>,
    in_file: bool,
) -> Result<RawRecord<'a>, Damage> {
    let damage = |detail: String| Err(Damage { offset, detail });
    if !(1..=LAYOUT_VERSION).contains(&checked.version) {
        return damage(format!(
            "record {} has layout version {}; this build reads versions 1 to {LAYOUT_VERSION}",
            checked.seq, checked.version
        ));
    }
    let Some(kind) = Kind::of(checked.kind) else {
        return damage(format!(
            "record {} is of unknown kind {}",
            checked.seq, checked.kind
        ));
    };
    if let Some(last) = last {
        if checked.seq != last.seq + 1 {
            return damage(format!(
                "record {} follows record {}: records of a file are consecutive",
                checked.seq, last.seq
            ));
        }
    }
    if in_file && checked.synced_len > offset {
        return damage(format!(
            "record {} says {} bytes were synced, but only {offset} precede it",
            checked.seq, checked.synced_len
        ));
    }
    Ok(RawRecord {
        offset,
        version: checked.version,
        kind,
        seq: checked.seq,
        synced_len: checked.synced_len,
        payload: checked.payload,
    })
}

/// A bad range at `at`: damage if a later record says it was synced, else a torn tail.
fn judge_bad<'a>(
    bytes: &'a [u8],
    at: usize,
    why: &str,
    mut file: RaftFile<'a>,
) -> Result<RaftFile<'a>, Damage> {
    let mut probe = at + RECORD_ALIGN;
    while probe + RECORD_HEADER_LEN <= bytes.len() {
        if let At::Record(later) = record_at(bytes, probe) {
            let after_last = file.records.last().is_none_or(|last| later.seq > last.seq);
            if after_last && later.synced_len > at as u64 {
                return Err(Damage {
                    offset: at as u64,
                    detail: format!(
                        "{why}, and record {} at byte {probe}, written later, says the first \
                         {} bytes were synced: damage to synced data",
                        later.seq, later.synced_len
                    ),
                });
            }
        }
        probe += RECORD_ALIGN;
    }
    file.valid_len = at as u64;
    file.torn = true;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records `seqs`, each vouching for everything before it when `synced` (a sync after
    /// every record), else for nothing.
    fn records(seqs: std::ops::RangeInclusive<u64>, synced: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for seq in seqs {
            let synced_len = if synced { out.len() as u64 } else { 0 };
            let payload = vec![seq as u8; 3 + seq as usize];
            encode_record(
                Kind::Persist,
                seq,
                synced_len,
                |out| out.extend(payload),
                &mut out,
            )
            .unwrap();
        }
        out
    }

    #[test]
    fn records_read_back_as_written_and_zeros_end_the_file() {
        let mut bytes = records(3..=6, true);
        let written = bytes.len() as u64;
        bytes.resize(bytes.len() + 4096, 0);
        let file = read_raft_file(&bytes).unwrap();
        assert_eq!(file.valid_len, written);
        assert!(!file.torn);
        let seqs: Vec<u64> = file.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [3, 4, 5, 6]);
        assert_eq!(file.records[1].payload, [4; 7]);
        assert_eq!(file.records[1].offset, 40);
        assert_eq!(file.records[1].synced_len, 40);
    }

    #[test]
    fn a_bad_record_is_damage_only_if_a_later_record_vouches_for_it() {
        let second = records(1..=1, true).len();
        for synced in [true, false] {
            let mut bytes = records(1..=4, synced);
            bytes[second + RECORD_HEADER_LEN + 1] ^= 0x04;
            let read = read_raft_file(&bytes);
            if synced {
                let damage = read.unwrap_err();
                assert_eq!(damage.offset, second as u64);
                assert!(damage.detail.contains("checksum"), "{}", damage.detail);
            } else {
                // Records 3 and 4 are whole but were never synced: dropped with record 2.
                let file = read.unwrap();
                assert!(file.torn);
                assert_eq!(file.valid_len, second as u64);
                assert_eq!(file.records.len(), 1);
            }
        }
    }

    #[test]
    fn a_file_that_ends_inside_the_last_padding_holds_that_record_whole() {
        // Record 2 is 37 bytes from byte 40: three bytes of padding, two of them missing.
        let whole = records(1..=2, true);
        assert_eq!(whole.len(), 80);
        let file = read_raft_file(&whole[..78]).unwrap();
        assert_eq!(file.records.len(), 2);
        assert_eq!(file.valid_len, whole.len() as u64);
        assert!(!file.torn);
    }

    #[test]
    fn a_torn_last_record_is_cut() {
        let whole = records(1..=3, true);
        let last = records(1..=2, true).len();
        let mut torn = whole.clone();
        torn.truncate(last + 13);
        torn.resize(whole.len() + 512, 0);
        let file = read_raft_file(&torn).unwrap();
        assert!(file.torn);
        assert_eq!(file.valid_len, last as u64);
        assert_eq!(file.records.len(), 2);
    }

    #[test]
    fn unknown_versions_and_kinds_and_gaps_are_errors() {
        let mut bytes = records(1..=1, true);
        let at = bytes.len() as u64;
        encode_raw(LAYOUT_VERSION + 1, 2, 2, at, |_| {}, &mut bytes).unwrap();
        let damage = read_raft_file(&bytes).unwrap_err();
        assert_eq!(damage.offset, at);
        assert!(
            damage.detail.contains("layout version 3"),
            "{}",
            damage.detail
        );

        let mut bytes = records(1..=1, true);
        encode_raw(LAYOUT_VERSION, 9, 2, at, |_| {}, &mut bytes).unwrap();
        assert!(read_raft_file(&bytes)
            .unwrap_err()
            .detail
            .contains("unknown kind 9"));

        let mut bytes = records(1..=1, true);
        bytes.extend(records(3..=3, true));
        assert!(read_raft_file(&bytes)
            .unwrap_err()
            .detail
            .contains("consecutive"));
    }
}
