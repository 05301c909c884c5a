//! The errors of this crate: [`Error`] for local failures (keys, store,
//! input of the operator) and [`Rejection`] for an incoming message or
//! acknowledgement that fails a check, one variant per reason so the audit
//! log records the exact one.

use thiserror::Error;

/// A local failure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A cryptographic operation of the provider failed.
    #[error("{0} failed")]
    Crypto(&'static str),
    /// A key is not of the expected kind.
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    /// A file of the data directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A sealed key did not open.
    #[error("{path}: {source}")]
    Sealed {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: ward_crypto::Error,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] ward_store::StoreError),
    /// A stored record does not decode.
    #[error("a stored {0} record is corrupt")]
    Corrupt(&'static str),
    /// A trust-bundle entry is invalid.
    #[error("invalid trust entry: {0}")]
    InvalidEntry(String),
    /// An organization is not in the trust bundle.
    #[error("organization {0} is not trusted; add it with `ward org trust FILE`")]
    NotTrusted(String),
    /// The trust entry of a recipient is past its `not_after` (seconds
    /// since the Unix epoch).
    #[error(
        "the trust entry of organization {0} expired at {1} (seconds since the Unix epoch); trust a new export with `ward org trust FILE`"
    )]
    ExpiredRecipient(String, i64),
}

/// The reason an incoming message or acknowledgement was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The envelope or its content is not of the expected form.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// The JWE did not decrypt with our key: it was altered in transit or
    /// encrypted to another key.
    #[error("the message did not decrypt: altered in transit or encrypted to another key")]
    Decrypt,
    /// The sender is not in the trust bundle.
    #[error("sender {0} is not in the trust bundle")]
    UntrustedSender(String),
    /// The sender's trust entry is past its `not_after`.
    #[error("the trust entry of sender {0} has expired")]
    ExpiredSender(String),
    /// The JWS signature does not verify with the sender's key.
    #[error("the signature does not verify with the sender's trusted key")]
    BadSignature,
    /// The message names another organization as recipient.
    #[error("the message is addressed to {0}, not to this organization")]
    WrongRecipient(String),
    /// `iat` is too far in the past or in the future.
    #[error("the message was issued outside the accepted clock window")]
    Stale,
    /// `exp` has passed.
    #[error("the message has expired")]
    Expired,
    /// A message with this id from this sender was already accepted.
    #[error("message {0} was already received")]
    Replayed(String),
    /// The connection presented no organization client certificate.
    #[error(
        "the connection presented no organization client certificate; deliver over mutual TLS with the certificate `ward org export` reports"
    )]
    NoClientCertificate,
    /// The connection's client certificate does not authenticate the
    /// sender the message names.
    #[error("the client certificate does not authenticate sender {0}: {1}")]
    ClientCertificateMismatch(String, &'static str),
}

impl Rejection {
    /// Returns a short stable code for the audit log and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Decrypt => "decrypt_failed",
            Self::UntrustedSender(_) => "untrusted_sender",
            Self::ExpiredSender(_) => "expired_sender",
            Self::BadSignature => "bad_signature",
            Self::WrongRecipient(_) => "wrong_recipient",
            Self::Stale => "stale",
            Self::Expired => "expired",
            Self::Replayed(_) => "replayed",
            Self::NoClientCertificate => "no_client_certificate",
            Self::ClientCertificateMismatch(..) => "client_certificate_mismatch",
        }
    }
}
