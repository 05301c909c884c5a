//! The built-in data of `ward demo`: one synthetic patient as a
//! transaction Bundle, and the message Bundles sent between the
//! organizations. Every Bundle is valid FHIR R4.

use serde_json::{Value, json};

/// The medical record number shared by every Bundle, so that receivers
/// match the patient.
const MRN: &str = "DEMO-40417";
const MRN_SYSTEM: &str = "urn:oid:1.2.36.146.595.217.0.1";

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{ "system": MRN_SYSTEM, "value": MRN }],
        "name": [{ "family": "Quillfeather", "given": ["Marisol"] }],
        "gender": "female",
        "birthDate": "1961-04-17"
    })
}

fn entry(id: &str, resource: Value) -> Value {
    json!({ "fullUrl": format!("urn:uuid:{id}"), "resource": resource })
}

const PATIENT: &str = "urn:uuid:6d1a0000-0000-4000-8000-000000000001";

/// Builds a transaction Bundle shaped like a Synthea export: the patient, a
/// condition, a blood pressure and a medication.
pub fn patient_record() -> Value {
    let post = |id: &str, resource: Value| {
        let resource_type = resource["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        json!({
            "fullUrl": format!("urn:uuid:{id}"),
            "resource": resource,
            "request": { "method": "POST", "url": resource_type }
        })
    };
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            post("6d1a0000-0000-4000-8000-000000000001", patient()),
            post("6d1a0000-0000-4000-8000-000000000002", json!({
                "resourceType": "Condition",
                "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] },
                "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "38341003", "display": "Hypertensive disorder" }] },
                "subject": { "reference": PATIENT }
            })),
            post("6d1a0000-0000-4000-8000-000000000003", json!({
                "resourceType": "Observation",
                "status": "final",
                "code": { "coding": [{ "system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel" }] },
                "subject": { "reference": PATIENT },
                "component": [
                    { "code": { "coding": [{ "system": "http://loinc.org", "code": "8480-6" }] },
                      "valueQuantity": { "value": 152, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]" } },
                    { "code": { "coding": [{ "system": "http://loinc.org", "code": "8462-4" }] },
                      "valueQuantity": { "value": 94, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]" } }
                ]
            })),
            post("6d1a0000-0000-4000-8000-000000000004", json!({
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": { "coding": [{ "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "314076", "display": "lisinopril 10 MG Oral Tablet" }] },
                "subject": { "reference": PATIENT }
            }))
        ]
    })
}

/// Builds a message Bundle: the MessageHeader with `event` and `focus`, then
/// `resources` (the patient is added as the last entry).
fn message(event: &str, focus: &str, resources: Vec<Value>) -> Value {
    let mut entries = vec![entry(
        "6d1a0000-0000-4000-8000-000000000100",
        json!({
            "resourceType": "MessageHeader",
            "eventCoding": { "system": "http://example.org/fhir/message-events", "code": event },
            "source": { "endpoint": "https://ward.example/fhir" },
            "focus": [{ "reference": focus }]
        }),
    )];
    entries.extend(resources);
    entries.push(entry("6d1a0000-0000-4000-8000-000000000001", patient()));
    json!({
        "resourceType": "Bundle",
        "type": "message",
        "timestamp": "2026-12-01T10:00:00Z",
        "entry": entries
    })
}

/// Builds a referral to cardiology.
pub fn referral() -> Value {
    let request = "urn:uuid:6d1a0000-0000-4000-8000-000000000101";
    message(
        "referral",
        request,
        vec![entry(
            "6d1a0000-0000-4000-8000-000000000101",
            json!({
                "resourceType": "ServiceRequest",
                "status": "active",
                "intent": "order",
                "code": { "text": "Cardiology consultation: resistant hypertension" },
                "subject": { "reference": PATIENT }
            }),
        )],
    )
}

/// Builds an e-prescription for lisinopril.
pub fn prescription() -> Value {
    let request = "urn:uuid:6d1a0000-0000-4000-8000-000000000102";
    message(
        "prescription",
        request,
        vec![entry(
            "6d1a0000-0000-4000-8000-000000000102",
            json!({
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": { "coding": [{ "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "314077", "display": "lisinopril 20 MG Oral Tablet" }] },
                "subject": { "reference": PATIENT },
                "dosageInstruction": [{ "text": "One tablet by mouth daily" }],
                "dispenseRequest": { "numberOfRepeatsAllowed": 2, "quantity": { "value": 30, "unit": "tablet" } }
            }),
        )],
    )
}

/// Builds a basic metabolic panel result: a DiagnosticReport and its potassium
/// Observation.
pub fn lab_result() -> Value {
    let report = "urn:uuid:6d1a0000-0000-4000-8000-000000000103";
    let potassium = "urn:uuid:6d1a0000-0000-4000-8000-000000000104";
    message(
        "lab-result",
        report,
        vec![
            entry(
                "6d1a0000-0000-4000-8000-000000000103",
                json!({
                    "resourceType": "DiagnosticReport",
                    "status": "final",
                    "code": { "coding": [{ "system": "http://loinc.org", "code": "51990-0", "display": "Basic metabolic panel - Blood" }] },
                    "subject": { "reference": PATIENT },
                    "result": [{ "reference": potassium }]
                }),
            ),
            entry(
                "6d1a0000-0000-4000-8000-000000000104",
                json!({
                    "resourceType": "Observation",
                    "status": "final",
                    "code": { "coding": [{ "system": "http://loinc.org", "code": "2823-3", "display": "Potassium" }] },
                    "subject": { "reference": PATIENT },
                    "valueQuantity": { "value": 4.6, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L" }
                }),
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_bundles_valid_r4() {
        for bundle in [patient_record(), referral(), prescription(), lab_result()] {
            if let Err(outcome) = ward_fhir::validate::validate_resource(&bundle) {
                panic!("invalid Bundle: {outcome:?}");
            }
        }
    }
}
