//! Users, OAuth clients, web sessions and refresh token families as sealed
//! key-value records in the store, shared by the server and the `ward user`
//! and `ward client` commands.
//!
//! Record keys are random ids, client ids or digests, never a user name,
//! token or secret: the user name index is keyed by
//! `Store::blind("username", lower-case name)`.

use std::sync::Arc;

use jsonwebtoken::jwk::JwkSet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use ward_auth::Role;
use ward_auth::oauth::refresh::Revocation;
use ward_auth::oauth::{Client, ClientKind, RefreshFamily, TokenDigest, TokenEndpointAuthMethod};
use ward_auth::password::{self, PasswordRejection};
use ward_auth::totp::{RecoveryCodeHash, RecoveryCodes, TotpSecret};
use ward_store::{Store, StoreError};
use webauthn_rs::prelude::Passkey;
use zeroize::{Zeroize as _, Zeroizing};

/// Users by id.
pub const NS_USER: &str = "auth.user";
/// User ids by blinded lower-case user name.
pub const NS_USER_NAME: &str = "auth.user_name";
/// Client registrations by `client_id`.
pub const NS_CLIENT: &str = "auth.client";
/// Web sessions by the digest of the session cookie.
pub const NS_SESSION: &str = "auth.session";
/// Per-account sign-in throttle states, by blinded user name.
pub const NS_THROTTLE_ACCOUNT: &str = "auth.throttle_account";
/// Per account and source address sign-in throttle states, by a blinded
/// pair key.
pub const NS_THROTTLE_PAIR: &str = "auth.throttle_pair";
/// Per-source-address sign-in throttle states, by blinded address.
pub const NS_THROTTLE_SOURCE: &str = "auth.throttle_source";
/// TOTP steps already used, by `USER_ID.STEP`, so that two concurrent
/// sign-ins cannot both use one code.
pub const NS_TOTP_STEP: &str = "auth.totp_step";
/// Pending authorization requests by the digest of their browser cookie.
pub const NS_PENDING: &str = "oauth.pending";
/// Authorization codes by digest.
pub const NS_CODE: &str = "oauth.code";
/// Refresh token families by `USER_ID.FAMILY_ID`.
pub const NS_FAMILY: &str = "oauth.family";
/// Family keys by the digest of each refresh token, current or retired.
pub const NS_REFRESH: &str = "oauth.refresh";
/// Revoked access token ids, kept until the token would have expired.
pub const NS_REVOKED: &str = "oauth.revoked_jti";
/// `jti` values of client assertions already used, until they expire.
pub const NS_ASSERTION_JTI: &str = "oauth.assertion_jti";
/// WebAuthn ceremony states between the start and finish requests, by
/// `register.SESSION_DIGEST` or `auth.PENDING_DIGEST`.
pub const NS_PASSKEY_CEREMONY: &str = "auth.passkey_ceremony";
/// User ids by blinded passkey credential id, so that one credential is
/// registered to one user only.
pub const NS_PASSKEY_ID: &str = "auth.passkey_id";

/// Maximum number of passkeys per user.
pub const MAX_PASSKEYS: usize = 10;

/// Longest accepted user name, in characters.
pub const MAX_USERNAME_LEN: usize = 64;

/// The scopes a client registered without `--scope` may be granted.
pub const DEFAULT_APP_SCOPE: &str = "openid fhirUser profile launch/patient offline_access online_access patient/*.cruds user/*.cruds";

/// The scopes a backend service registered without `--scope` may be granted.
pub const DEFAULT_SERVICE_SCOPE: &str = "system/*.rs";

