//! Command-line arguments. Every `serve` option can also come from an
//! environment variable (named in `--help`) or from `ward.toml` in the data
//! directory; the command line wins, then the environment, then the file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Ward: a FHIR R4 server for mobile clinical work, with encryption at rest.
#[derive(Debug, Parser)]
#[command(name = "ward", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the FHIR server over HTTPS.
    Serve(Box<ServeCommand>),
    /// Print the organization's CA certificate (PEM), the one clients trust, or import an existing CA.
    Ca(crate::device::CaArgs),
    /// Print a signed access token for administrators and scripts.
    Token(TokenArgs),
    /// Load FHIR Bundles and NDJSON files into the store.
    Import(ImportArgs),
    /// Manage the users who sign in to SMART apps.
    User(crate::user::UserArgs),
    /// Manage enrolled devices: enrollment codes, revocation, wipe and the lost-device report.
    Device(crate::device::DeviceArgs),
    /// Manage the OAuth clients (SMART apps and backend services).
    Client(crate::client::ClientArgs),
    /// Bring a PostgreSQL database's schema up to date.
    Migrate(MigrateArgs),
    /// Verify or export the tamper-evident audit log.
    Audit(AuditArgs),
    /// Rotate the token signing key or the master key, and retire old master keys.
    Keys(KeysArgs),
    /// Write an encrypted, integrity-checked backup of the store while servers keep running.
    Backup(crate::backup::BackupArgs),
    /// Restore a backup into an empty store, then verify it.
    Restore(crate::backup::RestoreArgs),
    /// Manage the organization's exchange identity and the organizations it trusts.
    Org(crate::org::OrgArgs),
    /// Run the exchange scenario on loopback: four organizations, a physician's phone, a referral, an e-prescription and a lab result, with the audit records of each step.
    Demo(crate::demo::DemoArgs),
}

/// `ward serve`: the server options and the audit options.
#[derive(Debug, Clone, Args)]
pub struct ServeCommand {
    /// The server options.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// The audit options.
    #[command(flatten)]
    pub audit: AuditServeArgs,
    /// The message exchange options.
    #[command(flatten)]
    pub exchange: ExchangeServeArgs,
}

/// Message exchange options of `ward serve`.
#[derive(Debug, Clone, Args)]
pub struct ExchangeServeArgs {
    /// Seconds before the first retry of a failed delivery; each further retry waits twice as long, with jitter.
    #[arg(long, env = "WARD_EXCHANGE_RETRY_BASE", default_value_t = 2)]
    pub exchange_retry_base: u64,
    /// The maximum wait between two delivery attempts, in seconds.
    #[arg(long, env = "WARD_EXCHANGE_RETRY_MAX", default_value_t = 600)]
    pub exchange_retry_max: u64,
    /// Seconds after queueing when an undelivered message is marked failed and an alert is raised.
    #[arg(long, env = "WARD_EXCHANGE_GIVE_UP", default_value_t = 86_400)]
    pub exchange_give_up: u64,
    /// The organization's role in the exchange: clinic, pharmacy or lab. It is stored in the exchange identity and shown in the exported trust entry [default: the stored role, or clinic on first start].
    #[arg(long, env = "WARD_ROLE")]
    pub role: Option<ward_exchange::OrgRole>,
}

