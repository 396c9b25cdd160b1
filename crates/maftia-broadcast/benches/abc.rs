//! Atomic broadcast, CKPS01 mode: time per ordered round, through the `maftia-bench` harness.
//!
//! `cargo bench -p maftia-broadcast --bench abc` (add `-- --quick` for a shorter run). Four
//! in-process nodes with the real BLS threshold key sets and Ed25519 identities, 250-byte
//! requests, pending queues kept full, every message encoded and decoded; one iteration is one
//! round completed at node 0 after a warm-up round (see `maftia_bench` for the method).
//! Criterion reports the time per round; the harness's own figures (requests/s, bytes and CPU
//! per request, latency) come from `cargo run --release -p maftia-bench --example bench`, and
//! the full matrix is in docs/performance.md.
mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use maftia_bench::Workload;

/// Batch sizes measured here (the matrix example covers more).
const BATCH_SIZES: [usize; 3] = [1, 100, 1000];

fn rounds(c: &mut Criterion) {
    support::time_per_round(
        c,
        "abc n=4 250-byte requests, time per round",
        Workload::Abc,
        &BATCH_SIZES,
    );
}

criterion_group!(benches, rounds);
criterion_main!(benches);
