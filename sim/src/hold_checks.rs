//! Holds at the end of a run, beyond core's scan of each log (`hold_once`, `hold_expiry`,
//! `hold_capture` over the records): what the clients were told about each hold, held
//! against each other (one end, however many answers told it) and against the final logs
//! (the end told is the end recorded), and no hold left held at rest.

use std::collections::BTreeMap;

use walletd_core::ledger::{Command, Reply, TransferState, TransferStatus};
use walletd_core::model::event::{Reason, TransferKey};
use walletd_core::model::partition::partition_of;
use walletd_core::protocol::invariants::HoldScan;
use walletd_runtime::driver::CommandResult;

use crate::checkers::{FinalState, Violation};
use crate::history::Op;
use crate::holds::{hold_key, told, told_apart, Told};

/// The invariant a hold's second end breaks.
const HOLD_ONCE: &str = "hold_once";

/// Every answer that told how a hold ended tells the same end: a client told `captured`
/// (for an amount) never hears voided, expired or another amount, and so on.
pub fn told_once(state: &FinalState<'_>, found: &mut Vec<Violation>) {
    let mut ends: BTreeMap<TransferKey, (usize, Told)> = BTreeMap::new();
    for (index, op) in state.history.ops.iter().enumerate() {
        let Some(key) = hold_key(&op.command) else {
            continue;
        };
        for (attempt, result) in op.answers() {
            let Some(end) = told(result) else {
                continue;
            };
            let (first_op, first) = *ends.entry(key).or_insert((index, end));
            if told_apart(first, end) {
                let mut v = Violation::new(
                    HOLD_ONCE,
                    format!(
                        "hold {key:?} told {first:?} (request {first_op}), then {end:?} at {} us",
                        attempt.done_us
                    ),
                )
                .key(key);
                v.op = Some(index);
                found.push(v);
                break;
            }
        }
    }
}

/// How the final log of its home breaks what a hold request was answered, if it does.
pub fn kept(state: &FinalState<'_>, op: &Op, result: &CommandResult) -> Option<String> {
    let key = hold_key(&op.command)?;
    let told_status = result.as_ref().ok()?.transfer_status()?;
    let ledger = state.ledger(partition_of(&key.from, state.partitions))?;
    let Some(row) = ledger.transfer(&key) else {
        return Some(format!(
            "hold {key:?} answered {told_status:?}, its home holds no row"
        ));
    };
    let terms = ledger.hold_terms(&key);
    // A capture's or void's answer shows the hold itself: it must be the hold recorded.
    if let Ok(Reply::HoldEnd(end)) = result {
        let shown = (end.to, end.amount, end.currency);
        let recorded = (row.transfer.to, row.transfer.amount, row.transfer.currency);
        let captured = terms.and_then(|t| t.captured);
        if shown != recorded
            || (told_status == TransferStatus::Captured && end.captured != captured)
        {
            return Some(format!(
                "hold {key:?} answered {end:?}, its home recorded {row:?} with {terms:?}"
            ));
        }
    }
    let final_state = row.state;
    let kept = match told_status {
        TransferStatus::Captured => {
            let asked = match op.command {
                Command::Capture { amount: None, .. } => Some(row.transfer.amount),
                Command::Capture {
                    amount: Some(written),
                    ..
                } => written.in_currency(row.transfer.currency).ok(),
                _ => None,
            };
            let captured = terms.and_then(|t| t.captured);
            final_state == TransferState::Captured
                && asked.is_none_or(|asked| captured == Some(asked))
        }
        TransferStatus::Cancelled(reason @ (Reason::HoldVoided | Reason::HoldExpired)) => {
            matches!(final_state, TransferState::Cancelled(r) | TransferState::Cancelling(r) if r == reason)
        }
        // Held once: it ended since, or is held still (which at rest `at_rest` reports).
        TransferStatus::Held => {
            terms.is_some()
                && matches!(
                    final_state,
                    TransferState::Held
                        | TransferState::Captured
                        | TransferState::Cancelling(Reason::HoldVoided | Reason::HoldExpired)
                        | TransferState::Cancelled(Reason::HoldVoided | Reason::HoldExpired)
                )
        }
        TransferStatus::Rejected(reason) => final_state == TransferState::Rejected(reason),
        TransferStatus::Cancelled(reason) => {
            matches!(final_state, TransferState::Cancelled(r) | TransferState::Cancelling(r) if r == reason)
        }
        TransferStatus::Pending | TransferStatus::Committed => true,
    };
    (!kept).then(|| {
        format!(
            "hold {key:?} answered {told_status:?}, its home holds it {final_state:?} (terms {terms:?})"
        )
    })
}

/// At rest, every hold placed has ended (captured, voided or expired), unless its placing
/// was cancelled before it was held (its destination refused it, or never answered).
pub fn at_rest(state: &FinalState<'_>, found: &mut Vec<Violation>) {
    for fin in state.finals {
        let mut scan = HoldScan::new(fin.partition);
        for record in &fin.records {
            // Violations are the log scan's to report.
            let _ = scan.record(record);
        }
        let Some(ledger) = state.ledger(fin.partition) else {
            continue;
        };
        for (key, seen) in scan.holds() {
            if seen.ended_at.is_some() {
                continue;
            }
            let row = ledger.transfer(key).map(|row| row.state);
            let never_held = matches!(
                row,
                Some(TransferState::Cancelled(reason))
                    if !matches!(reason, Reason::HoldVoided | Reason::HoldExpired)
            );
            if !never_held {
                found.push(
                    Violation::new(
                        HOLD_ONCE,
                        format!(
                            "hold {key:?} (expiring at {} us) never ended; at rest its home holds it {row:?}",
                            seen.expires_at
                        ),
                    )
                    .key(*key),
                );
            }
        }
    }
}
