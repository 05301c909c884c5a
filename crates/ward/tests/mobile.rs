//! The mobile client core against a real `ward serve` over HTTPS: first
//! and delta sync of a care-team panel, offline documentation replayed at
//! the next sync, an `If-Match` conflict kept for the user, and no
//! plaintext patient data in the client's files. The enrolled-device test
//! runs the whole device life cycle: enrollment with a code from
//! `ward device enroll-code`, sign-in with password and TOTP over mutual
//! TLS, certificate-bound tokens, the compliance gate, revocation, the
//! remote wipe and the lost-device report.
//!
//! The client is blocking, so these tests are plain `#[test]`s and run the
//! async harness calls on a runtime of their own.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::fixtures::files_under;
use common::{Server, WARD, totp_code, ward};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use reqwest::StatusCode;
use serde_json::{Value, json};
use ward_auth::totp::{self, TotpSecret};
use ward_mobile::{Client, ClientOptions, DraftState, KdfCost, MobileError, Posture, Vitals};

const PIN: &str = "482915";
const FAMILY: &str = "Threnodywick";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a runtime")
}

struct Panel {
    server: Server,
    admin: String,
    p1: String,
    p2: String,
    obs1: String,
    note1: String,
}

fn create(rt: &tokio::runtime::Runtime, server: &Server, token: &str, resource: Value) -> String {
    let path = resource["resourceType"].as_str().unwrap().to_owned();
    let (status, _, body) = rt.block_on(server.post_json(&path, token, &resource));
    assert!(status.is_success(), "creating {path}: {body}");
    body["id"].as_str().unwrap().to_owned()
}

fn observation(patient: &str, value: u32) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}], "text": "Body height"},
        "subject": {"reference": format!("Patient/{patient}")},
        "valueQuantity": {"value": value, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm"},
    })
}

/// Practitioner `dr` on the care team of p1 and p2 (not p3), each with
/// observations, and a note for p1.
fn panel(rt: &tokio::runtime::Runtime) -> Panel {
    let server = Server::start();
    let admin = server.token("system/*.cruds");
    let practitioner =
        json!({"resourceType": "Practitioner", "id": "dr", "name": [{"family": "Osler"}]});
    let (status, _, body) = rt.block_on(server.put_json("/Practitioner/dr", &admin, &practitioner));
    assert!(status.is_success(), "{body}");
    let mut ids = Vec::new();
    for given in ["Ada", "Bo", "Cy"] {
        let patient = json!({"resourceType": "Patient", "name": [{"family": FAMILY, "given": [given]}], "birthDate": "1970-01-01"});
        ids.push(create(rt, &server, &admin, patient));
    }
    for patient in &ids[..2] {
        let team = json!({
            "resourceType": "CareTeam",
            "status": "active",
            "subject": {"reference": format!("Patient/{patient}")},
            "participant": [{"member": {"reference": "Practitioner/dr"}}],
        });
        create(rt, &server, &admin, team);
    }
    let mut obs = Vec::new();
    for patient in &ids {
        for value in [150, 160] {
            obs.push(create(rt, &server, &admin, observation(patient, value)));
        }
    }
    let note = json!({
        "resourceType": "DocumentReference",
        "status": "current",
        "subject": {"reference": format!("Patient/{}", ids[0])},
        "content": [{"attachment": {"contentType": "text/plain", "data": "QWRtaXR0ZWQ="}}],
    });
    let note1 = create(rt, &server, &admin, note);
    Panel {
        p1: ids[0].clone(),
        p2: ids[1].clone(),
        obs1: obs[0].clone(),
        note1,
        server,
        admin,
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        kdf: KdfCost {
            memory_kib: 256,
            iterations: 1,
        },
        ..ClientOptions::default()
    }
}

fn client_for(panel: &Panel, dir: &Path) -> Client {
    let ca = std::fs::read_to_string(panel.server.data_dir().join("ca.pem")).unwrap();
    let client = Client::open_with(dir, options()).unwrap();
    client.provision(panel.server.origin(), &ca, PIN).unwrap();
    let token = panel.server.token_with(
        "user/*.cruds",
        &[
            "--role",
            "physician",
            "--fhir-user",
            "Practitioner/dr",
            "--subject",
            "u-dr",
        ],
    );
    client.use_bearer_token(&token).unwrap();
    client
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn files_contain(dir: &Path, needle: &str) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        path.is_file() && contains(&std::fs::read(&path).unwrap(), needle)
    })
}

