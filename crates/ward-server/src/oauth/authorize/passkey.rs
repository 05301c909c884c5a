//! Passkeys (WebAuthn) in the sign-in flow: registration by a signed-in
//! user and authentication as the second factor in place of a TOTP code.
//!
//! The relying party id is the host of the server origin and the expected
//! origin is the server origin itself. Browsers reject WebAuthn on an IP
//! address, so a server whose origin is an address (the default
//! `https://127.0.0.1:8443`) offers no passkeys. A deployment that wants
//! them sets `--base-url` to a DNS name.
//!
//! The state of a ceremony stays in the store's sealed records between its
//! start and finish requests for five minutes. The finish request deletes
//! it before checking the response, so each challenge can be used once.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use time::OffsetDateTime;
use ward_auth::throttle::{Decision, Throttle};
use webauthn_rs::prelude::{
    CredentialID, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Uuid, Webauthn, WebauthnBuilder,
};

use super::super::identity::{
    self, IdentityError, NS_PASSKEY_CEREMONY, NS_THROTTLE_ACCOUNT, UserRecord, micros,
};
use super::super::{OAuthServer, blocking, json_response, server_of};
use super::{
    EXPIRED, Page, Params, Pending, Stage, html, internal_error, mfa_page, open_session,
    read_throttle, session_of, step, with_event, write_throttle,
};
use crate::AppState;
use crate::audit::{Actor, SecurityEventKind};
use ward_audit::record::{Action, EventType, Outcome, Subtype};

/// The maximum age of the password and second factor for adding a
/// passkey, in seconds.
pub const FRESH_AUTH_SECS: i64 = 300;
/// How long the state of a started ceremony lasts.
const CEREMONY_TTL: time::Duration = time::Duration::minutes(5);
/// Largest JSON body accepted by the registration endpoints.
const MAX_JSON_BYTES: usize = 16 * 1024;
/// The message when a passkey assertion is rejected.
const PASSKEY_FAILED: &str =
    "The passkey could not be verified. Try again, or enter a code instead.";
/// The name authenticators show for this relying party.
const RP_NAME: &str = "Ward";

/// The static script behind the passkey buttons, a file because the Content
/// Security Policy forbids inline script.
const SCRIPT: &str = include_str!("passkey.js");

/// Builds the relying party for the server origin. Returns `None` when the
/// origin's host is an IP address, where browsers reject WebAuthn.
fn relying_party(server: &OAuthServer) -> Option<Webauthn> {
    let origin = Url::parse(&server.settings.origin).ok()?;
    let rp_id = origin.domain()?.to_owned();
    WebauthnBuilder::new(&rp_id, &origin)
        .ok()?
        .rp_name(RP_NAME)
        .build()
        .ok()
}

/// Renders the passkey part of the two-step verification page: a form that
/// the script fills with the assertion and submits.
pub(super) fn mfa_section(csrf: &str) -> String {
    format!(
        "<form method=\"post\" action=\"/oauth/passkey/auth/finish\" id=\"passkey-form\">{csrf}\
         <input type=\"hidden\" name=\"credential\" value=\"\">\
         <button type=\"button\" id=\"passkey-button\">Use a passkey</button>\
         <p class=\"error\" id=\"passkey-status\" role=\"status\"></p></form>\
         <script src=\"/oauth/passkey.js\" defer></script>",
        csrf = html::hidden("csrf", csrf),
    )
}

