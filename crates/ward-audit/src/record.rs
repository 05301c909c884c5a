//! The audit record type, following the IHE Basic Audit Log Patterns (BALP)
//! for FHIR R4 `AuditEvent`.
//!
//! An [`AuditRecord`] is what the server writes for every access to a
//! patient's record, every sign-in and every security-relevant action. It is
//! hashed in its canonical form (see [`crate::chain`]) and rendered as an R4
//! `AuditEvent` with [`AuditRecord::to_audit_event`].
//!
//! # What a record may contain
//!
//! Records name patients and resources by reference (`Patient/123`), which
//! links a person to an access, so the log as a whole is sensitive. No field
//! carries clinical content or search values:
//!
//! - query entities hold only a [`RedactedQuery`], whose values are `***`
//!   except for a short list of parameters that select format and paging;
//! - `outcome_desc` and `detail` are for server-generated text such as
//!   `"scope patient/*.read missing"` or `"request_id" = "7f3c…"`. Callers must
//!   never put request content into them. [`AuditRecord::validate`] enforces
//!   printable ASCII, the key syntax and length limits, but it cannot tell a
//!   name from an error code, so the contract rests with the caller.

mod fhir;
mod redact;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};

pub use redact::{REDACTED, RedactedQuery, SAFE_QUERY_PARAMETERS, redact_query};

/// Code system of the DICOM audit codes (DICOM PS3.16, CID 400-series).
pub const DICOM_SYSTEM: &str = "http://dicom.nema.org/resources/ontology/DCM";
/// Code system of the FHIR `rest` audit event type.
pub const AUDIT_EVENT_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
/// Code system of the FHIR RESTful interactions.
pub const RESTFUL_INTERACTION_SYSTEM: &str = "http://hl7.org/fhir/restful-interaction";
/// Code system of the HL7 v3 purpose-of-use codes.
pub const ACT_REASON_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
/// Code system of `AuditEvent.entity.role`.
pub const OBJECT_ROLE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/object-role";
/// Code system of `AuditEvent.entity.type`.
pub const ENTITY_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
/// Code system of the `humanuser` agent type.
pub const SECURITY_ROLE_TYPE_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/extra-security-role-type";
/// Code system of `AuditEvent.source.type`.
pub const SOURCE_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";

/// Identifier system of the user id (the token subject) in `agent.who`.
pub const USER_ID_SYSTEM: &str = "urn:ward:user";
/// Identifier system of the OAuth client id in `agent.who`.
pub const CLIENT_ID_SYSTEM: &str = "urn:ward:client";
/// Identifier system of an enrolled device id in `agent.who`.
pub const DEVICE_ID_SYSTEM: &str = "urn:ward:device";

/// Maximum length in bytes of an id, reference, code or network address.
pub const MAX_ID_LEN: usize = 256;
/// Maximum length in bytes of `outcome_desc` and of one detail value.
pub const MAX_TEXT_LEN: usize = 1024;
/// Maximum number of `detail` entries.
pub const MAX_DETAILS: usize = 32;
/// Maximum number of agents in one record.
pub const MAX_AGENTS: usize = 16;
/// Maximum number of entities in one record, enough for a search page of
/// 1,000 entries with a patient entity each.
pub const MAX_ENTITIES: usize = 4096;

/// A code from a code system fixed at compile time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedCoding {
    /// The code system URI.
    pub system: &'static str,
    /// The code.
    pub code: &'static str,
    /// The display text from the code system.
    pub display: &'static str,
}

const fn fixed(system: &'static str, code: &'static str, display: &'static str) -> FixedCoding {
    FixedCoding {
        system,
        code,
        display,
    }
}

/// A code chosen at run time, such as an agent role from an access token.
/// Fields are in alphabetical order for the canonical form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coding {
    /// The code.
    pub code: String,
    /// Optional display text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    /// The code system URI.
    pub system: String,
}

/// The kind of event (`AuditEvent.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventType {
    /// A FHIR REST interaction (`audit-event-type#rest`).
    Rest,
    /// A user sign-in (DICOM 110114 User Authentication, subtype 110122 Login).
    Login,
    /// A user sign-out (DICOM 110114 User Authentication, subtype 110123 Logout).
    Logout,
    /// A security alert such as a rejected token, a break-the-glass start or
    /// a changed role (DICOM 110113 Security Alert).
    Security,
    /// A device joining or leaving: enrollment, certificate revocation
    /// (DICOM 110108 Network Entry, subtypes Attach and Detach).
    Device,
    /// Records sent to another organization (DICOM 110106 Export).
    Export,
    /// Records received from another organization (DICOM 110107 Import).
    Import,
    /// An administrative action on the server itself: start, stop, key or
    /// configuration changes (DICOM 110100 Application Activity).
    Admin,
    /// A read of the audit log (DICOM 110101 Audit Log Used).
    AuditLogUsed,
}

