//! OAuth 2.0 Demonstrating Proof of Possession (DPoP, RFC 9449): proof
//! verification, JWK thumbprints (RFC 7638), server nonces and a cache of
//! used proof ids.
//!
//! A DPoP proof is a compact JWS with header `typ: dpop+jwt`, an asymmetric
//! `alg` (ES256 or EdDSA here) and the client's public key as `jwk`. Its
//! claims bind it to one request: `htm` (method), `htu` (URI without query
//! and fragment), `iat`, a unique `jti`, and on resource requests `ath`, the
//! hash of the access token. A token bound to a key carries
//! `cnf.jkt`, the key's thumbprint.
//!
//! Like the rest of this crate, nothing here reads a clock: callers pass
//! `now` in Unix seconds.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use aws_lc_rs::{digest, hmac, signature};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

/// The `typ` header value of a DPoP proof.
pub const PROOF_TYPE: &str = "dpop+jwt";

/// The signature algorithms accepted in proofs, in the order advertised as
/// `dpop_signing_alg_values_supported`.
pub const SUPPORTED_ALGORITHMS: &[&str] = &["ES256", "EdDSA"];

/// How far a proof's `iat` may be from the server's clock, in seconds.
pub const DEFAULT_IAT_WINDOW_SECS: i64 = 60;

/// Length of a nonce time slot, in seconds. A nonce is accepted in its own
/// slot and the next, so for 5 to 10 minutes.
pub const NONCE_SLOT_SECS: i64 = 300;

/// Largest proof accepted, in bytes.
const MAX_PROOF_LEN: usize = 8 * 1024;

/// Longest `jti` accepted, in bytes.
const MAX_JTI_LEN: usize = 256;

/// Default capacity of the proof id cache.
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;

/// Domain label mixed into every nonce MAC.
const NONCE_LABEL: &[u8] = b"ward-dpop-nonce-v1";

/// Length of the slot number at the start of a nonce, in bytes.
const NONCE_SLOT_LEN: usize = 8;

/// Length of the MAC kept in a nonce, in bytes.
const NONCE_MAC_LEN: usize = 16;

/// The reason a DPoP proof was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DpopError {
    /// The proof is not a compact JWS with JSON header and claims.
    #[error("the DPoP proof is not a well-formed JWT")]
    Malformed,
    /// The header's `typ` is not `dpop+jwt`.
    #[error("the DPoP proof header must have typ \"dpop+jwt\"")]
    WrongType,
    /// The header's `alg` is missing, symmetric or unsupported.
    #[error("the DPoP proof algorithm must be ES256 or EdDSA")]
    UnsupportedAlgorithm,
    /// The header's `jwk` is missing or not a usable public key for `alg`.
    #[error("the DPoP proof header needs the public key as jwk: {0}")]
    InvalidKey(&'static str),
    /// The header's `jwk` contains private key material.
    #[error("the DPoP proof jwk contains a private key; send only the public key")]
    PrivateKey,
    /// The signature does not verify under the header's key.
    #[error("the DPoP proof signature is invalid")]
    BadSignature,
    /// A required claim is missing or has the wrong type.
    #[error("the DPoP proof lacks a valid {0} claim")]
    MissingClaim(&'static str),
    /// `htm` is not the request method.
    #[error("the DPoP proof is for another HTTP method (htm)")]
    MethodMismatch,
    /// `htu` is not the request URI.
    #[error("the DPoP proof is for another URI (htu)")]
    UriMismatch,
    /// `iat` is outside the accepted window.
    #[error("the DPoP proof iat is more than {0} seconds from the server time")]
    Stale(i64),
    /// The `jti` was already used.
    #[error("the DPoP proof was already used (jti)")]
    Replayed,
    /// `ath` does not match the access token.
    #[error("the DPoP proof ath does not match the access token")]
    AccessTokenHashMismatch,
    /// The key differs from the one the access token is bound to.
    #[error("the DPoP proof key is not the key the access token is bound to")]
    KeyMismatch,
    /// The server demands a nonce and the proof has none, or an expired one.
    #[error("the DPoP proof needs the server nonce from the DPoP-Nonce header")]
    UseNonce,
}

impl DpopError {
    /// Returns the OAuth error code for this rejection: `use_dpop_nonce`
    /// when the client should retry with the nonce it was sent, else
    /// `invalid_dpop_proof`.
    pub fn error_code(&self) -> &'static str {
        match self {
            Self::UseNonce => "use_dpop_nonce",
            _ => "invalid_dpop_proof",
        }
    }
}

