//! The replicated key-value service inside a replica: the client port, admission of client
//! requests into the order, execution of ordered requests and the routing of signed replies.
//!
//! - **Client port** (`[service] client_listen`): plain TCP speaking `maftia_client::wire`.
//!   Requests are signed by their clients and replies carry threshold signature shares, so the
//!   port needs no link authentication; replies are **not** confidential on the wire. At most
//!   [`ServiceConfig::max_connections`] connections; each has a bounded write queue (a client
//!   that does not read loses replies, never the replica's memory) and an idle timeout.
//! - **Admission** ([`ReplicationManager::admit`]): size limit, signature, client list, and a
//!   per-client token bucket ([`ServiceConfig::client_rate`] requests per second, burst
//!   [`ServiceConfig::client_burst`]). A retry of an executed request is answered from the reply
//!   cache without being ordered again. An admitted request is a local input of the atomic
//!   broadcast (logged before it is proposed, like every input).
//! - **Execution**: every delivered request is executed by the [`ReplicationManager`] in
//!   delivery order (it re-checks everything, deterministically: a Byzantine replica may propose
//!   anything), and the reply share goes to the client's connections at this replica.
//! - **Durability**: the state is a function of the delivered sequence, which the
//!   [`crate::durable::DurableReplica`] stores; on start the replica re-executes the stored
//!   deliveries before it serves anyone ([`Service::recover`]).
use crate::checkpoint::{
    CheckpointEvidence, CheckpointMessage, Checkpointer, Transfer, TransferError,
};
use crate::durable::{decode_abc_delivery, DurableError, DurableReplica};
use crate::metrics;
use crate::node::{AnswerLimit, ReplicaProtocol};
use maftia_client::wire::{self, ClientMessage, Refusal, ReplicaMessage};
use maftia_core::NodeId;
use maftia_crypto::hash::Digest;
use maftia_crypto::identity::IdentityPublicKey;
use maftia_smr::kv::KvStore;
use maftia_smr::replica::{Admission, AdmitError, ReplicationManager};
use maftia_smr::request::{ReplyShare, RequestError, MAX_SIGNED_REQUEST};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

/// Frames queued for one client connection; beyond, replies to it are dropped.
const CONNECTION_QUEUE: usize = 256;
/// A client connection with nothing to read for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Connections remembered per client for routing its replies (the most recent ones).
const ROUTES_PER_CLIENT: usize = 4;
/// Requests waiting between the connection tasks and the replica loop.
const CLIENT_EVENT_QUEUE: usize = 4096;
/// Deliveries re-executed at a time during recovery.
const RECOVERY_CHUNK: u64 = 256;
/// A peer's request for our checkpoint is answered at most once per this interval.
const FETCH_ANSWER_INTERVAL: Duration = Duration::from_secs(2);

/// What the replica loop does after a checkpoint message.
pub enum CheckpointAction {
    None,
    /// Send these control-frame bytes back to the sender.
    Send(Vec<u8>),
    /// The service installed this transfer: rebase the log and the protocol on it.
    Install(Box<Transfer>),
    /// Evidence against the sender.
    Evidence(CheckpointEvidence),
}

