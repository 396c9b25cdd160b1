//! The replica configuration file (`maftia node --config FILE`, TOML).
//!
//! Every field, with its default (relative paths are resolved against the directory of the
//! configuration file):
//!
//! ```toml
//! id = 0                                    # this replica's node id (required)
//! group_file = "keys/group.toml"            # public group file from `maftia keygen` (required)
//! secret_file = "keys/node-0.secret.toml"   # this replica's secret keys, mode 0600 (required)
//! listen = "127.0.0.1:7000"                 # replica port: authenticated, encrypted links (required)
//! peers = ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
//!                                           # replica address of node i at index i, ours included (required)
//! data_dir = "data/node-0"                  # durable state (redb); created if missing (required)
//! management = "127.0.0.1:7100"             # status / metrics / submit HTTP; loopback only (required)
//! instance = "maftia"                       # name of the ordering service, signed into every batch
//! log = "info"                              # tracing filter (RUST_LOG, if set, wins)
//!
//! [ordering]                                # atomic broadcast parameters (all optional)
//! mode = "ckps01"                           # "ckps01" (rounds of signed batches ordered by MVBA)
//!                                           # or "high_throughput" (Dumbo-NG lanes); all replicas alike
//! batch_size = 256                          # requests per round batch
//! max_batch_bytes = 262144                  # bytes of requests per round batch
//! max_request_size = 4096                   # largest request accepted
//! max_pending = 10000                       # pending requests before submissions are refused (503)
//! dedup_rounds = 64                         # rounds a delivered request is remembered
//! event_batch = 256                         # events per durable batch (one fsync each)
//! submit_queue = 1024                       # submissions waiting for the replica loop (503 beyond)
//!
//! [ordering.high_throughput]                # used only by mode = "high_throughput"
//! lane_window = 16                          # certified-but-unordered slots a lane may run ahead
//! retained_slots = 64                       # delivered slots per lane kept to answer fetches
//! max_fetches = 64                          # fetches outstanding at once
//!
//! [service]                                 # the replicated key-value service (optional; without
//!                                           # it the replica only orders /submit requests)
//! client_listen = "127.0.0.1:7200"          # client port (plain TCP; requests signed, replies certified)
//! clients_file = "keys/clients.toml"        # the service's authorised client keys
//! client_rate = 2000                        # requests per second admitted per client
//! client_burst = 500                        # token bucket size per client
//! max_connections = 1024                    # client connections at once
//! ```
//!
//! With a `[service]` table, `ordering.max_request_size` must fit a signed request with the
//! largest value (64 KiB) — `maftia testnet` writes 80 KiB.
use crate::durable::DurableOptions;
use maftia_broadcast::abc::AbcParams;
use maftia_broadcast::atomic::OrderingMode;
use maftia_broadcast::htabc::HtParams;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Largest configuration file read.
const MAX_CONFIG_SIZE: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path} is larger than {MAX_CONFIG_SIZE} bytes")]
    TooLarge { path: PathBuf },
    #[error("malformed configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Which atomic broadcast protocol orders requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeName {
    #[default]
    Ckps01,
    HighThroughput,
}

/// The `[ordering.high_throughput]` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HighThroughputConfig {
    pub lane_window: u64,
    pub retained_slots: u64,
    pub max_fetches: usize,
}

impl Default for HighThroughputConfig {
    fn default() -> Self {
        let ht = HtParams::default();
        HighThroughputConfig {
            lane_window: ht.lane_window,
            retained_slots: ht.retained_slots,
            max_fetches: ht.max_fetches,
        }
    }
}

/// Ordering parameters (the `[ordering]` table).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrderingConfig {
    pub mode: ModeName,
    pub batch_size: usize,
    pub max_batch_bytes: usize,
    pub max_request_size: usize,
    pub max_pending: usize,
    pub dedup_rounds: u64,
    pub event_batch: usize,
    pub submit_queue: usize,
    pub high_throughput: HighThroughputConfig,
}

impl Default for OrderingConfig {
    fn default() -> Self {
        let abc = AbcParams::default();
        OrderingConfig {
            mode: ModeName::default(),
            batch_size: abc.batch_size,
            max_batch_bytes: abc.max_batch_bytes,
            max_request_size: abc.max_request_size,
            max_pending: abc.max_pending,
            dedup_rounds: abc.dedup_rounds,
            event_batch: 256,
            submit_queue: 1024,
            high_throughput: HighThroughputConfig::default(),
        }
    }
}

impl OrderingConfig {
    pub fn abc_params(&self) -> AbcParams {
        AbcParams {
            batch_size: self.batch_size,
            max_batch_bytes: self.max_batch_bytes,
            max_request_size: self.max_request_size,
            max_pending: self.max_pending,
            dedup_rounds: self.dedup_rounds,
        }
    }
    pub fn mode(&self) -> OrderingMode {
        match self.mode {
            ModeName::Ckps01 => OrderingMode::Ckps01,
            ModeName::HighThroughput => OrderingMode::HighThroughput(HtParams {
                lane_window: self.high_throughput.lane_window,
                retained_slots: self.high_throughput.retained_slots,
                max_fetches: self.high_throughput.max_fetches,
            }),
        }
    }
    pub fn durable_options(&self) -> DurableOptions {
        DurableOptions::default()
    }
}

