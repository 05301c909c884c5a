//! The web app's server-side session: a random `__Host-` cookie names a
//! record stored under the cookie's SHA-256 digest, and the record keeps
//! the user's OAuth tokens, the CSRF token and the opaque patient handles.
//! The browser only ever holds the cookie.

use std::sync::Arc;

use http::HeaderMap;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use ward_auth::oauth::{TokenDigest, generate_token};
use ward_store::Store;
use zeroize::Zeroize;

use crate::oauth::identity::{self, digest_key};

/// The cookie of a web app session.
pub const COOKIE: &str = "__Host-ward-app";
/// The store namespace of web app sessions.
pub const NS_APP_SESSION: &str = "webapp.session";
/// How long a sign-in may take from the redirect to the callback, in
/// seconds.
pub const PENDING_TTL_SECS: i64 = 600;
/// The maximum number of patient handles one session keeps; the oldest go first.
const MAX_HANDLES: usize = 200;

/// The stage a session is in.
#[derive(Serialize, Deserialize)]
pub enum Stage {
    /// Sent to the authorization server, waiting for the code.
    Pending {
        /// The OAuth `state` sent with the request.
        oauth_state: String,
        /// The PKCE code verifier.
        verifier: String,
    },
    /// Signed in.
    Active {
        /// The access token, sent only to the in-process FHIR routes.
        access_token: String,
        /// The refresh token of the `online_access` family, if issued.
        refresh_token: Option<String>,
        /// When the access token expires, in seconds since the Unix epoch.
        access_expires: i64,
    },
}

/// A web app session record.
#[derive(Serialize, Deserialize)]
pub struct WebSession {
    /// The stage.
    pub stage: Stage,
    /// Creation time, in seconds since the Unix epoch.
    pub created: i64,
    /// Last use, in seconds since the Unix epoch.
    pub last_seen: i64,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    /// Opaque handle to patient id, oldest first.
    pub handles: Vec<(String, String)>,
}

impl Drop for WebSession {
    fn drop(&mut self) {
        match &mut self.stage {
            Stage::Pending { verifier, .. } => verifier.zeroize(),
            Stage::Active {
                access_token,
                refresh_token,
                ..
            } => {
                access_token.zeroize();
                if let Some(token) = refresh_token {
                    token.zeroize();
                }
            }
        }
        self.csrf.zeroize();
    }
}

impl WebSession {
    /// Creates a session at `now` in the given stage with a fresh CSRF token.
    ///
    /// # Errors
    ///
    /// The random number generator failed.
    pub fn new(stage: Stage, now: i64) -> Result<Self, ward_auth::Error> {
        Ok(Self {
            stage,
            created: now,
            last_seen: now,
            csrf: generate_token()?.to_string(),
            handles: Vec::new(),
        })
    }

    /// Returns the handle of `patient_id`, adding one if needed.
    ///
    /// # Errors
    ///
    /// The random number generator failed.
    pub fn handle_for(&mut self, patient_id: &str) -> Result<String, ward_auth::Error> {
        if let Some((handle, _)) = self.handles.iter().find(|(_, id)| id == patient_id) {
            return Ok(handle.clone());
        }
        let handle = generate_token()?.chars().take(22).collect::<String>();
        if self.handles.len() >= MAX_HANDLES {
            self.handles.remove(0);
        }
        self.handles.push((handle.clone(), patient_id.to_owned()));
        Ok(handle)
    }

    /// Returns the patient id behind `handle`.
    pub fn patient_of(&self, handle: &str) -> Option<String> {
        self.handles
            .iter()
            .find(|(known, _)| ward_crypto::constant_time_eq(known.as_bytes(), handle.as_bytes()))
            .map(|(_, id)| id.clone())
    }

    /// Checks a form's CSRF token in constant time.
    pub fn csrf_matches(&self, token: &str) -> bool {
        ward_crypto::constant_time_eq(self.csrf.as_bytes(), token.as_bytes())
    }
}

/// Returns the record key of a session cookie value.
pub fn key_of(cookie: &str) -> String {
    digest_key(&TokenDigest::of(cookie))
}

/// Reads the session cookie of a request.
pub fn cookie_of(headers: &HeaderMap) -> Option<String> {
    super::html::read_cookie(headers, COOKIE)
}

/// Builds the `Set-Cookie` value of a session; `max_age` 0 deletes it.
pub fn set_cookie(value: &str, max_age: i64) -> String {
    format!("{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}")
}

/// Loads a session by its key.
///
/// # Errors
///
/// A store failure or a corrupt record.
pub fn load(store: &Arc<dyn Store>, key: &str) -> identity::IdentityResult<Option<WebSession>> {
    identity::read(store.as_ref(), NS_APP_SESSION, key)
}

/// Saves a session that expires at `expires` (seconds since the Unix epoch).
///
/// # Errors
///
/// A store failure.
pub fn save(
    store: &Arc<dyn Store>,
    key: &str,
    session: &WebSession,
    expires: i64,
) -> identity::IdentityResult<()> {
    identity::write(
        store.as_ref(),
        NS_APP_SESSION,
        key,
        session,
        Some(expires.saturating_mul(1_000_000)),
    )
}

/// Deletes a session.
///
/// # Errors
///
/// A store failure.
pub fn delete(store: &Arc<dyn Store>, key: &str) -> Result<(), ward_store::StoreError> {
    store.kv_delete(NS_APP_SESSION, key).map(|_| ())
}

/// Returns the current time in seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_opaque_and_stable() {
        let mut session = WebSession::new(
            Stage::Pending {
                oauth_state: "s".into(),
                verifier: "v".into(),
            },
            0,
        )
        .expect("session");
        let first = session.handle_for("patient-1").expect("handle");
        assert!(!first.contains("patient"));
        assert_eq!(session.handle_for("patient-1").expect("handle"), first);
        assert_eq!(session.patient_of(&first).as_deref(), Some("patient-1"));
        assert_eq!(session.patient_of("unknown"), None);
    }

    #[test]
    fn cookie_has_host_prefix_attributes() {
        let cookie = set_cookie("abc", 60);
        assert!(cookie.starts_with("__Host-ward-app=abc;"));
        for attribute in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
            assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
        }
        assert!(!cookie.contains("Domain"));
    }
}
