//! Runs the validator over official FHIR R4 examples and Synthea data.
//!
//! `tests/examples/` ships a selection of the examples in the
//! `hl7.fhir.r4.examples` 4.0.1 package, which must all validate. Two
//! optional sources are validated when present, and skipped otherwise:
//!
//! - `WARD_FHIR_PACKAGE_DIR`: an unpacked package directory; every example
//!   resource in it (not the conformance resources) must validate, except
//!   those listed in [`INVALID_OFFICIAL_EXAMPLES`].
//! - `../shared/data/synthea-r4` beside the workspace (or the directory in
//!   `WARD_SYNTHEA_DIR`): every resource of every Synthea bundle must
//!   validate.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use ward_fhir::validate::validate_resource;

/// Official examples that break base R4 rules themselves, with the reason.
const INVALID_OFFICIAL_EXAMPLES: &[(&str, &str)] = &[
    (
        "DeviceMetric-example.json",
        "parent refers to a DeviceDefinition; only Device is allowed",
    ),
    (
        "DeviceUseStatement-example.json",
        "reasonReference refers to a Procedure, which is not allowed",
    ),
    (
        "MedicationRequest-medrx0301.json",
        "dispenseRequest.performer refers to a Practitioner; only Organization is allowed",
    ),
    (
        "Observation-clinical-gender.json",
        "performer refers to an Encounter, which is not allowed",
    ),
    (
        "Questionnaire-qs1.json",
        "nested items lack the required linkId",
    ),
    (
        "ig-r4.json",
        "package metadata, not an example: ImplementationGuide without name and status",
    ),
];

fn load(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
}

/// Validates each file and returns one line per failing file.
fn failures(files: &[PathBuf]) -> Vec<String> {
    let mut failed = Vec::new();
    for path in files {
        let resource = load(path);
        if let Err(outcome) = validate_resource(&resource) {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            failed.push(format!("{}: {outcome}", name.unwrap_or_default()));
        }
    }
    failed
}

#[test]
fn shipped_examples_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/examples");
    let files = json_files(&dir);
    assert!(
        files.len() >= 30,
        "expected the shipped examples in {}",
        dir.display()
    );
    let failed = failures(&files);
    assert!(
        failed.is_empty(),
        "{} examples failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn shipped_examples_cover_core_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/examples");
    let types: Vec<String> = json_files(&dir)
        .iter()
        .filter_map(|path| load(path)["resourceType"].as_str().map(str::to_string))
        .collect();
    for expected in [
        "Patient",
        "Observation",
        "Condition",
        "Encounter",
        "MedicationRequest",
        "Procedure",
        "AllergyIntolerance",
        "Immunization",
        "DiagnosticReport",
        "DocumentReference",
        "Practitioner",
        "Organization",
        "Bundle",
        "ServiceRequest",
        "MedicationDispense",
        "Medication",
        "Consent",
        "AuditEvent",
        "Provenance",
        "CarePlan",
    ] {
        assert!(
            types.iter().any(|t| t == expected),
            "no {expected} example shipped"
        );
    }
}

#[test]
fn package_examples_validate() {
    let Some(dir) = std::env::var_os("WARD_FHIR_PACKAGE_DIR").map(PathBuf::from) else {
        eprintln!("WARD_FHIR_PACKAGE_DIR not set; skipping the full package run");
        return;
    };
    let conformance = [
        "StructureDefinition-",
        "ValueSet-",
        "CodeSystem-",
        "SearchParameter-",
        "ConceptMap-",
        "OperationDefinition-",
        "CompartmentDefinition-",
        "CapabilityStatement-",
        "ImplementationGuide-",
        "NamingSystem-",
        "StructureMap-",
        "package.json",
        ".index.json",
    ];
    let files: Vec<PathBuf> = json_files(&dir)
        .into_iter()
        .filter(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.unwrap_or_default();
            !conformance.iter().any(|prefix| name.starts_with(prefix))
                && !INVALID_OFFICIAL_EXAMPLES
                    .iter()
                    .any(|(file, _)| *file == name)
        })
        .collect();
    let failed = failures(&files);
    assert!(
        failed.is_empty(),
        "{} of {} package examples failed:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

fn synthea_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WARD_SYNTHEA_DIR") {
        return Some(PathBuf::from(dir));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/synthea-r4");
    dir.is_dir().then_some(dir)
}

#[test]
fn synthea_bundles_validate() {
    let Some(dir) = synthea_dir() else {
        eprintln!("no Synthea data found; skipping");
        return;
    };
    let mut checked = 0;
    let mut failed = Vec::new();
    for path in json_files(&dir) {
        let bundle = load(&path);
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
        for (index, entry) in entries.iter().enumerate() {
            checked += 1;
            if let Err(outcome) = validate_resource(&entry["resource"]) {
                failed.push(format!("{name} entry {index}: {outcome}"));
            }
        }
        if let Err(outcome) = validate_resource(&bundle) {
            failed.push(format!("{name} (whole bundle): {outcome}"));
        }
    }
    assert!(
        checked > 0,
        "no Synthea resources found in {}",
        dir.display()
    );
    assert!(
        failed.is_empty(),
        "{} Synthea resources failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
