//! `private_key_jwt` client assertions (RFC 7523, SMART Backend Services).
//!
//! The rules checked, from SMART App Launch 2.0 "Backend Services": the JWT
//! is signed with ES256, ES384 or RS384 by a key in the client's JWKS; `iss`
//! and `sub` are the `client_id`; `aud` is the token endpoint URL; `exp` is
//! in the future and no more than five minutes away; `jti` is present.
//! Replay protection needs state, so [`validate_client_assertion`] returns
//! the `jti` and expiry as a [`ReplayEntry`]: the caller rejects the
//! assertion if the entry is already in its replay cache and otherwise keeps
//! it there until `expires_at`.

use jsonwebtoken::jwk::{Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use time::{Duration, OffsetDateTime};

use super::client::{Client, TokenEndpointAuthMethod};

/// The only accepted `client_assertion_type`.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Maximum time from now to `exp`.
pub const MAX_LIFETIME: Duration = Duration::minutes(5);

/// Clock skew tolerated for `nbf` and `iat`.
const SKEW: Duration = Duration::seconds(60);

/// Maximum assertion length, in bytes.
const MAX_ASSERTION_LEN: usize = 16 * 1024;

/// Maximum `jti` length, in characters.
const MAX_JTI_LEN: usize = 256;

/// Maximum number of keys tried for one assertion.
const MAX_KEYS_TRIED: usize = 10;

/// What the caller stores in its replay cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayEntry {
    /// The client the `jti` belongs to; the cache key is (client, jti).
    pub client_id: String,
    /// The assertion's `jti`.
    pub jti: String,
    /// When the entry may be dropped: the assertion's `exp`.
    pub expires_at: OffsetDateTime,
}

/// Why a client assertion was rejected. Each maps to `invalid_client` on
/// the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AssertionError {
    /// `client_assertion_type` is not the JWT bearer URN.
    #[error("client_assertion_type must be {ASSERTION_TYPE}")]
    WrongAssertionType,
    /// The client is not registered for `private_key_jwt`.
    #[error("the client is not registered for private_key_jwt")]
    NotJwtClient,
    /// The assertion is not a well-formed JWS or is too long.
    #[error("the client assertion is malformed")]
    Malformed,
    /// The JWS algorithm is not ES256, ES384 or RS384.
    #[error("the client assertion algorithm must be ES256, ES384 or RS384")]
    UnsupportedAlgorithm,
    /// No key in the client's JWKS fits the header's `kid` and `alg`.
    #[error("no registered key matches the client assertion")]
    NoMatchingKey,
    /// No fitting key verifies the signature.
    #[error("the client assertion signature is invalid")]
    BadSignature,
    /// `iss` is not the client id.
    #[error("the client assertion iss must be the client_id")]
    WrongIssuer,
    /// `sub` is not the client id.
    #[error("the client assertion sub must be the client_id")]
    WrongSubject,
    /// `aud` does not name the token endpoint.
    #[error("the client assertion aud must be the token endpoint URL")]
    WrongAudience,
    /// `exp` has passed.
    #[error("the client assertion has expired")]
    Expired,
    /// `exp` is more than five minutes away.
    #[error("the client assertion exp is more than five minutes ahead")]
    LifetimeTooLong,
    /// `nbf` or `iat` is in the future.
    #[error("the client assertion is not valid yet")]
    NotYetValid,
    /// `jti` is missing, empty or over 256 characters.
    #[error("the client assertion needs a jti of 1 to 256 characters")]
    InvalidJti,
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<serde_json::Value>,
    exp: Option<i64>,
    nbf: Option<i64>,
    iat: Option<i64>,
    jti: Option<String>,
}

