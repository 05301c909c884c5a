//! The device admin API for security administrators: list, show, revoke,
//! wipe and the lost-device report.

use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use ward_device::DeviceId;
use ward_device::registry::{self, RevokeReason};

use super::events::{self, DeviceEvent};
use super::routes::{bearer, is_admin};
use super::{blocking, device_error, json, read_json, service};

/// Reads a JSON body that may be empty, as `{}`.
async fn read_optional_json<T: serde::de::DeserializeOwned>(
    body: axum::body::Body,
) -> Result<T, FhirError> {
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map_err(|_| FhirError::bad_request("the body is larger than 64 KiB"))?;
    let text = if bytes.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        &bytes[..]
    };
    serde_json::from_slice(text).map_err(|e| {
        FhirError::bad_request(format!("the body is not valid JSON for this endpoint: {e}"))
    })
}
use crate::AppState;
use crate::audit::{Actor, Peer};
use crate::error::FhirError;

#[derive(Deserialize)]
struct RevokeRequest {
    reason: String,
}

/// The body of a wipe request, with an optional reason.
#[derive(Deserialize)]
struct WipeRequest {
    #[serde(default)]
    reason: Option<String>,
}

/// Query parameters of the report.
#[derive(Deserialize)]
pub struct ReportQuery {
    /// `json` (the default) or `text`.
    #[serde(default)]
    format: Option<String>,
}

/// Authenticates a security administrator.
async fn admin(
    state: &AppState,
    request: Request,
    peer: Peer,
) -> Result<(Actor, Request), FhirError> {
    let (parts, body) = request.into_parts();
    let principal = bearer(state, &parts, peer).await?;
    if !is_admin(&principal) {
        let reason = "managing devices needs the security_admin role";
        let actor = Actor::from_principal(&principal, peer.0);
        let record = state.engine.auditor.denial(
            &actor,
            ward_audit::record::Subtype::UseOfRestrictedFunction,
            ward_audit::record::Action::Execute,
            reason,
            None,
            &[],
        );
        state.engine.auditor.commit(record).await?;
        return Err(FhirError::forbidden(reason));
    }
    let actor = Actor::from_principal(&principal, peer.0);
    Ok((actor, Request::from_parts(parts, body)))
}

fn parse_id(id: &str) -> Result<DeviceId, FhirError> {
    DeviceId::parse(id).map_err(|_| FhirError::not_found("no device has this id"))
}

