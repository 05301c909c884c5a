//! The token endpoint (authorization code, refresh token and SMART Backend
//! Services client credentials), client authentication, token
//! introspection (RFC 7662) and revocation (RFC 7009).
//!
//! A token names the device it was issued to (the `device` claim), so the
//! device gate checks that device on every request and the audit record of
//! each read names it. A phone is named by its mutual-TLS certificate. A
//! browser enrolled through the web app has no certificate: the web app
//! requests its tokens in-process, and when its session is bound to a
//! browser device it attaches a [`WebAppDevice`] request extension naming
//! that device. An extension, unlike a header, cannot be set by a client
//! over the network. It is honoured only for the built-in web client, only
//! for an active device enrolled as a browser, and only when that device
//! belongs to the user the token is for.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use jsonwebtoken::{Algorithm, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use ward_auth::oauth::refresh::Revocation;
use ward_auth::oauth::{
    AuthorizationCode, ClientKind, CodeError, LaunchContext, RefreshError, RefreshFamily,
    RefreshRequest, TokenDigest, TokenEndpointAuthMethod, TokenRequest, validate_client_assertion,
};
use ward_auth::scopes::{Scope, ScopeContext, Scopes};

use super::authorize::Params;
use super::identity::{
    self, ClientRecord, FamilyRecord, NS_ASSERTION_JTI, NS_CODE, NS_FAMILY, NS_REFRESH, UserRecord,
    digest_key, micros,
};
use super::{OAuthServer, blocking, json_response, server_of};
use crate::AppState;
use crate::audit::{OwnedSecurityEvent, SecurityEventKind, record_security_event};
use crate::auth::{
    AccessClaims, Confirmation, DPOP_HEADER, Grant, Principal, authenticate, single_dpop_proof,
};
use crate::tls::ClientCertificate;

/// A request extension set by the web app's in-process token requests when
/// the web session is bound to an enrolled browser: the device id to name
/// in the issued access token.
#[derive(Debug, Clone)]
pub struct WebAppDevice(pub String);

/// Largest token request body accepted.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// An authorization code as stored: the record and what was issued from
/// it, so that a second use of the code can revoke those tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredCode {
    /// The code record.
    pub code: AuthorizationCode,
    /// The access token issued from the code, as `(jti, exp)`.
    pub access_token: Option<(String, i64)>,
    /// The key of the refresh token family started from the code.
    pub family: Option<String>,
}

/// An OAuth error response (RFC 6749 section 5.2).
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// A fresh nonce for a `use_dpop_nonce` error (RFC 9449 section 8).
    dpop_nonce: Option<String>,
    /// The device of a request rejected because that device is revoked or
    /// unknown.
    revoked_device: Option<Box<RevokedDevice>>,
}

/// A token request rejected because its client certificate names a
/// revoked or unknown device. [`form_handler`] records it as a device event
/// and raises the `revoked_device` alert.
#[derive(Debug, Clone)]
struct RevokedDevice {
    /// The device id the certificate names.
    device: String,
    /// The user the device was enrolled for, when the registry has it.
    owner: Option<String>,
    /// The rejection reason.
    reason: String,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        let status = if error == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else if error == "server_error" {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::BAD_REQUEST
        };
        Self {
            status,
            error,
            description: description.into(),
            dpop_nonce: None,
            revoked_device: None,
        }
    }

    fn server(error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%error, "the token endpoint failed");
        Self::new("server_error", "the server could not complete the request")
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.error, "error_description": self.description });
        let mut response = json_response(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"ward\""),
            );
        }
        if let Some(nonce) = self.dpop_nonce
            && let Ok(value) = HeaderValue::from_str(&nonce)
        {
            response.headers_mut().insert("dpop-nonce", value);
        }
        response
    }
}

type OAuthResult<T> = Result<T, OAuthError>;

impl From<identity::IdentityError> for OAuthError {
    fn from(error: identity::IdentityError) -> Self {
        Self::server(&error)
    }
}

/// The parts of a form request the handlers read besides the parameters.
struct FormRequest {
    headers: HeaderMap,
    /// The client certificate of the TLS connection, if one was presented.
    client_certificate: Option<ClientCertificate>,
    /// The browser device the web app named in-process, if any.
    web_device: Option<String>,
}

