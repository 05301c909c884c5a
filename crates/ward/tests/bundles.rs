//! End-to-end tests of batch and transaction Bundles posted to the FHIR
//! base: reference resolution, conditional interactions, atomicity and the
//! response Bundles.

mod common;

use common::fixtures::{Admin, entries};
use reqwest::StatusCode;
use serde_json::{Value, json};

const MRN: &str = "http://example.org/mrn";

fn patient(family: &str, mrn: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{ "system": MRN, "value": mrn }],
        "name": [{ "family": family }]
    })
}

fn observation_of(reference: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "coding": [{ "system": "http://loinc.org", "code": "8302-2" }] },
        "subject": { "reference": reference },
        "valueQuantity": { "value": 170, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm" }
    })
}

fn transaction(entries: Vec<Value>) -> Value {
    json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries })
}

fn post_entry(full_url: Option<&str>, resource: Value) -> Value {
    let resource_type = resource["resourceType"].as_str().unwrap_or("").to_owned();
    let mut entry = json!({
        "resource": resource,
        "request": { "method": "POST", "url": resource_type }
    });
    if let Some(url) = full_url {
        entry["fullUrl"] = json!(url);
    }
    entry
}

/// Returns the `response.status` of each entry.
fn statuses(bundle: &Value) -> Vec<String> {
    entries(bundle)
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Returns the `Type/id` of a response entry's `location` (`Type/id/_history/n`).
fn location_id(entry: &Value) -> String {
    let location = entry["response"]["location"]
        .as_str()
        .unwrap_or_else(|| panic!("entry has no location: {entry}"));
    let parts: Vec<&str> = location.split('/').collect();
    let at = parts
        .iter()
        .position(|p| *p == "_history")
        .unwrap_or(parts.len());
    assert!(at >= 2, "location {location} is Type/id/_history/n");
    format!("{}/{}", parts[at - 2], parts[at - 1])
}

async fn count(admin: &Admin, query: &str) -> u64 {
    let bundle = admin.search(query).await;
    bundle["total"].as_u64().expect("total")
}

#[tokio::test]
async fn transaction_resolves_forward_urn_references() {
    let admin = Admin::start();
    let patient_urn = "urn:uuid:6f0e9d1c-1111-4b8e-9a61-3b5f1d7c0a01";
    // The Observation comes before the Patient it references.
    let bundle = transaction(vec![
        post_entry(
            Some("urn:uuid:6f0e9d1c-2222-4b8e-9a61-3b5f1d7c0a02"),
            observation_of(patient_urn),
        ),
        post_entry(Some(patient_urn), patient("Forward", "F1")),
    ]);
    let (status, _, body) = admin.post("/fhir", &bundle).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["resourceType"], "Bundle");
    assert_eq!(body["type"], "transaction-response");
    assert_eq!(statuses(&body), vec!["201 Created", "201 Created"]);

    let response = entries(&body);
    let observation = location_id(&response[0]);
    let patient = location_id(&response[1]);
    assert!(observation.starts_with("Observation/"), "{observation}");
    assert!(patient.starts_with("Patient/"), "{patient}");

    let (status, _, stored) = admin.get(&observation).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stored["subject"]["reference"], patient.as_str());
    let (status, _, stored) = admin.get(&patient).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stored["name"][0]["family"], "Forward");
}

#[tokio::test]
async fn transaction_conditional_references() {
    let admin = Admin::start();
    let one = admin.create(patient("Single", "C1")).await;
    admin.create(patient("TwinA", "DUP")).await;
    admin.create(patient("TwinB", "DUP")).await;

    let bundle = transaction(vec![post_entry(
        None,
        observation_of("Patient?identifier=http://example.org/mrn|C1"),
    )]);
    let (status, _, body) = admin.post("/fhir", &bundle).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let observation = location_id(&entries(&body)[0]);
    let (_, _, stored) = admin.get(&observation).await;
    assert_eq!(stored["subject"]["reference"], format!("Patient/{one}"));

    // No match and two matches each fail the whole transaction.
    for criteria in [
        "identifier=http://example.org/mrn|NONE",
        "identifier=http://example.org/mrn|DUP",
    ] {
        let before = count(&admin, "Observation").await;
        let bundle = transaction(vec![
            post_entry(None, patient("Bystander", "BY1")),
            post_entry(None, observation_of(&format!("Patient?{criteria}"))),
        ]);
        let (status, _, body) = admin.post("/fhir", &bundle).await;
        assert!(status.is_client_error(), "{criteria}: {status} {body}");
        assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
        assert_eq!(count(&admin, "Observation").await, before, "{criteria}");
        assert_eq!(
            count(&admin, "Patient?identifier=http://example.org/mrn|BY1").await,
            0,
            "{criteria}: the bystander was rolled back"
        );
    }
}

