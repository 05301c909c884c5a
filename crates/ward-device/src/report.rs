//! The lost-device report: what a lost or stolen device may still hold.
//!
//! It combines the device's last known posture, check-in and sync with the
//! patients whose data the device fetched, taken from the audit trail (the
//! records whose requesting agent carries the device id), and whether the
//! device confirmed its wipe.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use ward_audit::record::{Action, Entity, EventType, Outcome};
use ward_audit::{AuditRecord, ChainEntry};
use ward_store::Store;

use crate::error::{DeviceError, Result};
use crate::id::DeviceId;
use crate::policy::{Compliance, PosturePolicy};
use crate::registry::{self, Device, DeviceStatus, RevokeReason};

/// A patient whose data the device fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatientAccess {
    /// The patient's logical id.
    pub patient: String,
    /// The number of audit records of successful reads naming the patient.
    pub reads: u64,
    /// The first such read.
    #[serde(with = "time::serde::rfc3339")]
    pub first_read: OffsetDateTime,
    /// The last such read.
    #[serde(with = "time::serde::rfc3339")]
    pub last_read: OffsetDateTime,
}

/// The lost-device report.
#[derive(Debug, Clone, Serialize)]
pub struct LostDeviceReport {
    /// The device id.
    pub device_id: DeviceId,
    /// The device name.
    pub name: String,
    /// The owner's sign-in name.
    pub user: String,
    /// `active` or `revoked`.
    pub status: DeviceStatus,
    /// The revocation reason.
    pub reason: Option<RevokeReason>,
    /// When the device was revoked.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Whether the last posture reported encrypted storage.
    pub storage_encrypted: Option<bool>,
    /// Whether the last posture reported a screen lock.
    pub screen_lock: Option<bool>,
    /// The operating system and version of the last posture.
    pub os: Option<String>,
    /// Compliance when the report was made.
    pub compliance: Compliance,
    /// The last check-in.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_checkin: Option<OffsetDateTime>,
    /// The last FHIR request: the later of the recorded sync time and the
    /// newest FHIR REST audit record of the device. Check-ins, renewals,
    /// wipe confirmations and rejected requests do not count.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_sync: Option<OffsetDateTime>,
    /// When the wipe was requested.
    #[serde(with = "time::serde::rfc3339::option")]
    pub wipe_requested_at: Option<OffsetDateTime>,
    /// Whether the device confirmed the wipe.
    pub wipe_confirmed: bool,
    /// When the server received the confirmation.
    #[serde(with = "time::serde::rfc3339::option")]
    pub wipe_confirmed_at: Option<OffsetDateTime>,
    /// The wipe time the device reported, when it was plausible (see
    /// [`registry::confirm_wipe`]).
    #[serde(with = "time::serde::rfc3339::option")]
    pub wiped_at: Option<OffsetDateTime>,
    /// The patients whose data the device fetched, by patient id.
    pub patients: Vec<PatientAccess>,
    /// The number of audit records attributed to the device.
    pub audit_records: u64,
    /// When the report was made.
    #[serde(with = "time::serde::rfc3339")]
    pub generated_at: OffsetDateTime,
}

/// Collects the audit records of one device into a report.
pub struct ReportBuilder {
    device: Device,
    patients: BTreeMap<String, PatientAccess>,
    last_seen: Option<OffsetDateTime>,
    audit_records: u64,
}

impl ReportBuilder {
    /// Starts a report for `device`.
    pub fn new(device: Device) -> Self {
        Self {
            device,
            patients: BTreeMap::new(),
            last_seen: None,
            audit_records: 0,
        }
    }

    /// Adds one audit record; records of other devices are ignored.
    pub fn add(&mut self, record: &AuditRecord) {
        let id = self.device.id().as_str();
        let ours = record
            .agents
            .iter()
            .any(|agent| agent.requestor && agent.device_id.as_deref() == Some(id));
        if !ours {
            return;
        }
        self.audit_records += 1;
        if record.event_type == EventType::Rest {
            self.last_seen = self.last_seen.max(Some(record.recorded));
        }
        if record.action != Action::Read || record.outcome != Outcome::Success {
            return;
        }
        for entity in &record.entities {
            let Entity::Patient { reference } = entity else {
                continue;
            };
            let Some(patient) = reference.strip_prefix("Patient/") else {
                continue;
            };
            let entry = self
                .patients
                .entry(patient.to_owned())
                .or_insert_with(|| PatientAccess {
                    patient: patient.to_owned(),
                    reads: 0,
                    first_read: record.recorded,
                    last_read: record.recorded,
                });
            entry.reads += 1;
            entry.first_read = entry.first_read.min(record.recorded);
            entry.last_read = entry.last_read.max(record.recorded);
        }
    }

