//! Access tokens: signed ES256 JWTs that carry SMART scopes, and the
//! extraction of the caller from a request's `Authorization` header.
//!
//! A token may be bound to a key that its client has (`cnf` claim): to a TLS
//! client certificate (`x5t#S256`, RFC 8705) or to a DPoP key (`jkt`,
//! RFC 9449). [`authenticate_request`] accepts a bound token only with the
//! proof of possession: the same certificate on the connection, or a valid
//! DPoP proof under `Authorization: DPoP`.

use std::collections::HashMap;

use http::{HeaderMap, Method};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use ward_auth::dpop::{DpopError, DpopVerifier, ProofRequest};
use zeroize::Zeroizing;

use crate::error::FhirError;
use crate::scopes::{Permission, Scopes};
use crate::tls::ClientCertificate;

/// The `DPoP` request header that carries a proof.
pub const DPOP_HEADER: &str = "dpop";

/// The key confirmation of a bound token (RFC 7800 `cnf`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Confirmation {
    /// The SHA-256 thumbprint of the client certificate (RFC 8705).
    #[serde(rename = "x5t#S256", default, skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
    /// The JWK thumbprint of the DPoP key (RFC 9449).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
}

impl Confirmation {
    /// Returns whether the confirmation names no key.
    pub fn is_empty(&self) -> bool {
        self.x5t_s256.is_none() && self.jkt.is_none()
    }
}

/// The claims of a Ward access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessClaims {
    /// The issuer: the server's base URL.
    pub iss: String,
    /// The subject: a user id, client id or `ward-cli`.
    pub sub: String,
    /// The audience: the FHIR base URL the token is for.
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Issue time, seconds since the Unix epoch.
    pub iat: i64,
    /// A unique token id.
    pub jti: String,
    /// The granted scopes, space-separated.
    pub scope: String,
    /// The patient in context, for `patient/` scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// The user's role in the access policy (absent for system clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The FHIR resource that represents the user, such as
    /// `Practitioner/123` (SMART `fhirUser`).
    #[serde(rename = "fhirUser", default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// The OAuth client the token was issued to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The key the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// The enrolled device the token was issued to (from its client
    /// certificate), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// What a new access token grants.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// The subject: a user id, a client id, or `ward-cli`.
    pub subject: String,
    /// The granted scopes, space-separated.
    pub scope: String,
    /// The patient in context.
    pub patient: Option<String>,
    /// The user's role.
    pub role: Option<String>,
    /// The user's `fhirUser` reference.
    pub fhir_user: Option<String>,
    /// The OAuth client.
    pub client_id: Option<String>,
    /// The key to bind the token to.
    pub cnf: Option<Confirmation>,
    /// The enrolled device the token is for.
    pub device: Option<String>,
}

/// Signs access tokens with the organization's token key.
pub struct TokenIssuer {
    key: EncodingKey,
    kid: String,
    issuer: String,
    audience: String,
}

impl TokenIssuer {
    /// Creates an issuer from a PKCS#8 P-256 private key.
    pub fn new(pkcs8: &Zeroizing<Vec<u8>>, kid: &str, issuer: &str, audience: &str) -> Self {
        Self {
            key: EncodingKey::from_ec_der(pkcs8),
            kid: kid.to_owned(),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        }
    }

    /// Signs a token for `grant`, valid for `ttl_secs`.
    pub fn issue(
        &self,
        grant: &Grant,
        ttl_secs: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.issue_claims(grant, ttl_secs).map(|(token, _)| token)
    }

    /// Signs a token for `grant` and returns it with its claims.
    pub fn issue_claims(
        &self,
        grant: &Grant,
        ttl_secs: i64,
    ) -> Result<(String, AccessClaims), jsonwebtoken::errors::Error> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: grant.subject.clone(),
            aud: self.audience.clone(),
            exp: now + ttl_secs,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            scope: grant.scope.clone(),
            patient: grant.patient.clone(),
            role: grant.role.clone(),
            fhir_user: grant.fhir_user.clone(),
            client_id: grant.client_id.clone(),
            cnf: grant.cnf.clone().filter(|cnf| !cnf.is_empty()),
            device: grant.device.clone(),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.key)?;
        Ok((token, claims))
    }
}

