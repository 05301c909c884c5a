//! Rendering of an [`AuditRecord`] as an R4 `AuditEvent` resource.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use super::{
    Agent, AgentKind, AuditRecord, CLIENT_ID_SYSTEM, Coding, DEVICE_ID_SYSTEM, ENTITY_TYPE_SYSTEM,
    Entity, FixedCoding, OBJECT_ROLE_SYSTEM, SOURCE_TYPE_SYSTEM, USER_ID_SYSTEM, fixed,
    format_recorded,
};

const PERSON: FixedCoding = fixed(ENTITY_TYPE_SYSTEM, "1", "Person");
const SYSTEM_OBJECT: FixedCoding = fixed(ENTITY_TYPE_SYSTEM, "2", "System Object");
const ROLE_PATIENT: FixedCoding = fixed(OBJECT_ROLE_SYSTEM, "1", "Patient");
const ROLE_DOMAIN_RESOURCE: FixedCoding = fixed(OBJECT_ROLE_SYSTEM, "4", "Domain Resource");
const ROLE_QUERY: FixedCoding = fixed(OBJECT_ROLE_SYSTEM, "24", "Query");
const APPLICATION_SERVER: FixedCoding = fixed(SOURCE_TYPE_SYSTEM, "4", "Application Server");

impl AuditRecord {
    /// Renders the record as an R4 `AuditEvent` with logical id `id`.
    ///
    /// `detail` entries are rendered on one extra entity of type System
    /// Object, because R4 has detail only on entities. A query entity's
    /// `query` is the base64 of the redacted query string.
    pub fn to_audit_event(&self, id: &str) -> Value {
        let mut event = Map::new();
        event.insert("resourceType".into(), "AuditEvent".into());
        event.insert("id".into(), id.into());
        event.insert("type".into(), fixed_coding(self.event_type.coding()));

        let subtypes: Vec<Value> = self
            .event_type
            .implied_subtype()
            .into_iter()
            .chain(self.subtypes.iter().map(|subtype| subtype.coding()))
            .map(fixed_coding)
            .collect();
        if !subtypes.is_empty() {
            event.insert("subtype".into(), subtypes.into());
        }

        event.insert("action".into(), self.action.code().into());
        if let Some(recorded) = format_recorded(&self.recorded) {
            event.insert("recorded".into(), recorded.into());
        }
        event.insert("outcome".into(), self.outcome.code().into());
        if let Some(text) = &self.outcome_desc {
            event.insert("outcomeDesc".into(), text.as_str().into());
        }
        if !self.purpose_of_use.is_empty() {
            let purposes: Vec<Value> = self
                .purpose_of_use
                .iter()
                .map(|purpose| concept(fixed_coding(purpose.coding())))
                .collect();
            event.insert("purposeOfEvent".into(), purposes.into());
        }

        let agents: Vec<Value> = self.agents.iter().flat_map(render_agent).collect();
        if !agents.is_empty() {
            event.insert("agent".into(), agents.into());
        }
        event.insert("source".into(), self.render_source());

        let mut entities: Vec<Value> = self.entities.iter().map(render_entity).collect();
        if !self.detail.is_empty() {
            entities.push(self.render_detail());
        }
        if !entities.is_empty() {
            event.insert("entity".into(), entities.into());
        }
        Value::Object(event)
    }

    fn render_source(&self) -> Value {
        let mut source = Map::new();
        if let Some(site) = &self.source.site {
            source.insert("site".into(), site.as_str().into());
        }
        source.insert(
            "observer".into(),
            json!({ "identifier": { "value": self.source.observer } }),
        );
        source.insert("type".into(), json!([fixed_coding(APPLICATION_SERVER)]));
        Value::Object(source)
    }

    fn render_detail(&self) -> Value {
        let details: Vec<Value> = self
            .detail
            .iter()
            .map(|(key, value)| json!({ "type": key, "valueString": value }))
            .collect();
        json!({ "type": fixed_coding(SYSTEM_OBJECT), "detail": details })
    }
}

/// Renders one agent, plus one `Client` agent for each id after the first.
fn render_agent(agent: &Agent) -> Vec<Value> {
    let ids: Vec<(&str, &String)> = [
        (USER_ID_SYSTEM, agent.user_id.as_ref()),
        (CLIENT_ID_SYSTEM, agent.client_id.as_ref()),
        (DEVICE_ID_SYSTEM, agent.device_id.as_ref()),
    ]
    .into_iter()
    .filter_map(|(system, id)| id.map(|id| (system, id)))
    .collect();
    let mut ids = ids.into_iter();

    let mut who = Map::new();
    if let Some(reference) = &agent.fhir_user {
        who.insert("reference".into(), reference.as_str().into());
    }
    if let Some((system, value)) = ids.next() {
        who.insert("identifier".into(), identifier(system, value));
    }

    let mut main = Map::new();
    main.insert("type".into(), concept(fixed_coding(agent.kind.coding())));
    if !agent.roles.is_empty() {
        let roles: Vec<Value> = agent
            .roles
            .iter()
            .map(|role| concept(coding(role)))
            .collect();
        main.insert("role".into(), roles.into());
    }
    if !who.is_empty() {
        main.insert("who".into(), Value::Object(who));
    }
    main.insert("requestor".into(), agent.requestor.into());
    if let Some(address) = &agent.network {
        // Network type 2 is "IP Address".
        main.insert("network".into(), json!({ "address": address, "type": "2" }));
    }

    let mut rendered = vec![Value::Object(main)];
    for (system, value) in ids {
        rendered.push(json!({
            "type": concept(fixed_coding(AgentKind::Client.coding())),
            "who": { "identifier": identifier(system, value) },
            "requestor": false,
        }));
    }
    rendered
}

fn render_entity(entity: &Entity) -> Value {
    match entity {
        Entity::Patient { reference } => json!({
            "what": { "reference": reference },
            "type": fixed_coding(PERSON),
            "role": fixed_coding(ROLE_PATIENT),
        }),
        Entity::Resource { reference } => json!({
            "what": { "reference": reference },
            "type": fixed_coding(SYSTEM_OBJECT),
            "role": fixed_coding(ROLE_DOMAIN_RESOURCE),
        }),
        Entity::Query { query } => json!({
            "type": fixed_coding(SYSTEM_OBJECT),
            "role": fixed_coding(ROLE_QUERY),
            "query": STANDARD.encode(query.as_str()),
        }),
    }
}

fn identifier(system: &str, value: &str) -> Value {
    json!({ "system": system, "value": value })
}

fn fixed_coding(coding: FixedCoding) -> Value {
    json!({ "system": coding.system, "code": coding.code, "display": coding.display })
}

fn coding(coding: &Coding) -> Value {
    let mut out = Map::new();
    out.insert("system".into(), coding.system.as_str().into());
    out.insert("code".into(), coding.code.as_str().into());
    if let Some(display) = &coding.display {
        out.insert("display".into(), display.as_str().into());
    }
    Value::Object(out)
}

fn concept(coding: Value) -> Value {
    json!({ "coding": [coding] })
}
