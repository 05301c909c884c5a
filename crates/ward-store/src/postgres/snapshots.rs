//! Result sets kept for paging in the `search_snapshots` table, so a page
//! requested from any replica continues a search that another replica ran.
//! The settings (includes and the server's page context) are sealed like
//! key-value records. The keys of the matches are stored in clear, as in the
//! index tables.

use serde_json::{Value, json};
use ward_fhir::search::Include;

use crate::codec::ResourceCodec;
use crate::postgres::conn::{Conn, db_error};
use crate::sqlite::now_micros;
use crate::types::SnapshotSettings;
use crate::{Result, StoreError};

/// The namespace under which snapshot settings are sealed.
const SEAL_NAMESPACE: &str = "search-snapshot";

/// Stores a result set, removing expired ones, and returns its id.
pub(crate) fn put(
    conn: &Conn<'_>,
    codec: &ResourceCodec,
    pks: &[i64],
    settings: &SnapshotSettings,
    ttl_secs: i64,
) -> Result<String> {
    let now = now_micros();
    conn.execute("DELETE FROM search_snapshots WHERE expires <= $1", &[&now])?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let encoded = serde_json::to_vec(&encode(settings))
        .map_err(|e| StoreError::Database(format!("encoding search settings: {e}")))?;
    let (key_id, sealed) = codec.seal_record(SEAL_NAMESPACE, &id, &encoded)?;
    let expires = now.saturating_add(ttl_secs.max(1).saturating_mul(1_000_000));
    conn.execute(
        "INSERT INTO search_snapshots (id, key_id, settings, pks, expires) \
         VALUES ($1, $2, $3, $4, $5)",
        &[&id, &key_id, &sealed, &pks, &expires],
    )?;
    Ok(id)
}

/// Returns a live result set.
pub(crate) fn get(
    conn: &Conn<'_>,
    codec: &ResourceCodec,
    id: &str,
) -> Result<Option<(Vec<i64>, SnapshotSettings)>> {
    let row = conn.query_opt(
        "SELECT key_id, settings, pks FROM search_snapshots WHERE id = $1 AND expires > $2",
        &[&id, &now_micros()],
    )?;
    let Some(row) = row else {
        return Ok(None);
    };
    let key_id: i64 = row.try_get(0).map_err(db_error)?;
    let sealed: Vec<u8> = row.try_get(1).map_err(db_error)?;
    let pks: Vec<i64> = row.try_get(2).map_err(db_error)?;
    let json = codec.open_record(key_id, SEAL_NAMESPACE, id, &sealed)?;
    let settings = serde_json::from_slice::<Value>(&json)
        .ok()
        .and_then(|value| decode(&value))
        .ok_or_else(|| StoreError::Integrity(format!("search result set {id}")))?;
    Ok(Some((pks, settings)))
}

fn encode_includes(includes: &[Include]) -> Value {
    includes
        .iter()
        .map(|i| json!([i.source_type, i.param, i.target_type, i.iterate]))
        .collect()
}

fn encode(settings: &SnapshotSettings) -> Value {
    json!({
        "includes": encode_includes(&settings.includes),
        "revincludes": encode_includes(&settings.revincludes),
        "context": settings.context,
    })
}

fn decode_includes(value: &Value) -> Option<Vec<Include>> {
    value
        .as_array()?
        .iter()
        .map(|item| {
            Some(Include {
                source_type: item.get(0)?.as_str()?.to_owned(),
                param: item.get(1)?.as_str()?.to_owned(),
                target_type: item.get(2)?.as_str().map(str::to_owned),
                iterate: item.get(3)?.as_bool()?,
            })
        })
        .collect()
}

fn decode(value: &Value) -> Option<SnapshotSettings> {
    Some(SnapshotSettings {
        includes: decode_includes(value.get("includes")?)?,
        revincludes: decode_includes(value.get("revincludes")?)?,
        context: value.get("context")?.as_str()?.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip() {
        let settings = SnapshotSettings {
            includes: vec![Include {
                source_type: "Observation".into(),
                param: "subject".into(),
                target_type: Some("Patient".into()),
                iterate: false,
            }],
            revincludes: vec![Include {
                source_type: "*".into(),
                param: "*".into(),
                target_type: None,
                iterate: true,
            }],
            context: "owner=a".into(),
        };
        assert_eq!(decode(&encode(&settings)), Some(settings));
    }
}
