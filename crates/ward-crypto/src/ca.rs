//! The organization's certificate authority: a self-signed ECDSA P-256 root
//! that issues the server's TLS certificate, client certificates for
//! enrolled devices and the organization's own exchange client certificate.
//!
//! The CA certificate is public and stored as PEM. Its private key is stored
//! only sealed under the master key ([`CertificateAuthority::sealed_key`]).

use std::fmt;
use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData as _, SanType,
    SerialNumber, SubjectPublicKeyInfo,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer as _;
use zeroize::{Zeroize as _, Zeroizing};

use crate::error::{Error, Result};
use crate::keyring::{MasterKey, SealedSecret};

/// Validity of the CA certificate: ten years.
const CA_VALIDITY: Duration = Duration::days(3652);

/// Validity of the organization's exchange client certificate.
pub const ORG_CLIENT_VALIDITY: Duration = Duration::days(90);

/// The URI SAN prefix that names an organization in its exchange client
/// certificate.
pub const ORG_URI_PREFIX: &str = "urn:ward:org:";

/// Validity of server certificates. The CA/Browser Forum Baseline
/// Requirements cap TLS server certificates at 398 days and some clients
/// apply that cap to every certificate. One day less leaves room for the
/// backdating below.
const SERVER_VALIDITY: Duration = Duration::days(397);

/// How far `notBefore` is set in the past, to tolerate clocks that run behind.
const CLOCK_SKEW: Duration = Duration::minutes(5);

/// Label that binds the sealed CA key to its purpose.
const SEALED_KEY_LABEL: &str = "ward-ca-key";

/// Maximum PEM input length accepted for a certificate or CSR.
const MAX_PEM_LEN: usize = 64 * 1024;

/// Maximum number of names in one server certificate.
const MAX_SERVER_NAMES: usize = 100;

/// Maximum length of a common name or organization name (RFC 5280 upper
/// bounds ub-common-name and ub-organization-name).
const MAX_NAME_LEN: usize = 64;

/// The organization's certificate authority.
///
/// Create it once with [`CertificateAuthority::create`], store
/// [`CertificateAuthority::to_pem`] and [`CertificateAuthority::sealed_key`],
/// and load it on later starts with
/// [`CertificateAuthority::from_pem_and_sealed_key`].
pub struct CertificateAuthority {
    key: KeyPair,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    not_after: OffsetDateTime,
}

/// A server certificate with its new private key.
#[non_exhaustive]
pub struct IssuedCertificate {
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// The leaf's PKCS#8 private key, PEM. It is wiped on drop.
    pub key_pem: Zeroizing<String>,
    /// The leaf followed by the CA certificate, PEM, as TLS servers send it.
    pub chain_pem: String,
    /// The end of the leaf's validity.
    pub not_after: OffsetDateTime,
}

/// What [`CertificateAuthority::inspect_issued`] reads from a leaf this CA
/// issued.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IssuedInfo {
    /// The end of the leaf's validity.
    pub not_after: OffsetDateTime,
    /// The leaf's URI subject alternative names.
    pub uris: Vec<String>,
}

/// A device certificate issued from a CSR.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeviceCertificate {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// The serial number, lower-case hex.
    pub serial: String,
    /// The end of the validity.
    pub not_after: OffsetDateTime,
}