impl EventType {
    /// Returns the `AuditEvent.type` coding.
    pub fn coding(self) -> FixedCoding {
        match self {
            Self::Rest => fixed(AUDIT_EVENT_TYPE_SYSTEM, "rest", "RESTful Operation"),
            Self::Login | Self::Logout => fixed(DICOM_SYSTEM, "110114", "User Authentication"),
            Self::Security => fixed(DICOM_SYSTEM, "110113", "Security Alert"),
            Self::Device => fixed(DICOM_SYSTEM, "110108", "Network Entry"),
            Self::Export => fixed(DICOM_SYSTEM, "110106", "Export"),
            Self::Import => fixed(DICOM_SYSTEM, "110107", "Import"),
            Self::Admin => fixed(DICOM_SYSTEM, "110100", "Application Activity"),
            Self::AuditLogUsed => fixed(DICOM_SYSTEM, "110101", "Audit Log Used"),
        }
    }

    /// Returns the subtype that the event type implies, rendered before the
    /// record's own subtypes: Login (110122) and Logout (110123).
    pub fn implied_subtype(self) -> Option<FixedCoding> {
        match self {
            Self::Login => Some(fixed(DICOM_SYSTEM, "110122", "Login")),
            Self::Logout => Some(fixed(DICOM_SYSTEM, "110123", "Logout")),
            _ => None,
        }
    }
}

/// A more specific event code (`AuditEvent.subtype`): the FHIR interaction
/// for REST events, or a DICOM subtype for the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Subtype {
    /// FHIR `read`.
    Read,
    /// FHIR `vread`.
    Vread,
    /// FHIR `update`.
    Update,
    /// FHIR `patch`.
    Patch,
    /// FHIR `delete`.
    Delete,
    /// FHIR `history`.
    History,
    /// FHIR `history-instance`.
    HistoryInstance,
    /// FHIR `history-type`.
    HistoryType,
    /// FHIR `history-system`.
    HistorySystem,
    /// FHIR `create`.
    Create,
    /// FHIR `search`.
    Search,
    /// FHIR `search-type`.
    SearchType,
    /// FHIR `search-system`.
    SearchSystem,
    /// FHIR `capabilities`.
    Capabilities,
    /// FHIR `transaction`.
    Transaction,
    /// FHIR `batch`.
    Batch,
    /// FHIR `operation`; put the operation name in `detail` as `operation`.
    Operation,
    /// DICOM 110120 Application Start.
    ApplicationStart,
    /// DICOM 110121 Application Stop.
    ApplicationStop,
    /// DICOM 110124 Attach (a device enrolled).
    Attach,
    /// DICOM 110125 Detach (a device removed or revoked).
    Detach,
    /// DICOM 110126 Node Authentication (a TLS client certificate checked).
    NodeAuthentication,
    /// DICOM 110127 Emergency Override Started (break the glass).
    EmergencyOverrideStarted,
    /// DICOM 110138 Emergency Override Stopped.
    EmergencyOverrideStopped,
    /// DICOM 110129 Security Configuration.
    SecurityConfiguration,
    /// DICOM 110132 Use of Restricted Function.
    UseOfRestrictedFunction,
    /// DICOM 110136 Security Roles Changed.
    SecurityRolesChanged,
    /// DICOM 110137 User Security Attributes Changed.
    UserSecurityAttributesChanged,
}

