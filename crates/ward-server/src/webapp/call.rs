//! In-process requests to this server's own FHIR, OAuth, audit, device
//! admin and exchange (`$send-message`, outbox status) routes. The web
//! app never reads the store for clinical data itself: it sends the
//! user's access token to the FHIR routes, which authenticate it, check
//! scopes and the access policy, and write the audit record as for any
//! client.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use serde_json::Value;
use tower::ServiceExt as _;

use crate::AppState;

/// The largest FHIR reply the web app reads.
const MAX_REPLY_BYTES: usize = 8 * 1024 * 1024;

/// A reply from an in-process request.
pub struct Reply {
    /// The HTTP status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The JSON body, or `Null` when there is none or it is not JSON.
    pub body: Value,
}

/// A request to send in-process.
pub struct Call<'a> {
    /// The method.
    pub method: Method,
    /// Path and query, such as `/fhir/Patient?name=x`.
    pub uri: &'a str,
    /// The access token, if any.
    pub token: Option<&'a str>,
    /// The body and its content type.
    pub body: Option<(Vec<u8>, &'static str)>,
    /// Extra headers, such as the browser's cookies for sign-out.
    pub extra: HeaderMap,
}

impl<'a> Call<'a> {
    /// A GET of `uri` with the user's access token.
    pub fn get(uri: &'a str, token: &'a str) -> Self {
        Self {
            method: Method::GET,
            uri,
            token: Some(token),
            body: None,
            extra: HeaderMap::new(),
        }
    }

    /// A POST of a form to `uri` without a token.
    pub fn form(uri: &'a str, pairs: &[(&str, &str)]) -> Self {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        Self {
            method: Method::POST,
            uri,
            token: None,
            body: Some((body.into_bytes(), "application/x-www-form-urlencoded")),
            extra: HeaderMap::new(),
        }
    }

    /// A POST of a FHIR resource to `uri` with the user's access token.
    pub fn post_json(uri: &'a str, token: &'a str, resource: &Value) -> Self {
        Self {
            method: Method::POST,
            uri,
            token: Some(token),
            body: Some((resource.to_string().into_bytes(), "application/fhir+json")),
            extra: HeaderMap::new(),
        }
    }
}

/// Sends `call` to the FHIR and OAuth routes of this server, as if it came
/// from `peer`.
pub async fn send(state: &AppState, peer: Option<SocketAddr>, call: Call<'_>) -> Reply {
    send_for_device(state, peer, call, None).await
}

/// Sends `call` as [`send`] does, with `device` as a request extension.
/// A token request of a session bound to a browser device sets it, so the
/// token endpoint names that device in the access token (see
/// `oauth::WebAppDevice`).
pub async fn send_for_device(
    state: &AppState,
    peer: Option<SocketAddr>,
    call: Call<'_>,
    device: Option<&str>,
) -> Reply {
    let router = crate::fhir::routes::router()
        .merge(crate::oauth::router())
        .merge(crate::audit::routes::router())
        .merge(crate::device::router())
        .merge(crate::exchange::router())
        .with_state(state.clone());
    let (bytes, content_type) = call.body.unwrap_or((Vec::new(), ""));
    let mut request = Request::new(Body::from(bytes));
    *request.method_mut() = call.method;
    match call.uri.parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => return failure("the request URI is invalid"),
    }
    let headers = request.headers_mut();
    *headers = call.extra;
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/fhir+json"),
    );
    if !content_type.is_empty() {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    if let Some(token) = call.token {
        match HeaderValue::from_str(&format!("Bearer {token}")) {
            Ok(value) => {
                headers.insert(header::AUTHORIZATION, value);
            }
            Err(_) => return failure("the access token is not a valid header value"),
        }
    }
    if let Some(peer) = peer {
        request.extensions_mut().insert(ConnectInfo(peer));
    }
    if let Some(device) = device {
        request
            .extensions_mut()
            .insert(crate::oauth::WebAppDevice(device.to_owned()));
    }
    let response: Response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let body = match axum::body::to_bytes(body, MAX_REPLY_BYTES).await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        Err(error) => {
            tracing::error!(target: "ward::webapp", %error, "reading an in-process reply failed");
            return failure("the reply could not be read");
        }
    };
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

fn failure(message: &str) -> Reply {
    tracing::error!(target: "ward::webapp", message, "an in-process request failed");
    Reply {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        headers: HeaderMap::new(),
        body: Value::Null,
    }
}

/// Returns the resources of a search Bundle.
pub fn resources(bundle: &Value) -> Vec<&Value> {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter(|entry| {
                    entry.pointer("/search/mode").and_then(Value::as_str) != Some("outcome")
                })
                .filter_map(|entry| entry.get("resource"))
                .collect()
        })
        .unwrap_or_default()
}
