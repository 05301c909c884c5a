//! Batch and transaction Bundles (`POST [base]`).
//!
//! A transaction runs in one store transaction: ids are assigned to every
//! created resource before any is written, so `urn:uuid` and conditional
//! references resolve whatever the entry order; entries then run in the
//! order DELETE, POST, PUT, GET the specification prescribes, and any
//! failure rolls everything back. A batch runs each entry on its own.

use std::collections::HashMap;

use http::StatusCode;
use serde_json::{Value, json};
use ward_fhir::IssueType;
use ward_fhir::search::Handling;
use ward_store::{HistoryScope, WriteTx};

use crate::access::Caller;
use crate::auth::Principal;
use crate::error::{FhirError, FhirResult};
use crate::fhir::engine::{Engine, WriteResult, bundle, check_type, query_pairs, truncate};
use crate::fhir::response::{ReturnPreference, parse_etag};
use ward_audit::record::{Entity, Subtype};
use ward_auth::policy::Interaction;

/// One entry's request, parsed.
#[derive(Debug, Clone)]
struct EntryRequest {
    method: String,
    resource_type: String,
    id: Option<String>,
    version: Option<u64>,
    history: bool,
    query: Option<String>,
    if_match: Option<u64>,
    if_none_exist: Option<String>,
}

/// Splits an entry's `request.url` (relative, or absolute under our base)
/// into its parts.
fn parse_url(engine: &Engine, url: &str) -> Option<(Vec<String>, Option<String>)> {
    let relative = url
        .strip_prefix(&engine.base)
        .map(|r| r.trim_start_matches('/'))
        .unwrap_or(url);
    let (path, query) = match relative.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (relative, None),
    };
    // Only the path decides whether the URL is ours: search values in the
    // query may be absolute URLs, such as identifier systems.
    if path.contains("://") {
        return None;
    }
    let segments = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    Some((segments, query))
}

fn parse_request(engine: &Engine, entry: &Value, index: usize) -> FhirResult<EntryRequest> {
    let at = |field: &str| format!("Bundle.entry[{index}].request.{field}");
    let request = entry.get("request").ok_or_else(|| {
        FhirError::invalid_at(
            IssueType::Required,
            "each entry needs a request",
            &format!("Bundle.entry[{index}].request"),
        )
    })?;
    let method = request
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            FhirError::invalid_at(
                IssueType::Required,
                "request.method is missing",
                &at("method"),
            )
        })?
        .to_owned();
    if !matches!(method.as_str(), "GET" | "HEAD" | "POST" | "PUT" | "DELETE") {
        return Err(FhirError::invalid_at(
            IssueType::NotSupported,
            format!("request.method {} is not supported", truncate(&method, 10)),
            &at("method"),
        ));
    }
    let url = request.get("url").and_then(Value::as_str).ok_or_else(|| {
        FhirError::invalid_at(IssueType::Required, "request.url is missing", &at("url"))
    })?;
    let bad_url = || {
        FhirError::invalid_at(
            IssueType::Value,
            format!(
                "request.url '{}' is not a URL this server handles",
                truncate(url, 100)
            ),
            &at("url"),
        )
    };
    let (segments, query) = parse_url(engine, url).ok_or_else(bad_url)?;
    let (resource_type, id, history, version) = match segments.as_slice() {
        [t] => (t.clone(), None, false, None),
        [t, id] => (t.clone(), Some(id.clone()), false, None),
        [t, id, h] if h == "_history" => (t.clone(), Some(id.clone()), true, None),
        [t, id, h, v] if h == "_history" => {
            let v = v.parse().map_err(|_| bad_url())?;
            (t.clone(), Some(id.clone()), false, Some(v))
        }
        _ => return Err(bad_url()),
    };
    check_type(&resource_type).map_err(|_| bad_url())?;
    let if_match = match request.get("ifMatch").and_then(Value::as_str) {
        Some(tag) => Some(parse_etag(tag).ok_or_else(|| {
            FhirError::invalid_at(
                IssueType::Value,
                "ifMatch must be an ETag such as W/\"2\"",
                &at("ifMatch"),
            )
        })?),
        None => None,
    };
    let if_none_exist = request
        .get("ifNoneExist")
        .and_then(Value::as_str)
        .map(|q| q.trim_start_matches('?').to_owned());
    Ok(EntryRequest {
        method,
        resource_type,
        id,
        version,
        history,
        query,
        if_match,
        if_none_exist,
    })
}

