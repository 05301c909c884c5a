//! Sealed key-value records on PostgreSQL. Each call is one statement, so
//! `kv_insert_new` and `kv_take` stay atomic when several replicas share the
//! database.

use crate::Result;
use crate::codec::ResourceCodec;
use crate::postgres::conn::{Conn, db_error};
use crate::sqlite::now_micros;

/// Reads a live record.
pub(crate) fn get(
    conn: &Conn<'_>,
    codec: &ResourceCodec,
    ns: &str,
    key: &str,
) -> Result<Option<Vec<u8>>> {
    let row = conn.query_opt(
        "SELECT value, key_id FROM kv WHERE ns = $1 AND key = $2 \
         AND (expires IS NULL OR expires > $3)",
        &[&ns, &key, &now_micros()],
    )?;
    let Some(row) = row else {
        return Ok(None);
    };
    let sealed: Vec<u8> = row.try_get(0).map_err(db_error)?;
    let key_id: i64 = row.try_get(1).map_err(db_error)?;
    Ok(Some(codec.open_record(key_id, ns, key, &sealed)?))
}

/// Reads a live record and locks its row until the transaction on `conn`
/// ends (`SELECT ... FOR UPDATE`).
pub(crate) fn get_for_update(
    conn: &Conn<'_>,
    codec: &ResourceCodec,
    ns: &str,
    key: &str,
) -> Result<Option<Vec<u8>>> {
    let row = conn.query_opt(
        "SELECT value, key_id FROM kv WHERE ns = $1 AND key = $2 \
         AND (expires IS NULL OR expires > $3) FOR UPDATE",
        &[&ns, &key, &now_micros()],
    )?;
    let Some(row) = row else {
        return Ok(None);
    };
    let sealed: Vec<u8> = row.try_get(0).map_err(db_error)?;
    let key_id: i64 = row.try_get(1).map_err(db_error)?;
    Ok(Some(codec.open_record(key_id, ns, key, &sealed)?))
}

/// Stores or replaces a record.
pub(crate) fn put(
    conn: &Conn<'_>,
    codec: &ResourceCodec,
    ns: &str,
    key: &str,
    value: &[u8],
    expires: Option<i64>,
) -> Result<()> {
    let (key_id, sealed) = codec.seal_record(ns, key, value)?;
    conn.execute(
        "INSERT INTO kv (ns, key, value, key_id, expires) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, \
         key_id = excluded.key_id, expires = excluded.expires",
        &[&ns, &key, &sealed, &key_id, &expires],
    )?;
    Ok(())
}

/// Stores a record unless a live one has the key. An expired record with
/// the key is replaced in the same statement.
pub(crate) fn insert_new(
    conn: &Conn<'_>,
    codec: &ResourceCodec,
    ns: &str,
    key: &str,
    value: &[u8],
    expires: Option<i64>,
) -> Result<bool> {
    let (key_id, sealed) = codec.seal_record(ns, key, value)?;
    let changed = conn.execute(
        "INSERT INTO kv (ns, key, value, key_id, expires) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, \
         key_id = excluded.key_id, expires = excluded.expires \
         WHERE kv.expires IS NOT NULL AND kv.expires <= $6",
        &[&ns, &key, &sealed, &key_id, &expires, &now_micros()],
    )?;
    Ok(changed == 1)
}

/// Removes and returns a live record. `DELETE ... RETURNING` hands the row
/// to exactly one caller.
pub(crate) fn take(
    conn: &Conn<'_>,
    codec: &ResourceCodec,
    ns: &str,
    key: &str,
) -> Result<Option<Vec<u8>>> {
    let row = conn.query_opt(
        "DELETE FROM kv WHERE ns = $1 AND key = $2 RETURNING value, key_id, expires",
        &[&ns, &key],
    )?;
    let Some(row) = row else {
        return Ok(None);
    };
    let expires: Option<i64> = row.try_get(2).map_err(db_error)?;
    if expires.is_some_and(|at| at <= now_micros()) {
        return Ok(None);
    }
    let sealed: Vec<u8> = row.try_get(0).map_err(db_error)?;
    let key_id: i64 = row.try_get(1).map_err(db_error)?;
    Ok(Some(codec.open_record(key_id, ns, key, &sealed)?))
}

/// Removes a record.
pub(crate) fn delete(conn: &Conn<'_>, ns: &str, key: &str) -> Result<bool> {
    let removed = conn.execute("DELETE FROM kv WHERE ns = $1 AND key = $2", &[&ns, &key])?;
    Ok(removed > 0)
}

/// Lists live records of a namespace by key prefix, ordered by key.
pub(crate) fn list(
    conn: &Conn<'_>,
    codec: &ResourceCodec,
    ns: &str,
    prefix: &str,
) -> Result<Vec<(String, Vec<u8>)>> {
    let rows = conn.query(
        "SELECT key, value, key_id FROM kv WHERE ns = $1 \
         AND left(key, length($2::TEXT)) = $2::TEXT \
         AND (expires IS NULL OR expires > $3) ORDER BY key",
        &[&ns, &prefix, &now_micros()],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let key: String = row.try_get(0).map_err(db_error)?;
        let sealed: Vec<u8> = row.try_get(1).map_err(db_error)?;
        let key_id: i64 = row.try_get(2).map_err(db_error)?;
        let value = codec.open_record(key_id, ns, &key, &sealed)?;
        out.push((key, value));
    }
    Ok(out)
}
