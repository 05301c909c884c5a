//! The write side of the log: sequence numbers, the chain head and the
//! Merkle accumulator, advanced together for each record.

use ward_crypto::SigningKey;

use crate::chain::{GENESIS, Hash, StoredAudit, canonical_bytes, chain_hash, leaf_hash};
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::merkle::MerkleAccumulator;
use crate::record::AuditRecord;

/// The state needed to append the next record: its sequence number, the
/// current chain head and the Merkle accumulator.
///
/// Appends must be serialized, one writer at a time, in the order the rows
/// are committed. The state is cheap to clone (O(log n) hashes). A store
/// that may roll back a transaction works on a clone and keeps it only after
/// the commit succeeds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Appender {
    head: Hash,
    tree: MerkleAccumulator,
}

impl Appender {
    /// Creates the state of an empty log.
    pub fn new() -> Self {
        Self {
            head: GENESIS,
            tree: MerkleAccumulator::new(),
        }
    }

    /// Restores the state from the last row's chain hash and the accumulator
    /// of all leaf hashes, for example after a restart.
    pub fn resume(head: Hash, tree: MerkleAccumulator) -> Self {
        Self { head, tree }
    }

    /// Restores the state from all stored rows in sequence order, without
    /// verifying them (see [`crate::verify::verify_log`] for that).
    pub fn from_rows<'a>(rows: impl IntoIterator<Item = &'a StoredAudit>) -> Self {
        let mut appender = Self::new();
        for row in rows {
            appender.tree.push(&row.leaf_hash);
            appender.head = row.chain_hash;
        }
        appender
    }

    /// Validates `record`, builds its row and advances the state.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRecord`](crate::Error::InvalidRecord) or
    /// [`Error::Time`](crate::Error::Time) if the record cannot be
    /// stored. The state is unchanged on error.
    pub fn append(&mut self, record: &AuditRecord) -> Result<StoredAudit> {
        record.validate()?;
        let seq = self.tree.size();
        let canonical = canonical_bytes(seq, &self.head, record)?;
        let leaf = leaf_hash(&canonical);
        let chain = chain_hash(&self.head, &leaf);
        let row = StoredAudit {
            seq,
            canonical,
            prev_hash: self.head,
            leaf_hash: leaf,
            chain_hash: chain,
        };
        self.tree.push(&leaf);
        self.head = chain;
        Ok(row)
    }

    /// Returns the sequence number the next record will get, which is also
    /// the number of records so far.
    pub fn next_seq(&self) -> u64 {
        self.tree.size()
    }

    /// Returns the chain hash of the last record, [`GENESIS`] when empty.
    pub fn head(&self) -> Hash {
        self.head
    }

    /// Returns the Merkle accumulator.
    pub fn tree(&self) -> &MerkleAccumulator {
        &self.tree
    }

    /// Signs a checkpoint of the current state.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCheckpointField`](crate::Error::InvalidCheckpointField)
    /// for an origin the checkpoint format cannot hold, and
    /// [`Error::Signing`](crate::Error::Signing) if signing fails.
    pub fn checkpoint(&self, origin: &str, timestamp: i64, key: &SigningKey) -> Result<Checkpoint> {
        Checkpoint::sign(
            origin,
            self.tree.size(),
            self.tree.root(),
            self.head,
            timestamp,
            key,
        )
    }
}
