//! Multi-leg transactions: several transfers, over any accounts and currencies, that all
//! commit or none does.
//!
//! A transaction is identified like a transfer: by its first leg's source and its
//! transaction id ([`Transaction::key`]); its *home* is that account's partition, which
//! decides it. Every partition holding one of its accounts is a *participant* (the home
//! included), and what the transaction does to a participant's accounts is the *net* of its
//! legs on each ([`Effects`]): an account debited by one leg and credited by a later one
//! needs to cover only the difference, so money may pass through an account that starts
//! empty.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::model::event::{Transfer, TransferKey};
use crate::model::ids::{AccountId, TransactionId};
use crate::model::money::{Amount, Currency, AMOUNT_MINOR_MAX};
use crate::model::partition::{partition_of, PartitionId};

/// Most legs one transaction may have.
pub const LEGS_MAX: usize = 64;

/// One movement of a transaction: `amount` of `currency` from `from` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Leg {
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Amount,
    pub currency: Currency,
}

/// Why a list of legs is not a transaction. Checked before anything is decided, so a
/// request refused for one of these records nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LegsError {
    #[error("a transaction has at least one leg")]
    NoLegs,
    #[error("a transaction has at most {LEGS_MAX} legs, not {0}")]
    TooManyLegs(usize),
    #[error("leg {0} moves money from an account to itself")]
    LegToItself(usize),
    /// The legs taking from one account, or bringing to one, sum to more than the largest
    /// amount (so that what a transaction does to an account is always an amount).
    #[error("leg {0} takes an account's total in this transaction past the largest amount")]
    AccountTotalTooLarge(usize),
}

/// A multi-leg transaction: 1 to [`LEGS_MAX`] legs under one transaction id. Immutable and
/// shared ([`Arc`]) by the commands, events and rows that carry it: up to 64 legs is up to
/// 9 KiB, which nothing should copy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Transaction {
    transaction_id: TransactionId,
    legs: Box<[Leg]>,
}

impl Transaction {
    /// A transaction of `legs`, refused if it has none, more than [`LEGS_MAX`], or a leg
    /// from an account to itself.
    pub fn new(transaction_id: TransactionId, legs: Vec<Leg>) -> Result<Arc<Self>, LegsError> {
        if legs.is_empty() {
            return Err(LegsError::NoLegs);
        }
        if legs.len() > LEGS_MAX {
            return Err(LegsError::TooManyLegs(legs.len()));
        }
        if let Some(index) = legs.iter().position(|leg| leg.from == leg.to) {
            return Err(LegsError::LegToItself(index));
        }
        let tx = Transaction {
            transaction_id,
            legs: legs.into_boxed_slice(),
        };
        let mut totals: Vec<(AccountId, bool, u64)> = Vec::new();
        for (index, leg) in tx.legs.iter().enumerate() {
            for side in [(leg.from, true), (leg.to, false)] {
                let at = match totals.iter().position(|t| (t.0, t.1) == side) {
                    Some(at) => at,
                    None => {
                        totals.push((side.0, side.1, 0));
                        totals.len() - 1
                    }
                };
                totals[at].2 += leg.amount.minor();
                if totals[at].2 > AMOUNT_MINOR_MAX {
                    return Err(LegsError::AccountTotalTooLarge(index));
                }
            }
        }
        Ok(Arc::new(tx))
    }

    pub fn transaction_id(&self) -> TransactionId {
        self.transaction_id
    }

    /// The legs, 1 to [`LEGS_MAX`], in the client's order (a refusal names a leg by its
    /// index here).
    pub fn legs(&self) -> &[Leg] {
        &self.legs
    }

    /// The idempotency key: the first leg's source and the transaction id.
    pub fn key(&self) -> TransferKey {
        TransferKey {
            from: self.legs[0].from,
            transaction_id: self.transaction_id,
        }
    }

