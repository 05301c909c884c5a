//! `ward import` end to end: the binary loads files it is given, reports
//! bad ones, and the data reads back through a real `ward serve`.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const WARD: &str = env!("CARGO_BIN_EXE_ward");

/// Builds a `ward` command that inherits no Ward settings from the
/// environment.
fn ward() -> Command {
    let mut command = Command::new(WARD);
    for name in [
        "WARD_DATA",
        "WARD_LISTEN",
        "WARD_BASE_URL",
        "WARD_DATABASE",
        "WARD_TOKEN",
        "WARD_MASTER_KEY",
    ] {
        command.env_remove(name);
    }
    command.env("WARD_LOG", "warn");
    command
}

fn run_import(args: &[&str]) -> Output {
    ward()
        .arg("import")
        .args(args)
        .output()
        .expect("running ward import")
}

/// The figures of the summary `ward import` prints.
#[derive(Debug, Default, PartialEq)]
struct Summary {
    imported: u64,
    files_loaded: u64,
    files_failed: u64,
    resources_failed: u64,
    by_type: BTreeMap<String, u64>,
}

fn number_after(text: &str, prefix: &str) -> u64 {
    let rest = text
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().expect("a number")
}

fn parse_summary(stdout: &str) -> Summary {
    let files_line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Files: "))
        .expect("a Files line");
    let (loaded, failed) = files_line.split_once(" loaded, ").expect("loaded, failed");
    let mut by_type = BTreeMap::new();
    let mut in_types = false;
    for line in stdout.lines() {
        if line == "Resources by type:" {
            in_types = true;
        } else if in_types {
            let mut parts = line.split_whitespace();
            if let (Some(name), Some(count)) = (parts.next(), parts.next()) {
                by_type.insert(name.to_owned(), count.parse().expect("a count"));
            }
        }
    }
    Summary {
        imported: number_after(stdout, "Imported "),
        files_loaded: loaded.parse().expect("files loaded"),
        files_failed: failed
            .trim_end_matches(" failed")
            .parse()
            .expect("files failed"),
        resources_failed: number_after(stdout, "Resources failed: "),
        by_type,
    }
}

fn write_json(dir: &Path, name: &str, value: &Value) {
    fs::write(dir.join(name), serde_json::to_vec_pretty(value).unwrap()).unwrap();
}

fn write_lines(dir: &Path, name: &str, lines: &[String]) {
    fs::write(dir.join(name), lines.join("\n") + "\n").unwrap();
}

fn patient(id: &str, birth_date: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "id": id,
        "name": [{ "family": "Example", "given": [id] }],
        "birthDate": birth_date
    })
}

