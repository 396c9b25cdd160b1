//! Shared helpers of the process tests: real `maftia node` processes on loopback, configured by
//! `maftia testnet`. Every wait is bounded; a failing wait prints the tail of every replica's log.
#![allow(dead_code)] // each test binary uses a different subset

pub use maftia_node::management::StatusSnapshot;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const N: usize = 4;
pub const STARTUP: Duration = Duration::from_secs(30);
pub const ORDERING: Duration = Duration::from_secs(45);

pub fn maftia() -> Command {
    Command::new(env!("CARGO_BIN_EXE_maftia"))
}

/// One HTTP request to a management endpoint: (status code, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP head"))?;
    let code = std::str::from_utf8(response.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status code"))?;
    Ok((code, response[end + 4..].to_vec()))
}

/// Submit one request at a management endpoint, retrying on `503` (bounded). A `409` saying
/// the request was already delivered counts as success: the same request, submitted at another
/// replica first, has been ordered.
pub fn submit_at(management: SocketAddr, request: &[u8]) -> Result<(), String> {
    for _ in 0..100 {
        match http(management, "POST", "/submit", request) {
            Ok((200, _)) => return Ok(()),
            Ok((409, body)) if String::from_utf8_lossy(&body).contains("delivered") => {
                return Ok(());
            }
            Ok((503, _)) | Err(_) => std::thread::sleep(Duration::from_millis(100)),
            Ok((code, body)) => {
                return Err(format!("{code} {}", String::from_utf8_lossy(&body)));
            }
        }
    }
    Err("the replica keeps refusing".into())
}

/// The value of `key = "..."` (or `key = ...`) in a configuration file.
pub fn field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in config"))
        .trim_matches('"')
        .to_string()
}

/// The value of a Prometheus sample `name` (exact series, labels included), 0 if absent.
pub fn metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Resident and peak resident set size of a process, in KiB (`VmRSS`, `VmHWM`).
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((value("VmRSS:")?, value("VmHWM:")?))
}

pub struct Replica {
    pub config: PathBuf,
    pub management: SocketAddr,
    pub listen: SocketAddr,
    pub log: PathBuf,
    pub child: Option<Child>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub replicas: Vec<Replica>,
}

