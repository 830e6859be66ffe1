//! Multi-leg transactions in the workload: a client sends, now and then, a transaction of 1
//! to 6 legs (sometimes up to 64) over accounts of any partition, in any currency the run
//! has (each leg between two accounts of its currency, so a transaction in two currencies
//! goes through accounts of each, as through liquidity accounts). Some pass money through an
//! account that starts the transaction without it (A→B then B→C, B's net is nothing); some
//! are bound to fail: a leg beyond any balance, a leg from or to an account never opened, a
//! leg in another currency than its source's. A transaction answered `pending` is asked
//! again with the same command until it is final (the requester does that), a repeat of an
//! answered one must get its first answer, and a reuse of its id with other legs is a
//! conflict.
//!
//! What the client can know ([`TxExpect`]): a transaction it built to fail is never
//! committed (rejected at its home, or cancelled when a participant refused); any answer is
//! a transfer status.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use walletd_core::ledger::{Command, LedgerError, Reply, TransferStatus};
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency, AMOUNT_MINOR_MAX};
use walletd_core::model::transaction::{Leg, Transaction, LEGS_MAX};
use walletd_runtime::driver::CommandResult;

use crate::workload::AccountSpec;

/// The largest leg of a transaction meant to commit, in minor units: small beside the
/// accounts' funds, so that most commit.
const LEG_MINOR_MAX: u64 = 600;

/// What a transaction's answer may be, decided when the client builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxExpect {
    /// Any transfer status (its outcome is checked against the logs).
    Valid,
    /// One leg cannot move (`why`): never committed.
    MustFail(&'static str),
    /// Other legs under the id of a transaction whose request got no answer: a conflict if
    /// its home recorded the first, else any status (the first was lost, or rejected for
    /// good once a participant asked about it).
    Reused,
}

/// Why `result` contradicts `expect`, if it does.
pub fn contradiction(expect: TxExpect, result: &CommandResult) -> Option<String> {
    match (expect, result) {
        (TxExpect::MustFail(why), Ok(Reply::Transfer(TransferStatus::Committed))) => Some(format!(
            "a transaction with a leg that cannot move ({why}) was committed"
        )),
        (TxExpect::MustFail(_), Ok(Reply::Transfer(TransferStatus::Rejected(_)))) => None,
        (TxExpect::MustFail(_), Ok(Reply::Transfer(TransferStatus::Cancelled(_)))) => None,
        (TxExpect::Reused, Err(LedgerError::Conflict(_))) => None,
        (_, Ok(Reply::Transfer(_))) => None,
        (_, other) => Some(format!("expected a transaction's status, got {other:?}")),
    }
}

fn amount(minor: u64) -> Amount {
    Amount::from_minor(minor).expect("a positive amount in range")
}

