//! The invariants of DESIGN section 5 as checkers over a [`Cluster`]: each returns the first
//! [`Violation`] it finds, so mutation tests can assert which protection a bug removed.

use std::collections::{BTreeMap, BTreeSet};

use crate::ledger::{
    ApplyError, Command, CreditState, Ledger, LedgerError, TransferState, TransferStatus,
};
use crate::model::event::{Event, TransferKey};
use crate::model::ids::AccountId;
use crate::model::money::{Currency, BALANCE_MINOR_MAX};
use crate::model::partition::{partition_of, PartitionId};

use super::cluster::{Applied, Cluster};
use super::support::Snapshot;

/// A broken invariant, with what is needed to find its cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Money was created or destroyed across the cluster (invariant 1).
    Conservation { currency: Currency, detail: String },
    /// A partition's own books do not balance (`Ledger::check_conservation`).
    Books {
        partition: PartitionId,
        detail: String,
    },
    /// An event could not apply: an overdraft (invariant 2) or a log contradicting itself.
    Apply {
        partition: PartitionId,
        event: Event,
        error: ApplyError,
    },
    /// A balance passed the largest one an account may hold.
    BalanceLimit { account: AccountId, balance: u64 },
    /// A ledger refused a command its own coordinator gave it.
    Refused {
        partition: PartitionId,
        command: Command,
        error: LedgerError,
    },
    /// A transfer moved money more than once (invariant 3).
    ExactlyOnce { key: TransferKey, detail: String },
    /// A Try applied after its Cancel: a hanging reservation (invariant 5).
    TryAfterCancel { key: TransferKey },
    /// After healing and quiescing, something is left in flight or the sides disagree
    /// (invariant 4).
    AtRest { detail: String },
    /// Replaying the logs from zero does not give the live state (invariant 7).
    Replay {
        partition: PartitionId,
        detail: String,
    },
    /// A destination answered with the opposite of the logged decision.
    Contradiction { key: TransferKey, detail: String },
    /// A client was told one final outcome, and later another (a retry's answer, or the
    /// state the home partition ends in).
    Acknowledged {
        key: TransferKey,
        told: TransferStatus,
        now: TransferStatus,
    },
}

/// What must hold after every step, whatever is in flight.
pub fn check_always(cluster: &Cluster) -> Result<(), Violation> {
    check_recorded(cluster)?;
    check_books(&cluster.ledgers)?;
    check_conservation(&cluster.ledgers)?;
    check_balances(&cluster.ledgers)?;
    check_no_try_after_cancel(&cluster.history)?;
    check_exactly_once(&cluster.history)
}

/// What must hold once faults healed and the cluster went idle.
pub fn check_quiescent(cluster: &Cluster) -> Result<(), Violation> {
    check_always(cluster)?;
    check_at_rest(cluster)?;
    check_replay(cluster)
}

/// The first thing that went wrong while the cluster ran, if anything did.
pub fn check_recorded(cluster: &Cluster) -> Result<(), Violation> {
    match cluster.violations.first() {
        Some(violation) => Err(violation.clone()),
        None => Ok(()),
    }
}

/// Each partition's own conservation law.
pub fn check_books(ledgers: &[Ledger]) -> Result<(), Violation> {
    for ledger in ledgers {
        ledger
            .check_conservation()
            .map_err(|detail| Violation::Books {
                partition: ledger.partition(),
                detail,
            })?;
    }
    Ok(())
}

/// Invariant 1, across partitions: per currency, Σ balances + Σ holds in flight =
/// Σ deposits − Σ withdrawals. A hold is in flight until its destination branch is
/// confirmed; from then until the source learns it, the money sits on both sides.
pub fn check_conservation(ledgers: &[Ledger]) -> Result<(), Violation> {
    let partitions = ledgers.len() as u32;
    // Per currency: (balances + holds − holds already credited, deposits − withdrawals).
    let mut sums: BTreeMap<Currency, (i128, i128)> = BTreeMap::new();
    for ledger in ledgers {
        for account in ledger.accounts().map(|(_, a)| a) {
            sums.entry(account.currency).or_default().0 +=
                i128::from(account.balance) + i128::from(account.held);
        }
        for (currency, flows) in ledger.flows() {
            let flows = (flows.deposited as i128) - (flows.withdrawn as i128);
            sums.entry(*currency).or_default().1 += flows;
        }
        for row in ledger.transfers() {
            if !(row.remote && row.state.is_unfinished()) {
                continue;
            }
            let key = row.transfer.key();
            let destination = &ledgers[partition_of(&row.transfer.to, partitions) as usize];
            if destination.credit(&key).map(|c| c.state) == Some(CreditState::Confirmed) {
                sums.entry(row.transfer.currency).or_default().0 -=
                    i128::from(row.transfer.amount.minor());
            }
        }
    }
    for (currency, (held, net)) in sums {
        if held != net {
            return Err(Violation::Conservation {
                currency,
                detail: format!(
                    "balances + holds in flight = {held}, deposits - withdrawals = {net}"
                ),
            });
        }
    }
    Ok(())
}

