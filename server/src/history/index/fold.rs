//! What each log record does to the accounts of its partition, one record at a time: the
//! fold the history index is built by.
//!
//! It says the same as [`walletd_core::log::replay::movements`] and
//! [`walletd_core::log::replay::balance_as_of`] (the tests hold the index to them), but for
//! every account of the partition at once and without keeping any account's history: the
//! only state is the cross-partition transfers and multi-leg transactions in flight, because
//! their second phases name a transfer key, not an amount or an account. That state is
//! bounded by what is in flight, not by the log, and each index chunk stores it at its end so
//! that indexing can go on from there after a restart.
//!
//! A multi-leg transaction has no one counterparty: it touches each account of this
//! partition that its legs name with the account's net (its debits less its credits, or the
//! reverse), as replay folds it; an account whose legs cancel out is not touched.

use rustc_hash::FxHashMap;

use walletd_core::log::codec::Record;
use walletd_core::log::replay::MovementKind;
use walletd_core::model::event::{Event, Lsn, TransferKey};
use walletd_core::model::ids::AccountId;
use walletd_core::model::money::Currency;
use walletd_core::model::partition::PartitionId;
use walletd_core::model::transaction::{Transaction, LEGS_MAX};

/// What an index entry records about its record, for one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// The account was opened (its figures start at zero).
    Opened,
    /// A pending credit was recorded (a destination Try): only `incoming` grew. Not a
    /// movement.
    CreditPending,
    /// A pending credit was dropped (a destination Cancel): only `incoming` shrank.
    CreditDropped,
    /// What a capture left of a hold went back to the balance (`held` shrank, `balance`
    /// grew). Not a movement: the capture's movement, at the same record, carries it.
    HoldRest,
    /// A movement of the account's history.
    Movement(MovementKind),
}

const MOVEMENT_KINDS: [MovementKind; 8] = [
    MovementKind::Deposit,
    MovementKind::Withdrawal,
    MovementKind::TransferOut,
    MovementKind::TransferIn,
    MovementKind::Hold,
    MovementKind::HoldCaptured,
    MovementKind::HoldReleased,
    MovementKind::CreditIn,
];

impl EntryKind {
    /// The byte an index file stores; part of its format, never renumbered.
    pub fn tag(self) -> u8 {
        match self {
            EntryKind::Opened => 1,
            EntryKind::CreditPending => 2,
            EntryKind::CreditDropped => 3,
            EntryKind::HoldRest => 4,
            EntryKind::Movement(kind) => {
                let index = MOVEMENT_KINDS
                    .iter()
                    .position(|k| *k == kind)
                    .expect("every kind is listed");
                16 + index as u8
            }
        }
    }

    pub fn from_tag(tag: u8) -> Option<EntryKind> {
        match tag {
            1 => Some(EntryKind::Opened),
            2 => Some(EntryKind::CreditPending),
            3 => Some(EntryKind::CreditDropped),
            4 => Some(EntryKind::HoldRest),
            16..=23 => Some(EntryKind::Movement(MOVEMENT_KINDS[usize::from(tag - 16)])),
            _ => None,
        }
    }

    pub fn movement(self) -> Option<MovementKind> {
        match self {
            EntryKind::Movement(kind) => Some(kind),
            EntryKind::Opened
            | EntryKind::CreditPending
            | EntryKind::CreditDropped
            | EntryKind::HoldRest => None,
        }
    }
}

/// An account's figures at a point of the log, in minor units of its currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub balance: u64,
    pub held: u64,
    pub incoming: u64,
}

impl Figures {
    /// The figures after `touch`. Saturating, as replay's fold is: a log that contradicts
    /// itself gives figures that mean nothing rather than a panic.
    pub fn after(self, touch: &Touch) -> Figures {
        let (balance, held, incoming) = touch.changes();
        Figures {
            balance: add_signed(self.balance, balance),
            held: add_signed(self.held, held),
            incoming: add_signed(self.incoming, incoming),
        }
    }
}

