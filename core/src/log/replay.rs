//! Replaying logs: folding records back into a [`Ledger`], and answering history.
//!
//! State is a fold of the log (DESIGN section 4), so the same records always give the same
//! ledger: [`replay`] rebuilds a partition after a restart and, stopped early with [`AsOf`],
//! shows it as it was at any record. [`balance_as_of`] and [`movements`] answer questions
//! about one account in a single pass that tracks only that account, so a history query
//! costs one scan of the log and no more memory than that account's transfers in flight.
//! [`same_state`] and [`state_difference`] check that replay equals the live state.

use std::collections::BTreeMap;
use std::fmt::Debug;

use rustc_hash::FxHashMap;

use crate::ledger::{Account, ApplyError, CreditRow, Ledger, RecordMeta, TransferRow};
use crate::log::codec::Record;
use crate::model::event::{Event, Lsn, Timestamp, Transfer, TransferKey};
use crate::model::ids::{AccountId, TransactionId};
use crate::model::money::{Amount, Currency};
use crate::model::partition::PartitionId;
use crate::model::transaction::{Leg, Transaction};

/// How far into a log to look. Inclusive: `Lsn(n)` covers records with `lsn <= n` and
/// `Time(t)` covers records with `timestamp <= t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    End,
    Lsn(Lsn),
    Time(Timestamp),
}

impl AsOf {
    /// Whether `record` lies at or before this point. A fold stops at the first record that
    /// does not: state is defined by a prefix of the log, so with `Time` a record stamped
    /// earlier than its predecessor (a wall clock stepped back) after that point is not seen.
    pub fn includes(&self, record: &Record) -> bool {
        match *self {
            AsOf::End => true,
            AsOf::Lsn(lsn) => record.lsn <= lsn,
            AsOf::Time(timestamp) => record.timestamp <= timestamp,
        }
    }
}

/// Folds records into a fresh `Ledger::new(partition, partitions)`, stopping after `as_of`.
pub fn replay<'a>(
    partition: PartitionId,
    partitions: u32,
    records: impl IntoIterator<Item = &'a Record>,
    as_of: AsOf,
) -> Result<Ledger, ApplyError> {
    let mut ledger = Ledger::new(partition, partitions);
    replay_onto(&mut ledger, records, as_of)?;
    Ok(ledger)
}

/// Folds records into `ledger` (fresh, or restored from a snapshot), stopping after `as_of`.
/// Records at or below the ledger's last applied lsn are refused, not skipped: the caller
/// chooses where the log resumes. On an error the ledger holds every record before the bad one.
pub fn replay_onto<'a>(
    ledger: &mut Ledger,
    records: impl IntoIterator<Item = &'a Record>,
    as_of: AsOf,
) -> Result<(), ApplyError> {
    for record in records {
        if !as_of.includes(record) {
            break;
        }
        let last = ledger.last_applied().lsn;
        if record.lsn <= last {
            return Err(ApplyError {
                lsn: record.lsn,
                what: format!("record out of order: lsn {} after {last}", record.lsn),
            });
        }
        let meta = RecordMeta {
            lsn: record.lsn,
            timestamp: record.timestamp,
        };
        ledger.apply(meta, &record.event)?;
    }
    debug_assert_eq!(ledger.check_conservation(), Ok(()), "apply conserves money");
    Ok(())
}

/// Whether two ledgers hold the same state: partition, every table compared as a map, and
/// the last applied record.
pub fn same_state(a: &Ledger, b: &Ledger) -> bool {
    a.partition() == b.partition()
        && a.partitions() == b.partitions()
        && a.last == b.last
        && a.accounts == b.accounts
        && a.transfers == b.transfers
        && a.cash == b.cash
        && a.flows == b.flows
        && a.refunds == b.refunds
        && a.holds == b.holds
}

