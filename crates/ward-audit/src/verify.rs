//! Verification of stored audit rows against signed checkpoints.
//!
//! [`verify_log`] reads every row once, in sequence order, and recomputes
//! each hash, the chain and the Merkle tree in O(log n) memory. It stops at
//! the first problem and names it.
//!
//! # What is detected, and what is not
//!
//! Nothing in a row is secret, so anyone with write access to the database
//! can rewrite the records after some point and recompute every hash after
//! it.
//! Only signed checkpoints, kept where that person cannot change them, pin
//! the log: a rewrite of any record at or before the latest checkpoint's
//! size is reported, while records after it are protected only against
//! careless edits. The report states how many records are not yet covered
//! ([`LogSummary::uncovered`]), and the store should sign checkpoints often.
//!
//! Problems are reported in this order: invalid checkpoints (origin, key id,
//! signature) first, then rows in sequence order, each checkpoint being
//! compared once the rows reach its size, then truncation.

use std::borrow::Borrow;

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::chain::{ChainEntry, GENESIS, Hash, StoredAudit, chain_hash, leaf_hash};
use crate::checkpoint::Checkpoint;
use crate::error::Error;
use crate::merkle::{MerkleAccumulator, inclusion_proof, verify_consistency, verify_inclusion};

/// The log that checkpoints must belong to: its origin line and the public
/// key that signs its checkpoints.
#[derive(Clone, Copy, Debug)]
pub struct LogKey<'a> {
    /// The expected origin line.
    pub origin: &'a str,
    /// The public key x coordinate, base64url without padding.
    pub x: &'a str,
    /// The public key y coordinate, base64url without padding.
    pub y: &'a str,
}

impl LogKey<'_> {
    /// Returns the RFC 7638 thumbprint of the key, the expected key id.
    pub fn key_id(&self) -> String {
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":{},"y":{}}}"#,
            serde_json::Value::from(self.x),
            serde_json::Value::from(self.y)
        );
        URL_SAFE_NO_PAD.encode(digest(&SHA256, canonical.as_bytes()))
    }
}

