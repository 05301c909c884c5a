//! The organization identity for exchange: an id and name, an ES256
//! signing key and a P-256 ECDH encryption key, kept in the data directory.
//!
//! Files: `exchange-org.json` (id and name, public), and the private keys
//! sealed under the master key, `exchange-signing.key.sealed` and
//! `exchange-encryption.key.sealed`.
//!
//! The organization also has a TLS client certificate from its own CA
//! ([`OrgClientCert`]), which it presents when it delivers messages so the
//! receiver can authenticate the connection (mutual TLS):
//! `exchange-client.pem` (public, for the operator) and
//! `exchange-client.sealed` (certificate and private key, sealed).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use aws_lc_rs::agreement::{ECDH_P256, PrivateKey};
use aws_lc_rs::digest;
use aws_lc_rs::encoding::{AsBigEndian as _, EcPrivateKeyBin};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use ward_crypto::{CertificateAuthority, MasterKey, SealedSecret, SigningKey};
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
/// The exchange client certificate, PEM (public; the server reads the
/// sealed copy).
pub const CLIENT_CERT_FILE: &str = "exchange-client.pem";
/// The exchange client certificate and its private key, PEM, sealed.
pub const CLIENT_IDENTITY_FILE: &str = "exchange-client.sealed";
/// Label that binds the sealed client identity to its purpose.
const CLIENT_IDENTITY_LABEL: &str = "ward-exchange-client-identity";
/// A client certificate with less than this left (seconds) is renewed.
pub const CLIENT_RENEW_BEFORE_SECS: i64 = 30 * 24 * 3600;

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

/// Reseals the client identity file under the active master key, for a
/// master-key rotation.
///
/// # Errors
///
/// As [`MasterKey::reseal_secret`].
pub fn reseal_client_identity(
    sealed: &SealedSecret,
    master: &MasterKey,
) -> ward_crypto::Result<SealedSecret> {
    master.reseal_secret(CLIENT_IDENTITY_LABEL, sealed)
}

/// The organization's exchange TLS client certificate: issued by its own
/// CA with the URI SAN `urn:ward:org:ORG_ID` and extended key usage
/// clientAuth. Organizations that trust this one verify it against the
/// `ca_pem` of its trust entry.
pub struct OrgClientCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The end of its validity, in seconds since the Unix epoch.
    pub not_after: i64,
    /// The certificate followed by its PKCS#8 private key, PEM.
    identity_pem: Zeroizing<String>,
}

