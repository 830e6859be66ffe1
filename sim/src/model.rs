//! The oracle: a sequential model of one partition, written independently of core's ledger.
//!
//! It folds a partition's log in lsn order with plain integers and checks every decision the
//! log records against the state at that point (a debit never overdraws; an
//! insufficient-funds rejection is justified), and it keeps every account's history so that
//! acknowledged balances and balance reads can be checked as of the time they were given.

use std::collections::BTreeMap;
use std::sync::Arc;

use walletd_core::ledger::{Account, CashKind, CashRefusal, CashRefused};
use walletd_core::log::codec::Record;
use walletd_core::model::event::{Event, Lsn, Reason, Timestamp, Transfer, TransferKey};
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::Currency;
use walletd_core::model::partition::{partition_of, PartitionId};
use walletd_core::model::transaction::Transaction;

/// An account's figures after one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub lsn: Lsn,
    pub timestamp: Timestamp,
    pub balance: u64,
    pub held: u64,
    pub incoming: u64,
}

#[derive(Debug, Clone)]
pub struct ModelAccount {
    pub currency: Currency,
    pub balance: u64,
    pub held: u64,
    pub incoming: u64,
    /// The account after every record that changed it, oldest first.
    pub versions: Vec<Version>,
}

/// A deposit or withdrawal as the model saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CashFact {
    pub withdrawal: bool,
    pub amount: u64,
    pub balance_after: u64,
    pub lsn: Lsn,
    /// The recorded refusal, when the request was refused (nothing moved).
    pub refused: Option<CashRefusal>,
}

/// A problem the model found in a log: the invariant, the detail, the transfer involved.
#[derive(Debug, Clone)]
pub struct ModelProblem {
    pub invariant: &'static str,
    pub detail: String,
    pub key: Option<TransferKey>,
    pub account: Option<AccountId>,
}

/// The model of one partition.
#[derive(Debug, Default)]
pub struct Model {
    pub accounts: BTreeMap<AccountId, ModelAccount>,
    pub cash: BTreeMap<(AccountId, TransactionId), CashFact>,
    /// Home-side transfers by key: body and the events seen for it.
    pub home: BTreeMap<TransferKey, Transfer>,
    /// Transfers committed into an account of this partition (what may be refunded here):
    /// their amount.
    committed_in: BTreeMap<TransferKey, u64>,
    /// Refunds accepted here and not cancelled for good: their original and amount.
    refunds: BTreeMap<TransferKey, (TransferKey, u64)>,
    /// Per original, what its refunds in `refunds` add up to.
    refunded: BTreeMap<TransferKey, u64>,
    pub problems: Vec<ModelProblem>,
    /// This partition, and how many there are (a transaction's nets here are those of its
    /// accounts here).
    partition: PartitionId,
    partitions: u32,
    /// Multi-leg transactions by key, as this partition's side of each stands.
    transactions: BTreeMap<TransferKey, ModelTx>,
}

/// This partition's side of a multi-leg transaction, as the model follows it.
#[derive(Debug, Clone)]
enum ModelTx {
    /// Tried here: its nets are held and incoming.
    Tried(Arc<Transaction>),
    /// Its nets moved.
    Committed,
    /// Its Try was undone.
    Cancelled,
    /// Refused or rejected: nothing moved.
    Refused,
}

impl Model {
    /// Folds `records` (the log of `partition` of `partitions`, in order) into a fresh model.
    pub fn fold(records: &[Record], partition: PartitionId, partitions: u32) -> Model {
        let mut model = Model {
            partition,
            partitions,
            ..Model::default()
        };
        for record in records {
            model.apply(record);
        }
        model
    }

    fn problem(
        &mut self,
        invariant: &'static str,
        record: &Record,
        detail: String,
        key: Option<TransferKey>,
        account: Option<AccountId>,
    ) {
        self.problems.push(ModelProblem {
            invariant,
            detail: format!("lsn {}: {detail}", record.lsn),
            key,
            account,
        });
    }

