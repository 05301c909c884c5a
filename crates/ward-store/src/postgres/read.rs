//! Reads, history and search over one PostgreSQL connection. The write
//! transaction runs the same code on its own connection, so its reads see
//! its own changes.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;
use ward_fhir::search::{
    Criterion, Include, IndexEntry, SearchQuery, SortValue, index_resource, matches, sort_value,
};

use crate::codec::ResourceCodec;
use crate::postgres::conn::{Conn, bind, db_error, numbered};
use crate::search::{self, SqlValue};
use crate::types::{
    HistoryCursor, HistoryPage, HistoryRequest, HistoryScope, Method, PageRequest, ResourceKey,
    ResourceVersion, SearchPage, SnapshotSettings, Visibility,
};
use crate::{Result, StoreError};

/// The maximum number of resources `_include` and `_revinclude` add to one
/// page.
const MAX_INCLUDED: usize = 1_000;

/// The columns [`Reader::decode`] expects, from `versions v`.
const VERSION_COLUMNS: &str = "v.type, v.id, v.version, v.last_updated, v.method, v.key_id, v.body";

/// Reads column `index` of `row`.
pub(crate) fn column<'r, T: FromSql<'r>>(row: &'r Row, index: usize) -> Result<T> {
    row.try_get(index).map_err(db_error)
}

/// Stateless read logic bound to a codec.
pub(crate) struct Reader<'a> {
    pub codec: &'a ResourceCodec,
    pub max_scan: usize,
}

