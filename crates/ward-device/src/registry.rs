//! The device registry: one record per enrolled device, kept as sealed
//! key-value records in the store.
//!
//! State that different parties write lives in different records, so that
//! no read-modify-write of one party can undo another's: the device's own
//! record (enrollment, renewal, check-in), the revocation (administrators),
//! the wipe confirmation (the device) and the last sync time (the request
//! gate).

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use ward_store::Store;

use crate::code::CodeRecord;
use crate::error::{DeviceError, Result};
use crate::id::DeviceId;
use crate::policy::{Compliance, PosturePolicy};
use crate::posture::Posture;
use crate::store::{read_json, write_json};

/// Device records by device id.
pub const NS_DEVICE: &str = "device.record";
/// Revocations by device id.
pub const NS_REVOCATION: &str = "device.revocation";
/// Wipe confirmations by device id.
pub const NS_WIPE: &str = "device.wipe";
/// The last request of each device, by device id.
pub const NS_SYNC: &str = "device.last_sync";

/// Maximum device name length, in characters.
pub const MAX_NAME_LEN: usize = 64;

/// How often the last sync time is written at most, per device.
const SYNC_WRITE_INTERVAL: Duration = Duration::seconds(60);

/// How far a device's clock may differ from the server's when it reports
/// the time it wiped itself.
pub const WIPE_CLOCK_SKEW: Duration = Duration::minutes(5);

/// The reason a device was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevokeReason {
    /// The device was lost.
    Lost,
    /// The device was stolen.
    Stolen,
    /// The device is no longer used.
    Retired,
    /// The device or its key is believed compromised.
    Compromised,
}

impl RevokeReason {
    /// Every reason, in the order help texts list them.
    pub const ALL: [Self; 4] = [Self::Lost, Self::Stolen, Self::Retired, Self::Compromised];

    /// Returns the reason's code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lost => "lost",
            Self::Stolen => "stolen",
            Self::Retired => "retired",
            Self::Compromised => "compromised",
        }
    }

    /// Parses a reason code.
    ///
    /// # Errors
    ///
    /// [`DeviceError::Invalid`] naming the accepted codes.
    pub fn parse(text: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|reason| reason.as_str() == text)
            .ok_or_else(|| {
                DeviceError::Invalid(format!(
                    "unknown revocation reason {:?}; use lost, stolen, retired or compromised",
                    text.chars().take(32).collect::<String>()
                ))
            })
    }
}

/// The operating system name reserved for browsers enrolled through the
/// web app. A phone may not report it, so no phone can pass for a browser.
pub const BROWSER_OS: &str = "browser";

/// The kind of a device, recorded by the server at enrollment and never
/// taken from what a device reports at check-in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// A phone or tablet with a certificate from the organization's CA,
    /// subject to the posture policy.
    #[default]
    Phone,
    /// A browser bound to a non-extractable WebCrypto key through the web
    /// app. It has no posture to report, so the posture rules do not apply.
    Browser,
}

impl DeviceKind {
    /// Returns the kind's code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Phone => "phone",
            Self::Browser => "browser",
        }
    }
}

/// The device certificate currently issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateInfo {
    /// The serial number, lower-case hex.
    pub serial: String,
    /// The SHA-256 thumbprint of the DER certificate, base64url without
    /// padding (the `x5t#S256` of RFC 8705).
    pub thumbprint: String,
    /// The end of the certificate's validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// The device's own state: its posture reports and its certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The device id.
    pub id: DeviceId,
    /// The id of the user the device belongs to.
    pub user_id: String,
    /// That user's sign-in name.
    pub username: String,
    /// The name the device gave itself, such as "Alice's iPhone".
    pub name: String,
    /// The current certificate.
    pub certificate: CertificateInfo,
    /// Enrollment time.
    #[serde(with = "time::serde::rfc3339")]
    pub enrolled_at: OffsetDateTime,
    /// The last check-in (enrollment counts as one).
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_checkin: Option<OffsetDateTime>,
    /// The posture reported at the last check-in.
    pub last_posture: Option<Posture>,
    /// The compliance computed at the last check-in.
    pub compliance: Compliance,
    /// The kind of device enrolled. Records written before the field
    /// existed are phones.
    #[serde(default)]
    pub kind: DeviceKind,
}

