//! Audit records for a SIEM: the formats (one `AuditEvent` per JSON line,
//! or an RFC 5424 syslog message carrying that JSON) and the continuous
//! export that `ward serve` runs for each destination: syslog over TLS, a
//! JSON Lines file, or JSON Lines POSTed to an HTTPS collector.
//!
//! The export reads the log from a cursor kept in the store (namespace
//! [`CURSOR_NAMESPACE`], one key per destination), delivers each batch in
//! order and moves the cursor only after the destination accepted the
//! batch: after the TLS stream was flushed, after the file was synced
//! to disk, or after the HTTPS collector responded with 2xx. A destination that is down is retried with exponential backoff
//! and no record is skipped, so every record arrives at least once. A batch
//! that was delivered but whose cursor was not yet saved (a crash, a kill)
//! is delivered again after a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use thiserror::Error;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use ward_audit::record::Outcome;
use ward_audit::{ChainEntry, StoredAudit};
use ward_store::Store;

use crate::audit::{Auditor, alerts};

/// Syslog facility 10, security/authorization messages (RFC 5424
/// section 6.2.1).
const FACILITY_AUTHPRIV: u8 = 10;

/// Returns the `AuditEvent` JSON of `entry` on one line, its id being the
/// sequence number.
pub fn json_line(entry: &ChainEntry) -> String {
    entry
        .record
        .to_audit_event(&entry.seq.to_string())
        .to_string()
}

/// Returns an RFC 5424 message for `entry`, without framing: severity
/// informational for a success and warning otherwise, `MSGID` `audit`, the
/// sequence number in the structured data and the `AuditEvent` JSON as the
/// message.
pub fn syslog_message(entry: &ChainEntry, hostname: &str) -> String {
    let severity = match entry.record.outcome {
        Outcome::Success => 6,
        _ => 4,
    };
    let priority = u16::from(FACILITY_AUTHPRIV) * 8 + severity;
    let timestamp = entry
        .record
        .recorded
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "-".to_owned());
    let hostname = printable(hostname, 255);
    format!(
        "<{priority}>1 {timestamp} {hostname} ward - audit [ward@32473 seq=\"{}\"] {}",
        entry.seq,
        json_line(entry)
    )
}

/// Keeps printable ASCII without spaces (RFC 5424 `PRINTUSASCII`), `-` when
/// nothing is left.
fn printable(text: &str, max: usize) -> String {
    let kept: String = text
        .chars()
        .filter(|c| ('!'..='~').contains(c))
        .take(max)
        .collect();
    if kept.is_empty() {
        "-".to_owned()
    } else {
        kept
    }
}

/// Frames a message for syslog over TLS with octet counting (RFC 5425
/// section 4.3): the length in bytes, a space, the message.
pub fn octet_counted(message: &str) -> String {
    format!("{} {message}", message.len())
}

/// The store namespace of the export cursors: the next sequence number to
/// deliver, as decimal text, keyed by destination.
pub const CURSOR_NAMESPACE: &str = "audit.siem";

/// The maximum number of records read and delivered at a time.
const BATCH: usize = 500;
/// How often the log is polled for new records.
const POLL: Duration = Duration::from_secs(1);
/// The first retry delay after a failed delivery; it doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The maximum retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a connect, or the delivery of one batch, may take.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A SIEM export setup failure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SiemError {
    /// The syslog address is not `HOST:PORT`.
    #[error("invalid syslog address '{0}': expected HOST:PORT")]
    InvalidAddress(String),
    /// The CA certificate PEM is unreadable or holds no usable certificate.
    #[error("invalid CA certificate: {0}")]
    InvalidCa(String),
    /// The JSON Lines endpoint is not an `https://` URL with a host.
    #[error("invalid SIEM endpoint '{0}': expected an https:// URL")]
    InvalidUrl(String),
}

/// Where the export sends records.
pub enum Destination {
    /// RFC 5424 messages over TLS with octet-counting framing (RFC 5425).
    Syslog {
        /// The collector's host name, also the TLS server name.
        host: String,
        /// The collector's port.
        port: u16,
        /// The TLS client, trusting only the configured CA.
        tls: Arc<rustls::ClientConfig>,
    },
    /// JSON Lines appended to a file.
    Jsonl {
        /// The file.
        path: PathBuf,
    },
    /// JSON Lines POSTed in batches to an HTTPS endpoint
    /// (`Content-Type: application/x-ndjson`). A 2xx response acknowledges
    /// the whole batch.
    Https {
        /// The endpoint, an `https://` URL.
        url: String,
        /// The HTTPS client, trusting only the configured CA.
        client: reqwest::Client,
        /// A bearer token sent with each batch, if the collector needs one.
        token: Option<zeroize::Zeroizing<String>>,
    },
}