/// The `[service]` table of the replica configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The client port.
    pub client_listen: SocketAddr,
    /// The service's authorised clients (`maftia_client::files::ClientListFile`).
    pub clients_file: PathBuf,
    /// Requests per second admitted per client (token bucket rate).
    #[serde(default = "default_client_rate")]
    pub client_rate: u32,
    /// Token bucket size per client.
    #[serde(default = "default_client_burst")]
    pub client_burst: u32,
    /// Client connections served at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl ServiceConfig {
    /// A service on `client_listen` for the clients of `clients_file`, with default limits.
    pub fn new(client_listen: SocketAddr, clients_file: PathBuf) -> ServiceConfig {
        ServiceConfig {
            client_listen,
            clients_file,
            client_rate: default_client_rate(),
            client_burst: default_client_burst(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_client_rate() -> u32 {
    2000
}
fn default_client_burst() -> u32 {
    500
}
fn default_max_connections() -> usize {
    1024
}

/// What connection tasks tell the replica loop.
pub enum ClientEvent {
    Opened {
        conn: u64,
        replies: mpsc::Sender<Vec<u8>>,
    },
    Request {
        conn: u64,
        /// The request's sequence number, for refusals (the client matches them by it).
        seq: u64,
        request: Vec<u8>,
    },
    Closed {
        conn: u64,
    },
}

struct TokenBucket {
    tokens: f64,
    last: Instant,
}

/// The service state the replica loop owns.
pub struct Service {
    manager: ReplicationManager<KvStore>,
    checkpointer: Checkpointer,
    /// Answers to peers' `Fetch` requests (a transfer is large: at most one per interval each).
    fetch_answers: AnswerLimit,
    connections: BTreeMap<u64, mpsc::Sender<Vec<u8>>>,
    routes: BTreeMap<IdentityPublicKey, VecDeque<u64>>,
    buckets: BTreeMap<IdentityPublicKey, TokenBucket>,
    rate: f64,
    burst: f64,
    /// Byzantine mode `intruded` only: replies are lies (see [`lie`]).
    lying: bool,
}

/// An admitted request, ready to become an input of the order.
pub struct Admitted {
    pub conn: u64,
    pub seq: u64,
    pub bytes: Vec<u8>,
}

impl Service {
    pub fn new(
        mut manager: ReplicationManager<KvStore>,
        checkpointer: Checkpointer,
        config: &ServiceConfig,
    ) -> Service {
        manager.time_signing(crate::metrics::monotonic_nanos);
        Service {
            manager,
            checkpointer,
            fetch_answers: AnswerLimit::new(FETCH_ANSWER_INTERVAL),
            connections: BTreeMap::new(),
            routes: BTreeMap::new(),
            buckets: BTreeMap::new(),
            rate: f64::from(config.client_rate.max(1)),
            burst: f64::from(config.client_burst.max(1)),
            lying: false,
        }
    }

    /// Rebuild the state after a restart: install the checkpoint the log is based on, if any,
    /// then re-execute the stored deliveries, without replying.
    pub fn recover(
        &mut self,
        replica: &DurableReplica<ReplicaProtocol>,
        base: Option<&Transfer>,
    ) -> Result<u64, anyhow::Error> {
        if let Some(transfer) = base {
            self.install(transfer)
                .map_err(|e| anyhow::anyhow!("the stored checkpoint does not verify: {e}"))?;
        }
        let mut height = replica.base_height();
        let mut executed = 0u64;
        while height < replica.height() {
            let end = height.saturating_add(RECOVERY_CHUNK).min(replica.height());
            for (h, encoded) in replica.stored_deliveries(height, end)? {
                let (round, requests) = decode_abc_delivery(&encoded).ok_or_else(|| {
                    DurableError::Corrupt(format!("stored delivery {h} does not decode"))
                })?;
                for request in &requests {
                    self.manager.execute(request);
                    executed += 1;
                }
                // The chain is only needed for checkpoints, which recovery does not take.
                self.checkpointer
                    .delivered(&self.manager, round, &requests, h + 1, [0; 32], false);
            }
            height = end;
        }
        Ok(executed)
    }

    /// Execute one delivery (`round`'s requests, `height` and `chain` after it) and send the
    /// reply shares; at a checkpoint height, returns the checkpoint shares to send to the peers.
    pub fn deliver(
        &mut self,
        round: u64,
        requests: &[Vec<u8>],
        height: u64,
        chain: Digest,
    ) -> Option<CheckpointMessage> {
        for request in requests {
            let (started, signing) = (metrics::monotonic_nanos(), self.manager.signing_nanos());
            let execution = self.manager.execute(request);
            let signed = self.manager.signing_nanos().saturating_sub(signing);
            // Execution is the whole call minus the signing inside it.
            metrics::add_time("execution", started.saturating_add(signed));
            metrics::add_nanos("certification", signed);
            if let Some(reply) = execution.reply {
                self.reply(reply);
            }
        }
        let started = metrics::monotonic_nanos();
        let shares =
            self.checkpointer
                .delivered(&self.manager, round, requests, height, chain, true);
        metrics::add_time("checkpoint", started);
        shares
    }

    /// Verify a transfer and install its service state (the caller then rebases the log and the
    /// protocol). On error nothing changed.
    pub fn install(&mut self, transfer: &Transfer) -> Result<(), TransferError> {
        self.checkpointer.install(transfer, &mut self.manager)
    }

    /// Handle a checkpoint message from peer `from` at our `height`.
    pub fn checkpoint_message(
        &mut self,
        from: u16,
        message: CheckpointMessage,
        height: u64,
        catching_up: bool,
    ) -> CheckpointAction {
        match message {
            CheckpointMessage::Shares {
                position,
                state,
                ordering,
            } => match self.checkpointer.shares(from, position, *state, *ordering) {
                Some(evidence) => CheckpointAction::Evidence(evidence),
                None => CheckpointAction::None,
            },
            CheckpointMessage::Fetch { height: theirs } => {
                let Some(stable) = self.checkpointer.stable() else {
                    return CheckpointAction::None;
                };
                // Small gaps are closed by re-sending recent frames; a transfer is for replicas
                // further behind than atomic broadcast keeps rounds for.
                if stable.position.height
                    <= theirs.saturating_add(maftia_broadcast::abc::ROUND_WINDOW)
                {
                    return CheckpointAction::None;
                }
                if !self.fetch_answers.due(NodeId(from)) {
                    return CheckpointAction::None;
                }
                CheckpointAction::Send(
                    CheckpointMessage::Transfer(Box::new(stable.clone())).encode(),
                )
            }
            CheckpointMessage::Transfer(transfer) => {
                if !catching_up || transfer.position.height <= height {
                    return CheckpointAction::None;
                }
                match self.install(&transfer) {
                    Ok(()) => CheckpointAction::Install(transfer),
                    Err(e) => {
                        CheckpointAction::Evidence(CheckpointEvidence::BadTransfer(e.to_string()))
                    }
                }
            }
        }
    }

    /// Handle an event from a connection task; returns a request to order, if admitted.
    pub fn client_event(&mut self, event: ClientEvent) -> Option<Admitted> {
        match event {
            ClientEvent::Opened { conn, replies } => {
                self.connections.insert(conn, replies);
                None
            }
            ClientEvent::Closed { conn } => {
                self.connections.remove(&conn);
                None
            }
            ClientEvent::Request { conn, seq, request } => self.admit(conn, seq, request),
        }
    }

    fn admit(&mut self, conn: u64, seq: u64, request: Vec<u8>) -> Option<Admitted> {
        let refuse = |service: &Service, seq: u64, reason: Refusal| {
            service.send(conn, &ReplicaMessage::Refused { seq, reason });
        };
        let started = metrics::monotonic_nanos();
        let admission = self.manager.admit(&request);
        metrics::add_time("admission", started);
        match admission {
            Ok(Admission::Order(signed)) => {
                self.route(signed.client, conn);
                if !self.take_token(signed.client) {
                    refuse(self, signed.seq, Refusal::RateLimited);
                    return None;
                }
                Some(Admitted {
                    conn,
                    seq: signed.seq,
                    bytes: request,
                })
            }
            Ok(Admission::Executed(reply)) | Ok(Admission::Stale(reply)) => {
                self.route(reply.client, conn);
                self.send(conn, &ReplicaMessage::Reply(reply));
                None
            }
            Err(AdmitError::UnknownClient) => {
                refuse(self, seq, Refusal::UnknownClient);
                None
            }
            Err(AdmitError::Request(RequestError::BadSignature)) => {
                refuse(self, seq, Refusal::BadSignature);
                None
            }
            Err(AdmitError::Request(RequestError::TooLarge { size, limit })) => {
                refuse(
                    self,
                    seq,
                    Refusal::TooLarge {
                        size: size as u64,
                        limit: limit as u64,
                    },
                );
                None
            }
            Err(AdmitError::Request(RequestError::Malformed(message))) => {
                refuse(self, seq, Refusal::Malformed(message));
                None
            }
        }
    }

    /// The service part of the replica's status.
    pub fn status(&self) -> crate::management::ServiceStatus {
        crate::management::ServiceStatus {
            executed: self.manager.executed(),
            keys: self.manager.state().len() as u64,
            checkpoint: self.checkpointer.stable().map(|t| {
                (
                    t.position.height,
                    t.position.executed,
                    hex::encode(t.state_certificate.digest),
                )
            }),
        }
    }

    /// Checkpoint evidence found against replicas other than a message's sender.
    pub fn take_checkpoint_evidence(&mut self) -> Vec<(u16, CheckpointEvidence)> {
        self.checkpointer.take_evidence()
    }

    /// Byzantine mode `intruded`: lie to clients (see [`Checkpointer::lie`]).
    pub fn lie_to_clients(&mut self, lying: bool) {
        self.lying = lying;
    }

    /// The order refused an admitted request (its queue is full).
    pub fn busy(&self, admitted: &Admitted) {
        self.send(
            admitted.conn,
            &ReplicaMessage::Refused {
                seq: admitted.seq,
                reason: Refusal::Busy,
            },
        );
    }

    fn reply(&mut self, mut reply: ReplyShare) {
        let Some(conns) = self.routes.get(&reply.client) else {
            return;
        };
        if self.lying {
            reply = self.checkpointer.lie(reply);
        }
        let client = reply.client;
        let Ok(frame) = wire::encode_replica(&ReplicaMessage::Reply(reply)) else {
            return;
        };
        let mut dead = Vec::new();
        for conn in conns {
            match self.connections.get(conn) {
                Some(tx) => {
                    let _ = tx.try_send(frame.clone());
                }
                None => dead.push(*conn),
            }
        }
        if !dead.is_empty() {
            if let Some(conns) = self.routes.get_mut(&client) {
                conns.retain(|c| !dead.contains(c));
            }
        }
    }

    fn route(&mut self, client: IdentityPublicKey, conn: u64) {
        let conns = self.routes.entry(client).or_default();
        if !conns.contains(&conn) {
            conns.push_back(conn);
            while conns.len() > ROUTES_PER_CLIENT {
                conns.pop_front();
            }
        }
    }

    fn take_token(&mut self, client: IdentityPublicKey) -> bool {
        let now = Instant::now();
        let bucket = self.buckets.entry(client).or_insert(TokenBucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn send(&self, conn: u64, message: &ReplicaMessage) {
        if let (Some(tx), Ok(frame)) = (self.connections.get(&conn), wire::encode_replica(message))
        {
            let _ = tx.try_send(frame);
        }
    }
}

/// The channel from connection tasks to the replica loop.
pub fn client_events() -> (mpsc::Sender<ClientEvent>, mpsc::Receiver<ClientEvent>) {
    mpsc::channel(CLIENT_EVENT_QUEUE)
}

/// Accept client connections until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    events: mpsc::Sender<ClientEvent>,
    mut stop: watch::Receiver<bool>,
    max_connections: usize,
) {
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    let next_conn = AtomicU64::new(0);
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Over the connection limit: close at once.
            drop(stream);
            continue;
        };
        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
        let events = events.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            connection(conn, stream, events, stop).await;
            drop(permit);
        });
    }
}