/// Audit options of `ward serve`.
#[derive(Debug, Clone, Args)]
pub struct AuditServeArgs {
    /// The file signed audit checkpoints are appended to; keep it away from the database [default: audit-checkpoints.txt in the data directory].
    #[arg(long, env = "WARD_AUDIT_CHECKPOINTS")]
    pub audit_checkpoints: Option<PathBuf>,
    /// POST each security alert as JSON to this https:// URL.
    #[arg(long, env = "WARD_ALERT_WEBHOOK")]
    pub alert_webhook: Option<String>,
    /// A PEM CA certificate that the certificates of the syslog collector and the alert webhook chain to; the system roots are never used, so --siem-syslog, --siem-https and --alert-webhook need it.
    #[arg(long, env = "WARD_SIEM_CA")]
    pub siem_ca: Option<PathBuf>,
    /// Export every audit record as RFC 5424 syslog over TLS (RFC 5425 framing) to this HOST:PORT; HOST is also the TLS server name.
    #[arg(long, env = "WARD_SIEM_SYSLOG", value_name = "HOST:PORT")]
    pub siem_syslog: Option<String>,
    /// Append every audit record as one AuditEvent JSON line to this file, synced to disk after each batch.
    #[arg(long, env = "WARD_SIEM_JSONL", value_name = "FILE")]
    pub siem_jsonl: Option<PathBuf>,
    /// POST every audit record as one AuditEvent JSON line, in batches, to this https:// URL of a collector; a 2xx answer acknowledges a batch. The collector's certificate must chain to --siem-ca; a bearer token for it is read from WARD_SIEM_HTTPS_TOKEN.
    #[arg(long, env = "WARD_SIEM_HTTPS", value_name = "URL")]
    pub siem_https: Option<String>,
    /// Raise the export backlog alert when a SIEM export is more than this many records behind...
    #[arg(long, env = "WARD_SIEM_BACKLOG_RECORDS", default_value_t = 10_000)]
    pub siem_backlog_records: u64,
    /// ...for at least this many seconds.
    #[arg(long, env = "WARD_SIEM_BACKLOG_SECS", default_value_t = 300)]
    pub siem_backlog_secs: u64,
}

/// Options of `ward audit`.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// The `ward audit` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum AuditCommand {
    /// Check every audit record and checkpoint; exit 1 naming the first problem.
    Verify(AuditVerifyArgs),
    /// Print audit records, oldest first.
    Export(AuditExportArgs),
}

/// Where the audit log is.
#[derive(Debug, Clone, Args)]
pub struct AuditStoreArgs {
    /// The data directory.
    #[command(flatten)]
    pub data: DataArgs,
    /// The database, as for `ward serve --database`.
    #[arg(long, env = "WARD_DATABASE")]
    pub database: Option<String>,
}

/// Options of `ward audit verify`.
#[derive(Debug, Clone, Args)]
pub struct AuditVerifyArgs {
    /// The data directory and database.
    #[command(flatten)]
    pub store: AuditStoreArgs,
    /// The checkpoint file [default: as `ward serve` uses].
    #[arg(long)]
    pub checkpoints: Option<PathBuf>,
    /// Verify only records FROM..TO (TO exclusive) against the newest checkpoint that covers them.
    #[arg(long, requires = "to")]
    pub from: Option<u64>,
    /// One past the last record to verify, with --from.
    #[arg(long, requires = "from")]
    pub to: Option<u64>,
}

/// Options of `ward audit export`.
#[derive(Debug, Clone, Args)]
pub struct AuditExportArgs {
    /// The data directory and database.
    #[command(flatten)]
    pub store: AuditStoreArgs,
    /// The first sequence number to print.
    #[arg(long, default_value_t = 0)]
    pub since: u64,
    /// The output format: jsonl (one AuditEvent per line) or syslog (RFC 5424 lines).
    #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "syslog"])]
    pub format: String,
}

/// Options of `ward keys`.
#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// The subcommands of `ward keys`.
#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Make a new access-token signing key. Tokens signed by the old key
    /// stay valid until they expire; servers use the new key once restarted.
    RotateSigning(AuditStoreArgs),
    /// Make a new master key and rewrap every key under it while servers
    /// keep running; the old key stays in master-retired/ until retired.
    RotateMaster(crate::keys::RotateMasterArgs),
    /// Delete a retired master key once nothing is wrapped under it any more.
    RetireMaster(crate::keys::RetireMasterArgs),
}

