//! The HTTP responses of the exchange operations at their limits, against
//! real `ward serve` processes. An oversized body gets 413 with an
//! OperationOutcome, and a body that is not FHIR JSON gets 415. The 202 of
//! `$send-message` is no FHIR resource, so it is labelled plain JSON.

mod common;

use reqwest::StatusCode;

use common::exchange::{clinician_token, org_client, referral, trust_both};
use common::{Server, header, parse_body};

/// Asserts that a reply is an OperationOutcome with issue code `code`.
fn assert_outcome(content_type: &str, body: &serde_json::Value, code: &str) {
    assert!(content_type.contains("json"), "{content_type}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert_eq!(body["issue"][0]["code"], code, "{body}");
}

#[tokio::test]
async fn oversized_bodies_get_an_operation_outcome() {
    let a = Server::start();
    let b = Server::start();
    let (_, b_entry) = trust_both(&a, &b);
    let token = clinician_token(&a);

    let big = vec![b' '; 4 * 1024 * 1024 + 1];
    let response = a
        .client()
        .post(a.url(&format!("/fhir/$send-message?recipient={}", b_entry.org_id)))
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .body(big)
        .send()
        .await
        .expect("post to $send-message");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let content_type = header(response.headers(), "content-type").to_owned();
    let body = parse_body(&response.bytes().await.expect("body"));
    assert_outcome(&content_type, &body, "too-long");

    let big = vec![b'a'; 8 * 1024 * 1024 + 1];
    let response = org_client(&a, &b)
        .post(b.url("/fhir/$process-message"))
        .header("content-type", "application/jose")
        .body(big)
        .send()
        .await
        .expect("post to $process-message");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let content_type = header(response.headers(), "content-type").to_owned();
    let body = parse_body(&response.bytes().await.expect("body"));
    assert_outcome(&content_type, &body, "too-long");
}

#[tokio::test]
async fn send_message_needs_fhir_json() {
    let a = Server::start();
    let b = Server::start();
    let (_, b_entry) = trust_both(&a, &b);
    let token = clinician_token(&a);
    let url = a.url(&format!("/fhir/$send-message?recipient={}", b_entry.org_id));
    let text = serde_json::to_vec(&referral("MRN-415")).expect("JSON");

    let response = a
        .client()
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body(text.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let content_type = header(response.headers(), "content-type").to_owned();
    let body = parse_body(&response.bytes().await.expect("body"));
    assert_outcome(&content_type, &body, "not-supported");

    let response = a
        .client()
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(text)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    // The 202 body is not a FHIR resource, so it is labelled plain JSON.
    let content_type = header(response.headers(), "content-type").to_owned();
    assert_eq!(content_type, "application/json");
    let body = parse_body(&response.bytes().await.expect("body"));
    assert_eq!(body["status"], "queued", "{body}");
    assert!(body["id"].is_string(), "{body}");
}
