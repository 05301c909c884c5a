//! The axum routes of the FHIR REST API under `/fhir`, and the extractors
//! that authenticate, negotiate the format and read bodies.

use std::net::{IpAddr, SocketAddr};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::request::Parts;
use http::{HeaderMap, StatusCode, header};
use serde_json::Value;
use ward_audit::record::{Action, Entity, Subtype};
use ward_fhir::IssueType;
use ward_fhir::search::Handling;
use ward_store::HistoryScope;

use crate::AppState;
use crate::access::{Caller, Denial};
use crate::audit::Actor;
use crate::auth::{Principal, RequestAuth, authenticate_request};
use crate::error::{FhirError, FhirResult};
use crate::fhir::engine::{Engine, check_type, query_pairs, truncate};
use crate::fhir::response::{Prefer, if_match, json_response, resource_response, write_response};

/// The request context of every authenticated FHIR handler.
pub struct Ctx {
    /// The caller.
    pub principal: Principal,
    /// The `Prefer` header.
    pub prefer: Prefer,
    /// The decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// The raw query string.
    pub raw_query: String,
    /// The request headers.
    pub headers: HeaderMap,
    /// The peer IP address.
    pub peer: Option<IpAddr>,
}

const JSON_TYPES: [&str; 3] = [
    "application/fhir+json",
    "application/json",
    "application/json+fhir",
];

/// Checks `_format` and `Accept`: JSON is served, anything else is 406.
fn negotiate(headers: &HeaderMap, query: &[(String, String)]) -> FhirResult<()> {
    let not_acceptable = |what: &str| {
        FhirError::new(
            StatusCode::NOT_ACCEPTABLE,
            IssueType::NotSupported,
            format!("{what}; this server returns application/fhir+json only"),
        )
    };
    if let Some((_, format)) = query.iter().find(|(k, _)| k == "_format") {
        let format = format.trim();
        let json = format == "json"
            || JSON_TYPES
                .iter()
                .any(|t| format.split(';').next().is_some_and(|f| f.trim() == *t));
        if !json {
            return Err(not_acceptable(&format!(
                "_format '{}' is not supported",
                truncate(format, 40)
            )));
        }
        return Ok(());
    }
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let acceptable = accept.split(',').any(|item| {
        let media = item.split(';').next().unwrap_or("").trim();
        media.is_empty()
            || media == "*/*"
            || media == "application/*"
            || JSON_TYPES.contains(&media)
    });
    if acceptable {
        Ok(())
    } else {
        Err(not_acceptable(&format!(
            "Accept '{}' is not supported",
            truncate(accept, 60)
        )))
    }
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = FhirError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, FhirError> {
        let raw_query = parts.uri.query().unwrap_or("").to_owned();
        let query = query_pairs(&raw_query)?;
        negotiate(&parts.headers, &query)?;
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip());
        let principal = match authenticate_request(&RequestAuth::from_parts(parts), &state.verifier)
        {
            Ok(principal) => principal,
            Err(err) => {
                let actor = Actor {
                    user_id: "anonymous".to_owned(),
                    network: peer,
                    ..Actor::default()
                };
                let outcome = err.outcome.to_json();
                let reason = crate::audit::ascii(
                    outcome["issue"][0]["diagnostics"]
                        .as_str()
                        .unwrap_or("authentication failed"),
                );
                let record = state.engine.auditor.denial(
                    &actor,
                    subtype_for(&parts.method, parts.uri.path()),
                    action_for(&parts.method),
                    &reason,
                    None,
                    &[],
                );
                state.engine.auditor.commit(record).await?;
                return Err(err);
            }
        };
        if let Err(err) = crate::oauth::check_principal(state, &principal).await {
            if err.status == StatusCode::UNAUTHORIZED {
                let actor = Actor::from_principal(&principal, peer);
                let auditor = &state.engine.auditor;
                let record = auditor.denial(
                    &actor,
                    subtype_for(&parts.method, parts.uri.path()),
                    action_for(&parts.method),
                    "token revoked",
                    None,
                    &[],
                );
                auditor.commit(record).await?;
                crate::audit::alerts::raise(
                    auditor,
                    "revoked_token",
                    Some(&actor),
                    &[("user", principal.subject.clone())],
                )
                .await;
            }
            return Err(err);
        }
        // A token bound to an enrolled device passes only while the device
        // is active and compliant.
        crate::device::gate::check(state, &principal, peer).await?;
        Ok(Ctx {
            principal,
            prefer: Prefer::from_headers(&parts.headers),
            query,
            raw_query,
            headers: parts.headers.clone(),
            peer,
        })
    }
}

