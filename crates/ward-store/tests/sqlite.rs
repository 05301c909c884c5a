//! The store on its own, on both backends: versions, transactions, search,
//! key-value records and the integrity of sealed rows. Every test runs once
//! on SQLite and once on a fresh PostgreSQL database, which is skipped with a
//! note when no server listens on 127.0.0.1:5432, unless
//! `WARD_REQUIRE_POSTGRES=1`.

use std::sync::{Arc, Barrier};

use serde_json::{Value, json};
use tempfile::TempDir;
use ward_crypto::MasterKey;
use ward_fhir::search::{Handling, parse_search};
use ward_store::{
    HistoryRequest, HistoryScope, Method, PageRequest, PostgresOptions, PostgresStore,
    SqliteOptions, SqliteStore, Store, StoreError,
};

/// The maintenance database that test databases are created from.
const PG_ADMIN_URL: &str = "postgres://127.0.0.1:5432/postgres?user=postgres&sslmode=disable";

/// Runs `sql` on `url` with a throwaway runtime; returns the rows' first
/// column as text.
fn pg_run(url: &str, sql: &str) -> Result<Vec<Option<String>>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(connection);
        let messages = client.simple_query(sql).await.map_err(|e| e.to_string())?;
        drop(client);
        let _ = driver.await;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
                _ => None,
            })
            .collect())
    })
}

/// A PostgreSQL database created for one test and dropped after it.
struct PgDatabase {
    name: String,
}

impl PgDatabase {
    /// Creates a database, or returns `None` (after printing why) when no
    /// server is reachable and PostgreSQL is not required.
    fn create() -> Option<PgDatabase> {
        let name = format!("ward_test_{}", uuid::Uuid::new_v4().simple());
        match pg_run(PG_ADMIN_URL, &format!("CREATE DATABASE {name}")) {
            Ok(_) => Some(PgDatabase { name }),
            Err(error) if std::env::var("WARD_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
                panic!("PostgreSQL is required (WARD_REQUIRE_POSTGRES=1) but failed: {error}")
            }
            Err(error) => {
                eprintln!("NOTE: skipping the PostgreSQL variant, no server reachable: {error}");
                None
            }
        }
    }

    fn url(&self) -> String {
        format!(
            "postgres://127.0.0.1:5432/{}?user=postgres&sslmode=disable",
            self.name
        )
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(error) = pg_run(PG_ADMIN_URL, &sql) {
            eprintln!("dropping test database {} failed: {error}", self.name);
        }
    }
}

/// Where a test's store lives.
enum Fixture {
    Sqlite(TempDir),
    Postgres(PgDatabase),
}

impl Fixture {
    fn sqlite() -> Option<Fixture> {
        Some(Fixture::Sqlite(tempfile::tempdir().unwrap()))
    }

    fn postgres() -> Option<Fixture> {
        PgDatabase::create().map(Fixture::Postgres)
    }

    fn try_open(&self, master: &MasterKey) -> Result<Box<dyn Store>, StoreError> {
        Ok(match self {
            Fixture::Sqlite(dir) => Box::new(SqliteStore::open(
                &SqliteOptions::new(dir.path().join("ward.db")),
                master,
            )?),
            Fixture::Postgres(db) => Box::new(PostgresStore::open(
                &db.url(),
                master,
                &PostgresOptions::default(),
            )?),
        })
    }

    fn open(&self, master: &MasterKey) -> Box<dyn Store> {
        self.try_open(master).unwrap()
    }

    /// True when `needle` occurs anywhere in the stored bytes: the database
    /// files on SQLite, every row of every table on PostgreSQL (bytea
    /// printed in escape form, so printable bytes appear as themselves).
    fn raw_contains(&self, needle: &str) -> bool {
        match self {
            Fixture::Sqlite(dir) => std::fs::read_dir(dir.path()).unwrap().any(|entry| {
                let bytes = std::fs::read(entry.unwrap().path()).unwrap();
                bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            }),
            Fixture::Postgres(db) => {
                let tables = pg_run(
                    &db.url(),
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
                )
                .unwrap();
                assert!(
                    tables.len() >= 10,
                    "the scan covers every table: {tables:?}"
                );
                tables.into_iter().flatten().any(|table| {
                    let sql = format!("SET bytea_output = 'escape'; SELECT t::text FROM {table} t");
                    pg_run(&db.url(), &sql)
                        .unwrap()
                        .into_iter()
                        .flatten()
                        .any(|row| row.contains(needle))
                })
            }
        }
    }

