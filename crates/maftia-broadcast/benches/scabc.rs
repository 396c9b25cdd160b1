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
mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use maftia_bench::Workload;

/// Batch sizes measured here (the matrix example covers more; a batch-1000 round costs seconds
/// of TDH2 work, too slow for criterion's ten samples).
const BATCH_SIZES: [usize; 2] = [1, 100];

fn rounds(c: &mut Criterion) {
    support::time_per_round(
        c,
        "scabc n=4 250-byte requests (TDH2-encrypted), time per round",
        Workload::Scabc,
        &BATCH_SIZES,
    );
}

criterion_group!(benches, rounds);
criterion_main!(benches);
