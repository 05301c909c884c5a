//! Two `ward serve` replicas on one PostgreSQL database and one data
//! directory's keys: conflicting writes through different replicas keep one
//! winner, conditional creates never duplicate, a search started on one
//! replica pages on through the other, and a device revoked through one
//! replica is revoked on the other at once.
//!
//! Needs PostgreSQL on 127.0.0.1:5432 (user `postgres`, trust auth). Without
//! it the tests are skipped with a note, unless `WARD_REQUIRE_POSTGRES=1`.

mod common;

use common::device::{device_client, enroll, post, posture};
use common::{Server, TestDatabase, json_body, psql, send};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ALL: &str = "system/*.cruds";

/// The base URL both replicas announce, as behind one load balancer, so a
/// token and a paging link from one replica are valid on the other.
const SHARED_BASE: &str = "https://ward-replicas.test";

/// Two servers on one database, and the token both accept.
struct Pair {
    a: Server,
    b: Server,
    token: String,
    database: TestDatabase,
}

impl Pair {
    /// Starts both replicas, or returns `None` when PostgreSQL is not
    /// reachable and not required.
    fn start() -> Option<Pair> {
        if let Err(error) = psql("postgres", "SELECT 1") {
            if std::env::var("WARD_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("PostgreSQL is required (WARD_REQUIRE_POSTGRES=1) but failed: {error}");
            }
            eprintln!("NOTE: skipping the replica tests, PostgreSQL is not reachable: {error}");
            return None;
        }
        let database = TestDatabase::create();
        let url = database.url();
        let args = ["--database", url.as_str(), "--base-url", SHARED_BASE];
        let a = Server::start_with(&args, &[]);
        // The second replica shares the first one's keys (data directory)
        // but has its own temporary root for its log.
        let root = tempfile::tempdir().expect("create a temporary directory");
        let b = Server::start_in(root, a.data_dir().to_owned(), &args, &[]);
        let token = a.token(ALL);
        Some(Pair {
            a,
            b,
            token,
            database,
        })
    }

    /// Picks the replica for request `i`: even to A, odd to B.
    fn replica(&self, i: usize) -> &Server {
        if i.is_multiple_of(2) {
            &self.a
        } else {
            &self.b
        }
    }
}

fn patient(family: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{ "system": "urn:test:mrn", "value": family }],
        "name": [{ "family": family }],
    })
}

/// Runs every request at once and returns the replies in order.
async fn all_at_once(requests: Vec<reqwest::RequestBuilder>) -> Vec<common::Reply> {
    let handles: Vec<_> = requests
        .into_iter()
        .map(|request| tokio::spawn(send(request)))
        .collect();
    let mut replies = Vec::new();
    for handle in handles {
        replies.push(handle.await.expect("request task"));
    }
    replies
}

/// Returns the path and query of a link, relative to the FHIR base.
fn relative_to_base(link: &str) -> String {
    let rest = link
        .strip_prefix(&format!("{SHARED_BASE}/fhir"))
        .unwrap_or_else(|| panic!("link {link} is not under {SHARED_BASE}/fhir"));
    format!("/fhir{rest}")
}

fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"].as_array()?.iter().find_map(|link| {
        (link["relation"] == "next").then(|| link["url"].as_str().map(str::to_owned))?
    })
}

