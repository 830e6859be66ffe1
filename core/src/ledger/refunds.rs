//! Refunds: money moved back along a committed transfer, never more than it moved.
//!
//! A refund is a transfer of its own, from the original's destination back to the original's
//! source, under its own id (`refund_id`, the idempotency key from the original's
//! destination). Its home is the original's destination partition: the partition that debits
//! it, and that holds the proof the original reached that account: the original's home row
//! when the original stayed within one partition, its confirmed barrier row when it crossed
//! partitions. So every refund of one transfer is decided in one place, one after another,
//! and [`RefundTable`] there keeps how much of the original is refunded: however refunds
//! race, their sum never passes the original's amount.
//!
//! A refund's own row is an ordinary transfer row, driven by the same TC/C protocol when the
//! original's source lives elsewhere. A refund cancelled there (the source's account could not
//! take the money back) counts no more against its original once its cancel is final.

use crate::ledger::key_map::KeyMap;
use crate::ledger::row_terms::RowTerms;

use crate::ledger::{CreditState, Ledger, LedgerError, Reply, TransferState, TransferStatus};
use crate::model::event::{Event, Reason, Transfer, TransferKey};
use crate::model::ids::TransactionId;
use crate::model::money::Amount;
use crate::model::partition::PartitionId;

/// A client's request to refund a transfer.
///
/// It names the partition that decides it (the partition of the original's destination,
/// whose account the refund debits) rather than that account: the partition finds the
/// account in the original's row, and a command with a fourth id would be a quarter larger,
/// which every command pays for as it moves through a partition's inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refund {
    /// The refund's own id, unique among the transfers from the original's destination.
    pub refund_id: TransactionId,
    /// The transfer being refunded.
    pub original: TransferKey,
    /// The partition of the original's destination: the refund's home.
    pub partition: PartitionId,
    /// How much to refund; `None`: all that is left to refund.
    pub amount: Option<Amount>,
}

// A refund command takes no more room than a transfer command.
const _: () = assert!(std::mem::size_of::<Refund>() <= std::mem::size_of::<Transfer>());

/// How much of each original a partition refunded (by refunds not cancelled): only grows
/// with refunds; in snapshots (sorted by key there), and a [`KeyMap`], as the other tables
/// that grow with history are (see [`crate::ledger::key_map`]): a snapshot image shares it.
/// Which original each refund refunds is the refund's row's terms
/// ([`crate::ledger::row_terms`]), on disk with the row once final.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RefundTable {
    /// Original key → minor units refunded so far.
    pub(crate) refunded: KeyMap<u64>,
}

impl RefundTable {
    /// Minor units of the transfer `original` refunded so far.
    pub(crate) fn refunded(&self, original: &TransferKey) -> u64 {
        self.refunded.get(original).copied().unwrap_or(0)
    }
}

impl Ledger {
    /// The id of the transfer that the transfer `key` refunds, if it is a refund made here:
    /// in memory, or read with its row from its chunk file.
    pub fn find_refund_of(&self, key: &TransferKey) -> Result<Option<TransactionId>, LedgerError> {
        let terms = self.transfers.terms_of(key)?;
        Ok(terms.and_then(|terms| terms.refund_of()))
    }

    /// [`Ledger::find_refund_of`] for checks and tests.
    ///
    /// # Panics
    /// If the row is on disk only and its chunk file cannot be read.
    pub fn refund_of(&self, key: &TransferKey) -> Option<TransactionId> {
        self.find_refund_of(key)
            .unwrap_or_else(|error| panic!("original of refund {key:?}: {error}"))
    }

    /// The key `refund` is recorded under if this partition decides it: the refunded
    /// transfer's destination and the refund's id (`None` when the original is not refundable
    /// here).
    pub fn refund_key(&self, refund: &Refund) -> Option<TransferKey> {
        let original = self.refundable(&refund.original).ok()?;
        Some(TransferKey {
            from: original.to,
            transaction_id: refund.refund_id,
        })
    }

    /// Minor units of the transfer `original` refunded by refunds made here.
    pub fn refunded(&self, original: &TransferKey) -> u64 {
        self.refunds.refunded(original)
    }

    /// A refund: its first answer if its id is used (or a conflict), else refused (recorded)
    /// or accepted against what is left to refund of the original.
    pub(crate) fn decide_refund(
        &self,
        request: Refund,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        if request.partition != self.partition() {
            return Err(LedgerError::WrongPartition {
                account: request.original.from,
                owner: request.partition,
                here: self.partition(),
            });
        }
        let original = self.refundable(&request.original)?;
        let key = TransferKey {
            from: original.to,
            transaction_id: request.refund_id,
        };
        if let Some((row, terms)) = self.find_home(&key)? {
            // A refund whose record a crash took after its Try left is abandoned when its
            // destination asks about the credit (see `Command::Abandon`): recorded as a plain
            // transfer refused for good, which its retry is answered with, as a transfer's is.
            let original_of = terms.and_then(|terms| terms.refund_of());
            let abandoned =
                original_of.is_none() && row.state == TransferState::Rejected(Reason::Timeout);
            let same = (abandoned || original_of == Some(request.original.transaction_id))
                && row.transfer.to == request.original.from
                && request.amount.is_none_or(|a| a == row.transfer.amount);
            return if same {
                Ok(Reply::Transfer(row.state.status()))
            } else {
                Err(LedgerError::Conflict(request.refund_id))
            };
        }
        let left = original.amount.minor() - self.refunded_before(&request.original);
        let asked = request.amount.or_else(|| Amount::from_minor(left));
        let refund = Transfer {
            transaction_id: request.refund_id,
            from: original.to,
            to: request.original.from,
            // Nothing left and no amount asked: the refusal records the original's amount.
            amount: asked.unwrap_or(original.amount),
            currency: original.currency,
        };
        let over = asked.is_none_or(|a| a.minor() > left);
        let refusal = (over.then_some(Reason::RefundExceedsOriginal))
            .or_else(|| self.transfer_refusal(&refund));
        let original = request.original.transaction_id;
        if let Some(reason) = refusal {
            events.push(Event::RefundRejected {
                refund,
                original,
                reason,
            });
            return Ok(Reply::Transfer(TransferStatus::Rejected(reason)));
        }
        let remote = !self.owns(&refund.to);
        events.push(Event::RefundAccepted {
            refund,
            original,
            remote,
        });
        Ok(Reply::Transfer(if remote {
            TransferStatus::Pending
        } else {
            TransferStatus::Committed
        }))
    }