impl Cluster {
    /// Generate a 4-replica testnet (keys and configurations); start nothing.
    pub fn generate() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let out = maftia()
            .args(["testnet", "--n", "4", "--f", "1", "--dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let replicas = (0..N)
            .map(|i| {
                let config = dir.path().join(format!("node-{i}.toml"));
                let text = std::fs::read_to_string(&config).unwrap();
                Replica {
                    management: field(&text, "management").parse().unwrap(),
                    listen: field(&text, "listen").parse().unwrap(),
                    log: dir.path().join(format!("node-{i}.log")),
                    config,
                    child: None,
                }
            })
            .collect();
        Cluster { dir, replicas }
    }

    /// Rewrite replica i's configuration file.
    pub fn edit_config(&mut self, i: usize, edit: impl FnOnce(String) -> String) {
        let replica = &mut self.replicas[i];
        let text = edit(std::fs::read_to_string(&replica.config).unwrap());
        std::fs::write(&replica.config, &text).unwrap();
        replica.management = field(&text, "management").parse().unwrap();
        replica.listen = field(&text, "listen").parse().unwrap();
    }

    /// Start every replica and wait until all are up and connected.
    pub fn start_all(&mut self) {
        self.start_all_with(|_| Vec::new());
    }

    /// Start every replica (with `extra` arguments for replica i) and wait until all are up
    /// and connected.
    pub fn start_all_with(&mut self, extra: impl Fn(usize) -> Vec<String>) {
        for i in 0..N {
            self.spawn(i, &extra(i));
        }
        self.wait("all replicas up and connected", STARTUP, |s| {
            s.iter()
                .all(|s| s.as_ref().is_some_and(|s| s.peers_connected == N - 1))
        });
    }

    /// Generate a testnet and start it.
    pub fn start() -> Cluster {
        Cluster::start_with(|text| text, |_| Vec::new())
    }

    /// Generate a testnet, rewrite every configuration file with `edit`, then start every
    /// replica (with `extra` arguments for replica i) and wait until all are up and connected.
    pub fn start_with(
        edit: impl Fn(String) -> String,
        extra: impl Fn(usize) -> Vec<String>,
    ) -> Cluster {
        let mut cluster = Cluster::generate();
        for i in 0..N {
            cluster.edit_config(i, &edit);
        }
        cluster.start_all_with(extra);
        cluster
    }

    pub fn spawn(&mut self, i: usize, extra: &[String]) {
        let replica = &mut self.replicas[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&replica.log)
            .unwrap();
        let child = maftia()
            .arg("node")
            .arg("--config")
            .arg(&replica.config)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        replica.child = Some(child);
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.replicas[i].child.as_ref().unwrap().id()
    }

    /// Whether replica i's process is still running.
    pub fn alive(&mut self, i: usize) -> bool {
        self.replicas[i]
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn status(&self, i: usize) -> Option<StatusSnapshot> {
        let (code, body) = http(self.replicas[i].management, "GET", "/status", b"").ok()?;
        (code == 200).then(|| serde_json::from_slice(&body).unwrap())
    }

    pub fn statuses(&self) -> Vec<Option<StatusSnapshot>> {
        (0..N).map(|i| self.status(i)).collect()
    }

    pub fn metrics(&self, i: usize) -> String {
        let (code, body) = http(self.replicas[i].management, "GET", "/metrics", b"").unwrap();
        assert_eq!(code, 200);
        String::from_utf8(body).unwrap()
    }

    pub fn logs(&self) -> String {
        let mut all = String::new();
        for (i, r) in self.replicas.iter().enumerate() {
            let text = std::fs::read_to_string(&r.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            all.push_str(&format!("--- node {i} ---\n"));
            for line in tail.iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }

    /// Poll the statuses until `done` holds, or fail with the logs after `timeout`.
    pub fn wait(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Option<StatusSnapshot>]) -> bool,
    ) -> Vec<Option<StatusSnapshot>> {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses();
            if done(&statuses) {
                return statuses;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for: {what}\nstatuses: {statuses:#?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Submit a request at replica i; retry a while on 503.
    pub fn submit(&self, i: usize, request: &str) {
        if let Err(e) = submit_at(self.replicas[i].management, request.as_bytes()) {
            panic!("submit {request:?} at {i}: {e}\n{}", self.logs());
        }
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.replicas[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM replica i and return whether it exited successfully within 15 s (killed if not).
    pub fn terminate(&mut self, i: usize) -> bool {
        let Some(mut child) = self.replicas[i].child.take() else {
            return false;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..N {
            self.kill(i);
        }
    }
}

/// Whether `members` all delivered exactly `count` requests with one chain head.
pub fn agreed(statuses: &[Option<StatusSnapshot>], members: &[usize], count: u64) -> bool {
    let heads: Vec<Option<(u64, &str)>> = members
        .iter()
        .map(|i| {
            statuses[*i]
                .as_ref()
                .map(|s| (s.delivered_requests, s.chain_head.as_str()))
        })
        .collect();
    heads.iter().all(|h| h.is_some_and(|(c, _)| c == count))
        && heads.windows(2).all(|w| w[0] == w[1])
}

/// The evidence kinds `status` holds against `peer`.
pub fn evidence_against(status: &StatusSnapshot, peer: usize) -> Vec<String> {
    status
        .evidence
        .get(&peer.to_string())
        .map(|kinds| kinds.keys().cloned().collect())
        .unwrap_or_default()
}

// ---- Helpers of the service tests (tests/service.rs) ----

pub use maftia_node::management::ServiceStatus;

impl Cluster {
    /// The clients' cluster file (`cluster.toml`) of the testnet.
    pub fn cluster_file(&self) -> PathBuf {
        self.dir.path().join("cluster.toml")
    }

    /// The secret key file of testnet client `i` (on the service's client list).
    pub fn client_key(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join("keys")
            .join(format!("client-{i}.secret.toml"))
    }

    /// The replicas' client ports, by replica id (from `cluster.toml`).
    pub fn client_ports(&self) -> Vec<SocketAddr> {
        maftia_client::files::ClusterFile::load(&self.cluster_file())
            .unwrap()
            .replicas
    }
}

/// The service part of a replica's status (every testnet replica runs the service).
pub fn service_of(status: &StatusSnapshot) -> &ServiceStatus {
    status
        .service
        .as_ref()
        .unwrap_or_else(|| panic!("a testnet replica without a service: {status:?}"))
}

/// Whether every replica answers and all report the same delivered rounds, chain head,
/// executed entries and number of keys.
pub fn converged(statuses: &[Option<StatusSnapshot>]) -> bool {
    let views: Vec<Option<(u64, &str, u64, u64)>> = statuses
        .iter()
        .map(|s| {
            let s = s.as_ref()?;
            let service = s.service.as_ref()?;
            Some((
                s.delivered_rounds,
                s.chain_head.as_str(),
                service.executed,
                service.keys,
            ))
        })
        .collect();
    views.iter().all(Option::is_some) && views.windows(2).all(|w| w[0] == w[1])
}
