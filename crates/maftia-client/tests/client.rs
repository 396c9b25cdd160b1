//! The client against in-process fake replicas speaking the client-port wire protocol: each
//! fake keeps a `KvStore`, deduplicates by (client, seq) and signs its `ReplyShare` with its
//! Reply share from `keygen::deal_group`; Byzantine fakes lie, sign garbage, send garbage or stay
//! silent. Everything runs on 127.0.0.1 with short timeouts.
use maftia_client::files::{client_key_file_name, ClientKeyFile, ClusterFile};
use maftia_client::wire::{
    decode_client, encode_replica, read_frame, write_frame, ClientMessage, Refusal, ReplicaMessage,
    MAX_CLIENT_FRAME,
};
use maftia_client::{Client, ClientConfig, ClientError};
use maftia_crypto::bls::{BlsSecretShare, KeySetId};
use maftia_crypto::identity::{IdentityKey, IdentityPublicKey};
use maftia_crypto::keygen::{self, deal_group, GroupPublic, NodeSecret};
use maftia_smr::kv::{decode_reply, encode_request, KvReply, KvRequest, KvStore};
use maftia_smr::request::{reply_message, ReplyShare, ServiceId, ServiceResult};
use maftia_smr::StateMachine;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const INSTANCE: &str = "kv-test";
/// Messages a flooding fake sends per request.
const FLOOD_MESSAGES: usize = 5000;

#[derive(Clone, Debug, PartialEq)]
enum Behaviour {
    Honest,
    /// Nothing listens on its address (until started later).
    Down,
    /// Executes honestly, then answers `Value { Some(lie) }` with a *valid* share on that lie.
    Lie(Vec<u8>),
    /// The right result with a share on another message.
    InvalidShare,
    /// Reads requests, never answers.
    Silent,
    /// Answers with a frame that is not a maftia envelope.
    Garbage,
    /// Answers with a length prefix far over the limit.
    OversizedPrefix,
    /// A valid share labelled with another replica's index.
    Mislabel,
    /// Ignores the first `k` requests it receives.
    DropFirst(usize),
    /// Refuses every request.
    Refuse(Refusal),
    /// Answers every request with thousands of messages about other requests.
    Flood,
}

impl Behaviour {
    /// Whether this fake answers ahead of the honest ones (which wait for it).
    fn answers_first(&self) -> bool {
        !matches!(
            self,
            Behaviour::Honest
                | Behaviour::Down
                | Behaviour::Silent
                | Behaviour::DropFirst(_)
                | Behaviour::Flood
        )
    }
}

struct FakeState {
    kv: KvStore,
    /// Per client: the last executed sequence number and its result.
    executed: BTreeMap<IdentityPublicKey, (u64, ServiceResult)>,
}

struct Fake {
    index: u16,
    n: u16,
    share: BlsSecretShare,
    service: ServiceId,
    behaviour: Behaviour,
    /// `None`: every client is allowed.
    clients: Option<BTreeSet<IdentityPublicKey>>,
    /// An unlisted client gets a certified `UnknownClient` (else a `Refused`).
    certify_unknown: bool,
    state: Mutex<FakeState>,
    received: AtomicUsize,
    /// (seq, replica) of every early answer sent; honest fakes wait for `wait_for` of them.
    early: Arc<watch::Sender<BTreeSet<(u64, u16)>>>,
    wait_for: usize,
}