/// The data directory option shared by every command.
#[derive(Debug, Clone, Default, Args)]
pub struct DataArgs {
    /// The data directory (keys, CA, database) [default: ./ward-data].
    #[arg(long, env = "WARD_DATA")]
    pub data: Option<PathBuf>,
}

impl DataArgs {
    /// The data directory, defaulted.
    pub fn dir(&self) -> PathBuf {
        self.data
            .clone()
            .unwrap_or_else(|| PathBuf::from("ward-data"))
    }
}

/// Options of `ward serve`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// The data directory.
    #[command(flatten)]
    pub data: DataArgs,
    /// The address to listen on [default: 127.0.0.1:8443].
    #[arg(long, env = "WARD_LISTEN")]
    pub listen: Option<String>,
    /// The database: a SQLite file path, `sqlite://PATH`, or a PostgreSQL URL such as `postgres://HOST:5432/ward?user=ward&sslmode=disable` (plain TCP only) [default: ward.db in the data directory].
    #[arg(long, env = "WARD_DATABASE")]
    pub database: Option<String>,
    /// A PEM certificate chain to serve instead of one from the built-in CA; reloaded when the file changes.
    #[arg(long, env = "WARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "WARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The public base URL of the server, when it differs from https://LISTEN (for example behind a load balancer).
    #[arg(long, env = "WARD_BASE_URL")]
    pub base_url: Option<String>,
    /// The largest request body accepted, in bytes [default: 33554432].
    #[arg(long, env = "WARD_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// How long, in seconds, SIGTERM waits for requests in flight [default: 30].
    #[arg(long, env = "WARD_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<u64>,
    /// A web sign-in session ends after this long without use: a number with s, m or h [default: 15m].
    #[arg(long, env = "WARD_SESSION_IDLE")]
    pub session_idle: Option<String>,
    /// A web sign-in session ends this long after sign-in, however it is used: a number with s, m or h [default: 12h].
    #[arg(long, env = "WARD_SESSION_MAX")]
    pub session_max: Option<String>,
    /// The web app locks after this long without use until the user's PIN unlocks it: a number with s, m or h [default: 5m].
    #[arg(long, env = "WARD_APP_LOCK")]
    pub app_lock: Option<String>,
}

/// Options of `ward token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The data directory.
    #[command(flatten)]
    pub data: DataArgs,
    /// The SMART scopes to grant, space-separated, such as 'system/*.cruds'.
    #[arg(long)]
    pub scope: String,
    /// How long the token is valid: a number with s, m, h or d.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// The subject the token names.
    #[arg(long, default_value = "ward-cli")]
    pub subject: String,
    /// A patient id to put in context, for patient/ scopes.
    #[arg(long)]
    pub patient: Option<String>,
    /// A role from the access policy (physician, nurse, pharmacist, front_desk, security_admin, auditor, patient, lab_technician), for a token that acts as a user.
    #[arg(long)]
    pub role: Option<String>,
    /// The user's FHIR resource, such as Practitioner/123 (SMART fhirUser).
    #[arg(long)]
    pub fhir_user: Option<String>,
}

/// Options of `ward import`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The data directory, for a direct import into the local store (the server must not be running on it).
    #[command(flatten)]
    pub data: DataArgs,
    /// Import through a running server at this FHIR base URL instead.
    #[arg(long, requires = "token")]
    pub server: Option<String>,
    /// The access token for --server.
    #[arg(long, env = "WARD_TOKEN")]
    pub token: Option<String>,
    /// The CA certificate that signs the server's certificate, for --server [default: ca.pem of the data directory].
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Files or folders of FHIR Bundles (.json) and NDJSON (.ndjson).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// Options of `ward migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// The data directory, whose `ward.toml` may name the database.
    #[command(flatten)]
    pub data: DataArgs,
    /// The PostgreSQL URL of the database to migrate.
    #[arg(long, env = "WARD_DATABASE")]
    pub database: Option<String>,
}
