//! The JOSE primitives of the envelope: JWS compact with ES256 (RFC 7515)
//! and JWE compact with `alg: ECDH-ES`, `enc: A256GCM` (RFC 7516, RFC 7518
//! section 4.6), built on aws-lc-rs.
//!
//! ECDH-ES here is "direct key agreement": the Concat KDF output is the
//! content encryption key, so the JWE Encrypted Key part is empty.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, ECDH_P256, PrivateKey, UnparsedPublicKey};
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use ward_crypto::{SigningKey, verify_es256};
use zeroize::Zeroizing;

use crate::error::{Error, Rejection};

/// The JWE `enc` value this crate produces and accepts.
pub const ENC_A256GCM: &str = "A256GCM";

/// The JWE `alg` value this crate produces and accepts.
pub const ALG_ECDH_ES: &str = "ECDH-ES";

/// Length of one P-256 coordinate in bytes.
const COORDINATE_LEN: usize = 32;

/// Length of an AES-GCM tag in bytes.
const TAG_LEN: usize = 16;

/// Encodes bytes as base64url without padding.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding.
pub fn unb64(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// Derives a key of `key_len` bytes with the Concat KDF of NIST SP 800-56A
/// as RFC 7518 section 4.6.2 profiles it (SHA-256; AlgorithmID, PartyUInfo
/// and PartyVInfo each prefixed by their 32-bit big-endian length;
/// SuppPubInfo the key length in bits).
pub fn concat_kdf(
    shared_secret: &[u8],
    algorithm_id: &str,
    apu: &[u8],
    apv: &[u8],
    key_len: usize,
) -> Zeroizing<Vec<u8>> {
    let mut other_info = Vec::new();
    for part in [algorithm_id.as_bytes(), apu, apv] {
        other_info.extend_from_slice(&u32_be(part.len()));
        other_info.extend_from_slice(part);
    }
    other_info.extend_from_slice(&u32_be(key_len * 8));

    let mut output = Zeroizing::new(Vec::with_capacity(key_len + 32));
    let mut counter: u32 = 1;
    while output.len() < key_len {
        let mut context = digest::Context::new(&digest::SHA256);
        context.update(&counter.to_be_bytes());
        context.update(shared_secret);
        context.update(&other_info);
        output.extend_from_slice(context.finish().as_ref());
        counter += 1;
    }
    output.truncate(key_len);
    output
}

fn u32_be(value: usize) -> [u8; 4] {
    u32::try_from(value).unwrap_or(u32::MAX).to_be_bytes()
}

/// Returns the uncompressed point `0x04 || x || y` of a P-256 JWK.
pub fn jwk_point(jwk: &Value) -> Option<Vec<u8>> {
    if jwk.get("kty")?.as_str()? != "EC" || jwk.get("crv")?.as_str()? != "P-256" {
        return None;
    }
    let x = unb64(jwk.get("x")?.as_str()?)?;
    let y = unb64(jwk.get("y")?.as_str()?)?;
    if x.len() != COORDINATE_LEN || y.len() != COORDINATE_LEN {
        return None;
    }
    let mut point = Vec::with_capacity(1 + 2 * COORDINATE_LEN);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Some(point)
}

/// Returns the public JWK members of an uncompressed P-256 point.
pub fn point_jwk(point: &[u8]) -> Option<Value> {
    let coordinates = point.strip_prefix(&[0x04])?;
    if coordinates.len() != 2 * COORDINATE_LEN {
        return None;
    }
    let (x, y) = coordinates.split_at(COORDINATE_LEN);
    Some(json!({ "kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y) }))
}

/// Computes the ECDH shared secret of `private` and the peer `point`.
fn agree(private: &PrivateKey, point: &[u8]) -> Result<Zeroizing<Vec<u8>>, Rejection> {
    let peer = UnparsedPublicKey::new(&ECDH_P256, point);
    agreement::agree(private, peer, Rejection::Decrypt, |secret| {
        Ok(Zeroizing::new(secret.to_vec()))
    })
}

/// Encrypts `plaintext` to the P-256 public key `recipient_point` and
/// returns a JWE compact serialization. `kid` names the recipient key.
///
/// # Errors
///
/// [`Error::Crypto`] if key generation, agreement or encryption fails, and
/// [`Error::InvalidKey`] if `recipient_point` is not a P-256 point.
pub fn encrypt(recipient_point: &[u8], kid: &str, plaintext: &[u8]) -> Result<String, Error> {
    let ephemeral =
        PrivateKey::generate(&ECDH_P256).map_err(|_| Error::Crypto("ephemeral key generation"))?;
    let epk_point = ephemeral
        .compute_public_key()
        .map_err(|_| Error::Crypto("ephemeral public key"))?;
    let epk = point_jwk(epk_point.as_ref()).ok_or(Error::Crypto("ephemeral public key"))?;
    let header = json!({
        "alg": ALG_ECDH_ES,
        "enc": ENC_A256GCM,
        "kid": kid,
        "cty": "JWT",
        "epk": epk,
    });
    let header_b64 = b64(header.to_string());

    let secret = agree(&ephemeral, recipient_point)
        .map_err(|_| Error::InvalidKey("the recipient encryption key is not a P-256 point"))?;
    let cek = concat_kdf(&secret, ENC_A256GCM, b"", b"", 32);
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &cek).map_err(|_| Error::Crypto("AES-256-GCM key"))?,
    );
    let mut iv = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut iv)
        .map_err(|_| Error::Crypto("random IV"))?;
    let mut buffer = plaintext.to_vec();
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(header_b64.as_bytes()),
            &mut buffer,
        )
        .map_err(|_| Error::Crypto("AES-256-GCM encryption"))?;
    Ok(format!(
        "{header_b64}..{}.{}.{}",
        b64(iv),
        b64(&buffer),
        b64(tag.as_ref())
    ))
}