async fn connection(
    conn: u64,
    stream: TcpStream,
    events: mpsc::Sender<ClientEvent>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CONNECTION_QUEUE);
    if events
        .send(ClientEvent::Opened {
            conn,
            replies: tx.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    let writer_task = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if wire::write_frame(&mut writer, &frame).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    let max = MAX_SIGNED_REQUEST + 1024;
    loop {
        let frame = tokio::select! {
            _ = stop.changed() => break,
            read = tokio::time::timeout(IDLE_TIMEOUT, wire::read_frame(&mut reader, max)) => read,
        };
        let payload = match frame {
            Ok(Ok(Some(payload))) => payload,
            // Idle, closed, or a framing error (over-long prefix, truncated frame): hang up.
            _ => break,
        };
        match wire::decode_client(&payload) {
            Ok(ClientMessage::Request(request)) => {
                let event = ClientEvent::Request {
                    conn,
                    seq: request.seq,
                    request: request.encode(),
                };
                if events.try_send(event).is_err() {
                    let refusal = ReplicaMessage::Refused {
                        seq: request.seq,
                        reason: Refusal::Busy,
                    };
                    if let Ok(frame) = wire::encode_replica(&refusal) {
                        let _ = tx.try_send(frame);
                    }
                }
            }
            Err(e) => {
                let refusal = ReplicaMessage::Refused {
                    seq: 0,
                    reason: Refusal::Malformed(e.to_string()),
                };
                if let Ok(frame) = wire::encode_replica(&refusal) {
                    let _ = tx.try_send(frame);
                }
            }
        }
    }
    let _ = events.send(ClientEvent::Closed { conn }).await;
    drop(tx);
    let _ = writer_task.await;
}
