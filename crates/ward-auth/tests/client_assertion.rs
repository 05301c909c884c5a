//! `private_key_jwt` assertions signed with real keys.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::datetime;
use ward_auth::oauth::assertion::{ASSERTION_TYPE, AssertionError, validate_client_assertion};
use ward_auth::oauth::{Client, ClientKind, TokenEndpointAuthMethod};
use ward_crypto::SigningKey;

const NOW: OffsetDateTime = datetime!(2025-03-01 08:00 UTC);
const ENDPOINT: &str = "https://ward.example.org/auth/token";
const CLIENT_ID: &str = "lab-feed";

struct Fixture {
    key: SigningKey,
    client: Client,
}

fn fixture() -> Fixture {
    let key = SigningKey::generate().unwrap();
    let jwks: JwkSet = serde_json::from_value(json!({ "keys": [key.public_jwk()] })).unwrap();
    let client = Client {
        client_id: CLIENT_ID.into(),
        kind: ClientKind::Confidential,
        auth_method: TokenEndpointAuthMethod::PrivateKeyJwt,
        redirect_uris: Vec::new(),
        allowed_scope: "system/Observation.cruds".into(),
        jwks: Some(jwks),
        secret_digest: None,
    };
    client.validate().unwrap();
    Fixture { key, client }
}

fn claims() -> Value {
    json!({
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "aud": ENDPOINT,
        "exp": NOW.unix_timestamp() + 240,
        "iat": NOW.unix_timestamp(),
        "jti": "c3f1a2b4-0001",
    })
}

fn sign(fixture: &Fixture, claims: &Value, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_owned);
    let der = fixture.key.pkcs8_der().unwrap();
    let key = EncodingKey::from_ec_der(&der);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn check(fixture: &Fixture, jwt: &str) -> Result<ward_auth::oauth::ReplayEntry, AssertionError> {
    validate_client_assertion(ASSERTION_TYPE, jwt, &fixture.client, ENDPOINT, NOW)
}

#[test]
fn valid_assertion_returns_replay_entry() {
    let f = fixture();
    let kid = f.key.kid().to_owned();
    let entry = check(&f, &sign(&f, &claims(), Some(&kid))).unwrap();
    assert_eq!(entry.jti, "c3f1a2b4-0001");
    assert_eq!(entry.client_id, CLIENT_ID);
    assert_eq!(
        entry.expires_at.unix_timestamp(),
        NOW.unix_timestamp() + 240
    );
    // Without a kid every registered key is tried.
    assert!(check(&f, &sign(&f, &claims(), None)).is_ok());
}

#[test]
fn audience_may_be_an_array() {
    let f = fixture();
    let mut c = claims();
    c["aud"] = json!(["https://other.example", ENDPOINT]);
    assert!(check(&f, &sign(&f, &c, None)).is_ok());
}

#[test]
fn claim_violations_are_rejected() {
    let f = fixture();
    let now = NOW.unix_timestamp();
    let cases: [(&str, Value, AssertionError); 9] = [
        ("iss", json!("someone-else"), AssertionError::WrongIssuer),
        ("sub", json!("someone-else"), AssertionError::WrongSubject),
        (
            "aud",
            json!("https://ward.example.org/other"),
            AssertionError::WrongAudience,
        ),
        ("aud", Value::Null, AssertionError::WrongAudience),
        ("exp", json!(now - 1), AssertionError::Expired),
        ("exp", json!(now + 301), AssertionError::LifetimeTooLong),
        ("nbf", json!(now + 120), AssertionError::NotYetValid),
        ("jti", json!(""), AssertionError::InvalidJti),
        ("jti", Value::Null, AssertionError::InvalidJti),
    ];
    for (claim, value, expected) in cases {
        let mut c = claims();
        c[claim] = value;
        assert_eq!(check(&f, &sign(&f, &c, None)), Err(expected), "{claim}");
    }
}

#[test]
fn exp_exactly_five_minutes_is_accepted() {
    let f = fixture();
    let mut c = claims();
    c["exp"] = json!(NOW.unix_timestamp() + 300);
    assert!(check(&f, &sign(&f, &c, None)).is_ok());
}

#[test]
fn other_key_is_rejected() {
    let f = fixture();
    let stranger = Fixture {
        key: SigningKey::generate().unwrap(),
        client: f.client.clone(),
    };
    let jwt = sign(&stranger, &claims(), None);
    assert_eq!(check(&f, &jwt), Err(AssertionError::BadSignature));
    let jwt = sign(&stranger, &claims(), Some("unknown-kid"));
    assert_eq!(check(&f, &jwt), Err(AssertionError::NoMatchingKey));
}

#[test]
fn symmetric_algorithm_is_rejected() {
    let f = fixture();
    let jwt = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(b"shared"),
    )
    .unwrap();
    assert_eq!(check(&f, &jwt), Err(AssertionError::UnsupportedAlgorithm));
}

#[test]
fn unsigned_and_garbage_are_rejected() {
    let f = fixture();
    // alg "none" with an empty signature.
    let unsigned = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJsYWItZmVlZCJ9.";
    assert_eq!(check(&f, unsigned), Err(AssertionError::Malformed));
    assert_eq!(check(&f, "not a jwt"), Err(AssertionError::Malformed));
    assert_eq!(
        check(&f, &"a".repeat(20_000)),
        Err(AssertionError::Malformed)
    );
}

#[test]
fn tampered_signature_is_rejected() {
    let f = fixture();
    let jwt = sign(&f, &claims(), None);
    let (body, signature) = jwt.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{body}.{flipped}{}", &signature[1..]);
    assert_eq!(check(&f, &tampered), Err(AssertionError::BadSignature));
}

#[test]
fn wrong_type_and_client_are_rejected() {
    let f = fixture();
    let jwt = sign(&f, &claims(), None);
    assert_eq!(
        validate_client_assertion("urn:other", &jwt, &f.client, ENDPOINT, NOW),
        Err(AssertionError::WrongAssertionType)
    );
    let mut secret_client = f.client.clone();
    secret_client.auth_method = TokenEndpointAuthMethod::ClientSecretBasic;
    assert_eq!(
        validate_client_assertion(ASSERTION_TYPE, &jwt, &secret_client, ENDPOINT, NOW),
        Err(AssertionError::NotJwtClient)
    );
}
