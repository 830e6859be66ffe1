//! Money: ISO 4217 currencies and amounts as integer counts of minor units.
//!
//! Amounts cross the API as decimal strings (`"12.34"`) and are parsed strictly: an amount is
//! either `0` or digits without a leading zero, optionally followed by `.` and between one and
//! `minor_units` fraction digits. No sign, no exponent, no whitespace, no leading or trailing
//! dot. Inside, an amount is a `u64` count of minor units, never a float.

use std::fmt;
use std::num::NonZeroU64;

/// Largest amount a single operation may move, in minor units (10^15: ten trillion dollars in
/// cents). Bounding single amounts keeps every sum of a bounded number of them far from `u64`
/// overflow and catches fat-fingered requests.
pub const AMOUNT_MINOR_MAX: u64 = 1_000_000_000_000_000;

/// Largest balance an account may hold, in minor units. Deposits and credits that would pass
/// it are rejected, so balance arithmetic can never overflow.
pub const BALANCE_MINOR_MAX: u64 = 1_000_000_000_000_000_000;

/// Longest amount string accepted before any parsing work is done.
pub const AMOUNT_TEXT_LEN_MAX: usize = 32;

macro_rules! currencies {
    ($($name:ident = $numeric:literal, $minor:literal;)*) => {
        /// An ISO 4217 currency that walletd knows the minor units of.
        ///
        /// The log stores a currency by its ISO numeric code, which never changes, so adding
        /// currencies here never breaks old logs.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[allow(clippy::upper_case_acronyms)]
        pub enum Currency { $($name,)* }

        impl Currency {
            /// Every supported currency, in declaration order.
            pub const ALL: &'static [Currency] = &[$(Currency::$name,)*];

            /// The three-letter ISO code, e.g. `"USD"`.
            pub fn code(self) -> &'static str {
                match self { $(Currency::$name => stringify!($name),)* }
            }

            /// The ISO numeric code, e.g. 840 for USD; this is what the log stores.
            pub fn numeric(self) -> u16 {
                match self { $(Currency::$name => $numeric,)* }
            }

            /// Digits after the decimal point (JPY 0, USD 2, KWD 3).
            pub fn minor_units(self) -> u32 {
                match self { $(Currency::$name => $minor,)* }
            }

            /// Looks a currency up by its ISO numeric code.
            pub fn from_numeric(numeric: u16) -> Option<Currency> {
                match numeric { $($numeric => Some(Currency::$name),)* _ => None }
            }

            /// Parses an upper-case three-letter ISO code.
            pub fn from_code(code: &str) -> Result<Currency, MoneyError> {
                match code {
                    $(stringify!($name) => Ok(Currency::$name),)*
                    _ => Err(MoneyError::UnknownCurrency(code.chars().take(8).collect())),
                }
            }
        }
    };
}

currencies! {
    USD = 840, 2; EUR = 978, 2; GBP = 826, 2; JPY = 392, 0; KRW = 410, 0; KWD = 414, 3;
    CHF = 756, 2; CNY = 156, 2; CAD = 124, 2; AUD = 36, 2; NZD = 554, 2; SEK = 752, 2;
    NOK = 578, 2; DKK = 208, 2; PLN = 985, 2; CZK = 203, 2; HKD = 344, 2; SGD = 702, 2;
    INR = 356, 2; MXN = 484, 2; BRL = 986, 2; ZAR = 710, 2; TRY = 949, 2; ILS = 376, 2;
    THB = 764, 2; BHD = 48, 3; JOD = 400, 3; OMR = 512, 3; TND = 788, 3; CLP = 152, 0;
    ISK = 352, 0; VND = 704, 0;
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Why an amount or currency was refused. Messages are meant for API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unknown currency {0:?}: expected an ISO 4217 code such as USD")]
    UnknownCurrency(String),
    #[error("amount is empty")]
    Empty,
    #[error("amount is longer than {AMOUNT_TEXT_LEN_MAX} characters")]
    TooLong,
    #[error("amount {0:?} is not a plain decimal number (digits, optionally one '.' and fraction digits; no sign, exponent or spaces)")]
    Malformed(String),
    #[error("amount {0:?} has a leading zero")]
    LeadingZero(String),
    #[error(
        "amount {amount:?} has more than {allowed} fraction digits, the most {currency} allows"
    )]
    TooManyFractionDigits {
        amount: String,
        currency: Currency,
        allowed: u32,
    },
    #[error("amount must be greater than zero")]
    Zero,
    #[error("amount exceeds the maximum of {max} {currency}")]
    TooLarge { currency: Currency, max: String },
}

