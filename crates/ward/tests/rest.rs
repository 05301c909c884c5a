//! End-to-end tests of the FHIR R4 REST interactions over HTTPS: metadata,
//! create, read, vread, update, delete, history and their headers.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Reply, Server, header, json_body, send};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ALL: &str = "system/*.cruds";

fn patient(family: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "name": [{ "family": family, "given": ["Ada"] }],
        "gender": "female",
        "birthDate": "1970-01-31",
    })
}

fn patient_with_identifier(value: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{ "system": "urn:test:mrn", "value": value }],
        "name": [{ "family": "Lovelace" }],
    })
}

/// Creates `body` and returns its server-assigned id.
async fn create(server: &Server, token: &str, body: &Value) -> String {
    let resource_type = body["resourceType"].as_str().expect("resourceType");
    let (status, _, created) = server
        .post_json(&format!("/{resource_type}"), token, body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "create failed: {created}");
    created["id"].as_str().expect("created id").to_owned()
}

/// Runs a search and returns its `Bundle.total`.
async fn search_total(server: &Server, token: &str, path: &str) -> u64 {
    let (status, _, bundle) = server.get(path, token).await;
    assert_eq!(status, StatusCode::OK, "search failed: {bundle}");
    bundle["total"].as_u64().expect("Bundle.total")
}

async fn put_with(
    server: &Server,
    path: &str,
    token: &str,
    body: &Value,
    name: &str,
    value: &str,
) -> Reply {
    send(json_body(server.request(Method::PUT, path, token), body).header(name, value)).await
}

fn etag(reply: &Reply) -> &str {
    header(&reply.1, "etag")
}

#[tokio::test]
async fn metadata_describes_the_server() {
    let server = Server::start();
    let (status, headers, body) = server.get("/metadata", "").await;

    assert_eq!(status, StatusCode::OK);
    assert!(header(&headers, "content-type").starts_with("application/fhir+json"));
    assert_eq!(body["resourceType"], "CapabilityStatement");
    assert_eq!(body["fhirVersion"], "4.0.1");
    assert_eq!(body["kind"], "instance");

    let resources = body["rest"][0]["resource"]
        .as_array()
        .expect("rest.resource");
    let patient = resources
        .iter()
        .find(|r| r["type"] == "Patient")
        .expect("Patient in the CapabilityStatement");
    let interactions: Vec<&str> = patient["interaction"]
        .as_array()
        .expect("interaction")
        .iter()
        .filter_map(|i| i["code"].as_str())
        .collect();
    for code in [
        "read",
        "vread",
        "update",
        "delete",
        "create",
        "search-type",
        "history-instance",
    ] {
        assert!(
            interactions.contains(&code),
            "Patient lacks interaction {code}"
        );
    }
    let params: Vec<&str> = patient["searchParam"]
        .as_array()
        .expect("searchParam")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for name in ["name", "birthdate", "identifier", "gender"] {
        assert!(
            params.contains(&name),
            "Patient lacks search parameter {name}"
        );
    }
}

