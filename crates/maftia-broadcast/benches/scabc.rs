//! Secure causal atomic broadcast: time per ordered round, through the `maftia-bench` harness.
//!
//! `cargo bench -p maftia-broadcast --bench scabc` (add `-- --quick` for a shorter run). Four
//! in-process nodes with the real BLS threshold key sets, Ed25519 identities and 250-byte
//! plaintexts encrypted with the group's TDH2 key, pending queues kept full, every message
//! encoded and decoded; one iteration is one round completed at node 0 after a warm-up round
//! (see `maftia_bench` for the method; the wall time includes the client-side encryption).
//! Criterion reports the time per round; the harness's own figures (requests/s, bytes and CPU
//! per request, latency) come from `cargo run --release -p maftia-bench --example bench`, and
//! the full matrix is in docs/performance.md.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use maftia_bench::{run, RunSpec, Workload};
use std::time::Duration;

/// Batch sizes measured here (the matrix example covers more; a batch-1000 round costs seconds
/// of TDH2 work, too slow for criterion's ten samples).
const BATCH_SIZES: [usize; 2] = [1, 100];

fn rounds(c: &mut Criterion) {
    let mut group =
        c.benchmark_group("scabc n=4 250-byte requests (TDH2-encrypted), time per round");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    for batch_size in BATCH_SIZES {
        group.bench_with_input(
            BenchmarkId::new("batch size", batch_size),
            &batch_size,
            |b, &batch_size| {
                b.iter_custom(|iterations| {
                    let spec = RunSpec {
                        warmup_rounds: 1,
                        measure_rounds: iterations.max(1),
                        ..RunSpec::new(Workload::Scabc, 4, batch_size)
                    };
                    run(&spec).expect("the bench run completes").wall
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, rounds);
criterion_main!(benches);
