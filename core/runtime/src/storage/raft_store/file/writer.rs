//! The blocking half of the file Raft store: recovery at open, appends, syncs and rotation,
//! on plain files (the rules are in the parent module's docs).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use walletd_core::replica::{DurableRaft, Persist};

use super::codec::{decode_base, decode_persist, encode_base, encode_persist};
use super::records::{
    encode_record, read_journaled, read_raft_file, Kind, RawRecord, RECORD_ALIGN,
    RECORD_PAYLOAD_MAX,
};
use super::{FileRaftStoreConfig, FileRaftStoreError as Error};

/// The name of the file whose base record is record `seq`.
pub(super) fn log_name(seq: u64) -> String {
    format!("raft-{seq:020}.log")
}

/// Where that file is written before it is synced and named.
fn tmp_name(seq: u64) -> String {
    format!("raft-{seq:020}.tmp")
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn corrupt(path: &Path, offset: u64, detail: String) -> Error {
    Error::Corrupt {
        path: path.display().to_string(),
        offset,
        detail,
    }
}

/// Files in `dir` named `raft-<20 digits><suffix>`, sorted by the number.
pub(super) fn numbered_files(dir: &Path, suffix: &str) -> Result<Vec<(u64, PathBuf)>, Error> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let number = name
            .to_str()
            .and_then(|n| n.strip_prefix("raft-"))
            .and_then(|n| n.strip_suffix(suffix))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(number) = number {
            found.push((number, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// The writing end of a store. See the parent module's docs.
pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) config: FileRaftStoreConfig,
    /// The newest file, which appends go to, and its path.
    pub(super) file: File,
    pub(super) path: PathBuf,
    /// The seq of the newest file's base record (the number in its name).
    pub(super) base_seq: u64,
    /// Bytes of the newest file's base record: a rotation waits until the persists after it
    /// weigh as much.
    pub(super) base_len: u64,
    /// The seq the next record gets.
    pub(super) next_seq: u64,
    /// Bytes written to the newest file, and how many of them are synced.
    pub(super) len: u64,
    pub(super) synced_len: u64,
    /// Everything appended, applied: what the next base record holds.
    pub(super) state: DurableRaft,
    /// Why the store stopped (the first failed write or sync), if it did.
    pub(super) failed: Option<String>,
    /// The record being written, kept to reuse its allocation.
    buf: Vec<u8>,
    /// With a node journal: the records written since the last batch handed to it, which
    /// the next sync hands in (see "The node journal" in the parent module's docs).
    pub(super) unjournaled: Option<Unjournaled>,
    /// Whether `open` found no store and created this one.
    pub(super) created: bool,
}

/// Records written to the file and not yet handed to the node journal.
#[derive(Debug, Default)]
pub(super) struct Unjournaled {
    /// The seq of the first of them.
    pub(super) first_seq: u64,
    pub(super) bytes: Vec<u8>,
}

impl Writer {
    /// Opens or creates the store in `dir` (see "Recovery" in the parent module's docs).
    pub(super) fn open(
        dir: &Path,
        config: FileRaftStoreConfig,
        initial: DurableRaft,
    ) -> Result<Writer, Error> {
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(io_error(dir))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        // A file that never got its name was never part of the store.
        for (_, tmp) in numbered_files(dir, ".tmp")? {
            fs::remove_file(&tmp).map_err(io_error(&tmp))?;
        }
        let mut writer = match numbered_files(dir, ".log")?.pop() {
            None => {
                let mut writer = Writer::create(dir, config, initial, 1)?;
                writer.created = true;
                writer
            }
            Some((seq, path)) => Writer::recover(dir, config, seq, path)?,
        };
        writer.remove_older()?;
        Ok(writer)
    }

    /// A new store holding `state`, its base record `seq`.
    fn create(
        dir: &Path,
        config: FileRaftStoreConfig,
        state: DurableRaft,
        seq: u64,
    ) -> Result<Writer, Error> {
        let mut buf = Vec::new();
        let (file, path, len) = write_base_file(dir, seq, &state, &mut buf)?;
        Ok(Writer {
            dir: dir.to_path_buf(),
            config,
            file,
            path,
            base_seq: seq,
            base_len: len,
            next_seq: seq + 1,
            len,
            synced_len: len,
            state,
            failed: None,
            buf,
            unjournaled: None,
            created: false,
        })
    }

    /// The store as its newest file `path` (whose base is record `seq`) holds it: replays
    /// its records, cuts a torn tail and syncs what is kept.
    fn recover(
        dir: &Path,
        config: FileRaftStoreConfig,
        seq: u64,
        path: PathBuf,
    ) -> Result<Writer, Error> {
        let bytes = fs::read(&path).map_err(io_error(&path))?;
        let read = read_raft_file(&bytes)
            .map_err(|damage| corrupt(&path, damage.offset, damage.detail))?;
        let state = replay(&read.records, seq, &path)?;
        let last = read
            .records
            .last()
            .expect("replay refuses a file without records");
        assert_eq!(
            read.valid_len % RECORD_ALIGN as u64,
            0,
            "a file ends aligned"
        );
        let next_seq = last.seq + 1;
        // The base record with its padding: up to the second record, or all there is.
        let base_len = read.records.get(1).map_or(read.valid_len, |r| r.offset);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        // Cuts a torn tail, or puts back the padding of a last record whose file ends
        // inside it.
        if read.valid_len != bytes.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                offset = read.valid_len,
                len = bytes.len(),
                torn = read.torn,
                "raft store cut: what follows the last whole record was never synced"
            );
            file.set_len(read.valid_len).map_err(io_error(&path))?;
        }
        file.sync_all().map_err(io_error(&path))?;
        Ok(Writer {
            dir: dir.to_path_buf(),
            config,
            file,
            path,
            base_seq: seq,
            base_len,
            next_seq,
            len: read.valid_len,
            synced_len: read.valid_len,
            state,
            failed: None,
            buf: Vec::new(),
            unjournaled: None,
            created: false,
        })
    }

    /// Deletes the files older than the newest: they hold nothing its base does not.
    fn remove_older(&mut self) -> Result<(), Error> {
        let older: Vec<_> = numbered_files(&self.dir, ".log")?
            .into_iter()
            .filter(|(seq, _)| *seq < self.base_seq)
            .collect();
        for (_, path) in &older {
            fs::remove_file(path).map_err(io_error(path))?;
        }
        if !older.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Refuses every call once a write or sync failed.
    fn check_running(&self) -> Result<(), Error> {
        match &self.failed {
            None => Ok(()),
            Some(reason) => Err(Error::Stopped {
                dir: self.dir.display().to_string(),
                reason: reason.clone(),
            }),
        }
    }

    /// Stops the store if `result` is an error.
    fn stop_on_error<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(error) = &result {
            tracing::error!(%error, "raft store failed; every later call fails");
            self.failed = Some(error.to_string());
        }
        result
    }

    /// Everything appended so far.
    pub(super) fn state(&self) -> Result<&DurableRaft, Error> {
        self.check_running()?;
        Ok(&self.state)
    }

    /// Writes `persist` (not synced), or rotates to a new file that holds it (synced).
    pub(super) fn append(&mut self, persist: &Persist) -> Result<(), Error> {
        self.check_running()?;
        if let Some(first) = persist.entries.first() {
            // The replica's own invariant; a gap here would be written and refused at the
            // next recovery, so it is caught where it happens.
            let end = persist
                .snapshot
                .map_or(self.state.last_index(), |s| s.index);
            assert!(
                first.index >= 1 && first.index <= end + 1,
                "entries are persisted without a gap: first {} after {end}",
                first.index,
            );
        }
        if self.wants_rotation() {
            self.state.persist(persist);
            let rotated = self.rotate();
            return self.stop_on_error(rotated);
        }
        assert_eq!(self.len % RECORD_ALIGN as u64, 0, "records start aligned");
        self.buf.clear();
        encode_record(
            Kind::Persist,
            self.next_seq,
            self.synced_len,
            |out| encode_persist(persist, out),
            &mut self.buf,
        )
        .map_err(|too_large| self.too_large(too_large.payload_len))?;
        let written = self
            .file
            .write_all_at(&self.buf, self.len)
            .map_err(io_error(&self.path));
        self.stop_on_error(written)?;
        if let Some(unjournaled) = &mut self.unjournaled {
            if unjournaled.bytes.is_empty() {
                unjournaled.first_seq = self.next_seq;
            }
            unjournaled.bytes.extend_from_slice(&self.buf);
        }
        self.len += self.buf.len() as u64;
        self.next_seq += 1;
        self.state.persist(persist);
        Ok(())
    }

    /// Replaces the whole state by `state`, durably: a new file whose base it is.
    pub(super) fn reset(&mut self, state: DurableRaft) -> Result<(), Error> {
        self.check_running()?;
        self.state = state;
        let rotated = self.rotate();
        self.stop_on_error(rotated)
    }

    /// Makes everything written durable (`fdatasync`).
    pub(super) fn sync(&mut self) -> Result<(), Error> {
        self.check_running()?;
        if self.synced_len == self.len {
            return Ok(());
        }
        let synced = self.file.sync_data().map_err(io_error(&self.path));
        self.stop_on_error(synced)?;
        self.synced_len = self.len;
        Ok(())
    }

    /// Hands out the records written since the last call, for the node journal: `(seq of
    /// the first, their bytes)`, or `None` if there are none.
    pub(super) fn take_unjournaled(&mut self) -> Result<Option<(u64, Vec<u8>)>, Error> {
        self.check_running()?;
        let unjournaled = self.unjournaled.as_mut().expect("journaled");
        if unjournaled.bytes.is_empty() {
            return Ok(None);
        }
        let bytes = std::mem::take(&mut unjournaled.bytes);
        Ok(Some((unjournaled.first_seq, bytes)))
    }

    /// Redoes a batch of records the node journal held (`bytes`, from seq `first_seq`):
    /// those the file already holds are skipped, the rest appended as persists (not synced;
    /// the caller syncs after the last batch). Returns how many were appended.
    pub(super) fn redo(&mut self, first_seq: u64, bytes: &[u8]) -> Result<usize, Error> {
        let path = self.path.clone();
        let journaled = |detail: String| Error::Corrupt {
            path: format!("{} (a batch in the node journal)", path.display()),
            offset: 0,
            detail,
        };
        let records = read_journaled(bytes).map_err(|damage| journaled(damage.detail))?;
        if records.first().is_some_and(|r| r.seq != first_seq) {
            return Err(journaled(format!(
                "the batch says it starts at record {first_seq}, its first record is {}",
                records[0].seq
            )));
        }
        let mut redone = 0;
        for record in records {
            if record.seq < self.next_seq {
                continue;
            }
            if record.seq > self.next_seq || record.kind != Kind::Persist {
                return Err(journaled(format!(
                    "{:?} record {} cannot follow the file's last record {}",
                    record.kind,
                    record.seq,
                    self.next_seq - 1
                )));
            }
            let persist = persist_of(&record, &self.state).map_err(journaled)?;
            self.append(&persist)?;
            redone += 1;
        }
        Ok(redone)
    }

    /// Whether the next append starts a new file (see "Rotation" in the parent's docs).
    fn wants_rotation(&self) -> bool {
        self.len >= self.config.file_bytes_max && self.len - self.base_len >= self.base_len
    }

    /// Starts a new file whose base is the whole state, durable with its name, then deletes
    /// the older ones.
    fn rotate(&mut self) -> Result<(), Error> {
        let seq = self.next_seq;
        let (file, path, len) = write_base_file(&self.dir, seq, &self.state, &mut self.buf)?;
        tracing::debug!(path = %path.display(), seq, bytes = len, "raft store rotated");
        self.file = file;
        self.path = path;
        self.base_seq = seq;
        self.base_len = len;
        self.next_seq = seq + 1;
        self.len = len;
        self.synced_len = len;
        // The base holds them, durably.
        if let Some(unjournaled) = &mut self.unjournaled {
            unjournaled.bytes.clear();
        }
        self.remove_older()
    }

    fn too_large(&self, payload_len: usize) -> Error {
        Error::TooLarge {
            dir: self.dir.display().to_string(),
            payload_len,
            limit: RECORD_PAYLOAD_MAX,
        }
    }
}

