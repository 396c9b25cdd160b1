//! Smoke tests of the harness: tiny real-crypto runs (these are the CI smoke test).
use super::*;

fn tiny(workload: Workload) -> RunSpec {
    RunSpec {
        warmup_rounds: 1,
        measure_rounds: 3,
        ..RunSpec::new(workload, 4, 8)
    }
}

fn assert_sane(report: &RunReport) {
    let spec = &report.spec;
    assert!(report.rounds >= spec.measure_rounds, "{report:?}");
    // CKPS01: a decided vector holds n − f to n batches, all full in the steady state. High
    // throughput: an epoch orders at least one new batch and at most `lane_window` per lane.
    let per_round = report.delivered as f64 / report.rounds as f64;
    let (low, high) = if spec.workload.high_throughput() {
        let window = HtParams::default().lane_window as usize;
        (
            spec.batch_size as f64,
            (spec.n * spec.batch_size * window) as f64,
        )
    } else {
        (
            ((spec.n - spec.f) * spec.batch_size) as f64,
            (spec.n * spec.batch_size) as f64,
        )
    };
    assert!(
        per_round >= low * 0.5 && per_round <= high * 1.5,
        "{per_round} requests per round: {report:?}"
    );
    assert_eq!(report.faults, 0);
    assert!(report.agreement_checked_outputs > 0);
    assert!(report.requests_per_sec > 0.0 && report.rounds_per_sec > 0.0);
    assert!(report.wall > Duration::ZERO);
    assert_eq!(report.latency.samples, report.delivered);
    assert!(report.latency.p50_ms > 0.0);
    assert!(report.latency.p50_ms <= report.latency.p99_ms);
    assert!(report.latency.p99_ms <= report.latency.max_ms);
    assert!(report.messages_per_request > 0.0);
    // Every delivered request crossed the network at least from its node to the others.
    assert!(
        report.bytes_per_request >= spec.request_size as f64 * (spec.n - 1) as f64 / spec.n as f64
    );
    assert!(report.cpu_seconds_per_request > 0.0);
    assert_eq!(report.node_busy_seconds_per_request.len(), spec.n);
    assert!(report
        .node_busy_seconds_per_request
        .iter()
        .all(|b| *b > 0.0));
    assert!(report.projected_per_host_requests_per_sec > 0.0);
    let crypto = &report.crypto;
    // Every round: CBC echo shares and certificates, a coin, ABA quorum signatures.
    assert!(crypto.cbc.sign_share.calls > 0 && crypto.cbc.verify.calls > 0);
    assert!(crypto.coin.sign_share.calls > 0 && crypto.coin.combine.calls > 0);
    assert!(crypto.quorum.sign_share.calls > 0);
    // An honest run never falls back to checking shares one by one.
    assert_eq!(
        crypto.cbc.verify_share.calls + crypto.coin.verify_share.calls,
        0
    );
    assert!(crypto.encode.calls > 0 && crypto.decode.calls >= crypto.encode.calls);
    assert!(crypto.threshold_seconds() > 0.0);
    assert_eq!(report.delivery_digest.len(), 64);
}

#[test]
fn abc_tiny_run_is_sane_and_deterministic() {
    let spec = tiny(Workload::Abc);
    let first = run(&spec).unwrap();
    assert_sane(&first);
    let again = run(&spec).unwrap();
    assert_eq!(first.delivery_digest, again.delivery_digest);
    assert_eq!(first.delivered, again.delivered);
    assert_eq!(first.crypto.cbc.verify.calls, again.crypto.cbc.verify.calls);
    // The digest follows the delivered sequence: smaller batches deliver other requests.
    let smaller = run(&RunSpec {
        batch_size: 6,
        ..spec
    })
    .unwrap();
    assert_sane(&smaller);
    assert_ne!(first.delivery_digest, smaller.delivery_digest);
}

#[test]
fn abc_runs_on_two_threads() {
    let report = run(&RunSpec {
        threads: 2,
        ..tiny(Workload::Abc)
    })
    .unwrap();
    assert_sane(&report);
    assert_eq!(report.spec.threads, 2);
}

#[test]
fn htabc_tiny_run_is_sane_and_deterministic() {
    let spec = tiny(Workload::HtAbc);
    let first = run(&spec).unwrap();
    assert_sane(&first);
    let again = run(&spec).unwrap();
    assert_eq!(first.delivery_digest, again.delivery_digest);
    assert_eq!(first.delivered, again.delivered);
    // Lanes carry the requests once to every node, outside agreement: fewer bytes per request
    // than CKPS01, which sends each proposal to every node two or three times.
    let ckps01 = run(&tiny(Workload::Abc)).unwrap();
    assert!(
        first.bytes_per_request < ckps01.bytes_per_request,
        "{} vs {}",
        first.bytes_per_request,
        ckps01.bytes_per_request
    );
}

#[test]
fn ht_scabc_tiny_run_is_sane() {
    let report = run(&tiny(Workload::HtScabc)).unwrap();
    assert_sane(&report);
    assert!(report.crypto.client_requests.calls > 0);
}

#[test]
fn scabc_tiny_run_is_sane() {
    let report = run(&tiny(Workload::Scabc)).unwrap();
    assert_sane(&report);
    // Client encryption is measured apart from node CPU.
    assert!(report.crypto.client_requests.calls > 0);
}

#[test]
fn invalid_specs_are_refused() {
    let bad = |spec: RunSpec| matches!(run(&spec), Err(BenchError::InvalidSpec(_)));
    let good = tiny(Workload::Abc);
    assert!(bad(RunSpec {
        f: 1,
        n: 3,
        ..good.clone()
    }));
    assert!(bad(RunSpec {
        batch_size: 0,
        ..good.clone()
    }));
    assert!(bad(RunSpec {
        request_size: 4,
        ..good.clone()
    }));
    assert!(bad(RunSpec {
        measure_rounds: 0,
        ..good.clone()
    }));
    assert!(bad(RunSpec { threads: 0, ..good }));
}

#[test]
fn proposals_over_the_message_limit_are_a_setup_error() {
    // n = 4 with 10 000 requests of 250 bytes: a proposal could reach ~10 MiB, above ABC's
    // limit of half a message (8 MiB).
    let spec = RunSpec::new(Workload::Abc, 4, 10_000);
    assert!(matches!(run(&spec), Err(BenchError::Setup(_))));
}