/// An administrator's revocation of a device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revocation {
    /// When the device was revoked.
    #[serde(with = "time::serde::rfc3339")]
    pub revoked_at: OffsetDateTime,
    /// Why; `None` when a wipe request revoked the device.
    pub reason: Option<RevokeReason>,
    /// The revoking party: a user id, or `ward-cli`.
    pub revoked_by: String,
    /// When a wipe was requested. Every revocation requests one.
    #[serde(with = "time::serde::rfc3339::option")]
    pub wipe_requested_at: Option<OffsetDateTime>,
}

/// The device's confirmation that it erased its data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WipeConfirmation {
    /// When the server received the confirmation.
    #[serde(with = "time::serde::rfc3339")]
    pub confirmed_at: OffsetDateTime,
    /// The wipe time the device reported, kept only when it falls between
    /// the wipe request and the confirmation, give or take
    /// [`WIPE_CLOCK_SKEW`].
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub wiped_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SyncRecord {
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
}

/// A device: its own record with the revocation, wipe confirmation and last
/// sync stored beside it.
#[derive(Debug, Clone)]
pub struct Device {
    /// The device's own state.
    pub record: DeviceRecord,
    /// The revocation, when the device was revoked.
    pub revocation: Option<Revocation>,
    /// The wipe confirmation, once the device sent one.
    pub wipe: Option<WipeConfirmation>,
    /// The last request made with a token bound to the device.
    pub last_sync: Option<OffsetDateTime>,
}

/// `active` or `revoked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// The device may fetch data while it is compliant.
    Active,
    /// The device is rejected everywhere except check-in and wipe
    /// confirmation.
    Revoked,
}

impl DeviceStatus {
    /// Returns the status code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
        }
    }
}

/// A device as the admin API and `ward device show` present it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceSummary {
    /// The device id.
    pub device_id: DeviceId,
    /// The owner's sign-in name.
    pub user: String,
    /// The owner's user id.
    pub user_id: String,
    /// The device name.
    pub name: String,
    /// The kind of device enrolled: `phone` or `browser`.
    pub kind: DeviceKind,
    /// `active` or `revoked`.
    pub status: DeviceStatus,
    /// The revocation reason.
    pub reason: Option<RevokeReason>,
    /// When the device was revoked.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// The current certificate.
    pub certificate: CertificateInfo,
    /// Enrollment time.
    #[serde(with = "time::serde::rfc3339")]
    pub enrolled_at: OffsetDateTime,
    /// The last check-in.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_checkin: Option<OffsetDateTime>,
    /// The last request made with a token bound to the device.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_sync: Option<OffsetDateTime>,
    /// The posture of the last check-in.
    pub last_posture: Option<Posture>,
    /// Compliance now: the last posture and check-in age under the current
    /// policy.
    pub compliance: Compliance,
    /// When a wipe was requested.
    #[serde(with = "time::serde::rfc3339::option")]
    pub wipe_requested_at: Option<OffsetDateTime>,
    /// When the device confirmed its wipe.
    #[serde(with = "time::serde::rfc3339::option")]
    pub wipe_confirmed_at: Option<OffsetDateTime>,
}

impl Device {
    /// The device id.
    pub fn id(&self) -> &DeviceId {
        &self.record.id
    }

    /// `revoked` once an administrator revoked or wiped the device.
    pub fn status(&self) -> DeviceStatus {
        if self.revocation.is_some() {
            DeviceStatus::Revoked
        } else {
            DeviceStatus::Active
        }
    }

    /// True when the device must erase its data at its next contact.
    pub fn wipe_requested(&self) -> bool {
        self.revocation
            .as_ref()
            .is_some_and(|r| r.wipe_requested_at.is_some())
    }

