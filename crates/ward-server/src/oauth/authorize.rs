//! The authorization endpoint and the sign-in pages behind it: request
//! checks, password sign-in with throttling, the second factor, the web
//! session and consent, ending in a redirect with the authorization code.
//!
//! A pending request lives in the store for ten minutes under the digest
//! of a random `__Host-ward-authz` cookie, and every form carries a CSRF
//! token that must equal the one stored with the request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use ward_auth::Role;
use ward_auth::oauth::{
    AuthorizationCode, CodeChallenge, CodeGrant, LaunchContext, TokenDigest, generate_token,
    match_redirect_uri,
};
use ward_auth::password;
use ward_auth::scopes::{Scope, ScopeContext, Scopes};
use ward_auth::throttle::{Decision, Throttle, ThrottleConfig, ThrottleState};
use ward_auth::totp::{self, TotpSecret};

use super::html::{self, PENDING_COOKIE, Page, SESSION_COOKIE, escape, hidden};
use super::identity::{
    self, NS_CODE, NS_PENDING, NS_SESSION, NS_THROTTLE_ACCOUNT, NS_THROTTLE_PAIR,
    NS_THROTTLE_SOURCE, NS_TOTP_STEP, Session, UserRecord, digest_key, micros,
};
use super::token::StoredCode;
use super::{OAuthServer, blocking, server_of};
use crate::AppState;
use crate::audit::{OwnedSecurityEvent, SecurityEventKind, record_security_event};

pub(super) mod passkey;

/// How long a pending authorization request lasts, in seconds.
const PENDING_TTL_SECS: i64 = 600;
/// How long a used authorization code is remembered to detect its reuse.
const USED_CODE_TTL_SECS: i64 = 600;
/// Largest form body accepted by the sign-in pages.
const MAX_FORM_BYTES: usize = 16 * 1024;
/// Longest accepted `state` or `nonce`.
const MAX_STATE_LEN: usize = 1024;
/// The one message for every failed password sign-in, so that a reply
/// never distinguishes an unknown user from a wrong password or a locked
/// account.
pub const SIGN_IN_FAILED: &str = "The user name or password is incorrect, or the account is locked for a while. Try again later.";
const CODE_FAILED: &str = "The code is wrong, expired or already used.";
const EXPIRED: &str =
    "This sign-in request has expired or is not valid. Return to the application and start again.";

/// Form or query parameters, first value wins.
pub(super) struct Params(HashMap<String, String>);

impl Params {
    pub(super) fn parse(bytes: &[u8]) -> Self {
        let mut map = HashMap::new();
        for (key, value) in url::form_urlencoded::parse(bytes) {
            map.entry(key.into_owned())
                .or_insert_with(|| value.into_owned());
        }
        Self(map)
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// The stage a pending request has reached.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Stage {
    Login,
    Mfa { user_id: String },
    Consent { user_id: String },
}

/// An authorization request waiting for sign-in and consent.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    client_id: String,
    client_name: String,
    redirect_uri: String,
    state: String,
    challenge: CodeChallenge,
    scope: String,
    nonce: Option<String>,
    csrf: String,
    stage: Stage,
    expires: i64,
}

/// `GET /oauth/authorize`.
pub async fn authorize_get(State(state): State<AppState>, request: Request) -> Response {
    let query = request.uri().query().unwrap_or("").as_bytes().to_vec();
    let headers = request.headers().clone();
    start(state, headers, Params::parse(&query)).await
}

/// `POST /oauth/authorize` (SMART `authorize-post`).
pub async fn authorize_post(State(state): State<AppState>, request: Request) -> Response {
    match read_form(request).await {
        Ok((headers, _, params)) => start(state, headers, params).await,
        Err(response) => response,
    }
}

async fn start(state: AppState, headers: HeaderMap, params: Params) -> Response {
    let server = match server_of(&state) {
        Ok(server) => server,
        Err(response) => return *response,
    };
    blocking(move || begin(&server, &headers, &params)).await
}

async fn read_form(request: Request) -> Result<(HeaderMap, String, Params), Response> {
    let (parts, body) = request.into_parts();
    let source = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |info| info.0.ip().to_string());
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| {
            Page::error(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.").into_response()
        })?;
    Ok((parts.headers, source, Params::parse(&bytes)))
}

