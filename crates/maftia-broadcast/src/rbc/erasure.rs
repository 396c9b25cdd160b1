//! Systematic Reed–Solomon coding of an AVID payload into `n` fragments, any `k` of which
//! reconstruct it (`reed-solomon-simd`, O(n log n) per shard byte).
//!
//! Layout: the payload is framed as `le64(len) ‖ payload ‖ zero padding` and cut into `k`
//! data shards of `shard_len` bytes (even and non-zero, as the coder requires); fragments
//! `0..k` are the data shards, fragments `k..n` the `n − k` recovery shards. With `n == k`
//! (only when `f == 0`) there are no recovery shards and the data shards are the fragments.
//!
//! Decoding is deterministic: [`reconstruct`] uses the `k` lowest-indexed fragments it is
//! given, and [`unframe`] accepts only the canonical framing (declared length within bounds,
//! zero padding), so a set of fragments that re-encodes to the committed root yields the same
//! payload at every node.
use reed_solomon_simd::Error as CodingError;
use std::collections::BTreeMap;

/// Bytes of the length prefix in front of the payload.
pub const LENGTH_PREFIX: usize = 8;

/// Shard length for a payload of `payload_len` bytes split into `k` data shards: the framed
/// length divided by `k`, rounded up to an even number of bytes (at least 2).
pub fn shard_len(payload_len: usize, k: usize) -> usize {
    let framed = payload_len.saturating_add(LENGTH_PREFIX);
    let per_shard = framed.div_ceil(k.max(1)).max(1);
    per_shard.saturating_add(per_shard % 2)
}

/// Frame `payload` and cut it into `k` data shards of equal, even length.
fn data_shards(payload: &[u8], k: usize) -> Vec<Vec<u8>> {
    let len = shard_len(payload.len(), k);
    let mut framed = Vec::with_capacity(len * k);
    framed.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    framed.extend_from_slice(payload);
    framed.resize(len * k, 0);
    framed.chunks_exact(len).map(<[u8]>::to_vec).collect()
}

/// Encode `payload` into `n` fragments, any `k` of which reconstruct it.
pub fn encode(payload: &[u8], n: usize, k: usize) -> Result<Vec<Vec<u8>>, CodingError> {
    encode_data_shards(data_shards(payload, k), n)
}

/// Extend `k` equal-length data shards with `n − k` recovery shards.
pub fn encode_data_shards(mut shards: Vec<Vec<u8>>, n: usize) -> Result<Vec<Vec<u8>>, CodingError> {
    let k = shards.len();
    if n > k {
        let recovery = reed_solomon_simd::encode(k, n - k, &shards)?;
        shards.extend(recovery);
    }
    Ok(shards)
}

/// Recover the `k` data shards from at least `k` fragments `(index, bytes)` of equal length.
/// Uses the `k` lowest indices; indices must be `< n` and distinct (the map guarantees that).
pub fn reconstruct(
    fragments: &BTreeMap<usize, &[u8]>,
    n: usize,
    k: usize,
) -> Result<Vec<Vec<u8>>, CodingError> {
    let chosen: Vec<(usize, &[u8])> = fragments
        .iter()
        .filter(|(i, _)| **i < n)
        .take(k)
        .map(|(i, d)| (*i, *d))
        .collect();
    if chosen.len() < k {
        let original_received_count = chosen.iter().filter(|(i, _)| *i < k).count();
        return Err(CodingError::NotEnoughShards {
            original_count: k,
            original_received_count,
            recovery_received_count: chosen.len() - original_received_count,
        });
    }
    let originals = chosen.iter().filter(|(i, _)| *i < k).map(|(i, d)| (*i, *d));
    let recovery = chosen
        .iter()
        .filter(|(i, _)| *i >= k)
        .map(|(i, d)| (*i - k, *d));
    // With n == k there are no recovery shards and all k originals were chosen: `decode` is
    // only needed (and only called) when some original is missing.
    let restored = if chosen.iter().all(|(i, _)| *i < k) {
        BTreeMap::new()
    } else {
        reed_solomon_simd::decode(k, n - k, originals, recovery)?
    };
    let mut shards = Vec::with_capacity(k);
    for index in 0..k {
        let shard = match fragments.get(&index) {
            Some(data) => data.to_vec(),
            None => restored
                .get(&index)
                .cloned()
                .ok_or(CodingError::NotEnoughShards {
                    original_count: k,
                    original_received_count: 0,
                    recovery_received_count: 0,
                })?,
        };
        shards.push(shard);
    }
    Ok(shards)
}

