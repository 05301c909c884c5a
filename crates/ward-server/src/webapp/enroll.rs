//! Enrolling the browser as a device, binding the web session to a key
//! the browser cannot export, and the security page (PIN and device).
//!
//! Design: `enroll.js` makes a P-256 key pair with WebCrypto
//! (`extractable: false`) and keeps the `CryptoKey` in IndexedDB; script
//! can use the key to sign but no script, extension page or disk copy of
//! the profile yields the private key bytes. The user redeems a one-time
//! device enrollment code (the same codes as phones, README "Devices") at
//! `POST /app/device`, with a DPoP-shaped proof (RFC 9449: `typ dpop+jwt`,
//! ES256, `htm`, `htu`, `iat`, `jti`) signed by the new key. The server
//! registers a device whose posture names the `browser` operating system
//! and binds the session to the key's RFC 7638 thumbprint.
//!
//! From then on the service worker (`sw.js`) reads the key from IndexedDB
//! and adds a fresh proof to every same-origin `/app` request.
//! [`super::lock::check`] verifies it with [`ward_auth::dpop`] against the
//! session's thumbprint. The method and URL must match, `iat` must be
//! within 60 seconds and each `jti` is accepted once. A request that carries the
//! cookie without a valid proof gets the lock page and locks the session,
//! so a stolen cookie alone shows no PHI and cannot unlock it either,
//! since the unlock needs the proof too.
//!
//! The proofs need no server nonce: each one is bound to one request by
//! `htm`, `htu` and its single-use `jti`, and the cookie never leaves
//! the `Secure`, `HttpOnly`, `SameSite=Strict` jar.
//!
//! NOTE: the replay cache of proof ids lives in one process, as for the
//! FHIR routes' DPoP proofs. Behind several replicas, a captured proof
//! could be replayed on another replica within its 60-second window.
//!
//! The registry records the device as a browser
//! ([`ward_device::DeviceKind::Browser`]), a kind set here at enrollment
//! and never taken from a posture report: phones may not report the
//! `browser` operating system. A browser has no posture, so the posture
//! rules do not apply to it; revocation does. The session's tokens name
//! the device: the token endpoint honours the in-process
//! `oauth::WebAppDevice` extension for this client only. So the device
//! gate checks the device on every FHIR read, and the audit records of
//! those reads carry its id, which the lost-device report
//! (`ward device report`) lists. Enrollment refreshes the session's tokens
//! at once, so the reads that follow it carry the device too.
//!
//! A browser device has no certificate: its record keeps the key
//! thumbprint where a phone's keeps the certificate thumbprint, so it can
//! never pass a mutual-TLS device check. Each later sign-in in the same
//! browser proves the key at the OAuth callback and binds the new session
//! to it. Revoking the device (`ward device revoke ID`) ends the web
//! session at its next request, and the authorization server's sign-in
//! session recorded with the device at its next use.

use std::sync::OnceLock;

use axum::extract::{Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;
use time::OffsetDateTime;
use ward_auth::dpop::{DpopVerifier, ProofRequest};
use ward_device::registry::{self, CertificateInfo, Enrollment};
use ward_device::{DeviceId, DeviceKind, Posture};

use super::html::{AppPage, WebForm, error_page, escape, hidden};
use super::lock::{self, json_reply, wants_json};
use super::session::{Stage, now_secs};
use super::signin::{self, Active, PeerAddr, blocking};
use crate::AppState;
use crate::device::events::{self, DeviceEvent};

/// The internal header that carries the request method to the page
/// handlers, which see only the headers.
const METHOD_HEADER: &str = "x-ward-app-method";
/// The internal header that carries the request path.
const PATH_HEADER: &str = "x-ward-app-path";
/// The header of a device proof.
const PROOF_HEADER: &str = "dpop";
/// The operating system recorded in a browser device's posture.
pub const BROWSER_OS: &str = ward_device::BROWSER_OS;
/// How long the key binding of a browser device is recorded as valid.
const BROWSER_KEY_DAYS: i64 = 365;

/// Verifies the proofs of enrolled browsers; one per process, so that
/// each proof id is accepted once.
fn verifier() -> &'static DpopVerifier {
    static VERIFIER: OnceLock<DpopVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        // Nonces are not used, so the nonce key only has to be unguessable.
        let secret = ward_auth::oauth::generate_token()
            .map(|token| token.to_string())
            .unwrap_or_else(|_| format!("{:?}", std::time::SystemTime::now()));
        DpopVerifier::new(secret.as_bytes()).with_required_nonce(false)
    })
}

