//! The web app's server-side session: a random `__Host-` cookie names a
//! record stored under the cookie's SHA-256 digest, and the record keeps
//! the user's OAuth tokens, the CSRF token and the opaque patient handles.
//! The browser only ever holds the cookie.
//!
//! The record also carries the lock state (see [`super::lock`]), the key
//! of the authorization server's sign-in session it came from and, once
//! the browser is enrolled as a device, the thumbprint of its key (see
//! [`super::enroll`]).

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
/// The authorization server's sign-in session cookie, which the browser
/// holds next to [`COOKIE`] (`SameSite=Lax`, see `crate::oauth`).
pub const SIGNIN_COOKIE: &str = "__Host-ward-session";
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
    /// The signed-in user's id (the access token's `sub`), which names
    /// the user's PIN record.
    #[serde(default)]
    pub user: Option<String>,
    /// Whether the session is locked: every page shows the lock page until
    /// the user's PIN unlocks it.
    #[serde(default)]
    pub locked: bool,
    /// Wrong PINs entered since the last unlock.
    #[serde(default)]
    pub pin_failures: u32,
    /// The earliest time of the next PIN attempt, in seconds since the
    /// Unix epoch.
    #[serde(default)]
    pub pin_next_try: i64,
    /// The JWK thumbprint (RFC 7638) of the browser's device key once this
    /// browser is enrolled: every request must then carry a proof signed
    /// by that key.
    #[serde(default)]
    pub jkt: Option<String>,
    /// The device id the browser enrolled as.
    #[serde(default)]
    pub device: Option<String>,
    /// The state of a passkey unlock in progress (its challenge), used once.
    #[serde(default)]
    pub passkey_challenge: Option<serde_json::Value>,
    /// The record key of the authorization server's sign-in session
    /// (`__Host-ward-session`) this session was started with, so that a
    /// lock can end that sign-in session and the passkeys page can refuse
    /// a sign-in whose app session is locked. While the session is
    /// pending: the sign-in session the browser held at the start, which
    /// the callback refuses.
    #[serde(default)]
    pub signin: Option<String>,
    /// Where a pending sign-in goes after the callback, when not to the
    /// app's home: only [`AFTER_PASSKEYS`].
    #[serde(default)]
    pub after: Option<String>,
    /// The text of the last patient search, which `GET /app/search` shows
    /// after the POST that set it, so that no history entry of the browser
    /// contains the search in a form body.
    #[serde(default)]
    pub search: Option<String>,
}

/// The page a sign-in started at `/app/signin?next=passkeys` ends on.
pub const AFTER_PASSKEYS: &str = "/oauth/passkeys";

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
            user: None,
            locked: false,
            pin_failures: 0,
            pin_next_try: 0,
            jkt: None,
            device: None,
            passkey_challenge: None,
            signin: None,
            after: None,
            search: None,
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

/// Returns the record key of the request's sign-in session cookie.
pub fn signin_key_of(headers: &HeaderMap) -> Option<String> {
    super::html::read_cookie(headers, SIGNIN_COOKIE).map(|cookie| key_of(&cookie))
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

/// Returns whether an app session started with the sign-in session under
/// `signin_key` is locked, or has gone `lock_secs` without use and so
/// locks at its next request.
///
/// # Errors
///
/// A store failure.
pub fn signin_has_locked_app(
    store: &dyn Store,
    signin_key: &str,
    lock_secs: i64,
    now: i64,
) -> identity::IdentityResult<bool> {
    for (_, bytes) in store.kv_list(NS_APP_SESSION, "")? {
        let Ok(session) = serde_json::from_slice::<WebSession>(&bytes) else {
            continue;
        };
        if session.signin.as_deref() == Some(signin_key)
            && matches!(session.stage, Stage::Active { .. })
            && (session.locked || now - session.last_seen >= lock_secs)
        {
            return Ok(true);
        }
    }
    Ok(false)
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
