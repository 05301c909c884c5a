//! The continuous SIEM export over real processes: RFC 5425 syslog over TLS
//! and JSON Lines over HTTPS to collectors that go down and come back, and
//! JSON Lines to a file across a server restart. Every record of
//! `ward audit export` must arrive at least once.

mod common;
mod test_pki;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use common::{Server, WARD};
use test_pki::pki;

/// How long the export may take to catch up.
const CATCH_UP: Duration = Duration::from_secs(90);

/// The messages a collector received, in arrival order.
type Received = Arc<Mutex<Vec<String>>>;

/// Runs a syslog-over-TLS collector on `listener`. Aborting the returned
/// task closes the listener and every connection.
fn start_collector(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    received: Received,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let mut connections = JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let received = received.clone();
            connections.spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 8192];
                while let Ok(read) = stream.read(&mut chunk).await {
                    if read == 0 {
                        break;
                    }
                    buffer.extend_from_slice(&chunk[..read]);
                    let messages = take_frames(&mut buffer);
                    received.lock().expect("lock").extend(messages);
                }
            });
        }
    })
}

/// Removes the complete octet-counted frames (RFC 5425 section 4.3) from
/// the front of `buffer` and returns their messages.
fn take_frames(buffer: &mut Vec<u8>) -> Vec<String> {
    let mut messages = Vec::new();
    while let Some(space) = buffer.iter().position(|b| *b == b' ') {
        let length: usize = std::str::from_utf8(&buffer[..space])
            .expect("the frame length is ASCII")
            .parse()
            .expect("the frame starts with a decimal length");
        let end = space + 1 + length;
        if buffer.len() < end {
            break;
        }
        let message = String::from_utf8(buffer[space + 1..end].to_vec()).expect("UTF-8 message");
        messages.push(message);
        buffer.drain(..end);
    }
    messages
}

/// Returns the `seq` structured-data parameter of a syslog message.
fn syslog_seq(message: &str) -> u64 {
    let start = message.find("seq=\"").expect("the message has a seq") + 5;
    let end = message[start..].find('"').expect("closing quote") + start;
    message[start..end].parse().expect("a numeric seq")
}

/// Reads the sequence numbers of every record in the audit log with
/// `ward audit export`.
fn exported_seqs(server: &Server) -> BTreeSet<u64> {
    let mut command = Command::new(WARD);
    command
        .args(["audit", "export", "--data"])
        .arg(server.data_dir())
        .env_remove("WARD_DATABASE");
    if let Some(database) = server.database() {
        command.args(["--database", database.url().as_str()]);
    }
    let output = command.output().expect("run ward audit export");
    assert!(
        output.status.success(),
        "ward audit export failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8 export")
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line).expect("a JSON line");
            event["id"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .expect("the id is the seq")
        })
        .collect()
}

/// Creates `count` patients and reads each back, so the log grows.
async fn generate(server: &Server, token: &str, prefix: &str, count: usize) {
    for index in 0..count {
        let id = format!("{prefix}-{index}");
        let patient = json!({ "resourceType": "Patient", "id": id });
        let (status, _, body) = server
            .put_json(&format!("/Patient/{id}"), token, &patient)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, _, _) = server.get(&format!("/Patient/{id}"), token).await;
        assert_eq!(status, StatusCode::OK);
    }
}

