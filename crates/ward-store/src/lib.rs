//! Encrypted FHIR resource storage for Ward.
//!
//! Every resource version is sealed with AES-256-GCM under a data key that the
//! master key wraps; the resource's type, id and version are the associated
//! data, so a ciphertext copied into another row does not open. Search indexes
//! hold keyed hashes of strings, tokens and URIs (never their text) and plain
//! ranges for dates and numbers.
//!
//! The [`Store`] trait is what the server uses; [`SqliteStore`] is the
//! embedded default backend and [`PostgresStore`] the one for several server
//! replicas on a shared database; [`open`] picks one from a database
//! locator. All calls are synchronous: async callers run them on a blocking
//! thread.

pub mod backup;
mod codec;
mod error;
mod index;
mod open;
mod postgres;
mod search;
mod sqlite;
mod types;

pub use codec::ResourceCodec;
pub use error::{Result, StoreError};
pub use open::{Database, open};
pub use postgres::{MigrationReport, POSTGRES_SCHEMA_VERSION, PostgresOptions, PostgresStore};
pub use sqlite::{SqliteOptions, SqliteStore};
pub use types::*;

/// Formats microseconds since the Unix epoch as a FHIR `instant`
/// (`2026-12-04T17:05:43.123456Z`).
pub fn format_instant(micros: i64) -> String {
    let nanos = i128::from(micros) * 1000;
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp_nanos(nanos) else {
        return "1970-01-01T00:00:00Z".to_owned();
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.microsecond()
    )
}
