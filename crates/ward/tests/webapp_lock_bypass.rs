//! The web app's lock and device binding hold against the authorization
//! server's sign-in cookie (`__Host-ward-session`), replayed over plain
//! HTTPS the way a person with the phone or a copied cookie would, and in
//! real headless Chromium for the enrolled browser:
//!
//! - A locked app cannot be reopened through `/app/signin`: the web app
//!   requests `prompt=login`, the authorization server then wants the
//!   password and second factor again, and the callback refuses a code
//!   from an older sign-in session even when `prompt` is stripped.
//! - A copied sign-in cookie alone starts no app session; locking on a
//!   missing device proof ends it, and so does revoking the browser device.
//! - A passkey can be added only within minutes of a full sign-in and
//!   never while the app of that sign-in is locked; the addition is
//!   audited, and the existing passkey still unlocks the app.
//!
//! The Chromium test skips without Debian's `chromium` and
//! `chromium-driver` unless `WARD_REQUIRE_CHROMIUM=1`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use fantoccini::Locator;
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use serde_json::{Value, json};
use url::Url;
use webauthn_authenticator_rs::WebauthnAuthenticator as _;
use webauthn_authenticator_rs::prelude::{RegisterPublicKeyCredential, RequestChallengeResponse};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

use common::browser::{
    Driver, Shots, browser, chromium_available, click, create, element, fill, page_text, wait_for,
};
use common::{Server, ward};

/// The public origin of the servers: passkeys need a DNS name.
const SITE: &str = "https://ward.test";
const CLINICIAN: &str = "dr.hollis";
const PASSWORD: &str = "copper-finch-meadow-58";
/// A family name unlikely to appear on any page by chance.
const FAMILY: &str = "Quenby";
const PIN: &str = "20481632";
const SIGN_IN_COOKIE: &str = "__Host-ward-session";
const APP_COOKIE: &str = "__Host-ward-app";

/// An HTTPS client without redirects and with a cookie jar, standing in
/// for a browser or for a script that replays copied cookies.
#[derive(Clone)]
struct Jar {
    http: reqwest::Client,
    origin: String,
    cookies: HashMap<String, String>,
}

/// A response as the client saw it.
struct Page {
    status: StatusCode,
    location: String,
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

    fn is_login(&self) -> bool {
        self.body.contains("action=\"/oauth/login\"")
    }

    fn is_consent(&self) -> bool {
        self.body.contains("action=\"/oauth/consent\"")
    }
}

