//! The organization identity for exchange: an id and name, an ES256
//! signing key and a P-256 ECDH encryption key, kept in the data directory.
//!
//! Files: `exchange-org.json` (id and name, public), and the private keys
//! sealed under the master key, `exchange-signing.key.sealed` and
//! `exchange-encryption.key.sealed`.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use aws_lc_rs::agreement::{ECDH_P256, PrivateKey};
use aws_lc_rs::digest;
use aws_lc_rs::encoding::{AsBigEndian as _, EcPrivateKeyBin};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use ward_crypto::{MasterKey, SealedSecret, SigningKey};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::jose::{b64, point_jwk};
use crate::role::OrgRole;

/// The file with the organization id and name.
pub const ORG_FILE: &str = "exchange-org.json";
/// The sealed message signing key.
pub const SIGNING_KEY_FILE: &str = "exchange-signing.key.sealed";
/// The sealed message encryption key.
pub const ENCRYPTION_KEY_FILE: &str = "exchange-encryption.key.sealed";

/// Label that binds the sealed encryption key to its purpose.
const ENCRYPTION_KEY_LABEL: &str = "ward-exchange-encryption-key";

/// The public part of the identity file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrgFile {
    id: String,
    name: String,
    /// Absent in files written before roles existed, which were clinics.
    #[serde(default)]
    role: OrgRole,
}

/// The organization's exchange identity.
pub struct OrgIdentity {
    /// The organization id other organizations trust it under.
    pub id: String,
    /// The display name.
    pub name: String,
    /// The organization's role in the exchange.
    pub role: OrgRole,
    /// Signs outgoing messages and acknowledgements.
    pub signing: SigningKey,
    encryption: PrivateKey,
    encryption_jwk: Value,
}

impl std::fmt::Debug for OrgIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgIdentity")
            .field("id", &self.id)
            .field("signing_kid", &self.signing.kid())
            .finish_non_exhaustive()
    }
}

impl OrgIdentity {
    /// Loads the identity from the data directory `dir`, creating a random
    /// organization id named `default_name` and both keys on first use.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if a file cannot be read or written, and
    /// [`Error::Sealed`] if a sealed key does not open under `master`.
    pub fn open_or_init(dir: &Path, master: &MasterKey, default_name: &str) -> Result<Self, Error> {
        let org_path = dir.join(ORG_FILE);
        let org: OrgFile = if org_path.exists() {
            let text = fs::read(&org_path).map_err(io_err(&org_path))?;
            serde_json::from_slice(&text).map_err(|_| Error::Corrupt("exchange-org.json"))?
        } else {
            let org = OrgFile {
                id: format!("org-{}", uuid::Uuid::new_v4().simple()),
                name: default_name.to_owned(),
                role: OrgRole::default(),
            };
            let text = serde_json::to_vec_pretty(&org).map_err(|_| Error::Corrupt(ORG_FILE))?;
            write_new(&org_path, &text, 0o644)?;
            org
        };

        let signing_path = dir.join(SIGNING_KEY_FILE);
        // NOTE: the exchange signing key is sealed under the same label as the
        // token signing key, because `SigningKey` offers only that one.
        let signing = if signing_path.exists() {
            let sealed = read_sealed(&signing_path)?;
            SigningKey::from_sealed_key(&sealed, master).map_err(sealed_err(&signing_path))?
        } else {
            let key = SigningKey::generate().map_err(|_| Error::Crypto("P-256 key generation"))?;
            let sealed = key.sealed_key(master).map_err(sealed_err(&signing_path))?;
            write_new(&signing_path, sealed.as_str().as_bytes(), 0o600)?;
            key
        };

        let encryption_path = dir.join(ENCRYPTION_KEY_FILE);
        let encryption = if encryption_path.exists() {
            let sealed = read_sealed(&encryption_path)?;
            let scalar = master
                .open_secret(ENCRYPTION_KEY_LABEL, &sealed)
                .map_err(sealed_err(&encryption_path))?;
            PrivateKey::from_private_key(&ECDH_P256, &scalar)
                .map_err(|_| Error::InvalidKey("the sealed encryption key is not a P-256 scalar"))?
        } else {
            let key = PrivateKey::generate(&ECDH_P256)
                .map_err(|_| Error::Crypto("P-256 key generation"))?;
            let scalar: EcPrivateKeyBin = key
                .as_be_bytes()
                .map_err(|_| Error::Crypto("P-256 key export"))?;
            let scalar = Zeroizing::new(scalar.as_ref().to_vec());
            let sealed = master
                .seal_secret(ENCRYPTION_KEY_LABEL, &scalar)
                .map_err(sealed_err(&encryption_path))?;
            write_new(&encryption_path, sealed.as_str().as_bytes(), 0o600)?;
            key
        };
        let point = encryption
            .compute_public_key()
            .map_err(|_| Error::Crypto("P-256 public key"))?;
        let mut encryption_jwk =
            point_jwk(point.as_ref()).ok_or(Error::Crypto("P-256 public key"))?;
        encryption_jwk["kid"] = json!(thumbprint(&encryption_jwk));
        encryption_jwk["use"] = json!("enc");
        encryption_jwk["alg"] = json!(crate::jose::ALG_ECDH_ES);

        Ok(Self {
            id: org.id,
            name: org.name,
            role: org.role,
            signing,
            encryption,
            encryption_jwk,
        })
    }

