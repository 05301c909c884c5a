//! The data directory: the master key, the organization's CA, the token
//! signing key and the database, created on first use.
//!
//! Layout: `master.key` (the active master key, mode 0600, unless
//! `WARD_MASTER_KEY` supplies it), `master-retired/KEYID.key` (master keys
//! replaced by `ward keys rotate-master` and not yet retired), `ca.pem` (the
//! CA certificate clients trust), `ca.key.sealed`, `signing.key.sealed`,
//! `audit.key.sealed` and `backup.key.sealed` (keys sealed under the master
//! key), `audit-checkpoints.txt` (signed audit checkpoints), `server.pem`
//! (the current server certificate chain; its key stays in memory) and
//! `ward.db` (SQLite).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;
use ward_crypto::{
    BackupKey, CertificateAuthority, IssuedCertificate, KeyId, MasterKey, SealedSecret, SigningKey,
};

/// The environment variable that may hold the master key (base64).
pub const MASTER_KEY_ENV: &str = "WARD_MASTER_KEY";

/// A data-directory failure. The message names the file and the cause is
/// the error's `source()`, so a report that prints the chain (`{:#}` in
/// anyhow) states each cause once.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key or certificate failed.
    #[error("{path}")]
    Crypto {
        /// The file involved.
        path: PathBuf,
        /// The cause.
        source: ward_crypto::Error,
    },
}

/// The keys of an organization, loaded from its data directory.
pub struct Keys {
    /// The master keyring: the active key and the retired ones.
    ///
    /// NOTE: a server loads it once at start and uses it only then, which is
    /// why `ward keys rotate-master` does not disturb running servers. Code
    /// that wraps or seals something later must load the keyring again
    /// first, or it wraps under a key that a rotation may have retired.
    pub master: MasterKey,
    /// The certificate authority.
    pub ca: CertificateAuthority,
    /// The access-token signing key.
    pub signing: SigningKey,
    /// Public halves of earlier signing keys, still trusted until tokens
    /// signed with them have expired.
    pub retired_signing: Vec<RetiredKey>,
}

/// The public half of a retired token signing key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RetiredKey {
    /// The key id (RFC 7638 thumbprint).
    pub kid: String,
    /// The P-256 x coordinate, base64url.
    pub x: String,
    /// The P-256 y coordinate, base64url.
    pub y: String,
    /// The public JWK, as served at the JWKS endpoint.
    pub jwk: serde_json::Value,
    /// When the key stopped signing, in seconds since the Unix epoch.
    pub retired_at: i64,
}

/// How long a retired signing key stays trusted: longer than the longest
/// token lifetime (`ward token` allows 24 hours).
pub const RETIRED_KEY_TRUST_SECS: i64 = 25 * 3600;

/// The file of retired signing keys (public halves only).
const RETIRED_KEYS_FILE: &str = "signing-retired.json";

/// The directory of master keys replaced by a rotation and not yet retired.
const RETIRED_MASTER_DIR: &str = "master-retired";

/// The sealed backup key.
const BACKUP_KEY_FILE: &str = "backup.key.sealed";

/// A function that reseals one sealed file of the data directory under a new
/// master key.
type Reseal = fn(&SealedSecret, &MasterKey) -> ward_crypto::Result<SealedSecret>;

/// The sealed files a master-key rotation reseals, each with the function
/// that opens it under its own label.
const SEALED_FILES: &[(&str, Reseal)] = &[
    ("ca.key.sealed", CertificateAuthority::reseal_key),
    ("signing.key.sealed", SigningKey::reseal_key),
    ("audit.key.sealed", SigningKey::reseal_key),
    (BACKUP_KEY_FILE, BackupKey::reseal),
    (
        ward_exchange::identity::SIGNING_KEY_FILE,
        SigningKey::reseal_key,
    ),
    (
        ward_exchange::identity::ENCRYPTION_KEY_FILE,
        ward_exchange::identity::reseal_encryption_key,
    ),
    (
        ward_exchange::identity::CLIENT_IDENTITY_FILE,
        ward_exchange::identity::reseal_client_identity,
    ),
];

