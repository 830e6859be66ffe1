//! The payloads of the Raft store's records: raft-rs's types in a layout of this crate's own,
//! so that the disk format changes only when this file says so, never with raft-rs's
//! protobuf definitions.
//!
//! ```text
//! version 2 (written):
//! base       := id u64 | hard_state | conf_state | conf_index u64 | log_start | entries
//! persist    := flags u8 (1: hard state, 2: members, 4: snapshot, 8: compaction)
//!               | hard_state if 1 | conf_state conf_index u64 if 2 | log_start if 4
//!               | log_start if 8 | entries
//! log_start  := index u64 | term u64 | lsn u64   (the entries before the log's first)
//! conf_state := ids (voters) | ids (learners) | ids (outgoing voters) | ids (next learners)
//!               | auto_leave u8
//! version 1 (read; written before membership changes):
//! base       := hard_state | ids (voters) | ids (learners) | entries
//! persist    := has_hard_state u8 (0 or 1) | hard_state if 1 | entries
//! both:
//! hard_state := term u64 | vote u64 | commit u64
//! ids        := len u32 | id u64 * len
//! entries    := entries_len u64 | entry * entries_len        (consecutive indexes)
//! entry      := index u64 | term u64 | entry_type u8 | data_len u32 | data
//!               | context_len u32 | context
//! ```
//! All integers little-endian. The record header carries the version
//! ([`super::records`]); a change of layout is a new version, and the old ones stay
//! readable. A version 1 base has no id (0: its node's first incarnation), its members
//! as of index 0, and a log that starts at index 1.
//!
//! Decoding trusts nothing: a record's checksum says its bytes are the ones written, not
//! that a writer of this layout wrote them, so every length is checked against what is left
//! before anything is allocated.

use bytes::Bytes;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState};

use walletd_core::replica::{AppliedConf, DurableRaft, LogStart, Persist};

/// The payload layout this build writes and reads.
pub const LAYOUT_VERSION: u8 = 2;

/// Bytes of an entry with empty data and context: a claimed entry count larger than what is
/// left divided by this is refused before anything is allocated.
const ENTRY_LEN_MIN: usize = 8 + 8 + 1 + 4 + 4;

/// A persist as a record holds it: what [`DurableRaft::persist`] applies.
#[derive(Debug, Clone, PartialEq)]
pub struct PersistBody {
    pub hard_state: Option<HardState>,
    pub conf: Option<AppliedConf>,
    pub snapshot: Option<LogStart>,
    pub compact: Option<LogStart>,
    pub entries: Vec<Entry>,
}

const HAS_HARD_STATE: u8 = 1;
const HAS_CONF: u8 = 2;
const HAS_SNAPSHOT: u8 = 4;
const HAS_COMPACT: u8 = 8;

fn encode_log_start(start: &LogStart, out: &mut Vec<u8>) {
    for field in [start.index, start.term, start.lsn] {
        out.extend_from_slice(&field.to_le_bytes());
    }
}

fn decode_log_start(reader: &mut Reader) -> Result<LogStart, String> {
    Ok(LogStart {
        index: reader.u64("the log start's index")?,
        term: reader.u64("the log start's term")?,
        lsn: reader.u64("the log start's lsn")?,
    })
}

pub fn encode_base(state: &DurableRaft, out: &mut Vec<u8>) {
    out.extend_from_slice(&state.id.to_le_bytes());
    encode_hard_state(&state.hard_state, out);
    encode_conf_state(&state.conf_state, out);
    out.extend_from_slice(&state.conf_index.to_le_bytes());
    encode_log_start(&state.log_start, out);
    encode_entries(&state.entries, out);
}

pub fn encode_persist(persist: &Persist, out: &mut Vec<u8>) {
    let mut flags = 0;
    if persist.hard_state.is_some() {
        flags |= HAS_HARD_STATE;
    }
    if persist.conf.is_some() {
        flags |= HAS_CONF;
    }
    if persist.snapshot.is_some() {
        flags |= HAS_SNAPSHOT;
    }
    if persist.compact.is_some() {
        flags |= HAS_COMPACT;
    }
    out.push(flags);
    if let Some(hard_state) = &persist.hard_state {
        encode_hard_state(hard_state, out);
    }
    if let Some(conf) = &persist.conf {
        encode_conf_state(&conf.conf_state, out);
        out.extend_from_slice(&conf.index.to_le_bytes());
    }
    for start in [&persist.snapshot, &persist.compact].into_iter().flatten() {
        encode_log_start(start, out);
    }
    encode_entries(&persist.entries, out);
}

fn encode_hard_state(hard_state: &HardState, out: &mut Vec<u8>) {
    out.extend_from_slice(&hard_state.term.to_le_bytes());
    out.extend_from_slice(&hard_state.vote.to_le_bytes());
    out.extend_from_slice(&hard_state.commit.to_le_bytes());
}