#[tokio::test]
async fn transaction_if_none_exist() {
    let admin = Admin::start();
    let existing = admin.create(patient("Existing", "E1")).await;
    let entry = |mrn: &str| {
        let mut entry = post_entry(None, patient("Maybe", mrn));
        entry["request"]["ifNoneExist"] = json!(format!("identifier={MRN}|{mrn}"));
        entry
    };
    let (status, _, body) = admin
        .post("/fhir", &transaction(vec![entry("E1"), entry("E2")]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(statuses(&body), vec!["200 OK", "201 Created"]);
    assert_eq!(
        location_id(&entries(&body)[0]),
        format!("Patient/{existing}")
    );
    assert_eq!(
        count(&admin, "Patient?identifier=http://example.org/mrn|E1").await,
        1
    );
    assert_eq!(
        count(&admin, "Patient?identifier=http://example.org/mrn|E2").await,
        1
    );
    let (_, _, stored) = admin.get(&format!("Patient/{existing}")).await;
    assert_eq!(stored["name"][0]["family"], "Existing", "not overwritten");
}

#[tokio::test]
async fn transaction_put_delete_get_in_request_order() {
    let admin = Admin::start();
    let keep = admin.create(patient("Keep", "K1")).await;
    let doomed = admin.create(patient("Doomed", "D1")).await;

    let mut renamed = patient("Renamed", "K1");
    renamed["id"] = json!(keep);
    let mut chosen = patient("Chosen", "CH1");
    chosen["id"] = json!("chosen-id");
    let bundle = transaction(vec![
        json!({ "request": { "method": "GET", "url": format!("Patient/{keep}") } }),
        json!({ "resource": renamed, "request": { "method": "PUT", "url": format!("Patient/{keep}") } }),
        json!({ "request": { "method": "DELETE", "url": format!("Patient/{doomed}") } }),
        json!({ "resource": chosen, "request": { "method": "PUT", "url": "Patient/chosen-id" } }),
        post_entry(None, patient("Posted", "P1")),
        json!({ "request": { "method": "GET", "url": "Patient?identifier=http://example.org/mrn|P1" } }),
    ]);
    let (status, _, body) = admin.post("/fhir", &bundle).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["type"], "transaction-response");
    let response = entries(&body);
    assert_eq!(response.len(), 6);
    let mut status_codes: Vec<String> = statuses(&body)
        .iter()
        .map(|s| s.split(' ').next().unwrap_or("").to_owned())
        .collect();
    // A delete may return 200 or 204.
    assert!(
        matches!(status_codes[2].as_str(), "200" | "204"),
        "{status_codes:?}"
    );
    status_codes[2] = "204".to_owned();
    assert_eq!(status_codes, vec!["200", "200", "204", "201", "201", "200"]);
    assert_eq!(location_id(&response[1]), format!("Patient/{keep}"));
    assert!(
        response[1]["response"]["location"]
            .as_str()
            .unwrap_or("")
            .ends_with("/_history/2"),
        "{}",
        response[1]
    );
    assert_eq!(location_id(&response[3]), "Patient/chosen-id");
    assert!(location_id(&response[4]).starts_with("Patient/"));
    // GET entries see the state after the writes.
    assert_eq!(response[0]["resource"]["name"][0]["family"], "Renamed");
    assert_eq!(response[5]["resource"]["resourceType"], "Bundle");
    assert_eq!(response[5]["resource"]["total"], 1);

    let (status, _, _) = admin.get(&format!("Patient/{doomed}")).await;
    assert_eq!(status, StatusCode::GONE);
    let (status, _, stored) = admin.get("Patient/chosen-id").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stored["name"][0]["family"], "Chosen");
}

