//! The access policy: who may do what to which resource.
//!
//! [`Policy::decide`] grants a request only when all four layers agree,
//! and denies by default:
//!
//! 1. **Scopes.** A SMART scope of the token grants the interaction on the
//!    resource type. `user/` scopes count for users, `system/` scopes only
//!    for backend services (no role), and `patient/` scopes only inside the
//!    compartment of the patient in context. Resource types outside every
//!    patient compartment (Practitioner, Medication, …) are reachable
//!    through `patient/` scopes too, since they hold no patient's data.
//! 2. **Role.** The user's role grants the interaction on the type in the
//!    policy file. Backend services have no role; their client
//!    registration limits their scopes instead.
//! 3. **Relationship.** For data in a patient's compartment, a `care-team`
//!    role needs the user on that patient's care team or an active
//!    break-the-glass grant, and a `self` role needs the patient to be the
//!    user.
//! 4. **Consent.** A Consent that denies disclosure blocks everyone except
//!    the patient themselves and, when the policy allows it, a user with an
//!    active break-the-glass grant.
//!
//! Each denial names its layer in [`DenyReason`] for the audit log.
//! A search that spans patients (no patient given) is limited to the
//! patient in context of a `patient/` scope, or to the patient's own record
//! for a `self` role, through [`Allowance::patient_filter`]; for a
//! `care-team` role without a patient in context it is denied.

mod load;

use std::collections::{BTreeMap, HashMap};

use time::{Duration, OffsetDateTime};

pub use load::{PolicyError, SUPPORTED_VERSION};

use crate::error::{Error, Result};
use crate::password::AccountKind;
use crate::scopes::{
    Permission, Permissions, ResourceScope, ScopeContext, Scopes, SearchRestriction,
};

/// The policy shipped with Ward.
pub const DEFAULT_POLICY: &str = include_str!("../policy/default-policy.toml");

/// Maximum length of a break-the-glass reason, in characters.
pub const MAX_REASON_LEN: usize = 500;

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A physician.
    Physician,
    /// A nurse.
    Nurse,
    /// A pharmacist.
    Pharmacist,
    /// Registration and scheduling staff.
    FrontDesk,
    /// Manages users, devices and the organization's directory.
    SecurityAdmin,
    /// Reviews the audit trail.
    Auditor,
    /// A patient using their own record.
    Patient,
    /// Laboratory staff who record results and send them to the ordering
    /// organization.
    LabTechnician,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 8] = [
        Role::Physician,
        Role::Nurse,
        Role::Pharmacist,
        Role::FrontDesk,
        Role::SecurityAdmin,
        Role::Auditor,
        Role::Patient,
        Role::LabTechnician,
    ];

    /// The role's name in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Physician => "physician",
            Role::Nurse => "nurse",
            Role::Pharmacist => "pharmacist",
            Role::FrontDesk => "front_desk",
            Role::SecurityAdmin => "security_admin",
            Role::Auditor => "auditor",
            Role::Patient => "patient",
            Role::LabTechnician => "lab_technician",
        }
    }

    /// Parses a policy-file role name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Which password length rule applies to accounts with this role.
    pub fn account_kind(self) -> AccountKind {
        match self {
            Role::SecurityAdmin => AccountKind::Admin,
            _ => AccountKind::Standard,
        }
    }
}

/// The relationship a role needs with a patient to see their data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relationship {
    /// The user must be on the patient's care team.
    CareTeam,
    /// The patient must be the user.
    SelfOnly,
    /// No relationship is needed.
    None,
}

/// One role's entry in the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolePolicy {
    /// The relationship needed for patient data.
    pub relationship: Relationship,
    /// Whether users with this role may open break-the-glass grants.
    pub break_glass: bool,
    /// Permissions per resource type; `*` applies to every type.
    pub resources: BTreeMap<String, Permissions>,
}

