//! TLS for the HTTPS listener: rustls with the aws-lc-rs provider, TLS 1.3
//! only, HTTP/2 and HTTP/1.1 by ALPN, certificate files that are reloaded
//! when they change on disk, and optional client certificates.
//!
//! The listener requests a client certificate but does not require one.
//! A certificate that is presented must chain to the configured roots (the
//! organization CA), otherwise the handshake fails. [`ClientCertAcceptor`]
//! adds a [`ClientCertificate`] to the extensions of every request on a
//! connection that presented one, so handlers and the authentication code
//! can bind tokens to it (RFC 8705).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum_server::accept::Accept;
use axum_server::tls::TlsService;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

/// The URI SAN prefix that names a device in its client certificate.
pub const DEVICE_URI_PREFIX: &str = "urn:ward:device:";

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
    /// The client certificate roots could not be used.
    #[error("client certificate roots rejected: {0}")]
    ClientRoots(String),
}

/// The client certificate a connection presented, verified against the
/// client certificate roots during the handshake.
///
/// Added to request extensions by [`ClientCertAcceptor`]; absent when the
/// client sent no certificate.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    /// The leaf certificate, DER.
    pub der: Arc<CertificateDer<'static>>,
    /// The SHA-256 thumbprint of `der`, base64url without padding: the
    /// `x5t#S256` confirmation value of RFC 8705.
    pub x5t_s256: String,
}

impl ClientCertificate {
    /// Wraps a verified leaf certificate and computes its thumbprint.
    pub fn new(der: CertificateDer<'static>) -> Self {
        let x5t_s256 = x5t_s256(&der);
        Self {
            der: Arc::new(der),
            x5t_s256,
        }
    }

    /// Returns the device id the certificate names in a URI SAN
    /// `urn:ward:device:{id}`. `None` for a certificate without one (a
    /// client certificate that is not a device's) or DER that does not
    /// parse.
    pub fn device_id(&self) -> Option<String> {
        device_id(&self.der)
    }
}

/// Returns the RFC 8705 `x5t#S256` thumbprint of a DER certificate:
/// base64url (no padding) of its SHA-256 digest.
pub fn x5t_s256(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Returns the `x5t#S256` thumbprint of the first certificate in `pem`.
///
/// # Errors
///
/// [`TlsError::Pem`] when `pem` contains no parsable CERTIFICATE block.
pub fn x5t_s256_pem(pem: &[u8]) -> Result<String, TlsError> {
    let der = CertificateDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what: "certificate".into(),
        reason: e.to_string(),
    })?;
    Ok(x5t_s256(&der))
}

/// Returns the device id a DER certificate names: the value after
/// `urn:ward:device:` in its first such URI SAN. The subject CN is not
/// used, so a client certificate issued for something else names no device.
pub fn device_id(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => uri
            .strip_prefix(DEVICE_URI_PREFIX)
            .filter(|id| !id.is_empty())
            .map(str::to_owned),
        _ => None,
    })
}

/// Builds a root store for client certificates from PEM text with one or more
/// CA certificates.
///
/// # Errors
///
/// [`TlsError::Pem`] when the PEM contains no certificate, and
/// [`TlsError::ClientRoots`] when a certificate is not a usable trust anchor.
pub fn client_roots_from_pem(pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what: "client CA certificate".into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: "client CA certificate".into(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| TlsError::ClientRoots(e.to_string()))?;
    }
    Ok(Arc::new(roots))
}

