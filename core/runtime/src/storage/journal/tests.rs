use super::*;
use crate::driver::recover;
use crate::storage::file::{FileStorage, FileStorageConfig};
use crate::storage::{read_whole_log, Storage};
use walletd_core::log::codec::{
    decode_log, encode_record, encode_sync_mark, Record, SYNC_MARK_LEN,
};
use walletd_core::model::event::Event;
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency};
use walletd_core::model::partition::partition_of;

const PARTITIONS: u32 = 3;

/// Small segments, so that batches roll the partitions' logs over now and then.
fn storage_config() -> FileStorageConfig {
    FileStorageConfig {
        segment_bytes_max: 4096,
        snapshots_kept_max: 1,
    }
}

/// An account of `partition` (of [`PARTITIONS`]).
fn account_of(partition: PartitionId) -> AccountId {
    (0..)
        .map(|i| AccountId::new(&format!("acct-{i}")).unwrap())
        .find(|a| partition_of(a, PARTITIONS) == partition)
        .unwrap()
}

/// Record `lsn` of partition `partition`'s log: its account opened, then deposits.
fn record(partition: PartitionId, lsn: Lsn) -> Record {
    let account = account_of(partition);
    let event = match lsn {
        1 => Event::AccountOpened {
            account,
            currency: Currency::USD,
        },
        _ => Event::Deposited {
            account,
            amount: Amount::from_minor(lsn).unwrap(),
            transaction_id: TransactionId::new(&format!("d{lsn}")).unwrap(),
        },
    };
    Record {
        lsn,
        timestamp: 1_700_000_000_000_000 + lsn,
        event,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Opens the journal and every partition's storage under `root`, recovers each, and
/// returns the storages with the last lsn each recovered.
async fn open_node(
    root: &Path,
    config: JournalConfig,
) -> (Arc<NodeJournal>, Vec<(FileStorage, Lsn)>) {
    let journal = NodeJournal::open(root.join("journal"), PARTITIONS, config).unwrap();
    let mut storages = Vec::new();
    for p in 0..PARTITIONS {
        let mut storage = FileStorage::open_journaled(
            root.join(format!("p{p}")),
            storage_config(),
            Arc::clone(&journal),
            p,
            true,
        )
        .unwrap();
        let (_, report) = recover(&mut storage, p, PARTITIONS).await.unwrap();
        storages.push((storage, report.last_lsn));
    }
    (journal, storages)
}

/// Commits `batches` batches of one to three records to each partition, round-robin;
/// returns how many records each partition has after them.
async fn commit_batches(storages: &mut [(FileStorage, Lsn)], batches: u64) {
    for batch in 0..batches {
        for (p, (storage, last)) in storages.iter_mut().enumerate() {
            let first = *last + 1;
            let mut bytes = Vec::new();
            for lsn in first..first + 1 + batch % 3 {
                encode_record(&record(p as PartitionId, lsn), &mut bytes);
                *last = lsn;
            }
            let (_, result) = storage.append_durably(first, bytes, Box::new(|| {})).await;
            result.unwrap();
        }
    }
}

/// What a power loss leaves of a partition's log: each newest segment cut back to its last
/// sync mark (a mark follows every sync of the log; what comes after it no sync covered).
fn lose_unsynced_log_tails(root: &Path) {
    for p in 0..PARTITIONS {
        let dir = root.join(format!("p{p}"));
        let mut segments: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "seg"))
            .collect();
        segments.sort();
        let newest = segments.last().unwrap();
        let name = newest.file_name().unwrap().to_str().unwrap();
        let segment_lsn = crate::storage::segments::segment_lsn(name).unwrap();
        let bytes = fs::read(newest).unwrap();
        let synced_end = (0..bytes.len())
            .filter(|&at| {
                let mut mark = Vec::new();
                encode_sync_mark(at as u64, segment_lsn, &mut mark);
                bytes[at..].starts_with(&mark)
            })
            .max()
            .expect("a segment starts with a header, a mark vouching for nothing")
            + SYNC_MARK_LEN;
        let file = OpenOptions::new().write(true).open(newest).unwrap();
        file.set_len(synced_end as u64).unwrap();
    }
}

/// The lsns of `storage`'s log, in order, checking each record is the one written.
async fn logged_lsns(storage: &mut FileStorage, partition: PartitionId) -> Vec<Lsn> {
    let mut lsns = Vec::new();
    for (segment, bytes) in read_whole_log(storage, 0).await.unwrap() {
        for record in decode_log(&bytes, segment.first_lsn).unwrap().records {
            assert_eq!(record, self::record(partition, record.lsn));
            lsns.push(record.lsn);
        }
    }
    lsns
}

