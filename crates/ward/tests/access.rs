//! The access policy over HTTPS: role × scope × resource type ×
//! relationship × interaction, each with its expected outcome, plus
//! consent and break-the-glass.

mod common;

use common::fixtures::{Admin, entries};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The data every case runs against: practitioner `d1` is on the care team
/// of patient `p1` (through a CareTeam) but not of `p2`.
struct World {
    admin: Admin,
    p1: String,
    p2: String,
    obs1: String,
    obs2: String,
}

async fn world() -> World {
    let admin = Admin::start();
    let (status, _, body) = admin
        .server
        .put_json(
            "/Practitioner/d1",
            &admin.token,
            &json!({ "resourceType": "Practitioner", "id": "d1", "name": [{ "family": "Osler" }] }),
        )
        .await;
    assert!(status.is_success(), "{body}");
    let p1 = admin
        .create(json!({ "resourceType": "Patient", "name": [{ "family": "Alpha" }] }))
        .await;
    let p2 = admin
        .create(json!({ "resourceType": "Patient", "name": [{ "family": "Beta" }] }))
        .await;
    admin
        .create(json!({
            "resourceType": "CareTeam",
            "status": "active",
            "subject": { "reference": format!("Patient/{p1}") },
            "participant": [{ "member": { "reference": "Practitioner/d1" } }],
        }))
        .await;
    let obs1 = admin.create(observation(&p1)).await;
    let obs2 = admin.create(observation(&p2)).await;
    World {
        admin,
        p1,
        p2,
        obs1,
        obs2,
    }
}

fn observation(patient: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs",
        }] }],
        "code": { "coding": [{ "system": "http://loinc.org", "code": "8302-2" }] },
        "subject": { "reference": format!("Patient/{patient}") },
        "valueQuantity": { "value": 170, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm" },
    })
}

/// A user token: `role`, acting as `fhir_user`, with `scope`.
fn user_token(
    world: &World,
    scope: &str,
    role: &str,
    fhir_user: &str,
    patient: Option<&str>,
) -> String {
    let subject = format!("user-{role}");
    let mut extra = vec![
        "--role",
        role,
        "--fhir-user",
        fhir_user,
        "--subject",
        &subject,
    ];
    if let Some(patient) = patient {
        extra.extend(["--patient", patient]);
    }
    world.admin.server.token_with(scope, &extra)
}

/// One row of the table.
struct Case {
    name: &'static str,
    token: String,
    method: &'static str,
    path: String,
    body: Option<Value>,
    status: StatusCode,
    /// For searches: the ids expected among the matches, in any order.
    ids: Option<Vec<String>>,
}

async fn run(world: &World, case: &Case) -> Result<(), String> {
    let server = &world.admin.server;
    let (status, _, body) = match (case.method, &case.body) {
        ("GET", _) => server.get(&case.path, &case.token).await,
        ("POST", Some(body)) => server.post_json(&case.path, &case.token, body).await,
        ("PUT", Some(body)) => server.put_json(&case.path, &case.token, body).await,
        ("DELETE", _) => server.delete(&case.path, &case.token).await,
        _ => return Err(format!("{}: malformed case", case.name)),
    };
    if status != case.status {
        return Err(format!(
            "{}: expected {}, got {status}: {body}",
            case.name, case.status
        ));
    }
    if let Some(expected) = &case.ids {
        let mut got: Vec<String> = entries(&body)
            .iter()
            .filter(|e| e["search"]["mode"] == "match")
            .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
            .collect();
        got.sort();
        let mut expected = expected.clone();
        expected.sort();
        if got != expected {
            return Err(format!(
                "{}: expected matches {expected:?}, got {got:?}",
                case.name
            ));
        }
        if body["total"].as_u64() != Some(expected.len() as u64) {
            return Err(format!(
                "{}: total {} leaks hidden matches",
                case.name, body["total"]
            ));
        }
    }
    Ok(())
}

fn get(name: &'static str, token: &str, path: String, status: StatusCode) -> Case {
    Case {
        name,
        token: token.to_owned(),
        method: "GET",
        path,
        body: None,
        status,
        ids: None,
    }
}

fn search(name: &'static str, token: &str, path: String, ids: Vec<String>) -> Case {
    Case {
        ids: Some(ids),
        ..get(name, token, path, StatusCode::OK)
    }
}

fn post(name: &'static str, token: &str, path: &str, body: Value, status: StatusCode) -> Case {
    Case {
        name,
        token: token.to_owned(),
        method: "POST",
        path: path.to_owned(),
        body: Some(body),
        status,
        ids: None,
    }
}

