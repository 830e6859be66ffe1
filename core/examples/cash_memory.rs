//! Measures what the record of a deposit costs in resident memory: the ledger of one
//! partition alone (no log, no server), `--deposits N` deposits (default 2,000,000) of one
//! minor unit each among 1,000 accounts, every one under its own transaction id. Each keeps
//! its idempotency record in the cash table for good, so the growth of resident memory
//! divided by the deposits is that record's cost (Linux: `/proc/self/statm`).
//!
//! `cargo run --release -p walletd-core --example cash_memory -- --deposits 2000000`

use walletd_core::ledger::{Command, Ledger};
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency};

/// Resident memory of this process, in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc/self/statm");
    let pages: u64 = (statm.split_whitespace().nth(1))
        .and_then(|field| field.parse().ok())
        .expect("statm's second field: resident pages");
    pages * 4096
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let deposits: u64 = args
        .iter()
        .position(|a| a == "--deposits")
        .and_then(|at| args.get(at + 1))
        .map_or(2_000_000, |n| n.parse().expect("--deposits takes a count"));
    let mut ledger = Ledger::new(0, 1);
    let mut events = Vec::new();
    let accounts: Vec<AccountId> = (0..1000)
        .map(|i| AccountId::new(&format!("acct-{i:06}")).expect("a valid id"))
        .collect();
    for &account in &accounts {
        let currency = Currency::USD;
        let open = Command::OpenAccount { account, currency };
        ledger.execute(&open, 1, &mut events).expect("opened");
    }
    let before = resident_bytes();
    for i in 0..deposits {
        let deposit = Command::Deposit {
            account: accounts[(i % 1000) as usize],
            amount: Amount::from_minor(1).expect("a valid amount"),
            currency: Currency::USD,
            transaction_id: TransactionId::new(&format!("dep-{i:010}")).expect("a valid id"),
        };
        events.clear();
        ledger.execute(&deposit, 1, &mut events).expect("deposited");
        if (i + 1) % 500_000 == 0 {
            eprintln!("  cash_memory: {} of {deposits} deposits", i + 1);
        }
    }
    let grown = resident_bytes().saturating_sub(before);
    println!(
        "cash_memory deposits={deposits} rss_growth_mb={} bytes_per_deposit={:.1}",
        grown >> 20,
        grown as f64 / deposits.max(1) as f64
    );
}
