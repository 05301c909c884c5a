//! Strict parsing of FHIR JSON request bodies.
//!
//! `serde_json` keeps the last value when an object repeats a key, so
//! `{"gender":"male","gender":"female"}` would be stored as female. The FHIR
//! JSON format allows each property once, and a client or proxy that reads
//! the first value would see a different resource than the server stores.
//! [`parse_json_strict`] rejects such documents instead.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::outcome::{IssueType, OperationOutcome, OutcomeIssue};

/// The maximum nesting of JSON arrays and objects, counting each level of
/// either. It is the limit `serde_json` enforces on its own.
pub const MAX_JSON_DEPTH: usize = 128;

/// Property names longer than this many characters are cut in messages.
const MAX_SHOWN_KEY: usize = 64;

/// Parses a JSON document into a [`Value`], rejecting any object that
/// repeats a key.
///
/// Numbers keep their digits as written (`1.50` stays `1.50`, and `1e999`
/// stays `1e+999` rather than turning into infinity), as
/// `serde_json::from_slice` does with the `arbitrary_precision` feature.
///
/// # Errors
///
/// Returns a `structure` OperationOutcome, to send with status 400, when the
/// bytes are not valid JSON (with the line and column), when arrays and
/// objects nest more than [`MAX_JSON_DEPTH`] levels, or when an object
/// repeats a key (naming the key and the path of the object, such as
/// `contact[0].name`). Messages never quote values.
pub fn parse_json_strict(bytes: &[u8]) -> Result<Value, OperationOutcome> {
    // The duplicate check walks the document without building anything, so
    // the Value itself comes from serde_json, which alone knows how to keep
    // number precision.
    let mut state = CheckState::default();
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let checked = DuplicateCheck { state: &mut state }
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end());
    if let Err(err) = checked {
        return Err(match state.duplicate {
            Some(duplicate) => duplicate_outcome(&duplicate),
            None => syntax_outcome(&err),
        });
    }
    serde_json::from_slice(bytes).map_err(|err| syntax_outcome(&err))
}

fn syntax_outcome(err: &serde_json::Error) -> OperationOutcome {
    let diagnostics = if err.to_string().contains("recursion limit") {
        format!("the JSON nests arrays and objects more than {MAX_JSON_DEPTH} levels deep")
    } else {
        format!(
            "the body is not valid JSON (line {}, column {})",
            err.line(),
            err.column()
        )
    };
    OperationOutcome::error(IssueType::Structure, diagnostics)
}

fn duplicate_outcome(duplicate: &Duplicate) -> OperationOutcome {
    let location = if duplicate.path.is_empty() {
        "the top-level object".to_owned()
    } else {
        duplicate.path.clone()
    };
    let key = shown_key(&duplicate.key);
    let expression = if duplicate.path.is_empty() {
        key.clone()
    } else {
        format!("{}.{key}", duplicate.path)
    };
    OperationOutcome::single(
        OutcomeIssue::error(
            IssueType::Structure,
            format!(
                "the JSON key '{key}' appears more than once in {location}; \
                 each property may appear only once in a FHIR JSON object"
            ),
        )
        .at(expression),
    )
}

fn shown_key(key: &str) -> String {
    key.chars().take(MAX_SHOWN_KEY).collect()
}

/// The first repeated key found and the path of its object.
struct Duplicate {
    key: String,
    path: String,
}

/// The walk's position and result, shared by the nested visitors.
#[derive(Default)]
struct CheckState {
    /// The path of the value being read, such as `name[0].given`.
    path: String,
    duplicate: Option<Duplicate>,
}

/// Walks one JSON value and fails on the first object with a repeated key.
struct DuplicateCheck<'s> {
    state: &'s mut CheckState,
}