/// Validates a client assertion for `client` at the token endpoint
/// `token_endpoint` (its full URL, as advertised) at `now`.
///
/// # Errors
///
/// The first [`AssertionError`] found, in the order: type, client,
/// structure, algorithm, key, signature, `iss`, `sub`, `aud`, `exp`, `nbf`
/// and `iat`, `jti`.
pub fn validate_client_assertion(
    assertion_type: &str,
    assertion: &str,
    client: &Client,
    token_endpoint: &str,
    now: OffsetDateTime,
) -> Result<ReplayEntry, AssertionError> {
    if assertion_type != ASSERTION_TYPE {
        return Err(AssertionError::WrongAssertionType);
    }
    let jwks = match (client.auth_method, &client.jwks) {
        (TokenEndpointAuthMethod::PrivateKeyJwt, Some(jwks)) => jwks,
        _ => return Err(AssertionError::NotJwtClient),
    };
    if assertion.len() > MAX_ASSERTION_LEN {
        return Err(AssertionError::Malformed);
    }
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| AssertionError::Malformed)?;
    let expected_key_alg = match header.alg {
        Algorithm::ES256 => KeyAlgorithm::ES256,
        Algorithm::ES384 => KeyAlgorithm::ES384,
        Algorithm::RS384 => KeyAlgorithm::RS384,
        _ => return Err(AssertionError::UnsupportedAlgorithm),
    };

    let candidates: Vec<&Jwk> = jwks
        .keys
        .iter()
        .filter(|jwk| match (&header.kid, &jwk.common.key_id) {
            (Some(kid), Some(key_id)) => kid == key_id,
            (Some(_), None) => false,
            (None, _) => true,
        })
        .filter(|jwk| {
            jwk.common
                .key_algorithm
                .is_none_or(|alg| alg == expected_key_alg)
        })
        .take(MAX_KEYS_TRIED)
        .collect();
    if candidates.is_empty() {
        return Err(AssertionError::NoMatchingKey);
    }

    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = candidates
        .iter()
        .filter_map(|jwk| DecodingKey::from_jwk(jwk).ok())
        .find_map(|key| jsonwebtoken::decode::<Claims>(assertion, &key, &validation).ok())
        .ok_or(AssertionError::BadSignature)?
        .claims;

    check_claims(&claims, &client.client_id, token_endpoint, now)
}

fn check_claims(
    claims: &Claims,
    client_id: &str,
    token_endpoint: &str,
    now: OffsetDateTime,
) -> Result<ReplayEntry, AssertionError> {
    if claims.iss.as_deref() != Some(client_id) {
        return Err(AssertionError::WrongIssuer);
    }
    if claims.sub.as_deref() != Some(client_id) {
        return Err(AssertionError::WrongSubject);
    }
    let audience_ok = match &claims.aud {
        Some(serde_json::Value::String(aud)) => aud == token_endpoint,
        Some(serde_json::Value::Array(auds)) => {
            auds.iter().any(|a| a.as_str() == Some(token_endpoint))
        }
        _ => false,
    };
    if !audience_ok {
        return Err(AssertionError::WrongAudience);
    }

    let exp = claims
        .exp
        .and_then(|e| OffsetDateTime::from_unix_timestamp(e).ok())
        .ok_or(AssertionError::Expired)?;
    if exp <= now {
        return Err(AssertionError::Expired);
    }
    if exp - now > MAX_LIFETIME {
        return Err(AssertionError::LifetimeTooLong);
    }
    let latest_start = now.unix_timestamp() + SKEW.whole_seconds();
    if claims.nbf.is_some_and(|nbf| nbf > latest_start)
        || claims.iat.is_some_and(|iat| iat > latest_start)
    {
        return Err(AssertionError::NotYetValid);
    }

    let jti = claims.jti.as_deref().unwrap_or_default();
    if jti.is_empty() || jti.chars().count() > MAX_JTI_LEN {
        return Err(AssertionError::InvalidJti);
    }
    Ok(ReplayEntry {
        client_id: client_id.to_owned(),
        jti: jti.to_owned(),
        expires_at: exp,
    })
}
