//! `POST /fhir/$send-message?recipient=ORG_ID`: a clinician queues a
//! message Bundle for a trusted organization. The message is stored
//! `queued` in the outbox before the 202 response, whose `Content-Location`
//! is the status URL `/exchange/outbox/ID`, readable by the sender only.
//! An optional `subject=Patient/ID` names the sender's own record of the
//! patient; the outbox keeps it for the sender's list and never transmits
//! it.
//!
//! `GET /exchange/outbox?_count=N` lists the caller's own messages, newest
//! first, with the status fields of the single-message route. Each entry
//! also names the focus resource type (`ServiceRequest`,
//! `MedicationRequest`), its summary text, the patient's name as sent and
//! the `subject` given at sending.

use axum::extract::{Path, Query, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use ward_audit::record::Outcome;
use ward_exchange::outbox::{self, OutboxMessage};
use ward_exchange::{message, trust};
use ward_fhir::IssueType;
use ward_fhir::outcome::{OperationOutcome, OutcomeIssue};

use super::{audit_exchange, controlled, now_secs};
use crate::AppState;
use crate::audit::{Actor, Peer};
use crate::auth::{self, Principal, RequestAuth};
use crate::error::FhirError;
use crate::fhir::response::json_response;
use crate::scopes::Permission;

/// The number of messages the outbox list returns by default.
const LIST_DEFAULT: usize = 50;
/// The maximum number of messages the outbox list returns.
const LIST_MAX: usize = 200;

/// The roles that may send messages to other organizations.
const SENDER_ROLES: &[&str] = &["physician", "nurse", "lab_technician"];

/// The query of `$send-message`.
#[derive(Debug, Deserialize)]
pub(super) struct SendQuery {
    recipient: Option<String>,
    subject: Option<String>,
}

/// Checks a `subject` query parameter: `Patient/ID` with a FHIR id.
fn check_subject(subject: &str) -> Result<(), FhirError> {
    let valid = subject.strip_prefix("Patient/").is_some_and(|id| {
        (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    });
    if valid {
        Ok(())
    } else {
        Err(FhirError::invalid_at(
            IssueType::Invalid,
            "the subject query parameter must be a patient reference such as Patient/123",
            "subject",
        ))
    }
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
    if let Some(subject) = &query.subject {
        check_subject(subject)?;
    }
    let mut bundle: Value = ward_fhir::parse_json_strict(body)
        .map_err(|outcome| FhirError::with_outcome(StatusCode::BAD_REQUEST, outcome))?;
    message::check_message_bundle(&bundle)
        .map_err(|(text, path)| FhirError::invalid_at(IssueType::Invalid, text, path))?;
    message::check_references(&bundle).map_err(|(text, path)| {
        FhirError::with_outcome(
            StatusCode::UNPROCESSABLE_ENTITY,
            OperationOutcome::single(OutcomeIssue::error(IssueType::Invalid, text).at(path)),
        )
    })?;

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
        subject: query.subject,
    };
    let store = state.engine.store.clone();
    let queued = tokio::task::spawn_blocking(move || {
        match trust::get(&*store, &record.recipient)? {
            None => return Err(ward_exchange::Error::NotTrusted(record.recipient.clone())),
            Some(entry) if entry.not_after <= record.created => {
                return Err(ward_exchange::Error::ExpiredRecipient(
                    record.recipient.clone(),
                    entry.not_after,
                ));
            }
            Some(_) => {}
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
        Err(error @ ward_exchange::Error::ExpiredRecipient(..)) => {
            return Err(FhirError::invalid_at(
                IssueType::Security,
                error.to_string(),
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
    // The body is no FHIR resource, so it is labelled application/json.
    let mut response = (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "id": message_id, "status": "queued", "recipient": recipient })),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response
            .headers_mut()
            .insert(header::CONTENT_LOCATION, value);
    }
    Ok(response)
}

/// Authenticates the reader of the outbox: any valid token, bound tokens
/// with their proof of possession, of a user who is still active.
async fn outbox_reader(state: &AppState, parts: &Parts) -> Result<Principal, FhirError> {
    let request = RequestAuth::from_parts(parts);
    let principal = auth::authenticate_request(&request, &state.verifier)?;
    crate::oauth::check_principal(state, &principal).await?;
    Ok(principal)
}

/// Returns the status fields of `message`, as both outbox routes show them.
fn status_json(message: &OutboxMessage) -> Value {
    json!({
        "id": message.id,
        "recipient": message.recipient,
        "status": message.status.as_str(),
        "attempts": message.attempts,
        "created": message.created,
        "deliveredAt": message.delivered_at,
        "responseCode": message.response_code,
        "lastError": message.last_error,
    })
}

/// Reads the `_count` parameter of the outbox list from the raw query.
fn list_count(query: Option<&str>) -> Result<usize, FhirError> {
    let Some(query) = query else {
        return Ok(LIST_DEFAULT);
    };
    let mut count = LIST_DEFAULT;
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if name != "_count" {
            continue;
        }
        count = value
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=LIST_MAX).contains(n))
            .ok_or_else(|| {
                FhirError::invalid_at(
                    IssueType::Invalid,
                    format!("the _count parameter must be a whole number from 1 to {LIST_MAX}"),
                    "_count",
                )
            })?;
    }
    Ok(count)
}

/// Returns the focus resource of a message Bundle: the resource of the
/// entry whose `fullUrl` the MessageHeader's first focus names.
fn focus_of(bundle: &Value) -> Option<&Value> {
    let reference = bundle
        .pointer("/entry/0/resource/focus/0/reference")
        .and_then(Value::as_str)?;
    bundle
        .get("entry")?
        .as_array()?
        .iter()
        .find(|entry| entry.get("fullUrl").and_then(Value::as_str) == Some(reference))
        .and_then(|entry| entry.get("resource"))
}

/// Returns the summary text of a focus resource: the specialty of a
/// referral, the medication of a prescription, else its code text.
fn summary_of(focus: &Value) -> Option<&str> {
    [
        "/performerType/text",
        "/medicationCodeableConcept/text",
        "/medicationCodeableConcept/coding/0/display",
        "/code/text",
        "/code/coding/0/display",
    ]
    .iter()
    .find_map(|pointer| focus.pointer(pointer).and_then(Value::as_str))
}

/// Returns the display name of the patient a focus resource is about, as
/// the message carries it.
fn patient_name_of(bundle: &Value, focus: &Value) -> Option<String> {
    let reference = focus
        .pointer("/subject/reference")
        .or_else(|| focus.pointer("/patient/reference"))
        .and_then(Value::as_str)?;
    let patient = bundle
        .get("entry")?
        .as_array()?
        .iter()
        .find(|entry| entry.get("fullUrl").and_then(Value::as_str) == Some(reference))?
        .get("resource")?;
    let name = patient.pointer("/name/0")?;
    if let Some(text) = name.get("text").and_then(Value::as_str) {
        return Some(text.to_owned());
    }
    let mut parts: Vec<&str> = name
        .get("given")
        .and_then(Value::as_array)
        .map(|given| given.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(family) = name.get("family").and_then(Value::as_str) {
        parts.push(family);
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// Returns one entry of the outbox list.
fn list_entry(message: &OutboxMessage) -> Value {
    let mut entry = status_json(message);
    let focus = focus_of(&message.bundle);
    entry["focus"] = json!(
        focus
            .and_then(|focus| focus.get("resourceType"))
            .and_then(Value::as_str)
    );
    entry["summary"] = json!(focus.and_then(summary_of));
    entry["patient"] = json!(focus.and_then(|focus| patient_name_of(&message.bundle, focus)));
    entry["subject"] = json!(message.subject);
    entry
}

/// `GET /exchange/outbox`: lists the caller's own outbox messages, newest
/// first, at most `_count` (default 50, at most 200).
pub(super) async fn outbox_list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    parts: Parts,
) -> Response {
    let principal = match outbox_reader(&state, &parts).await {
        Ok(principal) => principal,
        Err(error) => return error.into_response(),
    };
    let count = match list_count(query.as_deref()) {
        Ok(count) => count,
        Err(error) => return error.into_response(),
    };
    let store = state.engine.store.clone();
    let sender = principal.subject.clone();
    let listed =
        tokio::task::spawn_blocking(move || outbox::list_for_sender(&*store, &sender, count)).await;
    let messages = match listed {
        Ok(Ok(messages)) => messages,
        Ok(Err(error)) => return FhirError::internal(&error).into_response(),
        Err(error) => return FhirError::internal(&error).into_response(),
    };
    let entries: Vec<Value> = messages.iter().map(list_entry).collect();
    json_response(
        StatusCode::OK,
        &json!({ "total": entries.len(), "messages": entries }),
    )
}

/// Returns the delivery status of an outbox message to the user who sent it.
pub(super) async fn outbox_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Response {
    let principal = match outbox_reader(&state, &parts).await {
        Ok(principal) => principal,
        Err(error) => return error.into_response(),
    };
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
    json_response(StatusCode::OK, &status_json(&message))
}
