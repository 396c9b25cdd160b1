//! A testnet of real `maftia node` processes on loopback, driven from this process: what
//! `maftia demo` and `maftia bench --layer kv` run on.
//!
//! Replicas are children of this process (logs in `DIR/node-i.log`), each started with
//! `--allow-byzantine-switch` so that a caller can change its behaviour while it runs
//! ([`LocalCluster::switch`]). Dropping the cluster stops every replica (SIGTERM, then SIGKILL
//! after [`STOP_TIMEOUT`]); [`LocalCluster::detach`] leaves them running instead.
use crate::management::StatusSnapshot;
use crate::testnet;
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Time allowed for every replica to connect to every other.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a replica is given to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh path under the system's temporary directory for a cluster:
/// `maftia-PURPOSE-PID-NANOS` (not created).
pub fn temporary_dir(purpose: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("maftia-{purpose}-{}-{nanos}", std::process::id()))
}

/// The replica processes of a testnet directory.
pub struct LocalCluster {
    exe: PathBuf,
    dir: PathBuf,
    children: Vec<Option<Child>>,
    management: Vec<SocketAddr>,
}

impl LocalCluster {
    /// Generate a testnet of `n` replicas tolerating `f` in `dir` (which must be new or empty),
    /// without starting it.
    pub fn generate(n: usize, f: Option<usize>, dir: &Path) -> Result<LocalCluster> {
        let (_, configs) = testnet::generate(n, f, dir)?;
        let mut management = Vec::with_capacity(configs.len());
        for path in &configs {
            management.push(crate::config::NodeConfig::load(path)?.management);
        }
        Ok(LocalCluster {
            exe: std::env::current_exe().context("cannot find the maftia executable")?,
            dir: dir.to_path_buf(),
            children: (0..configs.len()).map(|_| None).collect(),
            management,
        })
    }

    /// Change every replica's configuration (before the replicas start). The files are
    /// rewritten with the paths [`crate::config::NodeConfig::load`] resolved.
    pub fn edit_configs(&self, edit: impl Fn(&mut crate::config::NodeConfig)) -> Result<()> {
        for i in 0..self.n() {
            let path = testnet::config_path(&self.dir, i);
            let mut config = crate::config::NodeConfig::load(&path)?;
            edit(&mut config);
            let text = config
                .to_toml()
                .context("cannot encode a replica configuration")?;
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn n(&self) -> usize {
        self.management.len()
    }

    /// Start replica `i` (appending to its log).
    pub fn spawn(&mut self, i: usize) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(testnet::log_path(&self.dir, i))
            .with_context(|| format!("cannot open the log of replica {i}"))?;
        let child = Command::new(&self.exe)
            .arg("node")
            .arg("--config")
            .arg(testnet::config_path(&self.dir, i))
            .arg("--allow-byzantine-switch")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start replica {i}"))?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// Start every replica.
    pub fn spawn_all(&mut self) -> Result<()> {
        (0..self.n()).try_for_each(|i| self.spawn(i))
    }

    /// The process ids of the running replicas.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().flatten().map(Child::id).collect()
    }

    /// Crash replica `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM every replica, wait up to [`STOP_TIMEOUT`], SIGKILL the rest; whether all exited
    /// with success in time.
    pub fn stop_all(&mut self) -> bool {
        for child in self.children.iter().flatten() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut clean = true;
        for slot in &mut self.children {
            let Some(mut child) = slot.take() else {
                continue;
            };
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => break None,
                }
            };
            if !status.is_some_and(|s| s.success()) {
                clean = false;
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        clean
    }

    /// Leave the replicas running after this value is dropped; returns their process ids.
    pub fn detach(mut self) -> Vec<u32> {
        let pids = self.pids();
        for slot in &mut self.children {
            // Dropping a `Child` neither kills nor waits for the process.
            drop(slot.take());
        }
        pids
    }

    /// Replica `i`'s status, if it answers within 2 s.
    pub async fn status(&self, i: usize) -> Option<StatusSnapshot> {
        tokio::time::timeout(
            Duration::from_secs(2),
            testnet::fetch_status(self.management[i]),
        )
        .await
        .ok()?
        .ok()
    }

    /// Replica `i`'s management address.
    pub fn management(&self, i: usize) -> SocketAddr {
        self.management[i]
    }

    /// Wait until every replica is connected to every other (at most [`STARTUP_TIMEOUT`]).
    pub async fn wait_until_ready(&self) -> Result<()> {
        let n = self.n();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let mut ready = 0;
            for i in 0..n {
                if self
                    .status(i)
                    .await
                    .is_some_and(|s| s.peers_connected + 1 >= n)
                {
                    ready += 1;
                }
            }
            if ready == n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the cluster did not come up within {} s; see the logs in {}",
                    STARTUP_TIMEOUT.as_secs(),
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Wait up to `timeout` until every replica answers with the same delivery count and
    /// digest-chain head (so the same delivered sequence); whether they did, and the last
    /// statuses.
    pub async fn converge(&self, timeout: Duration) -> (bool, Vec<Option<StatusSnapshot>>) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut statuses = Vec::with_capacity(self.n());
            for i in 0..self.n() {
                statuses.push(self.status(i).await);
            }
            let heads: Vec<(u64, &str)> = statuses
                .iter()
                .flatten()
                .map(|s| (s.delivered_rounds, s.chain_head.as_str()))
                .collect();
            let same = heads.len() == self.n() && heads.windows(2).all(|w| w[0] == w[1]);
            if same || Instant::now() > deadline {
                return (same, statuses);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Change replica `i`'s behaviour while it runs (`POST /byzantine`: a mode name or `none`).
    pub async fn switch(&self, i: usize, mode: &str) -> Result<()> {
        let (code, body) = crate::management::http_request(
            self.management[i],
            "POST",
            "/byzantine",
            mode.as_bytes(),
        )
        .await
        .with_context(|| format!("replica {i} does not answer"))?;
        if code != 200 {
            bail!(
                "replica {i} refused to switch to {mode}: {}",
                String::from_utf8_lossy(&body).trim()
            );
        }
        Ok(())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}