    /// Copies the sealed body of `p2` onto `p1`, as an attacker with write
    /// access to the database could.
    fn move_ciphertext(&self) {
        let sql = "UPDATE versions SET body = (SELECT body FROM versions WHERE id = 'p2') \
                   WHERE id = 'p1'";
        match self {
            Fixture::Sqlite(dir) => {
                let conn = rusqlite::Connection::open(dir.path().join("ward.db")).unwrap();
                conn.execute(sql, []).unwrap();
            }
            Fixture::Postgres(db) => {
                pg_run(&db.url(), sql).unwrap();
            }
        }
    }
}

/// Generates one test per backend for each listed test function.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    if let Some(fixture) = super::Fixture::sqlite() {
                        super::$name(&fixture);
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if let Some(fixture) = super::Fixture::postgres() {
                        super::$name(&fixture);
                    }
                }
            )*
        }
    };
}

on_both_backends!(
    create_update_delete_keep_versions,
    dropped_transaction_rolls_back,
    search_uses_blind_index_and_post_filter,
    database_holds_no_plaintext_names,
    moved_ciphertext_fails_integrity,
    wrong_master_key_cannot_open,
    kv_records_are_sealed_and_single_use,
    search_pages_continue_on_another_store,
    history_pages_newest_first,
    concurrent_if_match_has_one_winner,
    concurrent_conditional_creates_make_one,
    last_updated_increases,
);

fn patient(id: &str, family: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "id": id,
        "name": [{ "family": family, "given": ["Ada"] }],
        "birthDate": "1980-02-03",
    })
}

fn query(pairs: &[(&str, &str)]) -> ward_fhir::search::SearchQuery {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    parse_search(Some("Patient"), &pairs, Handling::Strict).unwrap()
}

fn page_request(count: usize) -> PageRequest {
    PageRequest {
        count,
        snapshot_ttl_secs: 60,
        context: "ctx".to_owned(),
    }
}

fn search(store: &dyn Store, pairs: &[(&str, &str)]) -> Vec<String> {
    let result = store
        .search(&query(pairs), &page_request(100), None)
        .unwrap();
    result.matches.into_iter().map(|v| v.id).collect()
}

fn create_update_delete_keep_versions(fixture: &Fixture) {
    let master = MasterKey::generate().unwrap();
    let store = fixture.open(&master);

    let mut tx = store.begin().unwrap();
    let created = tx.create(patient("p1", "Lovelace")).unwrap();
    tx.commit().unwrap();
    assert_eq!(created.version, 1);
    assert_eq!(created.resource.as_ref().unwrap()["meta"]["versionId"], "1");

    let mut tx = store.begin().unwrap();
    let duplicate = tx.create(patient("p1", "Again"));
    assert!(matches!(duplicate, Err(StoreError::AlreadyExists { .. })));
    drop(tx);

    let mut tx = store.begin().unwrap();
    let (updated, was_created) = tx.update(patient("p1", "Byron"), Some(1)).unwrap();
    tx.commit().unwrap();
    assert!(!was_created);
    assert_eq!(updated.version, 2);

    let mut tx = store.begin().unwrap();
    let stale = tx.update(patient("p1", "Stale"), Some(1));
    assert!(matches!(
        stale,
        Err(StoreError::VersionConflict { current: 2, .. })
    ));
    drop(tx);

    let mut tx = store.begin().unwrap();
    let marker = tx.delete("Patient", "p1", None).unwrap().unwrap();
    tx.commit().unwrap();
    assert_eq!(marker.version, 3);
    assert!(matches!(
        store.read("Patient", "p1"),
        Err(StoreError::Gone { .. })
    ));
    assert_eq!(
        store.vread("Patient", "p1", 1).unwrap().resource.unwrap()["name"][0]["family"],
        "Lovelace"
    );
    assert!(search(store.as_ref(), &[("family", "byron")]).is_empty());

    let history = store
        .history(&HistoryRequest {
            scope: HistoryScope::Instance("Patient".into(), "p1".into()),
            since: None,
            at: None,
            count: 10,
            cursor: None,
        })
        .unwrap();
    let methods: Vec<Method> = history.versions.iter().map(|v| v.method).collect();
    assert_eq!(
        methods,
        vec![Method::Delete, Method::Update, Method::Create]
    );
}

fn dropped_transaction_rolls_back(fixture: &Fixture) {
    let master = MasterKey::generate().unwrap();
    let store = fixture.open(&master);
    let mut tx = store.begin().unwrap();
    tx.create(patient("p1", "Lovelace")).unwrap();
    drop(tx);
    assert!(matches!(
        store.read("Patient", "p1"),
        Err(StoreError::NotFound { .. })
    ));
    // The connection is usable again after the rollback.
    let mut tx = store.begin().unwrap();
    tx.create(patient("p1", "Lovelace")).unwrap();
    tx.commit().unwrap();
    assert!(store.read("Patient", "p1").is_ok());
}