fn add_signed(value: u64, change: i128) -> u64 {
    (i128::from(value) + change).clamp(0, i128::from(u64::MAX)) as u64
}

/// One account's part in one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Touch {
    pub account: AccountId,
    pub kind: EntryKind,
    /// Minor units moved (0 for an opening).
    pub amount: u64,
    /// The currency of an opening (the account's currency for good).
    pub opened: Option<Currency>,
    /// The record that says what the movement was (amount, transaction id, counterparty):
    /// the record itself, or the Try of a second phase, which names only a transfer key.
    pub origin_lsn: Lsn,
}

impl Touch {
    /// Signed changes of `(balance, held, incoming)`.
    pub fn changes(&self) -> (i128, i128, i128) {
        let amount = i128::from(self.amount);
        match self.kind {
            EntryKind::Opened => (0, 0, 0),
            EntryKind::CreditPending => (0, 0, amount),
            EntryKind::CreditDropped => (0, 0, -amount),
            EntryKind::HoldRest => (amount, -amount, 0),
            EntryKind::Movement(kind) => {
                let (balance, held) = kind.changes(self.amount);
                let incoming = if kind == MovementKind::CreditIn {
                    -amount
                } else {
                    0
                };
                (balance, held, incoming)
            }
        }
    }
}

/// A Try in flight here: the Try's record, its amount, and the account of this partition it
/// concerns (the source of a hold, the destination of a pending credit; for a multi-leg
/// transaction, one account's net debit or net credit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    pub try_lsn: Lsn,
    pub amount: u64,
    pub account: AccountId,
}

/// Which side of a Try an [`InFlight`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    /// A transfer's hold at its source.
    Hold,
    /// A transfer's pending credit at its destination.
    Credit,
    /// A multi-leg transaction's net debit of one account, moved into `held`.
    TransactionDebit,
    /// A multi-leg transaction's net credit of one account, counted as `incoming`.
    TransactionCredit,
}

/// The fold's state: the cross-partition transfers and multi-leg transactions in flight, by
/// key.
#[derive(Debug, Clone)]
pub struct Tracker {
    /// This partition, and how many there are: which accounts of a transaction are here.
    partition: PartitionId,
    partitions: u32,
    holds: FxHashMap<TransferKey, InFlight>,
    credits: FxHashMap<TransferKey, InFlight>,
    /// Each transaction tried here and not yet confirmed or cancelled: the nets of the
    /// accounts of this partition that its Try moved, by side and account.
    transactions: FxHashMap<TransferKey, Vec<(Side, InFlight)>>,
    /// How many nets `transactions` holds in all.
    transaction_nets: usize,
}

/// Most accounts one record touches: a multi-leg transaction touches each account of the
/// partition that its legs name, once (every other record touches at most four).
pub const TOUCHES_MAX: usize = 2 * LEGS_MAX;

impl Tracker {
    /// Most Tries in flight a tracker holds (a transaction's counting one per account it
    /// moved). A partition has far fewer (each is a transfer or a transaction waiting for
    /// its other side); more means the log is not what it seems.
    pub const IN_FLIGHT_MAX: usize = 1 << 24;

    /// A tracker of partition `partition` of `partitions` with nothing in flight.
    pub fn new(partition: PartitionId, partitions: u32) -> Tracker {
        Tracker {
            partition,
            partitions,
            holds: FxHashMap::default(),
            credits: FxHashMap::default(),
            transactions: FxHashMap::default(),
            transaction_nets: 0,
        }
    }

