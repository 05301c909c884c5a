//! The SQLite write transaction: a savepoint in the group transaction of
//! the one writer connection (see `group`), so writes are serialized and
//! `If-Match` checks cannot race.

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use ward_fhir::search::{SearchQuery, index_resource};

use crate::codec::ResourceCodec;
use crate::index;
use crate::sqlite::group::WriterGuard;
use crate::sqlite::now_micros;
use crate::sqlite::read::Reader;
use crate::types::{Method, ResourceKey, ResourceVersion, WriteTx};
use crate::{Result, StoreError};

/// An open write transaction; dropped without commit, it rolls back.
pub(crate) struct SqliteWriteTx<'a> {
    /// The locked writer; `None` once committed.
    writer: Option<WriterGuard<'a>>,
    codec: &'a ResourceCodec,
    clock: &'a Mutex<i64>,
    max_scan: usize,
    /// The audit state with this transaction's records, once it has any.
    audit_work: Option<ward_audit::Appender>,
}

/// The current row of a resource.
struct Current {
    pk: i64,
    version: u64,
    deleted: bool,
}

impl<'a> SqliteWriteTx<'a> {
    /// Starts the transaction.
    pub(crate) fn begin(
        mut writer: WriterGuard<'a>,
        codec: &'a ResourceCodec,
        clock: &'a Mutex<i64>,
        max_scan: usize,
    ) -> Result<Self> {
        writer.begin()?;
        Ok(Self {
            writer: Some(writer),
            codec,
            clock,
            max_scan,
            audit_work: None,
        })
    }

    fn conn(&self) -> Result<&Connection> {
        self.writer
            .as_ref()
            .map(|writer| &writer.conn)
            .ok_or_else(|| StoreError::Database("the write transaction already ended".into()))
    }

