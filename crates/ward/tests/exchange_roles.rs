//! Organization roles between real `ward serve` processes. A clinic sends
//! a prescription to a pharmacy, a pharmacist dispenses it, and the clinic's
//! outbox then shows the message `dispensed`. A laboratory sends a result
//! that the clinic files for the known patient, and the treating physician
//! reads it.

mod common;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use ward_exchange::OrgRole;

use common::exchange::{FAST_RETRY, trust_both, ward_on};
use common::{Server, header};

const MRN_SYSTEM: &str = "urn:oid:1.2.36.146.595.217.0.1";

fn start(role: &str) -> Server {
    let mut args = FAST_RETRY.to_vec();
    args.extend(["--role", role]);
    Server::start_with(&args, &[])
}

fn user_token(server: &Server, role: &str, practitioner: &str) -> String {
    let fhir_user = format!("Practitioner/{practitioner}");
    server.token_with(
        "user/*.cruds",
        &[
            "--role",
            role,
            "--subject",
            practitioner,
            "--fhir-user",
            &fhir_user,
        ],
    )
}

/// Creates a Patient with `mrn` whose care team includes `practitioner`;
/// returns the Patient id.
async fn known_patient(server: &Server, mrn: &str, practitioner: &str) -> String {
    let token = server.token("system/*.cruds");
    let patient = json!({
        "resourceType": "Patient",
        "identifier": [{ "system": MRN_SYSTEM, "value": mrn }],
        "name": [{ "family": "Example", "given": ["Pat"] }]
    });
    let (status, _, created) = server.post_json("Patient", &token, &patient).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("patient id").to_owned();
    let team = json!({
        "resourceType": "CareTeam",
        "status": "active",
        "subject": { "reference": format!("Patient/{id}") },
        "participant": [{ "member": { "reference": format!("Practitioner/{practitioner}") } }]
    });
    let (status, _, body) = server.post_json("CareTeam", &token, &team).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    id
}

fn message(event: &str, entries: Vec<Value>) -> Value {
    let mut all = vec![json!({
        "fullUrl": "urn:uuid:10000000-0000-4000-8000-000000000001",
        "resource": {
            "resourceType": "MessageHeader",
            "eventCoding": { "system": "http://example.org/fhir/message-events", "code": event },
            "source": { "endpoint": "https://sender.example/fhir" }
        }
    })];
    all.extend(entries);
    json!({ "resourceType": "Bundle", "type": "message", "entry": all })
}

fn patient_entry(mrn: &str) -> Value {
    json!({
        "fullUrl": "urn:uuid:10000000-0000-4000-8000-000000000002",
        "resource": {
            "resourceType": "Patient",
            "identifier": [{ "system": MRN_SYSTEM, "value": mrn }],
            "name": [{ "family": "Example", "given": ["Pat"] }]
        }
    })
}

const PATIENT_URL: &str = "urn:uuid:10000000-0000-4000-8000-000000000002";

/// Queues `bundle` on `sender` for `recipient`; returns the status URL.
async fn queue(sender: &Server, token: &str, recipient: &str, bundle: &Value) -> String {
    let path = format!("/fhir/$send-message?recipient={recipient}");
    let (status, headers, body) = sender.post_json(&path, token, bundle).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    header(&headers, "content-location").to_owned()
}