#[test]
fn mobile_sync_and_offline_documentation() {
    let rt = runtime();
    let panel = panel(&rt);
    let dir = tempfile::tempdir().unwrap();
    // The cursor has one-second resolution; keep the setup writes before it.
    std::thread::sleep(Duration::from_millis(2100));
    let client = client_for(&panel, dir.path());

    let first = client.sync().unwrap();
    assert!(first.full);
    assert_eq!(first.patients, 2);
    assert_eq!(first.patients_pulled, 2);
    // Two patients, four observations, one note.
    assert_eq!(first.resources_changed, 7, "{first:?}");
    assert!(first.bytes_received > 0);
    let patients = client.patients().unwrap();
    let mut ids: Vec<&str> = patients.iter().map(|p| p.id.as_str()).collect();
    ids.sort();
    let mut expected = vec![panel.p1.as_str(), panel.p2.as_str()];
    expected.sort();
    assert_eq!(ids, expected);
    let chart = client.show(&panel.p1).unwrap();
    assert_eq!(chart.resources.len(), 4, "{:?}", chart.resources);
    assert!(chart.patient.name.contains(FAMILY));

    // Offline documentation survives a lock.
    let vitals = Vitals {
        heart_rate: Some(72.0),
        systolic: Some(120.0),
        diastolic: Some(80.0),
        ..Vitals::default()
    };
    let vital_drafts = client.document_vitals(&panel.p1, vitals).unwrap();
    assert_eq!(vital_drafts.len(), 2);
    client
        .document_note(
            &panel.p2,
            "Round",
            "Patient Threnodywick walked today.",
            None,
        )
        .unwrap();
    client.lock();
    client.unlock(PIN).unwrap();
    assert_eq!(client.status().unwrap().drafts.len(), 3);

    // One change on the server, then a delta sync.
    let mut changed = observation(&panel.p1, 171);
    changed["id"] = json!(panel.obs1);
    let (status, _, body) = rt.block_on(panel.server.put_json(
        &format!("/Observation/{}", panel.obs1),
        &panel.admin,
        &changed,
    ));
    assert!(status.is_success(), "{body}");
    let second = client.sync().unwrap();
    assert!(!second.full);
    assert_eq!(second.drafts_sent, 3, "{second:?}");
    assert_eq!(second.conflicts, 0);
    assert_eq!(second.patients_pulled, 0);
    assert_eq!(second.resources_changed, 1, "{second:?}");
    // The changed observation and the three resources this client sent
    // (already cached, so not counted as changed).
    assert_eq!(second.resources_received, 4, "{second:?}");
    assert!(client.status().unwrap().drafts.is_empty());
    let (_, _, found) = rt.block_on(panel.server.get(
        &format!(
            "Observation?patient={}&code=http://loinc.org|8867-4",
            panel.p1
        ),
        &panel.admin,
    ));
    assert_eq!(found["total"], 1, "{found}");

    // Nothing changed: nothing new is cached.
    let third = client.sync().unwrap();
    assert_eq!(third.resources_changed, 0, "{third:?}");
    assert_eq!(third.drafts_sent, 0);

    // An amendment meets a newer server version: 412, kept as a conflict.
    client
        .document_note(
            &panel.p1,
            "Amended",
            "Second thoughts.",
            Some(panel.note1.clone()),
        )
        .unwrap();
    let (_, _, current) = rt.block_on(
        panel
            .server
            .get(&format!("DocumentReference/{}", panel.note1), &panel.admin),
    );
    let mut newer = current.clone();
    newer["description"] = json!("changed on the server");
    let (status, _, body) = rt.block_on(panel.server.put_json(
        &format!("/DocumentReference/{}", panel.note1),
        &panel.admin,
        &newer,
    ));
    assert!(status.is_success(), "{body}");
    let fourth = client.sync().unwrap();
    assert_eq!(fourth.conflicts, 1, "{fourth:?}");
    let status = client.status().unwrap();
    assert_eq!(status.conflicts.len(), 1);
    assert_eq!(status.conflicts[0].state, DraftState::Conflict);
    let (_, _, after) = rt.block_on(
        panel
            .server
            .get(&format!("DocumentReference/{}", panel.note1), &panel.admin),
    );
    assert_eq!(after["description"], "changed on the server");

    // No plaintext patient data in the client's files.
    client.checkpoint().unwrap();
    assert!(!files_contain(dir.path(), FAMILY));
    assert!(!files_contain(dir.path(), "Second thoughts"));
    assert!(!files_contain(dir.path(), &panel.p1));
}

