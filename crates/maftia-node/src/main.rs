//! The `maftia` binary.
//!
//! Subcommands so far: `keygen` (trusted-dealer key generation for a group). Replica, testnet,
//! demo, client and bench commands arrive with the issues that build their layers.
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod keygen;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen { n, f, out } => keygen::run(n, f, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