async fn form_handler(
    state: AppState,
    request: Request,
    handler: fn(&OAuthServer, &FormRequest, &Params) -> OAuthResult<Response>,
) -> Response {
    let server: Arc<OAuthServer> = match server_of(&state) {
        Ok(server) => server,
        Err(response) => return *response,
    };
    let (parts, body) = request.into_parts();
    let network = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    let media = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if media.as_deref() != Some("application/x-www-form-urlencoded") {
        return OAuthError::new(
            "invalid_request",
            "send the parameters as application/x-www-form-urlencoded",
        )
        .into_response();
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
        return OAuthError::new("invalid_request", "the request body is too large").into_response();
    };
    let form = FormRequest {
        client_certificate: parts.extensions.get::<ClientCertificate>().cloned(),
        web_device: parts.extensions.get::<WebAppDevice>().map(|d| d.0.clone()),
        headers: parts.headers,
    };
    let mut response = blocking(move || {
        let params = Params::parse(&bytes);
        handler(&server, &form, &params).unwrap_or_else(IntoResponse::into_response)
    })
    .await;
    if let Some(event) = response.extensions_mut().remove::<OwnedSecurityEvent>() {
        record_security_event(&state, event.as_event(network)).await;
    }
    if let Some(rejected) = response.extensions_mut().remove::<RevokedDevice>() {
        record_revoked_device(&state, &rejected, network).await;
    }
    response
}

/// Audits a token request rejected because of a revoked or unknown device,
/// as the device gate does for FHIR requests. The response is already
/// decided, so a failure to write is logged only.
async fn record_revoked_device(
    state: &AppState,
    rejected: &RevokedDevice,
    network: Option<std::net::IpAddr>,
) {
    let actor = crate::audit::Actor {
        user_id: rejected
            .owner
            .clone()
            .unwrap_or_else(|| "anonymous".to_owned()),
        network,
        ..crate::audit::Actor::default()
    };
    let recorded =
        crate::device::gate::record_revoked(state, &actor, &rejected.device, &rejected.reason)
            .await;
    if let Err(error) = recorded {
        tracing::error!(
            target: "ward::audit",
            device = %rejected.device,
            status = error.status.as_u16(),
            "recording a token request from a revoked device failed"
        );
    }
}

/// Attaches a token event to `response`; [`form_handler`] records it once
/// the blocking handler has returned.
fn with_event(mut response: Response, event: OwnedSecurityEvent) -> Response {
    response.extensions_mut().insert(event);
    response
}

/// `POST /oauth/token`.
pub async fn token(State(state): State<AppState>, request: Request) -> Response {
    form_handler(state, request, token_request).await
}

/// `POST /oauth/introspect`.
pub async fn introspect(State(state): State<AppState>, request: Request) -> Response {
    form_handler(state, request, introspect_request).await
}

/// `POST /oauth/revoke`.
pub async fn revoke(State(state): State<AppState>, request: Request) -> Response {
    form_handler(state, request, revoke_request).await
}

/// Handles a token request and attaches its audit event: the issued
/// token's subject, or the OAuth error code of a rejection.
fn token_request(
    server: &OAuthServer,
    form: &FormRequest,
    params: &Params,
) -> OAuthResult<Response> {
    let mut client_id = None;
    let (response, mut event) = match issue_token(server, form, params, &mut client_id) {
        Ok(body) => {
            let mut event = OwnedSecurityEvent::new(SecurityEventKind::TokenIssued);
            event.user_id = body["access_token"]
                .as_str()
                .and_then(|token| server.verifier.verify(token).ok())
                .map(|claims| claims.sub);
            (json_response(StatusCode::OK, &body), event)
        }
        Err(mut error) => {
            let mut event = OwnedSecurityEvent::new(SecurityEventKind::TokenRejected);
            event.reason = Some(error.error);
            let revoked = error.revoked_device.take();
            event.device_id = revoked.as_ref().map(|r| r.device.clone());
            let mut response = error.into_response();
            if let Some(revoked) = revoked {
                response.extensions_mut().insert(*revoked);
            }
            (response, event)
        }
    };
    event.client_id = client_id;
    Ok(with_event(response, event))
}

/// Authenticates the client and runs the grant; `client_id` receives the
/// authenticated client.
fn issue_token(
    server: &OAuthServer,
    form: &FormRequest,
    params: &Params,
    client_id: &mut Option<String>,
) -> OAuthResult<Value> {
    let now = OffsetDateTime::now_utc();
    let grant_type = params.get("grant_type").unwrap_or("");
    let client = authenticate_client(server, &form.headers, params, now)?;
    *client_id = Some(client.client.client_id.clone());
    let binding = Binding::of_request(server, form, &client, now)?;
    let body = match grant_type {
        "authorization_code" => exchange_code(server, &client, params, &binding, now)?,
        "refresh_token" => refresh(server, &client, params, &binding, now)?,
        "client_credentials" => client_credentials(server, &client, params, &binding)?,
        "" => return Err(OAuthError::new("invalid_request", "grant_type is missing")),
        _ => {
            return Err(OAuthError::new(
                "unsupported_grant_type",
                "grant_type must be authorization_code, refresh_token or client_credentials",
            ));
        }
    };
    Ok(body)
}

