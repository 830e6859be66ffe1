//! Multi-leg transactions in the ledger: all legs commit or none does.
//!
//! A transaction ([`crate::model::transaction`]) is decided at its *home* (its first leg's
//! source's partition) and carried out by every *participant* (each partition holding one
//! of its accounts; the home is one). What it does to a participant is the net of its legs
//! on each of that partition's accounts ([`Effects`]), checked and moved together:
//!
//! - **Within one partition** (every account there): one record, [`Event::TransactionApplied`],
//!   moves every net at once, or [`Event::TransactionRejected`] names the first leg that
//!   fails and moves nothing.
//! - **Across partitions**, TC/C with many participants. Each participant's Try
//!   ([`Event::TransactionTried`]; at the home, the record that accepts the transaction)
//!   moves its accounts' net debits from the balance into `held` and counts their net
//!   credits as `incoming`, or (elsewhere than the home) refuses with its first failing leg
//!   ([`Event::TransactionRefused`]), durably, so every later Try gets the same answer. The
//!   transaction is committed once every participant's Try is durable: no participant can
//!   then refuse, and the home records the commit ([`Event::TransactionConfirmed`], which
//!   also finishes its own side) before any Confirm leaves. A participant's Confirm makes
//!   its nets final: the debits leave for good, the credits become balance. So no credit of
//!   the transaction is spendable before every leg is decided to commit.
//! - A refusal or a Try that goes unanswered makes the home decide to cancel
//!   ([`Event::TransactionCancelling`], with the failed leg if one failed); each participant
//!   undoes its Try ([`Event::TransactionCancelled`]), or, if the cancel comes first,
//!   records that it never tried (a refusal for [`Reason::CancelledBeforeTry`]: the barrier
//!   that fails a late Try). The home finishes the cancel once every participant
//!   acknowledged it.
//!
//! The home's row is an ordinary transfer row under the transaction's key (its first leg,
//! for the idempotency table and the status read); the legs and the failed leg are the
//! row's terms ([`crate::ledger::row_terms`]), so they go to disk with it once final. A
//! participant's row (its *part*, [`PartRow`]) is a row of the transfers table as well
//! ([`crate::ledger::TableRow::Part`]), and goes to disk the same way.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::row_terms::RowTerms;
use super::{
    check, check_covers, check_currency, check_room, new_row, vacancy, Account, Ledger,
    LedgerError, PhaseResult, RecordMeta, Reply, Source, TransferState, TransferStatus,
};
use crate::model::event::{Event, Reason, TransferKey};
use crate::model::partition::partition_of;
use crate::model::transaction::{AccountEffect, Effects, Leg, Transaction};

/// A transaction as its home keeps it beside its row (the row's terms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionTerms {
    pub tx: Arc<Transaction>,
    /// The leg whose refusal rejected or cancelled it, if one did (a cancel for a Try that
    /// went unanswered names none).
    pub failed_leg: Option<u8>,
}

/// A participant's row of a transaction another partition is home of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRow {
    pub state: PartState,
    /// The transaction as its Try described it (`None` if refused before any Try).
    pub tx: Option<Arc<Transaction>>,
}

// The home's terms and a participant's part sit in maps beside their rows (see
// `row_terms`): 16 bytes each, whatever the ids (the transaction itself is shared, see
// `Transaction`). The bounds are those sizes, so a field that grows them fails the build.
const _: () = assert!(std::mem::size_of::<TransactionTerms>() <= 16);
const _: () = assert!(std::mem::size_of::<PartRow>() <= 16);

/// Where a participant's side of a transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartState {
    /// Tried: its nets are in `held` and `incoming`.
    Tried,
    /// Final: its nets moved.
    Confirmed,
    /// Final: its Try was undone.
    Cancelled,
    /// Final: refused at its Try (`failed_leg`), or cancelled before any Try.
    Refused {
        failed_leg: Option<u8>,
        reason: Reason,
    },
}

