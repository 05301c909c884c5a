//! Merkle tree hashes and proofs against the RFC 6962 test vectors used by
//! the certificate-transparency implementations (as published in
//! transparency-dev/merkle v0.0.2, `testonly/constants.go`,
//! `testonly/reference_test.go` and `compact/range_test.go`), and
//! exhaustively against a direct recursive implementation of the RFC.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ward_audit::Hash;
use ward_audit::chain::{from_hex, leaf_hash, to_hex};
use ward_audit::merkle::{
    MerkleAccumulator, consistency_proof, empty_root, inclusion_proof, node_hash, root,
    verify_consistency, verify_inclusion,
};

fn hex(text: &str) -> Hash {
    from_hex(text).unwrap()
}

fn vector_leaves() -> Vec<Hash> {
    let inputs: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    inputs.iter().map(|input| leaf_hash(input)).collect()
}

const ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// MTH written straight from RFC 6962 section 2.1, as an independent check.
fn reference_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = 1 << (usize::BITS - 1 - (n - 1).leading_zeros());
            node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
        }
    }
}

fn numbered_leaves(count: usize) -> Vec<Hash> {
    (0..count)
        .map(|i| leaf_hash(format!("leaf {i}").as_bytes()))
        .collect()
}

#[test]
fn leaf_and_node_hash_vectors() {
    assert_eq!(
        to_hex(&leaf_hash(b"L123456")),
        "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    );
    assert_eq!(to_hex(&leaf_hash(b"")), ROOTS[1]);
    assert_eq!(to_hex(&empty_root()), ROOTS[0]);

    let leaves = vector_leaves();
    let mut input = vec![0x01];
    input.extend_from_slice(&leaves[0]);
    input.extend_from_slice(&leaves[1]);
    let direct = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input);
    assert_eq!(
        node_hash(&leaves[0], &leaves[1]).as_slice(),
        direct.as_ref()
    );
    assert_eq!(to_hex(&node_hash(&leaves[0], &leaves[1])), ROOTS[2]);
}

#[test]
fn roots_match_vectors() {
    let leaves = vector_leaves();
    for (size, expected) in ROOTS.iter().enumerate() {
        assert_eq!(to_hex(&root(&leaves[..size])), *expected, "size {size}");
        assert_eq!(to_hex(&reference_root(&leaves[..size])), *expected);
    }
}

