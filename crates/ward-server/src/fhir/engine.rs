//! The FHIR interactions themselves, independent of HTTP framing, so a
//! single request and a transaction entry run the same code.

use std::sync::Arc;

use http::StatusCode;
use serde_json::{Map, Value, json};
use ward_fhir::IssueType;
use ward_fhir::search::{Handling, SearchQuery, parse_search};
use ward_store::{ResourceVersion, Store, StoreError, WriteTx};

use crate::access::{Access, Caller};
use crate::audit::Auditor;
use crate::error::{FhirError, FhirResult};
use ward_audit::record::{Action, Subtype};
use ward_auth::policy::Interaction;

/// Request limits. Each is documented in the README.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// The page size when `_count` is absent.
    pub default_count: usize,
    /// The largest page size; larger `_count` values are clamped.
    pub max_count: usize,
    /// How long a search result set stays available for paging, in seconds.
    pub snapshot_ttl_secs: i64,
    /// The maximum number of entries in a batch or transaction Bundle.
    pub max_bundle_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 * 1024 * 1024,
            default_count: 50,
            max_count: 1000,
            snapshot_ttl_secs: 3600,
            max_bundle_entries: 10_000,
        }
    }
}

/// The FHIR engine: a store, the public base URL and the limits.
pub struct Engine {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The FHIR base URL, such as `https://127.0.0.1:8443/fhir`.
    pub base: String,
    /// The limits.
    pub limits: Limits,
    /// The access policy.
    pub access: Access,
    /// Builds and writes the audit records.
    pub auditor: Arc<Auditor>,
}

/// The maximum number of candidates a conditional interaction checks for
/// visibility.
const MAX_CONDITIONAL_CANDIDATES: usize = 1_000;

/// The result of a write interaction.
#[derive(Debug, Clone)]
pub struct WriteResult {
    /// 200, 201 or 204.
    pub status: StatusCode,
    /// The stored version (absent when a delete found nothing to delete).
    pub version: Option<ResourceVersion>,
    /// A human-readable summary for `Prefer: return=OperationOutcome`.
    pub message: String,
}

/// Checks a logical id against the FHIR `id` type: 1 to 64 of
/// `A-Z a-z 0-9 - .`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Rejects writes to `AuditEvent` with 405: the audit log is written by
/// the server alone.
pub fn reject_audit_write(resource_type: &str) -> FhirResult<()> {
    if resource_type == "AuditEvent" {
        return Err(FhirError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            IssueType::NotSupported,
            "AuditEvent is written by the server only; it cannot be created, changed or deleted",
        ));
    }
    Ok(())
}

/// Rejects an unknown resource type in a URL with 404.
pub fn check_type(resource_type: &str) -> FhirResult<()> {
    if ward_fhir::definitions::is_resource_type(resource_type) {
        Ok(())
    } else {
        Err(FhirError::not_found(format!(
            "'{}' is not a FHIR R4 resource type",
            truncate(resource_type, 64)
        )))
    }
}

/// Shortens a client-supplied value for an error message.
pub fn truncate(value: &str, max: usize) -> String {
    if value.chars().count() <= max {
        value.to_owned()
    } else {
        let mut out: String = value.chars().take(max).collect();
        out.push('…');
        out
    }
}

/// Splits a query string into decoded pairs with the
/// `application/x-www-form-urlencoded` rules HTML forms and HTTP clients
/// use: `+` is a space. A timezone offset written with an unencoded `+`
/// therefore arrives as a space, which date parsing accepts in its place.
pub fn query_pairs(query: &str) -> FhirResult<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let decode = |s: &str| {
            let s = s.replace('+', " ");
            percent_encoding::percent_decode_str(&s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| {
                    FhirError::bad_request("query string is not valid UTF-8 after percent-decoding")
                })
        };
        pairs.push((decode(name)?, decode(value)?));
    }
    Ok(pairs)
}

/// Parses a search query, mapping parse failures to 400.
pub fn parse_query(
    resource_type: Option<&str>,
    pairs: &[(String, String)],
    handling: Handling,
) -> FhirResult<SearchQuery> {
    parse_search(resource_type, pairs, handling).map_err(FhirError::from)
}

