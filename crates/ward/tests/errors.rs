//! End-to-end tests of failures: each rejected request gets the right
//! status and an OperationOutcome, authentication failures carry a Bearer
//! challenge, and hostile bodies neither crash the server nor change data.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Reply, Server, header, json_body, send};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ALL: &str = "system/*.cruds";

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "name": [{ "family": "Hopper", "given": ["Grace"] }],
        "gender": "female",
    })
}

/// Posts raw bytes with a content type.
async fn post_raw(
    server: &Server,
    path: &str,
    token: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Reply {
    let request = server
        .request(Method::POST, path, token)
        .header("content-type", content_type)
        .body(body);
    send(request).await
}

/// Asserts an OperationOutcome body with at least one error issue and
/// returns its first issue.
fn assert_outcome(body: &Value) -> &Value {
    assert_eq!(
        body["resourceType"], "OperationOutcome",
        "not an outcome: {body}"
    );
    let issue = &body["issue"][0];
    assert!(
        issue["severity"] == "error" || issue["severity"] == "fatal",
        "first issue is not an error: {body}"
    );
    assert!(issue["code"].is_string(), "issue without code: {body}");
    issue
}

/// Serializes an outcome, so a check can look for a word anywhere in it.
fn outcome_text(body: &Value) -> String {
    body.to_string()
}

/// Collects the `expression` paths of all issues.
fn expressions(body: &Value) -> Vec<String> {
    body["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|issue| issue["expression"].as_array().into_iter().flatten())
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect()
}

/// Counts the versions stored on the server, from system history.
async fn version_count(server: &Server, token: &str) -> u64 {
    let (status, _, bundle) = server.get("/_history?_count=1", token).await;
    assert_eq!(status, StatusCode::OK, "{bundle}");
    bundle["total"].as_u64().expect("history total")
}

/// Checks that the server still serves metadata.
async fn assert_alive(server: &Server) {
    let (status, _, body) = server.get("/metadata", "").await;
    assert_eq!(status, StatusCode::OK, "the server stopped answering");
    assert_eq!(body["resourceType"], "CapabilityStatement");
}

#[tokio::test]
async fn invalid_json_is_400_with_position() {
    let server = Server::start();
    let token = server.token(ALL);
    let body = b"{\n  \"resourceType\": \"Patient\",\n  \"gender\": \n}".to_vec();
    let (status, _, outcome) =
        post_raw(&server, "/Patient", &token, "application/fhir+json", body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_outcome(&outcome);
    let text = outcome_text(&outcome);
    assert!(text.contains("line 4"), "no line number: {text}");
    assert!(text.contains("column"), "no column number: {text}");
}

#[tokio::test]
async fn resource_type_must_match_url() {
    let server = Server::start();
    let token = server.token(ALL);
    let (status, _, outcome) = server.post_json("/Observation", &token, &patient()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_outcome(&outcome);

    let (status, _, outcome) = server
        .post_json("/Patient", &token, &json!(["Patient"]))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_outcome(&outcome);
}

#[tokio::test]
async fn unknown_search_param_strict_is_400() {
    let server = Server::start();
    let token = server.token(ALL);
    let request = server
        .request(Method::GET, "/Patient?nonsense=1", &token)
        .header("prefer", "handling=strict");
    let (status, _, outcome) = send(request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_outcome(&outcome);
    assert!(outcome_text(&outcome).contains("nonsense"));

    // Lenient handling, the default, ignores the parameter.
    let (status, _, bundle) = server.get("/Patient?nonsense=1", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bundle["resourceType"], "Bundle");
}

#[tokio::test]
async fn bad_count_is_400() {
    let server = Server::start();
    let token = server.token(ALL);
    for count in ["abc", "-1", "1.5"] {
        let (status, _, outcome) = server
            .get(&format!("/Patient?_count={count}"), &token)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "_count={count}");
        assert_outcome(&outcome);
        let (status, _, outcome) = server
            .get(&format!("/Patient/_history?_count={count}"), &token)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "history _count={count}");
        assert_outcome(&outcome);
    }
}

/// Asserts a 401 with an OperationOutcome and a Bearer challenge.
fn assert_unauthorized(reply: &Reply, case: &str) {
    assert_eq!(reply.0, StatusCode::UNAUTHORIZED, "{case}");
    assert_outcome(&reply.2);
    let challenge = header(&reply.1, "www-authenticate");
    assert!(
        challenge.starts_with("Bearer"),
        "{case}: challenge is '{challenge}'"
    );
}

#[tokio::test]
async fn missing_or_garbage_token_is_401() {
    let server = Server::start();
    let reply = server.get("/Patient", "").await;
    assert_unauthorized(&reply, "no token");
    let reply = server.get("/Patient", "not-a-jwt").await;
    assert_unauthorized(&reply, "garbage token");
    assert!(header(&reply.1, "www-authenticate").contains("invalid_token"));
    let reply = server.get("/Patient", "a.b.c").await;
    assert_unauthorized(&reply, "three garbage parts");

    let request = server
        .request(Method::GET, "/Patient", "")
        .header("authorization", "Basic dXNlcjpwYXNz");
    let reply = send(request).await;
    assert_unauthorized(&reply, "basic scheme");

    let reply = server.post_json("/Patient", "", &patient()).await;
    assert_unauthorized(&reply, "create without a token");
}

#[tokio::test]
async fn expired_token_is_401() {
    let server = Server::start();
    let token = server.token_with(ALL, &["--ttl", "1s"]);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let reply = server.get("/Patient", &token).await;
    assert_unauthorized(&reply, "expired token");
    assert!(header(&reply.1, "www-authenticate").contains("invalid_token"));
}

#[tokio::test]
async fn token_from_other_server_is_401() {
    let first = Server::start();
    let second = Server::start();
    let token = first.token(ALL);
    let reply = second.get("/Patient", &token).await;
    assert_unauthorized(&reply, "token of another server");
    let (status, _, _) = first.get("/Patient", &token).await;
    assert_eq!(status, StatusCode::OK);
}

/// Rewrites a JWT's header with `alg` and signs it with `signature`.
fn with_algorithm(token: &str, alg: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let mut parts = token.split('.');
    let header = parts.next().expect("JWT header");
    let payload = parts.next().expect("JWT payload");
    let mut header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url header"))
            .expect("JSON header");
    header["alg"] = json!(alg);
    let header = URL_SAFE_NO_PAD.encode(header.to_string());
    let signing_input = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(sign(signing_input.as_bytes()));
    format!("{signing_input}.{signature}")
}

#[tokio::test]
async fn token_with_other_algorithm_is_401() {
    let server = Server::start();
    let token = server.token(ALL);

    let none = with_algorithm(&token, "none", |_| Vec::new());
    assert_unauthorized(&server.get("/Patient", &none).await, "alg none");
    let none_dot = none.trim_end_matches('.').to_owned() + ".";
    assert_unauthorized(
        &server.get("/Patient", &none_dot).await,
        "alg none, empty signature",
    );

    // An HMAC signed with the public CA certificate, which every client
    // has: the classic algorithm-confusion attack.
    let ca = std::fs::read(server.data_dir().join("ca.pem")).expect("read ca.pem");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &ca);
    let hs256 = with_algorithm(&token, "HS256", |input| {
        aws_lc_rs::hmac::sign(&key, input).as_ref().to_vec()
    });
    assert_unauthorized(&server.get("/Patient", &hs256).await, "alg HS256");

    // The untouched token still works, so the rejections above are about
    // the algorithm.
    let (status, _, _) = server.get("/Patient", &token).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn tampered_payload_is_401() {
    let server = Server::start();
    let token = server.token("system/Patient.r");
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("payload"))
            .expect("claims");
    claims["scope"] = json!(ALL);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let forged = format!("{}.{payload}.{}", parts[0], parts[2]);
    assert_unauthorized(&server.get("/Patient", &forged).await, "forged scope");
}

/// Asserts a 403 with an OperationOutcome.
fn assert_forbidden(reply: &Reply, case: &str) {
    assert_eq!(reply.0, StatusCode::FORBIDDEN, "{case}: {}", reply.2);
    assert_outcome(&reply.2);
    let challenge = header(&reply.1, "www-authenticate");
    assert!(
        challenge.contains("insufficient_scope"),
        "{case}: challenge is '{challenge}'"
    );
}

#[tokio::test]
async fn narrow_scope_is_403() {
    let server = Server::start();
    let admin = server.token(ALL);
    let (status, _, created) = server.post_json("/Patient", &admin, &patient()).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["id"].as_str().expect("id");

    let reader = server.token("system/Patient.rs");
    let (status, _, _) = server.get(&format!("/Patient/{id}"), &reader).await;
    assert_eq!(status, StatusCode::OK);
    let observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "text": "weight" },
    });
    assert_forbidden(
        &server
            .post_json("/Observation", &reader, &observation)
            .await,
        "create Observation",
    );
    assert_forbidden(
        &server.post_json("/Patient", &reader, &patient()).await,
        "create Patient",
    );
    assert_forbidden(
        &server.delete(&format!("/Patient/{id}"), &reader).await,
        "delete Patient",
    );
    assert_forbidden(
        &server.get("/Observation?code=x", &reader).await,
        "search Observation",
    );

    let (status, _, read) = server.get(&format!("/Patient/{id}"), &admin).await;
    assert_eq!(status, StatusCode::OK, "the forbidden delete deleted it");
    assert_eq!(read["meta"]["versionId"], "1");
    assert_eq!(server.get("/Observation", &admin).await.2["total"], 0);
}

