//! A portable dump of a whole store, the content of `ward backup` files.
//!
//! The dump is the same on both backends, so a SQLite backup restores into
//! PostgreSQL and the other way round. It is every row of every table in
//! [`TABLES`], table by table, followed by a [`Manifest`]:
//!
//! ```text
//! "WARDDUMP" || format version (1)
//! per table:  'T' || name length (u16) || name || column count (u16)
//! per row:    'R' || one cell per column
//! at the end: 'M' || manifest length (u32) || manifest JSON
//! cell:       0 (null) | 1 || i64 | 2 || f64 bits | 3 || u32 len || UTF-8 | 4 || u32 len || bytes
//! ```
//!
//! Rows are copied as stored, so resource versions and records stay sealed
//! under their data keys. Data keys and the index key are rewrapped from
//! the master key to a key of the backup's own ([`KeyTransfer`]). A backup
//! therefore restores under whatever master key the target has, and a dump
//! alone reveals no more than the database does.
//! The manifest's `content_sha256` covers every byte before the `'M'` frame.
//! Paging snapshots (`search_snapshots`) are short-lived and not included.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};
use ward_crypto::{KeyId, MasterKey, WrappedKey};

use crate::open::Database;
use crate::{Result, StoreError};

/// The dump format version this build writes and reads.
pub const DUMP_FORMAT_VERSION: u8 = 1;

const DUMP_MAGIC: &[u8; 8] = b"WARDDUMP";

/// The largest text or blob cell a dump may hold (a resource version is
/// limited far below this by the server's body limit).
const MAX_CELL_LEN: usize = 256 * 1024 * 1024;

/// The type of a column, as both backends store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A 64-bit integer.
    Int,
    /// A double-precision float.
    Real,
    /// UTF-8 text.
    Text,
    /// Bytes.
    Blob,
}

/// A table that the dump covers.
#[derive(Debug)]
pub struct Table {
    /// The table name.
    pub name: &'static str,
    /// The columns and their types, in dump order.
    pub columns: &'static [(&'static str, Kind)],
    /// The `ORDER BY` list that makes the dump order stable.
    pub order_by: &'static str,
    /// The identity column on PostgreSQL, whose sequence a restore moves past
    /// the restored values.
    pub identity: Option<&'static str>,
}

use Kind::{Blob, Int, Real, Text};