/// A data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    path: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SetupError + '_ {
    move |source| SetupError::Io {
        path: path.to_owned(),
        source,
    }
}

fn crypto_err(path: &Path) -> impl FnOnce(ward_crypto::Error) -> SetupError + '_ {
    move |source| SetupError::Crypto {
        path: path.to_owned(),
        source,
    }
}

/// Writes a file atomically (temporary file, fsync, rename) with `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), SetupError> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(contents).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

impl DataDir {
    /// A data directory at `path` (not yet created).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The CA certificate clients must trust.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.path.join("ca.pem")
    }

    /// The SQLite database.
    pub fn database_path(&self) -> PathBuf {
        self.path.join("ward.db")
    }

    /// The optional configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.path.join("ward.toml")
    }

    /// Returns true when the directory contains an initialized organization.
    pub fn exists(&self) -> bool {
        self.ca_cert_path().exists()
    }

    /// Opens the directory, creating it and every key on first use.
    /// Returns the keys and whether anything was created.
    pub fn open_or_init(&self, org_name: &str) -> Result<(Keys, bool), SetupError> {
        if !self.path.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.path)
                .map_err(io_err(&self.path))?;
        }
        let (master, mut created) = self.master_key()?;
        let ca_path = self.ca_cert_path();
        let ca_key_path = self.path.join("ca.key.sealed");
        let ca = if ca_path.exists() {
            let pem = fs::read_to_string(&ca_path).map_err(io_err(&ca_path))?;
            let sealed = read_sealed(&ca_key_path)?;
            CertificateAuthority::from_pem_and_sealed_key(&pem, &sealed, &master)
                .map_err(crypto_err(&ca_key_path))?
        } else {
            let ca = CertificateAuthority::create(org_name).map_err(crypto_err(&ca_path))?;
            let sealed = ca.sealed_key(&master).map_err(crypto_err(&ca_key_path))?;
            write_atomic(&ca_key_path, sealed.as_str().as_bytes(), 0o600)?;
            write_atomic(&ca_path, ca.to_pem().as_bytes(), 0o644)?;
            created = true;
            ca
        };
        let signing_path = self.path.join("signing.key.sealed");
        let signing = if signing_path.exists() {
            let sealed = read_sealed(&signing_path)?;
            SigningKey::from_sealed_key(&sealed, &master).map_err(crypto_err(&signing_path))?
        } else {
            let key = SigningKey::generate().map_err(crypto_err(&signing_path))?;
            let sealed = key.sealed_key(&master).map_err(crypto_err(&signing_path))?;
            write_atomic(&signing_path, sealed.as_str().as_bytes(), 0o600)?;
            created = true;
            key
        };
        let retired_signing = self.retired_keys()?;
        Ok((
            Keys {
                master,
                ca,
                signing,
                retired_signing,
            },
            created,
        ))
    }

    /// Reads the retired signing keys that are still trusted.
    fn retired_keys(&self) -> Result<Vec<RetiredKey>, SetupError> {
        let path = self.path.join(RETIRED_KEYS_FILE);
        if !path.exists() {
            return Ok(Vec::new());
        }
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let keys: Vec<RetiredKey> = serde_json::from_str(&text).map_err(|e| SetupError::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        Ok(keys
            .into_iter()
            .filter(|k| now - k.retired_at < RETIRED_KEY_TRUST_SECS)
            .collect())
    }

    /// Replaces the token signing key with a new one. The old key's public
    /// half is kept in `signing-retired.json`, so tokens it signed stay
    /// valid until they expire; servers pick the new key up when they
    /// restart. Returns the new key id.
    pub fn rotate_signing_key(&self, keys: &Keys) -> Result<String, SetupError> {
        let signing_path = self.path.join("signing.key.sealed");
        let fresh = SigningKey::generate().map_err(crypto_err(&signing_path))?;
        let (x, y) = keys.signing.public_key_xy();
        let mut retired = keys.retired_signing.clone();
        retired.push(RetiredKey {
            kid: keys.signing.kid().to_owned(),
            x: x.to_owned(),
            y: y.to_owned(),
            jwk: keys.signing.public_jwk(),
            retired_at: time::OffsetDateTime::now_utc().unix_timestamp(),
        });
        let retired_path = self.path.join(RETIRED_KEYS_FILE);
        let text = serde_json::to_vec_pretty(&retired).map_err(|e| SetupError::Io {
            path: retired_path.clone(),
            source: std::io::Error::other(e),
        })?;
        // The retired list is written first: a crash in between leaves the
        // old key active and also listed, which is harmless.
        write_atomic(&retired_path, &text, 0o644)?;
        let sealed = fresh
            .sealed_key(&keys.master)
            .map_err(crypto_err(&signing_path))?;
        write_atomic(&signing_path, sealed.as_str().as_bytes(), 0o600)?;
        Ok(fresh.kid().to_owned())
    }

    /// Loads the audit checkpoint signing key, `audit.key.sealed`, creating
    /// it on first use. It is kept apart from the token key so that neither
    /// signature can stand for the other.
    pub fn audit_key(&self, master: &MasterKey) -> Result<SigningKey, SetupError> {
        let path = self.path.join("audit.key.sealed");
        if path.exists() {
            let sealed = read_sealed(&path)?;
            return SigningKey::from_sealed_key(&sealed, master).map_err(crypto_err(&path));
        }
        let key = SigningKey::generate().map_err(crypto_err(&path))?;
        let sealed = key.sealed_key(master).map_err(crypto_err(&path))?;
        write_atomic(&path, sealed.as_str().as_bytes(), 0o600)?;
        Ok(key)
    }

    /// The default file of signed audit checkpoints.
    pub fn audit_checkpoints_path(&self) -> PathBuf {
        self.path.join("audit-checkpoints.txt")
    }

    /// Loads the keyring: the active master key from `WARD_MASTER_KEY` or
    /// `master.key`, and the retired keys in `master-retired/`.
    fn master_key(&self) -> Result<(MasterKey, bool), SetupError> {
        let path = self.path.join("master.key");
        let (active, created) = if let Ok(encoded) = std::env::var(MASTER_KEY_ENV) {
            let key = MasterKey::from_base64(encoded.trim())
                .map_err(crypto_err(Path::new(MASTER_KEY_ENV)))?;
            (key, false)
        } else {
            MasterKey::load_or_create(&path).map_err(crypto_err(&path))?
        };
        Ok((active.with_retired(self.retired_master_keys()?), created))
    }

    /// Loads every key in `master-retired/`.
    fn retired_master_keys(&self) -> Result<Vec<MasterKey>, SetupError> {
        let dir = self.path.join(RETIRED_MASTER_DIR);
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut keys = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path();
            if path.extension().is_some_and(|ext| ext == "key") {
                keys.push(MasterKey::load(&path).map_err(crypto_err(&path))?);
            }
        }
        Ok(keys)
    }

    /// True when the active master key comes from `WARD_MASTER_KEY`.
    pub fn master_key_from_env(&self) -> bool {
        std::env::var_os(MASTER_KEY_ENV).is_some()
    }

    /// Makes a new active master key and keeps the current one as retired,
    /// so both open everything until [`DataDir::reseal_files`] and the store
    /// rewrap have moved every wrapped key. Returns the new keyring.
    ///
    /// With a key file, the current key is copied to
    /// `master-retired/KEYID.key` before `master.key` is replaced, so a crash
    /// in between loses no key. With `WARD_MASTER_KEY`, the new key goes to
    /// `new_key_file` (created with mode 0600, never overwritten) and the
    /// current key stays only in the environment.
    pub fn rotate_master_key(
        &self,
        current: &MasterKey,
        new_key_file: Option<&Path>,
    ) -> Result<MasterKey, SetupError> {
        let fresh = MasterKey::generate().map_err(crypto_err(&self.path))?;
        let mut retired = self.retired_master_keys()?;
        retired.push(MasterKey::from_base64(&current.encode()).map_err(crypto_err(&self.path))?);
        if let Some(target) = new_key_file {
            write_new_private(target, fresh.encode().as_bytes())?;
        } else {
            let dir = self.path.join(RETIRED_MASTER_DIR);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_err(&dir))?;
            let kept = dir.join(format!("{}.key", current.id()));
            write_atomic(&kept, format!("{}\n", *current.encode()).as_bytes(), 0o600)?;
            let path = self.path.join("master.key");
            write_atomic(&path, format!("{}\n", *fresh.encode()).as_bytes(), 0o600)?;
        }
        let encoded = fresh.encode();
        let fresh = MasterKey::from_base64(&encoded).map_err(crypto_err(&self.path))?;
        Ok(fresh.with_retired(retired))
    }

    /// Reseals every sealed key file under the active key of `master`.
    /// Returns the files rewritten; files already under it are left alone.
    pub fn reseal_files(&self, master: &MasterKey) -> Result<Vec<PathBuf>, SetupError> {
        let mut rewritten = Vec::new();
        for (name, reseal) in SEALED_FILES {
            let path = self.path.join(name);
            if !path.exists() {
                continue;
            }
            let sealed = read_sealed(&path)?;
            if sealed.master_key_id() == master.id() {
                continue;
            }
            let fresh = reseal(&sealed, master).map_err(crypto_err(&path))?;
            write_atomic(&path, fresh.as_str().as_bytes(), 0o600)?;
            rewritten.push(path);
        }
        Ok(rewritten)
    }

    /// Lists every `*.sealed` file of the data directory sealed under `id`,
    /// including files a rotation does not know how to reseal.
    pub fn sealed_files_under(&self, id: KeyId) -> Result<Vec<PathBuf>, SetupError> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.path).map_err(io_err(&self.path))? {
            let path = entry.map_err(io_err(&self.path))?.path();
            if path.extension().is_some_and(|ext| ext == "sealed")
                && read_sealed(&path)?.master_key_id() == id
            {
                found.push(path);
            }
        }
        found.sort();
        Ok(found)
    }

    /// Returns the file of a retired master key, if the data directory has it.
    pub fn retired_master_key_path(&self, id: &str) -> Option<PathBuf> {
        let path = self.path.join(RETIRED_MASTER_DIR).join(format!("{id}.key"));
        path.exists().then_some(path)
    }

    /// Loads the backup key, `backup.key.sealed`, creating it on first use.
    pub fn backup_key(&self, master: &MasterKey) -> Result<BackupKey, SetupError> {
        let path = self.path.join(BACKUP_KEY_FILE);
        if path.exists() {
            let sealed = read_sealed(&path)?;
            return BackupKey::from_sealed(&sealed, master).map_err(crypto_err(&path));
        }
        let key = BackupKey::generate().map_err(crypto_err(&path))?;
        let sealed = key.sealed(master).map_err(crypto_err(&path))?;
        write_atomic(&path, sealed.as_str().as_bytes(), 0o600)?;
        Ok(key)
    }

    /// Issues a fresh server certificate for `names` and records its chain
    /// in `server.pem`; the private key is returned and never written.
    pub fn issue_server_certificate(
        &self,
        keys: &Keys,
        names: &[&str],
    ) -> Result<IssuedCertificate, SetupError> {
        let path = self.path.join("server.pem");
        let issued = keys
            .ca
            .issue_server_certificate(names)
            .map_err(crypto_err(&path))?;
        write_atomic(&path, issued.chain_pem.as_bytes(), 0o644)?;
        Ok(issued)
    }
}

/// Creates `path` with `contents` and mode 0600, failing if it exists.
fn write_new_private(path: &Path, contents: &[u8]) -> Result<(), SetupError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(contents).map_err(io_err(path))?;
    file.write_all(b"\n").map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

fn read_sealed(path: &Path) -> Result<SealedSecret, SetupError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    SealedSecret::parse(text.trim()).map_err(crypto_err(path))
}