#[tokio::test]
async fn access_table() {
    let w = world().await;
    let (p1, p2, obs1, obs2) = (w.p1.clone(), w.p2.clone(), w.obs1.clone(), w.obs2.clone());
    let physician = user_token(&w, "user/*.cruds", "physician", "Practitioner/d1", None);
    let physician_read_only = user_token(&w, "user/*.rs", "physician", "Practitioner/d1", None);
    let nurse = user_token(&w, "user/*.cruds", "nurse", "Practitioner/d1", None);
    let front_desk = user_token(&w, "user/*.cruds", "front_desk", "Practitioner/fd", None);
    let auditor = user_token(&w, "user/*.rs", "auditor", "Practitioner/au", None);
    let pharmacist = user_token(&w, "user/*.cruds", "pharmacist", "Practitioner/other", None);
    let patient = user_token(
        &w,
        "patient/*.rs",
        "patient",
        &format!("Patient/{p1}"),
        Some(&p1),
    );
    let lab_only = user_token(
        &w,
        "user/Observation.rs?category=laboratory",
        "physician",
        "Practitioner/d1",
        None,
    );
    let system = w.admin.server.token("system/Observation.rs");

    let transaction_for = |patient: &str| {
        json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{
                "request": { "method": "POST", "url": "Observation" },
                "resource": observation(patient),
            }],
        })
    };

    let cases = vec![
        // Physician on p1's care team.
        get(
            "physician reads own patient",
            &physician,
            format!("/Patient/{p1}"),
            StatusCode::OK,
        ),
        get(
            "physician reads other patient",
            &physician,
            format!("/Patient/{p2}"),
            StatusCode::NOT_FOUND,
        ),
        get(
            "physician reads team observation",
            &physician,
            format!("/Observation/{obs1}"),
            StatusCode::OK,
        ),
        get(
            "physician reads other observation",
            &physician,
            format!("/Observation/{obs2}"),
            StatusCode::NOT_FOUND,
        ),
        search(
            "physician searches all observations",
            &physician,
            "/Observation".into(),
            vec![obs1.clone()],
        ),
        search(
            "physician searches other patient's",
            &physician,
            format!("/Observation?subject=Patient/{p2}"),
            vec![],
        ),
        search(
            "physician searches patients",
            &physician,
            "/Patient".into(),
            vec![p1.clone()],
        ),
        get(
            "physician history of other observation",
            &physician,
            format!("/Observation/{obs2}/_history"),
            StatusCode::NOT_FOUND,
        ),
        get(
            "physician history of team observation",
            &physician,
            format!("/Observation/{obs1}/_history"),
            StatusCode::OK,
        ),
        post(
            "physician writes for team patient",
            &physician,
            "/Observation",
            observation(&p1),
            StatusCode::CREATED,
        ),
        post(
            "physician writes for other patient",
            &physician,
            "/Observation",
            observation(&p2),
            StatusCode::FORBIDDEN,
        ),
        post(
            "physician transaction for other patient",
            &physician,
            "/fhir",
            transaction_for(&p2),
            StatusCode::FORBIDDEN,
        ),
        post(
            "physician transaction for team patient",
            &physician,
            "/fhir",
            transaction_for(&p1),
            StatusCode::OK,
        ),
        post(
            "physician read-only scope cannot write",
            &physician_read_only,
            "/Observation",
            observation(&p1),
            StatusCode::FORBIDDEN,
        ),
        get(
            "physician reads practitioner",
            &physician,
            "/Practitioner/d1".into(),
            StatusCode::OK,
        ),
        get(
            "physician cannot read audit events",
            &physician,
            "/AuditEvent".into(),
            StatusCode::FORBIDDEN,
        ),
        // Nurse on the same team: reads, but may not delete.
        get(
            "nurse reads team observation",
            &nurse,
            format!("/Observation/{obs1}"),
            StatusCode::OK,
        ),
        Case {
            method: "DELETE",
            ..get(
                "nurse cannot delete",
                &nurse,
                format!("/Observation/{obs1}"),
                StatusCode::FORBIDDEN,
            )
        },
        // Front desk: demographics only, any patient.
        get(
            "front desk reads any patient",
            &front_desk,
            format!("/Patient/{p2}"),
            StatusCode::OK,
        ),
        get(
            "front desk cannot read observations",
            &front_desk,
            format!("/Observation/{obs1}"),
            StatusCode::FORBIDDEN,
        ),
        search(
            "front desk searches patients",
            &front_desk,
            "/Patient".into(),
            vec![p1.clone(), p2.clone()],
        ),
        // Auditor: no clinical data.
        get(
            "auditor cannot read patients",
            &auditor,
            format!("/Patient/{p1}"),
            StatusCode::FORBIDDEN,
        ),
        // Pharmacist on no care team.
        get(
            "pharmacist off team reads nothing",
            &pharmacist,
            format!("/Observation/{obs1}"),
            StatusCode::NOT_FOUND,
        ),
        // Patient-facing app for p1.
        get(
            "patient reads own observation",
            &patient,
            format!("/Observation/{obs1}"),
            StatusCode::OK,
        ),
        get(
            "patient reads other observation",
            &patient,
            format!("/Observation/{obs2}"),
            StatusCode::NOT_FOUND,
        ),
        search(
            "patient searches observations",
            &patient,
            format!("/Observation?_id={obs1},{obs2}"),
            vec![obs1.clone()],
        ),
        post(
            "patient cannot write observation",
            &patient,
            "/Observation",
            observation(&p1),
            StatusCode::FORBIDDEN,
        ),
        // A v2 scope restricted to laboratory results: vital signs are hidden.
        get(
            "lab-only scope hides vital signs",
            &lab_only,
            format!("/Observation/{obs1}"),
            StatusCode::NOT_FOUND,
        ),
        search(
            "lab-only scope searches",
            &lab_only,
            "/Observation".into(),
            vec![],
        ),
        // A backend service sees across patients within its scopes.
        get(
            "system reads any observation",
            &system,
            format!("/Observation/{obs2}"),
            StatusCode::OK,
        ),
        get(
            "system scope does not cover patients",
            &system,
            format!("/Patient/{p1}"),
            StatusCode::FORBIDDEN,
        ),
    ];

    let mut failures = Vec::new();
    for case in &cases {
        if let Err(failure) = run(&w, case).await {
            failures.push(failure);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn includes_respect_relationship() {
    let w = world().await;
    let physician = user_token(&w, "user/*.cruds", "physician", "Practitioner/d1", None);
    let (status, _, bundle) = w
        .admin
        .server
        .get("/Patient?_revinclude=Observation:subject", &physician)
        .await;
    assert_eq!(status, StatusCode::OK, "{bundle}");
    let ids: Vec<String> = entries(&bundle)
        .iter()
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect();
    assert!(ids.contains(&w.obs1), "{bundle}");
    assert!(
        !ids.contains(&w.obs2),
        "hidden observation included: {bundle}"
    );
    assert!(!ids.contains(&w.p2), "hidden patient included: {bundle}");
}

#[tokio::test]
async fn consent_denial_and_break_the_glass() {
    let w = world().await;
    let physician = user_token(&w, "user/*.cruds", "physician", "Practitioner/d1", None);
    let server = &w.admin.server;
    w.admin
        .create(json!({
            "resourceType": "Consent",
            "status": "active",
            "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy" }] },
            "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0" }] }],
            "patient": { "reference": format!("Patient/{}", w.p1) },
            "policyRule": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT" }] },
            "provision": { "type": "deny" },
        }))
        .await;
    let (status, _, body) = server
        .get(&format!("/Observation/{}", w.obs1), &physician)
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "consent must hide the record: {body}"
    );

    // Break the glass on the other patient: a reason is mandatory.
    let path = format!("/Patient/{}/$break-the-glass", w.p2);
    let no_reason = json!({ "resourceType": "Parameters", "parameter": [] });
    let (status, _, body) = server.post_json(&path, &physician, &no_reason).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _, _) = server
        .get(&format!("/Observation/{}", w.obs2), &physician)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let with_reason = json!({ "resourceType": "Parameters", "parameter": [
        { "name": "reason", "valueString": "unconscious patient in the emergency department" },
        { "name": "minutes", "valueInteger": 30 },
    ] });
    let (status, _, body) = server.post_json(&path, &physician, &with_reason).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = server
        .get(&format!("/Observation/{}", w.obs2), &physician)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "break-the-glass must open the record: {body}"
    );
    let (status, _, body) = server
        .post_json("/Observation", &physician, &observation(&w.p2))
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "break-the-glass grants read only: {body}"
    );

    // A system token cannot break the glass: it is for users.
    let system = server.token("system/*.cruds");
    let (status, _, _) = server.post_json(&path, &system, &with_reason).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn includes_and_chains_respect_scopes() {
    let w = world().await;
    let server = &w.admin.server;
    let observations_only = server.token("system/Observation.rs");
    let patients_only = server.token("system/Patient.rs");

    let (status, _, bundle) = server
        .get(
            "/Observation?_include=Observation:subject",
            &observations_only,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{bundle}");
    let types: Vec<String> = entries(&bundle)
        .iter()
        .filter_map(|e| e["resource"]["resourceType"].as_str().map(str::to_owned))
        .collect();
    assert!(
        types.iter().all(|t| t == "Observation"),
        "included outside scope: {types:?}"
    );
    assert!(!types.is_empty());

    let (status, _, bundle) = server.get("/Patient?_revinclude=*", &patients_only).await;
    assert_eq!(status, StatusCode::OK, "{bundle}");
    let types: Vec<String> = entries(&bundle)
        .iter()
        .filter_map(|e| e["resource"]["resourceType"].as_str().map(str::to_owned))
        .collect();
    assert!(
        types.iter().all(|t| t == "Patient"),
        "revincluded outside scope: {types:?}"
    );

    let (status, _, body) = server
        .get("/Observation?patient.name=Alpha", &observations_only)
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a chain must not search Patient: {body}"
    );
}

