//! The PostgreSQL schema and its migrations, tracked in the
//! `schema_migrations` table.
//!
//! Text columns that the search planner compares or sorts use the `C`
//! collation, so ordering is by bytes as on SQLite and does not depend on the
//! server's locale.

use crate::postgres::conn::Conn;
use crate::{Result, StoreError};

/// Each migration, in order; migration `n` moves the schema to version `n + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE data_keys (
    id BIGINT PRIMARY KEY,
    wrapped BYTEA NOT NULL,
    created BIGINT NOT NULL
);

CREATE TABLE resources (
    pk BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    version BIGINT NOT NULL,
    deleted BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    vpk BIGINT NOT NULL,
    UNIQUE (type, id)
);

CREATE TABLE versions (
    vpk BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    res_pk BIGINT NOT NULL,
    type TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    version BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    method TEXT NOT NULL,
    key_id BIGINT,
    body BYTEA,
    UNIQUE (res_pk, version)
);
CREATE INDEX versions_type ON versions (type, vpk);
CREATE INDEX versions_time ON versions (last_updated);

CREATE TABLE idx_string (
    res_pk BIGINT NOT NULL,
    param TEXT COLLATE "C" NOT NULL,
    kind BIGINT NOT NULL,
    hash BYTEA NOT NULL
);
CREATE INDEX idx_string_lookup ON idx_string (param, kind, hash);
CREATE INDEX idx_string_res ON idx_string (res_pk);

CREATE TABLE idx_token (
    res_pk BIGINT NOT NULL,
    param TEXT COLLATE "C" NOT NULL,
    system BYTEA,
    code BYTEA NOT NULL
);
CREATE INDEX idx_token_lookup ON idx_token (param, code);
CREATE INDEX idx_token_system ON idx_token (param, system);
CREATE INDEX idx_token_res ON idx_token (res_pk);

CREATE TABLE idx_date (
    res_pk BIGINT NOT NULL,
    param TEXT COLLATE "C" NOT NULL,
    low BIGINT NOT NULL,
    high BIGINT NOT NULL
);
CREATE INDEX idx_date_low ON idx_date (param, low);
CREATE INDEX idx_date_res ON idx_date (res_pk, param);

CREATE TABLE idx_number (
    res_pk BIGINT NOT NULL,
    param TEXT COLLATE "C" NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    low DOUBLE PRECISION NOT NULL,
    high DOUBLE PRECISION NOT NULL,
    system BYTEA,
    code BYTEA,
    unit BYTEA
);
CREATE INDEX idx_number_lookup ON idx_number (param, value);
CREATE INDEX idx_number_res ON idx_number (res_pk, param);

CREATE TABLE idx_reference (
    res_pk BIGINT NOT NULL,
    param TEXT COLLATE "C" NOT NULL,
    target_type TEXT COLLATE "C",
    target_id TEXT COLLATE "C",
    url BYTEA
);
CREATE INDEX idx_reference_lookup ON idx_reference (param, target_id);
CREATE INDEX idx_reference_target ON idx_reference (target_type, target_id);
CREATE INDEX idx_reference_res ON idx_reference (res_pk, param);

CREATE TABLE idx_uri (
    res_pk BIGINT NOT NULL,
    param TEXT COLLATE "C" NOT NULL,
    hash BYTEA NOT NULL
);
CREATE INDEX idx_uri_lookup ON idx_uri (param, hash);
CREATE INDEX idx_uri_res ON idx_uri (res_pk);

CREATE TABLE kv (
    ns TEXT COLLATE "C" NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    value BYTEA NOT NULL,
    key_id BIGINT NOT NULL,
    expires BIGINT,
    PRIMARY KEY (ns, key)
);
CREATE INDEX kv_expires ON kv (expires);

CREATE TABLE search_snapshots (
    id TEXT COLLATE "C" PRIMARY KEY,
    key_id BIGINT NOT NULL,
    settings BYTEA NOT NULL,
    pks BIGINT[] NOT NULL,
    expires BIGINT NOT NULL
);
CREATE INDEX search_snapshots_expires ON search_snapshots (expires);
"#,
    r#"
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    recorded BIGINT NOT NULL,
    canonical BYTEA NOT NULL,
    prev_hash BYTEA NOT NULL,
    leaf_hash BYTEA NOT NULL,
    chain_hash BYTEA NOT NULL
);
CREATE INDEX audit_log_recorded ON audit_log (recorded);

