//! Dispensing reports of a pharmacy. A pharmacist creates a
//! MedicationDispense whose `authorizingPrescription` is a MedicationRequest
//! filed from a received message. The server then queues a message back to
//! the prescribing organization. Its MessageHeader has the event
//! `medication-dispensed` and a `focus` that names the dispense and the id
//! of the prescription message. The Patient, the Medication a
//! `medicationReference` names and the MedicationDispense follow it, so
//! every reference resolves inside the message.
//!
//! [`queue_report_in`] queues the report in the store transaction that
//! creates the dispense, so a dispense is never stored without its report.
//! [`report_dispense`] audits the outcome after the commit.

use std::net::IpAddr;

use serde_json::{Value, json};
use ward_audit::record::Outcome;
use ward_exchange::outbox::{self, OutboxMessage};
use ward_exchange::{OrgRole, trust};

use ward_auth::policy::Interaction;
use ward_store::WriteTx;

use super::roles::{EVENT_DISPENSED, EVENT_SYSTEM, MESSAGE_ID_SYSTEM, message_tag};
use super::{ExchangeService, audit_exchange, now_secs};
use crate::AppState;
use crate::access::Caller;
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

/// The outcome of queueing the dispensing report of a new
/// MedicationDispense.
#[derive(Debug)]
pub enum QueuedReport {
    /// The report was queued with the dispense.
    Queued {
        /// The outbox message id.
        message_id: String,
        /// The prescribing organization.
        recipient: String,
    },
    /// No report could be built, so the dispense is stored without one.
    Failed {
        /// The HTTP status of the failure.
        status: u16,
        /// The reason, without PHI.
        reason: String,
    },
}

/// Queues the dispensing report of `dispense`, created by `principal` in
/// the transaction `tx`, in that same transaction, when this server is a
/// pharmacy and the prescription came from another organization. Returns
/// `None` when no report is due.
///
/// A report that cannot be built because of the request (the prescriber is
/// no longer trusted, or the report is invalid R4) is returned as
/// [`QueuedReport::Failed`], and the dispense is still stored. A server
/// fault is returned as an error, which rolls the dispense back too.
///
/// # Errors
///
/// A store failure or another server fault.
pub fn queue_report_in(
    exchange: Option<&ExchangeService>,
    engine: &crate::fhir::engine::Engine,
    caller: &Caller<'_>,
    principal: &Principal,
    tx: &mut dyn WriteTx,
    dispense: &Value,
) -> Result<Option<QueuedReport>, FhirError> {
    let Some(exchange) = exchange else {
        return Ok(None);
    };
    if exchange.identity.role != OrgRole::Pharmacy {
        return Ok(None);
    }
    let give_up = i64::try_from(exchange.settings.give_up_after.as_secs()).unwrap_or(i64::MAX);
    let built = build_report(
        engine,
        caller,
        principal,
        tx,
        &exchange.identity.id,
        dispense,
        give_up,
    );
    match built {
        Ok(None) => Ok(None),
        Ok(Some(record)) => {
            outbox::enqueue_in(tx, &record).map_err(|error| FhirError::internal(&error))?;
            Ok(Some(QueuedReport::Queued {
                message_id: record.id,
                recipient: record.recipient,
            }))
        }
        Err(error) if error.status.is_server_error() => Err(error),
        Err(error) => Ok(Some(QueuedReport::Failed {
            status: error.status.as_u16(),
            reason: error
                .outcome
                .issues
                .first()
                .map_or_else(String::new, |issue| issue.diagnostics.clone()),
        })),
    }
}

