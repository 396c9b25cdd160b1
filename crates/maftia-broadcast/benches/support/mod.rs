//! The criterion loop the ordering benches share: time per round completed at node 0, measured
//! by the `maftia-bench` harness, for each batch size.
use criterion::{BenchmarkId, Criterion};
use maftia_bench::{run, RunSpec, Workload};
use std::time::Duration;

/// One criterion group `title`: `workload` at n = 4 for each of `batch_sizes`; one iteration is
/// one round after a warm-up round.
pub fn time_per_round(c: &mut Criterion, title: &str, workload: Workload, batch_sizes: &[usize]) {
    let mut group = c.benchmark_group(title);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    for &batch_size in batch_sizes {
        group.bench_with_input(
            BenchmarkId::new("batch size", batch_size),
            &batch_size,
            |b, &batch_size| {
                b.iter_custom(|iterations| {
                    let spec = RunSpec {
                        warmup_rounds: 1,
                        measure_rounds: iterations.max(1),
                        ..RunSpec::new(workload, 4, batch_size)
                    };
                    run(&spec).expect("the bench run completes").wall
                })
            },
        );
    }
    group.finish();
}
