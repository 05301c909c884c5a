//! A reference canonicalizer for tests: object keys sorted by their UTF-8
//! bytes, no whitespace, strings escaped as `serde_json` escapes them,
//! integers in decimal.
//!
//! The chain serializes records directly and relies on field declaration
//! order. Tests compare that output with this writer, which sorts keys
//! itself, because the workspace enables `serde_json`'s `preserve_order` and
//! a `Map` keeps insertion order.

use serde_json::Value;

/// Appends the canonical form of `value` to `out`.
///
/// Recursion follows the nesting of `value`. Callers pass only values built
/// from this crate's record types, whose nesting is fixed and shallow.
pub(crate) fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => out.extend_from_slice(number.to_string().as_bytes()),
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
    }
}

/// Writes a JSON string literal. Serializing a `&str` with `serde_json`
/// returns an error only from a failing writer, and a `String` does not
/// fail, so the fallback branch only keeps this function total.
fn write_string(text: &str, out: &mut Vec<u8>) {
    match serde_json::to_string(text) {
        Ok(literal) => out.extend_from_slice(literal.as_bytes()),
        Err(_) => out.extend_from_slice(b"\"\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canonical(value: &Value) -> String {
        let mut out = Vec::new();
        write_canonical(value, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn keys_sorted_without_whitespace() {
        let value = json!({"b": 1, "a": {"z": [true, null], "c": "x"}, "A": false});
        assert_eq!(
            canonical(&value),
            r#"{"A":false,"a":{"c":"x","z":[true,null]},"b":1}"#
        );
    }

    #[test]
    fn insertion_order_does_not_matter() {
        let first = json!({"x": 1, "y": 2});
        let second = json!({"y": 2, "x": 1});
        assert_eq!(canonical(&first), canonical(&second));
    }

    #[test]
    fn strings_are_escaped() {
        let value = json!({"k": "a\"b\\c\n\u{1}é"});
        assert_eq!(canonical(&value), "{\"k\":\"a\\\"b\\\\c\\n\\u0001é\"}");
    }

    #[test]
    fn large_integers_keep_all_digits() {
        let value = json!({"n": u64::MAX});
        assert_eq!(canonical(&value), format!("{{\"n\":{}}}", u64::MAX));
    }
}
