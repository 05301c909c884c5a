//! Finding the files to import and putting them in load order.
//!
//! Bundles and resources often refer to others by conditional reference
//! (`Location?identifier=...`), which only resolves once the target is
//! stored. Files therefore load in tiers, each finished before the next
//! starts: `*Information*` Bundles (Synthea's Organizations and
//! Practitioners), then NDJSON of Organization, Location, Practitioner,
//! PractitionerRole and Patient, one type per tier, then everything else.

use std::path::{Path, PathBuf};

use walkdir::WalkDir;

/// The layout of a file's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON document: a Bundle or a single resource.
    Json,
    /// Newline-delimited JSON: one resource a line.
    Ndjson,
}

/// A file to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// The file.
    pub path: PathBuf,
    /// The layout of its resources.
    pub format: Format,
    /// Its load tier: lower tiers load first.
    pub tier: u8,
}

/// A path that could not be read as an import source.
#[derive(Debug, Clone)]
pub struct Unusable {
    /// The path.
    pub path: PathBuf,
    /// The reason it cannot be imported.
    pub reason: String,
}

/// NDJSON resource types that others refer to, in load order.
const REFERENCED_TYPES: [&str; 5] = [
    "Organization",
    "Location",
    "Practitioner",
    "PractitionerRole",
    "Patient",
];

/// The tier of every file not singled out.
const LAST_TIER: u8 = REFERENCED_TYPES.len() as u8 + 1;

/// Collects the `.json` and `.ndjson` files under `paths` (folders are
/// walked recursively), sorted by tier and then by path, without
/// duplicates. Paths that do not exist or cannot be walked are returned
/// separately so the caller can report them and go on.
pub fn collect(paths: &[PathBuf]) -> (Vec<SourceFile>, Vec<Unusable>) {
    let mut files = Vec::new();
    let mut unusable = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut files, &mut unusable);
        } else if path.is_file() {
            match source_file(path) {
                Some(file) => files.push(file),
                None => unusable.push(Unusable {
                    path: path.clone(),
                    reason: "not a .json or .ndjson file".into(),
                }),
            }
        } else {
            unusable.push(Unusable {
                path: path.clone(),
                reason: "no such file or folder".into(),
            });
        }
    }
    files.sort_by(|a, b| (a.tier, &a.path).cmp(&(b.tier, &b.path)));
    files.dedup_by(|a, b| a.path == b.path);
    (files, unusable)
}

fn walk(dir: &Path, files: &mut Vec<SourceFile>, unusable: &mut Vec<Unusable>) {
    for item in WalkDir::new(dir).sort_by_file_name() {
        match item {
            Ok(entry) if entry.file_type().is_file() => {
                if let Some(file) = source_file(entry.path()) {
                    files.push(file);
                }
            }
            Ok(_) => {}
            Err(err) => unusable.push(Unusable {
                path: err.path().unwrap_or(dir).to_owned(),
                reason: format!("cannot read the folder: {err}"),
            }),
        }
    }
}

/// Classifies a file by its name, or returns `None` for other extensions.
fn source_file(path: &Path) -> Option<SourceFile> {
    let name = path.file_name()?.to_str()?;
    let lower = name.to_ascii_lowercase();
    let (format, tier) = if lower.ends_with(".ndjson") {
        (Format::Ndjson, ndjson_tier(name))
    } else if lower.ends_with(".json") {
        let tier = if name.contains("Information") {
            0
        } else {
            LAST_TIER
        };
        (Format::Json, tier)
    } else {
        return None;
    };
    Some(SourceFile {
        path: path.to_owned(),
        format,
        tier,
    })
}

/// Returns the tier of an NDJSON file named after its resource type, such as
/// `Location.000.ndjson` or `2.Patient.ndjson`.
fn ndjson_tier(name: &str) -> u8 {
    let position = name
        .split('.')
        .find_map(|part| REFERENCED_TYPES.iter().position(|t| *t == part));
    match position.and_then(|p| u8::try_from(p).ok()) {
        Some(p) => p + 1,
        None => LAST_TIER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_follow_reference_order() {
        assert_eq!(ndjson_tier("Organization.000.ndjson"), 1);
        assert_eq!(ndjson_tier("Location.ndjson"), 2);
        assert_eq!(ndjson_tier("1.PractitionerRole.ndjson"), 4);
        assert_eq!(ndjson_tier("Patient.000.ndjson"), 5);
        assert_eq!(ndjson_tier("Encounter.000.ndjson"), LAST_TIER);
        assert_eq!(ndjson_tier("PatientExtra.ndjson"), LAST_TIER);
    }

    #[test]
    fn collect_orders_and_reports_missing() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "b.json",
            "Encounter.ndjson",
            "hospitalInformation1.json",
            "Location.ndjson",
            "Organization.ndjson",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(name), "{}").unwrap();
        }
        let missing = dir.path().join("missing.json");
        let (files, unusable) = collect(&[dir.path().to_owned(), missing.clone()]);
        let names: Vec<_> = files
            .iter()
            .map(|f| f.path.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "hospitalInformation1.json",
                "Organization.ndjson",
                "Location.ndjson",
                "Encounter.ndjson",
                "b.json"
            ]
        );
        assert_eq!(unusable.len(), 1);
        assert_eq!(unusable[0].path, missing);
    }
}
