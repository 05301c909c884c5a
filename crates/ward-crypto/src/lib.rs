//! Cryptography for Ward: the keyring that encrypts resources at rest,
//! blind-index hashes for search, the token signing key and the
//! organization's certificate authority.
//!
//! AWS-LC (through `aws-lc-rs`) is the only crypto provider; rustls uses the
//! same one, so the process links a single implementation.
//!
//! # Defaults
//!
//! - Resource encryption: AES-256-GCM under per-scope [`DataKey`]s, with
//!   96-bit random nonces and caller-chosen associated data.
//! - Key hierarchy: a 32-byte [`MasterKey`] from a mode-0600 file or the
//!   `WARD_MASTER_KEY` environment variable. HKDF-SHA256 derives separate
//!   subkeys for wrapping data keys and index keys and for sealing private
//!   keys. The master key value doubles as a keyring that also holds retired
//!   master keys during a rotation.
//! - Backups: a separate [`BackupKey`] sealed under the master key; files are
//!   chunked AES-256-GCM with a final-chunk flag (see [`backup`]).
//! - Search: [`IndexKey::hash`] is HMAC-SHA256 truncated to 128 bits over a
//!   length-prefixed domain and value.
//! - Tokens: ECDSA P-256 with SHA-256 (JWS ES256), key id = RFC 7638
//!   thumbprint.
//! - TLS: an ECDSA P-256 CA (pathlen 0, 10 years) issuing server certificates
//!   of at most 397 days and client certificates from CSRs.
//!
//! # Threat model, briefly
//!
//! The database file and backups may leak; the master key is kept apart from
//! them. Anyone holding the master key can decrypt everything, so it is never
//! written to the database and private keys are stored only sealed under it.
//! Blind-index hashes reveal which rows share a value in the same field, but
//! not the value, to anyone without the master key.
//!
//! Secret types wipe their bytes on drop and print `[redacted]` in `Debug`.
//! Copies made inside AWS-LC or rcgen are outside this crate's control.

pub mod backup;
pub mod ca;
pub mod error;
pub mod keyring;
mod pem;
pub mod signing;

pub use backup::{BackupKey, BackupReader, BackupWriter};
pub use ca::{CertificateAuthority, DeviceCertificate, IssuedCertificate};
pub use error::{Error, Result};
pub use keyring::{
    BLIND_HASH_LEN, DataKey, IndexKey, KeyId, MasterKey, SealedSecret, WrappedKey, constant_time_eq,
};
pub use signing::{SigningKey, verify_es256};