/// A FHIR JSON request body.
pub struct FhirBody(pub Value);

impl FromRequest<AppState> for FhirBody {
    type Rejection = FhirError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, FhirError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !JSON_TYPES.contains(&media.as_str()) {
            return Err(FhirError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                IssueType::NotSupported,
                format!(
                    "Content-Type '{}' is not supported; send application/fhir+json",
                    truncate(&content_type, 60)
                ),
            ));
        }
        let bytes = read_body(req, state.engine.limits.max_body_bytes).await?;
        parse_json(&bytes).map(FhirBody)
    }
}

async fn read_body(req: Request, limit: usize) -> FhirResult<Bytes> {
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| {
            FhirError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                IssueType::TooLong,
                format!("the request body is larger than the limit of {limit} bytes"),
            )
        })
}

/// Parses a JSON body; syntax errors name the line and column.
pub fn parse_json(bytes: &[u8]) -> FhirResult<Value> {
    ward_fhir::parse_json_strict(bytes)
        .map_err(|outcome| FhirError::with_outcome(StatusCode::BAD_REQUEST, outcome))
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> FhirResult<T> + Send + 'static,
) -> FhirResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(err) => Err(FhirError::internal(&err)),
    }
}

fn handling(ctx: &Ctx) -> Handling {
    if ctx.prefer.strict {
        Handling::Strict
    } else {
        Handling::Lenient
    }
}

fn self_link(engine: &Engine, path: &str, raw_query: &str) -> String {
    if raw_query.is_empty() {
        format!("{}{path}", engine.base)
    } else {
        format!("{}{path}?{raw_query}", engine.base)
    }
}

/// Builds the routes under `/fhir`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/fhir/metadata", get(metadata))
        .route("/fhir", get(system_search).post(post_bundle))
        .route("/fhir/_history", get(system_history))
        .route("/fhir/_search", axum::routing::post(system_search_post))
        .route(
            "/fhir/{type}",
            get(type_search)
                .post(create)
                .put(conditional_update)
                .delete(conditional_delete),
        )
        .route(
            "/fhir/{type}/_search",
            axum::routing::post(type_search_post),
        )
        .route("/fhir/{type}/_history", get(type_history))
        .route("/fhir/{type}/{id}", get(read).put(update).delete(delete))
        .route("/fhir/{type}/{id}/_history", get(instance_history))
        .route("/fhir/{type}/{id}/_history/{vid}", get(vread))
        .route(
            "/fhir/Patient/{id}/$break-the-glass",
            axum::routing::post(break_the_glass),
        )
}

async fn metadata(State(state): State<AppState>, headers: HeaderMap, uri: http::Uri) -> Response {
    let negotiated =
        query_pairs(uri.query().unwrap_or("")).and_then(|query| negotiate(&headers, &query));
    if let Err(err) = negotiated {
        return err.into_response();
    }
    json_response(StatusCode::OK, &state.capability)
}

async fn read(
    State(state): State<AppState>,
    Path((resource_type, id)): Path<(String, String)>,
    ctx: Ctx,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    let version = run(&state, &ctx, Subtype::Read, move |engine, caller| {
        engine.read(caller, &resource_type, &id)
    })
    .await?;
    let target = Entity::resource(&version.resource_type, &version.id, Some(version.version)).ok();
    let resources = version.resource.iter().cloned().collect();
    audit_read(&state, &ctx, Subtype::Read, target, false, resources).await?;
    if crate::fhir::response::not_modified(&ctx.headers, &version) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        crate::fhir::response::version_headers(response.headers_mut(), &version);
        return Ok(response);
    }
    let resource = version.resource.clone().unwrap_or(Value::Null);
    let resource = shape_single(&ctx, resource);
    Ok(resource_response(&version, &resource))
}