/// `GET /oauth/passkey.js`.
pub async fn script() -> Response {
    let mut response = (StatusCode::OK, SCRIPT).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn json_error(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

fn ceremony_expiry(now: OffsetDateTime) -> i64 {
    micros(now + CEREMONY_TTL)
}

fn save_ceremony<T: Serialize>(server: &OAuthServer, key: &str, state: &T) -> bool {
    let expires = Some(ceremony_expiry(OffsetDateTime::now_utc()));
    identity::write(
        server.store.as_ref(),
        NS_PASSKEY_CEREMONY,
        key,
        state,
        expires,
    )
    .is_ok()
}

/// Removes and returns a ceremony state. Of two requests for one state only
/// the one whose delete succeeds gets it, so a challenge is used once.
fn take_ceremony<T: DeserializeOwned>(server: &OAuthServer, key: &str) -> Option<T> {
    let store = server.store.as_ref();
    let state = identity::read(store, NS_PASSKEY_CEREMONY, key).ok()??;
    store
        .kv_delete(NS_PASSKEY_CEREMONY, key)
        .ok()
        .filter(|deleted| *deleted)
        .map(|_| state)
}

/// Returns true when the request comes from a page of this server. Browsers
/// send `Origin` with every `fetch` POST; requiring it, besides the `Lax`
/// session cookie and the JSON body, keeps other sites from registering a
/// passkey in the signed-in user's name.
fn same_origin(server: &OAuthServer, headers: &HeaderMap) -> bool {
    headers
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|origin| origin == server.settings.origin)
}

/// The reason a sign-in session may not add a passkey.
enum NotFresh {
    /// No live sign-in session.
    SignedOut,
    /// The password and second factor were entered too long ago, or a web
    /// app session of this sign-in is locked.
    Stale,
}

/// Returns the user of the browser's sign-in session when it may add a
/// passkey: its password and second factor were entered at most
/// [`FRESH_AUTH_SECS`] ago and no web app session started with it is
/// locked (an idle app past its lock time counts as locked). A locked
/// phone's sign-in cookie therefore cannot add an authenticator.
fn fresh_user(server: &OAuthServer, headers: &HeaderMap) -> Result<(UserRecord, String), NotFresh> {
    let now = OffsetDateTime::now_utc();
    let (user, session, key) = session_of(server, headers, now).ok_or(NotFresh::SignedOut)?;
    let age = now.unix_timestamp() - session.created;
    if !(0..=FRESH_AUTH_SECS).contains(&age) {
        return Err(NotFresh::Stale);
    }
    let lock_secs = server.settings.app_lock.whole_seconds();
    match crate::webapp::session::signin_has_locked_app(
        server.store.as_ref(),
        &key,
        lock_secs,
        now.unix_timestamp(),
    ) {
        Ok(false) => Ok((user, key)),
        // A store failure rejects too, because a second sign-in is better
        // than a passkey added behind a lock.
        _ => Err(NotFresh::Stale),
    }
}

/// Renders the page that requests a fresh sign-in before a passkey is added.
fn fresh_sign_in_page(reason: &NotFresh) -> Response {
    let text = match reason {
        NotFresh::SignedOut => "You are not signed in.",
        NotFresh::Stale => {
            "Adding a passkey needs a fresh sign-in: your password and code were entered \
             more than 5 minutes ago, or the app is locked."
        }
    };
    Page::new(
        StatusCode::UNAUTHORIZED,
        "Passkeys",
        format!(
            "<p class=\"error\" role=\"alert\">{text}</p>\
             <p>Sign in with your password and code, and you return to this page.</p>\
             <p><a class=\"button\" href=\"/app/signin?next=passkeys\">Sign in again</a></p>\
             <p><a href=\"/app\">Back to Ward</a></p>"
        ),
    )
    .into_response()
}

/// `GET /oauth/passkeys`: the page where a signed-in user adds a passkey,
/// within [`FRESH_AUTH_SECS`] of entering the password and second factor.
pub async fn passkeys_page(State(state): State<AppState>, request: Request) -> Response {
    let server = match server_of(&state) {
        Ok(server) => server,
        Err(response) => return *response,
    };
    let headers = request.headers().clone();
    blocking(move || {
        let user = match fresh_user(&server, &headers) {
            Ok((user, _)) => user,
            Err(reason) => return fresh_sign_in_page(&reason),
        };
        let body = if relying_party(&server).is_none() {
            "<p class=\"error\">Passkeys need a server address with a DNS name; \
             browsers refuse them on an IP address.</p>"
                .to_owned()
        } else {
            format!(
                "<p>Signed in as <strong>{name}</strong>, with {count} registered passkey(s).</p>\
                 <p>A passkey can replace the code from your authenticator app when you sign in.</p>\
                 <button type=\"button\" id=\"passkey-register\">Add a passkey</button>\
                 <p id=\"passkey-status\" role=\"status\"></p>\
                 <script src=\"/oauth/passkey.js\" defer></script>",
                name = html::escape(&user.username),
                count = user.passkeys.len(),
            )
        };
        Page::new(StatusCode::OK, "Passkeys", body).into_response()
    })
    .await
}

/// Finds the signed-in user, the ceremony key of their session and the
/// relying party, or returns the JSON error for a request that may not
/// register a passkey.
fn registering_user(
    server: &OAuthServer,
    headers: &HeaderMap,
) -> Result<(UserRecord, String, Webauthn), Box<Response>> {
    if !same_origin(server, headers) {
        return Err(Box::new(json_error(
            StatusCode::FORBIDDEN,
            "the request must come from a page of this server",
        )));
    }
    let Some(webauthn) = relying_party(server) else {
        return Err(Box::new(json_error(
            StatusCode::NOT_FOUND,
            "passkeys need a server origin with a DNS name",
        )));
    };
    match fresh_user(server, headers) {
        Ok((user, session_key)) => Ok((user, format!("register.{session_key}"), webauthn)),
        Err(NotFresh::SignedOut) => Err(Box::new(json_error(
            StatusCode::UNAUTHORIZED,
            "sign in with your password and code before adding a passkey",
        ))),
        Err(NotFresh::Stale) => Err(Box::new(json_error(
            StatusCode::UNAUTHORIZED,
            "adding a passkey needs a sign-in with your password and code in the last 5 \
             minutes and an unlocked app; sign in again at /app/signin?next=passkeys",
        ))),
    }
}

async fn read_json_request(
    state: &AppState,
    request: Request,
) -> Result<(std::sync::Arc<OAuthServer>, HeaderMap, bytes::Bytes), Response> {
    let server = server_of(state).map_err(|response| *response)?;
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_JSON_BYTES)
        .await
        .map_err(|_| json_error(StatusCode::PAYLOAD_TOO_LARGE, "the request is too large"))?;
    Ok((server, parts.headers, bytes))
}

