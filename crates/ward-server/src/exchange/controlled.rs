//! The prescriber's second factor for controlled-substance prescriptions.
//!
//! A MedicationRequest in a message is controlled when it, or the
//! Medication it references, carries the [`SCHEDULE_EXTENSION`] with a
//! United States DEA schedule (`II` to `V`), or when its medication (its
//! code, or an ingredient of the Medication) has an RxNorm code from
//! [`SCHEDULED_RXNORM`], under the RxNorm URI or OID. A `medicationReference`
//! is resolved in the Bundle following FHIR R4 (a version-specific reference
//! loses its `/_history/VERSION`), and one that names no Medication of the
//! message is rejected. `$send-message` then needs a
//! fresh TOTP code of the signed-in prescriber in the [`TOTP_HEADER`]
//! header. Each code works once, sign-ins included, and wrong codes count
//! towards the account's sign-in lock.
//!
//! For each controlled MedicationRequest the server adds a Provenance entry
//! to the message. It records the SHA-256 digest of the MedicationRequest
//! and the time of the check, so the receiver, which files the Provenance,
//! can show who confirmed which prescription content and when. The JWS
//! signature of the outbox covers the whole Bundle, Provenance included.
//!
//! The receiver recomputes the digest of each controlled MedicationRequest
//! it is sent ([`verify_received`]) and rejects a message whose
//! Provenance is missing or records another digest, so a prescription
//! changed after the prescriber's confirmation is not filed.

use aws_lc_rs::digest;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use ward_audit::record::Outcome;
use ward_auth::throttle::{Decision, Throttle, ThrottleState};
use ward_auth::totp::{self, TotpError, TotpSecret};
use ward_exchange::message;
use ward_fhir::IssueType;
use ward_fhir::outcome::{OperationOutcome, OutcomeIssue};
use ward_store::Store;

use super::audit_exchange;
use crate::AppState;
use crate::audit::Actor;
use crate::auth::Principal;
use crate::error::FhirError;
use crate::oauth::identity::{self, NS_THROTTLE_ACCOUNT, NS_TOTP_STEP, micros};

/// The request header that carries the prescriber's current TOTP code.
pub const TOTP_HEADER: &str = "ward-totp";

/// The extension on a MedicationRequest or Medication whose `valueCode`
/// is the DEA schedule: `II`, `III`, `IV` or `V`.
pub const SCHEDULE_EXTENSION: &str = "urn:ward:extension:controlled-substance-schedule";

/// The extension on the added Provenance with the digest of the
/// MedicationRequest (`digest`, `sha256:` and lower-case hex), the DEA
/// schedule (`schedule`) and the method of the second factor (`method`).
pub const SECOND_FACTOR_EXTENSION: &str = "urn:ward:extension:prescriber-second-factor";

/// The Provenance policy that names this check.
pub const SECOND_FACTOR_POLICY: &str = "urn:ward:policy:controlled-substance-second-factor";

/// The RxNorm code system URI.
pub const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";

/// RxNorm ingredient codes (RXCUI) of common scheduled drugs, with their
/// DEA schedule (21 CFR 1308.12 to 1308.15).
///
/// The ten opioid codes and names match the CDC MME conversion factor
/// CodeSystem (`CDCMMEClinicalConversionFactors` 3.0.0 of the HL7/CDC
/// Opioid MME implementation guide, which supplements RxNorm). The other
/// codes were checked against RxNorm names from secondary sources only.
///
/// NOTE: the list contains ingredient codes only. A prescription coded by a
/// clinical drug code (SCD or SBD) alone is recognized only when it also
/// carries the [`SCHEDULE_EXTENSION`], or when its Medication lists the
/// ingredient code in `Medication.ingredient`.
pub const SCHEDULED_RXNORM: &[(&str, Schedule)] = &[
    ("2670", Schedule::II),   // codeine (single-entity; combinations are III or V)
    ("4337", Schedule::II),   // fentanyl
    ("5489", Schedule::II),   // hydrocodone
    ("3423", Schedule::II),   // hydromorphone
    ("6813", Schedule::II),   // methadone
    ("7052", Schedule::II),   // morphine
    ("7804", Schedule::II),   // oxycodone
    ("7814", Schedule::II),   // oxymorphone
    ("787390", Schedule::II), // tapentadol
    ("10689", Schedule::IV),  // tramadol
    ("725", Schedule::II),    // amphetamine
    ("6901", Schedule::II),   // methylphenidate
    ("1819", Schedule::III),  // buprenorphine
    ("6130", Schedule::III),  // ketamine
    ("10379", Schedule::III), // testosterone
    ("596", Schedule::IV),    // alprazolam
    ("3322", Schedule::IV),   // diazepam
    ("6470", Schedule::IV),   // lorazepam
    ("2598", Schedule::IV),   // clonazepam
    ("39993", Schedule::IV),  // zolpidem
    ("8134", Schedule::IV),   // phenobarbital
    ("187832", Schedule::V),  // pregabalin
];