/// Verifies access tokens against the organization's public token keys.
pub struct TokenVerifier {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
    origin: String,
    dpop: Option<DpopVerifier>,
}

impl TokenVerifier {
    /// Creates a verifier for tokens issued by `issuer` for `audience`,
    /// given public keys as `(kid, x, y)` base64url coordinates.
    pub fn new(
        keys: &[(String, String, String)],
        issuer: &str,
        audience: &str,
    ) -> Result<Self, jsonwebtoken::errors::Error> {
        let mut map = HashMap::new();
        for (kid, x, y) in keys {
            map.insert(kid.clone(), DecodingKey::from_ec_components(x, y)?);
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // No clock-skew allowance, because `ward token` signs with this data
        // directory's key, normally on the server's host and clock. A token
        // is rejected from the second after its `exp`.
        validation.leeway = 0;
        Ok(Self {
            keys: map,
            validation,
            origin: issuer.trim_end_matches('/').to_owned(),
            dpop: None,
        })
    }

    /// Enables DPoP: proofs are checked by `dpop`, at the token endpoint and
    /// on resource requests. Without it, DPoP-bound tokens are rejected.
    #[must_use]
    pub fn with_dpop(mut self, dpop: DpopVerifier) -> Self {
        self.dpop = Some(dpop);
        self
    }

    /// Returns the DPoP proof verifier, when DPoP is enabled.
    pub fn dpop(&self) -> Option<&DpopVerifier> {
        self.dpop.as_ref()
    }

    /// Returns the server's public origin, such as `https://host:8443`,
    /// which absolute request URIs (DPoP `htu`) start with.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Verifies a compact JWT and returns its claims.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, FhirError> {
        let invalid = |why: &str| FhirError::unauthorized("invalid_token", why);
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
        if header.alg != Algorithm::ES256 {
            return Err(invalid("unsupported token algorithm"));
        }
        let kid = header.kid.ok_or_else(|| invalid("token has no key id"))?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| invalid("token signed by an unknown key"))?;
        match jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(err) => {
                use jsonwebtoken::errors::ErrorKind;
                let why = match err.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::InvalidAudience => "token is for another audience",
                    ErrorKind::InvalidIssuer => "token from another issuer",
                    ErrorKind::InvalidSignature => "token signature invalid",
                    _ => "token invalid",
                };
                Err(invalid(why))
            }
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token subject.
    pub subject: String,
    /// The granted scopes.
    pub scopes: Scopes,
    /// The patient in context, if any.
    pub patient: Option<String>,
    /// The token id.
    pub token_id: String,
    /// The user's role, for user tokens; `None` for system clients.
    pub role: Option<String>,
    /// The user's `fhirUser` reference.
    pub fhir_user: Option<String>,
    /// The OAuth client the token was issued to.
    pub client_id: Option<String>,
    /// When the token expires, in seconds since the Unix epoch.
    pub expires: i64,
    /// The enrolled device the token is bound to. Callers check its
    /// revocation and compliance with `device::gate::check`.
    pub device: Option<String>,
}

impl Principal {
    /// Checks that the caller may perform `permission` on `resource_type`;
    /// 403 otherwise.
    pub fn require(&self, resource_type: &str, permission: Permission) -> Result<(), FhirError> {
        if self
            .scopes
            .allows(resource_type, permission, self.patient.is_some())
        {
            Ok(())
        } else {
            Err(FhirError::forbidden(&format!(
                "the token's scopes do not allow {permission} on {resource_type}"
            )))
        }
    }
}

impl Principal {
    /// A system principal for in-process work (imports, maintenance) with
    /// the given scopes and no user, patient or expiry.
    pub fn system(subject: &str, scope: &str) -> Self {
        Self {
            subject: subject.to_owned(),
            scopes: Scopes::parse(scope),
            patient: None,
            token_id: format!("local-{subject}"),
            role: None,
            fhir_user: None,
            client_id: None,
            expires: i64::MAX,
            device: None,
        }
    }

