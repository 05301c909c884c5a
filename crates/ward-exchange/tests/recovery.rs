//! Tests of crash and concurrency safety of the exchange records on a real
//! store. A message is filed exactly once, even when the receiver stops
//! before its filing commits or two deliveries race. The delivery loop never
//! overwrites a dispensing report, and a message is leased to one delivery
//! attempt at a time.
//!
//! A stop is simulated by dropping a store transaction without committing
//! it, which is what the database does with the open transaction of a
//! process that dies. The tests run on SQLite, and on PostgreSQL at
//! 127.0.0.1:5432 (a fresh database per test) with
//! `WARD_TEST_DATABASE=postgres`.

use std::process::Command;
use std::sync::{Arc, Barrier};

use serde_json::{Value, json};
use ward_crypto::MasterKey;
use ward_exchange::envelope::{self, Opened, ReceiveError, Seen};
use ward_exchange::outbox::{self, OutboxMessage, Status};
use ward_exchange::{OrgIdentity, Rejection, TrustEntry};
use ward_store::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore, Store, StoreError};

const NOW: i64 = 1_800_000_000;
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

/// A store for one test, with its directory and PostgreSQL database.
struct TestStore {
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
    database: Option<String>,
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Some(name) = &self.database {
            // FORCE ends the store's pooled connections.
            let _ = psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

fn psql(sql: &str) -> Result<(), String> {
    let output = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "5432",
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .map_err(|error| format!("run psql: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn sqlite(dir: &std::path::Path) -> SqliteStore {
    let master = MasterKey::generate().unwrap();
    SqliteStore::open(&SqliteOptions::new(dir.join("ward.db")), &master).unwrap()
}

/// Opens the backend `WARD_TEST_DATABASE` names (SQLite by default).
fn test_store() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    if std::env::var("WARD_TEST_DATABASE").as_deref() != Ok("postgres") {
        let store = sqlite(dir.path());
        return TestStore {
            store: Arc::new(store),
            _dir: dir,
            database: None,
        };
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!("ward_exchange_test_{}_{nanos}", std::process::id());
    psql(&format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|error| panic!("creating database {name} failed: {error}"));
    let url = format!("postgres://127.0.0.1:5432/{name}?user=postgres&sslmode=disable");
    let master = MasterKey::generate().unwrap();
    let store = PostgresStore::open(&url, &master, &PostgresOptions::default()).unwrap();
    TestStore {
        store: Arc::new(store),
        _dir: dir,
        database: Some(name),
    }
}

fn identity(name: &str) -> (tempfile::TempDir, OrgIdentity) {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate().unwrap();
    let identity = OrgIdentity::open_or_init(dir.path(), &master, name).unwrap();
    (dir, identity)
}

fn entry(identity: &OrgIdentity) -> TrustEntry {
    TrustEntry::for_identity(
        identity,
        "https://x.test/fhir/$process-message",
        CA_PEM,
        NOW + 3600,
    )
}

/// A sender, a receiver, and a way to seal attempt `n` of message `id`.
struct Pair {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    sender: OrgIdentity,
    receiver: OrgIdentity,
}

impl Pair {
    fn new() -> Self {
        let (a_dir, sender) = identity("Clinic A");
        let (b_dir, receiver) = identity("Pharmacy B");
        Self {
            _dirs: (a_dir, b_dir),
            sender,
            receiver,
        }
    }

    /// Opens delivery attempt `attempt` of message `id`: a fresh seal, as
    /// the outbox makes for every attempt.
    fn attempt(&self, id: &str, attempt: i64) -> Opened {
        let bundle = json!({ "resourceType": "Bundle", "type": "message", "entry": [] });
        let compact = envelope::seal(
            &self.sender,
            &entry(&self.receiver),
            id,
            &bundle,
            NOW + attempt,
        )
        .unwrap();
        let trusted = entry(&self.sender);
        envelope::open(&self.receiver, &compact, NOW + attempt, |_| {
            Ok(Some(trusted.clone()))
        })
        .unwrap()
    }

    fn ack(&self, id: &str) -> String {
        let response = json!({ "resourceType": "Bundle", "type": "message", "id": id });
        envelope::sign_ack(&self.receiver, &self.sender.id, id, &response, NOW).unwrap()
    }
}

fn filed_patient(id: &str, message_id: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "id": id,
        "meta": { "tag": [{ "system": "urn:ward:exchange:message", "code": message_id }] },
        "identifier": [{ "system": "urn:mrn", "value": "77" }]
    })
}

fn exists(store: &dyn Store, resource_type: &str, id: &str) -> bool {
    match store.read(resource_type, id) {
        Ok(_) => true,
        Err(StoreError::NotFound { .. }) => false,
        Err(error) => panic!("reading {resource_type}/{id} failed: {error}"),
    }
}

/// Files `opened` as the receiver does: the resources and the record of
/// the message id in one transaction. Returns whether it committed.
fn file(store: &dyn Store, opened: &Opened, resource_id: &str, ack: &str, commit: bool) -> bool {
    let mut tx = store.begin().unwrap();
    tx.create(filed_patient(resource_id, &opened.message_id))
        .unwrap();
    if !envelope::record(tx.as_mut(), opened, ack, NOW).unwrap() {
        return false;
    }
    if commit {
        tx.commit().unwrap();
    }
    commit
}

#[test]
fn receiver_stopping_before_commit_leaves_message_to_refile_once() {
    let test = test_store();
    let store = &*test.store;
    let pair = Pair::new();
    let ack = pair.ack("m-1");

    let first = pair.attempt("m-1", 0);
    assert_eq!(envelope::check(store, &first, NOW).unwrap(), Seen::New);
    // The receiver stops after filing, before the commit.
    assert!(!file(store, &first, "p-first", &ack, false));
    assert!(!exists(store, "Patient", "p-first"), "nothing was filed");

    // The sender's next attempt is filed: no claim is left to block it.
    let second = pair.attempt("m-1", 1);
    assert_eq!(envelope::check(store, &second, NOW).unwrap(), Seen::New);
    assert!(file(store, &second, "p-second", &ack, true));
    assert!(exists(store, "Patient", "p-second"));

    // A later attempt gets the stored acknowledgement and files nothing;
    // a filing that raced it cannot record the message a second time.
    let third = pair.attempt("m-1", 2);
    assert_eq!(
        envelope::check(store, &third, NOW).unwrap(),
        Seen::Filed(ack.clone())
    );
    assert!(!file(store, &third, "p-third", &ack, true));
    assert!(!exists(store, "Patient", "p-third"));
    // The envelopes already answered are replays.
    for opened in [&second, &third] {
        assert!(matches!(
            envelope::check(store, opened, NOW),
            Err(ReceiveError::Rejected(Rejection::Replayed(_)))
        ));
    }
}

#[test]
fn concurrent_deliveries_of_one_message_file_it_once() {
    let test = test_store();
    let pair = Arc::new(Pair::new());
    let ack = pair.ack("m-2");
    let attempts = 4;
    let barrier = Arc::new(Barrier::new(attempts));
    let handles: Vec<_> = (0..attempts)
        .map(|n| {
            let (store, pair, ack, barrier) = (
                test.store.clone(),
                pair.clone(),
                ack.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                let opened = pair.attempt("m-2", i64::try_from(n).unwrap());
                assert_eq!(envelope::check(&*store, &opened, NOW).unwrap(), Seen::New);
                barrier.wait();
                file(&*store, &opened, &format!("p-{n}"), &ack, true)
            })
        })
        .collect();
    let committed: Vec<bool> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(committed.iter().filter(|c| **c).count(), 1, "{committed:?}");
    let filed = (0..attempts)
        .filter(|n| exists(&*test.store, "Patient", &format!("p-{n}")))
        .count();
    assert_eq!(filed, 1, "the message was filed exactly once");
}

#[test]
fn claim_without_acknowledgement_from_earlier_versions_is_taken_over() {
    let test = test_store();
    let store = &*test.store;
    let pair = Pair::new();
    let opened = pair.attempt("m-3", 0);
    // An earlier receiver claimed the message, then stopped before filing.
    let key = format!("{}.m-3", pair.sender.id);
    let claim = json!({ "signatures": [opened.signature_digest], "ack": null });
    store
        .kv_put(
            envelope::NS_SEEN,
            &key,
            claim.to_string().as_bytes(),
            Some((NOW + 3600) * 1_000_000),
        )
        .unwrap();
    // Its exact envelope stays a replay; the next attempt is filed.
    assert!(matches!(
        envelope::check(store, &opened, NOW),
        Err(ReceiveError::Rejected(Rejection::Replayed(_)))
    ));
    let retry = pair.attempt("m-3", 1);
    assert_eq!(envelope::check(store, &retry, NOW).unwrap(), Seen::New);
    let ack = pair.ack("m-3");
    assert!(file(store, &retry, "p-retry", &ack, true));
    assert_eq!(
        envelope::check(store, &pair.attempt("m-3", 2), NOW).unwrap(),
        Seen::Filed(ack)
    );
}

fn queued(id: &str, now: i64) -> OutboxMessage {
    OutboxMessage {
        id: id.to_owned(),
        recipient: "org-pharmacy".to_owned(),
        sender_user: "dr-a".to_owned(),
        bundle: json!({ "resourceType": "Bundle" }),
        status: Status::Queued,
        created: now,
        next_attempt: now,
        give_up_at: now + 86_400,
        attempts: 0,
        last_error: None,
        response_code: None,
        delivered_at: None,
        subject: None,
    }
}

fn delivered(leased: &OutboxMessage, now: i64) -> OutboxMessage {
    let mut outcome = leased.clone();
    outcome.status = Status::Delivered;
    outcome.delivered_at = Some(now);
    outcome.response_code = Some("ok".to_owned());
    outcome
}

fn stored(store: &dyn Store, id: &str) -> OutboxMessage {
    outbox::get(store, id)
        .unwrap()
        .expect("the message is stored")
}

#[test]
fn dispensing_report_before_delivery_is_saved_stays_dispensed() {
    let test = test_store();
    let store = &*test.store;
    outbox::enqueue(store, &queued("rx-1", NOW)).unwrap();
    let leased = outbox::lease(store, "rx-1", NOW, 90).unwrap().unwrap();
    // The pharmacy files the prescription, dispenses and reports before
    // the delivery loop stores the acknowledgement.
    assert!(outbox::mark_dispensed(store, "rx-1", "org-pharmacy").unwrap());
    let after = outbox::finish_attempt(store, &leased, &delivered(&leased, NOW + 1))
        .unwrap()
        .unwrap();
    assert_eq!(after.status, Status::Dispensed);
    assert_eq!(after.delivered_at, Some(NOW + 1));
    assert_eq!(after.response_code.as_deref(), Some("ok"));
    assert_eq!(stored(store, "rx-1").status, Status::Dispensed);

    // Once dispensed, no outcome moves it back, and a report from another
    // organization changes nothing.
    let mut failed = leased.clone();
    failed.status = Status::Failed;
    outbox::finish_attempt(store, &leased, &failed).unwrap();
    assert_eq!(stored(store, "rx-1").status, Status::Dispensed);
    assert!(!outbox::mark_dispensed(store, "rx-1", "org-other").unwrap());
}

#[test]
fn lease_gives_a_message_to_one_attempt_until_it_runs_out() {
    let test = test_store();
    let store = &*test.store;
    outbox::enqueue(store, &queued("m-4", NOW)).unwrap();
    let first = outbox::lease(store, "m-4", NOW, 90).unwrap().unwrap();
    assert_eq!(first.attempts, 1);
    assert!(
        outbox::lease(store, "m-4", NOW + 89, 90).unwrap().is_none(),
        "a second replica must not send the message while the first attempt runs"
    );
    assert!(outbox::due(store, NOW + 89).unwrap().is_empty());

    // The first attempt's process stopped; the lease runs out.
    let second = outbox::lease(store, "m-4", NOW + 90, 90).unwrap().unwrap();
    assert_eq!(second.attempts, 2);
    // A late retry from the first attempt does not take the message back.
    let mut retry = first.clone();
    retry.next_attempt = NOW + 95;
    retry.last_error = Some("timed out".to_owned());
    outbox::finish_attempt(store, &first, &retry).unwrap();
    assert_eq!(stored(store, "m-4").next_attempt, NOW + 180);
    // The attempt that holds the lease delivers; the message is final.
    outbox::finish_attempt(store, &second, &delivered(&second, NOW + 91)).unwrap();
    let done = stored(store, "m-4");
    assert_eq!(done.status, Status::Delivered);
    assert!(
        outbox::lease(store, "m-4", NOW + 1000, 90)
            .unwrap()
            .is_none()
    );
    let mut failed = first.clone();
    failed.status = Status::Failed;
    outbox::finish_attempt(store, &first, &failed).unwrap();
    assert_eq!(stored(store, "m-4").status, Status::Delivered);
}

#[test]
fn retry_is_scheduled_by_the_attempt_holding_the_lease() {
    let test = test_store();
    let store = &*test.store;
    outbox::enqueue(store, &queued("m-5", NOW)).unwrap();
    let leased = outbox::lease(store, "m-5", NOW, 90).unwrap().unwrap();
    let mut retry = leased.clone();
    retry.next_attempt = NOW + 4;
    retry.last_error = Some("connection refused".to_owned());
    outbox::finish_attempt(store, &leased, &retry).unwrap();
    let after = stored(store, "m-5");
    assert_eq!(after.status, Status::Queued);
    assert_eq!(after.next_attempt, NOW + 4);
    assert_eq!(after.attempts, 1);
    assert_eq!(outbox::due(store, NOW + 4).unwrap().len(), 1);
}

#[test]
fn concurrent_leases_give_the_message_to_one_replica() {
    let test = test_store();
    outbox::enqueue(&*test.store, &queued("m-6", NOW)).unwrap();
    let replicas = 6;
    let barrier = Arc::new(Barrier::new(replicas));
    let handles: Vec<_> = (0..replicas)
        .map(|_| {
            let (store, barrier) = (test.store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                outbox::lease(&*store, "m-6", NOW, 90).unwrap().is_some()
            })
        })
        .collect();
    let won = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|won| *won)
        .count();
    assert_eq!(won, 1);
    assert_eq!(stored(&*test.store, "m-6").attempts, 1);
}