/// The first problem found in a log. Messages name sequence numbers and
/// sizes only, never record content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// A checkpoint names another log.
    #[error("checkpoint for size {tree_size} names another log (origin mismatch)")]
    CheckpointOrigin {
        /// The checkpoint's tree size.
        tree_size: u64,
    },
    /// A checkpoint names a key other than the trusted one.
    #[error("checkpoint for size {tree_size} names another signing key")]
    CheckpointKeyId {
        /// The checkpoint's tree size.
        tree_size: u64,
    },
    /// A checkpoint's signature does not verify with the trusted key: the
    /// checkpoint was forged or altered, or signed by another key.
    #[error("checkpoint for size {tree_size} has an invalid signature (forged or altered)")]
    CheckpointSignature {
        /// The checkpoint's tree size.
        tree_size: u64,
    },
    /// A row's canonical bytes do not decode to a valid entry.
    #[error("seq {seq}: stored record is malformed ({reason})")]
    Malformed {
        /// The row's sequence number.
        seq: u64,
        /// The decoding error, without record content.
        reason: String,
    },
    /// A sequence number appears twice: a record was inserted.
    #[error("seq {seq} appears twice (record inserted)")]
    DuplicateSeq {
        /// The repeated sequence number.
        seq: u64,
    },
    /// Rows are not in ascending sequence order.
    #[error("seq {seq} follows seq {previous} (rows out of order)")]
    OutOfOrder {
        /// The sequence number found.
        seq: u64,
        /// The sequence number before it.
        previous: u64,
    },
    /// Sequence numbers skip: records were removed.
    #[error("expected seq {expected} but found seq {found} (records removed)")]
    Gap {
        /// The sequence number expected.
        expected: u64,
        /// The sequence number found.
        found: u64,
    },
    /// A row's record content no longer matches its stored leaf hash.
    #[error("seq {seq}: record content changed (leaf hash mismatch)")]
    ContentChanged {
        /// The row's sequence number.
        seq: u64,
    },
    /// A row contains the record written with another sequence number.
    #[error(
        "seq {seq}: row holds the record written as seq {written} (records reordered or renumbered)"
    )]
    SeqMismatch {
        /// The row's sequence number.
        seq: u64,
        /// The sequence number inside the record's canonical bytes.
        written: u64,
    },
    /// A record does not link to the record before it.
    #[error(
        "seq {seq}: record does not follow the record before it \
         (a record before it was changed, removed or inserted)"
    )]
    ChainBroken {
        /// The row's sequence number.
        seq: u64,
    },
    /// A row's stored previous hash does not match the chain.
    #[error("seq {seq}: stored previous hash does not match the chain")]
    PrevHashMismatch {
        /// The row's sequence number.
        seq: u64,
    },
    /// A row's stored chain hash does not match the recomputed one.
    #[error("seq {seq}: stored chain hash does not match the recomputed one")]
    ChainHashMismatch {
        /// The row's sequence number.
        seq: u64,
    },
    /// A signed checkpoint's root differs from the log's tree at its size.
    #[error(
        "checkpoint for size {tree_size}: Merkle root differs from the log \
         (records before seq {tree_size} were rewritten)"
    )]
    CheckpointRoot {
        /// The checkpoint's tree size.
        tree_size: u64,
    },
    /// A signed checkpoint's chain head differs from the log at its size.
    #[error(
        "checkpoint for size {tree_size}: chain head differs from the log \
         (records before seq {tree_size} were rewritten)"
    )]
    CheckpointChainHead {
        /// The checkpoint's tree size.
        tree_size: u64,
    },
    /// The log is shorter than a signed checkpoint.
    #[error(
        "log has {log_size} records but a checkpoint covers {checkpoint_size} \
         (records removed from the end)"
    )]
    Truncated {
        /// The number of rows found.
        log_size: u64,
        /// The largest checkpoint size.
        checkpoint_size: u64,
    },
    /// The rows given for a range do not match the range requested.
    #[error("range {from}..{to} is empty, reversed or beyond the checkpoint size {tree_size}")]
    RangeOutsideCheckpoint {
        /// First sequence number of the range.
        from: u64,
        /// One past the last sequence number of the range.
        to: u64,
        /// The checkpoint's tree size.
        tree_size: u64,
    },
    /// Fewer or more rows or proofs than the range holds.
    #[error("range {from}..{to}: {rows} rows and {proofs} proofs given")]
    RangeIncomplete {
        /// First sequence number of the range.
        from: u64,
        /// One past the last sequence number of the range.
        to: u64,
        /// The number of rows given.
        rows: usize,
        /// The number of proofs given.
        proofs: usize,
    },
    /// A record's inclusion proof does not lead to the checkpoint's root.
    #[error("seq {seq}: record is not in the tree of the checkpoint (inclusion proof failed)")]
    NotIncluded {
        /// The row's sequence number.
        seq: u64,
    },
    /// Two checkpoints do not describe one append-only log.
    #[error(
        "checkpoint for size {new_size} does not extend checkpoint for size \
         {old_size} (consistency proof failed)"
    )]
    Inconsistent {
        /// The older checkpoint's size.
        old_size: u64,
        /// The newer checkpoint's size.
        new_size: u64,
    },
}

impl Problem {
    /// Returns the sequence number of the row where the problem was found,
    /// when it concerns one row.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Self::Malformed { seq, .. }
            | Self::DuplicateSeq { seq }
            | Self::OutOfOrder { seq, .. }
            | Self::ContentChanged { seq }
            | Self::SeqMismatch { seq, .. }
            | Self::ChainBroken { seq }
            | Self::PrevHashMismatch { seq }
            | Self::ChainHashMismatch { seq }
            | Self::NotIncluded { seq } => Some(*seq),
            Self::Gap { found, .. } => Some(*found),
            _ => None,
        }
    }
}

/// The state of a log that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSummary {
    /// The number of records.
    pub tree_size: u64,
    /// The Merkle root of all records.
    pub root: Hash,
    /// The chain hash of the last record.
    pub chain_head: Hash,
    /// The number of checkpoints compared with the log.
    pub checkpoints: usize,
    /// The number of records after the largest checkpoint, which no signed
    /// checkpoint covers yet.
    pub uncovered: u64,
}

/// The result of a verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyReport {
    /// Everything matched.
    Valid(LogSummary),
    /// The first problem found.
    Invalid(Problem),
}

impl VerifyReport {
    /// Returns true for [`VerifyReport::Valid`].
    pub fn is_valid(&self) -> bool {
        matches!(self, Self::Valid(_))
    }

    /// Returns the problem, if any.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::Valid(_) => None,
            Self::Invalid(problem) => Some(problem),
        }
    }
}

/// Checks a checkpoint's origin, key id and signature against `key`.
///
/// # Errors
///
/// The [`Problem`] found: [`Problem::CheckpointOrigin`],
/// [`Problem::CheckpointKeyId`] or [`Problem::CheckpointSignature`].
pub fn verify_checkpoint(checkpoint: &Checkpoint, key: &LogKey<'_>) -> Result<(), Problem> {
    let tree_size = checkpoint.tree_size;
    if checkpoint.origin != key.origin {
        return Err(Problem::CheckpointOrigin { tree_size });
    }
    if checkpoint.key_id != key.key_id() {
        return Err(Problem::CheckpointKeyId { tree_size });
    }
    if !checkpoint.verify(key.x, key.y) {
        return Err(Problem::CheckpointSignature { tree_size });
    }
    Ok(())
}

