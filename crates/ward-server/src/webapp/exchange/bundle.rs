//! The message Bundles the web app sends: a referral (a ServiceRequest with
//! the patient's problems, recent observations, medications and
//! allergies) and an e-prescription (a MedicationRequest with the
//! patient's allergies). Both have the shape `$send-message` expects: a
//! `message` Bundle whose first entry is the MessageHeader, then the focus
//! resource, the supporting resources and the Patient, linked by
//! `urn:uuid:` full URLs.
//!
//! Copies of chart resources lose their ids and `meta`, and every reference
//! that points outside the Bundle (an Encounter, a Practitioner, an
//! Organization of this server) is dropped or reduced to its `display`,
//! because the receiver cannot resolve it. A copy that is no longer valid
//! R4 after that is left out.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value, json};

use crate::exchange::controlled::{RXNORM, SCHEDULE_EXTENSION, Schedule};
use crate::exchange::roles::EVENT_SYSTEM;

/// The MessageHeader event of a referral.
pub const EVENT_REFERRAL: &str = "referral";
/// The MessageHeader event of an e-prescription.
pub const EVENT_PRESCRIPTION: &str = "prescription";

/// The sender and the recipient of a message.
pub struct Route<'a> {
    /// This server's FHIR base URL, the MessageHeader `source`.
    pub source_endpoint: &'a str,
    /// The recipient's display name.
    pub destination_name: &'a str,
    /// The recipient's `$process-message` URL.
    pub destination_endpoint: &'a str,
}

/// The fields of a referral, already checked.
pub struct Referral<'a> {
    /// The specialty or service asked for.
    pub specialty: &'a str,
    /// The reason for the referral.
    pub reason: &'a str,
    /// A note to the receiving clinician, possibly empty.
    pub note: &'a str,
    /// `routine`, `urgent`, `asap` or `stat`.
    pub priority: &'a str,
    /// The referring clinician's name, possibly empty.
    pub requester: &'a str,
}

/// The fields of an e-prescription, already checked.
pub struct Prescription<'a> {
    /// The medication as text.
    pub medication: &'a str,
    /// Its RxNorm code, possibly empty.
    pub rxnorm: &'a str,
    /// The DEA schedule the prescriber marked, if any.
    pub schedule: Option<Schedule>,
    /// The dosage instruction.
    pub dose: &'a str,
    /// The quantity to dispense.
    pub quantity: f64,
    /// The unit of the quantity (`tablet`, `mL`).
    pub unit: &'a str,
    /// The number of refills allowed.
    pub refills: u32,
    /// The prescriber's name, possibly empty.
    pub requester: &'a str,
}

/// Returns a new `urn:uuid:` full URL.
fn new_urn() -> String {
    format!("urn:uuid:{}", uuid::Uuid::new_v4())
}

/// Copies of the patient and the supporting resources with their new
/// full URLs, references rewritten and pruned.
struct Copies {
    patient_urn: String,
    patient: Value,
    supporting: Vec<(String, Value)>,
}

fn copy_resources(patient: &Value, supporting: &[Value]) -> Copies {
    let mut targets: HashMap<String, String> = HashMap::new();
    let key_of = |resource: &Value| -> Option<String> {
        let resource_type = resource.get("resourceType")?.as_str()?;
        let id = resource.get("id")?.as_str()?;
        Some(format!("{resource_type}/{id}"))
    };
    let patient_urn = new_urn();
    if let Some(key) = key_of(patient) {
        targets.insert(key, patient_urn.clone());
    }
    let mut planned = Vec::new();
    for resource in supporting {
        let urn = new_urn();
        if let Some(key) = key_of(resource) {
            if targets.contains_key(&key) {
                continue;
            }
            targets.insert(key, urn.clone());
        }
        planned.push((urn, resource.clone()));
    }

    let inside: HashSet<String> = targets.values().cloned().collect();
    let clean = |mut resource: Value| -> Value {
        if let Some(object) = resource.as_object_mut() {
            object.remove("id");
            object.remove("meta");
        }
        rewrite(&mut resource, &targets, &inside);
        resource
    };

    let patient = clean(patient.clone());
    let mut copies = Vec::new();
    let mut left_out = 0usize;
    for (urn, resource) in planned {
        let resource = clean(resource);
        if ward_fhir::validate::validate_resource(&resource).is_ok() {
            copies.push((urn, resource));
        } else {
            left_out += 1;
        }
    }
    if left_out > 0 {
        tracing::warn!(
            target: "ward::webapp",
            left_out,
            "chart resources left out of a message because they are invalid without their references"
        );
    }
    Copies {
        patient_urn,
        patient,
        supporting: copies,
    }
}

