//! One-time enrollment codes. A code is 256 random bits (base64url); only
//! its SHA-256 digest is stored, as the record key, so a database leak
//! reveals no usable code. Redeeming takes the record atomically, so a code
//! works once even when two devices race for it.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use ward_auth::oauth::{TokenDigest, generate_token};
use ward_store::Store;
use zeroize::Zeroizing;

use crate::error::{DeviceError, Result};
use crate::store::{micros, read_json, write_json};

/// Enrollment codes by the hex digest of the code.
pub const NS_CODE: &str = "device.enrollment_code";

/// Default code lifetime: 15 minutes.
pub const DEFAULT_CODE_TTL: Duration = Duration::minutes(15);

/// Maximum code lifetime: 24 hours.
pub const MAX_CODE_TTL: Duration = Duration::hours(24);

/// Shortest code lifetime: 1 minute.
pub const MIN_CODE_TTL: Duration = Duration::minutes(1);

/// How long an expired code record is kept, so that redeeming it reports
/// "expired" rather than "invalid".
const EXPIRED_RETENTION: Duration = Duration::days(1);

/// A stored enrollment code.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeRecord {
    /// The digest of the code, compared in constant time on redemption.
    pub digest: TokenDigest,
    /// The id of the user the enrolled device will belong to.
    pub user_id: String,
    /// That user's sign-in name, for listings.
    pub username: String,
    /// The creator: a user id, or `ward-cli`.
    pub created_by: String,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The end of the code's validity.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A new enrollment code, shown once.
pub struct NewCode {
    /// The code. It is wiped on drop.
    pub code: Zeroizing<String>,
    /// The stored record.
    pub record: CodeRecord,
}