impl RolePolicy {
    /// The permissions on `resource_type`: its own entry and `*` together.
    pub fn permissions(&self, resource_type: &str) -> Permissions {
        let own = self
            .resources
            .get(resource_type)
            .copied()
            .unwrap_or_default();
        let any = self.resources.get("*").copied().unwrap_or_default();
        Permissions::from_bits(own.bits() | any.bits())
    }
}

/// The break-the-glass settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakGlassPolicy {
    /// The maximum grant duration.
    pub max_duration: Duration,
    /// What an active grant allows beyond the care-team rule.
    pub permissions: Permissions,
    /// Whether an active grant overrides a Consent denial.
    pub overrides_consent: bool,
}

/// A loaded, validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The policy file format version.
    pub version: u32,
    /// The break-the-glass settings.
    pub break_glass: BreakGlassPolicy,
    /// The roles; a role missing here may do nothing.
    pub roles: HashMap<Role, RolePolicy>,
}

/// Emergency access to one patient's record by one user, outside the
/// care-team rule. The caller stores it, shows it in the audit trail and
/// passes the user's active grants in [`Request::break_glass`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BreakGlassGrant {
    /// The Patient id whose compartment is opened.
    pub patient: String,
    /// The user id the grant is for.
    pub user: String,
    /// Why, in the user's words.
    pub reason: String,
    /// When it was opened.
    #[serde(with = "time::serde::rfc3339")]
    pub granted_at: OffsetDateTime,
    /// When it closes.
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
}

impl BreakGlassGrant {
    /// True when the grant covers `patient` for `user` at `now`.
    pub fn covers(&self, patient: &str, user: &str, now: OffsetDateTime) -> bool {
        self.patient == patient && self.user == user && self.granted_at <= now && now < self.expires
    }
}

/// The signed-in party.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user's role; `None` for a backend service acting for itself.
    pub role: Option<Role>,
    /// The user id, or the client id of a backend service.
    pub user_id: String,
    /// The `fhirUser` reference, such as `Practitioner/123` or
    /// `Patient/456`.
    pub fhir_user: Option<String>,
    /// The patient in context from the SMART launch, a Patient id.
    pub patient_context: Option<String>,
    /// The token's scopes.
    pub scopes: Scopes,
}

/// The FHIR interactions, by the permission letter each needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    /// `create`.
    Create,
    /// `read`.
    Read,
    /// `vread`.
    Vread,
    /// `update`.
    Update,
    /// `patch`.
    Patch,
    /// `delete`.
    Delete,
    /// `search-type` and `search-system`.
    Search,
    /// `history-instance`, `history-type` and `history-system`.
    History,
}

impl Interaction {
    /// The SMART permission the interaction needs.
    pub fn permission(self) -> Permission {
        match self {
            Interaction::Create => Permission::Create,
            Interaction::Read | Interaction::Vread => Permission::Read,
            Interaction::Update | Interaction::Patch => Permission::Update,
            Interaction::Delete => Permission::Delete,
            Interaction::Search | Interaction::History => Permission::Search,
        }
    }
}

/// Whose patient compartment the resource is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compartment<'a> {
    /// The type is outside every patient compartment (Practitioner,
    /// Organization, Medication, …), or the instance belongs to no patient.
    None,
    /// The compartment of this Patient id.
    Patient(&'a str),
    /// A search or history over a compartment type that names no patient.
    AnyPatient,
}

/// One access request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Who is asking.
    pub principal: &'a Principal,
    /// What they want to do.
    pub interaction: Interaction,
    /// The resource type.
    pub resource_type: &'a str,
    /// The compartment of the resource.
    pub compartment: Compartment<'a>,
    /// Whether the user is on the care team of the compartment's patient.
    /// For [`Compartment::AnyPatient`] with a patient in context, this and
    /// `consent_denies` are about the patient in context, because a
    /// `patient/` scope limits the request to that patient.
    pub on_care_team: bool,
    /// The user's break-the-glass grants (expired ones are ignored).
    pub break_glass: &'a [BreakGlassGrant],
    /// Whether an active Consent of the compartment's patient denies this
    /// disclosure.
    pub consent_denies: bool,
    /// The current time, for grant expiry.
    pub now: OffsetDateTime,
}