/// Every table of the store, in the order a dump writes them.
pub const TABLES: &[Table] = &[
    Table {
        name: "data_keys",
        columns: &[("id", Int), ("wrapped", Blob), ("created", Int)],
        order_by: "id",
        identity: None,
    },
    Table {
        name: "store_keys",
        columns: &[("name", Text), ("wrapped", Blob), ("created", Int)],
        order_by: "name",
        identity: None,
    },
    Table {
        name: "resources",
        columns: &[
            ("pk", Int),
            ("type", Text),
            ("id", Text),
            ("version", Int),
            ("deleted", Int),
            ("last_updated", Int),
            ("vpk", Int),
        ],
        order_by: "pk",
        identity: Some("pk"),
    },
    Table {
        name: "versions",
        columns: &[
            ("vpk", Int),
            ("res_pk", Int),
            ("type", Text),
            ("id", Text),
            ("version", Int),
            ("last_updated", Int),
            ("method", Text),
            ("key_id", Int),
            ("body", Blob),
        ],
        order_by: "vpk",
        identity: Some("vpk"),
    },
    Table {
        name: "idx_string",
        columns: &[
            ("res_pk", Int),
            ("param", Text),
            ("kind", Int),
            ("hash", Blob),
        ],
        order_by: "res_pk, param, kind, hash",
        identity: None,
    },
    Table {
        name: "idx_token",
        columns: &[
            ("res_pk", Int),
            ("param", Text),
            ("system", Blob),
            ("code", Blob),
        ],
        order_by: "res_pk, param, code",
        identity: None,
    },
    Table {
        name: "idx_date",
        columns: &[
            ("res_pk", Int),
            ("param", Text),
            ("low", Int),
            ("high", Int),
        ],
        order_by: "res_pk, param, low, high",
        identity: None,
    },
    Table {
        name: "idx_number",
        columns: &[
            ("res_pk", Int),
            ("param", Text),
            ("value", Real),
            ("low", Real),
            ("high", Real),
            ("system", Blob),
            ("code", Blob),
            ("unit", Blob),
        ],
        order_by: "res_pk, param, value",
        identity: None,
    },
    Table {
        name: "idx_reference",
        columns: &[
            ("res_pk", Int),
            ("param", Text),
            ("target_type", Text),
            ("target_id", Text),
            ("url", Blob),
        ],
        order_by: "res_pk, param, target_type, target_id",
        identity: None,
    },
    Table {
        name: "idx_uri",
        columns: &[("res_pk", Int), ("param", Text), ("hash", Blob)],
        order_by: "res_pk, param, hash",
        identity: None,
    },
    Table {
        name: "kv",
        columns: &[
            ("ns", Text),
            ("key", Text),
            ("value", Blob),
            ("key_id", Int),
            ("expires", Int),
        ],
        order_by: "ns, key",
        identity: None,
    },
    Table {
        name: "audit_log",
        columns: &[
            ("seq", Int),
            ("recorded", Int),
            ("canonical", Blob),
            ("prev_hash", Blob),
            ("leaf_hash", Blob),
            ("chain_hash", Blob),
        ],
        order_by: "seq",
        identity: None,
    },
    Table {
        name: "audit_patient",
        columns: &[("seq", Int), ("patient", Text)],
        order_by: "seq, patient",
        identity: None,
    },
    Table {
        name: "audit_state",
        columns: &[("id", Int), ("size", Int), ("head", Blob), ("peaks", Blob)],
        order_by: "id",
        identity: None,
    },
];

/// Tables a dump leaves out on purpose: backend bookkeeping and expiring
/// paging state.
const SKIPPED_TABLES: &[&str] = &["search_snapshots", "schema_migrations"];

/// One column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// An integer.
    Int(i64),
    /// A float.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

/// The last audit record of a dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpAuditHead {
    /// The sequence number of the last record.
    pub seq: u64,
    /// Its chain hash, hex.
    pub chain_hash: String,
}

/// The description a dump carries of itself, checked on restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The dump format version.
    pub format_version: u8,
    /// When the dump was taken, RFC 3339.
    pub created_at: String,
    /// The backend it was taken from: `sqlite` or `postgres`.
    pub source_backend: String,
    /// The schema version of the source database.
    pub schema_version: i64,
    /// The number of rows per table.
    pub row_counts: BTreeMap<String, u64>,
    /// The last audit record, if any.
    pub audit_head: Option<DumpAuditHead>,
    /// SHA-256, hex, over every dump byte before the manifest frame.
    pub content_sha256: String,
}

/// Direct table access on one backend, below the [`crate::Store`] trait.
pub(crate) trait Raw {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// The schema version of the open database.
    fn schema_version(&mut self) -> Result<i64>;
    /// Returns the names of every table in the database.
    fn table_names(&mut self) -> Result<Vec<String>>;
    /// Counts the rows in `table`.
    fn count(&mut self, table: &str) -> Result<u64>;
    /// Starts a read-only transaction that sees one consistent snapshot.
    fn begin_snapshot(&mut self) -> Result<()>;
    /// Starts a write transaction that excludes other writers.
    fn begin_write(&mut self) -> Result<()>;
    /// Commits the open transaction.
    fn commit(&mut self) -> Result<()>;
    /// Rolls back the open transaction.
    fn rollback(&mut self) -> Result<()>;
    /// Calls `visit` with every row of `table`, in `table.order_by` order.
    fn scan(&mut self, table: &Table, visit: &mut dyn FnMut(&[Cell]) -> Result<()>) -> Result<()>;
    /// Inserts one row, keeping explicit identity values.
    fn insert(&mut self, table: &Table, row: &[Cell]) -> Result<()>;
    /// Moves identity sequences past the restored rows.
    fn after_restore(&mut self) -> Result<()>;
    /// Deletes every row of `table`.
    fn delete_all(&mut self, table: &Table) -> Result<()>;
    /// Replaces the `wrapped` column of the row whose first column is `key`.
    fn update_wrapped(&mut self, table: &Table, key: &Cell, wrapped: &[u8]) -> Result<()>;
}