impl Destination {
    /// Builds a syslog destination for `address` (`HOST:PORT`) whose
    /// certificate must chain to a certificate in `ca_pem`.
    ///
    /// # Errors
    ///
    /// [`SiemError::InvalidAddress`] for an address without a host or a
    /// valid port, [`SiemError::InvalidCa`] when `ca_pem` holds no
    /// certificate that rustls accepts.
    pub fn syslog(address: &str, ca_pem: &[u8]) -> Result<Self, SiemError> {
        let invalid = || SiemError::InvalidAddress(address.to_owned());
        let (host, port) = address.rsplit_once(':').ok_or_else(invalid)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| invalid())?;
        if host.is_empty() || port == 0 || ServerName::try_from(host).is_err() {
            return Err(invalid());
        }
        Ok(Self::Syslog {
            host: host.to_owned(),
            port,
            tls: Arc::new(client_config(ca_pem)?),
        })
    }

    /// Builds a JSON Lines destination that POSTs to `url`, an `https://`
    /// URL whose certificate must chain to a certificate in `ca_pem`.
    ///
    /// # Errors
    ///
    /// [`SiemError::InvalidAddress`] for a URL that is not `https://`,
    /// [`SiemError::InvalidCa`] when `ca_pem` holds no usable certificate.
    pub fn https(url: &str, ca_pem: &[u8], token: Option<String>) -> Result<Self, SiemError> {
        let parsed = url::Url::parse(url).map_err(|_| SiemError::InvalidUrl(url.to_owned()))?;
        if parsed.scheme() != "https" || parsed.host_str().is_none() {
            return Err(SiemError::InvalidUrl(url.to_owned()));
        }
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(client_config(ca_pem)?)
            .timeout(IO_TIMEOUT)
            // A redirect would send the batch somewhere not configured, and
            // count as delivered; it is an error, retried like any other.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SiemError::InvalidCa(e.to_string()))?;
        Ok(Self::Https {
            url: url.to_owned(),
            client,
            token: token.map(zeroize::Zeroizing::new),
        })
    }

    /// The key of this destination's cursor.
    fn key(&self) -> String {
        match self {
            Self::Syslog { host, port, .. } => format!("syslog:{host}:{port}"),
            Self::Jsonl { path } => format!("jsonl:{}", path.display()),
            Self::Https { url, .. } => format!("https:{url}"),
        }
    }

    /// The destination kind, for logs, metrics and alerts.
    fn kind(&self) -> &'static str {
        match self {
            Self::Syslog { .. } => "syslog",
            Self::Jsonl { .. } => "jsonl",
            Self::Https { .. } => "https",
        }
    }
}

