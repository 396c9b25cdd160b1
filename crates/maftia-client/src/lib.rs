//! maftia-client: the async client of a maftia replicated service.
//!
//! **What it guarantees.** [`Client::invoke`] returns a result only with a [`ReplyCertificate`]:
//! `f + 1` valid Reply signature shares on the same `(service, client, seq, result)`, combined
//! into one BLS signature that verifies under the service's single Reply public key. Since at
//! most `f` replicas are Byzantine, at least one signer is correct and executed the request in
//! the agreed order, so the result is the one every correct replica computed (COCA, Zhou,
//! Schneider and van Renesse 2002, §3: a client trusts the service, never one server). A
//! Byzantine replica that sends a different result, an invalid share or garbage cannot make
//! the client accept a wrong answer; when it is caught it is reported as a culprit
//! ([`Certified::culprits`]). Requests are signed with the client's Ed25519 key for this
//! service only ([`ServiceId`]), so they cannot be forged, altered or replayed to another
//! service.
//!
//! **Assumptions.** At most `f` of the `n` replicas are faulty; the group file is authentic.
//! Nothing is assumed of the network (see [`wire`]): it may drop, delay, read or forge traffic,
//! which costs availability, never correctness. Liveness needs `f + 1` correct replicas that
//! the client can reach before its timeout. Replies are not confidential on the wire.
//!
//! **How it works.** One TCP connection per replica, each owned by a background task that
//! connects lazily (and again after any failure), so a dead or stalled replica never blocks
//! the others. A request is signed once per sequence number and sent to every replica; replies
//! go through a [`ReplyCollector`] (which combines optimistically and checks shares one by one
//! only if the combination fails); replicas that have not answered get the request again every
//! `retry_interval` (replicas deduplicate retries and resend their cached reply). A certified
//! `StaleSequence { last }` (this key's counter is behind the service's, e.g. after a restart
//! within the same microsecond) makes the client re-sign with `last + 1` and go on.
//!
//! **Failures.** After the timeout: [`ClientError::Unreachable`] if fewer than `f + 1`
//! replicas could be reached (it comes early, after one full retry interval, when enough
//! replicas keep refusing or dropping connections that `f + 1` can no longer be reached);
//! [`ClientError::Refused`] if every replica that answered refused the request (it comes early
//! when `f + 1` replicas refuse it for a reason a retry cannot fix, such as an unknown client
//! key); [`ClientError::Unverifiable`] if replies came but no certificate formed.
//!
//! **Costs.** Per request: one Ed25519 signature (≈ 19 µs), `n` frames out (more on retries),
//! and on the optimistic path one BLS combination and one verification (≈ 1.3 ms, two
//! pairings); with `b` bad shares among the first `f + 1`, `f + 1 + b` share checks more.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod files;
pub mod wire;

