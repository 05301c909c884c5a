//! Password hashing and the password policy.
//!
//! # Hashing
//!
//! Passwords are hashed with Argon2id (RFC 9106, version 0x13) into PHC
//! strings such as `$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`, so every
//! stored hash carries its own parameters and old hashes stay verifiable
//! after the defaults change. The defaults, m = 19 MiB, t = 2, p = 1, are the
//! first Argon2id configuration in the OWASP Password Storage Cheat Sheet
//! (2024 revision). [`verify`] reports when a hash was made with weaker
//! parameters than the current ones, so the caller can rehash the password
//! while it has it in hand.
//!
//! Before hashing, and before every check, a password is normalized to
//! Unicode NFKC, as NIST SP 800-63B-4 (section 3.1.1.2) recommends, so the
//! same password typed on keyboards that produce different code point
//! sequences (a precomposed "é" or "e" plus a combining accent, a full-width
//! digit) hashes the same. Lengths are counted in code points after
//! normalization.
//!
//! # Policy
//!
//! [`check_new_password`] applies the NIST SP 800-63B-4 rules for
//! passwords chosen by the user: at least 8 characters (15 for
//! administrators, whose accounts are single-factor targets of higher
//! value), at most 256, no composition rules, and rejection when the
//! password is in the bundled list of common passwords or equals or contains
//! the user name. The common-password list is the 30,000-entry list from the
//! npm package `zxcvbn` 4.4.2; `data/README.md` gives its source and licence.

use std::collections::HashSet;
use std::sync::LazyLock;

use argon2::password_hash::Error as PhcError;
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier as _};
use unicode_normalization::UnicodeNormalization as _;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::random;

/// Minimum length of a password, in characters.
pub const MIN_LENGTH: usize = 8;

/// Minimum length of an administrator's password, in characters.
pub const ADMIN_MIN_LENGTH: usize = 15;

/// Maximum length of a password, in characters. NIST asks verifiers to
/// accept at least 64.
pub const MAX_LENGTH: usize = 256;

/// Shortest user name that [`check_new_password`] also looks for inside a
/// password. Shorter names are only compared for equality, because
/// two-letter names occur inside too many good passwords.
pub const MIN_CONTAINED_USER_NAME: usize = 3;

/// Length of the random salt, in bytes (the RFC 9106 recommendation).
const SALT_LEN: usize = 16;

/// Length of the Argon2 output, in bytes.
const OUTPUT_LEN: usize = 32;

/// Largest parameters accepted from a stored hash, so that a corrupted or
/// planted row cannot make one verification take gigabytes or minutes.
const MAX_M_COST_KIB: u32 = 1024 * 1024;
const MAX_T_COST: u32 = 64;
const MAX_P_COST: u32 = 16;

/// The common-password list, one lower-case password a line.
const COMMON_PASSWORDS: &str = include_str!("../data/common-passwords.txt");

static COMMON: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    COMMON_PASSWORDS
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect()
});

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    /// Memory cost in KiB.
    pub m_cost_kib: u32,
    /// Number of passes.
    pub t_cost: u32,
    /// Degree of parallelism.
    pub p_cost: u32,
}

impl HashParams {
    /// The OWASP 2024 baseline: 19 MiB, 2 passes, 1 lane.
    pub const OWASP_2024: Self = Self {
        m_cost_kib: 19 * 1024,
        t_cost: 2,
        p_cost: 1,
    };

    fn to_argon2(self) -> Result<Params> {
        Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(OUTPUT_LEN))
            .map_err(|e| Error::Hashing(e.to_string()))
    }

    /// True when `self` is weaker than `current` in memory or passes, or
    /// differs in parallelism.
    fn weaker_than(self, current: Self) -> bool {
        self.m_cost_kib < current.m_cost_kib
            || self.t_cost < current.t_cost
            || self.p_cost != current.p_cost
    }
}

impl Default for HashParams {
    fn default() -> Self {
        Self::OWASP_2024
    }
}

/// The result of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// The password matches.
    Valid {
        /// The hash uses weaker parameters than the current ones, or an
        /// older Argon2 version: the caller should store [`hash`] of the
        /// password in its place.
        needs_rehash: bool,
    },
    /// The password does not match.
    Invalid,
}

