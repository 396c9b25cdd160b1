//! The tokio tasks of the network layer: one accept loop (with one task per inbound
//! connection) and one dialer per peer. See the crate documentation for the guarantees.
use crate::frame::{
    self, chunk_ranges, decode_link_message, encode_control, encode_data_header, encode_ping,
    LinkMessage, Reassembler, MAX_CHUNK_PAYLOAD, NOISE_MAX_MESSAGE, NOISE_TAG_LEN,
};
use crate::handshake::{
    self, read_record, HandshakeError, LocalIdentity, RecordError, RecvCipher, RefusalReason,
    SendCipher, Session,
};
use crate::link::{Arrival, IncomingLink, LinkState, Outgoing, Resume};
use crate::{
    Incoming, NetConfig, NetError, NetLimits, NetStats, PeerStats, Recipients, SendError,
    SendReport,
};
use bytes::Bytes;
use maftia_core::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tracing::{debug, info, warn};

/// Write at most this many bytes of data records per socket write.
const WRITE_BATCH_BYTES: usize = 256 << 10;
/// Largest record the acceptor sends (control messages only).
const MAX_CONTROL_RECORD: usize = frame::CONTROL_LEN + NOISE_TAG_LEN;
/// Socket read buffer per connection.
const READ_BUFFER: usize = 64 << 10;
/// A connection task yields to the others after delivering this many frames in a row (per-peer
/// fairness when the application keeps up and the channel does not have to arbitrate).
const READ_BUDGET: u32 = 16;

/// Lock a mutex; a poisoned lock is still used (its data is only ever changed by short,
/// non-panicking critical sections, so it is consistent).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct PeerCounters {
    outbound_connected: AtomicBool,
    inbound_connected: AtomicBool,
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_retransmitted: AtomicU64,
    frames_acked: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    duplicates_dropped: AtomicU64,
    refused_sends: AtomicU64,
    reconnects: AtomicU64,
    protocol_violations: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

struct Peer {
    id: NodeId,
    addr: SocketAddr,
    out: Mutex<Outgoing>,
    /// Woken when a frame is queued.
    out_ready: Notify,
    inn: Mutex<IncomingLink>,
    /// Dropping this ends the current inbound connection (replaced by a newer one).
    inbound_kill: Mutex<Option<oneshot::Sender<()>>>,
    inbound_generation: AtomicU64,
    counters: PeerCounters,
}

/// The byte budget of the receive side ([`NetLimits::incoming_max_bytes`]): one semaphore
/// permit per payload byte, plus a gauge of the bytes currently held.
struct IncomingBudget {
    /// FIFO without barging: a waiting frame is never overtaken by later, smaller ones.
    permits: Arc<Semaphore>,
    held: AtomicUsize,
}

/// The budget held by one delivered frame (shared by the clones of its [`Incoming`]); dropping
/// it returns the bytes.
pub(crate) struct BudgetHold {
    budget: Arc<IncomingBudget>,
    bytes: usize,
    _permit: OwnedSemaphorePermit,
}

