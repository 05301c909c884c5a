//! References in exchanged messages, between real `ward serve` processes.
//! Every reference to the Patient or a clinical resource must resolve
//! inside the message Bundle: a sender's id that names a receiver's own
//! record, or nothing at all, is rejected by `$send-message` and by the
//! receiver. Version-specific and absolute Medication references are
//! resolved as FHIR R4 specifies, so they do not escape the controlled-substance
//! check. A Patient that several local Patients match is filed anew for
//! review. `ward org trust` needs the out-of-band fingerprint, and replaces
//! a partner's endpoint or keys only when told to.

mod common;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use ward_exchange::{TrustEntry, envelope};

use common::Server;
use common::exchange::{
    PATIENT_URL, audit_log, clinician_token, export, identity_of, message, message_patient, now,
    oxycodone, post_sealed_as, prescription, queue, referral, search_count, trust_both,
    wait_for_outbox, ward_on,
};

/// The identifier system of the patients of these messages.
const MRN_SYSTEM: &str = "urn:oid:1.2.36.146.595.217.0.1";
/// The schedule extension of a controlled Medication.
const SCHEDULE_EXTENSION: &str = "urn:ward:extension:controlled-substance-schedule";

/// Creates `Patient/ID` on `server` with medical record number `mrn`.
async fn put_patient(server: &Server, id: &str, mrn: &str) {
    let token = server.token("system/*.cruds");
    let patient = json!({
        "resourceType": "Patient",
        "id": id,
        "identifier": [{ "system": MRN_SYSTEM, "value": mrn }],
        "name": [{ "family": "Local", "given": ["Resident"] }]
    });
    let (status, _, body) = server
        .put_json(&format!("/fhir/Patient/{id}"), &token, &patient)
        .await;
    assert!(status.is_success(), "{status} {body}");
}