/// An identity store failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Hashing or random generation failed.
    #[error("{0}")]
    Auth(#[from] ward_auth::Error),
    /// A stored record does not decode.
    #[error("a stored {0} record is corrupt")]
    Corrupt(&'static str),
    /// A new password breaks the password policy.
    #[error("{0}")]
    Password(#[from] PasswordRejection),
    /// An argument is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The user or client does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The user name or client id is taken.
    #[error("{0} already exists")]
    Exists(String),
}

/// Result alias for this module.
pub type IdentityResult<T> = Result<T, IdentityError>;

/// Returns the current time in microseconds since the Unix epoch, the unit
/// of record expiry.
pub fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// Returns a digest as lower-case hex, the form used as a record key.
pub fn digest_key(digest: &TokenDigest) -> String {
    digest
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads and decodes a JSON record.
pub fn read<T: DeserializeOwned>(
    store: &dyn Store,
    ns: &'static str,
    key: &str,
) -> IdentityResult<Option<T>> {
    match store.kv_get(ns, key)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| IdentityError::Corrupt(ns)),
        None => Ok(None),
    }
}

/// Encodes and stores a JSON record. `expires` is in microseconds.
pub fn write<T: Serialize>(
    store: &dyn Store,
    ns: &'static str,
    key: &str,
    value: &T,
    expires: Option<i64>,
) -> IdentityResult<()> {
    let mut bytes = serde_json::to_vec(value).map_err(|_| IdentityError::Corrupt(ns))?;
    let result = store.kv_put(ns, key, &bytes, expires);
    bytes.zeroize();
    Ok(result?)
}

/// A user account.
#[derive(Clone, Serialize, Deserialize)]
pub struct UserRecord {
    /// A random id, the token subject.
    pub id: String,
    /// The sign-in name as registered.
    pub username: String,
    /// The access-policy role name.
    pub role: String,
    /// The FHIR resource for the user, such as `Practitioner/17`.
    pub fhir_user: Option<String>,
    /// The Argon2id PHC string of the password.
    pub password_hash: String,
    /// The TOTP secret, base32 (the store seals it).
    pub totp_secret: String,
    /// The last TOTP step accepted, so that no code works twice.
    pub totp_last_step: Option<u64>,
    /// Digests of the unused recovery codes.
    pub recovery_codes: Vec<RecoveryCodeHash>,
    /// A disabled user cannot sign in and their tokens are rejected.
    pub disabled: bool,
    /// Creation time, seconds since the Unix epoch.
    pub created: i64,
    /// WebAuthn passkeys that may replace the TOTP code as second factor.
    #[serde(default)]
    pub passkeys: Vec<PasskeyRecord>,
}

/// A registered passkey.
#[derive(Clone, Serialize, Deserialize)]
pub struct PasskeyRecord {
    /// The credential: id, public key, signature counter and backup state.
    pub passkey: Passkey,
    /// Registration time, seconds since the Unix epoch.
    pub created: i64,
}

impl Drop for UserRecord {
    fn drop(&mut self) {
        self.totp_secret.zeroize();
        self.password_hash.zeroize();
    }
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

impl UserRecord {
    /// The patient id of a patient user's `fhirUser`, such as `17` for
    /// `Patient/17`.
    pub fn own_patient(&self) -> Option<&str> {
        self.fhir_user.as_deref()?.strip_prefix("Patient/")
    }
}

/// The fields of a new user.
pub struct NewUser<'a> {
    /// The sign-in name.
    pub username: &'a str,
    /// The role name.
    pub role: &'a str,
    /// `Practitioner/ID` or `Patient/ID`.
    pub fhir_user: Option<&'a str>,
    /// The initial password.
    pub password: &'a str,
}

/// The second-factor material shown to a user once.
pub struct Enrollment {
    /// The user's id.
    pub user_id: String,
    /// The TOTP secret, base32.
    pub secret: Zeroizing<String>,
    /// The `otpauth://` URI for authenticator apps.
    pub uri: Zeroizing<String>,
    /// Ten single-use recovery codes.
    pub recovery_codes: Vec<Zeroizing<String>>,
    /// Passkeys removed by a reset.
    pub passkeys_removed: usize,
    /// Sessions and refresh token families a reset ended.
    pub ended: Revoked,
}

fn check_username(username: &str) -> IdentityResult<()> {
    let length = username.chars().count();
    if length == 0
        || length > MAX_USERNAME_LEN
        || username
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':')
    {
        return Err(IdentityError::Invalid(format!(
            "the user name must be 1 to {MAX_USERNAME_LEN} characters without spaces or colons"
        )));
    }
    Ok(())
}

