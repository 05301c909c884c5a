//! Message exchange between real `ward serve` processes, with trust set up
//! by `ward org`. A referral goes through the outbox, is filed by the
//! receiver and acknowledged, also after the receiver was down for a while.
//! Altered, untrusted, misaddressed and replayed messages are rejected, and
//! each rejection is audited with its reason.

mod common;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use ward_exchange::{envelope, jose};

use common::exchange::{
    FAST_RETRY, audit_log, diagnostics, export, identity_of, queue, trust, trust_both,
    wait_for_outbox, ward_on,
};
use common::{Server, send};

/// Builds a referral: MessageHeader, ServiceRequest, Patient, Practitioner,
/// Condition, Observation, MedicationRequest and AllergyIntolerance.
fn referral(mrn: &str) -> Value {
    let entry = |id: &str, resource: Value| json!({ "fullUrl": format!("urn:uuid:{id}"), "resource": resource });
    let patient = "urn:uuid:00000000-0000-4000-8000-000000000002";
    let practitioner = "urn:uuid:00000000-0000-4000-8000-000000000003";
    json!({
        "resourceType": "Bundle",
        "type": "message",
        "timestamp": "2026-12-01T10:00:00Z",
        "entry": [
            entry("00000000-0000-4000-8000-000000000001", json!({
                "resourceType": "MessageHeader",
                "eventCoding": { "system": "http://example.org/fhir/message-events", "code": "referral" },
                "source": { "endpoint": "https://clinic-a.example/fhir" },
                "focus": [{ "reference": "urn:uuid:00000000-0000-4000-8000-000000000004" }]
            })),
            entry("00000000-0000-4000-8000-000000000004", json!({
                "resourceType": "ServiceRequest",
                "status": "active",
                "intent": "order",
                "code": { "text": "Cardiology consultation" },
                "subject": { "reference": patient },
                "requester": { "reference": practitioner }
            })),
            entry("00000000-0000-4000-8000-000000000002", json!({
                "resourceType": "Patient",
                "identifier": [{ "system": "urn:oid:1.2.36.146.595.217.0.1", "value": mrn }],
                "name": [{ "family": "Example", "given": ["Pat"] }],
                "birthDate": "1970-01-01"
            })),
            entry("00000000-0000-4000-8000-000000000003", json!({
                "resourceType": "Practitioner",
                "name": [{ "family": "Referrer", "given": ["Dana"] }]
            })),
            entry("00000000-0000-4000-8000-000000000005", json!({
                "resourceType": "Condition",
                "subject": { "reference": patient },
                "code": { "text": "Chest pain on exertion" }
            })),
            entry("00000000-0000-4000-8000-000000000006", json!({
                "resourceType": "Observation",
                "status": "final",
                "code": { "text": "Heart rate" },
                "subject": { "reference": patient },
                "valueQuantity": { "value": 88, "unit": "/min" }
            })),
            entry("00000000-0000-4000-8000-000000000007", json!({
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": { "text": "Aspirin 100 mg" },
                "subject": { "reference": patient }
            })),
            entry("00000000-0000-4000-8000-000000000008", json!({
                "resourceType": "AllergyIntolerance",
                "patient": { "reference": patient },
                "code": { "text": "Penicillin" }
            }))
        ]
    })
}

