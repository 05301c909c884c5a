//! Passkeys over real HTTPS: a signed-in user registers a software passkey,
//! then signs in with password and passkey and reads a Patient with the
//! token. One test per rejected assertion: an unregistered credential,
//! another user's passkey, a replayed assertion and a wrong origin.
//!
//! WebAuthn needs a DNS name as relying party id, so these servers run with
//! `--base-url https://ward.test`. The test client still connects to
//! 127.0.0.1, and the software authenticator gets `https://ward.test` as
//! the page's origin, as a browser at that name would.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use serde_json::{Value, json};
use time::OffsetDateTime;
use url::Url;
use ward_auth::oauth::CodeChallenge;
use ward_auth::totp::{self, TotpSecret};
use webauthn_authenticator_rs::WebauthnAuthenticator as _;
use webauthn_authenticator_rs::prelude::{RegisterPublicKeyCredential, RequestChallengeResponse};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

use common::{Server, header, ward};

/// The public origin of the servers in these tests.
const SITE: &str = "https://ward.test";
const VERIFIER: &str = "Qz8pW3xR6tY1uI4oP7aS0dF5gH2jK9lZ3xC6vB1nM4qE";
const APP_REDIRECT: &str = "http://127.0.0.1:7001/callback";
const PASSWORD: &str = "violet-otter-harbor-42";
const PASSKEY_FAILED: &str = "The passkey could not be verified.";
const SCOPE: &str = "openid fhirUser launch/patient patient/Patient.rs";

/// A user created with `ward user add`, with the TOTP secret to sign in
/// before a passkey is registered.
struct User {
    name: String,
    secret: String,
    last_step: Option<u64>,
}

impl User {
    fn add(server: &Server, name: &str, patient: &str) -> User {
        let fhir_user = format!("Patient/{patient}");
        let output = ward(
            server,
            &[
                "user",
                "add",
                "--username",
                name,
                "--role",
                "patient",
                "--fhir-user",
                &fhir_user,
                "--password-stdin",
            ],
            Some(&format!("{PASSWORD}\n")),
        );
        let secret = output
            .lines()
            .find_map(|l| l.strip_prefix("TOTP secret: "))
            .expect("the secret is printed")
            .to_owned();
        User {
            name: name.to_owned(),
            secret,
            last_step: None,
        }
    }

