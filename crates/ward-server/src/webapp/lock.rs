//! The idle lock of the web app and the PIN or passkey that unlocks it.
//!
//! A session that has not been used for `app_lock` seconds (five minutes
//! by default, `ward serve --app-lock`) is locked on the server. Every
//! `/app` page then responds with the lock page, which carries no PHI, so
//! a reload or another tab shows nothing of the patient. Only the user's
//! PIN at `POST /app/unlock`, or a passkey, opens it again, with the
//! device proof of an enrolled browser (see [`super::enroll`]). After the
//! longer `session_idle` the session signs out.
//!
//! In the browser, `app.js` shows a warning with a countdown before the
//! lock, then removes the page's `<main>` from the DOM and keeps it in
//! memory only, so a half-typed form comes back intact after the unlock.
//! Without JavaScript a `<noscript>` refresh opens the lock page instead.
//!
//! The PIN is per user, 6 to 12 digits, stored only as an Argon2id hash
//! (the same parameters as passwords) under the digest of the user id.
//! Wrong PINs are throttled (1, 2, 4 and 8 seconds) and the fifth wrong
//! PIN signs the session out.
//!
//! Locking ends the authorization server's sign-in session
//! (`__Host-ward-session`) the app session came from, and a new sign-in
//! at `/app/signin` always requires the password and second factor, so
//! neither cookie opens a locked app without the PIN.
//!
//! A passkey of the user (added at `/oauth/passkeys`) unlocks the app
//! too, when the server origin has a DNS name: the challenge is kept in
//! the session record and used once, and a refused assertion counts as a
//! wrong PIN.

use std::net::SocketAddr;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use ward_auth::TokenDigest;
use ward_auth::password::{self, Verification};
use webauthn_rs::prelude::{PublicKeyCredential, Webauthn, WebauthnBuilder};

use super::html::{AppPage, WebForm, error_page, escape, hidden, see_other};
use super::session::now_secs;
use super::signin::{self, Active, PeerAddr, blocking, internal};
use crate::AppState;
use crate::oauth::identity::{self, digest_key};

/// The store namespace of the users' web app PINs.
pub const NS_PIN: &str = "webapp.pin";
/// The shortest PIN accepted.
pub const MIN_PIN_LEN: usize = 6;
/// The longest PIN accepted.
pub const MAX_PIN_LEN: usize = 12;
/// Wrong PINs after which the session signs out.
pub const MAX_PIN_FAILURES: u32 = 5;

/// A user's PIN, as an Argon2id PHC string.
#[derive(Serialize, Deserialize)]
struct PinRecord {
    phc: String,
    set_at: i64,
}

fn pin_key(user: &str) -> String {
    digest_key(&TokenDigest::of(user))
}

/// The reason a page shows the lock page.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The session was not used for the lock period.
    Idle,
    /// The browser is enrolled and the request carried no valid proof of
    /// its key.
    Proof,
}

/// Returns whether the client accepts a JSON response (the page script does).
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.contains("application/json"))
}

