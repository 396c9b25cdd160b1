//! TDH2 costs for n = 4, 16, 64 with threshold k = f + 1 (f = (n - 1) / 3): encryption of a
//! 256-byte message, ciphertext check, decryption share, share check, and combining k shares.
//! A reference measured in the same run (one variable-base Ristretto255 scalar multiplication)
//! lets results from a busy machine be read as ratios.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use curve25519_dalek::{RistrettoPoint, Scalar};
use maftia_crypto::tdh2::{combine, deal, decrypt_share, encrypt, verify_share, DecryptionShare};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

fn tdh2(c: &mut Criterion) {
    let mut group = c.benchmark_group("tdh2");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    let point = RistrettoPoint::mul_base(&Scalar::from(7u64));
    let scalar = Scalar::from_bytes_mod_order([0x42; 32]);
    group.bench_function("reference_ristretto_variable_base_mul", |b| {
        b.iter(|| black_box(point) * black_box(scalar))
    });
    let message = [0x5au8; 256];
    let label = b"client 17 seq 42";
    for n in [4usize, 16, 64] {
        let k = (n - 1) / 3 + 1;
        let mut rng = ChaCha20Rng::seed_from_u64(n as u64);
        let (public, secrets) = deal(n, k, &mut rng).expect("deal");
        let ct = encrypt(&public, &message, label, &mut rng).expect("encrypt");
        let shares: BTreeMap<usize, DecryptionShare> = secrets[..k]
            .iter()
            .map(|s| {
                (
                    s.index,
                    decrypt_share(&public, s, &ct, &mut rng).expect("share"),
                )
            })
            .collect();
        let one_share = shares[&0].clone();

        group.bench_function(BenchmarkId::new("encrypt_256B", n), |b| {
            b.iter(|| encrypt(&public, black_box(&message), label, &mut rng).expect("encrypt"))
        });
        group.bench_function(BenchmarkId::new("verify_ciphertext", n), |b| {
            b.iter(|| assert!(black_box(&ct).verify(&public)))
        });
        group.bench_function(BenchmarkId::new("decrypt_share", n), |b| {
            b.iter(|| decrypt_share(&public, &secrets[0], black_box(&ct), &mut rng).expect("share"))
        });
        group.bench_function(BenchmarkId::new("verify_share", n), |b| {
            b.iter(|| assert!(verify_share(&public, &ct, black_box(&one_share))))
        });
        group.bench_function(BenchmarkId::new(format!("combine_k{k}"), n), |b| {
            b.iter(|| combine(&public, &ct, black_box(&shares)).expect("combine"))
        });
    }
    group.finish();
}

criterion_group!(benches, tdh2);
criterion_main!(benches);