    /// Returns a TOTP code for a step not used yet.
    fn next_code(&mut self) -> String {
        let secret = TotpSecret::from_base32(&self.secret).expect("valid secret");
        loop {
            let current = totp::step_at(OffsetDateTime::now_utc()).expect("step");
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

/// Returns the passkey count that `ward user list` prints for `name`.
fn listed_passkeys(server: &Server, name: &str) -> String {
    let output = ward(server, &["user", "list"], None);
    assert!(output.contains("PASSKEYS"), "{output}");
    let line = output
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} is not listed: {output}"));
    // USER NAME, ROLE, FHIR USER, STATUS, PASSKEYS, ID
    line.split_whitespace().nth(4).expect("a count").to_owned()
}

/// A browser: an HTTPS client without redirects, with a cookie jar, whose
/// pages live at [`SITE`].
struct Browser {
    http: reqwest::Client,
    origin: String,
    cookies: HashMap<String, String>,
}

/// A response as the browser saw it.
struct Page {
    status: StatusCode,
    location: Option<String>,
    body: String,
    json: Value,
}

impl Page {
    fn field(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self.body.find(&marker).map(|i| i + marker.len());
        let start = start.unwrap_or_else(|| panic!("no field {name} in {}", self.body));
        let end = self.body[start..].find('"').expect("closing quote");
        self.body[start..start + end].to_owned()
    }

    fn is_mfa(&self) -> bool {
        self.body.contains("action=\"/oauth/mfa\"")
    }

    fn is_consent(&self) -> bool {
        self.body.contains("action=\"/oauth/consent\"")
    }
}

impl Browser {
    fn new(server: &Server) -> Browser {
        let pem = std::fs::read(server.data_dir().join("ca.pem")).expect("ca.pem");
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA"))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        Browser {
            http,
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
            let pair = text.split(';').next().expect("cookie pair");
            let (name, value) = pair.split_once('=').expect("name=value");
            if text.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        let status = response.status();
        let location = response
            .headers()
            .get(LOCATION)
            .map(|v| v.to_str().expect("ASCII").to_owned());
        let body = response.text().await.expect("body");
        let json = serde_json::from_str(&body).unwrap_or(Value::Null);
        Page {
            status,
            location,
            body,
            json,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    async fn get(&mut self, path: &str) -> Page {
        let request = self.http.get(self.url(path));
        self.send(request).await
    }

    async fn post_form(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let request = self.http.post(self.url(path)).form(form);
        self.send(request).await
    }

    /// Sends a `fetch` POST with a JSON body from a page at `origin`.
    async fn post_json(&mut self, path: &str, origin: &str, body: &Value) -> Page {
        let request = self
            .http
            .post(self.url(path))
            .header(ORIGIN, origin)
            .json(body);
        self.send(request).await
    }

    /// Starts an authorization request and signs in with the password,
    /// returning the two-step verification page.
    async fn password_step(&mut self, user: &str) -> Page {
        let challenge = CodeChallenge::from_verifier(VERIFIER).expect("verifier");
        let aud = format!("{SITE}/fhir");
        let params = [
            ("response_type", "code"),
            ("client_id", "growth-chart"),
            ("redirect_uri", APP_REDIRECT),
            ("scope", SCOPE),
            ("state", "st-9"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("aud", aud.as_str()),
        ];
        let request = self.http.get(self.url("/oauth/authorize")).query(&params);
        let login = self.send(request).await;
        assert_eq!(login.status, StatusCode::OK, "{}", login.body);
        let csrf = login.field("csrf");
        let page = self
            .post_form(
                "/oauth/login",
                &[("csrf", &csrf), ("username", user), ("password", PASSWORD)],
            )
            .await;
        assert!(page.is_mfa(), "{}", page.body);
        page
    }

    /// Signs in with password and TOTP code, which opens a web session.
    async fn sign_in_with_code(&mut self, user: &mut User) -> Page {
        let page = self.password_step(&user.name).await;
        let csrf = page.field("csrf");
        let code = user.next_code();
        let consent = self
            .post_form("/oauth/mfa", &[("csrf", &csrf), ("code", &code)])
            .await;
        assert!(consent.is_consent(), "{}", consent.body);
        consent
    }

    /// Fetches the passkey request options at the verification step.
    async fn passkey_options(&mut self, mfa: &Page) -> Value {
        let csrf = mfa.field("csrf");
        let options = self
            .post_form("/oauth/passkey/auth/start", &[("csrf", &csrf)])
            .await;
        assert_eq!(options.status, StatusCode::OK, "{}", options.body);
        options.json
    }

    /// Posts an assertion the way `passkey.js` submits its form.
    async fn submit_assertion(&mut self, mfa: &Page, credential: &str) -> Page {
        let csrf = mfa.field("csrf");
        self.post_form(
            "/oauth/passkey/auth/finish",
            &[("csrf", &csrf), ("credential", credential)],
        )
        .await
    }
}

fn site() -> Url {
    Url::parse(SITE).expect("site URL")
}

/// Registers a new passkey in `key` for the signed-in user of `browser`
/// and returns its credential id (base64url).
async fn register(browser: &mut Browser, key: &mut SoftPasskey) -> String {
    let start = browser
        .post_json("/oauth/passkey/register/start", SITE, &json!({}))
        .await;
    assert_eq!(start.status, StatusCode::OK, "{}", start.body);
    assert_eq!(start.json["publicKey"]["rp"]["id"], "ward.test");
    let options = serde_json::from_value(start.json).expect("creation options");
    let credential: RegisterPublicKeyCredential =
        key.do_registration(site(), options).expect("registration");
    let body = serde_json::to_value(&credential).expect("JSON");
    let finish = browser
        .post_json("/oauth/passkey/register/finish", SITE, &body)
        .await;
    assert_eq!(finish.status, StatusCode::OK, "{}", finish.body);
    assert!(
        finish.json["passkeys"].as_u64().is_some(),
        "{}",
        finish.body
    );
    credential.id
}

/// Signs `key` over the request options, as `navigator.credentials.get`
/// at `origin` would, and returns the assertion JSON.
fn assert_with(key: &mut SoftPasskey, origin: &str, options: Value) -> String {
    let options: RequestChallengeResponse = serde_json::from_value(options).expect("options");
    let origin = Url::parse(origin).expect("origin");
    let credential = key.do_authentication(origin, options).expect("assertion");
    serde_json::to_string(&credential).expect("JSON")
}

/// Replaces the allowed credentials of request options with one id, so that
/// an authenticator signs with a credential the server did not offer.
fn allow_only(mut options: Value, credential_id: &str) -> Value {
    options["publicKey"]["allowCredentials"] =
        json!([{ "type": "public-key", "id": credential_id }]);
    options
}

/// Checks that a rejected assertion leaves the browser at the verification
/// step without a session, and that the server logged `reason`.
fn assert_rejected(page: &Page, browser: &Browser, server: &Server, reason: &str) {
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains(PASSKEY_FAILED), "{}", page.body);
    assert!(!page.is_consent(), "{}", page.body);
    assert!(
        !browser.cookies.contains_key("__Host-ward-session"),
        "a rejected passkey opened a session"
    );
    let log = server.stderr_log();
    let rejections: Vec<&str> = log
        .lines()
        .filter(|line| {
            line.contains("passkey assertion rejected")
                || line.contains("passkey second-factor check failed")
        })
        .collect();
    assert!(
        rejections.iter().any(|line| line.contains(reason)),
        "no rejection for {reason}: {rejections:#?}"
    );
}

/// Starts a server at [`SITE`] with a patient, a public client and the user
/// `dana`, who registers one passkey held by the returned key.
async fn setup() -> (Server, String, User, SoftPasskey, String) {
    let server = Server::start_with(&["--base-url", SITE], &[]);
    let admin = server.token("system/*.cruds");
    let (status, _, body) = server
        .post_json(
            "Patient",
            &admin,
            &json!({"resourceType": "Patient", "name": [{"family": "Okafor"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let patient = body["id"].as_str().expect("id").to_owned();
    ward(
        &server,
        &[
            "client",
            "add",
            "--id",
            "growth-chart",
            "--redirect-uri",
            APP_REDIRECT,
        ],
        None,
    );
    let mut dana = User::add(&server, "dana", &patient);
    let mut browser = Browser::new(&server);
    browser.sign_in_with_code(&mut dana).await;
    let mut key = SoftPasskey::new(true);
    let credential_id = register(&mut browser, &mut key).await;
    (server, patient, dana, key, credential_id)
}

#[tokio::test]
async fn passkey_sign_in_reads_patient() {
    let (server, patient, _dana, mut key, _) = setup().await;
    assert_eq!(listed_passkeys(&server, "dana"), "1");

    let mut browser = Browser::new(&server);
    let mfa = browser.password_step("dana").await;
    assert!(
        mfa.body.contains("id=\"passkey-button\""),
        "no passkey button: {}",
        mfa.body
    );
    assert!(mfa.body.contains("<script src=\"/oauth/passkey.js\""));
    let script = browser.get("/oauth/passkey.js").await;
    assert_eq!(script.status, StatusCode::OK);
    assert!(script.body.contains("navigator.credentials.get"));

    let options = browser.passkey_options(&mfa).await;
    assert_eq!(options["publicKey"]["rpId"], "ward.test");
    let assertion = assert_with(&mut key, SITE, options);
    let consent = browser.submit_assertion(&mfa, &assertion).await;
    assert!(consent.is_consent(), "{}", consent.body);
    assert!(browser.cookies.contains_key("__Host-ward-session"));

    let csrf = consent.field("csrf");
    let done = browser
        .post_form(
            "/oauth/consent",
            &[("csrf", &csrf), ("decision", "approve")],
        )
        .await;
    assert_eq!(done.status, StatusCode::FOUND, "{}", done.body);
    let location = Url::parse(done.location.as_deref().expect("redirect")).expect("URL");
    let query: HashMap<String, String> = location.query_pairs().into_owned().collect();
    let code = query.get("code").expect("a code");

    let response = server
        .client()
        .post(format!("{}/oauth/token", server.origin()))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", APP_REDIRECT),
            ("client_id", "growth-chart"),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(response.headers(), "cache-control"), "no-store");
    let token: Value = response.json().await.expect("JSON");
    let access = token["access_token"].as_str().expect("access token");
    let (status, _, read) = server.get(&format!("Patient/{patient}"), access).await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read["name"][0]["family"], "Okafor");
}

#[tokio::test]
async fn unregistered_credential_is_rejected() {
    let (server, _, mut dana, _, _) = setup().await;

    // A second key responds to a registration challenge, but its credential
    // is never sent to the server.
    let mut browser = Browser::new(&server);
    browser.sign_in_with_code(&mut dana).await;
    let start = browser
        .post_json("/oauth/passkey/register/start", SITE, &json!({}))
        .await;
    assert_eq!(start.status, StatusCode::OK, "{}", start.body);
    let mut stray = SoftPasskey::new(true);
    let options = serde_json::from_value(start.json).expect("creation options");
    let stray_id = stray
        .do_registration(site(), options)
        .expect("registration")
        .id;

    let mut browser = Browser::new(&server);
    let mfa = browser.password_step("dana").await;
    let options = allow_only(browser.passkey_options(&mfa).await, &stray_id);
    let assertion = assert_with(&mut stray, SITE, options);
    let page = browser.submit_assertion(&mfa, &assertion).await;
    assert_rejected(
        &page,
        &browser,
        &server,
        "credential requested could not be found",
    );
    assert_eq!(listed_passkeys(&server, "dana"), "1");
}

#[tokio::test]
async fn passkey_of_another_user_is_rejected() {
    let (server, patient, _, _, _) = setup().await;
    let mut erin = User::add(&server, "erin", &patient);
    let mut browser = Browser::new(&server);
    browser.sign_in_with_code(&mut erin).await;
    let mut erins_key = SoftPasskey::new(true);
    let erins_id = register(&mut browser, &mut erins_key).await;
    assert_eq!(listed_passkeys(&server, "erin"), "1");

    // Erin's key signs the challenge of Dana's sign-in.
    let mut browser = Browser::new(&server);
    let mfa = browser.password_step("dana").await;
    let options = allow_only(browser.passkey_options(&mfa).await, &erins_id);
    let assertion = assert_with(&mut erins_key, SITE, options);
    let page = browser.submit_assertion(&mfa, &assertion).await;
    assert_rejected(
        &page,
        &browser,
        &server,
        "credential requested could not be found",
    );
}

#[tokio::test]
async fn replayed_assertion_is_rejected() {
    let (server, _, _, mut key, _) = setup().await;
    let mut first = Browser::new(&server);
    let mfa = first.password_step("dana").await;
    let options = first.passkey_options(&mfa).await;
    let assertion = assert_with(&mut key, SITE, options);
    let consent = first.submit_assertion(&mfa, &assertion).await;
    assert!(consent.is_consent(), "{}", consent.body);

    // Another sign-in gets a fresh challenge, which the old assertion does
    // not sign.
    let mut second = Browser::new(&server);
    let mfa = second.password_step("dana").await;
    second.passkey_options(&mfa).await;
    let page = second.submit_assertion(&mfa, &assertion).await;
    assert_rejected(&page, &second, &server, "challenge differs");

    // Without a started ceremony there is no challenge to verify against.
    let mut third = Browser::new(&server);
    let mfa = third.password_step("dana").await;
    let page = third.submit_assertion(&mfa, &assertion).await;
    assert_rejected(&page, &third, &server, "no_passkey_challenge");
}

#[tokio::test]
async fn wrong_origin_is_rejected() {
    let (server, _, _, mut key, _) = setup().await;
    for origin in ["https://ward.test:8444", "https://login.ward.test"] {
        let mut browser = Browser::new(&server);
        let mfa = browser.password_step("dana").await;
        let options = browser.passkey_options(&mfa).await;
        let assertion = assert_with(&mut key, origin, options);
        let page = browser.submit_assertion(&mfa, &assertion).await;
        assert_rejected(&page, &browser, &server, "origin does not match");
    }
}

#[tokio::test]
async fn registration_needs_session_and_origin() {
    let (server, _, mut dana, _, _) = setup().await;

    let mut anonymous = Browser::new(&server);
    let page = anonymous
        .post_json("/oauth/passkey/register/start", SITE, &json!({}))
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.body);

    let mut browser = Browser::new(&server);
    browser.sign_in_with_code(&mut dana).await;
    let page = browser
        .post_json(
            "/oauth/passkey/register/start",
            "https://evil.example",
            &json!({}),
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    let page = browser.get("/oauth/passkeys").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("1 registered passkey"), "{}", page.body);
}

#[tokio::test]
async fn reset_mfa_removes_passkeys() {
    let (server, _, _, _, _) = setup().await;
    let output = ward(&server, &["user", "reset-mfa", "dana"], None);
    assert!(output.contains("removed 1 passkey(s)"), "{output}");
    // Dana registered her passkey in a signed-in session, which the reset
    // ends together with her tokens.
    let ended: usize = output
        .split("ended ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|count| count.parse().ok())
        .expect("the reset prints the sessions it ended");
    assert!(ended >= 1, "{output}");
    assert_eq!(listed_passkeys(&server, "dana"), "0");

    let mut browser = Browser::new(&server);
    let mfa = browser.password_step("dana").await;
    let csrf = mfa.field("csrf");
    let page = browser
        .post_form("/oauth/passkey/auth/start", &[("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
    assert!(
        page.json["error"]
            .as_str()
            .is_some_and(|e| e.contains("no passkey")),
        "{}",
        page.body
    );
}
