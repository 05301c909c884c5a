use time::macros::datetime;

use super::*;

const NOW: OffsetDateTime = datetime!(2025-03-01 08:00 UTC);
const P1: &str = "p-1";
const P2: &str = "p-2";
const USER: &str = "u-1";

const U: &str = "user/*.cruds";
const UR: &str = "user/*.rs";
const P: &str = "patient/*.cruds";
const S: &str = "system/*.cruds";

#[derive(Debug, Clone, Copy)]
enum C {
    None,
    P1,
    P2,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Allow(Basis),
    Deny(DenyReason),
}

use Basis::*;
use DenyReason::*;
use Expect::{Allow, Deny};
use Interaction::*;
use Role::*;

fn policy() -> Policy {
    Policy::default_policy().unwrap()
}

/// A principal whose patient in context is `p-1` when it has a `patient/`
/// scope, and whose `fhirUser` is `Patient/p-1` for the patient role.
fn principal(role: Option<Role>, scopes: &str) -> Principal {
    Principal {
        role,
        user_id: USER.into(),
        fhir_user: match role {
            Some(Role::Patient) => Some(format!("Patient/{P1}")),
            Some(_) => Some("Practitioner/pr-1".into()),
            None => None,
        },
        patient_context: scopes.contains("patient/").then(|| P1.to_owned()),
        scopes: Scopes::parse(scopes),
    }
}

fn compartment(c: C) -> Compartment<'static> {
    match c {
        C::None => Compartment::None,
        C::P1 => Compartment::Patient(P1),
        C::P2 => Compartment::Patient(P2),
        C::Any => Compartment::AnyPatient,
    }
}

fn request<'a>(
    principal: &'a Principal,
    resource_type: &'a str,
    c: C,
    interaction: Interaction,
    on_care_team: bool,
) -> Request<'a> {
    Request {
        principal,
        interaction,
        resource_type,
        compartment: compartment(c),
        on_care_team,
        break_glass: &[],
        consent_denies: false,
        now: NOW,
    }
}

fn outcome(decision: &Decision) -> Expect {
    match decision {
        Decision::Allow(a) => Allow(a.basis),
        Decision::Deny(r) => Deny(*r),
    }
}

type Row = (
    Option<Role>,
    &'static str,
    &'static str,
    C,
    Interaction,
    bool,
    Expect,
);

