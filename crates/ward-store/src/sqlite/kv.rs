//! Sealed key-value records on SQLite. Writes go through the writer
//! connection, so `kv_insert_new` and `kv_take` are atomic.

use rusqlite::{Connection, OptionalExtension, params};

use crate::Result;
use crate::codec::ResourceCodec;
use crate::sqlite::now_micros;

/// Reads a live record.
pub(crate) fn get(
    conn: &Connection,
    codec: &ResourceCodec,
    ns: &str,
    key: &str,
) -> Result<Option<Vec<u8>>> {
    let row: Option<(Vec<u8>, i64)> = conn
        .prepare_cached(
            "SELECT value, key_id FROM kv WHERE ns = ?1 AND key = ?2 \
             AND (expires IS NULL OR expires > ?3)",
        )?
        .query_row(params![ns, key, now_micros()], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    match row {
        Some((sealed, key_id)) => Ok(Some(codec.open_record(key_id, ns, key, &sealed)?)),
        None => Ok(None),
    }
}

/// Stores or replaces a record.
pub(crate) fn put(
    conn: &Connection,
    codec: &ResourceCodec,
    ns: &str,
    key: &str,
    value: &[u8],
    expires: Option<i64>,
) -> Result<()> {
    let (key_id, sealed) = codec.seal_record(ns, key, value)?;
    conn.prepare_cached(
        "INSERT INTO kv (ns, key, value, key_id, expires) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, \
         key_id = excluded.key_id, expires = excluded.expires",
    )?
    .execute(params![ns, key, sealed, key_id, expires])?;
    Ok(())
}

/// Stores a record unless a live one has the key.
pub(crate) fn insert_new(
    conn: &Connection,
    codec: &ResourceCodec,
    ns: &str,
    key: &str,
    value: &[u8],
    expires: Option<i64>,
) -> Result<bool> {
    conn.prepare_cached("DELETE FROM kv WHERE ns = ?1 AND key = ?2 AND expires <= ?3")?
        .execute(params![ns, key, now_micros()])?;
    let (key_id, sealed) = codec.seal_record(ns, key, value)?;
    let inserted = conn
        .prepare_cached(
            "INSERT INTO kv (ns, key, value, key_id, expires) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (ns, key) DO NOTHING",
        )?
        .execute(params![ns, key, sealed, key_id, expires])?;
    Ok(inserted == 1)
}

/// Removes and returns a live record.
pub(crate) fn take(
    conn: &Connection,
    codec: &ResourceCodec,
    ns: &str,
    key: &str,
) -> Result<Option<Vec<u8>>> {
    let value = get(conn, codec, ns, key)?;
    conn.prepare_cached("DELETE FROM kv WHERE ns = ?1 AND key = ?2")?
        .execute(params![ns, key])?;
    Ok(value)
}

/// Removes a record.
pub(crate) fn delete(conn: &Connection, ns: &str, key: &str) -> Result<bool> {
    let removed = conn
        .prepare_cached("DELETE FROM kv WHERE ns = ?1 AND key = ?2")?
        .execute(params![ns, key])?;
    Ok(removed > 0)
}

/// Lists live records of a namespace by key prefix.
pub(crate) fn list(
    conn: &Connection,
    codec: &ResourceCodec,
    ns: &str,
    prefix: &str,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT key, value, key_id FROM kv WHERE ns = ?1 AND substr(key, 1, length(?2)) = ?2 \
         AND (expires IS NULL OR expires > ?3) ORDER BY key",
    )?;
    let rows = stmt.query_map(params![ns, prefix, now_micros()], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, Vec<u8>>(1)?,
            row.get::<_, i64>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (key, sealed, key_id) = row?;
        let value = codec.open_record(key_id, ns, &key, &sealed)?;
        out.push((key, value));
    }
    Ok(out)
}