/// `POST /oauth/passkey/register/start`: returns the
/// `PublicKeyCredentialCreationOptions` for `navigator.credentials.create`.
pub async fn register_start(State(state): State<AppState>, request: Request) -> Response {
    let (server, headers, _) = match read_json_request(&state, request).await {
        Ok(parts) => parts,
        Err(response) => return response,
    };
    blocking(move || {
        let (user, key, webauthn) = match registering_user(&server, &headers) {
            Ok(found) => found,
            Err(response) => return *response,
        };
        if user.passkeys.len() >= identity::MAX_PASSKEYS {
            return json_error(
                StatusCode::CONFLICT,
                "this account has the maximum number of passkeys; ask an administrator to reset them",
            );
        }
        let Ok(handle) = Uuid::parse_str(&user.id) else {
            return internal_error("reading the user id as a WebAuthn user handle");
        };
        let exclude: Vec<CredentialID> = user
            .passkeys
            .iter()
            .map(|record| record.passkey.cred_id().clone())
            .collect();
        let started = webauthn.start_passkey_registration(
            handle,
            &user.username,
            &user.username,
            Some(exclude),
        );
        let Ok((options, ceremony)) = started else {
            return internal_error("starting a passkey registration");
        };
        if !save_ceremony::<PasskeyRegistration>(&server, &key, &ceremony) {
            return internal_error("storing the passkey registration");
        }
        match serde_json::to_value(&options) {
            Ok(body) => json_response(StatusCode::OK, &body),
            Err(_) => internal_error("encoding the passkey options"),
        }
    })
    .await
}

/// Marks the response of a registered passkey with the user's id, for the
/// audit record.
#[derive(Clone)]
struct PasskeyAdded(String);

/// Records an AuditEvent for a passkey added to `user_id`'s account.
async fn audit_passkey_added(state: &AppState, user_id: &str, network: Option<IpAddr>) {
    let auditor = &state.engine.auditor;
    let mut record = auditor.record(EventType::Security, Action::Create, Outcome::Success);
    record.subtypes.push(Subtype::UserSecurityAttributesChanged);
    let actor = Actor {
        user_id: user_id.to_owned(),
        network,
        ..Actor::default()
    };
    record.agents.push(actor.agent());
    record
        .detail
        .insert("event".to_owned(), "passkey_added".to_owned());
    if let Err(error) = auditor.commit(record).await {
        tracing::error!(target: "ward::audit", status = error.status.as_u16(), "recording a passkey addition failed");
    }
}

