//! The Merkle tree of RFC 6962 section 2.1 (unchanged in RFC 9162 section
//! 2.1) over audit leaf hashes: tree hashes, inclusion and consistency
//! proofs, and an incremental accumulator.
//!
//! Leaves are the 32-byte leaf hashes from [`crate::chain::leaf_hash`]
//! (`SHA-256(0x00 || data)`); interior nodes are `SHA-256(0x01 || left ||
//! right)`. The hash of the empty tree is `SHA-256("")`.
//!
//! Proof generation takes the full list of leaf hashes and costs O(n)
//! hashes per proof. Verification costs O(log n).

use aws_lc_rs::digest::{Context, SHA256, digest};

use crate::chain::Hash;

/// Returns the hash of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    to_hash(digest(&SHA256, b"").as_ref())
}

/// Returns the interior node hash `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut context = Context::new(&SHA256);
    context.update(&[0x01]);
    context.update(left);
    context.update(right);
    to_hash(context.finish().as_ref())
}

pub(crate) fn to_hash(bytes: &[u8]) -> Hash {
    let mut hash = [0u8; 32];
    hash.iter_mut()
        .zip(bytes)
        .for_each(|(out, byte)| *out = *byte);
    hash
}

/// Returns the Merkle Tree Hash (MTH) of `leaves`.
pub fn root(leaves: &[Hash]) -> Hash {
    let mut accumulator = MerkleAccumulator::new();
    for leaf in leaves {
        accumulator.push(leaf);
    }
    accumulator.root()
}

/// Returns the largest power of two smaller than `n`, for `n >= 2`.
fn split_point(n: usize) -> usize {
    let below = n.saturating_sub(1).max(1);
    1 << below.ilog2()
}

/// Returns the inclusion proof (audit path) of leaf `index` in the tree of
/// all `leaves`, or `None` when `index` is out of range.
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Option<Vec<Hash>> {
    let index = usize::try_from(index).ok()?;
    if index >= leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    audit_path(index, leaves, &mut proof);
    Some(proof)
}

/// RFC 6962 PATH(m, D[n]), appending from the leaf level up.
fn audit_path(index: usize, leaves: &[Hash], proof: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let Some((left, right)) = leaves.split_at_checked(split_point(leaves.len())) else {
        return;
    };
    if index < left.len() {
        audit_path(index, left, proof);
        proof.push(root(right));
    } else {
        audit_path(index - left.len(), right, proof);
        proof.push(root(left));
    }
}

/// Verifies that `leaf` is at `index` in the tree of `tree_size` leaves with
/// hash `root`, following RFC 9162 section 2.1.3.2.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    tree_size: u64,
    proof: &[Hash],
    root: &Hash,
) -> bool {
    if index >= tree_size {
        return false;
    }
    let (mut fnode, mut snode) = (index, tree_size - 1);
    let mut hash = *leaf;
    for sibling in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            hash = node_hash(sibling, &hash);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && hash == *root
}

/// Returns the consistency proof between the tree of the first `old_size`
/// leaves and the tree of all `leaves` (RFC 6962 `PROOF(m, D[n])`), or `None`
/// when `old_size` exceeds the number of leaves. The proof is empty when
/// `old_size` is 0 or equals the number of leaves.
pub fn consistency_proof(leaves: &[Hash], old_size: u64) -> Option<Vec<Hash>> {
    let old_size = usize::try_from(old_size).ok()?;
    if old_size > leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    if old_size > 0 {
        subproof(old_size, leaves, true, &mut proof);
    }
    Some(proof)
}

/// RFC 6962 SUBPROOF(m, D[n], b).
fn subproof(old_size: usize, leaves: &[Hash], complete: bool, proof: &mut Vec<Hash>) {
    if old_size == leaves.len() {
        if !complete {
            proof.push(root(leaves));
        }
        return;
    }
    let Some((left, right)) = leaves.split_at_checked(split_point(leaves.len())) else {
        return;
    };
    if old_size <= left.len() {
        subproof(old_size, left, complete, proof);
        proof.push(root(right));
    } else {
        subproof(old_size - left.len(), right, false, proof);
        proof.push(root(left));
    }
}

/// Verifies that the tree of `new_size` leaves with hash `new_root` extends
/// the tree of `old_size` leaves with hash `old_root`, following RFC 9162
/// section 2.1.4.2.
///
/// Equal sizes need an empty proof and equal roots. Every tree extends the
/// empty tree, with an empty proof.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    if old_size == 0 {
        return proof.is_empty();
    }
    let mut path = proof.iter();
    let first = if old_size.is_power_of_two() {
        old_root
    } else {
        match path.next() {
            Some(first) => first,
            None => return false,
        }
    };
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut old_hash, mut new_hash) = (*first, *first);
    for sibling in path {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            old_hash = node_hash(sibling, &old_hash);
            new_hash = node_hash(sibling, &new_hash);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            new_hash = node_hash(&new_hash, sibling);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    old_hash == *old_root && new_hash == *new_root && snode == 0
}

/// The roots of the perfect subtrees that make up a growing tree (a compact
/// range), so appending a leaf costs O(log n) hashes and the root never needs
/// the leaves again.
///
/// A tree of `n` leaves has one perfect subtree per set bit of `n`, largest
/// first. The store can persist [`MerkleAccumulator::peaks`] and
/// [`MerkleAccumulator::size`] with each write, or rebuild the accumulator
/// from the stored leaf hashes at startup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MerkleAccumulator {
    size: u64,
    peaks: Vec<Hash>,
}

impl MerkleAccumulator {
    /// Creates the accumulator of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores an accumulator from its size and peaks, largest subtree
    /// first. Returns `None` unless there is one peak per set bit of `size`.
    pub fn from_parts(size: u64, peaks: Vec<Hash>) -> Option<Self> {
        let expected = usize::try_from(size.count_ones()).ok()?;
        (peaks.len() == expected).then_some(Self { size, peaks })
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: &Hash) {
        let mut hash = *leaf;
        // Each trailing one bit of the old size is a perfect subtree of the
        // same height as the one being carried, so the two merge.
        let mut carries = self.size.trailing_ones();
        while carries > 0 {
            match self.peaks.pop() {
                Some(left) => hash = node_hash(&left, &hash),
                None => break,
            }
            carries -= 1;
        }
        self.peaks.push(hash);
        self.size += 1;
    }

    /// Returns the number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Returns the subtree roots, largest subtree first.
    pub fn peaks(&self) -> &[Hash] {
        &self.peaks
    }

    /// Returns the Merkle Tree Hash of all leaves appended so far.
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(last) = peaks.next() else {
            return empty_root();
        };
        peaks.fold(*last, |right, left| node_hash(left, &right))
    }
}