/// Verifies every stored row, given in ascending sequence order, against
/// the signed `checkpoints`, which may come in any order.
pub fn verify_log<R>(
    rows: impl IntoIterator<Item = R>,
    checkpoints: &[Checkpoint],
    key: &LogKey<'_>,
) -> VerifyReport
where
    R: Borrow<StoredAudit>,
{
    match check_log(rows, checkpoints, key) {
        Ok(summary) => VerifyReport::Valid(summary),
        Err(problem) => VerifyReport::Invalid(problem),
    }
}

fn check_log<R: Borrow<StoredAudit>>(
    rows: impl IntoIterator<Item = R>,
    checkpoints: &[Checkpoint],
    key: &LogKey<'_>,
) -> Result<LogSummary, Problem> {
    for checkpoint in checkpoints {
        verify_checkpoint(checkpoint, key)?;
    }
    let mut pending: Vec<&Checkpoint> = checkpoints.iter().collect();
    pending.sort_by_key(|checkpoint| std::cmp::Reverse(checkpoint.tree_size));

    let mut tree = MerkleAccumulator::new();
    let mut head = GENESIS;
    let mut previous_seq = None;
    compare_due(&mut pending, &tree, &head)?;

    for row in rows {
        let row = row.borrow();
        check_seq(row.seq, previous_seq, tree.size())?;
        previous_seq = Some(row.seq);
        check_row(row, &head)?;
        tree.push(&row.leaf_hash);
        head = row.chain_hash;
        compare_due(&mut pending, &tree, &head)?;
    }

    if let Some(largest) = pending.first() {
        return Err(Problem::Truncated {
            log_size: tree.size(),
            checkpoint_size: largest.tree_size,
        });
    }
    let covered = checkpoints
        .iter()
        .map(|checkpoint| checkpoint.tree_size)
        .max()
        .unwrap_or(0);
    Ok(LogSummary {
        tree_size: tree.size(),
        root: tree.root(),
        chain_head: head,
        checkpoints: checkpoints.len(),
        uncovered: tree.size().saturating_sub(covered),
    })
}

/// Compares the checkpoints for the current size, which sit at the end of
/// `pending` (sorted by descending size), and removes them.
fn compare_due(
    pending: &mut Vec<&Checkpoint>,
    tree: &MerkleAccumulator,
    head: &Hash,
) -> Result<(), Problem> {
    while let Some(checkpoint) = pending.last() {
        if checkpoint.tree_size != tree.size() {
            break;
        }
        let tree_size = checkpoint.tree_size;
        if checkpoint.root != tree.root() {
            return Err(Problem::CheckpointRoot { tree_size });
        }
        if checkpoint.chain_head != *head {
            return Err(Problem::CheckpointChainHead { tree_size });
        }
        pending.pop();
    }
    Ok(())
}

fn check_seq(seq: u64, previous: Option<u64>, expected: u64) -> Result<(), Problem> {
    if let Some(previous) = previous {
        if seq == previous {
            return Err(Problem::DuplicateSeq { seq });
        }
        if seq < previous {
            return Err(Problem::OutOfOrder { seq, previous });
        }
    }
    if seq != expected {
        return Err(Problem::Gap {
            expected,
            found: seq,
        });
    }
    Ok(())
}

/// Checks one row whose predecessor has chain hash `head`.
fn check_row(row: &StoredAudit, head: &Hash) -> Result<(), Problem> {
    let seq = row.seq;
    let entry =
        ChainEntry::from_canonical(&row.canonical).map_err(|error| malformed(seq, &error))?;
    if leaf_hash(&row.canonical) != row.leaf_hash {
        return Err(Problem::ContentChanged { seq });
    }
    if entry.seq != seq {
        return Err(Problem::SeqMismatch {
            seq,
            written: entry.seq,
        });
    }
    if entry.prev != *head {
        return Err(Problem::ChainBroken { seq });
    }
    if row.prev_hash != *head {
        return Err(Problem::PrevHashMismatch { seq });
    }
    if chain_hash(head, &row.leaf_hash) != row.chain_hash {
        return Err(Problem::ChainHashMismatch { seq });
    }
    Ok(())
}

fn malformed(seq: u64, error: &Error) -> Problem {
    Problem::Malformed {
        seq,
        reason: error.to_string(),
    }
}

