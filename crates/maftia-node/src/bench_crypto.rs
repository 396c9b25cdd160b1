//! `maftia bench --layer crypto`: the cost of every cryptographic operation the protocols use,
//! for a group of `n` with the thresholds of its key sets, on this machine.
//!
//! Each operation runs on its own for at least [`MIN_SAMPLES`] calls and about
//! [`TARGET_TIME`], one call at a time on one core; the report gives calls per second and the
//! per-call latency percentiles. Keys are dealt from `--seed`, so runs are reproducible; the
//! times are this machine's. Multiply by the per-round counts of `docs/performance.md`
//! ("theoretical limits") to see what bounds a protocol.
use anyhow::{Context, Result};
use maftia_crypto::bls::{BlsThresholdSigner, KeySetId};
use maftia_crypto::keygen::{self, GroupPublic, NodeSecret};
use maftia_crypto::tdh2;
use maftia_crypto::threshold::ThresholdSigner;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Calls measured per operation at least.
pub const MIN_SAMPLES: usize = 50;
/// Time spent per operation, about (`maftia bench --layer crypto`).
pub const TARGET_TIME: Duration = Duration::from_millis(300);
/// Bytes of the message signed, hashed or encrypted (a typical request).
pub const MESSAGE_SIZE: usize = 250;

