//! HTTPS to one Ward server: trusts only the organization CA, presents
//! the device certificate when there is one, follows no redirects, and
//! reports the bytes of every response body so sync can count them.

use std::time::Duration;

use reqwest::Method;
use reqwest::blocking::{Client as HttpClient, RequestBuilder};
use reqwest::header::HeaderMap;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::error::{MobileError, MobileResult};

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A response read to its end.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    /// The body as JSON; an empty or non-JSON body is `Null`.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// A header as text, or "" when missing.
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The best error text in the body: an OAuth `error_description`, the
    /// diagnostics of an OperationOutcome, or the start of the text.
    pub(crate) fn detail(&self) -> String {
        let json = self.json();
        if let Some(text) = json["error_description"].as_str() {
            return text.to_owned();
        }
        if let Some(text) = json["error"].as_str() {
            return text.to_owned();
        }
        if let Some(issues) = json["issue"].as_array() {
            let texts: Vec<&str> = issues
                .iter()
                .filter_map(|i| i["diagnostics"].as_str().or(i["details"]["text"].as_str()))
                .collect();
            if !texts.is_empty() {
                return texts.join("; ");
            }
        }
        let text = String::from_utf8_lossy(&self.body);
        text.chars().take(200).collect()
    }

    /// Maps 401 and 403 to their errors and any other non-2xx status to
    /// [`MobileError::Server`].
    pub(crate) fn check(self, operation: &str) -> MobileResult<Reply> {
        match self.status {
            200..=299 => Ok(self),
            401 => Err(MobileError::Unauthorized {
                detail: self.detail(),
            }),
            403 => Err(MobileError::Forbidden {
                detail: self.detail(),
            }),
            status => Err(MobileError::Server {
                operation: operation.to_owned(),
                status,
                detail: self.detail(),
            }),
        }
    }
}

/// A TLS client for one server.
pub(crate) struct Transport {
    http: HttpClient,
    origin: String,
}

impl Transport {
    /// Builds a client for `origin` (`https://host:port`) trusting only
    /// `ca_pem`, presenting `identity` (device key and certificate as PEM)
    /// when given.
    pub(crate) fn new(
        origin: &str,
        ca_pem: &str,
        identity: Option<&Zeroizing<String>>,
    ) -> MobileResult<Transport> {
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).map_err(|e| {
            MobileError::invalid("CA certificate", format!("not a PEM certificate: {e}"))
        })?;
        let mut builder = HttpClient::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .user_agent(concat!("ward-mobile/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = identity {
            let identity = reqwest::Identity::from_pem(pem.as_bytes())
                .map_err(|e| MobileError::crypto(format!("loading the device certificate: {e}")))?;
            builder = builder.identity(identity);
        }
        let http = builder
            .build()
            .map_err(|e| MobileError::crypto(format!("building the TLS client: {e}")))?;
        Ok(Transport {
            http,
            origin: origin.trim_end_matches('/').to_owned(),
        })
    }

    /// The server origin.
    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    /// The URL of `path`: absolute URLs pass through, others are joined to
    /// the origin.
    pub(crate) fn url(&self, path: &str) -> String {
        if path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.origin)
        }
    }

    /// A request builder for `method` on `path`.
    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path))
    }

    /// Sends a request and reads the whole body.
    pub(crate) fn send(&self, builder: RequestBuilder, operation: &str) -> MobileResult<Reply> {
        let network = |e: reqwest::Error| MobileError::Network {
            operation: operation.to_owned(),
            detail: error_chain(&e),
        };
        let response = builder.send().map_err(network)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().map_err(network)?.to_vec();
        tracing::debug!(target: "ward_mobile::http", operation, status, bytes = body.len(), "response");
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// Sends `body` as JSON to `path` and reads the reply.
    pub(crate) fn post_json(
        &self,
        path: &str,
        body: &Value,
        bearer: Option<&str>,
        operation: &str,
    ) -> MobileResult<Reply> {
        let mut builder = self
            .request(Method::POST, path)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(token) = bearer {
            builder = builder.bearer_auth(token);
        }
        self.send(builder, operation)
    }
}

/// The error and its sources on one line, which names TLS failures such
/// as an unknown CA or a rejected client certificate.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Cookies set by the sign-in pages, sent back on the next form post.
#[derive(Default)]
pub(crate) struct CookieJar {
    cookies: Vec<(String, Zeroizing<String>)>,
}

impl CookieJar {
    /// Stores the cookies of every `Set-Cookie` header in `reply`.
    pub(crate) fn store(&mut self, reply: &Reply) {
        for value in reply.headers.get_all("set-cookie") {
            let Ok(text) = value.to_str() else { continue };
            let pair = text.split(';').next().unwrap_or("");
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let name = name.trim().to_owned();
            self.cookies.retain(|(n, _)| *n != name);
            if !value.is_empty() {
                self.cookies
                    .push((name, Zeroizing::new(value.trim().to_owned())));
            }
        }
    }

    /// The `Cookie` header value.
    pub(crate) fn header(&self) -> Zeroizing<String> {
        let pairs: Vec<String> = self
            .cookies
            .iter()
            .map(|(name, value)| format!("{name}={}", value.as_str()))
            .collect();
        Zeroizing::new(pairs.join("; "))
    }
}