/// Decrypts a JWE compact serialization made by [`encrypt`] with the
/// recipient's private key. Only `alg: ECDH-ES` with `enc: A256GCM` and an
/// empty Encrypted Key part is accepted.
///
/// # Errors
///
/// [`Rejection::Malformed`] for a serialization or header that is not of
/// that form, [`Rejection::Decrypt`] when the agreement or the
/// authenticated decryption fails (wrong key, altered ciphertext).
pub fn decrypt(private: &PrivateKey, compact: &str) -> Result<Zeroizing<Vec<u8>>, Rejection> {
    let parts: Vec<&str> = compact.trim().split('.').collect();
    let [header_b64, encrypted_key, iv, ciphertext, tag] = parts[..] else {
        return Err(Rejection::Malformed(
            "a JWE compact serialization has 5 parts",
        ));
    };
    let header: Value = unb64(header_b64)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(Rejection::Malformed("the JWE header is not base64url JSON"))?;
    if header.get("alg").and_then(Value::as_str) != Some(ALG_ECDH_ES)
        || header.get("enc").and_then(Value::as_str) != Some(ENC_A256GCM)
    {
        return Err(Rejection::Malformed(
            "the JWE header must have alg ECDH-ES and enc A256GCM",
        ));
    }
    if header.get("crit").is_some() || !encrypted_key.is_empty() {
        return Err(Rejection::Malformed(
            "ECDH-ES direct agreement has no crit members and an empty encrypted key",
        ));
    }
    let epk = header
        .get("epk")
        .and_then(jwk_point)
        .ok_or(Rejection::Malformed(
            "the JWE epk is not a P-256 public JWK",
        ))?;
    let apu = optional_b64(&header, "apu")?;
    let apv = optional_b64(&header, "apv")?;
    let iv: [u8; NONCE_LEN] = unb64(iv)
        .and_then(|iv| iv.try_into().ok())
        .ok_or(Rejection::Malformed("the JWE IV must be 96 bits"))?;
    let tag = unb64(tag)
        .filter(|tag| tag.len() == TAG_LEN)
        .ok_or(Rejection::Malformed("the JWE tag must be 128 bits"))?;
    let mut buffer =
        unb64(ciphertext).ok_or(Rejection::Malformed("the JWE ciphertext is not base64url"))?;

    let secret = agree(private, &epk)?;
    let cek = concat_kdf(&secret, ENC_A256GCM, &apu, &apv, 32);
    let key =
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &cek).map_err(|_| Rejection::Decrypt)?);
    buffer.extend_from_slice(&tag);
    let plaintext = key
        .open_in_place(
            Nonce::assume_unique_for_key(iv),
            Aad::from(header_b64.as_bytes()),
            &mut buffer,
        )
        .map_err(|_| Rejection::Decrypt)?;
    let plaintext = Zeroizing::new(plaintext.to_vec());
    zeroize::Zeroize::zeroize(&mut buffer);
    Ok(plaintext)
}