/// That `effect`'s net debit fits `account`'s available balance and its net credit fits
/// below the balance limit: the rules a Try or a local transaction was decided by.
fn check_fits(effect: &AccountEffect, account: &Account) -> Result<(), String> {
    check_covers(&effect.account, account, effect.net_debit())?;
    check_room(&effect.account, account, effect.net_credit())
}

/// The leg index as the log keeps it (a transaction has at most 64 legs).
fn leg_index(leg: usize) -> u8 {
    u8::try_from(leg).expect("at most LEGS_MAX legs")
}

impl Ledger {
    /// The legs of the transaction `key` this partition is home of, and the leg that
    /// failed: in memory, or read with its row from its chunk file.
    pub fn find_transaction(
        &self,
        key: &TransferKey,
    ) -> Result<Option<TransactionTerms>, LedgerError> {
        let terms = self.transfers.terms_of(key)?;
        Ok(terms.and_then(|terms| terms.transaction().cloned()))
    }

    /// [`Ledger::find_transaction`] for the coordinator's paths, whose transactions are in
    /// flight (so in memory), and for checks.
    ///
    /// # Panics
    /// If the row is on disk only and its chunk file cannot be read.
    pub fn transaction(&self, key: &TransferKey) -> Option<TransactionTerms> {
        self.find_transaction(key)
            .unwrap_or_else(|error| panic!("terms of transaction {key:?}: {error}"))
    }

    /// The terms of the transaction whose home row is at `at`, in memory, if it is one.
    fn transaction_at(&self, at: usize) -> Option<&TransactionTerms> {
        self.transfers.terms(at).and_then(RowTerms::transaction)
    }

