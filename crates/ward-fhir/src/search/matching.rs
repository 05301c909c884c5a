//! In-memory matching of one criterion against a resource's index entries,
//! and sort values.
//!
//! Date prefixes follow the R4 search page: with the search range `S` and
//! the resource range `R` (both closed-open), `eq` means `R` lies within `S`,
//! `ne` the opposite, `gt` that `R` extends past the end of `S`, `lt` that it
//! starts before `S`, `ge`/`le` either of those or `eq`, `sa` that `R` starts
//! at or after the end of `S`, `eb` that `R` ends at or before the start of
//! `S`. `ap` widens `S` on both sides by 10% of the time between now and the
//! start of `S`, and matches when `R` overlaps the widened range.
//!
//! Numbers and quantities: `eq` means the resource value lies within the
//! range the search value's precision implies (`100` is `[99.5, 100.5)`),
//! `ne` the opposite, `gt`/`lt`/`ge`/`le` compare the values, `sa`/`eb`
//! compare the resource range with the search range like dates, and `ap`
//! accepts values within 10% of the search value (or within its precision
//! range, whichever is wider).

use std::cmp::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use super::primitives::normalize_string;
use super::{Criterion, IndexEntry, IndexValue, Modifier, Prefix, SearchValue};

/// Returns true when the resource whose index entries are `entries` matches
/// `criterion`. Chained criteria are resolved by the store: here a chained
/// criterion matches nothing.
pub fn matches(criterion: &Criterion, entries: &[IndexEntry]) -> bool {
    if criterion.chain.is_some() {
        return false;
    }
    let mut own = entries.iter().filter(|e| e.param == criterion.param);
    let modifier = criterion.modifier.as_ref();
    if modifier == Some(&Modifier::Missing) {
        let present = own.next().is_some();
        return criterion.values.iter().any(|value| match value {
            SearchValue::Missing(missing) => *missing != present,
            _ => false,
        });
    }
    let any_match = |entries: &mut dyn Iterator<Item = &IndexEntry>| {
        let values: Vec<&IndexValue> = entries.map(|e| &e.value).collect();
        criterion
            .values
            .iter()
            .any(|search| values.iter().any(|v| value_matches(search, v, modifier)))
    };
    if modifier == Some(&Modifier::Not) {
        return !any_match(&mut own);
    }
    any_match(&mut own)
}

/// Matches one search value against one index value.
fn value_matches(search: &SearchValue, value: &IndexValue, modifier: Option<&Modifier>) -> bool {
    match (search, value) {
        (
            SearchValue::String { normalized, exact },
            IndexValue::String {
                normalized: n,
                exact: e,
            },
        ) => match modifier {
            Some(Modifier::Exact) => e == exact,
            Some(Modifier::Contains) => n.contains(normalized.as_str()),
            _ => n.starts_with(normalized.as_str()),
        },
        (SearchValue::String { normalized, .. }, IndexValue::Token { text, .. }) => {
            modifier == Some(&Modifier::Text)
                && text
                    .as_deref()
                    .is_some_and(|t| t.starts_with(normalized.as_str()))
        }
        (
            SearchValue::Token { system, code },
            IndexValue::Token {
                system: s, code: c, ..
            },
        ) => token_matches(system.as_deref(), code.as_deref(), s.as_deref(), c),
        (
            SearchValue::Reference {
                target_type,
                id,
                url,
            },
            IndexValue::Reference {
                target_type: t,
                id: i,
                url: u,
            },
        ) => reference_matches(
            target_type.as_deref(),
            id.as_deref(),
            url.as_deref(),
            t,
            i,
            u,
        ),
        (SearchValue::Date { prefix, low, high }, IndexValue::Date { low: l, high: h }) => {
            date_matches(*prefix, (*low, *high), (*l, *h), now_micros())
        }
        (
            SearchValue::Number {
                prefix,
                value,
                low,
                high,
            },
            IndexValue::Number {
                value: v,
                low: l,
                high: h,
            },
        ) => number_matches(*prefix, (*value, *low, *high), (*v, *l, *h)),
        (
            SearchValue::Quantity {
                prefix,
                value,
                low,
                high,
                system,
                code,
            },
            IndexValue::Quantity {
                value: v,
                low: l,
                high: h,
                system: s,
                code: c,
                unit,
            },
        ) => {
            unit_matches(
                system.as_deref(),
                code.as_deref(),
                s.as_deref(),
                c.as_deref(),
                unit.as_deref(),
            ) && number_matches(*prefix, (*value, *low, *high), (*v, *l, *h))
        }
        (SearchValue::Uri(search), IndexValue::Uri { value }) => match modifier {
            Some(Modifier::Below) => value.starts_with(search.as_str()),
            Some(Modifier::Above) => search.starts_with(value.as_str()),
            Some(Modifier::Contains) => value.contains(search.as_str()),
            _ => value == search,
        },
        (SearchValue::Composite(parts), IndexValue::Composite { components }) => {
            parts.len() == components.len()
                && parts
                    .iter()
                    .zip(components)
                    .all(|((code, search), (c, value))| {
                        code == c && value_matches(search, value, None)
                    })
        }
        _ => false,
    }
}

