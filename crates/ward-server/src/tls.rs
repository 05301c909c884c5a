//! TLS for the HTTPS listener: rustls with the aws-lc-rs provider, TLS 1.3
//! only, HTTP/2 and HTTP/1.1 by ALPN, certificate files that are reloaded
//! when they change on disk, and optional client certificates.
//!
//! The listener requests a client certificate but does not require one.
//! A certificate that is presented must chain to the configured roots,
//! otherwise the handshake fails. With a [`ClientTrust`] those roots are the
//! organization CA (devices) and the CAs of the trusted organizations
//! (exchange deliveries), reloaded while the server runs.
//!
//! [`ClientCertAcceptor`] sorts what a connection presented. A certificate
//! that chains to the organization CA and names no organization becomes a
//! [`ClientCertificate`] in the extensions of every request on that
//! connection. Handlers and the authentication code bind tokens to it (RFC
//! 8705), and the device routes identify the device by it. Any other
//! certificate, from a partner's CA or naming an organization
//! (`urn:ward:org:ID`), becomes a [`PeerCertificate`] instead, which only
//! `$process-message` reads: an organization certificate never gets tokens
//! or passes the device checks, and a partner's certificate never names a
//! device here.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum_server::accept::Accept;
use axum_server::tls::TlsService;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

/// The URI SAN prefix that names a device in its client certificate.
pub const DEVICE_URI_PREFIX: &str = "urn:ward:device:";

/// The URI SAN prefix that names an organization in its exchange client
/// certificate.
pub const ORG_URI_PREFIX: &str = ward_crypto::ca::ORG_URI_PREFIX;

/// The minimum time between two reloads of the partner roots that a
/// certificate from an unknown CA triggers. Each reload reads the trust
/// bundle from the store, so this bounds the reads such certificates cause.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(100);

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
    uri_san_value(der, DEVICE_URI_PREFIX)
}

/// Returns the organization id a DER certificate names: the value after
/// `urn:ward:org:` in its first such URI SAN.
pub fn org_id(der: &[u8]) -> Option<String> {
    uri_san_value(der, ORG_URI_PREFIX)
}

/// Returns the rest of the first URI SAN that starts with `prefix`, when
/// it is not empty.
fn uri_san_value(der: &[u8], prefix: &str) -> Option<String> {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => uri
            .strip_prefix(prefix)
            .filter(|id| !id.is_empty())
            .map(str::to_owned),
        _ => None,
    })
}

/// A client certificate that is not the organization's own device or user
/// certificate: one that chains to a trusted partner's CA, or that names an
/// organization. Verified against the client roots during the handshake;
/// `$process-message` checks it against the sender's trust entry.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    /// The presented chain, leaf first.
    pub chain: Arc<Vec<CertificateDer<'static>>>,
    /// The organization id of the leaf's `urn:ward:org:` URI SAN.
    pub org_id: Option<String>,
}

impl PeerCertificate {
    /// Checks that the chain ends at the CA certificate `ca_pem` and that
    /// the leaf is valid now for client authentication.
    ///
    /// # Errors
    ///
    /// [`TlsError::Pem`] or [`TlsError::ClientRoots`] for an unusable CA,
    /// and [`TlsError::Rustls`] when the chain does not verify.
    pub fn verify_issued_by(&self, ca_pem: &str) -> Result<(), TlsError> {
        let roots = client_roots_from_pem(ca_pem.as_bytes())?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| TlsError::ClientRoots(e.to_string()))?;
        let (leaf, intermediates) = self.chain.split_first().ok_or_else(|| TlsError::Pem {
            what: "client certificate".into(),
            reason: "the chain is empty".into(),
        })?;
        verifier.verify_client_cert(leaf, intermediates, UnixTime::now())?;
        Ok(())
    }
}

/// Reads the PEM CA certificates of the trusted organizations; run when
/// the partner roots are reloaded.
pub type PartnerRootsLoader = Arc<dyn Fn() -> Result<Vec<String>, String> + Send + Sync>;

