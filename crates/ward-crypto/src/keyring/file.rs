//! Reading and creating the master key file.
//!
//! The file contains one line, `ward-master-key-v1:<base64>`, and must not be
//! accessible to group or other users. This module uses Unix permissions, so
//! the crate builds only on Unix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{MASTER_KEY_PREFIX, MasterKey, decode_secret};
use crate::error::{Error, Result};

/// Largest key file read. A valid file is under 70 bytes.
const MAX_KEY_FILE_LEN: u64 = 1024;

impl MasterKey {
    /// Loads the master key from `path`, creating the file with a new random
    /// key if it does not exist.
    ///
    /// Returns the key and whether it was created. A new file gets mode 0600,
    /// and missing parent directories are created with mode 0700. The key is
    /// written to a temporary file in the same directory, synced, and then
    /// hard-linked into place, so `path` never contains a partial key. The
    /// link fails if `path` exists, so a concurrent creator is never
    /// overwritten. When another process creates the file first, its key is
    /// loaded and returned.
    ///
    /// # Errors
    ///
    /// Everything [`MasterKey::load`] returns, and [`Error::Io`] if the file or
    /// its directory cannot be created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool)> {
        match Self::load(path) {
            Ok(key) => return Ok((key, false)),
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }

        let key = Self::generate()?;
        match create_key_file(path, key.encode().as_bytes()) {
            Ok(()) => Ok((key, true)),
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
                Ok((Self::load(path)?, false))
            }
            Err(error) => Err(error),
        }
    }

    /// Loads the master key from an existing file.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the file cannot be read (a missing file gives
    /// [`io::ErrorKind::NotFound`]), [`Error::InsecurePermissions`] if group
    /// or other users have any access to it, and [`Error::InvalidKeyFile`] if
    /// the content is not a key.
    pub fn load(path: &Path) -> Result<Self> {
        let io_error = |operation| {
            move |source| Error::Io {
                operation,
                path: path.to_owned(),
                source,
            }
        };
        let invalid = |reason| Error::InvalidKeyFile {
            path: path.to_owned(),
            reason,
        };

        let file = File::open(path).map_err(io_error("open master key file"))?;
        // Check the opened file itself, so a swap after the check cannot matter.
        let metadata = file
            .metadata()
            .map_err(io_error("inspect master key file"))?;
        if !metadata.is_file() {
            return Err(invalid("not a regular file"));
        }
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::InsecurePermissions {
                path: path.to_owned(),
                mode,
            });
        }

        // Reserve up front so the buffer holding the key is never reallocated.
        let mut content = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_LEN as usize + 1));
        file.take(MAX_KEY_FILE_LEN + 1)
            .read_to_end(&mut content)
            .map_err(io_error("read master key file"))?;
        if content.len() as u64 > MAX_KEY_FILE_LEN {
            return Err(invalid("the file is larger than a key file can be"));
        }

        let text =
            std::str::from_utf8(&content).map_err(|_| invalid("the file is not UTF-8 text"))?;
        let encoded = text
            .trim()
            .strip_prefix(MASTER_KEY_PREFIX)
            .ok_or_else(|| invalid("expected a single line starting with `ward-master-key-v1:`"))?;
        let secret = decode_secret(encoded).map_err(invalid)?;
        Self::from_secret(secret)
    }
}

/// Creates `path` with `content` and mode 0600, failing with
/// [`io::ErrorKind::AlreadyExists`] if it exists.
fn create_key_file(path: &Path, content: &[u8]) -> Result<()> {
    let io_error = |operation, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io {
            operation,
            path,
            source,
        }
    };

    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&directory)
        .map_err(io_error("create directory", &directory))?;

    let temporary = temporary_path(path)?;
    let written = write_synced(&temporary, content).map_err(io_error("write", &temporary));
    let linked = written.and_then(|()| {
        fs::hard_link(&temporary, path).map_err(io_error("create master key file", path))
    });
    // The temporary name is no longer needed whether or not the link worked.
    let _ = fs::remove_file(&temporary);
    linked?;

    File::open(&directory)
        .and_then(|directory| directory.sync_all())
        .map_err(io_error("sync directory", &directory))
}