fn token_matches(
    system: Option<&str>,
    code: Option<&str>,
    entry_system: Option<&str>,
    entry_code: &str,
) -> bool {
    let system_ok = match system {
        None => true,
        Some("") => entry_system.is_none_or(str::is_empty),
        Some(system) => entry_system == Some(system),
    };
    let code_ok = match code {
        None => true,
        Some(code) => !entry_code.is_empty() && entry_code == code,
    };
    system_ok && code_ok
}

/// Reference rules: an absolute URL matches the URL as written (a canonical
/// without `|version` matches any version); `Type/id` and a typed id match
/// local references to that type and id; an untyped id matches a local
/// reference to any type with that id.
fn reference_matches(
    target_type: Option<&str>,
    id: Option<&str>,
    url: Option<&str>,
    entry_type: &Option<String>,
    entry_id: &Option<String>,
    entry_url: &Option<String>,
) -> bool {
    if let Some(url) = url {
        let Some(entry_url) = entry_url else {
            return false;
        };
        if entry_url == url {
            return true;
        }
        return !url.contains('|') && entry_url.split('|').next() == Some(url);
    }
    if entry_url.is_some() {
        return false;
    }
    let Some(id) = id else {
        return false;
    };
    let type_ok = match target_type {
        Some(t) => entry_type.as_deref() == Some(t),
        None => true,
    };
    type_ok && entry_id.as_deref() == Some(id)
}

/// Quantity units: with a system, the entry's system and code must both
/// match; with a code alone, either the entry's code or its unit must.
fn unit_matches(
    system: Option<&str>,
    code: Option<&str>,
    entry_system: Option<&str>,
    entry_code: Option<&str>,
    entry_unit: Option<&str>,
) -> bool {
    match (system, code) {
        (None, None) => true,
        (Some(system), Some(code)) => entry_system == Some(system) && entry_code == Some(code),
        (Some(system), None) => entry_system == Some(system),
        (None, Some(code)) => entry_code == Some(code) || entry_unit == Some(code),
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_micros()).ok())
        .unwrap_or(0)
}

/// Date prefix semantics; `search` and `resource` are `[low, high)` ranges.
fn date_matches(prefix: Prefix, search: (i64, i64), resource: (i64, i64), now: i64) -> bool {
    let (sl, sh) = search;
    let (rl, rh) = resource;
    let within = rl >= sl && rh <= sh;
    match prefix {
        Prefix::Eq => within,
        Prefix::Ne => !within,
        Prefix::Gt => rh > sh,
        Prefix::Lt => rl < sl,
        Prefix::Ge => rh > sh || within,
        Prefix::Le => rl < sl || within,
        Prefix::StartsAfter => rl >= sh,
        Prefix::EndsBefore => rh <= sl,
        Prefix::Approx => {
            let gap = now.abs_diff(sl) / 10;
            let widen = i64::try_from(gap).unwrap_or(i64::MAX);
            let low = sl.saturating_sub(widen);
            let high = sh.saturating_add(widen);
            rl < high && rh > low
        }
    }
}