impl Fake {
    async fn serve(self: Arc<Self>, listener: TcpListener) {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(self.clone().connection(stream));
        }
    }

    async fn connection(self: Arc<Self>, stream: TcpStream) {
        let (mut reader, mut writer) = stream.into_split();
        while let Ok(Some(frame)) = read_frame(&mut reader, MAX_CLIENT_FRAME).await {
            let count = self.received.fetch_add(1, Ordering::SeqCst) + 1;
            match self.behaviour {
                Behaviour::Silent => continue,
                Behaviour::DropFirst(k) if count <= k => continue,
                _ => {}
            }
            let Ok(ClientMessage::Request(request)) = decode_client(&frame) else {
                continue;
            };
            let seq = request.seq;
            let answer = self.answer(request);
            if !self.behaviour.answers_first() {
                let mut early = self.early.subscribe();
                let waited = tokio::time::timeout(
                    Duration::from_secs(3),
                    early.wait_for(|set| {
                        set.iter().filter(|(s, _)| *s == seq).count() >= self.wait_for
                    }),
                )
                .await
                .map(|seen| seen.is_ok());
                assert_eq!(waited, Ok(true), "the Byzantine fakes never answered");
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            if self.behaviour == Behaviour::Flood {
                let junk = encode_replica(&ReplicaMessage::Refused {
                    seq: seq.wrapping_sub(1),
                    reason: Refusal::Malformed("x".repeat(1000)),
                })
                .unwrap();
                for _ in 0..FLOOD_MESSAGES {
                    if write_frame(&mut writer, &junk).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            let sent = match &self.behaviour {
                Behaviour::Garbage => {
                    write_frame(&mut writer, b"definitely not a maftia frame").await
                }
                Behaviour::OversizedPrefix => writer
                    .write_all(&u32::MAX.to_be_bytes())
                    .await
                    .map_err(Into::into),
                _ => write_frame(&mut writer, &encode_replica(&answer).unwrap()).await,
            };
            if sent.is_err() {
                return;
            }
            if self.behaviour.answers_first() {
                self.early.send_modify(|set| {
                    set.insert((seq, self.index));
                });
            }
        }
    }

    fn answer(&self, request: maftia_smr::request::SignedRequest) -> ReplicaMessage {
        let (client, seq) = (request.client, request.seq);
        if let Behaviour::Refuse(reason) = &self.behaviour {
            return ReplicaMessage::Refused {
                seq,
                reason: reason.clone(),
            };
        }
        if !request.verify(&self.service) {
            return ReplicaMessage::Refused {
                seq,
                reason: Refusal::BadSignature,
            };
        }
        let listed = self.clients.as_ref().is_none_or(|c| c.contains(&client));
        let mut result = if !listed && !self.certify_unknown {
            return ReplicaMessage::Refused {
                seq,
                reason: Refusal::UnknownClient,
            };
        } else if !listed {
            ServiceResult::UnknownClient
        } else {
            let mut state = self.state.lock().unwrap();
            match state.executed.get(&client) {
                Some((last, cached)) if *last == seq => cached.clone(),
                Some((last, _)) if seq < *last => ServiceResult::StaleSequence { last: *last },
                _ => {
                    let reply = state.kv.execute(&request.operation);
                    let result = ServiceResult::Executed(reply);
                    state.executed.insert(client, (seq, result.clone()));
                    result
                }
            }
        };
        if let Behaviour::Lie(value) = &self.behaviour {
            let lie = KvReply::Value {
                value: Some(value.clone()),
            };
            result = ServiceResult::Executed(maftia_core::codec::encode(&lie).unwrap());
        }
        let signed_seq = if self.behaviour == Behaviour::InvalidShare {
            seq + 1
        } else {
            seq
        };
        let share = self
            .share
            .sign(&reply_message(&self.service, &client, signed_seq, &result));
        let replica = if self.behaviour == Behaviour::Mislabel {
            (self.index + 1) % self.n
        } else {
            self.index
        };
        ReplicaMessage::Reply(ReplyShare {
            replica,
            client,
            seq,
            result,
            share,
        })
    }
}

#[derive(Default)]
struct Options {
    clients: Option<BTreeSet<IdentityPublicKey>>,
    certify_unknown: bool,
}

struct Cluster {
    group: Arc<GroupPublic>,
    secrets: Vec<NodeSecret>,
    addrs: Vec<SocketAddr>,
    fakes: Vec<Arc<Fake>>,
    tasks: Vec<JoinHandle<()>>,
    early: Arc<watch::Sender<BTreeSet<(u64, u16)>>>,
    /// The ports of the `Down` fakes, held until they are brought up.
    reserved: BTreeMap<usize, TcpSocket>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn deal(n: usize, f: usize, seed: u64) -> (Arc<GroupPublic>, Vec<NodeSecret>) {
    let (group, secrets) = deal_group(n, f, &mut StdRng::seed_from_u64(seed)).unwrap();
    (Arc::new(group), secrets)
}

/// An address nothing listens on (yet): bound but not listening, so connecting is refused and
/// no other test's listener can take the port meanwhile.
fn reserve_address() -> (SocketAddr, TcpSocket) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    (socket.local_addr().unwrap(), socket)
}

impl Cluster {
    async fn start(
        group: Arc<GroupPublic>,
        secrets: Vec<NodeSecret>,
        behaviours: Vec<Behaviour>,
        options: Options,
    ) -> Cluster {
        assert_eq!(behaviours.len(), group.n);
        let service = ServiceId::new(&group, INSTANCE);
        let wait_for = behaviours.iter().filter(|b| b.answers_first()).count();
        let early = Arc::new(watch::channel(BTreeSet::new()).0);
        let mut cluster = Cluster {
            group: group.clone(),
            secrets,
            addrs: Vec::new(),
            fakes: Vec::new(),
            tasks: Vec::new(),
            early: early.clone(),
            reserved: BTreeMap::new(),
        };
        for (index, behaviour) in behaviours.into_iter().enumerate() {
            let fake = Arc::new(Fake {
                index: index as u16,
                n: group.n as u16,
                share: cluster.secrets[index].bls[&KeySetId::Reply].clone(),
                service,
                behaviour,
                clients: options.clients.clone(),
                certify_unknown: options.certify_unknown,
                state: Mutex::new(FakeState {
                    kv: KvStore::new(),
                    executed: BTreeMap::new(),
                }),
                received: AtomicUsize::new(0),
                early: early.clone(),
                wait_for,
            });
            if fake.behaviour == Behaviour::Down {
                let (addr, socket) = reserve_address();
                cluster.addrs.push(addr);
                cluster.reserved.insert(index, socket);
            } else {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                cluster.addrs.push(listener.local_addr().unwrap());
                cluster
                    .tasks
                    .push(tokio::spawn(fake.clone().serve(listener)));
            }
            cluster.fakes.push(fake);
        }
        cluster
    }

    /// Start fake `index` (honest) on its reserved address.
    async fn bring_up(&mut self, index: usize) {
        drop(self.reserved.remove(&index));
        let listener = TcpListener::bind(self.addrs[index]).await.unwrap();
        let fake = Arc::new(Fake {
            index: index as u16,
            n: self.group.n as u16,
            share: self.secrets[index].bls[&KeySetId::Reply].clone(),
            service: ServiceId::new(&self.group, INSTANCE),
            behaviour: Behaviour::Honest,
            clients: None,
            certify_unknown: false,
            state: Mutex::new(FakeState {
                kv: KvStore::new(),
                executed: BTreeMap::new(),
            }),
            received: AtomicUsize::new(0),
            early: self.early.clone(),
            wait_for: 0,
        });
        self.tasks.push(tokio::spawn(fake.clone().serve(listener)));
        self.fakes[index] = fake;
    }

    fn config(&self, key: IdentityKey) -> ClientConfig {
        let mut config = ClientConfig::new(INSTANCE, self.group.clone(), self.addrs.clone(), key);
        config.timeout = Duration::from_secs(5);
        config.retry_interval = Duration::from_millis(200);
        config.connect_timeout = Duration::from_secs(1);
        config
    }

    async fn client(&self, seed: u64) -> Client {
        let key = IdentityKey::generate(&mut StdRng::seed_from_u64(seed));
        Client::connect(self.config(key)).await.unwrap()
    }
}

fn put(key: &[u8], value: &[u8]) -> KvRequest {
    KvRequest::Put {
        key: key.to_vec(),
        value: value.to_vec(),
    }
}

fn get(key: &[u8]) -> KvRequest {
    KvRequest::Get { key: key.to_vec() }
}

fn value(v: &[u8]) -> KvReply {
    KvReply::Value {
        value: Some(v.to_vec()),
    }
}

#[tokio::test]
async fn honest_replicas_give_verified_certificates() {
    let (group, secrets) = deal(4, 1, 1);
    let cluster = Cluster::start(
        group,
        secrets,
        vec![Behaviour::Honest; 4],
        Options::default(),
    )
    .await;
    let mut client = cluster.client(10).await;
    let first_seq = client.next_seq();
    let (reply, certified) = client.kv(&put(b"k", b"v1")).await.unwrap();
    assert_eq!(reply, KvReply::Written { previous: None });
    let certificate = &certified.certificate;
    assert_eq!(certificate.seq, first_seq);
    assert_eq!(certificate.client, client.public_key());
    assert!(certificate.verify(&client.service(), client.reply_keys()));
    // The certificate is for this result only.
    let mut forged = certificate.clone();
    forged.result = ServiceResult::Executed(vec![1, 2, 3]);
    assert!(!forged.verify(&client.service(), client.reply_keys()));
    assert!(certified.culprits.is_empty());

    let (reply, certified) = client.kv(&get(b"k")).await.unwrap();
    assert_eq!(reply, value(b"v1"));
    assert_eq!(certified.certificate.seq, first_seq + 1);
    let cas = KvRequest::CompareAndSet {
        key: b"k".to_vec(),
        expected: Some(b"v1".to_vec()),
        new: Some(b"v2".to_vec()),
    };
    let (reply, _) = client.kv(&cas).await.unwrap();
    assert_eq!(
        reply,
        KvReply::CompareAndSet {
            swapped: true,
            found: Some(b"v1".to_vec())
        }
    );
    assert_eq!(client.kv(&get(b"k")).await.unwrap().0, value(b"v2"));
    assert_eq!(client.next_seq(), first_seq + 4);
    // Every replica executed every request exactly once.
    for fake in &cluster.fakes {
        assert_eq!(fake.state.lock().unwrap().kv.get(b"k"), Some(&b"v2"[..]));
    }
}

#[tokio::test]
async fn one_byzantine_replica_answering_first_is_outvoted_and_reported() {
    let (group, secrets) = deal(4, 1, 2);
    let cases = [
        (Behaviour::Lie(b"lie".to_vec()), "differs"),
        (Behaviour::InvalidShare, "invalid reply signature share"),
        (Behaviour::Garbage, "invalid frame"),
        (Behaviour::OversizedPrefix, "invalid frame"),
        (Behaviour::Mislabel, "labelled as replica"),
    ];
    for (byzantine, culprit) in cases {
        for position in [0usize, 3] {
            let mut behaviours = vec![Behaviour::Honest; 4];
            behaviours[position] = byzantine.clone();
            let cluster = Cluster::start(
                group.clone(),
                secrets.clone(),
                behaviours,
                Options::default(),
            )
            .await;
            let mut client = cluster.client(20).await;
            let (reply, certified) = client.kv(&put(b"k", b"truth")).await.unwrap();
            assert_eq!(reply, KvReply::Written { previous: None }, "{byzantine:?}");
            let (reply, certified_get) = client.kv(&get(b"k")).await.unwrap();
            assert_eq!(reply, value(b"truth"), "{byzantine:?} at {position}");
            assert!(certified_get
                .certificate
                .verify(&client.service(), client.reply_keys()));
            let why = certified.culprits.get(&(position as u16));
            assert!(
                why.is_some_and(|w| w.contains(culprit)),
                "{byzantine:?} at {position}: culprits {:?}",
                certified.culprits
            );
            assert_eq!(certified.culprits.len(), 1, "{:?}", certified.culprits);
        }
    }
}

#[tokio::test]
async fn silent_and_dead_replicas_do_not_slow_the_answer() {
    let (group, secrets) = deal(4, 1, 3);
    let behaviours = vec![
        Behaviour::Down,
        Behaviour::Silent,
        Behaviour::Honest,
        Behaviour::Honest,
    ];
    let cluster = Cluster::start(group, secrets, behaviours, Options::default()).await;
    let mut config = cluster.config(IdentityKey::generate(&mut StdRng::seed_from_u64(30)));
    config.retry_interval = Duration::from_secs(3);
    let mut client = Client::connect(config).await.unwrap();
    for round in 0..3u8 {
        let (reply, certified) = client.kv(&put(b"k", &[round])).await.unwrap();
        let previous = round.checked_sub(1).map(|r| vec![r]);
        assert_eq!(reply, KvReply::Written { previous });
        // Well under the retry interval: nobody waited for the dead or the silent replica.
        assert!(
            certified.latency < Duration::from_secs(1),
            "{:?}",
            certified.latency
        );
        assert!(certified.culprits.is_empty());
    }
}

#[tokio::test]
async fn a_lying_minority_of_at_most_f_is_never_certified() {
    // n = 7, f = 2: two replicas tell the same lie with valid shares, before anyone else.
    let (group, secrets) = deal(7, 2, 4);
    let mut behaviours = vec![Behaviour::Honest; 7];
    behaviours[2] = Behaviour::Lie(b"lie".to_vec());
    behaviours[5] = Behaviour::Lie(b"lie".to_vec());
    let cluster = Cluster::start(group, secrets, behaviours, Options::default()).await;
    let mut client = cluster.client(40).await;
    client.kv(&put(b"k", b"truth")).await.unwrap();
    let (reply, certified) = client.kv(&get(b"k")).await.unwrap();
    assert_eq!(reply, value(b"truth"));
    assert_eq!(
        certified.culprits.keys().copied().collect::<Vec<_>>(),
        vec![2, 5]
    );

    // With too few honest answers the liars still get nothing certified: the client gives up.
    let (group, secrets) = deal(4, 1, 5);
    let behaviours = vec![
        Behaviour::Lie(b"lie".to_vec()),
        Behaviour::Honest,
        Behaviour::Silent,
        Behaviour::Silent,
    ];
    let cluster = Cluster::start(group, secrets, behaviours, Options::default()).await;
    let mut config = cluster.config(IdentityKey::generate(&mut StdRng::seed_from_u64(41)));
    config.timeout = Duration::from_millis(700);
    let mut client = Client::connect(config).await.unwrap();
    match client.kv(&get(b"k")).await {
        Err(ClientError::Unverifiable {
            answered, needed, ..
        }) => assert_eq!((answered, needed), (2, 2)),
        other => panic!("expected Unverifiable, got {other:?}"),
    }
}

/// The bound is tight: f + 1 colluding replicas (more than the model allows) do get their lie
/// certified — so the test above would catch a client that accepted fewer matching shares.
#[tokio::test]
async fn f_plus_one_colluders_exceed_the_model_and_are_certified() {
    let (group, secrets) = deal(4, 1, 6);
    let behaviours = vec![
        Behaviour::Lie(b"lie".to_vec()),
        Behaviour::Lie(b"lie".to_vec()),
        Behaviour::Honest,
        Behaviour::Honest,
    ];
    let cluster = Cluster::start(group, secrets, behaviours, Options::default()).await;
    let mut client = cluster.client(60).await;
    let (reply, _) = client.kv(&get(b"k")).await.unwrap();
    assert_eq!(reply, value(b"lie"));
}

#[tokio::test]
async fn all_replicas_down_is_unreachable_within_the_timeout() {
    let (group, secrets) = deal(4, 1, 7);
    let cluster =
        Cluster::start(group, secrets, vec![Behaviour::Down; 4], Options::default()).await;
    let mut config = cluster.config(IdentityKey::generate(&mut StdRng::seed_from_u64(70)));
    config.timeout = Duration::from_secs(4);
    config.retry_interval = Duration::from_millis(150);
    let mut client = Client::connect(config).await.unwrap();
    let start = Instant::now();
    let err = client.kv(&get(b"k")).await.unwrap_err();
    let elapsed = start.elapsed();
    match &err {
        ClientError::Unreachable {
            reached,
            needed,
            errors,
        } => {
            assert_eq!((*reached, *needed), (0, 2));
            assert_eq!(errors.len(), 4, "{errors:?}");
            assert!(
                errors.values().all(|e| e.contains("cannot connect")),
                "{errors:?}"
            );
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(err.to_string().contains("unreachable"), "{err}");
    // Fails fast: after about one retry interval, not the whole timeout.
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[tokio::test]
async fn replies_that_cannot_form_a_certificate_are_unverifiable_after_the_timeout() {
    let (group, secrets) = deal(4, 1, 8);
    let behaviours = vec![
        Behaviour::InvalidShare,
        Behaviour::Honest,
        Behaviour::Silent,
        Behaviour::Silent,
    ];
    let cluster = Cluster::start(group, secrets, behaviours, Options::default()).await;
    let mut config = cluster.config(IdentityKey::generate(&mut StdRng::seed_from_u64(80)));
    config.timeout = Duration::from_millis(600);
    let mut client = Client::connect(config).await.unwrap();
    let start = Instant::now();
    let err = client.kv(&get(b"k")).await.unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(600));
    assert!(start.elapsed() < Duration::from_secs(3));
    match &err {
        ClientError::Unverifiable {
            answered, culprits, ..
        } => {
            assert_eq!(*answered, 2);
            assert!(culprits[&0].contains("invalid"), "{culprits:?}");
        }
        other => panic!("expected Unverifiable, got {other:?}"),
    }
    assert!(err.to_string().contains("replica 0"), "{err}");
}

#[tokio::test]
async fn unanswered_requests_are_sent_again() {
    let (group, secrets) = deal(4, 1, 9);
    let behaviours = vec![
        Behaviour::DropFirst(1),
        Behaviour::DropFirst(1),
        Behaviour::DropFirst(1),
        Behaviour::Honest,
    ];
    let cluster = Cluster::start(group, secrets, behaviours, Options::default()).await;
    let mut client = cluster.client(90).await;
    let (reply, certified) = client.kv(&put(b"k", b"v")).await.unwrap();
    assert_eq!(reply, KvReply::Written { previous: None });
    assert!(certified.latency >= Duration::from_millis(200));
    let resent = cluster.fakes[..3]
        .iter()
        .filter(|f| f.received.load(Ordering::SeqCst) >= 2)
        .count();
    assert!(resent >= 1, "no replica got the request twice");
    assert_eq!(cluster.fakes[3].received.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn replicas_coming_up_later_are_connected_lazily() {
    let (group, secrets) = deal(4, 1, 10);
    let behaviours = vec![
        Behaviour::Honest,
        Behaviour::Down,
        Behaviour::Down,
        Behaviour::Down,
    ];
    let mut cluster = Cluster::start(group, secrets, behaviours, Options::default()).await;
    let mut config = cluster.config(IdentityKey::generate(&mut StdRng::seed_from_u64(100)));
    config.retry_interval = Duration::from_millis(400);
    let mut client = Client::connect(config).await.unwrap();
    let operation = put(b"k", b"v");
    let request = client.kv(&operation);
    let later = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for index in 1..4 {
            cluster.bring_up(index).await;
        }
    };
    let (result, ()) = tokio::join!(request, later);
    let (reply, certified) = result.unwrap();
    assert_eq!(reply, KvReply::Written { previous: None });
    assert!(certified.latency >= Duration::from_millis(100));
}

#[tokio::test]
async fn an_unlisted_client_is_refused_quickly_with_a_clear_error() {
    let (group, secrets) = deal(4, 1, 11);
    let options = Options {
        clients: Some(BTreeSet::new()),
        certify_unknown: false,
    };
    let cluster = Cluster::start(group, secrets, vec![Behaviour::Honest; 4], options).await;
    let mut client = cluster.client(110).await;
    let start = Instant::now();
    let err = client.kv(&put(b"k", b"v")).await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(
        matches!(&err, ClientError::Refused { reason: Refusal::UnknownClient, by } if by.len() >= 2),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("this client's key is not on the service's client list"),
        "{err}"
    );
    for fake in &cluster.fakes {
        assert!(fake.state.lock().unwrap().kv.is_empty());
    }

    // A single Byzantine refusal is not enough to give up.
    let (group, secrets) = deal(4, 1, 12);
    let mut behaviours = vec![Behaviour::Honest; 4];
    behaviours[1] = Behaviour::Refuse(Refusal::UnknownClient);
    let cluster = Cluster::start(group, secrets, behaviours, Options::default()).await;
    let mut client = cluster.client(111).await;
    assert_eq!(
        client.kv(&put(b"k", b"v")).await.unwrap().0,
        KvReply::Written { previous: None }
    );
}

#[tokio::test]
async fn a_certified_unknown_client_result_is_an_error() {
    let (group, secrets) = deal(4, 1, 13);
    let options = Options {
        clients: Some(BTreeSet::new()),
        certify_unknown: true,
    };
    let cluster = Cluster::start(group, secrets, vec![Behaviour::Honest; 4], options).await;
    let mut client = cluster.client(130).await;
    let err = client.kv(&get(b"k")).await.unwrap_err();
    assert!(matches!(err, ClientError::UnknownClient), "{err:?}");
    // invoke hands back the certified result itself.
    let operation = encode_request(&get(b"k")).unwrap();
    let certified = client.invoke(operation).await.unwrap();
    assert_eq!(certified.certificate.result, ServiceResult::UnknownClient);
    assert!(certified
        .certificate
        .verify(&client.service(), client.reply_keys()));
}

#[tokio::test]
async fn busy_replicas_are_retried_until_the_timeout() {
    let (group, secrets) = deal(4, 1, 14);
    let cluster = Cluster::start(
        group,
        secrets,
        vec![Behaviour::Refuse(Refusal::Busy); 4],
        Options::default(),
    )
    .await;
    let mut config = cluster.config(IdentityKey::generate(&mut StdRng::seed_from_u64(140)));
    config.timeout = Duration::from_millis(700);
    config.retry_interval = Duration::from_millis(100);
    let mut client = Client::connect(config).await.unwrap();
    let start = Instant::now();
    let err = client.kv(&get(b"k")).await.unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(700));
    assert!(
        matches!(&err, ClientError::Refused { reason: Refusal::Busy, by } if by.len() == 4),
        "{err:?}"
    );
    for fake in &cluster.fakes {
        assert!(fake.received.load(Ordering::SeqCst) >= 3, "not retried");
    }
}

#[tokio::test]
async fn a_certified_stale_sequence_number_makes_the_client_resume_above_it() {
    let (group, secrets) = deal(4, 1, 15);
    let cluster = Cluster::start(
        group,
        secrets,
        vec![Behaviour::Honest; 4],
        Options::default(),
    )
    .await;
    let mut client = cluster.client(150).await;
    let last = client.next_seq() + 1_000_000;
    for fake in &cluster.fakes {
        fake.state
            .lock()
            .unwrap()
            .executed
            .insert(client.public_key(), (last, ServiceResult::Executed(vec![])));
    }
    let (reply, certified) = client.kv(&put(b"k", b"v")).await.unwrap();
    assert_eq!(reply, KvReply::Written { previous: None });
    assert_eq!(certified.certificate.seq, last + 1);
    assert_eq!(client.next_seq(), last + 2);
    let (_, certified) = client.kv(&get(b"k")).await.unwrap();
    assert_eq!(certified.certificate.seq, last + 2);

    // One Byzantine replica claiming a huge stale counter changes nothing.
    let (group, secrets) = deal(4, 1, 16);
    let cluster = Cluster::start(
        group,
        secrets,
        vec![Behaviour::Honest; 4],
        Options::default(),
    )
    .await;
    let mut client = cluster.client(151).await;
    let first = client.next_seq();
    cluster.fakes[0].state.lock().unwrap().executed.insert(
        client.public_key(),
        (u64::MAX - 5, ServiceResult::Executed(vec![])),
    );
    let (_, certified) = client.kv(&put(b"k", b"v")).await.unwrap();
    assert_eq!(certified.certificate.seq, first);
    assert_eq!(client.next_seq(), first + 1);
}

#[tokio::test]
async fn config_from_files_reaches_the_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let (group, secrets) = deal(4, 1, 17);
    keygen::write_files(&tmp.path().join("keys"), &group, &secrets).unwrap();
    let cluster = Cluster::start(
        group,
        secrets,
        vec![Behaviour::Honest; 4],
        Options::default(),
    )
    .await;
    let mut cluster_file =
        ClusterFile::new(INSTANCE, "keys/group.toml".into(), cluster.addrs.clone());
    cluster_file.timeout_ms = Some(3000);
    let cluster_path = tmp.path().join("cluster.toml");
    cluster_file.write(&cluster_path).unwrap();
    let key_path = tmp.path().join(client_key_file_name("carol"));
    let key_file = ClientKeyFile::generate("carol", &mut StdRng::seed_from_u64(170)).unwrap();
    key_file.write(&key_path).unwrap();

    let config = ClientConfig::from_files(&cluster_path, &key_path).unwrap();
    assert_eq!(config.timeout, Duration::from_millis(3000));
    assert_eq!(config.key.public(), key_file.public_key());
    assert_eq!(config.service, ServiceId::new(&cluster.group, INSTANCE));
    let mut client = Client::connect(config).await.unwrap();
    client.kv(&put(b"k", b"v")).await.unwrap();
    assert_eq!(client.kv(&get(b"k")).await.unwrap().0, value(b"v"));

    // A cluster file for another instance signs for another service: nobody accepts it.
    cluster_file.instance = "another-instance".into();
    cluster_file.write(&cluster_path).unwrap();
    let config = ClientConfig::from_files(&cluster_path, &key_path).unwrap();
    assert_ne!(config.service, ServiceId::new(&cluster.group, INSTANCE));
    let mut client = Client::connect(config).await.unwrap();
    let err = client.kv(&get(b"k")).await.unwrap_err();
    assert!(
        matches!(
            &err,
            ClientError::Refused {
                reason: Refusal::BadSignature,
                ..
            }
        ),
        "{err:?}"
    );
    // A key file readable by others is refused before anything is sent.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        ClientConfig::from_files(&cluster_path, &key_path),
        Err(ClientError::Files(_))
    ));
}

#[tokio::test]
async fn inconsistent_configurations_and_oversized_requests_are_refused_locally() {
    let (group, secrets) = deal(4, 1, 18);
    let cluster = Cluster::start(
        group,
        secrets,
        vec![Behaviour::Honest; 4],
        Options::default(),
    )
    .await;
    let mut config = cluster.config(IdentityKey::generate(&mut StdRng::seed_from_u64(180)));
    config.replicas.pop();
    assert!(matches!(
        Client::connect(config).await,
        Err(ClientError::Config(_))
    ));
    let mut client = cluster.client(181).await;
    let err = client
        .invoke(vec![0; maftia_smr::request::MAX_OPERATION + 1])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::RequestTooLarge { .. }),
        "{err:?}"
    );
    for fake in &cluster.fakes {
        assert_eq!(fake.received.load(Ordering::SeqCst), 0);
    }
    // The KV codec's own limit applies too, and the reply decodes.
    let (reply, _) = client.kv(&put(b"k", &[7; 1000])).await.unwrap();
    assert_eq!(reply, KvReply::Written { previous: None });
    let bytes = match client
        .invoke(encode_request(&get(b"k")).unwrap())
        .await
        .unwrap()
        .certificate
        .result
    {
        ServiceResult::Executed(bytes) => bytes,
        other => panic!("{other:?}"),
    };
    assert_eq!(decode_reply(&bytes).unwrap(), value(&[7; 1000]));
}

