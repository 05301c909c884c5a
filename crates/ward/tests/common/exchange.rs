//! Helpers for tests of message exchange between `ward serve` processes:
//! `ward org` commands on a server's store, mutual trust set-up, and HTTPS
//! clients that present an organization's exchange client certificate
//! (mutual TLS), as deliveries do.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use ward_exchange::{OrgIdentity, TrustEntry};

use super::{Server, TestDatabase, WARD, header};

/// Retry settings that keep the tests short.
pub const FAST_RETRY: &[&str] = &["--exchange-retry-base", "1", "--exchange-retry-max", "2"];

/// Runs `ward` without the server's environment variables.
pub fn ward(args: &[&str]) -> Output {
    Command::new(WARD)
        .args(args)
        .env_remove("WARD_DATA")
        .env_remove("WARD_LISTEN")
        .env_remove("WARD_BASE_URL")
        .output()
        .expect("run ward")
}

/// Returns the data directory of `server` as an argument.
pub fn data_arg(server: &Server) -> String {
    server.data_dir().to_str().expect("UTF-8 path").to_owned()
}

/// Runs `ward org SUBCOMMAND` (or `ward audit export`) on the store of
/// `server`: its data directory, and its database on PostgreSQL.
pub fn ward_on(server: &Server, subcommand: &[&str], extra: &[&str]) -> Output {
    let data = data_arg(server);
    let url = server.database().map(TestDatabase::url);
    let mut args: Vec<&str> = subcommand.to_vec();
    args.extend(["--data", data.as_str()]);
    if let Some(url) = &url {
        args.extend(["--database", url.as_str()]);
    }
    args.extend(extra);
    ward(&args)
}

/// Exports the trust entry of `server` to a file beside its data directory.
pub fn export(server: &Server) -> (PathBuf, TrustEntry) {
    let output = ward_on(server, &["org", "export"], &[]);
    assert!(
        output.status.success(),
        "ward org export failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let entry: TrustEntry = serde_json::from_slice(&output.stdout).expect("export prints JSON");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&entry.fingerprint),
        "fingerprint not printed: {stderr}"
    );
    let path = server
        .data_dir()
        .with_file_name(format!("{}.json", entry.org_id));
    std::fs::write(&path, &output.stdout).expect("write the export");
    (path, entry)
}

/// Runs `ward org trust --replace` on `server` for the exported entry in
/// `file`, pinned to `fingerprint`. `--replace` lets tests trust a
/// partner again after it moved to another endpoint; the refusal without
/// it is tested on its own.
pub fn trust(server: &Server, file: &Path, fingerprint: &str) {
    let file = file.to_str().expect("UTF-8 path");
    let output = ward_on(
        server,
        &["org", "trust"],
        &["--fingerprint", fingerprint, "--replace", file],
    );
    assert!(
        output.status.success(),
        "ward org trust failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Makes `a` and `b` trust each other; returns their entries.
pub fn trust_both(a: &Server, b: &Server) -> (TrustEntry, TrustEntry) {
    let (a_file, a_entry) = export(a);
    let (b_file, b_entry) = export(b);
    trust(a, &b_file, &b_entry.fingerprint);
    trust(b, &a_file, &a_entry.fingerprint);
    (a_entry, b_entry)
}

/// Reads the exchange client certificate and key of `server` (PEM, the
/// certificate first) from its data directory.
pub fn org_identity_pem(server: &Server) -> String {
    let dir = ward_server::setup::DataDir::new(server.data_dir());
    let (keys, _) = dir.open_or_init("Ward").expect("open the data directory");
    let identity =
        ward_exchange::OrgIdentity::open_or_init(server.data_dir(), &keys.master, "Ward")
            .expect("load the exchange identity");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (cert, _) = ward_exchange::identity::OrgClientCert::open_or_issue(
        server.data_dir(),
        &keys.master,
        &keys.ca,
        &identity.id,
        now,
    )
    .expect("load the exchange client certificate");
    cert.identity_pem().as_str().to_owned()
}

/// An HTTPS client for `receiver` (trusting its CA) that presents
/// `identity_pem` (certificate and key, PEM).
pub fn client_presenting(receiver: &Server, identity_pem: &str) -> reqwest::Client {
    let ca = std::fs::read(receiver.data_dir().join("ca.pem")).expect("read ca.pem");
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA"))
        .identity(reqwest::Identity::from_pem(identity_pem.as_bytes()).expect("identity"))
        .build()
        .expect("HTTPS client")
}

/// An HTTPS client for `receiver` that presents the exchange client
/// certificate of `sender`.
pub fn org_client(sender: &Server, receiver: &Server) -> reqwest::Client {
    client_presenting(receiver, &org_identity_pem(sender))
}

/// POSTs a sealed message to the `$process-message` of `receiver` over
/// mutual TLS with the client certificate of `sender`. A failed connection
/// is retried for up to 5 seconds, while the receiver loads a CA it was
/// just told to trust. Returns the status and the body (the JWS of an
/// acknowledgement as a JSON string, or an OperationOutcome).
pub async fn post_sealed_as(
    sender: &Server,
    receiver: &Server,
    compact: &str,
) -> (reqwest::StatusCode, serde_json::Value) {
    let client = org_client(sender, receiver);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let sent = client
            .post(receiver.url("/fhir/$process-message"))
            .header("content-type", "application/jose")
            .body(compact.to_owned())
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.expect("read the body");
                let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
                return (status, body);
            }
            Err(error) if std::time::Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(error) => panic!("posting to $process-message failed: {error}"),
        }
    }
}

