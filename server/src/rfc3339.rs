//! RFC 3339 timestamps to and from the log's microseconds since the Unix epoch.
//!
//! The calendar (days per month, leap years, offsets, the epoch) is `jiff`'s. What is ours is
//! the grammar the API documents, `YYYY-MM-DD(T|t)HH:MM:SS[.fraction](Z|z|±HH:MM)`: jiff's
//! parser takes more (ISO 8601's basic format, offsets without minutes, bracketed time
//! zones), so a text is checked against that grammar before jiff reads it, and what the API
//! accepted before it accepts now, no more, short of jiff's range: times after
//! 9999-12-30T22:00:00Z are refused. Out: always `...SS.ffffffZ`.

use jiff::Timestamp;
use walletd_core::model::event::Timestamp as LogTimestamp;

/// Longest timestamp text accepted before any parsing work is done.
pub const TEXT_LEN_MAX: usize = 40;

/// Shortest text of the grammar: `2024-05-01T12:00:00Z`.
const TEXT_LEN_MIN: usize = 20;

/// Where a fraction's digits start: after `YYYY-MM-DDTHH:MM:SS.`.
const FRACTION_START: usize = 20;

/// Fraction digits jiff reads (nanoseconds); more are accepted and dropped, since only
/// microseconds are kept anyway.
const FRACTION_DIGITS_MAX: usize = 9;

/// Formats microseconds since the epoch as `2024-05-01T12:00:00.000000Z`.
pub fn format_us(timestamp_us: LogTimestamp) -> String {
    // The log's stamps come from a clock, far inside jiff's range (years up to 9999); one
    // past it could only come from a damaged record, and shows as the range's end rather
    // than stopping the request.
    let instant = i64::try_from(timestamp_us)
        .ok()
        .and_then(|us| Timestamp::from_microsecond(us).ok())
        .unwrap_or(Timestamp::MAX);
    format!("{instant:.6}")
}

/// Parses an RFC 3339 timestamp into microseconds since the epoch (fractions beyond
/// microseconds are truncated; a leap second, `:60`, is read as `:59`). Refuses times
/// before 1970.
pub fn parse_us(text: &str) -> Result<LogTimestamp, String> {
    let micros = parse_micros(text)?;
    u64::try_from(micros).map_err(|_| format!("{text:?} is before 1970-01-01T00:00:00Z"))
}

/// Parses an RFC 3339 timestamp as [`parse_us`] does, but reads an instant before 1970 as
/// the epoch itself: for "as of" questions, where before the first record nothing existed,
/// and a valid timestamp is not a client's mistake.
pub fn parse_us_from_epoch(text: &str) -> Result<LogTimestamp, String> {
    let micros = parse_micros(text)?;
    Ok(u64::try_from(micros).unwrap_or(0))
}

/// Microseconds since the epoch (negative before it) of an RFC 3339 timestamp.
fn parse_micros(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?} is not an RFC 3339 timestamp such as 2024-05-01T12:00:00Z");
    let fraction_digits = check_grammar(text).ok_or_else(bad)?;
    let instant: Timestamp = if fraction_digits > FRACTION_DIGITS_MAX {
        let kept_end = FRACTION_START + FRACTION_DIGITS_MAX;
        let fraction_end = FRACTION_START + fraction_digits;
        let shortened = format!("{}{}", &text[..kept_end], &text[fraction_end..]);
        shortened.parse().map_err(|_| bad())?
    } else {
        text.parse().map_err(|_| bad())?
    };
    Ok(instant.as_microsecond())
}