#[test]
fn acknowledged_batches_outlive_the_partition_logs_unsynced_tails() {
    let root = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let (journal, mut storages) = open_node(root.path(), JournalConfig::default()).await;
        commit_batches(&mut storages, 40).await;
        let committed: Vec<Lsn> = storages.iter().map(|(_, last)| *last).collect();
        assert!(journal.stats().rounds.load(Ordering::Relaxed) >= 40);
        drop(storages);
        drop(journal);
        lose_unsynced_log_tails(root.path());

        let (journal, mut storages) = open_node(root.path(), JournalConfig::default()).await;
        for (p, (storage, last)) in storages.iter_mut().enumerate() {
            assert_eq!(
                *last, committed[p],
                "partition {p} recovered every committed record"
            );
            let lsns = logged_lsns(storage, p as PartitionId).await;
            assert_eq!(
                lsns,
                (1..=committed[p]).collect::<Vec<_>>(),
                "partition {p}'s log is whole again"
            );
        }
        // Each recovery synced its log: the files it redid from are gone, and only the file
        // this run writes to is left.
        let files = journal_files(journal.dir()).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].0, journal.recovered_through() + 1);
    });
}

#[test]
fn a_node_that_stops_again_before_recovering_keeps_its_journal() {
    let root = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let (journal, mut storages) = open_node(root.path(), JournalConfig::default()).await;
        commit_batches(&mut storages, 10).await;
        let committed: Vec<Lsn> = storages.iter().map(|(_, last)| *last).collect();
        drop(storages);
        drop(journal);
        lose_unsynced_log_tails(root.path());
        // Opened and closed with no partition recovered: nothing may be deleted.
        drop(
            NodeJournal::open(
                root.path().join("journal"),
                PARTITIONS,
                JournalConfig::default(),
            )
            .unwrap(),
        );
        let (_journal, storages) = open_node(root.path(), JournalConfig::default()).await;
        let recovered: Vec<Lsn> = storages.iter().map(|(_, last)| *last).collect();
        assert_eq!(recovered, committed);
    });
}

#[test]
fn closed_files_go_once_their_partitions_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    // Files so small that nearly every round closes one.
    let config = JournalConfig {
        file_bytes_max: 512,
        preallocate_bytes: 1024,
    };
    runtime().block_on(async {
        let (journal, mut storages) = open_node(root.path(), config).await;
        commit_batches(&mut storages, 200).await;
        let deleted = journal.stats().files_deleted.load(Ordering::Relaxed);
        assert!(
            deleted > 50,
            "closed files were deleted as partitions checkpointed: {deleted}"
        );
        // At most one file per partition still waits for that partition's next commit, and
        // the open file.
        let files = journal_files(journal.dir()).unwrap();
        assert!(files.len() <= PARTITIONS as usize + 1, "{files:?}");
        let committed: Vec<Lsn> = storages.iter().map(|(_, last)| *last).collect();
        drop(storages);
        drop(journal);
        lose_unsynced_log_tails(root.path());
        let (_journal, storages) = open_node(root.path(), config).await;
        let recovered: Vec<Lsn> = storages.iter().map(|(_, last)| *last).collect();
        assert_eq!(
            recovered, committed,
            "what checkpoints let go was in the logs"
        );
    });
}

#[test]
fn a_torn_round_is_cut_and_a_damaged_one_refuses_the_node() {
    let root = tempfile::tempdir().unwrap();
    let journal_dir = root.path().join("journal");
    runtime().block_on(async {
        let (journal, mut storages) = open_node(root.path(), JournalConfig::default()).await;
        commit_batches(&mut storages, 5).await;
        drop(storages);
        drop(journal);
    });
    let (_, path) = journal_files(&journal_dir).unwrap().pop().unwrap();
    let bytes = fs::read(&path).unwrap();
    let end = read_journal_file(&bytes).unwrap().valid_len as usize;
    // Half a round after the last one: a commit that never completed.
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&bytes[..30], end as u64).unwrap();
    drop(file);
    drop(NodeJournal::open(&journal_dir, PARTITIONS, JournalConfig::default()).unwrap());
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        end as u64,
        "the torn round was cut"
    );
    // A flipped bit in the first round, with later rounds intact: synced bytes damaged.
    let mut damaged = fs::read(&path).unwrap();
    damaged[rounds::ROUND_HEADER_LEN + 3] ^= 1;
    fs::write(&path, &damaged).unwrap();
    let error = NodeJournal::open(&journal_dir, PARTITIONS, JournalConfig::default())
        .err()
        .expect("damage is refused");
    let message = error.to_string();
    assert!(
        message.contains(&path.display().to_string()) && message.contains("byte offset 0"),
        "{message}"
    );
}

