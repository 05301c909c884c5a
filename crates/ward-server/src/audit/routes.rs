//! Reading the audit log over HTTPS: `AuditEvent` search and read, the
//! accounting of disclosures of one patient (HIPAA 45 CFR 164.528) and the
//! latest signed checkpoint.
//!
//! Only the `auditor` and `security_admin` roles, and system tokens whose
//! scopes name `AuditEvent` explicitly, may read the log; every read of it
//! is itself recorded (DICOM Audit Log Used).

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use ward_audit::ChainEntry;
use ward_audit::record::{Action, Entity, EventType, Outcome};
use ward_fhir::IssueType;
use ward_store::Store;

use crate::AppState;
use crate::audit::{Actor, Peer};
use crate::auth::{Principal, authenticate};
use crate::error::{FhirError, FhirResult};
use crate::fhir::engine::{bundle, query_pairs, truncate};
use crate::fhir::response::json_response;
use crate::scopes::Permission;

/// The most rows one AuditEvent search reads before it stops.
const MAX_SCAN: u64 = 200_000;
/// Rows read from the store at a time.
const PAGE: u64 = 1000;
/// The largest `_offset` a search accepts. Deeper pages use `_before`.
const MAX_OFFSET: usize = 10_000;

/// Builds the audit routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/audit/checkpoint", get(checkpoint))
        .route("/fhir/AuditEvent", get(search))
        .route("/fhir/AuditEvent/{seq}", get(read))
        .route("/fhir/Patient/{id}/$disclosures", get(disclosures))
}

async fn checkpoint(State(state): State<AppState>) -> Response {
    match state.engine.auditor.latest_checkpoint.read().clone() {
        Some(text) => {
            let mut response = (StatusCode::OK, text).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
        }
        None => FhirError::not_found("no audit checkpoint has been signed yet").into_response(),
    }
}

/// Authenticates the caller and checks that it may read the audit log.
async fn audit_reader(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
) -> FhirResult<(Principal, Actor)> {
    let principal = authenticate(headers, &state.verifier)?;
    crate::oauth::check_principal(state, &principal).await?;
    // A token that names an enrolled device passes only while the device
    // is active and compliant, as on the FHIR API.
    crate::device::gate::check(state, &principal, peer).await?;
    let actor = Actor::from_principal(&principal, peer);
    let role_allowed = matches!(
        principal.role.as_deref(),
        Some("auditor" | "security_admin")
    );
    let system_allowed = principal.role.is_none()
        && principal
            .scopes
            .raw
            .iter()
            .any(|scope| scope.starts_with("system/AuditEvent."));
    let scope_allows = principal
        .scopes
        .allows("AuditEvent", Permission::Read, false)
        || principal
            .scopes
            .allows("AuditEvent", Permission::Search, false);
    if (role_allowed || system_allowed) && scope_allows {
        return Ok((principal, actor));
    }
    let reason = "reading the audit log needs the auditor or security_admin role, or a system/AuditEvent scope";
    let record = state.engine.auditor.denial(
        &actor,
        ward_audit::record::Subtype::Search,
        Action::Read,
        reason,
        None,
        &[],
    );
    state.engine.auditor.commit(record).await?;
    Err(FhirError::forbidden(reason))
}

