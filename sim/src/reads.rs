//! Linearizable balance reads (`linearizable_reads`), from what the clients saw and the final
//! logs alone.
//!
//! A balance read of account A, sent at `s` and answered at `d` (client times), is
//! linearizable if its answer is A's state at some point of its partition's final log (after
//! the record at some lsn `P`) such that:
//!
//! - **nothing acknowledged is missing**: `P` is at or after every record of A's partition
//!   that an answer received before `s`, by any client, vouches was committed. An answered
//!   open vouches for the `AccountOpened` record; a deposit or withdrawal answered (with a
//!   balance or a recorded refusal) for its record; a transfer answered with a final status
//!   for its first record at the home partition (its debit, or its rejection), and, when the
//!   status is committed, for its first record at the destination (the credit's Try). The log
//!   is a sequence, so a committed record commits everything before it: the bound is the
//!   largest such lsn;
//! - **nothing unwritten is present**: the state at `P` was written before `d`: the record
//!   that made it carries a timestamp (the leader's clock when it applied the record) no later
//!   than the answer.
//!
//! A leader that answers from its own state after a majority elected another, which
//! committed and acknowledged a write of A meanwhile, breaks the first rule. The oracle's
//! check of reads (a state the account had while the read was in flight, by record
//! timestamps) is kept beside this one: it rests on the leaders' clocks, this one on the
//! order of the log and the clients' clocks only.

use std::collections::{BTreeMap, BTreeSet};

use walletd_core::ledger::{Command, Reply, TransferStatus};
use walletd_core::model::event::{Event, Lsn, Timestamp, Transfer, TransferKey};
use walletd_core::model::ids::AccountId;
use walletd_core::model::partition::partition_of;
use walletd_runtime::driver::{CommandResult, QueryAnswer};

use crate::checkers::{FinalState, Violation};
use crate::history::{BalanceRead, Op, Outcome};

/// The invariant's name.
pub const LINEARIZABLE_READS: &str = "linearizable_reads";

/// A record an answer vouches for: received by a client at `ack_us`, the record at `lsn`
/// of the account's partition is committed; `op` is the request answered.
#[derive(Debug, Clone, Copy)]
struct Vouched {
    ack_us: Timestamp,
    lsn: Lsn,
    op: usize,
}

/// The transfer an event belongs to, if any.
fn event_key(event: &Event) -> Option<TransferKey> {
    // A refund's record is its transfer's.
    match event.effect() {
        Event::Transferred { transfer }
        | Event::TransferRejected { transfer, .. }
        | Event::DebitTried { transfer }
        | Event::CreditTried { transfer }
        | Event::HoldPlaced { hold: transfer, .. }
        | Event::HoldCaptured { hold: transfer, .. }
        | Event::HoldReleased { hold: transfer, .. } => Some(transfer.key()),
        Event::TransferDecided { key, .. }
        | Event::DebitConfirmed { key }
        | Event::DebitCancelled { key }
        | Event::CreditConfirmed { key }
        | Event::CreditCancelled { key }
        | Event::CreditTryNotSeen { key }
        | Event::HoldEstablished { key }
        | Event::CreditCaptured { key, .. } => Some(key),
        Event::TransactionApplied { tx }
        | Event::TransactionRejected { tx, .. }
        | Event::TransactionTried { tx } => Some(tx.key()),
        Event::TransactionRefused { key, .. }
        | Event::TransactionCancelling { key, .. }
        | Event::TransactionConfirmed { key }
        | Event::TransactionCancelled { key } => Some(key),
        _ => None,
    }
}

/// The hold an event ends at its home, if it ends one.
fn hold_ended(event: &Event) -> Option<TransferKey> {
    match event {
        Event::HoldCaptured { hold, .. } | Event::HoldReleased { hold, .. } => Some(hold.key()),
        _ => None,
    }
}

/// The first final answer of `op` (anything but a pending transfer) and when it came.
fn first_final(op: &Op) -> Option<(Timestamp, &CommandResult)> {
    op.attempts.iter().find_map(|a| match &a.outcome {
        Outcome::Answer(Ok(Reply::Transfer(TransferStatus::Pending))) => None,
        Outcome::Answer(result) => Some((a.done_us, result)),
        _ => None,
    })
}

