use std::fs::{self, File};
use std::sync::atomic::Ordering;

use crate::storage::journal::JournalConfig;

use bytes::Bytes;
use proptest::prelude::*;
use raft::eraftpb::{Entry, EntryType, HardState};

use super::codec::encode_persist;
use super::records::{encode_raw, encode_record, Kind, RECORD_HEADER_LEN};
use super::writer::numbered_files;
use super::*;
use crate::storage::raft_store::MemRaftStore;

/// The voters of the groups these tests make.
const VOTERS: [u64; 3] = [1, 2, 3];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        data: Bytes::copy_from_slice(data),
        entry_type: EntryType::EntryNormal,
        ..Entry::default()
    }
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..HardState::default()
    }
}

/// Entries `first..first + count` of `term`, with a hard state of that term if `with_hard`.
fn persist(first: u64, count: u64, term: u64, with_hard: bool) -> Persist {
    Persist {
        conf: None,
        snapshot: None,
        compact: None,
        number: 0,
        entries: (first..first + count)
            .map(|index| {
                entry(
                    index,
                    term,
                    format!("entry {index} of term {term}").as_bytes(),
                )
            })
            .collect(),
        hard_state: with_hard.then(|| hard_state(term, 1, first.saturating_sub(1))),
    }
}

fn open(dir: &Path, config: FileRaftStoreConfig) -> io::Result<FileRaftStore> {
    FileRaftStore::open_with(dir, DurableRaft::new(&VOTERS), config)
}

/// Files large enough that no test rotates unless it means to.
fn no_rotation() -> FileRaftStoreConfig {
    FileRaftStoreConfig {
        file_bytes_max: 1 << 30,
    }
}

/// The store's own view of its newest file: path, bytes written, bytes synced.
fn newest(store: &FileRaftStore) -> (PathBuf, u64, u64) {
    let writer = store.writer.as_ref().expect("a store not stopped");
    (writer.path.clone(), writer.len, writer.synced_len)
}

/// Appends `persists` to the store and to `model`, syncing after each if `sync_each`.
async fn append_all(
    store: &mut FileRaftStore,
    model: &mut DurableRaft,
    persists: &[Persist],
    sync_each: bool,
) {
    for persist in persists {
        store.append(persist).await.unwrap();
        model.persist(persist);
        if sync_each {
            store.sync().await.unwrap();
        }
    }
}

fn store_error(error: &io::Error) -> &FileRaftStoreError {
    error
        .get_ref()
        .and_then(|e| e.downcast_ref::<FileRaftStoreError>())
        .unwrap_or_else(|| panic!("not a store error: {error}"))
}

#[test]
fn persists_read_back_with_later_entries_replacing_a_suffix() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), no_rotation()).unwrap();
        let mut model = DurableRaft::new(&VOTERS);
        assert_eq!(store.recover().await.unwrap(), model);
        let persists = [
            persist(1, 4, 1, true),
            // A new leader's log wins from index 3 on: entries 3 and 4 of term 1 go.
            persist(3, 3, 2, true),
            // A hard state alone (a vote), and entries alone.
            Persist {
                hard_state: Some(hard_state(3, 2, 4)),
                ..persist(6, 0, 3, false)
            },
            persist(6, 2, 3, false),
            // Back to index 1: everything is replaced.
            persist(1, 1, 4, true),
        ];
        append_all(&mut store, &mut model, &persists, false).await;
        store.sync().await.unwrap();
        assert_eq!(model.last_index(), 1);
        assert_eq!(store.recover().await.unwrap(), model);
        drop(store);

        // A restart recovers the same, whatever `initial` it is given.
        let mut store =
            FileRaftStore::open_with(dir.path(), DurableRaft::new(&[9]), no_rotation()).unwrap();
        assert_eq!(store.recover().await.unwrap(), model);
        assert_eq!(model.conf_state.voters, VOTERS);
    });
}

#[test]
fn a_new_store_is_durable_before_open_returns() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("replica"), no_rotation()).unwrap();
        drop(store);
        let files = numbered_files(&dir.path().join("replica"), ".log").unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, 1, "the first base record is record 1");
        let mut store =
            FileRaftStore::open(&dir.path().join("replica"), DurableRaft::new(&[9])).unwrap();
        assert_eq!(store.recover().await.unwrap(), DurableRaft::new(&VOTERS));
    });
}