impl Subtype {
    /// Returns the `AuditEvent.subtype` coding.
    pub fn coding(self) -> FixedCoding {
        let rest = |code| fixed(RESTFUL_INTERACTION_SYSTEM, code, code);
        match self {
            Self::Read => rest("read"),
            Self::Vread => rest("vread"),
            Self::Update => rest("update"),
            Self::Patch => rest("patch"),
            Self::Delete => rest("delete"),
            Self::History => rest("history"),
            Self::HistoryInstance => rest("history-instance"),
            Self::HistoryType => rest("history-type"),
            Self::HistorySystem => rest("history-system"),
            Self::Create => rest("create"),
            Self::Search => rest("search"),
            Self::SearchType => rest("search-type"),
            Self::SearchSystem => rest("search-system"),
            Self::Capabilities => rest("capabilities"),
            Self::Transaction => rest("transaction"),
            Self::Batch => rest("batch"),
            Self::Operation => rest("operation"),
            Self::ApplicationStart => fixed(DICOM_SYSTEM, "110120", "Application Start"),
            Self::ApplicationStop => fixed(DICOM_SYSTEM, "110121", "Application Stop"),
            Self::Attach => fixed(DICOM_SYSTEM, "110124", "Attach"),
            Self::Detach => fixed(DICOM_SYSTEM, "110125", "Detach"),
            Self::NodeAuthentication => fixed(DICOM_SYSTEM, "110126", "Node Authentication"),
            Self::EmergencyOverrideStarted => {
                fixed(DICOM_SYSTEM, "110127", "Emergency Override Started")
            }
            Self::EmergencyOverrideStopped => {
                fixed(DICOM_SYSTEM, "110138", "Emergency Override Stopped")
            }
            Self::SecurityConfiguration => fixed(DICOM_SYSTEM, "110129", "Security Configuration"),
            Self::UseOfRestrictedFunction => {
                fixed(DICOM_SYSTEM, "110132", "Use of Restricted Function")
            }
            Self::SecurityRolesChanged => fixed(DICOM_SYSTEM, "110136", "Security Roles Changed"),
            Self::UserSecurityAttributesChanged => {
                fixed(DICOM_SYSTEM, "110137", "User Security Attributes Changed")
            }
        }
    }
}

/// The kind of change the event made to the data (`AuditEvent.action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// `C`: create.
    #[serde(rename = "C")]
    Create,
    /// `R`: read, view, search or print.
    #[serde(rename = "R")]
    Read,
    /// `U`: update.
    #[serde(rename = "U")]
    Update,
    /// `D`: delete.
    #[serde(rename = "D")]
    Delete,
    /// `E`: execute, such as an operation, a login or a batch.
    #[serde(rename = "E")]
    Execute,
}

impl Action {
    /// Returns the R4 `AuditEvent.action` code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Create => "C",
            Self::Read => "R",
            Self::Update => "U",
            Self::Delete => "D",
            Self::Execute => "E",
        }
    }
}

/// Whether the event succeeded (`AuditEvent.outcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// `0`: success.
    #[serde(rename = "0")]
    Success,
    /// `4`: minor failure; the request was rejected, for example with 4xx.
    #[serde(rename = "4")]
    MinorFailure,
    /// `8`: serious failure; the action was not completed, for example 5xx.
    #[serde(rename = "8")]
    SeriousFailure,
    /// `12`: major failure; the server became unavailable.
    #[serde(rename = "12")]
    MajorFailure,
}

impl Outcome {
    /// Returns the R4 `AuditEvent.outcome` code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Success => "0",
            Self::MinorFailure => "4",
            Self::SeriousFailure => "8",
            Self::MajorFailure => "12",
        }
    }
}

/// The reason the data was accessed (`AuditEvent.purposeOfEvent`), from the HL7 v3
/// `ActReason` code system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PurposeOfUse {
    /// `TREAT`: treatment.
    #[serde(rename = "TREAT")]
    Treatment,
    /// `ETREAT`: emergency treatment.
    #[serde(rename = "ETREAT")]
    EmergencyTreatment,
    /// `BTG`: break the glass, access beyond the normal policy.
    #[serde(rename = "BTG")]
    BreakTheGlass,
    /// `HOPERAT`: healthcare operations.
    #[serde(rename = "HOPERAT")]
    Operations,
    /// `HPAYMT`: healthcare payment.
    #[serde(rename = "HPAYMT")]
    Payment,
    /// `HRESCH`: healthcare research.
    #[serde(rename = "HRESCH")]
    Research,
    /// `PATRQT`: requested by the patient.
    #[serde(rename = "PATRQT")]
    PatientRequest,
    /// `PUBHLTH`: public health.
    #[serde(rename = "PUBHLTH")]
    PublicHealth,
    /// `HSYSADMIN`: health system administration.
    #[serde(rename = "HSYSADMIN")]
    SystemAdministration,
}

