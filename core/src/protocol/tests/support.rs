//! Shared fixtures: identifiers, amounts, accounts placed on chosen partitions, and a
//! comparable snapshot of a ledger's whole state.

use std::collections::BTreeMap;

use crate::ledger::{Account, CashRow, Command, CreditRow, Flows, Ledger, RecordMeta, TransferRow};
use crate::model::event::{Event, Transfer, TransferKey};
use crate::model::ids::{AccountId, TransactionId};
use crate::model::money::{Amount, Currency};
use crate::model::partition::{partition_of, PartitionId};

/// The coordinators' timing in the protocol's unit tests: a second to try, resends from
/// 100 ms doubling to 800 ms, a pending credit asked about after 4 s.
pub const CONFIG: crate::protocol::coordinator::CoordinatorConfig =
    crate::protocol::coordinator::CoordinatorConfig {
        try_timeout_us: 1_000_000,
        retry_initial_us: 100_000,
        retry_max_us: 800_000,
        resolve_after_us: 4_000_000,
    };

/// How many candidate names [`account_on`] tries before giving up. FNV-1a spreads
/// `prefix-i` names evenly, so a few dozen always suffice for a handful of partitions.
const ACCOUNT_CANDIDATES_MAX: usize = 10_000;

pub fn acct(name: &str) -> AccountId {
    AccountId::new(name).expect("test account ids are valid")
}

pub fn txn(name: &str) -> TransactionId {
    TransactionId::new(name).expect("test transaction ids are valid")
}

pub fn amt(minor: u64) -> Amount {
    Amount::from_minor(minor).expect("test amounts are in range")
}

/// The `nth` (from 0) account id named `{prefix}-{i}` that lives on `partition`.
pub fn account_on(prefix: &str, partition: PartitionId, partitions: u32, nth: usize) -> AccountId {
    (0..ACCOUNT_CANDIDATES_MAX)
        .map(|i| acct(&format!("{prefix}-{i}")))
        .filter(|id| partition_of(id, partitions) == partition)
        .nth(nth)
        .expect("enough candidate names land on every partition")
}

pub fn transfer(
    from: AccountId,
    to: AccountId,
    minor: u64,
    currency: Currency,
    transaction_id: &str,
) -> Transfer {
    Transfer {
        transaction_id: txn(transaction_id),
        from,
        to,
        amount: amt(minor),
        currency,
    }
}

pub fn key(from: AccountId, transaction_id: &str) -> TransferKey {
    TransferKey {
        from,
        transaction_id: txn(transaction_id),
    }
}

pub fn open(account: AccountId, currency: Currency) -> Command {
    Command::OpenAccount { account, currency }
}

pub fn deposit(
    account: AccountId,
    minor: u64,
    currency: Currency,
    transaction_id: &str,
) -> Command {
    Command::Deposit {
        account,
        amount: amt(minor),
        currency,
        transaction_id: txn(transaction_id),
    }
}

pub fn withdraw(
    account: AccountId,
    minor: u64,
    currency: Currency,
    transaction_id: &str,
) -> Command {
    Command::Withdraw {
        account,
        amount: amt(minor),
        currency,
        transaction_id: txn(transaction_id),
    }
}

pub fn opened(account: AccountId, currency: Currency) -> Event {
    Event::AccountOpened { account, currency }
}

pub fn deposited(account: AccountId, minor: u64, transaction_id: &str) -> Event {
    Event::Deposited {
        account,
        amount: amt(minor),
        transaction_id: txn(transaction_id),
    }
}

/// Everything a ledger holds, in sorted maps so that two ledgers compare field by field
/// whatever their hash-table order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub accounts: BTreeMap<AccountId, Account>,
    pub transfers: BTreeMap<TransferKey, TransferRow>,
    pub credits: BTreeMap<TransferKey, CreditRow>,
    pub cash: BTreeMap<(AccountId, TransactionId), CashRow>,
    pub flows: BTreeMap<Currency, Flows>,
    pub refunds: crate::ledger::refunds::RefundTable,
    /// The rows' terms (holds', transactions', parts'), by key.
    pub terms: BTreeMap<TransferKey, crate::ledger::row_terms::RowTerms>,
    pub last: RecordMeta,
}

impl Snapshot {
    pub fn of(ledger: &Ledger) -> Snapshot {
        Snapshot {
            accounts: ledger.accounts().map(|(id, a)| (*id, *a)).collect(),
            transfers: ledger
                .transfers()
                .map(|row| (row.transfer.key(), row))
                .collect(),
            credits: ledger.credits().collect(),
            cash: ledger.cash.iter().collect(),
            flows: ledger.flows().clone(),
            refunds: ledger.refunds.clone(),
            terms: (ledger.transfers.iter_stored())
                .filter_map(|(row, terms)| Some((row.key(), terms?)))
                .collect(),
            last: ledger.last_applied(),
        }
    }
}

/// Partition 1 of 2 with an account `dest` and `n` pending credits into it, from accounts
/// of partition 0: the ledger, and the transfers whose Tries it took, in log order.
pub fn destination_ledger(n: usize) -> (Ledger, Vec<Transfer>) {
    let mut ledger = Ledger::new(1, 2);
    let mut events = Vec::new();
    let dest = account_on("dest", 1, 2, 0);
    ledger
        .execute(&open(dest, Currency::USD), 1, &mut events)
        .expect("a new account opens");
    let transfers: Vec<Transfer> = (0..n)
        .map(|i| cross_transfer_for(&ledger, &format!("t{i}")))
        .collect();
    for transfer in &transfers {
        ledger
            .execute(&Command::TryCredit(*transfer), 1, &mut events)
            .expect("a Try into an open account is taken");
    }
    (ledger, transfers)
}

/// A transfer of 1.00 USD named `transaction_id` from partition 0 into the account
/// [`destination_ledger`] opened on `ledger`'s partition.
pub fn cross_transfer_for(ledger: &Ledger, transaction_id: &str) -> Transfer {
    let dest = account_on("dest", ledger.partition(), ledger.partitions(), 0);
    let source = account_on("src", 0, ledger.partitions(), 0);
    transfer(source, dest, 100, Currency::USD, transaction_id)
}
