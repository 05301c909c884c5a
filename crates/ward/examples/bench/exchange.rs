//! The exchange benchmark: two `ward serve` processes on loopback (SQLite)
//! that trust each other, and C concurrent senders that each queue a
//! message with `$send-message` and poll its outbox status until it reads
//! `delivered`, then send the next. It reports messages per second end to
//! end and the latency from the `$send-message` request to the first
//! status poll that reads `delivered`.
//!
//! Polling every [`POLL_INTERVAL`] adds up to that interval to each delivery
//! latency, and the status requests load the sending server as well.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::http::{self, Client, Measured};
use crate::server::{Backend, Server};

/// The delay between two status polls of one message.
pub const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How long one message may take to be delivered before the run fails.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);

/// The figures of one exchange run.
pub struct ExchangeResult {
    /// Concurrent senders.
    pub senders: usize,
    /// `$send-message` requests until the 202 response.
    pub queued: Measured,
    /// Whole messages from the `$send-message` request to `delivered`.
    pub delivered: Measured,
}

/// Runs `ward org SUBCOMMAND --data DIR EXTRA` for `server`.
fn org(server: &Server, subcommand: &str, extra: &[&str]) -> Result<Vec<u8>> {
    let output = Command::new(&server.ward)
        .args(["org", subcommand, "--data"])
        .arg(&server.data)
        .args(extra)
        .env_remove("WARD_DATA")
        .env_remove("WARD_DATABASE")
        .output()
        .with_context(|| format!("running ward org {subcommand}"))?;
    if !output.status.success() {
        bail!(
            "ward org {subcommand} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// Exports the trust entry of `server` to a file; returns the file, the
/// organization id and the fingerprint.
fn export(server: &Server) -> Result<(std::path::PathBuf, String, String)> {
    let entry = org(server, "export", &[])?;
    let parsed: Value = serde_json::from_slice(&entry).context("parsing ward org export")?;
    let field = |name: &str| -> Result<String> {
        parsed[name]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("ward org export printed no {name}"))
    };
    let (org_id, fingerprint) = (field("org_id")?, field("fingerprint")?);
    let path = server.data.with_extension("trust.json");
    std::fs::write(&path, &entry)?;
    Ok((path, org_id, fingerprint))
}

/// Makes `a` and `b` trust each other; returns the organization id of `b`.
fn trust_both(a: &Server, b: &Server) -> Result<String> {
    let (a_file, _, a_fingerprint) = export(a)?;
    let (b_file, b_org, b_fingerprint) = export(b)?;
    let path = |file: &Path| file.to_str().map(str::to_owned).context("UTF-8 path");
    org(
        a,
        "trust",
        &["--fingerprint", &b_fingerprint, &path(&b_file)?],
    )?;
    org(
        b,
        "trust",
        &["--fingerprint", &a_fingerprint, &path(&a_file)?],
    )?;
    Ok(b_org)
}

/// Builds a referral message of a MessageHeader, a Patient with identifier
/// `mrn` and a ServiceRequest.
fn referral(mrn: &str) -> Value {
    let patient = "urn:uuid:00000000-0000-4000-8000-000000000002";
    json!({
        "resourceType": "Bundle",
        "type": "message",
        "timestamp": "2026-12-01T10:00:00Z",
        "entry": [
            { "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001", "resource": {
                "resourceType": "MessageHeader",
                "eventCoding": { "system": "http://example.org/fhir/message-events", "code": "referral" },
                "source": { "endpoint": "https://clinic-a.example/fhir" },
                "focus": [{ "reference": "urn:uuid:00000000-0000-4000-8000-000000000004" }]
            } },
            { "fullUrl": patient, "resource": {
                "resourceType": "Patient",
                "identifier": [{ "system": "urn:oid:1.2.36.146.595.217.0.1", "value": mrn }],
                "name": [{ "family": "Example", "given": ["Pat"] }],
                "birthDate": "1970-01-01"
            } },
            { "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000004", "resource": {
                "resourceType": "ServiceRequest",
                "status": "active",
                "intent": "order",
                "code": { "text": "Cardiology consultation" },
                "subject": { "reference": patient }
            } }
        ]
    })
}

/// Queues message `index` and polls until it is delivered; returns the
/// latency of the 202 response and of the delivery.
async fn send_one(client: &Client, recipient: &str, index: usize) -> Result<(Duration, Duration)> {
    let begun = Instant::now();
    let reply = client
        .post(
            &format!("$send-message?recipient={recipient}"),
            &referral(&format!("MRN-BENCH-{index}")),
        )
        .await?;
    let queued = begun.elapsed();
    let id = reply.body["id"]
        .as_str()
        .context("the $send-message response has no id")?;
    let status_url = format!("{}/exchange/outbox/{id}", client.origin);
    loop {
        let status = client.get(&status_url).await?;
        match status.body["status"].as_str() {
            Some("delivered") => return Ok((queued, begun.elapsed())),
            Some("queued" | "sent") if begun.elapsed() < DELIVERY_TIMEOUT => {
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            _ => bail!("message {index} was not delivered: {}", status.body),
        }
    }
}

/// Starts two servers in `work`, makes them trust each other and sends
/// `messages` messages from `senders` concurrent senders.
pub async fn run(
    ward: &Path,
    work: &Path,
    messages: usize,
    senders: usize,
) -> Result<ExchangeResult> {
    let a = Server::start(ward, &work.join("exchange-a"), Backend::Sqlite).await?;
    let b = Server::start(ward, &work.join("exchange-b"), Backend::Sqlite).await?;
    let recipient: Arc<str> = Arc::from(trust_both(&a, &b)?);
    let token = a.token(
        "user/*.cruds",
        &["--role", "physician", "--fhir-user", "Practitioner/bench"],
    )?;
    let clients = http::clients(&a.ca, &a.base, &a.origin, &token, senders)?;

    // One message first, so connection setup stays out of the figures.
    send_one(&clients[0], &recipient, messages).await?;

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in clients {
        let (next, recipient) = (next.clone(), recipient.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= messages {
                    break;
                }
                latencies.push(send_one(&client, &recipient, index).await?);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut queued = Vec::with_capacity(messages);
    let mut delivered = Vec::with_capacity(messages);
    for task in tasks {
        for (queue_latency, delivery_latency) in task.await?? {
            queued.push(queue_latency);
            delivered.push(delivery_latency);
        }
    }
    let elapsed = started.elapsed();
    Ok(ExchangeResult {
        senders,
        queued: Measured::from_latencies(queued, messages, elapsed),
        delivered: Measured::from_latencies(delivered, messages, elapsed),
    })
}

/// Prints the figures of an exchange run.
pub fn print(result: &ExchangeResult) {
    println!(
        "exchange (2 servers on SQLite, {} senders, {} messages of 3 resources): {:.1} messages/s end to end in {:.1} s",
        result.senders,
        result.delivered.ops,
        result.delivered.rate(),
        result.delivered.elapsed.as_secs_f64()
    );
    println!(
        "  queued -> delivered: p50 {:.1} ms, p99 {:.1} ms (status polled every {} ms)",
        result.delivered.percentile_ms(50.0),
        result.delivered.percentile_ms(99.0),
        POLL_INTERVAL.as_millis()
    );
    println!(
        "  $send-message until 202: p50 {:.1} ms, p99 {:.1} ms",
        result.queued.percentile_ms(50.0),
        result.queued.percentile_ms(99.0)
    );
}
