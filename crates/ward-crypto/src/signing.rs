//! The ECDSA P-256 key that signs access tokens (JWS algorithm ES256).
//!
//! The private key is stored only sealed under the master key
//! ([`SigningKey::sealed_key`]). The public key is published as a JWK whose
//! `kid` is its RFC 7638 thumbprint, so the id follows from the key and
//! cannot drift from it.

use std::fmt;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::keyring::{MasterKey, SealedSecret};

/// The JWS `alg` value for signatures made by a [`SigningKey`].
pub const JWS_ALGORITHM: &str = "ES256";

/// Label that binds the sealed private key to its purpose.
const SEALED_KEY_LABEL: &str = "ward-token-signing-key";

/// Length of one P-256 coordinate in bytes.
const COORDINATE_LEN: usize = 32;

/// An ECDSA P-256 private key for signing tokens.
///
/// `Debug` prints only the key id. AWS-LC wipes the private scalar when the
/// key is dropped.
pub struct SigningKey {
    key_pair: EcdsaKeyPair,
    kid: String,
    x: String,
    y: String,
}

impl SigningKey {
    /// Generates a new random signing key.
    ///
    /// # Errors
    ///
    /// [`Error::Provider`] if key generation fails.
    pub fn generate() -> Result<Self> {
        let key_pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(Error::provider("P-256 key generation"))?;
        Self::from_key_pair(key_pair)
    }

    /// Loads a key from the output of [`SigningKey::sealed_key`].
    ///
    /// # Errors
    ///
    /// [`Error::WrongMasterKey`] or [`Error::Decrypt`] if the sealed key does
    /// not open under `master`, and [`Error::Malformed`] if its content is not
    /// a P-256 PKCS#8 key.
    pub fn from_sealed_key(sealed: &SealedSecret, master: &MasterKey) -> Result<Self> {
        let pkcs8 = master.open_secret(SEALED_KEY_LABEL, sealed)?;
        let key_pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8).map_err(|_| {
                Error::Malformed {
                    what: "token signing key",
                    reason: "not a P-256 PKCS#8 private key",
                }
            })?;
        Self::from_key_pair(key_pair)
    }

    fn from_key_pair(key_pair: EcdsaKeyPair) -> Result<Self> {
        let point = key_pair.public_key().as_ref();
        // An uncompressed point is 0x04 || x || y.
        let (x, y) = match point.split_first() {
            Some((0x04, coordinates)) if coordinates.len() == 2 * COORDINATE_LEN => {
                coordinates.split_at(COORDINATE_LEN)
            }
            _ => {
                return Err(Error::Provider {
                    operation: "P-256 public key export",
                });
            }
        };
        let x = URL_SAFE_NO_PAD.encode(x);
        let y = URL_SAFE_NO_PAD.encode(y);
        let kid = jwk_thumbprint(&[("crv", "P-256"), ("kty", "EC"), ("x", &x), ("y", &y)]);
        Ok(Self {
            key_pair,
            kid,
            x,
            y,
        })
    }

    /// Returns the key id: the RFC 7638 JWK thumbprint (SHA-256, base64url).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Returns the private key as PKCS#8 DER, the form
    /// `jsonwebtoken::EncodingKey::from_ec_der` expects.
    ///
    /// # Errors
    ///
    /// [`Error::Provider`] if AWS-LC fails to serialize the key.
    pub fn pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>> {
        let document = self
            .key_pair
            .to_pkcs8v1()
            .map_err(Error::provider("PKCS#8 serialization"))?;
        Ok(Zeroizing::new(document.as_ref().to_vec()))
    }

    /// Returns the public key coordinates `(x, y)`, base64url without padding,
    /// as `jsonwebtoken::DecodingKey::from_ec_components` expects.
    pub fn public_key_xy(&self) -> (&str, &str) {
        (&self.x, &self.y)
    }

    /// Returns the public key as a JWK for a JWKS document.
    pub fn public_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": self.x,
            "y": self.y,
            "use": "sig",
            "alg": JWS_ALGORITHM,
            "kid": self.kid,
        })
    }

    /// Seals the private key under the master key for storage.
    ///
    /// # Errors
    ///
    /// [`Error::Provider`] if serialization or encryption fails.
    pub fn sealed_key(&self, master: &MasterKey) -> Result<SealedSecret> {
        master.seal_secret(SEALED_KEY_LABEL, &self.pkcs8_der()?)
    }

    /// Reseals a key sealed by [`SigningKey::sealed_key`] under the active
    /// key of `master`, for a master-key rotation.
    ///
    /// # Errors
    ///
    /// As [`MasterKey::reseal_secret`].
    pub fn reseal_key(sealed: &SealedSecret, master: &MasterKey) -> Result<SealedSecret> {
        master.reseal_secret(SEALED_KEY_LABEL, sealed)
    }

    /// Signs `message` and returns the 64-byte `r || s` form that JWS uses.
    ///
    /// # Errors
    ///
    /// [`Error::Provider`] if signing fails.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let signature = self
            .key_pair
            .sign(&SystemRandom::new(), message)
            .map_err(Error::provider("ECDSA signing"))?;
        Ok(signature.as_ref().to_vec())
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Verifies an ES256 signature (`r || s`, 64 bytes) over `message`.
///
/// `x` and `y` are the public key coordinates in base64url without padding,
/// as in a JWK. Returns false for malformed coordinates, a point not on the
/// curve, or a signature that does not verify.
pub fn verify_es256(x: &str, y: &str, message: &[u8], signature: &[u8]) -> bool {
    let mut point = [0u8; 1 + 2 * COORDINATE_LEN];
    let Some((prefix, coordinates)) = point.split_first_mut() else {
        return false;
    };
    *prefix = 0x04;
    let (x_out, y_out) = coordinates.split_at_mut(COORDINATE_LEN);
    if !decode_coordinate(x, x_out) || !decode_coordinate(y, y_out) {
        return false;
    }
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
        .verify(message, signature)
        .is_ok()
}