    fn snapshot(&mut self, account: &AccountId, record: &Record) {
        if let Some(a) = self.accounts.get_mut(account) {
            a.versions.push(Version {
                lsn: record.lsn,
                timestamp: record.timestamp,
                balance: a.balance,
                held: a.held,
                incoming: a.incoming,
            });
        }
    }

    /// Takes `amount` from the available balance of `account` (into a hold if `hold`).
    fn debit(
        &mut self,
        record: &Record,
        account: &AccountId,
        amount: u64,
        hold: bool,
        key: Option<TransferKey>,
    ) -> bool {
        let Some(a) = self.accounts.get_mut(account) else {
            self.problem(
                "oracle",
                record,
                format!("debit of unknown account {account}"),
                key,
                Some(*account),
            );
            return false;
        };
        if a.balance < amount {
            let detail = format!(
                "debit of {amount} from {account} with only {} available",
                a.balance
            );
            self.problem("no_negative", record, detail, key, Some(*account));
            return false;
        }
        a.balance -= amount;
        if hold {
            a.held += amount;
        }
        true
    }

    /// A recorded refusal of a deposit or withdrawal must have been right when it was made.
    fn refused_cash(&mut self, record: &Record, refused: &CashRefused) {
        let CashRefused {
            account,
            transaction_id,
            kind,
            amount,
            refusal,
        } = *refused;
        let minor = amount.minor();
        let found = self.accounts.get(&account);
        let fact = CashFact {
            withdrawal: kind == CashKind::Withdrawal,
            amount: minor,
            balance_after: found.map_or(0, |a| a.balance),
            lsn: record.lsn,
            refused: Some(refusal),
        };
        let justified = match refusal {
            CashRefusal::AccountNotFound => found.is_none(),
            CashRefusal::CurrencyMismatch(asked) => found.is_some_and(|a| a.currency != asked),
            CashRefusal::InsufficientFunds => {
                kind == CashKind::Withdrawal && found.is_some_and(|a| a.balance < minor)
            }
            CashRefusal::BalanceLimit => kind == CashKind::Deposit && found.is_some(),
        };
        self.cash.insert((account, transaction_id), fact);
        if !justified {
            let detail = format!(
                "{kind:?} of {minor} refused for {refusal:?}, which {account} does not show"
            );
            self.problem("oracle", record, detail, None, Some(account));
        }
    }

    /// A refund's record: counted against its original if accepted; if refused for exceeding
    /// its original, the refusal must have been right (it asked for more than was left).
    fn refund(&mut self, record: &Record) {
        match record.event {
            Event::RefundAccepted {
                refund, original, ..
            } => {
                let original = Event::refund_original(&refund, original);
                let amount = refund.amount.minor();
                self.refunds.insert(refund.key(), (original, amount));
                *self.refunded.entry(original).or_default() += amount;
            }
            Event::RefundRejected {
                refund,
                original,
                reason: Reason::RefundExceedsOriginal,
            } => {
                let original = Event::refund_original(&refund, original);
                let refunded = self.refunded.get(&original).copied().unwrap_or(0);
                let left = (self.committed_in.get(&original)).map(|a| a.saturating_sub(refunded));
                if let Some(left) = left.filter(|left| refund.amount.minor() <= *left) {
                    let detail = format!(
                        "refund {:?} of {} refused for exceeding {original:?}, of which {left} was left",
                        refund.key(),
                        refund.amount.minor()
                    );
                    let key = Some(refund.key());
                    self.problem("oracle", record, detail, key, Some(refund.from));
                }
            }
            _ => {}
        }
    }

