//! End-to-end tests with real Synthea data and the encryption-at-rest scan
//! of the data directory.
//!
//! The Synthea Bundles live in `shared/data/synthea-r4` beside the checkout.
//! Without them the Synthea test prints a note and passes, unless
//! `WARD_REQUIRE_SHARED_DATA=1` is set.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::fixtures::{Admin, assert_no_plaintext, entries, ids_with_mode, stop_gracefully};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Returns the folder of Synthea transaction Bundles, or `None` (after
/// printing a note) when it is absent and not required.
fn synthea_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/synthea-r4");
    if dir.is_dir() {
        return Some(dir);
    }
    let required = std::env::var("WARD_REQUIRE_SHARED_DATA").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "WARD_REQUIRE_SHARED_DATA=1 but {} does not exist",
        dir.display()
    );
    eprintln!(
        "note: skipping the Synthea test because {} does not exist",
        dir.display()
    );
    None
}

fn read_json(path: &std::path::Path) -> Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// Lists the Bundle files: the `*Information*` Bundles, then the patients.
fn bundle_files(dir: &std::path::Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list the Synthea folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let name = |p: &PathBuf| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let (mut shared, patients): (Vec<PathBuf>, Vec<PathBuf>) = files
        .into_iter()
        .partition(|p| name(p).is_some_and(|n| n.contains("Information")));
    // Organizations before Practitioners, as Synthea writes them.
    shared.sort_by_key(|p| !name(p).is_some_and(|n| n.starts_with("hospital")));
    (shared, patients)
}

/// Posts a transaction Bundle and returns the map from each entry's
/// `fullUrl` to the `Type/id` the server stored it as.
async fn load_bundle(admin: &Admin, bundle: &Value, what: &str) -> HashMap<String, String> {
    let (status, _, body) = admin.post("/fhir", bundle).await;
    assert_eq!(status, StatusCode::OK, "{what}: {body}");
    assert_eq!(body["type"], "transaction-response", "{what}");
    let requests = entries(bundle);
    let responses = entries(&body);
    assert_eq!(
        responses.len(),
        requests.len(),
        "{what}: one response per entry"
    );
    let mut map = HashMap::new();
    for (index, (request, response)) in requests.iter().zip(&responses).enumerate() {
        let status = response["response"]["status"].as_str().unwrap_or("");
        assert!(status.starts_with('2'), "{what} entry {index}: {response}");
        let location = response["response"]["location"].as_str().unwrap_or("");
        let parts: Vec<&str> = location.split('/').collect();
        let Some(at) = parts.iter().position(|p| *p == "_history") else {
            panic!("{what} entry {index} has no location: {response}");
        };
        assert!(at >= 2, "{what} entry {index}: {location}");
        let stored = format!("{}/{}", parts[at - 2], parts[at - 1]);
        if let Some(full_url) = request["fullUrl"].as_str() {
            map.insert(full_url.to_owned(), stored);
        }
    }
    map
}

/// Removes `id` and `meta` and rewrites references through `map`, so a
/// stored resource compares equal to its source.
fn normalize(resource: &Value, map: &HashMap<String, String>) -> Value {
    let mut copy = resource.clone();
    if let Some(object) = copy.as_object_mut() {
        object.remove("id");
        object.remove("meta");
    }
    remap(&mut copy, map);
    copy
}

fn remap(value: &mut Value, map: &HashMap<String, String>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object.iter_mut() {
                if key == "reference" {
                    if let Some(target) = child.as_str().and_then(|r| map.get(r)) {
                        *child = json!(target);
                    }
                } else {
                    remap(child, map);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| remap(item, map)),
        _ => {}
    }
}

/// Returns the resources of `resource_type` in a Bundle, with their `fullUrl`.
fn resources_of<'a>(bundle: &'a Value, resource_type: &str) -> Vec<(&'a str, &'a Value)> {
    bundle["entry"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|e| e["resource"]["resourceType"] == resource_type)
        .map(|e| (e["fullUrl"].as_str().unwrap_or(""), &e["resource"]))
        .collect()
}

