//! Blind-index hashes: keyed, deterministic tokens that let the store find
//! encrypted values by equality without storing them in clear.

use std::fmt;

use aws_lc_rs::hmac;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Length of a blind-index hash in bytes.
pub const BLIND_HASH_LEN: usize = 16;

/// The HMAC-SHA256 key for blind-index hashes.
///
/// A store keeps its index key wrapped by the master key
/// ([`MasterKey::wrap_index_key`](super::MasterKey::wrap_index_key)), so a
/// master-key rotation rewraps it and never changes an index row. Stores made
/// before index keys were stored carry over the key that
/// [`MasterKey::derived_index_key`](super::MasterKey::derived_index_key)
/// returns. The HMAC inner and outer states are computed once, so each hash
/// costs two SHA-256 compressions plus the input length.
#[derive(Clone)]
pub struct IndexKey {
    secret: Zeroizing<[u8; 32]>,
    key: hmac::Key,
}

impl IndexKey {
    pub(super) fn new(secret: &[u8; 32]) -> Self {
        Self {
            secret: Zeroizing::new(*secret),
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// Generates a new random index key.
    ///
    /// # Errors
    ///
    /// [`Error::Provider`] if the random number generator fails.
    pub fn generate() -> Result<Self> {
        let mut secret = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(secret.as_mut_slice())
            .map_err(Error::provider("random generation"))?;
        Ok(Self::new(&secret))
    }

    pub(super) fn secret(&self) -> &[u8; 32] {
        &self.secret
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
        let index = master.derived_index_key();
        assert_eq!(
            index.hash("Patient.name", "smith"),
            index.hash("Patient.name", "smith")
        );
        assert_eq!(index.hash("d", "v"), index.clone().hash("d", "v"));
    }

    #[test]
    fn hash_separates_domains() {
        let index = MasterKey::generate().unwrap().derived_index_key().clone();
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
            first.derived_index_key().hash("d", "v"),
            second.derived_index_key().hash("d", "v")
        );
    }

    #[test]
    fn hash_survives_master_key_reload() {
        let master = MasterKey::generate().unwrap();
        let reloaded = MasterKey::from_base64(&master.encode()).unwrap();
        assert_eq!(
            master.derived_index_key().hash("d", "v"),
            reloaded.derived_index_key().hash("d", "v")
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