/// Rejects a token request from a device that is unknown or revoked, and
/// returns the device's record.
fn check_device_active(
    server: &OAuthServer,
    device: &str,
) -> OAuthResult<ward_device::DeviceRecord> {
    let revoked = |owner: Option<String>| {
        let description = format!("device {device} is revoked or not enrolled; enroll it again");
        let mut error = OAuthError::new("invalid_grant", description);
        error.revoked_device = Some(Box::new(RevokedDevice {
            device: device.to_owned(),
            owner,
            reason: format!("device {device} is revoked or unknown"),
        }));
        error
    };
    let id = ward_device::DeviceId::parse(device).map_err(|_| revoked(None))?;
    match ward_device::registry::load(server.store.as_ref(), &id) {
        Ok(Some(device)) if device.revocation.is_none() => Ok(device.record),
        Ok(Some(device)) => Err(revoked(Some(device.record.user_id))),
        Ok(None) => Err(revoked(None)),
        Err(error) => {
            tracing::error!(target: "ward::auth", %error, device, "reading the device record failed");
            Err(OAuthError::new(
                "server_error",
                "the device record could not be read; try again",
            ))
        }
    }
}

/// The keys a token request proved possession of: the TLS client
/// certificate (RFC 8705) and the DPoP key (RFC 9449).
#[derive(Debug, Default)]
struct Binding {
    /// The thumbprint of the client certificate.
    x5t_s256: Option<String>,
    /// The device the client certificate names.
    device: Option<String>,
    /// The user that device was enrolled for.
    device_owner: Option<String>,
    /// The thumbprint of the DPoP proof's key.
    jkt: Option<String>,
}

impl Binding {
    /// Reads the client certificate and verifies the `DPoP` proof, if any.
    fn of_request(
        server: &OAuthServer,
        form: &FormRequest,
        client: &ClientRecord,
        now: OffsetDateTime,
    ) -> OAuthResult<Self> {
        let mut binding = Self::default();
        // A revoked or unknown device gets no token. Compliance is left to
        // the device gate on each resource request, which names the failing
        // posture rules.
        if let Some(certificate) = &form.client_certificate {
            binding.x5t_s256 = Some(certificate.x5t_s256.clone());
            binding.device = certificate.device_id();
        }
        if let Some(device) = &binding.device {
            binding.device_owner = Some(check_device_active(server, device)?.user_id);
        } else if let Some(device) = &form.web_device {
            // Only the web app sets the extension, and only for its own
            // client; anything else is a bug, not a client's request.
            if client.client.client_id != crate::webapp::WEB_CLIENT_ID {
                tracing::error!(target: "ward::auth", client = %client.client.client_id, "a browser device was named for a client other than the web app");
                return Err(OAuthError::new(
                    "invalid_request",
                    "a browser device can only be named for the built-in web app",
                ));
            }
            let record = check_device_active(server, device)?;
            if record.kind != ward_device::DeviceKind::Browser {
                tracing::warn!(target: "ward::auth", device = %device, kind = record.kind.as_str(), "the web app named a device that was not enrolled as a browser");
                return Err(OAuthError::new(
                    "invalid_grant",
                    format!(
                        "device {device} was not enrolled as a browser; enroll this browser \
                         from the web app's security page"
                    ),
                ));
            }
            // `user_tokens` refuses the token when this owner is not the
            // token's user.
            // NOTE: the refresh token family does not record the device, so
            // a refresh without the extension would get a token without it.
            // Only the web app keeps these refresh tokens (server-side, in
            // its session), and it always names the session's device.
            binding.device = Some(device.clone());
            binding.device_owner = Some(record.user_id);
        }
        if !form.headers.contains_key(DPOP_HEADER) {
            return Ok(binding);
        }
        let Some(dpop) = server.verifier.dpop() else {
            return Err(OAuthError::new(
                "invalid_dpop_proof",
                "this server does not accept DPoP proofs; send the request without a DPoP header",
            ));
        };
        let proof = single_dpop_proof(&form.headers)
            .map_err(|why| OAuthError::new("invalid_dpop_proof", why))?;
        let uri = server.settings.endpoint("/oauth/token");
        let request = ward_auth::dpop::ProofRequest {
            method: "POST",
            uri: &uri,
            access_token: None,
            now: now.unix_timestamp(),
        };
        match dpop.verify(proof, &request) {
            Ok(verified) => binding.jkt = Some(verified.jkt),
            Err(error) => {
                let mut rejection = OAuthError::new(error.error_code(), error.to_string());
                if error == ward_auth::dpop::DpopError::UseNonce {
                    rejection.dpop_nonce = Some(dpop.nonce(now.unix_timestamp()));
                }
                return Err(rejection);
            }
        }
        Ok(binding)
    }