fn check_fhir_user(role: Role, fhir_user: Option<&str>) -> IdentityResult<()> {
    let valid_id = |id: &str| crate::fhir::engine::is_valid_id(id);
    match fhir_user {
        None if role == Role::Patient => Err(IdentityError::Invalid(
            "a patient user needs --fhir-user Patient/ID".into(),
        )),
        None => Ok(()),
        Some(reference) => {
            let (kind, id) = reference.split_once('/').unwrap_or(("", ""));
            let kind_ok = if role == Role::Patient {
                kind == "Patient"
            } else {
                matches!(kind, "Practitioner" | "PractitionerRole" | "Patient")
            };
            if kind_ok && valid_id(id) {
                Ok(())
            } else {
                Err(IdentityError::Invalid(
                    "--fhir-user must be Practitioner/ID, or Patient/ID for a patient user".into(),
                ))
            }
        }
    }
}

fn enroll(
    username: &str,
    issuer: &str,
) -> IdentityResult<(Enrollment, String, Vec<RecoveryCodeHash>)> {
    let secret = TotpSecret::generate()?;
    let uri = secret.provisioning_uri(issuer, username)?;
    let codes = RecoveryCodes::generate()?;
    let encoded = secret.to_base32();
    let enrollment = Enrollment {
        user_id: String::new(),
        secret: encoded.clone(),
        uri,
        recovery_codes: codes.codes,
        passkeys_removed: 0,
        ended: Revoked::default(),
    };
    Ok((enrollment, encoded.to_string(), codes.hashes))
}

/// The blinded key of a user name in [`NS_USER_NAME`].
pub fn username_key(store: &dyn Store, username: &str) -> String {
    store.blind("username", &username.to_lowercase())
}

/// Creates a user with a new TOTP secret and recovery codes. `issuer`
/// names the organization in the authenticator app.
///
/// # Errors
///
/// An invalid name, role or `fhirUser`, a password the policy rejects, a
/// taken user name, or a store failure.
pub fn create_user(
    store: &dyn Store,
    new: &NewUser<'_>,
    issuer: &str,
) -> IdentityResult<Enrollment> {
    check_username(new.username)?;
    let role = Role::parse(new.role).ok_or_else(|| {
        let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        IdentityError::Invalid(format!("unknown role; use one of {}", names.join(", ")))
    })?;
    check_fhir_user(role, new.fhir_user)?;
    password::check_new_password(new.password, new.username, role.account_kind())?;
    let password_hash = password::hash(new.password)?;
    let (mut enrollment, secret, hashes) = enroll(new.username, issuer)?;

    let id = uuid::Uuid::new_v4().to_string();
    let name_key = username_key(store, new.username);
    if !store.kv_insert_new(NS_USER_NAME, &name_key, id.as_bytes(), None)? {
        return Err(IdentityError::Exists("the user name".into()));
    }
    let user = UserRecord {
        id: id.clone(),
        username: new.username.to_owned(),
        role: role.as_str().to_owned(),
        fhir_user: new.fhir_user.map(str::to_owned),
        password_hash,
        totp_secret: secret,
        totp_last_step: None,
        recovery_codes: hashes,
        disabled: false,
        created: OffsetDateTime::now_utc().unix_timestamp(),
        passkeys: Vec::new(),
    };
    write(store, NS_USER, &id, &user, None)?;
    enrollment.user_id = id;
    Ok(enrollment)
}

/// Loads a user by id.
///
/// # Errors
///
/// A store failure or a corrupt record.
pub fn load_user(store: &dyn Store, id: &str) -> IdentityResult<Option<UserRecord>> {
    read(store, NS_USER, id)
}

