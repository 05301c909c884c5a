//! Offline documentation: notes and vital signs become FHIR resources
//! that are saved as encrypted drafts before anything else happens, so a
//! lock or a crash never loses them, and are sent on the next sync.
//!
//! A new resource is created with `If-None-Exist` on its draft
//! identifier, so a draft whose reply was lost is not created twice. An
//! amendment is sent with `If-Match` on the version it was based on; a
//! 412 turns the draft into a conflict that stays on the device until
//! the user resolves it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{MobileError, MobileResult};
use crate::http::Transport;
use crate::store::{Store, kind};

/// Identifier system of resources made from drafts.
pub const DRAFT_SYSTEM: &str = "urn:ward:mobile:draft";
/// Longest accepted note text, in bytes.
const MAX_NOTE_BYTES: usize = 64 * 1024;

/// The state of a draft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DraftState {
    /// Waiting for the next sync.
    Queued,
    /// The server has a newer version (HTTP 412), so the draft is kept for the user.
    Conflict,
    /// The server rejected the resource (HTTP 400, 403 or 422); kept for
    /// the user.
    Rejected,
}

/// A draft as listed by `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftInfo {
    /// Draft id.
    pub id: String,
    /// Patient id.
    pub patient_id: String,
    /// `DocumentReference` or `Observation`.
    pub resource_type: String,
    /// The id of the amended resource, for amendments.
    pub target_id: Option<String>,
    /// The state of the draft.
    pub state: DraftState,
    /// The server's reason for a conflict or rejection.
    pub message: Option<String>,
    /// When the draft was written (RFC 3339).
    pub created_at: String,
}

/// A stored draft.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Draft {
    pub(crate) info: DraftInfo,
    /// The resource to send.
    pub(crate) resource: Value,
    /// The version an amendment is based on, sent as `If-Match`.
    pub(crate) base_version: Option<String>,
}

/// Vital signs measured at one time. Every field is optional, but at
/// least one must be set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Vitals {
    /// Heart rate in beats per minute.
    pub heart_rate: Option<f64>,
    /// Systolic blood pressure in mmHg (with `diastolic`).
    pub systolic: Option<f64>,
    /// Diastolic blood pressure in mmHg (with `systolic`).
    pub diastolic: Option<f64>,
    /// Respiratory rate in breaths per minute.
    pub respiratory_rate: Option<f64>,
    /// Body temperature in degrees Celsius.
    pub temperature_c: Option<f64>,
    /// Oxygen saturation in percent.
    pub spo2: Option<f64>,
    /// Body weight in kilograms.
    pub weight_kg: Option<f64>,
}

/// One vital sign: LOINC code, name, UCUM unit and plausible range.
struct Measure {
    loinc: &'static str,
    display: &'static str,
    ucum: &'static str,
    min: f64,
    max: f64,
}

const HEART_RATE: Measure = Measure {
    loinc: "8867-4",
    display: "Heart rate",
    ucum: "/min",
    min: 20.0,
    max: 250.0,
};
const RESPIRATORY_RATE: Measure = Measure {
    loinc: "9279-1",
    display: "Respiratory rate",
    ucum: "/min",
    min: 4.0,
    max: 60.0,
};
const TEMPERATURE: Measure = Measure {
    loinc: "8310-5",
    display: "Body temperature",
    ucum: "Cel",
    min: 30.0,
    max: 45.0,
};
const SPO2: Measure = Measure {
    loinc: "59408-5",
    display: "Oxygen saturation in Arterial blood by Pulse oximetry",
    ucum: "%",
    min: 50.0,
    max: 100.0,
};
const WEIGHT: Measure = Measure {
    loinc: "29463-7",
    display: "Body weight",
    ucum: "kg",
    min: 0.3,
    max: 400.0,
};
const SYSTOLIC: Measure = Measure {
    loinc: "8480-6",
    display: "Systolic blood pressure",
    ucum: "mm[Hg]",
    min: 50.0,
    max: 260.0,
};
const DIASTOLIC: Measure = Measure {
    loinc: "8462-4",
    display: "Diastolic blood pressure",
    ucum: "mm[Hg]",
    min: 20.0,
    max: 160.0,
};