    fn apply(&mut self, record: &Record) {
        self.refund(record);
        match record.event.effect() {
            Event::CashRefused(refused) => self.refused_cash(record, &refused),
            Event::AccountOpened { account, currency } => {
                if self.accounts.contains_key(&account) {
                    self.problem(
                        "oracle",
                        record,
                        format!("{account} opened twice"),
                        None,
                        Some(account),
                    );
                    return;
                }
                self.accounts.insert(
                    account,
                    ModelAccount {
                        currency,
                        balance: 0,
                        held: 0,
                        incoming: 0,
                        versions: Vec::new(),
                    },
                );
                self.snapshot(&account, record);
            }
            Event::Deposited {
                account,
                amount,
                transaction_id,
            } => {
                let Some(a) = self.accounts.get_mut(&account) else {
                    return self.problem(
                        "oracle",
                        record,
                        format!("deposit to unknown {account}"),
                        None,
                        Some(account),
                    );
                };
                a.balance += amount.minor();
                let fact = CashFact {
                    withdrawal: false,
                    amount: amount.minor(),
                    balance_after: a.balance,
                    lsn: record.lsn,
                    refused: None,
                };
                self.cash.insert((account, transaction_id), fact);
                self.snapshot(&account, record);
            }
            Event::Withdrawn {
                account,
                amount,
                transaction_id,
            } => {
                if !self.debit(record, &account, amount.minor(), false, None) {
                    return;
                }
                let balance_after = self.accounts[&account].balance;
                let fact = CashFact {
                    withdrawal: true,
                    amount: amount.minor(),
                    balance_after,
                    lsn: record.lsn,
                    refused: None,
                };
                self.cash.insert((account, transaction_id), fact);
                self.snapshot(&account, record);
            }
            Event::Transferred { transfer } => {
                let key = Some(transfer.key());
                if !self.accounts.contains_key(&transfer.to) {
                    return self.problem(
                        "oracle",
                        record,
                        format!("transfer to unknown {}", transfer.to),
                        key,
                        Some(transfer.to),
                    );
                }
                if !self.debit(record, &transfer.from, transfer.amount.minor(), false, key) {
                    return;
                }
                self.accounts
                    .get_mut(&transfer.to)
                    .expect("checked")
                    .balance += transfer.amount.minor();
                self.home.insert(transfer.key(), transfer);
                (self.committed_in).insert(transfer.key(), transfer.amount.minor());
                self.snapshot(&transfer.from, record);
                self.snapshot(&transfer.to, record);
            }
            Event::TransferRejected { transfer, reason } => {
                self.home.insert(transfer.key(), transfer);
                let available = self.accounts.get(&transfer.from).map(|a| a.balance);
                if reason == Reason::InsufficientFunds
                    && available.is_some_and(|b| b >= transfer.amount.minor())
                {
                    let detail = format!(
                        "{:?} rejected for insufficient funds with {} available for {}",
                        transfer.key(),
                        available.unwrap_or(0),
                        transfer.amount.minor()
                    );
                    self.problem(
                        "oracle",
                        record,
                        detail,
                        Some(transfer.key()),
                        Some(transfer.from),
                    );
                }
            }
            Event::DebitTried { transfer } => {
                self.home.insert(transfer.key(), transfer);
                if self.debit(
                    record,
                    &transfer.from,
                    transfer.amount.minor(),
                    true,
                    Some(transfer.key()),
                ) {
                    self.snapshot(&transfer.from, record);
                }
            }
            Event::TransferDecided { .. }
            | Event::CreditTryNotSeen { .. }
            | Event::HoldEstablished { .. } => {}
            Event::RefundAccepted { .. } | Event::RefundRejected { .. } => {
                unreachable!("a refund's effect is a transfer event")
            }
            Event::HoldPlaced { hold, .. } => self.hold_placed(record, &hold),
            Event::HoldCaptured {
                hold,
                amount,
                remote,
            } => self.hold_ended(record, &hold, Some(amount.minor()), remote),
            Event::HoldReleased { hold, .. } => self.hold_ended(record, &hold, None, false),
            Event::CreditCaptured { key, amount } => {
                self.credit_captured(record, key, amount.minor())
            }
            Event::DebitConfirmed { key } | Event::DebitCancelled { key } => {
                let cancelled = matches!(record.event, Event::DebitCancelled { .. });
                let Some(amount) = self.home.get(&key).map(|t| t.amount.minor()) else {
                    return self.problem(
                        "oracle",
                        record,
                        format!("finish of unknown {key:?}"),
                        Some(key),
                        None,
                    );
                };
                let Some(a) = self
                    .accounts
                    .get_mut(&key.from)
                    .filter(|a| a.held >= amount)
                else {
                    return self.problem(
                        "conservation",
                        record,
                        format!("hold of {key:?} missing"),
                        Some(key),
                        Some(key.from),
                    );
                };
                a.held -= amount;
                if cancelled {
                    a.balance += amount;
                    if let Some((original, amount)) = self.refunds.remove(&key) {
                        let refunded = self.refunded.entry(original).or_default();
                        *refunded = refunded.saturating_sub(amount);
                    }
                }
                self.snapshot(&key.from, record);
            }
            Event::CreditTried { transfer } => {
                let Some(a) = self.accounts.get_mut(&transfer.to) else {
                    return self.problem(
                        "oracle",
                        record,
                        format!("pending credit to unknown {}", transfer.to),
                        Some(transfer.key()),
                        Some(transfer.to),
                    );
                };
                a.incoming += transfer.amount.minor();
                self.home.entry(transfer.key()).or_insert(transfer);
                self.snapshot(&transfer.to, record);
            }
            Event::CreditConfirmed { key } | Event::CreditCancelled { key } => {
                let confirmed = matches!(record.event, Event::CreditConfirmed { .. });
                let Some(transfer) = self.home.get(&key).copied() else {
                    return self.problem(
                        "oracle",
                        record,
                        format!("second phase of {key:?} without a Try"),
                        Some(key),
                        None,
                    );
                };
                let amount = transfer.amount.minor();
                let Some(a) = self
                    .accounts
                    .get_mut(&transfer.to)
                    .filter(|a| a.incoming >= amount)
                else {
                    return self.problem(
                        "conservation",
                        record,
                        format!("pending credit of {key:?} missing"),
                        Some(key),
                        Some(transfer.to),
                    );
                };
                a.incoming -= amount;
                if confirmed {
                    a.balance += amount;
                    self.committed_in.insert(key, amount);
                }
                self.snapshot(&transfer.to, record);
            }
            Event::TransactionApplied { tx } => self.transaction_applied(record, &tx),
            Event::TransactionRejected {
                tx,
                failed_leg,
                reason,
            } => self.transaction_rejected(record, &tx, failed_leg, reason),
            Event::TransactionTried { tx } => self.transaction_tried(record, &tx),
            Event::TransactionRefused { key, .. } => {
                self.transactions.insert(key, ModelTx::Refused);
            }
            Event::TransactionCancelling { key, .. } => {
                if !matches!(self.transactions.get(&key), Some(ModelTx::Tried(_))) {
                    let detail = format!("decision to cancel {key:?}, not tried here");
                    self.problem("oracle", record, detail, Some(key), None);
                }
            }
            Event::TransactionConfirmed { key } => self.transaction_finished(record, key, true),
            Event::TransactionCancelled { key } => self.transaction_finished(record, key, false),
        }
    }

