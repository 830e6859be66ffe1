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