impl Measure {
    fn check(&self, field: &str, value: f64) -> MobileResult<()> {
        if value.is_finite() && (self.min..=self.max).contains(&value) {
            return Ok(());
        }
        Err(MobileError::invalid(
            field,
            format!(
                "{value} {} is outside the plausible range {} to {} {}",
                self.ucum, self.min, self.max, self.ucum
            ),
        ))
    }

    fn coding(&self) -> Value {
        json!({
            "coding": [{"system": "http://loinc.org", "code": self.loinc, "display": self.display}],
            "text": self.display,
        })
    }

    fn quantity(&self, value: f64) -> Value {
        json!({
            "value": value,
            "unit": self.ucum,
            "system": "http://unitsofmeasure.org",
            "code": self.ucum,
        })
    }
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc())
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn identifier(draft_id: &str) -> Value {
    json!([{"system": DRAFT_SYSTEM, "value": draft_id}])
}

/// Builds the Observations for `vitals`: one per measure, blood pressure
/// as one panel with two components.
pub(crate) fn vitals_observations(
    patient: &str,
    vitals: &Vitals,
    performer: Option<&str>,
) -> MobileResult<Vec<Value>> {
    let mut single = Vec::new();
    for (field, measure, value) in [
        ("heart_rate", &HEART_RATE, vitals.heart_rate),
        (
            "respiratory_rate",
            &RESPIRATORY_RATE,
            vitals.respiratory_rate,
        ),
        ("temperature_c", &TEMPERATURE, vitals.temperature_c),
        ("spo2", &SPO2, vitals.spo2),
        ("weight_kg", &WEIGHT, vitals.weight_kg),
    ] {
        if let Some(value) = value {
            measure.check(field, value)?;
            single.push((measure, value));
        }
    }
    let pressure = match (vitals.systolic, vitals.diastolic) {
        (Some(systolic), Some(diastolic)) => {
            SYSTOLIC.check("systolic", systolic)?;
            DIASTOLIC.check("diastolic", diastolic)?;
            if systolic <= diastolic {
                return Err(MobileError::invalid(
                    "systolic",
                    format!("{systolic} mm[Hg] must be above the diastolic {diastolic} mm[Hg]"),
                ));
            }
            Some((systolic, diastolic))
        }
        (None, None) => None,
        _ => {
            return Err(MobileError::invalid(
                "blood pressure",
                "give both systolic and diastolic, or neither",
            ));
        }
    };
    if single.is_empty() && pressure.is_none() {
        return Err(MobileError::invalid(
            "vitals",
            "set at least one measurement",
        ));
    }

    let effective = now_rfc3339();
    let base = |code: Value| {
        let mut observation = json!({
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "vital-signs",
                "display": "Vital Signs",
            }]}],
            "code": code,
            "subject": {"reference": format!("Patient/{patient}")},
            "effectiveDateTime": effective,
        });
        if let Some(performer) = performer {
            observation["performer"] = json!([{"reference": performer}]);
        }
        observation
    };
    let mut observations: Vec<Value> = single
        .into_iter()
        .map(|(measure, value)| {
            let mut observation = base(measure.coding());
            observation["valueQuantity"] = measure.quantity(value);
            observation
        })
        .collect();
    if let Some((systolic, diastolic)) = pressure {
        let mut panel = base(json!({
            "coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel with all children optional"}],
            "text": "Blood pressure",
        }));
        panel["component"] = json!([
            {"code": SYSTOLIC.coding(), "valueQuantity": SYSTOLIC.quantity(systolic)},
            {"code": DIASTOLIC.coding(), "valueQuantity": DIASTOLIC.quantity(diastolic)},
        ]);
        observations.push(panel);
    }
    Ok(observations)
}

