//! Invariant 4: the two sides of every cross-partition transfer are in states the protocol
//! allows together, at any moment; at rest, both are final and agree (committed on both
//! sides, or cancelled or rejected with the source refunded), and nothing is left on hold
//! or pending.

use crate::ledger::{CreditState, Ledger, TransferState};
use crate::model::event::{Reason, Transfer};
use crate::model::partition::partition_of;

use super::Violation;

/// When a cut of the partitions is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// Any moment: transfers may be under way.
    Any,
    /// After faults healed and the cluster quiesced: nothing may be under way.
    AtRest,
}

/// Whether a home row in state `home` and its destination's barrier row (`None`: none) for
/// the same transfer may exist together at any moment of a consistent cut.
pub fn sides_agree(home: TransferState, credit: Option<CreditState>) -> bool {
    use CreditState as C;
    match home {
        // Refused at home. The destination may still hold a credit for it: the Try of an
        // earlier attempt left before its debit was durable, the home lost that debit, and
        // the retry was refused (or the home, asked, recorded it refused for good, see
        // `Command::Abandon`). That credit is pending until the home's Cancel lands.
        TransferState::Rejected(_) => !matches!(credit, Some(C::Confirmed)),
        // Try sent (or not yet): no decision logged. The destination has tried, or refused
        // the Try (the flag is set before the refusal is answered), or not heard of it yet;
        // or it confirmed: the Confirm leaves at the commit point, and a crash may take the
        // home's decision record, which only followed.
        TransferState::Trying => {
            matches!(credit, None | Some(C::Tried | C::TryNotSeen | C::Confirmed))
        }
        // Confirm decided: the Try succeeded; the Confirm may not have landed yet.
        TransferState::Confirming => matches!(credit, Some(C::Tried | C::Confirmed)),
        // Committed at the commit point: the credit is tried; the Confirm, which nobody
        // acknowledges, may not have landed yet.
        TransferState::Committed => matches!(credit, Some(C::Tried | C::Confirmed)),
        // Cancel decided: on a refused or aborted Try, whose flag is set. Never on a tried
        // credit: with the home's durable debit that is the commit point. (No row: logs
        // of the three-round protocol set the flag only with the Cancel.)
        // A hold voided or expired once held: its credit was tried, and the Cancel may not
        // have landed yet.
        TransferState::Cancelling(Reason::HoldVoided | Reason::HoldExpired) => {
            matches!(credit, Some(C::Tried | C::Cancelled))
        }
        TransferState::Cancelling(_) => matches!(credit, None | Some(C::TryNotSeen)),
        // A hold held: its destination tried the credit.
        TransferState::Held => credit == Some(C::Tried),
        // A hold captured, final at home at once: the Confirm may not have landed yet.
        TransferState::Captured => matches!(credit, Some(C::Tried | C::Confirmed)),
        // The destination acknowledged the Cancel, so it recorded it.
        TransferState::Cancelled(_) => matches!(credit, Some(C::Cancelled | C::TryNotSeen)),
    }
}

/// Whether a destination's credit for one body may stand beside a home row for another
/// body under the same key: only if no money moved on either side for them. This happens
/// when a home lost a transfer whose credit the destination held, and its client used the
/// id again for another transfer: the first Try's credit is cancelled, and the new
/// transfer's Try fails.
pub fn bodies_apart_agree(home: TransferState, credit: CreditState) -> bool {
    !matches!(
        home,
        TransferState::Confirming | TransferState::Committed | TransferState::Captured
    ) && credit != CreditState::Confirmed
}

/// Whether the two sides agree at rest: both final, and agreeing.
pub fn sides_settled(home: TransferState, credit: Option<CreditState>) -> bool {
    !home.is_unfinished() && credit != Some(CreditState::Tried) && sides_agree(home, credit)
}

/// What [`transfers_agree`] found.
#[derive(Debug, Default)]
pub struct Agreement {
    /// Cross-partition transfers with both sides in the cut.
    pub checked: usize,
    /// Cross-partition transfers whose destination is not in the cut.
    pub elsewhere: usize,
    pub violations: Vec<Violation>,
}

