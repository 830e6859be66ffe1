//! RFC 3339 timestamps to and from the log's microseconds since the Unix epoch.
//!
//! Written out by hand (some forty lines) rather than pulling in a date crate: the server only
//! needs `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` in and `...ffffffZ` out.

use walletd_core::model::event::Timestamp;

/// Longest timestamp text accepted before any parsing work is done.
pub const TEXT_LEN_MAX: usize = 40;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a count of days since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Formats microseconds since the epoch as `2024-05-01T12:00:00.000000Z`.
pub fn format_us(timestamp_us: Timestamp) -> String {
    let seconds = (timestamp_us / 1_000_000) as i64;
    let micros = timestamp_us % 1_000_000;
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let second_of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Parses an RFC 3339 timestamp into microseconds since the epoch (fractions beyond
/// microseconds are truncated). Refuses times before 1970.
pub fn parse_us(text: &str) -> Result<Timestamp, String> {
    let (seconds, micros) = parse_seconds(text)?;
    if seconds < 0 {
        return Err(format!("{text:?} is before 1970-01-01T00:00:00Z"));
    }
    Ok(seconds as u64 * 1_000_000 + micros)
}

/// Parses an RFC 3339 timestamp as [`parse_us`] does, but reads an instant before 1970 as
/// the epoch itself: for "as of" questions, where before the first record nothing existed,
/// and a valid timestamp is not a client's mistake.
pub fn parse_us_from_epoch(text: &str) -> Result<Timestamp, String> {
    let (seconds, micros) = parse_seconds(text)?;
    Ok(if seconds < 0 {
        0
    } else {
        seconds as u64 * 1_000_000 + micros
    })
}

/// The whole seconds since the epoch (negative before it) and the microseconds of an RFC
/// 3339 timestamp.
fn parse_seconds(text: &str) -> Result<(i64, u64), String> {
    let bad = || format!("{text:?} is not an RFC 3339 timestamp such as 2024-05-01T12:00:00Z");
    if text.len() > TEXT_LEN_MAX || !text.is_ascii() || text.len() < 20 {
        return Err(bad());
    }
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = &text[range];
        if part.bytes().all(|b| b.is_ascii_digit()) {
            part.parse::<i64>().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let separators_ok = bytes[4] == b'-'
        && bytes[7] == b'-'
        && matches!(bytes[10], b'T' | b't')
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !separators_ok {
        return Err(bad());
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    // Leap seconds (60) are read as the last second of the minute.
    let valid = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour < 24
        && minute < 60
        && second <= 60;
    if !valid {
        return Err(bad());
    }
    let mut rest = &text[19..];
    let mut micros = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        for (i, b) in fraction.bytes().take(digits.min(6)).enumerate() {
            micros += i64::from(b - b'0') * 10i64.pow(5 - i as u32);
        }
        rest = &fraction[digits..];
    }
    let offset_seconds = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2]
            if [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()) =>
        {
            let hours = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
            let minutes = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            if hours > 23 || minutes > 59 {
                return Err(bad());
            }
            let magnitude = hours * 3600 + minutes * 60;
            if *sign == b'+' {
                magnitude
            } else {
                -magnitude
            }
        }
        _ => return Err(bad()),
    };
    let seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second.min(59)
            - offset_seconds;
    Ok((seconds, micros as u64))
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

    #[test]
    fn as_of_questions_read_instants_before_1970_as_the_epoch() {
        assert_eq!(parse_us_from_epoch("1969-12-31T23:59:59Z"), Ok(0));
        assert_eq!(parse_us_from_epoch("0000-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_us_from_epoch("1970-01-01T00:00:01Z"), Ok(1_000_000));
        assert!(parse_us_from_epoch("yesterday").is_err());
    }

    #[test]
    fn round_trips_over_many_days() {
        for day in (0..40_000u64).step_by(37) {
            let ts = day * 86_400_000_000 + 12_345_678;
            assert_eq!(parse_us(&format_us(ts)), Ok(ts));
        }
    }

    #[test]
    fn refuses_malformed_text() {
        for bad in [
            "",
            "2024-05-01",
            "2024-05-01T12:00:00",
            "2024-13-01T12:00:00Z",
            "2023-02-29T12:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00+2:00",
            "2024-05-01T12:00:00+02:0a",
            "1969-12-31T23:59:59Z",
            "２０２４-05-01T12:00:00Z",
            "2024-05-01T12:00:00Zjunk",
            "2024-05-01 12:00:00Z",
        ] {
            assert!(parse_us(bad).is_err(), "{bad:?}");
        }
    }
}
