//! The OAuth 2.0 authorization server for SMART App Launch 2.x.
//!
//! It serves the discovery documents and the authorization code flow with
//! PKCE, password sign-in with a TOTP code or a passkey as second factor,
//! and consent. The token endpoint takes
//! authorization codes, refresh tokens and SMART Backend Services client
//! credentials. Introspection, revocation and client registration by
//! administrators complete it.
//!
//! The pure rules (PKCE, redirect matching, codes, refresh families,
//! client assertions, throttling, passwords, TOTP) come from `ward-auth`;
//! this module keeps their state in the store's sealed key-value records
//! (see [`identity`] for the namespaces) and speaks HTTP.

mod admin;
mod authorize;
mod html;
pub mod identity;
mod logout;
mod token;

pub use token::WebAppDevice;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderValue, StatusCode, header};
use jsonwebtoken::EncodingKey;
use serde_json::{Value, json};
use time::Duration;
use ward_crypto::SigningKey;
use ward_store::Store;

use crate::AppState;
use crate::auth::{Principal, TokenIssuer, TokenVerifier};
use crate::error::FhirError;

/// Default idle timeout of a web session.
pub const DEFAULT_SESSION_IDLE: Duration = Duration::minutes(15);
/// Default time without use after which the web app locks.
pub const DEFAULT_APP_LOCK: Duration = Duration::minutes(5);
/// Default absolute timeout of a web session.
pub const DEFAULT_SESSION_MAX: Duration = Duration::hours(12);
/// Default access token lifetime, in seconds.
pub const DEFAULT_ACCESS_TTL_SECS: i64 = 600;
/// The name authenticator apps show for Ward accounts.
pub const TOTP_ISSUER: &str = "Ward";

/// Settings of the authorization server.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    /// The server origin, such as `https://127.0.0.1:8443`: the token issuer.
    pub origin: String,
    /// The FHIR base URL: the only accepted `aud`.
    pub fhir_base: String,
    /// A web session ends after this long without use.
    pub session_idle: Duration,
    /// A web session ends this long after sign-in, whatever its use.
    pub session_max: Duration,
    /// The web app locks (PIN or passkey to unlock) after this long
    /// without use; `session_idle` later it signs out.
    pub app_lock: Duration,
    /// Access token lifetime, in seconds.
    pub access_ttl_secs: i64,
    /// Lifetime of an `offline_access` refresh token family.
    pub offline_lifetime: Duration,
}

impl OAuthSettings {
    /// Settings with the defaults for a server at `origin` whose FHIR base is
    /// `fhir_base`.
    pub fn new(origin: &str, fhir_base: &str) -> Self {
        Self {
            origin: origin.to_owned(),
            fhir_base: fhir_base.to_owned(),
            session_idle: DEFAULT_SESSION_IDLE,
            session_max: DEFAULT_SESSION_MAX,
            app_lock: DEFAULT_APP_LOCK,
            access_ttl_secs: DEFAULT_ACCESS_TTL_SECS,
            offline_lifetime: Duration::days(90),
        }
    }

    /// Sets the idle and absolute web session timeouts, in seconds.
    pub fn with_session_timeouts(mut self, idle_secs: i64, max_secs: i64) -> Self {
        self.session_idle = Duration::seconds(idle_secs);
        self.session_max = Duration::seconds(max_secs);
        self
    }

    /// Sets how long the web app waits without use before it locks, in
    /// seconds.
    pub fn with_app_lock(mut self, secs: i64) -> Self {
        self.app_lock = Duration::seconds(secs);
        self
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }
}

/// The authorization server: settings, the store and the token key.
pub struct OAuthServer {
    settings: OAuthSettings,
    store: Arc<dyn Store>,
    issuer: TokenIssuer,
    verifier: Arc<TokenVerifier>,
    id_token_key: EncodingKey,
    kid: String,
    jwk: Value,
    /// Public JWKs of retired signing keys, still served so clients can
    /// verify tokens those keys signed.
    retired_jwks: Vec<Value>,
}

impl OAuthServer {
    /// Adds the public JWKs of retired signing keys to the JWKS.
    pub fn with_retired_keys(mut self, jwks: Vec<Value>) -> Self {
        self.retired_jwks = jwks;
        self
    }

