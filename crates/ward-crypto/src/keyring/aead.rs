//! AES-256-GCM with random nonces, shared by data keys, key wrapping and
//! sealed secrets.
//!
//! The byte layout is `nonce (12) || ciphertext || tag (16)`. Callers add
//! their own headers in front.

use aws_lc_rs::aead::{AES_256_GCM, Aad, Nonce, RandomizedNonceKey};
use zeroize::Zeroize;

use crate::error::{Error, Result};

/// AES-GCM nonce length in bytes.
pub(crate) const NONCE_LEN: usize = 12;

/// AES-GCM tag length in bytes.
pub(crate) const TAG_LEN: usize = 16;

/// An AES-256-GCM key, set up once and reused for every message.
///
/// AWS-LC keeps the expanded key inside its context and clears it when the
/// context is freed.
pub(crate) struct Aead {
    key: RandomizedNonceKey,
}

impl Aead {
    pub(crate) fn new(key: &[u8; 32]) -> Result<Self> {
        let key = RandomizedNonceKey::new(&AES_256_GCM, key)
            .map_err(Error::provider("AES-256-GCM key setup"))?;
        Ok(Self { key })
    }

    /// Appends `nonce || ciphertext || tag` for `plaintext` to `out`.
    ///
    /// Reserves the whole output first, so `out` is not reallocated while it
    /// contains plaintext. On failure `out` is restored to its previous length and
    /// the copied plaintext is wiped.
    pub(crate) fn seal_append(
        &self,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let start = out.len();
        out.reserve(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&[0u8; NONCE_LEN]);
        out.extend_from_slice(plaintext);

        let sealed = match out
            .get_mut(start..)
            .map(|tail| tail.split_at_mut(NONCE_LEN))
        {
            Some((nonce_out, body)) => self
                .key
                .seal_in_place_separate_tag(Aad::from(aad), body)
                .map(|(nonce, tag)| {
                    nonce_out.copy_from_slice(nonce.as_ref());
                    tag
                }),
            None => Err(aws_lc_rs::error::Unspecified),
        };

        match sealed {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                Ok(())
            }
            Err(_) => {
                wipe_tail(out, start);
                Err(Error::Provider {
                    operation: "AES-256-GCM encryption",
                })
            }
        }
    }

    /// Decrypts `nonce || ciphertext || tag` and appends the plaintext to `out`.
    ///
    /// Fails with [`Error::Decrypt`] on short input, a wrong key, wrong
    /// associated data or any modified byte. On failure `out` is restored to
    /// its previous length and the unauthenticated output is wiped.
    pub(crate) fn open_append(&self, aad: &[u8], sealed: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let (nonce, body) = sealed.split_at_checked(NONCE_LEN).ok_or(Error::Decrypt)?;
        if body.len() < TAG_LEN {
            return Err(Error::Decrypt);
        }
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::Decrypt)?;

        let start = out.len();
        out.reserve(body.len());
        out.extend_from_slice(body);

        let opened = match out.get_mut(start..) {
            Some(in_out) => self
                .key
                .open_in_place(nonce, Aad::from(aad), in_out)
                .map(|plaintext| plaintext.len()),
            None => Err(aws_lc_rs::error::Unspecified),
        };

        match opened {
            Ok(plaintext_len) => {
                // Drop the tag bytes, which follow the plaintext.
                wipe_tail(out, start + plaintext_len);
                Ok(())
            }
            Err(_) => {
                wipe_tail(out, start);
                Err(Error::Decrypt)
            }
        }
    }
}

/// Wipes `out[len..]` and truncates `out` to `len`.
fn wipe_tail(out: &mut Vec<u8>, len: usize) {
    if let Some(tail) = out.get_mut(len..) {
        tail.zeroize();
    }
    out.truncate(len);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Aead {
        Aead::new(&[byte; 32]).unwrap()
    }

    #[test]
    fn seal_append_keeps_existing_prefix() {
        let aead = key(1);
        let mut out = b"header".to_vec();
        aead.seal_append(b"aad", b"hello", &mut out).unwrap();
        assert_eq!(out.len(), 6 + NONCE_LEN + 5 + TAG_LEN);
        assert_eq!(&out[..6], b"header");

        let mut plain = Vec::new();
        aead.open_append(b"aad", &out[6..], &mut plain).unwrap();
        assert_eq!(plain, b"hello");
    }

    #[test]
    fn nonces_differ_between_messages() {
        let aead = key(1);
        let mut first = Vec::new();
        let mut second = Vec::new();
        aead.seal_append(b"", b"same", &mut first).unwrap();
        aead.seal_append(b"", b"same", &mut second).unwrap();
        assert_ne!(first[..NONCE_LEN], second[..NONCE_LEN]);
        assert_ne!(first, second);
    }

    #[test]
    fn failed_open_leaves_output_unchanged() {
        let aead = key(1);
        let mut sealed = Vec::new();
        aead.seal_append(b"right", b"plaintext", &mut sealed)
            .unwrap();

        let mut out = b"keep".to_vec();
        let error = aead.open_append(b"wrong", &sealed, &mut out).unwrap_err();
        assert!(matches!(error, Error::Decrypt));
        assert_eq!(out, b"keep");
    }

    #[test]
    fn open_rejects_every_short_input() {
        let aead = key(1);
        let mut sealed = Vec::new();
        aead.seal_append(b"", b"", &mut sealed).unwrap();
        assert_eq!(sealed.len(), NONCE_LEN + TAG_LEN);

        for len in 0..sealed.len() {
            let mut out = Vec::new();
            let result = aead.open_append(b"", &sealed[..len], &mut out);
            assert!(matches!(result, Err(Error::Decrypt)), "length {len}");
            assert!(out.is_empty());
        }
        let mut out = Vec::new();
        aead.open_append(b"", &sealed, &mut out).unwrap();
        assert!(out.is_empty());
    }
}