#[tokio::test]
async fn patient_scope_without_context_is_403() {
    let server = Server::start();
    let admin = server.token(ALL);
    let (_, _, created) = server.post_json("/Patient", &admin, &patient()).await;
    let id = created["id"].as_str().expect("id");
    let token = server.token("patient/*.rs");
    assert_forbidden(
        &server.get(&format!("/Patient/{id}"), &token).await,
        "read without patient",
    );
    assert_forbidden(
        &server.get("/Patient", &token).await,
        "search without patient",
    );
}

#[tokio::test]
async fn unknown_type_and_route_are_404() {
    let server = Server::start();
    let token = server.token(ALL);
    for path in ["/Nope", "/Nope/123", "/fhir/Patient/1/_history/1/extra"] {
        let (status, _, outcome) = server.get(path, &token).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_outcome(&outcome);
    }
    let (status, _, outcome) = server
        .get(&format!("{}/no-such-route", server.origin()), "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_outcome(&outcome);
}

#[tokio::test]
async fn post_to_instance_is_405() {
    let server = Server::start();
    let token = server.token(ALL);
    let (status, _, outcome) = server.post_json("/Patient/123", &token, &patient()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_outcome(&outcome);
}

#[tokio::test]
async fn xml_is_not_acceptable() {
    let server = Server::start();
    let token = server.token(ALL);
    let (status, headers, outcome) = server.get("/Patient?_format=xml", &token).await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE);
    assert!(header(&headers, "content-type").starts_with("application/fhir+json"));
    assert_outcome(&outcome);

    let request = server
        .request(Method::GET, "/Patient", &token)
        .header("accept", "application/fhir+xml");
    let (status, _, outcome) = send(request).await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE);
    assert_outcome(&outcome);

    let request = server
        .request(Method::GET, "/metadata", "")
        .header("accept", "application/fhir+xml");
    let (status, _, _) = send(request).await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE);

    let (status, _, _) = server.get("/metadata?_format=xml", "").await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE);

    let request = server.request(Method::GET, "/Patient", &token).header(
        "accept",
        "application/fhir+xml;q=0.9, application/fhir+json",
    );
    let (status, _, _) = send(request).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn body_over_limit_is_413() {
    let server = Server::start_with(&["--max-body-bytes", "10000"], &[]);
    let token = server.token(ALL);
    let mut body = patient();
    body["name"][0]["text"] = json!("x".repeat(20_000));
    let (status, _, outcome) = server.post_json("/Patient", &token, &body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_outcome(&outcome);
    assert_eq!(version_count(&server, &token).await, 0);

    let (status, _, _) = server.post_json("/Patient", &token, &patient()).await;
    assert_eq!(status, StatusCode::CREATED, "a small body must still pass");
}

#[tokio::test]
async fn text_plain_is_415() {
    let server = Server::start();
    let token = server.token(ALL);
    let body = serde_json::to_vec(&patient()).expect("serialize");
    let (status, _, outcome) = post_raw(&server, "/Patient", &token, "text/plain", body).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_outcome(&outcome);
    assert_eq!(version_count(&server, &token).await, 0);
}

/// Posts `body` to its type and asserts 422 with `path` among the issue
/// expressions.
async fn assert_unprocessable(server: &Server, token: &str, body: Value, path: &str) {
    let resource_type = body["resourceType"]
        .as_str()
        .expect("resourceType")
        .to_owned();
    let (status, _, outcome) = server
        .post_json(&format!("/{resource_type}"), token, &body)
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{path}: {outcome}"
    );
    assert_outcome(&outcome);
    let found = expressions(&outcome);
    assert!(
        found.iter().any(|e| e == path),
        "expected expression {path}, got {found:?}"
    );
}

