//! Damage to synced data: a storage fault on the medium, in a sector that a completed sync
//! wrote, of a log segment that recovery reads. A single copy cannot be recovered past it, so
//! recovery must refuse the partition with an error that names the segment and where, never
//! cut it like a torn write (that would drop acknowledged records).
//!
//! What counts as synced is read from the segment as the codec's docs lay it out
//! (`walletd_core::log::codec`, "Sync marks"), not from the codec's verdict: the bytes that a
//! sync mark in the segment vouches for (the first `synced_len` bytes). Only the batch whose
//! sync completed last may lack a mark (a power loss can take the one written after it); its
//! damage cannot be told from a torn write, so it is never chosen.

use std::fmt;
use std::ops::Range;

use rand::seq::index;
use rand::Rng;
use walletd_core::log::codec::{decode_log, RECORD_HEADER_LEN, SYNC_MARK_LEN};
use walletd_core::model::event::Lsn;
use walletd_runtime::storage::segments::{segment_lsn, SegmentWriter};

use super::{Disk, Handle, SimFile, SECTOR_BYTES, SEGMENTS};

/// Most bits one storage fault flips in its sector.
const BIT_FLIPS_MAX: usize = 8;
/// The first byte of a sync mark's body (a record's is its version); see the codec's docs.
const SYNC_MARK_KIND: u8 = 0x80;
/// Bytes of a sync mark's body: kind, synced length, the segment's first lsn.
const SYNC_MARK_BODY_LEN: usize = SYNC_MARK_LEN - RECORD_HEADER_LEN;

/// What a storage fault did to its sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// Bit rot: this many bits flipped.
    BitFlips(usize),
    /// Reads of the sector fail with an I/O error.
    Unreadable,
}

/// One storage fault: where it is and where a refusal must say it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment file damaged.
    pub segment: String,
    pub sector: usize,
    pub kind: DamageKind,
    /// The byte offsets a refusal may name: from where recovery finds the damage (the start
    /// of the first frame it touches, for bit flips, since a checksum says which frame is
    /// bad but not which byte; the sector, for an unreadable one) to the end of the sector.
    pub offsets: Range<u64>,
}

impl Damage {
    /// Whether `message` (a recovery's error) names the damaged segment and a byte offset
    /// within [`Damage::offsets`].
    pub fn named_by(&self, message: &str) -> bool {
        message.contains(&self.segment)
            && byte_offsets(message).any(|offset| self.offsets.contains(&offset))
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.sector * SECTOR_BYTES..(self.sector + 1) * SECTOR_BYTES;
        match self.kind {
            DamageKind::BitFlips(1) => f.write_str("1 bit flipped in")?,
            DamageKind::BitFlips(bits) => write!(f, "{bits} bits flipped in")?,
            DamageKind::Unreadable => f.write_str("unreadable:")?,
        }
        write!(
            f,
            " sector {} (bytes {bytes:?}) of {}; a refusal must name an offset in {:?}",
            self.sector, self.segment, self.offsets
        )
    }
}

/// Every number that follows "byte offset " in `message`.
fn byte_offsets(message: &str) -> impl Iterator<Item = u64> + '_ {
    const NEEDLE: &str = "byte offset ";
    message.match_indices(NEEDLE).filter_map(|(at, _)| {
        let rest = &message[at + NEEDLE.len()..];
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..digits].parse().ok()
    })
}

/// The frames of a segment's valid prefix: where each starts, and how many bytes from the
/// start the sync marks among them vouch for.
struct Frames {
    starts: Vec<usize>,
    vouched_len: usize,
}

impl Frames {
    /// The frames of `bytes`, a segment whose first record is `first_lsn` (`None` if it does
    /// not decode: it is damaged already).
    fn of(bytes: &[u8], first_lsn: Lsn) -> Option<Frames> {
        let valid_len = decode_log(bytes, first_lsn).ok()?.valid_len;
        let mut frames = Frames {
            starts: Vec::new(),
            vouched_len: 0,
        };
        let mut at = 0;
        while at < valid_len {
            let body_len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
            let body_at = at + RECORD_HEADER_LEN;
            let body = &bytes[body_at..body_at + body_len as usize];
            if let Some(synced_len) = synced_len_of_mark(body) {
                frames.vouched_len = frames.vouched_len.max(synced_len);
            }
            frames.starts.push(at);
            at = body_at + body.len();
        }
        assert_eq!(at, valid_len, "valid frames end where the codec stopped");
        Some(frames)
    }

    /// The start of the frame that holds byte `at`.
    fn start_of_frame_holding(&self, at: usize) -> usize {
        let after = self.starts.partition_point(|&start| start <= at);
        self.starts[after - 1]
    }
}