impl Verification {
    /// True for [`Verification::Valid`].
    pub fn is_valid(self) -> bool {
        matches!(self, Verification::Valid { .. })
    }
}

/// Which minimum length applies to an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    /// An ordinary account: [`MIN_LENGTH`].
    Standard,
    /// An account with administrative rights: [`ADMIN_MIN_LENGTH`].
    Admin,
}

impl AccountKind {
    /// The minimum password length for this kind of account.
    pub fn min_length(self) -> usize {
        match self {
            AccountKind::Standard => MIN_LENGTH,
            AccountKind::Admin => ADMIN_MIN_LENGTH,
        }
    }
}

/// Why a new password was rejected. The messages are fit to show the user
/// and never repeat the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordRejection {
    /// Fewer characters than the minimum for the account.
    #[error("the password must have at least {min} characters")]
    TooShort {
        /// The minimum that applies.
        min: usize,
    },
    /// More characters than [`MAX_LENGTH`].
    #[error("the password must have at most {max} characters")]
    TooLong {
        /// The maximum.
        max: usize,
    },
    /// The password is in the list of common passwords.
    #[error("the password is too common: choose one that others are unlikely to use")]
    Common,
    /// The password equals or contains the user name.
    #[error("the password must not contain the user name")]
    ContainsUserName,
}

/// Normalizes a password to Unicode NFKC.
pub fn normalize(password: &str) -> Zeroizing<String> {
    Zeroizing::new(password.nfkc().collect())
}

/// Checks a new password against the policy described in the module
/// documentation. `user_name` is the sign-in name of the account.
///
/// # Errors
///
/// The first rule the password breaks, checked in the order length,
/// user name, common list.
pub fn check_new_password(
    password: &str,
    user_name: &str,
    kind: AccountKind,
) -> Result<(), PasswordRejection> {
    let normalized = normalize(password);
    let length = normalized.chars().count();
    if length < kind.min_length() {
        return Err(PasswordRejection::TooShort {
            min: kind.min_length(),
        });
    }
    if length > MAX_LENGTH {
        return Err(PasswordRejection::TooLong { max: MAX_LENGTH });
    }

    let folded = Zeroizing::new(normalized.to_lowercase());
    let name = normalize(user_name.trim()).to_lowercase();
    if !name.is_empty()
        && (*folded == name
            || (name.chars().count() >= MIN_CONTAINED_USER_NAME && folded.contains(&name)))
    {
        return Err(PasswordRejection::ContainsUserName);
    }
    // The list is lower case, so "Password1" is caught as "password1".
    if COMMON.contains(folded.as_str()) {
        return Err(PasswordRejection::Common);
    }
    Ok(())
}

/// Hashes a password with the default parameters.
///
/// The caller checks the password with [`check_new_password`] first; this
/// function only rejects passwords over [`MAX_LENGTH`].
///
/// # Errors
///
/// [`Error::Hashing`] for an over-long password or an Argon2 failure, and
/// [`Error::Random`] if no salt can be drawn.
pub fn hash(password: &str) -> Result<String> {
    hash_with(password, HashParams::default())
}

/// Hashes a password with the given parameters into a PHC string.
///
/// # Errors
///
/// As [`hash`], and [`Error::Hashing`] for parameters Argon2 rejects.
pub fn hash_with(password: &str, params: HashParams) -> Result<String> {
    let normalized = normalize(password);
    if normalized.chars().count() > MAX_LENGTH {
        return Err(Error::Hashing(format!(
            "password longer than {MAX_LENGTH} characters"
        )));
    }
    let salt = random::bytes::<SALT_LEN>()?;
    let hasher = Argon2::new(
        Algorithm::Argon2id,
        argon2::Version::V0x13,
        params.to_argon2()?,
    );
    let phc = hasher
        .hash_password_with_salt(normalized.as_bytes(), salt.as_slice())
        .map_err(|e| Error::Hashing(e.to_string()))?;
    Ok(phc.to_string())
}

