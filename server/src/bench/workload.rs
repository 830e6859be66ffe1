//! The workload every mode (and every peer in `bench/peers.sh`) runs: K accounts funded
//! alike, then transfers between two accounts drawn uniformly at random, each with its own
//! transaction id, amounts drawn uniformly from a range. Insufficient funds are rejected.
//! The modes that compare where accounts live (`partitions`, `cluster`) draw the two accounts
//! from a [`Placed`] set instead, and fund them so that nothing is rejected.

use std::sync::Arc;

use walletd_core::model::event::Transfer;
use walletd_core::model::ids::{AccountId, TransactionId};
use walletd_core::model::money::{Amount, Currency};

use super::placement::Placed;

/// The currency of every benchmark account.
pub const CURRENCY: Currency = Currency::USD;
/// What each account is funded with, in minor units (1,000.00 USD).
pub const FUNDING_MINOR: u64 = 100_000;
/// What each account of a placed workload is funded with, in minor units (1,000,000,000.00
/// USD): more than a run moves out of it, so every transfer commits and the modes that
/// compare placements measure committing, not the cheaper rejections.
pub const FUNDING_UNSPENDABLE_MINOR: u64 = 100_000_000_000;
/// Largest transfer amount in minor units (100.00 USD); the smallest is 1 (0.01 USD).
pub const TRANSFER_MINOR_MAX: u64 = 10_000;
/// The transaction id of the deposit that funds an account. A fixed id makes funding
/// idempotent: benchmarking a server twice never funds an account twice.
pub const FUNDING_TRANSACTION_ID: &str = "bench-funding";

/// A small, fast generator (xorshift64*); the benchmark needs speed, not quality.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Any non-zero state works; mix the seed so that nearby seeds diverge at once.
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (the modulo bias is negligible for the ranges used here).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }
}

/// The prefix of every benchmark account id; the account's index follows in decimal.
const ACCOUNT_PREFIX: &str = "bench-";

/// The id of benchmark account `index`.
pub fn account_name(index: u64) -> String {
    let mut name = String::new();
    write_account_name(index, &mut name);
    name
}

/// Appends the id of benchmark account `index` (what [`account_name`] returns).
pub fn write_account_name(index: u64, out: &mut String) {
    out.push_str(ACCOUNT_PREFIX);
    push_decimal(index, out);
}

/// Appends `value` in decimal, exactly as `Display` writes it, without the formatting
/// machinery: ids and amounts are written for every transfer the benchmark sends, and every
/// cycle spent here is a cycle taken from the server on the same machine.
pub fn push_decimal(value: u64, out: &mut String) {
    out.push_str(itoa::Buffer::new().format(value));
}

/// The benchmark accounts and the draw of transfers between them.
#[derive(Debug, Clone)]
pub struct Workload {
    /// K: accounts opened and funded.
    pub accounts: u64,
    /// Distinguishes this run's transaction ids from any earlier run against the same server.
    pub run_tag: String,
    /// What each account is funded with, in minor units.
    pub funding_minor: u64,
    /// Where the accounts are, if they were picked partition by partition; `None`: they are
    /// `bench-0` to `bench-{K-1}`, drawn uniformly.
    placed: Option<Arc<Placed>>,
}

/// One transfer drawn by a client: the account indexes, the amount and a unique id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draw {
    pub from: u64,
    pub to: u64,
    pub amount_minor: u64,
    pub client: u64,
    pub sequence: u64,
}

impl Workload {
    pub fn new(accounts: u64, run_tag: String) -> Workload {
        assert!(accounts >= 2, "a transfer needs two accounts");
        Workload {
            accounts,
            run_tag,
            funding_minor: FUNDING_MINOR,
            placed: None,
        }
    }

    /// The accounts of `placed`, funded beyond what a run can spend.
    pub fn placed(placed: Placed, run_tag: String) -> Workload {
        Workload {
            accounts: placed.accounts(),
            run_tag,
            funding_minor: FUNDING_UNSPENDABLE_MINOR,
            placed: Some(Arc::new(placed)),
        }
    }