/// Returns the RFC 7638 JWK thumbprint (SHA-256, base64url) of a public
/// EC P-256 or OKP Ed25519 key.
///
/// # Errors
///
/// [`DpopError::InvalidKey`] for another key type or missing members.
pub fn jwk_thumbprint(jwk: &Map<String, Value>) -> Result<String, DpopError> {
    let member = |name: &'static str| -> Result<&str, DpopError> {
        jwk.get(name)
            .and_then(Value::as_str)
            .ok_or(DpopError::InvalidKey(name))
    };
    // The required members in lexicographic order, without whitespace.
    let canonical = match member("kty")? {
        "EC" => serde_json::json!({
            "crv": member("crv")?,
            "kty": "EC",
            "x": member("x")?,
            "y": member("y")?,
        }),
        "OKP" => serde_json::json!({
            "crv": member("crv")?,
            "kty": "OKP",
            "x": member("x")?,
        }),
        _ => return Err(DpopError::InvalidKey("kty must be EC or OKP")),
    };
    // serde_json keeps insertion order here, which is already sorted.
    let text = canonical.to_string();
    Ok(sha256_base64url(text.as_bytes()))
}

/// Returns base64url (no padding) of the SHA-256 of `bytes`: the form of
/// `ath` and of `jkt`.
pub fn sha256_base64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// Normalizes an HTTP URI for `htu` comparison (RFC 9449 section 4.3):
/// drops query and fragment, lowercases scheme and host, drops the default
/// port, resolves dot segments and uppercases percent-encoding hex digits.
/// Returns `None` when `uri` is not an absolute http(s) URI.
pub fn normalize_htu(uri: &str) -> Option<String> {
    let mut url = url::Url::parse(uri).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return None;
    }
    url.set_query(None);
    url.set_fragment(None);
    let text = url.as_str();
    let mut normalized = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        normalized.push(c);
        if c == '%' {
            for _ in 0..2 {
                if let Some(hex) = chars.next() {
                    normalized.push(hex.to_ascii_uppercase());
                }
            }
        }
    }
    Some(normalized)
}

/// The request a proof must match.
#[derive(Debug, Clone, Copy)]
pub struct ProofRequest<'a> {
    /// The HTTP method, such as `POST`.
    pub method: &'a str,
    /// The absolute request URI as the server's public origin names it.
    pub uri: &'a str,
    /// The access token sent with the proof, on resource requests; its hash
    /// must be the proof's `ath`. `None` at the token endpoint.
    pub access_token: Option<&'a str>,
    /// The current time, Unix seconds.
    pub now: i64,
}

/// A proof that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// The RFC 7638 thumbprint of the proof's key: the `cnf.jkt` value.
    pub jkt: String,
    /// The proof's unique id.
    pub jti: String,
}

/// Issues and checks server nonces without shared state: a nonce is a time
/// slot number and an HMAC over it, so every replica holding the same key
/// accepts the nonces any of them issued.
pub struct NonceIssuer {
    key: hmac::Key,
}

