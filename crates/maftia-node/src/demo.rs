//! `maftia demo`: a local cluster that tolerates an intruded replica and a crash, end to end.
//!
//! With no arguments: create a 4-replica testnet in a temporary directory (real keys, real
//! processes, redb on disk, loopback), run a key-value workload from several clients through
//! the client library (every reply a verified threshold certificate), and on a fixed timeline
//! - at 20 % of the run, replica n−1 is **intruded**: it switches, while running and with its
//!   keys and state, to Byzantine behaviour (`POST /byzantine intruded`: invalid threshold shares
//!   in the protocols, wrong results signed with its real key share towards clients);
//! - at 50 %, the intruder's code is removed (`none`) and the replica behaves correctly again;
//! - at 60 %, replica 1 **crashes** (SIGKILL), and at 70 % it restarts and catches up.
//!
//! At most `f` replicas are faulty at any time, so the service stays live throughout. At the
//! end the demo prints requests, throughput, latency percentiles, the evidence the correct
//! replicas collected against the intruded one, the clients' culprit reports, the crashed
//! replica's catch-up time, whether all replicas reached the same delivery chain, and the verdict
//! of a linearizability check of the history the clients observed. It exits with an error if the
//! check fails or the replicas diverge.
use crate::local_cluster::{temporary_dir, LocalCluster};
use crate::management::StatusSnapshot;
use crate::node::is_lag_signal;
use crate::testnet;
use anyhow::{bail, Context, Result};
use maftia_client::{Client, ClientConfig, ClientError};
use maftia_smr::kv::{KvReply, KvRequest};
use maftia_smr::lincheck::{self, KvModel, Operation, Verdict};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Search steps the linearizability checker may take before it gives up ("inconclusive").
const LINCHECK_BUDGET: usize = 50_000_000;
/// A client gives up on one request after this long (the outcome is then unknown).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(8);