    /// The same accounts with transaction ids of their own (one per mode, so that two modes
    /// never reuse an id, which the ledger would refuse as a conflict).
    pub fn for_mode(&self, mode: &str) -> Workload {
        Workload {
            run_tag: format!("{}{mode}", self.run_tag),
            ..self.clone()
        }
    }

    /// The index of the `i`-th account (`bench-{index}` is its id), `i` in `0..accounts`.
    pub fn account_index(&self, i: u64) -> u64 {
        match &self.placed {
            Some(placed) => placed.index(i),
            None => i,
        }
    }

    /// Money the funded accounts hold in total, in minor units.
    pub fn funded_total_minor(&self) -> u128 {
        u128::from(self.accounts) * u128::from(self.funding_minor)
    }

    /// The next transfer of `client`, its `sequence`-th: two distinct random accounts.
    pub fn draw(&self, rng: &mut Rng, client: u64, sequence: u64) -> Draw {
        if let Some(placed) = &self.placed {
            let (from, to) = placed.draw(rng);
            return Draw {
                from,
                to,
                amount_minor: 1 + rng.below(TRANSFER_MINOR_MAX),
                client,
                sequence,
            };
        }
        let from = rng.below(self.accounts);
        // Uniform over the other K-1 accounts: `(from + 1 + r) % K`, where the sum is below
        // 2K, so one subtraction does the modulo without a division.
        let to = from + 1 + rng.below(self.accounts - 1);
        let to = if to >= self.accounts {
            to - self.accounts
        } else {
            to
        };
        Draw {
            from,
            to,
            amount_minor: 1 + rng.below(TRANSFER_MINOR_MAX),
            client,
            sequence,
        }
    }

    /// Appends the transaction id of a draw, `{run_tag}-{client}-{sequence}`: unique within
    /// the run and across runs.
    pub fn write_transaction_id(&self, draw: &Draw, out: &mut String) {
        out.push_str(&self.run_tag);
        out.push('-');
        push_decimal(draw.client, out);
        out.push('-');
        push_decimal(draw.sequence, out);
    }

    /// The core transfer of a draw (for the in-process engine); `scratch` is reused for the
    /// ids.
    ///
    /// The account ids are rebuilt from their names rather than read from a table of
    /// [`AccountId`]s: with K accounts that table is 65 bytes × K (6.5 MB for 100,000), and
    /// two random reads of it per transfer missed the cache so often that they cost more than
    /// all of the rest of the generator.
    pub fn transfer(&self, draw: &Draw, scratch: &mut String) -> Transfer {
        let account = |index: u64, scratch: &mut String| {
            scratch.clear();
            write_account_name(index, scratch);
            AccountId::new(scratch).expect("benchmark account ids are valid")
        };
        let (from, to) = (account(draw.from, scratch), account(draw.to, scratch));
        scratch.clear();
        self.write_transaction_id(draw, scratch);
        Transfer {
            transaction_id: TransactionId::new(scratch).expect("benchmark ids are valid"),
            from,
            to,
            amount: Amount::from_minor(draw.amount_minor).expect("amounts are in range"),
            currency: CURRENCY,
        }
    }
}

/// A run tag from the clock: short, and different for every run started a second apart.
pub fn run_tag() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("r{seconds:x}")
}

/// Formats minor units of [`CURRENCY`] as the API's decimal string (2 fraction digits).
pub fn format_amount(minor: u64, out: &mut String) {
    push_decimal(minor / 100, out);
    let cents = (minor % 100) as u8;
    out.push('.');
    out.push(char::from(b'0' + cents / 10));
    out.push(char::from(b'0' + cents % 10));
}

