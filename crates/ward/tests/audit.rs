//! The audit log over HTTPS and real processes: every interaction leaves
//! an AuditEvent, the log and its checkpoints detect tampering, and a
//! SIGKILL loses no acknowledged write or its record.

mod common;
mod test_pki;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::fixtures::Admin;
use common::{Server, WARD, totp_code, ward};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A user token for `role` with `scope`, acting as `fhir_user` if given.
fn user_token(
    server: &Server,
    subject: &str,
    role: &str,
    scope: &str,
    fhir_user: Option<&str>,
) -> String {
    let mut extra = vec!["--subject", subject, "--role", role];
    if let Some(fhir_user) = fhir_user {
        extra.extend(["--fhir-user", fhir_user]);
    }
    server.token_with(scope, &extra)
}

fn auditor_token(server: &Server) -> String {
    user_token(server, "auditor-1", "auditor", "user/AuditEvent.rs", None)
}

/// Every AuditEvent the search `query` returns, following next links.
async fn audit_events(server: &Server, token: &str, query: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut url = format!("/fhir/AuditEvent?{query}");
    loop {
        let (status, _, body) = server.get(&url, token).await;
        assert_eq!(status, StatusCode::OK, "AuditEvent search failed: {body}");
        for entry in body["entry"].as_array().into_iter().flatten() {
            events.push(entry["resource"].clone());
        }
        let next = body["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|link| link["relation"] == "next")
            .and_then(|link| link["url"].as_str())
            .map(str::to_owned);
        match next {
            Some(next) => url = next,
            None => return events,
        }
    }
}

fn subtype_codes(event: &Value) -> Vec<String> {
    event["subtype"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|coding| coding["code"].as_str().map(str::to_owned))
        .collect()
}

fn references(event: &Value) -> Vec<String> {
    event["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entity| entity["what"]["reference"].as_str().map(str::to_owned))
        .collect()
}

fn names_agent(event: &Value, id: &str) -> bool {
    event["agent"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|agent| agent["who"]["identifier"]["value"] == id || agent["who"]["reference"] == id)
}

/// Events with `subtype` that name `reference` among their entities.
fn find<'a>(events: &'a [Value], subtype: &str, reference: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| subtype_codes(e).iter().any(|c| c == subtype))
        .filter(|e| references(e).iter().any(|r| r == reference))
        .collect()
}

