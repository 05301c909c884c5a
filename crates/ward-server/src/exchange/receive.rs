//! `POST /fhir/$process-message`: opens a sealed message from a trusted
//! organization, files its resources in one transaction and responds with a
//! signed acknowledgement. Every rejection is audited with its reason.
//!
//! The endpoint takes no access token: the sender is authenticated by the
//! signature of the message, checked against the trust bundle.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use ward_audit::record::Outcome;
use ward_exchange::envelope::{self, Opened, ReceiveError, Seen};
use ward_exchange::{Rejection, message, trust};
use ward_fhir::IssueType;

use super::{JOSE, audit_exchange, now_secs, org_actor};
use crate::AppState;
use crate::audit::{Actor, Peer};
use crate::auth::Principal;
use crate::error::FhirError;
use crate::fhir::response::ReturnPreference;

/// Handles a posted message.
pub(super) async fn process_message(
    State(state): State<AppState>,
    Peer(network): Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(exchange) = state.exchange.clone() else {
        return FhirError::not_found("this server does not exchange messages").into_response();
    };
    let unknown = org_actor("unknown", network);
    let is_jose = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(';').next().map(str::trim) == Some(JOSE));
    if !is_jose {
        let reason = "the content type must be application/jose";
        audit_exchange(
            &state,
            &unknown,
            "message_rejected",
            Outcome::MinorFailure,
            Some(reason),
            &[("reason", "malformed")],
        )
        .await;
        return FhirError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IssueType::NotSupported,
            reason,
        )
        .into_response();
    }
    let Ok(compact) = String::from_utf8(body.to_vec()) else {
        let rejection = Rejection::Malformed("the body is not UTF-8 text");
        return reject(&state, &unknown, &rejection).await;
    };

    let store = state.engine.store.clone();
    let service = exchange.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let now = now_secs();
        let opened = envelope::open(&service.identity, &compact, now, |id| {
            trust::get(&*store, id)
        })?;
        let seen = envelope::claim(&*store, &opened, now)?;
        Ok::<_, ReceiveError>((opened, seen))
    })
    .await;
    let (opened, seen) = match opened {
        Ok(Ok(result)) => result,
        Ok(Err(ReceiveError::Rejected(rejection))) => {
            return reject(&state, &unknown, &rejection).await;
        }
        Ok(Err(ReceiveError::Local(error))) => {
            return FhirError::internal(&error).into_response();
        }
        Err(error) => return FhirError::internal(&error).into_response(),
    };
    let actor = org_actor(&opened.sender.org_id, network);
    match seen {
        Seen::New => file_and_acknowledge(&state, &actor, opened).await,
        Seen::Filed(ack) => {
            audit_exchange(
                &state,
                &actor,
                "message_retry_acknowledged",
                Outcome::Success,
                None,
                &[
                    ("message_id", &opened.message_id),
                    ("sender", &opened.sender.org_id),
                ],
            )
            .await;
            jose_response(StatusCode::OK, ack)
        }
        Seen::InProgress => {
            let mut response = FhirError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                IssueType::Exception,
                "another delivery of this message is being processed; retry later",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            response
        }
    }
}

/// Audits a rejection and returns a response with its status and reason.
async fn reject(state: &AppState, actor: &Actor, rejection: &Rejection) -> Response {
    let reason = rejection.to_string();
    let sender = match rejection {
        Rejection::UntrustedSender(org) | Rejection::ExpiredSender(org) => org.as_str(),
        _ => "",
    };
    audit_exchange(
        state,
        actor,
        "message_rejected",
        Outcome::MinorFailure,
        Some(&reason),
        &[("reason", rejection.code()), ("claimed_sender", sender)],
    )
    .await;
    tracing::warn!(target: "ward::exchange", reason = rejection.code(), "rejected an incoming message");
    let (status, code) = match rejection {
        Rejection::UntrustedSender(_) | Rejection::ExpiredSender(_) | Rejection::BadSignature => {
            (StatusCode::FORBIDDEN, IssueType::Security)
        }
        Rejection::Replayed(_) => (StatusCode::CONFLICT, IssueType::Duplicate),
        _ => (StatusCode::BAD_REQUEST, IssueType::Invalid),
    };
    FhirError::new(status, code, reason).into_response()
}

