//! HTTPS clients and the load driver: `measure` runs a fixed number of
//! operations spread over concurrent clients and records each latency.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;

/// An HTTPS client with its own HTTP/2 connection to the server.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: Arc<str>,
    pub origin: Arc<str>,
    pub token: Arc<str>,
}

/// A response body and its size in bytes.
pub struct Reply {
    pub body: Value,
    pub bytes: usize,
}

impl Client {
    /// Sends `request` with the bearer token and fails on a status other
    /// than 2xx.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Reply> {
        let (status, reply) = self.exchange(request).await?;
        if !status.is_success() {
            bail!("status {status}: {}", reply.body);
        }
        Ok(reply)
    }

    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, Reply)> {
        let response = request
            .bearer_auth(&*self.token)
            .header("Accept", "application/fhir+json")
            .send()
            .await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let reply = Reply {
            body,
            bytes: bytes.len(),
        };
        Ok((status, reply))
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}/{path}", self.base)
        }
    }

    /// `GET` of a path under the FHIR base, or of a full URL.
    pub async fn get(&self, path: &str) -> Result<Reply> {
        self.send(self.http.get(self.url(path))).await
    }

    /// `GET` like [`Client::get`], but returns `None` for 403 Forbidden.
    pub async fn get_unless_forbidden(&self, path: &str) -> Result<Option<Reply>> {
        let (status, reply) = self.exchange(self.http.get(self.url(path))).await?;
        if status == reqwest::StatusCode::FORBIDDEN {
            return Ok(None);
        }
        if !status.is_success() {
            bail!("GET {path}: status {status}: {}", reply.body);
        }
        Ok(Some(reply))
    }

    /// `POST` of a JSON body to a path under the FHIR base (the base itself
    /// for an empty path).
    pub async fn post(&self, path: &str, body: &Value) -> Result<Reply> {
        let url = if path.is_empty() {
            self.base.to_string()
        } else {
            format!("{}/{path}", self.base)
        };
        let request = self
            .http
            .post(url)
            .header("Content-Type", "application/fhir+json")
            .body(serde_json::to_vec(body)?);
        self.send(request).await
    }

    /// `PUT` of a JSON body, with `If-Match` when `version` is set.
    pub async fn put(&self, path: &str, body: &Value, version: Option<u64>) -> Result<Reply> {
        let mut request = self
            .http
            .put(format!("{}/{path}", self.base))
            .header("Content-Type", "application/fhir+json")
            .body(serde_json::to_vec(body)?);
        if let Some(version) = version {
            request = request.header("If-Match", format!("W/\"{version}\""));
        }
        self.send(request).await
    }

    /// `GET /healthz`, which needs no token.
    pub async fn healthz(&self) -> Result<()> {
        let response = self
            .http
            .get(format!("{}/healthz", self.origin))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("/healthz returned {}", response.status());
        }
        response.bytes().await?;
        Ok(())
    }
}

/// Builds a client that trusts only the server's CA and speaks HTTP/2 on
/// one kept-alive connection.
pub fn build_client(ca: &reqwest::Certificate) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca.clone())
        .http2_prior_knowledge()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(300))
        .build()?)
}

/// `count` clients with their own connections and the same token.
pub fn clients(
    ca: &reqwest::Certificate,
    base: &str,
    origin: &str,
    token: &str,
    count: usize,
) -> Result<Vec<Client>> {
    let (base, origin, token): (Arc<str>, Arc<str>, Arc<str>) =
        (Arc::from(base), Arc::from(origin), Arc::from(token));
    (0..count.max(1))
        .map(|_| {
            Ok(Client {
                http: build_client(ca)?,
                base: base.clone(),
                origin: origin.clone(),
                token: token.clone(),
            })
        })
        .collect()
}

/// The latencies and totals of one measured operation.
pub struct Measured {
    /// Operations run.
    pub ops: usize,
    /// Units of work done, such as resources imported; equal to `ops`
    /// for single requests.
    pub units: usize,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl Measured {
    /// Builds the figures from latencies measured elsewhere.
    pub fn from_latencies(latencies: Vec<Duration>, units: usize, elapsed: Duration) -> Self {
        Self {
            ops: latencies.len(),
            units,
            elapsed,
            latencies,
        }
    }

    /// Units per second.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.units as f64 / secs
        } else {
            0.0
        }
    }

    /// The latency at percentile `p` (0 to 100) in milliseconds, by the
    /// nearest-rank method.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        let index = rank.clamp(1, sorted.len()) - 1;
        sorted[index].as_secs_f64() * 1000.0
    }
}

/// Runs `count` operations spread over the clients; `op(client, i)` runs
/// operation `i` and returns its units of work. Any failed operation fails
/// the benchmark.
pub async fn measure<F, Fut>(clients: &[Client], count: usize, op: F) -> Result<Measured>
where
    F: Fn(Client, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<usize>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in clients {
        let (op, next, client) = (op.clone(), next.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut units = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let begun = Instant::now();
                units += op(client.clone(), i).await?;
                latencies.push(begun.elapsed());
            }
            anyhow::Ok((latencies, units))
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    let mut units = 0;
    for task in tasks {
        let (mut part, done) = task.await??;
        latencies.append(&mut part);
        units += done;
    }
    Ok(Measured {
        ops: latencies.len(),
        units,
        elapsed: started.elapsed(),
        latencies,
    })
}