/// Every record each answer vouches for, by account, in the order the answers came, with the
/// largest lsn vouched so far in place of each one's own (so the last entry before a time is
/// the bound at that time).
fn vouched(state: &FinalState<'_>) -> BTreeMap<AccountId, Vec<Vouched>> {
    let first_of_key: Vec<BTreeMap<TransferKey, Lsn>> = (state.finals.iter())
        .map(|fin| {
            let mut first = BTreeMap::new();
            for record in &fin.records {
                if let Some(key) = event_key(&record.event) {
                    first.entry(key).or_insert(record.lsn);
                }
            }
            first
        })
        .collect();
    let ends: Vec<BTreeMap<TransferKey, Lsn>> = (state.finals.iter())
        .map(|fin| {
            (fin.records.iter())
                .filter_map(|record| Some((hold_ended(&record.event)?, record.lsn)))
                .collect()
        })
        .collect();
    let partition = |account: &AccountId| partition_of(account, state.partitions) as usize;
    let mut by_account: BTreeMap<AccountId, Vec<Vouched>> = BTreeMap::new();
    for (index, op) in state.history.ops.iter().enumerate() {
        let Some((ack_us, result)) = first_final(op) else {
            continue;
        };
        let mut vouch = |account: AccountId, lsn: Option<Lsn>| {
            if let Some(lsn) = lsn {
                let entry = Vouched {
                    ack_us,
                    lsn,
                    op: index,
                };
                by_account.entry(account).or_default().push(entry);
            }
        };
        match (&op.command, result) {
            (Command::OpenAccount { account, .. }, Ok(_)) => {
                let model = &state.finals[partition(account)].model;
                let opened = model.accounts.get(account).and_then(|a| a.versions.first());
                vouch(*account, opened.map(|v| v.lsn));
            }
            (Command::Deposit { .. } | Command::Withdraw { .. }, _) => {
                let Some(key) = op.cash_movement() else {
                    continue;
                };
                let model = &state.finals[partition(&key.0)].model;
                vouch(key.0, model.cash.get(&key).map(|fact| fact.lsn));
            }
            (Command::Transfer(t), Ok(Reply::Transfer(status))) => {
                let key = t.key();
                vouch(t.from, first_of_key[partition(&t.from)].get(&key).copied());
                if *status == TransferStatus::Committed {
                    vouch(t.to, first_of_key[partition(&t.to)].get(&key).copied());
                }
            }
            // A hold's placing vouches for its record at home; an end answered, for the
            // record that ends it, which moves money on its source (and on its destination,
            // within the partition).
            (Command::Hold(hold), Ok(Reply::Transfer(_))) => {
                let key = hold.transfer.key();
                let home = partition(&hold.transfer.from);
                vouch(key.from, first_of_key[home].get(&key).copied());
            }
            (Command::Capture { key, .. } | Command::Void { key }, Ok(Reply::HoldEnd(end)))
                if matches!(
                    end.status,
                    TransferStatus::Captured | TransferStatus::Cancelled(_)
                ) =>
            {
                let home = partition(&key.from);
                let ended = ends[home].get(key).copied();
                vouch(key.from, ended);
                let body = state.finals[home].model.home.get(key);
                if let Some(to) = body.map(|t| t.to).filter(|to| partition(to) == home) {
                    vouch(to, ended);
                }
            }
            // A refund is a transfer back to its original's source.
            (Command::Refund(r), Ok(Reply::Transfer(status))) => {
                let Some(key) = op.transfer_key() else {
                    continue;
                };
                let to = r.original.from;
                vouch(
                    key.from,
                    first_of_key[partition(&key.from)].get(&key).copied(),
                );
                if *status == TransferStatus::Committed {
                    vouch(to, first_of_key[partition(&to)].get(&key).copied());
                }
            }
            _ => {}
        }
    }
    for list in by_account.values_mut() {
        list.sort_by_key(|v| v.ack_us);
        let mut highest: Option<Vouched> = None;
        for v in list.iter_mut() {
            match highest {
                Some(h) if h.lsn >= v.lsn => {
                    *v = Vouched {
                        ack_us: v.ack_us,
                        ..h
                    }
                }
                _ => highest = Some(*v),
            }
        }
    }
    by_account
}

