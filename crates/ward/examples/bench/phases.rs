//! The measured phases of one backend run: load, CRUD, searches, import,
//! sync, the floors, and the memory figure for many stored resources.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::Options;
use crate::floors::{self, AeadFloor, StoreFloor};
use crate::http::{self, Client, Measured};
use crate::server::{Backend, BenchDatabase, ProcessStats, Server};
use crate::workload::{self, CLINICIAN, CODE, Synthea};

/// One measured HTTP operation with the server's CPU time during it.
pub struct Row {
    pub name: String,
    pub measured: Measured,
    /// Server CPU seconds (user + system) spent during the operation.
    pub cpu_secs: f64,
    /// The floor this operation is compared with.
    pub floor: Floor,
}

/// Which floor a row is compared with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Floor {
    Healthz,
    StoreWrite,
    StoreRead,
    None,
}

/// The sync figures of the clinician: the first and second pass.
pub struct Sync {
    pub first: SyncPass,
    pub second: SyncPass,
    pub changed: usize,
}

/// One pass of `[type]/_history?_since=` paging over every resource type.
pub struct SyncPass {
    pub elapsed: Duration,
    pub entries: usize,
    pub bytes: usize,
    pub pages: usize,
    /// Resource types whose history the clinician's role may not read.
    pub denied: Vec<String>,
}

/// Everything measured on one backend.
pub struct BackendResult {
    pub backend: Backend,
    pub clients: usize,
    pub patients: usize,
    pub panel: usize,
    pub rows: Vec<Row>,
    pub healthz: Row,
    pub store: StoreFloor,
    pub sync: Sync,
    pub server_hwm: u64,
    pub store_bytes: u64,
    pub resources: u64,
    pub versions: u64,
}

impl BackendResult {
    /// The row with `name`.
    pub fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }
}

/// Runs `work` and charges the server CPU time it took to the result.
async fn with_cpu<F>(server: &Server, name: &str, floor: Floor, work: F) -> Result<Row>
where
    F: std::future::Future<Output = Result<Measured>>,
{
    let before = server.stats()?;
    let measured = work.await.with_context(|| format!("measuring {name}"))?;
    let after = server.stats()?;
    Ok(Row {
        name: name.to_owned(),
        measured,
        cpu_secs: after.cpu_secs - before.cpu_secs,
        floor,
    })
}

/// An Observation created by the benchmark, with its current version for
/// `If-Match`.
struct Tracked {
    id: String,
    version: u64,
    body: Value,
}

type TrackedList = Arc<Vec<tokio::sync::Mutex<Tracked>>>;

/// Creates one Observation for `patient` and returns it with its version.
async fn create_observation(client: &Client, patient: &str, i: usize) -> Result<Tracked> {
    let body = workload::observation(patient, i);
    let request = client
        .http
        .post(format!("{}/Observation", client.base))
        .header("Content-Type", "application/fhir+json")
        .header("Prefer", "return=representation")
        .body(serde_json::to_vec(&body)?);
    let reply = client.send(request).await?;
    let id = reply.body["id"]
        .as_str()
        .context("the created Observation has no id")?
        .to_owned();
    let version = version_of(&reply.body)?;
    Ok(Tracked {
        id,
        version,
        body: reply.body,
    })
}

fn version_of(resource: &Value) -> Result<u64> {
    resource
        .pointer("/meta/versionId")
        .and_then(Value::as_str)
        .and_then(|v| v.parse().ok())
        .context("the response has no meta.versionId")
}

/// Updates a tracked Observation with `If-Match` on its current version.
async fn update_observation(
    client: &Client,
    tracked: &tokio::sync::Mutex<Tracked>,
    i: usize,
) -> Result<()> {
    let mut tracked = tracked.lock().await;
    let mut body = tracked.body.clone();
    body["valueQuantity"]["value"] = Value::from(150 + i % 50);
    let path = format!("Observation/{}", tracked.id);
    let reply = client.put(&path, &body, Some(tracked.version)).await?;
    tracked.version = version_of(&reply.body)?;
    tracked.body = reply.body;
    Ok(())
}

