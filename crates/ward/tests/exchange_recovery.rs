//! Tests of exactly-once filing between real `ward serve` processes. Several
//! delivery attempts of one message that arrive at once are all
//! acknowledged, and the message is filed once. A claim without an
//! acknowledgement, which a receiver of an earlier version left when it
//! stopped between claiming and filing, no longer blocks the message. Two
//! sending replicas on one PostgreSQL database send each message once.

mod common;

use reqwest::StatusCode;
use serde_json::{Value, json};
use ward_exchange::{TrustEntry, envelope};

use common::exchange::{
    audit_log, identity_of, now, org_client, post_sealed_as, referral, search_count, trust_both,
    ward, ward_on,
};
use common::{Server, TestDatabase, header};

/// Counts the audit records of `server` with `event` for `message_id`.
fn audited(server: &Server, event: &str, message_id: &str) -> usize {
    audit_log(server)
        .lines()
        .filter(|line| line.contains(&format!("\"{event}\"")) && line.contains(message_id))
        .count()
}

/// Checks that `body` is an `ok` acknowledgement of `message_id` from `b`.
fn assert_ok_ack(body: &Value, b: &TrustEntry, a: &TrustEntry, message_id: &str) {
    let ack = body.as_str().expect("the acknowledgement is a JWS");
    let response = envelope::verify_ack(ack, b, &a.org_id, message_id, now()).unwrap();
    assert_eq!(response["entry"][0]["resource"]["response"]["code"], "ok");
}

#[tokio::test]
async fn concurrent_attempts_file_once() {
    let a = Server::start();
    let b = Server::start();
    let (a_entry, b_entry) = trust_both(&a, &b);
    let sender = identity_of(&a);

    // One delivery first, so B trusts A's CA before the concurrent ones.
    let warm_up = envelope::seal(&sender, &b_entry, "msg-warm", &referral("MRN-700"), now());
    let (status, body) = post_sealed_as(&a, &b, &warm_up.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Each attempt is sealed afresh, as the outbox does.
    let attempts = 6;
    let client = org_client(&a, &b);
    let url = b.url("/fhir/$process-message");
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..attempts {
        let sealed = envelope::seal(
            &sender,
            &b_entry,
            "msg-race",
            &referral("MRN-701"),
            now() - n,
        )
        .unwrap();
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            let response = client
                .post(url)
                .header("content-type", "application/jose")
                .body(sealed)
                .send()
                .await
                .expect("post the message");
            let status = response.status();
            let text = response.text().await.expect("read the body");
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        });
    }
    let replies = tasks.join_all().await;
    for (status, body) in &replies {
        assert_eq!(*status, StatusCode::OK, "{body}\n{}", b.stderr_log());
        assert_ok_ack(body, &b_entry, &a_entry, "msg-race");
    }

    let patients = search_count(
        &b,
        "/fhir/Patient?identifier=urn:oid:1.2.36.146.595.217.0.1|MRN-701",
    )
    .await;
    assert_eq!(patients, 1, "the patient was filed once");
    let requests = search_count(
        &b,
        "/fhir/ServiceRequest?_tag=urn:ward:exchange:message|msg-race",
    )
    .await;
    assert_eq!(requests, 1, "the service request was filed once");
    assert_eq!(audited(&b, "message_received", "msg-race"), 1);
    assert_eq!(
        audited(&b, "message_retry_acknowledged", "msg-race"),
        attempts as usize - 1
    );
}

