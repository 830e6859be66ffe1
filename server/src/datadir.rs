//! The data directory of an all-in-one node: one sub-directory of log segments and snapshots
//! per partition, and a layout file that records the partition count.
//!
//! ```text
//! <data-dir>/walletd-layout          "format = 1" and "partitions = 8"
//! <data-dir>/partition-0/log-….seg   see walletd_runtime::storage::file
//! <data-dir>/partition-1/…
//! ```
//! The partition count is part of the data: an account's partition is its hash modulo the
//! count, so opening the same logs with another count would look accounts up in the wrong
//! partition. The layout file makes that mistake impossible.
//!
//! A cluster node (`wallet node`) keeps a data directory of the same layout in
//! `<data-dir>/node-<N>`, holding only the partitions it owns, and a node file that says
//! which ones: readers then know the others live elsewhere, and a node restarted with a map
//! that moved partitions refuses to start on data that is not the map's.
//!
//! ```text
//! <data-dir>/node-1/walletd-layout    as above, with the cluster's partition count
//! <data-dir>/node-1/walletd-node      "node = 1" and "holds = 1,4,7"
//! <data-dir>/node-1/partition-1/…
//! <data-dir>/node-1/cluster-map.json  a node on etcd: the last map it ran (crate::map_follower)
//! ```

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use walletd_core::model::event::Lsn;
use walletd_core::model::partition::{PartitionId, PARTITIONS_MAX};

/// Name of the file that records the layout of a data directory.
pub const LAYOUT_FILE: &str = "walletd-layout";
/// Name of the file that marks a cluster node's data directory and lists its partitions.
pub const NODE_FILE: &str = "walletd-node";
const LAYOUT_FORMAT: u32 = 1;

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "{root} was created with {recorded} partitions; refusing to use it with {requested} \
         (accounts would map to other partitions). Use --partitions {recorded}, or a new --data-dir"
    )]
    PartitionMismatch {
        root: String,
        recorded: u32,
        requested: u32,
    },
    #[error("{0} is not a walletd data directory (no {LAYOUT_FILE} file and no partition-N directories)")]
    NotADataDir(String),
    #[error("{path}: {detail}")]
    BadLayout { path: String, detail: String },
    #[error("partition count must be between 1 and {PARTITIONS_MAX}, got {0}")]
    BadPartitionCount(u32),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(
        "{root} holds partitions {recorded:?} of node {node}, but the cluster map gives it \
         {mapped:?}; a cluster file's map cannot move partitions: restore the old map (on \
         etcd, copies move with `wallet cluster move`)"
    )]
    NodePartitions {
        root: String,
        node: u32,
        recorded: Vec<PartitionId>,
        mapped: Vec<PartitionId>,
    },
    #[error("{root} is node {recorded}'s directory, not node {node}'s")]
    OtherNode {
        root: String,
        node: u32,
        recorded: u32,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// An opened data directory with a known partition count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
    partitions: u32,
}

impl DataDir {
    /// Opens `root` for a server that runs `partitions` partitions, creating the directory
    /// and its layout file if needed; refuses a directory made with another count.
    pub fn create_or_check(root: &Path, partitions: u32) -> Result<DataDir, DataDirError> {
        if partitions == 0 || partitions > PARTITIONS_MAX {
            return Err(DataDirError::BadPartitionCount(partitions));
        }
        fs::create_dir_all(root).map_err(io_error(root))?;
        let recorded = match read_layout(root)? {
            Some(recorded) => Some(recorded),
            None => count_partition_dirs(root)?.filter(|n| *n > 0),
        };
        if let Some(recorded) = recorded {
            if recorded != partitions {
                return Err(DataDirError::PartitionMismatch {
                    root: root.display().to_string(),
                    recorded,
                    requested: partitions,
                });
            }
        }
        write_layout(root, partitions)?;
        Ok(DataDir {
            root: root.to_path_buf(),
            partitions,
        })
    }

