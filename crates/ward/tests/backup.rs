//! `ward backup` and `ward restore` against real servers: a backup taken
//! while a server keeps writing restores into an empty store that a new
//! server then serves, and damaged, foreign or misdirected restores are
//! rejected without leaving rows behind. With `WARD_TEST_DATABASE=postgres`
//! every store is a PostgreSQL database.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::{Server, TestDatabase};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The files a new data directory needs to open a restored store.
const KEY_FILES: &[&str] = &[
    "master.key",
    "ca.pem",
    "ca.key.sealed",
    "signing.key.sealed",
    "audit.key.sealed",
    "backup.key.sealed",
];

fn ward(args: &[&str]) -> Output {
    Command::new(common::WARD)
        .args(args)
        .env_remove("WARD_MASTER_KEY")
        .env_remove("WARD_DATABASE")
        .output()
        .expect("run ward")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `--data DIR` plus `--database URL` when the store is PostgreSQL.
fn store_args(data: &Path, database: Option<&TestDatabase>) -> Vec<String> {
    let mut args = vec!["--data".to_owned(), data.display().to_string()];
    if let Some(database) = database {
        args.extend(["--database".to_owned(), database.url()]);
    }
    args
}

fn run(command: &[&str], store: &[String], extra: &[&str]) -> Output {
    let mut args: Vec<&str> = command.to_vec();
    args.extend(store.iter().map(String::as_str));
    args.extend(extra);
    ward(&args)
}

/// A new data directory holding only the key files of `source`, and a new
/// database when the suite runs on PostgreSQL.
struct Target {
    _root: tempfile::TempDir,
    data: PathBuf,
    database: Option<TestDatabase>,
}

impl Target {
    fn with_keys_of(source: &Path) -> Target {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir(&data).unwrap();
        for name in KEY_FILES {
            let from = source.join(name);
            if from.exists() {
                std::fs::copy(&from, data.join(name)).unwrap();
            }
        }
        let database = common::on_postgres().then(TestDatabase::create);
        Target {
            _root: root,
            data,
            database,
        }
    }

    fn store(&self) -> Vec<String> {
        store_args(&self.data, self.database.as_ref())
    }

    fn restore(&self, file: &Path) -> Output {
        run(&["restore"], &self.store(), &[file.to_str().unwrap()])
    }
}

async fn create_patient(server: &Server, token: &str, family: &str) -> Value {
    let patient = json!({"resourceType": "Patient", "name": [{"family": family}]});
    let (status, _, body) = server.post_json("/Patient", token, &patient).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// Loads patients, an observation, a user and audit records through `server`.
async fn load(server: &Server, token: &str) -> Vec<Value> {
    let mut resources = Vec::new();
    for index in 0..6 {
        resources.push(create_patient(server, token, &format!("Backupfamily{index}")).await);
    }
    let subject = format!("Patient/{}", resources[0]["id"].as_str().unwrap());
    let observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": subject},
        "valueQuantity": {"value": 72, "unit": "/min"}
    });
    let (status, _, body) = server.post_json("/Observation", token, &observation).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    resources.push(body);

    for resource in &resources {
        let path = format!(
            "/{}/{}",
            resource["resourceType"].as_str().unwrap(),
            resource["id"].as_str().unwrap()
        );
        let (status, _, _) = server.get(&path, token).await;
        assert_eq!(status, StatusCode::OK);
    }

    let store = store_args(server.data_dir(), server.database());
    let output = run(
        &["user", "add"],
        &store,
        &[
            "--username",
            "backup-nurse",
            "--role",
            "nurse",
            "--fhir-user",
            "Practitioner/n1",
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    resources
}

/// Takes a backup of `server` into `dir` while another task keeps writing.
async fn backup_while_writing(server: &Server, token: &str, dir: &Path) -> PathBuf {
    let out = dir.join("ward.backup");
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, writes) = (stop.clone(), writes.clone());
        let client = server.client();
        let url = server.url("/Patient");
        let token = token.to_owned();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let patient = json!({"resourceType": "Patient", "name": [{"family": "During"}]});
                let response = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/fhir+json")
                    .json(&patient)
                    .send()
                    .await
                    .expect("write during backup");
                assert_eq!(response.status(), StatusCode::CREATED);
                writes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let store = store_args(server.data_dir(), server.database());
    let out_arg = out.display().to_string();
    let output =
        tokio::task::spawn_blocking(move || run(&["backup"], &store, &["--out", &out_arg]))
            .await
            .unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("the writer saw only successful writes");
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        writes.load(Ordering::Relaxed) > 0,
        "no write ran during the backup"
    );
    assert!(
        text(&output).contains("backup written"),
        "{}",
        text(&output)
    );

    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    out
}