fn optional_b64(header: &Value, name: &'static str) -> Result<Vec<u8>, Rejection> {
    match header.get(name) {
        None => Ok(Vec::new()),
        Some(value) => value
            .as_str()
            .and_then(unb64)
            .ok_or(Rejection::Malformed("the JWE apu or apv is not base64url")),
    }
}

/// Signs `claims` with ES256 and returns a JWS compact serialization whose
/// header names the key (`kid`) and the type `typ`.
///
/// # Errors
///
/// [`Error::Crypto`] if signing fails.
pub fn sign(key: &SigningKey, typ: &str, claims: &Value) -> Result<String, Error> {
    let header = json!({ "alg": "ES256", "kid": key.kid(), "typ": typ });
    let signing_input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let signature = key
        .sign(signing_input.as_bytes())
        .map_err(|_| Error::Crypto("ES256 signing"))?;
    Ok(format!("{signing_input}.{}", b64(signature)))
}

/// A JWS compact serialization split into its parts, not yet verified.
#[derive(Debug)]
pub struct UnverifiedJws {
    /// The protected header.
    pub header: Value,
    /// The payload, parsed as JSON.
    pub claims: Value,
    signing_input: String,
    signature: Vec<u8>,
}

impl UnverifiedJws {
    /// Splits and decodes a JWS compact serialization with `alg: ES256`.
    ///
    /// # Errors
    ///
    /// [`Rejection::Malformed`] when it is not of that form.
    pub fn parse(compact: &str) -> Result<Self, Rejection> {
        let parts: Vec<&str> = compact.trim().split('.').collect();
        let [header_b64, payload_b64, signature] = parts[..] else {
            return Err(Rejection::Malformed(
                "a JWS compact serialization has 3 parts",
            ));
        };
        let header: Value = unb64(header_b64)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(Rejection::Malformed("the JWS header is not base64url JSON"))?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256")
            || header.get("crit").is_some()
        {
            return Err(Rejection::Malformed(
                "the JWS header must have alg ES256 and no crit members",
            ));
        }
        let claims: Value = unb64(payload_b64)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .filter(Value::is_object)
            .ok_or(Rejection::Malformed("the JWS payload is not a JSON object"))?;
        let signature =
            unb64(signature).ok_or(Rejection::Malformed("the JWS signature is not base64url"))?;
        Ok(Self {
            header,
            claims,
            signing_input: format!("{header_b64}.{payload_b64}"),
            signature,
        })
    }

