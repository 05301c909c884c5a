//! Signed checkpoints: the tree size, Merkle root and chain head at one
//! moment, signed with ES256, in a text form that can be kept apart from the
//! database.
//!
//! The text follows the style of transparency-log checkpoints (a signed note
//! with origin, size and root lines), with two extension lines:
//!
//! ```text
//! ward.example.org/audit
//! 1024
//! 8Kx3…base64 of the 32-byte Merkle root…=
//! chain-head 3q2+…base64 of the 32-byte chain head…=
//! timestamp 1714556400
//!
//! — <key id> <base64 of the 64-byte ES256 signature r || s>
//! ```
//!
//! The signed message is the body: the first five lines, each ending in a
//! newline. Base64 uses the standard alphabet with padding. The size is
//! decimal and the timestamp is Unix time in seconds. The signature line
//! starts with an em dash (U+2014) and a space, and the key id is the
//! RFC 7638 thumbprint of the signing key. This is not byte-compatible with C2SP
//! signed notes, which prefix the signature with a key hash and do not
//! define ES256.
//!
//! A checkpoint file holds one or more checkpoints separated by blank lines;
//! [`append_to_file`] adds one at the end.
//!
//! The signing key should be used for checkpoints only. A token signing
//! input never contains a newline, so a checkpoint body cannot double as a
//! JWS signing input, but a separate key keeps the two uses apart anyway.

use std::fs::OpenOptions;
use std::io::{Read as _, Write as _};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ward_crypto::{SigningKey, verify_es256};

use crate::chain::Hash;
use crate::error::{Error, Result};

/// The line prefix of a signature line: an em dash and a space.
pub const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// Maximum size of a checkpoint file that [`read_file`] loads: 64 MiB, about
/// 250,000 checkpoints.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Maximum length in bytes of an origin line.
pub const MAX_ORIGIN_LEN: usize = 255;

/// Number of lines of one checkpoint: five body lines, a blank line and the
/// signature line.
const CHECKPOINT_LINES: usize = 7;

/// A signed statement of the log's size, Merkle root and chain head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name, such as `ward.example.org/audit`.
    pub origin: String,
    /// The number of records covered.
    pub tree_size: u64,
    /// The Merkle tree hash of the first `tree_size` leaves.
    pub root: Hash,
    /// The chain hash of record `tree_size - 1`, or 32 zero bytes when the
    /// log is empty.
    pub chain_head: Hash,
    /// When the checkpoint was made, in Unix seconds.
    pub timestamp: i64,
    /// The RFC 7638 thumbprint of the signing key.
    pub key_id: String,
    /// The ES256 signature (`r || s`) over [`Checkpoint::body`].
    pub signature: Vec<u8>,
}

impl Checkpoint {
    /// Signs a checkpoint.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCheckpointField`] if `origin` is empty, longer than
    /// [`MAX_ORIGIN_LEN`], not printable ASCII or has spaces at either end,
    /// and [`Error::Signing`] if signing fails.
    pub fn sign(
        origin: &str,
        tree_size: u64,
        root: Hash,
        chain_head: Hash,
        timestamp: i64,
        key: &SigningKey,
    ) -> Result<Self> {
        check_origin(origin).map_err(|reason| Error::InvalidCheckpointField { reason })?;
        let mut checkpoint = Self {
            origin: origin.to_owned(),
            tree_size,
            root,
            chain_head,
            timestamp,
            key_id: key.kid().to_owned(),
            signature: Vec::new(),
        };
        checkpoint.signature = key.sign(checkpoint.body().as_bytes())?;
        Ok(checkpoint)
    }

    /// Returns the signed text: the five body lines, each ending in `\n`.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\nchain-head {}\ntimestamp {}\n",
            self.origin,
            self.tree_size,
            STANDARD.encode(self.root),
            STANDARD.encode(self.chain_head),
            self.timestamp,
        )
    }

    /// Verifies the signature with the public key coordinates `x` and `y`
    /// (base64url, as [`SigningKey::public_key_xy`] returns them). The key id
    /// line is not consulted.
    pub fn verify(&self, x: &str, y: &str) -> bool {
        verify_es256(x, y, self.body().as_bytes(), &self.signature)
    }

    /// Returns the checkpoint in its text form, ending in a newline.
    pub fn to_text(&self) -> String {
        format!(
            "{}\n{SIGNATURE_PREFIX}{} {}\n",
            self.body(),
            self.key_id,
            STANDARD.encode(&self.signature)
        )
    }

    /// Parses exactly one checkpoint in the form [`Checkpoint::to_text`]
    /// writes. The signature is not verified.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCheckpoint`] naming the first line that does not
    /// follow the format, or the text is not exactly one checkpoint.
    pub fn from_text(text: &str) -> Result<Self> {
        let lines: Vec<&str> = text.split('\n').collect();
        let Some((block, rest)) = lines.split_at_checked(CHECKPOINT_LINES) else {
            return Err(invalid(lines.len(), "incomplete checkpoint"));
        };
        let checkpoint = parse_block(block, 1)?;
        if rest != [""] {
            return Err(invalid(
                CHECKPOINT_LINES + 1,
                "expected a single checkpoint ending in a newline",
            ));
        }
        Ok(checkpoint)
    }
}

/// Parses every checkpoint in `text`, which contains checkpoints separated by
/// one or more blank lines. Signatures are not verified.
///
/// # Errors
///
/// [`Error::InvalidCheckpoint`] naming the first line that does not follow
/// the format.
pub fn parse_checkpoints(text: &str) -> Result<Vec<Checkpoint>> {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut checkpoints = Vec::new();
    let mut index = 0;
    loop {
        while lines.get(index).is_some_and(|line| line.is_empty()) {
            index += 1;
        }
        if index >= lines.len() {
            return Ok(checkpoints);
        }
        let block = lines
            .get(index..index + CHECKPOINT_LINES)
            .ok_or_else(|| invalid(lines.len(), "incomplete checkpoint"))?;
        checkpoints.push(parse_block(block, index + 1)?);
        index += CHECKPOINT_LINES;
        if lines.get(index).is_some_and(|line| !line.is_empty()) {
            return Err(invalid(
                index + 1,
                "expected a blank line after a checkpoint",
            ));
        }
    }
}