fn path_of(resource: &Value) -> String {
    format!(
        "/{}/{}",
        resource["resourceType"].as_str().unwrap(),
        resource["id"].as_str().unwrap()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_restores_into_new_store() {
    check_restore(Server::start()).await;
}

/// With the suite on PostgreSQL, a SQLite store restores into PostgreSQL.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_backup_restores_into_postgres() {
    if !common::on_postgres() {
        eprintln!(
            "NOTE: skipped, the target backend is PostgreSQL only with WARD_TEST_DATABASE=postgres"
        );
        return;
    }
    // The data directory's own SQLite file, named explicitly so the harness
    // does not give the source a PostgreSQL database. Commands without
    // --database then find the same file.
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let path = data.join("ward.db").display().to_string();
    check_restore(Server::start_in(root, data, &["--database", &path], &[])).await;
}

async fn check_restore(server: Server) {
    let token = server.token("system/*.cruds");
    let resources = load(&server, &token).await;
    let scratch = tempfile::tempdir().unwrap();
    let file = backup_while_writing(&server, &token, scratch.path()).await;

    let needle = b"Backupfamily";
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        !common::fixtures::contains(&bytes, needle),
        "plaintext in the backup"
    );

    let target = Target::with_keys_of(server.data_dir());
    let output = target.restore(&file);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("audit log verified"),
        "{}",
        text(&output)
    );

    let output = run(&["audit", "verify"], &target.store(), &[]);
    assert!(output.status.success(), "{}", text(&output));

    let output = run(&["user", "list"], &target.store(), &[]);
    assert!(text(&output).contains("backup-nurse"), "{}", text(&output));

    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    copy_dir(&target.data, &data);
    let url = target.database.as_ref().map(TestDatabase::url);
    let args: Vec<&str> = url
        .as_deref()
        .map(|url| vec!["--database", url])
        .unwrap_or_default();
    let restored = Server::start_in(root, data, &args, &[]);
    let token = restored.token("system/*.rs");
    for resource in &resources {
        let (status, _, body) = restored.get(&path_of(resource), &token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body,
            *resource,
            "{} changed in the restore",
            path_of(resource)
        );
    }
    let (status, _, bundle) = restored.get("/Patient?family=Backupfamily3", &token).await;
    assert_eq!(status, StatusCode::OK, "{bundle}");
    assert_eq!(
        bundle["total"], 1,
        "search by blind index after restore: {bundle}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn assert_rejected(output: &Output, expected: &str) {
    assert!(
        !output.status.success(),
        "restore succeeded: {}",
        text(output)
    );
    assert!(
        text(output).contains(expected),
        "expected '{expected}' in: {}",
        text(output)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_backups_are_rejected() {
    let server = Server::start();
    let token = server.token("system/*.cruds");
    load(&server, &token).await;
    let scratch = tempfile::tempdir().unwrap();
    let file = backup_while_writing(&server, &token, scratch.path()).await;
    let bytes = std::fs::read(&file).unwrap();
    let target = Target::with_keys_of(server.data_dir());

    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    let flipped_file = scratch.path().join("flipped.backup");
    std::fs::write(&flipped_file, &flipped).unwrap();
    assert_rejected(&target.restore(&flipped_file), "decryption failed");

    let truncated_file = scratch.path().join("truncated.backup");
    std::fs::write(&truncated_file, &bytes[..bytes.len() - 100]).unwrap();
    assert_rejected(&target.restore(&truncated_file), "truncated");

    let header_only = scratch.path().join("header.backup");
    std::fs::write(&header_only, &bytes[..20]).unwrap();
    assert_rejected(&target.restore(&header_only), "backup");

    let other = Server::start();
    let other_target = Target::with_keys_of(other.data_dir());
    drop(other);
    let output = other_target.restore(&file);
    assert_rejected(&output, "backup key");

    // Every rejection left the target empty, so the intact file restores.
    let output = target.restore(&file);
    assert!(output.status.success(), "{}", text(&output));
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_wrong_master_key_message() {
    let server = Server::start();
    let token = server.token("system/*.cruds");
    create_patient(&server, &token, "Wrongkey").await;
    let scratch = tempfile::tempdir().unwrap();
    let file = backup_while_writing(&server, &token, scratch.path()).await;
    let target = Target::with_keys_of(server.data_dir());
    let other = Server::start();
    std::fs::copy(
        other.data_dir().join("master.key"),
        target.data.join("master.key"),
    )
    .unwrap();
    drop(other);

    let output = target.restore(&file);
    assert_rejected(&output, "sealed under master key");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let cause = "start with the master key that sealed it";
    assert_eq!(stderr.matches(cause).count(), 1, "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_rejects_non_empty_store() {
    let server = Server::start();
    let token = server.token("system/*.cruds");
    create_patient(&server, &token, "Keepme").await;
    let scratch = tempfile::tempdir().unwrap();
    let file = backup_while_writing(&server, &token, scratch.path()).await;

    let store = store_args(server.data_dir(), server.database());
    let output = run(&["restore"], &store, &[file.to_str().unwrap()]);
    assert_rejected(&output, "not empty");

    let (status, _, bundle) = server.get("/Patient?family=Keepme", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bundle["total"], 1, "the existing store changed: {bundle}");
}

#[test]
fn backup_refuses_to_overwrite() {
    let server = Server::start();
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("exists.backup");
    std::fs::write(&out, b"keep").unwrap();
    let store = store_args(server.data_dir(), server.database());
    let output = run(&["backup"], &store, &["--out", out.to_str().unwrap()]);
    assert!(!output.status.success(), "{}", text(&output));
    assert_eq!(std::fs::read(&out).unwrap(), b"keep");
    assert!(
        text(&output).contains("must not exist"),
        "{}",
        text(&output)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_restores_after_master_rotation() {
    let server = Server::start();
    let token = server.token("system/*.cruds");
    create_patient(&server, &token, "Beforerotation").await;
    let scratch = tempfile::tempdir().unwrap();
    let file = backup_while_writing(&server, &token, scratch.path()).await;

    let store = store_args(server.data_dir(), server.database());
    let rotated = run(&["keys", "rotate-master"], &store, &[]);
    assert!(rotated.status.success(), "{}", text(&rotated));
    let retired: Vec<String> = std::fs::read_dir(server.data_dir().join("master-retired"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .map(|name| name.trim_end_matches(".key").to_owned())
        .collect();
    assert_eq!(retired.len(), 1);
    let retire = run(&["keys", "retire-master"], &store, &[&retired[0]]);
    assert!(retire.status.success(), "{}", text(&retire));

    // The target has only the new master key; the backup's data keys are
    // wrapped under the backup key, which the rotation resealed.
    let target = Target::with_keys_of(server.data_dir());
    let output = target.restore(&file);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("restored"), "{}", text(&output));
}
