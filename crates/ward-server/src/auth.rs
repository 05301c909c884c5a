//! Access tokens: signed ES256 JWTs that carry SMART scopes, and the
//! extraction of the caller from a request's `Authorization` header.

use std::collections::HashMap;

use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::FhirError;
use crate::scopes::{Permission, Scopes};

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
        })
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

/// Reads the bearer token of a request and verifies it.
pub fn authenticate(headers: &HeaderMap, verifier: &TokenVerifier) -> Result<Principal, FhirError> {
    let result = authenticate_bearer(headers, verifier);
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

fn authenticate_bearer(
    headers: &HeaderMap,
    verifier: &TokenVerifier,
) -> Result<Principal, FhirError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(FhirError::unauthorized(
            "",
            "authentication required: send an access token as 'Authorization: Bearer TOKEN'",
        ));
    };
    let value = value.to_str().map_err(|_| {
        FhirError::unauthorized("invalid_request", "malformed Authorization header")
    })?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => {
            return Err(FhirError::unauthorized(
                "invalid_request",
                "Authorization header must use the Bearer scheme",
            ));
        }
    };
    let claims = verifier.verify(token)?;
    Ok(Principal {
        subject: claims.sub,
        scopes: Scopes::parse(&claims.scope),
        patient: claims.patient,
        token_id: claims.jti,
        role: claims.role,
        fhir_user: claims.fhir_user,
        client_id: claims.client_id,
        expires: claims.exp,
    })
}