    /// Checks the last posture and check-in age under `policy` at `now`.
    /// A browser device ([`DeviceKind::Browser`], decided at enrollment)
    /// has no posture and is always compliant; revocation still applies.
    pub fn compliance(&self, policy: &PosturePolicy, now: OffsetDateTime) -> Compliance {
        if self.record.kind == DeviceKind::Browser {
            return Compliance::exempt();
        }
        policy.evaluate(
            self.record.last_posture.as_ref(),
            self.record.last_checkin,
            now,
        )
    }

    /// Builds the summary shown to administrators.
    pub fn summary(&self, policy: &PosturePolicy, now: OffsetDateTime) -> DeviceSummary {
        let record = &self.record;
        let revocation = self.revocation.as_ref();
        DeviceSummary {
            device_id: record.id.clone(),
            user: record.username.clone(),
            user_id: record.user_id.clone(),
            name: record.name.clone(),
            kind: record.kind,
            status: self.status(),
            reason: revocation.and_then(|r| r.reason),
            revoked_at: revocation.map(|r| r.revoked_at),
            certificate: record.certificate.clone(),
            enrolled_at: record.enrolled_at,
            last_checkin: record.last_checkin,
            last_sync: self.last_sync,
            last_posture: record.last_posture.clone(),
            compliance: self.compliance(policy, now),
            wipe_requested_at: revocation.and_then(|r| r.wipe_requested_at),
            wipe_confirmed_at: self.wipe.as_ref().map(|w| w.confirmed_at),
        }
    }
}

/// Returns whether `c` may not appear in text shown to people: control
/// characters and the invisible bidirectional and formatting characters
/// that can make a name display as something else (Unicode TR36,
/// CVE-2021-42574).
pub fn is_hidden_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{061C}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// Checks a device name: 1 to 64 characters, no control, bidirectional
/// or other invisible formatting characters.
///
/// # Errors
///
/// [`DeviceError::Invalid`] naming the field and the limit.
pub fn check_name(name: &str) -> Result<()> {
    let length = name.chars().count();
    if name.trim().is_empty() || length > MAX_NAME_LEN {
        return Err(DeviceError::Invalid(format!(
            "name: the device name must be 1 to {MAX_NAME_LEN} characters"
        )));
    }
    if name.chars().any(is_hidden_char) {
        return Err(DeviceError::Invalid(
            "name: the device name must not contain control, bidirectional or other invisible \
             formatting characters; type the name again"
                .to_owned(),
        ));
    }
    Ok(())
}

/// The fields of a device being enrolled.
pub struct Enrollment<'a> {
    /// The id the certificate was issued for.
    pub id: DeviceId,
    /// The redeemed enrollment code.
    pub code: &'a CodeRecord,
    /// The device name.
    pub name: &'a str,
    /// The posture reported with the enrollment.
    pub posture: Posture,
    /// The issued certificate.
    pub certificate: CertificateInfo,
}

/// Stores a newly enrolled phone or tablet; its posture counts as a first
/// check-in.
///
/// # Errors
///
/// An invalid name or posture (the `browser` operating system included),
/// or a store failure.
pub fn enroll(
    store: &dyn Store,
    enrollment: Enrollment<'_>,
    policy: &PosturePolicy,
    now: OffsetDateTime,
) -> Result<Device> {
    enroll_as(store, enrollment, DeviceKind::Phone, policy, now)
}