fn connect(database: &Database) -> Result<Box<dyn Raw>> {
    Ok(match database {
        Database::Sqlite(path) => Box::new(crate::sqlite::raw::SqliteRaw::open(path)?),
        Database::Postgres(url) => Box::new(crate::postgres::raw::PostgresRaw::open(url)?),
    })
}

fn table(name: &str) -> Option<&'static Table> {
    TABLES.iter().find(|table| table.name == name)
}

/// Fails when the database has a table this dump format does not cover, so
/// a backup is never silently incomplete.
fn check_tables(raw: &mut dyn Raw) -> Result<()> {
    for name in raw.table_names()? {
        if table(&name).is_none() && !SKIPPED_TABLES.contains(&name.as_str()) {
            return Err(StoreError::Database(format!(
                "table {name} is not covered by backup format {DUMP_FORMAT_VERSION}; \
                 this build cannot back it up completely"
            )));
        }
    }
    Ok(())
}

/// Counts the rows of every dumped table.
///
/// # Errors
///
/// Database failures.
pub fn row_counts(database: &Database) -> Result<BTreeMap<String, u64>> {
    let mut raw = connect(database)?;
    let mut counts = BTreeMap::new();
    for table in TABLES {
        counts.insert(table.name.to_owned(), raw.count(table.name)?);
    }
    Ok(counts)
}

/// Writes a dump of one consistent snapshot of `database` to `out` and
/// returns its manifest. Other processes may keep reading and writing
/// meanwhile. Data keys and the index key move from `keys.from`, the
/// store's master keyring, to `keys.to`, the backup's wrapping key.
///
/// # Errors
///
/// Database and write failures, and [`StoreError::Database`] when the
/// database has a table the format does not cover.
pub fn dump(database: &Database, out: &mut dyn Write, keys: &KeyTransfer<'_>) -> Result<Manifest> {
    let mut raw = connect(database)?;
    check_tables(&mut *raw)?;
    let schema_version = raw.schema_version()?;
    raw.begin_snapshot()?;
    let result = dump_tables(&mut *raw, out, keys);
    // The snapshot only read, so ending it by rollback loses nothing.
    let _ = raw.rollback();
    let (hash, row_counts, audit_head) = result?;

    let manifest = Manifest {
        format_version: DUMP_FORMAT_VERSION,
        created_at: now_rfc3339(),
        source_backend: raw.backend().to_owned(),
        schema_version,
        row_counts,
        audit_head,
        content_sha256: hex(&hash),
    };
    let json = serde_json::to_vec(&manifest).map_err(|e| StoreError::Database(e.to_string()))?;
    let len =
        u32::try_from(json.len()).map_err(|_| StoreError::Database("manifest too large".into()))?;
    let mut frame = vec![b'M'];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&json);
    out.write_all(&frame).map_err(write_error)?;
    Ok(manifest)
}

type Dumped = (Vec<u8>, BTreeMap<String, u64>, Option<DumpAuditHead>);