    /// The transactions this partition is home of, in memory (every one not final), with
    /// the position of their rows, in log order.
    fn home_transactions(&self) -> impl Iterator<Item = (usize, &TransactionTerms)> + '_ {
        (self.transfers.hot_from()..self.transfers.len())
            .filter_map(|at| Some((at, self.transaction_at(at)?)))
    }

    /// This partition's row of the transaction `key` another partition is home of: in
    /// memory, or read from its chunk file.
    pub fn find_transaction_part(&self, key: &TransferKey) -> Result<Option<PartRow>, LedgerError> {
        Ok(self.transfers.part(key)?)
    }

    /// [`Ledger::find_transaction_part`] for checks and tests.
    ///
    /// # Panics
    /// If the row is on disk only and its chunk file cannot be read.
    pub fn transaction_part(&self, key: &TransferKey) -> Option<PartRow> {
        self.find_transaction_part(key)
            .unwrap_or_else(|error| panic!("part of transaction {key:?}: {error}"))
    }

    /// The transactions this partition is home of that are not over (trying or
    /// cancelling), with their states, sorted by key so that a rebuild is deterministic.
    pub fn unfinished_transactions(&self) -> Vec<(TransferState, Arc<Transaction>)> {
        let mut unfinished: Vec<_> = (self.home_transactions())
            .filter_map(|(at, terms)| {
                let state = self.transfers.phase(at).state;
                state.is_unfinished().then(|| (state, terms.tx.clone()))
            })
            .collect();
        unfinished.sort_by_key(|(_, tx)| tx.key());
        unfinished
    }

    /// The transactions another partition is home of whose Try this partition holds,
    /// neither confirmed nor cancelled yet, sorted by key.
    pub fn tried_transaction_parts(&self) -> Vec<Arc<Transaction>> {
        let mut tried: Vec<Arc<Transaction>> = (self.transfers.tried_parts())
            .map(|row| row.tx.clone().expect("a Try carries its transaction"))
            .collect();
        tried.sort_by_key(|tx| tx.key());
        tried
    }

    /// Whether this partition is the home of transactions under `key`.
    pub(super) fn is_home_of(&self, key: &TransferKey) -> bool {
        partition_of(&key.from, self.partitions) == self.partition
    }

    /// The phase of the home row of the transaction `key`, refused for `command` if the
    /// row under the key is a transfer's (or a hold's): its phases are not a transaction's.
    fn home_transaction_state(
        &self,
        key: &TransferKey,
        command: &'static str,
    ) -> Result<TransferState, LedgerError> {
        let (state, kind) = self.home_state_and_kind(key)?;
        if kind != super::row_terms::RowKind::Transaction {
            return Err(LedgerError::InvalidTransition {
                key: *key,
                from: format!("{state:?}, not a transaction"),
                command,
            });
        }
        Ok(state)
    }

    /// Why the transaction cannot be carried out on this partition's accounts: its first
    /// failing leg and the reason, or `None` if every net fits. An account's checks, in
    /// order: it exists (else its first leg fails), each of its legs is in its currency (else
    /// the first that is not), its net debit fits its available balance (else its first
    /// debiting leg), its net credit fits below the balance limit (else its first crediting
    /// leg). Of all failures, the one of the lowest leg.
    pub(crate) fn transaction_refusal(&self, tx: &Transaction) -> Option<(u8, Reason)> {
        let effects = tx.effects_on(self.partition, self.partitions);
        let mut first: Option<(usize, Reason)> = None;
        let mut fail = |leg: usize, reason: Reason| {
            if first.is_none_or(|(at, _)| leg < at) {
                first = Some((leg, reason));
            }
        };
        for effect in &effects.accounts {
            let debited_first = effect.first_debit == Some(effect.first_leg);
            let Some(account) = self.accounts.get(&effect.account) else {
                let reason = if debited_first {
                    Reason::SourceNotFound
                } else {
                    Reason::DestinationNotFound
                };
                fail(effect.first_leg, reason);
                continue;
            };
            let mismatch = tx.legs().enumerate().find_map(|(index, leg)| {
                let names = leg.from == effect.account || leg.to == effect.account;
                (names && leg.currency != account.currency).then_some((index, leg))
            });
            if let Some((index, leg)) = mismatch {
                let reason = if leg.from == effect.account {
                    Reason::SourceCurrencyMismatch
                } else {
                    Reason::DestinationCurrencyMismatch
                };
                fail(index, reason);
                continue;
            }
            if let Some(leg) = effect
                .first_debit
                .filter(|_| !account.covers(effect.net_debit()))
            {
                fail(leg, Reason::InsufficientFunds);
            }
            if let Some(leg) = effect
                .first_credit
                .filter(|_| !account.has_room_for(effect.net_credit()))
            {
                fail(leg, Reason::DestinationBalanceLimit);
            }
        }
        first.map(|(leg, reason)| (leg_index(leg), reason))
    }

    /// A client's transaction, or the retry of one, at its home: the first answer for the
    /// same legs, a conflict for other legs or for a transfer under the key.
    pub(crate) fn decide_transact(
        &self,
        tx: &Arc<Transaction>,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        let key = tx.key();
        self.require_local(&key.from)?;
        if let Some((row, terms)) = self.find_home(&key)? {
            return match terms.as_ref().and_then(RowTerms::transaction) {
                Some(terms) if terms.tx == *tx => Ok(Reply::Transfer(row.state.status())),
                _ => Err(LedgerError::Conflict(key.transaction_id)),
            };
        }
        if let Some((failed_leg, reason)) = self.transaction_refusal(tx) {
            events.push(Event::TransactionRejected {
                tx: tx.clone(),
                failed_leg: Some(failed_leg),
                reason,
            });
            return Ok(Reply::Transfer(TransferStatus::Rejected(reason)));
        }
        if tx.is_local(self.partitions) {
            events.push(Event::TransactionApplied { tx: tx.clone() });
            return Ok(Reply::Transfer(TransferStatus::Committed));
        }
        events.push(Event::TransactionTried { tx: tx.clone() });
        Ok(Reply::Transfer(TransferStatus::Pending))
    }

    /// A participant's Try (never the home's: its Try is the client's transaction): tried,
    /// or refused with its first failing leg; a repeat answers as the first.
    pub(crate) fn decide_try_transaction(
        &self,
        tx: &Arc<Transaction>,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        let key = tx.key();
        if self.is_home_of(&key) {
            return Err(LedgerError::InvalidTransition {
                key,
                from: "home".to_string(),
                command: "TryTransaction",
            });
        }
        let names_one_here = |leg: &Leg| self.owns(&leg.from) || self.owns(&leg.to);
        if !tx.legs().any(|leg| names_one_here(&leg)) {
            return Err(LedgerError::InvalidTransition {
                key,
                from: "no account of it here".to_string(),
                command: "TryTransaction",
            });
        }
        if let Some(row) = self.find_transaction_part(&key)? {
            if row.tx.as_ref().is_some_and(|tried| tried != tx) {
                // Other legs tried under this key: their home lost that transaction (its
                // Try leaves before its record is durable) and took these under the same
                // id. These can never be tried here (answering with the row would commit
                // them with the other legs' nets held here); the Cancel that follows this
                // failure undoes the orphan.
                return Ok(Reply::Phase(PhaseResult::TryFailed(
                    Reason::CancelledBeforeTry,
                )));
            }
            return Ok(Reply::Phase(part_answer(row.state)));
        }
        let (event, answer) = match self.transaction_refusal(tx) {
            Some((leg, reason)) => (
                Event::TransactionRefused {
                    key,
                    failed_leg: Some(leg),
                    reason,
                },
                PhaseResult::LegFailed { leg, reason },
            ),
            None => (
                Event::TransactionTried { tx: tx.clone() },
                PhaseResult::Tried,
            ),
        };
        events.push(event);
        Ok(Reply::Phase(answer))
    }

    /// The commit at the home (every participant tried: its own side is final at once), or
    /// a participant's Confirm. A repeat does nothing.
    pub(crate) fn decide_confirm_transaction(
        &self,
        key: &TransferKey,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        let invalid = |from: String| LedgerError::InvalidTransition {
            key: *key,
            from,
            command: "ConfirmTransaction",
        };
        if self.is_home_of(key) {
            return match self.home_transaction_state(key, "ConfirmTransaction")? {
                TransferState::Trying => {
                    events.push(Event::TransactionConfirmed { key: *key });
                    Ok(Reply::Done)
                }
                TransferState::Committed => Ok(Reply::Done),
                state => Err(invalid(format!("{state:?}"))),
            };
        }
        match self.find_transaction_part(key)?.map(|row| row.state) {
            Some(PartState::Tried) => {
                events.push(Event::TransactionConfirmed { key: *key });
                Ok(Reply::Phase(PhaseResult::Confirmed))
            }
            Some(PartState::Confirmed) => Ok(Reply::Phase(PhaseResult::Confirmed)),
            other => Err(invalid(format!("{other:?}"))),
        }
    }

    /// The home's decision to cancel a transaction it tried: a participant refused (leg
    /// `failed_leg`, `reason`) or never answered ([`Reason::Timeout`]). A repeat does nothing.
    pub(crate) fn decide_cancel_decision(
        &self,
        key: &TransferKey,
        failed_leg: Option<u8>,
        reason: Reason,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        match self.home_transaction_state(key, "DecideTransactionCancel")? {
            TransferState::Trying => {
                events.push(Event::TransactionCancelling {
                    key: *key,
                    failed_leg,
                    reason,
                });
                Ok(Reply::Done)
            }
            TransferState::Cancelling(_) | TransferState::Cancelled(_) => Ok(Reply::Done),
            state => Err(LedgerError::InvalidTransition {
                key: *key,
                from: format!("{state:?}"),
                command: "DecideTransactionCancel",
            }),
        }
    }

    /// A participant's Abort of `tx`: cancels only what never tried these legs. A Try of
    /// other legs under the key is an orphan whose home lost it (see
    /// [`Ledger::decide_try_transaction`]): cancelled, as the Abort of a transfer cancels a
    /// credit of another body.
    pub(crate) fn decide_abort_transaction(
        &self,
        tx: &Arc<Transaction>,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        let key = tx.key();
        if let Some(PartRow {
            state: PartState::Tried,
            tx: Some(tried),
        }) = self.find_transaction_part(&key)?
        {
            if tried != *tx && !known_bug!(TxConfirmOtherLegs) {
                events.push(Event::TransactionCancelled { key });
                return Ok(Reply::Phase(PhaseResult::Cancelled));
            }
        }
        self.decide_cancel_transaction(&key, true, events)
    }

    /// See [`crate::ledger::Command::AbandonTransaction`]: at the home, a transaction a
    /// participant tried but this partition has no row of is rejected for good.
    pub(crate) fn decide_abandon_transaction(
        &self,
        tx: &Arc<Transaction>,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        let key = tx.key();
        self.require_local(&key.from)?;
        if let Some(row) = self.find_transfer(&key)? {
            return Ok(Reply::Transfer(row.state.status()));
        }
        let reason = Reason::Timeout;
        events.push(Event::TransactionRejected {
            tx: tx.clone(),
            failed_leg: None,
            reason,
        });
        Ok(Reply::Transfer(TransferStatus::Rejected(reason)))
    }

    /// A participant's Cancel (`unless_tried`: an Abort, which cancels only what never
    /// tried), or, at the home, the end of a cancel every participant acknowledged (never
    /// an Abort: the home's Try is the transaction itself).
    pub(crate) fn decide_cancel_transaction(
        &self,
        key: &TransferKey,
        unless_tried: bool,
        events: &mut Vec<Event>,
    ) -> Result<Reply, LedgerError> {
        if self.is_home_of(key) && unless_tried {
            return Err(LedgerError::InvalidTransition {
                key: *key,
                from: "home".to_string(),
                command: "AbortTransaction",
            });
        }
        if self.is_home_of(key) {
            return match self.home_transaction_state(key, "CancelTransaction")? {
                TransferState::Cancelling(_) => {
                    events.push(Event::TransactionCancelled { key: *key });
                    Ok(Reply::Done)
                }
                TransferState::Cancelled(_) => Ok(Reply::Done),
                state => Err(LedgerError::InvalidTransition {
                    key: *key,
                    from: format!("{state:?}"),
                    command: "CancelTransaction",
                }),
            };
        }
        let answer = match self.find_transaction_part(key)?.map(|row| row.state) {
            None => {
                events.push(Event::TransactionRefused {
                    key: *key,
                    failed_leg: None,
                    reason: Reason::CancelledBeforeTry,
                });
                PhaseResult::TryFailed(Reason::CancelledBeforeTry)
            }
            Some(PartState::Tried) if unless_tried => PhaseResult::Tried,
            Some(PartState::Tried) => {
                events.push(Event::TransactionCancelled { key: *key });
                PhaseResult::Cancelled
            }
            Some(state) => part_answer(state),
        };
        Ok(Reply::Phase(answer))
    }

    /// Applies what [`Ledger::decide_transact`] and the participants' commands decided (or a
    /// log says): see the module docs. Checks everything before it changes anything.
    pub(crate) fn apply_transaction_event(
        &mut self,
        meta: RecordMeta,
        event: &Event,
        source: Source,
    ) -> Result<(), String> {
        match event {
            Event::TransactionApplied { tx } => self.apply_transaction_applied(meta, tx, source),
            Event::TransactionRejected {
                tx,
                failed_leg,
                reason,
            } => {
                let slot = vacancy(&mut self.transfers, &tx.key(), source)?;
                let state = TransferState::Rejected(*reason);
                let remote = !tx.is_local(self.partitions);
                let at = slot.fill(&new_row(meta, tx.first_leg(), state, remote));
                self.record_terms(at, tx, *failed_leg);
                Ok(())
            }
            Event::TransactionTried { tx } => self.apply_transaction_tried(meta, tx, source),
            Event::TransactionRefused {
                key,
                failed_leg,
                reason,
            } => {
                if self.is_home_of(key) {
                    return Err(format!("refusal of transaction {key:?} out of turn"));
                }
                let state = PartState::Refused {
                    failed_leg: *failed_leg,
                    reason: *reason,
                };
                self.record_part(key, PartRow { state, tx: None }, source)
                    .map_err(|_| format!("refusal of transaction {key:?} out of turn"))
            }
            Event::TransactionCancelling {
                key,
                failed_leg,
                reason,
            } => {
                let at = self.home_row(key).map_err(|e| format!("cancel: {e}"))?;
                let mut phase = self.transfers.phase(at);
                let terms = self.transfers.terms_mut(at);
                let (TransferState::Trying, Some(RowTerms::Transaction(terms))) =
                    (phase.state, terms)
                else {
                    return Err(format!("cancel of transaction {key:?} out of turn"));
                };
                terms.failed_leg = *failed_leg;
                phase.state = TransferState::Cancelling(*reason);
                phase.decided_at = meta.timestamp;
                self.transfers.set_phase(at, phase);
                Ok(())
            }
            Event::TransactionConfirmed { key } => self.finish_transaction(meta, key, true),
            Event::TransactionCancelled { key } => self.finish_transaction(meta, key, false),
            other => unreachable!("not a transaction's event: {other:?}"),
        }
    }

    /// Gives the home row at `at` the transaction's terms.
    fn record_terms(&mut self, at: usize, tx: &Arc<Transaction>, failed_leg: Option<u8>) {
        let terms = TransactionTerms {
            tx: tx.clone(),
            failed_leg,
        };
        self.transfers.set_terms(at, RowTerms::Transaction(terms));
    }

    /// That every account of `effects` exists, holds the currency of each of its legs, and
    /// passes `check`: what must hold before any account changes (a refused event changes
    /// nothing).
    fn check_nets(
        &self,
        effects: &Effects,
        tx: &Transaction,
        check: impl Fn(&AccountEffect, &Account) -> Result<(), String>,
    ) -> Result<(), String> {
        for effect in &effects.accounts {
            let account = self.accounts.get(&effect.account).ok_or_else(|| {
                let key = tx.key();
                format!(
                    "transaction {key:?} names unknown account {}",
                    effect.account
                )
            })?;
            for leg in tx.legs() {
                if leg.from == effect.account || leg.to == effect.account {
                    check_currency(&effect.account, account, leg.currency)?;
                }
            }
            check(effect, account)?;
        }
        Ok(())
    }

    /// Changes every account of `effects` by `change`; [`Ledger::check_nets`] passed.
    fn change_nets(&mut self, effects: &Effects, change: impl Fn(&AccountEffect, &mut Account)) {
        for effect in &effects.accounts {
            let account = self.accounts.get_mut(&effect.account).expect("checked");
            change(effect, account);
        }
    }

    fn apply_transaction_applied(
        &mut self,
        meta: RecordMeta,
        tx: &Arc<Transaction>,
        source: Source,
    ) -> Result<(), String> {
        if !tx.is_local(self.partitions) {
            return Err(format!(
                "transaction {:?} applied at once across partitions",
                tx.key()
            ));
        }
        let effects = tx.effects_on(self.partition, self.partitions);
        self.check_nets(&effects, tx, check_fits)?;
        let row = new_row(meta, tx.first_leg(), TransferState::Committed, false);
        let at = vacancy(&mut self.transfers, &tx.key(), source)?.fill(&row);
        self.change_nets(&effects, |e, a| {
            a.balance -= e.net_debit();
            a.balance += e.net_credit();
        });
        self.record_terms(at, tx, None);
        Ok(())
    }

    fn apply_transaction_tried(
        &mut self,
        meta: RecordMeta,
        tx: &Arc<Transaction>,
        source: Source,
    ) -> Result<(), String> {
        let key = tx.key();
        let home = self.is_home_of(&key);
        if tx.is_local(self.partitions) {
            return Err(format!("transaction {key:?} tried within one partition"));
        }
        let effects = tx.effects_on(self.partition, self.partitions);
        if effects.accounts.is_empty() {
            return Err(format!("transaction {key:?} tried where it has no account"));
        }
        self.check_nets(&effects, tx, check_fits)?;
        if home {
            let row = new_row(meta, tx.first_leg(), TransferState::Trying, true);
            let at = vacancy(&mut self.transfers, &key, source)?.fill(&row);
            self.record_terms(at, tx, None);
        } else {
            let row = PartRow {
                state: PartState::Tried,
                tx: Some(tx.clone()),
            };
            self.record_part(&key, row, source)?;
        }
        self.change_nets(&effects, |e, a| {
            a.balance -= e.net_debit();
            a.held += e.net_debit();
            a.incoming += e.net_credit();
        });
        Ok(())
    }

    /// A participant's side of `key` made final (`confirmed`) or undone; at the home, the
    /// commit or the end of the cancel.
    fn finish_transaction(
        &mut self,
        meta: RecordMeta,
        key: &TransferKey,
        confirmed: bool,
    ) -> Result<(), String> {
        let out_of_turn = || {
            let what = if confirmed { "confirm" } else { "cancel" };
            format!("{what} of transaction {key:?} out of turn")
        };
        let tx = if self.is_home_of(key) {
            let at = self.home_row(key).map_err(|e| format!("finish: {e}"))?;
            let phase = self.transfers.phase(at);
            let fits = match phase.state {
                TransferState::Trying => confirmed,
                TransferState::Cancelling(_) => !confirmed,
                _ => false,
            };
            let terms = self.transaction_at(at).filter(|_| fits);
            terms.ok_or_else(out_of_turn)?.tx.clone()
        } else {
            let at = self.transfers.find_part(key);
            let row = at.and_then(|at| self.transfers.part_at(at));
            let row = row.filter(|row| row.state == PartState::Tried);
            row.and_then(|row| row.tx.clone()).ok_or_else(out_of_turn)?
        };
        let effects = tx.effects_on(self.partition, self.partitions);
        self.check_nets(&effects, &tx, |e, a| {
            let present = a.held >= e.net_debit() && a.incoming >= e.net_credit();
            check(present, || {
                format!("the Try of transaction {key:?} is missing at {}", e.account)
            })
        })?;
        self.change_nets(&effects, |e, a| {
            a.held -= e.net_debit();
            a.incoming -= e.net_credit();
            if confirmed {
                a.balance += e.net_credit();
            } else {
                a.balance += e.net_debit();
            }
        });
        if confirmed {
            for effect in &effects.accounts {
                let currency = self.accounts.get(&effect.account).expect("moved").currency;
                let flows = self.flows.entry(currency).or_default();
                flows.sent += u128::from(effect.net_debit());
                flows.received += u128::from(effect.net_credit());
            }
        }
        if self.is_home_of(key) {
            let at = self.home_row(key).expect("found above");
            let mut phase = self.transfers.phase(at);
            phase.state = match phase.state {
                TransferState::Cancelling(reason) => TransferState::Cancelled(reason),
                _ => {
                    phase.decided_at = meta.timestamp;
                    TransferState::Committed
                }
            };
            phase.finished_at = meta.timestamp;
            self.transfers.set_phase(at, phase);
        } else {
            let at = self.transfers.find_part(key).expect("found above");
            let state = if confirmed {
                PartState::Confirmed
            } else {
                PartState::Cancelled
            };
            self.transfers.finish_part(at, state);
        }
        Ok(())
    }

    /// Gives their rows the transactions' terms that a snapshot of before version 10 kept
    /// in a table of their own. Every row is in memory then (such snapshots restore their
    /// chunks so).
    pub(crate) fn restore_separate_transaction_terms(
        &mut self,
        home: Vec<TransactionTerms>,
    ) -> Result<(), String> {
        for terms in home {
            let at = (self.transfers.find(&terms.tx.key()))
                .ok_or_else(|| format!("transaction {:?} without its row", terms.tx.key()))?;
            check_transaction_row(&self.transfers.row(at), &terms)?;
            (self.transfers).give_stored_terms(&terms.tx.key(), RowTerms::Transaction(terms))?;
        }
        Ok(())
    }

    /// Records this partition's part `row` of the transaction `key` (a Try here, or a
    /// refusal), refused if the key has a row already (in memory, or on disk when
    /// replaying a log: see `vacancy`).
    fn record_part(
        &mut self,
        key: &TransferKey,
        row: PartRow,
        source: super::Source,
    ) -> Result<(), String> {
        let check_disk =
            source == super::Source::Log || cfg!(any(test, madsim, feature = "testing"));
        let recorded = self.transfers.insert_part(key, row, check_disk);
        match recorded.map_err(|error| error.to_string())? {
            true => Ok(()),
            false => Err(format!("transaction {key:?}: its part recorded twice")),
        }
    }

    /// Gives this partition the parts that a snapshot of before version 10 kept in a table
    /// of their own, refusing one of a transaction this partition is home of. They are
    /// appended after the rows (positions are not in the log; a replay of the same log puts
    /// them where their records are, and tables are compared as maps).
    pub(crate) fn restore_separate_parts(
        &mut self,
        parts: Vec<(TransferKey, PartRow)>,
    ) -> Result<(), String> {
        for (key, row) in parts {
            if self.is_home_of(&key) {
                return Err(format!("participant row of transaction {key:?} cannot be"));
            }
            let tried = row.state == PartState::Tried;
            let stored = (
                super::TableRow::Part { key, tried },
                Some(RowTerms::Part(row)),
            );
            if !self
                .transfers
                .restore(Some(stored))
                .map_err(|e| e.to_string())?
            {
                return Err("a table holds a key twice".to_string());
            }
        }
        Ok(())
    }

    /// Minor units per account that the transactions' Tries hold here: the net debits of
    /// every Try not yet confirmed or undone (the home's while it tries or cancels).
    pub(crate) fn transactions_held(&self) -> BTreeMap<crate::model::ids::AccountId, u64> {
        let mut held = BTreeMap::new();
        for tx in self.open_transactions() {
            for effect in tx.effects_on(self.partition, self.partitions).accounts {
                *held.entry(effect.account).or_default() += effect.net_debit();
            }
        }
        held
    }

    /// The transactions whose Try here is neither confirmed nor undone.
    fn open_transactions(&self) -> impl Iterator<Item = &Arc<Transaction>> + '_ {
        let home_open = self.home_transactions().filter_map(|(at, terms)| {
            let state = self.transfers.phase(at).state;
            matches!(state, TransferState::Trying | TransferState::Cancelling(_))
                .then_some(&terms.tx)
        });
        let parts_open = self
            .transfers
            .tried_parts()
            .filter_map(|row| row.tx.as_ref());
        home_open.chain(parts_open)
    }

    /// Minor units per currency that the transactions' Tries count as `incoming` here: the
    /// net credits of every Try not yet confirmed or undone (the conservation check's).
    pub(crate) fn transactions_incoming(&self) -> BTreeMap<crate::model::money::Currency, u64> {
        let mut incoming = BTreeMap::new();
        for tx in self.open_transactions() {
            for effect in tx.effects_on(self.partition, self.partitions).accounts {
                if let Some(account) = self.accounts.get(&effect.account) {
                    *incoming.entry(account.currency).or_default() += effect.net_credit();
                }
            }
        }
        incoming
    }
}

