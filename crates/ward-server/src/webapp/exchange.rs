//! Referrals, e-prescriptions and the "Messages" screen of the web app.
//!
//! From a chart the clinician refers the patient to a clinic or prescribes
//! to a pharmacy, each picked from the organizations of the trust bundle
//! whose role fits. The web app builds the message Bundle (see [`bundle`])
//! from the chart as the user may see it. It queues the Bundle through
//! `POST /fhir/$send-message` in-process with the user's token. The access
//! policy, the controlled-substance second factor (the `Ward-TOTP` header)
//! and the audit therefore apply as for any client.
//!
//! "Messages" lists what the user sent, from the web app or a phone, with
//! the outbox status (`GET /exchange/outbox`, the sender's own messages
//! only), newest first, and the lab results (DiagnosticReports filed from a
//! message of an organization trusted as a lab) of the patients the user
//! may see. The web app sends with `subject=Patient/ID`, so its messages
//! link to the chart; a message sent without it shows the patient's name
//! as the message carries it, without a link.
//!
//! The organizations come from the trust bundle in the store, which is
//! configuration shared by every user and carries no patient data.
//!
//! NOTE: the list refreshes by a link, not by a timed reload, because an
//! automatic reload would count as activity and keep an unattended session
//! from reaching its idle timeout.

mod bundle;

use std::net::SocketAddr;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use ward_exchange::{OrgRole, TrustEntry};

use super::call::{self, Call, resources};
use super::html::{AppPage, WebForm, error_page, escape, hidden, see_other};
use super::pages::{expired_form, fhir_failure, patient_name, unknown_handle};
use super::signin::{self, Active, PeerAddr};
use crate::AppState;
use crate::exchange::controlled::{self, Schedule, TOTP_HEADER};

/// The number of sent messages the screen shows.
const SENT_LIMIT: usize = 30;
/// The number of lab results the screen shows.
const RESULTS_LIMIT: usize = 20;
/// Observations copied into a referral, newest first.
const RECENT_OBSERVATIONS: usize = 20;

/// The chart searches whose results a referral carries.
const REFERRAL_CONTEXT: &[(&str, &str)] = &[
    ("Condition", "_count=50"),
    ("Observation", "_sort=-date&_count=20"),
    ("MedicationRequest", "_count=50"),
    ("AllergyIntolerance", "_count=50"),
];

/// The priorities a referral may have, with their labels.
const PRIORITIES: &[(&str, &str)] = &[
    ("routine", "Routine"),
    ("urgent", "Urgent"),
    ("asap", "As soon as possible"),
];

/// The schedules a prescriber may mark, with their labels.
const SCHEDULES: &[(&str, &str)] = &[
    ("", "Not a controlled substance"),
    ("II", "Schedule II"),
    ("III", "Schedule III"),
    ("IV", "Schedule IV"),
    ("V", "Schedule V"),
];

/// A problem with one field of a form.
struct Problem {
    field: &'static str,
    message: String,
}

impl Problem {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// The referral form.
#[derive(Default, Deserialize)]
pub struct ReferralForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    recipient: String,
    #[serde(default)]
    specialty: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    priority: String,
}

/// The prescription form.
#[derive(Default, Deserialize)]
pub struct PrescriptionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    recipient: String,
    #[serde(default)]
    medication: String,
    #[serde(default)]
    rxnorm: String,
    #[serde(default)]
    schedule: String,
    #[serde(default)]
    dose: String,
    #[serde(default)]
    quantity: String,
    #[serde(default)]
    unit: String,
    #[serde(default)]
    refills: String,
    #[serde(default)]
    totp: String,
}

/// The query of the Messages screen.
#[derive(Deserialize)]
pub struct MessagesQuery {
    sent: Option<String>,
}

// ---------------------------------------------------------------------------
// Helpers shared by the screens.

/// Returns the text of a CodeableConcept: its text, a display or a code.
fn concept_text(concept: Option<&Value>) -> String {
    let Some(concept) = concept else {
        return "(no code)".to_owned();
    };
    if let Some(text) = concept.get("text").and_then(Value::as_str) {
        return text.to_owned();
    }
    concept
        .pointer("/coding/0")
        .and_then(|c| c.get("display").or_else(|| c.get("code")))
        .and_then(Value::as_str)
        .unwrap_or("(no code)")
        .to_owned()
}

/// Formats seconds since the Unix epoch as `YYYY-MM-DD HH:MM UTC`.
fn format_time(secs: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => "unknown time".to_owned(),
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Returns the principal behind the session's access token.
fn principal_of(state: &AppState, token: &str) -> Option<crate::auth::Principal> {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).ok()?,
    );
    crate::auth::authenticate(&headers, &state.verifier).ok()
}

/// Returns the organizations of the trust bundle with `role` whose trust
/// has not ended, sorted by name.
async fn partners(state: &AppState, role: OrgRole) -> Result<Vec<TrustEntry>, Response> {
    let store = state.engine.store.clone();
    let listed = signin::blocking(move || ward_exchange::trust::list(&*store)).await?;
    let now = super::session::now_secs();
    match listed {
        Ok(entries) => {
            let mut entries: Vec<TrustEntry> = entries
                .into_iter()
                .filter(|entry| entry.role == role && entry.not_after > now)
                .collect();
            entries.sort_by_key(|entry| entry.name.to_lowercase());
            Ok(entries)
        }
        Err(error) => {
            tracing::error!(target: "ward::webapp", %error, "reading the trust bundle failed");
            Err(error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The list of partner organizations could not be read. Try again.",
            ))
        }
    }
}

/// Reads the patient behind `handle`.
async fn patient_of(
    state: &AppState,
    peer: Option<SocketAddr>,
    active: &Active,
    handle: &str,
) -> Result<(String, Value), Response> {
    let Some(patient_id) = active.session.patient_of(handle) else {
        return Err(unknown_handle());
    };
    let reply = call::send(
        state,
        peer,
        Call::get(&format!("/fhir/Patient/{patient_id}"), active.token()),
    )
    .await;
    if !reply.status.is_success() {
        return Err(fhir_failure(&reply));
    }
    Ok((patient_id, reply.body))
}

