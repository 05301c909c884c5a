//! The patient chart: problems, medications, allergies, immunizations,
//! the latest vitals and labs with a trend chart of their recent values,
//! encounters and documents, and the links to document and to each
//! record's history.
//!
//! Every section is one in-process FHIR search with the user's token, so a
//! section the user's role may not see says so instead of failing the
//! whole page. Records other than the patient are named in URLs by their
//! server-assigned logical id under the patient's opaque handle.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::call::{self, Call, resources};
use super::html::{AppPage, error_page, escape};
use super::pages::{fhir_failure, patient_name, unknown_handle};
use super::signin::{self, Active, PeerAddr};
use super::trend::{self, Series};
use crate::AppState;

/// The query of the chart page: which kind of record was just saved.
#[derive(Deserialize)]
pub struct ChartQuery {
    saved: Option<String>,
}

/// Loads the signed-in session and the patient id behind `handle`.
///
/// # Errors
///
/// The sign-in redirect, or a page for a handle this session does not know.
pub(super) async fn open(
    state: &AppState,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    handle: &str,
) -> Result<(Active, String), Response> {
    let active = signin::require(state, peer, headers).await?;
    let Some(patient_id) = active.session.patient_of(handle) else {
        return Err(unknown_handle());
    };
    Ok((active, patient_id))
}

/// True when a logical id from a URL has the form FHIR allows
/// (`[A-Za-z0-9\-\.]{1,64}`), so it can be put into a FHIR path as is.
pub(super) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// True when `resource` belongs to `patient_id` (its `subject` or
/// `patient` references the patient).
pub(super) fn belongs_to(resource: &Value, patient_id: &str) -> bool {
    let expected = format!("Patient/{patient_id}");
    ["/subject/reference", "/patient/reference"]
        .iter()
        .filter_map(|pointer| resource.pointer(pointer).and_then(Value::as_str))
        .any(|reference| reference == expected)
}

