//! Invariants 1 and 2: money is neither created nor destroyed, across partitions and within
//! each, and no balance leaves its range. See the module docs of [`super`] for why the
//! cross-partition formula is exact at every instant.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::ledger::{CreditState, Ledger, TransferState};
use crate::model::event::{Transfer, TransferKey};
use crate::model::money::{Currency, BALANCE_MINOR_MAX};
use crate::model::partition::{partition_of, PartitionId};
use crate::model::transaction::Transaction;

use super::Violation;

/// What the conservation law reads of one partition at one moment. A [`Ledger`] is one; the
/// simulator keeps a lighter one per partition, updated as its batches commit.
pub trait Money {
    /// Adds this partition's accounts (balances, holds) and flows (deposits, withdrawals) to
    /// `totals`; leaves [`Totals::credited_holds`] alone.
    fn add_totals(&self, totals: &mut BTreeMap<Currency, Totals>);
    /// Calls `each` with every cross-partition transfer this partition is home of and has not
    /// finished (its amount is on hold).
    fn for_each_unfinished(&self, each: &mut dyn FnMut(&Transfer));
    /// Whether this partition, as a destination, has confirmed the credit of `key`.
    fn credit_confirmed(&self, key: &TransferKey) -> bool;
    /// Calls `each` with every credit this partition, as a destination, has tried and not
    /// finished (its amount is pending, in no balance).
    fn for_each_pending_credit(&self, each: &mut dyn FnMut(&Transfer));
    /// Minor units of the pending credit `transfer` (this body) that this partition, as the
    /// home, committed and finished its side of: the hold is gone, and that money is in the
    /// destination's pending credit until the Confirm lands. All of it for a transfer
    /// committed, what was captured of a hold captured (the rest went back to the source);
    /// `None` while the home has not finished.
    fn debit_committed(&self, transfer: &Transfer) -> Option<u64>;
    /// Calls `each` with every multi-leg transaction another partition is home of whose Try
    /// this partition holds, neither confirmed nor cancelled (its nets are held and
    /// incoming here).
    fn for_each_tried_transaction(&self, each: &mut dyn FnMut(&Arc<Transaction>));
    /// Whether this partition, as the home of the multi-leg transaction `tx`, committed it:
    /// these legs, not only its key. A home that lost its Try may commit other legs under
    /// the same key (a client's retry with other legs) while participants still hold the
    /// lost legs' Tries, which they will cancel: those are not committed.
    fn transaction_committed(&self, tx: &Transaction) -> bool;
}

impl<M: Money + ?Sized> Money for &M {
    fn add_totals(&self, totals: &mut BTreeMap<Currency, Totals>) {
        (**self).add_totals(totals)
    }

    fn for_each_unfinished(&self, each: &mut dyn FnMut(&Transfer)) {
        (**self).for_each_unfinished(each)
    }

    fn credit_confirmed(&self, key: &TransferKey) -> bool {
        (**self).credit_confirmed(key)
    }

    fn for_each_pending_credit(&self, each: &mut dyn FnMut(&Transfer)) {
        (**self).for_each_pending_credit(each)
    }

    fn debit_committed(&self, transfer: &Transfer) -> Option<u64> {
        (**self).debit_committed(transfer)
    }

    fn for_each_tried_transaction(&self, each: &mut dyn FnMut(&Arc<Transaction>)) {
        (**self).for_each_tried_transaction(each)
    }

    fn transaction_committed(&self, tx: &Transaction) -> bool {
        (**self).transaction_committed(tx)
    }
}

impl Money for Ledger {
    fn add_totals(&self, totals: &mut BTreeMap<Currency, Totals>) {
        for (_, account) in self.accounts() {
            let t = totals.entry(account.currency).or_default();
            t.balances += u128::from(account.balance);
            t.holds += u128::from(account.held);
        }
        for (currency, flows) in self.flows() {
            let t = totals.entry(*currency).or_default();
            t.deposited += flows.deposited;
            t.withdrawn += flows.withdrawn;
        }
    }

    fn for_each_unfinished(&self, each: &mut dyn FnMut(&Transfer)) {
        let transfers = self.transfers.unfinished().filter(|(row, _)| row.remote);
        for (row, terms) in transfers {
            if terms.and_then(|terms| terms.transaction()).is_none() {
                each(&row.transfer);
            }
        }
    }

    fn credit_confirmed(&self, key: &TransferKey) -> bool {
        self.credit(key)
            .is_some_and(|credit| credit.state == CreditState::Confirmed)
    }

    fn for_each_pending_credit(&self, each: &mut dyn FnMut(&Transfer)) {
        for transfer in self.pending_credit_transfers() {
            each(&transfer);
        }
    }

    fn debit_committed(&self, transfer: &Transfer) -> Option<u64> {
        let row = self
            .transfer(&transfer.key())
            .filter(|row| row.transfer == *transfer)?;
        match row.state {
            TransferState::Committed => Some(transfer.amount.minor()),
            TransferState::Captured => {
                let terms = self.hold_terms(&transfer.key())?;
                terms.captured.map(|captured| captured.minor())
            }
            _ => None,
        }
    }

    fn for_each_tried_transaction(&self, each: &mut dyn FnMut(&Arc<Transaction>)) {
        for tx in self.tried_transaction_parts() {
            each(&tx);
        }
    }

    fn transaction_committed(&self, tx: &Transaction) -> bool {
        let key = tx.key();
        self.transaction(&key).is_some_and(|terms| *terms.tx == *tx)
            && self
                .transfer(&key)
                .is_some_and(|row| row.state == TransferState::Committed)
    }
}

