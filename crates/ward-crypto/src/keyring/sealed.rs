//! Small secrets, such as private keys, sealed under the master key for
//! storage on disk or in the database.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use super::aead::{NONCE_LEN, TAG_LEN};
use super::{KeyId, MasterKey};
use crate::error::{Error, Result};

/// Prefix of the text form; the number is the format version.
const SEALED_PREFIX: &str = "ward-sealed-v1:";

/// Prefix of the associated data. The label and the master key id follow it.
const SEALED_AAD_LABEL: &[u8] = b"ward-sealed-secret";

/// Maximum text length accepted by [`SealedSecret::parse`], far above any sealed key.
const MAX_SEALED_TEXT_LEN: usize = 64 * 1024;

/// A secret encrypted under a master key, in a text form safe to store.
///
/// The text is `ward-sealed-v1:` followed by the standard base64 of
/// `master key id (8) || nonce (12) || ciphertext || tag (16)`. It contains
/// no secret, so `Display` and `Serialize` print it as is.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret {
    text: String,
    bytes: Vec<u8>,
}

impl SealedSecret {
    /// Parses the text form, as written by `Display` or [`SealedSecret::as_str`].
    ///
    /// Surrounding whitespace is ignored. The content is authenticated only
    /// when it is opened.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] if the prefix, the base64 or the length is wrong.
    pub fn parse(text: &str) -> Result<Self> {
        let malformed = |reason| Error::Malformed {
            what: "sealed secret",
            reason,
        };
        let text = text.trim();
        if text.len() > MAX_SEALED_TEXT_LEN {
            return Err(malformed("longer than 64 KiB"));
        }
        let encoded = text
            .strip_prefix(SEALED_PREFIX)
            .ok_or(malformed("expected text starting with `ward-sealed-v1:`"))?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| malformed("invalid base64"))?;
        if bytes.len() < 8 + NONCE_LEN + TAG_LEN {
            return Err(malformed("too short"));
        }
        Ok(Self {
            text: text.to_owned(),
            bytes,
        })
    }

    /// Returns the text form.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Returns the id of the master key that sealed this secret.
    pub fn master_key_id(&self) -> KeyId {
        let mut id = [0u8; 8];
        id.iter_mut()
            .zip(self.bytes.iter())
            .for_each(|(out, byte)| *out = *byte);
        KeyId(id)
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        let mut text = String::with_capacity(SEALED_PREFIX.len() + bytes.len().div_ceil(3) * 4);
        text.push_str(SEALED_PREFIX);
        STANDARD.encode_string(&bytes, &mut text);
        Self { text, bytes }
    }

    /// Returns `nonce || ciphertext || tag`.
    fn sealed(&self) -> &[u8] {
        self.bytes.get(8..).unwrap_or_default()
    }
}

impl fmt::Display for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedSecret")
            .field("master_key_id", &self.master_key_id())
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl FromStr for SealedSecret {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        Self::parse(text)
    }
}

impl serde::Serialize for SealedSecret {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for SealedSecret {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl MasterKey {
    /// Encrypts a small secret, such as a PKCS#8 private key, for storage.
    ///
    /// `label` names what the secret is (for example `"ca-key"`). It is
    /// authenticated, so a secret sealed under one label fails to open under
    /// another, which stops one stored key from being swapped for another.
    ///
    /// # Errors
    ///
    /// [`Error::Provider`] if AWS-LC fails.
    pub fn seal_secret(&self, label: &str, secret: &[u8]) -> Result<SealedSecret> {
        let mut bytes = Vec::with_capacity(8 + NONCE_LEN + secret.len() + TAG_LEN);
        bytes.extend_from_slice(self.id.as_bytes());
        let aad = sealed_aad(label, self.id);
        self.sealed_secret.seal_append(&aad, secret, &mut bytes)?;
        Ok(SealedSecret::from_bytes(bytes))
    }

