//! Referrals, e-prescriptions and incoming lab results in the web app, in
//! real headless Chromium at 390×844, between real `ward serve` processes:
//! a clinic, a specialist clinic, a pharmacy and a laboratory that trust
//! each other through `ward org export` and `ward org trust`.
//!
//! The clinician signs in at the clinic with password and TOTP, opens the
//! patient's chart and sends a referral to the specialist. The Messages
//! screen shows it reach "Delivered" (by reloading, with a bounded wait),
//! and the specialist's FHIR API returns the filed ServiceRequest with the
//! chart it carried. She then prescribes a schedule II drug to the
//! pharmacy. Without the authenticator code the form requests it, with a
//! fresh code the message goes out, and after a pharmacist records the
//! dispensing the Messages screen shows "Dispensed". Last, a lab result
//! for the patient appears under "Lab results".
//!
//! The test needs Debian's `chromium` and `chromium-driver`; without them it
//! skips with a note unless `WARD_REQUIRE_CHROMIUM=1`. Screenshots go to
//! `target/webapp-screenshots/exchange-*.png`.

mod common;

use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use serde_json::{Value, json};

use common::browser::{
    Driver, Shots, browser, chromium_available, click, element, fill, page_text, sign_in,
};
use common::exchange::{FAST_RETRY, trust_both, ward_on};
use common::{Server, add_user, header, totp_code};

const CLINICIAN: &str = "dr.osler";
const PASSWORD: &str = "violet-otter-harbor-42";
const FAMILY: &str = "Quillfeather";
const MRN_SYSTEM: &str = "urn:oid:1.2.36.146.595.217.0.1";
const MRN: &str = "MRN-EX-1";

fn start(role: &str) -> Server {
    let mut args = FAST_RETRY.to_vec();
    args.extend(["--role", role]);
    Server::start_with(&args, &[])
}

async fn create(server: &Server, token: &str, resource: Value) -> String {
    let path = resource["resourceType"].as_str().expect("type").to_owned();
    let (status, _, body) = server.post_json(&path, token, &resource).await;
    assert!(status.is_success(), "creating {path}: {body}");
    body["id"].as_str().expect("id").to_owned()
}

/// Creates the patient Ada on the care team of `Practitioner/dr` at the clinic, with
/// a problem, a lab value, a medication and an allergy. Returns her id.
async fn seed_clinic(clinic: &Server) -> String {
    let admin = clinic.token("system/*.cruds");
    let practitioner = json!({"resourceType": "Practitioner", "id": "dr",
                              "name": [{"family": "Osler", "given": ["William"]}]});
    let (status, _, body) = clinic
        .put_json("/Practitioner/dr", &admin, &practitioner)
        .await;
    assert!(status.is_success(), "{body}");
    let patient = json!({
        "resourceType": "Patient",
        "identifier": [{"system": MRN_SYSTEM, "value": MRN}],
        "name": [{"family": FAMILY, "given": ["Ada"]}],
        "gender": "female",
        "birthDate": "1961-03-14",
        "generalPractitioner": [{"reference": "Practitioner/dr"}],
    });
    let ada = create(clinic, &admin, patient).await;
    let subject = json!({"reference": format!("Patient/{ada}")});
    create(
        clinic,
        &admin,
        json!({"resourceType": "CareTeam", "status": "active", "subject": subject,
               "participant": [{"member": {"reference": "Practitioner/dr"}}]}),
    )
    .await;
    for resource in [
        json!({"resourceType": "Condition", "subject": subject,
               "code": {"text": "Resistant hypertension"}, "onsetDateTime": "2019-06-01"}),
        json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
               "subject": subject, "requester": {"reference": "Practitioner/dr"},
               "medicationCodeableConcept": {"text": "Lisinopril 20 mg tablet"},
               "authoredOn": "2024-01-10"}),
        json!({"resourceType": "AllergyIntolerance", "patient": subject,
               "code": {"text": "Penicillin"}}),
        json!({"resourceType": "Observation", "status": "final", "subject": subject,
               "code": {"text": "Creatinine"},
               "valueQuantity": {"value": 1.1, "unit": "mg/dL"},
               "effectiveDateTime": "2025-11-20"}),
    ] {
        create(clinic, &admin, resource).await;
    }
    ada
}

