//! The error type of this crate.
//!
//! Messages name the field, line or file that failed. They never quote
//! record content, which can identify a patient.

use std::path::PathBuf;

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure this crate reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An audit record field breaks a rule of [`crate::record::AuditRecord::validate`].
    #[error("invalid audit record: {field}: {reason}")]
    InvalidRecord {
        /// The field, such as `detail` or `entity.reference`.
        field: &'static str,
        /// The rule that the value breaks.
        reason: &'static str,
    },

    /// Stored canonical bytes do not decode to a chain entry in canonical form.
    #[error("malformed canonical audit entry: {reason}")]
    MalformedEntry {
        /// The problem found.
        reason: &'static str,
    },

    /// Checkpoint text does not follow the checkpoint format.
    #[error("invalid checkpoint at line {line}: {reason}")]
    InvalidCheckpoint {
        /// The 1-based line number in the parsed text.
        line: usize,
        /// The problem found on that line.
        reason: &'static str,
    },

    /// A checkpoint field cannot be written in the checkpoint format.
    #[error("cannot create checkpoint: {reason}")]
    InvalidCheckpointField {
        /// The field and the rule it breaks.
        reason: &'static str,
    },

    /// Signing a checkpoint failed in the crypto provider.
    #[error("failed to sign checkpoint: {0}")]
    Signing(#[from] ward_crypto::Error),

    /// Formatting or parsing a timestamp failed.
    #[error("invalid recorded time: {reason}")]
    Time {
        /// The problem found.
        reason: &'static str,
    },

    /// A checkpoint file could not be read or written.
    #[error("failed to {operation} checkpoint file {path}: {source}")]
    Io {
        /// The operation that failed, such as "read" or "append to".
        operation: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
}
