//! `maftia node`: one replica of the asynchronous configuration, as a process.
//!
//! Wiring: keys and configuration → atomic broadcast (`maftia_broadcast::atomic::AtomicBroadcast`
//! in the configured mode, CKPS01 by default, with the group's BLS threshold key sets) inside a
//! [`DurableReplica`] (log before acting, replay on start) → `maftia_net::Network`
//! (authenticated encrypted reliable links) — plus, with a `[service]` table, the replicated
//! key-value service on a client port ([`crate::service`], checkpoints and state transfer in
//! [`crate::checkpoint`]), the loopback management endpoint ([`crate::management`]) and
//! Prometheus metrics.
//!
//! The replica loop takes events (frames from peers, submissions from `/submit`) in batches of
//! up to `ordering.event_batch`, hands a batch to the durable driver (one fsync), then sends what
//! the protocol produced. On SIGTERM or SIGINT it finishes the batch in hand, flushes the
//! database, closes the network and returns.
//!
//! **Catching up after a restart.** The network layer resets the links of a restarted node, so
//! frames in flight to or from it may be lost. On start the replica re-sends its outbox (the
//! recent frames the replay regenerated) and, if it is a restart, asks every peer for a
//! *resync*: a peer answers by re-sending its own outbox for us (at most once per
//! [`RESYNC_ANSWER_INTERVAL`] per peer, so a Byzantine peer cannot use it to amplify traffic much).
//! Control frames start with [`CONTROL_MAGIC`], which no codec frame does. The replica stays in
//! *catch-up mode* — asking again every [`RESYNC_INTERVAL`] — while its height advances or while
//! peers send it messages for rounds beyond its window (`FutureRound`: it lags); one quiet
//! interval without either ends it. Catching up this way works while the replica lags by less
//! than the peers' outboxes and atomic broadcast's round window cover; further behind, the
//! catch-up requests also ask for the peers' latest certified checkpoint, which the replica
//! verifies and installs ([`crate::checkpoint`]), then takes the rest from re-sent frames.
//!
//! **Evidence.** Every fault the protocol reports, every frame refused before logging and every
//! link-level protocol violation counts in `maftia_evidence_total{peer, kind}` and in `/status`;
//! the first one of a peer (then at most one per [`WARN_INTERVAL`]) is logged with
//! `tracing::warn!`. A run without Byzantine nodes logs no warning: `FutureRound`-style reports
//! ([`is_lag_signal`]), which honest peers cause whenever this replica lags, are counted but logged at debug level only.
use crate::checkpoint::{CheckpointMessage, Checkpointer, Transfer, CHECKPOINT_MAGIC};
use crate::config::NodeConfig;
use crate::durable::{Base, BatchOutcome, DurableReplica, Event, Outgoing};
use crate::management::{self, Shared, StatusSnapshot, Submission, SubmitOutcome};
use crate::service::{self, Admitted, CheckpointAction, ClientEvent, Service};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use maftia_broadcast::abc::AbcError;
use maftia_broadcast::atomic::{AtomicBroadcast, AtomicError, OrderingMode};
use maftia_broadcast::htabc::HtAbcError;
use maftia_broadcast::ThresholdKeys;
use maftia_core::{GroupConfig, NodeId};
use maftia_crypto::bls::{BlsThresholdSigner, KeySetId};
use maftia_crypto::hash::hash;
use maftia_crypto::keygen;
use maftia_net::{NetConfig, NetLimits, Network, Recipients};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// The protocol a replica runs.
pub type ReplicaProtocol = AtomicBroadcast<BlsThresholdSigner>;

/// First bytes of a replica-level control frame (never the start of a codec frame, "MF").
pub const CONTROL_MAGIC: &[u8; 2] = b"MC";
/// Control frame: "I restarted, re-send me your outbox".
pub const RESYNC_REQUEST: &[u8] = b"MC resync v1";
/// A replica in catch-up mode asks again every this interval.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(2);
/// A peer's resync request is answered at most once per this interval (shorter than
/// [`RESYNC_INTERVAL`], so timer jitter never makes a lagging peer wait two rounds of asking).
pub const RESYNC_ANSWER_INTERVAL: Duration = Duration::from_millis(1500);
/// Checkpoint frames, and their bytes, buffered between two batches (more are dropped; a
/// correct peer sends a few small share frames per checkpoint and a transfer only when asked).
const MAX_CHECKPOINT_FRAMES: usize = 1024;
const MAX_CHECKPOINT_BYTES: usize = 64 << 20;
/// Evidence against one peer is logged at most once per this interval.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// How often network statistics are copied into metrics and status.
const STATS_INTERVAL: Duration = Duration::from_millis(500);
/// Hash context of the data-directory owner digest.
const OWNER_CONTEXT: &str = "maftia 2026-11 node data owner";