fn search_uses_blind_index_and_post_filter(fixture: &Fixture) {
    let master = MasterKey::generate().unwrap();
    let store = fixture.open(&master);
    let mut tx = store.begin().unwrap();
    tx.create(patient("p1", "Lovelace")).unwrap();
    tx.create(patient("p2", "Lovell")).unwrap();
    tx.create(patient("p3", "Babbage")).unwrap();
    tx.commit().unwrap();
    let store = store.as_ref();

    assert_eq!(search(store, &[("family", "love")]), vec!["p1", "p2"]);
    assert_eq!(search(store, &[("family", "lovelace")]), vec!["p1"]);
    // One character is below the indexed prefix length: answered by decryption.
    assert_eq!(search(store, &[("family", "b")]), vec!["p3"]);
    assert_eq!(search(store, &[("family:contains", "bag")]), vec!["p3"]);
    assert_eq!(search(store, &[("family:exact", "Lovell")]), vec!["p2"]);
    assert_eq!(
        search(store, &[("family", "lov"), ("_sort", "-family")]),
        vec!["p2", "p1"]
    );
    assert_eq!(search(store, &[("_sort", "-_id")]), vec!["p3", "p2", "p1"]);
    assert_eq!(search(store, &[("birthdate", "1980")]).len(), 3);
    assert!(search(store, &[("birthdate", "lt1970")]).is_empty());
    assert_eq!(search(store, &[("_id", "p2,p3")]), vec!["p2", "p3"]);
}

fn database_holds_no_plaintext_names(fixture: &Fixture) {
    let master = MasterKey::generate().unwrap();
    {
        let store = fixture.open(&master);
        let mut tx = store.begin().unwrap();
        tx.create(patient("p1", "Quixotically")).unwrap();
        tx.commit().unwrap();
        assert_eq!(
            search(store.as_ref(), &[("family", "quixotic")]),
            vec!["p1"]
        );
    }
    // The scan itself finds what is stored in clear: the resource id.
    assert!(fixture.raw_contains("p1"), "the scan reads the stored rows");
    assert!(
        !fixture.raw_contains("Quixotically"),
        "plaintext name found"
    );
    assert!(
        !fixture.raw_contains("quixotically"),
        "normalized name found"
    );
}

fn moved_ciphertext_fails_integrity(fixture: &Fixture) {
    let master = MasterKey::generate().unwrap();
    let store = fixture.open(&master);
    let mut tx = store.begin().unwrap();
    tx.create(patient("p1", "Lovelace")).unwrap();
    tx.create(patient("p2", "Babbage")).unwrap();
    tx.commit().unwrap();
    drop(store);

    fixture.move_ciphertext();

    let store = fixture.open(&master);
    assert!(matches!(
        store.read("Patient", "p1"),
        Err(StoreError::Integrity(_))
    ));
    assert!(store.read("Patient", "p2").is_ok());
}

fn wrong_master_key_cannot_open(fixture: &Fixture) {
    let master = MasterKey::generate().unwrap();
    drop(fixture.open(&master));
    let other = MasterKey::generate().unwrap();
    let result = fixture.try_open(&other);
    assert!(matches!(result, Err(StoreError::Key(_))));
}

fn kv_records_are_sealed_and_single_use(fixture: &Fixture) {
    let master = MasterKey::generate().unwrap();
    let store = fixture.open(&master);

    store
        .kv_put("codes", "abc", b"Quixotic secret", None)
        .unwrap();
    assert_eq!(
        store.kv_get("codes", "abc").unwrap().as_deref(),
        Some(&b"Quixotic secret"[..])
    );
    assert!(!store.kv_insert_new("codes", "abc", b"other", None).unwrap());
    assert!(store.kv_insert_new("codes", "abd", b"other", None).unwrap());

    let listed: Vec<String> = store
        .kv_list("codes", "ab")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(listed, vec!["abc", "abd"]);

    assert!(store.kv_take("codes", "abc").unwrap().is_some());
    assert!(store.kv_take("codes", "abc").unwrap().is_none());
    assert!(store.kv_delete("codes", "abd").unwrap());
    assert!(!store.kv_delete("codes", "abd").unwrap());

    store.kv_put("codes", "old", b"expired", Some(1)).unwrap();
    assert!(store.kv_get("codes", "old").unwrap().is_none());
    assert!(store.kv_insert_new("codes", "old", b"fresh", None).unwrap());
    assert_eq!(store.blind("user", "ada"), store.blind("user", "ada"));
    assert_ne!(store.blind("user", "ada"), store.blind("user", "bob"));
    drop(store);

    assert!(!fixture.raw_contains("Quixotic"), "record stored in clear");
}