/// Waits until `delivered` returns every sequence number in `expected`;
/// panics with the missing ones after [`CATCH_UP`].
async fn wait_delivered(
    expected: &BTreeSet<u64>,
    delivered: impl Fn() -> BTreeSet<u64>,
    server: &Server,
) {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let have = delivered();
        let missing: Vec<u64> = expected.difference(&have).copied().collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "records never delivered: {missing:?}; server log:\n{}",
            server.stderr_log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn seqs_of(received: &Received) -> BTreeSet<u64> {
    received
        .lock()
        .expect("lock")
        .iter()
        .map(|message| syslog_seq(message))
        .collect()
}

#[tokio::test]
async fn syslog_export_survives_collector_outage() {
    let pki = pki();
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca_path = dir.path().join("collector-ca.pem");
    std::fs::write(&ca_path, &pki.ca_pem).expect("write the CA");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let received: Received = Arc::default();
    let collector = start_collector(listener, pki.server.clone(), received.clone());

    let address = format!("localhost:{port}");
    let server = Server::start_with(
        &[
            "--siem-syslog",
            &address,
            "--siem-ca",
            ca_path.to_str().expect("UTF-8 path"),
            "--siem-backlog-records",
            "5",
            "--siem-backlog-secs",
            "1",
        ],
        &[("NO_COLOR", "1")],
    );
    let token = server.token("system/*.cruds");
    generate(&server, &token, "before", 5).await;
    let first = exported_seqs(&server);
    assert!(first.len() >= 10, "two records per patient: {first:?}");
    wait_delivered(&first, || seqs_of(&received), &server).await;

    // The collector goes away; the export keeps the records and retries.
    collector.abort();
    let _ = collector.await;
    generate(&server, &token, "during", 5).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.stderr_log().contains("siem_export_backlog") {
        assert!(
            Instant::now() < deadline,
            "no backlog alert while the collector was down:\n{}",
            server.stderr_log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = server.stderr_log();
    assert!(
        log.contains("delivering audit records failed; retrying"),
        "{log}"
    );
    let alert_line = log
        .lines()
        .find(|line| line.contains("siem_export_backlog"))
        .expect("an alert line");
    assert!(alert_line.contains("WARN"), "{alert_line}");
    assert!(alert_line.contains("ward::alert"), "{alert_line}");

    // The collector comes back on the same port and gets everything.
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the collector port again");
    let collector = start_collector(listener, pki.server.clone(), received.clone());
    let all = exported_seqs(&server);
    assert!(all.len() >= first.len() + 10, "{all:?}");
    wait_delivered(&all, || seqs_of(&received), &server).await;
    collector.abort();

    let messages = received.lock().expect("lock").clone();
    for message in &messages {
        assert!(message.starts_with('<'), "RFC 5424 PRI: {message}");
        assert!(message.contains(">1 "), "RFC 5424 version 1: {message}");
        let json_start = message.find("] {").expect("the message after the SD") + 2;
        let event: Value = serde_json::from_str(&message[json_start..]).expect("AuditEvent JSON");
        assert_eq!(event["resourceType"], "AuditEvent");
    }
    let order: Vec<u64> = messages.iter().map(|m| syslog_seq(m)).collect();
    let first_delivery: Vec<u64> = order
        .iter()
        .scan(BTreeSet::new(), |seen, seq| {
            Some(seen.insert(*seq).then_some(*seq))
        })
        .flatten()
        .collect();
    let mut sorted = first_delivery.clone();
    sorted.sort_unstable();
    assert_eq!(first_delivery, sorted, "records arrive in order");
}

fn jsonl_seqs(path: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // A line still being written does not parse yet and is skipped.
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|event| {
            assert_eq!(event["resourceType"], "AuditEvent", "{event}");
            event["id"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .expect("the id is the seq")
        })
        .collect()
}

#[tokio::test]
async fn jsonl_export_resumes_after_restart() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("audit.jsonl");
    let path_arg = path.to_str().expect("UTF-8 path").to_owned();
    let args = ["--siem-jsonl", path_arg.as_str()];

    let server = Server::start_with(&args, &[]);
    let token = server.token("system/*.cruds");
    generate(&server, &token, "first", 5).await;
    let first = exported_seqs(&server);
    wait_delivered(&first, || jsonl_seqs(&path).into_iter().collect(), &server).await;
    // Give the export time to save its cursor after the last batch.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (root, data) = server.stop();
    let server = Server::start_in(root, data, &args, &[]);
    let token = server.token("system/*.cruds");
    generate(&server, &token, "second", 5).await;
    let all = exported_seqs(&server);
    assert!(all.len() >= first.len() + 10, "{all:?}");
    wait_delivered(&all, || jsonl_seqs(&path).into_iter().collect(), &server).await;

    let lines = jsonl_seqs(&path);
    let distinct: BTreeSet<u64> = lines.iter().copied().collect();
    let duplicates = lines.len() - distinct.len();
    assert_eq!(
        duplicates, 0,
        "the saved cursor resumes after the last delivered record: {lines:?}"
    );
    let mut sorted = lines.clone();
    sorted.sort_unstable();
    assert_eq!(lines, sorted, "records are appended in order");
}

/// The bearer token the HTTPS collector expects.
const COLLECTOR_TOKEN: &str = "collector-token-7f3a";

/// Runs an HTTPS JSON Lines collector on `listener`: each POST with the
/// right bearer token has its lines kept and gets 200, any other request
/// gets 401. Aborting the task closes the listener.
fn start_https_collector(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    received: Received,
) -> JoinHandle<()> {
    use tokio::io::AsyncWriteExt as _;
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let mut connections = JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let received = received.clone();
            connections.spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let Some((head, body)) = read_request(&mut stream).await else {
                    return;
                };
                let authorized = head.lines().any(|line| {
                    line.split_once(':').is_some_and(|(name, value)| {
                        name.eq_ignore_ascii_case("authorization")
                            && value.trim() == format!("Bearer {COLLECTOR_TOKEN}")
                    })
                });
                let reply: &[u8] = if authorized && head.starts_with("POST ") {
                    let text = String::from_utf8_lossy(&body).into_owned();
                    received
                        .lock()
                        .expect("lock")
                        .extend(text.lines().map(str::to_owned));
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                };
                let _ = stream.write_all(reply).await;
                let _ = stream.shutdown().await;
            });
        }
    })
}