/// Returns the name of the signed-in user's Practitioner, or "".
async fn requester_name(state: &AppState, peer: Option<SocketAddr>, token: &str) -> String {
    let Some(fhir_user) = principal_of(state, token).and_then(|p| p.fhir_user) else {
        return String::new();
    };
    if !fhir_user.starts_with("Practitioner/") {
        return String::new();
    }
    let reply = call::send(state, peer, Call::get(&format!("/fhir/{fhir_user}"), token)).await;
    if reply.status.is_success() && reply.body.get("name").is_some() {
        patient_name(&reply.body)
    } else {
        String::new()
    }
}

/// Runs the chart searches of `context` for `patient_id`. A search the
/// user's role may not run is skipped.
async fn chart_context(
    state: &AppState,
    peer: Option<SocketAddr>,
    token: &str,
    patient_id: &str,
    context: &[(&str, &str)],
) -> Result<Vec<Value>, Response> {
    let mut found = Vec::new();
    for (resource_type, query) in context {
        let uri = format!("/fhir/{resource_type}?patient={patient_id}&{query}");
        let reply = call::send(state, peer, Call::get(&uri, token)).await;
        if reply.status == StatusCode::FORBIDDEN {
            continue;
        }
        if !reply.status.is_success() {
            return Err(fhir_failure(&reply));
        }
        let limit = if *resource_type == "Observation" {
            RECENT_OBSERVATIONS
        } else {
            usize::MAX
        };
        found.extend(
            resources(&reply.body)
                .into_iter()
                .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some(resource_type))
                .take(limit)
                .cloned(),
        );
    }
    Ok(found)
}

/// The reason `$send-message` did not queue a message.
struct Rejected {
    status: StatusCode,
    /// The server's explanation, without PHI.
    detail: String,
}

/// Queues `bundle` about the patient `patient_id` for `recipient` through
/// `$send-message`; returns the outbox id.
async fn queue(
    state: &AppState,
    peer: Option<SocketAddr>,
    token: &str,
    recipient: &TrustEntry,
    (bundle, patient_id): (&Value, &str),
    totp: Option<&str>,
) -> Result<String, Rejected> {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("recipient", &recipient.org_id)
        .append_pair("subject", &format!("Patient/{patient_id}"))
        .finish();
    let uri = format!("/fhir/$send-message?{query}");
    let mut call = Call::post_json(&uri, token, bundle);
    if let Some(code) = totp {
        let Ok(value) = HeaderValue::from_str(code) else {
            return Err(Rejected {
                status: StatusCode::BAD_REQUEST,
                detail: "the code must be 6 digits".to_owned(),
            });
        };
        call.extra.insert(TOTP_HEADER, value);
    }
    let reply = call::send(state, peer, call).await;
    if reply.status == StatusCode::ACCEPTED
        && let Some(id) = reply.body.get("id").and_then(Value::as_str)
    {
        return Ok(id.to_owned());
    }
    let detail = reply
        .body
        .pointer("/issue/0/diagnostics")
        .or_else(|| reply.body.pointer("/issue/0/details/text"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    tracing::warn!(target: "ward::webapp", status = reply.status.as_u16(), "$send-message rejected a message from the web app");
    Err(Rejected {
        status: reply.status,
        detail,
    })
}

// ---------------------------------------------------------------------------
// Form rendering.

fn problem_of<'a>(problems: &'a [Problem], field: &str) -> Option<&'a Problem> {
    problems.iter().find(|p| p.field == field)
}

/// Returns the `aria-invalid` attributes and the message of a field.
fn invalid_parts(problems: &[Problem], field: &str) -> (String, String) {
    match problem_of(problems, field) {
        Some(problem) => (
            format!(" aria-invalid=\"true\" aria-describedby=\"{field}-error\""),
            format!(
                "<span class=\"error\" id=\"{field}-error\">{}</span>",
                escape(&problem.message)
            ),
        ),
        None => (String::new(), String::new()),
    }
}

/// Text input attributes beyond the basics.
struct Input<'a> {
    field: &'static str,
    label: &'static str,
    hint: &'static str,
    value: &'a str,
    extra: &'static str,
}

fn text_input(input: &Input<'_>, problems: &[Problem]) -> String {
    let (invalid, message) = invalid_parts(problems, input.field);
    let hint = if input.hint.is_empty() {
        String::new()
    } else {
        format!("<span class=\"hint\">{}</span>", input.hint)
    };
    format!(
        "<label for=\"{field}\">{label}{hint}</label>{message}\
         <input id=\"{field}\" name=\"{field}\" value=\"{value}\"{extra}{invalid}>",
        field = input.field,
        label = input.label,
        value = escape(input.value),
        extra = input.extra,
    )
}

fn textarea(input: &Input<'_>, problems: &[Problem]) -> String {
    let (invalid, message) = invalid_parts(problems, input.field);
    let hint = if input.hint.is_empty() {
        String::new()
    } else {
        format!("<span class=\"hint\">{}</span>", input.hint)
    };
    format!(
        "<label for=\"{field}\">{label}{hint}</label>{message}\
         <textarea id=\"{field}\" name=\"{field}\" rows=\"3\"{extra}{invalid}>{value}</textarea>",
        field = input.field,
        label = input.label,
        value = escape(input.value),
        extra = input.extra,
    )
}

fn select(field: &str, label: &str, options: &[(&str, &str)], chosen: &str) -> String {
    let options: String = options
        .iter()
        .map(|(value, text)| {
            let selected = if *value == chosen { " selected" } else { "" };
            format!("<option value=\"{value}\"{selected}>{text}</option>")
        })
        .collect();
    format!(
        "<label for=\"{field}\">{label}</label><select id=\"{field}\" name=\"{field}\">{options}</select>"
    )
}

/// Renders the radio group of recipient organizations.
fn recipient_choice(
    legend: &str,
    orgs: &[TrustEntry],
    chosen: &str,
    problems: &[Problem],
) -> String {
    let (invalid, message) = invalid_parts(problems, "recipient");
    let only = orgs.len() == 1;
    let options: String = orgs
        .iter()
        .enumerate()
        .map(|(index, org)| {
            let checked = if org.org_id == chosen || (only && chosen.is_empty()) {
                " checked"
            } else {
                ""
            };
            let id = if index == 0 {
                "recipient".to_owned()
            } else {
                format!("recipient-{index}")
            };
            format!(
                "<label class=\"choice\" for=\"{id}\"><input type=\"radio\" id=\"{id}\" \
                 name=\"recipient\" value=\"{value}\"{checked}{invalid}> <span>{name}\
                 <span class=\"hint\">Organization id {value}</span></span></label>",
                value = escape(&org.org_id),
                name = escape(&org.name),
            )
        })
        .collect();
    format!("<fieldset class=\"choices\"><legend>{legend}</legend>{message}{options}</fieldset>")
}