#[tokio::test]
async fn interactions_leave_audit_events() {
    let admin = Admin::start();
    let server = &admin.server;
    let token = &admin.token;

    let patient = json!({ "resourceType": "Patient", "id": "p1", "name": [{ "family": "Audit" }] });
    let (status, _, body) = server.put_json("/Patient/p1", token, &patient).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let observation = json!({
        "resourceType": "Observation", "status": "final",
        "code": { "text": "pulse" }, "subject": { "reference": "Patient/p1" },
    });
    let (status, _, body) = server.post_json("/Observation", token, &observation).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let obs_id = body["id"].as_str().expect("created id").to_owned();
    let mut changed = body.clone();
    changed["status"] = json!("amended");
    let (status, _, body) = server
        .put_json(&format!("/Observation/{obs_id}"), token, &changed)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = server.get(&format!("/Observation/{obs_id}"), token).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = server.get("/Observation?subject=Patient/p1", token).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = server
        .delete(&format!("/Observation/{obs_id}"), token)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let transaction = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "fullUrl": "urn:uuid:2b6f0c0e-0000-4000-8000-000000000001",
          "resource": { "resourceType": "Patient", "id": "p2" },
          "request": { "method": "PUT", "url": "Patient/p2" } },
        { "resource": { "resourceType": "Observation", "status": "final", "code": { "text": "bp" },
                        "subject": { "reference": "Patient/p2" } },
          "request": { "method": "POST", "url": "Observation" } },
    ] });
    let (status, _, body) = server.post_json("/fhir", token, &transaction).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A physician outside the care team is denied, then breaks the glass.
    let physician = user_token(
        server,
        "doctor-1",
        "physician",
        "user/*.cruds",
        Some("Practitioner/d1"),
    );
    let (status, _, _) = server.get("/Patient/p1", &physician).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let reason = json!({ "resourceType": "Parameters", "parameter": [
        { "name": "reason", "valueString": "emergency" },
    ] });
    let (status, _, body) = server
        .post_json("/Patient/p1/$break-the-glass", &physician, &reason)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let auditor = auditor_token(server);
    let events = audit_events(server, &auditor, "patient=p1&_count=100").await;
    assert!(
        !find(&events, "create", "Patient/p1/_history/1").is_empty(),
        "create of p1"
    );
    let obs = format!("Observation/{obs_id}");
    assert!(
        !find(&events, "create", &format!("{obs}/_history/1")).is_empty(),
        "create of the Observation"
    );
    assert!(
        !find(&events, "update", &format!("{obs}/_history/2")).is_empty(),
        "update"
    );
    assert!(
        !find(&events, "read", &format!("{obs}/_history/2")).is_empty(),
        "read"
    );
    assert!(
        !find(&events, "delete", &format!("{obs}/_history/3")).is_empty(),
        "delete"
    );
    let searches = find(&events, "search-type", "Patient/p1");
    assert!(!searches.is_empty(), "search listing p1");

    let denied: Vec<&Value> = events
        .iter()
        .filter(|e| e["outcome"] == "4" && names_agent(e, "doctor-1"))
        .collect();
    assert_eq!(denied.len(), 1, "one denied read: {events:?}");
    assert!(
        denied[0]["outcomeDesc"]
            .as_str()
            .is_some_and(|t| t.contains("care team"))
    );
    let glass: Vec<&Value> = events
        .iter()
        .filter(|e| e["purposeOfEvent"].to_string().contains("BTG"))
        .collect();
    assert_eq!(glass.len(), 1, "one break-the-glass record");
    assert!(names_agent(glass[0], "doctor-1"));
    assert!(
        events
            .iter()
            .all(|e| e["agent"].to_string().contains("127.0.0.1") || e["type"]["code"] == "110113"),
        "REST events name the peer address"
    );

    let p2 = audit_events(server, &auditor, "patient=p2").await;
    assert!(
        !find(&p2, "update", "Patient/p2/_history/1").is_empty()
            || !find(&p2, "create", "Patient/p2/_history/1").is_empty(),
        "transaction PUT entry"
    );
    assert!(
        p2.iter()
            .any(|e| subtype_codes(e).contains(&"create".to_owned())
                && references(e).iter().any(|r| r.starts_with("Observation/"))),
        "transaction POST entry"
    );

    // Other filters.
    let deletes = audit_events(server, &auditor, "action=D").await;
    assert!(deletes.iter().all(|e| e["action"] == "D"));
    assert!(!deletes.is_empty());
    let failures = audit_events(server, &auditor, "outcome=4&agent=doctor-1").await;
    assert_eq!(failures.len(), 1);
    let today = time::OffsetDateTime::now_utc().date();
    let recent = audit_events(
        server,
        &auditor,
        &format!("date=ge{today}&subtype=read&_count=2"),
    )
    .await;
    assert!(!recent.is_empty());
    let future = audit_events(server, &auditor, "date=gt2999-01-01").await;
    assert!(future.is_empty());

    // Only auditors may read, and nobody may write.
    let (status, _, _) = server.get("/fhir/AuditEvent", token).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "an all-access data token");
    let (status, _, _) = server.get("/fhir/AuditEvent", &physician).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let system = server.token("system/AuditEvent.rs");
    let (status, _, _) = server.get("/fhir/AuditEvent?_count=1", &system).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = server
        .post_json(
            "/fhir/AuditEvent",
            token,
            &json!({ "resourceType": "AuditEvent" }),
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let id = events[0]["id"].as_str().expect("event id");
    let (status, _, body) = server
        .get(&format!("/fhir/AuditEvent/{id}"), &auditor)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"], id);
    let (status, _, _) = server
        .delete(&format!("/fhir/AuditEvent/{id}"), token)
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // A request without a token is recorded too.
    let (status, _, _) = server.get("/Patient/p1", "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let anonymous = audit_events(server, &auditor, "agent=anonymous").await;
    assert!(anonymous.iter().any(|e| e["outcome"] == "4"));
}

#[tokio::test]
async fn disclosures_in_three_formats() {
    let admin = Admin::start();
    let server = &admin.server;
    let patient = json!({ "resourceType": "Patient", "id": "p9" });
    let (status, _, _) = server.put_json("/Patient/p9", &admin.token, &patient).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, _) = server.get("/Patient/p9", &admin.token).await;
    assert_eq!(status, StatusCode::OK);
    let auditor = auditor_token(server);
    let path = "/fhir/Patient/p9/$disclosures?start=2000-01-01&end=2999-12-31";

    let (status, _, body) = server.get(path, &auditor).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["resourceType"], "Bundle");
    assert_eq!(body["total"], 2, "a create and a read: {body}");

    let (status, headers, body) = server.get(&format!("{path}&_format=csv"), &auditor).await;
    assert_eq!(status, StatusCode::OK);
    assert!(common::header(&headers, "content-type").starts_with("text/csv"));
    let text = body.as_str().expect("CSV text");
    assert!(text.starts_with("seq,when,who,what,why,outcome"));
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.contains("ward-cli"));

    let (status, headers, body) = server.get(&format!("{path}&_format=html"), &auditor).await;
    assert_eq!(status, StatusCode::OK);
    assert!(common::header(&headers, "content-type").starts_with("text/html"));
    let html = body.as_str().expect("HTML text");
    assert!(html.contains("Accounting of disclosures for Patient/p9"));
    assert!(!html.contains("<script"));

    let (status, _, _) = server.get(path, &admin.token).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let old = "/fhir/Patient/p9/$disclosures?start=2000-01-01&end=2001-01-01";
    let (_, _, body) = server.get(old, &auditor).await;
    assert_eq!(body["total"], 0);
}