/// The roots client certificates must chain to: the organization CA and
/// the CAs of the trusted organizations. The partner CAs are reloaded with
/// [`ClientTrust::reload`] on an interval (see [`ClientTrust::watch`]). A
/// handshake that presents a certificate from a CA not yet loaded also
/// reloads them, at most every 100 ms, so a new `ward org trust` takes
/// effect without a restart.
pub struct ClientTrust {
    own: Arc<dyn ClientCertVerifier>,
    own_roots: Arc<RootCertStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    combined: RwLock<Arc<dyn ClientCertVerifier>>,
    partners: Mutex<PartnerSet>,
    loader: Option<PartnerRootsLoader>,
    last_reload: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for ClientTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let partners = self.partners.lock().map(|p| p.in_use).unwrap_or_default();
        f.debug_struct("ClientTrust")
            .field("partner_cas", &partners)
            .finish_non_exhaustive()
    }
}

impl ClientTrust {
    /// Trusts `own_ca_pem` (one or more PEM CA certificates) for devices and
    /// users, and the PEM CAs `loader` returns for partner organizations.
    ///
    /// # Errors
    ///
    /// As [`client_roots_from_pem`], and [`TlsError::ClientRoots`] when
    /// rustls rejects the roots.
    pub fn new(
        own_ca_pem: &[u8],
        loader: Option<PartnerRootsLoader>,
    ) -> Result<Arc<Self>, TlsError> {
        let own_roots = client_roots_from_pem(own_ca_pem)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let own = optional_verifier(own_roots.clone(), &provider)?;
        let trust = Arc::new(Self {
            combined: RwLock::new(own.clone()),
            own,
            own_roots,
            provider,
            partners: Mutex::new(PartnerSet::default()),
            loader,
            last_reload: Mutex::new(None),
        });
        trust.reload();
        Ok(trust)
    }