/// A DEA controlled-substance schedule for which prescriptions exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Schedule II.
    II,
    /// Schedule III.
    III,
    /// Schedule IV.
    IV,
    /// Schedule V.
    V,
}

impl Schedule {
    /// Returns the schedule as its Roman numeral.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::II => "II",
            Self::III => "III",
            Self::IV => "IV",
            Self::V => "V",
        }
    }

    /// Parses `II`, `III`, `IV` or `V`, with or without a leading `C`.
    pub fn parse(text: &str) -> Option<Self> {
        let numeral = text.strip_prefix('C').unwrap_or(text);
        match numeral {
            "II" => Some(Self::II),
            "III" => Some(Self::III),
            "IV" => Some(Self::IV),
            "V" => Some(Self::V),
            _ => None,
        }
    }
}

/// A controlled MedicationRequest found in a message Bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlledRequest {
    /// The index of its entry in `Bundle.entry`.
    pub entry: usize,
    /// Its DEA schedule.
    pub schedule: Schedule,
}

/// Finds the controlled MedicationRequests of a message Bundle.
///
/// # Errors
///
/// A message and FHIRPath when a schedule extension has a value other than
/// `II`, `III`, `IV` or `V`.
pub fn find_controlled(bundle: &Value) -> Result<Vec<ControlledRequest>, (String, String)> {
    let mut found = Vec::new();
    let Some(entries) = bundle.get("entry").and_then(Value::as_array) else {
        return Ok(found);
    };
    for (index, entry) in entries.iter().enumerate() {
        let Some(resource) = entry.get("resource") else {
            continue;
        };
        if resource.get("resourceType").and_then(Value::as_str) != Some("MedicationRequest") {
            continue;
        }
        let path = format!("Bundle.entry[{index}].resource");
        if let Some(schedule) = schedule_of(resource, entries, &path)? {
            found.push(ControlledRequest {
                entry: index,
                schedule,
            });
        }
    }
    Ok(found)
}

/// Returns the schedule of a MedicationRequest from its own extension, its
/// `medicationCodeableConcept`, or the Medication its `medicationReference`
/// names (contained, or another entry of the Bundle). A reference is
/// resolved as FHIR R4 does in a Bundle: a version-specific reference
/// loses its `/_history/VERSION`, and absolute and relative forms match the
/// entry's `fullUrl` (see [`message::BundleIndex`]).
fn schedule_of(
    request: &Value,
    entries: &[Value],
    path: &str,
) -> Result<Option<Schedule>, (String, String)> {
    if let Some(schedule) = extension_schedule(request, path)? {
        return Ok(Some(schedule));
    }
    if let Some(concept) = request.get("medicationCodeableConcept") {
        return Ok(rxnorm_schedule(concept));
    }
    let Some(reference) = request
        .pointer("/medicationReference/reference")
        .and_then(Value::as_str)
    else {
        return Ok(None);
    };
    let index = message::BundleIndex::new(entries);
    let (medication, medication_path) = if let Some(local) = reference.strip_prefix('#') {
        let contained = request
            .get("contained")
            .and_then(Value::as_array)
            .and_then(|items| {
                items
                    .iter()
                    .position(|item| item.get("id").and_then(Value::as_str) == Some(local))
                    .map(|position| (&items[position], position))
            });
        match contained {
            Some((medication, position)) => (medication, format!("{path}.contained[{position}]")),
            None => return Err(unresolved_medication(path)),
        }
    } else {
        let target = index
            .resolve(reference)
            .and_then(|position| Some((entries[position].get("resource")?, position)));
        match target {
            Some((medication, position)) => {
                (medication, format!("Bundle.entry[{position}].resource"))
            }
            // Fail closed: a Medication the check cannot see could be
            // controlled.
            None => return Err(unresolved_medication(path)),
        }
    };
    if let Some(schedule) = extension_schedule(medication, &medication_path)? {
        return Ok(Some(schedule));
    }
    if let Some(schedule) = medication.get("code").and_then(rxnorm_schedule) {
        return Ok(Some(schedule));
    }
    Ok(ingredient_schedule(medication, &index, entries))
}