/// Checks a resource body before it is stored: a JSON object of the
/// expected type that validates against R4. Failures are 400 for the wrong
/// shape or type and 422 for content that breaks R4 rules.
pub fn check_resource(body: &Value, resource_type: &str) -> FhirResult<()> {
    let Some(object) = body.as_object() else {
        return Err(FhirError::invalid_at(
            IssueType::Structure,
            "the body must be a JSON object holding a FHIR resource",
            resource_type,
        ));
    };
    match object.get("resourceType").and_then(Value::as_str) {
        Some(t) if t == resource_type => {}
        Some(t) => {
            return Err(FhirError::invalid_at(
                IssueType::Invalid,
                format!(
                    "resourceType '{}' does not match the URL's type {resource_type}",
                    truncate(t, 64)
                ),
                "resourceType",
            ));
        }
        None => {
            return Err(FhirError::invalid_at(
                IssueType::Required,
                "the body lacks resourceType",
                "resourceType",
            ));
        }
    }
    ward_fhir::validate::validate_resource(body)
        .map_err(|outcome| FhirError::with_outcome(StatusCode::UNPROCESSABLE_ENTITY, outcome))?;
    // A resource with more search values than the index accepts per
    // resource would make every write behind it wait.
    ward_fhir::search::check_index_size(body)
        .map_err(|outcome| FhirError::with_outcome(StatusCode::UNPROCESSABLE_ENTITY, outcome))
}

impl Engine {
    /// Clamps a requested page size.
    pub fn page_size(&self, requested: Option<usize>) -> usize {
        requested
            .unwrap_or(self.limits.default_count)
            .min(self.limits.max_count)
    }

    /// Finds the resources matching a conditional URL's query, at most
    /// `limit` + 1.
    ///
    /// Resources the caller may not see do not count as matches, so a
    /// conditional interaction reveals nothing about them.
    pub(crate) fn conditional_matches(
        &self,
        tx: &mut dyn WriteTx,
        caller: &Caller<'_>,
        resource_type: &str,
        query: &str,
        limit: usize,
    ) -> FhirResult<Vec<ward_store::ResourceKey>> {
        let pairs = query_pairs(query)?;
        if pairs.is_empty() {
            return Err(FhirError::bad_request(
                "a conditional interaction needs search criteria",
            ));
        }
        let query = parse_query(Some(resource_type), &pairs, Handling::Strict)?;
        if !caller.filters_results() {
            return Ok(tx.search_keys(&query, limit)?);
        }
        let mut visible = Vec::new();
        for key in tx.search_keys(&query, MAX_CONDITIONAL_CANDIDATES)? {
            let version = tx.read(&key.resource_type, &key.id)?;
            if caller.can_see(&version) {
                visible.push(key);
                if visible.len() > limit {
                    break;
                }
            }
        }
        Ok(visible)
    }

    /// `create`, with `If-None-Exist` when `if_none_exist` is set.
    pub fn create(
        &self,
        tx: &mut dyn WriteTx,
        caller: &Caller<'_>,
        resource_type: &str,
        mut resource: Value,
        if_none_exist: Option<&str>,
        assigned_id: Option<String>,
    ) -> FhirResult<WriteResult> {
        reject_audit_write(resource_type)?;
        check_resource(&resource, resource_type)?;
        caller.require_type(resource_type, Interaction::Create)?;
        caller.require_resource(Interaction::Create, &resource, true)?;
        if let Some(query) = if_none_exist {
            caller.require_type(resource_type, Interaction::Search)?;
            // The header holds the query part of a search URL. Some clients
            // send the `Type?criteria` form, so that prefix is accepted too.
            let query = query
                .strip_prefix(resource_type)
                .and_then(|rest| rest.strip_prefix('?'))
                .unwrap_or(query);
            let found = self.conditional_matches(tx, caller, resource_type, query, 1)?;
            match found.as_slice() {
                [] => {}
                [key] => {
                    let existing = tx.read(&key.resource_type, &key.id)?;
                    if let Some(resource) = &existing.resource {
                        caller.require_resource(Interaction::Read, resource, false)?;
                    }
                    return Ok(WriteResult {
                        status: StatusCode::OK,
                        version: Some(existing),
                        message: "a matching resource exists; nothing was created".into(),
                    });
                }
                _ => {
                    return Err(FhirError::precondition(
                        "If-None-Exist matched more than one resource; make the criteria more selective",
                    ));
                }
            }
        }
        let id = assigned_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        set_id(&mut resource, &id);
        let version = tx.create(resource)?;
        self.auditor.record_write(
            tx,
            caller.actor(),
            Subtype::Create,
            Action::Create,
            (resource_type, &id, Some(version.version)),
            version.resource.as_ref(),
        )?;
        Ok(WriteResult {
            status: StatusCode::CREATED,
            message: format!("created {resource_type}/{id}"),
            version: Some(version),
        })
    }

