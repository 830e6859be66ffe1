//! The final state of a replicated run: what each replica of each partition would restart
//! from after a power loss that kept no unsynced write, and whether the replicas agree.
//!
//! A replica's partition log gets committed batches without a sync (its Raft store holds
//! them durably, see `walletd_runtime::replica`), so its durable log may lack a tail that
//! its Raft store has. What the replica restarts from is both: the durable log's records,
//! then the records of the committed entries (up to the durable hard state's commit index)
//! past the log's end, which a restart appends again. Checked here (`log_matching`):
//! - where a replica's log and its committed Raft entries overlap, they hold the same
//!   records, and the entries continue the log without a gap;
//! - the replicas of one partition hold the same records on their common prefix.
//!
//! The longest replica log of each partition is the partition's final log for every other
//! end-of-run check; each replica's own log must still replay, and equal what core's
//! recovery (latest snapshot plus log) rebuilds from its disk.

use raft::eraftpb::EntryType;
use walletd_core::ledger::Ledger;
use walletd_core::log::codec::{decode_log, Record, RecordReader};
use walletd_core::log::replay::{replay, AsOf};
use walletd_core::model::partition::PartitionId;
use walletd_core::protocol::invariants::{self, Invariant};
use walletd_core::replica::payload;
use walletd_runtime::driver::recover;

use crate::checkers::Violation;
use crate::disk::Disk;
use crate::network::HostId;
use crate::raft_disk::RaftDisk;

/// The invariant every disagreement between logs breaks.
pub const LOG_MATCHING: &str = "log_matching";

/// What one replica would restart from.
pub struct ReplicaLog {
    pub node: HostId,
    /// The records of its durable partition log, then those of its committed Raft entries
    /// past them.
    pub records: Vec<Record>,
    /// The durable bytes of its partition log (for the trace).
    pub log_bytes: Vec<u8>,
}

/// The final log of replica `node` of `partition` from its disks; its problems (a log that
/// does not decode, does not replay or recover alike, or disagrees with its Raft entries)
/// go to `found`.
pub async fn replica_log(
    node: HostId,
    partition: PartitionId,
    partitions: u32,
    disk: &Disk,
    raft: &RaftDisk,
    found: &mut Vec<Violation>,
) -> ReplicaLog {
    let at = format!("partition {partition} on node-{node}");
    let (first_lsn, log_bytes) = disk.durable_log();
    let mut records = match decode_log(&log_bytes, first_lsn.max(1)) {
        Ok(decoded) => decoded.records,
        Err(error) => {
            let detail = format!("{at}: the durable log does not decode: {error}");
            found.push(Violation::new(Invariant::Replay.name(), detail));
            Vec::new()
        }
    };
    recovers_alike(&at, partition, partitions, disk, &records, found).await;
    let durable = raft.durable();
    let commit = durable.hard_state.commit;
    let committed = durable.entries.iter().take_while(|e| e.index <= commit);
    // Membership changes (a replica that lost its data rejoining) carry no records.
    for entry in committed.filter(|e| e.get_entry_type() == EntryType::EntryNormal) {
        let batch = match payload::decode(&entry.data) {
            Ok(Some(batch)) => batch,
            Ok(None) => continue,
            Err(error) => {
                let detail = format!("{at}: committed entry {}: {error}", entry.index);
                found.push(Violation::new(LOG_MATCHING, detail));
                return ReplicaLog {
                    node,
                    records,
                    log_bytes,
                };
            }
        };
        let mut reader = RecordReader::new(&batch.records, batch.first_lsn);
        while let Ok(Some(record)) = reader.next_record() {
            if let Some(problem) = continue_with(&mut records, record) {
                let detail = format!("{at}, committed entry {}: {problem}", entry.index);
                found.push(Violation::new(LOG_MATCHING, detail));
                return ReplicaLog {
                    node,
                    records,
                    log_bytes,
                };
            }
        }
    }
    ReplicaLog {
        node,
        records,
        log_bytes,
    }
}

/// Adds `record`, of a committed entry, to `records` (lsns from 1, no gap): it is either
/// already there, the same, or the next one. Returns what is wrong otherwise.
fn continue_with(records: &mut Vec<Record>, record: Record) -> Option<String> {
    let next = records.len() as u64 + 1;
    match record.lsn {
        lsn if lsn == next => {
            records.push(record);
            None
        }
        lsn if lsn > next => Some(format!(
            "lsn {lsn} follows a log that ends at lsn {}",
            next - 1
        )),
        lsn => {
            let logged = &records[(lsn - 1) as usize];
            (*logged != record).then(|| {
                format!("the log has {logged:?} at lsn {lsn}, the committed entry {record:?}")
            })
        }
    }
}

/// The replica's own log replays, and core's recovery rebuilds the same ledger from its disk.
async fn recovers_alike(
    at: &str,
    partition: PartitionId,
    partitions: u32,
    disk: &Disk,
    records: &[Record],
    found: &mut Vec<Violation>,
) {
    let replay_name = Invariant::Replay.name();
    let replayed = replay(partition, partitions, records, AsOf::End);
    let recovered = recover(&mut disk.durable_copy().open(), partition, partitions).await;
    match (replayed, recovered) {
        (Ok(replayed), Ok((recovered, _))) => found.extend(
            invariants::replay_matches(&replayed, &recovered, "recovery (snapshot and log)")
                .err()
                .map(|v| Violation::new(replay_name, format!("{at}: {v}"))),
        ),
        (Err(error), _) => {
            let detail = format!("{at}: the partition log does not replay: {error}");
            found.push(Violation::new(replay_name, detail));
        }
        (_, Err(error)) => {
            let detail = format!("{at}: recovery from the final disk fails: {error}");
            found.push(Violation::new(replay_name, detail));
        }
    }
}

/// The replicas of one partition agree on their common prefix; returns the index of the
/// longest log (the partition's final one).
pub fn agree(partition: PartitionId, logs: &[ReplicaLog], found: &mut Vec<Violation>) -> usize {
    assert!(!logs.is_empty(), "a partition has replicas");
    let longest = (0..logs.len())
        .max_by_key(|i| (logs[*i].records.len(), usize::MAX - i))
        .expect("not empty");
    let reference = &logs[longest];
    for log in logs {
        let differs = (log.records.iter().zip(&reference.records)).find(|(a, b)| a != b);
        if let Some((mine, theirs)) = differs {
            let detail = format!(
                "partition {partition}: at lsn {} node-{} has {mine:?}, node-{} has {theirs:?}",
                mine.lsn, log.node, reference.node
            );
            found.push(Violation::new(LOG_MATCHING, detail));
        }
    }
    longest
}

/// The ledger a partition's final records replay to, for `PartitionFinal::recovered` (the
/// recovery of each replica's own disk is checked apart, by [`replica_log`]).
pub fn replayed_copy(
    replayed: &Result<Ledger, walletd_core::ledger::ApplyError>,
) -> Result<Ledger, String> {
    replayed.clone().map_err(|e| e.to_string())
}