fn dump_tables(raw: &mut dyn Raw, out: &mut dyn Write, keys: &KeyTransfer<'_>) -> Result<Dumped> {
    let mut hashing = HashingWriter {
        out,
        digest: digest::Context::new(&digest::SHA256),
    };
    let mut header = DUMP_MAGIC.to_vec();
    header.push(DUMP_FORMAT_VERSION);
    hashing.write(&header)?;

    let mut counts = BTreeMap::new();
    let mut audit_head = None;
    let mut buffer = Vec::new();
    for table in TABLES {
        buffer.clear();
        encode_table_frame(table, &mut buffer);
        hashing.write(&buffer)?;
        let mut count = 0u64;
        raw.scan(table, &mut |row| {
            buffer.clear();
            buffer.push(b'R');
            if is_key_table(table) {
                let mut moved = row.to_vec();
                transfer_wrapped(table, &mut moved, keys)?;
                moved.iter().for_each(|cell| encode_cell(cell, &mut buffer));
            } else {
                row.iter().for_each(|cell| encode_cell(cell, &mut buffer));
            }
            count += 1;
            if table.name == "audit_log"
                && let (Some(Cell::Int(seq)), Some(Cell::Blob(hash))) = (row.first(), row.get(5))
            {
                audit_head = Some(DumpAuditHead {
                    seq: u64::try_from(*seq).unwrap_or_default(),
                    chain_hash: hex(hash),
                });
            }
            hashing.write(&buffer)
        })?;
        counts.insert(table.name.to_owned(), count);
    }
    Ok((
        hashing.digest.finish().as_ref().to_vec(),
        counts,
        audit_head,
    ))
}

struct HashingWriter<'a> {
    out: &'a mut dyn Write,
    digest: digest::Context,
}

impl HashingWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.digest.update(bytes);
        self.out.write_all(bytes).map_err(write_error)
    }
}

fn write_error(error: std::io::Error) -> StoreError {
    StoreError::Database(format!("writing the backup failed: {error}"))
}

fn encode_table_frame(table: &Table, out: &mut Vec<u8>) {
    out.push(b'T');
    out.extend_from_slice(&(table.name.len() as u16).to_be_bytes());
    out.extend_from_slice(table.name.as_bytes());
    out.extend_from_slice(&(table.columns.len() as u16).to_be_bytes());
}

fn encode_cell(cell: &Cell, out: &mut Vec<u8>) {
    match cell {
        Cell::Null => out.push(0),
        Cell::Int(value) => {
            out.push(1);
            out.extend_from_slice(&value.to_be_bytes());
        }
        Cell::Real(value) => {
            out.push(2);
            out.extend_from_slice(&value.to_bits().to_be_bytes());
        }
        Cell::Text(text) => {
            out.push(3);
            out.extend_from_slice(&(text.len() as u32).to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        Cell::Blob(bytes) => {
            out.push(4);
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(bytes);
        }
    }
}

/// Reads a dump, hashing what it reads.
struct DumpReader<'a> {
    input: &'a mut dyn Read,
    digest: digest::Context,
}

impl DumpReader<'_> {
    fn bytes(&mut self, len: usize, hashed: bool) -> Result<Vec<u8>> {
        let mut buffer = vec![0u8; len];
        self.input.read_exact(&mut buffer).map_err(|error| {
            if error.kind() == std::io::ErrorKind::UnexpectedEof {
                invalid("the dump ends in the middle of a frame")
            } else {
                StoreError::Database(format!("reading the backup failed: {error:#}"))
            }
        })?;
        if hashed {
            self.digest.update(&buffer);
        }
        Ok(buffer)
    }

    fn array<const N: usize>(&mut self, hashed: bool) -> Result<[u8; N]> {
        let bytes = self.bytes(N, hashed)?;
        bytes.try_into().map_err(|_| invalid("short read"))
    }

    fn cell(&mut self) -> Result<Cell> {
        let [tag] = self.array::<1>(true)?;
        Ok(match tag {
            0 => Cell::Null,
            1 => Cell::Int(i64::from_be_bytes(self.array(true)?)),
            2 => Cell::Real(f64::from_bits(u64::from_be_bytes(self.array(true)?))),
            3 | 4 => {
                let len = u32::from_be_bytes(self.array(true)?) as usize;
                if len > MAX_CELL_LEN {
                    return Err(invalid("a cell is larger than 256 MiB"));
                }
                let bytes = self.bytes(len, true)?;
                if tag == 3 {
                    Cell::Text(
                        String::from_utf8(bytes)
                            .map_err(|_| invalid("a text cell is not UTF-8"))?,
                    )
                } else {
                    Cell::Blob(bytes)
                }
            }
            _ => return Err(invalid("unknown cell type")),
        })
    }
}

