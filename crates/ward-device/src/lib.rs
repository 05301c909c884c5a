//! Device trust for Ward: the registry of enrolled phones and tablets,
//! one-time enrollment codes, the posture and compliance policy, and the
//! lost-device report.
//!
//! A device enrolls with a one-time code, proves possession of its key with
//! a certificate signing request, and receives a certificate from the
//! organization's CA whose subject CN is the device id and whose URI SAN is
//! `urn:ward:device:{id}`. It then reports its posture at each check-in;
//! [`PosturePolicy`] decides whether it is compliant. Administrators revoke
//! a lost device, which requests its wipe at its next check-in, and the
//! [`report`] lists the patients whose data it held.
//!
//! Everything is stored as sealed key-value records through
//! [`ward_store::Store`]; record keys are device ids or code digests, never
//! user names or codes.

#![forbid(unsafe_code)]

pub mod code;
pub mod error;
pub mod id;
pub mod policy;
pub mod posture;
pub mod registry;
pub mod report;
mod store;

pub use code::{
    CodeRecord, NewCode, code_ttl, create_code, enrollment_url, redeem_code, restore_code,
};
pub use error::{DeviceError, Result};
pub use id::{DEVICE_URI_PREFIX, DeviceId};
pub use policy::{Compliance, PosturePolicy, RuleFailure};
pub use posture::{Posture, Version};
pub use registry::{
    BROWSER_OS, CertificateInfo, Device, DeviceKind, DeviceRecord, DeviceStatus, DeviceSummary,
    RevokeReason,
};
pub use report::{LostDeviceReport, PatientAccess, ReportBuilder};

/// Computes the RFC 8705 `x5t#S256` thumbprint of a DER certificate:
/// SHA-256, base64url without padding.
pub fn thumbprint(der: &[u8]) -> String {
    use base64::Engine as _;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}
