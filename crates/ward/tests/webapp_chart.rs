//! The patient chart of the web app in real headless Chromium at a
//! 390×844 phone viewport. The test searches by full name and by an
//! impossible birth date, and covers trend charts of measurements (saved
//! and imported blood pressures in one row, rounded values), encounters
//! and documents. It then writes a note, adds a problem and an
//! allergy and uploads a camera photo. It opens a record's history and
//! makes a conflicting edit, which shows the "changed by someone else"
//! message and keeps the user's choice.
//!
//! What the browser stored is then read back through the FHIR API: the
//! subject and the author or recorder are set, and the photo is a Binary
//! in the patient's record that only the care team may read. The photo
//! route is checked for `Cache-Control: no-store` and for needing the
//! session. Skips without Chromium unless `WARD_REQUIRE_CHROMIUM=1`.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use fantoccini::{Client, Locator};
use serde_json::{Value, json};

use common::browser::{
    Driver, Shots, assert_page_headers, browser, chromium_available, click, create, element, fill,
    page_text, sign_in,
};
use common::{Server, add_user, header};

const CLINICIAN: &str = "dr.lister";
const PASSWORD: &str = "amber-falcon-meadow-17";
/// A family name unlikely to appear on any page by chance.
const FAMILY: &str = "Thistlewaite";

