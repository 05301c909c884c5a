//! Failed deliveries between real `ward serve` processes. The sender's
//! status keeps the reason of the receiver's `fatal-error`
//! OperationOutcome. A permanent rejection (4xx) fails the message at once
//! with an alert, without retries. A recipient whose trust entry has
//! expired is rejected when the message is queued.

mod common;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use ward_exchange::TrustEntry;

use common::Server;
use common::exchange::{
    FAST_RETRY, PATIENT_URL, audit_log, clinician_token, export, message, message_patient, queue,
    referral, trust, wait_for_outbox, ward_on,
};

/// Builds a referral whose ServiceRequest has so many distinct identifiers
/// and categories that the receiver's search index rejects it, although it
/// is valid R4.
fn oversized_referral() -> Value {
    let identifiers: Vec<Value> = (0..6000)
        .map(|n| json!({ "system": "urn:example:order", "value": format!("o-{n}") }))
        .collect();
    let categories: Vec<Value> = (0..6000)
        .map(|n| json!({ "coding": [{ "system": "urn:example:category", "code": format!("c-{n}") }] }))
        .collect();
    let request = "urn:uuid:00000000-0000-4000-8000-000000000004";
    message(
        "referral",
        request,
        &[
            (
                request,
                json!({
                    "resourceType": "ServiceRequest",
                    "identifier": identifiers,
                    "category": categories,
                    "status": "active",
                    "intent": "order",
                    "code": { "text": "Cardiology consultation" },
                    "subject": { "reference": PATIENT_URL }
                }),
            ),
            (PATIENT_URL, message_patient("MRN-IDX")),
        ],
    )
}

#[tokio::test]
async fn fatal_error_reason_reaches_sender() {
    let bundle = oversized_referral();
    ward_fhir::validate::validate_resource(&bundle).expect("valid R4");
    let request = &bundle["entry"][1]["resource"];
    assert!(ward_fhir::search::check_index_size(request).is_err());

    let a = Server::start_with(FAST_RETRY, &[]);
    let b = Server::start();
    let (_, b_entry) = common::exchange::trust_both(&a, &b);
    let location = queue(&a, &b_entry.org_id, &bundle).await;
    let status = wait_for_outbox(&a, &location, Duration::from_secs(60), |s| {
        s["status"] != "queued" && s["status"] != "sent"
    })
    .await;
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["responseCode"], "fatal-error", "{status}");
    let error = status["lastError"].as_str().unwrap_or_default();
    assert!(error.contains("fatal-error"), "{status}");
    assert!(error.contains("search index entries"), "{status}");
    assert!(!error.contains("MRN-IDX"), "{status}");
}

#[tokio::test]
async fn permanent_rejection_fails_at_once() {
    // Default retry settings: a retried message would stay `sent` for a day.
    let a = Server::start();
    let b = Server::start();

    // B trusts an entry of A that expired, so B returns 403.
    let output = ward_on(
        &a,
        &["org", "export"],
        &["--expires", "2020-01-01T00:00:00Z"],
    );
    assert!(output.status.success());
    let a_entry: TrustEntry = serde_json::from_slice(&output.stdout).expect("entry");
    let a_file = a.data_dir().with_file_name("a-expired.json");
    std::fs::write(&a_file, &output.stdout).expect("write the entry");
    trust(&b, &a_file, &a_entry.fingerprint);
    let (b_file, b_entry) = export(&b);
    trust(&a, &b_file, &b_entry.fingerprint);

    let location = queue(&a, &b_entry.org_id, &referral("MRN-403")).await;
    let status = wait_for_outbox(&a, &location, Duration::from_secs(20), |s| {
        s["status"] == "failed"
    })
    .await;
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["attempts"], 1, "{status}");
    let error = status["lastError"].as_str().unwrap_or_default();
    assert!(error.contains("403"), "{status}");
    assert!(error.contains("has expired"), "{status}");
    let log = audit_log(&a);
    assert!(log.contains("message_failed"), "not audited");
    assert!(log.contains("exchange_delivery_failed"), "no alert");
}

#[tokio::test]
async fn expired_recipient_is_rejected_at_queue() {
    let a = Server::start();
    let b = Server::start();
    let output = ward_on(
        &b,
        &["org", "export"],
        &["--expires", "2020-01-01T00:00:00Z"],
    );
    assert!(output.status.success());
    let b_entry: TrustEntry = serde_json::from_slice(&output.stdout).expect("entry");
    let b_file = b.data_dir().with_file_name("b-expired.json");
    std::fs::write(&b_file, &output.stdout).expect("write the entry");
    trust(&a, &b_file, &b_entry.fingerprint);

    let path = format!("/fhir/$send-message?recipient={}", b_entry.org_id);
    let (status, _, body) = a
        .post_json(&path, &clinician_token(&a), &referral("MRN-EXP"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["issue"][0]["expression"][0], "recipient", "{body}");
    let text = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
    assert!(text.contains("expired"), "{body}");
    assert!(text.contains(&b_entry.org_id), "{body}");
}