/// Builds a JSON reply that is never cached.
pub fn json_reply(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Checks the lock of a live session for a page: an enrolled browser must
/// prove its key, a revoked browser device signs out, and a locked or idle
/// session gets the lock page.
///
/// # Errors
///
/// The lock page (423), or the response that ends the session.
pub async fn check(
    state: &AppState,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    active: &mut Active,
) -> Result<(), Response> {
    if active.session.device.is_some() && super::enroll::device_revoked(state, active).await {
        return Err(end_with(state, peer, headers, active, "device").await);
    }
    if let Some(jkt) = active.session.jkt.clone()
        && !super::enroll::proof_matches(state, headers, &jkt)
    {
        tracing::warn!(target: "ward::webapp", "a request to an enrolled web session had no valid device proof; locking the session");
        lock_session(state, headers, active).await?;
        return Err(lock_reply(state, active, headers, Reason::Proof, None).await);
    }
    if active.session.locked || now_secs() - active.session.last_seen >= active.lock_secs {
        if !active.session.locked {
            lock_session(state, headers, active).await?;
        }
        return Err(lock_reply(state, active, headers, Reason::Idle, None).await);
    }
    Ok(())
}

/// Marks the session locked and saves it, keeping `last_seen`. Also ends
/// the sign-in session it was started with and the one the request's
/// cookie names, so no sign-in cookie works while the app is locked.
async fn lock_session(
    state: &AppState,
    headers: &HeaderMap,
    active: &mut Active,
) -> Result<(), Response> {
    active.session.locked = true;
    let signins: Vec<String> = active
        .session
        .signin
        .iter()
        .cloned()
        .chain(super::session::signin_key_of(headers))
        .collect();
    if !signins.is_empty() {
        let store = state.engine.store.clone();
        let _ = blocking(move || {
            for key in signins {
                if let Err(error) = identity::end_session(store.as_ref(), &key) {
                    tracing::error!(target: "ward::webapp", %error, "ending the sign-in session of a locked app failed");
                }
            }
        })
        .await;
    }
    active.save(state).await
}

/// Ends the session (as sign-out does) and names `reason` on the
/// signed-out page; a JSON client gets the place to go instead.
async fn end_with(
    state: &AppState,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    active: &Active,
    reason: &'static str,
) -> Response {
    let location = format!("/app/signed-out?reason={reason}");
    let mut ended = signin::end(state, peer, headers, &active.key, &active.session).await;
    if let Ok(value) = HeaderValue::from_str(&location) {
        ended.headers_mut().insert(header::LOCATION, value);
    }
    if !wants_json(headers) {
        return ended;
    }
    let mut reply = json_reply(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({"signed_out": true, "location": location}),
    );
    for cookie in ended.headers().get_all(header::SET_COOKIE) {
        reply
            .headers_mut()
            .append(header::SET_COOKIE, cookie.clone());
    }
    reply
}

/// Returns whether the session's user has set a PIN.
async fn has_pin(state: &AppState, active: &Active) -> bool {
    load_pin(state, active).await.is_some()
}

async fn load_pin(state: &AppState, active: &Active) -> Option<PinRecord> {
    let user = active.session.user.clone()?;
    let store = state.engine.store.clone();
    blocking(move || identity::read::<PinRecord>(store.as_ref(), NS_PIN, &pin_key(&user)))
        .await
        .ok()?
        .ok()?
}

/// Returns whether the session's user has set a PIN, for the security page.
pub async fn pin_is_set(state: &AppState, active: &Active) -> bool {
    has_pin(state, active).await
}

/// The page to return to after an unlock: the requested `/app` page for a
/// GET, else the patient list. Only same-app paths are accepted.
fn safe_next(path: Option<&str>) -> String {
    match path {
        Some(path)
            if path.starts_with("/app")
                && !path.starts_with("//")
                && !path.contains("..")
                && !path.starts_with("/app/lock")
                && !path.starts_with("/app/unlock")
                && path.len() <= 200
                && path
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b)) =>
        {
            path.to_owned()
        }
        _ => "/app".to_owned(),
    }
}

fn next_of(headers: &HeaderMap) -> String {
    match super::enroll::request_of(headers) {
        Some(("GET", path)) => safe_next(Some(path)),
        _ => "/app".to_owned(),
    }
}

/// Builds the lock reply: JSON for the page script, else the lock page.
async fn lock_reply(
    state: &AppState,
    active: &Active,
    headers: &HeaderMap,
    reason: Reason,
    error: Option<&str>,
) -> Response {
    if wants_json(headers) {
        return json_reply(
            StatusCode::LOCKED,
            &serde_json::json!({"locked": true, "error": error}),
        );
    }
    let has_pin = has_pin(state, active).await;
    lock_page(active, reason, &next_of(headers), error, has_pin)
}

