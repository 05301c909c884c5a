//! Recording the audit log: every FHIR interaction, denial, sign-in and
//! break-the-glass becomes an [`AuditRecord`] in the tamper-evident log of
//! the store (see the `ward-audit` crate).
//!
//! Writes append their record inside the store transaction of the change
//! ([`Auditor::record_write`]), so a change commits with its record or not
//! at all. Reads, denials and security events go through a group-commit
//! writer ([`writer`]): one thread takes every queued record, appends them
//! in one transaction and commits, then wakes each waiting request. A read
//! response is sent only after its record committed.

pub mod alerts;
pub mod checkpoints;
pub mod routes;
pub mod siem;
mod writer;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;
use time::OffsetDateTime;
use ward_audit::AuditRecord;
use ward_audit::record::{
    Action, Agent, AgentKind, Coding, Entity, EventType, MAX_ENTITIES, Outcome, PurposeOfUse,
    Source, Subtype,
};
use ward_fhir::search::index_resource;
use ward_store::{Store, WriteTx};

use crate::auth::Principal;
use crate::error::FhirError;

pub use writer::AuditWriter;

/// The peer IP address of a request, when the server was started with
/// connection info.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0.ip());
        Ok(Self(peer))
    }
}

/// Identifier system of the role codes in `agent.role`.
pub const ROLE_SYSTEM: &str = "urn:ward:role";

/// What happens to a request whose audit record cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditFailure {
    /// The request fails with 500 (the default).
    #[default]
    Deny,
    /// The request succeeds and the failure is logged at error level.
    Allow,
}

/// The party behind a request, as the audit log names it.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    /// The token subject: a user id, a client id or `ward-cli`.
    pub user_id: String,
    /// The user's FHIR resource (`Practitioner/123`).
    pub fhir_user: Option<String>,
    /// The OAuth client.
    pub client_id: Option<String>,
    /// The user's role in the access policy.
    pub role: Option<String>,
    /// The peer IP address.
    pub network: Option<IpAddr>,
    /// The enrolled device the request came from, for device-bound tokens
    /// and device endpoints.
    pub device_id: Option<String>,
}

impl Actor {
    /// Describes the caller behind `principal`, connected from `network`.
    pub fn from_principal(principal: &Principal, network: Option<IpAddr>) -> Self {
        Self {
            user_id: principal.subject.clone(),
            fhir_user: principal.fhir_user.clone(),
            client_id: principal.client_id.clone(),
            role: principal.role.clone(),
            network,
            device_id: principal.device.clone(),
        }
    }

    /// Builds the requesting agent. Values that the record format rejects
    /// (a malformed `fhirUser`, an over-long id) are left out rather than
    /// failing the request.
    pub fn agent(&self) -> Agent {
        let mut agent = Agent::new(if self.role.is_some() || self.fhir_user.is_some() {
            AgentKind::User
        } else {
            AgentKind::Client
        });
        agent.requestor = true;
        agent.user_id = usable(&self.user_id);
        agent.client_id = self.client_id.as_deref().and_then(usable);
        agent.fhir_user = self
            .fhir_user
            .as_deref()
            .filter(|reference| is_reference(reference))
            .map(str::to_owned);
        agent.network = self.network.map(|address| address.to_string());
        agent.device_id = self.device_id.as_deref().and_then(usable);
        if let Some(role) = self.role.as_deref().and_then(usable) {
            agent.roles.push(Coding {
                code: role,
                display: None,
                system: ROLE_SYSTEM.to_owned(),
            });
        }
        agent
    }
}

/// Keeps an id the record format accepts: 1 to 256 bytes, no control
/// characters.
fn usable(value: &str) -> Option<String> {
    let fits = !value.is_empty()
        && value.len() <= ward_audit::record::MAX_ID_LEN
        && !value.chars().any(char::is_control);
    fits.then(|| value.to_owned())
}

/// True for a relative reference `Type/id`.
fn is_reference(reference: &str) -> bool {
    let Some((resource_type, id)) = reference.split_once('/') else {
        return false;
    };
    ward_fhir::definitions::is_resource_type(resource_type) && crate::fhir::engine::is_valid_id(id)
}

/// Builds and writes audit records.
pub struct Auditor {
    source: Source,
    failure: AuditFailure,
    writer: Option<AuditWriter>,
    /// The latest signed checkpoint in its text form, once one exists.
    pub latest_checkpoint: parking_lot::RwLock<Option<String>>,
    /// The alert rules.
    pub alerts: alerts::Alerts,
}

