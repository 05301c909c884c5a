//! Turning extracted search values into index rows, and the hashing rules
//! that queries must repeat exactly.
//!
//! Strings are indexed as keyed hashes of their normalized prefixes from
//! [`MIN_PREFIX`] to [`MAX_PREFIX`] characters and of their exact form;
//! tokens as hashes of system and code; URIs and absolute references as
//! hashes. Dates and numbers are stored in clear as ranges. Every hash domain
//! includes the parameter code, so equal values under different parameters
//! do not link.

use ward_fhir::search::{IndexEntry, IndexValue};

use crate::codec::ResourceCodec;

/// The shortest string prefix that is indexed. Shorter search strings match
/// by decrypting candidates.
pub(crate) const MIN_PREFIX: usize = 2;

/// The maximum indexed prefix length. A longer search string matches on this
/// prefix, then on the decrypted resource.
pub(crate) const MAX_PREFIX: usize = 12;

/// Hash of a normalized string prefix.
pub(crate) fn string_prefix(codec: &ResourceCodec, param: &str, prefix: &str) -> Vec<u8> {
    codec.blind(&format!("sp:{param}"), prefix).to_vec()
}

/// Hash of a string as written (for `:exact`).
pub(crate) fn string_exact(codec: &ResourceCodec, param: &str, value: &str) -> Vec<u8> {
    codec.blind(&format!("se:{param}"), value).to_vec()
}

/// Hash of a token system.
pub(crate) fn token_system(codec: &ResourceCodec, param: &str, system: &str) -> Vec<u8> {
    codec.blind(&format!("ts:{param}"), system).to_vec()
}

/// Hash of a token code.
pub(crate) fn token_code(codec: &ResourceCodec, param: &str, code: &str) -> Vec<u8> {
    codec.blind(&format!("tc:{param}"), code).to_vec()
}

/// Hash of a uri or of an absolute reference URL.
pub(crate) fn uri(codec: &ResourceCodec, param: &str, value: &str) -> Vec<u8> {
    codec.blind(&format!("u:{param}"), value).to_vec()
}

/// Hash of a quantity unit system or code.
pub(crate) fn unit(codec: &ResourceCodec, value: &str) -> Vec<u8> {
    codec.blind("unit", value).to_vec()
}

/// The first `n` characters of `s` (or all of it).
pub(crate) fn char_prefix(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// Index rows for one resource, grouped by table.
#[derive(Debug, Default)]
pub(crate) struct IndexRows {
    /// `(param, kind, hash)`: kind 1 is a normalized prefix, 2 the exact form.
    pub strings: Vec<(String, i64, Vec<u8>)>,
    /// `(param, system hash or None, code hash)`.
    pub tokens: Vec<(String, Option<Vec<u8>>, Vec<u8>)>,
    /// `(param, low, high)`.
    pub dates: Vec<(String, i64, i64)>,
    /// `(param, value, low, high, system hash, code hash, unit hash)`.
    pub numbers: Vec<NumberRow>,
    /// `(param, target type, target id, url hash)`.
    pub references: Vec<ReferenceRow>,
    /// `(param, hash)`.
    pub uris: Vec<(String, Vec<u8>)>,
}

/// `(param, target type, target id, url hash)`.
pub(crate) type ReferenceRow = (String, Option<String>, Option<String>, Option<Vec<u8>>);

/// One number or quantity index row.
#[derive(Debug)]
pub(crate) struct NumberRow {
    pub param: String,
    pub value: f64,
    pub low: f64,
    pub high: f64,
    pub system: Option<Vec<u8>>,
    pub code: Option<Vec<u8>>,
    pub unit: Option<Vec<u8>>,
}

/// Builds the index rows of a resource's extracted entries.
pub(crate) fn rows(codec: &ResourceCodec, entries: &[IndexEntry]) -> IndexRows {
    let mut rows = IndexRows::default();
    for entry in entries {
        add_value(codec, &mut rows, &entry.param, &entry.value);
    }
    rows.strings.sort();
    rows.strings.dedup();
    rows.tokens.sort();
    rows.tokens.dedup();
    rows.references.sort();
    rows.references.dedup();
    rows.uris.sort();
    rows.uris.dedup();
    rows
}

fn add_value(codec: &ResourceCodec, rows: &mut IndexRows, param: &str, value: &IndexValue) {
    match value {
        IndexValue::String { normalized, exact } => {
            let count = normalized.chars().count().min(MAX_PREFIX);
            for n in MIN_PREFIX..=count {
                let prefix = char_prefix(normalized, n);
                rows.strings
                    .push((param.to_owned(), 1, string_prefix(codec, param, prefix)));
            }
            rows.strings
                .push((param.to_owned(), 2, string_exact(codec, param, exact)));
        }
        IndexValue::Token { system, code, .. } => {
            let system = system.as_deref().map(|s| token_system(codec, param, s));
            rows.tokens
                .push((param.to_owned(), system, token_code(codec, param, code)));
        }
        IndexValue::Reference {
            target_type,
            id,
            url,
        } => {
            let url = url.as_deref().map(|u| uri(codec, param, u));
            rows.references
                .push((param.to_owned(), target_type.clone(), id.clone(), url));
        }
        IndexValue::Date { low, high } => rows.dates.push((param.to_owned(), *low, *high)),
        IndexValue::Number { value, low, high } => rows.numbers.push(NumberRow {
            param: param.to_owned(),
            value: *value,
            low: *low,
            high: *high,
            system: None,
            code: None,
            unit: None,
        }),
        IndexValue::Quantity {
            value,
            low,
            high,
            system,
            code,
            unit: unit_text,
        } => rows.numbers.push(NumberRow {
            param: param.to_owned(),
            value: *value,
            low: *low,
            high: *high,
            system: system.as_deref().map(|s| unit(codec, s)),
            code: code.as_deref().map(|c| unit(codec, c)),
            unit: unit_text.as_deref().map(|u| unit(codec, u)),
        }),
        IndexValue::Uri { value } => rows.uris.push((param.to_owned(), uri(codec, param, value))),
        // Composite parameters are matched on the decrypted resource.
        IndexValue::Composite { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_prefix_respects_char_boundaries() {
        assert_eq!(char_prefix("zoë smith", 3), "zoë");
        assert_eq!(char_prefix("ab", 5), "ab");
        assert_eq!(char_prefix("𝔘nicode", 1), "𝔘");
    }
}
