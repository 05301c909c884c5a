//! A test CA and a TLS server certificate for `localhost`, for the HTTPS
//! and syslog endpoints that the tests run themselves.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A CA and a TLS server configuration for `localhost` signed by it.
pub struct Pki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// A TLS server configuration with the `localhost` certificate.
    pub server: Arc<rustls::ServerConfig>,
}

/// Creates a fresh CA and a `localhost` server certificate signed by it.
pub fn pki() -> Pki {
    let ca_key = KeyPair::generate().expect("generate the CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Collector test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let leaf_key = KeyPair::generate().expect("generate the leaf key");
    let leaf_params = CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf params");
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("sign the leaf");

    let chain = vec![
        CertificateDer::from_pem_slice(leaf.pem().as_bytes()).expect("leaf DER"),
        CertificateDer::from_pem_slice(ca_cert.pem().as_bytes()).expect("CA DER"),
    ];
    let key = PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    Pki {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
    }
}
