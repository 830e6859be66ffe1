//! Invariant 6: what a client or a peer was told cannot be taken back by a crash. At rest:
//! every acknowledged outcome is the one the log holds. At the moment it could break: a
//! batch's answers and messages leave only once the log is durable through the batch (the
//! release rule of [`crate::protocol::machine`]), and a Confirm or Cancel only once its
//! home's decision is logged and durable (DESIGN section 3).

use crate::ledger::{Ledger, TransferRow, TransferState, TransferStatus};
use crate::model::event::{Lsn, Transfer};
use crate::model::partition::PartitionId;
use crate::protocol::coordinator::Phase;
use crate::protocol::message::PeerMessage;

use super::Violation;

/// A client was told `told` about `transfer`; its home partition holds `row` now (at rest,
/// after any crash): the row must exist with the same body, and unless `told` was
/// `Pending`, in a state the client is told the same of.
pub fn acknowledged(
    transfer: &Transfer,
    told: TransferStatus,
    row: Option<TransferRow>,
) -> Result<(), Violation> {
    let other_body = row.is_some_and(|row| row.transfer != *transfer);
    let found = row.map(|row| row.state.status());
    let kept = match found {
        Some(status) => told == TransferStatus::Pending || status == told,
        None => false,
    };
    if kept && !other_body {
        return Ok(());
    }
    Err(Violation::Acknowledged {
        key: transfer.key(),
        told,
        found,
        other_body,
    })
}

/// When a batch of the home partition whose state is `home` is cut: every Confirm or Cancel
/// among the `messages` it will send carries the decision `home` holds for its transfer. A
/// Cancel may also carry a transfer the home recorded refused for good (it had lost the
/// debit), or a transfer of another body than the home's row under its key (a credit of a
/// lost transfer whose id the client used again).
pub fn decisions_logged(home: &Ledger, messages: &[PeerMessage]) -> Result<(), Violation> {
    for (transfer, phase) in second_phase(messages) {
        let key = transfer.key();
        let row = home.transfer(&key);
        let state = row.map(|row| row.state);
        let orphan = row.is_some_and(|row| row.transfer != *transfer);
        let decided = match phase {
            // A hold captured: its Confirm carries the hold's body with what was captured.
            Phase::Confirm if state == Some(TransferState::Captured) => {
                let captured = home.hold_terms(&key).and_then(|terms| terms.captured);
                row.is_some_and(|row| row.transfer.to == transfer.to)
                    && captured == Some(transfer.amount)
            }
            Phase::Confirm => {
                !orphan
                    && matches!(
                        state,
                        Some(TransferState::Confirming | TransferState::Committed)
                    )
            }
            _ => {
                orphan
                    || matches!(
                        state,
                        Some(
                            TransferState::Cancelling(_)
                                | TransferState::Cancelled(_)
                                | TransferState::Rejected(_)
                        )
                    )
            }
        };
        if !decided {
            return Err(Violation::DecisionMissing {
                partition: home.partition(),
                key,
                phase,
                state,
            });
        }
    }
    Ok(())
}

/// When the release of a batch of `partition` ending at `last_lsn` leaves, with the
/// partition's log durable through `durable_lsn`: it sends `messages` and `answers` answers,
/// every one of which depends on records up to `last_lsn` (a batch with no records ends at
/// the last lsn applied before it).
pub fn released_durably(
    partition: PartitionId,
    last_lsn: Lsn,
    durable_lsn: Lsn,
    messages: &[PeerMessage],
    answers: usize,
) -> Result<(), Violation> {
    if last_lsn <= durable_lsn {
        return Ok(());
    }
    if let Some((transfer, phase)) = second_phase(messages).next() {
        return Err(Violation::DecisionNotDurable {
            partition,
            key: transfer.key(),
            phase,
            last_lsn,
            durable_lsn,
        });
    }
    if answers > 0 {
        return Err(Violation::AnswerBeforeDurable {
            partition,
            last_lsn,
            durable_lsn,
            answers,
        });
    }
    if !messages.is_empty() {
        return Err(Violation::MessageBeforeDurable {
            partition,
            last_lsn,
            durable_lsn,
            messages: messages.len(),
        });
    }
    Ok(())
}

/// The Confirm and Cancel requests among `messages`, with their transfers.
fn second_phase(messages: &[PeerMessage]) -> impl Iterator<Item = (&Transfer, Phase)> + '_ {
    messages.iter().filter_map(|message| match message {
        PeerMessage::Request { request, .. }
            if matches!(request.phase, Phase::Confirm | Phase::Cancel) =>
        {
            Some((&request.transfer, request.phase))
        }
        _ => None,
    })
}
