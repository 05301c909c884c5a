//! The SMART App Launch authorization server over real HTTPS: the
//! authorization code flow with PKCE, password and TOTP sign-in and consent,
//! tokens that read FHIR data, and one test per rejection.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};
use time::OffsetDateTime;
use ward_auth::oauth::CodeChallenge;
use ward_auth::totp::{self, TotpSecret};

use common::{Server, WARD, header, ward};

const VERIFIER: &str = "kM2x9vQpL7rT4sW1yZ8bN3cF6hJ0dG5aE2uI9oP4lKqX";
const APP_REDIRECT: &str = "http://127.0.0.1:7001/callback";
const PASSWORD: &str = "violet-otter-harbor-42";
/// The message for every failed password sign-in.
const SIGN_IN_FAILED: &str = "The user name or password is incorrect";

/// A user created with `ward user add`.
struct User {
    name: String,
    secret: String,
    recovery: Vec<String>,
    last_step: Option<u64>,
}

impl User {
    /// Returns a TOTP code for a step not used yet, waiting for the next
    /// step when both accepted ones are spent.
    fn next_code(&mut self) -> String {
        let secret = TotpSecret::from_base32(&self.secret).expect("valid secret");
        loop {
            let now = OffsetDateTime::now_utc();
            let current = totp::step_at(now).expect("step");
            let step = self
                .last_step
                .map_or(current, |last| (last + 1).max(current));
            if step <= current + 1 {
                self.last_step = Some(step);
                let at =
                    OffsetDateTime::from_unix_timestamp(i64::try_from(step * 30).expect("time"))
                        .expect("time");
                return totp::code_at(&secret, at).expect("code");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn add_user(server: &Server, name: &str, role: &str, fhir_user: Option<&str>) -> User {
    let mut args = vec![
        "user",
        "add",
        "--username",
        name,
        "--role",
        role,
        "--password-stdin",
    ];
    if let Some(fhir_user) = fhir_user {
        args.extend(["--fhir-user", fhir_user]);
    }
    let output = ward(server, &args, Some(&format!("{PASSWORD}\n")));
    let secret = output
        .lines()
        .find_map(|l| l.strip_prefix("TOTP secret: "))
        .expect("the secret is printed")
        .to_owned();
    assert!(output.contains("otpauth://totp/Ward:"), "{output}");
    let recovery: Vec<String> = output
        .lines()
        .filter_map(|l| l.strip_prefix("  "))
        .map(str::to_owned)
        .collect();
    assert_eq!(recovery.len(), 10, "{output}");
    User {
        name: name.to_owned(),
        secret,
        recovery,
        last_step: None,
    }
}

fn add_public_client(server: &Server, id: &str, redirects: &[&str]) {
    let mut args = vec!["client", "add", "--id", id];
    for uri in redirects {
        args.extend(["--redirect-uri", uri]);
    }
    ward(server, &args, None);
}

/// A browser: an HTTPS client that does not follow redirects, with a jar.
struct Browser {
    http: reqwest::Client,
    origin: String,
    cookies: HashMap<String, String>,
}

/// A response as the browser saw it.
struct Page {
    status: StatusCode,
    location: Option<String>,
    csp: String,
    body: String,
}

impl Page {
    fn field(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self.body.find(&marker).map(|i| i + marker.len());
        let start = start.unwrap_or_else(|| panic!("no field {name} in {}", self.body));
        let end = self.body[start..].find('"').expect("closing quote");
        self.body[start..start + end].to_owned()
    }

    /// The query parameters of the redirect.
    fn redirect_params(&self) -> HashMap<String, String> {
        let location = self
            .location
            .as_deref()
            .unwrap_or_else(|| panic!("expected a redirect, got {}: {}", self.status, self.body));
        Url::parse(location)
            .expect("absolute Location")
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }
}

impl Browser {
    fn new(server: &Server) -> Browser {
        Browser {
            http: no_redirect_client(server),
            origin: server.origin().to_owned(),
            cookies: HashMap::new(),
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let jar: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let request = if jar.is_empty() {
            request
        } else {
            request.header(COOKIE, jar.join("; "))
        };
        let response = request.send().await.expect("send");
        for value in response.headers().get_all(SET_COOKIE) {
            let text = value.to_str().expect("ASCII cookie");
            assert!(
                text.contains("Secure") && text.contains("HttpOnly"),
                "{text}"
            );
            let pair = text.split(';').next().expect("cookie pair");
            let (name, value) = pair.split_once('=').expect("name=value");
            assert!(name.starts_with("__Host-"), "{name}");
            if text.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        Page {
            status: response.status(),
            location: response
                .headers()
                .get(LOCATION)
                .map(|v| v.to_str().expect("ASCII").to_owned()),
            csp: header(response.headers(), "content-security-policy").to_owned(),
            body: response.text().await.expect("body"),
        }
    }

    async fn authorize(&mut self, params: &[(&str, &str)]) -> Page {
        let url = format!("{}/oauth/authorize", self.origin);
        let request = self.http.get(url).query(params);
        self.send(request).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let request = self.http.post(format!("{}{path}", self.origin)).form(form);
        self.send(request).await
    }

    async fn login(&mut self, page: &Page, user: &str, password: &str) -> Page {
        let csrf = page.field("csrf");
        self.post(
            "/oauth/login",
            &[("csrf", &csrf), ("username", user), ("password", password)],
        )
        .await
    }

    async fn mfa(&mut self, page: &Page, code: &str) -> Page {
        let csrf = page.field("csrf");
        self.post("/oauth/mfa", &[("csrf", &csrf), ("code", code)])
            .await
    }

    async fn approve(&mut self, page: &Page, patient: Option<&str>) -> Page {
        let csrf = page.field("csrf");
        let mut form = vec![("csrf", csrf.as_str()), ("decision", "approve")];
        if let Some(patient) = patient {
            form.push(("patient", patient));
        }
        self.post("/oauth/consent", &form).await
    }
}

fn no_redirect_client(server: &Server) -> reqwest::Client {
    let pem = std::fs::read(server.data_dir().join("ca.pem")).expect("ca.pem");
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA"))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

fn challenge(verifier: &str) -> String {
    CodeChallenge::from_verifier(verifier)
        .expect("valid verifier")
        .as_str()
        .to_owned()
}

/// The parameters of a valid authorization request.
fn request_params(server: &Server, client_id: &str, scope: &str) -> Vec<(String, String)> {
    [
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", APP_REDIRECT),
        ("scope", scope),
        ("state", "st-123"),
        ("nonce", "n-456"),
        ("code_challenge", &challenge(VERIFIER)),
        ("code_challenge_method", "S256"),
        ("aud", &server.base()),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

fn borrowed(params: &[(String, String)]) -> Vec<(&str, &str)> {
    params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn with(params: &[(String, String)], name: &str, value: Option<&str>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        params.iter().filter(|(k, _)| k != name).cloned().collect();
    if let Some(value) = value {
        out.push((name.to_owned(), value.to_owned()));
    }
    out
}

/// Signs in through every page and returns the authorization code.
async fn sign_in_for_code(
    browser: &mut Browser,
    params: &[(String, String)],
    user: &mut User,
    patient: Option<&str>,
) -> String {
    let page = browser.authorize(&borrowed(params)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let page = if page.body.contains("action=\"/oauth/login\"") {
        let page = browser.login(&page, &user.name, PASSWORD).await;
        assert!(page.body.contains("action=\"/oauth/mfa\""), "{}", page.body);
        let code = user.next_code();
        browser.mfa(&page, &code).await
    } else {
        page
    };
    assert!(
        page.body.contains("action=\"/oauth/consent\""),
        "{}",
        page.body
    );
    let done = browser.approve(&page, patient).await;
    assert_eq!(done.status, StatusCode::FOUND, "{}", done.body);
    assert!(!browser.cookies.contains_key("__Host-ward-authz"));
    let query = done.redirect_params();
    assert_eq!(query.get("state").map(String::as_str), Some("st-123"));
    query.get("code").expect("a code").clone()
}

async fn token_request(server: &Server, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = server
        .client()
        .post(format!("{}/oauth/token", server.origin()))
        .form(form)
        .send()
        .await
        .expect("token request");
    let status = response.status();
    assert_eq!(header(response.headers(), "cache-control"), "no-store");
    (status, response.json().await.expect("JSON body"))
}

async fn exchange(
    server: &Server,
    client_id: &str,
    code: &str,
    verifier: &str,
) -> (StatusCode, Value) {
    token_request(
        server,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", APP_REDIRECT),
            ("client_id", client_id),
            ("code_verifier", verifier),
        ],
    )
    .await
}

async fn refresh(
    server: &Server,
    client_id: &str,
    token: &str,
    scope: Option<&str>,
) -> (StatusCode, Value) {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", token),
        ("client_id", client_id),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    token_request(server, &form).await
}

fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

async fn create_patient(server: &Server) -> String {
    let admin = server.token("system/*.cruds");
    let (status, _, body) = server
        .post_json(
            "Patient",
            &admin,
            &json!({"resourceType": "Patient", "name": [{"family": "Okafor"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().expect("id").to_owned()
}

/// Everything a flow test needs: a server, a public client and a user.
async fn setup(role: &str, patient_user: bool) -> (Server, User, String) {
    let server = Server::start();
    let patient = create_patient(&server).await;
    add_public_client(&server, "growth-chart", &[APP_REDIRECT]);
    let fhir_user = if patient_user {
        format!("Patient/{patient}")
    } else {
        "Practitioner/pr-1".to_owned()
    };
    let user = add_user(&server, "dana", role, Some(&fhir_user));
    (server, user, patient)
}

const PATIENT_SCOPE: &str = "openid fhirUser launch/patient patient/Patient.rs offline_access";

#[tokio::test]
async fn public_client_flow_reads_patient() {
    let (server, mut user, patient) = setup("patient", true).await;

    let (_, _, config) = server
        .get(
            &format!("{}/.well-known/smart-configuration", server.origin()),
            "",
        )
        .await;
    assert_eq!(config["code_challenge_methods_supported"], json!(["S256"]));
    let (_, _, jwks) = server
        .get(&format!("{}/oauth/jwks", server.origin()), "")
        .await;
    assert!(jwks["keys"][0]["kid"].is_string(), "{jwks}");
    let (_, _, metadata) = server.get("/fhir/metadata", "").await;
    let security = &metadata["rest"][0]["security"];
    assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    let uris = security["extension"][0]["extension"].to_string();
    for name in ["authorize", "token", "revoke", "introspect"] {
        assert!(uris.contains(&format!("\"{name}\"")), "{uris}");
    }

    let mut browser = Browser::new(&server);
    let params = request_params(&server, "growth-chart", PATIENT_SCOPE);
    let login = browser.authorize(&borrowed(&params)).await;
    assert!(login.csp.contains("default-src 'none'"), "{}", login.csp);
    assert!(
        login.csp.contains("frame-ancestors 'none'"),
        "{}",
        login.csp
    );
    let code = sign_in_for_code(&mut browser, &params, &mut user, None).await;

    let (status, body) = exchange(&server, "growth-chart", &code, VERIFIER).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["patient"], json!(patient));
    assert!(body["refresh_token"].is_string(), "{body}");
    let expires_in = body["expires_in"].as_i64().expect("expires_in");
    assert!((300..=900).contains(&expires_in), "{expires_in}");
    let id_token_text = body["id_token"].as_str().expect("id_token");
    let (signed, signature) = id_token_text.rsplit_once('.').expect("JWS");
    let signature = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
    let key = &jwks["keys"][0];
    let (x, y) = (key["x"].as_str().expect("x"), key["y"].as_str().expect("y"));
    assert!(ward_crypto::verify_es256(
        x,
        y,
        signed.as_bytes(),
        &signature
    ));
    let id_token = jwt_claims(id_token_text);
    assert_eq!(id_token["aud"], "growth-chart");
    assert_eq!(id_token["nonce"], "n-456");
    assert_eq!(id_token["iss"], json!(server.origin()));
    assert_eq!(
        id_token["fhirUser"],
        json!(format!("{}/Patient/{patient}", server.base()))
    );

    let access = body["access_token"].as_str().expect("access token");
    let (status, _, read) = server.get(&format!("Patient/{patient}"), access).await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read["name"][0]["family"], "Okafor");

    // A second authorization in the same browser reuses the web session:
    // the consent page comes straight away.
    let again = browser.authorize(&borrowed(&params)).await;
    assert!(
        again.body.contains("action=\"/oauth/consent\""),
        "{}",
        again.body
    );
    assert!(
        again
            .csp
            .contains("form-action 'self' http://127.0.0.1:7001"),
        "{}",
        again.csp
    );
}

#[tokio::test]
async fn pkce_missing_or_plain_is_rejected() {
    let (server, _, _) = setup("patient", true).await;
    let mut browser = Browser::new(&server);
    let params = request_params(&server, "growth-chart", PATIENT_SCOPE);

    let missing = with(
        &with(&params, "code_challenge", None),
        "code_challenge_method",
        None,
    );
    let page = browser.authorize(&borrowed(&missing)).await;
    assert_eq!(page.status, StatusCode::FOUND);
    let query = page.redirect_params();
    assert_eq!(query["error"], "invalid_request");
    assert_eq!(query["state"], "st-123");
    assert!(!query.contains_key("code"));

    let plain = with(
        &with(&params, "code_challenge", Some(VERIFIER)),
        "code_challenge_method",
        Some("plain"),
    );
    let page = browser.authorize(&borrowed(&plain)).await;
    assert_eq!(page.redirect_params()["error"], "invalid_request");

    let no_state = with(&params, "state", None);
    let page = browser.authorize(&borrowed(&no_state)).await;
    assert_eq!(page.redirect_params()["error"], "invalid_request");
}

#[tokio::test]
async fn wrong_verifier_then_reused_code() {
    let (server, mut user, patient) = setup("patient", true).await;
    let mut browser = Browser::new(&server);
    let params = request_params(&server, "growth-chart", PATIENT_SCOPE);

    let code = sign_in_for_code(&mut browser, &params, &mut user, None).await;
    let wrong = "Zz0-other-verifier-that-is-long-enough-for-pkce-xx";
    let (status, body) = exchange(&server, "growth-chart", &code, wrong).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    // The failed attempt spent the code.
    let (status, _) = exchange(&server, "growth-chart", &code, VERIFIER).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let code = sign_in_for_code(&mut browser, &params, &mut user, None).await;
    let (status, first) = exchange(&server, "growth-chart", &code, VERIFIER).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let access = first["access_token"].as_str().expect("access token");
    let (status, _, _) = server.get(&format!("Patient/{patient}"), access).await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = exchange(&server, "growth-chart", &code, VERIFIER).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    // Reuse revoked what the code had produced.
    let (status, _, _) = server.get(&format!("Patient/{patient}"), access).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let refresh_token = first["refresh_token"].as_str().expect("refresh token");
    let (status, _) = refresh(&server, "growth-chart", refresh_token, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn refresh_rotation_reuse_and_wider_scope() {
    let (server, mut user, _) = setup("patient", true).await;
    let mut browser = Browser::new(&server);
    let params = request_params(&server, "growth-chart", PATIENT_SCOPE);
    let code = sign_in_for_code(&mut browser, &params, &mut user, None).await;
    let (_, tokens) = exchange(&server, "growth-chart", &code, VERIFIER).await;
    let first = tokens["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();

    let (status, body) = refresh(
        &server,
        "growth-chart",
        &first,
        Some("patient/Observation.rs"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_scope");

    let (status, rotated) = refresh(&server, "growth-chart", &first, None).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let second = rotated["refresh_token"]
        .as_str()
        .expect("new refresh token")
        .to_owned();
    assert_ne!(first, second);
    let narrowed = refresh(&server, "growth-chart", &second, Some("patient/Patient.r")).await;
    assert_eq!(narrowed.0, StatusCode::OK, "{}", narrowed.1);
    assert_eq!(narrowed.1["scope"], "patient/Patient.r");
    let third = narrowed.1["refresh_token"]
        .as_str()
        .expect("third")
        .to_owned();

    // The first token was rotated away: presenting it revokes the family.
    let (status, body) = refresh(&server, "growth-chart", &first, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    let (status, body) = refresh(&server, "growth-chart", &third, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let access = narrowed.1["access_token"].as_str().expect("access");
    let (status, _, _) = server.get("Patient", access).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn redirect_uri_must_match_exactly() {
    let server = Server::start();
    let registered = "https://app.example.org/cb?tenant=a";
    add_public_client(
        &server,
        "web-app",
        &[registered, "http://127.0.0.1:8765/cb"],
    );
    let mut browser = Browser::new(&server);
    let base = with(
        &request_params(&server, "web-app", "patient/Patient.rs"),
        "redirect_uri",
        Some(registered),
    );
    let good = browser.authorize(&borrowed(&base)).await;
    assert_eq!(good.status, StatusCode::OK, "{}", good.body);

    for bad in [
        "http://app.example.org/cb?tenant=a",
        "https://evil.example.org/cb?tenant=a",
        "https://app.example.org/other?tenant=a",
        "https://app.example.org/cb?tenant=b",
        "https://app.example.org:8443/cb?tenant=a",
        "http://127.0.0.1:8765/elsewhere",
    ] {
        let page = browser
            .authorize(&borrowed(&with(&base, "redirect_uri", Some(bad))))
            .await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(page.location.is_none(), "{bad} must not redirect");
    }
    let unknown = browser
        .authorize(&borrowed(&with(&base, "client_id", Some("nobody"))))
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(unknown.location.is_none());

    // A loopback redirect may use another port (RFC 8252 section 7.3).
    let loopback = with(&base, "redirect_uri", Some("http://127.0.0.1:49152/cb"));
    let page = browser.authorize(&borrowed(&loopback)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
}

#[tokio::test]
async fn aud_of_another_server_is_rejected() {
    let (server, _, _) = setup("patient", true).await;
    let mut browser = Browser::new(&server);
    let params = request_params(&server, "growth-chart", PATIENT_SCOPE);
    let other = with(&params, "aud", Some("https://fhir.example.org/fhir"));
    let page = browser.authorize(&borrowed(&other)).await;
    let query = page.redirect_params();
    assert_eq!(query["error"], "invalid_request");
    assert!(!query.contains_key("code"));
}

#[tokio::test]
async fn totp_code_works_once() {
    let (server, mut user, _) = setup("patient", true).await;
    let params = request_params(&server, "growth-chart", PATIENT_SCOPE);

    let mut first = Browser::new(&server);
    let page = first.authorize(&borrowed(&params)).await;
    let page = first.login(&page, &user.name, PASSWORD).await;
    let code = user.next_code();
    let page = first.mfa(&page, &code).await;
    assert!(
        page.body.contains("action=\"/oauth/consent\""),
        "{}",
        page.body
    );

    let mut second = Browser::new(&server);
    let page = second.authorize(&borrowed(&params)).await;
    let page = second.login(&page, &user.name, PASSWORD).await;
    let page = second.mfa(&page, &code).await;
    assert!(page.body.contains("already used"), "{}", page.body);
    assert!(!page.body.contains("action=\"/oauth/consent\""));

    // A recovery code works once.
    let recovery = user.recovery[0].clone();
    let page = second.mfa(&page, &recovery).await;
    assert!(
        page.body.contains("action=\"/oauth/consent\""),
        "{}",
        page.body
    );
    let mut third = Browser::new(&server);
    let page = third.authorize(&borrowed(&params)).await;
    let page = third.login(&page, &user.name, PASSWORD).await;
    let page = third.mfa(&page, &recovery).await;
    assert!(
        !page.body.contains("action=\"/oauth/consent\""),
        "{}",
        page.body
    );
}

#[tokio::test]
async fn wrong_password_then_lockout() {
    let (server, user, _) = setup("patient", true).await;
    let params = request_params(&server, "growth-chart", PATIENT_SCOPE);
    let mut browser = Browser::new(&server);
    let page = browser.authorize(&borrowed(&params)).await;

    let unknown = browser.login(&page, "nobody-here", PASSWORD).await;
    assert!(unknown.body.contains(SIGN_IN_FAILED), "{}", unknown.body);
    let wrong = browser.login(&page, &user.name, "not-the-password-1").await;
    assert!(wrong.body.contains(SIGN_IN_FAILED), "{}", wrong.body);
    assert_eq!(unknown.status, wrong.status);
    assert_eq!(
        unknown.body.replace(&page.field("csrf"), ""),
        wrong.body.replace(&page.field("csrf"), "")
    );

    for _ in 0..10 {
        let page = browser.login(&page, &user.name, "not-the-password-1").await;
        assert!(page.body.contains(SIGN_IN_FAILED));
    }
    // Locked: the right password fails too, with the same message.
    let locked = browser.login(&page, &user.name, PASSWORD).await;
    assert!(locked.body.contains(SIGN_IN_FAILED), "{}", locked.body);
    assert!(!locked.body.contains("action=\"/oauth/mfa\""));
}

#[tokio::test]
async fn lockout_binds_to_the_attacking_address() {
    let (server, user, _) = setup("patient", true).await;
    let params = request_params(&server, "growth-chart", PATIENT_SCOPE);

    // Failures from 127.0.0.1 lock that address out of the account.
    let mut attacker = Browser::new(&server);
    let page = attacker.authorize(&borrowed(&params)).await;
    for _ in 0..12 {
        attacker
            .login(&page, &user.name, "not-the-password-1")
            .await;
    }
    let locked = attacker.login(&page, &user.name, PASSWORD).await;
    assert!(!locked.body.contains("action=\"/oauth/mfa\""));

    // The user at another address is only delayed (the account-wide
    // back-off is at most a minute), never locked out.
    let pem = std::fs::read(server.data_dir().join("ca.pem")).expect("ca.pem");
    let mut user_browser = Browser::new(&server);
    user_browser.http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA"))
        .redirect(reqwest::redirect::Policy::none())
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let deadline = std::time::Instant::now() + Duration::from_secs(100);
    loop {
        let page = user_browser.authorize(&borrowed(&params)).await;
        let next = user_browser.login(&page, &user.name, PASSWORD).await;
        if next.body.contains("action=\"/oauth/mfa\"") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the user stayed locked out: {}",
            next.body
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn disabled_user_is_locked_out() {
    let (server, mut user, patient) = setup("patient", true).await;
    let mut browser = Browser::new(&server);
    let params = request_params(&server, "growth-chart", PATIENT_SCOPE);
    let code = sign_in_for_code(&mut browser, &params, &mut user, None).await;
    let (_, tokens) = exchange(&server, "growth-chart", &code, VERIFIER).await;
    let access = tokens["access_token"].as_str().expect("access");
    let (status, _, _) = server.get(&format!("Patient/{patient}"), access).await;
    assert_eq!(status, StatusCode::OK);

    let output = ward(&server, &["user", "disable", "dana"], None);
    assert!(
        output.contains("revoked 1 refresh token family"),
        "{output}"
    );
    let (status, _, _) = server.get(&format!("Patient/{patient}"), access).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let refresh_token = tokens["refresh_token"].as_str().expect("refresh");
    let (status, _) = refresh(&server, "growth-chart", refresh_token, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The session ended, so the browser must sign in, and that fails.
    let page = browser.authorize(&borrowed(&params)).await;
    let page = browser.login(&page, &user.name, PASSWORD).await;
    assert!(page.body.contains(SIGN_IN_FAILED), "{}", page.body);
    let listing = ward(&server, &["user", "list"], None);
    assert!(listing.contains("disabled"), "{listing}");
    assert!(!listing.contains(&user.secret));
}

#[tokio::test]
async fn practitioner_picks_patient_and_gets_context() {
    let (server, mut user, patient) = setup("physician", false).await;
    let mut browser = Browser::new(&server);
    let params = request_params(&server, "growth-chart", PATIENT_SCOPE);
    let page = browser.authorize(&borrowed(&params)).await;
    let page = browser.login(&page, &user.name, PASSWORD).await;
    let code = user.next_code();
    let consent = browser.mfa(&page, &code).await;
    assert!(
        consent.body.contains("name=\"patient\""),
        "{}",
        consent.body
    );
    let missing = browser.approve(&consent, None).await;
    assert!(
        missing.body.contains("valid patient id"),
        "{}",
        missing.body
    );
    let done = browser.approve(&consent, Some(&patient)).await;
    let code = done.redirect_params()["code"].clone();
    let (status, tokens) = exchange(&server, "growth-chart", &code, VERIFIER).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["patient"], json!(patient));
    let claims = jwt_claims(tokens["access_token"].as_str().expect("access"));
    assert_eq!(claims["role"], "physician");
    assert_eq!(claims["fhirUser"], "Practitioner/pr-1");

    // Denying sends the user back with access_denied.
    let page = browser.authorize(&borrowed(&params)).await;
    let csrf = page.field("csrf");
    let denied = browser
        .post("/oauth/consent", &[("csrf", &csrf), ("decision", "deny")])
        .await;
    assert_eq!(denied.redirect_params()["error"], "access_denied");
}

#[tokio::test]
async fn token_for_another_audience_is_401() {
    let server = Server::start();
    let data = server.data_dir().to_str().expect("UTF-8").to_owned();
    let output = Command::new(WARD)
        .args(["token", "--data", &data, "--scope", "system/*.rs"])
        .env("WARD_BASE_URL", "https://other.example.org/fhir")
        .output()
        .expect("ward token");
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned();
    assert_eq!(jwt_claims(&token)["aud"], "https://other.example.org/fhir");
    let (status, headers, _) = server.get("Patient", &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(header(&headers, "www-authenticate").contains("invalid_token"));
}

/// Signs a client assertion for `client_id` at `audience`.
fn client_assertion(
    key: &ward_crypto::SigningKey,
    client_id: &str,
    audience: &str,
    jti: &str,
) -> String {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": key.kid()});
    let claims = json!({"iss": client_id, "sub": client_id, "aud": audience, "exp": now + 240, "iat": now, "jti": jti});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign(input.as_bytes()).expect("sign");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[tokio::test]
async fn backend_service_assertion_jti_is_single_use() {
    let server = Server::start();
    let key = ward_crypto::SigningKey::generate().expect("key");
    let jwks_path = server.data_dir().join("backend-jwks.json");
    std::fs::write(&jwks_path, json!({"keys": [key.public_jwk()]}).to_string())
        .expect("write JWKS");
    let jwks = jwks_path.to_str().expect("UTF-8");
    ward(
        &server,
        &["client", "add", "--id", "nightly-export", "--jwks", jwks],
        None,
    );

    let endpoint = format!("{}/oauth/token", server.origin());
    let assertion = client_assertion(&key, "nightly-export", &endpoint, "jti-1");
    let form = [
        ("grant_type", "client_credentials"),
        ("scope", "system/Patient.rs"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion.as_str()),
    ];
    let (status, body) = token_request(&server, &form).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "system/Patient.rs");
    assert!(body.get("refresh_token").is_none());
    let access = body["access_token"].as_str().expect("access");
    let (status, _, _) = server.get("Patient", access).await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = token_request(&server, &form).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");

    let wrong_aud = client_assertion(
        &key,
        "nightly-export",
        "https://other.example.org/token",
        "jti-2",
    );
    let mut other = form;
    other[3].1 = wrong_aud.as_str();
    let (status, _) = token_request(&server, &other).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn introspection_and_revocation() {
    let (server, mut user, patient) = setup("patient", true).await;
    let mut browser = Browser::new(&server);
    let params = request_params(&server, "growth-chart", PATIENT_SCOPE);
    let code = sign_in_for_code(&mut browser, &params, &mut user, None).await;
    let (_, tokens) = exchange(&server, "growth-chart", &code, VERIFIER).await;
    let access = tokens["access_token"].as_str().expect("access").to_owned();
    let refresh_token = tokens["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    let admin = server.token("admin");
    let http = server.client();
    let introspect = |token: String| {
        let http = http.clone();
        let admin = admin.clone();
        let url = format!("{}/oauth/introspect", server.origin());
        async move {
            let response = http
                .post(url)
                .bearer_auth(admin)
                .form(&[("token", token.as_str())])
                .send()
                .await
                .expect("introspect");
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Value>().await.expect("JSON")
        }
    };

    let info = introspect(access.clone()).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], "growth-chart");
    assert_eq!(info["patient"], json!(patient));
    assert_eq!(introspect(refresh_token.clone()).await["active"], true);

    // Without credentials introspection is refused.
    let anonymous = http
        .post(format!("{}/oauth/introspect", server.origin()))
        .form(&[("token", access.as_str())])
        .send()
        .await
        .expect("introspect");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let revoke = |token: String| {
        let http = http.clone();
        let url = format!("{}/oauth/revoke", server.origin());
        async move {
            let response = http
                .post(url)
                .form(&[("token", token.as_str()), ("client_id", "growth-chart")])
                .send()
                .await
                .expect("revoke");
            assert_eq!(response.status(), StatusCode::OK);
        }
    };
    revoke(access.clone()).await;
    assert_eq!(introspect(access.clone()).await["active"], false);
    let (status, _, _) = server.get(&format!("Patient/{patient}"), &access).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    revoke(refresh_token.clone()).await;
    assert_eq!(introspect(refresh_token.clone()).await["active"], false);
    let (status, _) = refresh(&server, "growth-chart", &refresh_token, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn admin_registers_clients_over_https() {
    let server = Server::start();
    let url = format!("{}/admin/clients", server.origin());
    let body = json!({
        "id": "ward-web",
        "redirect_uris": ["https://web.example.org/cb"],
        "confidential": true,
        "name": "Ward web",
    });
    let denied = server
        .client()
        .post(&url)
        .bearer_auth(server.token("system/*.rs"))
        .json(&body)
        .send()
        .await
        .expect("post");
    assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);

    let created = server
        .client()
        .post(&url)
        .bearer_auth(server.token("admin"))
        .json(&body)
        .send()
        .await
        .expect("post");
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.expect("JSON");
    assert_eq!(created["token_endpoint_auth_method"], "client_secret_basic");
    let secret = created["client_secret"].as_str().expect("secret");

    // The secret authenticates the client at the introspection endpoint.
    let response = server
        .client()
        .post(format!("{}/oauth/introspect", server.origin()))
        .basic_auth("ward-web", Some(secret))
        .form(&[("token", "not-a-token")])
        .send()
        .await
        .expect("introspect");
    assert_eq!(response.status(), StatusCode::OK);
    let wrong = server
        .client()
        .post(format!("{}/oauth/introspect", server.origin()))
        .basic_auth("ward-web", Some("wrong-secret"))
        .form(&[("token", "not-a-token")])
        .send()
        .await
        .expect("introspect");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let listing = ward(&server, &["client", "list"], None);
    assert!(
        listing.contains("ward-web") && !listing.contains(secret),
        "{listing}"
    );
}

#[tokio::test]
async fn idle_session_expires() {
    let server = Server::start_with(&["--session-idle", "2s", "--session-max", "1h"], &[]);
    create_patient(&server).await;
    add_public_client(&server, "growth-chart", &[APP_REDIRECT]);
    let mut user = add_user(&server, "erin", "nurse", Some("Practitioner/pr-2"));
    let mut browser = Browser::new(&server);
    let params = request_params(&server, "growth-chart", "openid patient/Patient.rs");
    let page = browser.authorize(&borrowed(&params)).await;
    let page = browser.login(&page, &user.name, PASSWORD).await;
    let code = user.next_code();
    let consent = browser.mfa(&page, &code).await;
    assert!(consent.body.contains("action=\"/oauth/consent\""));
    std::thread::sleep(Duration::from_secs(3));
    let late = browser.approve(&consent, None).await;
    assert_eq!(late.status, StatusCode::UNAUTHORIZED, "{}", late.body);
    let page = browser.authorize(&borrowed(&params)).await;
    assert!(
        page.body.contains("action=\"/oauth/login\""),
        "{}",
        page.body
    );
}

/// The fhirclient version the third-party client test installs.
const FHIRCLIENT_VERSION: &str = "4.4.0";

/// Creates a virtual environment with fhirclient, or returns why it could
/// not.
fn fhirclient_venv(dir: &std::path::Path) -> Result<std::path::PathBuf, String> {
    let venv = dir.join("venv");
    let created = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .map_err(|e| format!("python3 is not available: {e}"))?;
    if !created.status.success() {
        return Err(format!(
            "python3 -m venv failed: {}",
            String::from_utf8_lossy(&created.stderr)
        ));
    }
    let installed = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            &format!("fhirclient=={FHIRCLIENT_VERSION}"),
        ])
        .output()
        .map_err(|e| format!("pip did not run: {e}"))?;
    if !installed.status.success() {
        return Err(format!(
            "pip install fhirclient failed: {}",
            String::from_utf8_lossy(&installed.stderr)
        ));
    }
    Ok(venv.join("bin/python"))
}

#[tokio::test]
async fn fhirclient_python_flow_reads_patient() {
    let scratch = tempfile::tempdir().expect("temporary directory");
    let python = match fhirclient_venv(scratch.path()) {
        Ok(python) => python,
        Err(reason) if std::env::var("WARD_REQUIRE_PYTHON").as_deref() != Ok("1") => {
            eprintln!("skipping the fhirclient test: {reason}");
            return;
        }
        Err(reason) => panic!("WARD_REQUIRE_PYTHON=1 but {reason}"),
    };
    let (server, user, patient) = setup("patient", true).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/smart/fhirclient_flow.py"
    );
    let ca = server.data_dir().join("ca.pem");
    let output = tokio::task::spawn_blocking({
        let origin = server.origin().to_owned();
        move || {
            Command::new(python)
                .arg(script)
                .env("WARD_ORIGIN", origin)
                .env("WARD_CA", ca)
                .env("WARD_CLIENT_ID", "growth-chart")
                .env("WARD_REDIRECT_URI", APP_REDIRECT)
                .env("WARD_USERNAME", &user.name)
                .env("WARD_PASSWORD", PASSWORD)
                .env("WARD_TOTP_SECRET", &user.secret)
                .env("WARD_PATIENT_ID", &patient)
                .output()
                .expect("run the fhirclient script")
        }
    })
    .await
    .expect("script task");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "fhirclient flow failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("family=Okafor"), "{stdout}");
}

#[tokio::test]
async fn confidential_client_uses_basic_secret() {
    let (server, mut user, patient) = setup("patient", true).await;
    let output = ward(
        &server,
        &[
            "client",
            "add",
            "--id",
            "clinic-portal",
            "--confidential",
            "--redirect-uri",
            APP_REDIRECT,
        ],
        None,
    );
    let secret = output
        .lines()
        .find_map(|l| l.strip_prefix("Client secret: "))
        .expect("the secret is printed")
        .to_owned();
    let mut browser = Browser::new(&server);
    let params = request_params(&server, "clinic-portal", PATIENT_SCOPE);
    let code = sign_in_for_code(&mut browser, &params, &mut user, None).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", APP_REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let url = format!("{}/oauth/token", server.origin());

    let anonymous = server
        .client()
        .post(&url)
        .form(&[form.as_slice(), &[("client_id", "clinic-portal")]].concat())
        .send()
        .await
        .expect("token request");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // The rejected attempt did not spend the code: client authentication
    // comes first.
    let response = server
        .client()
        .post(&url)
        .basic_auth("clinic-portal", Some(&secret))
        .form(&form)
        .send()
        .await
        .expect("token request");
    assert_eq!(response.status(), StatusCode::OK);
    let tokens: Value = response.json().await.expect("JSON");
    assert_eq!(tokens["patient"], json!(patient));
    let claims = jwt_claims(tokens["access_token"].as_str().expect("access"));
    assert_eq!(claims["client_id"], "clinic-portal");
}