#[derive(clap::Args, Clone, Debug)]
pub struct DemoArgs {
    /// Number of replicas.
    #[arg(long, default_value_t = 4)]
    pub n: usize,
    /// Tolerated intrusions (default (n - 1) / 3).
    #[arg(long)]
    pub f: Option<usize>,
    /// Length of the workload, in seconds.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Concurrent clients (each with its own key; at most 8).
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Size of the values written, in bytes.
    #[arg(long, default_value_t = 128)]
    pub value_size: usize,
    /// Number of distinct keys the workload uses.
    #[arg(long, default_value_t = 32)]
    pub keys: usize,
    /// Directory for the cluster (default: a new temporary directory, removed at the end
    /// unless --keep).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Leave the cluster running at the end (for `maftia kv`).
    #[arg(long)]
    pub keep: bool,
    /// Seed of the workload's random choices (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// The demo's findings.
#[derive(Debug)]
pub struct DemoSummary {
    pub completed: u64,
    pub unanswered: u64,
    pub linearizable: bool,
    pub replicas_agree: bool,
}

/// What the clients observed.
#[derive(Default)]
struct Observed {
    history: Vec<Operation<KvRequest, KvReply>>,
    latencies_us: Vec<u64>,
    culprits: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
}

/// Run the demo (a blocking call; it builds its own runtime).
pub fn run(args: &DemoArgs) -> Result<DemoSummary> {
    if !cfg!(feature = "byzantine-test-modes") {
        bail!(
            "this maftia was built without the default feature byzantine-test-modes, which the \
             demo needs to intrude a replica; build it with default features"
        );
    }
    if args.clients == 0 || args.clients > testnet::TESTNET_CLIENTS {
        bail!(
            "--clients must be between 1 and {}",
            testnet::TESTNET_CLIENTS
        );
    }
    if args.keys == 0 || args.duration == 0 {
        bail!("--keys and --duration must be positive");
    }
    if args.value_size > maftia_smr::kv::MAX_VALUE_SIZE {
        bail!(
            "--value-size {} is over the key-value store's limit of {} bytes",
            args.value_size,
            maftia_smr::kv::MAX_VALUE_SIZE
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: &DemoArgs) -> Result<DemoSummary> {
    let (dir, temporary) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => (temporary_dir("demo"), true),
    };
    println!(
        "maftia demo: creating a {}-replica cluster in {}",
        args.n,
        dir.display()
    );
    let mut cluster = tokio::task::block_in_place(|| LocalCluster::generate(args.n, args.f, &dir))?;
    let group = maftia_crypto::keygen::load_group(&dir.join("keys").join("group.toml"))?;
    let (n, f) = (group.n, group.f);
    let outcome = drive(args, &mut cluster, n, f).await;
    if args.keep && outcome.is_ok() {
        let pids: Vec<String> = cluster.detach().iter().map(u32::to_string).collect();
        println!("\nthe cluster keeps running in {}; try", dir.display());
        println!(
            "  maftia kv --cluster {} --key {} get key-0",
            testnet::cluster_path(&dir).display(),
            testnet::client_key_path(&dir, 0).display()
        );
        println!("stop it with `kill {}`", pids.join(" "));
    } else {
        cluster.stop_all();
        if temporary {
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            println!("cluster files and logs kept in {}", dir.display());
        }
    }
    let summary = outcome?;
    if !summary.linearizable {
        bail!("the linearizability check did not pass (see the summary)");
    }
    if !summary.replicas_agree {
        bail!("the replicas did not reach the same delivery chain");
    }
    Ok(summary)
}

async fn drive(
    args: &DemoArgs,
    cluster: &mut LocalCluster,
    n: usize,
    f: usize,
) -> Result<DemoSummary> {
    cluster.spawn_all()?;
    cluster.wait_until_ready().await?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    println!(
        "cluster up: n = {n}, f = {f}; running {} clients for {} s (workload seed {seed})",
        args.clients, args.duration
    );

    let start = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let observed = Arc::new(Mutex::new(Observed::default()));
    let completed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut config = ClientConfig::from_files(
            &testnet::cluster_path(cluster.dir()),
            &testnet::client_key_path(cluster.dir(), c),
        )?;
        config.timeout = CLIENT_TIMEOUT;
        let client = Client::connect(config).await?;
        tasks.push(tokio::spawn(client_loop(
            c as u64,
            client,
            args.clone(),
            seed.wrapping_add(c as u64),
            start,
            stop_rx.clone(),
            observed.clone(),
            completed.clone(),
        )));
    }

    let total = Duration::from_secs(args.duration);
    let at = |fraction: f64| total.mul_f64(fraction);
    let intruded = n - 1;
    let crashed = 1;
    let phase = Arc::new(Mutex::new(String::from("all replicas correct")));
    let progress = tokio::spawn(progress_bar(
        start,
        total,
        completed.clone(),
        phase.clone(),
        stop_rx.clone(),
    ));
    let set_phase = |text: String| {
        *phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = text;
    };

    sleep_until(start, at(0.2)).await;
    cluster.switch(intruded, "intruded").await?;
    set_phase(format!("replica {intruded} intruded"));

    sleep_until(start, at(0.5)).await;
    cluster.switch(intruded, "none").await?;
    set_phase(format!("replica {intruded} recovered"));

    sleep_until(start, at(0.6)).await;
    cluster.kill(crashed);
    let crashed_at = start.elapsed();
    set_phase(format!("replica {crashed} crashed"));

    sleep_until(start, at(0.7)).await;
    let mut target = 0;
    for i in (0..n).filter(|i| *i != crashed) {
        if let Some(s) = cluster.status(i).await {
            target = target.max(s.delivered_rounds);
        }
    }
    cluster.spawn(crashed)?;
    let restarted_at = start.elapsed();
    set_phase(format!("replica {crashed} restarted, catching up"));
    let mut caught_up = None;
    while start.elapsed() < total {
        if let Some(s) = cluster.status(crashed).await {
            if s.delivered_rounds >= target {
                caught_up = Some(start.elapsed().saturating_sub(restarted_at));
                set_phase(format!("replica {crashed} caught up"));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    sleep_until(start, total).await;
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    let _ = progress.await;
    let elapsed = start.elapsed();
    eprintln!();

    // Let the replicas finish ordering what is in flight, then compare their chains.
    let (replicas_agree, statuses) = cluster.converge(Duration::from_secs(20)).await;
    let observed = std::mem::take(
        &mut *observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    println!(
        "checking linearizability of {} operations ...",
        observed.history.len()
    );
    let verdict = tokio::task::block_in_place(|| {
        lincheck::check(&KvModel::default(), &observed.history, LINCHECK_BUDGET)
    });
    let summary = print_summary(
        args,
        n,
        f,
        elapsed,
        &observed,
        &statuses,
        intruded,
        crashed,
        crashed_at,
        restarted_at,
        caught_up,
        replicas_agree,
        &verdict,
    );
    Ok(summary)
}

async fn sleep_until(start: Instant, offset: Duration) {
    let now = start.elapsed();
    if offset > now {
        tokio::time::sleep(offset - now).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn client_loop(
    id: u64,
    mut client: Client,
    args: DemoArgs,
    seed: u64,
    start: Instant,
    stop: watch::Receiver<bool>,
    observed: Arc<Mutex<Observed>>,
    completed: Arc<AtomicU64>,
) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut counter = 0u64;
    while !*stop.borrow() {
        counter += 1;
        let request = random_request(&mut rng, &args, id, counter);
        let invoke = start.elapsed().as_nanos() as u64;
        let result = client.kv(&request).await;
        let complete = start.elapsed().as_nanos() as u64;
        let mut seen = observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Ok((reply, certified)) => {
                seen.latencies_us.push((complete - invoke) / 1000);
                for replica in certified.culprits.keys() {
                    *seen.culprits.entry(*replica).or_insert(0) += 1;
                }
                seen.history.push(Operation {
                    client: id,
                    invoke,
                    complete: Some(complete),
                    call: request,
                    response: Some(reply),
                });
                completed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let kind = match &e {
                    ClientError::Unreachable { .. } => "unreachable".to_string(),
                    ClientError::Unverifiable { .. } => "unverifiable".to_string(),
                    other => other.to_string(),
                };
                *seen.errors.entry(kind).or_insert(0) += 1;
                // The outcome is unknown: the request may take effect later, or never.
                seen.history.push(Operation {
                    client: id,
                    invoke,
                    complete: None,
                    call: request,
                    response: None,
                });
            }
        }
    }
}

fn random_request(rng: &mut impl Rng, args: &DemoArgs, client: u64, counter: u64) -> KvRequest {
    let key =
        |rng: &mut dyn rand::RngCore| format!("key-{}", rng.gen_range(0..args.keys)).into_bytes();
    let value = |rng: &mut dyn rand::RngCore| {
        let mut v = format!("c{client}-{counter}-").into_bytes();
        v.resize(args.value_size.max(v.len()), b'.');
        let _ = rng.next_u32();
        v
    };
    match rng.gen_range(0..100) {
        0..=39 => KvRequest::Get { key: key(rng) },
        40..=74 => KvRequest::Put {
            key: key(rng),
            value: value(rng),
        },
        75..=84 => {
            let k = key(rng);
            KvRequest::CompareAndSet {
                key: k,
                expected: None,
                new: Some(value(rng)),
            }
        }
        85..=89 => KvRequest::Delete { key: key(rng) },
        90..=96 => {
            let (a, b) = (key(rng), key(rng));
            KvRequest::Transaction {
                preconditions: vec![(a.clone(), None)],
                writes: vec![(a, Some(value(rng))), (b, Some(value(rng)))],
            }
        }
        _ => KvRequest::Range {
            start: b"key-1".to_vec(),
            end: Some(b"key-2".to_vec()),
            limit: 100,
        },
    }
}

async fn progress_bar(
    start: Instant,
    total: Duration,
    completed: Arc<AtomicU64>,
    phase: Arc<Mutex<String>>,
    mut stop: watch::Receiver<bool>,
) {
    let tty = std::io::stderr().is_terminal();
    let interval = if tty {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(5)
    };
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let elapsed = start.elapsed().min(total);
        let fraction = elapsed.as_secs_f64() / total.as_secs_f64().max(1e-9);
        let width = 30;
        let filled = ((fraction * width as f64) as usize).min(width);
        let done = completed.load(Ordering::Relaxed);
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
        let phase = phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let line = format!(
            "[{}{}] {:>3.0}s/{}s  {done} requests ({rate:.0}/s)  {phase}",
            "#".repeat(filled),
            ".".repeat(width - filled),
            elapsed.as_secs_f64(),
            total.as_secs(),
        );
        let mut err = std::io::stderr();
        if tty {
            let _ = write!(err, "\r{line:<100}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

#[allow(clippy::too_many_arguments)]
fn print_summary(
    args: &DemoArgs,
    n: usize,
    f: usize,
    elapsed: Duration,
    observed: &Observed,
    statuses: &[Option<StatusSnapshot>],
    intruded: usize,
    crashed: usize,
    crashed_at: Duration,
    restarted_at: Duration,
    caught_up: Option<Duration>,
    replicas_agree: bool,
    verdict: &Verdict,
) -> DemoSummary {
    let completed = observed.latencies_us.len() as u64;
    let unanswered: u64 = observed.errors.values().sum();
    let mut latencies = observed.latencies_us.clone();
    latencies.sort_unstable();
    let mut evidence: BTreeMap<String, u64> = BTreeMap::new();
    for (i, status) in statuses.iter().enumerate() {
        if i == intruded {
            continue;
        }
        if let Some(kinds) = status
            .as_ref()
            .and_then(|s| s.evidence.get(&intruded.to_string()))
        {
            for (kind, count) in kinds {
                if !is_lag_signal(kind) {
                    *evidence.entry(kind.clone()).or_insert(0) += count;
                }
            }
        }
    }
    let linearizable = matches!(verdict, Verdict::Linearizable);
    println!();
    println!(
        "maftia demo: {n} replicas (f = {f}), {} clients, {:.0} s, {}-byte values, {} keys",
        args.clients,
        elapsed.as_secs_f64(),
        args.value_size,
        args.keys
    );
    println!(
        "  requests completed   {completed} ({:.0}/s); {unanswered} without an answer{}",
        completed as f64 / elapsed.as_secs_f64().max(1e-9),
        if observed.errors.is_empty() {
            String::new()
        } else {
            format!(" {:?}", observed.errors)
        }
    );
    println!(
        "  latency              p50 {}, p90 {}, p99 {}, max {}",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or(0))
    );
    println!(
        "  replies verified     {completed} of {completed}: each a threshold certificate (f + 1 = {} shares) checked against the service key",
        f + 1
    );
    let evidence_text = if evidence.is_empty() {
        "none".to_string()
    } else {
        evidence
            .iter()
            .map(|(k, v)| format!("{k} ×{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "  intruded replica {intruded}   {:.0}–{:.0} s; evidence at the correct replicas: {evidence_text}",
        (args.duration as f64) * 0.2,
        (args.duration as f64) * 0.5
    );
    let culprits = observed
        .culprits
        .iter()
        .map(|(r, c)| format!("replica {r} ×{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "  client culprit reports {}",
        if culprits.is_empty() {
            "none".into()
        } else {
            culprits
        }
    );
    println!(
        "  crashed replica {crashed}    killed at {:.1} s, restarted at {:.1} s, {}",
        crashed_at.as_secs_f64(),
        restarted_at.as_secs_f64(),
        match caught_up {
            Some(t) => format!("caught up in {:.2} s", t.as_secs_f64()),
            None => "did not catch up before the end of the run".into(),
        }
    );
    let height = statuses
        .iter()
        .flatten()
        .map(|s| s.delivered_rounds)
        .max()
        .unwrap_or(0);
    println!(
        "  replicas agree       {}",
        if replicas_agree {
            format!("yes: all {n} at delivery {height} with the same chain head")
        } else {
            "NO: delivery chains differ or a replica is missing".into()
        }
    );
    let verdict_text = match verdict {
        Verdict::Linearizable => format!(
            "PASS: the {} operations observed by the clients are linearizable",
            observed.history.len()
        ),
        Verdict::NotLinearizable { explanation, .. } => format!("FAIL: {explanation}"),
        Verdict::Unknown { reason } => format!("inconclusive: {reason}"),
    };
    println!("  linearizability      {verdict_text}");
    DemoSummary {
        completed,
        unanswered,
        linearizable,
        replicas_agree,
    }
}