fn entry_resource(entry: &Value, index: usize) -> FhirResult<Value> {
    entry.get("resource").cloned().ok_or_else(|| {
        FhirError::invalid_at(
            IssueType::Required,
            "a POST or PUT entry needs a resource",
            &format!("Bundle.entry[{index}].resource"),
        )
    })
}

fn interaction_for(request: &EntryRequest) -> Interaction {
    match request.method.as_str() {
        "POST" => Interaction::Create,
        "PUT" => Interaction::Update,
        "DELETE" => Interaction::Delete,
        _ if request.history => Interaction::History,
        _ if request.version.is_some() => Interaction::Vread,
        _ if request.id.is_some() => Interaction::Read,
        _ => Interaction::Search,
    }
}

/// Prefixes the paths of an entry's error with its position in the Bundle.
fn at_entry(mut err: FhirError, index: usize, resource_type: &str) -> FhirError {
    let prefix = format!("Bundle.entry[{index}].resource");
    for issue in &mut err.outcome.issues {
        // Paths already rooted at the Bundle (such as request.url) stay.
        if issue.expression.iter().any(|e| e.starts_with("Bundle.")) {
            continue;
        }
        let nested =
            ward_fhir::OperationOutcome::single(issue.clone()).nest(resource_type, &prefix);
        if let Some(nested) = nested.issues.into_iter().next() {
            *issue = nested;
        }
        if issue.expression.is_empty() {
            issue.expression.push(format!("Bundle.entry[{index}]"));
        }
    }
    err
}