fn respond(result: Result<Response, FhirError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /admin/devices`: every device with its status and compliance.
pub async fn list(State(state): State<AppState>, peer: Peer, request: Request) -> Response {
    respond(list_inner(state, peer, request).await)
}

async fn list_inner(state: AppState, peer: Peer, request: Request) -> Result<Response, FhirError> {
    let devices = service(&state)?;
    admin(&state, request, peer).await?;
    let store = state.engine.store.clone();
    let summaries = blocking(move || {
        let now = OffsetDateTime::now_utc();
        let all = registry::list(store.as_ref()).map_err(device_error)?;
        Ok(all
            .iter()
            .map(|device| device.summary(&devices.policy, now))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(json(StatusCode::OK, &json!({ "devices": summaries })))
}

/// `GET /admin/devices/{id}`: one device.
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    peer: Peer,
    request: Request,
) -> Response {
    respond(show_inner(state, id, peer, request).await)
}

async fn show_inner(
    state: AppState,
    id: String,
    peer: Peer,
    request: Request,
) -> Result<Response, FhirError> {
    let devices = service(&state)?;
    admin(&state, request, peer).await?;
    let id = parse_id(&id)?;
    let store = state.engine.store.clone();
    let summary = blocking(move || {
        let device = registry::require(store.as_ref(), &id).map_err(device_error)?;
        Ok(device.summary(&devices.policy, OffsetDateTime::now_utc()))
    })
    .await?;
    Ok(json(StatusCode::OK, &json!(summary)))
}

/// `POST /admin/devices/{id}/revoke` with `{"reason": ...}`: revokes the
/// device and requests its wipe. Its tokens are rejected from the next
/// request on.
pub async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
    peer: Peer,
    request: Request,
) -> Response {
    respond(change(state, id, peer, request, true).await)
}

/// `POST /admin/devices/{id}/wipe` with an optional `{"reason": ...}`:
/// requests a wipe at the device's next check-in; this revokes an active
/// device too. A revoked device has a wipe requested already, so both
/// routes return 409 Conflict for it and change nothing.
pub async fn wipe(
    State(state): State<AppState>,
    Path(id): Path<String>,
    peer: Peer,
    request: Request,
) -> Response {
    respond(change(state, id, peer, request, false).await)
}

async fn change(
    state: AppState,
    id: String,
    peer: Peer,
    request: Request,
    revoke: bool,
) -> Result<Response, FhirError> {
    let devices = service(&state)?;
    let (actor, request) = admin(&state, request, peer).await?;
    let id = parse_id(&id)?;
    let reason = if revoke {
        let body: RevokeRequest = read_json(request.into_body()).await?;
        Some(RevokeReason::parse(&body.reason).map_err(device_error)?)
    } else {
        let body: WipeRequest = read_optional_json(request.into_body()).await?;
        body.reason
            .map(|reason| RevokeReason::parse(&reason).map_err(device_error))
            .transpose()?
    };
    let store = state.engine.store.clone();
    let by = actor.user_id.clone();
    let revoked = blocking(move || {
        let now = OffsetDateTime::now_utc();
        Ok(registry::revoke(store.as_ref(), &id, reason, &by, now))
    })
    .await?;
    // A second revoke or wipe changes nothing. The attempt is recorded as
    // a failed change, so the log shows who tried.
    let device = match revoked {
        Ok(device) => device,
        Err(error @ ward_device::DeviceError::AlreadyRevoked { .. }) => {
            let record = state.engine.auditor.denial(
                &actor,
                ward_audit::record::Subtype::UseOfRestrictedFunction,
                ward_audit::record::Action::Update,
                "the device was already revoked",
                None,
                &[],
            );
            state.engine.auditor.commit(record).await?;
            return Err(device_error(error));
        }
        Err(error) => return Err(device_error(error)),
    };
    let mut event_actor = actor.clone();
    event_actor.device_id = Some(device.id().to_string());
    let event = if revoke {
        DeviceEvent::Revoked
    } else {
        DeviceEvent::WipeRequested
    };
    let mut details = vec![("owner", device.record.user_id.clone())];
    if let Some(reason) = reason {
        details.push(("reason", reason.as_str().to_owned()));
    }
    events::record(&state, event, &event_actor, &details).await?;
    let summary = device.summary(&devices.policy, OffsetDateTime::now_utc());
    Ok(json(StatusCode::OK, &json!(summary)))
}

/// `GET /admin/devices/{id}/report[?format=text]`: the lost-device report.
pub async fn report(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<ReportQuery>,
    peer: Peer,
    request: Request,
) -> Response {
    respond(report_inner(state, id, query, peer, request).await)
}

async fn report_inner(
    state: AppState,
    id: String,
    query: ReportQuery,
    peer: Peer,
    request: Request,
) -> Result<Response, FhirError> {
    let devices = service(&state)?;
    let (actor, _) = admin(&state, request, peer).await?;
    let id = parse_id(&id)?;
    let text = match query.format.as_deref() {
        None | Some("json") => false,
        Some("text") => true,
        Some(_) => return Err(FhirError::bad_request("format must be json or text")),
    };
    let store = state.engine.store.clone();
    let report = blocking(move || {
        let now = OffsetDateTime::now_utc();
        ward_device::report::build(store.as_ref(), &id, &devices.policy, now).map_err(device_error)
    })
    .await?;
    let mut record = state.engine.auditor.record(
        ward_audit::record::EventType::AuditLogUsed,
        ward_audit::record::Action::Read,
        ward_audit::record::Outcome::Success,
    );
    record.agents.push(actor.agent());
    record.detail.insert(
        "request".to_owned(),
        format!("device report {}", report.device_id),
    );
    state.engine.auditor.commit(record).await?;
    if text {
        let mut response = (StatusCode::OK, report.to_text()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return Ok(response);
    }
    Ok(json(StatusCode::OK, &json!(report)))
}
