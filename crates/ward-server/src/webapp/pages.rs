//! The signed-in pages: "My patients" with search, the chart summary and
//! the vitals form. Patients are named in URLs only by an opaque handle
//! of the session, and searches are POSTed, so no PHI reaches a URL, the
//! history or a page title.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::call::{self, Call, resources};
use super::html::{AppPage, WebForm, error_page, escape, hidden, see_other};
use super::signin::{self, Active, PeerAddr};
use super::vitals::{FieldError, VitalsForm};
use crate::AppState;

/// Maximum number of patients a list shows.
const LIST_LIMIT: usize = 50;
/// The longest accepted search text.
const MAX_QUERY_LEN: usize = 100;

/// The search form.
#[derive(Deserialize)]
pub struct SearchForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    q: String,
}

/// `GET /app`: the patients the user may see (for a clinician, the care
/// team's patients, as the access policy filters the search).
pub async fn patients(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
) -> Response {
    let mut active = match signin::require(&state, peer, &headers).await {
        Ok(active) => active,
        Err(response) => return response,
    };
    let uri = format!("/fhir/Patient?_count={LIST_LIMIT}");
    list_page(&state, peer, &mut active, &uri, "").await
}

/// `POST /app/search`: searches by name, birth date (`YYYY-MM-DD`) or
/// identifier.
pub async fn search(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    WebForm(form): WebForm<SearchForm>,
) -> Response {
    let mut active = match signin::require(&state, peer, &headers).await {
        Ok(active) => active,
        Err(response) => return response,
    };
    if !active.session.csrf_matches(&form.csrf) {
        return expired_form();
    }
    let text = form.q.trim();
    if text.is_empty() {
        return see_other("/app", &[]);
    }
    if text.chars().count() > MAX_QUERY_LEN {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The search text is too long; use at most 100 characters.",
        );
    }
    let (parameter, value) = classify(text);
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair(parameter, value)
        .append_pair("_count", &LIST_LIMIT.to_string())
        .finish();
    let uri = format!("/fhir/Patient?{query}");
    list_page(&state, peer, &mut active, &uri, text).await
}

/// Picks the search parameter for what the user typed: a full date is a
/// birth date, text with a digit an identifier, anything else a name.
fn classify(text: &str) -> (&'static str, &str) {
    let is_date = text.len() == 10
        && text.char_indices().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    if is_date {
        ("birthdate", text)
    } else if text.chars().any(|c| c.is_ascii_digit()) {
        ("identifier", text)
    } else {
        ("name", text)
    }
}

fn expired_form() -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "This form has expired. Go back to your patients and try again.",
    )
}

async fn list_page(
    state: &AppState,
    peer: Option<std::net::SocketAddr>,
    active: &mut Active,
    uri: &str,
    searched: &str,
) -> Response {
    let reply = call::send(state, peer, Call::get(uri, active.token())).await;
    if !reply.status.is_success() {
        return fhir_failure(&reply);
    }
    let mut rows = String::new();
    let mut patients: Vec<&Value> = resources(&reply.body);
    patients.sort_by_key(|patient| patient_name(patient).to_lowercase());
    for patient in &patients {
        let Some(id) = patient.get("id").and_then(Value::as_str) else {
            continue;
        };
        let Ok(handle) = active.session.handle_for(id) else {
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The server could not list patients. Try again.",
            );
        };
        rows.push_str(&format!(
            "<li><a class=\"card\" href=\"/app/p/{handle}\"><span class=\"name\">{name}</span> \
             <span class=\"meta\">{meta}</span></a></li>",
            name = escape(&patient_name(patient)),
            meta = escape(&patient_meta(patient)),
        ));
    }
    if let Err(response) = active.save(state).await {
        return response;
    }
    let results = if rows.is_empty() {
        if searched.is_empty() {
            "<p class=\"empty\">No patients are assigned to you.</p>".to_owned()
        } else {
            "<p class=\"empty\" role=\"status\">No patient matches this search.</p>".to_owned()
        }
    } else {
        format!("<ul class=\"cards\" aria-label=\"Patients\">{rows}</ul>")
    };
    let body = format!(
        "<h1>My patients</h1>\
         <form method=\"post\" action=\"/app/search\" role=\"search\">{csrf}\
         <label for=\"q\">Find a patient<span class=\"hint\">Name, birth date (YYYY-MM-DD) or identifier</span></label>\
         <input id=\"q\" name=\"q\" type=\"search\" autocomplete=\"off\" autocapitalize=\"none\" \
          spellcheck=\"false\" maxlength=\"{MAX_QUERY_LEN}\" value=\"{value}\">\
         <button type=\"submit\" class=\"wide\">Search</button></form>\
         <h2>{heading}</h2>{results}",
        csrf = hidden("csrf", &active.session.csrf),
        value = escape(searched),
        heading = if searched.is_empty() {
            "Care team"
        } else {
            "Search results"
        },
    );
    AppPage::new(StatusCode::OK, "My patients", body)
        .signed_in(active.bar())
        .into_response()
}