/// What [`rewrite`] decides for a Reference object.
enum Verdict {
    Keep,
    Drop,
}

/// Rewrites references to resources of the Bundle to their full URLs and
/// removes the others: a Reference keeps its `display` or `identifier`
/// when it has one and disappears otherwise. Empty objects and arrays left
/// behind are removed too.
fn rewrite(value: &mut Value, targets: &HashMap<String, String>, inside: &HashSet<String>) {
    fn visit(
        value: &mut Value,
        targets: &HashMap<String, String>,
        inside: &HashSet<String>,
    ) -> Verdict {
        match value {
            Value::Object(object) => {
                if let Some(reference) = object.get("reference").and_then(Value::as_str) {
                    if let Some(urn) = targets.get(reference) {
                        object.insert("reference".to_owned(), json!(urn));
                    } else if !(reference.starts_with('#') || inside.contains(reference)) {
                        object.remove("reference");
                        object.remove("type");
                    }
                }
                let keys: Vec<String> = object.keys().cloned().collect();
                for key in keys {
                    if key == "reference" {
                        continue;
                    }
                    let drop = object
                        .get_mut(&key)
                        .map(|child| matches!(visit(child, targets, inside), Verdict::Drop))
                        .unwrap_or(false);
                    if drop {
                        object.remove(&key);
                    }
                }
                if object.is_empty() {
                    Verdict::Drop
                } else {
                    Verdict::Keep
                }
            }
            Value::Array(items) => {
                items.retain_mut(|item| matches!(visit(item, targets, inside), Verdict::Keep));
                if items.is_empty() {
                    Verdict::Drop
                } else {
                    Verdict::Keep
                }
            }
            _ => Verdict::Keep,
        }
    }
    visit(value, targets, inside);
}

fn entry(full_url: &str, resource: Value) -> Value {
    json!({ "fullUrl": full_url, "resource": resource })
}

fn header(event: &str, route: &Route<'_>, focus: &str, timestamp: &str) -> (Value, Value) {
    let header = json!({
        "resourceType": "MessageHeader",
        "eventCoding": { "system": EVENT_SYSTEM, "code": event },
        "destination": [{
            "name": route.destination_name,
            "endpoint": route.destination_endpoint
        }],
        "source": { "endpoint": route.source_endpoint },
        "focus": [{ "reference": focus }]
    });
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "message",
        "timestamp": timestamp,
        "entry": []
    });
    (header, bundle)
}

fn assemble(mut bundle: Value, header: Value, focus: (String, Value), copies: Copies) -> Value {
    let mut entries = vec![entry(&new_urn(), header), entry(&focus.0, focus.1)];
    for (urn, resource) in copies.supporting {
        entries.push(entry(&urn, resource));
    }
    entries.push(entry(&copies.patient_urn, copies.patient));
    bundle["entry"] = Value::Array(entries);
    bundle
}

/// Returns `value` as a JSON number, without a fraction when it is whole.
fn number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        // Whole and far inside the i64 range, so the cast is exact.
        #[allow(clippy::cast_possible_truncation)]
        let whole = value as i64;
        json!(whole)
    } else {
        json!(value)
    }
}

fn requester(name: &str) -> Option<Value> {
    (!name.trim().is_empty()).then(|| json!({ "display": name.trim() }))
}