    /// The nets of `tx` on each account of this partition, in the order their first legs
    /// come: (account, debits, credits, the currencies of its legs).
    fn nets(&self, tx: &Transaction) -> Vec<(AccountId, u64, u64, Vec<Currency>)> {
        let mut nets: Vec<(AccountId, u64, u64, Vec<Currency>)> = Vec::new();
        for leg in tx.legs() {
            for (account, debit) in [(leg.from, true), (leg.to, false)] {
                if partition_of(&account, self.partitions) != self.partition {
                    continue;
                }
                let at = match nets.iter().position(|n| n.0 == account) {
                    Some(at) => at,
                    None => {
                        nets.push((account, 0, 0, Vec::new()));
                        nets.len() - 1
                    }
                };
                let net = &mut nets[at];
                if debit {
                    net.1 += leg.amount.minor();
                } else {
                    net.2 += leg.amount.minor();
                }
                net.3.push(leg.currency);
            }
        }
        nets
    }

    /// That every account `tx` names here exists in the currency of each of its legs.
    fn transaction_accounts(&mut self, record: &Record, tx: &Transaction) -> bool {
        for (account, _, _, currencies) in self.nets(tx) {
            let fits = (self.accounts.get(&account))
                .is_some_and(|a| currencies.iter().all(|c| *c == a.currency));
            if !fits {
                let detail = format!(
                    "transaction {:?} moved {account}, unknown or in another currency",
                    tx.key()
                );
                self.problem("oracle", record, detail, Some(tx.key()), Some(account));
                return false;
            }
        }
        true
    }