    /// A tracker of partition `partition` of `partitions` with `items` in flight (as
    /// [`Tracker::in_flight`] gave them).
    pub fn from_in_flight(
        partition: PartitionId,
        partitions: u32,
        items: impl IntoIterator<Item = (Side, TransferKey, InFlight)>,
    ) -> Self {
        let mut tracker = Tracker::new(partition, partitions);
        for (side, key, item) in items {
            match side {
                Side::Hold => {
                    tracker.holds.insert(key, item);
                }
                Side::Credit => {
                    tracker.credits.insert(key, item);
                }
                Side::TransactionDebit | Side::TransactionCredit => {
                    tracker
                        .transactions
                        .entry(key)
                        .or_default()
                        .push((side, item));
                    tracker.transaction_nets += 1;
                }
            }
        }
        tracker
    }

    /// Everything in flight, in side, key and account order (so a chunk file's bytes
    /// depend on the log alone).
    pub fn in_flight(&self) -> Vec<(Side, TransferKey, InFlight)> {
        let nets = self
            .transactions
            .iter()
            .flat_map(|(key, nets)| nets.iter().map(|(side, item)| (*side, *key, *item)));
        let mut items: Vec<_> = (self.holds.iter().map(|(k, v)| (Side::Hold, *k, *v)))
            .chain(self.credits.iter().map(|(k, v)| (Side::Credit, *k, *v)))
            .chain(nets)
            .collect();
        items.sort_by_key(|a| (a.0, a.1, a.2.account));
        items
    }

    /// How many Tries are in flight, a transaction's counting once per account it moved.
    fn in_flight_count(&self) -> usize {
        self.holds.len() + self.credits.len() + self.transaction_nets
    }

