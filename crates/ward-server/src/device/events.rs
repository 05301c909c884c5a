//! Audit records of device events: enrollment codes, enrollment, renewal,
//! check-ins that change compliance, revocation, wipe requests and
//! confirmations (DICOM 110108 Network Entry, subtypes Attach and Detach),
//! and requests rejected because of the device.

use std::net::IpAddr;

use ward_audit::record::{Action, EventType, Outcome, Subtype};

use crate::AppState;
use crate::audit::{Actor, ascii};

/// A device event for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEvent {
    /// An enrollment code was created.
    CodeCreated,
    /// A device enrolled.
    Enrolled,
    /// An enrollment was rejected (unknown or expired code, bad CSR).
    EnrollRejected,
    /// A device renewed its certificate.
    Renewed,
    /// A check-in changed the device's compliance.
    ComplianceChanged,
    /// An administrator revoked the device.
    Revoked,
    /// An administrator requested a wipe.
    WipeRequested,
    /// The device confirmed its wipe.
    WipeConfirmed,
    /// A request was rejected because the device is revoked.
    RevokedDeviceRejected,
    /// A request was rejected because the device is not compliant.
    NonCompliantRejected,
}

impl DeviceEvent {
    /// The `event` code in the record's detail.
    pub fn code(self) -> &'static str {
        match self {
            Self::CodeCreated => "enrollment_code_created",
            Self::Enrolled => "enrolled",
            Self::EnrollRejected => "enrollment_rejected",
            Self::Renewed => "certificate_renewed",
            Self::ComplianceChanged => "compliance_changed",
            Self::Revoked => "revoked",
            Self::WipeRequested => "wipe_requested",
            Self::WipeConfirmed => "wipe_confirmed",
            Self::RevokedDeviceRejected => "revoked_device_rejected",
            Self::NonCompliantRejected => "noncompliant_device_rejected",
        }
    }

    fn failed(self) -> bool {
        matches!(
            self,
            Self::EnrollRejected | Self::RevokedDeviceRejected | Self::NonCompliantRejected
        )
    }

    fn subtype(self) -> Subtype {
        match self {
            Self::Revoked | Self::WipeRequested | Self::WipeConfirmed => Subtype::Detach,
            Self::RevokedDeviceRejected | Self::NonCompliantRejected => Subtype::NodeAuthentication,
            _ => Subtype::Attach,
        }
    }
}

/// The party behind a device event.
pub(crate) fn actor(user_id: &str, device_id: Option<&str>, network: Option<IpAddr>) -> Actor {
    Actor {
        user_id: user_id.to_owned(),
        network,
        device_id: device_id.map(str::to_owned),
        ..Actor::default()
    }
}

/// Records a device event. `details` are server-generated pairs such as a
/// reason or a rule list, never codes or certificates. Failures to write
/// are logged, or fail the request when the audit policy denies.
///
/// # Errors
///
/// 500 when the record cannot be written and `audit_failure` is `deny`.
pub async fn record(
    state: &AppState,
    event: DeviceEvent,
    actor: &Actor,
    details: &[(&str, String)],
) -> Result<(), crate::error::FhirError> {
    let auditor = &state.engine.auditor;
    let outcome = if event.failed() {
        Outcome::MinorFailure
    } else {
        Outcome::Success
    };
    let mut record = auditor.record(EventType::Device, Action::Execute, outcome);
    record.subtypes.push(event.subtype());
    record.agents.push(actor.agent());
    record
        .detail
        .insert("event".to_owned(), event.code().to_owned());
    if let Some(device) = &actor.device_id {
        record.detail.insert("device".to_owned(), ascii(device));
    }
    for (key, value) in details {
        record.detail.insert((*key).to_owned(), ascii(value));
    }
    if event.failed() {
        record.outcome_desc = details
            .iter()
            .find(|(key, _)| *key == "reason")
            .map(|(_, value)| ascii(value));
    }
    tracing::info!(
        target: "ward::device",
        event = event.code(),
        device = actor.device_id.as_deref().unwrap_or("-"),
        "device event"
    );
    auditor.commit(record).await
}