/// A positive amount of money in minor units of some currency (the currency travels beside it).
/// Never zero, which lets an `Option<Amount>` take no more room than an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Amount(NonZeroU64);

impl Amount {
    /// Wraps a count of minor units; `None` for zero or above [`AMOUNT_MINOR_MAX`].
    pub const fn from_minor(minor: u64) -> Option<Amount> {
        match NonZeroU64::new(minor) {
            Some(minor) if minor.get() <= AMOUNT_MINOR_MAX => Some(Amount(minor)),
            _ => None,
        }
    }

    /// The count of minor units (always `1..=AMOUNT_MINOR_MAX`).
    pub fn minor(self) -> u64 {
        self.0.get()
    }

    /// Parses a decimal string strictly for `currency`; see the module docs for the grammar.
    /// The same as [`WrittenAmount::parse`] then [`WrittenAmount::in_currency`].
    pub fn parse(text: &str, currency: Currency) -> Result<Amount, MoneyError> {
        WrittenAmount::parse(text)?.in_currency(currency)
    }

    /// Formats with exactly the currency's number of fraction digits (`"12.30"`, `"500"`).
    pub fn format(self, currency: Currency) -> String {
        format_minor(self.minor(), currency)
    }
}

/// An amount as a client wrote it, before the currency that says how many fraction digits it
/// may have is known: its digits, and how many of them follow the point.
///
/// A capture names its hold, not its currency, so the API can check only the grammar of its
/// amount; the hold's partition finishes the parse ([`WrittenAmount::in_currency`]) in the
/// same step that decides the capture, rather than the API asking the hold's currency
/// first, a round trip more. [`Amount::parse`] is `parse` then `in_currency`, so an amount
/// is refused alike, with the same error, on either path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WrittenAmount {
    /// The digits without the point (at most [`AMOUNT_TEXT_LEN_MAX`] of them: they fit).
    digits: u128,
    /// How many of the digits are fraction digits.
    scale: u8,
}

impl WrittenAmount {
    /// Checks the grammar of the module docs (everything but the currency's fraction digits
    /// and the bounds, which [`WrittenAmount::in_currency`] checks).
    pub fn parse(text: &str) -> Result<WrittenAmount, MoneyError> {
        if text.is_empty() {
            return Err(MoneyError::Empty);
        }
        if text.len() > AMOUNT_TEXT_LEN_MAX {
            return Err(MoneyError::TooLong);
        }
        let (whole, fraction) = match text.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (text, None),
        };
        let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits_only(whole) || !fraction.is_none_or(digits_only) {
            return Err(MoneyError::Malformed(text.to_string()));
        }
        if whole.len() > 1 && whole.starts_with('0') {
            return Err(MoneyError::LeadingZero(text.to_string()));
        }
        let fraction = fraction.unwrap_or("");
        // At most 32 digits in all, and 10^32 < 2^128: no overflow.
        let digits = (whole.bytes().chain(fraction.bytes()))
            .fold(0u128, |digits, b| digits * 10 + u128::from(b - b'0'));
        Ok(WrittenAmount {
            digits,
            scale: fraction.len() as u8,
        })
    }

    /// `amount` of `currency`, written with all its fraction digits.
    pub fn of(amount: Amount, currency: Currency) -> WrittenAmount {
        WrittenAmount {
            digits: u128::from(amount.minor()),
            scale: currency.minor_units() as u8,
        }
    }

    /// A written amount from its parts, as a peer sent them: any values, which
    /// [`WrittenAmount::in_currency`] refuses unless they make an amount.
    pub fn from_parts(digits: u128, scale: u8) -> WrittenAmount {
        WrittenAmount { digits, scale }
    }

    /// The digits without the point.
    pub fn digits(self) -> u128 {
        self.digits
    }

    /// How many of the digits are fraction digits.
    pub fn scale(self) -> u8 {
        self.scale
    }

    /// The amount in `currency`: refused if it has more fraction digits than the currency
    /// allows, is zero, or passes [`AMOUNT_MINOR_MAX`].
    pub fn in_currency(self, currency: Currency) -> Result<Amount, MoneyError> {
        let allowed = currency.minor_units();
        if u32::from(self.scale) > allowed {
            return Err(MoneyError::TooManyFractionDigits {
                amount: self.to_string(),
                currency,
                allowed,
            });
        }
        let too_large = || MoneyError::TooLarge {
            currency,
            max: format_minor(AMOUNT_MINOR_MAX, currency),
        };
        let minor = 10u128
            .checked_pow(allowed - u32::from(self.scale))
            .and_then(|pad| self.digits.checked_mul(pad))
            .ok_or_else(too_large)?;
        if minor == 0 {
            return Err(MoneyError::Zero);
        }
        let minor = u64::try_from(minor).map_err(|_| too_large())?;
        Amount::from_minor(minor).ok_or_else(too_large)
    }
}