#[test]
fn a_restart_after_sync_sees_everything_and_goes_on_appending() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut model = DurableRaft::new(&VOTERS);
        for round in 0..4 {
            let mut store = open(dir.path(), no_rotation()).unwrap();
            assert_eq!(store.recover().await.unwrap(), model, "round {round}");
            let first = model.last_index().saturating_sub(1).max(1);
            let persists = [
                persist(first, 3, round + 1, true),
                persist(first + 3, 2, round + 1, false),
            ];
            append_all(&mut store, &mut model, &persists, false).await;
            store.sync().await.unwrap();
        }
        let mut store = open(dir.path(), no_rotation()).unwrap();
        assert_eq!(store.recover().await.unwrap(), model);
    });
}

/// How a crash leaves the unsynced end of a file.
#[derive(Debug, Clone, Copy)]
enum Tail {
    /// Cut inside the last record.
    CutMidRecord,
    /// Bytes that are no record after the last one.
    Garbage,
    /// Zeros a file system extended the file with.
    Zeros,
}

#[test]
fn a_torn_tail_is_cut_and_synced_and_the_store_appends_after_it() {
    runtime().block_on(async {
        for tail in [Tail::CutMidRecord, Tail::Garbage, Tail::Zeros] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = open(dir.path(), no_rotation()).unwrap();
            let mut model = DurableRaft::new(&VOTERS);
            append_all(&mut store, &mut model, &[persist(1, 3, 1, true)], true).await;
            let synced = model.clone();
            store.append(&persist(4, 2, 1, true)).await.unwrap();
            model.persist(&persist(4, 2, 1, true));
            let (path, len, synced_len) = newest(&store);
            drop(store);

            let mut bytes = fs::read(&path).unwrap();
            let (expected, kept_len) = match tail {
                Tail::CutMidRecord => {
                    bytes.truncate(synced_len as usize + RECORD_HEADER_LEN + 5);
                    (synced, synced_len)
                }
                Tail::Garbage => {
                    bytes.extend_from_slice(&[0xab; 45]);
                    (model, len)
                }
                Tail::Zeros => {
                    bytes.resize(bytes.len() + 4096, 0);
                    (model, len)
                }
            };
            fs::write(&path, &bytes).unwrap();

            let mut store = open(dir.path(), no_rotation()).unwrap();
            assert_eq!(store.recover().await.unwrap(), expected, "{tail:?}");
            assert_eq!(
                fs::metadata(&path).unwrap().len(),
                kept_len,
                "{tail:?}: cut"
            );
            assert_eq!(newest(&store), (path.clone(), kept_len, kept_len));
            // The store goes on after what it kept, and a restart reads both.
            let mut model = expected;
            let next = persist(model.last_index() + 1, 2, 2, true);
            append_all(&mut store, &mut model, &[next], true).await;
            drop(store);
            let mut store = open(dir.path(), no_rotation()).unwrap();
            assert_eq!(store.recover().await.unwrap(), model, "{tail:?}: after");
        }
    });
}

#[test]
fn damage_that_a_later_record_says_was_synced_is_an_error_naming_file_and_offset() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), no_rotation()).unwrap();
        let mut model = DurableRaft::new(&VOTERS);
        append_all(&mut store, &mut model, &[persist(1, 2, 1, true)], true).await;
        let (path, second, _) = newest(&store);
        let later = [persist(3, 2, 1, true), persist(5, 1, 1, false)];
        append_all(&mut store, &mut model, &later, true).await;
        drop(store);

        let mut bytes = fs::read(&path).unwrap();
        bytes[second as usize + RECORD_HEADER_LEN + 3] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let error = open(dir.path(), no_rotation()).err().expect("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let FileRaftStoreError::Corrupt { offset, .. } = store_error(&error) else {
            panic!("{error}");
        };
        assert_eq!(*offset, second);
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(
            message.contains(&format!("byte offset {second}")),
            "{message}"
        );
        assert!(message.contains("synced"), "{message}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "nothing is cut");
    });
}