impl Reader<'_> {
    /// Decodes a row of [`VERSION_COLUMNS`] starting at column `at`.
    fn decode(&self, row: &Row, at: usize) -> Result<ResourceVersion> {
        let resource_type: String = column(row, at)?;
        let id: String = column(row, at + 1)?;
        let version = u64::try_from(column::<i64>(row, at + 2)?).unwrap_or(0);
        let last_updated: i64 = column(row, at + 3)?;
        let method: String = column(row, at + 4)?;
        let method = Method::parse(&method)
            .ok_or_else(|| StoreError::Integrity(format!("{resource_type}/{id}")))?;
        let key_id: Option<i64> = column(row, at + 5)?;
        let body: Option<Vec<u8>> = column(row, at + 6)?;
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
        conn: &Conn<'_>,
        resource_type: &str,
        id: &str,
    ) -> Result<ResourceVersion> {
        let row = conn.query_opt(
            &format!(
                "SELECT {VERSION_COLUMNS} FROM resources r JOIN versions v ON v.vpk = r.vpk \
                 WHERE r.type = $1 AND r.id = $2"
            ),
            &[&resource_type, &id],
        )?;
        let Some(row) = row else {
            return Err(StoreError::NotFound {
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
            });
        };
        let version = self.decode(&row, 0)?;
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
        conn: &Conn<'_>,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> Result<ResourceVersion> {
        let version_param = i64::try_from(version).unwrap_or(i64::MAX);
        let row = conn.query_opt(
            &format!(
                "SELECT {VERSION_COLUMNS} FROM resources r JOIN versions v ON v.res_pk = r.pk \
                 WHERE r.type = $1 AND r.id = $2 AND v.version = $3"
            ),
            &[&resource_type, &id, &version_param],
        )?;
        match row {
            Some(row) => self.decode(&row, 0),
            None => Err(StoreError::NotFound {
                resource_type: resource_type.to_owned(),
                id: format!("{id}/_history/{version}"),
            }),
        }
    }

    /// Reads a page of history, newest first.
    ///
    /// NOTE: version sequence numbers come from a database sequence, so a
    /// transaction that commits after a later-numbered one can add a version
    /// below a page's high-water mark. Such a version is left out of a history
    /// already being paged; it is never repeated.
    pub(crate) fn history(&self, conn: &Conn<'_>, request: &HistoryRequest) -> Result<HistoryPage> {
        let mut filter = String::from(" WHERE 1 = 1");
        let mut binds: Vec<SqlValue> = Vec::new();
        match &request.scope {
            HistoryScope::System => {}
            HistoryScope::Type(t) => {
                filter.push_str(" AND v.type = ?");
                binds.push(SqlValue::Text(t.clone()));
            }
            HistoryScope::Instance(t, id) => {
                let row = conn.query_opt(
                    "SELECT pk FROM resources WHERE type = $1 AND id = $2",
                    &[t, id],
                )?;
                let Some(row) = row else {
                    return Err(StoreError::NotFound {
                        resource_type: t.clone(),
                        id: id.clone(),
                    });
                };
                filter.push_str(" AND v.res_pk = ?");
                binds.push(SqlValue::Int(column(&row, 0)?));
            }
        }
        if let Some(since) = request.since {
            filter.push_str(" AND v.last_updated >= ?");
            binds.push(SqlValue::Int(since));
        }
        if let Some((low, high)) = request.at {
            // The version started before the range ends, and no later version
            // of the resource replaced it before the range began.
            filter.push_str(
                " AND v.method <> 'delete' AND v.last_updated < ? AND NOT EXISTS \
                 (SELECT 1 FROM versions n WHERE n.res_pk = v.res_pk \
                 AND n.version > v.version AND n.last_updated <= ?)",
            );
            binds.push(SqlValue::Int(high));
            binds.push(SqlValue::Int(low));
        }
        let high_water = match request.cursor {
            Some(cursor) => cursor.high_water,
            None => column(
                &conn.query_one("SELECT COALESCE(MAX(vpk), 0) FROM versions", &[])?,
                0,
            )?,
        };
        filter.push_str(" AND v.vpk <= ?");
        binds.push(SqlValue::Int(high_water));

        let sql = numbered(&format!("SELECT COUNT(*) FROM versions v{filter}"), &binds);
        let rows = conn.query_uncached(&sql, &bind(&binds))?;
        let total: i64 = match rows.first() {
            Some(row) => column(row, 0)?,
            None => 0,
        };

        let mut page_filter = filter;
        let mut page_binds = binds;
        if let Some(cursor) = request.cursor {
            page_filter.push_str(" AND v.vpk < ?");
            page_binds.push(SqlValue::Int(cursor.after));
        }
        let count = request.count.max(1);
        page_binds.push(SqlValue::Int(i64::try_from(count + 1).unwrap_or(i64::MAX)));
        let sql = numbered(
            &format!(
                "SELECT v.vpk, {VERSION_COLUMNS} FROM versions v{page_filter} \
                 ORDER BY v.vpk DESC LIMIT ?"
            ),
            &page_binds,
        );
        let rows = conn.query_uncached(&sql, &bind(&page_binds))?;
        let more = rows.len() > count;
        let mut versions = Vec::with_capacity(count);
        let mut last_vpk = None;
        for row in rows.iter().take(count) {
            last_vpk = Some(column::<i64>(row, 0)?);
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
    pub(crate) fn load(&self, conn: &Conn<'_>, pks: &[i64]) -> Result<Vec<(i64, ResourceVersion)>> {
        if pks.is_empty() {
            return Ok(Vec::new());
        }
        let rows = conn.query(
            &format!(
                "SELECT r.pk, {VERSION_COLUMNS} FROM resources r JOIN versions v ON v.vpk = r.vpk \
                 WHERE r.deleted = 0 AND r.pk = ANY($1)"
            ),
            &[&pks],
        )?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            found.insert(column::<i64>(row, 0)?, self.decode(row, 1)?);
        }
        Ok(pks
            .iter()
            .filter_map(|pk| found.remove(pk).map(|v| (*pk, v)))
            .collect())
    }

    /// Returns the ordered keys (`pk`) of every resource matching the
    /// criteria and sort of `query`.
    pub(crate) fn matching_pks(&self, conn: &Conn<'_>, query: &SearchQuery) -> Result<Vec<i64>> {
        self.matching_pks_visible(conn, query, None)
    }

    /// Like [`Self::matching_pks`]; with `visible`, a chained parameter
    /// matches only target resources the caller may see, so a chain cannot
    /// reveal the content of hidden resources.
    pub(crate) fn matching_pks_visible(
        &self,
        conn: &Conn<'_>,
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
        let sql = numbered(&plan.sql, &plan.params);
        let pks = conn
            .query_uncached(&sql, &bind(&plan.params))?
            .iter()
            .map(|row| column::<i64>(row, 0))
            .collect::<Result<Vec<i64>>>()?;
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

    fn ids_of(&self, conn: &Conn<'_>, pks: &[i64]) -> Result<Vec<String>> {
        if pks.is_empty() {
            return Ok(Vec::new());
        }
        conn.query("SELECT id FROM resources WHERE pk = ANY($1)", &[&pks])?
            .iter()
            .map(|row| column(row, 0))
            .collect()
    }

    /// Returns the keys of resources matching `query`, at most `limit` + 1.
    pub(crate) fn search_keys(
        &self,
        conn: &Conn<'_>,
        query: &SearchQuery,
        limit: usize,
    ) -> Result<Vec<ResourceKey>> {
        let query = SearchQuery {
            sort: Vec::new(),
            ..query.clone()
        };
        let pks = self.matching_pks(conn, &query)?;
        let pks = &pks[..pks.len().min(limit.saturating_add(1))];
        if pks.is_empty() {
            return Ok(Vec::new());
        }
        conn.query(
            "SELECT type, id FROM resources WHERE pk = ANY($1) ORDER BY pk",
            &[&pks],
        )?
        .iter()
        .map(|row| {
            Ok(ResourceKey {
                resource_type: column(row, 0)?,
                id: column(row, 1)?,
            })
        })
        .collect()
    }

    /// Runs a search and returns its first page, storing the result set in
    /// `search_snapshots` when it spans more than one page.
    pub(crate) fn search(
        &self,
        conn: &Conn<'_>,
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
            Some(super::snapshots::put(
                conn,
                self.codec,
                &pks,
                &settings,
                page.snapshot_ttl_secs,
            )?)
        } else {
            None
        };
        self.page(conn, &pks, &settings, snapshot, 0, page.count, visible)
    }

    /// Builds one page of a result set, with its included resources.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn page(
        &self,
        conn: &Conn<'_>,
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
            .load(conn, pks.get(start..end).unwrap_or_default())?
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
        conn: &Conn<'_>,
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
        conn: &Conn<'_>,
        source: &ResourceVersion,
        include: &Include,
    ) -> Result<Vec<i64>> {
        if include.source_type != "*" && include.source_type != source.resource_type {
            return Ok(Vec::new());
        }
        conn.query(
            "SELECT t.pk FROM resources s \
             JOIN idx_reference x ON x.res_pk = s.pk \
             JOIN resources t ON t.type = x.target_type AND t.id = x.target_id \
             WHERE s.type = $1::TEXT AND s.id = $2::TEXT \
             AND ($3::TEXT = '*' OR x.param = $3::TEXT) \
             AND ($4::TEXT IS NULL OR t.type = $4::TEXT) AND t.deleted = 0",
            &[
                &source.resource_type,
                &source.id,
                &include.param,
                &include.target_type,
            ],
        )?
        .iter()
        .map(|row| column(row, 0))
        .collect()
    }

    /// Resources of `include.source_type` that reference `target`.
    fn reverse(
        &self,
        conn: &Conn<'_>,
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
        conn.query(
            "SELECT s.pk FROM idx_reference x JOIN resources s ON s.pk = x.res_pk \
             WHERE x.target_type = $1::TEXT AND x.target_id = $2::TEXT \
             AND ($3::TEXT = '*' OR s.type = $3::TEXT) \
             AND ($4::TEXT = '*' OR x.param = $4::TEXT) AND s.deleted = 0",
            &[
                &target.resource_type,
                &target.id,
                &include.source_type,
                &include.param,
            ],
        )?
        .iter()
        .map(|row| column(row, 0))
        .collect()
    }
}
