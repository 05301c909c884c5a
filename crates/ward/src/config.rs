//! The settings of `ward serve` and `ward token`, merged from the command
//! line, the environment and `ward.toml`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

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
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The data directory.
    pub data: PathBuf,
    /// The listen address.
    pub listen: String,
    /// The SQLite database file.
    pub database: PathBuf,
    /// External TLS certificate and key.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The server origin, such as `https://127.0.0.1:8443`.
    pub origin: String,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// Seconds to drain requests on SIGTERM.
    pub shutdown_grace: u64,
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
    let database = match args.database.clone().or(file.database) {
        None => data.join("ward.db"),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            bail!("PostgreSQL is not supported by this build yet; use a SQLite path")
        }
        Some(url) => PathBuf::from(url.strip_prefix("sqlite://").unwrap_or(&url)),
    };
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
    Ok(Settings {
        data,
        listen,
        database,
        tls,
        origin,
        max_body_bytes: args
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(32 * 1024 * 1024),
        shutdown_grace: args.shutdown_grace.or(file.shutdown_grace).unwrap_or(30),
    })
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
    fn wildcard_listen_becomes_localhost() {
        assert_eq!(origin_for("0.0.0.0:9000"), "https://localhost:9000");
        assert_eq!(origin_for("127.0.0.1:8443"), "https://127.0.0.1:8443");
        assert_eq!(origin_for("[::1]:443"), "https://[::1]");
    }
}
