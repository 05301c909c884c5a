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

/// Resource types a message may name without carrying them: the people,
/// organizations and places of a directory, which the receiver does not
/// file. Every other reference, to the Patient and to clinical resources,
/// must resolve to an entry of the Bundle.
///
/// NOTE: such a reference that names no entry (`Practitioner/dr-a`) is filed
/// unchanged, so at the receiver it may name an unrelated local resource.
pub const DIRECTORY_TYPES: &[&str] = &[
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "Endpoint",
    "HealthcareService",
];

/// Removes a trailing `/_history/VERSION` from a reference, as FHIR R4
/// does before it matches a version-specific reference with `fullUrl`
/// (bundle.html, "Resolving references in Bundles").
pub fn strip_history(reference: &str) -> &str {
    match reference.rfind("/_history/") {
        Some(position) => &reference[..position],
        None => reference,
    }
}

/// Returns the resource type a reference names, when its form shows one:
/// `TYPE/ID` or an absolute URL ending in `TYPE/ID`. A `urn:` reference
/// names no type.
pub fn reference_type(reference: &str) -> Option<&str> {
    let reference = strip_history(reference);
    if reference.starts_with("urn:") || reference.starts_with('#') {
        return None;
    }
    let mut segments = reference.rsplit('/');
    let _id = segments.next()?;
    let resource_type = segments.next()?;
    let is_type = resource_type
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_uppercase())
        && resource_type.chars().all(|c| c.is_ascii_alphabetic());
    is_type.then_some(resource_type)
}

/// The entries of a Bundle by every form a reference may take to name
/// them: the `fullUrl` (absolute, or `urn:uuid:`/`urn:oid:`), and
/// `TYPE/ID` from the resource id or the tail of an absolute `fullUrl`.
#[derive(Debug, Default)]
pub struct BundleIndex {
    by_url: HashMap<String, usize>,
    by_type_id: HashMap<String, usize>,
}

impl BundleIndex {
    /// Indexes `entries` (the items of `Bundle.entry`) by position.
    pub fn new(entries: &[Value]) -> Self {
        let mut index = Self::default();
        for (position, entry) in entries.iter().enumerate() {
            let resource = entry.get("resource");
            let resource_type = resource
                .and_then(|r| r.get("resourceType"))
                .and_then(Value::as_str);
            if let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str) {
                let full_url = strip_history(full_url);
                index.by_url.entry(full_url.to_owned()).or_insert(position);
                if full_url.contains("://")
                    && let Some(found) = reference_type(full_url)
                    && Some(found) == resource_type
                    && let Some(id) = full_url.rsplit('/').next()
                {
                    index
                        .by_type_id
                        .entry(format!("{found}/{id}"))
                        .or_insert(position);
                }
            }
            if let (Some(resource_type), Some(id)) = (
                resource_type,
                resource.and_then(|r| r.get("id")).and_then(Value::as_str),
            ) {
                index
                    .by_type_id
                    .entry(format!("{resource_type}/{id}"))
                    .or_insert(position);
            }
        }
        index
    }

    /// Returns the position of the entry `reference` names, after removing
    /// any `/_history/VERSION`. An absolute or `urn:` reference matches a
    /// `fullUrl`. A relative `TYPE/ID` matches the id of an entry of that
    /// type, or the tail of an absolute `fullUrl`.
    pub fn resolve(&self, reference: &str) -> Option<usize> {
        let reference = strip_history(reference);
        if let Some(position) = self.by_url.get(reference) {
            return Some(*position);
        }
        if reference.contains(':') {
            return None;
        }
        self.by_type_id.get(reference).copied()
    }
}

