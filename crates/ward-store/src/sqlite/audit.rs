//! The audit log on SQLite: rows appended inside the write transaction of
//! the change they describe, and the chain and Merkle state saved with them
//! so the next process resumes without rereading the log.

use rusqlite::{Connection, OptionalExtension, params};
use ward_audit::record::Entity;
use ward_audit::{Appender, AuditRecord, MerkleAccumulator, StoredAudit};

use crate::types::AuditHead;
use crate::{Result, StoreError};

/// Loads the appender state saved by the last committed append.
pub(crate) fn load(conn: &Connection) -> Result<Appender> {
    let state: Option<(i64, Vec<u8>, Vec<u8>)> = conn
        .query_row(
            "SELECT size, head, peaks FROM audit_state WHERE id = 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    let Some((size, head, peaks)) = state else {
        return Ok(Appender::new());
    };
    let corrupt = || StoreError::Integrity("audit log state".into());
    let head: [u8; 32] = head.try_into().map_err(|_| corrupt())?;
    if peaks.len() % 32 != 0 {
        return Err(corrupt());
    }
    let peaks = peaks
        .chunks_exact(32)
        .map(|c| <[u8; 32]>::try_from(c).map_err(|_| corrupt()))
        .collect::<Result<Vec<_>>>()?;
    let size = u64::try_from(size).map_err(|_| corrupt())?;
    let tree = MerkleAccumulator::from_parts(size, peaks).ok_or_else(corrupt)?;
    Ok(Appender::resume(head, tree))
}

/// Appends one record with `appender` (a working copy the caller keeps only
/// if the transaction commits) and returns its sequence number.
pub(crate) fn append(
    conn: &Connection,
    appender: &mut Appender,
    record: &AuditRecord,
) -> Result<u64> {
    let stored = appender.append(record)?;
    let seq =
        i64::try_from(stored.seq).map_err(|_| StoreError::Database("audit log full".into()))?;
    let recorded = i64::try_from(record.recorded.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "INSERT INTO audit_log (seq, recorded, canonical, prev_hash, leaf_hash, chain_hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        seq,
        recorded,
        stored.canonical,
        stored.prev_hash.as_slice(),
        stored.leaf_hash.as_slice(),
        stored.chain_hash.as_slice()
    ])?;
    let mut insert =
        conn.prepare_cached("INSERT INTO audit_patient (seq, patient) VALUES (?1, ?2)")?;
    for entity in &record.entities {
        if let Entity::Patient { reference } = entity
            && let Some(id) = reference.strip_prefix("Patient/")
        {
            insert.execute(params![seq, id])?;
        }
    }
    Ok(stored.seq)
}

/// Saves the appender state; called once per transaction before commit.
pub(crate) fn save(conn: &Connection, appender: &Appender) -> Result<()> {
    let tree = appender.tree();
    let peaks: Vec<u8> = tree.peaks().iter().flatten().copied().collect();
    conn.prepare_cached(
        "INSERT INTO audit_state (id, size, head, peaks) VALUES (1, ?1, ?2, ?3) \
         ON CONFLICT (id) DO UPDATE SET size = excluded.size, head = excluded.head, peaks = excluded.peaks",
    )?
    .execute(params![
        i64::try_from(tree.size()).unwrap_or(i64::MAX),
        appender.head().as_slice(),
        peaks
    ])?;
    Ok(())
}

/// Reads rows in sequence order.
pub(crate) fn rows(conn: &Connection, from: u64, limit: usize) -> Result<Vec<StoredAudit>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, canonical, prev_hash, leaf_hash, chain_hash FROM audit_log \
         WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
    )?;
    let from = i64::try_from(from).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![from, limit], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, Vec<u8>>(1)?,
            row.get::<_, Vec<u8>>(2)?,
            row.get::<_, Vec<u8>>(3)?,
            row.get::<_, Vec<u8>>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, canonical, prev, leaf, chain) = row?;
        // A malformed hash column is returned as zeros so verification
        // names the row instead of the read failing.
        let hash = |bytes: Vec<u8>| <[u8; 32]>::try_from(bytes).unwrap_or([0; 32]);
        out.push(StoredAudit {
            seq: u64::try_from(seq).unwrap_or(u64::MAX),
            canonical,
            prev_hash: hash(prev),
            leaf_hash: hash(leaf),
            chain_hash: hash(chain),
        });
    }
    Ok(out)
}

/// Sequence numbers of the records naming a patient within a time range.
pub(crate) fn seqs_for_patient(
    conn: &Connection,
    patient: &str,
    since: i64,
    until: i64,
) -> Result<Vec<u64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT p.seq FROM audit_patient p JOIN audit_log l ON l.seq = p.seq \
         WHERE p.patient = ?1 AND l.recorded >= ?2 AND l.recorded <= ?3 ORDER BY p.seq",
    )?;
    let seqs = stmt
        .query_map(params![patient, since, until], |row| row.get::<_, i64>(0))?
        .map(|r| r.map(|s| u64::try_from(s).unwrap_or(0)))
        .collect::<rusqlite::Result<Vec<u64>>>()?;
    Ok(seqs)
}

/// The head of an appender.
pub(crate) fn head(appender: &Appender) -> AuditHead {
    AuditHead {
        size: appender.tree().size(),
        root: appender.tree().root(),
        chain_head: appender.head(),
    }
}