impl NonceIssuer {
    /// Creates an issuer from a secret that all replicas share, such as one
    /// derived from the master key. Use at least 16 random bytes.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// Returns the nonce for the slot that contains `now`.
    pub fn issue(&self, now: i64) -> String {
        let slot = now.div_euclid(NONCE_SLOT_SECS);
        let mut bytes = Vec::with_capacity(NONCE_SLOT_LEN + NONCE_MAC_LEN);
        bytes.extend_from_slice(&slot.to_be_bytes());
        bytes.extend_from_slice(&self.mac(slot).as_ref()[..NONCE_MAC_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Checks that `nonce` was issued for the current or the previous slot.
    pub fn check(&self, nonce: &str, now: i64) -> bool {
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        if bytes.len() != NONCE_SLOT_LEN + NONCE_MAC_LEN {
            return false;
        }
        let (slot_bytes, mac) = bytes.split_at(NONCE_SLOT_LEN);
        let Ok(slot_bytes) = <[u8; NONCE_SLOT_LEN]>::try_from(slot_bytes) else {
            return false;
        };
        let slot = i64::from_be_bytes(slot_bytes);
        let current = now.div_euclid(NONCE_SLOT_SECS);
        if slot != current && slot != current - 1 {
            return false;
        }
        ward_crypto::constant_time_eq(mac, &self.mac(slot).as_ref()[..NONCE_MAC_LEN])
    }

    fn mac(&self, slot: i64) -> hmac::Tag {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(NONCE_LABEL);
        context.update(&slot.to_be_bytes());
        context.sign()
    }
}

/// Remembers used proof ids until their `iat` window has passed, so a proof
/// is accepted once.
///
/// NOTE: the cache lives in one process. Replicas do not share it, so a
/// proof replayed against another replica within the `iat` window is not
/// detected there. The `iat` window (and the nonce slot, when nonces are
/// required) bounds how long such a replay can work.
pub struct ReplayCache {
    capacity: usize,
    inner: Mutex<ReplayEntries>,
}

#[derive(Default)]
struct ReplayEntries {
    expires: HashMap<[u8; 32], i64>,
    order: VecDeque<([u8; 32], i64)>,
}

impl ReplayCache {
    /// Creates a cache holding at most `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(ReplayEntries::default()),
        }
    }

    /// Records `id` until `expires` (Unix seconds). Returns `false` when it
    /// was already recorded and has not expired.
    ///
    /// When the cache is full of live ids, the oldest is dropped; the `iat`
    /// window still rejects a replay of it once that window has passed.
    pub fn insert(&self, id: &[u8], expires: i64, now: i64) -> bool {
        let key: [u8; 32] = {
            let digest = digest::digest(&digest::SHA256, id);
            let mut key = [0u8; 32];
            key.copy_from_slice(digest.as_ref());
            key
        };
        let mut entries = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(&(old, until)) = entries.order.front() {
            if until > now && entries.order.len() < self.capacity {
                break;
            }
            entries.order.pop_front();
            if entries.expires.get(&old) == Some(&until) {
                entries.expires.remove(&old);
            }
        }
        if entries.expires.get(&key).is_some_and(|&until| until > now) {
            return false;
        }
        entries.expires.insert(key, expires);
        entries.order.push_back((key, expires));
        true
    }

    /// Returns the number of ids in the cache.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .expires
            .len()
    }

    /// Returns whether the cache contains no ids.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Verifies DPoP proofs: signature, header, claims, `iat` window, nonce and
/// single use of each `jti`.
pub struct DpopVerifier {
    nonces: NonceIssuer,
    require_nonce: bool,
    iat_window: i64,
    replay: ReplayCache,
}

impl DpopVerifier {
    /// Creates a verifier whose nonces are keyed by `nonce_secret`. By
    /// default proofs need a server nonce, `iat` may be 60 seconds off and
    /// 100 000 proof ids are remembered.
    pub fn new(nonce_secret: &[u8]) -> Self {
        Self {
            nonces: NonceIssuer::new(nonce_secret),
            require_nonce: true,
            iat_window: DEFAULT_IAT_WINDOW_SECS,
            replay: ReplayCache::new(DEFAULT_REPLAY_CAPACITY),
        }
    }

    /// Sets whether proofs must carry a server nonce.
    #[must_use]
    pub fn with_required_nonce(mut self, required: bool) -> Self {
        self.require_nonce = required;
        self
    }

    /// Sets how far `iat` may be from `now`, in seconds (at least 1).
    #[must_use]
    pub fn with_iat_window(mut self, secs: i64) -> Self {
        self.iat_window = secs.max(1);
        self
    }

    /// Returns the nonce clients should use now.
    pub fn nonce(&self, now: i64) -> String {
        self.nonces.issue(now)
    }