impl<'de> DeserializeSeed<'de> for DuplicateCheck<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DuplicateCheck<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mark = self.state.path.len();
        let mut index = 0_usize;
        loop {
            self.state.path.truncate(mark);
            self.state.path.push_str(&format!("[{index}]"));
            let item = DuplicateCheck {
                state: &mut *self.state,
            };
            if seq.next_element_seed(item)?.is_none() {
                break;
            }
            index += 1;
        }
        self.state.path.truncate(mark);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // With `arbitrary_precision`, serde_json also hands numbers over as
        // a one-entry map, which passes this check unchanged.
        let mark = self.state.path.len();
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                self.state.path.truncate(mark);
                self.state.duplicate = Some(Duplicate {
                    key,
                    path: self.state.path.clone(),
                });
                return Err(de::Error::custom("duplicate object key"));
            }
            self.state.path.truncate(mark);
            if mark > 0 {
                self.state.path.push('.');
            }
            self.state.path.push_str(&shown_key(&key));
            seen.insert(key);
            map.next_value_seed(DuplicateCheck {
                state: &mut *self.state,
            })?;
        }
        self.state.path.truncate(mark);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnostics(outcome: &OperationOutcome) -> String {
        outcome
            .issues
            .first()
            .map(|issue| issue.diagnostics.clone())
            .unwrap_or_default()
    }

    fn expression(outcome: &OperationOutcome) -> Vec<String> {
        outcome
            .issues
            .first()
            .map(|issue| issue.expression.clone())
            .unwrap_or_default()
    }

    #[test]
    fn top_level_duplicate_rejected() {
        let body = br#"{"resourceType":"Patient","gender":"male","gender":"female"}"#;
        let Err(outcome) = parse_json_strict(body) else {
            panic!("a repeated key was accepted");
        };
        let issue = outcome.issues.first();
        assert_eq!(issue.map(|i| i.code), Some(IssueType::Structure));
        let text = diagnostics(&outcome);
        assert!(text.contains("'gender'"), "names the key: {text}");
        assert!(!text.contains("female"), "quotes no value: {text}");
        assert_eq!(expression(&outcome), ["gender"]);
    }

    #[test]
    fn nested_duplicate_names_path() {
        let body = br#"{"resourceType":"Patient","contact":[{"gender":"male"},
            {"name":{"family":"A","given":["B"],"family":"C"}}]}"#;
        let Err(outcome) = parse_json_strict(body) else {
            panic!("a repeated key was accepted");
        };
        let text = diagnostics(&outcome);
        assert!(text.contains("'family'"), "names the key: {text}");
        assert!(text.contains("contact[1].name"), "names the path: {text}");
        assert_eq!(expression(&outcome), ["contact[1].name.family"]);
    }

    #[test]
    fn same_key_in_sibling_objects_accepted() {
        let body = br#"{"name":[{"family":"A"},{"family":"B"}],"contact":{"name":{"family":"C"}}}"#;
        let Ok(value) = parse_json_strict(body) else {
            panic!("valid JSON was rejected");
        };
        assert_eq!(value["name"][1]["family"], "B");
        assert_eq!(value["contact"]["name"]["family"], "C");
    }

    #[test]
    fn number_text_preserved() {
        let body = br#"{"a":1.50,"b":1e999,"c":[0.10,-0,12345678901234567890123]}"#;
        let Ok(value) = parse_json_strict(body) else {
            panic!("valid JSON was rejected");
        };
        let Ok(plain) = serde_json::from_slice::<Value>(body) else {
            panic!("serde_json rejected the document");
        };
        assert_eq!(value, plain);
        assert_eq!(value["a"].to_string(), "1.50");
        // serde_json writes the exponent as `1e+999`, but never turns the
        // number into infinity or null.
        assert_eq!(value["b"].to_string(), "1e+999");
        assert_eq!(value["c"][0].to_string(), "0.10");
        assert_eq!(value["c"][2].to_string(), "12345678901234567890123");
    }

    #[test]
    fn deep_nesting_rejected() {
        let depth = MAX_JSON_DEPTH + 1;
        let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let Err(outcome) = parse_json_strict(body.as_bytes()) else {
            panic!("JSON nested {depth} deep was accepted");
        };
        let text = diagnostics(&outcome);
        assert!(text.contains("128"), "names the limit: {text}");

        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse_json_strict(ok.as_bytes()).is_ok());
    }

    #[test]
    fn invalid_json_reports_position() {
        for body in [&b"{\"a\":"[..], b"{\"a\":1} x", b"", b"{'a':1}"] {
            let Err(outcome) = parse_json_strict(body) else {
                panic!("invalid JSON was accepted");
            };
            let text = diagnostics(&outcome);
            assert!(text.contains("not valid JSON"), "{text}");
            assert!(text.contains("line 1"), "{text}");
        }
    }
}
