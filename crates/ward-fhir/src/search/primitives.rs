//! Value parsing shared by index extraction and query parsing: dates as
//! closed-open microsecond ranges, decimal precision ranges, string
//! normalization and literal references.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_MINUTE: i64 = 60 * MICROS_PER_SECOND;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// Normalizes a string for search: Unicode NFKD with combining marks removed,
/// lowercased, and runs of whitespace collapsed to one space (leading and
/// trailing whitespace removed).
pub fn normalize_string(text: &str) -> String {
    let folded: String = text
        .nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Parses a FHIR date, dateTime or instant (also the minute precision that
/// search values allow, such as `2013-01-14T10:00`) into the closed-open range
/// `[low, high)` it covers, in microseconds since the Unix epoch, UTC.
///
/// The range follows the written precision: `2013` covers the whole year,
/// `2013-01-14T10:00:00.5` covers a tenth of a second. A value with a time but
/// no timezone is taken as UTC, and so are dates without a time (FHIR leaves
/// their zone unspecified). Returns `None` for anything else.
pub fn parse_date_range(text: &str) -> Option<(i64, i64)> {
    // A `+` offset sent unencoded in a URL query arrives as a space.
    let text = text.replace(' ', "+");
    let text = text.as_str();
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let mut parts = date.split('-');
    let year: i64 = digits(parts.next()?, 4)?;
    let month = match parts.next() {
        Some(text) => Some(digits(text, 2)?),
        None => None,
    };
    let day = match parts.next() {
        Some(text) => Some(digits(text, 2)?),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    if let Some(month) = month
        && !(1..=12).contains(&month)
    {
        return None;
    }
    if let (Some(month), Some(day)) = (month, day)
        && (day < 1 || day > days_in_month(year, month))
    {
        return None;
    }
    let Some(time) = time else {
        return date_only_range(year, month, day);
    };
    let (Some(month), Some(day)) = (month, day) else {
        return None;
    };
    let day_start = days_from_civil(year, month, day) * MICROS_PER_DAY;
    let (clock, offset) = split_offset(time)?;
    let (start, width) = parse_clock(clock)?;
    let low = day_start + start - offset;
    Some((low, low + width))
}

fn date_only_range(year: i64, month: Option<i64>, day: Option<i64>) -> Option<(i64, i64)> {
    let (low, high) = match (month, day) {
        (None, _) => (days_from_civil(year, 1, 1), days_from_civil(year + 1, 1, 1)),
        (Some(month), None) => {
            let (next_year, next_month) = if month == 12 {
                (year + 1, 1)
            } else {
                (year, month + 1)
            };
            (
                days_from_civil(year, month, 1),
                days_from_civil(next_year, next_month, 1),
            )
        }
        (Some(month), Some(day)) => {
            let start = days_from_civil(year, month, day);
            (start, start + 1)
        }
    };
    Some((low * MICROS_PER_DAY, high * MICROS_PER_DAY))
}

/// Splits `hh:mm[:ss[.fff]][Z|±hh:mm]` into the clock part and the offset in
/// microseconds east of UTC.
fn split_offset(time: &str) -> Option<(&str, i64)> {
    if let Some(clock) = time.strip_suffix('Z') {
        return Some((clock, 0));
    }
    let Some(index) = time.find(['+', '-']) else {
        return Some((time, 0));
    };
    let (clock, zone) = time.split_at(index);
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let (hours, minutes) = zone.get(1..)?.split_once(':')?;
    let hours = digits(hours, 2)?;
    let minutes = digits(minutes, 2)?;
    if hours > 14 || minutes > 59 {
        return None;
    }
    Some((clock, sign * (hours * 60 + minutes) * MICROS_PER_MINUTE))
}

/// Parses `hh:mm[:ss[.fff]]` into the offset from midnight and the width of
/// the written precision, both in microseconds.
fn parse_clock(clock: &str) -> Option<(i64, i64)> {
    let mut parts = clock.split(':');
    let hours = digits(parts.next()?, 2)?;
    let minutes = digits(parts.next()?, 2)?;
    let seconds = parts.next();
    if parts.next().is_some() || hours > 23 || minutes > 59 {
        return None;
    }
    let base = (hours * 60 + minutes) * MICROS_PER_MINUTE;
    let Some(seconds) = seconds else {
        return Some((base, MICROS_PER_MINUTE));
    };
    let (whole, fraction) = match seconds.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (seconds, None),
    };
    let whole = digits(whole, 2)?;
    if whole > 59 {
        return None;
    }
    let base = base + whole * MICROS_PER_SECOND;
    let Some(fraction) = fraction else {
        return Some((base, MICROS_PER_SECOND));
    };
    if fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Precision beyond microseconds is truncated to one microsecond.
    let kept = fraction.get(..fraction.len().min(6)).unwrap_or(fraction);
    let scale = 10_i64.pow(6 - u32::try_from(kept.len()).ok()?);
    let micros: i64 = kept.parse::<i64>().ok()? * scale;
    Some((base + micros, scale))
}

fn digits(text: &str, len: usize) -> Option<i64> {
    if text.len() != len || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 in the proleptic Gregorian calendar (Howard
/// Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A decimal with the range its written precision implies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Decimal {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// Parses a decimal as written (`100`, `1.50`, `-3`, `1e2`) and computes the
/// range of half a unit of its last written digit on each side: `100` covers
/// `[99.5, 100.5)`, `1.50` covers `[1.495, 1.505)`, `1e2` covers `[50, 150)`.
///
/// NOTE: the R4 search page gives `[95, 105)` for `1e2` while calling it one
/// significant figure; this follows the significant-figure rule instead.
pub(crate) fn parse_decimal(text: &str) -> Option<Decimal> {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(index) => (
            text.get(..index)?,
            text.get(index + 1..)?.parse::<i32>().ok()?,
        ),
        None => (text, 0),
    };
    let unsigned = mantissa.strip_prefix('-').unwrap_or(mantissa);
    let unsigned = unsigned.strip_prefix('+').unwrap_or(unsigned);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (unsigned, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    if unsigned.ends_with('.') {
        return None;
    }
    let value: f64 = text.parse().ok()?;
    if !value.is_finite() {
        return None;
    }
    let decimals = i32::try_from(fraction.len()).ok()?;
    let half = 0.5 * 10_f64.powi(exponent.checked_sub(decimals)?);
    Some(Decimal {
        value,
        low: value - half,
        high: value + half,
    })
}

/// A literal reference split into its parts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ReferenceParts {
    pub target_type: Option<String>,
    pub id: Option<String>,
    pub url: Option<String>,
}

/// Splits a reference as written: `Type/id` (with an optional
/// `/_history/version`), an absolute URL (kept, with its type and id when it
/// ends in `Type/id`), a `urn:uuid:` or `urn:oid:` (kept as a URL). Returns
/// `None` for contained references (`#id`) and empty text.
pub(crate) fn parse_reference(text: &str) -> Option<ReferenceParts> {
    if text.is_empty() || text.starts_with('#') {
        return None;
    }
    let absolute = text.contains("://") || text.starts_with("urn:");
    let url = absolute.then(|| text.to_owned());
    let path = text.split(['?', '#']).next().unwrap_or(text);
    let path = path.split('|').next().unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    let without_history = match segments.as_slice() {
        [rest @ .., "_history", _] => rest,
        all => all,
    };
    let parts = match without_history {
        [.., type_name, id] if super::static_resource_type(type_name).is_some() => ReferenceParts {
            target_type: Some((*type_name).to_owned()),
            id: Some((*id).to_owned()).filter(|id| !id.is_empty()),
            url,
        },
        _ if absolute => ReferenceParts {
            url,
            ..ReferenceParts::default()
        },
        // A relative reference that does not name a type (not valid FHIR,
        // but seen in the wild): keep it as a URL so it can still match.
        _ => ReferenceParts {
            url: Some(text.to_owned()),
            ..ReferenceParts::default()
        },
    };
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = MICROS_PER_DAY;

    #[test]
    fn date_year_month_day_ranges() {
        let (low, high) = parse_date_range("1970").unwrap_or_default();
        assert_eq!(low, 0);
        assert_eq!(high, 365 * DAY);
        let (low, high) = parse_date_range("1970-02").unwrap_or_default();
        assert_eq!(low, 31 * DAY);
        assert_eq!(high, 59 * DAY);
        let (low, high) = parse_date_range("2000-02-29").unwrap_or_default();
        assert_eq!(high - low, DAY);
        assert_eq!(low, 11_016 * DAY);
    }

    #[test]
    fn date_time_precision_and_offsets() {
        let (low, high) = parse_date_range("1970-01-01T10:00:00+10:00").unwrap_or_default();
        assert_eq!(low, 0);
        assert_eq!(high, MICROS_PER_SECOND);
        let (low, high) = parse_date_range("1970-01-01T00:01").unwrap_or_default();
        assert_eq!(low, MICROS_PER_MINUTE);
        assert_eq!(high, 2 * MICROS_PER_MINUTE);
        let (low, high) = parse_date_range("1970-01-01T00:00:01.25Z").unwrap_or_default();
        assert_eq!(low, 1_250_000);
        assert_eq!(high, 1_260_000);
        let (low, _) = parse_date_range("1969-12-31T19:00:00-05:00").unwrap_or_default();
        assert_eq!(low, 0);
    }

    #[test]
    fn date_rejects_malformed() {
        for bad in [
            "",
            "20",
            "2013-13",
            "2013-02-30",
            "2013-01-01T25:00",
            "2013-01-01T10",
            "2013-1-01",
            "2013-01-01T10:00:00+15:00",
            "abc",
            "2013-01-01T10:00:00.",
            "2013T10:00",
        ] {
            assert_eq!(parse_date_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn decimal_precision_ranges() {
        let d = parse_decimal("100").unwrap_or(Decimal {
            value: 0.0,
            low: 0.0,
            high: 0.0,
        });
        assert_eq!(d.value, 100.0);
        assert_eq!(d.low, 99.5);
        assert_eq!(d.high, 100.5);
        let d = parse_decimal("1.50").unwrap_or(Decimal {
            value: 0.0,
            low: 0.0,
            high: 0.0,
        });
        assert!((d.low - 1.495).abs() < 1e-12);
        assert!((d.high - 1.505).abs() < 1e-12);
        let d = parse_decimal("1e2").unwrap_or(Decimal {
            value: 0.0,
            low: 0.0,
            high: 0.0,
        });
        assert_eq!(d.low, 50.0);
        assert_eq!(d.high, 150.0);
        for bad in ["", "1.", ".5", "abc", "1e", "NaN", "inf", "1,5", "--1"] {
            assert_eq!(parse_decimal(bad), None, "{bad}");
        }
    }

    #[test]
    fn normalize_folds_case_accents_space() {
        assert_eq!(normalize_string("  Zoë   ÉVE\tSmith "), "zoe eve smith");
        assert_eq!(normalize_string("ﬁne"), "fine");
    }

    #[test]
    fn reference_forms() {
        let parts = parse_reference("Patient/123").unwrap_or_default();
        assert_eq!(parts.target_type.as_deref(), Some("Patient"));
        assert_eq!(parts.id.as_deref(), Some("123"));
        assert_eq!(parts.url, None);
        let parts = parse_reference("http://x.org/fhir/Patient/9/_history/2").unwrap_or_default();
        assert_eq!(parts.target_type.as_deref(), Some("Patient"));
        assert_eq!(parts.id.as_deref(), Some("9"));
        assert!(parts.url.is_some());
        let parts = parse_reference("urn:uuid:abc").unwrap_or_default();
        assert_eq!(parts.url.as_deref(), Some("urn:uuid:abc"));
        assert_eq!(parts.id, None);
        assert_eq!(parse_reference("#contained"), None);
    }
}
