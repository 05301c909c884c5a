//! Device keys at rest and in memory.
//!
//! On a phone the device private key would live in the Secure Enclave or
//! the Android Keystore. Here it is a file: `keys.json` holds the P-256
//! device key (PKCS#8) and the local data key, each sealed with
//! AES-256-GCM under a key-encryption key (KEK). The KEK is
//! HKDF-SHA256 over the Argon2id hash of the PIN, salted with the 32-byte
//! `device.secret` file, so neither the PIN alone nor a copy of
//! `keys.json` alone opens the keys. Both files sit in the client
//! directory, so a copy of the whole directory is protected only by the
//! PIN and the Argon2id cost. Unlocked keys live only in memory and are
//! zeroized when dropped.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{MobileError, MobileResult};

/// Name of the key file inside the client directory.
pub(crate) const KEY_FILE: &str = "keys.json";
/// Name of the device secret file inside the client directory.
pub(crate) const SECRET_FILE: &str = "device.secret";
/// Shortest accepted PIN.
pub const MIN_PIN_LEN: usize = 6;
/// Format version of `keys.json`.
const KEY_FILE_VERSION: u32 = 1;

/// Argon2id cost of the PIN hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
}

impl Default for KdfCost {
    /// 19 MiB and two passes, the OWASP password storage minimum for
    /// Argon2id (cheat sheet, 2023), which a phone computes in well under
    /// a second.
    fn default() -> Self {
        KdfCost {
            memory_kib: 19 * 1024,
            iterations: 2,
        }
    }
}

/// The contents of `keys.json`. Only the sealed fields are secret.
#[derive(Serialize, Deserialize)]
pub(crate) struct KeyFile {
    version: u32,
    salt: String,
    cost: KdfCost,
    /// The 32-byte data key sealed under the KEK.
    data_key: String,
    /// The device key pair (PKCS#8 DER) sealed under the KEK.
    device_key: String,
    /// Consecutive wrong PINs since the last unlock.
    pub(crate) failed_pins: u32,
    /// Unix time of the last successful contact with the server, or of
    /// the enrollment.
    pub(crate) last_contact: i64,
}

/// Keys opened with the PIN. Dropping zeroizes them.
pub(crate) struct UnlockedKeys {
    data_key: Zeroizing<[u8; 32]>,
    device_key: Zeroizing<Vec<u8>>,
}

impl UnlockedKeys {
    /// Derives a purpose-bound 32-byte subkey of the data key.
    pub(crate) fn subkey(&self, purpose: &str) -> MobileResult<Zeroizing<[u8; 32]>> {
        hkdf_32(b"ward-mobile-data-key", self.data_key.as_slice(), purpose)
    }

    /// The device key pair as PKCS#8 DER.
    pub(crate) fn device_key_der(&self) -> &[u8] {
        &self.device_key
    }
}

/// Generates `N` random bytes.
pub(crate) fn random<const N: usize>() -> MobileResult<[u8; N]> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| MobileError::crypto("the system random generator failed"))?;
    Ok(bytes)
}

struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// HKDF-SHA256 with `salt`, input key `ikm` and `info`, 32 bytes out.
fn hkdf_32(salt: &[u8], ikm: &[u8], info: &str) -> MobileResult<Zeroizing<[u8; 32]>> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let info = [info.as_bytes()];
    let okm = prk
        .expand(&info, Len32)
        .map_err(|_| MobileError::crypto("HKDF expansion failed"))?;
    let mut out = Zeroizing::new([0u8; 32]);
    okm.fill(out.as_mut_slice())
        .map_err(|_| MobileError::crypto("HKDF expansion failed"))?;
    Ok(out)
}

/// Seals `plain` with AES-256-GCM under `key`; the output is the nonce
/// followed by the ciphertext and tag.
pub(crate) fn seal(key: &[u8; 32], aad: &[u8], plain: &[u8]) -> MobileResult<Vec<u8>> {
    let unbound = UnboundKey::new(&AES_256_GCM, key)
        .map_err(|_| MobileError::crypto("the AES-256-GCM key was rejected"))?;
    let key = LessSafeKey::new(unbound);
    let nonce_bytes = random::<NONCE_LEN>()?;
    let mut buffer = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce_bytes),
        Aad::from(aad),
        &mut buffer,
    )
    .map_err(|_| MobileError::crypto("AES-256-GCM sealing failed"))?;
    let mut out = nonce_bytes.to_vec();
    out.extend_from_slice(&buffer);
    buffer.zeroize();
    Ok(out)
}

/// Opens what [`seal`] produced. Fails when the key, the associated data
/// or the bytes differ.
pub(crate) fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buffer = Zeroizing::new(ciphertext.to_vec());
    let plain_len = key
        .open_in_place(nonce, Aad::from(aad), buffer.as_mut_slice())
        .ok()?
        .len();
    buffer.truncate(plain_len);
    Some(buffer)
}

