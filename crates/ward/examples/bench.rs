//! Measures a real `ward serve` over HTTPS: create, read and search
//! throughput and latency with concurrent HTTP/2 clients, and the rate of
//! importing Synthea transaction Bundles.
//!
//! Build the server first, then run the benchmark in release mode:
//!
//! ```text
//! cargo build --release -p ward
//! cargo run --release -p ward --example bench -- [--synthea DIR] [--clients 8]
//! ```
//!
//! The server runs on a fresh temporary data directory on a free port of
//! 127.0.0.1 and is stopped at the end. Each operation runs a fixed number
//! of times. The table gives the wall-clock time, the rate and the 50th
//! and 99th percentile latency of single requests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};

/// Benchmark options.
#[derive(Debug, Parser)]
#[command(about = "Benchmarks a ward server over HTTPS")]
struct Options {
    /// The `ward` binary [default: `ward` in the target folder above this example].
    #[arg(long)]
    ward: Option<PathBuf>,
    /// A folder of Synthea transaction Bundles [default: ../shared/data/synthea-r4 when present].
    #[arg(long)]
    synthea: Option<PathBuf>,
    /// Concurrent clients, each with its own HTTP/2 connection.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Observations to create.
    #[arg(long, default_value_t = 2000)]
    creates: usize,
    /// Reads by id.
    #[arg(long, default_value_t = 4000)]
    reads: usize,
    /// Searches of each kind.
    #[arg(long, default_value_t = 1000)]
    searches: usize,
    /// Patients the Observations are spread over.
    #[arg(long, default_value_t = 100)]
    patients: usize,
    /// How many times the Synthea patient Bundles are posted.
    #[arg(long, default_value_t = 5)]
    import_rounds: usize,
}

/// The figures of one operation.
struct Measured {
    name: String,
    count: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Measured {
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        let index = rank.clamp(1, sorted.len()) - 1;
        sorted.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }

    fn row(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.count as f64 / secs
        } else {
            0.0
        };
        format!(
            "| {:<34} | {:>7} | {:>7.2} | {:>8.1} | {:>7.2} | {:>7.2} |",
            self.name,
            self.count,
            secs,
            rate,
            self.percentile_ms(50.0),
            self.percentile_ms(99.0)
        )
    }
}

/// A `ward serve` child process, stopped on drop.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTPS client bound to the server's FHIR base.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: Arc<str>,
    token: Arc<str>,
}

impl Client {
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value> {
        let response = request
            .bearer_auth(&*self.token)
            .header("Accept", "application/fhir+json")
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("status {status}: {body}");
        }
        Ok(body)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        let url = format!("{}/{path}", self.base);
        self.send(self.http.get(url)).await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let url = if path.is_empty() {
            self.base.to_string()
        } else {
            format!("{}/{path}", self.base)
        };
        let request = self
            .http
            .post(url)
            .header("Content-Type", "application/fhir+json")
            .body(serde_json::to_vec(body)?);
        self.send(request).await
    }
}

fn default_ward() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this example")?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("the example has no target folder above it")?;
    Ok(target.join("ward"))
}

fn default_synthea() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/synthea-r4");
    dir.canonicalize().ok().filter(|d| d.is_dir())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `ward serve`, waits until `/healthz` responds, and mints a token.
async fn start_server(ward: &Path, data: &Path, clients: usize) -> Result<(Server, Vec<Client>)> {
    let port = free_port()?;
    let child = Command::new(ward)
        .args(["serve", "--data"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("WARD_MASTER_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", ward.display()))?;
    let server = Server { child };

    let deadline = Instant::now() + Duration::from_secs(30);
    let ca_path = data.join("ca.pem");
    let health = format!("https://127.0.0.1:{port}/healthz");
    let ca = loop {
        if Instant::now() > deadline {
            bail!("the server did not respond to {health} within 30 s");
        }
        if let Ok(pem) = std::fs::read(&ca_path) {
            let ca = reqwest::Certificate::from_pem(&pem)?;
            let probe = build_client(&ca)?;
            if probe
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break ca;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let token = Command::new(ward)
        .args(["token", "--data"])
        .arg(data)
        .args(["--scope", "system/*.cruds", "--ttl", "1h"])
        .env_remove("WARD_LISTEN")
        .env_remove("WARD_BASE_URL")
        .output()
        .context("running ward token")?;
    if !token.status.success() {
        bail!(
            "ward token failed: {}",
            String::from_utf8_lossy(&token.stderr)
        );
    }
    let token: Arc<str> = Arc::from(String::from_utf8(token.stdout)?.trim());

    let base: Arc<str> = Arc::from(format!("https://127.0.0.1:{port}/fhir"));
    let mut list = Vec::with_capacity(clients);
    for _ in 0..clients {
        list.push(Client {
            http: build_client(&ca)?,
            base: base.clone(),
            token: token.clone(),
        });
    }
    Ok((server, list))
}

fn build_client(ca: &reqwest::Certificate) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca.clone())
        .http2_prior_knowledge()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(120))
        .build()?)
}

