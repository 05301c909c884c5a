//! Regressions from hostile and unusual requests: form-encoded queries,
//! conditional reads, transaction edge cases, file modes and token scopes.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::fixtures::{Admin, entries, link};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn plus_in_query_is_space() {
    let admin = Admin::start();
    admin
        .create(json!({
            "resourceType": "Observation",
            "status": "final",
            "code": { "text": "Body Height" },
        }))
        .await;
    let plus = admin.search("Observation?code:text=Body+Height").await;
    assert_eq!(plus["total"], 1, "{plus}");
    let encoded = admin.search("Observation?code:text=Body%20Height").await;
    assert_eq!(encoded["total"], 1, "{encoded}");
}

#[tokio::test]
async fn unencoded_plus_offset_in_date() {
    let admin = Admin::start();
    admin
        .create(json!({ "resourceType": "Patient", "birthDate": "1980-02-03" }))
        .await;
    // `+10:00` sent without percent-encoding arrives as a space.
    let found = admin
        .search("Patient?birthdate=ge1980-02-03T10:00:00+10:00")
        .await;
    assert_eq!(found["total"], 1, "{found}");
}

#[tokio::test]
async fn conditional_read_headers() {
    let admin = Admin::start();
    let id = admin.create(json!({ "resourceType": "Patient" })).await;
    let path = format!("/Patient/{id}");
    let client = admin.server.client();
    let url = admin.server.url(&path);
    let get = |name: &'static str, value: String| {
        client
            .get(&url)
            .bearer_auth(&admin.token)
            .header(name, value)
            .send()
    };
    assert_eq!(
        get("if-none-match", "*".into()).await.unwrap().status(),
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        get("if-none-match", "W/\"7\", W/\"1\"".into())
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        get("if-none-match", "W/\"2\"".into())
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        get("if-modified-since", "Fri, 01 Jan 2100 00:00:00 GMT".into())
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        get("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT".into())
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn repeated_conditional_create_in_transaction() {
    let admin = Admin::start();
    let entry = |full_url: &str| {
        json!({
            "fullUrl": full_url,
            "request": { "method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:c|1" },
            "resource": { "resourceType": "Patient", "identifier": [{ "system": "urn:c", "value": "1" }] },
        })
    };
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [entry("urn:uuid:11111111-1111-1111-1111-111111111111"), entry("urn:uuid:22222222-2222-2222-2222-222222222222")],
    });
    let (status, _, body) = admin.post("/fhir", &bundle).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["entry"][0]["response"]["status"], "201 Created",
        "{body}"
    );
    assert_eq!(body["entry"][1]["response"]["status"], "200 OK", "{body}");
    let found = admin.search("Patient?identifier=urn:c|1").await;
    assert_eq!(found["total"], 1, "{found}");
}

#[tokio::test]
async fn transaction_rejects_bad_references() {
    let admin = Admin::start();
    let duplicate = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            { "fullUrl": "urn:uuid:33333333-3333-3333-3333-333333333333", "request": { "method": "POST", "url": "Patient" }, "resource": { "resourceType": "Patient" } },
            { "fullUrl": "urn:uuid:33333333-3333-3333-3333-333333333333", "request": { "method": "POST", "url": "Patient" }, "resource": { "resourceType": "Patient" } },
        ],
    });
    let (status, _, body) = admin.post("/fhir", &duplicate).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["issue"][0]["expression"][0], "Bundle.entry[1].fullUrl",
        "{body}"
    );

    let dangling = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{
            "request": { "method": "POST", "url": "Observation" },
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": { "text": "x" },
                "subject": { "reference": "urn:uuid:44444444-4444-4444-4444-444444444444" },
            },
        }],
    });
    let (status, _, body) = admin.post("/fhir", &dangling).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let all = admin.search("Observation").await;
    assert_eq!(all["total"], 0, "nothing may be stored: {all}");
}

#[tokio::test]
async fn self_link_drops_ignored_parameters() {
    let admin = Admin::start();
    let bundle = admin.search("Patient?bogus-param=1&_count=5").await;
    let own = link(&bundle, "self").expect("a self link");
    assert!(!own.contains("bogus-param"), "{own}");
    assert!(own.contains("_count=5"), "{own}");
    assert!(
        entries(&bundle)
            .iter()
            .any(|e| e["search"]["mode"] == "outcome")
    );
}

#[tokio::test]
async fn database_files_are_private() {
    let admin = Admin::start();
    admin.create(json!({ "resourceType": "Patient" })).await;
    for name in ["ward.db", "ward.db-wal", "ward.db-shm"] {
        let path = admin.server.data_dir().join(name);
        if !path.exists() {
            continue;
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
    }
}

#[test]
fn token_rejects_unknown_scopes() {
    let server = common::Server::start();
    for bad in ["", "bogus", "system/*.x"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_ward"))
            .args(["token", "--data"])
            .arg(server.data_dir())
            .args(["--scope", bad])
            .output()
            .unwrap();
        assert!(!output.status.success(), "scope {bad:?} was accepted");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("scope"),
            "the error names the scope"
        );
    }
}