/// Runs `ward audit verify` on `data`; returns the exit code and output.
fn verify(data: &Path) -> (i32, String) {
    let output = Command::new(WARD)
        .args(["audit", "verify", "--data"])
        .arg(data)
        .env_remove("WARD_DATABASE")
        .output()
        .expect("run ward audit verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

/// Copies the data directory (database, WAL, keys, checkpoints).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for entry in std::fs::read_dir(from).expect("read the data directory") {
        let entry = entry.expect("directory entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy a file");
        }
    }
}

/// Waits until the server has signed a checkpoint of at least `size`.
async fn wait_for_checkpoint(server: &Server, size: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let url = format!("{}/audit/checkpoint", server.origin());
        let response = server
            .client()
            .get(&url)
            .send()
            .await
            .expect("fetch the checkpoint");
        if response.status() == StatusCode::OK {
            let text = response.text().await.expect("checkpoint text");
            let signed: u64 = text
                .lines()
                .nth(1)
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            if signed >= size {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of size {size} was signed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn audit_size(db: &Path) -> u64 {
    let conn = rusqlite::Connection::open(db).expect("open ward.db");
    conn.query_row("SELECT COUNT(*) FROM audit_log", [], |row| {
        row.get::<_, i64>(0)
    })
    .map(|n| n as u64)
    .expect("count rows")
}

#[tokio::test]
async fn tampering_fails_verification() {
    if common::on_postgres() {
        return;
    }
    let admin = Admin::start();
    for i in 0..8 {
        let patient = json!({ "resourceType": "Patient", "id": format!("t{i}") });
        let (status, _, _) = admin
            .server
            .put_json(&format!("/Patient/t{i}"), &admin.token, &patient)
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _, _) = admin.get(&format!("/Patient/t{i}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let checkpoint = wait_for_checkpoint(&admin.server, 16).await;
    // Two more records after the checkpoint, which it does not cover.
    let (status, _, _) = admin.get("/Patient/t0").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = admin.get("/Patient/t1").await;
    assert_eq!(status, StatusCode::OK);
    let (root, data) = admin.server.stop();

    let (code, text) = verify(&data);
    assert_eq!(code, 0, "the untouched log verifies: {text}");
    assert!(text.contains("audit log verified"), "{text}");

    let size = audit_size(&data.join("ward.db"));
    let signed: u64 = checkpoint
        .lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .expect("size");
    let cases: Vec<(&str, String, String)> = vec![
        (
            "edit",
            "UPDATE audit_log SET canonical = CAST(replace(CAST(canonical AS TEXT), 'ward-cli', 'ward-cl1') AS BLOB) WHERE seq = 3".into(),
            "seq 3".into(),
        ),
        ("delete", "DELETE FROM audit_log WHERE seq = 4".into(), "seq 4".into()),
        (
            "insert",
            format!(
                "INSERT INTO audit_log (seq, recorded, canonical, prev_hash, leaf_hash, chain_hash) \
                 SELECT {size}, recorded, canonical, prev_hash, leaf_hash, chain_hash FROM audit_log WHERE seq = 2"
            ),
            format!("seq {size}"),
        ),
        (
            "swap",
            "UPDATE audit_log SET seq = -1 WHERE seq = 2; UPDATE audit_log SET seq = 2 WHERE seq = 5; \
             UPDATE audit_log SET seq = 5 WHERE seq = -1"
                .into(),
            "seq 2".into(),
        ),
        (
            "truncate",
            format!("DELETE FROM audit_log WHERE seq >= {}", signed - 3),
            "records removed from the end".into(),
        ),
        (
            "patient index",
            "DELETE FROM audit_patient".into(),
            "per-patient index".into(),
        ),
    ];
    for (name, sql, expected) in cases {
        let copy = root.path().join(format!("copy-{name}"));
        copy_dir(&data, &copy);
        let conn = rusqlite::Connection::open(copy.join("ward.db")).expect("open the copy");
        conn.execute_batch(&sql).expect("tamper with the copy");
        drop(conn);
        let (code, text) = verify(&copy);
        assert_eq!(code, 1, "{name} must fail verification: {text}");
        assert!(
            text.contains(&expected),
            "{name}: expected '{expected}' in: {text}"
        );
    }

    // A forged checkpoint: a larger size, the old signature.
    let copy = root.path().join("copy-checkpoint");
    copy_dir(&data, &copy);
    let forged = checkpoint.replacen(&format!("\n{signed}\n"), &format!("\n{}\n", signed + 1), 1);
    let path = copy.join("audit-checkpoints.txt");
    let mut text = std::fs::read_to_string(&path).expect("read checkpoints");
    text.push('\n');
    text.push_str(&forged);
    std::fs::write(&path, text).expect("write checkpoints");
    let (code, text) = verify(&copy);
    assert_eq!(code, 1, "a forged checkpoint must fail: {text}");
    assert!(text.contains("invalid signature"), "{text}");
}

#[tokio::test]
async fn kill_nine_keeps_acknowledged_writes() {
    let admin = Admin::start();
    let server = admin.server;
    let token = admin.token.clone();
    let stop_at = Instant::now() + Duration::from_millis(1500);
    let mut tasks = Vec::new();
    for worker in 0..6 {
        let client = server.client();
        let url = format!("{}/Patient", server.base());
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut n = 0;
            loop {
                n += 1;
                let body = json!({ "resourceType": "Patient", "name": [{ "family": format!("K{worker}-{n}") }] });
                let sent = client
                    .request(Method::POST, &url)
                    .bearer_auth(&token)
                    .header("content-type", "application/fhir+json")
                    .body(body.to_string())
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().is_success() => {
                        if let Ok(body) = response.json::<Value>().await
                            && let Some(id) = body["id"].as_str()
                        {
                            acknowledged.push(id.to_owned());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return acknowledged,
                }
                if Instant::now() > stop_at + Duration::from_secs(5) {
                    return acknowledged;
                }
            }
        }));
    }
    tokio::time::sleep(stop_at - Instant::now()).await;
    let killed = Command::new("kill")
        .args(["-9", &server.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.expect("writer task"));
    }
    assert!(ids.len() > 5, "only {} writes were acknowledged", ids.len());
    let (root, data) = server.stop();

    let server = Server::start_in(root, data.clone(), &[], &[]);
    let token = server.token("system/*.cruds");
    for id in &ids {
        let (status, _, body) = server.get(&format!("/Patient/{id}"), &token).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "acknowledged Patient/{id} was lost: {body}"
        );
    }
    let auditor = auditor_token(&server);
    let events = audit_events(&server, &auditor, "subtype=create&_count=1000").await;
    for id in &ids {
        let reference = format!("Patient/{id}/_history/1");
        assert!(
            !find(&events, "create", &reference).is_empty(),
            "no audit record for acknowledged {reference}"
        );
    }
    if !common::on_postgres() {
        let (code, text) = verify(&data);
        assert_eq!(code, 0, "verification after SIGKILL: {text}");
    }
}

// Sign-in, token and alert events.

const PASSWORD: &str = "cobalt-heron-meadow-77";
const WRONG_PASSWORD: &str = "not-the-password-9";
const APP_REDIRECT: &str = "http://127.0.0.1:7001/callback";
const VERIFIER: &str = "Qw8eR5tY2uI7oP4aS1dF6gH3jK9lZ0xC5vB2nM8qWe3";

/// The alert thresholds the alert tests use.
const ALERT_SETTINGS: &str = "[alerts]\ndistinct_patients = 3\nsign_in_failures = 3\n";

/// Starts a server on a data directory whose `ward.toml` holds `toml`.
fn start_with_config(toml: &str, args: &[&str]) -> Server {
    let root = tempfile::tempdir().expect("temporary directory");
    let data = root.path().join("data");
    std::fs::create_dir(&data).expect("create the data directory");
    std::fs::write(data.join("ward.toml"), toml).expect("write ward.toml");
    Server::start_in(root, data, args, &[("NO_COLOR", "1")])
}

/// Adds a user and returns its TOTP secret.
fn add_user(server: &Server, name: &str) -> String {
    let args = [
        "user",
        "add",
        "--username",
        name,
        "--role",
        "physician",
        "--fhir-user",
        "Practitioner/pr-9",
        "--password-stdin",
    ];
    let output = ward(server, &args, Some(&format!("{PASSWORD}\n")));
    output
        .lines()
        .find_map(|line| line.strip_prefix("TOTP secret: "))
        .expect("the TOTP secret is printed")
        .to_owned()
}

/// A browser without redirects that keeps the server's cookies.
struct Browser {
    http: reqwest::Client,
    origin: String,
    cookies: std::collections::HashMap<String, String>,
}

impl Browser {
    fn new(server: &Server) -> Browser {
        let pem = std::fs::read(server.data_dir().join("ca.pem")).expect("ca.pem");
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA"))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Browser {
            http,
            origin: server.origin().to_owned(),
            cookies: std::collections::HashMap::new(),
        }
    }

    /// Sends `request` with the cookies; returns the status, the
    /// `Location` header and the body.
    async fn send(&mut self, request: reqwest::RequestBuilder) -> (StatusCode, String, String) {
        let jar: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let response = request
            .header(reqwest::header::COOKIE, jar.join("; "))
            .send()
            .await
            .expect("send");
        for value in response.headers().get_all(reqwest::header::SET_COOKIE) {
            let pair = value.to_str().expect("ASCII cookie").split(';').next();
            if let Some((name, value)) = pair.and_then(|pair| pair.split_once('=')) {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        let status = response.status();
        let location = common::header(response.headers(), "location").to_owned();
        (status, location, response.text().await.expect("body"))
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> String {
        let request = self.http.post(format!("{}{path}", self.origin)).form(form);
        self.send(request).await.2
    }
}

/// Returns the value of the hidden form field `name` in `page`.
fn form_field(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        + marker.len();
    let end = page[start..].find('"').expect("closing quote") + start;
    page[start..end].to_owned()
}

/// Returns the `detail` value `key` of an AuditEvent, if present.
fn detail(event: &Value, key: &str) -> Option<String> {
    event["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|entity| entity["detail"].as_array().into_iter().flatten())
        .find(|detail| detail["type"] == key)
        .and_then(|detail| detail["valueString"].as_str().map(str::to_owned))
}

/// Every AuditEvent, read with a `system/AuditEvent.rs` token.
async fn all_events(server: &Server) -> Vec<Value> {
    let token = server.token("system/AuditEvent.rs");
    audit_events(server, &token, "_count=100").await
}

fn with_detail<'a>(events: &'a [Value], key: &str, value: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| detail(event, key).as_deref() == Some(value))
        .collect()
}

/// Waits until the server's stderr has a `ward::alert` warning naming
/// `rule`, and returns that line.
async fn alert_line(server: &Server, rule: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = server.stderr_log();
        let line = log
            .lines()
            .find(|line| line.contains("ward::alert") && line.contains(rule))
            .map(str::to_owned);
        if let Some(line) = line {
            assert!(line.contains("WARN"), "{line}");
            return line;
        }
        assert!(Instant::now() < deadline, "no {rule} alert in:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sign_in_and_tokens_are_audited() {
    let server = start_with_config(ALERT_SETTINGS, &[]);
    ward(
        &server,
        &[
            "client",
            "add",
            "--id",
            "audit-app",
            "--redirect-uri",
            APP_REDIRECT,
        ],
        None,
    );
    let secret = add_user(&server, "erin");
    let challenge = ward_auth::oauth::CodeChallenge::from_verifier(VERIFIER)
        .expect("a valid verifier")
        .as_str()
        .to_owned();
    let base = server.base();
    let params = [
        ("response_type", "code"),
        ("client_id", "audit-app"),
        ("redirect_uri", APP_REDIRECT),
        ("scope", "openid fhirUser user/Patient.rs"),
        ("state", "s-1"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("aud", base.as_str()),
    ];
    let mut browser = Browser::new(&server);
    let url = format!("{}/oauth/authorize", server.origin());
    let request = browser.http.get(url).query(&params);
    let (status, _, page) = browser.send(request).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let csrf = form_field(&page, "csrf");

    // Three wrong passwords reach the sign-in failure threshold.
    for _ in 0..3 {
        let form = [
            ("csrf", csrf.as_str()),
            ("username", "erin"),
            ("password", WRONG_PASSWORD),
        ];
        let page = browser.post("/oauth/login", &form).await;
        assert!(page.contains("incorrect"), "{page}");
    }
    let line = alert_line(&server, "sign_in_failures").await;
    assert!(!line.contains(WRONG_PASSWORD), "{line}");

    let form = [
        ("csrf", csrf.as_str()),
        ("username", "erin"),
        ("password", PASSWORD),
    ];
    let page = browser.post("/oauth/login", &form).await;
    assert!(page.contains("action=\"/oauth/mfa\""), "{page}");
    let page = browser
        .post("/oauth/mfa", &[("csrf", &csrf), ("code", "000000x")])
        .await;
    assert!(
        page.contains("action=\"/oauth/mfa\""),
        "a wrong code: {page}"
    );
    // Four failures on the account put it in a short back-off (1 s).
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let code = totp_code(&secret);
    let page = browser
        .post("/oauth/mfa", &[("csrf", &csrf), ("code", &code)])
        .await;
    assert!(page.contains("action=\"/oauth/consent\""), "{page}");
    let consent = [("csrf", csrf.as_str()), ("decision", "approve")];
    let request = browser
        .http
        .post(format!("{}/oauth/consent", server.origin()))
        .form(&consent);
    let (status, location, body) = browser.send(request).await;
    assert_eq!(status, StatusCode::FOUND, "{body}");
    let location = url::Url::parse(&location).expect("an absolute redirect");
    let authorization_code = location
        .query_pairs()
        .find(|(name, _)| name == "code")
        .map(|(_, value)| value.into_owned())
        .expect("a code in the redirect");

    let exchange = [
        ("grant_type", "authorization_code"),
        ("code", authorization_code.as_str()),
        ("redirect_uri", APP_REDIRECT),
        ("client_id", "audit-app"),
        ("code_verifier", VERIFIER),
    ];
    let token_url = format!("{}/oauth/token", server.origin());
    let response = server
        .client()
        .post(&token_url)
        .form(&exchange)
        .send()
        .await;
    let tokens: Value = response.expect("token request").json().await.expect("JSON");
    let access = tokens["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned();
    // The code works once; the second exchange is rejected.
    let response = server
        .client()
        .post(&token_url)
        .form(&exchange)
        .send()
        .await;
    assert_eq!(
        response.expect("token request").status(),
        StatusCode::BAD_REQUEST
    );
    let revoke = [("token", access.as_str()), ("client_id", "audit-app")];
    let response = server
        .client()
        .post(format!("{}/oauth/revoke", server.origin()))
        .form(&revoke)
        .send()
        .await;
    assert_eq!(response.expect("revoke").status(), StatusCode::OK);

    // Signing out ends the web session: the next authorization asks for
    // the password again. A post from another site's page is rejected.
    let foreign = browser
        .http
        .post(format!("{}/oauth/logout", server.origin()))
        .header(reqwest::header::ORIGIN, "https://attacker.example");
    let (status, _, _) = browser.send(foreign).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let page = browser.post("/oauth/logout", &[]).await;
    assert!(page.contains("You are signed out"), "{page}");
    let request = browser
        .http
        .get(format!("{}/oauth/authorize", server.origin()))
        .query(&params);
    let (status, _, page) = browser.send(request).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("action=\"/oauth/login\""), "{page}");

    let events = all_events(&server).await;
    let text = Value::Array(events.clone()).to_string();
    for secret_text in [
        PASSWORD,
        WRONG_PASSWORD,
        &access,
        &authorization_code,
        &code,
    ] {
        assert!(!text.contains(secret_text), "a secret in the audit log");
    }
    let failed = with_detail(&events, "event", "signinfailed");
    assert_eq!(failed.len(), 4, "three passwords and one code: {failed:?}");
    assert!(failed.iter().all(|e| e["outcome"] == "4"));
    assert_eq!(
        failed
            .iter()
            .filter(|e| e["outcomeDesc"] == "invalid_credentials")
            .count(),
        3
    );
    assert_eq!(
        failed
            .iter()
            .filter(|e| e["outcomeDesc"] == "invalid_second_factor")
            .count(),
        1
    );
    assert!(
        failed
            .iter()
            .all(|e| e["agent"].to_string().contains("127.0.0.1"))
    );
    let signed_in = with_detail(&events, "event", "signin");
    assert_eq!(signed_in.len(), 1, "{signed_in:?}");
    assert_eq!(signed_in[0]["outcome"], "0");
    assert_eq!(signed_in[0]["subtype"][0]["code"], "110122", "Login");
    let issued = with_detail(&events, "event", "tokenissued");
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert!(names_agent(issued[0], "audit-app"), "{}", issued[0]);
    let rejected = with_detail(&events, "event", "tokenrejected");
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0]["outcomeDesc"], "invalid_grant");
    assert_eq!(with_detail(&events, "event", "tokenrevoked").len(), 1);
    let signed_out = with_detail(&events, "event", "signout");
    assert_eq!(signed_out.len(), 1, "{signed_out:?}");
    assert_eq!(signed_out[0]["subtype"][0]["code"], "110123", "Logout");
    assert_eq!(
        signed_out[0]["agent"][0]["who"], signed_in[0]["agent"][0]["who"],
        "the sign-out names the user who signed in"
    );
    let alerts = with_detail(&events, "alert", "sign_in_failures");
    assert!(!alerts.is_empty(), "an alert record");
    assert!(alerts.iter().all(|e| e["type"]["code"] == "110113"));
}

/// The JSON bodies an HTTPS test endpoint received.
type Posts = std::sync::Arc<std::sync::Mutex<Vec<Value>>>;

/// Runs an HTTPS endpoint that answers every POST with 200 and keeps its
/// JSON body.
fn start_webhook(
    listener: tokio::net::TcpListener,
    config: std::sync::Arc<rustls::ServerConfig>,
    posts: Posts,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let posts = posts.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
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
                        break request[end + 4..end + 4 + length].to_vec();
                    }
                };
                if let Ok(json) = serde_json::from_slice(&body) {
                    posts.lock().expect("lock").push(json);
                }
                let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                let _ = stream.write_all(reply).await;
                let _ = stream.shutdown().await;
            });
        }
    })
}