#[tokio::test]
async fn invalid_resources_are_422() {
    let server = Server::start();
    let token = server.token(ALL);

    let mut unknown = patient();
    unknown["favouriteColour"] = json!("blue");
    assert_unprocessable(&server, &token, unknown, "Patient.favouriteColour").await;

    let mut wrong_type = patient();
    wrong_type["birthDate"] = json!(12);
    assert_unprocessable(&server, &token, wrong_type, "Patient.birthDate").await;

    let mut bad_code = patient();
    bad_code["gender"] = json!("banana");
    assert_unprocessable(&server, &token, bad_code, "Patient.gender").await;

    let no_status = json!({ "resourceType": "Observation", "code": { "text": "weight" } });
    assert_unprocessable(&server, &token, no_status, "Observation.status").await;

    let no_code = json!({ "resourceType": "Observation", "status": "final" });
    assert_unprocessable(&server, &token, no_code, "Observation.code").await;

    assert_eq!(version_count(&server, &token).await, 0);
}

#[tokio::test]
async fn control_characters_in_strings_are_422() {
    let server = Server::start();
    let token = server.token(ALL);

    let mut name = patient();
    name["name"][0]["family"] = json!("Hopper\u{0}\u{1}\u{2}");
    assert_unprocessable(&server, &token, name, "Patient.name[0].family").await;

    let request = json!({
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": { "reference": "Patient/p1" },
        "performerType": { "text": "\u{0}\u{1}\u{2}" },
    });
    assert_unprocessable(
        &server,
        &token,
        request,
        "ServiceRequest.performerType.text",
    )
    .await;
    assert_eq!(version_count(&server, &token).await, 0);

    let mut lines = patient();
    lines["name"][0]["text"] = json!("Grace\tHopper\r\n");
    let (status, _, created) = server.post_json("/Patient", &token, &lines).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
}

