//! Merkle tree over the `n` AVID fragments (BLAKE3, domain-separated leaves and inner nodes).
//!
//! The tree has `2^depth(n)` leaves; positions `n..` hold a fixed padding digest computed under
//! its own context, so no padding leaf equals the hash of a real fragment. A leaf commits to its
//! index and its bytes (length-prefixed by [`maftia_crypto::hash::hash`]), an inner node to its
//! two children; the three contexts differ, so a leaf can never be passed off as an inner node
//! (the second-preimage attack on naive Merkle trees). A proof is the list of sibling digests
//! from the leaf up, and its length must be exactly `depth(n)`.
//!
//! Cost: building the tree hashes `2^depth(n)` leaves (the fragments themselves, ≈ |m|·n/k
//! bytes) and `2^depth(n) − 1` inner nodes; checking a proof hashes one fragment and
//! `depth(n) = ⌈log2 n⌉` inner nodes.
use maftia_crypto::hash::{hash, Digest};

const LEAF_CONTEXT: &str = "maftia 2026-11 rbc avid merkle leaf";
const INNER_CONTEXT: &str = "maftia 2026-11 rbc avid merkle inner node";
const PADDING_CONTEXT: &str = "maftia 2026-11 rbc avid merkle padding leaf";

/// Number of levels above the leaves for a tree over `n` leaves: `⌈log2 n⌉` (0 for `n ≤ 1`).
pub fn depth(n: usize) -> usize {
    n.max(1).next_power_of_two().trailing_zeros() as usize
}

/// The digest of fragment `index` with bytes `data`.
pub fn leaf_hash(index: usize, data: &[u8]) -> Digest {
    hash(LEAF_CONTEXT, &[&(index as u64).to_le_bytes(), data])
}

fn inner_hash(left: &Digest, right: &Digest) -> Digest {
    hash(INNER_CONTEXT, &[left, right])
}

fn padding_leaf() -> Digest {
    hash(PADDING_CONTEXT, &[])
}

/// A complete Merkle tree: `levels[0]` are the (padded) leaves, the last level is the root.
#[derive(Clone, Debug)]
pub struct MerkleTree {
    levels: Vec<Vec<Digest>>,
    leaf_count: usize,
}

impl MerkleTree {
    /// Build the tree over `fragments` (fragment `i` is leaf `i`).
    pub fn new<T: AsRef<[u8]>>(fragments: &[T]) -> Self {
        let leaf_count = fragments.len();
        let width = leaf_count.max(1).next_power_of_two();
        let mut leaves: Vec<Digest> = fragments
            .iter()
            .enumerate()
            .map(|(i, f)| leaf_hash(i, f.as_ref()))
            .collect();
        leaves.resize(width, padding_leaf());
        let mut levels = vec![leaves];
        while let Some(level) = levels.last().filter(|level| level.len() > 1) {
            let next = level
                .chunks_exact(2)
                .map(|pair| inner_hash(&pair[0], &pair[1]))
                .collect();
            levels.push(next);
        }
        MerkleTree { levels, leaf_count }
    }

    /// The root digest: what the proposer commits to.
    pub fn root(&self) -> Digest {
        // The loop in `new` stops at a level of exactly one digest and the leaf level is never
        // empty (width >= 1), so the last level has one element; the fallback is unreachable.
        self.levels
            .last()
            .and_then(|top| top.first())
            .copied()
            .unwrap_or_else(padding_leaf)
    }

    /// The sibling path of leaf `index`, bottom-up; `None` if `index` is not a real leaf.
    pub fn proof(&self, index: usize) -> Option<Vec<Digest>> {
        if index >= self.leaf_count {
            return None;
        }
        let mut position = index;
        let mut path = Vec::with_capacity(self.levels.len().saturating_sub(1));
        for level in &self.levels[..self.levels.len().saturating_sub(1)] {
            path.push(*level.get(position ^ 1)?);
            position >>= 1;
        }
        Some(path)
    }
}

/// Whether `proof` shows that fragment `index` with bytes `data` is leaf `index` of a tree over
/// `n` leaves with root `root`. Rejects out-of-range indices and proofs of the wrong length.
pub fn verify(root: &Digest, n: usize, index: usize, data: &[u8], proof: &[Digest]) -> bool {
    verify_leaf(root, n, index, &leaf_hash(index, data), proof)
}

/// [`verify`] for a leaf digest already computed with [`leaf_hash`].
pub fn verify_leaf(root: &Digest, n: usize, index: usize, leaf: &Digest, proof: &[Digest]) -> bool {
    if index >= n || proof.len() != depth(n) {
        return false;
    }
    let mut position = index;
    let mut node = *leaf;
    for sibling in proof {
        node = if position & 1 == 0 {
            inner_hash(&node, sibling)
        } else {
            inner_hash(sibling, &node)
        };
        position >>= 1;
    }
    node == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragments(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i as u8; 6]).collect()
    }

    #[test]
    fn depth_is_ceil_log2() {
        let expected = [
            (1, 0),
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 3),
            (7, 3),
            (8, 3),
            (9, 4),
            (10, 4),
        ];
        for (n, d) in expected {
            assert_eq!(depth(n), d, "n = {n}");
        }
        assert_eq!(depth(1024), 10);
    }

    #[test]
    fn every_proof_verifies_and_has_the_tree_depth() {
        for n in 1..=20 {
            let frags = fragments(n);
            let tree = MerkleTree::new(&frags);
            for (i, frag) in frags.iter().enumerate() {
                let proof = tree.proof(i).unwrap();
                assert_eq!(proof.len(), depth(n));
                assert!(verify(&tree.root(), n, i, frag, &proof), "n = {n}, i = {i}");
            }
            assert!(tree.proof(n).is_none());
        }
    }

    #[test]
    fn tampering_is_detected() {
        let n = 7;
        let frags = fragments(n);
        let tree = MerkleTree::new(&frags);
        let root = tree.root();
        let proof = tree.proof(3).unwrap();
        // Wrong data, wrong index, wrong sibling, wrong root, wrong length, out-of-range index.
        assert!(!verify(&root, n, 3, b"other!", &proof));
        assert!(!verify(&root, n, 2, &frags[3], &proof));
        let mut bad = proof.clone();
        bad[1][0] ^= 1;
        assert!(!verify(&root, n, 3, &frags[3], &bad));
        let mut other_root = root;
        other_root[31] ^= 0x80;
        assert!(!verify(&other_root, n, 3, &frags[3], &proof));
        assert!(!verify(&root, n, 3, &frags[3], &proof[..2]));
        let mut long = proof.clone();
        long.push([0; 32]);
        assert!(!verify(&root, n, 3, &frags[3], &long));
        // Index 7 would be a padding position of the 8-leaf tree: never a valid fragment.
        assert!(!verify(&root, n, 7, &[], &tree.proof(6).unwrap()));
    }

    #[test]
    fn an_inner_node_is_not_a_leaf() {
        // A 4-leaf tree's level-1 node must not verify as a leaf of a 2-leaf tree with the same
        // root: leaves and inner nodes are hashed under different contexts.
        let frags = fragments(4);
        let tree = MerkleTree::new(&frags);
        let left = tree.levels[1][0];
        let right = tree.levels[1][1];
        assert!(!verify(&tree.root(), 2, 0, &left, &[right]));
    }

    #[test]
    fn single_leaf_tree_root_is_the_leaf() {
        let tree = MerkleTree::new(&[b"only".to_vec()]);
        assert_eq!(tree.root(), leaf_hash(0, b"only"));
        assert!(verify(&tree.root(), 1, 0, b"only", &[]));
    }
}