    /// Finishes the report under `policy` at `now`.
    pub fn finish(self, policy: &PosturePolicy, now: OffsetDateTime) -> LostDeviceReport {
        let device = self.device;
        let posture = device.record.last_posture.as_ref();
        let revocation = device.revocation.as_ref();
        LostDeviceReport {
            device_id: device.record.id.clone(),
            name: device.record.name.clone(),
            user: device.record.username.clone(),
            status: device.status(),
            reason: revocation.and_then(|r| r.reason),
            revoked_at: revocation.map(|r| r.revoked_at),
            storage_encrypted: posture.map(|p| p.storage_encrypted),
            screen_lock: posture.map(|p| p.screen_lock),
            os: posture.map(|p| format!("{} {}", p.os, p.os_version)),
            compliance: device.compliance(policy, now),
            last_checkin: device.record.last_checkin,
            last_sync: device.last_sync.max(self.last_seen),
            wipe_requested_at: revocation.and_then(|r| r.wipe_requested_at),
            wipe_confirmed: device.wipe.is_some(),
            wipe_confirmed_at: device.wipe.as_ref().map(|w| w.confirmed_at),
            wiped_at: device.wipe.as_ref().and_then(|w| w.wiped_at),
            patients: self.patients.into_values().collect(),
            audit_records: self.audit_records,
            generated_at: now,
        }
    }
}

/// Audit rows read per store call while building a report.
const REPORT_BATCH: usize = 1000;

/// Builds the lost-device report of `id` from the registry and the audit
/// log of `store`.
///
/// # Errors
///
/// An unknown device, a store failure, or an audit row that does not
/// decode.
// NOTE: this reads every audit row once. On a large log an index of audit
// records by device would make the report cheaper.
pub fn build(
    store: &dyn Store,
    id: &DeviceId,
    policy: &PosturePolicy,
    now: OffsetDateTime,
) -> Result<LostDeviceReport> {
    let device = registry::require(store, id)?;
    let mut builder = ReportBuilder::new(device);
    let mut from = 0;
    loop {
        let rows = store.audit_rows(from, REPORT_BATCH)?;
        let Some(last) = rows.last() else {
            break;
        };
        from = last.seq + 1;
        for row in &rows {
            let entry = ChainEntry::from_canonical(&row.canonical)
                .map_err(|_| DeviceError::Corrupt("audit"))?;
            builder.add(&entry.record);
        }
        if rows.len() < REPORT_BATCH {
            break;
        }
    }
    Ok(builder.finish(policy, now))
}

fn when(at: Option<OffsetDateTime>) -> String {
    at.and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_else(|| "never".to_owned())
}

fn yes_no(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    }
}