/// Builds a transaction under `id` over `specs` (opened accounts; `ghost` names one never
/// opened), and what its answer may be.
pub fn build(
    rng: &mut ChaCha8Rng,
    specs: &[AccountSpec],
    id: TransactionId,
    ghost: AccountId,
) -> Option<(Command, TxExpect)> {
    let count = if rng.gen_bool(0.05) {
        rng.gen_range(7..=LEGS_MAX)
    } else {
        rng.gen_range(1..=6)
    };
    let currencies: Vec<Currency> = {
        let mut all: Vec<Currency> = specs.iter().map(|s| s.currency).collect();
        all.sort_by_key(|c| format!("{c:?}"));
        all.dedup();
        all
    };
    let mut legs: Vec<Leg> = Vec::new();
    while legs.len() < count {
        let currency = *currencies.choose(rng)?;
        let of: Vec<&AccountSpec> = specs.iter().filter(|s| s.currency == currency).collect();
        if of.len() < 2 {
            // One account of this currency: no leg of it (the others have many).
            if currencies.len() == 1 {
                return None;
            }
            continue;
        }
        let from = of.choose(rng)?.id;
        let to = of
            .iter()
            .filter(|s| s.id != from)
            .collect::<Vec<_>>()
            .choose(rng)?
            .id;
        let minor = rng.gen_range(1..=LEG_MINOR_MAX);
        legs.push(Leg {
            from,
            to,
            amount: amount(minor),
            currency,
        });
        // Money passing through: `to` pays it on, to a third account.
        if legs.len() < count && of.len() > 2 && rng.gen_bool(0.3) {
            let third = (of.iter())
                .filter(|s| s.id != from && s.id != to)
                .collect::<Vec<_>>()
                .choose(rng)
                .map(|s| s.id)?;
            legs.push(Leg {
                from: to,
                to: third,
                amount: amount(minor),
                currency,
            });
        }
    }
    let mut expect = TxExpect::Valid;
    if rng.gen_bool(0.25) {
        let at = rng.gen_range(0..=legs.len()).min(LEGS_MAX - 1);
        let spec = *specs.choose(rng)?;
        let other = (specs.iter())
            .filter(|s| s.id != spec.id && s.currency == spec.currency)
            .collect::<Vec<_>>()
            .choose(rng)
            .map(|s| s.id)?;
        let (leg, why) = match rng.gen_range(0..4) {
            // More than any account holds: its source cannot cover it (or its destination
            // has no room for it).
            0 => (
                Leg {
                    from: spec.id,
                    to: other,
                    amount: amount(AMOUNT_MINOR_MAX / 4),
                    currency: spec.currency,
                },
                "beyond any balance",
            ),
            1 => (
                Leg {
                    from: spec.id,
                    to: ghost,
                    amount: amount(rng.gen_range(1..=LEG_MINOR_MAX)),
                    currency: spec.currency,
                },
                "to an account never opened",
            ),
            2 => (
                Leg {
                    from: ghost,
                    to: other,
                    amount: amount(rng.gen_range(1..=LEG_MINOR_MAX)),
                    currency: spec.currency,
                },
                "from an account never opened",
            ),
            _ => {
                let foreign = currencies.iter().find(|c| **c != spec.currency)?;
                (
                    Leg {
                        from: spec.id,
                        to: other,
                        amount: amount(rng.gen_range(1..=LEG_MINOR_MAX)),
                        currency: *foreign,
                    },
                    "in another currency than its accounts",
                )
            }
        };
        if legs.len() == LEGS_MAX {
            legs.pop();
        }
        legs.insert(at.min(legs.len()), leg);
        expect = TxExpect::MustFail(why);
    }
    let tx = Transaction::new(id, legs).ok()?;
    Some((Command::Transact(tx), expect))
}

/// The same transaction id with other legs: the first leg alone (so the key is the same),
/// its amount changed. A conflict, once the first was answered; if its home lost the first,
/// a transaction of its own, whose participants may be fewer than the first's (those left
/// out may hold Tries of the lost legs).
pub fn other_legs(tx: &Arc<Transaction>) -> Option<Command> {
    let mut legs = vec![tx.leg(0)];
    let minor = legs[0].amount.minor();
    legs[0].amount = amount(if minor > 1 { minor - 1 } else { 2 });
    let tx = Transaction::new(tx.transaction_id(), legs).ok()?;
    Some(Command::Transact(tx))
}

/// The run's transactions, for its summary: those sent (new ones, not repeats or reuses),
/// those across partitions, and how they settled: committed, rejected at their home,
/// cancelled (a participant refused, or never answered), and those bound to fail; then the
/// reuses of unanswered ones' ids with other legs, and how many of those committed.
pub fn summary(history: &crate::history::HistoryState) -> String {
    use crate::history::Expect;
    let (reused, sent): (Vec<&crate::history::Op>, Vec<&crate::history::Op>) = (history.ops.iter())
        .filter(|op| matches!(op.expect, Expect::Transaction(_)))
        .partition(|op| op.expect == Expect::Transaction(TxExpect::Reused));
    let reused_committed = (reused.iter())
        .filter(|op| op.settled() == Some(&Ok(Reply::Transfer(TransferStatus::Committed))))
        .count();
    let settled = |matches: fn(&TransferStatus) -> bool| {
        (sent.iter())
            .filter(|op| matches!(op.settled(), Some(Ok(Reply::Transfer(s))) if matches(s)))
            .count()
    };
    let failing = (sent.iter())
        .filter(|op| matches!(op.expect, Expect::Transaction(TxExpect::MustFail(_))))
        .count();
    let multi = (sent.iter())
        .filter(|op| matches!(&op.command, Command::Transact(tx) if tx.legs().len() > 6))
        .count();
    format!(
        "transactions={} transactions_committed={} transactions_rejected={} transactions_cancelled={} transactions_failing={failing} transactions_over_6_legs={multi} transactions_reused={} transactions_reused_committed={reused_committed}",
        sent.len(),
        settled(|s| *s == TransferStatus::Committed),
        settled(|s| matches!(s, TransferStatus::Rejected(_))),
        settled(|s| matches!(s, TransferStatus::Cancelled(_))),
        reused.len(),
    )
}
