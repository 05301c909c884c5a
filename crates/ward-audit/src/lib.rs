//! Tamper-evident audit records for Ward.
//!
//! Every access to a patient's record produces an [`AuditRecord`]
//! ([`record`]), stored by the caller in the same database transaction as
//! the access. The record's canonical bytes are hashed into two structures:
//!
//! - a hash chain ([`chain`]): each row commits to the row before it, so a
//!   changed, removed, inserted or reordered row breaks the chain at a
//!   precise sequence number;
//! - an RFC 6962 Merkle tree ([`merkle`]), kept incrementally by
//!   [`Appender`], whose root goes into signed [`Checkpoint`]s
//!   ([`checkpoint`]) stored away from the database. Inclusion and
//!   consistency proofs let an auditor check one record or the growth of the
//!   log without reading all of it.
//!
//! [`verify::verify_log`] recomputes everything from the stored rows and
//! names the first problem. No row contains a secret, so a database
//! administrator could recompute the hashes after a rewrite. A checkpoint
//! signature cannot be forged without the signing key, so the log is pinned
//! up to the latest checkpoint, but the records after it are not (see
//! [`verify`]).
//!
//! This crate does no I/O apart from reading and appending checkpoint files.

mod append;
#[cfg(test)]
mod canonical;
pub mod chain;
pub mod checkpoint;
pub mod error;
pub mod merkle;
pub mod record;
pub mod verify;

pub use append::Appender;
pub use chain::{ChainEntry, GENESIS, Hash, StoredAudit, chain_hash, leaf_hash};
pub use checkpoint::Checkpoint;
pub use error::{Error, Result};
pub use merkle::MerkleAccumulator;
pub use record::{AuditRecord, redact_query};
pub use verify::{LogKey, Problem, VerifyReport, verify_log, verify_range};