/// Builds a clinical note as a DocumentReference with a `text/plain`
/// attachment.
pub(crate) fn note_document(
    patient: &str,
    title: &str,
    text: &str,
    author: Option<&str>,
) -> MobileResult<Value> {
    if text.trim().is_empty() {
        return Err(MobileError::invalid("note text", "the note is empty"));
    }
    if text.len() > MAX_NOTE_BYTES {
        return Err(MobileError::invalid(
            "note text",
            format!(
                "{} bytes is more than the limit of {MAX_NOTE_BYTES}",
                text.len()
            ),
        ));
    }
    let title = if title.trim().is_empty() {
        "Clinical note"
    } else {
        title.trim()
    };
    let mut document = json!({
        "resourceType": "DocumentReference",
        "status": "current",
        "docStatus": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "date": now_rfc3339(),
        "description": title,
        "content": [{"attachment": {
            "contentType": "text/plain; charset=utf-8",
            "data": B64.encode(text.as_bytes()),
            "title": title,
        }}],
    });
    if let Some(author) = author {
        document["author"] = json!([{"reference": author}]);
    }
    Ok(document)
}

/// Saves `resource` as a queued draft and returns its id.
pub(crate) fn save_draft(
    store: &Store,
    patient: &str,
    mut resource: Value,
    base_version: Option<String>,
) -> MobileResult<String> {
    let id = uuid::Uuid::new_v4().to_string();
    let target_id = resource["id"].as_str().map(str::to_owned);
    if target_id.is_none() {
        resource["identifier"] = identifier(&id);
    }
    let draft = Draft {
        info: DraftInfo {
            id: id.clone(),
            patient_id: patient.to_owned(),
            resource_type: resource["resourceType"].as_str().unwrap_or("").to_owned(),
            target_id,
            state: DraftState::Queued,
            message: None,
            created_at: now_rfc3339(),
        },
        resource,
        base_version,
    };
    store.put_json(kind::DRAFT, &id, Some(patient), &draft)?;
    Ok(id)
}

/// Every draft, oldest first.
pub(crate) fn drafts(store: &Store) -> MobileResult<Vec<Draft>> {
    let mut drafts: Vec<Draft> = store.list_json(kind::DRAFT, None)?;
    drafts.sort_by(|a, b| a.info.created_at.cmp(&b.info.created_at));
    Ok(drafts)
}

/// What sending the queue did.
#[derive(Default)]
pub(crate) struct PushOutcome {
    pub(crate) sent: u32,
    pub(crate) conflicts: u32,
    pub(crate) requests: u32,
    pub(crate) bytes: u64,
}

/// Sends every queued draft. A transport failure or 401 stops the queue
/// and keeps the rest queued.
pub(crate) fn push(store: &Store, transport: &Transport, token: &str) -> MobileResult<PushOutcome> {
    let mut outcome = PushOutcome::default();
    for mut draft in drafts(store)? {
        if draft.info.state != DraftState::Queued {
            continue;
        }
        let reply = send_draft(transport, token, &draft)?;
        outcome.requests += 1;
        outcome.bytes += reply.body.len() as u64;
        match reply.status {
            200 | 201 => {
                let resource = reply.json();
                if let Some(patient) = crate::sync::owner_of(&resource) {
                    let key = format!(
                        "{}/{}",
                        resource["resourceType"].as_str().unwrap_or(""),
                        resource["id"].as_str().unwrap_or("")
                    );
                    store.transaction(|store| {
                        store.put_json(kind::RESOURCE, &key, Some(&patient), &resource)?;
                        store.delete(kind::DRAFT, &draft.info.id).map(|_| ())
                    })?;
                } else {
                    store.delete(kind::DRAFT, &draft.info.id)?;
                }
                outcome.sent += 1;
            }
            401 => {
                return Err(MobileError::Unauthorized {
                    detail: reply.detail(),
                });
            }
            412 => {
                draft.info.state = DraftState::Conflict;
                draft.info.message = Some(format!(
                    "the server holds a newer version than {}: {}",
                    draft.base_version.as_deref().unwrap_or("?"),
                    reply.detail()
                ));
                store.put_json(
                    kind::DRAFT,
                    &draft.info.id,
                    Some(&draft.info.patient_id),
                    &draft,
                )?;
                outcome.conflicts += 1;
            }
            400 | 403 | 404 | 409 | 422 => {
                draft.info.state = DraftState::Rejected;
                draft.info.message = Some(format!("HTTP {}: {}", reply.status, reply.detail()));
                store.put_json(
                    kind::DRAFT,
                    &draft.info.id,
                    Some(&draft.info.patient_id),
                    &draft,
                )?;
            }
            status => {
                return Err(MobileError::Server {
                    operation: "sending a draft".into(),
                    status,
                    detail: reply.detail(),
                });
            }
        }
    }
    Ok(outcome)
}