/// Applies `_summary` and `_elements` to a single read.
fn shape_single(ctx: &Ctx, resource: Value) -> Value {
    let param = |name: &str| {
        ctx.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if let Some(elements) = param("_elements") {
        let list: Vec<String> = elements.split(',').map(|e| e.trim().to_owned()).collect();
        return ward_fhir::summary::apply_elements(&resource, &list);
    }
    let mode = match param("_summary") {
        Some("true") => ward_fhir::search::SummaryMode::True,
        Some("text") => ward_fhir::search::SummaryMode::Text,
        Some("data") => ward_fhir::search::SummaryMode::Data,
        _ => return resource,
    };
    ward_fhir::summary::apply_summary(&resource, mode)
}

async fn vread(
    State(state): State<AppState>,
    Path((resource_type, id, vid)): Path<(String, String, String)>,
    ctx: Ctx,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    let version: u64 = vid.parse().map_err(|_| {
        FhirError::not_found(format!(
            "version '{}' is not a version number",
            truncate(&vid, 20)
        ))
    })?;
    let found = run(&state, &ctx, Subtype::Vread, move |engine, caller| {
        engine.vread(caller, &resource_type, &id, version)
    })
    .await?;
    let target = Entity::resource(&found.resource_type, &found.id, Some(found.version)).ok();
    let resources = found.resource.iter().cloned().collect();
    audit_read(&state, &ctx, Subtype::Vread, target, false, resources).await?;
    match &found.resource {
        Some(resource) => Ok(resource_response(&found, resource)),
        None => {
            let mut response = FhirError::new(
                StatusCode::GONE,
                IssueType::Deleted,
                format!(
                    "version {} records the deletion of the resource",
                    found.version
                ),
            )
            .into_response();
            crate::fhir::response::version_headers(response.headers_mut(), &found);
            Ok(response)
        }
    }
}

async fn create(
    State(state): State<AppState>,
    Path(resource_type): Path<String>,
    ctx: Ctx,
    FhirBody(body): FhirBody,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    let is_dispense = resource_type == "MedicationDispense";
    let if_none_exist = ctx
        .headers
        .get("if-none-exist")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_start_matches('?').to_owned());
    let exchange = state.exchange.clone().filter(|_| is_dispense);
    let principal = ctx.principal.clone();
    let (result, report) = run(&state, &ctx, Subtype::Create, move |engine, caller| {
        let mut tx = engine.store.begin()?;
        let result = engine.create(
            tx.as_mut(),
            caller,
            &resource_type,
            body,
            if_none_exist.as_deref(),
            None,
        )?;
        // The dispensing report commits with the dispense or not at all.
        let created = result.version.as_ref().and_then(|v| v.resource.as_ref());
        let report = match (result.status, created) {
            (StatusCode::CREATED, Some(dispense)) => crate::exchange::queue_report_in(
                exchange.as_deref(),
                engine,
                caller,
                &principal,
                tx.as_mut(),
                dispense,
            )?,
            _ => None,
        };
        tx.commit()?;
        Ok((result, report))
    })
    .await?;
    // NOTE: only this route reports dispensing; a MedicationDispense
    // created in a transaction Bundle sends no report.
    if let Some(report) = report {
        crate::exchange::report_dispense(&state, &ctx.principal, ctx.peer, report).await;
    }
    write_result(&state.engine, &ctx, result)
}

fn write_result(
    engine: &Engine,
    ctx: &Ctx,
    result: crate::fhir::engine::WriteResult,
) -> FhirResult<Response> {
    match &result.version {
        Some(version) if !version.is_deleted() => Ok(write_response(
            result.status,
            version,
            &engine.base,
            ctx.prefer.return_preference,
            &result.message,
        )),
        Some(version) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            crate::fhir::response::version_headers(response.headers_mut(), version);
            Ok(response)
        }
        None => Ok(result.status.into_response()),
    }
}

async fn update(
    State(state): State<AppState>,
    Path((resource_type, id)): Path<(String, String)>,
    ctx: Ctx,
    FhirBody(body): FhirBody,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    let if_match = if_match(&ctx.headers)?;
    let result = run(&state, &ctx, Subtype::Update, move |engine, caller| {
        let mut tx = engine.store.begin()?;
        let result = engine.update(tx.as_mut(), caller, &resource_type, &id, body, if_match)?;
        tx.commit()?;
        Ok(result)
    })
    .await?;
    write_result(&state.engine, &ctx, result)
}