async fn search_total(server: &Server, query: &str) -> (u64, Value) {
    let token = server.token("system/*.cruds");
    let (status, _, body) = server.get(query, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (body["total"].as_u64().unwrap_or(0), body)
}

#[tokio::test]
async fn referral_validates_against_r4() {
    ward_fhir::validate::validate_resource(&referral("MRN-1"))
        .expect("the referral Bundle is valid R4");
}

#[tokio::test]
async fn referral_is_delivered_filed_and_acknowledged() {
    let a = Server::start_with(FAST_RETRY, &[]);
    let b = Server::start();
    let (_, b_entry) = trust_both(&a, &b);

    let location = queue(&a, &b_entry.org_id, &referral("MRN-100")).await;
    let status = wait_for_outbox(&a, &location, Duration::from_secs(30), |s| {
        s["status"] != "queued"
    })
    .await;
    assert_eq!(status["status"], "delivered", "{status}");
    assert_eq!(status["responseCode"], "ok");
    assert_eq!(status["attempts"], 1);
    let other_user = a.token_with(
        "user/*.cruds",
        &["--role", "physician", "--subject", "dr-other"],
    );
    let (other_status, _, _) = a.get(&location, &other_user).await;
    assert_eq!(
        other_status,
        StatusCode::NOT_FOUND,
        "status readable by another user"
    );

    let (patients, bundle) = search_total(
        &b,
        "Patient?identifier=urn:oid:1.2.36.146.595.217.0.1|MRN-100",
    )
    .await;
    assert_eq!(patients, 1);
    let patient = &bundle["entry"][0]["resource"];
    assert_eq!(patient["meta"]["tag"][0]["code"], "patient-needs-review");
    let patient_id = patient["id"].as_str().expect("patient id");
    for resource_type in [
        "ServiceRequest",
        "Condition",
        "Observation",
        "MedicationRequest",
    ] {
        let (count, _) =
            search_total(&b, &format!("{resource_type}?subject=Patient/{patient_id}")).await;
        assert_eq!(count, 1, "{resource_type} filed for the patient");
    }
    let (allergies, _) = search_total(
        &b,
        &format!("AllergyIntolerance?patient=Patient/{patient_id}"),
    )
    .await;
    assert_eq!(allergies, 1);

    let b_log = audit_log(&b);
    assert!(b_log.contains("message_received"), "receipt not audited");
    let a_log = audit_log(&a);
    assert!(a_log.contains("message_queued"), "queueing not audited");
    assert!(a_log.contains("message_delivered"), "delivery not audited");
}

#[tokio::test]
async fn known_patient_is_matched_not_duplicated() {
    let a = Server::start_with(FAST_RETRY, &[]);
    let b = Server::start();
    let (_, b_entry) = trust_both(&a, &b);
    let token = b.token("system/*.cruds");
    let known = json!({
        "resourceType": "Patient",
        "identifier": [{ "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "MRN-200" }]
    });
    let (status, _, created) = b.post_json("Patient", &token, &known).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");

    let location = queue(&a, &b_entry.org_id, &referral("MRN-200")).await;
    let status = wait_for_outbox(&a, &location, Duration::from_secs(30), |s| {
        s["status"] != "queued"
    })
    .await;
    assert_eq!(status["status"], "delivered", "{status}");
    let (patients, bundle) = search_total(
        &b,
        "Patient?identifier=urn:oid:1.2.36.146.595.217.0.1|MRN-200",
    )
    .await;
    assert_eq!(patients, 1);
    let patient = &bundle["entry"][0]["resource"];
    assert!(patient["meta"].get("tag").is_none(), "{patient}");
    let (requests, _) = search_total(
        &b,
        &format!(
            "ServiceRequest?subject=Patient/{}",
            created["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(requests, 1);
}

#[tokio::test]
async fn receiver_down_then_up_delivers_once() {
    let a = Server::start_with(FAST_RETRY, &[]);
    let b = Server::start();
    let (_, b_entry) = trust_both(&a, &b);
    let (root, data) = b.stop();

    let location = queue(&a, &b_entry.org_id, &referral("MRN-300")).await;
    let waiting = wait_for_outbox(&a, &location, Duration::from_secs(30), |s| {
        s["attempts"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    assert_eq!(waiting["status"], "queued", "{waiting}");
    assert!(
        waiting["lastError"]
            .as_str()
            .unwrap_or_default()
            .contains("posting failed")
    );

    // The restarted receiver listens on another port, so its entry with
    // the new endpoint is trusted again.
    let b = Server::start_in(root, data, &[], &[]);
    let (b_file, b_entry) = export(&b);
    trust(&a, &b_file, &b_entry.fingerprint);
    let status = wait_for_outbox(&a, &location, Duration::from_secs(30), |s| {
        s["status"] != "queued"
    })
    .await;
    assert_eq!(status["status"], "delivered", "{status}");

    // Later passes of the loop must not deliver it again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (patients, _) = search_total(
        &b,
        "Patient?identifier=urn:oid:1.2.36.146.595.217.0.1|MRN-300",
    )
    .await;
    assert_eq!(patients, 1);
    let (requests, _) = search_total(&b, "ServiceRequest?_summary=count").await;
    assert_eq!(requests, 1);
}

#[tokio::test]
async fn undeliverable_message_fails_with_alert() {
    let a = Server::start_with(
        &[
            "--exchange-retry-base",
            "1",
            "--exchange-retry-max",
            "1",
            "--exchange-give-up",
            "3",
        ],
        &[],
    );
    let b = Server::start();
    let (_, b_entry) = trust_both(&a, &b);
    drop(b);

    let location = queue(&a, &b_entry.org_id, &referral("MRN-400")).await;
    let status = wait_for_outbox(&a, &location, Duration::from_secs(30), |s| {
        s["status"] != "queued"
    })
    .await;
    assert_eq!(status["status"], "failed", "{status}");
    let log = audit_log(&a);
    assert!(
        log.contains("exchange_delivery_failed"),
        "no alert recorded"
    );
    assert!(log.contains("message_failed"));
}

/// Posts a sealed message to `receiver` over mutual TLS as `sender`.
async fn post_sealed(sender: &Server, receiver: &Server, compact: &str) -> (StatusCode, Value) {
    common::exchange::post_sealed_as(sender, receiver, compact).await
}

#[tokio::test]
async fn bad_messages_are_rejected_and_audited() {
    let a = Server::start();
    let b = Server::start();
    let c = Server::start();
    let (a_entry, b_entry) = trust_both(&a, &b);
    let (_, c_entry) = export(&c);
    let sender = identity_of(&a);
    let stranger = identity_of(&c);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();

    // A valid message is filed and acknowledged with B's signature.
    let valid = envelope::seal(&sender, &b_entry, "msg-valid", &referral("MRN-500"), now).unwrap();
    let (status, body) = post_sealed(&a, &b, &valid).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ack = body.as_str().expect("the acknowledgement is a JWS");
    let response = envelope::verify_ack(ack, &b_entry, &a_entry.org_id, "msg-valid", now).unwrap();
    assert_eq!(response["entry"][0]["resource"]["response"]["code"], "ok");

    // Replayed: the same envelope again.
    let (status, body) = post_sealed(&a, &b, &valid).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(diagnostics(&body).contains("already received"), "{body}");

    // Altered in transit: one ciphertext byte flipped.
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    let mut ciphertext = jose::unb64(&parts[3]).unwrap();
    ciphertext[0] ^= 1;
    parts[3] = jose::b64(ciphertext);
    let (status, body) = post_sealed(&a, &b, &parts.join(".")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(diagnostics(&body).contains("did not decrypt"), "{body}");

    // Untrusted sender: C is not in B's trust bundle.
    let untrusted =
        envelope::seal(&stranger, &b_entry, "msg-c", &referral("MRN-501"), now).unwrap();
    let (status, body) = post_sealed(&a, &b, &untrusted).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        diagnostics(&body).contains("not in the trust bundle"),
        "{body}"
    );

    // Wrong receiver: a message for C posted to B does not decrypt, and one
    // encrypted to B's key but addressed to C is refused by name.
    let for_c = envelope::seal(&sender, &c_entry, "msg-for-c", &referral("MRN-502"), now).unwrap();
    let (status, body) = post_sealed(&a, &b, &for_c).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let mut misaddressed_entry = b_entry.clone();
    misaddressed_entry.org_id = c_entry.org_id.clone();
    let misaddressed = envelope::seal(
        &sender,
        &misaddressed_entry,
        "msg-misaddressed",
        &referral("MRN-503"),
        now,
    )
    .unwrap();
    let (status, body) = post_sealed(&a, &b, &misaddressed).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        diagnostics(&body).contains("not to this organization"),
        "{body}"
    );

    // Wrong media type.
    let builder = b
        .client()
        .post(b.url("/fhir/$process-message"))
        .header("content-type", "application/json")
        .body(valid.clone());
    let (status, _, _) = send(builder).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // None of the rejected messages filed anything.
    let (patients, _) = search_total(&b, "Patient?_summary=count").await;
    assert_eq!(patients, 1);

    let log = audit_log(&b);
    for reason in [
        "replayed",
        "decrypt_failed",
        "untrusted_sender",
        "wrong_recipient",
    ] {
        assert!(log.contains(reason), "rejection {reason} not audited");
    }
}

#[tokio::test]
async fn invalid_bundle_gets_fatal_error_ack() {
    let a = Server::start();
    let b = Server::start();
    let (a_entry, b_entry) = trust_both(&a, &b);
    let sender = identity_of(&a);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut bundle = referral("MRN-600");
    bundle["entry"][2]["resource"]["birthDate"] = json!("not a date");

    let sealed = envelope::seal(&sender, &b_entry, "msg-invalid", &bundle, now).unwrap();
    let (status, body) = post_sealed(&a, &b, &sealed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let response = envelope::verify_ack(
        body.as_str().unwrap(),
        &b_entry,
        &a_entry.org_id,
        "msg-invalid",
        now,
    )
    .unwrap();
    let header = &response["entry"][0]["resource"];
    assert_eq!(header["response"]["code"], "fatal-error");
    assert_eq!(
        response["entry"][1]["resource"]["resourceType"],
        "OperationOutcome"
    );
    let (patients, _) = search_total(&b, "Patient?_summary=count").await;
    assert_eq!(patients, 0);
}

#[tokio::test]
async fn org_cli_lists_and_removes() {
    let a = Server::start();
    let b = Server::start();
    let (file, entry) = export(&b);

    let output = ward_on(
        &a,
        &["org", "trust"],
        &["--fingerprint", "00ff", file.to_str().unwrap()],
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("pinned"));

    trust(&a, &file, &entry.fingerprint);
    let listed = ward_on(&a, &["org", "list"], &[]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&entry.org_id));

    let removed = ward_on(&a, &["org", "remove"], &[&entry.org_id]);
    assert!(removed.status.success());
    let listed = ward_on(&a, &["org", "list"], &[]);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&entry.org_id));
    let again = ward_on(&a, &["org", "remove"], &[&entry.org_id]);
    assert!(!again.status.success());

    let log = audit_log(&a);
    assert!(log.contains("org_trusted"));
    assert!(log.contains("org_removed"));
}