/// Posts the patient Bundles and returns the import row and the Patient
/// ids.
async fn import(
    server: &Server,
    pool: &[Client],
    options: &Options,
    synthea: Option<&Synthea>,
) -> Result<(Row, Vec<String>)> {
    let first = pool.first().context("no clients")?;
    let bundles: Vec<Value> = match synthea {
        Some(synthea) => {
            for bundle in &synthea.information {
                first.post("", bundle).await?;
            }
            (0..options.patients)
                .map(|i| {
                    workload::synthea_patient(&synthea.patients[i % synthea.patients.len()], i)
                })
                .collect()
        }
        None => (0..options.patients)
            .map(|i| workload::generated_patient(i, 70))
            .collect(),
    };
    let bundles = Arc::new(bundles);
    let ids = Arc::new(Mutex::new(vec![String::new(); bundles.len()]));
    let (list, found) = (bundles.clone(), ids.clone());
    let row = with_cpu(
        server,
        "transaction import (resources)",
        Floor::StoreWrite,
        async {
            http::measure(pool, bundles.len(), move |c, i| {
                let (list, found) = (list.clone(), found.clone());
                async move {
                    let bundle = &list[i];
                    let reply = c.post("", bundle).await?;
                    let id = workload::created_patient(bundle, &reply.body)
                        .context("the transaction response names no Patient")?;
                    found.lock().map_err(|_| anyhow::anyhow!("lock poisoned"))?[i] = id;
                    Ok(workload::entry_count(bundle))
                }
            })
            .await
        },
    )
    .await?;
    let ids = ids
        .lock()
        .map_err(|_| anyhow::anyhow!("lock poisoned"))?
        .clone();
    Ok((row, ids))
}

/// Pages through `[type]/_history?_since=` of each type as the clinician.
/// The system-level `_history` is not used because the role policy does
/// not grant it to clinicians.
async fn sync_pass(
    clinician: &Client,
    types: &[String],
    since: &str,
) -> Result<(SyncPass, String)> {
    let started = Instant::now();
    let mut pass = SyncPass {
        elapsed: Duration::ZERO,
        entries: 0,
        bytes: 0,
        pages: 0,
        denied: Vec::new(),
    };
    let mut server_time = None;
    for resource_type in types {
        let mut url = format!("{resource_type}/_history?_since={since}&_count=1000");
        loop {
            let Some(reply) = clinician.get_unless_forbidden(&url).await? else {
                pass.denied.push(resource_type.clone());
                break;
            };
            if server_time.is_none() {
                server_time = reply.body["meta"]["lastUpdated"]
                    .as_str()
                    .map(str::to_owned);
            }
            pass.pages += 1;
            pass.bytes += reply.bytes;
            pass.entries += workload::entry_count(&reply.body);
            let next = reply.body["link"].as_array().and_then(|links| {
                links
                    .iter()
                    .find(|l| l["relation"] == "next")
                    .and_then(|l| l["url"].as_str())
                    .map(str::to_owned)
            });
            match next {
                Some(next) => url = next,
                None => break,
            }
        }
    }
    pass.elapsed = started.elapsed();
    let server_time = server_time.context("the history Bundle has no meta.lastUpdated")?;
    Ok((pass, server_time))
}