impl PurposeOfUse {
    /// Returns the `ActReason` coding.
    pub fn coding(self) -> FixedCoding {
        let reason = |code, display| fixed(ACT_REASON_SYSTEM, code, display);
        match self {
            Self::Treatment => reason("TREAT", "treatment"),
            Self::EmergencyTreatment => reason("ETREAT", "Emergency Treatment"),
            Self::BreakTheGlass => reason("BTG", "break the glass"),
            Self::Operations => reason("HOPERAT", "healthcare operations"),
            Self::Payment => reason("HPAYMT", "healthcare payment"),
            Self::Research => reason("HRESCH", "healthcare research"),
            Self::PatientRequest => reason("PATRQT", "patient requested"),
            Self::PublicHealth => reason("PUBHLTH", "public health"),
            Self::SystemAdministration => reason("HSYSADMIN", "health system administration"),
        }
    }
}

/// The part an agent played (`AuditEvent.agent.type`), as BALP uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentKind {
    /// The person using the client (`humanuser`).
    User,
    /// The client application or device that sent the request (DICOM 110153
    /// Source Role ID).
    Client,
    /// The server that received the request (DICOM 110152 Destination Role ID).
    Server,
}

impl AgentKind {
    /// Returns the `AuditEvent.agent.type` coding.
    pub fn coding(self) -> FixedCoding {
        match self {
            Self::User => fixed(SECURITY_ROLE_TYPE_SYSTEM, "humanuser", "human user"),
            Self::Client => fixed(DICOM_SYSTEM, "110153", "Source Role ID"),
            Self::Server => fixed(DICOM_SYSTEM, "110152", "Destination Role ID"),
        }
    }
}

/// A party to the event (`AuditEvent.agent`). Fields are in alphabetical
/// order for the canonical form.
///
/// When more than one of `user_id`, `client_id` and `device_id` is set, the
/// first one identifies this agent and each further one is rendered as an
/// extra `Client` agent, because an R4 `Reference` has one identifier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    /// The OAuth client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The id of an enrolled device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The user's FHIR resource as a relative reference (`Practitioner/123`),
    /// the SMART `fhirUser` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// The part the agent played.
    pub kind: AgentKind,
    /// The peer IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Whether this agent started the event.
    #[serde(default, skip_serializing_if = "is_false")]
    pub requestor: bool,
    /// Role codes of the agent, such as the roles granted by the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Coding>,
    /// The user id, such as the access token subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl Agent {
    /// Creates an agent of `kind` with no ids, roles or address.
    pub fn new(kind: AgentKind) -> Self {
        Self {
            kind,
            user_id: None,
            fhir_user: None,
            client_id: None,
            device_id: None,
            roles: Vec::new(),
            requestor: false,
            network: None,
        }
    }
}

/// The server that observed the event (`AuditEvent.source`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The server id, rendered as `source.observer.identifier.value`.
    pub observer: String,
    /// The organization that runs the server, rendered as `source.site`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

/// A data object the event touched (`AuditEvent.entity`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Entity {
    /// The patient whose record was accessed (`Patient/id`, role 1 Patient).
    Patient {
        /// The relative reference `Patient/id`.
        reference: String,
    },
    /// The resource touched (`Type/id/_history/n`, role 4 Domain Resource).
    Resource {
        /// The relative reference, versioned when the version is known.
        reference: String,
    },
    /// A search, with its values redacted (role 24 Query).
    Query {
        /// The redacted query string.
        query: RedactedQuery,
    },
}

impl Entity {
    /// Creates a patient entity for the patient with logical id `id`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRecord`] if `id` is not a FHIR id (1 to 64 characters
    /// of `A-Z a-z 0-9 - .`).
    pub fn patient(id: &str) -> Result<Self> {
        check_fhir_id(id, "entity.reference")?;
        Ok(Self::Patient {
            reference: format!("Patient/{id}"),
        })
    }

    /// Creates a resource entity, `Type/id/_history/version` when the version
    /// is known and `Type/id` otherwise.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRecord`] if the type or id has an invalid form.
    pub fn resource(resource_type: &str, id: &str, version: Option<u64>) -> Result<Self> {
        check_resource_type(resource_type, "entity.reference")?;
        check_fhir_id(id, "entity.reference")?;
        let reference = match version {
            Some(version) => format!("{resource_type}/{id}/_history/{version}"),
            None => format!("{resource_type}/{id}"),
        };
        Ok(Self::Resource { reference })
    }

    /// Creates a query entity from decoded search parameters, redacting them
    /// with [`redact_query`].
    pub fn query<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        Self::Query {
            query: RedactedQuery::from_pairs(pairs),
        }
    }
}