/// Writes `content` to a new file with mode 0600 and syncs it to disk.
fn write_synced(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content)?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// Returns a unique hidden name next to `path` for the file being written.
fn temporary_path(path: &Path) -> Result<PathBuf> {
    let mut suffix = [0u8; 8];
    aws_lc_rs::rand::fill(&mut suffix).map_err(Error::provider("random generation"))?;
    let suffix: String = suffix.iter().map(|byte| format!("{byte:02x}")).collect();

    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy())
        .unwrap_or_default();
    Ok(path.with_file_name(format!(".{file_name}.{suffix}.tmp")))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::keyring::KeyId;

    #[test]
    fn load_or_create_creates_file_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");

        let (key, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let content = fs::read_to_string(&path).unwrap();
        assert_eq!(content, format!("{}\n", *key.encode()));
    }

    #[test]
    fn load_or_create_returns_same_key_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");

        let (first, created_first) = MasterKey::load_or_create(&path).unwrap();
        let (second, created_second) = MasterKey::load_or_create(&path).unwrap();
        assert!(created_first);
        assert!(!created_second);
        assert_eq!(first.id(), second.id());
        assert_eq!(*first.encode(), *second.encode());
    }

    #[test]
    fn load_or_create_race_creates_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");

        let results: Vec<(KeyId, bool)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        let (key, created) = MasterKey::load_or_create(&path).unwrap();
                        (key.id(), created)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap())
                .collect()
        });

        let created_count = results.iter().filter(|(_, created)| *created).count();
        assert_eq!(created_count, 1);
        let first_id = results[0].0;
        assert!(results.iter().all(|(id, _)| *id == first_id));
        assert_eq!(MasterKey::load(&path).unwrap().id(), first_id);
    }

    #[test]
    fn load_or_create_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        MasterKey::load_or_create(&path).unwrap();

        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["master.key"]);
    }

    #[test]
    fn load_or_create_makes_private_parent_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("master.key");

        let (_, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(created);
        let mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn load_rejects_group_or_world_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        MasterKey::load_or_create(&path).unwrap();

        for mode in [0o644, 0o640, 0o604, 0o660, 0o700 | 0o007] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let error = MasterKey::load_or_create(&path).unwrap_err();
            assert!(
                matches!(error, Error::InsecurePermissions { mode: found, .. } if found == mode),
                "mode {mode:o} gave {error}"
            );
            let message = error.to_string();
            assert!(message.contains(&path.display().to_string()));
            assert!(message.contains("chmod 600"));
        }

        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(MasterKey::load(&path).is_ok());
    }

    #[test]
    fn load_accepts_file_written_by_hand() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let key = MasterKey::generate().unwrap();
        fs::write(&path, format!("\n{}\n\n", *key.encode())).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();

        assert_eq!(MasterKey::load(&path).unwrap().id(), key.id());
    }

    #[test]
    fn load_rejects_invalid_content_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let short = format!("{MASTER_KEY_PREFIX}{}", "QUFB".repeat(10));
        let huge = "A".repeat(4096);
        let cases: [&[u8]; 6] = [
            b"",
            b"ward-master-key-v2:AAAA",
            b"ward-master-key-v1:not base64!",
            short.as_bytes(),
            huge.as_bytes(),
            b"\xff\xfe",
        ];

        for content in cases {
            fs::write(&path, content).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let error = MasterKey::load_or_create(&path).unwrap_err();
            assert!(matches!(error, Error::InvalidKeyFile { .. }), "{error}");
            assert!(!error.to_string().contains("QUFB"));
        }
    }

    #[test]
    fn load_reports_missing_file_as_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.key");
        let error = MasterKey::load(&path).unwrap_err();
        assert!(
            matches!(&error, Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
        assert!(error.to_string().contains("absent.key"));
    }

    #[test]
    fn load_rejects_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let error = MasterKey::load(dir.path()).unwrap_err();
        assert!(matches!(error, Error::InvalidKeyFile { .. }), "{error}");
    }
}
