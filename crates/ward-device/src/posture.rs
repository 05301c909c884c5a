//! The posture a device reports at enrollment and at each check-in, and the
//! dotted version numbers it carries.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::error::{DeviceError, Result};

/// Longest accepted operating system name or version string, in bytes.
const MAX_FIELD_LEN: usize = 64;

/// Most numeric parts in a version.
const MAX_VERSION_PARTS: usize = 8;

/// A device's report about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posture {
    /// The operating system, lower case: `ios`, `android`, `linux`, ...
    pub os: String,
    /// The operating system version, such as `17.4.1`.
    pub os_version: String,
    /// Whether a screen lock (passcode, PIN, biometric) is set.
    pub screen_lock: bool,
    /// Whether the device storage is encrypted.
    pub storage_encrypted: bool,
    /// Whether the device is rooted or jailbroken.
    pub rooted: bool,
    /// The version of the Ward mobile app.
    pub app_version: String,
}

impl Posture {
    /// Checks the fields' form: `os` is 1 to 64 lower-case letters, digits,
    /// `-` or `_`; both versions parse as [`Version`].
    ///
    /// # Errors
    ///
    /// [`DeviceError::InvalidPosture`] naming the field and the expected form.
    pub fn validate(&self) -> Result<()> {
        let os_ok = !self.os.is_empty()
            && self.os.len() <= MAX_FIELD_LEN
            && self
                .os
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !os_ok {
            return Err(DeviceError::InvalidPosture(
                "os must be 1 to 64 lower-case letters, digits, '-' or '_', such as ios or android"
                    .into(),
            ));
        }
        Version::parse(&self.os_version)
            .map_err(|reason| DeviceError::InvalidPosture(format!("os_version: {reason}")))?;
        Version::parse(&self.app_version)
            .map_err(|reason| DeviceError::InvalidPosture(format!("app_version: {reason}")))?;
        Ok(())
    }
}

/// A dotted numeric version such as `17.4.1`. A suffix after `-` or `+`
/// (`6.1.0-18-amd64`, `0.2.0-beta`) is ignored, and missing parts count as
/// zero, so `17` equals `17.0.0`.
#[derive(Debug, Clone, Eq)]
pub struct Version(Vec<u64>);

impl Version {
    /// Parses a version.
    ///
    /// # Errors
    ///
    /// A message naming the value when it is empty, longer than 64 bytes,
    /// or not dot-separated numbers.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        // Only printable ASCII: a suffix is shown to administrators, so no
        // control or bidirectional characters may hide in it.
        let shown: String = text
            .chars()
            .take(MAX_FIELD_LEN)
            .map(|c| if c.is_ascii_graphic() { c } else { '?' })
            .collect();
        let invalid = || format!("'{shown}' is not a dotted version such as 17.4.1");
        if text.is_empty()
            || text.len() > MAX_FIELD_LEN
            || !text.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(invalid());
        }
        let core = text.split(['-', '+']).next().unwrap_or_default();
        let parts: Vec<u64> = core
            .split('.')
            .map(|part| {
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                part.parse().ok()
            })
            .collect::<Option<_>>()
            .ok_or_else(invalid)?;
        if parts.len() > MAX_VERSION_PARTS {
            return Err(invalid());
        }
        Ok(Self(parts))
    }

    fn part(&self, index: usize) -> u64 {
        self.0.get(index).copied().unwrap_or(0)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let len = self.0.len().max(other.0.len());
        (0..len)
            .map(|i| self.part(i).cmp(&other.part(i)))
            .find(|ordering| ordering.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(v("17.4.1") > v("17.4"));
        assert!(v("17.10") > v("17.9"));
        assert_eq!(v("17"), v("17.0.0"));
        assert!(v("6.1.0-18-amd64") > v("5.10"));
        assert_eq!(v("0.2.0-beta"), v("0.2.0"));
        assert!(v("13") < v("14.0.1"));
    }

    #[test]
    fn versions_reject_garbage() {
        for bad in ["", "abc", "1..2", ".1", "1.x", "v17", "1.2.3.4.5.6.7.8.9"] {
            assert!(Version::parse(bad).is_err(), "{bad}");
        }
        assert!(Version::parse(&"1.".repeat(40)).is_err());
        for hidden in ["17.4-\u{202E}ateb", "17.4+a\u{2066}b", "17.4-a\u{0007}"] {
            let error = Version::parse(hidden).unwrap_err();
            assert!(error.contains("not a dotted version"), "{error}");
            assert!(!error.contains('\u{202E}'), "{error}");
        }
    }

    fn posture() -> Posture {
        Posture {
            os: "ios".into(),
            os_version: "17.4.1".into(),
            screen_lock: true,
            storage_encrypted: true,
            rooted: false,
            app_version: "0.1.0".into(),
        }
    }

    #[test]
    fn posture_validation_names_the_field() {
        assert!(posture().validate().is_ok());
        let mut bad = posture();
        bad.os = "iOS 17".into();
        let error = bad.validate().unwrap_err().to_string();
        assert!(error.contains("os must be"), "{error}");
        let mut bad = posture();
        bad.app_version = "latest".into();
        let error = bad.validate().unwrap_err().to_string();
        assert!(error.contains("app_version"), "{error}");
    }
}