impl Auditor {
    /// Creates an auditor whose records name `observer` as their source.
    /// Without [`Auditor::with_writer`], reads are recorded in a
    /// transaction of their own.
    pub fn new(observer: &str) -> Self {
        let observer = usable(observer).unwrap_or_else(|| "ward".to_owned());
        Self {
            source: Source {
                observer,
                site: None,
            },
            failure: AuditFailure::Deny,
            writer: None,
            latest_checkpoint: parking_lot::RwLock::new(None),
            alerts: alerts::Alerts::default(),
        }
    }

    /// Sets what happens when a record cannot be written.
    pub fn with_failure(mut self, failure: AuditFailure) -> Self {
        self.failure = failure;
        self
    }

    /// Records reads through a group-commit writer on `store`.
    pub fn with_writer(mut self, store: Arc<dyn Store>) -> Self {
        self.writer = Some(AuditWriter::start(store));
        self
    }

    /// Sets the alert rules.
    pub fn with_alerts(mut self, alerts: alerts::Alerts) -> Self {
        self.alerts = alerts;
        self
    }

    /// Returns the failure policy.
    pub fn failure(&self) -> AuditFailure {
        self.failure
    }

    /// Starts a record of this server with the required fields.
    pub fn record(&self, event_type: EventType, action: Action, outcome: Outcome) -> AuditRecord {
        AuditRecord::new(
            event_type,
            action,
            OffsetDateTime::now_utc(),
            outcome,
            self.source.clone(),
        )
    }

    /// Starts a REST record for `actor`.
    pub fn rest(&self, actor: &Actor, subtype: Subtype, action: Action) -> AuditRecord {
        let mut record = self.record(EventType::Rest, action, Outcome::Success);
        record.subtypes.push(subtype);
        record.agents.push(actor.agent());
        record
    }

    /// Appends the record of a create, update or delete to `tx`, so it
    /// commits with the change. `resource` is the content whose patient
    /// compartment names the patients (for a delete, the version before
    /// it).
    ///
    /// # Errors
    ///
    /// 500 when the record cannot be appended; the caller then drops the
    /// transaction, so the change is not committed either.
    #[allow(clippy::too_many_arguments)]
    pub fn record_write(
        &self,
        tx: &mut dyn WriteTx,
        actor: &Actor,
        subtype: Subtype,
        action: Action,
        target: (&str, &str, Option<u64>),
        resource: Option<&Value>,
    ) -> Result<(), FhirError> {
        let mut record = self.rest(actor, subtype, action);
        let (resource_type, id, version) = target;
        if let Ok(entity) = Entity::resource(resource_type, id, version) {
            record.entities.push(entity);
        }
        let mut patients = BTreeSet::new();
        if let Some(resource) = resource {
            patients_in(resource, &mut patients);
        }
        push_patients(&mut record, patients.iter());
        match tx.append_audit(&record) {
            Ok(_) => {
                crate::metrics::record_audit_records(1);
                Ok(())
            }
            Err(err) => Err(FhirError::internal(&format!(
                "appending the audit record failed: {err}"
            ))),
        }
    }

    /// Writes `record` in its own transaction (through the group-commit
    /// writer when there is one) and returns once it committed.
    ///
    /// # Errors
    ///
    /// 500 when the record could not be written and the failure policy is
    /// [`AuditFailure::Deny`]. Under [`AuditFailure::Allow`] the failure is
    /// logged and `Ok` returned.
    pub async fn commit(&self, record: AuditRecord) -> Result<(), FhirError> {
        let result = match &self.writer {
            Some(writer) => writer.submit(record).await,
            None => Err("no audit writer is running".to_owned()),
        };
        self.settle(result)
    }

    /// Like [`Auditor::commit`], for blocking threads.
    ///
    /// # Errors
    ///
    /// As [`Auditor::commit`].
    pub fn commit_blocking(&self, store: &dyn Store, record: AuditRecord) -> Result<(), FhirError> {
        let result = match &self.writer {
            Some(writer) => writer.submit_blocking(record),
            None => write_direct(store, &record),
        };
        self.settle(result)
    }

    fn settle(&self, result: Result<(), String>) -> Result<(), FhirError> {
        match (result, self.failure) {
            (Ok(()), _) => Ok(()),
            (Err(error), AuditFailure::Deny) => Err(FhirError::internal(&format!(
                "writing the audit record failed: {error}"
            ))),
            (Err(error), AuditFailure::Allow) => {
                tracing::error!(
                    target: "ward::audit",
                    %error,
                    "writing the audit record failed; the request proceeds because audit_failure = \"allow\""
                );
                Ok(())
            }
        }
    }