fn invalid(reason: &str) -> StoreError {
    StoreError::Database(format!("invalid backup content: {reason}"))
}

/// Reads a whole dump, calling `visit` with every row, and checks it
/// against its manifest: the content hash, the row count of every table,
/// and the audit head. Returns the manifest.
///
/// # Errors
///
/// [`StoreError::Database`] naming the first mismatch, and whatever `visit`
/// returns.
pub fn read_dump(
    input: &mut dyn Read,
    visit: &mut dyn FnMut(&'static Table, Vec<Cell>) -> Result<()>,
) -> Result<Manifest> {
    let mut reader = DumpReader {
        input,
        digest: digest::Context::new(&digest::SHA256),
    };
    let magic = reader.bytes(DUMP_MAGIC.len() + 1, true)?;
    if &magic[..8] != DUMP_MAGIC {
        return Err(invalid("missing dump header"));
    }
    if magic[8] != DUMP_FORMAT_VERSION {
        return Err(invalid(&format!(
            "dump format {} is not supported by this build (it reads {DUMP_FORMAT_VERSION})",
            magic[8]
        )));
    }

    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut current: Option<&'static Table> = None;
    let mut audit_head = None;
    loop {
        let [frame] = reader.array::<1>(false)?;
        match frame {
            b'T' => {
                reader.digest.update(&[frame]);
                let name_len = u16::from_be_bytes(reader.array(true)?) as usize;
                let name = String::from_utf8(reader.bytes(name_len, true)?)
                    .map_err(|_| invalid("a table name is not UTF-8"))?;
                let columns = u16::from_be_bytes(reader.array(true)?) as usize;
                let spec = table(&name).ok_or_else(|| invalid(&format!("unknown table {name}")))?;
                if spec.columns.len() != columns {
                    return Err(invalid(&format!(
                        "table {name} has {columns} columns, this build expects {}",
                        spec.columns.len()
                    )));
                }
                if counts.insert(name.clone(), 0).is_some() {
                    return Err(invalid(&format!("table {name} appears twice")));
                }
                current = Some(spec);
            }
            b'R' => {
                reader.digest.update(&[frame]);
                let spec = current.ok_or_else(|| invalid("a row before any table"))?;
                let mut row = Vec::with_capacity(spec.columns.len());
                for _ in spec.columns {
                    row.push(reader.cell()?);
                }
                if spec.name == "audit_log"
                    && let (Some(Cell::Int(seq)), Some(Cell::Blob(hash))) =
                        (row.first(), row.get(5))
                {
                    audit_head = Some(DumpAuditHead {
                        seq: u64::try_from(*seq).unwrap_or_default(),
                        chain_hash: hex(hash),
                    });
                }
                *counts.entry(spec.name.to_owned()).or_default() += 1;
                visit(spec, row)?;
            }
            b'M' => {
                let len = u32::from_be_bytes(reader.array(false)?) as usize;
                if len > 1024 * 1024 {
                    return Err(invalid("the manifest is larger than 1 MiB"));
                }
                let json = reader.bytes(len, false)?;
                let manifest: Manifest = serde_json::from_slice(&json)
                    .map_err(|e| invalid(&format!("unreadable manifest: {e}")))?;
                let hash = hex(reader.digest.clone().finish().as_ref());
                check_manifest(&manifest, &hash, &counts, audit_head.as_ref())?;
                let mut rest = [0u8; 1];
                match reader.input.read(&mut rest) {
                    Ok(0) => return Ok(manifest),
                    _ => return Err(invalid("data follows the manifest")),
                }
            }
            _ => return Err(invalid("unknown frame type")),
        }
    }
}

fn check_manifest(
    manifest: &Manifest,
    hash: &str,
    counts: &BTreeMap<String, u64>,
    audit_head: Option<&DumpAuditHead>,
) -> Result<()> {
    if manifest.format_version != DUMP_FORMAT_VERSION {
        return Err(invalid("the manifest names another format version"));
    }
    if manifest.content_sha256 != hash {
        return Err(invalid(
            "the SHA-256 of the content does not match the manifest",
        ));
    }
    for table in TABLES {
        let found = counts.get(table.name).copied();
        let declared = manifest.row_counts.get(table.name).copied();
        if found.is_none() || found != declared {
            return Err(invalid(&format!(
                "table {} has {} rows, the manifest declares {}",
                table.name,
                found.map_or("no".to_owned(), |n| n.to_string()),
                declared.map_or("none".to_owned(), |n| n.to_string())
            )));
        }
    }
    if manifest.audit_head.as_ref() != audit_head {
        return Err(invalid("the last audit record does not match the manifest"));
    }
    Ok(())
}

/// An open restore: one transaction on an empty store that rows go into.
/// Dropping it without [`Restore::commit`] rolls everything back.
pub struct Restore {
    raw: Box<dyn Raw>,
    open: bool,
}

impl Restore {
    /// Creates the schema when needed and starts the restore transaction.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`] when any table already has rows: a restore
    /// only goes into an empty store.
    pub fn begin(database: &Database) -> Result<Self> {
        let mut raw = connect(database)?;
        raw.begin_write()?;
        let mut restore = Self { raw, open: true };
        for table in TABLES {
            let rows = restore.raw.count(table.name)?;
            if rows > 0 {
                return Err(StoreError::Database(format!(
                    "the target store {} is not empty (table {} has {rows} rows); \
                     restore only into a new data directory or an empty database",
                    database.describe(),
                    table.name
                )));
            }
        }
        Ok(restore)
    }

    /// Inserts one row read by [`read_dump`].
    ///
    /// # Errors
    ///
    /// Database failures, such as a constraint the row violates.
    pub fn insert(&mut self, table: &Table, row: &[Cell]) -> Result<()> {
        self.raw.insert(table, row)
    }

    /// Commits every inserted row at once.
    ///
    /// # Errors
    ///
    /// Database failures, after which nothing is kept.
    pub fn commit(mut self) -> Result<()> {
        self.raw.after_restore()?;
        self.open = false;
        self.raw.commit()
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if self.open {
            let _ = self.raw.rollback();
        }
    }
}

/// Deletes every row of every dumped table in one transaction, returning the
/// store to empty after a restore that failed its checks.
///
/// # Errors
///
/// Database failures.
pub fn clear(database: &Database) -> Result<()> {
    let mut raw = connect(database)?;
    raw.begin_write()?;
    for table in TABLES.iter().rev() {
        if let Err(error) = raw.delete_all(table) {
            let _ = raw.rollback();
            return Err(error);
        }
    }
    raw.commit()
}

/// Counts the keys the database stores wrapped under each master key.
///
/// # Errors
///
/// Database failures, and [`StoreError::Key`] for a malformed wrapped key.
pub fn wrapped_key_counts(database: &Database) -> Result<BTreeMap<KeyId, u64>> {
    let mut raw = connect(database)?;
    let mut counts = BTreeMap::new();
    for table in key_tables() {
        let mut error = None;
        raw.scan(table, &mut |row| {
            match row.get(1) {
                Some(Cell::Blob(bytes)) => match WrappedKey::from_bytes(bytes) {
                    Ok(wrapped) => *counts.entry(wrapped.master_key_id()).or_insert(0) += 1,
                    Err(e) => error = Some(e),
                },
                _ => return Err(invalid("a wrapped key is not bytes")),
            }
            Ok(())
        })?;
        if let Some(error) = error {
            return Err(error.into());
        }
    }
    Ok(counts)
}

/// The result of [`rewrap_keys`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RewrapReport {
    /// Keys rewrapped under the active master key.
    pub rewrapped: u64,
    /// Keys that were already under it.
    pub unchanged: u64,
}