/// One audit record: who did what to which data, when, and with what result.
///
/// Fields are declared in alphabetical order because the canonical form
/// serializes them in declaration order; see [`crate::chain`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The kind of change the event made to the data.
    pub action: Action,
    /// The parties to the event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<Agent>,
    /// Server-generated key/value pairs such as a request id, an operation
    /// name or a rejection code. Never request content; see the module docs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub detail: BTreeMap<String, String>,
    /// The patients, resources and queries involved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entities: Vec<Entity>,
    /// The kind of event.
    pub event_type: EventType,
    /// Whether the event succeeded.
    pub outcome: Outcome,
    /// Server-generated text about a failure. Never request content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_desc: Option<String>,
    /// The reasons the data was accessed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purpose_of_use: Vec<PurposeOfUse>,
    /// When the event was recorded. Stored with microsecond precision in UTC.
    #[serde(with = "recorded_format")]
    pub recorded: OffsetDateTime,
    /// The server that recorded the event.
    pub source: Source,
    /// More specific event codes, such as the FHIR interaction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subtypes: Vec<Subtype>,
}

impl AuditRecord {
    /// Creates a record with the required fields and nothing else.
    pub fn new(
        event_type: EventType,
        action: Action,
        recorded: OffsetDateTime,
        outcome: Outcome,
        source: Source,
    ) -> Self {
        Self {
            event_type,
            subtypes: Vec::new(),
            action,
            recorded,
            outcome,
            outcome_desc: None,
            purpose_of_use: Vec::new(),
            agents: Vec::new(),
            source,
            entities: Vec::new(),
            detail: BTreeMap::new(),
        }
    }

    /// Checks the rules that keep a record well-formed and free of request
    /// content.
    ///
    /// - every string is at most [`MAX_ID_LEN`] bytes ([`MAX_TEXT_LEN`] for
    ///   `outcome_desc` and detail values), without control characters;
    /// - `outcome_desc` and detail values are printable ASCII;
    /// - there is at least one agent, and `source.observer` is not empty;
    /// - detail keys are 1 to 64 characters of `a-z 0-9 _ . -`;
    /// - references have the form their field requires;
    /// - counts stay within [`MAX_AGENTS`], [`MAX_ENTITIES`] and
    ///   [`MAX_DETAILS`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRecord`] naming the first field that breaks a rule.
    pub fn validate(&self) -> Result<()> {
        check_text(&self.source.observer, MAX_ID_LEN, "source.observer")?;
        if self.source.observer.is_empty() {
            return Err(invalid("source.observer", "must not be empty"));
        }
        if let Some(site) = &self.source.site {
            check_text(site, MAX_ID_LEN, "source.site")?;
        }
        if let Some(text) = &self.outcome_desc {
            check_ascii(text, MAX_TEXT_LEN, "outcome_desc")?;
        }
        if self.agents.is_empty() {
            return Err(invalid("agents", "at least one agent is required"));
        }
        if self.agents.len() > MAX_AGENTS {
            return Err(invalid("agents", "too many agents"));
        }
        for agent in &self.agents {
            check_agent(agent)?;
        }
        if self.entities.len() > MAX_ENTITIES {
            return Err(invalid("entities", "too many entities"));
        }
        for entity in &self.entities {
            check_entity(entity)?;
        }
        if self.detail.len() > MAX_DETAILS {
            return Err(invalid("detail", "too many entries"));
        }
        for (key, value) in &self.detail {
            check_detail_key(key)?;
            check_ascii(value, MAX_TEXT_LEN, "detail")?;
        }
        Ok(())
    }
}

fn invalid(field: &'static str, reason: &'static str) -> Error {
    Error::InvalidRecord { field, reason }
}

fn check_text(text: &str, max: usize, field: &'static str) -> Result<()> {
    if text.len() > max {
        return Err(invalid(field, "too long"));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid(field, "contains a control character"));
    }
    Ok(())
}

fn check_ascii(text: &str, max: usize, field: &'static str) -> Result<()> {
    if text.len() > max {
        return Err(invalid(field, "too long"));
    }
    if !text.bytes().all(|byte| (0x20..0x7f).contains(&byte)) {
        return Err(invalid(field, "must be printable ASCII"));
    }
    Ok(())
}

fn check_detail_key(key: &str) -> Result<()> {
    let valid_byte = |byte: u8| {
        byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'_' | b'.' | b'-')
    };
    if key.is_empty() || key.len() > 64 || !key.bytes().all(valid_byte) {
        return Err(invalid(
            "detail",
            "keys must be 1 to 64 characters of a-z 0-9 _ . -",
        ));
    }
    Ok(())
}