/// Builds a TLS client that trusts only the certificates in `ca_pem`.
fn client_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig, SiemError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem) {
        let certificate = certificate.map_err(|e| SiemError::InvalidCa(e.to_string()))?;
        roots
            .add(certificate)
            .map_err(|e| SiemError::InvalidCa(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(SiemError::InvalidCa("no CERTIFICATE block found".into()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SiemError::InvalidCa(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// When the export backlog alert fires: the lag stayed above `records`
/// for at least `after`.
#[derive(Debug, Clone, Copy)]
pub struct BacklogAlert {
    /// The lag, in records, above which the backlog counts.
    pub records: u64,
    /// How long the lag must stay above `records`.
    pub after: Duration,
}

/// The export of the audit log to one destination.
pub struct Exporter {
    store: Arc<dyn Store>,
    auditor: Arc<Auditor>,
    destination: Destination,
    /// The `HOSTNAME` field of syslog messages.
    hostname: String,
    backlog: BacklogAlert,
    /// Since when the lag has been above the threshold.
    behind_since: Option<Instant>,
    /// Whether the alert for the current backlog was raised.
    alerted: bool,
    /// The open syslog connection, if any.
    connection: Option<TlsStream<TcpStream>>,
}

impl Exporter {
    /// Creates the export of `store` to `destination`; syslog messages
    /// name `hostname` as their origin.
    pub fn new(
        store: Arc<dyn Store>,
        auditor: Arc<Auditor>,
        destination: Destination,
        hostname: &str,
        backlog: BacklogAlert,
    ) -> Self {
        Self {
            store,
            auditor,
            destination,
            hostname: hostname.to_owned(),
            backlog,
            behind_since: None,
            alerted: false,
            connection: None,
        }
    }

    /// Exports records until the task is dropped.
    pub async fn run(mut self) {
        let key = self.destination.key();
        let kind = self.destination.kind();
        let mut cursor = self.load_cursor(&key).await;
        tracing::info!(target: "ward::siem", destination = kind, cursor, "audit export started");
        let mut backoff = FIRST_BACKOFF;
        loop {
            self.observe_lag(cursor).await;
            let rows = match self.read_rows(cursor).await {
                Ok(rows) => rows,
                Err(error) => {
                    tracing::error!(
                        target: "ward::siem",
                        destination = kind,
                        %error,
                        retry_secs = backoff.as_secs(),
                        "reading the audit log for export failed; retrying"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let Some(next) = rows.last().map(|row| row.seq.saturating_add(1)) else {
                tokio::time::sleep(POLL).await;
                continue;
            };
            match self.deliver(&rows).await {
                Ok(()) => {
                    cursor = next;
                    self.save_cursor(&key, cursor).await;
                    backoff = FIRST_BACKOFF;
                }
                Err(error) => {
                    tracing::warn!(
                        target: "ward::siem",
                        destination = kind,
                        %error,
                        first_seq = cursor,
                        retry_secs = backoff.as_secs(),
                        "delivering audit records failed; retrying"
                    );
                    self.connection = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn load_cursor(&self, key: &str) -> u64 {
        let store = self.store.clone();
        let key = key.to_owned();
        let stored =
            tokio::task::spawn_blocking(move || store.kv_get(CURSOR_NAMESPACE, &key)).await;
        match stored {
            Ok(Ok(Some(bytes))) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| text.parse().ok())
                .unwrap_or(0),
            Ok(Ok(None)) => 0,
            Ok(Err(error)) => {
                // Starting over re-delivers records but skips none.
                tracing::error!(target: "ward::siem", %error, "reading the export cursor failed; exporting from the first record");
                0
            }
            Err(error) => {
                tracing::error!(target: "ward::siem", %error, "reading the export cursor failed; exporting from the first record");
                0
            }
        }
    }

    async fn save_cursor(&self, key: &str, cursor: u64) {
        let store = self.store.clone();
        let key = key.to_owned();
        let saved = tokio::task::spawn_blocking(move || {
            store.kv_put(CURSOR_NAMESPACE, &key, cursor.to_string().as_bytes(), None)
        })
        .await;
        let error = match saved {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(error) => error.to_string(),
        };
        // The cursor in memory moves on, so only a restart re-delivers.
        tracing::error!(target: "ward::siem", %error, cursor, "saving the export cursor failed");
    }

    async fn read_rows(&self, cursor: u64) -> Result<Vec<StoredAudit>, String> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.audit_rows(cursor, BATCH))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Sets the lag metric and raises the backlog alert once the lag has
    /// stayed above the threshold long enough.
    async fn observe_lag(&mut self, cursor: u64) {
        let store = self.store.clone();
        let head = tokio::task::spawn_blocking(move || store.audit_head()).await;
        let Ok(Ok(head)) = head else {
            return;
        };
        let lag = head.size.saturating_sub(cursor);
        let kind = self.destination.kind();
        metrics::gauge!(crate::metrics::SIEM_LAG, "destination" => kind).set(lag as f64);
        if lag <= self.backlog.records {
            self.behind_since = None;
            self.alerted = false;
            return;
        }
        let since = *self.behind_since.get_or_insert_with(Instant::now);
        if self.alerted || since.elapsed() < self.backlog.after {
            return;
        }
        self.alerted = true;
        alerts::raise(
            &self.auditor,
            "siem_export_backlog",
            None,
            &[
                ("destination", kind.to_owned()),
                ("lag_records", lag.to_string()),
                ("threshold_records", self.backlog.records.to_string()),
            ],
        )
        .await;
    }

    /// Delivers `rows` in order; `Ok` once the destination accepted all of
    /// them.
    async fn deliver(&mut self, rows: &[StoredAudit]) -> Result<(), String> {
        let result = match &self.destination {
            Destination::Jsonl { path } => {
                tokio::time::timeout(IO_TIMEOUT, append_jsonl(path, rows)).await
            }
            Destination::Https { url, client, token } => {
                let request = client.post(url);
                let request = match token {
                    Some(token) => request.bearer_auth(token.as_str()),
                    None => request,
                };
                tokio::time::timeout(IO_TIMEOUT, post_jsonl(request, rows)).await
            }
            Destination::Syslog { .. } => {
                tokio::time::timeout(IO_TIMEOUT, self.deliver_syslog(rows)).await
            }
        };
        result.map_err(|_| format!("timed out after {} s", IO_TIMEOUT.as_secs()))?
    }

    async fn deliver_syslog(&mut self, rows: &[StoredAudit]) -> Result<(), String> {
        let mut frames = Vec::new();
        for row in rows {
            let message = match ChainEntry::from_canonical(&row.canonical) {
                Ok(entry) => syslog_message(&entry, &self.hostname),
                Err(_) => malformed_syslog(row.seq, &self.hostname),
            };
            frames.extend_from_slice(octet_counted(&message).as_bytes());
        }
        if self.connection.as_mut().is_some_and(peer_closed) {
            self.connection = None;
        }
        if self.connection.is_none() {
            self.connection = Some(self.connect().await?);
        }
        let Some(stream) = self.connection.as_mut() else {
            return Err("no syslog connection".to_owned());
        };
        stream.write_all(&frames).await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())
    }

    async fn connect(&self) -> Result<TlsStream<TcpStream>, String> {
        let Destination::Syslog { host, port, tls } = &self.destination else {
            return Err("not a syslog destination".to_owned());
        };
        let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect((host.as_str(), *port))
            .await
            .map_err(|e| format!("connecting to {host}:{port} failed: {e}"))?;
        tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {host}:{port} failed: {e}"))
    }
}

/// True when the collector closed the connection or it failed. A syslog
/// collector sends nothing, so a read that completes at once means end of
/// stream or an error; anything it does send is discarded.
fn peer_closed(stream: &mut TlsStream<TcpStream>) -> bool {
    // NOTE: RFC 5425 has no acknowledgements. Records written after the
    // collector stopped but before its close reached this side count as
    // delivered; this check only narrows that window.
    let mut buffer = [0u8; 256];
    match stream.read(&mut buffer).now_or_never() {
        None => false,
        Some(Ok(read)) => read == 0,
        Some(Err(_)) => true,
    }
}

/// One JSON line per row, each ended by a newline.
fn json_lines(rows: &[StoredAudit]) -> String {
    let mut text = String::new();
    for row in rows {
        match ChainEntry::from_canonical(&row.canonical) {
            Ok(entry) => text.push_str(&json_line(&entry)),
            Err(_) => text.push_str(&malformed_json(row.seq)),
        }
        text.push('\n');
    }
    text
}

/// POSTs one JSON line per row. Only a 2xx response counts as delivered.
async fn post_jsonl(request: reqwest::RequestBuilder, rows: &[StoredAudit]) -> Result<(), String> {
    let response = request
        .header(http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(json_lines(rows))
        .send()
        .await
        .map_err(|e| format!("posting to the SIEM endpoint failed: {}", e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the SIEM endpoint responded with {status}"))
    }
}

/// Appends one JSON line per row to `path` and syncs the file.
async fn append_jsonl(path: &std::path::Path, rows: &[StoredAudit]) -> Result<(), String> {
    let text = json_lines(rows);
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(|e| format!("opening {} failed: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .await
        .map_err(|e| format!("writing {} failed: {e}", path.display()))?;
    file.sync_data()
        .await
        .map_err(|e| format!("syncing {} failed: {e}", path.display()))
}

/// The JSON line sent in place of a stored record that does not decode, so
/// the collector still sees its sequence number; `ward audit verify` names
/// the problem.
fn malformed_json(seq: u64) -> String {
    serde_json::json!({ "seq": seq, "error": "the stored audit record is malformed" }).to_string()
}

/// The syslog message sent in place of a stored record that does not
/// decode.
fn malformed_syslog(seq: u64, hostname: &str) -> String {
    let priority = u16::from(FACILITY_AUTHPRIV) * 8 + 3;
    let hostname = printable(hostname, 255);
    format!(
        "<{priority}>1 - {hostname} ward - audit [ward@32473 seq=\"{seq}\"] {}",
        malformed_json(seq)
    )
}
