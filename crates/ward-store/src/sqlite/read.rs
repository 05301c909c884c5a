//! Reads, history and search over one SQLite connection. The write
//! transaction uses the same code on its own connection, so its reads see
//! its own changes.

use std::collections::HashSet;

use rusqlite::types::Value as SqlParam;
use rusqlite::{Connection, Row, params, params_from_iter};
use serde_json::Value;
use ward_fhir::search::{
    Criterion, Include, IndexEntry, SearchQuery, SortValue, index_resource, matches, sort_value,
};

use crate::codec::ResourceCodec;
use crate::search::{self, SqlValue};
use crate::sqlite::Snapshots;
use crate::types::{
    HistoryCursor, HistoryPage, HistoryRequest, HistoryScope, Method, PageRequest, ResourceKey,
    ResourceVersion, SearchPage, SnapshotSettings, Visibility,
};
use crate::{Result, StoreError};

/// The maximum number of resources `_include` and `_revinclude` add to one
/// page.
const MAX_INCLUDED: usize = 1_000;

/// The columns [`Reader::decode`] expects, from `versions v`.
pub(crate) const VERSION_COLUMNS: &str =
    "v.type, v.id, v.version, v.last_updated, v.method, v.key_id, v.body";

/// Stateless read logic bound to a codec.
pub(crate) struct Reader<'a> {
    pub codec: &'a ResourceCodec,
    pub max_scan: usize,
}

fn to_sql(value: &SqlValue) -> SqlParam {
    match value {
        SqlValue::Int(i) => SqlParam::Integer(*i),
        SqlValue::Real(r) => SqlParam::Real(*r),
        SqlValue::Text(t) => SqlParam::Text(t.clone()),
        SqlValue::Blob(b) => SqlParam::Blob(b.clone()),
    }
}

