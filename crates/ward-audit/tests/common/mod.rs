//! Shared record builders for the integration tests.

#![allow(dead_code)]

use time::OffsetDateTime;
use ward_audit::record::{
    Action, Agent, AgentKind, AuditRecord, Coding, Entity, EventType, Outcome, PurposeOfUse,
    Source, Subtype,
};

/// Builds a search by a practitioner through a client app, with patient,
/// query and detail entries. `i` varies the patient and the time.
pub fn search_record(i: u64) -> AuditRecord {
    let recorded = OffsetDateTime::from_unix_timestamp(1_714_556_400 + i as i64).unwrap()
        + time::Duration::microseconds(123_456);
    let mut record = AuditRecord::new(
        EventType::Rest,
        Action::Execute,
        recorded,
        Outcome::Success,
        Source {
            observer: "ward-test-server".into(),
            site: Some("Organization/clinic".into()),
        },
    );
    record.subtypes.push(Subtype::SearchType);
    let mut user = Agent::new(AgentKind::User);
    user.user_id = Some("user-17".into());
    user.fhir_user = Some("Practitioner/p-17".into());
    user.client_id = Some("ward-web".into());
    user.requestor = true;
    user.network = Some("127.0.0.1".into());
    user.roles.push(Coding {
        system: "http://terminology.hl7.org/CodeSystem/v3-RoleCode".into(),
        code: "PROV".into(),
        display: Some("healthcare provider".into()),
    });
    record.agents.push(user);
    record.purpose_of_use.push(PurposeOfUse::Treatment);
    record
        .entities
        .push(Entity::patient(&format!("pat-{i}")).unwrap());
    record.entities.push(Entity::query([
        ("family:exact", "Smith"),
        ("birthdate", "1970-01-01"),
        ("_count", "20"),
    ]));
    record
        .detail
        .insert("request_id".into(), format!("req-{i:04}"));
    record
}

/// Builds a read of one resource version.
pub fn read_record(i: u64) -> AuditRecord {
    let mut record = search_record(i);
    record.action = Action::Read;
    record.subtypes = vec![Subtype::Vread];
    record.entities = vec![
        Entity::patient("pat-1").unwrap(),
        Entity::resource("Observation", &format!("obs-{i}"), Some(3)).unwrap(),
    ];
    record
}
