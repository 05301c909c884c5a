//! The delivery loop of the outbox: seals each due message afresh, posts
//! it to the recipient's `$process-message` over TLS that trusts only the
//! recipient's CA, and marks it `delivered` on a valid signed
//! acknowledgement. A failed attempt is retried with exponential backoff
//! and jitter; past its give-up time the message is marked `failed` and an
//! alert is raised.

use std::time::Duration;

use ward_audit::record::Outcome;
use ward_exchange::outbox::{self, OutboxMessage, Status};
use ward_exchange::{TrustEntry, envelope, message, trust};

use super::{ExchangeService, JOSE, audit_exchange, now_secs};
use crate::AppState;
use crate::audit::Actor;

/// How often the loop looks for due messages when nothing wakes it.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The result of one delivery attempt.
enum Attempt {
    /// A valid acknowledgement with this response code.
    Acknowledged(String),
    /// The attempt failed; the reason carries no PHI.
    Failed(String),
}

/// Runs the delivery loop until `stop` is cancelled.
pub async fn run_outbox(state: AppState, stop: tokio::sync::watch::Receiver<bool>) {
    let Some(exchange) = state.exchange.clone() else {
        return;
    };
    tracing::info!(target: "ward::exchange", org = %exchange.identity.id, "outbox delivery started");
    loop {
        if *stop.borrow() {
            break;
        }
        let store = state.engine.store.clone();
        let due = tokio::task::spawn_blocking(move || outbox::due(&*store, now_secs())).await;
        match due {
            Ok(Ok(messages)) => {
                for message in messages {
                    deliver_one(&state, &exchange, message).await;
                }
            }
            Ok(Err(error)) => {
                tracing::error!(target: "ward::exchange", %error, "reading the outbox failed");
            }
            Err(error) => {
                tracing::error!(target: "ward::exchange", %error, "reading the outbox failed");
            }
        }
        tokio::select! {
            () = exchange.wake.notified() => {}
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
    tracing::info!(target: "ward::exchange", "outbox delivery stopped");
}

/// Makes one attempt for `message` and stores the new state.
///
/// NOTE: messages are delivered one at a time, so a recipient that times
/// out delays every message behind it by up to the attempt timeout.
async fn deliver_one(state: &AppState, exchange: &ExchangeService, mut message: OutboxMessage) {
    let store = state.engine.store.clone();
    let recipient_id = message.recipient.clone();
    let entry = tokio::task::spawn_blocking(move || trust::get(&*store, &recipient_id))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let attempt = match entry {
        Some(entry) => attempt(exchange, &entry, &message).await,
        None => Attempt::Failed(format!(
            "organization {} is no longer in the trust bundle",
            message.recipient
        )),
    };
    message.attempts += 1;
    let now = now_secs();
    let actor = Actor {
        user_id: message.sender_user.clone(),
        client_id: Some("ward-exchange".to_owned()),
        ..Actor::default()
    };
    match attempt {
        Attempt::Acknowledged(code) if code == "ok" => {
            message.status = Status::Delivered;
            message.delivered_at = Some(now);
            message.response_code = Some(code);
            message.last_error = None;
            tracing::info!(target: "ward::exchange", message_id = %message.id, recipient = %message.recipient, attempts = message.attempts, "message delivered");
            audit_exchange(
                state,
                &actor,
                "message_delivered",
                Outcome::Success,
                None,
                &[
                    ("message_id", &message.id),
                    ("recipient", &message.recipient),
                ],
            )
            .await;
        }
        Attempt::Acknowledged(code) => {
            message.status = Status::Failed;
            message.last_error = Some(format!("the recipient answered {code}"));
            message.response_code = Some(code);
            fail(state, &actor, &message).await;
        }
        Attempt::Failed(reason) => {
            tracing::warn!(target: "ward::exchange", message_id = %message.id, recipient = %message.recipient, attempts = message.attempts, %reason, "delivery attempt failed");
            message.last_error = Some(reason);
            if now >= message.give_up_at {
                message.status = Status::Failed;
                fail(state, &actor, &message).await;
            } else {
                let settings = &exchange.settings;
                let delay = outbox::backoff_secs(
                    message.attempts,
                    settings.retry_base.as_secs(),
                    settings.retry_max.as_secs(),
                    outbox::random_jitter(),
                );
                let delay = i64::try_from(delay).unwrap_or(i64::MAX);
                message.next_attempt = now.saturating_add(delay).min(message.give_up_at);
            }
        }
    }
    let store = state.engine.store.clone();
    let saved = tokio::task::spawn_blocking(move || outbox::save(&*store, &message)).await;
    if !matches!(saved, Ok(Ok(()))) {
        tracing::error!(target: "ward::exchange", "saving the outbox state failed");
    }
}

/// Audits a failed message and raises the `exchange_delivery_failed` alert.
async fn fail(state: &AppState, actor: &Actor, message: &OutboxMessage) {
    let reason = message.last_error.clone().unwrap_or_default();
    audit_exchange(
        state,
        actor,
        "message_failed",
        Outcome::SeriousFailure,
        Some(&reason),
        &[
            ("message_id", &message.id),
            ("recipient", &message.recipient),
        ],
    )
    .await;
    crate::audit::alerts::raise(
        &state.engine.auditor,
        "exchange_delivery_failed",
        Some(actor),
        &[
            ("message_id", message.id.clone()),
            ("recipient", message.recipient.clone()),
            ("attempts", message.attempts.to_string()),
        ],
    )
    .await;
}

/// Seals and posts `message` once, and checks the acknowledgement.
async fn attempt(
    exchange: &ExchangeService,
    entry: &TrustEntry,
    message: &OutboxMessage,
) -> Attempt {
    let now = now_secs();
    let sealed = match envelope::seal(&exchange.identity, entry, &message.id, &message.bundle, now)
    {
        Ok(sealed) => sealed,
        Err(error) => return Attempt::Failed(format!("sealing failed: {error}")),
    };
    let client = match client_for(entry, exchange.settings.attempt_timeout) {
        Ok(client) => client,
        Err(reason) => return Attempt::Failed(reason),
    };
    let response = client
        .post(&entry.endpoint)
        .header(http::header::CONTENT_TYPE, JOSE)
        .body(sealed)
        .send()
        .await;
    let response = match response {
        Ok(response) => response,
        Err(error) => return Attempt::Failed(format!("posting failed: {}", error_chain(&error))),
    };
    let status = response.status();
    let body = match response.text().await {
        Ok(body) => body,
        Err(error) => return Attempt::Failed(format!("reading the answer failed: {error}")),
    };
    if status != http::StatusCode::OK {
        let reason = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|outcome| {
                outcome
                    .pointer("/issue/0/diagnostics")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        return Attempt::Failed(format!("the recipient answered {status}: {reason}"));
    }
    match envelope::verify_ack(&body, entry, &exchange.identity.id, &message.id, now_secs()) {
        Ok(response) => match message::response_code(&response) {
            Some(code) => Attempt::Acknowledged(code.to_owned()),
            None => Attempt::Failed("the acknowledgement has no response code".to_owned()),
        },
        Err(rejection) => Attempt::Failed(format!("invalid acknowledgement: {rejection}")),
    }
}

/// Builds an HTTPS client that trusts only the recipient's CA and follows
/// no redirects.
fn client_for(entry: &TrustEntry, timeout: Duration) -> Result<reqwest::Client, String> {
    let certificate = reqwest::Certificate::from_pem(entry.ca_pem.as_bytes())
        .map_err(|_| format!("the CA certificate of {} is not valid PEM", entry.org_id))?;
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(certificate)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()
        .map_err(|error| format!("building the HTTPS client failed: {error}"))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