    /// Returns the verifier for a server configuration; it follows reloads.
    pub fn verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(ReloadingVerifier(self.clone()))
    }

    /// Reads the partner CAs with the loader and uses them from the next
    /// handshake on. A CA that does not parse is left out and logged; a
    /// failing loader keeps the current roots. Returns the number of partner
    /// CAs in use.
    pub fn reload(&self) -> usize {
        // Handshakes and `serve` run on async worker threads, and the
        // loader may block on the store (PostgreSQL runs its own runtime).
        let on_worker = tokio::runtime::Handle::try_current().is_ok_and(|handle| {
            handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        });
        if on_worker {
            tokio::task::block_in_place(|| self.reload_now())
        } else {
            self.reload_now()
        }
    }

    /// Runs the loader on the current thread, see [`ClientTrust::reload`].
    fn reload_now(&self) -> usize {
        if let Ok(mut last) = self.last_reload.lock() {
            *last = Some(Instant::now());
        }
        let Some(loader) = &self.loader else {
            return 0;
        };
        match loader() {
            Ok(pems) => self.set_partner_cas(pems),
            Err(error) => {
                tracing::warn!(%error, "reading the trusted organizations' CAs failed; keeping the current client certificate roots");
                self.partners.lock().map(|p| p.in_use).unwrap_or_default()
            }
        }
    }

    /// Uses `pems` as the partner CAs from the next handshake on. Returns
    /// the number of CAs in use.
    pub fn set_partner_cas(&self, mut pems: Vec<String>) -> usize {
        pems.sort();
        pems.dedup();
        let Ok(mut current) = self.partners.lock() else {
            return 0;
        };
        if current.certificates == pems {
            return current.in_use;
        }
        let mut roots = (*self.own_roots).clone();
        let mut used = Vec::with_capacity(pems.len());
        for pem in &pems {
            let added = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .ok()
                .filter(|certs| !certs.is_empty())
                .is_some_and(|certs| certs.into_iter().all(|cert| roots.add(cert).is_ok()));
            if added {
                used.push(pem.as_str());
            } else {
                tracing::warn!(
                    "a trusted organization's CA certificate is not a usable trust anchor; its deliveries will fail the TLS handshake"
                );
            }
        }
        match optional_verifier(Arc::new(roots), &self.provider) {
            Ok(verifier) => {
                if let Ok(mut combined) = self.combined.write() {
                    *combined = verifier;
                }
                tracing::info!(
                    partner_cas = used.len(),
                    "client certificate roots reloaded"
                );
                *current = PartnerSet {
                    in_use: used.len(),
                    certificates: pems,
                };
                current.in_use
            }
            Err(error) => {
                tracing::warn!(%error, "building the client certificate verifier failed; keeping the current roots");
                current.in_use
            }
        }
    }

    /// Reloads the partner CAs every `interval` on a blocking thread, so a
    /// removed organization's CA stops being accepted within that time.
    pub fn watch(self: &Arc<Self>, interval: Duration) {
        let trust = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let trust = trust.clone();
                let _ = tokio::task::spawn_blocking(move || trust.reload()).await;
            }
        });
    }

    /// Returns true when `chain` verifies against the organization CA alone.
    fn issued_by_own_ca(&self, chain: &[CertificateDer<'static>]) -> bool {
        chain.split_first().is_some_and(|(leaf, intermediates)| {
            self.own
                .verify_client_cert(leaf, intermediates, UnixTime::now())
                .is_ok()
        })
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.combined
            .read()
            .map_or_else(|_| self.own.clone(), |verifier| verifier.clone())
    }

    /// Reloads when the last reload is older than [`MIN_RELOAD_INTERVAL`].
    fn reload_if_idle(&self) -> bool {
        let due = self
            .last_reload
            .lock()
            .is_ok_and(|last| last.is_none_or(|at| at.elapsed() >= MIN_RELOAD_INTERVAL));
        if due {
            self.reload();
        }
        due
    }
}

/// Builds a verifier over `roots` that accepts connections without a
/// certificate.
fn optional_verifier(
    roots: Arc<RootCertStore>,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::ClientRoots(e.to_string()))
}

/// The partner CAs last given to [`ClientTrust::set_partner_cas`].
#[derive(Debug, Default)]
struct PartnerSet {
    /// The PEM certificates as given, sorted, so an unchanged set is not
    /// rebuilt and an unusable CA is not parsed again on every reload.
    certificates: Vec<String>,
    /// How many of them are trust anchors now.
    in_use: usize,
}

/// The client certificate verifier of a [`ClientTrust`]: the current roots,
/// with a reload when a certificate's issuer is unknown.
#[derive(Debug)]
struct ReloadingVerifier(Arc<ClientTrust>);

impl ClientCertVerifier for ReloadingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Only the organization CA is named: clients with one certificate
        // (organizations, devices) send it whatever the hint lists.
        self.0.own.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let first = self
            .0
            .current()
            .verify_client_cert(end_entity, intermediates, now);
        // CAs made with the default organization name share one subject, so
        // a CA not yet loaded shows as a bad signature as well as an unknown
        // issuer.
        let unknown_issuer = matches!(
            first,
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature
            ))
        );
        if unknown_issuer && self.0.reload_if_idle() {
            return self
                .0
                .current()
                .verify_client_cert(end_entity, intermediates, now);
        }
        first
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.own.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.own.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.own.supported_verify_schemes()
    }
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
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = match client_roots {
        Some(roots) => Some(optional_verifier(roots.clone(), &provider)?),
        None => None,
    };
    server_config_with_verifier(chain_pem, key_pem, verifier)
}

