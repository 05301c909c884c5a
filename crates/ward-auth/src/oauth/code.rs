//! Authorization codes.
//!
//! A code is issued at the end of the authorization request and exchanged
//! once at the token endpoint. The caller stores the [`AuthorizationCode`]
//! record under its digest and, on exchange, looks it up by
//! [`TokenDigest::of`] the presented code, calls [`AuthorizationCode::redeem`]
//! and stores the returned record (now marked used) before issuing tokens.
//! A second exchange of the same code fails with [`CodeError::Reused`];
//! RFC 6749 section 4.1.2 asks the server to revoke the tokens issued from
//! it, which the record's `digest` lets the caller find.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use super::pkce::{CodeChallenge, PkceError};
use super::{TokenDigest, generate_token};
use crate::error::Result;

/// How long a code stays valid.
pub const CODE_TTL: Duration = Duration::seconds(60);

/// The SMART launch context chosen during authorization.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchContext {
    /// The patient in context (`launch/patient`), a Patient id.
    pub patient: Option<String>,
    /// The encounter in context (`launch/encounter`), an Encounter id.
    pub encounter: Option<String>,
}

/// Everything the authorization request established, bound into the code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeGrant {
    /// The client the code is issued to.
    pub client_id: String,
    /// The redirect URI used in the authorization request, exactly as sent.
    pub redirect_uri: String,
    /// The PKCE challenge.
    pub challenge: CodeChallenge,
    /// The granted scopes, space-separated.
    pub scope: String,
    /// The user who approved the request.
    pub user_id: String,
    /// The launch context.
    pub launch: LaunchContext,
    /// The OpenID Connect `nonce`, returned in the ID token.
    pub nonce: Option<String>,
}

/// A stored authorization code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationCode {
    /// The digest of the code, the lookup key.
    pub digest: TokenDigest,
    /// What the code grants.
    pub grant: CodeGrant,
    /// When it was issued.
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    /// When it stops being accepted.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Set once the code has been exchanged.
    pub used: bool,
}

/// The parameters of a token request with `grant_type=authorization_code`.
#[derive(Debug, Clone, Copy)]
pub struct TokenRequest<'a> {
    /// `code`.
    pub code: &'a str,
    /// The authenticated client, or the `client_id` of a public client.
    pub client_id: &'a str,
    /// `redirect_uri`.
    pub redirect_uri: Option<&'a str>,
    /// `code_verifier`.
    pub code_verifier: Option<&'a str>,
}

/// Why a code exchange was rejected. Each maps to the OAuth error
/// `invalid_grant` on the wire; the variants exist for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodeError {
    /// The presented code does not hash to the record's digest.
    #[error("the authorization code is not valid")]
    UnknownCode,
    /// The code was already exchanged.
    #[error("the authorization code has already been used")]
    Reused,
    /// The code is older than [`CODE_TTL`].
    #[error("the authorization code has expired")]
    Expired,
    /// The code was issued to another client.
    #[error("the authorization code was issued to another client")]
    WrongClient,
    /// `redirect_uri` is missing or differs from the authorization request.
    #[error("redirect_uri does not match the authorization request")]
    RedirectMismatch,
    /// `code_verifier` is missing.
    #[error("code_verifier is missing")]
    MissingVerifier,
    /// `code_verifier` is malformed or does not match.
    #[error("PKCE verification failed: {0}")]
    Pkce(PkceError),
}

impl AuthorizationCode {
    /// Issues a code for `grant` at `now`. Returns the code to send to the
    /// client and the record to store.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Random`] if the random number generator fails.
    pub fn issue(grant: CodeGrant, now: OffsetDateTime) -> Result<(Zeroizing<String>, Self)> {
        let code = generate_token()?;
        let record = Self {
            digest: TokenDigest::of(&code),
            grant,
            issued_at: now,
            expires_at: now + CODE_TTL,
            used: false,
        };
        Ok((code, record))
    }

    /// Checks a token request against this record at `now`.
    ///
    /// On success returns the record marked used, which the caller stores
    /// before issuing tokens; its `grant` holds the scopes, user, launch
    /// context and nonce for them. On [`CodeError::Reused`] the record is
    /// unchanged. On every other error the caller should still treat the
    /// code as spent: the returned record is marked used so a second try
    /// with a guessed verifier or redirect is not possible.
    ///
    /// # Errors
    ///
    /// One [`CodeError`] per failed check, in the order: code, reuse,
    /// expiry, client, redirect URI, PKCE.
    pub fn redeem(
        &self,
        request: &TokenRequest<'_>,
        now: OffsetDateTime,
    ) -> (Self, Result<(), CodeError>) {
        if !self.digest.matches(request.code) {
            return (self.clone(), Err(CodeError::UnknownCode));
        }
        if self.used {
            return (self.clone(), Err(CodeError::Reused));
        }
        let mut spent = self.clone();
        spent.used = true;
        let result = self.check(request, now);
        (spent, result)
    }