#[test]
fn a_batch_of_a_partition_the_node_does_not_have_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("journal");
    runtime().block_on(async {
        let journal = NodeJournal::open(&dir, 8, JournalConfig::default()).unwrap();
        let mut bytes = Vec::new();
        encode_record(&record(0, 1), &mut bytes);
        journal.commit(7, 1, bytes).await.1.unwrap();
    });
    let error = NodeJournal::open(&dir, 4, JournalConfig::default())
        .err()
        .unwrap();
    assert!(
        matches!(error, JournalError::UnknownPartition { partition: 7, .. }),
        "{error}"
    );
}

/// Commits per second of `tasks` tasks that each commit small batches one after another,
/// through the journal or syncing a file of their own: not a test, a measurement
/// (`cargo test --release -p walletd-runtime journal_throughput -- --ignored --nocapture`).
#[test]
#[ignore]
fn journal_throughput() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for tasks in [1u32, 8] {
        let dir = tempfile::tempdir().unwrap();
        let journal =
            NodeJournal::open(dir.path().join("j"), tasks, JournalConfig::default()).unwrap();
        let seconds = 2.0;
        let commits = runtime.block_on(async {
            let mut handles = Vec::new();
            for p in 0..tasks {
                let journal = Arc::clone(&journal);
                handles.push(tokio::spawn(async move {
                    let start = std::time::Instant::now();
                    let mut n = 0u64;
                    let mut bytes = vec![1u8; 300];
                    while start.elapsed().as_secs_f64() < seconds {
                        let (back, r) = journal.commit(p, n + 1, bytes).await;
                        r.unwrap();
                        bytes = back;
                        n += 1;
                    }
                    n
                }));
            }
            let mut total = 0;
            for h in handles {
                total += h.await.unwrap();
            }
            total
        });
        let rounds = journal.stats().rounds.load(Ordering::Relaxed);
        eprintln!(
            "journal tasks={tasks} commits/s={:.0} rounds/s={:.0} us/commit={:.0}",
            commits as f64 / seconds,
            rounds as f64 / seconds,
            seconds * 1e6 * f64::from(tasks) / commits as f64
        );
        let own = runtime.block_on(async {
            let mut handles = Vec::new();
            for p in 0..tasks {
                let path = dir.path().join(format!("own-{p}"));
                handles.push(tokio::spawn(async move {
                    let file = Arc::new(std::fs::File::create(&path).unwrap());
                    file.set_len(64 << 20).unwrap();
                    let zeros = vec![0u8; 64 << 20];
                    file.write_all_at(&zeros, 0).unwrap();
                    file.sync_all().unwrap();
                    let start = std::time::Instant::now();
                    let mut n = 0u64;
                    while start.elapsed().as_secs_f64() < seconds {
                        let file = Arc::clone(&file);
                        tokio::task::spawn_blocking(move || {
                            file.write_all_at(&[1u8; 300], n * 300).unwrap();
                            file.sync_data().unwrap();
                        })
                        .await
                        .unwrap();
                        n += 1;
                    }
                    n
                }));
            }
            let mut total = 0;
            for h in handles {
                total += h.await.unwrap();
            }
            total
        });
        eprintln!(
            "own-file tasks={tasks} commits/s={:.0} us/commit={:.0}",
            own as f64 / seconds,
            seconds * 1e6 * f64::from(tasks) / own as f64
        );
    }
}

#[test]
fn a_snapshot_is_never_ahead_of_its_partitions_log() {
    let root = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let (journal, mut storages) = open_node(root.path(), JournalConfig::default()).await;
        commit_batches(&mut storages, 12).await;
        // Partition 0's state as of its last record, rebuilt from the records it was given.
        let (storage, last) = &mut storages[0];
        let mut bytes = Vec::new();
        for lsn in 1..=*last {
            encode_record(&record(0, lsn), &mut bytes);
        }
        let mut rebuilt = walletd_core::log::recovery::Recovery::new(0, PARTITIONS);
        rebuilt.replay_journaled(1, &bytes).unwrap();
        let (ledger, report) = rebuilt.finish();
        assert_eq!(report.last_lsn, *last);
        let image = walletd_core::log::snapshot::SnapshotImage::of(&ledger);
        storage
            .write_snapshot(*last, Box::new(move |out| image.write_to(out)))
            .await
            .unwrap();
        commit_batches(&mut storages, 3).await;
        let committed: Vec<Lsn> = storages.iter().map(|(_, last)| *last).collect();
        drop(storages);
        drop(journal);
        lose_unsynced_log_tails(root.path());

        let (_journal, mut storages) = open_node(root.path(), JournalConfig::default()).await;
        let (storage, last) = &mut storages[0];
        assert_eq!(*last, committed[0]);
        let lsns = logged_lsns(storage, 0).await;
        assert_eq!(
            lsns,
            (1..=committed[0]).collect::<Vec<_>>(),
            "the log has no gap under the snapshot"
        );
    });
}