/// Stores a newly enrolled device of `kind`. A phone's posture counts as a
/// first check-in and may not name the `browser` operating system; a
/// browser is exempt from the posture rules.
///
/// # Errors
///
/// An invalid name or posture, or a store failure.
pub fn enroll_as(
    store: &dyn Store,
    enrollment: Enrollment<'_>,
    kind: DeviceKind,
    policy: &PosturePolicy,
    now: OffsetDateTime,
) -> Result<Device> {
    check_name(enrollment.name)?;
    enrollment.posture.validate()?;
    if kind == DeviceKind::Phone {
        reject_browser_os(&enrollment.posture)?;
    }
    let compliance = match kind {
        DeviceKind::Phone => policy.evaluate(Some(&enrollment.posture), Some(now), now),
        DeviceKind::Browser => Compliance::exempt(),
    };
    let record = DeviceRecord {
        id: enrollment.id,
        user_id: enrollment.code.user_id.clone(),
        username: enrollment.code.username.clone(),
        name: enrollment.name.to_owned(),
        certificate: enrollment.certificate,
        enrolled_at: now,
        last_checkin: Some(now),
        last_posture: Some(enrollment.posture),
        compliance,
        kind,
    };
    if store.kv_get(NS_DEVICE, record.id.as_str())?.is_some() {
        return Err(DeviceError::Invalid(format!(
            "device {} already exists",
            record.id
        )));
    }
    write_json(store, NS_DEVICE, record.id.as_str(), &record, None)?;
    Ok(Device {
        record,
        revocation: None,
        wipe: None,
        last_sync: None,
    })
}

/// Loads a device.
///
/// # Errors
///
/// A store failure or a corrupt record.
pub fn load(store: &dyn Store, id: &DeviceId) -> Result<Option<Device>> {
    let Some(record) = read_json::<DeviceRecord>(store, NS_DEVICE, id.as_str())? else {
        return Ok(None);
    };
    Ok(Some(Device {
        revocation: read_json(store, NS_REVOCATION, id.as_str())?,
        wipe: read_json(store, NS_WIPE, id.as_str())?,
        last_sync: read_json::<SyncRecord>(store, NS_SYNC, id.as_str())?.map(|s| s.at),
        record,
    }))
}

/// Loads a device that must exist.
///
/// # Errors
///
/// [`DeviceError::NotFound`], a store failure or a corrupt record.
pub fn require(store: &dyn Store, id: &DeviceId) -> Result<Device> {
    load(store, id)?.ok_or_else(|| DeviceError::NotFound(id.to_string()))
}

/// Lists every device, ordered by id.
///
/// # Errors
///
/// A store failure or a corrupt record.
pub fn list(store: &dyn Store) -> Result<Vec<Device>> {
    let mut devices = Vec::new();
    for (key, _) in store.kv_list(NS_DEVICE, "")? {
        let id = DeviceId::parse(&key).map_err(|_| DeviceError::Corrupt(NS_DEVICE))?;
        if let Some(device) = load(store, &id)? {
            devices.push(device);
        }
    }
    Ok(devices)
}

/// Records a check-in. Returns the device and whether its compliance
/// changed. A revoked device's check-in is recorded too, so the report
/// shows its last posture.
///
/// # Errors
///
/// An unknown device, an invalid posture or a store failure.
pub fn checkin(
    store: &dyn Store,
    id: &DeviceId,
    posture: Posture,
    policy: &PosturePolicy,
    now: OffsetDateTime,
) -> Result<(Device, bool)> {
    posture.validate()?;
    reject_browser_os(&posture)?;
    let mut device = require(store, id)?;
    if device.record.kind == DeviceKind::Browser {
        return Err(DeviceError::Invalid(format!(
            "device {id} is a browser and has no posture to report; only phones check in"
        )));
    }
    let before = device.compliance(policy, now).compliant;
    let compliance = policy.evaluate(Some(&posture), Some(now), now);
    let changed = before != compliance.compliant || device.record.compliance != compliance;
    device.record.last_posture = Some(posture);
    device.record.last_checkin = Some(now);
    device.record.compliance = compliance;
    write_json(store, NS_DEVICE, id.as_str(), &device.record, None)?;
    Ok((device, changed))
}

/// Rejects a phone's posture that names the operating system reserved for
/// browsers, which would otherwise read as a browser device.
fn reject_browser_os(posture: &Posture) -> Result<()> {
    if posture.os == BROWSER_OS {
        return Err(DeviceError::InvalidPosture(format!(
            "os {BROWSER_OS:?} is reserved for browsers enrolled in the web app; report the \
             phone's operating system, such as ios or android"
        )));
    }
    Ok(())
}

