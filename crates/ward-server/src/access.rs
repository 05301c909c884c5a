//! The one access decision for every FHIR interaction: SMART scopes ∩ the
//! role's permissions ∩ the relationship to the patient (care team, or the
//! user's own record) ∩ the patient's consent, with break-the-glass grants.
//!
//! Handlers and bundle entries call [`Caller::require_type`] before they
//! touch the store and [`Caller::check_resource`] on every resource they
//! read or write; searches, includes and history filter each resource with
//! [`Caller::can_see`] before counting and paging. A resource the caller may
//! not see is reported as absent (404), so its existence does not leak.

use std::collections::HashSet;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use ward_auth::policy::{
    BreakGlassGrant, Compartment, Decision, DenyReason, Interaction, Policy, Principal as Subject,
    Request, Role,
};
use ward_fhir::IssueType;
use ward_fhir::search::{Handling, IndexEntry, index_resource, matches, parse_search};
use ward_store::{PageRequest, ResourceVersion, Store};

use crate::audit::Actor;
use crate::auth::Principal;
use crate::error::{FhirError, FhirResult};

/// The key-value namespace of break-the-glass grants, keyed by user id.
pub const BREAK_GLASS_NS: &str = "break-glass";

/// The maximum number of resources a care-team or consent lookup reads.
const MAX_LOOKUP: usize = 10_000;

/// The loaded access policy.
pub struct Access {
    policy: Policy,
}

/// The break-the-glass grants of one user, as stored.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StoredGrants {
    /// Every grant, expired ones included until the next write prunes them.
    pub grants: Vec<BreakGlassGrant>,
}

impl Access {
    /// Loads the policy file `path` when it exists, else the default policy
    /// shipped with Ward.
    pub fn load_or_default(path: &std::path::Path) -> Result<Self, String> {
        let policy = if path.exists() {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            Policy::load(&text).map_err(|e| format!("{}: {e}", path.display()))?
        } else {
            Policy::default_policy().map_err(|e| format!("the default policy: {e}"))?
        };
        Ok(Self::new(policy))
    }

    /// Uses `policy`.
    pub fn new(policy: Policy) -> Self {
        Self { policy }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Prepares the decisions for one request: loads the caller's
    /// break-the-glass grants, and for users whose role requires a care-team
    /// relationship, their patients and the patients whose consent denies
    /// disclosure.
    pub fn caller<'a>(
        &'a self,
        store: &dyn Store,
        principal: &Principal,
    ) -> FhirResult<Caller<'a>> {
        let role = match principal.role.as_deref() {
            Some(name) => Some(Role::parse(name).ok_or_else(|| {
                FhirError::forbidden(&format!(
                    "the token's role '{name}' is not in the access policy"
                ))
            })?),
            None => None,
        };
        let subject = Subject {
            role,
            user_id: principal.subject.clone(),
            fhir_user: principal.fhir_user.clone(),
            patient_context: principal.patient.clone(),
            scopes: ward_auth::Scopes::parse(&principal.scopes.raw.join(" ")),
        };
        let mut caller = Caller {
            actor: Actor::from_principal(principal, None),
            denials: std::sync::Mutex::new(Vec::new()),
            policy: &self.policy,
            owner: principal.page_owner(),
            subject,
            grants: Vec::new(),
            care_team: HashSet::new(),
            consent_denied: HashSet::new(),
            now: OffsetDateTime::now_utc(),
        };
        if role.is_some() {
            caller.load_user_context(store)?;
        }
        Ok(caller)
    }
}

/// An access decision that rejected part of a request, kept for the audit
/// log.
#[derive(Debug, Clone)]
pub struct Denial {
    /// The reason, server-generated text without request content.
    pub reason: String,
    /// The resource type requested.
    pub resource_type: String,
    /// The resource id, when one resource was rejected.
    pub id: Option<String>,
    /// The patients whose compartment holds the rejected resource.
    pub patients: Vec<String>,
}

/// The access decisions of one request.
pub struct Caller<'a> {
    actor: Actor,
    denials: std::sync::Mutex<Vec<Denial>>,
    policy: &'a Policy,
    owner: String,
    subject: Subject,
    grants: Vec<BreakGlassGrant>,
    care_team: HashSet<String>,
    consent_denied: HashSet<String>,
    now: OffsetDateTime,
}

/// Runs a search and returns the matching resources, at most `MAX_LOOKUP`.
fn lookup(
    store: &dyn Store,
    resource_type: &str,
    pairs: &[(&str, &str)],
) -> FhirResult<Vec<Value>> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let query = parse_search(Some(resource_type), &pairs, Handling::Strict)?;
    let page = PageRequest {
        count: MAX_LOOKUP,
        snapshot_ttl_secs: 1,
        context: String::new(),
    };
    let result = store.search(&query, &page, None)?;
    Ok(result
        .matches
        .into_iter()
        .filter_map(|v| v.resource)
        .collect())
}