/// Runs `count` operations spread over the clients; `op(client, i)` runs
/// operation `i`. Any failed operation fails the benchmark.
async fn measure<F, Fut>(name: &str, clients: &[Client], count: usize, op: F) -> Result<Measured>
where
    F: Fn(Client, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<usize>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in clients {
        let (op, next, client) = (op.clone(), next.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut units = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let begun = Instant::now();
                units += op(client.clone(), i).await?;
                latencies.push(begun.elapsed());
            }
            anyhow::Ok((latencies, units))
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    let mut units = 0;
    for task in tasks {
        let (mut part, done) = task.await??;
        latencies.append(&mut part);
        units += done;
    }
    Ok(Measured {
        name: name.to_owned(),
        count: units,
        elapsed: started.elapsed(),
        latencies,
    })
}

fn observation(patient: &str, i: usize) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "coding": [{ "system": "http://loinc.org", "code": "8302-2", "display": "Body height" }] },
        "subject": { "reference": format!("Patient/{patient}") },
        "effectiveDateTime": format!("20{:02}-{:02}-{:02}T08:00:00Z", 10 + i % 15, 1 + i % 12, 1 + i % 28),
        "valueQuantity": { "value": 150 + i % 50, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm" }
    })
}

fn family_name(i: usize) -> String {
    format!("Benchfamily{i:05}")
}

/// Creates the Patients the Observations refer to (not measured).
async fn create_patients(client: &Client, count: usize) -> Result<Vec<String>> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let id = format!("bench-patient-{i}");
        let body = json!({
            "resourceType": "Patient",
            "id": id,
            "name": [{ "family": family_name(i), "given": ["Alex"] }],
            "gender": if i % 2 == 0 { "female" } else { "male" },
            "birthDate": format!("19{:02}-01-01", 30 + i % 60)
        });
        let url = format!("{}/Patient/{id}", client.base);
        let request = client
            .http
            .put(url)
            .header("Content-Type", "application/fhir+json")
            .body(serde_json::to_vec(&body)?);
        client.send(request).await?;
        ids.push(id);
    }
    Ok(ids)
}

/// Reads the Synthea Bundles, split into `*Information*` Bundles and
/// patient Bundles.
fn synthea_bundles(dir: &Path) -> Result<(Vec<Value>, Vec<Value>)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let mut information = Vec::new();
    let mut patients = Vec::new();
    for path in paths {
        let bytes = std::fs::read(&path)?;
        let bundle: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing {}", path.display()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.contains("Information") {
            information.push(bundle);
        } else {
            patients.push(bundle);
        }
    }
    Ok((information, patients))
}