/// Validates and files an opened message, then signs, stores and returns
/// the acknowledgement.
async fn file_and_acknowledge(state: &AppState, actor: &Actor, opened: Opened) -> Response {
    let exchange = state.exchange.clone().expect("checked by the caller");
    let engine = state.engine.clone();
    let message = opened.clone();
    let filed = tokio::task::spawn_blocking(move || file(&engine, &message)).await;
    let (code, outcome, reason) = match filed {
        Ok(Ok(count)) => ("ok", None, format!("{count} resources filed")),
        Ok(Err(error)) if !error.status.is_server_error() => {
            let reason = error
                .outcome
                .issues
                .first()
                .map_or_else(String::new, |issue| issue.diagnostics.clone());
            ("fatal-error", Some(error.outcome.to_json()), reason)
        }
        Ok(Err(error)) => return release_and_fail(state, &opened, error.status).await,
        Err(_) => return release_and_fail(state, &opened, StatusCode::INTERNAL_SERVER_ERROR).await,
    };

    let response = message::response_bundle(
        &exchange.identity.id,
        &opened.bundle,
        &opened.message_id,
        code,
        outcome,
    );
    let now = now_secs();
    let ack = match envelope::sign_ack(
        &exchange.identity,
        &opened.sender.org_id,
        &opened.message_id,
        &response,
        now,
    ) {
        Ok(ack) => ack,
        Err(error) => return FhirError::internal(&error).into_response(),
    };
    let store = state.engine.store.clone();
    let (stored_opened, stored_ack) = (opened.clone(), ack.clone());
    let stored = tokio::task::spawn_blocking(move || {
        envelope::finish(&*store, &stored_opened, &stored_ack, now)
    })
    .await;
    if !matches!(stored, Ok(Ok(()))) {
        tracing::error!(target: "ward::exchange", "storing an acknowledgement failed; a retry of the message will be rejected as in progress");
    }
    if code == "ok" {
        super::roles::after_filing(state, actor, &opened).await;
    }
    let (event, audit_outcome, failure) = if code == "ok" {
        ("message_received", Outcome::Success, None)
    } else {
        (
            "message_rejected",
            Outcome::MinorFailure,
            Some(reason.as_str()),
        )
    };
    audit_exchange(
        state,
        actor,
        event,
        audit_outcome,
        failure,
        &[
            ("message_id", &opened.message_id),
            ("sender", &opened.sender.org_id),
            ("response", code),
            ("reason", if code == "ok" { "" } else { "invalid_bundle" }),
        ],
    )
    .await;
    jose_response(StatusCode::OK, ack)
}

/// Releases the claim of a message that could not be filed for a server
/// fault, so the sender's next attempt is processed.
async fn release_and_fail(state: &AppState, opened: &Opened, status: StatusCode) -> Response {
    let store = state.engine.store.clone();
    let message = opened.clone();
    let _ = tokio::task::spawn_blocking(move || envelope::release(&*store, &message)).await;
    FhirError::new(
        status,
        IssueType::Exception,
        "the message could not be filed; retry later",
    )
    .into_response()
}

/// Checks the message Bundle against R4 and files its resources in one
/// transaction. Returns the number of resources filed.
fn file(engine: &crate::fhir::engine::Engine, opened: &Opened) -> Result<usize, FhirError> {
    message::check_message_bundle(&opened.bundle)
        .map_err(|(text, path)| FhirError::invalid_at(IssueType::Invalid, text, path))?;
    ward_fhir::validate::validate_resource(&opened.bundle)
        .map_err(|outcome| FhirError::with_outcome(StatusCode::UNPROCESSABLE_ENTITY, outcome))?;
    let mut transaction = message::filing_transaction(&opened.bundle, &opened.sender.org_id);
    super::roles::tag_with_message(&mut transaction, &opened.message_id);
    let count = transaction["entry"].as_array().map_or(0, Vec::len);
    let principal = Principal::system(&format!("org:{}", opened.sender.org_id), "system/*.cruds");
    engine.process_bundle(&principal, &transaction, ReturnPreference::Minimal)?;
    Ok(count)
}

fn jose_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JOSE));
    response
}
