//! FHIR message Bundles: the form checks of a request, the transaction
//! Bundle that files a received message, and the response message that
//! acknowledges it.

use std::collections::HashMap;

use serde_json::{Value, json};

/// Tag system of the flags this crate puts on filed resources.
pub const TAG_SYSTEM: &str = "urn:ward:exchange";
/// Tag code of a Patient created from a received message because no
/// Patient with its identifier existed; a person must review it.
pub const TAG_NEEDS_REVIEW: &str = "patient-needs-review";

/// Checks the shape of a message Bundle: `type` `message` and a
/// MessageHeader as the first entry. Returns the MessageHeader.
///
/// # Errors
///
/// A message naming the element that fails, with its FHIRPath.
pub fn check_message_bundle(bundle: &Value) -> Result<&Value, (String, &'static str)> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(("the message must be a Bundle".to_owned(), "resourceType"));
    }
    if bundle.get("type").and_then(Value::as_str) != Some("message") {
        return Err((
            "a message Bundle has type 'message'".to_owned(),
            "Bundle.type",
        ));
    }
    let header = bundle
        .pointer("/entry/0/resource")
        .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("MessageHeader"))
        .ok_or((
            "the first entry of a message Bundle must be a MessageHeader".to_owned(),
            "Bundle.entry[0].resource",
        ))?;
    Ok(header)
}

/// Returns the id of the MessageHeader of a message Bundle.
pub fn header_id(bundle: &Value) -> Option<&str> {
    bundle
        .pointer("/entry/0/resource/id")
        .and_then(Value::as_str)
}

/// Converts a received message Bundle to a transaction Bundle that files
/// every entry except the MessageHeader. Each resource is created anew
/// (with `meta.source` naming the sender), references between entries are
/// rewritten to `urn:uuid:` full URLs, and a Patient is matched by its
/// first identifier (`ifNoneExist`). A Patient that no identifier matches
/// is created with the [`TAG_NEEDS_REVIEW`] tag, never merged silently.
pub fn filing_transaction(bundle: &Value, sender_org: &str) -> Value {
    let entries = bundle
        .get("entry")
        .and_then(Value::as_array)
        .map(|entries| entries.iter().skip(1).collect::<Vec<_>>())
        .unwrap_or_default();

    // Map every way an entry may be referenced to its new urn:uuid.
    let mut targets = HashMap::new();
    let mut planned = Vec::new();
    for entry in entries {
        let Some(resource) = entry.get("resource").filter(|r| r.is_object()) else {
            continue;
        };
        let resource_type = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let urn = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        if let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str) {
            targets.insert(full_url.to_owned(), urn.clone());
        }
        if let Some(id) = resource.get("id").and_then(Value::as_str) {
            targets.insert(format!("{resource_type}/{id}"), urn.clone());
        }
        planned.push((resource.clone(), resource_type, urn));
    }

    let mut transaction = Vec::new();
    for (mut resource, resource_type, urn) in planned {
        rewrite_references(&mut resource, &targets);
        if let Some(object) = resource.as_object_mut() {
            object.remove("id");
            let meta = object.entry("meta").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                meta.remove("versionId");
                meta.remove("lastUpdated");
                meta.insert(
                    "source".to_owned(),
                    json!(format!("urn:ward:org:{sender_org}")),
                );
            }
        }
        let mut request = json!({ "method": "POST", "url": resource_type });
        if resource_type == "Patient" {
            if let Some(search) = identifier_search(&resource) {
                request["ifNoneExist"] = json!(search);
            }
            push_tag(
                &mut resource,
                TAG_NEEDS_REVIEW,
                "Created from a received message: no Patient had its identifier",
            );
        }
        transaction.push(json!({ "fullUrl": urn, "resource": resource, "request": request }));
    }
    json!({ "resourceType": "Bundle", "type": "transaction", "entry": transaction })
}

/// Returns `identifier=SYSTEM|VALUE` for the first identifier with both.
fn identifier_search(patient: &Value) -> Option<String> {
    patient
        .get("identifier")?
        .as_array()?
        .iter()
        .find_map(|identifier| {
            let system = identifier.get("system")?.as_str()?;
            let value = identifier.get("value")?.as_str()?;
            Some(format!(
                "identifier={}|{}",
                percent_encode(system),
                percent_encode(value)
            ))
        })
}

/// Percent-encodes every byte outside the URL unreserved set.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn push_tag(resource: &mut Value, code: &str, display: &str) {
    let tag = json!({ "system": TAG_SYSTEM, "code": code, "display": display });
    if let Some(meta) = resource.get_mut("meta").and_then(Value::as_object_mut) {
        let tags = meta.entry("tag").or_insert_with(|| json!([]));
        if let Some(tags) = tags.as_array_mut() {
            tags.push(tag);
        }
    }
}

/// Replaces every `reference` value found in `targets`.
fn rewrite_references(value: &mut Value, targets: &HashMap<String, String>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object.iter_mut() {
                if key == "reference"
                    && let Some(target) = child.as_str().and_then(|r| targets.get(r))
                {
                    *child = json!(target);
                } else {
                    rewrite_references(child, targets);
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| rewrite_references(item, targets)),
        _ => {}
    }
}

