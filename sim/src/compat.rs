//! TEMPORARY: replay and ledger comparison until core's `replay` module lands on main.
use std::collections::BTreeMap;

use walletd_core::codec::Record;
use walletd_core::ledger::{ApplyError, Ledger, RecordMeta};
use walletd_core::partition::PartitionId;

#[derive(Debug, Clone, Copy)]
pub enum AsOf {
    End,
}

pub fn replay<'a>(
    partition: PartitionId,
    partitions: u32,
    records: impl IntoIterator<Item = &'a Record>,
    _as_of: AsOf,
) -> Result<Ledger, ApplyError> {
    let mut ledger = Ledger::new(partition, partitions);
    for record in records {
        let meta = RecordMeta {
            lsn: record.lsn,
            timestamp: record.timestamp,
        };
        ledger.apply(meta, &record.event)?;
    }
    Ok(ledger)
}

pub fn state_difference(a: &Ledger, b: &Ledger) -> Option<String> {
    let accounts = |l: &Ledger| format!("{:?}", l.accounts().collect::<BTreeMap<_, _>>());
    let transfers = |l: &Ledger| {
        format!(
            "{:?}",
            l.transfers()
                .map(|r| (r.transfer.key(), *r))
                .collect::<BTreeMap<_, _>>()
        )
    };
    let credits = |l: &Ledger| format!("{:?}", l.credits().collect::<BTreeMap<_, _>>());
    if a.last_applied() != b.last_applied() {
        return Some(format!("last {:?} != {:?}", a.last_applied(), b.last_applied()));
    }
    if accounts(a) != accounts(b) {
        return Some("accounts differ".into());
    }
    if transfers(a) != transfers(b) {
        return Some("transfers differ".into());
    }
    if credits(a) != credits(b) {
        return Some("credits differ".into());
    }
    if a.flows() != b.flows() {
        return Some("flows differ".into());
    }
    None
}
