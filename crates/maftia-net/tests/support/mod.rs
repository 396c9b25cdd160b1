//! Test harness: a group of identities, nodes on loopback, a controllable TCP proxy and a raw
//! attacker client that speaks the wire protocol without the library's own checks.
#![allow(dead_code)]
use bytes::Bytes;
use maftia_core::NodeId;
use maftia_crypto::identity::{IdentityKey, IdentityPublicKey};
use maftia_net::frame::{self, HandshakePayload, Role};
use maftia_net::handshake::{NOISE_PARAMS, NOISE_STATIC_CONTEXT, PROLOGUE};
use maftia_net::{Incoming, LinkState, NetConfig, NetLimits, Network};
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub const GROUP_TAG: [u8; 32] = [0x6d; 32];

/// Fail instead of hanging.
pub async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Poll `condition` until it holds (for conditions only visible through counters).
pub async fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    within(what, limit, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

pub fn test_limits() -> NetLimits {
    NetLimits {
        handshake_timeout: Duration::from_millis(1500),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        backoff_seed: Some(1),
        keepalive_interval: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(3),
        ..NetLimits::default()
    }
}

/// `n` identities, and a listener on an ephemeral loopback port for each.
pub struct Group {
    pub keys: Vec<IdentityKey>,
    pub identities: Arc<Vec<IdentityPublicKey>>,
    pub addrs: Vec<SocketAddr>,
    listeners: Vec<Option<std::net::TcpListener>>,
}

impl Group {
    pub fn new(n: usize, seed: u64) -> Self {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let keys: Vec<IdentityKey> = (0..n).map(|_| IdentityKey::generate(&mut rng)).collect();
        let identities = Arc::new(keys.iter().map(IdentityKey::public).collect());
        let listeners: Vec<std::net::TcpListener> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        Group {
            keys,
            identities,
            addrs,
            listeners: listeners.into_iter().map(Some).collect(),
        }
    }

    /// Node `i`'s configuration; every other node is a peer at its listener address.
    pub fn config(&self, i: usize, incarnation: u64) -> NetConfig {
        let peers = (0..self.keys.len())
            .filter(|&j| j != i)
            .map(|j| (NodeId(j as u16), self.addrs[j]))
            .collect();
        NetConfig {
            our_id: NodeId(i as u16),
            listen: self.addrs[i],
            peers,
            identities: self.identities.clone(),
            identity: self.keys[i].clone(),
            group_tag: GROUP_TAG,
            incarnation,
            limits: test_limits(),
            resume: None,
        }
    }

    /// Start node `i` on its pre-bound listener (first start) or by binding its address again
    /// (restarts).
    pub async fn start(&mut self, config: NetConfig) -> (Network, mpsc::Receiver<Incoming>) {
        let i = config.our_id.index();
        match self.listeners[i].take() {
            Some(listener) => Network::start_on(config, listener).await.unwrap(),
            // The previous instance's listener may still be closing (after a drop).
            None => {
                within("rebind", Duration::from_secs(5), async {
                    loop {
                        match Network::start(config.clone()).await {
                            Ok(started) => return started,
                            Err(maftia_net::NetError::Bind { .. }) => {
                                tokio::time::sleep(Duration::from_millis(10)).await
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
                .await
            }
        }
    }
}

/// A payload naming its sender and index, padded to `len` bytes (at least 10).
pub fn payload(sender: NodeId, index: u64, len: usize) -> Bytes {
    let mut out = Vec::with_capacity(len.max(10));
    out.extend_from_slice(&sender.0.to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out.resize(len.max(10), (index % 251) as u8);
    Bytes::from(out)
}

/// `(sender, index)` of a [`payload`], checking its padding.
pub fn parse(frame: &Incoming) -> (NodeId, u64) {
    let p = &frame.payload;
    assert!(p.len() >= 10, "short payload");
    let sender = NodeId(u16::from_be_bytes([p[0], p[1]]));
    let index = u64::from_be_bytes(p[2..10].try_into().unwrap());
    assert_eq!(sender, frame.from, "payload names another sender");
    assert!(
        p[10..].iter().all(|&b| b == (index % 251) as u8),
        "corrupted padding"
    );
    (sender, index)
}

/// Receive exactly `count` frames (each within `limit` of the previous one).
pub async fn recv_n(
    rx: &mut mpsc::Receiver<Incoming>,
    count: usize,
    limit: Duration,
) -> Vec<Incoming> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let what = format!("frame {} of {count}", out.len() + 1);
        match within(&what, limit, rx.recv()).await {
            Some(frame) => out.push(frame),
            None => panic!("incoming channel closed after {} frames", out.len()),
        }
    }
    out
}

/// Everything currently in the channel, without waiting.
pub fn drain(rx: &mut mpsc::Receiver<Incoming>) -> Vec<Incoming> {
    let mut out = Vec::new();
    while let Ok(frame) = rx.try_recv() {
        out.push(frame);
    }
    out
}

/// The indices received from `sender`, in arrival order.
pub fn indices_from(frames: &[Incoming], sender: NodeId) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f.from == sender)
        .map(|f| parse(f).1)
        .collect()
}

/// A TCP proxy in front of `upstream` that can drop traffic, sever every connection, record
/// what clients sent, and duplicate one client record.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    upstream: SocketAddr,
    forwarding: AtomicBool,
    connections: Mutex<JoinSet<()>>,
    /// Bytes every client sent, per connection.
    recorded: Mutex<Vec<Vec<u8>>>,
    /// Send client record number `k` (0-based, per connection) twice.
    duplicate_record: Mutex<Option<usize>>,
    pub accepted: AtomicUsize,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            upstream,
            forwarding: AtomicBool::new(true),
            connections: Mutex::new(JoinSet::new()),
            recorded: Mutex::new(Vec::new()),
            duplicate_record: Mutex::new(None),
            accepted: AtomicUsize::new(0),
        });
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let Ok(server) = TcpStream::connect(state.upstream).await else {
                        continue;
                    };
                    let index = {
                        let mut recorded = state.recorded.lock().unwrap();
                        recorded.push(Vec::new());
                        recorded.len() - 1
                    };
                    state.accepted.fetch_add(1, Ordering::SeqCst);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let mut connections = state.connections.lock().unwrap();
                    connections.spawn(pump_records(
                        state.clone(),
                        index,
                        client_read,
                        server_write,
                    ));
                    connections.spawn(pump_raw(state.clone(), server_read, client_write));
                }
            }
        });
        Proxy { addr, state, task }
    }

    /// Forward (true) or silently discard (false) traffic in both directions.
    pub fn set_forwarding(&self, on: bool) {
        self.state.forwarding.store(on, Ordering::SeqCst);
    }

    /// Close every proxied connection (both sides see the connection end); returns once the
    /// old connections' pumps are gone (nothing more crosses them).
    pub async fn sever(&self) {
        let mut old = std::mem::take(&mut *self.state.connections.lock().unwrap());
        old.shutdown().await;
    }

    pub fn duplicate_client_record(&self, k: usize) {
        *self.state.duplicate_record.lock().unwrap() = Some(k);
    }

    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    pub fn recorded(&self, connection: usize) -> Vec<u8> {
        self.state.recorded.lock().unwrap()[connection].clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.state.connections.lock().unwrap().abort_all();
    }
}

