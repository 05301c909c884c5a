//! Headless Chromium for the web app tests: a chromedriver process, a
//! browser session at a phone viewport, screenshots, and the waits and
//! clicks the page flows need. The tests skip without Debian's `chromium`
//! and `chromium-driver` unless `WARD_REQUIRE_CHROMIUM=1` makes a missing
//! browser a failure.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use super::{Server, header, totp_code};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The phone viewport every web app test uses.
pub const VIEWPORT: (u32, u32) = (390, 844);

/// Returns true when the browser is installed; panics when it is missing
/// but required.
pub fn chromium_available() -> bool {
    let present = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !present {
        assert!(
            std::env::var("WARD_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "WARD_REQUIRE_CHROMIUM=1 but {CHROMIUM} or {CHROMEDRIVER} is missing; \
             install them with `apt-get install -y chromium chromium-driver`"
        );
        eprintln!(
            "NOTE: skipping the web app browser test: {CHROMIUM} or {CHROMEDRIVER} is missing \
             (apt-get install -y chromium chromium-driver)"
        );
    }
    present
}

/// A chromedriver process, stopped on drop.
pub struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    pub fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not start listening"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver { child, port }
    }
}

impl Driver {
    /// Returns the port chromedriver listens on, for tests that open their
    /// own browser session.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens a Chromium session that accepts the test server's certificate.
pub async fn browser(driver: &Driver) -> Client {
    // The test server's certificate comes from its own test CA.
    browser_with(driver, &["--ignore-certificate-errors".to_owned()]).await
}

/// Opens a headless Chromium session at the phone viewport with `extra`
/// command-line switches, such as how to trust the test server.
pub async fn browser_with(driver: &Driver, extra: &[String]) -> Client {
    let (width, height) = VIEWPORT;
    let mut args: Vec<String> = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    args.push(format!("--window-size={width},{height}"));
    args.extend_from_slice(extra);
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": CHROMIUM,
            "args": args,
            "mobileEmulation": {
                "deviceMetrics": {"width": width, "height": height, "pixelRatio": 1.0, "touch": true},
            },
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("open a Chromium session through chromedriver")
}

pub struct Shots {
    dir: PathBuf,
}

impl Shots {
    pub fn new() -> Shots {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/webapp-screenshots");
        std::fs::create_dir_all(&dir).expect("create the screenshot directory");
        Shots { dir }
    }

