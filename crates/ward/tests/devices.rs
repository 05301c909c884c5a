//! Device trust over real HTTPS: enrollment with one-time codes, check-in
//! with mutual TLS, revocation, the wipe and its confirmation, the
//! lost-device report and the audit records of each device event.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::{Server, WARD, parse_body};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};
use ward_server::setup::DataDir;
use ward_store::{Database, Store};

/// A device key with its CSR.
struct DeviceKey {
    key_pem: String,
    csr_pem: String,
}

fn device_key() -> DeviceKey {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate a key");
    let params = CertificateParams::new(Vec::<String>::new()).expect("params");
    let csr = params.serialize_request(&key).expect("CSR");
    DeviceKey {
        key_pem: key.serialize_pem(),
        csr_pem: csr.pem().expect("CSR PEM"),
    }
}

fn posture(screen_lock: bool) -> Value {
    json!({
        "os": "android", "os_version": "14", "screen_lock": screen_lock,
        "storage_encrypted": true, "rooted": false, "app_version": "0.1.0",
    })
}

/// Runs a `ward` subcommand on the server's data directory.
fn ward(server: &Server, args: &[&str]) -> String {
    let data = server.data_dir().to_str().expect("UTF-8 path").to_owned();
    let mut command = Command::new(WARD);
    command.args(args).args(["--data", &data]);
    // `ward ca` works on the data directory only.
    if let Some(database) = server.database().filter(|_| args.first() != Some(&"ca")) {
        command.args(["--database", database.url().as_str()]);
    }
    let output = command.output().expect("run ward");
    assert!(
        output.status.success(),
        "ward {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

fn add_user(server: &Server, name: &str) {
    let data = server.data_dir().to_str().expect("UTF-8 path").to_owned();
    let mut command = Command::new(WARD);
    command.args([
        "user",
        "add",
        "--username",
        name,
        "--role",
        "physician",
        "--data",
        &data,
    ]);
    if let Some(database) = server.database() {
        command.args(["--database", database.url().as_str()]);
    }
    let output = command.output().expect("run ward user add");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Opens the server's store beside the running server. The PostgreSQL
/// store blocks on a runtime of its own, so store work in these async
/// tests runs inside `block_in_place`.
fn open_store(server: &Server) -> Arc<dyn Store> {
    let (keys, _) = DataDir::new(server.data_dir())
        .open_or_init("test")
        .expect("open the data directory");
    let database = match server.database() {
        Some(database) => Database::Postgres(database.url()),
        None => Database::Sqlite(server.data_dir().join("ward.db")),
    };
    ward_store::open(&database, &keys.master).expect("open the store")
}

/// An HTTPS client that presents the device certificate.
fn device_client(server: &Server, cert_pem: &str, key: &DeviceKey) -> Client {
    let ca = std::fs::read(server.data_dir().join("ca.pem")).expect("read ca.pem");
    let identity = reqwest::Identity::from_pem(format!("{cert_pem}{}", key.key_pem).as_bytes())
        .expect("device identity");
    Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA"))
        .identity(identity)
        .build()
        .expect("device client")
}

async fn post(
    client: &Client,
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> (StatusCode, Value) {
    let mut request = client.post(url).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("send");
    let status = response.status();
    let bytes = response.bytes().await.expect("body");
    (status, parse_body(&bytes))
}

async fn get(client: &Client, url: &str, token: &str) -> (StatusCode, Value) {
    let response = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("send");
    let status = response.status();
    let bytes = response.bytes().await.expect("body");
    (status, parse_body(&bytes))
}

/// The `event` detail of every device record in the audit log.
fn device_events(store: &dyn Store) -> Vec<String> {
    let rows = store.audit_rows(0, 100_000).expect("audit rows");
    rows.iter()
        .filter_map(|row| {
            let entry = ward_audit::ChainEntry::from_canonical(&row.canonical).expect("entry");
            entry.record.detail.get("event").cloned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn enrollment_codes_work_once_and_expire() {
    let server = Server::start();
    add_user(&server, "alice");
    let admin = server.token("admin");
    let client = server.client();
    let origin = server.origin().to_owned();

    let (status, code) = post(
        &client,
        &format!("{origin}/device/enrollment-codes"),
        Some(&admin),
        &json!({"user": "alice", "ttl_seconds": 900}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{code}");
    let code_text = code["code"].as_str().expect("code").to_owned();
    let enroll_url = code["url"].as_str().expect("url");
    assert_eq!(
        enroll_url,
        format!("{origin}/device/enroll#code={code_text}"),
        "the code belongs in the fragment, which clients never send"
    );
    assert!(code["expires_at"].is_string());

    // A browser that opens the URL sends no fragment and gets a page
    // pointing to the app.
    let page = client.get(enroll_url).send().await.expect("GET enroll");
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.expect("page");
    assert!(page.contains("mobile app"), "{page}");
    assert!(!page.contains(&code_text), "{page}");

    let key = device_key();
    let enroll = json!({"code": code_text, "csr": key.csr_pem, "name": "Alice's phone", "posture": posture(true)});
    let url = format!("{origin}/device/enroll");
    let (status, enrolled) = post(&client, &url, None, &enroll).await;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    assert_eq!(enrolled["compliance"]["compliant"], true);
    assert_eq!(enrolled["device_id"].as_str().unwrap().len(), 32);

    let (status, again) = post(&client, &url, None, &enroll).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{again}");
    assert!(again.to_string().contains("already used"), "{again}");

    let store = tokio::task::block_in_place(|| open_store(&server));
    let expired = tokio::task::block_in_place(|| {
        let user = ward_server::oauth::identity::find_user(store.as_ref(), "alice")
            .unwrap()
            .unwrap();
        let past = OffsetDateTime::now_utc() - Duration::hours(1);
        ward_device::create_code(
            store.as_ref(),
            &user.id,
            "alice",
            "test",
            Duration::minutes(15),
            past,
        )
        .unwrap()
    });
    let body = json!({"code": expired.code.as_str(), "csr": key.csr_pem, "name": "x", "posture": posture(true)});
    let (status, rejected) = post(&client, &url, None, &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{rejected}");
    assert!(rejected.to_string().contains("expired"), "{rejected}");

    let someone = server.token("system/*.cruds");
    let (status, _) = post(
        &client,
        &format!("{origin}/device/enrollment-codes"),
        Some(&someone),
        &json!({"user": "alice"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let events = tokio::task::block_in_place(|| device_events(store.as_ref()));
    assert!(
        events.iter().any(|e| e == "enrollment_code_created"),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e == "enrolled"), "{events:?}");
    assert!(
        events.iter().any(|e| e == "enrollment_rejected"),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn checkin_revoke_wipe_and_report() {
    let server = Server::start();
    add_user(&server, "bob");
    let admin = server.token("admin");
    let client = server.client();
    let origin = server.origin().to_owned();

    let (_, code) = post(
        &client,
        &format!("{origin}/device/enrollment-codes"),
        Some(&admin),
        &json!({"user": "bob"}),
    )
    .await;
    let key = device_key();
    let (status, enrolled) = post(
        &client,
        &format!("{origin}/device/enroll"),
        None,
        &json!({"code": code["code"], "csr": key.csr_pem, "name": "Bob's tablet", "posture": posture(true)}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    let id = enrolled["device_id"].as_str().unwrap().to_owned();
    let cert = enrolled["certificate"].as_str().unwrap().to_owned();
    let device = device_client(&server, &cert, &key);
    let checkin_url = format!("{origin}/device/checkin");

    let (status, _) = post(
        &client,
        &checkin_url,
        None,
        &json!({"posture": posture(true)}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "check-in without a certificate"
    );

    let (status, ok) = post(
        &device,
        &checkin_url,
        None,
        &json!({"posture": posture(true)}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{ok}");
    assert_eq!(ok["device_id"], id.as_str());
    assert_eq!(ok["status"], "active");
    assert_eq!(ok["wipe"], false);
    assert_eq!(ok["compliance"]["compliant"], true);
    assert!(ok["certificate_not_after"].is_string());

    let (status, unlocked) = post(
        &device,
        &checkin_url,
        None,
        &json!({"posture": posture(false)}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{unlocked}");
    assert_eq!(unlocked["compliance"]["compliant"], false);
    assert_eq!(unlocked["compliance"]["failures"][0]["rule"], "screen_lock");

    let admin_url = format!("{origin}/admin/devices/{id}");
    let (status, shown) = get(&client, &admin_url, &admin).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["compliance"]["compliant"], false);
    let (status, _) = get(&client, &admin_url, &server.token("system/*.cruds")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, listed) = get(&client, &format!("{origin}/admin/devices"), &admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["devices"].as_array().unwrap().len(), 1);

    let (status, revoked) = post(
        &client,
        &format!("{admin_url}/revoke"),
        Some(&admin),
        &json!({"reason": "lost"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["reason"], "lost");

    let (status, wipe) = post(
        &device,
        &checkin_url,
        None,
        &json!({"posture": posture(true)}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{wipe}");
    assert_eq!(wipe["status"], "revoked");
    assert_eq!(wipe["wipe"], true);

    let (status, _) = post(
        &device,
        &format!("{origin}/device/renew"),
        None,
        &json!({"csr": device_key().csr_pem}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a revoked device cannot renew"
    );

    let (status, confirmed) = post(
        &device,
        &format!("{origin}/device/wipe-confirm"),
        None,
        &json!({"wiped_at": "2026-03-01T10:00:00Z"}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{confirmed}");

    let (status, report) = get(&client, &format!("{admin_url}/report"), &admin).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["wipe_confirmed"], true);
    // The claimed wipe time predates the wipe request, so only the
    // server's receipt time is kept.
    assert_eq!(report["wiped_at"], Value::Null, "{report}");
    assert!(report["wipe_confirmed_at"].is_string(), "{report}");
    // The device made no FHIR request: check-ins, the rejected renewal and
    // the wipe confirmation are not syncs.
    assert_eq!(report["last_sync"], Value::Null, "{report}");
    assert_eq!(report["storage_encrypted"], true);
    assert_eq!(report["status"], "revoked");
    let text = client
        .get(format!("{admin_url}/report?format=text"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("Wipe confirmed:     yes"), "{text}");

    let cli_report = ward(&server, &["device", "report", &id, "--json"]);
    let cli_report: Value = serde_json::from_str(&cli_report).expect("report JSON");
    assert_eq!(cli_report["wipe_confirmed"], true);
    let listing = ward(&server, &["device", "list"]);
    assert!(listing.contains(&id), "{listing}");
    assert!(listing.contains("revoked"), "{listing}");

    let events = tokio::task::block_in_place(|| device_events(open_store(&server).as_ref()));
    for expected in [
        "enrolled",
        "compliance_changed",
        "revoked",
        "revoked_device_rejected",
        "wipe_confirmed",
    ] {
        assert!(
            events.iter().any(|e| e == expected),
            "{expected}: {events:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_revokes_and_imports_a_ca() {
    let server = Server::start();
    add_user(&server, "carol");
    let output = ward(&server, &["device", "enroll-code", "--user", "carol"]);
    let code = output
        .lines()
        .find_map(|line| line.strip_prefix("Enrollment code: "))
        .expect("the code is printed")
        .to_owned();
    let key = device_key();
    let origin = server.origin().to_owned();
    let (status, enrolled) = post(
        &server.client(),
        &format!("{origin}/device/enroll"),
        None,
        &json!({"code": code, "csr": key.csr_pem, "name": "Carol's phone", "posture": posture(true)}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    let id = enrolled["device_id"].as_str().unwrap().to_owned();
    ward(&server, &["device", "revoke", &id, "--reason", "stolen"]);
    let shown: Value =
        serde_json::from_str(&ward(&server, &["device", "show", &id, "--json"])).unwrap();
    assert_eq!(shown["status"], "revoked");
    assert_eq!(shown["reason"], "stolen");

    // An organization's own CA replaces the built-in one.
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Example Hospital CA");
    let ca_cert = params.self_signed(&ca_key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("ca.pem");
    let key_path = dir.path().join("ca.key");
    std::fs::write(&cert_path, ca_cert.pem()).unwrap();
    std::fs::write(&key_path, ca_key.serialize_pem()).unwrap();
    ward(
        &server,
        &[
            "ca",
            "import",
            "--cert",
            cert_path.to_str().unwrap(),
            "--key",
            key_path.to_str().unwrap(),
        ],
    );
    let printed = ward(&server, &["ca"]);
    assert_eq!(printed.trim(), ca_cert.pem().trim());
    let (keys, _) = DataDir::new(server.data_dir())
        .open_or_init("test")
        .unwrap();
    assert_eq!(keys.ca.to_pem().trim(), ca_cert.pem().trim());
}

/// Enrolls a device for `user` with a code from `admin` and returns its id.
async fn enroll_named(server: &Server, admin: &str, user: &str, name: &str) -> (StatusCode, Value) {
    let client = server.client();
    let origin = server.origin().to_owned();
    let (status, code) = post(
        &client,
        &format!("{origin}/device/enrollment-codes"),
        Some(admin),
        &json!({"user": user}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{code}");
    let key = device_key();
    post(
        &client,
        &format!("{origin}/device/enroll"),
        None,
        &json!({"code": code["code"], "csr": key.csr_pem, "name": name, "posture": posture(true)}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_is_final_and_names_are_plain() {
    let server = Server::start();
    add_user(&server, "dave");
    let admin = server.token("admin");
    let client = server.client();
    let origin = server.origin().to_owned();

    // Names that would display as something else are rejected, naming the field.
    for name in [
        "Dave's \u{202E}enohp",
        "a\u{2066}b\u{2069}",
        "phone\u{200F}",
        "tab\u{0007}let",
    ] {
        let (status, refused) = enroll_named(&server, &admin, "dave", name).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name:?}: {refused}");
        let text = refused.to_string();
        assert!(text.contains("name:"), "{name:?}: {text}");
        assert!(text.contains("bidirectional"), "{name:?}: {text}");
    }

    // A second revoke keeps the first reason and returns 409.
    let (status, first) = enroll_named(&server, &admin, "dave", "Dave's phone").await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let id = first["device_id"].as_str().unwrap().to_owned();
    let admin_url = format!("{origin}/admin/devices/{id}");
    let (status, revoked) = post(
        &client,
        &format!("{admin_url}/revoke"),
        Some(&admin),
        &json!({"reason": "stolen"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    let revoked_at = revoked["revoked_at"].clone();
    let (status, again) = post(
        &client,
        &format!("{admin_url}/revoke"),
        Some(&admin),
        &json!({"reason": "retired"}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert!(again.to_string().contains("already revoked"), "{again}");
    let (status, wipe) = post(
        &client,
        &format!("{admin_url}/wipe"),
        Some(&admin),
        &json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{wipe}");
    let (_, shown) = get(&client, &admin_url, &admin).await;
    assert_eq!(shown["reason"], "stolen", "{shown}");
    assert_eq!(shown["revoked_at"], revoked_at, "{shown}");

    // The CLI rejects it too, naming the first revocation.
    let data = server.data_dir().to_str().unwrap().to_owned();
    let mut command = Command::new(WARD);
    command.args([
        "device",
        "revoke",
        &id,
        "--reason",
        "compromised",
        "--data",
        &data,
    ]);
    if let Some(database) = server.database() {
        command.args(["--database", database.url().as_str()]);
    }
    let output = command.output().expect("run ward device revoke");
    assert!(!output.status.success(), "a second CLI revoke fails");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already revoked"), "{stderr}");
    assert!(stderr.contains("stolen"), "{stderr}");
    let shown: Value =
        serde_json::from_str(&ward(&server, &["device", "show", &id, "--json"])).unwrap();
    assert_eq!(shown["reason"], "stolen");

    // Exactly one of several concurrent revokes wins.
    let (_, second) = enroll_named(&server, &admin, "dave", "Dave's tablet").await;
    let second_id = second["device_id"].as_str().unwrap().to_owned();
    let url = format!("{origin}/admin/devices/{second_id}/revoke");
    let attempts = ["lost", "stolen", "retired", "compromised", "lost", "stolen"].map(|reason| {
        let (client, url, admin) = (client.clone(), url.clone(), admin.clone());
        tokio::spawn(async move {
            post(&client, &url, Some(&admin), &json!({ "reason": reason }))
                .await
                .0
        })
    });
    let mut statuses = Vec::new();
    for attempt in attempts {
        statuses.push(attempt.await.expect("join"));
    }
    let wins = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let conflicts = statuses
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count();
    assert_eq!((wins, conflicts), (1, 5), "{statuses:?}");

    // A wipe of an active device records its reason.
    let (_, third) = enroll_named(&server, &admin, "dave", "Dave's watch").await;
    let third_id = third["device_id"].as_str().unwrap().to_owned();
    let (status, wiped) = post(
        &client,
        &format!("{origin}/admin/devices/{third_id}/wipe"),
        Some(&admin),
        &json!({"reason": "lost"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{wiped}");
    assert_eq!(wiped["reason"], "lost");
    assert!(wiped["wipe_requested_at"].is_string(), "{wiped}");

    // One revocation record per revoked device: the refused attempts wrote none.
    let events = tokio::task::block_in_place(|| device_events(open_store(&server).as_ref()));
    let revocations = events.iter().filter(|e| *e == "revoked").count();
    assert_eq!(revocations, 2, "{events:?}");
    let wipes = events.iter().filter(|e| *e == "wipe_requested").count();
    assert_eq!(wipes, 1, "{events:?}");
}