/// Replaces every `reference` in `value` found in `map`, and resolves
/// conditional references (`Patient?identifier=...`) with `resolve`.
fn rewrite_references(
    value: &mut Value,
    map: &HashMap<String, String>,
    resolve: &mut dyn FnMut(&str) -> FhirResult<String>,
) -> FhirResult<()> {
    match value {
        Value::Object(object) => {
            for (key, child) in object.iter_mut() {
                if key == "reference"
                    && let Value::String(reference) = child
                {
                    if let Some(target) = map.get(reference.as_str()) {
                        *reference = target.clone();
                    } else if reference.starts_with("urn:uuid:")
                        || reference.starts_with("urn:oid:")
                    {
                        return Err(FhirError::invalid_at(
                            IssueType::NotFound,
                            format!(
                                "reference {} matches no entry's fullUrl in this Bundle",
                                truncate(reference, 60)
                            ),
                            "reference",
                        ));
                    } else if reference.contains('?') && !reference.starts_with('#') {
                        *reference = resolve(reference)?;
                    }
                    continue;
                }
                rewrite_references(child, map, resolve)?;
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite_references(item, map, resolve)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A step that runs in the store transaction of a transaction Bundle after
/// its last entry, before the commit.
pub type BeforeCommit<'a> = &'a mut dyn FnMut(&mut dyn WriteTx) -> FhirResult<()>;

/// What pass one decided for a POST or PUT entry.
#[derive(Debug, Clone)]
enum Planned {
    /// Create with this id.
    Create(String),
    /// `If-None-Exist` matched this id: nothing to create.
    Exists(String),
    /// Update this id.
    Update(String),
    /// Nothing planned (DELETE, GET).
    None,
}

impl Engine {
    /// Processes a batch or transaction Bundle and returns the response
    /// Bundle.
    pub fn process_bundle(
        &self,
        principal: &Principal,
        body: &Value,
        prefer: ReturnPreference,
    ) -> FhirResult<Value> {
        self.process_bundle_from(principal, None, body, prefer)
    }

    /// Like [`Engine::process_bundle`], for a caller connected from
    /// `network`, which the audit records name.
    pub fn process_bundle_from(
        &self,
        principal: &Principal,
        network: Option<std::net::IpAddr>,
        body: &Value,
        prefer: ReturnPreference,
    ) -> FhirResult<Value> {
        self.process_bundle_inner(principal, network, body, prefer, None)
    }

    /// Processes a transaction Bundle like [`Engine::process_bundle`] and
    /// runs `before_commit` in its store transaction once every entry has
    /// succeeded, so what it writes commits with the entries or not at all.
    /// An error from `before_commit` rolls the whole transaction back.
    pub fn process_transaction_with(
        &self,
        principal: &Principal,
        body: &Value,
        prefer: ReturnPreference,
        before_commit: BeforeCommit<'_>,
    ) -> FhirResult<Value> {
        if body.get("type").and_then(Value::as_str) != Some("transaction") {
            return Err(FhirError::invalid_at(
                IssueType::Value,
                "Bundle.type must be transaction here",
                "Bundle.type",
            ));
        }
        self.process_bundle_inner(principal, None, body, prefer, Some(before_commit))
    }

    fn process_bundle_inner(
        &self,
        principal: &Principal,
        network: Option<std::net::IpAddr>,
        body: &Value,
        prefer: ReturnPreference,
        before_commit: Option<BeforeCommit<'_>>,
    ) -> FhirResult<Value> {
        if body.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(FhirError::invalid_at(
                IssueType::Invalid,
                "POST to the base URL takes a batch or transaction Bundle",
                "resourceType",
            ));
        }
        let kind = body.get("type").and_then(Value::as_str).unwrap_or_default();
        let entries = match body.get("entry") {
            None => Vec::new(),
            Some(Value::Array(entries)) => entries.clone(),
            Some(_) => {
                return Err(FhirError::invalid_at(
                    IssueType::Structure,
                    "Bundle.entry must be an array",
                    "Bundle.entry",
                ));
            }
        };
        if entries.len() > self.limits.max_bundle_entries {
            return Err(FhirError::invalid_at(
                IssueType::TooLong,
                format!(
                    "the Bundle has {} entries; the limit is {}",
                    entries.len(),
                    self.limits.max_bundle_entries
                ),
                "Bundle.entry",
            ));
        }
        match kind {
            "transaction" => {
                let mut caller = self.access.caller(&*self.store, principal)?;
                caller.set_network(network);
                self.transaction(&caller, &entries, prefer, before_commit)
            }
            "batch" => {
                let mut caller = self.access.caller(&*self.store, principal)?;
                caller.set_network(network);
                Ok(self.batch(&caller, &entries, prefer))
            }
            other => Err(FhirError::invalid_at(
                IssueType::Value,
                format!(
                    "Bundle.type must be batch or transaction to be processed, got '{}'",
                    truncate(other, 30)
                ),
                "Bundle.type",
            )),
        }
    }

    fn transaction(
        &self,
        caller: &Caller<'_>,
        entries: &[Value],
        prefer: ReturnPreference,
        before_commit: Option<BeforeCommit<'_>>,
    ) -> FhirResult<Value> {
        let mut requests = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let request = parse_request(self, entry, index)?;
            caller
                .require_type(&request.resource_type, interaction_for(&request))
                .map_err(|e| at_entry(e, index, &request.resource_type))?;
            requests.push(request);
        }

        let mut transaction = self.store.begin()?;
        let tx: &mut dyn WriteTx = transaction.as_mut();

        // Pass one: decide the id of every created or updated resource.
        let mut map: HashMap<String, String> = HashMap::new();
        let mut planned = vec![Planned::None; entries.len()];
        // Conditional creates already planned, by type and criteria, so a
        // second entry with the same criteria finds the first one's resource.
        let mut conditional: HashMap<(String, String), String> = HashMap::new();
        for (index, (entry, request)) in entries.iter().zip(&requests).enumerate() {
            let fail = |e: FhirError| at_entry(e, index, &request.resource_type);
            if let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str)
                && map.contains_key(full_url)
            {
                return Err(FhirError::invalid_at(
                    IssueType::Invalid,
                    "two entries have the same fullUrl; each fullUrl in a Bundle must be unique",
                    &format!("Bundle.entry[{index}].fullUrl"),
                ));
            }
            let condition = match (request.method.as_str(), &request.if_none_exist) {
                ("POST", Some(query)) => Some((request.resource_type.clone(), query.clone())),
                _ => None,
            };
            let plan = match condition.as_ref().and_then(|c| conditional.get(c)) {
                Some(id) => Planned::Exists(id.clone()),
                None => self.plan_entry(tx, caller, entry, request).map_err(fail)?,
            };
            if let (Some(condition), Planned::Create(id)) = (condition, &plan) {
                conditional.insert(condition, id.clone());
            }
            if let Planned::Create(id) | Planned::Exists(id) | Planned::Update(id) = &plan {
                let target = format!("{}/{id}", request.resource_type);
                if let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str) {
                    map.insert(full_url.to_owned(), target);
                }
            }
            planned[index] = plan;
        }

        // Pass two: rewrite references, then run entries in the order
        // DELETE, POST, PUT; GET entries run after the commit.
        let mut responses: Vec<Option<Value>> = vec![None; entries.len()];
        for phase in ["DELETE", "POST", "PUT"] {
            for (index, (entry, request)) in entries.iter().zip(&requests).enumerate() {
                if request.method != phase {
                    continue;
                }
                let fail = |e: FhirError| at_entry(e, index, &request.resource_type);
                let result = self
                    .run_planned(tx, caller, entry, index, request, &planned[index], &map)
                    .map_err(fail)?;
                responses[index] = Some(self.write_entry(&result, prefer));
            }
        }
        if let Some(before_commit) = before_commit {
            before_commit(tx)?;
        }
        transaction.commit()?;

        let mut budget = self.limits.max_bundle_entries;
        for (index, request) in requests.iter().enumerate() {
            if matches!(request.method.as_str(), "GET" | "HEAD") {
                let result = self.run_get(caller, request, &mut budget);
                responses[index] = Some(match result {
                    Ok(entry) => entry,
                    Err(err) => error_entry(&err),
                });
            }
        }
        let entries = responses
            .into_iter()
            .map(|r| r.unwrap_or_else(|| json!({ "response": { "status": "200 OK" } })))
            .collect();
        Ok(bundle("transaction-response", None, Vec::new(), entries))
    }

    /// Pass one of a transaction for one entry.
    fn plan_entry(
        &self,
        tx: &mut dyn WriteTx,
        caller: &Caller<'_>,
        entry: &Value,
        request: &EntryRequest,
    ) -> FhirResult<Planned> {
        Ok(match request.method.as_str() {
            "POST" => {
                let existing = match &request.if_none_exist {
                    Some(q) => self.match_one(tx, caller, &request.resource_type, q)?,
                    None => None,
                };
                match existing {
                    Some(id) => Planned::Exists(id),
                    None => Planned::Create(uuid::Uuid::new_v4().to_string()),
                }
            }
            "PUT" => match (&request.id, &request.query) {
                (Some(id), _) => Planned::Update(id.clone()),
                (None, Some(q)) => match self.match_one(tx, caller, &request.resource_type, q)? {
                    Some(id) => Planned::Update(id),
                    None => {
                        let body_id = entry
                            .pointer("/resource/id")
                            .and_then(Value::as_str)
                            .map(str::to_owned);
                        Planned::Update(body_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()))
                    }
                },
                (None, None) => {
                    return Err(FhirError::bad_request(
                        "a PUT entry needs Type/id or Type?criteria in request.url",
                    ));
                }
            },
            _ => Planned::None,
        })
    }

    /// Pass two of a transaction for one DELETE, POST or PUT entry.
    #[allow(clippy::too_many_arguments)]
    fn run_planned(
        &self,
        tx: &mut dyn WriteTx,
        caller: &Caller<'_>,
        entry: &Value,
        index: usize,
        request: &EntryRequest,
        planned: &Planned,
        map: &HashMap<String, String>,
    ) -> FhirResult<WriteResult> {
        if request.method == "DELETE" {
            return self.run_delete(tx, caller, request);
        }
        match planned {
            Planned::Exists(id) => {
                let existing = tx.read(&request.resource_type, id)?;
                if let Some(resource) = &existing.resource {
                    caller.require_resource(Interaction::Read, resource, false)?;
                }
                Ok(WriteResult {
                    status: StatusCode::OK,
                    version: Some(existing),
                    message: "a matching resource exists; nothing was created".into(),
                })
            }
            Planned::Create(id) | Planned::Update(id) => {
                let mut resource = entry_resource(entry, index)?;
                {
                    let mut resolve =
                        |reference: &str| self.resolve_conditional(tx, caller, reference);
                    rewrite_references(&mut resource, map, &mut resolve)?;
                }
                if request.method == "POST" {
                    self.create(
                        tx,
                        caller,
                        &request.resource_type,
                        resource,
                        None,
                        Some(id.clone()),
                    )
                } else {
                    crate::fhir::engine::set_id(&mut resource, id);
                    self.update(
                        tx,
                        caller,
                        &request.resource_type,
                        id,
                        resource,
                        request.if_match,
                    )
                }
            }
            Planned::None => Err(FhirError::bad_request("entry has nothing to do")),
        }
    }

    /// Finds the one resource a conditional query matches: `None` for no
    /// match, 412 for several.
    fn match_one(
        &self,
        tx: &mut dyn WriteTx,
        caller: &Caller<'_>,
        resource_type: &str,
        query: &str,
    ) -> FhirResult<Option<String>> {
        let found = self.conditional_matches(tx, caller, resource_type, query, 1)?;
        match found.as_slice() {
            [] => Ok(None),
            [key] => Ok(Some(key.id.clone())),
            _ => Err(FhirError::precondition(
                "conditional criteria matched more than one resource; make them more selective",
            )),
        }
    }

    /// Resolves a conditional reference such as `Patient?identifier=x|1`
    /// to `Patient/id`; zero or several matches fail the transaction.
    fn resolve_conditional(
        &self,
        tx: &mut dyn WriteTx,
        caller: &Caller<'_>,
        reference: &str,
    ) -> FhirResult<String> {
        let (resource_type, query) = reference.split_once('?').unwrap_or((reference, ""));
        check_type(resource_type)?;
        match self.match_one(tx, caller, resource_type, query)? {
            Some(id) => Ok(format!("{resource_type}/{id}")),
            None => Err(FhirError::precondition(format!(
                "conditional reference {resource_type}?… matched no resource"
            ))),
        }
    }

    fn run_delete(
        &self,
        tx: &mut dyn WriteTx,
        caller: &Caller<'_>,
        request: &EntryRequest,
    ) -> FhirResult<WriteResult> {
        match (&request.id, &request.query) {
            (Some(id), _) => self.delete(tx, caller, &request.resource_type, id, request.if_match),
            (None, Some(query)) => {
                self.conditional_delete(tx, caller, &request.resource_type, query)
            }
            (None, None) => Err(FhirError::bad_request(
                "a DELETE entry needs Type/id or Type?criteria in request.url",
            )),
        }
    }

    /// The response entry of a write.
    fn write_entry(&self, result: &WriteResult, prefer: ReturnPreference) -> Value {
        let status = format!(
            "{} {}",
            result.status.as_u16(),
            result.status.canonical_reason().unwrap_or("")
        );
        let mut response = json!({ "status": status.trim_end() });
        let mut entry = json!({});
        if let Some(version) = &result.version {
            entry["fullUrl"] = json!(self.full_url(&version.resource_type, &version.id));
            if !version.is_deleted() {
                response["location"] = json!(format!(
                    "{}/{}/_history/{}",
                    version.resource_type, version.id, version.version
                ));
            }
            response["etag"] = json!(format!("W/\"{}\"", version.version));
            response["lastModified"] = json!(ward_store::format_instant(version.last_updated));
            if prefer == ReturnPreference::Representation
                && let Some(resource) = &version.resource
            {
                entry["resource"] = resource.clone();
            }
        }
        if prefer == ReturnPreference::OperationOutcome {
            response["outcome"] = ward_fhir::OperationOutcome::single(
                ward_fhir::OutcomeIssue::information(&result.message),
            )
            .to_json();
        }
        entry["response"] = response;
        entry
    }

    /// Runs a GET entry. `budget` is the number of resources the rest of
    /// the Bundle's GET entries may still return; an entry that would start
    /// with none left fails with `too-costly`, so one request cannot build
    /// an unbounded response.
    fn run_get(
        &self,
        caller: &Caller<'_>,
        request: &EntryRequest,
        budget: &mut usize,
    ) -> FhirResult<Value> {
        if *budget == 0 {
            return Err(FhirError::new(
                StatusCode::BAD_REQUEST,
                IssueType::TooCostly,
                format!(
                    "the GET entries of this Bundle already returned {} resources, the limit for one request",
                    self.limits.max_bundle_entries
                ),
            ));
        }
        let entry = self.run_get_unbounded(caller, request)?;
        let returned = entry["resource"]["entry"].as_array().map_or(1, Vec::len);
        *budget = budget.saturating_sub(returned);
        Ok(entry)
    }

    fn run_get_unbounded(&self, caller: &Caller<'_>, request: &EntryRequest) -> FhirResult<Value> {
        caller.require_type(&request.resource_type, interaction_for(request))?;
        let pairs = match &request.query {
            Some(q) => query_pairs(q)?,
            None => Vec::new(),
        };
        let t = &request.resource_type;
        let resource = match (&request.id, request.version, request.history) {
            (None, _, _) => {
                let link = format!("{}/{t}", self.base);
                self.search(Some(t), &pairs, Handling::Lenient, &link, caller)?
            }
            (Some(id), None, false) => self.read(caller, t, id)?.resource.unwrap_or(Value::Null),
            (Some(id), Some(v), _) => self.vread(caller, t, id, v)?.resource.ok_or_else(|| {
                FhirError::new(
                    StatusCode::GONE,
                    IssueType::Deleted,
                    "that version is a deletion",
                )
            })?,
            (Some(id), None, true) => {
                let link = format!("{}/{t}/{id}/_history", self.base);
                self.history(
                    HistoryScope::Instance(t.clone(), id.clone()),
                    &pairs,
                    &link,
                    caller,
                )?
            }
        };
        self.audit_get(caller, request, &resource)?;
        Ok(json!({ "resource": resource, "response": { "status": "200 OK" } }))
    }

    /// Records a GET entry's read before its response is returned.
    fn audit_get(
        &self,
        caller: &Caller<'_>,
        request: &EntryRequest,
        resource: &Value,
    ) -> FhirResult<()> {
        let is_bundle = resource.get("resourceType").and_then(Value::as_str) == Some("Bundle");
        let (subtype, resources): (Subtype, Vec<&Value>) = if is_bundle {
            let subtype = if request.history {
                Subtype::HistoryInstance
            } else {
                Subtype::SearchType
            };
            let entries = resource
                .get("entry")
                .and_then(Value::as_array)
                .map(|entries| entries.iter().filter_map(|e| e.get("resource")).collect())
                .unwrap_or_default();
            (subtype, entries)
        } else if request.version.is_some() {
            (Subtype::Vread, vec![resource])
        } else {
            (Subtype::Read, vec![resource])
        };
        let target = request
            .id
            .as_deref()
            .and_then(|id| Entity::resource(&request.resource_type, id, request.version).ok());
        let records = self
            .auditor
            .read_records(caller.actor(), subtype, target, None, resources);
        for record in records {
            self.auditor.commit_blocking(&*self.store, record)?;
        }
        Ok(())
    }

    /// Runs every entry of a batch on its own.
    fn batch(&self, caller: &Caller<'_>, entries: &[Value], prefer: ReturnPreference) -> Value {
        let mut responses = Vec::with_capacity(entries.len());
        let mut budget = self.limits.max_bundle_entries;
        for (index, entry) in entries.iter().enumerate() {
            let response = self
                .batch_entry(caller, entry, index, prefer, &mut budget)
                .unwrap_or_else(|err| error_entry(&err));
            responses.push(response);
        }
        bundle("batch-response", None, Vec::new(), responses)
    }

    fn batch_entry(
        &self,
        caller: &Caller<'_>,
        entry: &Value,
        index: usize,
        prefer: ReturnPreference,
        budget: &mut usize,
    ) -> FhirResult<Value> {
        let request = parse_request(self, entry, index)?;
        let fail = |e: FhirError| at_entry(e, index, &request.resource_type);
        caller
            .require_type(&request.resource_type, interaction_for(&request))
            .map_err(fail)?;
        if matches!(request.method.as_str(), "GET" | "HEAD") {
            return self.run_get(caller, &request, budget).map_err(fail);
        }
        let mut transaction = self.store.begin().map_err(|e| fail(e.into()))?;
        let tx = transaction.as_mut();
        let plan = self.plan_entry(tx, caller, entry, &request).map_err(fail)?;
        let result = self
            .run_planned(tx, caller, entry, index, &request, &plan, &HashMap::new())
            .map_err(fail)?;
        transaction.commit().map_err(|e| fail(e.into()))?;
        Ok(self.write_entry(&result, prefer))
    }
}

/// The response entry of a failed batch entry.
fn error_entry(err: &FhirError) -> Value {
    let status = format!(
        "{} {}",
        err.status.as_u16(),
        err.status.canonical_reason().unwrap_or("")
    );
    json!({ "response": { "status": status.trim_end(), "outcome": err.outcome.to_json() } })
}