/// Writes file `raft-<seq>.log` holding only a base record of `state`, durable with its
/// name (written as a temporary file, synced, renamed, the directory synced). Returns it
/// open, with its path and length.
fn write_base_file(
    dir: &Path,
    seq: u64,
    state: &DurableRaft,
    buf: &mut Vec<u8>,
) -> Result<(File, PathBuf, u64), Error> {
    buf.clear();
    encode_record(Kind::Base, seq, 0, |out| encode_base(state, out), buf).map_err(|too_large| {
        Error::TooLarge {
            dir: dir.display().to_string(),
            payload_len: too_large.payload_len,
            limit: RECORD_PAYLOAD_MAX,
        }
    })?;
    let tmp = dir.join(tmp_name(seq));
    let written = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .and_then(|file| {
            file.write_all_at(buf, 0)?;
            file.sync_all()?;
            Ok(file)
        });
    let file = match written {
        Ok(file) => file,
        Err(source) => {
            // Best effort: the error that matters is the first, and open deletes leftovers.
            let _ = fs::remove_file(&tmp);
            return Err(io_error(&tmp)(source));
        }
    };
    let path = dir.join(log_name(seq));
    fs::rename(&tmp, &path).map_err(io_error(&path))?;
    sync_dir(dir)?;
    Ok((file, path, buf.len() as u64))
}