/// Logs a failed store write or random generation during sign-in and
/// returns the error page.
fn internal_error(step: &str) -> Response {
    tracing::error!(target: "ward::auth", step, "a sign-in step failed in the store or the random generator");
    Page::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The server could not complete the sign-in. Return to the application and try again.",
    )
    .into_response()
}

/// Redirects to the client with an OAuth error (RFC 6749 section 4.1.2.1).
fn redirect_error(
    server: &OAuthServer,
    redirect_uri: &str,
    error: &str,
    description: &str,
    state: Option<&str>,
) -> Response {
    let mut pairs = vec![("error", error), ("error_description", description)];
    if let Some(state) = state {
        pairs.push(("state", state));
    }
    redirect_with(server, redirect_uri, &pairs)
}

fn redirect_with(server: &OAuthServer, redirect_uri: &str, pairs: &[(&str, &str)]) -> Response {
    let Ok(mut url) = url::Url::parse(redirect_uri) else {
        return Page::error(StatusCode::BAD_REQUEST, "The redirect URI is not valid.")
            .into_response();
    };
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in pairs {
            query.append_pair(name, value);
        }
        // RFC 9207: name the issuer so the client can detect mix-ups.
        query.append_pair("iss", &server.settings.origin);
    }
    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(url.as_str()) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Checks an authorization request and shows the first page it needs.
fn begin(server: &OAuthServer, headers: &HeaderMap, params: &Params) -> Response {
    let store = server.store.as_ref();
    let client = params
        .get("client_id")
        .and_then(|id| identity::load_client(store, id).ok().flatten());
    let Some(client) = client else {
        return Page::error(
            StatusCode::BAD_REQUEST,
            "The application is not registered with this server (unknown client_id).",
        )
        .into_response();
    };
    let redirect_uri =
        match match_redirect_uri(&client.client.redirect_uris, params.get("redirect_uri")) {
            Ok(uri) => uri.to_owned(),
            Err(_) => {
                return Page::error(
                    StatusCode::BAD_REQUEST,
                    "The redirect_uri is missing or not registered for this application.",
                )
                .into_response();
            }
        };
    let state = params.get("state").filter(|s| s.len() <= MAX_STATE_LEN);
    let fail = |error: &str, description: &str| {
        redirect_error(server, &redirect_uri, error, description, state)
    };
    if params.get("response_type") != Some("code") {
        return fail("unsupported_response_type", "response_type must be code");
    }
    let Some(state) = state else {
        return fail(
            "invalid_request",
            "state is required (at most 1024 characters)",
        );
    };
    let challenge = match CodeChallenge::parse(
        params.get("code_challenge"),
        params.get("code_challenge_method"),
    ) {
        Ok(challenge) => challenge,
        Err(error) => return fail("invalid_request", &format!("PKCE: {error}")),
    };
    let aud_ok = params
        .get("aud")
        .is_some_and(|aud| aud.trim_end_matches('/') == server.settings.fhir_base);
    if !aud_ok {
        return fail(
            "invalid_request",
            "aud must be the FHIR base URL of this server",
        );
    }
    let granted = client
        .client
        .grantable_scope(params.get("scope").unwrap_or(""));
    if granted.raw.is_empty() {
        return fail(
            "invalid_scope",
            "none of the requested scopes may be granted to this client",
        );
    }
    let nonce = params.get("nonce").filter(|n| n.len() <= MAX_STATE_LEN);

    let now = OffsetDateTime::now_utc();
    let (Ok(cookie_token), Ok(csrf)) = (generate_token(), generate_token()) else {
        return internal_error("generating the request cookie");
    };
    let prompt: Vec<&str> = params
        .get("prompt")
        .map(|p| p.split(' ').filter(|v| !v.is_empty()).collect())
        .unwrap_or_default();
    if prompt.contains(&"none") && prompt.len() > 1 {
        return fail(
            "invalid_request",
            "prompt=none cannot be combined with other prompt values",
        );
    }
    let max_age = match params.get("max_age").map(str::parse::<i64>) {
        None => None,
        Some(Ok(age)) if age >= 0 => Some(age),
        Some(_) => {
            return fail(
                "invalid_request",
                "max_age must be a whole number of seconds, 0 or more",
            );
        }
    };
    // OpenID Connect `prompt=login` and `max_age`: a sign-in session older
    // than `max_age`, or any with `prompt=login`, is not reused, so the
    // user enters the password and second factor again.
    let reusable = session_of(server, headers, now).filter(|(_, session, _)| {
        !prompt.contains(&"login")
            && max_age.is_none_or(|age| now.unix_timestamp() - session.created < age)
    });
    let stage = match reusable {
        Some((user, _, _)) => Stage::Consent {
            user_id: user.id.clone(),
        },
        None if prompt.contains(&"none") => {
            return fail("login_required", "the user must sign in");
        }
        None => Stage::Login,
    };
    let pending = Pending {
        client_id: client.client.client_id.clone(),
        client_name: client.name.clone(),
        redirect_uri,
        state: state.to_owned(),
        challenge,
        scope: granted.to_string(),
        nonce: nonce.map(str::to_owned),
        csrf: csrf.to_string(),
        stage,
        expires: now.unix_timestamp() + PENDING_TTL_SECS,
    };
    let key = digest_key(&TokenDigest::of(&cookie_token));
    if save_pending(server, &key, &pending).is_err() {
        return internal_error("storing the pending request");
    }
    let cookie = html::cookie(PENDING_COOKIE, &cookie_token, PENDING_TTL_SECS, "Strict");
    render_stage(server, &pending, None)
        .cookie(cookie)
        .into_response()
}

