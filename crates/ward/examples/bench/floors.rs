//! The floors that the HTTP figures are compared against: the store used
//! directly (the same sealed writes with their audit records, without HTTP,
//! TLS, tokens or JSON validation) and the AEAD seal and open of one
//! resource.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;
use time::OffsetDateTime;
use ward_audit::AuditRecord;
use ward_audit::record::{Action, Agent, AgentKind, Entity, EventType, Outcome, Source};
use ward_crypto::{DataKey, MasterKey};
use ward_store::{Database, SqliteOptions, SqliteStore, Store};

use crate::http::Measured;

/// The store floor figures.
pub struct StoreFloor {
    /// Create plus audit record, one transaction each.
    pub write: Measured,
    /// Create without an audit record.
    pub write_unaudited: Measured,
    /// Read by id.
    pub read: Measured,
    /// Create plus audit record on SQLite with group commit off
    /// (`max_group_commit = 1`): one commit and fsync per write.
    pub write_ungrouped: Option<Measured>,
}

/// The audit record a create writes, shaped like the server's.
fn audit_record(patient: &str, id: &str) -> AuditRecord {
    let mut record = AuditRecord::new(
        EventType::Rest,
        Action::Create,
        OffsetDateTime::now_utc(),
        Outcome::Success,
        Source {
            observer: "bench".into(),
            site: None,
        },
    );
    let mut agent = Agent::new(AgentKind::User);
    agent.user_id = Some("bench".into());
    agent.requestor = true;
    record.agents.push(agent);
    if let Ok(entity) = Entity::patient(patient) {
        record.entities.push(entity);
    }
    if let Ok(entity) = Entity::resource("Observation", id, Some(1)) {
        record.entities.push(entity);
    }
    record
}

/// Runs `count` calls of `op(i)` on `threads` threads and records each
/// latency.
fn run_threads(
    threads: usize,
    count: usize,
    op: impl Fn(usize) -> Result<()> + Sync,
) -> Result<Measured> {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let parts: Vec<Result<Vec<Duration>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut latencies = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return Ok(latencies);
                        }
                        let begun = Instant::now();
                        op(i)?;
                        latencies.push(begun.elapsed());
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a floor thread panicked")))
            })
            .collect()
    });
    let elapsed = started.elapsed();
    let mut latencies = Vec::with_capacity(count);
    for part in parts {
        latencies.extend(part?);
    }
    let units = latencies.len();
    Ok(Measured::from_latencies(latencies, units, elapsed))
}

/// Measures the store opened directly on `database` with a new master key:
/// `count` creates with and without audit records and `count` reads, each
/// from `threads` threads. `resource(i)` gives the i-th resource; it must
/// name a Patient in `subject`.
pub fn store_floor(
    database: &Database,
    threads: usize,
    count: usize,
    resource: impl Fn(usize) -> Value + Sync,
) -> Result<StoreFloor> {
    let master = MasterKey::generate()?;
    let store: Arc<dyn Store> = ward_store::open(database, &master)
        .with_context(|| format!("opening the floor store {}", database.describe()))?;
    let write_ungrouped = match database {
        Database::Sqlite(path) => {
            let mut options = SqliteOptions::new(path.with_extension("ungrouped.db"));
            options.max_group_commit = 1;
            let ungrouped = SqliteStore::open(&options, &master)?;
            let measured = run_threads(threads, count, |i| {
                write_resource(&ungrouped, resource(i), &format!("floor-{i}"), true)
            })?;
            Some(measured)
        }
        Database::Postgres(_) => None,
    };
    let write_one = |i: usize, audited: bool| -> Result<()> {
        write_resource(store.as_ref(), resource(i), &format!("floor-{i}"), audited)
    };
    let write = run_threads(threads, count, |i| write_one(i, true))?;
    let write_unaudited = run_threads(threads, count, |i| write_one(count + i, false))?;
    let read = run_threads(threads, count, |i| {
        let id = format!("floor-{}", (i * 7919) % count.max(1));
        store.read("Observation", &id)?;
        Ok(())
    })?;
    Ok(StoreFloor {
        write,
        write_unaudited,
        read,
        write_ungrouped,
    })
}

/// Creates `body` as `id` in a transaction of its own, with the audit
/// record the server would append when `audited`.
fn write_resource(store: &dyn Store, mut body: Value, id: &str, audited: bool) -> Result<()> {
    body["id"] = Value::String(id.to_owned());
    let patient = body
        .pointer("/subject/reference")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("Patient/"))
        .unwrap_or("p")
        .to_owned();
    let mut tx = store.begin()?;
    tx.create(body)?;
    if audited {
        tx.append_audit(&audit_record(&patient, id))?;
    }
    tx.commit()?;
    Ok(())
}

/// AEAD figures for one resource of `bytes` bytes.
pub struct AeadFloor {
    pub bytes: usize,
    pub seal: Measured,
    pub open: Measured,
}

/// Seals and opens `resource` `count` times with a `DataKey` on one
/// thread, with a type/id/version string as associated data like the store
/// uses.
pub fn aead_floor(resource: &Value, count: usize) -> Result<AeadFloor> {
    let key = DataKey::generate()?;
    let plaintext = serde_json::to_vec(resource)?;
    let aad = b"Observation/0a8e6c3b-5d1c-4b53-9d4e-2f7c3b0c1d2e/1";
    let mut sealed = Vec::new();
    let mut latencies = Vec::with_capacity(count);
    let started = Instant::now();
    for _ in 0..count {
        let begun = Instant::now();
        sealed = key.seal(aad, &plaintext)?;
        latencies.push(begun.elapsed());
    }
    let seal = Measured::from_latencies(latencies, count, started.elapsed());
    let mut latencies = Vec::with_capacity(count);
    let started = Instant::now();
    for _ in 0..count {
        let begun = Instant::now();
        let opened = key.open(aad, &sealed)?;
        latencies.push(begun.elapsed());
        anyhow::ensure!(
            opened.len() == plaintext.len(),
            "AEAD round trip changed the length"
        );
    }
    let open = Measured::from_latencies(latencies, count, started.elapsed());
    Ok(AeadFloor {
        bytes: plaintext.len(),
        seal,
        open,
    })
}