/// Builds the inclusion proofs of records `from..to` in the tree of the
/// first `tree_size` of `leaves`, as [`verify_range`] takes them. Returns
/// `None` if the range is empty or reversed or does not fit in `tree_size`,
/// or `tree_size` exceeds the number of leaves.
pub fn prove_range(leaves: &[Hash], from: u64, to: u64, tree_size: u64) -> Option<Vec<Vec<Hash>>> {
    let size = usize::try_from(tree_size).ok()?;
    let tree = leaves.get(..size)?;
    if from >= to || to > tree_size {
        return None;
    }
    (from..to)
        .map(|index| inclusion_proof(tree, index))
        .collect()
}

/// Verifies records `from..to` against one signed checkpoint, without the
/// rest of the log.
///
/// `rows` must be exactly the rows `from..to` in order, and `proofs[i]` the
/// inclusion proof of `rows[i]` in the checkpoint's tree (see
/// [`prove_range`]). Each row's hashes are recomputed, consecutive rows must
/// chain, each leaf must be in the checkpoint's tree, and when the range
/// ends at the checkpoint's size the last chain hash must equal its chain
/// head. The first row's link to the record before `from` is not checked.
pub fn verify_range(
    rows: &[StoredAudit],
    from: u64,
    to: u64,
    proofs: &[Vec<Hash>],
    checkpoint: &Checkpoint,
    key: &LogKey<'_>,
) -> VerifyReport {
    let summary = check_range(rows, from, to, proofs, checkpoint, key).map(|head| LogSummary {
        tree_size: checkpoint.tree_size,
        root: checkpoint.root,
        chain_head: head,
        checkpoints: 1,
        uncovered: 0,
    });
    match summary {
        Ok(summary) => VerifyReport::Valid(summary),
        Err(problem) => VerifyReport::Invalid(problem),
    }
}

/// Returns the chain hash of the last row of the range.
fn check_range(
    rows: &[StoredAudit],
    from: u64,
    to: u64,
    proofs: &[Vec<Hash>],
    checkpoint: &Checkpoint,
    key: &LogKey<'_>,
) -> Result<Hash, Problem> {
    verify_checkpoint(checkpoint, key)?;
    let tree_size = checkpoint.tree_size;
    if from >= to || to > tree_size {
        return Err(Problem::RangeOutsideCheckpoint {
            from,
            to,
            tree_size,
        });
    }
    let expected_len = usize::try_from(to - from).ok();
    if Some(rows.len()) != expected_len || proofs.len() != rows.len() {
        return Err(Problem::RangeIncomplete {
            from,
            to,
            rows: rows.len(),
            proofs: proofs.len(),
        });
    }

    let mut previous: Option<(u64, Hash)> = None;
    for (row, proof) in rows.iter().zip(proofs) {
        let expected = previous.map_or(from, |(seq, _)| seq + 1);
        check_seq(row.seq, previous.map(|(seq, _)| seq), expected)?;
        // The first row's predecessor is outside the range, so its stored
        // previous hash is used as the chain head.
        let head = previous.map_or(row.prev_hash, |(_, head)| head);
        check_row(row, &head)?;
        if !verify_inclusion(&row.leaf_hash, row.seq, tree_size, proof, &checkpoint.root) {
            return Err(Problem::NotIncluded { seq: row.seq });
        }
        previous = Some((row.seq, row.chain_hash));
    }

    let head = previous.map_or(GENESIS, |(_, head)| head);
    if to == tree_size && head != checkpoint.chain_head {
        return Err(Problem::CheckpointChainHead { tree_size });
    }
    Ok(head)
}

/// Verifies that the signed checkpoint `new` extends the signed checkpoint
/// `old`, the log having only grown in between, with a consistency proof
/// from [`crate::merkle::consistency_proof`].
///
/// # Errors
///
/// The [`Problem`] found in either checkpoint, or [`Problem::Inconsistent`].
pub fn verify_extension(
    old: &Checkpoint,
    new: &Checkpoint,
    proof: &[Hash],
    key: &LogKey<'_>,
) -> Result<(), Problem> {
    verify_checkpoint(old, key)?;
    verify_checkpoint(new, key)?;
    let inconsistent = Problem::Inconsistent {
        old_size: old.tree_size,
        new_size: new.tree_size,
    };
    if !verify_consistency(old.tree_size, new.tree_size, &old.root, &new.root, proof) {
        return Err(inconsistent);
    }
    if old.tree_size == new.tree_size && old.chain_head != new.chain_head {
        return Err(inconsistent);
    }
    Ok(())
}