/// Renders the lock page: no PHI, a PIN form and a sign-out button.
fn lock_page(
    active: &Active,
    reason: Reason,
    next: &str,
    error: Option<&str>,
    has_pin: bool,
) -> Response {
    let csrf = hidden("csrf", &active.session.csrf);
    let message = match (reason, has_pin) {
        (Reason::Proof, _) => {
            "This browser did not prove that it holds its device key, so Ward locked this \
             session. Enter your PIN in the enrolled browser, or sign out."
        }
        (Reason::Idle, true) => {
            "Ward locked itself because it was not used for a while. \
             Enter your PIN to continue."
        }
        (Reason::Idle, false) => {
            "Ward locked itself because it was not used for a while. \
             You have not set a PIN, so sign out and sign in again."
        }
    };
    let error = error
        .map(|text| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(text)))
        .unwrap_or_default();
    let form = if has_pin {
        format!(
            "<form method=\"post\" action=\"/app/unlock\" id=\"unlock-form\">{csrf}{next}\
             <label for=\"pin\">PIN</label>\
             <input id=\"pin\" name=\"pin\" type=\"password\" inputmode=\"numeric\" \
             autocomplete=\"off\" maxlength=\"{MAX_PIN_LEN}\" required>\
             <button type=\"submit\" class=\"wide\">Unlock</button></form>",
            next = hidden("next", next),
        )
    } else {
        String::new()
    };
    AppPage::new(
        StatusCode::LOCKED,
        "Locked",
        format!(
            "<section class=\"lock\" aria-labelledby=\"lock-title\">\
             <h1 id=\"lock-title\">Ward is locked</h1>\
             <p class=\"notice\" role=\"status\">{message}</p>{error}{form}\
             <form method=\"post\" action=\"/app/signout\" class=\"lock-signout\">{csrf}\
             <button type=\"submit\" class=\"secondary wide\">Sign out</button></form></section>"
        ),
    )
    .into_response()
}

/// The query of `GET /app/lock`.
#[derive(Deserialize)]
pub struct LockQuery {
    next: Option<String>,
}

/// `GET /app/lock`: where an idle page without JavaScript sends itself.
/// Locks the session and shows the lock page. A GET is safe here because
/// the cookie is `SameSite=Strict`, so another site cannot lock a session.
pub async fn lock_get(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Query(query): Query<LockQuery>,
) -> Response {
    let mut active = match signin::load_live(&state, peer, &headers).await {
        Ok(active) => active,
        Err(response) => return response,
    };
    if let Err(response) = lock_session(&state, &headers, &mut active).await {
        return response;
    }
    let has_pin = has_pin(&state, &active).await;
    lock_page(
        &active,
        Reason::Idle,
        &safe_next(query.next.as_deref()),
        None,
        has_pin,
    )
}

/// Builds the JSON reply to a page script whose session has ended: 401
/// with the page to show instead.
fn session_ended_json() -> Response {
    json_reply(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({"signed_out": true, "location": "/app/signed-out?reason=timeout"}),
    )
}

/// Builds the JSON reply to a page script whose CSRF token no longer
/// matches: 403.
fn page_expired_json() -> Response {
    json_reply(
        StatusCode::FORBIDDEN,
        &serde_json::json!({"error": "This page has expired. Reload it."}),
    )
}

/// A form that carries only the CSRF token.
#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// `POST /app/lock`: the page script locks the session when it locks the
/// screen, so a reload shows the lock page at once.
pub async fn lock_post(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    WebForm(form): WebForm<CsrfOnly>,
) -> Response {
    let mut active = match signin::load_live(&state, peer, &headers).await {
        Ok(active) => active,
        Err(_) => {
            return json_reply(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({"signed_out": true}),
            );
        }
    };
    if !active.session.csrf_matches(&form.csrf) {
        return page_expired_json();
    }
    match lock_session(&state, &headers, &mut active).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(response) => response,
    }
}

