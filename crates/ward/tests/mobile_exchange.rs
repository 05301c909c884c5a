//! Sending a message from an enrolled phone: `Client::send_message` queues
//! a referral on the clinic over the device's mutual TLS connection with
//! its certificate-bound token, `Client::message_status` reads it until
//! it is delivered, and the specialist files it. An untrusted recipient
//! and a malformed id are rejected with clear errors.

mod common;

use std::time::{Duration, Instant};

use common::exchange::{referral, trust_both};
use common::{Server, ward};
use reqwest::StatusCode;
use serde_json::json;
use ward_auth::totp::{self, TotpSecret};
use ward_mobile::{Client, ClientOptions, KdfCost, MobileError, Posture};

const PIN: &str = "482915";
const PASSWORD: &str = "violet-otter-harbor-42";
const CLINICIAN: &str = "wosler";
const MRN: &str = "MRN-MX-20931";

/// Adds the physician `CLINICIAN`, enrolls a phone for her in `dir` and
/// signs her in on it.
fn enrolled_phone(server: &Server, dir: &std::path::Path) -> Client {
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
    let secret = output
        .lines()
        .find_map(|line| line.strip_prefix("TOTP secret: "))
        .expect("ward user add prints the TOTP secret");
    let secret = TotpSecret::from_base32(secret.trim()).expect("valid TOTP secret");
    let output = ward(
        server,
        &["device", "enroll-code", "--user", CLINICIAN],
        None,
    );
    let code = output
        .lines()
        .find_map(|line| line.strip_prefix("Enrollment code: "))
        .expect("ward device enroll-code prints the code")
        .trim()
        .to_owned();
    let ca = std::fs::read_to_string(server.data_dir().join("ca.pem")).expect("read ca.pem");
    let options = ClientOptions {
        kdf: KdfCost {
            memory_kib: 256,
            iterations: 1,
        },
        ..ClientOptions::default()
    };
    let phone = Client::open_with(dir, options).expect("open the client");
    let posture = Posture {
        os: "ios".to_owned(),
        os_version: "17.4.1".to_owned(),
        screen_lock: true,
        storage_encrypted: true,
        rooted: false,
        app_version: "0.1.0".to_owned(),
    };
    phone
        .enroll(server.origin(), &ca, &code, PIN, posture)
        .expect("enroll");
    let code = totp::code_at(&secret, time::OffsetDateTime::now_utc()).expect("TOTP code");
    phone.login(CLINICIAN, PASSWORD, &code).expect("sign in");
    phone
}

#[test]
fn phone_sends_referral_until_delivered() {
    let clinic = Server::start_with(
        &["--exchange-retry-base", "1", "--exchange-retry-max", "2"],
        &[],
    );
    let specialist = Server::start();
    let (_, specialist_entry) = trust_both(&clinic, &specialist);
    let dir = tempfile::tempdir().expect("temporary directory");
    let phone = enrolled_phone(&clinic, dir.path());

    let id = phone
        .send_message(&specialist_entry.org_id, &referral(MRN))
        .expect("send the referral");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = phone.message_status(&id).expect("read the status");
        let pending = matches!(status.status.as_str(), "queued" | "sent");
        if !pending || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status.status, "delivered", "{status:?}");
    assert_eq!(status.id, id);
    assert_eq!(status.recipient, specialist_entry.org_id);
    assert!(status.attempts >= 1, "{status:?}");

    // The specialist filed the patient of the referral.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let token = specialist.token("system/*.cruds");
    let (code, _, body) = rt.block_on(specialist.get(&format!("Patient?identifier={MRN}"), &token));
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["total"], 1, "{body}");

    // The outbox status is the sender's own: an administrator token of the
    // clinic does not read it.
    let admin = clinic.token("system/*.cruds");
    let (code, _, body) = rt.block_on(clinic.get(&format!("/exchange/outbox/{id}"), &admin));
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
}

#[test]
fn phone_send_rejects_bad_recipients() {
    let clinic = Server::start();
    let dir = tempfile::tempdir().expect("temporary directory");
    let phone = enrolled_phone(&clinic, dir.path());

    match phone.send_message("org-not-trusted", &referral(MRN)) {
        Err(MobileError::Server { status, detail, .. }) => {
            assert_eq!(status, 400, "{detail}");
            assert!(detail.contains("org-not-trusted"), "{detail}");
        }
        other => panic!("expected a 400 for an untrusted recipient, got {other:?}"),
    }
    let error = phone
        .send_message("a&recipient=b", &referral(MRN))
        .expect_err("an id with URL characters");
    assert!(
        matches!(error, MobileError::InvalidInput { .. }),
        "{error:?}"
    );
    let error = phone
        .send_message("org-1", &json!({ "resourceType": "Patient" }))
        .expect_err("not a message Bundle");
    assert!(
        matches!(error, MobileError::InvalidInput { .. }),
        "{error:?}"
    );
    let error = phone
        .message_status("../admin")
        .expect_err("a path in the outbox id");
    assert!(
        matches!(error, MobileError::InvalidInput { .. }),
        "{error:?}"
    );
}
