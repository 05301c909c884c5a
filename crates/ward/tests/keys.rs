//! Rotating the access-token signing key: old tokens stay valid until they
//! expire, new tokens carry the new key id, and the JWKS lists both.

mod common;

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::Value;

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap_or_default();
    let header: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    header["kid"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn rotated_key_keeps_old_tokens() {
    // A fixed public base URL keeps the tokens' issuer and audience the
    // same across the restart, which picks a new port.
    let base = ["--base-url", "https://ward.test"];
    let server = common::Server::start_with(&base, &[]);
    let database = server.database().map(common::TestDatabase::url);
    let old_token = server.token("system/*.rs");
    let (root, data) = server.stop();

    let output = ward_on(&data, database.as_deref(), &["keys", "rotate-signing"]);
    assert!(output.status.success(), "{}", output_text(&output));

    let server = common::Server::start_in(root, data, &base, &[]);
    let new_token = server.token("system/*.rs");
    assert_ne!(
        kid_of(&old_token),
        kid_of(&new_token),
        "the new token must use the new key"
    );

    let (status, _, body) = server.get("/Patient", &old_token).await;
    assert_eq!(status, StatusCode::OK, "a token of the retired key: {body}");
    let (status, _, body) = server.get("/Patient", &new_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let jwks_url = format!("{}/oauth/jwks", server.origin());
    let (status, _, jwks) = server.get(&jwks_url, "").await;
    assert_eq!(status, StatusCode::OK, "{jwks}");
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .map(|keys| keys.iter().filter_map(|k| k["kid"].as_str()).collect())
        .unwrap_or_default();
    assert!(kids.contains(&kid_of(&old_token).as_str()), "{jwks}");
    assert!(kids.contains(&kid_of(&new_token).as_str()), "{jwks}");

    let events = key_events(&server).await;
    assert_eq!(
        events,
        vec![format!(
            "signing_key_rotated {} {}",
            kid_of(&old_token),
            kid_of(&new_token)
        )]
    );
}

/// The key changes in the audit log, as `EVENT OLD NEW` (or `EVENT KEY`).
async fn key_events(server: &common::Server) -> Vec<String> {
    let token = server.token("system/AuditEvent.rs");
    let (status, _, bundle) = server
        .get("/AuditEvent?type=110113&_count=100", &token)
        .await;
    assert_eq!(status, StatusCode::OK, "{bundle}");
    let mut events = Vec::new();
    for entry in bundle["entry"].as_array().into_iter().flatten() {
        let details: Vec<(String, String)> = entry["resource"]["entity"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|entity| entity["detail"].as_array().into_iter().flatten())
            .map(|detail| {
                (
                    detail["type"].as_str().unwrap_or_default().to_owned(),
                    detail["valueString"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        let value = |name: &str| {
            details
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        let Some(event) = value("event").filter(|event| event.contains("_key_")) else {
            continue;
        };
        let keys: Vec<String> = ["old_key", "new_key", "key"]
            .iter()
            .filter_map(|name| value(name))
            .collect();
        events.push(format!("{event} {}", keys.join(" ")));
    }
    events.sort();
    events
}

/// Runs `ward` with `args` plus `--data DIR` and, on PostgreSQL,
/// `--database URL`.
fn ward_on(data: &std::path::Path, database: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ward"));
    command.args(args).arg("--data").arg(data);
    if let Some(url) = database {
        command.args(["--database", url]);
    }
    command
        .env_remove("WARD_MASTER_KEY")
        .env_remove("WARD_DATABASE")
        .output()
        .unwrap()
}

fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Lists the ids of the keys in `master-retired/`.
fn retired_master_ids(data: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(data.join("master-retired")) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".key").map(str::to_owned)
        })
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn master_rotation_keeps_server_serving() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let server = common::Server::start();
    let database = server.database().map(common::TestDatabase::url);
    let token = server.token("system/*.cruds");
    let mut ids = Vec::new();
    for index in 0..5 {
        let patient = serde_json::json!({"resourceType": "Patient", "name": [{"family": format!("Rotate{index}")}]});
        let (status, _, body) = server.post_json("/Patient", &token, &patient).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let master_before = std::fs::read(server.data_dir().join("master.key")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let load = {
        let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
        let (client, token, ids) = (server.client(), token.clone(), ids.clone());
        let base = server.base();
        tokio::spawn(async move {
            let mut round = 0usize;
            while !stop.load(Ordering::Relaxed) || round < 4 {
                let id = &ids[round % ids.len()];
                let read = client
                    .get(format!("{base}/Patient/{id}"))
                    .bearer_auth(&token)
                    .send()
                    .await;
                let patient =
                    serde_json::json!({"resourceType": "Patient", "name": [{"family": "During"}]});
                let write = client
                    .post(format!("{base}/Patient"))
                    .bearer_auth(&token)
                    .header("content-type", "application/fhir+json")
                    .json(&patient)
                    .send()
                    .await;
                for (what, result, expected) in [
                    ("read", read, StatusCode::OK),
                    ("write", write, StatusCode::CREATED),
                ] {
                    match result {
                        Ok(response) if response.status() == expected => {}
                        Ok(response) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{what}: {}", response.status())),
                        Err(error) => failures.lock().unwrap().push(format!("{what}: {error}")),
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
                round += 1;
            }
        })
    };

    let data = server.data_dir().to_owned();
    let url = database.clone();
    let rotated = tokio::task::spawn_blocking(move || {
        ward_on(&data, url.as_deref(), &["keys", "rotate-master"])
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(rotated.status.success(), "{}", output_text(&rotated));
    assert!(done.load(Ordering::Relaxed) >= 4);
    assert_eq!(
        *failures.lock().unwrap(),
        Vec::<String>::new(),
        "requests failed during the rotation"
    );

    let retired = retired_master_ids(server.data_dir());
    assert_eq!(retired.len(), 1, "{}", output_text(&rotated));
    assert!(
        output_text(&rotated).contains("rewrapped 2 database keys"),
        "{}",
        output_text(&rotated)
    );
    assert_ne!(
        std::fs::read(server.data_dir().join("master.key")).unwrap(),
        master_before
    );

    // After the rotation nothing is wrapped under the old key, so it retires.
    let retire = ward_on(
        server.data_dir(),
        database.as_deref(),
        &["keys", "retire-master", &retired[0]],
    );
    assert!(retire.status.success(), "{}", output_text(&retire));
    assert!(retired_master_ids(server.data_dir()).is_empty());

    // A restart with only the new key reads everything written before and
    // during the rotation, and the audit log still verifies.
    let (root, data) = server.stop();
    let server = common::Server::start_in(root, data, &[], &[]);
    let token = server.token("system/*.cruds");
    for id in &ids {
        let (status, _, body) = server.get(&format!("/Patient/{id}"), &token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, _, bundle) = server.get("/Patient?family=Rotate3", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        bundle["total"], 1,
        "the index key survived the rotation: {bundle}"
    );
    let (status, _, bundle) = server
        .get("/Patient?family=During&_summary=count", &token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(bundle["total"].as_u64().unwrap_or(0) >= 4, "{bundle}");
    let verify = ward_on(server.data_dir(), database.as_deref(), &["audit", "verify"]);
    assert!(verify.status.success(), "{}", output_text(&verify));

    let events = key_events(&server).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events[0].starts_with("master_key_retired ") && events[0].ends_with(&retired[0]),
        "{events:?}"
    );
    assert!(
        events[1].starts_with(&format!("master_key_rotated {} ", retired[0])),
        "{events:?}"
    );
}

#[test]
fn retire_master_rejects_key_in_use() {
    let server = common::Server::start();
    let database = server.database().map(common::TestDatabase::url);
    let (root, data) = server.stop();

    let old_ca_key = std::fs::read(data.join("ca.key.sealed")).unwrap();
    let first = ward_on(&data, database.as_deref(), &["keys", "rotate-master"]);
    assert!(first.status.success(), "{}", output_text(&first));
    let old = retired_master_ids(&data).pop().unwrap();

    // A key file still sealed under the old key, as after an interrupted
    // rotation.
    std::fs::write(data.join("ca.key.sealed"), &old_ca_key).unwrap();
    let refused = ward_on(&data, database.as_deref(), &["keys", "retire-master", &old]);
    assert!(!refused.status.success(), "{}", output_text(&refused));
    let message = output_text(&refused);
    assert!(message.contains("still wraps 0 keys"), "{message}");
    assert!(message.contains("1 key files"), "{message}");
    assert!(message.contains("ca.key.sealed"), "{message}");
    assert!(retired_master_ids(&data).contains(&old));

    let active = std::fs::read_to_string(data.join("master.key")).unwrap();
    let listed = ward_on(
        &data,
        database.as_deref(),
        &["keys", "retire-master", "0000000000000000"],
    );
    assert!(!listed.status.success());
    assert!(
        output_text(&listed).contains("no retired master key"),
        "{}",
        output_text(&listed)
    );

    // Rotating again reseals the file, after which both older keys retire.
    let second = ward_on(&data, database.as_deref(), &["keys", "rotate-master"]);
    assert!(second.status.success(), "{}", output_text(&second));
    assert_ne!(
        std::fs::read_to_string(data.join("master.key")).unwrap(),
        active
    );
    for id in retired_master_ids(&data) {
        let retire = ward_on(&data, database.as_deref(), &["keys", "retire-master", &id]);
        assert!(retire.status.success(), "{}", output_text(&retire));
    }
    assert!(retired_master_ids(&data).is_empty());

    let server = common::Server::start_in(root, data, &[], &[]);
    let token = server.token("system/*.rs");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, _, body) = rt.block_on(server.get("/Patient", &token));
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[test]
fn env_key_rotation_needs_key_file() {
    let server = common::Server::start();
    let database = server.database().map(common::TestDatabase::url);
    let (_root, data) = server.stop();
    let key = std::fs::read_to_string(data.join("master.key")).unwrap();

    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ward"));
    command.args(["keys", "rotate-master", "--data"]).arg(&data);
    if let Some(url) = &database {
        command.args(["--database", url]);
    }
    let output = command.env("WARD_MASTER_KEY", key.trim()).output().unwrap();
    assert!(!output.status.success());
    assert!(
        output_text(&output).contains("--new-key-file"),
        "{}",
        output_text(&output)
    );

    let new_key = data.join("new-master.key");
    let output = command
        .arg("--new-key-file")
        .arg(&new_key)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", output_text(&output));
    let new_text = std::fs::read_to_string(&new_key).unwrap();
    assert_ne!(new_text.trim(), key.trim());
    assert!(
        retired_master_ids(&data).is_empty(),
        "the env key is never written to disk"
    );

    // Everything now opens with the new key alone.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ward"));
    command.args(["audit", "verify", "--data"]).arg(&data);
    if let Some(url) = &database {
        command.args(["--database", url]);
    }
    let output = command
        .env("WARD_MASTER_KEY", new_text.trim())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", output_text(&output));
}