    /// Returns the `kid` of the header.
    pub fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }

    /// Verifies the signature with the public key `jwk`.
    ///
    /// # Errors
    ///
    /// [`Rejection::BadSignature`] when the signature does not verify or
    /// the JWK is not a P-256 key.
    pub fn verify(&self, jwk: &Value) -> Result<(), Rejection> {
        let x = jwk.get("x").and_then(Value::as_str).unwrap_or_default();
        let y = jwk.get("y").and_then(Value::as_str).unwrap_or_default();
        if verify_es256(x, y, self.signing_input.as_bytes(), &self.signature) {
            Ok(())
        } else {
            Err(Rejection::BadSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::encoding::{AsBigEndian as _, EcPrivateKeyBin};

    use super::*;

    /// The shared secret Z of RFC 7518 Appendix C.
    const RFC7518_Z: [u8; 32] = [
        158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49, 110,
        163, 218, 128, 106, 72, 246, 218, 167, 121, 140, 254, 144, 196,
    ];

    #[test]
    fn concat_kdf_matches_rfc7518_appendix_c() {
        let key = concat_kdf(&RFC7518_Z, "A128GCM", b"Alice", b"Bob", 16);
        assert_eq!(b64(&*key), "VqqN6vgjbSBcIijNcacQGg");
    }

    #[test]
    fn ecdh_matches_rfc7518_appendix_c() {
        let bob = PrivateKey::from_private_key(
            &ECDH_P256,
            &unb64("VEmDZpDXXK8p8N0Cndsxs924q6nS1RXFASRl6BfUqdw").unwrap(),
        )
        .unwrap();
        let alice_epk = json!({
            "kty": "EC",
            "crv": "P-256",
            "x": "gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0",
            "y": "SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps",
        });
        let secret = agree(&bob, &jwk_point(&alice_epk).unwrap()).unwrap();
        assert_eq!(&secret[..], &RFC7518_Z[..]);
    }

    #[test]
    fn concat_kdf_derives_more_than_one_block() {
        let long = concat_kdf(&RFC7518_Z, "A256GCM", b"", b"", 48);
        let short = concat_kdf(&RFC7518_Z, "A256GCM", b"", b"", 32);
        assert_eq!(long.len(), 48);
        assert_ne!(&long[..32], &short[..]);
    }

    fn recipient() -> (PrivateKey, Vec<u8>) {
        let private = PrivateKey::generate(&ECDH_P256).unwrap();
        let point = private.compute_public_key().unwrap().as_ref().to_vec();
        (private, point)
    }

    #[test]
    fn jwe_round_trip() {
        let (private, point) = recipient();
        let compact = encrypt(&point, "k1", b"hello bundle").unwrap();
        assert_eq!(compact.split('.').count(), 5);
        assert_eq!(compact.split('.').nth(1), Some(""));
        let plaintext = decrypt(&private, &compact).unwrap();
        assert_eq!(&plaintext[..], b"hello bundle");
    }

    #[test]
    fn jwe_rejects_other_recipient() {
        let (_, point) = recipient();
        let (other, _) = recipient();
        let compact = encrypt(&point, "k1", b"secret").unwrap();
        assert!(matches!(decrypt(&other, &compact), Err(Rejection::Decrypt)));
    }

    #[test]
    fn jwe_rejects_altered_parts() {
        let (private, point) = recipient();
        let compact = encrypt(&point, "k1", b"a message long enough").unwrap();
        let parts: Vec<&str> = compact.split('.').collect();
        for index in [0, 2, 3, 4] {
            let mut altered: Vec<String> = parts.iter().map(|p| (*p).to_owned()).collect();
            let mut bytes = unb64(&altered[index]).unwrap();
            bytes[0] ^= 1;
            altered[index] = b64(bytes);
            let result = decrypt(&private, &altered.join("."));
            assert!(result.is_err(), "part {index} altered but accepted");
        }
    }

    #[test]
    fn jwe_rejects_other_algorithms() {
        let (private, _) = recipient();
        let header = b64(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#);
        let compact = format!("{header}..AAAAAAAAAAAAAAAA.AA.AAAAAAAAAAAAAAAAAAAAAA");
        assert!(matches!(
            decrypt(&private, &compact),
            Err(Rejection::Malformed(_))
        ));
        assert!(matches!(
            decrypt(&private, "a.b.c"),
            Err(Rejection::Malformed(_))
        ));
    }

    #[test]
    fn private_key_bytes_round_trip() {
        let (private, point) = recipient();
        let bytes: EcPrivateKeyBin = private.as_be_bytes().unwrap();
        let loaded = PrivateKey::from_private_key(&ECDH_P256, bytes.as_ref()).unwrap();
        assert_eq!(loaded.compute_public_key().unwrap().as_ref(), &point[..]);
    }

    #[test]
    fn jws_round_trip_and_tamper() {
        let key = SigningKey::generate().unwrap();
        let claims = json!({ "jti": "m1", "n": 1 });
        let compact = sign(&key, "test", &claims).unwrap();
        let parsed = UnverifiedJws::parse(&compact).unwrap();
        assert_eq!(parsed.kid(), Some(key.kid()));
        assert_eq!(parsed.claims, claims);
        parsed.verify(&key.public_jwk()).unwrap();

        let other = SigningKey::generate().unwrap();
        assert!(matches!(
            parsed.verify(&other.public_jwk()),
            Err(Rejection::BadSignature)
        ));

        let parts: Vec<&str> = compact.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], b64(r#"{"jti":"m2","n":1}"#), parts[2]);
        let forged = UnverifiedJws::parse(&forged).unwrap();
        assert!(matches!(
            forged.verify(&key.public_jwk()),
            Err(Rejection::BadSignature)
        ));
    }
}