#[test]
fn mobile_removed_patient_purged() {
    let rt = runtime();
    let panel = panel(&rt);
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&panel, dir.path());
    client.sync().unwrap();
    assert!(client.show(&panel.p2).is_ok());

    // Take p2 off the care team.
    let (_, _, teams) = rt.block_on(panel.server.get(
        &format!("CareTeam?subject=Patient/{}", panel.p2),
        &panel.admin,
    ));
    let team_id = teams["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _, body) = rt.block_on(
        panel
            .server
            .delete(&format!("CareTeam/{team_id}"), &panel.admin),
    );
    assert!(status.is_success(), "{body}");

    let report = client.sync().unwrap();
    assert_eq!(report.patients, 1);
    assert_eq!(report.patients_removed, 1);
    assert!(client.show(&panel.p2).is_err());
    assert!(client.show(&panel.p1).is_ok());
}

const PASSWORD: &str = "violet-otter-harbor-42";
const CLINICIAN: &str = "wosler";

/// Adds the physician `CLINICIAN` as `Practitioner/dr` and returns the
/// TOTP secret `ward user add` prints.
fn add_clinician(server: &Server) -> String {
    let output = ward(
        server,
        &[
            "user",
            "add",
            "--username",
            CLINICIAN,
            "--role",
            "physician",
            "--password-stdin",
            "--fhir-user",
            "Practitioner/dr",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    output
        .lines()
        .find_map(|line| line.strip_prefix("TOTP secret: "))
        .expect("ward user add prints the TOTP secret")
        .trim()
        .to_owned()
}

/// Creates a one-time enrollment code for `CLINICIAN` with
/// `ward device enroll-code`.
fn enrollment_code(server: &Server) -> String {
    let output = ward(
        server,
        &["device", "enroll-code", "--user", CLINICIAN],
        None,
    );
    output
        .lines()
        .find_map(|line| line.strip_prefix("Enrollment code: "))
        .expect("ward device enroll-code prints the code")
        .trim()
        .to_owned()
}

fn phone_posture(screen_lock: bool) -> Posture {
    Posture {
        os: "ios".to_owned(),
        os_version: "17.4.1".to_owned(),
        screen_lock,
        storage_encrypted: true,
        rooted: false,
        app_version: "0.1.0".to_owned(),
    }
}

/// Decodes the claims of a JWT without verifying it.
fn jwt_claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// Builds an HTTPS client that trusts the server's CA, follows no
/// redirects and presents `identity` (certificate and key PEM) when given.
fn https_client(server: &Server, identity: Option<&str>) -> reqwest::Client {
    let ca = std::fs::read(server.data_dir().join("ca.pem")).expect("read ca.pem");
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA"))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60));
    if let Some(pem) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
    }
    builder.build().expect("HTTPS client")
}

/// Enrolls a second device of `CLINICIAN` with plain HTTP calls and
/// returns its certificate and key as one PEM.
fn other_device(rt: &tokio::runtime::Runtime, server: &Server) -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate a key");
    let csr = CertificateParams::new(Vec::<String>::new())
        .expect("CSR parameters")
        .serialize_request(&key)
        .expect("CSR")
        .pem()
        .expect("CSR PEM");
    let body = json!({
        "code": enrollment_code(server),
        "csr": csr,
        "name": "Spare tablet",
        "posture": phone_posture(true),
    });
    let url = format!("{}/device/enroll", server.origin());
    let (status, answer) = rt.block_on(async {
        let response = server
            .client()
            .post(url)
            .json(&body)
            .send()
            .await
            .expect("send the enrollment");
        let status = response.status();
        (status, response.json::<Value>().await.expect("JSON answer"))
    });
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let certificate = answer["certificate"].as_str().expect("certificate PEM");
    format!("{certificate}{}", key.serialize_pem())
}

