//! Device trust over HTTPS: enrollment codes, enrollment, certificate
//! renewal, check-in and wipe confirmation for devices, the device admin
//! API, and the per-request device gate.
//!
//! The records, codes, policy and report come from `ward-device`; this
//! module speaks HTTP, issues certificates from the organization CA and
//! writes the audit records. Device endpoints that need a client
//! certificate read the [`ClientCertificate`] the TLS acceptor adds; the
//! certificate names the device (URI SAN `urn:ward:device:{id}`) and must
//! be the one the registry last issued to it.

mod admin;
pub(crate) mod events;
pub mod gate;
mod routes;

use std::sync::Arc;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderValue, StatusCode, header};
use serde_json::Value;
use time::Duration;
use ward_crypto::CertificateAuthority;
use ward_device::PosturePolicy;

use crate::AppState;
use crate::error::FhirError;

pub use events::DeviceEvent;

/// Default device certificate lifetime.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::days(30);

/// Largest JSON body a device endpoint accepts.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The device endpoints' CA, policy and settings.
pub struct DeviceService {
    /// The organization CA that issues device certificates.
    pub ca: Arc<CertificateAuthority>,
    /// The posture policy.
    pub policy: PosturePolicy,
    /// The lifetime of issued device certificates.
    pub cert_lifetime: Duration,
    /// The server origin, such as `https://127.0.0.1:8443`, for enrollment
    /// URLs.
    pub origin: String,
}

impl DeviceService {
    /// Creates the service with the default certificate lifetime.
    pub fn new(ca: Arc<CertificateAuthority>, policy: PosturePolicy, origin: &str) -> Self {
        Self {
            ca,
            policy,
            cert_lifetime: DEFAULT_CERT_LIFETIME,
            origin: origin.trim_end_matches('/').to_owned(),
        }
    }
}

/// Builds the device routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/device/enrollment-codes", post(routes::create_code))
        .route(
            "/device/enroll",
            post(routes::enroll).get(routes::enroll_page),
        )
        .route("/device/renew", post(routes::renew))
        .route("/device/checkin", post(routes::checkin))
        .route("/device/wipe-confirm", post(routes::wipe_confirm))
        .route("/admin/devices", get(admin::list))
        .route("/admin/devices/{id}", get(admin::show))
        .route("/admin/devices/{id}/revoke", post(admin::revoke))
        .route("/admin/devices/{id}/wipe", post(admin::wipe))
        .route("/admin/devices/{id}/report", get(admin::report))
}

/// Returns the device service, or 404 when the server runs without one.
fn service(state: &AppState) -> Result<Arc<DeviceService>, FhirError> {
    state
        .devices
        .clone()
        .ok_or_else(|| FhirError::not_found("this server does not enroll devices"))
}

/// A JSON response that is never cached.
fn json(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Maps a registry error to a response; store failures become a logged
/// 500 with a generic text.
fn device_error(error: ward_device::DeviceError) -> FhirError {
    use ward_device::DeviceError as E;
    match error {
        E::NotFound(_) => FhirError::not_found(error.to_string()),
        E::InvalidId(_) => FhirError::not_found("no device has this id"),
        E::InvalidPosture(_) | E::Invalid(_) => FhirError::bad_request(error.to_string()),
        E::UnknownCode | E::ExpiredCode => FhirError::bad_request(error.to_string()),
        E::Revoked(_) => FhirError::unauthorized("invalid_token", &error.to_string()),
        E::AlreadyRevoked { .. } => FhirError::new(
            StatusCode::CONFLICT,
            ward_fhir::IssueType::Conflict,
            error.to_string(),
        ),
        other => FhirError::internal(&other),
    }
}

/// Runs blocking store work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, FhirError> + Send + 'static,
) -> Result<T, FhirError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| FhirError::internal(&e))?
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`].
async fn read_json<T: serde::de::DeserializeOwned>(body: axum::body::Body) -> Result<T, FhirError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            FhirError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ward_fhir::IssueType::TooLong,
                "the body is larger than 64 KiB",
            )
        })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        FhirError::bad_request(format!("the body is not valid JSON for this endpoint: {e}"))
    })
}