/// `POST /oauth/passkey/register/finish`: checks the attestation, stores
/// the new credential with the user and records an AuditEvent.
pub async fn register_finish(State(state): State<AppState>, request: Request) -> Response {
    let network = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let (server, headers, body) = match read_json_request(&state, request).await {
        Ok(parts) => parts,
        Err(response) => return response,
    };
    let mut response = blocking(move || {
        let (user, key, webauthn) = match registering_user(&server, &headers) {
            Ok(found) => found,
            Err(response) => return *response,
        };
        let Ok(credential) = serde_json::from_slice::<RegisterPublicKeyCredential>(&body) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "the body is not a WebAuthn registration response",
            );
        };
        let Some(ceremony) = take_ceremony::<PasskeyRegistration>(&server, &key) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "no passkey registration is in progress; start again",
            );
        };
        let passkey = match webauthn.finish_passkey_registration(&credential, &ceremony) {
            Ok(passkey) => passkey,
            Err(error) => {
                tracing::info!(target: "ward::auth", user = %user.id, %error, "passkey registration rejected");
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "the authenticator's response is not valid for this registration",
                );
            }
        };
        match identity::add_passkey(server.store.as_ref(), &user.id, passkey) {
            Ok(count) => {
                tracing::info!(target: "ward::auth", user = %user.id, count, "passkey registered");
                let mut response = json_response(StatusCode::OK, &json!({ "passkeys": count }));
                response.extensions_mut().insert(PasskeyAdded(user.id.clone()));
                response
            }
            Err(IdentityError::Exists(_)) => json_error(
                StatusCode::CONFLICT,
                "this passkey is registered already",
            ),
            Err(IdentityError::Invalid(message)) => json_error(StatusCode::CONFLICT, &message),
            Err(_) => internal_error("storing the passkey"),
        }
    })
    .await;
    if let Some(PasskeyAdded(user_id)) = response.extensions_mut().remove::<PasskeyAdded>() {
        audit_passkey_added(&state, &user_id, network).await;
    }
    response
}

/// `POST /oauth/passkey/auth/start` (form: `csrf`): returns the
/// `PublicKeyCredentialRequestOptions` for the user at the second step.
pub async fn auth_start(State(state): State<AppState>, request: Request) -> Response {
    step(state, request, begin_authentication).await
}

/// `POST /oauth/passkey/auth/finish` (form: `csrf`, `credential` as the
/// JSON of the assertion): on success continues to consent exactly like a
/// correct TOTP code.
pub async fn auth_finish(State(state): State<AppState>, request: Request) -> Response {
    step(state, request, finish_authentication).await
}

/// Loads the user at the second step of a pending request, if they may
/// sign in.
fn mfa_user(server: &OAuthServer, pending: &Pending) -> Option<UserRecord> {
    let Stage::Mfa { user_id } = &pending.stage else {
        return None;
    };
    identity::load_user(server.store.as_ref(), user_id)
        .ok()
        .flatten()
        .filter(|user| !user.disabled)
}

fn begin_authentication(
    server: &OAuthServer,
    _: &HeaderMap,
    _: &str,
    _: &Params,
    key: String,
    pending: Pending,
) -> Response {
    let Some(user) = mfa_user(server, &pending) else {
        return json_error(StatusCode::BAD_REQUEST, EXPIRED);
    };
    let Some(webauthn) = relying_party(server) else {
        return json_error(
            StatusCode::NOT_FOUND,
            "passkeys need a server origin with a DNS name",
        );
    };
    if user.passkeys.is_empty() {
        return json_error(
            StatusCode::BAD_REQUEST,
            "no passkey is registered for this account; enter a code instead",
        );
    }
    let passkeys: Vec<_> = user
        .passkeys
        .iter()
        .map(|record| record.passkey.clone())
        .collect();
    let Ok((options, ceremony)) = webauthn.start_passkey_authentication(&passkeys) else {
        return internal_error("starting a passkey authentication");
    };
    if !save_ceremony::<PasskeyAuthentication>(server, &format!("auth.{key}"), &ceremony) {
        return internal_error("storing the passkey authentication");
    }
    match serde_json::to_value(&options) {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(_) => internal_error("encoding the passkey options"),
    }
}

