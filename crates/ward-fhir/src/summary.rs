//! The `_summary` and `_elements` views of a resource.
//!
//! Both return a copy of the resource with some elements left out, and tag
//! the copy `SUBSETTED` in `meta.tag` so clients do not mistake it for the
//! whole resource (and do not write it back). Which elements belong to the
//! summary comes from the isSummary flags of the R4 definitions.

use serde_json::{Map, Value, json};

use crate::definitions::{Context, Definitions, TypeKind, definitions};
use crate::search::SummaryMode;

/// System of the `SUBSETTED` tag.
pub const SUBSETTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

/// Code of the tag that marks a resource as incomplete.
pub const SUBSETTED_CODE: &str = "SUBSETTED";

/// Returns the `_summary` view of a resource.
///
/// - `true`: the elements marked isSummary, plus `id`, `meta` and the
///   required (min 1) elements. Inside backbone elements the same filter
///   applies; datatypes are kept whole.
/// - `text`: `id`, `meta`, `text` and the required top-level elements.
/// - `data`: everything but `text`.
/// - `false` and `count`: the resource unchanged (`count` returns no
///   resources at all, so there is nothing to filter).
///
/// Every view other than the unchanged one is tagged `SUBSETTED`. Input
/// that is not an object with a known `resourceType` is returned unchanged
/// for `false` and `count`, and filtered by name only (`id`, `meta`, `text`)
/// otherwise.
pub fn apply_summary(resource: &Value, mode: SummaryMode) -> Value {
    let Some(object) = resource.as_object() else {
        return resource.clone();
    };
    let defs = definitions();
    let context = resource_context(defs, object);
    let filtered = match mode {
        SummaryMode::False | SummaryMode::Count => return resource.clone(),
        SummaryMode::Data => object
            .iter()
            .filter(|(key, _)| key.as_str() != "text" && key.as_str() != "_text")
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        SummaryMode::Text => filter_top_level(defs, context, object, |name, min| {
            matches!(name, "id" | "meta" | "text") || min > 0
        }),
        SummaryMode::True => summary_object(defs, context, object, true),
    };
    let mut out = Value::Object(filtered);
    mark_subsetted(&mut out);
    out
}

/// Returns the `_elements` view of a resource: `resourceType`, `id`, `meta`
/// and the named top-level elements, tagged `SUBSETTED`.
///
/// Names are element names such as `name` or `birthDate`. A choice name
/// such as `value` keeps `valueQuantity` or whichever type is present, and
/// `_name` extension parts go with their element. A `Patient.` prefix that
/// matches the resource type is accepted and ignored.
pub fn apply_elements(resource: &Value, elements: &[String]) -> Value {
    let Some(object) = resource.as_object() else {
        return resource.clone();
    };
    let defs = definitions();
    let context = resource_context(defs, object);
    let resource_type = object
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("");
    let wanted: Vec<&str> = elements
        .iter()
        .map(|name| {
            let name = name.trim();
            name.strip_prefix(resource_type)
                .and_then(|rest| rest.strip_prefix('.'))
                .unwrap_or(name)
        })
        .collect();

    let mut filtered = Map::new();
    for (key, value) in object {
        let name = key.strip_prefix('_').unwrap_or(key);
        let element_name = context
            .and_then(|c| c.by_name.get(name))
            .and_then(|child| defs.elements.get(child.element))
            .map_or(name, |e| e.name.as_str());
        let keep = matches!(key.as_str(), "resourceType" | "id" | "meta" | "_id")
            || wanted.contains(&element_name)
            || wanted.contains(&name);
        if keep {
            filtered.insert(key.clone(), value.clone());
        }
    }
    let mut out = Value::Object(filtered);
    mark_subsetted(&mut out);
    out
}

fn resource_context<'d>(defs: &'d Definitions, object: &Map<String, Value>) -> Option<&'d Context> {
    let resource_type = object.get("resourceType")?.as_str()?;
    if !defs.is_resource_type(resource_type) {
        return None;
    }
    defs.context(resource_type)
}

