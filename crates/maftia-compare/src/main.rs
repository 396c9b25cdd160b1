//! `maftia-compare`: maftia's atomic broadcast vs HoneyBadgerBFT (hbbft 0.1.1, encryption off
//! and on) on maftia's in-process harness, for every `n` × batch size asked; prints a markdown
//! table with the rows and ratios and optionally writes the reports as JSON.
//!
//! ```text
//! cargo run --release -p maftia-compare -- --n 4,7 --batch 100,1000 --rounds 3 --json compare.json
//! ```
use clap::Parser;
use maftia_compare::{compare, CompareSpec, ComparisonReport, TABLE_HEADER};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "maftia-compare",
    about = "maftia atomic broadcast vs HoneyBadgerBFT (hbbft 0.1.1) on maftia's bench harness"
)]
struct Args {
    /// Group sizes (f = ⌊(n − 1)/3⌋, hbbft's).
    #[arg(long, value_delimiter = ',', default_values_t = [4usize, 7])]
    n: Vec<usize>,
    /// Requests per node per round (maftia's batch_size; see the crate docs for hbbft's).
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1000])]
    batch: Vec<usize>,
    /// Bytes per request.
    #[arg(long, default_value_t = 250)]
    request_size: usize,
    /// Rounds (epochs) before the measurement window.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Rounds (epochs) measured.
    #[arg(long, default_value_t = 5)]
    rounds: u64,
    /// Seeds keys, requests and every node's randomness.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Threads to spread the nodes over (1: all nodes on one core, deterministic order).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Also run maftia's SC-ABC (threshold-encrypted requests) next to hbbft+enc.
    #[arg(long)]
    scabc: bool,
    /// Write the reports (one per n × batch) to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut reports: Vec<ComparisonReport> = Vec::new();
    let mut failed = false;
    println!("{TABLE_HEADER}");
    let mut ratio_lines = Vec::new();
    for &n in &args.n {
        for &batch in &args.batch {
            let mut spec = CompareSpec::new(n, batch);
            spec.run.request_size = args.request_size;
            spec.run.warmup_rounds = args.warmup;
            spec.run.measure_rounds = args.rounds;
            spec.run.seed = args.seed;
            spec.run.threads = args.threads;
            spec.include_scabc = args.scabc;
            eprintln!("running n = {n}, batch = {batch} ...");
            match compare(&spec) {
                Ok(report) => {
                    print!("{}", report.table_rows());
                    ratio_lines.push(report.ratio_line());
                    reports.push(report);
                }
                Err(error) => {
                    eprintln!("n = {n}, batch = {batch}: {error}");
                    println!(
                        "| n = {n}, batch = {batch} | FAILED: {error} | | | | | | | | | | | |"
                    );
                    failed = true;
                }
            }
        }
    }
    println!();
    for line in &ratio_lines {
        println!("- {line}");
    }
    if let Some(path) = &args.json {
        let written = serde_json::to_string_pretty(&reports)
            .map_err(|e| e.to_string())
            .and_then(|json| std::fs::write(path, json).map_err(|e| e.to_string()));
        if let Err(error) = written {
            eprintln!("writing {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("wrote {}", path.display());
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
