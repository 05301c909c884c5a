//! Redaction of search parameters for query entities.
//!
//! Search values identify people (`name=smith`, `identifier=123-45-6789`,
//! `birthdate=1970-01-01`), so only parameter names and modifiers survive,
//! and values become `***`. Values of [`SAFE_QUERY_PARAMETERS`] are kept:
//! they select paging, sorting, includes and output format, and name
//! elements or parameters rather than data.
//!
//! `_id` is redacted even though resource ids are usually server-assigned
//! UUIDs: a client may choose its own ids with PUT, and the resources read
//! are recorded as entities anyway. `_since`, `_at`, `_lastUpdated`,
//! `_getpages` (a paging snapshot handle) and every other parameter are
//! redacted as well.

use serde::{Deserialize, Deserializer, Serialize, de::Error as _};

/// The text that replaces a redacted value or name.
pub const REDACTED: &str = "***";

/// Parameters whose values are kept, compared without their modifier
/// (`_include:iterate` counts as `_include`).
pub const SAFE_QUERY_PARAMETERS: &[&str] = &[
    "_count",
    "_sort",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
    "_total",
    "_format",
    "_contained",
    "_containedType",
    "_pretty",
];

/// Maximum length of a kept name or value. Longer ones become `***`.
const MAX_KEPT_LEN: usize = 128;

/// A query string whose values have been redacted by [`redact_query`].
///
/// The only constructors redact, and deserialization accepts only text that
/// redaction leaves unchanged, so a value of this type never contains a search
/// value outside the safe list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RedactedQuery(String);

impl RedactedQuery {
    /// Redacts decoded `(name, value)` pairs.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        Self(redact_query(pairs))
    }

    /// Returns the redacted query string, such as `name:exact=***&_count=10`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for RedactedQuery {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let pairs =
            decode_pairs(&text).ok_or_else(|| D::Error::custom("invalid query encoding"))?;
        if redact_query(pairs) != text {
            return Err(D::Error::custom("query is not redacted"));
        }
        Ok(Self(text))
    }
}

/// Redacts decoded search parameters into a query string.
///
/// Each pair becomes `name=value`, joined with `&` in the given order. The
/// name is kept, modifiers and chains included (`subject:Patient.name`),
/// unless it is longer than 128 bytes or has a character outside
/// `A-Z a-z 0-9 _ . : -`, in which case it becomes `***` too. The value is
/// `***` unless the name's base is in [`SAFE_QUERY_PARAMETERS`] and the value
/// is at most 128 bytes of `A-Z a-z 0-9 _ . : , / * + $ -` (digits only for
/// `_count`). Kept text is percent-encoded except for
/// `A-Z a-z 0-9 - . _ ~ : , / *`.
pub fn redact_query<I, K, V>(pairs: I) -> String
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut out = String::new();
    for (name, value) in pairs {
        let (name, value) = (name.as_ref(), value.as_ref());
        if !out.is_empty() {
            out.push('&');
        }
        let name_kept = is_safe_name(name);
        if name_kept {
            percent_encode(name, &mut out);
        } else {
            out.push_str(REDACTED);
        }
        out.push('=');
        if name_kept && is_safe_value(name, value) {
            percent_encode(value, &mut out);
        } else {
            out.push_str(REDACTED);
        }
    }
    out
}

fn is_safe_name(name: &str) -> bool {
    let valid_byte =
        |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b':' | b'-');
    !name.is_empty() && name.len() <= MAX_KEPT_LEN && name.bytes().all(valid_byte)
}

fn is_safe_value(name: &str, value: &str) -> bool {
    let base = name.split(':').next().unwrap_or(name);
    if !SAFE_QUERY_PARAMETERS.contains(&base) || value.len() > MAX_KEPT_LEN {
        return false;
    }
    if base == "_count" {
        return !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit());
    }
    let valid_byte = |byte: u8| {
        byte.is_ascii_alphanumeric()
            || matches!(
                byte,
                b'_' | b'.' | b':' | b',' | b'/' | b'*' | b'+' | b'$' | b'-'
            )
    };
    value.bytes().all(valid_byte)
}

fn percent_encode(text: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for byte in text.bytes() {
        let unreserved = byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'.' | b'_' | b'~' | b':' | b',' | b'/' | b'*');
        if unreserved {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
}

/// Splits and percent-decodes a query string produced by [`redact_query`].
/// Returns `None` for malformed escapes or text that is not UTF-8.
fn decode_pairs(text: &str) -> Option<Vec<(String, String)>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split('&')
        .map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((percent_decode(name)?, percent_decode(value)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut input = text.bytes();
    while let Some(byte) = input.next() {
        if byte == b'%' {
            let high = char::from(input.next()?).to_digit(16)?;
            let low = char::from(input.next()?).to_digit(16)?;
            bytes.push(u8::try_from(high * 16 + low).ok()?);
        } else {
            bytes.push(byte);
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_redacted_names_kept() {
        let query = redact_query([
            ("name:exact", "Smith"),
            ("birthdate", "ge1970-01-01"),
            ("subject:Patient.identifier", "http://hospital|12345"),
        ]);
        assert_eq!(
            query,
            "name:exact=***&birthdate=***&subject:Patient.identifier=***"
        );
    }

    #[test]
    fn safe_list_values_kept() {
        let query = redact_query([
            ("_count", "50"),
            ("_sort", "-date,name"),
            ("_include:iterate", "Observation:subject"),
            ("_format", "application/fhir+json"),
            ("_summary", "count"),
        ]);
        assert_eq!(
            query,
            "_count=50&_sort=-date,name&_include:iterate=Observation:subject\
             &_format=application/fhir%2Bjson&_summary=count"
        );
    }

    #[test]
    fn id_and_paging_handles_redacted() {
        let query = redact_query([
            ("_id", "abc"),
            ("_getpages", "snapshot-1"),
            ("_since", "2020"),
        ]);
        assert_eq!(query, "_id=***&_getpages=***&_since=***");
    }

    #[test]
    fn odd_safe_values_redacted() {
        let query = redact_query([
            ("_count", "10 OR 1=1"),
            ("_sort", "John Smith"),
            ("_elements", &"a".repeat(200)),
        ]);
        assert_eq!(query, "_count=***&_sort=***&_elements=***");
    }

    #[test]
    fn odd_names_redacted() {
        let query = redact_query([("John Smith", "1"), ("", "x"), ("a&b", "_count")]);
        assert_eq!(query, "***=***&***=***&***=***");
    }

    #[test]
    fn empty_query_is_empty() {
        assert_eq!(redact_query(Vec::<(String, String)>::new()), "");
    }

    #[test]
    fn redaction_is_a_fixed_point() {
        let first = redact_query([("name", "x"), ("_format", "a+b"), ("_count", "3")]);
        let second = redact_query(decode_pairs(&first).unwrap());
        assert_eq!(first, second);
    }

    #[test]
    fn deserialize_rejects_unredacted_text() {
        let raw = serde_json::Value::from("name=Smith");
        assert!(serde_json::from_value::<RedactedQuery>(raw).is_err());
        let bad_escape = serde_json::Value::from("_sort=%zz");
        assert!(serde_json::from_value::<RedactedQuery>(bad_escape).is_err());
        let redacted = serde_json::Value::from("name=***&_count=10");
        let query: RedactedQuery = serde_json::from_value(redacted).unwrap();
        assert_eq!(query.as_str(), "name=***&_count=10");
    }
}
