//! TLS for the HTTPS listener: rustls with the aws-lc-rs provider, TLS 1.3
//! only, HTTP/2 and HTTP/1.1 by ALPN, and certificate files that are
//! reloaded when they change on disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum_server::tls_rustls::RustlsConfig;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

/// A TLS setup failure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate or key PEM was unreadable or empty.
    #[error("{what}: {reason}")]
    Pem {
        /// Which input.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// rustls rejected the certificate and key.
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds a rustls server configuration from PEM text.
pub fn server_config(chain_pem: &[u8], key_pem: &[u8]) -> Result<ServerConfig, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what: "certificate".into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: "certificate".into(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
        what: "private key".into(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Certificate and key files supplied by the operator.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
}

impl CertFiles {
    /// Loads both files into a rustls configuration.
    pub fn load(&self) -> Result<ServerConfig, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| TlsError::Pem {
                what: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        server_config(&read(&self.cert)?, &read(&self.key)?)
    }

    fn modified(&self) -> Option<(SystemTime, SystemTime)> {
        let cert = std::fs::metadata(&self.cert).ok()?.modified().ok()?;
        let key = std::fs::metadata(&self.key).ok()?.modified().ok()?;
        Some((cert, key))
    }

    /// Reloads the files into `config` whenever they change, checking every
    /// `interval`. A renewal that fails to load is logged and the current
    /// certificate stays in use.
    pub fn watch(self, config: RustlsConfig, interval: Duration) {
        tokio::spawn(async move {
            let mut last = self.modified();
            loop {
                tokio::time::sleep(interval).await;
                let now = self.modified();
                if now == last {
                    continue;
                }
                last = now;
                match self.load() {
                    Ok(server) => {
                        config.reload_from_config(Arc::new(server));
                        tracing::info!(cert = %self.cert.display(), "reloaded TLS certificate");
                    }
                    Err(error) => {
                        tracing::warn!(cert = %self.cert.display(), %error, "renewed TLS certificate failed to load; keeping the current one");
                    }
                }
            }
        });
    }
}
