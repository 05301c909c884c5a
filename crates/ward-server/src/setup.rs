//! The data directory: the master key, the organization's CA, the token
//! signing key and the database, created on first use.
//!
//! Layout: `master.key` (mode 0600, unless `WARD_MASTER_KEY` supplies the
//! key), `ca.pem` (the CA certificate clients trust), `ca.key.sealed` and
//! `signing.key.sealed` and `audit.key.sealed` (private keys sealed under
//! the master key), `audit-checkpoints.txt` (signed audit checkpoints),
//! `server.pem` (the current server certificate chain; its key stays in
//! memory) and `ward.db` (SQLite).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;
use ward_crypto::{CertificateAuthority, IssuedCertificate, MasterKey, SealedSecret, SigningKey};

/// The environment variable that may hold the master key (base64).
pub const MASTER_KEY_ENV: &str = "WARD_MASTER_KEY";

/// A data-directory failure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key or certificate failed.
    #[error("{path}: {source}")]
    Crypto {
        /// The file involved.
        path: PathBuf,
        /// The cause.
        source: ward_crypto::Error,
    },
}

/// The keys of an organization, loaded from its data directory.
pub struct Keys {
    /// The master key.
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

    /// Loads the master key from `WARD_MASTER_KEY` or `master.key`.
    fn master_key(&self) -> Result<(MasterKey, bool), SetupError> {
        let path = self.path.join("master.key");
        if let Ok(encoded) = std::env::var(MASTER_KEY_ENV) {
            let key = MasterKey::from_base64(encoded.trim())
                .map_err(crypto_err(Path::new(MASTER_KEY_ENV)))?;
            return Ok((key, false));
        }
        MasterKey::load_or_create(&path).map_err(crypto_err(&path))
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

fn read_sealed(path: &Path) -> Result<SealedSecret, SetupError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    SealedSecret::parse(text.trim()).map_err(crypto_err(path))
}