fn error_summary(problems: &[Problem]) -> String {
    if problems.is_empty() {
        return String::new();
    }
    let items: String = problems
        .iter()
        .map(|p| {
            format!(
                "<li><a href=\"#{}\">{}</a></li>",
                p.field,
                escape(&p.message)
            )
        })
        .collect();
    format!(
        "<div class=\"error\" role=\"alert\"><p>Nothing was sent. Fix these fields:</p><ul>{items}</ul></div>"
    )
}

fn no_partner(active: &Active, handle: &str, role: &str, title: &'static str) -> Response {
    let body = format!(
        "<h1>{title}</h1><p class=\"empty\" role=\"status\">No {role} is in this server's trust \
         bundle, so there is nowhere to send this. An administrator adds one with \
         <code>ward org trust</code>.</p><p><a href=\"/app/p/{handle}\">Back to the chart</a></p>"
    );
    AppPage::new(StatusCode::OK, title, body)
        .signed_in(active.bar())
        .into_response()
}

// ---------------------------------------------------------------------------
// Referral.

/// `GET /app/p/{handle}/refer`: the referral form.
pub async fn referral_form(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path(handle): Path<String>,
) -> Response {
    let active = match signin::require(&state, peer, &headers).await {
        Ok(active) => active,
        Err(response) => return response,
    };
    let (_, patient) = match patient_of(&state, peer, &active, &handle).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let orgs = match partners(&state, OrgRole::Clinic).await {
        Ok(orgs) => orgs,
        Err(response) => return response,
    };
    let form = ReferralForm {
        priority: "routine".to_owned(),
        ..ReferralForm::default()
    };
    render_referral(
        &active,
        &handle,
        &patient,
        &orgs,
        &form,
        &[],
        StatusCode::OK,
    )
}

fn render_referral(
    active: &Active,
    handle: &str,
    patient: &Value,
    orgs: &[TrustEntry],
    form: &ReferralForm,
    problems: &[Problem],
    status: StatusCode,
) -> Response {
    if orgs.is_empty() {
        return no_partner(active, handle, "clinic", "Referral");
    }
    let body = format!(
        "<h1>Refer {name}</h1>{summary}\
         <form class=\"exchange-form\" method=\"post\" action=\"/app/p/{handle}/refer\" novalidate>{csrf}\
         {recipient}{specialty}{reason}{priority}{note}\
         <p class=\"hint\">The referral carries the patient's problems, recent observations, \
         medications and allergies.</p>\
         <button type=\"submit\" class=\"wide\">Send referral</button></form>\
         <p><a href=\"/app/p/{handle}\">Cancel and return to the chart</a></p>",
        name = escape(&patient_name(patient)),
        summary = error_summary(problems),
        csrf = hidden("csrf", &active.session.csrf),
        recipient = recipient_choice("Send to", orgs, &form.recipient, problems),
        specialty = text_input(
            &Input {
                field: "specialty",
                label: "Specialty or service",
                hint: "For example: Cardiology",
                value: &form.specialty,
                extra: " maxlength=\"100\" autocomplete=\"off\"",
            },
            problems
        ),
        reason = textarea(
            &Input {
                field: "reason",
                label: "Reason for referral",
                hint: "",
                value: &form.reason,
                extra: " maxlength=\"1000\"",
            },
            problems
        ),
        priority = select("priority", "Priority", PRIORITIES, &form.priority),
        note = textarea(
            &Input {
                field: "note",
                label: "Note to the specialist",
                hint: "Optional",
                value: &form.note,
                extra: " maxlength=\"2000\"",
            },
            problems
        ),
    );
    AppPage::new(status, "Referral", body)
        .signed_in(active.bar())
        .into_response()
}

