//! Security alerts: a user touching many patients in a short time,
//! break-the-glass, repeated sign-in failures, a revoked token in use, and
//! an audit log that fails verification at startup.
//!
//! An alert is an audit record (event type Security Alert), a `warn` line on
//! the `ward::alert` target with structured fields, and optionally a JSON
//! POST to a webhook. None of them carries patient ids or request content.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::json;
use ward_audit::record::{Action, EventType, Outcome, Subtype};

use crate::audit::{Actor, Auditor};

/// The alert thresholds (`[alerts]` in `ward.toml`).
#[derive(Debug, Clone)]
pub struct AlertSettings {
    /// Alert when one user touches more than this many distinct patients…
    pub distinct_patients: usize,
    /// …within this window.
    pub patient_window: Duration,
    /// Alert when an account or address fails to sign in this many times…
    pub sign_in_failures: usize,
    /// …within this window.
    pub sign_in_window: Duration,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            distinct_patients: 50,
            patient_window: Duration::from_secs(10 * 60),
            sign_in_failures: 5,
            sign_in_window: Duration::from_secs(15 * 60),
        }
    }
}

/// The webhook that receives alerts besides the log.
pub struct Webhook {
    /// The HTTPS URL.
    pub url: String,
    /// The client, trusting the configured CA.
    pub client: reqwest::Client,
}

/// The alert rules and their sliding windows.
#[derive(Default)]
pub struct Alerts {
    settings: AlertSettings,
    webhook: Option<Webhook>,
    patients: Mutex<HashMap<String, UserWindow>>,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

#[derive(Default)]
struct UserWindow {
    seen: VecDeque<(Instant, String)>,
    alerted: Option<Instant>,
}

impl Alerts {
    /// Creates the rules with `settings`, posting to `webhook` if set.
    pub fn new(settings: AlertSettings, webhook: Option<Webhook>) -> Self {
        Self {
            settings,
            webhook,
            ..Self::default()
        }
    }

    /// Notes that `user` received data of `patients`; returns the number of
    /// distinct patients in the window when it first exceeds the threshold.
    pub fn observe_patients(&self, user: &str, patients: &[String]) -> Option<usize> {
        if patients.is_empty() {
            return None;
        }
        let now = Instant::now();
        let window = self.settings.patient_window;
        let mut map = self.patients.lock();
        let entry = map.entry(user.to_owned()).or_default();
        for patient in patients {
            entry.seen.push_back((now, patient.clone()));
        }
        while entry
            .seen
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > window)
        {
            entry.seen.pop_front();
        }
        let distinct: std::collections::HashSet<&String> =
            entry.seen.iter().map(|(_, patient)| patient).collect();
        let count = distinct.len();
        let quiet = entry
            .alerted
            .is_none_or(|at| now.duration_since(at) > window);
        if count > self.settings.distinct_patients && quiet {
            entry.alerted = Some(now);
            return Some(count);
        }
        None
    }

    /// Notes a failed sign-in for `key`; returns the count in the window
    /// when it reaches the threshold.
    fn observe_failure(&self, key: String) -> Option<usize> {
        let now = Instant::now();
        let window = self.settings.sign_in_window;
        let mut map = self.failures.lock();
        let entry = map.entry(key).or_default();
        entry.push_back(now);
        while entry
            .front()
            .is_some_and(|at| now.duration_since(*at) > window)
        {
            entry.pop_front();
        }
        (entry.len() == self.settings.sign_in_failures).then_some(entry.len())
    }
}

/// Raises an alert: an audit record, a `warn` log line and the webhook.
/// `fields` are server-generated key/value pairs such as a user id or a
/// count, never patient ids.
pub async fn raise(
    auditor: &Auditor,
    rule: &'static str,
    actor: Option<&Actor>,
    fields: &[(&str, String)],
) {
    crate::metrics::record_alert(rule);
    let text: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    tracing::warn!(
        target: "ward::alert",
        rule,
        fields = %text.join(" "),
        "security alert"
    );
    let mut record = auditor.record(EventType::Security, Action::Execute, Outcome::Success);
    record.subtypes.push(Subtype::UseOfRestrictedFunction);
    let system = Actor {
        user_id: "ward".to_owned(),
        ..Actor::default()
    };
    record.agents.push(actor.unwrap_or(&system).agent());
    record.detail.insert("alert".to_owned(), rule.to_owned());
    for (key, value) in fields {
        let value: String = value
            .chars()
            .filter(|c| (' '..='~').contains(c))
            .take(256)
            .collect();
        record.detail.insert((*key).to_owned(), value);
    }
    if let Err(err) = auditor.commit(record).await {
        tracing::error!(target: "ward::audit", status = err.status.as_u16(), rule, "recording an alert failed");
    }
    if let Some(webhook) = &auditor.alerts.webhook {
        let mut body = json!({ "rule": rule, "source": auditor.source.observer });
        for (key, value) in fields {
            body[*key] = json!(value);
        }
        let sent = webhook
            .client
            .post(&webhook.url)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => tracing::error!(
                target: "ward::alert",
                rule,
                status = response.status().as_u16(),
                "the alert webhook rejected an alert"
            ),
            Err(error) => tracing::error!(
                target: "ward::alert",
                rule,
                %error,
                "sending an alert to the webhook failed"
            ),
        }
    }
}

/// Runs the distinct-patients rule for a read that returned `patients`.
pub async fn patients_read(auditor: &Auditor, actor: &Actor, patients: &[String]) {
    if let Some(count) = auditor.alerts.observe_patients(&actor.user_id, patients) {
        let minutes = auditor.alerts.settings.patient_window.as_secs() / 60;
        raise(
            auditor,
            "distinct_patients",
            Some(actor),
            &[
                ("user", actor.user_id.clone()),
                ("patients", count.to_string()),
                ("window_minutes", minutes.to_string()),
            ],
        )
        .await;
    }
}

/// Runs the sign-in failure rule, per account and per address.
pub async fn sign_in_failed(state: &crate::AppState, user: Option<&str>, network: Option<IpAddr>) {
    let auditor = &state.engine.auditor;
    let mut keys = Vec::new();
    if let Some(user) = user {
        keys.push(("user", user.to_owned()));
    }
    if let Some(address) = network {
        keys.push(("address", address.to_string()));
    }
    for (kind, value) in keys {
        if let Some(count) = auditor.alerts.observe_failure(format!("{kind}:{value}")) {
            raise(
                auditor,
                "sign_in_failures",
                None,
                &[(kind, value), ("failures", count.to_string())],
            )
            .await;
        }
    }
}