use files::{ClientKeyFile, ClusterFile, FileError};
use maftia_crypto::bls::{BlsPublicKeySet, KeySetId};
use maftia_crypto::identity::{IdentityKey, IdentityPublicKey};
use maftia_crypto::keygen::GroupPublic;
use maftia_smr::kv::{decode_reply, encode_request, KvReply, KvRequest};
use maftia_smr::request::{
    ReplyCertificate, ReplyCollector, ReplyShare, ServiceId, ServiceResult, SignedRequest,
    MAX_OPERATION,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::io::BufReader;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::debug;
use wire::{
    decode_replica, encode_client, read_frame, write_frame, ClientMessage, Refusal, ReplicaMessage,
    WireError, MAX_REPLICA_FRAME,
};

/// Default time [`Client::invoke`] waits for a certified reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default interval between re-sends to replicas that have not answered.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Default limit on establishing one TCP connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How many times in one call a certified `StaleSequence` makes the client re-sign.
pub const MAX_STALE_RESTARTS: usize = 4;
/// Requests queued per replica connection; when full, sends to that replica are skipped (the
/// retry timer sends again).
const LINK_QUEUE: usize = 4;
/// Replica messages a connection may have waiting for the client: with the frame being read,
/// a replica holds at most `(MESSAGES_IN_FLIGHT + 1) * MAX_REPLICA_FRAME` bytes of the client's
/// memory, however fast it sends.
const MESSAGES_IN_FLIGHT: usize = 4;
/// Events buffered per replica (messages and connection changes).
const EVENTS_PER_REPLICA: usize = MESSAGES_IN_FLIGHT + 4;
/// Longest text kept from a replica's `Malformed` refusal.
const MAX_REASON_LEN: usize = 200;
/// Read buffer per connection.
const READ_BUFFER: usize = 64 << 10;

/// Everything a [`Client`] needs.
#[derive(Clone)]
pub struct ClientConfig {
    /// The service every request is signed for.
    pub service: ServiceId,
    /// The group's public keys (its Reply key set verifies certificates).
    pub group: Arc<GroupPublic>,
    /// `replicas[i]` is replica `i`'s client-port address (`group.n` of them).
    pub replicas: Vec<SocketAddr>,
    /// The client's Ed25519 key; its public key is the client id.
    pub key: IdentityKey,
    /// How long [`Client::invoke`] waits for a certified reply.
    pub timeout: Duration,
    /// Interval between re-sends to replicas that have not answered.
    pub retry_interval: Duration,
    /// Limit on establishing one connection.
    pub connect_timeout: Duration,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("service", &hex::encode(self.service.0))
            .field("n", &self.group.n)
            .field("f", &self.group.f)
            .field("replicas", &self.replicas)
            .field("client", &self.key.public())
            .field("timeout", &self.timeout)
            .field("retry_interval", &self.retry_interval)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl ClientConfig {
    /// A configuration for service `instance` of `group`, with the default timeouts.
    pub fn new(
        instance: &str,
        group: Arc<GroupPublic>,
        replicas: Vec<SocketAddr>,
        key: IdentityKey,
    ) -> ClientConfig {
        ClientConfig {
            service: ServiceId::new(&group, instance),
            group,
            replicas,
            key,
            timeout: DEFAULT_TIMEOUT,
            retry_interval: DEFAULT_RETRY_INTERVAL,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// From a cluster file (`cluster.toml`, with its group file) and a client key file.
    pub fn from_files(cluster: &Path, key: &Path) -> Result<ClientConfig, ClientError> {
        let cluster_file = ClusterFile::load(cluster)?;
        let group = cluster_file.load_group(cluster)?;
        let (_name, key) = ClientKeyFile::load(key)?;
        let mut config = ClientConfig::new(
            &cluster_file.instance,
            Arc::new(group),
            cluster_file.replicas,
            key,
        );
        if let Some(ms) = cluster_file.timeout_ms {
            config.timeout = Duration::from_millis(ms);
        }
        Ok(config)
    }
}

/// A certified reply.
#[derive(Clone, Debug)]
pub struct Certified {
    /// The result and the service's signature on it.
    pub certificate: ReplyCertificate,
    /// Replicas caught misbehaving while this request was served, with what they did.
    pub culprits: BTreeMap<u16, String>,
    /// From the call to the certificate.
    pub latency: Duration,
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("invalid client configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Files(Box<FileError>),
    #[error("the operation is {size} bytes, over the limit of {limit}")]
    RequestTooLarge { size: usize, limit: usize },
    #[error("cannot encode the request: {0}")]
    Encode(String),
    #[error(
        "the cluster is unreachable: {reached} replica(s) reached, {needed} needed for a certified reply ({})",
        list(errors)
    )]
    Unreachable {
        reached: usize,
        needed: usize,
        /// Why each replica that could not be reached could not.
        errors: BTreeMap<u16, String>,
    },
    #[error(
        "no verifiable reply: {answered} replica(s) answered but no {needed} valid matching reply shares formed a certificate{}",
        culprits_suffix(culprits)
    )]
    Unverifiable {
        answered: usize,
        needed: usize,
        /// Replicas caught sending invalid shares, differing results or garbage.
        culprits: BTreeMap<u16, String>,
    },
    #[error("the service refused the request: {reason} ({})", list(by))]
    Refused {
        /// The most common refusal.
        reason: Refusal,
        /// Every replica's refusal.
        by: BTreeMap<u16, Refusal>,
    },
    #[error("this client's key is not on the service's client list (certified by the service)")]
    UnknownClient,
    #[error(
        "the service keeps reporting this client's sequence number as stale (last executed {last})"
    )]
    StaleSequence { last: u64 },
    #[error("this client's sequence numbers are exhausted")]
    SequenceExhausted,
    #[error("the certified reply does not decode as a key-value reply: {0}")]
    BadReply(String),
}

