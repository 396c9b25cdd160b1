//! The event loop: nodes, message queues, top-ups, the measurement window and the checks.
use crate::setup::encrypt;
use crate::timed::{Op, OpCounter, SignerCounters};
use crate::{BenchError, CryptoBreakdown, Latency, RunReport, RunSpec};
use maftia_core::codec;
use maftia_core::{NodeId, Protocol, ProtocolStep};
use maftia_crypto::tdh2::Tdh2PublicKey;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use std::collections::VecDeque;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A thread waiting this long for a message gives the run up as stalled.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What the driver needs from a benchmarked protocol beyond [`Protocol`].
pub trait BenchNode: Protocol<Input = Vec<u8>> {
    /// Requests waiting in the node's pending queue.
    fn pending_requests(&self) -> usize;
    /// Rounds the node has completed: ordered, and every output of theirs emitted.
    /// `last_output_round` is the round of the node's latest output, if any.
    fn completed_rounds(&self, last_output_round: Option<u64>) -> u64;
    /// Feed `output` to the agreement chain, push the ids of the requests it delivers, and
    /// return the round it belongs to.
    fn record_output(output: &Self::Output, ids: &mut Vec<u64>, chain: &mut blake3::Hasher) -> u64;
}

/// How requests are made: plain bytes, or TDH2 ciphertexts of them.
#[derive(Clone)]
pub enum RequestMaker {
    Plain {
        template: Vec<u8>,
    },
    Encrypted {
        public: Arc<Tdh2PublicKey>,
        template: Vec<u8>,
        rng: Box<ChaCha20Rng>,
    },
}

impl RequestMaker {
    /// Request `id`: the template with the id in its first 8 bytes (encrypted if so made).
    pub fn make(&mut self, id: u64) -> Result<Vec<u8>, BenchError> {
        match self {
            RequestMaker::Plain { template } => Ok(with_id(template, id)),
            RequestMaker::Encrypted {
                public,
                template,
                rng,
            } => encrypt(public, &with_id(template, id), id, rng),
        }
    }
}

fn with_id(template: &[u8], id: u64) -> Vec<u8> {
    let mut request = template.to_vec();
    request[..8].copy_from_slice(&id.to_le_bytes());
    request
}

/// The nodes of one run, how to make their requests, and the key-set counters.
pub struct Group<P> {
    pub nodes: Vec<P>,
    pub requests: RequestMaker,
    /// Coin, CBC and quorum key-set counters.
    pub counters: [Arc<SignerCounters>; 3],
}

/// The phase of a run, as node 0 sees it.
const WARMUP: u8 = 0;
const MEASURING: u8 = 1;
const DONE: u8 = 2;

/// Counters every thread adds to.
#[derive(Default)]
struct Shared {
    phase: AtomicU8,
    failed: AtomicBool,
    messages: AtomicU64,
    bytes: AtomicU64,
    encode: OpCounter,
    decode: OpCounter,
    client_requests: OpCounter,
    faults: AtomicU64,
    /// CPU nanoseconds the node threads spent in the window (each thread adds its own).
    window_cpu: AtomicU64,
    /// Whether every node thread could read its own CPU time.
    window_cpu_missing: AtomicBool,
    /// Per node: nanoseconds spent handling its events.
    busy: Vec<AtomicU64>,
    error: Mutex<Option<BenchError>>,
}

impl Shared {
    fn fail(&self, error: BenchError) {
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(error);
        self.failed.store(true, Ordering::SeqCst);
        self.phase.store(DONE, Ordering::SeqCst);
    }
}

/// Everything measured at one instant (window start or end).
#[derive(Clone)]
struct Snapshot {
    at: Instant,
    cpu_nanos: Option<u64>,
    rounds: u64,
    messages: u64,
    bytes: u64,
    encode: Op,
    decode: Op,
    client_requests: Op,
    signers: [crate::SignerOps; 3],
    busy: Vec<u64>,
}

fn snapshot(shared: &Shared, counters: &[Arc<SignerCounters>; 3], rounds: u64) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        cpu_nanos: process_cpu_nanos(),
        rounds,
        messages: shared.messages.load(Ordering::SeqCst),
        bytes: shared.bytes.load(Ordering::SeqCst),
        encode: shared.encode.snapshot(),
        decode: shared.decode.snapshot(),
        client_requests: shared.client_requests.snapshot(),
        signers: [
            counters[0].snapshot(),
            counters[1].snapshot(),
            counters[2].snapshot(),
        ],
        busy: shared
            .busy
            .iter()
            .map(|b| b.load(Ordering::SeqCst))
            .collect(),
    }
}