    /// The first leg as a transfer under the transaction's id: what the home's row in the
    /// idempotency table holds (the legs are beside it).
    pub fn first_leg(&self) -> Transfer {
        let leg = self.legs[0];
        Transfer {
            transaction_id: self.transaction_id,
            from: leg.from,
            to: leg.to,
            amount: leg.amount,
            currency: leg.currency,
        }
    }

    /// The partition that decides the transaction: its first leg's source's.
    pub fn home(&self, partitions: u32) -> PartitionId {
        partition_of(&self.legs[0].from, partitions)
    }

    /// Every partition holding one of its accounts, the home included, in ascending order.
    pub fn participants(&self, partitions: u32) -> Vec<PartitionId> {
        let set: BTreeSet<PartitionId> = self
            .legs
            .iter()
            .flat_map(|leg| [leg.from, leg.to])
            .map(|account| partition_of(&account, partitions))
            .collect();
        set.into_iter().collect()
    }

    /// Whether every account lives on one partition: then the transaction is one record.
    /// Asked at every step of a transaction, so it allocates nothing and stops at the first
    /// account elsewhere.
    pub fn is_local(&self, partitions: u32) -> bool {
        let home = self.home(partitions);
        (self.legs.iter())
            .flat_map(|leg| [&leg.from, &leg.to])
            .all(|account| partition_of(account, partitions) == home)
    }

    /// What the transaction does to the accounts of `partition`.
    pub fn effects_on(&self, partition: PartitionId, partitions: u32) -> Effects {
        let mut accounts: Vec<AccountEffect> = Vec::new();
        for (index, leg) in self.legs.iter().enumerate() {
            for (account, debit) in [(leg.from, true), (leg.to, false)] {
                if partition_of(&account, partitions) != partition {
                    continue;
                }
                let at = match accounts.iter().position(|a| a.account == account) {
                    Some(at) => at,
                    None => {
                        accounts.push(AccountEffect::new(account, index));
                        accounts.len() - 1
                    }
                };
                accounts[at].add(index, leg.amount.minor(), debit);
            }
        }
        Effects { accounts }
    }
}

/// The net of a transaction's legs on one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountEffect {
    pub account: AccountId,
    /// Minor units its legs take from it, summed (at most the largest amount: see
    /// [`LegsError::AccountTotalTooLarge`]).
    pub debits: u64,
    /// Minor units its legs bring it, summed.
    pub credits: u64,
    /// The first leg naming it.
    pub first_leg: usize,
    /// The first leg taking from it, if one does.
    pub first_debit: Option<usize>,
    /// The first leg bringing to it, if one does.
    pub first_credit: Option<usize>,
}

impl AccountEffect {
    fn new(account: AccountId, first_leg: usize) -> Self {
        AccountEffect {
            account,
            debits: 0,
            credits: 0,
            first_leg,
            first_debit: None,
            first_credit: None,
        }
    }

    fn add(&mut self, leg: usize, minor: u64, debit: bool) {
        if debit {
            self.debits += minor;
            self.first_debit.get_or_insert(leg);
        } else {
            self.credits += minor;
            self.first_credit.get_or_insert(leg);
        }
    }

    /// What leaves the account's balance: its debits beyond its credits.
    pub fn net_debit(&self) -> u64 {
        self.debits.saturating_sub(self.credits)
    }

    /// What reaches the account's balance: its credits beyond its debits.
    pub fn net_credit(&self) -> u64 {
        self.credits.saturating_sub(self.debits)
    }
}

