//! Smoke tests of the hbbft adapter and of `compare` (tiny runs with real threshold crypto).
use maftia_compare::{
    compare, hbbft_nodes, run_hbbft, BenchError, CompareSpec, Encryption, HbbftDelivery,
    HbbftMessage, HbbftNode, RunSpec, Workload,
};
use maftia_core::{codec, NodeId, Protocol, ProtocolStep};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::BTreeSet;

fn tiny(n: usize, batch_size: usize) -> RunSpec {
    RunSpec {
        warmup_rounds: 1,
        measure_rounds: 2,
        ..RunSpec::new(Workload::Abc, n, batch_size)
    }
}

fn request(id: u64) -> Vec<u8> {
    let mut bytes = vec![0xab; 32];
    bytes[..8].copy_from_slice(&id.to_le_bytes());
    bytes
}

fn id_of(request: &[u8]) -> u64 {
    u64::from_le_bytes(request[..8].try_into().unwrap())
}

/// Cranks hbbft nodes by hand, independently of the harness: every message crosses the codec,
/// and the next message delivered is picked at random (seeded), so deliveries are reordered
/// across senders and recipients.
struct Net {
    nodes: Vec<HbbftNode>,
    rngs: Vec<ChaCha20Rng>,
    in_flight: Vec<(NodeId, NodeId, Vec<u8>)>,
    outputs: Vec<Vec<HbbftDelivery>>,
    scheduler: ChaCha20Rng,
}

impl Net {
    fn new(spec: &RunSpec, encryption: Encryption, seed: u64) -> Self {
        let nodes = hbbft_nodes(spec, encryption).unwrap();
        let n = nodes.len();
        Net {
            nodes,
            rngs: (0..n)
                .map(|i| ChaCha20Rng::seed_from_u64(seed * 100 + i as u64))
                .collect(),
            in_flight: Vec::new(),
            outputs: vec![Vec::new(); n],
            scheduler: ChaCha20Rng::seed_from_u64(seed),
        }
    }

    fn absorb(&mut self, from: usize, step: ProtocolStep<HbbftNode>) {
        assert!(step.faults.is_empty(), "node {from}: {:?}", step.faults);
        let n = self.nodes.len();
        let sender = NodeId(from as u16);
        for targeted in step.messages {
            let frame = codec::encode(&targeted.message).unwrap();
            for to in targeted.target.recipients(sender, n) {
                // hbbft handles its own messages internally: nothing is addressed to itself.
                assert_ne!(to, sender, "{:?}", targeted.target);
                self.in_flight.push((sender, to, frame.clone()));
            }
        }
        self.outputs[from].extend(step.outputs);
    }

    fn input(&mut self, node: usize, request: Vec<u8>) {
        let step = self.nodes[node]
            .handle_input(request, &mut self.rngs[node])
            .unwrap();
        self.absorb(node, step);
    }

    /// Deliver one message chosen at random; false when none is in flight.
    fn deliver_one(&mut self) -> bool {
        if self.in_flight.is_empty() {
            return false;
        }
        let pick = (self.scheduler.next_u64() % self.in_flight.len() as u64) as usize;
        let (from, to, frame) = self.in_flight.swap_remove(pick);
        let message: HbbftMessage = codec::decode(&frame).unwrap();
        let to = to.index();
        let step = self.nodes[to].handle_message(from, message, &mut self.rngs[to]);
        self.absorb(to, step);
        true
    }
}

fn delivers_everything_in_the_same_order(encryption: Encryption, seed: u64) {
    let spec = tiny(4, 3);
    let mut net = Net::new(&spec, encryption, seed);
    let n = net.nodes.len() as u64;
    // Five requests per node (contributions of 1, 3 and 1 if none is left out), up front.
    let submitted: BTreeSet<u64> = (0..5 * n).collect();
    for id in &submitted {
        net.input((id % n) as usize, request(*id));
    }
    let mut steps = 0u64;
    while net.deliver_one() {
        steps += 1;
        assert!(steps < 200_000, "no quiescence");
    }
    // Every node delivered the same sequence of epochs and requests...
    for node in 1..net.outputs.len() {
        assert_eq!(net.outputs[0], net.outputs[node], "node {node} disagrees");
    }
    let epochs: Vec<u64> = net.outputs[0].iter().map(|d| d.epoch).collect();
    assert_eq!(epochs, (0..epochs.len() as u64).collect::<Vec<_>>());
    // ...holding every submitted request exactly once (quiescent: all queues drained).
    let delivered: Vec<u64> = net.outputs[0]
        .iter()
        .flat_map(|d| d.requests.iter().map(|r| id_of(r)))
        .collect();
    let unique: BTreeSet<u64> = delivered.iter().copied().collect();
    assert_eq!(
        delivered.len(),
        unique.len(),
        "a request was delivered twice"
    );
    assert_eq!(unique, submitted);
    for node in &net.nodes {
        assert_eq!(node.pending(), 0);
    }
    // No contribution exceeds the batch size.
    assert!(net.outputs[0].iter().all(|d| d.requests.len() <= 4 * 3));
}