    /// Verifies `proof` for `request`.
    ///
    /// # Errors
    ///
    /// A [`DpopError`] naming the first check that failed. The `jti` is
    /// recorded only when every other check passed.
    pub fn verify(
        &self,
        proof: &str,
        request: &ProofRequest<'_>,
    ) -> Result<VerifiedProof, DpopError> {
        let parsed = ParsedProof::parse(proof)?;
        let jkt = parsed.verify_signature()?;
        let claims = &parsed.claims;

        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|jti| !jti.is_empty() && jti.len() <= MAX_JTI_LEN)
            .ok_or(DpopError::MissingClaim("jti"))?;
        let htm = claims
            .get("htm")
            .and_then(Value::as_str)
            .ok_or(DpopError::MissingClaim("htm"))?;
        if htm != request.method {
            return Err(DpopError::MethodMismatch);
        }
        let htu = claims
            .get("htu")
            .and_then(Value::as_str)
            .ok_or(DpopError::MissingClaim("htu"))?;
        match (normalize_htu(htu), normalize_htu(request.uri)) {
            (Some(claimed), Some(actual)) if claimed == actual => {}
            _ => return Err(DpopError::UriMismatch),
        }
        let iat = claims
            .get("iat")
            .and_then(numeric_date)
            .ok_or(DpopError::MissingClaim("iat"))?;
        if (iat - request.now).abs() > self.iat_window {
            return Err(DpopError::Stale(self.iat_window));
        }
        if let Some(token) = request.access_token {
            let ath = claims
                .get("ath")
                .and_then(Value::as_str)
                .ok_or(DpopError::MissingClaim("ath"))?;
            let expected = sha256_base64url(token.as_bytes());
            if !ward_crypto::constant_time_eq(ath.as_bytes(), expected.as_bytes()) {
                return Err(DpopError::AccessTokenHashMismatch);
            }
        }
        if self.require_nonce {
            let nonce = claims.get("nonce").and_then(Value::as_str);
            if !nonce.is_some_and(|nonce| self.nonces.check(nonce, request.now)) {
                return Err(DpopError::UseNonce);
            }
        }

        // The id is unique per key; a proof outlives its iat window by at
        // most the window on the other side.
        let replay_id = format!("{jkt}\0{jti}");
        let expires = iat.max(request.now) + self.iat_window + 1;
        if !self
            .replay
            .insert(replay_id.as_bytes(), expires, request.now)
        {
            return Err(DpopError::Replayed);
        }
        Ok(VerifiedProof {
            jkt,
            jti: jti.to_owned(),
        })
    }
}

/// Reads a NumericDate: an integer, or a number with a fraction that is
/// truncated.
fn numeric_date(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        let float = value.as_f64()?;
        // Truncation is intended; values beyond i64 are rejected by the
        // window check anyway.
        float.is_finite().then_some(float as i64)
    })
}

