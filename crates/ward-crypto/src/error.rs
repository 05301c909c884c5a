//! The error type shared by every module of this crate.
//!
//! Messages name the file, value or operation that failed and, where there is
//! one, the fix. They never contain key material, plaintext or sealed bytes.

use std::path::PathBuf;

use crate::keyring::KeyId;

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure this crate reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file system operation on a key file or its directory failed.
    #[error("failed to {operation} {path}: {source}")]
    Io {
        /// The operation that failed, such as "read" or "create".
        operation: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// The master key file is readable or writable by group or other users.
    #[error(
        "master key file {path} has mode {mode:04o}, which lets other users access it; \
         run `chmod 600 {path}` and restart"
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// The permission bits found on the file.
        mode: u32,
    },

    /// The master key file exists but its content is not a valid key.
    #[error("invalid master key file {path}: {reason}")]
    InvalidKeyFile {
        /// The key file.
        path: PathBuf,
        /// The problem found in the content.
        reason: &'static str,
    },

    /// A master key given as text (for example in `WARD_MASTER_KEY`) is invalid.
    #[error("invalid master key: {reason}")]
    InvalidMasterKey {
        /// The problem found in the text.
        reason: &'static str,
    },

    /// Authenticated decryption failed.
    ///
    /// The input was modified or truncated, or it was sealed under another key
    /// or with other associated data. The message deliberately does not distinguish these causes.
    #[error(
        "decryption failed: the data was modified or truncated, \
         or was sealed under another key or context"
    )]
    Decrypt,

    /// A wrapped key or sealed secret names a master key other than the loaded one.
    #[error(
        "the {what} was sealed under master key {expected}, but the loaded master key is {found}; \
         start with the master key that sealed it"
    )]
    WrongMasterKey {
        /// The kind of value, such as "wrapped data key".
        what: &'static str,
        /// The id of the master key recorded in the value.
        expected: KeyId,
        /// The id of the master key that was used to open it.
        found: KeyId,
    },

    /// A backup file was sealed under another backup key than the data
    /// directory's.
    #[error(
        "the backup was sealed under backup key {expected}, but this data directory's \
         backup key is {found}; restore into a data directory holding the key files \
         (master.key and backup.key.sealed) of the organization that made the backup"
    )]
    WrongBackupKey {
        /// The backup key id recorded in the file.
        expected: String,
        /// The id of the backup key that was used to open it.
        found: String,
    },

    /// Reading or writing a backup stream failed.
    #[error("backup stream I/O failed: {0}")]
    Stream(#[source] std::io::Error),

    /// Encoded data carries a format version this build does not know.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// The kind of value, such as "ciphertext".
        what: &'static str,
        /// The version found.
        version: u8,
    },

    /// Encoded data does not have the expected structure.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// The kind of value, such as "wrapped data key".
        what: &'static str,
        /// The problem found in it.
        reason: &'static str,
    },

    /// A primitive of the crypto provider failed, for example the random number
    /// generator or key generation.
    #[error("{operation} failed in the crypto provider")]
    Provider {
        /// The operation that failed.
        operation: &'static str,
    },

    /// A name requested for a server certificate is neither a DNS name nor an IP address.
    #[error("invalid certificate name {name:?}: expected a DNS name or an IP address")]
    InvalidName {
        /// The rejected name.
        name: String,
    },

    /// A certificate parameter is out of range.
    #[error("invalid certificate request: {reason}")]
    InvalidCertificateRequest {
        /// The problem found in the request.
        reason: String,
    },

    /// A certificate signing request could not be parsed or its signature is invalid.
    #[error("invalid certificate signing request: {reason}")]
    InvalidCsr {
        /// The problem found in the request.
        reason: String,
    },

    /// A stored certificate authority could not be loaded.
    #[error("invalid CA certificate: {reason}")]
    InvalidCaCertificate {
        /// The problem found in the certificate or its key.
        reason: String,
    },

    /// The certificate library failed to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
}

impl Error {
    /// Builds a [`Error::Provider`] error for an aws-lc-rs call.
    pub(crate) fn provider(
        operation: &'static str,
    ) -> impl FnOnce(aws_lc_rs::error::Unspecified) -> Self {
        move |_| Self::Provider { operation }
    }
}
