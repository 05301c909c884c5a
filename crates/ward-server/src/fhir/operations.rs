//! FHIR operations: `$break-the-glass` on a Patient, which gives a
//! clinician outside the patient's care team time-boxed read access with a
//! mandatory reason.

use http::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use ward_auth::policy::Role;
use ward_fhir::{IssueType, OperationOutcome, OutcomeIssue};

use crate::access::{BREAK_GLASS_NS, StoredGrants};
use crate::audit::Actor;
use crate::auth::Principal;
use crate::error::{FhirError, FhirResult};
use crate::fhir::engine::Engine;

/// The grant duration when the request names none, in minutes.
const DEFAULT_MINUTES: i64 = 60;

/// Reads a named parameter of a Parameters resource.
fn parameter<'a>(parameters: &'a Value, name: &str) -> Option<&'a Value> {
    parameters
        .get("parameter")?
        .as_array()?
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
}

impl Engine {
    /// Grants break-the-glass access to `patient_id` for the calling user.
    /// The body is a Parameters resource with `reason` (valueString,
    /// required) and `minutes` (valueInteger, optional, capped by the
    /// policy).
    ///
    /// The grant is recorded in the audit log (purpose of use `BTG`) before
    /// it is stored. Returns the OperationOutcome and the granted minutes.
    pub fn break_the_glass(
        &self,
        principal: &Principal,
        actor: &Actor,
        patient_id: &str,
        body: &Value,
    ) -> FhirResult<(Value, i64)> {
        let role = principal
            .role
            .as_deref()
            .and_then(Role::parse)
            .ok_or_else(|| {
                FhirError::forbidden("break-the-glass is for signed-in users with a clinical role")
            })?;
        if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
            return Err(FhirError::invalid_at(
                IssueType::Invalid,
                "the body must be a Parameters resource with a reason",
                "Parameters",
            ));
        }
        let reason = parameter(body, "reason")
            .and_then(|p| p.get("valueString"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let minutes = parameter(body, "minutes")
            .and_then(|p| p.get("valueInteger"))
            .and_then(Value::as_i64)
            .unwrap_or(DEFAULT_MINUTES);
        if minutes <= 0 {
            return Err(FhirError::invalid_at(
                IssueType::Value,
                "minutes must be a positive integer",
                "Parameters.parameter.valueInteger",
            ));
        }
        // The patient must exist; the grant itself is what makes it visible.
        self.store.read("Patient", patient_id)?;
        let now = OffsetDateTime::now_utc();
        let grant = self
            .access
            .policy()
            .grant_break_glass(
                role,
                &principal.subject,
                patient_id,
                reason,
                now,
                time::Duration::minutes(minutes),
            )
            .map_err(|e| {
                FhirError::new(StatusCode::FORBIDDEN, IssueType::Forbidden, e.to_string())
            })?;
        let mut stored: StoredGrants =
            match self.store.kv_get(BREAK_GLASS_NS, &principal.subject)? {
                Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
                None => StoredGrants::default(),
            };
        stored.grants.retain(|g| g.expires > now);
        let expires = grant.expires;
        stored.grants.push(grant);
        let bytes = serde_json::to_vec(&stored).map_err(|e| FhirError::internal(&e))?;
        let record = self.auditor.break_the_glass(actor, patient_id, minutes);
        self.auditor.commit_blocking(&*self.store, record)?;
        self.store
            .kv_put(BREAK_GLASS_NS, &principal.subject, &bytes, None)?;
        let expires_text = expires
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut outcome = OperationOutcome::single(OutcomeIssue::information(format!(
            "break-the-glass access to Patient/{patient_id} granted until {expires_text}; it is recorded for review"
        )))
        .to_json();
        outcome["issue"][0]["details"] = json!({ "text": "BTG" });
        Ok((outcome, minutes))
    }
}
