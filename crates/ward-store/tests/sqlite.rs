//! The SQLite store on its own: versions, transactions, search and the
//! integrity of sealed rows.

use serde_json::{Value, json};
use ward_crypto::MasterKey;
use ward_fhir::search::{Handling, parse_search};
use ward_store::{
    HistoryRequest, HistoryScope, Method, PageRequest, SqliteOptions, SqliteStore, Store,
    StoreError,
};

fn open(dir: &tempfile::TempDir, master: &MasterKey) -> SqliteStore {
    SqliteStore::open(&SqliteOptions::new(dir.path().join("ward.db")), master).unwrap()
}

fn patient(id: &str, family: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "id": id,
        "name": [{ "family": family, "given": ["Ada"] }],
        "birthDate": "1980-02-03",
    })
}

fn search(store: &SqliteStore, query: &[(&str, &str)]) -> Vec<String> {
    let pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let query = parse_search(Some("Patient"), &pairs, Handling::Strict).unwrap();
    let page = PageRequest {
        count: 100,
        snapshot_ttl_secs: 60,
        context: String::new(),
    };
    let result = store.search(&query, &page, None).unwrap();
    result.matches.into_iter().map(|v| v.id).collect()
}

#[test]
fn create_update_delete_keep_versions() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate().unwrap();
    let store = open(&dir, &master);

    let mut tx = store.begin().unwrap();
    let created = tx.create(patient("p1", "Lovelace")).unwrap();
    tx.commit().unwrap();
    assert_eq!(created.version, 1);
    assert_eq!(created.resource.as_ref().unwrap()["meta"]["versionId"], "1");

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

    let history = store
        .history(&HistoryRequest {
            scope: HistoryScope::Instance("Patient".into(), "p1".into()),
            since: None,
            before: None,
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

#[test]
fn dropped_transaction_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate().unwrap();
    let store = open(&dir, &master);
    let mut tx = store.begin().unwrap();
    tx.create(patient("p1", "Lovelace")).unwrap();
    drop(tx);
    assert!(matches!(
        store.read("Patient", "p1"),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn search_uses_blind_index_and_post_filter() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate().unwrap();
    let store = open(&dir, &master);
    let mut tx = store.begin().unwrap();
    tx.create(patient("p1", "Lovelace")).unwrap();
    tx.create(patient("p2", "Lovell")).unwrap();
    tx.create(patient("p3", "Babbage")).unwrap();
    tx.commit().unwrap();

    assert_eq!(search(&store, &[("family", "love")]), vec!["p1", "p2"]);
    assert_eq!(search(&store, &[("family", "lovelace")]), vec!["p1"]);
    // One character is below the indexed prefix length: answered by decryption.
    assert_eq!(search(&store, &[("family", "b")]), vec!["p3"]);
    assert_eq!(search(&store, &[("family:contains", "bag")]), vec!["p3"]);
    assert_eq!(search(&store, &[("family:exact", "Lovell")]), vec!["p2"]);
    assert_eq!(
        search(&store, &[("family", "lov"), ("_sort", "-family")]),
        vec!["p2", "p1"]
    );
}

#[test]
fn database_holds_no_plaintext_names() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate().unwrap();
    {
        let store = open(&dir, &master);
        let mut tx = store.begin().unwrap();
        tx.create(patient("p1", "Quixotically")).unwrap();
        tx.commit().unwrap();
    }
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let found = bytes
            .windows(12)
            .any(|w| w == b"Quixotically" || w == b"quixotically");
        assert!(!found, "plaintext name found in the database files");
    }
}

#[test]
fn moved_ciphertext_fails_integrity() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate().unwrap();
    let store = open(&dir, &master);
    let mut tx = store.begin().unwrap();
    tx.create(patient("p1", "Lovelace")).unwrap();
    tx.create(patient("p2", "Babbage")).unwrap();
    tx.commit().unwrap();
    drop(store);

    let conn = rusqlite::Connection::open(dir.path().join("ward.db")).unwrap();
    conn.execute(
        "UPDATE versions SET body = (SELECT body FROM versions WHERE id = 'p2') WHERE id = 'p1'",
        [],
    )
    .unwrap();
    drop(conn);

    let store = open(&dir, &master);
    assert!(matches!(
        store.read("Patient", "p1"),
        Err(StoreError::Integrity(_))
    ));
    assert!(store.read("Patient", "p2").is_ok());
}

#[test]
fn wrong_master_key_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate().unwrap();
    drop(open(&dir, &master));
    let other = MasterKey::generate().unwrap();
    let result = SqliteStore::open(&SqliteOptions::new(dir.path().join("ward.db")), &other);
    assert!(matches!(result, Err(StoreError::Key(_))));
}

#[test]
fn kv_records_are_sealed_and_single_use() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate().unwrap();
    let store = open(&dir, &master);

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

    store.kv_put("codes", "old", b"expired", Some(1)).unwrap();
    assert!(store.kv_get("codes", "old").unwrap().is_none());
    assert!(store.kv_insert_new("codes", "old", b"fresh", None).unwrap());
    drop(store);

    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(8).any(|w| w == b"Quixotic"),
            "record stored in clear"
        );
    }
}
