//! Turning files into the Bundles that are submitted: a transaction or
//! batch Bundle as written, any other Bundle or a single resource as a
//! transaction, and NDJSON as transactions of at most [`CHUNK_LINES`]
//! lines. Resources with an id are written with `PUT Type/id`, so ids are
//! kept and importing the same data again stores the same resources.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

use super::files::{Format, SourceFile};

/// The most NDJSON lines in one transaction.
pub const CHUNK_LINES: usize = 500;

/// The most NDJSON bytes in one transaction, well under the server's
/// default request limit of 32 MiB.
const CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// A Bundle to submit, and where its entries came from.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The file it was read from.
    pub path: Arc<Path>,
    /// A transaction or batch Bundle.
    pub bundle: Value,
    /// For NDJSON, the line number of each entry.
    pub lines: Option<Vec<u64>>,
}

impl Chunk {
    /// Returns the number of entries.
    pub fn len(&self) -> usize {
        entries(&self.bundle).map_or(0, Vec::len)
    }

    /// Returns the Bundle type (`transaction` or `batch`).
    pub fn kind(&self) -> &str {
        self.bundle
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// Returns the entries of a Bundle, when `entry` is an array.
pub fn entries(bundle: &Value) -> Option<&Vec<Value>> {
    bundle.get("entry").and_then(Value::as_array)
}

/// A failure to read part of a file.
#[derive(Debug, Clone)]
pub struct ReadFailure {
    /// The line, for NDJSON.
    pub line: Option<u64>,
    /// The cause.
    pub reason: String,
    /// How many resources are lost (for the progress count).
    pub resources: u64,
}

/// Counts the resources of a file without keeping it, for the progress
/// bar: non-blank lines of NDJSON, entries of a Bundle, or 1. Unreadable
/// files count as 1.
pub fn count_resources(file: &SourceFile) -> u64 {
    #[derive(Deserialize)]
    struct Shape {
        #[serde(rename = "resourceType")]
        resource_type: Option<IgnoredAny>,
        entry: Option<Vec<IgnoredAny>>,
    }

    let Ok(bytes) = std::fs::read(&file.path) else {
        return 1;
    };
    match file.format {
        Format::Ndjson => bytes
            .split(|b| *b == b'\n')
            .filter(|line| !line.trim_ascii().is_empty())
            .count() as u64,
        Format::Json => match serde_json::from_slice::<Shape>(&bytes) {
            Ok(Shape {
                resource_type: Some(_),
                entry: Some(entries),
            }) => entries.len() as u64,
            _ => 1,
        },
    }
}

/// Reads `file` and hands each Bundle to `send` and each failure to
/// `fail`. Stops early when `send` returns false.
pub fn read_file(
    file: &SourceFile,
    send: &mut dyn FnMut(Chunk) -> bool,
    fail: &mut dyn FnMut(ReadFailure),
) {
    let path: Arc<Path> = Arc::from(file.path.as_path());
    match file.format {
        Format::Json => match read_json(&file.path) {
            Ok(bundle) => {
                send(Chunk {
                    path,
                    bundle,
                    lines: None,
                });
            }
            Err(reason) => fail(ReadFailure {
                line: None,
                reason,
                resources: count_resources(file),
            }),
        },
        Format::Ndjson => read_ndjson(path, send, fail),
    }
}

fn read_json(path: &Path) -> Result<Value, String> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read the file: {e}"))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    to_submittable(value)
}

/// Makes a submittable Bundle of a parsed JSON document.
fn to_submittable(value: Value) -> Result<Value, String> {
    let resource_type = value
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or("not a FHIR resource: resourceType is missing")?;
    if resource_type != "Bundle" {
        return Ok(transaction(vec![entry_for(value, None)?]));
    }
    let kind = value
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if matches!(kind, "transaction" | "batch") {
        return Ok(value);
    }
    let Some(items) = entries(&value) else {
        return Ok(transaction(Vec::new()));
    };
    let mut converted = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        if item.pointer("/search/mode").and_then(Value::as_str) == Some("outcome") {
            continue;
        }
        let resource = item
            .get("resource")
            .cloned()
            .ok_or_else(|| format!("Bundle.entry[{index}] has no resource"))?;
        let full_url = item.get("fullUrl").and_then(Value::as_str);
        let entry =
            entry_for(resource, full_url).map_err(|e| format!("Bundle.entry[{index}]: {e}"))?;
        converted.push(entry);
    }
    Ok(transaction(converted))
}

/// Builds a transaction entry storing `resource`: `PUT Type/id` when it has an
/// id, `POST Type` otherwise.
fn entry_for(resource: Value, full_url: Option<&str>) -> Result<Value, String> {
    let resource_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or("not a FHIR resource: resourceType is missing")?
        .to_owned();
    if !resource_type.bytes().all(|b| b.is_ascii_alphabetic()) || resource_type.is_empty() {
        return Err(format!(
            "resourceType '{}' is not a resource type name",
            ward_server::fhir::engine::truncate(&resource_type, 64)
        ));
    }
    let request = match resource.get("id") {
        None => json!({ "method": "POST", "url": resource_type }),
        Some(Value::String(id)) if ward_server::fhir::engine::is_valid_id(id) => {
            json!({ "method": "PUT", "url": format!("{resource_type}/{id}") })
        }
        Some(_) => {
            return Err("id is not a valid FHIR id (1-64 of A-Z, a-z, 0-9, '-', '.')".to_owned());
        }
    };
    let mut entry = json!({ "resource": resource, "request": request });
    if let Some(url) = full_url {
        entry["fullUrl"] = json!(url);
    }
    Ok(entry)
}