fn entry_count(bundle: &Value) -> usize {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

async fn run(options: Options) -> Result<()> {
    let ward = match options.ward.clone() {
        Some(path) => path,
        None => default_ward()?,
    };
    if !ward.is_file() {
        bail!(
            "{} not found; run 'cargo build --release -p ward' first or pass --ward",
            ward.display()
        );
    }
    let clients = options.clients.max(1);
    let data = tempfile::tempdir()?;
    let (_server, pool) = start_server(&ward, data.path(), clients).await?;
    let first = pool.first().context("no clients")?.clone();
    println!("ward: {}", ward.display());
    println!("clients: {clients} (one HTTP/2 connection each)");

    let patients = Arc::new(create_patients(&first, options.patients.max(1)).await?);
    let mut rows = Vec::new();

    let created = Arc::new(std::sync::Mutex::new(Vec::with_capacity(options.creates)));
    let (ids, list) = (patients.clone(), created.clone());
    rows.push(
        measure(
            "create (POST Observation)",
            &pool,
            options.creates,
            move |c, i| {
                let patient = ids.get(i % ids.len().max(1)).cloned();
                let list = list.clone();
                async move {
                    let patient = patient.context("no Patients")?;
                    let url = format!("{}/Observation", c.base);
                    let request = c
                        .http
                        .post(url)
                        .header("Content-Type", "application/fhir+json")
                        .header("Prefer", "return=representation")
                        .body(serde_json::to_vec(&observation(&patient, i))?);
                    let body = c.send(request).await?;
                    let id = body["id"]
                        .as_str()
                        .context("the created Observation has no id")?
                        .to_owned();
                    list.lock().map_err(|_| anyhow::anyhow!("lock"))?.push(id);
                    Ok(1)
                }
            },
        )
        .await?,
    );

    let created: Arc<Vec<String>> =
        Arc::new(created.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone());
    let ids = created.clone();
    rows.push(
        measure(
            "read (GET Observation/id)",
            &pool,
            options.reads,
            move |c, i| {
                let id = ids.get((i * 7919) % ids.len().max(1)).cloned();
                async move {
                    let id = id.context("no Observations were created")?;
                    c.get(&format!("Observation/{id}")).await?;
                    Ok(1)
                }
            },
        )
        .await?,
    );

    let ids = patients.clone();
    rows.push(
        measure(
            "search Observation subject+code",
            &pool,
            options.searches,
            move |c, i| {
                let patient = ids.get((i * 31) % ids.len().max(1)).cloned();
                async move {
                    let patient = patient.context("no Patients")?;
                    let path = format!(
                        "Observation?subject=Patient/{patient}&code=http://loinc.org%7C8302-2&_sort=-date"
                    );
                    let bundle = c.get(&path).await?;
                    if bundle["total"].as_u64().unwrap_or(0) == 0 {
                        bail!("search by subject found nothing for {patient}");
                    }
                    Ok(1)
                }
            },
        )
        .await?,
    );

    let count = patients.len();
    rows.push(
        measure(
            "search Patient?name=",
            &pool,
            options.searches,
            move |c, i| {
                let name = family_name((i * 17) % count);
                async move {
                    let bundle = c.get(&format!("Patient?name={name}")).await?;
                    if bundle["total"].as_u64().unwrap_or(0) != 1 {
                        bail!("name search for {name} did not find exactly one Patient");
                    }
                    Ok(1)
                }
            },
        )
        .await?,
    );

    let synthea = options.synthea.clone().or_else(default_synthea);
    match synthea {
        Some(dir) => {
            let (information, patients) = synthea_bundles(&dir)?;
            for bundle in &information {
                first.post("", bundle).await?;
            }
            let info_resources: usize = information.iter().map(entry_count).sum();
            println!(
                "loaded {info_resources} resources of *Information* Bundles first (not timed)"
            );
            let rounds = options.import_rounds.max(1);
            let bundles = Arc::new(patients);
            let total = bundles.len() * rounds;
            let list = bundles.clone();
            rows.push(
                measure("import Synthea (resources)", &pool, total, move |c, i| {
                    let list = list.clone();
                    async move {
                        let bundle = list
                            .get(i % list.len().max(1))
                            .context("no patient Bundles")?;
                        c.post("", bundle).await?;
                        Ok(entry_count(bundle))
                    }
                })
                .await?,
            );
            println!(
                "import: {} patient Bundles x {rounds} rounds from {}",
                bundles.len(),
                dir.display()
            );
        }
        None => println!("no Synthea folder: pass --synthea DIR to measure the import rate"),
    }

    println!();
    println!(
        "| {:<34} | {:>7} | {:>7} | {:>8} | {:>7} | {:>7} |",
        "operation", "count", "seconds", "ops/s", "p50 ms", "p99 ms"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|",
        "-".repeat(36),
        "-".repeat(9),
        "-".repeat(9),
        "-".repeat(10),
        "-".repeat(9),
        "-".repeat(9)
    );
    for row in &rows {
        println!("{}", row.row());
    }
    println!();
    println!("For the import row, count and ops/s are resources; latencies are per Bundle.");
    Ok(())
}

fn main() -> Result<()> {
    let options = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(options))
}