/// Returns the Patient ids that a list of references points to.
fn patient_ids<'v>(values: impl Iterator<Item = &'v Value>) -> impl Iterator<Item = String> {
    values.filter_map(|v| {
        v.get("reference")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("Patient/"))
            .map(str::to_owned)
    })
}

impl Caller<'_> {
    fn load_user_context(&mut self, store: &dyn Store) -> FhirResult<()> {
        if let Some(bytes) = store.kv_get(BREAK_GLASS_NS, &self.subject.user_id)? {
            let stored: StoredGrants = serde_json::from_slice(&bytes).unwrap_or_default();
            self.grants = stored.grants;
        }
        if let Some(fhir_user) = self.subject.fhir_user.clone() {
            for team in lookup(store, "CareTeam", &[("participant", &fhir_user)])? {
                // A team without a status counts; one that ended does not.
                let status = team.get("status").and_then(Value::as_str);
                if matches!(status, Some("inactive" | "suspended" | "entered-in-error")) {
                    continue;
                }
                let subject = team.get("subject").into_iter();
                self.care_team.extend(patient_ids(subject));
            }
            for patient in lookup(store, "Patient", &[("general-practitioner", &fhir_user)])? {
                if let Some(id) = patient.get("id").and_then(Value::as_str) {
                    self.care_team.insert(id.to_owned());
                }
            }
        }
        for consent in lookup(store, "Consent", &[("status", "active")])? {
            if self.consent_denies(&consent) {
                self.consent_denied
                    .extend(patient_ids(consent.get("patient").into_iter()));
            }
        }
        Ok(())
    }

    /// True when an active Consent denies disclosure to this caller: its
    /// base provision is `deny`, and it names no actors or names the
    /// caller's `fhirUser`.
    // NOTE: nested provisions, periods, purposes and data classes of a
    // Consent are not evaluated; only the base provision is.
    fn consent_denies(&self, consent: &Value) -> bool {
        let provision = consent.get("provision");
        let denies = provision
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str)
            == Some("deny");
        if !denies {
            return false;
        }
        let actors: Vec<&str> = provision
            .and_then(|p| p.get("actor"))
            .and_then(Value::as_array)
            .map(|actors| {
                actors
                    .iter()
                    .filter_map(|a| a.pointer("/reference/reference").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        actors.is_empty()
            || self
                .subject
                .fhir_user
                .as_deref()
                .is_some_and(|me| actors.contains(&me))
    }

    fn decide(
        &self,
        interaction: Interaction,
        resource_type: &str,
        compartment: Compartment<'_>,
    ) -> Decision {
        let (on_care_team, consent_denies) = match compartment {
            Compartment::Patient(patient) => (
                self.care_team.contains(patient),
                self.consent_denied.contains(patient),
            ),
            _ => (false, false),
        };
        self.policy.decide(&Request {
            principal: &self.subject,
            interaction,
            resource_type,
            compartment,
            on_care_team,
            break_glass: &self.grants,
            consent_denies,
            now: self.now,
        })
    }

    /// Checks that the caller may perform `interaction` on `resource_type`
    /// at all (scopes and role); 403 otherwise. Relationship and consent
    /// are checked per resource.
    pub fn require_type(&self, resource_type: &str, interaction: Interaction) -> FhirResult<()> {
        match self.decide(interaction, resource_type, Compartment::None) {
            Decision::Allow(_) => Ok(()),
            Decision::Deny(reason) => Err(self.denied(
                Denial {
                    reason: reason.to_string(),
                    resource_type: resource_type.to_owned(),
                    id: None,
                    patients: Vec::new(),
                },
                format!(
                    "{reason}: {} on {resource_type} is not allowed",
                    interaction_name(interaction)
                ),
            )),
        }
    }

    /// Keeps `denial` for the audit log and returns the 403 to send.
    fn denied(&self, denial: Denial, message: String) -> FhirError {
        if let Ok(mut denials) = self.denials.lock() {
            denials.push(denial);
        }
        FhirError::forbidden(&message)
    }

    /// Returns and clears the denials of this request so far.
    pub fn take_denials(&self) -> Vec<Denial> {
        self.denials
            .lock()
            .map(|mut denials| std::mem::take(&mut *denials))
            .unwrap_or_default()
    }

    /// The caller as the audit log names it.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// Sets the peer address the audit log records.
    pub fn set_network(&mut self, network: Option<std::net::IpAddr>) {
        self.actor.network = network;
    }

    /// Checks one resource: every patient whose compartment contains it must
    /// be accessible, and it must match a search restriction of the scope
    /// that allowed it, if any.
    pub fn check_resource(
        &self,
        interaction: Interaction,
        resource: &Value,
    ) -> Result<(), DenyReason> {
        let resource_type = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let entries: Vec<IndexEntry> = index_resource(resource);
        let patients = ward_fhir::compartment::patients_of(resource, &entries);
        if patients.is_empty()
            && ward_fhir::compartment::patient_linked(resource_type)
            && self.needs_patient()
        {
            // A patient-compartment type (or a Binary without a patient
            // `securityContext`) that names no patient is outside every
            // patient's record, so callers limited to patients may not
            // touch it.
            return Err(DenyReason::OutsidePatientContext);
        }
        let decisions: Vec<Decision> = if patients.is_empty() {
            vec![self.decide(interaction, resource_type, Compartment::None)]
        } else {
            patients
                .iter()
                .map(|p| self.decide(interaction, resource_type, Compartment::Patient(p)))
                .collect()
        };
        for decision in decisions {
            match decision {
                Decision::Deny(reason) => return Err(reason),
                Decision::Allow(allowance) => {
                    if !allowance.search_filters.is_empty()
                        && !allowance
                            .search_filters
                            .iter()
                            .any(|r| restriction_matches(resource_type, &r.params, &entries))
                    {
                        return Err(DenyReason::NoMatchingScope);
                    }
                }
            }
        }
        Ok(())
    }

    /// True when the caller's access is tied to patients: a patient in
    /// context, or a role whose relationship is the care team or the
    /// user's own record.
    fn needs_patient(&self) -> bool {
        if self.subject.patient_context.is_some() {
            return true;
        }
        self.subject.role.is_some_and(|role| {
            self.policy
                .roles
                .get(&role)
                .is_some_and(|r| !matches!(r.relationship, ward_auth::policy::Relationship::None))
        })
    }

    /// Like [`Self::check_resource`], mapped to the response a client sees:
    /// 404 when the resource exists but may not be seen (or `create` is
    /// true and it may not be written: 403).
    pub fn require_resource(
        &self,
        interaction: Interaction,
        resource: &Value,
        create: bool,
    ) -> FhirResult<()> {
        let Err(reason) = self.check_resource(interaction, resource) else {
            return Ok(());
        };
        let mut patients = std::collections::BTreeSet::new();
        crate::audit::patients_in(resource, &mut patients);
        let denial = Denial {
            reason: reason.to_string(),
            resource_type: resource
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            id: resource
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            patients: patients.into_iter().collect(),
        };
        if create {
            Err(self.denied(denial, reason.to_string()))
        } else {
            if let Ok(mut denials) = self.denials.lock() {
                denials.push(denial);
            }
            Err(hidden(resource))
        }
    }

    /// True when the caller may read this version.
    pub fn can_see(&self, version: &ResourceVersion) -> bool {
        version
            .resource
            .as_ref()
            .is_some_and(|r| self.check_resource(Interaction::Read, r).is_ok())
    }

    /// True when results need per-resource filtering: always, unless the
    /// caller is a backend service that may read every resource type
    /// without restriction (then the type check before the search covers
    /// everything it can be shown, `_include` and `_revinclude` included).
    pub fn filters_results(&self) -> bool {
        let unrestricted_service = self.subject.role.is_none()
            && self.subject.patient_context.is_none()
            && !self.subject.scopes.raw.iter().any(|s| s.contains('?'))
            && self
                .decide(Interaction::Read, "*", Compartment::None)
                .is_allowed();
        !unrestricted_service
    }

    /// Identifies the caller for paging; see
    /// [`Principal::page_owner`](crate::auth::Principal::page_owner).
    pub fn page_owner(&self) -> &str {
        &self.owner
    }

    /// Returns the caller's user id.
    pub fn user_id(&self) -> &str {
        &self.subject.user_id
    }
}

/// Builds the 404 a caller gets for a resource it may not see.
fn hidden(resource: &Value) -> FhirError {
    let resource_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("resource");
    let id = resource
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    FhirError::new(
        StatusCode::NOT_FOUND,
        IssueType::NotFound,
        format!("{resource_type}/{id} is not known"),
    )
}

/// True when the resource matches every parameter of one scope restriction.
fn restriction_matches(
    resource_type: &str,
    params: &[(String, String)],
    entries: &[IndexEntry],
) -> bool {
    match parse_search(Some(resource_type), params, Handling::Strict) {
        Ok(query) => query
            .criteria
            .iter()
            .all(|c| c.chain.is_none() && matches(c, entries)),
        Err(_) => false,
    }
}

fn interaction_name(interaction: Interaction) -> &'static str {
    match interaction {
        Interaction::Create => "create",
        Interaction::Read => "read",
        Interaction::Vread => "vread",
        Interaction::Update => "update",
        Interaction::Patch => "patch",
        Interaction::Delete => "delete",
        Interaction::Search => "search",
        Interaction::History => "history",
    }
}