/// Checks that every reference of a message resolves within its Bundle,
/// as FHIR R4 messaging requires: the MessageHeader `focus` and every
/// reference to the Patient or a clinical resource. References to
/// [`DIRECTORY_TYPES`] may point outside, and `#ID` references name
/// contained resources. A reference that resolves nowhere would otherwise
/// be read against the receiver's own records, with another meaning.
///
/// # Errors
///
/// A message and the FHIRPath of the first reference that does not
/// resolve. Neither contains the reference's value.
pub fn check_references(bundle: &Value) -> Result<(), (String, String)> {
    let Some(entries) = bundle.get("entry").and_then(Value::as_array) else {
        return Ok(());
    };
    let index = BundleIndex::new(entries);
    for (position, entry) in entries.iter().enumerate() {
        let Some(resource) = entry.get("resource") else {
            continue;
        };
        let path = format!("Bundle.entry[{position}].resource");
        if position == 0 {
            let focus = resource
                .get("focus")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate();
            for (item, focus) in focus {
                if let Some(reference) = focus.get("reference").and_then(Value::as_str)
                    && index.resolve(reference).is_none()
                {
                    return Err((
                        "the MessageHeader focus does not name an entry of the message Bundle; \
                         point it at the fullUrl of the entry it is about"
                            .to_owned(),
                        format!("{path}.focus[{item}].reference"),
                    ));
                }
            }
        }
        check_value_references(resource, &path, &index)?;
    }
    Ok(())
}

/// Walks `value` at FHIRPath `path` for references that do not resolve.
fn check_value_references(
    value: &Value,
    path: &str,
    index: &BundleIndex,
) -> Result<(), (String, String)> {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                let child_path = format!("{path}.{key}");
                if key == "reference"
                    && let Some(reference) = child.as_str()
                {
                    let local = reference.starts_with('#');
                    let directory = reference_type(reference)
                        .is_some_and(|found| DIRECTORY_TYPES.contains(&found));
                    if !local && !directory && index.resolve(reference).is_none() {
                        return Err((
                            "the reference does not resolve to an entry of the message Bundle; \
                             a message must carry the Patient and every clinical resource it \
                             references, named by the entry's fullUrl"
                                .to_owned(),
                            child_path,
                        ));
                    }
                } else {
                    check_value_references(child, &child_path, index)?;
                }
            }
            Ok(())
        }
        Value::Array(items) => {
            for (position, item) in items.iter().enumerate() {
                check_value_references(item, &format!("{path}[{position}]"), index)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Returns the id of the MessageHeader of a message Bundle.
pub fn header_id(bundle: &Value) -> Option<&str> {
    bundle
        .pointer("/entry/0/resource/id")
        .and_then(Value::as_str)
}

/// Tag code of a Patient created from a received message because several
/// local Patients had its identifier; a person must review it.
pub const TAG_AMBIGUOUS_MATCH: &str = "patient-match-ambiguous";

/// Converts a received message Bundle to a transaction Bundle that files
/// every entry except the MessageHeader. Each resource is created anew
/// (with `meta.source` naming the sender), references between entries are
/// rewritten to `urn:uuid:` full URLs (resolved as [`BundleIndex`] does),
/// and a Patient is matched by its first identifier (`ifNoneExist`). A
/// Patient that no identifier matches is created with the
/// [`TAG_NEEDS_REVIEW`] tag, never merged silently. A Patient whose match
/// query (see [`patient_match_query`]) is in `ambiguous`, because several
/// local Patients have that identifier, is created the same way with the
/// [`TAG_AMBIGUOUS_MATCH`] tag too, instead of failing the message.
pub fn filing_transaction(
    bundle: &Value,
    sender_org: &str,
    ambiguous: &std::collections::HashSet<String>,
) -> Value {
    let all = bundle
        .get("entry")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let index = BundleIndex::new(all);

    // The new urn:uuid of every filed entry, by its position in the Bundle.
    let mut targets = HashMap::new();
    let mut planned = Vec::new();
    for (position, entry) in all.iter().enumerate().skip(1) {
        let Some(resource) = entry.get("resource").filter(|r| r.is_object()) else {
            continue;
        };
        let resource_type = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let urn = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        targets.insert(position, urn.clone());
        planned.push((resource.clone(), resource_type, urn));
    }

    let mut transaction = Vec::new();
    for (mut resource, resource_type, urn) in planned {
        rewrite_references(&mut resource, &index, &targets);
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
            let search = patient_match_query(&resource);
            let is_ambiguous = search.as_ref().is_some_and(|s| ambiguous.contains(s));
            match search {
                Some(search) if !is_ambiguous => request["ifNoneExist"] = json!(search),
                _ => {}
            }
            if is_ambiguous {
                let display =
                    "Created from a received message: several Patients had its identifier";
                push_tag(&mut resource, TAG_NEEDS_REVIEW, display);
                push_tag(&mut resource, TAG_AMBIGUOUS_MATCH, display);
            } else {
                push_tag(
                    &mut resource,
                    TAG_NEEDS_REVIEW,
                    "Created from a received message: no Patient had its identifier",
                );
            }
        }
        transaction.push(json!({ "fullUrl": urn, "resource": resource, "request": request }));
    }
    json!({ "resourceType": "Bundle", "type": "transaction", "entry": transaction })
}

/// Returns the match query of every Patient entry of a message Bundle,
/// as [`patient_match_query`] builds it.
pub fn patient_match_queries(bundle: &Value) -> Vec<String> {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .skip(1)
        .filter_map(|entry| entry.get("resource"))
        .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("Patient"))
        .filter_map(patient_match_query)
        .collect()
}