/// Middleware on the web app routes: records the method and path of the
/// request in internal headers (after removing any the client sent), so
/// that the device proof can be checked where the page handlers load the
/// session.
pub async fn mark_request(mut request: Request, next: Next) -> Response {
    let method = HeaderValue::from_str(request.method().as_str()).ok();
    let path = HeaderValue::from_str(request.uri().path()).ok();
    let headers = request.headers_mut();
    headers.remove(METHOD_HEADER);
    headers.remove(PATH_HEADER);
    if let (Some(method), Some(path)) = (method, path) {
        headers.insert(METHOD_HEADER, method);
        headers.insert(PATH_HEADER, path);
    }
    next.run(request).await
}

/// Returns the method and path that [`mark_request`] recorded.
pub fn request_of(headers: &HeaderMap) -> Option<(&str, &str)> {
    let method = headers.get(METHOD_HEADER)?.to_str().ok()?;
    let path = headers.get(PATH_HEADER)?.to_str().ok()?;
    Some((method, path))
}

/// Verifies the request's device proof and returns its key thumbprint.
fn proof_jkt(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let (method, path) = request_of(headers)?;
    let mut proofs = headers.get_all(PROOF_HEADER).iter();
    let proof = proofs.next()?.to_str().ok()?;
    if proofs.next().is_some() {
        return None;
    }
    let origin = state.oauth.as_ref()?.settings().origin.clone();
    let uri = format!("{origin}{path}");
    let request = ProofRequest {
        method,
        uri: &uri,
        access_token: None,
        now: now_secs(),
    };
    match verifier().verify(proof, &request) {
        Ok(verified) => Some(verified.jkt),
        Err(error) => {
            tracing::info!(target: "ward::webapp", %error, "a web app device proof was rejected");
            None
        }
    }
}

/// Returns whether the request carries a valid proof of the key `jkt`.
pub fn proof_matches(state: &AppState, headers: &HeaderMap, jkt: &str) -> bool {
    proof_jkt(state, headers)
        .is_some_and(|proved| ward_crypto::constant_time_eq(proved.as_bytes(), jkt.as_bytes()))
}

/// Returns whether the browser device of the session was revoked or is
/// gone from the registry.
pub async fn device_revoked(state: &AppState, active: &Active) -> bool {
    let Some(id) = active.session.device.clone() else {
        return false;
    };
    let Ok(id) = DeviceId::parse(&id) else {
        return true;
    };
    let store = state.engine.store.clone();
    match blocking(move || registry::load(store.as_ref(), &id)).await {
        Ok(Ok(Some(device))) => device.revocation.is_some(),
        Ok(Ok(None)) => true,
        // A store failure shows up on the page's own reads; do not sign out.
        _ => false,
    }
}

/// Finds the active browser device of `user` whose key the request
/// proves, for binding a new session of an enrolled browser. Returns the
/// key thumbprint and the device id.
pub async fn rebind(state: &AppState, headers: &HeaderMap, user: &str) -> Option<(String, String)> {
    let jkt = proof_jkt(state, headers)?;
    let store = state.engine.store.clone();
    let thumbprint = jkt.clone();
    let owner = user.to_owned();
    let found = blocking(move || {
        let devices = registry::list(store.as_ref()).ok()?;
        devices
            .into_iter()
            .find(|device| {
                device.revocation.is_none()
                    && device.record.user_id == owner
                    && device.record.kind == DeviceKind::Browser
                    && ward_crypto::constant_time_eq(
                        device.record.certificate.thumbprint.as_bytes(),
                        thumbprint.as_bytes(),
                    )
            })
            .map(|device| device.id().as_str().to_owned())
    })
    .await
    .ok()??;
    tracing::info!(target: "ward::webapp", device = %found, "a new session of an enrolled browser is bound to its key");
    Some((jkt, found))
}