/// Keeps `resourceType` and the top-level properties whose element passes
/// `keep(name, min)`. Without a context only the names are judged.
fn filter_top_level(
    defs: &Definitions,
    context: Option<&Context>,
    object: &Map<String, Value>,
    keep: impl Fn(&str, u32) -> bool,
) -> Map<String, Value> {
    let mut filtered = Map::new();
    for (key, value) in object {
        let name = key.strip_prefix('_').unwrap_or(key);
        let element = context
            .and_then(|c| c.by_name.get(name))
            .and_then(|child| defs.elements.get(child.element));
        let passes = match element {
            Some(element) => keep(&element.name, element.min),
            None => keep(name, 0),
        };
        if key == "resourceType" || passes {
            filtered.insert(key.clone(), value.clone());
        }
    }
    filtered
}

/// Applies the `_summary=true` filter to one object. It keeps summary and
/// required elements (plus `id` and `meta` at the top level) and recurses
/// into backbone elements.
fn summary_object(
    defs: &Definitions,
    context: Option<&Context>,
    object: &Map<String, Value>,
    top_level: bool,
) -> Map<String, Value> {
    let Some(context) = context else {
        return filter_top_level(defs, None, object, |name, _| matches!(name, "id" | "meta"));
    };
    let mut filtered = Map::new();
    for (key, value) in object {
        if top_level && key == "resourceType" {
            filtered.insert(key.clone(), value.clone());
            continue;
        }
        let name = key.strip_prefix('_').unwrap_or(key);
        let Some(child) = context.by_name.get(name) else {
            continue;
        };
        let Some(element) = defs.elements.get(child.element) else {
            continue;
        };
        let always = top_level && matches!(element.name.as_str(), "id" | "meta");
        if !(element.is_summary || element.min > 0 || always) {
            continue;
        }
        let backbone = element
            .types
            .get(child.type_index)
            .filter(|t| t.code == "BackboneElement")
            .and_then(|t| match t.kind {
                TypeKind::Complex(c) => defs.contexts.get(c),
                _ => None,
            });
        let kept = match backbone {
            Some(inner) => summary_backbone(defs, inner, value),
            None => value.clone(),
        };
        filtered.insert(key.clone(), kept);
    }
    filtered
}

