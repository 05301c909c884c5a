//! Index extraction: evaluates every search parameter of a resource's type
//! and turns the resulting nodes into [`IndexEntry`] values.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use serde_json::{Map, Value};

use super::params::{SearchParamDef, search_params};
use super::primitives::{normalize_string, parse_date_range, parse_decimal, parse_reference};
use super::{IndexEntry, IndexValue, ParamType};
use crate::fhirpath::{Item, Node, infer_type};
use crate::outcome::{IssueType, OperationOutcome};

/// The maximum number of component combinations one composite base node
/// yields, so a node with many codings and many values stays bounded.
const MAX_COMPOSITE_COMBINATIONS: usize = 256;

/// The maximum number of index entries one resource may produce. Each entry
/// becomes a row in the store's search index, so a resource over the limit
/// (such as a Patient with thousands of names) is rejected by
/// [`check_index_size`] instead of being written.
pub const MAX_INDEX_ENTRIES: usize = 10_000;

/// Extracts the index entries of every search parameter of the resource's
/// type, including the shared `_id`, `_lastUpdated`, `_tag`, `_security`,
/// `_profile` and `_source`. Returns nothing for a value without a known
/// `resourceType`.
///
/// Contained references (`#id`) are not indexed. Special parameters
/// (`Location.near`) are not indexed either.
pub fn index_resource(resource: &Value) -> Vec<IndexEntry> {
    let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
        return Vec::new();
    };
    if super::static_resource_type(resource_type).is_none() {
        return Vec::new();
    }
    let mut entries = Entries::default();
    for def in search_params(resource_type) {
        extract_param(resource, def, &mut entries);
    }
    entries.list
}

/// Checks that a resource produces at most [`MAX_INDEX_ENTRIES`] index
/// entries, so it can be written.
///
/// # Errors
///
/// Returns a `too-costly` OperationOutcome that names the limit when the
/// resource produces more entries.
pub fn check_index_size(resource: &Value) -> Result<(), OperationOutcome> {
    let count = index_resource(resource).len();
    if count <= MAX_INDEX_ENTRIES {
        return Ok(());
    }
    Err(OperationOutcome::error(
        IssueType::TooCostly,
        format!(
            "the resource produces {count} search index entries, more than the limit of \
             {MAX_INDEX_ENTRIES}; split it into smaller resources or remove repeated elements"
        ),
    ))
}

/// Index entries without repeats, in the order they were first extracted.
///
/// Entries are grouped by a hash that agrees with `PartialEq`, so adding one
/// costs a hash lookup instead of a scan of every entry so far.
#[derive(Default)]
struct Entries {
    list: Vec<IndexEntry>,
    by_hash: HashMap<u64, Vec<usize>>,
}

impl Entries {
    fn push(&mut self, entry: IndexEntry) {
        let mut hasher = DefaultHasher::new();
        entry.param.hash(&mut hasher);
        hash_value(&entry.value, &mut hasher);
        let positions = self.by_hash.entry(hasher.finish()).or_default();
        if positions
            .iter()
            .any(|&position| self.list.get(position) == Some(&entry))
        {
            return;
        }
        positions.push(self.list.len());
        self.list.push(entry);
    }
}

/// Hashes the text and integer fields of an index value. Floating-point
/// fields are left out, because values that compare equal (`0.0` and
/// `-0.0`) can differ in their bits.
fn hash_value(value: &IndexValue, hasher: &mut impl Hasher) {
    std::mem::discriminant(value).hash(hasher);
    match value {
        IndexValue::String { normalized, exact } => (normalized, exact).hash(hasher),
        IndexValue::Token { system, code, text } => (system, code, text).hash(hasher),
        IndexValue::Reference {
            target_type,
            id,
            url,
        } => (target_type, id, url).hash(hasher),
        IndexValue::Date { low, high } => (low, high).hash(hasher),
        IndexValue::Number { .. } => {}
        IndexValue::Quantity {
            system, code, unit, ..
        } => (system, code, unit).hash(hasher),
        IndexValue::Uri { value } => value.hash(hasher),
        IndexValue::Composite { components } => {
            for (code, component) in components {
                code.hash(hasher);
                hash_value(component, hasher);
            }
        }
    }
}