    /// Builds the record of a read, search or history that returned
    /// `resources`: one patient entity per patient whose data was returned.
    /// A result naming more patients than one record holds is split into
    /// several records.
    pub fn read_records<'a>(
        &self,
        actor: &Actor,
        subtype: Subtype,
        target: Option<Entity>,
        query: Option<&[(String, String)]>,
        resources: impl IntoIterator<Item = &'a Value>,
    ) -> Vec<AuditRecord> {
        let mut patients = BTreeSet::new();
        for resource in resources {
            patients_in(resource, &mut patients);
        }
        let mut base = self.rest(actor, subtype, Action::Read);
        if let Some(target) = target {
            base.entities.push(target);
        }
        if let Some(pairs) = query {
            base.entities.push(Entity::query(
                pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            ));
        }
        let room = MAX_ENTITIES - base.entities.len();
        let patients: Vec<String> = patients.into_iter().collect();
        if patients.is_empty() {
            return vec![base];
        }
        patients
            .chunks(room)
            .map(|chunk| {
                let mut record = base.clone();
                push_patients(&mut record, chunk.iter());
                record
            })
            .collect()
    }

    /// Builds the record of a rejected request: outcome 4 (minor failure)
    /// with the server's reason text, which never contains request content.
    pub fn denial(
        &self,
        actor: &Actor,
        subtype: Subtype,
        action: Action,
        reason: &str,
        target: Option<Entity>,
        patients: &[String],
    ) -> AuditRecord {
        let mut record = self.rest(actor, subtype, action);
        record.outcome = Outcome::MinorFailure;
        record.outcome_desc = Some(ascii(reason));
        if let Some(target) = target {
            record.entities.push(target);
        }
        push_patients(&mut record, patients.iter());
        record
    }

    /// Builds the record of an administrative change made by `operator`
    /// outside a request, such as a user added with `ward user` or a key
    /// rotated with `ward keys`: DICOM 110113 Security Alert with
    /// `subtype`, `event` in the detail map and the other `details` beside
    /// it. Details name accounts, clients, roles and key ids, never secrets.
    pub fn admin_change(
        &self,
        operator: &str,
        event: &str,
        subtype: Subtype,
        action: Action,
        details: &[(&str, &str)],
    ) -> AuditRecord {
        let mut record = self.record(EventType::Security, action, Outcome::Success);
        record.subtypes.push(subtype);
        let actor = Actor {
            user_id: operator.to_owned(),
            client_id: Some("ward-cli".to_owned()),
            ..Actor::default()
        };
        record.agents.push(actor.agent());
        record.detail.insert("event".to_owned(), ascii(event));
        for (name, value) in details {
            record.detail.insert((*name).to_owned(), ascii(value));
        }
        record
    }

    /// Builds the record of a break-the-glass grant (purpose `BTG`).
    pub fn break_the_glass(&self, actor: &Actor, patient: &str, minutes: i64) -> AuditRecord {
        let mut record = self.record(EventType::Security, Action::Execute, Outcome::Success);
        record.subtypes.push(Subtype::EmergencyOverrideStarted);
        record.purpose_of_use.push(PurposeOfUse::BreakTheGlass);
        record.agents.push(actor.agent());
        push_patients(&mut record, std::iter::once(&patient.to_owned()));
        record
            .detail
            .insert("minutes".to_owned(), minutes.to_string());
        record
    }
}

/// Keeps printable ASCII, for outcome texts.
pub fn ascii(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    out.truncate(ward_audit::record::MAX_TEXT_LEN);
    out
}

/// Adds the patients of `resource`'s compartment to `patients`.
pub fn patients_in(resource: &Value, patients: &mut BTreeSet<String>) {
    let entries = index_resource(resource);
    patients.extend(ward_fhir::compartment::patients_of(resource, &entries));
}

fn push_patients<'a>(record: &mut AuditRecord, patients: impl Iterator<Item = &'a String>) {
    for patient in patients {
        if let Ok(entity) = Entity::patient(patient) {
            record.entities.push(entity);
        }
    }
}

/// Appends one record in a transaction of its own.
fn write_direct(store: &dyn Store, record: &AuditRecord) -> Result<(), String> {
    let mut tx = store.begin().map_err(|e| e.to_string())?;
    tx.append_audit(record).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())?;
    crate::metrics::record_audit_records(1);
    Ok(())
}