/// Builds the error of a `medicationReference` that names no Medication of
/// the message, for the MedicationRequest at `path`.
fn unresolved_medication(path: &str) -> (String, String) {
    (
        "the medicationReference does not resolve to a Medication of the message Bundle; \
         add the Medication as an entry (or contained resource) and reference its fullUrl"
            .to_owned(),
        format!("{path}.medicationReference.reference"),
    )
}

/// Returns the schedule of the first ingredient of a Medication with a
/// listed code: an `itemCodeableConcept` with a listed RxNorm code, or an
/// `itemReference` to an entry (Substance or Medication) whose `code` has
/// one.
fn ingredient_schedule(
    medication: &Value,
    index: &message::BundleIndex,
    entries: &[Value],
) -> Option<Schedule> {
    medication
        .get("ingredient")
        .and_then(Value::as_array)?
        .iter()
        .find_map(|ingredient| {
            if let Some(concept) = ingredient.get("itemCodeableConcept") {
                return rxnorm_schedule(concept);
            }
            let reference = ingredient
                .pointer("/itemReference/reference")
                .and_then(Value::as_str)?;
            let item = if let Some(local) = reference.strip_prefix('#') {
                medication
                    .get("contained")
                    .and_then(Value::as_array)?
                    .iter()
                    .find(|item| item.get("id").and_then(Value::as_str) == Some(local))?
            } else {
                entries.get(index.resolve(reference)?)?.get("resource")?
            };
            item.get("code").and_then(rxnorm_schedule)
        })
}

/// Reads the [`SCHEDULE_EXTENSION`] of a resource.
fn extension_schedule(resource: &Value, path: &str) -> Result<Option<Schedule>, (String, String)> {
    let Some(extensions) = resource.get("extension").and_then(Value::as_array) else {
        return Ok(None);
    };
    for (index, extension) in extensions.iter().enumerate() {
        if extension.get("url").and_then(Value::as_str) != Some(SCHEDULE_EXTENSION) {
            continue;
        }
        let value = extension
            .get("valueCode")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return match Schedule::parse(value) {
            Some(schedule) => Ok(Some(schedule)),
            None => Err((
                format!(
                    "invalid DEA schedule '{value}' in the controlled-substance extension; use II, III, IV or V"
                ),
                format!("{path}.extension[{index}].valueCode"),
            )),
        };
    }
    Ok(None)
}

/// The OID of RxNorm, which some systems send as `urn:oid:` instead of
/// [`RXNORM`].
pub const RXNORM_OID: &str = "urn:oid:2.16.840.1.113883.6.88";

/// Returns whether `system` names RxNorm: its URI (with or without a
/// trailing slash) or its OID.
fn is_rxnorm(system: &str) -> bool {
    system.trim_end_matches('/') == RXNORM || system == RXNORM_OID
}

/// Looks up the RxNorm codings of a CodeableConcept in [`SCHEDULED_RXNORM`].
fn rxnorm_schedule(concept: &Value) -> Option<Schedule> {
    concept
        .get("coding")
        .and_then(Value::as_array)?
        .iter()
        .filter(|coding| {
            coding
                .get("system")
                .and_then(Value::as_str)
                .is_some_and(is_rxnorm)
        })
        .filter_map(|coding| coding.get("code").and_then(Value::as_str))
        .find_map(|code| {
            SCHEDULED_RXNORM
                .iter()
                .find(|(listed, _)| *listed == code)
                .map(|(_, schedule)| *schedule)
        })
}

