//! Reads from a browser enrolled as a device are attributed to that device,
//! in real headless Chromium at a 390×844 phone viewport.
//!
//! - A clinician enrolls her browser and then opens a patient's chart in
//!   the same session: `ward device report ID` lists that patient, and the
//!   audit records of the reads carry the device id. A new sign-in in the
//!   same browser stays attributed. The device is recorded as a browser
//!   and is exempt from the phone posture rules. Revoking it signs the
//!   next page out.
//! - A phone cannot pass for a browser: reporting the `browser` operating
//!   system at enrollment or check-in is refused, and the phone stays
//!   subject to the posture rules.
//!
//! The browser test skips without Debian's `chromium` and
//! `chromium-driver` unless `WARD_REQUIRE_CHROMIUM=1`. Screenshots go to
//! `target/webapp-screenshots/`.

mod common;

use std::time::Duration;

use fantoccini::{Client, Locator};
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::browser::{
    Driver, Shots, browser, chromium_available, click, click_then_wait, create, fill, page_text,
    sign_in,
};
use common::device::{device_client, enroll, post, posture};
use common::{Server, add_user, ward};

const CLINICIAN: &str = "dr.okafor";
const PASSWORD: &str = "cobalt-finch-meadow-58";
/// A family name unlikely to appear on any page by chance.
const FAMILY: &str = "Thistlewood";
const ALLERGY: &str = "Penicillin";
const DEVICE_NAME: &str = "Ward 7 browser";

/// Adds a patient on the care team of `Practitioner/dr`, with an allergy,
/// and the clinician. Returns the patient id and the clinician's TOTP
/// secret.
async fn seed(server: &Server) -> (String, String) {
    let admin = server.token("system/*.cruds");
    let practitioner =
        json!({"resourceType": "Practitioner", "id": "dr", "name": [{"family": "Okafor"}]});
    let (status, _, body) = server
        .put_json("/Practitioner/dr", &admin, &practitioner)
        .await;
    assert!(status.is_success(), "{body}");
    let patient = create(
        server,
        &admin,
        json!({"resourceType": "Patient", "name": [{"family": FAMILY, "given": ["Iris"]}],
               "gender": "female", "birthDate": "1954-11-02"}),
    )
    .await;
    let subject = json!({"reference": format!("Patient/{patient}")});
    create(
        server,
        &admin,
        json!({"resourceType": "CareTeam", "status": "active", "subject": subject,
               "participant": [{"member": {"reference": "Practitioner/dr"}}]}),
    )
    .await;
    create(
        server,
        &admin,
        json!({"resourceType": "AllergyIntolerance", "patient": subject,
               "code": {"text": ALLERGY}}),
    )
    .await;
    let secret = add_user(
        server,
        (CLINICIAN, "physician", PASSWORD),
        Some("Practitioner/dr"),
    );
    (patient, secret)
}

/// Opens the patient's chart from the patient list.
async fn open_chart(browser: &Client, server: &Server) {
    browser
        .goto(&format!("{}/app", server.origin()))
        .await
        .expect("open /app");
    click(browser, "ul.cards a").await;
    let url = browser.current_url().await.expect("url");
    assert!(url.path().starts_with("/app/p/"), "{url}");
    let text = page_text(browser).await;
    assert!(text.contains(ALLERGY), "{text}");
}

/// Enrolls the browser from the security page and returns the device id.
async fn enroll_browser(browser: &Client, server: &Server) -> String {
    let printed = ward(
        server,
        &["device", "enroll-code", "--user", CLINICIAN, "--ttl", "900"],
        None,
    );
    let code = printed
        .lines()
        .find_map(|line| line.strip_prefix("Enrollment code: "))
        .expect("ward device enroll-code prints the code")
        .trim()
        .to_owned();
    browser
        .goto(&format!("{}/app/security", server.origin()))
        .await
        .expect("open the security page");
    fill(browser, "enroll-code", &code).await;
    fill(browser, "device-name", DEVICE_NAME).await;
    click_then_wait(
        browser,
        Locator::Css("#enroll-form button[type=submit]"),
        "const s = document.getElementById('device-state'); \
         return !!s && s.textContent.includes('This browser is enrolled as device');",
        "the enrollment",
        20,
    )
    .await;
    let devices = ward(server, &["device", "list"], None);
    devices
        .lines()
        .find(|line| line.contains(DEVICE_NAME))
        .and_then(|line| line.split_whitespace().next())
        .expect("ward device list names the browser")
        .to_owned()
}

/// Returns the patients the lost-device report lists, with their read
/// counts.
fn reported_patients(server: &Server, device: &str) -> Vec<(String, u64)> {
    let report = ward(server, &["device", "report", device, "--json"], None);
    let report: Value = serde_json::from_str(&report).expect("report JSON");
    report["patients"]
        .as_array()
        .expect("patients")
        .iter()
        .map(|p| {
            (
                p["patient"].as_str().expect("patient id").to_owned(),
                p["reads"].as_u64().expect("read count"),
            )
        })
        .collect()
}

/// Reads every audit record from the server's store, beside the server.
fn audit_records(server: &Server) -> Vec<ward_audit::AuditRecord> {
    let (keys, _) = ward_server::setup::DataDir::new(server.data_dir())
        .open_or_init("test")
        .expect("open the data directory");
    let database = match server.database() {
        Some(database) => ward_store::Database::Postgres(database.url()),
        None => ward_store::Database::Sqlite(server.data_dir().join("ward.db")),
    };
    let store = ward_store::open(&database, &keys.master).expect("open the store");
    store
        .audit_rows(0, 100_000)
        .expect("audit rows")
        .iter()
        .map(|row| {
            ward_audit::ChainEntry::from_canonical(&row.canonical)
                .expect("entry")
                .record
        })
        .collect()
}

