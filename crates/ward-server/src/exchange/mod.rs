//! Exchange of signed and encrypted FHIR messages with other
//! organizations: the receiver (`POST /fhir/$process-message`), the sender
//! (`POST /fhir/$send-message`, the sender's outbox list and status, and
//! the delivery loop).
//! The envelope, trust bundle and outbox records live in `ward-exchange`.
//!
//! The organization roles add to this: a pharmacy reports dispensing back
//! to the prescriber ([`report_dispense`]), and a clinic marks the
//! prescription message `dispensed` when that report is filed ([`roles`]).
//! Laboratory results travel as ordinary messages sent by a
//! `lab_technician`. The second factor for controlled substances is in [`controlled`].

pub mod controlled;
mod deliver;
mod dispense;
pub mod peer;
mod receive;
pub mod roles;
mod send;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{StatusCode, header};
use ward_audit::record::{Action, EventType, Outcome, Subtype};
use ward_exchange::OrgIdentity;

use crate::AppState;
use crate::audit::Actor;
use crate::error::FhirError;
use ward_fhir::IssueType;

pub use deliver::run_outbox;
pub use dispense::{QueuedReport, queue_report_in, report_dispense};

/// The media type of a JOSE compact serialization (RFC 7515, RFC 7516).
pub const JOSE: &str = "application/jose";

/// The largest message Bundle `$send-message` accepts, in bytes.
pub const MAX_SEND_BYTES: usize = 4 * 1024 * 1024;

/// The largest sealed message `$process-message` accepts, in bytes. Signing
/// and encrypting each encode in base64url, so a sealed message is about
/// 16/9 of its Bundle and a Bundle of [`MAX_SEND_BYTES`] fits.
pub const MAX_SEALED_BYTES: usize = 8 * 1024 * 1024;

/// Delivery settings of the outbox.
#[derive(Debug, Clone, Copy)]
pub struct DeliverySettings {
    /// The delay after the first failed attempt; it doubles per attempt.
    pub retry_base: Duration,
    /// The maximum delay between two attempts.
    pub retry_max: Duration,
    /// How long after queueing a message is marked failed.
    pub give_up_after: Duration,
    /// How long one delivery attempt may take.
    pub attempt_timeout: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(600),
            give_up_after: Duration::from_secs(24 * 3600),
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

/// The organization's exchange identity and the outbox settings.
pub struct ExchangeService {
    /// The identity that signs and decrypts messages.
    pub identity: OrgIdentity,
    /// Delivery settings.
    pub settings: DeliverySettings,
    /// Wakes the delivery loop when a message is queued.
    pub wake: tokio::sync::Notify,
    /// The TLS client certificate deliveries present (mutual TLS).
    client_cert: std::sync::RwLock<Option<Arc<ward_exchange::identity::OrgClientCert>>>,
}

impl ExchangeService {
    /// Creates the service.
    pub fn new(identity: OrgIdentity, settings: DeliverySettings) -> Arc<Self> {
        Arc::new(Self {
            identity,
            settings,
            wake: tokio::sync::Notify::new(),
            client_cert: std::sync::RwLock::new(None),
        })
    }

    /// Sets the client certificate that deliveries present from now on.
    pub fn set_client_cert(&self, cert: ward_exchange::identity::OrgClientCert) {
        if let Ok(mut slot) = self.client_cert.write() {
            *slot = Some(Arc::new(cert));
        }
    }

    /// Returns the client certificate deliveries present, if one is set.
    pub fn client_cert(&self) -> Option<Arc<ward_exchange::identity::OrgClientCert>> {
        self.client_cert.read().ok().and_then(|slot| slot.clone())
    }
}

/// Builds the exchange routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/fhir/$process-message",
            post(receive::process_message)
                .layer(DefaultBodyLimit::max(MAX_SEALED_BYTES))
                .layer(axum::middleware::map_response(|response| async move {
                    too_large_outcome(response, MAX_SEALED_BYTES)
                })),
        )
        .route(
            "/fhir/$send-message",
            post(send::send_message)
                .layer(DefaultBodyLimit::max(MAX_SEND_BYTES))
                .layer(axum::middleware::from_fn(require_fhir_json))
                .layer(axum::middleware::map_response(|response| async move {
                    too_large_outcome(response, MAX_SEND_BYTES)
                })),
        )
        .route("/exchange/outbox", get(send::outbox_list))
        .route("/exchange/outbox/{id}", get(send::outbox_status))
}

/// Replaces the plain-text 413 of the body limit with an OperationOutcome
/// (`too-long`) that names the limit, as `/fhir` does.
fn too_large_outcome(response: Response, limit: usize) -> Response {
    let is_fhir = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.contains("json"));
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE || is_fhir {
        return response;
    }
    FhirError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        IssueType::TooLong,
        format!("the request body is larger than the limit of {limit} bytes for this operation"),
    )
    .into_response()
}

/// The media types a message Bundle may be posted as.
const FHIR_JSON_TYPES: [&str; 3] = [
    "application/fhir+json",
    "application/json",
    "application/json+fhir",
];

/// Rejects a `$send-message` whose `Content-Type` is not FHIR JSON with
/// 415 and an OperationOutcome (FHIR R4 http.html).
async fn require_fhir_json(request: axum::extract::Request, next: Next) -> Response {
    let media = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if FHIR_JSON_TYPES.contains(&media.as_str()) {
        return next.run(request).await;
    }
    FhirError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        IssueType::NotSupported,
        "the Content-Type of a message Bundle must be application/fhir+json",
    )
    .into_response()
}

/// Returns the current time in seconds since the Unix epoch.
fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Builds the audit actor of a peer organization.
fn org_actor(org_id: &str, network: Option<std::net::IpAddr>) -> Actor {
    Actor {
        user_id: format!("org:{org_id}"),
        client_id: Some("ward-exchange".to_owned()),
        network,
        ..Actor::default()
    }
}

/// Writes an exchange audit record: `event` (`message_received`,
/// `message_rejected`, `message_queued`, `message_delivered`,
/// `message_failed`, `message_dispensed`, `message_queue_failed`) with its
/// details, and `reason` for a failure.
async fn audit_exchange(
    state: &AppState,
    actor: &Actor,
    event: &str,
    outcome: Outcome,
    reason: Option<&str>,
    details: &[(&str, &str)],
) {
    let auditor = &state.engine.auditor;
    let mut record = auditor.record(EventType::Rest, Action::Execute, outcome);
    record.subtypes.push(Subtype::Operation);
    record.agents.push(actor.agent());
    record.detail.insert("event".to_owned(), event.to_owned());
    for (name, value) in details {
        let value: String = value
            .chars()
            .filter(|c| (' '..='~').contains(c))
            .take(256)
            .collect();
        record.detail.insert((*name).to_owned(), value);
    }
    if let Some(reason) = reason {
        record.outcome_desc = Some(reason.chars().filter(char::is_ascii).take(512).collect());
    }
    if let Err(err) = auditor.commit(record).await {
        tracing::error!(
            target: "ward::exchange",
            status = err.status.as_u16(),
            event,
            "writing an exchange audit record failed"
        );
    }
}
