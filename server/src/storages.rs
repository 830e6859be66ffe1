//! Opening a node's partition storages, each partition's log synced by itself or all of them
//! through the node journal (`--group-commit`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use walletd_core::model::partition::PartitionId;
use walletd_runtime::storage::file::{FileStorage, FileStorageConfig};
use walletd_runtime::storage::journal::{JournalConfig, JournalError, NodeJournal};

use crate::cli::GroupCommit;

/// The directory of a node's journal, under its data directory.
pub const JOURNAL_DIR: &str = "journal";

/// Why a node's storages could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open {path}: {source}")]
    Partition {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Refuses to read `partition`'s log in the stopped node's directory `root` while the node
/// journal there holds records past `log_last`, the log's last lsn: they are acknowledged
/// records the log lost with its unsynced tail, and only the node's recovery appends them
/// again. Reading the log then would show a history without them.
pub fn check_journal_redone(
    root: &Path,
    partition: PartitionId,
    log_last: walletd_core::model::event::Lsn,
) -> Result<(), String> {
    let dir = root.join(JOURNAL_DIR);
    let ends =
        walletd_runtime::storage::journal::journaled_ends(&dir).map_err(|e| e.to_string())?;
    match ends.get(&partition) {
        Some(&end) if end > log_last => Err(format!(
            "partition {partition}: the node journal in {} holds records up to lsn {end}, past \
             the log's end at lsn {log_last} (a power loss took the log's unsynced tail); start \
             the node once, so that its recovery appends them to the log, then read it",
            dir.display()
        )),
        _ => Ok(()),
    }
}

/// A node's opened storages.
pub struct NodeStorages {
    pub partitions: Vec<(PartitionId, FileStorage)>,
    /// The journal they commit through (`--group-commit node`), for its metrics.
    pub journal: Option<Arc<NodeJournal>>,
}

/// Opens the storage of each of `local` (of `partitions` in all) at `partition_dir(p)`, under
/// the node journal in `<root>/journal`, which is read first so that each partition's recovery
/// can redo what its log lost. With [`GroupCommit::Node`] commits go through the journal;
/// with [`GroupCommit::Partition`] each partition syncs its own log, and the journal only
/// serves recovery.
pub fn open_storages(
    root: &Path,
    partitions: u32,
    local: &[PartitionId],
    partition_dir: impl Fn(PartitionId) -> PathBuf,
    group_commit: GroupCommit,
) -> Result<NodeStorages, OpenError> {
    // Opened in either mode: what an earlier run committed through it must be redone
    // whatever this run does.
    let journal = NodeJournal::open(root.join(JOURNAL_DIR), partitions, JournalConfig::default())?;
    let commits = group_commit == GroupCommit::Node;
    let partitions = local
        .iter()
        .map(|&partition| {
            let path = partition_dir(partition);
            let config = FileStorageConfig::default();
            FileStorage::open_journaled(&path, config, Arc::clone(&journal), partition, commits)
                .map(|storage| (partition, storage))
                .map_err(|source| OpenError::Partition {
                    path: path.display().to_string(),
                    source,
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(NodeStorages {
        partitions,
        journal: commits.then_some(journal),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadir::DataDir;
    use walletd_core::log::codec::encode_record;
    use walletd_core::log::codec::Record;
    use walletd_core::model::event::Event;
    use walletd_core::model::ids::AccountId;
    use walletd_core::model::money::Currency;
    use walletd_runtime::engine::{Engine, EngineConfig};

    /// A record the journal holds and the log does not (as after a power loss that took
    /// the log's unsynced tail): verify refuses to judge the log until a recovery redid it,
    /// and after one the log has it and verify passes.
    #[test]
    fn logs_behind_their_journal_are_not_read_until_recovery_redid_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = DataDir::create_or_check(root.path(), 1).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let journal =
                NodeJournal::open(dir.root().join(JOURNAL_DIR), 1, JournalConfig::default())
                    .unwrap();
            let mut bytes = Vec::new();
            let opened = Event::AccountOpened {
                account: AccountId::new("alice").unwrap(),
                currency: Currency::USD,
            };
            let record = Record {
                lsn: 1,
                timestamp: 1_700_000_000_000_000,
                event: opened,
            };
            encode_record(&record, &mut bytes);
            journal.commit(0, 1, bytes).await.1.unwrap();
        });
        let report = crate::verify::verify(&dir, false);
        assert!(!report.is_clean());
        assert!(
            report.violations[0].contains("holds records up to lsn 1, past the log's end at lsn 0"),
            "{:?}",
            report.violations
        );
        runtime.block_on(async {
            let opened = open_storages(
                dir.root(),
                1,
                &[0],
                |p| dir.partition_dir(p),
                GroupCommit::Node,
            )
            .unwrap();
            let storages = opened.partitions.into_iter().map(|(_, s)| s).collect();
            let engine = Engine::start(
                storages,
                EngineConfig {
                    partitions: 1,
                    ..EngineConfig::default()
                },
            )
            .await
            .unwrap();
            assert_eq!(engine.recovery_reports()[0].records_redone, 1);
            engine.shutdown().await.unwrap();
        });
        let report = crate::verify::verify(&dir, false);
        assert!(report.is_clean(), "{:?}", report.violations);
    }
}
