//! Helpers for tests that enroll devices: a key pair and CSR made the way a
//! device makes them, a posture report, an HTTPS client that presents the
//! device certificate, and enrollment through the device API.

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use super::{Server, parse_body};

/// A device's P-256 key pair and a certificate signing request for it.
pub struct DeviceKey {
    /// The private key, PEM.
    pub key_pem: String,
    /// The CSR, PEM.
    pub csr_pem: String,
}

impl DeviceKey {
    /// Makes a new key pair and its CSR.
    pub fn generate() -> DeviceKey {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate a key");
        let params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let csr = params.serialize_request(&key).expect("CSR");
        DeviceKey {
            key_pem: key.serialize_pem(),
            csr_pem: csr.pem().expect("CSR PEM"),
        }
    }
}

/// A posture report of an Android 14 phone, with or without a screen lock.
pub fn posture(screen_lock: bool) -> Value {
    json!({
        "os": "android", "os_version": "14", "screen_lock": screen_lock,
        "storage_encrypted": true, "rooted": false, "app_version": "0.1.0",
    })
}

/// An HTTPS client trusting the server's CA and presenting `cert_pem`.
pub fn device_client(server: &Server, cert_pem: &str, key: &DeviceKey) -> Client {
    let ca = std::fs::read(server.data_dir().join("ca.pem")).expect("read ca.pem");
    let identity = reqwest::Identity::from_pem(format!("{cert_pem}{}", key.key_pem).as_bytes())
        .expect("device identity");
    Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA"))
        .identity(identity)
        .build()
        .expect("device client")
}

/// POSTs `body` as JSON, with `token` as the bearer token when set.
pub async fn post(
    client: &Client,
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> (StatusCode, Value) {
    let mut request = client.post(url).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("send");
    let status = response.status();
    let bytes = response.bytes().await.expect("body");
    (status, parse_body(&bytes))
}

/// An enrolled device: its id, certificate and key.
pub struct Enrolled {
    /// The device id.
    pub id: String,
    /// The leaf certificate, PEM.
    pub certificate: String,
    /// The device key.
    pub key: DeviceKey,
}

/// Enrolls a compliant device for `user` with a code created by the
/// administrator token `admin`.
pub async fn enroll(server: &Server, admin: &str, user: &str) -> Enrolled {
    let client = server.client();
    let origin = server.origin();
    let (status, code) = post(
        &client,
        &format!("{origin}/device/enrollment-codes"),
        Some(admin),
        &json!({ "user": user }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{code}");
    let key = DeviceKey::generate();
    let (status, enrolled) = post(
        &client,
        &format!("{origin}/device/enroll"),
        None,
        &json!({
            "code": code["code"], "csr": key.csr_pem,
            "name": "Test phone", "posture": posture(true),
        }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    Enrolled {
        id: enrolled["device_id"]
            .as_str()
            .expect("device id")
            .to_owned(),
        certificate: enrolled["certificate"]
            .as_str()
            .expect("certificate")
            .to_owned(),
        key,
    }
}
