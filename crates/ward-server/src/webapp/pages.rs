//! The signed-in pages: "My patients" with search and the vitals form.
//! The chart itself is in [`super::chart`]. Patients are named in URLs
//! only by an opaque handle of the session, and searches are POSTed, so
//! no PHI reaches a URL, the history or a page title.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::call::{self, Call, resources};
use super::document::{Problem, error_summary_with_lead, invalid, select};
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
    // Administrators have no patients; their start page is the admin one.
    if active.admin {
        return see_other("/app/admin", &[]);
    }
    let uri = format!("/fhir/Patient?_count={LIST_LIMIT}");
    list_page(&state, peer, &mut active, &uri, "").await
}

/// `POST /app/search`: checks a search by name, birth date
/// (`YYYY-MM-DD`) or identifier, keeps it in the session and redirects to
/// [`search_results`].
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
    if let Err(message) = search_query(text) {
        return error_page(StatusCode::BAD_REQUEST, &message);
    }
    active.session.search = Some(text.to_owned());
    if let Err(response) = active.save(&state).await {
        return response;
    }
    see_other("/app/search", &[])
}

/// `GET /app/search`: the results of the search the last `POST
/// /app/search` of this session set (post, redirect, get: the browser's
/// history and session-restore files then hold no search text).
pub async fn search_results(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
) -> Response {
    let mut active = match signin::require(&state, peer, &headers).await {
        Ok(active) => active,
        Err(response) => return response,
    };
    let Some(text) = active.session.search.clone() else {
        return see_other("/app", &[]);
    };
    let query = match search_query(&text) {
        Ok(query) => query,
        Err(message) => return error_page(StatusCode::BAD_REQUEST, &message),
    };
    let uri = format!("/fhir/Patient?{query}");
    list_page(&state, peer, &mut active, &uri, &text).await
}

/// Builds the FHIR Patient search for what the user typed. A name of
/// several words ("Alberto Atencio", "Atencio, Alberto") becomes one
/// `name` parameter per word, which FHIR combines with AND.
///
/// # Errors
///
/// A message for the page when the text looks like a date that does not
/// exist (`1993-02-30`).
fn search_query(text: &str) -> Result<String, String> {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    let (parameter, value) = classify(text);
    match parameter {
        "birthdate" if !is_real_date(value) => {
            return Err(format!(
                "{value} is not a valid date. Enter a birth date as YYYY-MM-DD, for example 1993-02-28."
            ));
        }
        "name" => {
            for word in value
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|word| !word.is_empty())
            {
                query.append_pair("name", word);
            }
        }
        _ => {
            query.append_pair(parameter, value);
        }
    }
    query.append_pair("_count", &LIST_LIMIT.to_string());
    Ok(query.finish())
}

/// Checks that a `YYYY-MM-DD` text names a day of the calendar.
fn is_real_date(text: &str) -> bool {
    let mut parts = text.split('-').map(str::parse::<u32>);
    let (Some(Ok(year)), Some(Ok(month)), Some(Ok(day)), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    year > 0 && (1..=days).contains(&day)
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

pub(super) fn expired_form() -> Response {
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
         <p><a class=\"messages-link\" href=\"/app/messages\">Messages: referrals, prescriptions and lab results</a></p>\
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

pub(super) fn fhir_failure(reply: &call::Reply) -> Response {
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
pub(super) fn patient_name(patient: &Value) -> String {
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

/// Builds the page for a handle this session does not know.
pub(super) fn unknown_handle() -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "This patient link belongs to another sign-in or has expired. Find the patient again.",
    )
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
pub(super) fn performer_of(state: &AppState, token: &str) -> Option<String> {
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
    let errors: Vec<Problem> = errors
        .iter()
        .map(|error| Problem {
            field: error.field,
            message: error.message.clone(),
        })
        .collect();
    let input = |input: Input, value: &str| {
        let (invalid, message) = invalid(&errors, input.field);
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
    let summary = error_summary_with_lead("Nothing was saved. Fix these values:", &errors);
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
            &form.temperature_unit,
            &errors
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
            &form.weight_unit,
            &errors
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_names_become_one_parameter_per_word() {
        assert_eq!(
            search_query("Alberto  Atencio").unwrap(),
            "name=Alberto&name=Atencio&_count=50"
        );
        assert_eq!(
            search_query("Atencio, Alberto").unwrap(),
            "name=Atencio&name=Alberto&_count=50"
        );
        assert_eq!(search_query("atencio").unwrap(), "name=atencio&_count=50");
        assert_eq!(
            search_query("1993-06-07").unwrap(),
            "birthdate=1993-06-07&_count=50"
        );
        assert_eq!(
            search_query("urn:x|123").unwrap(),
            "identifier=urn%3Ax%7C123&_count=50"
        );
    }

    #[test]
    fn impossible_birth_dates_are_named() {
        let message = search_query("1993-02-30").unwrap_err();
        assert!(message.contains("1993-02-30"), "{message}");
        assert!(message.contains("YYYY-MM-DD"), "{message}");
        assert!(search_query("1993-13-01").is_err());
        assert!(search_query("1993-00-10").is_err());
        assert!(search_query("2024-02-29").is_ok());
        assert!(search_query("2023-02-29").is_err());
        assert!(search_query("1900-02-29").is_err());
        assert!(search_query("2000-02-29").is_ok());
    }
}
