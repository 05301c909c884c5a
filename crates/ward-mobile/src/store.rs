//! The encrypted offline store: one SQLite table of AEAD-sealed records.
//!
//! Every record (cached resources, tokens, drafts, sync cursors, the
//! server configuration) is sealed with AES-256-GCM under a subkey of the
//! data key, with the record kind and id as associated data, so a
//! ciphertext moved to another row fails to open. Record ids and the
//! patient a record belongs to are HMAC-SHA256 blind ids under another
//! subkey. What the file reveals without the keys: the kind of each
//! record (`resource`, `draft`, ...), how many records each patient has
//! (but not who the patient is), and ciphertext lengths.
//!
//! SQLite runs with `temp_store=MEMORY` (sorts and temporary tables never
//! reach disk) and `secure_delete=ON` (freed pages are zeroed); the
//! database, its WAL and shared-memory files have mode 0600.

use std::path::{Path, PathBuf};

use aws_lc_rs::hmac;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::error::{MobileError, MobileResult};
use crate::keys::{UnlockedKeys, open, seal, touch_private};

/// Name of the database file inside the client directory.
pub(crate) const DB_FILE: &str = "store.db";

/// Kinds of record.
pub(crate) mod kind {
    /// A cached FHIR resource, keyed `Type/id`, owned by its patient.
    pub const RESOURCE: &str = "resource";
    /// A documentation draft, keyed by draft id, owned by its patient.
    pub const DRAFT: &str = "draft";
    /// The token set of the signed-in user.
    pub const TOKEN: &str = "token";
    /// Sync state: cursor, patient list, last statistics.
    pub const SYNC: &str = "sync";
    /// Server URL, CA and device certificate.
    pub const CONFIG: &str = "config";
}

/// An open store. Holds the two subkeys; dropping it closes the database
/// and zeroizes them.
pub(crate) struct Store {
    conn: Connection,
    record_key: Zeroizing<[u8; 32]>,
    blind_key: hmac::Key,
}

impl Store {
    /// Opens or creates `DIR/store.db` with the keys.
    pub(crate) fn open(dir: &Path, keys: &UnlockedKeys) -> MobileResult<Store> {
        let path = dir.join(DB_FILE);
        // Create the file with mode 0600 before SQLite does, so it (and
        // the WAL and -shm files, which SQLite gives the same mode) is never
        // readable by others.
        touch_private(&path)?;
        let conn = Connection::open(&path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA temp_store = MEMORY;
             PRAGMA secure_delete = ON;
             CREATE TABLE IF NOT EXISTS records (
                 id BLOB PRIMARY KEY,
                 kind TEXT NOT NULL,
                 owner BLOB,
                 body BLOB NOT NULL
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS records_kind_owner ON records (kind, owner);",
        )?;
        let blind = keys.subkey("blind ids")?;
        Ok(Store {
            conn,
            record_key: keys.subkey("records")?,
            blind_key: hmac::Key::new(hmac::HMAC_SHA256, blind.as_slice()),
        })
    }

    /// The blind id of `key` within `kind`.
    fn blind(&self, kind: &str, key: &str) -> Vec<u8> {
        let mut context = hmac::Context::with_key(&self.blind_key);
        context.update(kind.as_bytes());
        context.update(&[0]);
        context.update(key.as_bytes());
        context.sign().as_ref().to_vec()
    }

    fn aad(kind: &str, id: &[u8]) -> Vec<u8> {
        let mut aad = kind.as_bytes().to_vec();
        aad.push(0);
        aad.extend_from_slice(id);
        aad
    }

    /// Stores `value` under `kind`/`key`, replacing what was there.
    pub(crate) fn put(
        &self,
        kind: &str,
        key: &str,
        owner: Option<&str>,
        value: &[u8],
    ) -> MobileResult<()> {
        let id = self.blind(kind, key);
        let owner = owner.map(|o| self.blind("owner", o));
        let body = seal(&self.record_key, &Self::aad(kind, &id), value)?;
        self.conn.execute(
            "INSERT INTO records (id, kind, owner, body) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, body = excluded.body",
            params![id, kind, owner, body],
        )?;
        Ok(())
    }

    fn open_body(&self, kind: &str, id: &[u8], body: &[u8]) -> MobileResult<Zeroizing<Vec<u8>>> {
        open(&self.record_key, &Self::aad(kind, id), body).ok_or_else(|| {
            MobileError::corrupt(format!("a {kind} record failed its integrity check"))
        })
    }

    /// Reads the value under `kind`/`key`.
    pub(crate) fn get(&self, kind: &str, key: &str) -> MobileResult<Option<Zeroizing<Vec<u8>>>> {
        let id = self.blind(kind, key);
        let body: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT body FROM records WHERE id = ?1 AND kind = ?2",
                params![id, kind],
                |row| row.get(0),
            )
            .optional()?;
        body.map(|body| self.open_body(kind, &id, &body))
            .transpose()
    }