    /// The accounts of this partition that `record` changes, appended to `out`: at most
    /// [`TOUCHES_MAX`], one per account the legs of a multi-leg transaction name; any other
    /// record touches at most four (a hold captured within the partition touches each of
    /// its accounts twice, a movement and the figures that go with it). One movement per
    /// account and record. Events that change no figure (refusals, decisions, null
    /// compensations) touch nothing.
    pub fn fold(&mut self, record: &Record, out: &mut Vec<Touch>) {
        let lsn = record.lsn;
        let mut touch = |account, kind, amount, origin_lsn| {
            out.push(Touch {
                account,
                kind,
                amount,
                opened: None,
                origin_lsn,
            })
        };
        let movement = EntryKind::Movement;
        match record.event.effect() {
            Event::AccountOpened { account, currency } => out.push(Touch {
                account,
                kind: EntryKind::Opened,
                amount: 0,
                opened: Some(currency),
                origin_lsn: lsn,
            }),
            Event::Deposited {
                account, amount, ..
            } => touch(
                account,
                movement(MovementKind::Deposit),
                amount.minor(),
                lsn,
            ),
            Event::Withdrawn {
                account, amount, ..
            } => touch(
                account,
                movement(MovementKind::Withdrawal),
                amount.minor(),
                lsn,
            ),
            // A transfer to itself changes nothing (and is refused before it is logged).
            Event::Transferred { transfer } if transfer.from != transfer.to => {
                let amount = transfer.amount.minor();
                touch(
                    transfer.from,
                    movement(MovementKind::TransferOut),
                    amount,
                    lsn,
                );
                touch(transfer.to, movement(MovementKind::TransferIn), amount, lsn);
            }
            Event::DebitTried { transfer } => {
                let item = InFlight {
                    try_lsn: lsn,
                    amount: transfer.amount.minor(),
                    account: transfer.from,
                };
                self.insert(Side::Hold, transfer.key(), item);
                touch(item.account, movement(MovementKind::Hold), item.amount, lsn);
            }
            Event::DebitConfirmed { key } | Event::DebitCancelled { key } => {
                if let Some(item) = self.holds.remove(&key) {
                    let kind = match record.event {
                        Event::DebitConfirmed { .. } => MovementKind::HoldCaptured,
                        _ => MovementKind::HoldReleased,
                    };
                    touch(item.account, movement(kind), item.amount, item.try_lsn);
                }
            }
            Event::CreditTried { transfer } => {
                let item = InFlight {
                    try_lsn: lsn,
                    amount: transfer.amount.minor(),
                    account: transfer.to,
                };
                self.insert(Side::Credit, transfer.key(), item);
                touch(item.account, EntryKind::CreditPending, item.amount, lsn);
            }
            Event::CreditConfirmed { key } => {
                if let Some(item) = self.credits.remove(&key) {
                    let kind = movement(MovementKind::CreditIn);
                    touch(item.account, kind, item.amount, item.try_lsn);
                }
            }
            Event::CreditCancelled { key } => {
                if let Some(item) = self.credits.remove(&key) {
                    touch(
                        item.account,
                        EntryKind::CreditDropped,
                        item.amount,
                        item.try_lsn,
                    );
                }
            }
            // Within the partition (across partitions its effect is a `DebitTried`): the
            // source's money into `held`, the destination's `incoming` up.
            Event::HoldPlaced { hold, .. } => {
                let amount = hold.amount.minor();
                touch(hold.from, movement(MovementKind::Hold), amount, lsn);
                touch(hold.to, EntryKind::CreditPending, amount, lsn);
            }
            // One movement per account, as replay folds it: the source's is the part captured,
            // the rest of the hold going back with it; the destination's (within the
            // partition) is the part arriving, its whole pending credit dropped with it. The
            // figures that go with a movement are entered first, so that its figures after
            // are the record's.
            Event::HoldCaptured {
                hold,
                amount,
                remote,
            } => {
                let (full, captured) = (hold.amount.minor(), amount.minor());
                let rest = full.saturating_sub(captured);
                if remote {
                    // The hold's Try is done with: nothing of it follows at this side.
                    self.holds.remove(&hold.key());
                }
                if rest > 0 {
                    touch(hold.from, EntryKind::HoldRest, rest, lsn);
                }
                touch(
                    hold.from,
                    movement(MovementKind::HoldCaptured),
                    captured,
                    lsn,
                );
                if !remote {
                    touch(hold.to, EntryKind::CreditDropped, full, lsn);
                    touch(hold.to, movement(MovementKind::TransferIn), captured, lsn);
                }
            }
            // Within the partition (across partitions its effect is a cancel decision, and
            // a `DebitCancelled` follows): everything back to the source.
            Event::HoldReleased { hold, .. } => {
                let amount = hold.amount.minor();
                touch(hold.from, movement(MovementKind::HoldReleased), amount, lsn);
                touch(hold.to, EntryKind::CreditDropped, amount, lsn);
            }
            // The destination's Confirm of a hold captured in part: the pending credit was
            // dropped and the part became balance. The record itself names the part.
            Event::CreditCaptured { key, amount } => {
                if let Some(item) = self.credits.remove(&key) {
                    let captured = amount.minor();
                    let rest = item.amount.saturating_sub(captured);
                    if rest > 0 {
                        touch(item.account, EntryKind::CreditDropped, rest, item.try_lsn);
                    }
                    touch(
                        item.account,
                        movement(MovementKind::CreditIn),
                        captured,
                        lsn,
                    );
                }
            }
            // Within the partition: each account's net, out of its balance or into it.
            Event::TransactionApplied { tx } => {
                for (account, debit, credit) in self.nets(&tx) {
                    if debit > 0 {
                        touch(account, movement(MovementKind::TransferOut), debit, lsn);
                    } else {
                        touch(account, movement(MovementKind::TransferIn), credit, lsn);
                    }
                }
            }
            // A participant's Try (the home's included): each net debit into `held`, each net
            // credit counted as `incoming`, remembered until the Confirm or Cancel.
            Event::TransactionTried { tx } => {
                let mut nets = Vec::new();
                for (account, debit, credit) in self.nets(&tx) {
                    let (side, kind, amount) = if debit > 0 {
                        (Side::TransactionDebit, movement(MovementKind::Hold), debit)
                    } else {
                        (Side::TransactionCredit, EntryKind::CreditPending, credit)
                    };
                    touch(account, kind, amount, lsn);
                    let item = InFlight {
                        try_lsn: lsn,
                        amount,
                        account,
                    };
                    nets.push((side, item));
                }
                self.insert_transaction(tx.key(), nets);
            }
            // This partition's side made final or undone; each entry's origin is the Try.
            Event::TransactionConfirmed { key } | Event::TransactionCancelled { key } => {
                let confirmed = matches!(record.event, Event::TransactionConfirmed { .. });
                let nets = self.transactions.remove(&key).unwrap_or_default();
                self.transaction_nets -= nets.len();
                for (side, item) in nets {
                    let kind = match (side, confirmed) {
                        (Side::TransactionDebit, true) => movement(MovementKind::HoldCaptured),
                        (Side::TransactionDebit, false) => movement(MovementKind::HoldReleased),
                        (_, true) => movement(MovementKind::CreditIn),
                        (_, false) => EntryKind::CreditDropped,
                    };
                    touch(item.account, kind, item.amount, item.try_lsn);
                }
            }
            Event::Transferred { .. }
            | Event::CashRefused(_)
            | Event::TransferRejected { .. }
            | Event::TransferDecided { .. }
            | Event::CreditTryNotSeen { .. }
            | Event::HoldEstablished { .. }
            | Event::TransactionRejected { .. }
            | Event::TransactionRefused { .. }
            | Event::TransactionCancelling { .. } => {}
            Event::RefundAccepted { .. } | Event::RefundRejected { .. } => {
                unreachable!("a refund's effect is a transfer event")
            }
        }
    }

