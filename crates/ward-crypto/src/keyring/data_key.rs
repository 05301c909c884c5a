//! Data keys, which encrypt resources, and their wrapped (stored) form.

use std::fmt;

use zeroize::Zeroizing;

use super::aead::{Aead, NONCE_LEN, TAG_LEN};
use super::{IndexKey, KeyId, MasterKey};
use crate::error::{Error, Result};

/// Length of a data key in bytes.
const DATA_KEY_LEN: usize = 32;

/// Version byte in front of every ciphertext made by [`DataKey::seal`].
const CIPHERTEXT_VERSION: u8 = 1;

/// Version byte in front of every [`WrappedKey`].
const WRAPPED_KEY_VERSION: u8 = 1;

/// Prefix of the associated data when wrapping a data key. The version byte
/// and the master key id follow it.
const WRAP_AAD_LABEL: &[u8] = b"ward-data-key";

/// The label that takes the place of [`WRAP_AAD_LABEL`] when wrapping a
/// blind-index key.
const INDEX_WRAP_AAD_LABEL: &[u8] = b"ward-index-key";

/// Length of a wrapped key: version, master key id, nonce, key, tag.
const WRAPPED_KEY_LEN: usize = 1 + 8 + NONCE_LEN + DATA_KEY_LEN + TAG_LEN;

/// An AES-256-GCM key that encrypts resources.
///
/// The cipher context is built once when the key is created, so
/// [`DataKey::seal`] and [`DataKey::open`] do no key setup per call. Share one
/// `DataKey` behind an `Arc` rather than unwrapping it again for every
/// request. The key bytes are wiped on drop.
pub struct DataKey {
    secret: Zeroizing<[u8; DATA_KEY_LEN]>,
    aead: Aead,
}

impl DataKey {
    /// Bytes that [`DataKey::seal`] adds to the plaintext: version byte,
    /// nonce and tag.
    pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

    /// Generates a new random data key.
    ///
    /// # Errors
    ///
    /// [`Error::Provider`] if the random number generator fails.
    pub fn generate() -> Result<Self> {
        let mut secret = Zeroizing::new([0u8; DATA_KEY_LEN]);
        aws_lc_rs::rand::fill(secret.as_mut_slice())
            .map_err(Error::provider("random generation"))?;
        Self::from_secret(secret)
    }

    fn from_secret(secret: Zeroizing<[u8; DATA_KEY_LEN]>) -> Result<Self> {
        let aead = Aead::new(&secret)?;
        Ok(Self { secret, aead })
    }

    /// Encrypts `plaintext` and binds it to `aad`.
    ///
    /// Returns `version (1) || nonce (12) || ciphertext || tag (16)` in one
    /// allocation. `aad` is authenticated but not stored, so the same bytes
    /// must be passed to [`DataKey::open`]. Use it to bind the ciphertext to
    /// where it belongs, such as the resource type, id and version, so a
    /// ciphertext copied to another row fails to open.
    ///
    /// # Errors
    ///
    /// [`Error::Provider`] if AWS-LC fails, which happens only for plaintexts
    /// over the AES-GCM limit of about 64 GiB.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(Self::OVERHEAD + plaintext.len());
        out.push(CIPHERTEXT_VERSION);
        self.aead.seal_append(aad, plaintext, &mut out)?;
        Ok(out)
    }

    /// Decrypts the output of [`DataKey::seal`].
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedVersion`] if the version byte is unknown, and
    /// [`Error::Decrypt`] if `sealed` is truncated or modified, `aad` differs
    /// from the one used to seal, or another key sealed it.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let (&version, body) = sealed.split_first().ok_or(Error::Decrypt)?;
        if version != CIPHERTEXT_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "ciphertext",
                version,
            });
        }
        let mut out = Vec::new();
        self.aead.open_append(aad, body, &mut out)?;
        Ok(out)
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

/// A data key encrypted under a master key, safe to store next to the data.
///
/// The byte form is `version (1) || master key id (8) || nonce (12) ||
/// encrypted key (32) || tag (16)`, 69 bytes in all.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey([u8; WRAPPED_KEY_LEN]);

impl WrappedKey {
    /// Length of the byte form.
    pub const LEN: usize = WRAPPED_KEY_LEN;