async fn conditional_update(
    State(state): State<AppState>,
    Path(resource_type): Path<String>,
    ctx: Ctx,
    FhirBody(body): FhirBody,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    let if_match = if_match(&ctx.headers)?;
    let query = ctx.raw_query.clone();
    let result = run(&state, &ctx, Subtype::Update, move |engine, caller| {
        let mut tx = engine.store.begin()?;
        let result = engine.conditional_update(
            tx.as_mut(),
            caller,
            &resource_type,
            &query,
            body,
            if_match,
        )?;
        tx.commit()?;
        Ok(result)
    })
    .await?;
    write_result(&state.engine, &ctx, result)
}

async fn delete(
    State(state): State<AppState>,
    Path((resource_type, id)): Path<(String, String)>,
    ctx: Ctx,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    let if_match = if_match(&ctx.headers)?;
    let result = run(&state, &ctx, Subtype::Delete, move |engine, caller| {
        let mut tx = engine.store.begin()?;
        let result = engine.delete(tx.as_mut(), caller, &resource_type, &id, if_match)?;
        tx.commit()?;
        Ok(result)
    })
    .await?;
    write_result(&state.engine, &ctx, result)
}

async fn conditional_delete(
    State(state): State<AppState>,
    Path(resource_type): Path<String>,
    ctx: Ctx,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    let query = ctx.raw_query.clone();
    let result = run(&state, &ctx, Subtype::Delete, move |engine, caller| {
        let mut tx = engine.store.begin()?;
        let result = engine.conditional_delete(tx.as_mut(), caller, &resource_type, &query)?;
        tx.commit()?;
        Ok(result)
    })
    .await?;
    write_result(&state.engine, &ctx, result)
}

/// Runs `f` on a blocking thread with the caller's access decisions. A
/// request that access control rejected (403, or 404 for a resource the
/// caller may not see) is recorded in the audit log as a minor failure.
async fn run<T: Send + 'static>(
    state: &AppState,
    ctx: &Ctx,
    subtype: Subtype,
    f: impl FnOnce(&Engine, &Caller<'_>) -> FhirResult<T> + Send + 'static,
) -> FhirResult<T> {
    let engine = state.engine.clone();
    let principal = ctx.principal.clone();
    let peer = ctx.peer;
    let joined = tokio::task::spawn_blocking(move || {
        let mut caller = match engine.access.caller(&*engine.store, &principal) {
            Ok(caller) => caller,
            Err(err) => return (Err(err), Vec::new()),
        };
        caller.set_network(peer);
        let result = f(&engine, &caller);
        (result, caller.take_denials())
    })
    .await;
    let (result, denials) = match joined {
        Ok(done) => done,
        Err(err) => return Err(FhirError::internal(&err)),
    };
    if let Err(err) = &result {
        record_denial(state, ctx, subtype, err, &denials).await?;
    }
    result
}

/// Records a request rejected by access control.
async fn record_denial(
    state: &AppState,
    ctx: &Ctx,
    subtype: Subtype,
    err: &FhirError,
    denials: &[Denial],
) -> FhirResult<()> {
    let forbidden = err.status == StatusCode::FORBIDDEN;
    if !forbidden && denials.is_empty() {
        return Ok(());
    }
    let actor = Actor::from_principal(&ctx.principal, ctx.peer);
    let (reason, target, patients) = match denials.first() {
        Some(denial) => {
            let target = denial
                .id
                .as_deref()
                .and_then(|id| Entity::resource(&denial.resource_type, id, None).ok());
            (denial.reason.clone(), target, denial.patients.clone())
        }
        None => ("access denied".to_owned(), None, Vec::new()),
    };
    let auditor = &state.engine.auditor;
    let record = auditor.denial(
        &actor,
        subtype,
        action_of(subtype),
        &reason,
        target,
        &patients,
    );
    auditor.commit(record).await
}