impl CertificateAuthority {
    /// Creates a new CA with a fresh P-256 key.
    ///
    /// The certificate has subject `O=<org_name>, CN=<org_name> Ward CA`
    /// (the CN is just `Ward CA` when that would be over 64 characters),
    /// basic constraints CA with path length 0, key usage keyCertSign and
    /// cRLSign, a random 128-bit serial and ten years of validity.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCertificateRequest`] if `org_name` is empty, longer
    /// than 64 characters or contains control characters, and
    /// [`Error::Certificate`] or [`Error::Provider`] if generation fails.
    pub fn create(org_name: &str) -> Result<Self> {
        validate_name("organization name", org_name)?;
        let mut common_name = format!("{org_name} Ward CA");
        if common_name.chars().count() > MAX_NAME_LEN {
            common_name = String::from("Ward CA");
        }

        let now = now_whole_seconds();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, org_name);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial()?);
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_VALIDITY;

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            key,
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            not_after: params.not_after,
        })
    }

    /// Loads a CA from its certificate and its key sealed by
    /// [`CertificateAuthority::sealed_key`].
    ///
    /// # Errors
    ///
    /// [`Error::WrongMasterKey`] or [`Error::Decrypt`] if the key does not
    /// open under `master`, and [`Error::InvalidCaCertificate`] if the PEM is
    /// not a CA certificate, the key is not P-256, or the certificate does
    /// not belong to the key.
    pub fn from_pem_and_sealed_key(
        cert_pem: &str,
        sealed_key: &SealedSecret,
        master: &MasterKey,
    ) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidCaCertificate {
            reason: reason.to_owned(),
        };
        let cert_der = parse_certificate_pem(cert_pem).map_err(invalid)?;
        let (cert_spki, not_after) = inspect_ca_certificate(&cert_der).map_err(invalid)?;

        let der = master.open_secret(SEALED_KEY_LABEL, sealed_key)?;
        let key = key_pair_from_der(der.as_slice())
            .map_err(|_| invalid("the sealed key is not an ECDSA, Ed25519 or RSA private key"))?;

        // Built before the last check so that `Drop` wipes the key on failure.
        let ca = Self {
            key,
            cert_pem: cert_pem.trim().to_owned() + "\n",
            cert_der,
            not_after,
        };
        if ca.key.subject_public_key_info() != cert_spki {
            return Err(invalid("the certificate does not match the sealed key"));
        }
        Ok(ca)
    }

    /// Reseals a CA key sealed by [`CertificateAuthority::sealed_key`] under
    /// the active key of `master`, for a master-key rotation.
    ///
    /// # Errors
    ///
    /// As [`MasterKey::reseal_secret`].
    pub fn reseal_key(sealed_key: &SealedSecret, master: &MasterKey) -> Result<SealedSecret> {
        master.reseal_secret(SEALED_KEY_LABEL, sealed_key)
    }

    /// Imports an existing CA from its certificate and private key, both
    /// PEM, for organizations that run their own PKI. The key may be PKCS#8,
    /// SEC1 (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`), for ECDSA
    /// P-256 or P-384, Ed25519 or RSA. The CA may be an intermediate: device
    /// and server certificates then chain to it, and clients trust it as
    /// their anchor.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCaCertificate`] when the certificate is not a CA
    /// certificate, has expired, may not sign certificates (key usage
    /// without keyCertSign), or does not belong to the key, or when the key
    /// cannot be parsed.
    pub fn import(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidCaCertificate {
            reason: reason.to_owned(),
        };
        let cert_der = parse_certificate_pem(cert_pem).map_err(invalid)?;
        let (cert_spki, not_after) = inspect_ca_certificate(&cert_der).map_err(invalid)?;
        if not_after <= OffsetDateTime::now_utc() {
            return Err(invalid("the CA certificate has expired"));
        }
        if key_pem.len() > MAX_PEM_LEN {
            return Err(invalid("the key PEM is longer than 64 KiB"));
        }
        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| {
            invalid("expected a PEM `PRIVATE KEY`, `EC PRIVATE KEY` or `RSA PRIVATE KEY` block")
        })?;
        let key = KeyPair::try_from(&key_der).map_err(|_| {
            invalid("the key is not an ECDSA P-256/P-384, Ed25519 or RSA private key")
        })?;
        let pem_block = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map(|der| crate::pem::encode_zeroizing("CERTIFICATE", der.as_ref()).to_string())
            .map_err(|_| invalid("expected a PEM `CERTIFICATE` block"))?;
        let ca = Self {
            key,
            cert_pem: pem_block,
            cert_der,
            not_after,
        };
        if ca.key.subject_public_key_info() != cert_spki {
            return Err(invalid("the certificate does not match the key"));
        }
        Ok(ca)
    }

    /// Returns the CA certificate as PEM.
    pub fn to_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// Returns the CA certificate as DER, for a rustls root store.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Returns the end of the CA certificate's validity.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Seals the CA private key (PKCS#8) under the master key for storage.
    ///
    /// # Errors
    ///
    /// [`Error::Provider`] if encryption fails.
    pub fn sealed_key(&self, master: &MasterKey) -> Result<SealedSecret> {
        master.seal_secret(SEALED_KEY_LABEL, self.key.serialized_der())
    }

    /// Issues a TLS server certificate with a new P-256 key.
    ///
    /// Each name becomes a subject alternative name: an IP address SAN when
    /// it parses as IPv4 or IPv6 (such as `127.0.0.1` or `::1`), a DNS SAN
    /// otherwise. The first name is also the subject CN. The certificate has
    /// extended key usage serverAuth and is valid for 397 days, or until the
    /// CA expires if that is sooner.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] for a name that is neither an IP address nor a
    /// valid DNS name (wildcards are rejected), and
    /// [`Error::InvalidCertificateRequest`] for an empty list, more than 100
    /// names or an expired CA.
    pub fn issue_server_certificate(&self, names: &[&str]) -> Result<IssuedCertificate> {
        let subject_alt_names = server_names(names)?;
        let common_name = names.first().copied().unwrap_or_default();

        let mut params = self.leaf_params(common_name, SERVER_VALIDITY)?;
        params.subject_alt_names = subject_alt_names;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];

        let leaf_key = ZeroizingKeyPair(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?);
        let cert = params.signed_by(&leaf_key.0, &self.issuer()?)?;

        let cert_pem = cert.pem();
        let chain_pem = format!("{cert_pem}{}", self.cert_pem);
        Ok(IssuedCertificate {
            cert_pem,
            key_pem: crate::pem::encode_zeroizing("PRIVATE KEY", leaf_key.0.serialized_der()),
            chain_pem,
            not_after: params.not_after,
        })
    }

    /// Issues the organization's exchange client certificate with a new
    /// P-256 key: subject `CN=<org_id>`, the URI SAN `urn:ward:org:<org_id>`,
    /// extended key usage clientAuth, valid for 90 days or until the CA
    /// expires. Other organizations that trust this CA authenticate the
    /// organization's deliveries with it (mutual TLS).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCertificateRequest`] for an org id that is empty,
    /// longer than 64 characters or not ASCII without controls, or an
    /// expired CA.
    pub fn issue_org_client_certificate(&self, org_id: &str) -> Result<IssuedCertificate> {
        validate_name("organization id", org_id)?;
        let uri = format!("{ORG_URI_PREFIX}{org_id}")
            .try_into()
            .map_err(|_| Error::InvalidCertificateRequest {
                reason: format!("organization id {org_id:?} must be ASCII"),
            })?;
        let mut params = self.leaf_params(org_id, ORG_CLIENT_VALIDITY)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];

        let leaf_key = ZeroizingKeyPair(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?);
        let cert = params.signed_by(&leaf_key.0, &self.issuer()?)?;
        let cert_pem = cert.pem();
        let chain_pem = format!("{cert_pem}{}", self.cert_pem);
        Ok(IssuedCertificate {
            cert_pem,
            key_pem: crate::pem::encode_zeroizing("PRIVATE KEY", leaf_key.0.serialized_der()),
            chain_pem,
            not_after: params.not_after,
        })
    }

    /// Reads a PEM leaf certificate and checks that this CA signed it.
    /// Returns its validity end and URI SANs, or `None` for PEM that does not
    /// parse or a certificate another CA (or an earlier CA) signed.
    pub fn inspect_issued(&self, cert_pem: &str) -> Option<IssuedInfo> {
        use x509_parser::prelude::GeneralName;

        let der = parse_certificate_pem(cert_pem).ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
        let (_, ca) = x509_parser::parse_x509_certificate(&self.cert_der).ok()?;
        cert.verify_signature(Some(ca.public_key())).ok()?;
        let uris = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        GeneralName::URI(uri) => Some((*uri).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(IssuedInfo {
            not_after: cert.validity().not_after.to_datetime(),
            uris,
        })
    }

    /// Issues a TLS client certificate for the public key in a PKCS#10 CSR.
    ///
    /// The CSR signature is verified, which proves that the requester has the
    /// private key. Only the CSR's public key is used: its subject and requested
    /// extensions are ignored. The certificate gets subject `CN=<subject_cn>`,
    /// extended key usage clientAuth, and is valid for `validity` or until
    /// the CA expires, whichever is sooner. Returns the certificate as PEM.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCsr`] if the CSR cannot be parsed, its signature does
    /// not verify or its key algorithm is unsupported, and
    /// [`Error::InvalidCertificateRequest`] for an invalid `subject_cn`, a
    /// validity that is not positive, or an expired CA.
    pub fn issue_client_certificate(
        &self,
        csr_pem: &str,
        subject_cn: &str,
        validity: Duration,
    ) -> Result<String> {
        validate_name("subject common name", subject_cn)?;
        if !validity.is_positive() {
            return Err(Error::InvalidCertificateRequest {
                reason: format!("validity must be positive, got {validity}"),
            });
        }
        let public_key = verified_csr_public_key(csr_pem)?;

        let mut params = self.leaf_params(subject_cn, validity)?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];

        let cert = params.signed_by(&public_key, &self.issuer()?)?;
        Ok(cert.pem())
    }

    /// Issues a device certificate for the public key in a PKCS#10 CSR.
    ///
    /// Like [`CertificateAuthority::issue_client_certificate`], the CSR's
    /// signature is verified and only its public key is used. The
    /// certificate has subject `CN=<device_id>`, the URI SAN `device_uri`
    /// (`urn:ward:device:{id}`), extended key usage clientAuth, and is valid
    /// for `validity` or until the CA expires, whichever is sooner.
    ///
    /// # Errors
    ///
    /// As [`CertificateAuthority::issue_client_certificate`], and
    /// [`Error::InvalidCertificateRequest`] when `device_uri` is not ASCII.
    pub fn issue_device_certificate(
        &self,
        csr_pem: &str,
        device_id: &str,
        device_uri: &str,
        validity: Duration,
    ) -> Result<DeviceCertificate> {
        validate_name("device id", device_id)?;
        if !validity.is_positive() {
            return Err(Error::InvalidCertificateRequest {
                reason: format!("validity must be positive, got {validity}"),
            });
        }
        let uri = device_uri
            .try_into()
            .map_err(|_| Error::InvalidCertificateRequest {
                reason: "the device URI must be ASCII".to_owned(),
            })?;
        let public_key = verified_csr_public_key(csr_pem)?;

        let mut params = self.leaf_params(device_id, validity)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let serial = params
            .serial_number
            .as_ref()
            .map(|serial| hex(&serial.to_bytes()))
            .unwrap_or_default();
        let not_after = params.not_after;

        let cert = params.signed_by(&public_key, &self.issuer()?)?;
        Ok(DeviceCertificate {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            serial,
            not_after,
        })
    }

    /// Builds the parameters shared by every leaf: subject CN, serial,
    /// validity clamped to the CA's, CA:false and an authority key identifier.
    fn leaf_params(&self, common_name: &str, validity: Duration) -> Result<CertificateParams> {
        let now = now_whole_seconds();
        if self.not_after <= now {
            return Err(Error::InvalidCertificateRequest {
                reason: format!(
                    "the CA certificate expired at {}; create a new CA",
                    self.not_after
                ),
            });
        }
        let not_before = now - CLOCK_SKEW;
        let not_after = not_before
            .checked_add(validity)
            .map_or(self.not_after, |end| end.min(self.not_after));

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.serial_number = Some(random_serial()?);
        params.not_before = not_before;
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>> {
        Ok(Issuer::from_ca_cert_der(&self.cert_der, &self.key)?)
    }
}

