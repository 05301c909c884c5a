//! The error type of this crate.

use ward_store::StoreError;

/// Every failure this crate reports. Messages name the value that failed
/// and, where there is one, the fix; they never contain an enrollment code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A stored record does not decode.
    #[error("a stored {0} record is corrupt")]
    Corrupt(&'static str),
    /// Random generation failed.
    #[error("{0}")]
    Auth(#[from] ward_auth::Error),
    /// A device id is not 32 lower-case hex digits.
    #[error("invalid device id {0:?}: expected 32 lower-case hex digits")]
    InvalidId(String),
    /// A posture report is invalid.
    #[error("invalid posture: {0}")]
    InvalidPosture(String),
    /// An argument is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The enrollment code is unknown or was used before.
    #[error("the enrollment code is invalid or was already used; ask for a new code")]
    UnknownCode,
    /// The enrollment code expired before it was used.
    #[error("the enrollment code expired; ask for a new code")]
    ExpiredCode,
    /// No device has this id.
    #[error("device {0} not found")]
    NotFound(String),
    /// The device is revoked, so the action is not allowed.
    #[error("device {0} is revoked; enroll it again with a new code")]
    Revoked(String),
    /// The device was revoked before. A revocation is final and keeps its
    /// first reason and time.
    #[error(
        "device {id} was already revoked at {revoked_at} ({reason}); a revocation is final and \
         keeps its first reason, so nothing was changed"
    )]
    AlreadyRevoked {
        /// The device id.
        id: String,
        /// The first revocation's time, RFC 3339.
        revoked_at: String,
        /// The first revocation's reason.
        reason: &'static str,
    },
    /// The posture policy file is invalid.
    #[error("device policy: {0}")]
    Policy(String),
}

/// Result alias for this crate.
pub type Result<T, E = DeviceError> = std::result::Result<T, E>;