fn encode_conf_state(conf_state: &ConfState, out: &mut Vec<u8>) {
    let lists = [
        &conf_state.voters,
        &conf_state.learners,
        &conf_state.voters_outgoing,
        &conf_state.learners_next,
    ];
    for ids in lists {
        let len = u32::try_from(ids.len()).expect("a group has far fewer than 2^32 members");
        out.extend_from_slice(&len.to_le_bytes());
        for id in ids {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    out.push(u8::from(conf_state.auto_leave));
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

/// A base record's payload of layout `version`.
pub fn decode_base(version: u8, payload: &[u8]) -> Result<DurableRaft, String> {
    let mut reader = Reader {
        bytes: payload,
        at: 0,
    };
    let id = if version >= 2 {
        reader.u64("the replica id")?
    } else {
        0
    };
    let hard_state = decode_hard_state(&mut reader)?;
    let conf_state = decode_conf_state(version, &mut reader)?;
    let (conf_index, log_start) = if version >= 2 {
        let conf_index = reader.u64("the members' index")?;
        (conf_index, decode_log_start(&mut reader)?)
    } else {
        (0, LogStart::default())
    };
    let entries = decode_entries(&mut reader)?;
    reader.finish()?;
    if let Some(first) = entries.first() {
        if first.index != log_start.index + 1 {
            return Err(format!(
                "a base record's entries start at index {}, not after its log start {}",
                first.index, log_start.index
            ));
        }
    }
    Ok(DurableRaft {
        id,
        hard_state,
        conf_state,
        conf_index,
        log_start,
        entries,
    })
}

/// A persist record's payload of layout `version`.
pub fn decode_persist(version: u8, payload: &[u8]) -> Result<PersistBody, String> {
    let mut reader = Reader {
        bytes: payload,
        at: 0,
    };
    let known = if version >= 2 {
        HAS_HARD_STATE | HAS_CONF | HAS_SNAPSHOT | HAS_COMPACT
    } else {
        HAS_HARD_STATE
    };
    let flags = reader.u8("the persist's flags")?;
    if flags & !known != 0 {
        return Err(format!(
            "persist flags {flags:#x}; layout {version} knows {known:#x}"
        ));
    }
    let hard_state = match flags & HAS_HARD_STATE {
        0 => None,
        _ => Some(decode_hard_state(&mut reader)?),
    };
    let conf = match flags & HAS_CONF {
        0 => None,
        _ => Some(AppliedConf {
            conf_state: decode_conf_state(version, &mut reader)?,
            index: reader.u64("the members' index")?,
        }),
    };
    let snapshot = match flags & HAS_SNAPSHOT {
        0 => None,
        _ => Some(decode_log_start(&mut reader)?),
    };
    let compact = match flags & HAS_COMPACT {
        0 => None,
        _ => Some(decode_log_start(&mut reader)?),
    };
    let entries = decode_entries(&mut reader)?;
    reader.finish()?;
    Ok(PersistBody {
        hard_state,
        conf,
        snapshot,
        compact,
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

fn decode_conf_state(version: u8, reader: &mut Reader) -> Result<ConfState, String> {
    let names: &[&str] = if version >= 2 {
        &["voters", "learners", "outgoing voters", "next learners"]
    } else {
        &["voters", "learners"]
    };
    let mut lists = vec![Vec::new(); names.len()];
    for (list, what) in lists.iter_mut().zip(names) {
        let len = reader.u32(what)? as usize;
        if len > reader.left() / 8 {
            return Err(format!("{len} {what} claimed, more than the payload holds"));
        }
        for _ in 0..len {
            list.push(reader.u64(what)?);
        }
    }
    let mut conf_state = ConfState::default();
    let mut lists = lists.into_iter();
    conf_state.voters = lists.next().expect("voters");
    conf_state.learners = lists.next().expect("learners");
    if version >= 2 {
        conf_state.voters_outgoing = lists.next().expect("outgoing voters");
        conf_state.learners_next = lists.next().expect("next learners");
        conf_state.auto_leave = match reader.u8("the auto-leave flag")? {
            0 => false,
            1 => true,
            flag => return Err(format!("auto-leave flag {flag}, not 0 or 1")),
        };
    }
    Ok(conf_state)
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

    fn persist(
        hard_state: Option<HardState>,
        conf: Option<AppliedConf>,
        entries: &[Entry],
    ) -> Persist {
        Persist {
            number: 1,
            entries: entries.to_vec(),
            hard_state,
            conf,
            snapshot: None,
            compact: None,
        }
    }

    fn joint() -> ConfState {
        ConfState {
            voters: vec![1, 2, (1 << 32) | 3],
            learners: vec![(2 << 32) | 1],
            voters_outgoing: vec![1, 2, 3],
            learners_next: vec![7],
            auto_leave: true,
            ..ConfState::default()
        }
    }

    #[test]
    fn base_and_persist_payloads_read_back_as_written() {
        let state = DurableRaft {
            id: (1 << 32) | 3,
            hard_state: HardState {
                term: 7,
                vote: 3,
                commit: 2,
                ..HardState::default()
            },
            conf_state: joint(),
            conf_index: 2,
            log_start: LogStart {
                index: 4,
                term: 1,
                lsn: 40,
            },
            entries: vec![entry(5, 1, b""), entry(6, 7, b"batch")],
        };
        let mut out = Vec::new();
        encode_base(&state, &mut out);
        assert_eq!(decode_base(LAYOUT_VERSION, &out).unwrap(), state);

        let conf = AppliedConf {
            conf_state: joint(),
            index: 9,
        };
        for (hard_state, conf) in [
            (Some(state.hard_state.clone()), Some(conf.clone())),
            (None, Some(conf)),
            (Some(state.hard_state.clone()), None),
            (None, None),
        ] {
            let mut out = Vec::new();
            encode_persist(
                &persist(hard_state.clone(), conf.clone(), &state.entries[1..]),
                &mut out,
            );
            let body = decode_persist(LAYOUT_VERSION, &out).unwrap();
            assert_eq!(body.hard_state, hard_state);
            assert_eq!(body.conf, conf);
            assert_eq!(body.entries, state.entries[1..]);
        }
        let mut both = persist(None, None, &[]);
        both.snapshot = Some(state.log_start);
        both.compact = Some(LogStart {
            index: 9,
            term: 2,
            lsn: 77,
        });
        let mut out = Vec::new();
        encode_persist(&both, &mut out);
        let body = decode_persist(LAYOUT_VERSION, &out).unwrap();
        assert_eq!((body.snapshot, body.compact), (both.snapshot, both.compact));
    }

    /// Stores written before replica ids and membership changes read as they were: no id
    /// (the node's first incarnation), members as of index 0.
    #[test]
    fn version_1_payloads_still_read() {
        let mut base = Vec::new();
        for field in [7u64, 3, 2] {
            base.extend_from_slice(&field.to_le_bytes());
        }
        base.extend_from_slice(&3u32.to_le_bytes());
        for voter in [1u64, 2, 3] {
            base.extend_from_slice(&voter.to_le_bytes());
        }
        base.extend_from_slice(&0u32.to_le_bytes());
        base.extend_from_slice(&0u64.to_le_bytes());
        let state = decode_base(1, &base).unwrap();
        assert_eq!((state.id, state.conf_index), (0, 0));
        assert_eq!(state.conf_state, ConfState::from((vec![1, 2, 3], vec![])));
        assert_eq!(state.hard_state.term, 7);
        // A version 2 reader of these bytes finds them short: the version decides.
        assert!(decode_base(2, &base).is_err());

        let mut persist = vec![1];
        for field in [8u64, 0, 5] {
            persist.extend_from_slice(&field.to_le_bytes());
        }
        persist.extend_from_slice(&0u64.to_le_bytes());
        let body = decode_persist(1, &persist).unwrap();
        assert_eq!(body.hard_state.map(|h| h.term), Some(8));
        assert_eq!(body.conf, None);
        let mut members = persist.clone();
        members[0] = HAS_CONF;
        assert!(decode_persist(1, &members).unwrap_err().contains("flags"));
    }

    /// The layout is pinned: these bytes are what version 2 means on disk.
    #[test]
    fn a_persist_has_the_documented_layout() {
        let mut out = Vec::new();
        encode_persist(&persist(None, None, &[entry(9, 4, b"ab")]), &mut out);
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
        encode_persist(
            &persist(None, None, &[entry(9, 4, b"ab"), entry(10, 4, b"")]),
            &mut out,
        );
        assert!(decode_persist(2, &out[..out.len() - 1])
            .unwrap_err()
            .contains("ends inside"));
        let mut huge = out.clone();
        huge[1..9].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_persist(2, &huge).unwrap_err().contains("claimed"));
        let mut skipped = out.clone();
        let second = 1 + 8 + (8 + 8 + 1 + 4 + 2 + 4 + 3);
        skipped[second..second + 8].copy_from_slice(&11u64.to_le_bytes());
        assert!(decode_persist(2, &skipped)
            .unwrap_err()
            .contains("consecutive"));
        let mut typed = out;
        typed[1 + 8 + 16] = 9;
        assert!(decode_persist(2, &typed)
            .unwrap_err()
            .contains("unknown type"));
    }
}