fn save_pending(
    server: &OAuthServer,
    key: &str,
    pending: &Pending,
) -> identity::IdentityResult<()> {
    identity::write(
        server.store.as_ref(),
        NS_PENDING,
        key,
        pending,
        Some(pending.expires.saturating_mul(1_000_000)),
    )
}

/// Loads the pending request of the browser and checks the form's CSRF
/// token against it.
fn load_pending(
    server: &OAuthServer,
    headers: &HeaderMap,
    params: &Params,
) -> Result<(String, Pending), Page> {
    let expired = || Page::error(StatusCode::BAD_REQUEST, EXPIRED);
    let token = html::read_cookie(headers, PENDING_COOKIE).ok_or_else(expired)?;
    let key = digest_key(&TokenDigest::of(&token));
    let pending: Pending = identity::read(server.store.as_ref(), NS_PENDING, &key)
        .ok()
        .flatten()
        .ok_or_else(expired)?;
    let csrf = params.get("csrf").unwrap_or("");
    if !ward_crypto::constant_time_eq(csrf.as_bytes(), pending.csrf.as_bytes()) {
        return Err(Page::error(StatusCode::FORBIDDEN, EXPIRED));
    }
    Ok((key, pending))
}

/// Returns the user of a live web session and records its use.
fn session_user(
    server: &OAuthServer,
    headers: &HeaderMap,
    now: OffsetDateTime,
) -> Option<UserRecord> {
    session_of(server, headers, now).map(|(user, _, _)| user)
}

/// Returns whether the browser device `id` was revoked or is gone.
fn device_revoked(store: &dyn ward_store::Store, id: &str) -> bool {
    let Ok(id) = ward_device::DeviceId::parse(id) else {
        return true;
    };
    match ward_device::registry::load(store, &id) {
        Ok(Some(device)) => device.revocation.is_some(),
        Ok(None) => true,
        // A store failure fails the sign-in elsewhere; it is not a revocation.
        Err(_) => false,
    }
}