fn summary_backbone(defs: &Definitions, context: &Context, value: &Value) -> Value {
    match value {
        Value::Object(object) => Value::Object(summary_object(defs, Some(context), object, false)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| summary_backbone(defs, context, item))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Adds the `SUBSETTED` tag to `meta.tag` unless it is there. A missing
/// `meta` is added after `id`; a `meta` or `meta.tag` of the wrong JSON type
/// is left alone.
fn mark_subsetted(resource: &mut Value) {
    let Some(object) = resource.as_object_mut() else {
        return;
    };
    let tag = json!({
        "system": SUBSETTED_SYSTEM,
        "code": SUBSETTED_CODE,
        "display": "subsetted",
    });
    if !object.contains_key("meta") {
        let anchor = if object.contains_key("id") {
            "id"
        } else {
            "resourceType"
        };
        let mut rebuilt = Map::new();
        let mut inserted = false;
        for (key, value) in std::mem::take(object) {
            let is_anchor = key == anchor;
            rebuilt.insert(key, value);
            if is_anchor && !inserted {
                rebuilt.insert("meta".to_string(), json!({ "tag": [tag.clone()] }));
                inserted = true;
            }
        }
        if !inserted {
            rebuilt.insert("meta".to_string(), json!({ "tag": [tag] }));
        }
        *object = rebuilt;
        return;
    }
    let Some(meta) = object.get_mut("meta").and_then(Value::as_object_mut) else {
        return;
    };
    let tags = meta
        .entry("tag")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Some(tags) = tags.as_array_mut() else {
        return;
    };
    let present = tags.iter().any(|t| {
        t.get("system").and_then(Value::as_str) == Some(SUBSETTED_SYSTEM)
            && t.get("code").and_then(Value::as_str) == Some(SUBSETTED_CODE)
    });
    if !present {
        tags.push(tag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation() -> Value {
        json!({
            "resourceType": "Observation",
            "id": "bp",
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
            "status": "final",
            "category": [{"text": "vital-signs"}],
            "code": {"text": "blood pressure"},
            "subject": {"reference": "Patient/p1"},
            "valueQuantity": {"value": 1.50, "unit": "mmHg"},
            "_status": {"extension": [{"url": "http://example.org/x", "valueString": "y"}]},
            "note": [{"text": "a note"}],
            "interpretation": [{"text": "normal"}],
            "component": [{
                "code": {"text": "systolic"},
                "valueQuantity": {"value": 120},
                "interpretation": [{"text": "normal"}]
            }]
        })
    }

    fn has_subsetted(value: &Value) -> bool {
        value["meta"]["tag"].as_array().is_some_and(|tags| {
            tags.iter()
                .any(|t| t["system"] == SUBSETTED_SYSTEM && t["code"] == SUBSETTED_CODE)
        })
    }

    #[test]
    fn summary_true_keeps_summary_elements() {
        let out = apply_summary(&observation(), SummaryMode::True);
        assert_eq!(out["resourceType"], "Observation");
        assert_eq!(out["id"], "bp");
        assert_eq!(out["status"], "final");
        assert!(out.get("_status").is_some());
        assert!(out.get("valueQuantity").is_some());
        assert!(out.get("subject").is_some());
        assert!(out.get("text").is_none());
        assert!(out.get("note").is_none());
        assert!(out.get("interpretation").is_none());
        assert!(has_subsetted(&out));
    }

    #[test]
    fn summary_true_filters_backbone_children() {
        let out = apply_summary(&observation(), SummaryMode::True);
        let component = &out["component"][0];
        assert!(component.get("code").is_some());
        assert!(component.get("valueQuantity").is_some());
        assert!(component.get("interpretation").is_none());
    }

    #[test]
    fn summary_keeps_number_text() {
        let resource: Value = serde_json::from_str(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1.50}}"#,
        )
        .expect("json");
        let out = apply_summary(&resource, SummaryMode::True);
        assert_eq!(out["valueQuantity"]["value"].to_string(), "1.50");
    }

    #[test]
    fn summary_text_keeps_text_and_mandatory() {
        let out = apply_summary(&observation(), SummaryMode::Text);
        assert!(out.get("text").is_some());
        assert_eq!(out["status"], "final");
        assert!(out.get("code").is_some());
        assert!(out.get("valueQuantity").is_none());
        assert!(out.get("subject").is_none());
        assert!(has_subsetted(&out));
    }

    #[test]
    fn summary_data_drops_text() {
        let out = apply_summary(&observation(), SummaryMode::Data);
        assert!(out.get("text").is_none());
        assert!(out.get("note").is_some());
        assert!(has_subsetted(&out));
    }

    #[test]
    fn summary_false_is_unchanged() {
        let resource = observation();
        assert_eq!(apply_summary(&resource, SummaryMode::False), resource);
        assert_eq!(apply_summary(&resource, SummaryMode::Count), resource);
    }

    #[test]
    fn meta_is_added_after_id() {
        let out = apply_summary(&observation(), SummaryMode::True);
        let keys: Vec<&str> = out
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.get(..3), Some(&["resourceType", "id", "meta"][..]));
    }

    #[test]
    fn subsetted_tag_not_duplicated() {
        let mut resource = observation();
        resource["meta"] = json!({"versionId": "1", "tag": [{"system": SUBSETTED_SYSTEM, "code": SUBSETTED_CODE}]});
        let out = apply_summary(&resource, SummaryMode::Data);
        assert_eq!(out["meta"]["tag"].as_array().map(Vec::len), Some(1));
        assert_eq!(out["meta"]["versionId"], "1");
    }

    #[test]
    fn elements_keeps_named_and_choice() {
        let elements = vec!["value".to_string(), "Observation.status".to_string()];
        let out = apply_elements(&observation(), &elements);
        assert_eq!(out["resourceType"], "Observation");
        assert_eq!(out["id"], "bp");
        assert!(out.get("valueQuantity").is_some());
        assert_eq!(out["status"], "final");
        assert!(out.get("_status").is_some());
        assert!(out.get("code").is_none());
        assert!(out.get("text").is_none());
        assert!(has_subsetted(&out));
    }

    #[test]
    fn elements_with_unknown_type_keeps_names() {
        let resource = json!({"resourceType": "Nope", "id": "1", "a": 1, "b": 2});
        let out = apply_elements(&resource, &["a".to_string()]);
        assert_eq!(out["a"], 1);
        assert!(out.get("b").is_none());
        assert!(has_subsetted(&out));
    }

    #[test]
    fn non_object_unchanged() {
        let value = json!([1, 2]);
        assert_eq!(apply_summary(&value, SummaryMode::True), value);
        assert_eq!(apply_elements(&value, &[]), value);
    }
}
