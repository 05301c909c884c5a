//! The administrator screens of the web app in real headless Chromium at a
//! 390×844 phone viewport. A security administrator signs in with TOTP and
//! revokes an enrolled device from its page. The device's certificate-bound
//! token then gets 401 from the FHIR API, the lost-device report shows the
//! device revoked and the audit viewer lists the revocation. A clinician
//! sees no admin link and gets 403 on `/app/admin`.
//!
//! Skips without Debian's `chromium` and `chromium-driver` unless
//! `WARD_REQUIRE_CHROMIUM=1`. Screenshots go to `target/webapp-screenshots/`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use fantoccini::{Client as Browser, Locator};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Client, StatusCode, Url};
use serde_json::json;
use ward_auth::oauth::CodeChallenge;

use common::browser::{
    Driver, Shots, browser, chromium_available, click, element, fill, page_text, sign_in,
};
use common::device::{Enrolled, device_client, enroll};
use common::{Server, add_user, header, totp_code};

const ADMIN: &str = "sec.admin";
const CLINICIAN: &str = "dr.osler";
const OWNER: &str = "nurse.kim";
const PASSWORD: &str = "violet-otter-harbor-42";
const VERIFIER: &str = "kM2x9vQpL7rT4sW1yZ8bN3cF6hJ0dG5aE2uI9oP4lKqX";
const MOBILE_REDIRECT: &str = "com.ward.mobile:/oauth/callback";

