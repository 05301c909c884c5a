//! `POST /fhir/$send-message?recipient=ORG_ID`: a clinician queues a
//! message Bundle for a trusted organization. The message is stored
//! `queued` in the outbox before the 202 response, whose `Content-Location`
//! is the status URL `/exchange/outbox/ID`, readable by the sender only.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use ward_audit::record::Outcome;
use ward_exchange::outbox::{self, OutboxMessage};
use ward_exchange::{message, trust};
use ward_fhir::IssueType;

use super::{audit_exchange, controlled, now_secs};
use crate::AppState;
use crate::audit::{Actor, Peer};
use crate::auth::{self, Principal, RequestAuth};
use crate::error::FhirError;
use crate::fhir::response::json_response;
use crate::scopes::Permission;

/// The roles that may send messages to other organizations.
const SENDER_ROLES: &[&str] = &["physician", "nurse", "lab_technician"];

/// The query of `$send-message`.
#[derive(Debug, Deserialize)]
pub(super) struct SendQuery {
    recipient: Option<String>,
}

/// Checks that the caller is a clinician allowed to send messages. A token
/// bound to a device certificate or DPoP key is accepted with its proof of
/// possession, so a mobile device sends over its mutual TLS connection.
async fn authorize(state: &AppState, request: &RequestAuth<'_>) -> Result<Principal, FhirError> {
    let principal = auth::authenticate_request(request, &state.verifier)?;
    crate::oauth::check_principal(state, &principal).await?;
    let role = principal.role.as_deref().unwrap_or_default();
    if !SENDER_ROLES.contains(&role) {
        return Err(FhirError::forbidden(
            "sending messages to other organizations needs a physician, nurse or lab_technician token",
        ));
    }
    principal.require("Bundle", Permission::Create)?;
    Ok(principal)
}

/// Queues a message.
pub(super) async fn send_message(
    State(state): State<AppState>,
    Peer(network): Peer,
    Query(query): Query<SendQuery>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Response {
    let request = RequestAuth::from_parts(&parts);
    match queue(&state, network, query, &request, &body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn queue(
    state: &AppState,
    network: Option<std::net::IpAddr>,
    query: SendQuery,
    request: &RequestAuth<'_>,
    body: &[u8],
) -> Result<Response, FhirError> {
    let headers = request.headers;
    let Some(exchange) = state.exchange.clone() else {
        return Err(FhirError::not_found(
            "this server does not exchange messages",
        ));
    };
    let principal = authorize(state, request).await?;
    let recipient = query.recipient.ok_or_else(|| {
        FhirError::invalid_at(
            IssueType::Required,
            "the recipient query parameter (an organization id from `ward org list`) is missing",
            "recipient",
        )
    })?;
    let mut bundle: Value = ward_fhir::parse_json_strict(body)
        .map_err(|outcome| FhirError::with_outcome(StatusCode::BAD_REQUEST, outcome))?;
    message::check_message_bundle(&bundle)
        .map_err(|(text, path)| FhirError::invalid_at(IssueType::Invalid, text, path))?;

    let message_id = uuid::Uuid::new_v4().to_string();
    if bundle.get("id").is_none() {
        bundle["id"] = json!(message_id);
    }
    if bundle.pointer("/entry/0/resource/id").is_none() {
        bundle["entry"][0]["resource"]["id"] = json!(message_id);
    }
    ward_fhir::validate::validate_resource(&bundle)
        .map_err(|outcome| FhirError::with_outcome(StatusCode::UNPROCESSABLE_ENTITY, outcome))?;
    let actor = Actor::from_principal(&principal, network);
    controlled::require_second_factor(state, &principal, &actor, headers, &mut bundle).await?;

    let now = now_secs();
    let give_up = i64::try_from(exchange.settings.give_up_after.as_secs()).unwrap_or(i64::MAX);
    let record = OutboxMessage {
        id: message_id.clone(),
        recipient: recipient.clone(),
        sender_user: principal.subject.clone(),
        bundle,
        status: outbox::Status::Queued,
        created: now,
        next_attempt: now,
        give_up_at: now.saturating_add(give_up),
        attempts: 0,
        last_error: None,
        response_code: None,
        delivered_at: None,
    };
    let store = state.engine.store.clone();
    let queued = tokio::task::spawn_blocking(move || {
        if trust::get(&*store, &record.recipient)?.is_none() {
            return Err(ward_exchange::Error::NotTrusted(record.recipient.clone()));
        }
        outbox::enqueue(&*store, &record)
    })
    .await
    .map_err(|error| FhirError::internal(&error))?;
    match queued {
        Ok(()) => {}
        Err(ward_exchange::Error::NotTrusted(org)) => {
            return Err(FhirError::invalid_at(
                IssueType::NotFound,
                format!("organization {org} is not in the trust bundle; see `ward org list`"),
                "recipient",
            ));
        }
        Err(error) => return Err(FhirError::internal(&error)),
    }

    audit_exchange(
        state,
        &actor,
        "message_queued",
        Outcome::Success,
        None,
        &[("message_id", &message_id), ("recipient", &recipient)],
    )
    .await;
    exchange.wake.notify_one();

    let location = format!("{}/exchange/outbox/{message_id}", state.verifier.origin());
    let mut response = json_response(
        StatusCode::ACCEPTED,
        &json!({ "id": message_id, "status": "queued", "recipient": recipient }),
    );
    if let Ok(value) = HeaderValue::from_str(&location) {
        response
            .headers_mut()
            .insert(header::CONTENT_LOCATION, value);
    }
    Ok(response)
}

/// Returns the delivery status of an outbox message to the user who sent it.
pub(super) async fn outbox_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Response {
    let request = RequestAuth::from_parts(&parts);
    let principal = match auth::authenticate_request(&request, &state.verifier) {
        Ok(principal) => principal,
        Err(error) => return error.into_response(),
    };
    if let Err(error) = crate::oauth::check_principal(&state, &principal).await {
        return error.into_response();
    }
    let store = state.engine.store.clone();
    let lookup = id.clone();
    let found = tokio::task::spawn_blocking(move || outbox::get(&*store, &lookup)).await;
    let message = match found {
        Ok(Ok(Some(message))) if message.sender_user == principal.subject => message,
        // Another user's message reads as absent, so ids reveal nothing.
        Ok(Ok(_)) => {
            return FhirError::not_found(format!("outbox message {id} not found")).into_response();
        }
        Ok(Err(error)) => return FhirError::internal(&error).into_response(),
        Err(error) => return FhirError::internal(&error).into_response(),
    };
    json_response(
        StatusCode::OK,
        &json!({
            "id": message.id,
            "recipient": message.recipient,
            "status": message.status.as_str(),
            "attempts": message.attempts,
            "created": message.created,
            "deliveredAt": message.delivered_at,
            "responseCode": message.response_code,
            "lastError": message.last_error,
        }),
    )
}