/// Returns the user, the record and the record key of the browser's live
/// web session, and records its use. A session that timed out, whose user
/// is disabled or whose browser device was revoked is ended instead.
pub(super) fn session_of(
    server: &OAuthServer,
    headers: &HeaderMap,
    now: OffsetDateTime,
) -> Option<(UserRecord, Session, String)> {
    let store = server.store.as_ref();
    let token = html::read_cookie(headers, SESSION_COOKIE)?;
    let key = digest_key(&TokenDigest::of(&token));
    let mut session: Session = identity::read(store, NS_SESSION, &key).ok().flatten()?;
    let now_secs = now.unix_timestamp();
    let idle = server.settings.session_idle.whole_seconds();
    let max = server.settings.session_max.whole_seconds();
    if now_secs - session.last_seen >= idle || now_secs - session.created >= max {
        let _ = store.kv_delete(NS_SESSION, &key);
        return None;
    }
    // NOTE: a revoked device's sign-in session ends here, at its next use,
    // because the revoke paths (CLI and admin API) do not search sessions.
    if session
        .device
        .as_deref()
        .is_some_and(|device| device_revoked(store, device))
    {
        tracing::info!(target: "ward::auth", "a sign-in session of a revoked browser device was ended");
        let _ = store.kv_delete(NS_SESSION, &key);
        return None;
    }
    let user = identity::load_user(store, &session.user_id)
        .ok()
        .flatten()?;
    if user.disabled {
        let _ = store.kv_delete(NS_SESSION, &key);
        return None;
    }
    session.last_seen = now_secs;
    let expires = (now_secs + idle).min(session.created + max);
    let _ = identity::write(
        store,
        NS_SESSION,
        &key,
        &session,
        Some(expires.saturating_mul(1_000_000)),
    );
    Some((user, session, key))
}

fn render_stage(server: &OAuthServer, pending: &Pending, error: Option<&str>) -> Page {
    match &pending.stage {
        Stage::Login => login_page(pending, error),
        Stage::Mfa { .. } => mfa_page(pending, error),
        Stage::Consent { user_id } => {
            match identity::load_user(server.store.as_ref(), user_id)
                .ok()
                .flatten()
            {
                Some(user) => consent_page(pending, &user, error),
                None => Page::error(StatusCode::BAD_REQUEST, EXPIRED),
            }
        }
    }
}

fn error_html(error: Option<&str>) -> String {
    error.map_or_else(String::new, |e| {
        format!("<p class=\"error\">{}</p>", escape(e))
    })
}

fn login_page(pending: &Pending, error: Option<&str>) -> Page {
    let body = format!(
        "<p>Sign in to continue to <strong>{client}</strong>.</p>{error}\
         <form method=\"post\" action=\"/oauth/login\">{csrf}\
         <label for=\"username\">User name</label>\
         <input type=\"text\" id=\"username\" name=\"username\" autocomplete=\"username\" required>\
         <label for=\"password\">Password</label>\
         <input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
         <button type=\"submit\">Sign in</button></form>",
        client = escape(&pending.client_name),
        error = error_html(error),
        csrf = hidden("csrf", &pending.csrf),
    );
    Page::new(StatusCode::OK, "Sign in", body)
}

fn mfa_page(pending: &Pending, error: Option<&str>) -> Page {
    let body = format!(
        "<p>Enter the 6-digit code from your authenticator app, or one of your recovery codes.</p>{error}\
         <form method=\"post\" action=\"/oauth/mfa\">{csrf}\
         <label for=\"code\">Code</label>\
         <input type=\"text\" id=\"code\" name=\"code\" autocomplete=\"one-time-code\" inputmode=\"numeric\" required>\
         <button type=\"submit\">Verify</button></form>{passkey}",
        error = error_html(error),
        csrf = hidden("csrf", &pending.csrf),
        passkey = passkey::mfa_section(&pending.csrf),
    );
    Page::new(StatusCode::OK, "Two-step verification", body)
}

/// True when the user must pick the patient on the consent page.
fn needs_patient_picker(pending: &Pending, user: &UserRecord) -> bool {
    Scopes::parse(&pending.scope).contains(&Scope::LaunchPatient) && user.own_patient().is_none()
}

fn consent_page(pending: &Pending, user: &UserRecord, error: Option<&str>) -> Page {
    let scopes = Scopes::parse(&pending.scope);
    let items: String = scopes
        .scopes
        .iter()
        .zip(&scopes.raw)
        // The administrative scope is granted only to security
        // administrators (see `consent`), so only they see it listed.
        .filter(|(_, raw)| *raw != "admin" || user.role == Role::SecurityAdmin.as_str())
        .map(|(scope, raw)| {
            format!(
                "<li>{} <small>({})</small></li>",
                escape(&describe(scope)),
                escape(raw)
            )
        })
        .collect();
    let picker = if needs_patient_picker(pending, user) {
        "<label for=\"patient\">Patient id (the patient the application may work on)</label>\
         <input type=\"text\" id=\"patient\" name=\"patient\" required>"
    } else {
        ""
    };
    let body = format!(
        "<p>Signed in as <strong>{name}</strong>.</p>\
         <p><strong>{client}</strong> <small>({client_id})</small> asks to:</p><ul>{items}</ul>{error}\
         <form method=\"post\" action=\"/oauth/consent\">{csrf}{picker}\
         <button type=\"submit\" name=\"decision\" value=\"approve\">Allow</button>\
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
        name = escape(&user.username),
        client = escape(&pending.client_name),
        client_id = escape(&pending.client_id),
        error = error_html(error),
        csrf = hidden("csrf", &pending.csrf),
    );
    Page::new(StatusCode::OK, "Allow access?", body).allow_redirect(&pending.redirect_uri)
}