#[test]
fn concurrent_report_and_delivery_end_dispensed() {
    let test = test_store();
    for round in 0..10 {
        let id = format!("m-7-{round}");
        outbox::enqueue(&*test.store, &queued(&id, NOW)).unwrap();
        let leased = outbox::lease(&*test.store, &id, NOW, 90).unwrap().unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let report = {
            let (store, barrier, id) = (test.store.clone(), barrier.clone(), id.clone());
            std::thread::spawn(move || {
                barrier.wait();
                outbox::mark_dispensed(&*store, &id, "org-pharmacy").unwrap()
            })
        };
        let delivery = {
            let (store, barrier) = (test.store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                outbox::finish_attempt(&*store, &leased, &delivered(&leased, NOW + 1)).unwrap();
            })
        };
        assert!(report.join().unwrap());
        delivery.join().unwrap();
        assert_eq!(stored(&*test.store, &id).status, Status::Dispensed, "{id}");
    }
}

#[test]
fn report_queued_in_a_transaction_that_rolls_back_is_not_stored() {
    let test = test_store();
    let store = &*test.store;
    let mut tx = store.begin().unwrap();
    tx.create(json!({ "resourceType": "MedicationDispense", "id": "d-1", "status": "completed" }))
        .unwrap();
    outbox::enqueue_in(tx.as_mut(), &queued("report-1", NOW)).unwrap();
    drop(tx);
    assert!(outbox::get(store, "report-1").unwrap().is_none());
    assert!(!exists(store, "MedicationDispense", "d-1"));

    let mut tx = store.begin().unwrap();
    tx.create(json!({ "resourceType": "MedicationDispense", "id": "d-1", "status": "completed" }))
        .unwrap();
    outbox::enqueue_in(tx.as_mut(), &queued("report-1", NOW)).unwrap();
    tx.commit().unwrap();
    assert_eq!(stored(store, "report-1").status, Status::Queued);
    assert!(exists(store, "MedicationDispense", "d-1"));
}
