//! The `maftia` binary: `keygen`, `node` (a replica), `testnet`, `status` and `bench`.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use maftia_node::{bench, config::NodeConfig, demo, keygen, kv_cli, node, testnet};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "maftia",
    version,
    about = "Intrusion-tolerant middleware: BFT replication with threshold cryptography"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a temporary 4-replica cluster on loopback, run a key-value workload from several
    /// clients while one replica is intruded and another crashes and restarts, and print what
    /// happened: throughput, latency, evidence, catch-up time and a linearizability verdict.
    Demo(demo::DemoArgs),
    /// Key-value operations against a running cluster; every answer is a verified threshold
    /// certificate of the service.
    Kv(kv_cli::KvArgs),
    /// Generate the keys of a new group with a trusted dealer: one public group file and one
    /// secret key file per replica (mode 0600), for the asynchronous configuration (n > 3f).
    Keygen {
        /// Number of replicas.
        #[arg(long)]
        n: usize,
        /// Number of replicas that may be intruded; needs n > 3f. Defaults to the largest f
        /// that n allows, (n - 1) / 3.
        #[arg(long)]
        f: Option<usize>,
        /// Directory to write into; created if missing, refused if it exists and is not empty.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run one replica: atomic broadcast over authenticated encrypted links, durable state in
    /// `data_dir`, status/metrics/submit on the loopback management address. SIGTERM or SIGINT
    /// stops it cleanly.
    Node {
        /// The replica's TOML configuration (fields documented in README.md).
        #[arg(long)]
        config: PathBuf,
        /// FOR TESTS AND THE DEMO: misbehave on purpose (silent, garbage, equivocate,
        /// invalid-shares, intruded).
        #[cfg(feature = "byzantine-test-modes")]
        #[arg(long)]
        byzantine: Option<node::ByzantineMode>,
        /// FOR TESTS AND THE DEMO: accept `POST /byzantine` (a mode name or `none`) on the
        /// management endpoint to change the Byzantine mode while running.
        #[cfg(feature = "byzantine-test-modes")]
        #[arg(long)]
        allow_byzantine_switch: bool,
    },
    /// Generate a local cluster (keys and one configuration per replica on free loopback
    /// ports) with `--n/--f/--dir`, or start one with `testnet up --dir DIR`.
    #[command(args_conflicts_with_subcommands = true)]
    Testnet {
        #[command(subcommand)]
        action: Option<TestnetAction>,
        /// Number of replicas.
        #[arg(long)]
        n: Option<usize>,
        /// Tolerated intrusions (default (n - 1) / 3).
        #[arg(long)]
        f: Option<usize>,
        /// Directory for keys, configurations, data and logs (must be new or empty).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print each replica's health from its management endpoint.
    Status {
        /// A testnet directory (every node-i.toml in it).
        #[arg(long, conflicts_with = "config")]
        dir: Option<PathBuf>,
        /// One replica's configuration.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Benchmark the ordering protocols in process (real threshold crypto, every message
    /// encoded): layers × n × batch sizes, a table on stdout, and results.json, results.csv and
    /// SVG charts in --out. `--compare hbbft` needs a build with `--features compare-hbbft`.
    /// `--layer kv` runs the key-value service end to end on a loopback cluster instead.
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum TestnetAction {
    /// Start every replica of a testnet directory (logs in DIR/node-i.log); Ctrl-C stops all.
    Up {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Keygen { n, f, out } => keygen::run(n, f, &out),
        Command::Demo(args) => {
            init_logs("warn");
            demo::run(&args).map(|_| ())
        }
        Command::Kv(args) => runtime()?.block_on(kv_cli::run(args)),
        #[cfg(feature = "byzantine-test-modes")]
        Command::Node {
            config,
            byzantine,
            allow_byzantine_switch,
        } => run_node(
            config,
            node::RunOptions {
                byzantine,
                byzantine_switch: allow_byzantine_switch,
            },
        ),
        #[cfg(not(feature = "byzantine-test-modes"))]
        Command::Node { config } => run_node(config, node::RunOptions::default()),
        Command::Testnet {
            action: Some(TestnetAction::Up { dir }),
            ..
        } => runtime()?.block_on(testnet::up(&dir)),
        Command::Testnet {
            action: None,
            n,
            f,
            dir,
        } => {
            let n = n.context("--n is required (or use `maftia testnet up --dir DIR`)")?;
            let dir = dir.context("--dir is required")?;
            testnet::create(n, f, &dir).map(|_| ())
        }
        Command::Status { dir, config } => {
            let paths = match (dir, config) {
                (Some(dir), _) => testnet::configs(&dir)?,
                (None, Some(config)) => vec![config],
                (None, None) => anyhow::bail!("give --dir DIR or --config FILE"),
            };
            runtime()?.block_on(testnet::print_status(&paths))
        }
        Command::Bench(args) => bench::run(&args).map(|_| ()).map_err(Into::into),
    }
}

fn run_node(config_path: PathBuf, options: node::RunOptions) -> Result<()> {
    let config = NodeConfig::load(&config_path)?;
    init_logs(&config.log);
    runtime()?.block_on(node::run(config, options))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
