//! The audit log on PostgreSQL. Records are appended inside the write
//! transaction of the change they describe. Replicas share one hash chain,
//! so an appending transaction first takes a transaction-level advisory lock
//! and then reads the chain state that the last committed append saved.
//! Audited writes therefore commit one at a time across all replicas.

use ward_audit::record::Entity;
use ward_audit::{Appender, AuditRecord, MerkleAccumulator, StoredAudit};

use crate::postgres::conn::Conn;
use crate::postgres::read::column;
use crate::types::AuditHead;
use crate::{Result, StoreError};

/// The first key of the advisory lock that serializes audit appends.
const AUDIT_LOCK_CLASS: i32 = 0x5741_5203;

/// Takes the audit lock for the rest of the transaction and loads the
/// committed chain state.
pub(crate) fn lock_and_load(conn: &Conn<'_>) -> Result<Appender> {
    conn.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&AUDIT_LOCK_CLASS])?;
    load(conn)
}

/// Loads the chain state saved by the last committed append.
pub(crate) fn load(conn: &Conn<'_>) -> Result<Appender> {
    let row = conn.query_opt(
        "SELECT size, head, peaks FROM audit_state WHERE id = 1",
        &[],
    )?;
    let Some(row) = row else {
        return Ok(Appender::new());
    };
    let size: i64 = column(&row, 0)?;
    let head: Vec<u8> = column(&row, 1)?;
    let peaks: Vec<u8> = column(&row, 2)?;
    let corrupt = || StoreError::Integrity("audit log state".into());
    let head: [u8; 32] = head.try_into().map_err(|_| corrupt())?;
    if !peaks.len().is_multiple_of(32) {
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

/// Appends one record with `appender` and returns its sequence number.
pub(crate) fn append(
    conn: &Conn<'_>,
    appender: &mut Appender,
    record: &AuditRecord,
) -> Result<u64> {
    let stored = appender.append(record)?;
    let seq =
        i64::try_from(stored.seq).map_err(|_| StoreError::Database("audit log full".into()))?;
    let recorded = i64::try_from(record.recorded.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX);
    conn.execute(
        "INSERT INTO audit_log (seq, recorded, canonical, prev_hash, leaf_hash, chain_hash) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &seq,
            &recorded,
            &stored.canonical,
            &stored.prev_hash.as_slice(),
            &stored.leaf_hash.as_slice(),
            &stored.chain_hash.as_slice(),
        ],
    )?;
    for entity in &record.entities {
        if let Entity::Patient { reference } = entity
            && let Some(id) = reference.strip_prefix("Patient/")
        {
            conn.execute(
                "INSERT INTO audit_patient (seq, patient) VALUES ($1, $2)",
                &[&seq, &id],
            )?;
        }
    }
    Ok(stored.seq)
}

/// Saves the chain state; called once per transaction before commit.
pub(crate) fn save(conn: &Conn<'_>, appender: &Appender) -> Result<()> {
    let tree = appender.tree();
    let peaks: Vec<u8> = tree.peaks().iter().flatten().copied().collect();
    conn.execute(
        "INSERT INTO audit_state (id, size, head, peaks) VALUES (1, $1, $2, $3) \
         ON CONFLICT (id) DO UPDATE SET size = excluded.size, head = excluded.head, \
         peaks = excluded.peaks",
        &[
            &i64::try_from(tree.size()).unwrap_or(i64::MAX),
            &appender.head().as_slice(),
            &peaks,
        ],
    )?;
    Ok(())
}

/// Reads rows in sequence order.
pub(crate) fn rows(conn: &Conn<'_>, from: u64, limit: usize) -> Result<Vec<StoredAudit>> {
    let from = i64::try_from(from).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = conn.query(
        "SELECT seq, canonical, prev_hash, leaf_hash, chain_hash FROM audit_log \
         WHERE seq >= $1 ORDER BY seq LIMIT $2",
        &[&from, &limit],
    )?;
    // A malformed hash column is returned as zeros so verification names
    // the row instead of the read failing.
    let hash = |bytes: Vec<u8>| <[u8; 32]>::try_from(bytes).unwrap_or([0; 32]);
    rows.iter()
        .map(|row| {
            Ok(StoredAudit {
                seq: u64::try_from(column::<i64>(row, 0)?).unwrap_or(u64::MAX),
                canonical: column(row, 1)?,
                prev_hash: hash(column(row, 2)?),
                leaf_hash: hash(column(row, 3)?),
                chain_hash: hash(column(row, 4)?),
            })
        })
        .collect()
}

/// Sequence numbers of the records naming a patient within a time range.
pub(crate) fn seqs_for_patient(
    conn: &Conn<'_>,
    patient: &str,
    since: i64,
    until: i64,
) -> Result<Vec<u64>> {
    conn.query(
        "SELECT p.seq FROM audit_patient p JOIN audit_log l ON l.seq = p.seq \
         WHERE p.patient = $1 AND l.recorded >= $2 AND l.recorded <= $3 ORDER BY p.seq",
        &[&patient, &since, &until],
    )?
    .iter()
    .map(|row| Ok(u64::try_from(column::<i64>(row, 0)?).unwrap_or(0)))
    .collect()
}

/// The head of the committed chain.
pub(crate) fn head(conn: &Conn<'_>) -> Result<AuditHead> {
    let appender = load(conn)?;
    Ok(AuditHead {
        size: appender.tree().size(),
        root: appender.tree().root(),
        chain_head: appender.head(),
    })
}