impl From<FileError> for ClientError {
    fn from(error: FileError) -> ClientError {
        ClientError::Files(Box::new(error))
    }
}

fn list<T: fmt::Display>(items: &BTreeMap<u16, T>) -> String {
    items
        .iter()
        .map(|(replica, item)| format!("replica {replica}: {item}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn culprits_suffix(culprits: &BTreeMap<u16, String>) -> String {
    if culprits.is_empty() {
        String::new()
    } else {
        format!("; culprits: {}", list(culprits))
    }
}

/// A round's certificate and the culprits caught during the round.
type RoundOutcome = (ReplyCertificate, BTreeMap<u16, String>);

/// What a connection task reports.
#[derive(Debug)]
enum LinkEvent {
    Connected,
    /// Connecting failed, or the connection ended.
    Down(String),
    /// Boxed: events queue in a channel, most of them small.
    Message(Box<ReplicaMessage>),
    /// The replica sent something that is not a valid frame or message (a correct replica
    /// never does); the connection was closed.
    Garbage(String),
}

#[derive(Debug)]
struct Event {
    replica: u16,
    /// Which connection of this replica's task (connection changes only count when newer).
    generation: u64,
    event: LinkEvent,
    /// Held while a replica message waits for the client (see [`MESSAGES_IN_FLIGHT`]).
    _permit: Option<OwnedSemaphorePermit>,
}

/// The client's view of one replica's connection.
#[derive(Clone, Debug, Default)]
struct LinkState {
    generation: u64,
    up: bool,
    last_error: Option<String>,
}

/// A client of one replicated service. One request at a time (`&mut self`); for concurrent
/// requests use several clients (with distinct keys, or accept that requests of one key are
/// executed in sequence-number order).
pub struct Client {
    service: ServiceId,
    reply_keys: Arc<BlsPublicKeySet>,
    key: IdentityKey,
    public: IdentityPublicKey,
    n: usize,
    f: usize,
    timeout: Duration,
    retry_interval: Duration,
    links: Vec<mpsc::Sender<Arc<Vec<u8>>>>,
    tasks: Vec<JoinHandle<()>>,
    events: mpsc::Receiver<Event>,
    link_state: Vec<LinkState>,
    next_seq: u64,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("client", &self.public)
            .field("n", &self.n)
            .field("f", &self.f)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Microseconds since the UNIX epoch: a new process with the same key starts above the
/// sequence numbers an earlier one used (unless the clock went back).
fn initial_sequence() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
        .unwrap_or(1)
        .max(1)
}

impl Client {
    /// Start one connection task per replica (each connects in the background). Fails only on
    /// an inconsistent configuration, never because replicas are down. Needs a tokio runtime.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let group = &config.group;
        if config.replicas.len() != group.n {
            return Err(ClientError::Config(format!(
                "{} replica addresses for a group of {}",
                config.replicas.len(),
                group.n
            )));
        }
        let n = group.n;
        if n == 0 || n > usize::from(u16::MAX) {
            return Err(ClientError::Config(format!("group of {n} replicas")));
        }
        let reply_keys = group
            .bls
            .get(&KeySetId::Reply)
            .filter(|set| set.id == KeySetId::Reply && set.n == n && set.threshold == group.f + 1)
            .cloned()
            .map(Arc::new)
            .ok_or_else(|| {
                ClientError::Config(
                    "the group has no Reply key set with threshold f + 1 for its n replicas".into(),
                )
            })?;
        if config.timeout.is_zero() || config.retry_interval.is_zero() {
            return Err(ClientError::Config(
                "timeout and retry interval must be positive".into(),
            ));
        }
        let (event_tx, events) = mpsc::channel(EVENTS_PER_REPLICA * n);
        let mut links = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for (index, addr) in config.replicas.iter().enumerate() {
            // n <= u16::MAX, checked above.
            let replica = index as u16;
            let (tx, rx) = mpsc::channel(LINK_QUEUE);
            let link = ReplicaLink {
                replica,
                addr: *addr,
                connect_timeout: config.connect_timeout,
                write_timeout: config.timeout,
                events: event_tx.clone(),
                generation: 0,
                in_flight: Arc::new(Semaphore::new(MESSAGES_IN_FLIGHT)),
            };
            tasks.push(tokio::spawn(link.run(rx)));
            links.push(tx);
        }
        Ok(Client {
            service: config.service,
            reply_keys,
            public: config.key.public(),
            key: config.key,
            n,
            f: group.f,
            timeout: config.timeout,
            retry_interval: config.retry_interval,
            links,
            tasks,
            events,
            link_state: vec![LinkState::default(); n],
            next_seq: initial_sequence(),
        })
    }

    /// The client's id.
    pub fn public_key(&self) -> IdentityPublicKey {
        self.public
    }

    /// The service the client's requests are signed for.
    pub fn service(&self) -> ServiceId {
        self.service
    }

    /// The key set reply certificates verify under.
    pub fn reply_keys(&self) -> &Arc<BlsPublicKeySet> {
        &self.reply_keys
    }

    /// The sequence number the next request will carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Sign `operation` and send it to every replica; return once `f + 1` valid matching reply
    /// shares form a certificate. See the crate documentation for retries and errors. A
    /// certified `UnknownClient` is returned as a result (use [`Client::kv`] or inspect
    /// `certificate.result`).
    pub async fn invoke(&mut self, operation: Vec<u8>) -> Result<Certified, ClientError> {
        if operation.len() > MAX_OPERATION {
            return Err(ClientError::RequestTooLarge {
                size: operation.len(),
                limit: MAX_OPERATION,
            });
        }
        let start = Instant::now();
        let deadline = start + self.timeout;
        let mut culprits = BTreeMap::new();
        let mut seq = self.take_seq()?;
        let mut restarts = 0;
        loop {
            let (certificate, round_culprits) =
                self.run_request(seq, &operation, start, deadline).await?;
            for (replica, why) in round_culprits {
                culprits.entry(replica).or_insert(why);
            }
            let ServiceResult::StaleSequence { last } = &certificate.result else {
                return Ok(Certified {
                    certificate,
                    culprits,
                    latency: start.elapsed(),
                });
            };
            let last = *last;
            restarts += 1;
            if restarts > MAX_STALE_RESTARTS {
                return Err(ClientError::StaleSequence { last });
            }
            debug!(seq, last, "certified stale sequence number; re-signing");
            let resume = last
                .max(seq)
                .checked_add(1)
                .ok_or(ClientError::SequenceExhausted)?;
            self.next_seq = resume;
            seq = self.take_seq()?;
        }
    }

    /// Run a key-value request: encode it, [`Client::invoke`] it, decode the certified reply.
    pub async fn kv(&mut self, request: &KvRequest) -> Result<(KvReply, Certified), ClientError> {
        let operation = encode_request(request).map_err(|e| match e {
            maftia_core::codec::EncodeError::TooLarge { size, max } => {
                ClientError::RequestTooLarge { size, limit: max }
            }
            other => ClientError::Encode(other.to_string()),
        })?;
        let certified = self.invoke(operation).await?;
        match &certified.certificate.result {
            ServiceResult::Executed(bytes) => {
                let reply =
                    decode_reply(bytes).map_err(|e| ClientError::BadReply(e.to_string()))?;
                Ok((reply, certified))
            }
            ServiceResult::UnknownClient => Err(ClientError::UnknownClient),
            ServiceResult::StaleSequence { last } => {
                Err(ClientError::StaleSequence { last: *last })
            }
        }
    }

    fn take_seq(&mut self) -> Result<u64, ClientError> {
        let seq = self.next_seq;
        self.next_seq = seq.checked_add(1).ok_or(ClientError::SequenceExhausted)?;
        Ok(seq)
    }

    /// Queue `frame` for replica `replica`; skipped if its queue is full (the retry timer sends
    /// again).
    fn send_to(&self, replica: usize, frame: &Arc<Vec<u8>>) {
        if let Some(link) = self.links.get(replica) {
            if link.try_send(frame.clone()).is_err() {
                debug!(replica, "link queue full; request not queued this time");
            }
        }
    }

    /// One sequence number's round: send, collect, re-send, until a certificate or the
    /// deadline.
    async fn run_request(
        &mut self,
        seq: u64,
        operation: &[u8],
        start: Instant,
        deadline: Instant,
    ) -> Result<RoundOutcome, ClientError> {
        let request = SignedRequest::sign(&self.key, &self.service, seq, operation.to_vec());
        let frame = encode_client(&ClientMessage::Request(request)).map_err(|e| match e {
            WireError::Encode(maftia_core::codec::EncodeError::TooLarge { size, max }) => {
                ClientError::RequestTooLarge { size, limit: max }
            }
            other => ClientError::Encode(other.to_string()),
        })?;
        let frame = Arc::new(frame);
        let mut round = Round::new(
            ReplyCollector::new(self.service, self.reply_keys.clone(), self.public, seq),
            seq,
            start + self.retry_interval,
        );
        for (replica, state) in self.link_state.iter().enumerate() {
            if state.up {
                round.reached.insert(replica as u16);
            }
        }
        for replica in 0..self.n {
            self.send_to(replica, &frame);
        }
        let mut retry = tokio::time::interval_at(
            tokio::time::Instant::now() + self.retry_interval,
            self.retry_interval,
        );
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let timeout = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
        tokio::pin!(timeout);
        loop {
            enum Wake {
                Event(Option<Event>),
                Retry,
                Timeout,
            }
            let wake = tokio::select! {
                event = self.events.recv() => Wake::Event(event),
                _ = retry.tick() => Wake::Retry,
                () = &mut timeout => Wake::Timeout,
            };
            match wake {
                Wake::Event(Some(event)) => {
                    if let Some(done) = self.handle(event, &mut round)? {
                        return Ok(done);
                    }
                }
                Wake::Event(None) => {
                    // Every connection task ended (only if they were aborted from outside).
                    return Err(self.failure(round));
                }
                Wake::Retry => {
                    for replica in 0..self.n {
                        if round.awaits(replica as u16) {
                            self.send_to(replica, &frame);
                        }
                    }
                }
                Wake::Timeout => return Err(self.failure(round)),
            }
        }
    }

    /// Apply one event to the round; `Some` once certified, `Err` on an early failure.
    fn handle(
        &mut self,
        event: Event,
        round: &mut Round,
    ) -> Result<Option<RoundOutcome>, ClientError> {
        let replica = event.replica;
        let Some(state) = self.link_state.get_mut(usize::from(replica)) else {
            return Ok(None);
        };
        match event.event {
            LinkEvent::Connected => {
                if event.generation >= state.generation {
                    state.generation = event.generation;
                    state.up = true;
                }
                round.reached.insert(replica);
            }
            LinkEvent::Down(error) => {
                if event.generation >= state.generation {
                    state.generation = event.generation;
                    state.up = false;
                    state.last_error = Some(error);
                }
                round.down_at.insert(replica, Instant::now());
                if self.clearly_unreachable(round) {
                    return Err(self.unreachable(round));
                }
            }
            LinkEvent::Garbage(error) => {
                round.reached.insert(replica);
                round
                    .culprits
                    .entry(replica)
                    .or_insert_with(|| format!("sent an invalid frame: {error}"));
            }
            LinkEvent::Message(message) => {
                round.reached.insert(replica);
                return match *message {
                    ReplicaMessage::Reply(share) => Ok(self.on_share(replica, share, round)),
                    ReplicaMessage::Refused { seq, reason } => {
                        self.on_refusal(replica, seq, reason, round).map(|()| None)
                    }
                };
            }
        }
        Ok(None)
    }

    /// A reply share from `replica`: collected if it is for this round; `Some` once certified.
    fn on_share(&self, replica: u16, share: ReplyShare, round: &mut Round) -> Option<RoundOutcome> {
        if share.replica != replica {
            round.culprits.entry(replica).or_insert_with(|| {
                format!("sent a reply share labelled as replica {}", share.replica)
            });
            return None;
        }
        if share.client != self.public || share.seq != round.seq {
            // A late reply to an earlier request: not this round's business.
            return None;
        }
        round.refusals.remove(&replica);
        round.answered.insert(replica);
        match round.collector.add(share) {
            Ok(Some(certificate)) => {
                let mut culprits = round.collector.culprits().clone();
                for (replica, why) in &round.culprits {
                    culprits.entry(*replica).or_insert_with(|| why.clone());
                }
                Some((certificate, culprits))
            }
            Ok(None) => None,
            // Duplicates come from our own re-sends; the other errors are excluded above.
            Err(error) => {
                debug!(replica, %error, "reply share not collected");
                None
            }
        }
    }

    /// A refusal from `replica`; `Err` once `f + 1` replicas refused for reasons a retry cannot
    /// change (at least one of them is correct).
    fn on_refusal(
        &self,
        replica: u16,
        seq: u64,
        reason: Refusal,
        round: &mut Round,
    ) -> Result<(), ClientError> {
        if seq != round.seq || round.answered.contains(&replica) {
            return Ok(());
        }
        let reason = match reason {
            Refusal::Malformed(text) => {
                Refusal::Malformed(text.chars().take(MAX_REASON_LEN).collect())
            }
            other => other,
        };
        round.refusals.insert(replica, reason);
        let permanent = || round.refusals.values().filter(|r| !r.is_transient());
        if permanent().count() > self.f {
            return Err(ClientError::Refused {
                reason: most_common(permanent()),
                by: round.refusals.clone(),
            });
        }
        Ok(())
    }

    /// Whether, after one full retry interval, so many replicas keep failing to connect (or
    /// dropping connections) that `f + 1` can no longer be reached in this round.
    fn clearly_unreachable(&self, round: &Round) -> bool {
        let now = Instant::now();
        if now < round.fail_fast_after {
            return false;
        }
        let failing = (0..self.n as u16)
            .filter(|r| {
                !round.reached.contains(r)
                    && round
                        .down_at
                        .get(r)
                        .is_some_and(|at| *at >= round.fail_fast_after)
            })
            .count();
        self.n - failing < self.f + 1
    }

    fn unreachable(&self, round: &Round) -> ClientError {
        let errors = (0..self.n as u16)
            .filter(|r| !round.reached.contains(r))
            .map(|r| {
                let why = self
                    .link_state
                    .get(usize::from(r))
                    .and_then(|s| s.last_error.clone())
                    .unwrap_or_else(|| "no connection established yet".into());
                (r, why)
            })
            .collect();
        ClientError::Unreachable {
            reached: round.reached.len(),
            needed: self.f + 1,
            errors,
        }
    }

    /// The error for a round that ended without a certificate.
    fn failure(&self, round: Round) -> ClientError {
        if round.reached.len() < self.f + 1 {
            return self.unreachable(&round);
        }
        if round.answered.is_empty() && !round.refusals.is_empty() {
            return ClientError::Refused {
                reason: most_common(round.refusals.values()),
                by: round.refusals,
            };
        }
        let mut culprits = round.collector.culprits().clone();
        for (replica, why) in round.culprits {
            culprits.entry(replica).or_insert(why);
        }
        ClientError::Unverifiable {
            answered: round.collector.answered(),
            needed: self.f + 1,
            culprits,
        }
    }
}

/// The most frequent refusal (ties: the first in `Refusal`'s order); `Busy` if none.
fn most_common<'a>(refusals: impl Iterator<Item = &'a Refusal>) -> Refusal {
    let mut counts: BTreeMap<&Refusal, usize> = BTreeMap::new();
    for refusal in refusals {
        *counts.entry(refusal).or_default() += 1;
    }
    let mut best: Option<(&Refusal, usize)> = None;
    for (refusal, count) in counts {
        if best.is_none_or(|(_, c)| count > c) {
            best = Some((refusal, count));
        }
    }
    best.map(|(r, _)| r.clone()).unwrap_or(Refusal::Busy)
}