/// Parses a non-negative decimal balance with at most two fraction digits into minor units.
pub fn parse_balance(text: &str) -> Option<u64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || fraction.len() > 2 {
        return None;
    }
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let fraction: u64 = match fraction.len() {
        0 => 0,
        1 => fraction.parse::<u64>().ok()? * 10,
        _ => fraction.parse().ok()?,
    };
    whole.checked_mul(100)?.checked_add(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_two_distinct_accounts_in_range() {
        let workload = Workload::new(3, "t".into());
        let mut rng = Rng::new(7);
        for sequence in 0..1000 {
            let draw = workload.draw(&mut rng, 0, sequence);
            assert!(draw.from < 3 && draw.to < 3 && draw.from != draw.to);
            assert!((1..=TRANSFER_MINOR_MAX).contains(&draw.amount_minor));
        }
    }

    /// Values around every power of ten, and the extremes.
    fn decimal_edges() -> impl Iterator<Item = u64> {
        (0..=19u32)
            .flat_map(|power| {
                let p = 10u64.pow(power);
                [p - 1, p, p + 1]
            })
            .chain((0..100_000).step_by(7))
            .chain([u64::MAX - 1, u64::MAX])
    }

    #[test]
    fn decimals_are_written_as_display_writes_them() {
        let mut text = String::from("x");
        for value in decimal_edges().chain(0..10_000) {
            text.truncate(1);
            push_decimal(value, &mut text);
            assert_eq!(text, format!("x{value}"));
        }
    }

    /// The hand-written formatting produces exactly the text the `format!` versions did, so
    /// the ids, names and amounts the benchmark sends are unchanged.
    #[test]
    fn ids_names_and_amounts_are_unchanged() {
        let workload = Workload::new(10, "r6929f3a1engine".into());
        let mut text = String::new();
        for value in decimal_edges() {
            let draw = Draw {
                from: 0,
                to: 1,
                amount_minor: 1,
                client: value % 1000,
                sequence: value,
            };
            text.clear();
            workload.write_transaction_id(&draw, &mut text);
            assert_eq!(text, format!("r6929f3a1engine-{}-{value}", value % 1000));
            assert_eq!(account_name(value), format!("bench-{value}"));
            text.clear();
            format_amount(value, &mut text);
            assert_eq!(text, format!("{}.{:02}", value / 100, value % 100));
        }
    }

    /// The draws are those of `(from + 1 + r) % K`, the formula the division-free one replaced.
    #[test]
    fn draws_are_unchanged() {
        for accounts in [2, 3, 10, 100_000, 10_000_000] {
            let workload = Workload::new(accounts, "t".into());
            let (mut rng, mut reference) = (Rng::new(accounts), Rng::new(accounts));
            for sequence in 0..10_000 {
                let draw = workload.draw(&mut rng, 3, sequence);
                let from = reference.below(accounts);
                let to = ((u128::from(from) + 1 + u128::from(reference.below(accounts - 1)))
                    % u128::from(accounts)) as u64;
                let amount_minor = 1 + reference.below(TRANSFER_MINOR_MAX);
                assert_eq!(
                    (draw.from, draw.to, draw.amount_minor),
                    (from, to, amount_minor)
                );
            }
        }
    }

    #[test]
    fn transfers_name_the_accounts_of_their_draw() {
        let workload = Workload::new(1_000_000, "t".into());
        let mut rng = Rng::new(5);
        let mut scratch = String::new();
        for sequence in 0..1000 {
            let draw = workload.draw(&mut rng, 2, sequence);
            let transfer = workload.transfer(&draw, &mut scratch);
            let account = |i: u64| AccountId::new(&format!("bench-{i}")).unwrap();
            assert_eq!(transfer.from, account(draw.from));
            assert_eq!(transfer.to, account(draw.to));
            assert_eq!(transfer.transaction_id.as_str(), format!("t-2-{sequence}"));
            assert_eq!(transfer.amount.minor(), draw.amount_minor);
        }
    }

    #[test]
    fn amounts_round_trip_through_text() {
        for minor in [0, 1, 10, 99, 100, 12_345, FUNDING_MINOR] {
            let mut text = String::new();
            format_amount(minor, &mut text);
            assert_eq!(parse_balance(&text), Some(minor), "{text}");
        }
        assert_eq!(parse_balance("7"), Some(700));
        assert_eq!(parse_balance("7.5"), Some(750));
        for bad in ["", ".5", "1.234", "-1", "1e3", "1.x"] {
            assert_eq!(parse_balance(bad), None, "{bad}");
        }
    }
}