fn has_coding(concept: &Value, system: &str, code: &str) -> bool {
    concept["coding"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["system"] == system && c["code"] == code))
}

/// The strings of a Patient that must never reach the disk in plaintext.
fn phi_of(patient: &Value) -> Vec<String> {
    let mut phi = Vec::new();
    let strings = |value: &Value| -> Vec<String> {
        match value {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    };
    for name in patient["name"].as_array().into_iter().flatten() {
        phi.extend(strings(&name["family"]));
        phi.extend(strings(&name["given"]));
    }
    for identifier in patient["identifier"].as_array().into_iter().flatten() {
        phi.extend(strings(&identifier["value"]));
    }
    for address in patient["address"].as_array().into_iter().flatten() {
        phi.extend(strings(&address["line"]));
        phi.extend(strings(&address["city"]));
    }
    for telecom in patient["telecom"].as_array().into_iter().flatten() {
        phi.extend(strings(&telecom["value"]));
    }
    phi
}

#[tokio::test]
async fn synthea_bundles_load_and_search() {
    let Some(dir) = synthea_dir() else {
        return;
    };
    let (shared, patients) = bundle_files(&dir);
    assert_eq!(shared.len(), 2, "hospital and practitioner Bundles");
    assert_eq!(patients.len(), 6, "six patient Bundles");

    let mut admin = Admin::start();
    for file in &shared {
        load_bundle(&admin, &read_json(file), &file.display().to_string()).await;
    }

    let mut phi = Vec::new();
    for file in &patients {
        let what = file.display().to_string();
        let bundle = read_json(file);
        let map = load_bundle(&admin, &bundle, &what).await;

        let [(patient_url, source)] = resources_of(&bundle, "Patient")[..] else {
            panic!("{what} holds one Patient");
        };
        phi.extend(phi_of(source));
        let patient_ref = map[patient_url].clone();
        let (status, _, stored) = admin.get(&patient_ref).await;
        assert_eq!(status, StatusCode::OK, "{what}");
        for field in [
            "name",
            "identifier",
            "birthDate",
            "address",
            "telecom",
            "gender",
        ] {
            assert_eq!(stored[field], source[field], "{what}: Patient.{field}");
        }
        assert_eq!(normalize(&stored, &map), normalize(source, &map), "{what}");

        // Every Observation reads back equal to its source.
        for (url, observation) in resources_of(&bundle, "Observation").into_iter().take(5) {
            let (status, _, stored) = admin.get(&map[url]).await;
            assert_eq!(status, StatusCode::OK, "{what}: {url}");
            assert_eq!(
                normalize(&stored, &map),
                normalize(observation, &map),
                "{what}: {url}"
            );
        }

        // Body heights, newest first.
        let mut heights: Vec<(String, String)> = resources_of(&bundle, "Observation")
            .into_iter()
            .filter(|(_, o)| has_coding(&o["code"], "http://loinc.org", "8302-2"))
            .map(|(url, o)| {
                let date = o["effectiveDateTime"].as_str().unwrap_or("").to_owned();
                (date, map[url].clone())
            })
            .collect();
        heights.sort();
        heights.reverse();
        let expected: Vec<String> = heights
            .iter()
            .map(|(_, r)| r.trim_start_matches("Observation/").to_owned())
            .collect();
        let query =
            format!("Observation?subject={patient_ref}&code=http://loinc.org|8302-2&_sort=-date");
        let result = admin.search(&query).await;
        assert_eq!(result["total"], expected.len(), "{what}: {query}");
        assert_eq!(ids_with_mode(&result, "match"), expected, "{what}: {query}");

        let encounters = resources_of(&bundle, "Encounter").len();
        let result = admin
            .search(&format!("Encounter?patient={patient_ref}&_count=100"))
            .await;
        assert_eq!(result["total"], encounters, "{what}: encounters");

        let active = resources_of(&bundle, "Condition")
            .into_iter()
            .filter(|(_, c)| {
                has_coding(
                    &c["clinicalStatus"],
                    "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "active",
                )
            })
            .count();
        let result = admin
            .search(&format!(
                "Condition?patient={patient_ref}&clinical-status=active"
            ))
            .await;
        assert_eq!(result["total"], active, "{what}: active conditions");
        let all = resources_of(&bundle, "Condition").len();
        let result = admin
            .search(&format!("Condition?patient={patient_ref}"))
            .await;
        assert_eq!(result["total"], all, "{what}: conditions");
    }

    let data = admin.server.data_dir().to_owned();
    assert_no_plaintext(&data, &phi);
    stop_gracefully(&mut admin.server);
    let files = assert_no_plaintext(&data, &phi);
    assert_store_scanned(&admin.server, &files, &phi);
}

#[tokio::test]
async fn own_patient_is_encrypted_at_rest() {
    let mut admin = Admin::start();
    let patient = json!({
        "resourceType": "Patient",
        "identifier": [
            { "system": "http://hl7.org/fhir/sid/us-ssn", "value": "987-65-4329" },
            { "system": "http://example.org/mrn", "value": "MRN-QX7731" }
        ],
        "name": [{ "family": "Quillfeather", "given": ["Ottoline", "Marigold"] }],
        "telecom": [{ "system": "phone", "value": "555-867-5309" }],
        "address": [{ "line": ["4417 Juniperberry Lane"], "city": "Westhollow" }],
        "birthDate": "1977-07-07"
    });
    let id = admin.create(patient.clone()).await;

    // Exercise search, update and history so every index and version is
    // written.
    let found = admin.match_ids("Patient?name=quillf").await;
    assert_eq!(found, vec![id.clone()]);
    let found = admin
        .match_ids("Patient?identifier=http://example.org/mrn|MRN-QX7731")
        .await;
    assert_eq!(found, vec![id.clone()]);
    let mut updated = patient.clone();
    updated["id"] = json!(id);
    updated["address"][0]["line"] = json!(["4417 Juniperberry Lane", "Flat Nightingale"]);
    let (status, _, body) = admin
        .server
        .put_json(&format!("Patient/{id}"), &admin.token, &updated)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = admin.get(&format!("Patient/{id}/_history")).await;
    assert_eq!(status, StatusCode::OK);

    let mut phi = phi_of(&updated);
    phi.push("Juniperberry".to_owned());
    let data = admin.server.data_dir().to_owned();
    assert_no_plaintext(&data, &phi);
    stop_gracefully(&mut admin.server);
    let files = assert_no_plaintext(&data, &phi);
    assert_store_scanned(&admin.server, &files, &phi);
    // The byte search itself works: it finds a value in the source text.
    assert!(common::fixtures::contains(
        updated.to_string().as_bytes(),
        b"Quillfeather"
    ));
}

/// Checks that the plaintext scan covered the store: `ward.db` among the
/// scanned files on SQLite, or every table's rows on PostgreSQL.
fn assert_store_scanned(server: &common::Server, files: &[std::path::PathBuf], phi: &[String]) {
    let Some(database) = server.database() else {
        assert!(
            files.iter().any(|f| f.ends_with("ward.db")),
            "the scan covered ward.db: {files:?}"
        );
        return;
    };
    let dump = database.dump();
    assert!(
        common::fixtures::contains(&dump, b"versions"),
        "the dump covers the versions table"
    );
    for needle in phi
        .iter()
        .map(|n| n.trim())
        .filter(|n| n.chars().count() >= 4)
    {
        for variant in [needle.to_owned(), needle.to_lowercase()] {
            assert!(
                !common::fixtures::contains(&dump, variant.as_bytes()),
                "the PostgreSQL tables contain the plaintext {variant:?}"
            );
        }
    }
}