/// Builds a rustls server configuration from PEM text.
///
/// With `client_roots`, the server requests a client certificate, accepts
/// connections without one, and fails the handshake when a presented
/// certificate does not chain to those roots. Without, it requests none.
///
/// # Errors
///
/// [`TlsError::Pem`] for unreadable PEM, [`TlsError::Rustls`] when rustls
/// rejects the certificate and key, and [`TlsError::ClientRoots`] for an
/// empty or unusable root store.
pub fn server_config(
    chain_pem: &[u8],
    key_pem: &[u8],
    client_roots: Option<&Arc<RootCertStore>>,
) -> Result<ServerConfig, TlsError> {
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
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_roots {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::ClientRoots(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key)?;
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
    /// The roots client certificates must chain to; `None` requests no
    /// client certificate.
    pub client_roots: Option<Arc<RootCertStore>>,
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
        server_config(
            &read(&self.cert)?,
            &read(&self.key)?,
            self.client_roots.as_ref(),
        )
    }

    fn modified(&self) -> Option<(SystemTime, SystemTime)> {
        let cert = std::fs::metadata(&self.cert).ok()?.modified().ok()?;
        let key = std::fs::metadata(&self.key).ok()?.modified().ok()?;
        Some((cert, key))
    }

    /// Reloads the files into `config` whenever they change, checking every
    /// `interval`. A renewal that fails to load is logged and the current
    /// certificate stays in use. The client certificate roots stay as given.
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

/// Binds an HTTPS server at `addr` whose requests carry a
/// [`ClientCertificate`] extension when the client presented a certificate.
pub fn bind(
    addr: SocketAddr,
    config: RustlsConfig,
) -> axum_server::Server<SocketAddr, ClientCertAcceptor> {
    axum_server::Server::bind(addr).acceptor(ClientCertAcceptor::new(config))
}

/// A TLS acceptor that wraps [`RustlsAcceptor`] and adds the verified client
/// certificate of each connection to its requests.
#[derive(Debug, Clone)]
pub struct ClientCertAcceptor {
    inner: RustlsAcceptor,
}

impl ClientCertAcceptor {
    /// Creates an acceptor over `config`; reloads of `config` apply to new
    /// connections.
    pub fn new(config: RustlsConfig) -> Self {
        Self {
            inner: RustlsAcceptor::new(config),
        }
    }
}

type AcceptFuture<I, S> = Pin<
    Box<
        dyn Future<Output = std::io::Result<(TlsStream<I>, ClientCertService<TlsService<S>>)>>
            + Send,
    >,
>;

impl<I, S> Accept<I, S> for ClientCertAcceptor
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Send + 'static,
{
    type Stream = TlsStream<I>;
    type Service = ClientCertService<TlsService<S>>;
    type Future = AcceptFuture<I, S>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let handshake = self.inner.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = handshake.await?;
            // rustls has already verified the chain; the first certificate is
            // the leaf.
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| ClientCertificate::new(leaf.clone().into_owned()));
            Ok((
                stream,
                ClientCertService {
                    inner: service,
                    certificate,
                },
            ))
        })
    }
}

/// A service that adds the connection's [`ClientCertificate`] to each
/// request.
#[derive(Debug, Clone)]
pub struct ClientCertService<S> {
    inner: S,
    certificate: Option<ClientCertificate>,
}

impl<S, B> tower::Service<http::Request<B>> for ClientCertService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if let Some(certificate) = &self.certificate {
            request.extensions_mut().insert(certificate.clone());
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_is_base64url_sha256() {
        // SHA-256 of the empty string, base64url without padding.
        assert_eq!(x5t_s256(b""), "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU");
    }

    #[test]
    fn thumbprint_of_pem_matches_der() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["device".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let from_pem = x5t_s256_pem(cert.pem().as_bytes()).expect("pem parses");
        assert_eq!(from_pem, x5t_s256(cert.der()));
        assert!(x5t_s256_pem(b"not pem").is_err());
    }

    #[test]
    fn device_id_comes_from_uri_san() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cn-name");
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "urn:ward:device:3f2a".try_into().expect("uri"),
        )];
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(device_id(cert.der()).as_deref(), Some("3f2a"));

        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "only-cn");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(device_id(cert.der()), None);
        assert_eq!(device_id(b"garbage"), None);
    }
}