/// Runs every phase on one backend.
pub async fn run_backend(
    ward: &std::path::Path,
    backend: Backend,
    options: &Options,
    synthea: Option<&Synthea>,
) -> Result<BackendResult> {
    let root = tempfile::tempdir()?;
    let data = root.path().join("data");
    println!("\n== {} ==", backend.name());
    let server = Server::start(ward, &data, backend).await?;
    let token = server.token("system/*.cruds", &[])?;
    let pool = http::clients(
        &server.ca,
        &server.base,
        &server.origin,
        &token,
        options.clients,
    )?;
    let first = pool[0].clone();
    let ops = options.ops.max(1);
    let mut rows = Vec::new();

    let (import_row, patients) = import(&server, &pool, options, synthea).await?;
    rows.push(import_row);
    let patients = Arc::new(patients);

    let healthz = with_cpu(&server, "GET /healthz", Floor::None, async {
        http::measure(&pool, ops, |c, _| async move {
            c.healthz().await?;
            Ok(1)
        })
        .await
    })
    .await?;

    // Creates, keeping each Observation with its version for updates.
    let created: Arc<Mutex<Vec<Tracked>>> = Arc::new(Mutex::new(Vec::with_capacity(ops)));
    let (ids, list) = (patients.clone(), created.clone());
    rows.push(
        with_cpu(&server, "create Observation", Floor::StoreWrite, async {
            http::measure(&pool, ops, move |c, i| {
                let patient = ids[i % ids.len()].clone();
                let list = list.clone();
                async move {
                    let tracked = create_observation(&c, &patient, i).await?;
                    list.lock()
                        .map_err(|_| anyhow::anyhow!("lock poisoned"))?
                        .push(tracked);
                    Ok(1)
                }
            })
            .await
        })
        .await?,
    );
    let tracked: Vec<Tracked> = std::mem::take(
        &mut *created
            .lock()
            .map_err(|_| anyhow::anyhow!("lock poisoned"))?,
    );
    let tracked: TrackedList = Arc::new(tracked.into_iter().map(tokio::sync::Mutex::new).collect());
    let mut ids = Vec::with_capacity(tracked.len());
    for t in tracked.iter() {
        ids.push(t.lock().await.id.clone());
    }
    let ids = Arc::new(ids);

    let read_ids = ids.clone();
    rows.push(
        with_cpu(&server, "read Observation", Floor::StoreRead, async {
            http::measure(&pool, ops, move |c, i| {
                let id = read_ids[(i * 7919) % read_ids.len()].clone();
                async move {
                    c.get(&format!("Observation/{id}")).await?;
                    Ok(1)
                }
            })
            .await
        })
        .await?,
    );

    let list = tracked.clone();
    rows.push(
        with_cpu(
            &server,
            "update Observation (If-Match)",
            Floor::StoreWrite,
            async {
                http::measure(&pool, ops, move |c, i| {
                    let list = list.clone();
                    async move {
                        update_observation(&c, &list[(i * 31) % list.len()], i).await?;
                        Ok(1)
                    }
                })
                .await
            },
        )
        .await?,
    );

    // Mixed CRUD: 1 create, 2 reads and 1 update with If-Match of every 4.
    let (list, read_ids, owners) = (tracked.clone(), ids.clone(), patients.clone());
    rows.push(
        with_cpu(&server, "mixed CRUD (1C:2R:1U)", Floor::Healthz, async {
            http::measure(&pool, ops, move |c, i| {
                let (list, read_ids, owners) = (list.clone(), read_ids.clone(), owners.clone());
                async move {
                    match i % 4 {
                        0 => {
                            create_observation(&c, &owners[i % owners.len()], i).await?;
                        }
                        3 => update_observation(&c, &list[(i * 17) % list.len()], i).await?,
                        _ => {
                            let id = &read_ids[(i * 7919) % read_ids.len()];
                            c.get(&format!("Observation/{id}")).await?;
                        }
                    }
                    Ok(1)
                }
            })
            .await
        })
        .await?,
    );

    let count = patients.len();
    rows.push(
        with_cpu(&server, "search Patient?name=", Floor::Healthz, async {
            http::measure(&pool, ops, move |c, i| async move {
                let name = workload::family_name((i * 17) % count);
                let reply = c.get(&format!("Patient?name={name}")).await?;
                if reply.body["total"].as_u64() != Some(1) {
                    bail!("the name search for {name} did not find exactly one Patient");
                }
                Ok(1)
            })
            .await
        })
        .await?,
    );

    let owners = patients.clone();
    rows.push(
        with_cpu(&server, "search Observation patient+code+date", Floor::Healthz, async {
            http::measure(&pool, ops, move |c, i| {
                let patient = owners[(i * 31) % owners.len()].clone();
                async move {
                    let path = format!(
                        "Observation?subject=Patient/{patient}&code=http://loinc.org%7C{CODE}&date=ge2015-01-01&_sort=-date"
                    );
                    let reply = c.get(&path).await?;
                    if reply.body["total"].as_u64().unwrap_or(0) == 0 {
                        bail!("the Observation search found nothing for Patient/{patient}");
                    }
                    Ok(1)
                }
            })
            .await
        })
        .await?,
    );

    let owners = patients.clone();
    rows.push(
        with_cpu(&server, "search Observation _include=subject", Floor::Healthz, async {
            http::measure(&pool, ops, move |c, i| {
                let patient = owners[(i * 13) % owners.len()].clone();
                async move {
                    let path = format!(
                        "Observation?subject=Patient/{patient}&code=http://loinc.org%7C{CODE}&_count=20&_include=Observation:subject"
                    );
                    let reply = c.get(&path).await?;
                    let included = reply.body["entry"].as_array().is_some_and(|entries| {
                        entries.iter().any(|e| e["search"]["mode"] == "include")
                    });
                    if !included {
                        bail!("_include=Observation:subject returned no Patient for {patient}");
                    }
                    Ok(1)
                }
            })
            .await
        })
        .await?,
    );

    let sync = clinician_sync(&server, &first, &patients, &tracked, options, synthea).await?;

    let server_hwm = server.stats()?.hwm;
    let store_bytes = server.store_bytes()?;
    let (resources, versions) = count_rows(&server)?;
    drop(pool);
    drop(first);
    drop(server);

    // The floor runs on a store of its own, after the server stopped.
    let floor_database = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(BenchDatabase::create()?),
    };
    let database = match &floor_database {
        Some(db) => ward_store::Database::Postgres(db.url()),
        None => ward_store::Database::Sqlite(root.path().join("floor.db")),
    };
    let owners = patients.clone();
    let threads = options.clients;
    // The PostgreSQL store blocks on a runtime of its own, which must not
    // run inside this benchmark's runtime, so the floor runs on a plain
    // thread.
    let store = std::thread::spawn(move || {
        floors::store_floor(&database, threads, ops, move |i| {
            workload::observation(&owners[i % owners.len()], i)
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the store floor thread panicked"))??;
    drop(floor_database);

    Ok(BackendResult {
        backend,
        clients: options.clients,
        patients: patients.len(),
        panel: options.panel.max(1).min(patients.len()),
        rows,
        healthz,
        store,
        sync,
        server_hwm,
        store_bytes,
        resources,
        versions,
    })
}

/// Puts the first `panel` patients on the clinician's care team, then
/// measures a first sync, changes some of their Observations, and measures
/// the second sync from the first one's server time.
async fn clinician_sync(
    server: &Server,
    system: &Client,
    patients: &[String],
    tracked: &TrackedList,
    options: &Options,
    synthea: Option<&Synthea>,
) -> Result<Sync> {
    let panel: Vec<&String> = patients.iter().take(options.panel.max(1)).collect();
    let practitioner = serde_json::json!({
        "resourceType": "Practitioner",
        "id": "bench-clinician",
        "name": [{ "family": "Clinician", "given": ["Bench"] }]
    });
    system
        .put("Practitioner/bench-clinician", &practitioner, None)
        .await?;
    for patient in &panel {
        system
            .post("CareTeam", &workload::care_team(patient))
            .await?;
    }
    let token = server.token(
        "user/*.rs",
        &[
            "--role",
            "physician",
            "--fhir-user",
            CLINICIAN,
            "--subject",
            "bench-clinician",
        ],
    )?;
    let clinician = http::clients(&server.ca, &server.base, &server.origin, &token, 1)?
        .pop()
        .context("no clinician client")?;

    let types = workload::resource_types(synthea);
    let (first, server_time) = sync_pass(&clinician, &types, "2000-01-01T00:00:00Z").await?;
    // Changes up to 20 Observations of panel patients for the second sync.
    let mut changed = 0;
    for (i, entry) in tracked.iter().enumerate() {
        if changed >= 20 {
            break;
        }
        let on_panel = {
            let t = entry.lock().await;
            let subject = t.body["subject"]["reference"].as_str().unwrap_or("");
            panel.iter().any(|p| subject == format!("Patient/{p}"))
        };
        if on_panel {
            update_observation(system, entry, i).await?;
            changed += 1;
        }
    }
    // An instant holds only digits, '-', ':', '.', 'T', 'Z' and '+'.
    let since = server_time.replace(':', "%3A").replace('+', "%2B");
    let (second, _) = sync_pass(&clinician, &types, &since).await?;
    Ok(Sync {
        first,
        second,
        changed,
    })
}

/// Counts the current resources and all stored versions.
fn count_rows(server: &Server) -> Result<(u64, u64)> {
    let sql = "SELECT (SELECT COUNT(*) FROM resources), (SELECT COUNT(*) FROM versions)";
    let text = match &server.database {
        Some(database) => crate::server::psql(&database.name, sql)?,
        None => {
            let conn = rusqlite::Connection::open_with_flags(
                server.data.join("ward.db"),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            let (r, v): (i64, i64) =
                conn.query_row(sql, [], |row| Ok((row.get(0)?, row.get(1)?)))?;
            format!("{r}|{v}")
        }
    };
    let (r, v) = text
        .trim()
        .split_once('|')
        .with_context(|| format!("unexpected row counts '{}'", text.trim()))?;
    Ok((r.parse()?, v.parse()?))
}

/// The AEAD floor on a typical resource: the first Observation of the
/// Synthea sample when present, else a generated one.
pub fn aead(options: &Options) -> Result<AeadFloor> {
    let synthea = options.synthea.clone().or_else(workload::default_synthea);
    let resource = synthea
        .and_then(|dir| workload::read_synthea(&dir).ok())
        .and_then(|s| {
            s.patients.first().and_then(|b| {
                b["entry"].as_array().and_then(|entries| {
                    entries
                        .iter()
                        .map(|e| e["resource"].clone())
                        .find(|r| r["resourceType"] == "Observation")
                })
            })
        })
        .unwrap_or_else(|| workload::observation("example", 1));
    floors::aead_floor(&resource, 200_000)
}

/// The memory figure: resident memory of a SQLite server after loading
/// `options.memory_resources` resources.
pub struct Memory {
    pub resources: usize,
    pub load: Measured,
    pub after_start: ProcessStats,
    pub after_load: ProcessStats,
    pub after_reads: ProcessStats,
}

/// Loads many resources into a fresh SQLite server in transaction Bundles
/// of 500 and reads its memory before and after.
pub async fn memory(ward: &std::path::Path, options: &Options) -> Result<Memory> {
    const BUNDLE: usize = 500;
    println!(
        "\n== memory: {} resources on SQLite ==",
        options.memory_resources
    );
    let root = tempfile::tempdir()?;
    let server = Server::start(ward, &root.path().join("data"), Backend::Sqlite).await?;
    let token = server.token("system/*.cruds", &[])?;
    let pool = http::clients(
        &server.ca,
        &server.base,
        &server.origin,
        &token,
        options.clients,
    )?;
    let after_start = server.stats()?;
    let bundles = options.memory_resources.div_ceil(BUNDLE);
    let load = http::measure(&pool, bundles, |c, i| async move {
        let bundle = workload::bulk_bundle(i, BUNDLE);
        c.post("", &bundle).await?;
        Ok(BUNDLE)
    })
    .await?;
    let after_load = server.stats()?;
    // Reads spread over the data, so caches fill as in use.
    let reads = http::measure(&pool, 2000, move |c, i| async move {
        let name = workload::family_name(1_000_000 + (i * 7) % bundles.max(1));
        c.get(&format!("Patient?name={name}")).await?;
        Ok(1)
    })
    .await?;
    drop(reads);
    let after_reads = server.stats()?;
    Ok(Memory {
        resources: bundles * BUNDLE,
        load,
        after_start,
        after_load,
        after_reads,
    })
}