/// Client to server, one record at a time (so one can be duplicated).
async fn pump_records(
    state: Arc<ProxyState>,
    index: usize,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) {
    let mut count = 0;
    loop {
        let mut header = [0u8; 4];
        if from.read_exact(&mut header).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > 1 << 20 {
            return;
        }
        let mut record = header.to_vec();
        record.resize(4 + len, 0);
        if from.read_exact(&mut record[4..]).await.is_err() {
            return;
        }
        state.recorded.lock().unwrap()[index].extend_from_slice(&record);
        if !state.forwarding.load(Ordering::SeqCst) {
            count += 1;
            continue;
        }
        let twice = *state.duplicate_record.lock().unwrap() == Some(count);
        for _ in 0..if twice { 2 } else { 1 } {
            if to.write_all(&record).await.is_err() {
                return;
            }
        }
        count += 1;
    }
}

async fn pump_raw(
    state: Arc<ProxyState>,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if state.forwarding.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// An attacker's client: speaks the handshake with any key, id, group and target it likes and
/// does not check the acceptor.
pub struct RawClient {
    pub stream: TcpStream,
    pub transport: Option<snow::TransportState>,
    pub sent: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        RawClient {
            stream: TcpStream::connect(addr).await.unwrap(),
            transport: None,
            sent: Vec::new(),
        }
    }

    pub async fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.sent.extend_from_slice(bytes);
        self.stream.write_all(bytes).await
    }

    async fn write_record(&mut self, body: &[u8]) -> std::io::Result<()> {
        let mut record = frame::record_header(body.len()).to_vec();
        record.extend_from_slice(body);
        self.write_raw(&record).await
    }

    async fn read_record(&mut self) -> std::io::Result<Vec<u8>> {
        let mut header = [0u8; 4];
        self.stream.read_exact(&mut header).await?;
        let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
        self.stream.read_exact(&mut body).await?;
        Ok(body)
    }

    /// Run the dialer's handshake claiming `claimed` with `key`, and read the resume record.
    /// Returns the resume value, or the I/O error if the node closed the connection.
    pub async fn handshake(
        &mut self,
        key: &IdentityKey,
        claimed: NodeId,
        target: NodeId,
        group_tag: [u8; 32],
        incarnation: u64,
    ) -> std::io::Result<u64> {
        let builder = snow::Builder::new(NOISE_PARAMS.parse().unwrap());
        let keypair = builder.generate_keypair().unwrap();
        let mut hs = snow::Builder::new(NOISE_PARAMS.parse().unwrap())
            .local_private_key(&keypair.private)
            .unwrap()
            .prologue(PROLOGUE)
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut message = vec![0u8; 1024];
        let len = hs.write_message(&[], &mut message).unwrap();
        self.write_record(&message[..len]).await?;
        let reply = self.read_record().await?;
        let mut plaintext = vec![0u8; 1024];
        hs.read_message(&reply, &mut plaintext).unwrap();
        let mut payload = HandshakePayload {
            role: Role::Dialer,
            group_tag,
            node_id: claimed,
            target: Some(target),
            incarnation,
            identity: key.public().to_bytes(),
            signature: [0u8; 64],
        };
        payload.signature = key
            .sign(
                NOISE_STATIC_CONTEXT,
                &payload.signed_message(&keypair.public),
            )
            .to_bytes();
        let len = hs.write_message(&payload.encode(), &mut message).unwrap();
        self.write_record(&message[..len]).await?;
        let mut transport = hs.into_transport_mode().unwrap();
        let resume = self.read_record().await?;
        let len = transport.read_message(&resume, &mut plaintext).unwrap();
        self.transport = Some(transport);
        match frame::decode_link_message(&plaintext[..len]).unwrap() {
            frame::LinkMessage::Resume { next_expected } => Ok(next_expected),
            other => panic!("expected resume, got {other:?}"),
        }
    }

    /// Seal `plaintext` as the next transport record (returned, not sent).
    pub fn seal(&mut self, plaintext: &[u8]) -> Vec<u8> {
        let transport = self.transport.as_mut().expect("handshake first");
        let mut body = vec![0u8; plaintext.len() + 16];
        let len = transport.write_message(plaintext, &mut body).unwrap();
        let mut record = frame::record_header(len).to_vec();
        record.extend_from_slice(&body[..len]);
        record
    }

    /// A complete one-chunk data record for frame `seq`.
    pub fn data_record(&mut self, seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut plaintext = frame::encode_data_header(seq, payload.len() as u32, 0).to_vec();
        plaintext.extend_from_slice(payload);
        self.seal(&plaintext)
    }

    /// Wait until the node closes the connection (reads and discards what it sends).
    pub async fn closed_by_peer(&mut self) {
        let mut buf = [0u8; 1024];
        loop {
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

/// Run `count` nodes of a fresh group; returns the group, networks and receivers.
pub async fn cluster(n: usize, seed: u64) -> (Group, Vec<Network>, Vec<mpsc::Receiver<Incoming>>) {
    let mut group = Group::new(n, seed);
    let mut nets = Vec::new();
    let mut rxs = Vec::new();
    for i in 0..n {
        let (net, rx) = group.start(group.config(i, 1000 + i as u64)).await;
        nets.push(net);
        rxs.push(rx);
    }
    (group, nets, rxs)
}

pub type Resume = Option<LinkState>;
pub type Peers = BTreeMap<NodeId, SocketAddr>;
