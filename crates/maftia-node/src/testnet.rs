//! `maftia testnet` (generate a local cluster), `maftia testnet up` (run it) and `maftia status`.
use crate::config::{NodeConfig, OrderingConfig};
use crate::management::{http_request, StatusSnapshot};
use crate::service::ServiceConfig;
use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The configuration file of replica `i` in a testnet directory.
pub fn config_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("node-{i}.toml"))
}

/// The log file of replica `i` in a testnet directory.
pub fn log_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("node-{i}.log"))
}

/// Where testnet ports are chosen: below Linux's default ephemeral range (32768–60999), so that
/// the port of an outgoing connection — which the kernel picks from that range at any time —
/// never takes a port chosen here between choosing it and the replica binding it.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// `count` distinct free loopback ports from [`PORT_RANGE`], starting at a random place (all
/// held at once while choosing, then released).
fn free_ports(count: usize) -> Result<Vec<u16>> {
    use rand::Rng;
    let span = PORT_RANGE.end - PORT_RANGE.start;
    let start = rand::thread_rng().gen_range(0..span);
    let mut listeners = Vec::with_capacity(count);
    for offset in 0..span {
        if listeners.len() == count {
            break;
        }
        let port = PORT_RANGE.start + (start + offset) % span;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(listener);
        }
    }
    if listeners.len() < count {
        bail!(
            "cannot find {count} free loopback ports in {}..{}",
            PORT_RANGE.start,
            PORT_RANGE.end
        );
    }
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Clients a testnet authorises (`keys/client-<i>.secret.toml`).
pub const TESTNET_CLIENTS: usize = 8;
/// The instance name of testnets.
pub const TESTNET_INSTANCE: &str = "maftia-testnet";
/// `ordering.max_request_size` of testnets: a signed request with a 64 KiB value fits.
pub const TESTNET_MAX_REQUEST: usize = 80 * 1024;

/// The secret key file of client `i` in a testnet directory.
pub fn client_key_path(dir: &Path, i: usize) -> PathBuf {
    dir.join("keys").join(format!("client-{i}.secret.toml"))
}

/// The cluster file clients use (`maftia kv --cluster`).
pub fn cluster_path(dir: &Path) -> PathBuf {
    dir.join("cluster.toml")
}

/// Generate keys, [`TESTNET_CLIENTS`] client keys with their client list, one configuration per
/// replica (with the key-value service) and the clients' cluster file in `dir`.
pub fn create(n: usize, f: Option<usize>, dir: &Path) -> Result<Vec<PathBuf>> {
    let (group, paths) = generate(n, f, dir)?;
    crate::keygen::report(&group, &dir.join("keys"));
    println!(
        "wrote {n} replica configurations and {TESTNET_CLIENTS} client keys to {}; start the \
         replicas with `maftia testnet up --dir {}`, then e.g. `maftia kv --cluster {} --key {} put hello world`",
        dir.display(),
        dir.display(),
        cluster_path(dir).display(),
        client_key_path(dir, 0).display()
    );
    Ok(paths)
}

/// [`create`] without the message on stdout (for `maftia bench --layer kv`, whose stdout is
/// its table).
pub fn generate(
    n: usize,
    f: Option<usize>,
    dir: &Path,
) -> Result<(maftia_core::GroupConfig, Vec<PathBuf>)> {
    if dir.exists()
        && std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "testnet directory {} is not empty; choose a new directory",
            dir.display()
        );
    }
    let group = crate::keygen::write_keys(n, f, &dir.join("keys"))?;
    let ports = free_ports(3 * n)?;
    let mut clients = Vec::with_capacity(TESTNET_CLIENTS);
    for i in 0..TESTNET_CLIENTS {
        let name = format!("client-{i}");
        let key = maftia_client::files::ClientKeyFile::generate(&name, &mut rand::rngs::OsRng)?;
        key.write(&client_key_path(dir, i))?;
        clients.push(key.entry());
    }
    let clients_file = dir.join("keys").join("clients.toml");
    maftia_client::files::ClientListFile::new(clients)?.write(&clients_file)?;
    let client_ports: Vec<SocketAddr> = ports[2 * n..]
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();
    maftia_client::files::ClusterFile::new(
        TESTNET_INSTANCE,
        "keys/group.toml".into(),
        client_ports.clone(),
    )
    .write(&cluster_path(dir))?;
    let peers: Vec<SocketAddr> = ports[..n]
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();
    let mut paths = Vec::with_capacity(n);
    for (i, listen) in peers.iter().enumerate() {
        let config = NodeConfig {
            id: i as u16,
            group_file: "keys/group.toml".into(),
            secret_file: format!("keys/{}", maftia_crypto::keygen::secret_file_name(i)).into(),
            listen: *listen,
            peers: peers.clone(),
            data_dir: format!("data/node-{i}").into(),
            management: SocketAddr::from(([127, 0, 0, 1], ports[n + i])),
            instance: TESTNET_INSTANCE.into(),
            log: "info".into(),
            ordering: OrderingConfig {
                max_request_size: TESTNET_MAX_REQUEST,
                max_batch_bytes: OrderingConfig::default()
                    .max_batch_bytes
                    .max(4 * TESTNET_MAX_REQUEST),
                ..OrderingConfig::default()
            },
            service: Some(ServiceConfig::new(
                client_ports[i],
                "keys/clients.toml".into(),
            )),
        };
        let path = config_path(dir, i);
        let text = format!(
            "# maftia replica {i} of a local testnet (see `maftia node --help` and README.md)\n{}",
            config.to_toml().context("cannot write the configuration")?
        );
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        paths.push(path);
    }
    Ok((group, paths))
}