#[tokio::test]
async fn patient_scope_hides_patientless_resources() {
    let w = world().await;
    let server = &w.admin.server;
    let orphan = w
        .admin
        .create(json!({
            "resourceType": "Observation",
            "status": "final",
            "code": { "text": "no subject" },
        }))
        .await;
    let patient = server.token_with("patient/*.cruds", &["--patient", &w.p1]);
    let (status, _, body) = server
        .get(&format!("/Observation/{orphan}"), &patient)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _, body) = server
        .delete(&format!("/Observation/{orphan}"), &patient)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _, bundle) = server.get("/Observation", &patient).await;
    assert_eq!(status, StatusCode::OK, "{bundle}");
    let ids: Vec<String> = entries(&bundle)
        .iter()
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect();
    assert!(
        !ids.contains(&orphan),
        "patient-less resource listed: {ids:?}"
    );
    assert!(ids.contains(&w.obs1));
}

#[tokio::test]
async fn hidden_resources_behave_as_absent() {
    let w = world().await;
    let server = &w.admin.server;
    let physician = user_token(&w, "user/*.cruds", "physician", "Practitioner/d1", None);

    // A visible Observation derived from a hidden one: a chain through the
    // reference must not match on the hidden target's content.
    let mut derived = observation(&w.p1);
    derived["derivedFrom"] = json!([{ "reference": format!("Observation/{}", w.obs2) }]);
    w.admin.create(derived).await;
    let chained = format!(
        "/Observation?derived-from:Observation.subject=Patient/{}",
        w.p2
    );
    let (status, _, bundle) = server.get(&chained, &physician).await;
    assert_eq!(status, StatusCode::OK, "{bundle}");
    assert_eq!(
        bundle["total"], 0,
        "a chain matched a hidden resource: {bundle}"
    );

    // Conditional delete: the hidden match counts as no match.
    let (status, _, body) = server
        .delete(
            &format!("/Observation?subject=Patient/{}", w.p2),
            &physician,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _, _) = w.admin.get(&format!("/Observation/{}", w.obs2)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the hidden resource must not be deleted"
    );

    // Conditional create: a hidden match does not stop the create.
    let client = server.client();
    let response = client
        .post(server.url("/Observation"))
        .bearer_auth(&physician)
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", format!("subject=Patient/{}", w.p2))
        .body(observation(&w.p1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn conditional_delete_checks_role_first() {
    let w = world().await;
    let physician = user_token(&w, "user/*.cruds", "physician", "Practitioner/d1", None);
    for query in ["name=Beta", "name=Nobody"] {
        let (status, _, body) = w
            .admin
            .server
            .delete(&format!("/Patient?{query}"), &physician)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{query}: {body}");
    }
}

#[tokio::test]
async fn care_team_without_status_counts() {
    let w = world().await;
    w.admin
        .create(json!({
            "resourceType": "CareTeam",
            "subject": { "reference": format!("Patient/{}", w.p2) },
            "participant": [{ "member": { "reference": "Practitioner/n2" } }],
        }))
        .await;
    let nurse = user_token(&w, "user/*.rs", "nurse", "Practitioner/n2", None);
    let (status, _, body) = w
        .admin
        .server
        .get(&format!("/Patient/{}", w.p2), &nurse)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = w
        .admin
        .server
        .get(&format!("/Patient/{}", w.p1), &nurse)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn filtered_history_shows_visible_deletions() {
    let world = world().await;
    let server = &world.admin.server;
    let (status, _, body) = server
        .delete(&format!("/Observation/{}", world.obs1), &world.admin.token)
        .await;
    assert!(status.is_success(), "{body}");
    let (status, _, body) = server
        .delete(&format!("/Observation/{}", world.obs2), &world.admin.token)
        .await;
    assert!(status.is_success(), "{body}");

    let token = user_token(
        &world,
        "user/Observation.rs",
        "physician",
        "Practitioner/d1",
        None,
    );
    let (status, _, body) = server.get("/Observation/_history", &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let deletions: Vec<String> = entries(&body)
        .iter()
        .filter(|entry| entry["request"]["method"] == "DELETE")
        .filter_map(|entry| entry["request"]["url"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        deletions,
        vec![format!("Observation/{}", world.obs1)],
        "the care-team patient's deletion is shown, the other patient's is not"
    );
}
