//! Mutual TLS between organizations, with real `ward serve` processes:
//! deliveries present the sender's exchange client certificate, and
//! `$process-message` rejects a connection without one or with a device
//! certificate. A certificate from an untrusted CA fails the handshake, and
//! one of another organization than the message's sender is rejected. A
//! sender whose trust entry has expired is rejected and its message ends
//! `failed`, audited on both sides. A controlled-substance prescription whose content does not match
//! the digest of its Provenance is not filed.

mod common;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use ward_exchange::{TrustEntry, envelope};
use ward_server::exchange::controlled::{SECOND_FACTOR_EXTENSION, content_digest};

use common::Server;
use common::exchange::{
    FAST_RETRY, audit_log, client_presenting, diagnostics, export, identity_of, now, org_client,
    org_identity_pem, oxycodone, post_sealed_as, queue, referral, search_count, trust, trust_both,
    wait_for_outbox, ward_on,
};

/// Builds a prescription message around `request` with the Provenance the
/// sending server adds, recording `digest`, or without one.
fn prescription(request: &Value, digest: Option<&str>) -> Value {
    let mut bundle = common::exchange::prescription("MRN-RX-9", request);
    if let Some(digest) = digest {
        bundle["entry"]
            .as_array_mut()
            .expect("entries")
            .push(json!({
                "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000009",
                "resource": {
                    "resourceType": "Provenance",
                    "extension": [{
                        "url": SECOND_FACTOR_EXTENSION,
                        "extension": [
                            { "url": "digest", "valueString": digest },
                            { "url": "schedule", "valueCode": "II" },
                            { "url": "method", "valueCode": "totp" }
                        ]
                    }],
                    "target": [{ "reference": "urn:uuid:00000000-0000-4000-8000-000000000007" }],
                    "recorded": "2026-12-01T10:00:00Z",
                    "agent": [{ "who": { "display": "Practitioner/dr-a" } }]
                }
            }));
    }
    bundle
}

/// Issues a device certificate from the CA of `server`, as enrollment
/// does; returns the certificate and key, PEM.
fn device_identity(server: &Server) -> String {
    let dir = ward_server::setup::DataDir::new(server.data_dir());
    let (keys, _) = dir.open_or_init("Ward").expect("open the data directory");
    let key = common::device::DeviceKey::generate();
    let issued = keys
        .ca
        .issue_device_certificate(
            &key.csr_pem,
            "dev-mtls",
            "urn:ward:device:dev-mtls",
            time::Duration::days(1),
        )
        .expect("device certificate");
    format!("{}{}", issued.cert_pem, key.key_pem)
}