    fn insert(&mut self, side: Side, key: TransferKey, item: InFlight) {
        assert!(
            self.in_flight_count() < Self::IN_FLIGHT_MAX,
            "transfers in flight bounded"
        );
        let table = match side {
            Side::Hold => &mut self.holds,
            Side::Credit => &mut self.credits,
            Side::TransactionDebit | Side::TransactionCredit => {
                unreachable!("a transaction's nets are kept by key")
            }
        };
        table.insert(key, item);
    }

    /// Remembers the nets a transaction's Try moved here (none: nothing to remember), in
    /// side and account order, as a chunk file gives them back.
    fn insert_transaction(&mut self, key: TransferKey, mut nets: Vec<(Side, InFlight)>) {
        if nets.is_empty() {
            return;
        }
        assert!(
            self.in_flight_count() + nets.len() <= Self::IN_FLIGHT_MAX,
            "transfers in flight bounded"
        );
        nets.sort_by_key(|(side, item)| (*side, item.account));
        self.transaction_nets += nets.len();
        if let Some(old) = self.transactions.insert(key, nets) {
            // A log that tries one key twice replays to an error; the index follows the
            // newer Try.
            self.transaction_nets -= old.len();
        }
    }

    /// The net debit and net credit of each account of this partition that `tx` moves
    /// (accounts whose legs cancel out are left out), in the order of their first legs.
    fn nets(&self, tx: &Transaction) -> Vec<(AccountId, u64, u64)> {
        let effects = tx.effects_on(self.partition, self.partitions);
        effects
            .accounts
            .iter()
            .map(|e| (e.account, e.net_debit(), e.net_credit()))
            .filter(|(_, debit, credit)| *debit > 0 || *credit > 0)
            .collect()
    }
}

/// The net `tx` moves of `account` on the side that `incoming` names: its credits less its
/// debits if `incoming`, else the reverse (0 if that side does not move).
pub fn net_of(tx: &Transaction, account: &AccountId, incoming: bool) -> u64 {
    let (mut debits, mut credits) = (0u64, 0u64);
    for leg in tx.legs() {
        if leg.from == *account {
            debits += leg.amount.minor();
        }
        if leg.to == *account {
            credits += leg.amount.minor();
        }
    }
    if incoming {
        credits.saturating_sub(debits)
    } else {
        debits.saturating_sub(credits)
    }
}
