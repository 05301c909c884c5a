//! Measures the audit log's cost on the SQLite store: audit appends per
//! second, and the share of a write's and a read's time spent on its audit
//! record. Run with
//! `cargo run --release -p ward-store --example audit_bench [-- ROUNDS]`.
//!
//! A write appends its record inside its own transaction, so its audit cost
//! is the append; the commit's fsync is shared with the write. A read
//! commits its record in a transaction of its own; the server groups the
//! records of concurrent reads into one commit, so this prints the cost for
//! one read alone and for a group of 8.

use std::time::{Duration, Instant};

use serde_json::json;
use time::OffsetDateTime;
use ward_audit::AuditRecord;
use ward_audit::record::{Action, Agent, AgentKind, Entity, EventType, Outcome, Source};
use ward_crypto::MasterKey;
use ward_store::{SqliteOptions, SqliteStore, Store};

fn record(patient: &str) -> AuditRecord {
    let mut record = AuditRecord::new(
        EventType::Rest,
        Action::Read,
        OffsetDateTime::now_utc(),
        Outcome::Success,
        Source {
            observer: "bench".into(),
            site: None,
        },
    );
    let mut agent = Agent::new(AgentKind::User);
    agent.user_id = Some("user-1".into());
    agent.requestor = true;
    record.agents.push(agent);
    if let Ok(entity) = Entity::patient(patient) {
        record.entities.push(entity);
    }
    if let Ok(entity) = Entity::resource("Observation", "obs-1", Some(1)) {
        record.entities.push(entity);
    }
    record
}

fn observation(i: usize) -> serde_json::Value {
    json!({
        "resourceType": "Observation",
        "id": format!("obs-{i}"),
        "status": "final",
        "code": { "coding": [{ "system": "http://loinc.org", "code": "8302-2" }] },
        "subject": { "reference": "Patient/p1" },
        "valueQuantity": { "value": 170.5, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm" },
    })
}

fn per_op(elapsed: Duration, count: usize) -> f64 {
    elapsed.as_secs_f64() / count as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(
        &SqliteOptions::new(dir.path().join("ward.db")),
        &MasterKey::generate()?,
    )?;
    let rec = record("p1");

    // Appends in batches of 500 per commit: the append rate itself.
    let batches = 10;
    let started = Instant::now();
    for _ in 0..batches {
        let mut tx = store.begin()?;
        for _ in 0..500 {
            tx.append_audit(&rec)?;
        }
        tx.commit()?;
    }
    let batched = started.elapsed();
    let appends = batches * 500;

    // Writes without and with their audit record, one commit each.
    let started = Instant::now();
    for i in 0..rounds {
        let mut tx = store.begin()?;
        tx.create(observation(i))?;
        tx.commit()?;
    }
    let write_plain = per_op(started.elapsed(), rounds);
    let started = Instant::now();
    for i in rounds..2 * rounds {
        let mut tx = store.begin()?;
        tx.create(observation(i))?;
        tx.append_audit(&rec)?;
        tx.commit()?;
    }
    let write_audited = per_op(started.elapsed(), rounds);

    // Reads, and the audit commit a read needs, alone and grouped by 8.
    let started = Instant::now();
    for i in 0..rounds {
        store.read("Observation", &format!("obs-{i}"))?;
    }
    let read = per_op(started.elapsed(), rounds);
    let started = Instant::now();
    for _ in 0..rounds {
        let mut tx = store.begin()?;
        tx.append_audit(&rec)?;
        tx.commit()?;
    }
    let read_audit_alone = per_op(started.elapsed(), rounds);
    let groups = rounds / 8;
    let started = Instant::now();
    for _ in 0..groups {
        let mut tx = store.begin()?;
        for _ in 0..8 {
            tx.append_audit(&rec)?;
        }
        tx.commit()?;
    }
    let read_audit_grouped = per_op(started.elapsed(), groups * 8);

    let ms = |s: f64| s * 1000.0;
    let share = |audit: f64, total: f64| 100.0 * audit / total;
    println!(
        "audit appends, 500 per commit: {:.0} records/s",
        appends as f64 / batched.as_secs_f64()
    );
    println!(
        "write (create + commit): {:.3} ms; with its audit record: {:.3} ms; audit share {:.1}%",
        ms(write_plain),
        ms(write_audited),
        share((write_audited - write_plain).max(0.0), write_audited)
    );
    println!(
        "read: {:.3} ms; its audit commit alone: {:.3} ms (share {:.1}%); grouped by 8: {:.3} ms (share {:.1}%)",
        ms(read),
        ms(read_audit_alone),
        share(read_audit_alone, read + read_audit_alone),
        ms(read_audit_grouped),
        share(read_audit_grouped, read + read_audit_grouped)
    );
    Ok(())
}