/// The state `records` of file `path` (whose base is record `seq`) leave, applied in order.
fn replay(records: &[RawRecord], seq: u64, path: &Path) -> Result<DurableRaft, Error> {
    let Some(base) = records.first() else {
        return Err(corrupt(
            path,
            0,
            "no whole base record, though a file gets its name only after its base is synced"
                .into(),
        ));
    };
    if base.kind != Kind::Base || base.seq != seq {
        return Err(corrupt(
            path,
            base.offset,
            format!(
                "the file starts with a {:?} record {}, not the base record {seq} its name says",
                base.kind, base.seq
            ),
        ));
    }
    let mut state =
        decode_base(base.version, base.payload).map_err(|detail| corrupt(path, 0, detail))?;
    for record in &records[1..] {
        let bad = |detail: String| corrupt(path, record.offset, detail);
        if record.kind != Kind::Persist {
            return Err(bad(format!(
                "record {} is a base after the first",
                record.seq
            )));
        }
        let persist = persist_of(record, &state).map_err(bad)?;
        state.persist(&persist);
    }
    Ok(state)
}

/// The persist `record` holds, if it can follow `state`: its members newer, its entries
/// with no gap after the log.
fn persist_of(record: &RawRecord, state: &DurableRaft) -> Result<Persist, String> {
    let body = decode_persist(record.version, record.payload)?;
    if let Some(conf) = &body.conf {
        if conf.index <= state.conf_index {
            return Err(format!(
                "record {} holds members as of index {}, not after those of index {}",
                record.seq, conf.index, state.conf_index
            ));
        }
    }
    if let Some(first) = body.entries.first() {
        let end = body.snapshot.map_or(state.last_index(), |s| s.index);
        if first.index > end + 1 {
            return Err(format!(
                "record {} has entries from index {}, after a log that ends at {end}",
                record.seq, first.index,
            ));
        }
    }
    Ok(Persist {
        number: record.seq,
        entries: body.entries,
        hard_state: body.hard_state,
        conf: body.conf,
        snapshot: body.snapshot,
        compact: body.compact,
    })
}
