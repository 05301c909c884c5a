//! Time-based one-time passwords (RFC 6238) and recovery codes.
//!
//! Codes use HMAC-SHA1, 6 digits and 30-second steps, the parameters every
//! common authenticator app assumes. [`verify`] accepts the current step and
//! one step either side, and returns the step it matched. The caller stores
//! that step and passes it back as `last_used_step` next time, so a code,
//! or any code from an earlier step, cannot be used twice.
//!
//! Recovery codes are 16 characters from a 32-symbol alphabet, 80 random
//! bits each. Only their SHA-256 digests are stored. A fast hash is enough
//! here, unlike for passwords, because the codes are random: finding one
//! code from its digest takes about 2^79 SHA-256 evaluations, out of reach
//! for any attacker, while Argon2 would only slow down sign-in.

use aws_lc_rs::hmac;
use time::OffsetDateTime;
use ward_crypto::constant_time_eq;
use zeroize::{Zeroize as _, Zeroizing};

use crate::base32;
use crate::error::{Error, Result};
use crate::random;

/// Length of a generated secret in bytes (160 bits, as RFC 4226 recommends).
pub const SECRET_LEN: usize = 20;

/// Step length in seconds.
pub const STEP_SECONDS: i64 = 30;

/// Number of digits in a code.
pub const DIGITS: u32 = 6;

/// Steps accepted before and after the current one.
pub const WINDOW: i64 = 1;

/// Number of recovery codes issued at once.
pub const RECOVERY_CODE_COUNT: usize = 10;

/// Shortest secret accepted from storage (128 bits, the RFC 4226 minimum).
const MIN_SECRET_LEN: usize = 16;

/// Maximum secret length accepted from storage, in bytes.
const MAX_SECRET_LEN: usize = 64;

/// Crockford's base32 alphabet: no I, L, O or U, so codes read aloud or
/// copied by hand survive.
const RECOVERY_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Symbols per recovery code, 5 bits each.
const RECOVERY_SYMBOLS: usize = 16;

/// Domain label hashed in front of a recovery code.
const RECOVERY_DOMAIN: &[u8] = b"ward-recovery-code-v1\0";

/// A TOTP shared secret. It is wiped on drop and never printed.
pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret([redacted])")
    }
}

impl TotpSecret {
    /// Generates a new 160-bit secret.
    ///
    /// # Errors
    ///
    /// [`Error::Random`] if the random number generator fails.
    pub fn generate() -> Result<Self> {
        let bytes = random::bytes::<SECRET_LEN>()?;
        Ok(Self(Zeroizing::new(bytes.to_vec())))
    }

    /// Wraps raw secret bytes, for example from the RFC 6238 test vectors.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTotpSecret`] for fewer than 16 or more than 64 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < MIN_SECRET_LEN || bytes.len() > MAX_SECRET_LEN {
            return Err(Error::InvalidTotpSecret {
                reason: "the secret must be 16 to 64 bytes",
            });
        }
        Ok(Self(Zeroizing::new(bytes.to_vec())))
    }

    /// Parses a base32 secret as stored or typed by hand (case, spaces and
    /// padding are ignored).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTotpSecret`] for invalid base32 or a wrong length.
    pub fn from_base32(text: &str) -> Result<Self> {
        let mut bytes = base32::decode(text).ok_or(Error::InvalidTotpSecret {
            reason: "the secret is not valid base32",
        })?;
        let secret = Self::from_bytes(&bytes);
        bytes.zeroize();
        secret
    }

    /// Encodes the secret as unpadded upper-case base32, the form
    /// authenticator apps accept and the form to store (sealed).
    pub fn to_base32(&self) -> Zeroizing<String> {
        Zeroizing::new(base32::encode(&self.0))
    }

    /// Returns the `otpauth://totp/` URI that authenticator apps read from a
    /// QR code. `issuer` is the organization's name and `account` the user's
    /// sign-in name; both are percent-encoded.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidLabel`] when either is empty or contains a colon,
    /// which the key URI format reserves as the separator.
    pub fn provisioning_uri(&self, issuer: &str, account: &str) -> Result<Zeroizing<String>> {
        for (value, reason) in [
            (issuer, "the issuer must be non-empty and contain no colon"),
            (
                account,
                "the account must be non-empty and contain no colon",
            ),
        ] {
            if value.trim().is_empty() || value.contains(':') {
                return Err(Error::InvalidLabel { reason });
            }
        }
        let issuer = percent_encode(issuer);
        let account = percent_encode(account);
        Ok(Zeroizing::new(format!(
            "otpauth://totp/{issuer}:{account}?secret={}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
            self.to_base32().as_str()
        )))
    }

    /// Returns the code for time step `step` with `digits` digits.
    fn code(&self, step: u64, digits: u32) -> u32 {
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &self.0);
        let tag = hmac::sign(&key, &step.to_be_bytes());
        truncate(tag.as_ref(), digits)
    }
}