/// Returns the search by which a received Patient is matched with a local
/// one: `identifier=SYSTEM|VALUE` of its first identifier with both.
pub fn patient_match_query(patient: &Value) -> Option<String> {
    identifier_search(patient)
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

/// Replaces every `reference` that resolves to a filed entry with the
/// entry's new full URL.
fn rewrite_references(value: &mut Value, index: &BundleIndex, targets: &HashMap<usize, String>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object.iter_mut() {
                if key == "reference"
                    && let Some(target) = child
                        .as_str()
                        .and_then(|r| index.resolve(r))
                        .and_then(|position| targets.get(&position))
                {
                    *child = json!(target);
                } else {
                    rewrite_references(child, index, targets);
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| rewrite_references(item, index, targets)),
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

/// The maximum length of the reason [`response_reason`] returns, in
/// characters.
const MAX_REASON_CHARS: usize = 500;

/// Returns the reason a response message gives: the `diagnostics` of each
/// issue of the OperationOutcome its `MessageHeader.response.details` names,
/// with the issue's first `expression` in brackets. Control characters are
/// dropped and the text is cut at 500 characters. The receiver writes the
/// OperationOutcome without PHI (element paths, not values).
pub fn response_reason(bundle: &Value) -> Option<String> {
    let entries = bundle.get("entry").and_then(Value::as_array)?;
    let details = bundle
        .pointer("/entry/0/resource/response/details/reference")
        .and_then(Value::as_str)?;
    let outcome = entries
        .get(BundleIndex::new(entries).resolve(details)?)?
        .get("resource")
        .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome"))?;
    let issues: Vec<String> = outcome
        .get("issue")
        .and_then(Value::as_array)?
        .iter()
        .filter_map(|issue| {
            let text = issue.get("diagnostics").and_then(Value::as_str)?;
            Some(
                match issue.pointer("/expression/0").and_then(Value::as_str) {
                    Some(path) => format!("{text} (at {path})"),
                    None => text.to_owned(),
                },
            )
        })
        .collect();
    let reason: String = issues
        .join("; ")
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON_CHARS)
        .collect();
    (!reason.is_empty()).then_some(reason)
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
        let tx = filing_transaction(&referral(), "org-a", &Default::default());
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
        let tx = filing_transaction(&referral(), "org-a", &Default::default());
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
        assert_eq!(response_reason(&failed), None);
        assert_eq!(response_reason(&ok), None);

        let outcome = json!({ "resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "invalid",
            "diagnostics": "the reference does not resolve\n",
            "expression": ["Bundle.entry[1].resource.subject.reference"]
        }] });
        let failed = response_bundle("org-b", &referral(), "m-1", "fatal-error", Some(outcome));
        assert_eq!(
            response_reason(&failed).as_deref(),
            Some("the reference does not resolve (at Bundle.entry[1].resource.subject.reference)")
        );
    }

    #[test]
    fn references_must_resolve_in_the_bundle() {
        check_references(&referral()).expect("every reference resolves");

        // A subject naming a local id that no entry has.
        let mut foreign = referral();
        foreign["entry"][2]["resource"]["subject"]["reference"] = json!("Patient/pb");
        let (text, path) = check_references(&foreign).expect_err("Patient/pb is not an entry");
        assert_eq!(path, "Bundle.entry[2].resource.subject.reference");
        assert!(!text.contains("pb"), "{text}");

        // A urn:uuid that no entry has, and a focus outside the Bundle.
        let mut dangling = referral();
        dangling["entry"][3]["resource"]["subject"]["reference"] = json!("urn:uuid:nothere");
        assert_eq!(
            check_references(&dangling).unwrap_err().1,
            "Bundle.entry[3].resource.subject.reference"
        );
        let mut focus = referral();
        focus["entry"][0]["resource"]["focus"] = json!([{ "reference": "urn:uuid:nothere" }]);
        assert_eq!(
            check_references(&focus).unwrap_err().1,
            "Bundle.entry[0].resource.focus[0].reference"
        );

        // Directory resources may stay outside; contained ones are local.
        let mut directory = referral();
        directory["entry"][2]["resource"]["recorder"] = json!({ "reference": "Practitioner/dr" });
        directory["entry"][2]["resource"]["asserter"] = json!({ "reference": "#x" });
        check_references(&directory).expect("directory and contained references");
    }

    #[test]
    fn versioned_and_absolute_references_resolve() {
        let entries = referral()["entry"].as_array().unwrap().clone();
        let index = BundleIndex::new(&entries);
        assert_eq!(index.resolve("https://a.test/fhir/Condition/c1"), Some(2));
        assert_eq!(
            index.resolve("https://a.test/fhir/Condition/c1/_history/3"),
            Some(2)
        );
        assert_eq!(index.resolve("Condition/c1/_history/1"), Some(2));
        assert_eq!(index.resolve("Patient/p1/_history/1"), Some(1));
        assert_eq!(index.resolve("https://b.test/fhir/Condition/c1"), None);
        assert_eq!(index.resolve("Condition/other"), None);

        let mut versioned = referral();
        versioned["entry"][3]["resource"]["subject"]["reference"] = json!("Patient/p1/_history/2");
        check_references(&versioned).expect("version-specific reference resolves");
        let tx = filing_transaction(&versioned, "org-a", &Default::default());
        assert_eq!(
            tx["entry"][2]["resource"]["subject"]["reference"],
            tx["entry"][0]["fullUrl"]
        );
    }

    #[test]
    fn ambiguous_patient_is_created_for_review() {
        let query = patient_match_queries(&referral());
        assert_eq!(query, ["identifier=urn%3Aoid%3A1.2%7Cx|A%201"]);
        let ambiguous = query.into_iter().collect();
        let tx = filing_transaction(&referral(), "org-a", &ambiguous);
        let patient = &tx["entry"][0];
        assert!(patient["request"].get("ifNoneExist").is_none());
        let tags = patient["resource"]["meta"]["tag"].as_array().unwrap();
        assert!(tags.iter().any(|t| t["code"] == TAG_NEEDS_REVIEW));
        assert!(tags.iter().any(|t| t["code"] == TAG_AMBIGUOUS_MATCH));
    }
}