/// The first difference between two ledgers, in words, or `None` when [`same_state`].
/// Tables are compared in key order, so the answer is the same on every run.
pub fn state_difference(a: &Ledger, b: &Ledger) -> Option<String> {
    if same_state(a, b) {
        return None;
    }
    let heads = [
        ("partition", a.partition() != b.partition()),
        ("partitions", a.partitions() != b.partitions()),
    ];
    if let Some((name, _)) = heads.iter().find(|(_, differs)| *differs) {
        return Some(format!("{name} differs"));
    }
    if a.last != b.last {
        return Some(format!("last applied: {:?} != {:?}", a.last, b.last));
    }
    let found = table_difference("accounts", &a.accounts, &b.accounts)
        .or_else(|| table_difference("transfers", &home_rows(a), &home_rows(b)))
        .or_else(|| table_difference("credits", &credit_rows(a), &credit_rows(b)))
        .or_else(|| {
            let cash = |l: &Ledger| l.cash.iter().collect::<BTreeMap<_, _>>();
            table_difference("cash", &cash(a), &cash(b))
        })
        .or_else(|| table_difference("flows", &a.flows, &b.flows))
        .or_else(|| {
            let (a, b) = (&a.refunds, &b.refunds);
            table_difference("refunded", &a.refunded, &b.refunded)
        })
        .or_else(|| table_difference("refunds", &refund_originals(a), &refund_originals(b)))
        .or_else(|| table_difference("hold terms", &hold_terms(a), &hold_terms(b)))
        .or_else(|| table_difference("transactions", &tx_terms(a), &tx_terms(b)))
        .or_else(|| (a.holds.open != b.holds.open).then(|| "open holds differ".to_string()))
        .or_else(|| {
            let (a, b) = (a.transfers.len(), b.transfers.len());
            (a != b).then(|| format!("transfer positions: {a} != {b}"))
        })
        .or_else(|| table_difference("transaction parts", &parts(a), &parts(b)));
    assert!(found.is_some(), "ledgers differ somewhere");
    found
}

/// The home rows of `ledger` by key, as callers see them (the table stores them without
/// their keys' fields), so that a difference names the whole row.
fn home_rows(ledger: &Ledger) -> BTreeMap<TransferKey, TransferRow> {
    ledger
        .transfers()
        .map(|row| (row.transfer.key(), row))
        .collect()
}

/// The originals of `ledger`'s refunds by refund key (their rows carry them).
fn refund_originals(ledger: &Ledger) -> BTreeMap<TransferKey, crate::model::ids::TransactionId> {
    (ledger.transfers.iter_stored())
        .filter_map(|(row, terms)| Some((row.key(), terms?.refund_of()?)))
        .collect()
}

/// The terms of `ledger`'s holds by key (their rows carry them).
fn hold_terms(ledger: &Ledger) -> BTreeMap<TransferKey, crate::ledger::HoldTerms> {
    (ledger.transfers.iter_stored())
        .filter_map(|(row, terms)| Some((row.key(), terms?.hold()?)))
        .collect()
}

/// The terms of the transactions `ledger` is home of, by key (their rows carry them).
fn tx_terms(ledger: &Ledger) -> BTreeMap<TransferKey, crate::ledger::TransactionTerms> {
    (ledger.transfers.iter_stored())
        .filter_map(|(row, terms)| Some((row.key(), terms?.transaction()?.clone())))
        .collect()
}

/// This partition's parts of transactions homed elsewhere, by key (rows of the table).
fn parts(ledger: &Ledger) -> BTreeMap<TransferKey, crate::ledger::PartRow> {
    (ledger.transfers.iter_stored())
        .filter_map(|(row, terms)| Some((row.key(), terms?.part()?.clone())))
        .collect()
}

/// The barrier rows of `ledger` by key (the table packs them).
fn credit_rows(ledger: &Ledger) -> BTreeMap<TransferKey, CreditRow> {
    ledger.credits().collect()
}

/// A table as a sorted map, whatever its storage, so differences are found in key order.
trait Table<K, V> {
    fn sorted(&self) -> BTreeMap<K, &V>;
}

impl<K: Ord + Clone, V, S> Table<K, V> for std::collections::HashMap<K, V, S> {
    fn sorted(&self) -> BTreeMap<K, &V> {
        self.iter().map(|(k, v)| (k.clone(), v)).collect()
    }
}

impl Table<AccountId, Account> for crate::ledger::account_table::AccountTable {
    fn sorted(&self) -> BTreeMap<AccountId, &Account> {
        self.iter().map(|(k, v)| (*k, v)).collect()
    }
}

impl<V> Table<TransferKey, V> for crate::ledger::key_map::KeyMap<V> {
    fn sorted(&self) -> BTreeMap<TransferKey, &V> {
        self.iter().collect()
    }
}

impl<K: Ord + Clone, V> Table<K, V> for BTreeMap<K, V> {
    fn sorted(&self) -> BTreeMap<K, &V> {
        self.iter().map(|(k, v)| (k.clone(), v)).collect()
    }
}

fn table_difference<K: Ord + Debug, V: PartialEq + Debug>(
    name: &str,
    a: &impl Table<K, V>,
    b: &impl Table<K, V>,
) -> Option<String> {
    let (a, b) = (a.sorted(), b.sorted());
    let key = a
        .keys()
        .chain(b.keys())
        .filter(|key| a.get(key) != b.get(key))
        .min()?;
    Some(format!(
        "{name}[{key:?}]: {:?} != {:?}",
        a.get(key),
        b.get(key)
    ))
}