/// Replaces the certificate of an active device.
///
/// # Errors
///
/// An unknown or revoked device, or a store failure.
pub fn renew(store: &dyn Store, id: &DeviceId, certificate: CertificateInfo) -> Result<Device> {
    let mut device = require(store, id)?;
    if device.revocation.is_some() {
        return Err(DeviceError::Revoked(id.to_string()));
    }
    device.record.certificate = certificate;
    write_json(store, NS_DEVICE, id.as_str(), &device.record, None)?;
    Ok(device)
}

/// Revokes a device and requests its wipe. A revocation is final: the
/// first one is stored with a compare-and-set, so of several concurrent
/// revokes exactly one wins, and a later revoke or wipe changes nothing.
///
/// # Errors
///
/// [`DeviceError::AlreadyRevoked`] when the device was revoked before (its
/// first reason and time stay), an unknown device or a store failure.
pub fn revoke(
    store: &dyn Store,
    id: &DeviceId,
    reason: Option<RevokeReason>,
    by: &str,
    now: OffsetDateTime,
) -> Result<Device> {
    let mut device = require(store, id)?;
    if let Some(existing) = &device.revocation {
        return Err(already_revoked(id, existing));
    }
    let revocation = Revocation {
        revoked_at: now,
        reason,
        revoked_by: by.to_owned(),
        wipe_requested_at: Some(now),
    };
    let mut bytes =
        serde_json::to_vec(&revocation).map_err(|_| DeviceError::Corrupt(NS_REVOCATION))?;
    let inserted = store.kv_insert_new(NS_REVOCATION, id.as_str(), &bytes, None);
    zeroize::Zeroize::zeroize(&mut bytes);
    if !inserted? {
        // Another revoke stored its record between the read and the insert.
        let winner = read_json::<Revocation>(store, NS_REVOCATION, id.as_str())?
            .ok_or(DeviceError::Corrupt(NS_REVOCATION))?;
        return Err(already_revoked(id, &winner));
    }
    device.revocation = Some(revocation);
    Ok(device)
}

/// Builds the error of a second revoke, naming the first revocation.
fn already_revoked(id: &DeviceId, revocation: &Revocation) -> DeviceError {
    DeviceError::AlreadyRevoked {
        id: id.to_string(),
        revoked_at: revocation
            .revoked_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| "an unknown time".to_owned()),
        reason: revocation
            .reason
            .map_or("wipe requested", RevokeReason::as_str),
    }
}