/// Test-only misbehaviour (feature `byzantine-test-modes`), applied to outgoing frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByzantineMode {
    /// Send nothing at all.
    Silent,
    /// Replace every frame by random bytes of the same length.
    Garbage,
    /// Send every round batch twice: the real one and a second, validly signed, different one.
    Equivocate,
    /// Replace every threshold signature share by a point that is not our share.
    InvalidShares,
    /// `InvalidShares` towards replicas, and lies to clients (see `byzantine`).
    Intruded,
}

impl std::str::FromStr for ByzantineMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "silent" => Ok(ByzantineMode::Silent),
            "garbage" => Ok(ByzantineMode::Garbage),
            "equivocate" => Ok(ByzantineMode::Equivocate),
            "invalid-shares" => Ok(ByzantineMode::InvalidShares),
            "intruded" => Ok(ByzantineMode::Intruded),
            other => Err(format!(
                "unknown Byzantine mode {other:?} (silent, garbage, equivocate, invalid-shares, intruded)"
            )),
        }
    }
}

/// Options that do not come from the configuration file.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub byzantine: Option<ByzantineMode>,
    /// Accept `POST /byzantine` on the management endpoint to change the Byzantine mode while
    /// running (feature `byzantine-test-modes`; tests and `maftia demo`).
    pub byzantine_switch: bool,
}

/// A short label of a fault kind for metrics: the variant names of its `Debug` form, e.g.
/// `Mvba { round: 3, fault: Cbc(EquivocatingSend { .. }) }` → `Mvba/Cbc/EquivocatingSend`.
pub fn fault_label(debug: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let mut rest = debug;
    while let Some(start) = rest.find(|c: char| c.is_ascii_uppercase()) {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .unwrap_or(tail.len());
        let word = &tail[..end];
        // Identifiers directly preceded by a letter or digit are not words of their own, and
        // `NodeId` is a field's type, not a kind of fault.
        let preceded = rest[..start]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !preceded && word != "NodeId" && parts.len() < 4 {
            parts.push(word);
        }
        rest = &tail[end..];
    }
    let label = parts.join("/");
    label.chars().take(64).collect()
}

/// Digest naming the group and instance a data directory belongs to.
fn owner_digest(group_tag: &[u8; 32], instance: &str) -> [u8; 32] {
    hash(OWNER_CONTEXT, &[group_tag, instance.as_bytes()])
}

/// Whether a fault label is what honest peers cause when we lag behind them.
pub fn is_lag_signal(label: &str) -> bool {
    label.contains("Future") || label.contains("TooManyEarly")
}

/// Answers a peer's costly request (re-sending frames, sending a checkpoint) at most once per
/// interval, so that a Byzantine peer cannot use it to amplify traffic much.
pub struct AnswerLimit {
    interval: Duration,
    last: BTreeMap<NodeId, Instant>,
}

impl AnswerLimit {
    pub fn new(interval: Duration) -> AnswerLimit {
        AnswerLimit {
            interval,
            last: BTreeMap::new(),
        }
    }

    /// Whether `peer` may be answered now; if so, counts this answer.
    pub fn due(&mut self, peer: NodeId) -> bool {
        let now = Instant::now();
        let due = self
            .last
            .get(&peer)
            .is_none_or(|last| now.duration_since(*last) >= self.interval);
        if due {
            self.last.insert(peer, now);
        }
        due
    }
}

struct Evidence {
    counts: BTreeMap<(NodeId, String), u64>,
    last_warn: BTreeMap<NodeId, Instant>,
    /// A lag signal arrived since the last catch-up check.
    lagging: bool,
}

