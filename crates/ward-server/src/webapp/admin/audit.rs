//! The audit screens: the log viewer with filters and paging, the
//! accounting of disclosures of one patient, and the security alerts.
//! They read the audit routes (`/fhir/AuditEvent`,
//! `/fhir/Patient/{id}/$disclosures`) in-process with the administrator's
//! token, so each read of the log is itself recorded.
//!
//! Filters travel in POSTed forms, paging included, so a patient id never
//! reaches a URL or the browser history. Pages follow a keyset cursor (the
//! id of the last record shown), not an offset, so the records each search
//! adds at the head of the log do not shift the pages.
//!
//! NOTE: alerts are audit records and the server keeps no alert state, so
//! there is nothing to acknowledge; the alerts screen lists them only.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::{AdminSession, api_failure, expired_form, require_admin, when};
use crate::AppState;
use crate::oauth::identity;
use crate::webapp::call::{self, Call};
use crate::webapp::html::{WebForm, escape, hidden};
use crate::webapp::signin::{PeerAddr, blocking};

/// Events per page of the viewer.
const PAGE_SIZE: usize = 20;
/// Alerts per page of the alerts screen.
const ALERT_PAGE: usize = 50;
/// The largest rank the pager numbers events with.
const MAX_RANK: usize = 10_000_000;
/// The longest accepted filter text.
const MAX_FILTER_LEN: usize = 100;

/// The event types the viewer can filter on: code and label.
const TYPES: [(&str, &str); 9] = [
    ("", "Any type"),
    ("rest", "FHIR request"),
    ("110114", "Sign-in or sign-out"),
    ("110113", "Security alert or admin change"),
    ("110108", "Device"),
    ("110106", "Sent to another organization"),
    ("110107", "Received from another organization"),
    ("110100", "Server activity"),
    ("110101", "Audit log read"),
];

/// The outcomes the viewer can filter on: code and label.
const OUTCOMES: [(&str, &str); 5] = [
    ("", "Any outcome"),
    ("0", "Success"),
    ("4", "Minor failure (denied)"),
    ("8", "Serious failure"),
    ("12", "Major failure"),
];

/// The viewer's filter form.
#[derive(Deserialize, Default)]
pub struct FilterForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    patient: String,
    #[serde(default, rename = "type")]
    event_type: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    /// The id of the last record of the previous page: the cursor.
    #[serde(default)]
    before: String,
    /// How many events the previous pages showed, for numbering.
    #[serde(default)]
    shown: String,
}

/// The query of the alerts screen: the cursor of an older page.
#[derive(Deserialize, Default)]
pub struct AlertsQuery {
    #[serde(default)]
    before: Option<String>,
}

/// The disclosure form.
#[derive(Deserialize, Default)]
pub struct DisclosureForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    patient: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

/// Parses a `YYYY-MM-DD` date field, which must name a real day. An
/// empty field is `None`.
///
/// # Errors
///
/// A message naming the field and the value.
fn parse_day(label: &str, text: &str) -> Result<Option<time::Date>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let shape_ok = text.len() == 10
        && text.char_indices().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    match time::Date::parse(text, &format) {
        Ok(day) if shape_ok && day.year() >= 1 => Ok(Some(day)),
        _ if shape_ok => Err(format!(
            "{label} is not a real date: {text}. Check the month (01 to 12) and the day."
        )),
        _ => Err(format!("Enter {label} as YYYY-MM-DD.")),
    }
}

/// Checks the From and To fields: real dates, From not after To.
///
/// # Errors
///
/// A message naming what to fix.
fn check_period(from: &str, to: &str) -> Result<(), String> {
    let start = parse_day("From", from)?;
    let end = parse_day("To", to)?;
    if let (Some(start), Some(end)) = (start, end)
        && start > end
    {
        return Err(format!(
            "From ({from}) is after To ({to}). Swap them or clear one."
        ));
    }
    Ok(())
}

