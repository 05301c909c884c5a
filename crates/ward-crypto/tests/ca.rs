//! Certificates issued by the CA, checked with rustls-webpki (the verifier
//! rustls uses) and x509-parser.

use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData as _};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, IpAddr, ServerName, UnixTime};
use time::{Duration, OffsetDateTime};
use ward_crypto::{CertificateAuthority, Error, MasterKey};
use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};
use x509_parser::prelude::{GeneralName, X509Certificate, parse_x509_certificate};

fn der_from_pem(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// Verifies `leaf` against `ca` with webpki for the given usage.
fn verify_chain(
    ca: &CertificateDer<'_>,
    leaf: &CertificateDer<'_>,
    usage: KeyUsage,
) -> Result<(), webpki::Error> {
    let anchors = [anchor_from_trusted_cert(ca).unwrap()];
    let leaf = EndEntityCert::try_from(leaf).unwrap();
    leaf.verify_for_usage(
        &[webpki::aws_lc_rs::ECDSA_P256_SHA256],
        &anchors,
        &[],
        UnixTime::now(),
        usage,
        None,
        None,
    )
    .map(|_| ())
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> X509Certificate<'a> {
    let (rest, cert) = parse_x509_certificate(der).unwrap();
    assert!(rest.is_empty());
    cert
}

fn validity_days(cert: &X509Certificate<'_>) -> i64 {
    let validity = cert.validity();
    (validity.not_after.to_datetime() - validity.not_before.to_datetime()).whole_days()
}

fn client_csr(requested_cn: &str) -> (KeyPair, String) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec!["requested.example.org".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, requested_cn);
    let csr = params.serialize_request(&key).unwrap();
    (key, csr.pem().unwrap())
}

#[test]
fn ca_certificate_has_ca_extensions() {
    let ca = CertificateAuthority::create("Acme Clinic").unwrap();
    let der = der_from_pem(&ca.to_pem());
    assert_eq!(&der, ca.cert_der());
    let cert = parse(&der);

    let constraints = cert.basic_constraints().unwrap().unwrap();
    assert!(constraints.critical);
    assert!(constraints.value.ca);
    assert_eq!(constraints.value.path_len_constraint, Some(0));

    let key_usage = cert.key_usage().unwrap().unwrap().value;
    assert!(key_usage.key_cert_sign());
    assert!(key_usage.crl_sign());
    assert!(!key_usage.digital_signature());

    let days = validity_days(&cert);
    assert!((3650..=3653).contains(&days), "{days} days");
    assert_eq!(cert.validity().not_after.to_datetime(), ca.not_after());

    let organization = cert.subject().iter_organization().next().unwrap();
    assert_eq!(organization.as_str().unwrap(), "Acme Clinic");
    let common_name = cert.subject().iter_common_name().next().unwrap();
    assert_eq!(common_name.as_str().unwrap(), "Acme Clinic Ward CA");
    assert_eq!(cert.tbs_certificate.raw_serial().len(), 16);
}

#[test]
fn ca_serials_differ() {
    let first = CertificateAuthority::create("Acme").unwrap();
    let second = CertificateAuthority::create("Acme").unwrap();
    assert_ne!(
        parse(first.cert_der()).tbs_certificate.raw_serial(),
        parse(second.cert_der()).tbs_certificate.raw_serial()
    );
}

#[test]
fn create_rejects_bad_org_names() {
    for name in ["", "a\u{0}b", &"x".repeat(65)] {
        assert!(matches!(
            CertificateAuthority::create(name),
            Err(Error::InvalidCertificateRequest { .. })
        ));
    }
}

#[test]
fn server_certificate_verifies_for_each_name() {
    let ca = CertificateAuthority::create("Acme Clinic").unwrap();
    let issued = ca
        .issue_server_certificate(&["localhost", "127.0.0.1", "::1"])
        .unwrap();
    let leaf_der = der_from_pem(&issued.cert_pem);

    verify_chain(ca.cert_der(), &leaf_der, KeyUsage::server_auth()).unwrap();
    let leaf = EndEntityCert::try_from(&leaf_der).unwrap();
    let names = [
        ServerName::try_from("localhost").unwrap(),
        ServerName::IpAddress(IpAddr::try_from("127.0.0.1").unwrap()),
        ServerName::IpAddress(IpAddr::try_from("::1").unwrap()),
    ];
    for name in &names {
        leaf.verify_is_valid_for_subject_name(name).unwrap();
    }
    let other = ServerName::try_from("other.example.org").unwrap();
    assert!(leaf.verify_is_valid_for_subject_name(&other).is_err());
}

