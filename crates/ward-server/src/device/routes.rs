//! The device endpoints: enrollment codes (bearer token), enrollment (the
//! code authenticates), and renewal, check-in and wipe confirmation (the
//! device's client certificate authenticates).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use ward_device::registry::{self, Enrollment};
use ward_device::{CertificateInfo, Device, DeviceId, Posture};
use zeroize::Zeroizing;

use super::events::{self, DeviceEvent};
use super::{DeviceService, blocking, device_error, json, read_json, service};
use crate::AppState;
use crate::audit::Peer;
use crate::auth::{Principal, authenticate};
use crate::error::FhirError;
use crate::oauth::identity;
use crate::tls::ClientCertificate;

/// The `security_admin` role name.
const SECURITY_ADMIN: &str = "security_admin";

#[derive(Deserialize)]
struct CodeRequest {
    user: String,
    #[serde(default)]
    ttl_seconds: Option<i64>,
}

#[derive(Deserialize)]
struct EnrollRequest {
    code: Zeroizing<String>,
    csr: String,
    name: String,
    posture: Posture,
}

#[derive(Deserialize)]
struct RenewRequest {
    csr: String,
}

#[derive(Deserialize)]
struct CheckinRequest {
    posture: Posture,
}

#[derive(Deserialize)]
struct WipeConfirmRequest {
    wiped_at: String,
}

/// True for a security administrator, or a system token (no user role, no
/// OAuth client) with the `admin` scope, as `ward token --scope admin`
/// mints.
pub(super) fn is_admin(principal: &Principal) -> bool {
    match principal.role.as_deref() {
        Some(role) => role == SECURITY_ADMIN,
        None => principal.client_id.is_none() && principal.scopes.raw.iter().any(|s| s == "admin"),
    }
}

/// Authenticates a bearer token and applies the revocation and device
/// checks every request gets.
pub(super) async fn bearer(
    state: &AppState,
    parts: &http::request::Parts,
    peer: Peer,
) -> Result<Principal, FhirError> {
    let principal = authenticate(&parts.headers, &state.verifier)?;
    crate::oauth::check_principal(state, &principal).await?;
    super::gate::check(state, &principal, peer.0).await?;
    Ok(principal)
}