/// Builds a referral message: a ServiceRequest whose `supportingInfo`
/// names every copied chart resource.
pub fn referral(
    route: &Route<'_>,
    referral: &Referral<'_>,
    patient: &Value,
    supporting: &[Value],
    now: &str,
) -> Value {
    let copies = copy_resources(patient, supporting);
    let focus_urn = new_urn();
    let mut request = Map::new();
    request.insert("resourceType".into(), json!("ServiceRequest"));
    request.insert("status".into(), json!("active"));
    request.insert("intent".into(), json!("order"));
    request.insert(
        "category".into(),
        json!([{ "coding": [{
            "system": "http://snomed.info/sct",
            "code": "3457005",
            "display": "Patient referral"
        }] }]),
    );
    request.insert("priority".into(), json!(referral.priority));
    request.insert(
        "code".into(),
        json!({ "text": format!("Referral to {}", referral.specialty) }),
    );
    request.insert("subject".into(), json!({ "reference": copies.patient_urn }));
    request.insert("authoredOn".into(), json!(now));
    if let Some(requester) = requester(referral.requester) {
        request.insert("requester".into(), requester);
    }
    request.insert(
        "performerType".into(),
        json!({ "text": referral.specialty }),
    );
    request.insert("reasonCode".into(), json!([{ "text": referral.reason }]));
    let info: Vec<Value> = copies
        .supporting
        .iter()
        .map(|(urn, _)| json!({ "reference": urn }))
        .collect();
    if !info.is_empty() {
        request.insert("supportingInfo".into(), Value::Array(info));
    }
    if !referral.note.trim().is_empty() {
        request.insert("note".into(), json!([{ "text": referral.note }]));
    }
    let (header, bundle) = header(EVENT_REFERRAL, route, &focus_urn, now);
    assemble(bundle, header, (focus_urn, Value::Object(request)), copies)
}