/// Loads a user by sign-in name, case-insensitively.
///
/// # Errors
///
/// A store failure or a corrupt record.
pub fn find_user(store: &dyn Store, username: &str) -> IdentityResult<Option<UserRecord>> {
    let Some(id) = store.kv_get(NS_USER_NAME, &username_key(store, username))? else {
        return Ok(None);
    };
    let id = String::from_utf8(id).map_err(|_| IdentityError::Corrupt(NS_USER_NAME))?;
    load_user(store, &id)
}

/// Stores a changed user.
///
/// # Errors
///
/// A store failure.
pub fn save_user(store: &dyn Store, user: &UserRecord) -> IdentityResult<()> {
    write(store, NS_USER, &user.id, user, None)
}

/// Lists every user, ordered by id.
///
/// # Errors
///
/// A store failure or a corrupt record.
pub fn list_users(store: &dyn Store) -> IdentityResult<Vec<UserRecord>> {
    store
        .kv_list(NS_USER, "")?
        .into_iter()
        .map(|(_, bytes)| {
            serde_json::from_slice(&bytes).map_err(|_| IdentityError::Corrupt(NS_USER))
        })
        .collect()
}

fn require_user(store: &dyn Store, username: &str) -> IdentityResult<UserRecord> {
    find_user(store, username)?.ok_or_else(|| IdentityError::NotFound("the user".into()))
}

/// Counts of what disabling a user, or resetting their second factor,
/// revoked.
#[derive(Debug, Clone, Copy, Default)]
pub struct Revoked {
    /// Web sessions ended.
    pub sessions: usize,
    /// Refresh token families revoked.
    pub families: usize,
}

/// Disables a user: ends their sessions and revokes their refresh token
/// families. Their access tokens are rejected from then on because every
/// FHIR request checks the user's status.
///
/// # Errors
///
/// An unknown user or a store failure.
pub fn disable_user(store: &dyn Store, username: &str) -> IdentityResult<Revoked> {
    let mut user = require_user(store, username)?;
    user.disabled = true;
    save_user(store, &user)?;
    end_sessions(store, &user)
}

/// Ends a user's sign-in sessions and revokes their refresh token families
/// with the access tokens issued from them, as after a disable or a
/// second-factor reset.
///
/// # Errors
///
/// A store failure.
pub fn end_sessions(store: &dyn Store, user: &UserRecord) -> IdentityResult<Revoked> {
    let mut revoked = Revoked::default();
    for (key, bytes) in store.kv_list(NS_SESSION, "")? {
        let owner = serde_json::from_slice::<Session>(&bytes).map(|s| s.user_id);
        if owner.as_deref().is_ok_and(|owner| owner == user.id)
            && store.kv_delete(NS_SESSION, &key)?
        {
            revoked.sessions += 1;
        }
    }
    for (key, _) in store.kv_list(NS_FAMILY, &format!("{}.", user.id))? {
        if revoke_family(store, &key, Revocation::Revoked)? {
            revoked.families += 1;
        }
    }
    Ok(revoked)
}

/// Replaces a user's TOTP secret and recovery codes and removes their
/// passkeys.
///
/// # Errors
///
/// An unknown user or a store failure.
pub fn reset_mfa(store: &dyn Store, username: &str, issuer: &str) -> IdentityResult<Enrollment> {
    let mut user = require_user(store, username)?;
    let (mut enrollment, secret, hashes) = enroll(&user.username, issuer)?;
    user.totp_secret = secret;
    user.totp_last_step = None;
    user.recovery_codes = hashes;
    let removed = std::mem::take(&mut user.passkeys);
    save_user(store, &user)?;
    for record in &removed {
        store.kv_delete(NS_PASSKEY_ID, &passkey_key(store, &record.passkey))?;
    }
    enrollment.user_id = user.id.clone();
    enrollment.passkeys_removed = removed.len();
    // As after a disable, the sessions and tokens opened with the old
    // factor end.
    enrollment.ended = end_sessions(store, &user)?;
    Ok(enrollment)
}

