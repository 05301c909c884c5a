//! The web app's idle lock, PIN unlock and browser device binding in real
//! headless Chromium at a 390×844 phone viewport.
//!
//! - Idle lock: a PIN is set, the page warns with a countdown, then locks
//!   and the page's PHI leaves the DOM. Another tab and a plain HTTP client
//!   with the session cookie get the lock page. A wrong PIN is rejected,
//!   and the right PIN brings the half-typed note back, which then saves.
//!   Too many wrong PINs sign out.
//! - Device binding: the browser enrolls with a one-time device code, its
//!   WebCrypto key cannot be exported, the session is bound to it, and the
//!   same cookie replayed without a proof is refused and locks the
//!   session.
//!
//! Skips without Debian's `chromium` and `chromium-driver` unless
//! `WARD_REQUIRE_CHROMIUM=1`. Screenshots go to `target/webapp-screenshots/`.

mod common;

use std::time::Duration;

use fantoccini::{Client, Locator};
use serde_json::{Value, json};

use common::browser::{
    Driver, Shots, browser, browser_with, chromium_available, click, click_then_wait, create,
    element, fill, page_text, session_cookie, sign_in, sign_in_at, wait_for,
};
use common::{Server, add_user, ward};

const CLINICIAN: &str = "dr.lister";
const PASSWORD: &str = "amber-heron-lantern-73";
/// A family name unlikely to appear on any page by chance.
const FAMILY: &str = "Wrenthorpe";
/// The allergy on the chart: PHI that must not survive a lock.
const ALLERGY: &str = "Sulfonamide antibiotics";
const PIN: &str = "20481632";
const NOTE_TITLE: &str = "Ward round";
const NOTE_START: &str = "Comfortable overnight, plan to";
const NOTE_END: &str = " review the rash tomorrow.";

/// Adds patient Ada, with an allergy, on the care team of
/// `Practitioner/dr`, and the clinician; returns the clinician's TOTP
/// secret.
async fn seed(server: &Server) -> String {
    let admin = server.token("system/*.cruds");
    let practitioner =
        json!({"resourceType": "Practitioner", "id": "dr", "name": [{"family": "Lister"}]});
    let (status, _, body) = server
        .put_json("/Practitioner/dr", &admin, &practitioner)
        .await;
    assert!(status.is_success(), "{body}");

    let ada = create(
        server,
        &admin,
        json!({"resourceType": "Patient", "name": [{"family": FAMILY, "given": ["Ada"]}],
               "gender": "female", "birthDate": "1961-03-14"}),
    )
    .await;

    let subject = json!({"reference": format!("Patient/{ada}")});
    create(
        server,
        &admin,
        json!({"resourceType": "CareTeam", "status": "active", "subject": subject,
               "participant": [{"member": {"reference": "Practitioner/dr"}}]}),
    )
    .await;
    create(
        server,
        &admin,
        json!({"resourceType": "AllergyIntolerance", "patient": subject,
               "code": {"text": ALLERGY}}),
    )
    .await;

    add_user(
        server,
        (CLINICIAN, "physician", PASSWORD),
        Some("Practitioner/dr"),
    )
}

/// Waits for the next 30-second TOTP step, since a code works only once.
async fn next_totp_step() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    tokio::time::sleep(Duration::from_secs(30 - now % 30 + 1)).await;
}

async fn set_pin(browser: &Client, origin: &str) {
    browser
        .goto(&format!("{origin}/app/security"))
        .await
        .expect("open the security page");
    // A PIN that is too easy is refused with a message.
    fill(browser, "new-pin", "123456").await;
    fill(browser, "confirm-pin", "123456").await;
    click(browser, "form[action='/app/pin'] button[type=submit]").await;
    let text = page_text(browser).await;
    assert!(text.contains("too easy to guess"), "{text}");
    fill(browser, "new-pin", PIN).await;
    fill(browser, "confirm-pin", PIN).await;
    click(browser, "form[action='/app/pin'] button[type=submit]").await;
    let text = page_text(browser).await;
    assert!(text.contains("Your PIN is saved."), "{text}");
    assert!(text.contains("A PIN is set."), "{text}");
}

