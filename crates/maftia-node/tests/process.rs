//! Process tests: real `maftia node` processes on loopback, configured by `maftia testnet`.
//!
//! Every wait is bounded; a failing test prints the tail of every replica's log.
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::{agreed, evidence_against, field, http, maftia, Cluster, N, ORDERING, STARTUP};

#[test]
fn four_replicas_order_a_stream_of_requests_and_shut_down_cleanly() {
    let mut cluster = Cluster::start();
    let total = 40;
    for r in 0..total {
        // Each request at f + 1 = 2 replicas.
        cluster.submit(r % N, &format!("request {r}"));
        cluster.submit((r + 1) % N, &format!("request {r}"));
    }
    let statuses = cluster.wait("all replicas deliver every request", ORDERING, |s| {
        agreed(s, &[0, 1, 2, 3], total as u64)
    });
    for s in statuses.iter().flatten() {
        assert!(
            s.evidence.is_empty(),
            "evidence among honest replicas: {s:?}"
        );
        assert!(s.delivered_rounds > 0);
    }
    // Metrics.
    let (code, body) = http(cluster.replicas[0].management, "GET", "/metrics", b"").unwrap();
    let metrics = String::from_utf8(body).unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("maftia_delivered_height"), "{metrics}");
    assert!(
        metrics.contains("maftia_peer_messages_in_total{peer=\"1\"}"),
        "{metrics}"
    );
    // Unknown paths and methods.
    assert_eq!(
        http(cluster.replicas[0].management, "GET", "/nope", b"")
            .unwrap()
            .0,
        404
    );
    assert_eq!(
        http(cluster.replicas[0].management, "DELETE", "/status", b"")
            .unwrap()
            .0,
        405
    );
    let huge = vec![b'x'; maftia_node::testnet::TESTNET_MAX_REQUEST + 1];
    assert_eq!(
        http(cluster.replicas[0].management, "POST", "/submit", &huge)
            .unwrap()
            .0,
        413
    );
    // The replica port never answers a management request.
    let mut stream = TcpStream::connect(cluster.replicas[0].listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "the replica port answered HTTP"
    );
    cluster.wait("the replica counts the refused connection", ORDERING, |s| {
        s[0].as_ref().is_some_and(|s| s.refused_handshakes >= 1)
    });
    // SIGTERM: every replica exits 0.
    for i in 0..N {
        assert!(
            cluster.terminate(i),
            "replica {i} did not shut down cleanly\n{}",
            cluster.logs()
        );
    }
}

#[test]
fn a_replica_killed_mid_run_restarts_and_catches_up_without_contradicting_itself() {
    let mut cluster = Cluster::start();
    for r in 0..10 {
        cluster.submit(0, &format!("before {r}"));
        cluster.submit(1, &format!("before {r}"));
    }
    // Kill replica 3 while requests are being ordered.
    cluster.kill(3);
    for r in 0..10 {
        cluster.submit(0, &format!("during {r}"));
        cluster.submit(1, &format!("during {r}"));
    }
    cluster.wait("the three others deliver everything", ORDERING, |s| {
        agreed(s, &[0, 1, 2], 20)
    });
    cluster.spawn(3, &[]);
    for r in 0..5 {
        cluster.submit(0, &format!("after {r}"));
        cluster.submit(1, &format!("after {r}"));
    }
    let statuses = cluster.wait("the restarted replica catches up", ORDERING, |s| {
        agreed(s, &[0, 1, 2, 3], 25)
    });
    let logs = cluster.logs();
    assert!(
        !logs.contains("evidence of misbehaviour"),
        "a run without Byzantine replicas logged evidence:\n{logs}"
    );
    let restarted = statuses[3].as_ref().unwrap();
    assert!(restarted.incarnation >= 2, "{restarted:?}");
    for s in statuses.iter().take(3).flatten() {
        let against = evidence_against(s, 3);
        assert!(
            !against.iter().any(|k| k.contains("Equivocat")),
            "replica {} holds equivocation evidence against the restarted replica: {against:?}",
            s.id
        );
    }
}

#[test]
fn the_high_throughput_mode_orders_requests_too() {
    let cluster = Cluster::start_with(
        |text| {
            assert!(text.contains("mode = \"ckps01\""), "{text}");
            text.replace("mode = \"ckps01\"", "mode = \"high_throughput\"")
        },
        |_| Vec::new(),
    );
    for r in 0..20 {
        cluster.submit(r % N, &format!("ht {r}"));
        cluster.submit((r + 1) % N, &format!("ht {r}"));
    }
    let statuses = cluster.wait("all replicas deliver every request", ORDERING, |s| {
        agreed(s, &[0, 1, 2, 3], 20)
    });
    for s in statuses.iter().flatten() {
        assert_eq!(s.mode, "high_throughput");
        assert!(
            s.evidence.is_empty(),
            "evidence among honest replicas: {s:?}"
        );
    }
}

