//! Sign-in, sign-out and the idle timeout of the web app, and the check
//! every signed-in page starts with.
//!
//! Sign-in is the authorization code flow with PKCE against this server's
//! `/oauth/authorize`: the user meets the same password, TOTP and consent
//! pages as for any client. The request requires a fresh authentication
//! (`prompt=login`, `max_age=0`), and the callback accepts the code only
//! when the browser's sign-in session was opened after the sign-in
//! started, so a sign-in cookie left from earlier never opens the app by
//! itself. The code is exchanged in-process at `/oauth/token`, and the
//! tokens go into the server-side session.
//!
//! [`require`] is where every signed-in page starts: it ends a session
//! after the idle or absolute timeout and, through [`super::lock`], shows
//! the lock page while the session is locked or its device proof is
//! missing.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use ward_auth::oauth::{Client, ClientKind, TokenDigest, TokenEndpointAuthMethod, generate_token};
use ward_store::Store;

use super::call::{self, Call};
use super::html::{AppPage, SignedIn, WebForm, error_page, escape, see_other};
use super::session::{self, Stage, WebSession, now_secs};
use super::{CALLBACK_PATH, WEB_CLIENT_ID, WEB_SCOPE};
use crate::AppState;
use crate::oauth::OAuthServer;
use crate::oauth::identity::{self, ClientRecord, NS_CLIENT};

/// Refresh the access token when it has fewer seconds than this left.
const REFRESH_MARGIN_SECS: i64 = 30;

/// The socket address of the browser, for the audit records of the
/// in-process requests.
pub struct PeerAddr(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0),
        ))
    }
}

/// A signed-in session, loaded and checked for a page.
pub struct Active {
    /// The record key (the digest of the cookie).
    pub key: String,
    /// The session record.
    pub session: WebSession,
    /// Idle timeout, in seconds.
    pub idle_secs: i64,
    /// Seconds without use after which the session locks.
    pub lock_secs: i64,
    /// The session's latest expiry, in seconds since the Unix epoch.
    pub expires: i64,
    /// Whether the access token is a security administrator's with the
    /// `admin` scope (for the bar only; the admin routes check it again).
    pub admin: bool,
}

impl Active {
    /// Returns the access token of the session.
    pub fn token(&self) -> &str {
        match &self.session.stage {
            Stage::Active { access_token, .. } => access_token,
            Stage::Pending { .. } => "",
        }
    }

    /// Returns the header bar data of a signed-in page.
    pub fn bar(&self) -> SignedIn {
        SignedIn {
            csrf: self.session.csrf.clone(),
            // The page locks itself, and the session, after this long.
            idle_secs: self.lock_secs.min(self.idle_secs),
            signout_secs: self.idle_secs,
            admin: self.admin,
        }
    }

    /// Saves the session after a change (such as a new patient handle).
    ///
    /// # Errors
    ///
    /// A page reporting the store failure.
    pub async fn save(&self, state: &AppState) -> Result<(), Response> {
        let store = state.engine.store.clone();
        let bytes = serde_json::to_vec(&self.session).map_err(|_| internal("saving"))?;
        let key = self.key.clone();
        let expires = self.expires;
        let saved = blocking(move || {
            store.kv_put(
                session::NS_APP_SESSION,
                &key,
                &bytes,
                Some(expires.saturating_mul(1_000_000)),
            )
        })
        .await?;
        if saved.is_err() {
            return Err(internal("saving the session"));
        }
        Ok(())
    }
}

pub(super) fn internal(step: &str) -> Response {
    tracing::error!(target: "ward::webapp", step, "a web app step failed");
    error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The server could not complete this step. Try again.",
    )
}

/// Runs blocking store work off the async workers.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| internal("a blocking task"))
}

/// Returns the authorization server, which the web app signs in through.
fn server_of(state: &AppState) -> Option<Arc<OAuthServer>> {
    state.oauth.clone()
}

fn no_server() -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "This server runs without its authorization server, so the web app is off.",
    )
}

