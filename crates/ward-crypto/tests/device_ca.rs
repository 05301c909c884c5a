//! Device certificates and imported CAs, checked with rustls-webpki (the
//! verifier rustls uses) and x509-parser.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use time::Duration;
use ward_crypto::{CertificateAuthority, Error, MasterKey};
use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};
use x509_parser::prelude::{GeneralName, parse_x509_certificate};

const DEVICE_ID: &str = "3f2a9c0d1e2b4f5a6b7c8d9e0f1a2b3c";

fn csr() -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn verify_client(ca: &CertificateDer<'_>, leaf: &CertificateDer<'_>) -> Result<(), webpki::Error> {
    let anchors = [anchor_from_trusted_cert(ca).unwrap()];
    let leaf = EndEntityCert::try_from(leaf).unwrap();
    leaf.verify_for_usage(
        &[
            webpki::aws_lc_rs::ECDSA_P256_SHA256,
            webpki::aws_lc_rs::ECDSA_P384_SHA384,
        ],
        &anchors,
        &[],
        UnixTime::now(),
        KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
}

/// An external CA made with rcgen, as an organization's own PKI would.
fn external_ca(alg: &'static rcgen::SignatureAlgorithm, is_ca: bool) -> (String, String) {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "Example Hospital Device CA");
    if is_ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    }
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn device_certificate_names_the_device() {
    let ca = CertificateAuthority::create("Acme Clinic").unwrap();
    let uri = format!("urn:ward:device:{DEVICE_ID}");
    let issued = ca
        .issue_device_certificate(&csr(), DEVICE_ID, &uri, Duration::days(30))
        .unwrap();
    verify_client(ca.cert_der(), &issued.cert_der).unwrap();

    let (_, cert) = parse_x509_certificate(&issued.cert_der).unwrap();
    let cn = cert.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), DEVICE_ID);
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names, vec![GeneralName::URI(&uri)]);
    let eku = cert.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.client_auth);
    assert!(!eku.value.server_auth);
    assert_eq!(issued.serial, cert.raw_serial_as_string().replace(':', ""));
    assert_eq!(
        issued.not_after.unix_timestamp(),
        cert.validity().not_after.timestamp()
    );
    let days = (cert.validity().not_after.to_datetime() - cert.validity().not_before.to_datetime())
        .whole_days();
    assert_eq!(days, 30);
}

#[test]
fn device_certificate_rejects_bad_requests() {
    let ca = CertificateAuthority::create("Acme Clinic").unwrap();
    let uri = format!("urn:ward:device:{DEVICE_ID}");
    let bad_csr = ca.issue_device_certificate("not a csr", DEVICE_ID, &uri, Duration::days(1));
    assert!(matches!(bad_csr, Err(Error::InvalidCsr { .. })));
    let zero = ca.issue_device_certificate(&csr(), DEVICE_ID, &uri, Duration::ZERO);
    assert!(matches!(zero, Err(Error::InvalidCertificateRequest { .. })));
    let non_ascii =
        ca.issue_device_certificate(&csr(), DEVICE_ID, "urn:ward:device:é", Duration::days(1));
    assert!(matches!(
        non_ascii,
        Err(Error::InvalidCertificateRequest { .. })
    ));
}

#[test]
fn imported_ca_issues_and_survives_sealing() {
    let (cert_pem, key_pem) = external_ca(&PKCS_ECDSA_P384_SHA384, true);
    let ca = CertificateAuthority::import(&cert_pem, &key_pem).unwrap();
    let master = MasterKey::generate().unwrap();
    let sealed = ca.sealed_key(&master).unwrap();
    let reloaded =
        CertificateAuthority::from_pem_and_sealed_key(&ca.to_pem(), &sealed, &master).unwrap();
    assert_eq!(reloaded.cert_der(), ca.cert_der());

    let uri = format!("urn:ward:device:{DEVICE_ID}");
    let issued = reloaded
        .issue_device_certificate(&csr(), DEVICE_ID, &uri, Duration::days(30))
        .unwrap();
    let external = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    verify_client(&external, &issued.cert_der).unwrap();
    let server = reloaded.issue_server_certificate(&["localhost"]).unwrap();
    assert!(server.chain_pem.ends_with(&ca.to_pem()));
}

#[test]
fn import_rejects_mismatched_or_unusable_input() {
    let (cert_pem, _) = external_ca(&PKCS_ECDSA_P256_SHA256, true);
    let (_, other_key) = external_ca(&PKCS_ECDSA_P256_SHA256, true);
    let mismatch = CertificateAuthority::import(&cert_pem, &other_key).unwrap_err();
    assert!(
        mismatch.to_string().contains("does not match"),
        "{mismatch}"
    );

    let (leaf_pem, leaf_key) = external_ca(&PKCS_ECDSA_P256_SHA256, false);
    let not_ca = CertificateAuthority::import(&leaf_pem, &leaf_key).unwrap_err();
    assert!(not_ca.to_string().contains("not a CA"), "{not_ca}");

    let (_, key_pem) = external_ca(&PKCS_ECDSA_P256_SHA256, true);
    let garbage = CertificateAuthority::import("junk", &key_pem).unwrap_err();
    assert!(matches!(garbage, Error::InvalidCaCertificate { .. }));
    let no_key = CertificateAuthority::import(&cert_pem, "junk").unwrap_err();
    assert!(no_key.to_string().contains("PRIVATE KEY"), "{no_key}");
}
