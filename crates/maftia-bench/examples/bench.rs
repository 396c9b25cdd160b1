//! Run the harness from the command line: one configuration, or the benchmark matrix.
//!
//! ```text
//! cargo run --release -p maftia-bench --example bench -- run abc 4 1000 [rounds] [threads] [pending]
//! cargo run --release -p maftia-bench --example bench -- matrix [abc|scabc|all] [quick]
//! cargo run --release -p maftia-bench --example bench -- compare [quick]
//! ```
//! `run` takes `abc`, `scabc`, `htabc` (high-throughput mode) or `htscabc` (SC-ABC over it).
//! `compare` prints the high-throughput mode against CKPS01, threads = 1 and 2 (the table of
//! docs/performance.md's "High-throughput mode" section).
//! `run` prints one report in full; `matrix` prints the markdown tables of
//! docs/performance.md (n = 4, 7, 10, 16 × batch 1, 100, 1000, 10000; configurations whose
//! proposals exceed the message size limit are listed as skipped, with the reason).
use maftia_bench::{run, BenchError, RunReport, RunSpec, Workload};
use std::process::ExitCode;

fn workload(name: &str) -> Option<Workload> {
    match name {
        "abc" => Some(Workload::Abc),
        "scabc" => Some(Workload::Scabc),
        "htabc" => Some(Workload::HtAbc),
        "htscabc" => Some(Workload::HtScabc),
        _ => None,
    }
}

fn print_full(report: &RunReport) {
    let s = &report.spec;
    println!(
        "{} n={} f={} batch={} request={}B threads={} (load average {:?})",
        s.workload.name(),
        s.n,
        s.f,
        s.batch_size,
        s.request_size,
        s.threads,
        report.load_average
    );
    println!(
        "  window: {} rounds, {} requests in {:.3} s: {:.0} requests/s, {:.2} rounds/s, {:.0} requests/round",
        report.rounds,
        report.delivered,
        report.wall.as_secs_f64(),
        report.requests_per_sec,
        report.rounds_per_sec,
        report.delivered as f64 / report.rounds.max(1) as f64
    );
    println!(
        "  latency ms: p50 {:.1} p90 {:.1} p99 {:.1} max {:.1}",
        report.latency.p50_ms, report.latency.p90_ms, report.latency.p99_ms, report.latency.max_ms
    );
    println!(
        "  per node per request: {:.2} messages, {:.0} bytes",
        report.messages_per_request, report.bytes_per_request
    );
    let busy: Vec<String> = report
        .node_busy_seconds_per_request
        .iter()
        .map(|b| format!("{:.1}", b * 1e6))
        .collect();
    println!(
        "  CPU µs per request: node threads {:.1}; node busy (wall) [{}]; projected per-host {:.0} requests/s",
        report.cpu_seconds_per_request * 1e6,
        busy.join(", "),
        report.projected_per_host_requests_per_sec
    );
    let c = &report.crypto;
    for (name, ops) in [("coin", &c.coin), ("cbc", &c.cbc), ("quorum", &c.quorum)] {
        println!(
            "  {name:>6}: sign_share {} / {:.3} s, verify_share {} / {:.3} s, combine {} / {:.3} s, verify {} / {:.3} s",
            ops.sign_share.calls,
            ops.sign_share.seconds,
            ops.verify_share.calls,
            ops.verify_share.seconds,
            ops.combine.calls,
            ops.combine.seconds,
            ops.verify.calls,
            ops.verify.seconds
        );
    }
    println!(
        "  codec: encode {} / {:.3} s, decode {} / {:.3} s; client requests {} / {:.3} s",
        c.encode.calls,
        c.encode.seconds,
        c.decode.calls,
        c.decode.seconds,
        c.client_requests.calls,
        c.client_requests.seconds
    );
    println!(
        "  share of node time: threshold signatures {:.0} %, codec {:.0} %",
        100.0 * report.share_of_node_time(c.threshold_seconds()),
        100.0 * report.share_of_node_time(c.encode.seconds + c.decode.seconds)
    );
}