/// `POST /app/alive`: the page script reports that the user is working in
/// the page (typing, tapping) without loading another page, so the
/// session does not lock under them. Responds with 204, 423 when the
/// session is locked, or 401 when it has ended.
pub async fn alive(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    WebForm(form): WebForm<CsrfOnly>,
) -> Response {
    let Ok(mut active) = signin::load_live(&state, peer, &headers).await else {
        return session_ended_json();
    };
    if !active.session.csrf_matches(&form.csrf) {
        tracing::info!(target: "ward::webapp", "a keep-alive with an expired CSRF token was rejected");
        return page_expired_json();
    }
    if let Err(response) = check(&state, peer, &headers, &mut active).await {
        return response;
    }
    match signin::touch(&state, peer, active).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(_) => session_ended_json(),
    }
}

/// The unlock form.
#[derive(Deserialize)]
pub struct UnlockForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    pin: String,
    #[serde(default)]
    next: String,
}

/// `POST /app/unlock`: checks the PIN (and the device proof of an enrolled
/// browser) and unlocks the session. The page script gets JSON; a form
/// without script gets a redirect to the page it came from.
pub async fn unlock(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    WebForm(form): WebForm<UnlockForm>,
) -> Response {
    let json = wants_json(&headers);
    let mut active = match signin::load_live(&state, peer, &headers).await {
        Ok(active) => active,
        Err(response) if json => {
            let mut reply = session_ended_json();
            for cookie in response.headers().get_all(header::SET_COOKIE) {
                reply
                    .headers_mut()
                    .append(header::SET_COOKIE, cookie.clone());
            }
            return reply;
        }
        Err(response) => return response,
    };

    let next = safe_next(Some(&form.next));
    let reject = |active: &Active, status: StatusCode, message: &str, has_pin: bool| {
        tracing::info!(target: "ward::webapp", status = status.as_u16(), "a web app unlock was rejected");
        if json {
            json_reply(status, &serde_json::json!({"error": message}))
        } else {
            let mut page = lock_page(active, Reason::Idle, &next, Some(message), has_pin);
            *page.status_mut() = status;
            page
        }
    };

    if !active.session.csrf_matches(&form.csrf) {
        return reject(
            &active,
            StatusCode::FORBIDDEN,
            "This form has expired. Reload the page and enter your PIN again.",
            true,
        );
    }

    if active.session.device.is_some() && super::enroll::device_revoked(&state, &active).await {
        return end_with(&state, peer, &headers, &active, "device").await;
    }
    if let Some(jkt) = active.session.jkt.clone()
        && !super::enroll::proof_matches(&state, &headers, &jkt)
    {
        return reject(
            &active,
            StatusCode::FORBIDDEN,
            "This browser did not prove that it holds its device key. Unlock in the \
             enrolled browser, or sign out.",
            true,
        );
    }

    let now = now_secs();
    if now < active.session.pin_next_try {
        let wait = active.session.pin_next_try - now;
        return reject(
            &active,
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Wait {wait} seconds, then enter your PIN again."),
            true,
        );
    }

    let Some(record) = load_pin(&state, &active).await else {
        return reject(
            &active,
            StatusCode::CONFLICT,
            "You have not set a PIN, so this session cannot be unlocked. Sign out and sign \
             in again.",
            false,
        );
    };

    let pin = form.pin.trim().to_owned();
    let phc = record.phc.clone();
    let valid = match blocking(move || password::verify(&pin, &phc)).await {
        Ok(Ok(Verification::Valid { .. })) => true,
        Ok(Ok(Verification::Invalid)) => false,
        Ok(Err(_)) => return internal("checking the PIN"),
        Err(response) => return response,
    };

    if !valid {
        let left = match record_failure(&state, peer, &headers, &mut active).await {
            Ok(left) => left,
            Err(response) => return response,
        };
        return reject(
            &active,
            StatusCode::UNAUTHORIZED,
            &format!(
                "That PIN is wrong. After {left} more wrong {} you will be signed out.",
                if left == 1 { "PIN" } else { "PINs" }
            ),
            true,
        );
    }

    unlocked(&state, peer, active, json, &next, "pin").await
}