/// The outcome of [`Policy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, with conditions the caller must apply.
    Allow(Allowance),
    /// Denied.
    Deny(DenyReason),
}

impl Decision {
    /// True for [`Decision::Allow`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// What an allowed request may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowance {
    /// The ground for access, for the audit log.
    pub basis: Basis,
    /// When not empty, the resource must match at least one of these (from
    /// SMART v2 scopes such as `patient/Observation.rs?category=laboratory`):
    /// add them to a search, check them on a read or write.
    pub search_filters: Vec<SearchRestriction>,
    /// For [`Compartment::AnyPatient`], the Patient id to limit the results
    /// to.
    pub patient_filter: Option<String>,
}

/// The ground on which a request was allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The resource contains no patient's data.
    NoPatientData,
    /// The user is on the patient's care team.
    CareTeam,
    /// The record is the user's own.
    OwnRecord,
    /// The role needs no relationship.
    RoleWide,
    /// A backend service within its scopes.
    System,
    /// An active break-the-glass grant.
    BreakGlass,
}

/// The reason a request was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DenyReason {
    /// No scope grants the interaction on the type.
    #[error("no granted scope allows this interaction")]
    NoMatchingScope,
    /// Only `patient/` scopes match, and the token has no patient.
    #[error("the token has no patient in context")]
    PatientContextMissing,
    /// Only `patient/` scopes match, for another patient.
    #[error("the resource is outside the patient in context")]
    OutsidePatientContext,
    /// The role may not perform the interaction on the type.
    #[error("the role does not permit this interaction")]
    RoleNotPermitted,
    /// A `care-team` role searched patient data without naming a patient.
    #[error("a patient must be named to search this data")]
    PatientRequired,
    /// The user is not on the patient's care team and has no active
    /// break-the-glass grant that covers the interaction.
    #[error("the user is not on the patient's care team")]
    NotOnCareTeam,
    /// The record belongs to another patient.
    #[error("the record belongs to another patient")]
    NotOwnRecord,
    /// The patient's Consent denies this disclosure.
    #[error("the patient's consent denies this disclosure")]
    ConsentDenied,
}

impl Policy {
    /// Loads and validates a policy in the TOML format of
    /// `policy/default-policy.toml`.
    ///
    /// # Errors
    ///
    /// [`PolicyError`] with the line of the first problem: invalid TOML,
    /// an unknown key, an unsupported `version`, an unknown role or
    /// relationship, a malformed resource type or letters, a patient role
    /// without `relationship = "self"` or with break-the-glass, or a
    /// break-the-glass duration outside 1 to 1440 minutes.
    pub fn load(text: &str) -> Result<Self, PolicyError> {
        load::load(text)
    }

    /// The policy shipped in [`DEFAULT_POLICY`].
    ///
    /// # Errors
    ///
    /// None in practice: a test loads the shipped file.
    pub fn default_policy() -> Result<Self, PolicyError> {
        Self::load(DEFAULT_POLICY)
    }