impl Evidence {
    fn record(&mut self, peer: NodeId, kind: String, detail: &dyn std::fmt::Debug) {
        metrics::counter!("maftia_evidence_total", "peer" => peer.0.to_string(), "kind" => kind.clone())
            .increment(1);
        if is_lag_signal(&kind) {
            self.lagging = true;
            tracing::debug!(peer = peer.0, kind = %kind, detail = ?detail, "peer is ahead of us");
            *self.counts.entry((peer, kind)).or_insert(0) += 1;
            return;
        }
        let now = Instant::now();
        let warn = self
            .last_warn
            .get(&peer)
            .is_none_or(|last| now.duration_since(*last) >= WARN_INTERVAL);
        if warn {
            self.last_warn.insert(peer, now);
            tracing::warn!(peer = peer.0, kind = %kind, detail = ?detail, "evidence of misbehaviour (further reports of this peer are rate-limited)");
        }
        *self.counts.entry((peer, kind)).or_insert(0) += 1;
    }
}

/// Load keys and configuration and build the protocol instance.
fn build_protocol(
    config: &NodeConfig,
) -> Result<(ReplicaProtocol, keygen::GroupPublic, keygen::NodeSecret)> {
    let (group, secret) =
        keygen::load_node(&config.group_file, &config.secret_file).with_context(|| {
            format!(
                "cannot load keys (group file {}, secret file {})",
                config.group_file.display(),
                config.secret_file.display()
            )
        })?;
    if secret.index != usize::from(config.id) {
        bail!(
            "the secret file {} holds the keys of node {}, but the configuration says id = {}",
            config.secret_file.display(),
            secret.index,
            config.id
        );
    }
    if config.peers.len() != group.n {
        bail!(
            "peers lists {} addresses but the group has n = {} replicas",
            config.peers.len(),
            group.n
        );
    }
    let group_config =
        GroupConfig::asynchronous(group.n, group.f).context("the group file's n and f")?;
    let keys = ThresholdKeys::from_key_files(&group_config, &group, &secret)
        .context("threshold key sets")?;
    let abc = AtomicBroadcast::new(
        group_config,
        NodeId(config.id),
        config.instance.as_bytes().to_vec(),
        keys,
        secret.identity.clone(),
        Arc::new(group.identities.clone()),
        config.ordering.abc_params(),
        config.ordering.mode(),
    )
    .context("cannot set up atomic broadcast with these ordering parameters")?;
    Ok((abc, group, secret))
}