/// As written: `"12.30"` stays `"12.30"`.
impl fmt::Display for WrittenAmount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scale == 0 {
            return write!(f, "{}", self.digits);
        }
        match 10u128.checked_pow(u32::from(self.scale)) {
            Some(unit) => write!(
                f,
                "{}.{:0width$}",
                self.digits / unit,
                self.digits % unit,
                width = usize::from(self.scale)
            ),
            // Only a peer's nonsense has a scale this long; say what it sent.
            None => write!(f, "{}e-{}", self.digits, self.scale),
        }
    }
}

/// Formats any count of minor units (a balance, which may be zero) as a decimal string.
pub fn format_minor(minor: u64, currency: Currency) -> String {
    let units = currency.minor_units();
    if units == 0 {
        return minor.to_string();
    }
    let scale = 10u64.pow(units);
    format!(
        "{}.{:0width$}",
        minor / scale,
        minor % scale,
        width = units as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(text: &str) -> Result<u64, MoneyError> {
        Amount::parse(text, Currency::USD).map(Amount::minor)
    }

    #[test]
    fn parses_plain_decimals_into_minor_units() {
        assert_eq!(usd("12.34"), Ok(1234));
        assert_eq!(usd("12.3"), Ok(1230));
        assert_eq!(usd("12"), Ok(1200));
        assert_eq!(usd("0.01"), Ok(1));
        assert_eq!(
            Amount::parse("500", Currency::JPY).map(Amount::minor),
            Ok(500)
        );
        assert_eq!(
            Amount::parse("1.234", Currency::KWD).map(Amount::minor),
            Ok(1234)
        );
        assert_eq!(Amount::parse("7", Currency::KRW).map(Amount::minor), Ok(7));
    }

    #[test]
    fn rejects_everything_that_is_not_a_plain_positive_decimal() {
        for bad in [
            "-1", "+1", "1e3", "1E3", " 1", "1 ", "1.", ".5", "1.2.3", "1,00", "abc", "١",
        ] {
            assert!(
                matches!(usd(bad), Err(MoneyError::Malformed(_))),
                "{bad:?} gave {:?}",
                usd(bad)
            );
        }
        assert_eq!(usd(""), Err(MoneyError::Empty));
        assert!(matches!(usd("01.00"), Err(MoneyError::LeadingZero(_))));
        assert_eq!(usd("0"), Err(MoneyError::Zero));
        assert_eq!(usd("0.00"), Err(MoneyError::Zero));
        assert!(matches!(
            usd("1.234"),
            Err(MoneyError::TooManyFractionDigits { allowed: 2, .. })
        ));
        assert!(matches!(
            Amount::parse("1.0", Currency::JPY),
            Err(MoneyError::TooManyFractionDigits { allowed: 0, .. })
        ));
        assert_eq!(usd(&"9".repeat(33)), Err(MoneyError::TooLong));
    }

    #[test]
    fn rejects_amounts_above_the_bound_and_u64_overflow() {
        let max = format_minor(AMOUNT_MINOR_MAX, Currency::USD);
        assert_eq!(usd(&max), Ok(AMOUNT_MINOR_MAX));
        assert!(matches!(
            usd("10000000000000.01"),
            Err(MoneyError::TooLarge { .. })
        ));
        assert!(matches!(
            usd("99999999999999999999"),
            Err(MoneyError::TooLarge { .. })
        ));
        assert!(matches!(
            usd(&"9".repeat(32)),
            Err(MoneyError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_written_amount_keeps_what_the_client_wrote() {
        for text in [
            "12.30",
            "0.05",
            "7",
            "100.1",
            "0",
            "0.000",
            "99999999999999999999",
        ] {
            assert_eq!(WrittenAmount::parse(text).unwrap().to_string(), text);
        }
        // The refusal quotes the amount as written, trailing zeros and all.
        assert_eq!(
            Amount::parse("1.230", Currency::USD),
            Err(MoneyError::TooManyFractionDigits {
                amount: "1.230".into(),
                currency: Currency::USD,
                allowed: 2
            })
        );
        // One currency's amount read in another is refused or scaled, never wrapped.
        let amount = Amount::from_minor(1234).unwrap();
        let kwd = WrittenAmount::of(amount, Currency::KWD);
        assert!(kwd.in_currency(Currency::USD).is_err());
        assert_eq!(kwd.in_currency(Currency::BHD), Ok(amount));
        // What a hostile peer could send: refused, never a panic or a wrapped number.
        for (digits, scale) in [(u128::MAX, 0), (u128::MAX, 255), (1, 200), (0, 0)] {
            let written = WrittenAmount::from_parts(digits, scale);
            assert!(written.in_currency(Currency::KWD).is_err(), "{written}");
        }
    }

    proptest::proptest! {
        /// An amount written with all its currency's digits reads back as itself, and
        /// reads as its formatted text does.
        #[test]
        fn every_amount_written_in_its_currency_reads_back(
            minor in 1..=AMOUNT_MINOR_MAX,
            currency in proptest::sample::select(Currency::ALL),
        ) {
            let amount = Amount::from_minor(minor).unwrap();
            let written = WrittenAmount::of(amount, currency);
            proptest::prop_assert_eq!(written.in_currency(currency), Ok(amount));
            proptest::prop_assert_eq!(written.to_string(), amount.format(currency));
        }
    }

    #[test]
    fn formats_with_the_currency_minor_units_and_round_trips() {
        assert_eq!(
            Amount::from_minor(1230).unwrap().format(Currency::USD),
            "12.30"
        );
        assert_eq!(
            Amount::from_minor(5).unwrap().format(Currency::KWD),
            "0.005"
        );
        assert_eq!(
            Amount::from_minor(500).unwrap().format(Currency::JPY),
            "500"
        );
        assert_eq!(format_minor(0, Currency::EUR), "0.00");
        for &currency in Currency::ALL {
            for minor in [1, 9, 10, 99, 100, 12_345, 1_000_000_007, AMOUNT_MINOR_MAX] {
                let text = Amount::from_minor(minor).unwrap().format(currency);
                assert_eq!(Amount::parse(&text, currency).map(Amount::minor), Ok(minor));
            }
        }
    }

    #[test]
    fn currencies_have_unique_codes_and_known_minor_units() {
        assert!(matches!(
            Currency::from_code("XXX"),
            Err(MoneyError::UnknownCurrency(_))
        ));
        assert!(Currency::from_code("usd").is_err(), "codes are upper case");
        let expected = [
            ("USD", 2),
            ("EUR", 2),
            ("GBP", 2),
            ("JPY", 0),
            ("KRW", 0),
            ("KWD", 3),
            ("CHF", 2),
            ("CNY", 2),
        ];
        for (code, minor) in expected {
            assert_eq!(
                Currency::from_code(code).unwrap().minor_units(),
                minor,
                "{code}"
            );
        }
        for &c in Currency::ALL {
            assert_eq!(Currency::from_code(c.code()), Ok(c));
            assert_eq!(Currency::from_numeric(c.numeric()), Some(c));
        }
        assert_eq!(Amount::from_minor(0), None);
        assert_eq!(Amount::from_minor(AMOUNT_MINOR_MAX + 1), None);
    }
}