    /// Minor units of the transfer `original` that a new refund of it is held against: all
    /// its refunds so far, but for the known bug that forgets them (deciding and applying
    /// alike, so that a log written with the bug on replays as it ran).
    fn refunded_before(&self, original: &TransferKey) -> u64 {
        if known_bug!(RefundBeyondOriginal) {
            return 0;
        }
        self.refunds.refunded(original)
    }

    /// The transfer `original`, if it is committed and its money reached an account of this
    /// partition: its home row here when it stayed within this partition, else its barrier
    /// row here, confirmed (a credit only tried may still be cancelled, if its home lost the
    /// debit).
    fn refundable(&self, original: &TransferKey) -> Result<Transfer, LedgerError> {
        let not_refundable = || LedgerError::NotRefundable(*original);
        let transfer = if self.owns(&original.from) {
            match self.find_home(original)? {
                // A multi-leg transaction is not a transfer: its row holds its first leg,
                // whose money need not have stayed where that leg took it.
                Some((_, Some(RowTerms::Transaction(_)))) => return Err(not_refundable()),
                Some((row, _)) if row.state == TransferState::Committed => row.transfer,
                // A hold captured within the partition: what was captured arrived.
                Some((row, terms)) if row.state == TransferState::Captured => {
                    let captured = terms.and_then(|terms| terms.hold()?.captured);
                    Transfer {
                        amount: captured.ok_or_else(not_refundable)?,
                        ..row.transfer
                    }
                }
                _ => return Err(not_refundable()),
            }
        } else {
            match self.find_credit(original)? {
                Some(row) if row.state == CreditState::Confirmed => {
                    row.transfer.ok_or_else(not_refundable)?
                }
                _ => return Err(not_refundable()),
            }
        };
        if !self.owns(&transfer.to) {
            return Err(not_refundable());
        }
        Ok(transfer)
    }

    /// Checks a refund event against the state (its original is refundable into the refund's
    /// source, and the refund fits what is left of it), before anything changes.
    pub(crate) fn check_refund(
        &self,
        refund: &Transfer,
        original: TransactionId,
        accepted: bool,
    ) -> Result<TransferKey, String> {
        let original_key = Event::refund_original(refund, original);
        let found = (self.refundable(&original_key))
            .map_err(|e| format!("refund {:?}: {e}", refund.key()))?;
        if found.to != refund.from {
            return Err(format!(
                "refund {:?} from another account than its original reached",
                refund.key()
            ));
        }
        let left = found.amount.minor() - self.refunded_before(&original_key);
        if accepted && refund.amount.minor() > left {
            return Err(format!(
                "refund {:?} of {} exceeds the {left} left of {original_key:?}",
                refund.key(),
                refund.amount.minor()
            ));
        }
        if refund.currency != found.currency {
            return Err(format!("refund {:?} in another currency", refund.key()));
        }
        Ok(original_key)
    }

    /// Gives their rows the originals that a snapshot of before version 10 kept in a table
    /// of their own. Every row is in memory then (such snapshots restore their chunks so).
    pub(crate) fn restore_separate_refund_originals(
        &mut self,
        originals: Vec<(TransferKey, TransactionId)>,
    ) -> Result<(), String> {
        for (key, original) in originals {
            (self.transfers).give_stored_terms(&key, RowTerms::Refund(Box::new(original)))?;
        }
        Ok(())
    }

    /// Counts a refund applied from an event that [`Ledger::check_refund`] passed, whose
    /// row was just recorded: the row names its original.
    pub(crate) fn count_refund(
        &mut self,
        refund: &Transfer,
        original_key: TransferKey,
        accepted: bool,
    ) {
        let at = (self.transfers.find(&refund.key())).expect("a refund's row was just recorded");
        let original = Box::new(original_key.transaction_id);
        self.transfers.set_terms(at, RowTerms::Refund(original));
        if accepted {
            let refunded = self.refunds.refunded(&original_key) + refund.amount.minor();
            self.refunds.refunded.insert(original_key, refunded);
        }
    }

    /// A transfer made here was cancelled for good: if it was a refund, its amount no
    /// longer counts against its original.
    pub(crate) fn uncount_if_refund(&mut self, at: usize, transfer: &Transfer) {
        let Some(original) = self.transfers.terms(at).and_then(RowTerms::refund_of) else {
            return;
        };
        let original = Event::refund_original(transfer, original);
        let refunded = (self.refunds.refunded.get_mut(&original))
            .expect("an accepted refund is counted against its original");
        *refunded =
            (refunded.checked_sub(transfer.amount.minor())).expect("a refund counted its amount");
    }
}