#[tokio::test]
async fn a_flooding_replica_neither_blocks_nor_starves_the_others() {
    let (group, secrets) = deal(4, 1, 19);
    let behaviours = vec![
        Behaviour::Flood,
        Behaviour::Honest,
        Behaviour::Honest,
        Behaviour::Honest,
    ];
    let cluster = Cluster::start(group, secrets, behaviours, Options::default()).await;
    let mut client = cluster.client(190).await;
    for round in 0..5u8 {
        let (reply, certified) = client.kv(&put(b"k", &[round])).await.unwrap();
        let previous = round.checked_sub(1).map(|r| vec![r]);
        assert_eq!(reply, KvReply::Written { previous });
        assert!(
            certified.latency < Duration::from_secs(2),
            "{:?}",
            certified.latency
        );
    }
}

/// Clients and their requests can move between tasks (the demo runs one client per task).
#[tokio::test]
async fn clients_and_their_requests_are_send() {
    fn assert_send<T: Send + 'static>(value: T) -> T {
        value
    }
    let (group, secrets) = deal(4, 1, 20);
    let cluster = Cluster::start(
        group,
        secrets,
        vec![Behaviour::Honest; 4],
        Options::default(),
    )
    .await;
    let client = assert_send(cluster.client(200).await);
    let task = tokio::spawn(async move {
        let mut client = client;
        client.kv(&put(b"k", b"v")).await.map(|(reply, _)| reply)
    });
    assert_eq!(
        task.await.unwrap().unwrap(),
        KvReply::Written { previous: None }
    );
}