#[tokio::test]
async fn transaction_conditional_put_and_delete() {
    let admin = Admin::start();
    let existing = admin.create(patient("Before", "U1")).await;
    let doomed = admin.create(patient("Doomed", "X1")).await;
    let bundle = transaction(vec![
        json!({
            "resource": patient("After", "U1"),
            "request": { "method": "PUT", "url": format!("Patient?identifier={MRN}|U1") }
        }),
        json!({
            "resource": patient("Fresh", "U2"),
            "request": { "method": "PUT", "url": format!("Patient?identifier={MRN}|U2") }
        }),
        json!({
            "request": { "method": "DELETE", "url": format!("Patient?identifier={MRN}|X1") }
        }),
    ]);
    let (status, _, body) = admin.post("/fhir", &bundle).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let response = entries(&body);
    assert_eq!(statuses(&body)[0], "200 OK");
    assert_eq!(location_id(&response[0]), format!("Patient/{existing}"));
    assert_eq!(statuses(&body)[1], "201 Created");
    let (_, _, stored) = admin.get(&format!("Patient/{existing}")).await;
    assert_eq!(stored["name"][0]["family"], "After");
    assert_eq!(
        count(&admin, "Patient?identifier=http://example.org/mrn|U2").await,
        1
    );
    let (status, _, _) = admin.get(&format!("Patient/{doomed}")).await;
    assert_eq!(status, StatusCode::GONE);
}

#[tokio::test]
async fn transaction_invalid_entry_stores_nothing() {
    let admin = Admin::start();
    let before = count(&admin, "Patient").await;
    let bundle = transaction(vec![
        post_entry(
            Some("urn:uuid:aaaaaaaa-0000-4000-8000-000000000001"),
            patient("Valid", "V1"),
        ),
        post_entry(
            None,
            observation_of("urn:uuid:aaaaaaaa-0000-4000-8000-000000000001"),
        ),
        post_entry(
            None,
            json!({
                "resourceType": "Patient",
                "name": [{ "family": "Broken" }],
                "gender": "sometimes"
            }),
        ),
    ]);
    let (status, _, body) = admin.post("/fhir", &bundle).await;
    assert!(status.is_client_error(), "{status} {body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    let text = body.to_string();
    assert!(
        text.contains("Bundle.entry[2].resource"),
        "the outcome names the entry: {text}"
    );
    assert!(
        text.contains("gender"),
        "the outcome names the element: {text}"
    );
    assert_eq!(count(&admin, "Patient").await, before);
    assert_eq!(count(&admin, "Observation").await, 0);
    assert_eq!(count(&admin, "Patient?name=valid").await, 0);
}

#[tokio::test]
async fn batch_entries_are_independent() {
    let admin = Admin::start();
    let existing = admin.create(patient("Existing", "B0")).await;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            post_entry(None, patient("First", "B1")),
            post_entry(None, json!({ "resourceType": "Patient", "gender": "sometimes" })),
            json!({ "request": { "method": "GET", "url": format!("Patient/{existing}") } }),
            json!({ "request": { "method": "GET", "url": "Patient/no-such-patient" } }),
            json!({ "request": { "method": "DELETE", "url": format!("Patient/{existing}") } }),
            post_entry(None, observation_of("Patient?identifier=http://example.org/mrn|NONE")),
            post_entry(None, patient("Last", "B2"))
        ]
    });
    let (status, _, body) = admin.post("/fhir", &bundle).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["type"], "batch-response");
    let response = entries(&body);
    assert_eq!(response.len(), 7);
    let codes: Vec<u16> = statuses(&body)
        .iter()
        .map(|s| {
            s.split(' ')
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(codes[0], 201);
    assert!((400..500).contains(&codes[1]), "{codes:?}");
    assert_eq!(codes[2], 200);
    assert_eq!(codes[3], 404);
    assert!(matches!(codes[4], 200 | 204), "{codes:?}");
    assert!((400..500).contains(&codes[5]), "{codes:?}");
    assert_eq!(codes[6], 201);
    for failed in [1, 3, 5] {
        assert_eq!(
            response[failed]["response"]["outcome"]["resourceType"], "OperationOutcome",
            "entry {failed}: {}",
            response[failed]
        );
    }
    assert!(
        response[1]["response"]["outcome"]
            .to_string()
            .contains("Bundle.entry[1]"),
        "{}",
        response[1]
    );
    assert_eq!(response[2]["resource"]["id"], existing.as_str());

    assert_eq!(
        count(&admin, "Patient?identifier=http://example.org/mrn|B1").await,
        1
    );
    assert_eq!(
        count(&admin, "Patient?identifier=http://example.org/mrn|B2").await,
        1
    );
    assert_eq!(
        count(&admin, "Patient?identifier=http://example.org/mrn|B0").await,
        0
    );
    assert_eq!(count(&admin, "Observation").await, 0);
}

#[tokio::test]
async fn bundle_of_wrong_type_is_rejected() {
    let admin = Admin::start();
    let (status, _, body) = admin
        .post(
            "/fhir",
            &json!({ "resourceType": "Bundle", "type": "collection", "entry": [] }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, body) = admin
        .post("/fhir", &json!({ "resourceType": "Patient" }))
        .await;
    assert!(status.is_client_error(), "{body}");
}
