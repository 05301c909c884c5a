//! Sign-in, sign-out and the idle timeout of the web app, and the check
//! every signed-in page starts with.
//!
//! Sign-in is the authorization code flow with PKCE against this server's
//! `/oauth/authorize`: the user meets the same password, TOTP and consent
//! pages as for any client. The code is exchanged in-process at
//! `/oauth/token`, and the tokens go into the server-side session.

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
    /// The session's latest expiry, in seconds since the Unix epoch.
    pub expires: i64,
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
            idle_secs: self.idle_secs,
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

fn internal(step: &str) -> Response {
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
/// absolute timeout and refreshes its access token when it is about to
/// expire. Without a live session the caller gets a redirect to sign-in.
///
/// # Errors
///
/// The response to send instead of the page: a redirect to sign-in or an
/// error page.
pub async fn require(
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
    let Ok(Some(mut session)) = loaded else {
        return Err(signin());
    };

    let settings = server.settings();
    let idle = settings.session_idle.whole_seconds();
    let max = settings.session_max.whole_seconds();
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
    if let Stage::Active {
        refresh_token,
        access_expires,
        ..
    } = &session.stage
        && *access_expires - now < REFRESH_MARGIN_SECS
    {
        let Some(refresh) = refresh_token.clone() else {
            return Err(signin());
        };
        session.stage = refreshed(state, peer, &refresh).await.ok_or_else(signin)?;
    }
    session.last_seen = now;
    let expires = (now + idle).min(session.created.saturating_add(max));
    let active = Active {
        key,
        session,
        idle_secs: idle,
        expires,
    };
    active.save(state).await?;
    Ok(active)
}

/// Trades a refresh token for a new access token.
async fn refreshed(state: &AppState, peer: Option<SocketAddr>, refresh: &str) -> Option<Stage> {
    let reply = call::send(
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
/// origin changed).
fn ensure_client(store: &dyn Store, redirect_uri: &str) -> identity::IdentityResult<()> {
    if let Some(existing) = identity::load_client(store, WEB_CLIENT_ID)?
        && existing.client.redirect_uris == [redirect_uri]
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

/// `GET /app/signin`: starts a sign-in and sends the browser to the
/// authorization server.
pub async fn start(State(state): State<AppState>) -> Response {
    let Some(server) = server_of(&state) else {
        return no_server();
    };
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
    let Ok(pending) = WebSession::new(
        Stage::Pending {
            oauth_state: oauth_state.to_string(),
            verifier: verifier.to_string(),
        },
        now,
    ) else {
        return internal("creating the session");
    };
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
        .finish();
    see_other(
        &format!("/oauth/authorize?{query}"),
        &[session::set_cookie(&cookie, session::PENDING_TTL_SECS)],
    )
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

    let redirect_uri = format!("{}{CALLBACK_PATH}", server.settings().origin);
    let reply = call::send(
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
    )
    .await;
    let Some(stage) = stage_of_tokens(&reply) else {
        return restart();
    };

    let now = now_secs();
    let (Ok(new_cookie), Ok(active)) = (generate_token(), WebSession::new(stage, now)) else {
        return internal("creating the session");
    };
    let settings = server.settings();
    let idle = settings.session_idle.whole_seconds();
    let max = settings.session_max.whole_seconds();
    let key = session::key_of(&new_cookie);
    let store = state.engine.store.clone();
    let saved = blocking(move || session::save(&store, &key, &active, now + idle.min(max))).await;
    if !matches!(saved, Ok(Ok(()))) {
        return internal("storing the session");
    }
    tracing::info!(target: "ward::webapp", "web app session started");
    see_other("/app", &[session::set_cookie(&new_cookie, max)])
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
async fn end(
    state: &AppState,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    key: &str,
    web: &WebSession,
) -> Response {
    if let Stage::Active {
        access_token,
        refresh_token,
        ..
    } = &web.stage
    {
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
    let store = state.engine.store.clone();
    let owned_key = key.to_owned();
    let _ = blocking(move || session::delete(&store, &owned_key)).await;

    let mut logout = Call::form("/oauth/logout", &[]);
    if let Some(cookies) = headers.get(header::COOKIE) {
        logout.extra.insert(header::COOKIE, cookies.clone());
    }
    let reply = call::send(state, peer, logout).await;
    let mut cookies = vec![session::set_cookie("", 0)];
    cookies.extend(
        reply
            .headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .map(str::to_owned),
    );
    tracing::info!(target: "ward::webapp", "web app session ended");
    let mut response = see_other("/app/signed-out", &cookies);
    // Tells the browser to drop everything it kept for this origin's pages.
    response
        .headers_mut()
        .insert("clear-site-data", HeaderValue::from_static("\"cache\""));
    response
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
    let message = if query.reason.as_deref() == Some("timeout") {
        "You were signed out because the app was not used for a while."
    } else {
        "You are signed out."
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