    /// Removes `kind`/`key`; returns whether it existed.
    pub(crate) fn delete(&self, kind: &str, key: &str) -> MobileResult<bool> {
        let id = self.blind(kind, key);
        let removed = self.conn.execute(
            "DELETE FROM records WHERE id = ?1 AND kind = ?2",
            params![id, kind],
        )?;
        Ok(removed > 0)
    }

    /// Every value of `kind`, optionally only those owned by `owner`.
    pub(crate) fn list(
        &self,
        kind: &str,
        owner: Option<&str>,
    ) -> MobileResult<Vec<Zeroizing<Vec<u8>>>> {
        let owner = owner.map(|o| self.blind("owner", o));
        let mut statement = self.conn.prepare(
            "SELECT id, body FROM records WHERE kind = ?1 AND (?2 IS NULL OR owner = ?2)",
        )?;
        let rows = statement.query_map(params![kind, owner], |row| {
            Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?))
        })?;
        let mut values = Vec::new();
        for row in rows {
            let (id, body) = row?;
            values.push(self.open_body(kind, &id, &body)?);
        }
        Ok(values)
    }

    /// Number of records of `kind`.
    pub(crate) fn count(&self, kind: &str) -> MobileResult<u64> {
        let count: i64 = self.conn.query_row(
            "SELECT count(*) FROM records WHERE kind = ?1",
            params![kind],
            |row| row.get(0),
        )?;
        Ok(count.max(0) as u64)
    }

    /// Removes every record of `kind`, optionally only those owned by
    /// `owner`; returns how many.
    pub(crate) fn delete_all(&self, kind: &str, owner: Option<&str>) -> MobileResult<u64> {
        let owner = owner.map(|o| self.blind("owner", o));
        let removed = self.conn.execute(
            "DELETE FROM records WHERE kind = ?1 AND (?2 IS NULL OR owner = ?2)",
            params![kind, owner],
        )?;
        Ok(removed as u64)
    }

    /// Stores `value` as JSON.
    pub(crate) fn put_json<T: Serialize>(
        &self,
        kind: &str,
        key: &str,
        owner: Option<&str>,
        value: &T,
    ) -> MobileResult<()> {
        let bytes = Zeroizing::new(
            serde_json::to_vec(value)
                .map_err(|e| MobileError::corrupt(format!("encoding a {kind} record: {e}")))?,
        );
        self.put(kind, key, owner, &bytes)
    }

    /// Reads a JSON value.
    pub(crate) fn get_json<T: DeserializeOwned>(
        &self,
        kind: &str,
        key: &str,
    ) -> MobileResult<Option<T>> {
        self.get(kind, key)?
            .map(|bytes| parse(kind, &bytes))
            .transpose()
    }

    /// Reads every JSON value of `kind` (owned by `owner`).
    pub(crate) fn list_json<T: DeserializeOwned>(
        &self,
        kind: &str,
        owner: Option<&str>,
    ) -> MobileResult<Vec<T>> {
        self.list(kind, owner)?
            .iter()
            .map(|bytes| parse(kind, bytes))
            .collect()
    }

    /// Runs `work` in one transaction.
    pub(crate) fn transaction<T>(
        &self,
        work: impl FnOnce(&Store) -> MobileResult<T>,
    ) -> MobileResult<T> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match work(self) {
            Ok(value) => {
                self.conn.execute_batch("COMMIT")?;
                Ok(value)
            }
            Err(error) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(error)
            }
        }
    }

    /// Copies the WAL into the database file and truncates the WAL.
    pub(crate) fn checkpoint(&self) -> MobileResult<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

fn parse<T: DeserializeOwned>(kind: &str, bytes: &[u8]) -> MobileResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| MobileError::corrupt(format!("a {kind} record is not valid JSON: {e}")))
}

