//! Process tests of the replicated key-value service: `maftia kv` against a real cluster, bad
//! input at the client port, crash consistency under client load (with a linearizability check
//! of the history the clients observed), `maftia demo`, and a replica that goes silent and
//! comes back.
//!
//! Every wait is bounded; a failing wait prints the tail of every replica's log. The crash test
//! draws its schedule from a seed it prints; `MAFTIA_CRASH_SEED=<seed>` replays it.
mod support;

use maftia_client::files::ClusterFile;
use maftia_client::wire::{self, ClientMessage, Refusal, ReplicaMessage, MAX_CLIENT_FRAME};
use maftia_client::{Client, ClientConfig, ClientError};
use maftia_crypto::bls::KeySetId;
use maftia_crypto::identity::IdentityKey;
use maftia_smr::kv::{decode_reply, encode_request, KvReply, KvRequest};
use maftia_smr::lincheck::{self, KvModel, Operation, Verdict};
use maftia_smr::request::{
    ReplyCollector, ReplyShare, ServiceId, ServiceResult, SignedRequest, MAX_OPERATION,
};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{converged, http, maftia, service_of, Cluster, StatusSnapshot, N, ORDERING};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Search steps the linearizability checker may take (as `maftia demo`).
const LINCHECK_BUDGET: usize = 50_000_000;
/// Time allowed for all replicas to reach the same state once the load stops.
const CONVERGE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// maftia kv
// ---------------------------------------------------------------------------------------------

