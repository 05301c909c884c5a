//! Group commit on SQLite: concurrent write transactions share commits, and
//! still every acknowledged write is committed, every rolled-back or failed
//! one leaves nothing behind, and the audit chain stays unbroken.

use std::sync::{Arc, Barrier};

use serde_json::{Value, json};
use time::OffsetDateTime;
use ward_audit::AuditRecord;
use ward_audit::chain::{chain_hash, leaf_hash};
use ward_audit::record::{Action, Agent, AgentKind, EventType, Outcome, Source};
use ward_crypto::MasterKey;
use ward_store::{SqliteOptions, SqliteStore, Store, StoreError};

const THREADS: usize = 12;
const ROUNDS: usize = 30;

fn patient(id: &str) -> Value {
    json!({ "resourceType": "Patient", "id": id, "name": [{ "family": "Group" }] })
}

fn record() -> AuditRecord {
    let mut record = AuditRecord::new(
        EventType::Rest,
        Action::Create,
        OffsetDateTime::now_utc(),
        Outcome::Success,
        Source {
            observer: "test".into(),
            site: None,
        },
    );
    let mut agent = Agent::new(AgentKind::User);
    agent.user_id = Some("user-1".into());
    agent.requestor = true;
    record.agents.push(agent);
    record
}

/// What one write of the race did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Committed,
    RolledBack,
    Rejected,
}

/// Round `round` of thread `thread`: commits two of every three writes,
/// drops the third, and makes every fifth one fail on a duplicate id.
fn write_once(store: &dyn Store, thread: usize, round: usize) -> (String, Ending) {
    let id = format!("t{thread}-r{round}");
    let mut tx = store.begin().expect("begin");
    tx.create(patient(&id)).expect("create");
    tx.append_audit(&record()).expect("append audit");
    if round % 5 == 4 {
        // A second create of the same id fails inside the transaction,
        // which is then dropped, as the server does with a failed request.
        let duplicate = tx.create(patient(&id));
        assert!(
            matches!(duplicate, Err(StoreError::AlreadyExists { .. })),
            "{duplicate:?}"
        );
        drop(tx);
        return (id, Ending::Rejected);
    }
    if round % 3 == 2 {
        drop(tx);
        return (id, Ending::RolledBack);
    }
    tx.commit().expect("commit");
    // An acknowledged write is visible on the reader connections, which see
    // only committed data.
    let read = store.read("Patient", &id);
    assert!(read.is_ok(), "{id} not readable after commit: {read:?}");
    (id, Ending::Committed)
}

fn race(store: Arc<dyn Store>) -> Vec<(String, Ending)> {
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|thread| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                (0..ROUNDS)
                    .map(|round| write_once(store.as_ref(), thread, round))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("writer thread"))
        .collect()
}

#[test]
fn acknowledged_writes_all_committed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ward.db");
    let master = MasterKey::generate().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&SqliteOptions::new(&path), &master).unwrap());
    let outcomes = race(store.clone());
    drop(store);

    // A new store on the same file sees only what reached the disk.
    let reopened = SqliteStore::open(&SqliteOptions::new(&path), &master).unwrap();
    let mut committed = 0;
    for (id, outcome) in &outcomes {
        let read = reopened.read("Patient", id);
        match outcome {
            Ending::Committed => {
                committed += 1;
                assert!(
                    read.is_ok(),
                    "{id} was acknowledged but is missing: {read:?}"
                );
            }
            Ending::RolledBack | Ending::Rejected => assert!(
                matches!(read, Err(StoreError::NotFound { .. })),
                "{id} was not committed but is stored: {read:?}"
            ),
        }
    }
    assert!(committed > THREADS * ROUNDS / 3, "{committed} commits");

    // One audit record per committed write, chained without gaps.
    let head = reopened.audit_head().unwrap();
    assert_eq!(head.size, committed as u64);
    let rows = reopened.audit_rows(0, committed + 10).unwrap();
    assert_eq!(rows.len(), committed);
    let mut prev = rows[0].prev_hash;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.seq, i as u64, "sequence gap at {i}");
        assert_eq!(row.prev_hash, prev, "chain broken at {i}");
        assert_eq!(row.leaf_hash, leaf_hash(&row.canonical), "leaf hash at {i}");
        assert_eq!(
            row.chain_hash,
            chain_hash(&prev, &row.leaf_hash),
            "chain hash at {i}"
        );
        prev = row.chain_hash;
    }
    assert_eq!(head.chain_head, prev);
}

#[test]
fn group_of_one_commits_each_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ward.db");
    let master = MasterKey::generate().unwrap();
    let mut options = SqliteOptions::new(&path);
    options.max_group_commit = 1;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&options, &master).unwrap());
    let outcomes = race(store.clone());
    let committed = outcomes
        .iter()
        .filter(|(_, o)| *o == Ending::Committed)
        .count();
    assert_eq!(store.audit_head().unwrap().size, committed as u64);
}

#[test]
fn kv_writes_join_group() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&SqliteOptions::new(dir.path().join("ward.db")), &master).unwrap(),
    );
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|thread| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for round in 0..ROUNDS {
                    let key = format!("k{thread}-{round}");
                    // Resource writes and key-value writes interleave on the
                    // one writer connection.
                    let mut tx = store.begin().unwrap();
                    tx.create(patient(&key)).unwrap();
                    tx.commit().unwrap();
                    assert!(store.kv_insert_new("test", &key, b"v", None).unwrap());
                    assert!(!store.kv_insert_new("test", &key, b"w", None).unwrap());
                    assert_eq!(
                        store.kv_take("test", &key).unwrap().as_deref(),
                        Some(&b"v"[..])
                    );
                    assert_eq!(store.kv_take("test", &key).unwrap(), None);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("writer thread");
    }
    assert!(store.kv_list("test", "").unwrap().is_empty());
}