/// The audit action of an interaction.
fn action_of(subtype: Subtype) -> Action {
    match subtype {
        Subtype::Create => Action::Create,
        Subtype::Update | Subtype::Patch => Action::Update,
        Subtype::Delete => Action::Delete,
        Subtype::Read
        | Subtype::Vread
        | Subtype::Search
        | Subtype::SearchType
        | Subtype::SearchSystem
        | Subtype::History
        | Subtype::HistoryInstance
        | Subtype::HistoryType
        | Subtype::HistorySystem => Action::Read,
        _ => Action::Execute,
    }
}

/// The interaction a rejected request would have been, from its method
/// and path alone.
fn subtype_for(method: &http::Method, path: &str) -> Subtype {
    let segments = path
        .trim_start_matches("/fhir")
        .split('/')
        .filter(|s| !s.is_empty())
        .count();
    match *method {
        http::Method::POST if segments == 0 => Subtype::Transaction,
        http::Method::POST if path.contains('$') => Subtype::Operation,
        http::Method::POST if path.ends_with("_search") => Subtype::Search,
        http::Method::POST => Subtype::Create,
        http::Method::PUT => Subtype::Update,
        http::Method::DELETE => Subtype::Delete,
        _ if path.contains("_history") => Subtype::History,
        _ if segments >= 2 => Subtype::Read,
        _ => Subtype::Search,
    }
}

fn action_for(method: &http::Method) -> Action {
    match *method {
        http::Method::POST => Action::Create,
        http::Method::PUT => Action::Update,
        http::Method::DELETE => Action::Delete,
        _ => Action::Read,
    }
}

/// Records a successful read, search or history before its response is
/// sent, one patient entity per patient whose data `resources` holds.
async fn audit_read(
    state: &AppState,
    ctx: &Ctx,
    subtype: Subtype,
    target: Option<Entity>,
    query: bool,
    resources: Vec<Value>,
) -> FhirResult<()> {
    let auditor = &state.engine.auditor;
    let actor = Actor::from_principal(&ctx.principal, ctx.peer);
    let query = query.then_some(ctx.query.as_slice());
    let records = auditor.read_records(&actor, subtype, target, query, resources.iter());
    let mut patients = Vec::new();
    for record in records {
        for entity in &record.entities {
            if let Entity::Patient { reference } = entity {
                patients.push(reference.trim_start_matches("Patient/").to_owned());
            }
        }
        auditor.commit(record).await?;
    }
    crate::audit::alerts::patients_read(auditor, &actor, &patients).await;
    Ok(())
}

/// The resources of a searchset or history Bundle.
fn bundle_resources(bundle: &Value) -> Vec<Value> {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|entry| entry.get("resource").cloned())
                .collect()
        })
        .unwrap_or_default()
}

async fn run_search(
    state: &AppState,
    ctx: &Ctx,
    resource_type: Option<String>,
    pairs: Vec<(String, String)>,
    link: String,
) -> FhirResult<Response> {
    let handling = handling(ctx);
    let subtype = if resource_type.is_some() {
        Subtype::SearchType
    } else {
        Subtype::SearchSystem
    };
    let bundle = run(state, ctx, subtype, move |engine, caller| {
        engine.search(resource_type.as_deref(), &pairs, handling, &link, caller)
    })
    .await?;
    audit_read(state, ctx, subtype, None, true, bundle_resources(&bundle)).await?;
    Ok(json_response(StatusCode::OK, &bundle))
}

async fn type_search(
    State(state): State<AppState>,
    Path(resource_type): Path<String>,
    ctx: Ctx,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    let link = self_link(&state.engine, &format!("/{resource_type}"), &ctx.raw_query);
    let pairs = ctx.query.clone();
    run_search(&state, &ctx, Some(resource_type), pairs, link).await
}

/// Reads an `application/x-www-form-urlencoded` search body.
async fn form_pairs(req: Request, limit: usize) -> FhirResult<Vec<(String, String)>> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = read_body(req, limit).await?;
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(FhirError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IssueType::NotSupported,
            "_search takes an application/x-www-form-urlencoded body",
        ));
    }
    Ok(url::form_urlencoded::parse(&bytes).into_owned().collect())
}

