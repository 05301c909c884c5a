//! Identity and access for Ward: passwords, second factors, sign-in
//! throttling, OAuth 2.0 and SMART App Launch building blocks, SMART scopes
//! and the role-based access policy.
//!
//! Everything here is pure logic over plain values. Nothing reads a clock, a
//! database or the network: callers pass `now`, stored records and requests
//! in, and get decisions and new records out, which they persist. Secrets
//! that leave this crate (new passwords, TOTP secrets, recovery codes,
//! tokens) are wrapped in [`zeroize::Zeroizing`]; what is meant to be stored
//! is a hash or digest of them.
//!
//! # Defaults
//!
//! - Passwords: Argon2id, m = 19 MiB, t = 2, p = 1, 16-byte salt, PHC
//!   strings; NFKC normalization before hashing; minimum 8 characters, 15
//!   for administrators, maximum 256; rejected when common or when they
//!   contain the user name ([`password`]).
//! - TOTP: RFC 6238 with HMAC-SHA1, 6 digits, 30-second steps, one step of
//!   tolerance either way, each step usable once ([`totp`]).
//! - Recovery codes: 10 codes of 80 random bits, stored as SHA-256 digests
//!   ([`totp::RecoveryCodes`]).
//! - Throttling: exponential delays after 3 failures, a 15-minute lock after
//!   10, doubling per lock up to a cap ([`throttle`]).
//! - OAuth: PKCE S256 only, 60-second single-use authorization codes,
//!   rotating refresh tokens with reuse detection, 256-bit random tokens
//!   stored as SHA-256 digests, `private_key_jwt` with ES256, ES384 or
//!   RS384 ([`oauth`]).
//! - Access: SMART scopes ∩ role grants ∩ care-team relationship ∩ consent,
//!   deny by default ([`policy`]).
//!
//! AWS-LC (through `aws-lc-rs`) provides HMAC, SHA-2, randomness and JWS
//! signature checks. Argon2 comes from the RustCrypto `argon2` crate because
//! AWS-LC does not implement it.

mod base32;
pub mod dpop;
pub mod error;
pub mod oauth;
pub mod password;
pub mod policy;
mod random;
pub mod scopes;
pub mod throttle;
pub mod totp;

pub use error::{Error, Result};
pub use oauth::TokenDigest;
pub use policy::{BreakGlassGrant, Decision, DenyReason, Policy, Request, Role};
pub use scopes::{Permission, Scopes};