#[rustfmt::skip]
const TABLE: &[Row] = &[
    // role, scopes, type, compartment, interaction, on care team, expected
    (Some(Physician), U, "Observation", C::P1, Read, true, Allow(CareTeam)),
    (Some(Physician), U, "Observation", C::P1, Read, false, Deny(NotOnCareTeam)),
    (Some(Physician), U, "Observation", C::P1, Create, true, Allow(CareTeam)),
    (Some(Physician), U, "Observation", C::P1, Delete, true, Allow(CareTeam)),
    (Some(Physician), U, "Observation", C::Any, Search, true, Deny(PatientRequired)),
    (Some(Physician), U, "Patient", C::P1, Delete, true, Deny(RoleNotPermitted)),
    (Some(Physician), U, "Patient", C::P1, Update, true, Allow(CareTeam)),
    (Some(Physician), U, "Patient", C::P1, Patch, true, Allow(CareTeam)),
    (Some(Physician), U, "Patient", C::P1, Create, true, Deny(RoleNotPermitted)),
    (Some(Physician), U, "AuditEvent", C::P1, Read, true, Deny(RoleNotPermitted)),
    (Some(Physician), U, "Practitioner", C::None, Read, false, Allow(NoPatientData)),
    (Some(Physician), U, "Practitioner", C::None, Update, false, Deny(RoleNotPermitted)),
    (Some(Physician), UR, "Observation", C::P1, Update, true, Deny(NoMatchingScope)),
    (Some(Physician), UR, "Observation", C::P1, Search, true, Allow(CareTeam)),
    (Some(Physician), UR, "Observation", C::P1, History, true, Allow(CareTeam)),
    (Some(Physician), "user/Observation.rs", "Condition", C::P1, Read, true, Deny(NoMatchingScope)),
    (Some(Physician), S, "Observation", C::P1, Read, true, Deny(NoMatchingScope)),
    (Some(Physician), P, "Observation", C::P1, Read, true, Allow(CareTeam)),
    (Some(Physician), P, "Observation", C::P1, Read, false, Deny(NotOnCareTeam)),
    (Some(Physician), P, "Observation", C::P2, Read, true, Deny(OutsidePatientContext)),
    (Some(Physician), P, "Observation", C::Any, Search, true, Allow(CareTeam)),
    (Some(Physician), U, "Observation", C::P1, Vread, false, Deny(NotOnCareTeam)),
    (Some(Physician), U, "MedicationAdministration", C::P1, Create, true, Deny(RoleNotPermitted)),
    (Some(Physician), U, "Medication", C::None, Read, false, Allow(NoPatientData)),
    (Some(Physician), "user/Observation.rs?category=laboratory", "Observation", C::P1, Read, true, Allow(CareTeam)),
    (Some(Physician), U, "Encounter", C::P1, Delete, true, Deny(RoleNotPermitted)),
    (Some(Physician), U, "Consent", C::P1, Update, true, Deny(RoleNotPermitted)),
    (Some(Physician), U, "Consent", C::P1, Read, true, Allow(CareTeam)),
    (Some(Physician), "", "Observation", C::P1, Read, true, Deny(NoMatchingScope)),
    (Some(Physician), "user/MedicationRequest.write", "MedicationRequest", C::P1, Update, true, Allow(CareTeam)),
    (Some(Physician), "user/MedicationRequest.write", "MedicationRequest", C::P1, Read, true, Deny(NoMatchingScope)),
    (Some(Nurse), U, "Observation", C::P1, Read, true, Allow(CareTeam)),
    (Some(Nurse), U, "Observation", C::P1, Delete, true, Deny(RoleNotPermitted)),
    (Some(Nurse), U, "Observation", C::P1, Create, false, Deny(NotOnCareTeam)),
    (Some(Nurse), U, "MedicationAdministration", C::P1, Create, true, Allow(CareTeam)),
    (Some(Nurse), U, "MedicationRequest", C::P1, Create, true, Deny(RoleNotPermitted)),
    (Some(Nurse), U, "MedicationRequest", C::P1, Read, true, Allow(CareTeam)),
    (Some(Nurse), U, "Condition", C::P1, Update, true, Deny(RoleNotPermitted)),
    (Some(Nurse), U, "Patient", C::P1, Update, true, Allow(CareTeam)),
    (Some(Nurse), U, "Patient", C::Any, Search, true, Deny(PatientRequired)),
    (Some(Nurse), UR, "Observation", C::P1, Create, true, Deny(NoMatchingScope)),
    (Some(Nurse), P, "Observation", C::P2, Read, true, Deny(OutsidePatientContext)),
    (Some(Nurse), U, "AuditEvent", C::P1, Read, true, Deny(RoleNotPermitted)),
    (Some(Nurse), U, "Location", C::None, Search, false, Allow(NoPatientData)),
    (Some(Nurse), U, "Location", C::None, Create, false, Deny(RoleNotPermitted)),
    (Some(Nurse), U, "CarePlan", C::P1, Delete, true, Deny(RoleNotPermitted)),
    (Some(Nurse), U, "Immunization", C::P1, Update, false, Deny(NotOnCareTeam)),
    (Some(Nurse), U, "Immunization", C::P1, Update, true, Allow(CareTeam)),
    (Some(Nurse), "openid fhirUser", "Patient", C::P1, Read, true, Deny(NoMatchingScope)),
    (Some(Pharmacist), U, "MedicationDispense", C::P1, Create, true, Allow(CareTeam)),
    (Some(Pharmacist), U, "MedicationDispense", C::P1, Create, false, Deny(NotOnCareTeam)),
    (Some(Pharmacist), U, "MedicationRequest", C::P1, Update, true, Allow(CareTeam)),
    (Some(Pharmacist), U, "MedicationRequest", C::P1, Create, true, Deny(RoleNotPermitted)),
    (Some(Pharmacist), U, "Medication", C::None, Create, false, Allow(NoPatientData)),
    (Some(Pharmacist), U, "Observation", C::P1, Update, true, Deny(RoleNotPermitted)),
    (Some(Pharmacist), U, "Observation", C::P1, Search, true, Allow(CareTeam)),
    (Some(Pharmacist), U, "Condition", C::P1, Read, false, Deny(NotOnCareTeam)),
    (Some(Pharmacist), U, "DocumentReference", C::P1, Read, true, Deny(RoleNotPermitted)),
    (Some(Pharmacist), U, "Patient", C::P1, Update, true, Deny(RoleNotPermitted)),
    (Some(Pharmacist), UR, "Medication", C::None, Update, false, Deny(NoMatchingScope)),
    (Some(Pharmacist), U, "MedicationDispense", C::Any, Search, true, Deny(PatientRequired)),
    (Some(Pharmacist), P, "MedicationDispense", C::Any, Search, true, Allow(CareTeam)),
    (Some(LabTechnician), U, "DiagnosticReport", C::P1, Create, false, Allow(RoleWide)),
    (Some(LabTechnician), U, "Observation", C::P2, Update, false, Allow(RoleWide)),
    (Some(LabTechnician), U, "Patient", C::P1, Read, false, Allow(RoleWide)),
    (Some(LabTechnician), U, "Patient", C::P1, Create, false, Deny(RoleNotPermitted)),
    (Some(LabTechnician), U, "DiagnosticReport", C::P1, Delete, false, Deny(RoleNotPermitted)),
    (Some(LabTechnician), U, "Condition", C::P1, Read, false, Deny(RoleNotPermitted)),
    (Some(LabTechnician), U, "MedicationRequest", C::P1, Read, false, Deny(RoleNotPermitted)),
    (Some(LabTechnician), UR, "DiagnosticReport", C::P1, Create, false, Deny(NoMatchingScope)),
    (Some(FrontDesk), U, "Patient", C::P1, Create, false, Allow(RoleWide)),
    (Some(FrontDesk), U, "Patient", C::Any, Search, false, Allow(RoleWide)),
    (Some(FrontDesk), U, "Patient", C::P2, Update, false, Allow(RoleWide)),
    (Some(FrontDesk), U, "Patient", C::P1, Delete, false, Deny(RoleNotPermitted)),
    (Some(FrontDesk), U, "Appointment", C::P1, Delete, false, Allow(RoleWide)),
    (Some(FrontDesk), U, "Observation", C::P1, Read, true, Deny(RoleNotPermitted)),
    (Some(FrontDesk), U, "Condition", C::P1, Read, false, Deny(RoleNotPermitted)),
    (Some(FrontDesk), U, "Coverage", C::P1, Update, false, Allow(RoleWide)),
    (Some(FrontDesk), U, "Schedule", C::None, Read, false, Allow(NoPatientData)),
    (Some(FrontDesk), U, "Schedule", C::None, Create, false, Deny(RoleNotPermitted)),
    (Some(FrontDesk), UR, "Patient", C::P1, Create, false, Deny(NoMatchingScope)),
    (Some(FrontDesk), "user/Patient.rs", "Appointment", C::P1, Read, false, Deny(NoMatchingScope)),
    (Some(FrontDesk), U, "MedicationRequest", C::P1, Read, false, Deny(RoleNotPermitted)),
    (Some(FrontDesk), S, "Patient", C::P1, Read, false, Deny(NoMatchingScope)),
    (Some(SecurityAdmin), U, "Practitioner", C::None, Create, false, Allow(NoPatientData)),
    (Some(SecurityAdmin), U, "Practitioner", C::None, Delete, false, Deny(RoleNotPermitted)),
    (Some(SecurityAdmin), U, "PractitionerRole", C::None, Delete, false, Allow(NoPatientData)),
    (Some(SecurityAdmin), U, "Device", C::None, Update, false, Allow(NoPatientData)),
    (Some(SecurityAdmin), U, "Patient", C::P1, Read, true, Deny(RoleNotPermitted)),
    (Some(SecurityAdmin), U, "Observation", C::P1, Read, true, Deny(RoleNotPermitted)),
    (Some(SecurityAdmin), U, "AuditEvent", C::P1, Read, false, Deny(RoleNotPermitted)),
    (Some(SecurityAdmin), UR, "Organization", C::None, Update, false, Deny(NoMatchingScope)),
    (Some(SecurityAdmin), U, "Organization", C::None, Update, false, Allow(NoPatientData)),
    (Some(Auditor), U, "AuditEvent", C::P1, Read, false, Allow(RoleWide)),
    (Some(Auditor), U, "AuditEvent", C::Any, Search, false, Allow(RoleWide)),
    (Some(Auditor), U, "AuditEvent", C::P1, Delete, false, Deny(RoleNotPermitted)),
    (Some(Auditor), U, "AuditEvent", C::None, Create, false, Deny(RoleNotPermitted)),
    (Some(Auditor), U, "Provenance", C::P1, Search, false, Allow(RoleWide)),
    (Some(Auditor), U, "Observation", C::P1, Read, false, Deny(RoleNotPermitted)),
    (Some(Auditor), U, "Patient", C::P1, Read, false, Deny(RoleNotPermitted)),
    (Some(Auditor), U, "Consent", C::P1, Read, false, Allow(RoleWide)),
    (Some(Auditor), U, "Consent", C::P1, Update, false, Deny(RoleNotPermitted)),
    (Some(Auditor), "user/AuditEvent.r", "AuditEvent", C::Any, Search, false, Deny(NoMatchingScope)),
    (Some(Patient), P, "Observation", C::P1, Read, false, Allow(OwnRecord)),
    (Some(Patient), P, "Observation", C::P2, Read, false, Deny(OutsidePatientContext)),
    (Some(Patient), U, "Observation", C::P2, Read, false, Deny(NotOwnRecord)),
    (Some(Patient), U, "Observation", C::P1, Read, false, Allow(OwnRecord)),
    (Some(Patient), P, "Observation", C::P1, Create, false, Deny(RoleNotPermitted)),
    (Some(Patient), P, "Observation", C::P1, Delete, false, Deny(RoleNotPermitted)),
    (Some(Patient), P, "Appointment", C::P1, Create, false, Allow(OwnRecord)),
    (Some(Patient), P, "Consent", C::P1, Update, false, Allow(OwnRecord)),
    (Some(Patient), P, "Observation", C::Any, Search, false, Allow(OwnRecord)),
    (Some(Patient), U, "Observation", C::Any, Search, false, Allow(OwnRecord)),
    (Some(Patient), P, "Practitioner", C::None, Read, false, Allow(NoPatientData)),
    (Some(Patient), P, "Practitioner", C::None, Update, false, Deny(RoleNotPermitted)),
    (Some(Patient), "patient/Observation.rs", "Condition", C::P1, Read, false, Deny(NoMatchingScope)),
    (Some(Patient), "patient/Observation.rs", "Observation", C::P1, Search, false, Allow(OwnRecord)),
    (Some(Patient), S, "Observation", C::P1, Read, false, Deny(NoMatchingScope)),
    (Some(Patient), P, "AuditEvent", C::P1, Read, false, Allow(OwnRecord)),
    (None, S, "Observation", C::P1, Read, false, Allow(System)),
    (None, S, "Observation", C::Any, Search, false, Allow(System)),
    (None, S, "Practitioner", C::None, Create, false, Allow(NoPatientData)),
    (None, U, "Observation", C::P1, Read, false, Deny(NoMatchingScope)),
    (None, "system/Observation.rs", "Observation", C::P1, Create, false, Deny(NoMatchingScope)),
    (None, "system/Observation.rs", "Observation", C::P1, Search, false, Allow(System)),
    (None, "system/Patient.r", "Patient", C::P2, Read, false, Allow(System)),
    (None, "system/Patient.r", "Patient", C::P2, Vread, false, Allow(System)),
    (None, "system/Patient.r", "Patient", C::P2, History, false, Deny(NoMatchingScope)),
    (None, "system/Patient.read", "Patient", C::P2, Update, false, Deny(NoMatchingScope)),
];