/// The blinded key of a passkey's credential id in [`NS_PASSKEY_ID`].
fn passkey_key(store: &dyn Store, passkey: &Passkey) -> String {
    use base64::Engine as _;
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(passkey.cred_id().as_slice());
    store.blind("passkey", &id)
}

/// Adds a passkey to a user and returns how many they now have.
///
/// # Errors
///
/// An unknown user, a user who has [`MAX_PASSKEYS`] already, a credential
/// registered before (to this or another user), or a store failure.
pub fn add_passkey(store: &dyn Store, user_id: &str, passkey: Passkey) -> IdentityResult<usize> {
    let mut user =
        load_user(store, user_id)?.ok_or_else(|| IdentityError::NotFound("the user".into()))?;
    if user.passkeys.len() >= MAX_PASSKEYS {
        return Err(IdentityError::Invalid(format!(
            "a user may register at most {MAX_PASSKEYS} passkeys"
        )));
    }
    let key = passkey_key(store, &passkey);
    if !store.kv_insert_new(NS_PASSKEY_ID, &key, user.id.as_bytes(), None)? {
        return Err(IdentityError::Exists("the passkey".into()));
    }
    user.passkeys.push(PasskeyRecord {
        passkey,
        created: OffsetDateTime::now_utc().unix_timestamp(),
    });
    if let Err(error) = save_user(store, &user) {
        let _ = store.kv_delete(NS_PASSKEY_ID, &key);
        return Err(error);
    }
    Ok(user.passkeys.len())
}

/// A signed-in browser.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The user.
    pub user_id: String,
    /// Sign-in time, seconds since the Unix epoch.
    pub created: i64,
    /// Last use, seconds since the Unix epoch.
    pub last_seen: i64,
    /// The enrolled browser device this session was used from, once the
    /// web app bound a session to that device's key: revoking the device
    /// ends this session too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// Ends the sign-in session stored under `key` (the digest of its
/// cookie). Returns whether a session was there.
///
/// # Errors
///
/// A store failure.
pub fn end_session(store: &dyn Store, key: &str) -> IdentityResult<bool> {
    Ok(store.kv_delete(NS_SESSION, key)?)
}

/// Records that the sign-in session under `key` was used from the
/// browser device `device`, so that revoking the device ends it.
///
/// # Errors
///
/// A store failure.
pub fn mark_session_device(
    store: &dyn Store,
    key: &str,
    device: &str,
    (idle_secs, max_secs): (i64, i64),
) -> IdentityResult<()> {
    let Some(mut session) = read::<Session>(store, NS_SESSION, key)? else {
        return Ok(());
    };
    session.device = Some(device.to_owned());
    let expires = (session.last_seen + idle_secs).min(session.created.saturating_add(max_secs));
    write(
        store,
        NS_SESSION,
        key,
        &session,
        Some(expires.saturating_mul(1_000_000)),
    )
}

/// A refresh token family and what its access tokens carry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FamilyRecord {
    /// The family.
    pub family: RefreshFamily,
    /// Access tokens issued from the family, as `(jti, exp)`, so they can be
    /// revoked with it.
    pub access_tokens: Vec<(String, i64)>,
    /// The certificate or DPoP key the family is bound to: a refresh must
    /// present the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<crate::auth::Confirmation>,
}

/// Most access token ids remembered per family; older ones have expired.
const MAX_TRACKED_TOKENS: usize = 50;

impl FamilyRecord {
    /// Remembers an access token issued from the family.
    pub fn track(&mut self, jti: &str, exp: i64) {
        self.access_tokens.push((jti.to_owned(), exp));
        if self.access_tokens.len() > MAX_TRACKED_TOKENS {
            let excess = self.access_tokens.len() - MAX_TRACKED_TOKENS;
            self.access_tokens.drain(..excess);
        }
    }
}