/// Adds a problem for each field whose text holds a control character
/// other than tab, carriage return or line feed, which FHIR R4 strings
/// cannot carry.
fn control_characters(problems: &mut Vec<Problem>, fields: &[(&'static str, &String)]) {
    for (field, text) in fields {
        if text
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\r' | '\n'))
        {
            problems.push(Problem::new(
                field,
                "This text holds control characters; type it again without them.",
            ));
        }
    }
}

/// Checks the referral form; returns the problems found.
fn check_referral(form: &ReferralForm, orgs: &[TrustEntry]) -> Vec<Problem> {
    let mut problems = Vec::new();
    if !orgs.iter().any(|org| org.org_id == form.recipient) {
        problems.push(Problem::new(
            "recipient",
            "Choose the clinic to send the referral to.",
        ));
    }
    let specialty = form.specialty.trim();
    if specialty.is_empty() {
        problems.push(Problem::new(
            "specialty",
            "Enter the specialty or service, such as Cardiology.",
        ));
    } else if specialty.chars().count() > 100 {
        problems.push(Problem::new(
            "specialty",
            "The specialty is too long; use at most 100 characters.",
        ));
    }
    if !PRIORITIES.iter().any(|(value, _)| *value == form.priority) {
        problems.push(Problem::new("priority", "Choose a priority from the list."));
    }
    control_characters(
        &mut problems,
        &[
            ("specialty", &form.specialty),
            ("reason", &form.reason),
            ("note", &form.note),
        ],
    );
    let reason = form.reason.trim();
    if reason.is_empty() {
        problems.push(Problem::new("reason", "Enter the reason for the referral."));
    } else if reason.chars().count() > 1000 {
        problems.push(Problem::new(
            "reason",
            "The reason is too long; use at most 1000 characters.",
        ));
    }
    if form.note.trim().chars().count() > 2000 {
        problems.push(Problem::new(
            "note",
            "The note is too long; use at most 2000 characters.",
        ));
    }
    problems
}

/// `POST /app/p/{handle}/refer`: checks the form, builds the referral
/// from the chart and queues it.
pub async fn send_referral(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path(handle): Path<String>,
    WebForm(form): WebForm<ReferralForm>,
) -> Response {
    let active = match signin::require(&state, peer, &headers).await {
        Ok(active) => active,
        Err(response) => return response,
    };
    if !active.session.csrf_matches(&form.csrf) {
        return expired_form();
    }
    let (patient_id, patient) = match patient_of(&state, peer, &active, &handle).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let orgs = match partners(&state, OrgRole::Clinic).await {
        Ok(orgs) => orgs,
        Err(response) => return response,
    };

    let problems = check_referral(&form, &orgs);
    if !problems.is_empty() {
        return render_referral(
            &active,
            &handle,
            &patient,
            &orgs,
            &form,
            &problems,
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    }
    let Some(recipient) = orgs.iter().find(|org| org.org_id == form.recipient) else {
        return unknown_handle();
    };

    let token = active.token();
    let context = match chart_context(&state, peer, token, &patient_id, REFERRAL_CONTEXT).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    let requester = requester_name(&state, peer, token).await;
    let source = format!("{}/fhir", state.verifier.origin());
    let route = bundle::Route {
        source_endpoint: &source,
        destination_name: &recipient.name,
        destination_endpoint: &recipient.endpoint,
    };
    let specialty = form.specialty.trim();
    let message = bundle::referral(
        &route,
        &bundle::Referral {
            specialty,
            reason: form.reason.trim(),
            note: form.note.trim(),
            priority: &form.priority,
            requester: &requester,
        },
        &patient,
        &context,
        &now_rfc3339(),
    );

    match queue(
        &state,
        peer,
        token,
        recipient,
        (&message, &patient_id),
        None,
    )
    .await
    {
        Ok(_) => {}
        Err(rejected) => {
            let problems = vec![Problem::new("recipient", rejection_text(&rejected, false))];
            return render_referral(
                &active,
                &handle,
                &patient,
                &orgs,
                &form,
                &problems,
                rejection_status(&rejected),
            );
        }
    };
    see_other("/app/messages?sent=referral", &[])
}

/// Returns the page status for a rejected message.
fn rejection_status(rejected: &Rejected) -> StatusCode {
    if rejected.status.is_client_error() {
        rejected.status
    } else {
        StatusCode::BAD_GATEWAY
    }
}

/// Explains to the user why `$send-message` rejected a message.
fn rejection_text(rejected: &Rejected, second_factor: bool) -> String {
    let detail = rejected.detail.as_str();
    match rejected.status.as_u16() {
        403 if second_factor && detail.contains("already used") => {
            "This code was already used. Wait for the next code in your authenticator app and enter it.".to_owned()
        }
        403 if second_factor && detail.contains("locked") => {
            "Too many wrong codes: your account is locked for a while. Try again later.".to_owned()
        }
        403 if second_factor && (detail.contains("invalid") || detail.contains("TOTP")) => {
            "The code is not correct. Enter the code your authenticator app shows now.".to_owned()
        }
        403 => "Your role may not send messages to other organizations.".to_owned(),
        401 => "Your sign-in is no longer valid. Sign out and sign in again.".to_owned(),
        400 | 422 if !detail.is_empty() => format!("The server did not accept the message: {detail}"),
        404 if !detail.is_empty() => format!("The server did not accept the message: {detail}"),
        _ => "The server could not queue the message. Try again.".to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Prescription.

/// `GET /app/p/{handle}/prescribe`: the prescription form.
pub async fn prescription_form(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path(handle): Path<String>,
) -> Response {
    let active = match signin::require(&state, peer, &headers).await {
        Ok(active) => active,
        Err(response) => return response,
    };
    let (_, patient) = match patient_of(&state, peer, &active, &handle).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let orgs = match partners(&state, OrgRole::Pharmacy).await {
        Ok(orgs) => orgs,
        Err(response) => return response,
    };
    let form = PrescriptionForm {
        unit: "tablet".to_owned(),
        refills: "0".to_owned(),
        ..PrescriptionForm::default()
    };
    render_prescription(
        &active,
        &handle,
        &patient,
        &orgs,
        &form,
        &[],
        StatusCode::OK,
    )
}

fn render_prescription(
    active: &Active,
    handle: &str,
    patient: &Value,
    orgs: &[TrustEntry],
    form: &PrescriptionForm,
    problems: &[Problem],
    status: StatusCode,
) -> Response {
    if orgs.is_empty() {
        return no_partner(active, handle, "pharmacy", "Prescription");
    }
    let body = format!(
        "<h1>Prescribe for {name}</h1>{summary}\
         <form class=\"exchange-form\" method=\"post\" action=\"/app/p/{handle}/prescribe\" novalidate>{csrf}\
         {recipient}{medication}{rxnorm}{schedule}{dose}\
         <div class=\"row\"><div>{quantity}</div><div>{unit}</div></div>{refills}\
         <fieldset><legend>Controlled substances</legend>\
         {totp}</fieldset>\
         <button type=\"submit\" class=\"wide\">Send prescription</button></form>\
         <p><a href=\"/app/p/{handle}\">Cancel and return to the chart</a></p>",
        name = escape(&patient_name(patient)),
        summary = error_summary(problems),
        csrf = hidden("csrf", &active.session.csrf),
        recipient = recipient_choice("Pharmacy", orgs, &form.recipient, problems),
        medication = text_input(
            &Input {
                field: "medication",
                label: "Medication",
                hint: "Name, strength and form, such as lisinopril 10 mg oral tablet",
                value: &form.medication,
                extra: " maxlength=\"200\" autocomplete=\"off\"",
            },
            problems
        ),
        rxnorm = text_input(
            &Input {
                field: "rxnorm",
                label: "RxNorm code",
                hint: "Optional; digits only",
                value: &form.rxnorm,
                extra: " maxlength=\"12\" inputmode=\"numeric\" autocomplete=\"off\"",
            },
            problems
        ),
        schedule = select(
            "schedule",
            "Controlled substance schedule",
            SCHEDULES,
            &form.schedule
        ),
        dose = text_input(
            &Input {
                field: "dose",
                label: "Dose and directions",
                hint: "Such as one tablet by mouth daily",
                value: &form.dose,
                extra: " maxlength=\"300\" autocomplete=\"off\"",
            },
            problems
        ),
        quantity = text_input(
            &Input {
                field: "quantity",
                label: "Quantity",
                hint: "",
                value: &form.quantity,
                extra: " maxlength=\"8\" inputmode=\"decimal\" autocomplete=\"off\"",
            },
            problems
        ),
        unit = text_input(
            &Input {
                field: "unit",
                label: "Unit",
                hint: "",
                value: &form.unit,
                extra: " maxlength=\"30\" autocomplete=\"off\"",
            },
            problems
        ),
        refills = text_input(
            &Input {
                field: "refills",
                label: "Refills",
                hint: "0 to 11; at most 5 for schedules III to V, none for schedule II",
                value: &form.refills,
                extra: " maxlength=\"2\" inputmode=\"numeric\" autocomplete=\"off\"",
            },
            problems
        ),
        totp = text_input(
            &Input {
                field: "totp",
                label: "Authenticator code",
                hint: "Needed for a controlled substance: the 6-digit code your authenticator app shows now",
                value: "",
                extra: " maxlength=\"6\" inputmode=\"numeric\" autocomplete=\"one-time-code\"",
            },
            problems
        ),
    );
    AppPage::new(status, "Prescription", body)
        .signed_in(active.bar())
        .into_response()
}

/// A prescription whose fields passed the checks.
struct CheckedPrescription {
    schedule: Option<Schedule>,
    quantity: f64,
    refills: u32,
}

/// Checks the prescription form; returns the parsed values or the problems.
fn check_prescription(
    form: &PrescriptionForm,
    orgs: &[TrustEntry],
) -> Result<CheckedPrescription, Vec<Problem>> {
    let mut problems = Vec::new();
    if !orgs.iter().any(|org| org.org_id == form.recipient) {
        problems.push(Problem::new(
            "recipient",
            "Choose the pharmacy to send the prescription to.",
        ));
    }
    let medication = form.medication.trim();
    if medication.is_empty() {
        problems.push(Problem::new("medication", "Enter the medication."));
    } else if medication.chars().count() > 200 {
        problems.push(Problem::new(
            "medication",
            "The medication is too long; use at most 200 characters.",
        ));
    }
    let rxnorm = form.rxnorm.trim();
    if !rxnorm.is_empty() && (rxnorm.len() > 12 || !rxnorm.bytes().all(|b| b.is_ascii_digit())) {
        problems.push(Problem::new(
            "rxnorm",
            format!(
                "'{}' is not an RxNorm code: use digits only, or leave it empty.",
                rxnorm.chars().take(20).collect::<String>()
            ),
        ));
    }
    let schedule = if form.schedule.is_empty() {
        None
    } else if let Some(schedule) = Schedule::parse(&form.schedule) {
        Some(schedule)
    } else {
        problems.push(Problem::new("schedule", "Choose a schedule from the list."));
        None
    };
    let dose = form.dose.trim();
    if dose.is_empty() {
        problems.push(Problem::new(
            "dose",
            "Enter the dose and directions, such as one tablet by mouth daily.",
        ));
    } else if dose.chars().count() > 300 {
        problems.push(Problem::new(
            "dose",
            "The directions are too long; use at most 300 characters.",
        ));
    }
    let quantity = match form.quantity.trim().replace(',', ".").parse::<f64>() {
        Ok(value) if value > 0.0 && value <= 10_000.0 && value.is_finite() => value,
        _ => {
            problems.push(Problem::new(
                "quantity",
                "Enter the quantity as a number greater than 0 and at most 10000, such as 30.",
            ));
            0.0
        }
    };
    let unit = form.unit.trim();
    if unit.is_empty() || unit.chars().count() > 30 {
        problems.push(Problem::new(
            "unit",
            "Enter the unit of the quantity, such as tablet or mL.",
        ));
    }
    let refills = match form.refills.trim().parse::<u32>() {
        Ok(value) if value <= 11 => value,
        _ => {
            problems.push(Problem::new(
                "refills",
                "Enter the refills as a whole number from 0 to 11.",
            ));
            0
        }
    };
    control_characters(
        &mut problems,
        &[
            ("medication", &form.medication),
            ("dose", &form.dose),
            ("unit", &form.unit),
        ],
    );
    if problems.is_empty() {
        Ok(CheckedPrescription {
            schedule,
            quantity,
            refills,
        })
    } else {
        Err(problems)
    }
}

/// Checks the refills against the DEA schedule found in the message.
fn check_refills(schedule: Schedule, refills: u32) -> Option<Problem> {
    match schedule {
        Schedule::II if refills > 0 => Some(Problem::new(
            "refills",
            "A schedule II prescription cannot have refills; enter 0.",
        )),
        Schedule::III | Schedule::IV | Schedule::V if refills > 5 => Some(Problem::new(
            "refills",
            format!(
                "A schedule {} prescription allows at most 5 refills.",
                schedule.as_str()
            ),
        )),
        _ => None,
    }
}

/// `POST /app/p/{handle}/prescribe`: checks the form, builds the
/// e-prescription and queues it, with the authenticator code for a
/// controlled substance.
pub async fn send_prescription(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path(handle): Path<String>,
    WebForm(form): WebForm<PrescriptionForm>,
) -> Response {
    let active = match signin::require(&state, peer, &headers).await {
        Ok(active) => active,
        Err(response) => return response,
    };
    if !active.session.csrf_matches(&form.csrf) {
        return expired_form();
    }
    let (patient_id, patient) = match patient_of(&state, peer, &active, &handle).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let orgs = match partners(&state, OrgRole::Pharmacy).await {
        Ok(orgs) => orgs,
        Err(response) => return response,
    };
    let rerender = |problems: &[Problem], status: StatusCode| {
        render_prescription(&active, &handle, &patient, &orgs, &form, problems, status)
    };
    let checked = match check_prescription(&form, &orgs) {
        Ok(checked) => checked,
        Err(problems) => return rerender(&problems, StatusCode::UNPROCESSABLE_ENTITY),
    };
    let Some(recipient) = orgs.iter().find(|org| org.org_id == form.recipient) else {
        return unknown_handle();
    };

    let token = active.token();
    let allergies = match chart_context(
        &state,
        peer,
        token,
        &patient_id,
        &[("AllergyIntolerance", "_count=50")],
    )
    .await
    {
        Ok(found) => found,
        Err(response) => return response,
    };
    let requester = requester_name(&state, peer, token).await;
    let source = format!("{}/fhir", state.verifier.origin());
    let route = bundle::Route {
        source_endpoint: &source,
        destination_name: &recipient.name,
        destination_endpoint: &recipient.endpoint,
    };
    let medication = form.medication.trim();
    let message = bundle::prescription(
        &route,
        &bundle::Prescription {
            medication,
            rxnorm: form.rxnorm.trim(),
            schedule: checked.schedule,
            dose: form.dose.trim(),
            quantity: checked.quantity,
            unit: form.unit.trim(),
            refills: checked.refills,
            requester: &requester,
        },
        &patient,
        &allergies,
        &now_rfc3339(),
    );

    // The server decides what is controlled: the marked schedule or an
    // RxNorm ingredient code of its list.
    let schedule = controlled::find_controlled(&message)
        .ok()
        .and_then(|found| found.first().map(|c| c.schedule));
    let code = form.totp.trim();
    let totp = match schedule {
        None => None,
        Some(schedule) => {
            if let Some(problem) = check_refills(schedule, checked.refills) {
                return rerender(&[problem], StatusCode::UNPROCESSABLE_ENTITY);
            }
            if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
                let problem = Problem::new(
                    "totp",
                    format!(
                        "This is a schedule {} controlled substance: enter the 6-digit code your authenticator app shows now.",
                        schedule.as_str()
                    ),
                );
                return rerender(&[problem], StatusCode::UNPROCESSABLE_ENTITY);
            }
            Some(code)
        }
    };

    match queue(
        &state,
        peer,
        token,
        recipient,
        (&message, &patient_id),
        totp,
    )
    .await
    {
        Ok(_) => {}
        Err(rejected) => {
            let field = if schedule.is_some() && rejected.status == StatusCode::FORBIDDEN {
                "totp"
            } else {
                "recipient"
            };
            let problem = Problem::new(field, rejection_text(&rejected, schedule.is_some()));
            return rerender(&[problem], rejection_status(&rejected));
        }
    };
    see_other("/app/messages?sent=prescription", &[])
}

// ---------------------------------------------------------------------------
// Messages.

/// `GET /app/messages`: the user's sent messages with their delivery
/// status, and the lab results received for the user's patients.
pub async fn messages(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Query(query): Query<MessagesQuery>,
) -> Response {
    let mut active = match signin::require(&state, peer, &headers).await {
        Ok(active) => active,
        Err(response) => return response,
    };
    let reply = call::send(
        &state,
        peer,
        Call::get(
            &format!("/exchange/outbox?_count={SENT_LIMIT}"),
            active.token(),
        ),
    )
    .await;
    let listed = match reply.body.get("messages").and_then(Value::as_array) {
        Some(listed) if reply.status == StatusCode::OK => listed.clone(),
        _ => {
            tracing::warn!(target: "ward::webapp", status = reply.status.as_u16(), "the outbox list could not be read");
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Your sent messages could not be read. Try again.",
            );
        }
    };
    let names = match recipient_names(&state).await {
        Ok(names) => names,
        Err(response) => return response,
    };
    let mut sent = String::new();
    for message in &listed {
        let patient_id = message
            .get("subject")
            .and_then(Value::as_str)
            .and_then(|subject| subject.strip_prefix("Patient/"));
        let handle = match patient_id.map(|id| active.session.handle_for(id)) {
            None => None,
            Some(Ok(handle)) => Some(handle),
            Some(Err(_)) => {
                tracing::error!(target: "ward::webapp", "making a chart link for a sent message failed");
                return error_page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The server could not list your messages. Try again.",
                );
            }
        };
        sent.push_str(&sent_item(message, &names, handle.as_deref()));
    }

    let results = match lab_results(&state, peer, &mut active).await {
        Ok(results) => results,
        Err(response) => return response,
    };
    if let Err(response) = active.save(&state).await {
        return response;
    }
    let notice = match query.sent.as_deref() {
        Some("referral") => {
            "<p class=\"notice\" role=\"status\">Referral queued. Its status shows below.</p>"
        }
        Some("prescription") => {
            "<p class=\"notice\" role=\"status\">Prescription queued. Its status shows below.</p>"
        }
        _ => "",
    };
    let sent = if sent.is_empty() {
        "<p class=\"empty\">You have not sent any referral or prescription.</p>".to_owned()
    } else {
        format!("<ul class=\"cards messages\" aria-label=\"Sent messages\">{sent}</ul>")
    };
    let body = format!(
        "{notice}<h1>Messages</h1>\
         <p><a class=\"button wide\" id=\"refresh\" href=\"/app/messages\">Refresh</a></p>\
         <h2>Sent</h2>{sent}<h2>Lab results</h2>{results}"
    );
    AppPage::new(StatusCode::OK, "Messages", body)
        .signed_in(active.bar())
        .into_response()
}

/// Returns the display names of the organizations of the trust bundle by
/// organization id.
async fn recipient_names(
    state: &AppState,
) -> Result<std::collections::HashMap<String, String>, Response> {
    let store = state.engine.store.clone();
    let listed = signin::blocking(move || ward_exchange::trust::list(&*store)).await?;
    match listed {
        Ok(entries) => Ok(entries
            .into_iter()
            .map(|entry| (entry.org_id, entry.name))
            .collect()),
        Err(_) => {
            tracing::error!(target: "ward::webapp", "reading the trust bundle failed");
            Err(error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The list of organizations could not be read. Try again.",
            ))
        }
    }
}

/// Returns the label, the CSS class suffix and the explanation of an
/// outbox status.
fn status_parts(status: Option<&str>, attempts: u64) -> (&'static str, &'static str, String) {
    match status {
        Some("queued") if attempts > 0 => (
            "queued",
            "Queued",
            format!("Waiting for the next delivery attempt ({attempts} so far)."),
        ),
        Some("queued") => ("queued", "Queued", String::new()),
        Some("sent") => (
            "sent",
            "Sent",
            format!(
                "Sent to the recipient, but it has not confirmed receipt yet; delivery is retried ({attempts} attempts so far)."
            ),
        ),
        Some("delivered") => (
            "delivered",
            "Delivered",
            "The recipient filed the message.".to_owned(),
        ),
        Some("dispensed") => (
            "dispensed",
            "Dispensed",
            "The pharmacy reported the prescription as dispensed.".to_owned(),
        ),
        Some("failed") => (
            "failed",
            "Failed",
            "Delivery was given up; send it again or call the recipient.".to_owned(),
        ),
        _ => ("unknown", "Unknown", String::new()),
    }
}

/// Renders one sent message of the outbox list, with a link to the chart
/// at `handle` when the message names the sender's patient record.
fn sent_item(
    message: &Value,
    names: &std::collections::HashMap<String, String>,
    handle: Option<&str>,
) -> String {
    let text = |name: &str| message.get(name).and_then(Value::as_str).unwrap_or("");
    let attempts = message.get("attempts").and_then(Value::as_u64).unwrap_or(0);
    let (class, label, detail) =
        status_parts(message.get("status").and_then(Value::as_str), attempts);
    let kind = match text("focus") {
        "MedicationRequest" => "Prescription",
        "ServiceRequest" => "Referral",
        _ => "Message",
    };
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!("<span class=\"meta\">{}</span>", escape(&detail))
    };
    let patient = match text("patient") {
        "" => "(no name)",
        name => name,
    };
    let patient = match handle {
        Some(handle) => format!(
            "<a class=\"patient\" href=\"/app/p/{handle}\">{}</a>",
            escape(patient)
        ),
        None => format!("<span class=\"patient\">{}</span>", escape(patient)),
    };
    let recipient = text("recipient");
    let recipient = names.get(recipient).map_or(recipient, String::as_str);
    let when = message
        .get("created")
        .and_then(Value::as_i64)
        .map_or_else(|| "unknown time".to_owned(), format_time);
    format!(
        "<li class=\"message\"><div class=\"card\"><span class=\"name\">{kind}: {summary}</span>\
         {patient}\
         <span class=\"meta\">To {recipient}, {when}</span>\
         <span class=\"status status-{class}\">{label}</span>{detail}</div></li>",
        summary = escape(text("summary")),
        recipient = escape(recipient),
    )
}