/// No balance above the limit. (Below zero cannot be represented: an overdraft shows up as
/// an [`Violation::Apply`] refusal instead.)
pub fn check_balances(ledgers: &[Ledger]) -> Result<(), Violation> {
    for ledger in ledgers {
        for (account, state) in ledger.accounts() {
            if state.balance > BALANCE_MINOR_MAX {
                return Err(Violation::BalanceLimit {
                    account: *account,
                    balance: state.balance,
                });
            }
        }
    }
    Ok(())
}

/// Invariant 3: per transfer key, the source is debited at most once, the debit is made
/// final at most once, and the destination is credited at most once.
pub fn check_exactly_once(history: &[Applied]) -> Result<(), Violation> {
    #[derive(Default)]
    struct Counts {
        debited: u32,
        finalised: u32,
        credited: u32,
    }
    let mut counts: BTreeMap<TransferKey, Counts> = BTreeMap::new();
    for applied in history {
        match applied.event {
            Event::Transferred { transfer } => {
                let entry = counts.entry(transfer.key()).or_default();
                entry.debited += 1;
                entry.finalised += 1;
                entry.credited += 1;
            }
            Event::DebitTried { transfer } => {
                counts.entry(transfer.key()).or_default().debited += 1
            }
            Event::DebitConfirmed { key } => counts.entry(key).or_default().finalised += 1,
            Event::CreditConfirmed { key } => counts.entry(key).or_default().credited += 1,
            _ => {}
        }
    }
    for (key, c) in counts {
        if c.debited > 1 || c.finalised > 1 || c.credited > 1 {
            return Err(Violation::ExactlyOnce {
                key,
                detail: format!(
                    "debited {} times, made final {} times, credited {} times",
                    c.debited, c.finalised, c.credited
                ),
            });
        }
    }
    Ok(())
}

/// Invariant 5: once a destination has cancelled a branch (after its Try, or as a null
/// compensation before it), no Try for that branch applies.
pub fn check_no_try_after_cancel(history: &[Applied]) -> Result<(), Violation> {
    let mut cancelled: BTreeSet<TransferKey> = BTreeSet::new();
    for applied in history {
        match applied.event {
            Event::CreditCancelled { key } | Event::CreditTryNotSeen { key } => {
                cancelled.insert(key);
            }
            Event::CreditTried { transfer } if cancelled.contains(&transfer.key()) => {
                return Err(Violation::TryAfterCancel {
                    key: transfer.key(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Invariant 4: no coordinator busy, no hold or pending credit left, and every transfer in
/// the same final state on both sides (committed ⇔ credit confirmed).
pub fn check_at_rest(cluster: &Cluster) -> Result<(), Violation> {
    let at_rest = |detail: String| Err(Violation::AtRest { detail });
    if !cluster.network.is_empty() {
        return at_rest(format!("{} messages in flight", cluster.network.len()));
    }
    for (p, coordinator) in cluster.coordinators.iter().enumerate() {
        if coordinator.in_flight() > 0 {
            return at_rest(format!(
                "partition {p} still drives {} transfers",
                coordinator.in_flight()
            ));
        }
    }
    for ledger in &cluster.ledgers {
        for (id, account) in ledger.accounts() {
            if account.held != 0 || account.incoming != 0 {
                return at_rest(format!("{id} is left with {account:?}"));
            }
        }
        for row in ledger.transfers().filter(|row| row.remote) {
            let key = row.transfer.key();
            let credit = cluster
                .ledger_of(&row.transfer.to)
                .credit(&key)
                .map(|c| c.state);
            let agree = matches!(
                (row.state, credit),
                (TransferState::Committed, Some(CreditState::Confirmed))
                    | (
                        TransferState::Cancelled(_),
                        Some(CreditState::Cancelled | CreditState::TryNotSeen)
                    )
                    | (TransferState::Rejected(_), None)
            );
            if !agree {
                return at_rest(format!(
                    "{key:?} is {:?} at home but {credit:?} at the destination",
                    row.state
                ));
            }
        }
        for (key, credit) in ledger.credits() {
            let home = cluster.ledger_of(&key.from).transfer(&key).map(|r| r.state);
            let agree = matches!(
                (credit.state, home),
                (CreditState::Confirmed, Some(TransferState::Committed))
                    | (
                        CreditState::Cancelled | CreditState::TryNotSeen,
                        Some(TransferState::Cancelled(_))
                    )
            );
            if !agree {
                return at_rest(format!(
                    "{key:?} is {:?} at the destination but {home:?} at home",
                    credit.state
                ));
            }
        }
    }
    Ok(())
}

/// Invariant 7: folding every partition's log into a fresh ledger gives the live state.
pub fn check_replay(cluster: &Cluster) -> Result<(), Violation> {
    for live in &cluster.ledgers {
        let partition = live.partition();
        let mut replayed = Ledger::new(partition, cluster.partitions());
        for applied in cluster.history.iter().filter(|a| a.partition == partition) {
            replayed
                .apply(applied.meta, &applied.event)
                .map_err(|error| Violation::Replay {
                    partition,
                    detail: error.to_string(),
                })?;
        }
        let (live, replayed) = (Snapshot::of(live), Snapshot::of(&replayed));
        if live != replayed {
            return Err(Violation::Replay {
                partition,
                detail: live.diff(&replayed),
            });
        }
    }
    Ok(())
}