/// Records the device's confirmation that it wiped itself at `now`, the
/// server's time. The device's own `wiped_at` claim is kept only when it
/// lies between the wipe request and `now`, give or take
/// [`WIPE_CLOCK_SKEW`]. Only a device whose wipe was requested may confirm
/// one.
///
/// # Errors
///
/// An unknown device, no wipe requested, or a store failure.
pub fn confirm_wipe(
    store: &dyn Store,
    id: &DeviceId,
    wiped_at: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<Device> {
    let mut device = require(store, id)?;
    if !device.wipe_requested() {
        return Err(DeviceError::Invalid(format!(
            "no wipe was requested for device {id}"
        )));
    }
    let requested_at = device.revocation.as_ref().and_then(|r| r.wipe_requested_at);
    let confirmation = WipeConfirmation {
        confirmed_at: now,
        wiped_at: plausible_wipe_time(wiped_at, requested_at, now),
    };
    write_json(store, NS_WIPE, id.as_str(), &confirmation, None)?;
    device.wipe = Some(confirmation);
    Ok(device)
}

/// Returns `claimed` when it lies within [`WIPE_CLOCK_SKEW`] of the span
/// from the wipe request to `now`.
fn plausible_wipe_time(
    claimed: OffsetDateTime,
    requested_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Option<OffsetDateTime> {
    let after_request = requested_at.is_none_or(|at| claimed >= at - WIPE_CLOCK_SKEW);
    let before_now = claimed <= now + WIPE_CLOCK_SKEW;
    (after_request && before_now).then_some(claimed)
}

/// Notes a request made with a token bound to the device. The time is
/// written at most once a minute per device, so that busy devices do not
/// write on every request.
///
/// # Errors
///
/// A store failure.
pub fn note_sync(store: &dyn Store, device: &Device, now: OffsetDateTime) -> Result<()> {
    if device
        .last_sync
        .is_some_and(|at| now - at < SYNC_WRITE_INTERVAL)
    {
        return Ok(());
    }
    write_json(
        store,
        NS_SYNC,
        device.id().as_str(),
        &SyncRecord { at: now },
        None,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::code::{DEFAULT_CODE_TTL, create_code, redeem_code};
    use crate::store::tests::temp_store;

    pub(crate) fn posture() -> Posture {
        Posture {
            os: "android".into(),
            os_version: "14".into(),
            screen_lock: true,
            storage_encrypted: true,
            rooted: false,
            app_version: "0.1.0".into(),
        }
    }

    pub(crate) fn enrolled(store: &dyn Store, now: OffsetDateTime) -> Device {
        let new = create_code(store, "u1", "alice", "admin", DEFAULT_CODE_TTL, now).unwrap();
        let code = redeem_code(store, &new.code, now).unwrap();
        let enrollment = Enrollment {
            id: DeviceId::generate(),
            code: &code,
            name: "Alice's phone",
            posture: posture(),
            certificate: CertificateInfo {
                serial: "40aa".into(),
                thumbprint: "abc".into(),
                not_after: now + Duration::days(30),
            },
        };
        enroll(store, enrollment, &PosturePolicy::default(), now).unwrap()
    }

    #[test]
    fn enrolled_device_round_trips() {
        let (_dir, store) = temp_store();
        let now = OffsetDateTime::now_utc();
        let device = enrolled(&*store, now);
        let loaded = require(&*store, device.id()).unwrap();
        assert_eq!(loaded.record.username, "alice");
        assert_eq!(loaded.status(), DeviceStatus::Active);
        assert!(loaded.record.compliance.compliant);
        assert_eq!(list(&*store).unwrap().len(), 1);
    }

    #[test]
    fn checkin_reports_compliance_change() {
        let (_dir, store) = temp_store();
        let now = OffsetDateTime::now_utc();
        let policy = PosturePolicy::default();
        let device = enrolled(&*store, now);
        let (_, changed) = checkin(&*store, device.id(), posture(), &policy, now).unwrap();
        assert!(!changed);
        let mut unlocked = posture();
        unlocked.screen_lock = false;
        let (device, changed) = checkin(&*store, device.id(), unlocked, &policy, now).unwrap();
        assert!(changed);
        assert!(!device.compliance(&policy, now).compliant);
        let stored = require(&*store, device.id()).unwrap();
        assert_eq!(stored.record.compliance.failures[0].rule, "screen_lock");
    }

    #[test]
    fn phone_reporting_browser_os_is_refused_and_stays_a_phone() {
        let (_dir, store) = temp_store();
        let now = OffsetDateTime::now_utc();
        let policy = PosturePolicy::default();
        let device = enrolled(&*store, now);
        let mut disguised = posture();
        disguised.os = BROWSER_OS.into();
        disguised.screen_lock = false;
        let error = checkin(&*store, device.id(), disguised, &policy, now).unwrap_err();
        assert!(matches!(error, DeviceError::InvalidPosture(_)), "{error}");
        let stored = require(&*store, device.id()).unwrap();
        assert_eq!(stored.record.kind, DeviceKind::Phone);
        assert_eq!(stored.record.last_posture.unwrap().os, "android");
    }

    #[test]
    fn browser_kind_is_exempt_from_posture_rules_but_not_revocation() {
        let (_dir, store) = temp_store();
        let now = OffsetDateTime::now_utc();
        let policy = PosturePolicy::default();
        let new = create_code(&*store, "u1", "alice", "admin", DEFAULT_CODE_TTL, now).unwrap();
        let code = redeem_code(&*store, &new.code, now).unwrap();
        let mut browser_posture = posture();
        browser_posture.os = BROWSER_OS.into();
        browser_posture.screen_lock = false;
        let enrollment = Enrollment {
            id: DeviceId::generate(),
            code: &code,
            name: "Web browser",
            posture: browser_posture,
            certificate: CertificateInfo {
                serial: "none".into(),
                thumbprint: "jkt".into(),
                not_after: now + Duration::days(30),
            },
        };
        let device = enroll_as(&*store, enrollment, DeviceKind::Browser, &policy, now).unwrap();
        let later = now + Duration::days(60);
        assert!(device.compliance(&policy, later).compliant);
        let refused = checkin(&*store, device.id(), posture(), &policy, now);
        assert!(refused.is_err());
        revoke(&*store, device.id(), None, "admin", now).unwrap();
        let loaded = require(&*store, device.id()).unwrap();
        assert_eq!(loaded.record.kind, DeviceKind::Browser);
        assert_eq!(loaded.status(), DeviceStatus::Revoked);
    }

    #[test]
    fn checkin_survives_concurrent_revocation() {
        let (_dir, store) = temp_store();
        let now = OffsetDateTime::now_utc();
        let device = enrolled(&*store, now);
        revoke(&*store, device.id(), Some(RevokeReason::Lost), "admin", now).unwrap();
        let policy = PosturePolicy::default();
        let (after, _) = checkin(&*store, device.id(), posture(), &policy, now).unwrap();
        assert_eq!(after.status(), DeviceStatus::Revoked);
        assert!(after.wipe_requested());
        assert_eq!(
            require(&*store, device.id()).unwrap().status(),
            DeviceStatus::Revoked
        );
    }

    #[test]
    fn renew_rejects_revoked_device() {
        let (_dir, store) = temp_store();
        let now = OffsetDateTime::now_utc();
        let device = enrolled(&*store, now);
        let mut certificate = device.record.certificate.clone();
        certificate.thumbprint = "new".into();
        let renewed = renew(&*store, device.id(), certificate.clone()).unwrap();
        assert_eq!(renewed.record.certificate.thumbprint, "new");
        revoke(&*store, device.id(), None, "admin", now).unwrap();
        assert!(matches!(
            renew(&*store, device.id(), certificate),
            Err(DeviceError::Revoked(_))
        ));
    }

    #[test]
    fn wipe_confirmation_needs_a_request() {
        let (_dir, store) = temp_store();
        let now = OffsetDateTime::now_utc();
        let device = enrolled(&*store, now);
        assert!(confirm_wipe(&*store, device.id(), now, now).is_err());
        revoke(
            &*store,
            device.id(),
            Some(RevokeReason::Stolen),
            "admin",
            now,
        )
        .unwrap();
        let wiped = confirm_wipe(&*store, device.id(), now, now).unwrap();
        assert!(wiped.wipe.is_some());
        let summary = require(&*store, device.id())
            .unwrap()
            .summary(&PosturePolicy::default(), now);
        assert_eq!(summary.wipe_confirmed_at, Some(now));
        assert_eq!(summary.reason, Some(RevokeReason::Stolen));
    }

    #[test]
    fn wipe_confirmation_drops_implausible_claim() {
        let (_dir, store) = temp_store();
        let requested = OffsetDateTime::now_utc();
        let device = enrolled(&*store, requested);
        revoke(&*store, device.id(), None, "admin", requested).unwrap();
        let now = requested + Duration::minutes(10);
        let cases = [
            (now + Duration::days(365), None),
            (requested - Duration::days(1), None),
            (now + Duration::minutes(1), Some(now + Duration::minutes(1))),
            (
                requested + Duration::minutes(2),
                Some(requested + Duration::minutes(2)),
            ),
        ];
        for (claimed, kept) in cases {
            let wiped = confirm_wipe(&*store, device.id(), claimed, now).unwrap();
            let confirmation = wiped.wipe.unwrap();
            assert_eq!(confirmation.confirmed_at, now, "claimed {claimed}");
            assert_eq!(confirmation.wiped_at, kept, "claimed {claimed}");
            let stored = require(&*store, device.id()).unwrap().wipe.unwrap();
            assert_eq!(stored.wiped_at, kept, "claimed {claimed}");
        }
    }

    #[test]
    fn second_revocation_keeps_first_reason_and_time() {
        let (_dir, store) = temp_store();
        let now = OffsetDateTime::now_utc();
        let device = enrolled(&*store, now);
        revoke(
            &*store,
            device.id(),
            Some(RevokeReason::Stolen),
            "admin",
            now,
        )
        .unwrap();
        let later = now + Duration::hours(1);
        for reason in [Some(RevokeReason::Retired), None] {
            let error = revoke(&*store, device.id(), reason, "other", later).unwrap_err();
            assert!(
                matches!(
                    error,
                    DeviceError::AlreadyRevoked {
                        reason: "stolen",
                        ..
                    }
                ),
                "{error}"
            );
            assert!(error.to_string().contains("already revoked"), "{error}");
        }
        let revocation = require(&*store, device.id()).unwrap().revocation.unwrap();
        assert_eq!(revocation.revoked_at, now);
        assert_eq!(revocation.reason, Some(RevokeReason::Stolen));
        assert_eq!(revocation.revoked_by, "admin");
    }

    #[test]
    fn concurrent_revocations_have_one_winner() {
        let (_dir, store) = temp_store();
        let now = OffsetDateTime::now_utc();
        let device = enrolled(&*store, now);
        let id = device.id().clone();
        let results: Vec<Result<Device>> = std::thread::scope(|scope| {
            let handles: Vec<_> = RevokeReason::ALL
                .iter()
                .cycle()
                .take(8)
                .map(|reason| {
                    let (store, id) = (&store, &id);
                    scope.spawn(move || revoke(&**store, id, Some(*reason), "admin", now))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<&Device> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "exactly one revoke wins");
        for result in &results {
            if let Err(error) = result {
                assert!(
                    matches!(error, DeviceError::AlreadyRevoked { .. }),
                    "{error}"
                );
            }
        }
        let stored = require(&*store, &id).unwrap().revocation.unwrap();
        assert_eq!(
            stored.reason,
            winners[0].revocation.as_ref().unwrap().reason
        );
    }

    #[test]
    fn sync_time_is_written_at_most_once_a_minute() {
        let (_dir, store) = temp_store();
        let now = OffsetDateTime::now_utc();
        let device = enrolled(&*store, now);
        note_sync(&*store, &device, now).unwrap();
        let device = require(&*store, device.id()).unwrap();
        assert_eq!(device.last_sync, Some(now));
        note_sync(&*store, &device, now + Duration::seconds(10)).unwrap();
        assert_eq!(require(&*store, device.id()).unwrap().last_sync, Some(now));
        let later = now + Duration::seconds(61);
        note_sync(&*store, &device, later).unwrap();
        assert_eq!(
            require(&*store, device.id()).unwrap().last_sync,
            Some(later)
        );
    }

    #[test]
    fn names_and_reasons_are_checked() {
        assert!(check_name("Alice's iPhone").is_ok());
        for bad in [
            "",
            "  ",
            "a\nb",
            &"x".repeat(65),
            "Dana's \u{202E}enohp",
            "a\u{2066}b\u{2069}",
            "a\u{200F}b",
            "a\u{200E}",
            "zero\u{200B}width",
        ] {
            let error = check_name(bad).unwrap_err().to_string();
            assert!(error.starts_with("name:"), "{bad:?}: {error}");
        }
        assert_eq!(RevokeReason::parse("lost").unwrap(), RevokeReason::Lost);
        let error = RevokeReason::parse("misplaced").unwrap_err().to_string();
        assert!(
            error.contains("lost, stolen, retired or compromised"),
            "{error}"
        );
    }
}
