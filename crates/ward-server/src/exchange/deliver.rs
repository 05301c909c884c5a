//! The delivery loop of the outbox: seals each due message afresh, posts
//! it to the recipient's `$process-message` over mutual TLS (trusting only
//! the recipient's CA, presenting the organization's exchange client
//! certificate), and marks it `delivered` on a valid signed
//! acknowledgement. An attempt that transmitted the message without getting
//! a valid acknowledgement back marks it `sent`. A failed attempt is
//! retried with exponential backoff and jitter; past its give-up time the message is marked `failed` and an
//! alert is raised. A `fatal-error` acknowledgement or a permanent rejection
//! (a 4xx other than 408 and 429) marks it `failed` at once, with the
//! recipient's reason in `lastError`, and raises the alert too.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use ward_audit::record::Outcome;
use ward_exchange::identity::OrgClientCert;
use ward_exchange::outbox::{self, OutboxMessage, Status};
use ward_exchange::{TrustEntry, envelope, message, trust};

use super::{ExchangeService, JOSE, audit_exchange, now_secs};
use crate::AppState;
use crate::audit::Actor;

/// How often the loop looks for due messages when nothing wakes it.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The maximum number of delivery attempts to one recipient at once.
const PER_RECIPIENT: usize = 4;

/// The time a delivery attempt keeps its message leased beyond the attempt
/// timeout, for the trust lookup, the audit records and the store writes
/// around the request.
const LEASE_MARGIN_SECS: i64 = 60;