/// Renders the newest lab results filed from messages of trusted labs.
async fn lab_results(
    state: &AppState,
    peer: Option<SocketAddr>,
    active: &mut Active,
) -> Result<String, Response> {
    let labs = partners(state, OrgRole::Lab).await?;
    if labs.is_empty() {
        return Ok(
            "<p class=\"empty\">No laboratory is in this server's trust bundle.</p>".to_owned(),
        );
    }
    let sources: Vec<String> = labs
        .iter()
        .map(|lab| format!("urn:ward:org:{}", lab.org_id))
        .collect();
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("_source", &sources.join(","))
        .append_pair("_sort", "-_lastUpdated")
        .append_pair("_count", &RESULTS_LIMIT.to_string())
        .append_pair("_include", "DiagnosticReport:result")
        .append_pair("_include", "DiagnosticReport:subject")
        .finish();
    let reply = call::send(
        state,
        peer,
        Call::get(&format!("/fhir/DiagnosticReport?{query}"), active.token()),
    )
    .await;
    if reply.status == StatusCode::FORBIDDEN {
        return Ok("<p class=\"empty\">Your role may not see lab results.</p>".to_owned());
    }
    if !reply.status.is_success() {
        return Ok("<p class=\"error\">The lab results could not be loaded.</p>".to_owned());
    }

    let all = resources(&reply.body);
    let by_key = |key: &str| {
        all.iter().copied().find(|r| {
            let (Some(t), Some(id)) = (
                r.get("resourceType").and_then(Value::as_str),
                r.get("id").and_then(Value::as_str),
            ) else {
                return false;
            };
            key.split_once('/') == Some((t, id))
        })
    };

    let mut items = String::new();
    for report in all
        .iter()
        .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("DiagnosticReport"))
    {
        let lab = report
            .pointer("/meta/source")
            .and_then(Value::as_str)
            .and_then(|s| s.strip_prefix("urn:ward:org:"))
            .and_then(|id| labs.iter().find(|lab| lab.org_id == id))
            .map_or("a laboratory", |lab| lab.name.as_str());
        let subject = report
            .pointer("/subject/reference")
            .and_then(Value::as_str)
            .unwrap_or("");
        let patient = match (by_key(subject), subject.strip_prefix("Patient/")) {
            (Some(patient), Some(id)) => {
                let handle = active.session.handle_for(id).map_err(|_| {
                    error_page(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "The server could not list lab results. Try again.",
                    )
                })?;
                format!(
                    "<a class=\"patient\" href=\"/app/p/{handle}\">{}</a>",
                    escape(&patient_name(patient))
                )
            }
            _ => "<span class=\"meta\">Patient not shown</span>".to_owned(),
        };
        let when = report
            .get("effectiveDateTime")
            .or_else(|| report.get("issued"))
            .or_else(|| report.pointer("/meta/lastUpdated"))
            .and_then(Value::as_str)
            .map(|d| d.get(..10).unwrap_or(d).to_owned())
            .unwrap_or_default();
        let observations: String = report
            .get("result")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| r.get("reference").and_then(Value::as_str))
            .filter_map(by_key)
            .map(|observation| format!("<li>{}</li>", observation_line(observation)))
            .collect();
        let observations = if observations.is_empty() {
            String::new()
        } else {
            format!("<ul class=\"obs\">{observations}</ul>")
        };
        items.push_str(&format!(
            "<li class=\"result\"><div class=\"card\"><span class=\"name\">{name}</span>\
             {patient}<span class=\"meta\">From {lab}, {when}, {status}</span>{observations}</div></li>",
            name = escape(&concept_text(report.get("code"))),
            lab = escape(lab),
            when = escape(&when),
            status = escape(report.get("status").and_then(Value::as_str).unwrap_or("")),
        ));
    }
    if items.is_empty() {
        return Ok(
            "<p class=\"empty\">No lab results have arrived for your patients.</p>".to_owned(),
        );
    }
    Ok(format!(
        "<ul class=\"cards results\" aria-label=\"Lab results\">{items}</ul>"
    ))
}

