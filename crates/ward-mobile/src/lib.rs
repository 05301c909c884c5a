//! The Ward mobile client core: what an iOS or Android app embeds to work
//! with a Ward server offline.
//!
//! - Device keys: a P-256 key pair made on the device; only its CSR goes
//!   to `/device/enroll`. The key and the local data key are sealed under
//!   a key derived from the user's PIN (Argon2id) and a device secret
//!   file (HKDF), see [`keys`](crate::keys).
//! - An encrypted offline store: SQLite records sealed with AES-256-GCM,
//!   looked up by HMAC blind ids.
//! - Sign-in as the public OAuth client `ward-mobile` (authorization code
//!   with PKCE over mutual TLS, so tokens are bound to the certificate).
//! - Delta sync of the user's care-team panel, offline notes and vital
//!   signs as drafts replayed with `If-Match`, conflicts kept for the user.
//! - Idle lock, an offline window after which cached data is purged,
//!   remote wipe at check-in, and a wipe after too many wrong PINs.
//!
//! # Planned FFI surface (UniFFI)
//!
//! Every type below is owned and every fallible call returns
//! `Result<_, MobileError>`:
//!
//! - object `Client`: `open(dir)`, `enroll(server_url, ca_pem, code, pin,
//!   posture) -> Enrollment`, `unlock(pin)`, `lock()`, `login(user,
//!   password, totp)`, `sync() -> SyncReport`, `patients() ->
//!   Vec<PatientSummary>`, `show(patient_id) -> PatientRecord`,
//!   `document_note(patient_id, title, text, amends) -> String`,
//!   `document_vitals(patient_id, vitals) -> Vec<String>`,
//!   `discard_draft(draft_id)`, `status() -> Status`, `checkin() ->
//!   Checkin`, `send_message(recipient, bundle) -> String`,
//!   `message_status(id) -> MessageStatus`, `wipe()`
//! - records: `Posture`, `Enrollment`, `Compliance`, `ComplianceFailure`,
//!   `Checkin`, `SyncReport`, `PatientSummary`, `PatientRecord`,
//!   `CachedResource`, `Status`, `DraftInfo`, `Vitals`, `MessageStatus`
//! - enums: `DraftState`, `MobileError`
//!
//! `Client::open_with` (options) and `provision`/`use_bearer_token` (for
//! development without enrollment) stay Rust-only.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod device;
mod documents;
mod error;
mod exchange;
mod http;
pub mod keys;
mod signin;
mod store;
mod sync;

pub use client::{CachedResource, Client, ClientOptions, PatientRecord, PatientSummary, Status};
pub use device::{Checkin, Compliance, ComplianceFailure, Enrollment, Posture};
pub use documents::{DRAFT_SYSTEM, DraftInfo, DraftState, Vitals};
pub use error::{MobileError, MobileResult};
pub use exchange::MessageStatus;
pub use keys::KdfCost;
pub use signin::{CLIENT_ID, REDIRECT_URI, SCOPE};
pub use sync::{CHART_TYPES, SyncReport};