impl Drop for CertificateAuthority {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// A key pair whose PKCS#8 copy is wiped when dropped.
struct ZeroizingKeyPair(KeyPair);

impl Drop for ZeroizingKeyPair {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Checks a name used in a subject: 1 to 64 characters, no control characters.
fn validate_name(what: &str, name: &str) -> Result<()> {
    let reason = if name.trim().is_empty() {
        "must not be empty"
    } else if name.chars().count() > MAX_NAME_LEN {
        "must be at most 64 characters"
    } else if name.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidCertificateRequest {
        reason: format!("{what} {reason}"),
    })
}

/// Converts server names to SANs, dropping duplicates.
fn server_names(names: &[&str]) -> Result<Vec<SanType>> {
    if names.is_empty() {
        return Err(Error::InvalidCertificateRequest {
            reason: "a server certificate needs at least one name".to_owned(),
        });
    }
    if names.len() > MAX_SERVER_NAMES {
        return Err(Error::InvalidCertificateRequest {
            reason: format!(
                "a server certificate takes at most {MAX_SERVER_NAMES} names, got {}",
                names.len()
            ),
        });
    }

    let mut sans = Vec::with_capacity(names.len());
    for &name in names {
        let san = if let Ok(ip) = name.parse::<IpAddr>() {
            SanType::IpAddress(ip)
        } else if is_dns_name(name) {
            SanType::DnsName(name.try_into().map_err(|_| Error::InvalidName {
                name: name.to_owned(),
            })?)
        } else {
            return Err(Error::InvalidName {
                name: name.chars().take(256).collect(),
            });
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

/// Checks RFC 1123 host name syntax: dot-separated labels of ASCII letters,
/// digits and inner hyphens, each 1 to 63 bytes, at most 253 bytes in all.
fn is_dns_name(name: &str) -> bool {
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    (1..=253).contains(&name.len()) && name.split('.').all(label_ok)
}

/// Returns the current UTC time without its fraction of a second, the
/// precision X.509 stores, so the times kept here match the certificate.
fn now_whole_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// Returns a random positive 128-bit serial number.
fn random_serial() -> Result<SerialNumber> {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(Error::provider("random generation"))?;
    // Clear the sign bit and set the next one, so the DER integer is positive
    // and always 16 bytes long.
    if let Some(first) = serial.first_mut() {
        *first = (*first & 0x3f) | 0x40;
    }
    Ok(SerialNumber::from_slice(&serial))
}

/// Parses a private key in PKCS#8, SEC1 or PKCS#1 DER and detects its
/// algorithm.
fn key_pair_from_der(der: &[u8]) -> std::result::Result<KeyPair, ()> {
    let key = PrivateKeyDer::try_from(der).map_err(|_| ())?;
    KeyPair::try_from(&key).map_err(|_| ())
}

/// Formats bytes as lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes the first `CERTIFICATE` block of a PEM string.
fn parse_certificate_pem(pem: &str) -> std::result::Result<CertificateDer<'static>, &'static str> {
    if pem.len() > MAX_PEM_LEN {
        return Err("the PEM input is longer than 64 KiB");
    }
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| "expected a PEM `CERTIFICATE` block")
}

/// Checks that `der` is a CA certificate and returns its
/// SubjectPublicKeyInfo (DER) and the end of its validity.
fn inspect_ca_certificate(
    der: &[u8],
) -> std::result::Result<(Vec<u8>, OffsetDateTime), &'static str> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| "the certificate is not valid DER")?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate");
    }
    let is_ca = matches!(cert.basic_constraints(), Ok(Some(constraints)) if constraints.value.ca);
    if !is_ca {
        return Err("the certificate is not a CA certificate");
    }
    if let Ok(Some(usage)) = cert.key_usage()
        && !usage.value.key_cert_sign()
    {
        return Err("the certificate's key usage does not allow signing certificates");
    }
    Ok((
        cert.public_key().raw.to_vec(),
        cert.validity().not_after.to_datetime(),
    ))
}

/// Parses a PEM CSR, verifies its self-signature and returns its public key.
fn verified_csr_public_key(csr_pem: &str) -> Result<SubjectPublicKeyInfo> {
    let invalid = |reason: &str| Error::InvalidCsr {
        reason: reason.to_owned(),
    };
    if csr_pem.len() > MAX_PEM_LEN {
        return Err(invalid("the PEM input is longer than 64 KiB"));
    }

    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|_| invalid("expected a PEM `CERTIFICATE REQUEST` block"))?;
    let (rest, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|_| invalid("the request is not valid PKCS#10 DER"))?;
    if !rest.is_empty() {
        return Err(invalid("trailing bytes after the request"));
    }
    csr.verify_signature()
        .map_err(|_| invalid("the request signature does not verify"))?;

    SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|_| invalid("unsupported public key algorithm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_name_syntax() {
        for name in [
            "localhost",
            "ward.example.org",
            "a-b.c",
            "x1",
            "123.example",
        ] {
            assert!(is_dns_name(name), "{name}");
        }
        let long_label = "a".repeat(64);
        let long_name = ["a"; 127].join(".") + ".ab";
        for name in [
            "",
            ".",
            "a..b",
            "trailing.",
            "-lead",
            "trail-",
            "*.example.org",
            "under_score",
            "spa ce",
            "ünï.org",
            &long_label,
            &long_name,
        ] {
            assert!(!is_dns_name(name), "{name}");
        }
    }

    #[test]
    fn server_names_classify_and_dedupe() {
        let sans = server_names(&["localhost", "127.0.0.1", "::1", "localhost"]).unwrap();
        assert_eq!(sans.len(), 3);
        assert!(matches!(&sans[0], SanType::DnsName(name) if name.as_str() == "localhost"));
        assert!(matches!(sans[1], SanType::IpAddress(IpAddr::V4(_))));
        assert!(matches!(sans[2], SanType::IpAddress(IpAddr::V6(_))));
    }

    #[test]
    fn server_names_rejects_bad_input() {
        assert!(matches!(
            server_names(&[]),
            Err(Error::InvalidCertificateRequest { .. })
        ));
        assert!(matches!(
            server_names(&["*.example.org"]),
            Err(Error::InvalidName { name }) if name == "*.example.org"
        ));
        let many = vec!["localhost"; MAX_SERVER_NAMES + 1];
        assert!(matches!(
            server_names(&many),
            Err(Error::InvalidCertificateRequest { .. })
        ));
    }

