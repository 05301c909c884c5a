//! The backup key and the encrypted stream format of backup files.
//!
//! A [`BackupKey`] is 32 random bytes kept in the data directory sealed under
//! the master key, so a backup file never contains the master key and a
//! master-key rotation only reseals the backup key.
//!
//! File layout (all integers big-endian):
//!
//! ```text
//! header:  "WARDBAK\0" (8) || format version (1) || backup key id (8) || salt (32)
//! chunks:  final flag (1) || plaintext length (4) || ciphertext || tag (16)
//! ```
//!
//! Each file gets its own AES-256-GCM key, HKDF-SHA256 of the backup key
//! with the random salt, so nonces are counters and never repeat under one
//! key. The nonce of chunk `n` is `final flag || 000 || n (u64)` and the
//! header is the associated data of every chunk. A reordered, repeated,
//! edited or dropped chunk therefore fails to open, and a file cut short
//! has no chunk marked final, which the reader reports as truncated.

use std::fmt;
use std::io::{self, Read, Write};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::{digest, hkdf};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::keyring::{MasterKey, SealedSecret};

/// The magic bytes at the start of every backup file.
const MAGIC: &[u8; 8] = b"WARDBAK\0";

/// The stream format version this build writes and reads.
const FORMAT_VERSION: u8 = 1;

/// Length of the per-file HKDF salt.
const SALT_LEN: usize = 32;

/// Length of the file header.
pub const HEADER_LEN: usize = MAGIC.len() + 1 + 8 + SALT_LEN;

/// The largest plaintext of one chunk.
pub const CHUNK_LEN: usize = 64 * 1024;

/// AES-GCM tag length.
const TAG_LEN: usize = 16;

/// The label of the backup key when sealed under the master key.
const SEALED_LABEL: &str = "ward-backup-key";

/// Label hashed with the key bytes to form the backup key id.
const KEY_ID_LABEL: &[u8] = b"ward backup key id v1";

/// HKDF info of the per-file chunk key.
const FILE_KEY_INFO: &[u8] = b"ward backup file key v1";

/// HKDF info of the key that wraps data keys and the index key inside a
/// backup.
const WRAPPING_KEY_INFO: &[u8] = b"ward backup wrapping key v1";

/// The key that encrypts backup files.
pub struct BackupKey {
    secret: Zeroizing<[u8; 32]>,
    id: [u8; 8],
}

impl BackupKey {
    /// Generates a new random backup key.
    ///
    /// # Errors
    ///
    /// [`Error::Provider`] if the random number generator fails.
    pub fn generate() -> Result<Self> {
        let mut secret = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(secret.as_mut_slice())
            .map_err(Error::provider("random generation"))?;
        Ok(Self::from_secret(secret))
    }

    fn from_secret(secret: Zeroizing<[u8; 32]>) -> Self {
        let mut context = digest::Context::new(&digest::SHA256);
        context.update(KEY_ID_LABEL);
        context.update(secret.as_slice());
        let digest = context.finish();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        Self { secret, id }
    }

    /// Returns the public id of this key as 16 hex digits. Backup files
    /// record it, so a restore with another key fails with a clear message.
    pub fn id(&self) -> String {
        hex(&self.id)
    }

    /// Seals this key under the active master key for storage.
    ///
    /// # Errors
    ///
    /// [`Error::Provider`] if AWS-LC fails.
    pub fn sealed(&self, master: &MasterKey) -> Result<SealedSecret> {
        master.seal_secret(SEALED_LABEL, self.secret.as_slice())
    }

    /// Opens a backup key sealed by [`BackupKey::sealed`].
    ///
    /// # Errors
    ///
    /// As [`MasterKey::open_secret`], and [`Error::Malformed`] if the
    /// content is not 32 bytes.
    pub fn from_sealed(sealed: &SealedSecret, master: &MasterKey) -> Result<Self> {
        let plain = master.open_secret(SEALED_LABEL, sealed)?;
        let secret: [u8; 32] = plain.as_slice().try_into().map_err(|_| Error::Malformed {
            what: "sealed backup key",
            reason: "expected 32 bytes",
        })?;
        Ok(Self::from_secret(Zeroizing::new(secret)))
    }