/// One account's figures at a point of its partition's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceAt {
    pub currency: Currency,
    pub balance: u64,
    pub held: u64,
    pub incoming: u64,
    /// The last record folded: the figures hold as of this record (0 for an empty log).
    pub lsn: Lsn,
}

/// What changed an account's balance or held amount. Pending credits (a destination Try
/// and its Cancel) change only `incoming`, so they are not movements; a confirmed credit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MovementKind {
    /// Money entered the system into this account.
    Deposit,
    /// Money left the system from this account.
    Withdrawal,
    /// A same-partition transfer from this account.
    TransferOut,
    /// A same-partition transfer to this account.
    TransferIn,
    /// A cross-partition transfer from this account moved the amount into a hold.
    Hold,
    /// The hold was confirmed: the money left for the destination.
    HoldCaptured,
    /// The hold was cancelled: the money came back to the balance.
    HoldReleased,
    /// A cross-partition transfer to this account was confirmed.
    CreditIn,
}

impl MovementKind {
    /// The signed changes `(balance, held)` this kind makes for `amount` minor units. The
    /// one place the meaning of a kind is written down: the fold below applies exactly this.
    pub fn changes(self, amount: u64) -> (i128, i128) {
        let a = i128::from(amount);
        match self {
            MovementKind::Deposit | MovementKind::TransferIn | MovementKind::CreditIn => (a, 0),
            MovementKind::Withdrawal | MovementKind::TransferOut => (-a, 0),
            MovementKind::Hold => (-a, a),
            MovementKind::HoldCaptured => (0, -a),
            MovementKind::HoldReleased => (a, -a),
        }
    }
}

/// One change of an account's balance or held amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Movement {
    pub lsn: Lsn,
    pub timestamp: Timestamp,
    pub kind: MovementKind,
    pub amount: Amount,
    pub transaction_id: TransactionId,
    /// The other account of a transfer; `None` for deposits and withdrawals.
    pub counterparty: Option<AccountId>,
    pub balance_after: u64,
    pub held_after: u64,
}

impl Movement {
    /// The signed change of the available balance.
    pub fn balance_change(&self) -> i128 {
        self.kind.changes(self.amount.minor()).0
    }

    /// The signed change of the held amount.
    pub fn held_change(&self) -> i128 {
        self.kind.changes(self.amount.minor()).1
    }
}

/// The balance of `account` as of `as_of`, or `None` if it was not opened by then.
pub fn balance_as_of(records: &[Record], account: &AccountId, as_of: AsOf) -> Option<BalanceAt> {
    let mut history = AccountHistory::new(*account);
    let mut lsn = 0;
    for record in records.iter().take_while(|record| as_of.includes(record)) {
        history.fold(record);
        lsn = record.lsn;
    }
    history.figures.map(|figures| BalanceAt {
        currency: figures.currency,
        balance: figures.balance,
        held: figures.held,
        incoming: figures.incoming,
        lsn,
    })
}

/// Every movement of `account`, oldest first.
pub fn movements(records: &[Record], account: &AccountId) -> Vec<Movement> {
    let mut history = AccountHistory::new(*account);
    records
        .iter()
        .filter_map(|record| history.fold(record))
        .collect()
}

/// An account's running figures.
#[derive(Debug, Clone, Copy)]
struct Figures {
    currency: Currency,
    balance: u64,
    held: u64,
    incoming: u64,
}

/// A movement before it is applied: what, how much, and of which transfer.
struct Change {
    kind: MovementKind,
    amount: Amount,
    transaction_id: TransactionId,
    counterparty: Option<AccountId>,
}

/// Follows one account through a log. The second-phase events of a cross-partition transfer
/// carry only its key, so the transfers in flight that touch the account are remembered from
/// their Try until their Confirm or Cancel.
///
/// The log must replay cleanly (see [`replay`]): on a log that contradicts itself the
/// figures saturate instead of failing, and mean nothing.
struct AccountHistory {
    account: AccountId,
    /// `None` until the account is opened; events before that cannot concern it.
    figures: Option<Figures>,
    /// Source side: holds of this account by transfer.
    holds: FxHashMap<TransferKey, Transfer>,
    /// Destination side: pending credits to this account by transfer.
    pending: FxHashMap<TransferKey, Transfer>,
    /// Multi-leg transactions tried and not yet confirmed or cancelled: this account's net
    /// debit and net credit in each.
    transactions: FxHashMap<TransferKey, (u64, u64)>,
}