    #[test]
    fn validate_name_limits() {
        assert!(validate_name("x", "Acme Clinic").is_ok());
        assert!(validate_name("x", &"é".repeat(64)).is_ok());
        for bad in ["", "   ", "line\nbreak", &"a".repeat(65)] {
            assert!(validate_name("x", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn org_client_certificate_names_the_org() {
        let ca = CertificateAuthority::create("Clinic A").unwrap();
        let issued = ca.issue_org_client_certificate("org-123").unwrap();
        let info = ca
            .inspect_issued(&issued.cert_pem)
            .expect("issued by this CA");
        assert_eq!(info.uris, vec!["urn:ward:org:org-123".to_owned()]);
        assert_eq!(info.not_after, issued.not_after);
        let left = issued.not_after - OffsetDateTime::now_utc();
        assert!(
            left > Duration::days(89) && left <= ORG_CLIENT_VALIDITY,
            "{left}"
        );
        let der = parse_certificate_pem(&issued.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(issued.key_pem.contains("PRIVATE KEY"));

        let other = CertificateAuthority::create("Clinic B").unwrap();
        assert_eq!(other.inspect_issued(&issued.cert_pem), None);
        assert!(ca.issue_org_client_certificate("").is_err());
        assert!(ca.issue_org_client_certificate("bad\nid").is_err());
    }

    #[test]
    fn random_serial_is_positive_and_full_length() {
        for _ in 0..64 {
            let bytes = random_serial().unwrap().to_bytes();
            assert_eq!(bytes.len(), 16);
            assert_eq!(bytes[0] & 0xc0, 0x40);
        }
        assert_ne!(random_serial().unwrap(), random_serial().unwrap());
    }
}