    /// Reseals a sealed backup key under the active master key.
    ///
    /// # Errors
    ///
    /// As [`MasterKey::reseal_secret`].
    pub fn reseal(sealed: &SealedSecret, master: &MasterKey) -> Result<SealedSecret> {
        master.reseal_secret(SEALED_LABEL, sealed)
    }

    /// Derives the key that wraps data keys and the index key inside a
    /// backup, in place of the master key. Backups made before a master-key
    /// rotation therefore restore after it, even once the old master key is
    /// retired, because the backup key is resealed rather than replaced.
    ///
    /// # Errors
    ///
    /// [`Error::Provider`] if AWS-LC fails.
    pub fn wrapping_key(&self) -> Result<MasterKey> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, KEY_ID_LABEL).extract(self.secret.as_slice());
        let mut key = Zeroizing::new([0u8; 32]);
        let info = [WRAPPING_KEY_INFO];
        prk.expand(&info, FileKeyLen)
            .and_then(|okm| okm.fill(key.as_mut_slice()))
            .map_err(Error::provider("backup key derivation"))?;
        MasterKey::from_secret(key)
    }

    fn file_key(&self, salt: &[u8]) -> Result<LessSafeKey> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(self.secret.as_slice());
        let mut key = Zeroizing::new([0u8; 32]);
        let info = [FILE_KEY_INFO];
        prk.expand(&info, FileKeyLen)
            .and_then(|okm| okm.fill(key.as_mut_slice()))
            .map_err(Error::provider("backup key derivation"))?;
        let unbound = UnboundKey::new(&AES_256_GCM, key.as_slice())
            .map_err(Error::provider("AES-256-GCM key setup"))?;
        Ok(LessSafeKey::new(unbound))
    }
}

impl fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackupKey({}, [redacted])", self.id())
    }
}

/// Output length request for HKDF-Expand: one AES-256 key.
struct FileKeyLen;

impl hkdf::KeyType for FileKeyLen {
    fn len(&self) -> usize {
        32
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn chunk_nonce(counter: u64, last: bool) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[0] = u8::from(last);
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(nonce)
}

/// Encrypts a backup stream into `W`. Call [`BackupWriter::finish`] at the
/// end: a stream dropped without it has no final chunk and never restores.
pub struct BackupWriter<W: Write> {
    out: W,
    key: LessSafeKey,
    header: [u8; HEADER_LEN],
    buffer: Zeroizing<Vec<u8>>,
    counter: u64,
}

impl<W: Write> BackupWriter<W> {
    /// Writes the header to `out` and returns a writer for the content.
    ///
    /// # Errors
    ///
    /// [`Error::Provider`] if AWS-LC fails, [`Error::Stream`] if writing fails.
    pub fn new(mut out: W, key: &BackupKey) -> Result<Self> {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8] = FORMAT_VERSION;
        header[9..17].copy_from_slice(&key.id);
        aws_lc_rs::rand::fill(&mut header[17..]).map_err(Error::provider("random generation"))?;
        let file_key = key.file_key(&header[17..])?;
        out.write_all(&header).map_err(Error::Stream)?;
        Ok(Self {
            out,
            key: file_key,
            header,
            buffer: Zeroizing::new(Vec::with_capacity(CHUNK_LEN + TAG_LEN)),
            counter: 0,
        })
    }

    /// Encrypts the buffered plaintext as the next chunk.
    fn flush_chunk(&mut self, last: bool) -> Result<()> {
        let len = u32::try_from(self.buffer.len()).map_err(|_| Error::Provider {
            operation: "backup chunking",
        })?;
        let nonce = chunk_nonce(self.counter, last);
        self.key
            .seal_in_place_append_tag(nonce, Aad::from(&self.header), &mut *self.buffer)
            .map_err(Error::provider("AES-256-GCM encryption"))?;
        self.out
            .write_all(&[u8::from(last)])
            .map_err(Error::Stream)?;
        self.out
            .write_all(&len.to_be_bytes())
            .map_err(Error::Stream)?;
        self.out.write_all(&self.buffer).map_err(Error::Stream)?;
        self.buffer.clear();
        self.counter += 1;
        Ok(())
    }

    /// Writes the final chunk and flushes, returning the inner writer.
    ///
    /// # Errors
    ///
    /// As [`BackupWriter::new`].
    pub fn finish(mut self) -> Result<W> {
        self.flush_chunk(true)?;
        self.out.flush().map_err(Error::Stream)?;
        Ok(self.out)
    }
}