/// Whether `text` has the documented shape (digits where digits go, the separators, a
/// fraction of at least one digit, `Z` or a `±HH:MM` offset); if so, how many fraction
/// digits it has. The offset's range is checked here, the date's and time's (month 13,
/// hour 24, February 30) are left to jiff.
fn check_grammar(text: &str) -> Option<usize> {
    if !(TEXT_LEN_MIN..=TEXT_LEN_MAX).contains(&text.len()) || !text.is_ascii() {
        return None;
    }
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_digit);
    let shape_ok = digits(0..4)
        && bytes[4] == b'-'
        && digits(5..7)
        && bytes[7] == b'-'
        && digits(8..10)
        && matches!(bytes[10], b'T' | b't')
        && digits(11..13)
        && bytes[13] == b':'
        && digits(14..16)
        && bytes[16] == b':'
        && digits(17..19);
    if !shape_ok {
        return None;
    }
    let mut rest = &bytes[19..];
    let mut fraction_digits = 0;
    if let Some(fraction) = rest.strip_prefix(b".") {
        fraction_digits = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if fraction_digits == 0 {
            return None;
        }
        rest = &fraction[fraction_digits..];
    }
    let offset_ok = match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| {
                (a.is_ascii_digit() && b.is_ascii_digit()).then(|| (a - b'0') * 10 + (b - b'0'))
            };
            // RFC 3339's offset hour is 00-23; jiff takes offsets up to 25:59:59.
            matches!((two(*h1, *h2), two(*m1, *m2)), (Some(0..=23), Some(0..=59)))
        }
        _ => false,
    };
    offset_ok.then_some(fraction_digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_known_instants() {
        assert_eq!(format_us(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_us(1_714_564_800_123_456),
            "2024-05-01T12:00:00.123456Z"
        );
        assert_eq!(parse_us("2024-05-01T12:00:00Z"), Ok(1_714_564_800_000_000));
        assert_eq!(
            parse_us("2024-05-01T12:00:00.123456789Z"),
            Ok(1_714_564_800_123_456)
        );
        assert_eq!(
            parse_us("2024-05-01T14:00:00.5+02:00"),
            Ok(1_714_564_800_500_000)
        );
        assert_eq!(
            parse_us("2024-05-01T07:30:00-04:30"),
            Ok(1_714_564_800_000_000)
        );
        assert_eq!(parse_us("2000-02-29T00:00:00Z"), Ok(951_782_400_000_000));
    }

    /// The other spellings the grammar allows: a lowercase separator, a lowercase `z`, a
    /// leap second, a fraction longer than nanoseconds.
    #[test]
    fn parses_every_spelling_the_grammar_allows() {
        let noon = 1_714_564_800_000_000;
        assert_eq!(parse_us("2024-05-01t12:00:00Z"), Ok(noon));
        assert_eq!(parse_us("2024-05-01T12:00:00z"), Ok(noon));
        assert_eq!(parse_us("2024-05-01T12:00:00+00:00"), Ok(noon));
        assert_eq!(parse_us("2024-05-01T12:00:00-00:00"), Ok(noon));
        assert_eq!(parse_us("2024-05-01T12:00:00.000001Z"), Ok(noon + 1));
        assert_eq!(
            parse_us("2024-05-01T12:00:00.1234567891234Z"),
            Ok(noon + 123_456)
        );
        assert_eq!(
            parse_us("2024-05-01T12:00:00.9999999999+00:00"),
            Ok(noon + 999_999)
        );
        assert_eq!(
            parse_us("2016-12-31T23:59:60Z"),
            parse_us("2016-12-31T23:59:59Z")
        );
        assert_eq!(
            parse_us("2016-12-31T23:59:60.25Z"),
            parse_us("2016-12-31T23:59:59.25Z")
        );
        assert_eq!(parse_us("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_us("1970-01-01T01:00:00+01:00"), Ok(0));
        assert_eq!(
            parse_us("2024-05-01T12:00:00+23:59"),
            Ok(noon - 86_340_000_000)
        );
    }

    #[test]
    fn as_of_questions_read_instants_before_1970_as_the_epoch() {
        assert_eq!(parse_us_from_epoch("1969-12-31T23:59:59Z"), Ok(0));
        assert_eq!(parse_us_from_epoch("0000-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_us_from_epoch("1970-01-01T00:00:01Z"), Ok(1_000_000));
        assert!(parse_us_from_epoch("yesterday").is_err());
        assert!(parse_us_from_epoch("1969-02-30T00:00:00Z").is_err());
    }

    #[test]
    fn round_trips_over_many_days() {
        for day in (0..40_000u64).step_by(37) {
            let ts = day * 86_400_000_000 + 12_345_678;
            assert_eq!(parse_us(&format_us(ts)), Ok(ts));
        }
    }

    #[test]
    fn a_stamp_past_the_calendar_formats_without_panicking() {
        assert_eq!(format_us(u64::MAX), format!("{:.6}", Timestamp::MAX));
    }

    #[test]
    fn refuses_malformed_text() {
        for bad in [
            "",
            "2024-05-01",
            "2024-05-01T12:00:00",
            "2024-13-01T12:00:00Z",
            "2023-02-29T12:00:00Z",
            "2024-04-31T12:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:60:00Z",
            "2024-05-01T12:00:61Z",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00,5Z",
            "2024-05-01T12:00:00+2:00",
            "2024-05-01T12:00:00+02:0a",
            "2024-05-01T12:00:00+24:00",
            "2024-05-01T12:00:00+02:60",
            "2024-05-01T12:00:00+02",
            "2024-05-01T12:00:00+0200",
            "2024-05-01T12:00:00Z[UTC]",
            "20240501T120000Z",
            "+002024-05-01T12:00:00Z",
            "2024-05-01T12:00Z",
            "2024-05-01T12:00:00.1234567890123456789012Z",
            "1969-12-31T23:59:59Z",
            "２０２４-05-01T12:00:00Z",
            "2024-05-01T12:00:00Zjunk",
            "9999-12-31T00:00:00Z",
            "2024-05-01 12:00:00Z",
        ] {
            assert!(parse_us(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_us("1969-12-31T23:59:59.5Z"),
            Err("\"1969-12-31T23:59:59.5Z\" is before 1970-01-01T00:00:00Z".to_string())
        );
    }
}