/// Formats checkpoints as [`parse_checkpoints`] reads them, separated by
/// blank lines.
pub fn format_checkpoints(checkpoints: &[Checkpoint]) -> String {
    let texts: Vec<String> = checkpoints.iter().map(Checkpoint::to_text).collect();
    texts.join("\n")
}

/// Appends `checkpoint` to the checkpoint file at `path`, creating it if
/// needed, and syncs the file to disk.
///
/// # Errors
///
/// [`Error::Io`] if the file cannot be opened, written or synced.
pub fn append_to_file(path: &Path, checkpoint: &Checkpoint) -> Result<()> {
    let io_error = |operation| {
        move |source| Error::Io {
            operation,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_error("open"))?;
    let existing = file.metadata().map_err(io_error("inspect"))?.len();
    let mut text = String::new();
    if existing > 0 {
        text.push('\n');
    }
    text.push_str(&checkpoint.to_text());
    file.write_all(text.as_bytes())
        .map_err(io_error("append to"))?;
    file.sync_all().map_err(io_error("sync"))
}

/// Reads every checkpoint from the checkpoint file at `path`. Signatures are
/// not verified.
///
/// # Errors
///
/// [`Error::Io`] if the file cannot be read, is not UTF-8 or is larger than
/// [`MAX_FILE_BYTES`], and [`Error::InvalidCheckpoint`] if its content does
/// not follow the format.
pub fn read_file(path: &Path) -> Result<Vec<Checkpoint>> {
    let io_error = |source| Error::Io {
        operation: "read",
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_error)?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io_error)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(io_error(std::io::Error::other(
            "file is larger than 64 MiB; split it or archive old checkpoints",
        )));
    }
    parse_checkpoints(&text)
}

fn invalid(line: usize, reason: &'static str) -> Error {
    Error::InvalidCheckpoint { line, reason }
}

fn check_origin(origin: &str) -> std::result::Result<(), &'static str> {
    if origin.is_empty() || origin.len() > MAX_ORIGIN_LEN {
        return Err("origin must be 1 to 255 bytes");
    }
    if !origin.bytes().all(|byte| (0x20..0x7f).contains(&byte)) {
        return Err("origin must be printable ASCII");
    }
    if origin.starts_with(' ') || origin.ends_with(' ') {
        return Err("origin must not start or end with a space");
    }
    Ok(())
}

/// Parses the seven lines of one checkpoint; `first_line` is the 1-based
/// number of `block[0]` in the input, for error messages.
fn parse_block(block: &[&str], first_line: usize) -> Result<Checkpoint> {
    let [origin, size, root, head, timestamp, blank, signature] = block else {
        return Err(invalid(first_line, "incomplete checkpoint"));
    };
    let line = |offset: usize| first_line + offset;

    check_origin(origin).map_err(|reason| invalid(line(0), reason))?;
    let tree_size = parse_canonical_number::<u64>(size)
        .ok_or_else(|| invalid(line(1), "tree size must be a decimal integer"))?;
    let root =
        decode_hash(root).ok_or_else(|| invalid(line(2), "root must be base64 of 32 bytes"))?;
    let chain_head = head
        .strip_prefix("chain-head ")
        .and_then(decode_hash)
        .ok_or_else(|| invalid(line(3), "expected chain-head and base64 of 32 bytes"))?;
    let timestamp = timestamp
        .strip_prefix("timestamp ")
        .and_then(parse_canonical_number::<i64>)
        .ok_or_else(|| invalid(line(4), "expected timestamp and Unix seconds"))?;
    if !blank.is_empty() {
        return Err(invalid(
            line(5),
            "expected a blank line before the signature",
        ));
    }
    let (key_id, signature) = parse_signature_line(signature).ok_or_else(|| {
        invalid(
            line(6),
            "expected an em dash, a key id and a base64 signature",
        )
    })?;

    Ok(Checkpoint {
        origin: (*origin).to_owned(),
        tree_size,
        root,
        chain_head,
        timestamp,
        key_id,
        signature,
    })
}

fn parse_signature_line(line: &str) -> Option<(String, Vec<u8>)> {
    let (key_id, signature) = line.strip_prefix(SIGNATURE_PREFIX)?.split_once(' ')?;
    let valid_byte = |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_');
    if key_id.is_empty() || key_id.len() > 128 || !key_id.bytes().all(valid_byte) {
        return None;
    }
    // An ES256 signature is 64 bytes; allow some room but no more.
    if signature.is_empty() || signature.len() > 256 {
        return None;
    }
    let bytes = STANDARD.decode(signature).ok()?;
    (STANDARD.encode(&bytes) == signature).then(|| (key_id.to_owned(), bytes))
}

fn decode_hash(text: &str) -> Option<Hash> {
    if text.len() != 44 {
        return None;
    }
    let bytes = STANDARD.decode(text).ok()?;
    let hash: Hash = bytes.as_slice().try_into().ok()?;
    (STANDARD.encode(hash) == text).then_some(hash)
}

/// Parses an integer written exactly as `to_string` writes it, so that each
/// value has one text form.
fn parse_canonical_number<T: std::str::FromStr + ToString>(text: &str) -> Option<T> {
    let value: T = text.parse().ok()?;
    (value.to_string() == text).then_some(value)
}
