//! Certificate renewal over real HTTPS: a device proves possession of its
//! current certificate and gets a new one for a new key, under the same
//! device id; from then on only the new certificate is the device's.

mod common;

use common::device::{DeviceKey, device_client, enroll, post, posture};
use common::{Server, ward};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn renewal_replaces_device_certificate() {
    let server = Server::start();
    ward(
        &server,
        &["user", "add", "--username", "carol", "--role", "physician"],
        None,
    );
    let admin = server.token("admin");
    let device = enroll(&server, &admin, "carol").await;
    let origin = server.origin().to_owned();
    let old = device_client(&server, &device.certificate, &device.key);

    // Renewal needs the current certificate.
    let fresh = DeviceKey::generate();
    let (status, _) = post(
        &server.client(),
        &format!("{origin}/device/renew"),
        None,
        &json!({ "csr": fresh.csr_pem }),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "renewal without a certificate"
    );

    let (status, renewed) = post(
        &old,
        &format!("{origin}/device/renew"),
        None,
        &json!({ "csr": fresh.csr_pem }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    assert_eq!(renewed["device_id"], device.id.as_str());
    let certificate = renewed["certificate"].as_str().expect("a certificate");
    assert_ne!(certificate, device.certificate);
    assert!(renewed["not_after"].is_string(), "{renewed}");

    let new = device_client(&server, certificate, &fresh);
    let checkin = format!("{origin}/device/checkin");
    let (status, body) = post(&new, &checkin, None, &json!({ "posture": posture(true) })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["device_id"], device.id.as_str());
    assert_eq!(body["status"], "active");

    // The replaced certificate no longer speaks for the device.
    let (status, body) = post(&old, &checkin, None, &json!({ "posture": posture(true) })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}