/// Polls an outbox status URL until its status is `expected` or 30 s pass.
async fn wait_for_status(server: &Server, token: &str, location: &str, expected: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = server.get(location, token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["status"] == expected || Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn search(server: &Server, token: &str, query: &str) -> Value {
    let (status, _, body) = server.get(query, token).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body
}

#[tokio::test]
async fn role_is_in_trust_entry_and_list() {
    let clinic = start("clinic");
    let pharmacy = start("pharmacy");
    let (clinic_entry, pharmacy_entry) = trust_both(&clinic, &pharmacy);
    assert_eq!(clinic_entry.role, OrgRole::Clinic);
    assert_eq!(pharmacy_entry.role, OrgRole::Pharmacy);

    let listed = ward_on(&clinic, &["org", "list"], &[]);
    let text = String::from_utf8_lossy(&listed.stdout);
    let line = text
        .lines()
        .find(|line| line.contains(&pharmacy_entry.org_id))
        .expect("pharmacy listed");
    assert!(line.contains("pharmacy"), "{line}");
}

#[tokio::test]
async fn prescription_dispensed_reaches_prescriber() {
    let clinic = start("clinic");
    let pharmacy = start("pharmacy");
    let (_, pharmacy_entry) = trust_both(&clinic, &pharmacy);
    let clinic_patient = known_patient(&clinic, "MRN-RX-1", "dr-a").await;
    let pharmacy_patient = known_patient(&pharmacy, "MRN-RX-1", "ph-1").await;

    let prescription = message(
        "prescription",
        vec![
            patient_entry("MRN-RX-1"),
            json!({
                "fullUrl": "urn:uuid:10000000-0000-4000-8000-000000000003",
                "resource": {
                    "resourceType": "MedicationRequest",
                    "status": "active",
                    "intent": "order",
                    "medicationCodeableConcept": { "text": "Amoxicillin 500 mg" },
                    "subject": { "reference": PATIENT_URL }
                }
            }),
        ],
    );
    let physician = user_token(&clinic, "physician", "dr-a");
    let location = queue(&clinic, &physician, &pharmacy_entry.org_id, &prescription).await;
    let delivered = wait_for_status(&clinic, &physician, &location, "delivered").await;
    assert_eq!(delivered["status"], "delivered", "{delivered}");

    let pharmacist = user_token(&pharmacy, "pharmacist", "ph-1");
    let requests = search(
        &pharmacy,
        &pharmacist,
        &format!("MedicationRequest?subject=Patient/{pharmacy_patient}"),
    )
    .await;
    assert_eq!(requests["total"], 1, "{requests}");
    let request_id = requests["entry"][0]["resource"]["id"]
        .as_str()
        .expect("request id");
    let dispense = json!({
        "resourceType": "MedicationDispense",
        "status": "completed",
        "medicationCodeableConcept": { "text": "Amoxicillin 500 mg" },
        "subject": { "reference": format!("Patient/{pharmacy_patient}") },
        "performer": [{ "actor": { "reference": "Practitioner/ph-1" } }],
        "authorizingPrescription": [{ "reference": format!("MedicationRequest/{request_id}") }],
        "quantity": { "value": 20, "unit": "capsule" }
    });
    let (status, _, body) = pharmacy
        .post_json("MedicationDispense", &pharmacist, &dispense)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let dispensed = wait_for_status(&clinic, &physician, &location, "dispensed").await;
    assert_eq!(dispensed["status"], "dispensed", "{dispensed}");

    let system = clinic.token("system/*.cruds");
    let filed = search(
        &clinic,
        &system,
        &format!("MedicationDispense?subject=Patient/{clinic_patient}"),
    )
    .await;
    assert_eq!(
        filed["total"], 1,
        "dispense not filed for the known patient"
    );
    let filed_dispense = &filed["entry"][0]["resource"];
    assert_eq!(filed_dispense["quantity"]["value"], 20);
    assert!(filed_dispense.get("performer").is_none());
    let patients = search(
        &clinic,
        &system,
        &format!("Patient?identifier={MRN_SYSTEM}|MRN-RX-1"),
    )
    .await;
    assert_eq!(patients["total"], 1, "patient duplicated");

    let clinic_log =
        String::from_utf8_lossy(&ward_on(&clinic, &["audit", "export"], &[]).stdout).into_owned();
    assert!(clinic_log.contains("message_dispensed"), "not audited");
    assert!(clinic_log.contains(&pharmacy_entry.org_id));
}

#[tokio::test]
async fn dispense_of_local_prescription_sends_nothing() {
    let pharmacy = start("pharmacy");
    let patient = known_patient(&pharmacy, "MRN-RX-2", "ph-1").await;
    let system = pharmacy.token("system/*.cruds");
    let request = json!({
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": { "text": "Ibuprofen 400 mg" },
        "subject": { "reference": format!("Patient/{patient}") }
    });
    let (status, _, created) = pharmacy
        .post_json("MedicationRequest", &system, &request)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let dispense = json!({
        "resourceType": "MedicationDispense",
        "status": "completed",
        "medicationCodeableConcept": { "text": "Ibuprofen 400 mg" },
        "subject": { "reference": format!("Patient/{patient}") },
        "authorizingPrescription": [{ "reference": format!("MedicationRequest/{}", created["id"].as_str().unwrap()) }]
    });
    let pharmacist = user_token(&pharmacy, "pharmacist", "ph-1");
    let (status, _, body) = pharmacy
        .post_json("MedicationDispense", &pharmacist, &dispense)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let log =
        String::from_utf8_lossy(&ward_on(&pharmacy, &["audit", "export"], &[]).stdout).into_owned();
    assert!(!log.contains("message_queued"), "a report was queued");
}

#[tokio::test]
async fn lab_result_is_filed_for_physician() {
    let clinic = start("clinic");
    let lab = start("lab");
    let (clinic_entry, lab_entry) = trust_both(&clinic, &lab);
    assert_eq!(lab_entry.role, OrgRole::Lab);
    let patient = known_patient(&clinic, "MRN-LAB-1", "dr-a").await;

    let observation = |id: &str, text: &str, value: f64| {
        json!({
            "fullUrl": format!("urn:uuid:{id}"),
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": { "text": text },
                "subject": { "reference": PATIENT_URL },
                "valueQuantity": { "value": value, "unit": "mmol/L" }
            }
        })
    };
    let result = message(
        "lab-result",
        vec![
            patient_entry("MRN-LAB-1"),
            json!({
                "fullUrl": "urn:uuid:10000000-0000-4000-8000-000000000010",
                "resource": {
                    "resourceType": "DiagnosticReport",
                    "status": "final",
                    "code": { "text": "Basic metabolic panel" },
                    "subject": { "reference": PATIENT_URL },
                    "result": [
                        { "reference": "urn:uuid:10000000-0000-4000-8000-000000000011" },
                        { "reference": "urn:uuid:10000000-0000-4000-8000-000000000012" }
                    ]
                }
            }),
            observation("10000000-0000-4000-8000-000000000011", "Sodium", 140.0),
            observation("10000000-0000-4000-8000-000000000012", "Potassium", 4.1),
        ],
    );

    let pharmacist = user_token(&lab, "pharmacist", "ph-9");
    let path = format!("/fhir/$send-message?recipient={}", clinic_entry.org_id);
    let (status, _, body) = lab.post_json(&path, &pharmacist, &result).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "pharmacist sent: {body}");

    let technician = user_token(&lab, "lab_technician", "tech-1");
    let location = queue(&lab, &technician, &clinic_entry.org_id, &result).await;
    let delivered = wait_for_status(&lab, &technician, &location, "delivered").await;
    assert_eq!(delivered["status"], "delivered", "{delivered}");
    assert_eq!(delivered["responseCode"], "ok");

    let physician = user_token(&clinic, "physician", "dr-a");
    let reports = search(
        &clinic,
        &physician,
        &format!("DiagnosticReport?subject=Patient/{patient}"),
    )
    .await;
    assert_eq!(reports["total"], 1, "{reports}");
    let report = &reports["entry"][0]["resource"];
    let results = report["result"].as_array().expect("result references");
    assert_eq!(results.len(), 2);
    for reference in results {
        let reference = reference["reference"].as_str().expect("reference");
        assert!(reference.starts_with("Observation/"), "{reference}");
        let (status, _, observation) = clinic.get(reference, &physician).await;
        assert_eq!(status, StatusCode::OK, "{observation}");
        assert_eq!(
            observation["subject"]["reference"],
            format!("Patient/{patient}")
        );
    }

    let outsider = user_token(&clinic, "physician", "dr-other");
    let report_path = format!("DiagnosticReport/{}", report["id"].as_str().unwrap());
    let (status, _, _) = clinic.get(&report_path, &outsider).await;
    // A resource outside the caller's care team reads as absent.
    assert_eq!(status, StatusCode::NOT_FOUND, "read off the care team");
}

