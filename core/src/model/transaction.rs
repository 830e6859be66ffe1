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
use crate::model::partition::{partition_of, partition_of_bytes, PartitionId};

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
/// shared ([`Arc`]) by the commands, events and rows that carry it.
///
/// Packed: the transaction id's bytes and each distinct account's, once, and per leg their
/// places, the amount and the currency (16 bytes). A [`Leg`] holds its two ids inline, 65
/// bytes each, so a transaction of legs took 144 bytes a leg, and every transaction a
/// partition is home of or takes part in stays in its tables for good: 4 legs took 650
/// bytes, now about 160 with short ids. Legs are rebuilt as they are read
/// ([`Transaction::legs`]); the questions asked at every step (which partitions) read the
/// bytes only. The packing is a function of the id and the legs (an account's bytes are
/// placed where it first appears), so equal transactions pack equal, and the derived
/// equality and hash are those of the id and the legs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Transaction {
    /// The transaction id's bytes, then the distinct accounts' bytes, back to back, in the
    /// order they first appear.
    ids: Box<[u8]>,
    legs: Box<[PackedLeg]>,
    transaction_id_len: u8,
}

/// Where an account's bytes are in [`Transaction::ids`]: the transaction id and at most 128
/// accounts of 64 bytes each are about 8 KiB, so 16 bits place one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct AccountAt {
    at: u16,
    len: u8,
}

/// A leg without its ids (flat: as two [`AccountAt`]s its padding would make it 24 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PackedLeg {
    amount: Amount,
    from_at: u16,
    to_at: u16,
    from_len: u8,
    to_len: u8,
    currency: Currency,
}

const _: () = assert!(std::mem::size_of::<PackedLeg>() <= 16);

impl PackedLeg {
    fn from(&self) -> AccountAt {
        AccountAt {
            at: self.from_at,
            len: self.from_len,
        }
    }

    fn to(&self) -> AccountAt {
        AccountAt {
            at: self.to_at,
            len: self.to_len,
        }
    }
}

/// The legs of a transaction, rebuilt one at a time, in the client's order.
#[derive(Clone)]
pub struct Legs<'a> {
    tx: &'a Transaction,
    next: usize,
    end: usize,
}

impl Iterator for Legs<'_> {
    type Item = Leg;

    fn next(&mut self) -> Option<Leg> {
        if self.next == self.end {
            return None;
        }
        self.next += 1;
        Some(self.tx.leg(self.next - 1))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.end - self.next, Some(self.end - self.next))
    }
}

impl ExactSizeIterator for Legs<'_> {}