    /// Identifies the caller for paging: the subject, scopes and patient
    /// context together, so a result set is paged only by a caller with the
    /// same access as the one that ran the search.
    pub fn page_owner(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.subject,
            self.scopes.raw.join(" "),
            self.patient.as_deref().unwrap_or_default()
        )
    }
}

/// The parts of a request that authentication reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestAuth<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request path, such as `/fhir/Patient`; the query is ignored.
    pub path: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The client certificate of the TLS connection, if one was presented.
    pub client_certificate: Option<&'a ClientCertificate>,
}

impl<'a> RequestAuth<'a> {
    /// Reads method, path, headers and client certificate from `parts`.
    pub fn from_parts(parts: &'a http::request::Parts) -> Self {
        // Behind a nested router the URI is rewritten; the original is the
        // one the client signed.
        let path = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map_or_else(|| parts.uri.path(), |original| original.0.path());
        Self {
            method: &parts.method,
            path,
            headers: &parts.headers,
            client_certificate: parts.extensions.get::<ClientCertificate>(),
        }
    }
}

/// Reads the access token of a request and verifies it, with its proof of
/// possession when the token is bound to a certificate or a DPoP key.
///
/// A token bound to a certificate (`cnf.x5t#S256`) must arrive over a TLS
/// connection that presents that certificate. A token bound to a DPoP key
/// (`cnf.jkt`) must arrive as `Authorization: DPoP TOKEN` with a valid
/// `DPoP` proof for this method and URI, signed by that key. An unbound
/// token arrives as `Authorization: Bearer TOKEN`.
///
/// # Errors
///
/// 401 `invalid_token` for a bad, expired or misused token, 401
/// `invalid_dpop_proof` or `use_dpop_nonce` (with a `DPoP-Nonce` header)
/// for a failed proof.
pub fn authenticate_request(
    request: &RequestAuth<'_>,
    verifier: &TokenVerifier,
) -> Result<Principal, FhirError> {
    let result = authenticate_token(request, verifier);
    if result.is_err() {
        let reason = if request.headers.contains_key(http::header::AUTHORIZATION) {
            "invalid_token"
        } else {
            "missing_token"
        };
        crate::metrics::record_auth_failure(reason);
    }
    result
}

/// Reads the bearer token of a request and verifies it, for callers that
/// see only the headers.
///
/// A token bound to a certificate or DPoP key is rejected here because its
/// proof of possession cannot be checked; use [`authenticate_request`].
///
/// # Errors
///
/// 401 `invalid_token` for a bad, expired or bound token.
pub fn authenticate(headers: &HeaderMap, verifier: &TokenVerifier) -> Result<Principal, FhirError> {
    let request = RequestAuth {
        method: &Method::GET,
        path: "",
        headers,
        client_certificate: None,
    };
    let result = authenticate_bearer_only(&request, verifier);
    if result.is_err() {
        let reason = if headers.contains_key(http::header::AUTHORIZATION) {
            "invalid_token"
        } else {
            "missing_token"
        };
        crate::metrics::record_auth_failure(reason);
    }
    result
}

/// The scheme of an `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Bearer,
    Dpop,
}

/// Splits `Authorization: SCHEME TOKEN`.
fn authorization(headers: &HeaderMap) -> Result<(Scheme, &str), FhirError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(FhirError::unauthorized(
            "",
            "authentication required: send an access token as 'Authorization: Bearer TOKEN'",
        ));
    };
    let value = value.to_str().map_err(|_| {
        FhirError::unauthorized("invalid_request", "malformed Authorization header")
    })?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Ok((Scheme::Bearer, token.trim()))
        }
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("dpop") => {
            Ok((Scheme::Dpop, token.trim()))
        }
        _ => Err(FhirError::unauthorized(
            "invalid_request",
            "Authorization header must use the Bearer or DPoP scheme",
        )),
    }
}

fn authenticate_bearer_only(
    request: &RequestAuth<'_>,
    verifier: &TokenVerifier,
) -> Result<Principal, FhirError> {
    let (scheme, token) = authorization(request.headers)?;
    let claims = verifier.verify(token)?;
    if scheme != Scheme::Bearer || claims.cnf.as_ref().is_some_and(|cnf| !cnf.is_empty()) {
        return Err(FhirError::unauthorized(
            "invalid_token",
            "this endpoint accepts only unbound Bearer tokens",
        ));
    }
    Ok(principal_of(claims))
}