    /// Returns the access token confirmation: the certificate when
    /// `with_certificate` (user grants), and the DPoP key.
    fn confirmation(&self, with_certificate: bool) -> Option<Confirmation> {
        let cnf = Confirmation {
            x5t_s256: self.x5t_s256.clone().filter(|_| with_certificate),
            jkt: self.jkt.clone(),
        };
        (!cnf.is_empty()).then_some(cnf)
    }

    /// Returns what a refresh token family for `client` is bound to: the
    /// certificate, and the DPoP key for public clients (RFC 9449 section
    /// 5; a confidential client's refresh tokens are bound by its
    /// authentication instead).
    fn family_binding(&self, client: &ClientRecord) -> Option<Confirmation> {
        let cnf = Confirmation {
            x5t_s256: self.x5t_s256.clone(),
            jkt: self
                .jkt
                .clone()
                .filter(|_| client.client.kind == ClientKind::Public),
        };
        (!cnf.is_empty()).then_some(cnf)
    }

    /// Checks a refresh request against the binding of its family.
    fn satisfies(&self, family: Option<&Confirmation>) -> bool {
        let Some(family) = family else {
            return true;
        };
        let same = |bound: &Option<String>, presented: &Option<String>| match (bound, presented) {
            (None, _) => true,
            (Some(bound), Some(presented)) => {
                ward_crypto::constant_time_eq(bound.as_bytes(), presented.as_bytes())
            }
            (Some(_), None) => false,
        };
        same(&family.x5t_s256, &self.x5t_s256) && same(&family.jkt, &self.jkt)
    }

    /// Returns the `token_type` of an access token with this binding.
    fn token_type(&self) -> &'static str {
        if self.jkt.is_some() { "DPoP" } else { "Bearer" }
    }
}