fn fhir_failure(reply: &call::Reply) -> Response {
    let status = reply.status;
    let message = match status.as_u16() {
        401 => "Your sign-in is no longer valid. Sign out and sign in again.",
        403 => "You are not allowed to see this. Access is limited to your care team's patients.",
        404 => "This record was not found.",
        _ => "The server could not complete this request. Try again.",
    };
    tracing::warn!(target: "ward::webapp", status = status.as_u16(), "an in-process FHIR request failed");
    error_page(
        if status.is_client_error() {
            status
        } else {
            StatusCode::BAD_GATEWAY
        },
        message,
    )
}

/// Returns the display name of a Patient.
fn patient_name(patient: &Value) -> String {
    let Some(name) = patient.get("name").and_then(|n| n.get(0)) else {
        return "(no name)".to_owned();
    };
    if let Some(text) = name.get("text").and_then(Value::as_str) {
        return text.to_owned();
    }
    let given: Vec<&str> = name
        .get("given")
        .and_then(Value::as_array)
        .map(|g| g.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let family = name.get("family").and_then(Value::as_str).unwrap_or("");
    let full = format!("{} {family}", given.join(" "));
    let full = full.trim();
    if full.is_empty() {
        "(no name)".to_owned()
    } else {
        full.to_owned()
    }
}

fn patient_meta(patient: &Value) -> String {
    let birth = patient
        .get("birthDate")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let gender = patient.get("gender").and_then(Value::as_str).unwrap_or("");
    format!("born {birth} {gender}").trim().to_owned()
}

/// The query of the chart page.
#[derive(Deserialize)]
pub struct ChartQuery {
    saved: Option<u32>,
}

/// Builds the page for a handle this session does not know.
fn unknown_handle() -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "This patient link belongs to another sign-in or has expired. Find the patient again.",
    )
}

/// `GET /app/p/{handle}`: the chart summary.
pub async fn chart(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path(handle): Path<String>,
    Query(query): Query<ChartQuery>,
) -> Response {
    let active = match signin::require(&state, peer, &headers).await {
        Ok(active) => active,
        Err(response) => return response,
    };
    let Some(patient_id) = active.session.patient_of(&handle) else {
        return unknown_handle();
    };
    let token = active.token();
    let reply = call::send(
        &state,
        peer,
        Call::get(&format!("/fhir/Patient/{patient_id}"), token),
    )
    .await;
    if !reply.status.is_success() {
        return fhir_failure(&reply);
    }
    let patient = reply.body;
    let mut sections = String::new();
    for section in SECTIONS {
        let uri = format!(
            "/fhir/{}?patient={patient_id}&{}",
            section.resource_type, section.query
        );
        let reply = call::send(&state, peer, Call::get(&uri, token)).await;
        sections.push_str(&render_section(section, &reply));
    }
    let notice = if query.saved.is_some() {
        "<p class=\"notice\" role=\"status\">Vitals saved.</p>"
    } else {
        ""
    };
    let body = format!(
        "{notice}<h1>{name}</h1><dl><dt>Born</dt><dd>{birth}</dd><dt>Gender</dt><dd>{gender}</dd></dl>\
         <p><a class=\"button wide\" href=\"/app/p/{handle}/vitals\">Record vitals</a></p>{sections}",
        name = escape(&patient_name(&patient)),
        birth = escape(
            patient
                .get("birthDate")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
        ),
        gender = escape(
            patient
                .get("gender")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
        ),
    );
    AppPage::new(StatusCode::OK, "Patient chart", body)
        .signed_in(active.bar())
        .into_response()
}