/// Verifies a password against a stored PHC string, with the default
/// parameters as the rehash threshold.
///
/// # Errors
///
/// [`Error::InvalidPasswordHash`] when `phc` is malformed, not Argon2id or
/// has parameters beyond the accepted maximum (1 GiB, 64 passes, 16 lanes).
/// A wrong password is `Ok(Verification::Invalid)`, not an error.
pub fn verify(password: &str, phc: &str) -> Result<Verification> {
    verify_with(password, phc, HashParams::default())
}

/// Verifies a password against a stored PHC string; `current` are the
/// parameters new hashes would use.
///
/// # Errors
///
/// As [`verify`].
pub fn verify_with(password: &str, phc: &str, current: HashParams) -> Result<Verification> {
    let invalid = |reason: &str| Error::InvalidPasswordHash {
        reason: reason.to_owned(),
    };
    let parsed = PasswordHash::new(phc).map_err(|e| invalid(&e.to_string()))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(invalid("the algorithm is not argon2id"));
    }
    let params = Params::try_from(&parsed).map_err(|e| invalid(&e.to_string()))?;
    let stored = HashParams {
        m_cost_kib: params.m_cost(),
        t_cost: params.t_cost(),
        p_cost: params.p_cost(),
    };
    if stored.m_cost_kib > MAX_M_COST_KIB
        || stored.t_cost > MAX_T_COST
        || stored.p_cost > MAX_P_COST
    {
        return Err(invalid("the cost parameters exceed the accepted maximum"));
    }

    let normalized = normalize(password);
    if normalized.chars().count() > MAX_LENGTH {
        // Still spend the time of a verification so the response time does
        // not reveal that the length check failed first.
        let _ = Argon2::default().verify_password(b"", &parsed);
        return Ok(Verification::Invalid);
    }
    match Argon2::default().verify_password(normalized.as_bytes(), &parsed) {
        Ok(()) => {
            let old_version = parsed.version != Some(argon2::Version::V0x13.into());
            let short_output = parsed.hash.is_some_and(|h| h.len() < OUTPUT_LEN);
            Ok(Verification::Valid {
                needs_rehash: stored.weaker_than(current) || old_version || short_output,
            })
        }
        Err(PhcError::PasswordInvalid) => Ok(Verification::Invalid),
        Err(e) => Err(invalid(&e.to_string())),
    }
}

/// Verifies a password against the stored hash of an account that may not
/// exist. For an unknown account it runs [`dummy_verify`] and returns
/// [`Verification::Invalid`], so the two cases take the same time and give
/// the same answer.
///
/// # Errors
///
/// As [`verify`], for a stored hash that exists but is malformed.
pub fn verify_account(password: &str, stored_phc: Option<&str>) -> Result<Verification> {
    match stored_phc {
        Some(phc) => verify(password, phc),
        None => {
            dummy_verify(password);
            Ok(Verification::Invalid)
        }
    }
}

