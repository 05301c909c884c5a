//! OAuth 2.0 and SMART App Launch building blocks: PKCE, redirect URI
//! matching, authorization codes, refresh token families, clients and
//! `private_key_jwt` client assertions.
//!
//! Tokens, codes and client secrets are 256 random bits, base64url without
//! padding ([`generate_token`]). Only their SHA-256 digests
//! ([`TokenDigest`]) are stored: a database leak reveals no usable token,
//! and since the tokens are random a plain hash is as strong as a slow one.

pub mod assertion;
pub mod client;
pub mod code;
pub mod pkce;
pub mod redirect;
pub mod refresh;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::Result;
use crate::random;

pub use assertion::{AssertionError, ReplayEntry, validate_client_assertion};
pub use client::{Client, ClientKind, TokenEndpointAuthMethod};
pub use code::{AuthorizationCode, CodeError, CodeGrant, LaunchContext, TokenRequest};
pub use pkce::{CodeChallenge, PkceError};
pub use redirect::{RedirectError, match_redirect_uri, redirect_uri_matches};
pub use refresh::{RefreshError, RefreshFamily, RefreshOutcome, RefreshRequest, Rotation};

/// Random bytes in a token, code or client secret.
pub const TOKEN_BYTES: usize = 32;

/// Generates a token: 256 random bits, base64url without padding (43
/// characters).
///
/// # Errors
///
/// [`crate::Error::Random`] if the random number generator fails.
pub fn generate_token() -> Result<Zeroizing<String>> {
    let bytes = random::bytes::<TOKEN_BYTES>()?;
    Ok(Zeroizing::new(URL_SAFE_NO_PAD.encode(bytes.as_slice())))
}

/// The SHA-256 digest of a token, the form in which tokens, codes and
/// client secrets are stored and looked up. Equality is constant-time.
#[derive(Clone, Eq, Serialize, Deserialize)]
pub struct TokenDigest(#[serde(with = "hex_bytes")] [u8; 32]);

impl TokenDigest {
    /// Returns the digest of `token`.
    pub fn of(token: &str) -> Self {
        Self(random::sha256(token.as_bytes()))
    }

    /// Wraps stored digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Returns the digest bytes, for use as a database key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// True when `token` hashes to this digest.
    pub fn matches(&self, token: &str) -> bool {
        *self == Self::of(token)
    }
}

impl PartialEq for TokenDigest {
    fn eq(&self, other: &Self) -> bool {
        ward_crypto::constant_time_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A prefix is enough to tell digests apart in test output and logs.
        let prefix: String = self.0.iter().take(4).map(|b| format!("{b:02x}")).collect();
        write!(f, "TokenDigest({prefix}..)")
    }
}

/// Serde helpers storing a 32-byte digest as lower-case hex.
pub(crate) mod hex_bytes {
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&text)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        if text.len() != 64 || !text.is_ascii() {
            return Err(D::Error::custom("expected 64 hex digits"));
        }
        for (i, slot) in out.iter_mut().enumerate() {
            let pair = text
                .get(2 * i..2 * i + 2)
                .ok_or_else(|| D::Error::custom("expected 64 hex digits"))?;
            *slot = u8::from_str_radix(pair, 16)
                .map_err(|_| D::Error::custom("expected 64 hex digits"))?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_43_base64url_characters() {
        let token = generate_token().unwrap();
        assert_eq!(token.len(), 43);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(*token, *generate_token().unwrap());
    }

    #[test]
    fn digest_matches_only_its_token() {
        let token = generate_token().unwrap();
        let digest = TokenDigest::of(&token);
        assert!(digest.matches(&token));
        assert!(!digest.matches("other"));
    }

    #[test]
    fn digest_round_trips_json() {
        let digest = TokenDigest::of("abc");
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(
            json,
            "\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\""
        );
        let back: TokenDigest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, digest);
        assert!(serde_json::from_str::<TokenDigest>("\"zz\"").is_err());
    }
}