/// Number prefix semantics; each side is `(value, low, high)`.
fn number_matches(prefix: Prefix, search: (f64, f64, f64), resource: (f64, f64, f64)) -> bool {
    let (sv, sl, sh) = search;
    let (rv, rl, rh) = resource;
    let within = rv >= sl && rv < sh;
    match prefix {
        Prefix::Eq => within,
        Prefix::Ne => !within,
        Prefix::Gt => rv > sv,
        Prefix::Lt => rv < sv,
        Prefix::Ge => rv >= sv,
        Prefix::Le => rv <= sv,
        Prefix::StartsAfter => rl >= sh,
        Prefix::EndsBefore => rh <= sl,
        Prefix::Approx => {
            let tolerance = (sv.abs() * 0.1).max((sh - sl) / 2.0);
            (rv - sv).abs() <= tolerance
        }
    }
}

/// A value to order resources by, from [`sort_value`]. Values of different
/// kinds order by kind (numbers, dates, strings).
#[derive(Debug, Clone, PartialEq)]
pub enum SortValue {
    /// A number or quantity value.
    Number(f64),
    /// A date bound in microseconds since the epoch.
    Date(i64),
    /// A normalized string, token code, reference or uri.
    Text(String),
}

impl Eq for SortValue {}

impl PartialOrd for SortValue {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SortValue {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Self::Number(a), Self::Number(b)) => a.total_cmp(b),
            (Self::Date(a), Self::Date(b)) => a.cmp(b),
            (Self::Text(a), Self::Text(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl SortValue {
    fn rank(&self) -> u8 {
        match self {
            Self::Number(_) => 0,
            Self::Date(_) => 1,
            Self::Text(_) => 2,
        }
    }
}

/// Returns the value to sort a resource by for `param`: the smallest of its
/// values for an ascending sort and the largest for a descending one (dates
/// use the low bound ascending and the high bound descending). Returns
/// `None` when the resource has no value for the parameter. The caller
/// reverses the order for descending sorts.
pub fn sort_value(entries: &[IndexEntry], param: &str, descending: bool) -> Option<SortValue> {
    let values = entries
        .iter()
        .filter(|e| e.param == param)
        .filter_map(|e| sort_key(&e.value, descending));
    if descending {
        values.max()
    } else {
        values.min()
    }
}

fn sort_key(value: &IndexValue, descending: bool) -> Option<SortValue> {
    Some(match value {
        IndexValue::String { normalized, .. } => SortValue::Text(normalized.clone()),
        IndexValue::Token { code, text, .. } => {
            if code.is_empty() {
                SortValue::Text(text.clone()?)
            } else {
                SortValue::Text(code.clone())
            }
        }
        IndexValue::Reference {
            target_type,
            id,
            url,
        } => match (url, target_type, id) {
            (Some(url), _, _) => SortValue::Text(url.clone()),
            (None, Some(t), Some(id)) => SortValue::Text(format!("{t}/{id}")),
            (None, None, Some(id)) => SortValue::Text(id.clone()),
            _ => return None,
        },
        IndexValue::Date { low, high } => SortValue::Date(if descending { *high } else { *low }),
        IndexValue::Number { value, .. } | IndexValue::Quantity { value, .. } => {
            if value.is_nan() {
                return None;
            }
            SortValue::Number(*value)
        }
        IndexValue::Uri { value } => SortValue::Text(normalize_string(value)),
        IndexValue::Composite { .. } => return None,
    })
}