impl std::fmt::Debug for OrgClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgClientCert")
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl OrgClientCert {
    /// Loads the client certificate of `org_id` from the data directory
    /// `dir`, or issues one from `ca` when there is none, when it names
    /// another organization or another CA issued it, or when less than 30
    /// days of its validity are left (at `now`, seconds since the Unix
    /// epoch). A new certificate replaces the files through a temporary file
    /// and a rename. Returns the certificate and whether it was issued now.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if a file cannot be read or written, [`Error::Sealed`]
    /// if the sealed file does not open under `master` or sealing fails, and
    /// [`Error::InvalidKey`] if the CA cannot issue the certificate.
    pub fn open_or_issue(
        dir: &Path,
        master: &MasterKey,
        ca: &CertificateAuthority,
        org_id: &str,
        now: i64,
    ) -> Result<(Self, bool), Error> {
        let path = dir.join(CLIENT_IDENTITY_FILE);
        if path.exists() {
            let sealed = read_sealed(&path)?;
            let pem = master
                .open_secret(CLIENT_IDENTITY_LABEL, &sealed)
                .map_err(sealed_err(&path))?;
            let pem = Zeroizing::new(String::from_utf8_lossy(&pem).into_owned());
            if let Some(current) = Self::from_identity_pem(ca, org_id, pem)
                && current.not_after - now > CLIENT_RENEW_BEFORE_SECS
            {
                return Ok((current, false));
            }
        }
        let issued = ca.issue_org_client_certificate(org_id).map_err(|_| {
            Error::InvalidKey("the CA could not issue the exchange client certificate")
        })?;
        let identity_pem = Zeroizing::new(format!("{}{}", issued.cert_pem, *issued.key_pem));
        let sealed = master
            .seal_secret(CLIENT_IDENTITY_LABEL, identity_pem.as_bytes())
            .map_err(sealed_err(&path))?;
        write_replace(dir, CLIENT_IDENTITY_FILE, sealed.as_str().as_bytes(), 0o600)?;
        write_replace(dir, CLIENT_CERT_FILE, issued.cert_pem.as_bytes(), 0o644)?;
        Ok((
            Self {
                cert_pem: issued.cert_pem,
                not_after: issued.not_after.unix_timestamp(),
                identity_pem,
            },
            true,
        ))
    }

    /// Splits the sealed PEM, keeping it only when `ca` issued the
    /// certificate for `org_id`.
    fn from_identity_pem(
        ca: &CertificateAuthority,
        org_id: &str,
        identity_pem: Zeroizing<String>,
    ) -> Option<Self> {
        const END: &str = "-----END CERTIFICATE-----";
        let end = identity_pem.find(END)? + END.len();
        let cert_pem = format!("{}\n", identity_pem.get(..end)?.trim());
        let info = ca.inspect_issued(&cert_pem)?;
        let expected = format!("{}{org_id}", ward_crypto::ca::ORG_URI_PREFIX);
        if !info.uris.contains(&expected) || !identity_pem.contains("PRIVATE KEY") {
            return None;
        }
        Some(Self {
            cert_pem,
            not_after: info.not_after.unix_timestamp(),
            identity_pem,
        })
    }

    /// Returns the certificate followed by its private key, PEM, as TLS
    /// clients load an identity. It is wiped on drop.
    pub fn identity_pem(&self) -> &Zeroizing<String> {
        &self.identity_pem
    }
}

/// Replaces `dir/name` with `contents` through a temporary file and a
/// rename, so a crash leaves the old or the new file.
fn write_replace(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<(), Error> {
    let path = dir.join(name);
    let temporary = dir.join(format!("{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    write_new(&temporary, contents, mode)?;
    fs::rename(&temporary, &path).map_err(|source| {
        let _ = fs::remove_file(&temporary);
        Error::Io { path, source }
    })
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
    fn client_certificate_is_issued_once_and_renewed_near_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let ca = CertificateAuthority::create("Clinic A").unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let (first, issued) =
            OrgClientCert::open_or_issue(dir.path(), &master, &ca, "org-a", now).unwrap();
        assert!(issued);
        assert!(first.identity_pem().contains("PRIVATE KEY"));
        assert!(first.identity_pem().starts_with(&first.cert_pem));
        let (again, issued) =
            OrgClientCert::open_or_issue(dir.path(), &master, &ca, "org-a", now).unwrap();
        assert!(!issued);
        assert_eq!(again.cert_pem, first.cert_pem);
        let public = fs::read_to_string(dir.path().join(CLIENT_CERT_FILE)).unwrap();
        assert_eq!(public, first.cert_pem);
        let sealed = fs::read_to_string(dir.path().join(CLIENT_IDENTITY_FILE)).unwrap();
        assert!(!sealed.contains("PRIVATE KEY"));

        // Within 30 days of the end, it is renewed.
        let late = first.not_after - CLIENT_RENEW_BEFORE_SECS + 1;
        let (renewed, issued) =
            OrgClientCert::open_or_issue(dir.path(), &master, &ca, "org-a", late).unwrap();
        assert!(issued);
        assert_ne!(renewed.cert_pem, first.cert_pem);
        // Another organization id or another CA gets a new certificate.
        let (_, issued) =
            OrgClientCert::open_or_issue(dir.path(), &master, &ca, "org-b", now).unwrap();
        assert!(issued);
        let other_ca = CertificateAuthority::create("Clinic A").unwrap();
        let (_, issued) =
            OrgClientCert::open_or_issue(dir.path(), &master, &other_ca, "org-b", now).unwrap();
        assert!(issued);
        let leftovers = fs::read_dir(dir.path())
            .unwrap()
            .filter(|entry| {
                entry
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0);
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