#[tokio::test]
async fn unsafe_narrative_is_422() {
    let server = Server::start();
    let token = server.token(ALL);
    let divs = [
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>alert(1)</script></div>",
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p onclick=\"alert(1)\">x</p></div>",
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p ONCLICK=\"alert(1)\">x</p></div>",
    ];
    for div in divs {
        let mut body = patient();
        body["text"] = json!({ "status": "generated", "div": div });
        assert_unprocessable(&server, &token, body, "Patient.text.div").await;
    }

    let mut safe = patient();
    safe["text"] = json!({
        "status": "generated",
        "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Grace Hopper</p></div>",
    });
    let (status, _, created) = server.post_json("/Patient", &token, &safe).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
}

#[tokio::test]
async fn hostile_bodies_do_not_crash() {
    let server = Server::start();
    let token = server.token(ALL);
    let (status, _, created) = server.post_json("/Patient", &token, &patient()).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["id"].as_str().expect("id").to_owned();
    let before = version_count(&server, &token).await;

    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes();
    let deep_object = {
        let mut text = String::from("{\"resourceType\":\"Patient\",\"extension\":");
        text.push_str(&"{\"a\":".repeat(10_000));
        text.push('1');
        text.push_str(&"}".repeat(10_001));
        text.into_bytes()
    };
    let huge_string = format!("\"{}\"", "a".repeat(20 * 1024 * 1024)).into_bytes();
    let huge_field = format!(
        "{{\"resourceType\":\"Patient\",\"favouriteColour\":\"{}\"}}",
        "a".repeat(20 * 1024 * 1024)
    )
    .into_bytes();
    let huge_family = format!(
        "{{\"resourceType\":\"Patient\",\"name\":[{{\"family\":\"{}\"}}]}}",
        "a".repeat(20 * 1024 * 1024)
    )
    .into_bytes();
    let invalid_utf8 =
        b"{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"\xff\xfe\xc0\"}]}".to_vec();
    let huge_integer = b"{\"resourceType\":\"Patient\",\"multipleBirthInteger\":1e999999}".to_vec();
    let huge_exponent = b"{\"resourceType\":\"Patient\",\"birthDate\":1e999999}".to_vec();

    let cases: [(&str, Vec<u8>); 8] = [
        ("deep array", deep),
        ("deep object", deep_object),
        ("20 MB string", huge_string),
        ("20 MB unknown element", huge_field),
        ("20 MB family name", huge_family),
        ("invalid UTF-8", invalid_utf8),
        ("1e999999 integer", huge_integer),
        ("1e999999 date", huge_exponent),
    ];
    for (case, body) in cases {
        for (method, path) in [
            (Method::POST, "/Patient".to_owned()),
            (Method::PUT, format!("/Patient/{id}")),
        ] {
            let request = server
                .request(method.clone(), &path, &token)
                .header("content-type", "application/fhir+json")
                .body(body.clone());
            let (status, _, outcome) = send(request).await;
            assert!(status.is_client_error(), "{case} {method}: got {status}");
            assert_outcome(&outcome);
            assert_alive(&server).await;
        }
    }

    assert_eq!(
        version_count(&server, &token).await,
        before,
        "a hostile body changed data"
    );
    let (status, _, read) = server.get(&format!("/Patient/{id}"), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read, created);
}