impl Jar {
    fn new(server: &Server) -> Jar {
        let pem = std::fs::read(server.data_dir().join("ca.pem")).expect("ca.pem");
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA"))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        Jar {
            http,
            origin: server.origin().to_owned(),
            cookies: HashMap::new(),
        }
    }

    /// Returns a jar with only the named cookies of this one, as a thief
    /// would copy them.
    fn only(&self, names: &[&str]) -> Jar {
        let mut copy = self.clone();
        copy.cookies
            .retain(|name, _| names.contains(&name.as_str()));
        assert_eq!(
            copy.cookies.len(),
            names.len(),
            "cookies: {:?}",
            self.cookies.keys()
        );
        copy
    }

    /// Returns the URL on the test server of a path, or of an absolute URL
    /// at the public origin.
    fn url(&self, target: &str) -> String {
        if target.starts_with("https://") {
            let url = Url::parse(target).expect("URL");
            let query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
            format!("{}{}{query}", self.origin, url.path())
        } else {
            format!("{}{target}", self.origin)
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
            .map(|v| v.to_str().expect("ASCII").to_owned())
            .unwrap_or_default();
        let body = response.text().await.expect("body");
        Page {
            status,
            location,
            body,
        }
    }

    async fn get(&mut self, target: &str) -> Page {
        let request = self.http.get(self.url(target));
        self.send(request).await
    }

    async fn post_form(&mut self, target: &str, form: &[(&str, &str)]) -> Page {
        let request = self.http.post(self.url(target)).form(form);
        self.send(request).await
    }

    async fn post_json(&mut self, target: &str, body: &Value) -> Page {
        let request = self
            .http
            .post(self.url(target))
            .header(ORIGIN, SITE)
            .json(body);
        self.send(request).await
    }

    /// `GET /app/signin`: returns the authorization request it sends the
    /// browser to.
    async fn start_app_sign_in(&mut self, path: &str) -> String {
        let start = self.get(path).await;
        assert_eq!(start.status, StatusCode::SEE_OTHER, "{}", start.body);
        assert!(
            start.location.starts_with("/oauth/authorize?"),
            "{}",
            start.location
        );
        start.location
    }

    /// Approves the consent page and follows the redirect to the app's
    /// callback; returns the callback's response.
    async fn approve(&mut self, consent: &Page) -> Page {
        assert!(consent.is_consent(), "{}", consent.body);
        let csrf = consent.field("csrf");
        let approved = self
            .post_form(
                "/oauth/consent",
                &[("csrf", &csrf), ("decision", "approve")],
            )
            .await;
        assert_eq!(approved.status, StatusCode::FOUND, "{}", approved.body);
        assert!(
            approved.location.contains("/app/callback?code="),
            "{}",
            approved.location
        );
        let location = approved.location.clone();
        self.get(&location).await
    }

    /// Signs in to the web app from `path` (`/app/signin` or a variant)
    /// with the password and a recovery code, and returns the page the
    /// callback sends the browser to.
    async fn sign_in(&mut self, path: &str, code: &str) -> String {
        let authorize = self.start_app_sign_in(path).await;
        let login = self.get(&authorize).await;
        assert!(login.is_login(), "{}", login.body);
        let csrf = login.field("csrf");
        let mfa = self
            .post_form(
                "/oauth/login",
                &[
                    ("csrf", &csrf),
                    ("username", CLINICIAN),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert!(mfa.body.contains("action=\"/oauth/mfa\""), "{}", mfa.body);
        let consent = self
            .post_form("/oauth/mfa", &[("csrf", &csrf), ("code", code)])
            .await;
        let callback = self.approve(&consent).await;
        assert_eq!(callback.status, StatusCode::SEE_OTHER, "{}", callback.body);
        callback.location
    }

    /// The CSRF token of the signed-in app, from the patient list.
    async fn app_csrf(&mut self) -> String {
        let home = self.get("/app").await;
        assert_eq!(home.status, StatusCode::OK, "{}", home.body);
        home.field("csrf")
    }
}

/// Removes `prompt` and `max_age` from an authorization request, as a
/// script replaying a stolen cookie would.
fn strip_prompt(authorize: &str) -> String {
    let url = Url::parse(&format!("{SITE}{authorize}")).expect("authorize URL");
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(name, _)| name != "prompt" && name != "max_age")
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    assert!(kept.len() + 2 == url.query_pairs().count(), "{authorize}");
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(kept)
        .finish();
    format!("/oauth/authorize?{query}")
}

/// Adds the practitioner, a patient on their care team and the clinician
/// user; returns the clinician's recovery codes (each signs in once, with
/// no wait for the next TOTP step).
async fn seed(server: &Server) -> Vec<String> {
    let admin = server.token("system/*.cruds");
    let practitioner =
        json!({"resourceType": "Practitioner", "id": "dr", "name": [{"family": "Hollis"}]});
    let (status, _, body) = server
        .put_json("/Practitioner/dr", &admin, &practitioner)
        .await;
    assert!(status.is_success(), "{body}");
    let patient = create(
        server,
        &admin,
        json!({"resourceType": "Patient", "name": [{"family": FAMILY, "given": ["Ina"]}],
               "birthDate": "1958-09-02"}),
    )
    .await;
    create(
        server,
        &admin,
        json!({"resourceType": "CareTeam", "status": "active",
               "subject": {"reference": format!("Patient/{patient}")},
               "participant": [{"member": {"reference": "Practitioner/dr"}}]}),
    )
    .await;
    let output = ward(
        server,
        &[
            "user",
            "add",
            "--username",
            CLINICIAN,
            "--role",
            "physician",
            "--fhir-user",
            "Practitioner/dr",
            "--password-stdin",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    let codes: Vec<String> = output
        .lines()
        .skip_while(|line| !line.starts_with("Recovery codes"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .map(|line| line.trim().to_owned())
        .collect();
    assert!(codes.len() >= 6, "{output}");
    codes
}

/// Signs in over HTTP and checks that the patient list shows the patient.
async fn signed_in(server: &Server, code: &str) -> Jar {
    let mut jar = Jar::new(server);
    let home = jar.sign_in("/app/signin", code).await;
    assert_eq!(home, "/app");
    let page = jar.get("/app").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains(FAMILY), "{}", page.body);
    assert!(jar.cookies.contains_key(SIGN_IN_COOKIE));
    jar
}

/// Sets the user's PIN and returns the session's CSRF token.
async fn set_pin(jar: &mut Jar) -> String {
    let csrf = jar.app_csrf().await;
    let saved = jar
        .post_form(
            "/app/pin",
            &[("csrf", &csrf), ("pin", PIN), ("confirm", PIN)],
        )
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    csrf
}

/// Sets the user's PIN and locks the app as its page script does.
async fn set_pin_and_lock(jar: &mut Jar) {
    let csrf = set_pin(jar).await;
    lock(jar, &csrf).await;
}

/// Locks the app as its page script does.
async fn lock(jar: &mut Jar, csrf: &str) {
    let locked = jar.post_form("/app/lock", &[("csrf", csrf)]).await;
    assert_eq!(locked.status, StatusCode::NO_CONTENT, "{}", locked.body);
    let page = jar.get("/app").await;
    assert_eq!(page.status, StatusCode::LOCKED, "{}", page.body);
    assert!(!page.body.contains(FAMILY), "{}", page.body);
}

/// Shows that nothing the jar holds opens the patient list.
async fn assert_no_phi(jar: &mut Jar) {
    let page = jar.get("/app").await;
    assert_ne!(page.status, StatusCode::OK, "{}", page.body);
    assert!(!page.body.contains(FAMILY), "{}", page.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_app_needs_password_again() {
    let server = Server::start_with(&["--base-url", SITE], &[]);
    let codes = seed(&server).await;
    let mut phone = signed_in(&server, &codes[0]).await;
    set_pin_and_lock(&mut phone).await;

    // The replay: the locked phone opens /app/signin, then approves.
    let authorize = phone.start_app_sign_in("/app/signin").await;
    assert!(authorize.contains("prompt=login"), "{authorize}");
    assert!(authorize.contains("max_age=0"), "{authorize}");
    let page = phone.get(&authorize).await;
    assert!(page.is_login(), "no password asked: {}", page.body);
    assert!(!page.is_consent(), "{}", page.body);
    let csrf = page.field("csrf");
    let approved = phone
        .post_form(
            "/oauth/consent",
            &[("csrf", &csrf), ("decision", "approve")],
        )
        .await;
    assert!(
        !approved.location.contains("code="),
        "{}",
        approved.location
    );
    assert_no_phi(&mut phone).await;

    // Stripping prompt=login does not help either: the lock ended the
    // sign-in session, so the server asks for the password.
    let authorize = phone.start_app_sign_in("/app/signin").await;
    let page = phone.get(&strip_prompt(&authorize)).await;
    assert!(page.is_login(), "{}", page.body);

    // The password and a second factor open a new, unlocked session.
    let home = phone.sign_in("/app/signin", &codes[1]).await;
    assert_eq!(home, "/app");
    let page = phone.get("/app").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains(FAMILY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copied_sign_in_cookie_starts_no_session() {
    let server = Server::start_with(&["--base-url", SITE], &[]);
    let codes = seed(&server).await;
    let phone = signed_in(&server, &codes[0]).await;

    // The thief holds only the sign-in cookie of a live, unlocked phone.
    let mut thief = phone.only(&[SIGN_IN_COOKIE]);
    let authorize = thief.start_app_sign_in("/app/signin").await;
    let page = thief.get(&authorize).await;
    assert!(page.is_login(), "{}", page.body);

    // Without prompt=login the authorization server reuses the sign-in
    // session (single sign-on for other applications), but the web app's
    // callback refuses a code from a sign-in older than its request.
    let consent = thief.get(&strip_prompt(&authorize)).await;
    let callback = thief.approve(&consent).await;
    assert_eq!(
        callback.status,
        StatusCode::BAD_REQUEST,
        "{}",
        callback.body
    );
    assert!(
        callback.body.contains("Sign-in did not finish"),
        "{}",
        callback.body
    );
    assert_no_phi(&mut thief).await;
    let log = server.stderr_log();
    assert!(
        log.contains("without a fresh password and second factor was refused"),
        "{log}"
    );

    // max_age=0 alone forces a new sign-in too; prompt=none without a
    // session is answered with login_required.
    let stripped = strip_prompt(&authorize);
    let page = thief.get(&format!("{stripped}&max_age=0")).await;
    assert!(page.is_login(), "{}", page.body);
    let mut stranger = Jar::new(&server);
    let page = stranger.get(&format!("{stripped}&prompt=none")).await;
    assert_eq!(page.status, StatusCode::FOUND, "{}", page.body);
    assert!(
        page.location.contains("error=login_required"),
        "{}",
        page.location
    );

    // A new sign-in on the phone replaces its sign-in session, so the
    // copied cookie is worth nothing from then on.
    let mut phone = phone;
    phone.sign_in("/app/signin", &codes[1]).await;
    let page = thief.get(&stripped).await;
    assert!(page.is_login(), "{}", page.body);
}

/// Registers a software passkey for the signed-in jar; returns the
/// registration start response when it is refused.
async fn add_passkey(jar: &mut Jar, key: &mut SoftPasskey) -> Result<(), Page> {
    let start = jar
        .post_json("/oauth/passkey/register/start", &json!({}))
        .await;
    if start.status != StatusCode::OK {
        return Err(start);
    }
    let options = serde_json::from_str(&start.body).expect("creation options");
    let credential: RegisterPublicKeyCredential = key
        .do_registration(Url::parse(SITE).expect("site"), options)
        .expect("registration");
    let body = serde_json::to_value(&credential).expect("JSON");
    let finish = jar.post_json("/oauth/passkey/register/finish", &body).await;
    assert_eq!(finish.status, StatusCode::OK, "{}", finish.body);
    Ok(())
}

/// Returns the passkey count that `ward user list` prints for the clinician.
fn listed_passkeys(server: &Server) -> String {
    let output = ward(server, &["user", "list"], None);
    let line = output
        .lines()
        .find(|line| line.split_whitespace().next() == Some(CLINICIAN))
        .unwrap_or_else(|| panic!("{CLINICIAN} is not listed: {output}"));
    // USER NAME, ROLE, FHIR USER, STATUS, PASSKEYS, ID
    line.split_whitespace().nth(4).expect("a count").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passkey_needs_fresh_unlocked_sign_in() {
    let server = Server::start_with(&["--base-url", SITE, "--app-lock", "6s"], &[]);
    let codes = seed(&server).await;

    // Right after the sign-in, with the app in use, a passkey can be added.
    let mut phone = signed_in(&server, &codes[0]).await;
    let csrf = set_pin(&mut phone).await;
    let page = phone.get("/oauth/passkeys").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains("id=\"passkey-register\""),
        "{}",
        page.body
    );
    let mut key = SoftPasskey::new(true);
    add_passkey(&mut phone, &mut key)
        .await
        .unwrap_or_else(|page| panic!("{}: {}", page.status, page.body));
    assert_eq!(listed_passkeys(&server), "1");
    let system = server.token("system/AuditEvent.rs");
    let (status, _, events) = server.get("/fhir/AuditEvent?_count=1000", &system).await;
    assert_eq!(status, StatusCode::OK, "{events}");
    assert!(events.to_string().contains("passkey_added"), "{events}");

    // Locked: the passkeys page and its endpoints refuse the sign-in
    // cookie, from the phone and from a copy.
    lock(&mut phone, &csrf).await;
    let mut thief = phone.only(&[SIGN_IN_COOKIE]);
    for jar in [&mut phone, &mut thief] {
        let page = jar.get("/oauth/passkeys").await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.body);
        assert!(!page.body.contains("passkey-register"), "{}", page.body);
        let mut other = SoftPasskey::new(true);
        let refused = add_passkey(jar, &mut other).await.expect_err("refused");
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    }
    assert_eq!(listed_passkeys(&server), "1");

    // The user's own passkey still unlocks the locked app.
    let options = phone
        .post_form("/app/unlock/passkey/start", &[("csrf", &csrf)])
        .await;
    assert_eq!(options.status, StatusCode::OK, "{}", options.body);
    let options: RequestChallengeResponse =
        serde_json::from_str(&options.body).expect("request options");
    let assertion = key
        .do_authentication(Url::parse(SITE).expect("site"), options)
        .expect("assertion");
    let assertion = serde_json::to_string(&assertion).expect("JSON");
    let unlocked = phone
        .post_form(
            "/app/unlock/passkey/finish",
            &[("csrf", &csrf), ("credential", &assertion)],
        )
        .await;
    assert_eq!(unlocked.status, StatusCode::OK, "{}", unlocked.body);
    let page = phone.get("/app").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);

    // An app left idle past its lock time refuses too, before any request
    // has locked it on the server.
    let mut idle = signed_in(&server, &codes[1]).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let page = idle.only(&[SIGN_IN_COOKIE]).get("/oauth/passkeys").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.body);
    assert!(page.body.contains("fresh sign-in"), "{}", page.body);
    assert!(
        page.body.contains("/app/signin?next=passkeys"),
        "{}",
        page.body
    );

    // The way back: a full sign-in that ends on the passkeys page.
    let next = idle.sign_in("/app/signin?next=passkeys", &codes[2]).await;
    assert_eq!(next, "/oauth/passkeys");
    let page = idle.get(&next).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("1 registered passkey"), "{}", page.body);
}

/// Waits until the browser's page matches `script`.
async fn wait_page(browser: &fantoccini::Client, script: &str, what: &str) {
    wait_for(browser, script, what, 20).await;
}

/// Returns the value of a cookie the browser holds.
async fn browser_cookie(browser: &fantoccini::Client, name: &str) -> String {
    browser
        .get_named_cookie(name)
        .await
        .unwrap_or_else(|_| panic!("the browser holds {name}"))
        .value()
        .to_owned()
}

/// Signs in in Chromium with the password and a recovery code.
async fn browser_sign_in(browser: &fantoccini::Client, origin: &str, code: &str) {
    browser
        .goto(&format!("{origin}/app/signin"))
        .await
        .expect("open the sign-in");
    fill(browser, "username", CLINICIAN).await;
    fill(browser, "password", PASSWORD).await;
    click(browser, "form[action='/oauth/login'] button[type=submit]").await;
    fill(browser, "code", code).await;
    click(browser, "form[action='/oauth/mfa'] button[type=submit]").await;
    click(browser, "button[name=decision][value=approve]").await;
    let url = browser.current_url().await.expect("url");
    assert_eq!(url.path(), "/app", "{}", page_text(browser).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_browser_device_ends_its_sessions() {
    if !chromium_available() {
        return;
    }
    let server = Server::start();
    let codes = seed(&server).await;
    let origin = server.origin().to_owned();
    let driver = Driver::start();
    let browser = browser(&driver).await;
    let shots = Shots::new();
    browser_sign_in(&browser, &origin, &codes[0]).await;

    // Enroll the browser with a one-time device code.
    let printed = ward(
        &server,
        &["device", "enroll-code", "--user", CLINICIAN, "--ttl", "900"],
        None,
    );
    let code = printed
        .lines()
        .find_map(|line| line.strip_prefix("Enrollment code: "))
        .expect("ward device enroll-code prints the code")
        .trim()
        .to_owned();
    // The service worker, which adds the device proofs, must control the
    // page: wait for it to be ready, then load the page again under it.
    browser
        .execute_async(
            "const done = arguments[arguments.length - 1]; \
             navigator.serviceWorker.ready.then(() => done(true));",
            vec![],
        )
        .await
        .expect("wait for the service worker");
    browser
        .goto(&format!("{origin}/app/security"))
        .await
        .expect("open the security page");
    wait_page(
        &browser,
        "return !!navigator.serviceWorker.controller;",
        "the service worker to control the page",
    )
    .await;
    fill(&browser, "enroll-code", &code).await;
    element(&browser, Locator::Css("#enroll-form button[type=submit]"))
        .await
        .click()
        .await
        .expect("enroll");
    wait_page(
        &browser,
        "const s = document.getElementById('device-state'); \
         return !!s && s.textContent.includes('This browser is enrolled as device');",
        "the enrollment",
    )
    .await;
    let devices = ward(&server, &["device", "list"], None);
    let device_id = devices
        .lines()
        .find(|line| line.contains("Web browser"))
        .and_then(|line| line.split_whitespace().next())
        .unwrap_or_else(|| panic!("no browser device: {devices}"))
        .to_owned();

    // A copied sign-in cookie alone: the app asks for the password, and a
    // request stripped of prompt=login is refused at the callback.
    let mut thief = Jar::new(&server);
    thief.cookies.insert(
        SIGN_IN_COOKIE.to_owned(),
        browser_cookie(&browser, SIGN_IN_COOKIE).await,
    );
    let authorize = thief.start_app_sign_in("/app/signin").await;
    assert!(thief.get(&authorize).await.is_login());
    let stripped = strip_prompt(&authorize);
    let consent = thief.get(&stripped).await;
    let callback = thief.approve(&consent).await;
    assert_eq!(
        callback.status,
        StatusCode::BAD_REQUEST,
        "{}",
        callback.body
    );
    assert_no_phi(&mut thief).await;

    // Both cookies without the device proof lock the session and end the
    // sign-in session: the copy is worth nothing afterwards.
    let mut copy = Jar::new(&server);
    for name in [APP_COOKIE, SIGN_IN_COOKIE] {
        copy.cookies
            .insert(name.to_owned(), browser_cookie(&browser, name).await);
    }
    let page = copy.get("/app").await;
    assert_eq!(page.status, StatusCode::LOCKED, "{}", page.body);
    let page = copy.only(&[SIGN_IN_COOKIE]).get(&stripped).await;
    assert!(page.is_login(), "{}", page.body);

    // Signed in again, the browser is bound at once, and its new sign-in
    // session is recorded with the device.
    browser
        .goto(&format!("{origin}/app"))
        .await
        .expect("open the app");
    click(&browser, "form[action='/app/signout'] button").await;
    browser_sign_in(&browser, &origin, &codes[1]).await;
    browser
        .goto(&format!("{origin}/app/security"))
        .await
        .expect("open the security page");
    let text = page_text(&browser).await;
    assert!(
        text.contains(&format!("This browser is enrolled as device {device_id}")),
        "{text}"
    );
    shots.take(&browser, "lock-bypass-01-bound").await;
    let mut thief = Jar::new(&server);
    thief.cookies.insert(
        SIGN_IN_COOKIE.to_owned(),
        browser_cookie(&browser, SIGN_IN_COOKIE).await,
    );
    let authorize = thief.start_app_sign_in("/app/signin").await;
    let stripped = strip_prompt(&authorize);
    assert!(
        thief.get(&stripped).await.is_consent(),
        "the sign-in session is live"
    );

    // Revoking the device signs the browser out and ends that sign-in
    // session as well.
    ward(
        &server,
        &["device", "revoke", &device_id, "--reason", "stolen"],
        None,
    );
    let page = thief.get(&stripped).await;
    assert!(page.is_login(), "{}", page.body);
    browser
        .goto(&format!("{origin}/app"))
        .await
        .expect("open the app");
    let url = browser.current_url().await.expect("url");
    assert_eq!(
        url.path(),
        "/app/signed-out",
        "{}",
        page_text(&browser).await
    );
    assert_eq!(url.query(), Some("reason=device"));
    browser.close().await.expect("close the browser");
}
