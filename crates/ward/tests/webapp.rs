//! The clinician web app under `/app` in real headless Chromium, driven
//! through chromedriver (WebDriver) at a 390×844 phone viewport: sign-in
//! with password and TOTP, finding a patient, the chart, recording vitals,
//! sign-out, and no PHI behind the back button afterwards. The security
//! headers and cookie attributes are checked on the pages the browser saw.
//!
//! The test needs Debian's `chromium` and `chromium-driver`. Without them it
//! skips with a note, unless `WARD_REQUIRE_CHROMIUM=1` (set in CI) makes a
//! missing browser a failure. Screenshots go to `target/webapp-screenshots/`.

mod common;

use std::time::{Duration, Instant};

use fantoccini::Locator;
use serde_json::json;

use common::browser::{
    Driver, Shots, assert_page_headers, browser, chromium_available, click, create, element, fill,
    page_text, sign_in,
};
use common::{Server, add_user, header};

const CLINICIAN: &str = "dr.osler";
const PASSWORD: &str = "violet-otter-harbor-42";
/// A family name unlikely to appear on any page by chance.
const FAMILY: &str = "Quillfeather";

/// Adds the physician `CLINICIAN` as `Practitioner/dr` and returns the TOTP
/// secret `ward user add` prints.
fn add_clinician(server: &Server) -> String {
    add_user(
        server,
        (CLINICIAN, "physician", PASSWORD),
        Some("Practitioner/dr"),
    )
}

/// Patients Ada and Bo on the care team of `Practitioner/dr`, Cy not; Ada
/// has one resource for each chart section. Returns Ada's id.
async fn seed(server: &Server) -> String {
    let admin = server.token("system/*.cruds");
    let practitioner =
        json!({"resourceType": "Practitioner", "id": "dr", "name": [{"family": "Osler"}]});
    let (status, _, body) = server
        .put_json("/Practitioner/dr", &admin, &practitioner)
        .await;
    assert!(status.is_success(), "{body}");
    let mut ids = Vec::new();
    for (given, birth, mrn) in [
        ("Ada", "1961-03-14", "MRN-1001"),
        ("Bo", "1975-08-02", "MRN-1002"),
        ("Cy", "1990-12-24", "MRN-1003"),
    ] {
        let patient = json!({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:example:mrn", "value": mrn}],
            "name": [{"family": FAMILY, "given": [given]}],
            "gender": "female",
            "birthDate": birth,
        });
        ids.push(create(server, &admin, patient).await);
    }
    for patient in &ids[..2] {
        let team = json!({
            "resourceType": "CareTeam",
            "status": "active",
            "subject": {"reference": format!("Patient/{patient}")},
            "participant": [{"member": {"reference": "Practitioner/dr"}}],
        });
        create(server, &admin, team).await;
    }
    let ada = ids[0].clone();
    let subject = json!({"reference": format!("Patient/{ada}")});
    let chart = [
        json!({"resourceType": "Condition", "subject": subject,
               "code": {"text": "Type 2 diabetes mellitus"}, "onsetDateTime": "2015-06-01"}),
        json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
               "subject": subject, "medicationCodeableConcept": {"text": "Metformin 500 mg tablet"},
               "authoredOn": "2024-01-10"}),
        json!({"resourceType": "AllergyIntolerance", "patient": subject,
               "code": {"text": "Penicillin"}}),
        json!({"resourceType": "Immunization", "status": "completed", "patient": subject,
               "vaccineCode": {"text": "Influenza vaccine"}, "occurrenceDateTime": "2025-10-01"}),
        json!({"resourceType": "Observation", "status": "final", "subject": subject,
               "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
               "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}], "text": "Hemoglobin A1c"},
               "valueQuantity": {"value": 6.9, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
               "effectiveDateTime": "2025-11-20"}),
    ];
    for resource in chart {
        create(server, &admin, resource).await;
    }
    ada
}

/// Checks, with the browser's session cookie, that forms without the
/// session's CSRF token and handles of no patient are rejected.
async fn assert_form_checks(server: &Server, cookie: &str, chart_path: &str) {
    let client = server.client();
    let cookie = format!("__Host-ward-app={cookie}");
    for body in ["q=Ada", "q=Ada&csrf=forged"] {
        let response = client
            .post(format!("{}/app/search", server.origin()))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("post the search");
        assert_eq!(response.status(), 403, "{body}");
        let text = response.text().await.expect("body");
        assert!(!text.contains(FAMILY), "{body}: {text}");
    }
    let response = client
        .post(format!("{}{chart_path}/vitals", server.origin()))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("heart_rate=70&csrf=forged")
        .send()
        .await
        .expect("post vitals");
    assert_eq!(response.status(), 403);
    let response = client
        .get(format!("{}/app/p/not-a-handle", server.origin()))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("get an unknown handle");
    assert_eq!(response.status(), 404);
}