/// Two persists written with no sync between them: a power loss may keep the second whole
/// and tear the first. Nothing vouches for the first, so both go.
#[test]
fn a_bad_unsynced_record_is_cut_with_the_unsynced_records_after_it() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), no_rotation()).unwrap();
        let mut model = DurableRaft::new(&VOTERS);
        append_all(&mut store, &mut model, &[persist(1, 2, 1, true)], true).await;
        let synced = model.clone();
        let (path, second, _) = newest(&store);
        let later = [persist(3, 2, 1, true), persist(5, 1, 1, false)];
        append_all(&mut store, &mut model, &later, false).await;
        drop(store);

        let mut bytes = fs::read(&path).unwrap();
        bytes[second as usize + RECORD_HEADER_LEN + 3] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let mut store = open(dir.path(), no_rotation()).unwrap();
        assert_eq!(store.recover().await.unwrap(), synced);
        assert_eq!(fs::metadata(&path).unwrap().len(), second);
    });
}

#[test]
fn a_record_of_an_unknown_version_is_an_error() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), no_rotation()).unwrap();
        let mut model = DurableRaft::new(&VOTERS);
        append_all(&mut store, &mut model, &[persist(1, 2, 1, true)], true).await;
        let (path, len, _) = newest(&store);
        let next_seq = store.writer.as_ref().unwrap().next_seq;
        drop(store);

        let mut record = Vec::new();
        encode_raw(3, 2, next_seq, len, |out| out.push(0), &mut record).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend(record);
        fs::write(&path, &bytes).unwrap();
        let error = open(dir.path(), no_rotation()).err().expect("refused");
        let message = error.to_string();
        assert!(message.contains(&format!("byte offset {len}")), "{message}");
        assert!(message.contains("layout version 3"), "{message}");
    });
}

/// A base record is synced before its file is named, so a bad one is never a torn tail; a
/// persist whose entries leave a gap was never written by a store.
#[test]
fn a_bad_base_or_a_gap_in_the_log_is_an_error() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), no_rotation()).unwrap();
        let (path, len, _) = newest(&store);
        drop(store);
        let whole = fs::read(&path).unwrap();
        let mut bytes = whole.clone();
        bytes[RECORD_HEADER_LEN + 1] ^= 0x20;
        fs::write(&path, &bytes).unwrap();
        let message = open(dir.path(), no_rotation())
            .err()
            .expect("refused")
            .to_string();
        assert!(
            message.contains("byte offset 0: no whole base record"),
            "{message}"
        );

        let mut bytes = whole;
        let gap = persist(3, 1, 1, true);
        encode_record(
            Kind::Persist,
            2,
            len,
            |out| encode_persist(&gap, out),
            &mut bytes,
        )
        .unwrap();
        fs::write(&path, &bytes).unwrap();
        let message = open(dir.path(), no_rotation())
            .err()
            .expect("refused")
            .to_string();
        assert!(message.contains(&format!("byte offset {len}")), "{message}");
        assert!(
            message.contains("entries from index 3, after a log that ends at 0"),
            "{message}"
        );
    });
}

#[test]
fn rotation_keeps_everything_and_deletes_the_older_files() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let config = FileRaftStoreConfig {
            file_bytes_max: 1024,
        };
        let mut store = open(dir.path(), config).unwrap();
        let mut model = DurableRaft::new(&VOTERS);
        let mut bases = vec![1];
        for i in 0..120u64 {
            // Now and then a new leader replaces the last two entries.
            let first = if i % 7 == 6 {
                model.last_index() - 1
            } else {
                model.last_index() + 1
            };
            append_all(
                &mut store,
                &mut model,
                &[persist(first, 2, i + 1, true)],
                i % 3 == 0,
            )
            .await;
            let base_seq = store.writer.as_ref().unwrap().base_seq;
            if bases.last() != Some(&base_seq) {
                bases.push(base_seq);
                let (_, len, synced_len) = newest(&store);
                assert_eq!(len, synced_len, "a new file is durable at once");
            }
            let files = numbered_files(dir.path(), ".log").unwrap();
            assert_eq!(files.len(), 1, "older files are deleted");
            assert_eq!(files[0].0, base_seq);
        }
        assert!(bases.len() >= 4, "rotated at {bases:?}");
        // Each rotation writes no more than the persists since the last one did.
        let (path, _, _) = newest(&store);
        let base_len = store.writer.as_ref().unwrap().base_len;
        assert!(fs::metadata(&path).unwrap().len() <= (2 * base_len).max(1024) + 1024);
        store.sync().await.unwrap();
        drop(store);
        let mut store = open(dir.path(), config).unwrap();
        assert_eq!(store.recover().await.unwrap(), model);
    });
}

