//! PEM encoding of private keys into memory that is wiped on drop.
//!
//! rcgen's own PEM writer copies the key into buffers that are freed without
//! being wiped, so private keys go through this encoder instead.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

/// Base64 characters per PEM line, as RFC 7468 requires.
const LINE_LEN: usize = 64;

/// Encodes `der` as a PEM block with `label`, such as `"PRIVATE KEY"`.
pub(crate) fn encode_zeroizing(label: &str, der: &[u8]) -> Zeroizing<String> {
    let mut base64 = Zeroizing::new(String::with_capacity(der.len().div_ceil(3) * 4));
    STANDARD.encode_string(der, &mut base64);

    let line_count = base64.len().div_ceil(LINE_LEN);
    let mut pem = Zeroizing::new(String::with_capacity(
        base64.len() + line_count + 2 * label.len() + 40,
    ));
    pem.push_str("-----BEGIN ");
    pem.push_str(label);
    pem.push_str("-----\n");
    // Base64 output is ASCII, so splitting its bytes never breaks a character.
    for line in base64.as_bytes().chunks(LINE_LEN) {
        pem.extend(line.iter().map(|&byte| char::from(byte)));
        pem.push('\n');
    }
    pem.push_str("-----END ");
    pem.push_str(label);
    pem.push_str("-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject as _;

    use super::*;

    #[test]
    fn encode_round_trips_through_pem_parser() {
        for len in [0, 1, 47, 48, 49, 138, 1000] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let pem = encode_zeroizing("PRIVATE KEY", &der);
            assert!(
                pem.lines().all(|line| line.len() <= LINE_LEN),
                "length {len}"
            );
            if len == 0 {
                continue;
            }
            let parsed = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
            assert_eq!(parsed.secret_pkcs8_der(), der.as_slice(), "length {len}");
        }
    }
}