/// One section of the chart summary.
struct Section {
    title: &'static str,
    resource_type: &'static str,
    query: &'static str,
    /// Show only the newest resource per code.
    latest_per_code: bool,
}

const SECTIONS: &[Section] = &[
    Section {
        title: "Problems",
        resource_type: "Condition",
        query: "_count=50",
        latest_per_code: false,
    },
    Section {
        title: "Medications",
        resource_type: "MedicationRequest",
        query: "_count=50",
        latest_per_code: false,
    },
    Section {
        title: "Allergies",
        resource_type: "AllergyIntolerance",
        query: "_count=50",
        latest_per_code: false,
    },
    Section {
        title: "Immunizations",
        resource_type: "Immunization",
        query: "_count=50",
        latest_per_code: false,
    },
    Section {
        title: "Latest vitals",
        resource_type: "Observation",
        query: "category=vital-signs&_sort=-date&_count=50",
        latest_per_code: true,
    },
    Section {
        title: "Latest labs",
        resource_type: "Observation",
        query: "category=laboratory&_sort=-date&_count=50",
        latest_per_code: true,
    },
];

fn render_section(section: &Section, reply: &call::Reply) -> String {
    let items = if reply.status.is_success() {
        let mut seen = std::collections::HashSet::new();
        let lines: Vec<String> = resources(&reply.body)
            .into_iter()
            .filter(|resource| {
                !section.latest_per_code || seen.insert(concept_text(resource_code(resource)))
            })
            .map(describe)
            .collect();
        if lines.is_empty() {
            "<p class=\"empty\">None recorded.</p>".to_owned()
        } else {
            let items: String = lines
                .iter()
                .map(|line| format!("<li>{line}</li>"))
                .collect();
            format!("<ul>{items}</ul>")
        }
    } else if reply.status == StatusCode::FORBIDDEN {
        "<p class=\"empty\">Your role may not see this section.</p>".to_owned()
    } else {
        "<p class=\"error\">This section could not be loaded.</p>".to_owned()
    };
    format!(
        "<section aria-labelledby=\"s-{id}\"><h2 id=\"s-{id}\">{title}</h2>{items}</section>",
        id = section.title.to_lowercase().replace(' ', "-"),
        title = section.title
    )
}

fn resource_code(resource: &Value) -> Option<&Value> {
    resource
        .get("code")
        .or_else(|| resource.get("medicationCodeableConcept"))
        .or_else(|| resource.get("vaccineCode"))
}

/// Returns the text of a CodeableConcept: its text, a display or a code.
fn concept_text(concept: Option<&Value>) -> String {
    let Some(concept) = concept else {
        return "(no code)".to_owned();
    };
    if let Some(text) = concept.get("text").and_then(Value::as_str) {
        return text.to_owned();
    }
    let coding = concept.get("coding").and_then(|c| c.get(0));
    coding
        .and_then(|c| c.get("display").or_else(|| c.get("code")))
        .and_then(Value::as_str)
        .unwrap_or("(no code)")
        .to_owned()
}