    /// `update` of `resource_type/id`, creating it when absent.
    pub fn update(
        &self,
        tx: &mut dyn WriteTx,
        caller: &Caller<'_>,
        resource_type: &str,
        id: &str,
        resource: Value,
        if_match: Option<u64>,
    ) -> FhirResult<WriteResult> {
        if !is_valid_id(id) {
            return Err(FhirError::bad_request(format!(
                "'{}' is not a valid FHIR id (1-64 of A-Z, a-z, 0-9, '-', '.')",
                truncate(id, 70)
            )));
        }
        reject_audit_write(resource_type)?;
        check_resource(&resource, resource_type)?;
        match resource.get("id").and_then(Value::as_str) {
            Some(body_id) if body_id == id => {}
            Some(_) => {
                return Err(FhirError::invalid_at(
                    IssueType::Invalid,
                    format!("the body's id does not match the URL's id {id}"),
                    &format!("{resource_type}.id"),
                ));
            }
            None => {
                return Err(FhirError::invalid_at(
                    IssueType::Required,
                    format!("an update needs the id {id} in the body"),
                    &format!("{resource_type}.id"),
                ));
            }
        }
        caller.require_type(resource_type, Interaction::Update)?;
        match tx.read(resource_type, id) {
            Ok(existing) => {
                if let Some(current) = &existing.resource {
                    caller.require_resource(Interaction::Update, current, false)?;
                }
            }
            Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => {}
            Err(err) => return Err(err.into()),
        }
        caller.require_resource(Interaction::Update, &resource, true)?;
        let (version, created) = tx.update(resource, if_match)?;
        let (subtype, action) = if created {
            (Subtype::Create, Action::Create)
        } else {
            (Subtype::Update, Action::Update)
        };
        self.auditor.record_write(
            tx,
            caller.actor(),
            subtype,
            action,
            (resource_type, id, Some(version.version)),
            version.resource.as_ref(),
        )?;
        Ok(WriteResult {
            status: if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            message: format!(
                "{} {resource_type}/{id} version {}",
                if created { "created" } else { "updated" },
                version.version
            ),
            version: Some(version),
        })
    }

    /// Conditional update: `PUT [type]?criteria`.
    pub fn conditional_update(
        &self,
        tx: &mut dyn WriteTx,
        caller: &Caller<'_>,
        resource_type: &str,
        query: &str,
        mut resource: Value,
        if_match: Option<u64>,
    ) -> FhirResult<WriteResult> {
        check_resource(&resource, resource_type)?;
        // The write itself must be allowed before the criteria run, or the
        // response would reveal whether they match.
        caller.require_type(resource_type, Interaction::Update)?;
        caller.require_type(resource_type, Interaction::Search)?;
        let found = self.conditional_matches(tx, caller, resource_type, query, 1)?;
        let body_id = resource
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        match found.as_slice() {
            [] => match body_id {
                Some(id) => self.update(tx, caller, resource_type, &id, resource, if_match),
                None => self.create(tx, caller, resource_type, resource, None, None),
            },
            [key] => {
                if body_id.as_deref().is_some_and(|b| b != key.id) {
                    return Err(FhirError::bad_request(
                        "the body's id differs from the id of the resource the criteria matched",
                    ));
                }
                set_id(&mut resource, &key.id);
                self.update(
                    tx,
                    caller,
                    resource_type,
                    &key.id.clone(),
                    resource,
                    if_match,
                )
            }
            _ => Err(FhirError::precondition(
                "the criteria matched more than one resource; make them more selective",
            )),
        }
    }

