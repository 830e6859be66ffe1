//! Times what a snapshot costs the partition's thread: taking the image of a ledger of
//! `--accounts N` accounts (default 1,000,000), then the first writes after it.
//!
//! `cargo run --release -p walletd-core --example snapshot_image -- --accounts 10000000`

use std::time::Instant;

use walletd_core::ledger::{Command, Ledger};
use walletd_core::log::snapshot::SnapshotImage;
use walletd_core::model::event::Event;
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let accounts: usize = args
        .iter()
        .position(|a| a == "--accounts")
        .and_then(|at| args.get(at + 1))
        .map_or(1_000_000, |n| n.parse().expect("--accounts takes a count"));
    let mut ledger = Ledger::new(0, 1);
    let mut events = Vec::new();
    for i in 0..accounts {
        let account = AccountId::new(&format!("acct-{i:09}")).expect("a valid id");
        let open = Command::OpenAccount {
            account,
            currency: Currency::USD,
        };
        events.clear();
        ledger.execute(&open, 1, &mut events).expect("opens");
    }
    let rounds = 5;
    let mut taken_us = Vec::new();
    let mut after_us = Vec::new();
    for round in 0..rounds {
        let started = Instant::now();
        let image = SnapshotImage::of(&ledger);
        taken_us.push(started.elapsed().as_micros());
        // The writes that follow a snapshot, while its image is still being encoded: one
        // deposit into every 100th account.
        let started = Instant::now();
        for i in (0..accounts).step_by(100) {
            let account = AccountId::new(&format!("acct-{i:09}")).expect("a valid id");
            let deposit = Command::Deposit {
                account,
                amount: Amount::from_minor(1).expect("an amount"),
                currency: Currency::USD,
                transaction_id: TransactionId::new(&format!("d-{round}-{i}")).expect("an id"),
            };
            events.clear();
            ledger.execute(&deposit, 2, &mut events).expect("deposits");
        }
        after_us.push(started.elapsed().as_micros());
        drop(image);
        let _: &[Event] = &events;
    }
    println!(
        "snapshot_image accounts={accounts} image_us={taken_us:?} deposits_after_us={after_us:?}"
    );
}