/// Decodes the `iss` of a JWT without checking it, to find the client whose
/// keys then verify it.
fn unverified_issuer(assertion: &str) -> Option<String> {
    let payload = assertion.split('.').nth(1)?;
    if payload.len() > 16 * 1024 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    // RFC 6749 section 2.3.1 form-encodes both parts before Basic encoding.
    let decode = |part: &str| -> String {
        url::form_urlencoded::parse(format!("x={part}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((decode(id), decode(secret)))
}

fn load_client(server: &OAuthServer, client_id: &str) -> OAuthResult<ClientRecord> {
    identity::load_client(server.store.as_ref(), client_id)?
        .ok_or_else(|| OAuthError::new("invalid_client", "client authentication failed"))
}

/// Authenticates the client of a token, introspection or revocation
/// request: `private_key_jwt`, a client secret (Basic or in the body), or
/// the bare `client_id` of a public client.
fn authenticate_client(
    server: &OAuthServer,
    headers: &HeaderMap,
    params: &Params,
    now: OffsetDateTime,
) -> OAuthResult<ClientRecord> {
    let failed = || OAuthError::new("invalid_client", "client authentication failed");
    if let Some(assertion) = params.get("client_assertion") {
        let client_id = params
            .get("client_id")
            .map(str::to_owned)
            .or_else(|| unverified_issuer(assertion))
            .ok_or_else(failed)?;
        let client = load_client(server, &client_id)?;
        let assertion_type = params.get("client_assertion_type").unwrap_or("");
        let token_endpoint = server.settings.endpoint("/oauth/token");
        let entry = validate_client_assertion(
            assertion_type,
            assertion,
            &client.client,
            &token_endpoint,
            now,
        )
        .map_err(|e| OAuthError::new("invalid_client", e.to_string()))?;
        let replay_key = digest_key(&TokenDigest::of(&format!(
            "{}\0{}",
            entry.client_id, entry.jti
        )));
        let fresh = server
            .store
            .kv_insert_new(
                NS_ASSERTION_JTI,
                &replay_key,
                b"1",
                Some(micros(entry.expires_at)),
            )
            .map_err(|e| OAuthError::server(&e))?;
        if !fresh {
            return Err(OAuthError::new(
                "invalid_client",
                "the client assertion jti was already used",
            ));
        }
        return Ok(client);
    }
    let secret = basic_credentials(headers).or_else(|| {
        Some((
            params.get("client_id")?.to_owned(),
            params.get("client_secret")?.to_owned(),
        ))
    });
    if let Some((client_id, secret)) = secret {
        let client = load_client(server, &client_id)?;
        let secret_method = matches!(
            client.client.auth_method,
            TokenEndpointAuthMethod::ClientSecretBasic | TokenEndpointAuthMethod::ClientSecretPost
        );
        if secret_method && client.client.verify_secret(&secret) {
            return Ok(client);
        }
        return Err(failed());
    }
    let client_id = params.get("client_id").ok_or_else(failed)?;
    let client = load_client(server, client_id)?;
    if client.client.kind == ClientKind::Public {
        Ok(client)
    } else {
        Err(failed())
    }
}

fn exchange_code(
    server: &OAuthServer,
    client: &ClientRecord,
    params: &Params,
    binding: &Binding,
    now: OffsetDateTime,
) -> OAuthResult<Value> {
    let store = server.store.as_ref();
    let code = params
        .get("code")
        .ok_or_else(|| OAuthError::new("invalid_request", "code is missing"))?;
    let key = digest_key(&TokenDigest::of(code));
    // Taking the record is atomic, so two concurrent exchanges of one code
    // cannot both find it unused.
    let taken = store
        .kv_take(NS_CODE, &key)
        .map_err(|e| OAuthError::server(&e))?;
    let Some(bytes) = taken else {
        return Err(OAuthError::new(
            "invalid_grant",
            "the authorization code is not valid",
        ));
    };
    let mut stored: StoredCode = serde_json::from_slice(&bytes)
        .map_err(|_| OAuthError::server(&identity::IdentityError::Corrupt(NS_CODE)))?;
    let keep_until = Some(micros(stored.code.issued_at + time::Duration::minutes(10)));
    let request = TokenRequest {
        code,
        client_id: &client.client.client_id,
        redirect_uri: params.get("redirect_uri"),
        code_verifier: params.get("code_verifier"),
    };
    let (spent, result) = stored.code.redeem(&request, now);
    match result {
        Err(CodeError::Reused) => {
            // RFC 6749 section 4.1.2: revoke what the code already produced.
            if let Some((jti, exp)) = &stored.access_token {
                identity::revoke_access_token(store, jti, *exp)?;
            }
            if let Some(family) = &stored.family {
                identity::revoke_family(store, family, Revocation::ReuseDetected)?;
            }
            identity::write(store, NS_CODE, &key, &stored, keep_until)?;
            tracing::warn!(target: "ward::auth", client = %client.client.client_id, "authorization code reused; its tokens are revoked");
            return Err(OAuthError::new(
                "invalid_grant",
                CodeError::Reused.to_string(),
            ));
        }
        Err(error) => {
            stored.code = spent;
            identity::write(store, NS_CODE, &key, &stored, keep_until)?;
            return Err(OAuthError::new("invalid_grant", error.to_string()));
        }
        Ok(()) => stored.code = spent,
    }
    let grant = stored.code.grant.clone();
    let user = active_user(server, &grant.user_id)?;
    let scopes = Scopes::parse(&grant.scope);
    let family = start_family(server, client, &user, &grant, &scopes, binding, now)?;

    let (mut body, claims) =
        user_tokens(server, client, &user, &grant.scope, &grant.launch, binding)?;
    if let Some((family_key, mut record, token)) = family {
        record.track(&claims.jti, claims.exp);
        identity::save_family(store, &family_key, &record)?;
        stored.family = Some(family_key);
        body["refresh_token"] = Value::String(token.to_string());
    }

    if scopes.contains(&Scope::OpenId) {
        body["id_token"] = Value::String(id_token(
            server,
            client,
            &user,
            &scopes,
            grant.nonce.as_deref(),
        )?);
    }
    stored.access_token = Some((claims.jti.clone(), claims.exp));
    identity::write(store, NS_CODE, &key, &stored, keep_until)?;
    Ok(body)
}

/// Starts a refresh token family when `offline_access` or `online_access`
/// was granted. Returns its key, its record and the first refresh token.
fn start_family(
    server: &OAuthServer,
    client: &ClientRecord,
    user: &UserRecord,
    grant: &ward_auth::oauth::CodeGrant,
    scopes: &Scopes,
    binding: &Binding,
    now: OffsetDateTime,
) -> OAuthResult<Option<(String, FamilyRecord, zeroize::Zeroizing<String>)>> {
    let lifetime = if scopes.contains(&Scope::OfflineAccess) {
        server.settings.offline_lifetime
    } else if scopes.contains(&Scope::OnlineAccess) {
        // NOTE: an online_access family lasts the maximum session length; it
        // is not ended early when the web session ends.
        server.settings.session_max
    } else {
        return Ok(None);
    };
    let (token, family) = RefreshFamily::start(
        &client.client.client_id,
        &user.id,
        &grant.scope,
        grant.launch.clone(),
        now,
        lifetime,
    )
    .map_err(|e| OAuthError::server(&e))?;
    let key = format!("{}.{}", user.id, uuid::Uuid::new_v4());
    let record = FamilyRecord {
        family,
        access_tokens: Vec::new(),
        binding: binding.family_binding(client),
    };
    Ok(Some((key, record, token)))
}

fn active_user(server: &OAuthServer, user_id: &str) -> OAuthResult<UserRecord> {
    identity::load_user(server.store.as_ref(), user_id)?
        .filter(|u| !u.disabled)
        .ok_or_else(|| OAuthError::new("invalid_grant", "the user account is disabled"))
}

/// Signs an access token for a user, bound to the request's certificate
/// and DPoP key, and builds the token response around it.
fn user_tokens(
    server: &OAuthServer,
    client: &ClientRecord,
    user: &UserRecord,
    scope: &str,
    launch: &LaunchContext,
    binding: &Binding,
) -> OAuthResult<(Value, AccessClaims)> {
    // A device speaks only for the user it was enrolled for, so the
    // lost-device report names everyone who used it.
    if binding
        .device_owner
        .as_ref()
        .is_some_and(|owner| owner != &user.id)
    {
        return Err(OAuthError::new(
            "invalid_grant",
            "this device is enrolled for another user; enroll it for this user first",
        ));
    }
    let grant = Grant {
        subject: user.id.clone(),
        scope: scope.to_owned(),
        patient: launch.patient.clone(),
        role: Some(user.role.clone()),
        fhir_user: user.fhir_user.clone(),
        client_id: Some(client.client.client_id.clone()),
        cnf: binding.confirmation(true),
        device: binding.device.clone(),
    };
    let (token, claims) = server
        .issuer
        .issue_claims(&grant, server.settings.access_ttl_secs)
        .map_err(|e| OAuthError::server(&e))?;
    let mut body = json!({
        "access_token": token,
        "token_type": binding.token_type(),
        "expires_in": server.settings.access_ttl_secs,
        "scope": scope,
    });
    if let Some(patient) = &launch.patient {
        body["patient"] = Value::String(patient.clone());
    }
    if let Some(encounter) = &launch.encounter {
        body["encounter"] = Value::String(encounter.clone());
    }
    Ok((body, claims))
}

#[derive(Serialize)]
struct IdTokenClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    #[serde(rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    fhir_user: Option<String>,
}

/// Signs an OpenID Connect ID token; `fhirUser` is an absolute URL when the
/// `fhirUser` scope was granted.
fn id_token(
    server: &OAuthServer,
    client: &ClientRecord,
    user: &UserRecord,
    scopes: &Scopes,
    nonce: Option<&str>,
) -> OAuthResult<String> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let fhir_user = user
        .fhir_user
        .as_ref()
        .filter(|_| scopes.contains(&Scope::FhirUser))
        .map(|reference| format!("{}/{reference}", server.settings.fhir_base));
    let claims = IdTokenClaims {
        iss: &server.settings.origin,
        sub: &user.id,
        aud: &client.client.client_id,
        exp: now + server.settings.access_ttl_secs,
        iat: now,
        nonce,
        fhir_user,
    };
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(server.kid.clone());
    jsonwebtoken::encode(&header, &claims, &server.id_token_key).map_err(|e| OAuthError::server(&e))
}

fn find_family(server: &OAuthServer, token: &str) -> OAuthResult<Option<(String, FamilyRecord)>> {
    let store = server.store.as_ref();
    let Some(key) = store
        .kv_get(NS_REFRESH, &digest_key(&TokenDigest::of(token)))
        .map_err(|e| OAuthError::server(&e))?
    else {
        return Ok(None);
    };
    let key = String::from_utf8(key)
        .map_err(|_| OAuthError::server(&"a refresh index entry is corrupt"))?;
    Ok(identity::read::<FamilyRecord>(store, NS_FAMILY, &key)?.map(|record| (key, record)))
}

fn refresh(
    server: &OAuthServer,
    client: &ClientRecord,
    params: &Params,
    binding: &Binding,
    now: OffsetDateTime,
) -> OAuthResult<Value> {
    let store = server.store.as_ref();
    let token = params
        .get("refresh_token")
        .ok_or_else(|| OAuthError::new("invalid_request", "refresh_token is missing"))?;
    let Some((key, mut record)) = find_family(server, token)? else {
        return Err(OAuthError::new(
            "invalid_grant",
            RefreshError::UnknownToken.to_string(),
        ));
    };
    // Checked before the rotation, so a stolen token presented without the
    // bound certificate or key neither works nor spends the real one.
    if !binding.satisfies(record.binding.as_ref()) {
        tracing::warn!(target: "ward::auth", client = %client.client.client_id, "refresh token presented without the certificate or DPoP key it is bound to");
        return Err(OAuthError::new(
            "invalid_grant",
            "the refresh token is bound to a client certificate or DPoP key that this request does not present",
        ));
    }
    let request = RefreshRequest {
        token,
        client_id: &client.client.client_id,
        scope: params.get("scope"),
    };
    let outcome = record
        .family
        .refresh(&request, now)
        .map_err(|e| OAuthError::server(&e))?;
    record.family = outcome.family;
    let rotation = match outcome.result {
        Ok(rotation) => rotation,
        Err(error) => {
            identity::save_family(store, &key, &record)?;
            if error == RefreshError::Reused {
                identity::revoke_family(store, &key, Revocation::ReuseDetected)?;
                tracing::warn!(target: "ward::auth", client = %client.client.client_id, "refresh token reused; the family is revoked");
            }
            let code = if error == RefreshError::ScopeWidened {
                "invalid_scope"
            } else {
                "invalid_grant"
            };
            return Err(OAuthError::new(code, error.to_string()));
        }
    };
    let user = match active_user(server, &record.family.user_id) {
        Ok(user) => user,
        Err(error) => {
            identity::save_family(store, &key, &record)?;
            identity::revoke_family(store, &key, Revocation::Revoked)?;
            return Err(error);
        }
    };
    let launch = record.family.launch.clone();
    let (mut body, claims) = user_tokens(server, client, &user, &rotation.scope, &launch, binding)?;
    record.track(&claims.jti, claims.exp);
    identity::save_family(store, &key, &record)?;
    body["refresh_token"] = Value::String(rotation.token.to_string());
    Ok(body)
}

fn client_credentials(
    server: &OAuthServer,
    client: &ClientRecord,
    params: &Params,
    binding: &Binding,
) -> OAuthResult<Value> {
    if client.client.auth_method != TokenEndpointAuthMethod::PrivateKeyJwt {
        return Err(OAuthError::new(
            "unauthorized_client",
            "client_credentials needs a client registered for private_key_jwt",
        ));
    }
    let granted = client
        .client
        .grantable_scope(params.get("scope").unwrap_or(""));
    let scope: Vec<&str> = granted
        .scopes
        .iter()
        .zip(&granted.raw)
        .filter(|(scope, _)| {
            scope
                .as_resource()
                .is_some_and(|r| r.context == ScopeContext::System)
        })
        .map(|(_, raw)| raw.as_str())
        .collect();
    if scope.is_empty() {
        return Err(OAuthError::new(
            "invalid_scope",
            "request system/ scopes that the client may be granted",
        ));
    }
    let scope = scope.join(" ");
    let grant = Grant {
        subject: client.client.client_id.clone(),
        scope: scope.clone(),
        client_id: Some(client.client.client_id.clone()),
        // A system client is no device: only a DPoP key binds its token.
        cnf: binding.confirmation(false),
        ..Grant::default()
    };
    let token = server
        .issuer
        .issue(&grant, server.settings.access_ttl_secs)
        .map_err(|e| OAuthError::server(&e))?;
    Ok(json!({
        "access_token": token,
        "token_type": binding.token_type(),
        "expires_in": server.settings.access_ttl_secs,
        "scope": scope,
    }))
}

/// Returns the caller when it presents a live bearer token with the `admin`
/// scope: from `ward token`, or issued to a security administrator.
pub(super) fn admin_principal(server: &OAuthServer, headers: &HeaderMap) -> Option<Principal> {
    let principal = authenticate(headers, &server.verifier).ok()?;
    let admin_scope = principal.scopes.raw.iter().any(|s| s == "admin");
    let admin_subject = match principal.role.as_deref() {
        Some(role) => role == ward_auth::Role::SecurityAdmin.as_str(),
        None => principal.client_id.is_none(),
    };
    let live = identity::token_is_live(&server.store, &principal.subject, &principal.token_id)
        .unwrap_or(false);
    (admin_scope && admin_subject && live).then_some(principal)
}

/// The authenticated caller of introspection or revocation.
enum Caller {
    Admin,
    Client(ClientRecord),
}

impl Caller {
    fn may_see(&self, client_id: Option<&str>) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Client(client) => client_id == Some(client.client.client_id.as_str()),
        }
    }
}