/// Signs `OWNER` in through the authorization pages as the built-in
/// `ward-mobile` client and trades the code for a token over mutual TLS
/// with the device certificate, so the token is bound to the device.
async fn device_token(server: &Server, device: &Enrolled, secret: &str) -> String {
    let ca = std::fs::read(server.data_dir().join("ca.pem")).expect("read ca.pem");
    let http = Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA"))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let origin = server.origin();
    let challenge = CodeChallenge::from_verifier(VERIFIER)
        .expect("verifier")
        .as_str()
        .to_owned();
    let aud = server.base();
    let params = [
        ("response_type", "code"),
        ("client_id", "ward-mobile"),
        ("redirect_uri", MOBILE_REDIRECT),
        ("scope", "openid fhirUser offline_access user/*.cruds"),
        ("state", "st-1"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("aud", aud.as_str()),
    ];
    let mut cookies: HashMap<String, String> = HashMap::new();
    let mut send = async |request: reqwest::RequestBuilder| {
        let jar: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let request = if jar.is_empty() {
            request
        } else {
            request.header(COOKIE, jar.join("; "))
        };
        let response = request.send().await.expect("send");
        for value in response.headers().get_all(SET_COOKIE) {
            let pair = value
                .to_str()
                .expect("cookie")
                .split(';')
                .next()
                .expect("pair");
            let (name, value) = pair.split_once('=').expect("name=value");
            cookies.insert(name.to_owned(), value.to_owned());
        }
        let location = response
            .headers()
            .get(LOCATION)
            .map(|v| v.to_str().expect("ASCII").to_owned());
        (location, response.text().await.expect("body"))
    };
    let field = |body: &str, name: &str| -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = body
            .find(&marker)
            .unwrap_or_else(|| panic!("no {name} field in {body}"))
            + marker.len();
        let end = body[start..].find('"').expect("closing quote");
        body[start..start + end].to_owned()
    };
    let (_, login) = send(http.get(format!("{origin}/oauth/authorize")).query(&params)).await;
    let csrf = field(&login, "csrf");
    let (_, mfa) = send(http.post(format!("{origin}/oauth/login")).form(&[
        ("csrf", csrf.as_str()),
        ("username", OWNER),
        ("password", PASSWORD),
    ]))
    .await;
    let csrf = field(&mfa, "csrf");
    let code = totp_code(secret);
    let (_, consent) = send(
        http.post(format!("{origin}/oauth/mfa"))
            .form(&[("csrf", csrf.as_str()), ("code", code.as_str())]),
    )
    .await;
    let csrf = field(&consent, "csrf");
    let (location, body) = send(
        http.post(format!("{origin}/oauth/consent"))
            .form(&[("csrf", csrf.as_str()), ("decision", "approve")]),
    )
    .await;
    let location = location.unwrap_or_else(|| panic!("no redirect after consent: {body}"));
    let code = Url::parse(&location)
        .expect("absolute Location")
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("a code");
    let mtls = device_client(server, &device.certificate, &device.key);
    let response = mtls
        .post(format!("{origin}/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", MOBILE_REDIRECT),
            ("client_id", "ward-mobile"),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(response.status(), StatusCode::OK, "token request");
    let body: serde_json::Value = response.json().await.expect("token JSON");
    body["access_token"]
        .as_str()
        .expect("access token")
        .to_owned()
}

/// Reads the owner's Practitioner record with the device's bound token and
/// certificate, and returns the status.
async fn device_read(server: &Server, device: &Enrolled, token: &str) -> StatusCode {
    device_client(server, &device.certificate, &device.key)
        .get(format!("{}/fhir/Practitioner/kim", server.origin()))
        .bearer_auth(token)
        .send()
        .await
        .expect("device request")
        .status()
}

/// Signs the administrator in, which lands on `/app/admin`.
async fn admin_sign_in(browser: &Browser, server: &Server, secret: &str) {
    browser
        .goto(&format!("{}/app", server.origin()))
        .await
        .expect("open /app");
    fill(browser, "username", ADMIN).await;
    fill(browser, "password", PASSWORD).await;
    click(browser, "form[action='/oauth/login'] button[type=submit]").await;
    fill(browser, "code", &totp_code(secret)).await;
    click(browser, "form[action='/oauth/mfa'] button[type=submit]").await;
    let consent = page_text(browser).await;
    assert!(
        consent.contains("Administer users, devices and the audit log"),
        "the administrator is asked for the admin scope: {consent}"
    );
    click(browser, "button[name=decision][value=approve]").await;
    let url = browser.current_url().await.expect("url");
    assert_eq!(url.path(), "/app/admin", "{}", page_text(browser).await);
}

/// Returns the value of the browser's session cookie.
async fn session_cookie(browser: &Browser) -> String {
    browser
        .get_named_cookie("__Host-ward-app")
        .await
        .expect("session cookie")
        .value()
        .to_owned()
}

/// Fetches `path` with the browser's session cookie: status, headers, body.
async fn fetch(
    server: &Server,
    cookie: &str,
    path: &str,
) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let response = server
        .client()
        .get(format!("{}{path}", server.origin()))
        .header("cookie", format!("__Host-ward-app={cookie}"))
        .send()
        .await
        .expect("fetch page");
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_revokes_device_clinician_denied() {
    if !chromium_available() {
        return;
    }
    let server = Server::start();
    let system = server.token("system/*.cruds");
    for id in ["kim", "dr"] {
        let practitioner =
            json!({"resourceType": "Practitioner", "id": id, "name": [{"family": "Ward"}]});
        let (status, _, body) = server
            .put_json(&format!("/Practitioner/{id}"), &system, &practitioner)
            .await;
        assert!(status.is_success(), "{body}");
    }
    let admin_secret = add_user(&server, (ADMIN, "security_admin", PASSWORD), None);
    let clinician_secret = add_user(
        &server,
        (CLINICIAN, "physician", PASSWORD),
        Some("Practitioner/dr"),
    );
    let owner_secret = add_user(
        &server,
        (OWNER, "physician", PASSWORD),
        Some("Practitioner/kim"),
    );

    // The device enrolls and gets a token bound to its certificate.
    let device = enroll(&server, &server.token("admin"), OWNER).await;
    let device_token = device_token(&server, &device, &owner_secret).await;
    assert_eq!(
        device_read(&server, &device, &device_token).await,
        StatusCode::OK,
        "the enrolled device works before it is revoked"
    );

    let driver = Driver::start();
    let browser = browser(&driver).await;
    let shots = Shots::new();

    // The administrator signs in and lands on the admin screens.
    admin_sign_in(&browser, &server, &admin_secret).await;
    element(&browser, Locator::Css("header a[href='/app/admin']")).await;
    let cookie = session_cookie(&browser).await;
    for path in [
        "/app/admin",
        "/app/admin/users",
        "/app/admin/devices",
        "/app/admin/audit",
    ] {
        let (status, headers, body) = fetch(&server, &cookie, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(header(&headers, "cache-control"), "no-store", "{path}");
        let csp = header(&headers, "content-security-policy");
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert!(!body.contains("style="), "inline style on {path}");
        assert!(!body.contains("<script>"), "inline script on {path}");
    }

    // The users screen lists every account with role and status.
    click(&browser, "a[href='/app/admin/users']").await;
    let users = page_text(&browser).await;
    for expected in [
        ADMIN,
        CLINICIAN,
        OWNER,
        "security admin",
        "physician",
        "Active",
    ] {
        assert!(users.contains(expected), "{expected} missing: {users}");
    }
    assert!(users.contains("This is your account."), "{users}");
    shots.take(&browser, "admin-users").await;

    // Disabling an account goes through a confirmation page.
    click(
        &browser,
        "form[action='/app/admin/users/confirm'] button.danger",
    )
    .await;
    let confirm = page_text(&browser).await;
    assert!(confirm.contains("Disable dr.osler?"), "{confirm}");
    click(&browser, "a.button.plain").await;
    let url = browser.current_url().await.expect("url");
    assert_eq!(url.path(), "/app/admin/users", "cancel leads back");

    // Devices: the list, the device page, revoke with a reason, confirm.
    click(&browser, "a[href='/app/admin/devices']").await;
    let listing = page_text(&browser).await;
    assert!(listing.contains("Test phone"), "{listing}");
    assert!(listing.contains(OWNER), "{listing}");
    click(
        &browser,
        &format!("a[href='/app/admin/devices/{}']", device.id),
    )
    .await;
    let page = page_text(&browser).await;
    assert!(page.contains("Active"), "{page}");
    let reason = element(&browser, Locator::Css("select#reason option[value=stolen]")).await;
    reason.click().await.expect("pick a reason");
    shots.take(&browser, "admin-device").await;
    click(&browser, "form[action$='/confirm'] button.danger").await;
    let confirm = page_text(&browser).await;
    assert!(confirm.contains("Revoke this device?"), "{confirm}");
    assert!(confirm.contains("stolen"), "{confirm}");
    click(&browser, "form[action$='/apply'] button[type=submit]").await;
    let revoked = page_text(&browser).await;
    assert!(revoked.contains("Revoked"), "{revoked}");
    assert!(revoked.contains("stolen"), "{revoked}");
    assert!(
        !revoked.contains("Revoke this device"),
        "a revoked device offers no revoke button: {revoked}"
    );

    // The device's bound token and certificate no longer work.
    assert_eq!(
        device_read(&server, &device, &device_token).await,
        StatusCode::UNAUTHORIZED,
        "the revoked device gets 401"
    );

    // The lost-device report shows the device revoked and no wipe yet.
    click(&browser, "a[href$='/report']").await;
    let status = element(&browser, Locator::Id("report-status"))
        .await
        .text()
        .await
        .expect("status");
    assert_eq!(status, "revoked");
    let wipe = element(&browser, Locator::Id("report-wipe"))
        .await
        .text()
        .await
        .expect("wipe");
    assert_eq!(wipe, "no");

    // The audit viewer lists the revocation under the device events.
    click(&browser, "nav.admin-nav a[href='/app/admin/audit']").await;
    element(&browser, Locator::Css("details summary"))
        .await
        .click()
        .await
        .expect("open the filters");
    element(&browser, Locator::Css("select#type option[value='110108']"))
        .await
        .click()
        .await
        .expect("pick device events");
    click(&browser, "form.filters button[type=submit]").await;
    let audit = page_text(&browser).await;
    assert!(audit.contains("event revoked"), "{audit}");
    assert!(audit.contains("reason stolen"), "{audit}");
    assert!(audit.contains(ADMIN), "the administrator is named: {audit}");
    assert!(audit.contains("Filters: Device"), "{audit}");
    assert!(
        audit.contains(&format!("owner {OWNER}")),
        "the owner's id is shown as the name: {audit}"
    );
    browser
        .execute(
            "const item = [...document.querySelectorAll('ol.events > li')]\
               .find(li => li.textContent.includes('reason stolen'));\
             item.scrollIntoView({block: 'center'});",
            vec![],
        )
        .await
        .expect("scroll to the revocation");
    shots.take(&browser, "admin-audit").await;
    browser
        .execute("window.scrollTo(0, 0);", vec![])
        .await
        .expect("scroll to the top");

    // A bad filter gets a message on the page, not a failure.
    element(&browser, Locator::Css("details summary"))
        .await
        .click()
        .await
        .expect("open the filters");
    fill(&browser, "patient", "not a valid id").await;
    click(&browser, "form.filters button[type=submit]").await;
    let rejected = page_text(&browser).await;
    assert!(
        rejected.contains("The patient id may hold only"),
        "{rejected}"
    );

    // Disable, enable and reset the second factor of the device's owner.
    let owner_form = format!("form:has(input[name=username][value='{OWNER}'])");
    click(&browser, "nav.admin-nav a[href='/app/admin/users']").await;
    click(&browser, &format!("{owner_form} button.danger")).await;
    click(&browser, "form[action='/app/admin/users/apply'] button").await;
    let disabled = page_text(&browser).await;
    assert!(disabled.contains("Disabled"), "{disabled}");
    click(
        &browser,
        &format!("{owner_form} input[value=enable] ~ button"),
    )
    .await;
    click(&browser, "form[action='/app/admin/users/apply'] button").await;
    assert!(
        !page_text(&browser).await.contains("Disabled"),
        "the owner is enabled again"
    );
    click(
        &browser,
        &format!("{owner_form} input[value=reset-mfa] ~ button"),
    )
    .await;
    click(&browser, "form[action='/app/admin/users/apply'] button").await;
    let reset = page_text(&browser).await;
    assert!(
        reset.contains(&format!("New second factor for {OWNER}")),
        "{reset}"
    );
    let new_secret = element(&browser, Locator::Css("code.secret"))
        .await
        .text()
        .await
        .expect("secret");
    assert_ne!(new_secret, owner_secret, "the reset makes a new secret");
    click(&browser, "nav.admin-nav a[href='/app/admin/audit']").await;
    element(&browser, Locator::Css("details summary"))
        .await
        .click()
        .await
        .expect("open the filters");
    element(&browser, Locator::Css("select#type option[value='110113']"))
        .await
        .click()
        .await
        .expect("pick security events");
    click(&browser, "form.filters button[type=submit]").await;
    let changes = page_text(&browser).await;
    for event in ["user_disabled", "user_enabled", "user_mfa_reset"] {
        assert!(
            changes.contains(&format!("event {event}")),
            "{event}: {changes}"
        );
    }

    // The accounting of disclosures takes the patient id in a POSTed form.
    click(&browser, "nav.admin-nav a[href='/app/admin/disclosures']").await;
    fill(&browser, "patient", "no-such-patient").await;
    click(
        &browser,
        "form[action='/app/admin/disclosures'] button[type=submit]",
    )
    .await;
    let url = browser.current_url().await.expect("url");
    assert_eq!(url.path(), "/app/admin/disclosures");
    assert_eq!(url.query(), None, "no patient id in the URL");
    let accounting = page_text(&browser).await;
    assert!(
        accounting.contains("The audit log names no access to this patient"),
        "{accounting}"
    );

    // Sign out; a clinician signs in and is kept out of the admin screens.
    click(&browser, "form[action='/app/signout'] button").await;
    sign_in(
        &browser,
        &server,
        (CLINICIAN, PASSWORD, &clinician_secret),
        &shots,
    )
    .await;
    let links = browser
        .find_all(Locator::Css("a[href^='/app/admin']"))
        .await
        .expect("find links");
    assert!(links.is_empty(), "a clinician sees no admin link");
    let cookie = session_cookie(&browser).await;
    for path in [
        "/app/admin",
        "/app/admin/users",
        "/app/admin/devices",
        &format!("/app/admin/devices/{}", device.id),
        "/app/admin/audit",
        "/app/admin/alerts",
    ] {
        let (status, _, body) = fetch(&server, &cookie, path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert!(!body.contains(OWNER), "{path} leaks admin data");
    }
    let forged = server
        .client()
        .post(format!(
            "{}/app/admin/devices/{}/apply",
            server.origin(),
            device.id
        ))
        .header("cookie", format!("__Host-ward-app={cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("action=wipe&csrf=x")
        .send()
        .await
        .expect("post");
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    browser
        .goto(&format!("{}/app/admin", server.origin()))
        .await
        .expect("open /app/admin");
    let denied = page_text(&browser).await;
    assert!(denied.contains("Not allowed"), "{denied}");

    browser.close().await.expect("close the browser");
}

/// An HTTPS client that does not follow redirects.
fn plain_client(server: &Server) -> Client {
    let ca = std::fs::read(server.data_dir().join("ca.pem")).expect("read ca.pem");
    Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA"))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// A page fetched or posted with the session cookie.
struct Page {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Page {
    /// The value of the first hidden field `name`.
    fn field(&self, name: &str) -> String {
        self.fields(name)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {name} field in {}", self.body))
    }

    /// The values of every field `name`, in page order.
    fn fields(&self, name: &str) -> Vec<String> {
        let marker = format!("name=\"{name}\" value=\"");
        self.body
            .match_indices(&marker)
            .map(|(at, _)| {
                let start = at + marker.len();
                let end = self.body[start..].find('"').expect("closing quote");
                self.body[start..start + end].to_owned()
            })
            .collect()
    }

    /// The audit record ids the page lists (`· #123`).
    fn event_ids(&self) -> Vec<u64> {
        self.body
            .match_indices(" · #")
            .filter_map(|(at, marker)| {
                let digits: String = self.body[at + marker.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse().ok()
            })
            .collect()
    }

    fn location(&self) -> String {
        header(&self.headers, "location").to_owned()
    }
}

async fn page(client: &Client, server: &Server, cookie: &str, path: &str) -> Page {
    let response = client
        .get(format!("{}{path}", server.origin()))
        .header("cookie", format!("__Host-ward-app={cookie}"))
        .send()
        .await
        .expect("GET page");
    Page {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.text().await.expect("body"),
    }
}

async fn submit(
    client: &Client,
    server: &Server,
    cookie: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> Page {
    let response = client
        .post(format!("{}{path}", server.origin()))
        .header("cookie", format!("__Host-ward-app={cookie}"))
        .form(fields)
        .send()
        .await
        .expect("POST form");
    Page {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.text().await.expect("body"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_changes_apply_once_and_pages_hold() {
    if !chromium_available() {
        return;
    }
    let server = Server::start();
    let system = server.token("system/*.cruds");
    let practitioner =
        json!({"resourceType": "Practitioner", "id": "kim", "name": [{"family": "Kim"}]});
    let (status, _, body) = server
        .put_json("/Practitioner/kim", &system, &practitioner)
        .await;
    assert!(status.is_success(), "{body}");
    let admin_secret = add_user(&server, (ADMIN, "security_admin", PASSWORD), None);
    let owner_secret = add_user(
        &server,
        (OWNER, "physician", PASSWORD),
        Some("Practitioner/kim"),
    );
    let device = enroll(&server, &server.token("admin"), OWNER).await;
    let device_token = device_token(&server, &device, &owner_secret).await;
    assert_eq!(
        device_read(&server, &device, &device_token).await,
        StatusCode::OK
    );
    // A second device of the owner reports no screen lock.
    let unlocked = enroll(&server, &server.token("admin"), OWNER).await;
    let (status, checked) = common::device::post(
        &device_client(&server, &unlocked.certificate, &unlocked.key),
        &format!("{}/device/checkin", server.origin()),
        None,
        &json!({"posture": common::device::posture(false)}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{checked}");

    let driver = Driver::start();
    let browser = browser(&driver).await;
    admin_sign_in(&browser, &server, &admin_secret).await;
    let cookie = session_cookie(&browser).await;
    let client = plain_client(&server);

    // The audit filters show a disclosure marker that turns when opened.
    browser
        .goto(&format!("{}/app/admin/audit", server.origin()))
        .await
        .expect("open the audit viewer");
    let marker = "const s = getComputedStyle(document.querySelector('.filters summary'), '::before');\
                  return [s.borderLeftWidth, s.borderTopWidth, document.querySelector('.filters summary').textContent];";
    let closed = browser.execute(marker, vec![]).await.expect("marker");
    assert_ne!(closed[0], "0px", "a closed marker is drawn: {closed}");
    assert!(
        closed[2].as_str().unwrap_or("").contains("Change filters"),
        "{closed}"
    );
    element(&browser, Locator::Css(".filters summary"))
        .await
        .click()
        .await
        .expect("open the filters");
    let open = browser.execute(marker, vec![]).await.expect("marker");
    assert_ne!(open, closed, "the marker turns when the filters open");

    // An administrator opening /app lands on the admin start page.
    let home = page(&client, &server, &cookie, "/app").await;
    assert_eq!(home.status, StatusCode::SEE_OTHER, "{}", home.body);
    assert_eq!(home.location(), "/app/admin");

    // Unknown paths and wrong methods under /app get the app's HTML pages.
    for (path, status, text) in [
        (
            "/app/admin/nonexist",
            StatusCode::NOT_FOUND,
            "Page not found",
        ),
        ("/app/admin//users", StatusCode::NOT_FOUND, "Page not found"),
        ("/app/nothing-here", StatusCode::NOT_FOUND, "Page not found"),
        (
            "/app/admin/users/apply",
            StatusCode::METHOD_NOT_ALLOWED,
            "cannot be opened directly",
        ),
    ] {
        let got = page(&client, &server, &cookie, path).await;
        assert_eq!(got.status, status, "{path}: {}", got.body);
        assert!(
            header(&got.headers, "content-type").starts_with("text/html"),
            "{path}"
        );
        assert!(
            header(&got.headers, "content-security-policy").contains("default-src 'none'"),
            "{path}"
        );
        assert!(got.body.contains(text), "{path}: {}", got.body);
    }
    let api = page(&client, &server, &cookie, "/fhir-nothing").await;
    assert!(
        header(&api.headers, "content-type").contains("json"),
        "outside /app errors stay FHIR JSON"
    );

    // Reset the owner's second factor: the confirmation applies once, the
    // result is a GET page shown once, and the owner's tokens stop working.
    let users = page(&client, &server, &cookie, "/app/admin/users").await;
    let csrf = users.field("csrf");
    let confirm = submit(
        &client,
        &server,
        &cookie,
        "/app/admin/users/confirm",
        &[
            ("csrf", &csrf),
            ("username", OWNER),
            ("action", "reset-mfa"),
        ],
    )
    .await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.body);
    assert!(
        confirm.body.contains("sign-in sessions end"),
        "{}",
        confirm.body
    );
    let nonce = confirm.field("nonce");
    let apply = [
        ("csrf", csrf.as_str()),
        ("username", OWNER),
        ("action", "reset-mfa"),
        ("nonce", nonce.as_str()),
    ];
    let applied = submit(&client, &server, &cookie, "/app/admin/users/apply", &apply).await;
    assert_eq!(applied.status, StatusCode::SEE_OTHER, "{}", applied.body);
    let result = applied.location();
    assert!(
        result.starts_with("/app/admin/users/new-factor?t="),
        "{result}"
    );
    let replay = submit(&client, &server, &cookie, "/app/admin/users/apply", &apply).await;
    assert_eq!(replay.status, StatusCode::CONFLICT, "{}", replay.body);
    assert!(
        replay.body.contains("Nothing was changed"),
        "{}",
        replay.body
    );
    let shown = page(&client, &server, &cookie, &result).await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.body);
    assert!(
        shown
            .body
            .contains(&format!("New second factor for {OWNER}"))
    );
    assert_eq!(header(&shown.headers, "cache-control"), "no-store");
    let again = page(&client, &server, &cookie, &result).await;
    assert_eq!(again.status, StatusCode::GONE, "{}", again.body);
    assert!(
        !again.body.contains("code class=\"secret\""),
        "{}",
        again.body
    );
    assert_eq!(
        device_read(&server, &device, &device_token).await,
        StatusCode::UNAUTHORIZED,
        "the reset ended the owner's tokens"
    );

    // Revoke a device: a replayed confirmation and a second revoke change nothing.
    let device_page = format!("/app/admin/devices/{}", device.id);
    let shown = page(&client, &server, &cookie, &device_page).await;
    assert!(shown.body.contains("Certificate until"), "{}", shown.body);
    let revoke = |reason: &'static str| {
        let (client, server_origin, cookie, csrf, path) = (
            client.clone(),
            server.origin().to_owned(),
            cookie.clone(),
            csrf.clone(),
            format!("{device_page}/confirm"),
        );
        async move {
            let response = client
                .post(format!("{server_origin}{path}"))
                .header("cookie", format!("__Host-ward-app={cookie}"))
                .form(&[
                    ("csrf", csrf.as_str()),
                    ("action", "revoke"),
                    ("reason", reason),
                ])
                .send()
                .await
                .expect("confirm");
            assert_eq!(response.status(), StatusCode::OK);
            let body = response.text().await.expect("body");
            Page {
                status: StatusCode::OK,
                headers: reqwest::header::HeaderMap::new(),
                body,
            }
            .field("nonce")
        }
    };
    let nonce = revoke("stolen").await;
    let apply_path = format!("{device_page}/apply");
    let fields = [
        ("csrf", csrf.as_str()),
        ("action", "revoke"),
        ("reason", "stolen"),
        ("nonce", nonce.as_str()),
    ];
    let first = submit(&client, &server, &cookie, &apply_path, &fields).await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.body);
    let double = submit(&client, &server, &cookie, &apply_path, &fields).await;
    assert_eq!(double.status, StatusCode::CONFLICT, "{}", double.body);
    let nonce = revoke("retired").await;
    let second = submit(
        &client,
        &server,
        &cookie,
        &apply_path,
        &[
            ("csrf", csrf.as_str()),
            ("action", "revoke"),
            ("reason", "retired"),
            ("nonce", nonce.as_str()),
        ],
    )
    .await;
    assert_eq!(second.status, StatusCode::CONFLICT, "{}", second.body);
    assert!(second.body.contains("already revoked"), "{}", second.body);
    let shown = page(&client, &server, &cookie, &device_page).await;
    assert!(shown.body.contains("(stolen)"), "{}", shown.body);
    assert!(!shown.body.contains("retired)"), "{}", shown.body);

    // The lost-device report lists the compliance failures.
    let report = page(
        &client,
        &server,
        &cookie,
        &format!("/app/admin/devices/{}/report", unlocked.id),
    )
    .await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.body);
    assert!(
        report.body.contains("id=\"report-compliance\""),
        "{}",
        report.body
    );
    assert!(
        report.body.to_lowercase().contains("screen lock"),
        "{}",
        report.body
    );

    // Rejected token requests (security records, not alerts) do not push
    // the revoked-token alert off the alerts screen.
    let flood = server.client();
    for _ in 0..210 {
        let response = flood
            .post(format!("{}/oauth/token", server.origin()))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", "not-a-token"),
                ("client_id", "ward-mobile"),
            ])
            .send()
            .await
            .expect("token request");
        assert!(response.status().is_client_error());
    }
    let auditor = server.token("system/AuditEvent.rs");
    let security = server
        .client()
        .get(format!(
            "{}/fhir/AuditEvent?type=110113&subtype=110137&_count=1000",
            server.origin()
        ))
        .bearer_auth(&auditor)
        .send()
        .await
        .expect("search")
        .json::<serde_json::Value>()
        .await
        .expect("bundle");
    let records = security["entry"].as_array().map_or(0, Vec::len);
    assert!(
        records >= 210,
        "the flood wrote security records: {records}"
    );
    let alerts = page(&client, &server, &cookie, "/app/admin/alerts").await;
    assert_eq!(alerts.status, StatusCode::OK, "{}", alerts.body);
    assert!(
        alerts
            .body
            .contains("<h2 class=\"alert-rule\">revoked token</h2>"),
        "{}",
        alerts.body
    );

    // `_offset` is bounded: 400 naming it, never a panic.
    let huge = server
        .client()
        .get(format!(
            "{}/fhir/AuditEvent?_offset=18446744073709551615",
            server.origin()
        ))
        .bearer_auth(&auditor)
        .send()
        .await
        .expect("search");
    assert_eq!(huge.status(), StatusCode::BAD_REQUEST);
    let outcome = huge.text().await.expect("body");
    assert!(outcome.contains("OperationOutcome"), "{outcome}");
    assert!(outcome.contains("_offset"), "{outcome}");
    let search = |fields: Vec<(&'static str, String)>| {
        let mut all = vec![("csrf", csrf.clone())];
        all.extend(fields);
        let (client, origin, cookie) = (client.clone(), server.origin().to_owned(), cookie.clone());
        async move {
            let response = client
                .post(format!("{origin}/app/admin/audit"))
                .header("cookie", format!("__Host-ward-app={cookie}"))
                .form(&all)
                .send()
                .await
                .expect("search");
            Page {
                status: response.status(),
                headers: response.headers().clone(),
                body: response.text().await.expect("body"),
            }
        }
    };
    let bad_cursor = search(vec![("before", "18446744073709551616".into())]).await;
    assert_eq!(
        bad_cursor.status,
        StatusCode::BAD_REQUEST,
        "{}",
        bad_cursor.body
    );

    // Dates must be real days, From not after To.
    let impossible = search(vec![("from", "2026-13-45".into())]).await;
    assert_eq!(impossible.status, StatusCode::BAD_REQUEST);
    assert!(
        impossible.body.contains("From is not a real date"),
        "{}",
        impossible.body
    );
    let reversed = search(vec![
        ("from", "2026-02-01".into()),
        ("to", "2026-01-01".into()),
    ])
    .await;
    assert_eq!(reversed.status, StatusCode::BAD_REQUEST);
    assert!(reversed.body.contains("is after To"), "{}", reversed.body);
    let disclosures = submit(
        &client,
        &server,
        &cookie,
        "/app/admin/disclosures",
        &[("csrf", &csrf), ("patient", "abc"), ("to", "2026-02-30")],
    )
    .await;
    assert_eq!(disclosures.status, StatusCode::BAD_REQUEST);
    assert!(
        disclosures.body.contains("To is not a real date"),
        "{}",
        disclosures.body
    );

    // Pages follow the id of the last record shown, so the "Audit Log
    // Used" record each search adds does not repeat an event.
    let first = search(Vec::new()).await;
    let first_ids = first.event_ids();
    assert_eq!(first_ids.len(), 20, "{}", first.body);
    let before = first.fields("before");
    let shown = first.fields("shown");
    assert_eq!(before.len(), 1, "one Older events form: {}", first.body);
    assert_eq!(before[0], first_ids[19].to_string());
    let _ = search(Vec::new()).await;
    let older = search(vec![
        ("before", before[0].clone()),
        ("shown", shown[0].clone()),
    ])
    .await;
    assert_eq!(older.status, StatusCode::OK, "{}", older.body);
    assert!(older.body.contains("Events 21 to"), "{}", older.body);
    let older_ids = older.event_ids();
    assert!(!older_ids.is_empty(), "{}", older.body);
    assert!(
        older_ids.iter().all(|id| *id < first_ids[19]),
        "no overlap: {first_ids:?} then {older_ids:?}"
    );
    assert!(older.body.contains("Newest events"), "{}", older.body);

    browser.close().await.expect("close the browser");
}