fn extract_param(resource: &Value, def: &SearchParamDef, entries: &mut Entries) {
    let Some(expression) = def.compiled() else {
        return;
    };
    let items = expression.evaluate(resource);
    let mut values = Vec::new();
    if def.param_type == ParamType::Composite {
        for item in &items {
            if let Item::Node(node) = item {
                composite_values(resource, def, *node, &mut values);
            }
        }
    } else {
        for item in &items {
            item_values(def.param_type, item, &mut values);
        }
    }
    if def.param_type == ParamType::Token
        && let Some(implied) = implied_code_system(def)
    {
        for value in &mut values {
            if let IndexValue::Token { system, .. } = value
                && system.is_none()
            {
                *system = Some(implied.to_owned());
            }
        }
    }
    for value in values {
        entries.push(IndexEntry {
            param: def.code.clone(),
            value,
        });
    }
}

/// Returns the code system that a token parameter's values belong to when
/// the parameter selects elements of type `code` whose required value set
/// draws on exactly one code system, such as `Patient.gender` and
/// `http://hl7.org/fhir/administrative-gender`. A `code` carries no system
/// of its own, so without this `gender=system|female` would match nothing.
///
/// Only expressions made of plain paths (`Patient.gender`, or a union of
/// such paths that all imply the same system) are resolved. Any other
/// expression yields `None`, and its tokens are indexed without a system.
fn implied_code_system(def: &SearchParamDef) -> Option<&'static str> {
    let expression = def.expression.as_deref()?;
    let mut implied = None;
    for path in expression.split('|').map(str::trim) {
        let simple = path.chars().all(|c| c.is_ascii_alphanumeric() || c == '.');
        if !simple || !path.starts_with(&format!("{}.", def.base)) {
            return None;
        }
        let element = crate::definitions::element(path)?;
        if element.types.len() != 1 || element.types.first()?.code != "code" {
            return None;
        }
        let mut systems = element.required_codes()?.systems();
        let system = systems.next()?;
        if systems.next().is_some() || implied.is_some_and(|seen| seen != system) {
            return None;
        }
        implied = Some(system);
    }
    implied
}

fn composite_values(
    resource: &Value,
    def: &SearchParamDef,
    base: Node<'_>,
    out: &mut Vec<IndexValue>,
) {
    let mut combinations: Vec<Vec<(String, IndexValue)>> = vec![Vec::new()];
    for component in &def.components {
        let Some(expression) = component.compiled() else {
            return;
        };
        let mut values = Vec::new();
        for item in expression.evaluate_on(resource, base) {
            item_values(component.param_type, &item, &mut values);
        }
        if values.is_empty() {
            return;
        }
        let mut next = Vec::new();
        'outer: for prefix in &combinations {
            for value in &values {
                if next.len() >= MAX_COMPOSITE_COMBINATIONS {
                    break 'outer;
                }
                let mut combination = prefix.clone();
                combination.push((component.code.clone(), value.clone()));
                next.push(combination);
            }
        }
        combinations = next;
    }
    out.extend(
        combinations
            .into_iter()
            .map(|components| IndexValue::Composite { components }),
    );
}

/// Converts one evaluation result into index values for a parameter type.
fn item_values(param_type: ParamType, item: &Item<'_>, out: &mut Vec<IndexValue>) {
    match item {
        Item::Node(node) => node_values(param_type, *node, out),
        Item::Boolean(value) if param_type == ParamType::Token => out.push(IndexValue::Token {
            system: None,
            code: value.to_string(),
            text: None,
        }),
        Item::String(text) => string_item(param_type, text, out),
        _ => {}
    }
}

fn string_item(param_type: ParamType, text: &str, out: &mut Vec<IndexValue>) {
    let value = Value::String(text.to_owned());
    node_values(
        param_type,
        Node {
            value: &value,
            fhir_type: None,
        },
        out,
    );
}

fn node_values(param_type: ParamType, node: Node<'_>, out: &mut Vec<IndexValue>) {
    let fhir_type = node.fhir_type.or_else(|| infer_type("", node.value));
    match param_type {
        ParamType::String => string_values(node.value, fhir_type, out),
        ParamType::Token => token_values(node.value, fhir_type, out),
        ParamType::Date => date_values(node.value, fhir_type, out),
        ParamType::Number => number_values(node.value, out),
        ParamType::Quantity => quantity_values(node.value, fhir_type, out),
        ParamType::Reference => reference_values(node.value, out),
        ParamType::Uri => {
            if let Some(text) = node.value.as_str() {
                out.push(IndexValue::Uri {
                    value: text.to_owned(),
                });
            }
        }
        ParamType::Composite | ParamType::Special => {}
    }
}