/// Run `maftia kv` as testnet client `client` with `--timeout timeout`.
fn kv(cluster: &Cluster, client: usize, timeout: u64, args: &[&str]) -> Output {
    maftia()
        .arg("kv")
        .arg("--cluster")
        .arg(cluster.cluster_file())
        .arg("--key")
        .arg(cluster.client_key(client))
        .args(["--timeout", &timeout.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Run `maftia kv` (client 0 unless `client`), require success and a verified reply, return
/// stdout.
fn kv_ok(cluster: &Cluster, client: usize, args: &[&str]) -> String {
    let out = kv(cluster, client, 10, args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "maftia kv {args:?} failed\nstdout: {stdout}\nstderr: {stderr}\n{}",
        cluster.logs()
    );
    assert!(
        stderr.contains("verified: reply certificate for request")
            && stderr.contains("checked against the service key")
            && !stderr.contains("misbehaving"),
        "maftia kv {args:?}: no clean verification report on stderr: {stderr}"
    );
    stdout
}

#[test]
fn kv_cli_round_trip() {
    let mut cluster = Cluster::start();
    let c = &cluster;
    assert_eq!(
        kv_ok(c, 0, &["put", "k", "v"]),
        "ok (previous value: (absent))\n"
    );
    assert_eq!(kv_ok(c, 0, &["get", "k"]), "v\n");
    assert_eq!(kv_ok(c, 0, &["put", "k", "v2"]), "ok (previous value: v)\n");
    // Compare-and-set: a wrong expectation changes nothing; the right one swaps.
    assert_eq!(
        kv_ok(c, 0, &["cas", "k", "--expected", "v", "--new", "w"]),
        "not swapped (found: v2)\n"
    );
    assert_eq!(kv_ok(c, 0, &["get", "k"]), "v2\n");
    assert_eq!(
        kv_ok(c, 0, &["cas", "k", "--expected", "v2", "--new", "w"]),
        "swapped (found: v2)\n"
    );
    // Without --expected: only if the key is absent.
    assert_eq!(
        kv_ok(c, 0, &["cas", "fresh", "--new", "first"]),
        "swapped (found: (absent))\n"
    );
    assert_eq!(
        kv_ok(c, 0, &["cas", "fresh", "--new", "again"]),
        "not swapped (found: first)\n"
    );
    // Another client sees the same state.
    assert_eq!(
        kv_ok(c, 1, &["put", "k2", "x"]),
        "ok (previous value: (absent))\n"
    );
    assert_eq!(kv_ok(c, 1, &["get", "k"]), "w\n");
    // Ranges: [start, end), in key order, with a limit and a resume point.
    assert_eq!(kv_ok(c, 0, &["range", "k"]), "k\tw\nk2\tx\n");
    assert_eq!(kv_ok(c, 0, &["range", "a", "k2"]), "fresh\tfirst\nk\tw\n");
    let limited = kv_ok(c, 0, &["range", "a", "--limit", "1"]);
    assert_eq!(limited, "fresh\tfirst\n(more: continue from k)\n");
    // Delete, then the key is gone (and deleting again finds nothing).
    assert_eq!(kv_ok(c, 0, &["delete", "k"]), "ok (previous value: w)\n");
    assert_eq!(kv_ok(c, 0, &["get", "k"]), "(absent)\n");
    assert_eq!(
        kv_ok(c, 0, &["delete", "k"]),
        "ok (previous value: (absent))\n"
    );
    assert_eq!(kv_ok(c, 0, &["range", "a"]), "fresh\tfirst\nk2\tx\n");
    // Every replica executed the same requests and holds the same two keys.
    let statuses = cluster.wait("all replicas execute every request", ORDERING, |s| {
        converged(s) && s[0].as_ref().is_some_and(|s| service_of(s).keys == 2)
    });
    let executed = service_of(statuses[0].as_ref().unwrap()).executed;
    assert_eq!(executed, 17, "one ordered entry per kv command");

    // One replica down (f = 1): still answered, still verified.
    cluster.kill(3);
    assert_eq!(kv_ok(&cluster, 2, &["get", "k2"]), "x\n");

    // Every replica down: a clear error within the timeout, nothing on stdout.
    for i in 0..N {
        cluster.kill(i);
    }
    let started = Instant::now();
    let out = kv(&cluster, 0, 2, &["get", "k2"]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a get succeeded with every replica down"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("the cluster is unreachable: 0 replica(s) reached, 2 needed")
            && stderr.contains("Connection refused"),
        "{stderr}"
    );
    assert!(
        took < Duration::from_secs(5),
        "--timeout 2 took {took:?} to fail"
    );
}

// ---------------------------------------------------------------------------------------------
// The client port under bad input
// ---------------------------------------------------------------------------------------------

/// A length-prefixed frame.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// A client-port frame carrying `request`.
fn request_frame(request: &SignedRequest) -> Vec<u8> {
    framed(&wire::encode_client(&ClientMessage::Request(request.clone())).unwrap())
}

/// Read the next replica message of `stream`: `Ok(None)` if the replica closed the connection.
async fn next_message(stream: &mut TcpStream) -> Result<Option<ReplicaMessage>, String> {
    let read = tokio::time::timeout(
        Duration::from_secs(20),
        wire::read_frame(stream, wire::MAX_REPLICA_FRAME),
    )
    .await
    .map_err(|_| "no answer within 20 s".to_string())?;
    match read {
        Ok(Some(frame)) => wire::decode_replica(&frame)
            .map(Some)
            .map_err(|e| format!("the replica sent garbage: {e}")),
        Ok(None) => Ok(None),
        // A reset is a close too.
        Err(wire::WireError::Io(_)) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Send `bytes` on a new connection to `addr` and return the first answer (`None`: closed).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Result<Option<ReplicaMessage>, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.write_all(bytes).await.map_err(|e| e.to_string())?;
    next_message(&mut stream).await
}

/// Send one request frame to every replica (one connection each) and return each one's answer.
async fn to_every_replica(addrs: &[SocketAddr], frame: &[u8]) -> Vec<ReplicaMessage> {
    let mut streams = Vec::new();
    for addr in addrs {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(frame).await.unwrap();
        streams.push(stream);
    }
    let mut answers = Vec::new();
    for (i, stream) in streams.iter_mut().enumerate() {
        match next_message(stream).await {
            Ok(Some(message)) => answers.push(message),
            other => panic!("replica {i} gave no answer to a valid request: {other:?}"),
        }
    }
    answers
}

fn refusal(answer: Result<Option<ReplicaMessage>, String>) -> Refusal {
    match answer {
        Ok(Some(ReplicaMessage::Refused { reason, .. })) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Combine the reply shares among `answers` into a certificate; returns the certified result.
fn certify(
    service: ServiceId,
    group: &maftia_crypto::keygen::GroupPublic,
    request: &SignedRequest,
    answers: &[ReplicaMessage],
) -> ServiceResult {
    let keys = Arc::new(group.bls[&KeySetId::Reply].clone());
    let mut collector = ReplyCollector::new(service, keys, request.client, request.seq);
    let mut certificate = None;
    for answer in answers {
        let ReplicaMessage::Reply(share) = answer else {
            panic!("a refusal of a valid request: {answer:?}");
        };
        if let Some(c) = collector.add(share.clone()).unwrap() {
            certificate.get_or_insert(c);
        }
    }
    assert!(
        collector.culprits().is_empty(),
        "{:?}",
        collector.culprits()
    );
    certificate.expect("f + 1 matching shares").result
}

fn executed(result: &ServiceResult) -> KvReply {
    match result {
        ServiceResult::Executed(bytes) => decode_reply(bytes).unwrap(),
        other => panic!("not executed: {other:?}"),
    }
}

#[test]
fn bad_client_requests_change_nothing() {
    let cluster = Cluster::start();
    let addrs = cluster.client_ports();
    let cluster_file = ClusterFile::load(&cluster.cluster_file()).unwrap();
    let group = cluster_file.load_group(&cluster.cluster_file()).unwrap();
    let service = ServiceId::new(&group, &cluster_file.instance);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client_config = |i: usize| {
        let mut config =
            ClientConfig::from_files(&cluster.cluster_file(), &cluster.client_key(i)).unwrap();
        config.timeout = Duration::from_secs(15);
        config
    };
    let mut client0 = runtime.block_on(Client::connect(client_config(0))).unwrap();
    let kv0 = |client: &mut Client, request: KvRequest| -> KvReply {
        runtime
            .block_on(client.kv(&request))
            .unwrap_or_else(|e| panic!("{request:?}: {e}\n{}", cluster.logs()))
            .0
    };
    let put = |key: &str, value: &str| KvRequest::Put {
        key: key.into(),
        value: value.into(),
    };
    let get = |key: &str| KvRequest::Get { key: key.into() };

    // A first real request: one ordered entry, one key, at every replica.
    assert_eq!(
        kv0(&mut client0, put("a", "1")),
        KvReply::Written { previous: None }
    );
    let wait_executed = |count: u64, keys: u64| {
        cluster.wait(
            &format!("every replica at {count} executed entries and {keys} keys"),
            ORDERING,
            |s| {
                converged(s)
                    && s[0].as_ref().is_some_and(|s| {
                        service_of(s).executed == count && service_of(s).keys == keys
                    })
            },
        )
    };
    wait_executed(1, 1);

    let key1 = maftia_client::files::ClientKeyFile::load(&cluster.client_key(1))
        .unwrap()
        .1;
    let evil = encode_request(&put("evil", "1")).unwrap();
    runtime.block_on(async {
        for (i, addr) in addrs.iter().enumerate() {
            // A valid length prefix and a body that is not a message.
            let answer = exchange(*addr, &framed(b"this is no maftia envelope")).await;
            assert!(
                matches!(refusal(answer), Refusal::Malformed(_)),
                "replica {i}"
            );
            // A length prefix over the limit: the replica hangs up without reading the body.
            for announced in [MAX_CLIENT_FRAME as u32 + 1, u32::MAX] {
                let mut bytes = announced.to_be_bytes().to_vec();
                bytes.extend_from_slice(&[7; 64]);
                assert_eq!(
                    exchange(*addr, &bytes).await,
                    Ok(None),
                    "replica {i} kept a connection that announced {announced} bytes"
                );
            }
            // A validly signed request of a key not on the client list.
            let stranger = IdentityKey::generate(&mut rand::rngs::OsRng);
            let request = SignedRequest::sign(&stranger, &service, 1, evil.clone());
            assert_eq!(
                refusal(exchange(*addr, &request_frame(&request)).await),
                Refusal::UnknownClient,
                "replica {i}"
            );
            // An operation over MAX_OPERATION from a listed client.
            let request = SignedRequest::sign(&key1, &service, 1, vec![0; MAX_OPERATION + 1]);
            assert_eq!(
                refusal(exchange(*addr, &request_frame(&request)).await),
                Refusal::TooLarge {
                    size: MAX_OPERATION as u64 + 1,
                    limit: MAX_OPERATION as u64
                },
                "replica {i}"
            );
            // A listed client's request altered after signing, and one signed for another
            // service.
            let mut altered = SignedRequest::sign(&key1, &service, 1, evil.clone());
            altered.operation = encode_request(&put("evil", "2")).unwrap();
            let other_service = ServiceId::new(&group, "another-instance");
            let foreign = SignedRequest::sign(&key1, &other_service, 1, evil.clone());
            for request in [altered, foreign] {
                assert_eq!(
                    refusal(exchange(*addr, &request_frame(&request)).await),
                    Refusal::BadSignature,
                    "replica {i}"
                );
            }
        }
    });

    // An operation over the limit never leaves the client library.
    let too_large = runtime.block_on(client0.invoke(vec![0; MAX_OPERATION + 1]));
    assert!(
        matches!(too_large, Err(ClientError::RequestTooLarge { size, limit })
            if size == MAX_OPERATION + 1 && limit == MAX_OPERATION),
        "{too_large:?}"
    );

    // None of it was ordered.
    std::thread::sleep(Duration::from_secs(1));
    wait_executed(1, 1);

    // A real request sent as raw signed bytes to every replica, then the same bytes again after
    // execution: the second time every replica answers from its reply cache, with the same
    // share, and nothing is ordered.
    let key2 = maftia_client::files::ClientKeyFile::load(&cluster.client_key(2))
        .unwrap()
        .1;
    let dup = SignedRequest::sign(
        &key2,
        &service,
        7,
        encode_request(&put("dup", "x")).unwrap(),
    );
    let frame = request_frame(&dup);
    let first = runtime.block_on(to_every_replica(&addrs, &frame));
    let result = certify(service, &group, &dup, &first);
    assert_eq!(executed(&result), KvReply::Written { previous: None });
    wait_executed(2, 2);
    let again = runtime.block_on(to_every_replica(&addrs, &frame));
    assert_eq!(certify(service, &group, &dup, &again), result);
    let shares = |answers: &[ReplicaMessage]| -> BTreeMap<u16, ReplyShare> {
        answers
            .iter()
            .filter_map(|a| match a {
                ReplicaMessage::Reply(share) => Some((share.replica, share.clone())),
                ReplicaMessage::Refused { .. } => None,
            })
            .collect()
    };
    assert_eq!(
        shares(&first),
        shares(&again),
        "the retry was not answered from the reply cache"
    );
    // An older sequence number of the same client: a certified stale-sequence answer.
    let stale = SignedRequest::sign(
        &key2,
        &service,
        6,
        encode_request(&put("dup", "y")).unwrap(),
    );
    let answers = runtime.block_on(to_every_replica(&addrs, &request_frame(&stale)));
    assert_eq!(
        certify(service, &group, &stale, &answers),
        ServiceResult::StaleSequence { last: 7 }
    );
    std::thread::sleep(Duration::from_secs(1));
    wait_executed(2, 2);

    // The state: the real writes are there, none of the bad ones. Two more real requests.
    assert_eq!(
        kv0(&mut client0, get("dup")),
        KvReply::Value {
            value: Some(b"x".to_vec())
        }
    );
    assert_eq!(
        kv0(&mut client0, get("evil")),
        KvReply::Value { value: None }
    );
    let statuses = wait_executed(4, 2);
    for s in statuses.iter().flatten() {
        assert!(
            s.evidence.is_empty(),
            "bad client requests produced evidence against a replica: {s:?}"
        );
    }
}

/// The client library turns refusals by `f + 1` replicas into a prompt `ClientError::Refused`
/// (not a timeout): a key that is not on the client list, and a client configured for another
/// service instance (every signature fails).
#[test]
fn the_client_library_reports_refusals_of_unknown_or_misconfigured_clients() {
    let cluster = Cluster::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let timeout = Duration::from_secs(8);
    let config = || {
        let mut config =
            ClientConfig::from_files(&cluster.cluster_file(), &cluster.client_key(0)).unwrap();
        config.timeout = timeout;
        config
    };
    let mut stranger = config();
    stranger.key = IdentityKey::generate(&mut rand::rngs::OsRng);
    let mut misconfigured = config();
    misconfigured.service = ServiceId::new(&misconfigured.group, "another-instance");
    for (config, expected) in [
        (stranger, Refusal::UnknownClient),
        (misconfigured, Refusal::BadSignature),
    ] {
        let started = Instant::now();
        let outcome = runtime.block_on(async {
            let mut client = Client::connect(config).await.unwrap();
            client
                .kv(&KvRequest::Put {
                    key: b"evil".to_vec(),
                    value: b"1".to_vec(),
                })
                .await
        });
        let took = started.elapsed();
        match outcome {
            Err(ClientError::Refused { reason, by }) => {
                assert_eq!(reason, expected);
                assert!(by.len() >= 2, "refused by {by:?}");
            }
            other => panic!(
                "expected a refusal ({expected:?}), got after {took:?}: {other:?}\n\
                 (a replica refuses admission with seq 0, and the client ignores refusals whose \
                 seq is not its request's)"
            ),
        }
        assert!(took < timeout / 2, "the refusal took {took:?}");
    }
    // Nothing was ordered.
    let statuses = cluster.statuses();
    for s in statuses.iter().flatten() {
        assert_eq!(service_of(s).executed, 0, "{s:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Client load with a recorded history
// ---------------------------------------------------------------------------------------------

type History = Vec<Operation<KvRequest, KvReply>>;

/// Clients writing continuously (each on its own key) through the client library, recording
/// the history for the linearizability checker.
struct Load {
    runtime: tokio::runtime::Runtime,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    history: Arc<Mutex<History>>,
    completed: Arc<AtomicU64>,
    unanswered: Arc<AtomicU64>,
    /// Time zero of the history.
    origin: Instant,
    /// A client that reads the final state once the load has stopped.
    reader: ClientConfig,
}

/// Keys the load works on (few, so that clients contend).
const LOAD_KEYS: u64 = 6;

fn random_request(rng: &mut impl Rng, client: u64, counter: u64) -> KvRequest {
    let key = format!("key-{}", rng.gen_range(0..LOAD_KEYS)).into_bytes();
    let value = format!("c{client}-{counter}").into_bytes();
    match rng.gen_range(0..100) {
        0..=34 => KvRequest::Get { key },
        35..=69 => KvRequest::Put { key, value },
        70..=79 => KvRequest::CompareAndSet {
            key,
            expected: None,
            new: Some(value),
        },
        80..=86 => {
            // Expect a value some client may have written.
            let expected = format!(
                "c{}-{}",
                rng.gen_range(0..3),
                counter.saturating_sub(rng.gen_range(0..3))
            );
            KvRequest::CompareAndSet {
                key,
                expected: Some(expected.into_bytes()),
                new: Some(value),
            }
        }
        87..=93 => KvRequest::Delete { key },
        _ => KvRequest::Range {
            start: b"key-1".to_vec(),
            end: Some(b"key-4".to_vec()),
            limit: 2,
        },
    }
}

impl Load {
    fn start(cluster: &Cluster, clients: usize, seed: u64) -> Load {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(Vec::new()));
        let completed = Arc::new(AtomicU64::new(0));
        let unanswered = Arc::new(AtomicU64::new(0));
        let origin = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let mut config =
                ClientConfig::from_files(&cluster.cluster_file(), &cluster.client_key(c)).unwrap();
            config.timeout = Duration::from_secs(6);
            let (stop, history, completed, unanswered) = (
                stop.clone(),
                history.clone(),
                completed.clone(),
                unanswered.clone(),
            );
            tasks.push(runtime.spawn(async move {
                let mut client = Client::connect(config).await.unwrap();
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ (c as u64 + 1));
                let mut counter = 0;
                while !stop.load(Ordering::Relaxed) {
                    counter += 1;
                    let request = random_request(&mut rng, c as u64, counter);
                    let invoke = origin.elapsed().as_nanos() as u64;
                    let result = client.kv(&request).await;
                    let complete = origin.elapsed().as_nanos() as u64;
                    let operation = match result {
                        Ok((reply, _)) => {
                            completed.fetch_add(1, Ordering::Relaxed);
                            Operation::completed(c as u64, invoke, complete, request, reply)
                        }
                        Err(e) => {
                            // The outcome is unknown: it may take effect later, or never.
                            eprintln!("client {c}: request {counter} unanswered: {e}");
                            unanswered.fetch_add(1, Ordering::Relaxed);
                            Operation::pending(c as u64, invoke, request)
                        }
                    };
                    history.lock().unwrap().push(operation);
                }
            }));
        }
        let mut reader =
            ClientConfig::from_files(&cluster.cluster_file(), &cluster.client_key(7)).unwrap();
        reader.timeout = Duration::from_secs(20);
        Load {
            runtime,
            stop,
            tasks,
            history,
            completed,
            unanswered,
            origin,
            reader,
        }
    }

    fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Stop the clients (each finishes its request in flight), read every key once more (so
    /// that the history ends with the final state) and return the history.
    fn finish(self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        let origin = self.origin;
        let final_read = self.runtime.block_on(async {
            for task in self.tasks {
                tokio::time::timeout(Duration::from_secs(30), task)
                    .await
                    .expect("a client did not stop")
                    .expect("a client task panicked");
            }
            let mut reader = Client::connect(self.reader).await.unwrap();
            let call = KvRequest::Range {
                start: b"key-".to_vec(),
                end: None,
                limit: 100,
            };
            let invoke = origin.elapsed().as_nanos() as u64;
            let (reply, _) = reader
                .kv(&call)
                .await
                .unwrap_or_else(|e| panic!("the final read failed: {e}"));
            let complete = origin.elapsed().as_nanos() as u64;
            Operation::completed(u64::MAX, invoke, complete, call, reply)
        });
        println!(
            "load: {} requests completed, {} without an answer; final state {}",
            self.completed.load(Ordering::Relaxed),
            self.unanswered.load(Ordering::Relaxed),
            match &final_read.response {
                Some(KvReply::Range { entries, .. }) => entries
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "{}={}",
                            String::from_utf8_lossy(k),
                            String::from_utf8_lossy(v)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                other => format!("{other:?}"),
            }
        );
        let mut history = std::mem::take(&mut *self.history.lock().unwrap());
        history.push(final_read);
        history
    }
}

/// Assert the history is linearizable (and not trivially small).
fn assert_linearizable(history: &History, min_completed: usize) {
    let completed = history.iter().filter(|o| !o.is_pending()).count();
    assert!(
        completed >= min_completed,
        "only {completed} operations completed under load"
    );
    let started = Instant::now();
    let verdict = lincheck::check(&KvModel::default(), history, LINCHECK_BUDGET);
    println!(
        "linearizability of {} operations checked in {:?}",
        history.len(),
        started.elapsed()
    );
    assert!(
        matches!(verdict, Verdict::Linearizable),
        "the clients' history is not linearizable: {verdict:?}"
    );
    // The check has teeth: the same history with the final read showing a value nobody wrote
    // is refuted.
    let mut forged = history.clone();
    if let Some(Operation {
        response: Some(KvReply::Range { entries, .. }),
        ..
    }) = forged.last_mut()
    {
        entries.push((b"key-9".to_vec(), b"never written".to_vec()));
    } else {
        panic!("the history does not end with the final read");
    }
    let verdict = lincheck::check(&KvModel::default(), &forged, LINCHECK_BUDGET);
    assert!(
        matches!(verdict, Verdict::NotLinearizable { .. }),
        "a forged final read was not refuted: {verdict:?}"
    );
}

/// Every stable checkpoint seen, by delivery height: (executed entries, state digest).
#[derive(Default)]
struct Checkpoints(BTreeMap<u64, BTreeSet<(u64, String)>>);

impl Checkpoints {
    fn record(&mut self, replica: usize, status: &StatusSnapshot) {
        if let Some((height, executed, digest)) = &service_of(status).checkpoint {
            let seen = self.0.entry(*height).or_default();
            seen.insert((*executed, digest.clone()));
            assert_eq!(
                seen.len(),
                1,
                "replica {replica} certified a different checkpoint at height {height}: {seen:?}"
            );
        }
    }

    fn record_all(&mut self, statuses: &[Option<StatusSnapshot>]) {
        for (i, s) in statuses.iter().enumerate() {
            if let Some(s) = s {
                self.record(i, s);
            }
        }
    }
}

/// Wait until every replica reports the same delivered rounds, chain head, executed entries and
/// keys; return the statuses.
fn wait_converged(cluster: &Cluster) -> Vec<Option<StatusSnapshot>> {
    cluster.wait(
        "every replica at the same delivery, chain head and service state",
        CONVERGE,
        converged,
    )
}

// ---------------------------------------------------------------------------------------------
// Crash consistency
// ---------------------------------------------------------------------------------------------

#[test]
fn crash_consistency_under_load() {
    let seed = std::env::var("MAFTIA_CRASH_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("MAFTIA_CRASH_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        });
    println!("crash schedule seed {seed} (replay with MAFTIA_CRASH_SEED={seed})");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut cluster = Cluster::start();
    let load = Load::start(&cluster, 3, seed);
    let mut checkpoints = Checkpoints::default();
    let mut killed = BTreeSet::new();
    let mut after_checkpoint_kills = 0;
    for iteration in 0..6 {
        let victim = rng.gen_range(0..N);
        // Odd iterations: kill right after the victim's stable checkpoint changes.
        let at_checkpoint = iteration % 2 == 1;
        if at_checkpoint {
            let before = cluster
                .status(victim)
                .map(|s| service_of(&s).checkpoint.clone());
            let deadline = Instant::now() + Duration::from_secs(45);
            loop {
                if let Some(s) = cluster.status(victim) {
                    checkpoints.record(victim, &s);
                    let now = service_of(&s).checkpoint.clone();
                    if now.is_some() && Some(&now) != before.as_ref() {
                        break;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "seed {seed}: replica {victim} took no new checkpoint in 45 s under load\n{}",
                    cluster.logs()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            after_checkpoint_kills += 1;
        } else {
            std::thread::sleep(Duration::from_millis(rng.gen_range(300..2000)));
        }
        checkpoints.record_all(&cluster.statuses());
        cluster.kill(victim);
        killed.insert(victim);
        let down = Duration::from_millis(rng.gen_range(100..1500));
        println!(
            "iteration {iteration}: killed replica {victim}{} ({} requests completed so far); \
             restarting it in {down:?}",
            if at_checkpoint {
                " right after a checkpoint"
            } else {
                ""
            },
            load.completed()
        );
        std::thread::sleep(down);
        let target = cluster
            .statuses()
            .iter()
            .flatten()
            .map(|s| s.delivered_rounds)
            .max()
            .unwrap_or(0);
        cluster.spawn(victim, &[]);
        // At most f = 1 replica faulty at a time: the next crash only once this one caught up.
        let progress = load.completed();
        cluster.wait(
            &format!("seed {seed}: replica {victim} restarts and catches up to delivery {target}"),
            ORDERING,
            |s| {
                s[victim]
                    .as_ref()
                    .is_some_and(|s| s.delivered_rounds >= target)
            },
        );
        let deadline = Instant::now() + ORDERING;
        while load.completed() <= progress {
            assert!(
                Instant::now() < deadline,
                "seed {seed}: the clients made no progress after replica {victim} restarted\n{}",
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let history = load.finish();
    let statuses = wait_converged(&cluster);
    checkpoints.record_all(&statuses);
    for i in &killed {
        let s = statuses[*i].as_ref().unwrap();
        assert!(s.incarnation >= 2, "replica {i} was restarted: {s:?}");
    }
    for s in statuses.iter().flatten() {
        for (peer, kinds) in &s.evidence {
            assert!(
                kinds.keys().all(|k| k.contains("FutureRound")),
                "seed {seed}: replica {} holds evidence against {peer} in a crash-only run: {kinds:?}",
                s.id
            );
        }
    }
    println!(
        "checkpoints seen: {:?}; {after_checkpoint_kills} kills right after a checkpoint",
        checkpoints.0.keys().collect::<Vec<_>>()
    );
    assert!(
        !checkpoints.0.is_empty(),
        "no checkpoint was certified under load"
    );
    assert_linearizable(&history, 50);
}

// ---------------------------------------------------------------------------------------------
// maftia demo
// ---------------------------------------------------------------------------------------------

#[test]
fn demo_runs_end_to_end() {
    let mut child = maftia()
        .args(["demo", "--duration", "12", "--clients", "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Read both pipes on threads so that the demo never blocks on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    let deadline = Instant::now() + Duration::from_secs(150);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("maftia demo did not finish within 150 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    assert!(
        status.success(),
        "maftia demo failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for expected in [
        "linearizability      PASS",
        "replicas agree       yes",
        "replies verified",
    ] {
        assert!(
            stdout.contains(expected),
            "no {expected:?} in the demo's output:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    // The demo removed its temporary cluster (its directory names the demo's pid).
    let prefix = format!("maftia-demo-{pid}-");
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "the demo left {left:?} behind");
}

// ---------------------------------------------------------------------------------------------
// A replica that goes silent and comes back
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "byzantine-test-modes")]
fn switch(cluster: &Cluster, i: usize, mode: &str) {
    let (code, body) = http(
        cluster.replicas[i].management,
        "POST",
        "/byzantine",
        mode.as_bytes(),
    )
    .unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let expected = (mode != "none").then(|| mode.to_string());
    cluster.wait(&format!("replica {i} switches to {mode}"), ORDERING, |s| {
        s[i].as_ref().is_some_and(|s| s.byzantine == expected)
    });
}

#[cfg(feature = "byzantine-test-modes")]
#[test]
fn a_silent_replica_that_comes_back_converges_and_the_history_stays_linearizable() {
    let silent = 2;
    let cluster = Cluster::start_with(|text| text, |_| vec!["--allow-byzantine-switch".into()]);
    let load = Load::start(&cluster, 3, 0x5111e47);
    std::thread::sleep(Duration::from_secs(3));
    switch(&cluster, silent, "silent");
    let before = load.completed();
    let rounds_before = cluster.status(0).unwrap().delivered_rounds;
    std::thread::sleep(Duration::from_secs(5));
    let during = load.completed() - before;
    let rounds_during = cluster.status(0).unwrap().delivered_rounds - rounds_before;
    println!("while replica {silent} was silent: {during} requests, {rounds_during} deliveries");
    assert!(
        during >= 5 && rounds_during >= 5,
        "the service stalled with one silent replica ({during} requests, {rounds_during} deliveries)\n{}",
        cluster.logs()
    );
    switch(&cluster, silent, "none");
    std::thread::sleep(Duration::from_secs(4));
    let history = load.finish();
    let statuses = wait_converged(&cluster);
    let mut checkpoints = Checkpoints::default();
    checkpoints.record_all(&statuses);
    assert_linearizable(&history, 30);
}
