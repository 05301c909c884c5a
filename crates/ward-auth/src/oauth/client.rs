//! OAuth client registrations.

use jsonwebtoken::jwk::JwkSet;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{TokenDigest, generate_token};
use crate::error::{Error, Result};
use crate::scopes::Scopes;

/// Maximum client id length, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// Whether a client can keep a secret (RFC 6749 section 2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    /// A browser or native app: no secret, PKCE only.
    Public,
    /// A server-side app or backend service that authenticates itself.
    Confidential,
}

/// How a client authenticates at the token endpoint, named as in the
/// `token_endpoint_auth_method` registration field (RFC 7591).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenEndpointAuthMethod {
    /// A public client.
    None,
    /// A client secret in HTTP Basic authentication.
    ClientSecretBasic,
    /// A client secret in the form body.
    ClientSecretPost,
    /// A JWT signed with a key from the client's JWKS (RFC 7523), required
    /// by SMART Backend Services.
    PrivateKeyJwt,
}

/// A registered client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Client {
    /// `client_id`.
    pub client_id: String,
    /// Public or confidential.
    pub kind: ClientKind,
    /// How it authenticates at the token endpoint.
    pub auth_method: TokenEndpointAuthMethod,
    /// Registered redirect URIs, matched by
    /// [`super::redirect::match_redirect_uri`].
    pub redirect_uris: Vec<String>,
    /// The most the client may be granted, as a scope string.
    pub allowed_scope: String,
    /// Public keys for `private_key_jwt`.
    pub jwks: Option<JwkSet>,
    /// Digest of the client secret, for the `client_secret_*` methods.
    pub secret_digest: Option<TokenDigest>,
}

impl Client {
    /// Checks the registration for contradictions.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidClient`] when the id is empty, too long or not
    /// printable ASCII; a public client has an authentication method or a
    /// confidential one has none; a secret method has no secret digest;
    /// `private_key_jwt` has no keys; or a redirect URI is neither `https`,
    /// `http` on a loopback host, nor a private-use scheme (RFC 8252
    /// section 7.1), or has a fragment.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: &str| {
            Err(Error::InvalidClient {
                client_id: self.client_id.chars().take(MAX_CLIENT_ID_LEN).collect(),
                reason: reason.to_owned(),
            })
        };
        if self.client_id.is_empty()
            || self.client_id.len() > MAX_CLIENT_ID_LEN
            || !self.client_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return invalid("client_id must be 1 to 128 printable ASCII characters");
        }
        match (self.kind, self.auth_method) {
            (ClientKind::Public, TokenEndpointAuthMethod::None) => {}
            (ClientKind::Public, _) => return invalid("a public client cannot authenticate"),
            (ClientKind::Confidential, TokenEndpointAuthMethod::None) => {
                return invalid("a confidential client needs an authentication method");
            }
            (ClientKind::Confidential, TokenEndpointAuthMethod::PrivateKeyJwt) => {
                if self.jwks.as_ref().is_none_or(|set| set.keys.is_empty()) {
                    return invalid("private_key_jwt needs a JWKS with at least one key");
                }
            }
            (ClientKind::Confidential, _) => {
                if self.secret_digest.is_none() {
                    return invalid("client_secret authentication needs a secret");
                }
            }
        }
        if let Some(bad) = self
            .redirect_uris
            .iter()
            .find(|u| !is_acceptable_redirect(u))
        {
            let shown: String = bad.chars().take(100).collect();
            return invalid(&format!("redirect URI {shown:?} is not allowed"));
        }
        Ok(())
    }

    /// The client's allowed scopes.
    pub fn allowed_scopes(&self) -> Scopes {
        Scopes::parse(&self.allowed_scope)
    }

    /// The part of `requested` this client may be granted.
    pub fn grantable_scope(&self, requested: &str) -> Scopes {
        self.allowed_scopes().grantable(&Scopes::parse(requested))
    }

    /// Checks a presented client secret in constant time.
    pub fn verify_secret(&self, presented: &str) -> bool {
        self.secret_digest
            .as_ref()
            .is_some_and(|digest| digest.matches(presented))
    }

    /// Generates a client secret. Returns the secret to hand to the client
    /// once and the digest to store in `secret_digest`.
    ///
    /// # Errors
    ///
    /// [`Error::Random`] if the random number generator fails.
    pub fn new_secret() -> Result<(Zeroizing<String>, TokenDigest)> {
        let secret = generate_token()?;
        let digest = TokenDigest::of(&secret);
        Ok((secret, digest))
    }
}

fn is_acceptable_redirect(uri: &str) -> bool {
    if uri.contains('#') || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    if let Some(rest) = uri.strip_prefix("https://") {
        return !rest.is_empty() && !rest.starts_with('/');
    }
    if uri.starts_with("http://") {
        return ["http://127.0.0.1", "http://[::1]", "http://localhost"]
            .iter()
            .any(|host| {
                uri.strip_prefix(host)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/', '?']))
            });
    }
    // A private-use scheme must be a reversed domain name, such as
    // "org.example.app:/callback" (RFC 8252 section 7.1).
    uri.split_once(':').is_some_and(|(scheme, rest)| {
        scheme.contains('.')
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
            && rest.starts_with('/')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public_client() -> Client {
        Client {
            client_id: "growth-chart".into(),
            kind: ClientKind::Public,
            auth_method: TokenEndpointAuthMethod::None,
            redirect_uris: vec![
                "https://app.example.org/cb".into(),
                "http://127.0.0.1/cb".into(),
                "org.example.growth:/cb".into(),
            ],
            allowed_scope: "openid fhirUser launch/patient patient/*.rs".into(),
            jwks: None,
            secret_digest: None,
        }
    }

    #[test]
    fn valid_public_client() {
        assert!(public_client().validate().is_ok());
    }

    #[test]
    fn contradictory_registrations_are_rejected() {
        let mut with_method = public_client();
        with_method.auth_method = TokenEndpointAuthMethod::ClientSecretBasic;
        assert!(with_method.validate().is_err());

        let mut confidential = public_client();
        confidential.kind = ClientKind::Confidential;
        assert!(confidential.validate().is_err());
        confidential.auth_method = TokenEndpointAuthMethod::ClientSecretBasic;
        assert!(confidential.validate().is_err());
        confidential.auth_method = TokenEndpointAuthMethod::PrivateKeyJwt;
        assert!(confidential.validate().is_err());

        let mut empty_id = public_client();
        empty_id.client_id = String::new();
        assert!(empty_id.validate().is_err());
    }

    #[test]
    fn unsafe_redirect_uris_are_rejected() {
        for bad in [
            "http://app.example.org/cb",
            "https://app.example.org/cb#x",
            "https:///cb",
            "javascript:alert(1)",
            "myapp:/cb",
            "http://127.0.0.1.evil.example/cb",
            "https://app.example.org/c b",
        ] {
            let mut client = public_client();
            client.redirect_uris.push(bad.into());
            assert!(client.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_verifies() {
        let (secret, digest) = Client::new_secret().unwrap();
        let mut client = public_client();
        client.kind = ClientKind::Confidential;
        client.auth_method = TokenEndpointAuthMethod::ClientSecretBasic;
        client.secret_digest = Some(digest);
        assert!(client.validate().is_ok());
        assert!(client.verify_secret(&secret));
        assert!(!client.verify_secret("wrong"));
        assert!(!public_client().verify_secret(&secret));
    }

    #[test]
    fn grantable_scope_is_limited() {
        let granted =
            public_client().grantable_scope("openid patient/Observation.rs user/Patient.rs");
        assert_eq!(granted.to_string(), "openid patient/Observation.rs");
    }
}
