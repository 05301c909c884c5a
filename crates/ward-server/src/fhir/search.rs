//! Search and history: running them against the store and shaping the
//! searchset and history Bundles, with paging links that never repeat or
//! skip an entry.

use serde_json::{Value, json};
use ward_fhir::search::{Handling, SearchQuery, SummaryMode};
use ward_fhir::summary::{apply_elements, apply_summary};
use ward_fhir::{OperationOutcome, OutcomeIssue};
use ward_store::{
    HistoryCursor, HistoryRequest, HistoryScope, Method, PageRequest, ResourceVersion, SearchPage,
};

use crate::access::Caller;
use crate::error::{FhirError, FhirResult};
use crate::fhir::engine::{Engine, bundle, parse_query, truncate};
use crate::fhir::response::http_date;
use ward_auth::policy::Interaction;

/// The page settings kept with a result set for its later pages.
#[derive(Debug, Default, Clone)]
struct PageContext {
    summary: Option<SummaryMode>,
    elements: Option<Vec<String>>,
    /// Who ran the search: only the same caller may read later pages.
    owner: String,
}

fn summary_code(mode: SummaryMode) -> &'static str {
    match mode {
        SummaryMode::True => "true",
        SummaryMode::Text => "text",
        SummaryMode::Data => "data",
        SummaryMode::Count => "count",
        SummaryMode::False => "false",
    }
}

fn summary_from_code(code: &str) -> Option<SummaryMode> {
    Some(match code {
        "true" => SummaryMode::True,
        "text" => SummaryMode::Text,
        "data" => SummaryMode::Data,
        "count" => SummaryMode::Count,
        "false" => SummaryMode::False,
        _ => return None,
    })
}

impl PageContext {
    fn encode(&self) -> String {
        json!({
            "summary": self.summary.map(summary_code),
            "elements": self.elements,
            "owner": self.owner,
        })
        .to_string()
    }

    fn decode(text: &str) -> Self {
        let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let summary = value["summary"].as_str().and_then(summary_from_code);
        let elements = value["elements"].as_array().map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        });
        let owner = value["owner"].as_str().unwrap_or_default().to_owned();
        Self {
            summary,
            elements,
            owner,
        }
    }

    fn shape(&self, resource: &Value) -> Value {
        if let Some(elements) = &self.elements {
            return apply_elements(resource, elements);
        }
        match self.summary {
            Some(mode) => apply_summary(resource, mode),
            None => resource.clone(),
        }
    }
}

/// Finds the value of a parameter in decoded pairs.
fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn parse_usize(pairs: &[(String, String)], name: &str) -> FhirResult<Option<usize>> {
    match param(pairs, name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            FhirError::bad_request(format!(
                "{name} must be a non-negative integer, got '{}'",
                truncate(v, 20)
            ))
        }),
    }
}