/// Measured rounds for a configuration: enough for a stable figure, few for big ones.
fn rounds_for(workload: Workload, n: usize, batch: usize) -> u64 {
    let per_round = (n * batch) as u64;
    let budget = match workload {
        Workload::Abc => 40_000,
        // An epoch orders several batches per lane: count a round as two batches per node.
        Workload::HtAbc => 80_000,
        Workload::Scabc | Workload::HtScabc => 4_000,
    };
    let by_requests = (budget / per_round.max(1)).clamp(2, 20);
    match n {
        16 => by_requests.min(4),
        10 => by_requests.min(6),
        _ => by_requests,
    }
}

/// SC-ABC costs every node about 0.3 ms of TDH2 work per request (a decryption share, a
/// ciphertext check, `f` share checks), so a round costs about `n² · batch · 0.3 ms` of CPU on
/// one core; configurations above this many `n² · batch` (about 8 s per round here) are skipped.
const SCABC_MAX_WORK: usize = 16 * 16 * 100;

fn matrix(workloads: &[Workload], quick: bool) {
    let ns = [4usize, 7, 10, 16];
    let batches = [1usize, 100, 1000, 10_000];
    for &w in workloads {
        println!("\n### {} (threads = 1: all nodes on one core)\n", w.name());
        println!("| n | batch | requests/s | rounds/s | req/round | latency p50 / p99 ms | msgs/req/node | bytes/req/node | CPU µs/req, all nodes | threshold sigs / codec, % of node time | busiest node CPU µs/req (est.) | projected per-host req/s |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        let mut configurations: Vec<(usize, usize)> = ns
            .iter()
            .flat_map(|n| batches.iter().map(move |b| (*n, *b)))
            .collect();
        if w == Workload::Abc {
            // The largest batch whose proposals fit the message limit at n = 4.
            configurations.insert(3, (4, 8000));
        }
        for (n, batch) in configurations {
            if w == Workload::Scabc && n * n * batch > SCABC_MAX_WORK && batch < 10_000 {
                println!(
                    "| {n} | {batch} | skipped: TDH2 work ≈ n² · batch · 0.3 ms = {:.0} s per round on one core | | | | | | | | | |",
                    (n * n * batch) as f64 * 0.3e-3
                );
                continue;
            }
            let mut spec = RunSpec::new(w, n, batch);
            spec.measure_rounds = if quick { 2 } else { rounds_for(w, n, batch) };
            spec.warmup_rounds = 1;
            {
                match run(&spec) {
                    Ok(r) => {
                        let c = &r.crypto;
                        let busiest_cpu = if r.projected_per_host_requests_per_sec > 0.0 {
                            1e6 / r.projected_per_host_requests_per_sec
                        } else {
                            0.0
                        };
                        println!(
                            "| {n} | {batch} | {:.0} | {:.2} | {:.0} | {:.0} / {:.0} | {:.3} | {:.0} | {:.1} | {:.0} / {:.0} | {:.1} | {:.0} |",
                            r.requests_per_sec,
                            r.rounds_per_sec,
                            r.delivered as f64 / r.rounds.max(1) as f64,
                            r.latency.p50_ms,
                            r.latency.p99_ms,
                            r.messages_per_request,
                            r.bytes_per_request,
                            r.cpu_seconds_per_request * 1e6,
                            100.0 * r.share_of_node_time(c.threshold_seconds()),
                            100.0 * r.share_of_node_time(c.encode.seconds + c.decode.seconds),
                            busiest_cpu,
                            r.projected_per_host_requests_per_sec
                        );
                    }
                    Err(BenchError::Setup(reason)) => {
                        println!("| {n} | {batch} | skipped: {reason} | | | | | | | | | |");
                    }
                    Err(error) => println!("| {n} | {batch} | FAILED: {error} | | | | | | | | | |"),
                }
            }
        }
    }
}

/// The high-throughput mode against CKPS01 in one run: n = 4, 7, 10, 16 at a few batch sizes,
/// with the nodes on one thread and on two.
fn compare(quick: bool) {
    let configurations: [(usize, &[usize]); 4] = [
        (4, &[1000, 5000, 10_000]),
        (7, &[1000, 5000]),
        (10, &[1000, 5000]),
        (16, &[1000, 5000]),
    ];
    println!("| n | batch | mode | threads | requests/s | epochs or rounds/s | req/round | latency p50 / p99 ms | bytes/req/node | CPU µs/req, all nodes | projected per-host req/s | load avg |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (n, batches) in configurations {
        for &batch in batches {
            for workload in [Workload::Abc, Workload::HtAbc] {
                for threads in [1, 2] {
                    let mut spec = RunSpec::new(workload, n, batch);
                    spec.threads = threads;
                    // About 300 000 requests measured (an HT epoch orders ~4 batches per lane).
                    let per_round =
                        (n * batch * if workload == Workload::HtAbc { 4 } else { 1 }) as u64;
                    spec.measure_rounds = if quick {
                        2
                    } else {
                        (300_000 / per_round.max(1)).clamp(2, 10)
                    };
                    spec.warmup_rounds = 2;
                    let mode = if workload == Workload::HtAbc {
                        "HT"
                    } else {
                        "CKPS01"
                    };
                    match run(&spec) {
                        Ok(r) => println!(
                            "| {n} | {batch} | {mode} | {threads} | {:.0} | {:.2} | {:.0} | {:.0} / {:.0} | {:.0} | {:.1} | {:.0} | {} |",
                            r.requests_per_sec,
                            r.rounds_per_sec,
                            r.delivered as f64 / r.rounds.max(1) as f64,
                            r.latency.p50_ms,
                            r.latency.p99_ms,
                            r.bytes_per_request,
                            r.cpu_seconds_per_request * 1e6,
                            r.projected_per_host_requests_per_sec,
                            r.load_average.map_or("?".to_string(), |l| format!("{l:.1}")),
                        ),
                        Err(BenchError::Setup(reason)) => {
                            println!("| {n} | {batch} | {mode} | {threads} | skipped: {reason} | | | | | | | |");
                            break;
                        }
                        Err(error) => {
                            println!("| {n} | {batch} | {mode} | {threads} | FAILED: {error} | | | | | | | |")
                        }
                    }
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    match arg(0) {
        Some("run") => {
            let (Some(w), Some(n), Some(batch)) = (
                arg(1).and_then(workload),
                arg(2).and_then(|s| s.parse().ok()),
                arg(3).and_then(|s| s.parse().ok()),
            ) else {
                eprintln!(
                    "usage: bench run abc|scabc|htabc|htscabc N BATCH [ROUNDS] [THREADS] [PENDING]"
                );
                return ExitCode::FAILURE;
            };
            let mut spec = RunSpec::new(w, n, batch);
            if let Some(rounds) = arg(4).and_then(|s| s.parse().ok()) {
                spec.measure_rounds = rounds;
            }
            if let Some(threads) = arg(5).and_then(|s| s.parse().ok()) {
                spec.threads = threads;
            }
            if let Some(pending) = arg(6).and_then(|s| s.parse().ok()) {
                spec.pending_target = pending;
            }
            match run(&spec) {
                Ok(report) => print_full(&report),
                Err(error) => {
                    eprintln!("{error}");
                    return ExitCode::FAILURE;
                }
            }
        }
        Some("matrix") => {
            let workloads = match arg(1) {
                Some("abc") => vec![Workload::Abc],
                Some("scabc") => vec![Workload::Scabc],
                _ => vec![Workload::Abc, Workload::Scabc],
            };
            matrix(&workloads, arg(2) == Some("quick"));
        }
        Some("compare") => compare(arg(1) == Some("quick")),
        _ => {
            eprintln!("usage: bench run abc|scabc|htabc|htscabc N BATCH [ROUNDS] [THREADS] [PENDING] | bench matrix [abc|scabc|all] [quick] | bench compare [quick]");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
