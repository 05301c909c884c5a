//! The settings of `ward serve` and `ward token`, merged from the command
//! line, the environment and `ward.toml`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use ward_server::audit::AuditFailure;
use ward_server::audit::alerts::AlertSettings;
use ward_store::Database;

use crate::cli::ServeArgs;

/// The keys `ward.toml` may set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<String>,
    database: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    base_url: Option<String>,
    max_body_bytes: Option<usize>,
    shutdown_grace: Option<u64>,
    session_idle: Option<String>,
    session_max: Option<String>,
    app_lock: Option<String>,
    audit_failure: Option<String>,
    audit_checkpoints: Option<PathBuf>,
    alerts: Option<AlertFileSettings>,
}

/// The `[alerts]` table of `ward.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertFileSettings {
    distinct_patients: Option<usize>,
    patient_window_minutes: Option<u64>,
    sign_in_failures: Option<usize>,
    sign_in_window_minutes: Option<u64>,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The data directory.
    pub data: PathBuf,
    /// The listen address.
    pub listen: String,
    /// Where the store lives: SQLite (the default) or PostgreSQL.
    pub store: Database,
    /// External TLS certificate and key.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The server origin, such as `https://127.0.0.1:8443`.
    pub origin: String,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// Seconds to drain requests on SIGTERM.
    pub shutdown_grace: u64,
    /// Seconds without use after which a web sign-in session ends.
    pub session_idle: i64,
    /// Seconds after sign-in at which a web sign-in session ends.
    pub session_max: i64,
    /// Seconds without use after which the web app locks.
    pub app_lock: i64,
    /// What happens to a request whose audit record cannot be written.
    pub audit_failure: AuditFailure,
    /// The checkpoint file named in `ward.toml`, if any.
    pub audit_checkpoints: Option<PathBuf>,
    /// The alert thresholds.
    pub alerts: AlertSettings,
}

impl Settings {
    /// The FHIR base URL.
    pub fn fhir_base(&self) -> String {
        format!("{}/fhir", self.origin)
    }
}

fn read_file(path: &Path) -> Result<FileSettings> {
    if !path.exists() {
        return Ok(FileSettings::default());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Merges the command line and environment (`args`) over `ward.toml` over
/// the defaults.
pub fn resolve(args: &ServeArgs) -> Result<Settings> {
    let data = args.data.dir();
    let file = read_file(&data.join("ward.toml"))?;
    let listen = args
        .listen
        .clone()
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:8443".to_owned());
    let store = Database::from_locator(
        args.database.clone().or(file.database).as_deref(),
        &data.join("ward.db"),
    );
    let tls = match (
        args.tls_cert.clone().or(file.tls_cert),
        args.tls_key.clone().or(file.tls_key),
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => bail!("set both tls_cert and tls_key, or neither"),
    };
    let origin = match args.base_url.clone().or(file.base_url) {
        Some(url) => url
            .trim_end_matches('/')
            .trim_end_matches("/fhir")
            .to_owned(),
        None => origin_for(&listen),
    };
    let session_idle = match args.session_idle.clone().or(file.session_idle) {
        Some(text) => parse_session_duration("session_idle", &text)?,
        None => 15 * 60,
    };
    let session_max = match args.session_max.clone().or(file.session_max) {
        Some(text) => parse_session_duration("session_max", &text)?,
        None => 12 * 3600,
    };
    if session_idle > session_max {
        bail!("session_idle must not be longer than session_max");
    }
    let app_lock = match args.app_lock.clone().or(file.app_lock) {
        Some(text) => parse_session_duration("app_lock", &text)?,
        None => 5 * 60,
    };
    let audit_failure = match file.audit_failure.as_deref() {
        None | Some("deny") => AuditFailure::Deny,
        Some("allow") => AuditFailure::Allow,
        Some(other) => bail!("audit_failure must be \"deny\" or \"allow\", got '{other}'"),
    };
    let alerts = alert_settings(file.alerts.unwrap_or_default())?;
    Ok(Settings {
        data,
        listen,
        store,
        tls,
        origin,
        max_body_bytes: args
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(32 * 1024 * 1024),
        shutdown_grace: args.shutdown_grace.or(file.shutdown_grace).unwrap_or(30),
        session_idle,
        session_max,
        app_lock,
        audit_failure,
        audit_checkpoints: file.audit_checkpoints,
        alerts,
    })
}

/// Applies the `[alerts]` table over the default thresholds.
fn alert_settings(file: AlertFileSettings) -> Result<AlertSettings> {
    let mut alerts = AlertSettings::default();
    let minutes = |name: &str, value: u64| {
        if value == 0 || value > 7 * 24 * 60 {
            bail!("alerts.{name} must be between 1 and 10080 minutes, got {value}");
        }
        Ok(std::time::Duration::from_secs(value * 60))
    };
    if let Some(count) = file.distinct_patients {
        alerts.distinct_patients = count;
    }
    if let Some(value) = file.patient_window_minutes {
        alerts.patient_window = minutes("patient_window_minutes", value)?;
    }
    if let Some(count) = file.sign_in_failures {
        if count == 0 {
            bail!("alerts.sign_in_failures must be at least 1");
        }
        alerts.sign_in_failures = count;
    }
    if let Some(value) = file.sign_in_window_minutes {
        alerts.sign_in_window = minutes("sign_in_window_minutes", value)?;
    }
    Ok(alerts)
}

/// Longest accepted session timeout: 30 days, in seconds.
const MAX_SESSION_SECS: i64 = 30 * 86_400;

/// Parses a session timeout such as `90s`, `15m` or `12h` into seconds.
fn parse_session_duration(name: &str, text: &str) -> Result<i64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let invalid = || format!("{name} '{text}' must be a number followed by s, m or h");
    let number: i64 = number.parse().with_context(invalid)?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => bail!(invalid()),
    };
    let secs = number.saturating_mul(factor);
    if secs <= 0 || secs > MAX_SESSION_SECS {
        bail!("{name} must be between 1s and 720h, got '{text}'");
    }
    Ok(secs)
}

/// The origin clients use for a listen address; a wildcard address becomes
/// `localhost`.
fn origin_for(listen: &str) -> String {
    let (host, port) = listen.rsplit_once(':').unwrap_or((listen, "8443"));
    let host = match host {
        "0.0.0.0" | "[::]" | "" => "localhost",
        h => h,
    };
    if port == "443" {
        format!("https://{host}")
    } else {
        format!("https://{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_durations_parse() {
        assert_eq!(parse_session_duration("x", "90s").unwrap(), 90);
        assert_eq!(parse_session_duration("x", "15m").unwrap(), 900);
        assert_eq!(parse_session_duration("x", "12h").unwrap(), 43_200);
        for bad in ["", "m", "0s", "5d", "-1m", "721h"] {
            assert!(parse_session_duration("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wildcard_listen_becomes_localhost() {
        assert_eq!(origin_for("0.0.0.0:9000"), "https://localhost:9000");
        assert_eq!(origin_for("127.0.0.1:8443"), "https://127.0.0.1:8443");
        assert_eq!(origin_for("[::1]:443"), "https://[::1]");
    }
}