/// A crash after a rotation named its new file but before it deleted the old one, and
/// during the next, before its file got its name.
#[test]
fn an_unfinished_rotation_is_finished_at_open() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let config = FileRaftStoreConfig {
            file_bytes_max: 512,
        };
        let mut store = open(dir.path(), config).unwrap();
        let mut model = DurableRaft::new(&VOTERS);
        let first_file = fs::read(dir.path().join(writer::log_name(1))).unwrap();
        while store.writer.as_ref().unwrap().base_seq == 1 {
            let next = persist(model.last_index() + 1, 1, 1, true);
            append_all(&mut store, &mut model, &[next], false).await;
        }
        drop(store);
        fs::write(dir.path().join(writer::log_name(1)), &first_file).unwrap();
        fs::write(
            dir.path().join("raft-00000000000000999999.tmp"),
            b"half a base",
        )
        .unwrap();

        let mut store = open(dir.path(), config).unwrap();
        assert_eq!(store.recover().await.unwrap(), model);
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let base_seq = store.writer.as_ref().unwrap().base_seq;
        assert_eq!(names, [writer::log_name(base_seq)]);
    });
}

#[test]
fn a_failed_write_stops_the_store() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), no_rotation()).unwrap();
        store.append(&persist(1, 1, 1, true)).await.unwrap();
        // Writes to a file opened read-only fail as a full or failing disk's would.
        let writer = store.writer.as_mut().unwrap();
        writer.file = File::open(&writer.path).unwrap();
        let failed = store.append(&persist(2, 1, 1, true)).await.unwrap_err();
        assert!(
            matches!(store_error(&failed), FileRaftStoreError::Io { .. }),
            "{failed}"
        );
        for error in [
            store.sync().await.unwrap_err(),
            store.recover().await.unwrap_err(),
            store.append(&persist(2, 1, 1, true)).await.unwrap_err(),
        ] {
            assert!(
                matches!(store_error(&error), FileRaftStoreError::Stopped { .. }),
                "{error}"
            );
        }
    });
}

/// One step of the randomized test.
#[derive(Debug, Clone)]
enum Op {
    /// Entries from `back` before the end of the log (0: right after it), with random terms
    /// and payloads, and maybe a hard state.
    Persist {
        back: u64,
        entries: Vec<(u64, u8, Vec<u8>)>,
        hard_state: Option<(u64, u64, u64)>,
    },
    Sync,
    /// The process stops and starts again: the page cache keeps every write.
    Restart,
    /// Power is lost: the unsynced end of the newest file keeps `keep` of its bytes (in
    /// 1/256ths), then is cut, or, with `hole`, loses 16 bytes there and keeps the rest.
    Crash {
        keep: u8,
        hole: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let entry = (1..6u64, 0..3u8, prop::collection::vec(any::<u8>(), 0..40));
    let persist = (
        0..4u64,
        prop::collection::vec(entry, 0..4),
        prop::option::of((1..9u64, 0..4u64, 0..20u64)),
    )
        .prop_map(|(back, entries, hard_state)| Op::Persist {
            back,
            entries,
            hard_state,
        });
    prop_oneof![
        6 => persist,
        2 => Just(Op::Sync),
        1 => Just(Op::Restart),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(keep, hole)| Op::Crash { keep, hole }),
    ]
}

fn entry_type(code: u8) -> EntryType {
    [
        EntryType::EntryNormal,
        EntryType::EntryConfChange,
        EntryType::EntryConfChangeV2,
    ][code as usize]
}