fn select(id: &str, label: &str, options: &[(&str, &str)], chosen: &str) -> String {
    let items: String = options
        .iter()
        .map(|(code, text)| {
            format!(
                "<option value=\"{code}\"{}>{text}</option>",
                if *code == chosen { " selected" } else { "" }
            )
        })
        .collect();
    format!("<label for=\"{id}\">{label}</label><select id=\"{id}\" name=\"{id}\">{items}</select>")
}

fn text_input(id: &str, label: &str, hint: &str, value: &str, kind: &str) -> String {
    format!(
        "<label for=\"{id}\">{label}<span class=\"hint\">{hint}</span></label>\
         <input id=\"{id}\" name=\"{id}\" type=\"{kind}\" autocomplete=\"off\" autocapitalize=\"none\" \
          spellcheck=\"false\" maxlength=\"{MAX_FILTER_LEN}\" value=\"{}\">",
        escape(value)
    )
}

/// Maps user ids to sign-in names, to show who acted.
async fn user_names(state: &AppState) -> HashMap<String, String> {
    let store = state.engine.store.clone();
    match blocking(move || identity::list_users(store.as_ref())).await {
        Ok(Ok(users)) => users
            .iter()
            .map(|user| (user.id.clone(), user.username.clone()))
            .collect(),
        _ => HashMap::new(),
    }
}

/// Returns the `type` and `valueString` pairs of an event's detail entity.
fn details(event: &Value) -> Vec<(&str, &str)> {
    event
        .get("entity")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entity| entity.get("detail").and_then(Value::as_array))
        .flatten()
        .filter_map(|detail| {
            Some((
                detail.get("type")?.as_str()?,
                detail.get("valueString")?.as_str()?,
            ))
        })
        .collect()
}

fn outcome_label(code: &str) -> &'static str {
    match code {
        "0" => "success",
        "4" => "denied",
        "8" => "failed",
        "12" => "failed badly",
        _ => "unknown outcome",
    }
}

/// Renders one audit event as a list item.
fn event_card(event: &Value, names: &HashMap<String, String>) -> String {
    let what: Vec<&str> = std::iter::once(event.pointer("/type/display"))
        .chain(
            event
                .get("subtype")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|s| s.get("display")),
        )
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let who: Vec<String> = event
        .get("agent")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|agent| {
            let id = agent
                .pointer("/who/identifier/value")
                .and_then(Value::as_str);
            let reference = agent.pointer("/who/reference").and_then(Value::as_str);
            let shown = match (id.and_then(|id| names.get(id)), id, reference) {
                (Some(name), _, _) => name.clone(),
                (None, Some(id), _) => id.to_owned(),
                (None, None, Some(reference)) => reference.to_owned(),
                _ => return None,
            };
            let role = agent
                .pointer("/role/0/coding/0/code")
                .and_then(Value::as_str)
                .map(|role| format!(" ({})", role.replace('_', " ")))
                .unwrap_or_default();
            Some(format!("{shown}{role}"))
        })
        .collect();
    let entities: Vec<&str> = event
        .get("entity")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entity| entity.pointer("/what/reference").and_then(Value::as_str))
        .collect();
    let outcome = event.get("outcome").and_then(Value::as_str).unwrap_or("");
    let outcome_text = match event.get("outcomeDesc").and_then(Value::as_str) {
        Some(desc) => format!("{}: {desc}", outcome_label(outcome)),
        None => outcome_label(outcome).to_owned(),
    };
    let detail: Vec<String> = details(event)
        .iter()
        .filter(|(name, _)| *name != "request")
        .map(|(name, value)| {
            // Details such as a device's `owner` name users by id.
            let shown = names.get(*value).map_or(*value, String::as_str);
            format!("{name} {shown}")
        })
        .collect();
    let mut lines = vec![format!(
        "<dt>Who</dt><dd>{}</dd>",
        escape(&if who.is_empty() {
            "unknown".to_owned()
        } else {
            who.join(", ")
        })
    )];
    if !entities.is_empty() {
        lines.push(format!(
            "<dt>Records</dt><dd>{}</dd>",
            escape(&entities.join(", "))
        ));
    }
    if !detail.is_empty() {
        lines.push(format!(
            "<dt>Details</dt><dd>{}</dd>",
            escape(&detail.join("; "))
        ));
    }
    format!(
        "<li><p class=\"event-head\"><span class=\"name\">{what}</span> \
         <span class=\"status {class}\">{outcome}</span></p>\
         <p class=\"meta\">{at} · #{seq}</p><dl>{lines}</dl></li>",
        what = escape(&what.join(" · ")),
        class = if outcome == "0" { "good" } else { "bad" },
        outcome = escape(&outcome_text),
        at = escape(&when(event.get("recorded").and_then(Value::as_str), "")),
        seq = escape(event.get("id").and_then(Value::as_str).unwrap_or("")),
        lines = lines.concat(),
    )
}