    /// Opens an existing data directory (for `replay` and `verify`), reading its count.
    pub fn open(root: &Path) -> Result<DataDir, DataDirError> {
        let not_a_data_dir = || DataDirError::NotADataDir(root.display().to_string());
        if !root.is_dir() {
            return Err(not_a_data_dir());
        }
        let partitions = match read_layout(root)? {
            Some(n) => n,
            None => count_partition_dirs(root)?
                .filter(|n| *n > 0)
                .ok_or_else(not_a_data_dir)?,
        };
        Ok(DataDir {
            root: root.to_path_buf(),
            partitions,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The directory of partition `partition`'s log and snapshots.
    pub fn partition_dir(&self, partition: PartitionId) -> PathBuf {
        assert!(partition < self.partitions);
        self.root.join(format!("partition-{partition}"))
    }

    /// The log segments of a partition, oldest first, as `(first lsn, path)`.
    pub fn segments(&self, partition: PartitionId) -> io::Result<Vec<(Lsn, PathBuf)>> {
        numbered_files(&self.partition_dir(partition), "log-", ".seg")
    }

    /// The snapshots of a partition, oldest first, as `(lsn, path)`.
    pub fn snapshots(&self, partition: PartitionId) -> io::Result<Vec<(Lsn, PathBuf)>> {
        numbered_files(&self.partition_dir(partition), "snapshot-", ".snap")
    }
}

/// Files in `dir` named `<prefix><number><suffix>`, sorted by the number. A missing
/// directory has no files (a partition that never wrote anything).
fn numbered_files(dir: &Path, prefix: &str, suffix: &str) -> io::Result<Vec<(u64, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.strip_suffix(suffix))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((number, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// Writes `text` to `path` atomically and durably: into `tmp`, synced, renamed over `path`,
/// and the directory `root` synced, so a crash leaves the old file or the new one.
fn replace_durably(root: &Path, tmp: &Path, path: &Path, text: &str) -> Result<(), DataDirError> {
    let mut file = fs::File::create(tmp).map_err(io_error(tmp))?;
    file.write_all(text.as_bytes()).map_err(io_error(tmp))?;
    file.sync_all().map_err(io_error(tmp))?;
    fs::rename(tmp, path).map_err(io_error(path))?;
    fs::File::open(root)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(root))
}

/// The `key = value` lines of a layout or node file (blank lines and `#` comments skipped);
/// `None` for a line that is neither.
fn key_values(text: &str) -> impl Iterator<Item = Option<(&str, &str)>> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.split_once('='))
}

/// The refusal of the layout or node file at `path` for `detail`.
fn bad_layout(path: &Path) -> impl Fn(&str) -> DataDirError + '_ {
    move |detail| DataDirError::BadLayout {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

/// The text of the file at `path`, or `None` when there is no such file.
fn read_if_present(path: &Path) -> Result<Option<String>, DataDirError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// The partition count recorded in the layout file, if there is one.
fn read_layout(root: &Path) -> Result<Option<u32>, DataDirError> {
    let path = root.join(LAYOUT_FILE);
    let Some(text) = read_if_present(&path)? else {
        return Ok(None);
    };
    let bad = bad_layout(&path);
    let mut partitions = None;
    let mut format = None;
    for line in key_values(&text) {
        let (key, value) = line.ok_or_else(|| bad("expected `key = value` lines"))?;
        let value: u32 = value
            .trim()
            .parse()
            .map_err(|_| bad("values are numbers"))?;
        match key.trim() {
            "format" => format = Some(value),
            "partitions" => partitions = Some(value),
            _ => {}
        }
    }
    if format != Some(LAYOUT_FORMAT) {
        return Err(bad(&format!(
            "unknown layout format (this version reads format {LAYOUT_FORMAT})"
        )));
    }
    match partitions {
        Some(n) if n > 0 && n <= PARTITIONS_MAX => Ok(Some(n)),
        _ => Err(bad("no valid `partitions = N` line")),
    }
}

/// Writes the layout file atomically (temporary file, fsync, rename, fsync of the directory).
fn write_layout(root: &Path, partitions: u32) -> Result<(), DataDirError> {
    let path = root.join(LAYOUT_FILE);
    if read_layout(root)? == Some(partitions) {
        return Ok(());
    }
    let tmp = root.join(format!("{LAYOUT_FILE}.tmp"));
    let text = format!(
        "# walletd data directory. Accounts map to partitions by this count: never edit it.\n\
         format = {LAYOUT_FORMAT}\npartitions = {partitions}\n"
    );
    replace_durably(root, &tmp, &path, &text)
}

/// The number of `partition-N` directories, if they form `0..N` (a directory written before
/// the layout file existed); `Some(0)` if there are none.
fn count_partition_dirs(root: &Path) -> Result<Option<u32>, DataDirError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(root).map_err(io_error(root))? {
        let entry = entry.map_err(io_error(root))?;
        let name = entry.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("partition-"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            found.push(n);
        }
    }
    found.sort_unstable();
    let contiguous = found.iter().enumerate().all(|(i, n)| i as u32 == *n);
    Ok(contiguous.then_some(found.len() as u32))
}

impl DataDir {
    /// The partitions whose logs live in this directory: all of them for an all-in-one node,
    /// those its node file lists for a cluster node's directory, and for a node whose copies
    /// move (its node file lists none) those it has a directory of.
    pub fn held_partitions(&self) -> Result<Vec<PartitionId>, DataDirError> {
        match read_node_file(&self.root)? {
            Some((_, holds)) if !holds.is_empty() => Ok(holds),
            Some(_) => Ok((0..self.partitions)
                .filter(|p| self.partition_dir(*p).is_dir())
                .collect()),
            None => Ok((0..self.partitions).collect()),
        }
    }

    /// Records (first start) or checks (every later start) that this directory belongs to
    /// cluster node `node` and holds exactly `partitions`.
    pub fn claim_for_node(
        &self,
        node: u32,
        partitions: &[PartitionId],
    ) -> Result<(), DataDirError> {
        assert!(partitions.iter().all(|p| *p < self.partitions));
        match read_node_file(&self.root)? {
            Some((recorded_node, recorded)) if recorded_node == node && recorded == partitions => {
                Ok(())
            }
            Some((_, recorded)) => Err(DataDirError::NodePartitions {
                root: self.root.display().to_string(),
                node,
                recorded,
                mapped: partitions.to_vec(),
            }),
            None => write_node_file(&self.root, node, partitions),
        }
    }
}

impl DataDir {
    /// Records that this directory is node `node`'s, whose copies move with its map in
    /// etcd: the partitions it holds are the replica directories it has, so only the node
    /// is checked. Refused if the directory is another node's.
    pub fn claim_for_moving_node(&self, node: u32) -> Result<(), DataDirError> {
        match read_node_file(&self.root)? {
            Some((recorded, _)) if recorded == node => Ok(()),
            Some((recorded, _)) => Err(DataDirError::OtherNode {
                root: self.root.display().to_string(),
                node,
                recorded,
            }),
            None => write_node_file(&self.root, node, &[]),
        }
    }
}

/// The node file's `(node, partitions held)`, if there is one.
fn read_node_file(root: &Path) -> Result<Option<(u32, Vec<PartitionId>)>, DataDirError> {
    let path = root.join(NODE_FILE);
    let Some(text) = read_if_present(&path)? else {
        return Ok(None);
    };
    let bad = bad_layout(&path);
    let (mut node, mut holds) = (None, None);
    for line in key_values(&text) {
        let (key, value) = line.ok_or_else(|| bad("expected `key = value` lines"))?;
        match key.trim() {
            "node" => node = Some(value.trim().parse().map_err(|_| bad("node is a number"))?),
            "holds" => {
                let parsed: Result<Vec<PartitionId>, _> = (value.split(','))
                    .filter(|p| !p.trim().is_empty())
                    .map(|p| p.trim().parse())
                    .collect();
                holds = Some(parsed.map_err(|_| bad("holds is a list of partition numbers"))?);
            }
            _ => {}
        }
    }
    match (node, holds) {
        (Some(node), Some(holds)) => Ok(Some((node, holds))),
        _ => Err(bad("expected `node = N` and `holds = p, q, ...` lines")),
    }
}

/// Writes the node file atomically, as [`write_layout`] does the layout file.
fn write_node_file(root: &Path, node: u32, partitions: &[PartitionId]) -> Result<(), DataDirError> {
    let path = root.join(NODE_FILE);
    let tmp = root.join(format!("{NODE_FILE}.tmp"));
    let holds: Vec<String> = partitions.iter().map(u32::to_string).collect();
    let text = format!(
        "# walletd cluster node directory: the partitions that live here. Never edit it.\n\
         node = {node}\nholds = {}\n",
        holds.join(",")
    );
    replace_durably(root, &tmp, &path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_the_partition_count_and_refuses_another() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        let dir = DataDir::create_or_check(&root, 8).unwrap();
        assert_eq!(dir.partitions(), 8);
        assert_eq!(DataDir::open(&root).unwrap().partitions(), 8);
        assert!(DataDir::create_or_check(&root, 8).is_ok());
        let error = DataDir::create_or_check(&root, 4).unwrap_err();
        assert!(
            matches!(
                error,
                DataDirError::PartitionMismatch {
                    recorded: 8,
                    requested: 4,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("--partitions 8"));
    }

    #[test]
    fn infers_the_count_of_an_old_directory_and_rejects_strangers() {
        let tmp = tempfile::tempdir().unwrap();
        for p in 0..3 {
            fs::create_dir_all(tmp.path().join(format!("partition-{p}"))).unwrap();
        }
        assert_eq!(DataDir::open(tmp.path()).unwrap().partitions(), 3);
        assert!(DataDir::create_or_check(tmp.path(), 8).is_err());
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            DataDir::open(empty.path()),
            Err(DataDirError::NotADataDir(_))
        ));
        fs::write(empty.path().join(LAYOUT_FILE), "partitions = x\n").unwrap();
        assert!(matches!(
            DataDir::open(empty.path()),
            Err(DataDirError::BadLayout { .. })
        ));
    }

    #[test]
    fn a_node_directory_records_its_partitions_and_refuses_others() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("node-1");
        let dir = DataDir::create_or_check(&root, 6).unwrap();
        assert_eq!(dir.held_partitions().unwrap(), vec![0, 1, 2, 3, 4, 5]);
        dir.claim_for_node(1, &[1, 4]).unwrap();
        dir.claim_for_node(1, &[1, 4]).unwrap();
        let reopened = DataDir::open(&root).unwrap();
        assert_eq!(reopened.held_partitions().unwrap(), vec![1, 4]);
        let error = reopened.claim_for_node(1, &[1, 3]).unwrap_err();
        assert!(
            matches!(error, DataDirError::NodePartitions { .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("cannot move partitions"),
            "{error}"
        );
        reopened.claim_for_moving_node(1).unwrap();
        let moving = DataDir::create_or_check(&tmp.path().join("node-5"), 6).unwrap();
        moving.claim_for_moving_node(5).unwrap();
        assert_eq!(moving.held_partitions().unwrap(), Vec::<PartitionId>::new());
        fs::create_dir_all(moving.partition_dir(4)).unwrap();
        assert_eq!(moving.held_partitions().unwrap(), vec![4]);
        let other = reopened.claim_for_moving_node(5).unwrap_err();
        assert!(
            matches!(other, DataDirError::OtherNode { recorded: 1, .. }),
            "{other}"
        );
        fs::write(root.join(NODE_FILE), "node = 1\nholds = 1,x\n").unwrap();
        assert!(matches!(
            reopened.held_partitions(),
            Err(DataDirError::BadLayout { .. })
        ));
    }
}