#[tokio::test]
async fn if_match_across_replicas_has_one_winner() {
    let Some(pair) = Pair::start() else {
        return;
    };
    let (status, _, created) = pair
        .a
        .post_json("/Patient", &pair.token, &patient("Race"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    let path = format!("/Patient/{id}");

    for version in 1..=3u64 {
        let requests = (0..20)
            .map(|i| {
                let mut body = patient(&format!("Racer{version}x{i}"));
                body["id"] = json!(id);
                json_body(
                    pair.replica(i).request(Method::PUT, &path, &pair.token),
                    &body,
                )
                .header("if-match", format!("W/\"{version}\""))
            })
            .collect();
        let replies = all_at_once(requests).await;
        let statuses: Vec<StatusCode> = replies.iter().map(|r| r.0).collect();
        let winners: Vec<&common::Reply> =
            replies.iter().filter(|r| r.0 == StatusCode::OK).collect();
        let losers = statuses
            .iter()
            .filter(|s| **s == StatusCode::PRECONDITION_FAILED)
            .count();
        assert_eq!(winners.len(), 1, "version {version}: {statuses:?}");
        assert_eq!(losers, 19, "version {version}: {statuses:?}");

        // Both replicas read the winner's body: no update was lost.
        let winner_family = &winners[0].2["name"][0]["family"];
        for server in [&pair.a, &pair.b] {
            let (status, _, read) = server.get(&path, &pair.token).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(read["meta"]["versionId"], (version + 1).to_string());
            assert_eq!(&read["name"][0]["family"], winner_family);
        }
    }
}

#[tokio::test]
async fn conditional_creates_across_replicas_make_one() {
    let Some(pair) = Pair::start() else {
        return;
    };
    let requests = (0..20)
        .map(|i| {
            json_body(
                pair.replica(i)
                    .request(Method::POST, "/Patient", &pair.token),
                &patient("Once"),
            )
            .header("if-none-exist", "identifier=urn:test:mrn|Once")
        })
        .collect();
    let replies = all_at_once(requests).await;
    let statuses: Vec<StatusCode> = replies.iter().map(|r| r.0).collect();
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let existing = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(created, 1, "{statuses:?}");
    assert_eq!(existing, 19, "{statuses:?}");

    for server in [&pair.a, &pair.b] {
        let (status, _, bundle) = server
            .get("/Patient?identifier=urn:test:mrn|Once", &pair.token)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(bundle["total"], 1, "{bundle}");
    }
}

#[tokio::test]
async fn paging_continues_on_the_other_replica() {
    let Some(pair) = Pair::start() else {
        return;
    };
    let mut expected = Vec::new();
    for i in 0..5 {
        let (status, _, created) = pair
            .replica(i)
            .post_json("/Patient", &pair.token, &patient(&format!("Pager{i}")))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        expected.push(created["id"].as_str().expect("id").to_owned());
    }

    let (status, _, mut bundle) = pair
        .a
        .get("/Patient?_count=2&_sort=_lastUpdated", &pair.token)
        .await;
    assert_eq!(status, StatusCode::OK, "{bundle}");
    assert_eq!(bundle["total"], 5);
    let mut seen = Vec::new();
    let mut hops = 0;
    loop {
        for entry in bundle["entry"].as_array().cloned().unwrap_or_default() {
            seen.push(entry["resource"]["id"].as_str().expect("id").to_owned());
        }
        let Some(next) = next_link(&bundle) else {
            break;
        };
        hops += 1;
        // Every later page goes to the replica that did not serve the last.
        let server = pair.replica(hops);
        let (status, _, page) = server.get(&relative_to_base(&next), &pair.token).await;
        assert_eq!(status, StatusCode::OK, "page {hops}: {page}");
        bundle = page;
    }
    assert_eq!(hops, 2, "five matches in pages of two");
    assert_eq!(seen, expected, "every match once, in order");
}

#[tokio::test]
async fn device_revoke_reaches_other_replica() {
    let Some(pair) = Pair::start() else {
        return;
    };
    let database = pair.database.url();
    let data = pair.a.data_dir().to_str().expect("UTF-8 path").to_owned();
    let output = std::process::Command::new(common::WARD)
        .args(["user", "add", "--username", "bob", "--role", "physician"])
        .args(["--data", &data, "--database", &database])
        .output()
        .expect("run ward user add");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Enroll through replica A.
    let admin = pair.a.token("admin");
    let a = pair.a.origin().to_owned();
    let enrolled = enroll(&pair.a, &admin, "bob").await;
    let id = enrolled.id.clone();

    // The device talks to replica B.
    let device = device_client(&pair.b, &enrolled.certificate, &enrolled.key);
    let checkin = format!("{}/device/checkin", pair.b.origin());
    let (status, active) = post(&device, &checkin, None, &json!({"posture": posture(true)})).await;
    assert_eq!(status, StatusCode::OK, "{active}");
    assert_eq!(active["status"], "active");

    // Revoked on A; B reports it at the very next contact.
    let (status, revoked) = post(
        &pair.a.client(),
        &format!("{a}/admin/devices/{id}/revoke"),
        Some(&admin),
        &json!({"reason": "stolen"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    let (status, seen) = post(&device, &checkin, None, &json!({"posture": posture(true)})).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["status"], "revoked");
    assert_eq!(seen["wipe"], true);
}
