//! maftia-node: the replica daemon and the commands of the `maftia` binary.
//!
//! - [`durable`]: durability by deterministic replay — the [`durable::DurableReplica`] driver
//!   (pure, no IO runtime) that logs events before acting on them;
//! - [`config`]: the replica configuration file;
//! - [`node`]: `maftia node`, the replica process (atomic broadcast over `maftia-net`);
//! - [`management`]: the loopback HTTP endpoint (`/status`, `/metrics`, `/submit`);
//! - [`testnet`]: `maftia testnet` (generate and start a local cluster) and `maftia status`;
//! - [`bench`]: `maftia bench` (the in-process benchmark harness over a matrix, tables, JSON,
//!   CSV and SVG charts; `--compare hbbft` with the `compare-hbbft` feature);
//! - [`bench_kv`]: `maftia bench --layer kv`, the key-value service end to end on a loopback
//!   cluster (closed and open loop, latency percentiles, where the replicas' time goes);
//! - [`service`]: the replicated key-value service inside a replica (client port, admission,
//!   execution, reply shares);
//! - [`kv_cli`]: `maftia kv`, verified key-value operations from the command line;
//! - [`demo`]: `maftia demo`, a local cluster tolerating an intrusion and a crash, end to end;
//! - `byzantine` (feature `byzantine-test-modes`, on by default, for tests and the demo):
//!   misbehaving replicas.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod bench;
pub mod bench_crypto;
pub mod bench_kv;
pub mod bench_loopback;
#[cfg(feature = "byzantine-test-modes")]
pub mod byzantine;
pub mod checkpoint;
pub mod config;
pub mod demo;
pub mod durable;
pub mod keygen;
pub mod kv_cli;
pub mod local_cluster;
pub mod management;
pub mod metrics;
pub mod node;
pub mod service;
pub mod testnet;