/// CPU time of the calling thread in nanoseconds (`/proc/thread-self/schedstat`).
fn thread_cpu_nanos() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time of the whole process in nanoseconds: the sum over its threads of
/// `/proc/self/task/*/schedstat` (nanosecond resolution), else `utime + stime` from
/// `/proc/self/stat` (clock ticks, assumed 100 per second).
fn process_cpu_nanos() -> Option<u64> {
    let schedstat = || -> Option<u64> {
        let mut total = 0u64;
        let mut read_any = false;
        for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            // A thread that exits meanwhile (another test's, say) is skipped.
            let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else {
                continue;
            };
            if let Some(nanos) = text
                .split_whitespace()
                .next()
                .and_then(|t| t.parse::<u64>().ok())
            {
                total += nanos;
                read_any = true;
            }
        }
        read_any.then_some(total)
    };
    schedstat().or_else(|| {
        let text = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may contain spaces) start at state (field 3).
        let rest = text.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) * 10_000_000)
    })
}

/// The 1-minute load average.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A message on its way: encoded for another node, or a node's own copy.
enum Payload<M> {
    Frame(Arc<Vec<u8>>),
    Local(M),
}

struct Envelope<M> {
    from: NodeId,
    to: NodeId,
    payload: Payload<M>,
}

/// A frame crossing threads.
struct Wire {
    from: NodeId,
    to: NodeId,
    frame: Arc<Vec<u8>>,
}

/// One node and the driver's records of it.
struct Slot<P> {
    id: NodeId,
    node: P,
    rng: ChaCha20Rng,
    /// Requests submitted so far (request `k` of node `i` has id `i + n·k`).
    submitted: u64,
    /// Submission time of each request, by `k`.
    submitted_at: Vec<Instant>,
    /// Outputs so far.
    outputs: u64,
    chain: blake3::Hasher,
    last_round: Option<u64>,
    /// `(outputs before, chain digest)` at every round boundary of the output sequence.
    checkpoints: Vec<(u64, [u8; 32])>,
}

/// What node 0's thread measured.
struct Window {
    start: Snapshot,
    end: Snapshot,
    delivered: u64,
    /// `(request id, delivery time)` of the window's deliveries at node 0.
    deliveries: Vec<(u64, Instant)>,
}

/// One thread's share of the group.
struct Worker<'a, P: BenchNode> {
    spec: &'a RunSpec,
    shared: &'a Shared,
    counters: &'a [Arc<SignerCounters>; 3],
    thread: usize,
    slots: Vec<Slot<P>>,
    requests: RequestMaker,
    queue: VecDeque<Envelope<P::Message>>,
    senders: Vec<Sender<Wire>>,
    /// Node 0's window, on node 0's thread.
    window_start: Option<Snapshot>,
    window: Option<Window>,
    delivered: u64,
    deliveries: Vec<(u64, Instant)>,
    ids: Vec<u64>,
    /// This thread's CPU time when it saw the window open, and whether it has accounted the
    /// window (see [`Worker::track_cpu`]).
    cpu_at_start: Option<u64>,
    cpu_accounted: bool,
}