/// What a power loss leaves of the newest file: its synced bytes and part of the rest.
fn lose_power(path: &Path, len: u64, synced_len: u64, keep: u8, hole: bool) {
    let mut bytes = fs::read(path).unwrap();
    assert_eq!(bytes.len() as u64, len);
    let at = (synced_len + (len - synced_len) * u64::from(keep) / 256) as usize;
    if hole {
        let end = (at + 16).min(bytes.len());
        bytes[at..end].fill(0);
    } else {
        bytes.truncate(at);
    }
    fs::write(path, &bytes).unwrap();
}

/// Runs `ops` against a file store and a [`MemRaftStore`]: after a restart both recover the
/// same; after a power loss the file store recovers what the memory store synced plus a
/// prefix of the persists appended since, each whole.
/// With `journaled`, the store syncs through a node journal whose files rotate every few
/// rounds (so checkpoints and deletions happen too), and a power loss takes everything its
/// own file did not sync.
async fn check_against_memory(ops: Vec<Op>, file_bytes_max: u64, journaled: bool) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let journal_dir = journaled.then(|| root.path().join("journal"));
    let config = FileRaftStoreConfig { file_bytes_max };
    let open = |dir: &Path, config| open_maybe_journaled(dir, config, journal_dir.as_deref());
    let mut store = open(&dir, config).unwrap();
    let mut memory = MemRaftStore::new(DurableRaft::new(&VOTERS));
    let mut all = DurableRaft::new(&VOTERS);
    // Appended since the last sync, in order.
    let mut unsynced: Vec<Persist> = Vec::new();
    for op in ops {
        match op {
            Op::Persist {
                back,
                entries,
                hard_state: hard,
            } => {
                let first = (all.last_index() + 1).saturating_sub(back).max(1);
                let persist = Persist {
                    conf: None,
                    snapshot: None,
                    compact: None,
                    number: 0,
                    entries: entries
                        .into_iter()
                        .zip(first..)
                        .map(|((term, kind, data), index)| Entry {
                            entry_type: entry_type(kind),
                            context: Bytes::from(vec![kind; kind as usize]),
                            ..entry(index, term, &data)
                        })
                        .collect(),
                    hard_state: hard.map(|(term, vote, commit)| hard_state(term, vote, commit)),
                };
                store.append(&persist).await.unwrap();
                memory.append(&persist).await.unwrap();
                all.persist(&persist);
                unsynced.push(persist);
            }
            Op::Sync => {
                store.sync().await.unwrap();
                memory.sync().await.unwrap();
                unsynced.clear();
            }
            Op::Restart => {
                drop(store);
                store = open(&dir, config).unwrap();
                assert_eq!(store.recover().await.unwrap(), all);
                assert_eq!(memory.recover().await.unwrap(), all);
                unsynced.clear();
            }
            Op::Crash { keep, hole } => {
                let (path, len, synced_len) = newest(&store);
                drop(store);
                lose_power(&path, len, synced_len, keep, hole);
                store = open(&dir, config).unwrap();
                let recovered = store.recover().await.unwrap();
                memory.disk().lock().unwrap().crash();
                let mut candidate = memory.recover().await.unwrap();
                let mut kept = None;
                for n in 0..=unsynced.len() {
                    if n > 0 {
                        candidate.persist(&unsynced[n - 1]);
                    }
                    if candidate == recovered {
                        kept = Some(n);
                    }
                }
                assert!(
                    kept.is_some(),
                    "not the synced state plus a prefix of the unsynced persists"
                );
                memory = MemRaftStore::new(recovered.clone());
                all = recovered;
                unsynced.clear();
            }
        }
        // A rotation syncs everything it holds: what the memory store has yet to learn.
        let (_, len, synced_len) = newest(&store);
        if len == synced_len && !unsynced.is_empty() {
            memory.sync().await.unwrap();
            unsynced.clear();
        }
    }
    drop(store);
    let mut store = open(&dir, config).unwrap();
    assert_eq!(store.recover().await.unwrap(), all);
}

/// A node journal in `dir` whose files rotate every few rounds.
fn small_journal(dir: &Path) -> Arc<NodeJournal> {
    let config = JournalConfig {
        file_bytes_max: 2048,
        preallocate_bytes: 4096,
    };
    NodeJournal::open(dir, 1, config).unwrap()
}