#[tokio::test]
async fn alerts_reach_log_audit_and_webhook() {
    let pki = test_pki::pki();
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca_path = dir.path().join("webhook-ca.pem");
    std::fs::write(&ca_path, &pki.ca_pem).expect("write the CA");
    let ca_arg = ca_path.to_str().expect("UTF-8 path");

    // A plain-HTTP webhook is rejected at startup.
    let output = Command::new(WARD)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("refused"))
        .args([
            "--alert-webhook",
            "http://127.0.0.1:9/alerts",
            "--siem-ca",
            ca_arg,
        ])
        .output()
        .expect("run ward serve");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("https://"));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let posts: Posts = std::sync::Arc::default();
    let webhook = start_webhook(listener, pki.server.clone(), posts.clone());
    let url = format!("https://localhost:{port}/alerts");
    let server = start_with_config(
        ALERT_SETTINGS,
        &["--alert-webhook", &url, "--siem-ca", ca_arg],
    );
    let admin = server.token("system/*.cruds");

    // One reader touches four patients, more than the threshold of three.
    for index in 0..4 {
        let id = format!("many-{index}");
        let patient = json!({ "resourceType": "Patient", "id": id });
        let (status, _, _) = server
            .put_json(&format!("/Patient/{id}"), &admin, &patient)
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let reader = server.token_with("system/Patient.rs", &["--subject", "bulk-reader"]);
    for index in 0..4 {
        let (status, _, _) = server.get(&format!("/Patient/many-{index}"), &reader).await;
        assert_eq!(status, StatusCode::OK);
    }
    let line = alert_line(&server, "distinct_patients").await;
    assert!(line.contains("bulk-reader"), "{line}");
    assert!(
        !line.contains("many-"),
        "no patient ids in the alert: {line}"
    );

    let physician = user_token(
        &server,
        "doctor-7",
        "physician",
        "user/*.cruds",
        Some("Practitioner/d7"),
    );
    let reason = json!({ "resourceType": "Parameters", "parameter": [
        { "name": "reason", "valueString": "cardiac arrest" },
    ] });
    let (status, _, body) = server
        .post_json("/Patient/many-0/$break-the-glass", &physician, &reason)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let line = alert_line(&server, "break_the_glass").await;
    assert!(line.contains("doctor-7"), "{line}");

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rules: Vec<String> = posts
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|post| post["rule"].as_str().map(str::to_owned))
            .collect();
        if rules.iter().any(|r| r == "distinct_patients")
            && rules.iter().any(|r| r == "break_the_glass")
        {
            break;
        }
        assert!(Instant::now() < deadline, "webhook posts: {rules:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let posted = Value::Array(posts.lock().expect("lock").clone()).to_string();
    assert!(
        !posted.contains("many-"),
        "no patient ids in webhook posts: {posted}"
    );
    assert!(
        !posted.contains("cardiac"),
        "no request content in webhook posts"
    );
    webhook.abort();

    let events = all_events(&server).await;
    let distinct = with_detail(&events, "alert", "distinct_patients");
    assert_eq!(distinct.len(), 1, "{distinct:?}");
    assert_eq!(detail(distinct[0], "user").as_deref(), Some("bulk-reader"));
    assert_eq!(detail(distinct[0], "patients").as_deref(), Some("4"));
    let glass = with_detail(&events, "alert", "break_the_glass");
    assert_eq!(glass.len(), 1, "{glass:?}");
    assert!(names_agent(glass[0], "doctor-7"));
}