/// Audits the outcome of [`queue_report_in`] once the dispense committed,
/// and wakes the delivery loop for a queued report.
pub async fn report_dispense(
    state: &AppState,
    principal: &Principal,
    network: Option<IpAddr>,
    report: QueuedReport,
) {
    let actor = Actor::from_principal(principal, network);
    match report {
        QueuedReport::Queued {
            message_id,
            recipient,
        } => {
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
            if let Some(exchange) = &state.exchange {
                exchange.wake.notify_one();
            }
        }
        QueuedReport::Failed { status, reason } => {
            tracing::error!(target: "ward::exchange", status, %reason, "queueing a dispensing report failed");
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
    }
}

/// Builds the outbox message of the report, reading in `tx`. Returns
/// `None` when the dispense refers to no received prescription.
fn build_report(
    engine: &crate::fhir::engine::Engine,
    caller: &Caller<'_>,
    principal: &Principal,
    tx: &mut dyn WriteTx,
    our_org: &str,
    dispense: &Value,
    give_up: i64,
) -> Result<Option<OutboxMessage>, FhirError> {
    let Some(prescription) = find_prescription(caller, tx, dispense)? else {
        return Ok(None);
    };
    let patient = match local_reference(dispense.pointer("/subject/reference"), "Patient") {
        Some(id) => read_in(caller, tx, "Patient", id)?,
        None => None,
    };
    let medication = match local_reference(
        dispense.pointer("/medicationReference/reference"),
        "Medication",
    ) {
        Some(id) => read_in(caller, tx, "Medication", id)?,
        None => None,
    };
    let bundle = report_bundle(our_org, &prescription, patient, medication, dispense);
    ward_fhir::validate::validate_resource(&bundle).map_err(|outcome| {
        FhirError::with_outcome(http::StatusCode::UNPROCESSABLE_ENTITY, outcome)
    })?;
    // The prescriber rejects a report whose references leave the Bundle,
    // so such a report is not queued.
    ward_exchange::message::check_references(&bundle).map_err(|(text, path)| {
        FhirError::with_outcome(
            http::StatusCode::UNPROCESSABLE_ENTITY,
            ward_fhir::outcome::OperationOutcome::single(
                ward_fhir::outcome::OutcomeIssue::error(ward_fhir::IssueType::Invalid, text)
                    .at(path),
            ),
        )
    })?;

    let message_id = bundle["id"].as_str().unwrap_or_default().to_owned();
    let now = now_secs();
    let record = OutboxMessage {
        id: message_id,
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
        subject: None,
    };
    if trust::get(&*engine.store, &record.recipient)
        .map_err(|error| FhirError::internal(&error))?
        .is_none()
    {
        return Err(FhirError::forbidden(&format!(
            "the prescribing organization {} is not in the trust bundle; see `ward org list`",
            record.recipient
        )));
    }
    Ok(Some(record))
}

/// Reads a resource in `tx` with the caller's access checks.
fn read_in(
    caller: &Caller<'_>,
    tx: &mut dyn WriteTx,
    resource_type: &str,
    id: &str,
) -> Result<Option<Value>, FhirError> {
    caller.require_type(resource_type, Interaction::Read)?;
    let version = tx.read(resource_type, id)?;
    if let Some(resource) = &version.resource {
        caller.require_resource(Interaction::Read, resource, false)?;
    }
    Ok(version.resource)
}

/// Finds the first `authorizingPrescription` that was filed from a
/// received message, read with the caller's access checks.
fn find_prescription(
    caller: &Caller<'_>,
    tx: &mut dyn WriteTx,
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
        let Some(request) = read_in(caller, tx, "MedicationRequest", id)? else {
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
    medication: Option<Value>,
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
            // Links name other local Patients, which the report leaves out.
            object.remove("link");
        }
        let url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        entries.push(json!({ "fullUrl": url, "resource": patient }));
    }
    if let Some(mut medication) = medication {
        // The dispense references it by `Medication/ID`, which resolves to
        // this entry by its id.
        if let Some(object) = medication.as_object_mut() {
            object.remove("meta");
        }
        let url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        entries.push(json!({ "fullUrl": url, "resource": medication }));
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
        let bundle = report_bundle(
            "org-pharmacy",
            &prescription,
            Some(patient),
            None,
            &dispense,
        );
        ward_exchange::message::check_references(&bundle).expect("references resolve");

        // A dispense of a local Medication carries it, so the reference resolves.
        let mut by_reference = dispense.clone();
        let object = by_reference.as_object_mut().unwrap();
        object.remove("medicationCodeableConcept");
        object.remove("subject");
        object.insert(
            "medicationReference".to_owned(),
            json!({ "reference": "Medication/m-1" }),
        );
        let medication = json!({
            "resourceType": "Medication", "id": "m-1", "meta": { "versionId": "2" },
            "code": { "text": "Aspirin 100 mg" }
        });
        let without = report_bundle("org-pharmacy", &prescription, None, None, &by_reference);
        let (_, path) = ward_exchange::message::check_references(&without).unwrap_err();
        assert!(path.ends_with(".medicationReference.reference"), "{path}");
        let with = report_bundle(
            "org-pharmacy",
            &prescription,
            None,
            Some(medication),
            &by_reference,
        );
        ward_exchange::message::check_references(&with).expect("the Medication is carried");
        ward_fhir::validate::validate_resource(&with).expect("valid R4");
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