/// Run a replica until SIGTERM or SIGINT.
pub async fn run(config: NodeConfig, options: RunOptions) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let db_path = config.data_dir.join("replica.redb");
    // The latest checkpoint installed by state transfer, from which the service state resumes.
    let base =
        tokio::task::block_in_place(|| DurableReplica::<ReplicaProtocol>::read_base(&db_path))
            .with_context(|| format!("cannot read the replica database {}", db_path.display()))?;
    let base_transfer = base
        .map(|b| Transfer::decode(&b.payload))
        .transpose()
        .context("the checkpoint stored in the replica database does not decode")?;
    let (abc, group, secret) = build_protocol(&config)?;
    let our_id = NodeId(config.id);
    let n = group.n;
    let group_tag = maftia_net::group_tag(&group);

    // Management first: a port clash is reported before any state is touched.
    let management_listener = tokio::net::TcpListener::bind(config.management)
        .await
        .with_context(|| {
            format!(
                "cannot listen on the management address {} (is another replica or program using this port?)",
                config.management
            )
        })?;

    let client_listener = match &config.service {
        Some(service) => Some(
            tokio::net::TcpListener::bind(service.client_listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on the client address {} (is another replica or program using this port?)",
                        service.client_listen
                    )
                })?,
        ),
        None => None,
    };

    let started = Instant::now();
    let (mut replica, recovery) = tokio::task::block_in_place(|| {
        DurableReplica::open(
            &db_path,
            abc,
            n,
            owner_digest(&group_tag, &config.instance),
            config.ordering.durable_options(),
        )
    })
    .with_context(|| format!("cannot open the replica database {}", db_path.display()))?;
    tracing::info!(
        id = our_id.0,
        incarnation = recovery.incarnation,
        replayed_events = recovery.replayed_events,
        height = replica.height(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "replica state loaded"
    );

    let mut service = match &config.service {
        Some(service_config) => {
            let mut service =
                build_service(&config, service_config, &group, &secret, options.byzantine)?;
            let started = Instant::now();
            let executed =
                tokio::task::block_in_place(|| service.recover(&replica, base_transfer.as_ref()))
                    .context("cannot rebuild the service state")?;
            tracing::info!(
                executed,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "service state rebuilt"
            );
            Some(service)
        }
        None => None,
    };

    let peers: BTreeMap<NodeId, std::net::SocketAddr> = config
        .peers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != usize::from(config.id))
        .map(|(i, addr)| (NodeId(i as u16), *addr))
        .collect();
    let mut net_config = NetConfig::from_keys(&group, &secret, config.listen, peers);
    net_config.limits = NetLimits::default();
    let queue_limits = (
        net_config.limits.queue_max_frames / 2,
        net_config.limits.queue_max_bytes / 2,
    );
    let (network, mut incoming) = Network::start(net_config)
        .await
        .with_context(|| format!("cannot open the replica port {}", config.listen))?;
    tracing::info!(listen = %network.local_addr(), management = %config.management, "replica up");

    let shared = Arc::new(Shared {
        status: Mutex::new(StatusSnapshot::default()),
        congested: std::sync::atomic::AtomicBool::new(false),
        max_request: config.ordering.max_request_size,
        prometheus: crate::metrics::install(),
        byzantine_switch: options.byzantine_switch.then(|| Mutex::new(None)),
    });
    let (submit_tx, mut submit_rx) = mpsc::channel::<Submission>(config.ordering.submit_queue);
    let (stop_tx, stop_rx) = watch::channel(false);
    let management_task = tokio::spawn(management::serve(
        management_listener,
        shared.clone(),
        submit_tx,
        stop_rx.clone(),
    ));
    let (client_tx, mut client_rx) = service::client_events();
    let client_task = match (client_listener, &config.service) {
        (Some(listener), Some(service_config)) => {
            tracing::info!(client_listen = %service_config.client_listen, "client port up");
            Some(tokio::spawn(service::serve(
                listener,
                client_tx,
                stop_rx.clone(),
                service_config.max_connections,
            )))
        }
        _ => {
            drop(client_tx);
            None
        }
    };

    let mut runtime = Runtime {
        network,
        our_id,
        n,
        byzantine: options.byzantine,
        identity: secret.identity.clone(),
        instance: config.instance.as_bytes().to_vec(),
        evidence: Evidence {
            counts: BTreeMap::new(),
            last_warn: BTreeMap::new(),
            lagging: false,
        },
        resync_answers: AnswerLimit::new(RESYNC_ANSWER_INTERVAL),
        checkpoint_frames: Vec::new(),
        incarnation: recovery.incarnation,
        f: group.f,
        queue_limits,
    };
    if let Some(mode) = options.byzantine {
        tracing::warn!(
            ?mode,
            "BYZANTINE TEST MODE: this replica misbehaves on purpose"
        );
    }
    for (peer, frames) in &recovery.resend {
        for frame in frames {
            runtime.send(&Outgoing {
                to: vec![*peer],
                frame: frame.clone(),
            });
        }
    }
    // Catch-up mode: after a restart, and whenever peers show we lag.
    let mut catching_up = recovery.incarnation > 1;
    let mut resync_height = replica.height();
    if catching_up {
        runtime.ask_to_catch_up(replica.height(), service.is_some());
    }
    let mut resync_tick = tokio::time::interval(RESYNC_INTERVAL);
    resync_tick.reset();
    runtime.publish(&replica, &shared, service.as_ref());

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let mut stats_tick = tokio::time::interval(STATS_INTERVAL);
    let max_batch = config.ordering.event_batch;
    loop {
        let mut events: Vec<Event<Vec<u8>>> = Vec::new();
        let mut origins: Vec<InputOrigin> = Vec::new();
        tokio::select! {
            _ = terminate.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = stats_tick.tick() => {
                runtime.switch_byzantine(&shared, service.as_mut());
                runtime.publish(&replica, &shared, service.as_ref());
                continue;
            }
            _ = resync_tick.tick() => {
                let progressed = replica.height() > resync_height;
                if runtime.evidence.lagging || (catching_up && progressed) {
                    catching_up = true;
                    runtime.evidence.lagging = false;
                    resync_height = replica.height();
                    tracing::info!(height = resync_height, "catching up: asking peers to re-send");
                    runtime.ask_to_catch_up(resync_height, service.is_some());
                } else if catching_up {
                    catching_up = false;
                    tracing::info!(height = replica.height(), "caught up");
                }
                continue;
            }
            frame = incoming.recv() => match frame {
                Some(frame) => runtime.incoming(frame, &replica, &mut events),
                None => bail!("the network layer stopped"),
            },
            submission = submit_rx.recv() => match submission {
                Some(s) => { events.push(Event::Input(s.request)); origins.push(InputOrigin::Management(s.reply)); }
                None => bail!("the management endpoint stopped"),
            },
            Some(event) = client_rx.recv(), if service.is_some() => {
                client_input(&mut service, event, &mut events, &mut origins);
            }
        }
        // Take what else is ready, up to the batch size, without waiting (control frames do not
        // become events: count every frame taken so that a flood of them cannot keep us here).
        let mut taken = 0;
        while events.len() < max_batch && taken < 4 * max_batch {
            taken += 1;
            if let Ok(frame) = incoming.try_recv() {
                runtime.incoming(frame, &replica, &mut events);
            } else if let Ok(s) = submit_rx.try_recv() {
                events.push(Event::Input(s.request));
                origins.push(InputOrigin::Management(s.reply));
            } else if let Ok(event) = client_rx.try_recv() {
                client_input(&mut service, event, &mut events, &mut origins);
            } else {
                break;
            }
        }
        if events.is_empty() && runtime.checkpoint_frames.is_empty() {
            continue;
        }
        let mut outcome = tokio::task::block_in_place(|| replica.process_batch(events))
            .context("the replica database failed; stopping")?;
        let input_results = std::mem::take(&mut outcome.input_results);
        for (origin, result) in origins.into_iter().zip(input_results) {
            let answer = match result {
                Ok(()) => SubmitOutcome::Accepted,
                Err(AtomicError::Ckps01(AbcError::QueueFull { .. }))
                | Err(AtomicError::HighThroughput(HtAbcError::QueueFull { .. })) => {
                    SubmitOutcome::Busy
                }
                Err(e) => SubmitOutcome::Refused(e.to_string()),
            };
            match origin {
                InputOrigin::Management(reply) => {
                    let _ = reply.send(answer);
                }
                // A client's retry of a request already pending or just delivered is refused as
                // a duplicate: nothing to say, its reply follows from the order. Only a full
                // queue is worth telling the client.
                InputOrigin::Client(admitted) => {
                    if answer == SubmitOutcome::Busy {
                        if let Some(service) = &service {
                            service.busy(&admitted);
                        }
                    }
                }
            }
        }
        absorb(&mut runtime, &mut service, &outcome);
        // The newest transfer installed in the service (each must be ahead of the last).
        let mut installed = None;
        let mut height = replica.height();
        for (from, frame) in std::mem::take(&mut runtime.checkpoint_frames) {
            let Some(service) = &mut service else {
                continue;
            };
            let message = match CheckpointMessage::decode(&frame) {
                Some(Ok(message)) => message,
                _ => {
                    runtime
                        .evidence
                        .record(from, "Checkpoint/Malformed".into(), &frame.len());
                    continue;
                }
            };
            match service.checkpoint_message(from.0, message, height, catching_up) {
                CheckpointAction::None => {}
                CheckpointAction::Send(bytes) => runtime.raw_send(&[from], Bytes::from(bytes)),
                CheckpointAction::Evidence(evidence) => runtime.evidence.record(
                    from,
                    format!("Checkpoint/{}", fault_label(&format!("{evidence:?}"))),
                    &evidence,
                ),
                CheckpointAction::Install(transfer) => {
                    height = transfer.position.height;
                    installed = Some((from, transfer));
                }
            }
        }
        if let Some(service) = &mut service {
            for (peer, evidence) in service.take_checkpoint_evidence() {
                runtime.evidence.record(
                    NodeId(peer),
                    format!("Checkpoint/{}", fault_label(&format!("{evidence:?}"))),
                    &evidence,
                );
            }
        }
        // The service state is installed; now the log and the protocol.
        if let Some((from, transfer)) = installed {
            let point = maftia_core::codec::encode(&transfer.resume)
                .context("cannot encode a resume point")?;
            let base = Base {
                height: transfer.position.height,
                chain: transfer.position.chain,
                payload: transfer.encode(),
            };
            let skipped = tokio::task::block_in_place(|| replica.skip(point, base))
                .context("cannot install the checkpoint in the replica database")?;
            tracing::info!(
                peer = from.0,
                height = transfer.position.height,
                round = transfer.position.round,
                "state transfer: installed a certified checkpoint"
            );
            absorb(&mut runtime, &mut service, &skipped);
            resync_height = replica.height();
            runtime.publish(&replica, &shared, service.as_ref());
        }
        if !outcome.delivered.is_empty() {
            runtime.publish(&replica, &shared, service.as_ref());
        }
    }
    let _ = stop_tx.send(true);
    tokio::task::block_in_place(|| replica.flush()).context("flushing the replica database")?;
    let _ = management_task.await;
    if let Some(task) = client_task {
        let _ = task.await;
    }
    runtime.network.shutdown().await;
    tracing::info!(height = replica.height(), "replica stopped cleanly");
    Ok(())
}

