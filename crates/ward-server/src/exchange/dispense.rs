//! Dispensing reports of a pharmacy. A pharmacist creates a
//! MedicationDispense whose `authorizingPrescription` is a MedicationRequest
//! filed from a received message. The server then queues a message back to
//! the prescribing organization. Its MessageHeader has the event
//! `medication-dispensed` and a `focus` that names the dispense and the id
//! of the prescription message. The Patient and the MedicationDispense
//! follow it.

use std::net::IpAddr;

use serde_json::{Value, json};
use ward_audit::record::Outcome;
use ward_exchange::outbox::{self, OutboxMessage};
use ward_exchange::{OrgRole, trust};

use super::roles::{EVENT_DISPENSED, EVENT_SYSTEM, MESSAGE_ID_SYSTEM, message_tag};
use super::{audit_exchange, now_secs};
use crate::AppState;
use crate::audit::Actor;
use crate::auth::Principal;
use crate::error::FhirError;

/// References of a MedicationDispense that point at resources only the
/// pharmacy holds, so the report leaves them out.
const LOCAL_REFERENCES: &[&str] = &[
    "performer",
    "location",
    "context",
    "receiver",
    "destination",
    "partOf",
    "eventHistory",
    "supportingInformation",
];

/// The prescription message a dispense refers to.
struct Prescription {
    /// The prescribing organization.
    prescriber: String,
    /// The id of the message that carried the prescription.
    message_id: String,
}

/// Queues the dispensing report of `dispense`, created by `principal`, when
/// this server is a pharmacy and the prescription came from another
/// organization. Failures are logged and audited: the dispense itself is
/// already stored.
///
/// NOTE: the dispense and the queued report are two writes, so a crash
/// between them stores the dispense without a report.
pub async fn report_dispense(
    state: &AppState,
    principal: &Principal,
    network: Option<IpAddr>,
    dispense: &Value,
) {
    let Some(exchange) = state.exchange.clone() else {
        return;
    };
    if exchange.identity.role != OrgRole::Pharmacy {
        return;
    }
    let engine = state.engine.clone();
    let caller_principal = principal.clone();
    let dispense = dispense.clone();
    let our_org = exchange.identity.id.clone();
    let give_up = i64::try_from(exchange.settings.give_up_after.as_secs()).unwrap_or(i64::MAX);
    let queued = tokio::task::spawn_blocking(move || {
        queue_report(&engine, &caller_principal, &our_org, &dispense, give_up)
    })
    .await;
    let actor = Actor::from_principal(principal, network);
    match queued {
        Ok(Ok(Some((message_id, recipient)))) => {
            audit_exchange(
                state,
                &actor,
                "message_queued",
                Outcome::Success,
                None,
                &[
                    ("message_id", &message_id),
                    ("recipient", &recipient),
                    ("event", EVENT_DISPENSED),
                ],
            )
            .await;
            exchange.wake.notify_one();
        }
        Ok(Ok(None)) => {}
        Ok(Err(error)) => {
            let reason = error
                .outcome
                .issues
                .first()
                .map_or_else(String::new, |issue| issue.diagnostics.clone());
            tracing::error!(target: "ward::exchange", status = error.status.as_u16(), %reason, "queueing a dispensing report failed");
            audit_exchange(
                state,
                &actor,
                "message_queue_failed",
                Outcome::SeriousFailure,
                Some(&reason),
                &[("event", EVENT_DISPENSED)],
            )
            .await;
        }
        Err(error) => {
            tracing::error!(target: "ward::exchange", %error, "queueing a dispensing report failed");
        }
    }
}

/// Builds and queues the report. Returns the message id and recipient, or
/// `None` when the dispense refers to no received prescription.
fn queue_report(
    engine: &crate::fhir::engine::Engine,
    principal: &Principal,
    our_org: &str,
    dispense: &Value,
    give_up: i64,
) -> Result<Option<(String, String)>, FhirError> {
    let caller = engine.access.caller(&*engine.store, principal)?;
    let Some(prescription) = find_prescription(engine, &caller, dispense)? else {
        return Ok(None);
    };
    let patient = match local_reference(dispense.pointer("/subject/reference"), "Patient") {
        Some(id) => engine.read(&caller, "Patient", id)?.resource,
        None => None,
    };
    let bundle = report_bundle(our_org, &prescription, patient, dispense);
    ward_fhir::validate::validate_resource(&bundle).map_err(|outcome| {
        FhirError::with_outcome(http::StatusCode::UNPROCESSABLE_ENTITY, outcome)
    })?;

    let message_id = bundle["id"].as_str().unwrap_or_default().to_owned();
    let now = now_secs();
    let record = OutboxMessage {
        id: message_id.clone(),
        recipient: prescription.prescriber.clone(),
        sender_user: principal.subject.clone(),
        bundle,
        status: outbox::Status::Queued,
        created: now,
        next_attempt: now,
        give_up_at: now.saturating_add(give_up),
        attempts: 0,
        last_error: None,
        response_code: None,
        delivered_at: None,
    };
    let store = &*engine.store;
    if trust::get(store, &record.recipient)
        .map_err(|error| FhirError::internal(&error))?
        .is_none()
    {
        return Err(FhirError::forbidden(&format!(
            "the prescribing organization {} is not in the trust bundle; see `ward org list`",
            record.recipient
        )));
    }
    outbox::enqueue(store, &record).map_err(|error| FhirError::internal(&error))?;
    Ok(Some((message_id, prescription.prescriber)))
}

