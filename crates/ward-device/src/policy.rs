//! The posture and compliance policy (TOML). The default ships with the
//! crate (`policy/default-device-policy.toml`); a `device-policy.toml` in
//! the data directory replaces it.
//!
//! A device is compliant when its last posture passes every rule and its
//! last check-in is recent enough. Each failing rule is reported with a
//! stable rule name and a message that names the fix for the user.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::error::{DeviceError, Result};
use crate::posture::{Posture, Version};

/// The shipped default policy.
pub const DEFAULT_POLICY: &str = include_str!("../policy/default-device-policy.toml");

/// The policy file format this crate reads.
const SUPPORTED_VERSION: i64 = 1;

/// Maximum check-in age a policy may allow: 90 days.
const MAX_CHECKIN_AGE_HOURS: i64 = 90 * 24;

/// Largest policy file accepted, in bytes.
const MAX_POLICY_LEN: usize = 64 * 1024;

/// One rule a device failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleFailure {
    /// The rule name: `posture`, `os`, `os_version`, `screen_lock`,
    /// `storage_encryption`, `rooted`, `app_version` or `checkin_age`.
    pub rule: String,
    /// The problem and its fix.
    pub message: String,
}

/// The result of checking a device against the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compliance {
    /// True when no rule failed.
    pub compliant: bool,
    /// The failed rules, in policy order.
    pub failures: Vec<RuleFailure>,
}

impl Compliance {
    /// The compliance of a device the posture rules do not apply to.
    pub fn exempt() -> Self {
        Self {
            compliant: true,
            failures: Vec::new(),
        }
    }