#[tokio::test]
async fn claim_left_without_acknowledgement_is_recovered() {
    let a = Server::start();
    let b = Server::start();
    let (a_entry, b_entry) = trust_both(&a, &b);
    let sender = identity_of(&a);

    // A receiver of an earlier version claimed msg-stuck, then stopped
    // before filing it: the claim has no acknowledgement. The store blocks
    // on its own runtime, so it runs on a blocking thread.
    let data = b.data_dir().to_owned();
    let locator = b.database().map(common::TestDatabase::url);
    let key = format!("{}.msg-stuck", a_entry.org_id);
    tokio::task::spawn_blocking(move || {
        let dir = ward_server::setup::DataDir::new(&data);
        let (keys, _) = dir.open_or_init("Ward").expect("open the data directory");
        let database =
            ward_store::Database::from_locator(locator.as_deref(), &data.join("ward.db"));
        let store = ward_store::open(&database, &keys.master).expect("open B's store");
        let claim = json!({ "signatures": ["00"], "ack": null });
        let expires = (now() + 3600) * 1_000_000;
        store
            .kv_put(
                envelope::NS_SEEN,
                &key,
                claim.to_string().as_bytes(),
                Some(expires),
            )
            .expect("store the claim");
    })
    .await
    .expect("the claim is stored");

    let sealed = envelope::seal(&sender, &b_entry, "msg-stuck", &referral("MRN-702"), now());
    let sealed = sealed.unwrap();
    let (status, body) = post_sealed_as(&a, &b, &sealed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ok_ack(&body, &b_entry, &a_entry, "msg-stuck");
    let patients = search_count(
        &b,
        "/fhir/Patient?identifier=urn:oid:1.2.36.146.595.217.0.1|MRN-702",
    )
    .await;
    assert_eq!(patients, 1);

    // The next attempt gets the stored acknowledgement and files nothing.
    let retry = envelope::seal(
        &sender,
        &b_entry,
        "msg-stuck",
        &referral("MRN-702"),
        now() - 1,
    );
    let (status, body) = post_sealed_as(&a, &b, &retry.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ok_ack(&body, &b_entry, &a_entry, "msg-stuck");
    let requests = search_count(
        &b,
        "/fhir/ServiceRequest?_tag=urn:ward:exchange:message|msg-stuck",
    )
    .await;
    assert_eq!(requests, 1);
}

/// Runs `ward org SUBCOMMAND` on a data directory and database URL.
fn org_on(data: &std::path::Path, url: &str, subcommand: &[&str]) -> Vec<u8> {
    let data = data.to_str().expect("UTF-8 path");
    let mut args = vec!["org"];
    args.extend(subcommand);
    args.extend(["--data", data, "--database", url]);
    let output = ward(&args);
    assert!(
        output.status.success(),
        "ward org failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[tokio::test]
async fn replicas_send_each_message_once() {
    if !common::on_postgres() {
        eprintln!("NOTE: skipped; replicas share a database only with WARD_TEST_DATABASE=postgres");
        return;
    }
    // Two sending replicas share one database and the keys of one data
    // directory. Both run a delivery loop over the same outbox.
    let database = TestDatabase::create();
    let url = database.url();
    // Both announce one base URL, as behind one load balancer, so a token
    // minted for one is valid on the other.
    let args = [
        "--database",
        url.as_str(),
        "--base-url",
        "https://ward-replicas.test",
        "--exchange-retry-base",
        "1",
        "--exchange-retry-max",
        "2",
    ];
    let a1 = Server::start_with(&args, &[]);
    let root = tempfile::tempdir().expect("create a temporary directory");
    let a2 = Server::start_in(root, a1.data_dir().to_owned(), &args, &[]);
    let b = Server::start();

    let a_export = org_on(a1.data_dir(), &url, &["export"]);
    let a_entry: TrustEntry = serde_json::from_slice(&a_export).expect("export prints JSON");
    let a_file = a1.data_dir().with_file_name("a-entry.json");
    std::fs::write(&a_file, &a_export).expect("write the export");
    let b_output = ward_on(&b, &["org", "export"], &[]);
    let b_entry: TrustEntry = serde_json::from_slice(&b_output.stdout).expect("export prints JSON");
    let b_file = b.data_dir().with_file_name("b-entry.json");
    std::fs::write(&b_file, &b_output.stdout).expect("write the export");
    let b_path = b_file.to_str().expect("UTF-8 path");
    org_on(
        a1.data_dir(),
        &url,
        &["trust", "--fingerprint", &b_entry.fingerprint, b_path],
    );
    let a_path = a_file.to_str().expect("UTF-8 path");
    let output = ward_on(
        &b,
        &["org", "trust"],
        &["--fingerprint", &a_entry.fingerprint, a_path],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let token = a1.token_with(
        "user/*.cruds",
        &["--role", "physician", "--fhir-user", "Practitioner/dr-a"],
    );
    let path = format!("/fhir/$send-message?recipient={}", b_entry.org_id);
    let messages = 20;
    let mut locations = Vec::new();
    for n in 0..messages {
        let (status, headers, body) = a1
            .post_json(&path, &token, &referral(&format!("MRN-8{n:02}")))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let location = header(&headers, "content-location");
        let start = location.find("/exchange/").expect("an outbox status URL");
        locations.push(location[start..].to_owned());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for location in &locations {
        loop {
            let url = format!("{}{location}", a2.origin());
            let (status, _, body) = a2.get(&url, &token).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            if body["status"] == "delivered" {
                break;
            }
            assert!(
                body["status"] == "queued" && std::time::Instant::now() < deadline,
                "{body}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    let output = ward_on(&b, &["audit", "export"], &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let log = String::from_utf8_lossy(&output.stdout);
    let received = log
        .lines()
        .filter(|l| l.contains("\"message_received\""))
        .count();
    let retried = log
        .lines()
        .filter(|l| l.contains("\"message_retry_acknowledged\""))
        .count();
    assert_eq!(received, messages, "each message was filed once");
    assert_eq!(retried, 0, "no message was sent twice");
}