#[tokio::test]
async fn dispensing_report_from_clinic_is_ignored() {
    let clinic = start("clinic");
    let other_clinic = start("clinic");
    let (clinic_entry, other_entry) = trust_both(&clinic, &other_clinic);

    let physician = user_token(&clinic, "physician", "dr-a");
    let referral = message("referral", vec![patient_entry("MRN-RX-3")]);
    let location = queue(&clinic, &physician, &other_entry.org_id, &referral).await;
    let delivered = wait_for_status(&clinic, &physician, &location, "delivered").await;
    assert_eq!(delivered["status"], "delivered", "{delivered}");
    let message_id = delivered["id"].as_str().expect("message id");

    // A forged report in the form a pharmacy sends, from an organization
    // trusted only as a clinic.
    let mut report = message("unused", vec![patient_entry("MRN-RX-3")]);
    report["entry"][0]["resource"]["eventCoding"] = json!({
        "system": "urn:ward:exchange:event", "code": "medication-dispensed"
    });
    report["entry"][0]["resource"]["focus"] = json!([{
        "identifier": { "system": "urn:ward:exchange:message", "value": message_id }
    }]);
    let other_physician = user_token(&other_clinic, "physician", "dr-b");
    let report_location = queue(
        &other_clinic,
        &other_physician,
        &clinic_entry.org_id,
        &report,
    )
    .await;
    let report_status = wait_for_status(
        &other_clinic,
        &other_physician,
        &report_location,
        "delivered",
    )
    .await;
    assert_eq!(report_status["status"], "delivered", "{report_status}");

    let (status, _, after) = clinic.get(&location, &physician).await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after["status"], "delivered", "marked by a clinic");
}
