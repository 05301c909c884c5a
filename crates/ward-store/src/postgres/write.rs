//! The PostgreSQL write transaction. Several replicas may write at once, so
//! conflicting writes are serialized by locks inside the database:
//!
//! - an update, delete or `If-Match` check locks the resource row with
//!   `SELECT ... FOR UPDATE`; a concurrent writer waits, then sees the new
//!   version and fails its `If-Match`;
//! - a write to an id that has no row yet takes a transaction-level advisory
//!   lock on the type and id, so two creates of one id take turns;
//! - [`WriteTx::search_keys`], which conditional creates, updates and
//!   deletes run before they write, first takes a transaction-level advisory
//!   lock on the resource type (`pg_advisory_xact_lock`), so two conditional
//!   creates of one type take turns and the second finds the first's
//!   resource. The lock is held until commit or rollback.

use std::collections::HashSet;

use deadpool_postgres::Object;
use serde_json::Value;
use tokio::runtime::Handle;
use ward_fhir::search::{SearchQuery, index_resource};

use crate::codec::ResourceCodec;
use crate::index;
use crate::postgres::conn::{Conn, db_error, is_unique_violation};
use crate::postgres::read::{Reader, column};
use crate::types::{Method, ResourceKey, ResourceVersion, WriteTx};
use crate::{Result, StoreError};

/// The first key of advisory locks taken by conditional operations, one per
/// resource type.
const CONDITIONAL_LOCK_CLASS: i32 = 0x5741_5201;

/// The first key of advisory locks taken when writing an id that has no row.
const NEW_ID_LOCK_CLASS: i32 = 0x5741_5202;

/// An open write transaction; dropped without commit, it rolls back.
pub(crate) struct PostgresWriteTx<'a> {
    client: Option<Object>,
    runtime: &'a Handle,
    codec: &'a ResourceCodec,
    max_scan: usize,
    /// The last `lastUpdated` handed out in this transaction.
    last_tick: i64,
    /// Resource types whose conditional lock this transaction holds.
    locked_types: HashSet<String>,
    /// The audit chain state with this transaction's records, once it has
    /// any (the audit lock is held from then on).
    audit_work: Option<ward_audit::Appender>,
}

/// The current row of a resource, locked for this transaction.
struct Current {
    pk: i64,
    version: u64,
    deleted: bool,
    last_updated: i64,
}

/// Hashes `parts` with 32-bit FNV-1a into an advisory lock key that is the
/// same in every replica.
fn lock_key(parts: &[&str]) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0)) {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    i32::from_ne_bytes(hash.to_ne_bytes())
}

impl<'a> PostgresWriteTx<'a> {
    /// Starts the transaction on a pooled connection.
    pub(crate) fn begin(
        client: Object,
        runtime: &'a Handle,
        codec: &'a ResourceCodec,
        max_scan: usize,
    ) -> Result<Self> {
        let tx = Self {
            client: Some(client),
            runtime,
            codec,
            max_scan,
            last_tick: 0,
            locked_types: HashSet::new(),
            audit_work: None,
        };
        tx.conn()?.batch("BEGIN ISOLATION LEVEL READ COMMITTED")?;
        Ok(tx)
    }

