//! Mutual TLS between organizations: the receiver's check that the TLS
//! connection of a `$process-message` request belongs to the organization
//! the message names as its sender, and the loader that keeps the partner
//! CAs among the listener's client certificate roots.
//!
//! The sending organization presents its exchange client certificate (URI
//! SAN `urn:ward:org:ORG_ID`, issued by its own CA). The listener accepts
//! it when it chains to the CA of any trust entry and hands it on as a
//! [`PeerCertificate`]. [`check`] then requires that its chain ends at the
//! CA of the sender's own trust entry and that it names the sender.

use std::sync::Arc;

use ward_exchange::{Rejection, TrustEntry, trust};
use ward_store::Store;

use crate::tls::{PartnerRootsLoader, PeerCertificate};

/// Checks that `peer`, the connection's organization certificate,
/// authenticates `sender`, the trust entry of the message's signer.
///
/// # Errors
///
/// [`Rejection::NoClientCertificate`] without an organization certificate
/// (none, or the organization's own device or user certificate), and
/// [`Rejection::ClientCertificateMismatch`] when it names no organization
/// or another one, or its chain does not end at the sender's CA.
pub fn check(peer: Option<&PeerCertificate>, sender: &TrustEntry) -> Result<(), Rejection> {
    let Some(peer) = peer else {
        return Err(Rejection::NoClientCertificate);
    };
    let mismatch = |why| Rejection::ClientCertificateMismatch(sender.org_id.clone(), why);
    match peer.org_id.as_deref() {
        None => return Err(mismatch("the certificate names no organization")),
        Some(org_id) if org_id != sender.org_id => {
            return Err(mismatch("the certificate names another organization"));
        }
        Some(_) => {}
    }
    peer.verify_issued_by(&sender.ca_pem)
        .map_err(|_| mismatch("the certificate was not issued by the sender's CA"))
}

/// Returns a loader of the CA certificates of every trust entry, expired
/// entries included, so that a delivery from an expired partner still
/// reaches `$process-message` and is rejected there with its reason.
pub fn partner_roots(store: Arc<dyn Store>) -> PartnerRootsLoader {
    Arc::new(move || {
        trust::list(&*store)
            .map(|entries| entries.into_iter().map(|entry| entry.ca_pem).collect())
            .map_err(|error| error.to_string())
    })
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    use ward_crypto::CertificateAuthority;

    use super::*;

    fn entry(org_id: &str, ca: &CertificateAuthority) -> TrustEntry {
        TrustEntry {
            org_id: org_id.to_owned(),
            name: "Clinic".to_owned(),
            role: ward_exchange::OrgRole::Clinic,
            endpoint: "https://a.test/fhir/$process-message".to_owned(),
            signing_jwk: serde_json::Value::Null,
            encryption_jwk: serde_json::Value::Null,
            ca_pem: ca.to_pem(),
            not_after: i64::MAX,
            fingerprint: String::new(),
        }
    }

    fn presented(pem: &str) -> PeerCertificate {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM");
        PeerCertificate {
            org_id: crate::tls::org_id(&der),
            chain: Arc::new(vec![der]),
        }
    }

    #[test]
    fn org_certificate_of_the_sender_passes() {
        let ca = CertificateAuthority::create("Clinic A").expect("CA");
        let cert = ca.issue_org_client_certificate("org-a").expect("cert");
        check(Some(&presented(&cert.cert_pem)), &entry("org-a", &ca)).expect("authenticated");
    }

    #[test]
    fn other_certificates_are_rejected() {
        let ca = CertificateAuthority::create("Clinic A").expect("CA");
        let other_ca = CertificateAuthority::create("Clinic B").expect("CA");
        let sender = entry("org-a", &ca);
        assert_eq!(check(None, &sender), Err(Rejection::NoClientCertificate));

        // Another organization's certificate, from the sender's CA or its own.
        let named_b = ca.issue_org_client_certificate("org-b").expect("cert");
        let rejected = check(Some(&presented(&named_b.cert_pem)), &sender).unwrap_err();
        assert_eq!(rejected.code(), "client_certificate_mismatch");
        assert!(
            rejected.to_string().contains("another organization"),
            "{rejected}"
        );

        // The sender's id, but issued by another CA.
        let forged = other_ca
            .issue_org_client_certificate("org-a")
            .expect("cert");
        let rejected = check(Some(&presented(&forged.cert_pem)), &sender).unwrap_err();
        assert!(
            rejected
                .to_string()
                .contains("not issued by the sender's CA"),
            "{rejected}"
        );

        // A server certificate names no organization.
        let server = ca.issue_server_certificate(&["localhost"]).expect("cert");
        let rejected = check(Some(&presented(&server.cert_pem)), &sender).unwrap_err();
        assert!(
            rejected.to_string().contains("names no organization"),
            "{rejected}"
        );
    }
}