fn push_string(text: &str, out: &mut Vec<IndexValue>) {
    let normalized = normalize_string(text);
    if normalized.is_empty() {
        return;
    }
    out.push(IndexValue::String {
        normalized,
        exact: text.to_owned(),
    });
}

fn strings_of<'v>(map: &'v Map<String, Value>, field: &str) -> impl Iterator<Item = &'v str> {
    let value = map.get(field);
    let single = value.and_then(Value::as_str);
    let many = value
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    single.into_iter().chain(many)
}

const HUMAN_NAME_PARTS: &[&str] = &["family", "given", "text", "prefix", "suffix"];
const ADDRESS_PARTS: &[&str] = &[
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
    "text",
];

fn string_values(value: &Value, fhir_type: Option<&str>, out: &mut Vec<IndexValue>) {
    let map = match value {
        Value::String(text) => return push_string(text, out),
        Value::Object(map) => map,
        _ => return,
    };
    let parts: &[&str] = match fhir_type {
        Some("HumanName") => HUMAN_NAME_PARTS,
        Some("Address") => ADDRESS_PARTS,
        Some("CodeableConcept" | "Coding") => &["text", "display"],
        Some("Annotation") => &["text"],
        _ => &["text", "display", "value"],
    };
    for part in parts {
        for text in strings_of(map, part) {
            push_string(text, out);
        }
    }
}

fn text_of(map: &Map<String, Value>, field: &str) -> Option<String> {
    map.get(field)
        .and_then(Value::as_str)
        .map(normalize_string)
        .filter(|t| !t.is_empty())
}

fn token_values(value: &Value, fhir_type: Option<&str>, out: &mut Vec<IndexValue>) {
    let map = match value {
        Value::String(code) => {
            if !code.is_empty() {
                out.push(IndexValue::Token {
                    system: None,
                    code: code.clone(),
                    text: None,
                });
            }
            return;
        }
        Value::Bool(flag) => {
            out.push(IndexValue::Token {
                system: None,
                code: flag.to_string(),
                text: None,
            });
            return;
        }
        Value::Object(map) => map,
        _ => return,
    };
    match fhir_type {
        Some("CodeableConcept") => codeable_concept_tokens(map, out),
        Some("Coding") => coding_token(map, None, out),
        Some("Identifier") => {
            if let Some(code) = map.get("value").and_then(Value::as_str) {
                let text = map
                    .get("type")
                    .and_then(Value::as_object)
                    .and_then(|t| text_of(t, "text"));
                out.push(IndexValue::Token {
                    system: map.get("system").and_then(Value::as_str).map(str::to_owned),
                    code: code.to_owned(),
                    text,
                });
            }
        }
        Some("ContactPoint") => {
            if let Some(code) = map.get("value").and_then(Value::as_str) {
                out.push(IndexValue::Token {
                    system: None,
                    code: code.to_owned(),
                    text: None,
                });
            }
        }
        _ if map.contains_key("code") => coding_token(map, None, out),
        _ if map.get("value").is_some_and(Value::is_string) => {
            token_values(value, Some("Identifier"), out);
        }
        _ => {}
    }
}

fn codeable_concept_tokens(map: &Map<String, Value>, out: &mut Vec<IndexValue>) {
    let concept_text = text_of(map, "text");
    let codings = map.get("coding").and_then(Value::as_array);
    for coding in codings.into_iter().flatten() {
        if let Some(coding) = coding.as_object() {
            coding_token(coding, concept_text.clone(), out);
        }
    }
    // A concept with text only still answers `:text` searches: its entry has
    // an empty code, which no code search matches.
    if codings.is_none_or(|c| c.is_empty())
        && let Some(text) = concept_text
    {
        out.push(IndexValue::Token {
            system: None,
            code: String::new(),
            text: Some(text),
        });
    }
}