/// Opens Ada's chart from the patient list and returns its path.
async fn open_chart(browser: &Client, server: &Server) -> String {
    browser
        .goto(&format!("{}/app", server.origin()))
        .await
        .expect("open /app");
    click(browser, "ul.cards a").await;
    let url = browser.current_url().await.expect("url");
    assert!(url.path().starts_with("/app/p/"), "{url}");
    let text = page_text(browser).await;
    assert!(text.contains(ALLERGY), "{text}");
    url.path().to_owned()
}

/// Fetches `path` with only the session cookie, as a thief would.
async fn fetch_with_cookie(
    server: &Server,
    cookie: &str,
    path: &str,
    proof: Option<&str>,
) -> (u16, String) {
    let mut request = server
        .client()
        .get(format!("{}{path}", server.origin()))
        .header("cookie", format!("__Host-ward-app={cookie}"));
    if let Some(proof) = proof {
        request = request.header("dpop", proof);
    }
    let response = request.send().await.expect("fetch with the cookie");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webapp_idle_lock_and_pin_unlock() {
    if !chromium_available() {
        return;
    }
    let server = Server::start_with(&["--app-lock", "9s", "--session-idle", "10m"], &[]);
    let secret = seed(&server).await;
    let driver = Driver::start();
    let browser = browser(&driver).await;
    let shots = Shots::new();
    sign_in(&browser, &server, (CLINICIAN, PASSWORD, &secret), &shots).await;
    set_pin(&browser, server.origin()).await;
    shots.take(&browser, "identity-01-pin").await;

    // Half-type a note on Ada.
    let chart_path = open_chart(&browser, &server).await;
    click(&browser, &format!("a[href='{chart_path}/note']")).await;
    fill(&browser, "title", NOTE_TITLE).await;
    fill(&browser, "text", NOTE_START).await;

    // Left alone, the page warns with a countdown, then locks.
    wait_for(
        &browser,
        "const c = document.getElementById('idle-countdown'); \
         return !!c && /Locking in \\d+ seconds?\\./.test(c.textContent);",
        "the idle warning",
        15,
    )
    .await;
    shots.take(&browser, "identity-02-warning").await;
    // "Keep working" reports the use to the server and puts the lock off.
    // Left alone again, the page warns again and then locks.
    click_then_wait(
        &browser,
        Locator::Id("idle-stay"),
        "return !document.getElementById('idle-warning') \
             && !!document.getElementById('text');",
        "the end of the warning",
        5,
    )
    .await;
    wait_for(
        &browser,
        "return !!document.getElementById('idle-countdown');",
        "the second idle warning",
        15,
    )
    .await;
    wait_for(
        &browser,
        "return !!document.getElementById('lock-screen');",
        "the lock",
        15,
    )
    .await;
    shots.take(&browser, "identity-03-locked").await;
    let gone = browser
        .execute(
            "return document.getElementById('main') === null \
                 && document.getElementById('text') === null \
                 && !document.body.textContent.includes('Ward round') \
                 && document.querySelector('header.bar').hasAttribute('inert');",
            vec![],
        )
        .await
        .expect("inspect the locked page");
    assert_eq!(gone, Value::Bool(true), "the form is still in the DOM");
    let text = page_text(&browser).await;
    assert!(text.contains("Ward is locked"), "{text}");

    // Another tab, and a plain client with the cookie, get the lock page.
    let cookie = session_cookie(&browser).await;
    let (status, body) = fetch_with_cookie(&server, &cookie, &chart_path, None).await;
    assert_eq!(status, 423, "{body}");
    assert!(body.contains("Ward is locked"), "{body}");
    assert!(!body.contains(FAMILY), "{body}");
    assert!(!body.contains(ALLERGY), "{body}");
    let first = browser.window().await.expect("window");
    let tab = browser.new_window(true).await.expect("new tab");
    browser.switch_to_window(tab.handle).await.expect("switch");
    browser
        .goto(&format!("{}{chart_path}", server.origin()))
        .await
        .expect("reload the chart");
    let source = browser.source().await.expect("source");
    assert!(source.contains("Ward is locked"), "{source}");
    assert!(!source.contains(FAMILY), "PHI on the lock page: {source}");
    assert!(!source.contains(ALLERGY), "PHI on the lock page: {source}");
    browser.close_window().await.expect("close the tab");
    browser.switch_to_window(first).await.expect("switch back");

    // A wrong PIN is refused; the right one brings the form back.
    fill(&browser, "lock-pin", "99999999").await;
    click_then_wait(
        &browser,
        Locator::Css("#lock-form button[type=submit]"),
        "const e = document.getElementById('lock-error'); \
         return !!e && !e.hidden && e.textContent.includes('That PIN is wrong');",
        "the wrong PIN message",
        10,
    )
    .await;
    shots.take(&browser, "identity-04-wrong-pin").await;
    assert!(
        browser.find(Locator::Id("text")).await.is_err(),
        "a wrong PIN unlocked the page"
    );
    // The next try waits a second after a wrong PIN.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    fill(&browser, "lock-pin", PIN).await;
    click_then_wait(
        &browser,
        Locator::Css("#lock-form button[type=submit]"),
        "return !!document.getElementById('text') && !document.getElementById('lock-screen');",
        "the unlock",
        10,
    )
    .await;
    for (id, value) in [("title", NOTE_TITLE), ("text", NOTE_START)] {
        let field = element(&browser, Locator::Id(id)).await;
        assert_eq!(
            field.prop("value").await.expect("value").as_deref(),
            Some(value),
            "{id} lost its value"
        );
    }
    element(&browser, Locator::Id("text"))
        .await
        .send_keys(NOTE_END)
        .await
        .expect("finish the note");
    click(&browser, "form button[type=submit].wide").await;
    let url = browser.current_url().await.expect("url");
    assert_eq!(url.path(), chart_path);
    let text = page_text(&browser).await;
    assert!(text.contains("Note saved."), "{text}");

    // The note was saved whole, through the FHIR API.
    let admin = server.token("system/*.cruds");
    let (status, _, bundle) = server.get("DocumentReference", &admin).await;
    assert!(status.is_success(), "{bundle}");
    let saved = bundle.to_string();
    assert!(saved.contains(NOTE_TITLE), "{saved}");

    // The page's own script never stored anything in web storage.
    let stored = browser
        .execute(
            "return localStorage.length + sessionStorage.length;",
            vec![],
        )
        .await
        .expect("web storage");
    assert_eq!(stored, json!(0));

    // Without script the lock page works as a form; five wrong PINs sign
    // out (with the back-off between tries).
    browser
        .goto(&format!("{}/app/lock", server.origin()))
        .await
        .expect("open the lock page");
    for wait in [0, 1, 2, 4, 8] {
        tokio::time::sleep(Duration::from_millis(wait * 1000 + 200)).await;
        fill(&browser, "pin", "11223344").await;
        click(&browser, "#unlock-form button[type=submit]").await;
        let url = browser.current_url().await.expect("url");
        if wait < 8 {
            let text = page_text(&browser).await;
            assert!(text.contains("That PIN is wrong"), "{text}");
        } else {
            assert_eq!(url.path(), "/app/signed-out", "{url}");
            assert_eq!(url.query(), Some("reason=pin"));
        }
    }
    let (status, body) = fetch_with_cookie(&server, &cookie, "/app", None).await;
    assert!(status == 200 || status == 303, "{status}");
    assert!(!body.contains(FAMILY), "{body}");
    browser.close().await.expect("close the browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webapp_browser_enrollment_binds_session() {
    if !chromium_available() {
        return;
    }
    let server = Server::start();
    let secret = seed(&server).await;
    let driver = Driver::start();
    let browser = browser(&driver).await;
    let shots = Shots::new();
    sign_in(&browser, &server, (CLINICIAN, PASSWORD, &secret), &shots).await;
    set_pin(&browser, server.origin()).await;

    // Enroll this browser with a one-time code.
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
    fill(&browser, "enroll-code", "not-a-code").await;
    click_then_wait(
        &browser,
        Locator::Css("#enroll-form button[type=submit]"),
        "const s = document.getElementById('enroll-status'); \
         return !!s && s.className === 'error' && s.textContent.length > 0;",
        "the refusal of a wrong code",
        15,
    )
    .await;
    fill(&browser, "enroll-code", &code).await;
    fill(&browser, "device-name", "Ward 3 phone browser").await;
    click_then_wait(
        &browser,
        Locator::Css("#enroll-form button[type=submit]"),
        "const s = document.getElementById('device-state'); \
         return !!s && s.textContent.includes('This browser is enrolled as device');",
        "the enrollment",
        20,
    )
    .await;
    shots.take(&browser, "identity-05-enrolled").await;

    // The key is a non-extractable P-256 CryptoKey in IndexedDB.
    let key = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const open = indexedDB.open('ward-app', 1);
             open.onsuccess = () => {
               const get = open.result.transaction('keys').objectStore('keys').get('device');
               get.onsuccess = () => {
                 const key = get.result.privateKey;
                 crypto.subtle.exportKey('jwk', key).then(
                   () => done({exported: true}),
                   (e) => done({exported: false, error: e.name, extractable: key.extractable,
                                curve: key.algorithm.namedCurve, type: key.type}));
               };
             };
             open.onerror = () => done({error: 'no database'});",
            vec![],
        )
        .await
        .expect("read the device key");
    assert_eq!(key["exported"], json!(false), "{key}");
    assert_eq!(key["extractable"], json!(false), "{key}");
    assert_eq!(key["curve"], json!("P-256"), "{key}");
    assert_eq!(key["type"], json!("private"), "{key}");

    // The device record names the browser operating system.
    let devices = ward(&server, &["device", "list"], None);
    assert!(devices.contains("Ward 3 phone browser"), "{devices}");
    let device_id = devices
        .lines()
        .find(|line| line.contains("Ward 3 phone browser"))
        .and_then(|line| line.split_whitespace().next())
        .expect("device id")
        .to_owned();
    let report = ward(&server, &["device", "report", &device_id, "--json"], None);
    let report: Value = serde_json::from_str(&report).expect("report JSON");
    assert!(
        report["os"]
            .as_str()
            .is_some_and(|os| os.starts_with("browser ")),
        "{report}"
    );

    // Bound: the pages work in the browser, whose worker proves the key.
    let chart_path = open_chart(&browser, &server).await;
    let text = page_text(&browser).await;
    assert!(text.contains(ALLERGY), "{text}");

    // The same cookie without a proof, or with a made-up one, is refused.
    let cookie = session_cookie(&browser).await;
    for proof in [None, Some("eyJhbGciOiJFUzI1NiJ9.e30.c2ln")] {
        let (status, body) = fetch_with_cookie(&server, &cookie, &chart_path, proof).await;
        assert_eq!(status, 423, "{body}");
        assert!(body.contains("did not prove"), "{body}");
        assert!(!body.contains(FAMILY), "{body}");
        assert!(!body.contains(ALLERGY), "{body}");
    }

    // That locked the session: the browser gets the lock page, and its PIN
    // (sent with a proof by the worker) opens the chart again.
    browser
        .goto(&format!("{}{chart_path}", server.origin()))
        .await
        .expect("reload the chart");
    let text = page_text(&browser).await;
    assert!(text.contains("Ward is locked"), "{text}");
    assert!(!text.contains(ALLERGY), "{text}");
    fill(&browser, "pin", PIN).await;
    click(&browser, "#unlock-form button[type=submit]").await;
    let url = browser.current_url().await.expect("url");
    assert_eq!(url.path(), chart_path);
    let text = page_text(&browser).await;
    assert!(text.contains(ALLERGY), "{text}");
    shots.take(&browser, "identity-06-bound-chart").await;

    // A new sign-in in the same browser is bound to the same key at once.
    click(&browser, "form[action='/app/signout'] button").await;
    next_totp_step().await;
    sign_in(&browser, &server, (CLINICIAN, PASSWORD, &secret), &shots).await;
    let text = page_text(&browser).await;
    assert!(text.contains(&format!("Ada {FAMILY}")), "{text}");
    browser
        .goto(&format!("{}/app/security", server.origin()))
        .await
        .expect("open the security page");
    let text = page_text(&browser).await;
    assert!(
        text.contains(&format!("This browser is enrolled as device {device_id}")),
        "{text}"
    );
    let old_cookie = cookie;
    let cookie = session_cookie(&browser).await;
    assert_ne!(cookie, old_cookie);
    let (status, body) = fetch_with_cookie(&server, &cookie, "/app", None).await;
    assert_eq!(status, 423, "{body}");
    assert!(!body.contains(FAMILY), "{body}");

    // The stolen cookie still cannot unlock: the unlock needs the proof.
    let lock_page = server
        .client()
        .get(format!("{}/app/lock", server.origin()))
        .header("cookie", format!("__Host-ward-app={cookie}"))
        .send()
        .await
        .expect("lock page")
        .text()
        .await
        .expect("body");
    let csrf = lock_page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("csrf field")
        .to_owned();
    let response = server
        .client()
        .post(format!("{}/app/unlock", server.origin()))
        .header("cookie", format!("__Host-ward-app={cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&pin={PIN}&next=/app"))
        .send()
        .await
        .expect("unlock without proof");
    assert_eq!(response.status().as_u16(), 403);
    let (status, _) = fetch_with_cookie(&server, &cookie, "/app", None).await;
    assert_eq!(status, 423);

    // Revoking the browser's device signs the session out.
    ward(
        &server,
        &["device", "revoke", &device_id, "--reason", "retired"],
        None,
    );
    browser
        .goto(&format!("{}/app", server.origin()))
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
    let (status, body) = fetch_with_cookie(&server, &cookie, "/app", None).await;
    assert_ne!(status, 423, "{body}");
    assert!(!body.contains(FAMILY), "{body}");
    browser.close().await.expect("close the browser");
}

/// The WebDriver command that adds a virtual authenticator (WebAuthn
/// extension of the WebDriver specification) to the browser session.
#[derive(Debug)]
struct AddVirtualAuthenticator;

impl fantoccini::wd::WebDriverCompatibleCommand for AddVirtualAuthenticator {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/webauthn/authenticator",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (reqwest::Method, Option<String>) {
        let body = json!({
            "protocol": "ctap2",
            "transport": "internal",
            "hasResidentKey": true,
            "hasUserVerification": true,
            "isUserConsenting": true,
            "isUserVerified": true,
        });
        (reqwest::Method::POST, Some(body.to_string()))
    }
}