#[test]
fn hbbft_nodes_agree_under_reordering_without_encryption() {
    for seed in 1..=3 {
        delivers_everything_in_the_same_order(Encryption::Never, seed);
    }
}

#[test]
fn hbbft_nodes_agree_under_reordering_with_encryption() {
    delivers_everything_in_the_same_order(Encryption::Always, 4);
}

#[test]
fn hbbft_through_the_harness_is_checked_and_deterministic() {
    let spec = tiny(4, 4);
    for encryption in [Encryption::Never, Encryption::Always] {
        let first = run_hbbft(&spec, encryption).unwrap();
        // The harness compared every node's output sequence with node 0's (hbbft outputs one
        // batch per epoch; the check covers the epochs every node completed).
        assert!(first.agreement_checked_outputs >= 1, "{first:?}");
        assert_eq!(first.faults, 0);
        assert!(first.rounds >= spec.measure_rounds);
        // Steady state: n − f to n full contributions per epoch.
        let per_round = first.delivered as f64 / first.rounds as f64;
        assert!((12.0..=16.0).contains(&per_round), "{per_round}: {first:?}");
        assert_eq!(first.latency.samples, first.delivered);
        assert!(first.messages_per_request > 0.0 && first.bytes_per_request > 0.0);
        assert!(first.crypto.encode.calls > 0 && first.crypto.decode.calls > 0);
        // One thread: the same seed gives the same delivered sequence.
        let again = run_hbbft(&spec, encryption).unwrap();
        assert_eq!(first.delivery_digest, again.delivery_digest);
        assert_eq!(first.delivered, again.delivered);
    }
}

#[test]
fn encryption_costs_hbbft_bytes() {
    // Ciphertexts and decryption shares travel only with encryption on.
    let spec = tiny(4, 4);
    let clear = run_hbbft(&spec, Encryption::Never).unwrap();
    let encrypted = run_hbbft(&spec, Encryption::Always).unwrap();
    assert!(encrypted.bytes_per_request > clear.bytes_per_request);
    assert!(encrypted.messages_per_request > clear.messages_per_request);
}

#[test]
fn compare_returns_sane_rows() {
    let mut spec = CompareSpec::new(4, 4);
    spec.run.measure_rounds = 2;
    let report = compare(&spec).unwrap();
    let rows = report.rows();
    assert_eq!(rows.len(), 3);
    for (name, row) in &rows {
        assert_eq!(
            (row.spec.n, row.spec.f, row.spec.batch_size),
            (4, 1, 4),
            "{name}"
        );
        assert_eq!(row.spec.request_size, 250);
        assert!(row.requests_per_sec > 0.0, "{name}");
        assert!(row.latency.p50_ms > 0.0, "{name}");
        assert!(row.agreement_checked_outputs > 0, "{name}");
    }
    let r = &report.ratios;
    let expect = report.maftia.requests_per_sec / report.hbbft.requests_per_sec;
    assert!((r.throughput_vs_hbbft - expect).abs() <= 1e-9 * expect);
    let expect = report.maftia.latency.p50_ms / report.hbbft_encrypted.latency.p50_ms;
    assert!((r.p50_latency_vs_hbbft_encrypted - expect).abs() <= 1e-9 * expect);
    assert!(r.scabc_throughput_vs_hbbft_encrypted.is_none());
    let table = report.table();
    for name in ["maftia abc", "| hbbft |", "hbbft+enc"] {
        assert!(table.contains(name), "{table}");
    }
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["ratios"]["throughput_vs_hbbft"].as_f64().unwrap() > 0.0);
    assert_eq!(json["hbbft_encrypted"]["spec"]["n"], 4);
}

#[test]
fn specs_hbbft_cannot_run_are_refused() {
    // hbbft derives f from n; a smaller f would not be the same system.
    let spec = RunSpec { f: 1, ..tiny(7, 4) };
    assert!(matches!(
        run_hbbft(&spec, Encryption::Never),
        Err(BenchError::InvalidSpec(_))
    ));
    let spec = RunSpec {
        request_size: 4,
        ..tiny(4, 4)
    };
    assert!(matches!(
        compare(&CompareSpec {
            run: spec,
            include_scabc: false
        }),
        Err(BenchError::InvalidSpec(_))
    ));
}