/// The fullUrl of the Patient in the messages that [`referral`] and
/// [`prescription`] build.
pub const PATIENT_URL: &str = "urn:uuid:00000000-0000-4000-8000-000000000002";

/// Builds a message Bundle from clinic A: a MessageHeader with the event
/// code `event` whose focus is the entry `focus`, then `entries` as
/// (fullUrl, resource) pairs.
pub fn message(event: &str, focus: &str, entries: &[(&str, Value)]) -> Value {
    let mut all = vec![json!({
        "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001",
        "resource": {
            "resourceType": "MessageHeader",
            "eventCoding": { "system": "http://example.org/fhir/message-events", "code": event },
            "source": { "endpoint": "https://clinic-a.example/fhir" },
            "focus": [{ "reference": focus }]
        }
    })];
    all.extend(
        entries
            .iter()
            .map(|(url, resource)| json!({ "fullUrl": url, "resource": resource })),
    );
    json!({
        "resourceType": "Bundle",
        "type": "message",
        "timestamp": "2026-12-01T10:00:00Z",
        "entry": all,
    })
}

/// Builds the Patient of a message, with medical record number `mrn`.
pub fn message_patient(mrn: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{ "system": "urn:oid:1.2.36.146.595.217.0.1", "value": mrn }],
        "name": [{ "family": "Example", "given": ["Pat"] }],
        "birthDate": "1970-01-01"
    })
}

/// Builds a referral message (a cardiology consultation) for the patient
/// with medical record number `mrn`: MessageHeader, ServiceRequest and
/// Patient.
pub fn referral(mrn: &str) -> Value {
    let request = "urn:uuid:00000000-0000-4000-8000-000000000004";
    message(
        "referral",
        request,
        &[
            (
                request,
                json!({
                    "resourceType": "ServiceRequest",
                    "status": "active",
                    "intent": "order",
                    "code": { "text": "Cardiology consultation" },
                    "subject": { "reference": PATIENT_URL }
                }),
            ),
            (PATIENT_URL, message_patient(mrn)),
        ],
    )
}

/// Builds a prescription message around the MedicationRequest `request`
/// for the patient with medical record number `mrn`.
pub fn prescription(mrn: &str, request: &Value) -> Value {
    let focus = "urn:uuid:00000000-0000-4000-8000-000000000007";
    message(
        "prescription",
        focus,
        &[
            (PATIENT_URL, message_patient(mrn)),
            (focus, request.clone()),
        ],
    )
}

/// Builds an oxycodone prescription (RxNorm ingredient 7804, schedule II)
/// with the dosage text `dose`, for the patient of [`prescription`].
pub fn oxycodone(dose: &str) -> Value {
    json!({
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{ "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "7804", "display": "oxycodone" }],
            "text": "Oxycodone 5 mg tablet"
        },
        "subject": { "reference": PATIENT_URL },
        "dosageInstruction": [{ "text": dose }]
    })
}

/// Returns a token of a physician who is `Practitioner/dr-a`.
pub fn clinician_token(server: &Server) -> String {
    server.token_with(
        "user/*.cruds",
        &["--role", "physician", "--fhir-user", "Practitioner/dr-a"],
    )
}

/// Queues `bundle` for `recipient` on `sender` as [`clinician_token`] and
/// returns the status URL of the outbox message.
pub async fn queue(sender: &Server, recipient: &str, bundle: &Value) -> String {
    let path = format!("/fhir/$send-message?recipient={recipient}");
    let (status, headers, body) = sender
        .post_json(&path, &clinician_token(sender), bundle)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "queued");
    let location = header(&headers, "content-location").to_owned();
    assert!(location.contains("/exchange/outbox/"), "{location}");
    location
}

/// Polls the outbox status at `location` until `done` returns true or
/// `timeout` passes; returns the last status.
pub async fn wait_for_outbox(
    sender: &Server,
    location: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let token = clinician_token(sender);
    let deadline = Instant::now() + timeout;
    loop {
        let (status, _, body) = sender.get(location, &token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if done(&body) || Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Returns the search total of `query` on `server`, read as a system
/// client.
pub async fn search_count(server: &Server, query: &str) -> u64 {
    let token = server.token("system/*.cruds");
    let (status, _, body) = server.get(query, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["total"].as_u64().expect("a search total")
}

/// Returns the audit log of `server` (`ward audit export`) as JSON lines.
pub fn audit_log(server: &Server) -> String {
    let output = ward_on(server, &["audit", "export"], &[]);
    assert!(
        output.status.success(),
        "ward audit export failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Loads the exchange identity of `server` from its data directory.
pub fn identity_of(server: &Server) -> OrgIdentity {
    let dir = ward_server::setup::DataDir::new(server.data_dir());
    let (keys, _) = dir.open_or_init("Ward").expect("open the data directory");
    OrgIdentity::open_or_init(server.data_dir(), &keys.master, "Ward").expect("load identity")
}

/// Returns the diagnostics of the first issue of an OperationOutcome.
pub fn diagnostics(outcome: &Value) -> String {
    outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Returns the current Unix time in seconds.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