/// Decodes one base64url coordinate into `out`, which must be filled exactly.
fn decode_coordinate(encoded: &str, out: &mut [u8]) -> bool {
    // Base64 of 32 bytes is 43 characters; longer input cannot fit.
    if encoded.len() > 44 {
        return false;
    }
    let mut buffer = [0u8; COORDINATE_LEN + 3];
    match URL_SAFE_NO_PAD.decode_slice(encoded.as_bytes(), &mut buffer) {
        Ok(len) if len == out.len() => {
            out.iter_mut()
                .zip(buffer.iter())
                .for_each(|(out, byte)| *out = *byte);
            true
        }
        _ => false,
    }
}

/// Computes an RFC 7638 JWK thumbprint from the required members of a key.
///
/// `members` must be in lexicographic order of their names, as RFC 7638
/// section 3.2 requires for the canonical JSON form.
fn jwk_thumbprint(members: &[(&str, &str)]) -> String {
    let mut canonical = String::from("{");
    for (index, (name, value)) in members.iter().enumerate() {
        if index > 0 {
            canonical.push(',');
        }
        canonical.push_str(&serde_json::Value::from(*name).to_string());
        canonical.push(':');
        canonical.push_str(&serde_json::Value::from(*value).to_string());
    }
    canonical.push('}');
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RSA public key from RFC 7638 section 3.1.
    const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        let thumbprint = jwk_thumbprint(&[("e", "AQAB"), ("kty", "RSA"), ("n", RFC7638_N)]);
        assert_eq!(thumbprint, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn kid_is_thumbprint_of_canonical_ec_jwk() {
        let key = SigningKey::generate().unwrap();
        let (x, y) = key.public_key_xy();
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let expected =
            URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()));
        assert_eq!(key.kid(), expected);
        assert_eq!(key.kid().len(), 43);
    }

    #[test]
    fn public_jwk_has_required_members() {
        let key = SigningKey::generate().unwrap();
        let jwk = key.public_jwk();
        let (x, y) = key.public_key_xy();
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["x"], x);
        assert_eq!(jwk["y"], y);
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], "ES256");
        assert_eq!(jwk["kid"], key.kid());
        assert!(jwk.get("d").is_none());
        assert_eq!(x.len(), 43);
        assert_eq!(y.len(), 43);
    }

    #[test]
    fn signature_verifies_with_public_coordinates() {
        let key = SigningKey::generate().unwrap();
        let (x, y) = key.public_key_xy();
        let signature = key.sign(b"header.payload").unwrap();
        assert_eq!(signature.len(), 64);
        assert!(verify_es256(x, y, b"header.payload", &signature));
    }

    #[test]
    fn verify_rejects_modified_message_signature_or_key() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let (x, y) = key.public_key_xy();
        let (other_x, other_y) = other.public_key_xy();
        let signature = key.sign(b"message").unwrap();

        assert!(!verify_es256(x, y, b"messagE", &signature));
        assert!(!verify_es256(other_x, other_y, b"message", &signature));
        assert!(!verify_es256(x, y, b"message", &signature[..63]));
        assert!(!verify_es256(x, y, b"message", &[]));
        let mut flipped = signature.clone();
        flipped[10] ^= 1;
        assert!(!verify_es256(x, y, b"message", &flipped));
    }

    #[test]
    fn verify_rejects_malformed_coordinates() {
        let key = SigningKey::generate().unwrap();
        let (x, y) = key.public_key_xy();
        let signature = key.sign(b"message").unwrap();
        let long = "A".repeat(10_000);
        for (bad_x, bad_y) in [
            ("", y),
            (x, ""),
            ("!!", y),
            (&long[..], y),
            (&x[..42], y),
            (y, x),
        ] {
            assert!(!verify_es256(bad_x, bad_y, b"message", &signature));
        }
    }

    #[test]
    fn sealed_key_round_trip_keeps_identity() {
        let master = MasterKey::generate().unwrap();
        let key = SigningKey::generate().unwrap();
        let sealed = key.sealed_key(&master).unwrap();

        let loaded = SigningKey::from_sealed_key(&sealed, &master).unwrap();
        assert_eq!(loaded.kid(), key.kid());
        let (x, y) = key.public_key_xy();
        assert!(verify_es256(x, y, b"m", &loaded.sign(b"m").unwrap()));
    }

    #[test]
    fn sealed_key_rejects_other_master_and_ca_label() {
        let master = MasterKey::generate().unwrap();
        let other = MasterKey::generate().unwrap();
        let key = SigningKey::generate().unwrap();
        let sealed = key.sealed_key(&master).unwrap();
        assert!(SigningKey::from_sealed_key(&sealed, &other).is_err());

        let wrong_label = master
            .seal_secret("ward-ca-key", &key.pkcs8_der().unwrap())
            .unwrap();
        assert!(matches!(
            SigningKey::from_sealed_key(&wrong_label, &master),
            Err(Error::Decrypt)
        ));
    }

    #[test]
    fn pkcs8_der_loads_back_into_aws_lc() {
        let key = SigningKey::generate().unwrap();
        let der = key.pkcs8_der().unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).unwrap();
        assert_eq!(
            pair.public_key().as_ref()[1..33],
            URL_SAFE_NO_PAD.decode(key.public_key_xy().0).unwrap()[..]
        );
    }

    #[test]
    fn debug_output_shows_only_kid() {
        let key = SigningKey::generate().unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains(key.kid()));
        assert!(!debug.contains(key.public_key_xy().0));
    }
}