    /// A transaction within this partition: every account's net at once.
    fn transaction_applied(&mut self, record: &Record, tx: &Arc<Transaction>) {
        let key = tx.key();
        if !self.transaction_accounts(record, tx) {
            return;
        }
        let nets = self.nets(tx);
        for &(account, debits, credits, _) in &nets {
            let a = &self.accounts[&account];
            if a.balance + credits < debits {
                let detail = format!(
                    "transaction {key:?} takes {} net from {account} with only {} available",
                    debits - credits,
                    a.balance
                );
                return self.problem("no_negative", record, detail, Some(key), Some(account));
            }
        }
        for (account, debits, credits, _) in nets {
            let a = self.accounts.get_mut(&account).expect("checked");
            a.balance = a.balance + credits - debits;
            self.snapshot(&account, record);
        }
        self.transactions.insert(key, ModelTx::Committed);
    }

    /// A rejection at the home must be right: the leg it names fails here, for the reason it
    /// gives (the ledger names the lowest failing leg; the model checks the one named).
    fn transaction_rejected(
        &mut self,
        record: &Record,
        tx: &Arc<Transaction>,
        failed_leg: Option<u8>,
        reason: Reason,
    ) {
        let key = tx.key();
        let seen = self.transactions.insert(key, ModelTx::Refused).is_some();
        let Some(failed_leg) = failed_leg else {
            // A home rejects a transaction for no leg only when a participant asks about a
            // Try the home lost: for a timeout, and as the first record of its key here.
            if reason != Reason::Timeout || seen {
                let detail = format!("transaction {key:?} rejected for {reason:?} at no leg");
                self.problem("oracle", record, detail, Some(key), None);
            }
            return;
        };
        let Some(leg) = tx.legs().get(usize::from(failed_leg)) else {
            let detail = format!("transaction {key:?} rejected at leg {failed_leg}, past its legs");
            return self.problem("oracle", record, detail, Some(key), None);
        };
        let nets = self.nets(tx);
        let net = |account: AccountId| nets.iter().find(|n| n.0 == account).cloned();
        let here = |account: &AccountId| partition_of(account, self.partitions) == self.partition;
        let justified = match reason {
            Reason::SourceNotFound => here(&leg.from) && !self.accounts.contains_key(&leg.from),
            Reason::DestinationNotFound => here(&leg.to) && !self.accounts.contains_key(&leg.to),
            Reason::SourceCurrencyMismatch => {
                (self.accounts.get(&leg.from)).is_some_and(|a| a.currency != leg.currency)
            }
            Reason::DestinationCurrencyMismatch => {
                (self.accounts.get(&leg.to)).is_some_and(|a| a.currency != leg.currency)
            }
            Reason::InsufficientFunds => match (self.accounts.get(&leg.from), net(leg.from)) {
                (Some(a), Some((_, debits, credits, _))) => a.balance + credits < debits,
                _ => false,
            },
            // The balance limit is the ledger's own rule; the model takes it as given.
            Reason::DestinationBalanceLimit => true,
            _ => false,
        };
        if !justified {
            let detail = format!("transaction {key:?} rejected at leg {failed_leg} for {reason:?}, which the accounts do not show");
            self.problem("oracle", record, detail, Some(key), Some(leg.from));
        }
    }