fn send_draft(
    transport: &Transport,
    token: &str,
    draft: &Draft,
) -> MobileResult<crate::http::Reply> {
    let resource_type = &draft.info.resource_type;
    let builder = match (&draft.info.target_id, &draft.base_version) {
        (Some(id), Some(version)) => transport
            .request(Method::PUT, &format!("/fhir/{resource_type}/{id}"))
            .header("if-match", format!("W/\"{version}\"")),
        _ => {
            let condition = format!("identifier={DRAFT_SYSTEM}|{}", draft.info.id);
            transport
                .request(Method::POST, &format!("/fhir/{resource_type}"))
                .header("if-none-exist", condition)
        }
    };
    let builder = builder
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .header("accept", "application/fhir+json")
        .header("prefer", "return=representation")
        .body(draft.resource.to_string());
    transport.send(builder, "sending a draft")
}

/// Builds the amended version of a cached note.
pub(crate) fn amend_note(cached: &Value, title: &str, text: &str) -> MobileResult<(Value, String)> {
    let patient = crate::sync::owner_of(cached)
        .ok_or_else(|| MobileError::corrupt("a cached note has no patient"))?;
    let version = cached["meta"]["versionId"].as_str().ok_or_else(|| {
        MobileError::corrupt("a cached note has no version; sync again before amending it")
    })?;
    let mut amended = note_document(&patient, title, text, None)?;
    amended["id"] = cached["id"].clone();
    if let Some(author) = cached.get("author") {
        amended["author"] = author.clone();
    }
    if let Some(identifier) = cached.get("identifier") {
        amended["identifier"] = identifier.clone();
    }
    Ok((amended, version.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vitals_use_loinc_and_ucum() {
        let vitals = Vitals {
            heart_rate: Some(72.0),
            systolic: Some(120.0),
            diastolic: Some(80.0),
            ..Vitals::default()
        };
        let observations = vitals_observations("p1", &vitals, Some("Practitioner/9")).unwrap();
        assert_eq!(observations.len(), 2);
        let heart = &observations[0];
        assert_eq!(heart["code"]["coding"][0]["code"], "8867-4");
        assert_eq!(heart["valueQuantity"]["code"], "/min");
        assert_eq!(
            heart["valueQuantity"]["system"],
            "http://unitsofmeasure.org"
        );
        assert_eq!(heart["subject"]["reference"], "Patient/p1");
        let panel = &observations[1];
        assert_eq!(panel["code"]["coding"][0]["code"], "85354-9");
        assert_eq!(panel["component"][0]["code"]["coding"][0]["code"], "8480-6");
        assert_eq!(panel["component"][1]["valueQuantity"]["code"], "mm[Hg]");
    }

    #[test]
    fn vitals_outside_range_rejected() {
        let cases = [
            Vitals {
                heart_rate: Some(400.0),
                ..Vitals::default()
            },
            Vitals {
                temperature_c: Some(98.6),
                ..Vitals::default()
            },
            Vitals {
                spo2: Some(f64::NAN),
                ..Vitals::default()
            },
            Vitals {
                systolic: Some(80.0),
                diastolic: Some(90.0),
                ..Vitals::default()
            },
            Vitals {
                systolic: Some(120.0),
                ..Vitals::default()
            },
            Vitals::default(),
        ];
        for vitals in cases {
            let result = vitals_observations("p1", &vitals, None);
            assert!(
                matches!(result, Err(MobileError::InvalidInput { .. })),
                "{vitals:?} was accepted"
            );
        }
    }

    #[test]
    fn note_is_base64_attachment() {
        let note = note_document("p1", "Ward round", "Feels better.", None).unwrap();
        let data = note["content"][0]["attachment"]["data"].as_str().unwrap();
        assert_eq!(B64.decode(data).unwrap(), b"Feels better.");
        assert!(note_document("p1", "", "   ", None).is_err());
    }
}