#[test]
fn server_certificate_is_not_a_client_certificate() {
    let ca = CertificateAuthority::create("Acme").unwrap();
    let issued = ca.issue_server_certificate(&["localhost"]).unwrap();
    let leaf_der = der_from_pem(&issued.cert_pem);
    assert!(verify_chain(ca.cert_der(), &leaf_der, KeyUsage::client_auth()).is_err());
}

#[test]
fn server_certificate_fails_against_other_ca() {
    let ca = CertificateAuthority::create("Acme").unwrap();
    let other = CertificateAuthority::create("Acme").unwrap();
    let issued = ca.issue_server_certificate(&["localhost"]).unwrap();
    let leaf_der = der_from_pem(&issued.cert_pem);
    assert!(verify_chain(other.cert_der(), &leaf_der, KeyUsage::server_auth()).is_err());
}

#[test]
fn server_certificate_fields() {
    let ca = CertificateAuthority::create("Acme").unwrap();
    let issued = ca
        .issue_server_certificate(&["ward.example.org", "10.0.0.5"])
        .unwrap();
    let leaf_der = der_from_pem(&issued.cert_pem);
    let cert = parse(&leaf_der);

    assert!(validity_days(&cert) <= 398);
    assert!(validity_days(&cert) >= 396);
    assert!(!cert.is_ca());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth);
    assert!(!eku.client_auth);
    let common_name = cert.subject().iter_common_name().next().unwrap();
    assert_eq!(common_name.as_str().unwrap(), "ward.example.org");
    assert!(cert.validity().not_before.to_datetime() <= OffsetDateTime::now_utc());
}

#[test]
fn server_key_and_chain_match_certificate() {
    let ca = CertificateAuthority::create("Acme").unwrap();
    let issued = ca.issue_server_certificate(&["localhost"]).unwrap();

    let key = KeyPair::from_pem(&issued.key_pem).unwrap();
    let leaf_der = der_from_pem(&issued.cert_pem);
    assert_eq!(
        parse(&leaf_der).public_key().raw,
        key.subject_public_key_info().as_slice()
    );

    let chain: Vec<_> = CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(chain, [leaf_der, ca.cert_der().clone()]);
    assert!(!format!("{issued:?}").contains("PRIVATE KEY"));
}

#[test]
fn server_certificate_rejects_invalid_names() {
    let ca = CertificateAuthority::create("Acme").unwrap();
    assert!(matches!(
        ca.issue_server_certificate(&[]),
        Err(Error::InvalidCertificateRequest { .. })
    ));
    for name in ["*.example.org", "bad name", "", "exa_mple.org"] {
        assert!(
            matches!(
                ca.issue_server_certificate(&[name]),
                Err(Error::InvalidName { .. })
            ),
            "{name:?}"
        );
    }
}

#[test]
fn reloaded_ca_issues_certificates_trusted_by_original() {
    let master = MasterKey::generate().unwrap();
    let ca = CertificateAuthority::create("Acme").unwrap();
    let cert_pem = ca.to_pem();
    let sealed = ca.sealed_key(&master).unwrap();
    assert!(!sealed.as_str().contains("PRIVATE KEY"));
    let original_der = ca.cert_der().clone();
    drop(ca);

    let reloaded =
        CertificateAuthority::from_pem_and_sealed_key(&cert_pem, &sealed, &master).unwrap();
    assert_eq!(reloaded.cert_der(), &original_der);
    let issued = reloaded.issue_server_certificate(&["localhost"]).unwrap();
    verify_chain(
        &original_der,
        &der_from_pem(&issued.cert_pem),
        KeyUsage::server_auth(),
    )
    .unwrap();
}

#[test]
fn reload_rejects_mismatched_key_and_wrong_master() {
    let master = MasterKey::generate().unwrap();
    let first = CertificateAuthority::create("Acme").unwrap();
    let second = CertificateAuthority::create("Acme").unwrap();
    let second_key = second.sealed_key(&master).unwrap();

    let mismatched =
        CertificateAuthority::from_pem_and_sealed_key(&first.to_pem(), &second_key, &master);
    assert!(matches!(
        mismatched,
        Err(Error::InvalidCaCertificate { .. })
    ));

    let other_master = MasterKey::generate().unwrap();
    let wrong_master =
        CertificateAuthority::from_pem_and_sealed_key(&second.to_pem(), &second_key, &other_master);
    assert!(matches!(wrong_master, Err(Error::WrongMasterKey { .. })));
}