    /// Creates the server. `signing` is the access-token key; ID tokens are
    /// signed with it too, and its public half is served at `/oauth/jwks`.
    ///
    /// # Errors
    ///
    /// The key cannot be exported for signing.
    pub fn new(
        settings: OAuthSettings,
        store: Arc<dyn Store>,
        signing: &SigningKey,
        verifier: Arc<TokenVerifier>,
    ) -> Result<Self, ward_crypto::Error> {
        let pkcs8 = signing.pkcs8_der()?;
        Ok(Self {
            issuer: TokenIssuer::new(&pkcs8, signing.kid(), &settings.origin, &settings.fhir_base),
            id_token_key: EncodingKey::from_ec_der(&pkcs8),
            kid: signing.kid().to_owned(),
            jwk: signing.public_jwk(),
            retired_jwks: Vec::new(),
            settings,
            store,
            verifier,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &OAuthSettings {
        &self.settings
    }

    /// The `rest.security` element of the CapabilityStatement.
    pub fn capability_security(&self) -> Value {
        json!({
            "extension": [{
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [
                    { "url": "authorize", "valueUri": self.settings.endpoint("/oauth/authorize") },
                    { "url": "token", "valueUri": self.settings.endpoint("/oauth/token") },
                    { "url": "revoke", "valueUri": self.settings.endpoint("/oauth/revoke") },
                    { "url": "introspect", "valueUri": self.settings.endpoint("/oauth/introspect") },
                ],
            }],
            "service": [{
                "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR",
                }],
                "text": "OAuth 2.0 with SMART App Launch 2.x",
            }],
            "description": "Access tokens from the SMART authorization server; see /.well-known/smart-configuration",
        })
    }

    fn smart_configuration(&self) -> Value {
        let s = &self.settings;
        json!({
            "issuer": s.origin,
            "jwks_uri": s.endpoint("/oauth/jwks"),
            "authorization_endpoint": s.endpoint("/oauth/authorize"),
            "token_endpoint": s.endpoint("/oauth/token"),
            "introspection_endpoint": s.endpoint("/oauth/introspect"),
            "revocation_endpoint": s.endpoint("/oauth/revoke"),
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "response_types_supported": ["code"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["ES256", "ES384", "RS384"],
            "code_challenge_methods_supported": ["S256"],
            "tls_client_certificate_bound_access_tokens": true,
            "dpop_signing_alg_values_supported": ward_auth::dpop::SUPPORTED_ALGORITHMS,
            "scopes_supported": [
                "openid", "fhirUser", "profile", "launch/patient", "offline_access", "online_access",
                "patient/*.cruds", "user/*.cruds", "system/*.cruds",
            ],
            "capabilities": [
                "launch-standalone", "client-public", "client-confidential-symmetric",
                "client-confidential-asymmetric", "sso-openid-connect", "context-standalone-patient",
                "permission-offline", "permission-online", "permission-patient", "permission-user",
                "permission-v2", "authorize-post",
            ],
        })
    }

    fn openid_configuration(&self) -> Value {
        let s = &self.settings;
        json!({
            "issuer": s.origin,
            "jwks_uri": s.endpoint("/oauth/jwks"),
            "authorization_endpoint": s.endpoint("/oauth/authorize"),
            "token_endpoint": s.endpoint("/oauth/token"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "scopes_supported": ["openid", "fhirUser", "profile"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"],
            "prompt_values_supported": ["none", "login"],
            "code_challenge_methods_supported": ["S256"],
            "tls_client_certificate_bound_access_tokens": true,
            "dpop_signing_alg_values_supported": ward_auth::dpop::SUPPORTED_ALGORITHMS,
        })
    }
}

/// Builds the routes of the authorization server.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/.well-known/smart-configuration", get(smart_configuration))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/oauth/jwks", get(jwks))
        .route("/oauth/style.css", get(html::stylesheet))
        .route(
            "/oauth/authorize",
            get(authorize::authorize_get).post(authorize::authorize_post),
        )
        .route("/oauth/login", post(authorize::login))
        .route("/oauth/mfa", post(authorize::mfa))
        .route("/oauth/passkey.js", get(authorize::passkey::script))
        .route("/oauth/passkeys", get(authorize::passkey::passkeys_page))
        .route(
            "/oauth/passkey/register/start",
            post(authorize::passkey::register_start),
        )
        .route(
            "/oauth/passkey/register/finish",
            post(authorize::passkey::register_finish),
        )
        .route(
            "/oauth/passkey/auth/start",
            post(authorize::passkey::auth_start),
        )
        .route(
            "/oauth/passkey/auth/finish",
            post(authorize::passkey::auth_finish),
        )
        .route("/oauth/consent", post(authorize::consent))
        .route(
            "/oauth/logout",
            get(logout::logout_page).post(logout::logout),
        )
        .route("/oauth/token", post(token::token))
        .route("/oauth/introspect", post(token::introspect))
        .route("/oauth/revoke", post(token::revoke))
        .route("/admin/clients", post(admin::create_client))
}

/// Returns the authorization server, or 404 when the application runs
/// without one.
fn server_of(state: &AppState) -> Result<Arc<OAuthServer>, Box<Response>> {
    state.oauth.clone().ok_or_else(|| {
        Box::new(FhirError::not_found("this server has no authorization server").into_response())
    })
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn smart_configuration(State(state): State<AppState>) -> Response {
    match server_of(&state) {
        Ok(server) => json_response(StatusCode::OK, &server.smart_configuration()),
        Err(response) => *response,
    }
}

async fn openid_configuration(State(state): State<AppState>) -> Response {
    match server_of(&state) {
        Ok(server) => json_response(StatusCode::OK, &server.openid_configuration()),
        Err(response) => *response,
    }
}

async fn jwks(State(state): State<AppState>) -> Response {
    match server_of(&state) {
        Ok(server) => {
            let mut keys = vec![server.jwk.clone()];
            keys.extend(server.retired_jwks.iter().cloned());
            json_response(StatusCode::OK, &json!({ "keys": keys }))
        }
        Err(response) => *response,
    }
}

/// Runs blocking work (store access, Argon2) off the async workers.
async fn blocking<F>(work: F) -> Response
where
    F: FnOnce() -> Response + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(response) => response,
        Err(error) => {
            tracing::error!(%error, "an authorization task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// Rejects an access token that was revoked or whose user is disabled.
/// The FHIR request extractor calls this after the signature checks.
///
/// # Errors
///
/// 401 `invalid_token` for a revoked token or disabled user, 500 when the
/// store fails.
pub async fn check_principal(state: &AppState, principal: &Principal) -> Result<(), FhirError> {
    let store = state.engine.store.clone();
    let subject = principal.subject.clone();
    let jti = principal.token_id.clone();
    let live = tokio::task::spawn_blocking(move || identity::token_is_live(&store, &subject, &jti))
        .await
        .map_err(|e| FhirError::internal(&e))?
        .map_err(|e| FhirError::internal(&e))?;
    if live {
        Ok(())
    } else {
        crate::metrics::record_auth_failure("revoked_token");
        Err(FhirError::unauthorized("invalid_token", "token revoked"))
    }
}
