//! The per-request device gate. A request whose token is bound to a device
//! is rejected when the device is revoked or unknown (401 `invalid_token`)
//! or not compliant (403 with an OperationOutcome naming each failing
//! rule). The device is read from the store on every request, so a
//! revocation takes effect at once on every replica.
//!
//! Browsers enrolled through the web app are devices too: their session's
//! tokens name the device, so a revoked browser is refused here like a
//! phone. The posture rules do not apply to them. The kind the server
//! recorded at enrollment ([`ward_device::DeviceKind`]) tells a browser
//! from a phone, never the posture a device reports.

use std::net::IpAddr;

use time::OffsetDateTime;
use ward_device::{Compliance, DeviceId, PosturePolicy, registry};
use ward_fhir::{IssueType, OperationOutcome, OutcomeIssue};

use super::events::{self, DeviceEvent};
use super::{blocking, device_error};
use crate::AppState;
use crate::audit::{Actor, alerts};
use crate::auth::Principal;
use crate::error::FhirError;

/// The gate's decision about a device.
enum Verdict {
    Allowed,
    Revoked(String),
    NonCompliant(String, Compliance),
}

/// Checks the device a principal's token is bound to; tokens bound to no
/// device pass. Rejections are audited and raise an alert.
///
/// # Errors
///
/// 401 for a revoked or unknown device, 403 for a non-compliant one, 500
/// when the store fails.
pub async fn check(
    state: &AppState,
    principal: &Principal,
    peer: Option<IpAddr>,
) -> Result<(), FhirError> {
    let Some(device) = principal_device(principal) else {
        return Ok(());
    };
    check_device(state, principal, device, peer).await
}

/// The device a principal's token is bound to.
fn principal_device(principal: &Principal) -> Option<&str> {
    principal.device.as_deref()
}

/// Checks one device for a request of `principal`.
///
/// # Errors
///
/// As [`check`].
pub async fn check_device(
    state: &AppState,
    principal: &Principal,
    device: &str,
    peer: Option<IpAddr>,
) -> Result<(), FhirError> {
    let service = state.devices.clone();
    let store = state.engine.store.clone();
    let id_text = device.to_owned();
    let verdict = blocking(move || {
        let default_policy;
        let policy = match &service {
            Some(service) => &service.policy,
            None => {
                default_policy = PosturePolicy::default();
                &default_policy
            }
        };
        let Ok(id) = DeviceId::parse(&id_text) else {
            return Ok(Verdict::Revoked(id_text));
        };
        let Some(device) = registry::load(store.as_ref(), &id).map_err(device_error)? else {
            return Ok(Verdict::Revoked(id_text));
        };
        if device.revocation.is_some() {
            return Ok(Verdict::Revoked(id_text));
        }
        let now = OffsetDateTime::now_utc();
        let compliance = device.compliance(policy, now);
        if !compliance.compliant {
            return Ok(Verdict::NonCompliant(id_text, compliance));
        }
        if let Err(error) = registry::note_sync(store.as_ref(), &device, now) {
            tracing::warn!(target: "ward::device", device = %id, %error, "recording the last sync time failed");
        }
        Ok(Verdict::Allowed)
    })
    .await?;
    let mut actor = Actor::from_principal(principal, peer);
    actor.device_id = Some(device.to_owned());
    match verdict {
        Verdict::Allowed => Ok(()),
        Verdict::Revoked(id) => {
            let reason = format!("device {id} is revoked or unknown");
            record_revoked(state, &actor, &id, &reason).await?;
            Err(FhirError::unauthorized("invalid_token", &reason))
        }
        Verdict::NonCompliant(id, compliance) => {
            let rules: Vec<&str> = compliance
                .failures
                .iter()
                .map(|f| f.rule.as_str())
                .collect();
            events::record(
                state,
                DeviceEvent::NonCompliantRejected,
                &actor,
                &[
                    ("reason", format!("device {id} is not compliant")),
                    ("failed_rules", rules.join(",")),
                ],
            )
            .await?;
            alerts::raise(
                &state.engine.auditor,
                "noncompliant_device",
                Some(&actor),
                &[
                    ("user", principal.subject.clone()),
                    ("device", id.clone()),
                    ("failed_rules", rules.join(",")),
                ],
            )
            .await;
            Err(non_compliant(&id, &compliance))
        }
    }
}

/// Records a request rejected because `device` is revoked or unknown: a
/// `revoked_device_rejected` device event carrying the device id, and the
/// `revoked_device` alert. `actor` is the party that made the request; its
/// user id names the alert's `user`.
///
/// # Errors
///
/// 500 when the record cannot be written and `audit_failure` is `deny`.
pub async fn record_revoked(
    state: &AppState,
    actor: &Actor,
    device: &str,
    reason: &str,
) -> Result<(), FhirError> {
    crate::metrics::record_auth_failure("revoked_device");
    let mut actor = actor.clone();
    actor.device_id = Some(device.to_owned());
    events::record(
        state,
        DeviceEvent::RevokedDeviceRejected,
        &actor,
        &[("reason", reason.to_owned())],
    )
    .await?;
    alerts::raise(
        &state.engine.auditor,
        "revoked_device",
        Some(&actor),
        &[
            ("user", actor.user_id.clone()),
            ("device", device.to_owned()),
        ],
    )
    .await;
    Ok(())
}

/// Builds the 403 for a non-compliant device: a summary issue, then one
/// issue per failing rule.
fn non_compliant(id: &str, compliance: &Compliance) -> FhirError {
    let summary = format!("device {id} is not compliant: {}", compliance.summary());
    let mut issues = vec![OutcomeIssue::error(IssueType::Forbidden, summary)];
    issues.extend(compliance.failures.iter().map(|failure| {
        OutcomeIssue::error(
            IssueType::Forbidden,
            format!("{}: {}", failure.rule, failure.message),
        )
    }));
    FhirError::with_outcome(http::StatusCode::FORBIDDEN, OperationOutcome { issues })
}