fn digest_key(digest: &TokenDigest) -> String {
    digest
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks a requested lifetime in seconds; `None` gives the default.
///
/// # Errors
///
/// [`DeviceError::Invalid`] outside 60 seconds to 24 hours.
pub fn code_ttl(seconds: Option<i64>) -> Result<Duration> {
    let Some(seconds) = seconds else {
        return Ok(DEFAULT_CODE_TTL);
    };
    let ttl = Duration::seconds(seconds);
    if ttl < MIN_CODE_TTL || ttl > MAX_CODE_TTL {
        return Err(DeviceError::Invalid(format!(
            "ttl_seconds {seconds} is out of range; use {} to {}",
            MIN_CODE_TTL.whole_seconds(),
            MAX_CODE_TTL.whole_seconds()
        )));
    }
    Ok(ttl)
}

/// Creates a code for `user_id` (named `username`) that expires `ttl` after
/// `now`.
///
/// # Errors
///
/// A failing random generator or store.
pub fn create_code(
    store: &dyn Store,
    user_id: &str,
    username: &str,
    created_by: &str,
    ttl: Duration,
    now: OffsetDateTime,
) -> Result<NewCode> {
    let code = generate_token()?;
    let record = CodeRecord {
        digest: TokenDigest::of(&code),
        user_id: user_id.to_owned(),
        username: username.to_owned(),
        created_by: created_by.to_owned(),
        created_at: now,
        expires_at: now + ttl,
    };
    let keep_until = micros(record.expires_at + EXPIRED_RETENTION);
    let key = digest_key(&record.digest);
    write_json(store, NS_CODE, &key, &record, Some(keep_until))?;
    Ok(NewCode { code, record })
}

/// Builds the enrollment URL of `code` on the server at `origin`. The code
/// sits in the fragment (`#code=`), which clients never send to a server,
/// so it stays out of server and proxy access logs.
pub fn enrollment_url(origin: &str, code: &str) -> String {
    format!("{}/device/enroll#code={code}", origin.trim_end_matches('/'))
}

/// Redeems a code: removes it and returns its record when it was valid at
/// `now`.
///
/// # Errors
///
/// [`DeviceError::UnknownCode`] for a code that never existed or was used,
/// [`DeviceError::ExpiredCode`] for one past its expiry (it is removed all
/// the same), or a store failure.
pub fn redeem_code(store: &dyn Store, code: &str, now: OffsetDateTime) -> Result<CodeRecord> {
    if code.is_empty() || code.len() > 256 {
        return Err(DeviceError::UnknownCode);
    }
    let digest = TokenDigest::of(code);
    let Some(bytes) = store.kv_take(NS_CODE, &digest_key(&digest))? else {
        return Err(DeviceError::UnknownCode);
    };
    let record: CodeRecord =
        serde_json::from_slice(&bytes).map_err(|_| DeviceError::Corrupt(NS_CODE))?;
    // The lookup by digest already matched; comparing the stored digest in
    // constant time guards against a record filed under the wrong key.
    if record.digest != digest {
        return Err(DeviceError::UnknownCode);
    }
    if now >= record.expires_at {
        return Err(DeviceError::ExpiredCode);
    }
    Ok(record)
}

/// Puts a redeemed code back, for an enrollment that failed after the code
/// was taken (such as an invalid CSR), so the user can retry with it.
///
/// # Errors
///
/// A store failure.
pub fn restore_code(store: &dyn Store, record: &CodeRecord) -> Result<()> {
    let bytes = serde_json::to_vec(record).map_err(|_| DeviceError::Corrupt(NS_CODE))?;
    let keep_until = micros(record.expires_at + EXPIRED_RETENTION);
    store.kv_insert_new(
        NS_CODE,
        &digest_key(&record.digest),
        &bytes,
        Some(keep_until),
    )?;
    Ok(())
}

/// Lists the codes that have not expired, without the codes themselves.
///
/// # Errors
///
/// A store failure or a corrupt record.
pub fn pending_codes(store: &dyn Store, now: OffsetDateTime) -> Result<Vec<CodeRecord>> {
    let mut codes = Vec::new();
    for (key, _) in store.kv_list(NS_CODE, "")? {
        if let Some(record) = read_json::<CodeRecord>(store, NS_CODE, &key)?
            && record.expires_at > now
        {
            codes.push(record);
        }
    }
    Ok(codes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_store;

    #[test]
    fn enrollment_url_carries_code_in_fragment() {
        let url = enrollment_url("https://ward.test:8443/", "abc-_1");
        assert_eq!(url, "https://ward.test:8443/device/enroll#code=abc-_1");
        assert!(!url.contains('?'));
    }

    #[test]
    fn code_works_once() {
        let (_dir, store) = temp_store();
        let now = OffsetDateTime::now_utc();
        let new = create_code(&*store, "u1", "alice", "admin", DEFAULT_CODE_TTL, now).unwrap();
        assert_eq!(new.code.len(), 43);
        let record = redeem_code(&*store, &new.code, now).unwrap();
        assert_eq!(record.user_id, "u1");
        assert_eq!(record.username, "alice");
        assert!(matches!(
            redeem_code(&*store, &new.code, now),
            Err(DeviceError::UnknownCode)
        ));
    }

    #[test]
    fn restored_code_works_again() {
        let (_dir, store) = temp_store();
        let now = OffsetDateTime::now_utc();
        let new = create_code(&*store, "u1", "alice", "admin", DEFAULT_CODE_TTL, now).unwrap();
        let record = redeem_code(&*store, &new.code, now).unwrap();
        restore_code(&*store, &record).unwrap();
        assert_eq!(redeem_code(&*store, &new.code, now).unwrap().user_id, "u1");
    }

    #[test]
    fn expired_code_is_rejected_and_removed() {
        let (_dir, store) = temp_store();
        let then = OffsetDateTime::now_utc() - Duration::minutes(20);
        let new = create_code(&*store, "u1", "alice", "admin", DEFAULT_CODE_TTL, then).unwrap();
        let now = OffsetDateTime::now_utc();
        assert!(matches!(
            redeem_code(&*store, &new.code, now),
            Err(DeviceError::ExpiredCode)
        ));
        assert!(matches!(
            redeem_code(&*store, &new.code, now),
            Err(DeviceError::UnknownCode)
        ));
    }

    #[test]
    fn unknown_codes_are_rejected() {
        let (_dir, store) = temp_store();
        let now = OffsetDateTime::now_utc();
        for code in ["", "nope", &"x".repeat(300)] {
            assert!(matches!(
                redeem_code(&*store, code, now),
                Err(DeviceError::UnknownCode)
            ));
        }
    }

    #[test]
    fn code_is_stored_only_as_a_digest() {
        let (_dir, store) = temp_store();
        let now = OffsetDateTime::now_utc();
        let new = create_code(&*store, "u1", "alice", "admin", DEFAULT_CODE_TTL, now).unwrap();
        for (key, value) in store.kv_list(NS_CODE, "").unwrap() {
            assert!(!key.contains(new.code.as_str()));
            let text = String::from_utf8_lossy(&value);
            assert!(!text.contains(new.code.as_str()));
        }
        let pending = pending_codes(&*store, now).unwrap();
        assert_eq!(pending.len(), 1);
        assert!(
            pending_codes(&*store, now + Duration::hours(1))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn ttl_limits() {
        assert_eq!(code_ttl(None).unwrap(), DEFAULT_CODE_TTL);
        assert_eq!(code_ttl(Some(900)).unwrap(), Duration::minutes(15));
        assert_eq!(code_ttl(Some(86_400)).unwrap(), MAX_CODE_TTL);
        for bad in [0, 59, 86_401, -5] {
            assert!(code_ttl(Some(bad)).is_err(), "{bad}");
        }
    }
}