/// Hand what the protocol produced to the evidence log, the network and the service.
fn absorb(
    runtime: &mut Runtime,
    service: &mut Option<Service>,
    outcome: &BatchOutcome<ReplicaProtocol>,
) {
    for (peer, rejection) in &outcome.rejected {
        runtime
            .evidence
            .record(*peer, format!("Frame/{}", rejection.label()), rejection);
    }
    for fault in &outcome.faults {
        let debug = format!("{:?}", fault.kind);
        runtime
            .evidence
            .record(fault.culprit, fault_label(&debug), &fault.kind);
    }
    for item in &outcome.outgoing {
        runtime.send(item);
    }
    if let Some(service) = service {
        for delivered in &outcome.delivered {
            let shares = service.deliver(
                delivered.output.round,
                &delivered.output.requests,
                delivered.height + 1,
                delivered.chain,
            );
            if let Some(message) = shares {
                runtime.send_to_all(Bytes::from(message.encode()));
            }
        }
    }
    metrics::counter!("maftia_delivered_requests_total").increment(
        outcome
            .delivered
            .iter()
            .map(|d| d.output.requests.len() as u64)
            .sum(),
    );
}

/// Where an input of a batch came from (to answer it once the batch is processed).
enum InputOrigin {
    Management(tokio::sync::oneshot::Sender<SubmitOutcome>),
    Client(Admitted),
}