/// Builds a rustls server configuration from PEM text with a client
/// certificate verifier, such as [`ClientTrust::verifier`]; without one it
/// requests no client certificate.
///
/// # Errors
///
/// As [`server_config`].
pub fn server_config_with_verifier(
    chain_pem: &[u8],
    key_pem: &[u8],
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
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
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
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
    pub client_trust: Option<Arc<ClientTrust>>,
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
        server_config_with_verifier(
            &read(&self.cert)?,
            &read(&self.key)?,
            self.client_trust.as_ref().map(ClientTrust::verifier),
        )
    }

    fn modified(&self) -> Option<(SystemTime, SystemTime)> {
        let cert = std::fs::metadata(&self.cert).ok()?.modified().ok()?;
        let key = std::fs::metadata(&self.key).ok()?.modified().ok()?;
        Some((cert, key))
    }

    /// Reloads the files into `config` whenever they change, checking every
    /// `interval`. A renewal that fails to load is logged and the current
    /// certificate stays in use. The client certificate roots follow the
    /// [`ClientTrust`].
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
///
/// With `trust`, a certificate is a [`ClientCertificate`] only when it
/// chains to the organization CA and names no organization; otherwise it is
/// a [`PeerCertificate`]. Without, every certificate that names no
/// organization is a [`ClientCertificate`].
pub fn bind(
    addr: SocketAddr,
    config: RustlsConfig,
    trust: Option<Arc<ClientTrust>>,
) -> axum_server::Server<SocketAddr, ClientCertAcceptor> {
    axum_server::Server::bind(addr).acceptor(ClientCertAcceptor::new(config).with_trust(trust))
}

/// A TLS acceptor that wraps [`RustlsAcceptor`] and adds the verified client
/// certificate of each connection to its requests.
#[derive(Debug, Clone)]
pub struct ClientCertAcceptor {
    inner: RustlsAcceptor,
    trust: Option<Arc<ClientTrust>>,
}

impl ClientCertAcceptor {
    /// Creates an acceptor over `config`; reloads of `config` apply to new
    /// connections.
    pub fn new(config: RustlsConfig) -> Self {
        Self {
            inner: RustlsAcceptor::new(config),
            trust: None,
        }
    }

    /// Sorts presented certificates by `trust`, see [`bind`].
    #[must_use]
    pub fn with_trust(mut self, trust: Option<Arc<ClientTrust>>) -> Self {
        self.trust = trust;
        self
    }
}

/// What a connection presented, as the acceptor sorted it.
#[derive(Debug, Clone)]
enum Presented {
    None,
    Client(ClientCertificate),
    Peer(PeerCertificate),
}