impl LostDeviceReport {
    /// Renders the report as plain text for a terminal or a printout.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let reason = self.reason.map_or("-", RevokeReason::as_str);
        let _ = writeln!(out, "Lost-device report for {}", self.device_id);
        let _ = writeln!(out, "Generated:          {}", when(Some(self.generated_at)));
        let _ = writeln!(out, "Device name:        {}", self.name);
        let _ = writeln!(out, "User:               {}", self.user);
        let _ = writeln!(
            out,
            "Status:             {} (reason: {reason}, revoked: {})",
            self.status.as_str(),
            when(self.revoked_at)
        );
        let _ = writeln!(
            out,
            "Operating system:   {}",
            self.os.as_deref().unwrap_or("unknown")
        );
        let _ = writeln!(
            out,
            "Storage encrypted:  {}",
            yes_no(self.storage_encrypted)
        );
        let _ = writeln!(out, "Screen lock:        {}", yes_no(self.screen_lock));
        let compliance = if self.compliance.compliant {
            "compliant".to_owned()
        } else {
            format!("not compliant: {}", self.compliance.summary())
        };
        let _ = writeln!(out, "Compliance:         {compliance}");
        let _ = writeln!(out, "Last check-in:      {}", when(self.last_checkin));
        let _ = writeln!(out, "Last sync:          {}", when(self.last_sync));
        let _ = writeln!(out, "Wipe requested:     {}", when(self.wipe_requested_at));
        let wipe = if self.wipe_confirmed {
            format!(
                "yes, wiped at {} (confirmed {})",
                when(self.wiped_at),
                when(self.wipe_confirmed_at)
            )
        } else {
            "no".to_owned()
        };
        let _ = writeln!(out, "Wipe confirmed:     {wipe}");
        let _ = writeln!(
            out,
            "Patients fetched:   {} (from {} audit records of this device)",
            self.patients.len(),
            self.audit_records
        );
        for access in &self.patients {
            let _ = writeln!(
                out,
                "  Patient/{}  reads: {}  first: {}  last: {}",
                access.patient,
                access.reads,
                when(Some(access.first_read)),
                when(Some(access.last_read))
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use time::Duration;
    use ward_audit::record::{Agent, AgentKind, EventType, Source, Subtype};

    use super::*;
    use crate::registry::tests::enrolled;
    use crate::registry::{RevokeReason, confirm_wipe, revoke};
    use crate::store::tests::temp_store;

    fn read_record(device: Option<&str>, patients: &[&str], at: OffsetDateTime) -> AuditRecord {
        let source = Source {
            observer: "ward".into(),
            site: None,
        };
        let mut record =
            AuditRecord::new(EventType::Rest, Action::Read, at, Outcome::Success, source);
        record.subtypes.push(Subtype::Search);
        let mut agent = Agent::new(AgentKind::User);
        agent.requestor = true;
        agent.user_id = Some("u1".into());
        agent.device_id = device.map(str::to_owned);
        record.agents.push(agent);
        for patient in patients {
            record.entities.push(Entity::patient(patient).unwrap());
        }
        record
    }

    #[test]
    fn report_lists_patients_fetched_by_the_device() {
        let (_dir, store) = temp_store();
        let now = OffsetDateTime::now_utc();
        let device = enrolled(&*store, now);
        let id = device.id().as_str().to_owned();
        let t1 = now + Duration::minutes(1);
        let t2 = now + Duration::minutes(2);
        let mut builder = ReportBuilder::new(device);
        builder.add(&read_record(Some(&id), &["p1", "p2"], t1));
        builder.add(&read_record(Some(&id), &["p1"], t2));
        builder.add(&read_record(None, &["p3"], t2));
        builder.add(&read_record(
            Some("ffffffffffffffffffffffffffffffff"),
            &["p4"],
            t2,
        ));
        let mut denied = read_record(Some(&id), &["p5"], t2);
        denied.outcome = Outcome::MinorFailure;
        builder.add(&denied);
        let report = builder.finish(&PosturePolicy::default(), t2);

        let ids: Vec<&str> = report.patients.iter().map(|p| p.patient.as_str()).collect();
        assert_eq!(ids, vec!["p1", "p2"]);
        assert_eq!(report.patients[0].reads, 2);
        assert_eq!(report.patients[0].first_read, t1);
        assert_eq!(report.patients[0].last_read, t2);
        assert_eq!(report.audit_records, 3);
        assert_eq!(report.last_sync, Some(t2));
        assert_eq!(report.storage_encrypted, Some(true));
        assert!(!report.wipe_confirmed);
    }

    #[test]
    fn last_sync_ignores_device_events() {
        let (_dir, store) = temp_store();
        let now = OffsetDateTime::now_utc();
        let device = enrolled(&*store, now);
        let id = device.id().as_str().to_owned();
        let fetched = now + Duration::minutes(1);
        let confirmed = now + Duration::minutes(5);
        let mut builder = ReportBuilder::new(device);
        builder.add(&read_record(Some(&id), &["p1"], fetched));
        let mut wipe = read_record(Some(&id), &[], confirmed);
        wipe.event_type = EventType::Device;
        wipe.action = Action::Execute;
        builder.add(&wipe);
        let report = builder.finish(&PosturePolicy::default(), confirmed);
        assert_eq!(report.last_sync, Some(fetched));
        assert_eq!(report.audit_records, 2);
    }

    #[test]
    fn report_shows_confirmed_wipe() {
        let (_dir, store) = temp_store();
        let now = OffsetDateTime::now_utc();
        let device = enrolled(&*store, now);
        revoke(&*store, device.id(), Some(RevokeReason::Lost), "admin", now).unwrap();
        let wiped = confirm_wipe(&*store, device.id(), now, now).unwrap();
        let report = ReportBuilder::new(wiped).finish(&PosturePolicy::default(), now);
        assert!(report.wipe_confirmed);
        assert_eq!(report.status, DeviceStatus::Revoked);
        assert_eq!(report.reason, Some(RevokeReason::Lost));

        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["wipe_confirmed"], true);
        assert_eq!(json["status"], "revoked");
        assert_eq!(json["reason"], "lost");

        let text = report.to_text();
        assert!(text.contains("Wipe confirmed:     yes"), "{text}");
        assert!(text.contains("Storage encrypted:  yes"), "{text}");
        assert!(text.contains("Patients fetched:   0"), "{text}");
    }

    #[test]
    fn build_reads_the_stored_audit_log() {
        let (_dir, store) = temp_store();
        let now = OffsetDateTime::now_utc();
        let device = enrolled(&*store, now);
        let id = device.id().clone();
        let mut tx = store.begin().unwrap();
        tx.append_audit(&read_record(Some(id.as_str()), &["p7"], now))
            .unwrap();
        tx.append_audit(&read_record(None, &["p8"], now)).unwrap();
        tx.commit().unwrap();
        let report = build(&*store, &id, &PosturePolicy::default(), now).unwrap();
        let ids: Vec<&str> = report.patients.iter().map(|p| p.patient.as_str()).collect();
        assert_eq!(ids, vec!["p7"]);
        assert_eq!(report.audit_records, 1);
        let unknown = DeviceId::generate();
        assert!(matches!(
            build(&*store, &unknown, &PosturePolicy::default(), now),
            Err(DeviceError::NotFound(_))
        ));
    }

    #[test]
    fn text_lists_each_patient() {
        let (_dir, store) = temp_store();
        let now = OffsetDateTime::now_utc();
        let device = enrolled(&*store, now);
        let id = device.id().as_str().to_owned();
        let mut builder = ReportBuilder::new(device);
        builder.add(&read_record(Some(&id), &["p1", "p9"], now));
        let text = builder.finish(&PosturePolicy::default(), now).to_text();
        assert!(text.contains("  Patient/p1  reads: 1"), "{text}");
        assert!(text.contains("  Patient/p9  reads: 1"), "{text}");
        assert!(text.contains("Wipe confirmed:     no"), "{text}");
    }
}