    pub async fn take(&self, browser: &Client, name: &str) {
        let png = browser.screenshot().await.expect("screenshot");
        std::fs::write(self.dir.join(format!("{name}.png")), png).expect("write screenshot");
    }
}

/// Finds an element, waiting for the page that has it to load; panics with
/// the page's text when it never appears.
pub async fn element(browser: &Client, locator: Locator<'_>) -> fantoccini::elements::Element {
    match browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(locator)
        .await
    {
        Ok(element) => element,
        Err(error) => {
            let url = browser.current_url().await.expect("url");
            let text = page_text(browser).await;
            panic!("{locator:?} not found on {url}: {error}\npage text: {text}");
        }
    }
}

pub async fn fill(browser: &Client, id: &str, text: &str) {
    let input = element(browser, Locator::Id(id)).await;
    input.clear().await.expect("clear");
    input.send_keys(text).await.expect("type");
}

/// Clicks an element that leads to another page and waits until the old
/// page is gone, so the next lookup finds elements of the new one.
pub async fn click(browser: &Client, css: &str) {
    let old_page = browser.find(Locator::Css("html")).await.expect("html");
    element(browser, Locator::Css(css))
        .await
        .click()
        .await
        .expect("click");
    let deadline = Instant::now() + Duration::from_secs(10);
    while old_page.tag_name().await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "clicking {css} did not load a page"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `script` (a function body returning a value) returns true;
/// panics with the page's text after `secs` seconds.
pub async fn wait_for(browser: &Client, script: &str, what: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let value = browser.execute(script, vec![]).await.expect("run script");
        if value == Value::Bool(true) {
            return;
        }
        if Instant::now() >= deadline {
            let text = page_text(browser).await;
            panic!("{what} did not happen within {secs} s; page text: {text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks an element whose script changes the page in place (no page
/// load), then waits as [`wait_for`] does until `script` returns true.
pub async fn click_then_wait(
    browser: &Client,
    locator: Locator<'_>,
    script: &str,
    what: &str,
    secs: u64,
) {
    element(browser, locator)
        .await
        .click()
        .await
        .unwrap_or_else(|error| panic!("click {locator:?} before {what}: {error}"));
    wait_for(browser, script, what, secs).await;
}

pub async fn page_text(browser: &Client) -> String {
    browser
        .find(Locator::Css("body"))
        .await
        .expect("body")
        .text()
        .await
        .expect("body text")
}

/// Signs `username` in through the authorization server's pages:
/// password, TOTP code, consent; ends on `/app`.
pub async fn sign_in(
    browser: &Client,
    server: &Server,
    credentials: (&str, &str, &str),
    shots: &Shots,
) {
    sign_in_at(browser, server.origin(), credentials, shots).await;
}

/// Signs in as [`sign_in`] does, at the server's address `origin` (such as
/// a DNS name that the browser resolves to the test server).
pub async fn sign_in_at(
    browser: &Client,
    origin: &str,
    (username, password, secret): (&str, &str, &str),
    shots: &Shots,
) {
    browser
        .goto(&format!("{origin}/app"))
        .await
        .expect("open /app");
    let url = browser.current_url().await.expect("url");
    assert_eq!(
        url.path(),
        "/oauth/authorize",
        "no session leads to sign-in"
    );
    fill(browser, "username", username).await;
    fill(browser, "password", password).await;
    shots.take(browser, "01-sign-in").await;
    click(browser, "form[action='/oauth/login'] button[type=submit]").await;
    fill(browser, "code", &totp_code(secret)).await;
    click(browser, "form[action='/oauth/mfa'] button[type=submit]").await;
    click(browser, "button[name=decision][value=approve]").await;
    let url = browser.current_url().await.expect("url");
    assert_eq!(url.path(), "/app", "{}", page_text(browser).await);
}

/// Returns the value of the web app's session cookie in the browser.
pub async fn session_cookie(browser: &Client) -> String {
    browser
        .get_named_cookie("__Host-ward-app")
        .await
        .expect("the web app session cookie")
        .value()
        .to_owned()
}

/// Creates `resource` through the FHIR API and returns its id.
pub async fn create(server: &Server, token: &str, resource: Value) -> String {
    let path = resource["resourceType"].as_str().expect("type").to_owned();
    let (status, _, body) = server.post_json(&path, token, &resource).await;
    assert!(status.is_success(), "creating {path}: {body}");
    body["id"].as_str().expect("id").to_owned()
}

/// Fetches a signed-in page with the browser's session `cookie` and checks
/// its security headers: a strict CSP, `no-store`, no framing, no referrer,
/// `nosniff`, and no inline script, inline style or `data:` URL.
pub async fn assert_page_headers(server: &Server, cookie: &str, path: &str) {
    let response = server
        .client()
        .get(format!("{}{path}", server.origin()))
        .header("cookie", format!("__Host-ward-app={cookie}"))
        .send()
        .await
        .expect("fetch page");
    assert_eq!(response.status(), 200, "{path}");
    let headers = response.headers();
    let csp = header(headers, "content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
    assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
    assert!(csp.contains("style-src 'self'"), "{path}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
    assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
    assert_eq!(header(headers, "cache-control"), "no-store", "{path}");
    assert_eq!(header(headers, "x-frame-options"), "DENY", "{path}");
    assert_eq!(header(headers, "referrer-policy"), "no-referrer", "{path}");
    assert_eq!(
        header(headers, "x-content-type-options"),
        "nosniff",
        "{path}"
    );
    let body = response.text().await.expect("body");
    assert!(!body.contains("<script>"), "inline script on {path}");
    assert!(!body.contains("style="), "inline style on {path}");
    assert!(!body.contains("<style"), "inline style on {path}");
    assert!(!body.contains("data:"), "a data: URL on {path}");
}
