//! The sender's outbox over real `ward serve` processes. `GET
//! /exchange/outbox` lists only the caller's own messages, newest first,
//! bounded by `_count`. A message that the recipient received but did not
//! acknowledge (it responded with 503, or sent no response within the
//! attempt timeout) shows `sent` until a later attempt is acknowledged.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use ward_exchange::TrustEntry;

use common::Server;
use common::exchange::{FAST_RETRY, export, trust, trust_both};

/// Builds a referral about the patient with `mrn`: MessageHeader,
/// ServiceRequest and Patient.
fn referral(mrn: &str) -> Value {
    let entry = |id: &str, resource: Value| json!({ "fullUrl": format!("urn:uuid:{id}"), "resource": resource });
    let patient = "urn:uuid:00000000-0000-4000-8000-000000000002";
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
                "subject": { "reference": patient }
            })),
            entry("00000000-0000-4000-8000-000000000002", json!({
                "resourceType": "Patient",
                "identifier": [{ "system": "urn:oid:1.2.36.146.595.217.0.1", "value": mrn }],
                "name": [{ "family": "Example", "given": ["Pat"] }],
                "birthDate": "1970-01-01"
            }))
        ]
    })
}

/// Mints a physician token for the user `subject`.
fn physician(server: &Server, subject: &str) -> String {
    server.token_with(
        "user/*.cruds",
        &[
            "--subject",
            subject,
            "--role",
            "physician",
            "--fhir-user",
            &format!("Practitioner/{subject}"),
        ],
    )
}