/// Holds every balance read against the rules of the module's documentation.
pub fn check(state: &FinalState<'_>, found: &mut Vec<Violation>) {
    let vouched = vouched(state);
    for read in &state.history.reads {
        let QueryAnswer::Account(answer) = &read.answer else {
            continue;
        };
        let fin = &state.finals[partition_of(&read.account, state.partitions) as usize];
        if fin.decode_error.is_some() {
            continue; // `replay` reports it; the model of a log cut short proves nothing.
        }
        let bound = (vouched.get(&read.account))
            .and_then(|list| list.iter().take_while(|v| v.ack_us < read.sent_us).last());
        let floor = bound.map_or(0, |v| v.lsn);
        let versions = (fin.model.accounts.get(&read.account)).map_or(&[][..], |a| &a.versions[..]);
        let currency = fin.model.accounts.get(&read.account).map(|a| a.currency);
        let linearizable = match answer {
            // Before the account was opened: the open is not yet vouched for.
            None => versions.first().is_none_or(|opened| opened.lsn > floor),
            Some(account) => {
                currency == Some(account.currency)
                    && versions.iter().enumerate().any(|(i, v)| {
                        let after_floor = versions.get(i + 1).is_none_or(|next| next.lsn > floor);
                        let figures = (v.balance, v.held, v.incoming);
                        after_floor
                            && v.timestamp <= read.done_us
                            && figures == (account.balance, account.held, account.incoming)
                    })
            }
        };
        if linearizable {
            continue;
        }
        let figures = answer.as_ref().map(|a| {
            format!(
                "balance {} held {} incoming {}",
                a.balance, a.held, a.incoming
            )
        });
        let why = match bound {
            Some(v) => format!(
                "an answer received at {} us vouches for lsn {} of its partition (request: {:?})",
                v.ack_us, v.lsn, state.history.ops[v.op].command
            ),
            None => "no answer vouched for any of its records before".to_string(),
        };
        let mut violation = Violation::new(
            LINEARIZABLE_READS,
            format!(
                "client {} read {} as {} (sent {} us, answered {} us), a state the log never had from any point at or after the records acknowledged before the read, up to the answer: {why}",
                read.client,
                read.account,
                figures.as_deref().unwrap_or("absent"),
                read.sent_us,
                read.done_us,
            ),
        );
        violation.accounts.push(read.account);
        violation.op = bound.map(|v| v.op);
        found.push(violation);
    }
}

/// The invariant of transfer bodies read (`Query::TransferBody`).
pub const BODY_READS: &str = "body_reads";

/// Holds every transfer body read to what its home's final log kept: a body answered is the
/// body of the transfer's first record there, and that record was written before the
/// answer. A home that answers from a record a crash then takes fails it: the key has no
/// record, or one a retry wrote after the answer, or one of another body.
pub fn check_bodies(state: &FinalState<'_>, found: &mut Vec<Violation>) {
    let read: Vec<(&BalanceRead, Transfer)> = (state.history.reads.iter())
        .filter_map(|read| match read.answer {
            QueryAnswer::TransferBody(Some(body)) => Some((read, body)),
            _ => None,
        })
        .collect();
    let asked: BTreeSet<TransferKey> = read.iter().map(|(_, body)| body.key()).collect();
    // The stamp of each asked key's first record, per partition.
    let first_stamps: Vec<BTreeMap<TransferKey, Timestamp>> = (state.finals.iter())
        .map(|fin| {
            let mut first = BTreeMap::new();
            for record in &fin.records {
                if let Some(key) = event_key(&record.event).filter(|key| asked.contains(key)) {
                    first.entry(key).or_insert(record.timestamp);
                }
            }
            first
        })
        .collect();
    for (read, body) in read {
        let key = body.key();
        let home = partition_of(&key.from, state.partitions) as usize;
        let fin = &state.finals[home];
        if fin.decode_error.is_some() {
            continue; // `replay` reports it.
        }
        let stamp = first_stamps[home].get(&key).copied();
        let kept = fin.model.home.get(&key);
        let problem = match (stamp, kept) {
            (Some(stamp), Some(kept)) if *kept == body && stamp <= read.done_us => continue,
            (Some(_), Some(kept)) if *kept != body => {
                format!("the log kept another body, {kept:?}")
            }
            (Some(stamp), Some(_)) => {
                format!("the log's first record of it was written at {stamp} us, after the answer")
            }
            _ => "the log has no record of it".to_string(),
        };
        let mut violation = Violation::new(
            BODY_READS,
            format!(
                "client {} read the body of {key:?} as {body:?} (sent {} us, answered {} us): {problem}",
                read.client, read.sent_us, read.done_us,
            ),
        );
        violation.keys.push(key);
        found.push(violation);
    }
}