impl Reader<'_> {
    /// Decodes a row of [`VERSION_COLUMNS`] starting at column `at`.
    pub(crate) fn decode(&self, row: &Row<'_>, at: usize) -> Result<ResourceVersion> {
        let resource_type: String = row.get(at)?;
        let id: String = row.get(at + 1)?;
        let version: i64 = row.get(at + 2)?;
        let version = u64::try_from(version).unwrap_or(0);
        let last_updated: i64 = row.get(at + 3)?;
        let method: String = row.get(at + 4)?;
        let method = Method::parse(&method)
            .ok_or_else(|| StoreError::Integrity(format!("{resource_type}/{id}")))?;
        let key_id: Option<i64> = row.get(at + 5)?;
        let body: Option<Vec<u8>> = row.get(at + 6)?;
        let resource = match (method, key_id, body) {
            (Method::Delete, _, _) => None,
            (_, Some(key_id), Some(body)) => {
                let json = self
                    .codec
                    .open(key_id, &resource_type, &id, version, &body)?;
                let value: Value = serde_json::from_slice(&json)
                    .map_err(|_| StoreError::Integrity(format!("{resource_type}/{id}")))?;
                Some(value)
            }
            _ => return Err(StoreError::Integrity(format!("{resource_type}/{id}"))),
        };
        Ok(ResourceVersion {
            resource_type,
            id,
            version,
            last_updated,
            method,
            resource,
        })
    }

    /// Reads the current version; a deletion is [`StoreError::Gone`].
    pub(crate) fn read(
        &self,
        conn: &Connection,
        resource_type: &str,
        id: &str,
    ) -> Result<ResourceVersion> {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM resources r JOIN versions v ON v.vpk = r.vpk \
             WHERE r.type = ?1 AND r.id = ?2"
        ))?;
        let mut rows = stmt.query(params![resource_type, id])?;
        let Some(row) = rows.next()? else {
            return Err(StoreError::NotFound {
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
            });
        };
        let version = self.decode(row, 0)?;
        if version.is_deleted() {
            return Err(StoreError::Gone {
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
                version: version.version,
            });
        }
        Ok(version)
    }

    /// Reads one version, deletion markers included.
    pub(crate) fn vread(
        &self,
        conn: &Connection,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> Result<ResourceVersion> {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM resources r JOIN versions v ON v.res_pk = r.pk \
             WHERE r.type = ?1 AND r.id = ?2 AND v.version = ?3"
        ))?;
        let version_param = i64::try_from(version).unwrap_or(i64::MAX);
        let mut rows = stmt.query(params![resource_type, id, version_param])?;
        match rows.next()? {
            Some(row) => self.decode(row, 0),
            None => Err(StoreError::NotFound {
                resource_type: resource_type.to_owned(),
                id: format!("{id}/_history/{version}"),
            }),
        }
    }

    /// Reads a page of history, newest first.
    pub(crate) fn history(
        &self,
        conn: &Connection,
        request: &HistoryRequest,
    ) -> Result<HistoryPage> {
        let mut filter = String::from(" WHERE 1 = 1");
        let mut binds: Vec<SqlParam> = Vec::new();
        match &request.scope {
            HistoryScope::System => {}
            HistoryScope::Type(t) => {
                filter.push_str(" AND v.type = ?");
                binds.push(SqlParam::Text(t.clone()));
            }
            HistoryScope::Instance(t, id) => {
                let exists: Option<i64> = conn
                    .query_row(
                        "SELECT pk FROM resources WHERE type = ?1 AND id = ?2",
                        params![t, id],
                        |row| row.get(0),
                    )
                    .map(Some)
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        e => Err(e),
                    })?;
                let Some(pk) = exists else {
                    return Err(StoreError::NotFound {
                        resource_type: t.clone(),
                        id: id.clone(),
                    });
                };
                filter.push_str(" AND v.res_pk = ?");
                binds.push(SqlParam::Integer(pk));
            }
        }
        if let Some(since) = request.since {
            filter.push_str(" AND v.last_updated >= ?");
            binds.push(SqlParam::Integer(since));
        }
        if let Some((low, high)) = request.at {
            // The version started before the range ends, and no later version
            // of the resource replaced it before the range began.
            filter.push_str(
                " AND v.method <> 'delete' AND v.last_updated < ? AND NOT EXISTS \
                 (SELECT 1 FROM versions n WHERE n.res_pk = v.res_pk \
                 AND n.version > v.version AND n.last_updated <= ?)",
            );
            binds.push(SqlParam::Integer(high));
            binds.push(SqlParam::Integer(low));
        }
        let high_water = match request.cursor {
            Some(cursor) => cursor.high_water,
            None => conn.query_row("SELECT COALESCE(MAX(vpk), 0) FROM versions", [], |row| {
                row.get(0)
            })?,
        };
        filter.push_str(" AND v.vpk <= ?");
        binds.push(SqlParam::Integer(high_water));

        let total: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM versions v{filter}"),
            params_from_iter(binds.iter()),
            |row| row.get(0),
        )?;

        let mut page_filter = filter.clone();
        let mut page_binds = binds.clone();
        if let Some(cursor) = request.cursor {
            page_filter.push_str(" AND v.vpk < ?");
            page_binds.push(SqlParam::Integer(cursor.after));
        }
        let count = request.count.max(1);
        page_binds.push(SqlParam::Integer(
            i64::try_from(count + 1).unwrap_or(i64::MAX),
        ));
        let mut stmt = conn.prepare(&format!(
            "SELECT v.vpk, {VERSION_COLUMNS} FROM versions v{page_filter} ORDER BY v.vpk DESC LIMIT ?"
        ))?;
        let mut rows = stmt.query(params_from_iter(page_binds.iter()))?;
        let mut versions = Vec::new();
        let mut last_vpk = None;
        let mut more = false;
        while let Some(row) = rows.next()? {
            if versions.len() == count {
                more = true;
                break;
            }
            last_vpk = Some(row.get::<_, i64>(0)?);
            versions.push(self.decode(row, 1)?);
        }
        let next_cursor = match (more, last_vpk) {
            (true, Some(after)) => Some(HistoryCursor { high_water, after }),
            _ => None,
        };
        Ok(HistoryPage {
            versions,
            total: usize::try_from(total).unwrap_or(0),
            next_cursor,
        })
    }

    /// Loads the current, non-deleted versions of `pks`, keeping their order.
    pub(crate) fn load(
        &self,
        conn: &Connection,
        pks: &[i64],
    ) -> Result<Vec<(i64, ResourceVersion)>> {
        let mut found = std::collections::HashMap::with_capacity(pks.len());
        for chunk in pks.chunks(500) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let mut stmt = conn.prepare(&format!(
                "SELECT r.pk, {VERSION_COLUMNS} FROM resources r JOIN versions v ON v.vpk = r.vpk \
                 WHERE r.deleted = 0 AND r.pk IN ({placeholders})"
            ))?;
            let mut rows = stmt.query(params_from_iter(chunk.iter()))?;
            while let Some(row) = rows.next()? {
                let pk: i64 = row.get(0)?;
                found.insert(pk, self.decode(row, 1)?);
            }
        }
        Ok(pks
            .iter()
            .filter_map(|pk| found.remove(pk).map(|v| (*pk, v)))
            .collect())
    }

    /// Returns the ordered keys (`pk`) of every resource matching the
    /// criteria and sort of `query`.
    pub(crate) fn matching_pks(&self, conn: &Connection, query: &SearchQuery) -> Result<Vec<i64>> {
        self.matching_pks_visible(conn, query, None)
    }

    /// Like [`Self::matching_pks`]; with `visible`, a chained parameter
    /// matches only target resources the caller may see, so a chain cannot
    /// reveal the content of hidden resources.
    pub(crate) fn matching_pks_visible(
        &self,
        conn: &Connection,
        query: &SearchQuery,
        visible: Option<Visibility<'_>>,
    ) -> Result<Vec<i64>> {
        let mut resolve = |target_type: &str, criterion: &Criterion| -> Result<Vec<String>> {
            let nested = SearchQuery {
                resource_type: Some(target_type.to_owned()),
                criteria: vec![criterion.clone()],
                ..SearchQuery::default()
            };
            let mut pks = self.matching_pks_visible(conn, &nested, visible)?;
            if let Some(visible) = visible {
                pks = self
                    .load(conn, &pks)?
                    .into_iter()
                    .filter(|(_, version)| visible(version))
                    .map(|(pk, _)| pk)
                    .collect();
            }
            self.ids_of(conn, &pks)
        };
        let plan = search::plan(self.codec, query, &mut resolve)?;
        let mut stmt = conn.prepare_cached(&plan.sql)?;
        let binds: Vec<SqlParam> = plan.params.iter().map(to_sql).collect();
        let pks: Vec<i64> = stmt
            .query_map(params_from_iter(binds.iter()), |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if plan.post_filter.is_empty() && plan.memory_sort.is_empty() {
            return Ok(pks);
        }
        if pks.len() > self.max_scan {
            return Err(StoreError::TooCostly(format!(
                "{} candidates would have to be decrypted (limit {}); add criteria that narrow the search",
                pks.len(),
                self.max_scan
            )));
        }
        let mut kept: Vec<(i64, Vec<Option<SortValue>>)> = Vec::new();
        for (pk, version) in self.load(conn, &pks)? {
            let Some(resource) = &version.resource else {
                continue;
            };
            let entries: Vec<IndexEntry> = index_resource(resource);
            if !plan.post_filter.iter().all(|c| matches(c, &entries)) {
                continue;
            }
            let keys = plan
                .memory_sort
                .iter()
                .map(|key| sort_value(&entries, &key.param, key.descending))
                .collect();
            kept.push((pk, keys));
        }
        let sort = &plan.memory_sort;
        kept.sort_by(|(pk_a, a), (pk_b, b)| {
            for (key, (x, y)) in sort.iter().zip(a.iter().zip(b.iter())) {
                let ord = match (x, y) {
                    (Some(x), Some(y)) if key.descending => y.cmp(x),
                    (Some(x), Some(y)) => x.cmp(y),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                };
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
            }
            pk_a.cmp(pk_b)
        });
        Ok(kept.into_iter().map(|(pk, _)| pk).collect())
    }

    fn ids_of(&self, conn: &Connection, pks: &[i64]) -> Result<Vec<String>> {
        let mut ids = Vec::with_capacity(pks.len());
        for chunk in pks.chunks(500) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let mut stmt = conn.prepare(&format!(
                "SELECT id FROM resources WHERE pk IN ({placeholders})"
            ))?;
            let rows = stmt.query_map(params_from_iter(chunk.iter()), |row| row.get(0))?;
            for id in rows {
                ids.push(id?);
            }
        }
        Ok(ids)
    }

    /// Returns the keys of resources matching `query`, at most `limit` + 1.
    pub(crate) fn search_keys(
        &self,
        conn: &Connection,
        query: &SearchQuery,
        limit: usize,
    ) -> Result<Vec<ResourceKey>> {
        let query = SearchQuery {
            sort: Vec::new(),
            ..query.clone()
        };
        let pks = self.matching_pks(conn, &query)?;
        let pks = &pks[..pks.len().min(limit.saturating_add(1))];
        let mut keys = Vec::with_capacity(pks.len());
        for chunk in pks.chunks(500) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let mut stmt = conn.prepare(&format!(
                "SELECT type, id FROM resources WHERE pk IN ({placeholders}) ORDER BY pk"
            ))?;
            let rows = stmt.query_map(params_from_iter(chunk.iter()), |row| {
                Ok(ResourceKey {
                    resource_type: row.get(0)?,
                    id: row.get(1)?,
                })
            })?;
            for key in rows {
                keys.push(key?);
            }
        }
        Ok(keys)
    }

    /// Runs a search and returns its first page, storing the result set
    /// when it spans more than one page.
    pub(crate) fn search(
        &self,
        conn: &Connection,
        snapshots: &Snapshots,
        query: &SearchQuery,
        page: &PageRequest,
        visible: Option<Visibility<'_>>,
    ) -> Result<SearchPage> {
        let mut pks = self.matching_pks_visible(conn, query, visible)?;
        if let Some(visible) = visible {
            if pks.len() > self.max_scan {
                return Err(StoreError::TooCostly(format!(
                    "{} matches to check (limit {}); add criteria that narrow the search",
                    pks.len(),
                    self.max_scan
                )));
            }
            pks = self
                .load(conn, &pks)?
                .into_iter()
                .filter(|(_, v)| visible(v))
                .map(|(pk, _)| pk)
                .collect();
        }
        let settings = SnapshotSettings {
            includes: query.includes.clone(),
            revincludes: query.revincludes.clone(),
            context: page.context.clone(),
        };
        let snapshot = if pks.len() > page.count {
            Some(snapshots.put(pks.clone(), settings.clone(), page.snapshot_ttl_secs))
        } else {
            None
        };
        self.page(conn, &pks, &settings, snapshot, 0, page.count, visible)
    }

    /// Builds one page of a result set, with its included resources.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn page(
        &self,
        conn: &Connection,
        pks: &[i64],
        settings: &SnapshotSettings,
        snapshot: Option<String>,
        offset: usize,
        count: usize,
        visible: Option<Visibility<'_>>,
    ) -> Result<SearchPage> {
        let start = offset.min(pks.len());
        let end = start.saturating_add(count).min(pks.len());
        let mut matches: Vec<ResourceVersion> = self
            .load(conn, &pks[start..end])?
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        if let Some(visible) = visible {
            matches.retain(|v| visible(v));
        }
        let included = self.includes(conn, &matches, settings, visible)?;
        Ok(SearchPage {
            matches,
            included,
            total: pks.len(),
            offset: start,
            snapshot,
            context: settings.context.clone(),
        })
    }

    fn includes(
        &self,
        conn: &Connection,
        matches: &[ResourceVersion],
        settings: &SnapshotSettings,
        visible: Option<Visibility<'_>>,
    ) -> Result<Vec<ResourceVersion>> {
        if settings.includes.is_empty() && settings.revincludes.is_empty() {
            return Ok(Vec::new());
        }
        let mut seen: HashSet<(String, String)> = matches
            .iter()
            .map(|m| (m.resource_type.clone(), m.id.clone()))
            .collect();
        let mut included = Vec::new();
        let mut frontier: Vec<ResourceVersion> = matches.to_vec();
        let mut first_round = true;
        while !frontier.is_empty() && included.len() < MAX_INCLUDED {
            let mut found_pks = Vec::new();
            for source in &frontier {
                for include in &settings.includes {
                    if first_round || include.iterate {
                        found_pks.extend(self.forward(conn, source, include)?);
                    }
                }
                for include in &settings.revincludes {
                    if first_round || include.iterate {
                        found_pks.extend(self.reverse(conn, source, include)?);
                    }
                }
            }
            found_pks.sort_unstable();
            found_pks.dedup();
            let mut next = Vec::new();
            for (_, version) in self.load(conn, &found_pks)? {
                if included.len() >= MAX_INCLUDED {
                    break;
                }
                if !seen.insert((version.resource_type.clone(), version.id.clone())) {
                    continue;
                }
                if visible.is_some_and(|f| !f(&version)) {
                    continue;
                }
                next.push(version.clone());
                included.push(version);
            }
            frontier = next;
            first_round = false;
        }
        Ok(included)
    }

    /// Resources that `source` references through `include`.
    fn forward(
        &self,
        conn: &Connection,
        source: &ResourceVersion,
        include: &Include,
    ) -> Result<Vec<i64>> {
        if include.source_type != "*" && include.source_type != source.resource_type {
            return Ok(Vec::new());
        }
        let mut stmt = conn.prepare_cached(
            "SELECT t.pk FROM resources s \
             JOIN idx_reference x ON x.res_pk = s.pk \
             JOIN resources t ON t.type = x.target_type AND t.id = x.target_id \
             WHERE s.type = ?1 AND s.id = ?2 AND (?3 = '*' OR x.param = ?3) \
             AND (?4 IS NULL OR t.type = ?4) AND t.deleted = 0",
        )?;
        let pks = stmt
            .query_map(
                params![
                    source.resource_type,
                    source.id,
                    include.param,
                    include.target_type
                ],
                |row| row.get(0),
            )?
            .collect::<rusqlite::Result<Vec<i64>>>()?;
        Ok(pks)
    }

    /// Resources of `include.source_type` that reference `target`.
    fn reverse(
        &self,
        conn: &Connection,
        target: &ResourceVersion,
        include: &Include,
    ) -> Result<Vec<i64>> {
        if include
            .target_type
            .as_deref()
            .is_some_and(|t| t != target.resource_type)
        {
            return Ok(Vec::new());
        }
        let mut stmt = conn.prepare_cached(
            "SELECT s.pk FROM idx_reference x JOIN resources s ON s.pk = x.res_pk \
             WHERE x.target_type = ?1 AND x.target_id = ?2 \
             AND (?3 = '*' OR s.type = ?3) AND (?4 = '*' OR x.param = ?4) AND s.deleted = 0",
        )?;
        let pks = stmt
            .query_map(
                params![
                    target.resource_type,
                    target.id,
                    include.source_type,
                    include.param
                ],
                |row| row.get(0),
            )?
            .collect::<rusqlite::Result<Vec<i64>>>()?;
        Ok(pks)
    }
}