/// RFC 4226 dynamic truncation of an HMAC result to `digits` digits.
fn truncate(mac: &[u8], digits: u32) -> u32 {
    let offset = mac.last().map_or(0, |b| usize::from(b & 0x0f));
    let mut word = [0u8; 4];
    if let Some(bytes) = mac.get(offset..offset + 4) {
        word.copy_from_slice(bytes);
    }
    let value = u32::from_be_bytes(word) & 0x7fff_ffff;
    value % 10u32.pow(digits)
}

/// Returns the time step that contains `now`, or `None` before 1970.
pub fn step_at(now: OffsetDateTime) -> Option<u64> {
    u64::try_from(now.unix_timestamp().div_euclid(STEP_SECONDS)).ok()
}

/// Returns the code for `now`, as an authenticator app would show it.
pub fn code_at(secret: &TotpSecret, now: OffsetDateTime) -> Option<String> {
    let step = step_at(now)?;
    Some(format_code(secret.code(step, DIGITS), DIGITS))
}

fn format_code(code: u32, digits: u32) -> String {
    let width = usize::try_from(digits).unwrap_or(6);
    format!("{code:0width$}")
}

/// The reason a TOTP code was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TotpError {
    /// The input is not six ASCII digits (spaces are ignored).
    #[error("the code must be 6 digits")]
    Malformed,
    /// The code matches no step in the accepted window.
    #[error("the code is wrong or has expired")]
    Invalid,
    /// The code matches a step already used for this secret.
    #[error("the code has already been used")]
    Reused,
}

/// Verifies a code at `now`, accepting [`WINDOW`] steps either side.
///
/// `last_used_step` is the step returned by the previous successful
/// verification for this secret, if any; steps at or before it are
/// rejected. On success, returns the matched step, which the caller must
/// store as the new `last_used_step` before it accepts the sign-in.
///
/// # Errors
///
/// [`TotpError::Malformed`], [`TotpError::Invalid`], or
/// [`TotpError::Reused`] when the code is right but its step (or a later
/// one) was already used.
pub fn verify(
    secret: &TotpSecret,
    code: &str,
    now: OffsetDateTime,
    last_used_step: Option<u64>,
) -> Result<u64, TotpError> {
    let code: String = code.chars().filter(|c| *c != ' ').collect();
    let expected_len = usize::try_from(DIGITS).unwrap_or(6);
    if code.len() != expected_len || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TotpError::Malformed);
    }
    let current = step_at(now).ok_or(TotpError::Invalid)?;

    // Every candidate step is computed and compared, so the time taken does
    // not depend on which step matched.
    let mut matched = None;
    let mut reused = false;
    for offset in -WINDOW..=WINDOW {
        let Some(step) = current.checked_add_signed(offset) else {
            continue;
        };
        let candidate = format_code(secret.code(step, DIGITS), DIGITS);
        if constant_time_eq(candidate.as_bytes(), code.as_bytes()) {
            if last_used_step.is_some_and(|last| step <= last) {
                reused = true;
            } else if matched.is_none() {
                matched = Some(step);
            }
        }
    }
    match matched {
        Some(step) => Ok(step),
        None if reused => Err(TotpError::Reused),
        None => Err(TotpError::Invalid),
    }
}

/// The SHA-256 digest of one recovery code, the form to store.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecoveryCodeHash(#[serde(with = "crate::oauth::hex_bytes")] [u8; 32]);

impl std::fmt::Debug for RecoveryCodeHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryCodeHash(..)")
    }
}

impl RecoveryCodeHash {
    /// Returns the digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Wraps stored digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    fn of_normalized(code: &str) -> Self {
        let mut input = Zeroizing::new(RECOVERY_DOMAIN.to_vec());
        input.extend_from_slice(code.as_bytes());
        Self(random::sha256(&input))
    }
}

/// A new set of recovery codes: the codes to show the user once, and the
/// digests to store.
#[derive(Debug)]
pub struct RecoveryCodes {
    /// The codes, formatted `XXXX-XXXX-XXXX-XXXX`.
    pub codes: Vec<Zeroizing<String>>,
    /// Their digests, in the same order.
    pub hashes: Vec<RecoveryCodeHash>,
}

