//! The pure ledger's ceiling: decide + apply + encode of same-partition transfers in a tight
//! loop on one core, no I/O, no channels, in groups whose rows are prefetched first as a
//! partition does. `cargo run --release -p walletd-core --example bench_ledger [GROUP_LEN]`

use std::time::Instant;

use walletd_core::ledger::{Command, Ledger};
use walletd_core::log::codec::{encode_record, Record};
use walletd_core::model::event::Transfer;
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency};

fn main() {
    // Commands executed after one prefetch of their rows, as a partition executes a group
    // (1: one at a time, no prefetch).
    let group_len: usize = std::env::args().nth(1).map_or(256, |arg| {
        arg.parse().expect("usage: bench_ledger [GROUP_LEN]")
    });
    let accounts: Vec<AccountId> = (0..100_000)
        .map(|i| AccountId::new(&format!("acct-{i}")).unwrap())
        .collect();
    let mut ledger = Ledger::new(0, 1);
    let mut events = Vec::new();
    let timestamp = 1;
    for &account in &accounts {
        ledger
            .execute(
                &Command::OpenAccount {
                    account,
                    currency: Currency::USD,
                },
                timestamp,
                &mut events,
            )
            .unwrap();
        let funds = Command::Deposit {
            account,
            amount: Amount::from_minor(1 << 40).unwrap(),
            currency: Currency::USD,
            transaction_id: TransactionId::new("f").unwrap(),
        };
        ledger.execute(&funds, timestamp, &mut events).unwrap();
    }
    let ids: Vec<TransactionId> = (0..2_000_000)
        .map(|i| TransactionId::new(&format!("t-{i}")).unwrap())
        .collect();
    let mut out = Vec::with_capacity(64 << 20);
    let mut x: u64 = 88172645463325252;
    let commands: Vec<Command> = ids
        .iter()
        .enumerate()
        .filter_map(|(i, &transaction_id)| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let from = accounts[(x % 100_000) as usize];
            let to = accounts[((x >> 20) % 100_000) as usize];
            (from != to).then(|| {
                Command::Transfer(Transfer {
                    transaction_id,
                    from,
                    to,
                    amount: Amount::from_minor(1 + i as u64 % 1000).unwrap(),
                    currency: Currency::USD,
                })
            })
        })
        .collect();
    let started = Instant::now();
    for group in commands.chunks(group_len) {
        if group_len > 1 {
            ledger.prefetch(group.iter());
        }
        for command in group {
            events.clear();
            let first_lsn = ledger.last_applied().lsn + 1;
            ledger.execute(command, timestamp, &mut events).unwrap();
            for (lsn, event) in (first_lsn..).zip(&events) {
                encode_record(
                    &Record {
                        lsn,
                        timestamp,
                        event: *event,
                    },
                    &mut out,
                );
            }
            if out.len() > 60 << 20 {
                out.clear();
            }
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{} transfers in {:?}: {:.0} ns per transfer, {:.0} transfers/s on one core",
        commands.len(),
        elapsed,
        elapsed.as_nanos() as f64 / commands.len() as f64,
        commands.len() as f64 / elapsed.as_secs_f64()
    );
}