impl<P> Worker<'_, P>
where
    P: BenchNode,
    P::Message: Send,
    P::FaultKind: Debug,
    P::Error: Debug,
{
    fn owner(&self, node: NodeId) -> usize {
        node.index() % self.spec.threads
    }

    fn slot_index(&self, node: NodeId) -> usize {
        node.index() / self.spec.threads
    }

    /// Send a node's step out and record its outputs; faults fail the run.
    fn dispatch(&mut self, slot: usize, step: ProtocolStep<P>) -> Result<(), BenchError> {
        let from = self.slots[slot].id;
        let n = self.spec.n;
        if let Some(fault) = step.faults.first() {
            self.shared.faults.fetch_add(1, Ordering::Relaxed);
            return Err(BenchError::Fault {
                node: from.index(),
                culprit: fault.culprit.index(),
                kind: format!("{:?}", fault.kind),
            });
        }
        for targeted in step.messages {
            let mut to_self = false;
            let mut remote: Vec<NodeId> = Vec::new();
            for to in targeted.target.recipients(from, n) {
                if to == from {
                    to_self = true;
                } else {
                    remote.push(to);
                }
            }
            if !remote.is_empty() {
                let frame = self
                    .shared
                    .encode
                    .time(|| codec::encode(&targeted.message))
                    .map_err(|e| BenchError::Codec(e.to_string()))?;
                let frame = Arc::new(frame);
                let count = remote.len() as u64;
                self.shared.messages.fetch_add(count, Ordering::Relaxed);
                self.shared
                    .bytes
                    .fetch_add(count * frame.len() as u64, Ordering::Relaxed);
                for to in remote {
                    let owner = self.owner(to);
                    if owner == self.thread {
                        self.queue.push_back(Envelope {
                            from,
                            to,
                            payload: Payload::Frame(frame.clone()),
                        });
                    } else {
                        // A closed channel means its thread finished: the run is over.
                        let _ = self.senders[owner].send(Wire {
                            from,
                            to,
                            frame: frame.clone(),
                        });
                    }
                }
            }
            if to_self {
                self.queue.push_back(Envelope {
                    from,
                    to: from,
                    payload: Payload::Local(targeted.message),
                });
            }
        }
        if !step.outputs.is_empty() {
            self.record_outputs(slot, &step.outputs);
        }
        Ok(())
    }

    fn record_outputs(&mut self, slot: usize, outputs: &[P::Output]) {
        let measuring = self.shared.phase.load(Ordering::SeqCst) == MEASURING;
        let is_node0 = self.slots[slot].id == NodeId(0);
        let now = Instant::now();
        for output in outputs {
            self.ids.clear();
            let state = &mut self.slots[slot];
            let mut chain = state.chain.clone();
            let round = P::record_output(output, &mut self.ids, &mut chain);
            if state.last_round != Some(round) {
                state
                    .checkpoints
                    .push((state.outputs, *state.chain.finalize().as_bytes()));
                state.last_round = Some(round);
            }
            state.chain = chain;
            state.outputs += 1;
            if is_node0 && measuring {
                self.delivered += self.ids.len() as u64;
                self.deliveries.extend(self.ids.iter().map(|id| (*id, now)));
            }
        }
    }

    /// Submit fresh requests until the node's queue holds the target; returns the nanoseconds
    /// spent making them (client work).
    fn top_up(&mut self, slot: usize) -> Result<u64, BenchError> {
        let target = self.spec.pending();
        let n = self.spec.n as u64;
        let mut client_nanos = 0u64;
        while self.slots[slot].node.pending_requests() < target {
            let state = &mut self.slots[slot];
            let id = state.id.index() as u64 + n * state.submitted;
            let made = Instant::now();
            let request = self.requests.make(id)?;
            let nanos = u64::try_from(made.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.shared.client_requests.add(nanos);
            client_nanos = client_nanos.saturating_add(nanos);
            let state = &mut self.slots[slot];
            state.submitted += 1;
            state.submitted_at.push(Instant::now());
            let step = state
                .node
                .handle_input(request, &mut state.rng)
                .map_err(|e| BenchError::Input(format!("{e:?}")))?;
            self.dispatch(slot, step)?;
        }
        Ok(client_nanos)
    }

    /// Handle one envelope at its node, then top the node up.
    fn process(&mut self, envelope: Envelope<P::Message>) -> Result<(), BenchError> {
        let slot = self.slot_index(envelope.to);
        let started = Instant::now();
        let message = match envelope.payload {
            Payload::Local(message) => message,
            Payload::Frame(frame) => self
                .shared
                .decode
                .time(|| codec::decode::<P::Message>(&frame))
                .map_err(|e| BenchError::Codec(e.to_string()))?,
        };
        let state = &mut self.slots[slot];
        let step = state
            .node
            .handle_message(envelope.from, message, &mut state.rng);
        self.dispatch(slot, step)?;
        let client_nanos = self.top_up(slot)?;
        let busy = u64::try_from(started.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_sub(client_nanos);
        let id = self.slots[slot].id;
        self.shared.busy[id.index()].fetch_add(busy, Ordering::Relaxed);
        if id == NodeId(0) {
            self.advance_phase(slot);
        }
        Ok(())
    }

    /// Account this thread's CPU time in the window: read at the first sight of the window
    /// open (at the transition itself on node 0's thread, at the next event on the others)
    /// and at its close.
    fn track_cpu(&mut self) {
        if self.cpu_accounted {
            return;
        }
        match self.shared.phase.load(Ordering::SeqCst) {
            MEASURING if self.cpu_at_start.is_none() => {
                self.cpu_at_start = thread_cpu_nanos();
                if self.cpu_at_start.is_none() {
                    self.shared.window_cpu_missing.store(true, Ordering::SeqCst);
                }
            }
            DONE => {
                self.cpu_accounted = true;
                match (self.cpu_at_start, thread_cpu_nanos()) {
                    (Some(start), Some(end)) => {
                        self.shared
                            .window_cpu
                            .fetch_add(end.saturating_sub(start), Ordering::SeqCst);
                    }
                    // A thread that never saw the window open did no work in it.
                    (None, Some(_)) => {}
                    _ => self.shared.window_cpu_missing.store(true, Ordering::SeqCst),
                }
            }
            _ => {}
        }
    }

    /// Node 0 opens and closes the window by its completed rounds.
    fn advance_phase(&mut self, slot: usize) {
        let state = &self.slots[slot];
        let rounds = state.node.completed_rounds(state.last_round);
        let phase = self.shared.phase.load(Ordering::SeqCst);
        if phase == WARMUP && rounds >= self.spec.warmup_rounds {
            self.window_start = Some(snapshot(self.shared, self.counters, rounds));
            self.shared.phase.store(MEASURING, Ordering::SeqCst);
            self.track_cpu();
        } else if phase == MEASURING
            && rounds
                >= self
                    .spec
                    .warmup_rounds
                    .saturating_add(self.spec.measure_rounds)
        {
            let end = snapshot(self.shared, self.counters, rounds);
            if let Some(start) = self.window_start.take() {
                self.window = Some(Window {
                    start,
                    end,
                    delivered: self.delivered,
                    deliveries: std::mem::take(&mut self.deliveries),
                });
            }
            self.shared.phase.store(DONE, Ordering::SeqCst);
            self.track_cpu();
        }
    }

    /// Start every node of this thread.
    fn start(&mut self) -> Result<(), BenchError> {
        for slot in 0..self.slots.len() {
            self.top_up(slot)?;
        }
        if self.slots.first().is_some_and(|s| s.id == NodeId(0)) {
            self.advance_phase(0);
        }
        Ok(())
    }

    /// The event loop of a single-threaded run.
    fn run_alone(&mut self) -> Result<(), BenchError> {
        self.start()?;
        while self.shared.phase.load(Ordering::SeqCst) != DONE {
            let Some(envelope) = self.queue.pop_front() else {
                return Err(BenchError::Stalled {
                    rounds: self.slots[0]
                        .node
                        .completed_rounds(self.slots[0].last_round),
                });
            };
            self.process(envelope)?;
        }
        self.track_cpu();
        Ok(())
    }

    /// The event loop of one of several threads.
    fn run_threaded(&mut self, inbox: &Receiver<Wire>) -> Result<(), BenchError> {
        self.start()?;
        let mut idle_since: Option<Instant> = None;
        while self.shared.phase.load(Ordering::SeqCst) != DONE {
            self.track_cpu();
            while let Ok(wire) = inbox.try_recv() {
                self.push_wire(wire);
            }
            if let Some(envelope) = self.queue.pop_front() {
                idle_since = None;
                self.process(envelope)?;
                continue;
            }
            match inbox.recv_timeout(Duration::from_millis(5)) {
                Ok(wire) => self.push_wire(wire),
                Err(RecvTimeoutError::Timeout) => {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > STALL_TIMEOUT {
                        return Err(BenchError::Stalled {
                            rounds: self
                                .slots
                                .first()
                                .map_or(0, |s| s.node.completed_rounds(s.last_round)),
                        });
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.track_cpu();
        Ok(())
    }

    fn push_wire(&mut self, wire: Wire) {
        self.queue.push_back(Envelope {
            from: wire.from,
            to: wire.to,
            payload: Payload::Frame(wire.frame),
        });
    }
}

/// Run a group to the end of its window and report.
pub fn drive<P>(spec: &RunSpec, group: Group<P>) -> Result<RunReport, BenchError>
where
    P: BenchNode + Send,
    P::Message: Send,
    P::FaultKind: Debug,
    P::Error: Debug,
{
    let load = load_average();
    let threads = spec.threads.min(spec.n).max(1);
    let spec = &RunSpec {
        threads,
        ..spec.clone()
    };
    let shared = Shared {
        busy: (0..spec.n).map(|_| AtomicU64::new(0)).collect(),
        ..Shared::default()
    };
    let Group {
        nodes,
        requests,
        counters,
    } = group;
    // Node i goes to thread i % threads, at slot i / threads.
    let mut per_thread: Vec<Vec<Slot<P>>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, node) in nodes.into_iter().enumerate() {
        per_thread[i % threads].push(Slot {
            id: NodeId(u16::try_from(i).unwrap_or(u16::MAX)),
            node,
            rng: ChaCha20Rng::seed_from_u64(spec.seed.wrapping_add(1 + i as u64)),
            submitted: 0,
            submitted_at: Vec::new(),
            outputs: 0,
            chain: blake3::Hasher::new_derive_key("maftia 2026-11 bench output chain"),
            last_round: None,
            checkpoints: Vec::new(),
        });
    }
    let (senders, inboxes): (Vec<Sender<Wire>>, Vec<Receiver<Wire>>) =
        (0..threads).map(|_| mpsc::channel()).unzip();
    let make_worker = |thread: usize, slots: Vec<Slot<P>>| {
        let mut requests = requests.clone();
        if let RequestMaker::Encrypted { rng, .. } = &mut requests {
            rng.set_stream(thread as u64);
        }
        Worker {
            spec,
            shared: &shared,
            counters: &counters,
            thread,
            slots,
            requests,
            queue: VecDeque::new(),
            senders: senders.clone(),
            window_start: None,
            window: None,
            delivered: 0,
            deliveries: Vec::new(),
            ids: Vec::new(),
            cpu_at_start: None,
            cpu_accounted: false,
        }
    };
    let finished: Vec<(Vec<Slot<P>>, Option<Window>)> = if threads == 1 {
        let slots = per_thread.pop().unwrap_or_default();
        let mut worker = make_worker(0, slots);
        if let Err(error) = worker.run_alone() {
            shared.fail(error);
        }
        vec![(worker.slots, worker.window)]
    } else {
        let workers: Vec<_> = per_thread
            .into_iter()
            .enumerate()
            .map(|(thread, slots)| make_worker(thread, slots))
            .collect();
        let results = std::thread::scope(|scope| {
            let handles: Vec<_> = workers
                .into_iter()
                .zip(inboxes)
                .map(|(mut worker, inbox)| {
                    let shared = &shared;
                    scope.spawn(move || {
                        if let Err(error) = worker.run_threaded(&inbox) {
                            shared.fail(error);
                        }
                        // Unblock the others.
                        shared.phase.store(DONE, Ordering::SeqCst);
                        (worker.slots, worker.window)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| BenchError::WorkerPanicked))
                .collect::<Result<Vec<_>, _>>()
        });
        results?
    };
    drop(senders);
    if shared.failed.load(Ordering::SeqCst) {
        let error = shared
            .error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        return Err(error.unwrap_or(BenchError::WorkerPanicked));
    }
    let mut slots: Vec<Slot<P>> = Vec::with_capacity(spec.n);
    let mut window = None;
    for (thread_slots, thread_window) in finished {
        slots.extend(thread_slots);
        window = window.or(thread_window);
    }
    slots.sort_by_key(|s| s.id);
    let window = window.ok_or(BenchError::Stalled { rounds: 0 })?;
    let agreement_checked_outputs = check_agreement(&slots)?;
    Ok(report(
        spec,
        &slots,
        window,
        &shared,
        agreement_checked_outputs,
        load,
    ))
}

/// Every node's checkpoints agree with node 0's on their common prefix; returns how many
/// outputs that prefix covers at the shortest node.
fn check_agreement<P>(slots: &[Slot<P>]) -> Result<u64, BenchError> {
    let Some(first) = slots.first() else {
        return Ok(0);
    };
    let mut checked = first.outputs;
    for (node, slot) in slots.iter().enumerate().skip(1) {
        for (a, b) in first.checkpoints.iter().zip(&slot.checkpoints) {
            if a != b {
                return Err(BenchError::Disagreement {
                    node,
                    output: a.0.min(b.0),
                });
            }
        }
        let common = first.checkpoints.len().min(slot.checkpoints.len());
        let covered = first
            .checkpoints
            .get(common.saturating_sub(1))
            .map_or(0, |c| c.0);
        checked = checked.min(covered);
    }
    Ok(checked)
}

fn report<P>(
    spec: &RunSpec,
    slots: &[Slot<P>],
    window: Window,
    shared: &Shared,
    agreement_checked_outputs: u64,
    load_average: Option<f64>,
) -> RunReport {
    let Window {
        start,
        end,
        delivered,
        deliveries,
    } = window;
    let wall = end.at.saturating_duration_since(start.at);
    let client_requests = end.client_requests.since(&start.client_requests);
    // Client work (making requests) ran on the node threads; take it out of the throughput.
    let seconds = (wall.as_secs_f64() - client_requests.seconds / spec.threads as f64).max(1e-9);
    let per_request = |x: f64| {
        if delivered == 0 {
            0.0
        } else {
            x / delivered as f64
        }
    };
    let n = spec.n as f64;
    // The node threads' own CPU time if they could all read it, else the process's.
    let window_cpu = if shared.window_cpu_missing.load(Ordering::SeqCst) {
        match (start.cpu_nanos, end.cpu_nanos) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        }
    } else {
        Some(shared.window_cpu.load(Ordering::SeqCst))
    };
    let cpu = window_cpu.map_or(0.0, |nanos| {
        (nanos as f64 * 1e-9 - client_requests.seconds).max(0.0)
    });
    let busy: Vec<f64> = end
        .busy
        .iter()
        .zip(&start.busy)
        .map(|(b, a)| per_request(b.saturating_sub(*a) as f64 * 1e-9))
        .collect();
    // Busy times are wall clock, inflated when the machine is loaded; the busiest node's
    // *share* of them, applied to the process CPU, estimates its CPU per request.
    let max_busy = busy.iter().copied().fold(0.0, f64::max);
    let total_busy: f64 = busy.iter().sum();
    let busiest_cpu = if total_busy > 0.0 {
        per_request(cpu) * max_busy / total_busy
    } else {
        0.0
    };
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3).ok();
    let n_u64 = spec.n as u64;
    for (id, at) in &deliveries {
        let node = (id % n_u64) as usize;
        let k = (id / n_u64) as usize;
        let Some(submitted) = slots.get(node).and_then(|s| s.submitted_at.get(k)) else {
            continue;
        };
        let micros = at.saturating_duration_since(*submitted).as_micros();
        if let Some(h) = histogram.as_mut() {
            let _ = h.record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
        }
    }
    let latency = histogram.map_or_else(Latency::default, |h| Latency {
        samples: h.len(),
        p50_ms: h.value_at_quantile(0.50) as f64 / 1e3,
        p90_ms: h.value_at_quantile(0.90) as f64 / 1e3,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1e3,
        max_ms: h.max() as f64 / 1e3,
    });
    let crypto = CryptoBreakdown {
        coin: end.signers[0].since(&start.signers[0]),
        cbc: end.signers[1].since(&start.signers[1]),
        quorum: end.signers[2].since(&start.signers[2]),
        encode: end.encode.since(&start.encode),
        decode: end.decode.since(&start.decode),
        client_requests,
    };
    let rounds = end.rounds.saturating_sub(start.rounds);
    RunReport {
        spec: spec.clone(),
        delivered,
        rounds,
        wall,
        requests_per_sec: delivered as f64 / seconds,
        rounds_per_sec: rounds as f64 / seconds,
        latency,
        messages_per_request: per_request(end.messages.saturating_sub(start.messages) as f64) / n,
        bytes_per_request: per_request(end.bytes.saturating_sub(start.bytes) as f64) / n,
        cpu_seconds_per_request: per_request(cpu),
        node_busy_seconds_per_request: busy,
        projected_per_host_requests_per_sec: if busiest_cpu > 0.0 {
            1.0 / busiest_cpu
        } else {
            0.0
        },
        crypto,
        faults: shared.faults.load(Ordering::SeqCst),
        agreement_checked_outputs,
        delivery_digest: slots
            .first()
            .map(|s| hex::encode(s.chain.finalize().as_bytes()))
            .unwrap_or_default(),
        load_average,
    }
}