/// Extract the payload from reconstructed data shards, if they carry the canonical framing:
/// a declared length that fits (and is at most `max_payload`) followed by zero padding.
pub fn unframe(shards: &[Vec<u8>], max_payload: usize) -> Option<Vec<u8>> {
    let framed: Vec<u8> = shards.concat();
    let (prefix, body) = framed.split_at_checked(LENGTH_PREFIX)?;
    let declared = usize::try_from(u64::from_le_bytes(prefix.try_into().ok()?)).ok()?;
    if declared > max_payload || declared > body.len() {
        return None;
    }
    let (payload, padding) = body.split_at(declared);
    if padding.iter().any(|b| *b != 0) {
        return None;
    }
    Some(payload.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn shard_len_is_even_and_fits() {
        for k in 1..12 {
            for len in [0, 1, 2, 7, 8, 9, 100, 1023, 1024, 5000] {
                let s = shard_len(len, k);
                assert!(s >= 2 && s % 2 == 0);
                assert!(s * k >= len + LENGTH_PREFIX);
                assert!(
                    s * k < len + LENGTH_PREFIX + 2 * k,
                    "no more than 2k bytes of padding"
                );
            }
        }
    }

    #[test]
    fn any_k_fragments_reconstruct() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (n, f) in [(1, 0), (2, 0), (3, 0), (4, 1), (5, 1), (7, 2), (10, 3)] {
            let k = n - 2 * f;
            for len in [0, 1, 33, 500] {
                let payload: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                let frags = encode(&payload, n, k).unwrap();
                assert_eq!(frags.len(), n);
                assert!(frags.iter().all(|fr| fr.len() == shard_len(len, k)));
                for _ in 0..10 {
                    // A random subset of exactly k fragments.
                    let mut indices: Vec<usize> = (0..n).collect();
                    for i in (1..n).rev() {
                        indices.swap(i, rng.gen_range(0..=i));
                    }
                    let subset: BTreeMap<usize, &[u8]> = indices[..k]
                        .iter()
                        .map(|i| (*i, frags[*i].as_slice()))
                        .collect();
                    let shards = reconstruct(&subset, n, k).unwrap();
                    assert_eq!(
                        unframe(&shards, usize::MAX).unwrap(),
                        payload,
                        "n={n} len={len}"
                    );
                    assert_eq!(encode_data_shards(shards, n).unwrap(), frags);
                }
            }
        }
    }

    #[test]
    fn too_few_fragments_is_an_error() {
        let frags = encode(b"hello world", 7, 3).unwrap();
        let subset: BTreeMap<usize, &[u8]> = [(1, frags[1].as_slice()), (5, frags[5].as_slice())]
            .into_iter()
            .collect();
        assert!(matches!(
            reconstruct(&subset, 7, 3),
            Err(CodingError::NotEnoughShards { .. })
        ));
    }

    #[test]
    fn unframe_rejects_non_canonical_framing() {
        let shards = data_shards(b"abc", 2);
        assert_eq!(unframe(&shards, 10).unwrap(), b"abc");
        assert!(unframe(&shards, 2).is_none(), "above max_payload");
        let mut long = shards.clone();
        long[0][0] = 200; // declares 200 bytes in a 12-byte frame
        assert!(unframe(&long, usize::MAX).is_none());
        let mut dirty = shards.clone();
        let last = dirty.len() - 1;
        let end = dirty[last].len() - 1;
        dirty[last][end] = 1; // non-zero padding
        assert!(unframe(&dirty, 10).is_none());
        assert!(
            unframe(&[vec![0; 4]], 10).is_none(),
            "shorter than the length prefix"
        );
    }
}