/// Writes the mixed data set: good Bundles, NDJSON with a conditional
/// reference, and three bad inputs.
fn write_mixed_data(dir: &Path) {
    write_json(
        dir,
        "hospitalInformation1.json",
        &json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{
                "resource": {
                    "resourceType": "Organization",
                    "id": "org-1",
                    "identifier": [{ "system": "http://example.org/org", "value": "A" }],
                    "name": "General Hospital"
                },
                "request": { "method": "PUT", "url": "Organization/org-1" }
            }]
        }),
    );
    let locations: Vec<String> = ["1", "2"]
        .iter()
        .map(|n| {
            json!({
                "resourceType": "Location",
                "id": format!("loc-{n}"),
                "identifier": [{ "system": "http://example.org/loc", "value": format!("L{n}") }],
                "name": format!("Ward {n}")
            })
            .to_string()
        })
        .collect();
    write_lines(dir, "Location.000.ndjson", &locations);
    write_lines(
        dir,
        "Patient.000.ndjson",
        &[
            patient("pat-1", "1970-01-01").to_string(),
            patient("pat-2", "1980-02-02").to_string(),
            "{\"resourceType\": \"Patient\", \"id\": ".to_owned(),
            patient("pat-3", "1990-13-45").to_string(),
        ],
    );
    write_lines(
        dir,
        "Encounter.000.ndjson",
        &[json!({
            "resourceType": "Encounter",
            "id": "enc-1",
            "status": "finished",
            "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB" },
            "subject": { "reference": "Patient/pat-1" },
            "location": [{ "location": { "reference": "Location?identifier=http://example.org/loc|L2" } }],
            "serviceProvider": { "reference": "Organization?identifier=http://example.org/org|A" }
        })
        .to_string()],
    );
    write_json(
        dir,
        "collection.json",
        &json!({
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                { "resource": {
                    "resourceType": "Observation",
                    "id": "obs-1",
                    "status": "final",
                    "code": { "coding": [{ "system": "http://loinc.org", "code": "8302-2" }] },
                    "subject": { "reference": "Patient/pat-1" }
                } },
                { "resource": { "resourceType": "Practitioner", "id": "pr-1" } }
            ]
        }),
    );
    write_json(
        dir,
        "single.json",
        &json!({ "resourceType": "Practitioner", "id": "pr-2" }),
    );
    fs::write(dir.join("broken.json"), "{\"resourceType\": \"Bundle\", ").unwrap();
    write_json(
        dir,
        "bad-bundle.json",
        &json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                { "resource": patient("pat-bad", "2000-01-01"),
                  "request": { "method": "PUT", "url": "Patient/pat-bad" } },
                { "resource": { "resourceType": "Patient", "id": "pat-worse", "gender": "sometimes" },
                  "request": { "method": "PUT", "url": "Patient/pat-worse" } }
            ]
        }),
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A `ward serve` process, killed on drop.
struct Server {
    child: Child,
    base: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(data: &Path) -> Server {
        let port = free_port();
        let child = ward()
            .args(["serve", "--data"])
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting ward serve");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut server = Server {
            child,
            base: format!("https://127.0.0.1:{port}/fhir"),
            client: reqwest::Client::new(),
            runtime,
            token: String::new(),
        };
        let ca_path = data.join("ca.pem");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "ward serve did not start");
            if let Ok(pem) = fs::read(&ca_path) {
                let ca = reqwest::Certificate::from_pem(&pem).unwrap();
                server.client = reqwest::Client::builder()
                    .use_rustls_tls()
                    .add_root_certificate(ca)
                    .build()
                    .unwrap();
                let health = format!("https://127.0.0.1:{port}/healthz");
                let up = server
                    .runtime
                    .block_on(async { server.client.get(&health).send().await })
                    .is_ok_and(|r| r.status().is_success());
                if up {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let token = ward()
            .args(["token", "--data"])
            .arg(data)
            .args(["--scope", "system/*.cruds"])
            .output()
            .expect("running ward token");
        assert!(token.status.success(), "ward token failed");
        server.token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
        server
    }

    /// GETs `path` under the FHIR base; returns the status and the body.
    fn get(&self, path: &str) -> (u16, Value) {
        let url = format!("{}/{path}", self.base);
        self.runtime.block_on(async {
            let response = self
                .client
                .get(&url)
                .bearer_auth(&self.token)
                .send()
                .await
                .expect("GET");
            let status = response.status().as_u16();
            let body = response.json().await.unwrap_or(Value::Null);
            (status, body)
        })
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn import_reports_bad_files_and_reads_back() {
    let input = tempfile::tempdir().unwrap();
    write_mixed_data(input.path());
    let data = tempfile::tempdir().unwrap();
    let data_arg = data.path().to_str().unwrap();
    let input_arg = input.path().to_str().unwrap();

    let first = run_import(&["--data", data_arg, input_arg]);
    let stdout = text(&first.stdout);
    let stderr = text(&first.stderr);
    assert!(!first.status.success(), "exit status must report failures");

    let summary = parse_summary(&stdout);
    let expected_types: BTreeMap<String, u64> = [
        ("Encounter", 1),
        ("Location", 2),
        ("Observation", 1),
        ("Organization", 1),
        ("Patient", 2),
        ("Practitioner", 2),
    ]
    .into_iter()
    .map(|(t, n)| (t.to_owned(), n))
    .collect();
    assert_eq!(summary.by_type, expected_types, "stdout:\n{stdout}");
    assert_eq!(summary.imported, 9);
    assert_eq!(summary.files_loaded, 5, "stdout:\n{stdout}");
    assert_eq!(summary.files_failed, 3, "stdout:\n{stdout}");
    assert_eq!(summary.resources_failed, 5, "stdout:\n{stdout}");

    let patient_file = input.path().join("Patient.000.ndjson");
    let bad_json_line = format!("{}:3: invalid JSON", patient_file.display());
    assert!(stderr.contains(&bad_json_line), "stderr:\n{stderr}");
    let invalid_line = stderr
        .lines()
        .find(|l| l.contains(&format!("{}:4: rejected", patient_file.display())))
        .unwrap_or_else(|| panic!("no report of line 4 in stderr:\n{stderr}"));
    assert!(invalid_line.contains("birthDate"), "{invalid_line}");
    let broken = format!(
        "{}: invalid JSON",
        input.path().join("broken.json").display()
    );
    assert!(stderr.contains(&broken), "stderr:\n{stderr}");
    let bad_bundle = stderr
        .lines()
        .find(|l| l.contains(&input.path().join("bad-bundle.json").display().to_string()))
        .unwrap_or_else(|| panic!("no report of bad-bundle.json in stderr:\n{stderr}"));
    assert!(bad_bundle.contains("Bundle.entry[1]"), "{bad_bundle}");
    assert!(bad_bundle.contains("gender"), "{bad_bundle}");

    // Everything above is PUT by id, so a second run stores the same set.
    let second = run_import(&["--data", data_arg, input_arg]);
    assert!(!second.status.success());
    assert_eq!(parse_summary(&text(&second.stdout)), summary);

    let server = Server::start(data.path());
    let (status, encounter) = server.get("Encounter/enc-1");
    assert_eq!(status, 200);
    assert_eq!(
        encounter.pointer("/location/0/location/reference"),
        Some(&json!("Location/loc-2"))
    );
    assert_eq!(
        encounter.pointer("/serviceProvider/reference"),
        Some(&json!("Organization/org-1"))
    );
    let (_, patients) = server.get("Patient?_count=50");
    assert_eq!(patients["total"], json!(2), "{patients}");
    let (status, _) = server.get("Patient/pat-bad");
    assert_eq!(status, 404, "a rejected transaction must store nothing");
    let (status, _) = server.get("Practitioner/pr-2");
    assert_eq!(status, 200);
}

#[test]
fn import_through_server() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let input = tempfile::tempdir().unwrap();
    write_lines(
        input.path(),
        "Patient.ndjson",
        &[
            patient("remote-1", "1960-06-06").to_string(),
            patient("remote-2", "1961-07-07").to_string(),
        ],
    );
    write_json(
        input.path(),
        "observations.json",
        &json!({
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": { "text": "weight" },
                    "subject": { "reference": "Patient/remote-1" }
                },
                "request": { "method": "POST", "url": "Observation" }
            }]
        }),
    );
    let ca = data.path().join("ca.pem");
    let args = |path: &Path| -> Vec<String> {
        vec![
            "--server".into(),
            server.base.clone(),
            "--token".into(),
            server.token.clone(),
            "--ca".into(),
            ca.display().to_string(),
            path.display().to_string(),
        ]
    };

    let good = ward()
        .arg("import")
        .args(args(input.path()))
        .output()
        .unwrap();
    let stdout = text(&good.stdout);
    assert!(good.status.success(), "stderr:\n{}", text(&good.stderr));
    let summary = parse_summary(&stdout);
    assert_eq!(summary.imported, 3, "{stdout}");
    assert_eq!(summary.by_type.get("Patient"), Some(&2));
    assert_eq!(summary.by_type.get("Observation"), Some(&1));
    assert_eq!(summary.files_loaded, 2);
    assert_eq!(summary.files_failed, 0);
    assert!(
        !stdout.contains(&server.token),
        "the token must not be printed"
    );

    let (status, stored) = server.get("Patient/remote-2");
    assert_eq!(status, 200);
    assert_eq!(stored["birthDate"], json!("1961-07-07"));
    let (_, found) = server.get("Observation?subject=Patient/remote-1");
    assert_eq!(found["total"], json!(1), "{found}");

    // A batch runs entry by entry: the good one is stored, the bad one is
    // reported with its position.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad_path: PathBuf = bad_dir.path().join("mixed-batch.json");
    write_json(
        bad_dir.path(),
        "mixed-batch.json",
        &json!({
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                { "resource": patient("remote-3", "1962-08-08"),
                  "request": { "method": "PUT", "url": "Patient/remote-3" } },
                { "resource": patient("remote-4", "1962-02-31"),
                  "request": { "method": "PUT", "url": "Patient/remote-4" } }
            ]
        }),
    );
    let bad = ward().arg("import").args(args(&bad_path)).output().unwrap();
    let stderr = text(&bad.stderr);
    assert!(!bad.status.success());
    let report = stderr
        .lines()
        .find(|l| l.contains(&bad_path.display().to_string()))
        .unwrap_or_else(|| panic!("no report of the batch in stderr:\n{stderr}"));
    assert!(report.contains("Bundle.entry[1]"), "{report}");
    assert!(report.contains("birthDate"), "{report}");
    let summary = parse_summary(&text(&bad.stdout));
    assert_eq!(summary.imported, 1);
    assert_eq!(summary.resources_failed, 1);
    assert_eq!(server.get("Patient/remote-3").0, 200);
    assert_eq!(server.get("Patient/remote-4").0, 404);
}