    fn conn(&self) -> Result<Conn<'_>> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| StoreError::Database("the write transaction is closed".into()))?;
        Ok(Conn {
            client,
            runtime: self.runtime,
        })
    }

    fn reader(&self) -> Reader<'_> {
        Reader {
            codec: self.codec,
            max_scan: self.max_scan,
        }
    }

    /// Reads and locks the current row of a resource. When there is none,
    /// takes the advisory lock of the id first, so a concurrent create of the
    /// same id waits for this transaction.
    fn lock_current(&self, resource_type: &str, id: &str) -> Result<Option<Current>> {
        if let Some(current) = self.select_for_update(resource_type, id)? {
            return Ok(Some(current));
        }
        self.conn()?.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&NEW_ID_LOCK_CLASS, &lock_key(&[resource_type, id])],
        )?;
        // Another transaction may have created the row while this one
        // waited; READ COMMITTED lets this new statement see it.
        self.select_for_update(resource_type, id)
    }

    fn select_for_update(&self, resource_type: &str, id: &str) -> Result<Option<Current>> {
        let row = self.conn()?.query_opt(
            "SELECT pk, version, deleted, last_updated FROM resources \
             WHERE type = $1 AND id = $2 FOR UPDATE",
            &[&resource_type, &id],
        )?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(Current {
            pk: column(&row, 0)?,
            version: u64::try_from(column::<i64>(&row, 1)?).unwrap_or(0),
            deleted: column::<i64>(&row, 2)? != 0,
            last_updated: column(&row, 3)?,
        }))
    }

    /// A timestamp from the database clock (`clock_timestamp()`, shared by
    /// every replica), later than the resource's previous version and than
    /// every earlier timestamp of this transaction.
    fn tick(&mut self, previous: Option<i64>) -> Result<i64> {
        let row = self.conn()?.query_one(
            "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT",
            &[],
        )?;
        let now: i64 = column(&row, 0)?;
        let floor = previous.unwrap_or(0).max(self.last_tick).saturating_add(1);
        self.last_tick = now.max(floor);
        Ok(self.last_tick)
    }

    /// Seals and inserts one version row; returns its sequence number.
    fn insert_version(&self, res_pk: i64, version: &ResourceVersion) -> Result<i64> {
        let (key_id, body) = match &version.resource {
            Some(resource) => {
                let json = serde_json::to_vec(resource)
                    .map_err(|e| StoreError::Database(format!("encoding resource: {e}")))?;
                let (key_id, sealed) =
                    self.codec
                        .seal(&version.resource_type, &version.id, version.version, &json)?;
                (Some(key_id), Some(sealed))
            }
            None => (None, None),
        };
        let row = self.conn()?.query_one(
            "INSERT INTO versions (res_pk, type, id, version, last_updated, method, key_id, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING vpk",
            &[
                &res_pk,
                &version.resource_type,
                &version.id,
                &i64::try_from(version.version).unwrap_or(i64::MAX),
                &version.last_updated,
                &version.method.as_str(),
                &key_id,
                &body,
            ],
        )?;
        column(&row, 0)
    }

    /// Replaces the index rows of a resource: one statement deletes the old
    /// rows, then one statement per table inserts the new ones from arrays.
    fn reindex(&self, res_pk: i64, resource: Option<&Value>, had_rows: bool) -> Result<()> {
        let conn = self.conn()?;
        if had_rows {
            conn.execute(
                "WITH s AS (DELETE FROM idx_string WHERE res_pk = $1), \
                 t AS (DELETE FROM idx_token WHERE res_pk = $1), \
                 d AS (DELETE FROM idx_date WHERE res_pk = $1), \
                 n AS (DELETE FROM idx_number WHERE res_pk = $1), \
                 r AS (DELETE FROM idx_reference WHERE res_pk = $1) \
                 DELETE FROM idx_uri WHERE res_pk = $1",
                &[&res_pk],
            )?;
        }
        let Some(resource) = resource else {
            return Ok(());
        };
        let rows = index::rows(self.codec, &index_resource(resource));
        if !rows.strings.is_empty() {
            let (params, kinds, hashes): (Vec<&str>, Vec<i64>, Vec<&[u8]>) = rows
                .strings
                .iter()
                .map(|(p, k, h)| (p.as_str(), *k, h.as_slice()))
                .collect();
            conn.execute(
                "INSERT INTO idx_string (res_pk, param, kind, hash) \
                 SELECT $1, * FROM UNNEST($2::TEXT[], $3::BIGINT[], $4::BYTEA[])",
                &[&res_pk, &params, &kinds, &hashes],
            )?;
        }
        if !rows.tokens.is_empty() {
            let tokens = &rows.tokens;
            let params: Vec<&str> = tokens.iter().map(|t| t.0.as_str()).collect();
            let systems: Vec<Option<&[u8]>> = tokens.iter().map(|t| t.1.as_deref()).collect();
            let codes: Vec<&[u8]> = tokens.iter().map(|t| t.2.as_slice()).collect();
            conn.execute(
                "INSERT INTO idx_token (res_pk, param, system, code) \
                 SELECT $1, * FROM UNNEST($2::TEXT[], $3::BYTEA[], $4::BYTEA[])",
                &[&res_pk, &params, &systems, &codes],
            )?;
        }
        if !rows.dates.is_empty() {
            let (params, lows, highs): (Vec<&str>, Vec<i64>, Vec<i64>) = rows
                .dates
                .iter()
                .map(|(p, l, h)| (p.as_str(), *l, *h))
                .collect();
            conn.execute(
                "INSERT INTO idx_date (res_pk, param, low, high) \
                 SELECT $1, * FROM UNNEST($2::TEXT[], $3::BIGINT[], $4::BIGINT[])",
                &[&res_pk, &params, &lows, &highs],
            )?;
        }
        if !rows.numbers.is_empty() {
            let numbers = &rows.numbers;
            let params: Vec<&str> = numbers.iter().map(|n| n.param.as_str()).collect();
            let values: Vec<f64> = numbers.iter().map(|n| n.value).collect();
            let lows: Vec<f64> = numbers.iter().map(|n| n.low).collect();
            let highs: Vec<f64> = numbers.iter().map(|n| n.high).collect();
            let systems: Vec<Option<&[u8]>> = numbers.iter().map(|n| n.system.as_deref()).collect();
            let codes: Vec<Option<&[u8]>> = numbers.iter().map(|n| n.code.as_deref()).collect();
            let units: Vec<Option<&[u8]>> = numbers.iter().map(|n| n.unit.as_deref()).collect();
            conn.execute(
                "INSERT INTO idx_number (res_pk, param, value, low, high, system, code, unit) \
                 SELECT $1, * FROM UNNEST($2::TEXT[], $3::DOUBLE PRECISION[], \
                 $4::DOUBLE PRECISION[], $5::DOUBLE PRECISION[], $6::BYTEA[], $7::BYTEA[], \
                 $8::BYTEA[])",
                &[
                    &res_pk, &params, &values, &lows, &highs, &systems, &codes, &units,
                ],
            )?;
        }
        if !rows.references.is_empty() {
            let references = &rows.references;
            let params: Vec<&str> = references.iter().map(|r| r.0.as_str()).collect();
            let types: Vec<Option<&str>> = references.iter().map(|r| r.1.as_deref()).collect();
            let ids: Vec<Option<&str>> = references.iter().map(|r| r.2.as_deref()).collect();
            let urls: Vec<Option<&[u8]>> = references.iter().map(|r| r.3.as_deref()).collect();
            conn.execute(
                "INSERT INTO idx_reference (res_pk, param, target_type, target_id, url) \
                 SELECT $1, * FROM UNNEST($2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BYTEA[])",
                &[&res_pk, &params, &types, &ids, &urls],
            )?;
        }
        if !rows.uris.is_empty() {
            let (params, hashes): (Vec<&str>, Vec<&[u8]>) = rows
                .uris
                .iter()
                .map(|(p, h)| (p.as_str(), h.as_slice()))
                .unzip();
            conn.execute(
                "INSERT INTO idx_uri (res_pk, param, hash) \
                 SELECT $1, * FROM UNNEST($2::TEXT[], $3::BYTEA[])",
                &[&res_pk, &params, &hashes],
            )?;
        }
        Ok(())
    }

    /// Inserts the row of a new resource; returns its key.
    fn insert_resource(&self, resource_type: &str, id: &str) -> Result<i64> {
        let conn = self.conn()?;
        let result = conn.runtime.block_on(async {
            let statement = conn
                .client
                .prepare_cached(
                    "INSERT INTO resources (type, id, version, deleted, last_updated, vpk) \
                     VALUES ($1, $2, 0, 0, 0, 0) RETURNING pk",
                )
                .await?;
            conn.client
                .query_one(&statement, &[&resource_type, &id])
                .await
        });
        match result {
            Ok(row) => column(&row, 0),
            // The id lock makes this unreachable between Ward processes; a
            // writer that bypasses it still gets a precise error.
            Err(err) if is_unique_violation(&err) => Err(StoreError::AlreadyExists {
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
            }),
            Err(err) => Err(db_error(err)),
        }
    }

    /// Writes a new version of a resource whose locked row is `current`
    /// (or a first version when `None`).
    fn write_version(
        &mut self,
        mut resource: Value,
        current: Option<Current>,
        method: Method,
    ) -> Result<ResourceVersion> {
        let (resource_type, id) = identity(&resource)?;
        let version = current.as_ref().map_or(1, |c| c.version + 1);
        let last_updated = self.tick(current.as_ref().map(|c| c.last_updated))?;
        stamp(&mut resource, version, last_updated);
        let res_pk = match &current {
            Some(c) => c.pk,
            None => self.insert_resource(&resource_type, &id)?,
        };
        let stored = ResourceVersion {
            resource_type,
            id,
            version,
            last_updated,
            method,
            resource: Some(resource),
        };
        let vpk = self.insert_version(res_pk, &stored)?;
        self.conn()?.execute(
            "UPDATE resources SET version = $1, deleted = 0, last_updated = $2, vpk = $3 \
             WHERE pk = $4",
            &[
                &i64::try_from(version).unwrap_or(i64::MAX),
                &last_updated,
                &vpk,
                &res_pk,
            ],
        )?;
        let had_rows = current.as_ref().is_some_and(|c| !c.deleted);
        self.reindex(res_pk, stored.resource.as_ref(), had_rows)?;
        Ok(stored)
    }

    /// Takes the conditional lock of a resource type once per transaction.
    fn lock_type(&mut self, resource_type: &str) -> Result<()> {
        if self.locked_types.contains(resource_type) {
            return Ok(());
        }
        self.conn()?.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&CONDITIONAL_LOCK_CLASS, &lock_key(&[resource_type])],
        )?;
        self.locked_types.insert(resource_type.to_owned());
        Ok(())
    }
}