    fn reader(&self) -> Reader<'_> {
        Reader {
            codec: self.codec,
            max_scan: self.max_scan,
        }
    }

    /// A timestamp later than every earlier one of this store.
    fn tick(&self) -> i64 {
        let mut last = self.clock.lock();
        let now = now_micros().max(*last + 1);
        *last = now;
        now
    }

    fn current(&self, resource_type: &str, id: &str) -> Result<Option<Current>> {
        let mut stmt = self.conn()?.prepare_cached(
            "SELECT pk, version, deleted FROM resources WHERE type = ?1 AND id = ?2",
        )?;
        let row = stmt
            .query_row(params![resource_type, id], |row| {
                Ok(Current {
                    pk: row.get(0)?,
                    version: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                    deleted: row.get::<_, i64>(2)? != 0,
                })
            })
            .optional()?;
        Ok(row)
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
        let mut stmt = self.conn()?.prepare_cached(
            "INSERT INTO versions (res_pk, type, id, version, last_updated, method, key_id, body) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        stmt.execute(params![
            res_pk,
            version.resource_type,
            version.id,
            i64::try_from(version.version).unwrap_or(i64::MAX),
            version.last_updated,
            version.method.as_str(),
            key_id,
            body
        ])?;
        Ok(self.conn()?.last_insert_rowid())
    }

    /// Replaces the index rows of a resource.
    fn reindex(&self, res_pk: i64, resource: Option<&Value>) -> Result<()> {
        for table in [
            "idx_string",
            "idx_token",
            "idx_date",
            "idx_number",
            "idx_reference",
            "idx_uri",
        ] {
            self.conn()?
                .prepare_cached(&format!("DELETE FROM {table} WHERE res_pk = ?1"))?
                .execute([res_pk])?;
        }
        let Some(resource) = resource else {
            return Ok(());
        };
        let rows = index::rows(self.codec, &index_resource(resource));
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "INSERT INTO idx_string (res_pk, param, kind, hash) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (param, kind, hash) in &rows.strings {
            stmt.execute(params![res_pk, param, kind, hash])?;
        }
        let mut stmt = conn.prepare_cached(
            "INSERT INTO idx_token (res_pk, param, system, code) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (param, system, code) in &rows.tokens {
            stmt.execute(params![res_pk, param, system, code])?;
        }
        let mut stmt = conn.prepare_cached(
            "INSERT INTO idx_date (res_pk, param, low, high) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (param, low, high) in &rows.dates {
            stmt.execute(params![res_pk, param, low, high])?;
        }
        let mut stmt = conn.prepare_cached(
            "INSERT INTO idx_number (res_pk, param, value, low, high, system, code, unit) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for row in &rows.numbers {
            stmt.execute(params![
                res_pk, row.param, row.value, row.low, row.high, row.system, row.code, row.unit
            ])?;
        }
        let mut stmt = conn.prepare_cached(
            "INSERT INTO idx_reference (res_pk, param, target_type, target_id, url) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (param, target_type, target_id, url) in &rows.references {
            stmt.execute(params![res_pk, param, target_type, target_id, url])?;
        }
        let mut stmt =
            conn.prepare_cached("INSERT INTO idx_uri (res_pk, param, hash) VALUES (?1, ?2, ?3)")?;
        for (param, hash) in &rows.uris {
            stmt.execute(params![res_pk, param, hash])?;
        }
        Ok(())
    }

    /// Writes a new version of a resource whose current row is `current`
    /// (or a first version when `None`).
    fn write_version(
        &mut self,
        mut resource: Value,
        current: Option<Current>,
        method: Method,
    ) -> Result<ResourceVersion> {
        let (resource_type, id) = identity(&resource)?;
        let version = current.as_ref().map_or(1, |c| c.version + 1);
        let last_updated = self.tick();
        stamp(&mut resource, version, last_updated);
        let res_pk = match &current {
            Some(c) => c.pk,
            None => {
                self.conn()?
                    .prepare_cached(
                        "INSERT INTO resources (type, id, version, deleted, last_updated, vpk) \
                         VALUES (?1, ?2, 0, 0, 0, 0)",
                    )?
                    .execute(params![resource_type, id])?;
                self.conn()?.last_insert_rowid()
            }
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
        self.conn()?
            .prepare_cached(
                "UPDATE resources SET version = ?1, deleted = 0, last_updated = ?2, vpk = ?3 WHERE pk = ?4",
            )?
            .execute(params![
                i64::try_from(version).unwrap_or(i64::MAX),
                last_updated,
                vpk,
                res_pk
            ])?;
        self.reindex(res_pk, stored.resource.as_ref())?;
        Ok(stored)
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

impl WriteTx for SqliteWriteTx<'_> {
    fn read(&mut self, resource_type: &str, id: &str) -> Result<ResourceVersion> {
        self.reader().read(self.conn()?, resource_type, id)
    }

    fn search_keys(&mut self, query: &SearchQuery, limit: usize) -> Result<Vec<ResourceKey>> {
        self.reader().search_keys(self.conn()?, query, limit)
    }

    fn create(&mut self, resource: Value) -> Result<ResourceVersion> {
        let (resource_type, id) = identity(&resource)?;
        if self.current(&resource_type, &id)?.is_some() {
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
        let current = self.current(&resource_type, &id)?;
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
        let Some(current) = self.current(resource_type, id)? else {
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
        let last_updated = self.tick();
        let marker = ResourceVersion {
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
            version,
            last_updated,
            method: Method::Delete,
            resource: None,
        };
        let vpk = self.insert_version(current.pk, &marker)?;
        self.conn()?
            .prepare_cached(
                "UPDATE resources SET version = ?1, deleted = 1, last_updated = ?2, vpk = ?3 WHERE pk = ?4",
            )?
            .execute(params![
                i64::try_from(version).unwrap_or(i64::MAX),
                last_updated,
                vpk,
                current.pk
            ])?;
        self.reindex(current.pk, None)?;
        Ok(Some(marker))
    }

    fn kv_get(&mut self, ns: &str, key: &str) -> Result<Option<Vec<u8>>> {
        super::kv::get(self.conn()?, self.codec, ns, key)
    }

    fn kv_put(&mut self, ns: &str, key: &str, value: &[u8], expires: Option<i64>) -> Result<()> {
        super::kv::put(self.conn()?, self.codec, ns, key, value, expires)
    }

    fn kv_insert_new(
        &mut self,
        ns: &str,
        key: &str,
        value: &[u8],
        expires: Option<i64>,
    ) -> Result<bool> {
        super::kv::insert_new(self.conn()?, self.codec, ns, key, value, expires)
    }

    fn append_audit(&mut self, record: &ward_audit::AuditRecord) -> Result<u64> {
        // The saved state is read inside the transaction (which holds
        // SQLite's write lock), so another process appending to the same
        // database, such as `ward import`, cannot fork the chain.
        let mut work = match self.audit_work.take() {
            Some(work) => work,
            None => super::audit::load(self.conn()?)?,
        };
        let result = super::audit::append(self.conn()?, &mut work, record);
        self.audit_work = Some(work);
        result
    }

    fn commit(mut self: Box<Self>) -> Result<()> {
        if let Some(work) = &self.audit_work {
            super::audit::save(self.conn()?, work)?;
        }
        let mut writer = self
            .writer
            .take()
            .ok_or_else(|| StoreError::Database("the write transaction already ended".into()))?;
        let durable = writer.release()?;
        // Unlocking commits the group, or leaves that to a queued writer.
        drop(writer);
        durable.wait()
    }
}

impl Drop for SqliteWriteTx<'_> {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.as_mut() {
            writer.rollback();
        }
    }
}