/// Finds the first `authorizingPrescription` that was filed from a
/// received message, read with the caller's access checks.
fn find_prescription(
    engine: &crate::fhir::engine::Engine,
    caller: &crate::access::Caller<'_>,
    dispense: &Value,
) -> Result<Option<Prescription>, FhirError> {
    let references = dispense
        .get("authorizingPrescription")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for reference in references {
        let Some(id) = local_reference(reference.get("reference"), "MedicationRequest") else {
            continue;
        };
        let Some(request) = engine.read(caller, "MedicationRequest", id)?.resource else {
            continue;
        };
        let prescriber = request
            .pointer("/meta/source")
            .and_then(Value::as_str)
            .and_then(|source| source.strip_prefix("urn:ward:org:"));
        if let (Some(prescriber), Some(message_id)) = (prescriber, message_tag(&request)) {
            return Ok(Some(Prescription {
                prescriber: prescriber.to_owned(),
                message_id: message_id.to_owned(),
            }));
        }
    }
    Ok(None)
}

/// Returns the id of a relative reference `TYPE/ID`.
fn local_reference<'a>(reference: Option<&'a Value>, resource_type: &str) -> Option<&'a str> {
    reference?
        .as_str()?
        .strip_prefix(resource_type)?
        .strip_prefix('/')
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// Builds the message Bundle of a dispensing report.
fn report_bundle(
    our_org: &str,
    prescription: &Prescription,
    patient: Option<Value>,
    dispense: &Value,
) -> Value {
    let message_id = uuid::Uuid::new_v4().to_string();
    let dispense_url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let mut dispense = dispense.clone();
    if let Some(object) = dispense.as_object_mut() {
        object.remove("meta");
        for name in LOCAL_REFERENCES {
            object.remove(*name);
        }
        object.insert(
            "authorizingPrescription".to_owned(),
            json!([{
                "identifier": { "system": MESSAGE_ID_SYSTEM, "value": prescription.message_id },
                "display": "the prescription sent in this message",
            }]),
        );
    }
    let header = json!({
        "resourceType": "MessageHeader",
        "id": message_id,
        "eventCoding": { "system": EVENT_SYSTEM, "code": EVENT_DISPENSED },
        "destination": [{ "endpoint": format!("urn:ward:org:{}", prescription.prescriber) }],
        "source": { "endpoint": format!("urn:ward:org:{our_org}") },
        "focus": [
            { "reference": dispense_url },
            { "identifier": { "system": MESSAGE_ID_SYSTEM, "value": prescription.message_id } },
        ],
    });
    let mut entries =
        vec![json!({ "fullUrl": format!("urn:uuid:{message_id}"), "resource": header })];
    if let Some(mut patient) = patient {
        // The receiver matches the Patient by identifier; the local
        // metadata would only name this server's versions and tags.
        if let Some(object) = patient.as_object_mut() {
            object.remove("meta");
        }
        let url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        entries.push(json!({ "fullUrl": url, "resource": patient }));
    }
    entries.push(json!({ "fullUrl": dispense_url, "resource": dispense }));
    json!({
        "resourceType": "Bundle",
        "id": message_id,
        "type": "message",
        "timestamp": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        "entry": entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_reference_needs_type_and_id() {
        let reference = json!("MedicationRequest/rx-1");
        assert_eq!(
            local_reference(Some(&reference), "MedicationRequest"),
            Some("rx-1")
        );
        assert_eq!(local_reference(Some(&reference), "Patient"), None);
        assert_eq!(
            local_reference(Some(&json!("MedicationRequest/")), "MedicationRequest"),
            None
        );
        assert_eq!(
            local_reference(
                Some(&json!("https://x/MedicationRequest/1")),
                "MedicationRequest"
            ),
            None
        );
    }

    #[test]
    fn report_is_valid_and_names_prescription_message() {
        let prescription = Prescription {
            prescriber: "org-clinic".to_owned(),
            message_id: "m-1".to_owned(),
        };
        let patient = json!({
            "resourceType": "Patient", "id": "p-1",
            "meta": { "versionId": "1" },
            "identifier": [{ "system": "urn:mrn", "value": "1" }]
        });
        let dispense = json!({
            "resourceType": "MedicationDispense", "id": "d-1", "status": "completed",
            "medicationCodeableConcept": { "text": "Aspirin 100 mg" },
            "subject": { "reference": "Patient/p-1" },
            "performer": [{ "actor": { "reference": "Practitioner/ph-1" } }],
            "authorizingPrescription": [{ "reference": "MedicationRequest/rx-1" }]
        });
        let bundle = report_bundle("org-pharmacy", &prescription, Some(patient), &dispense);
        ward_fhir::validate::validate_resource(&bundle).expect("valid R4");
        assert_eq!(super::super::roles::dispensed_message_ids(&bundle), ["m-1"]);
        let sent = &bundle["entry"][2]["resource"];
        assert!(sent.get("performer").is_none());
        assert_eq!(
            sent["authorizingPrescription"][0]["identifier"]["value"],
            "m-1"
        );
        assert!(bundle["entry"][1]["resource"].get("meta").is_none());
        assert_eq!(
            bundle["entry"][0]["resource"]["focus"][0]["reference"],
            bundle["entry"][2]["fullUrl"]
        );
    }
}