fn caller(
    server: &OAuthServer,
    form: &FormRequest,
    params: &Params,
    confidential_only: bool,
) -> OAuthResult<Caller> {
    let headers = &form.headers;
    if admin_principal(server, headers).is_some() {
        return Ok(Caller::Admin);
    }
    let client = authenticate_client(server, headers, params, OffsetDateTime::now_utc())?;
    if confidential_only && client.client.kind != ClientKind::Confidential {
        return Err(OAuthError::new(
            "invalid_client",
            "introspection needs a confidential client or an admin token",
        ));
    }
    Ok(Caller::Client(client))
}

fn introspect_request(
    server: &OAuthServer,
    form: &FormRequest,
    params: &Params,
) -> OAuthResult<Response> {
    let caller = caller(server, form, params, true)?;
    let token = params
        .get("token")
        .ok_or_else(|| OAuthError::new("invalid_request", "token is missing"))?;
    let inactive = || json_response(StatusCode::OK, &json!({ "active": false }));
    if let Ok(claims) = server.verifier.verify(token) {
        let live = identity::token_is_live(&server.store, &claims.sub, &claims.jti)?;
        if !live || !caller.may_see(claims.client_id.as_deref()) {
            return Ok(inactive());
        }
        let mut body = Map::new();
        body.insert("active".into(), Value::Bool(true));
        let dpop_bound = claims.cnf.as_ref().is_some_and(|cnf| cnf.jkt.is_some());
        let token_type = if dpop_bound { "DPoP" } else { "Bearer" };
        body.insert("token_type".into(), token_type.into());
        if let Value::Object(fields) = serde_json::to_value(&claims).unwrap_or_default() {
            body.extend(fields);
        }
        return Ok(json_response(StatusCode::OK, &Value::Object(body)));
    }
    let now = OffsetDateTime::now_utc();
    if let Some((_, record)) = find_family(server, token)? {
        let family = &record.family;
        let active = family.revoked.is_none()
            && now < family.expires_at
            && family.current == TokenDigest::of(token)
            && caller.may_see(Some(&family.client_id));
        if active {
            return Ok(json_response(
                StatusCode::OK,
                &json!({
                    "active": true,
                    "token_type": "refresh_token",
                    "client_id": family.client_id,
                    "sub": family.user_id,
                    "scope": family.scope,
                    "exp": family.expires_at.unix_timestamp(),
                    "iss": server.settings.origin,
                }),
            ));
        }
    }
    Ok(inactive())
}