impl<W: Write> Write for BackupWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK_LEN - self.buffer.len();
        let taken = room.min(data.len());
        self.buffer.extend_from_slice(&data[..taken]);
        if self.buffer.len() == CHUNK_LEN {
            self.flush_chunk(false).map_err(io::Error::other)?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Chunks are cut at fixed sizes, so only the final chunk may be short.
        self.out.flush()
    }
}

/// Decrypts a backup stream. Every byte it returns was authenticated, and it
/// reports the end of the stream only after the final chunk opened and no
/// bytes follow it.
pub struct BackupReader<R: Read> {
    input: R,
    key: LessSafeKey,
    header: [u8; HEADER_LEN],
    plain: Zeroizing<Vec<u8>>,
    position: usize,
    counter: u64,
    finished: bool,
}

impl<R: Read> BackupReader<R> {
    /// Reads and checks the header.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] if the input is not a backup file,
    /// [`Error::UnsupportedVersion`] for an unknown format version, and
    /// [`Error::WrongBackupKey`] if another backup key sealed it.
    pub fn new(mut input: R, key: &BackupKey) -> Result<Self> {
        let mut header = [0u8; HEADER_LEN];
        read_full(&mut input, &mut header).map_err(|error| match error {
            Error::Stream(source) if source.kind() == io::ErrorKind::UnexpectedEof => {
                Error::Malformed {
                    what: "backup file",
                    reason: "shorter than the backup header",
                }
            }
            other => other,
        })?;
        if &header[..8] != MAGIC {
            return Err(Error::Malformed {
                what: "backup file",
                reason: "it does not start with the Ward backup header",
            });
        }
        if header[8] != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "backup file",
                version: header[8],
            });
        }
        if header[9..17] != key.id {
            return Err(Error::WrongBackupKey {
                expected: hex(&header[9..17]),
                found: key.id(),
            });
        }
        let file_key = key.file_key(&header[17..])?;
        Ok(Self {
            input,
            key: file_key,
            header,
            plain: Zeroizing::new(Vec::with_capacity(CHUNK_LEN + TAG_LEN)),
            position: 0,
            counter: 0,
            finished: false,
        })
    }

    /// Reads and opens the next chunk into `self.plain`.
    fn next_chunk(&mut self) -> Result<()> {
        let mut prefix = [0u8; 5];
        read_full(&mut self.input, &mut prefix).map_err(truncated)?;
        let last = match prefix[0] {
            0 => false,
            1 => true,
            _ => return Err(Error::Decrypt),
        };
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > CHUNK_LEN || (!last && len != CHUNK_LEN) {
            return Err(Error::Decrypt);
        }

        self.plain.clear();
        self.plain.resize(len + TAG_LEN, 0);
        read_full(&mut self.input, &mut self.plain).map_err(truncated)?;
        let nonce = chunk_nonce(self.counter, last);
        let opened = self
            .key
            .open_in_place(nonce, Aad::from(&self.header), &mut self.plain)
            .map_err(|_| Error::Decrypt)?
            .len();
        self.plain.truncate(opened);
        self.position = 0;
        self.counter += 1;

        if last {
            let mut extra = [0u8; 1];
            match self.input.read(&mut extra) {
                Ok(0) => self.finished = true,
                Ok(_) => {
                    return Err(Error::Malformed {
                        what: "backup file",
                        reason: "data follows the final chunk",
                    });
                }
                Err(error) => return Err(Error::Stream(error)),
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for BackupReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.position == self.plain.len() {
            if self.finished {
                return Ok(0);
            }
            self.next_chunk().map_err(io::Error::other)?;
        }
        let available = &self.plain[self.position..];
        let taken = available.len().min(out.len());
        out[..taken].copy_from_slice(&available[..taken]);
        self.position += taken;
        Ok(taken)
    }
}

fn read_full(input: &mut impl Read, buffer: &mut [u8]) -> Result<()> {
    input.read_exact(buffer).map_err(Error::Stream)
}

fn truncated(error: Error) -> Error {
    match error {
        Error::Stream(source) if source.kind() == io::ErrorKind::UnexpectedEof => {
            Error::Malformed {
                what: "backup file",
                reason: "truncated: the file ends before its final chunk",
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(key: &BackupKey, content: &[u8]) -> Vec<u8> {
        let mut writer = BackupWriter::new(Vec::new(), key).unwrap();
        writer.write_all(content).unwrap();
        writer.finish().unwrap()
    }

    fn open(key: &BackupKey, file: &[u8]) -> Result<Vec<u8>> {
        let mut reader = BackupReader::new(file, key)?;
        let mut out = Vec::new();
        reader.read_to_end(&mut out).map_err(|error| {
            match error.into_inner().map(|inner| inner.downcast::<Error>()) {
                Some(Ok(inner)) => *inner,
                _ => Error::Decrypt,
            }
        })?;
        Ok(out)
    }

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_chunk_boundaries() {
        let key = BackupKey::generate().unwrap();
        for len in [
            0,
            1,
            CHUNK_LEN - 1,
            CHUNK_LEN,
            CHUNK_LEN + 1,
            3 * CHUNK_LEN + 7,
        ] {
            let plain = content(len);
            let file = seal(&key, &plain);
            assert_eq!(open(&key, &file).unwrap(), plain, "length {len}");
        }
    }

    #[test]
    fn rejects_truncation_at_every_chunk_boundary() {
        let key = BackupKey::generate().unwrap();
        let file = seal(&key, &content(2 * CHUNK_LEN + 10));
        let chunk = 5 + CHUNK_LEN + TAG_LEN;
        for cut in [
            HEADER_LEN,
            HEADER_LEN + chunk,
            HEADER_LEN + 2 * chunk,
            file.len() - 1,
        ] {
            let error = open(&key, &file[..cut]).unwrap_err();
            assert!(
                error.to_string().contains("truncated"),
                "cut at {cut}: {error}"
            );
        }
    }

    #[test]
    fn rejects_reordered_chunks() {
        let key = BackupKey::generate().unwrap();
        let file = seal(&key, &content(3 * CHUNK_LEN));
        let chunk = 5 + CHUNK_LEN + TAG_LEN;
        let mut swapped = file[..HEADER_LEN].to_vec();
        swapped.extend_from_slice(&file[HEADER_LEN + chunk..HEADER_LEN + 2 * chunk]);
        swapped.extend_from_slice(&file[HEADER_LEN..HEADER_LEN + chunk]);
        swapped.extend_from_slice(&file[HEADER_LEN + 2 * chunk..]);
        assert!(matches!(open(&key, &swapped), Err(Error::Decrypt)));
    }

    #[test]
    fn rejects_flipped_bits_and_appended_data() {
        let key = BackupKey::generate().unwrap();
        let file = seal(&key, &content(1000));
        for index in [
            HEADER_LEN - 1,
            HEADER_LEN,
            HEADER_LEN + 3,
            HEADER_LEN + 5,
            file.len() - 1,
        ] {
            let mut edited = file.clone();
            edited[index] ^= 0x01;
            assert!(open(&key, &edited).is_err(), "byte {index}");
        }
        let mut longer = file.clone();
        longer.push(0);
        let error = open(&key, &longer).unwrap_err();
        assert!(error.to_string().contains("final chunk"), "{error}");
    }

    #[test]
    fn rejects_other_backup_key() {
        let key = BackupKey::generate().unwrap();
        let other = BackupKey::generate().unwrap();
        let file = seal(&key, b"content");
        assert!(matches!(
            open(&other, &file),
            Err(Error::WrongBackupKey { .. })
        ));
    }

    #[test]
    fn sealed_key_survives_master_rotation() {
        let old = MasterKey::generate().unwrap();
        let key = BackupKey::generate().unwrap();
        let sealed = key.sealed(&old).unwrap();

        let old_again = MasterKey::from_base64(&old.encode()).unwrap();
        let new = MasterKey::generate().unwrap().with_retired(vec![old_again]);
        let resealed = BackupKey::reseal(&sealed, &new).unwrap();
        assert_eq!(resealed.master_key_id(), new.id());

        let new_only = MasterKey::from_base64(&new.encode()).unwrap();
        assert_eq!(
            BackupKey::from_sealed(&resealed, &new_only).unwrap().id(),
            key.id()
        );
        assert!(BackupKey::from_sealed(&sealed, &new_only).is_err());
    }
}