/// Builds the WebAuthn relying party of this server's origin, as the
/// sign-in pages do; `None` on an IP address, where browsers refuse
/// passkeys.
fn relying_party(state: &AppState) -> Option<Webauthn> {
    let origin = url::Url::parse(&state.oauth.as_ref()?.settings().origin).ok()?;
    let rp_id = origin.domain()?.to_owned();
    WebauthnBuilder::new(&rp_id, &origin)
        .ok()?
        .rp_name("Ward")
        .build()
        .ok()
}

fn passkey_error(status: StatusCode, message: &str) -> Response {
    tracing::info!(target: "ward::webapp", status = status.as_u16(), message, "a passkey unlock step was rejected");
    json_reply(status, &serde_json::json!({"error": message}))
}

/// Loads the locked session for a passkey step and checks the form's CSRF
/// token and the device proof.
async fn passkey_session(
    state: &AppState,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<Active, Response> {
    let active = signin::load_live(state, peer, headers)
        .await
        .map_err(|_| session_ended_json())?;
    if !active.session.csrf_matches(csrf) {
        return Err(passkey_error(
            StatusCode::FORBIDDEN,
            "This page has expired. Reload it and try again.",
        ));
    }
    if let Some(jkt) = active.session.jkt.clone()
        && !super::enroll::proof_matches(state, headers, &jkt)
    {
        return Err(passkey_error(
            StatusCode::FORBIDDEN,
            "This browser did not prove that it holds its device key.",
        ));
    }
    if now_secs() < active.session.pin_next_try {
        let wait = active.session.pin_next_try - now_secs();
        return Err(passkey_error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Wait {wait} seconds, then try again."),
        ));
    }
    Ok(active)
}

/// `POST /app/unlock/passkey/start`: the WebAuthn options for unlocking
/// with one of the user's passkeys.
pub async fn passkey_start(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    WebForm(form): WebForm<CsrfOnly>,
) -> Response {
    let mut active = match passkey_session(&state, peer, &headers, &form.csrf).await {
        Ok(active) => active,
        Err(response) => return response,
    };

    let Some(webauthn) = relying_party(&state) else {
        return passkey_error(
            StatusCode::NOT_FOUND,
            "Passkeys need a server address with a DNS name. Use your PIN.",
        );
    };
    let Some(user_id) = active.session.user.clone() else {
        return passkey_error(StatusCode::CONFLICT, "Sign out and sign in again.");
    };

    let store = state.engine.store.clone();
    let user = blocking(move || identity::load_user(store.as_ref(), &user_id)).await;
    let passkeys: Vec<_> = match user {
        Ok(Ok(Some(user))) => user.passkeys.iter().map(|r| r.passkey.clone()).collect(),
        _ => Vec::new(),
    };

    if passkeys.is_empty() {
        return passkey_error(
            StatusCode::CONFLICT,
            "You have no passkey yet. Use your PIN, and add a passkey on the Security page.",
        );
    }

    let Ok((options, ceremony)) = webauthn.start_passkey_authentication(&passkeys) else {
        return internal("starting a passkey unlock");
    };
    let (Ok(ceremony), Ok(options)) = (
        serde_json::to_value(&ceremony),
        serde_json::to_value(&options),
    ) else {
        return internal("encoding a passkey unlock");
    };

    active.session.passkey_challenge = Some(ceremony);
    if let Err(response) = active.save(&state).await {
        return response;
    }
    json_reply(StatusCode::OK, &options)
}

