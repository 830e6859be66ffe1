//! The payloads of the Raft store's records: raft-rs's types in a layout of this crate's own,
//! so that the disk format changes only when this file says so, never with raft-rs's
//! protobuf definitions.
//!
//! ```text
//! base       := hard_state | conf_state | entries
//! persist    := has_hard_state u8 (0 or 1) | hard_state if 1 | entries
//! hard_state := term u64 | vote u64 | commit u64
//! conf_state := voters_len u32 | voter u64 * voters_len | learners_len u32 | learner u64 * ..
//! entries    := entries_len u64 | entry * entries_len        (consecutive indexes)
//! entry      := index u64 | term u64 | entry_type u8 | data_len u32 | data
//!               | context_len u32 | context
//! ```
//! All integers little-endian. This is layout version [`LAYOUT_VERSION`], which the record
//! header carries ([`super::records`]); a change of layout is a new version, and the old one
//! stays readable.
//!
//! Decoding trusts nothing: a record's checksum says its bytes are the ones written, not
//! that a writer of this layout wrote them, so every length is checked against what is left
//! before anything is allocated.

use bytes::Bytes;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState};

use walletd_core::replica::DurableRaft;

/// The payload layout this build writes and reads.
pub const LAYOUT_VERSION: u8 = 1;

/// Bytes of an entry with empty data and context: a claimed entry count larger than what is
/// left divided by this is refused before anything is allocated.
const ENTRY_LEN_MIN: usize = 8 + 8 + 1 + 4 + 4;

/// A persist as a record holds it: what [`DurableRaft::persist`] applies.
#[derive(Debug, Clone, PartialEq)]
pub struct PersistBody {
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
}

pub fn encode_base(state: &DurableRaft, out: &mut Vec<u8>) {
    encode_hard_state(&state.hard_state, out);
    encode_conf_state(&state.conf_state, out);
    encode_entries(&state.entries, out);
}

pub fn encode_persist(hard_state: Option<&HardState>, entries: &[Entry], out: &mut Vec<u8>) {
    match hard_state {
        Some(hard_state) => {
            out.push(1);
            encode_hard_state(hard_state, out);
        }
        None => out.push(0),
    }
    encode_entries(entries, out);
}

fn encode_hard_state(hard_state: &HardState, out: &mut Vec<u8>) {
    out.extend_from_slice(&hard_state.term.to_le_bytes());
    out.extend_from_slice(&hard_state.vote.to_le_bytes());
    out.extend_from_slice(&hard_state.commit.to_le_bytes());
}

