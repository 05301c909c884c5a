//! Tokens bound to a TLS client certificate (RFC 8705) and to a DPoP key
//! (RFC 9449), over real HTTPS against `ward serve`: issuance at the token
//! endpoint, use on FHIR requests, refresh, and one check per rejection.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Client, StatusCode, Url};
use serde_json::{Value, json};
use time::OffsetDateTime;
use ward_auth::oauth::CodeChallenge;
use ward_auth::totp::{self, TotpSecret};
use ward_crypto::{CertificateAuthority, MasterKey, SealedSecret};

use common::{Server, header, ward};

const VERIFIER: &str = "kM2x9vQpL7rT4sW1yZ8bN3cF6hJ0dG5aE2uI9oP4lKqX";
const REDIRECT: &str = "http://127.0.0.1:7001/callback";
const CLIENT_ID: &str = "bound-app";
const PASSWORD: &str = "violet-otter-harbor-42";
const SCOPE: &str = "launch/patient patient/Patient.rs offline_access";

/// A patient user who signs in with password and TOTP.
struct User {
    name: String,
    secret: String,
    last_step: Option<u64>,
}

impl User {
    fn next_code(&mut self) -> String {
        let secret = TotpSecret::from_base32(&self.secret).expect("valid secret");
        loop {
            let now = OffsetDateTime::now_utc();
            let current = totp::step_at(now).expect("step");
            let step = self
                .last_step
                .map_or(current, |last| (last + 1).max(current));
            if step <= current + 1 {
                self.last_step = Some(step);
                let at =
                    OffsetDateTime::from_unix_timestamp(i64::try_from(step * 30).expect("time"))
                        .expect("time");
                return totp::code_at(&secret, at).expect("code");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// A running server with a public client, a patient and that patient's user.
struct Setup {
    server: Server,
    user: User,
    patient: String,
}

async fn setup() -> Setup {
    let server = Server::start();
    let admin = server.token("system/*.cruds");
    let (status, _, body) = server
        .post_json(
            "Patient",
            &admin,
            &json!({"resourceType": "Patient", "name": [{"family": "Okafor"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let patient = body["id"].as_str().expect("id").to_owned();
    ward(
        &server,
        &[
            "client",
            "add",
            "--id",
            CLIENT_ID,
            "--redirect-uri",
            REDIRECT,
        ],
        None,
    );
    let fhir_user = format!("Patient/{patient}");
    let output = ward(
        &server,
        &[
            "user",
            "add",
            "--username",
            "dana",
            "--role",
            "patient",
            "--password-stdin",
            "--fhir-user",
            &fhir_user,
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    let secret = output
        .lines()
        .find_map(|l| l.strip_prefix("TOTP secret: "))
        .expect("the secret is printed")
        .to_owned();
    Setup {
        server,
        user: User {
            name: "dana".to_owned(),
            secret,
            last_step: None,
        },
        patient,
    }
}

/// Loads the organization CA from the server's data directory.
fn organization_ca(server: &Server) -> CertificateAuthority {
    let data = server.data_dir();
    let master = MasterKey::load(&data.join("master.key")).expect("master key");
    let sealed = std::fs::read_to_string(data.join("ca.key.sealed")).expect("sealed CA key");
    let sealed = SealedSecret::parse(sealed.trim()).expect("sealed CA key parses");
    let pem = std::fs::read_to_string(data.join("ca.pem")).expect("ca.pem");
    CertificateAuthority::from_pem_and_sealed_key(&pem, &sealed, &master).expect("CA loads")
}

/// A client certificate and its key, PEM.
struct ClientCert {
    cert_pem: String,
    key_pem: String,
}

impl ClientCert {
    /// Issues a client certificate from the organization CA; with `device`,
    /// a device certificate naming `urn:ward:device:{device}`.
    fn issue(ca: &CertificateAuthority, name: &str, device: Option<&str>) -> ClientCert {
        let key = rcgen::KeyPair::generate().expect("key");
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .expect("CSR")
            .pem()
            .expect("CSR PEM");
        let validity = time::Duration::hours(1);
        let cert_pem = match device {
            Some(id) => {
                ca.issue_device_certificate(&csr, id, &format!("urn:ward:device:{id}"), validity)
                    .expect("device certificate")
                    .cert_pem
            }
            None => ca
                .issue_client_certificate(&csr, name, validity)
                .expect("client certificate"),
        };
        ClientCert {
            cert_pem,
            key_pem: key.serialize_pem(),
        }
    }

    /// Issues a certificate from a CA the server does not trust.
    fn foreign() -> ClientCert {
        let ca = CertificateAuthority::create("Other organization").expect("CA");
        ClientCert::issue(&ca, "outsider", None)
    }

    /// Returns the RFC 8705 thumbprint of the certificate.
    fn thumbprint(&self) -> String {
        ward_server::tls::x5t_s256_pem(self.cert_pem.as_bytes()).expect("thumbprint")
    }
}

/// Builds an HTTPS client that trusts the server's CA and presents `cert`
/// if given.
fn https_client(server: &Server, cert: Option<&ClientCert>) -> Client {
    let pem = std::fs::read(server.data_dir().join("ca.pem")).expect("ca.pem");
    let mut builder = Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA"))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60));
    if let Some(cert) = cert {
        let identity = format!("{}{}", cert.cert_pem, cert.key_pem);
        builder =
            builder.identity(reqwest::Identity::from_pem(identity.as_bytes()).expect("identity"));
    }
    builder.build().expect("client")
}

/// Signs in through the authorization pages and returns a code.
async fn authorization_code(server: &Server, user: &mut User) -> String {
    let http = https_client(server, None);
    let origin = server.origin();
    let challenge = CodeChallenge::from_verifier(VERIFIER)
        .expect("verifier")
        .as_str()
        .to_owned();
    let aud = server.base();
    let params = [
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT),
        ("scope", SCOPE),
        ("state", "st-1"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("aud", aud.as_str()),
    ];
    let mut cookies: HashMap<String, String> = HashMap::new();
    let mut send = async |request: reqwest::RequestBuilder| {
        let jar: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let request = if jar.is_empty() {
            request
        } else {
            request.header(COOKIE, jar.join("; "))
        };
        let response = request.send().await.expect("send");
        for value in response.headers().get_all(SET_COOKIE) {
            let pair = value
                .to_str()
                .expect("cookie")
                .split(';')
                .next()
                .expect("pair");
            let (name, value) = pair.split_once('=').expect("name=value");
            cookies.insert(name.to_owned(), value.to_owned());
        }
        let location = response
            .headers()
            .get(LOCATION)
            .map(|v| v.to_str().expect("ASCII").to_owned());
        (location, response.text().await.expect("body"))
    };
    let field = |body: &str, name: &str| -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = body.find(&marker).expect("form field") + marker.len();
        let end = body[start..].find('"').expect("closing quote");
        body[start..start + end].to_owned()
    };

    let (_, login) = send(http.get(format!("{origin}/oauth/authorize")).query(&params)).await;
    let csrf = field(&login, "csrf");
    let (_, mfa) = send(http.post(format!("{origin}/oauth/login")).form(&[
        ("csrf", csrf.as_str()),
        ("username", user.name.as_str()),
        ("password", PASSWORD),
    ]))
    .await;
    let csrf = field(&mfa, "csrf");
    let code = user.next_code();
    let (_, consent) = send(
        http.post(format!("{origin}/oauth/mfa"))
            .form(&[("csrf", csrf.as_str()), ("code", code.as_str())]),
    )
    .await;
    let csrf = field(&consent, "csrf");
    let (location, body) = send(
        http.post(format!("{origin}/oauth/consent"))
            .form(&[("csrf", csrf.as_str()), ("decision", "approve")]),
    )
    .await;
    let location = location.unwrap_or_else(|| panic!("no redirect after consent: {body}"));
    Url::parse(&location)
        .expect("absolute Location")
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("a code")
}

/// Sends a token request; returns status, headers and JSON body.
async fn token_request(
    server: &Server,
    client: &Client,
    form: &[(&str, &str)],
    dpop: Option<&str>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = client
        .post(format!("{}/oauth/token", server.origin()))
        .form(form);
    if let Some(proof) = dpop {
        request = request.header("DPoP", proof);
    }
    let response = request.send().await.expect("token request");
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.json().await.expect("JSON body"))
}

fn code_form(code: &str) -> Vec<(&str, &str)> {
    vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("client_id", CLIENT_ID),
        ("code_verifier", VERIFIER),
    ]
}

fn refresh_form(token: &str) -> Vec<(&str, &str)> {
    vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", token),
        ("client_id", CLIENT_ID),
    ]
}

fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

/// GETs `path` (under the origin) with `authorization` and optional DPoP
/// proof.
async fn get(
    server: &Server,
    client: &Client,
    path: &str,
    authorization: &str,
    dpop: Option<&str>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = client
        .get(format!("{}{path}", server.origin()))
        .header("Authorization", authorization);
    if let Some(proof) = dpop {
        request = request.header("DPoP", proof);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    (status, headers, common::parse_body(&bytes))
}

/// Returns the diagnostics of an OperationOutcome, for assertion messages.
fn diagnostics(body: &Value) -> String {
    body["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn certificate_bound_token_needs_its_certificate() {
    let Setup {
        server,
        mut user,
        patient,
    } = setup().await;
    let ca = organization_ca(&server);
    let cert = ClientCert::issue(&ca, "bound-app-client", None);
    let other = ClientCert::issue(&ca, "other-client", None);
    let mtls = https_client(&server, Some(&cert));
    let other_mtls = https_client(&server, Some(&other));
    let plain = https_client(&server, None);

    let (_, _, config) = get(
        &server,
        &plain,
        "/.well-known/smart-configuration",
        "",
        None,
    )
    .await;
    assert_eq!(config["tls_client_certificate_bound_access_tokens"], true);

    let code = authorization_code(&server, &mut user).await;
    let (status, _, body) = token_request(&server, &mtls, &code_form(&code), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    let access = body["access_token"].as_str().expect("access token");
    let refresh = body["refresh_token"].as_str().expect("refresh token");
    let claims = jwt_claims(access);
    assert_eq!(claims["cnf"]["x5t#S256"], json!(cert.thumbprint()));
    assert!(claims.get("device").is_none(), "{claims}");

    let path = format!("/fhir/Patient/{patient}");
    let bearer = format!("Bearer {access}");
    let (status, _, read) = get(&server, &mtls, &path, &bearer, None).await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read["name"][0]["family"], "Okafor");

    let (status, headers, body) = get(&server, &plain, &path, &bearer, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        header(&headers, "www-authenticate").contains("invalid_token"),
        "{headers:?}"
    );
    assert!(
        diagnostics(&body).contains("bound to a client certificate"),
        "{body}"
    );

    let (status, _, body) = get(&server, &other_mtls, &path, &bearer, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // An unbound token still works as Bearer, with or without a certificate.
    let unbound = format!("Bearer {}", server.token("system/*.cruds"));
    let (status, _, body) = get(&server, &plain, &path, &unbound, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = get(&server, &mtls, &path, &unbound, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The refresh token is bound to the certificate too. The failed
    // attempts do not spend it.
    let (status, _, body) = token_request(&server, &plain, &refresh_form(refresh), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    let (status, _, body) = token_request(&server, &other_mtls, &refresh_form(refresh), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    let (status, _, body) = token_request(&server, &mtls, &refresh_form(refresh), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let renewed = body["access_token"].as_str().expect("access token");
    assert_eq!(
        jwt_claims(renewed)["cnf"]["x5t#S256"],
        json!(cert.thumbprint())
    );
}

#[tokio::test]
async fn unenrolled_device_gets_no_token() {
    let Setup {
        server, mut user, ..
    } = setup().await;
    let ca = organization_ca(&server);
    // A certificate from the organization CA that names a device the
    // registry does not know (never enrolled, or its record removed).
    let cert = ClientCert::issue(&ca, "", Some("3f2a9c1e"));
    let mtls = https_client(&server, Some(&cert));

    let code = authorization_code(&server, &mut user).await;
    let (status, _, body) = token_request(&server, &mtls, &code_form(&code), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(description.contains("3f2a9c1e"), "{body}");
}

/// Adds a patient user for `patient` with the shared test password.
fn add_patient_user(server: &Server, name: &str, patient: &str) -> User {
    let fhir_user = format!("Patient/{patient}");
    let output = ward(
        server,
        &[
            "user",
            "add",
            "--username",
            name,
            "--role",
            "patient",
            "--password-stdin",
            "--fhir-user",
            &fhir_user,
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    let secret = output
        .lines()
        .find_map(|l| l.strip_prefix("TOTP secret: "))
        .expect("the secret is printed")
        .to_owned();
    User {
        name: name.to_owned(),
        secret,
        last_step: None,
    }
}

/// Reads every audit record from the server's store, beside the server.
fn audit_records(server: &Server) -> Vec<ward_audit::AuditRecord> {
    let (keys, _) = ward_server::setup::DataDir::new(server.data_dir())
        .open_or_init("test")
        .expect("open the data directory");
    let database = match server.database() {
        Some(database) => ward_store::Database::Postgres(database.url()),
        None => ward_store::Database::Sqlite(server.data_dir().join("ward.db")),
    };
    let store = ward_store::open(&database, &keys.master).expect("open the store");
    store
        .audit_rows(0, 100_000)
        .expect("audit rows")
        .iter()
        .map(|row| {
            ward_audit::ChainEntry::from_canonical(&row.canonical)
                .expect("entry")
                .record
        })
        .collect()
}

/// Returns whether a record names `device` on an agent or in its details.
fn names_device(record: &ward_audit::AuditRecord, device: &str) -> bool {
    let on_agent = record
        .agents
        .iter()
        .any(|agent| agent.device_id.as_deref() == Some(device));
    on_agent || record.detail.get("device").map(String::as_str) == Some(device)
}

#[tokio::test(flavor = "multi_thread")]
async fn device_tokens_only_for_enrolled_user() {
    let Setup {
        server,
        mut user,
        patient,
    } = setup().await;
    let mut other = add_patient_user(&server, "eli", &patient);
    let device = common::device::enroll(&server, &server.token("admin"), "dana").await;
    let cert = ClientCert {
        cert_pem: device.certificate.clone(),
        key_pem: device.key.key_pem.clone(),
    };
    let mtls = https_client(&server, Some(&cert));

    let code = authorization_code(&server, &mut other).await;
    let (status, _, body) = token_request(&server, &mtls, &code_form(&code), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant", "{body}");
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(description.contains("another user"), "{body}");

    let code = authorization_code(&server, &mut user).await;
    let (status, _, body) = token_request(&server, &mtls, &code_form(&code), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access = body["access_token"].as_str().expect("access token");
    assert_eq!(jwt_claims(access)["device"], json!(device.id));
    assert_eq!(
        jwt_claims(access)["cnf"]["x5t#S256"],
        json!(cert.thumbprint())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_device_token_request_audited() {
    let Setup {
        server, mut user, ..
    } = setup().await;
    let admin = server.token("admin");
    let device = common::device::enroll(&server, &admin, "dana").await;
    let revoke = server
        .client()
        .post(format!(
            "{}/admin/devices/{}/revoke",
            server.origin(),
            device.id
        ))
        .bearer_auth(&admin)
        .json(&json!({"reason": "stolen"}))
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoke.status(), StatusCode::OK);
    let cert = ClientCert {
        cert_pem: device.certificate.clone(),
        key_pem: device.key.key_pem.clone(),
    };
    let mtls = https_client(&server, Some(&cert));

    let code = authorization_code(&server, &mut user).await;
    let (status, _, body) = token_request(&server, &mtls, &code_form(&code), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant", "{body}");

    let records = tokio::task::block_in_place(|| audit_records(&server));
    let detail = |record: &ward_audit::AuditRecord, key: &str| {
        record.detail.get(key).cloned().unwrap_or_default()
    };
    let rejected = records
        .iter()
        .find(|r| detail(r, "event") == "tokenrejected")
        .expect("a tokenrejected record");
    assert!(names_device(rejected, &device.id), "{rejected:?}");
    let device_event = records
        .iter()
        .find(|r| detail(r, "event") == "revoked_device_rejected")
        .expect("a revoked_device_rejected record");
    assert!(names_device(device_event, &device.id), "{device_event:?}");
    let alert = records
        .iter()
        .find(|r| detail(r, "alert") == "revoked_device")
        .expect("a revoked_device alert");
    assert_eq!(detail(alert, "device"), device.id, "{alert:?}");
}

#[tokio::test]
async fn foreign_certificate_fails_handshake() {
    let server = Server::start();
    let outsider = https_client(&server, Some(&ClientCert::foreign()));
    let result = outsider
        .get(format!("{}/healthz", server.origin()))
        .send()
        .await;
    assert!(result.is_err(), "a foreign client certificate was accepted");

    let plain = https_client(&server, None);
    let response = plain
        .get(format!("{}/healthz", server.origin()))
        .send()
        .await
        .expect("a connection without a certificate succeeds");
    assert_eq!(response.status(), StatusCode::OK);
}

/// A DPoP key held by a client.
struct DpopKey {
    pair: EcdsaKeyPair,
}

static JTI: AtomicU64 = AtomicU64::new(0);

/// What a proof claims; each field can be set wrong on purpose.
struct ProofClaims<'a> {
    method: &'a str,
    uri: String,
    access_token: Option<&'a str>,
    nonce: Option<&'a str>,
    iat: i64,
    jti: Option<String>,
}

impl DpopKey {
    fn new() -> DpopKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("key");
        DpopKey {
            pair: EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                pkcs8.as_ref(),
            )
            .expect("key"),
        }
    }

    fn jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    fn thumbprint(&self) -> String {
        ward_auth::dpop::jwk_thumbprint(self.jwk().as_object().expect("object")).expect("jkt")
    }

    fn proof(&self, claims: &ProofClaims<'_>) -> String {
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()});
        let jti = claims.jti.clone().unwrap_or_else(|| {
            format!(
                "jti-{}-{}",
                std::process::id(),
                JTI.fetch_add(1, Ordering::Relaxed)
            )
        });
        let mut body = json!({
            "jti": jti,
            "htm": claims.method,
            "htu": claims.uri,
            "iat": claims.iat,
        });
        if let Some(token) = claims.access_token {
            body["ath"] = json!(ward_auth::dpop::sha256_base64url(token.as_bytes()));
        }
        if let Some(nonce) = claims.nonce {
            body["nonce"] = json!(nonce);
        }
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(body.to_string())
        );
        let signature = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("sign");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test]
async fn dpop_bound_token_needs_valid_proof() {
    let Setup {
        server,
        mut user,
        patient,
    } = setup().await;
    let client = https_client(&server, None);
    let key = DpopKey::new();
    let token_uri = format!("{}/oauth/token", server.origin());

    let (_, _, config) = get(
        &server,
        &client,
        "/.well-known/smart-configuration",
        "",
        None,
    )
    .await;
    assert_eq!(
        config["dpop_signing_alg_values_supported"],
        json!(["ES256", "EdDSA"])
    );

    // The token endpoint demands a nonce first.
    let code = authorization_code(&server, &mut user).await;
    let token_claims = || ProofClaims {
        method: "POST",
        uri: token_uri.clone(),
        access_token: None,
        nonce: None,
        iat: now(),
        jti: None,
    };
    let proof = key.proof(&token_claims());
    let (status, headers, body) =
        token_request(&server, &client, &code_form(&code), Some(&proof)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "use_dpop_nonce");
    let nonce = header(&headers, "dpop-nonce").to_owned();
    assert!(!nonce.is_empty(), "{headers:?}");

    // The code was not spent by the rejected attempt.
    let proof = key.proof(&ProofClaims {
        nonce: Some(&nonce),
        ..token_claims()
    });
    let (status, _, body) = token_request(&server, &client, &code_form(&code), Some(&proof)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    let access = body["access_token"]
        .as_str()
        .expect("access token")
        .to_owned();
    let refresh = body["refresh_token"].as_str().expect("refresh").to_owned();
    assert_eq!(jwt_claims(&access)["cnf"]["jkt"], json!(key.thumbprint()));

    let path = format!("/fhir/Patient/{patient}");
    let uri = format!("{}{path}", server.origin());
    let dpop_auth = format!("DPoP {access}");
    let good = || ProofClaims {
        method: "GET",
        uri: uri.clone(),
        access_token: Some(&access),
        nonce: Some(&nonce),
        iat: now(),
        jti: None,
    };

    let proof = key.proof(&good());
    let (status, _, read) = get(&server, &client, &path, &dpop_auth, Some(&proof)).await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read["name"][0]["family"], "Okafor");

    // A query string is not part of htu.
    let proof = key.proof(&good());
    let (status, _, body) = get(
        &server,
        &client,
        &format!("{path}?_format=json"),
        &dpop_auth,
        Some(&proof),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A replayed proof is rejected.
    let (status, headers, body) = get(&server, &client, &path, &dpop_auth, Some(&proof)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let challenge = header(&headers, "www-authenticate");
    assert!(challenge.starts_with("DPoP "), "{challenge}");
    assert!(
        challenge.contains("error=\"invalid_dpop_proof\""),
        "{challenge}"
    );

    let (status, _, body) = get(&server, &client, &path, &dpop_auth, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "missing proof: {body}");

    let other_key = DpopKey::new();
    let wrong_proofs = [
        (
            "another URI",
            key.proof(&ProofClaims {
                uri: format!("{}/fhir/Patient", server.origin()),
                ..good()
            }),
        ),
        (
            "another method",
            key.proof(&ProofClaims {
                method: "DELETE",
                ..good()
            }),
        ),
        (
            "another access token",
            key.proof(&ProofClaims {
                access_token: Some("not-the-token"),
                ..good()
            }),
        ),
        (
            "a stale iat",
            key.proof(&ProofClaims {
                iat: now() - 600,
                ..good()
            }),
        ),
        ("another key", other_key.proof(&good())),
    ];
    for (what, proof) in wrong_proofs {
        let (status, headers, body) = get(&server, &client, &path, &dpop_auth, Some(&proof)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert!(
            header(&headers, "www-authenticate").starts_with("DPoP "),
            "{what}: {headers:?}"
        );
    }

    // A proof without the nonce gets a 401 with a fresh nonce.
    let proof = key.proof(&ProofClaims {
        nonce: None,
        ..good()
    });
    let (status, headers, body) = get(&server, &client, &path, &dpop_auth, Some(&proof)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        header(&headers, "www-authenticate").contains("error=\"use_dpop_nonce\""),
        "{headers:?}"
    );
    let fresh = header(&headers, "dpop-nonce").to_owned();
    assert!(!fresh.is_empty(), "{headers:?}");
    let proof = key.proof(&ProofClaims {
        nonce: Some(&fresh),
        ..good()
    });
    let (status, _, body) = get(&server, &client, &path, &dpop_auth, Some(&proof)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The bound token does not work as a Bearer token.
    let (status, _, body) = get(&server, &client, &path, &format!("Bearer {access}"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // An unbound token is not accepted under the DPoP scheme.
    let unbound = server.token("system/*.cruds");
    let proof = key.proof(&ProofClaims {
        access_token: Some(&unbound),
        ..good()
    });
    let (status, _, body) = get(
        &server,
        &client,
        &path,
        &format!("DPoP {unbound}"),
        Some(&proof),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // The public client's refresh token is bound to the key.
    let proof = other_key.proof(&ProofClaims {
        nonce: Some(&nonce),
        ..token_claims()
    });
    let (status, _, body) =
        token_request(&server, &client, &refresh_form(&refresh), Some(&proof)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    let (status, _, body) = token_request(&server, &client, &refresh_form(&refresh), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    let proof = key.proof(&ProofClaims {
        nonce: Some(&nonce),
        ..token_claims()
    });
    let (status, _, body) =
        token_request(&server, &client, &refresh_form(&refresh), Some(&proof)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "DPoP");
}