impl Engine {
    /// Runs a search (type-level when `resource_type` is set, system-level
    /// otherwise) and returns the searchset Bundle. `self_link` is the URL
    /// that requested it. Results are filtered by the caller's access
    /// before counting and paging, and later pages of the result set are
    /// served to the same caller only.
    pub fn search(
        &self,
        resource_type: Option<&str>,
        pairs: &[(String, String)],
        handling: Handling,
        self_link: &str,
        caller: &Caller<'_>,
    ) -> FhirResult<Value> {
        let owner = caller.page_owner();
        let filter = |v: &ResourceVersion| caller.can_see(v);
        let visible: Option<ward_store::Visibility<'_>> = if caller.filters_results() {
            Some(&filter)
        } else {
            None
        };
        if let Some(snapshot) = param(pairs, "_getpages") {
            let offset = parse_usize(pairs, "_getpagesoffset")?.unwrap_or(0);
            let count = self.page_size(parse_usize(pairs, "_count")?);
            let page = self.store.search_page(snapshot, offset, count, visible)?;
            if PageContext::decode(&page.context).owner != owner {
                // The same answer as an expired result set, so a page id
                // reveals nothing to another caller.
                return Err(ward_store::StoreError::SnapshotExpired(truncate(snapshot, 40)).into());
            }
            return Ok(self.searchset(&page, count, self_link, &[]));
        }
        let query: SearchQuery = parse_query(resource_type, pairs, handling)?;
        for criterion in &query.criteria {
            // A chain searches its target type: the caller must be allowed
            // to, or the chain would reveal what it cannot read.
            if let Some(chain) = &criterion.chain {
                caller.require_type(&chain.target_type, Interaction::Search)?;
            }
        }
        match resource_type {
            Some(t) => caller.require_type(t, Interaction::Search)?,
            None if query.types.is_empty() => caller.require_type("*", Interaction::Search)?,
            None => {
                for t in &query.types {
                    caller.require_type(t, Interaction::Search)?;
                }
            }
        }
        let summary_count = query.summary == Some(SummaryMode::Count);
        let count = if summary_count {
            0
        } else {
            self.page_size(query.count)
        };
        let context = PageContext {
            summary: query.summary,
            elements: query.elements.clone(),
            owner: owner.to_owned(),
        };
        let request = PageRequest {
            count,
            snapshot_ttl_secs: self.limits.snapshot_ttl_secs,
            context: context.encode(),
        };
        let mut page = self.store.search(&query, &request, visible)?;
        // `_count=0`, like `_summary=count`, requests the total alone, so
        // there are no pages to link.
        if count == 0 {
            page.snapshot = None;
        }
        Ok(self.searchset(&page, count, self_link, &query.ignored))
    }

    fn searchset(
        &self,
        page: &SearchPage,
        count: usize,
        self_link: &str,
        ignored: &[String],
    ) -> Value {
        let context = PageContext::decode(&page.context);
        let mut entries: Vec<Value> = Vec::new();
        for version in &page.matches {
            if let Some(resource) = &version.resource {
                entries.push(json!({
                    "fullUrl": self.full_url(&version.resource_type, &version.id),
                    "resource": context.shape(resource),
                    "search": { "mode": "match" },
                }));
            }
        }
        for version in &page.included {
            if let Some(resource) = &version.resource {
                entries.push(json!({
                    "fullUrl": self.full_url(&version.resource_type, &version.id),
                    "resource": resource,
                    "search": { "mode": "include" },
                }));
            }
        }
        if !ignored.is_empty() {
            let names: Vec<String> = ignored.iter().map(|p| truncate(p, 64)).collect();
            let outcome = OperationOutcome::single(OutcomeIssue::warning(
                ward_fhir::IssueType::NotSupported,
                format!(
                    "these parameters were ignored because they are unknown or unsupported: {}",
                    names.join(", ")
                ),
            ));
            entries.push(json!({
                "resource": outcome.to_json(),
                "search": { "mode": "outcome" },
            }));
        }
        let mut links = vec![("self", without_params(self_link, ignored))];
        if let Some(snapshot) = &page.snapshot {
            let page_link = |offset: usize| {
                format!(
                    "{}?_getpages={snapshot}&_getpagesoffset={offset}&_count={count}",
                    self.base
                )
            };
            links.push(("first", page_link(0)));
            // The window of this page decides, not the entries it holds: a
            // match deleted since the search leaves a page short.
            if count > 0 && page.offset + count < page.total {
                links.push(("next", page_link(page.offset + count)));
            }
            if page.offset > 0 {
                links.push(("previous", page_link(page.offset.saturating_sub(count))));
            }
        }
        bundle("searchset", Some(page.total), links, entries)
    }

    /// Reads a page of history and returns the history Bundle.
    ///
    /// Callers whose results are filtered (users, patient context, scope
    /// restrictions) see only versions they may read, no deletion entries
    /// outside instance history, and no `total`.
    pub fn history(
        &self,
        scope: HistoryScope,
        pairs: &[(String, String)],
        self_link: &str,
        caller: &Caller<'_>,
    ) -> FhirResult<Value> {
        match &scope {
            HistoryScope::System => {
                caller.require_type("*", Interaction::History)?;
            }
            HistoryScope::Type(t) => caller.require_type(t, Interaction::History)?,
            HistoryScope::Instance(t, id) => {
                caller.require_type(t, Interaction::History)?;
                self.check_instance_visible(caller, t, id)?;
            }
        }
        let since = match param(pairs, "_since") {
            Some(value) => Some(parse_instant(value, "_since")?),
            None => None,
        };
        // `_at` is a period: a date or partial date covers all of its range.
        let at = match param(pairs, "_at") {
            Some(value) => Some(ward_fhir::search::parse_date_range(value).ok_or_else(|| {
                FhirError::bad_request(format!(
                    "_at must be a FHIR date, dateTime or instant such as 2026-01-31, got '{}'",
                    truncate(value, 40)
                ))
            })?),
            None => None,
        };
        let cursor = match param(pairs, "_cursor") {
            Some(value) => Some(parse_cursor(value)?),
            None => None,
        };
        let count = self.page_size(parse_usize(pairs, "_count")?);
        let request = HistoryRequest {
            scope: scope.clone(),
            since,
            at,
            count,
            cursor,
        };
        let page = self.store.history(&request)?;
        let filtered = caller.filters_results() && !matches!(scope, HistoryScope::Instance(..));
        let entries: Vec<Value> = page
            .versions
            .iter()
            .filter(|v| !filtered || self.history_visible(caller, v))
            .map(|v| self.history_entry(v))
            .collect();
        let mut links = vec![("self", self_link.to_owned())];
        if let Some(next) = page.next_cursor {
            let path = match &scope {
                HistoryScope::System => format!("{}/_history", self.base),
                HistoryScope::Type(t) => format!("{}/{t}/_history", self.base),
                HistoryScope::Instance(t, id) => format!("{}/{t}/{id}/_history", self.base),
            };
            let mut url = format!(
                "{path}?_count={count}&_cursor={}.{}",
                next.high_water, next.after
            );
            for name in ["_since", "_at"] {
                if let Some(value) = param(pairs, name) {
                    url.push_str(&format!(
                        "&{name}={}",
                        percent_encoding::utf8_percent_encode(
                            value,
                            percent_encoding::NON_ALPHANUMERIC
                        )
                    ));
                }
            }
            links.push(("next", url));
        }
        let total = if filtered { None } else { Some(page.total) };
        Ok(bundle("history", total, links, entries))
    }

    /// True when a filtered history may show `version`: the caller may read
    /// it, or, for a deletion, the caller could read the version it deleted,
    /// so that a client which synced the resource also learns of its
    /// deletion.
    fn history_visible(&self, caller: &Caller<'_>, version: &ResourceVersion) -> bool {
        if version.resource.is_some() {
            return caller.can_see(version);
        }
        if version.version <= 1 {
            return false;
        }
        let previous = self
            .store
            .vread(&version.resource_type, &version.id, version.version - 1);
        previous.is_ok_and(|previous| caller.can_see(&previous))
    }

    /// Checks that the caller may see some version of a resource: the
    /// current one, or for a deleted resource the last one before deletion.
    fn check_instance_visible(
        &self,
        caller: &Caller<'_>,
        resource_type: &str,
        id: &str,
    ) -> FhirResult<()> {
        let latest = match self.store.read(resource_type, id) {
            Ok(version) => version,
            Err(ward_store::StoreError::Gone { version, .. }) if version > 1 => {
                self.store.vread(resource_type, id, version - 1)?
            }
            Err(err) => return Err(err.into()),
        };
        if let Some(resource) = &latest.resource {
            caller.require_resource(Interaction::History, resource, false)?;
        }
        Ok(())
    }

    fn history_entry(&self, version: &ResourceVersion) -> Value {
        let url = format!("{}/{}", version.resource_type, version.id);
        let (method, status) = match version.method {
            Method::Create => ("POST", "201 Created"),
            Method::Update => ("PUT", "200 OK"),
            Method::Delete => ("DELETE", "204 No Content"),
        };
        let request_url = match version.method {
            Method::Create => version.resource_type.clone(),
            _ => url.clone(),
        };
        let mut entry = json!({
            "fullUrl": self.full_url(&version.resource_type, &version.id),
            "request": { "method": method, "url": request_url },
            "response": {
                "status": status,
                "etag": format!("W/\"{}\"", version.version),
                "lastModified": ward_store::format_instant(version.last_updated),
            },
        });
        if let Some(resource) = &version.resource {
            entry["resource"] = resource.clone();
        }
        let _ = http_date;
        entry
    }
}

/// Removes the parameters `ignored` from a URL's query, so the self link
/// shows only the parameters the search used.
fn without_params(url: &str, ignored: &[String]) -> String {
    let Some((path, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    if ignored.is_empty() {
        return url.to_owned();
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|part| {
            let name = part.split_once('=').map_or(*part, |(n, _)| n);
            let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
            !ignored.iter().any(|i| *i == name)
        })
        .collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// Parses a `_since`/`_at` instant into microseconds.
fn parse_instant(value: &str, name: &str) -> FhirResult<i64> {
    ward_fhir::search::parse_date_range(value)
        .map(|(low, _)| low)
        .ok_or_else(|| {
            FhirError::bad_request(format!(
                "{name} must be a FHIR instant such as 2026-01-31T12:00:00Z, got '{}'",
                truncate(value, 40)
            ))
        })
}

fn parse_cursor(value: &str) -> FhirResult<HistoryCursor> {
    let bad = || FhirError::bad_request("_cursor is malformed; follow the Bundle's next link");
    let (high, after) = value.split_once('.').ok_or_else(bad)?;
    Ok(HistoryCursor {
        high_water: high.parse().map_err(|_| bad())?,
        after: after.parse().map_err(|_| bad())?,
    })
}