fn search_pages_continue_on_another_store(fixture: &Fixture) {
    let master = MasterKey::generate().unwrap();
    let first = fixture.open(&master);
    let mut tx = first.begin().unwrap();
    for i in 0..5 {
        tx.create(patient(&format!("p{i}"), "Paged")).unwrap();
    }
    tx.commit().unwrap();

    let page = first
        .search(&query(&[("family", "paged")]), &page_request(2), None)
        .unwrap();
    assert_eq!(page.total, 5);
    assert_eq!(page.matches.len(), 2);
    assert!(page.has_next());
    let snapshot = page.snapshot.clone().unwrap();

    // A second store on the same database stands in for another replica
    // (on SQLite, result sets live in memory, so the same store pages on).
    let second = match fixture {
        Fixture::Postgres(_) => fixture.open(&master),
        Fixture::Sqlite(_) => first,
    };
    let next = second.search_page(&snapshot, 2, 2, None).unwrap();
    assert_eq!(next.offset, 2);
    assert_eq!(next.context, "ctx");
    let ids: Vec<String> = next.matches.into_iter().map(|v| v.id).collect();
    assert_eq!(ids, vec!["p2", "p3"]);
    assert!(matches!(
        second.search_page("no-such-snapshot", 0, 2, None),
        Err(StoreError::SnapshotExpired(_))
    ));
}

fn history_pages_newest_first(fixture: &Fixture) {
    let master = MasterKey::generate().unwrap();
    let store = fixture.open(&master);
    for i in 0..5 {
        let mut tx = store.begin().unwrap();
        tx.update(patient("h1", &format!("Name{i}")), None).unwrap();
        tx.commit().unwrap();
    }
    let mut request = HistoryRequest {
        scope: HistoryScope::Type("Patient".into()),
        since: None,
        at: None,
        count: 2,
        cursor: None,
    };
    let mut versions = Vec::new();
    loop {
        let page = store.history(&request).unwrap();
        assert_eq!(page.total, 5);
        versions.extend(page.versions.iter().map(|v| v.version));
        match page.next_cursor {
            Some(cursor) => request.cursor = Some(cursor),
            None => break,
        }
    }
    assert_eq!(versions, vec![5, 4, 3, 2, 1]);
}

/// Runs `work` on `threads` threads at once, each with its own store handle
/// (separate stores on PostgreSQL, like replicas); returns the results.
fn race<T: Send + 'static>(
    stores: Vec<Arc<dyn Store>>,
    threads: usize,
    work: impl Fn(&dyn Store, usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(threads));
    let work = Arc::new(work);
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            let barrier = barrier.clone();
            let work = work.clone();
            std::thread::spawn(move || {
                barrier.wait();
                work(store.as_ref(), i)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn replica_stores(fixture: &Fixture, master: &MasterKey) -> Vec<Arc<dyn Store>> {
    let first: Arc<dyn Store> = Arc::from(fixture.open(master));
    match fixture {
        Fixture::Postgres(_) => vec![first, Arc::from(fixture.open(master))],
        Fixture::Sqlite(_) => vec![first],
    }
}

fn concurrent_if_match_has_one_winner(fixture: &Fixture) {
    let master = MasterKey::generate().unwrap();
    let stores = replica_stores(fixture, &master);
    let mut tx = stores[0].begin().unwrap();
    tx.create(patient("race", "Start")).unwrap();
    tx.commit().unwrap();

    let results = race(stores.clone(), 10, |store, i| {
        let mut tx = store.begin()?;
        let (version, _) = tx.update(patient("race", &format!("Racer{i}")), Some(1))?;
        tx.commit()?;
        Ok::<u64, StoreError>(version.version)
    });
    let winners = results.iter().filter(|r| matches!(r, Ok(2))).count();
    let conflicts = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::VersionConflict { current: 2, .. })))
        .count();
    assert_eq!(winners, 1, "{results:?}");
    assert_eq!(conflicts, 9, "{results:?}");
    assert_eq!(stores[0].read("Patient", "race").unwrap().version, 2);
}