/// Posts `compact` to `$process-message` of `receiver` with `client`.
async fn post_with(
    client: &reqwest::Client,
    receiver: &Server,
    compact: &str,
) -> Result<(StatusCode, Value), reqwest::Error> {
    let response = client
        .post(receiver.url("/fhir/$process-message"))
        .header("content-type", "application/jose")
        .body(compact.to_owned())
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// The response code and OperationOutcome diagnostics of an
/// acknowledgement from `receiver` to `sender` for `message_id`.
fn ack_of(
    body: &Value,
    receiver: &TrustEntry,
    sender: &TrustEntry,
    message_id: &str,
) -> (String, String) {
    let ack = body.as_str().expect("the acknowledgement is a JWS");
    let response =
        envelope::verify_ack(ack, receiver, &sender.org_id, message_id, now()).expect("valid ack");
    let code = response["entry"][0]["resource"]["response"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let outcome = diagnostics(&response["entry"][1]["resource"]);
    (code, outcome)
}

#[tokio::test]
async fn delivery_uses_mutual_tls_and_follows_trust_changes() {
    let a = Server::start_with(FAST_RETRY, &[]);
    let b = Server::start();
    let (a_entry, b_entry) = trust_both(&a, &b);

    // `ward org export` issued the client certificate beside the keys.
    let cert = std::fs::read_to_string(a.data_dir().join("exchange-client.pem"))
        .expect("exchange-client.pem");
    assert!(cert.contains("BEGIN CERTIFICATE"));
    assert!(org_identity_pem(&a).starts_with(&cert));

    let location = queue(&a, &b_entry.org_id, &referral("MRN-M1")).await;
    let status = wait_for_outbox(&a, &location, Duration::from_secs(30), |s| {
        s["status"] != "queued"
    })
    .await;
    assert_eq!(status["status"], "delivered", "{status}");
    assert_eq!(search_count(&b, "Patient?_summary=count").await, 1);
    let log = audit_log(&b);
    assert!(log.contains("message_received"), "not audited");
    assert!(log.contains(&format!("org:{}", a_entry.org_id)));

    // Once B no longer trusts A, A's certificate fails the handshake.
    let removed = ward_on(&b, &["org", "remove"], &[&a_entry.org_id]);
    assert!(removed.status.success());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let location = queue(&a, &b_entry.org_id, &referral("MRN-M2")).await;
    let status = wait_for_outbox(&a, &location, Duration::from_secs(20), |s| {
        s["attempts"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    assert_eq!(status["status"], "queued", "{status}");
    let error = status["lastError"].as_str().unwrap_or_default();
    assert!(error.contains("posting failed"), "{status}");
    assert_eq!(search_count(&b, "Patient?_summary=count").await, 1);
}

#[tokio::test]
async fn process_message_authenticates_the_connection() {
    let a = Server::start();
    let b = Server::start();
    let c = Server::start();
    let d = Server::start();
    let (a_entry, b_entry) = trust_both(&a, &b);
    trust_both(&d, &b);
    let sender = identity_of(&a);
    let valid =
        envelope::seal(&sender, &b_entry, "msg-mtls-1", &referral("MRN-M3"), now()).expect("seal");

    // Without a client certificate: 401.
    let (status, body) = post_with(&b.client(), &b, &valid).await.expect("posted");
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        diagnostics(&body).contains("no organization client certificate"),
        "{body}"
    );

    // With a device certificate of B's own CA: not an organization.
    let device = client_presenting(&b, &device_identity(&b));
    let (status, body) = post_with(&device, &b, &valid).await.expect("posted");
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // With a device certificate of A's CA: the CA is trusted, but the
    // certificate names no organization.
    let partner_device = client_presenting(&b, &device_identity(&a));
    let (status, body) = loop_until_connected(&partner_device, &b, &valid).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        diagnostics(&body).contains("names no organization"),
        "{body}"
    );

    // With the certificate of C, whose CA B does not trust: no handshake.
    let untrusted = org_client(&c, &b);
    assert!(
        post_with(&untrusted, &b, &valid).await.is_err(),
        "a certificate from an untrusted CA was accepted"
    );

    // With D's certificate (trusted) for a message A signed: 403.
    let (status, body) = post_sealed_as(&d, &b, &valid).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let text = diagnostics(&body);
    assert!(text.contains(&a_entry.org_id), "{body}");
    assert!(text.contains("another organization"), "{body}");
    // B's own organization certificate does not pass for A either.
    let (status, body) = post_sealed_as(&b, &b, &valid).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Nothing was filed; with A's certificate the message is.
    assert_eq!(search_count(&b, "Patient?_summary=count").await, 0);
    let (status, body) = post_sealed_as(&a, &b, &valid).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (code, _) = ack_of(&body, &b_entry, &a_entry, "msg-mtls-1");
    assert_eq!(code, "ok");
    assert_eq!(search_count(&b, "Patient?_summary=count").await, 1);

    // An organization certificate does not pass the device gate.
    let org_at_b = org_client(&b, &b);
    let response = org_at_b
        .post(format!("{}/device/checkin", b.origin()))
        .json(&common::device::posture(true))
        .send()
        .await
        .expect("posted");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let log = audit_log(&b);
    for reason in ["no_client_certificate", "client_certificate_mismatch"] {
        assert!(log.contains(reason), "rejection {reason} not audited");
    }
}

/// Posts with `client`, retrying failed connections for up to 5 seconds
/// while the receiver loads a CA it was just told to trust.
async fn loop_until_connected(
    client: &reqwest::Client,
    receiver: &Server,
    compact: &str,
) -> (StatusCode, Value) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match post_with(client, receiver, compact).await {
            Ok(reply) => return reply,
            Err(error) if Instant::now() > deadline => panic!("no connection: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test]
async fn expired_sender_is_rejected_on_both_sides() {
    let a = Server::start_with(
        &[
            "--exchange-retry-base",
            "1",
            "--exchange-retry-max",
            "1",
            "--exchange-give-up",
            "6",
        ],
        &[],
    );
    let b = Server::start();

    // A's entry expired on 1 January 2020; B trusts it all the same.
    let output = ward_on(
        &a,
        &["org", "export"],
        &["--expires", "2020-01-01T00:00:00Z"],
    );
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("in the past"));
    let a_entry: TrustEntry = serde_json::from_slice(&output.stdout).expect("entry");
    assert_eq!(a_entry.not_after, 1_577_836_800);
    let a_file = a.data_dir().with_file_name("a-expired.json");
    std::fs::write(&a_file, &output.stdout).expect("write the entry");
    trust(&b, &a_file, &a_entry.fingerprint);
    let (b_file, b_entry) = export(&b);
    trust(&a, &b_file, &b_entry.fingerprint);

    let location = queue(&a, &b_entry.org_id, &referral("MRN-M4")).await;
    // B responds with 403, so the message is `sent` until A gives up.
    let status = wait_for_outbox(&a, &location, Duration::from_secs(40), |s| {
        s["status"] != "queued" && s["status"] != "sent"
    })
    .await;
    assert_eq!(status["status"], "failed", "{status}");
    let error = status["lastError"].as_str().unwrap_or_default();
    assert!(error.contains("403"), "{status}");
    assert!(error.contains("has expired"), "{status}");

    assert_eq!(search_count(&b, "Patient?_summary=count").await, 0);
    let receiver_log = audit_log(&b);
    assert!(receiver_log.contains("expired_sender"), "not audited at B");
    let sender_log = audit_log(&a);
    assert!(sender_log.contains("message_failed"), "not audited at A");
    assert!(
        sender_log.contains("has expired"),
        "reason not audited at A"
    );
    assert!(sender_log.contains("exchange_delivery_failed"), "no alert");
}

#[tokio::test]
async fn controlled_prescription_digest_is_checked() {
    let a = Server::start();
    let b = Server::start_with(&["--role", "pharmacy"], &[]);
    let (a_entry, b_entry) = trust_both(&a, &b);
    let sender = identity_of(&a);
    let confirmed = oxycodone("1 tablet every 6 hours as needed, at most 4 a day");
    let digest = content_digest(&confirmed);

    // Changed after the prescriber confirmed it: not filed.
    let changed = prescription(&oxycodone("4 tablets every 2 hours"), Some(&digest));
    let sealed =
        envelope::seal(&sender, &b_entry, "msg-rx-changed", &changed, now()).expect("seal");
    let (status, body) = post_sealed_as(&a, &b, &sealed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (code, reason) = ack_of(&body, &b_entry, &a_entry, "msg-rx-changed");
    assert_eq!(code, "fatal-error");
    assert!(reason.contains("does not match the digest"), "{reason}");

    // Without the Provenance: not filed.
    let bare = prescription(&confirmed, None);
    let sealed = envelope::seal(&sender, &b_entry, "msg-rx-bare", &bare, now()).expect("seal");
    let (status, body) = post_sealed_as(&a, &b, &sealed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (code, reason) = ack_of(&body, &b_entry, &a_entry, "msg-rx-bare");
    assert_eq!(code, "fatal-error");
    assert!(reason.contains("no Provenance"), "{reason}");
    assert_eq!(
        search_count(&b, "MedicationRequest?_summary=count").await,
        0
    );

    // The confirmed content is filed with its Provenance.
    let intact = prescription(&confirmed, Some(&digest));
    let sealed = envelope::seal(&sender, &b_entry, "msg-rx-ok", &intact, now()).expect("seal");
    let (status, body) = post_sealed_as(&a, &b, &sealed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (code, reason) = ack_of(&body, &b_entry, &a_entry, "msg-rx-ok");
    assert_eq!(code, "ok", "{reason}");
    assert_eq!(
        search_count(&b, "MedicationRequest?_summary=count").await,
        1
    );
    assert_eq!(search_count(&b, "Provenance?_summary=count").await, 1);

    let log = audit_log(&b);
    assert!(
        log.contains("changed after the prescriber confirmed"),
        "the digest mismatch is not audited"
    );
}