/// Derives the KEK from the PIN, the salt and the device secret.
fn derive_kek(
    pin: &str,
    salt: &[u8],
    secret: &[u8],
    cost: KdfCost,
) -> MobileResult<Zeroizing<[u8; 32]>> {
    let params = argon2::Params::new(cost.memory_kib, cost.iterations, 1, Some(32))
        .map_err(|e| MobileError::crypto(format!("Argon2id parameters rejected: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut hashed = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(pin.as_bytes(), salt, hashed.as_mut_slice())
        .map_err(|e| MobileError::crypto(format!("Argon2id failed: {e}")))?;
    hkdf_32(secret, hashed.as_slice(), "ward-mobile kek v1")
}

/// Writes `bytes` to `path` with mode 0600, replacing it atomically.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> MobileResult<()> {
    let temp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(|e| MobileError::io(&temp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| MobileError::io(&temp, e))?;
    fs::rename(&temp, path).map_err(|e| MobileError::io(path, e))
}

/// Overwrites a file with random bytes of its length, syncs it and
/// removes it. A missing file is not an error.
pub(crate) fn shred(path: &Path) -> MobileResult<()> {
    let len = match fs::metadata(path) {
        Ok(meta) => meta.len() as usize,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(MobileError::io(path, e)),
    };
    let mut noise = vec![0u8; len];
    SystemRandom::new()
        .fill(&mut noise)
        .map_err(|_| MobileError::crypto("the system random generator failed"))?;
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| MobileError::io(path, e))?;
    file.write_all(&noise)
        .and_then(|()| file.sync_all())
        .map_err(|e| MobileError::io(path, e))?;
    drop(file);
    fs::remove_file(path).map_err(|e| MobileError::io(path, e))
}

/// The key files of one client directory.
pub(crate) struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    pub(crate) fn new(dir: &Path) -> Self {
        KeyStore {
            dir: dir.to_owned(),
        }
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    fn secret_path(&self) -> PathBuf {
        self.dir.join(SECRET_FILE)
    }

    /// True when `keys.json` exists.
    pub(crate) fn exists(&self) -> bool {
        self.key_path().exists()
    }

    /// Reads `keys.json`.
    pub(crate) fn load(&self) -> MobileResult<KeyFile> {
        let path = self.key_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(MobileError::NotEnrolled);
            }
            Err(e) => return Err(MobileError::io(&path, e)),
        };
        let file: KeyFile = serde_json::from_slice(&bytes)
            .map_err(|e| MobileError::corrupt(format!("{}: {e}", path.display())))?;
        if file.version != KEY_FILE_VERSION {
            return Err(MobileError::corrupt(format!(
                "{} has format version {}, expected {KEY_FILE_VERSION}",
                path.display(),
                file.version
            )));
        }
        Ok(file)
    }

    /// Writes `keys.json`.
    pub(crate) fn save(&self, file: &KeyFile) -> MobileResult<()> {
        let bytes = serde_json::to_vec_pretty(file)
            .map_err(|e| MobileError::corrupt(format!("encoding the key file: {e}")))?;
        write_private(&self.key_path(), &bytes)
    }

    fn read_secret(&self) -> MobileResult<Zeroizing<Vec<u8>>> {
        let path = self.secret_path();
        let secret = Zeroizing::new(fs::read(&path).map_err(|e| MobileError::io(&path, e))?);
        if secret.len() != 32 {
            return Err(MobileError::corrupt(format!(
                "{} must hold 32 bytes, found {}",
                path.display(),
                secret.len()
            )));
        }
        Ok(secret)
    }

    /// Creates the device secret, a new data key and `keys.json` around
    /// the device key pair `device_key` (PKCS#8 DER), sealed under `pin`.
    pub(crate) fn create(
        &self,
        pin: &str,
        device_key: &[u8],
        cost: KdfCost,
        now: i64,
    ) -> MobileResult<UnlockedKeys> {
        if pin.chars().count() < MIN_PIN_LEN {
            return Err(MobileError::WeakPin {
                min: MIN_PIN_LEN as u32,
            });
        }
        if self.exists() {
            return Err(MobileError::AlreadyEnrolled);
        }
        let secret = Zeroizing::new(random::<32>()?);
        write_private(&self.secret_path(), secret.as_slice())?;
        let salt = random::<16>()?;
        let kek = derive_kek(pin, &salt, secret.as_slice(), cost)?;
        let data_key = Zeroizing::new(random::<32>()?);
        let file = KeyFile {
            version: KEY_FILE_VERSION,
            salt: B64.encode(salt),
            cost,
            data_key: B64.encode(seal(&kek, b"ward-mobile data key", data_key.as_slice())?),
            device_key: B64.encode(seal(&kek, b"ward-mobile device key", device_key)?),
            failed_pins: 0,
            last_contact: now,
        };
        self.save(&file)?;
        Ok(UnlockedKeys {
            data_key,
            device_key: Zeroizing::new(device_key.to_vec()),
        })
    }

    /// Opens the keys with `pin`. Returns `None` for a wrong PIN; the
    /// caller counts the failure.
    pub(crate) fn open(&self, file: &KeyFile, pin: &str) -> MobileResult<Option<UnlockedKeys>> {
        let secret = self.read_secret()?;
        let salt = decode(&file.salt, "salt")?;
        let kek = derive_kek(pin, &salt, &secret, file.cost)?;
        let sealed_data = decode(&file.data_key, "data_key")?;
        let Some(data) = open(&kek, b"ward-mobile data key", &sealed_data) else {
            return Ok(None);
        };
        let data_key: [u8; 32] = data
            .as_slice()
            .try_into()
            .map_err(|_| MobileError::corrupt("the data key is not 32 bytes"))?;
        let sealed_device = decode(&file.device_key, "device_key")?;
        let device_key =
            open(&kek, b"ward-mobile device key", &sealed_device).ok_or_else(|| {
                MobileError::corrupt(
                    "the device key does not open with the PIN that opens the data key",
                )
            })?;
        Ok(Some(UnlockedKeys {
            data_key: Zeroizing::new(data_key),
            device_key: Zeroizing::new(device_key.to_vec()),
        }))
    }

    /// Crypto-erases the keys: overwrites and removes the device secret and
    /// `keys.json`, after which the store cannot be decrypted.
    pub(crate) fn erase(&self) -> MobileResult<()> {
        shred(&self.secret_path())?;
        shred(&self.key_path())?;
        // A half-written replacement may be left from an interrupted save.
        shred(&self.key_path().with_extension("tmp"))
    }
}