/// Counts the successful audit records of reads of `patient` whose agent
/// is `device`.
fn device_reads(records: &[ward_audit::AuditRecord], device: &str, patient: &str) -> usize {
    let reference = format!("Patient/{patient}");
    records
        .iter()
        .filter(|record| record.outcome == ward_audit::record::Outcome::Success)
        .filter(|record| {
            record
                .agents
                .iter()
                .any(|agent| agent.device_id.as_deref() == Some(device))
        })
        .filter(|record| {
            record.entities.iter().any(|entity| {
                matches!(entity, ward_audit::record::Entity::Patient { reference: r } if *r == reference)
            })
        })
        .count()
}

/// Waits for the next 30-second TOTP step, since a code works only once.
async fn next_totp_step() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    tokio::time::sleep(Duration::from_secs(30 - now % 30 + 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webapp_enrolled_browser_reads_name_the_device() {
    if !chromium_available() {
        return;
    }
    let server = Server::start();
    let (patient, secret) = seed(&server).await;
    let driver = Driver::start();
    let browser = browser(&driver).await;
    let shots = Shots::new();
    sign_in(&browser, &server, (CLINICIAN, PASSWORD, &secret), &shots).await;

    // Enrolled mid-session: the reads that follow name the device.
    let device = enroll_browser(&browser, &server).await;
    open_chart(&browser, &server).await;
    shots.take(&browser, "device-audit-01-chart").await;

    let patients = reported_patients(&server, &device);
    assert_eq!(patients.len(), 1, "{patients:?}");
    assert_eq!(patients[0].0, patient, "{patients:?}");
    let first_reads = patients[0].1;
    assert!(first_reads > 0, "{patients:?}");
    let records = tokio::task::block_in_place(|| audit_records(&server));
    assert!(
        device_reads(&records, &device, &patient) > 0,
        "no read of the patient names device {device}"
    );

    // The server recorded a browser, exempt from the phone posture rules.
    let output = ward(&server, &["device", "show", &device, "--json"], None);
    let device_json: Value = serde_json::from_str(&output).expect("device JSON");
    assert_eq!(device_json["kind"], "browser", "{device_json}");
    assert_eq!(
        device_json["compliance"]["compliant"], true,
        "{device_json}"
    );

    // A new sign-in in the enrolled browser is attributed from its first
    // token on.
    click(&browser, "form[action='/app/signout'] button").await;
    next_totp_step().await;
    sign_in(&browser, &server, (CLINICIAN, PASSWORD, &secret), &shots).await;
    open_chart(&browser, &server).await;
    let patients = reported_patients(&server, &device);
    assert_eq!(patients.len(), 1, "{patients:?}");
    assert!(patients[0].1 > first_reads, "{patients:?}");

    // Revoked: the next page signs out.
    ward(
        &server,
        &["device", "revoke", &device, "--reason", "lost"],
        None,
    );
    browser
        .goto(&format!("{}/app", server.origin()))
        .await
        .expect("open the app");
    let url = browser.current_url().await.expect("url");
    assert_eq!(
        url.path(),
        "/app/signed-out",
        "{}",
        page_text(&browser).await
    );
    assert_eq!(url.query(), Some("reason=device"));
    let text = page_text(&browser).await;
    assert!(!text.contains(FAMILY), "{text}");
    browser.close().await.expect("close the browser");
}

#[tokio::test(flavor = "multi_thread")]
async fn phone_reporting_browser_os_stays_subject_to_compliance() {
    let server = Server::start();
    add_user(
        &server,
        ("nurse.ames", "nurse", "quartz-otter-harbor-91"),
        None,
    );
    let admin = server.token("admin");
    let origin = server.origin().to_owned();

    // Enrolling with the browser operating system is rejected.
    let (status, code) = post(
        &server.client(),
        &format!("{origin}/device/enrollment-codes"),
        Some(&admin),
        &json!({"user": "nurse.ames"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{code}");
    let key = common::device::DeviceKey::generate();
    let mut disguised = posture(false);
    disguised["os"] = json!("browser");
    let (status, refused) = post(
        &server.client(),
        &format!("{origin}/device/enroll"),
        None,
        &json!({"code": code["code"], "csr": key.csr_pem, "name": "Phone",
                "posture": disguised}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(
        refused.to_string().contains("reserved for browsers"),
        "{refused}"
    );

    // An enrolled phone cannot check in as a browser either.
    let phone = enroll(&server, &admin, "nurse.ames").await;
    let client = device_client(&server, &phone.certificate, &phone.key);
    let checkin = format!("{origin}/device/checkin");
    let (status, refused) = post(&client, &checkin, None, &json!({"posture": disguised})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(
        refused.to_string().contains("reserved for browsers"),
        "{refused}"
    );

    // It stays a phone under the posture rules: no screen lock fails.
    let (status, reply) = post(&client, &checkin, None, &json!({"posture": posture(false)})).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["compliance"]["compliant"], false, "{reply}");
    let output = ward(&server, &["device", "show", &phone.id, "--json"], None);
    let device_json: Value = serde_json::from_str(&output).expect("device JSON");
    assert_eq!(device_json["kind"], "phone", "{device_json}");
    assert_eq!(
        device_json["last_posture"]["os"], "android",
        "{device_json}"
    );
    assert_eq!(
        device_json["compliance"]["compliant"], false,
        "{device_json}"
    );
}
