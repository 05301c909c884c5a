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

/// Builds the `<meta http-equiv="refresh">` that sends an open page to
/// `/app/timeout` after `idle_secs`, so an unattended screen stops showing
/// PHI. The server ends the session after the same idle time.
pub fn idle_refresh(idle_secs: i64) -> String {
    format!("<meta http-equiv=\"refresh\" content=\"{idle_secs};url=/app/timeout\">")
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

/// The largest form body the web app accepts.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// A URL-encoded form body of string fields, decoded into `T` (first
/// value of a name wins).
pub struct WebForm<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for WebForm<T> {
    type Rejection = Response;

    async fn from_request(request: axum::extract::Request, _state: &S) -> Result<Self, Response> {
        let bytes = axum::body::to_bytes(request.into_body(), MAX_FORM_BYTES)
            .await
            .map_err(|_| {
                error_page(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The form is too large to be accepted.",
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
    /// The idle timeout, in seconds.
    pub idle_secs: i64,
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
                idle_refresh(signed_in.idle_secs),
                format!(
                    "<header class=\"bar\"><a class=\"home\" href=\"/app\">My patients</a>\
                     <form method=\"post\" action=\"/app/signout\">{}\
                     <button type=\"submit\" class=\"secondary\">Sign out</button></form></header>",
                    hidden("csrf", &signed_in.csrf)
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
             <body>{bar}<main id=\"main\">\n{body}\n</main></body></html>\n",
            title = escape(self.title),
            body = self.body,
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

    #[test]
    fn escape_covers_markup() {
        assert_eq!(
            escape("<a b=\"c\">'&'"),
            "&lt;a b=&quot;c&quot;&gt;&#39;&amp;&#39;"
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
