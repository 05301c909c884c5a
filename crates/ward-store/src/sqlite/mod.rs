//! The embedded SQLite backend: one writer connection, a few readers, WAL
//! journaling with `synchronous=FULL` so an acknowledged write survives a
//! crash. Concurrent writes share commits (see `group`).

mod audit;
mod group;
mod kv;
pub(crate) mod raw;
mod read;
mod schema;
mod snapshots;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use ward_crypto::{DataKey, IndexKey, MasterKey, WrappedKey};
use ward_fhir::search::SearchQuery;

use crate::codec::ResourceCodec;
use crate::types::{
    HistoryPage, HistoryRequest, PageRequest, ResourceVersion, SearchPage, Store, Visibility,
    WriteTx,
};
use crate::{Result, StoreError};

pub(crate) use snapshots::Snapshots;

/// Options for opening a SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The database file.
    pub path: PathBuf,
    /// How many read connections to keep.
    pub readers: usize,
    /// The maximum number of candidates a search may decrypt to check
    /// criteria that the indexes cannot evaluate.
    pub max_scan: usize,
    /// The maximum number of concurrent write transactions that share one
    /// commit and fsync; 1 gives every write a commit of its own.
    pub max_group_commit: usize,
}

impl SqliteOptions {
    /// Options with defaults for a database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            readers: 4,
            max_scan: 50_000,
            max_group_commit: group::DEFAULT_MAX_GROUP,
        }
    }
}

/// The SQLite store.
pub struct SqliteStore {
    writer: group::GroupWriter,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    codec: Arc<ResourceCodec>,
    snapshots: Snapshots,
    clock: Mutex<i64>,
    max_scan: usize,
}

fn open_connection(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating and migrating when needed) the store at
    /// `options.path`, unwrapping its data keys with `master`.
    pub fn open(options: &SqliteOptions, master: &MasterKey) -> Result<Self> {
        create_private(&options.path)?;
        let mut writer = open_connection(&options.path)?;
        schema::migrate(&mut writer)?;
        let codec = load_codec(&writer, master)?;
        let mut readers = Vec::new();
        for _ in 0..options.readers.max(1) {
            readers.push(Mutex::new(open_connection(&options.path)?));
        }
        // A corrupt saved chain state fails here rather than at the first
        // audited write.
        audit::load(&writer)?;
        let last: i64 = writer.query_row(
            "SELECT COALESCE(MAX(last_updated), 0) FROM versions",
            [],
            |row| row.get(0),
        )?;
        Ok(Self {
            writer: group::GroupWriter::new(writer, options.max_group_commit),
            readers,
            next_reader: AtomicUsize::new(0),
            codec: Arc::new(codec),
            snapshots: Snapshots::default(),
            clock: Mutex::new(last),
            max_scan: options.max_scan,
        })
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64> {
        schema::version(&self.writer.lock().conn)
    }

    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let n = self.readers.len();
        for i in 0..n {
            if let Some(conn) = self.readers[(start + i) % n].try_lock() {
                return f(&conn);
            }
        }
        let conn = self.readers[start % n].lock();
        f(&conn)
    }

    fn reader(&self) -> read::Reader<'_> {
        read::Reader {
            codec: &self.codec,
            max_scan: self.max_scan,
        }
    }
}

/// Creates the database file with mode 0600 when it does not exist yet;
/// SQLite gives its `-wal` and `-shm` files the same mode.
fn create_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(StoreError::Database(format!(
            "creating the database {}: {err}",
            path.display()
        ))),
    }
}

/// Loads and unwraps every data key, creating the first one on a new
/// database.
fn load_codec(conn: &Connection, master: &MasterKey) -> Result<ResourceCodec> {
    let index = load_index_key(conn, master)?;
    let mut keys = HashMap::new();
    let mut active = None;
    {
        let mut stmt = conn.prepare("SELECT id, wrapped FROM data_keys ORDER BY id")?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
        })?;
        for row in rows {
            let (id, wrapped) = row?;
            let wrapped = WrappedKey::from_bytes(&wrapped)?;
            keys.insert(id, Arc::new(master.unwrap_data_key(&wrapped)?));
            active = Some(id);
        }
    }
    let active = match active {
        Some(id) => id,
        None => {
            let key = DataKey::generate()?;
            let wrapped = master.wrap_data_key(&key)?;
            conn.execute(
                "INSERT INTO data_keys (wrapped, created) VALUES (?1, ?2)",
                params![wrapped.as_bytes(), now_micros()],
            )?;
            let id = conn.last_insert_rowid();
            keys.insert(id, Arc::new(key));
            id
        }
    };
    Ok(ResourceCodec::new(keys, active, index))
}