/// Loads the signed-in session of a request, ends it after the idle or
/// absolute timeout, shows the lock page while it is locked (see
/// [`super::lock`]) and refreshes its access token when it is about to
/// expire. Without a live session the caller gets a redirect to sign-in.
///
/// # Errors
///
/// The response to send instead of the page: a redirect to sign-in, the
/// lock page or an error page.
pub async fn require(
    state: &AppState,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Result<Active, Response> {
    let mut active = load_live(state, peer, headers).await?;
    super::lock::check(state, peer, headers, &mut active).await?;
    touch(state, peer, active).await
}

/// Loads the signed-in session of a request and ends it after the idle or
/// absolute timeout, without looking at the lock or recording the use.
///
/// # Errors
///
/// A redirect to sign-in or to the signed-out page, or an error page.
pub async fn load_live(
    state: &AppState,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Result<Active, Response> {
    let server = server_of(state).ok_or_else(no_server)?;
    let signin = || see_other("/app/signin", &[]);
    let cookie = session::cookie_of(headers).ok_or_else(signin)?;
    let key = session::key_of(&cookie);
    let store = state.engine.store.clone();
    let lookup_key = key.clone();
    let loaded = blocking(move || session::load(&store, &lookup_key)).await?;
    let Ok(Some(session)) = loaded else {
        return Err(signin());
    };

    let settings = server.settings();
    let idle = settings.session_idle.whole_seconds();
    let max = settings.session_max.whole_seconds();
    let lock = settings.app_lock.whole_seconds();
    let now = now_secs();
    let timed_out = now - session.last_seen >= idle || now - session.created >= max;
    if matches!(session.stage, Stage::Pending { .. }) {
        return Err(signin());
    }
    if timed_out {
        // Revokes the tokens and ends the sign-in session as sign-out does.
        let mut response = end(state, peer, headers, &key, &session).await;
        response.headers_mut().insert(
            header::LOCATION,
            HeaderValue::from_static("/app/signed-out?reason=timeout"),
        );
        return Err(response);
    }
    let expires = (session.last_seen + idle).min(session.created.saturating_add(max));
    Ok(Active {
        key,
        session,
        idle_secs: idle,
        lock_secs: lock,
        expires,
        // Set by `touch` once the access token is fresh.
        admin: false,
    })
}

/// Records a use of an unlocked session: refreshes the access token when
/// it is about to expire, moves `last_seen` to now and saves the session.
///
/// # Errors
///
/// A redirect to sign-in when the token cannot be refreshed, or an error
/// page when the session cannot be saved.
pub async fn touch(
    state: &AppState,
    peer: Option<SocketAddr>,
    mut active: Active,
) -> Result<Active, Response> {
    let signin = || see_other("/app/signin", &[]);
    let now = now_secs();
    if let Stage::Active {
        refresh_token,
        access_expires,
        ..
    } = &active.session.stage
        && *access_expires - now < REFRESH_MARGIN_SECS
    {
        let Some(refresh) = refresh_token.clone() else {
            return Err(signin());
        };
        let device = active.session.device.clone();
        active.session.stage = refreshed(state, peer, &refresh, device.as_deref())
            .await
            .ok_or_else(signin)?;
    }
    active.admin = super::admin::is_admin_token(state, active.token());
    active.session.last_seen = now;
    let max = server_of(state)
        .map(|server| server.settings().session_max.whole_seconds())
        .unwrap_or(0);
    active.expires = (now + active.idle_secs).min(active.session.created.saturating_add(max));
    active.save(state).await?;
    Ok(active)
}

/// Trades a refresh token for a new access token, naming the session's
/// browser device when it is bound to one, so that the reads made with
/// the token are audited with the device.
pub(super) async fn refreshed(
    state: &AppState,
    peer: Option<SocketAddr>,
    refresh: &str,
    device: Option<&str>,
) -> Option<Stage> {
    let reply = call::send_for_device(
        state,
        peer,
        Call::form(
            "/oauth/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh),
                ("client_id", WEB_CLIENT_ID),
            ],
        ),
        device,
    )
    .await;
    stage_of_tokens(&reply)
}

fn stage_of_tokens(reply: &call::Reply) -> Option<Stage> {
    if !reply.status.is_success() {
        tracing::warn!(target: "ward::webapp", status = reply.status.as_u16(), "the token endpoint rejected the web app");
        return None;
    }
    let access_token = reply.body.get("access_token")?.as_str()?.to_owned();
    let expires_in = reply
        .body
        .get("expires_in")
        .and_then(serde_json::Value::as_i64)?;
    let refresh_token = reply
        .body
        .get("refresh_token")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    Some(Stage::Active {
        access_token,
        refresh_token,
        access_expires: now_secs() + expires_in,
    })
}

/// Registers the built-in web app client with the redirect URI of this
/// server's origin, replacing a record with another redirect URI (the
/// origin changed) or other allowed scopes (an older version's).
fn ensure_client(store: &dyn Store, redirect_uri: &str) -> identity::IdentityResult<()> {
    if let Some(existing) = identity::load_client(store, WEB_CLIENT_ID)?
        && existing.client.redirect_uris == [redirect_uri]
        && existing.client.allowed_scope == WEB_SCOPE
    {
        return Ok(());
    }
    let record = ClientRecord {
        client: Client {
            client_id: WEB_CLIENT_ID.to_owned(),
            kind: ClientKind::Public,
            auth_method: TokenEndpointAuthMethod::None,
            redirect_uris: vec![redirect_uri.to_owned()],
            allowed_scope: WEB_SCOPE.to_owned(),
            jwks: None,
            secret_digest: None,
        },
        name: "Ward web app".to_owned(),
    };
    identity::write(store, NS_CLIENT, WEB_CLIENT_ID, &record, None)
}

/// The query of `GET /app/signin`.
#[derive(Deserialize)]
pub struct StartQuery {
    /// `passkeys` to end on the passkeys page instead of the app.
    next: Option<String>,
}

/// `GET /app/signin`: starts a sign-in and sends the browser to the
/// authorization server.
///
/// The request requires a fresh authentication (`prompt=login`,
/// `max_age=0`): the authorization server's sign-in session
/// (`__Host-ward-session`) is not reused, so a locked app cannot be
/// reopened through a new sign-in without the password and second
/// factor. A session the browser still holds (locked or not) is ended
/// first, with its sign-in session.
pub async fn start(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Query(start_query): Query<StartQuery>,
) -> Response {
    let Some(server) = server_of(&state) else {
        return no_server();
    };
    let mut cookies = Vec::new();
    if let Some(old_cookie) = session::cookie_of(&headers) {
        let old_key = session::key_of(&old_cookie);
        let store = state.engine.store.clone();
        let lookup = old_key.clone();
        if let Ok(Ok(Some(old))) = blocking(move || session::load(&store, &lookup)).await
            && matches!(old.stage, Stage::Active { .. })
        {
            tracing::info!(target: "ward::webapp", locked = old.locked, "a new sign-in ends the session the browser held");
            cookies = close(&state, peer, &headers, &old_key, &old).await;
            // The new app cookie below replaces the cleared one.
            cookies.retain(|cookie| !cookie.starts_with(session::COOKIE));
        }
    }
    let origin = server.settings().origin.clone();
    let fhir_base = server.settings().fhir_base.clone();
    let redirect_uri = format!("{origin}{CALLBACK_PATH}");
    let (Ok(cookie), Ok(oauth_state), Ok(verifier)) =
        (generate_token(), generate_token(), generate_token())
    else {
        return internal("generating the sign-in tokens");
    };
    let challenge = URL_SAFE_NO_PAD.encode(TokenDigest::of(&verifier).as_bytes());
    let now = now_secs();
    let Ok(mut pending) = WebSession::new(
        Stage::Pending {
            oauth_state: oauth_state.to_string(),
            verifier: verifier.to_string(),
        },
        now,
    ) else {
        return internal("creating the session");
    };
    // The sign-in session the browser holds now: the callback refuses it,
    // so the code must come from one opened by this sign-in.
    pending.signin = session::signin_key_of(&headers);
    if start_query.next.as_deref() == Some("passkeys") {
        pending.after = Some(session::AFTER_PASSKEYS.to_owned());
    }
    let store = state.engine.store.clone();
    let key = session::key_of(&cookie);
    let redirect = redirect_uri.clone();
    let saved = blocking(move || {
        ensure_client(store.as_ref(), &redirect)?;
        session::save(&store, &key, &pending, now + session::PENDING_TTL_SECS)
    })
    .await;
    if !matches!(saved, Ok(Ok(()))) {
        return internal("storing the sign-in request");
    }

    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", WEB_CLIENT_ID)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("scope", WEB_SCOPE)
        .append_pair("state", &oauth_state)
        .append_pair("aud", &fhir_base)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("prompt", "login")
        .append_pair("max_age", "0")
        .finish();
    cookies.push(session::set_cookie(&cookie, session::PENDING_TTL_SECS));
    see_other(&format!("/oauth/authorize?{query}"), &cookies)
}

/// The query of the OAuth redirect back to the app.
#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /app/callback`: checks `state`, exchanges the code in-process and
/// turns the pending session into a signed-in one under a new cookie.
pub async fn callback(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Response {
    let Some(server) = server_of(&state) else {
        return no_server();
    };
    let restart = || {
        AppPage::new(
            StatusCode::BAD_REQUEST,
            "Sign in",
            "<h1>Sign-in did not finish</h1><p class=\"error\" role=\"alert\">The sign-in \
             was denied, expired or opened in another browser.</p>\
             <p><a class=\"button wide\" href=\"/app/signin\">Sign in again</a></p>"
                .to_owned(),
        )
        .into_response()
    };
    let Some(cookie) = session::cookie_of(&headers) else {
        return restart();
    };
    let old_key = session::key_of(&cookie);
    let store = state.engine.store.clone();
    let lookup = old_key.clone();
    let loaded = blocking(move || {
        let session = session::load(&store, &lookup);
        // The pending record is single-use, whatever the outcome.
        let _ = session::delete(&store, &lookup);
        session
    })
    .await;
    let Ok(Ok(Some(pending))) = loaded else {
        return restart();
    };
    let Stage::Pending {
        oauth_state,
        verifier,
    } = &pending.stage
    else {
        return restart();
    };
    let state_ok = query
        .state
        .as_deref()
        .is_some_and(|sent| ward_crypto::constant_time_eq(sent.as_bytes(), oauth_state.as_bytes()));
    let (Some(code), true, None) = (query.code.as_deref(), state_ok, query.error.as_deref()) else {
        return restart();
    };
    // The code must come from a sign-in made for this request: password
    // and second factor entered after `/app/signin`, never an older
    // sign-in session reused by a request stripped of `prompt=login`.
    let Some(signin_user) = fresh_signin_user(&state, &headers, &pending).await else {
        tracing::warn!(target: "ward::webapp", "a web app sign-in without a fresh password and second factor was refused");
        return restart();
    };

    // A browser enrolled earlier proves its key here too (through the
    // service worker). Its new session is bound to that key at once, and
    // the tokens name the device from the first one on.
    let bound = super::enroll::rebind(&state, &headers, &signin_user).await;
    let redirect_uri = format!("{}{CALLBACK_PATH}", server.settings().origin);
    let reply = call::send_for_device(
        &state,
        peer,
        Call::form(
            "/oauth/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &redirect_uri),
                ("client_id", WEB_CLIENT_ID),
                ("code_verifier", verifier),
            ],
        ),
        bound.as_ref().map(|(_, device)| device.as_str()),
    )
    .await;
    let Some(stage) = stage_of_tokens(&reply) else {
        return restart();
    };
    let admin_home = match &stage {
        Stage::Active { access_token, .. } => super::admin::is_admin_token(&state, access_token),
        Stage::Pending { .. } => false,
    };

    let now = now_secs();
    let (Ok(new_cookie), Ok(mut active)) = (generate_token(), WebSession::new(stage, now)) else {
        return internal("creating the session");
    };
    active.user = subject_of(&active.stage);
    if active.user.as_deref() != Some(signin_user.as_str()) {
        tracing::warn!(target: "ward::webapp", "the sign-in session and the token of a web app sign-in name different users");
        revoke_tokens(&state, peer, &active.stage).await;
        return restart();
    }
    // The sign-in session the authorization server just opened: a lock
    // ends it, and its age decides whether it may add a passkey.
    active.signin = session::signin_key_of(&headers);
    if let Some((jkt, device)) = bound {
        active.jkt = Some(jkt);
        active.device = Some(device);
    }
    let settings = server.settings();
    let idle = settings.session_idle.whole_seconds();
    let max = settings.session_max.whole_seconds();
    let key = session::key_of(&new_cookie);
    let store = state.engine.store.clone();
    let signin = active.signin.clone();
    let device = active.device.clone();
    let saved = blocking(move || {
        // Revoking the device ends the sign-in session as well.
        if let (Some(signin), Some(device)) = (signin, device) {
            identity::mark_session_device(store.as_ref(), &signin, &device, (idle, max))?;
        }
        session::save(&store, &key, &active, now + idle.min(max))
    })
    .await;
    if !matches!(saved, Ok(Ok(()))) {
        return internal("storing the session");
    }
    tracing::info!(target: "ward::webapp", "web app session started");
    // Administrators have no patients; they start on the admin screens.
    let home = match pending.after.as_deref() {
        Some(session::AFTER_PASSKEYS) => session::AFTER_PASSKEYS,
        _ if admin_home => "/app/admin",
        _ => "/app",
    };
    see_other(home, &[session::set_cookie(&new_cookie, max)])
}

/// Returns the user of the request's sign-in session when that session
/// was opened by a password and second factor entered for the `pending`
/// sign-in: not the one the browser held when the sign-in started, and
/// not older than the start.
async fn fresh_signin_user(
    state: &AppState,
    headers: &HeaderMap,
    pending: &WebSession,
) -> Option<String> {
    let key = session::signin_key_of(headers)?;
    if pending.signin.as_deref() == Some(key.as_str()) {
        return None;
    }
    let since = pending.created;
    let store = state.engine.store.clone();
    let signin = blocking(move || {
        identity::read::<identity::Session>(store.as_ref(), identity::NS_SESSION, &key)
    })
    .await
    .ok()?
    .ok()??;
    (signin.created >= since).then_some(signin.user_id)
}

/// Returns the `sub` claim of the session's access token: the user's id.
/// The token came straight from this server's token endpoint in-process,
/// so its payload is read without checking the signature again.
fn subject_of(stage: &Stage) -> Option<String> {
    let Stage::Active { access_token, .. } = stage else {
        return None;
    };
    let payload = access_token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("sub")?.as_str().map(str::to_owned)
}

/// The form of the sign-out button.
#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /app/signout`: revokes the tokens, ends the sign-in session of the
/// authorization server too (so the next user of a shared phone must enter
/// a password and code) and clears both cookies.
pub async fn sign_out(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    WebForm(form): WebForm<CsrfForm>,
) -> Response {
    let Some(cookie) = session::cookie_of(&headers) else {
        return see_other("/app/signed-out", &[]);
    };
    let key = session::key_of(&cookie);
    let store = state.engine.store.clone();
    let lookup = key.clone();
    let loaded = blocking(move || session::load(&store, &lookup)).await;
    let Ok(Ok(Some(web))) = loaded else {
        return see_other("/app/signed-out", &[session::set_cookie("", 0)]);
    };
    if !web.csrf_matches(&form.csrf) {
        return error_page(
            StatusCode::FORBIDDEN,
            "This form has expired. Reload the page and sign out again.",
        );
    }
    end(&state, peer, &headers, &key, &web).await
}

/// Revokes the session's tokens, deletes it, ends the authorization
/// server's session and sends the browser to the signed-out page.
pub(super) async fn end(
    state: &AppState,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    key: &str,
    web: &WebSession,
) -> Response {
    let cookies = close(state, peer, headers, key, web).await;
    tracing::info!(target: "ward::webapp", "web app session ended");
    let mut response = see_other("/app/signed-out", &cookies);
    // Tells the browser to drop everything it kept for this origin's pages.
    response
        .headers_mut()
        .insert("clear-site-data", HeaderValue::from_static("\"cache\""));
    response
}

/// Revokes the access and refresh tokens of a signed-in stage.
async fn revoke_tokens(state: &AppState, peer: Option<SocketAddr>, stage: &Stage) {
    let Stage::Active {
        access_token,
        refresh_token,
        ..
    } = stage
    else {
        return;
    };
    for token in std::iter::once(access_token).chain(refresh_token) {
        let reply = call::send(
            state,
            peer,
            Call::form(
                "/oauth/revoke",
                &[("token", token.as_str()), ("client_id", WEB_CLIENT_ID)],
            ),
        )
        .await;
        if !reply.status.is_success() {
            tracing::warn!(target: "ward::webapp", status = reply.status.as_u16(), "revoking a web app token failed");
        }
    }
}

/// Revokes the session's tokens, deletes it and ends the authorization
/// server's sign-in sessions: the one the request's cookie names and the
/// one the session was started with. Returns the `Set-Cookie` values that
/// clear both cookies.
async fn close(
    state: &AppState,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    key: &str,
    web: &WebSession,
) -> Vec<String> {
    revoke_tokens(state, peer, &web.stage).await;
    let store = state.engine.store.clone();
    let owned_key = key.to_owned();
    let _ = blocking(move || session::delete(&store, &owned_key)).await;

    // Sign-out of the session the cookie names (recorded as a logout),
    // then of the one the app session was started with, if another.
    let mut logout = Call::form("/oauth/logout", &[]);
    if let Some(cookies) = headers.get(header::COOKIE) {
        logout.extra.insert(header::COOKIE, cookies.clone());
    }
    let reply = call::send(state, peer, logout).await;
    if let Some(signin) = web.signin.clone() {
        let store = state.engine.store.clone();
        let _ = blocking(move || identity::end_session(store.as_ref(), &signin)).await;
    }
    let mut cookies = vec![session::set_cookie("", 0)];
    cookies.extend(
        reply
            .headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .map(str::to_owned),
    );
    cookies
}

/// `GET /app/timeout`: where an idle page sends itself. Ends the session
/// like sign-out. A GET is safe here because the cookie is `SameSite=Strict`,
/// so another site cannot end a session through it.
pub async fn timeout(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
) -> Response {
    let Some(cookie) = session::cookie_of(&headers) else {
        return see_other("/app/signed-out?reason=timeout", &[]);
    };
    let key = session::key_of(&cookie);
    let store = state.engine.store.clone();
    let lookup = key.clone();
    let loaded = blocking(move || session::load(&store, &lookup)).await;
    let response = match loaded {
        Ok(Ok(Some(web))) => end(&state, peer, &headers, &key, &web).await,
        _ => see_other("/app/signed-out", &[session::set_cookie("", 0)]),
    };
    let mut response = response;
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_static("/app/signed-out?reason=timeout"),
    );
    response
}

/// The query of the signed-out page.
#[derive(Deserialize)]
pub struct SignedOutQuery {
    reason: Option<String>,
}

/// `GET /app/signed-out`.
pub async fn signed_out(Query(query): Query<SignedOutQuery>) -> Response {
    let message = match query.reason.as_deref() {
        Some("timeout") => "You were signed out because the app was not used for a while.",
        Some("pin") => "You were signed out after too many wrong PINs.",
        Some("device") => "You were signed out because this browser's device was revoked.",
        _ => "You are signed out.",
    };
    AppPage::new(
        StatusCode::OK,
        "Signed out",
        format!(
            "<h1>Signed out</h1><p class=\"notice\" role=\"status\">{}</p>\
             <p><a class=\"button wide\" href=\"/app/signin\">Sign in</a></p>",
            escape(message)
        ),
    )
    .into_response()
}
