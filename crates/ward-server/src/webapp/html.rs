//! The HTML shell of the web app pages and the headers every page carries:
//! a strict Content Security Policy (no inline script or style, nothing
//! from other origins), `Cache-Control: no-store`, no framing and no
//! referrer.

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};

/// The Content Security Policy of every web app page.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; manifest-src 'self'; worker-src 'self'; form-action 'self'; \
frame-ancestors 'none'; base-uri 'none'";

/// Builds the `<meta http-equiv="refresh">` that, when script is off,
/// sends an open page to the lock page after `lock_secs` (or, when the
/// session signs out before it would lock, to `/app/timeout` after
/// `signout_secs`), so an unattended screen stops showing PHI. With
/// script, `app.js` locks the page in place and keeps what the user typed.
/// The server locks and ends the session after the same times.
pub fn idle_refresh(lock_secs: i64, signout_secs: i64) -> String {
    let (secs, target) = if lock_secs < signout_secs {
        (lock_secs, "/app/lock")
    } else {
        (signout_secs, "/app/timeout")
    };
    format!("<noscript><meta http-equiv=\"refresh\" content=\"{secs};url={target}\"></noscript>")
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// Builds a hidden form field.
pub fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
        escape(name),
        escape(value)
    )
}

/// Reads a cookie from the request headers.
pub fn read_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|value| !value.is_empty() && value.len() <= 128)
}

/// Returns the rejection of a form POST that a browser marks as coming
/// from another site (`Sec-Fetch-Site`, or an `Origin` naming another
/// host) or that is not URL-encoded. The CSRF token and the
/// `SameSite=Strict` cookie already stop cross-site forms, and this is the
/// second layer the OWASP CSRF prevention cheat sheet recommends.
pub fn form_refusal(headers: &HeaderMap) -> Option<Response> {
    if !same_origin(headers) {
        return Some(error_page(
            StatusCode::FORBIDDEN,
            "This form was sent from another site. Open the app and submit it there.",
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Some(error_page(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "The form must be sent as application/x-www-form-urlencoded.",
        ));
    }
    None
}

/// Returns whether the request's fetch metadata and `Origin` allow a state
/// change. Browsers that send `Sec-Fetch-Site` are judged by it alone (`same-origin`
/// or `none`), since under `Referrer-Policy: no-referrer` their forms carry
/// `Origin: null`. Otherwise an `Origin` other than `null` must name the host
/// the request was sent to.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    match text("origin") {
        None | Some("null") => true,
        Some(origin) => {
            let host = text("host").unwrap_or("");
            url::Url::parse(origin)
                .ok()
                .filter(|url| url.scheme() == "https")
                .and_then(|url| {
                    url.host_str().map(|name| match url.port() {
                        Some(port) => format!("{name}:{port}"),
                        None => name.to_owned(),
                    })
                })
                .is_some_and(|authority| !host.is_empty() && authority.eq_ignore_ascii_case(host))
        }
    }
}

/// The largest form body the web app accepts.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// A URL-encoded form body of string fields, decoded into `T` (first
/// value of a name wins), of at most `LIMIT` bytes. The request must pass
/// [`form_refusal`].
pub struct WebForm<T, const LIMIT: usize = MAX_FORM_BYTES>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned, const LIMIT: usize>
    axum::extract::FromRequest<S> for WebForm<T, LIMIT>
{
    type Rejection = Response;

    async fn from_request(request: axum::extract::Request, _state: &S) -> Result<Self, Response> {
        if let Some(refusal) = form_refusal(request.headers()) {
            return Err(refusal);
        }
        let bytes = axum::body::to_bytes(request.into_body(), LIMIT)
            .await
            .map_err(|_| {
                error_page(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!(
                        "The form is too large to be accepted: at most {} KB.",
                        LIMIT / 1024
                    ),
                )
            })?;
        let mut fields = serde_json::Map::new();
        for (name, value) in url::form_urlencoded::parse(&bytes) {
            fields
                .entry(name.into_owned())
                .or_insert_with(|| serde_json::Value::String(value.into_owned()));
        }
        serde_json::from_value(serde_json::Value::Object(fields))
            .map(WebForm)
            .map_err(|_| {
                error_page(
                    StatusCode::BAD_REQUEST,
                    "The form could not be read. Reload the page and try again.",
                )
            })
    }
}

/// Marks every form of a page `autocomplete="off"`. Besides turning off
/// autofill, this keeps Chromium from saving what was typed into the
/// form's fields in its session-restore files on disk, where `no-store`
/// does not reach.
fn without_form_restore(body: &str) -> String {
    body.replace("<form ", "<form autocomplete=\"off\" ")
}

/// A web app page. The title is generic, never PHI, because browsers show
/// it in tab lists and history.
pub struct AppPage {
    status: StatusCode,
    title: &'static str,
    body: String,
    /// The sign-out form and idle refresh, for signed-in pages.
    signed_in: Option<SignedIn>,
}

/// The parts a signed-in page adds to the shell.
pub struct SignedIn {
    /// The session's CSRF token, for the sign-out form.
    pub csrf: String,
    /// Seconds without use after which the page locks.
    pub idle_secs: i64,
    /// Seconds without use after which the session signs out.
    pub signout_secs: i64,
    /// Whether the user is a security administrator: the bar then leads
    /// to the administration screens instead of "My patients".
    pub admin: bool,
}