impl AccountHistory {
    fn new(account: AccountId) -> AccountHistory {
        AccountHistory {
            account,
            figures: None,
            holds: FxHashMap::default(),
            pending: FxHashMap::default(),
            transactions: FxHashMap::default(),
        }
    }

    /// Folds one record; returns the movement it made, if it made one.
    fn fold(&mut self, record: &Record) -> Option<Movement> {
        if let Event::AccountOpened { account, currency } = record.event {
            if account == self.account {
                debug_assert!(self.figures.is_none(), "{account} opened twice");
                self.figures = Some(Figures {
                    currency,
                    balance: 0,
                    held: 0,
                    incoming: 0,
                });
            }
            return None;
        }
        self.figures?;
        let change = self.change_of(&record.event.effect())?;
        let figures = self.figures.as_mut().expect("checked above");
        let (balance, held) = change.kind.changes(change.amount.minor());
        figures.balance = add_signed(figures.balance, balance);
        figures.held = add_signed(figures.held, held);
        Some(Movement {
            lsn: record.lsn,
            timestamp: record.timestamp,
            kind: change.kind,
            amount: change.amount,
            transaction_id: change.transaction_id,
            counterparty: change.counterparty,
            balance_after: figures.balance,
            held_after: figures.held,
        })
    }

    /// The change `event` makes to the account's balance or held amount, if any. Tracks
    /// transfers in flight and the incoming amount on the way.
    fn change_of(&mut self, event: &Event) -> Option<Change> {
        let me = self.account;
        let cash = |kind, amount, transaction_id| Change {
            kind,
            amount,
            transaction_id,
            counterparty: None,
        };
        match *event {
            Event::Deposited {
                account,
                amount,
                transaction_id,
            } if account == me => Some(cash(MovementKind::Deposit, amount, transaction_id)),
            Event::Withdrawn {
                account,
                amount,
                transaction_id,
            } if account == me => Some(cash(MovementKind::Withdrawal, amount, transaction_id)),
            Event::Transferred { transfer } => match (transfer.from == me, transfer.to == me) {
                (true, false) => Some(outgoing(MovementKind::TransferOut, &transfer)),
                (false, true) => Some(incoming(MovementKind::TransferIn, &transfer)),
                // Not this account's, or a transfer to itself, which changes nothing.
                _ => None,
            },
            Event::DebitTried { transfer } if transfer.from == me => {
                self.holds.insert(transfer.key(), transfer);
                Some(outgoing(MovementKind::Hold, &transfer))
            }
            Event::DebitConfirmed { key } if key.from == me => {
                let transfer = self.holds.remove(&key)?;
                Some(outgoing(MovementKind::HoldCaptured, &transfer))
            }
            Event::DebitCancelled { key } if key.from == me => {
                let transfer = self.holds.remove(&key)?;
                Some(outgoing(MovementKind::HoldReleased, &transfer))
            }
            Event::CreditTried { transfer } if transfer.to == me => {
                self.pending.insert(transfer.key(), transfer);
                self.add_incoming(transfer.amount.minor(), 1);
                None
            }
            Event::CreditConfirmed { key } | Event::CreditCancelled { key } => {
                let transfer = self.pending.remove(&key)?;
                self.add_incoming(transfer.amount.minor(), -1);
                matches!(event, Event::CreditConfirmed { .. })
                    .then(|| incoming(MovementKind::CreditIn, &transfer))
            }
            Event::CreditCaptured { key, amount } => {
                let transfer = self.pending.remove(&key)?;
                self.add_incoming(transfer.amount.minor(), -1);
                Some(incoming(
                    MovementKind::CreditIn,
                    &Transfer { amount, ..transfer },
                ))
            }
            // A hold within one partition (across partitions its placing and releasing are
            // a debit's Try and cancel, above).
            Event::HoldPlaced { hold, .. } if hold.from == me => {
                Some(outgoing(MovementKind::Hold, &hold))
            }
            Event::HoldPlaced { hold, .. } if hold.to == me => {
                self.add_incoming(hold.amount.minor(), 1);
                None
            }
            Event::HoldReleased { hold, .. } if hold.from == me => {
                Some(outgoing(MovementKind::HoldReleased, &hold))
            }
            Event::HoldReleased { hold, .. } if hold.to == me => {
                self.add_incoming(hold.amount.minor(), -1);
                None
            }
            // A capture: the source's movement is the part captured; the rest of the hold
            // goes back to its balance with it, folded into the same record.
            Event::HoldCaptured { hold, amount, .. } if hold.from == me => {
                self.holds.remove(&hold.key());
                let rest = hold.amount.minor() - amount.minor().min(hold.amount.minor());
                let figures = self.figures.as_mut().expect("only called once opened");
                figures.balance = add_signed(figures.balance, i128::from(rest));
                figures.held = add_signed(figures.held, -i128::from(rest));
                Some(outgoing(
                    MovementKind::HoldCaptured,
                    &Transfer { amount, ..hold },
                ))
            }
            Event::HoldCaptured {
                hold,
                amount,
                remote: false,
            } if hold.to == me => {
                self.add_incoming(hold.amount.minor(), -1);
                Some(incoming(
                    MovementKind::TransferIn,
                    &Transfer { amount, ..hold },
                ))
            }
            // A multi-leg transaction moves each account's net, with no one counterparty.
            Event::TransactionApplied { ref tx } => {
                let (debit, credit) = net_of(tx, &me)?;
                let (kind, net) = if debit > 0 {
                    (MovementKind::TransferOut, debit)
                } else {
                    (MovementKind::TransferIn, credit)
                };
                net_change(kind, net, tx)
            }
            Event::TransactionTried { ref tx } => {
                let (debit, credit) = net_of(tx, &me)?;
                self.transactions.insert(tx.key(), (debit, credit));
                self.add_incoming(credit, 1);
                net_change(MovementKind::Hold, debit, tx)
            }
            Event::TransactionConfirmed { key } | Event::TransactionCancelled { key } => {
                let (debit, credit) = self.transactions.remove(&key)?;
                self.add_incoming(credit, -1);
                let confirmed = matches!(event, Event::TransactionConfirmed { .. });
                let change = |kind, net| Change {
                    kind,
                    amount: Amount::from_minor(net).expect("an account's total is an amount"),
                    transaction_id: key.transaction_id,
                    counterparty: None,
                };
                match (confirmed, debit, credit) {
                    (true, 0, 0) | (false, 0, _) => None,
                    (true, 0, credit) => Some(change(MovementKind::CreditIn, credit)),
                    (true, debit, _) => Some(change(MovementKind::HoldCaptured, debit)),
                    (false, debit, _) => Some(change(MovementKind::HoldReleased, debit)),
                }
            }
            _ => None,
        }
    }