/// Replaces the session's tokens, issued before the browser enrolled, by
/// tokens that name `device`. When the refresh fails, the access token is
/// marked expired, so the next request refreshes again or signs out, and
/// no read is made without the device.
async fn rebind_tokens(
    state: &AppState,
    peer: Option<std::net::SocketAddr>,
    active: &mut Active,
    device: &str,
) {
    let refresh = match &active.session.stage {
        Stage::Active { refresh_token, .. } => refresh_token.clone(),
        Stage::Pending { .. } => None,
    };
    let refreshed = match refresh {
        Some(refresh) => signin::refreshed(state, peer, &refresh, Some(device)).await,
        None => None,
    };
    match refreshed {
        Some(stage) => active.session.stage = stage,
        None => {
            tracing::warn!(target: "ward::webapp", device, "the session's tokens could not be refreshed for the new browser device");
            if let Stage::Active { access_expires, .. } = &mut active.session.stage {
                *access_expires = 0;
            }
        }
    }
}

/// The query of the security page.
#[derive(Deserialize)]
pub struct SecurityQuery {
    pin: Option<String>,
    enrolled: Option<String>,
}

/// `GET /app/security`: the PIN and this browser's enrollment.
pub async fn security(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Query(query): Query<SecurityQuery>,
) -> Response {
    let active = match signin::require(&state, peer, &headers).await {
        Ok(active) => active,
        Err(response) => return response,
    };
    let has_pin = lock::pin_is_set(&state, &active).await;
    let mut page = security_page(&active, has_pin, None, StatusCode::OK);
    let notice = if query.pin.as_deref() == Some("saved") {
        Some("Your PIN is saved.")
    } else if query.enrolled.is_some() && active.session.jkt.is_some() {
        Some("This browser is enrolled.")
    } else {
        None
    };
    if let Some(notice) = notice {
        page = security_page_with_notice(&active, has_pin, notice);
    }
    page
}

fn security_page_with_notice(active: &Active, has_pin: bool, notice: &str) -> Response {
    security_body(active, has_pin, None, Some(notice), StatusCode::OK)
}

/// Renders the security page, with an error for the PIN form.
pub fn security_page(
    active: &Active,
    has_pin: bool,
    pin_error: Option<&str>,
    status: StatusCode,
) -> Response {
    security_body(active, has_pin, pin_error, None, status)
}