#[tokio::test]
async fn huge_decimal_does_not_crash() {
    let server = Server::start();
    let token = server.token(ALL);
    let body = br#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1e999999}}"#;
    let (status, _, reply) = post_raw(
        &server,
        "/Observation",
        &token,
        "application/fhir+json",
        body.to_vec(),
    )
    .await;
    assert!(!status.is_server_error(), "got {status}: {reply}");
    if status == StatusCode::CREATED {
        let id = reply["id"].as_str().expect("id");
        let (status, _, read) = server.get(&format!("/Observation/{id}"), &token).await;
        assert_eq!(status, StatusCode::OK);
        // FHIR allows exponents in decimals. serde_json writes the exponent
        // as `e+999999`, which is the same value with the same precision.
        let sent: Value = serde_json::from_str("1e999999").expect("parse the number");
        assert_eq!(read["valueQuantity"]["value"], sent);
        let (status, _, _) = server.get("/Observation?value-quantity=gt1", &token).await;
        assert_eq!(status, StatusCode::OK);
    } else {
        assert_outcome(&reply);
        assert_eq!(version_count(&server, &token).await, 0);
    }
    assert_alive(&server).await;
}

#[tokio::test]
async fn error_responses_carry_security_headers() {
    let server = Server::start();
    let token = server.token(ALL);
    let replies = [
        server.get("/Patient", "").await,
        server.get("/Nope", &token).await,
        server.post_json("/Patient/1", &token, &patient()).await,
        send(json_body(
            server.request(Method::POST, "/Patient", &token),
            &json!({}),
        ))
        .await,
    ];
    for (status, headers, _) in &replies {
        assert_eq!(header(headers, "cache-control"), "no-store", "{status}");
        assert_eq!(
            header(headers, "x-content-type-options"),
            "nosniff",
            "{status}"
        );
        assert!(
            header(headers, "content-type").starts_with("application/fhir+json"),
            "{status}"
        );
    }
}

#[tokio::test]
async fn json_shape_errors_are_rejected() {
    let server = Server::start();
    let token = server.token(ALL);
    let cases = [
        ("null value", r#"{"resourceType":"Patient","gender":null}"#),
        ("empty array", r#"{"resourceType":"Patient","name":[]}"#),
        ("empty object", r#"{"resourceType":"Patient","name":[{}]}"#),
        ("no resourceType", r#"{"name":[{"family":"X"}]}"#),
        ("empty body", ""),
        ("scalar body", "42"),
        (
            "script in contained",
            r#"{"resourceType":"Patient","contained":[{"resourceType":"Patient","id":"c","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>x</script></div>"}}]}"#,
        ),
    ];
    for (case, body) in cases {
        let (status, _, outcome) = post_raw(
            &server,
            "/Patient",
            &token,
            "application/fhir+json",
            body.as_bytes().to_vec(),
        )
        .await;
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY,
            "{case}: got {status}"
        );
        assert_outcome(&outcome);
    }
    assert_eq!(version_count(&server, &token).await, 0);
}

#[tokio::test]
async fn invalid_ids_are_rejected() {
    let server = Server::start();
    let token = server.token(ALL);
    let long = "a".repeat(65);
    let mut body = patient();
    body["id"] = json!(long);
    let (status, _, outcome) = server
        .put_json(&format!("/Patient/{long}"), &token, &body)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_outcome(&outcome);
    body["id"] = json!("a_b");
    let (status, _, _) = server.put_json("/Patient/a_b", &token, &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = server.get("/Patient/a%20b", &token).await;
    assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND,
        "{status}"
    );
    let (status, _, outcome) = server.get("/Patient?name=%ff", &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_outcome(&outcome);
    assert_eq!(version_count(&server, &token).await, 0);
}

#[tokio::test]
async fn unknown_type_writes_are_404() {
    let server = Server::start();
    let token = server.token(ALL);
    let body = json!({ "resourceType": "Nope", "id": "1" });
    let (status, _, outcome) = server.put_json("/Nope/1", &token, &body).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_outcome(&outcome);
    let (status, _, _) = server.post_json("/Nope", &token, &body).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = server.delete("/Nope/1", &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
