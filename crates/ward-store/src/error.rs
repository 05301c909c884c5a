//! The one error type of every store backend.

use thiserror::Error;

/// A store failure. Variants are portable across backends, so callers map
/// them to HTTP statuses without knowing the database.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The resource does not exist (and never did).
    #[error("{resource_type}/{id} not found")]
    NotFound {
        /// The resource type.
        resource_type: String,
        /// The logical id.
        id: String,
    },
    /// The resource exists but its current version is a deletion.
    #[error("{resource_type}/{id} was deleted")]
    Gone {
        /// The resource type.
        resource_type: String,
        /// The logical id.
        id: String,
        /// The version that recorded the deletion.
        version: u64,
    },
    /// `If-Match` named a version that is not the current one.
    #[error(
        "version conflict on {resource_type}/{id}: expected version {expected}, current is {current}"
    )]
    VersionConflict {
        /// The resource type.
        resource_type: String,
        /// The logical id.
        id: String,
        /// The version the caller expected.
        expected: u64,
        /// The current version (0 when the resource does not exist).
        current: u64,
    },
    /// A create collided with an existing resource id.
    #[error("{resource_type}/{id} already exists")]
    AlreadyExists {
        /// The resource type.
        resource_type: String,
        /// The logical id.
        id: String,
    },
    /// A search snapshot id is unknown or expired.
    #[error("search result set {0} not found or expired; run the search again")]
    SnapshotExpired(String),
    /// A query would touch more rows than the configured limit allows.
    #[error("query too costly: {0}")]
    TooCostly(String),
    /// Stored bytes failed to decrypt or decode: tampering, a wrong key, or
    /// corruption.
    #[error("stored data for {0} failed integrity check")]
    Integrity(String),
    /// A key could not be loaded or used.
    #[error("key error: {0}")]
    Key(#[from] ward_crypto::Error),
    /// An audit record could not be appended.
    #[error("audit log: {0}")]
    Audit(#[from] ward_audit::Error),
    /// The database failed.
    #[error("database error: {0}")]
    Database(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        StoreError::Database(err.to_string())
    }
}

/// The result type of store calls.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