/// Checks the static files: served from the binary, and a service worker
/// that caches only them.
async fn assert_static_files(server: &Server) {
    let client = server.client();
    for (path, content_type) in [
        ("/app/static/app.css", "text/css"),
        ("/app/static/app.js", "text/javascript"),
        ("/app/manifest.webmanifest", "application/manifest+json"),
        ("/app/sw.js", "text/javascript"),
    ] {
        let response = client
            .get(format!("{}{path}", server.origin()))
            .send()
            .await
            .expect("get a static file");
        assert_eq!(response.status(), 200, "{path}");
        let header_value = header(response.headers(), "content-type").to_owned();
        assert!(
            header_value.starts_with(content_type),
            "{path}: {header_value}"
        );
    }
    let worker = client
        .get(format!("{}/app/sw.js", server.origin()))
        .send()
        .await
        .expect("get the service worker")
        .text()
        .await
        .expect("service worker");
    assert!(
        worker.contains("STATIC.indexOf(url.pathname) === -1"),
        "{worker}"
    );
    assert!(!worker.contains("\"/app/p/"), "{worker}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webapp_clinician_flow_in_chromium() {
    if !chromium_available() {
        return;
    }
    let server = Server::start();
    let ada = seed(&server).await;
    let secret = add_clinician(&server);
    let driver = Driver::start();
    let browser = browser(&driver).await;
    let shots = Shots::new();
    assert_static_files(&server).await;

    sign_in(&browser, &server, (CLINICIAN, PASSWORD, &secret), &shots).await;

    // The care team list: Ada and Bo, not Cy.
    let text = page_text(&browser).await;
    assert!(text.contains("My patients"), "{text}");
    assert!(text.contains(&format!("Ada {FAMILY}")), "{text}");
    assert!(text.contains(&format!("Bo {FAMILY}")), "{text}");
    assert!(
        !text.contains(&format!("Cy {FAMILY}")),
        "Cy is not on the care team: {text}"
    );
    let title = browser.title().await.expect("title");
    assert_eq!(title, "My patients · Ward");

    // The session cookie: __Host-, Secure, HttpOnly, SameSite=Strict.
    let cookie = browser
        .get_named_cookie("__Host-ward-app")
        .await
        .expect("the web app session cookie");
    assert_eq!(cookie.secure(), Some(true));
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    assert_eq!(cookie.path(), Some("/"));
    let session_cookie = cookie.value().to_owned();

    // Search by identifier, then by birth date, then by name.
    for (query, expected) in [("MRN-1002", "Bo"), ("1961-03-14", "Ada"), ("Ada", "Ada")] {
        fill(&browser, "q", query).await;
        click(&browser, "form[action='/app/search'] button[type=submit]").await;
        let url = browser.current_url().await.expect("url");
        assert_eq!(url.as_str(), format!("{}/app/search", server.origin()));
        let text = page_text(&browser).await;
        assert!(
            text.contains(&format!("{expected} {FAMILY}")),
            "{query}: {text}"
        );
        let other = if expected == "Ada" { "Bo" } else { "Ada" };
        assert!(
            !text.contains(&format!("{other} {FAMILY}")),
            "{query}: {text}"
        );
    }
    // The results page is a GET after a redirect (no form body in the
    // browser's history): reloading it shows the same results at once,
    // with no resubmission prompt.
    let page = browser.find(Locator::Css("html")).await.expect("html");
    browser.refresh().await.expect("reload the results");
    assert!(
        page.tag_name().await.is_err(),
        "the reload loaded a new page"
    );
    let text = page_text(&browser).await;
    assert!(text.contains(&format!("Ada {FAMILY}")), "{text}");
    assert!(!text.contains(&format!("Bo {FAMILY}")), "{text}");
    shots.take(&browser, "02-patients").await;

    // The chart: no PHI in the URL or title.
    click(&browser, "ul.cards a").await;
    let url = browser.current_url().await.expect("url");
    assert!(url.path().starts_with("/app/p/"), "{url}");
    assert!(
        !url.as_str().contains(&ada),
        "the patient id leaked into {url}"
    );
    assert!(!url.as_str().contains(FAMILY), "the name leaked into {url}");
    assert_eq!(
        browser.title().await.expect("title"),
        "Patient chart · Ward"
    );
    let chart_path = url.path().to_owned();
    let text = page_text(&browser).await;
    for expected in [
        "Type 2 diabetes mellitus",
        "Metformin 500 mg tablet",
        "Penicillin",
        "Influenza vaccine",
        "Hemoglobin A1c: 6.9 %",
        "1961-03-14",
    ] {
        assert!(
            text.contains(expected),
            "{expected} missing from the chart: {text}"
        );
    }
    shots.take(&browser, "03-chart").await;
    assert_page_headers(&server, &session_cookie, &chart_path).await;
    assert_page_headers(&server, &session_cookie, "/app").await;

    assert_form_checks(&server, &session_cookie, &chart_path).await;

    // An implausible value is rejected and nothing is saved.
    click(&browser, &format!("a[href='{chart_path}/vitals']")).await;
    fill(&browser, "systolic", "300").await;
    fill(&browser, "diastolic", "80").await;
    click(&browser, "form button[type=submit].wide").await;
    let text = page_text(&browser).await;
    assert!(text.contains("Nothing was saved"), "{text}");
    assert!(text.contains("outside the plausible range"), "{text}");
    shots.take(&browser, "04-vitals-error").await;

    fill(&browser, "systolic", "128").await;
    fill(&browser, "diastolic", "82").await;
    fill(&browser, "heart_rate", "72").await;
    fill(&browser, "temperature", "37.2").await;
    click(&browser, "form button[type=submit].wide").await;
    let url = browser.current_url().await.expect("url");
    assert_eq!(url.path(), chart_path);
    let text = page_text(&browser).await;
    assert!(text.contains("Vitals saved."), "{text}");
    assert!(text.contains("128/82 mmHg"), "{text}");
    assert!(text.contains("Heart rate: 72 /min"), "{text}");
    assert!(text.contains("Body temperature: 37.2 °C"), "{text}");
    shots.take(&browser, "05-chart-with-vitals").await;

    // The vitals were written through the FHIR API as the clinician.
    let admin = server.token("system/*.cruds");
    let (status, _, bundle) = server
        .get(&format!("Observation?patient={ada}&code=8867-4"), &admin)
        .await;
    assert!(status.is_success(), "{bundle}");
    let entries = bundle["entry"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{bundle}");
    let observation = &entries[0]["resource"];
    assert_eq!(observation["performer"][0]["reference"], "Practitioner/dr");
    assert_eq!(observation["valueQuantity"]["value"], json!(72));

    // The chart reads were audited as the clinician, like FHIR API reads.
    let auditor = server.token("system/AuditEvent.rs");
    let (status, _, events) = server
        .get(
            &format!("/fhir/AuditEvent?patient={ada}&_count=100"),
            &auditor,
        )
        .await;
    assert!(status.is_success(), "{events}");
    let by_clinician = events["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| {
            entry["resource"]["agent"]
                .to_string()
                .contains("Practitioner/dr")
        })
        .count();
    assert!(
        by_clinician > 0,
        "no AuditEvent names Practitioner/dr: {events}"
    );

    // Sign out, then the back button shows no PHI.
    click(&browser, "form[action='/app/signout'] button").await;
    let url = browser.current_url().await.expect("url");
    assert_eq!(url.path(), "/app/signed-out");
    shots.take(&browser, "06-signed-out").await;
    for _ in 0..3 {
        browser.back().await.expect("back");
        let source = browser.source().await.expect("page source");
        let url = browser.current_url().await.expect("url");
        assert!(
            !source.contains(FAMILY),
            "PHI shown at {url} after sign-out"
        );
        assert!(
            !source.contains("Penicillin"),
            "PHI shown at {url} after sign-out"
        );
    }
    // The session is gone on the server too: the old cookie leads to the
    // sign-in page and no PHI.
    let response = server
        .client()
        .get(format!("{}{chart_path}", server.origin()))
        .header("cookie", format!("__Host-ward-app={session_cookie}"))
        .send()
        .await
        .expect("fetch the chart with the old cookie");
    assert_eq!(response.url().path(), "/oauth/authorize");
    let body = response.text().await.expect("body");
    assert!(!body.contains(FAMILY), "{body}");

    // Sign-out revoked both tokens at /oauth/revoke without an error.
    let log = server.stderr_log();
    assert!(log.contains("web app session ended"), "{log}");
    assert!(!log.contains("revoking a web app token failed"), "{log}");

    browser.close().await.expect("close the browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webapp_idle_page_signs_out() {
    if !chromium_available() {
        return;
    }
    let server = Server::start_with(&["--session-idle", "6s"], &[]);
    seed(&server).await;
    let secret = add_clinician(&server);
    let driver = Driver::start();
    let browser = browser(&driver).await;
    let shots = Shots::new();
    sign_in(&browser, &server, (CLINICIAN, PASSWORD, &secret), &shots).await;
    assert!(page_text(&browser).await.contains(FAMILY));

    // Left alone, the page goes to the signed-out page by itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = browser.current_url().await.expect("url");
        if url.path() == "/app/signed-out" {
            assert_eq!(url.query(), Some("reason=timeout"));
            break;
        }
        assert!(Instant::now() < deadline, "the idle page stayed at {url}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let text = page_text(&browser).await;
    assert!(text.contains("not used for a while"), "{text}");
    assert!(!text.contains(FAMILY), "{text}");

    // Both sessions ended: opening the app shows the password form again.
    browser
        .goto(&format!("{}/app", server.origin()))
        .await
        .expect("open /app");
    element(&browser, Locator::Id("password")).await;
    let url = browser.current_url().await.expect("url");
    assert_eq!(url.path(), "/oauth/authorize");
    browser.close().await.expect("close the browser");
}