    /// A Try (at the home, the transaction accepted): each account's net debit leaves its
    /// balance into `held`, its net credit is expected (`incoming`).
    fn transaction_tried(&mut self, record: &Record, tx: &Arc<Transaction>) {
        let key = tx.key();
        if self.transactions.contains_key(&key) {
            let detail = format!("transaction {key:?} tried twice");
            return self.problem("oracle", record, detail, Some(key), None);
        }
        if !self.transaction_accounts(record, tx) {
            return;
        }
        let nets = self.nets(tx);
        for &(account, debits, credits, _) in &nets {
            let available = self.accounts[&account].balance;
            if debits > credits && available < debits - credits {
                let detail = format!(
                    "transaction {key:?} holds {} net of {account} with only {available} available",
                    debits - credits
                );
                return self.problem("no_negative", record, detail, Some(key), Some(account));
            }
        }
        for (account, debits, credits, _) in nets {
            let a = self.accounts.get_mut(&account).expect("checked");
            let (debit, credit) = (
                debits.saturating_sub(credits),
                credits.saturating_sub(debits),
            );
            a.balance -= debit;
            a.held += debit;
            a.incoming += credit;
            self.snapshot(&account, record);
        }
        self.transactions.insert(key, ModelTx::Tried(tx.clone()));
    }

    /// A Try made final (`confirmed`: the nets move) or undone.
    fn transaction_finished(&mut self, record: &Record, key: TransferKey, confirmed: bool) {
        let Some(ModelTx::Tried(tx)) = self.transactions.get(&key).cloned() else {
            let what = if confirmed { "confirm" } else { "cancel" };
            let detail = format!("{what} of transaction {key:?}, not tried here");
            return self.problem("oracle", record, detail, Some(key), None);
        };
        let nets = self.nets(&tx);
        for &(account, debits, credits, _) in &nets {
            let a = &self.accounts[&account];
            let (debit, credit) = (
                debits.saturating_sub(credits),
                credits.saturating_sub(debits),
            );
            if a.held < debit || a.incoming < credit {
                let detail = format!("the Try of transaction {key:?} is missing at {account}");
                return self.problem("conservation", record, detail, Some(key), Some(account));
            }
        }
        for (account, debits, credits, _) in nets {
            let a = self.accounts.get_mut(&account).expect("checked");
            let (debit, credit) = (
                debits.saturating_sub(credits),
                credits.saturating_sub(debits),
            );
            a.held -= debit;
            a.incoming -= credit;
            if confirmed {
                a.balance += credit;
            } else {
                a.balance += debit;
            }
            self.snapshot(&account, record);
        }
        let outcome = if confirmed {
            ModelTx::Committed
        } else {
            ModelTx::Cancelled
        };
        self.transactions.insert(key, outcome);
    }

    /// A hold placed within the partition (across partitions it is a debit's Try): the
    /// amount leaves the source's balance into `held`, and the destination expects it.
    fn hold_placed(&mut self, record: &Record, hold: &Transfer) {
        let key = Some(hold.key());
        if !self.accounts.contains_key(&hold.to) {
            let detail = format!("hold to unknown {}", hold.to);
            return self.problem("oracle", record, detail, key, Some(hold.to));
        }
        if !self.debit(record, &hold.from, hold.amount.minor(), true, key) {
            return;
        }
        self.accounts.get_mut(&hold.to).expect("checked").incoming += hold.amount.minor();
        self.home.insert(hold.key(), *hold);
        self.snapshot(&hold.from, record);
        self.snapshot(&hold.to, record);
    }