/// Computes the SHA-256 digest of a resource, as `sha256:` and lower-case
/// hex. The input is the JSON with object keys sorted by their UTF-8 bytes
/// and no whitespace, so a receiver gets the same digest from a
/// re-serialized copy.
pub fn content_digest(resource: &Value) -> String {
    let canonical = serde_json::to_vec(&sorted_keys(resource)).unwrap_or_default();
    let hash = digest::digest(&digest::SHA256, &canonical);
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Copies a JSON value with the keys of every object in sorted order.
fn sorted_keys(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            let mut sorted = Map::with_capacity(map.len());
            for key in keys {
                sorted.insert(key.clone(), sorted_keys(&map[key]));
            }
            Value::Object(sorted)
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted_keys).collect()),
        other => other.clone(),
    }
}

/// Checks a received message: each controlled MedicationRequest must be
/// the `target` of a Provenance in the same Bundle whose
/// [`SECOND_FACTOR_EXTENSION`] records the digest that [`content_digest`]
/// computes over the MedicationRequest as received.
///
/// # Errors
///
/// 422 with an OperationOutcome (code `security`) that names the entry,
/// when the Provenance is missing or its digest does not match, and 400 for
/// an invalid schedule extension.
pub fn verify_received(bundle: &Value) -> Result<(), FhirError> {
    let controlled = find_controlled(bundle)
        .map_err(|(text, path)| FhirError::invalid_at(IssueType::Value, text, &path))?;
    let entries = bundle
        .get("entry")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let index = message::BundleIndex::new(entries);
    for request in controlled {
        let path = format!("Bundle.entry[{}].resource", request.entry);
        let entry = &entries[request.entry];
        let recorded = recorded_digests(entries, &index, request.entry);
        let reason = if recorded.is_empty() {
            "the controlled-substance prescription has no Provenance with the prescriber's second factor; the sending server must add it"
        } else if !recorded.contains(&content_digest(&entry["resource"])) {
            "the controlled-substance prescription does not match the digest its Provenance records: it was changed after the prescriber confirmed it"
        } else {
            continue;
        };
        let issue = OutcomeIssue::error(IssueType::Security, reason).at(path);
        return Err(FhirError::with_outcome(
            StatusCode::UNPROCESSABLE_ENTITY,
            OperationOutcome::single(issue),
        ));
    }
    Ok(())
}

/// Returns the digests that the second-factor Provenances of the Bundle
/// record for the entry at `position`, their `target` resolved as
/// [`message::BundleIndex`] does.
fn recorded_digests(
    entries: &[Value],
    index: &message::BundleIndex,
    position: usize,
) -> Vec<String> {
    entries
        .iter()
        .filter_map(|entry| entry.get("resource"))
        .filter(|resource| {
            resource.get("resourceType").and_then(Value::as_str) == Some("Provenance")
        })
        .filter(|provenance| {
            provenance
                .get("target")
                .and_then(Value::as_array)
                .is_some_and(|targets| {
                    targets.iter().any(|target| {
                        target
                            .get("reference")
                            .and_then(Value::as_str)
                            .and_then(|reference| index.resolve(reference))
                            == Some(position)
                    })
                })
        })
        .filter_map(|provenance| provenance.get("extension").and_then(Value::as_array))
        .flatten()
        .filter(|extension| {
            extension.get("url").and_then(Value::as_str) == Some(SECOND_FACTOR_EXTENSION)
        })
        .filter_map(|extension| extension.get("extension").and_then(Value::as_array))
        .flatten()
        .filter(|part| part.get("url").and_then(Value::as_str) == Some("digest"))
        .filter_map(|part| part.get("valueString").and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

/// The reason a second factor was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejection {
    /// The header is missing.
    Missing,
    /// The token's subject is no enrolled, active user.
    NotEnrolled,
    /// The account is locked after wrong codes.
    Locked,
    /// The code is wrong or malformed.
    Invalid,
    /// The code's time step was already used.
    Reused,
}

impl Rejection {
    fn code(self) -> &'static str {
        match self {
            Self::Missing => "second_factor_missing",
            Self::NotEnrolled => "second_factor_not_enrolled",
            Self::Locked => "second_factor_locked",
            Self::Invalid => "second_factor_invalid",
            Self::Reused => "second_factor_reused",
        }
    }

    fn message(self) -> String {
        match self {
            Self::Missing => format!(
                "a controlled-substance prescription needs the prescriber's current TOTP code in the {TOTP_HEADER} header"
            ),
            Self::NotEnrolled => "the token's subject is not an active user with a TOTP second factor; sign in as the prescriber".to_owned(),
            Self::Locked => "too many wrong codes: the account is locked for a while; try again later".to_owned(),
            Self::Invalid => format!("the TOTP code in the {TOTP_HEADER} header is invalid; send the code the authenticator shows now"),
            Self::Reused => format!("the TOTP code in the {TOTP_HEADER} header was already used; wait for the next code"),
        }
    }
}