/// Describes a scope in plain words for the consent page.
fn describe(scope: &Scope) -> String {
    match scope {
        Scope::OpenId => "Confirm your identity".into(),
        Scope::FhirUser => "Know which user record is yours".into(),
        Scope::Profile => "See your name and profile".into(),
        Scope::Launch | Scope::LaunchPatient => "Work on the patient selected now".into(),
        Scope::LaunchEncounter => "Work on the encounter selected now".into(),
        Scope::OfflineAccess => "Keep access after you sign out, until you revoke it".into(),
        Scope::OnlineAccess => "Keep access while you are signed in".into(),
        Scope::Resource(resource) => {
            let letters = resource.permissions.to_string();
            let verbs: Vec<&str> = letters
                .chars()
                .filter_map(|c| match c {
                    'c' => Some("create"),
                    'r' => Some("read"),
                    'u' => Some("update"),
                    'd' => Some("delete"),
                    's' => Some("search"),
                    _ => None,
                })
                .collect();
            let records = if resource.resource_type == "*" {
                "all kinds of records".to_owned()
            } else {
                format!("{} records", resource.resource_type)
            };
            let owner = match resource.context {
                ScopeContext::Patient => "of the selected patient",
                ScopeContext::User => "that you may access",
                ScopeContext::System => "of every patient",
            };
            let mut text = format!("{} {records} {owner}", capitalize(&verbs.join(", ")));
            if let Some(restriction) = &resource.restriction {
                text.push_str(&format!(", limited to {restriction}"));
            }
            text
        }
        Scope::Other(name) if name == "admin" => {
            "Administer users, devices and the audit log".into()
        }
        Scope::Other(name) => format!("Use the '{name}' permission"),
    }
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `POST /oauth/login`.
pub async fn login(State(state): State<AppState>, request: Request) -> Response {
    step(state, request, sign_in).await
}

/// `POST /oauth/mfa`.
pub async fn mfa(State(state): State<AppState>, request: Request) -> Response {
    step(state, request, second_factor).await
}

/// `POST /oauth/consent`.
pub async fn consent(State(state): State<AppState>, request: Request) -> Response {
    step(state, request, decide).await
}

type StepFn = fn(&OAuthServer, &HeaderMap, &str, &Params, String, Pending) -> Response;

async fn step(state: AppState, request: Request, handler: StepFn) -> Response {
    let server = match server_of(&state) {
        Ok(server) => server,
        Err(response) => return *response,
    };
    let (headers, source, params) = match read_form(request).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    let server: Arc<OAuthServer> = server;
    let network = source.parse().ok();
    let mut response = blocking(move || match load_pending(&server, &headers, &params) {
        Ok((key, pending)) => handler(&server, &headers, &source, &params, key, pending),
        Err(page) => page.into_response(),
    })
    .await;
    if let Some(event) = response.extensions_mut().remove::<OwnedSecurityEvent>() {
        record_security_event(&state, event.as_event(network)).await;
    }
    response
}

/// Attaches a sign-in event to `response`; [`step`] records it once the
/// blocking handler has returned.
fn with_event(
    mut response: Response,
    kind: SecurityEventKind,
    user_id: Option<String>,
    reason: Option<&'static str>,
) -> Response {
    let mut event = OwnedSecurityEvent::new(kind);
    event.user_id = user_id;
    event.reason = reason;
    response.extensions_mut().insert(event);
    response
}

/// The account-wide throttle: back-off delays only, never a lock, so
/// failures an attacker causes from elsewhere can slow a user down (by at
/// most the maximum delay) but never lock them out. Locks apply to an
/// account from one source address and to a source address as a whole.
fn account_delays() -> Throttle {
    Throttle::new(ThrottleConfig {
        lock_threshold: u32::MAX,
        ..ThrottleConfig::account()
    })
}

/// The key of the throttle of one account from one source address.
fn pair_key(store: &dyn ward_store::Store, username: &str, source: &str) -> String {
    store.blind(
        "account-source",
        &format!("{}\n{source}", username.to_lowercase()),
    )
}

/// Combines throttle decisions: denied when any denies.
fn combine(first: Decision, second: Decision) -> Decision {
    match first {
        Decision::Allow => second,
        denied => denied,
    }
}

fn read_throttle(server: &OAuthServer, ns: &'static str, key: &str) -> ThrottleState {
    identity::read(server.store.as_ref(), ns, key)
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn write_throttle(server: &OAuthServer, ns: &'static str, key: &str, state: &ThrottleState) {
    // Throttle records expire a day after the last change, when the
    // throttle would forget them anyway.
    let expires = micros(OffsetDateTime::now_utc() + time::Duration::hours(25));
    if let Err(error) = identity::write(server.store.as_ref(), ns, key, state, Some(expires)) {
        tracing::error!(%error, "storing a sign-in throttle state failed");
    }
}

fn sign_in(
    server: &OAuthServer,
    _: &HeaderMap,
    source: &str,
    params: &Params,
    key: String,
    mut pending: Pending,
) -> Response {
    let store = server.store.as_ref();
    let username = params.get("username").unwrap_or("");
    let password_text = params.get("password").unwrap_or("");
    let now = OffsetDateTime::now_utc();
    let account_key = identity::username_key(store, username);
    let source_key = store.blind("source", source);
    let pair = pair_key(store, username, source);
    let account_throttle = account_delays();
    let pair_throttle = Throttle::account();
    let source_throttle = Throttle::source();
    let account_state = read_throttle(server, NS_THROTTLE_ACCOUNT, &account_key);
    let pair_state = read_throttle(server, NS_THROTTLE_PAIR, &pair);
    let source_state = read_throttle(server, NS_THROTTLE_SOURCE, &source_key);
    let decision = combine(
        Throttle::check_both(
            (&account_throttle, &account_state),
            (&source_throttle, &source_state),
            now,
        ),
        pair_throttle.check(&pair_state, now),
    );

    let user = identity::find_user(store, username).ok().flatten();
    let verified = match decision {
        Decision::Allow => password::verify_account(
            password_text,
            user.as_ref().map(|u| u.password_hash.as_str()),
        )
        .is_ok_and(|v| v.is_valid()),
        Decision::Deny { .. } => {
            password::dummy_verify(password_text);
            false
        }
    };
    let attempted = user.as_ref().map(|u| u.id.clone());
    let user = user.filter(|u| verified && !u.disabled);
    let Some(user) = user else {
        let reason = if !matches!(decision, Decision::Allow) {
            "throttled"
        } else if verified {
            "account_disabled"
        } else {
            "invalid_credentials"
        };
        // The account-wide back-off counts only attempts that were checked,
        // so retries refused during a back-off (from anywhere) cannot
        // extend it without end. The counters of this address count every
        // attempt, so hammering locks out the address that hammers.
        if matches!(decision, Decision::Allow) {
            write_throttle(
                server,
                NS_THROTTLE_ACCOUNT,
                &account_key,
                &account_throttle.record_failure(&account_state, now),
            );
        }
        write_throttle(
            server,
            NS_THROTTLE_SOURCE,
            &source_key,
            &source_throttle.record_failure(&source_state, now),
        );
        write_throttle(
            server,
            NS_THROTTLE_PAIR,
            &pair,
            &pair_throttle.record_failure(&pair_state, now),
        );
        tracing::info!(target: "ward::auth", "password sign-in failed");
        let page = login_page(&pending, Some(SIGN_IN_FAILED)).into_response();
        return with_event(
            page,
            SecurityEventKind::SignInFailed,
            attempted,
            Some(reason),
        );
    };
    // The counters are cleared only after the second factor, so a known
    // password does not reset the limit on guessing codes.
    pending.stage = Stage::Mfa {
        user_id: user.id.clone(),
    };
    if save_pending(server, &key, &pending).is_err() {
        return internal_error("storing the pending request");
    }
    mfa_page(&pending, None).into_response()
}

/// Checks a TOTP or recovery code and stores what it used up. Returns
/// false for a wrong, reused or malformed code.
fn check_second_factor(
    server: &OAuthServer,
    user: &mut UserRecord,
    code: &str,
    now: OffsetDateTime,
) -> bool {
    let store = server.store.as_ref();
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()) {
        let Ok(secret) = TotpSecret::from_base32(&user.totp_secret) else {
            return false;
        };
        let Ok(step) = totp::verify(&secret, &digits, now, user.totp_last_step) else {
            return false;
        };
        // The insert is atomic, so of two concurrent requests with one code
        // only the first passes.
        let expires = micros(now + time::Duration::minutes(5));
        let fresh = store
            .kv_insert_new(
                NS_TOTP_STEP,
                &format!("{}.{step}", user.id),
                b"1",
                Some(expires),
            )
            .unwrap_or(false);
        user.totp_last_step = Some(step);
        return fresh && identity::save_user(store, user).is_ok();
    }
    match totp::redeem_recovery_code(code, &user.recovery_codes) {
        Some(index) => {
            user.recovery_codes.remove(index);
            identity::save_user(store, user).is_ok()
        }
        None => false,
    }
}

fn second_factor(
    server: &OAuthServer,
    headers: &HeaderMap,
    source: &str,
    params: &Params,
    key: String,
    pending: Pending,
) -> Response {
    let Stage::Mfa { user_id } = &pending.stage else {
        return render_stage(server, &pending, None).into_response();
    };
    let store = server.store.as_ref();
    let Some(mut user) = identity::load_user(store, user_id)
        .ok()
        .flatten()
        .filter(|u| !u.disabled)
    else {
        return Page::error(StatusCode::BAD_REQUEST, EXPIRED).into_response();
    };
    let now = OffsetDateTime::now_utc();
    // Code guesses lock the account: only someone who knows the password
    // gets this far.
    let throttle = Throttle::account();
    let account_key = identity::username_key(store, &user.username);
    let throttle_state = read_throttle(server, NS_THROTTLE_ACCOUNT, &account_key);
    let allowed = matches!(throttle.check(&throttle_state, now), Decision::Allow);
    let code = params.get("code").unwrap_or("");
    if !allowed || !check_second_factor(server, &mut user, code, now) {
        // Only checked codes count, so retries during a back-off do not
        // extend it.
        if allowed {
            write_throttle(
                server,
                NS_THROTTLE_ACCOUNT,
                &account_key,
                &throttle.record_failure(&throttle_state, now),
            );
        }
        tracing::info!(target: "ward::auth", "second-factor check failed");
        let reason = if allowed {
            "invalid_second_factor"
        } else {
            "throttled"
        };
        let page = mfa_page(&pending, Some(CODE_FAILED)).into_response();
        return with_event(
            page,
            SecurityEventKind::SignInFailed,
            Some(user.id.clone()),
            Some(reason),
        );
    }
    let _ = store.kv_delete(NS_THROTTLE_ACCOUNT, &account_key);
    let _ = store.kv_delete(NS_THROTTLE_PAIR, &pair_key(store, &user.username, source));
    open_session(server, headers, &key, pending, &user, now)
}

/// Opens a web session for a user who passed the second factor (a TOTP
/// code, a recovery code or a passkey), moves the pending request to
/// consent and shows the consent page.
fn open_session(
    server: &OAuthServer,
    headers: &HeaderMap,
    key: &str,
    mut pending: Pending,
    user: &UserRecord,
    now: OffsetDateTime,
) -> Response {
    let store = server.store.as_ref();
    // The new session replaces the one the browser held before (kept
    // when `prompt=login` asked for the password again), so the old
    // cookie, wherever a copy of it went, signs in no more.
    if let Some(old) = html::read_cookie(headers, SESSION_COOKIE) {
        let _ = identity::end_session(store, &digest_key(&TokenDigest::of(&old)));
    }
    let Ok(session_token) = generate_token() else {
        return internal_error("generating the session");
    };
    let now_secs = now.unix_timestamp();
    let session = Session {
        user_id: user.id.clone(),
        created: now_secs,
        last_seen: now_secs,
        device: None,
    };
    let idle = server.settings.session_idle.whole_seconds();
    let max = server.settings.session_max.whole_seconds();
    let session_key = digest_key(&TokenDigest::of(&session_token));
    let expires = (now_secs + idle.min(max)).saturating_mul(1_000_000);
    pending.stage = Stage::Consent {
        user_id: user.id.clone(),
    };
    if identity::write(store, NS_SESSION, &session_key, &session, Some(expires)).is_err()
        || save_pending(server, key, &pending).is_err()
    {
        return internal_error("storing the session");
    }
    tracing::info!(target: "ward::auth", user = %user.id, "signed in");
    // Lax, because the application sends the browser back here from its own
    // site for the next authorization.
    let cookie = html::cookie(SESSION_COOKIE, &session_token, max, "Lax");
    let page = consent_page(&pending, user, None)
        .cookie(cookie)
        .into_response();
    with_event(page, SecurityEventKind::SignIn, Some(user.id.clone()), None)
}

fn decide(
    server: &OAuthServer,
    headers: &HeaderMap,
    _: &str,
    params: &Params,
    key: String,
    pending: Pending,
) -> Response {
    let Stage::Consent { user_id } = &pending.stage else {
        return render_stage(server, &pending, None).into_response();
    };
    let store = server.store.as_ref();
    let now = OffsetDateTime::now_utc();
    let user = match session_user(server, headers, now) {
        Some(user) if &user.id == user_id => user,
        _ => {
            let _ = store.kv_delete(NS_PENDING, &key);
            return Page::error(
                StatusCode::UNAUTHORIZED,
                "Your session has ended. Return to the application and sign in again.",
            )
            .into_response();
        }
    };
    if params.get("decision") != Some("approve") {
        let _ = store.kv_delete(NS_PENDING, &key);
        let response = redirect_error(
            server,
            &pending.redirect_uri,
            "access_denied",
            "the user denied access",
            Some(&pending.state),
        );
        return clear_pending_cookie(response);
    }

    let requested = Scopes::parse(&pending.scope);
    let patient =
        if requested.contains(&Scope::LaunchPatient) || user.role == Role::Patient.as_str() {
            match user.own_patient() {
                Some(own) => Some(own.to_owned()),
                None => match params.get("patient").map(str::trim) {
                    Some(id) if crate::fhir::engine::is_valid_id(id) => Some(id.to_owned()),
                    _ if !requested.contains(&Scope::LaunchPatient) => None,
                    _ => {
                        return consent_page(&pending, &user, Some("Enter a valid patient id."))
                            .into_response();
                    }
                },
            }
        } else {
            None
        };
    // Only security administrators may hold the administrative scope.
    let scope: Vec<&str> = requested
        .raw
        .iter()
        .map(String::as_str)
        .filter(|s| *s != "admin" || user.role == Role::SecurityAdmin.as_str())
        .collect();
    let grant = CodeGrant {
        client_id: pending.client_id.clone(),
        redirect_uri: pending.redirect_uri.clone(),
        challenge: pending.challenge.clone(),
        scope: scope.join(" "),
        user_id: user.id.clone(),
        launch: LaunchContext {
            patient,
            encounter: None,
        },
        nonce: pending.nonce.clone(),
    };
    let Ok((code, record)) = AuthorizationCode::issue(grant, now) else {
        return internal_error("issuing the authorization code");
    };
    let stored = StoredCode {
        code: record,
        access_token: None,
        family: None,
    };
    let code_key = digest_key(&stored.code.digest);
    let expires = micros(now + time::Duration::seconds(USED_CODE_TTL_SECS));
    if identity::write(store, NS_CODE, &code_key, &stored, Some(expires)).is_err() {
        return internal_error("storing the authorization code");
    }
    let _ = store.kv_delete(NS_PENDING, &key);
    tracing::info!(target: "ward::auth", user = %user.id, client = %pending.client_id, "authorization granted");
    let response = redirect_with(
        server,
        &pending.redirect_uri,
        &[("code", code.as_str()), ("state", pending.state.as_str())],
    );
    clear_pending_cookie(response)
}

/// Deletes the pending-request cookie once the request is finished.
fn clear_pending_cookie(mut response: Response) -> Response {
    let cookie = html::cookie(PENDING_COOKIE, "", 0, "Strict");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}
