//! Hardening process tests: hostile input at a replica port of a running 4-replica cluster.
//!
//! - Ciphertext recorded between two replicas (through a TCP proxy the test controls) and
//!   replayed — as a whole new connection, or injected into the live connection — is refused;
//!   the replay inside the live connection counts as a link protocol violation; the replica
//!   stays up, the link recovers and ordering goes on without losing anything delivered.
//! - A bounded flood of garbage, oversized, truncated, half-finished and idle connections keeps
//!   the replica's resident memory under a stated bound while it keeps ordering requests.
//! - An authenticated peer (a compromised key) flooding 8 MiB garbage frames: memory stays under
//!   a stated bound, the frames become evidence, the honest replicas keep ordering.
mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// Client→server records (length prefix included) of each proxied connection, in accept order.
type Recorded = Arc<Mutex<Vec<Vec<Vec<u8>>>>>;

/// A TCP proxy in front of one replica port that parses the dialer's byte stream into records
/// (u32 big-endian length + body), forwards and records them, and on request replays an earlier
/// transport record of the same connection into it (a man in the middle replaying ciphertext).
struct RecordingProxy {
    addr: SocketAddr,
    recorded: Recorded,
    /// When set, the next client→server record of a connection past its first transport record
    /// is followed by a copy of that first transport record.
    inject: Arc<AtomicBool>,
    injected: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RecordingProxy {
    fn start(upstream: SocketAddr) -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let proxy = RecordingProxy {
            addr: listener.local_addr().unwrap(),
            recorded: Arc::default(),
            inject: Arc::default(),
            injected: Arc::default(),
            stop: Arc::default(),
        };
        let (recorded, inject, injected, stop) = (
            proxy.recorded.clone(),
            proxy.inject.clone(),
            proxy.injected.clone(),
            proxy.stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let index = {
                    let mut all = recorded.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                // Server → client: plain copy.
                let (mut from_server, mut to_client) =
                    (server.try_clone().unwrap(), client.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_server, &mut to_client);
                    let _ = to_client.shutdown(Shutdown::Both);
                });
                // Client → server: record by record.
                let (recorded, inject, injected) =
                    (recorded.clone(), inject.clone(), injected.clone());
                std::thread::spawn(move || {
                    let (mut client, mut server) = (client, server);
                    loop {
                        let mut header = [0u8; 4];
                        if client.read_exact(&mut header).is_err() {
                            break;
                        }
                        let len = u32::from_be_bytes(header) as usize;
                        if len > 1 << 20 {
                            break;
                        }
                        let mut record = header.to_vec();
                        record.resize(4 + len, 0);
                        if client.read_exact(&mut record[4..]).is_err()
                            || server.write_all(&record).is_err()
                        {
                            break;
                        }
                        let replay = {
                            let mut all = recorded.lock().unwrap();
                            let records = &mut all[index];
                            records.push(record);
                            // Records 0 and 1 are the Noise handshake messages 1 and 3.
                            (records.len() > 3 && inject.swap(false, Ordering::SeqCst))
                                .then(|| records[2].clone())
                        };
                        if let Some(replay) = replay {
                            injected.fetch_add(1, Ordering::SeqCst);
                            if server.write_all(&replay).is_err() {
                                break;
                            }
                        }
                    }
                    let _ = server.shutdown(Shutdown::Both);
                    let _ = client.shutdown(Shutdown::Both);
                });
            }
        });
        proxy
    }

    fn connection(&self, index: usize) -> Vec<Vec<u8>> {
        self.recorded.lock().unwrap()[index].clone()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Open a connection to `target`, write `bytes` (ignoring errors: the replica may close first)
/// and read until the replica closes it or 10 s pass; returns what the replica sent.
fn send_raw(target: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

const REFUSED_NOISE: &str = "maftia_refused_handshakes_total{reason=\"Noise\"}";

#[test]
fn replayed_ciphertext_is_refused_and_the_replica_keeps_ordering() {
    let mut cluster = Cluster::generate();
    let upstream = cluster.replicas[0].listen;
    let proxy = RecordingProxy::start(upstream);
    // Node 1 reaches node 0 through the proxy (the stream 1 → 0 and its acknowledgements).
    cluster.edit_config(1, |text| {
        let real = format!("\"{upstream}\"");
        assert!(text.contains(&real), "{text}");
        text.replacen(&real, &format!("\"{}\"", proxy.addr), 1)
    });
    cluster.start_all();
    for r in 0..6 {
        cluster.submit(r % N, &format!("before {r}"));
        cluster.submit((r + 1) % N, &format!("before {r}"));
    }
    cluster.wait("first requests delivered", ORDERING, |s| {
        agreed(s, &[0, 1, 2, 3], 6)
    });
    let recorded = proxy.connection(0);
    assert!(
        recorded.len() > 3,
        "the proxy recorded only {} records of the 1 → 0 connection",
        recorded.len()
    );
    let refused_before = cluster.status(0).unwrap().refused_handshakes;
    let noise_before = metric(&cluster.metrics(0), REFUSED_NOISE);

    // 1. The whole recorded dialer stream (handshake and transport records) replayed into a
    //    fresh connection: message 3 does not decrypt under the replica's fresh ephemeral key.
    let answer = send_raw(upstream, &recorded.concat());
    // The replica answered with at most its handshake message 2 (a record of < 1 KB), never
    // anything an authenticated peer would get.
    assert!(answer.len() < 1024, "{} bytes answered", answer.len());
    // 2. Only the transport records, as if they opened a connection.
    send_raw(upstream, &recorded[2..].concat());
    // 3. The handshake records twice over in one connection.
    send_raw(
        upstream,
        &[recorded[0].clone(), recorded[0].clone()].concat(),
    );
    cluster.wait("the replayed connections are refused", ORDERING, |s| {
        s[0].as_ref()
            .is_some_and(|s| s.refused_handshakes >= refused_before + 3)
    });
    assert!(
        metric(&cluster.metrics(0), REFUSED_NOISE) > noise_before,
        "the replayed handshake was not refused as a Noise failure:\n{}",
        cluster.metrics(0)
    );

    // 4. A replayed transport record injected into the live, authenticated connection.
    let violations_before = cluster
        .status(0)
        .unwrap()
        .evidence
        .get("1")
        .and_then(|k| k.get("Link/ProtocolViolation").copied())
        .unwrap_or(0);
    proxy.inject.store(true, Ordering::SeqCst);
    cluster.wait(
        "the replayed record counts as a link violation of node 1 at node 0",
        ORDERING,
        |s| {
            s[0].as_ref().is_some_and(|s| {
                s.evidence
                    .get("1")
                    .and_then(|k| k.get("Link/ProtocolViolation"))
                    .is_some_and(|c| *c > violations_before)
            })
        },
    );
    assert_eq!(proxy.injected.load(Ordering::SeqCst), 1);
    // The dialer reconnects through the proxy: a second recorded connection.
    cluster.wait("the link 1 → 0 is re-established", ORDERING, |s| {
        s.iter()
            .all(|s| s.as_ref().is_some_and(|s| s.peers_connected == N - 1))
    });
    assert!(proxy.recorded.lock().unwrap().len() >= 2);

    // The replica stays up, keeps what it delivered and keeps ordering, exactly once.
    for r in 0..6 {
        cluster.submit(r % N, &format!("after {r}"));
        cluster.submit((r + 1) % N, &format!("after {r}"));
    }
    let statuses = cluster.wait("later requests delivered", ORDERING, |s| {
        agreed(s, &[0, 1, 2, 3], 12)
    });
    assert!(cluster.alive(0), "replica 0 died\n{}", cluster.logs());
    for s in statuses.iter().flatten() {
        for peer in 0..N {
            let blamed: Vec<String> = evidence_against(s, peer)
                .into_iter()
                .filter(|k| k != "Link/ProtocolViolation" && !maftia_node::node::is_lag_signal(k))
                .collect();
            assert!(
                blamed.is_empty(),
                "replica {} blames {peer}: {:?}",
                s.id,
                s.evidence
            );
        }
    }
}

/// How much the replica's resident set may grow above its warmed-up level while the flood
/// runs. Unauthenticated connections are capped at `NetLimits::max_pending_handshakes` (32)
/// of about 2 KB each plus a 1 KB handshake record buffer (measured: well under 1 MiB of
/// growth for 900 connections), so reaching this bound means per-connection state leaks.
const FLOOD_RSS_GROWTH_BOUND_KIB: u64 = 16 * 1024;

#[test]
fn a_flood_of_hostile_connections_keeps_memory_bounded_and_the_replica_ordering() {
    let mut cluster = Cluster::start();
    for r in 0..8 {
        cluster.submit(r % N, &format!("warm {r}"));
        cluster.submit((r + 1) % N, &format!("warm {r}"));
    }
    cluster.wait("warm-up requests delivered", ORDERING, |s| {
        agreed(s, &[0, 1, 2, 3], 8)
    });
    let target = cluster.replicas[0].listen;
    let pid = cluster.pid(0);
    let (baseline, _) = rss_kib(pid).unwrap();
    let refused_before = cluster.status(0).unwrap().refused_handshakes;

    // Sample RSS while the flood runs.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Some((rss, _)) = rss_kib(pid) {
                    peak = peak.max(rss);
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            peak
        })
    };
    // Requests keep coming during the flood.
    let submitter = {
        let managements: Vec<SocketAddr> = cluster.replicas.iter().map(|r| r.management).collect();
        std::thread::spawn(move || {
            for r in 0..12 {
                for k in 0..2 {
                    submit_at(managements[(r + k) % N], format!("flood {r}").as_bytes()).unwrap();
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    const WAVES: usize = 6;
    const THREADS: usize = 6;
    const CONNECTIONS: usize = 25;
    let started = Instant::now();
    for wave in 0..WAVES {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    let mut garbage = vec![0u8; 64 * 1024];
                    for c in 0..CONNECTIONS {
                        // Cheap deterministic garbage (xorshift), different per connection.
                        let mut x = (wave * 1_000_003 + t * 10_007 + c + 1) as u64;
                        for b in garbage.iter_mut() {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            *b = x as u8;
                        }
                        let Ok(mut stream) =
                            TcpStream::connect_timeout(&target, Duration::from_secs(2))
                        else {
                            continue;
                        };
                        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                        match (t + c) % 5 {
                            // Random bytes.
                            0 => {
                                let _ = stream.write_all(&garbage);
                            }
                            // A record header announcing 4 GB, then garbage.
                            1 => {
                                let _ = stream.write_all(&[0xff; 4]);
                                let _ = stream.write_all(&garbage);
                            }
                            // A maximal handshake record of garbage.
                            2 => {
                                let _ = stream.write_all(&1024u32.to_be_bytes());
                                let _ = stream.write_all(&garbage[..1024]);
                            }
                            // Connect and say nothing (occupies a handshake slot until closed).
                            3 => {
                                held.push(stream);
                                continue;
                            }
                            // A well-formed Noise message 1 (makes the replica do its share of
                            // the handshake), then a garbage message 3; or stop halfway.
                            _ => {
                                let _ = stream.write_all(&32u32.to_be_bytes());
                                let _ = stream.write_all(&garbage[..32]);
                                let mut reply = [0u8; 4];
                                let _ = stream.read_exact(&mut reply);
                                if c % 2 == 0 {
                                    let _ = stream.write_all(&200u32.to_be_bytes());
                                    let _ = stream.write_all(&garbage[..200]);
                                } else {
                                    held.push(stream);
                                    continue;
                                }
                            }
                        }
                        let _ = stream.shutdown(Shutdown::Write);
                        let mut sink = [0u8; 2048];
                        let _ = stream.read(&mut sink);
                    }
                    std::thread::sleep(Duration::from_millis(500));
                    drop(held);
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    }
    let flood_time = started.elapsed();
    submitter.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let (after, hwm) = rss_kib(pid).unwrap();
    let connections = WAVES * THREADS * CONNECTIONS;
    println!(
        "flood: {connections} hostile connections in {flood_time:?}; replica 0 RSS: baseline \
         {baseline} KiB, peak sampled {peak} KiB, after {after} KiB, VmHWM {hwm} KiB; bound: \
         baseline + {FLOOD_RSS_GROWTH_BOUND_KIB} KiB"
    );
    assert!(cluster.alive(0), "replica 0 died\n{}", cluster.logs());
    assert!(
        peak <= baseline + FLOOD_RSS_GROWTH_BOUND_KIB,
        "replica 0 grew from {baseline} KiB to {peak} KiB under the flood"
    );
    // Every hostile connection was refused (counted), none became a peer.
    let statuses = cluster.wait("the flood is refused and counted", ORDERING, |s| {
        s[0].as_ref()
            .is_some_and(|s| s.refused_handshakes >= refused_before + (connections as u64) * 3 / 4)
    });
    println!(
        "refused handshakes at replica 0: {} (before the flood: {refused_before})",
        statuses[0].as_ref().unwrap().refused_handshakes
    );
    // Nothing delivered is lost and ordering goes on: 8 warm-up + 12 flood-time requests.
    let statuses = cluster.wait(
        "requests submitted during the flood delivered",
        ORDERING,
        |s| agreed(s, &[0, 1, 2, 3], 20),
    );
    for s in statuses.iter().flatten() {
        for peer in 0..N {
            assert!(
                evidence_against(s, peer)
                    .iter()
                    .all(|k| maftia_node::node::is_lag_signal(k)),
                "an honest replica is blamed: {:?}",
                s.evidence
            );
        }
    }
}

/// How much a replica's resident set may grow while an authenticated (Byzantine) peer floods it
/// with 8 MiB frames as fast as loopback TCP carries them (measured: ~440 MB/s, +33 MiB peak).
/// The receive side holds at most one partial frame per connection and hands complete frames
/// to a channel bounded in frames (`NetLimits::incoming_capacity`) and in bytes
/// (`NetLimits::incoming_max_bytes`, 64 MiB by default); the replica also drops undecodable
/// frames before logging them, faster than they arrive. 256 MiB is 32 such frames in flight.
const LARGE_FRAME_RSS_GROWTH_BOUND_KIB: u64 = 256 * 1024;

#[test]
fn an_authenticated_peer_flooding_large_garbage_frames_keeps_memory_bounded() {
    use maftia_net::{NetConfig, Network, Recipients};
    let mut cluster = Cluster::start();
    for r in 0..4 {
        cluster.submit(r % N, &format!("warm {r}"));
        cluster.submit((r + 1) % N, &format!("warm {r}"));
    }
    cluster.wait("warm-up requests delivered", ORDERING, |s| {
        agreed(s, &[0, 1, 2, 3], 4)
    });
    // Node 3's key is compromised: the honest process stops and an impostor holding its keys
    // floods replica 0 with 8 MiB frames of garbage.
    cluster.kill(3);
    let keys = cluster.dir.path().join("keys");
    let (group, secret) = maftia_crypto::keygen::load_node(
        &keys.join("group.toml"),
        &keys.join("node-3.secret.toml"),
    )
    .unwrap();
    let pid = cluster.pid(0);
    let (baseline, _) = rss_kib(pid).unwrap();
    let target = cluster.replicas[0].listen;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let flood = Duration::from_secs(8);
    let (sent, peak) = runtime.block_on(async {
        let peers = [(maftia_core::NodeId(0), target)].into_iter().collect();
        let config = NetConfig::from_keys(&group, &secret, "127.0.0.1:0".parse().unwrap(), peers);
        let (network, _incoming) = Network::start(config).await.unwrap();
        let mut garbage = vec![0u8; 8 << 20];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in garbage.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let frame = bytes::Bytes::from(garbage);
        let (mut sent, mut peak) = (0u64, 0u64);
        let started = Instant::now();
        while started.elapsed() < flood {
            let report = network
                .send(&Recipients::One(maftia_core::NodeId(0)), frame.clone())
                .unwrap();
            if report.all_queued() {
                sent += 1;
            } else {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if let Some((rss, _)) = rss_kib(pid) {
                peak = peak.max(rss);
            }
        }
        let stats = network.stats();
        println!(
            "impostor link stats: {:?}",
            stats.peers.get(&maftia_core::NodeId(0))
        );
        network.shutdown().await;
        (sent, peak)
    });
    let (after, hwm) = rss_kib(pid).unwrap();
    println!(
        "large-frame flood: {sent} frames of 8 MiB queued in {flood:?}; replica 0 RSS: baseline \
         {baseline} KiB, peak sampled {peak} KiB, after {after} KiB, VmHWM {hwm} KiB; bound: \
         baseline + {LARGE_FRAME_RSS_GROWTH_BOUND_KIB} KiB"
    );
    assert!(cluster.alive(0), "replica 0 died\n{}", cluster.logs());
    assert!(
        hwm <= baseline + LARGE_FRAME_RSS_GROWTH_BOUND_KIB,
        "replica 0 peaked at {hwm} KiB (baseline {baseline} KiB) under the flood"
    );
    // The garbage counts as evidence against node 3, and the three honest replicas go on.
    for r in 0..4 {
        cluster.submit(r % 3, &format!("after {r}"));
        cluster.submit((r + 1) % 3, &format!("after {r}"));
    }
    let statuses = cluster.wait("honest replicas keep ordering", ORDERING, |s| {
        agreed(s, &[0, 1, 2], 8)
    });
    let against = evidence_against(statuses[0].as_ref().unwrap(), 3);
    assert!(
        against.iter().any(|k| k.starts_with("Frame/")),
        "no evidence against the impostor: {against:?}"
    );
}