fn concurrent_conditional_creates_make_one(fixture: &Fixture) {
    let master = MasterKey::generate().unwrap();
    let stores = replica_stores(fixture, &master);
    let results = race(stores.clone(), 10, |store, i| {
        let criteria = query(&[("family", "conditional")]);
        let mut tx = store.begin()?;
        let found = tx.search_keys(&criteria, 1)?;
        if !found.is_empty() {
            return Ok(false);
        }
        tx.create(patient(&format!("c{i}"), "Conditional"))?;
        tx.commit()?;
        Ok::<bool, StoreError>(true)
    });
    let created = results.iter().filter(|r| matches!(r, Ok(true))).count();
    assert_eq!(created, 1, "{results:?}");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(
        search(stores[0].as_ref(), &[("family", "conditional")]).len(),
        1
    );
}

fn last_updated_increases(fixture: &Fixture) {
    let master = MasterKey::generate().unwrap();
    let store = fixture.open(&master);
    let mut tx = store.begin().unwrap();
    let a = tx.create(patient("t1", "First")).unwrap();
    let b = tx.create(patient("t2", "Second")).unwrap();
    let (c, _) = tx.update(patient("t1", "Third"), None).unwrap();
    tx.commit().unwrap();
    assert!(a.last_updated < b.last_updated);
    assert!(b.last_updated < c.last_updated);
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1_000_000;
    assert!(
        (c.last_updated - now).abs() < 60_000_000,
        "lastUpdated is near now"
    );
}

#[test]
fn postgres_schema_is_checked_and_migrated() {
    let Some(db) = PgDatabase::create() else {
        return;
    };
    let report = PostgresStore::migrate(&db.url()).unwrap();
    assert_eq!(report.from, 0);
    assert_eq!(report.to, ward_store::POSTGRES_SCHEMA_VERSION);
    let again = PostgresStore::migrate(&db.url()).unwrap();
    assert_eq!(again.from, again.to);

    let master = MasterKey::generate().unwrap();
    let store = PostgresStore::open(&db.url(), &master, &PostgresOptions::default()).unwrap();
    assert_eq!(
        store.schema_version().unwrap(),
        ward_store::POSTGRES_SCHEMA_VERSION
    );
    let mut tx = store.begin().unwrap();
    tx.create(patient("m1", "Migrated")).unwrap();
    tx.commit().unwrap();
    drop(store);

    // A database one migration behind is refused until migrated.
    let last = ward_store::POSTGRES_SCHEMA_VERSION;
    if last >= 2 {
        let sql = format!(
            "DELETE FROM schema_migrations WHERE version = {last}; \
             DROP TABLE store_keys"
        );
        pg_run(&db.url(), &sql).unwrap();
        let Err(StoreError::Database(message)) =
            PostgresStore::open(&db.url(), &master, &PostgresOptions::default())
        else {
            panic!("an older schema was accepted");
        };
        assert!(message.contains("ward migrate"), "{message}");
        let report = PostgresStore::migrate(&db.url()).unwrap();
        assert_eq!(report.from, last - 1);
        assert_eq!(report.to, last);
        let store = PostgresStore::open(&db.url(), &master, &PostgresOptions::default()).unwrap();
        assert!(store.read("Patient", "m1").is_ok());
    }

    // With its record gone, the first migration runs again and fails on the
    // existing tables; its transaction rolls back and leaves the data alone.
    pg_run(&db.url(), "DELETE FROM schema_migrations").unwrap();
    assert!(PostgresStore::migrate(&db.url()).is_err());
    let count = pg_run(&db.url(), "SELECT COUNT(*) FROM versions").unwrap();
    assert_eq!(count, vec![Some("1".to_owned())]);
    let recorded = pg_run(&db.url(), "SELECT COUNT(*) FROM schema_migrations").unwrap();
    assert_eq!(recorded, vec![Some("0".to_owned())]);

    // A schema newer than this build is refused.
    let sql = format!(
        "INSERT INTO schema_migrations (version, applied) VALUES ({}, 0)",
        ward_store::POSTGRES_SCHEMA_VERSION + 1
    );
    pg_run(&db.url(), &sql).unwrap();
    let Err(StoreError::Database(message)) =
        PostgresStore::open(&db.url(), &master, &PostgresOptions::default())
    else {
        panic!("a newer schema was accepted");
    };
    assert!(message.contains("newer"), "{message}");
}

#[test]
fn postgres_require_tls_is_rejected() {
    let master = MasterKey::generate().unwrap();
    let result = PostgresStore::open(
        "postgres://127.0.0.1:5432/none?user=postgres&sslmode=require",
        &master,
        &PostgresOptions::default(),
    );
    let Err(StoreError::Database(message)) = result else {
        panic!("sslmode=require was accepted");
    };
    assert!(message.contains("sslmode"), "{message}");
}
