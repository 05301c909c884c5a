//! The device API of the server: enrollment with a one-time code and a
//! CSR, check-in with a posture report, and the wipe confirmation.

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::error::{MobileError, MobileResult};
use crate::http::Transport;

/// The device's security state, reported at enrollment and check-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posture {
    /// `ios`, `android`, `linux`, ...
    pub os: String,
    /// Operating system version, such as `17.4.1`.
    pub os_version: String,
    /// Whether a screen lock is set.
    pub screen_lock: bool,
    /// Whether device storage is encrypted.
    pub storage_encrypted: bool,
    /// Whether the device is rooted or jailbroken.
    pub rooted: bool,
    /// Version of this app.
    pub app_version: String,
}

impl Posture {
    /// The posture of the machine running this library. A desktop build
    /// cannot inspect the screen lock or disk encryption, so the caller
    /// states them.
    pub fn of_this_machine(screen_lock: bool, storage_encrypted: bool) -> Posture {
        Posture {
            os: std::env::consts::OS.to_owned(),
            os_version: os_version(),
            screen_lock,
            storage_encrypted,
            rooted: false,
            app_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// The running kernel's dotted version (`6.1.0` of `6.1.0-18-amd64`) on
/// Linux, read from `/proc/sys/kernel/osrelease`; `0` where it cannot be
/// read, which the server's minimum-version rule then rejects by name.
fn os_version() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dotted: String = release
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let dotted = dotted.trim_end_matches('.');
    if dotted.is_empty() {
        "0".to_owned()
    } else {
        dotted.to_owned()
    }
}

/// One failed compliance rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComplianceFailure {
    /// Rule name, such as `screen_lock`.
    pub rule: String,
    /// What to do about it.
    pub message: String,
}

/// The server's compliance verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compliance {
    /// Whether every rule passed.
    pub compliant: bool,
    /// The rules that failed.
    #[serde(default)]
    pub failures: Vec<ComplianceFailure>,
}

/// The server's response to an enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// The device id the server assigned.
    pub device_id: String,
    /// End of the certificate's validity (RFC 3339).
    pub not_after: String,
    /// The compliance verdict on the posture.
    pub compliance: Compliance,
}

/// The server's response to a check-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkin {
    /// `active` or `revoked`.
    pub status: String,
    /// The compliance verdict.
    pub compliance: Compliance,
    /// Whether the server ordered a wipe (the client has wiped when true).
    pub wipe: bool,
    /// End of the certificate's validity (RFC 3339).
    pub certificate_not_after: Option<String>,
}

/// A new P-256 key pair and its CSR.
pub(crate) struct NewKey {
    /// PKCS#8 DER of the key pair.
    pub(crate) der: Zeroizing<Vec<u8>>,
    /// The CSR as PEM.
    pub(crate) csr_pem: String,
}

/// Generates a P-256 key pair on this device and a CSR for it.
pub(crate) fn new_key() -> MobileResult<NewKey> {
    let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| MobileError::crypto(format!("generating the P-256 device key: {e}")))?;
    let params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| MobileError::crypto(format!("building the CSR: {e}")))?;
    let csr = params
        .serialize_request(&pair)
        .and_then(|csr| csr.pem())
        .map_err(|e| MobileError::crypto(format!("signing the CSR: {e}")))?;
    Ok(NewKey {
        der: Zeroizing::new(pair.serialize_der()),
        csr_pem: csr,
    })
}

/// A CSR for the existing device key, for renewal.
pub(crate) fn csr_for(key_der: &[u8]) -> MobileResult<String> {
    let pair = KeyPair::try_from(key_der)
        .map_err(|e| MobileError::corrupt(format!("the stored device key does not parse: {e}")))?;
    CertificateParams::new(Vec::<String>::new())
        .and_then(|params| params.serialize_request(&pair))
        .and_then(|csr| csr.pem())
        .map_err(|e| MobileError::crypto(format!("signing the renewal CSR: {e}")))
}

/// Renews the certificate over the current one; returns the new
/// certificate PEM and its expiry.
pub(crate) fn renew(transport: &Transport, csr_pem: &str) -> MobileResult<(String, String)> {
    let reply = transport
        .post_json(
            "/device/renew",
            &json!({"csr": csr_pem}),
            None,
            "renewing the certificate",
        )?
        .check("renewing the certificate")?;
    let answer = reply.json();
    let field = |name: &str| {
        answer[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| MobileError::Server {
                operation: "renewing the certificate".into(),
                status: reply.status,
                detail: format!("the answer has no {name}"),
            })
    };
    Ok((field("certificate")?, field("not_after")?))
}

/// The device key and certificate as one PEM for the TLS client.
pub(crate) fn identity_pem(
    key_der: &[u8],
    certificate_pem: &str,
) -> MobileResult<Zeroizing<String>> {
    let pair = KeyPair::try_from(key_der)
        .map_err(|e| MobileError::corrupt(format!("the stored device key does not parse: {e}")))?;
    let mut pem = Zeroizing::new(pair.serialize_pem());
    pem.push_str(certificate_pem);
    Ok(pem)
}

/// Sends the enrollment and returns the response and the certificate PEM.
pub(crate) fn enroll(
    transport: &Transport,
    code: &str,
    csr_pem: &str,
    name: &str,
    posture: &Posture,
) -> MobileResult<(Enrollment, String)> {
    let body = json!({"code": code, "csr": csr_pem, "name": name, "posture": posture});
    let reply = transport
        .post_json("/device/enroll", &body, None, "enrolling the device")?
        .check("enrolling the device")?;
    let answer = reply.json();
    let field = |name: &str| {
        answer[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| MobileError::Server {
                operation: "enrolling the device".into(),
                status: reply.status,
                detail: format!("the answer has no {name}"),
            })
    };
    let enrollment = Enrollment {
        device_id: field("device_id")?,
        not_after: field("not_after")?,
        compliance: compliance(&answer["compliance"]),
    };
    Ok((enrollment, field("certificate")?))
}

/// Reports the posture and reads the server's verdict.
pub(crate) fn checkin(transport: &Transport, posture: &Posture) -> MobileResult<Checkin> {
    let body = json!({"posture": posture});
    let answer = transport
        .post_json("/device/checkin", &body, None, "checking in")?
        .check("checking in")?
        .json();
    Ok(Checkin {
        status: answer["status"].as_str().unwrap_or("unknown").to_owned(),
        compliance: compliance(&answer["compliance"]),
        wipe: answer["wipe"].as_bool().unwrap_or(false),
        certificate_not_after: answer["certificate_not_after"].as_str().map(str::to_owned),
    })
}

/// Confirms a finished wipe.
pub(crate) fn confirm_wipe(transport: &Transport, wiped_at: &str) -> MobileResult<()> {
    transport
        .post_json(
            "/device/wipe-confirm",
            &json!({"wiped_at": wiped_at}),
            None,
            "confirming the wipe",
        )?
        .check("confirming the wipe")
        .map(|_| ())
}

fn compliance(value: &Value) -> Compliance {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_posture_has_dotted_version() {
        let posture = Posture::of_this_machine(true, true);
        assert!(!posture.os_version.is_empty());
        assert!(
            posture
                .os_version
                .split('.')
                .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit())),
            "{}",
            posture.os_version
        );
    }

    #[test]
    fn csr_signed_by_new_key() {
        let key = new_key().unwrap();
        assert!(
            key.csr_pem
                .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
        );
        let pair = KeyPair::try_from(key.der.as_slice()).unwrap();
        assert!(pair.is_compatible(&PKCS_ECDSA_P256_SHA256));
    }
}