/// Stores a family under `key` with an index entry for each of its digests.
///
/// # Errors
///
/// A store failure.
pub fn save_family(store: &dyn Store, key: &str, record: &FamilyRecord) -> IdentityResult<()> {
    let expires = Some(micros(record.family.expires_at));
    write(store, NS_FAMILY, key, record, expires)?;
    for digest in record.family.digests() {
        store.kv_put(NS_REFRESH, &digest_key(digest), key.as_bytes(), expires)?;
    }
    Ok(())
}

/// Revokes a family and the access tokens issued from it; returns false
/// when there is no such family.
///
/// # Errors
///
/// A store failure.
pub fn revoke_family(store: &dyn Store, key: &str, reason: Revocation) -> IdentityResult<bool> {
    let Some(mut record) = read::<FamilyRecord>(store, NS_FAMILY, key)? else {
        return Ok(false);
    };
    record.family = record.family.revoke(reason);
    for (jti, exp) in &record.access_tokens {
        revoke_access_token(store, jti, *exp)?;
    }
    write(
        store,
        NS_FAMILY,
        key,
        &record,
        Some(micros(record.family.expires_at)),
    )?;
    Ok(true)
}

/// Adds an access token id to the revocation list until `exp` (seconds).
///
/// # Errors
///
/// A store failure.
pub fn revoke_access_token(store: &dyn Store, jti: &str, exp: i64) -> IdentityResult<()> {
    let expires = exp.saturating_add(60).saturating_mul(1_000_000);
    store.kv_put(NS_REVOKED, jti, b"1", Some(expires))?;
    Ok(())
}

/// A registered client and its display name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientRecord {
    /// The registration.
    pub client: Client,
    /// The name shown on the consent page.
    pub name: String,
}

/// The fields of a new client registration.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NewClient {
    /// `client_id`.
    pub id: String,
    /// The name shown to users; defaults to the id.
    #[serde(default)]
    pub name: Option<String>,
    /// Redirect URIs, required unless the client is a backend service.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// A confidential client that authenticates with a generated secret.
    #[serde(default)]
    pub confidential: bool,
    /// Public keys for `private_key_jwt` (SMART Backend Services).
    #[serde(default)]
    pub jwks: Option<JwkSet>,
    /// The maximum scope the client may be granted.
    #[serde(default)]
    pub scope: Option<String>,
}

/// Registers a client. Returns the client secret, shown once, for a
/// confidential client without keys.
///
/// # Errors
///
/// An invalid registration, a taken id or a store failure.
pub fn register_client(
    store: &dyn Store,
    new: &NewClient,
) -> IdentityResult<(ClientRecord, Option<Zeroizing<String>>)> {
    let (kind, auth_method) = match (&new.jwks, new.confidential) {
        (Some(_), _) => (
            ClientKind::Confidential,
            TokenEndpointAuthMethod::PrivateKeyJwt,
        ),
        (None, true) => (
            ClientKind::Confidential,
            TokenEndpointAuthMethod::ClientSecretBasic,
        ),
        (None, false) => (ClientKind::Public, TokenEndpointAuthMethod::None),
    };
    if new.id == MOBILE_CLIENT_ID {
        return Err(IdentityError::Invalid(format!(
            "{MOBILE_CLIENT_ID} is the id of the built-in mobile client; choose another client id"
        )));
    }
    if new.jwks.is_none() && new.redirect_uris.is_empty() {
        return Err(IdentityError::Invalid(
            "a client needs at least one redirect URI unless it registers a JWKS".into(),
        ));
    }
    let (secret, secret_digest) = if auth_method == TokenEndpointAuthMethod::ClientSecretBasic {
        let (secret, digest) = Client::new_secret()?;
        (Some(secret), Some(digest))
    } else {
        (None, None)
    };
    let default_scope = if new.jwks.is_some() {
        DEFAULT_SERVICE_SCOPE
    } else {
        DEFAULT_APP_SCOPE
    };
    let client = Client {
        client_id: new.id.clone(),
        kind,
        auth_method,
        redirect_uris: new.redirect_uris.clone(),
        allowed_scope: new
            .scope
            .clone()
            .unwrap_or_else(|| default_scope.to_owned()),
        jwks: new.jwks.clone(),
        secret_digest,
    };
    client
        .validate()
        .map_err(|e| IdentityError::Invalid(e.to_string()))?;
    let record = ClientRecord {
        name: new.name.clone().unwrap_or_else(|| new.id.clone()),
        client,
    };
    let bytes = serde_json::to_vec(&record).map_err(|_| IdentityError::Corrupt(NS_CLIENT))?;
    if !store.kv_insert_new(NS_CLIENT, &new.id, &bytes, None)? {
        return Err(IdentityError::Exists("the client id".into()));
    }
    Ok((record, secret))
}