/// The form of a passkey unlock: the assertion as JSON.
#[derive(Deserialize)]
pub struct PasskeyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    credential: String,
}

/// `POST /app/unlock/passkey/finish`: checks the assertion against the
/// session's challenge (used once) and unlocks the session.
pub async fn passkey_finish(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    WebForm(form): WebForm<PasskeyForm>,
) -> Response {
    let mut active = match passkey_session(&state, peer, &headers, &form.csrf).await {
        Ok(active) => active,
        Err(response) => return response,
    };

    let challenge = active.session.passkey_challenge.take();
    if let Err(response) = active.save(&state).await {
        return response;
    }
    let (Some(webauthn), Some(user_id)) = (relying_party(&state), active.session.user.clone())
    else {
        return passkey_error(StatusCode::CONFLICT, "Use your PIN.");
    };

    let ceremony = challenge.and_then(|value| serde_json::from_value(value).ok());
    let credential = serde_json::from_str::<PublicKeyCredential>(&form.credential).ok();
    let store = state.engine.store.clone();
    let verified = match (ceremony, credential) {
        (Some(ceremony), Some(credential)) => {
            let checked = webauthn.finish_passkey_authentication(&credential, &ceremony);
            match checked {
                Ok(result) => blocking(move || {
                    let Ok(Some(mut user)) = identity::load_user(store.as_ref(), &user_id) else {
                        return false;
                    };
                    let mut known = false;
                    for record in &mut user.passkeys {
                        if record.passkey.cred_id() == result.cred_id() {
                            known = true;
                            record.passkey.update_credential(&result);
                        }
                    }
                    known
                        && (!result.needs_update()
                            || identity::save_user(store.as_ref(), &user).is_ok())
                })
                .await
                .unwrap_or(false),
                Err(error) => {
                    tracing::info!(target: "ward::webapp", %error, "a passkey unlock was rejected");
                    false
                }
            }
        }
        _ => false,
    };

    if !verified {
        return match record_failure(&state, peer, &headers, &mut active).await {
            Ok(left) => passkey_error(
                StatusCode::UNAUTHORIZED,
                &format!(
                    "The passkey was not accepted. After {left} more failed {} you will be \
                     signed out.",
                    if left == 1 { "try" } else { "tries" }
                ),
            ),
            Err(response) => response,
        };
    }

    unlocked(&state, peer, active, true, "/app", "passkey").await
}

/// Counts a failed unlock and backs off the next try; the last allowed
/// failure ends the session.
///
/// # Errors
///
/// The response that ends the session, or a store failure page.
async fn record_failure(
    state: &AppState,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    active: &mut Active,
) -> Result<u32, Response> {
    active.session.pin_failures = active.session.pin_failures.saturating_add(1);
    let failures = active.session.pin_failures;
    if failures >= MAX_PIN_FAILURES {
        tracing::warn!(target: "ward::webapp", failures, "too many failed unlocks; ending the web session");
        return Err(end_with(state, peer, headers, active, "pin").await);
    }
    active.session.pin_next_try = now_secs() + (1_i64 << (failures - 1).min(4));
    active.save(state).await?;
    tracing::info!(target: "ward::webapp", failures, "a web app unlock failed");
    Ok(MAX_PIN_FAILURES - failures)
}

/// Unlocks the session after a right PIN or passkey and records the use.
async fn unlocked(
    state: &AppState,
    peer: Option<SocketAddr>,
    mut active: Active,
    json: bool,
    next: &str,
    method: &'static str,
) -> Response {
    active.session.locked = false;
    active.session.pin_failures = 0;
    active.session.pin_next_try = 0;
    if let Err(response) = signin::touch(state, peer, active).await {
        return response;
    }
    tracing::info!(target: "ward::webapp", method, "web session unlocked");
    if json {
        json_reply(StatusCode::OK, &serde_json::json!({"ok": true}))
    } else {
        see_other(next, &[])
    }
}