    fn add_incoming(&mut self, amount: u64, sign: i128) {
        let figures = self.figures.as_mut().expect("only called once opened");
        figures.incoming = add_signed(figures.incoming, sign * i128::from(amount));
    }
}

/// `account`'s net debit and net credit in `tx`, if `tx` names it.
fn net_of(tx: &Transaction, account: &AccountId) -> Option<(u64, u64)> {
    let legs = tx.legs();
    if !(legs.clone()).any(|leg| leg.from == *account || leg.to == *account) {
        return None;
    }
    let sum = |side: fn(&Leg) -> AccountId| -> u64 {
        (legs.clone())
            .filter(|leg| side(leg) == *account)
            .map(|leg| leg.amount.minor())
            .sum()
    };
    let (debits, credits) = (sum(|leg| leg.from), sum(|leg| leg.to));
    Some((
        debits.saturating_sub(credits),
        credits.saturating_sub(debits),
    ))
}

/// The movement of `net` minor units of `kind` that `tx` makes, none for nothing.
fn net_change(kind: MovementKind, net: u64, tx: &Transaction) -> Option<Change> {
    (net > 0).then(|| Change {
        kind,
        amount: Amount::from_minor(net).expect("an account's total is an amount"),
        transaction_id: tx.transaction_id(),
        counterparty: None,
    })
}

fn outgoing(kind: MovementKind, transfer: &Transfer) -> Change {
    Change {
        kind,
        amount: transfer.amount,
        transaction_id: transfer.transaction_id,
        counterparty: Some(transfer.to),
    }
}

fn incoming(kind: MovementKind, transfer: &Transfer) -> Change {
    Change {
        kind,
        amount: transfer.amount,
        transaction_id: transfer.transaction_id,
        counterparty: Some(transfer.from),
    }
}