/// Runs one Argon2id verification with the default parameters against a
/// hash of a random password, to spend the same time as a real check when
/// the user name is unknown.
pub fn dummy_verify(password: &str) {
    static DUMMY: LazyLock<Option<String>> = LazyLock::new(|| {
        let filler = random::bytes::<32>().ok()?;
        let filler = crate::base32::encode(filler.as_slice());
        hash(&filler).ok()
    });
    if let Some(phc) = DUMMY.as_deref() {
        let _ = verify(password, phc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters so the tests run quickly in debug builds.
    const FAST: HashParams = HashParams {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };

    #[test]
    fn hash_records_parameters() {
        let phc = hash_with("correct horse battery", FAST).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
    }

    #[test]
    fn default_hash_uses_owasp_parameters() {
        let phc = hash("correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert_eq!(
            verify("correct horse battery", &phc).unwrap(),
            Verification::Valid {
                needs_rehash: false
            }
        );
    }

    #[test]
    fn verify_accepts_right_password() {
        let phc = hash_with("correct horse battery", FAST).unwrap();
        let result = verify_with("correct horse battery", &phc, FAST).unwrap();
        assert_eq!(
            result,
            Verification::Valid {
                needs_rehash: false
            }
        );
    }

    #[test]
    fn verify_rejects_wrong_password() {
        let phc = hash_with("correct horse battery", FAST).unwrap();
        let result = verify_with("correct horse batterY", &phc, FAST).unwrap();
        assert_eq!(result, Verification::Invalid);
    }

    #[test]
    fn weaker_hash_needs_rehash() {
        let phc = hash_with("correct horse battery", FAST).unwrap();
        let stronger = HashParams {
            m_cost_kib: 128,
            ..FAST
        };
        let result = verify_with("correct horse battery", &phc, stronger).unwrap();
        assert_eq!(result, Verification::Valid { needs_rehash: true });
    }

    #[test]
    fn normalization_makes_forms_equal() {
        // U+00E9 versus "e" + U+0301, and a full-width digit.
        let phc = hash_with("caf\u{e9} au lait \u{ff11}", FAST).unwrap();
        let result = verify_with("cafe\u{301} au lait 1", &phc, FAST).unwrap();
        assert!(result.is_valid());
    }

    #[test]
    fn malformed_hash_is_an_error() {
        for bad in [
            "",
            "plain",
            "$argon2id$v=19$m=64,t=1,p=1$",
            "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
        ] {
            assert!(
                matches!(
                    verify("password", bad),
                    Err(Error::InvalidPasswordHash { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unknown_account_is_invalid() {
        assert_eq!(
            verify_account("whatever", None).unwrap(),
            Verification::Invalid
        );
    }

    #[test]
    fn policy_accepts_long_unusual_password() {
        assert_eq!(
            check_new_password("violet tractor lantern", "alice", AccountKind::Standard),
            Ok(())
        );
        assert_eq!(
            check_new_password("violet tractor lantern", "alice", AccountKind::Admin),
            Ok(())
        );
    }

    #[test]
    fn policy_rejects_short_password() {
        assert_eq!(
            check_new_password("v1olet!", "alice", AccountKind::Standard),
            Err(PasswordRejection::TooShort { min: 8 })
        );
    }

    #[test]
    fn policy_rejects_admin_14_characters() {
        let fourteen = "violet tractor";
        assert_eq!(fourteen.chars().count(), 14);
        assert_eq!(
            check_new_password(fourteen, "alice", AccountKind::Admin),
            Err(PasswordRejection::TooShort { min: 15 })
        );
        assert_eq!(
            check_new_password(fourteen, "alice", AccountKind::Standard),
            Ok(())
        );
    }

    #[test]
    fn policy_counts_characters_not_bytes() {
        // Eight characters, sixteen bytes in UTF-8.
        assert_eq!(
            check_new_password("жёлтыйкт", "alice", AccountKind::Standard),
            Ok(())
        );
    }

    #[test]
    fn policy_rejects_over_maximum() {
        let long = "x".repeat(MAX_LENGTH + 1);
        assert_eq!(
            check_new_password(&long, "alice", AccountKind::Standard),
            Err(PasswordRejection::TooLong { max: MAX_LENGTH })
        );
        assert!(check_new_password(&"xy".repeat(128), "alice", AccountKind::Standard).is_ok());
    }

    #[test]
    fn policy_rejects_common_password() {
        for common in ["password", "Password1", "qwertyuiop", "iloveyou"] {
            assert_eq!(
                check_new_password(common, "alice", AccountKind::Standard),
                Err(PasswordRejection::Common),
                "{common}"
            );
        }
    }

    #[test]
    fn policy_rejects_user_name() {
        assert_eq!(
            check_new_password("drsmith1977", "DrSmith", AccountKind::Standard),
            Err(PasswordRejection::ContainsUserName)
        );
        assert_eq!(
            check_new_password("jo.harrison", "jo.harrison", AccountKind::Standard),
            Err(PasswordRejection::ContainsUserName)
        );
        // A two-letter name only counts when it is the whole password.
        assert_eq!(
            check_new_password("violet tractor jo", "jo", AccountKind::Standard),
            Ok(())
        );
    }

    #[test]
    fn common_list_is_loaded() {
        assert!(COMMON.len() >= 10_000, "{}", COMMON.len());
    }
}