/// Queues a referral for `recipient` with the query `extra`; returns the
/// outbox id.
async fn queue(sender: &Server, token: &str, recipient: &str, extra: &str, mrn: &str) -> String {
    let path = format!("/fhir/$send-message?recipient={recipient}{extra}");
    let (status, _, body) = sender.post_json(&path, token, &referral(mrn)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["id"].as_str().expect("an outbox id").to_owned()
}

/// Lists the outbox of the user with `token`; returns the status and body.
async fn list(server: &Server, token: &str, query: &str) -> (StatusCode, Value) {
    let url = format!("{}/exchange/outbox{query}", server.origin());
    let (status, _, body) = server.get(&url, token).await;
    (status, body)
}

fn ids(listed: &Value) -> Vec<String> {
    listed["messages"]
        .as_array()
        .expect("a messages array")
        .iter()
        .map(|message| message["id"].as_str().expect("an id").to_owned())
        .collect()
}

#[tokio::test]
async fn outbox_lists_own_messages_newest_first() {
    let a = Server::start_with(FAST_RETRY, &[]);
    let b = Server::start();
    let (_, b_entry) = trust_both(&a, &b);
    let dr_a = physician(&a, "dr-a");
    let dr_b = physician(&a, "dr-b");

    let first = queue(&a, &dr_a, &b_entry.org_id, "&subject=Patient/p-1", "MRN-1").await;
    let other = queue(&a, &dr_b, &b_entry.org_id, "", "MRN-2").await;
    let second = queue(&a, &dr_a, &b_entry.org_id, "", "MRN-3").await;
    let third = queue(&a, &dr_a, &b_entry.org_id, "", "MRN-4").await;

    let (status, listed) = list(&a, &dr_a, "").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(
        ids(&listed),
        [third.clone(), second.clone(), first],
        "{listed}"
    );
    assert_eq!(listed["total"], 3);
    let oldest = &listed["messages"][2];
    assert_eq!(oldest["recipient"], b_entry.org_id.as_str());
    assert_eq!(oldest["focus"], "ServiceRequest");
    assert_eq!(oldest["summary"], "Cardiology consultation");
    assert_eq!(oldest["patient"], "Pat Example");
    assert_eq!(oldest["subject"], "Patient/p-1");
    assert!(oldest["created"].as_i64().is_some(), "{oldest}");
    assert!(oldest["attempts"].as_u64().is_some(), "{oldest}");
    assert!(
        ["queued", "sent", "delivered"].contains(&oldest["status"].as_str().unwrap_or("")),
        "{oldest}"
    );
    assert_eq!(listed["messages"][0]["subject"], Value::Null);

    let (status, listed) = list(&a, &dr_b, "").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(ids(&listed), [other]);

    let (status, listed) = list(&a, &dr_a, "?_count=2").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(ids(&listed), [third, second]);

    for bad in ["0", "201", "two", ""] {
        let (status, body) = list(&a, &dr_a, &format!("?_count={bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "_count={bad}: {body}");
        assert!(body.to_string().contains("_count"), "{body}");
    }

    // The list needs a valid token.
    let response = a
        .client()
        .get(format!("{}/exchange/outbox", a.origin()))
        .send()
        .await
        .expect("send the request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // A subject that is not a patient reference is rejected before queueing.
    let path = format!(
        "/fhir/$send-message?recipient={}&subject=Observation/x",
        b_entry.org_id
    );
    let (status, _, body) = a.post_json(&path, &dr_a, &referral("MRN-5")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("subject"), "{body}");
    let (_, listed) = list(&a, &dr_a, "").await;
    assert_eq!(listed["total"], 3, "{listed}");
}

/// Runs an HTTPS endpoint with a certificate from the CA of `receiver`. It
/// reads each request whole, then responds with 503 when `respond` is true
/// and otherwise keeps the connection open without a response. Returns its
/// URL and the request count.
async fn start_unavailable(receiver: &Server, respond: bool) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let dir = ward_server::setup::DataDir::new(receiver.data_dir());
    let (keys, _) = dir.open_or_init("Ward").expect("open the data directory");
    let issued = keys
        .ca
        .issue_server_certificate(&["127.0.0.1"])
        .expect("issue a certificate");
    let mut config = ward_server::tls::server_config(
        issued.chain_pem.as_bytes(),
        issued.key_pem.as_bytes(),
        None,
    )
    .expect("a TLS configuration");
    // The endpoint speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(read) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&chunk[..read]);
                    let text = String::from_utf8_lossy(&request).into_owned();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let length: usize = text[..end]
                        .lines()
                        .find_map(|line| {
                            let (name, value) = line.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                if !respond {
                    tokio::time::sleep(Duration::from_secs(300)).await;
                    return;
                }
                let body = br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient","diagnostics":"the store is down"}]}"#;
                let head = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/fhir+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (
        format!("https://127.0.0.1:{port}/fhir/$process-message"),
        requests,
    )
}

/// Makes `sender` trust `entry` with its endpoint replaced by `endpoint`.
fn trust_at(sender: &Server, entry: &TrustEntry, endpoint: &str) {
    let mut moved = entry.clone();
    moved.endpoint = endpoint.to_owned();
    moved.fingerprint = moved.compute_fingerprint();
    let path = sender
        .data_dir()
        .parent()
        .expect("a parent directory")
        .join("moved-entry.json");
    std::fs::write(&path, serde_json::to_vec(&moved).expect("serialize")).expect("write");
    trust(sender, &path, &moved.fingerprint);
}

/// Polls the status of `id` until `done` returns true or 60 s pass.
async fn wait_for(server: &Server, token: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let url = format!("{}/exchange/outbox/{id}", server.origin());
        let (status, _, body) = server.get(&url, token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if done(&body) || Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn unacknowledged_message_is_sent_then_delivered() {
    let a = Server::start_with(FAST_RETRY, &[]);
    let b = Server::start();
    let (_, b_entry) = trust_both(&a, &b);
    let (endpoint, requests) = start_unavailable(&b, true).await;
    trust_at(&a, &b_entry, &endpoint);
    let token = physician(&a, "dr-a");

    let id = queue(&a, &token, &b_entry.org_id, "", "MRN-503").await;
    let status = wait_for(&a, &token, &id, |s| s["status"] != "queued").await;
    assert_eq!(status["status"], "sent", "{status}");
    let error = status["lastError"].as_str().unwrap_or_default();
    assert!(error.contains("503"), "{status}");
    assert!(requests.load(Ordering::SeqCst) >= 1);

    // Retries keep it `sent`, never back to `queued`.
    let again = wait_for(&a, &token, &id, |s| {
        s["attempts"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    assert_eq!(again["status"], "sent", "{again}");
    let (_, listed) = list(&a, &token, "").await;
    assert_eq!(listed["messages"][0]["status"], "sent", "{listed}");

    // The receiver is reachable again: the next attempt is acknowledged.
    let (b_file, b_entry) = export(&b);
    trust(&a, &b_file, &b_entry.fingerprint);
    let status = wait_for(&a, &token, &id, |s| s["status"] == "delivered").await;
    assert_eq!(status["status"], "delivered", "{status}");
    assert_eq!(status["responseCode"], "ok", "{status}");
    let (_, listed) = list(&a, &token, "").await;
    assert_eq!(listed["messages"][0]["status"], "delivered", "{listed}");
}

#[tokio::test]
async fn timeout_after_sending_is_sent() {
    let a = Server::start_with(FAST_RETRY, &[]);
    let b = Server::start();
    let (_, b_entry) = trust_both(&a, &b);
    let (endpoint, requests) = start_unavailable(&b, false).await;
    trust_at(&a, &b_entry, &endpoint);
    let token = physician(&a, "dr-a");

    // The attempt timeout is 30 s, so the first outcome takes that long.
    let id = queue(&a, &token, &b_entry.org_id, "", "MRN-504").await;
    let status = wait_for(&a, &token, &id, |s| s["status"] != "queued").await;
    assert_eq!(status["status"], "sent", "{status}");
    let error = status["lastError"].as_str().unwrap_or_default();
    assert!(error.contains("posting failed"), "{status}");
    assert!(requests.load(Ordering::SeqCst) >= 1);

    let (b_file, b_entry) = export(&b);
    trust(&a, &b_file, &b_entry.fingerprint);
    let status = wait_for(&a, &token, &id, |s| s["status"] == "delivered").await;
    assert_eq!(status["status"], "delivered", "{status}");
}