/// A replica's configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: u16,
    pub group_file: PathBuf,
    pub secret_file: PathBuf,
    pub listen: SocketAddr,
    pub peers: Vec<SocketAddr>,
    pub data_dir: PathBuf,
    pub management: SocketAddr,
    #[serde(default = "default_instance")]
    pub instance: String,
    #[serde(default = "default_log")]
    pub log: String,
    #[serde(default)]
    pub ordering: OrderingConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<crate::service::ServiceConfig>,
}

fn default_instance() -> String {
    "maftia".to_string()
}
fn default_log() -> String {
    "info".to_string()
}

impl NodeConfig {
    /// Read, parse and check a configuration file; relative paths become relative to its
    /// directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > MAX_CONFIG_SIZE {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let mut config: NodeConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut paths = vec![
            &mut config.group_file,
            &mut config.secret_file,
            &mut config.data_dir,
        ];
        if let Some(service) = &mut config.service {
            paths.push(&mut service.clients_file);
        }
        for p in paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        config.check().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Consistency checks that need no key files.
    pub fn check(&self) -> Result<(), String> {
        if !self.management.ip().is_loopback() {
            return Err(format!(
                "management address {} is not a loopback address; the management endpoint \
                 must never be reachable from the network (use 127.0.0.1 or [::1])",
                self.management
            ));
        }
        if usize::from(self.id) >= self.peers.len() {
            return Err(format!(
                "id {} has no entry in peers (which lists {} addresses, one per node id)",
                self.id,
                self.peers.len()
            ));
        }
        if self.management == self.listen
            || (self.management.port() == self.listen.port()
                && (self.listen.ip().is_unspecified() || self.listen.ip() == self.management.ip()))
        {
            return Err(format!(
                "management address {} must differ from the replica port {}",
                self.management, self.listen
            ));
        }
        if let Some(service) = &self.service {
            let client = service.client_listen;
            let clash = |other: SocketAddr| {
                client.port() == other.port()
                    && (client.ip() == other.ip()
                        || client.ip().is_unspecified()
                        || other.ip().is_unspecified())
            };
            if clash(self.listen) || clash(self.management) {
                return Err(format!(
                    "service.client_listen {client} must differ from the replica port {} and the management address {}",
                    self.listen, self.management
                ));
            }
            if service.max_connections == 0 || service.client_rate == 0 || service.client_burst == 0
            {
                return Err(
                    "service.max_connections, client_rate and client_burst must be positive".into(),
                );
            }
        }
        let o = &self.ordering;
        if o.event_batch == 0 || o.submit_queue == 0 {
            return Err("ordering.event_batch and ordering.submit_queue must be positive".into());
        }
        if self.instance.is_empty() {
            return Err("instance must not be empty".into());
        }
        Ok(())
    }

    /// The configuration as TOML text.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeConfig {
        NodeConfig {
            id: 1,
            group_file: "keys/group.toml".into(),
            secret_file: "keys/node-1.secret.toml".into(),
            listen: "127.0.0.1:7001".parse().unwrap(),
            peers: (0..4)
                .map(|i| format!("127.0.0.1:{}", 7000 + i).parse().unwrap())
                .collect(),
            data_dir: "data".into(),
            management: "127.0.0.1:7101".parse().unwrap(),
            instance: default_instance(),
            log: default_log(),
            ordering: OrderingConfig::default(),
            service: None,
        }
    }

    #[test]
    fn round_trip_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, sample().to_toml().unwrap()).unwrap();
        let loaded = NodeConfig::load(&path).unwrap();
        assert_eq!(loaded.group_file, dir.path().join("keys/group.toml"));
        assert_eq!(loaded.ordering, OrderingConfig::default());
        assert_eq!(loaded.peers, sample().peers);
    }

    #[test]
    fn defaults_apply_and_unknown_fields_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let minimal = "id = 0\ngroup_file = \"g\"\nsecret_file = \"s\"\nlisten = \"127.0.0.1:1\"\n\
                       peers = [\"127.0.0.1:1\"]\ndata_dir = \"d\"\nmanagement = \"127.0.0.1:2\"\n";
        std::fs::write(&path, minimal).unwrap();
        let loaded = NodeConfig::load(&path).unwrap();
        assert_eq!(loaded.instance, "maftia");
        assert_eq!(loaded.ordering.batch_size, 256);
        std::fs::write(&path, format!("{minimal}bogus = 1\n")).unwrap();
        let err = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn non_loopback_management_is_refused() {
        let mut config = sample();
        config.management = "0.0.0.0:7101".parse().unwrap();
        assert!(config.check().unwrap_err().contains("loopback"));
        config.management = "192.168.1.5:7101".parse().unwrap();
        assert!(config.check().is_err());
        let mut config = sample();
        config.management = config.listen;
        assert!(config.check().unwrap_err().contains("differ"));
        let mut config = sample();
        config.id = 9;
        assert!(config.check().is_err());
    }
}