fn quantity_text(quantity: &Value) -> Option<String> {
    let value = quantity.get("value")?;
    let unit = quantity
        .get("unit")
        .or_else(|| quantity.get("code"))
        .and_then(Value::as_str)
        .unwrap_or("");
    Some(format!("{value} {unit}").trim().to_owned())
}

/// Describes a resource in one escaped HTML line.
fn describe(resource: &Value) -> String {
    let name = escape(&concept_text(resource_code(resource)));
    let mut value = resource.get("valueQuantity").and_then(quantity_text);
    if value.is_none()
        && let Some(components) = resource.get("component").and_then(Value::as_array)
    {
        let parts: Vec<String> = components
            .iter()
            .filter_map(|c| c.get("valueQuantity").and_then(quantity_text))
            .collect();
        if !parts.is_empty() {
            value = Some(parts.join(" / "));
        }
    }
    let value = value.or_else(|| {
        resource
            .get("valueString")
            .or_else(|| resource.pointer("/valueCodeableConcept/text"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let when = resource
        .get("effectiveDateTime")
        .or_else(|| resource.get("occurrenceDateTime"))
        .or_else(|| resource.get("onsetDateTime"))
        .or_else(|| resource.get("authoredOn"))
        .and_then(Value::as_str)
        .map(|date| date.get(..10).unwrap_or(date).to_owned());
    let mut line = format!("<span class=\"name\">{name}</span>");
    if let Some(value) = value {
        line.push_str(&format!(": <strong>{}</strong>", escape(&value)));
    }
    if let Some(when) = when {
        line.push_str(&format!(" <span class=\"meta\">({})</span>", escape(&when)));
    }
    line
}

/// `GET /app/p/{handle}/vitals`: the empty vitals form.
pub async fn vitals_form(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path(handle): Path<String>,
) -> Response {
    let active = match signin::require(&state, peer, &headers).await {
        Ok(active) => active,
        Err(response) => return response,
    };
    if active.session.patient_of(&handle).is_none() {
        return unknown_handle();
    }
    render_vitals(
        &active,
        &handle,
        &VitalsForm::default(),
        &[],
        StatusCode::OK,
    )
}

/// `POST /app/p/{handle}/vitals`: checks the form and saves one
/// Observation per vital sign through the FHIR routes.
pub async fn save_vitals(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path(handle): Path<String>,
    WebForm(form): WebForm<VitalsForm>,
) -> Response {
    let active = match signin::require(&state, peer, &headers).await {
        Ok(active) => active,
        Err(response) => return response,
    };
    if !active.session.csrf_matches(&form.csrf) {
        return expired_form();
    }
    let Some(patient_id) = active.session.patient_of(&handle) else {
        return unknown_handle();
    };
    let vitals = match form.check() {
        Ok(vitals) => vitals,
        Err(errors) => {
            return render_vitals(
                &active,
                &handle,
                &form,
                &errors,
                StatusCode::UNPROCESSABLE_ENTITY,
            );
        }
    };
    let token = active.token();
    let performer = performer_of(&state, token);
    let effective = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    for observation in vitals.observations(&patient_id, &effective, performer.as_deref()) {
        let reply = call::send(
            &state,
            peer,
            Call::post_json("/fhir/Observation", token, &observation),
        )
        .await;
        if !reply.status.is_success() {
            return fhir_failure(&reply);
        }
    }
    see_other(&format!("/app/p/{handle}?saved=1"), &[])
}

/// Returns the `fhirUser` of the session's access token.
fn performer_of(state: &AppState, token: &str) -> Option<String> {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&format!("Bearer {token}")).ok()?,
    );
    crate::auth::authenticate(&headers, &state.verifier)
        .ok()?
        .fhir_user
}

/// One input of the vitals form.
struct Input {
    field: &'static str,
    label: &'static str,
    hint: &'static str,
}

fn render_vitals(
    active: &Active,
    handle: &str,
    form: &VitalsForm,
    errors: &[FieldError],
    status: StatusCode,
) -> Response {
    let error_of = |field: &str| errors.iter().find(|e| e.field == field);
    let input = |input: Input, value: &str| {
        let error = error_of(input.field);
        let (invalid, message) = match error {
            Some(error) => (
                format!(
                    " aria-invalid=\"true\" aria-describedby=\"{}-error\"",
                    input.field
                ),
                format!(
                    "<span class=\"error\" id=\"{}-error\">{}</span>",
                    input.field,
                    escape(&error.message)
                ),
            ),
            None => (String::new(), String::new()),
        };
        format!(
            "<label for=\"{field}\">{label}<span class=\"hint\">{hint}</span></label>{message}\
             <input id=\"{field}\" name=\"{field}\" inputmode=\"decimal\" autocomplete=\"off\" \
             maxlength=\"12\" value=\"{value}\"{invalid}>",
            field = input.field,
            label = input.label,
            hint = input.hint,
            value = escape(value),
        )
    };
    let select = |field: &str, label: &str, options: &[(&str, &str)], chosen: &str| {
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
    };
    let summary = if errors.is_empty() {
        String::new()
    } else {
        let items: String = errors
            .iter()
            .map(|e| {
                format!(
                    "<li><a href=\"#{}\">{}</a></li>",
                    e.field,
                    escape(&e.message)
                )
            })
            .collect();
        format!(
            "<div class=\"error\" role=\"alert\"><p>Nothing was saved. Fix these values:</p><ul>{items}</ul></div>"
        )
    };
    let body = format!(
        "<h1>Record vitals</h1>{summary}<form method=\"post\" action=\"/app/p/{handle}/vitals\" novalidate>{csrf}\
         <fieldset><legend>Blood pressure</legend>{systolic}{diastolic}</fieldset>\
         {heart}{resp}{spo2}<div class=\"row\"><div>{temperature}</div><div>{temperature_unit}</div></div>\
         <div class=\"row\"><div>{weight}</div><div>{weight_unit}</div></div>{height}\
         <button type=\"submit\" class=\"wide\">Save vitals</button></form>\
         <p><a href=\"/app/p/{handle}\">Cancel and return to the chart</a></p>",
        csrf = hidden("csrf", &active.session.csrf),
        systolic = input(
            Input {
                field: "systolic",
                label: "Systolic",
                hint: "mmHg"
            },
            &form.systolic
        ),
        diastolic = input(
            Input {
                field: "diastolic",
                label: "Diastolic",
                hint: "mmHg"
            },
            &form.diastolic
        ),
        heart = input(
            Input {
                field: "heart_rate",
                label: "Heart rate",
                hint: "beats per minute"
            },
            &form.heart_rate
        ),
        resp = input(
            Input {
                field: "respiratory_rate",
                label: "Respiratory rate",
                hint: "breaths per minute"
            },
            &form.respiratory_rate
        ),
        spo2 = input(
            Input {
                field: "spo2",
                label: "Oxygen saturation (SpO2)",
                hint: "percent"
            },
            &form.spo2
        ),
        temperature = input(
            Input {
                field: "temperature",
                label: "Temperature",
                hint: ""
            },
            &form.temperature
        ),
        temperature_unit = select(
            "temperature_unit",
            "Unit",
            &[("C", "°C"), ("F", "°F")],
            &form.temperature_unit
        ),
        weight = input(
            Input {
                field: "weight",
                label: "Weight",
                hint: ""
            },
            &form.weight
        ),
        weight_unit = select(
            "weight_unit",
            "Unit",
            &[("kg", "kg"), ("lb", "lb")],
            &form.weight_unit
        ),
        height = input(
            Input {
                field: "height",
                label: "Height",
                hint: "cm"
            },
            &form.height
        ),
    );
    AppPage::new(status, "Record vitals", body)
        .signed_in(active.bar())
        .into_response()
}