/// Loads the wrapped blind-index key, storing one on first use: a new
/// random key for a new database, or the key derived from the master key
/// for a database that already has data, whose index rows were hashed
/// under it.
fn load_index_key(conn: &Connection, master: &MasterKey) -> Result<IndexKey> {
    let stored: Option<Vec<u8>> = conn
        .query_row(
            "SELECT wrapped FROM store_keys WHERE name = 'index'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(wrapped) = stored {
        return Ok(master.unwrap_index_key(&WrappedKey::from_bytes(&wrapped)?)?);
    }
    let existing: bool = conn.query_row("SELECT EXISTS (SELECT 1 FROM data_keys)", [], |row| {
        row.get(0)
    })?;
    let key = if existing {
        master.derived_index_key().clone()
    } else {
        IndexKey::generate()?
    };
    let wrapped = master.wrap_index_key(&key)?;
    conn.execute(
        "INSERT INTO store_keys (name, wrapped, created) VALUES ('index', ?1, ?2)",
        params![wrapped.as_bytes(), now_micros()],
    )?;
    Ok(key)
}

/// Encodes bytes as lowercase hexadecimal.
fn hex_encode(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// The current time in microseconds since the Unix epoch.
pub(crate) fn now_micros() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

impl Store for SqliteStore {
    fn blind(&self, domain: &str, value: &str) -> String {
        hex_encode(&self.codec.blind(&format!("kv:{domain}"), value))
    }

    fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>> {
        self.with_reader(|conn| kv::get(conn, &self.codec, ns, key))
    }

    fn kv_put(&self, ns: &str, key: &str, value: &[u8], expires: Option<i64>) -> Result<()> {
        self.writer
            .write(|conn| kv::put(conn, &self.codec, ns, key, value, expires))
    }

    fn kv_insert_new(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        expires: Option<i64>,
    ) -> Result<bool> {
        self.writer
            .write(|conn| kv::insert_new(conn, &self.codec, ns, key, value, expires))
    }

    fn kv_take(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>> {
        self.writer
            .write(|conn| kv::take(conn, &self.codec, ns, key))
    }

    fn kv_delete(&self, ns: &str, key: &str) -> Result<bool> {
        self.writer.write(|conn| kv::delete(conn, ns, key))
    }

    fn kv_list(&self, ns: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.with_reader(|conn| kv::list(conn, &self.codec, ns, prefix))
    }

    fn read(&self, resource_type: &str, id: &str) -> Result<ResourceVersion> {
        self.with_reader(|conn| self.reader().read(conn, resource_type, id))
    }

    fn vread(&self, resource_type: &str, id: &str, version: u64) -> Result<ResourceVersion> {
        self.with_reader(|conn| self.reader().vread(conn, resource_type, id, version))
    }

    fn history(&self, request: &HistoryRequest) -> Result<HistoryPage> {
        self.with_reader(|conn| self.reader().history(conn, request))
    }

    fn search(
        &self,
        query: &SearchQuery,
        page: &PageRequest,
        visible: Option<Visibility<'_>>,
    ) -> Result<SearchPage> {
        self.with_reader(|conn| {
            self.reader()
                .search(conn, &self.snapshots, query, page, visible)
        })
    }

    fn search_page(
        &self,
        snapshot: &str,
        offset: usize,
        count: usize,
        visible: Option<Visibility<'_>>,
    ) -> Result<SearchPage> {
        let (pks, settings) = self
            .snapshots
            .get(snapshot)
            .ok_or_else(|| StoreError::SnapshotExpired(snapshot.to_owned()))?;
        self.with_reader(|conn| {
            self.reader().page(
                conn,
                &pks,
                &settings,
                Some(snapshot.to_owned()),
                offset,
                count,
                visible,
            )
        })
    }

    fn audit_rows(&self, from: u64, limit: usize) -> Result<Vec<ward_audit::StoredAudit>> {
        self.with_reader(|conn| audit::rows(conn, from, limit))
    }

    fn audit_seqs_for_patient(&self, patient: &str, since: i64, until: i64) -> Result<Vec<u64>> {
        self.with_reader(|conn| audit::seqs_for_patient(conn, patient, since, until))
    }

    fn audit_head(&self) -> Result<crate::types::AuditHead> {
        self.with_reader(|conn| Ok(audit::head(&audit::load(conn)?)))
    }

    fn begin(&self) -> Result<Box<dyn WriteTx + '_>> {
        Ok(Box::new(write::SqliteWriteTx::begin(
            self.writer.lock(),
            &self.codec,
            &self.clock,
            self.max_scan,
        )?))
    }
}
