//! The device id: 128 random bits as 32 lower-case hex digits. It is the
//! subject CN of the device certificate and appears in its URI SAN as
//! `urn:ward:device:{id}`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{DeviceError, Result};

/// The URI SAN prefix of device certificates.
pub const DEVICE_URI_PREFIX: &str = "urn:ward:device:";

/// Length of a device id, in characters.
const ID_LEN: usize = 32;

/// A device id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

impl DeviceId {
    /// Generates a new random id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Parses an id.
    ///
    /// # Errors
    ///
    /// [`DeviceError::InvalidId`] unless `text` is 32 lower-case hex digits.
    pub fn parse(text: &str) -> Result<Self> {
        let valid = text.len() == ID_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(DeviceError::InvalidId(text.chars().take(64).collect()))
        }
    }

    /// Parses the id out of a certificate URI SAN `urn:ward:device:{id}`.
    pub fn from_uri(uri: &str) -> Option<Self> {
        Self::parse(uri.strip_prefix(DEVICE_URI_PREFIX)?).ok()
    }

    /// Returns the id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Returns the URI SAN of the device certificate.
    pub fn uri(&self) -> String {
        format!("{DEVICE_URI_PREFIX}{}", self.0)
    }
}

impl TryFrom<String> for DeviceId {
    type Error = DeviceError;

    fn try_from(value: String) -> Result<Self> {
        Self::parse(&value)
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> Self {
        id.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse() {
        let id = DeviceId::generate();
        assert_eq!(DeviceId::parse(id.as_str()).unwrap(), id);
        assert_ne!(DeviceId::generate(), id);
    }

    #[test]
    fn uri_round_trip() {
        let id = DeviceId::generate();
        assert_eq!(DeviceId::from_uri(&id.uri()), Some(id));
        assert_eq!(DeviceId::from_uri("urn:ward:device:xyz"), None);
        assert_eq!(DeviceId::from_uri("https://example.org"), None);
    }

    #[test]
    fn parse_rejects_bad_ids() {
        for bad in [
            "",
            "3F2A0000000000000000000000000000",
            "3f2a",
            "3f2a000000000000000000000000000g",
            "../../etc/passwd",
            "3f2a00000000000000000000000000000",
        ] {
            assert!(DeviceId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deserialize_validates() {
        assert!(serde_json::from_str::<DeviceId>("\"not-an-id\"").is_err());
        let id = DeviceId::generate();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<DeviceId>(&json).unwrap(), id);
    }
}