    /// A hold ended at its home: `captured` of it (`None`: released) reaches the destination
    /// (within the partition at once; across partitions by the Confirm that follows), the
    /// rest goes back to the source. A release across partitions is a decision to cancel,
    /// which its `DebitCancelled` carries out (`remote` releases never come here).
    fn hold_ended(
        &mut self,
        record: &Record,
        hold: &Transfer,
        captured: Option<u64>,
        remote: bool,
    ) {
        let key = hold.key();
        let full = hold.amount.minor();
        let local = !remote;
        let missing = |m: &Model| {
            let from = m.accounts.get(&hold.from).is_some_and(|a| a.held >= full);
            let to = remote || m.accounts.get(&hold.to).is_some_and(|a| a.incoming >= full);
            !(from && to)
        };
        if missing(self) {
            let detail = format!("the money of hold {key:?} is missing");
            return self.problem("conservation", record, detail, Some(key), Some(hold.from));
        }
        let arrived = captured.unwrap_or(0);
        let from = self.accounts.get_mut(&hold.from).expect("checked");
        from.held -= full;
        from.balance += full - arrived.min(full);
        if local {
            let to = self.accounts.get_mut(&hold.to).expect("checked");
            to.incoming -= full;
            to.balance += arrived.min(full);
            if captured.is_some() {
                self.committed_in.insert(key, arrived);
            }
            self.snapshot(&hold.to, record);
        }
        self.snapshot(&hold.from, record);
    }

    /// The Confirm of a hold captured in part, at its destination: the pending credit of the
    /// whole hold is dropped, and `amount` of it becomes balance.
    fn credit_captured(&mut self, record: &Record, key: TransferKey, amount: u64) {
        let Some(transfer) = self.home.get(&key).copied() else {
            let detail = format!("capture of {key:?} without a Try");
            return self.problem("oracle", record, detail, Some(key), None);
        };
        let full = transfer.amount.minor();
        let Some(a) = (self.accounts.get_mut(&transfer.to)).filter(|a| a.incoming >= full) else {
            let detail = format!("pending credit of {key:?} missing");
            return self.problem("conservation", record, detail, Some(key), Some(transfer.to));
        };
        if amount > full {
            let detail = format!("{key:?} captured {amount} of a credit of {full}");
            return self.problem("hold_capture", record, detail, Some(key), Some(transfer.to));
        }
        a.incoming -= full;
        a.balance += amount;
        self.committed_in.insert(key, amount);
        self.snapshot(&transfer.to, record);
    }

    /// Whether `account` was ever `answer` (or absent, for `None`) between `from_us` and
    /// `to_us`: some version valid in that window matches.
    pub fn was(
        &self,
        account: &AccountId,
        answer: Option<&Account>,
        from_us: Timestamp,
        to_us: Timestamp,
    ) -> bool {
        let Some(model) = self.accounts.get(account) else {
            return answer.is_none();
        };
        let versions = &model.versions;
        let opened_at = versions.first().map_or(Timestamp::MAX, |v| v.timestamp);
        let Some(answer) = answer else {
            return opened_at >= from_us;
        };
        if answer.currency != model.currency {
            return false;
        }
        versions.iter().enumerate().any(|(i, v)| {
            let valid_until = versions
                .get(i + 1)
                .map_or(Timestamp::MAX, |next| next.timestamp);
            v.timestamp <= to_us
                && valid_until >= from_us
                && (v.balance, v.held, v.incoming) == (answer.balance, answer.held, answer.incoming)
        })
    }

    /// Whether `account`'s available balance was below `amount` at some point in the window.
    pub fn was_below(
        &self,
        account: &AccountId,
        amount: u64,
        from_us: Timestamp,
        to_us: Timestamp,
    ) -> bool {
        let Some(model) = self.accounts.get(account) else {
            return false;
        };
        let versions = &model.versions;
        versions.iter().enumerate().any(|(i, v)| {
            let valid_until = versions
                .get(i + 1)
                .map_or(Timestamp::MAX, |next| next.timestamp);
            v.timestamp <= to_us && valid_until >= from_us && v.balance < amount
        })
    }
}