/// The money of one currency over a set of partitions, in minor units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub deposited: u128,
    pub withdrawn: u128,
    /// Available balances.
    pub balances: u128,
    /// Every hold of every unfinished transfer.
    pub holds: u128,
    /// Holds whose destination has already confirmed the credit: that money is in the
    /// destination's balance too, and counts there.
    pub credited_holds: u128,
    /// Pending credits whose home has committed and finished its side: the hold is gone,
    /// and this is where the money is until the Confirm lands.
    pub committed_credits: u128,
    /// The nets (credits less debits) of the Tries of multi-leg transactions whose home has
    /// committed, at participants that have not confirmed yet: what confirming them will
    /// add to balances and holds. Over every side of a transaction the nets sum to zero, so
    /// once a home commits, the sides confirmed and those still to confirm make up the
    /// whole; a side missing (refused, cancelled) shows as money created or destroyed.
    pub committed_tx_nets: i128,
}

impl Totals {
    /// Holds whose money is nowhere else yet.
    pub fn holds_in_flight(&self) -> u128 {
        self.holds.saturating_sub(self.credited_holds)
    }

    /// The left side of the law: balances, holds in flight and pending credits of
    /// committed transfers.
    pub fn present(&self) -> i128 {
        self.balances as i128 + self.holds as i128 - self.credited_holds as i128
            + self.committed_credits as i128
            + self.committed_tx_nets
    }

    /// The right side of the law: what came in minus what went out.
    pub fn net(&self) -> i128 {
        self.deposited as i128 - self.withdrawn as i128
    }
}

/// The totals per currency over every partition of a cluster (`partitions[p]` is partition
/// `p`, all of them present).
pub fn money_totals<M: Money>(partitions: &[M]) -> BTreeMap<Currency, Totals> {
    let count = partitions.len() as u32;
    let mut totals: BTreeMap<Currency, Totals> = BTreeMap::new();
    for (index, partition) in partitions.iter().enumerate() {
        partition.add_totals(&mut totals);
        partition.for_each_unfinished(&mut |transfer| {
            let destination = &partitions[partition_of(&transfer.to, count) as usize];
            if destination.credit_confirmed(&transfer.key()) {
                totals.entry(transfer.currency).or_default().credited_holds +=
                    u128::from(transfer.amount.minor());
            }
        });
        let here = index as PartitionId;
        partition.for_each_tried_transaction(&mut |tx| {
            let home = &partitions[tx.home(count) as usize];
            if !home.transaction_committed(tx) {
                return;
            }
            for effect in tx.effects_on(here, count).accounts {
                let currency = tx.leg(effect.first_leg).currency;
                let nets = &mut totals.entry(currency).or_default().committed_tx_nets;
                *nets += i128::from(effect.credits) - i128::from(effect.debits);
            }
        });
        partition.for_each_pending_credit(&mut |transfer| {
            let home = &partitions[partition_of(&transfer.from, count) as usize];
            if let Some(minor) = home.debit_committed(transfer) {
                totals
                    .entry(transfer.currency)
                    .or_default()
                    .committed_credits += u128::from(minor);
            }
        });
    }
    totals
}

/// Invariant 1 over totals: per currency, balances + holds in flight = deposits −
/// withdrawals.
pub fn conservation_of(totals: &BTreeMap<Currency, Totals>) -> Result<(), Violation> {
    for (currency, t) in totals {
        if t.present() != t.net() {
            return Err(Violation::Conservation {
                currency: *currency,
                have: t.present(),
                expected: t.net(),
            });
        }
    }
    Ok(())
}

/// Invariant 1 across the partitions of a cluster, at any consistent cut of their states.
pub fn conservation<M: Money>(partitions: &[M]) -> Result<(), Violation> {
    conservation_of(&money_totals(partitions))
}

/// Invariant 1 within one partition: its own law ([`Ledger::check_conservation`]: balances
/// and holds against the money that entered and left it, pending credits against barrier
/// rows).
pub fn books(ledger: &Ledger) -> Result<(), Violation> {
    ledger
        .check_conservation()
        .map_err(|detail| Violation::Books {
            partition: ledger.partition(),
            detail,
        })
}

/// Invariant 1 within one partition: each account's hold is exactly the amounts of the
/// unfinished transfers it is the source of. Every mismatch, in account order.
pub fn holds(ledger: &Ledger) -> Vec<Violation> {
    let mut by_rows: BTreeMap<_, u64> = BTreeMap::new();
    for (row, terms) in ledger.transfers.unfinished() {
        if terms.and_then(|terms| terms.transaction()).is_none() {
            *by_rows.entry(row.transfer.from).or_default() += row.transfer.amount.minor();
        }
    }
    for (account, minor) in ledger.transactions_held() {
        *by_rows.entry(account).or_default() += minor;
    }
    let mut accounts: Vec<_> = ledger.accounts().collect();
    accounts.sort_by_key(|(id, _)| **id);
    accounts
        .into_iter()
        .filter_map(|(account, figures)| {
            let expected = by_rows.get(account).copied().unwrap_or(0);
            (figures.held != expected).then_some(Violation::Held {
                partition: ledger.partition(),
                account: *account,
                held: figures.held,
                by_rows: expected,
            })
        })
        .collect()
}

/// Invariant 2: no balance above the largest one an account may hold. (Below zero cannot be
/// represented: an overdraft shows as an event that does not apply, see
/// [`super::apply_failed`].)
pub fn balances_in_range(ledger: &Ledger) -> Result<(), Violation> {
    let mut accounts: Vec<_> = ledger.accounts().collect();
    accounts.sort_by_key(|(id, _)| **id);
    match accounts
        .into_iter()
        .find(|(_, state)| state.balance > BALANCE_MINOR_MAX)
    {
        Some((account, state)) => Err(Violation::BalanceLimit {
            account: *account,
            balance: state.balance,
        }),
        None => Ok(()),
    }
}