CREATE TABLE audit_patient (
    seq BIGINT NOT NULL,
    patient TEXT COLLATE "C" NOT NULL
);
CREATE INDEX audit_patient_lookup ON audit_patient (patient, seq);

CREATE TABLE audit_state (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    size BIGINT NOT NULL,
    head BYTEA NOT NULL,
    peaks BYTEA NOT NULL
);
"#,
    r#"
CREATE TABLE store_keys (
    name TEXT COLLATE "C" PRIMARY KEY,
    wrapped BYTEA NOT NULL,
    created BIGINT NOT NULL
);
"#,
];

/// The schema version this build expects.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A fixed key for the advisory lock that serializes migrations when several
/// replicas start at once.
const MIGRATION_LOCK: i64 = 0x5741_5244_0000_0001;

/// Creates the `schema_migrations` table when it is missing.
fn ensure_table(conn: &Conn<'_>) -> Result<()> {
    conn.batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY,
            applied BIGINT NOT NULL
        )",
    )
}

/// Reads the schema version: 0 for an empty database.
pub(crate) fn version(conn: &Conn<'_>) -> Result<i64> {
    let exists = conn
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])?
        .try_get::<_, bool>(0)
        .map_err(crate::postgres::conn::db_error)?;
    if !exists {
        return Ok(0);
    }
    let row = conn.query_one(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        &[],
    )?;
    row.try_get::<_, i64>(0)
        .map_err(crate::postgres::conn::db_error)
}

/// Applies every migration the database lacks, each in its own transaction,
/// so a failing migration leaves the schema as it was. Returns the number
/// applied.
pub(crate) fn migrate(conn: &Conn<'_>) -> Result<usize> {
    ensure_table(conn)?;
    let mut applied = 0;
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let target = i64::try_from(index).unwrap_or(i64::MAX) + 1;
        conn.batch("BEGIN")?;
        let step = (|| {
            // Two replicas migrating at once take turns; the second sees the
            // version the first recorded and skips it.
            conn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            let current = version(conn)?;
            if current > SCHEMA_VERSION {
                return Err(newer_schema(current));
            }
            if current >= target {
                return Ok(false);
            }
            conn.batch(sql)?;
            conn.execute(
                "INSERT INTO schema_migrations (version, applied) VALUES ($1, $2)",
                &[&target, &crate::sqlite::now_micros()],
            )?;
            Ok(true)
        })();
        match step {
            Ok(done) => {
                conn.batch("COMMIT")?;
                applied += usize::from(done);
            }
            Err(err) => {
                if let Err(rollback) = conn.batch("ROLLBACK") {
                    tracing::error!(error = %rollback, "rolling back a failed migration failed");
                }
                return Err(err);
            }
        }
    }
    Ok(applied)
}

/// Checks that an existing database has exactly the schema this build
/// expects.
pub(crate) fn check(current: i64) -> Result<()> {
    if current > SCHEMA_VERSION {
        return Err(newer_schema(current));
    }
    if current < SCHEMA_VERSION {
        return Err(StoreError::Database(format!(
            "the database has schema version {current}, older than the {SCHEMA_VERSION} this build needs; run 'ward migrate' first"
        )));
    }
    Ok(())
}

fn newer_schema(current: i64) -> StoreError {
    StoreError::Database(format!(
        "the database has schema version {current}, newer than the {SCHEMA_VERSION} this build supports; run a newer ward"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_schema_names_ward_migrate() {
        let Err(StoreError::Database(message)) = check(SCHEMA_VERSION - 1) else {
            panic!("an older schema passed the check");
        };
        assert!(message.contains("ward migrate"), "{message}");
        assert!(check(SCHEMA_VERSION).is_ok());
        assert!(check(SCHEMA_VERSION + 1).is_err());
    }
}