impl RecoveryCodes {
    /// Generates [`RECOVERY_CODE_COUNT`] codes. Issuing a new set replaces
    /// the old one: the caller deletes the old digests.
    ///
    /// # Errors
    ///
    /// [`Error::Random`] if the random number generator fails.
    pub fn generate() -> Result<Self> {
        let mut codes = Vec::with_capacity(RECOVERY_CODE_COUNT);
        let mut hashes = Vec::with_capacity(RECOVERY_CODE_COUNT);
        for _ in 0..RECOVERY_CODE_COUNT {
            let raw = random::bytes::<RECOVERY_SYMBOLS>()?;
            let mut symbols = Zeroizing::new(String::with_capacity(RECOVERY_SYMBOLS));
            for byte in raw.iter() {
                // 256 is a multiple of 32, so taking 5 bits is unbiased.
                let index = usize::from(byte & 31);
                let symbol = RECOVERY_ALPHABET.get(index).copied().unwrap_or(b'0');
                symbols.push(char::from(symbol));
            }
            hashes.push(RecoveryCodeHash::of_normalized(&symbols));
            codes.push(group(&symbols));
        }
        Ok(Self { codes, hashes })
    }
}

fn group(symbols: &str) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(symbols.len() + 3));
    for (i, ch) in symbols.chars().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        out.push(ch);
    }
    out
}

/// Normalizes a typed recovery code: drops hyphens and spaces, upper-cases,
/// and maps the look-alikes O to 0 and I, L to 1 as Crockford's base32 does.
/// Returns `None` when the result is not 16 symbols of the alphabet.
fn normalize_recovery_code(code: &str) -> Option<Zeroizing<String>> {
    let mut out = Zeroizing::new(String::with_capacity(RECOVERY_SYMBOLS));
    for ch in code.chars() {
        let mapped = match ch.to_ascii_uppercase() {
            '-' | ' ' => continue,
            'O' => '0',
            'I' | 'L' => '1',
            other => other,
        };
        if !mapped.is_ascii() || !RECOVERY_ALPHABET.contains(&(mapped as u8)) {
            return None;
        }
        if out.len() == RECOVERY_SYMBOLS {
            return None;
        }
        out.push(mapped);
    }
    (out.len() == RECOVERY_SYMBOLS).then_some(out)
}

/// Checks a typed recovery code against the stored, still unused digests.
///
/// Returns the index of the matching digest, which the caller deletes
/// before it accepts the sign-in so that the code works only once, or
/// `None` when the code matches none.
pub fn redeem_recovery_code(code: &str, unused: &[RecoveryCodeHash]) -> Option<usize> {
    let normalized = normalize_recovery_code(code)?;
    let presented = RecoveryCodeHash::of_normalized(&normalized);
    let mut found = None;
    for (index, stored) in unused.iter().enumerate() {
        if constant_time_eq(&stored.0, &presented.0) && found.is_none() {
            found = Some(index);
        }
    }
    found
}