/// Rewraps every data key and the index key under `master`'s active key, in
/// one transaction. Keys wrapped under a retired key of the keyring are
/// unwrapped with it. The key values stay the same, so no ciphertext or
/// index row changes.
///
/// # Errors
///
/// [`StoreError::Key`] when a key is wrapped under a master key the keyring
/// does not hold, database failures otherwise. Nothing changes on error.
pub fn rewrap_keys(database: &Database, master: &MasterKey) -> Result<RewrapReport> {
    let mut raw = connect(database)?;
    raw.begin_write()?;
    let result = rewrap_in(&mut *raw, master);
    match result {
        Ok(report) => {
            raw.commit()?;
            Ok(report)
        }
        Err(error) => {
            let _ = raw.rollback();
            Err(error)
        }
    }
}

fn rewrap_in(raw: &mut dyn Raw, master: &MasterKey) -> Result<RewrapReport> {
    let mut report = RewrapReport::default();
    for table in key_tables() {
        let mut rows = Vec::new();
        raw.scan(table, &mut |row| {
            rows.push(row.to_vec());
            Ok(())
        })?;
        for row in rows {
            let (Some(key), Some(Cell::Blob(bytes))) = (row.first(), row.get(1)) else {
                return Err(invalid("a wrapped key row is malformed"));
            };
            let wrapped = WrappedKey::from_bytes(bytes)?;
            if wrapped.master_key_id() == master.id() {
                report.unchanged += 1;
                continue;
            }
            let fresh = if table.name == "store_keys" {
                master.rewrap_index_key(&wrapped)?
            } else {
                master.rewrap_data_key(&wrapped)?
            };
            raw.update_wrapped(table, key, fresh.as_bytes())?;
            report.rewrapped += 1;
        }
    }
    Ok(report)
}

