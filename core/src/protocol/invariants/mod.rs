//! The invariants of DESIGN section 5, written once: one function per invariant over plain
//! inputs (ledgers, a log's records, what a client was told, what a release sends), each
//! returning a typed [`Violation`] that names its [`Invariant`] and what broke.
//!
//! Three places check them and all call these functions: the core's property and mutation
//! tests (after every step of a random schedule), the simulator (while a run goes, and once
//! at its end) and `wallet verify` (over data directories at rest). What only one place can
//! know stays there: the simulator's oracle and client history, verify's files on disk.
//!
//! | DESIGN §5 | [`Invariant`] | functions |
//! | --- | --- | --- |
//! | 1 conservation | `conservation` | [`conservation`], [`money_totals`], [`books`], [`holds`] |
//! | 2 no negative balance | `no_negative` | [`balances_in_range`], [`apply_failed`] |
//! | 3 exactly once | `exactly_once` | [`LogScan`], [`scan_log`] |
//! | (refunds) the refund cap | `refund_cap` | [`RefundScan`], [`scan_refunds`] |
//! | (holds) one end, in time, within the hold | `hold_once`, `hold_expiry`, `hold_capture` | [`HoldScan`], [`scan_holds`] |
//! | (transactions) one outcome per side, all or nothing | `tx_once`, `tx_atomicity` | [`TransactionScan`], [`scan_transactions`], [`transactions_agree`] |
//! | 4 atomicity at rest | `atomicity` | [`transfers_agree`], [`sides_agree`], [`sides_settled`] |
//! | 5 no hanging | `no_hanging` | [`LogScan`], [`scan_log`] |
//! | 6 durability | `durability`, `durable_decision`, `durable_release` | [`acknowledged`], [`decisions_logged`], [`released_durably`] |
//! | 7 replay | `replay` | [`replay_matches`], [`apply_failed`], [`LogScan`] (records on the wrong partition) |
//! | 8 determinism | (the simulator's trace hash) | |
//!
//! # Conservation with money in flight
//! Per currency, at every instant:
//!
//! ```text
//! Σ balances + Σ holds − Σ holds already credited = Σ deposits − Σ withdrawals
//! ```
//!
//! where a hold is *already credited* when its transfer is unfinished at its home and its
//! destination has confirmed the credit. The formula is exact, not a bound, because of the
//! protocol's phase order: `Try(A)` moves the amount from A's balance into a hold (counted
//! once, as a hold); `Try(C)` records a pending credit at C, which is in no balance (still
//! counted once, as A's hold); `Confirm(C)` adds it to C's balance while A still holds it (now
//! on both sides: the hold is already credited and is subtracted); `Confirm(A)` ends the hold
//! (counted once, in C's balance). A cancel returns the hold to A's balance and never
//! confirms the credit. Had `Confirm(A)` come first, the money would be on neither side for
//! a while and the term would be the pending credits of committed transfers instead.
//!
//! "Every instant" means any *consistent cut* of the partitions: a state of each partition
//! such that every message one of them has received was sent from within the state of its
//! sender. The release rule gives one for free: a message leaves only once the batch holding
//! its cause is committed, so the states of the partitions as of their latest commits always
//! form a consistent cut, and so do the durable states a crash leaves. Tries are the one
//! exception (they leave beside their debit's sync, see the machine's release rule), and the
//! formula does not see them: a pending credit is in no term until its Confirm, and a
//! Confirm leaves only after its home's durable decision. The simulator checks
//! the formula over the former while the run goes ([`Money`] is what it keeps of each
//! partition); the tests and `wallet verify` check it over ledgers.
//!
//! # Durable before it leaves
//! Invariant 6 is checked at rest ([`acknowledged`]: what a client was told is what the log
//! holds) and at the moment it can break: when a batch's answers and messages leave.
//! [`decisions_logged`] checks, as a batch is cut, that every Confirm or Cancel it will send
//! has its home's decision in the state the batch leaves; [`released_durably`] checks, as its
//! release leaves, that the log is durable through the batch's last record: no answer
//! (`durability`), no second-phase message (`durable_decision`) and no other peer message
//! (`durable_release`) leaves a batch that a crash could still take back.

// Violations carry transfer keys and account ids, whose bytes are stored inline: large
// `Err`s, returned only when something is already broken.
#![allow(clippy::result_large_err)]

mod durable;
mod holds;
mod log_scan;
mod money;
mod refunds;
mod sides;
#[cfg(test)]
mod tests;
mod transactions;
mod violation;

pub use durable::{acknowledged, decisions_logged, released_durably};
pub use holds::{scan_holds, HoldScan, HoldSeen};
pub use log_scan::{scan_log, LogScan};
pub use money::{
    balances_in_range, books, conservation, conservation_of, holds, money_totals, Money, Totals,
};
pub use refunds::{scan_refunds, RefundScan};
pub use sides::{sides_agree, sides_settled, transfers_agree, Agreement, Moment};
pub use transactions::{scan_transactions, transactions_agree, TransactionScan, TxSeen, TxSide};
pub use violation::{apply_failed, replay_matches, Invariant, Violation};