/// GETs `url` with `token` as a bearer token and returns the status and
/// the body text.
fn get_status(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> (StatusCode, String) {
    rt.block_on(async {
        let response = client
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .expect("send the request");
        let status = response.status();
        (status, response.text().await.expect("read the body"))
    })
}

/// Asserts that no file under `dir` contains any needle.
fn assert_files_clean(dir: &Path, needles: &[&str]) {
    let files = files_under(dir);
    assert!(!files.is_empty(), "the client directory has no files");
    for file in &files {
        let bytes = std::fs::read(file).expect("read a client file");
        for needle in needles {
            assert!(
                !contains(&bytes, needle),
                "{} contains the plaintext {needle:?}",
                file.display()
            );
        }
    }
}

#[test]
fn mobile_enrolled_device_life_cycle() {
    let rt = runtime();
    let panel = panel(&rt);
    let server = &panel.server;
    // Identifiers and more chart data, so a full pull is clearly larger
    // than a delta.
    for (patient, mrn) in [(&panel.p1, "MRN-ZQ-40417"), (&panel.p2, "MRN-ZQ-40418")] {
        let (_, _, mut current) =
            rt.block_on(server.get(&format!("Patient/{patient}"), &panel.admin));
        current["identifier"] = json!([{"system": "urn:test:mrn", "value": mrn}]);
        let (status, _, body) =
            rt.block_on(server.put_json(&format!("/Patient/{patient}"), &panel.admin, &current));
        assert!(status.is_success(), "{body}");
        for value in 100..110 {
            create(&rt, server, &panel.admin, observation(patient, value));
        }
    }
    let secret = add_clinician(server);
    let ca = std::fs::read_to_string(server.data_dir().join("ca.pem")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Check-ins are explicit below, so every sync goes straight to the
    // FHIR API.
    let options = ClientOptions {
        checkin_interval_secs: 3600,
        ..options()
    };
    let client = Client::open_with(dir.path(), options).unwrap();

    // Enrollment with a code from the CLI, then sign-in over mutual TLS.
    let code = enrollment_code(server);
    let enrollment = client
        .enroll(server.origin(), &ca, &code, PIN, phone_posture(true))
        .unwrap();
    assert!(enrollment.compliance.compliant, "{enrollment:?}");
    let device = enrollment.device_id.clone();
    client
        .login(CLINICIAN, PASSWORD, &totp_code(&secret))
        .unwrap();
    let token = client.access_token().unwrap();
    let claims = jwt_claims(&token);
    assert_eq!(claims["client_id"], "ward-mobile", "{claims}");
    assert_eq!(claims["device"], device.as_str(), "{claims}");
    assert!(claims["cnf"]["x5t#S256"].is_string(), "{claims}");
    assert_eq!(claims["fhirUser"], "Practitioner/dr", "{claims}");

    // The cursor has one-second resolution; keep the setup writes before it.
    std::thread::sleep(Duration::from_millis(2100));
    let first = client.sync().unwrap();
    assert!(first.full, "{first:?}");
    assert_eq!(first.patients, 2, "{first:?}");
    // Two patients, 24 observations, one note.
    assert_eq!(first.resources_changed, 27, "{first:?}");

    // Offline documentation, sent at the next sync.
    let vitals = Vitals {
        heart_rate: Some(72.0),
        systolic: Some(120.0),
        diastolic: Some(80.0),
        ..Vitals::default()
    };
    assert_eq!(client.document_vitals(&panel.p1, vitals).unwrap().len(), 2);
    client
        .document_note(&panel.p2, "Round", "Walked the ward twice today.", None)
        .unwrap();
    let second = client.sync().unwrap();
    assert_eq!(second.drafts_sent, 3, "{second:?}");
    assert_eq!(second.conflicts, 0, "{second:?}");
    assert!(client.status().unwrap().drafts.is_empty());

    // The cursor is the server's `Date` (one-second resolution) minus one
    // second, so a sync within two seconds of the drafts receives them once
    // more. None of them changes the cache.
    std::thread::sleep(Duration::from_millis(2100));
    let quiet = client.sync().unwrap();
    assert_eq!(quiet.resources_changed, 0, "{quiet:?}");
    assert_eq!(quiet.drafts_sent, 0, "{quiet:?}");

    // One change on the server; the next sync transfers only that.
    std::thread::sleep(Duration::from_millis(2100));
    let mut changed = observation(&panel.p1, 171);
    changed["id"] = json!(panel.obs1);
    let (status, _, body) = rt.block_on(server.put_json(
        &format!("/Observation/{}", panel.obs1),
        &panel.admin,
        &changed,
    ));
    assert!(status.is_success(), "{body}");
    let delta = client.sync().unwrap();
    assert!(!delta.full, "{delta:?}");
    assert_eq!(delta.patients_pulled, 0, "{delta:?}");
    assert_eq!(delta.resources_changed, 1, "{delta:?}");
    assert_eq!(delta.resources_received, 1, "{delta:?}");
    assert!(
        delta.bytes_received * 2 < first.bytes_received,
        "the delta ({} bytes) is not much smaller than the full pull ({} bytes)",
        delta.bytes_received,
        first.bytes_received
    );

    // The token copied off the device is useless without its certificate.
    let patient_url = format!("{}/Patient/{}", server.base(), panel.p1);
    let (status, body) = get_status(&rt, &https_client(server, None), &patient_url, &token);
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let other = other_device(&rt, server);
    let (status, body) = get_status(
        &rt,
        &https_client(server, Some(&other)),
        &patient_url,
        &token,
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // A screen lock turned off: FHIR requests fail 403 naming the rule
    // until a compliant check-in.
    let checkin = client.checkin_with(phone_posture(false)).unwrap();
    assert!(!checkin.compliance.compliant, "{checkin:?}");
    assert_eq!(
        checkin.compliance.failures[0].rule, "screen_lock",
        "{checkin:?}"
    );
    match client.sync() {
        Err(MobileError::Forbidden { detail }) => {
            assert!(detail.contains("not compliant"), "{detail}");
            assert!(detail.contains("screen_lock"), "{detail}");
        }
        other => panic!("a non-compliant device synced: {other:?}"),
    }
    let checkin = client.checkin_with(phone_posture(true)).unwrap();
    assert!(checkin.compliance.compliant, "{checkin:?}");
    assert_eq!(checkin.status, "active");
    client.sync().unwrap();

    // The client's files never held the patients' names or identifiers.
    let needles = [
        FAMILY,
        "MRN-ZQ-40417",
        "MRN-ZQ-40418",
        panel.p1.as_str(),
        panel.p2.as_str(),
        "Walked the ward twice",
    ];
    assert_files_clean(dir.path(), &needles);
    client.checkpoint().unwrap();
    assert_files_clean(dir.path(), &needles);

    // Lost: revoked on the server, rejected at the next FHIR request, then
    // wiped and confirmed at the check-in that follows.
    let output = ward(
        server,
        &["device", "revoke", &device, "--reason", "lost"],
        None,
    );
    assert!(output.contains(&device), "{output}");
    match client.sync() {
        Err(MobileError::Wiped { reason }) => {
            assert!(reason.contains("revoked"), "{reason}");
        }
        other => panic!("a revoked device synced: {other:?}"),
    }
    let status = client.status().unwrap();
    assert!(!status.has_keys, "{status:?}");
    assert_eq!(status.enrolled, Some(false), "{status:?}");
    assert!(!client.database_path().exists());

    let report = ward(server, &["device", "report", &device, "--json"], None);
    let report: Value = serde_json::from_str(&report).expect("JSON report");
    assert_eq!(report["status"], "revoked", "{report}");
    assert_eq!(report["reason"], "lost", "{report}");
    assert_eq!(report["wipe_confirmed"], true, "{report}");
    let mut patients: Vec<&str> = report["patients"]
        .as_array()
        .expect("patients")
        .iter()
        .filter_map(|p| p["patient"].as_str())
        .collect();
    patients.sort();
    let mut expected = vec![panel.p1.as_str(), panel.p2.as_str()];
    expected.sort();
    assert_eq!(patients, expected, "{report}");
}

#[test]
fn mobile_client_built_in_with_exact_redirect() {
    let rt = runtime();
    let server = Server::start();
    let http = https_client(&server, None);
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let authorize = |redirect_uri: &str, pkce: bool| {
        let mut params = vec![
            ("response_type", "code"),
            ("client_id", "ward-mobile"),
            ("redirect_uri", redirect_uri),
            ("scope", "openid fhirUser offline_access user/*.cruds"),
            ("state", "st-1"),
        ];
        if pkce {
            params.extend([
                ("code_challenge", challenge),
                ("code_challenge_method", "S256"),
            ]);
        }
        let aud = server.base();
        let url = format!("{}/oauth/authorize", server.origin());
        rt.block_on(async {
            let response = http
                .get(url)
                .query(&params)
                .query(&[("aud", aud.as_str())])
                .send()
                .await
                .expect("send the authorization request");
            let status = response.status();
            let location = common::header(response.headers(), "location").to_owned();
            (status, location, response.text().await.expect("body"))
        })
    };

    // Known without `ward client add`: the sign-in page.
    let (status, _, page) = authorize("com.ward.mobile:/oauth/callback", true);
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("action=\"/oauth/login\""), "{page}");

    // Any other redirect URI is rejected without a redirect.
    for other in [
        "com.ward.mobile:/oauth/callback/x",
        "com.ward.mobile://oauth/callback",
        "com.ward.mobil:/oauth/callback",
        "https://127.0.0.1/oauth/callback",
    ] {
        let (status, location, page) = authorize(other, true);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{other}: {page}");
        assert!(location.is_empty(), "{other} redirected to {location}");
    }

    // PKCE is required: the error goes back to the app.
    let (status, location, _) = authorize("com.ward.mobile:/oauth/callback", false);
    assert_eq!(status, StatusCode::FOUND);
    assert!(
        location.starts_with("com.ward.mobile:/oauth/callback?error=invalid_request"),
        "{location}"
    );

    // The id cannot be registered over the built-in client.
    let data = server.data_dir().to_str().expect("UTF-8 path").to_owned();
    let mut command = Command::new(WARD);
    command.args([
        "client",
        "add",
        "--id",
        "ward-mobile",
        "--redirect-uri",
        "https://evil.example/callback",
        "--data",
        &data,
    ]);
    if let Some(database) = server.database() {
        command.args(["--database", database.url().as_str()]);
    }
    let output = command.output().expect("run ward client add");
    assert!(
        !output.status.success(),
        "ward client add took the built-in id"
    );
    let (status, _, page) = authorize("com.ward.mobile:/oauth/callback", true);
    assert_eq!(status, StatusCode::OK, "{page}");
}

#[test]
fn mobile_renewal_before_expiry() {
    let rt = runtime();
    let panel = panel(&rt);
    let server = &panel.server;
    let secret = add_clinician(server);
    let ca = std::fs::read_to_string(server.data_dir().join("ca.pem")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Certificates last 30 days, so a 31-day window renews at every
    // check-in.
    let options = ClientOptions {
        renew_before_secs: 31 * 24 * 3600,
        ..options()
    };
    let client = Client::open_with(dir.path(), options).unwrap();
    let code = enrollment_code(server);
    let enrollment = client
        .enroll(server.origin(), &ca, &code, PIN, phone_posture(true))
        .unwrap();
    client
        .login(CLINICIAN, PASSWORD, &totp_code(&secret))
        .unwrap();
    let old_token = client.access_token().unwrap();
    let old_thumbprint = jwt_claims(&old_token)["cnf"]["x5t#S256"].clone();

    // The check-in renews; the old certificate's tokens are dropped.
    let answer = client.checkin().unwrap();
    assert_eq!(answer.status, "active");
    assert!(
        client.access_token().is_err(),
        "tokens bound to the replaced certificate are gone"
    );
    // The renewed certificate still speaks for the same device.
    let again = client.checkin().unwrap();
    assert_eq!(again.status, "active");
    let report = ward(
        server,
        &["device", "show", &enrollment.device_id, "--json"],
        None,
    );
    assert!(report.contains(&enrollment.device_id), "{report}");

    // The code of the current step was used; the next step's code is
    // within the server's allowed clock drift.
    let secret = TotpSecret::from_base32(&secret).expect("a valid secret");
    let later = time::OffsetDateTime::now_utc() + time::Duration::seconds(30);
    let next_step = totp::code_at(&secret, later).expect("a code");
    client.login(CLINICIAN, PASSWORD, &next_step).unwrap();
    let new_token = client.access_token().unwrap();
    let claims = jwt_claims(&new_token);
    assert_eq!(claims["device"], enrollment.device_id.as_str());
    assert_ne!(claims["cnf"]["x5t#S256"], old_thumbprint);
}