impl Legs<'_> {
    /// Leg `index`, if the transaction has that many.
    pub fn get(&self, index: usize) -> Option<Leg> {
        (index < self.tx.legs.len()).then(|| self.tx.leg(index))
    }
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("transaction_id", &self.transaction_id())
            .field("legs", &self.legs().collect::<Vec<_>>())
            .finish()
    }
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
        let mut totals: Vec<(AccountId, bool, u64)> = Vec::new();
        for (index, leg) in legs.iter().enumerate() {
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
        Ok(Arc::new(Transaction::pack(transaction_id, &legs)))
    }

    fn pack(transaction_id: TransactionId, legs: &[Leg]) -> Transaction {
        let mut ids = transaction_id.as_bytes().to_vec();
        let mut placed: Vec<(AccountId, AccountAt)> = Vec::new();
        let mut place = |account: AccountId| -> AccountAt {
            if let Some((_, at)) = placed.iter().find(|(a, _)| *a == account) {
                return *at;
            }
            let at = AccountAt {
                at: u16::try_from(ids.len()).expect("at most 129 ids of 64 bytes"),
                len: account.as_bytes().len() as u8,
            };
            ids.extend_from_slice(account.as_bytes());
            placed.push((account, at));
            at
        };
        let legs = (legs.iter())
            .map(|leg| {
                let (from, to) = (place(leg.from), place(leg.to));
                PackedLeg {
                    amount: leg.amount,
                    from_at: from.at,
                    to_at: to.at,
                    from_len: from.len,
                    to_len: to.len,
                    currency: leg.currency,
                }
            })
            .collect();
        Transaction {
            ids: ids.into_boxed_slice(),
            legs,
            transaction_id_len: transaction_id.as_bytes().len() as u8,
        }
    }

    fn account(&self, at: AccountAt) -> AccountId {
        AccountId::from_stored(self.bytes(at))
    }

    fn bytes(&self, at: AccountAt) -> &[u8] {
        let start = usize::from(at.at);
        &self.ids[start..start + usize::from(at.len)]
    }

    /// Each leg's source, then destination, as places: for the questions asked at every
    /// step (which partitions), which need the accounts' bytes only.
    fn sides(&self) -> impl Iterator<Item = AccountAt> + '_ {
        self.legs.iter().flat_map(|leg| [leg.from(), leg.to()])
    }

    /// Leg `index` (panics past the last: see [`Transaction::leg_count`]).
    pub fn leg(&self, index: usize) -> Leg {
        let packed = self.legs[index];
        Leg {
            from: self.account(packed.from()),
            to: self.account(packed.to()),
            amount: packed.amount,
            currency: packed.currency,
        }
    }

    /// How many legs: 1 to [`LEGS_MAX`].
    pub fn leg_count(&self) -> usize {
        self.legs.len()
    }

    pub fn transaction_id(&self) -> TransactionId {
        TransactionId::from_stored(&self.ids[..usize::from(self.transaction_id_len)])
    }

    /// The legs, 1 to [`LEGS_MAX`], in the client's order (a refusal names a leg by its
    /// index here).
    pub fn legs(&self) -> Legs<'_> {
        Legs {
            tx: self,
            next: 0,
            end: self.legs.len(),
        }
    }

    /// The first leg's source: the account that names the transaction.
    pub fn first_from(&self) -> AccountId {
        self.account(self.legs[0].from())
    }

    /// The idempotency key: the first leg's source and the transaction id.
    pub fn key(&self) -> TransferKey {
        TransferKey {
            from: self.first_from(),
            transaction_id: self.transaction_id(),
        }
    }

    /// The first leg as a transfer under the transaction's id: what the home's row in the
    /// idempotency table holds (the legs are beside it).
    pub fn first_leg(&self) -> Transfer {
        let leg = self.leg(0);
        Transfer {
            transaction_id: self.transaction_id(),
            from: leg.from,
            to: leg.to,
            amount: leg.amount,
            currency: leg.currency,
        }
    }

    /// The partition that decides the transaction: its first leg's source's.
    pub fn home(&self, partitions: u32) -> PartitionId {
        partition_of(&self.first_from(), partitions)
    }

    /// Every partition holding one of its accounts, the home included, in ascending order.
    pub fn participants(&self, partitions: u32) -> Vec<PartitionId> {
        let set: BTreeSet<PartitionId> = self
            .sides()
            .map(|at| partition_of_bytes(self.bytes(at), partitions))
            .collect();
        set.into_iter().collect()
    }

    /// Whether every account lives on one partition: then the transaction is one record.
    /// Asked at every step of a transaction, so it allocates nothing and stops at the first
    /// account elsewhere.
    pub fn is_local(&self, partitions: u32) -> bool {
        let home = self.home(partitions);
        (self.sides()).all(|at| partition_of_bytes(self.bytes(at), partitions) == home)
    }

    /// What the transaction does to the accounts of `partition`.
    pub fn effects_on(&self, partition: PartitionId, partitions: u32) -> Effects {
        let mut accounts: Vec<AccountEffect> = Vec::new();
        // Sides in order: leg `i`'s source is side `2i`, its destination `2i + 1`.
        for (side, at) in self.sides().enumerate() {
            if partition_of_bytes(self.bytes(at), partitions) != partition {
                continue;
            }
            let (index, debit) = (side / 2, side % 2 == 0);
            let account = self.account(at);
            let at = match accounts.iter().position(|a| a.account == account) {
                Some(at) => at,
                None => {
                    accounts.push(AccountEffect::new(account, index));
                    accounts.len() - 1
                }
            };
            accounts[at].add(index, self.legs[index].amount.minor(), debit);
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

    proptest::proptest! {
        /// Whatever the legs (accounts repeated or not, ids up to 64 bytes, up to 64 legs),
        /// the packed transaction gives back exactly its id and the legs it was made of, in
        /// order, and two transactions are equal, and hash alike, exactly when their ids and
        /// legs are.
        #[test]
        fn packed_legs_read_back_as_they_were_given(
            specs in proptest::collection::vec((0u8..12, 0u8..12, 1u64..1000, 0usize..3), 1..=LEGS_MAX),
            other in 0usize..LEGS_MAX,
            id_len in 1usize..=64,
        ) {
            let name = |n: u8| {
                // Some ids of the longest length, so the packed bytes reach their bound.
                let pad = if n % 3 == 0 { 62 } else { usize::from(n) };
                format!("{n:02}{}", "x".repeat(pad))
            };
            let legs: Vec<Leg> = (specs.iter())
                .map(|&(from, to, minor, currency)| Leg {
                    from: id(&name(from)),
                    to: id(&name(if to == from { (to + 1) % 12 } else { to })),
                    amount: Amount::from_minor(minor).unwrap(),
                    currency: Currency::ALL[currency],
                })
                .collect();
            let id = TransactionId::new(&"t".repeat(id_len)).unwrap();
            let t = Transaction::new(id, legs.clone()).unwrap();
            proptest::prop_assert_eq!(t.transaction_id(), id);
            proptest::prop_assert_eq!(t.key().transaction_id, id);
            proptest::prop_assert_eq!(t.legs().collect::<Vec<_>>(), legs.clone());
            proptest::prop_assert_eq!(t.leg_count(), legs.len());
            proptest::prop_assert_eq!(t.first_from(), legs[0].from);
            proptest::prop_assert_eq!(t.legs().len(), legs.len());
            proptest::prop_assert_eq!(t.legs().get(legs.len()), None);
            let same = Transaction::new(id, legs.clone()).unwrap();
            proptest::prop_assert_eq!(&t, &same);
            let hash = |t: &Transaction| {
                use std::hash::{BuildHasher, BuildHasherDefault};
                BuildHasherDefault::<rustc_hash::FxHasher>::default().hash_one(t)
            };
            proptest::prop_assert_eq!(hash(&t), hash(&same));
            // Another amount in one leg is another transaction.
            let mut changed = legs.clone();
            let at = other % changed.len();
            changed[at].amount = Amount::from_minor(changed[at].amount.minor() + 1).unwrap();
            proptest::prop_assert_ne!(&*t, &*Transaction::new(id, changed).unwrap());
            // So is another id.
            let longer = TransactionId::new(&"t".repeat(id_len % 64 + 1)).unwrap();
            let other_id = Transaction::new(longer, legs).unwrap();
            proptest::prop_assert_ne!(&*t, &*other_id);
        }
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