/// A 48×32 PNG, small enough to embed.
const PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAADAAAAAgCAIAAADbtmxLAAAKwklEQVR42g3OAee7TADA8eeFfV/EGGOMMcaIIyIijiMiIo4jIiIiIuI4Io4YY4wx/u/l+X1ewee//cB+ZD+xn9kv7Ff2G/ud/cEesAv2kD1ij9kT9pRdsiv2jD1nL9hL9opdsxv2mr1hb9k79p59YB/ZJ/aZfWG37I59Zd/YPfvO/mR/sb/ZP+xf9h/7P/7zB/wRf8Kf8Rf8FX/D3/EPfIAX+BAf4WN8gk/xEq/wGT7HF/gSX+E13uBrfINv8R2+xw/4ET/hZ/yCt3iHX/Eb3uN3/BP/wr/xH/wX/8P/hbYD25HtxHZmu7Bd2W5sd7YHW8Am2EK2iC1mS9hSNsmm2DK2nK1gK9kqNs1m2Gq2hq1l69h6toFtZJvYZraFzbI5tpVtY/NsO9uT7cX2Zvuwfdl+bH+h9cB6ZD2xnlkvrFfWG+ud9cEasArWkDVijVkT1pRVsirWjDVnLVhL1opVsxrWmrVhbVk71p51YB1ZJ9aZdWG1rI51Zd1YPevO+mR9sb5ZP6xf1h/rX8gdcEfcCXfGXXBX3A13xz1wAU7gQlyEi3EJLsVJnMJluBxX4EpchdM4g6txDa7FdbgeN+BG3ISbcQvO4hxuxW04j9txT9wL98Z9cF/cD/cXsgfsEXvCnrEX7BV7w96xD2yAFdgQG2FjbIJNsRKrsBk2xxbYElthNdZga2yDbbEdtscO2BE7YWfsgrVYh12xG9Zjd+wT+8K+sR/sF/vD/oWWA8uR5cRyZrmwXFluLHeWB0vAIlhCloglZklYUhbJolgylpylYClZKhbNYlhqloalZelYepaBZWSZWGaWhcWyOJaVZWPxLDvLk+XF8mb5sHxZfix/ofnAfGQ+MZ+ZL8xX5hvznfnBHDAL5pA5Yo6ZE+aUWTIr5ow5Zy6YS+aKWTMb5pq5YW6ZO+aeeWAemSfmmXlhtsyOeWXemD3zzvxkfjG/mT/MX+Yf819oOjAdmU5MZ6YL05XpxnRnejAFTIIpZIqYYqaEKWWSTIopY8qZCqaSqWLSTIapZmqYWqaOqWcamEamiWlmWpgsk2NamTYmz7QzPZleTG+mD9OX6cf0FxoPjEfGE+OZ8cJ4Zbwx3hkfjAGjYAwZI8aYMWFMGSWjYswYc8aCsWSsGDWjYawZG8aWsWPsGQfGkXFinBkXRsvoGFfGjdEz7oxPxhfjm/HD+GX8Mf6FhgPDkeHEcGa4MFwZbgx3hgdDwCAYQoaIIWZIGFIGyaAYMoacoWAoGSoGzWAYaoaGoWXoGHqGgWFkmBhmhoXBMjiGlWFj8Aw7w5PhxfBm+DB8GX4Mf6H+QH+kP9Gf6S/0V/ob/Z3+QR/QC/qQPqKP6RP6lF7SK/qMPqcv6Ev6il7TG/qavqFv6Tv6nn6gH+kn+pl+obf0jn6l3+g9/U7/pH/Rv+k/9F/6H/1fqDvQHelOdGe6C92V7kZ3p3vQBXSCLqSL6GK6hC6lk3SKLqPL6Qq6kq6i03SGrqZr6Fq6jq6nG+hGuoluplvoLJ2jW+k2Ok+30z3pXnRvug/dl+5H9xdqD7RH2hPtmfZCe6W90d5pH7QBraANaSPamDahTWklraLNaHPagrakrWg1raGtaRvalraj7WkH2pF2op1pF1pL62hX2o3W0+60T9oX7Zv2Q/ul/dH+hZoDzZHmRHOmudBcaW40d5oHTUAjaEKaiCamSWhSGkmjaDKanKagKWkqGk1jaGqahqal6Wh6moFmpJloZpqFxtI4mpVmo/E0O82T5kXzpvnQfGl+NH+h+kB9pD5Rn6kv1FfqG/Wd+kEdUAvqkDqijqkT6pRaUivqjDqnLqhL6opaUxvqmrqhbqk76p56oB6pJ+qZeqG21I56pd6oPfVO/aR+Ub+pP9Rf6h/1X8gcMEfMCXPGXDBXzA1zxzwwAUZgQkyEiTEJJsVIjMJkmBxTYEpMhdEYg6kxDabFdJgeM2BGzISZMQvGYhxmxWwYj9kxT8wL88Z8MF/MD/MX0gf0EX1Cn9EX9BV9Q9/RD3SAFugQHaFjdIJO0RKt0Bk6RxfoEl2hNdqga3SDbtEdukcP6BE9oWf0grZoh17RG9qjd/QT/UK/0R/0F/1D/4WqA9WR6kR1prpQXaluVHeqB1VAJahCqogqpkqoUipJpagyqpyqoCqpKipNZahqqoaqpeqoeqqBaqSaqGaqhcpSOaqVaqPyVDvVk+pF9ab6UH2pflR/ofJAeaQ8UZ4pL5RXyhvlnfJBGVAKypAyoowpE8qUUlIqyowypywoS8qKUlMaypqyoWwpO8qecqAcKSfKmXKhtJSOcqXcKD3lTvmkfFG+KT+UX8of5V+oOFAcKU4UZ4oLxZXiRnGneFAEFIIipIgoYoqEIqWQFIoio8gpCoqSoqLQFIaipmgoWoqOoqcYKEaKiWKmWCgshaNYKTYKT7FTPCleFG+KD8WX4kfxF8oP5EfyE/mZ/EJ+Jb+R38kf5AG5IA/JI/KYPCFPySW5Is/Ic/KCvCSvyDW5Ia/JG/KWvCPvyQfykXwin8kXckvuyFfyjdyT7+RP8hf5m/xD/iX/kf+FsgPZkexEdia7kF3JbmR3sgdZQCbIQrKILCZLyFIySabIMrKcrCArySoyTWbIarKGrCXryHqygWwkm8hmsoXMkjmylWwj82Q72ZPsRfYm+5B9yX5kfyF1QB1RJ9QZdUFdUTfUHfVABSiBClERKkYlqBQlUQqVoXJUgSpRFUqjDKpGNagW1aF61IAaURNqRi0oi3KoFbWhPGpHPVEv1Bv1QX1RP9RfSB6QR+QJeUZekFfkDXlHPpABUiBDZISMkQkyRUqkQmbIHFkgS2SF1EiDrJENskV2yB45IEfkhJyRC9IiHXJFbkiP3JFP5Av5Rn6QX+QP+RdKD6RH0hPpmfRCeiW9kd5JH6QBqSANSSPSmDQhTUklqSLNSHPSgrQkrUg1qSGtSRvSlrQj7UkH0pF0Ip1JF1JL6khX0o3Uk+6kT9IX6Zv0Q/ol/ZH+hZIDyZHkRHImuZBcSW4kd5IHSUAiSEKSiCQmSUhSEkmiSDKSnKQgKUkqEk1iSGqShqQl6Uh6koFkJJlIZpKFxJI4kpVkI/EkO8mT5EXyJvmQfEl+JH+h+EB8JD4Rn4kvxFfiG/Gd+EEcEAvikDgijokT4pRYEivijDgnLohL4opYExvimrghbok74p54IB6JJ+KZeCG2xI54Jd6IPfFO/CR+Eb+JP8Rf4h/xXyg6EB2JTkRnogvRlehGdCd6EAVEgigkiohiooQoJZJEiigjyokKopKoItJEhqgmaohaoo6oJxqIRqKJaCZaiCyRI1qJNiJPtBM9iV5Eb6IP0ZfoR/QXCg+ER8IT4ZnwQnglvBHeCR+EAaEgDAkjwpgwIUwJJaEizAhzwoKwJKwINaEhrAkbwpawI+wJB8KRcCKcCRdCS+gIV8KN0BPuhE/CF+Gb8EP4JfwR/oXEAXFEnBBnxAVxRdwQd8QDESAEIkREiBiRIFKERChEhsgRBaJEVAiNMIga0SBaRIfoEQNiREyIGbEgLMIhVsSG8Igd8US8EG/EB/FF/BB/oeBAcCQ4EZwJLgRXghvBneBBEBAIgpAgIogJEoKUQBIogowgJygISoKKQBMYgpqgIWgJOoKeYCAYCSaCmWAhsASOYCXYCDzBTvAkeBG8CT4EX4IfwT/+BybMiHmUJtFBAAAAAElFTkSuQmCC";