/// Percent-encodes everything except RFC 3986 unreserved characters.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(seconds).unwrap()
    }

    fn rfc_secret() -> TotpSecret {
        TotpSecret::from_bytes(b"12345678901234567890").unwrap()
    }

    #[test]
    fn rfc6238_appendix_b_sha1() {
        // RFC 6238 Appendix B, the SHA-1 rows: 8-digit codes for the ASCII
        // key "12345678901234567890".
        let vectors = [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ];
        let secret = rfc_secret();
        for (time, expected) in vectors {
            let step = step_at(at(time)).unwrap();
            assert_eq!(format_code(secret.code(step, 8), 8), expected, "T = {time}");
        }
    }

    #[test]
    fn six_digit_code_is_suffix_of_eight() {
        let secret = rfc_secret();
        assert_eq!(code_at(&secret, at(59)).unwrap(), "287082");
    }

    #[test]
    fn verify_returns_matched_step() {
        let secret = rfc_secret();
        let now = at(1_111_111_111);
        let code = code_at(&secret, now).unwrap();
        assert_eq!(verify(&secret, &code, now, None), Ok(step_at(now).unwrap()));
    }

    #[test]
    fn verify_accepts_one_step_either_side() {
        let secret = rfc_secret();
        let now = at(1_111_111_111);
        let step = step_at(now).unwrap();
        let previous = code_at(&secret, at(1_111_111_111 - 30)).unwrap();
        let next = code_at(&secret, at(1_111_111_111 + 30)).unwrap();
        assert_eq!(verify(&secret, &previous, now, None), Ok(step - 1));
        assert_eq!(verify(&secret, &next, now, None), Ok(step + 1));
    }

    #[test]
    fn verify_rejects_outside_window() {
        let secret = rfc_secret();
        let now = at(1_111_111_111);
        let old = code_at(&secret, at(1_111_111_111 - 60)).unwrap();
        let future = code_at(&secret, at(1_111_111_111 + 60)).unwrap();
        assert_eq!(verify(&secret, &old, now, None), Err(TotpError::Invalid));
        assert_eq!(verify(&secret, &future, now, None), Err(TotpError::Invalid));
    }

    #[test]
    fn verify_rejects_reused_code() {
        let secret = rfc_secret();
        let now = at(1_111_111_111);
        let code = code_at(&secret, now).unwrap();
        let step = verify(&secret, &code, now, None).unwrap();
        assert_eq!(
            verify(&secret, &code, now, Some(step)),
            Err(TotpError::Reused)
        );
        // An earlier step's code after a later one was used.
        let previous = code_at(&secret, at(1_111_111_111 - 30)).unwrap();
        assert_eq!(
            verify(&secret, &previous, now, Some(step)),
            Err(TotpError::Reused)
        );
    }

    #[test]
    fn verify_rejects_wrong_and_malformed_codes() {
        let secret = rfc_secret();
        let now = at(1_111_111_111);
        let code = code_at(&secret, now).unwrap();
        let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
        assert_eq!(verify(&secret, &wrong, now, None), Err(TotpError::Invalid));
        for bad in ["", "12345", "1234567", "12a456", "１２３４５６"] {
            assert_eq!(verify(&secret, bad, now, None), Err(TotpError::Malformed));
        }
    }

    #[test]
    fn verify_ignores_spaces() {
        let secret = rfc_secret();
        let now = at(1_234_567_890);
        let code = code_at(&secret, now).unwrap();
        let spaced = format!("{} {}", &code[..3], &code[3..]);
        assert!(verify(&secret, &spaced, now, None).is_ok());
    }

    #[test]
    fn generated_secret_round_trips_base32() {
        let secret = TotpSecret::generate().unwrap();
        let encoded = secret.to_base32();
        assert_eq!(encoded.len(), 32);
        let decoded = TotpSecret::from_base32(&encoded).unwrap();
        assert_eq!(*decoded.0, *secret.0);
    }

    #[test]
    fn short_secret_is_rejected() {
        assert!(TotpSecret::from_bytes(&[0u8; 10]).is_err());
        assert!(TotpSecret::from_base32("not base32!").is_err());
    }

    #[test]
    fn provisioning_uri_is_encoded() {
        let secret = rfc_secret();
        let uri = secret
            .provisioning_uri("St Mary's", "j.doe@example.org")
            .unwrap();
        assert_eq!(
            uri.as_str(),
            "otpauth://totp/St%20Mary%27s:j.doe%40example.org?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=St%20Mary%27s&algorithm=SHA1&digits=6&period=30"
        );
        assert!(secret.provisioning_uri("a:b", "user").is_err());
        assert!(secret.provisioning_uri("Org", "").is_err());
    }

    #[test]
    fn debug_hides_secret() {
        assert_eq!(format!("{:?}", rfc_secret()), "TotpSecret([redacted])");
    }

    #[test]
    fn recovery_codes_are_distinct_and_formatted() {
        let set = RecoveryCodes::generate().unwrap();
        assert_eq!(set.codes.len(), RECOVERY_CODE_COUNT);
        assert_eq!(set.hashes.len(), RECOVERY_CODE_COUNT);
        for code in &set.codes {
            assert_eq!(code.len(), 19, "{}", code.as_str());
            assert_eq!(code.matches('-').count(), 3);
        }
        let unique: std::collections::HashSet<_> = set.codes.iter().map(|c| c.as_str()).collect();
        assert_eq!(unique.len(), RECOVERY_CODE_COUNT);
    }

    #[test]
    fn recovery_code_redeems_once() {
        let set = RecoveryCodes::generate().unwrap();
        let mut unused = set.hashes.clone();
        let code = set.codes[3].as_str();
        assert_eq!(redeem_recovery_code(code, &unused), Some(3));
        unused.remove(3);
        assert_eq!(redeem_recovery_code(code, &unused), None);
    }

    #[test]
    fn recovery_code_tolerates_typing() {
        let set = RecoveryCodes::generate().unwrap();
        let typed = set.codes[0].to_lowercase().replace('-', " ");
        assert_eq!(redeem_recovery_code(&typed, &set.hashes), Some(0));
    }

    #[test]
    fn recovery_code_rejects_wrong_input() {
        let set = RecoveryCodes::generate().unwrap();
        for bad in ["", "0000-0000-0000-0000", "short", "UUUU-UUUU-UUUU-UUUU"] {
            assert_eq!(redeem_recovery_code(bad, &set.hashes), None, "{bad}");
        }
        let longer = format!("{}-0", set.codes[0].as_str());
        assert_eq!(redeem_recovery_code(&longer, &set.hashes), None);
    }
}
