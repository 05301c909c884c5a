//! The token signing key used through `jsonwebtoken`, the way the server
//! issues and checks access tokens.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use ward_crypto::{SigningKey, verify_es256};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Claims {
    sub: String,
    exp: u64,
}

fn claims() -> Claims {
    Claims {
        sub: "Practitioner/7".to_owned(),
        exp: 4_102_444_800,
    }
}

fn header(key: &SigningKey) -> Header {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid().to_owned());
    header
}

#[test]
fn jsonwebtoken_round_trip_with_exported_keys() {
    let key = SigningKey::generate().unwrap();
    let encoding = EncodingKey::from_ec_der(&key.pkcs8_der().unwrap());
    let token = jsonwebtoken::encode(&header(&key), &claims(), &encoding).unwrap();

    let (x, y) = key.public_key_xy();
    let decoding = DecodingKey::from_ec_components(x, y).unwrap();
    let decoded =
        jsonwebtoken::decode::<Claims>(&token, &decoding, &Validation::new(Algorithm::ES256))
            .unwrap();
    assert_eq!(decoded.claims, claims());
    assert_eq!(decoded.header.kid.as_deref(), Some(key.kid()));
}

#[test]
fn jsonwebtoken_token_verifies_with_verify_es256() {
    let key = SigningKey::generate().unwrap();
    let encoding = EncodingKey::from_ec_der(&key.pkcs8_der().unwrap());
    let token = jsonwebtoken::encode(&header(&key), &claims(), &encoding).unwrap();

    let (signing_input, signature) = token.rsplit_once('.').unwrap();
    let signature = base64_url_decode(signature);
    let (x, y) = key.public_key_xy();
    assert!(verify_es256(x, y, signing_input.as_bytes(), &signature));
    assert!(!verify_es256(x, y, b"other input", &signature));
}

#[test]
fn sign_output_is_accepted_by_jsonwebtoken() {
    let key = SigningKey::generate().unwrap();
    let header_json = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": key.kid()});
    let signing_input = format!(
        "{}.{}",
        base64_url_encode(header_json.to_string().as_bytes()),
        base64_url_encode(serde_json::to_string(&claims()).unwrap().as_bytes())
    );
    let signature = key.sign(signing_input.as_bytes()).unwrap();
    let token = format!("{signing_input}.{}", base64_url_encode(&signature));

    let (x, y) = key.public_key_xy();
    let decoding = DecodingKey::from_ec_components(x, y).unwrap();
    let decoded =
        jsonwebtoken::decode::<Claims>(&token, &decoding, &Validation::new(Algorithm::ES256))
            .unwrap();
    assert_eq!(decoded.claims, claims());
}

#[test]
fn token_from_other_key_is_rejected() {
    let key = SigningKey::generate().unwrap();
    let other = SigningKey::generate().unwrap();
    let encoding = EncodingKey::from_ec_der(&other.pkcs8_der().unwrap());
    let token = jsonwebtoken::encode(&header(&key), &claims(), &encoding).unwrap();

    let (x, y) = key.public_key_xy();
    let decoding = DecodingKey::from_ec_components(x, y).unwrap();
    let result =
        jsonwebtoken::decode::<Claims>(&token, &decoding, &Validation::new(Algorithm::ES256));
    assert!(result.is_err());
}

fn base64_url_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn base64_url_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}