/// What a transaction does to one partition's accounts, each account once, in the order
/// their first legs come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effects {
    pub accounts: Vec<AccountEffect>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> AccountId {
        AccountId::new(text).unwrap()
    }

    fn leg(from: &str, to: &str, minor: u64) -> Leg {
        Leg {
            from: id(from),
            to: id(to),
            amount: Amount::from_minor(minor).unwrap(),
            currency: Currency::USD,
        }
    }

    fn tx(legs: Vec<Leg>) -> Result<Arc<Transaction>, LegsError> {
        Transaction::new(TransactionId::new("t").unwrap(), legs)
    }

    #[test]
    fn a_transaction_has_one_to_sixty_four_legs_none_to_itself() {
        assert_eq!(tx(vec![]), Err(LegsError::NoLegs));
        assert_eq!(
            tx(vec![leg("a", "b", 1); LEGS_MAX + 1]),
            Err(LegsError::TooManyLegs(LEGS_MAX + 1))
        );
        assert_eq!(
            tx(vec![leg("a", "b", 1), leg("c", "c", 1)]),
            Err(LegsError::LegToItself(1))
        );
        let t = tx(vec![leg("a", "b", 1); LEGS_MAX]).unwrap();
        assert_eq!(t.legs().len(), LEGS_MAX);
        assert_eq!(t.key().from, id("a"));
    }

    #[test]
    fn an_accounts_total_in_one_transaction_is_an_amount() {
        let most = leg("a", "b", AMOUNT_MINOR_MAX);
        assert!(tx(vec![most]).is_ok());
        assert_eq!(
            tx(vec![leg("c", "d", 1), most, leg("a", "e", 1)]),
            Err(LegsError::AccountTotalTooLarge(2))
        );
        // What goes out and what comes in are totalled apart.
        assert!(tx(vec![most, leg("b", "a", AMOUNT_MINOR_MAX)]).is_ok());
    }

    #[test]
    fn effects_net_each_account_over_its_legs() {
        // a pays b 5, b pays c 5: b only passes the money on.
        let t = tx(vec![leg("a", "b", 5), leg("b", "c", 5), leg("a", "c", 2)]).unwrap();
        let effects = t.effects_on(0, 1);
        let by = |name: &str| {
            *effects
                .accounts
                .iter()
                .find(|e| e.account == id(name))
                .unwrap()
        };
        assert_eq!((by("a").net_debit(), by("a").net_credit()), (7, 0));
        assert_eq!((by("b").net_debit(), by("b").net_credit()), (0, 0));
        assert_eq!((by("c").net_debit(), by("c").net_credit()), (0, 7));
        assert_eq!(
            (by("b").first_debit, by("b").first_credit),
            (Some(1), Some(0))
        );
        assert_eq!(by("c").first_leg, 1);
        let order: Vec<AccountId> = effects.accounts.iter().map(|e| e.account).collect();
        assert_eq!(order, vec![id("a"), id("b"), id("c")]);
        assert!(t.is_local(1));
    }

    /// `is_local` (asked at every step, without allocating) agrees with the participants.
    #[test]
    fn a_transaction_is_local_exactly_when_it_has_one_participant() {
        let t = tx(vec![leg("a", "b", 5), leg("b", "c", 3)]).unwrap();
        let mut both = [false, false];
        for partitions in 1..=64 {
            let local = t.is_local(partitions);
            assert_eq!(local, t.participants(partitions).len() == 1, "{partitions}");
            both[usize::from(local)] = true;
        }
        assert_eq!(both, [true, true], "some counts spread it, some do not");
    }

    #[test]
    fn each_partition_sees_its_own_accounts_only() {
        let t = tx(vec![leg("a", "b", 5), leg("c", "d", 3), leg("e", "f", 1)]).unwrap();
        let partitions = 8;
        let participants = t.participants(partitions);
        assert!(participants.contains(&t.home(partitions)));
        let mut seen = 0;
        for p in 0..partitions {
            let effects = t.effects_on(p, partitions);
            assert_eq!(participants.contains(&p), !effects.accounts.is_empty());
            for effect in &effects.accounts {
                assert_eq!(partition_of(&effect.account, partitions), p);
            }
            seen += effects.accounts.len();
        }
        assert_eq!(seen, 6);
    }
}
