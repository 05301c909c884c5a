//! The one error type of the mobile client core, shaped for UniFFI: every
//! variant carries only owned strings and numbers.

/// A failed client operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MobileError {
    /// The client directory contains no device keys yet.
    #[error("this device is not enrolled; run enroll with an enrollment code first")]
    NotEnrolled,
    /// The directory already contains device keys.
    #[error("this device is already enrolled; wipe it before enrolling again")]
    AlreadyEnrolled,
    /// The keys are locked (never unlocked, locked by the user, or locked
    /// after the idle time).
    #[error("the client is locked; unlock it with the PIN")]
    Locked,
    /// The PIN did not open the keys.
    #[error("the PIN is wrong; {remaining} attempts left before this device wipes itself")]
    WrongPin {
        /// Attempts left before the wipe.
        remaining: u32,
    },
    /// Too many wrong PINs: the client wiped itself.
    #[error("too many wrong PINs; the local data was wiped and the device must enroll again")]
    WipedAfterWrongPins,
    /// The PIN does not meet the minimum.
    #[error("the PIN must have at least {min} digits or characters")]
    WeakPin {
        /// Minimum length.
        min: u32,
    },
    /// No signed-in user.
    #[error("no user is signed in on this device; run login first")]
    NotSignedIn,
    /// The server rejected the token or the device (HTTP 401).
    #[error("the server rejected the sign-in ({detail}); sign in again")]
    Unauthorized {
        /// The server's error text.
        detail: String,
    },
    /// The server rejected the request (HTTP 403), for example because the
    /// device is not compliant.
    #[error("the server denied the request: {detail}")]
    Forbidden {
        /// The server's error text.
        detail: String,
    },
    /// The server responded with an unexpected status.
    #[error("{operation} failed with HTTP {status}: {detail}")]
    Server {
        /// What was being done.
        operation: String,
        /// HTTP status code.
        status: u16,
        /// The server's error text.
        detail: String,
    },
    /// The server could not be reached.
    #[error("cannot reach the server for {operation}: {detail}")]
    Network {
        /// What was being done.
        operation: String,
        /// The transport error.
        detail: String,
    },
    /// Sign-in failed at a step of the authorization flow.
    #[error("sign-in failed: {detail}")]
    SignIn {
        /// What failed.
        detail: String,
    },
    /// An argument is not valid.
    #[error("invalid {field}: {detail}")]
    InvalidInput {
        /// The argument or element.
        field: String,
        /// What is wrong and what is expected.
        detail: String,
    },
    /// A resource or draft is not in the local store.
    #[error("{what} is not on this device; sync first or check the id")]
    NotFound {
        /// What was looked up.
        what: String,
    },
    /// A stored record failed to decrypt or parse.
    #[error("the local store is damaged: {detail}")]
    Corrupt {
        /// What failed.
        detail: String,
    },
    /// A cryptographic operation failed.
    #[error("a cryptographic operation failed: {detail}")]
    Crypto {
        /// What failed.
        detail: String,
    },
    /// The local database failed.
    #[error("the local database failed: {detail}")]
    Database {
        /// The SQLite error.
        detail: String,
    },
    /// A file operation failed.
    #[error("{path}: {detail}")]
    Io {
        /// The file or directory.
        path: String,
        /// The OS error.
        detail: String,
    },
    /// The device was wiped (by the server's order or the offline limit).
    #[error("this device was wiped ({reason}); enroll it again")]
    Wiped {
        /// Why.
        reason: String,
    },
}

/// Result of a client operation.
pub type MobileResult<T> = Result<T, MobileError>;

impl MobileError {
    pub(crate) fn io(path: &std::path::Path, error: std::io::Error) -> Self {
        MobileError::Io {
            path: path.display().to_string(),
            detail: error.to_string(),
        }
    }

    pub(crate) fn crypto(detail: impl Into<String>) -> Self {
        MobileError::Crypto {
            detail: detail.into(),
        }
    }

    pub(crate) fn corrupt(detail: impl Into<String>) -> Self {
        MobileError::Corrupt {
            detail: detail.into(),
        }
    }

    pub(crate) fn invalid(field: &str, detail: impl Into<String>) -> Self {
        MobileError::InvalidInput {
            field: field.to_owned(),
            detail: detail.into(),
        }
    }
}

impl From<rusqlite::Error> for MobileError {
    fn from(error: rusqlite::Error) -> Self {
        MobileError::Database {
            detail: error.to_string(),
        }
    }
}