/// Pushes a Coding as a token. Its `:text` is the coding's display, or the
/// enclosing CodeableConcept's text when the coding has no display.
fn coding_token(map: &Map<String, Value>, concept_text: Option<String>, out: &mut Vec<IndexValue>) {
    let Some(code) = map.get("code").and_then(Value::as_str) else {
        if let Some(text) = concept_text.or_else(|| text_of(map, "display")) {
            out.push(IndexValue::Token {
                system: map.get("system").and_then(Value::as_str).map(str::to_owned),
                code: String::new(),
                text: Some(text),
            });
        }
        return;
    };
    out.push(IndexValue::Token {
        system: map.get("system").and_then(Value::as_str).map(str::to_owned),
        code: code.to_owned(),
        text: text_of(map, "display").or(concept_text),
    });
}

fn date_values(value: &Value, fhir_type: Option<&str>, out: &mut Vec<IndexValue>) {
    let map = match value {
        Value::String(text) => {
            if let Some((low, high)) = parse_date_range(text) {
                out.push(IndexValue::Date { low, high });
            }
            return;
        }
        Value::Object(map) => map,
        _ => return,
    };
    match fhir_type {
        Some("Timing") => {
            for event in strings_of(map, "event") {
                date_values(&Value::String(event.to_owned()), None, out);
            }
            if let Some(bounds) = map.get("repeat").and_then(|r| r.get("boundsPeriod")) {
                date_values(bounds, Some("Period"), out);
            }
        }
        _ if map.contains_key("start") || map.contains_key("end") => {
            let start = map.get("start").and_then(Value::as_str);
            let end = map.get("end").and_then(Value::as_str);
            let low = start.and_then(parse_date_range).map(|(low, _)| low);
            let high = end.and_then(parse_date_range).map(|(_, high)| high);
            if start.is_some() && low.is_none() || end.is_some() && high.is_none() {
                return;
            }
            out.push(IndexValue::Date {
                low: low.unwrap_or(i64::MIN),
                high: high.unwrap_or(i64::MAX),
            });
        }
        _ => {}
    }
}