#[test]
fn decide_table() {
    assert!(TABLE.len() >= 100, "{} rows", TABLE.len());
    let policy = policy();
    let mut failures = Vec::new();
    for (i, &(role, scopes, resource_type, c, interaction, on_care_team, expected)) in
        TABLE.iter().enumerate()
    {
        let principal = principal(role, scopes);
        let request = request(&principal, resource_type, c, interaction, on_care_team);
        let actual = outcome(&policy.decide(&request));
        if actual != expected {
            failures.push(format!(
                "row {i}: {role:?} {scopes:?} {interaction:?} {resource_type} {c:?} care team {on_care_team}: expected {expected:?}, got {actual:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn default_policy_has_every_role() {
    let policy = policy();
    assert_eq!(policy.version, 1);
    for role in Role::ALL {
        assert!(policy.roles.contains_key(&role), "{role:?}");
    }
    assert_eq!(policy.break_glass.max_duration, Duration::hours(4));
}

#[test]
fn patient_scope_needs_context() {
    let policy = policy();
    let mut principal = principal(Some(Physician), P);
    principal.patient_context = None;
    let request = request(&principal, "Observation", C::P1, Read, true);
    assert_eq!(
        policy.decide(&request),
        Decision::Deny(PatientContextMissing)
    );
}

#[test]
fn patient_scope_search_is_limited_to_context() {
    let policy = policy();
    let principal = principal(Some(Physician), P);
    let request = request(&principal, "Observation", C::Any, Search, true);
    let Decision::Allow(allowance) = policy.decide(&request) else {
        panic!("denied");
    };
    assert_eq!(allowance.patient_filter.as_deref(), Some(P1));
}

#[test]
fn own_record_search_is_limited_to_self() {
    let policy = policy();
    let principal = principal(Some(Patient), U);
    let request = request(&principal, "Observation", C::Any, Search, false);
    let Decision::Allow(allowance) = policy.decide(&request) else {
        panic!("denied");
    };
    assert_eq!(allowance.patient_filter.as_deref(), Some(P1));
}

#[test]
fn restricted_scopes_become_filters() {
    let policy = policy();
    let principal = principal(
        Some(Physician),
        "user/Observation.rs?category=laboratory user/Observation.rs?category=vital-signs",
    );
    let request = request(&principal, "Observation", C::P1, Search, true);
    let Decision::Allow(allowance) = policy.decide(&request) else {
        panic!("denied");
    };
    let filters: Vec<String> = allowance
        .search_filters
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(filters, ["category=laboratory", "category=vital-signs"]);
}

#[test]
fn unrestricted_scope_lifts_filters() {
    let policy = policy();
    let principal = principal(
        Some(Physician),
        "user/Observation.rs?category=laboratory user/Observation.rs",
    );
    let request = request(&principal, "Observation", C::P1, Search, true);
    let Decision::Allow(allowance) = policy.decide(&request) else {
        panic!("denied");
    };
    assert!(allowance.search_filters.is_empty());
}

fn grant(policy: &Policy, role: Role, patient: &str) -> BreakGlassGrant {
    policy
        .grant_break_glass(
            role,
            USER,
            patient,
            "unconscious in ED",
            NOW,
            Duration::hours(1),
        )
        .unwrap()
}

#[test]
fn break_glass_allows_read_off_care_team() {
    let policy = policy();
    let grants = [grant(&policy, Physician, P1)];
    let principal = principal(Some(Physician), U);
    let request = Request {
        break_glass: &grants,
        ..request(&principal, "Observation", C::P1, Read, false)
    };
    assert_eq!(outcome(&policy.decide(&request)), Allow(BreakGlass));
}

#[test]
fn break_glass_does_not_allow_writes() {
    let policy = policy();
    let grants = [grant(&policy, Physician, P1)];
    let principal = principal(Some(Physician), U);
    let request = Request {
        break_glass: &grants,
        ..request(&principal, "Observation", C::P1, Update, false)
    };
    assert_eq!(outcome(&policy.decide(&request)), Deny(NotOnCareTeam));
}

#[test]
fn break_glass_grant_must_match() {
    let policy = policy();
    let principal = principal(Some(Nurse), U);
    let expired = [grant(&policy, Nurse, P1)];
    let late = Request {
        break_glass: &expired,
        now: NOW + Duration::hours(1),
        ..request(&principal, "Observation", C::P1, Read, false)
    };
    assert_eq!(outcome(&policy.decide(&late)), Deny(NotOnCareTeam));

    let other_patient = [grant(&policy, Nurse, P2)];
    let wrong = Request {
        break_glass: &other_patient,
        ..request(&principal, "Observation", C::P1, Read, false)
    };
    assert_eq!(outcome(&policy.decide(&wrong)), Deny(NotOnCareTeam));

    let mut someone_else = grant(&policy, Nurse, P1);
    someone_else.user = "u-2".into();
    let someone_else = [someone_else];
    let wrong_user = Request {
        break_glass: &someone_else,
        ..request(&principal, "Observation", C::P1, Read, false)
    };
    assert_eq!(outcome(&policy.decide(&wrong_user)), Deny(NotOnCareTeam));
}

#[test]
fn ineligible_role_cannot_use_grant() {
    let policy = policy();
    // A grant record for a pharmacist, made outside grant_break_glass.
    let mut forged = grant(&policy, Physician, P1);
    forged.user = USER.into();
    let grants = [forged];
    let principal = principal(Some(Pharmacist), U);
    let request = Request {
        break_glass: &grants,
        ..request(&principal, "Observation", C::P1, Read, false)
    };
    assert_eq!(outcome(&policy.decide(&request)), Deny(NotOnCareTeam));
}

#[test]
fn consent_denial_blocks_care_team() {
    let policy = policy();
    for role in [Physician, Nurse, Pharmacist] {
        let principal = principal(Some(role), U);
        let request = Request {
            consent_denies: true,
            ..request(&principal, "Observation", C::P1, Read, true)
        };
        assert_eq!(
            outcome(&policy.decide(&request)),
            Deny(ConsentDenied),
            "{role:?}"
        );
    }
}

#[test]
fn consent_denial_blocks_role_wide_and_system() {
    let policy = policy();
    let front_desk = principal(Some(FrontDesk), U);
    let request_fd = Request {
        consent_denies: true,
        ..request(&front_desk, "Patient", C::P1, Read, false)
    };
    assert_eq!(outcome(&policy.decide(&request_fd)), Deny(ConsentDenied));

    let system = principal(None, S);
    let request_sys = Request {
        consent_denies: true,
        ..request(&system, "Observation", C::P1, Read, false)
    };
    assert_eq!(outcome(&policy.decide(&request_sys)), Deny(ConsentDenied));
}

#[test]
fn consent_denial_does_not_bind_the_patient() {
    let policy = policy();
    let principal = principal(Some(Patient), P);
    let request = Request {
        consent_denies: true,
        ..request(&principal, "Observation", C::P1, Read, false)
    };
    assert_eq!(outcome(&policy.decide(&request)), Allow(OwnRecord));
}

#[test]
fn break_glass_overrides_consent() {
    let policy = policy();
    let grants = [grant(&policy, Physician, P1)];
    let principal = principal(Some(Physician), U);
    let request = Request {
        consent_denies: true,
        break_glass: &grants,
        ..request(&principal, "Observation", C::P1, Read, true)
    };
    assert_eq!(outcome(&policy.decide(&request)), Allow(BreakGlass));

    let mut strict = policy.clone();
    strict.break_glass.overrides_consent = false;
    assert_eq!(outcome(&strict.decide(&request)), Deny(ConsentDenied));
}

#[test]
fn grant_break_glass_validates() {
    let policy = policy();
    let ok = policy.grant_break_glass(
        Nurse,
        USER,
        P1,
        "  cardiac arrest  ",
        NOW,
        Duration::hours(4),
    );
    assert_eq!(ok.unwrap().reason, "cardiac arrest");

    let long = "x".repeat(MAX_REASON_LEN + 1);
    let cases: [(Role, &str, Duration); 8] = [
        (Nurse, "", Duration::hours(1)),
        (Nurse, "   \n ", Duration::hours(1)),
        (Nurse, long.as_str(), Duration::hours(1)),
        (Nurse, "bad\u{7}bell", Duration::hours(1)),
        (Nurse, "fine", Duration::hours(4) + Duration::seconds(1)),
        (Nurse, "fine", Duration::ZERO),
        (Pharmacist, "fine", Duration::hours(1)),
        (Patient, "fine", Duration::hours(1)),
    ];
    for (role, reason, duration) in cases {
        let result = policy.grant_break_glass(role, USER, P1, reason, NOW, duration);
        assert!(
            matches!(result, Err(Error::InvalidBreakGlass { .. })),
            "{role:?} {reason:?} {duration}"
        );
    }
    assert!(
        policy
            .grant_break_glass(Nurse, "", P1, "fine", NOW, Duration::hours(1))
            .is_err()
    );
}

#[test]
fn role_account_kinds() {
    assert_eq!(SecurityAdmin.account_kind(), AccountKind::Admin);
    assert_eq!(Physician.account_kind(), AccountKind::Standard);
}

fn load_error(text: &str) -> PolicyError {
    Policy::load(text).unwrap_err()
}

const HEADER: &str = "version = 1\n[break_glass]\nmax_duration_minutes = 60\npermissions = \"rs\"\noverrides_consent = true\n";

#[test]
fn minimal_policy_loads() {
    let policy = Policy::load(HEADER).unwrap();
    assert!(policy.roles.is_empty());
    // With no roles, everything is denied.
    let principal = principal(Some(Physician), U);
    let request = request(&principal, "Observation", C::P1, Read, true);
    assert_eq!(policy.decide(&request), Decision::Deny(RoleNotPermitted));
}

#[test]
fn load_errors_name_the_line() {
    let cases = [
        (
            "version = 2\n".to_owned() + &HEADER[12..],
            1,
            "unsupported version",
        ),
        (
            format!("{HEADER}[roles.surgeon]\nrelationship = \"none\"\nbreak_glass = false\n"),
            6,
            "unknown role",
        ),
        (
            format!("{HEADER}[roles.nurse]\nrelationship = \"friends\"\nbreak_glass = false\n"),
            7,
            "relationship must be",
        ),
        (
            format!(
                "{HEADER}[roles.nurse]\nrelationship = \"none\"\nbreak_glass = false\n[roles.nurse.resources]\nObservation = \"rc\"\n"
            ),
            10,
            "cruds letters",
        ),
        (
            format!(
                "{HEADER}[roles.nurse]\nrelationship = \"none\"\nbreak_glass = false\n[roles.nurse.resources]\nobservation = \"r\"\n"
            ),
            10,
            "not a resource type",
        ),
        (
            format!("{HEADER}[roles.patient]\nrelationship = \"care-team\"\nbreak_glass = false\n"),
            7,
            "relationship = \"self\"",
        ),
        (
            format!("{HEADER}[roles.patient]\nrelationship = \"self\"\nbreak_glass = true\n"),
            8,
            "cannot use break-the-glass",
        ),
        (
            format!(
                "{HEADER}[roles.nurse]\nrelationship = \"none\"\nbreak_glass = false\ncolour = \"red\"\n"
            ),
            9,
            "unknown field",
        ),
        (HEADER.replace("= 60", "= 0"), 3, "max_duration_minutes"),
        (format!("{HEADER}[roles.nurse\n"), 6, ""),
        ("version = 1\n".to_owned(), 1, "break_glass"),
    ];
    for (text, line, fragment) in cases {
        let error = load_error(&text);
        assert_eq!(error.line, line, "{error} in\n{text}");
        assert!(
            error.to_string().contains(fragment),
            "{error:?} lacks {fragment:?}"
        );
    }
}

#[test]
fn star_letters_mean_all() {
    let text = format!(
        "{HEADER}[roles.auditor]\nrelationship = \"none\"\nbreak_glass = false\n[roles.auditor.resources]\n\"*\" = \"*\"\n"
    );
    let policy = Policy::load(&text).unwrap();
    let auditor = policy.roles.get(&Auditor).unwrap();
    assert_eq!(auditor.permissions("Anything"), Permissions::ALL);
}