/// The state of one sequence number's round (every map holds at most `n` entries).
struct Round {
    collector: ReplyCollector,
    seq: u64,
    /// Replicas connected or heard from during the round.
    reached: BTreeSet<u16>,
    /// Replicas whose share for this round was collected.
    answered: BTreeSet<u16>,
    /// Each replica's latest refusal of this round.
    refusals: BTreeMap<u16, Refusal>,
    /// When each replica's connection last failed during the round.
    down_at: BTreeMap<u16, Instant>,
    /// Misbehaviour seen outside the collector (garbage, mislabelled shares).
    culprits: BTreeMap<u16, String>,
    /// Connection failures count towards failing fast only from this instant on.
    fail_fast_after: Instant,
}

impl Round {
    fn new(collector: ReplyCollector, seq: u64, fail_fast_after: Instant) -> Round {
        Round {
            collector,
            seq,
            reached: BTreeSet::new(),
            answered: BTreeSet::new(),
            refusals: BTreeMap::new(),
            down_at: BTreeMap::new(),
            culprits: BTreeMap::new(),
            fail_fast_after,
        }
    }

    /// Whether `replica` should get the request again: no share from it yet and no refusal
    /// that a retry cannot change.
    fn awaits(&self, replica: u16) -> bool {
        !self.answered.contains(&replica)
            && self
                .refusals
                .get(&replica)
                .is_none_or(Refusal::is_transient)
    }
}