/// What the seed put into the chart.
struct Seeded {
    patient: String,
    asthma: String,
    note: String,
}

fn vital(subject: &Value, code: &str, text: &str, value: Value, when: &str) -> Value {
    let mut observation = json!({
        "resourceType": "Observation", "status": "final", "subject": subject,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}], "text": text},
        "effectiveDateTime": when,
    });
    if value.is_array() {
        observation["component"] = value;
    } else {
        observation["valueQuantity"] = value;
    }
    observation
}

/// Patient Ea on the care team of `Practitioner/lister`, with two heart
/// rates, three blood pressures (one as imported), a body height, an
/// encounter, a note and a problem.
async fn seed(server: &Server) -> Seeded {
    let admin = server.token("system/*.cruds");
    for (id, family) in [("lister", "Lister"), ("other", "Other")] {
        let practitioner = json!({"resourceType": "Practitioner", "id": id, "name": [{"family": family, "given": ["Jo"]}]});
        let (status, _, body) = server
            .put_json(&format!("/Practitioner/{id}"), &admin, &practitioner)
            .await;
        assert!(status.is_success(), "{body}");
    }

    let patient = create(
        server,
        &admin,
        json!({"resourceType": "Patient", "name": [{"family": FAMILY, "given": ["Ea"]}],
               "gender": "female", "birthDate": "1958-05-09"}),
    )
    .await;

    let subject = json!({"reference": format!("Patient/{patient}")});
    create(
        server,
        &admin,
        json!({"resourceType": "CareTeam", "status": "active", "subject": subject,
               "participant": [{"member": {"reference": "Practitioner/lister"}}]}),
    )
    .await;

    let bp = |systolic: i64, diastolic: i64| {
        json!([
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}], "text": "Systolic blood pressure"},
             "valueQuantity": {"value": systolic, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}], "text": "Diastolic blood pressure"},
             "valueQuantity": {"value": diastolic, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
        ])
    };
    let rate = |value: i64| json!({"value": value, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"});
    for resource in [
        vital(
            &subject,
            "8867-4",
            "Heart rate",
            rate(68),
            "2025-10-01T09:00:00Z",
        ),
        vital(
            &subject,
            "8867-4",
            "Heart rate",
            rate(74),
            "2025-11-20T09:00:00Z",
        ),
        vital(
            &subject,
            "85354-9",
            "Blood pressure",
            bp(142, 91),
            "2025-10-01T09:00:00Z",
        ),
        vital(
            &subject,
            "85354-9",
            "Blood pressure",
            bp(131, 84),
            "2025-11-20T09:00:00Z",
        ),
        // As imported from Synthea: the other panel code, diastolic listed
        // first, UCUM unit codes and unrounded values.
        vital(
            &subject,
            "55284-4",
            "Blood Pressure",
            json!([
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4", "display": "Diastolic Blood Pressure"}], "text": "Diastolic Blood Pressure"},
                 "valueQuantity": {"value": 78.163_256_479_677_83, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic Blood Pressure"}], "text": "Systolic Blood Pressure"},
                 "valueQuantity": {"value": 131.536_667_142_603_82, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            ]),
            "2019-03-11T09:00:00Z",
        ),
        vital(
            &subject,
            "8302-2",
            "Body Height",
            json!({"value": 179.221_397_606_933_3, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm"}),
            "2019-03-11T09:00:00Z",
        ),
        json!({"resourceType": "Encounter", "status": "finished",
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
               "type": [{"text": "Diabetes follow-up visit"}], "subject": subject,
               "period": {"start": "2025-11-20T09:00:00Z", "end": "2025-11-20T09:30:00Z"}}),
    ] {
        create(server, &admin, resource).await;
    }

    let note = create(
        server,
        &admin,
        json!({"resourceType": "DocumentReference", "status": "current", "docStatus": "final",
               "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}]},
               "subject": subject, "date": "2025-11-20T10:00:00Z", "author": [{"reference": "Practitioner/lister"}],
               "description": "Initial assessment",
               "content": [{"attachment": {"contentType": "text/plain; charset=utf-8",
                            "data": B64.encode("Stable on metformin. Diet counselling given.")}}]}),
    )
    .await;

    let asthma = create(
        server,
        &admin,
        json!({"resourceType": "Condition", "subject": subject,
               "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
               "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}]}],
               "code": {"text": "Asthma"}, "recorder": {"reference": "Practitioner/lister"}}),
    )
    .await;
    Seeded {
        patient,
        asthma,
        note,
    }
}

/// Returns the one resource of a search's results that `matches` accepts.
async fn find_one(
    server: &Server,
    token: &str,
    query: &str,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    let (status, _, bundle) = server.get(query, token).await;
    assert!(status.is_success(), "{query}: {bundle}");
    let found: Vec<Value> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| entry["resource"].clone())
        .filter(|resource| matches(resource))
        .collect();
    assert_eq!(found.len(), 1, "{query}: {bundle}");
    found[0].clone()
}

/// Posts a photo upload as `multipart/form-data` with the browser's
/// session cookie and returns the status and the page.
async fn post_photo(
    server: &Server,
    cookie: &str,
    path: &str,
    csrf: &str,
    photo: &[u8],
) -> (u16, String) {
    let boundary = "----chart-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"big.jpg\"\r\n\
         Content-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(photo);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let response = server
        .client()
        .post(format!("{}{path}", server.origin()))
        .header("cookie", format!("__Host-ward-app={cookie}"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .expect("post a photo");
    let status = response.status().as_u16();
    (status, response.text().await.expect("page"))
}

async fn select(browser: &Client, id: &str, value: &str) {
    element(browser, Locator::Id(id))
        .await
        .select_by_value(value)
        .await
        .expect("choose an option");
}

async fn attribute(browser: &Client, css: &str, name: &str) -> String {
    element(browser, Locator::Css(css))
        .await
        .attr(name)
        .await
        .expect("attribute")
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webapp_chart_documenting_in_chromium() {
    if !chromium_available() {
        return;
    }
    let server = Server::start();
    let seeded = seed(&server).await;
    let patient = seeded.patient.clone();
    let secret = add_user(
        &server,
        (CLINICIAN, "physician", PASSWORD),
        Some("Practitioner/lister"),
    );
    let driver = Driver::start();
    let browser = browser(&driver).await;
    let shots = Shots::new();
    let admin = server.token("system/*.cruds");

    sign_in(&browser, &server, (CLINICIAN, PASSWORD, &secret), &shots).await;
    let session_cookie = browser
        .get_named_cookie("__Host-ward-app")
        .await
        .expect("the web app session cookie")
        .value()
        .to_owned();

    // A skip link leads past the bar to the main content.
    assert_eq!(
        attribute(&browser, "a.skip", "href").await,
        "#main",
        "the skip link"
    );
    // Focused, the skip link comes into view with a dark focus ring
    // (#0b3d75, about 11:1 against white).
    let focused = browser
        .execute(
            "const a = document.querySelector('a.skip'); a.focus(); \
             const s = getComputedStyle(a); \
             return [a.getBoundingClientRect().top, s.outlineColor, s.outlineStyle];",
            vec![],
        )
        .await
        .expect("focus the skip link");
    assert!(
        focused[0].as_f64().is_some_and(|top| top >= 0.0),
        "the focused skip link is on screen: {focused}"
    );
    assert_eq!(focused[1], "rgb(11, 61, 117)", "focus ring colour");
    assert_eq!(focused[2], "solid", "focus ring style");

    // Search by the full name as the cards show it, and by an impossible
    // birth date.
    for typed in [format!("Ea {FAMILY}"), format!("{FAMILY},  ea")] {
        fill(&browser, "q", &typed).await;
        click(&browser, "form[role=search] button").await;
        let text = page_text(&browser).await;
        assert!(text.contains("Search results"), "{typed}: {text}");
        assert!(text.contains(FAMILY), "{typed} finds the patient: {text}");
    }
    fill(&browser, "q", &format!("Ea {FAMILY}x")).await;
    click(&browser, "form[role=search] button").await;
    let text = page_text(&browser).await;
    assert!(text.contains("No patient matches this search."), "{text}");
    fill(&browser, "q", "1958-02-30").await;
    click(&browser, "form[role=search] button").await;
    let text = page_text(&browser).await;
    assert!(
        text.contains("1958-02-30 is not a valid date") && text.contains("YYYY-MM-DD"),
        "{text}"
    );
    browser
        .goto(&format!("{}/app", server.origin()))
        .await
        .expect("back to the patients");
    fill(&browser, "q", &format!("Ea {FAMILY}")).await;
    click(&browser, "form[role=search] button").await;

    // The chart: trends of measurements with two values, encounters, documents.
    click(&browser, "ul.cards a").await;
    let url = browser.current_url().await.expect("url");
    let chart = url.path().to_owned();
    assert!(chart.starts_with("/app/p/"), "{url}");
    assert!(
        !chart.contains(&patient),
        "the patient id leaked into {url}"
    );
    let text = page_text(&browser).await;
    for expected in [
        "Heart rate: 74 /min",
        "Blood pressure: 131/84 mmHg",
        "Body Height: 179.2 cm",
        "Diabetes follow-up visit",
        "Initial assessment",
        "Asthma",
    ] {
        assert!(text.contains(expected), "{expected} missing: {text}");
    }
    // Saved and imported readings share one blood pressure row.
    assert!(!text.contains("Blood Pressure:"), "a second BP row: {text}");
    for unwanted in ["mm[Hg]", "78.16", "179.22"] {
        assert!(!text.contains(unwanted), "{unwanted} shown: {text}");
    }
    let mut labels = Vec::new();
    for svg in browser
        .find_all(Locator::Css("svg.trend"))
        .await
        .expect("trend charts")
    {
        assert_eq!(
            svg.attr("role").await.expect("role").as_deref(),
            Some("img")
        );
        labels.push(
            svg.attr("aria-label")
                .await
                .expect("label")
                .unwrap_or_default(),
        );
    }
    assert!(
        labels
            .iter()
            .any(|l| l.contains("Heart rate") && l.contains("68, 74 /min")),
        "{labels:?}"
    );
    assert!(
        labels
            .iter()
            .any(|l| l.contains("systolic 132, 142, 131 mmHg; diastolic 78, 91, 84 mmHg")),
        "{labels:?}"
    );
    shots.take(&browser, "chart-00-top").await;
    browser
        .execute(
            "document.getElementById('s-latest-vitals').scrollIntoView(); window.scrollBy(0, -64);",
            vec![],
        )
        .await
        .expect("scroll");
    shots.take(&browser, "chart-01-trends").await;
    assert_page_headers(&server, &session_cookie, &chart).await;

    // Open the seeded note: its text is shown as text.
    click(
        &browser,
        &format!("a[href='{chart}/documents/{}']", seeded.note),
    )
    .await;
    let text = page_text(&browser).await;
    assert!(
        text.contains("Stable on metformin. Diet counselling given."),
        "{text}"
    );
    assert!(text.contains("Jo Lister"), "the author's name: {text}");
    assert_page_headers(
        &server,
        &session_cookie,
        &format!("{chart}/documents/{}", seeded.note),
    )
    .await;

    // Write a note; an empty one is refused first.
    browser
        .goto(&format!("{}{chart}/note", server.origin()))
        .await
        .expect("open the note form");
    let cancel_height = browser
        .execute(
            "return document.querySelector('main p>a:only-child').getBoundingClientRect().height;",
            vec![],
        )
        .await
        .expect("cancel link height");
    assert!(
        cancel_height.as_f64().is_some_and(|h| h >= 44.0),
        "the cancel link is {cancel_height} px high"
    );
    fill(&browser, "title", "Ward round").await;
    click(&browser, "form button[type=submit].wide").await;
    let text = page_text(&browser).await;
    assert!(text.contains("Write the note text."), "{text}");
    assert_eq!(
        element(&browser, Locator::Id("title"))
            .await
            .prop("value")
            .await
            .expect("value")
            .as_deref(),
        Some("Ward round"),
        "the title typed is kept"
    );
    fill(
        &browser,
        "text",
        "Breathing easier.\nPlan: continue inhaler.",
    )
    .await;
    click(&browser, "form button[type=submit].wide").await;
    let text = page_text(&browser).await;
    assert!(text.contains("Note saved."), "{text}");
    assert!(text.contains("Ward round"), "{text}");

    // Add a problem.
    click(&browser, &format!("a[href='{chart}/problem']")).await;
    fill(&browser, "problem", "Chronic kidney disease stage 3").await;
    select(&browser, "status", "active").await;
    fill(&browser, "comment", "eGFR 48").await;
    click(&browser, "form button[type=submit].wide").await;
    let text = page_text(&browser).await;
    assert!(text.contains("Problem saved."), "{text}");
    assert!(text.contains("Chronic kidney disease stage 3"), "{text}");

    // Add an allergy; a severity without a reaction is refused first.
    click(&browser, &format!("a[href='{chart}/allergy']")).await;
    fill(&browser, "substance", "Latex").await;
    select(&browser, "category", "environment").await;
    select(&browser, "criticality", "high").await;
    select(&browser, "severity", "severe").await;
    click(&browser, "form button[type=submit].wide").await;
    let text = page_text(&browser).await;
    assert!(
        text.contains("Describe the reaction to give its severity."),
        "{text}"
    );
    fill(&browser, "reaction", "Hives").await;
    click(&browser, "form button[type=submit].wide").await;
    let text = page_text(&browser).await;
    assert!(text.contains("Allergy saved."), "{text}");
    assert!(text.contains("Latex"), "{text}");

    // Upload a photo: a file that is not an image is refused by content.
    let files = tempfile::tempdir().expect("temp dir");
    let fake = files.path().join("not-a-photo.jpg");
    std::fs::write(&fake, "just some text, not a JPEG").expect("write file");
    let png = B64.decode(PNG_B64).expect("PNG");
    let photo_path = files.path().join("wound.png");
    std::fs::write(&photo_path, &png).expect("write PNG");
    click(&browser, &format!("a[href='{chart}/photo']")).await;
    assert_eq!(
        attribute(&browser, "#photo", "capture").await,
        "environment"
    );
    assert!(
        attribute(&browser, "#photo", "accept")
            .await
            .contains("image/")
    );
    element(&browser, Locator::Id("photo"))
        .await
        .send_keys(fake.to_str().expect("path"))
        .await
        .expect("choose a file");
    click(&browser, "form button[type=submit].wide").await;
    let text = page_text(&browser).await;
    assert!(
        text.contains("This file is not a JPEG, PNG or HEIC photo"),
        "{text}"
    );
    element(&browser, Locator::Id("photo"))
        .await
        .send_keys(photo_path.to_str().expect("path"))
        .await
        .expect("choose the photo");
    fill(&browser, "title", "Wound on the left heel").await;
    shots.take(&browser, "chart-02-photo-form").await;
    click(&browser, "form button[type=submit].wide").await;
    let text = page_text(&browser).await;
    assert!(text.contains("Photo saved."), "{text}");
    assert!(text.contains("Wound on the left heel"), "{text}");
    let storage: Value = browser
        .execute(
            "return [window.localStorage.length, window.sessionStorage.length];",
            vec![],
        )
        .await
        .expect("storage");
    assert_eq!(storage, json!([0, 0]), "nothing kept in browser storage");

    // Uploads over 5 MB and uploads without the form's CSRF token are
    // rejected, and neither is stored.
    let csrf = attribute(
        &browser,
        "form[action='/app/signout'] input[name=csrf]",
        "value",
    )
    .await;
    let mut big = vec![0xFF, 0xD8, 0xFF, 0xE0];
    big.resize(5 * 1024 * 1024 + 1, 0);
    let photo_path_url = format!("{chart}/photo");
    let (status, page) = post_photo(&server, &session_cookie, &photo_path_url, &csrf, &big).await;
    assert_eq!(status, 413, "{page}");
    assert!(page.contains("larger than 5 MB"), "{page}");
    let (status, _) = post_photo(&server, &session_cookie, &photo_path_url, "forged", &png).await;
    assert_eq!(status, 403);
    let (_, _, documents) = server
        .get(&format!("DocumentReference?patient={patient}"), &admin)
        .await;
    assert_eq!(documents["total"], json!(3), "{documents}");

    // Through the FHIR API: the photo is a Binary in the patient's record
    // and a DocumentReference pointing at it, by the clinician.
    let photo_doc = find_one(
        &server,
        &admin,
        &format!("DocumentReference?patient={patient}"),
        |d| d["description"] == "Wound on the left heel",
    )
    .await;
    assert_eq!(
        photo_doc["subject"]["reference"],
        format!("Patient/{patient}")
    );
    assert_eq!(photo_doc["author"][0]["reference"], "Practitioner/lister");
    assert_eq!(photo_doc["status"], "current");
    let attachment = &photo_doc["content"][0]["attachment"];
    assert_eq!(attachment["contentType"], "image/png");
    assert_eq!(attachment["size"], json!(png.len()));
    let binary_path = attachment["url"].as_str().expect("attachment url");
    assert!(binary_path.starts_with("Binary/"), "{binary_path}");
    let (status, _, binary) = server.get(binary_path, &admin).await;
    assert!(status.is_success(), "{binary}");
    assert_eq!(binary["contentType"], "image/png");
    assert_eq!(
        binary["securityContext"]["reference"],
        format!("Patient/{patient}")
    );
    assert_eq!(
        B64.decode(binary["data"].as_str().expect("data"))
            .expect("base64"),
        png
    );

    // The care team may read it; a physician outside it may not, and a
    // Binary without a patient is refused to clinical roles.
    let member = server.token_with(
        "user/*.cruds",
        &[
            "--role",
            "physician",
            "--fhir-user",
            "Practitioner/lister",
            "--subject",
            "u-lister",
        ],
    );
    let outsider = server.token_with(
        "user/*.cruds",
        &[
            "--role",
            "physician",
            "--fhir-user",
            "Practitioner/other",
            "--subject",
            "u-other",
        ],
    );
    let (status, _, _) = server.get(binary_path, &member).await;
    assert_eq!(status, 200);
    let (status, _, body) = server.get(binary_path, &outsider).await;
    assert_eq!(status, 404, "{body}");
    let loose = json!({"resourceType": "Binary", "contentType": "image/png", "data": PNG_B64});
    let (status, _, body) = server.post_json("Binary", &member, &loose).await;
    assert_eq!(status, 403, "{body}");

    // Open the photo: shown through the authenticated route, loaded.
    let photo_id = photo_doc["id"].as_str().expect("id");
    click(&browser, &format!("a[href='{chart}/documents/{photo_id}']")).await;
    let src = attribute(&browser, "img.photo", "src").await;
    let width: Value = browser
        .execute(
            "const img = document.querySelector('img.photo'); \
             return img.complete ? img.naturalWidth : new Promise(r => img.onload = () => r(img.naturalWidth));",
            vec![],
        )
        .await
        .expect("image width");
    assert_eq!(width, json!(48), "the photo loaded in the page");
    assert!(src.contains("/photo/0"), "{src}");
    assert!(!src.starts_with("data:"), "{src}");
    shots.take(&browser, "chart-03-photo").await;
    let cached: Value = browser
        .execute(
            "return (async () => { const urls = []; \
             for (const name of await caches.keys()) { \
               const cache = await caches.open(name); \
               for (const request of await cache.keys()) urls.push(request.url); } \
             return urls; })();",
            vec![],
        )
        .await
        .expect("Cache API entries");
    let cached = cached.as_array().expect("a list of URLs");
    assert!(
        cached
            .iter()
            .all(|url| !url.as_str().unwrap_or("").contains("/app/p/")),
        "a chart page or photo in the Cache API: {cached:?}"
    );
    let photo_url = if src.starts_with("https://") {
        src.clone()
    } else {
        format!("{}{src}", server.origin())
    };
    let response = server
        .client()
        .get(&photo_url)
        .header("cookie", format!("__Host-ward-app={session_cookie}"))
        .send()
        .await
        .expect("fetch the photo");
    assert_eq!(response.status(), 200);
    assert_eq!(header(response.headers(), "cache-control"), "no-store");
    assert_eq!(header(response.headers(), "content-type"), "image/png");
    assert_eq!(
        header(response.headers(), "x-content-type-options"),
        "nosniff"
    );
    assert_eq!(
        response.bytes().await.expect("bytes").as_ref(),
        png.as_slice()
    );
    let response = server
        .client()
        .get(&photo_url)
        .send()
        .await
        .expect("fetch the photo without the session");
    assert_ne!(header(response.headers(), "content-type"), "image/png");
    let body = response.bytes().await.expect("bytes");
    assert!(
        !body.windows(8).any(|w| w == &png[..8]),
        "the photo was served without a session"
    );

    // A conflicting edit: the problem changes through the FHIR API after
    // the form was rendered; saving shows the conflict and keeps the choice.
    browser
        .goto(&format!("{}{chart}", server.origin()))
        .await
        .expect("back to the chart");
    click(
        &browser,
        &format!("a[href='{chart}/problems/{}']", seeded.asthma),
    )
    .await;
    select(&browser, "status", "resolved").await;
    let (status, _, mut condition) = server
        .get(&format!("Condition/{}", seeded.asthma), &admin)
        .await;
    assert!(status.is_success(), "{condition}");
    condition["clinicalStatus"]["coding"][0]["code"] = json!("inactive");
    condition.as_object_mut().expect("object").remove("meta");
    let (status, _, body) = server
        .put_json(&format!("Condition/{}", seeded.asthma), &admin, &condition)
        .await;
    assert!(status.is_success(), "{body}");
    click(&browser, "form button[type=submit].wide").await;
    let text = page_text(&browser).await;
    assert!(
        text.contains("changed by someone else since you opened it"),
        "{text}"
    );
    assert!(text.contains("version 2"), "{text}");
    assert!(text.contains("\"inactive\""), "{text}");
    let chosen = element(&browser, Locator::Id("status"))
        .await
        .prop("value")
        .await
        .expect("value");
    assert_eq!(
        chosen.as_deref(),
        Some("resolved"),
        "the user's choice is kept"
    );
    shots.take(&browser, "chart-04-conflict").await;
    let (_, _, unchanged) = server
        .get(&format!("Condition/{}", seeded.asthma), &admin)
        .await;
    assert_eq!(unchanged["clinicalStatus"]["coding"][0]["code"], "inactive");
    click(&browser, "form button[type=submit].wide").await;
    let text = page_text(&browser).await;
    assert!(text.contains("Problem saved."), "{text}");

    // The history of the problem: three versions, the last by the clinician.
    click(
        &browser,
        &format!("a[href='{chart}/history/Condition/{}']", seeded.asthma),
    )
    .await;
    let text = page_text(&browser).await;
    for expected in [
        "Version 3",
        "Version 2",
        "Version 1",
        "Clinical status: inactive → resolved",
        "Clinical status: active → inactive",
        "Recorded by: Jo Lister",
        "Recorded.",
    ] {
        assert!(text.contains(expected), "{expected} missing: {text}");
    }
    shots.take(&browser, "chart-05-history").await;
    assert_page_headers(
        &server,
        &session_cookie,
        &format!("{chart}/history/Condition/{}", seeded.asthma),
    )
    .await;

    // Through the FHIR API: the note, the problem and the allergy.
    let note = find_one(
        &server,
        &admin,
        &format!("DocumentReference?patient={patient}"),
        |d| d["description"] == "Ward round",
    )
    .await;
    assert_eq!(note["subject"]["reference"], format!("Patient/{patient}"));
    assert_eq!(note["author"][0]["reference"], "Practitioner/lister");
    assert_eq!(note["type"]["coding"][0]["code"], "11506-3");
    assert_eq!(note["docStatus"], "final");
    let text = note["content"][0]["attachment"]["data"]
        .as_str()
        .expect("data");
    assert_eq!(
        B64.decode(text).expect("base64"),
        b"Breathing easier.\nPlan: continue inhaler."
    );
    let problem = find_one(
        &server,
        &admin,
        &format!("Condition?patient={patient}"),
        |c| c["code"]["text"] == "Chronic kidney disease stage 3",
    )
    .await;
    assert_eq!(
        problem["subject"]["reference"],
        format!("Patient/{patient}")
    );
    assert_eq!(problem["recorder"]["reference"], "Practitioner/lister");
    assert_eq!(problem["clinicalStatus"]["coding"][0]["code"], "active");
    assert_eq!(
        problem["verificationStatus"]["coding"][0]["code"],
        "confirmed"
    );
    assert_eq!(
        problem["category"][0]["coding"][0]["code"],
        "problem-list-item"
    );
    assert_eq!(problem["note"][0]["text"], "eGFR 48");
    let allergy = find_one(
        &server,
        &admin,
        &format!("AllergyIntolerance?patient={patient}"),
        |a| a["code"]["text"] == "Latex",
    )
    .await;
    assert_eq!(
        allergy["patient"]["reference"],
        format!("Patient/{patient}")
    );
    assert_eq!(allergy["recorder"]["reference"], "Practitioner/lister");
    assert_eq!(allergy["clinicalStatus"]["coding"][0]["code"], "active");
    assert_eq!(allergy["criticality"], "high");
    assert_eq!(allergy["category"], json!(["environment"]));
    assert_eq!(allergy["reaction"][0]["manifestation"][0]["text"], "Hives");
    assert_eq!(allergy["reaction"][0]["severity"], "severe");
    // Correct the note while someone else changes it: the conflict keeps
    // the text typed and shows the current version. Saving again works,
    // and the history shows the change.
    let note_id = note["id"].as_str().expect("id");
    browser
        .goto(&format!("{}{chart}/documents/{note_id}", server.origin()))
        .await
        .expect("open the note");
    click(
        &browser,
        &format!("a[href='{chart}/documents/{note_id}/edit']"),
    )
    .await;
    let mut changed = note.clone();
    changed["description"] = json!("Ward round, reviewed");
    changed.as_object_mut().expect("object").remove("meta");
    let (status, _, body) = server
        .put_json(&format!("DocumentReference/{note_id}"), &admin, &changed)
        .await;
    assert!(status.is_success(), "{body}");
    let typed = "Breathing easier. Plan: stop the inhaler.";
    fill(&browser, "text", typed).await;
    click(&browser, "form button[type=submit].wide").await;
    let text = page_text(&browser).await;
    assert!(
        text.contains("This note was changed by someone else since you opened it."),
        "{text}"
    );
    assert!(text.contains("current version (2)"), "{text}");
    let kept = element(&browser, Locator::Id("text"))
        .await
        .prop("value")
        .await
        .expect("value");
    assert_eq!(kept.as_deref(), Some(typed), "the text typed is kept");
    click(&browser, "form button[type=submit].wide").await;
    let text = page_text(&browser).await;
    assert!(text.contains("Note saved."), "{text}");
    assert!(text.contains("Plan: stop the inhaler."), "{text}");
    click(
        &browser,
        &format!("a[href='{chart}/history/DocumentReference/{note_id}']"),
    )
    .await;
    let text = page_text(&browser).await;
    assert!(text.contains("Version 3"), "{text}");
    assert!(
        text.contains("Title: Ward round → Ward round, reviewed"),
        "{text}"
    );
    assert!(
        text.contains(
            "Content: \"Breathing easier. Plan: continue inhaler.\" → \"Breathing easier. Plan: stop the inhaler.\""
        ),
        "{text}"
    );
    let asthma = server
        .get(&format!("Condition/{}", seeded.asthma), &admin)
        .await
        .2;
    assert_eq!(asthma["clinicalStatus"]["coding"][0]["code"], "resolved");
    assert_eq!(asthma["meta"]["versionId"], "3");

    browser.close().await.expect("close the browser");
}