    fn check(&self, request: &TokenRequest<'_>, now: OffsetDateTime) -> Result<(), CodeError> {
        if now >= self.expires_at {
            return Err(CodeError::Expired);
        }
        if request.client_id != self.grant.client_id {
            return Err(CodeError::WrongClient);
        }
        // The token request must repeat the exact URI the authorization
        // request used (RFC 6749 section 4.1.3); for loopback URIs the port
        // is part of what must repeat, so exact equality applies.
        let redirect_ok = request
            .redirect_uri
            .is_some_and(|uri| uri == self.grant.redirect_uri);
        if !redirect_ok {
            return Err(CodeError::RedirectMismatch);
        }
        let verifier = request.code_verifier.ok_or(CodeError::MissingVerifier)?;
        self.grant
            .challenge
            .verify(verifier)
            .map_err(CodeError::Pkce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2025-03-01 08:00 UTC);
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

    fn grant() -> CodeGrant {
        CodeGrant {
            client_id: "growth-chart".into(),
            redirect_uri: "https://app.example.org/cb".into(),
            challenge: CodeChallenge::from_verifier(VERIFIER).unwrap(),
            scope: "launch/patient patient/Observation.rs openid fhirUser".into(),
            user_id: "u-17".into(),
            launch: LaunchContext {
                patient: Some("p-1".into()),
                encounter: None,
            },
            nonce: Some("n-0S6_WzA2Mj".into()),
        }
    }

    fn request(code: &str) -> TokenRequest<'_> {
        TokenRequest {
            code,
            client_id: "growth-chart",
            redirect_uri: Some("https://app.example.org/cb"),
            code_verifier: Some(VERIFIER),
        }
    }

    #[test]
    fn code_redeems_once() {
        let (code, record) = AuthorizationCode::issue(grant(), NOW).unwrap();
        let (spent, result) = record.redeem(&request(&code), NOW + Duration::seconds(5));
        assert_eq!(result, Ok(()));
        assert!(spent.used);
        assert_eq!(spent.grant, grant());

        let (again, result) = spent.redeem(&request(&code), NOW + Duration::seconds(6));
        assert_eq!(result, Err(CodeError::Reused));
        assert_eq!(again, spent);
    }

    #[test]
    fn expired_code_is_rejected() {
        let (code, record) = AuthorizationCode::issue(grant(), NOW).unwrap();
        let (_, result) = record.redeem(&request(&code), NOW + CODE_TTL);
        assert_eq!(result, Err(CodeError::Expired));
        let (_, result) = record.redeem(&request(&code), NOW + Duration::seconds(59));
        assert_eq!(result, Ok(()));
    }

    #[test]
    fn wrong_code_is_rejected() {
        let (_, record) = AuthorizationCode::issue(grant(), NOW).unwrap();
        let (unchanged, result) = record.redeem(&request("guess"), NOW);
        assert_eq!(result, Err(CodeError::UnknownCode));
        assert!(!unchanged.used);
    }

    #[test]
    fn binding_mismatches_are_rejected() {
        let (code, record) = AuthorizationCode::issue(grant(), NOW).unwrap();
        let cases = [
            (
                TokenRequest {
                    client_id: "other-app",
                    ..request(&code)
                },
                CodeError::WrongClient,
            ),
            (
                TokenRequest {
                    redirect_uri: Some("https://app.example.org/cb2"),
                    ..request(&code)
                },
                CodeError::RedirectMismatch,
            ),
            (
                TokenRequest {
                    redirect_uri: None,
                    ..request(&code)
                },
                CodeError::RedirectMismatch,
            ),
            (
                TokenRequest {
                    code_verifier: None,
                    ..request(&code)
                },
                CodeError::MissingVerifier,
            ),
            (
                TokenRequest {
                    code_verifier: Some("eBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
                    ..request(&code)
                },
                CodeError::Pkce(PkceError::Mismatch),
            ),
        ];
        for (bad, expected) in cases {
            let (spent, result) = record.redeem(&bad, NOW);
            assert_eq!(result, Err(expected));
            // A failed exchange still spends the code.
            assert!(spent.used, "{expected:?}");
        }
    }
}