    /// Returns the failures as `rule: message` joined by `; `.
    pub fn summary(&self) -> String {
        self.failures
            .iter()
            .map(|f| format!("{}: {}", f.rule, f.message))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: i64,
    max_checkin_age_hours: i64,
    screen_lock_required: bool,
    storage_encryption_required: bool,
    allow_rooted: bool,
    min_app_version: String,
    #[serde(default)]
    os: BTreeMap<String, RawOs>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOs {
    min_version: String,
}

/// The device posture policy.
#[derive(Debug, Clone)]
pub struct PosturePolicy {
    max_checkin_age: Duration,
    screen_lock_required: bool,
    storage_encryption_required: bool,
    allow_rooted: bool,
    min_app_version: Version,
    min_app_version_text: String,
    os: BTreeMap<String, (Version, String)>,
}

impl Default for PosturePolicy {
    fn default() -> Self {
        // The unit test `shipped_policy_parses` parses the same embedded
        // text, so this cannot fail in a build whose tests pass.
        Self::parse(DEFAULT_POLICY).expect("the shipped device policy is valid")
    }
}

impl PosturePolicy {
    /// Parses a policy file.
    ///
    /// # Errors
    ///
    /// [`DeviceError::Policy`] naming the problem: invalid TOML, an unknown
    /// or missing key, another format version, a check-in age outside 1 hour
    /// to 90 days, or an invalid version number.
    pub fn parse(text: &str) -> Result<Self> {
        if text.len() > MAX_POLICY_LEN {
            return Err(DeviceError::Policy("the file is larger than 64 KiB".into()));
        }
        let raw: RawPolicy =
            toml::from_str(text).map_err(|e| DeviceError::Policy(e.message().to_owned()))?;
        if raw.version != SUPPORTED_VERSION {
            return Err(DeviceError::Policy(format!(
                "version {} is not supported; use version = {SUPPORTED_VERSION}",
                raw.version
            )));
        }
        if !(1..=MAX_CHECKIN_AGE_HOURS).contains(&raw.max_checkin_age_hours) {
            return Err(DeviceError::Policy(format!(
                "max_checkin_age_hours = {} is out of range; use 1 to {MAX_CHECKIN_AGE_HOURS}",
                raw.max_checkin_age_hours
            )));
        }
        let version = |what: &str, text: &str| {
            Version::parse(text).map_err(|reason| DeviceError::Policy(format!("{what}: {reason}")))
        };
        let mut os = BTreeMap::new();
        for (name, rule) in raw.os {
            let min = version(&format!("os.{name}.min_version"), &rule.min_version)?;
            os.insert(name, (min, rule.min_version));
        }
        Ok(Self {
            max_checkin_age: Duration::hours(raw.max_checkin_age_hours),
            screen_lock_required: raw.screen_lock_required,
            storage_encryption_required: raw.storage_encryption_required,
            allow_rooted: raw.allow_rooted,
            min_app_version: version("min_app_version", &raw.min_app_version)?,
            min_app_version_text: raw.min_app_version,
            os,
        })
    }

    /// Loads `path` when it exists, the default policy otherwise.
    ///
    /// # Errors
    ///
    /// An unreadable or invalid file, with its path.
    pub fn load_or_default(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text)
                .map_err(|e| DeviceError::Policy(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(DeviceError::Policy(format!("{}: {e}", path.display()))),
        }
    }

    /// The maximum time between check-ins.
    pub fn max_checkin_age(&self) -> Duration {
        self.max_checkin_age
    }

    /// Checks a device's last posture and last check-in at `now`. A device
    /// that never reported a posture fails the `posture` rule.
    pub fn evaluate(
        &self,
        posture: Option<&Posture>,
        last_checkin: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Compliance {
        let mut failures = Vec::new();
        let mut fail = |rule: &str, message: String| {
            failures.push(RuleFailure {
                rule: rule.to_owned(),
                message,
            });
        };
        match posture {
            Some(posture) => self.check_posture(posture, &mut fail),
            None => fail(
                "posture",
                "the device has not reported its posture; open the app to check in".into(),
            ),
        }
        let stale = last_checkin.is_none_or(|at| now - at > self.max_checkin_age);
        if stale {
            fail(
                "checkin_age",
                format!(
                    "the last check-in is older than {} hours; open the app to check in",
                    self.max_checkin_age.whole_hours()
                ),
            );
        }
        Compliance {
            compliant: failures.is_empty(),
            failures,
        }
    }

    fn check_posture(&self, posture: &Posture, fail: &mut impl FnMut(&str, String)) {
        match self.os.get(&posture.os) {
            None => {
                let allowed: Vec<&str> = self.os.keys().map(String::as_str).collect();
                fail(
                    "os",
                    format!(
                        "the operating system '{}' is not allowed; use one of {}",
                        posture.os,
                        allowed.join(", ")
                    ),
                );
            }
            Some((min, min_text)) => {
                let current = Version::parse(&posture.os_version);
                if current.as_ref().is_ok_and(|v| v < min) || current.is_err() {
                    fail(
                        "os_version",
                        format!(
                            "{} {} is older than the minimum {min_text}; update the operating system",
                            posture.os,
                            posture.os_version.chars().take(64).collect::<String>()
                        ),
                    );
                }
            }
        }
        if self.screen_lock_required && !posture.screen_lock {
            fail(
                "screen_lock",
                "a screen lock is required; set a passcode".into(),
            );
        }
        if self.storage_encryption_required && !posture.storage_encrypted {
            fail(
                "storage_encryption",
                "storage encryption is required; turn on device encryption".into(),
            );
        }
        if !self.allow_rooted && posture.rooted {
            fail(
                "rooted",
                "rooted or jailbroken devices are not allowed; restore the stock system".into(),
            );
        }
        let app = Version::parse(&posture.app_version);
        if app.as_ref().is_ok_and(|v| *v < self.min_app_version) || app.is_err() {
            fail(
                "app_version",
                format!(
                    "the app version is older than the minimum {}; update the app",
                    self.min_app_version_text
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Posture {
        Posture {
            os: "ios".into(),
            os_version: "17.4.1".into(),
            screen_lock: true,
            storage_encrypted: true,
            rooted: false,
            app_version: "0.1.0".into(),
        }
    }

    fn rules(compliance: &Compliance) -> Vec<&str> {
        compliance
            .failures
            .iter()
            .map(|f| f.rule.as_str())
            .collect()
    }

    #[test]
    fn shipped_policy_parses() {
        let policy = PosturePolicy::parse(DEFAULT_POLICY).unwrap();
        assert_eq!(policy.max_checkin_age(), Duration::hours(72));
        assert!(policy.os.contains_key("ios"));
        assert!(policy.os.contains_key("android"));
    }

    #[test]
    fn compliant_device_passes() {
        let now = OffsetDateTime::now_utc();
        let result = PosturePolicy::default().evaluate(Some(&good()), Some(now), now);
        assert!(result.compliant);
        assert!(result.failures.is_empty());
    }

    #[test]
    fn each_failing_rule_is_named() {
        let now = OffsetDateTime::now_utc();
        let policy = PosturePolicy::default();
        type Change = fn(&mut Posture);
        let cases: Vec<(Change, &str)> = vec![
            (|p| p.screen_lock = false, "screen_lock"),
            (|p| p.storage_encrypted = false, "storage_encryption"),
            (|p| p.rooted = true, "rooted"),
            (|p| p.os_version = "15.7".into(), "os_version"),
            (|p| p.os = "symbian".into(), "os"),
            (|p| p.app_version = "0.0.9".into(), "app_version"),
        ];
        for (change, rule) in cases {
            let mut posture = good();
            change(&mut posture);
            let result = policy.evaluate(Some(&posture), Some(now), now);
            assert!(!result.compliant, "{rule}");
            assert_eq!(rules(&result), vec![rule]);
        }
    }

    #[test]
    fn screen_lock_message_says_what_to_do() {
        let now = OffsetDateTime::now_utc();
        let mut posture = good();
        posture.screen_lock = false;
        let result = PosturePolicy::default().evaluate(Some(&posture), Some(now), now);
        assert_eq!(
            result.summary(),
            "screen_lock: a screen lock is required; set a passcode"
        );
    }

    #[test]
    fn several_failures_are_all_reported() {
        let now = OffsetDateTime::now_utc();
        let mut posture = good();
        posture.screen_lock = false;
        posture.storage_encrypted = false;
        let result = PosturePolicy::default().evaluate(Some(&posture), Some(now), now);
        assert_eq!(rules(&result), vec!["screen_lock", "storage_encryption"]);
    }

    #[test]
    fn stale_checkin_fails() {
        let now = OffsetDateTime::now_utc();
        let policy = PosturePolicy::default();
        let recent = now - Duration::hours(71);
        assert!(policy.evaluate(Some(&good()), Some(recent), now).compliant);
        let old = now - Duration::hours(73);
        let result = policy.evaluate(Some(&good()), Some(old), now);
        assert_eq!(rules(&result), vec!["checkin_age"]);
        let never = policy.evaluate(None, None, now);
        assert_eq!(rules(&never), vec!["posture", "checkin_age"]);
    }

    #[test]
    fn custom_policy_relaxes_rules() {
        let text = r#"
            version = 1
            max_checkin_age_hours = 1
            screen_lock_required = false
            storage_encryption_required = true
            allow_rooted = true
            min_app_version = "2.0"
            [os.android]
            min_version = "14"
        "#;
        let policy = PosturePolicy::parse(text).unwrap();
        let now = OffsetDateTime::now_utc();
        let mut posture = good();
        posture.os = "android".into();
        posture.os_version = "14".into();
        posture.screen_lock = false;
        posture.rooted = true;
        posture.app_version = "2.1.0".into();
        assert!(policy.evaluate(Some(&posture), Some(now), now).compliant);
        posture.os = "ios".into();
        let result = policy.evaluate(Some(&posture), Some(now), now);
        assert_eq!(rules(&result), vec!["os"]);
    }

    #[test]
    fn invalid_policies_are_rejected() {
        let base = DEFAULT_POLICY.to_owned();
        let cases = [
            (base.replace("version = 1", "version = 2"), "version 2"),
            (
                base.replace("max_checkin_age_hours = 72", "max_checkin_age_hours = 0"),
                "max_checkin_age_hours",
            ),
            (
                base.replace("min_app_version = \"0.1.0\"", "min_app_version = \"new\""),
                "min_app_version",
            ),
            (base.clone() + "\nunknown_key = true\n", "unknown"),
            (
                base.replace("min_version = \"13\"", "min_version = \"thirteen\""),
                "os.android.min_version",
            ),
        ];
        for (text, expected) in cases {
            let error = PosturePolicy::parse(&text).unwrap_err().to_string();
            assert!(error.contains(expected), "{expected}: {error}");
        }
    }
}
