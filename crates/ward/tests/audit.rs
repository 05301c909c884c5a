//! The audit log over HTTPS and real processes: every interaction leaves
//! an AuditEvent, the log and its checkpoints detect tampering, and a
//! SIGKILL loses no acknowledged write or its record.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::fixtures::Admin;
use common::{Server, WARD};
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
