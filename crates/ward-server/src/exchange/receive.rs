//! `POST /fhir/$process-message`: opens a sealed message from a trusted
//! organization, files its resources in one transaction and responds with a
//! signed acknowledgement. Every rejection is audited with its reason.
//!
//! The endpoint takes no access token: the sender is authenticated by the
//! signature of the message, checked against the trust bundle, and by the
//! client certificate of the connection (mutual TLS, see `peer`).

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use std::collections::HashSet;
use ward_audit::record::Outcome;
use ward_exchange::envelope::{self, Opened, ReceiveError, Seen};
use ward_exchange::{OrgIdentity, Rejection, message, trust};

use ward_fhir::IssueType;
use ward_fhir::outcome::{OperationOutcome, OutcomeIssue};
use ward_fhir::search::Handling;
use ward_store::WriteTx;

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
    peer_certificate: Option<axum::Extension<crate::tls::PeerCertificate>>,
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
        // Mutual TLS: the connection must belong to the sender.
        super::peer::check(peer_certificate.as_deref(), &opened.sender)?;
        let seen = envelope::check(&*store, &opened, now)?;
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
        Seen::Filed(ack) => retry_acknowledged(&state, &actor, &opened, ack).await,
    }
}

/// Responds to a fresh delivery attempt of a message already filed with the
/// stored acknowledgement.
async fn retry_acknowledged(
    state: &AppState,
    actor: &Actor,
    opened: &Opened,
    ack: String,
) -> Response {
    audit_exchange(
        state,
        actor,
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

/// Audits a rejection and returns a response with its status and reason.
async fn reject(state: &AppState, actor: &Actor, rejection: &Rejection) -> Response {
    let reason = rejection.to_string();
    let sender = match rejection {
        Rejection::UntrustedSender(org)
        | Rejection::ExpiredSender(org)
        | Rejection::ClientCertificateMismatch(org, _) => org.as_str(),
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
        Rejection::NoClientCertificate => (StatusCode::UNAUTHORIZED, IssueType::Login),
        Rejection::ClientCertificateMismatch(..) => (StatusCode::FORBIDDEN, IssueType::Security),
        _ => (StatusCode::BAD_REQUEST, IssueType::Invalid),
    };
    FhirError::new(status, code, reason).into_response()
}

/// The result of filing an opened message.
enum Filing {
    /// Filed (`ok`) or rejected (`fatal-error`), with the acknowledgement
    /// recorded in the same transaction.
    Answered {
        /// The response code.
        code: &'static str,
        /// The count of filed resources, or the reason the message was
        /// rejected (no PHI).
        reason: String,
        /// The signed acknowledgement.
        ack: String,
        /// The outbox messages a dispensing report named, and whether each
        /// was marked `dispensed`.
        dispensed: Vec<(String, bool)>,
        /// The count of Patients filed anew because several local
        /// Patients had their identifier.
        ambiguous: usize,
    },
    /// Another delivery of the message was recorded first. The value is the
    /// result of the replay check for this delivery.
    Earlier(Result<Seen, ReceiveError>),
}

/// Validates and files an opened message and returns the signed
/// acknowledgement. The filing, the record of the message id with its
/// acknowledgement and any `dispensed` marks commit in one transaction.
/// So a receiver that stops at any point has either filed and recorded
/// the message or stored nothing of it, and the sender's next attempt gets
/// the stored acknowledgement or files the message afresh.
async fn file_and_acknowledge(state: &AppState, actor: &Actor, opened: Opened) -> Response {
    let exchange = state.exchange.clone().expect("checked by the caller");
    let engine = state.engine.clone();
    let message = opened.clone();
    let filed =
        tokio::task::spawn_blocking(move || file(&engine, &exchange.identity, &message)).await;
    let (code, reason, ack, dispensed, ambiguous) = match filed {
        Ok(Ok(Filing::Answered {
            code,
            reason,
            ack,
            dispensed,
            ambiguous,
        })) => (code, reason, ack, dispensed, ambiguous),
        Ok(Ok(Filing::Earlier(Ok(Seen::Filed(ack))))) => {
            return retry_acknowledged(state, actor, &opened, ack).await;
        }
        Ok(Ok(Filing::Earlier(Err(ReceiveError::Rejected(rejection))))) => {
            return reject(state, actor, &rejection).await;
        }
        Ok(Ok(Filing::Earlier(Ok(Seen::New)))) => {
            // The other delivery's record expired or was removed meanwhile.
            tracing::warn!(target: "ward::exchange", message_id = %opened.message_id, sender = %opened.sender.org_id, "a concurrent delivery of the message is no longer recorded");
            return retry_later(StatusCode::SERVICE_UNAVAILABLE);
        }
        Ok(Ok(Filing::Earlier(Err(ReceiveError::Local(error))))) => {
            return FhirError::internal(&error).into_response();
        }
        Ok(Err(error)) => {
            tracing::error!(target: "ward::exchange", message_id = %opened.message_id, sender = %opened.sender.org_id, status = error.status.as_u16(), "filing a message failed; nothing was stored");
            return retry_later(error.status);
        }
        Err(error) => {
            tracing::error!(target: "ward::exchange", message_id = %opened.message_id, sender = %opened.sender.org_id, %error, "filing a message failed; nothing was stored");
            return retry_later(StatusCode::INTERNAL_SERVER_ERROR);
        }
    };
    if code == "ok" {
        super::roles::after_filing(state, actor, &opened, &dispensed).await;
    }
    if ambiguous > 0 {
        tracing::warn!(target: "ward::exchange", message_id = %opened.message_id, sender = %opened.sender.org_id, patients = ambiguous, "several local Patients had the identifier of a received Patient; filed it as a new Patient for review");
        audit_exchange(
            state,
            actor,
            "patient_match_ambiguous",
            Outcome::MinorFailure,
            Some("several local Patients have the identifier of the received Patient; it was filed as a new Patient tagged patient-needs-review and patient-match-ambiguous, and nothing was merged"),
            &[
                ("message_id", &opened.message_id),
                ("sender", &opened.sender.org_id),
                ("patients", &ambiguous.to_string()),
            ],
        )
        .await;
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

/// Returns the response to a message that could not be filed for a server
/// fault. Nothing of it was stored, so the sender's next attempt is
/// processed afresh.
fn retry_later(status: StatusCode) -> Response {
    let status = if status.is_server_error() {
        status
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = FhirError::new(
        status,
        IssueType::Exception,
        "the message could not be filed; retry later",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

/// Checks the message Bundle against R4 and builds its filing transaction.
/// Returns the transaction and the count of received Patients that several
/// local Patients matched, which are filed as new Patients for review.
fn prepare(
    engine: &crate::fhir::engine::Engine,
    opened: &Opened,
) -> Result<(serde_json::Value, usize), FhirError> {
    message::check_message_bundle(&opened.bundle)
        .map_err(|(text, path)| FhirError::invalid_at(IssueType::Invalid, text, path))?;
    ward_fhir::validate::validate_resource(&opened.bundle)
        .map_err(|outcome| FhirError::with_outcome(StatusCode::UNPROCESSABLE_ENTITY, outcome))?;
    message::check_references(&opened.bundle).map_err(|(text, path)| {
        FhirError::with_outcome(
            StatusCode::UNPROCESSABLE_ENTITY,
            OperationOutcome::single(OutcomeIssue::error(IssueType::Invalid, text).at(path)),
        )
    })?;
    super::controlled::verify_received(&opened.bundle)?;
    let ambiguous = ambiguous_patients(engine, &opened.bundle)?;
    let mut transaction =
        message::filing_transaction(&opened.bundle, &opened.sender.org_id, &ambiguous);
    super::roles::tag_with_message(&mut transaction, &opened.message_id);
    Ok((transaction, ambiguous.len()))
}

/// Returns the match queries of the message's Patients that more than one
/// local Patient matches. Such a Patient is filed anew for review rather
/// than merged with one of them or failing the message.
fn ambiguous_patients(
    engine: &crate::fhir::engine::Engine,
    bundle: &serde_json::Value,
) -> Result<HashSet<String>, FhirError> {
    let queries = message::patient_match_queries(bundle);
    let mut ambiguous = HashSet::new();
    if queries.is_empty() {
        return Ok(ambiguous);
    }
    let mut tx = engine.store.begin()?;
    for query in queries {
        let pairs = crate::fhir::engine::query_pairs(&query)?;
        let search = crate::fhir::engine::parse_query(Some("Patient"), &pairs, Handling::Strict)?;
        if tx.search_keys(&search, 2)?.len() > 1 {
            ambiguous.insert(query);
        }
    }
    drop(tx);
    Ok(ambiguous)
}

/// Signs the acknowledgement of `opened` with response `code`.
fn acknowledgement(
    identity: &OrgIdentity,
    opened: &Opened,
    code: &str,
    outcome: Option<serde_json::Value>,
    now: i64,
) -> Result<String, FhirError> {
    let response = message::response_bundle(
        &identity.id,
        &opened.bundle,
        &opened.message_id,
        code,
        outcome,
    );
    envelope::sign_ack(
        identity,
        &opened.sender.org_id,
        &opened.message_id,
        &response,
        now,
    )
    .map_err(|error| FhirError::internal(&error))
}

/// The interval at which [`check_after_race`] polls for the record of a
/// concurrent delivery.
const RACE_POLL: std::time::Duration = std::time::Duration::from_millis(20);
/// The number of polls of [`check_after_race`], two seconds in all.
const RACE_POLLS: u32 = 100;

/// Runs the replay check after another delivery of `opened` was recorded
/// first. On SQLite a transaction can see the record of a concurrent one
/// whose shared commit is still running, so this polls until the record is
/// visible to readers, for up to two seconds.
fn check_after_race(
    store: &dyn ward_store::Store,
    opened: &Opened,
    now: i64,
) -> Result<Seen, ReceiveError> {
    for _ in 0..RACE_POLLS {
        match envelope::check(store, opened, now) {
            Ok(Seen::New) => std::thread::sleep(RACE_POLL),
            other => return other,
        }
    }
    envelope::check(store, opened, now)
}

/// Files `opened` and records its acknowledgement, or records the
/// `fatal-error` acknowledgement of a message that is rejected. A server
/// fault returns the error and stores nothing.
fn file(
    engine: &crate::fhir::engine::Engine,
    identity: &OrgIdentity,
    opened: &Opened,
) -> Result<Filing, FhirError> {
    let now = now_secs();
    let store = &*engine.store;
    let mut raced = false;
    let mut filed_ack = None;
    let mut dispensed = Vec::new();
    let mut ambiguous = 0;
    let filed = prepare(engine, opened).and_then(|(transaction, ambiguous_count)| {
        ambiguous = ambiguous_count;
        let count = transaction["entry"].as_array().map_or(0, Vec::len);
        let principal =
            Principal::system(&format!("org:{}", opened.sender.org_id), "system/*.cruds");
        let mut record = |tx: &mut dyn WriteTx| -> Result<(), FhirError> {
            let ack = acknowledgement(identity, opened, "ok", None, now)?;
            if !envelope::record(tx, opened, &ack, now).map_err(|e| FhirError::internal(&e))? {
                raced = true;
                return Err(FhirError::new(
                    StatusCode::CONFLICT,
                    IssueType::Conflict,
                    "another delivery of this message was filed first",
                ));
            }
            dispensed = super::roles::mark_dispensed_in(tx, opened)
                .map_err(|error| FhirError::internal(&error))?;
            filed_ack = Some(ack);
            Ok(())
        };
        engine.process_transaction_with(
            &principal,
            &transaction,
            ReturnPreference::Minimal,
            &mut record,
        )?;
        Ok(count)
    });
    if raced {
        return Ok(Filing::Earlier(check_after_race(store, opened, now)));
    }
    match (filed, filed_ack) {
        (Ok(count), Some(ack)) => Ok(Filing::Answered {
            code: "ok",
            reason: format!("{count} resources filed"),
            ack,
            dispensed,
            ambiguous,
        }),
        (Ok(_), None) => Err(FhirError::internal(
            &"a filing committed without recording its acknowledgement",
        )),
        (Err(error), _) if !error.status.is_server_error() => {
            let reason = error
                .outcome
                .issues
                .first()
                .map_or_else(String::new, |issue| issue.diagnostics.clone());
            let ack = acknowledgement(
                identity,
                opened,
                "fatal-error",
                Some(error.outcome.to_json()),
                now,
            )?;
            let mut tx = store.begin()?;
            if !envelope::record(tx.as_mut(), opened, &ack, now)
                .map_err(|error| FhirError::internal(&error))?
            {
                drop(tx);
                return Ok(Filing::Earlier(check_after_race(store, opened, now)));
            }
            tx.commit()?;
            Ok(Filing::Answered {
                code: "fatal-error",
                reason,
                ack,
                dispensed: Vec::new(),
                ambiguous: 0,
            })
        }
        (Err(error), _) => Err(error),
    }
}

fn jose_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JOSE));
    response
}