/// Reloads the Messages screen until its first sent message shows
/// `status`, for at most 40 seconds; returns the page text.
async fn wait_for_status(browser: &Client, status: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let first = element(browser, Locator::Css("ul.messages li .status"))
            .await
            .text()
            .await
            .expect("status text");
        if first == status {
            return page_text(browser).await;
        }
        assert!(
            Instant::now() < deadline,
            "the newest message stayed '{first}', not '{status}': {}",
            page_text(browser).await
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
        click(browser, "a#refresh").await;
    }
}

/// Waits until the TOTP time step after `used` has begun, so the clinician
/// has a code that was not used for sign-in.
async fn next_totp_step(used: u64) {
    while unix_now() / 30 <= used {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

async fn search(server: &Server, token: &str, query: &str) -> Value {
    let (status, _, body) = server.get(query, token).await;
    assert!(status.is_success(), "{query}: {body}");
    body
}

/// Records a MedicationDispense for the only prescription the pharmacy has
/// filed, as a pharmacist on the filed patient's care team.
async fn dispense(pharmacy: &Server) {
    let admin = pharmacy.token("system/*.cruds");
    let requests = search(pharmacy, &admin, "MedicationRequest").await;
    assert_eq!(requests["total"], 1, "{requests}");
    let request = &requests["entry"][0]["resource"];
    assert_eq!(
        request["medicationCodeableConcept"]["coding"][0]["code"], "7804",
        "{request}"
    );
    assert_eq!(request["dispenseRequest"]["quantity"]["value"], json!(12));
    assert_eq!(request["dispenseRequest"]["numberOfRepeatsAllowed"], 0);
    let provenances = search(pharmacy, &admin, "Provenance").await;
    assert_eq!(
        provenances["total"], 1,
        "the second-factor Provenance was not filed: {provenances}"
    );
    let request_id = request["id"].as_str().expect("request id");
    create(
        pharmacy,
        &admin,
        json!({"resourceType": "CareTeam", "status": "active", "subject": request["subject"],
               "participant": [{"member": {"reference": "Practitioner/ph-1"}}]}),
    )
    .await;
    let pharmacist = pharmacy.token_with(
        "user/*.cruds",
        &[
            "--role",
            "pharmacist",
            "--subject",
            "ph-1",
            "--fhir-user",
            "Practitioner/ph-1",
        ],
    );
    let dispense = json!({
        "resourceType": "MedicationDispense",
        "status": "completed",
        "medicationCodeableConcept": request["medicationCodeableConcept"],
        "subject": request["subject"],
        "authorizingPrescription": [{"reference": format!("MedicationRequest/{request_id}")}],
        "quantity": {"value": 12, "unit": "tablet"}
    });
    let (status, _, body) = pharmacy
        .post_json("MedicationDispense", &pharmacist, &dispense)
        .await;
    assert!(status.is_success(), "{body}");
}

/// Sends a potassium result for the patient with `MRN` from the lab to
/// the clinic as a lab technician and waits until it is delivered.
async fn send_lab_result(lab: &Server, clinic_org: &str) {
    let patient = "urn:uuid:20000000-0000-4000-8000-000000000001";
    let observation = "urn:uuid:20000000-0000-4000-8000-000000000003";
    let message = json!({
        "resourceType": "Bundle",
        "type": "message",
        "entry": [
            {"fullUrl": "urn:uuid:20000000-0000-4000-8000-000000000000",
             "resource": {"resourceType": "MessageHeader",
                "eventCoding": {"system": "http://example.org/fhir/message-events", "code": "lab-result"},
                "source": {"endpoint": "https://lab.example/fhir"},
                "focus": [{"reference": "urn:uuid:20000000-0000-4000-8000-000000000002"}]}},
            {"fullUrl": "urn:uuid:20000000-0000-4000-8000-000000000002",
             "resource": {"resourceType": "DiagnosticReport", "status": "final",
                "code": {"text": "Basic metabolic panel"},
                "subject": {"reference": patient},
                "effectiveDateTime": "2026-12-01T08:00:00Z",
                "result": [{"reference": observation}]}},
            {"fullUrl": observation,
             "resource": {"resourceType": "Observation", "status": "final",
                "code": {"text": "Potassium"}, "subject": {"reference": patient},
                "valueQuantity": {"value": 5.9, "unit": "mmol/L"},
                "referenceRange": [{"low": {"value": 3.5, "unit": "mmol/L"},
                                    "high": {"value": 5.1, "unit": "mmol/L"}}],
                "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "H", "display": "High"}]}]}},
            {"fullUrl": patient,
             "resource": {"resourceType": "Patient",
                "identifier": [{"system": MRN_SYSTEM, "value": MRN}],
                "name": [{"family": FAMILY, "given": ["Ada"]}]}}
        ]
    });
    let technician = lab.token_with(
        "user/*.cruds",
        &[
            "--role",
            "lab_technician",
            "--subject",
            "tech-1",
            "--fhir-user",
            "Practitioner/tech-1",
        ],
    );
    let path = format!("/fhir/$send-message?recipient={clinic_org}");
    let (status, headers, body) = lab.post_json(&path, &technician, &message).await;
    assert_eq!(status.as_u16(), 202, "{body}");
    let location = header(&headers, "content-location").to_owned();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (_, _, outbox) = lab.get(&location, &technician).await;
        if outbox["status"] == "delivered" {
            return;
        }
        assert!(Instant::now() < deadline, "lab result stuck: {outbox}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referral_prescription_results_in_chromium() {
    if !chromium_available() {
        return;
    }
    let clinic = start("clinic");
    let specialist = start("clinic");
    let pharmacy = start("pharmacy");
    let lab = start("lab");
    let (clinic_entry, specialist_entry) = trust_both(&clinic, &specialist);
    let (_, pharmacy_entry) = trust_both(&clinic, &pharmacy);
    trust_both(&clinic, &lab);
    let ada = seed_clinic(&clinic).await;
    let secret = add_user(
        &clinic,
        (CLINICIAN, "physician", PASSWORD),
        Some("Practitioner/dr"),
    );

    let driver = Driver::start();
    let browser = browser(&driver).await;
    let shots = Shots::new();
    sign_in(&browser, &clinic, (CLINICIAN, PASSWORD, &secret), &shots).await;
    let signed_in_step = unix_now() / 30;

    // An empty Messages screen first.
    click(&browser, "a[href='/app/messages']").await;
    let text = page_text(&browser).await;
    assert!(text.contains("You have not sent any"), "{text}");
    assert!(text.contains("No lab results have arrived"), "{text}");

    // The chart offers Refer; the form lists only clinics.
    browser
        .goto(&format!("{}/app", clinic.origin()))
        .await
        .expect("open /app");
    click(&browser, "ul.cards a").await;
    let chart_path = browser.current_url().await.expect("url").path().to_owned();
    click(&browser, &format!("a[href='{chart_path}/refer']")).await;
    let url = browser.current_url().await.expect("url");
    assert!(!url.as_str().contains(&ada), "the patient id leaked: {url}");
    assert_eq!(browser.title().await.expect("title"), "Referral · Ward");
    let text = page_text(&browser).await;
    assert!(text.contains(&format!("Refer Ada {FAMILY}")), "{text}");
    assert!(text.contains(&specialist_entry.org_id), "{text}");
    assert!(!text.contains(&pharmacy_entry.org_id), "{text}");
    let radios = browser
        .find_all(Locator::Css("input[name=recipient]"))
        .await
        .expect("recipient choices");
    assert_eq!(radios.len(), 1, "only the specialist clinic fits: {text}");

    fill(&browser, "specialty", "Cardiology").await;
    fill(
        &browser,
        "reason",
        "Blood pressure above target on three drugs",
    )
    .await;
    fill(&browser, "note", "Echo done in 2024, normal.").await;
    element(&browser, Locator::Id("priority"))
        .await
        .select_by_value("urgent")
        .await
        .expect("choose the priority");
    browser
        .execute("window.scrollTo(0, 0)", Vec::new())
        .await
        .expect("scroll to the top");
    shots.take(&browser, "exchange-01-referral-form").await;

    // A form without a reason is refused with a message, nothing sent, and
    // the other fields keep their values.
    fill(&browser, "reason", "").await;
    click(&browser, "form[action$='/refer'] button[type=submit]").await;
    let text = page_text(&browser).await;
    assert!(text.contains("Nothing was sent"), "{text}");
    assert!(
        text.contains("Enter the reason for the referral."),
        "{text}"
    );
    let note = element(&browser, Locator::Id("note"))
        .await
        .prop("value")
        .await
        .expect("the note");
    assert_eq!(note.as_deref(), Some("Echo done in 2024, normal."));
    fill(
        &browser,
        "reason",
        "Blood pressure above target on three drugs",
    )
    .await;
    click(&browser, "form[action$='/refer'] button[type=submit]").await;
    let url = browser.current_url().await.expect("url");
    assert_eq!(url.path(), "/app/messages", "{}", page_text(&browser).await);
    let text = page_text(&browser).await;
    assert!(text.contains("Referral queued"), "{text}");
    assert!(text.contains("Referral: Cardiology"), "{text}");
    assert!(text.contains(&format!("Ada {FAMILY}")), "{text}");
    let text = wait_for_status(&browser, "Delivered").await;
    assert!(
        text.contains(&format!("To {}, ", specialist_entry.name)),
        "{text}"
    );
    assert_eq!(browser.title().await.expect("title"), "Messages · Ward");

    // The specialist filed the ServiceRequest with the chart it carried.
    let admin = specialist.token("system/*.cruds");
    let requests = search(&specialist, &admin, "ServiceRequest").await;
    assert_eq!(requests["total"], 1, "{requests}");
    let request = &requests["entry"][0]["resource"];
    assert_eq!(request["code"]["text"], "Referral to Cardiology");
    assert_eq!(
        request["reasonCode"][0]["text"],
        "Blood pressure above target on three drugs"
    );
    assert_eq!(request["note"][0]["text"], "Echo done in 2024, normal.");
    assert_eq!(request["priority"], "urgent");
    assert_eq!(request["requester"]["display"], "William Osler");
    assert_eq!(
        request["meta"]["source"],
        format!("urn:ward:org:{}", clinic_entry.org_id)
    );
    let subject = request["subject"]["reference"].as_str().expect("subject");
    let patient = search(&specialist, &admin, subject).await;
    assert_eq!(patient["identifier"][0]["value"], MRN, "{patient}");
    let info = request["supportingInfo"]
        .as_array()
        .expect("supportingInfo");
    assert_eq!(info.len(), 4, "{request}");
    for (resource_type, text) in [
        ("Condition", "Resistant hypertension"),
        ("MedicationRequest", "Lisinopril 20 mg tablet"),
        ("AllergyIntolerance", "Penicillin"),
        ("Observation", "Creatinine"),
    ] {
        let found = search(
            &specialist,
            &admin,
            &format!("{resource_type}?subject={subject}"),
        )
        .await;
        assert_eq!(found["total"], 1, "{resource_type}: {found}");
        let copy = &found["entry"][0]["resource"];
        assert!(copy.to_string().contains(text), "{copy}");
        assert!(
            !copy.to_string().contains("Practitioner/dr"),
            "a clinic-only reference reached the specialist: {copy}"
        );
    }

    // A schedule II prescription: the pharmacy is the only choice, and the
    // form requests the authenticator code before anything is sent.
    click(&browser, "ul.messages a").await;
    assert_eq!(browser.current_url().await.expect("url").path(), chart_path);
    click(&browser, &format!("a[href='{chart_path}/prescribe']")).await;
    let text = page_text(&browser).await;
    assert!(text.contains(&pharmacy_entry.org_id), "{text}");
    assert!(!text.contains(&specialist_entry.org_id), "{text}");
    fill(&browser, "medication", "oxycodone 5 mg oral tablet").await;
    fill(&browser, "rxnorm", "7804").await;
    fill(
        &browser,
        "dose",
        "One tablet every 6 hours as needed for pain",
    )
    .await;
    fill(&browser, "quantity", "12").await;
    click(&browser, "form[action$='/prescribe'] button[type=submit]").await;
    let text = page_text(&browser).await;
    assert!(
        text.contains("This is a schedule II controlled substance"),
        "{text}"
    );
    // A wrong code is refused by the server and nothing is sent.
    fill(&browser, "totp", "000000").await;
    click(&browser, "form[action$='/prescribe'] button[type=submit]").await;
    let text = page_text(&browser).await;
    assert!(text.contains("The code is not correct"), "{text}");
    next_totp_step(signed_in_step).await;
    fill(&browser, "totp", &totp_code(&secret)).await;
    shots.take(&browser, "exchange-02-prescription-form").await;
    click(&browser, "form[action$='/prescribe'] button[type=submit]").await;
    let url = browser.current_url().await.expect("url");
    assert_eq!(url.path(), "/app/messages", "{}", page_text(&browser).await);
    let text = page_text(&browser).await;
    assert!(
        text.contains("Prescription: oxycodone 5 mg oral tablet"),
        "{text}"
    );
    wait_for_status(&browser, "Delivered").await;
    dispense(&pharmacy).await;
    let text = wait_for_status(&browser, "Dispensed").await;
    assert!(text.contains("Referral: Cardiology"), "{text}");
    // Newest first.
    let first = text.find("Prescription: oxycodone").expect("prescription");
    let second = text.find("Referral: Cardiology").expect("referral");
    assert!(first < second, "{text}");

    // Both messages were queued under the clinician's token and audited,
    // the prescription with its verified second factor.
    let audit = ward_on(&clinic, &["audit", "export"], &[]);
    let audit = String::from_utf8_lossy(&audit.stdout);
    let queued: Vec<&str> = audit
        .lines()
        .filter(|line| line.contains("message_queued"))
        .collect();
    assert_eq!(queued.len(), 2, "{audit}");
    assert!(
        queued.iter().all(|line| line.contains("Practitioner/dr")),
        "{queued:?}"
    );
    assert!(audit.contains("second_factor_verified"), "{audit}");
    assert!(audit.contains("second_factor_rejected"), "{audit}");

    // A lab result for Ada appears under Lab results.
    send_lab_result(&lab, &clinic_entry.org_id).await;
    click(&browser, "a#refresh").await;
    let text = page_text(&browser).await;
    assert!(text.contains("Basic metabolic panel"), "{text}");
    assert!(text.contains("Potassium: 5.9 mmol/L"), "{text}");
    assert!(text.contains("3.5 mmol/L to 5.1 mmol/L"), "{text}");
    assert!(text.contains("High"), "{text}");
    shots.take(&browser, "exchange-03-messages").await;

    // The pages carry no PHI in the URL and the forms need the CSRF token.
    let url = browser.current_url().await.expect("url");
    assert!(!url.as_str().contains(FAMILY), "{url}");
    let cookie = browser
        .get_named_cookie("__Host-ward-app")
        .await
        .expect("the session cookie");
    let response = clinic
        .client()
        .post(format!("{}{chart_path}/refer", clinic.origin()))
        .header("cookie", format!("__Host-ward-app={}", cookie.value()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=forged&specialty=X&reason=Y")
        .send()
        .await
        .expect("post a forged referral");
    assert_eq!(response.status(), 403);
    let response = clinic
        .client()
        .get(format!("{}/app/messages", clinic.origin()))
        .header("cookie", format!("__Host-ward-app={}", cookie.value()))
        .send()
        .await
        .expect("fetch the Messages screen");
    assert_eq!(header(response.headers(), "cache-control"), "no-store");
    let csp = header(response.headers(), "content-security-policy").to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let body = response.text().await.expect("body");
    assert!(!body.contains("style="), "inline style on Messages");
    assert_eq!(
        search(&specialist, &admin, "ServiceRequest").await["total"],
        1,
        "the forged referral was sent"
    );

    browser.close().await.expect("close the browser");
}