/// Checks a new PIN: 6 to 12 digits, not one repeated digit and not a
/// straight run such as 123456.
///
/// # Errors
///
/// A message for the user naming what to change.
pub fn check_new_pin(pin: &str, confirm: &str) -> Result<(), &'static str> {
    if pin.len() < MIN_PIN_LEN
        || pin.len() > MAX_PIN_LEN
        || !pin.bytes().all(|b| b.is_ascii_digit())
    {
        return Err("Enter a PIN of 6 to 12 digits.");
    }
    let bytes = pin.as_bytes();
    let same = bytes.iter().all(|b| *b == bytes[0]);
    let run = |step: i16| {
        bytes
            .windows(2)
            .all(|pair| i16::from(pair[1]) - i16::from(pair[0]) == step)
    };
    if same || run(1) || run(-1) {
        return Err("This PIN is too easy to guess; avoid repeated digits and runs like 123456.");
    }
    if pin != confirm {
        return Err("The two PINs differ; enter the same PIN twice.");
    }
    Ok(())
}

/// The PIN form.
#[derive(Deserialize)]
pub struct PinForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    pin: String,
    #[serde(default)]
    confirm: String,
}

/// `POST /app/pin`: sets or changes the user's PIN.
pub async fn set_pin(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    WebForm(form): WebForm<PinForm>,
) -> Response {
    let active = match signin::require(&state, peer, &headers).await {
        Ok(active) => active,
        Err(response) => return response,
    };
    if !active.session.csrf_matches(&form.csrf) {
        return error_page(
            StatusCode::FORBIDDEN,
            "This form has expired. Open the security page again.",
        );
    }
    let Some(user) = active.session.user.clone() else {
        return error_page(
            StatusCode::CONFLICT,
            "This session does not name its user. Sign out and sign in again.",
        );
    };
    if let Err(message) = check_new_pin(form.pin.trim(), form.confirm.trim()) {
        let has_pin = has_pin(&state, &active).await;
        return super::enroll::security_page(
            &active,
            has_pin,
            Some(message),
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    }
    let pin = form.pin.trim().to_owned();
    let store = state.engine.store.clone();
    let saved = blocking(move || {
        let phc = password::hash(&pin).map_err(|_| ())?;
        let record = PinRecord {
            phc,
            set_at: now_secs(),
        };
        identity::write(store.as_ref(), NS_PIN, &pin_key(&user), &record, None).map_err(|_| ())
    })
    .await;
    if !matches!(saved, Ok(Ok(()))) {
        return internal("saving the PIN");
    }
    tracing::info!(target: "ward::webapp", "a web app PIN was set");
    see_other("/app/security?pin=saved", &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_need_six_digits_and_no_pattern() {
        assert!(check_new_pin("20481632", "20481632").is_ok());
        assert!(check_new_pin("12345", "12345").is_err());
        assert!(check_new_pin("12a456", "12a456").is_err());
        assert!(check_new_pin("111111", "111111").is_err());
        assert!(check_new_pin("123456", "123456").is_err());
        assert!(check_new_pin("987654", "987654").is_err());
        assert!(check_new_pin("204816", "204817").is_err());
        assert!(check_new_pin("1234567890123", "1234567890123").is_err());
    }

    #[test]
    fn next_stays_in_the_app() {
        assert_eq!(
            safe_next(Some("/app/p/abc_-1/vitals")),
            "/app/p/abc_-1/vitals"
        );
        assert_eq!(safe_next(Some("//evil.example/app")), "/app");
        assert_eq!(safe_next(Some("https://evil.example/app")), "/app");
        assert_eq!(safe_next(Some("/app/../oauth")), "/app");
        assert_eq!(safe_next(Some("/app/unlock")), "/app");
        assert_eq!(safe_next(Some("/app?x=1")), "/app");
        assert_eq!(safe_next(None), "/app");
    }
}