/// Returns the sample data folder next to the workspace, if present.
fn shared_data() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if dir.join("synthea-r4").is_dir() && dir.join("synthea-bulk-ndjson").is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("WARD_REQUIRE_SHARED_DATA").as_deref() != Ok("1"),
        "WARD_REQUIRE_SHARED_DATA=1 but {} has no Synthea data",
        dir.display()
    );
    None
}

/// Counts the entries of every `.json` Bundle and the non-blank lines of
/// every `.ndjson` file, by resource type.
fn expected_resources(files: &[PathBuf]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    let mut add = |resource: &Value| {
        let t = resource["resourceType"].as_str().expect("resourceType");
        *counts.entry(t.to_owned()).or_insert(0) += 1;
    };
    for file in files {
        let bytes = fs::read(file).unwrap();
        if file.extension().is_some_and(|e| e == "ndjson") {
            for line in bytes.split(|b| *b == b'\n') {
                if !line.trim_ascii().is_empty() {
                    add(&serde_json::from_slice(line).unwrap());
                }
            }
        } else {
            let bundle: Value = serde_json::from_slice(&bytes).unwrap();
            for entry in bundle["entry"].as_array().unwrap() {
                add(&entry["resource"]);
            }
        }
    }
    counts
}

fn files_in(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

#[test]
fn import_synthea_samples() {
    let Some(shared) = shared_data() else {
        println!("skipped: no Synthea sample data next to the workspace");
        return;
    };
    let bundles = files_in(&shared.join("synthea-r4"), "json");
    // log.ndjson is the export's own log, not FHIR resources.
    let ndjson: Vec<PathBuf> = files_in(&shared.join("synthea-bulk-ndjson"), "ndjson")
        .into_iter()
        .filter(|p| !p.ends_with("log.ndjson"))
        .collect();

    for files in [bundles, ndjson] {
        let data = tempfile::tempdir().unwrap();
        let output = ward()
            .args(["import", "--data"])
            .arg(data.path())
            .args(&files)
            .output()
            .unwrap();
        let stdout = text(&output.stdout);
        assert!(output.status.success(), "stderr:\n{}", text(&output.stderr));
        let summary = parse_summary(&stdout);
        let expected = expected_resources(&files);
        assert_eq!(summary.by_type, expected, "{stdout}");
        assert_eq!(summary.imported, expected.values().sum::<u64>());
        assert_eq!(summary.files_loaded, files.len() as u64);
        assert_eq!(summary.resources_failed, 0);
    }
}