    /// Sets the role and writes it to the identity file in `dir` when it
    /// changed. The file is replaced through a temporary file and a rename,
    /// so a crash leaves either the old or the new file.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the file cannot be written.
    pub fn set_role(&mut self, dir: &Path, role: OrgRole) -> Result<(), Error> {
        if self.role == role {
            return Ok(());
        }
        let org = OrgFile {
            id: self.id.clone(),
            name: self.name.clone(),
            role,
        };
        let text = serde_json::to_vec_pretty(&org).map_err(|_| Error::Corrupt(ORG_FILE))?;
        let path = dir.join(ORG_FILE);
        let temporary = dir.join(format!("{ORG_FILE}.tmp"));
        let _ = fs::remove_file(&temporary);
        write_new(&temporary, &text, 0o644)?;
        fs::rename(&temporary, &path).map_err(io_err(&path))?;
        self.role = role;
        Ok(())
    }

    /// Returns the public encryption key as a JWK with its `kid`.
    pub fn encryption_jwk(&self) -> &Value {
        &self.encryption_jwk
    }

    /// Returns the private encryption key, for decrypting.
    pub(crate) fn encryption_key(&self) -> &PrivateKey {
        &self.encryption
    }
}

/// Reseals the encryption key file under the active master key, for a
/// master-key rotation.
///
/// # Errors
///
/// As [`MasterKey::reseal_secret`].
pub fn reseal_encryption_key(
    sealed: &SealedSecret,
    master: &MasterKey,
) -> ward_crypto::Result<SealedSecret> {
    master.reseal_secret(ENCRYPTION_KEY_LABEL, sealed)
}

/// Computes the RFC 7638 thumbprint of a P-256 public JWK.
pub fn thumbprint(jwk: &Value) -> String {
    let member = |name: &str| jwk.get(name).and_then(Value::as_str).unwrap_or_default();
    let canonical = format!(
        r#"{{"crv":"{}","kty":"{}","x":"{}","y":"{}"}}"#,
        member("crv"),
        member("kty"),
        member("x"),
        member("y")
    );
    b64(digest::digest(&digest::SHA256, canonical.as_bytes()))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn sealed_err(path: &Path) -> impl FnOnce(ward_crypto::Error) -> Error + '_ {
    move |source| Error::Sealed {
        path: path.to_owned(),
        source,
    }
}

fn read_sealed(path: &Path) -> Result<SealedSecret, Error> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    SealedSecret::parse(text.trim()).map_err(sealed_err(path))
}

/// Creates `path` with `contents` and `mode`, failing if it exists, so two
/// commands starting at once never replace each other's key.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(contents).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let first = OrgIdentity::open_or_init(dir.path(), &master, "Clinic A").unwrap();
        let second = OrgIdentity::open_or_init(dir.path(), &master, "ignored").unwrap();
        assert_eq!(first.id, second.id);
        assert_eq!(second.name, "Clinic A");
        assert_eq!(first.signing.kid(), second.signing.kid());
        assert_eq!(first.encryption_jwk(), second.encryption_jwk());
        assert!(first.id.starts_with("org-"));
    }

    #[test]
    fn role_is_stored_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let mut first = OrgIdentity::open_or_init(dir.path(), &master, "Pharmacy B").unwrap();
        assert_eq!(first.role, OrgRole::Clinic);
        first.set_role(dir.path(), OrgRole::Pharmacy).unwrap();
        let second = OrgIdentity::open_or_init(dir.path(), &master, "ignored").unwrap();
        assert_eq!(second.role, OrgRole::Pharmacy);
        assert_eq!(second.id, first.id);
        assert!(!dir.path().join(format!("{ORG_FILE}.tmp")).exists());
    }

    #[test]
    fn sealed_keys_need_the_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        OrgIdentity::open_or_init(dir.path(), &master, "Clinic A").unwrap();
        let other = MasterKey::generate().unwrap();
        let result = OrgIdentity::open_or_init(dir.path(), &other, "Clinic A");
        assert!(matches!(result, Err(Error::Sealed { .. })));
        let text = fs::read_to_string(dir.path().join(ENCRYPTION_KEY_FILE)).unwrap();
        assert!(!text.contains("BEGIN"));
    }

    #[test]
    fn encryption_jwk_has_thumbprint_kid() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let identity = OrgIdentity::open_or_init(dir.path(), &master, "Clinic A").unwrap();
        let jwk = identity.encryption_jwk();
        assert_eq!(jwk["kid"], thumbprint(jwk));
        assert_eq!(jwk["use"], "enc");
        assert!(jwk.get("d").is_none());
    }
}
