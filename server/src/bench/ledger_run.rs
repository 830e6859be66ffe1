//! The `ledger` mode: the pure ledger's ceiling. One partition's [`Ledger`] decides, applies
//! and encodes the workload's transfers in a tight loop on one core: no disk, no channels,
//! no tasks, in groups whose rows are prefetched first, as a partition executes a command
//! group. Every other mode adds something to this (logs and syncs, the runtime, HTTP, the
//! network); the gap between them is what those cost.

use std::time::{Duration, Instant};

use serde::Serialize;
use walletd_core::ledger::{Command, Ledger};
use walletd_core::log::codec::encode_event_record;
use walletd_core::model::event::Event;
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::Amount;

use super::args::BenchArgs;
use super::workload::{
    account_name, Rng, Workload, CURRENCY, FUNDING_TRANSACTION_ID, FUNDING_UNSPENDABLE_MINOR,
};
use super::BenchError;

/// Transfers drawn ahead of the timed loop at a time: the draw is the generator's cost, not
/// the ledger's, and drawing every transfer first would hold them all in memory at once.
const DRAWN_AHEAD: usize = 1 << 16;
/// Encoded records kept before the buffer is reused (a partition hands them to its log).
const ENCODED_BYTES_MAX: usize = 60 << 20;

/// What the `ledger` mode measured.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerReport {
    pub accounts: u64,
    pub transfers: u64,
    /// Transfers executed after one prefetch of their rows (1: no prefetch).
    pub group: u64,
    pub seconds: f64,
    pub ns_per_transfer: f64,
    pub transfers_per_second: f64,
}

impl LedgerReport {
    /// The result in words, then the machine-readable line:
    /// `ledger ns_per_transfer=N tps=M group=G`.
    pub fn lines(&self) -> (String, String) {
        let words = format!(
            "ledger: {} transfers in {:.2} s: {:.0} ns per transfer, {:.0} transfers/s on one core ({} accounts, groups of {})",
            self.transfers,
            self.seconds,
            self.ns_per_transfer,
            self.transfers_per_second,
            self.accounts,
            self.group
        );
        let line = format!(
            "ledger ns_per_transfer={:.0} tps={:.0} group={}",
            self.ns_per_transfer, self.transfers_per_second, self.group
        );
        (words, line)
    }
}

/// The stamp of every record: the ledger alone reads no clock.
const TIMESTAMP: u64 = 1;

/// A ledger on its own, encoding its records as a partition would.
struct Bench {
    ledger: Ledger,
    events: Vec<Event>,
    encoded: Vec<u8>,
}

impl Bench {
    fn execute(&mut self, command: &Command) -> Result<(), BenchError> {
        let first_lsn = self.ledger.last_applied().lsn + 1;
        self.events.clear();
        self.ledger
            .execute(command, TIMESTAMP, &mut self.events)
            .map_err(|e| BenchError::Engine(format!("the ledger refused {command:?}: {e}")))?;
        // Encoded from the borrowed event, as a partition encodes what it logs.
        for (lsn, event) in (first_lsn..).zip(&self.events) {
            encode_event_record(lsn, TIMESTAMP, event, &mut self.encoded);
        }
        if self.encoded.len() > ENCODED_BYTES_MAX {
            self.encoded.clear();
        }
        Ok(())
    }

    /// Opens and funds `accounts` accounts (not timed).
    fn open_accounts(&mut self, accounts: u64) -> Result<(), BenchError> {
        let amount = Amount::from_minor(FUNDING_UNSPENDABLE_MINOR).expect("a valid amount");
        let transaction_id = TransactionId::new(FUNDING_TRANSACTION_ID).expect("a valid id");
        for index in 0..accounts {
            let account = AccountId::new(&account_name(index)).expect("a valid id");
            let currency = CURRENCY;
            self.execute(&Command::OpenAccount { account, currency })?;
            self.execute(&Command::Deposit {
                account,
                amount,
                currency,
                transaction_id,
            })?;
        }
        Ok(())
    }

    /// Executes `commands` in groups of `group`, each after a prefetch of its rows; returns
    /// the time it took.
    fn execute_groups(
        &mut self,
        commands: &[Command],
        group: usize,
    ) -> Result<Duration, BenchError> {
        let started = Instant::now();
        for chunk in commands.chunks(group) {
            if group > 1 {
                self.ledger.prefetch(chunk);
            }
            for command in chunk {
                self.execute(command)?;
            }
        }
        Ok(started.elapsed())
    }
}

/// Runs the `ledger` mode on one partition of one.
pub fn run(args: &BenchArgs, run_tag: &str) -> Result<LedgerReport, BenchError> {
    let workload = Workload::new(args.accounts, format!("{run_tag}ledger"));
    let mut bench = Bench {
        ledger: Ledger::new(0, 1),
        events: Vec::new(),
        encoded: Vec::with_capacity(ENCODED_BYTES_MAX + (1 << 20)),
    };
    eprintln!("ledger: opening and funding {} accounts", args.accounts);
    bench.open_accounts(args.accounts)?;
    // Whole groups are drawn ahead, so that every group but the last is full.
    let group = args.ledger_group as usize;
    let ahead = DRAWN_AHEAD.div_ceil(group) * group;
    let (mut rng, mut scratch) = (Rng::new(args.seed), String::new());
    let (mut commands, mut elapsed, mut sequence) = (Vec::with_capacity(ahead), Duration::ZERO, 0);
    eprintln!(
        "ledger: {} transfers, groups of {group}",
        args.ledger_transfers
    );
    while sequence < args.ledger_transfers {
        commands.clear();
        while commands.len() < ahead && sequence < args.ledger_transfers {
            let draw = workload.draw(&mut rng, 0, sequence);
            commands.push(Command::Transfer(workload.transfer(&draw, &mut scratch)));
            sequence += 1;
        }
        elapsed += bench.execute_groups(&commands, group)?;
    }
    let seconds = elapsed.as_secs_f64();
    Ok(LedgerReport {
        accounts: args.accounts,
        transfers: args.ledger_transfers,
        group: args.ledger_group,
        seconds,
        ns_per_transfer: seconds * 1e9 / args.ledger_transfers as f64,
        transfers_per_second: args.ledger_transfers as f64 / seconds,
    })
}
