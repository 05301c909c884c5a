//! Blind-index hashes: keyed, deterministic tokens that let the store find
//! encrypted values by equality without storing them in clear.

use std::fmt;

use aws_lc_rs::hmac;

/// Length of a blind-index hash in bytes.
pub const BLIND_HASH_LEN: usize = 16;

/// The HMAC-SHA256 key for blind-index hashes, derived from the master key.
///
/// Get it from [`MasterKey::index_key`](super::MasterKey::index_key). The
/// HMAC inner and outer states are computed once, so each hash costs two
/// SHA-256 compressions plus the input length.
#[derive(Clone)]
pub struct IndexKey {
    key: hmac::Key,
}

impl IndexKey {
    pub(super) fn new(secret: &[u8; 32]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// Hashes `value` within `domain`, returning HMAC-SHA256 truncated to 16 bytes.
    ///
    /// The MAC input is `len(domain) || domain || len(value) || value` with
    /// each length a big-endian u64, so different (domain, value) pairs never
    /// form the same input. Use a distinct domain per indexed field (for
    /// example `"Patient.name"`) so equal values in different fields get
    /// unrelated hashes. Callers normalize values (case, Unicode form) first:
    /// the hash compares bytes.
    pub fn hash(&self, domain: &str, value: &str) -> [u8; BLIND_HASH_LEN] {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(&(domain.len() as u64).to_be_bytes());
        context.update(domain.as_bytes());
        context.update(&(value.len() as u64).to_be_bytes());
        context.update(value.as_bytes());
        let tag = context.sign();

        let mut hash = [0u8; BLIND_HASH_LEN];
        hash.iter_mut()
            .zip(tag.as_ref())
            .for_each(|(out, byte)| *out = *byte);
        hash
    }
}

impl fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IndexKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::MasterKey;

    #[test]
    fn hash_is_deterministic() {
        let master = MasterKey::generate().unwrap();
        let index = master.index_key();
        assert_eq!(
            index.hash("Patient.name", "smith"),
            index.hash("Patient.name", "smith")
        );
        assert_eq!(index.hash("d", "v"), index.clone().hash("d", "v"));
    }

    #[test]
    fn hash_separates_domains() {
        let index = MasterKey::generate().unwrap().index_key().clone();
        assert_ne!(
            index.hash("Patient.name", "smith"),
            index.hash("Practitioner.name", "smith")
        );
        assert_ne!(index.hash("ab", "c"), index.hash("a", "bc"));
        assert_ne!(index.hash("", "ab"), index.hash("ab", ""));
        assert_ne!(index.hash("d", "smith"), index.hash("d", "smyth"));
    }

    #[test]
    fn hash_depends_on_master_key() {
        let first = MasterKey::generate().unwrap();
        let second = MasterKey::generate().unwrap();
        assert_ne!(
            first.index_key().hash("d", "v"),
            second.index_key().hash("d", "v")
        );
    }

    #[test]
    fn hash_survives_master_key_reload() {
        let master = MasterKey::generate().unwrap();
        let reloaded = MasterKey::from_base64(&master.encode()).unwrap();
        assert_eq!(
            master.index_key().hash("d", "v"),
            reloaded.index_key().hash("d", "v")
        );
    }

    #[test]
    fn hash_matches_hmac_over_length_prefixed_input() {
        let secret = [3u8; 32];
        let index = IndexKey::new(&secret);

        let mut input = Vec::new();
        input.extend_from_slice(&2u64.to_be_bytes());
        input.extend_from_slice(b"ab");
        input.extend_from_slice(&1u64.to_be_bytes());
        input.extend_from_slice(b"c");
        let expected = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &secret), &input);

        assert_eq!(index.hash("ab", "c"), expected.as_ref()[..BLIND_HASH_LEN]);
    }
}