/// Invariant 4 over a cut of the partitions (`cut[p]`: partition `p`, `None` when it is not
/// at hand; transfers with a side there are not judged). Every home row of a
/// cross-partition transfer against its destination's barrier row, every barrier row against
/// its home row, and at rest every account with nothing held or pending.
pub fn transfers_agree(cut: &[Option<&Ledger>], moment: Moment) -> Agreement {
    let partitions = cut.len() as u32;
    let mut agreement = Agreement::default();
    for ledger in cut.iter().flatten() {
        judge_home_rows(cut, ledger, moment, &mut agreement);
        for (key, credit) in ledger.credits() {
            let Some(home) = cut[partition_of(&key.from, partitions) as usize] else {
                continue;
            };
            let row = home.transfer(&key);
            // A pair with a remote home row is judged from the home side. A credit may have
            // no home row: its Try left before the home's debit was durable, and the home
            // lost the debit. A pending one lasts until the home, asked, abandons the
            // transfer (so not at rest); a refused one moved nothing and stays so.
            let lost = row.is_none()
                && match credit.state {
                    CreditState::Tried => moment == Moment::Any,
                    CreditState::Confirmed | CreditState::Cancelled => false,
                    CreditState::TryNotSeen => true,
                };
            if !row.is_some_and(|row| row.remote) && !lost {
                agreement.violations.push(Violation::Sides {
                    key,
                    home: row.map(|row| row.state),
                    credit: Some(credit.state),
                    at_rest: moment == Moment::AtRest,
                });
            }
        }
        if moment == Moment::AtRest {
            left_in_flight(ledger, &mut agreement.violations);
        }
    }
    agreement
}

/// The home rows of `ledger` against their destinations in `cut`.
fn judge_home_rows(
    cut: &[Option<&Ledger>],
    ledger: &Ledger,
    moment: Moment,
    agreement: &mut Agreement,
) {
    let partitions = cut.len() as u32;
    let at_rest = moment == Moment::AtRest;
    for row in ledger.transfers() {
        let key = row.transfer.key();
        let destination = cut[partition_of(&row.transfer.to, partitions) as usize];
        // A multi-leg transaction's home row is its first leg's only by name: its sides are
        // judged over the logs (`transactions_agree`), and at rest it must be final.
        let transaction = ledger.transaction(&key).is_some();
        if !row.remote || destination.is_none() || transaction {
            agreement.elsewhere += usize::from(row.remote && !transaction);
            if at_rest && row.state.is_unfinished() {
                // Unfinished at rest, whatever the destination holds.
                agreement.violations.push(Violation::Sides {
                    key,
                    home: Some(row.state),
                    credit: None,
                    at_rest,
                });
            }
            continue;
        }
        agreement.checked += 1;
        let credit = destination.and_then(|d| d.credit(&key));
        let state = credit.map(|c| c.state);
        // A hold captured in part: once its Confirm landed, the destination's row keeps
        // what arrived, the home's the whole hold.
        let captured = (row.state == TransferState::Captured)
            .then(|| ledger.hold_terms(&key)?.captured)
            .flatten()
            .map(|amount| Transfer {
                amount,
                ..row.transfer
            });
        let apart = |t: Transfer| t != row.transfer && Some(t) != captured;
        if let Some(credit) = credit.filter(|c| c.transfer.is_some_and(apart)) {
            let settled =
                !at_rest || (!row.state.is_unfinished() && credit.state != CreditState::Tried);
            if !bodies_apart_agree(row.state, credit.state) || !settled {
                agreement.violations.push(Violation::BodyDiffers { key });
            }
            continue;
        }
        let agree = match moment {
            Moment::Any => sides_agree(row.state, state),
            Moment::AtRest => sides_settled(row.state, state),
        };
        if !agree {
            agreement.violations.push(Violation::Sides {
                key,
                home: Some(row.state),
                credit: state,
                at_rest,
            });
        }
    }
}

/// At rest: accounts of `ledger` with money still held or pending, in account order.
fn left_in_flight(ledger: &Ledger, violations: &mut Vec<Violation>) {
    let mut accounts: Vec<_> = ledger
        .accounts()
        .filter(|(_, a)| a.held != 0 || a.incoming != 0)
        .collect();
    accounts.sort_by_key(|(id, _)| **id);
    violations.extend(
        accounts
            .into_iter()
            .map(|(account, figures)| Violation::LeftInFlight {
                account: *account,
                held: figures.held,
                incoming: figures.incoming,
            }),
    );
}