/// The `client_id` of the built-in mobile client.
pub const MOBILE_CLIENT_ID: &str = "ward-mobile";

/// The only redirect URI of the built-in mobile client, a private-use
/// scheme (RFC 8252 section 7.1) that the app claims on the device.
pub const MOBILE_REDIRECT_URI: &str = "com.ward.mobile:/oauth/callback";

/// The scopes the built-in mobile client may be granted: a clinician's
/// access to the patients of their care team, and refresh tokens for
/// offline use.
pub const MOBILE_SCOPE: &str = "openid fhirUser offline_access user/*.cruds";

/// Returns the built-in public client of the `ward-mobile` app, known to
/// every server without `ward client add`. Like every client it must use PKCE
/// (S256), and its redirect URI must match [`MOBILE_REDIRECT_URI`]
/// exactly.
pub fn mobile_client() -> ClientRecord {
    ClientRecord {
        client: Client {
            client_id: MOBILE_CLIENT_ID.to_owned(),
            kind: ClientKind::Public,
            auth_method: TokenEndpointAuthMethod::None,
            redirect_uris: vec![MOBILE_REDIRECT_URI.to_owned()],
            allowed_scope: MOBILE_SCOPE.to_owned(),
            jwks: None,
            secret_digest: None,
        },
        name: "Ward Mobile".to_owned(),
    }
}

/// Loads a client: the built-in [`mobile_client`] for
/// [`MOBILE_CLIENT_ID`], otherwise a registered one.
///
/// # Errors
///
/// A store failure or a corrupt record.
pub fn load_client(store: &dyn Store, client_id: &str) -> IdentityResult<Option<ClientRecord>> {
    if client_id == MOBILE_CLIENT_ID {
        return Ok(Some(mobile_client()));
    }
    if client_id.is_empty() || client_id.len() > ward_auth::oauth::client::MAX_CLIENT_ID_LEN {
        return Ok(None);
    }
    read(store, NS_CLIENT, client_id)
}

/// Lists every client, ordered by id.
///
/// # Errors
///
/// A store failure or a corrupt record.
pub fn list_clients(store: &dyn Store) -> IdentityResult<Vec<ClientRecord>> {
    store
        .kv_list(NS_CLIENT, "")?
        .into_iter()
        .map(|(_, bytes)| {
            serde_json::from_slice(&bytes).map_err(|_| IdentityError::Corrupt(NS_CLIENT))
        })
        .collect()
}

/// Rejects a token whose user is disabled or whose id was revoked. Tokens
/// whose subject is no user (`ward token`, backend services) pass the user
/// check.
///
/// # Errors
///
/// A store failure.
pub fn token_is_live(store: &Arc<dyn Store>, subject: &str, jti: &str) -> IdentityResult<bool> {
    if store.kv_get(NS_REVOKED, jti)?.is_some() {
        return Ok(false);
    }
    match load_user(store.as_ref(), subject)? {
        Some(user) => Ok(!user.disabled),
        None => Ok(true),
    }
}
