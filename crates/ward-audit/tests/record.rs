//! AuditEvent rendering, redaction and canonical round trips.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use time::OffsetDateTime;
use ward_audit::record::{
    Action, Agent, AgentKind, AuditRecord, Entity, EventType, Outcome, PurposeOfUse, Source,
    Subtype,
};
use ward_audit::{Appender, ChainEntry, Error};

use common::{read_record, search_record};

fn assert_valid_r4(event: &Value) {
    if let Err(outcome) = ward_fhir::validate::validate_resource(event) {
        panic!("invalid AuditEvent: {outcome:?}\n{event:#}");
    }
}

#[test]
fn search_event_renders_r4_structure() {
    let event = search_record(1).to_audit_event("ae-1");
    assert_valid_r4(&event);

    assert_eq!(event["resourceType"], "AuditEvent");
    assert_eq!(event["id"], "ae-1");
    assert_eq!(event["type"]["code"], "rest");
    assert_eq!(
        event["type"]["system"],
        "http://terminology.hl7.org/CodeSystem/audit-event-type"
    );
    assert_eq!(event["subtype"][0]["code"], "search-type");
    assert_eq!(
        event["subtype"][0]["system"],
        "http://hl7.org/fhir/restful-interaction"
    );
    assert_eq!(event["action"], "E");
    assert_eq!(event["recorded"], "2024-05-01T09:40:01.123456Z");
    assert_eq!(event["outcome"], "0");
    assert_eq!(event["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");

    let user = &event["agent"][0];
    assert_eq!(user["type"]["coding"][0]["code"], "humanuser");
    assert_eq!(user["who"]["reference"], "Practitioner/p-17");
    assert_eq!(user["who"]["identifier"]["value"], "user-17");
    assert_eq!(user["requestor"], true);
    assert_eq!(user["network"]["address"], "127.0.0.1");
    assert_eq!(user["network"]["type"], "2");
    assert_eq!(user["role"][0]["coding"][0]["code"], "PROV");
    let client = &event["agent"][1];
    assert_eq!(client["type"]["coding"][0]["code"], "110153");
    assert_eq!(client["who"]["identifier"]["value"], "ward-web");
    assert_eq!(client["requestor"], false);

    assert_eq!(
        event["source"]["observer"]["identifier"]["value"],
        "ward-test-server"
    );
    assert_eq!(event["source"]["site"], "Organization/clinic");

    let patient = &event["entity"][0];
    assert_eq!(patient["what"]["reference"], "Patient/pat-1");
    assert_eq!(patient["role"]["code"], "1");
    assert_eq!(patient["type"]["code"], "1");
    let query = &event["entity"][1];
    assert_eq!(query["role"]["code"], "24");
    let decoded = STANDARD.decode(query["query"].as_str().unwrap()).unwrap();
    assert_eq!(
        String::from_utf8(decoded).unwrap(),
        "family:exact=***&birthdate=***&_count=20"
    );
    let detail = &event["entity"][2]["detail"][0];
    assert_eq!(detail["type"], "request_id");
    assert_eq!(detail["valueString"], "req-0001");
}

#[test]
fn read_event_names_versioned_resource() {
    let event = read_record(4).to_audit_event("ae-2");
    assert_valid_r4(&event);
    assert_eq!(event["action"], "R");
    assert_eq!(event["subtype"][0]["code"], "vread");
    assert_eq!(
        event["entity"][1]["what"]["reference"],
        "Observation/obs-4/_history/3"
    );
    assert_eq!(event["entity"][1]["role"]["code"], "4");
}

#[test]
fn login_failure_renders_dicom_codes() {
    let mut record = AuditRecord::new(
        EventType::Login,
        Action::Execute,
        OffsetDateTime::UNIX_EPOCH,
        Outcome::MinorFailure,
        Source {
            observer: "ward".into(),
            site: None,
        },
    );
    record.outcome_desc = Some("invalid credentials".into());
    let mut user = Agent::new(AgentKind::User);
    user.user_id = Some("u1".into());
    user.requestor = true;
    record.agents.push(user);
    record.validate().unwrap();

    let event = record.to_audit_event("login-1");
    assert_valid_r4(&event);
    assert_eq!(event["type"]["code"], "110114");
    assert_eq!(
        event["type"]["system"],
        "http://dicom.nema.org/resources/ontology/DCM"
    );
    assert_eq!(event["subtype"][0]["code"], "110122");
    assert_eq!(event["outcome"], "4");
    assert_eq!(event["outcomeDesc"], "invalid credentials");
    assert!(event.get("entity").is_none());
}

#[test]
fn break_the_glass_renders_purpose_and_subtype() {
    let mut record = read_record(1);
    record.event_type = EventType::Security;
    record.subtypes = vec![Subtype::EmergencyOverrideStarted];
    record.purpose_of_use = vec![PurposeOfUse::BreakTheGlass];
    let event = record.to_audit_event("btg");
    assert_valid_r4(&event);
    assert_eq!(event["type"]["code"], "110113");
    assert_eq!(event["subtype"][0]["code"], "110127");
    assert_eq!(event["purposeOfEvent"][0]["coding"][0]["code"], "BTG");
}

#[test]
fn rendered_event_has_no_redacted_value() {
    let mut record = search_record(2);
    record.entities.push(Entity::query([
        ("name", "Jane Doe"),
        ("identifier", "http://hospital|SSN-123-45-6789"),
        ("_id", "secret-id"),
        ("_sort", "-date"),
    ]));
    let event = record.to_audit_event("x");
    let mut texts = vec![event.to_string()];
    for entity in event["entity"].as_array().unwrap() {
        if let Some(query) = entity["query"].as_str() {
            texts.push(String::from_utf8(STANDARD.decode(query).unwrap()).unwrap());
        }
    }
    let row = Appender::new().append(&record).unwrap();
    texts.push(String::from_utf8(row.canonical).unwrap());
    for text in &texts {
        for secret in [
            "Smith",
            "1970-01-01",
            "Jane",
            "Doe",
            "SSN",
            "hospital|",
            "secret-id",
        ] {
            assert!(!text.contains(secret), "{secret} leaked");
        }
    }
    assert!(texts[2].contains("_sort=-date"));
}

#[test]
fn canonical_round_trip_keeps_record() {
    let record = search_record(9);
    let mut appender = Appender::new();
    appender.append(&read_record(0)).unwrap();
    let row = appender.append(&record).unwrap();
    let entry = ChainEntry::from_canonical(&row.canonical).unwrap();
    assert_eq!(entry.seq, 1);
    assert_eq!(entry.prev, row.prev_hash);
    assert_eq!(entry.record, record);
    assert_eq!(entry.canonical_bytes().unwrap(), row.canonical);
}

#[test]
fn canonical_bytes_are_sorted_and_compact() {
    let row = Appender::new().append(&search_record(0)).unwrap();
    let text = String::from_utf8(row.canonical).unwrap();
    assert!(text.starts_with("{\"prev\":\"0000"), "{text}");
    assert!(text.ends_with(",\"seq\":0,\"v\":1}"), "{text}");
    assert!(!text.contains(": "));
    assert!(!text.contains('\n'));
    assert!(text.contains("\"recorded\":\"2024-05-01T09:40:00.123456Z\""));
}

#[test]
fn non_canonical_bytes_rejected() {
    let row = Appender::new().append(&search_record(0)).unwrap();
    let text = String::from_utf8(row.canonical.clone()).unwrap();
    let spaced = text.replacen(',', ", ", 1);
    assert!(matches!(
        ChainEntry::from_canonical(spaced.as_bytes()),
        Err(Error::MalformedEntry { .. })
    ));
    let unredacted = text.replace("family:exact=***", "family:exact=Smith");
    assert!(ChainEntry::from_canonical(unredacted.as_bytes()).is_err());
    let extra = text.replacen("{\"prev\"", "{\"extra\":1,\"prev\"", 1);
    assert!(ChainEntry::from_canonical(extra.as_bytes()).is_err());
    assert!(ChainEntry::from_canonical(b"").is_err());
    assert!(ChainEntry::from_canonical(&[b'['; 100_000]).is_err());
}

type Mutation = Box<dyn Fn(&mut AuditRecord)>;

#[test]
fn validation_rejects_bad_fields() {
    let cases: Vec<(&str, Mutation)> = vec![
        ("no agents", Box::new(|r| r.agents.clear())),
        (
            "detail key",
            Box::new(|r| {
                r.detail.insert("Patient Name".into(), "x".into());
            }),
        ),
        (
            "detail value",
            Box::new(|r| {
                r.detail.insert("k".into(), "é".into());
            }),
        ),
        (
            "outcome control",
            Box::new(|r| r.outcome_desc = Some("a\nb".into())),
        ),
        (
            "fhir user",
            Box::new(|r| r.agents[0].fhir_user = Some("http://x/y".into())),
        ),
        (
            "patient ref",
            Box::new(|r| {
                r.entities[0] = Entity::Patient {
                    reference: "Group/1".into(),
                };
            }),
        ),
        (
            "resource ref",
            Box::new(|r| {
                r.entities[0] = Entity::Resource {
                    reference: "Observation/1/_history/1/x".into(),
                };
            }),
        ),
        ("empty observer", Box::new(|r| r.source.observer.clear())),
        (
            "long user",
            Box::new(|r| r.agents[0].user_id = Some("u".repeat(300))),
        ),
    ];
    for (name, mutate) in cases {
        let mut record = search_record(0);
        mutate(&mut record);
        assert!(
            matches!(record.validate(), Err(Error::InvalidRecord { .. })),
            "{name}"
        );
        let mut appender = Appender::new();
        assert!(appender.append(&record).is_err(), "{name}");
        assert_eq!(appender.next_seq(), 0, "{name}");
    }
    assert!(Entity::patient("a/b").is_err());
    assert!(Entity::resource("observation", "1", None).is_err());
}