/// `POST /device/enrollment-codes`: creates a one-time enrollment code for
/// a user. Administrators may create codes for anyone; other users only for
/// themselves.
pub async fn create_code(State(state): State<AppState>, peer: Peer, request: Request) -> Response {
    match create_code_inner(state, peer, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn create_code_inner(
    state: AppState,
    peer: Peer,
    request: Request,
) -> Result<Response, FhirError> {
    let devices = service(&state)?;
    let (parts, body) = request.into_parts();
    let principal = bearer(&state, &parts, peer).await?;
    let body: CodeRequest = read_json(body).await?;
    let ttl = ward_device::code_ttl(body.ttl_seconds).map_err(device_error)?;
    let admin = is_admin(&principal);
    let store = state.engine.store.clone();
    let creator = principal.subject.clone();
    let (new, user_id) = blocking(move || {
        let user = identity::find_user(store.as_ref(), &body.user)
            .map_err(|e| FhirError::internal(&e))?;
        let user = match user {
            Some(user) if admin || user.id == creator => user,
            _ if !admin => {
                return Err(FhirError::forbidden(
                    "a user may create enrollment codes only for themselves; ask a security administrator",
                ));
            }
            _ => return Err(FhirError::not_found("no user has this name")),
        };
        if user.disabled {
            return Err(FhirError::bad_request(
                "the user is disabled; enable the account before enrolling a device",
            ));
        }
        let now = OffsetDateTime::now_utc();
        let new = ward_device::create_code(store.as_ref(), &user.id, &user.username, &creator, ttl, now)
            .map_err(device_error)?;
        Ok((new, user.id.clone()))
    })
    .await?;
    let mut actor = crate::audit::Actor::from_principal(&principal, peer.0);
    actor.device_id = None;
    events::record(
        &state,
        DeviceEvent::CodeCreated,
        &actor,
        &[
            ("for_user", user_id),
            ("expires_at", format_time(new.record.expires_at)),
        ],
    )
    .await?;
    let url = ward_device::enrollment_url(&devices.origin, new.code.as_str());
    Ok(json(
        StatusCode::CREATED,
        &json!({
            "code": new.code.as_str(),
            "url": url,
            "expires_at": format_time(new.record.expires_at),
        }),
    ))
}

/// The page `GET /device/enroll` returns, for an enrollment URL opened in
/// a browser.
const ENROLL_PAGE: &str = "<!doctype html>
<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Device enrollment</title></head>
<body><h1>Device enrollment</h1>
<p>This link enrolls a device. Open it in the Ward mobile app on the device to enroll, \
or enter the enrollment code there. A browser cannot enroll a device.</p>
</body></html>
";

/// `GET /device/enroll`: a page telling the user to open the enrollment
/// URL in the app. The code travels in the URL fragment, which the browser
/// does not send, so the server never receives or logs it.
pub async fn enroll_page() -> Response {
    let mut response = (StatusCode::OK, ENROLL_PAGE).into_response();
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

/// `POST /device/enroll`: redeems a code, issues the device certificate
/// for the CSR's key and registers the device.
pub async fn enroll(State(state): State<AppState>, peer: Peer, request: Request) -> Response {
    match enroll_inner(state, peer, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn enroll_inner(
    state: AppState,
    peer: Peer,
    request: Request,
) -> Result<Response, FhirError> {
    let devices = service(&state)?;
    let body: EnrollRequest = read_json(request.into_body()).await?;
    registry::check_name(&body.name).map_err(device_error)?;
    body.posture.validate().map_err(device_error)?;
    let store = state.engine.store.clone();
    let service = devices.clone();
    let result = blocking(move || {
        let now = OffsetDateTime::now_utc();
        let code = match ward_device::redeem_code(store.as_ref(), &body.code, now) {
            Ok(code) => code,
            Err(error) => return Ok(Err(error.to_string())),
        };
        let id = DeviceId::generate();
        let issued = match service.ca.issue_device_certificate(
            &body.csr,
            id.as_str(),
            &id.uri(),
            service.cert_lifetime,
        ) {
            Ok(issued) => issued,
            Err(error) => {
                // The code was taken before the CSR was checked; a
                // rejected CSR must not use it up.
                ward_device::restore_code(store.as_ref(), &code).map_err(device_error)?;
                return Err(FhirError::bad_request(error.to_string()));
            }
        };
        let certificate = CertificateInfo {
            serial: issued.serial.clone(),
            thumbprint: ward_device::thumbprint(issued.cert_der.as_ref()),
            not_after: issued.not_after,
        };
        let enrollment = Enrollment {
            id,
            code: &code,
            name: &body.name,
            posture: body.posture,
            certificate,
        };
        let device = registry::enroll(store.as_ref(), enrollment, &service.policy, now)
            .map_err(device_error)?;
        Ok(Ok((device, issued.cert_pem)))
    })
    .await?;
    let (device, cert_pem) = match result {
        Ok(done) => done,
        Err(reason) => {
            let actor = events::actor("anonymous", None, peer.0);
            events::record(
                &state,
                DeviceEvent::EnrollRejected,
                &actor,
                &[("reason", reason.clone())],
            )
            .await?;
            return Err(FhirError::bad_request(reason));
        }
    };
    let actor = events::actor(&device.record.user_id, Some(device.id().as_str()), peer.0);
    let compliance = &device.record.compliance;
    events::record(
        &state,
        DeviceEvent::Enrolled,
        &actor,
        &[("compliant", compliance.compliant.to_string())],
    )
    .await?;
    Ok(json(
        StatusCode::CREATED,
        &json!({
            "device_id": device.id(),
            "certificate": cert_pem,
            "ca": devices.ca.to_pem(),
            "not_after": format_time(device.record.certificate.not_after),
            "compliance": compliance,
        }),
    ))
}

/// Returns the device that presented `certificate`: the device the
/// certificate names, whose current certificate it is. A revoked device
/// passes only when `allow_revoked` is set (check-in and wipe
/// confirmation). A revoked or unknown device is audited and raises the
/// `revoked_device` alert, as in the device gate.
async fn certificate_device(
    state: &AppState,
    certificate: Option<&ClientCertificate>,
    allow_revoked: bool,
    network: Option<IpAddr>,
) -> Result<Device, FhirError> {
    let unauthorized = |why: &str| FhirError::unauthorized("invalid_client", why);
    let Some(certificate) = certificate else {
        return Err(unauthorized(
            "this endpoint needs the device's client certificate (mutual TLS)",
        ));
    };
    let id = certificate
        .device_id()
        .and_then(|id| DeviceId::parse(&id).ok())
        .ok_or_else(|| unauthorized("the client certificate names no device"))?;
    let store = state.engine.store.clone();
    let lookup = id.clone();
    let device =
        blocking(move || registry::load(store.as_ref(), &lookup).map_err(device_error)).await?;
    let Some(device) = device else {
        let actor = events::actor("anonymous", None, network);
        let reason = format!("device {id} is unknown");
        super::gate::record_revoked(state, &actor, id.as_str(), &reason).await?;
        return Err(unauthorized(
            "the client certificate names an unknown device",
        ));
    };
    let current = ward_crypto::constant_time_eq(
        device.record.certificate.thumbprint.as_bytes(),
        certificate.x5t_s256.as_bytes(),
    );
    if !current {
        return Err(unauthorized(
            "the client certificate is not the device's current certificate",
        ));
    }
    if device.record.certificate.not_after <= OffsetDateTime::now_utc() {
        return Err(unauthorized(
            "the device certificate expired; enroll again with a new code",
        ));
    }
    if device.revocation.is_some() && !allow_revoked {
        let reason = format!("device {id} is revoked");
        let actor = events::actor(&device.record.user_id, None, network);
        super::gate::record_revoked(state, &actor, id.as_str(), &reason).await?;
        return Err(FhirError::unauthorized("invalid_token", &reason));
    }
    Ok(device)
}

/// `POST /device/renew`: issues a new certificate for the same device id
/// to a device that presents its current, unexpired certificate.
pub async fn renew(State(state): State<AppState>, peer: Peer, request: Request) -> Response {
    match renew_inner(state, peer, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn renew_inner(state: AppState, peer: Peer, request: Request) -> Result<Response, FhirError> {
    let devices = service(&state)?;
    let (parts, body) = request.into_parts();
    let device = certificate_device(
        &state,
        parts.extensions.get::<ClientCertificate>(),
        false,
        peer.0,
    )
    .await?;
    let body: RenewRequest = read_json(body).await?;
    let issued = devices
        .ca
        .issue_device_certificate(
            &body.csr,
            device.id().as_str(),
            &device.id().uri(),
            devices.cert_lifetime,
        )
        .map_err(|e| FhirError::bad_request(e.to_string()))?;
    let certificate = CertificateInfo {
        serial: issued.serial.clone(),
        thumbprint: ward_device::thumbprint(issued.cert_der.as_ref()),
        not_after: issued.not_after,
    };
    let store = state.engine.store.clone();
    let id = device.id().clone();
    blocking(move || registry::renew(store.as_ref(), &id, certificate).map_err(device_error))
        .await?;
    let actor = events::actor(&device.record.user_id, Some(device.id().as_str()), peer.0);
    events::record(
        &state,
        DeviceEvent::Renewed,
        &actor,
        &[("serial", issued.serial.clone())],
    )
    .await?;
    Ok(json(
        StatusCode::OK,
        &json!({
            "device_id": device.id(),
            "certificate": issued.cert_pem,
            "ca": devices.ca.to_pem(),
            "not_after": format_time(issued.not_after),
        }),
    ))
}

/// `POST /device/checkin`: records the device's posture and returns its
/// status, compliance and whether to wipe itself.
pub async fn checkin(State(state): State<AppState>, peer: Peer, request: Request) -> Response {
    match checkin_inner(state, peer, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn checkin_inner(
    state: AppState,
    peer: Peer,
    request: Request,
) -> Result<Response, FhirError> {
    let devices = service(&state)?;
    let (parts, body) = request.into_parts();
    let device = certificate_device(
        &state,
        parts.extensions.get::<ClientCertificate>(),
        true,
        peer.0,
    )
    .await?;
    let body: CheckinRequest = read_json(body).await?;
    body.posture.validate().map_err(device_error)?;
    let store = state.engine.store.clone();
    let id = device.id().clone();
    let service: Arc<DeviceService> = devices.clone();
    let (device, changed) = blocking(move || {
        let now = OffsetDateTime::now_utc();
        registry::checkin(store.as_ref(), &id, body.posture, &service.policy, now)
            .map_err(device_error)
    })
    .await?;
    let compliance = device.record.compliance.clone();
    if changed {
        let rules: Vec<&str> = compliance
            .failures
            .iter()
            .map(|f| f.rule.as_str())
            .collect();
        let actor = events::actor(&device.record.user_id, Some(device.id().as_str()), peer.0);
        events::record(
            &state,
            DeviceEvent::ComplianceChanged,
            &actor,
            &[
                ("compliant", compliance.compliant.to_string()),
                ("failed_rules", rules.join(",")),
            ],
        )
        .await?;
    }
    Ok(json(
        StatusCode::OK,
        &json!({
            "device_id": device.id(),
            "status": device.status(),
            "compliance": compliance,
            "wipe": device.wipe_requested(),
            "certificate_not_after": format_time(device.record.certificate.not_after),
        }),
    ))
}

/// `POST /device/wipe-confirm`: records that the device erased its data,
/// at the server's time; the device's `wiped_at` is kept only when
/// plausible (see [`registry::confirm_wipe`]).
pub async fn wipe_confirm(State(state): State<AppState>, peer: Peer, request: Request) -> Response {
    match wipe_confirm_inner(state, peer, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn wipe_confirm_inner(
    state: AppState,
    peer: Peer,
    request: Request,
) -> Result<Response, FhirError> {
    service(&state)?;
    let (parts, body) = request.into_parts();
    let device = certificate_device(
        &state,
        parts.extensions.get::<ClientCertificate>(),
        true,
        peer.0,
    )
    .await?;
    let body: WipeConfirmRequest = read_json(body).await?;
    let wiped_at = OffsetDateTime::parse(&body.wiped_at, &Rfc3339).map_err(|_| {
        FhirError::bad_request("wiped_at must be an RFC 3339 time such as 2026-03-01T10:00:00Z")
    })?;
    let store = state.engine.store.clone();
    let id = device.id().clone();
    let device = blocking(move || {
        let now = OffsetDateTime::now_utc();
        registry::confirm_wipe(store.as_ref(), &id, wiped_at, now).map_err(device_error)
    })
    .await?;
    let actor = events::actor(&device.record.user_id, Some(device.id().as_str()), peer.0);
    let mut details = vec![("claimed_wiped_at", format_time(wiped_at))];
    if let Some(confirmation) = &device.wipe {
        details.push(("confirmed_at", format_time(confirmation.confirmed_at)));
        let kept = confirmation.wiped_at.is_some();
        details.push(("claim_accepted", kept.to_string()));
        if !kept {
            tracing::warn!(
                target: "ward::device",
                device = %device.id(),
                claimed = %format_time(wiped_at),
                "the wipe time the device reported is implausible; only the server's time was kept"
            );
        }
    }
    events::record(&state, DeviceEvent::WipeConfirmed, &actor, &details).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Formats a time as RFC 3339.
pub(super) fn format_time(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}