#[test]
fn garbage_at_the_replica_port_is_refused_and_the_replica_keeps_working() {
    use maftia_crypto::identity::IdentityKey;
    use maftia_net::handshake::{initiate, LocalIdentity};
    use maftia_node::config::NodeConfig;
    let cluster = Cluster::start();
    for r in 0..6 {
        cluster.submit(0, &format!("early {r}"));
        cluster.submit(1, &format!("early {r}"));
    }
    cluster.wait("first requests delivered", ORDERING, |s| {
        agreed(s, &[0, 1, 2, 3], 6)
    });
    let target = cluster.replicas[0].listen;
    let raw = |bytes: &[u8]| {
        let mut stream = TcpStream::connect(target).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = stream.write_all(bytes);
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    };
    // Random bytes, an oversized record, a truncated handshake record.
    raw(&[0x5a; 4096]);
    raw(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
    raw(&[0, 0, 0, 48, 1, 2, 3, 4, 5]);
    // Authenticated handshakes with an unknown key, and with node 2's key claiming to be node 1.
    let config = NodeConfig::load(&cluster.replicas[0].config).unwrap();
    let group = maftia_crypto::keygen::load_group(&config.group_file).unwrap();
    let node2 = maftia_crypto::keygen::load_secret(
        &config.secret_file.with_file_name("node-2.secret.toml"),
    )
    .unwrap();
    let registry = std::sync::Arc::new(group.identities.clone());
    let tag = maftia_net::group_tag(&group);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for key in [
        IdentityKey::generate(&mut rand::rngs::OsRng),
        node2.identity.clone(),
    ] {
        let local =
            LocalIdentity::new(maftia_core::NodeId(1), key, registry.clone(), tag, 7).unwrap();
        runtime.block_on(async {
            let mut stream = tokio::net::TcpStream::connect(target).await.unwrap();
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                initiate(&mut stream, &local, maftia_core::NodeId(0)),
            )
            .await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut sink),
            )
            .await;
        });
    }
    cluster.wait("every bad connection refused", ORDERING, |s| {
        s[0].as_ref().is_some_and(|s| s.refused_handshakes >= 5)
    });
    // The replica stays up, keeps what it delivered and keeps ordering.
    for r in 0..6 {
        cluster.submit(0, &format!("late {r}"));
        cluster.submit(1, &format!("late {r}"));
    }
    let statuses = cluster.wait("later requests delivered", ORDERING, |s| {
        agreed(s, &[0, 1, 2, 3], 12)
    });
    for s in statuses.iter().flatten() {
        for peer in 0..N {
            assert!(
                evidence_against(s, peer).is_empty(),
                "an honest replica is blamed: {:?}",
                s.evidence
            );
        }
    }
}