/// The replica configurations of a testnet directory, by id.
pub fn configs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    while config_path(dir, paths.len()).exists() {
        paths.push(config_path(dir, paths.len()));
    }
    if paths.is_empty() {
        bail!(
            "no replica configuration (node-0.toml, ...) in {}; create one with `maftia testnet --n 4 --dir {}`",
            dir.display(),
            dir.display()
        );
    }
    Ok(paths)
}

fn terminate(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// Start every replica of `dir` as a child process (logs in `DIR/node-i.log`) and stop them all
/// (SIGTERM, then SIGKILL after 10 s) on Ctrl-C or SIGTERM.
pub async fn up(dir: &Path) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the maftia executable")?;
    let mut children = Vec::new();
    for (i, config) in configs(dir)?.iter().enumerate() {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path(dir, i))
            .with_context(|| format!("cannot open {}", log_path(dir, i).display()))?;
        let child = Command::new(&exe)
            .arg("node")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start replica {i}"))?;
        println!(
            "replica {i}: pid {}, log {}",
            child.id(),
            log_path(dir, i).display()
        );
        children.push(child);
    }
    println!("{} replicas running; Ctrl-C stops them all", children.len());
    let mut terminate_signal =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    let mut reported = vec![false; children.len()];
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate_signal.recv() => break,
            _ = poll.tick() => {
                for (i, child) in children.iter_mut().enumerate() {
                    if let (Ok(Some(status)), false) = (child.try_wait(), reported[i]) {
                        reported[i] = true;
                        println!("replica {i} exited ({status}); see {}", log_path(dir, i).display());
                    }
                }
                if children.iter_mut().all(|c| matches!(c.try_wait(), Ok(Some(_)))) {
                    bail!("every replica has exited");
                }
            }
        }
    }
    println!("stopping the replicas");
    for child in &mut children {
        terminate(child);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for child in &mut children {
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
    Ok(())
}

/// Fetch one replica's status.
pub async fn fetch_status(management: SocketAddr) -> Result<StatusSnapshot> {
    let (code, body) = http_request(management, "GET", "/status", b"")
        .await
        .with_context(|| format!("no answer from {management}"))?;
    if code != 200 {
        bail!("{management} answered {code}");
    }
    serde_json::from_slice(&body).context("malformed status")
}

/// Print a health table of the replicas configured by `paths`.
pub async fn print_status(paths: &[PathBuf]) -> Result<()> {
    println!(
        "{:>3} {:>6} {:>8} {:>9} {:>7} {:>7} {:>5} {:>8}  {:<16}",
        "id", "state", "rounds", "requests", "round", "pending", "peers", "evidence", "chain head"
    );
    let mut down = 0;
    for path in paths {
        let config = NodeConfig::load(path)?;
        match fetch_status(config.management).await {
            Ok(s) => {
                let evidence: u64 = s.evidence.values().flat_map(|k| k.values()).sum();
                println!(
                    "{:>3} {:>6} {:>8} {:>9} {:>7} {:>7} {:>5} {:>8}  {:<16}",
                    s.id,
                    "up",
                    s.delivered_rounds,
                    s.delivered_requests,
                    s.round,
                    s.pending,
                    s.peers_connected,
                    evidence,
                    s.chain_head.get(..16).unwrap_or(&s.chain_head)
                );
            }
            Err(e) => {
                down += 1;
                println!("{:>3} {:>6}  ({e:#})", config.id, "down");
            }
        }
    }
    if down > 0 {
        bail!("{down} replica(s) not answering");
    }
    Ok(())
}