impl AppPage {
    /// Creates a page titled `title` whose `<main>` content is `body` (already HTML).
    pub fn new(status: StatusCode, title: &'static str, body: String) -> Self {
        Self {
            status,
            title,
            body,
            signed_in: None,
        }
    }

    /// Adds the header bar of a signed-in user.
    pub fn signed_in(mut self, signed_in: SignedIn) -> Self {
        self.signed_in = Some(signed_in);
        self
    }
}

impl IntoResponse for AppPage {
    fn into_response(self) -> Response {
        let (refresh, bar) = match &self.signed_in {
            Some(signed_in) => (
                idle_refresh(signed_in.idle_secs, signed_in.signout_secs),
                format!(
                    "<header class=\"bar\" data-lock-secs=\"{lock}\" data-signout-secs=\"{signout}\">{home}\
                     <a class=\"bar-link\" href=\"/app/security\">Security</a>\
                     <form method=\"post\" action=\"/app/signout\">{}\
                     <button type=\"submit\" class=\"secondary\">Sign out</button></form></header>",
                    hidden("csrf", &signed_in.csrf),
                    lock = signed_in.idle_secs,
                    signout = signed_in.signout_secs,
                    home = if signed_in.admin {
                        "<a class=\"home\" href=\"/app/admin\">Admin</a>"
                    } else {
                        "<a class=\"home\" href=\"/app\">My patients</a>"
                    },
                ),
            ),
            None => (String::new(), String::new()),
        };
        let html = format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <meta name=\"referrer\" content=\"no-referrer\">{refresh}\
             <title>{title} · Ward</title>\
             <link rel=\"stylesheet\" href=\"/app/static/app.css\">\
             <link rel=\"manifest\" href=\"/app/manifest.webmanifest\">\
             <link rel=\"icon\" href=\"/app/static/icon.svg\" type=\"image/svg+xml\">\
             <script src=\"/app/static/app.js\" defer></script></head>\
             <body><a class=\"skip\" href=\"#main\">Skip to main content</a>{bar}\
             <main id=\"main\" tabindex=\"-1\">\n{body}\n</main></body></html>\n",
            title = escape(self.title),
            body = without_form_restore(&self.body),
        );
        let mut response = (self.status, html).into_response();
        let headers = response.headers_mut();
        page_headers(headers);
        response
    }
}

/// Adds the headers of every web app page.
pub fn page_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// Builds a `303 See Other` to `location`, with optional cookies.
pub fn see_other(location: &str, cookies: &[String]) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
    response
}

/// Builds an error page with a message for the user and a way back.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    AppPage::new(
        status,
        "Problem",
        format!(
            "<h1>Something went wrong</h1><p class=\"error\" role=\"alert\">{}</p>\
             <p><a class=\"button\" href=\"/app\">Back to my patients</a></p>",
            escape(message)
        ),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form_headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(
            header::HOST,
            http::HeaderValue::from_static("ward.test:8443"),
        );
        for (name, value) in pairs {
            headers.insert(*name, value.parse().expect("header value"));
        }
        headers
    }

    #[test]
    fn page_forms_are_not_restored() {
        let body = without_form_restore("<form method=\"post\"><input name=\"q\"></form>");
        assert_eq!(
            body,
            "<form autocomplete=\"off\" method=\"post\"><input name=\"q\"></form>"
        );
    }

    #[test]
    fn forms_from_other_sites_are_refused() {
        let allowed = [
            vec![],
            vec![("origin", "https://ward.test:8443")],
            vec![("sec-fetch-site", "same-origin")],
            vec![("sec-fetch-site", "none")],
            vec![("sec-fetch-site", "same-origin"), ("origin", "null")],
            vec![("origin", "null")],
        ];
        for pairs in allowed {
            assert!(form_refusal(&form_headers(&pairs)).is_none(), "{pairs:?}");
        }
        let refused = [
            vec![("origin", "https://evil.example")],
            vec![("origin", "https://ward.test:9443")],
            vec![("origin", "http://ward.test:8443")],
            vec![("sec-fetch-site", "cross-site"), ("origin", "null")],
            vec![("sec-fetch-site", "cross-site")],
            vec![("sec-fetch-site", "same-site")],
        ];
        for pairs in refused {
            let response = form_refusal(&form_headers(&pairs)).expect("refused");
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{pairs:?}");
        }
        let mut plain = form_headers(&[]);
        plain.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        let response = form_refusal(&plain).expect("text/plain refused");
        assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn escape_covers_markup() {
        assert_eq!(
            escape("<a b=\"c\">'&'"),
            "&lt;a b=&quot;c&quot;&gt;&#39;&amp;&#39;"
        );
    }

    #[test]
    fn idle_refresh_locks_before_sign_out() {
        let lock_first = idle_refresh(300, 900);
        assert!(lock_first.starts_with("<noscript>"), "{lock_first}");
        assert!(lock_first.contains("300;url=/app/lock"), "{lock_first}");
        let sign_out_first = idle_refresh(900, 600);
        assert!(
            sign_out_first.contains("600;url=/app/timeout"),
            "{sign_out_first}"
        );
    }

    #[test]
    fn csp_forbids_inline_and_foreign_sources() {
        assert!(!CSP.contains("unsafe-inline"));
        assert!(!CSP.contains("https:"));
        assert!(CSP.contains("default-src 'none'"));
        assert!(CSP.contains("form-action 'self'"));
    }
}