    /// Parses the byte form written by [`WrappedKey::as_bytes`].
    ///
    /// Checks only the length and version; the content is authenticated when
    /// the key is unwrapped.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] if the length is wrong, [`Error::UnsupportedVersion`]
    /// if the version byte is unknown.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bytes: [u8; WRAPPED_KEY_LEN] = bytes.try_into().map_err(|_| Error::Malformed {
            what: "wrapped data key",
            reason: "expected 69 bytes",
        })?;
        let [version, ..] = bytes;
        if version != WRAPPED_KEY_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "wrapped data key",
                version,
            });
        }
        Ok(Self(bytes))
    }

    /// Returns the byte form to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Returns the id of the master key that wrapped this key.
    pub fn master_key_id(&self) -> KeyId {
        let mut id = [0u8; 8];
        id.iter_mut()
            .zip(self.0.iter().skip(1))
            .for_each(|(out, byte)| *out = *byte);
        KeyId(id)
    }

    /// Returns the header that is both stored and authenticated.
    fn header(&self) -> &[u8] {
        self.0.split_at(9).0
    }

    /// Returns `nonce || encrypted key || tag`.
    fn sealed(&self) -> &[u8] {
        self.0.split_at(9).1
    }
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKey")
            .field("master_key_id", &self.master_key_id())
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// Encrypts a data key for storage under the active master key.
    ///
    /// The associated data is `"ward-data-key" || version || master key id`,
    /// so a wrapped key opens only under this master key.
    ///
    /// # Errors
    ///
    /// [`Error::Provider`] if AWS-LC fails.
    pub fn wrap_data_key(&self, key: &DataKey) -> Result<WrappedKey> {
        self.wrap_key_bytes(WRAP_AAD_LABEL, &key.secret)
    }

    /// Decrypts a wrapped data key with whichever key of the keyring wrapped
    /// it: the active master key or a retired one.
    ///
    /// # Errors
    ///
    /// [`Error::WrongMasterKey`] if no key of the keyring wrapped it, and
    /// [`Error::Decrypt`] if the wrapped key was modified.
    pub fn unwrap_data_key(&self, wrapped: &WrappedKey) -> Result<DataKey> {
        let secret = self.unwrap_key_bytes(WRAP_AAD_LABEL, "wrapped data key", wrapped)?;
        DataKey::from_secret(secret)
    }

    /// Encrypts a blind-index key for storage under the active master key.
    ///
    /// It uses the [`WrappedKey`] layout with its own associated-data label,
    /// so a wrapped index key cannot pass for a wrapped data key.
    ///
    /// # Errors
    ///
    /// [`Error::Provider`] if AWS-LC fails.
    pub fn wrap_index_key(&self, key: &IndexKey) -> Result<WrappedKey> {
        self.wrap_key_bytes(INDEX_WRAP_AAD_LABEL, key.secret())
    }

    /// Decrypts a wrapped blind-index key, as [`MasterKey::unwrap_data_key`]
    /// does for data keys.
    ///
    /// # Errors
    ///
    /// [`Error::WrongMasterKey`] if no key of the keyring wrapped it, and
    /// [`Error::Decrypt`] if the wrapped key was modified.
    pub fn unwrap_index_key(&self, wrapped: &WrappedKey) -> Result<IndexKey> {
        let secret = self.unwrap_key_bytes(INDEX_WRAP_AAD_LABEL, "wrapped index key", wrapped)?;
        Ok(IndexKey::new(&secret))
    }

    /// Rewraps a data key under the active master key. The key itself, and
    /// so every ciphertext it sealed, stays the same.
    ///
    /// # Errors
    ///
    /// As [`MasterKey::unwrap_data_key`] and [`MasterKey::wrap_data_key`].
    pub fn rewrap_data_key(&self, wrapped: &WrappedKey) -> Result<WrappedKey> {
        let secret = self.unwrap_key_bytes(WRAP_AAD_LABEL, "wrapped data key", wrapped)?;
        self.wrap_key_bytes(WRAP_AAD_LABEL, &secret)
    }

    /// Rewraps a blind-index key under the active master key.
    ///
    /// # Errors
    ///
    /// As [`MasterKey::unwrap_index_key`] and [`MasterKey::wrap_index_key`].
    pub fn rewrap_index_key(&self, wrapped: &WrappedKey) -> Result<WrappedKey> {
        let secret = self.unwrap_key_bytes(INDEX_WRAP_AAD_LABEL, "wrapped index key", wrapped)?;
        self.wrap_key_bytes(INDEX_WRAP_AAD_LABEL, &secret)
    }

    fn wrap_key_bytes(&self, label: &[u8], secret: &[u8; DATA_KEY_LEN]) -> Result<WrappedKey> {
        let mut out = Zeroizing::new(Vec::with_capacity(WRAPPED_KEY_LEN));
        out.push(WRAPPED_KEY_VERSION);
        out.extend_from_slice(self.id.as_bytes());
        let aad = wrap_aad(label, &out);
        self.wrap.seal_append(&aad, secret.as_slice(), &mut out)?;

        let bytes: [u8; WRAPPED_KEY_LEN] =
            out.as_slice().try_into().map_err(|_| Error::Provider {
                operation: "key wrapping",
            })?;
        Ok(WrappedKey(bytes))
    }

    fn unwrap_key_bytes(
        &self,
        label: &[u8],
        what: &'static str,
        wrapped: &WrappedKey,
    ) -> Result<Zeroizing<[u8; DATA_KEY_LEN]>> {
        let wrapped_by = wrapped.master_key_id();
        let master = self.key_for(wrapped_by).ok_or(Error::WrongMasterKey {
            what,
            expected: wrapped_by,
            found: self.id,
        })?;

        let aad = wrap_aad(label, wrapped.header());
        let mut plain = Zeroizing::new(Vec::with_capacity(DATA_KEY_LEN + TAG_LEN));
        master
            .wrap
            .open_append(&aad, wrapped.sealed(), &mut plain)?;

        if plain.len() != DATA_KEY_LEN {
            return Err(Error::Decrypt);
        }
        let mut secret = Zeroizing::new([0u8; DATA_KEY_LEN]);
        secret
            .iter_mut()
            .zip(plain.iter())
            .for_each(|(out, byte)| *out = *byte);
        Ok(secret)
    }
}