/// A sign-in or token event, for the OAuth endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityEventKind {
    /// A user signed in.
    SignIn,
    /// A sign-in attempt failed.
    SignInFailed,
    /// A user signed out.
    SignOut,
    /// An access token was issued.
    TokenIssued,
    /// A token request was rejected.
    TokenRejected,
    /// A token was revoked.
    TokenRevoked,
}

/// A sign-in or token event: who, from where and with what result. No
/// field may carry a password, a code or a token.
#[derive(Debug, Clone, Copy)]
pub struct SecurityEvent<'a> {
    /// What happened.
    pub kind: SecurityEventKind,
    /// The account (user id) involved, if known.
    pub user_id: Option<&'a str>,
    /// The OAuth client involved, if known.
    pub client_id: Option<&'a str>,
    /// The peer IP address.
    pub network: Option<IpAddr>,
    /// A server-generated reason for a failure, such as `invalid_grant`.
    pub reason: Option<&'a str>,
    /// The enrolled device whose client certificate the request presented.
    pub device_id: Option<&'a str>,
}

/// A [`SecurityEvent`] that owns its strings, for handlers that run on a
/// blocking thread: they attach it to their response as an extension, and
/// the async caller takes it out and records it.
#[derive(Debug, Clone)]
pub struct OwnedSecurityEvent {
    /// What happened.
    pub kind: SecurityEventKind,
    /// The account (user id) involved, if known.
    pub user_id: Option<String>,
    /// The OAuth client involved, if known.
    pub client_id: Option<String>,
    /// A server-generated reason for a failure, such as `invalid_grant`.
    pub reason: Option<&'static str>,
    /// The enrolled device whose client certificate the request presented.
    pub device_id: Option<String>,
}

impl OwnedSecurityEvent {
    /// Creates an event of `kind` with no user, client or reason.
    pub fn new(kind: SecurityEventKind) -> Self {
        Self {
            kind,
            user_id: None,
            client_id: None,
            reason: None,
            device_id: None,
        }
    }

    /// Borrows the event for [`record_security_event`], as seen from
    /// `network`.
    pub fn as_event(&self, network: Option<IpAddr>) -> SecurityEvent<'_> {
        SecurityEvent {
            kind: self.kind,
            user_id: self.user_id.as_deref(),
            client_id: self.client_id.as_deref(),
            network,
            reason: self.reason,
            device_id: self.device_id.as_deref(),
        }
    }
}

/// Records a sign-in or token event in the audit log and runs the
/// sign-in failure alert. Errors are logged, never returned, so the OAuth
/// endpoints answer the same way whatever the audit log does.
pub async fn record_security_event(state: &crate::AppState, event: SecurityEvent<'_>) {
    let auditor = &state.engine.auditor;
    let failed = matches!(
        event.kind,
        SecurityEventKind::SignInFailed | SecurityEventKind::TokenRejected
    );
    let (event_type, subtype) = match event.kind {
        SecurityEventKind::SignIn | SecurityEventKind::SignInFailed => (EventType::Login, None),
        SecurityEventKind::SignOut => (EventType::Logout, None),
        SecurityEventKind::TokenIssued
        | SecurityEventKind::TokenRejected
        | SecurityEventKind::TokenRevoked => (
            EventType::Security,
            Some(Subtype::UserSecurityAttributesChanged),
        ),
    };
    let outcome = if failed {
        Outcome::MinorFailure
    } else {
        Outcome::Success
    };
    let mut record = auditor.record(event_type, Action::Execute, outcome);
    record.subtypes.extend(subtype);
    let actor = Actor {
        user_id: event.user_id.unwrap_or("anonymous").to_owned(),
        client_id: event.client_id.map(str::to_owned),
        network: event.network,
        device_id: event.device_id.map(str::to_owned),
        ..Actor::default()
    };
    record.agents.push(actor.agent());
    record.outcome_desc = event.reason.map(ascii);
    let kind = format!("{:?}", event.kind).to_ascii_lowercase();
    record.detail.insert("event".to_owned(), kind);
    if let Err(err) = auditor.commit(record).await {
        tracing::error!(target: "ward::audit", status = err.status.as_u16(), "recording a security event failed");
    }
    if event.kind == SecurityEventKind::SignInFailed {
        alerts::sign_in_failed(state, event.user_id, event.network).await;
    }
}
