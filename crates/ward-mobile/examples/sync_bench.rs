//! Prints the time and bytes of a first and a second sync of a panel.
//!
//! Start a server, load a panel and mint the tokens, then run:
//!
//! ```sh
//! ward serve --data /tmp/bench-data &
//! ward import --data /tmp/bench-data ../shared/data/synthea-r4    # optional, before serve
//! WARD_BENCH_ADMIN=$(ward token --data /tmp/bench-data --scope 'system/*.cruds') \
//! WARD_BENCH_USER=$(ward token --data /tmp/bench-data --scope 'user/*.cruds' \
//!     --role physician --fhir-user Practitioner/bench --subject bench) \
//! cargo run --release -p ward-mobile --example sync_bench -- \
//!     https://127.0.0.1:8443 /tmp/bench-data/ca.pem 100
//! ```
//!
//! The example puts the first N patients on the care team of
//! `Practitioner/bench`. When the server holds fewer than N patients it
//! generates the rest (each with 200 observations), so it runs without
//! the Synthea data. Between the two syncs it adds one observation per
//! patient.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use ward_mobile::{Client, ClientOptions};

const OBSERVATIONS_PER_GENERATED_PATIENT: usize = 200;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, server, ca_path, count] = args.as_slice() else {
        bail!(
            "usage: sync_bench SERVER_URL CA_PEM PATIENTS (tokens in WARD_BENCH_ADMIN and WARD_BENCH_USER)"
        );
    };
    let count: usize = count.parse().context("PATIENTS must be a number")?;
    let admin = std::env::var("WARD_BENCH_ADMIN")
        .context("set WARD_BENCH_ADMIN to a system/*.cruds token")?;
    let user = std::env::var("WARD_BENCH_USER")
        .context("set WARD_BENCH_USER to a physician token for Practitioner/bench")?;
    let ca = std::fs::read_to_string(ca_path).with_context(|| format!("reading {ca_path}"))?;
    let http = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes())?)
        .timeout(std::time::Duration::from_secs(600))
        .build()?;
    let base = format!("{}/fhir", server.trim_end_matches('/'));

    let patients = prepare_panel(&http, &base, &admin, count)?;
    let dir = tempfile::tempdir()?;
    let client = Client::open_with(dir.path(), ClientOptions::default())?;
    client.provision(server, &ca, "bench-pin-1")?;
    client.use_bearer_token(&user)?;

    // The sync cursor has one-second resolution.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let started = Instant::now();
    let first = client.sync()?;
    print_report("first sync", &first, started);

    add_one_observation_each(&http, &base, &admin, &patients)?;
    let started = Instant::now();
    let second = client.sync()?;
    print_report("second sync", &second, started);
    Ok(())
}

fn print_report(label: &str, report: &ward_mobile::SyncReport, started: Instant) {
    println!(
        "{label}: {:.2} s, {} bytes, {} requests, {} patients, {} resources received, {} changed",
        started.elapsed().as_secs_f64(),
        report.bytes_received,
        report.requests,
        report.patients,
        report.resources_received,
        report.resources_changed
    );
}

fn send(request: reqwest::blocking::RequestBuilder, token: &str) -> Result<Value> {
    let response = request
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .send()?;
    let status = response.status();
    let body: Value = response.json().unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("HTTP {status}: {body}");
    }
    Ok(body)
}

/// Returns the ids of `count` patients on the bench practitioner's care
/// team, generating patients when the server has too few.
fn prepare_panel(
    http: &reqwest::blocking::Client,
    base: &str,
    admin: &str,
    count: usize,
) -> Result<Vec<String>> {
    let practitioner =
        json!({"resourceType": "Practitioner", "id": "bench", "name": [{"family": "Bench"}]});
    send(
        http.put(format!("{base}/Practitioner/bench"))
            .body(practitioner.to_string()),
        admin,
    )?;
    let found = send(
        http.get(format!("{base}/Patient?_count={count}&_elements=id")),
        admin,
    )?;
    let mut ids: Vec<String> = found["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    while ids.len() < count {
        let patient = json!({"resourceType": "Patient", "name": [{"family": "Generated", "given": [format!("P{}", ids.len())]}]});
        let created = send(
            http.post(format!("{base}/Patient"))
                .body(patient.to_string()),
            admin,
        )?;
        let id = created["id"]
            .as_str()
            .context("created patient has no id")?
            .to_owned();
        let entries: Vec<Value> = (0..OBSERVATIONS_PER_GENERATED_PATIENT)
            .map(|i| json!({"request": {"method": "POST", "url": "Observation"}, "resource": observation(&id, 60 + (i % 40) as u32)}))
            .collect();
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        send(http.post(base.to_owned()).body(bundle.to_string()), admin)?;
        ids.push(id);
    }
    for id in &ids {
        let team = json!({
            "resourceType": "CareTeam",
            "status": "active",
            "subject": {"reference": format!("Patient/{id}")},
            "participant": [{"member": {"reference": "Practitioner/bench"}}],
        });
        send(
            http.post(format!("{base}/CareTeam")).body(team.to_string()),
            admin,
        )?;
    }
    Ok(ids)
}

fn observation(patient: &str, value: u32) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "Heart rate"},
        "subject": {"reference": format!("Patient/{patient}")},
        "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    })
}

fn add_one_observation_each(
    http: &reqwest::blocking::Client,
    base: &str,
    admin: &str,
    patients: &[String],
) -> Result<()> {
    for id in patients {
        send(
            http.post(format!("{base}/Observation"))
                .body(observation(id, 99).to_string()),
            admin,
        )?;
    }
    Ok(())
}