/// `GET /app/admin/audit`: the newest events, unfiltered.
pub async fn viewer(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
) -> Response {
    let admin = match require_admin(&state, peer, &headers).await {
        Ok(admin) => admin,
        Err(response) => return response,
    };
    render_viewer(&state, &admin, &FilterForm::default()).await
}

/// `POST /app/admin/audit`: the events matching the filters, one page.
pub async fn search(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    WebForm(form): WebForm<FilterForm>,
) -> Response {
    let admin = match require_admin(&state, peer, &headers).await {
        Ok(admin) => admin,
        Err(response) => return response,
    };
    if !admin.active.session.csrf_matches(&form.csrf) {
        return expired_form();
    }
    render_viewer(&state, &admin, &form).await
}

/// Checks the filters and builds the AuditEvent query, or returns a message naming what to fix.
fn audit_query(
    form: &FilterForm,
    names: &HashMap<String, String>,
) -> Result<(String, usize), String> {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    let too_long = [&form.user, &form.patient, &form.from, &form.to]
        .iter()
        .any(|field| field.chars().count() > MAX_FILTER_LEN);
    if too_long {
        return Err(format!(
            "Use at most {MAX_FILTER_LEN} characters in each filter."
        ));
    }
    let user = form.user.trim();
    if !user.is_empty() {
        // A sign-in name is looked up; anything else is matched as a user
        // id, fhirUser reference or client id.
        let id = names
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(user))
            .map_or(user, |(id, _)| id.as_str());
        query.append_pair("agent", id);
    }

    let patient = form.patient.trim().trim_start_matches("Patient/");
    if !patient.is_empty() {
        if !crate::fhir::engine::is_valid_id(patient) {
            return Err(
                "The patient id may hold only letters, digits, '-' and '.' (at most 64)."
                    .to_owned(),
            );
        }
        query.append_pair("patient", patient);
    }

    if !TYPES.iter().any(|(code, _)| *code == form.event_type) {
        return Err("Pick a type from the list.".to_owned());
    }
    if !form.event_type.is_empty() {
        query.append_pair("type", &form.event_type);
    }
    if !OUTCOMES.iter().any(|(code, _)| *code == form.outcome) {
        return Err("Pick an outcome from the list.".to_owned());
    }
    if !form.outcome.is_empty() {
        query.append_pair("outcome", &form.outcome);
    }

    check_period(&form.from, &form.to)?;
    if !form.from.is_empty() {
        query.append_pair("date", &format!("ge{}", form.from));
    }
    if !form.to.is_empty() {
        query.append_pair("date", &format!("le{}", form.to));
    }

    let page_error = || "This page is not valid any more; search again.".to_owned();
    if !form.before.is_empty() {
        let before: u64 = form.before.parse().map_err(|_| page_error())?;
        query.append_pair("_before", &before.to_string());
    }
    let shown: usize = if form.shown.is_empty() {
        0
    } else {
        form.shown
            .parse()
            .ok()
            .filter(|shown| *shown <= MAX_RANK)
            .ok_or_else(page_error)?
    };
    query.append_pair("_count", &PAGE_SIZE.to_string());
    Ok((format!("/fhir/AuditEvent?{}", query.finish()), shown))
}

