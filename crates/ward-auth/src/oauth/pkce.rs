//! Proof Key for Code Exchange (RFC 7636), S256 only.
//!
//! The `plain` method is rejected: it protects nothing once the
//! authorization request leaks, and OAuth 2.0 Security BCP (RFC 9700)
//! section 2.1.1 says clients use S256.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::random;

/// Shortest verifier RFC 7636 allows.
pub const MIN_VERIFIER_LEN: usize = 43;

/// Longest verifier RFC 7636 allows.
pub const MAX_VERIFIER_LEN: usize = 128;

/// Why a PKCE parameter was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PkceError {
    /// The authorization request has no `code_challenge`.
    #[error("code_challenge is missing")]
    MissingChallenge,
    /// `code_challenge_method` is `plain` or absent (which means `plain`).
    #[error("code_challenge_method must be S256")]
    PlainMethod,
    /// `code_challenge_method` is some other unknown value.
    #[error("code_challenge_method must be S256")]
    UnsupportedMethod,
    /// The challenge is not 43 base64url characters.
    #[error("code_challenge must be the base64url SHA-256 of the verifier")]
    MalformedChallenge,
    /// The verifier is shorter than 43 or longer than 128 characters, or
    /// uses a character outside `A-Z a-z 0-9 - . _ ~`.
    #[error("code_verifier must be 43 to 128 unreserved characters")]
    MalformedVerifier,
    /// The verifier does not hash to the challenge.
    #[error("code_verifier does not match code_challenge")]
    Mismatch,
}

/// An S256 code challenge from an authorization request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeChallenge(String);

impl CodeChallenge {
    /// Parses the `code_challenge` and `code_challenge_method` parameters.
    ///
    /// # Errors
    ///
    /// [`PkceError::MissingChallenge`] without a challenge,
    /// [`PkceError::PlainMethod`] for `plain` or no method,
    /// [`PkceError::UnsupportedMethod`] for other methods and
    /// [`PkceError::MalformedChallenge`] for a challenge that cannot be a
    /// SHA-256 digest.
    pub fn parse(challenge: Option<&str>, method: Option<&str>) -> Result<Self, PkceError> {
        let challenge = challenge.ok_or(PkceError::MissingChallenge)?;
        match method {
            Some("S256") => {}
            None | Some("plain") => return Err(PkceError::PlainMethod),
            Some(_) => return Err(PkceError::UnsupportedMethod),
        }
        let decoded = URL_SAFE_NO_PAD
            .decode(challenge)
            .map_err(|_| PkceError::MalformedChallenge)?;
        if challenge.len() != 43 || decoded.len() != 32 {
            return Err(PkceError::MalformedChallenge);
        }
        Ok(Self(challenge.to_owned()))
    }

    /// Returns the S256 challenge for a verifier, as a client computes it.
    ///
    /// # Errors
    ///
    /// [`PkceError::MalformedVerifier`] for a verifier RFC 7636 forbids.
    pub fn from_verifier(verifier: &str) -> Result<Self, PkceError> {
        check_verifier(verifier)?;
        Ok(Self(
            URL_SAFE_NO_PAD.encode(random::sha256(verifier.as_bytes())),
        ))
    }

    /// Returns the challenge text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Checks the `code_verifier` of a token request against this challenge.
    ///
    /// # Errors
    ///
    /// [`PkceError::MalformedVerifier`] or [`PkceError::Mismatch`].
    pub fn verify(&self, verifier: &str) -> Result<(), PkceError> {
        let computed = Self::from_verifier(verifier)?;
        if ward_crypto::constant_time_eq(computed.0.as_bytes(), self.0.as_bytes()) {
            Ok(())
        } else {
            Err(PkceError::Mismatch)
        }
    }
}

fn check_verifier(verifier: &str) -> Result<(), PkceError> {
    let length_ok = (MIN_VERIFIER_LEN..=MAX_VERIFIER_LEN).contains(&verifier.len());
    let charset_ok = verifier
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if length_ok && charset_ok {
        Ok(())
    } else {
        Err(PkceError::MalformedVerifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7636 Appendix B.
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn rfc7636_example_verifies() {
        let challenge = CodeChallenge::parse(Some(CHALLENGE), Some("S256")).unwrap();
        assert_eq!(challenge.verify(VERIFIER), Ok(()));
        assert_eq!(CodeChallenge::from_verifier(VERIFIER).unwrap(), challenge);
    }

    #[test]
    fn plain_method_is_rejected() {
        assert_eq!(
            CodeChallenge::parse(Some(VERIFIER), Some("plain")),
            Err(PkceError::PlainMethod)
        );
        assert_eq!(
            CodeChallenge::parse(Some(CHALLENGE), None),
            Err(PkceError::PlainMethod)
        );
        assert_eq!(
            CodeChallenge::parse(Some(CHALLENGE), Some("S512")),
            Err(PkceError::UnsupportedMethod)
        );
        assert_eq!(
            CodeChallenge::parse(None, Some("S256")),
            Err(PkceError::MissingChallenge)
        );
    }

    #[test]
    fn malformed_challenge_is_rejected() {
        for bad in [
            "",
            "short",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM=",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw+cM",
        ] {
            assert_eq!(
                CodeChallenge::parse(Some(bad), Some("S256")),
                Err(PkceError::MalformedChallenge),
                "{bad}"
            );
        }
    }

    #[test]
    fn wrong_verifier_is_rejected() {
        let challenge = CodeChallenge::parse(Some(CHALLENGE), Some("S256")).unwrap();
        let other = "eBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(challenge.verify(other), Err(PkceError::Mismatch));
    }

    #[test]
    fn malformed_verifier_is_rejected() {
        let challenge = CodeChallenge::parse(Some(CHALLENGE), Some("S256")).unwrap();
        let too_long = "a".repeat(129);
        for bad in [
            "",
            "abc",
            &VERIFIER[..42],
            too_long.as_str(),
            "dBjftJeZ4CVP+mB92K27uhbUJU1p1r/wW1gFWFOEjXk",
        ] {
            assert_eq!(
                challenge.verify(bad),
                Err(PkceError::MalformedVerifier),
                "{bad}"
            );
        }
        assert!(CodeChallenge::from_verifier(&"a".repeat(128)).is_ok());
    }
}