fn transaction(entries: Vec<Value>) -> Value {
    json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries })
}

fn read_ndjson(
    path: Arc<Path>,
    send: &mut dyn FnMut(Chunk) -> bool,
    fail: &mut dyn FnMut(ReadFailure),
) {
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(err) => {
            let resources = count_resources(&SourceFile {
                path: path.to_path_buf(),
                format: Format::Ndjson,
                tier: 0,
            });
            return fail(ReadFailure {
                line: None,
                reason: format!("cannot read the file: {err}"),
                resources,
            });
        }
    };
    let mut reader = BufReader::new(file);
    let mut batch = NdjsonBatch::default();
    let mut buffer = Vec::new();
    let mut number = 0u64;
    loop {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) => {
                fail(ReadFailure {
                    line: Some(number + 1),
                    reason: format!("cannot read the file: {err}; the rest of it was skipped"),
                    resources: 0,
                });
                break;
            }
        }
        number += 1;
        let line = buffer.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let parsed = serde_json::from_slice::<Value>(line)
            .map_err(|e| format!("invalid JSON: {e}"))
            .and_then(|resource| entry_for(resource, None));
        match parsed {
            Ok(entry) => batch.push(entry, number, line.len()),
            Err(reason) => fail(ReadFailure {
                line: Some(number),
                reason,
                resources: 1,
            }),
        }
        if batch.is_full() && !send(batch.take(&path)) {
            return;
        }
    }
    if !batch.entries.is_empty() {
        send(batch.take(&path));
    }
}

/// NDJSON entries gathered for the next transaction.
#[derive(Default)]
struct NdjsonBatch {
    entries: Vec<Value>,
    lines: Vec<u64>,
    bytes: usize,
}

impl NdjsonBatch {
    fn push(&mut self, entry: Value, line: u64, bytes: usize) {
        self.entries.push(entry);
        self.lines.push(line);
        self.bytes += bytes;
    }

    fn is_full(&self) -> bool {
        self.entries.len() >= CHUNK_LINES || self.bytes >= CHUNK_BYTES
    }

    fn take(&mut self, path: &Arc<Path>) -> Chunk {
        let taken = std::mem::take(self);
        Chunk {
            path: path.clone(),
            bundle: transaction(taken.entries),
            lines: Some(taken.lines),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_resource_becomes_put() {
        let bundle = to_submittable(json!({"resourceType": "Patient", "id": "p1"})).unwrap();
        assert_eq!(bundle["type"], "transaction");
        assert_eq!(bundle["entry"][0]["request"]["method"], "PUT");
        assert_eq!(bundle["entry"][0]["request"]["url"], "Patient/p1");
    }

    #[test]
    fn resource_without_id_becomes_post() {
        let bundle = to_submittable(json!({"resourceType": "Patient"})).unwrap();
        assert_eq!(bundle["entry"][0]["request"]["method"], "POST");
        assert_eq!(bundle["entry"][0]["request"]["url"], "Patient");
    }

    #[test]
    fn collection_keeps_full_urls() {
        let bundle = to_submittable(json!({
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "id": "a"}},
                {"resource": {"resourceType": "Observation"}}
            ]
        }))
        .unwrap();
        assert_eq!(bundle["type"], "transaction");
        assert_eq!(bundle["entry"][0]["fullUrl"], "urn:uuid:1");
        assert_eq!(bundle["entry"][1]["request"]["method"], "POST");
    }

    #[test]
    fn transaction_passes_unchanged() {
        let original = json!({"resourceType": "Bundle", "type": "batch", "entry": []});
        assert_eq!(to_submittable(original.clone()).unwrap(), original);
    }

    #[test]
    fn bad_ids_and_types_rejected() {
        assert!(to_submittable(json!({"resourceType": "Patient", "id": "a/b"})).is_err());
        assert!(to_submittable(json!({"resourceType": "Patient", "id": 7})).is_err());
        assert!(to_submittable(json!({"resourceType": "../x"})).is_err());
        assert!(to_submittable(json!({"id": "x"})).is_err());
        assert!(to_submittable(json!([1, 2])).is_err());
    }

    #[test]
    fn ndjson_splits_into_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Patient.ndjson");
        let mut text = String::new();
        for i in 0..(CHUNK_LINES + 3) {
            text.push_str(&format!(
                "{{\"resourceType\":\"Patient\",\"id\":\"p{i}\"}}\n"
            ));
        }
        text.push_str("not json\n\n");
        std::fs::write(&path, text).unwrap();
        let file = SourceFile {
            path: path.clone(),
            format: Format::Ndjson,
            tier: 0,
        };
        let mut chunks = Vec::new();
        let mut failures = Vec::new();
        read_file(
            &file,
            &mut |c| {
                chunks.push(c);
                true
            },
            &mut |f| failures.push(f),
        );
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].len(), CHUNK_LINES);
        assert_eq!(chunks[1].len(), 3);
        assert_eq!(chunks[1].lines.as_deref(), Some(&[501, 502, 503][..]));
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].line, Some(504));
        assert_eq!(count_resources(&file), CHUNK_LINES as u64 + 4);
    }
}