/// Admit a client request into the batch being built.
fn client_input(
    service: &mut Option<Service>,
    event: ClientEvent,
    events: &mut Vec<Event<Vec<u8>>>,
    origins: &mut Vec<InputOrigin>,
) {
    let Some(service) = service else { return };
    if let Some(mut admitted) = service.client_event(event) {
        events.push(Event::Input(std::mem::take(&mut admitted.bytes)));
        origins.push(InputOrigin::Client(admitted));
    }
}

/// The replication manager of the key-value service, from the configuration and keys.
fn build_service(
    config: &NodeConfig,
    service_config: &service::ServiceConfig,
    group: &keygen::GroupPublic,
    secret: &keygen::NodeSecret,
    byzantine: Option<ByzantineMode>,
) -> Result<Service> {
    let clients = maftia_client::files::ClientListFile::load(&service_config.clients_file)
        .with_context(|| {
            format!(
                "cannot load the client list {}",
                service_config.clients_file.display()
            )
        })?;
    let reply_key = secret
        .bls
        .get(&KeySetId::Reply)
        .cloned()
        .context("the secret file has no Reply key share")?;
    let service_id = maftia_smr::request::ServiceId::new(group, &config.instance);

    let manager = maftia_smr::replica::ReplicationManager::new(
        service_id,
        config.id,
        reply_key.clone(),
        maftia_smr::replica::ClientList::new(clients.keys()),
        maftia_smr::kv::KvStore::default(),
    )
    .context("cannot set up the replicated service")?;
    let reply_keys = group
        .bls
        .get(&KeySetId::Reply)
        .cloned()
        .context("the group file has no Reply key set")?;
    let checkpointer = Checkpointer::new(
        service_id,
        config.id,
        reply_key,
        Arc::new(reply_keys),
        config.ordering.dedup_rounds,
        group.n.saturating_mul(config.ordering.batch_size),
    );
    let mut service = Service::new(manager, checkpointer, service_config);
    service.lie_to_clients(byzantine == Some(ByzantineMode::Intruded));
    Ok(service)
}

struct Runtime {
    network: Network,
    our_id: NodeId,
    n: usize,
    byzantine: Option<ByzantineMode>,
    #[cfg_attr(not(feature = "byzantine-test-modes"), allow(dead_code))]
    identity: maftia_crypto::identity::IdentityKey,
    #[cfg_attr(not(feature = "byzantine-test-modes"), allow(dead_code))]
    instance: Vec<u8>,
    evidence: Evidence,
    resync_answers: AnswerLimit,
    /// Checkpoint control frames received, for the replica loop.
    checkpoint_frames: Vec<(NodeId, Bytes)>,
    incarnation: u64,
    f: usize,
    /// Send-queue depth (frames, bytes) above which a peer link counts as congested.
    queue_limits: (usize, usize),
}