/// Checks the passkey assertion in the `credential` field against the
/// ceremony of the pending request and updates the passkey's counter and
/// backup state. A rejection carries its reason for the log and the audit
/// record.
fn verify_assertion(
    server: &OAuthServer,
    user: &mut UserRecord,
    params: &Params,
    key: &str,
) -> Result<(), &'static str> {
    let webauthn = relying_party(server).ok_or("passkeys_unavailable")?;

    // The ceremony is taken first, so a failed or replayed assertion still
    // uses up the challenge.
    let ceremony = take_ceremony::<PasskeyAuthentication>(server, &format!("auth.{key}"))
        .ok_or("no_passkey_challenge")?;
    let credential: PublicKeyCredential = params
        .get("credential")
        .and_then(|text| serde_json::from_str(text).ok())
        .ok_or("malformed_passkey_assertion")?;

    let result = webauthn
        .finish_passkey_authentication(&credential, &ceremony)
        .map_err(|error| {
            tracing::info!(target: "ward::auth", user = %user.id, %error, "passkey assertion rejected");
            "invalid_passkey_assertion"
        })?;

    // The state lists the passkeys the user had at the start; one removed
    // since then no longer counts.
    let mut known = false;
    for record in &mut user.passkeys {
        if record.passkey.cred_id() == result.cred_id() {
            known = true;
            record.passkey.update_credential(&result);
        }
    }
    if !known {
        return Err("unknown_passkey");
    }
    if result.needs_update() && identity::save_user(server.store.as_ref(), user).is_err() {
        return Err("store_failed");
    }
    Ok(())
}

fn finish_authentication(
    server: &OAuthServer,
    headers: &HeaderMap,
    _: &str,
    params: &Params,
    key: String,
    pending: Pending,
) -> Response {
    let Some(mut user) = mfa_user(server, &pending) else {
        return match &pending.stage {
            Stage::Mfa { .. } => Page::error(StatusCode::BAD_REQUEST, EXPIRED).into_response(),
            _ => super::render_stage(server, &pending, None).into_response(),
        };
    };
    let store = server.store.as_ref();
    let now = OffsetDateTime::now_utc();
    let throttle = Throttle::account();
    let account_key = identity::username_key(store, &user.username);
    let throttle_state = read_throttle(server, NS_THROTTLE_ACCOUNT, &account_key);
    let verified = match throttle.check(&throttle_state, now) {
        Decision::Allow => verify_assertion(server, &mut user, params, &key),
        Decision::Deny { .. } => Err("throttled"),
    };
    if let Err(reason) = verified {
        write_throttle(
            server,
            NS_THROTTLE_ACCOUNT,
            &account_key,
            &throttle.record_failure(&throttle_state, now),
        );
        tracing::info!(target: "ward::auth", reason, "passkey second-factor check failed");
        let page = mfa_page(&pending, Some(PASSKEY_FAILED)).into_response();
        return with_event(
            page,
            SecurityEventKind::SignInFailed,
            Some(user.id.clone()),
            Some(reason),
        );
    }
    let _ = store.kv_delete(NS_THROTTLE_ACCOUNT, &account_key);
    open_session(server, headers, &key, pending, &user, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mfa_section_has_no_inline_script() {
        let section = mfa_section("abc");
        assert!(section.contains("src=\"/oauth/passkey.js\""));
        assert!(!section.contains("<script>"));
        assert!(!section.contains("onclick"));
        assert!(section.contains("value=\"abc\""));
    }

    #[test]
    fn script_calls_the_passkey_endpoints() {
        assert!(SCRIPT.contains("/oauth/passkey/auth/start"));
        assert!(SCRIPT.contains("/oauth/passkey/register/finish"));
    }
}
