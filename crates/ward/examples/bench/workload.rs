//! The resources the benchmark loads: Synthea patient Bundles (or generated
//! ones of similar size), Observations, and the care team of the clinician
//! whose sync is measured.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// The FHIR user of the clinician whose sync is measured.
pub const CLINICIAN: &str = "Practitioner/bench-clinician";

/// The LOINC code of the Observations the benchmark creates.
pub const CODE: &str = "8302-2";

/// Returns the Synthea sample folder next to the workspace, when present.
pub fn default_synthea() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/synthea-r4");
    dir.canonicalize().ok().filter(|d| d.is_dir())
}

/// The Bundles of a Synthea folder: the `*Information*` Bundles (shared
/// Organizations and Practitioners) and the patient Bundles.
pub struct Synthea {
    pub information: Vec<Value>,
    pub patients: Vec<Value>,
}

/// Reads the `.json` transaction Bundles of `dir`.
pub fn read_synthea(dir: &Path) -> Result<Synthea> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let mut synthea = Synthea {
        information: Vec::new(),
        patients: Vec::new(),
    };
    for path in paths {
        let bytes = std::fs::read(&path)?;
        let bundle: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing {}", path.display()))?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.contains("Information") {
            synthea.information.push(bundle);
        } else {
            synthea.patients.push(bundle);
        }
    }
    anyhow::ensure!(
        !synthea.patients.is_empty(),
        "{} holds no patient Bundles",
        dir.display()
    );
    Ok(synthea)
}

/// Returns the family name of benchmark patient `i`, unique per patient.
pub fn family_name(i: usize) -> String {
    format!("Benchfamily{i:05}")
}

/// Patient Bundle `i`: a copy of a Synthea template whose Patient gets the
/// family name of `i`. The entries are `POST`s, so each copy creates new
/// resources.
pub fn synthea_patient(template: &Value, i: usize) -> Value {
    let mut bundle = template.clone();
    if let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) {
        for entry in entries {
            let resource = &mut entry["resource"];
            if resource["resourceType"] == "Patient" {
                resource["name"] = json!([{ "family": family_name(i), "given": ["Alex"] }]);
            }
        }
    }
    bundle
}

/// Builds a patient Bundle of about the size of a Synthea one: a
/// Patient and `observations` Observations that refer to it.
pub fn generated_patient(i: usize, observations: usize) -> Value {
    let patient_url = format!("urn:uuid:00000000-0000-4000-8000-{i:012}");
    let mut entries = vec![json!({
        "fullUrl": patient_url,
        "resource": {
            "resourceType": "Patient",
            "name": [{ "family": family_name(i), "given": ["Alex"] }],
            "gender": if i.is_multiple_of(2) { "female" } else { "male" },
            "birthDate": format!("19{:02}-01-01", 30 + i % 60)
        },
        "request": { "method": "POST", "url": "Patient" }
    })];
    for k in 0..observations {
        let mut observation = observation("placeholder", i * 1000 + k);
        observation["subject"] = json!({ "reference": patient_url });
        entries.push(json!({
            "resource": observation,
            "request": { "method": "POST", "url": "Observation" }
        }));
    }
    json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries })
}

/// Observation `i` of a patient: a body height with a date spread over
/// 2010 to 2024.
pub fn observation(patient: &str, i: usize) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs" }] }],
        "code": { "coding": [{ "system": "http://loinc.org", "code": CODE, "display": "Body height" }] },
        "subject": { "reference": format!("Patient/{patient}") },
        "effectiveDateTime": format!("20{:02}-{:02}-{:02}T08:00:00Z", 10 + i % 15, 1 + i % 12, 1 + i % 28),
        "valueQuantity": { "value": 150 + i % 50, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm" }
    })
}

/// Builds a CareTeam that puts the clinician on the team of `patient`.
pub fn care_team(patient: &str) -> Value {
    json!({
        "resourceType": "CareTeam",
        "status": "active",
        "subject": { "reference": format!("Patient/{patient}") },
        "participant": [{ "member": { "reference": CLINICIAN } }]
    })
}

/// Counts the entries of a Bundle.
pub fn entry_count(bundle: &Value) -> usize {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

/// Finds the id of the Patient a transaction created, from the response entry
/// at the Patient's position (`Patient/ID/_history/1`).
pub fn created_patient(request: &Value, response: &Value) -> Option<String> {
    let position = request
        .get("entry")?
        .as_array()?
        .iter()
        .position(|e| e["resource"]["resourceType"] == "Patient")?;
    let location = response["entry"][position]["response"]["location"].as_str()?;
    let rest = location.split("Patient/").nth(1)?;
    Some(rest.split('/').next()?.to_owned())
}

/// Builds a transaction Bundle of one Patient and `size - 1` Observations, for
/// loading many resources.
pub fn bulk_bundle(i: usize, size: usize) -> Value {
    generated_patient(1_000_000 + i, size.saturating_sub(1))
}

/// Lists the resource types of the patient data, sorted: those of the Synthea
/// patient Bundles, or Patient and Observation for generated ones, plus
/// CareTeam.
pub fn resource_types(synthea: Option<&Synthea>) -> Vec<String> {
    let mut types = std::collections::BTreeSet::from([
        "CareTeam".to_owned(),
        "Observation".to_owned(),
        "Patient".to_owned(),
    ]);
    for bundle in synthea.map_or(&[][..], |s| &s.patients[..]) {
        for entry in bundle["entry"].as_array().map_or(&[][..], Vec::as_slice) {
            if let Some(name) = entry["resource"]["resourceType"].as_str() {
                types.insert(name.to_owned());
            }
        }
    }
    types.into_iter().collect()
}