/// Records that `actor` read the audit log.
async fn record_use(
    state: &AppState,
    actor: &Actor,
    what: &str,
    patient: Option<&str>,
) -> FhirResult<()> {
    let auditor = &state.engine.auditor;
    let mut record = auditor.record(EventType::AuditLogUsed, Action::Read, Outcome::Success);
    record.agents.push(actor.agent());
    record.detail.insert("request".to_owned(), what.to_owned());
    if let Some(patient) = patient
        && let Ok(entity) = Entity::patient(patient)
    {
        record.entities.push(entity);
    }
    auditor.commit(record).await
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

/// Decodes the record of one row.
fn decode(row: &ward_audit::StoredAudit) -> Option<ChainEntry> {
    ChainEntry::from_canonical(&row.canonical).ok()
}

/// One record as an `AuditEvent` Bundle entry.
fn entry(base: &str, entry: &ChainEntry) -> Value {
    let id = entry.seq.to_string();
    json!({
        "fullUrl": format!("{base}/AuditEvent/{id}"),
        "resource": entry.record.to_audit_event(&id),
        "search": { "mode": "match" },
    })
}

async fn read(
    State(state): State<AppState>,
    Path(seq): Path<String>,
    headers: HeaderMap,
    Peer(peer): Peer,
) -> FhirResult<Response> {
    let (_, actor) = audit_reader(&state, &headers, peer).await?;
    let not_found =
        || FhirError::not_found(format!("AuditEvent/{} is not known", truncate(&seq, 30)));
    let number: u64 = seq.parse().map_err(|_| not_found())?;
    record_use(&state, &actor, "read", None).await?;
    let store = state.engine.store.clone();
    let found = blocking(move || Ok(store.audit_rows(number, 1)?)).await?;
    let entry = found
        .iter()
        .find(|row| row.seq == number)
        .and_then(decode)
        .ok_or_else(not_found)?;
    Ok(json_response(
        StatusCode::OK,
        &entry.record.to_audit_event(&seq),
    ))
}

/// The parsed filters of an AuditEvent search.
#[derive(Default)]
struct Filters {
    patient: Option<String>,
    agent: Option<String>,
    dates: Vec<(String, i64, i64)>,
    action: Option<String>,
    outcome: Option<String>,
    event_type: Option<String>,
    subtype: Option<String>,
    /// Only records whose id (sequence number) is below this: a keyset
    /// cursor, so that pages stay stable while new records arrive.
    before: Option<u64>,
    count: usize,
    offset: usize,
}

fn parse_filters(pairs: &[(String, String)]) -> FhirResult<Filters> {
    let mut filters = Filters {
        count: 50,
        ..Filters::default()
    };
    for (name, value) in pairs {
        let value = value.clone();
        match name.as_str() {
            "patient" => {
                filters.patient = Some(value.trim_start_matches("Patient/").to_owned());
            }
            "agent" => filters.agent = Some(value),
            "date" => filters.dates.push(parse_date(&value)?),
            "action" => filters.action = Some(value),
            "outcome" => filters.outcome = Some(value),
            "type" => filters.event_type = Some(code_of(&value)),
            "subtype" => filters.subtype = Some(code_of(&value)),
            "_count" => filters.count = parse_number(name, &value)?.clamp(1, 1000),
            "_offset" => {
                let offset = parse_number(name, &value).ok().filter(|o| *o <= MAX_OFFSET);
                filters.offset = offset.ok_or_else(|| {
                    FhirError::bad_request(format!(
                        "_offset must be an integer from 0 to {MAX_OFFSET}, got '{}'; \
                         page further with _before set to the id of the last record shown",
                        truncate(&value, 20)
                    ))
                })?;
            }
            "_before" => {
                let before = value.parse::<u64>().map_err(|_| {
                    FhirError::bad_request(format!(
                        "_before must be the id of an AuditEvent (a non-negative integer), got '{}'",
                        truncate(&value, 20)
                    ))
                })?;
                filters.before = Some(before);
            }
            "_format" => {}
            other => {
                return Err(FhirError::bad_request(format!(
                    "AuditEvent search does not support the parameter '{}'",
                    truncate(other, 40)
                )));
            }
        }
    }
    Ok(filters)
}

/// Keeps the code of a `system|code` token.
fn code_of(value: &str) -> String {
    value.rsplit('|').next().unwrap_or(value).to_owned()
}

fn parse_number(name: &str, value: &str) -> FhirResult<usize> {
    value.parse().map_err(|_| {
        FhirError::bad_request(format!(
            "{name} must be a non-negative integer, got '{}'",
            truncate(value, 20)
        ))
    })
}

/// Parses `date` with an optional prefix (eq, ne is not supported, gt, lt,
/// ge, le) into the prefix and the value's range in microseconds.
fn parse_date(value: &str) -> FhirResult<(String, i64, i64)> {
    let (prefix, rest) = match value.get(..2) {
        Some(p @ ("eq" | "gt" | "lt" | "ge" | "le")) => (p.to_owned(), &value[2..]),
        _ => ("eq".to_owned(), value),
    };
    let (low, high) = ward_fhir::search::parse_date_range(rest).ok_or_else(|| {
        FhirError::bad_request(format!(
            "date must be a FHIR date or instant with an optional prefix (eq, gt, lt, ge, le), got '{}'",
            truncate(value, 40)
        ))
    })?;
    Ok((prefix, low, high))
}

fn recorded_micros(entry: &ChainEntry) -> i64 {
    i64::try_from(entry.record.recorded.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

impl Filters {
    fn matches(&self, entry: &ChainEntry) -> bool {
        let record = &entry.record;
        if let Some(patient) = &self.patient {
            let reference = format!("Patient/{patient}");
            let named = record
                .entities
                .iter()
                .any(|e| matches!(e, Entity::Patient { reference: r } if *r == reference));
            if !named {
                return false;
            }
        }
        if let Some(agent) = &self.agent {
            let named = record.agents.iter().any(|a| {
                a.user_id.as_deref() == Some(agent)
                    || a.fhir_user.as_deref() == Some(agent)
                    || a.client_id.as_deref() == Some(agent)
            });
            if !named {
                return false;
            }
        }
        let at = recorded_micros(entry);
        for (prefix, low, high) in &self.dates {
            let inside = match prefix.as_str() {
                "gt" => at > *high,
                "lt" => at < *low,
                "ge" => at >= *low,
                "le" => at <= *high,
                _ => at >= *low && at <= *high,
            };
            if !inside {
                return false;
            }
        }
        if self
            .action
            .as_deref()
            .is_some_and(|a| a != record.action.code())
            || self
                .outcome
                .as_deref()
                .is_some_and(|o| o != record.outcome.code())
            || self
                .event_type
                .as_deref()
                .is_some_and(|t| t != record.event_type.coding().code)
        {
            return false;
        }
        if let Some(subtype) = &self.subtype {
            let implied = record.event_type.implied_subtype().map(|c| c.code);
            let named = implied == Some(subtype.as_str())
                || record.subtypes.iter().any(|s| s.coding().code == subtype);
            if !named {
                return false;
            }
        }
        true
    }
}

/// Finds the matches of `filters`, newest first: `(page, more)`.
fn find(store: &dyn Store, filters: &Filters) -> FhirResult<(Vec<ChainEntry>, bool)> {
    // parse_filters bounds both, and the saturating sums keep that true
    // if the bounds change.
    let page_end = filters.offset.saturating_add(filters.count);
    let wanted = page_end.saturating_add(1);
    let mut found = Vec::new();
    if let Some(patient) = &filters.patient {
        let seqs = store.audit_seqs_for_patient(patient, i64::MIN, i64::MAX)?;
        let below = |seq: &&u64| filters.before.is_none_or(|before| **seq < before);
        for seq in seqs.iter().rev().filter(below) {
            let rows = store.audit_rows(*seq, 1)?;
            if let Some(entry) = rows.first().filter(|r| r.seq == *seq).and_then(decode)
                && filters.matches(&entry)
            {
                found.push(entry);
                if found.len() >= wanted {
                    break;
                }
            }
        }
    } else {
        let size = store.audit_head()?.size;
        let size = filters.before.map_or(size, |before| size.min(before));
        let mut end = size;
        let floor = size.saturating_sub(MAX_SCAN);
        while end > floor && found.len() < wanted {
            let start = end.saturating_sub(PAGE).max(floor);
            let limit = usize::try_from(end - start).unwrap_or(usize::MAX);
            let rows = store.audit_rows(start, limit)?;
            for row in rows.iter().rev() {
                if let Some(entry) = decode(row)
                    && filters.matches(&entry)
                {
                    found.push(entry);
                }
            }
            end = start;
        }
    }
    let more = found.len() > page_end;
    let page: Vec<ChainEntry> = found
        .into_iter()
        .skip(filters.offset)
        .take(filters.count)
        .collect();
    Ok((page, more))
}

async fn search(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: http::Uri,
    Peer(peer): Peer,
) -> FhirResult<Response> {
    let (_, actor) = audit_reader(&state, &headers, peer).await?;
    let raw_query = uri.query().unwrap_or("").to_owned();
    let pairs = query_pairs(&raw_query)?;
    let filters = parse_filters(&pairs)?;
    record_use(&state, &actor, "search", filters.patient.as_deref()).await?;
    let store = state.engine.store.clone();
    let base = state.engine.base.clone();
    let (count, offset) = (filters.count, filters.offset);
    let (page, more) = blocking(move || find(&*store, &filters)).await?;
    let entries: Vec<Value> = page.iter().map(|e| entry(&base, e)).collect();
    let self_link = if raw_query.is_empty() {
        format!("{base}/AuditEvent")
    } else {
        format!("{base}/AuditEvent?{raw_query}")
    };
    let mut links = vec![("self", self_link)];
    if more {
        let kept: Vec<String> = raw_query
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("_offset=") && !p.starts_with("_count="))
            .map(str::to_owned)
            .collect();
        let mut next = format!("{base}/AuditEvent?");
        for part in kept {
            next.push_str(&part);
            next.push('&');
        }
        next.push_str(&format!(
            "_count={count}&_offset={}",
            offset.saturating_add(count)
        ));
        links.push(("next", next));
    }
    Ok(json_response(
        StatusCode::OK,
        &bundle("searchset", None, links, entries),
    ))
}

/// One disclosure line: who, when, what, why, outcome.
struct Disclosure {
    seq: u64,
    when: String,
    who: String,
    what: String,
    why: String,
    outcome: String,
}

fn disclosure(entry: &ChainEntry) -> Disclosure {
    let record = &entry.record;
    let who: Vec<String> = record
        .agents
        .iter()
        .map(|a| {
            let mut parts = Vec::new();
            parts.extend(a.user_id.clone());
            parts.extend(a.fhir_user.clone());
            parts.extend(a.client_id.as_ref().map(|c| format!("client {c}")));
            parts.extend(a.roles.iter().map(|r| format!("role {}", r.code)));
            parts.join(" ")
        })
        .collect();
    let mut what: Vec<String> = record
        .subtypes
        .iter()
        .map(|s| s.coding().display.to_owned())
        .collect();
    if what.is_empty() {
        what.push(record.event_type.coding().display.to_owned());
    }
    for entity in &record.entities {
        if let Entity::Resource { reference } = entity {
            what.push(reference.clone());
        }
    }
    let why: Vec<&str> = record
        .purpose_of_use
        .iter()
        .map(|p| match p {
            ward_audit::record::PurposeOfUse::BreakTheGlass => "break the glass",
            ward_audit::record::PurposeOfUse::Treatment => "treatment",
            ward_audit::record::PurposeOfUse::EmergencyTreatment => "emergency treatment",
            _ => "other",
        })
        .collect();
    let outcome = match record.outcome {
        Outcome::Success => "success".to_owned(),
        _ => format!(
            "failure: {}",
            record.outcome_desc.as_deref().unwrap_or("rejected")
        ),
    };
    Disclosure {
        seq: entry.seq,
        when: ward_store::format_instant(recorded_micros(entry)),
        who: who.join("; "),
        what: what.join(" "),
        why: if why.is_empty() {
            "not stated".to_owned()
        } else {
            why.join(", ")
        },
        outcome,
    }
}

/// Quotes a CSV field (RFC 4180) and defuses spreadsheet formulas.
fn csv_field(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    format!("\"{}\"", value.replace('"', "\"\""))
}

fn html_escape(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

async fn disclosures(
    State(state): State<AppState>,
    Path(patient): Path<String>,
    headers: HeaderMap,
    uri: http::Uri,
    Peer(peer): Peer,
) -> FhirResult<Response> {
    let (_, actor) = audit_reader(&state, &headers, peer).await?;
    if !crate::fhir::engine::is_valid_id(&patient) {
        return Err(FhirError::not_found("that patient id is not valid"));
    }
    let pairs = query_pairs(uri.query().unwrap_or(""))?;
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let since = match param("start") {
        Some(v) => parse_date(&v)?.1,
        None => i64::MIN,
    };
    let until = match param("end") {
        Some(v) => parse_date(&v)?.2,
        None => i64::MAX,
    };
    let format = param("_format").unwrap_or_else(|| "json".to_owned());
    if !matches!(format.as_str(), "json" | "csv" | "html") {
        return Err(FhirError::new(
            StatusCode::NOT_ACCEPTABLE,
            IssueType::NotSupported,
            "_format must be json, csv or html",
        ));
    }
    record_use(&state, &actor, "disclosures", Some(&patient)).await?;
    let store = state.engine.store.clone();
    let id = patient.clone();
    let entries = blocking(move || {
        let seqs = store.audit_seqs_for_patient(&id, since, until)?;
        let mut entries = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let rows = store.audit_rows(seq, 1)?;
            if let Some(entry) = rows.first().filter(|r| r.seq == seq).and_then(decode) {
                // The patient's own reads of the audit log are not disclosures.
                if entry.record.event_type != EventType::AuditLogUsed {
                    entries.push(entry);
                }
            }
        }
        Ok(entries)
    })
    .await?;
    match format.as_str() {
        "csv" => Ok(text_response(
            "text/csv; charset=utf-8",
            render_csv(&entries),
        )),
        "html" => Ok(text_response(
            "text/html; charset=utf-8",
            render_html(&patient, &entries),
        )),
        _ => {
            let base = &state.engine.base;
            let list: Vec<Value> = entries.iter().map(|e| entry(base, e)).collect();
            let total = list.len();
            Ok(json_response(
                StatusCode::OK,
                &bundle("searchset", Some(total), Vec::new(), list),
            ))
        }
    }
}

fn text_response(content_type: &'static str, body: String) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    response
}

fn render_csv(entries: &[ChainEntry]) -> String {
    let mut out = String::from("seq,when,who,what,why,outcome\r\n");
    for entry in entries {
        let d = disclosure(entry);
        out.push_str(&format!(
            "{},{},{},{},{},{}\r\n",
            d.seq,
            csv_field(&d.when),
            csv_field(&d.who),
            csv_field(&d.what),
            csv_field(&d.why),
            csv_field(&d.outcome)
        ));
    }
    out
}

fn render_html(patient: &str, entries: &[ChainEntry]) -> String {
    let mut rows = String::new();
    for entry in entries {
        let d = disclosure(entry);
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            html_escape(&d.when),
            html_escape(&d.who),
            html_escape(&d.what),
            html_escape(&d.why),
            html_escape(&d.outcome)
        ));
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Accounting of disclosures</title>\
         <style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #888;padding:4px}}</style></head><body>\n\
         <h1>Accounting of disclosures for Patient/{}</h1>\n\
         <p>{} entries.</p>\n<table><thead><tr><th>When</th><th>Who</th><th>What</th>\
         <th>Why</th><th>Outcome</th></tr></thead><tbody>\n{rows}</tbody></table>\n</body></html>\n",
        html_escape(patient),
        entries.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn offset_is_bounded() {
        let ok = parse_filters(&pairs(&[("_offset", "10000"), ("_count", "1000")])).unwrap();
        assert_eq!(ok.offset, MAX_OFFSET);
        for bad in ["18446744073709551615", "10001", "-1", "x"] {
            let error = parse_filters(&pairs(&[("_offset", bad)]))
                .err()
                .expect("refused");
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{bad}");
            let text = format!("{:?}", error.outcome);
            assert!(text.contains("_offset must be an integer"), "{text}");
        }
    }

    #[test]
    fn before_is_a_cursor() {
        let filters = parse_filters(&pairs(&[("_before", "42")])).unwrap();
        assert_eq!(filters.before, Some(42));
        assert!(parse_filters(&pairs(&[("_before", "-3")])).is_err());
    }
}