/// Reads one HTTP/1.1 request with a `content-length` body; returns its
/// head and body, or `None` when the connection ends first.
async fn read_request(
    stream: &mut tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
) -> Option<(String, Vec<u8>)> {
    let mut request = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        request.extend_from_slice(&chunk[..read]);
        let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&request[..end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        if request.len() >= end + 4 + length {
            return Some((head, request[end + 4..end + 4 + length].to_vec()));
        }
    }
}

fn json_seqs(received: &Received) -> BTreeSet<u64> {
    received
        .lock()
        .expect("lock")
        .iter()
        .map(|line| {
            let event: Value = serde_json::from_str(line).expect("a JSON line");
            assert_eq!(event["resourceType"], "AuditEvent", "{event}");
            event["id"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .expect("the id is the seq")
        })
        .collect()
}

#[tokio::test]
async fn https_export_survives_collector_outage() {
    let pki = pki();
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca_path = dir.path().join("collector-ca.pem");
    std::fs::write(&ca_path, &pki.ca_pem).expect("write the CA");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let received: Received = Arc::default();
    let collector = start_https_collector(listener, pki.server.clone(), received.clone());

    let url = format!("https://localhost:{port}/ingest");
    let server = Server::start_with(
        &[
            "--siem-https",
            &url,
            "--siem-ca",
            ca_path.to_str().expect("UTF-8 path"),
        ],
        &[("WARD_SIEM_HTTPS_TOKEN", COLLECTOR_TOKEN)],
    );
    let token = server.token("system/*.cruds");
    generate(&server, &token, "before", 5).await;
    let first = exported_seqs(&server);
    assert!(first.len() >= 10, "two records per patient: {first:?}");
    wait_delivered(&first, || json_seqs(&received), &server).await;

    // The collector is down for a while; the export retries from its cursor.
    collector.abort();
    let _ = collector.await;
    generate(&server, &token, "during", 5).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server
        .stderr_log()
        .contains("delivering audit records failed; retrying")
    {
        assert!(
            Instant::now() < deadline,
            "no retry while the collector was down:\n{}",
            server.stderr_log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the collector port again");
    let collector = start_https_collector(listener, pki.server.clone(), received.clone());
    let all = exported_seqs(&server);
    assert!(all.len() >= first.len() + 10, "{all:?}");
    wait_delivered(&all, || json_seqs(&received), &server).await;
    collector.abort();
    assert!(
        !server.stderr_log().contains(COLLECTOR_TOKEN),
        "the collector token never reaches the log"
    );
}
