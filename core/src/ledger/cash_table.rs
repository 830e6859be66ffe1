//! The cash table: the idempotency record of every deposit and withdrawal, keyed by the
//! account and the request's transaction id, in the order the log recorded them.
//!
//! A row is never removed or changed: a retry of a deposit a year later gets the first answer.
//! Rows are packed ([`crate::ledger::keyed_table`]): 32 bytes with the ids' own bytes in an
//! arena and an 8-byte index slot, where a `(key, row)` pair of inline ids took 160.

use crate::ledger::keyed_table::{KeyedRows, KeyedTable, RowIds};
use crate::ledger::CashRow;
use crate::model::event::{CashKind, CashRefusal};
use crate::model::ids::{AccountId, TransactionId};
use crate::model::money::Amount;

/// A [`CashRow`] as the table keeps it, packed to 4-byte alignment: at 8 its padding would
/// make a row 40 bytes, not 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(4))]
struct CashPayload {
    amount: Amount,
    balance_after: u64,
    kind: CashKind,
    refused: Option<CashRefusal>,
}

const _: () = assert!(crate::ledger::keyed_table::row_size::<CashPayload>() <= 32);

impl From<CashRow> for CashPayload {
    fn from(row: CashRow) -> Self {
        CashPayload {
            amount: row.amount,
            balance_after: row.balance_after,
            kind: row.kind,
            refused: row.refused,
        }
    }
}

impl From<CashPayload> for CashRow {
    fn from(payload: CashPayload) -> Self {
        CashRow {
            kind: payload.kind,
            amount: payload.amount,
            balance_after: payload.balance_after,
            refused: payload.refused,
        }
    }
}

type CashKey = (AccountId, TransactionId);

fn cash_row(ids: RowIds<'_>, payload: CashPayload) -> (CashKey, CashRow) {
    ((ids.account(), ids.transaction_id()), payload.into())
}

/// The rows and their ids, without the index: what a snapshot image keeps.
#[derive(Clone, Default)]
pub(crate) struct CashRows(KeyedRows<CashPayload>);

impl CashRows {
    /// Every row with its key, in the order they were added.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = (CashKey, CashRow)> + '_ {
        self.0.iter().map(|(ids, payload)| cash_row(ids, *payload))
    }
}

/// See the module documentation.
#[derive(Clone, Default)]
pub(crate) struct CashTable(KeyedTable<CashPayload>);

impl CashTable {
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The record of `account`'s request `transaction_id`, if it has one.
    pub(crate) fn get(
        &self,
        account: &AccountId,
        transaction_id: &TransactionId,
    ) -> Option<CashRow> {
        let at = self.0.find(account, transaction_id)?;
        Some((*self.0.payload(at)).into())
    }

    /// Adds `row` as the record of `account`'s request `transaction_id`; false, adding
    /// nothing, when that request already has one.
    pub(crate) fn insert(
        &mut self,
        account: &AccountId,
        transaction_id: &TransactionId,
        row: CashRow,
    ) -> bool {
        self.0.insert(account, transaction_id, row.into())
    }

    /// Every row with its key, in the order they were added.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = (CashKey, CashRow)> + '_ {
        self.0.iter().map(|(ids, payload)| cash_row(ids, *payload))
    }

    /// The rows as they are now, for a snapshot image (see [`KeyedTable::freeze`]).
    pub(crate) fn freeze(&self) -> CashRows {
        CashRows(self.0.freeze())
    }
}

/// Equal when they hold the same rows, in whatever order they were added.
impl PartialEq for CashTable {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && (self.iter()).all(|((account, id), row)| other.get(&account, &id) == Some(row))
    }
}

impl std::fmt::Debug for CashTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Panics on a key given twice: decoders check that first and refuse such input.
impl FromIterator<(CashKey, CashRow)> for CashTable {
    fn from_iter<I: IntoIterator<Item = (CashKey, CashRow)>>(rows: I) -> Self {
        let mut table = CashTable::default();
        for ((account, id), row) in rows {
            assert!(table.insert(&account, &id, row), "a key given twice");
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::money::Currency;

    #[test]
    fn a_record_reads_back_as_it_was_written_and_is_written_once() {
        let rows: Vec<(CashKey, CashRow)> = (0..40u64)
            .map(|i| {
                let key = (
                    AccountId::new(&format!("acct-{i}")).unwrap(),
                    TransactionId::new(&format!("dep-{}", "x".repeat(i as usize))).unwrap(),
                );
                let refused = match i % 4 {
                    0 => None,
                    1 => Some(CashRefusal::InsufficientFunds),
                    2 => Some(CashRefusal::CurrencyMismatch(Currency::ALL[2])),
                    _ => Some(CashRefusal::AccountNotFound),
                };
                let kind = if i % 2 == 0 {
                    CashKind::Deposit
                } else {
                    CashKind::Withdrawal
                };
                let row = CashRow {
                    kind,
                    amount: Amount::from_minor(i + 1).unwrap(),
                    balance_after: i * 1_000,
                    refused,
                };
                (key, row)
            })
            .collect();
        let table: CashTable = rows.iter().copied().collect();
        assert_eq!(table.iter().collect::<Vec<_>>(), rows);
        let ((account, id), row) = rows[9];
        assert_eq!(table.get(&account, &id), Some(row));
        let mut more = table.clone();
        assert!(
            !more.insert(&account, &id, rows[3].1),
            "a request is recorded once"
        );
        assert_eq!(more, table);
        let reversed: CashTable = rows.iter().rev().copied().collect();
        assert_eq!(reversed, table, "equal whatever the order rows came in");
        assert_eq!(table.freeze().iter().collect::<Vec<_>>(), rows);
    }
}