/// Builds an e-prescription message: a MedicationRequest, the patient's
/// allergies and the Patient.
pub fn prescription(
    route: &Route<'_>,
    prescription: &Prescription<'_>,
    patient: &Value,
    allergies: &[Value],
    now: &str,
) -> Value {
    let copies = copy_resources(patient, allergies);
    let focus_urn = new_urn();
    let mut medication = json!({ "text": prescription.medication });
    if !prescription.rxnorm.is_empty() {
        medication["coding"] = json!([{
            "system": RXNORM,
            "code": prescription.rxnorm,
            "display": prescription.medication
        }]);
    }
    let mut request = Map::new();
    request.insert("resourceType".into(), json!("MedicationRequest"));
    if let Some(schedule) = prescription.schedule {
        request.insert(
            "extension".into(),
            json!([{ "url": SCHEDULE_EXTENSION, "valueCode": schedule.as_str() }]),
        );
    }
    request.insert("status".into(), json!("active"));
    request.insert("intent".into(), json!("order"));
    request.insert("medicationCodeableConcept".into(), medication);
    request.insert("subject".into(), json!({ "reference": copies.patient_urn }));
    request.insert("authoredOn".into(), json!(now));
    if let Some(requester) = requester(prescription.requester) {
        request.insert("requester".into(), requester);
    }
    request.insert(
        "dosageInstruction".into(),
        json!([{ "text": prescription.dose }]),
    );
    request.insert(
        "dispenseRequest".into(),
        json!({
            "numberOfRepeatsAllowed": prescription.refills,
            "quantity": { "value": number(prescription.quantity), "unit": prescription.unit }
        }),
    );
    let (header, bundle) = header(EVENT_PRESCRIPTION, route, &focus_urn, now);
    assemble(bundle, header, (focus_urn, Value::Object(request)), copies)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-12-04T10:00:00Z";

    fn route() -> Route<'static> {
        Route {
            source_endpoint: "https://clinic.example/fhir",
            destination_name: "Heart Clinic",
            destination_endpoint: "https://heart.example/fhir/$process-message",
        }
    }

    fn patient() -> Value {
        json!({
            "resourceType": "Patient",
            "id": "p1",
            "meta": { "versionId": "3", "tag": [{ "code": "x" }] },
            "identifier": [{ "system": "urn:example:mrn", "value": "MRN-1" }],
            "name": [{ "family": "Quillfeather", "given": ["Ada"] }],
            "generalPractitioner": [{ "reference": "Practitioner/dr" }],
            "birthDate": "1961-03-14"
        })
    }

    fn chart() -> Vec<Value> {
        vec![
            json!({ "resourceType": "Condition", "id": "c1",
                    "subject": { "reference": "Patient/p1" },
                    "encounter": { "reference": "Encounter/e1" },
                    "code": { "text": "Type 2 diabetes mellitus" } }),
            json!({ "resourceType": "Observation", "id": "o1", "status": "final",
                    "subject": { "reference": "Patient/p1" },
                    "performer": [{ "reference": "Practitioner/dr", "display": "Dr Osler" },
                                  { "reference": "Organization/o" }],
                    "code": { "text": "Hemoglobin A1c" },
                    "valueQuantity": { "value": 6.9, "unit": "%" } }),
            json!({ "resourceType": "AllergyIntolerance", "id": "a1",
                    "patient": { "reference": "Patient/p1" },
                    "code": { "text": "Penicillin" } }),
        ]
    }

    fn resources(bundle: &Value) -> Vec<&Value> {
        bundle["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|entry| &entry["resource"])
            .collect()
    }

    #[test]
    fn referral_is_valid_message_with_chart() {
        let referral = Referral {
            specialty: "Cardiology",
            reason: "Resistant hypertension",
            note: "Please see within a month.",
            priority: "routine",
            requester: "Dr Osler",
        };
        let bundle = super::referral(&route(), &referral, &patient(), &chart(), NOW);
        if let Err(outcome) = ward_fhir::validate::validate_resource(&bundle) {
            panic!("invalid referral: {outcome:?}");
        }
        ward_exchange::message::check_message_bundle(&bundle).expect("a message Bundle");
        let all = resources(&bundle);
        let types: Vec<&str> = all
            .iter()
            .map(|r| r["resourceType"].as_str().expect("type"))
            .collect();
        assert_eq!(
            types,
            [
                "MessageHeader",
                "ServiceRequest",
                "Condition",
                "Observation",
                "AllergyIntolerance",
                "Patient"
            ]
        );
        let header = all[0];
        assert_eq!(header["eventCoding"]["code"], EVENT_REFERRAL);
        let entries = bundle["entry"].as_array().expect("entries");
        assert_eq!(header["focus"][0]["reference"], entries[1]["fullUrl"]);
        let patient_urn = entries[5]["fullUrl"].as_str().expect("urn");
        let request = all[1];
        assert_eq!(request["subject"]["reference"], patient_urn);
        assert_eq!(request["supportingInfo"].as_array().map(Vec::len), Some(3));
        assert_eq!(request["reasonCode"][0]["text"], "Resistant hypertension");
        // Copies point at the patient's full URL and lose outside references.
        let condition = all[2];
        assert_eq!(condition["subject"]["reference"], patient_urn);
        assert!(condition.get("encounter").is_none(), "{condition}");
        assert!(condition.get("id").is_none());
        let observation = all[3];
        assert_eq!(
            observation["performer"],
            json!([{ "display": "Dr Osler" }]),
            "{observation}"
        );
        let patient = all[5];
        assert!(patient.get("generalPractitioner").is_none(), "{patient}");
        assert!(patient.get("meta").is_none(), "{patient}");
        assert_eq!(patient["identifier"][0]["value"], "MRN-1");
    }

    #[test]
    fn prescription_carries_schedule_and_rxnorm() {
        let prescription = Prescription {
            medication: "oxycodone 5 MG Oral Tablet",
            rxnorm: "7804",
            schedule: Some(Schedule::II),
            dose: "One tablet every 6 hours as needed",
            quantity: 12.0,
            unit: "tablet",
            refills: 0,
            requester: "",
        };
        let allergies = &chart()[2..];
        let bundle = super::prescription(&route(), &prescription, &patient(), allergies, NOW);
        if let Err(outcome) = ward_fhir::validate::validate_resource(&bundle) {
            panic!("invalid prescription: {outcome:?}");
        }
        let all = resources(&bundle);
        assert_eq!(all.len(), 4);
        let request = all[1];
        assert_eq!(
            request["medicationCodeableConcept"]["coding"][0]["code"],
            "7804"
        );
        assert_eq!(request["extension"][0]["valueCode"], "II");
        assert_eq!(request["dispenseRequest"]["numberOfRepeatsAllowed"], 0);
        assert_eq!(request["dispenseRequest"]["quantity"]["value"], json!(12));
        assert!(request.get("requester").is_none());
        let controlled =
            crate::exchange::controlled::find_controlled(&bundle).expect("schedules parse");
        assert_eq!(controlled.len(), 1);
        assert_eq!(controlled[0].schedule, Schedule::II);
    }

    /// Replaces `urn:uuid:` references of a Synthea transaction with
    /// `Type/id`, as the server stores them after an import.
    fn as_stored(bundle: &Value) -> Vec<Value> {
        let entries = bundle["entry"].as_array().expect("entries");
        let mut targets = HashMap::new();
        for entry in entries {
            let resource = &entry["resource"];
            if let (Some(url), Some(kind), Some(id)) = (
                entry["fullUrl"].as_str(),
                resource["resourceType"].as_str(),
                resource["id"].as_str(),
            ) {
                targets.insert(url.to_owned(), format!("{kind}/{id}"));
            }
        }
        entries
            .iter()
            .map(|entry| {
                let mut text = entry["resource"].to_string();
                for (url, key) in &targets {
                    text = text.replace(&format!("\"{url}\""), &format!("\"{key}\""));
                }
                serde_json::from_str(&text).expect("JSON")
            })
            .collect()
    }

    #[test]
    fn synthea_charts_make_valid_messages() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/synthea-r4");
        let Ok(files) = std::fs::read_dir(&dir) else {
            eprintln!("NOTE: skipped: no Synthea data at {}", dir.display());
            return;
        };
        let mut checked = 0;
        for file in files.flatten() {
            let path = file.path();
            let text = std::fs::read_to_string(&path).expect("read a Synthea file");
            let bundle: Value = serde_json::from_str(&text).expect("Synthea JSON");
            let resources = as_stored(&bundle);
            let of_type = |kind: &str| -> Vec<Value> {
                resources
                    .iter()
                    .filter(|r| r["resourceType"] == kind)
                    .cloned()
                    .collect()
            };
            let Some(patient) = of_type("Patient").into_iter().next() else {
                continue;
            };
            let mut chart = of_type("Condition");
            chart.extend(of_type("Observation").into_iter().take(20));
            chart.extend(of_type("MedicationRequest"));
            chart.extend(of_type("AllergyIntolerance"));
            let referral = Referral {
                specialty: "Cardiology",
                reason: "Chest pain",
                note: "",
                priority: "routine",
                requester: "Dr Osler",
            };
            let message = super::referral(&route(), &referral, &patient, &chart, NOW);
            if let Err(outcome) = ward_fhir::validate::validate_resource(&message) {
                panic!("{}: invalid referral: {outcome:?}", path.display());
            }
            let copied = message["entry"].as_array().expect("entries").len() - 3;
            assert!(
                copied * 10 >= chart.len() * 9,
                "{}: only {copied} of {} chart resources copied",
                path.display(),
                chart.len()
            );
            checked += 1;
        }
        eprintln!("checked {checked} Synthea charts");
    }

    #[test]
    fn resource_invalid_without_references_left_out() {
        // A MedicationRequest that names its medication only by a local
        // reference has no medication once that reference is dropped.
        let chart = vec![json!({
            "resourceType": "MedicationRequest", "id": "m1", "status": "active",
            "intent": "order", "subject": { "reference": "Patient/p1" },
            "medicationReference": { "reference": "Medication/x" }
        })];
        let referral = Referral {
            specialty: "Cardiology",
            reason: "Chest pain",
            note: "",
            priority: "urgent",
            requester: "",
        };
        let bundle = super::referral(&route(), &referral, &patient(), &chart, NOW);
        assert_eq!(resources(&bundle).len(), 3, "{bundle}");
        assert!(resources(&bundle)[1].get("supportingInfo").is_none());
        assert!(resources(&bundle)[1].get("note").is_none());
    }
}
