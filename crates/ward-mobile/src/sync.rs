//! Delta sync of the care-team panel into the encrypted store.
//!
//! The patient list is the user's care team (`CareTeam?participant=` the
//! user's `fhirUser`, plus `Patient?general-practitioner=`). A patient
//! seen for the first time gets its compartment pulled with one search per
//! resource type in [`CHART_TYPES`]. Later syncs read only the history of
//! those types since the cursor (`TYPE/_history?_since=`), keep entries of the
//! panel's patients and apply deletions. Every response body is counted,
//! so a sync reports the bytes and resources it transferred.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{MobileError, MobileResult};
use crate::http::Transport;
use crate::store::{Store, kind};

/// Resource types cached for each patient, with the search parameter
/// that links them to the patient.
pub const CHART_TYPES: &[(&str, &str)] = &[
    ("AllergyIntolerance", "patient"),
    ("Condition", "patient"),
    ("Observation", "patient"),
    ("MedicationRequest", "patient"),
    ("Immunization", "patient"),
    ("Procedure", "patient"),
    ("Encounter", "patient"),
    ("DiagnosticReport", "patient"),
    ("DocumentReference", "patient"),
    ("CarePlan", "patient"),
];

/// Largest page the server returns.
const PAGE_SIZE: u32 = 1000;
/// Patients named in one search (`patient=a,b,c`).
const PATIENTS_PER_SEARCH: usize = 20;

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// True when this sync pulled whole compartments for every patient.
    pub full: bool,
    /// Patients on the panel after the sync.
    pub patients: u32,
    /// Patients whose compartment was pulled in full.
    pub patients_pulled: u32,
    /// Patients removed from the panel and purged.
    pub patients_removed: u32,
    /// HTTP requests made.
    pub requests: u32,
    /// Response body bytes received.
    pub bytes_received: u64,
    /// Resources (and deletion entries) received.
    pub resources_received: u32,
    /// Cached resources created or changed.
    pub resources_changed: u32,
    /// Cached resources removed because the server deleted them.
    pub resources_deleted: u32,
    /// Drafts sent to the server.
    pub drafts_sent: u32,
    /// Drafts that met a newer version on the server (kept, not sent).
    pub conflicts: u32,
    /// Wall time of the sync in milliseconds.
    pub millis: u64,
}

/// Sync progress kept in the store.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct SyncState {
    /// `_since` value for the next delta, from the server's clock.
    pub(crate) cursor: Option<String>,
    /// Patients on the panel.
    pub(crate) patients: BTreeSet<String>,
}

const STATE_KEY: &str = "state";
const REPORT_KEY: &str = "last-report";

/// Loads the sync state.
pub(crate) fn load_state(store: &Store) -> MobileResult<SyncState> {
    Ok(store.get_json(kind::SYNC, STATE_KEY)?.unwrap_or_default())
}

/// Loads the report of the last sync.
pub(crate) fn last_report(store: &Store) -> MobileResult<Option<SyncReport>> {
    store.get_json(kind::SYNC, REPORT_KEY)
}

/// Saves the report of the last sync.
pub(crate) fn save_report(store: &Store, report: &SyncReport) -> MobileResult<()> {
    store.put_json(kind::SYNC, REPORT_KEY, None, report)
}

/// One pull: the transport, the token and the running report.
pub(crate) struct Puller<'a> {
    pub(crate) transport: &'a Transport,
    pub(crate) token: &'a str,
    pub(crate) report: SyncReport,
    /// The server's `Date` of the first response, for the next cursor.
    server_date: Option<String>,
}

impl<'a> Puller<'a> {
    pub(crate) fn new(transport: &'a Transport, token: &'a str) -> Self {
        Puller {
            transport,
            token,
            report: SyncReport::default(),
            server_date: None,
        }
    }

    /// GETs `path` as FHIR JSON, counting the request and its bytes.
    fn get(&mut self, path: &str, operation: &str) -> MobileResult<Value> {
        let builder = self
            .transport
            .request(Method::GET, path)
            .header("accept", "application/fhir+json")
            .bearer_auth(self.token);
        let reply = self.transport.send(builder, operation)?;
        self.report.requests += 1;
        self.report.bytes_received += reply.body.len() as u64;
        if self.server_date.is_none() {
            self.server_date = http_date_to_instant(reply.header("date"));
        }
        Ok(reply.check(operation)?.json())
    }

    /// Reads every page of a search or history Bundle and returns its
    /// entries.
    fn all_pages(&mut self, first: &str, operation: &str) -> MobileResult<Vec<Value>> {
        let mut entries = Vec::new();
        let mut next = Some(first.to_owned());
        while let Some(path) = next.take() {
            let mut bundle = self.get(&path, operation)?;
            if let Some(list) = bundle["entry"].as_array_mut() {
                entries.append(list);
            }
            next = bundle["link"].as_array().and_then(|links| {
                links
                    .iter()
                    .find(|l| l["relation"] == "next")
                    .and_then(|l| l["url"].as_str().map(str::to_owned))
            });
        }
        Ok(entries)
    }