/// Returns a JSON number's text as written (numbers keep their text, so
/// precision survives).
fn number_text(value: &Value) -> Option<String> {
    match value {
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn number_values(value: &Value, out: &mut Vec<IndexValue>) {
    let Some(decimal) = number_text(value).as_deref().and_then(parse_decimal) else {
        return;
    };
    out.push(IndexValue::Number {
        value: decimal.value,
        low: decimal.low,
        high: decimal.high,
    });
}

fn quantity_values(value: &Value, fhir_type: Option<&str>, out: &mut Vec<IndexValue>) {
    let Value::Object(map) = value else {
        return;
    };
    let unit_field = |m: &Map<String, Value>, field: &str| {
        m.get(field).and_then(Value::as_str).map(str::to_owned)
    };
    if fhir_type == Some("Range") {
        // A Range is indexed as one quantity that spans from the low bound to
        // the high bound, with the units of whichever bound is present.
        let low = map.get("low").and_then(Value::as_object);
        let high = map.get("high").and_then(Value::as_object);
        let bound = |b: Option<&Map<String, Value>>| {
            b.and_then(|b| b.get("value"))
                .and_then(number_text)
                .as_deref()
                .and_then(parse_decimal)
        };
        let (low_value, high_value) = (bound(low), bound(high));
        let Some(units) = low.or(high) else {
            return;
        };
        let value = low_value.or(high_value).map_or(f64::NAN, |d| d.value);
        out.push(IndexValue::Quantity {
            value,
            low: low_value.map_or(f64::NEG_INFINITY, |d| d.value),
            high: high_value.map_or(f64::INFINITY, |d| d.value),
            system: unit_field(units, "system"),
            code: unit_field(units, "code"),
            unit: unit_field(units, "unit"),
        });
        return;
    }
    let Some(decimal) = map
        .get("value")
        .and_then(number_text)
        .as_deref()
        .and_then(parse_decimal)
    else {
        return;
    };
    let (code, unit) = if map.contains_key("currency") {
        (unit_field(map, "currency"), unit_field(map, "currency"))
    } else {
        (unit_field(map, "code"), unit_field(map, "unit"))
    };
    out.push(IndexValue::Quantity {
        value: decimal.value,
        low: decimal.low,
        high: decimal.high,
        system: unit_field(map, "system"),
        code,
        unit,
    });
}

/// Indexes a Reference (or a canonical or uri string). A Reference's
/// `identifier` is indexed as a token entry under the same parameter, for
/// the `:identifier` modifier.
fn reference_values(value: &Value, out: &mut Vec<IndexValue>) {
    let map = match value {
        Value::String(text) => {
            if let Some(parts) = parse_reference(text) {
                out.push(IndexValue::Reference {
                    target_type: parts.target_type,
                    id: parts.id,
                    url: parts.url,
                });
            }
            return;
        }
        Value::Object(map) => map,
        _ => return,
    };
    if let Some(identifier) = map.get("identifier") {
        token_values(identifier, Some("Identifier"), out);
    }
    let Some(parts) = map
        .get("reference")
        .and_then(Value::as_str)
        .and_then(parse_reference)
    else {
        return;
    };
    let declared = map.get("type").and_then(Value::as_str).map(str::to_owned);
    out.push(IndexValue::Reference {
        target_type: parts.target_type.or(declared),
        id: parts.id,
        url: parts.url,
    });
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;

    fn patient_with_names(count: usize) -> Value {
        let names: Vec<Value> = (0..count)
            .map(|i| json!({"family": format!("Family{i}"), "given": [format!("Given{i}")]}))
            .collect();
        json!({"resourceType": "Patient", "name": names})
    }

    #[test]
    fn many_names_all_indexed() {
        // 8,000 names took 37 s in a debug build while every new entry was
        // compared with all earlier ones; the benchmark tracks speed, this
        // test that every distinct value is still indexed once.
        let resource = patient_with_names(8_000);
        let entries = index_resource(&resource);
        let families = entries.iter().filter(|e| e.param == "family").count();
        assert_eq!(families, 8_000);
    }

    #[test]
    fn repeated_values_indexed_once() {
        let resource = json!({
            "resourceType": "Patient",
            "name": [{"family": "Chalmers"}, {"family": "Chalmers"}, {"family": "Windsor"}],
            "identifier": [
                {"system": "urn:a", "value": "1"},
                {"system": "urn:a", "value": "1"},
                {"system": "urn:b", "value": "1"}
            ]
        });
        let entries = index_resource(&resource);
        let families = entries.iter().filter(|e| e.param == "family").count();
        let identifiers = entries.iter().filter(|e| e.param == "identifier").count();
        assert_eq!(families, 2);
        assert_eq!(identifiers, 2);
    }

    #[test]
    fn index_size_over_limit_rejected() {
        // Each name yields entries for name, family, given and phonetic.
        let resource = patient_with_names(MAX_INDEX_ENTRIES / 2);
        assert!(index_resource(&resource).len() > MAX_INDEX_ENTRIES);

        let Err(outcome) = check_index_size(&resource) else {
            panic!("a resource over the limit was accepted");
        };
        let issue = outcome.issues.first();
        assert_eq!(issue.map(|i| i.code), Some(IssueType::TooCostly));
        let message = issue.map(|i| i.diagnostics.clone()).unwrap_or_default();
        assert!(message.contains("10000"), "names the limit: {message}");
    }

    fn token_systems(entries: &[IndexEntry], param: &str) -> Vec<(Option<String>, String)> {
        entries
            .iter()
            .filter(|e| e.param == param)
            .filter_map(|e| match &e.value {
                IndexValue::Token { system, code, .. } => Some((system.clone(), code.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn required_code_indexed_with_system() {
        let patient = json!({"resourceType": "Patient", "gender": "female"});
        let entries = index_resource(&patient);
        assert_eq!(
            token_systems(&entries, "gender"),
            [(
                Some("http://hl7.org/fhir/administrative-gender".to_owned()),
                "female".to_owned()
            )]
        );

        let observation = json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"}
        });
        let entries = index_resource(&observation);
        assert_eq!(
            token_systems(&entries, "status"),
            [(
                Some("http://hl7.org/fhir/observation-status".to_owned()),
                "final".to_owned()
            )]
        );
    }

    #[test]
    fn other_tokens_keep_their_system() {
        let patient = json!({
            "resourceType": "Patient",
            "identifier": [{"value": "A1"}],
            "maritalStatus": {"coding": [{"code": "M"}]},
            "active": true
        });
        let entries = index_resource(&patient);
        assert_eq!(
            token_systems(&entries, "identifier"),
            [(None, "A1".to_owned())]
        );
        assert_eq!(
            token_systems(&entries, "active"),
            [(None, "true".to_owned())]
        );
    }

    #[test]
    fn index_size_within_limit_accepted() {
        assert!(check_index_size(&patient_with_names(10)).is_ok());
    }
}
