//! Replicated runs: every answer a client got rests on records durable on a majority of the
//! partition's replicas, checked right after every crash (`durability`). An answer leaves a
//! leader once its batch's Raft entry is committed, that is durable on a majority, so at any
//! instant (a crash included) a majority of the Raft stores hold it durably; a leader that
//! answered sooner is caught at the first crash that finds fewer, whether or not a later
//! retry, a process crash that kept the page cache, or luck puts the record back.
//!
//! What is looked for, in the durable entries of each replica's Raft store: for a transfer
//! answered committed or cancelled, a record of its key at its home; for a deposit or
//! withdrawal answered with a balance, its movement. (The exact outcome is checked at the
//! end of the run, against the final logs.) A store that lost its content (a wipe, or a
//! damaged store set aside) still counts what it held then: losing one disk is the fault,
//! and the answers given before rested on it (the nemesis never takes a second disk of a
//! group before the first has rejoined).

use std::collections::HashSet;

use raft::eraftpb::EntryType;
use walletd_core::ledger::{Command, Reply, TransferStatus};
use walletd_core::log::codec::RecordReader;
use walletd_core::model::event::{Event, TransferKey};
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::partition::{partition_of, PartitionId};
use walletd_core::replica::payload;

use crate::cluster::Shared;
use crate::history::{HistoryState, Op};
use crate::network::HostId;
use crate::raft_disk::RaftDisk;
use crate::replicas::holders;

/// What a record is about, as far as an answer rests on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Subject {
    Transfer(TransferKey),
    Cash(AccountId, TransactionId),
}

impl Subject {
    fn of_event(event: &Event) -> Option<Subject> {
        match *event {
            Event::Deposited {
                account,
                transaction_id,
                ..
            }
            | Event::Withdrawn {
                account,
                transaction_id,
                ..
            } => Some(Subject::Cash(account, transaction_id)),
            Event::Transferred { transfer }
            | Event::TransferRejected { transfer, .. }
            | Event::DebitTried { transfer } => Some(Subject::Transfer(transfer.key())),
            Event::TransferDecided { key, .. } => Some(Subject::Transfer(key)),
            _ => None,
        }
    }

    /// What `op`'s answers rest on, and its partition, if an answer is one to check.
    fn of_answered(op: &Op, partitions: u32) -> Option<(PartitionId, Subject)> {
        let rests = op.answers().any(|(_, result)| {
            matches!(
                result,
                Ok(
                    Reply::Transfer(TransferStatus::Committed | TransferStatus::Cancelled(_))
                        | Reply::Balance { .. }
                )
            )
        });
        if !rests {
            return None;
        }
        match op.command {
            Command::Transfer(t) => Some((
                partition_of(&t.from, partitions),
                Subject::Transfer(t.key()),
            )),
            _ => {
                let (account, transaction_id) = op.cash_movement()?;
                let partition = partition_of(&account, partitions);
                Some((partition, Subject::Cash(account, transaction_id)))
            }
        }
    }
}

/// The subjects of every record in `raft`'s durable entries, and in those it held before it
/// was last wiped or set aside.
fn durable_subjects(raft: &RaftDisk) -> HashSet<Subject> {
    let mut subjects = HashSet::new();
    let state = raft.lock();
    let lost = state.lost.iter().flat_map(|lost| &lost.entries);
    let entries = state.durable.entries.iter().chain(lost);
    for entry in entries.filter(|e| e.get_entry_type() == EntryType::EntryNormal) {
        let Ok(Some(batch)) = payload::decode(&entry.data) else {
            continue;
        };
        let mut reader = RecordReader::new(&batch.records, batch.first_lsn);
        while let Ok(Some(record)) = reader.next_record() {
            subjects.extend(Subject::of_event(&record.event));
        }
    }
    subjects
}

/// A majority of the voters of `partition`'s group: of its incoming voters and, in a
/// joint configuration, of its outgoing ones, whichever is more, as the copy that applied
/// the latest membership change shows them (a copy that moves in is a learner, which does
/// not count, until it catches up).
fn majority(shared: &Shared, copies: &[HostId], partition: PartitionId) -> usize {
    let latest = (copies.iter())
        .map(|host| {
            let raft = shared.raft_disks(*host)[partition as usize].lock();
            (raft.durable.conf_index, raft.durable.conf_state.clone())
        })
        .max_by_key(|(index, _)| *index);
    let Some((_, conf)) = latest else {
        return 1;
    };
    let half = |voters: &[u64]| match voters.len() {
        0 => 0,
        n => n / 2 + 1,
    };
    half(&conf.voters).max(half(&conf.voters_outgoing))
}

/// Every answer of `history` checked against the Raft stores of the copies of each
/// partition right after `crash` (what crashed, for the report): what each rests on must
/// be durable on a majority of its partition's voters. Returns one line per answer that is
/// not, at most `shown_max`.
pub fn answers_on_majority(
    history: &HistoryState,
    shared: &Shared,
    crash: &str,
    shown_max: usize,
) -> Vec<String> {
    let partitions = shared.map.partitions();
    let copies: Vec<Vec<HostId>> = (0..partitions).map(|p| holders(shared, p)).collect();
    let majorities: Vec<usize> = (0..partitions)
        .map(|p| majority(shared, &copies[p as usize], p))
        .collect();
    let subjects: Vec<Vec<HashSet<Subject>>> = (0..partitions)
        .map(|p| {
            (copies[p as usize].iter())
                .map(|host| durable_subjects(&shared.raft_disks(*host)[p as usize]))
                .collect()
        })
        .collect();
    let mut missing = Vec::new();
    for op in &history.ops {
        let Some((partition, subject)) = Subject::of_answered(op, partitions) else {
            continue;
        };
        let replicas = &subjects[partition as usize];
        let holding = replicas.iter().filter(|s| s.contains(&subject)).count();
        if holding < majorities[partition as usize] {
            missing.push(format!(
                "{:?} was answered, and after {crash} only {holding} of the {} replicas of \
                 partition {partition} hold its record durably",
                op.command,
                replicas.len()
            ));
            if missing.len() >= shown_max {
                break;
            }
        }
    }
    missing
}