/// One live connection: the write half, and the task reading the other half.
struct Connection {
    writer: OwnedWriteHalf,
    reader: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The task owning the connection to one replica.
struct ReplicaLink {
    replica: u16,
    addr: SocketAddr,
    connect_timeout: Duration,
    write_timeout: Duration,
    events: mpsc::Sender<Event>,
    generation: u64,
    /// Bounds the messages of this replica waiting for the client, across connections.
    in_flight: Arc<Semaphore>,
}

impl ReplicaLink {
    async fn run(mut self, mut frames: mpsc::Receiver<Arc<Vec<u8>>>) {
        let mut connection = self.connect().await;
        while let Some(frame) = frames.recv().await {
            if connection.as_ref().is_some_and(|c| c.reader.is_finished()) {
                connection = None;
            }
            if connection.is_none() {
                connection = self.connect().await;
            }
            let Some(live) = connection.as_mut() else {
                continue;
            };
            let written =
                tokio::time::timeout(self.write_timeout, write_frame(&mut live.writer, &frame))
                    .await;
            let error = match written {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "sending the request timed out".to_string(),
            };
            connection = None;
            self.report(LinkEvent::Down(error)).await;
        }
    }

    async fn report(&self, event: LinkEvent) {
        // A closed channel means the client is gone; the task ends with its frame queue.
        let _ = self
            .events
            .send(Event {
                replica: self.replica,
                generation: self.generation,
                event,
                _permit: None,
            })
            .await;
    }