fn encode_conf_state(conf_state: &ConfState, out: &mut Vec<u8>) {
    // Joint consensus would need the outgoing voters too; replicas never change membership
    // yet, so these are always empty, and a layout that drops them must not be written
    // once they are not.
    assert!(
        conf_state.voters_outgoing.is_empty()
            && conf_state.learners_next.is_empty()
            && !conf_state.auto_leave,
        "layout {LAYOUT_VERSION} holds no joint configuration"
    );
    for ids in [&conf_state.voters, &conf_state.learners] {
        let len = u32::try_from(ids.len()).expect("a group has far fewer than 2^32 members");
        out.extend_from_slice(&len.to_le_bytes());
        for id in ids {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
}

fn encode_entries(entries: &[Entry], out: &mut Vec<u8>) {
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (i, entry) in entries.iter().enumerate() {
        assert!(
            i == 0 || entry.index == entries[i - 1].index + 1,
            "entries are written with consecutive indexes"
        );
        out.extend_from_slice(&entry.index.to_le_bytes());
        out.extend_from_slice(&entry.term.to_le_bytes());
        out.push(entry_type_code(entry.entry_type));
        for bytes in [&entry.data, &entry.context] {
            let len = u32::try_from(bytes.len()).expect("an entry is far smaller than 4 GiB");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(bytes);
        }
    }
}

/// The stable code of an entry type: these numbers are on disk, whatever raft-rs numbers
/// its enum.
fn entry_type_code(entry_type: EntryType) -> u8 {
    match entry_type {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    }
}

fn entry_type_of(code: u8) -> Option<EntryType> {
    match code {
        0 => Some(EntryType::EntryNormal),
        1 => Some(EntryType::EntryConfChange),
        2 => Some(EntryType::EntryConfChangeV2),
        _ => None,
    }
}

/// Reads a payload front to back; every read names what it wanted when the bytes run out.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], String> {
        if self.bytes.len() - self.at < len {
            return Err(format!(
                "the payload ends inside {what} (byte {} of {})",
                self.at,
                self.bytes.len()
            ));
        }
        let taken = &self.bytes[self.at..self.at + len];
        self.at += len;
        Ok(taken)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let bytes = self.take(4, what)?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let bytes = self.take(8, what)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn finish(self) -> Result<(), String> {
        match self.left() {
            0 => Ok(()),
            left => Err(format!("{left} bytes follow the payload's last field")),
        }
    }
}

pub fn decode_base(payload: &[u8]) -> Result<DurableRaft, String> {
    let mut reader = Reader {
        bytes: payload,
        at: 0,
    };
    let hard_state = decode_hard_state(&mut reader)?;
    let conf_state = decode_conf_state(&mut reader)?;
    let entries = decode_entries(&mut reader)?;
    reader.finish()?;
    if let Some(first) = entries.first() {
        if first.index != 1 {
            return Err(format!(
                "a base record's entries start at index {}, not 1",
                first.index
            ));
        }
    }
    Ok(DurableRaft {
        hard_state,
        conf_state,
        entries,
    })
}

pub fn decode_persist(payload: &[u8]) -> Result<PersistBody, String> {
    let mut reader = Reader {
        bytes: payload,
        at: 0,
    };
    let hard_state = match reader.u8("the hard state flag")? {
        0 => None,
        1 => Some(decode_hard_state(&mut reader)?),
        flag => return Err(format!("hard state flag {flag}, not 0 or 1")),
    };
    let entries = decode_entries(&mut reader)?;
    reader.finish()?;
    Ok(PersistBody {
        hard_state,
        entries,
    })
}

fn decode_hard_state(reader: &mut Reader) -> Result<HardState, String> {
    Ok(HardState {
        term: reader.u64("the hard state's term")?,
        vote: reader.u64("the hard state's vote")?,
        commit: reader.u64("the hard state's commit")?,
        ..HardState::default()
    })
}

fn decode_conf_state(reader: &mut Reader) -> Result<ConfState, String> {
    let mut lists = [Vec::new(), Vec::new()];
    for (list, what) in lists.iter_mut().zip(["voters", "learners"]) {
        let len = reader.u32(what)? as usize;
        if len > reader.left() / 8 {
            return Err(format!("{len} {what} claimed, more than the payload holds"));
        }
        for _ in 0..len {
            list.push(reader.u64(what)?);
        }
    }
    let [voters, learners] = lists;
    Ok(ConfState::from((voters, learners)))
}

fn decode_entries(reader: &mut Reader) -> Result<Vec<Entry>, String> {
    let len = reader.u64("the entry count")?;
    if len > (reader.left() / ENTRY_LEN_MIN) as u64 {
        return Err(format!(
            "{len} entries claimed, more than the payload holds"
        ));
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(len as usize);
    for _ in 0..len {
        let index = reader.u64("an entry's index")?;
        let term = reader.u64("an entry's term")?;
        let code = reader.u8("an entry's type")?;
        let entry_type =
            entry_type_of(code).ok_or_else(|| format!("entry {index} has unknown type {code}"))?;
        let data_len = reader.u32("an entry's data length")? as usize;
        let data = Bytes::copy_from_slice(reader.take(data_len, "an entry's data")?);
        let context_len = reader.u32("an entry's context length")? as usize;
        let context = Bytes::copy_from_slice(reader.take(context_len, "an entry's context")?);
        let expected = entries.last().map_or(index, |last| last.index + 1);
        if index == 0 || index != expected {
            return Err(format!(
                "entry index {index} where {expected} was expected (indexes start at 1 and \
                 are consecutive)"
            ));
        }
        entries.push(Entry {
            entry_type,
            term,
            index,
            data,
            context,
            ..Entry::default()
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: Bytes::copy_from_slice(data),
            context: Bytes::from_static(b"ctx"),
            entry_type: EntryType::EntryConfChangeV2,
            ..Entry::default()
        }
    }

    #[test]
    fn base_and_persist_payloads_read_back_as_written() {
        let state = DurableRaft {
            hard_state: HardState {
                term: 7,
                vote: 3,
                commit: 2,
                ..HardState::default()
            },
            conf_state: ConfState::from((vec![1, 2, 3], vec![4])),
            entries: vec![entry(1, 1, b""), entry(2, 7, b"batch")],
        };
        let mut out = Vec::new();
        encode_base(&state, &mut out);
        assert_eq!(decode_base(&out).unwrap(), state);

        let mut out = Vec::new();
        encode_persist(Some(&state.hard_state), &state.entries[1..], &mut out);
        let body = decode_persist(&out).unwrap();
        assert_eq!(body.hard_state.as_ref(), Some(&state.hard_state));
        assert_eq!(body.entries, state.entries[1..]);
    }

    /// The layout is pinned: these bytes are what version 1 means on disk.
    #[test]
    fn a_persist_has_the_documented_layout() {
        let mut out = Vec::new();
        encode_persist(None, &[entry(9, 4, b"ab")], &mut out);
        let mut expected = vec![0];
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(&9u64.to_le_bytes());
        expected.extend_from_slice(&4u64.to_le_bytes());
        expected.push(2);
        expected.extend_from_slice(&2u32.to_le_bytes());
        expected.extend_from_slice(b"ab");
        expected.extend_from_slice(&3u32.to_le_bytes());
        expected.extend_from_slice(b"ctx");
        assert_eq!(out, expected);
    }

    #[test]
    fn payloads_that_claim_more_than_they_hold_or_skip_an_index_are_refused() {
        let mut out = Vec::new();
        encode_persist(None, &[entry(9, 4, b"ab"), entry(10, 4, b"")], &mut out);
        assert!(decode_persist(&out[..out.len() - 1])
            .unwrap_err()
            .contains("ends inside"));
        let mut huge = out.clone();
        huge[1..9].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_persist(&huge).unwrap_err().contains("claimed"));
        let mut skipped = out.clone();
        let second = 1 + 8 + (8 + 8 + 1 + 4 + 2 + 4 + 3);
        skipped[second..second + 8].copy_from_slice(&11u64.to_le_bytes());
        assert!(decode_persist(&skipped)
            .unwrap_err()
            .contains("consecutive"));
        let mut typed = out;
        typed[1 + 8 + 16] = 9;
        assert!(decode_persist(&typed).unwrap_err().contains("unknown type"));
    }
}