/// The prescriber as confirmed by the second factor.
struct Confirmed {
    /// The user's FHIR resource or, without one, the user name.
    display: String,
    /// The time of the check.
    at: OffsetDateTime,
}

/// Requires the prescriber's second factor when `bundle` contains a
/// controlled MedicationRequest, and adds one Provenance entry per
/// controlled MedicationRequest. Leaves other messages unchanged.
///
/// # Errors
///
/// 400 for an invalid schedule extension, 403 when the code is missing,
/// wrong or reused or the account is locked. Every rejection is audited.
pub(super) async fn require_second_factor(
    state: &AppState,
    principal: &Principal,
    actor: &Actor,
    headers: &HeaderMap,
    bundle: &mut Value,
) -> Result<(), FhirError> {
    let controlled = find_controlled(bundle)
        .map_err(|(text, path)| FhirError::invalid_at(IssueType::Value, text, &path))?;
    let Some(first) = controlled.first() else {
        return Ok(());
    };
    let path = format!("Bundle.entry[{}].resource", first.entry);
    let schedules: Vec<&str> = controlled.iter().map(|c| c.schedule.as_str()).collect();
    let schedules = schedules.join(",");

    let code = headers
        .get(TOTP_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(|value| zeroize::Zeroizing::new(value.trim().to_owned()));
    let checked = match code {
        None => Err(Rejection::Missing),
        Some(code) => {
            let store = state.engine.store.clone();
            let user_id = principal.subject.clone();
            tokio::task::spawn_blocking(move || check_code(&*store, &user_id, &code))
                .await
                .map_err(|error| FhirError::internal(&error))?
        }
    };
    let confirmed = match checked {
        Ok(confirmed) => confirmed,
        Err(rejection) => {
            audit_exchange(
                state,
                actor,
                "second_factor_rejected",
                Outcome::MinorFailure,
                Some(&rejection.message()),
                &[("reason", rejection.code()), ("schedules", &schedules)],
            )
            .await;
            tracing::warn!(target: "ward::exchange", reason = rejection.code(), "rejected a controlled-substance prescription");
            let issue = OutcomeIssue::error(IssueType::Security, rejection.message()).at(path);
            return Err(FhirError::with_outcome(
                StatusCode::FORBIDDEN,
                OperationOutcome::single(issue),
            ));
        }
    };

    let digests = add_provenance(bundle, &controlled, &confirmed)?;
    audit_exchange(
        state,
        actor,
        "second_factor_verified",
        Outcome::Success,
        None,
        &[
            ("method", "totp"),
            ("schedules", &schedules),
            ("digests", &digests.join(",")),
        ],
    )
    .await;
    Ok(())
}

/// Checks a TOTP code of user `user_id` and marks its time step used.
fn check_code(store: &dyn Store, user_id: &str, code: &str) -> Result<Confirmed, Rejection> {
    let Some(mut user) = identity::load_user(store, user_id)
        .ok()
        .flatten()
        .filter(|user| !user.disabled)
    else {
        return Err(Rejection::NotEnrolled);
    };
    let Ok(secret) = TotpSecret::from_base32(&user.totp_secret) else {
        return Err(Rejection::NotEnrolled);
    };

    let now = OffsetDateTime::now_utc();
    let throttle = Throttle::account();
    let account_key = identity::username_key(store, &user.username);
    let throttle_state: ThrottleState = identity::read(store, NS_THROTTLE_ACCOUNT, &account_key)
        .ok()
        .flatten()
        .unwrap_or_default();
    if !matches!(throttle.check(&throttle_state, now), Decision::Allow) {
        return Err(Rejection::Locked);
    }

    let outcome = match totp::verify(&secret, code, now, user.totp_last_step) {
        Ok(step) => {
            // The insert is atomic, so of two concurrent requests with one
            // code only the first passes. Sign-ins use the same records.
            let expires = micros(now + time::Duration::minutes(5));
            let fresh = store
                .kv_insert_new(
                    NS_TOTP_STEP,
                    &format!("{}.{step}", user.id),
                    b"1",
                    Some(expires),
                )
                .unwrap_or(false);
            user.totp_last_step = Some(step);
            if fresh && identity::save_user(store, &user).is_ok() {
                Ok(step)
            } else {
                Err(Rejection::Reused)
            }
        }
        Err(TotpError::Reused) => Err(Rejection::Reused),
        Err(_) => Err(Rejection::Invalid),
    };

    let next_state = match outcome {
        Ok(_) => throttle.record_success(&throttle_state),
        Err(_) => throttle.record_failure(&throttle_state, now),
    };
    let expires = micros(now + time::Duration::hours(25));
    if let Err(error) = identity::write(
        store,
        NS_THROTTLE_ACCOUNT,
        &account_key,
        &next_state,
        Some(expires),
    ) {
        tracing::error!(target: "ward::exchange", %error, "storing a sign-in throttle state failed");
    }
    outcome.map(|_| Confirmed {
        display: user
            .fhir_user
            .clone()
            .unwrap_or_else(|| user.username.clone()),
        at: now,
    })
}

/// Appends a Provenance entry for each controlled MedicationRequest and
/// returns their digests.
fn add_provenance(
    bundle: &mut Value,
    controlled: &[ControlledRequest],
    confirmed: &Confirmed,
) -> Result<Vec<String>, FhirError> {
    let recorded = confirmed
        .at
        .format(&Rfc3339)
        .map_err(|error| FhirError::internal(&error))?;
    let mut digests = Vec::new();
    let mut provenances = Vec::new();
    for request in controlled {
        let entry = &mut bundle["entry"][request.entry];
        let target = match entry.get("fullUrl").and_then(Value::as_str) {
            Some(full_url) => full_url.to_owned(),
            None => {
                let full_url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
                entry["fullUrl"] = json!(full_url);
                full_url
            }
        };
        let digest = content_digest(&entry["resource"]);
        provenances.push(json!({
            "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            "resource": {
                "resourceType": "Provenance",
                "extension": [{
                    "url": SECOND_FACTOR_EXTENSION,
                    "extension": [
                        { "url": "digest", "valueString": digest },
                        { "url": "schedule", "valueCode": request.schedule.as_str() },
                        { "url": "method", "valueCode": "totp" }
                    ]
                }],
                "target": [{ "reference": target }],
                "recorded": recorded,
                "policy": [SECOND_FACTOR_POLICY],
                "agent": [{
                    "type": { "coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                        "code": "author"
                    }] },
                    "who": { "display": confirmed.display }
                }]
            }
        }));
        digests.push(digest);
    }
    if let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) {
        entries.extend(provenances);
    }
    ward_fhir::validate::validate_resource(bundle)
        .map_err(|outcome| FhirError::with_outcome(StatusCode::INTERNAL_SERVER_ERROR, outcome))?;
    Ok(digests)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(request: Value) -> Value {
        json!({
            "resourceType": "Bundle",
            "type": "message",
            "entry": [
                { "fullUrl": "urn:uuid:1", "resource": { "resourceType": "MessageHeader" } },
                { "fullUrl": "urn:uuid:2", "resource": request }
            ]
        })
    }

    #[test]
    fn rxnorm_ingredient_is_controlled() {
        let bundle = message(json!({
            "resourceType": "MedicationRequest",
            "medicationCodeableConcept": { "coding": [{ "system": RXNORM, "code": "7804" }] }
        }));
        let found = find_controlled(&bundle).expect("valid");
        assert_eq!(
            found,
            vec![ControlledRequest {
                entry: 1,
                schedule: Schedule::II
            }]
        );
    }

    #[test]
    fn unlisted_code_is_not_controlled() {
        let bundle = message(json!({
            "resourceType": "MedicationRequest",
            "medicationCodeableConcept": { "coding": [{ "system": RXNORM, "code": "1191" }] }
        }));
        assert!(find_controlled(&bundle).expect("valid").is_empty());
        let other_system = message(json!({
            "resourceType": "MedicationRequest",
            "medicationCodeableConcept": { "coding": [{ "system": "urn:other", "code": "7804" }] }
        }));
        assert!(find_controlled(&other_system).expect("valid").is_empty());
    }

    #[test]
    fn extension_sets_schedule() {
        let bundle = message(json!({
            "resourceType": "MedicationRequest",
            "extension": [{ "url": SCHEDULE_EXTENSION, "valueCode": "CIV" }],
            "medicationCodeableConcept": { "text": "Some sleeping pill" }
        }));
        let found = find_controlled(&bundle).expect("valid");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].schedule, Schedule::IV);
    }

    #[test]
    fn invalid_extension_value_is_rejected() {
        let bundle = message(json!({
            "resourceType": "MedicationRequest",
            "extension": [{ "url": SCHEDULE_EXTENSION, "valueCode": "I" }]
        }));
        let (text, path) = find_controlled(&bundle).expect_err("schedule I");
        assert!(text.contains("'I'"), "{text}");
        assert_eq!(path, "Bundle.entry[1].resource.extension[0].valueCode");
    }

    #[test]
    fn referenced_medication_is_checked() {
        let mut bundle = message(json!({
            "resourceType": "MedicationRequest",
            "medicationReference": { "reference": "urn:uuid:3" }
        }));
        bundle["entry"]
            .as_array_mut()
            .expect("entries")
            .push(json!({
                "fullUrl": "urn:uuid:3",
                "resource": {
                    "resourceType": "Medication",
                    "code": { "coding": [{ "system": RXNORM, "code": "187832" }] }
                }
            }));
        let found = find_controlled(&bundle).expect("valid");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].schedule, Schedule::V);

        let contained = message(json!({
            "resourceType": "MedicationRequest",
            "contained": [{
                "resourceType": "Medication",
                "id": "med",
                "extension": [{ "url": SCHEDULE_EXTENSION, "valueCode": "III" }]
            }],
            "medicationReference": { "reference": "#med" }
        }));
        let found = find_controlled(&contained).expect("valid");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].schedule, Schedule::III);
    }

    #[test]
    fn received_digest_is_checked() {
        let request = json!({
            "resourceType": "MedicationRequest",
            "medicationCodeableConcept": { "coding": [{ "system": RXNORM, "code": "7804" }] },
            "dosageInstruction": [{ "text": "1 tablet every 6 hours" }]
        });
        let mut bundle = message(request.clone());
        let mut unsigned = bundle.clone();
        let provenance = json!({
            "fullUrl": "urn:uuid:3",
            "resource": {
                "resourceType": "Provenance",
                "extension": [{
                    "url": SECOND_FACTOR_EXTENSION,
                    "extension": [
                        { "url": "digest", "valueString": content_digest(&request) },
                        { "url": "schedule", "valueCode": "II" }
                    ]
                }],
                "target": [{ "reference": "urn:uuid:2" }]
            }
        });
        bundle["entry"]
            .as_array_mut()
            .expect("entries")
            .push(provenance);
        verify_received(&bundle).expect("unchanged prescription passes");

        // Changed after the confirmation.
        let mut changed = bundle.clone();
        changed["entry"][1]["resource"]["dosageInstruction"][0]["text"] =
            json!("4 tablets every 6 hours");
        let error = verify_received(&changed).expect_err("changed dose");
        assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY);
        let text = error.outcome.issues[0].diagnostics.clone();
        assert!(text.contains("does not match the digest"), "{text}");

        // No Provenance at all, or one for another target.
        let error = verify_received(&unsigned).expect_err("no provenance");
        assert!(
            error.outcome.issues[0]
                .diagnostics
                .contains("no Provenance")
        );
        let provenance = bundle["entry"][2].clone();
        let mut elsewhere = provenance.clone();
        elsewhere["resource"]["target"][0]["reference"] = json!("urn:uuid:other");
        unsigned["entry"]
            .as_array_mut()
            .expect("entries")
            .push(elsewhere);
        assert!(verify_received(&unsigned).is_err());

        // A message without controlled requests needs nothing.
        let plain = message(json!({
            "resourceType": "MedicationRequest",
            "medicationCodeableConcept": { "text": "amoxicillin" }
        }));
        verify_received(&plain).expect("not controlled");
    }

    #[test]
    fn digest_ignores_key_order() {
        let one: Value = serde_json::from_str(r#"{"a":1,"b":{"c":"x","d":[1,2]}}"#).expect("json");
        let two: Value = serde_json::from_str(r#"{"b":{"d":[1,2],"c":"x"},"a":1}"#).expect("json");
        let three: Value =
            serde_json::from_str(r#"{"b":{"d":[2,1],"c":"x"},"a":1}"#).expect("json");
        assert_eq!(content_digest(&one), content_digest(&two));
        assert_ne!(content_digest(&one), content_digest(&three));
        assert!(content_digest(&one).starts_with("sha256:"));
        assert_eq!(content_digest(&one).len(), "sha256:".len() + 64);
    }

    fn with_medication(reference: &str, medication: Value) -> Value {
        let mut bundle = message(json!({
            "resourceType": "MedicationRequest",
            "medicationReference": { "reference": reference }
        }));
        bundle["entry"]
            .as_array_mut()
            .expect("entries")
            .push(json!({
                "fullUrl": "https://a.example/fhir/Medication/oxy",
                "resource": medication
            }));
        bundle
    }

    #[test]
    fn versioned_and_absolute_medication_references_are_checked() {
        let scheduled = json!({
            "resourceType": "Medication", "id": "oxy",
            "extension": [{ "url": SCHEDULE_EXTENSION, "valueCode": "II" }]
        });
        for reference in [
            "Medication/oxy",
            "Medication/oxy/_history/1",
            "https://a.example/fhir/Medication/oxy",
            "https://a.example/fhir/Medication/oxy/_history/1",
        ] {
            let found = find_controlled(&with_medication(reference, scheduled.clone()))
                .unwrap_or_else(|error| panic!("{reference}: {error:?}"));
            assert_eq!(found.len(), 1, "{reference}");
            assert_eq!(found[0].schedule, Schedule::II, "{reference}");
        }
        // A reference the Bundle does not contain cannot be checked, so it is rejected.
        let (_, path) = find_controlled(&with_medication(
            "https://elsewhere.example/fhir/Medication/oxy",
            scheduled,
        ))
        .expect_err("unresolved medication");
        assert_eq!(
            path,
            "Bundle.entry[1].resource.medicationReference.reference"
        );
    }

    #[test]
    fn rxnorm_oid_and_ingredients_are_controlled() {
        let bundle = message(json!({
            "resourceType": "MedicationRequest",
            "medicationCodeableConcept": { "coding": [{ "system": RXNORM_OID, "code": "7804" }] }
        }));
        assert_eq!(find_controlled(&bundle).expect("valid").len(), 1);

        let clinical_drug = json!({
            "resourceType": "Medication", "id": "oxy",
            "code": { "coding": [{ "system": RXNORM, "code": "1049621" }] },
            "ingredient": [{
                "itemCodeableConcept": { "coding": [{ "system": RXNORM, "code": "7804" }] }
            }]
        });
        let found =
            find_controlled(&with_medication("Medication/oxy", clinical_drug)).expect("valid");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].schedule, Schedule::II);

        let harmless = json!({
            "resourceType": "Medication", "id": "oxy",
            "ingredient": [{
                "itemCodeableConcept": { "coding": [{ "system": RXNORM, "code": "1191" }] }
            }]
        });
        assert!(
            find_controlled(&with_medication("Medication/oxy", harmless))
                .expect("valid")
                .is_empty()
        );
    }
}