/// A proof split into its parts, before any check of its claims.
struct ParsedProof {
    header: Map<String, Value>,
    claims: Map<String, Value>,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

impl ParsedProof {
    fn parse(proof: &str) -> Result<Self, DpopError> {
        if proof.len() > MAX_PROOF_LEN {
            return Err(DpopError::Malformed);
        }
        let mut parts = proof.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(DpopError::Malformed);
        };
        let object = |part: &str| -> Result<Map<String, Value>, DpopError> {
            let bytes = URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| DpopError::Malformed)?;
            match serde_json::from_slice(&bytes) {
                Ok(Value::Object(map)) => Ok(map),
                _ => Err(DpopError::Malformed),
            }
        };
        let signing_input = format!("{header}.{claims}").into_bytes();
        Ok(Self {
            header: object(header)?,
            claims: object(claims)?,
            signing_input,
            signature: URL_SAFE_NO_PAD
                .decode(signature)
                .map_err(|_| DpopError::Malformed)?,
        })
    }

    /// Checks the header and the signature; returns the key's thumbprint.
    fn verify_signature(&self) -> Result<String, DpopError> {
        if self.header.get("typ").and_then(Value::as_str) != Some(PROOF_TYPE) {
            return Err(DpopError::WrongType);
        }
        let alg = self
            .header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(DpopError::UnsupportedAlgorithm)?;
        let Some(Value::Object(jwk)) = self.header.get("jwk") else {
            return Err(DpopError::InvalidKey("jwk is missing"));
        };
        // Any private member (EC and OKP "d", RSA "p", "q", ...) is refused.
        const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
        if PRIVATE_MEMBERS.iter().any(|name| jwk.contains_key(*name)) {
            return Err(DpopError::PrivateKey);
        }
        let coordinate = |name: &'static str| -> Result<Vec<u8>, DpopError> {
            let bytes = jwk
                .get(name)
                .and_then(Value::as_str)
                .and_then(|text| URL_SAFE_NO_PAD.decode(text).ok())
                .ok_or(DpopError::InvalidKey(name))?;
            if bytes.len() == 32 {
                Ok(bytes)
            } else {
                Err(DpopError::InvalidKey("coordinates must be 32 bytes"))
            }
        };
        let kty = jwk.get("kty").and_then(Value::as_str);
        let crv = jwk.get("crv").and_then(Value::as_str);
        let (algorithm, public_key): (&dyn signature::VerificationAlgorithm, Vec<u8>) = match alg {
            "ES256" => {
                if kty != Some("EC") || crv != Some("P-256") {
                    return Err(DpopError::InvalidKey("ES256 needs an EC P-256 key"));
                }
                let mut point = vec![0x04];
                point.extend(coordinate("x")?);
                point.extend(coordinate("y")?);
                (&signature::ECDSA_P256_SHA256_FIXED, point)
            }
            "EdDSA" => {
                if kty != Some("OKP") || crv != Some("Ed25519") {
                    return Err(DpopError::InvalidKey("EdDSA needs an OKP Ed25519 key"));
                }
                (&signature::ED25519, coordinate("x")?)
            }
            _ => return Err(DpopError::UnsupportedAlgorithm),
        };
        signature::UnparsedPublicKey::new(algorithm, &public_key)
            .verify(&self.signing_input, &self.signature)
            .map_err(|_| DpopError::BadSignature)?;
        jwk_thumbprint(jwk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
    use serde_json::json;

    const NOW: i64 = 1_700_000_000;
    const URI: &str = "https://ward.example:8443/fhir/Patient";

    struct Key(EcdsaKeyPair);

    impl Key {
        fn new() -> Self {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .expect("key");
            Self(
                EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8.as_ref(),
                )
                .expect("key"),
            )
        }

        fn jwk(&self) -> Value {
            let point = self.0.public_key().as_ref();
            json!({
                "kty": "EC",
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            })
        }

        fn sign(&self, header: &Value, claims: &Value) -> String {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let signature = self
                .0
                .sign(&SystemRandom::new(), input.as_bytes())
                .expect("sign");
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
        }

        fn proof(&self, claims: &Value) -> String {
            let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()});
            self.sign(&header, claims)
        }
    }

    fn claims(jti: &str) -> Value {
        json!({"jti": jti, "htm": "GET", "htu": URI, "iat": NOW, "ath": sha256_base64url(b"token")})
    }

    fn request() -> ProofRequest<'static> {
        ProofRequest {
            method: "GET",
            uri: URI,
            access_token: Some("token"),
            now: NOW,
        }
    }

    fn verifier() -> DpopVerifier {
        DpopVerifier::new(b"0123456789abcdef0123456789abcdef").with_required_nonce(false)
    }

    #[test]
    fn thumbprint_uses_required_members_in_order() {
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": "AAA", "y": "BBB", "kid": "ignored"});
        let expected = sha256_base64url(br#"{"crv":"P-256","kty":"EC","x":"AAA","y":"BBB"}"#);
        assert_eq!(
            jwk_thumbprint(jwk.as_object().expect("object")).expect("thumbprint"),
            expected
        );
    }

    #[test]
    fn valid_proof_is_accepted_once() {
        let key = Key::new();
        let verifier = verifier();
        let proof = key.proof(&claims("one"));
        let verified = verifier.verify(&proof, &request()).expect("valid");
        let jwk = key.jwk();
        assert_eq!(
            verified.jkt,
            jwk_thumbprint(jwk.as_object().expect("object")).expect("thumbprint")
        );
        assert_eq!(
            verifier.verify(&proof, &request()),
            Err(DpopError::Replayed)
        );
    }

    #[test]
    fn eddsa_proof_is_accepted() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        let header = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": {
            "kty": "OKP", "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        }});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims("ed").to_string())
        );
        let signature = pair.sign(input.as_bytes());
        let proof = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()));
        assert!(verifier().verify(&proof, &request()).is_ok());
    }

    #[test]
    fn claim_mismatches_are_rejected() {
        let key = Key::new();
        let verifier = verifier();
        let cases = [
            ("htm", json!("POST"), DpopError::MethodMismatch),
            (
                "htu",
                json!("https://ward.example:8443/fhir/Observation"),
                DpopError::UriMismatch,
            ),
            ("iat", json!(NOW - 61), DpopError::Stale(60)),
            ("iat", json!(NOW + 61), DpopError::Stale(60)),
            (
                "ath",
                json!(sha256_base64url(b"other")),
                DpopError::AccessTokenHashMismatch,
            ),
            ("jti", json!(""), DpopError::MissingClaim("jti")),
        ];
        for (index, (claim, value, expected)) in cases.into_iter().enumerate() {
            let mut body = claims(&format!("case-{index}"));
            body[claim] = value;
            assert_eq!(
                verifier.verify(&key.proof(&body), &request()),
                Err(expected),
                "claim {claim}"
            );
        }
    }

    #[test]
    fn missing_ath_is_rejected_on_resource_requests() {
        let key = Key::new();
        let mut body = claims("no-ath");
        body.as_object_mut().expect("object").remove("ath");
        assert_eq!(
            verifier().verify(&key.proof(&body), &request()),
            Err(DpopError::MissingClaim("ath"))
        );
        let token_endpoint = ProofRequest {
            access_token: None,
            ..request()
        };
        assert!(
            verifier()
                .verify(&key.proof(&body), &token_endpoint)
                .is_ok()
        );
    }

    #[test]
    fn header_problems_are_rejected() {
        let key = Key::new();
        let body = claims("header");
        let mut private = key.jwk();
        private["d"] = json!("AAAA");
        let cases = [
            (
                json!({"typ": "JWT", "alg": "ES256", "jwk": key.jwk()}),
                DpopError::WrongType,
            ),
            (
                json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": key.jwk()}),
                DpopError::UnsupportedAlgorithm,
            ),
            (
                json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": private}),
                DpopError::PrivateKey,
            ),
            (
                json!({"typ": "dpop+jwt", "alg": "ES256"}),
                DpopError::InvalidKey("jwk is missing"),
            ),
            (
                json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": Key::new().jwk()}),
                DpopError::BadSignature,
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(
                verifier().verify(&key.sign(&header, &body), &request()),
                Err(expected)
            );
        }
        assert_eq!(
            verifier().verify("a.b", &request()),
            Err(DpopError::Malformed)
        );
    }

    #[test]
    fn nonce_is_demanded_and_checked() {
        let key = Key::new();
        let verifier = DpopVerifier::new(b"0123456789abcdef0123456789abcdef");
        assert_eq!(
            verifier.verify(&key.proof(&claims("no-nonce")), &request()),
            Err(DpopError::UseNonce)
        );
        assert_eq!(DpopError::UseNonce.error_code(), "use_dpop_nonce");

        let mut body = claims("with-nonce");
        body["nonce"] = json!(verifier.nonce(NOW));
        assert!(verifier.verify(&key.proof(&body), &request()).is_ok());

        let mut body = claims("old-nonce");
        body["nonce"] = json!(verifier.nonce(NOW - 2 * NONCE_SLOT_SECS));
        assert_eq!(
            verifier.verify(&key.proof(&body), &request()),
            Err(DpopError::UseNonce)
        );
    }

    #[test]
    fn nonce_is_valid_for_two_slots_across_replicas() {
        let first = NonceIssuer::new(b"shared secret of the replicas");
        let second = NonceIssuer::new(b"shared secret of the replicas");
        let other = NonceIssuer::new(b"another deployment's secret!!");
        let nonce = first.issue(NOW);
        assert!(second.check(&nonce, NOW));
        assert!(second.check(&nonce, NOW + NONCE_SLOT_SECS));
        assert!(!second.check(&nonce, NOW + 2 * NONCE_SLOT_SECS));
        assert!(!other.check(&nonce, NOW));
        assert!(!second.check("not-a-nonce", NOW));
    }

    #[test]
    fn htu_normalization() {
        let same = [
            "https://WARD.example:443/fhir/Patient?x=1#f",
            "https://ward.example/fhir/./Patient",
            "HTTPS://ward.example/fhir/a/../Patient",
        ];
        for uri in same {
            assert_eq!(
                normalize_htu(uri).as_deref(),
                Some("https://ward.example/fhir/Patient"),
                "{uri}"
            );
        }
        assert_eq!(
            normalize_htu("https://h/a%2fb").as_deref(),
            Some("https://h/a%2Fb")
        );
        assert_eq!(normalize_htu("/relative"), None);
        assert_eq!(normalize_htu("ftp://h/x"), None);
    }

    #[test]
    fn replay_cache_is_bounded_and_expires() {
        let cache = ReplayCache::new(2);
        assert!(cache.insert(b"a", NOW + 10, NOW));
        assert!(!cache.insert(b"a", NOW + 10, NOW));
        assert!(cache.insert(b"b", NOW + 10, NOW));
        assert!(cache.insert(b"c", NOW + 10, NOW));
        assert!(cache.len() <= 2);
        // After expiry an id may be used again (the iat window rejects it).
        assert!(cache.insert(b"b", NOW + 30, NOW + 11));
    }
}
