//! The SQLite schema and its migrations, tracked in `PRAGMA user_version`.

use rusqlite::Connection;

use crate::Result;

/// Each migration, in order; migration `n` moves the schema to version `n + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE data_keys (
    id INTEGER PRIMARY KEY,
    wrapped BLOB NOT NULL,
    created INTEGER NOT NULL
);

CREATE TABLE resources (
    pk INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    vpk INTEGER NOT NULL,
    UNIQUE (type, id)
);

CREATE TABLE versions (
    vpk INTEGER PRIMARY KEY,
    res_pk INTEGER NOT NULL,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    method TEXT NOT NULL,
    key_id INTEGER,
    body BLOB,
    UNIQUE (res_pk, version)
);
CREATE INDEX versions_type ON versions (type, vpk);
CREATE INDEX versions_time ON versions (last_updated);

CREATE TABLE idx_string (
    res_pk INTEGER NOT NULL,
    param TEXT NOT NULL,
    kind INTEGER NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX idx_string_lookup ON idx_string (param, kind, hash);
CREATE INDEX idx_string_res ON idx_string (res_pk);

CREATE TABLE idx_token (
    res_pk INTEGER NOT NULL,
    param TEXT NOT NULL,
    system BLOB,
    code BLOB NOT NULL
);
CREATE INDEX idx_token_lookup ON idx_token (param, code);
CREATE INDEX idx_token_system ON idx_token (param, system);
CREATE INDEX idx_token_res ON idx_token (res_pk);

CREATE TABLE idx_date (
    res_pk INTEGER NOT NULL,
    param TEXT NOT NULL,
    low INTEGER NOT NULL,
    high INTEGER NOT NULL
);
CREATE INDEX idx_date_low ON idx_date (param, low);
CREATE INDEX idx_date_res ON idx_date (res_pk, param);

CREATE TABLE idx_number (
    res_pk INTEGER NOT NULL,
    param TEXT NOT NULL,
    value REAL NOT NULL,
    low REAL NOT NULL,
    high REAL NOT NULL,
    system BLOB,
    code BLOB,
    unit BLOB
);
CREATE INDEX idx_number_lookup ON idx_number (param, value);
CREATE INDEX idx_number_res ON idx_number (res_pk, param);

CREATE TABLE idx_reference (
    res_pk INTEGER NOT NULL,
    param TEXT NOT NULL,
    target_type TEXT,
    target_id TEXT,
    url BLOB
);
CREATE INDEX idx_reference_lookup ON idx_reference (param, target_id);
CREATE INDEX idx_reference_target ON idx_reference (target_type, target_id);
CREATE INDEX idx_reference_res ON idx_reference (res_pk, param);

CREATE TABLE idx_uri (
    res_pk INTEGER NOT NULL,
    param TEXT NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX idx_uri_lookup ON idx_uri (param, hash);
CREATE INDEX idx_uri_res ON idx_uri (res_pk);
"#,
    r#"
CREATE TABLE kv (
    ns TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    key_id INTEGER NOT NULL,
    expires INTEGER,
    PRIMARY KEY (ns, key)
);
CREATE INDEX kv_expires ON kv (expires);
"#,
    r#"
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY,
    recorded INTEGER NOT NULL,
    canonical BLOB NOT NULL,
    prev_hash BLOB NOT NULL,
    leaf_hash BLOB NOT NULL,
    chain_hash BLOB NOT NULL
);
CREATE INDEX audit_log_recorded ON audit_log (recorded);

CREATE TABLE audit_patient (
    seq INTEGER NOT NULL,
    patient TEXT NOT NULL
);
CREATE INDEX audit_patient_lookup ON audit_patient (patient, seq);

CREATE TABLE audit_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    size INTEGER NOT NULL,
    head BLOB NOT NULL,
    peaks BLOB NOT NULL
);
"#,
    r#"
CREATE TABLE store_keys (
    name TEXT PRIMARY KEY,
    wrapped BLOB NOT NULL,
    created INTEGER NOT NULL
);
"#,
];

/// The schema version this build expects.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Applies every migration the database lacks, each in its own transaction,
/// so a failing migration leaves the schema as it was.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(crate::StoreError::Database(format!(
            "the database has schema version {current}, newer than the {SCHEMA_VERSION} this build supports; run a newer ward"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// Reads the schema version of an open database.
pub(crate) fn version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA user_version", [], |row| row.get(0))?)
}