/// `value + change`, saturating at the bounds of `u64`; see [`AccountHistory`] for why a
/// clean log never saturates.
fn add_signed(value: u64, change: i128) -> u64 {
    let sum = i128::from(value) + change;
    debug_assert!(
        sum >= 0 && sum <= i128::from(u64::MAX),
        "a clean log never saturates"
    );
    sum.clamp(0, i128::from(u64::MAX)) as u64
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ledger::{Command, LedgerError, PhaseResult, Reply, TransferStatus};
    use crate::model::event::{Decision, Reason};

    /// The clock of the scripts: one second per command from a fixed start.
    pub(crate) const SCRIPT_EPOCH_US: Timestamp = 1_700_000_000_000_000;

    pub(crate) fn id(text: &str) -> AccountId {
        AccountId::new(text).unwrap()
    }

    pub(crate) fn txn(text: &str) -> TransactionId {
        TransactionId::new(text).unwrap()
    }

    /// Runs commands against a live ledger the way a driver does, logging each event as a
    /// record and keeping a copy of the ledger after each record to compare history with.
    pub(crate) struct Script {
        pub(crate) ledger: Ledger,
        pub(crate) records: Vec<Record>,
        /// `after[i]` is the live ledger right after `records[i]`.
        pub(crate) after: Vec<Ledger>,
        now: Timestamp,
    }

    impl Script {
        pub(crate) fn new(partition: PartitionId, partitions: u32) -> Script {
            Script {
                ledger: Ledger::new(partition, partitions),
                records: Vec::new(),
                after: Vec::new(),
                now: SCRIPT_EPOCH_US,
            }
        }

        pub(crate) fn run(&mut self, command: Command) -> Result<Reply, LedgerError> {
            self.now += 1_000_000;
            let meta = RecordMeta {
                lsn: self.records.len() as Lsn + 1,
                timestamp: self.now,
            };
            let mut events = Vec::new();
            let reply = self.ledger.execute(&command, meta.timestamp, &mut events);
            assert!(events.len() <= 1, "one record per command keeps lsns exact");
            for event in events {
                self.records.push(Record {
                    lsn: meta.lsn,
                    timestamp: meta.timestamp,
                    event,
                });
                self.after.push(self.ledger.clone());
            }
            reply
        }

        pub(crate) fn open(&mut self, account: &str, currency: Currency) {
            let reply = self.run(Command::OpenAccount {
                account: id(account),
                currency,
            });
            assert_eq!(reply, Ok(Reply::Opened { created: true }));
        }

        pub(crate) fn deposit(&mut self, account: &str, minor: u64, currency: Currency, t: &str) {
            let reply = self.run(Command::Deposit {
                account: id(account),
                amount: Amount::from_minor(minor).unwrap(),
                currency,
                transaction_id: txn(t),
            });
            assert!(matches!(reply, Ok(Reply::Balance { .. })), "{reply:?}");
        }

        pub(crate) fn withdraw(&mut self, account: &str, minor: u64, currency: Currency, t: &str) {
            let reply = self.run(Command::Withdraw {
                account: id(account),
                amount: Amount::from_minor(minor).unwrap(),
                currency,
                transaction_id: txn(t),
            });
            assert!(matches!(reply, Ok(Reply::Balance { .. })), "{reply:?}");
        }

        pub(crate) fn transfer(&mut self, t: &str, from: &str, to: &str, minor: u64) -> Reply {
            self.run(Command::Transfer(transfer(t, from, to, minor)))
                .unwrap()
        }

        /// Decides a cross-partition transfer and, if `finish`, records the acknowledgement.
        pub(crate) fn decide(&mut self, t: &Transfer, decision: Decision, finish: bool) {
            let key = t.key();
            assert_eq!(self.run(Command::Decide { key, decision }), Ok(Reply::Done));
            if finish {
                assert_eq!(self.run(Command::FinishDebit { key }), Ok(Reply::Done));
            }
        }

        pub(crate) fn phase(&mut self, command: Command) -> PhaseResult {
            match self.run(command.clone()) {
                Ok(Reply::Phase(result)) => result,
                other => panic!("{command:?} gave {other:?}"),
            }
        }
    }

    pub(crate) fn transfer(t: &str, from: &str, to: &str, minor: u64) -> Transfer {
        Transfer {
            transaction_id: txn(t),
            from: id(from),
            to: id(to),
            amount: Amount::from_minor(minor).unwrap(),
            currency: Currency::USD,
        }
    }

    /// Partition 3 of 4 holds alice, dave, frank and grace; bob (0), erin (1) and carol (2)
    /// live elsewhere. The script leaves a row in every state of every table.
    pub(crate) fn every_state() -> Script {
        let mut s = Script::new(3, 4);
        for name in ["alice", "dave", "frank", "grace"] {
            s.open(name, Currency::USD);
        }
        s.open("judy", Currency::EUR);
        s.deposit("alice", 10_000, Currency::USD, "d-1");
        s.deposit("dave", 50_00, Currency::USD, "d-2");
        s.deposit("grace", 10_00, Currency::USD, "d-3");
        s.deposit("judy", 7_00, Currency::EUR, "d-4");
        s.deposit("alice", 10_000, Currency::USD, "d-1"); // a retry: no record
        s.withdraw("dave", 5_00, Currency::USD, "w-1");
        let committed = TransferStatus::Committed;
        assert_eq!(
            s.transfer("t-1", "alice", "dave", 10_00),
            Reply::Transfer(committed)
        );
        let rejected = Reply::Transfer(TransferStatus::Rejected(Reason::InsufficientFunds));
        assert_eq!(s.transfer("t-2", "grace", "alice", 100_000), rejected);
        assert_eq!(s.transfer("t-3", "grace", "bob", 100_000), rejected);
        source_side(&mut s);
        destination_side(&mut s);
        s
    }

    /// Home rows of cross-partition transfers in Trying, Confirming, Cancelling, Committed
    /// and Cancelled.
    fn source_side(s: &mut Script) {
        let pending = Reply::Transfer(TransferStatus::Pending);
        let trying = transfer("t-4", "alice", "bob", 3_00);
        let confirming = transfer("t-5", "alice", "carol", 4_00);
        let cancelling = transfer("t-6", "alice", "erin", 2_00);
        let committed = transfer("t-7", "dave", "bob", 6_00);
        let cancelled = transfer("t-8", "dave", "carol", 1_00);
        for t in [trying, confirming, cancelling, committed, cancelled] {
            assert_eq!(s.run(Command::Transfer(t)), Ok(pending));
        }
        s.decide(&confirming, Decision::Confirm, false);
        s.decide(&cancelling, Decision::Cancel(Reason::Timeout), false);
        s.decide(&committed, Decision::Confirm, true);
        let not_found = Decision::Cancel(Reason::DestinationNotFound);
        s.decide(&cancelled, not_found, true);
    }

    /// Barrier rows in Tried, Confirmed, Cancelled and TryNotSeen (a Cancel before its Try,
    /// then the late Try failing).
    fn destination_side(s: &mut Script) {
        let tried = transfer("c-1", "bob", "frank", 5_00);
        let confirmed = transfer("c-2", "carol", "frank", 6_00);
        let cancelled = transfer("c-3", "erin", "grace", 7_00);
        let not_seen = transfer("c-4", "bob", "grace", 8_00);
        for t in [tried, confirmed, cancelled] {
            assert_eq!(s.phase(Command::TryCredit(t)), PhaseResult::Tried);
        }
        assert_eq!(
            s.phase(Command::ConfirmCredit(confirmed)),
            PhaseResult::Confirmed
        );
        let cancel = Command::CancelCredit(cancelled);
        assert_eq!(s.phase(cancel), PhaseResult::Cancelled);
        let cancel = Command::CancelCredit(not_seen);
        assert_eq!(s.phase(cancel), PhaseResult::Cancelled);
        let late = s.phase(Command::TryCredit(not_seen));
        assert_eq!(late, PhaseResult::TryFailed(Reason::CancelledBeforeTry));
    }

    fn local_accounts(s: &Script) -> Vec<AccountId> {
        let mut accounts: Vec<AccountId> = s.ledger.accounts().map(|(id, _)| *id).collect();
        accounts.sort();
        accounts
    }

    #[test]
    fn replay_of_the_log_equals_the_live_ledger() {
        let s = every_state();
        let replayed = replay(3, 4, &s.records, AsOf::End).unwrap();
        assert_eq!(state_difference(&replayed, &s.ledger), None);
        assert!(same_state(&replayed, &s.ledger));
        assert_eq!(s.ledger.check_conservation(), Ok(()));
    }

    #[test]
    fn replay_stops_at_every_lsn_and_time() {
        let s = every_state();
        for (i, live) in s.after.iter().enumerate() {
            let record = &s.records[i];
            let by_lsn = replay(3, 4, &s.records, AsOf::Lsn(record.lsn)).unwrap();
            assert_eq!(state_difference(&by_lsn, live), None, "lsn {}", record.lsn);
            let by_time = replay(3, 4, &s.records, AsOf::Time(record.timestamp)).unwrap();
            assert!(same_state(&by_time, live), "time {}", record.timestamp);
            let just_before = replay(3, 4, &s.records, AsOf::Time(record.timestamp - 1));
            let previous = i.checked_sub(1).map(|p| &s.after[p]);
            let empty = Ledger::new(3, 4);
            assert!(same_state(
                &just_before.unwrap(),
                previous.unwrap_or(&empty)
            ));
        }
        let before_all = replay(3, 4, &s.records, AsOf::Lsn(0)).unwrap();
        assert!(same_state(&before_all, &Ledger::new(3, 4)));
    }

    #[test]
    fn state_difference_names_the_first_differing_row() {
        let s = every_state();
        let mut other = s.ledger.clone();
        other.accounts.get_mut(&id("dave")).unwrap().balance += 1;
        other.accounts.get_mut(&id("grace")).unwrap().held += 1;
        let difference = state_difference(&s.ledger, &other).unwrap();
        assert!(difference.starts_with("accounts[\"dave\"]"), "{difference}");
        let fewer = replay(3, 4, &s.records[..s.records.len() - 1], AsOf::End).unwrap();
        assert!(state_difference(&s.ledger, &fewer)
            .unwrap()
            .starts_with("last applied"));
    }

    #[test]
    fn balance_as_of_agrees_with_the_live_ledger_at_every_record() {
        let s = every_state();
        let accounts = local_accounts(&s);
        for (live, record) in s.after.iter().zip(&s.records) {
            for as_of in [AsOf::Lsn(record.lsn), AsOf::Time(record.timestamp)] {
                for account in &accounts {
                    let expected = live.account(account).map(|a| BalanceAt {
                        currency: a.currency,
                        balance: a.balance,
                        held: a.held,
                        incoming: a.incoming,
                        lsn: record.lsn,
                    });
                    let got = balance_as_of(&s.records, account, as_of);
                    assert_eq!(got, expected, "{account} at {as_of:?}");
                }
            }
        }
        assert_eq!(balance_as_of(&s.records, &id("bob"), AsOf::End), None);
        assert_eq!(balance_as_of(&[], &id("alice"), AsOf::End), None);
    }

    #[test]
    fn movements_sum_to_the_balance_and_match_history() {
        let s = every_state();
        for account in local_accounts(&s) {
            let moves = movements(&s.records, &account);
            let live = s.ledger.account(&account).unwrap();
            let balance: i128 = moves.iter().map(Movement::balance_change).sum();
            let held: i128 = moves.iter().map(Movement::held_change).sum();
            assert_eq!(balance, i128::from(live.balance), "{account}");
            assert_eq!(held, i128::from(live.held), "{account}");
            assert!(moves.windows(2).all(|w| w[0].lsn < w[1].lsn));
            for m in &moves {
                let then = s.after[m.lsn as usize - 1].account(&account).unwrap();
                assert_eq!((m.balance_after, m.held_after), (then.balance, then.held));
            }
        }
        let kinds = |name: &str| -> Vec<MovementKind> {
            movements(&s.records, &id(name))
                .iter()
                .map(|m| m.kind)
                .collect()
        };
        use MovementKind::*;
        assert_eq!(kinds("alice"), [Deposit, TransferOut, Hold, Hold, Hold]);
        assert_eq!(
            kinds("dave"),
            [
                Deposit,
                Withdrawal,
                TransferIn,
                Hold,
                Hold,
                HoldCaptured,
                HoldReleased
            ]
        );
        assert_eq!(kinds("frank"), [CreditIn]);
        let alice_out = movements(&s.records, &id("alice"))[1];
        assert_eq!(alice_out.counterparty, Some(id("dave")));
        assert_eq!(alice_out.transaction_id, txn("t-1"));
    }

    #[test]
    fn a_log_that_contradicts_itself_fails_to_replay() {
        let s = every_state();
        let mut swapped = s.records.clone();
        swapped.swap(3, 4);
        let error = replay(3, 4, &swapped, AsOf::End).unwrap_err();
        assert_eq!(error.lsn, 4);
        let mut reopened = s.records[..2].to_vec();
        reopened.push(Record {
            lsn: 3,
            ..s.records[0].clone()
        });
        assert_eq!(replay(3, 4, &reopened, AsOf::End).unwrap_err().lsn, 3);
    }

    #[test]
    fn replay_onto_a_restored_ledger_resumes_after_its_last_record() {
        let s = every_state();
        let mut ledger = replay(3, 4, &s.records, AsOf::Lsn(20)).unwrap();
        let rest = s.records.iter().filter(|r| r.lsn > 20);
        replay_onto(&mut ledger, rest, AsOf::End).unwrap();
        assert!(same_state(&ledger, &s.ledger));
        assert!(replay_onto(&mut ledger, &s.records[..1], AsOf::End).is_err());
    }
}
