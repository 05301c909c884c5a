//! Server-rendered HTML pages of the sign-in flow, their security headers
//! and cookies. The pages carry no inline script or style, so the Content
//! Security Policy can forbid both. Only the passkey buttons need
//! JavaScript, from the static `/oauth/passkey.js`; the password and code
//! forms work without it.

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};

/// The cookie that binds a pending authorization request to the browser.
pub const PENDING_COOKIE: &str = "__Host-ward-authz";
/// The cookie of a signed-in web session.
pub const SESSION_COOKIE: &str = "__Host-ward-session";

const STYLESHEET: &str = "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#1b1b1b}\
label{display:block;margin-top:1rem}input[type=text],input[type=password]{width:100%;padding:.4rem;font-size:1rem}\
button{margin-top:1.2rem;margin-right:.6rem;padding:.5rem 1.2rem;font-size:1rem}.error{color:#a00000}\
ul{padding-left:1.2rem}";

/// Serves the stylesheet the pages link to.
pub async fn stylesheet() -> Response {
    let mut response = (StatusCode::OK, STYLESHEET).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    response
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

/// Returns the CSP source for the origin of a redirect URI: `https://host:port`
/// for web URIs, `scheme:` for private-use schemes.
pub fn csp_source(redirect_uri: &str) -> Option<String> {
    let url = url::Url::parse(redirect_uri).ok()?;
    let source = match url.host_str() {
        Some(_) => url.origin().ascii_serialization(),
        None => format!("{}:", url.scheme()),
    };
    // A source with a space, quote or semicolon would break the header.
    source
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'\'' | b'"'))
        .then_some(source)
}

/// A page response with its security headers. `form_targets` are the
/// redirect origins the form may lead to, besides this server.
pub struct Page {
    status: StatusCode,
    title: String,
    body: String,
    form_targets: Vec<String>,
    cookies: Vec<String>,
}

impl Page {
    /// A page titled `title` whose `<main>` content is `body` (already HTML).
    pub fn new(status: StatusCode, title: &str, body: String) -> Self {
        Self {
            status,
            title: title.to_owned(),
            body,
            form_targets: Vec::new(),
            cookies: Vec::new(),
        }
    }

    /// An error page with a message for the user.
    pub fn error(status: StatusCode, message: &str) -> Self {
        Self::new(
            status,
            "Sign-in failed",
            format!("<p class=\"error\">{}</p>", escape(message)),
        )
    }

    /// Allows the page's forms to lead to `redirect_uri`'s origin.
    pub fn allow_redirect(mut self, redirect_uri: &str) -> Self {
        if let Some(source) = csp_source(redirect_uri) {
            self.form_targets.push(source);
        }
        self
    }

    /// Adds a `Set-Cookie` header.
    pub fn cookie(mut self, cookie: String) -> Self {
        self.cookies.push(cookie);
        self
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let html = format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{title}</title><link rel=\"stylesheet\" href=\"/oauth/style.css\"></head>\
             <body><main><h1>{title}</h1>\n{body}\n</main></body></html>\n",
            title = escape(&self.title),
            body = self.body,
        );
        let mut response = (self.status, html).into_response();
        let headers = response.headers_mut();
        secure_headers(headers, &self.form_targets);
        for cookie in self.cookies {
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                headers.append(header::SET_COOKIE, value);
            }
        }
        response
    }
}

/// Adds the headers of every sign-in response: content type, CSP, no
/// caching, no framing and no referrer.
pub fn secure_headers(headers: &mut HeaderMap, form_targets: &[String]) {
    let mut form_action = String::from("'self'");
    for target in form_targets {
        form_action.push(' ');
        form_action.push_str(target);
    }
    let csp = format!(
        "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; form-action {form_action}; frame-ancestors 'none'"
    );
    if let Ok(value) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
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

/// A `__Host-` cookie: Secure, HttpOnly, path `/`, no domain. `same_site` is
/// `Lax` or `Strict`; `max_age` 0 deletes the cookie.
pub fn cookie(name: &str, value: &str, max_age: i64, same_site: &str) -> String {
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite={same_site}; Max-Age={max_age}")
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

/// A hidden form field.
pub fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
        escape(name),
        escape(value)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn csp_source_of_redirects() {
        assert_eq!(
            csp_source("https://app.example.org:8080/cb?x=1").as_deref(),
            Some("https://app.example.org:8080")
        );
        assert_eq!(
            csp_source("com.example.app:/cb").as_deref(),
            Some("com.example.app:")
        );
    }

    #[test]
    fn cookie_is_read_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-ward-authz=xyz"),
        );
        assert_eq!(
            read_cookie(&headers, PENDING_COOKIE).as_deref(),
            Some("xyz")
        );
        assert_eq!(read_cookie(&headers, SESSION_COOKIE), None);
    }
}