/// The result of one delivery attempt.
enum Attempt {
    /// A valid acknowledgement with this response code, and the reason
    /// its OperationOutcome gives, if any (no PHI, see
    /// [`message::response_reason`]).
    Acknowledged(String, Option<String>),
    /// The recipient returned a status that a retry does not change
    /// (4xx other than 408 and 429). The reason carries no PHI.
    Rejected(String),
    /// The attempt failed before the message was transmitted (no
    /// connection, nothing to send); the reason carries no PHI.
    Failed(String),
    /// The message was transmitted (the request was written or the
    /// recipient responded), but no valid acknowledgement came back. The
    /// reason carries no PHI.
    Unacknowledged(String),
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
            Ok(Ok(messages)) => deliver_all(&state, &exchange, messages).await,
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

/// Delivers `messages` to every recipient at the same time. Each
/// recipient's messages start in the order they were queued, with up to
/// [`PER_RECIPIENT`] attempts at once, so they may be filed out of order.
/// The receiver files each message on its own, and the outbox lists
/// messages by their random ids, so no order was kept before either.
async fn deliver_all(state: &AppState, exchange: &ExchangeService, messages: Vec<OutboxMessage>) {
    let mut by_recipient: BTreeMap<String, Vec<OutboxMessage>> = BTreeMap::new();
    for message in messages {
        by_recipient
            .entry(message.recipient.clone())
            .or_default()
            .push(message);
    }
    let lanes = by_recipient.into_values().map(|mut queue| async move {
        queue.sort_by_key(|message| message.created);
        futures_util::stream::iter(queue)
            .for_each_concurrent(PER_RECIPIENT, |message| {
                deliver_one(state, exchange, message)
            })
            .await;
    });
    futures_util::future::join_all(lanes).await;
}

/// Makes one attempt for `due` and stores the new state. The message is
/// leased first (see [`outbox::lease`]), so replicas sharing the store
/// never send it at the same time, and the outcome is stored with
/// [`outbox::finish_attempt`], which never moves a status back.
///
/// NOTE: a pass of the loop waits for its slowest attempt, so a recipient
/// that times out delays the messages queued meanwhile for every recipient
/// by up to the attempt timeout.
async fn deliver_one(state: &AppState, exchange: &ExchangeService, due: OutboxMessage) {
    let store = state.engine.store.clone();
    let lease_secs = i64::try_from(exchange.settings.attempt_timeout.as_secs())
        .unwrap_or(i64::MAX)
        .saturating_add(LEASE_MARGIN_SECS);
    let id = due.id.clone();
    let leased =
        tokio::task::spawn_blocking(move || outbox::lease(&*store, &id, now_secs(), lease_secs))
            .await;
    let leased = match leased {
        Ok(Ok(Some(leased))) => leased,
        // Another replica took it, or its status changed since it was read.
        Ok(Ok(None)) => return,
        Ok(Err(error)) => {
            tracing::error!(target: "ward::exchange", message_id = %due.id, %error, "leasing an outbox message failed");
            return;
        }
        Err(error) => {
            tracing::error!(target: "ward::exchange", message_id = %due.id, %error, "leasing an outbox message failed");
            return;
        }
    };
    let mut message = leased.clone();
    let store = state.engine.store.clone();
    let recipient_id = message.recipient.clone();
    let entry = tokio::task::spawn_blocking(move || trust::get(&*store, &recipient_id))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let attempt = match entry {
        // An expired entry may be renewed with a new export, so this is
        // retried until the message gives up.
        Some(entry) if entry.not_after <= now_secs() => Attempt::Failed(
            ward_exchange::Error::ExpiredRecipient(entry.org_id.clone(), entry.not_after)
                .to_string(),
        ),
        Some(entry) => attempt(exchange, &entry, &message).await,
        None => Attempt::Failed(format!(
            "organization {} is no longer in the trust bundle",
            message.recipient
        )),
    };
    let transmitted = matches!(attempt, Attempt::Unacknowledged(_));
    let now = now_secs();
    let actor = Actor {
        user_id: message.sender_user.clone(),
        client_id: Some("ward-exchange".to_owned()),
        ..Actor::default()
    };
    match attempt {
        Attempt::Acknowledged(code, _) if code == "ok" => {
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
        Attempt::Acknowledged(code, reason) => {
            message.status = Status::Failed;
            message.last_error = Some(match reason {
                Some(reason) => format!("the recipient answered {code}: {reason}"),
                None => format!("the recipient answered {code}"),
            });
            message.response_code = Some(code);
            fail(state, &actor, &message).await;
        }
        Attempt::Rejected(reason) => {
            tracing::warn!(target: "ward::exchange", message_id = %message.id, recipient = %message.recipient, attempts = message.attempts, %reason, "the recipient rejected a message; not retrying");
            message.status = Status::Failed;
            message.last_error = Some(reason);
            fail(state, &actor, &message).await;
        }
        Attempt::Failed(reason) | Attempt::Unacknowledged(reason) => {
            if transmitted {
                message.status = Status::Sent;
            }
            tracing::warn!(target: "ward::exchange", message_id = %message.id, recipient = %message.recipient, attempts = message.attempts, transmitted, %reason, "delivery attempt failed");
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
    let saved =
        tokio::task::spawn_blocking(move || outbox::finish_attempt(&*store, &leased, &message))
            .await;
    if !matches!(saved, Ok(Ok(_))) {
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
    let Some(client_cert) = exchange.client_cert() else {
        return Attempt::Failed(
            "this server has no exchange client certificate; restart `ward serve` to issue one"
                .to_owned(),
        );
    };
    let client = match client_for(entry, &client_cert, exchange.settings.attempt_timeout) {
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
        // A timeout on an open connection comes after the request was
        // written, so the recipient may have filed the message.
        Err(error) if error.is_timeout() && !error.is_connect() => {
            return Attempt::Unacknowledged(format!("posting failed: {}", error_chain(&error)));
        }
        // NOTE: a connection that breaks while the request is written or
        // read (a rejected client certificate, a reset) counts as not
        // transmitted, although the recipient may have read the request.
        Err(error) => {
            return Attempt::Failed(format!("posting failed: {}", error_chain(&error)));
        }
    };
    let status = response.status();
    let body = match response.text().await {
        Ok(body) => body,
        Err(error) => {
            return Attempt::Unacknowledged(format!("reading the answer failed: {error}"));
        }
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
        let reason = format!("the recipient answered {status}: {reason}");
        // A 4xx other than a timeout or a rate limit comes back the same on
        // every retry.
        let permanent = status.is_client_error()
            && status != http::StatusCode::REQUEST_TIMEOUT
            && status != http::StatusCode::TOO_MANY_REQUESTS;
        return if permanent {
            Attempt::Rejected(reason)
        } else {
            Attempt::Unacknowledged(reason)
        };
    }
    match envelope::verify_ack(&body, entry, &exchange.identity.id, &message.id, now_secs()) {
        Ok(response) => match message::response_code(&response) {
            Some(code) => {
                Attempt::Acknowledged(code.to_owned(), message::response_reason(&response))
            }
            None => Attempt::Unacknowledged("the acknowledgement has no response code".to_owned()),
        },
        Err(rejection) => Attempt::Unacknowledged(format!("invalid acknowledgement: {rejection}")),
    }
}

/// Builds an HTTPS client that trusts only the recipient's CA, presents
/// the organization's client certificate and follows no redirects. The
/// connection (TCP and TLS) gets half of `timeout`, so a connection that
/// never opens fails as a connect error, and the delivery loop marks the
/// message as not transmitted.
fn client_for(
    entry: &TrustEntry,
    client_cert: &OrgClientCert,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    let certificate = reqwest::Certificate::from_pem(entry.ca_pem.as_bytes())
        .map_err(|_| format!("the CA certificate of {} is not valid PEM", entry.org_id))?;
    let identity =
        reqwest::Identity::from_pem(client_cert.identity_pem().as_bytes()).map_err(|_| {
            "the exchange client certificate does not load; restart `ward serve` to issue a new one"
                .to_owned()
        })?;
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(certificate)
        .identity(identity)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout / 2)
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