    /// Opens a break-the-glass grant for `user` with `role` on `patient`,
    /// from `now` for `duration`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBreakGlass`] when the role may not break the glass,
    /// the reason is blank, longer than [`MAX_REASON_LEN`] characters or
    /// contains control characters other than line breaks, the patient or
    /// user id is empty, or the duration is not positive or exceeds the
    /// policy's maximum.
    pub fn grant_break_glass(
        &self,
        role: Role,
        user: &str,
        patient: &str,
        reason: &str,
        now: OffsetDateTime,
        duration: Duration,
    ) -> Result<BreakGlassGrant> {
        let invalid = |reason: &str| {
            Err(Error::InvalidBreakGlass {
                reason: reason.to_owned(),
            })
        };
        if !self.roles.get(&role).is_some_and(|r| r.break_glass) {
            return invalid("the role may not break the glass");
        }
        if user.is_empty() || patient.is_empty() {
            return invalid("the user and patient are required");
        }
        let reason = reason.trim();
        if reason.is_empty() {
            return invalid("a reason is required");
        }
        if reason.chars().count() > MAX_REASON_LEN {
            return invalid("the reason is longer than 500 characters");
        }
        if reason
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\r')
        {
            return invalid("the reason contains control characters");
        }
        if duration <= Duration::ZERO || duration > self.break_glass.max_duration {
            return invalid("the duration exceeds the policy maximum or is not positive");
        }
        Ok(BreakGlassGrant {
            patient: patient.to_owned(),
            user: user.to_owned(),
            reason: reason.to_owned(),
            granted_at: now,
            expires: now + duration,
        })
    }

    /// Decides a request; see the module documentation.
    pub fn decide(&self, request: &Request<'_>) -> Decision {
        match self.evaluate(request) {
            Ok(allowance) => Decision::Allow(allowance),
            Err(reason) => Decision::Deny(reason),
        }
    }

    fn evaluate(&self, request: &Request<'_>) -> Result<Allowance, DenyReason> {
        let principal = request.principal;
        let (search_filters, scope_patient) = check_scopes(request)?;

        // A search over any patient that a `patient/` scope limits to the
        // patient in context is decided as a request in that compartment.
        let narrowed;
        let request = match (&scope_patient, request.compartment) {
            (Some(patient), Compartment::AnyPatient) => {
                narrowed = Request {
                    compartment: Compartment::Patient(patient),
                    ..*request
                };
                &narrowed
            }
            _ => request,
        };

        let Some(role) = principal.role else {
            check_consent(self, request, false)?;
            return Ok(Allowance {
                basis: match request.compartment {
                    Compartment::None => Basis::NoPatientData,
                    _ => Basis::System,
                },
                search_filters,
                patient_filter: scope_patient.clone(),
            });
        };

        let role_policy = self.roles.get(&role).ok_or(DenyReason::RoleNotPermitted)?;
        let permission = request.interaction.permission();
        if !role_policy
            .permissions(request.resource_type)
            .contains(permission)
        {
            return Err(DenyReason::RoleNotPermitted);
        }

        let (basis, role_patient) = self.check_relationship(request, role, role_policy)?;
        let own_record = basis == Basis::OwnRecord;
        let break_glass = basis == Basis::BreakGlass || self.has_grant(request, role);
        if !own_record {
            check_consent(self, request, break_glass)?;
        }
        let basis = if request.consent_denies && break_glass && !own_record {
            Basis::BreakGlass
        } else {
            basis
        };

        let patient_filter = match (scope_patient.clone(), role_patient) {
            (Some(a), Some(b)) if a != b => return Err(DenyReason::NotOwnRecord),
            (a, b) => a.or(b),
        };
        Ok(Allowance {
            basis,
            search_filters,
            patient_filter,
        })
    }

