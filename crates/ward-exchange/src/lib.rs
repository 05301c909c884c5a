//! Secure exchange of FHIR messages between Ward organizations.
//!
//! Each organization has an [`identity::OrgIdentity`]: an id, an ES256
//! signing key and a P-256 encryption key, sealed in its data directory.
//! Organizations exchange [`trust::TrustEntry`] files out of band and keep
//! the ones they trust in the store. A message is a FHIR message Bundle,
//! signed by the sender (JWS ES256) and encrypted to the receiver (JWE
//! ECDH-ES with A256GCM), see [`envelope`]. Senders queue messages in the
//! durable [`outbox`]; receivers respond with a signed acknowledgement.
//!
//! The HTTP endpoints and the delivery loop live in `ward-server`.

#![forbid(unsafe_code)]

pub mod envelope;
pub mod error;
pub mod identity;
pub mod jose;
pub mod message;
pub mod outbox;
pub mod role;
pub mod trust;

pub use error::{Error, Rejection};
pub use identity::OrgIdentity;
pub use role::OrgRole;
pub use trust::TrustEntry;