impl BudgetHold {
    /// Record `permit` (of `bytes` permits) as held.
    fn new(budget: &Arc<IncomingBudget>, bytes: usize, permit: OwnedSemaphorePermit) -> Self {
        budget.held.fetch_add(bytes, Ordering::Relaxed);
        BudgetHold {
            budget: budget.clone(),
            bytes,
            _permit: permit,
        }
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        // Runs before the permit field is dropped: the gauge never exceeds the permits taken.
        self.budget.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

struct Shared {
    our_id: NodeId,
    limits: NetLimits,
    local: LocalIdentity,
    peers: BTreeMap<NodeId, Arc<Peer>>,
    incoming: mpsc::Sender<Incoming>,
    incoming_budget: Arc<IncomingBudget>,
    refusals: Mutex<BTreeMap<RefusalReason, u64>>,
    self_delivered: AtomicU64,
    self_refused: AtomicU64,
}

impl Shared {
    fn refuse(&self, reason: RefusalReason, addr: SocketAddr, detail: &str) {
        *lock(&self.refusals).entry(reason).or_insert(0) += 1;
        warn!(node = %self.our_id, peer_addr = %addr, %reason, detail, "connection refused");
    }

    fn violation(&self, peer: &Peer, addr: SocketAddr, detail: &str) {
        bump(&peer.counters.protocol_violations, 1);
        warn!(node = %self.our_id, peer = %peer.id, peer_addr = %addr, detail,
            "protocol violation by authenticated peer; connection closed");
    }
}

/// How a connection ended.
enum LinkEnd {
    /// Closed, reset, timed out, or superseded: reconnect.
    Closed(String),
    /// The authenticated peer broke the protocol: evidence against it.
    Violation(String),
    /// The application dropped its receiver.
    Stopped,
}

fn closed(e: impl std::fmt::Display) -> LinkEnd {
    LinkEnd::Closed(e.to_string())
}

fn violation(e: impl std::fmt::Display) -> LinkEnd {
    LinkEnd::Violation(e.to_string())
}

fn record_end(e: RecordError) -> LinkEnd {
    match e {
        RecordError::Frame(e) => violation(e),
        other => closed(other),
    }
}

/// The MN layer of one node: authenticated encrypted reliable links to every configured peer.
///
/// Dropping it stops every task at once (a crash, as far as the links are concerned);
/// [`Network::shutdown`] stops them and returns the [`LinkState`] to resume from.
pub struct Network {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    accept_task: Option<JoinHandle<()>>,
    dialers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("our_id", &self.shared.our_id)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

fn bind(addr: SocketAddr) -> Result<TcpListener, NetError> {
    let bind_error = |source: std::io::Error| {
        let hint = if source.kind() == std::io::ErrorKind::AddrInUse {
            " (the port is in use: is another replica or program listening there?)"
        } else {
            ""
        };
        NetError::Bind { addr, source, hint }
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(bind_error)?;
    // Lets a restarted node rebind its port while old connections are in TIME_WAIT.
    socket.set_reuseaddr(true).map_err(bind_error)?;
    socket.bind(addr).map_err(bind_error)?;
    socket.listen(1024).map_err(bind_error)
}

fn check_config(config: &NetConfig) -> Result<(), NetError> {
    let fail = |m: String| Err(NetError::Config(m));
    let n = config.identities.len();
    let Some(registered) = config.identities.get(config.our_id.index()) else {
        return fail(format!("node {} is not in a group of {n}", config.our_id));
    };
    if *registered != config.identity.public() {
        return fail(format!(
            "the identity key does not match node {}'s key in the group",
            config.our_id
        ));
    }
    for id in config.peers.keys() {
        if *id == config.our_id {
            return fail(format!("node {id} lists itself as a peer"));
        }
        if id.index() >= n {
            return fail(format!("peer {id} is not in a group of {n}"));
        }
    }
    let l = &config.limits;
    if l.max_frame_size == 0 || l.max_frame_size > frame::MAX_FRAME_SIZE {
        return fail(format!(
            "max_frame_size must be in 1..={}",
            frame::MAX_FRAME_SIZE
        ));
    }
    if l.queue_max_frames == 0
        || l.queue_max_bytes < l.max_frame_size
        || l.incoming_capacity == 0
        || l.max_pending_handshakes == 0
    {
        return fail(
            "queues, channel and handshake cap must be positive, and queue_max_bytes at least \
             max_frame_size"
                .into(),
        );
    }
    // Every frame must fit the receive budget, or its connection would wait for ever.
    if l.incoming_max_bytes < l.max_frame_size || l.incoming_max_bytes > Semaphore::MAX_PERMITS {
        return fail(format!(
            "incoming_max_bytes must be in max_frame_size..={}",
            Semaphore::MAX_PERMITS
        ));
    }
    if l.idle_timeout <= l.keepalive_interval || l.backoff_initial.is_zero() {
        return fail(
            "idle_timeout must exceed keepalive_interval; backoff_initial must be positive".into(),
        );
    }
    if let Some(state) = &config.resume {
        if state.our_id != config.our_id || state.incarnation != config.incarnation {
            return fail(format!(
                "resume state of node {} incarnation {} given to node {} incarnation {}",
                state.our_id, state.incarnation, config.our_id, config.incarnation
            ));
        }
    }
    Ok(())
}

impl Network {
    /// Bind `config.listen` and start. Fails with a clear [`NetError::Bind`] if the port is in
    /// use. Returns the network and the receiver of incoming frames (bounded by
    /// [`NetLimits::incoming_capacity`]; read it promptly, or the peers' links stall).
    pub async fn start(config: NetConfig) -> Result<(Network, mpsc::Receiver<Incoming>), NetError> {
        check_config(&config)?;
        let listener = bind(config.listen)?;
        Self::launch(config, listener)
    }

    /// Start on an already bound listener (`config.listen` is ignored), e.g. one bound to port
    /// 0 before the peers' addresses were known.
    pub async fn start_on(
        config: NetConfig,
        listener: std::net::TcpListener,
    ) -> Result<(Network, mpsc::Receiver<Incoming>), NetError> {
        check_config(&config)?;
        let addr = listener.local_addr().unwrap_or(config.listen);
        let listener = listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(listener))
            .map_err(|source| NetError::Bind {
                addr,
                source,
                hint: "",
            })?;
        Self::launch(config, listener)
    }

    fn launch(
        config: NetConfig,
        listener: TcpListener,
    ) -> Result<(Network, mpsc::Receiver<Incoming>), NetError> {
        let local_addr = listener.local_addr().map_err(|source| NetError::Bind {
            addr: config.listen,
            source,
            hint: "",
        })?;
        let local = LocalIdentity::new(
            config.our_id,
            config.identity.clone(),
            config.identities.clone(),
            config.group_tag,
            config.incarnation,
        )?;
        let (incoming, incoming_rx) = mpsc::channel(config.limits.incoming_capacity);
        let incoming_budget = Arc::new(IncomingBudget {
            permits: Arc::new(Semaphore::new(config.limits.incoming_max_bytes)),
            held: AtomicUsize::new(0),
        });
        let mut resume = config.resume;
        let peers = config
            .peers
            .iter()
            .map(|(&id, &addr)| {
                let (out, inn) = match resume.as_mut() {
                    Some(state) => (
                        state.outgoing.remove(&id).unwrap_or_default(),
                        state.incoming.remove(&id).unwrap_or_default(),
                    ),
                    None => Default::default(),
                };
                let peer = Peer {
                    id,
                    addr,
                    out: Mutex::new(out),
                    out_ready: Notify::new(),
                    inn: Mutex::new(inn),
                    inbound_kill: Mutex::new(None),
                    inbound_generation: AtomicU64::new(0),
                    counters: PeerCounters::default(),
                };
                (id, Arc::new(peer))
            })
            .collect();
        let shared = Arc::new(Shared {
            our_id: config.our_id,
            limits: config.limits,
            local,
            peers,
            incoming,
            incoming_budget,
            refusals: Mutex::new(BTreeMap::new()),
            self_delivered: AtomicU64::new(0),
            self_refused: AtomicU64::new(0),
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let accept_task = tokio::spawn(accept_loop(shared.clone(), listener, shutdown_rx));
        let mut seed_rng = match shared.limits.backoff_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let dialers = shared
            .peers
            .values()
            .map(|peer| {
                let rng = StdRng::seed_from_u64(seed_rng.gen());
                tokio::spawn(dialer(shared.clone(), peer.clone(), rng))
            })
            .collect();
        info!(node = %shared.our_id, %local_addr, incarnation = shared.local.incarnation(),
            peers = shared.peers.len(), "network started");
        Ok((
            Network {
                shared,
                local_addr,
                shutdown_tx,
                accept_task: Some(accept_task),
                dialers,
            },
            incoming_rx,
        ))
    }

    pub fn our_id(&self) -> NodeId {
        self.shared.our_id
    }

    /// The address we listen on (the actual port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Queue `payload` (one already-encoded application frame, shared by all recipients) for
    /// every recipient. Never blocks. A recipient whose queue is full is listed in
    /// [`SendReport::refused`] and does not get this frame; the others do. Fails only if the
    /// frame exceeds [`NetLimits::max_frame_size`] (then nobody gets it).
    pub fn send(&self, to: &Recipients, payload: Bytes) -> Result<SendReport, SendError> {
        let limits = &self.shared.limits;
        if payload.len() > limits.max_frame_size {
            return Err(SendError::FrameTooLarge {
                len: payload.len(),
                max: limits.max_frame_size,
            });
        }
        let mut report = SendReport::default();
        let mut to_one = |id: NodeId| {
            if id == self.shared.our_id {
                self.send_to_self(payload.clone(), &mut report);
            } else if let Some(peer) = self.shared.peers.get(&id) {
                let queued = lock(&peer.out).push(
                    payload.clone(),
                    limits.queue_max_frames,
                    limits.queue_max_bytes,
                );
                if queued.is_some() {
                    peer.out_ready.notify_one();
                } else {
                    bump(&peer.counters.refused_sends, 1);
                    report.refused.push(id);
                }
            } else {
                report.unknown.push(id);
            }
        };
        match to {
            Recipients::All => {
                to_one(self.shared.our_id);
                self.shared.peers.keys().for_each(|&id| to_one(id));
            }
            Recipients::Others => self.shared.peers.keys().for_each(|&id| to_one(id)),
            Recipients::One(id) => to_one(*id),
            Recipients::Many(ids) => ids.iter().for_each(|&id| to_one(id)),
        }
        Ok(report)
    }

    /// Put `payload` (at most `max_frame_size` bytes) on our own incoming channel if the byte
    /// budget and a slot are free right now.
    fn send_to_self(&self, payload: Bytes, report: &mut SendReport) {
        let shared = &self.shared;
        let budget = &shared.incoming_budget;
        // `try_acquire` never takes bytes a waiting connection task needs: tokio assigns
        // returned permits to the waiters first.
        let hold = u32::try_from(payload.len())
            .ok()
            .and_then(|bytes| budget.permits.clone().try_acquire_many_owned(bytes).ok())
            .map(|permit| BudgetHold::new(budget, payload.len(), permit));
        let slot = hold.and_then(|hold| Some((hold, shared.incoming.try_reserve().ok()?)));
        match slot {
            Some((hold, slot)) => {
                slot.send(Incoming {
                    from: shared.our_id,
                    payload,
                    _budget: Arc::new(hold),
                });
                bump(&shared.self_delivered, 1);
            }
            None => {
                bump(&shared.self_refused, 1);
                report.refused.push(shared.our_id);
            }
        }
    }

    /// A snapshot of every counter.
    pub fn stats(&self) -> NetStats {
        let peers = self
            .shared
            .peers
            .iter()
            .map(|(&id, peer)| {
                let c = &peer.counters;
                let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let (queue_frames, queue_bytes) = {
                    let out = lock(&peer.out);
                    (out.frames(), out.bytes())
                };
                let stats = PeerStats {
                    outbound_connected: c.outbound_connected.load(Ordering::Relaxed),
                    inbound_connected: c.inbound_connected.load(Ordering::Relaxed),
                    frames_sent: get(&c.frames_sent),
                    bytes_sent: get(&c.bytes_sent),
                    frames_retransmitted: get(&c.frames_retransmitted),
                    frames_acked: get(&c.frames_acked),
                    frames_received: get(&c.frames_received),
                    bytes_received: get(&c.bytes_received),
                    duplicates_dropped: get(&c.duplicates_dropped),
                    queue_frames,
                    queue_bytes,
                    refused_sends: get(&c.refused_sends),
                    reconnects: get(&c.reconnects),
                    protocol_violations: get(&c.protocol_violations),
                };
                (id, stats)
            })
            .collect();
        NetStats {
            our_id: self.shared.our_id,
            incarnation: self.shared.local.incarnation(),
            peers,
            refused_handshakes: lock(&self.shared.refusals).clone(),
            self_delivered: self.shared.self_delivered.load(Ordering::Relaxed),
            self_refused: self.shared.self_refused.load(Ordering::Relaxed),
            incoming_bytes_queued: self.shared.incoming_budget.held.load(Ordering::Relaxed),
        }
    }

    /// Stop every task, close every connection and the listener, and return the link state
    /// (unacknowledged frames, stream positions) for a restart with the same incarnation.
    pub async fn shutdown(mut self) -> LinkState {
        self.stop_tasks().await;
        let peers = &self.shared.peers;
        LinkState {
            our_id: self.shared.our_id,
            incarnation: self.shared.local.incarnation(),
            outgoing: peers
                .iter()
                .map(|(&id, p)| (id, lock(&p.out).clone()))
                .collect(),
            incoming: peers.iter().map(|(&id, p)| (id, *lock(&p.inn))).collect(),
        }
    }

    async fn stop_tasks(&mut self) {
        self.shutdown_tx.send_replace(true);
        for dialer in &self.dialers {
            dialer.abort();
        }
        for dialer in self.dialers.drain(..) {
            // An aborted task's join error is the expected outcome.
            let _ = dialer.await;
        }
        if let Some(accept) = self.accept_task.take() {
            // The accept loop reacts to the shutdown signal by closing every inbound connection
            // and waiting for those tasks; then it returns and drops the listener.
            let _ = accept.await;
        }
        info!(node = %self.shared.our_id, "network stopped");
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.shutdown_tx.send_replace(true);
        for dialer in &self.dialers {
            dialer.abort();
        }
        if let Some(accept) = &self.accept_task {
            // Aborting drops the listener and the set of inbound connection tasks (aborting
            // them too).
            accept.abort();
        }
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let pending = Arc::new(Semaphore::new(shared.limits.max_pending_handshakes));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => match pending.clone().try_acquire_owned() {
                    Ok(permit) => {
                        connections.spawn(inbound(shared.clone(), stream, addr, permit));
                    }
                    Err(_) => shared.refuse(
                        RefusalReason::TooManyPending,
                        addr,
                        "too many connections in the handshake",
                    ),
                },
                Err(e) => {
                    // E.g. out of file descriptors: do not spin.
                    warn!(node = %shared.our_id, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    connections.shutdown().await;
}

async fn inbound(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    addr: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let handshake = timeout(
        shared.limits.handshake_timeout,
        handshake::respond(&mut stream, &shared.local),
    )
    .await;
    let session = match handshake {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => return shared.refuse(e.reason, addr, &e.detail),
        Err(_) => return shared.refuse(RefusalReason::Timeout, addr, "handshake deadline"),
    };
    drop(permit);
    let Some(peer) = shared.peers.get(&session.peer).cloned() else {
        return shared.refuse(
            RefusalReason::NotAPeer,
            addr,
            &format!("{} is not a configured peer", session.peer),
        );
    };
    // One inbound connection per peer: the newest wins (the older may be half-dead).
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    let generation = peer.inbound_generation.fetch_add(1, Ordering::SeqCst) + 1;
    drop(lock(&peer.inbound_kill).replace(kill_tx));
    let resume = lock(&peer.inn).on_handshake(session.peer_incarnation);
    let Session {
        sender, receiver, ..
    } = session;
    let (read_half, write_half) = stream.into_split();
    let (ack_tx, ack_rx) = watch::channel(resume);
    peer.counters
        .inbound_connected
        .store(true, Ordering::Relaxed);
    info!(node = %shared.our_id, peer = %peer.id, peer_addr = %addr, resume, "inbound link up");
    let end = tokio::select! {
        end = inbound_reader(&shared, &peer, read_half, receiver, ack_tx) => end,
        end = inbound_writer(&shared.limits, write_half, sender, ack_rx) => end,
        _ = kill_rx => LinkEnd::Closed("superseded by a newer connection".into()),
    };
    if peer.inbound_generation.load(Ordering::SeqCst) == generation {
        peer.counters
            .inbound_connected
            .store(false, Ordering::Relaxed);
    }
    match end {
        LinkEnd::Violation(detail) => shared.violation(&peer, addr, &detail),
        LinkEnd::Closed(detail) => {
            debug!(node = %shared.our_id, peer = %peer.id, detail, "inbound link closed")
        }
        LinkEnd::Stopped => {}
    }
}

async fn inbound_reader(
    shared: &Shared,
    peer: &Peer,
    reader: OwnedReadHalf,
    mut cipher: RecvCipher,
    acks: watch::Sender<u64>,
) -> LinkEnd {
    let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
    let mut reassembler = Reassembler::new(shared.limits.max_frame_size);
    let mut record = Vec::new();
    let mut budget = READ_BUDGET;
    loop {
        match timeout(
            shared.limits.idle_timeout,
            read_record(&mut reader, &mut record, NOISE_MAX_MESSAGE),
        )
        .await
        {
            Err(_) => return closed("idle timeout"),
            Ok(Err(e)) => return record_end(e),
            Ok(Ok(())) => {}
        }
        let plaintext = match cipher.open(&record) {
            Ok(plaintext) => plaintext,
            Err(e) => return violation(format!("undecryptable record: {e}")),
        };
        let complete = match decode_link_message(plaintext) {
            Ok(LinkMessage::Ping) => None,
            Ok(LinkMessage::Data(chunk)) => match reassembler.push(chunk) {
                Ok(complete) => complete,
                Err(e) => return violation(e),
            },
            Ok(other) => return violation(format!("unexpected {other:?} from the dialer")),
            Err(e) => return violation(e),
        };
        if let Some((seq, payload)) = complete {
            if let Err(end) = deliver(shared, peer, seq, payload, &acks).await {
                return end;
            }
            budget -= 1;
            if budget == 0 {
                budget = READ_BUDGET;
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Deliver frame `seq` of `peer` if it is the next one; waits for `payload.len()` bytes of the
/// receive budget, then for a slot in the incoming channel (not reading the socket meanwhile:
/// TCP backpressure).
async fn deliver(
    shared: &Shared,
    peer: &Peer,
    seq: u64,
    payload: Bytes,
    acks: &watch::Sender<u64>,
) -> Result<(), LinkEnd> {
    let classify = |arrival: Arrival| match arrival {
        Arrival::Next => Ok(true),
        Arrival::Duplicate => {
            bump(&peer.counters.duplicates_dropped, 1);
            Ok(false)
        }
        Arrival::Gap => Err(violation(format!("frame {seq} out of order"))),
    };
    let arrival = lock(&peer.inn).classify(seq);
    if !classify(arrival)? {
        return Ok(());
    }
    // The reassembler caps frames at max_frame_size (≤ 16 MiB, and ≤ incoming_max_bytes by
    // check_config), so the conversion succeeds and the acquisition can complete.
    let bytes = u32::try_from(payload.len())
        .map_err(|_| violation(format!("frame {seq} exceeds the receive budget")))?;
    let budget = &shared.incoming_budget;
    let budget_permit = budget
        .permits
        .clone()
        .acquire_many_owned(bytes)
        .await
        .map_err(|_| LinkEnd::Stopped)?;
    let hold = BudgetHold::new(budget, payload.len(), budget_permit);
    let permit = shared
        .incoming
        .reserve()
        .await
        .map_err(|_| LinkEnd::Stopped)?;
    // Re-check under the lock: another connection of this peer may have delivered it meanwhile.
    let mut link = lock(&peer.inn);
    if !classify(link.classify(seq))? {
        return Ok(());
    }
    link.delivered(seq);
    // Counted before the application can see the frame.
    bump(&peer.counters.frames_received, 1);
    bump(&peer.counters.bytes_received, payload.len() as u64);
    permit.send(Incoming {
        from: peer.id,
        payload,
        _budget: Arc::new(hold),
    });
    acks.send_replace(link.next_expected());
    Ok(())
}

/// The acceptor's writer: the `Resume` record, then cumulative acks (also as keepalive).
async fn inbound_writer(
    limits: &NetLimits,
    mut writer: OwnedWriteHalf,
    mut cipher: SendCipher,
    mut acks: watch::Receiver<u64>,
) -> LinkEnd {
    let mut out = Vec::new();
    let resume = *acks.borrow_and_update();
    let mut message = encode_control(true, resume);
    loop {
        out.clear();
        if let Err(e) = cipher.seal(&[&message], &mut out) {
            return closed(e);
        }
        if let Err(e) = writer.write_all(&out).await {
            return closed(e);
        }
        // Ack as soon as something was delivered, or repeat the ack as a keepalive.
        if let Ok(Err(_)) = timeout(limits.keepalive_interval, acks.changed()).await {
            return closed("reader ended");
        }
        message = encode_control(false, *acks.borrow_and_update());
    }
}

enum DialError {
    /// Could not connect or the connection failed before authentication finished.
    Unreachable(String),
    /// The peer failed authentication.
    Refused(HandshakeError),
    /// The authenticated peer sent a bad resume record.
    Violation(String),
}

async fn connect(shared: &Shared, peer: &Peer) -> Result<(TcpStream, Session, u64), DialError> {
    let limits = &shared.limits;
    let mut stream = match timeout(limits.connect_timeout, TcpStream::connect(peer.addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(DialError::Unreachable(e.to_string())),
        Err(_) => return Err(DialError::Unreachable("connect timeout".into())),
    };
    let _ = stream.set_nodelay(true);
    let established = timeout(limits.handshake_timeout, async {
        let mut session = handshake::initiate(&mut stream, &shared.local, peer.id)
            .await
            .map_err(|e| match e.reason {
                RefusalReason::Closed | RefusalReason::Io => DialError::Unreachable(e.to_string()),
                _ => DialError::Refused(e),
            })?;
        let mut record = Vec::new();
        read_record(&mut stream, &mut record, MAX_CONTROL_RECORD)
            .await
            .map_err(|e| match e {
                RecordError::Frame(e) => DialError::Violation(e.to_string()),
                other => DialError::Unreachable(other.to_string()),
            })?;
        let plaintext = session
            .receiver
            .open(&record)
            .map_err(|e| DialError::Violation(e.to_string()))?;
        match decode_link_message(plaintext) {
            Ok(LinkMessage::Resume { next_expected }) => Ok((session, next_expected)),
            other => Err(DialError::Violation(format!(
                "expected a resume record, got {other:?}"
            ))),
        }
    })
    .await;
    match established {
        Ok(Ok((session, resume))) => Ok((stream, session, resume)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(DialError::Refused(HandshakeError::new(
            RefusalReason::Timeout,
            "handshake deadline",
        ))),
    }
}

/// Exponential backoff with jitter: each delay is uniform in `[d/2, d]`, `d` doubling from
/// `initial` up to `max` after each failure.
struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    rng: StdRng,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = d / 2;
        half + half.mul_f64(self.rng.gen::<f64>())
    }

    fn reset(&mut self) {
        self.current = self.initial;
    }
}

async fn dialer(shared: Arc<Shared>, peer: Arc<Peer>, rng: StdRng) {
    let limits = &shared.limits;
    let mut backoff = Backoff {
        initial: limits.backoff_initial,
        max: limits.backoff_max.max(limits.backoff_initial),
        current: limits.backoff_initial,
        rng,
    };
    let mut connected_before = false;
    loop {
        match connect(&shared, &peer).await {
            Ok((stream, session, resume)) => {
                backoff.reset();
                let start = lock(&peer.out).resume(resume);
                if let Ok(Resume::Renumbered(at)) = start {
                    warn!(node = %shared.our_id, peer = %peer.id, at,
                        "peer knows a later position of our incarnation (restarted without its \
                         link state?): queue renumbered, frames of the earlier run are lost");
                }
                match start.map(Resume::seq) {
                    Ok(cursor) => {
                        if connected_before {
                            bump(&peer.counters.reconnects, 1);
                        }
                        connected_before = true;
                        let end = outbound_session(&shared, &peer, stream, session, cursor).await;
                        match end {
                            LinkEnd::Violation(detail) => {
                                shared.violation(&peer, peer.addr, &detail)
                            }
                            LinkEnd::Closed(detail) => {
                                debug!(node = %shared.our_id, peer = %peer.id, detail,
                                    "outbound link closed")
                            }
                            LinkEnd::Stopped => {}
                        }
                    }
                    Err(e) => shared.violation(&peer, peer.addr, &e.to_string()),
                }
            }
            Err(DialError::Refused(e)) => shared.refuse(e.reason, peer.addr, &e.detail),
            Err(DialError::Violation(detail)) => shared.violation(&peer, peer.addr, &detail),
            Err(DialError::Unreachable(detail)) => {
                debug!(node = %shared.our_id, peer = %peer.id, detail, "dial failed")
            }
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

async fn outbound_session(
    shared: &Shared,
    peer: &Peer,
    stream: TcpStream,
    session: Session,
    cursor: u64,
) -> LinkEnd {
    let (read_half, write_half) = stream.into_split();
    peer.counters
        .outbound_connected
        .store(true, Ordering::Relaxed);
    info!(node = %shared.our_id, peer = %peer.id, resume_at = cursor, "outbound link up");
    let end = tokio::select! {
        end = outbound_writer(shared, peer, write_half, session.sender, cursor) => end,
        end = outbound_reader(shared, peer, read_half, session.receiver) => end,
    };
    peer.counters
        .outbound_connected
        .store(false, Ordering::Relaxed);
    end
}

/// The dialer's writer: queued frames from `cursor` on, chunked and sealed, in batches.
async fn outbound_writer(
    shared: &Shared,
    peer: &Peer,
    mut writer: OwnedWriteHalf,
    mut cipher: SendCipher,
    mut cursor: u64,
) -> LinkEnd {
    let mut out = Vec::new();
    loop {
        out.clear();
        while out.len() < WRITE_BATCH_BYTES {
            let next = lock(&peer.out).next_to_send(&mut cursor);
            let Some((seq, payload, retransmit)) = next else {
                break;
            };
            // Frames are at most MAX_FRAME_SIZE (16 MiB) bytes, so lengths fit a u32.
            let total = payload.len() as u32;
            for (offset, len) in chunk_ranges(payload.len(), MAX_CHUNK_PAYLOAD) {
                let header = encode_data_header(seq, total, offset as u32);
                if let Err(e) = cipher.seal(&[&header, &payload[offset..offset + len]], &mut out) {
                    return closed(e);
                }
            }
            cursor += 1;
            bump(&peer.counters.frames_sent, 1);
            bump(&peer.counters.bytes_sent, payload.len() as u64);
            if retransmit {
                bump(&peer.counters.frames_retransmitted, 1);
            }
        }
        if out.is_empty() {
            // Nothing queued: wait for a frame, or send a keepalive.
            if timeout(shared.limits.keepalive_interval, peer.out_ready.notified())
                .await
                .is_ok()
            {
                continue;
            }
            if let Err(e) = cipher.seal(&[&encode_ping()], &mut out) {
                return closed(e);
            }
        }
        if let Err(e) = writer.write_all(&out).await {
            return closed(e);
        }
        if out.capacity() > 4 * WRITE_BATCH_BYTES {
            // Do not keep a buffer sized for one large frame.
            out = Vec::new();
        }
    }
}

/// The dialer's reader: acknowledgements and keepalives from the acceptor.
async fn outbound_reader(
    shared: &Shared,
    peer: &Peer,
    reader: OwnedReadHalf,
    mut cipher: RecvCipher,
) -> LinkEnd {
    let mut reader = BufReader::new(reader);
    let mut record = Vec::new();
    loop {
        match timeout(
            shared.limits.idle_timeout,
            read_record(&mut reader, &mut record, MAX_CONTROL_RECORD),
        )
        .await
        {
            Err(_) => return closed("idle timeout"),
            Ok(Err(e)) => return record_end(e),
            Ok(Ok(())) => {}
        }
        let plaintext = match cipher.open(&record) {
            Ok(plaintext) => plaintext,
            Err(e) => return violation(format!("undecryptable record: {e}")),
        };
        match decode_link_message(plaintext) {
            Ok(LinkMessage::Ack { next_expected }) => match lock(&peer.out).ack(next_expected) {
                Ok(released) => bump(&peer.counters.frames_acked, released as u64),
                Err(e) => return violation(e),
            },
            Ok(LinkMessage::Ping) => {}
            Ok(other) => return violation(format!("unexpected {other:?} from the acceptor")),
            Err(e) => return violation(e),
        }
    }
}