#[cfg(test)]
mod tests {
    use walletd_core::ledger::{Account, Ledger};
    use walletd_core::log::codec::Record;
    use walletd_core::model::ids::TransactionId;
    use walletd_core::model::money::{Amount, Currency};

    use super::*;
    use crate::checkers::{LiveState, PartitionFinal};
    use crate::history::{Attempt, BalanceRead, Expect, HistoryState, Op};
    use crate::model::Model;

    fn id(text: &str) -> AccountId {
        AccountId::new(text).expect("an id")
    }

    fn deposit(lsn: Lsn, at: Timestamp, minor: u64, txn: &str) -> Record {
        let event = Event::Deposited {
            account: id("a"),
            amount: Amount::from_minor(minor).expect("an amount"),
            transaction_id: TransactionId::new(txn).expect("an id"),
        };
        Record {
            lsn,
            timestamp: at,
            event,
        }
    }

    /// Account `a` opened at lsn 1 (time 10), 100 deposited at lsn 2 (time 20) and 50 more,
    /// by `d2`, at lsn 3 (time 30); `d2` is acknowledged to its client at time 40.
    fn violations(reads: &[(Timestamp, Timestamp, u64)]) -> Vec<Violation> {
        let opened = Record {
            lsn: 1,
            timestamp: 10,
            event: Event::AccountOpened {
                account: id("a"),
                currency: Currency::USD,
            },
        };
        let records = vec![opened, deposit(2, 20, 100, "d1"), deposit(3, 30, 50, "d2")];
        let fin = PartitionFinal {
            partition: 0,
            bytes: Vec::new(),
            model: Model::fold(&records, 0, 1),
            records,
            decode_error: None,
            replayed: Ok(Ledger::new(0, 1)),
            recovered: Ok(Ledger::new(0, 1)),
        };
        let command = Command::Deposit {
            account: id("a"),
            amount: Amount::from_minor(50).expect("an amount"),
            currency: Currency::USD,
            transaction_id: TransactionId::new("d2").expect("an id"),
        };
        let mut history = HistoryState::default();
        history.ops.push(Op {
            client: 0,
            command,
            refund_from: None,
            expect: Expect::Valid,
            attempts: vec![Attempt {
                sent_us: 25,
                done_us: 40,
                outcome: Outcome::Answer(Ok(Reply::Balance { balance: 150 })),
            }],
        });
        for (sent_us, done_us, balance) in reads {
            let account = Account {
                currency: Currency::USD,
                balance: *balance,
                held: 0,
                incoming: 0,
            };
            history.reads.push(BalanceRead {
                client: 1,
                account: id("a"),
                sent_us: *sent_us,
                done_us: *done_us,
                answer: QueryAnswer::Account(Some(account)),
            });
        }
        let live = LiveState::default();
        let finals = [fin];
        let state = FinalState {
            partitions: 1,
            finals: &finals,
            live: &live,
            history: &history,
            quiesced: true,
            protocol_violations: 0,
            fatal: &[],
            damage_not_refused: &[],
            replication: &[],
        };
        let mut found = Vec::new();
        check(&state, &mut found);
        found
    }

    #[test]
    fn a_read_sent_after_a_deposit_was_acknowledged_must_show_it() {
        let found = violations(&[(50, 60, 100)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains("vouches for lsn 3"), "{found:?}");
        assert!(violations(&[(50, 60, 150)]).is_empty());
    }

    #[test]
    fn a_read_sent_before_the_acknowledgement_may_miss_it() {
        assert!(violations(&[(35, 60, 100), (35, 60, 150), (21, 22, 100)]).is_empty());
    }

    #[test]
    fn a_read_must_not_show_what_was_written_after_its_answer() {
        assert_eq!(violations(&[(15, 25, 150)]).len(), 1);
        assert_eq!(violations(&[(5, 15, 100)]).len(), 1);
        assert!(violations(&[(5, 15, 0)]).is_empty());
    }
}