impl Runtime {
    /// Turn a received frame into an event, or answer it if it is a control frame.
    fn incoming(
        &mut self,
        frame: maftia_net::Incoming,
        replica: &DurableReplica<ReplicaProtocol>,
        events: &mut Vec<Event<Vec<u8>>>,
    ) {
        if frame.payload.starts_with(CHECKPOINT_MAGIC) && frame.from != self.our_id {
            let buffered: usize = self.checkpoint_frames.iter().map(|(_, f)| f.len()).sum();
            if self.checkpoint_frames.len() < MAX_CHECKPOINT_FRAMES
                && buffered.saturating_add(frame.payload.len()) <= MAX_CHECKPOINT_BYTES
            {
                self.checkpoint_frames.push((frame.from, frame.payload));
            } else {
                metrics::counter!("maftia_checkpoint_frames_dropped_total").increment(1);
            }
            return;
        }
        if frame.payload.starts_with(CONTROL_MAGIC) {
            if frame.payload.as_ref() == RESYNC_REQUEST && frame.from != self.our_id {
                if self.resync_answers.due(frame.from) {
                    let frames = replica.outbox_for(frame.from);
                    tracing::info!(
                        peer = frame.from.0,
                        frames = frames.len(),
                        "peer restarted: re-sending our recent frames"
                    );
                    for payload in frames {
                        self.send(&Outgoing {
                            to: vec![frame.from],
                            frame: payload,
                        });
                    }
                }
            } else {
                self.evidence.record(
                    frame.from,
                    "Frame/UnknownControl".into(),
                    &frame.payload.len(),
                );
            }
            return;
        }
        events.push(Event::Message {
            from: frame.from,
            frame: frame.payload,
        });
    }

    /// Apply a Byzantine mode requested through `POST /byzantine`.
    fn switch_byzantine(&mut self, shared: &Shared, service: Option<&mut Service>) {
        let Some(switch) = &shared.byzantine_switch else {
            return;
        };
        let requested = switch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(mode) = requested {
            tracing::warn!(
                ?mode,
                "Byzantine mode switched through the management endpoint"
            );
            self.byzantine = mode;
            if let Some(service) = service {
                service.lie_to_clients(mode == Some(ByzantineMode::Intruded));
            }
        }
    }

    /// Send a control frame to every peer.
    fn send_to_all(&mut self, payload: Bytes) {
        if self.byzantine == Some(ByzantineMode::Silent) {
            return;
        }
        let to: Vec<NodeId> = NodeId::all(self.n)
            .filter(|id| *id != self.our_id)
            .collect();
        self.raw_send(&to, payload);
    }

    /// Ask every peer to re-send its recent frames and, with a service, for its checkpoint.
    fn ask_to_catch_up(&mut self, height: u64, service: bool) {
        self.send_to_all(Bytes::from_static(RESYNC_REQUEST));
        if service {
            self.send_to_all(Bytes::from(CheckpointMessage::Fetch { height }.encode()));
        }
    }

    fn send(&mut self, item: &Outgoing) {
        match self.byzantine {
            None => self.raw_send(&item.to, item.frame.clone()),
            #[cfg(not(feature = "byzantine-test-modes"))]
            Some(_) => self.raw_send(&item.to, item.frame.clone()),
            #[cfg(feature = "byzantine-test-modes")]
            Some(mode) => {
                for frame in crate::byzantine::transform(
                    mode,
                    &item.frame,
                    &self.identity,
                    &self.instance,
                    self.our_id,
                ) {
                    self.raw_send(&item.to, frame);
                }
            }
        }
    }

    fn raw_send(&mut self, to: &[NodeId], frame: Bytes) {
        let recipients = if to.len() == self.n.saturating_sub(1) {
            Recipients::Others
        } else {
            Recipients::Many(to.iter().copied().collect::<BTreeSet<_>>())
        };
        match self.network.send(&recipients, frame) {
            Ok(report) => {
                for peer in report.refused {
                    metrics::counter!("maftia_send_refused_total", "peer" => peer.0.to_string())
                        .increment(1);
                }
            }
            Err(e) => tracing::error!(error = %e, "frame not sent"),
        }
    }