#[test]
fn inclusion_proofs_match_vectors() {
    let leaves = vector_leaves();
    let cases: [(u64, usize, &[&str]); 7] = [
        (0, 1, &[]),
        (
            0,
            2,
            &["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"],
        ),
        (
            1,
            2,
            &["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];
    for (index, size, expected) in cases {
        let proof = inclusion_proof(&leaves[..size], index).unwrap();
        let expected: Vec<Hash> = expected.iter().map(|text| hex(text)).collect();
        assert_eq!(proof, expected, "index {index} size {size}");
        let tree_root = hex(ROOTS[size]);
        assert!(verify_inclusion(
            &leaves[index as usize],
            index,
            size as u64,
            &proof,
            &tree_root
        ));
    }
}

#[test]
fn consistency_proofs_match_vectors() {
    let leaves = vector_leaves();
    let cases: [(u64, usize, &[&str]); 4] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    for (old_size, new_size, expected) in cases {
        let proof = consistency_proof(&leaves[..new_size], old_size).unwrap();
        let expected: Vec<Hash> = expected.iter().map(|text| hex(text)).collect();
        assert_eq!(proof, expected, "{old_size} -> {new_size}");
        assert!(verify_consistency(
            old_size,
            new_size as u64,
            &hex(ROOTS[old_size as usize]),
            &hex(ROOTS[new_size]),
            &proof
        ));
    }
}

#[test]
fn accumulator_matches_compact_range_golden_roots() {
    let golden = [
        (10, "VjWMPSYNtCuCNlF/RLnQy6HcwSk6CIipfxm+hettA+4="),
        (15, "j4SulYmocFuxdeyp12xXCIgK6PekBcxzAIj4zbQzNEI="),
        (16, "c+4Uc6BCMOZf/v3NZK1kqTUJe+bBoFtOhP+P3SayKRE="),
        (100, "dUh9hYH88p0CMoHkdr1wC2szbhcLAXOejWpINIooKUY="),
        (255, "SmdsuKUqiod3RX2jyF2M6JnbdE4QuTwwipfAowI4/i0="),
        (256, "qFI0t/tZ1MdOYgyPpPzHFiZVw86koScXy9q3FU5casA="),
        (1000, "RXrgb8xHd55Y48FbfotJwCbV82Kx22LZfEbmBGAvwlQ="),
        (4095, "cWRFdQhPcjn9WyBXE/r1f04ejxIm5lvg40DEpRBVS0w="),
        (4096, "6uU/phfHg1n/GksYT6TO9aN8EauMCCJRl3dIK0HDs2M="),
        (10000, "VZcav65F9haHVRk3wre2axFoBXRNeUh/1d9d5FQfxIg="),
    ];
    let mut accumulator = MerkleAccumulator::new();
    let mut golden = golden.iter().peekable();
    for i in 0u32..10000 {
        // Leaf i is the two bytes of i, little-endian.
        let data = [(i & 0xff) as u8, ((i >> 8) & 0xff) as u8];
        accumulator.push(&leaf_hash(&data));
        if let Some((size, expected)) = golden.next_if(|(size, _)| *size == accumulator.size()) {
            assert_eq!(
                STANDARD.encode(accumulator.root()),
                *expected,
                "size {size}"
            );
        }
    }
    assert!(golden.next().is_none());
}

#[test]
fn accumulator_matches_reference_every_size() {
    let leaves = numbered_leaves(300);
    let mut accumulator = MerkleAccumulator::new();
    assert_eq!(accumulator.root(), empty_root());
    for (count, leaf) in leaves.iter().enumerate() {
        accumulator.push(leaf);
        let size = count + 1;
        assert_eq!(accumulator.size(), size as u64);
        assert_eq!(
            accumulator.root(),
            reference_root(&leaves[..size]),
            "size {size}"
        );
        assert_eq!(accumulator.peaks().len(), size.count_ones() as usize);
    }
}

#[test]
fn accumulator_restores_from_parts() {
    let leaves = numbered_leaves(37);
    let mut accumulator = MerkleAccumulator::new();
    for leaf in &leaves[..21] {
        accumulator.push(leaf);
    }
    let mut restored =
        MerkleAccumulator::from_parts(accumulator.size(), accumulator.peaks().to_vec()).unwrap();
    for leaf in &leaves[21..] {
        restored.push(leaf);
    }
    assert_eq!(restored.root(), reference_root(&leaves));
    assert!(MerkleAccumulator::from_parts(21, vec![[0; 32]; 2]).is_none());
    assert!(MerkleAccumulator::from_parts(0, vec![]).is_some());
}

#[test]
fn inclusion_exhaustive_up_to_64() {
    let leaves = numbered_leaves(64);
    for size in 1..=64usize {
        let tree = &leaves[..size];
        let tree_root = reference_root(tree);
        for index in 0..size {
            let i = index as u64;
            let n = size as u64;
            let proof = inclusion_proof(tree, i).unwrap();
            assert!(
                verify_inclusion(&tree[index], i, n, &proof, &tree_root),
                "{index}/{size}"
            );

            let other = leaf_hash(b"other");
            assert!(!verify_inclusion(&other, i, n, &proof, &tree_root));
            assert!(!verify_inclusion(
                &tree[index],
                i + 1,
                n,
                &proof,
                &tree_root
            ));
            if i > 0 {
                assert!(!verify_inclusion(
                    &tree[index],
                    i - 1,
                    n,
                    &proof,
                    &tree_root
                ));
            }
            assert!(!verify_inclusion(
                &tree[index],
                i,
                n * 2,
                &proof,
                &tree_root
            ));
            if i < n / 2 {
                assert!(!verify_inclusion(
                    &tree[index],
                    i,
                    n / 2,
                    &proof,
                    &tree_root
                ));
            }
            let mut longer = proof.clone();
            longer.push(tree_root);
            assert!(!verify_inclusion(&tree[index], i, n, &longer, &tree_root));
            if !proof.is_empty() {
                let shorter = &proof[..proof.len() - 1];
                assert!(!verify_inclusion(&tree[index], i, n, shorter, &tree_root));
                for position in 0..proof.len() {
                    let mut flipped = proof.clone();
                    flipped[position][0] ^= 8;
                    assert!(!verify_inclusion(&tree[index], i, n, &flipped, &tree_root));
                }
            }
        }
        assert!(inclusion_proof(tree, size as u64).is_none());
    }
}

#[test]
fn consistency_exhaustive_up_to_64() {
    let leaves = numbered_leaves(64);
    for new_size in 1..=64usize {
        let new_tree = &leaves[..new_size];
        let new_root = reference_root(new_tree);
        for old_size in 0..=new_size {
            let old_root = reference_root(&leaves[..old_size]);
            let (m, n) = (old_size as u64, new_size as u64);
            let proof = consistency_proof(new_tree, m).unwrap();
            assert!(
                verify_consistency(m, n, &old_root, &new_root, &proof),
                "{m} -> {n}"
            );
            if old_size == 0 {
                continue;
            }

            let wrong = leaf_hash(b"wrong");
            assert!(!verify_consistency(m, n, &wrong, &new_root, &proof));
            assert!(!verify_consistency(m, n, &old_root, &wrong, &proof));
            if m < n {
                assert!(!verify_consistency(n, m, &new_root, &old_root, &proof));
            }
            let mut longer = proof.clone();
            longer.push(new_root);
            assert!(!verify_consistency(m, n, &old_root, &new_root, &longer));
            if !proof.is_empty() {
                let shorter = &proof[..proof.len() - 1];
                assert!(!verify_consistency(m, n, &old_root, &new_root, shorter));
                for position in 0..proof.len() {
                    let mut flipped = proof.clone();
                    flipped[position][0] ^= 8;
                    assert!(!verify_consistency(m, n, &old_root, &new_root, &flipped));
                }
            }
            if old_size < new_size {
                // A tree that differs in one old leaf is not an extension.
                let mut forked = new_tree.to_vec();
                forked[old_size - 1] = wrong;
                let forked_root = reference_root(&forked);
                let forked_proof = consistency_proof(&forked, m).unwrap();
                assert!(!verify_consistency(
                    m,
                    n,
                    &old_root,
                    &forked_root,
                    &forked_proof
                ));
            }
        }
        assert!(consistency_proof(new_tree, new_size as u64 + 1).is_none());
    }
}

#[test]
fn verify_rejects_impossible_sizes() {
    let leaf = leaf_hash(b"x");
    assert!(!verify_inclusion(&leaf, 0, 0, &[], &leaf));
    assert!(!verify_inclusion(&leaf, 2, 1, &[], &leaf));
    assert!(verify_inclusion(&leaf, 0, 1, &[], &leaf));
    assert!(!verify_consistency(3, 2, &leaf, &leaf, &[]));
    assert!(!verify_consistency(2, 2, &leaf, &empty_root(), &[]));
    assert!(!verify_consistency(0, 5, &empty_root(), &leaf, &[leaf]));
    assert!(!verify_consistency(3, 5, &leaf, &leaf, &[]));
}