    /// The patients on the care team of `fhir_user`.
    pub(crate) fn panel(&mut self, fhir_user: &str) -> MobileResult<BTreeSet<String>> {
        let user = encode(fhir_user);
        let mut patients = BTreeSet::new();
        let teams = match self.all_pages(
            &format!("/fhir/CareTeam?participant={user}&_count={PAGE_SIZE}"),
            "reading the care teams",
        ) {
            Ok(teams) => teams,
            // NOTE: the default policy gives clinical roles no CareTeam
            // search. The server filters a Patient search to the patients
            // the user may see (care team, general practitioner and open
            // break-the-glass grants), so that list stands in.
            Err(MobileError::Forbidden { .. }) => {
                return self.visible_patients();
            }
            Err(error) => return Err(error),
        };
        for entry in teams {
            let team = &entry["resource"];
            if matches!(
                team["status"].as_str(),
                Some("inactive" | "entered-in-error")
            ) {
                continue;
            }
            if let Some(id) = patient_id(&team["subject"]) {
                patients.insert(id);
            }
        }
        let own = self.all_pages(
            &format!("/fhir/Patient?general-practitioner={user}&_count={PAGE_SIZE}&_elements=id"),
            "reading the patients of the user",
        )?;
        for entry in own {
            if let Some(id) = entry["resource"]["id"].as_str() {
                patients.insert(id.to_owned());
            }
        }
        Ok(patients)
    }

    /// Every patient the server lets the user see.
    fn visible_patients(&mut self) -> MobileResult<BTreeSet<String>> {
        let entries = self.all_pages(
            &format!("/fhir/Patient?_count={PAGE_SIZE}&_elements=id"),
            "reading the visible patients",
        )?;
        Ok(entries
            .iter()
            .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
            .collect())
    }

    /// Pulls the whole compartment of `patients` into the store.
    pub(crate) fn pull_compartments(
        &mut self,
        store: &Store,
        patients: &[String],
    ) -> MobileResult<()> {
        for group in patients.chunks(PATIENTS_PER_SEARCH) {
            let ids = group.join(",");
            let mut found = self.all_pages(
                &format!("/fhir/Patient?_id={}&_count={PAGE_SIZE}", encode(&ids)),
                "reading the patients",
            )?;
            let references: Vec<String> = group.iter().map(|id| format!("Patient/{id}")).collect();
            let references = encode(&references.join(","));
            for (resource_type, param) in CHART_TYPES {
                let path = format!("/fhir/{resource_type}?{param}={references}&_count={PAGE_SIZE}");
                found.extend(self.all_pages(&path, "reading a patient's records")?);
            }
            let members: BTreeSet<String> = group.iter().cloned().collect();
            store.transaction(|store| {
                for entry in &found {
                    self.apply_resource(store, &entry["resource"], &members)?;
                }
                Ok(())
            })?;
            self.report.patients_pulled += group.len() as u32;
        }
        Ok(())
    }

    /// Applies every change since `cursor` to the cached patients.
    pub(crate) fn pull_changes(
        &mut self,
        store: &Store,
        cursor: &str,
        patients: &BTreeSet<String>,
    ) -> MobileResult<()> {
        // Type-level history, because roles may read the history of the
        // chart types but not the system-wide history.
        let mut entries = Vec::new();
        let types = std::iter::once("Patient").chain(CHART_TYPES.iter().map(|(t, _)| *t));
        for resource_type in types {
            let path = format!(
                "/fhir/{resource_type}/_history?_since={}&_count={PAGE_SIZE}",
                encode(cursor)
            );
            entries.extend(self.all_pages(&path, "reading the changes")?);
        }
        store.transaction(|store| {
            for entry in &entries {
                if entry["request"]["method"] == "DELETE" {
                    self.apply_deletion(store, entry)?;
                } else {
                    self.apply_resource(store, &entry["resource"], patients)?;
                }
            }
            Ok(())
        })
    }

    /// Caches `resource` when it belongs to one of `patients` and is of a
    /// cached type; counts it when its version is new.
    fn apply_resource(
        &mut self,
        store: &Store,
        resource: &Value,
        patients: &BTreeSet<String>,
    ) -> MobileResult<()> {
        let (Some(resource_type), Some(id)) =
            (resource["resourceType"].as_str(), resource["id"].as_str())
        else {
            return Ok(());
        };
        let cached =
            resource_type == "Patient" || CHART_TYPES.iter().any(|(t, _)| *t == resource_type);
        let Some(patient) = owner_of(resource).filter(|p| patients.contains(p)) else {
            return Ok(());
        };
        if !cached {
            return Ok(());
        }
        self.report.resources_received += 1;
        let key = format!("{resource_type}/{id}");
        let old: Option<Value> = store.get_json(kind::RESOURCE, &key)?;
        let version = |v: &Value| v["meta"]["versionId"].as_str().map(str::to_owned);
        if old.as_ref().and_then(version) == version(resource) && old.is_some() {
            return Ok(());
        }
        store.put_json(kind::RESOURCE, &key, Some(&patient), resource)?;
        self.report.resources_changed += 1;
        Ok(())
    }

