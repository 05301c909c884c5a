//! Randomness and digests from AWS-LC.

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Fills `out` from the operating system's random number generator.
pub(crate) fn fill(out: &mut [u8]) -> Result<()> {
    SystemRandom::new().fill(out).map_err(|_| Error::Random)
}

/// Returns `N` random bytes, wiped on drop.
pub(crate) fn bytes<const N: usize>() -> Result<Zeroizing<[u8; N]>> {
    let mut out = Zeroizing::new([0u8; N]);
    fill(out.as_mut_slice())?;
    Ok(out)
}

/// Returns the SHA-256 digest of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}