/// Describes an Observation in one escaped HTML line: name, value, unit,
/// reference range and interpretation.
fn observation_line(observation: &Value) -> String {
    let name = escape(&concept_text(observation.get("code")));
    let quantity = |q: &Value| -> Option<String> {
        let value = q.get("value")?;
        let unit = q
            .get("unit")
            .or_else(|| q.get("code"))
            .and_then(Value::as_str)
            .unwrap_or("");
        Some(format!("{value} {unit}").trim().to_owned())
    };
    let value = observation
        .get("valueQuantity")
        .and_then(quantity)
        .or_else(|| {
            observation
                .get("valueString")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .or_else(|| {
            observation
                .get("valueCodeableConcept")
                .map(|c| concept_text(Some(c)))
        });
    let mut line = format!("<span class=\"name\">{name}</span>");
    if let Some(value) = value {
        line.push_str(&format!(": <strong>{}</strong>", escape(&value)));
    }
    let range = observation.pointer("/referenceRange/0").and_then(|range| {
        let low = range.get("low").and_then(quantity);
        let high = range.get("high").and_then(quantity);
        match (low, high) {
            (Some(low), Some(high)) => Some(format!("{low} to {high}")),
            (Some(low), None) => Some(format!("at least {low}")),
            (None, Some(high)) => Some(format!("at most {high}")),
            (None, None) => range.get("text").and_then(Value::as_str).map(str::to_owned),
        }
    });
    if let Some(range) = range {
        line.push_str(&format!(
            " <span class=\"meta\">(reference {})</span>",
            escape(&range)
        ));
    }
    let flag = observation
        .pointer("/interpretation/0")
        .map(|c| concept_text(Some(c)));
    if let Some(flag) = flag {
        line.push_str(&format!(" <span class=\"flag\">{}</span>", escape(&flag)));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn org(id: &str) -> TrustEntry {
        TrustEntry {
            org_id: id.to_owned(),
            name: format!("Org {id}"),
            role: OrgRole::Pharmacy,
            endpoint: "https://org.example/fhir/$process-message".to_owned(),
            signing_jwk: Value::Null,
            encryption_jwk: Value::Null,
            ca_pem: String::new(),
            not_after: i64::MAX,
            fingerprint: String::new(),
        }
    }

    fn form() -> PrescriptionForm {
        PrescriptionForm {
            recipient: "rx-1".to_owned(),
            medication: "lisinopril 10 mg oral tablet".to_owned(),
            dose: "One tablet daily".to_owned(),
            quantity: "30".to_owned(),
            unit: "tablet".to_owned(),
            refills: "2".to_owned(),
            ..PrescriptionForm::default()
        }
    }

    #[test]
    fn prescription_checks_each_field() {
        let orgs = [org("rx-1")];
        assert!(check_prescription(&form(), &orgs).is_ok());
        let bad = PrescriptionForm {
            recipient: "rx-other".to_owned(),
            rxnorm: "12a".to_owned(),
            quantity: "-3".to_owned(),
            refills: "12".to_owned(),
            schedule: "VII".to_owned(),
            ..form()
        };
        let problems = check_prescription(&bad, &orgs).err().expect("problems");
        let fields: Vec<&str> = problems.iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            ["recipient", "rxnorm", "schedule", "quantity", "refills"]
        );
    }

    #[test]
    fn refills_follow_schedule() {
        assert!(check_refills(Schedule::II, 1).is_some());
        assert!(check_refills(Schedule::II, 0).is_none());
        assert!(check_refills(Schedule::IV, 6).is_some());
        assert!(check_refills(Schedule::IV, 5).is_none());
    }

    #[test]
    fn referral_needs_reason_and_specialty() {
        let orgs = [org("c-1")];
        let form = ReferralForm {
            recipient: "c-1".to_owned(),
            priority: "routine".to_owned(),
            ..ReferralForm::default()
        };
        let fields: Vec<&str> = check_referral(&form, &orgs)
            .iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(fields, ["specialty", "reason"]);
    }

    #[test]
    fn referral_refuses_unknown_priority_and_control_characters() {
        let orgs = [org("c-1")];
        let form = ReferralForm {
            recipient: "c-1".to_owned(),
            specialty: "Cardio\u{0}\u{1}logy".to_owned(),
            reason: "Chest pain\r\non exertion\t(2 weeks)".to_owned(),
            priority: "whenever".to_owned(),
            ..ReferralForm::default()
        };
        let fields: Vec<&str> = check_referral(&form, &orgs)
            .iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(fields, ["priority", "specialty"]);
    }

    #[test]
    fn observation_line_escapes_and_shows_range() {
        let observation = json!({
            "code": { "text": "Potassium <K>" },
            "valueQuantity": { "value": 5.9, "unit": "mmol/L" },
            "referenceRange": [{ "low": { "value": 3.5, "unit": "mmol/L" },
                                 "high": { "value": 5.1, "unit": "mmol/L" } }],
            "interpretation": [{ "coding": [{ "code": "H", "display": "High" }] }]
        });
        let line = observation_line(&observation);
        assert!(line.contains("Potassium &lt;K&gt;"), "{line}");
        assert!(line.contains("5.9 mmol/L"), "{line}");
        assert!(line.contains("3.5 mmol/L to 5.1 mmol/L"), "{line}");
        assert!(line.contains("High"), "{line}");
    }

    #[test]
    fn sent_item_shows_status_and_escapes() {
        let names = std::collections::HashMap::from([(
            "org-rx".to_owned(),
            "Corner <Pharmacy>".to_owned(),
        )]);
        let message = serde_json::json!({
            "id": "m1", "recipient": "org-rx", "status": "sent", "attempts": 2,
            "created": 0, "focus": "MedicationRequest", "summary": "amoxicillin <500>",
            "patient": "Ada Lovelace", "subject": "Patient/p1"
        });
        let item = sent_item(&message, &names, Some("h1"));
        assert!(
            item.contains("Prescription: amoxicillin &lt;500&gt;"),
            "{item}"
        );
        assert!(item.contains("href=\"/app/p/h1\""), "{item}");
        assert!(item.contains("To Corner &lt;Pharmacy&gt;"), "{item}");
        assert!(item.contains("status-sent"), "{item}");
        assert!(item.contains("2 attempts so far"), "{item}");
        let item = sent_item(&message, &names, None);
        assert!(
            item.contains("<span class=\"patient\">Ada Lovelace</span>"),
            "{item}"
        );
    }
}