/// The store in `dir`, syncing through a journal of its own in `journal_dir` if one is
/// given (opened here, and closed when the store is dropped).
fn open_maybe_journaled(
    dir: &Path,
    config: FileRaftStoreConfig,
    journal_dir: Option<&Path>,
) -> io::Result<FileRaftStore> {
    match journal_dir {
        None => open(dir, config),
        Some(journal_dir) => {
            let journal = small_journal(journal_dir);
            FileRaftStore::open_journaled(dir, DurableRaft::new(&VOTERS), config, journal, 0)
        }
    }
}

#[test]
fn a_journaled_store_syncs_in_the_journal_and_redoes_what_its_file_lost() {
    runtime().block_on(async {
        let root = tempfile::tempdir().unwrap();
        let (dir, journal_dir) = (root.path().join("store"), root.path().join("journal"));
        let journal = small_journal(&journal_dir);
        let open = |journal| {
            let initial = DurableRaft::new(&VOTERS);
            FileRaftStore::open_journaled(&dir, initial, no_rotation(), journal, 0).unwrap()
        };
        let mut store = open(Arc::clone(&journal));
        let (_, base_len, _) = newest(&store);
        let mut model = DurableRaft::new(&VOTERS);
        let persists = [persist(1, 3, 1, true), persist(4, 2, 1, false)];
        append_all(&mut store, &mut model, &persists, true).await;
        // Synced by two rounds of the journal, not by the file.
        let (path, len, synced_len) = newest(&store);
        assert_eq!(synced_len, base_len, "the file itself was not synced");
        assert!(len > base_len);
        assert_eq!(journal.stats().rounds.load(Ordering::Relaxed), 2);
        drop((store, journal));

        // A power loss takes everything the file did not sync.
        lose_power(&path, len, synced_len, 0, false);
        let mut store = open(small_journal(&journal_dir));
        assert_eq!(
            store.recover().await.unwrap(),
            model,
            "redone from the journal"
        );
        assert_eq!(
            newest(&store),
            (path.clone(), len, len),
            "and synced in the file"
        );
        // It goes on, and a restart reads both.
        append_all(&mut store, &mut model, &[persist(6, 1, 2, true)], true).await;
        drop(store);
        let mut store = open(small_journal(&journal_dir));
        assert_eq!(store.recover().await.unwrap(), model);
    });
}

#[test]
fn a_store_created_anew_drops_what_the_journal_held_for_its_partition() {
    runtime().block_on(async {
        let root = tempfile::tempdir().unwrap();
        let (dir, journal_dir) = (root.path().join("store"), root.path().join("journal"));
        let mut store = open_maybe_journaled(&dir, no_rotation(), Some(&journal_dir)).unwrap();
        let mut model = DurableRaft::new(&VOTERS);
        let persists = [persist(1, 2, 1, true), persist(3, 2, 1, true)];
        append_all(&mut store, &mut model, &persists, true).await;
        drop(store);
        // A lost disk for the store, not for the journal: redoing persist 3 and after on
        // a new store would give it entries 3 and 4 with no 1 and 2.
        fs::remove_dir_all(&dir).unwrap();
        let mut store = open_maybe_journaled(&dir, no_rotation(), Some(&journal_dir)).unwrap();
        assert_eq!(store.recover().await.unwrap(), DurableRaft::new(&VOTERS));
        drop(store);
        let mut store = open_maybe_journaled(&dir, no_rotation(), Some(&journal_dir)).unwrap();
        assert_eq!(store.recover().await.unwrap(), DurableRaft::new(&VOTERS));
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_file_store_recovers_what_a_memory_store_does(
        ops in prop::collection::vec(op(), 1..40),
        file_bytes_max in prop::sample::select(vec![256u64, 1024, 1 << 20]),
    ) {
        runtime().block_on(check_against_memory(ops, file_bytes_max, false));
    }

    #[test]
    fn a_journaled_file_store_recovers_what_a_memory_store_does(
        ops in prop::collection::vec(op(), 1..40),
        file_bytes_max in prop::sample::select(vec![256u64, 1024, 1 << 20]),
    ) {
        runtime().block_on(check_against_memory(ops, file_bytes_max, true));
    }
}