    async fn connect(&mut self) -> Option<Connection> {
        self.generation += 1;
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    self.report(LinkEvent::Down(format!(
                        "cannot connect to {}: {e}",
                        self.addr
                    )))
                    .await;
                    return None;
                }
                Err(_) => {
                    self.report(LinkEvent::Down(format!(
                        "connecting to {} timed out after {:?}",
                        self.addr, self.connect_timeout
                    )))
                    .await;
                    return None;
                }
            };
        // Requests are small and latency matters; a failure here only costs latency.
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        self.report(LinkEvent::Connected).await;
        let reader = tokio::spawn(read_replies(
            self.replica,
            self.generation,
            reader,
            self.events.clone(),
            self.in_flight.clone(),
        ));
        Some(Connection { writer, reader })
    }
}

/// Forward every message of one connection to the client; end on the first error.
async fn read_replies(
    replica: u16,
    generation: u64,
    reader: OwnedReadHalf,
    events: mpsc::Sender<Event>,
    in_flight: Arc<Semaphore>,
) {
    let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
    let end = loop {
        match read_frame(&mut reader, MAX_REPLICA_FRAME).await {
            Ok(Some(frame)) => match decode_replica(&frame) {
                Ok(message) => {
                    drop(frame);
                    // Wait until the client has taken earlier messages of this replica; the
                    // semaphore is never closed.
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        return;
                    };
                    let event = Event {
                        replica,
                        generation,
                        event: LinkEvent::Message(Box::new(message)),
                        _permit: Some(permit),
                    };
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
                Err(e) => break LinkEvent::Garbage(e.to_string()),
            },
            Ok(None) => break LinkEvent::Down("connection closed by the replica".into()),
            Err(e @ (WireError::Io(_) | WireError::Truncated { .. })) => {
                break LinkEvent::Down(e.to_string())
            }
            Err(e) => break LinkEvent::Garbage(e.to_string()),
        }
    };
    let _ = events
        .send(Event {
            replica,
            generation,
            event: end,
            _permit: None,
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_common_refusal_wins_with_deterministic_ties() {
        let refusals = [
            Refusal::Busy,
            Refusal::UnknownClient,
            Refusal::UnknownClient,
            Refusal::BadSignature,
        ];
        assert_eq!(most_common(refusals.iter()), Refusal::UnknownClient);
        let tie = [Refusal::BadSignature, Refusal::RateLimited];
        assert_eq!(most_common(tie.iter()), Refusal::RateLimited);
        assert_eq!(most_common([].iter()), Refusal::Busy);
    }

    #[test]
    fn initial_sequence_is_microseconds_since_the_epoch() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let seq = initial_sequence();
        assert!(
            seq >= before && seq < before + 60_000_000,
            "{seq} vs {before}"
        );
    }
}