    /// Decrypts a secret sealed by [`MasterKey::seal_secret`] with the same
    /// label, with whichever key of the keyring sealed it.
    ///
    /// # Errors
    ///
    /// [`Error::WrongMasterKey`] if no key of the keyring sealed it, and
    /// [`Error::Decrypt`] if it was modified or sealed under another label.
    pub fn open_secret(&self, label: &str, sealed: &SealedSecret) -> Result<Zeroizing<Vec<u8>>> {
        let sealed_by = sealed.master_key_id();
        let master = self.key_for(sealed_by).ok_or(Error::WrongMasterKey {
            what: "sealed secret",
            expected: sealed_by,
            found: self.id,
        })?;

        let aad = sealed_aad(label, sealed_by);
        let mut plain = Zeroizing::new(Vec::with_capacity(sealed.sealed().len()));
        master
            .sealed_secret
            .open_append(&aad, sealed.sealed(), &mut plain)?;
        Ok(plain)
    }

    /// Opens a sealed secret and seals it again under the active key.
    ///
    /// # Errors
    ///
    /// As [`MasterKey::open_secret`] and [`MasterKey::seal_secret`].
    pub fn reseal_secret(&self, label: &str, sealed: &SealedSecret) -> Result<SealedSecret> {
        let plain = self.open_secret(label, sealed)?;
        self.seal_secret(label, &plain)
    }
}

/// Builds `label prefix || label length (u64, big-endian) || label || key id`.
fn sealed_aad(label: &str, id: KeyId) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SEALED_AAD_LABEL.len() + 8 + label.len() + 8);
    aad.extend_from_slice(SEALED_AAD_LABEL);
    aad.extend_from_slice(&(label.len() as u64).to_be_bytes());
    aad.extend_from_slice(label.as_bytes());
    aad.extend_from_slice(id.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_secret_round_trip_through_text() {
        let master = MasterKey::generate().unwrap();
        let sealed = master.seal_secret("ca-key", b"private key bytes").unwrap();
        assert!(sealed.as_str().starts_with(SEALED_PREFIX));
        assert_eq!(sealed.master_key_id(), master.id());

        let parsed: SealedSecret = sealed.to_string().parse().unwrap();
        assert_eq!(parsed, sealed);
        let opened = master.open_secret("ca-key", &parsed).unwrap();
        assert_eq!(opened.as_slice(), b"private key bytes");
    }

    #[test]
    fn open_secret_rejects_other_label() {
        let master = MasterKey::generate().unwrap();
        let sealed = master.seal_secret("ca-key", b"secret").unwrap();
        assert!(matches!(
            master.open_secret("signing-key", &sealed),
            Err(Error::Decrypt)
        ));
    }

    #[test]
    fn open_secret_rejects_other_master_key() {
        let master = MasterKey::generate().unwrap();
        let other = MasterKey::generate().unwrap();
        let sealed = master.seal_secret("ca-key", b"secret").unwrap();
        assert!(matches!(
            other.open_secret("ca-key", &sealed),
            Err(Error::WrongMasterKey { .. })
        ));
    }

    #[test]
    fn open_secret_rejects_flipped_bits() {
        let master = MasterKey::generate().unwrap();
        let sealed = master.seal_secret("ca-key", b"secret").unwrap();
        for index in 8..sealed.bytes.len() {
            let mut bytes = sealed.bytes.clone();
            bytes[index] ^= 0x80;
            let tampered = SealedSecret::from_bytes(bytes);
            assert!(
                matches!(master.open_secret("ca-key", &tampered), Err(Error::Decrypt)),
                "byte {index}"
            );
        }
    }

    #[test]
    fn parse_rejects_malformed_text() {
        let too_short = format!("{SEALED_PREFIX}{}", STANDARD.encode([0u8; 35]));
        let too_long = format!("{SEALED_PREFIX}{}", "A".repeat(MAX_SEALED_TEXT_LEN));
        for text in [
            "",
            "ward-sealed-v1:",
            "ward-sealed-v2:AAAA",
            "ward-sealed-v1:!!!!",
            &too_short,
            &too_long,
        ] {
            let error = SealedSecret::parse(text).unwrap_err();
            assert!(
                matches!(error, Error::Malformed { .. }),
                "{text:.40} gave {error}"
            );
        }
    }

    #[test]
    fn serde_uses_the_text_form() {
        let master = MasterKey::generate().unwrap();
        let sealed = master.seal_secret("label", b"secret").unwrap();
        let json = serde_json::to_string(&sealed).unwrap();
        assert_eq!(json, format!("\"{sealed}\""));
        let back: SealedSecret = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sealed);
        assert!(serde_json::from_str::<SealedSecret>("\"nope\"").is_err());
    }
}