/// Builds the response message to request `request`: a message Bundle
/// whose MessageHeader.response names the request's MessageHeader id and
/// `code` (`ok` or `fatal-error`), with `outcome` as the focus on error.
pub fn response_bundle(
    our_org: &str,
    request: &Value,
    message_id: &str,
    code: &str,
    outcome: Option<Value>,
) -> Value {
    let request_header = request.pointer("/entry/0/resource");
    let event = request_header
        .and_then(|header| header.get("eventCoding"))
        .cloned()
        .unwrap_or_else(|| json!({ "system": TAG_SYSTEM, "code": "acknowledgement" }));
    let identifier = header_id(request).unwrap_or(message_id);
    let sender_endpoint = request_header
        .and_then(|header| header.pointer("/source/endpoint"))
        .cloned()
        .unwrap_or_else(|| json!("urn:ward:unknown"));
    let header_id = uuid::Uuid::new_v4().to_string();
    let mut header = json!({
        "resourceType": "MessageHeader",
        "id": header_id,
        "eventCoding": event,
        "destination": [{ "endpoint": sender_endpoint }],
        "source": { "endpoint": format!("urn:ward:org:{our_org}") },
        "response": { "identifier": identifier, "code": code },
    });
    let mut entries = vec![json!({
        "fullUrl": format!("urn:uuid:{header_id}"),
        "resource": header,
    })];
    if let Some(outcome) = outcome {
        let outcome_id = uuid::Uuid::new_v4().to_string();
        let url = format!("urn:uuid:{outcome_id}");
        header["response"]["details"] = json!({ "reference": url });
        entries[0]["resource"] = header;
        let mut outcome = outcome;
        outcome["id"] = json!(outcome_id);
        entries.push(json!({ "fullUrl": url, "resource": outcome }));
    }
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "message",
        "timestamp": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        "entry": entries,
    })
}

/// Returns the `response.code` of a response message, if it is one.
pub fn response_code(bundle: &Value) -> Option<&str> {
    bundle
        .pointer("/entry/0/resource/response/code")
        .and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn referral() -> Value {
        json!({
            "resourceType": "Bundle",
            "type": "message",
            "entry": [
                { "fullUrl": "urn:uuid:h", "resource": {
                    "resourceType": "MessageHeader", "id": "h1",
                    "eventCoding": { "system": "urn:test", "code": "referral" },
                    "source": { "endpoint": "https://a.test/fhir" } } },
                { "fullUrl": "urn:uuid:p", "resource": {
                    "resourceType": "Patient", "id": "p1",
                    "identifier": [{ "system": "urn:oid:1.2|x", "value": "A 1" }] } },
                { "fullUrl": "https://a.test/fhir/Condition/c1", "resource": {
                    "resourceType": "Condition", "id": "c1",
                    "subject": { "reference": "urn:uuid:p" } } },
                { "resource": {
                    "resourceType": "Observation", "id": "o1",
                    "subject": { "reference": "Patient/p1" } } }
            ]
        })
    }

    #[test]
    fn message_bundle_shape_is_checked() {
        assert!(check_message_bundle(&referral()).is_ok());
        let mut wrong = referral();
        wrong["type"] = json!("transaction");
        assert_eq!(check_message_bundle(&wrong).unwrap_err().1, "Bundle.type");
        let mut no_header = referral();
        no_header["entry"].as_array_mut().unwrap().remove(0);
        assert_eq!(
            check_message_bundle(&no_header).unwrap_err().1,
            "Bundle.entry[0].resource"
        );
    }

    #[test]
    fn transaction_skips_header_and_links_entries() {
        let tx = filing_transaction(&referral(), "org-a");
        let entries = tx["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        let patient_url = entries[0]["fullUrl"].as_str().unwrap();
        assert!(patient_url.starts_with("urn:uuid:"));
        assert_eq!(entries[1]["resource"]["subject"]["reference"], patient_url);
        assert_eq!(entries[2]["resource"]["subject"]["reference"], patient_url);
        assert!(entries[1]["resource"].get("id").is_none());
        assert_eq!(
            entries[1]["resource"]["meta"]["source"],
            "urn:ward:org:org-a"
        );
    }

    #[test]
    fn patient_is_matched_by_identifier_and_tagged() {
        let tx = filing_transaction(&referral(), "org-a");
        let patient = &tx["entry"][0];
        assert_eq!(
            patient["request"]["ifNoneExist"],
            "identifier=urn%3Aoid%3A1.2%7Cx|A%201"
        );
        assert_eq!(
            patient["resource"]["meta"]["tag"][0]["code"],
            TAG_NEEDS_REVIEW
        );
    }

    #[test]
    fn response_names_request_header() {
        let ok = response_bundle("org-b", &referral(), "m-1", "ok", None);
        assert_eq!(
            check_message_bundle(&ok).unwrap()["response"]["identifier"],
            "h1"
        );
        assert_eq!(response_code(&ok), Some("ok"));
        let outcome = json!({ "resourceType": "OperationOutcome", "issue": [] });
        let failed = response_bundle("org-b", &referral(), "m-1", "fatal-error", Some(outcome));
        assert_eq!(response_code(&failed), Some("fatal-error"));
        let details = failed["entry"][0]["resource"]["response"]["details"]["reference"].clone();
        assert_eq!(failed["entry"][1]["fullUrl"], details);
    }
}