#[tokio::test]
async fn admin_commands_are_audited() {
    let server = Server::start_with(&[], &[("NO_COLOR", "1")]);
    add_user(&server, "frank");
    ward(&server, &["user", "reset-mfa", "frank"], None);
    ward(&server, &["user", "disable", "frank"], None);
    ward(
        &server,
        &[
            "client",
            "add",
            "--id",
            "chart-app",
            "--redirect-uri",
            APP_REDIRECT,
        ],
        None,
    );
    let events = all_events(&server).await;
    let added = with_detail(&events, "event", "user_added");
    assert_eq!(added.len(), 1, "{added:?}");
    assert_eq!(detail(added[0], "username").as_deref(), Some("frank"));
    assert_eq!(detail(added[0], "role").as_deref(), Some("physician"));
    assert_eq!(added[0]["type"]["code"], "110113", "Security Alert");
    assert!(names_agent(added[0], "ward-cli"), "{}", added[0]);
    assert!(
        !Value::Array(events.clone()).to_string().contains(PASSWORD),
        "no password in the audit log"
    );
    for event in ["user_mfa_reset", "user_disabled"] {
        let found = with_detail(&events, "event", event);
        assert_eq!(found.len(), 1, "{event}: {found:?}");
        assert_eq!(detail(found[0], "username").as_deref(), Some("frank"));
    }
    let registered = with_detail(&events, "event", "client_registered");
    assert_eq!(registered.len(), 1, "{registered:?}");
    assert_eq!(
        detail(registered[0], "client").as_deref(),
        Some("chart-app")
    );

    // The first start records the policy it loaded; a restart with a new
    // policy file records the change with both digests.
    let policies = with_detail(&events, "event", "policy_changed");
    assert_eq!(policies.len(), 1, "{policies:?}");
    assert_eq!(
        detail(policies[0], "previous_sha256").as_deref(),
        Some("none")
    );
    let first = detail(policies[0], "sha256").expect("a digest");
    let (root, data) = server.stop();
    let policy = format!(
        "{}\n# Reviewed by the security office.\n",
        ward_auth::policy::DEFAULT_POLICY
    );
    std::fs::write(data.join("policy.toml"), policy).expect("write policy.toml");
    let server = Server::start_in(root, data, &[], &[("NO_COLOR", "1")]);
    let events = all_events(&server).await;
    let policies = with_detail(&events, "event", "policy_changed");
    assert_eq!(policies.len(), 2, "{policies:?}");
    let second = policies
        .iter()
        .find(|event| detail(event, "previous_sha256").as_deref() == Some(first.as_str()))
        .expect("the change names the previous digest");
    assert_ne!(detail(second, "sha256").as_deref(), Some(first.as_str()));
    let (root, data) = server.stop();
    let server = Server::start_in(root, data, &[], &[("NO_COLOR", "1")]);
    let events = all_events(&server).await;
    assert_eq!(
        with_detail(&events, "event", "policy_changed").len(),
        2,
        "an unchanged policy is not recorded again"
    );
}