fn revoke_request(
    server: &OAuthServer,
    form: &FormRequest,
    params: &Params,
) -> OAuthResult<Response> {
    let caller = caller(server, form, params, false)?;
    let token = params
        .get("token")
        .ok_or_else(|| OAuthError::new("invalid_request", "token is missing"))?;
    let store = server.store.as_ref();
    let mut revoked = None;
    if let Ok(claims) = server.verifier.verify(token) {
        if caller.may_see(claims.client_id.as_deref()) {
            identity::revoke_access_token(store, &claims.jti, claims.exp)?;
            revoked = Some((claims.sub, claims.client_id));
        }
    } else if let Some((key, record)) = find_family(server, token)?
        && caller.may_see(Some(&record.family.client_id))
    {
        identity::revoke_family(store, &key, Revocation::Revoked)?;
        revoked = Some((record.family.user_id, Some(record.family.client_id)));
    }
    // RFC 7009 section 2.2: an unknown or foreign token also gets 200.
    let response = json_response(StatusCode::OK, &json!({}));
    Ok(match revoked {
        Some((user_id, client_id)) => {
            let mut event = OwnedSecurityEvent::new(SecurityEventKind::TokenRevoked);
            event.user_id = Some(user_id);
            event.client_id = client_id;
            with_event(response, event)
        }
        None => response,
    })
}