/// The files of the store in `dir`: the database, its WAL and its
/// shared-memory index.
pub(crate) fn store_files(dir: &Path) -> [PathBuf; 3] {
    [
        dir.join(DB_FILE),
        dir.join(format!("{DB_FILE}-wal")),
        dir.join(format!("{DB_FILE}-shm")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KdfCost, KeyStore};
    use serde_json::json;

    const NAME: &str = "Quillonbrecht";
    const NOTE: &str = "Zebulonfarthing";
    const TOKEN: &str = "eyJtokenSecretMarker";

    fn open_store(dir: &Path) -> Store {
        let cost = KdfCost {
            memory_kib: 64,
            iterations: 1,
        };
        let keys = KeyStore::new(dir)
            .create("246810", b"key", cost, 0)
            .unwrap();
        Store::open(dir, &keys).unwrap()
    }

    fn plant(store: &Store) {
        let patient = json!({"resourceType": "Patient", "id": "p1", "name": [{"family": NAME}]});
        store
            .put_json(kind::RESOURCE, "Patient/p1", Some("p1"), &patient)
            .unwrap();
        let draft = json!({"note": NOTE, "patient": "p1"});
        store
            .put_json(kind::DRAFT, "d1", Some("p1"), &draft)
            .unwrap();
        store
            .put(kind::TOKEN, "tokens", None, TOKEN.as_bytes())
            .unwrap();
    }

    /// Every byte of every file in `dir`.
    fn all_bytes(dir: &Path) -> Vec<u8> {
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                bytes.extend(std::fs::read(&path).unwrap());
            }
        }
        bytes
    }

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    fn assert_no_plaintext(dir: &Path) {
        let bytes = all_bytes(dir);
        assert!(!bytes.is_empty(), "the scan read nothing");
        for secret in [NAME, NOTE, TOKEN, "p1\"", "Patient/p1"] {
            assert!(!contains(&bytes, secret), "{secret} found in clear");
        }
    }

    #[test]
    fn wal_holds_no_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        plant(&store);
        let wal = std::fs::metadata(dir.path().join(format!("{DB_FILE}-wal"))).unwrap();
        assert!(wal.len() > 0, "the records should still be in the WAL");
        assert_no_plaintext(dir.path());
    }

    #[test]
    fn database_holds_no_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        plant(&store);
        store.checkpoint().unwrap();
        // Rewrite and delete records, so freed pages would keep old text
        // without secure_delete.
        store.delete(kind::DRAFT, "d1").unwrap();
        store.delete_all(kind::RESOURCE, Some("p1")).unwrap();
        store.checkpoint().unwrap();
        drop(store);
        assert_no_plaintext(dir.path());
    }

    #[test]
    fn scan_detects_plaintext() {
        // The scan itself must be able to fail: a clear write is found.
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        store
            .conn
            .execute(
                "INSERT INTO records (id, kind, body) VALUES (x'01', 'x', ?1)",
                params![NAME.as_bytes()],
            )
            .unwrap();
        assert!(contains(&all_bytes(dir.path()), NAME));
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        plant(&store);
        let patient: serde_json::Value = store
            .get_json(kind::RESOURCE, "Patient/p1")
            .unwrap()
            .unwrap();
        assert_eq!(patient["name"][0]["family"], NAME);
        assert_eq!(store.list(kind::RESOURCE, Some("p1")).unwrap().len(), 1);
        assert_eq!(store.list(kind::RESOURCE, Some("p2")).unwrap().len(), 0);
        assert_eq!(store.count(kind::DRAFT).unwrap(), 1);
        assert!(store.get(kind::RESOURCE, "Patient/p2").unwrap().is_none());
    }

    #[test]
    fn moved_ciphertext_fails_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        plant(&store);
        store
            .put(kind::RESOURCE, "Patient/p2", Some("p2"), b"{}")
            .unwrap();
        // Copy the body of Patient/p1 over Patient/p2.
        let p1 = store.blind(kind::RESOURCE, "Patient/p1");
        let p2 = store.blind(kind::RESOURCE, "Patient/p2");
        store
            .conn
            .execute(
                "UPDATE records SET body = (SELECT body FROM records WHERE id = ?1) WHERE id = ?2",
                params![p1, p2],
            )
            .unwrap();
        let error = store.get(kind::RESOURCE, "Patient/p2").err().unwrap();
        assert!(matches!(error, MobileError::Corrupt { .. }));
    }

    #[test]
    fn store_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        plant(&store);
        for path in store_files(dir.path()) {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is readable by others", path.display());
        }
    }
}