async fn type_search_post(
    State(state): State<AppState>,
    Path(resource_type): Path<String>,
    ctx: Ctx,
    req: Request,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    let mut pairs = ctx.query.clone();
    pairs.extend(form_pairs(req, state.engine.limits.max_body_bytes).await?);
    let link = format!("{}/{resource_type}", state.engine.base);
    run_search(&state, &ctx, Some(resource_type), pairs, link).await
}

async fn system_search(State(state): State<AppState>, ctx: Ctx) -> FhirResult<Response> {
    let link = self_link(&state.engine, "", &ctx.raw_query);
    let pairs = ctx.query.clone();
    run_search(&state, &ctx, None, pairs, link).await
}

async fn system_search_post(
    State(state): State<AppState>,
    ctx: Ctx,
    req: Request,
) -> FhirResult<Response> {
    let mut pairs = ctx.query.clone();
    pairs.extend(form_pairs(req, state.engine.limits.max_body_bytes).await?);
    let link = state.engine.base.clone();
    run_search(&state, &ctx, None, pairs, link).await
}

async fn history(
    state: &AppState,
    ctx: &Ctx,
    scope: HistoryScope,
    path: &str,
) -> FhirResult<Response> {
    let pairs = ctx.query.clone();
    let link = self_link(&state.engine, path, &ctx.raw_query);
    let (subtype, target) = match &scope {
        HistoryScope::System => (Subtype::HistorySystem, None),
        HistoryScope::Type(_) => (Subtype::HistoryType, None),
        HistoryScope::Instance(t, id) => {
            (Subtype::HistoryInstance, Entity::resource(t, id, None).ok())
        }
    };
    let bundle = run(state, ctx, subtype, move |engine, caller| {
        engine.history(scope, &pairs, &link, caller)
    })
    .await?;
    audit_read(
        state,
        ctx,
        subtype,
        target,
        false,
        bundle_resources(&bundle),
    )
    .await?;
    Ok(json_response(StatusCode::OK, &bundle))
}

async fn system_history(State(state): State<AppState>, ctx: Ctx) -> FhirResult<Response> {
    history(&state, &ctx, HistoryScope::System, "/_history").await
}

async fn type_history(
    State(state): State<AppState>,
    Path(resource_type): Path<String>,
    ctx: Ctx,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    let path = format!("/{resource_type}/_history");
    history(&state, &ctx, HistoryScope::Type(resource_type), &path).await
}

async fn instance_history(
    State(state): State<AppState>,
    Path((resource_type, id)): Path<(String, String)>,
    ctx: Ctx,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    let path = format!("/{resource_type}/{id}/_history");
    history(
        &state,
        &ctx,
        HistoryScope::Instance(resource_type, id),
        &path,
    )
    .await
}

async fn post_bundle(
    State(state): State<AppState>,
    ctx: Ctx,
    FhirBody(body): FhirBody,
) -> FhirResult<Response> {
    let engine = state.engine.clone();
    let principal = ctx.principal.clone();
    let prefer = ctx.prefer.return_preference;
    let explicit = ctx.headers.contains_key("prefer");
    let prefer = if explicit {
        prefer
    } else {
        crate::fhir::response::ReturnPreference::Minimal
    };
    let peer = ctx.peer;
    let bundle =
        blocking(move || engine.process_bundle_from(&principal, peer, &body, prefer)).await?;
    Ok(json_response(StatusCode::OK, &bundle))
}

async fn break_the_glass(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    FhirBody(body): FhirBody,
) -> FhirResult<Response> {
    let engine = state.engine.clone();
    let actor = Actor::from_principal(&ctx.principal, ctx.peer);
    let principal = ctx.principal.clone();
    let granted = blocking(move || engine.break_the_glass(&principal, &actor, &id, &body)).await;
    let (outcome, minutes) = match granted {
        Ok(done) => done,
        Err(err) => {
            record_denial(&state, &ctx, Subtype::EmergencyOverrideStarted, &err, &[]).await?;
            return Err(err);
        }
    };
    let actor = Actor::from_principal(&ctx.principal, ctx.peer);
    crate::audit::alerts::raise(
        &state.engine.auditor,
        "break_the_glass",
        Some(&actor),
        &[
            ("user", ctx.principal.subject.clone()),
            ("minutes", minutes.to_string()),
        ],
    )
    .await;
    Ok(json_response(StatusCode::OK, &outcome))
}