/// Sorts a verified chain into a device or user certificate of this
/// organization, or a peer organization's certificate.
fn sort_chain(trust: Option<&ClientTrust>, chain: Option<&[CertificateDer<'_>]>) -> Presented {
    let Some(chain) = chain.filter(|chain| !chain.is_empty()) else {
        return Presented::None;
    };
    let chain: Vec<CertificateDer<'static>> =
        chain.iter().map(|cert| cert.clone().into_owned()).collect();
    let org = org_id(&chain[0]);
    let own = trust.is_none_or(|trust| trust.issued_by_own_ca(&chain));
    if own && org.is_none() {
        Presented::Client(ClientCertificate::new(chain[0].clone()))
    } else {
        Presented::Peer(PeerCertificate {
            chain: Arc::new(chain),
            org_id: org,
        })
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
        let trust = self.trust.clone();
        Box::pin(async move {
            let (stream, service) = handshake.await?;
            // rustls has already verified the chain; the first certificate is
            // the leaf.
            let presented = sort_chain(trust.as_deref(), stream.get_ref().1.peer_certificates());
            Ok((
                stream,
                ClientCertService {
                    inner: service,
                    presented,
                },
            ))
        })
    }
}

/// A service that adds the connection's [`ClientCertificate`] or
/// [`PeerCertificate`] to each request.
#[derive(Debug, Clone)]
pub struct ClientCertService<S> {
    inner: S,
    presented: Presented,
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
        match &self.presented {
            Presented::None => {}
            Presented::Client(certificate) => {
                request.extensions_mut().insert(certificate.clone());
            }
            Presented::Peer(certificate) => {
                request.extensions_mut().insert(certificate.clone());
            }
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

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM")
    }

    fn device_cert(ca: &ward_crypto::CertificateAuthority) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let issued = ca
            .issue_device_certificate(
                &csr,
                "dev-1",
                "urn:ward:device:dev-1",
                time::Duration::days(1),
            )
            .expect("device certificate");
        issued.cert_der
    }

    #[test]
    fn presented_certificates_are_sorted_by_issuer_and_name() {
        let own = ward_crypto::CertificateAuthority::create("Clinic A").expect("CA");
        let partner = ward_crypto::CertificateAuthority::create("Pharmacy B").expect("CA");
        let partner_pem = partner.to_pem();
        let trust = ClientTrust::new(
            own.to_pem().as_bytes(),
            Some(Arc::new(move || Ok(vec![partner_pem.clone()]))),
        )
        .expect("trust");

        // The organization's own device: a client certificate with its id.
        let device = device_cert(&own);
        match sort_chain(Some(&trust), Some(&[device])) {
            Presented::Client(cert) => assert_eq!(cert.device_id().as_deref(), Some("dev-1")),
            other => panic!("own device sorted as {other:?}"),
        }
        // The organization's own exchange certificate names an organization.
        let own_org = der(&own
            .issue_org_client_certificate("org-a")
            .expect("cert")
            .cert_pem);
        match sort_chain(Some(&trust), Some(&[own_org])) {
            Presented::Peer(peer) => assert_eq!(peer.org_id.as_deref(), Some("org-a")),
            other => panic!("own org certificate sorted as {other:?}"),
        }
        // A partner's device certificate never names a device here.
        let partner_device = device_cert(&partner);
        match sort_chain(Some(&trust), Some(&[partner_device])) {
            Presented::Peer(peer) => assert_eq!(peer.org_id, None),
            other => panic!("partner device sorted as {other:?}"),
        }
        assert!(matches!(sort_chain(Some(&trust), None), Presented::None));
    }

    #[test]
    fn unknown_issuer_triggers_a_reload() {
        let own = ward_crypto::CertificateAuthority::create("Clinic A").expect("CA");
        let partner = ward_crypto::CertificateAuthority::create("Pharmacy B").expect("CA");
        let partner_pem = partner.to_pem();
        let trusted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = trusted.clone();
        let trust = ClientTrust::new(
            own.to_pem().as_bytes(),
            Some(Arc::new(move || {
                Ok(if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    vec![partner_pem.clone()]
                } else {
                    Vec::new()
                })
            })),
        )
        .expect("trust");
        let verifier = trust.verifier();
        let leaf = der(&partner
            .issue_org_client_certificate("org-b")
            .expect("cert")
            .cert_pem);
        std::thread::sleep(MIN_RELOAD_INTERVAL);
        assert!(
            verifier
                .verify_client_cert(&leaf, &[], UnixTime::now())
                .is_err()
        );

        // Trusted now: the next handshake reloads and passes.
        trusted.store(true, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(MIN_RELOAD_INTERVAL);
        verifier
            .verify_client_cert(&leaf, &[], UnixTime::now())
            .expect("reloaded on an unknown issuer");

        // Removed: the next reload drops it.
        trusted.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(trust.reload(), 0);
        assert!(
            verifier
                .verify_client_cert(&leaf, &[], UnixTime::now())
                .is_err()
        );
        let device = device_cert(&own);
        verifier
            .verify_client_cert(&device, &[], UnixTime::now())
            .expect("own CA always trusted");

        // A CA that is not a usable trust anchor is left out.
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(trust.set_partner_cas(vec![garbage.to_owned()]), 0);
        verifier
            .verify_client_cert(&device, &[], UnixTime::now())
            .expect("own CA still trusted");
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