fn security_body(
    active: &Active,
    has_pin: bool,
    pin_error: Option<&str>,
    notice: Option<&str>,
    status: StatusCode,
) -> Response {
    let csrf = hidden("csrf", &active.session.csrf);
    let minutes = match (active.lock_secs + 59) / 60 {
        1 => "1 minute".to_owned(),
        n => format!("{n} minutes"),
    };
    let notice = notice
        .map(|text| format!("<p class=\"notice\" role=\"status\">{}</p>", escape(text)))
        .unwrap_or_default();
    let pin_state = if has_pin {
        "A PIN is set. Enter a new one to change it."
    } else {
        "You have not set a PIN yet. Without one, a locked app can only be signed out."
    };
    let (invalid, pin_error) = match pin_error {
        Some(message) => (
            " aria-invalid=\"true\" aria-describedby=\"pin-error\"",
            format!(
                "<p class=\"error\" id=\"pin-error\" role=\"alert\">{}</p>",
                escape(message)
            ),
        ),
        None => ("", String::new()),
    };
    let device = match (&active.session.jkt, &active.session.device) {
        (Some(_), Some(id)) => format!(
            "<p class=\"notice\" id=\"device-state\">This browser is enrolled as device \
             <code>{}</code>. Every request proves that it comes from this browser's key.</p>",
            escape(id)
        ),
        _ => format!(
            "<p id=\"device-state\">Enroll this browser with a one-time device code (ask \
             your administrator, or run <code>ward device enroll-code</code>). The browser \
             then keeps a key that cannot be copied out of it, and your session works only \
             with that key.</p>\
             <form method=\"post\" action=\"/app/device\" id=\"enroll-form\">{csrf}\
             <label for=\"enroll-code\">Enrollment code</label>\
             <input id=\"enroll-code\" name=\"code\" autocomplete=\"off\" autocapitalize=\"off\" \
             spellcheck=\"false\" maxlength=\"100\" required>\
             <label for=\"device-name\">Device name<span class=\"hint\">such as \
             \"Ward phone, ward 3\"</span></label>\
             <input id=\"device-name\" name=\"name\" maxlength=\"40\" value=\"Web browser\">\
             <button type=\"submit\" class=\"wide\">Enroll this browser</button></form>\
             <p id=\"enroll-status\" role=\"status\" aria-live=\"polite\"></p>\
             <noscript><p class=\"error\">Enrolling a browser needs JavaScript.</p></noscript>\
             <script src=\"/app/static/dpop.js\" defer></script>\
             <script src=\"/app/static/enroll.js\" defer></script>"
        ),
    };
    let body = format!(
        "<h1>Security</h1>{notice}\
         <section aria-labelledby=\"pin-title\"><h2 id=\"pin-title\">Lock PIN</h2>\
         <p>Ward locks after {minutes} without use. Your PIN unlocks it and keeps \
         what you were typing.</p><p id=\"pin-state\">{pin_state}</p>{pin_error}\
         <form method=\"post\" action=\"/app/pin\">{csrf}\
         <label for=\"new-pin\">New PIN<span class=\"hint\">6 to 12 digits</span></label>\
         <input id=\"new-pin\" name=\"pin\" type=\"password\" inputmode=\"numeric\" \
         autocomplete=\"new-password\" maxlength=\"12\" required{invalid}>\
         <label for=\"confirm-pin\">New PIN again</label>\
         <input id=\"confirm-pin\" name=\"confirm\" type=\"password\" inputmode=\"numeric\" \
         autocomplete=\"new-password\" maxlength=\"12\" required>\
         <button type=\"submit\" class=\"wide\">Save PIN</button></form></section>\
         <section aria-labelledby=\"device-title\"><h2 id=\"device-title\">This browser</h2>\
         {device}</section>\
         <section aria-labelledby=\"passkey-title\"><h2 id=\"passkey-title\">Passkey</h2>\
         <p>A passkey can replace the code from your authenticator app when you sign in.</p>\
         <p><a class=\"button wide\" href=\"/oauth/passkeys\">Add a passkey</a></p></section>"
    );
    AppPage::new(status, "Security", body)
        .signed_in(active.bar())
        .into_response()
}

/// The enrollment form.
#[derive(Deserialize)]
pub struct EnrollForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    name: String,
}

fn enroll_error(status: StatusCode, message: &str) -> Response {
    tracing::info!(target: "ward::webapp", status = status.as_u16(), message, "a browser enrollment was rejected");
    json_reply(status, &serde_json::json!({"error": message}))
}