fn decode(text: &str, field: &str) -> MobileResult<Vec<u8>> {
    B64.decode(text)
        .map_err(|e| MobileError::corrupt(format!("keys.json field {field}: {e}")))
}

/// Creates the client directory with mode 0700 when it is missing.
pub(crate) fn create_dir(dir: &Path) -> MobileResult<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| MobileError::io(dir, e))
}

/// Creates an empty file with mode 0600 unless it exists.
pub(crate) fn touch_private(path: &Path) -> MobileResult<()> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map(|_: File| ())
        .map_err(|e| MobileError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> KdfCost {
        KdfCost {
            memory_kib: 64,
            iterations: 1,
        }
    }

    #[test]
    fn keys_open_with_right_pin_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let created = store.create("246810", b"device-key", cheap(), 0).unwrap();
        let file = store.load().unwrap();
        assert!(store.open(&file, "135790").unwrap().is_none());
        let opened = store
            .open(&file, "246810")
            .unwrap()
            .expect("right PIN opens");
        assert_eq!(opened.device_key_der(), b"device-key");
        assert_eq!(
            *opened.subkey("records").unwrap(),
            *created.subkey("records").unwrap()
        );
        assert_ne!(
            *opened.subkey("records").unwrap(),
            *opened.subkey("blind").unwrap()
        );
    }

    #[test]
    fn keys_need_device_secret() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        store.create("246810", b"device-key", cheap(), 0).unwrap();
        let file = store.load().unwrap();
        fs::write(dir.path().join(SECRET_FILE), [7u8; 32]).unwrap();
        assert!(store.open(&file, "246810").unwrap().is_none());
    }

    #[test]
    fn short_pin_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let error = store.create("123", b"k", cheap(), 0).err().unwrap();
        assert!(matches!(error, MobileError::WeakPin { min: 6 }));
        assert!(!store.exists());
    }

    #[test]
    fn key_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        store.create("246810", b"device-key", cheap(), 0).unwrap();
        for name in [KEY_FILE, SECRET_FILE] {
            let mode = fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }

    #[test]
    fn erase_removes_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        store.create("246810", b"device-key", cheap(), 0).unwrap();
        store.erase().unwrap();
        assert!(!dir.path().join(KEY_FILE).exists());
        assert!(!dir.path().join(SECRET_FILE).exists());
        assert!(matches!(store.load(), Err(MobileError::NotEnrolled)));
    }

    #[test]
    fn sealed_record_bound_to_aad() {
        let key = [9u8; 32];
        let sealed = seal(&key, b"id-1", b"hello").unwrap();
        assert_eq!(open(&key, b"id-1", &sealed).unwrap().as_slice(), b"hello");
        assert!(open(&key, b"id-2", &sealed).is_none());
        assert!(open(&[8u8; 32], b"id-1", &sealed).is_none());
    }
}