/// `GET /app/p/{handle}`: the chart.
pub async fn chart(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path(handle): Path<String>,
    Query(query): Query<ChartQuery>,
) -> Response {
    let (active, patient_id) = match open(&state, peer, &headers, &handle).await {
        Ok(opened) => opened,
        Err(response) => return response,
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
        sections.push_str(&render_section(section, &reply, &handle));
    }

    let notice = match query.saved.as_deref() {
        Some("1") => "Vitals saved.",
        Some("note") => "Note saved.",
        Some("problem") => "Problem saved.",
        Some("allergy") => "Allergy saved.",
        Some("photo") => "Photo saved.",
        _ => "",
    };
    let notice = if notice.is_empty() {
        String::new()
    } else {
        format!("<p class=\"notice\" role=\"status\">{notice}</p>")
    };

    let body = format!(
        "{notice}<h1>{name}</h1><dl><dt>Born</dt><dd>{birth}</dd><dt>Gender</dt><dd>{gender}</dd></dl>\
         <nav class=\"actions\" aria-label=\"Document\">\
         <a class=\"button\" href=\"/app/p/{handle}/vitals\">Record vitals</a>\
         <a class=\"button\" href=\"/app/p/{handle}/note\">Write a note</a>\
         <a class=\"button\" href=\"/app/p/{handle}/photo\">Add a photo</a>\
         <a class=\"button\" href=\"/app/p/{handle}/problem\">Add a problem</a>\
         <a class=\"button\" href=\"/app/p/{handle}/allergy\">Add an allergy</a></nav>\
         <nav class=\"actions\" aria-label=\"Send\">\
         <a class=\"button\" href=\"/app/p/{handle}/refer\">Refer</a>\
         <a class=\"button\" href=\"/app/p/{handle}/prescribe\">Prescribe</a>\
         <a class=\"button plain\" href=\"/app/messages\">Messages</a></nav>{sections}",
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

/// The layout of a section's resource list.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// One line per resource.
    Plain,
    /// One line per resource with links to change it and to its history.
    Records,
    /// The newest resource per code, with a trend chart of the others.
    Latest,
    /// Encounters, newest first.
    Encounters,
    /// Documents, newest first, each a link to open it.
    Documents,
}

/// One section of the chart.
struct Section {
    title: &'static str,
    resource_type: &'static str,
    query: &'static str,
    layout: Layout,
}

const SECTIONS: &[Section] = &[
    Section {
        title: "Problems",
        resource_type: "Condition",
        query: "_count=50",
        layout: Layout::Records,
    },
    Section {
        title: "Medications",
        resource_type: "MedicationRequest",
        query: "_count=50",
        layout: Layout::Plain,
    },
    Section {
        title: "Allergies",
        resource_type: "AllergyIntolerance",
        query: "_count=50",
        layout: Layout::Records,
    },
    Section {
        title: "Immunizations",
        resource_type: "Immunization",
        query: "_count=50",
        layout: Layout::Plain,
    },
    Section {
        title: "Latest vitals",
        resource_type: "Observation",
        query: "category=vital-signs&_sort=-date&_count=100",
        layout: Layout::Latest,
    },
    Section {
        title: "Latest labs",
        resource_type: "Observation",
        query: "category=laboratory&_sort=-date&_count=100",
        layout: Layout::Latest,
    },
    Section {
        title: "Encounters",
        resource_type: "Encounter",
        query: "_sort=-date&_count=20",
        layout: Layout::Encounters,
    },
    Section {
        title: "Documents",
        resource_type: "DocumentReference",
        query: "_sort=-date&_count=30",
        layout: Layout::Documents,
    },
];

fn render_section(section: &Section, reply: &call::Reply, handle: &str) -> String {
    let items = if reply.status.is_success() {
        let found = resources(&reply.body);
        let lines: Vec<String> = match section.layout {
            Layout::Plain => found.into_iter().map(describe).collect(),
            Layout::Records => found
                .into_iter()
                .map(|resource| record_line(resource, handle))
                .collect(),
            Layout::Latest => latest_lines(&found),
            Layout::Encounters => found.into_iter().map(describe_encounter).collect(),
            Layout::Documents => found
                .into_iter()
                .map(|resource| document_line(resource, handle))
                .collect(),
        };
        if lines.is_empty() {
            "<p class=\"empty\">None recorded.</p>".to_owned()
        } else {
            let class = match section.layout {
                Layout::Plain | Layout::Encounters => "",
                Layout::Records | Layout::Latest => " class=\"records\"",
                Layout::Documents => " class=\"cards\"",
            };
            let items: String = lines
                .iter()
                .map(|line| format!("<li>{line}</li>"))
                .collect();
            format!("<ul{class}>{items}</ul>")
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

/// Renders a problem or allergy with its status and links to change it
/// and to see its history.
fn record_line(resource: &Value, handle: &str) -> String {
    let resource_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("");
    let Some(id) = resource
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| valid_id(id))
    else {
        return describe(resource);
    };
    let status = resource
        .pointer("/clinicalStatus/coding/0/code")
        .and_then(Value::as_str)
        .map(|code| format!(" <span class=\"clinical-status\">{}</span>", escape(code)))
        .unwrap_or_default();
    let change = if resource_type == "Condition" {
        format!("<a class=\"action\" href=\"/app/p/{handle}/problems/{id}\">Change status</a>")
    } else {
        String::new()
    };
    format!(
        "<div>{line}{status}</div><div class=\"links\">{change}\
         <a class=\"action\" href=\"/app/p/{handle}/history/{resource_type}/{id}\">History</a></div>",
        line = describe(resource),
    )
}

/// Renders a document as a card that opens it.
fn document_line(resource: &Value, handle: &str) -> String {
    let Some(id) = resource
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| valid_id(id))
    else {
        return String::new();
    };
    let kind = if is_photo(resource) { "Photo" } else { "Note" };
    let date = resource
        .get("date")
        .and_then(Value::as_str)
        .map(|date| date.get(..10).unwrap_or(date))
        .unwrap_or("no date");
    format!(
        "<a class=\"card\" href=\"/app/p/{handle}/documents/{id}\"><span class=\"name\">{title}</span> \
         <span class=\"meta\">{kind}, {date}</span></a>",
        title = escape(&document_title(resource)),
        date = escape(date),
    )
}

/// True when the first attachment of a DocumentReference is an image.
pub(super) fn is_photo(document: &Value) -> bool {
    document
        .pointer("/content/0/attachment/contentType")
        .and_then(Value::as_str)
        .is_some_and(|t| t.starts_with("image/"))
}

/// Returns the title of a DocumentReference: its description, the
/// attachment title or its type.
pub(super) fn document_title(document: &Value) -> String {
    document
        .get("description")
        .and_then(Value::as_str)
        .or_else(|| {
            document
                .pointer("/content/0/attachment/title")
                .and_then(Value::as_str)
        })
        .map(str::to_owned)
        .unwrap_or_else(|| concept_text(document.get("type")))
}

/// Renders the newest Observation per code, each with a trend chart of
/// the values before it. `found` is sorted newest first.
fn latest_lines(found: &[&Value]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut groups: HashMap<String, Vec<&Value>> = HashMap::new();
    for resource in found {
        let key = measurement_key(resource);
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(resource);
    }
    order
        .iter()
        .filter_map(|key| {
            let group = groups.get(key)?;
            let newest = group.first()?;
            let name = concept_text(resource_code(newest));
            let chart = trend::chart(&name, &series_of(group)).unwrap_or_default();
            Some(format!("<div>{line}</div>{chart}", line = describe(newest)))
        })
        .collect()
}

/// Collects the numeric series of a group of Observations (newest
/// first): one for `valueQuantity`, or one per component code (blood
/// pressure).
fn series_of(group: &[&Value]) -> Vec<Series> {
    let mut series: Vec<Series> = Vec::new();
    for observation in group.iter().rev() {
        let mut add = |label: String, quantity: &Value| {
            let Some(value) = quantity.get("value").and_then(Value::as_f64) else {
                return;
            };
            let unit = unit_of(quantity);
            match series
                .iter_mut()
                .find(|s| s.label == label && s.unit == unit)
            {
                Some(line) => line.values.push(value),
                None => series.push(Series {
                    label,
                    unit,
                    values: vec![value],
                }),
            }
        };
        if let Some(quantity) = observation.get("valueQuantity") {
            add(String::new(), quantity);
        } else if let Some(components) = observation.get("component").and_then(Value::as_array) {
            for component in components {
                if let Some(quantity) = component.get("valueQuantity") {
                    let label = match loinc_code(component.get("code")) {
                        Some(SYSTOLIC) => "systolic".to_owned(),
                        Some(DIASTOLIC) => "diastolic".to_owned(),
                        _ => component_label(&concept_text(component.get("code"))),
                    };
                    add(label, quantity);
                }
            }
        }
    }
    // Systolic first, whatever order the components came in.
    series.sort_by_key(|line| usize::from(line.label == "diastolic"));
    series
}

/// LOINC code of systolic blood pressure.
const SYSTOLIC: &str = "8480-6";
/// LOINC code of diastolic blood pressure.
const DIASTOLIC: &str = "8462-4";
/// LOINC codes of blood pressure panels: the vital-signs panel and the
/// "Blood pressure panel with all children optional" imported data uses.
const BP_PANELS: [&str; 2] = ["85354-9", "55284-4"];

/// Returns the LOINC code of a CodeableConcept, if it has one.
fn loinc_code(concept: Option<&Value>) -> Option<&str> {
    concept?
        .get("coding")?
        .as_array()?
        .iter()
        .find(|coding| coding.get("system").and_then(Value::as_str) == Some("http://loinc.org"))?
        .get("code")?
        .as_str()
}

/// Returns the key that groups Observations of one measurement into one
/// trend row: the LOINC code, else the code's text. Both blood pressure
/// panel codes give the same key.
fn measurement_key(resource: &Value) -> String {
    match loinc_code(resource_code(resource)) {
        Some(code) if BP_PANELS.contains(&code) => format!("loinc|{}", BP_PANELS[0]),
        Some(code) => format!("loinc|{code}"),
        None => concept_text(resource_code(resource)),
    }
}

/// Shortens "Systolic blood pressure" to "systolic" for a chart legend.
fn component_label(text: &str) -> String {
    text.split_whitespace()
        .next()
        .unwrap_or(text)
        .to_lowercase()
}

fn describe_encounter(encounter: &Value) -> String {
    let kind = encounter
        .pointer("/type/0")
        .map(|t| concept_text(Some(t)))
        .filter(|t| t != "(no code)")
        .or_else(|| {
            encounter
                .pointer("/class/display")
                .or_else(|| encounter.pointer("/class/code"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "Encounter".to_owned());
    let status = encounter
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let start = encounter
        .pointer("/period/start")
        .and_then(Value::as_str)
        .map(|d| d.get(..10).unwrap_or(d))
        .unwrap_or("no date");
    let reason = encounter
        .pointer("/reasonCode/0")
        .map(|r| concept_text(Some(r)))
        .filter(|r| r != "(no code)")
        .map(|r| format!(", {}", escape(&r)))
        .unwrap_or_default();
    format!(
        "<span class=\"name\">{kind}</span>{reason} <span class=\"meta\">({start}, {status})</span>",
        kind = escape(&kind),
        start = escape(start),
        status = escape(status),
    )
}

/// Returns the code of a clinical resource.
pub(super) fn resource_code(resource: &Value) -> Option<&Value> {
    resource
        .get("code")
        .or_else(|| resource.get("medicationCodeableConcept"))
        .or_else(|| resource.get("vaccineCode"))
}

/// Returns the text of a CodeableConcept: its text, a display or a code.
pub(super) fn concept_text(concept: Option<&Value>) -> String {
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

/// Returns the readable unit of a Quantity, from its `unit` or else its
/// `code`.
fn unit_of(quantity: &Value) -> String {
    trend::unit_text(
        quantity
            .get("unit")
            .or_else(|| quantity.get("code"))
            .and_then(Value::as_str)
            .unwrap_or(""),
    )
}

/// Returns the rounded value of a Quantity and its readable unit.
fn quantity_parts(quantity: &Value) -> Option<(String, String)> {
    let value = quantity.get("value")?;
    let unit = unit_of(quantity);
    let value = match value.as_f64() {
        Some(number) => trend::number_in(number, &unit),
        None => value.to_string(),
    };
    Some((value, unit))
}

fn quantity_text(quantity: &Value) -> Option<String> {
    let (value, unit) = quantity_parts(quantity)?;
    Some(format!("{value} {unit}").trim().to_owned())
}

/// Shows a blood pressure as "systolic/diastolic unit", picking the
/// components by their LOINC codes, not by their order.
fn blood_pressure_text(components: &[Value]) -> Option<String> {
    let part = |code: &str| {
        components
            .iter()
            .find(|c| loinc_code(c.get("code")) == Some(code))
            .and_then(|c| c.get("valueQuantity"))
            .and_then(quantity_parts)
    };
    let (systolic, unit) = part(SYSTOLIC)?;
    let (diastolic, _) = part(DIASTOLIC)?;
    Some(format!("{systolic}/{diastolic} {unit}").trim().to_owned())
}

/// Describes a resource in one escaped HTML line.
pub(super) fn describe(resource: &Value) -> String {
    let name = escape(&concept_text(resource_code(resource)));
    let mut value = resource.get("valueQuantity").and_then(quantity_text);
    if value.is_none()
        && let Some(components) = resource.get("component").and_then(Value::as_array)
    {
        let parts: Vec<String> = components
            .iter()
            .filter_map(|c| c.get("valueQuantity").and_then(quantity_text))
            .collect();
        if let Some(pressure) = blood_pressure_text(components) {
            value = Some(pressure);
        } else if !parts.is_empty() {
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

/// Resolves references to people (`Practitioner/1`) to their names for
/// display, reading each once per page with the user's token. A reference
/// the user may not read is shown as "someone else".
pub(super) struct Names<'a> {
    state: &'a AppState,
    peer: Option<SocketAddr>,
    token: &'a str,
    known: HashMap<String, String>,
}

impl<'a> Names<'a> {
    /// Creates an empty cache for one page.
    pub(super) fn new(state: &'a AppState, peer: Option<SocketAddr>, token: &'a str) -> Self {
        Self {
            state,
            peer,
            token,
            known: HashMap::new(),
        }
    }

    /// Returns the display name of the person `reference` names.
    pub(super) async fn of(&mut self, reference: &Value) -> String {
        if let Some(display) = reference.get("display").and_then(Value::as_str) {
            return display.to_owned();
        }
        let Some(target) = reference.get("reference").and_then(Value::as_str) else {
            return "someone else".to_owned();
        };
        if let Some(name) = self.known.get(target) {
            return name.clone();
        }
        let allowed = target.split_once('/').is_some_and(|(kind, id)| {
            matches!(
                kind,
                "Practitioner" | "PractitionerRole" | "Patient" | "RelatedPerson" | "Organization"
            ) && valid_id(id)
        });
        let name = if allowed {
            let reply = call::send(
                self.state,
                self.peer,
                Call::get(&format!("/fhir/{target}"), self.token),
            )
            .await;
            if reply.status.is_success() {
                match reply.body.get("name") {
                    Some(Value::String(name)) => name.clone(),
                    Some(_) => patient_name(&reply.body),
                    None => target.to_owned(),
                }
            } else {
                "someone else".to_owned()
            }
        } else {
            "someone else".to_owned()
        };
        self.known.insert(target.to_owned(), name.clone());
        name
    }
}

/// Builds the page for a record that is not this patient's or not found.
pub(super) fn record_not_found() -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "This record was not found in this patient's chart.",
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn ids_from_urls_are_checked() {
        assert!(valid_id("0b7c3a52-6a8e-4d1e-9f40-1c2d3e4f5a6b"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id("a?b"));
        assert!(!valid_id(&"a".repeat(65)));
    }

    #[test]
    fn records_belong_to_their_patient() {
        let condition =
            json!({"resourceType": "Condition", "subject": {"reference": "Patient/p1"}});
        assert!(belongs_to(&condition, "p1"));
        assert!(!belongs_to(&condition, "p2"));
        let allergy =
            json!({"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/p2"}});
        assert!(belongs_to(&allergy, "p2"));
    }

    #[test]
    fn blood_pressure_has_two_series() {
        let bp = |s: i64, d: i64| {
            json!({"resourceType": "Observation", "code": {"text": "Blood pressure"}, "component": [
                {"code": {"text": "Systolic blood pressure"}, "valueQuantity": {"value": s, "unit": "mmHg"}},
                {"code": {"text": "Diastolic blood pressure"}, "valueQuantity": {"value": d, "unit": "mmHg"}},
            ]})
        };
        let newest = bp(130, 85);
        let older = bp(120, 80);
        let series = series_of(&[&newest, &older]);
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].label, "systolic");
        assert_eq!(series[0].values, vec![120.0, 130.0]);
        assert_eq!(series[1].values, vec![80.0, 85.0]);
        let lines = latest_lines(&[&newest, &older]);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("130 mmHg / 85 mmHg"), "{}", lines[0]);
        assert!(lines[0].contains("<svg"), "{}", lines[0]);
    }

    /// An imported reading (panel 55284-4, diastolic listed first, UCUM
    /// unit, unrounded) and one saved by the app (panel 85354-9) form one
    /// row, systolic first, rounded, with a readable unit.
    #[test]
    fn blood_pressure_by_component_code() {
        let component = |code: &str, value: f64| {
            json!({"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                   "valueQuantity": {"value": value, "unit": "mm[Hg]", "code": "mm[Hg]"}})
        };
        let imported = json!({"resourceType": "Observation",
            "code": {"coding": [{"system": "http://loinc.org", "code": "55284-4"}], "text": "Blood Pressure"},
            "effectiveDateTime": "2019-03-11T10:00:00Z",
            "component": [component(DIASTOLIC, 78.163_256_479_677_83), component(SYSTOLIC, 131.536_667_142_603_82)]});

        let saved = json!({"resourceType": "Observation",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}]},
            "effectiveDateTime": "2024-05-01T10:00:00Z",
            "component": [component(SYSTOLIC, 120.0), component(DIASTOLIC, 80.0)]});

        assert!(
            describe(&imported).contains("132/78 mmHg"),
            "{}",
            describe(&imported)
        );
        let lines = latest_lines(&[&saved, &imported]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("120/80 mmHg"), "{}", lines[0]);

        let series = series_of(&[&saved, &imported]);
        assert_eq!(series[0].label, "systolic");
        assert_eq!(series[0].unit, "mmHg");
        assert_eq!(series[0].values, vec![131.536_667_142_603_82, 120.0]);
        assert_eq!(series[1].label, "diastolic");
        assert!(
            lines[0].contains("systolic 132, 120 mmHg; diastolic 78, 80 mmHg"),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn quantities_are_rounded() {
        let height = json!({"resourceType": "Observation", "code": {"text": "Body Height"},
            "valueQuantity": {"value": 179.221_397_606_933_3, "unit": "cm"}});
        assert!(
            describe(&height).contains("179.2 cm"),
            "{}",
            describe(&height)
        );
    }
}