    /// Copy the replica's and the network's state into status and metrics.
    fn publish(
        &mut self,
        replica: &DurableReplica<ReplicaProtocol>,
        shared: &Shared,
        service: Option<&Service>,
    ) {
        let stats = self.network.stats();
        let abc = replica.protocol();
        let mut evidence: BTreeMap<NodeId, BTreeMap<String, u64>> = BTreeMap::new();
        for ((peer, kind), count) in &self.evidence.counts {
            evidence
                .entry(*peer)
                .or_default()
                .insert(kind.clone(), *count);
        }
        let mut connected = 0;
        let mut congested = 0;
        for (peer, p) in &stats.peers {
            if p.queue_frames > self.queue_limits.0 || p.queue_bytes > self.queue_limits.1 {
                congested += 1;
            }
            let label = peer.0.to_string();
            if p.outbound_connected && p.inbound_connected {
                connected += 1;
            }
            metrics::counter!("maftia_peer_messages_in_total", "peer" => label.clone())
                .absolute(p.frames_received);
            metrics::counter!("maftia_peer_bytes_in_total", "peer" => label.clone())
                .absolute(p.bytes_received);
            metrics::counter!("maftia_peer_messages_out_total", "peer" => label.clone())
                .absolute(p.frames_sent);
            metrics::counter!("maftia_peer_bytes_out_total", "peer" => label.clone())
                .absolute(p.bytes_sent);
            metrics::gauge!("maftia_peer_send_queue_frames", "peer" => label.clone())
                .set(p.queue_frames as f64);
            metrics::gauge!("maftia_peer_send_queue_bytes", "peer" => label.clone())
                .set(p.queue_bytes as f64);
            metrics::gauge!("maftia_peer_connected", "peer" => label.clone()).set(
                if p.outbound_connected && p.inbound_connected {
                    1.0
                } else {
                    0.0
                },
            );
            metrics::counter!("maftia_peer_reconnects_total", "peer" => label.clone())
                .absolute(p.reconnects);
            metrics::counter!("maftia_peer_link_violations_total", "peer" => label)
                .absolute(p.protocol_violations);
            if p.protocol_violations > 0 {
                evidence
                    .entry(*peer)
                    .or_default()
                    .insert("Link/ProtocolViolation".into(), p.protocol_violations);
            }
        }
        for (reason, count) in &stats.refused_handshakes {
            metrics::counter!("maftia_refused_handshakes_total", "reason" => format!("{reason:?}"))
                .absolute(*count);
        }
        let congested = congested > self.f;
        shared
            .congested
            .store(congested, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!("maftia_congested").set(if congested { 1.0 } else { 0.0 });
        metrics::gauge!("maftia_delivered_height").set(replica.height() as f64);
        metrics::gauge!("maftia_round").set(abc.round() as f64);
        metrics::gauge!("maftia_pending_requests").set(abc.pending() as f64);
        metrics::gauge!("maftia_logged_events").set(replica.logged_events() as f64);
        metrics::gauge!("maftia_incarnation").set(self.incarnation as f64);
        let snapshot = StatusSnapshot {
            id: self.our_id.0,
            incarnation: self.incarnation,
            delivered_rounds: replica.height(),
            delivered_requests: replica.delivered_requests(),
            chain_head: hex::encode(replica.chain_head()),
            mode: match abc.mode() {
                OrderingMode::Ckps01 => "ckps01".into(),
                OrderingMode::HighThroughput(_) => "high_throughput".into(),
            },
            round: abc.round(),
            pending: abc.pending() as u64,
            logged_events: replica.logged_events(),
            peers_connected: connected,
            refused_handshakes: stats.refused_total(),
            evidence: evidence
                .into_iter()
                .map(|(peer, kinds)| (peer.0.to_string(), kinds))
                .collect(),
            byzantine: self.byzantine.map(|m| format!("{m:?}").to_lowercase()),
            service: service.map(Service::status),
        };
        let mut status = shared
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *status = snapshot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_labels_name_the_variants() {
        assert_eq!(
            fault_label(
                "Mvba { round: 3, fault: Cbc(EquivocatingSend { first: [1, 2], second: [3] }) }"
            ),
            "Mvba/Cbc/EquivocatingSend"
        );
        assert_eq!(
            fault_label("EquivocatingBatch { round: 0, first: [0], second: [1] }"),
            "EquivocatingBatch"
        );
        assert_eq!(fault_label("NotAMember"), "NotAMember");
    }
}