fn key_tables() -> impl Iterator<Item = &'static Table> {
    TABLES.iter().filter(|table| is_key_table(table))
}

/// The two keyrings a data key or the index key moves between: the
/// backup's wrapping key and a store's master keyring.
pub struct KeyTransfer<'a> {
    /// The keyring that unwraps the stored value.
    pub from: &'a MasterKey,
    /// The key that wraps it again.
    pub to: &'a MasterKey,
}

fn is_key_table(table: &Table) -> bool {
    table.name == "data_keys" || table.name == "store_keys"
}

/// Rewraps the wrapped key in a `data_keys` or `store_keys` row from
/// `keys.from` to `keys.to`, leaving rows of other tables alone. A restore
/// calls it on every row before writing anything, so a key that does not
/// open fails the restore early.
///
/// # Errors
///
/// [`StoreError::Key`] naming the key a wrapped key needs.
pub fn transfer_wrapped(table: &Table, row: &mut [Cell], keys: &KeyTransfer<'_>) -> Result<()> {
    if !is_key_table(table) {
        return Ok(());
    }
    let Some(Cell::Blob(bytes)) = row.get_mut(1) else {
        return Err(invalid("a wrapped key is not bytes"));
    };
    let wrapped = WrappedKey::from_bytes(bytes)?;
    let moved = if table.name == "store_keys" {
        keys.to
            .wrap_index_key(&keys.from.unwrap_index_key(&wrapped)?)?
    } else {
        keys.to
            .wrap_data_key(&keys.from.unwrap_data_key(&wrapped)?)?
    };
    *bytes = moved.as_bytes().to_vec();
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
