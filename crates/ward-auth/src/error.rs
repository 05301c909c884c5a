//! The error type shared by this crate's fallible operations.
//!
//! Messages never contain the secret, token or password involved, so they
//! can be logged as they are.

/// Errors from this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The system random number generator failed.
    #[error("random number generation failed")]
    Random,

    /// Argon2 rejected its parameters or failed while hashing.
    #[error("password hashing failed: {0}")]
    Hashing(String),

    /// A stored password hash is not a PHC string this crate can verify.
    #[error("invalid password hash: {reason}")]
    InvalidPasswordHash {
        /// What is wrong with the stored hash.
        reason: String,
    },

    /// A stored TOTP secret is not valid base32 or has the wrong length.
    #[error("invalid TOTP secret: {reason}")]
    InvalidTotpSecret {
        /// What is wrong with the secret.
        reason: &'static str,
    },

    /// A provisioning URI label was empty or contained a colon.
    #[error("invalid provisioning label: {reason}")]
    InvalidLabel {
        /// What is wrong with the issuer or account name.
        reason: &'static str,
    },

    /// A client registration breaks a rule of OAuth 2.0 or SMART.
    #[error("invalid client registration for {client_id:?}: {reason}")]
    InvalidClient {
        /// The client concerned.
        client_id: String,
        /// The rule that the registration breaks.
        reason: String,
    },

    /// A break-the-glass grant request was rejected.
    #[error("invalid break-the-glass grant: {reason}")]
    InvalidBreakGlass {
        /// Why the grant cannot be issued.
        reason: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