/// Seals `bundle` as `message_id` from `a` to `b`, posts it over mutual
/// TLS and returns the verified response message.
async fn deliver_sealed(
    a: &Server,
    b: &Server,
    a_entry: &TrustEntry,
    b_entry: &TrustEntry,
    message_id: &str,
    bundle: &Value,
) -> Value {
    let sender = identity_of(a);
    let sealed = envelope::seal(&sender, b_entry, message_id, bundle, now()).expect("seal");
    let (status, body) = post_sealed_as(a, b, &sealed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    envelope::verify_ack(
        body.as_str().expect("a JWS"),
        b_entry,
        &a_entry.org_id,
        message_id,
        now(),
    )
    .expect("a valid acknowledgement")
}

/// Asserts that `response` is a `fatal-error` whose OperationOutcome names
/// `expression`, and returns its diagnostics.
fn assert_fatal_at(response: &Value, expression: &str) -> String {
    let header = &response["entry"][0]["resource"];
    assert_eq!(header["response"]["code"], "fatal-error", "{response}");
    let outcome = &response["entry"][1]["resource"];
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{response}");
    assert_eq!(
        outcome["issue"][0]["expression"][0], expression,
        "{response}"
    );
    outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn receiver_rejects_outside_references() {
    let a = Server::start();
    let b = Server::start();
    let (a_entry, b_entry) = trust_both(&a, &b);
    put_patient(&b, "pb", "MRN-4711").await;

    // The ServiceRequest names the receiver's own Patient/pb, while the
    // Patient of the message is another person.
    let mut crossref = referral("OTHER-PERSON-1");
    crossref["entry"][1]["resource"]["subject"]["reference"] = json!("Patient/pb");
    let response = deliver_sealed(&a, &b, &a_entry, &b_entry, "msg-crossref", &crossref).await;
    let text = assert_fatal_at(&response, "Bundle.entry[1].resource.subject.reference");
    assert!(text.contains("does not resolve"), "{text}");
    assert!(!text.contains("pb"), "the reference is echoed: {text}");

    // A reference that resolves nowhere.
    let mut local_only = referral("MRN-4712");
    local_only["entry"][1]["resource"]["subject"]["reference"] = json!("Patient/local-only");
    let response = deliver_sealed(&a, &b, &a_entry, &b_entry, "msg-local", &local_only).await;
    assert_fatal_at(&response, "Bundle.entry[1].resource.subject.reference");

    // A MessageHeader focus that is not in the Bundle.
    let mut dangling = referral("MRN-4713");
    dangling["entry"][0]["resource"]["focus"][0]["reference"] = json!("urn:uuid:nothere");
    let response = deliver_sealed(&a, &b, &a_entry, &b_entry, "msg-focus", &dangling).await;
    assert_fatal_at(&response, "Bundle.entry[0].resource.focus[0].reference");

    // Nothing was filed: B holds only its own patient.
    assert_eq!(
        search_count(&b, "/fhir/ServiceRequest?_summary=count").await,
        0
    );
    assert_eq!(search_count(&b, "/fhir/Patient?_summary=count").await, 1);
    let log = audit_log(&b);
    for message_id in ["msg-crossref", "msg-local", "msg-focus"] {
        assert!(
            log.lines().any(|line| line.contains("message_rejected")
                && line.contains(message_id)
                && line.contains("does not")),
            "rejection of {message_id} not audited"
        );
    }

    // A version-specific reference to the message's own Patient resolves,
    // and the filed request points at the filed Patient, not at Patient/pb.
    let mut versioned = referral("MRN-4711-B");
    versioned["entry"][2]["resource"]["id"] = json!("pb");
    versioned["entry"][1]["resource"]["subject"]["reference"] = json!("Patient/pb/_history/3");
    let response = deliver_sealed(&a, &b, &a_entry, &b_entry, "msg-versioned", &versioned).await;
    assert_eq!(
        response["entry"][0]["resource"]["response"]["code"], "ok",
        "{response}"
    );
    let token = b.token("system/*.cruds");
    let (status, _, found) = b
        .get(
            "/fhir/ServiceRequest?_tag=urn:ward:exchange:message|msg-versioned",
            &token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let subject = found["entry"][0]["resource"]["subject"]["reference"]
        .as_str()
        .expect("a filed ServiceRequest with a subject")
        .to_owned();
    assert_ne!(subject, "Patient/pb");
    let (status, _, patient) = b.get(&format!("/fhir/{subject}"), &token).await;
    assert_eq!(status, StatusCode::OK, "{patient}");
    assert_eq!(patient["identifier"][0]["value"], "MRN-4711-B");
}

#[tokio::test]
async fn sender_rejects_outside_references() {
    let a = Server::start();
    let b = Server::start();
    let (_, b_entry) = trust_both(&a, &b);
    let token = clinician_token(&a);
    let path = format!("/fhir/$send-message?recipient={}", b_entry.org_id);

    let mut crossref = referral("OTHER-PERSON-1");
    crossref["entry"][1]["resource"]["subject"]["reference"] = json!("Patient/pb");
    let mut dangling = referral("MRN-4713");
    dangling["entry"][0]["resource"]["focus"][0]["reference"] = json!("urn:uuid:nothere");
    let mut absolute = referral("MRN-4714");
    absolute["entry"][1]["resource"]["subject"]["reference"] =
        json!("https://elsewhere.example/fhir/Patient/1");
    for (bundle, expression) in [
        (&crossref, "Bundle.entry[1].resource.subject.reference"),
        (&dangling, "Bundle.entry[0].resource.focus[0].reference"),
        (&absolute, "Bundle.entry[1].resource.subject.reference"),
    ] {
        let (status, _, body) = a.post_json(&path, &token, bundle).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
        assert_eq!(body["issue"][0]["expression"][0], expression, "{body}");
    }

    // A Practitioner outside the Bundle is allowed; the message is queued.
    let mut directory = referral("MRN-4715");
    directory["entry"][1]["resource"]["requester"] = json!({ "reference": "Practitioner/dr-a" });
    let (status, _, body) = a.post_json(&path, &token, &directory).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

/// Builds a prescription whose MedicationRequest references `reference`,
/// with the Medication entry `medication` under the full URL
/// `https://a.example/fhir/Medication/oxy`.
fn prescription_with_medication(reference: &str, medication: Value) -> Value {
    let mut request = oxycodone("1 tablet every 6 hours");
    let object = request.as_object_mut().expect("an object");
    object.remove("medicationCodeableConcept");
    object.insert(
        "medicationReference".to_owned(),
        json!({ "reference": reference }),
    );
    let mut bundle = prescription("MRN-RX-9", &request);
    bundle["entry"]
        .as_array_mut()
        .expect("entries")
        .push(json!({
            "fullUrl": "https://a.example/fhir/Medication/oxy",
            "resource": medication
        }));
    bundle
}

/// Builds a Medication with the schedule II extension.
fn scheduled_medication() -> Value {
    json!({
        "resourceType": "Medication",
        "id": "oxy",
        "extension": [{ "url": SCHEDULE_EXTENSION, "valueCode": "II" }],
        "code": { "text": "Oxycodone 5 mg tablet" }
    })
}

#[tokio::test]
async fn controlled_medication_references_need_the_second_factor() {
    let a = Server::start();
    let b = Server::start();
    let (a_entry, b_entry) = trust_both(&a, &b);
    let token = clinician_token(&a);
    let path = format!("/fhir/$send-message?recipient={}", b_entry.org_id);
    let forbidden = |status: StatusCode, body: &Value| {
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let text = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
        assert!(text.contains("ward-totp"), "{body}");
    };

    for reference in [
        "Medication/oxy/_history/1",
        "https://a.example/fhir/Medication/oxy/_history/1",
        "https://a.example/fhir/Medication/oxy",
    ] {
        let bundle = prescription_with_medication(reference, scheduled_medication());
        let (status, _, body) = a.post_json(&path, &token, &bundle).await;
        forbidden(status, &body);
    }

    // A clinical-drug code with the oxycodone ingredient coded in RxNorm.
    let ingredient = json!({
        "resourceType": "Medication",
        "id": "oxy",
        "code": { "coding": [{ "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1049621" }] },
        "ingredient": [{ "itemCodeableConcept": { "coding": [{
            "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "7804"
        }] } }]
    });
    let bundle = prescription_with_medication("Medication/oxy", ingredient);
    let (status, _, body) = a.post_json(&path, &token, &bundle).await;
    forbidden(status, &body);

    // RxNorm under its OID.
    let mut oid = oxycodone("1 tablet every 6 hours");
    oid["medicationCodeableConcept"]["coding"][0]["system"] =
        json!("urn:oid:2.16.840.1.113883.6.88");
    let (status, _, body) = a
        .post_json(&path, &token, &prescription("MRN-RX-9", &oid))
        .await;
    forbidden(status, &body);

    // The receiver resolves the versioned reference too: a controlled
    // prescription without the sender's Provenance is not filed.
    let bundle = prescription_with_medication("Medication/oxy/_history/1", scheduled_medication());
    let response = deliver_sealed(&a, &b, &a_entry, &b_entry, "msg-hist", &bundle).await;
    let text = assert_fatal_at(&response, "Bundle.entry[2].resource");
    assert!(text.contains("no Provenance"), "{text}");
    assert_eq!(
        search_count(&b, "/fhir/MedicationRequest?_summary=count").await,
        0
    );
    assert_eq!(search_count(&b, "/fhir/Medication?_summary=count").await, 0);
}

#[tokio::test]
async fn ambiguous_patient_is_filed_for_review() {
    let a = Server::start_with(common::exchange::FAST_RETRY, &[]);
    let b = Server::start();
    let (_, b_entry) = trust_both(&a, &b);
    put_patient(&b, "dup-1", "MRN-DUP").await;
    put_patient(&b, "dup-2", "MRN-DUP").await;

    let location = queue(&a, &b_entry.org_id, &referral("MRN-DUP")).await;
    let status = wait_for_outbox(&a, &location, Duration::from_secs(30), |s| {
        s["status"] != "queued" && s["status"] != "sent"
    })
    .await;
    assert_eq!(status["status"], "delivered", "{status}");
    assert_eq!(status["responseCode"], "ok", "{status}");

    let query = format!("/fhir/Patient?identifier={MRN_SYSTEM}|MRN-DUP&_summary=count");
    assert_eq!(search_count(&b, &query).await, 3);
    let flagged = "/fhir/Patient?_tag=urn:ward:exchange|patient-match-ambiguous&_summary=count";
    assert_eq!(search_count(&b, flagged).await, 1);
    let review = "/fhir/Patient?_tag=urn:ward:exchange|patient-needs-review&_summary=count";
    assert_eq!(search_count(&b, review).await, 1);
    assert_eq!(
        search_count(&b, "/fhir/ServiceRequest?_summary=count").await,
        1
    );
    assert!(audit_log(&b).contains("patient_match_ambiguous"));

    // A second message for the same person is filed the same way, not
    // failed: the duplicates wait for a person to review them.
    let again = message(
        "referral",
        "urn:uuid:00000000-0000-4000-8000-000000000009",
        &[
            (
                "urn:uuid:00000000-0000-4000-8000-000000000009",
                json!({
                    "resourceType": "ServiceRequest",
                    "status": "active",
                    "intent": "order",
                    "code": { "text": "Follow-up" },
                    "subject": { "reference": PATIENT_URL }
                }),
            ),
            (PATIENT_URL, message_patient("MRN-DUP")),
        ],
    );
    let location = queue(&a, &b_entry.org_id, &again).await;
    let status = wait_for_outbox(&a, &location, Duration::from_secs(30), |s| {
        s["status"] != "queued" && s["status"] != "sent"
    })
    .await;
    assert_eq!(status["status"], "delivered", "{status}");
}

#[tokio::test]
async fn org_trust_needs_fingerprint_and_replace() {
    let a = Server::start();
    let b = Server::start();
    let (b_file, b_entry) = export(&b);
    let b_path = b_file.to_str().expect("UTF-8 path");

    // Without --fingerprint nothing is trusted.
    let output = ward_on(&a, &["org", "trust"], &[b_path]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--fingerprint is required"), "{stderr}");
    let listed = ward_on(&a, &["org", "list"], &[]);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&b_entry.org_id));

    let output = ward_on(
        &a,
        &["org", "trust"],
        &["--fingerprint", &b_entry.fingerprint, b_path],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // An entry for B's id with another endpoint and a recomputed
    // fingerprint does not replace B without --replace.
    let mut evil = b_entry.clone();
    evil.endpoint = "https://127.0.0.1:9/fhir/$process-message".to_owned();
    evil.name = "Evil relay".to_owned();
    evil.fingerprint = evil.compute_fingerprint();
    let evil_file = b_file.with_file_name("evil.json");
    std::fs::write(&evil_file, serde_json::to_vec(&evil).expect("JSON")).expect("write");
    let evil_path = evil_file.to_str().expect("UTF-8 path");
    let output = ward_on(
        &a,
        &["org", "trust"],
        &["--fingerprint", &evil.fingerprint, evil_path],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--replace"), "{stderr}");
    assert!(stderr.contains(&b_entry.fingerprint), "{stderr}");
    assert!(stderr.contains(&evil.fingerprint), "{stderr}");
    assert!(stderr.contains("endpoint"), "{stderr}");
    let listed = String::from_utf8_lossy(&ward_on(&a, &["org", "list"], &[]).stdout).into_owned();
    assert!(listed.contains(&b_entry.endpoint), "{listed}");
    assert!(!listed.contains("Evil relay"), "{listed}");

    // With --replace the change is made, shown and audited.
    let output = ward_on(
        &a,
        &["org", "trust"],
        &["--fingerprint", &evil.fingerprint, "--replace", evil_path],
    );
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("old fingerprint {}", b_entry.fingerprint)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("new fingerprint {}", evil.fingerprint)),
        "{stdout}"
    );
    let log = audit_log(&a);
    assert!(
        log.contains("org_trust_replaced"),
        "replacement not audited"
    );

    // The organization's own entry is rejected.
    let (a_file, a_entry) = export(&a);
    let output = ward_on(
        &a,
        &["org", "trust"],
        &[
            "--fingerprint",
            &a_entry.fingerprint,
            a_file.to_str().expect("UTF-8 path"),
        ],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("own id"), "{stderr}");
}