    fn apply_deletion(&mut self, store: &Store, entry: &Value) -> MobileResult<()> {
        let Some(url) = entry["request"]["url"].as_str() else {
            return Ok(());
        };
        self.report.resources_received += 1;
        if store.delete(kind::RESOURCE, url)? {
            self.report.resources_deleted += 1;
        }
        Ok(())
    }

    /// The cursor for the next delta: the server's time at the first
    /// response of this sync, so no change made during the sync is missed.
    pub(crate) fn next_cursor(&self) -> Option<String> {
        self.server_date.clone()
    }
}

/// Runs a whole pull: panel, first pulls of new patients, changes since
/// the cursor, removal of patients who left the panel.
pub(crate) fn pull(puller: &mut Puller<'_>, store: &Store, fhir_user: &str) -> MobileResult<()> {
    let started = Instant::now();
    let mut state = load_state(store)?;
    let panel = puller.panel(fhir_user)?;
    let new: Vec<String> = panel.difference(&state.patients).cloned().collect();
    let gone: Vec<String> = state.patients.difference(&panel).cloned().collect();
    let kept: BTreeSet<String> = panel.intersection(&state.patients).cloned().collect();
    puller.report.full = state.cursor.is_none() || kept.is_empty();

    if let Some(cursor) = state.cursor.clone().filter(|_| !kept.is_empty()) {
        puller.pull_changes(store, &cursor, &kept)?;
    }
    puller.pull_compartments(store, &new)?;
    for patient in &gone {
        store.delete_all(kind::RESOURCE, Some(patient))?;
    }
    puller.report.patients_removed = gone.len() as u32;
    puller.report.patients = panel.len() as u32;

    if let Some(cursor) = puller.next_cursor() {
        state.cursor = Some(cursor);
    }
    state.patients = panel;
    store.put_json(kind::SYNC, STATE_KEY, None, &state)?;
    puller.report.millis = started.elapsed().as_millis() as u64;
    Ok(())
}

/// The patient id of a `Patient/ID` reference.
fn patient_id(reference: &Value) -> Option<String> {
    let text = reference["reference"].as_str()?;
    let id = text.rsplit_once("Patient/").map(|(_, id)| id)?;
    (!id.is_empty() && !id.contains('/')).then(|| id.to_owned())
}

/// The patient a cached resource belongs to.
pub(crate) fn owner_of(resource: &Value) -> Option<String> {
    if resource["resourceType"] == "Patient" {
        return resource["id"].as_str().map(str::to_owned);
    }
    patient_id(&resource["subject"]).or_else(|| patient_id(&resource["patient"]))
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Converts an HTTP `Date` header into a FHIR instant, one second early
/// so writes within the header's one-second resolution are not missed.
fn http_date_to_instant(date: &str) -> Option<String> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let parsed = time::PrimitiveDateTime::parse(date, &format).ok()?;
    let instant = parsed.assume_utc() - time::Duration::seconds(1);
    instant
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Groups the cached resources of one patient by type.
pub(crate) fn chart(store: &Store, patient: &str) -> MobileResult<BTreeMap<String, Vec<Value>>> {
    let mut by_type: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for resource in store.list_json::<Value>(kind::RESOURCE, Some(patient))? {
        let resource_type = resource["resourceType"].as_str().unwrap_or("").to_owned();
        by_type.entry(resource_type).or_default().push(resource);
    }
    Ok(by_type)
}

/// Fails with [`MobileError::NotFound`] unless the patient is cached.
pub(crate) fn cached_patient(store: &Store, patient: &str) -> MobileResult<Value> {
    store
        .get_json(kind::RESOURCE, &format!("Patient/{patient}"))?
        .ok_or_else(|| MobileError::NotFound {
            what: format!("Patient/{patient}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn owner_from_subject_or_patient() {
        let obs = json!({"resourceType": "Observation", "subject": {"reference": "Patient/p1"}});
        let allergy =
            json!({"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/p2"}});
        let patient = json!({"resourceType": "Patient", "id": "p3"});
        let other = json!({"resourceType": "Observation", "subject": {"reference": "Group/g"}});
        assert_eq!(owner_of(&obs).as_deref(), Some("p1"));
        assert_eq!(owner_of(&allergy).as_deref(), Some("p2"));
        assert_eq!(owner_of(&patient).as_deref(), Some("p3"));
        assert_eq!(owner_of(&other), None);
    }

    #[test]
    fn http_date_becomes_instant() {
        let instant = http_date_to_instant("Tue, 01 Dec 2026 10:00:00 GMT");
        assert_eq!(instant.as_deref(), Some("2026-12-01T09:59:59Z"));
        assert_eq!(http_date_to_instant("yesterday"), None);
    }
}