#[test]
fn reload_rejects_leaf_certificate_and_garbage() {
    let master = MasterKey::generate().unwrap();
    let ca = CertificateAuthority::create("Acme").unwrap();
    let sealed = ca.sealed_key(&master).unwrap();
    let leaf = ca.issue_server_certificate(&["localhost"]).unwrap();

    for pem in [
        leaf.cert_pem.as_str(),
        "",
        "not pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ] {
        let result = CertificateAuthority::from_pem_and_sealed_key(pem, &sealed, &master);
        assert!(
            matches!(result, Err(Error::InvalidCaCertificate { .. })),
            "{pem:.30}"
        );
    }
}

#[test]
fn client_certificate_from_csr() {
    let ca = CertificateAuthority::create("Acme").unwrap();
    let (device_key, csr_pem) = client_csr("name the device asked for");

    let cert_pem = ca
        .issue_client_certificate(&csr_pem, "device-42", Duration::days(30))
        .unwrap();
    let leaf_der = der_from_pem(&cert_pem);
    verify_chain(ca.cert_der(), &leaf_der, KeyUsage::client_auth()).unwrap();
    assert!(verify_chain(ca.cert_der(), &leaf_der, KeyUsage::server_auth()).is_err());

    let cert = parse(&leaf_der);
    let common_names: Vec<_> = cert
        .subject()
        .iter_common_name()
        .map(|name| name.as_str().unwrap())
        .collect();
    assert_eq!(common_names, ["device-42"]);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth);
    assert!(!eku.server_auth);
    assert!(cert.subject_alternative_name().unwrap().is_none());
    assert!(!cert.is_ca());
    assert_eq!(
        cert.public_key().raw,
        device_key.subject_public_key_info().as_slice()
    );
    assert!((29..=30).contains(&validity_days(&cert)));
}

#[test]
fn client_certificate_validity_is_clamped_to_ca() {
    let ca = CertificateAuthority::create("Acme").unwrap();
    let (_, csr_pem) = client_csr("device");
    let cert_pem = ca
        .issue_client_certificate(&csr_pem, "device", Duration::MAX)
        .unwrap();
    let cert_der = der_from_pem(&cert_pem);
    assert_eq!(
        parse(&cert_der).validity().not_after.to_datetime(),
        ca.not_after()
    );
}

#[test]
fn client_certificate_rejects_bad_requests() {
    let ca = CertificateAuthority::create("Acme").unwrap();
    let (_, csr_pem) = client_csr("device");

    for validity in [Duration::ZERO, Duration::days(-1)] {
        assert!(matches!(
            ca.issue_client_certificate(&csr_pem, "device", validity),
            Err(Error::InvalidCertificateRequest { .. })
        ));
    }
    assert!(matches!(
        ca.issue_client_certificate(&csr_pem, "", Duration::days(1)),
        Err(Error::InvalidCertificateRequest { .. })
    ));
    for bad_csr in [
        "",
        "garbage",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        assert!(matches!(
            ca.issue_client_certificate(bad_csr, "device", Duration::days(1)),
            Err(Error::InvalidCsr { .. })
        ));
    }
}

#[test]
fn client_certificate_rejects_tampered_csr() {
    let ca = CertificateAuthority::create("Acme").unwrap();
    let (_, csr_pem) = client_csr("device");
    let der =
        rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).unwrap();

    // Change one byte of the requested common name, which the signature covers.
    let mut bytes = der.as_ref().to_vec();
    let position = bytes
        .windows(6)
        .position(|window| window == b"device")
        .unwrap();
    bytes[position] = b'D';
    let tampered = pem_encode("CERTIFICATE REQUEST", &bytes);

    let error = ca
        .issue_client_certificate(&tampered, "device", Duration::days(1))
        .unwrap_err();
    assert!(
        matches!(&error, Error::InvalidCsr { reason } if reason.contains("signature")),
        "{error}"
    );
}

#[test]
fn server_certificate_san_list_matches_request() {
    let ca = CertificateAuthority::create("Acme").unwrap();
    let issued = ca
        .issue_server_certificate(&["localhost", "127.0.0.1", "localhost"])
        .unwrap();
    let der = der_from_pem(&issued.cert_pem);
    let cert = parse(&der);
    let sans = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(
        sans,
        &[
            GeneralName::DNSName("localhost"),
            GeneralName::IPAddress(&[127, 0, 0, 1])
        ]
    );
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|chunk| std::str::from_utf8(chunk).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}
