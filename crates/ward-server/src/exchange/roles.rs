//! Filing steps of the organization roles. Every filed resource is tagged
//! with the id of the message that brought it, so a pharmacy can name the
//! prescription message when it reports dispensing. A clinic marks that
//! outbox message `dispensed` when the report from its pharmacy is filed.

use serde_json::{Value, json};
use ward_audit::record::Outcome;
use ward_exchange::envelope::Opened;
use ward_exchange::{OrgRole, outbox};

use super::audit_exchange;
use crate::AppState;
use crate::audit::Actor;

/// Code system of the MessageHeader events Ward defines.
pub const EVENT_SYSTEM: &str = "urn:ward:exchange:event";
/// Event of a message that reports a prescription as dispensed.
pub const EVENT_DISPENSED: &str = "medication-dispensed";
/// Identifier and tag system whose values are exchange message ids.
pub const MESSAGE_ID_SYSTEM: &str = "urn:ward:exchange:message";

/// Tags every resource of a filing transaction with `message_id`.
pub(super) fn tag_with_message(transaction: &mut Value, message_id: &str) {
    let Some(entries) = transaction.get_mut("entry").and_then(Value::as_array_mut) else {
        return;
    };
    let tag = json!({ "system": MESSAGE_ID_SYSTEM, "code": message_id });
    for entry in entries {
        let Some(resource) = entry.get_mut("resource").and_then(Value::as_object_mut) else {
            continue;
        };
        let meta = resource.entry("meta").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            let tags = meta.entry("tag").or_insert_with(|| json!([]));
            if let Some(tags) = tags.as_array_mut() {
                tags.push(tag.clone());
            }
        }
    }
}

/// Returns the message id a filed resource was tagged with.
pub(super) fn message_tag(resource: &Value) -> Option<&str> {
    resource
        .pointer("/meta/tag")?
        .as_array()?
        .iter()
        .find(|tag| tag.get("system").and_then(Value::as_str) == Some(MESSAGE_ID_SYSTEM))?
        .get("code")?
        .as_str()
}

/// Returns the ids of the messages a dispensing report names in its
/// MessageHeader `focus`, or nothing for any other message.
pub fn dispensed_message_ids(bundle: &Value) -> Vec<&str> {
    let Some(header) = bundle.pointer("/entry/0/resource") else {
        return Vec::new();
    };
    let event = header.get("eventCoding");
    let is_dispensed = event.and_then(|e| e.get("system")).and_then(Value::as_str)
        == Some(EVENT_SYSTEM)
        && event.and_then(|e| e.get("code")).and_then(Value::as_str) == Some(EVENT_DISPENSED);
    if !is_dispensed {
        return Vec::new();
    }
    header
        .get("focus")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|focus| focus.get("identifier"))
        .filter(|id| id.get("system").and_then(Value::as_str) == Some(MESSAGE_ID_SYSTEM))
        .filter_map(|id| id.get("value").and_then(Value::as_str))
        .collect()
}

/// Marks the outbox messages a dispensing report names as `dispensed`, in
/// the transaction `tx` that files the report, so the marks commit with
/// the filing. Only a report from an organization trusted with the pharmacy
/// role counts, and only for messages sent to that organization. Returns
/// each named message id with whether it is marked.
///
/// # Errors
///
/// A store failure, which rolls the filing back.
pub(super) fn mark_dispensed_in(
    tx: &mut dyn ward_store::WriteTx,
    opened: &Opened,
) -> Result<Vec<(String, bool)>, ward_exchange::Error> {
    let ids = dispensed_message_ids(&opened.bundle);
    if ids.is_empty() || opened.sender.role != OrgRole::Pharmacy {
        return Ok(Vec::new());
    }
    let mut marked = Vec::with_capacity(ids.len());
    for id in ids {
        let done = outbox::mark_dispensed_in(tx, id, &opened.sender.org_id)?;
        marked.push((id.to_owned(), done));
    }
    Ok(marked)
}

/// Audits the marks [`mark_dispensed_in`] made once the filing committed,
/// and logs a dispensing report that could not count.
pub(super) async fn after_filing(
    state: &AppState,
    actor: &Actor,
    opened: &Opened,
    marked: &[(String, bool)],
) {
    let sender = &opened.sender.org_id;
    if opened.sender.role != OrgRole::Pharmacy {
        if !dispensed_message_ids(&opened.bundle).is_empty() {
            tracing::warn!(target: "ward::exchange", sender = %sender, role = %opened.sender.role, "ignored a dispensing report from an organization not trusted as a pharmacy");
        }
        return;
    }
    for (id, done) in marked {
        if *done {
            audit_exchange(
                state,
                actor,
                "message_dispensed",
                Outcome::Success,
                None,
                &[("message_id", id), ("pharmacy", sender)],
            )
            .await;
        } else {
            tracing::warn!(target: "ward::exchange", message_id = %id, sender = %sender, "a dispensing report names no message sent to that pharmacy");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(system: &str, code: &str) -> Value {
        json!({
            "resourceType": "Bundle",
            "type": "message",
            "entry": [{ "resource": {
                "resourceType": "MessageHeader",
                "eventCoding": { "system": system, "code": code },
                "focus": [
                    { "reference": "urn:uuid:d" },
                    { "identifier": { "system": MESSAGE_ID_SYSTEM, "value": "m-1" } },
                    { "identifier": { "system": "urn:other", "value": "m-2" } }
                ]
            } }]
        })
    }

    #[test]
    fn dispensing_report_names_focus_messages() {
        let bundle = report(EVENT_SYSTEM, EVENT_DISPENSED);
        assert_eq!(dispensed_message_ids(&bundle), ["m-1"]);
    }

    #[test]
    fn other_events_name_no_messages() {
        assert!(dispensed_message_ids(&report(EVENT_SYSTEM, "referral")).is_empty());
        assert!(dispensed_message_ids(&report("urn:other", EVENT_DISPENSED)).is_empty());
    }

    #[test]
    fn filed_resources_carry_message_tag() {
        let mut transaction = json!({ "entry": [
            { "resource": { "resourceType": "Patient", "meta": { "tag": [{ "code": "x" }] } } },
            { "resource": { "resourceType": "MedicationRequest" } }
        ] });
        tag_with_message(&mut transaction, "m-9");
        let patient = &transaction["entry"][0]["resource"];
        assert_eq!(patient["meta"]["tag"][0]["code"], "x");
        assert_eq!(message_tag(patient), Some("m-9"));
        assert_eq!(
            message_tag(&transaction["entry"][1]["resource"]),
            Some("m-9")
        );
    }
}