    fn check_relationship(
        &self,
        request: &Request<'_>,
        role: Role,
        role_policy: &RolePolicy,
    ) -> Result<(Basis, Option<String>), DenyReason> {
        let principal = request.principal;
        let own_patient = principal
            .fhir_user
            .as_deref()
            .and_then(|r| r.strip_prefix("Patient/"));
        match (role_policy.relationship, request.compartment) {
            (_, Compartment::None) => Ok((Basis::NoPatientData, None)),
            (Relationship::None, _) => Ok((Basis::RoleWide, None)),
            (Relationship::SelfOnly, Compartment::Patient(patient)) => {
                if own_patient == Some(patient) {
                    Ok((Basis::OwnRecord, None))
                } else {
                    Err(DenyReason::NotOwnRecord)
                }
            }
            (Relationship::SelfOnly, Compartment::AnyPatient) => match own_patient {
                Some(own) => Ok((Basis::OwnRecord, Some(own.to_owned()))),
                None => Err(DenyReason::NotOwnRecord),
            },
            (Relationship::CareTeam, Compartment::AnyPatient) => Err(DenyReason::PatientRequired),
            (Relationship::CareTeam, Compartment::Patient(_)) => {
                if request.on_care_team {
                    return Ok((Basis::CareTeam, None));
                }
                if self.has_grant(request, role) {
                    Ok((Basis::BreakGlass, None))
                } else {
                    Err(DenyReason::NotOnCareTeam)
                }
            }
        }
    }

    /// True when the role may break the glass, the policy's break-the-glass
    /// permissions cover the interaction, and one of the request's grants is
    /// active for this user and patient.
    fn has_grant(&self, request: &Request<'_>, role: Role) -> bool {
        let Compartment::Patient(patient) = request.compartment else {
            return false;
        };
        self.roles.get(&role).is_some_and(|r| r.break_glass)
            && self
                .break_glass
                .permissions
                .contains(request.interaction.permission())
            && request
                .break_glass
                .iter()
                .any(|g| g.covers(patient, &request.principal.user_id, request.now))
    }
}

/// Applies the scope layer. Returns the search filters and, for a
/// `patient/` scope on a search over any patient, the patient to limit it
/// to.
fn check_scopes(
    request: &Request<'_>,
) -> Result<(Vec<SearchRestriction>, Option<String>), DenyReason> {
    let principal = request.principal;
    let permission = request.interaction.permission();
    let candidates: Vec<&ResourceScope> = principal
        .scopes
        .resources()
        .filter(|s| s.allows(request.resource_type, permission))
        .filter(|s| match s.context {
            ScopeContext::System => principal.role.is_none(),
            ScopeContext::User => principal.role.is_some(),
            ScopeContext::Patient => true,
        })
        .collect();
    if candidates.is_empty() {
        return Err(DenyReason::NoMatchingScope);
    }

    let context = principal.patient_context.as_deref();
    let mut usable = Vec::new();
    let mut patient_filter = None;
    let mut patient_error = None;
    for scope in candidates {
        if scope.context != ScopeContext::Patient {
            usable.push(scope);
            continue;
        }
        match (context, request.compartment) {
            (None, _) => patient_error = Some(DenyReason::PatientContextMissing),
            (Some(_), Compartment::None) => usable.push(scope),
            (Some(ctx), Compartment::Patient(p)) if ctx == p => usable.push(scope),
            (Some(_), Compartment::Patient(_)) => {
                patient_error.get_or_insert(DenyReason::OutsidePatientContext);
            }
            (Some(ctx), Compartment::AnyPatient) => {
                patient_filter = Some(ctx.to_owned());
                usable.push(scope);
            }
        }
    }
    if usable.is_empty() {
        return Err(patient_error.unwrap_or(DenyReason::NoMatchingScope));
    }
    // A non-patient scope that also matches lifts the patient limit.
    if usable.iter().any(|s| s.context != ScopeContext::Patient) {
        patient_filter = None;
    }
    let filters = if usable.iter().any(|s| s.restriction.is_none()) {
        Vec::new()
    } else {
        usable
            .iter()
            .filter_map(|s| s.restriction.clone())
            .collect()
    };
    Ok((filters, patient_filter))
}

fn check_consent(
    policy: &Policy,
    request: &Request<'_>,
    break_glass: bool,
) -> Result<(), DenyReason> {
    let patient_data = matches!(request.compartment, Compartment::Patient(_));
    if patient_data
        && request.consent_denies
        && !(break_glass && policy.break_glass.overrides_consent)
    {
        return Err(DenyReason::ConsentDenied);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