/// Reads `resourceType` and `id` of a resource about to be stored.
fn identity(resource: &Value) -> Result<(String, String)> {
    let resource_type = resource.get("resourceType").and_then(Value::as_str);
    let id = resource.get("id").and_then(Value::as_str);
    match (resource_type, id) {
        (Some(t), Some(i)) => Ok((t.to_owned(), i.to_owned())),
        _ => Err(StoreError::Database(
            "resource to store lacks resourceType or id".into(),
        )),
    }
}

/// Sets `meta.versionId` and `meta.lastUpdated`.
fn stamp(resource: &mut Value, version: u64, last_updated: i64) {
    let Some(object) = resource.as_object_mut() else {
        return;
    };
    let meta = object
        .entry("meta")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(serde_json::Map::new());
    }
    if let Some(meta) = meta.as_object_mut() {
        meta.insert("versionId".into(), Value::String(version.to_string()));
        meta.insert(
            "lastUpdated".into(),
            Value::String(crate::format_instant(last_updated)),
        );
    }
}

impl WriteTx for PostgresWriteTx<'_> {
    fn read(&mut self, resource_type: &str, id: &str) -> Result<ResourceVersion> {
        self.reader().read(&self.conn()?, resource_type, id)
    }

    fn search_keys(&mut self, query: &SearchQuery, limit: usize) -> Result<Vec<ResourceKey>> {
        // The lock comes before the search, in its own statement, so the
        // search sees every resource committed by the lock's previous holder.
        match &query.resource_type {
            Some(resource_type) => self.lock_type(resource_type)?,
            None if query.types.is_empty() => self.lock_type("*")?,
            None => {
                let mut types = query.types.clone();
                // Locking in sorted order keeps two transactions from
                // deadlocking on these locks.
                types.sort();
                for resource_type in &types {
                    self.lock_type(resource_type)?;
                }
            }
        }
        self.reader().search_keys(&self.conn()?, query, limit)
    }

    fn create(&mut self, resource: Value) -> Result<ResourceVersion> {
        let (resource_type, id) = identity(&resource)?;
        if self.lock_current(&resource_type, &id)?.is_some() {
            return Err(StoreError::AlreadyExists { resource_type, id });
        }
        self.write_version(resource, None, Method::Create)
    }

    fn update(
        &mut self,
        resource: Value,
        if_match: Option<u64>,
    ) -> Result<(ResourceVersion, bool)> {
        let (resource_type, id) = identity(&resource)?;
        let current = self.lock_current(&resource_type, &id)?;
        let live_version = current
            .as_ref()
            .filter(|c| !c.deleted)
            .map_or(0, |c| c.version);
        if let Some(expected) = if_match
            && expected != live_version
        {
            return Err(StoreError::VersionConflict {
                resource_type,
                id,
                expected,
                current: live_version,
            });
        }
        let created = live_version == 0;
        let method = if current.is_none() {
            Method::Create
        } else {
            Method::Update
        };
        let stored = self.write_version(resource, current, method)?;
        Ok((stored, created))
    }

    fn delete(
        &mut self,
        resource_type: &str,
        id: &str,
        if_match: Option<u64>,
    ) -> Result<Option<ResourceVersion>> {
        let Some(current) = self.select_for_update(resource_type, id)? else {
            return Err(StoreError::NotFound {
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
            });
        };
        if let Some(expected) = if_match {
            let live = if current.deleted { 0 } else { current.version };
            if expected != live {
                return Err(StoreError::VersionConflict {
                    resource_type: resource_type.to_owned(),
                    id: id.to_owned(),
                    expected,
                    current: live,
                });
            }
        }
        if current.deleted {
            return Ok(None);
        }
        let version = current.version + 1;
        let last_updated = self.tick(Some(current.last_updated))?;
        let marker = ResourceVersion {
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
            version,
            last_updated,
            method: Method::Delete,
            resource: None,
        };
        let vpk = self.insert_version(current.pk, &marker)?;
        self.conn()?.execute(
            "UPDATE resources SET version = $1, deleted = 1, last_updated = $2, vpk = $3 \
             WHERE pk = $4",
            &[
                &i64::try_from(version).unwrap_or(i64::MAX),
                &last_updated,
                &vpk,
                &current.pk,
            ],
        )?;
        self.reindex(current.pk, None, true)?;
        Ok(Some(marker))
    }

    fn kv_get(&mut self, ns: &str, key: &str) -> Result<Option<Vec<u8>>> {
        super::kv::get_for_update(&self.conn()?, self.codec, ns, key)
    }

    fn kv_put(&mut self, ns: &str, key: &str, value: &[u8], expires: Option<i64>) -> Result<()> {
        super::kv::put(&self.conn()?, self.codec, ns, key, value, expires)
    }

    fn kv_insert_new(
        &mut self,
        ns: &str,
        key: &str,
        value: &[u8],
        expires: Option<i64>,
    ) -> Result<bool> {
        super::kv::insert_new(&self.conn()?, self.codec, ns, key, value, expires)
    }

    fn append_audit(&mut self, record: &ward_audit::AuditRecord) -> Result<u64> {
        let mut work = match self.audit_work.take() {
            Some(work) => work,
            None => super::audit::lock_and_load(&self.conn()?)?,
        };
        let result = super::audit::append(&self.conn()?, &mut work, record);
        self.audit_work = Some(work);
        result
    }

    fn commit(mut self: Box<Self>) -> Result<()> {
        if let Some(work) = &self.audit_work {
            super::audit::save(&self.conn()?, work)?;
        }
        let result = self.conn()?.batch("COMMIT");
        if result.is_ok() {
            // Committed: the connection goes back to the pool as it is.
            drop(self.client.take());
        }
        result
    }
}

impl Drop for PostgresWriteTx<'_> {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let conn = Conn {
            client: &client,
            runtime: self.runtime,
        };
        if let Err(error) = conn.batch("ROLLBACK") {
            tracing::error!(%error, "rolling back a write transaction failed; closing its connection");
            // Never hand a connection in an unknown transaction state back
            // to the pool.
            drop(Object::take(client));
        }
    }
}
