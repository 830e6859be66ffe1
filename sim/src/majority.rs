//! Replicated runs: every answer a client got rests on records durable on a majority of the
//! partition's replicas, checked right after every crash (`durability`). An answer leaves a
//! leader once its batch's Raft entry is committed, that is durable on a majority of the
//! voters it was committed under, so at any instant (a crash included) that many Raft stores
//! hold it durably (fewer only as Raft allows since: see [`majority`]); a leader that
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

use std::collections::{BTreeMap, HashMap};

use raft::eraftpb::{ConfState, EntryType};
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
        // A refund's record is its transfer's.
        match event.effect() {
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
            | Event::DebitTried { transfer }
            | Event::HoldPlaced { hold: transfer, .. } => Some(Subject::Transfer(transfer.key())),
            Event::TransferDecided { key, .. } => Some(Subject::Transfer(key)),
            _ => None,
        }
    }

    /// What `op`'s answers rest on, and its partition, if an answer is one to check.
    fn of_answered(op: &Op, partitions: u32) -> Option<(PartitionId, Subject)> {
        let rests = op.answers().any(|(_, result)| {
            matches!(
                result,
                Ok(Reply::Transfer(
                    TransferStatus::Committed
                        | TransferStatus::Cancelled(_)
                        | TransferStatus::Held
                        | TransferStatus::Captured
                ) | Reply::HoldEnd(_)
                    | Reply::Balance { .. })
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
            Command::Refund(r) => Some((r.partition, Subject::Transfer(op.transfer_key()?))),
            // A hold's answer rests on its placing at least (its end is checked at the end).
            Command::Hold(_) | Command::Capture { .. } | Command::Void { .. } => {
                let key = op.transfer_key()?;
                Some((partition_of(&key.from, partitions), Subject::Transfer(key)))
            }
            _ => {
                let (account, transaction_id) = op.cash_movement()?;
                let partition = partition_of(&account, partitions);
                Some((partition, Subject::Cash(account, transaction_id)))
            }
        }
    }
}

/// The subjects of every record in `raft`'s durable entries, and in those it held before it
/// was last wiped or set aside, each with the index of the first entry that holds one.
fn durable_subjects(raft: &RaftDisk) -> HashMap<Subject, u64> {
    let mut subjects = HashMap::new();
    let state = raft.lock();
    let lost = state.lost.iter().flat_map(|lost| &lost.entries);
    let entries = state.durable.entries.iter().chain(lost);
    for entry in entries.filter(|e| e.get_entry_type() == EntryType::EntryNormal) {
        let Ok(Some(batch)) = payload::decode(&entry.data) else {
            continue;
        };
        let mut reader = RecordReader::new(&batch.records, batch.first_lsn);
        while let Ok(Some(record)) = reader.next_record() {
            if let Some(subject) = Subject::of_event(&record.event) {
                let index = subjects.entry(subject).or_insert(entry.index);
                *index = (*index).min(entry.index);
            }
        }
    }
    subjects
}

/// The voters of `partition`'s group from each change of them on, by the index of the entry
/// that made it, as the Raft stores of all nodes recorded the memberships they applied (a
/// copy since deleted included; a snapshot's members recorded again at its index, or a
/// change of learners alone, change no voters).
fn memberships(shared: &Shared, partition: PartitionId) -> BTreeMap<u64, ConfState> {
    let mut confs = BTreeMap::new();
    for disks in &shared.replicas {
        let raft = disks.rafts[partition as usize].lock();
        confs.extend(
            raft.confs
                .iter()
                .map(|(index, conf)| (*index, conf.clone())),
        );
    }
    let sorted = |voters: &[u64]| {
        let mut voters = voters.to_vec();
        voters.sort_unstable();
        voters
    };
    let mut previous = None;
    confs.retain(|_, conf| {
        let voters = Some((sorted(&conf.voters), sorted(&conf.voters_outgoing)));
        let changed = voters != previous;
        previous = voters;
        changed
    });
    confs
}

/// How many copies must hold a record whose first entry is at `index`: a majority of the
/// voters of a membership it may have been committed under, or of any since, whichever is
/// fewest. In a joint membership, a majority of its incoming voters and of its outgoing
/// ones, whichever is more.
///
/// An entry is committed under the voters its leader applied: those of the last change
/// before it, or of the one before that, when the change was committed along with the
/// entry and not applied yet. A majority of those hold it from then on; a later change
/// does not put it on a majority of the new members. A voter added since is promoted once
/// it matched the commit index, and the entries committed before the promotion applies
/// need not reach it (with four voters, two hold them); a removed voter's copy is deleted.
/// What Raft keeps is that no majority of the new members lacks them all.
fn majority(confs: &BTreeMap<u64, ConfState>, index: Option<u64>) -> usize {
    let half = |voters: &[u64]| match voters.len() {
        0 => 0,
        n => n / 2 + 1,
    };
    let of = |conf: &ConfState| half(&conf.voters).max(half(&conf.voters_outgoing));
    let Some(index) = index else {
        // No copy holds it: the latest members.
        return confs.values().next_back().map_or(1, of);
    };
    let last = confs.range(..index).next_back().map_or(0, |(i, _)| *i);
    let from = confs.range(..last).next_back().map_or(last, |(i, _)| *i);
    confs
        .range(from..)
        .map(|(_, conf)| of(conf))
        .min()
        .unwrap_or(1)
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
    let memberships: Vec<BTreeMap<u64, ConfState>> =
        (0..partitions).map(|p| memberships(shared, p)).collect();
    let subjects: Vec<Vec<HashMap<Subject, u64>>> = (0..partitions)
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
        let indexes = replicas.iter().filter_map(|s| s.get(&subject));
        let holding = indexes.clone().count();
        let majority = majority(&memberships[partition as usize], indexes.min().copied());
        if holding < majority {
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