/// Returns whether a search result Bundle has a next page.
fn has_next(bundle: &Value) -> bool {
    bundle
        .get("link")
        .and_then(Value::as_array)
        .is_some_and(|links| {
            links
                .iter()
                .any(|link| link.get("relation").and_then(Value::as_str) == Some("next"))
        })
}

/// Returns the id of the last event of a page: the cursor of the next.
fn last_id(events: &[&Value]) -> Option<u64> {
    events
        .last()
        .and_then(|event| event.get("id"))
        .and_then(Value::as_str)
        .and_then(|id| id.parse().ok())
}

/// Describes the filters in use, for the collapsed filter form, so the
/// results stay in view on a phone.
fn filter_summary(form: &FilterForm) -> String {
    let label = |options: &[(&str, &'static str)], code: &str| {
        options
            .iter()
            .find(|(known, _)| *known == code)
            .map_or("", |(_, label)| *label)
    };
    let mut parts = Vec::new();
    if !form.user.trim().is_empty() {
        parts.push(format!("user {}", form.user.trim()));
    }
    if !form.patient.trim().is_empty() {
        parts.push("one patient".to_owned());
    }
    if !form.event_type.is_empty() {
        parts.push(label(&TYPES, &form.event_type).to_owned());
    }
    if !form.outcome.is_empty() {
        parts.push(label(&OUTCOMES, &form.outcome).to_owned());
    }
    if !form.from.is_empty() {
        parts.push(format!("from {}", form.from));
    }
    if !form.to.is_empty() {
        parts.push(format!("to {}", form.to));
    }
    if parts.is_empty() {
        "Filters: none".to_owned()
    } else {
        format!("Filters: {}", parts.join(", "))
    }
}

async fn render_viewer(state: &AppState, admin: &AdminSession, form: &FilterForm) -> Response {
    let names = user_names(state).await;
    let filters = format!(
        "<form method=\"post\" action=\"/app/admin/audit\" class=\"filters\">{csrf}\
         <details><summary><span>{summary}</span><span class=\"summary-action\">Change filters</span></summary>\
         {user}{patient}{kind}{outcome}<div class=\"row\"><div>{from}</div><div>{to}</div></div>\
         </details><button type=\"submit\" class=\"wide\">Show events</button></form>",
        csrf = hidden("csrf", admin.csrf()),
        summary = escape(&filter_summary(form)),
        user = text_input(
            "user",
            "User",
            "Sign-in name or user id",
            &form.user,
            "text"
        ),
        patient = text_input(
            "patient",
            "Patient id",
            "Events naming this patient",
            &form.patient,
            "text"
        ),
        kind = select("type", "Type", &TYPES, &form.event_type),
        outcome = select("outcome", "Outcome", &OUTCOMES, &form.outcome),
        from = text_input("from", "From", "Optional", &form.from, "date"),
        to = text_input("to", "To", "Optional", &form.to, "date"),
    );

    let (uri, shown) = match audit_query(form, &names) {
        Ok(query) => query,
        Err(message) => {
            let body = format!(
                "<h1>Audit log</h1>{filters}<p class=\"error\" role=\"alert\">{}</p>",
                escape(&message)
            );
            return admin.page(StatusCode::BAD_REQUEST, "Audit log", &body);
        }
    };

    let reply = call::send(state, admin.peer, Call::get(&uri, admin.token())).await;
    if !reply.status.is_success() {
        return api_failure(admin, &reply, "search the audit log");
    }

    let events = call::resources(&reply.body);
    let more = has_next(&reply.body);
    let items: String = events
        .iter()
        .map(|event| event_card(event, &names))
        .collect();
    let list = if items.is_empty() {
        "<p class=\"empty\" role=\"status\">No event matches these filters.</p>".to_owned()
    } else {
        format!(
            "<p class=\"meta\" role=\"status\">Events {} to {}, newest first.</p>\
             <ol class=\"admin-list events\" aria-label=\"Audit events\">{items}</ol>",
            shown.saturating_add(1),
            shown.saturating_add(events.len())
        )
    };

    let page_form = |label: &str, cursor: Option<(u64, usize)>| {
        let paging = cursor.map_or_else(String::new, |(before, shown)| {
            format!(
                "{}{}",
                hidden("before", &before.to_string()),
                hidden("shown", &shown.to_string())
            )
        });
        format!(
            "<form method=\"post\" action=\"/app/admin/audit\">{}{}{}{}{}{}{}{paging}\
             <button type=\"submit\" class=\"plain\">{label}</button></form>",
            hidden("csrf", admin.csrf()),
            hidden("user", &form.user),
            hidden("patient", &form.patient),
            hidden("type", &form.event_type),
            hidden("outcome", &form.outcome),
            hidden("from", &form.from),
            hidden("to", &form.to),
        )
    };

    let mut pager = String::new();
    if !form.before.is_empty() {
        pager.push_str(&page_form("Newest events", None));
    }
    if more && let Some(before) = last_id(&events) {
        let next = Some((before, shown.saturating_add(events.len()).min(MAX_RANK)));
        pager.push_str(&page_form("Older events", next));
    }
    let body = format!(
        "<h1>Audit log</h1>{filters}{list}<nav class=\"pager\" aria-label=\"Pages\">{pager}</nav>"
    );
    admin.page(StatusCode::OK, "Audit log", &body)
}

fn disclosure_form(admin: &AdminSession, form: &DisclosureForm) -> String {
    format!(
        "<form method=\"post\" action=\"/app/admin/disclosures\">{csrf}{patient}\
         <div class=\"row\"><div>{from}</div><div>{to}</div></div>\
         <button type=\"submit\" class=\"wide\">Show disclosures</button></form>",
        csrf = hidden("csrf", admin.csrf()),
        patient = text_input(
            "patient",
            "Patient id",
            "The id of the Patient record",
            &form.patient,
            "text"
        ),
        from = text_input("from", "From", "Optional", &form.from, "date"),
        to = text_input("to", "To", "Optional", &form.to, "date"),
    )
}

/// `GET /app/admin/disclosures`: the patient picker.
pub async fn disclosures_form(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
) -> Response {
    let admin = match require_admin(&state, peer, &headers).await {
        Ok(admin) => admin,
        Err(response) => return response,
    };
    let body = format!(
        "<h1>Accounting of disclosures</h1><p>Everyone who accessed one patient's records, \
         when, what and why.</p>{}",
        disclosure_form(&admin, &DisclosureForm::default())
    );
    admin.page(StatusCode::OK, "Disclosures", &body)
}

/// `POST /app/admin/disclosures`: the accounting for the chosen patient.
pub async fn disclosures(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    WebForm(form): WebForm<DisclosureForm>,
) -> Response {
    let admin = match require_admin(&state, peer, &headers).await {
        Ok(admin) => admin,
        Err(response) => return response,
    };
    if !admin.active.session.csrf_matches(&form.csrf) {
        return expired_form();
    }

    let picker = disclosure_form(&admin, &form);
    let patient = form
        .patient
        .trim()
        .trim_start_matches("Patient/")
        .to_owned();
    let problem = if patient.is_empty() {
        Some("Enter the patient id.")
    } else if !crate::fhir::engine::is_valid_id(&patient) {
        Some("The patient id may hold only letters, digits, '-' and '.' (at most 64).")
    } else {
        None
    };
    let problem = problem
        .map(str::to_owned)
        .or_else(|| check_period(&form.from, &form.to).err());
    if let Some(message) = problem {
        let body = format!(
            "<h1>Accounting of disclosures</h1>{picker}<p class=\"error\" role=\"alert\">{}</p>",
            escape(&message)
        );
        return admin.page(StatusCode::BAD_REQUEST, "Disclosures", &body);
    }

    let uri = {
        // The serializer is not `Send`, so it ends before the next await.
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if !form.from.is_empty() {
            query.append_pair("start", &form.from);
        }
        if !form.to.is_empty() {
            query.append_pair("end", &form.to);
        }
        format!("/fhir/Patient/{patient}/$disclosures?{}", query.finish())
    };
    let reply = call::send(&state, peer, Call::get(&uri, admin.token())).await;
    if !reply.status.is_success() {
        return api_failure(&admin, &reply, "list the disclosures");
    }

    let names = user_names(&state).await;
    let events = call::resources(&reply.body);
    let items: String = events
        .iter()
        .rev()
        .map(|event| event_card(event, &names))
        .collect();
    let list = if items.is_empty() {
        "<p class=\"empty\" role=\"status\">The audit log names no access to this patient in this period.</p>"
            .to_owned()
    } else {
        format!(
            "<p class=\"meta\" role=\"status\">{} entries, newest first.</p>\
             <ol class=\"admin-list events\" aria-label=\"Disclosures\">{items}</ol>",
            events.len()
        )
    };
    let body = format!("<h1>Accounting of disclosures</h1>{picker}<h2>Entries</h2>{list}");
    admin.page(StatusCode::OK, "Disclosures", &body)
}

/// The AuditEvent query of one page of alerts. An alert is recorded as
/// DICOM 110113 Security Alert with subtype 110132 Use of Restricted
/// Function, action E and outcome 0 (see `crate::audit::alerts`), so token
/// issue and revocation records (subtype 110137) never crowd it out.
fn alerts_query(before: Option<u64>) -> String {
    let mut uri = format!(
        "/fhir/AuditEvent?type=110113&subtype=110132&action=E&outcome=0&_count={ALERT_PAGE}"
    );
    if let Some(before) = before {
        uri.push_str(&format!("&_before={before}"));
    }
    uri
}

/// `GET /app/admin/alerts[?before=ID]`: the security alerts, newest first,
/// a page at a time.
pub async fn alerts(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Query(query): Query<AlertsQuery>,
) -> Response {
    let admin = match require_admin(&state, peer, &headers).await {
        Ok(admin) => admin,
        Err(response) => return response,
    };
    let before = match query.before {
        None => None,
        Some(text) => match text.parse::<u64>() {
            Ok(before) => Some(before),
            Err(_) => {
                let body = "<h1>Alerts</h1><p class=\"error\" role=\"alert\">This page of \
                            alerts is not valid. Open the newest alerts instead.</p>\
                            <p><a class=\"button wide\" href=\"/app/admin/alerts\">Newest alerts</a></p>";
                return admin.page(StatusCode::BAD_REQUEST, "Alerts", body);
            }
        },
    };
    let reply = call::send(
        &state,
        peer,
        Call::get(&alerts_query(before), admin.token()),
    )
    .await;
    if !reply.status.is_success() {
        return api_failure(&admin, &reply, "read the alerts");
    }
    let names = user_names(&state).await;
    let events = call::resources(&reply.body);
    let items: String = events
        .iter()
        .filter(|event| details(event).iter().any(|(name, _)| *name == "alert"))
        .map(|event| {
            let rule = details(event)
                .iter()
                .find(|(name, _)| *name == "alert")
                .map(|(_, rule)| rule.replace('_', " "))
                .unwrap_or_default();
            format!(
                "<li><h2 class=\"alert-rule\">{}</h2>{}</li>",
                escape(&rule),
                event_card(event, &names)
                    .trim_start_matches("<li>")
                    .trim_end_matches("</li>")
            )
        })
        .collect();
    let list = if items.is_empty() {
        let text = if before.is_some() {
            "No older alert."
        } else {
            "No alert has been raised."
        };
        format!("<p class=\"empty\" role=\"status\">{text}</p>")
    } else {
        format!("<ol class=\"admin-list events\" aria-label=\"Alerts\">{items}</ol>")
    };
    let mut pager = String::new();
    if before.is_some() {
        pager.push_str("<a class=\"button plain\" href=\"/app/admin/alerts\">Newest alerts</a>");
    }
    if has_next(&reply.body)
        && let Some(last) = last_id(&events)
    {
        pager.push_str(&format!(
            "<a class=\"button plain\" href=\"/app/admin/alerts?before={last}\">Older alerts</a>"
        ));
    }
    let body = format!(
        "<h1>Alerts</h1><p class=\"hint\">Alerts are audit records; they need no acknowledgement \
         here and stay in the log.</p>{list}<nav class=\"pager\" aria-label=\"Pages\">{pager}</nav>"
    );
    admin.page(StatusCode::OK, "Alerts", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_must_be_real_days() {
        assert_eq!(parse_day("From", ""), Ok(None));
        assert!(parse_day("From", "2026-03-01").unwrap().is_some());
        assert!(parse_day("From", "2028-02-29").unwrap().is_some());
        for shape in ["2026-3-1", "2026-03-01T00:00", "+2026-03-0"] {
            let error = parse_day("From", shape).unwrap_err();
            assert!(error.contains("YYYY-MM-DD"), "{shape}: {error}");
        }
        for impossible in ["2026-13-45", "2026-02-30", "0000-00-00", "2027-02-29"] {
            let error = parse_day("To", impossible).unwrap_err();
            assert!(
                error.contains("To is not a real date"),
                "{impossible}: {error}"
            );
        }
        assert!(check_period("2026-01-01", "2026-01-01").is_ok());
        let error = check_period("2026-02-01", "2026-01-01").unwrap_err();
        assert!(error.contains("is after To"), "{error}");
    }

    #[test]
    fn alerts_are_queried_by_their_markers() {
        let first = alerts_query(None);
        assert!(
            first.contains("type=110113&subtype=110132&action=E&outcome=0"),
            "{first}"
        );
        assert!(!first.contains("_before"), "{first}");
        assert!(alerts_query(Some(77)).ends_with("&_before=77"));
    }

    #[test]
    fn filters_become_a_query() {
        let mut names = HashMap::new();
        names.insert("u-1".to_owned(), "dana".to_owned());
        let form = FilterForm {
            user: "Dana".into(),
            patient: "Patient/p-7".into(),
            outcome: "4".into(),
            from: "2026-01-01".into(),
            before: "345".into(),
            shown: "20".into(),
            ..FilterForm::default()
        };
        let (uri, shown) = audit_query(&form, &names).expect("valid filters");
        assert_eq!(shown, 20);
        assert!(uri.contains("_before=345"), "{uri}");
        assert!(!uri.contains("_offset"), "{uri}");
        assert!(uri.contains("agent=u-1"), "{uri}");
        assert!(uri.contains("patient=p-7"), "{uri}");
        assert!(uri.contains("outcome=4"), "{uri}");
        assert!(uri.contains("date=ge2026-01-01"), "{uri}");
        let bad = FilterForm {
            patient: "a b".into(),
            ..FilterForm::default()
        };
        assert!(audit_query(&bad, &names).is_err());
        let bad_type = FilterForm {
            event_type: "nope".into(),
            ..FilterForm::default()
        };
        assert!(audit_query(&bad_type, &names).is_err());
        for (before, shown) in [("18446744073709551616", ""), ("x", ""), ("", "99999999999")] {
            let paged = FilterForm {
                before: before.into(),
                shown: shown.into(),
                ..FilterForm::default()
            };
            assert!(audit_query(&paged, &names).is_err(), "{before} {shown}");
        }
    }
}