fn check_optional(value: Option<&String>, field: &'static str) -> Result<()> {
    match value {
        Some(text) if text.is_empty() => Err(invalid(field, "must not be empty")),
        Some(text) => check_text(text, MAX_ID_LEN, field),
        None => Ok(()),
    }
}

fn check_agent(agent: &Agent) -> Result<()> {
    check_optional(agent.user_id.as_ref(), "agent.user_id")?;
    check_optional(agent.client_id.as_ref(), "agent.client_id")?;
    check_optional(agent.device_id.as_ref(), "agent.device_id")?;
    check_optional(agent.network.as_ref(), "agent.network")?;
    if let Some(reference) = &agent.fhir_user {
        check_reference(reference, false, "agent.fhir_user")?;
    }
    for role in &agent.roles {
        check_coding(role, "agent.roles")?;
    }
    Ok(())
}

fn check_coding(coding: &Coding, field: &'static str) -> Result<()> {
    if coding.system.is_empty() || coding.code.is_empty() {
        return Err(invalid(field, "system and code must not be empty"));
    }
    check_text(&coding.system, MAX_ID_LEN, field)?;
    check_text(&coding.code, MAX_ID_LEN, field)?;
    if let Some(display) = &coding.display {
        check_text(display, MAX_ID_LEN, field)?;
    }
    Ok(())
}

fn check_entity(entity: &Entity) -> Result<()> {
    match entity {
        Entity::Patient { reference } => match reference.strip_prefix("Patient/") {
            Some(id) => check_fhir_id(id, "entity.reference"),
            None => Err(invalid(
                "entity.reference",
                "a patient entity must be Patient/id",
            )),
        },
        Entity::Resource { reference } => check_reference(reference, true, "entity.reference"),
        Entity::Query { .. } => Ok(()),
    }
}

/// Checks `Type/id`, or also `Type/id/_history/n` when `versioned` is allowed.
fn check_reference(reference: &str, versioned: bool, field: &'static str) -> Result<()> {
    let mut parts = reference.split('/');
    let (Some(resource_type), Some(id)) = (parts.next(), parts.next()) else {
        return Err(invalid(field, "must be a relative reference Type/id"));
    };
    check_resource_type(resource_type, field)?;
    check_fhir_id(id, field)?;
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => Ok(()),
        (Some("_history"), Some(version), None) if versioned => check_fhir_id(version, field),
        _ => Err(invalid(
            field,
            "must be Type/id or Type/id/_history/version",
        )),
    }
}

fn check_resource_type(resource_type: &str, field: &'static str) -> Result<()> {
    let mut bytes = resource_type.bytes();
    let starts_upper = bytes.next().is_some_and(|byte| byte.is_ascii_uppercase());
    if !starts_upper || resource_type.len() > 64 || !bytes.all(|byte| byte.is_ascii_alphabetic()) {
        return Err(invalid(field, "invalid resource type"));
    }
    Ok(())
}

/// Checks the FHIR `id` datatype: `[A-Za-z0-9\-\.]{1,64}`.
fn check_fhir_id(id: &str, field: &'static str) -> Result<()> {
    let valid_byte = |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.');
    if id.is_empty() || id.len() > 64 || !id.bytes().all(valid_byte) {
        return Err(invalid(field, "invalid FHIR id"));
    }
    Ok(())
}

/// Serde format of `recorded`: RFC 3339 in UTC with exactly six fractional
/// digits, such as `2024-05-01T09:30:00.000000Z`, so equal instants always
/// produce equal bytes.
mod recorded_format {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _, ser::Error as _};
    use time::format_description::BorrowedFormatItem;
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    use time::{OffsetDateTime, UtcOffset};

    const FORMAT: &[BorrowedFormatItem<'static>] =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

    /// Formats `value` in the canonical form.
    pub(crate) fn format(value: &OffsetDateTime) -> Option<String> {
        value.to_offset(UtcOffset::UTC).format(FORMAT).ok()
    }

    pub(super) fn serialize<S: Serializer>(
        value: &OffsetDateTime,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match format(value) {
            Some(text) => serializer.serialize_str(&text),
            None => Err(S::Error::custom("recorded time outside years 0 to 9999")),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        OffsetDateTime::parse(&text, &Rfc3339)
            .map_err(|_| D::Error::custom("invalid recorded time"))
    }
}

pub(crate) use recorded_format::format as format_recorded;