/// That `terms` can be those of the home row `row`: the transaction recorded under its
/// first leg, failed (if it did) at a leg it has. What a reader of stored rows checks; that
/// the row is at home here is the row's own check.
pub(crate) fn check_transaction_row(
    row: &super::TransferRow,
    terms: &TransactionTerms,
) -> Result<(), String> {
    let key = terms.tx.key();
    if row.transfer != terms.tx.first_leg() {
        return Err(format!(
            "transaction {key:?} on a row that is not its first leg"
        ));
    }
    if terms
        .failed_leg
        .is_some_and(|leg| usize::from(leg) >= terms.tx.leg_count())
    {
        return Err(format!(
            "transaction {key:?} failed at a leg it does not have"
        ));
    }
    Ok(())
}

/// A participant's answer to a Try, Cancel or Abort of a transaction whose row is `state`.
fn part_answer(state: PartState) -> PhaseResult {
    match state {
        PartState::Tried => PhaseResult::Tried,
        PartState::Confirmed => PhaseResult::Confirmed,
        PartState::Cancelled => PhaseResult::Cancelled,
        PartState::Refused {
            failed_leg: Some(leg),
            reason,
        } => PhaseResult::LegFailed { leg, reason },
        PartState::Refused {
            failed_leg: None,
            reason,
        } => PhaseResult::TryFailed(reason),
    }
}