/// `POST /app/device`: redeems a device enrollment code for this browser,
/// proved by a proof signed with its new key, and binds the session to
/// that key. Responds with JSON to `enroll.js`.
pub async fn enroll(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    WebForm(form): WebForm<EnrollForm>,
) -> Response {
    if !wants_json(&headers) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Enrolling a browser needs JavaScript. Turn it on and open the security page again.",
        );
    }
    let mut active = match signin::require(&state, peer, &headers).await {
        Ok(active) => active,
        Err(response) if response.status() == StatusCode::LOCKED => return response,
        Err(_) => {
            return json_reply(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({"signed_out": true, "location": "/app/signin"}),
            );
        }
    };

    if !active.session.csrf_matches(&form.csrf) {
        return enroll_error(
            StatusCode::FORBIDDEN,
            "This form has expired. Reload the page and try again.",
        );
    }
    if active.session.jkt.is_some() {
        return enroll_error(StatusCode::CONFLICT, "This browser is already enrolled.");
    }

    let Some(devices) = state.devices.clone() else {
        return enroll_error(
            StatusCode::NOT_FOUND,
            "This server runs without device enrollment.",
        );
    };
    let Some(user) = active.session.user.clone() else {
        return enroll_error(
            StatusCode::CONFLICT,
            "This session does not name its user. Sign out and sign in again.",
        );
    };

    let Some(jkt) = proof_jkt(&state, &headers) else {
        return enroll_error(
            StatusCode::BAD_REQUEST,
            "The request did not prove this browser's new key. Reload the page and try again.",
        );
    };

    let code = form.code.trim().to_owned();
    if code.is_empty() {
        return enroll_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Enter the enrollment code.",
        );
    }

    let label = form.name.trim();
    let label = if label.is_empty() {
        "Web browser"
    } else {
        label
    };
    let name: String = if label.to_ascii_lowercase().contains("browser") {
        label.chars().take(registry::MAX_NAME_LEN).collect()
    } else {
        format!("Web browser: {label}")
            .chars()
            .take(registry::MAX_NAME_LEN)
            .collect()
    };
    if let Err(error) = registry::check_name(&name) {
        return enroll_error(StatusCode::UNPROCESSABLE_ENTITY, &error.to_string());
    }

    let store = state.engine.store.clone();
    let policy = devices.policy.clone();
    let thumbprint = jkt.clone();
    let owner = user.clone();
    let result = blocking(move || {
        let now = OffsetDateTime::now_utc();
        let record = match ward_device::redeem_code(store.as_ref(), &code, now) {
            Ok(record) => record,
            Err(error) => return Err(error.to_string()),
        };
        if record.user_id != owner {
            // A code for another user stays usable by that user.
            let _ = ward_device::restore_code(store.as_ref(), &record);
            return Err("This enrollment code was made for another user.".to_owned());
        }
        let enrollment = Enrollment {
            id: DeviceId::generate(),
            code: &record,
            name: &name,
            posture: Posture {
                os: BROWSER_OS.to_owned(),
                os_version: "1.0".to_owned(),
                // A browser cannot report these, and browser devices are
                // exempt from the posture rules.
                screen_lock: false,
                storage_encrypted: false,
                rooted: false,
                app_version: env!("CARGO_PKG_VERSION").to_owned(),
            },
            certificate: CertificateInfo {
                serial: "none".to_owned(),
                thumbprint,
                not_after: now + time::Duration::days(BROWSER_KEY_DAYS),
            },
        };
        registry::enroll_as(
            store.as_ref(),
            enrollment,
            DeviceKind::Browser,
            &policy,
            now,
        )
        .map(|device| device.id().as_str().to_owned())
        .map_err(|error| error.to_string())
    })
    .await;

    let device_id = match result {
        Ok(Ok(id)) => id,
        Ok(Err(reason)) => {
            let actor = events::actor(&user, None, peer.map(|p| p.ip()));
            let _ = events::record(
                &state,
                DeviceEvent::EnrollRejected,
                &actor,
                &[("reason", reason.clone()), ("kind", BROWSER_OS.to_owned())],
            )
            .await;
            return enroll_error(StatusCode::UNPROCESSABLE_ENTITY, &reason);
        }
        Err(response) => return response,
    };

    let actor = events::actor(&user, Some(&device_id), peer.map(|p| p.ip()));
    if let Err(error) = events::record(
        &state,
        DeviceEvent::Enrolled,
        &actor,
        &[("kind", BROWSER_OS.to_owned())],
    )
    .await
    {
        return error.into_response();
    }

    active.session.jkt = Some(jkt);
    active.session.device = Some(device_id.clone());
    rebind_tokens(&state, peer, &mut active, &device_id).await;
    if let Err(response) = active.save(&state).await {
        return response;
    }
    // Revoking the device ends the sign-in session of this browser too.
    if let (Some(signin), Some(server)) = (active.session.signin.clone(), state.oauth.clone()) {
        let store = state.engine.store.clone();
        let device = device_id.clone();
        let settings = server.settings();
        let limits = (
            settings.session_idle.whole_seconds(),
            settings.session_max.whole_seconds(),
        );
        let _ = blocking(move || {
            crate::oauth::identity::mark_session_device(store.as_ref(), &signin, &device, limits)
        })
        .await;
    }
    tracing::info!(target: "ward::webapp", device = %device_id, "a browser enrolled as a device");
    json_reply(
        StatusCode::CREATED,
        &serde_json::json!({"device_id": device_id}),
    )
}