fn authenticate_token(
    request: &RequestAuth<'_>,
    verifier: &TokenVerifier,
) -> Result<Principal, FhirError> {
    let (scheme, token) = authorization(request.headers)?;
    let claims = verifier.verify(token)?;
    let cnf = claims.cnf.clone().unwrap_or_default();

    if let Some(expected) = &cnf.x5t_s256 {
        let presented = request
            .client_certificate
            .map(|cert| cert.x5t_s256.as_str());
        let matches = presented.is_some_and(|presented| {
            ward_crypto::constant_time_eq(presented.as_bytes(), expected.as_bytes())
        });
        if !matches {
            return Err(FhirError::unauthorized(
                "invalid_token",
                "the token is bound to a client certificate; send it over a TLS connection that presents that certificate",
            ));
        }
    }

    match (&cnf.jkt, scheme) {
        (Some(jkt), Scheme::Dpop) => check_dpop(request, verifier, token, jkt)?,
        (Some(_), Scheme::Bearer) => {
            return Err(FhirError::dpop_unauthorized(
                "invalid_token",
                "the token is bound to a DPoP key; send it as 'Authorization: DPoP TOKEN' with a DPoP proof",
            ));
        }
        (None, Scheme::Dpop) => {
            return Err(FhirError::dpop_unauthorized(
                "invalid_token",
                "the token is not bound to a DPoP key; send it as 'Authorization: Bearer TOKEN'",
            ));
        }
        (None, Scheme::Bearer) => {}
    }
    Ok(principal_of(claims))
}

/// Verifies the request's DPoP proof for `token` and checks that it is
/// signed by the key with thumbprint `jkt`.
fn check_dpop(
    request: &RequestAuth<'_>,
    verifier: &TokenVerifier,
    token: &str,
    jkt: &str,
) -> Result<(), FhirError> {
    let Some(dpop) = verifier.dpop() else {
        return Err(FhirError::unauthorized(
            "invalid_token",
            "this server does not accept DPoP-bound tokens",
        ));
    };
    let proof = single_dpop_proof(request.headers)
        .map_err(|why| FhirError::dpop_unauthorized("invalid_dpop_proof", why))?;
    let uri = format!("{}{}", verifier.origin(), request.path);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let proof_request = ProofRequest {
        method: request.method.as_str(),
        uri: &uri,
        access_token: Some(token),
        now,
    };
    let verified = dpop
        .verify(proof, &proof_request)
        .map_err(|error| dpop_rejection(verifier, &error, now))?;
    if !ward_crypto::constant_time_eq(verified.jkt.as_bytes(), jkt.as_bytes()) {
        return Err(dpop_rejection(verifier, &DpopError::KeyMismatch, now));
    }
    Ok(())
}

/// Returns the one `DPoP` header of a request.
///
/// # Errors
///
/// A description of the problem when the header is missing, repeated or
/// not ASCII.
pub fn single_dpop_proof(headers: &HeaderMap) -> Result<&str, &'static str> {
    let mut values = headers.get_all(DPOP_HEADER).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err("send exactly one DPoP header with a proof for this request");
    };
    value
        .to_str()
        .map_err(|_| "the DPoP header is not a compact JWT")
}

/// Builds the 401 for a failed DPoP proof; `use_dpop_nonce` carries a fresh
/// nonce.
fn dpop_rejection(verifier: &TokenVerifier, error: &DpopError, now: i64) -> FhirError {
    let mut rejection = FhirError::dpop_unauthorized(error.error_code(), &error.to_string());
    if *error == DpopError::UseNonce {
        rejection.dpop_nonce = verifier.dpop().map(|dpop| dpop.nonce(now));
    }
    rejection
}

fn principal_of(claims: AccessClaims) -> Principal {
    Principal {
        subject: claims.sub,
        scopes: Scopes::parse(&claims.scope),
        patient: claims.patient,
        token_id: claims.jti,
        role: claims.role,
        fhir_user: claims.fhir_user,
        client_id: claims.client_id,
        expires: claims.exp,
        device: claims.device,
    }
}