    /// `delete` of `resource_type/id`.
    pub fn delete(
        &self,
        tx: &mut dyn WriteTx,
        caller: &Caller<'_>,
        resource_type: &str,
        id: &str,
        if_match: Option<u64>,
    ) -> FhirResult<WriteResult> {
        reject_audit_write(resource_type)?;
        caller.require_type(resource_type, Interaction::Delete)?;
        let before = match tx.read(resource_type, id) {
            Ok(existing) => {
                if let Some(current) = &existing.resource {
                    caller.require_resource(Interaction::Delete, current, false)?;
                }
                existing.resource
            }
            Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => None,
            Err(err) => return Err(err.into()),
        };
        match tx.delete(resource_type, id, if_match) {
            Ok(marker) => {
                if let Some(marker) = &marker {
                    self.auditor.record_write(
                        tx,
                        caller.actor(),
                        Subtype::Delete,
                        Action::Delete,
                        (resource_type, id, Some(marker.version)),
                        before.as_ref(),
                    )?;
                }
                Ok(WriteResult {
                    status: StatusCode::NO_CONTENT,
                    message: format!("deleted {resource_type}/{id}"),
                    version: marker,
                })
            }
            Err(StoreError::NotFound { .. }) => Err(FhirError::not_found(format!(
                "{resource_type}/{} is not known",
                truncate(id, 70)
            ))),
            Err(err) => Err(err.into()),
        }
    }

    /// Conditional delete: `DELETE [type]?criteria` (single-match mode).
    pub fn conditional_delete(
        &self,
        tx: &mut dyn WriteTx,
        caller: &Caller<'_>,
        resource_type: &str,
        query: &str,
    ) -> FhirResult<WriteResult> {
        caller.require_type(resource_type, Interaction::Delete)?;
        caller.require_type(resource_type, Interaction::Search)?;
        let found = self.conditional_matches(tx, caller, resource_type, query, 1)?;
        match found.as_slice() {
            [] => Ok(WriteResult {
                status: StatusCode::NO_CONTENT,
                version: None,
                message: "no resource matched; nothing was deleted".into(),
            }),
            [key] => self.delete(tx, caller, resource_type, &key.id.clone(), None),
            _ => Err(FhirError::precondition(
                "the criteria matched more than one resource; make them more selective",
            )),
        }
    }

    /// `read`, with the access checks.
    pub fn read(
        &self,
        caller: &Caller<'_>,
        resource_type: &str,
        id: &str,
    ) -> FhirResult<ResourceVersion> {
        caller.require_type(resource_type, Interaction::Read)?;
        let version = self.store.read(resource_type, id)?;
        if let Some(resource) = &version.resource {
            caller.require_resource(Interaction::Read, resource, false)?;
        }
        Ok(version)
    }

    /// `vread`, with the access checks. A deletion marker is checked
    /// against the version before it.
    pub fn vread(
        &self,
        caller: &Caller<'_>,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> FhirResult<ResourceVersion> {
        caller.require_type(resource_type, Interaction::Vread)?;
        let found = self.store.vread(resource_type, id, version)?;
        let checked = match &found.resource {
            Some(_) => found.clone(),
            None if version > 1 => self.store.vread(resource_type, id, version - 1)?,
            None => found.clone(),
        };
        if let Some(resource) = &checked.resource {
            caller.require_resource(Interaction::Vread, resource, false)?;
        }
        Ok(found)
    }

    /// The full URL of a resource.
    pub fn full_url(&self, resource_type: &str, id: &str) -> String {
        format!("{}/{resource_type}/{id}", self.base)
    }
}

/// Sets `resource.id`.
pub fn set_id(resource: &mut Value, id: &str) {
    if let Some(object) = resource.as_object_mut() {
        object.insert("id".into(), Value::String(id.to_owned()));
    }
}

/// A bundle of the given type with entries and optional total and links.
pub fn bundle(
    kind: &str,
    total: Option<usize>,
    links: Vec<(&str, String)>,
    entries: Vec<Value>,
) -> Value {
    let mut bundle = Map::new();
    bundle.insert("resourceType".into(), json!("Bundle"));
    bundle.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
    bundle.insert(
        "meta".into(),
        json!({ "lastUpdated": ward_store::format_instant(now_micros()) }),
    );
    bundle.insert("type".into(), json!(kind));
    if let Some(total) = total {
        bundle.insert("total".into(), json!(total));
    }
    if !links.is_empty() {
        let links: Vec<Value> = links
            .into_iter()
            .map(|(relation, url)| json!({ "relation": relation, "url": url }))
            .collect();
        bundle.insert("link".into(), Value::Array(links));
    }
    if !entries.is_empty() {
        bundle.insert("entry".into(), Value::Array(entries));
    }
    Value::Object(bundle)
}

/// The current time in microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1000).unwrap_or(i64::MAX)
}