#[tokio::test]
async fn create_assigns_id_and_version() {
    let server = Server::start();
    let token = server.token(ALL);
    let mut body = patient("Lovelace");
    body["id"] = json!("client-chosen");
    let (status, headers, created) = server.post_json("/Patient", &token, &body).await;

    assert_eq!(status, StatusCode::CREATED);
    let id = created["id"].as_str().expect("id");
    assert_ne!(id, "client-chosen", "the server must assign the id");
    assert_eq!(created["meta"]["versionId"], "1");
    assert!(created["meta"]["lastUpdated"].is_string());
    assert_eq!(header(&headers, "etag"), "W/\"1\"");
    assert!(header(&headers, "last-modified").ends_with(" GMT"));
    assert_eq!(
        header(&headers, "location"),
        format!("{}/Patient/{id}/_history/1", server.base())
    );
    assert!(header(&headers, "content-type").starts_with("application/fhir+json"));

    let (status, _, read) = server.get(header(&headers, "location"), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["name"][0]["family"], "Lovelace");

    let (status, _, _) = server.get("/Patient/client-chosen", &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn create_twice_is_not_a_conflict() {
    // A plain create never collides because the server assigns the id, so
    // 409 is not expected here.
    let server = Server::start();
    let token = server.token(ALL);
    let first = create(&server, &token, &patient("Twin")).await;
    let second = create(&server, &token, &patient("Twin")).await;
    assert_ne!(first, second);
}

#[tokio::test]
async fn create_honours_prefer_return() {
    let server = Server::start();
    let token = server.token(ALL);

    let request = server
        .request(Method::POST, "/Patient", &token)
        .header("prefer", "return=minimal");
    let (status, headers, body) = send(json_body(request, &patient("Minimal"))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body, Value::Null);
    assert!(header(&headers, "location").contains("/Patient/"));
    assert_eq!(header(&headers, "etag"), "W/\"1\"");

    let request = server
        .request(Method::POST, "/Patient", &token)
        .header("prefer", "return=OperationOutcome");
    let (status, headers, body) = send(json_body(request, &patient("Outcome"))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert!(header(&headers, "location").contains("/Patient/"));
}

#[tokio::test]
async fn conditional_create_checks_matches() {
    let server = Server::start();
    let token = server.token(ALL);
    let post = |body: Value, criteria: &'static str| {
        let request = server
            .request(Method::POST, "/Patient", &token)
            .header("if-none-exist", criteria);
        send(json_body(request, &body))
    };

    let (status, _, first) = post(patient_with_identifier("a"), "identifier=urn:test:mrn|a").await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, _, again) = post(patient_with_identifier("a"), "identifier=urn:test:mrn|a").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["id"], first["id"]);
    assert_eq!(
        search_total(&server, &token, "/Patient?identifier=urn:test:mrn|a").await,
        1
    );

    create(&server, &token, &patient_with_identifier("dup")).await;
    create(&server, &token, &patient_with_identifier("dup")).await;
    let (status, _, outcome) = post(
        patient_with_identifier("dup"),
        "identifier=urn:test:mrn|dup",
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(
        search_total(&server, &token, "/Patient?identifier=urn:test:mrn|dup").await,
        2
    );
}

#[tokio::test]
async fn read_and_vread_return_versions() {
    let server = Server::start();
    let token = server.token(ALL);
    let id = create(&server, &token, &patient("First")).await;

    let reply = server.get(&format!("/Patient/{id}"), &token).await;
    assert_eq!(reply.0, StatusCode::OK);
    assert_eq!(etag(&reply), "W/\"1\"");
    assert!(!header(&reply.1, "last-modified").is_empty());

    let mut changed = reply.2.clone();
    changed["name"][0]["family"] = json!("Second");
    let (status, _, _) = server
        .put_json(&format!("/Patient/{id}"), &token, &changed)
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, headers, v1) = server
        .get(&format!("/Patient/{id}/_history/1"), &token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v1["name"][0]["family"], "First");
    assert_eq!(v1["meta"]["versionId"], "1");
    assert_eq!(header(&headers, "etag"), "W/\"1\"");

    let (status, _, v2) = server
        .get(&format!("/Patient/{id}/_history/2"), &token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v2["name"][0]["family"], "Second");

    let (status, _, outcome) = server
        .get(&format!("/Patient/{id}/_history/9"), &token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(outcome["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn read_unknown_id_is_404() {
    let server = Server::start();
    let token = server.token(ALL);
    let (status, _, outcome) = server.get("/Patient/does-not-exist", &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(outcome["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn read_after_delete_is_410() {
    let server = Server::start();
    let token = server.token(ALL);
    let id = create(&server, &token, &patient("Gone")).await;
    let (status, _, _) = server.delete(&format!("/Patient/{id}"), &token).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let (status, _, outcome) = server.get(&format!("/Patient/{id}"), &token).await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(outcome["resourceType"], "OperationOutcome");

    let (status, _, outcome) = server
        .get(&format!("/Patient/{id}/_history/2"), &token)
        .await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(outcome["resourceType"], "OperationOutcome");

    let (status, _, v1) = server
        .get(&format!("/Patient/{id}/_history/1"), &token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v1["name"][0]["family"], "Gone");
}

#[tokio::test]
async fn if_none_match_returns_304() {
    let server = Server::start();
    let token = server.token(ALL);
    let id = create(&server, &token, &patient("Cached")).await;
    let path = format!("/Patient/{id}");

    let request = server
        .request(Method::GET, &path, &token)
        .header("if-none-match", "W/\"1\"");
    let (status, headers, body) = send(request).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(body, Value::Null);
    assert_eq!(header(&headers, "etag"), "W/\"1\"");

    let request = server
        .request(Method::GET, &path, &token)
        .header("if-none-match", "W/\"7\"");
    let (status, _, body) = send(request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"], id.as_str());
}

#[tokio::test]
async fn read_applies_summary_and_elements() {
    let server = Server::start();
    let token = server.token(ALL);
    let mut body = patient("Summary");
    body["maritalStatus"] = json!({ "text": "married" });
    let id = create(&server, &token, &body).await;

    let (status, _, summary) = server
        .get(&format!("/Patient/{id}?_summary=true"), &token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(summary["name"][0]["family"], "Summary");
    assert!(
        summary.get("maritalStatus").is_none(),
        "maritalStatus is not a summary element"
    );

    let (status, _, elements) = server
        .get(&format!("/Patient/{id}?_elements=name"), &token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(elements["resourceType"], "Patient");
    assert_eq!(elements["id"], id.as_str());
    assert_eq!(elements["name"][0]["family"], "Summary");
    assert!(elements.get("birthDate").is_none());
    assert!(elements.get("gender").is_none());
}

#[tokio::test]
async fn update_makes_version_two() {
    let server = Server::start();
    let token = server.token(ALL);
    let id = create(&server, &token, &patient("Before")).await;
    let mut body = patient("After");
    body["id"] = json!(id);

    let (status, headers, updated) = server
        .put_json(&format!("/Patient/{id}"), &token, &body)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["meta"]["versionId"], "2");
    assert_eq!(updated["name"][0]["family"], "After");
    assert_eq!(header(&headers, "etag"), "W/\"2\"");

    let (_, _, read) = server.get(&format!("/Patient/{id}"), &token).await;
    assert_eq!(read["meta"]["versionId"], "2");
    assert_eq!(read["name"][0]["family"], "After");
}

#[tokio::test]
async fn update_creates_missing_resource() {
    let server = Server::start();
    let token = server.token(ALL);
    let mut body = patient("Chosen");
    body["id"] = json!("chosen-id");

    let (status, headers, created) = server.put_json("/Patient/chosen-id", &token, &body).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["id"], "chosen-id");
    assert_eq!(created["meta"]["versionId"], "1");
    assert!(header(&headers, "location").contains("/Patient/chosen-id"));
}

#[tokio::test]
async fn update_checks_body_id() {
    let server = Server::start();
    let token = server.token(ALL);
    let id = create(&server, &token, &patient("Ids")).await;

    let (status, _, outcome) = server
        .put_json(&format!("/Patient/{id}"), &token, &patient("NoId"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(outcome["resourceType"], "OperationOutcome");

    let mut other = patient("OtherId");
    other["id"] = json!("another-id");
    let (status, _, outcome) = server
        .put_json(&format!("/Patient/{id}"), &token, &other)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(outcome["resourceType"], "OperationOutcome");

    let (_, _, read) = server.get(&format!("/Patient/{id}"), &token).await;
    assert_eq!(read["meta"]["versionId"], "1");
}

#[tokio::test]
async fn update_if_match_guards_versions() {
    let server = Server::start();
    let token = server.token(ALL);
    let id = create(&server, &token, &patient("V1")).await;
    let path = format!("/Patient/{id}");
    let mut body = patient("V2");
    body["id"] = json!(id);

    let reply = put_with(&server, &path, &token, &body, "if-match", "W/\"1\"").await;
    assert_eq!(reply.0, StatusCode::OK);
    assert_eq!(etag(&reply), "W/\"2\"");

    body["name"][0]["family"] = json!("Stale");
    let reply = put_with(&server, &path, &token, &body, "if-match", "W/\"1\"").await;
    assert_eq!(reply.0, StatusCode::PRECONDITION_FAILED);
    assert_eq!(reply.2["resourceType"], "OperationOutcome");
    let (_, _, read) = server.get(&path, &token).await;
    assert_eq!(read["meta"]["versionId"], "2");
    assert_eq!(read["name"][0]["family"], "V2");

    let reply = put_with(&server, &path, &token, &body, "if-match", "version two").await;
    assert_eq!(reply.0, StatusCode::BAD_REQUEST);
    assert_eq!(reply.2["resourceType"], "OperationOutcome");
    let (_, _, read) = server.get(&path, &token).await;
    assert_eq!(read["meta"]["versionId"], "2");
}

#[tokio::test]
async fn conditional_update_by_match_count() {
    let server = Server::start();
    let token = server.token(ALL);

    let (status, _, created) = server
        .put_json(
            "/Patient?identifier=urn:test:mrn|cu",
            &token,
            &patient_with_identifier("cu"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();

    let mut body = patient_with_identifier("cu");
    body["name"][0]["family"] = json!("Updated");
    let (status, _, updated) = server
        .put_json("/Patient?identifier=urn:test:mrn|cu", &token, &body)
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["id"], id.as_str());
    assert_eq!(updated["meta"]["versionId"], "2");
    assert_eq!(updated["name"][0]["family"], "Updated");

    create(&server, &token, &patient_with_identifier("two")).await;
    create(&server, &token, &patient_with_identifier("two")).await;
    let (status, _, outcome) = server
        .put_json(
            "/Patient?identifier=urn:test:mrn|two",
            &token,
            &patient_with_identifier("two"),
        )
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(
        search_total(&server, &token, "/Patient?identifier=urn:test:mrn|two").await,
        2
    );
}

#[tokio::test]
async fn delete_records_history() {
    let server = Server::start();
    let token = server.token(ALL);
    let id = create(&server, &token, &patient("Deleted")).await;
    let path = format!("/Patient/{id}");

    let (status, _, body) = server.delete(&path, &token).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(body, Value::Null);
    let (status, _, _) = server.get(&path, &token).await;
    assert_eq!(status, StatusCode::GONE);

    let (status, _, history) = server.get(&format!("{path}/_history"), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(history["type"], "history");
    let entries = history["entry"].as_array().expect("history entries");
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["request"]["method"], "DELETE");
    assert!(
        entries[0].get("resource").is_none(),
        "a delete entry has no resource"
    );
    assert_eq!(entries[1]["request"]["method"], "POST");

    let (status, _, _) = server.delete(&path, &token).await;
    assert!(
        status == StatusCode::NO_CONTENT || status == StatusCode::OK,
        "deleting a deleted resource must succeed, got {status}"
    );
    let (status, _, _) = server.get(&path, &token).await;
    assert_eq!(status, StatusCode::GONE);
}

#[tokio::test]
async fn delete_unknown_is_404() {
    let server = Server::start();
    let token = server.token(ALL);
    let (status, _, outcome) = server.delete("/Patient/never-was", &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(outcome["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn conditional_delete_by_match_count() {
    let server = Server::start();
    let token = server.token(ALL);
    let id = create(&server, &token, &patient_with_identifier("del")).await;

    let (status, _, _) = server
        .delete("/Patient?identifier=urn:test:mrn|del", &token)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = server.get(&format!("/Patient/{id}"), &token).await;
    assert_eq!(status, StatusCode::GONE);

    let (status, _, _) = server
        .delete("/Patient?identifier=urn:test:mrn|none", &token)
        .await;
    assert!(
        status.is_success(),
        "no match deletes nothing, got {status}"
    );

    create(&server, &token, &patient_with_identifier("pair")).await;
    create(&server, &token, &patient_with_identifier("pair")).await;
    let (status, _, outcome) = server
        .delete("/Patient?identifier=urn:test:mrn|pair", &token)
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(
        search_total(&server, &token, "/Patient?identifier=urn:test:mrn|pair").await,
        2
    );
}

/// The `(method, type/id, etag)` of each history entry, in order.
fn history_rows(bundle: &Value) -> Vec<(String, String, String)> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    let url = e["fullUrl"].as_str().unwrap_or("");
                    let key = url.rsplitn(3, '/').take(2).collect::<Vec<_>>();
                    (
                        e["request"]["method"].as_str().unwrap_or("").to_owned(),
                        format!(
                            "{}/{}",
                            key.get(1).unwrap_or(&""),
                            key.first().unwrap_or(&"")
                        ),
                        e["response"]["etag"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn history_levels_list_newest_first() {
    let server = Server::start();
    let token = server.token(ALL);
    let id = create(&server, &token, &patient("H1")).await;
    let mut body = patient("H2");
    body["id"] = json!(id);
    server
        .put_json(&format!("/Patient/{id}"), &token, &body)
        .await;
    let observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "text": "weight" },
    });
    let obs = create(&server, &token, &observation).await;
    server.delete(&format!("/Patient/{id}"), &token).await;

    let (status, _, instance) = server.get(&format!("/Patient/{id}/_history"), &token).await;
    assert_eq!(status, StatusCode::OK);
    let rows = history_rows(&instance);
    let methods: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(methods, ["DELETE", "PUT", "POST"]);
    let etags: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(etags, ["W/\"3\"", "W/\"2\"", "W/\"1\""]);
    assert_eq!(instance["total"], 3);

    let (status, _, by_type) = server.get("/Patient/_history", &token).await;
    assert_eq!(status, StatusCode::OK);
    let rows = history_rows(&by_type);
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.1.starts_with("Patient/")));

    let (status, _, system) = server.get("/_history", &token).await;
    assert_eq!(status, StatusCode::OK);
    let rows = history_rows(&system);
    let keys: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    let patient_key = format!("Patient/{id}");
    let obs_key = format!("Observation/{obs}");
    assert_eq!(keys, [&patient_key, &obs_key, &patient_key, &patient_key]);
}

#[tokio::test]
async fn history_since_filters_older() {
    let server = Server::start();
    let token = server.token(ALL);
    let old = create(&server, &token, &patient("Old")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, _, read) = server.get(&format!("/Patient/{old}"), &token).await;
    let old_updated = read["meta"]["lastUpdated"]
        .as_str()
        .expect("lastUpdated")
        .to_owned();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let since = time_after(&old_updated);
    let new = create(&server, &token, &patient("New")).await;

    // The same instant written with a +05:00 offset must select the same.
    let offset =
        time::OffsetDateTime::parse(&since, &time::format_description::well_known::Rfc3339)
            .expect("since")
            .to_offset(time::macros::offset!(+5))
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format");
    let (status, _, history) = server
        .get(
            &format!("/Patient/_history?_since={}", offset.replace('+', "%2B")),
            &token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let keys: Vec<String> = history_rows(&history).into_iter().map(|r| r.1).collect();
    assert_eq!(keys, [format!("Patient/{new}")], "_since={offset}");

    let encoded = since.replace('+', "%2B");
    let (status, _, history) = server
        .get(&format!("/Patient/_history?_since={encoded}"), &token)
        .await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let rows = history_rows(&history);
    let keys: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(keys, [format!("Patient/{new}")]);
}

/// An instant one second after `instant` (`YYYY-MM-DDThh:mm:ss...`), in UTC.
fn time_after(instant: &str) -> String {
    let format = time::format_description::well_known::Rfc3339;
    let parsed = time::OffsetDateTime::parse(instant, &format).expect("lastUpdated is RFC 3339");
    let later = parsed + time::Duration::seconds(1);
    later
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .expect("zero nanoseconds")
        .format(&format)
        .expect("format instant")
}

#[tokio::test]
async fn history_paging_is_stable_under_writes() {
    let server = Server::start();
    let token = server.token(ALL);
    let mut expected = HashSet::new();
    for i in 0..7 {
        let id = create(&server, &token, &patient(&format!("Page{i}"))).await;
        expected.insert(format!("Patient/{id}"));
    }

    let mut seen = Vec::new();
    let mut url = "/Patient/_history?_count=3".to_owned();
    for page in 0.. {
        assert!(page < 10, "paging did not end");
        let (status, _, bundle) = server.get(&url, &token).await;
        assert_eq!(status, StatusCode::OK, "{bundle}");
        let rows = history_rows(&bundle);
        assert!(rows.len() <= 3, "page larger than _count");
        seen.extend(rows.into_iter().map(|r| r.1));

        // A write between pages must neither appear nor shift the pages.
        create(&server, &token, &patient(&format!("Late{page}"))).await;

        let next = bundle["link"]
            .as_array()
            .and_then(|links| links.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str())
            .map(str::to_owned);
        match next {
            Some(next) => url = next,
            None => break,
        }
    }
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "an entry appeared twice: {seen:?}"
    );
    assert_eq!(unique, expected);
}

#[tokio::test]
async fn decimals_keep_precision() {
    let server = Server::start();
    let token = server.token(ALL);
    for value in ["1.50", "0.000", "100.0000000001"] {
        let text = format!(
            r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"valueQuantity":{{"value":{value},"unit":"mg"}}}}"#
        );
        let request = server
            .request(Method::POST, "/Observation", &token)
            .header("content-type", "application/fhir+json")
            .body(text);
        let (status, _, created) = send(request).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let id = created["id"].as_str().expect("id");

        let response = server
            .request(Method::GET, &format!("/Observation/{id}"), &token)
            .send()
            .await
            .expect("read");
        let raw = response.text().await.expect("body");
        assert!(
            raw.contains(&format!("\"value\":{value}")),
            "{value} did not round-trip: {raw}"
        );
    }
}

#[tokio::test]
async fn astral_characters_round_trip() {
    let server = Server::start();
    let token = server.token(ALL);
    let family = "Smile😀 𝔘nicode";
    let id = create(&server, &token, &patient(family)).await;
    let (status, _, read) = server.get(&format!("/Patient/{id}"), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["name"][0]["family"], family);
}

#[tokio::test]
async fn fhir_responses_carry_security_headers() {
    let server = Server::start();
    let token = server.token(ALL);
    let id = create(&server, &token, &patient("Headers")).await;
    for (path, token) in [
        (format!("/Patient/{id}"), token.as_str()),
        ("/Patient/unknown".to_owned(), token.as_str()),
        ("/metadata".to_owned(), ""),
        ("/Patient".to_owned(), ""),
    ] {
        let (_, headers, _) = server.get(&path, token).await;
        assert_eq!(header(&headers, "cache-control"), "no-store", "{path}");
        assert_eq!(
            header(&headers, "x-content-type-options"),
            "nosniff",
            "{path}"
        );
    }
}

#[tokio::test]
async fn server_log_has_no_phi() {
    let server = Server::start();
    let token = server.token(ALL);
    create(&server, &token, &patient("Zyxwvut")).await;
    let (status, _, bundle) = server.get("/Patient?name=Zyxwvut", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bundle["total"], 1);
    let (status, _, _) = server
        .get("/Patient?name=Zyxwvut&bogus=Zyxwvut", &token)
        .await;
    assert_eq!(status, StatusCode::OK);

    let log = server.stderr_log();
    assert!(
        !log.is_empty(),
        "the server logged nothing; the check proves nothing"
    );
    assert!(
        !log.contains("Zyxwvut"),
        "the log contains a patient name:\n{log}"
    );
    assert!(!log.contains(&token), "the log contains an access token");
}

#[tokio::test]
async fn create_ignores_client_meta() {
    let server = Server::start();
    let token = server.token(ALL);
    let mut body = patient("Meta");
    body["meta"] = json!({ "versionId": "99", "lastUpdated": "2001-01-01T00:00:00Z" });
    let (status, _, created) = server.post_json("/Patient", &token, &body).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["meta"]["versionId"], "1");
    assert_ne!(created["meta"]["lastUpdated"], "2001-01-01T00:00:00Z");
}

#[tokio::test]
async fn update_after_delete_revives() {
    let server = Server::start();
    let token = server.token(ALL);
    let id = create(&server, &token, &patient("Lazarus")).await;
    server.delete(&format!("/Patient/{id}"), &token).await;
    let mut body = patient("Lazarus");
    body["id"] = json!(id);
    let (status, headers, revived) = server
        .put_json(&format!("/Patient/{id}"), &token, &body)
        .await;
    assert!(
        status == StatusCode::CREATED || status == StatusCode::OK,
        "{status}"
    );
    assert_eq!(revived["meta"]["versionId"], "3");
    assert_eq!(header(&headers, "etag"), "W/\"3\"");
    let (status, _, _) = server.get(&format!("/Patient/{id}"), &token).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn update_if_match_on_missing_is_rejected() {
    let server = Server::start();
    let token = server.token(ALL);
    let mut body = patient("Nobody");
    body["id"] = json!("nobody");
    let reply = put_with(
        &server,
        "/Patient/nobody",
        &token,
        &body,
        "if-match",
        "W/\"1\"",
    )
    .await;
    assert!(
        reply.0 == StatusCode::PRECONDITION_FAILED || reply.0 == StatusCode::NOT_FOUND,
        "{}",
        reply.0
    );
    let (status, _, _) = server.get("/Patient/nobody", &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn delete_if_match_guards_versions() {
    let server = Server::start();
    let token = server.token(ALL);
    let id = create(&server, &token, &patient("Guarded")).await;
    let path = format!("/Patient/{id}");
    let request = server
        .request(Method::DELETE, &path, &token)
        .header("if-match", "W/\"5\"");
    let (status, _, outcome) = send(request).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    let (status, _, _) = server.get(&path, &token).await;
    assert_eq!(status, StatusCode::OK);
    let request = server
        .request(Method::DELETE, &path, &token)
        .header("if-match", "W/\"1\"");
    let (status, _, _) = send(request).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn conditional_writes_need_criteria() {
    let server = Server::start();
    let token = server.token(ALL);
    let id = create(&server, &token, &patient("Survivor")).await;
    let (status, _, outcome) = server.delete("/Patient", &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    let (status, _, _) = server
        .put_json("/Patient", &token, &patient("Overwrite"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, read) = server.get(&format!("/Patient/{id}"), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["meta"]["versionId"], "1");
}

#[tokio::test]
async fn if_none_exist_accepts_url_form() {
    let server = Server::start();
    let token = server.token(ALL);
    let first = create(&server, &token, &patient_with_identifier("url")).await;
    let request = server
        .request(Method::POST, "/Patient", &token)
        .header("if-none-exist", "Patient?identifier=urn:test:mrn|url");
    let (status, _, body) = send(json_body(request, &patient_with_identifier("url"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], first.as_str());
}

#[tokio::test]
async fn prefer_minimal_on_update() {
    let server = Server::start();
    let token = server.token(ALL);
    let id = create(&server, &token, &patient("Quiet")).await;
    let mut body = patient("Quieter");
    body["id"] = json!(id);
    let reply = put_with(
        &server,
        &format!("/Patient/{id}"),
        &token,
        &body,
        "prefer",
        "return=minimal",
    )
    .await;
    assert_eq!(reply.0, StatusCode::OK);
    assert_eq!(reply.2, Value::Null);
    assert_eq!(etag(&reply), "W/\"2\"");
}

#[tokio::test]
async fn json_media_types_are_accepted() {
    let server = Server::start();
    let token = server.token(ALL);
    for content_type in [
        "application/fhir+json",
        "application/fhir+json; charset=utf-8",
        "application/json",
        "Application/FHIR+JSON",
        "application/fhir+json;fhirVersion=4.0",
    ] {
        let request = server
            .request(Method::POST, "/Patient", &token)
            .header("content-type", content_type)
            .body(patient("Media").to_string());
        let (status, _, body) = send(request).await;
        assert_eq!(status, StatusCode::CREATED, "{content_type}: {body}");
    }
    for format in ["json", "application/fhir%2Bjson", "application/json"] {
        let (status, _, _) = server
            .get(&format!("/Patient?_format={format}"), &token)
            .await;
        assert_eq!(status, StatusCode::OK, "_format={format}");
    }
}

#[tokio::test]
async fn server_speaks_http2() {
    let server = Server::start();
    let response = server
        .client()
        .get(server.url("/metadata"))
        .send()
        .await
        .expect("metadata");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
}

#[tokio::test]
async fn token_for_old_address_is_rejected() {
    let server = Server::start();
    let token = server.token(ALL);
    let (root, data) = server.stop();
    let moved = Server::start_in(root, data, &[], &[]);
    let (status, headers, _) = moved.get("/Patient", &token).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a token for another audience was accepted"
    );
    assert!(header(&headers, "www-authenticate").starts_with("Bearer"));
    let fresh = moved.token(ALL);
    let (status, _, _) = moved.get("/Patient", &fresh).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn concurrent_if_match_has_one_winner() {
    let server = Server::start();
    let token = server.token(ALL);
    let id = create(&server, &token, &patient("Race")).await;
    let path = format!("/Patient/{id}");
    let mut requests = Vec::new();
    for i in 0..8 {
        let mut body = patient(&format!("Racer{i}"));
        body["id"] = json!(id);
        let request = json_body(server.request(Method::PUT, &path, &token), &body)
            .header("if-match", "W/\"1\"");
        requests.push(send(request));
    }
    let replies = futures_join_all(requests).await;
    let statuses: Vec<StatusCode> = replies.iter().map(|r| r.0).collect();
    let winners = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let losers = statuses
        .iter()
        .filter(|s| **s == StatusCode::PRECONDITION_FAILED)
        .count();
    assert_eq!(winners, 1, "{statuses:?}");
    assert_eq!(losers, 7, "{statuses:?}");
    let (_, _, read) = server.get(&path, &token).await;
    assert_eq!(read["meta"]["versionId"], "2");
}

#[tokio::test]
async fn concurrent_if_none_exist_creates_once() {
    let server = Server::start();
    let token = server.token(ALL);
    let mut requests = Vec::new();
    for _ in 0..8 {
        let request = json_body(
            server.request(Method::POST, "/Patient", &token),
            &patient_with_identifier("once"),
        )
        .header("if-none-exist", "identifier=urn:test:mrn|once");
        requests.push(send(request));
    }
    let replies = futures_join_all(requests).await;
    let created = replies
        .iter()
        .filter(|r| r.0 == StatusCode::CREATED)
        .count();
    assert_eq!(
        created,
        1,
        "{:?}",
        replies.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert!(replies.iter().all(|r| r.0.is_success()));
    assert_eq!(
        search_total(&server, &token, "/Patient?identifier=urn:test:mrn|once").await,
        1
    );
}

/// Runs futures concurrently on the test runtime and collects their outputs
/// in order.
async fn futures_join_all<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.expect("request task"));
    }
    outputs
}

#[tokio::test]
async fn last_modified_matches_meta() {
    let server = Server::start();
    let token = server.token(ALL);
    let (_, headers, created) = server
        .post_json("/Patient", &token, &patient("Clock"))
        .await;
    let last_updated = created["meta"]["lastUpdated"]
        .as_str()
        .expect("lastUpdated");
    let rfc3339 = time::format_description::well_known::Rfc3339;
    let rfc2822 = time::format_description::well_known::Rfc2822;
    let meta = time::OffsetDateTime::parse(last_updated, &rfc3339).expect("meta.lastUpdated");
    let http = header(&headers, "last-modified").replace("GMT", "+0000");
    let http = time::OffsetDateTime::parse(&http, &rfc2822).expect("Last-Modified");
    assert_eq!(meta.unix_timestamp(), http.unix_timestamp());
}

#[tokio::test]
async fn unsupported_methods_are_405() {
    let server = Server::start();
    let token = server.token(ALL);
    for (method, path) in [
        (Method::PATCH, "/Patient/1"),
        (Method::POST, "/Patient/1"),
        (Method::DELETE, "/metadata"),
        (Method::PUT, "/Patient/1/_history/1"),
    ] {
        let request = server
            .request(method.clone(), path, &token)
            .header("content-type", "application/fhir+json")
            .body("{}");
        let (status, _, body) = send(request).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(body["resourceType"], "OperationOutcome", "{method} {path}");
    }
}