/// One measured operation.
#[derive(Clone, Debug, Serialize)]
pub struct CryptoRecord {
    pub operation: String,
    pub n: usize,
    pub f: usize,
    /// Shares involved (the key set's threshold), where it matters.
    pub shares: usize,
    pub samples: usize,
    pub calls_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

fn measure(
    target: Duration,
    operation: &str,
    n: usize,
    f: usize,
    shares: usize,
    mut call: impl FnMut(),
) -> CryptoRecord {
    call(); // warm-up (caches, lazy tables)
    let mut samples: Vec<Duration> = Vec::new();
    let started = Instant::now();
    while samples.len() < MIN_SAMPLES || started.elapsed() < target {
        let t = Instant::now();
        call();
        samples.push(t.elapsed());
        if samples.len() >= 1_000_000 {
            break;
        }
    }
    let total: Duration = samples.iter().sum();
    samples.sort_unstable();
    let at = |p: f64| {
        let i = ((samples.len() - 1) as f64 * p).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    CryptoRecord {
        operation: operation.to_string(),
        n,
        f,
        shares,
        samples: samples.len(),
        calls_per_second: samples.len() as f64 / total.as_secs_f64().max(1e-12),
        p50_us: at(0.5),
        p99_us: at(0.99),
    }
}

/// Measure every operation for a group of `n` tolerating `f`, about `target` each.
pub fn run_group(n: usize, f: usize, seed: u64, target: Duration) -> Result<Vec<CryptoRecord>> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let (group, secrets): (GroupPublic, Vec<NodeSecret>) =
        keygen::deal_group(n, f, &mut rng).context("cannot deal the group's keys")?;
    let message = vec![0x5a_u8; MESSAGE_SIZE];
    let mut records = Vec::new();

    let identity = secrets[0].identity.clone();
    let public = identity.public();
    let signature = identity.sign("maftia bench", &message);
    records.push(measure(target, "ed25519 sign", n, f, 1, || {
        black_box(identity.sign("maftia bench", black_box(&message)));
    }));
    records.push(measure(target, "ed25519 verify", n, f, 1, || {
        black_box(public.verify("maftia bench", black_box(&message), &signature));
    }));
    records.push(measure(target, "blake3 hash (250 B)", n, f, 1, || {
        black_box(maftia_crypto::hash::hash(
            "maftia bench",
            &[black_box(&message)],
        ));
    }));

    for id in [KeySetId::Reply, KeySetId::Cbc, KeySetId::Quorum] {
        let public_set = Arc::new(
            group
                .bls
                .get(&id)
                .cloned()
                .context("the group has every key set")?,
        );
        let signers: Vec<BlsThresholdSigner> = secrets
            .iter()
            .map(|s| {
                let share = s.bls.get(&id).cloned().context("every key set is dealt")?;
                BlsThresholdSigner::new(public_set.clone(), share).context("a valid share")
            })
            .collect::<Result<_>>()?;
        let k = public_set.threshold;
        let shares: BTreeMap<usize, _> = signers
            .iter()
            .take(k)
            .map(|s| (s.our_index(), s.sign_share(&message)))
            .collect();
        let share_list: Vec<(usize, &_)> = shares.iter().map(|(i, s)| (*i, s)).collect();
        let combined = signers[0]
            .combine_unchecked(&share_list)
            .context("combining k shares")?;
        let name = |what: &str| format!("bls {} {what}", id.tag().to_lowercase());
        records.push(measure(target, &name("sign share"), n, f, k, || {
            black_box(signers[0].sign_share(black_box(&message)));
        }));
        let (first_index, first_share) = share_list[0];
        records.push(measure(target, &name("verify share"), n, f, k, || {
            black_box(signers[1].verify_share(first_index, black_box(&message), first_share));
        }));
        records.push(measure(target, &name("combine"), n, f, k, || {
            black_box(signers[0].combine_unchecked(black_box(&share_list)).ok());
        }));
        records.push(measure(target, &name("verify signature"), n, f, k, || {
            black_box(signers[1].verify(black_box(&message), &combined));
        }));
    }

    let tdh2_public = &group.tdh2;
    let mut enc_rng = ChaCha20Rng::seed_from_u64(seed ^ 1);
    let ciphertext = tdh2::encrypt(tdh2_public, &message, b"label", &mut enc_rng)
        .context("encrypting a request")?;
    let decryption: BTreeMap<usize, tdh2::DecryptionShare> = secrets
        .iter()
        .take(tdh2_public.threshold)
        .map(|s| {
            tdh2::decrypt_share(tdh2_public, &s.tdh2, &ciphertext, &mut enc_rng)
                .map(|share| (s.index, share))
        })
        .collect::<Result<_, _>>()
        .context("decryption shares")?;
    let k = tdh2_public.threshold;
    records.push(measure(target, "tdh2 encrypt", n, f, k, || {
        black_box(tdh2::encrypt(tdh2_public, black_box(&message), b"label", &mut enc_rng).ok());
    }));
    records.push(measure(target, "tdh2 decrypt share", n, f, k, || {
        black_box(
            tdh2::decrypt_share(tdh2_public, &secrets[0].tdh2, &ciphertext, &mut enc_rng).ok(),
        );
    }));
    let first = decryption.values().next().context("a decryption share")?;
    records.push(measure(target, "tdh2 verify share", n, f, k, || {
        black_box(tdh2::verify_share(tdh2_public, &ciphertext, first));
    }));
    records.push(measure(target, "tdh2 combine", n, f, k, || {
        black_box(tdh2::combine(tdh2_public, &ciphertext, &decryption).ok());
    }));
    Ok(records)
}

/// Run every `n`, print the table, and write `crypto.csv` into `out` (the records also go to
/// `results.json`).
pub fn run(ns: &[usize], f: Option<usize>, seed: u64, out: &Path) -> Result<Vec<CryptoRecord>> {
    let mut all = Vec::new();
    for &n in ns {
        let f = f.unwrap_or(n.saturating_sub(1) / 3);
        eprintln!("[crypto] n = {n}, f = {f} ...");
        all.extend(run_group(n, f, seed, TARGET_TIME)?);
    }
    println!(
        "{:<28} {:>4} {:>3} {:>6} {:>12} {:>10} {:>10}",
        "operation", "n", "f", "shares", "calls/s", "p50 µs", "p99 µs"
    );
    for r in &all {
        println!(
            "{:<28} {:>4} {:>3} {:>6} {:>12.0} {:>10.1} {:>10.1}",
            r.operation, r.n, r.f, r.shares, r.calls_per_second, r.p50_us, r.p99_us
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut csv = String::from("operation,n,f,shares,samples,calls_per_second,p50_us,p99_us\n");
    for r in &all {
        csv.push_str(&format!(
            "{},{},{},{},{},{:.1},{:.2},{:.2}\n",
            r.operation, r.n, r.f, r.shares, r.samples, r.calls_per_second, r.p50_us, r.p99_us
        ));
    }
    std::fs::write(out.join("crypto.csv"), csv).context("writing crypto.csv")?;
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_measured_and_positive() {
        let records = run_group(4, 1, 7, Duration::from_millis(5)).unwrap();
        assert_eq!(records.len(), 3 + 3 * 4 + 4);
        for r in &records {
            assert!(r.samples >= MIN_SAMPLES, "{r:?}");
            assert!(r.calls_per_second > 0.0 && r.p50_us <= r.p99_us, "{r:?}");
        }
        let names: std::collections::BTreeSet<_> = records.iter().map(|r| &r.operation).collect();
        assert_eq!(names.len(), records.len(), "operation names are distinct");
    }
}