#[test]
fn testnet_up_starts_the_cluster_status_reports_it_and_sigterm_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("net");
    let out = maftia()
        .args(["testnet", "--n", "4", "--dir"])
        .arg(&net)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let managements: Vec<SocketAddr> = (0..N)
        .map(|i| {
            let text = std::fs::read_to_string(net.join(format!("node-{i}.toml"))).unwrap();
            field(&text, "management").parse().unwrap()
        })
        .collect();
    let mut up = maftia()
        .args(["testnet", "up", "--dir"])
        .arg(&net)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + STARTUP;
    let status = loop {
        let out = maftia()
            .args(["status", "--dir"])
            .arg(&net)
            .output()
            .unwrap();
        if out.status.success() {
            break String::from_utf8(out.stdout).unwrap();
        }
        if Instant::now() > deadline {
            let _ = up.kill();
            panic!(
                "status never reported the testnet up: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        status.lines().filter(|l| l.contains(" up ")).count(),
        N,
        "{status}"
    );
    for (i, m) in managements.iter().enumerate() {
        assert!(net.join(format!("node-{i}.log")).exists());
        assert_eq!(http(*m, "GET", "/status", b"").unwrap().0, 200);
    }
    let pid = nix::unistd::Pid::from_raw(up.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = up.try_wait().unwrap() {
            break exit;
        }
        if Instant::now() > deadline {
            let _ = up.kill();
            panic!("testnet up did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success());
    for m in &managements {
        assert!(
            http(*m, "GET", "/status", b"").is_err(),
            "a replica outlived testnet up"
        );
    }
    let out = maftia()
        .args(["status", "--dir"])
        .arg(&net)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("down"));
}

#[test]
fn bad_configurations_fail_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let out = maftia()
        .args(["testnet", "--n", "4", "--dir"])
        .arg(dir.path().join("net"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let other = maftia()
        .args(["keygen", "--n", "4", "--out"])
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert!(other.status.success());
    let base = dir.path().join("net/node-0.toml");
    let text = std::fs::read_to_string(&base).unwrap();
    let run = |config: &Path| -> String {
        let out = maftia()
            .arg("node")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "a bad configuration started a replica"
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let write = |name: &str, text: &str| -> PathBuf {
        let path = dir.path().join("net").join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    // Missing file.
    let err = run(&dir.path().join("missing.toml"));
    assert!(
        err.contains("cannot read configuration file") && err.contains("missing.toml"),
        "{err}"
    );
    // Malformed TOML.
    let err = run(&write("bad.toml", "id = [unclosed\n"));
    assert!(err.contains("malformed configuration file"), "{err}");
    // Missing field.
    let err = run(&write("nofield.toml", "id = 0\n"));
    assert!(
        err.contains("malformed configuration file") && err.contains("missing field"),
        "{err}"
    );
    // Management not on loopback.
    let mgmt = field(&text, "management");
    let port = mgmt.rsplit(':').next().unwrap();
    let err = run(&write(
        "public.toml",
        &text.replace(&mgmt, &format!("0.0.0.0:{port}")),
    ));
    assert!(err.contains("loopback"), "{err}");
    // Another node's secret file.
    let err = run(&write(
        "wrong-node.toml",
        &text.replace("node-0.secret.toml", "node-1.secret.toml"),
    ));
    assert!(err.contains("holds the keys of node 1"), "{err}");
    // A secret from another group.
    let foreign = dir.path().join("other/node-0.secret.toml");
    let err = run(&write(
        "foreign.toml",
        &text.replace("keys/node-0.secret.toml", foreign.to_str().unwrap()),
    ));
    assert!(
        err.contains("cannot load keys") && err.contains("not the group"),
        "{err}"
    );
    // Port in use: the management port, then the replica port.
    let taken = std::net::TcpListener::bind(&mgmt).unwrap();
    let err = run(&base);
    assert!(
        err.contains("management address") && err.contains(&mgmt),
        "{err}"
    );
    drop(taken);
    let listen = field(&text, "listen");
    let taken = std::net::TcpListener::bind(&listen).unwrap();
    let err = run(&base);
    assert!(
        err.contains("replica port") && err.contains(&listen),
        "{err}"
    );
    drop(taken);
}

#[cfg(feature = "byzantine-test-modes")]
fn byzantine_run(mode: &str, expected_evidence: Option<&str>) {
    let mut cluster = Cluster::start_with(
        |text| text,
        |i| {
            if i == 3 {
                vec!["--byzantine".into(), mode.into()]
            } else {
                Vec::new()
            }
        },
    );
    for r in 0..12 {
        cluster.submit(r % 3, &format!("{mode} {r}"));
        cluster.submit((r + 1) % 3, &format!("{mode} {r}"));
    }
    let statuses = cluster.wait(
        &format!("honest replicas keep ordering next to a {mode} replica"),
        ORDERING,
        |s| {
            agreed(s, &[0, 1, 2], 12)
                && expected_evidence.is_none_or(|kind| {
                    s.iter()
                        .take(3)
                        .flatten()
                        .any(|s| evidence_against(s, 3).iter().any(|k| k.contains(kind)))
                })
        },
    );
    for s in statuses.iter().take(3).flatten() {
        for peer in 0..3 {
            assert!(
                evidence_against(s, peer)
                    .iter()
                    .all(|k| k.contains("FutureRound")),
                "replica {} blames honest replica {peer}: {:?}",
                s.id,
                s.evidence
            );
        }
    }
    for i in 0..3 {
        assert!(
            cluster.terminate(i),
            "replica {i} did not shut down cleanly"
        );
    }
}

#[cfg(feature = "byzantine-test-modes")]
#[test]
fn honest_replicas_keep_ordering_next_to_a_garbage_replica() {
    byzantine_run("garbage", Some("Frame/Undecodable"));
}

#[cfg(feature = "byzantine-test-modes")]
#[test]
fn honest_replicas_keep_ordering_next_to_an_equivocating_replica() {
    byzantine_run("equivocate", Some("EquivocatingBatch"));
}

#[cfg(feature = "byzantine-test-modes")]
#[test]
fn honest_replicas_keep_ordering_next_to_a_replica_sending_invalid_shares() {
    byzantine_run("invalid-shares", Some("Invalid"));
}

#[cfg(feature = "byzantine-test-modes")]
#[test]
fn honest_replicas_keep_ordering_next_to_a_silent_replica() {
    byzantine_run("silent", None);
}

#[cfg(not(feature = "byzantine-test-modes"))]
#[test]
fn byzantine_replica_tests_need_the_test_feature() {
    println!(
        "SKIPPED: the Byzantine-replica process tests need \
         `cargo test -p maftia-node --features byzantine-test-modes`"
    );
}
