//! `maftia kv`: key-value operations against a running cluster, each answer verified.
//!
//! Every command signs one request with the client's key, sends it to every replica and prints
//! the result only once `f + 1` replicas' threshold signature shares combine into a certificate
//! that verifies against the service's public key (`maftia_client::Client`). Keys and values are
//! taken as UTF-8 text from the command line and printed as text when they are valid UTF-8,
//! as hex (`0x…`) otherwise.
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use maftia_client::{Client, ClientConfig};
use maftia_smr::kv::{KvReply, KvRequest};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct KvArgs {
    /// The cluster file (`cluster.toml`, written by `maftia testnet` and `maftia demo --keep`).
    #[arg(long, default_value = "cluster.toml")]
    pub cluster: PathBuf,
    /// This client's secret key file (`client-N.secret.toml`).
    #[arg(long)]
    pub key: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    #[command(subcommand)]
    pub op: KvOp,
}

#[derive(Subcommand, Debug)]
pub enum KvOp {
    /// Read a key.
    Get { key: String },
    /// Write a key; prints the previous value.
    Put { key: String, value: String },
    /// Remove a key; prints the previous value.
    Delete { key: String },
    /// Set KEY to NEW if its value is EXPECTED (`--expected` absent: only if the key is absent;
    /// `--new` absent: delete).
    Cas {
        key: String,
        #[arg(long)]
        expected: Option<String>,
        #[arg(long)]
        new: Option<String>,
    },
    /// List the entries with START <= key < END (no END: to the last key).
    Range {
        start: String,
        end: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => format!("0x{}", hex::encode(bytes)),
    }
}

fn show_opt(value: &Option<Vec<u8>>) -> String {
    value
        .as_deref()
        .map(show)
        .unwrap_or_else(|| "(absent)".into())
}

pub async fn run(args: KvArgs) -> Result<()> {
    let mut config = ClientConfig::from_files(&args.cluster, &args.key)
        .with_context(|| format!("cannot load the cluster file {}", args.cluster.display()))?;
    config.timeout = std::time::Duration::from_secs(args.timeout.max(1));
    let mut client = Client::connect(config)
        .await
        .context("cannot set up the client")?;
    let bytes = |s: &String| s.as_bytes().to_vec();
    let request = match &args.op {
        KvOp::Get { key } => KvRequest::Get { key: bytes(key) },
        KvOp::Put { key, value } => KvRequest::Put {
            key: bytes(key),
            value: bytes(value),
        },
        KvOp::Delete { key } => KvRequest::Delete { key: bytes(key) },
        KvOp::Cas { key, expected, new } => KvRequest::CompareAndSet {
            key: bytes(key),
            expected: expected.as_ref().map(bytes),
            new: new.as_ref().map(bytes),
        },
        KvOp::Range { start, end, limit } => KvRequest::Range {
            start: bytes(start),
            end: end.as_ref().map(bytes),
            limit: *limit,
        },
    };
    let (reply, certified) = client.kv(&request).await?;
    match reply {
        KvReply::Value { value } => println!("{}", show_opt(&value)),
        KvReply::Written { previous } => println!("ok (previous value: {})", show_opt(&previous)),
        KvReply::CompareAndSet { swapped, found } => println!(
            "{} (found: {})",
            if swapped { "swapped" } else { "not swapped" },
            show_opt(&found)
        ),
        KvReply::Range {
            entries,
            resume_from,
        } => {
            for (key, value) in &entries {
                println!("{}\t{}", show(key), show(value));
            }
            if let Some(next) = resume_from {
                println!("(more: continue from {})", show(&next));
            }
        }
        KvReply::Committed => println!("committed"),
        KvReply::Aborted {
            failed_preconditions,
        } => println!("aborted (failed preconditions: {failed_preconditions:?})"),
        KvReply::Error(e) => bail!("the service refused the request: {e}"),
    }
    let culprits = &certified.culprits;
    eprintln!(
        "verified: reply certificate for request {} checked against the service key{}",
        certified.certificate.seq,
        if culprits.is_empty() {
            String::new()
        } else {
            format!("; misbehaving replicas: {culprits:?}")
        }
    );
    Ok(())
}