/// Returns the base64 SHA-256 of the CA's public key. Chromium trusts
/// certificates under it, so the test server's certificate counts as valid
/// (WebAuthn rejects pages with certificate errors).
fn ca_spki_hash(server: &Server) -> Option<String> {
    use base64::Engine as _;
    let pem = std::fs::read_to_string(server.data_dir().join("ca.pem")).ok()?;
    let key = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-pubkey"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take()?.write_all(pem.as_bytes()).ok()?;
            child.wait_with_output().ok()
        })?;
    let text = String::from_utf8(key.stdout).ok()?;
    let body: String = text
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()?;
    // The digest as standard base64 with padding, as Chromium wants it.
    let digest = ward_auth::dpop::sha256_base64url(&der)
        .replace('-', "+")
        .replace('_', "/");
    Some(format!("{digest}="))
}

/// Opens a Chromium session like `common::browser::browser` that also
/// resolves `ward.test` to the test server and trusts its CA.
async fn browser_for_site(driver: &Driver, port: u16, spki: &str) -> Client {
    browser_with(
        driver,
        &[
            format!("--host-resolver-rules=MAP ward.test:443 127.0.0.1:{port}"),
            format!("--ignore-certificate-errors-spki-list={spki}"),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webapp_passkey_sign_in() {
    if !chromium_available() {
        return;
    }
    const SITE: &str = "https://ward.test";
    let server = Server::start_with(&["--base-url", SITE, "--app-lock", "8s"], &[]);
    let secret = add_user(
        &server,
        (CLINICIAN, "physician", PASSWORD),
        Some("Practitioner/dr"),
    );
    let Some(spki) = ca_spki_hash(&server) else {
        panic!("openssl is needed to trust the test CA in Chromium");
    };
    let port: u16 = server
        .origin()
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("server port");
    let driver = Driver::start();
    let browser = browser_for_site(&driver, port, &spki).await;
    browser
        .issue_cmd(AddVirtualAuthenticator)
        .await
        .expect("add a virtual authenticator");
    let shots = Shots::new();

    // First sign-in with password and code, then add a passkey.
    sign_in_at(&browser, SITE, (CLINICIAN, PASSWORD, &secret), &shots).await;
    let url = browser.current_url().await.expect("url");
    assert_eq!(
        url.as_str(),
        format!("{SITE}/app"),
        "{}",
        page_text(&browser).await
    );
    browser
        .goto(&format!("{SITE}/app/security"))
        .await
        .expect("open the security page");
    click(&browser, "a[href='/oauth/passkeys']").await;
    click_then_wait(
        &browser,
        Locator::Id("passkey-register"),
        "const s = document.getElementById('passkey-status'); \
         return !!s && s.textContent.includes('Passkey added');",
        "the passkey registration",
        15,
    )
    .await;

    // The passkey unlocks the locked page in place, and the lock page after
    // a reload.
    set_pin(&browser, SITE).await;
    browser
        .goto(&format!("{SITE}/app"))
        .await
        .expect("open the app");
    wait_for(
        &browser,
        "return !!document.getElementById('passkey-unlock') \
             && !document.getElementById('main');",
        "the lock with a passkey button",
        20,
    )
    .await;
    shots.take(&browser, "identity-08-passkey-lock").await;
    click_then_wait(
        &browser,
        Locator::Id("passkey-unlock"),
        "return !!document.getElementById('main') && !document.getElementById('lock-screen');",
        "the passkey unlock",
        10,
    )
    .await;
    assert!(page_text(&browser).await.contains("My patients"));
    browser
        .goto(&format!("{SITE}/app/lock"))
        .await
        .expect("open the lock page");
    click(&browser, "#passkey-unlock").await;
    let url = browser.current_url().await.expect("url");
    assert_eq!(
        url.as_str(),
        format!("{SITE}/app"),
        "{}",
        page_text(&browser).await
    );
    assert!(page_text(&browser).await.contains("My patients"));

    // Sign out of the app, then sign in with the password and the passkey.
    browser
        .goto(&format!("{SITE}/app"))
        .await
        .expect("open the app");
    click(&browser, "form[action='/app/signout'] button").await;
    browser
        .goto(&format!("{SITE}/app"))
        .await
        .expect("open the app");
    fill(&browser, "username", CLINICIAN).await;
    fill(&browser, "password", PASSWORD).await;
    click(&browser, "form[action='/oauth/login'] button[type=submit]").await;
    shots.take(&browser, "identity-07-passkey-offer").await;
    click(&browser, "#passkey-button").await;
    click(&browser, "button[name=decision][value=approve]").await;
    let url = browser.current_url().await.expect("url");
    assert_eq!(
        url.as_str(),
        format!("{SITE}/app"),
        "{}",
        page_text(&browser).await
    );
    let text = page_text(&browser).await;
    assert!(text.contains("My patients"), "{text}");
    let log = server.stderr_log();
    assert!(log.contains("web app session started"), "{log}");
    browser.close().await.expect("close the browser");
}