/// The synced length a sync mark's body states, if `body` is a sync mark's.
fn synced_len_of_mark(body: &[u8]) -> Option<usize> {
    if body.len() != SYNC_MARK_BODY_LEN || body[0] != SYNC_MARK_KIND {
        return None;
    }
    let synced_len = u64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
    Some(synced_len as usize)
}

/// A sector that can be damaged: wholly within what a sync mark of its segment vouches for,
/// and synced and intact on the medium.
struct Candidate {
    segment: String,
    sector: usize,
}

/// The damageable sectors of `file`, the segment `name`.
fn candidates(name: &str, file: &SimFile) -> Vec<Candidate> {
    let Some(frames) = segment_lsn(name).and_then(|lsn| Frames::of(&file.data, lsn)) else {
        return Vec::new();
    };
    (0..frames.vouched_len / SECTOR_BYTES)
        .filter(|&sector| file.is_synced_intact(sector))
        .map(|sector| Candidate {
            segment: name.to_string(),
            sector,
        })
        .collect()
}

impl Disk {
    /// Damages one sector of synced data, drawn with `rng` among every segment a recovery now
    /// would read: flips a few of its bits, or with `unreadable` makes it unreadable. `None`
    /// if no sync has vouched for a whole sector yet. Call it only while the partition is
    /// down, and [`Disk::restore_medium`] before it runs again.
    pub fn damage_synced(&self, rng: &mut impl Rng, unreadable: bool) -> Option<Damage> {
        let segments = self.segments_recovery_reads();
        let mut state = self.lock();
        assert!(state.damage.is_none(), "one storage fault at a time");
        let files = &mut state.dir.files;
        let candidates: Vec<Candidate> = segments
            .iter()
            .filter_map(|name| Some(candidates(name, files.get(name)?)))
            .flatten()
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let Candidate { segment, sector } = &candidates[rng.gen_range(0..candidates.len())];
        let file = files.get_mut(segment).expect("a listed segment");
        let end = ((sector + 1) * SECTOR_BYTES) as u64;
        let (kind, from) = if unreadable {
            file.make_unreadable(*sector);
            (DamageKind::Unreadable, sector * SECTOR_BYTES)
        } else {
            let count = rng.gen_range(1..=BIT_FLIPS_MAX);
            let bits = index::sample(rng, SECTOR_BYTES * 8, count).into_vec();
            let first_byte = sector * SECTOR_BYTES + bits.iter().min().expect("a bit") / 8;
            let frames = Frames::of(&file.data, segment_lsn(segment)?).expect("it decoded");
            file.flip_bits(*sector, &bits);
            let from = frames.start_of_frame_holding(first_byte);
            (DamageKind::BitFlips(count), from)
        };
        let damage = Damage {
            segment: segment.clone(),
            sector: *sector,
            kind,
            offsets: from as u64..end,
        };
        state.damage = Some(damage.clone());
        Some(damage)
    }

    /// The segment files a recovery now would read, by the production rule
    /// (`SegmentWriter::recovery_segments`): those after the newest snapshot, which is
    /// always the one recovery takes here (snapshots are written whole).
    fn segments_recovery_reads(&self) -> Vec<String> {
        let (epoch, from_lsn) = {
            let state = self.lock();
            let newest = state.snapshots.last().map_or(0, |(lsn, _)| *lsn);
            (state.epoch, newest)
        };
        let handle = Handle {
            disk: self.clone(),
            epoch,
        };
        let mut writer = SegmentWriter::new(handle, SEGMENTS);
        let segments = writer.recovery_segments(from_lsn).unwrap_or_default();
        segments.into_iter().map(|(_, name)| name).collect()
    }

    /// The storage fault in force: damage injected by [`Disk::damage_synced`] and not yet
    /// restored.
    pub fn damage(&self) -> Option<Damage> {
        self.lock().damage.clone()
    }

    /// Every damaged file restored from a copy, as an operator would: the sectors hold what
    /// their syncs wrote again, and the fault ends. Returns how many sectors were damaged.
    pub fn restore_medium(&self) -> usize {
        let mut state = self.lock();
        state.damage = None;
        state.dir.files.values_mut().map(SimFile::restore).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_must_name_the_segment_and_an_offset_in_range() {
        let damage = Damage {
            segment: "log-00000000000000000001.seg".into(),
            sector: 3,
            kind: DamageKind::Unreadable,
            offsets: 1536..2048,
        };
        let named =
            "partition 2: log log-00000000000000000001.seg is corrupt at byte offset 1600: x";
        assert!(damage.named_by(named));
        assert!(
            !damage.named_by(&named.replace("1600", "2048")),
            "past the sector"
        );
        assert!(
            !damage.named_by(&named.replace("001.seg", "002.seg")),
            "another file"
        );
        assert!(!damage.named_by("partition 2: storage I/O failed: EIO"));
    }
}