/// Builds the associated data for wrapping: label followed by the header.
fn wrap_aad(label: &[u8], header: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(label.len() + header.len());
    aad.extend_from_slice(label);
    aad.extend_from_slice(header);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip() {
        let key = DataKey::generate().unwrap();
        for plaintext in [&b""[..], b"x", &[0x42; 10_000]] {
            let sealed = key.seal(b"Patient/1/_history/1", plaintext).unwrap();
            assert_eq!(sealed.len(), plaintext.len() + DataKey::OVERHEAD);
            assert_eq!(sealed[0], CIPHERTEXT_VERSION);
            let opened = key.open(b"Patient/1/_history/1", &sealed).unwrap();
            assert_eq!(opened, plaintext);
        }
    }

    #[test]
    fn seal_output_hides_plaintext() {
        let key = DataKey::generate().unwrap();
        let plaintext = b"a fairly recognizable plaintext string";
        let sealed = key.seal(b"", plaintext).unwrap();
        assert!(
            !sealed
                .windows(plaintext.len())
                .any(|window| window == plaintext)
        );
    }

    #[test]
    fn open_rejects_wrong_aad() {
        let key = DataKey::generate().unwrap();
        let sealed = key.seal(b"Patient/1", b"body").unwrap();
        assert!(matches!(
            key.open(b"Patient/2", &sealed),
            Err(Error::Decrypt)
        ));
        assert!(matches!(key.open(b"", &sealed), Err(Error::Decrypt)));
    }

    #[test]
    fn open_rejects_every_flipped_bit() {
        let key = DataKey::generate().unwrap();
        let sealed = key.seal(b"aad", b"some resource body").unwrap();
        for index in 0..sealed.len() {
            for bit in 0..8 {
                let mut tampered = sealed.clone();
                tampered[index] ^= 1 << bit;
                let result = key.open(b"aad", &tampered);
                assert!(result.is_err(), "byte {index} bit {bit} was accepted");
            }
        }
    }

    #[test]
    fn open_rejects_every_truncation() {
        let key = DataKey::generate().unwrap();
        let sealed = key.seal(b"aad", b"body").unwrap();
        for len in 0..sealed.len() {
            assert!(key.open(b"aad", &sealed[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn open_rejects_unknown_version() {
        let key = DataKey::generate().unwrap();
        let mut sealed = key.seal(b"", b"body").unwrap();
        sealed[0] = 2;
        let error = key.open(b"", &sealed).unwrap_err();
        assert!(matches!(
            error,
            Error::UnsupportedVersion { version: 2, .. }
        ));
    }

    #[test]
    fn open_rejects_other_data_key() {
        let key = DataKey::generate().unwrap();
        let other = DataKey::generate().unwrap();
        let sealed = key.seal(b"", b"body").unwrap();
        assert!(matches!(other.open(b"", &sealed), Err(Error::Decrypt)));
    }

    #[test]
    fn wrap_unwrap_round_trip() {
        let master = MasterKey::generate().unwrap();
        let key = DataKey::generate().unwrap();
        let wrapped = master.wrap_data_key(&key).unwrap();
        assert_eq!(wrapped.as_bytes().len(), WrappedKey::LEN);
        assert_eq!(wrapped.master_key_id(), master.id());

        let stored = wrapped.as_bytes().to_vec();
        let parsed = WrappedKey::from_bytes(&stored).unwrap();
        let unwrapped = master.unwrap_data_key(&parsed).unwrap();

        let sealed = key.seal(b"aad", b"body").unwrap();
        assert_eq!(unwrapped.open(b"aad", &sealed).unwrap(), b"body");
    }

    #[test]
    fn unwrap_with_other_master_key_names_both_ids() {
        let master = MasterKey::generate().unwrap();
        let other = MasterKey::generate().unwrap();
        let wrapped = master.wrap_data_key(&DataKey::generate().unwrap()).unwrap();

        let error = other.unwrap_data_key(&wrapped).unwrap_err();
        let Error::WrongMasterKey {
            expected, found, ..
        } = &error
        else {
            panic!("unexpected error {error}");
        };
        assert_eq!(*expected, master.id());
        assert_eq!(*found, other.id());
        assert!(error.to_string().contains(&master.id().to_string()));
    }

    #[test]
    fn unwrap_rejects_forged_key_id() {
        // A wrapped key relabelled with another master's id must still fail
        // because the id is part of the associated data.
        let master = MasterKey::generate().unwrap();
        let other = MasterKey::generate().unwrap();
        let wrapped = master.wrap_data_key(&DataKey::generate().unwrap()).unwrap();

        let mut bytes = wrapped.as_bytes().to_vec();
        bytes[1..9].copy_from_slice(other.id().as_bytes());
        let forged = WrappedKey::from_bytes(&bytes).unwrap();
        assert!(matches!(
            other.unwrap_data_key(&forged),
            Err(Error::Decrypt)
        ));
    }

    #[test]
    fn unwrap_rejects_flipped_bits_after_header() {
        let master = MasterKey::generate().unwrap();
        let wrapped = master.wrap_data_key(&DataKey::generate().unwrap()).unwrap();
        for index in 9..WrappedKey::LEN {
            let mut bytes = wrapped.as_bytes().to_vec();
            bytes[index] ^= 0x01;
            let tampered = WrappedKey::from_bytes(&bytes).unwrap();
            assert!(
                matches!(master.unwrap_data_key(&tampered), Err(Error::Decrypt)),
                "byte {index}"
            );
        }
    }

    #[test]
    fn wrapped_key_from_bytes_checks_length_and_version() {
        let master = MasterKey::generate().unwrap();
        let wrapped = master.wrap_data_key(&DataKey::generate().unwrap()).unwrap();
        let bytes = wrapped.as_bytes();

        assert!(matches!(
            WrappedKey::from_bytes(&bytes[..68]),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            WrappedKey::from_bytes(&[]),
            Err(Error::Malformed { .. })
        ));
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(matches!(
            WrappedKey::from_bytes(&longer),
            Err(Error::Malformed { .. })
        ));

        let mut other_version = bytes.to_vec();
        other_version[0] = 9;
        assert!(matches!(
            WrappedKey::from_bytes(&other_version),
            Err(Error::UnsupportedVersion { version: 9, .. })
        ));
    }

    #[test]
    fn debug_output_redacts_data_key() {
        let key = DataKey::generate().unwrap();
        assert_eq!(format!("{key:?}"), "DataKey([redacted])");
    }
}
